//! The `simulate` subcommand's serve loop: start the simulator, announce the address on
//! stdout, wait for the shutdown, and report final stats on stderr.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;

use super::config::SimConfig;
use super::error::SimError;
use super::handle::start;

/// Runs the simulator until `shutdown` resolves: prints `listening on URL` as the only line
/// on stdout, and the final [`super::SimStats`] as one JSON line on stderr.
pub async fn serve(
    config: SimConfig,
    addr: SocketAddr,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SimError> {
    serve_to(config, addr, shutdown, std::io::stdout(), std::io::stderr()).await
}

/// [`serve`] with its two output streams injected.
async fn serve_to(
    config: SimConfig,
    addr: SocketAddr,
    shutdown: impl Future<Output = ()>,
    mut out: impl Write,
    mut err: impl Write,
) -> Result<(), SimError> {
    let handle = start(config, addr).await?;
    writeln!(out, "listening on {}", handle.url())
        .and_then(|()| out.flush())
        .map_err(|source| SimError::Output {
            what: "stdout",
            source,
        })?;
    shutdown.await;
    let stats = handle.stats();
    handle.shutdown().await;
    // `SimStats` holds only integers: encoding cannot fail.
    let line = serde_json::to_string(&stats).expect("stats always encode");
    writeln!(err, "{line}")
        .and_then(|()| err.flush())
        .map_err(|source| SimError::Output {
            what: "stderr",
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    #[tokio::test]
    async fn serve_announces_the_address_and_reports_stats() {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        serve_to(SimConfig::default(), loopback, async {}, &mut out, &mut err)
            .await
            .expect("serves and stops");
        let out = String::from_utf8(out).expect("UTF-8");
        assert!(out.starts_with("listening on http://127.0.0.1:"), "{out}");
        assert_eq!(out.lines().count(), 1);
        let stats: super::super::SimStats =
            serde_json::from_slice(&err).expect("stats JSON on stderr");
        assert_eq!(stats, super::super::SimStats::default());

        let anywhere = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
        let refused = serve_to(
            SimConfig::default(),
            anywhere,
            async {},
            Vec::new(),
            Vec::new(),
        );
        assert!(matches!(refused.await, Err(SimError::NotLoopback(_))));
    }
}

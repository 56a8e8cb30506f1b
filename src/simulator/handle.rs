//! Starting the simulator on a loopback address ([`start`]) and the handle that stops it
//! ([`SimHandle`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::config::SimConfig;
use super::error::SimError;
use super::faults::Faults;
use super::stats::SimStats;
use super::{server, state};

/// How long shutdown waits for in-flight requests before aborting the server task.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A running simulator. Dropping it stops the server too.
pub struct SimHandle {
    addr: SocketAddr,
    shared: Arc<state::Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl SimHandle {
    /// The base URL, e.g. `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stats(&self) -> SimStats {
        self.shared.stats()
    }

    /// Replaces the faults in place (e.g. [`Faults::recovered`]: the outage is over).
    pub fn set_faults(&self, faults: Faults) {
        self.shared.set_faults(faults);
    }

    /// The faults in effect.
    pub fn faults(&self) -> Faults {
        self.shared.faults()
    }

    /// When each lookup request arrived (any outcome), measured from start; empty unless
    /// [`SimConfig::keep_lookup_times`].
    pub fn lookup_times(&self) -> Vec<Duration> {
        self.shared.lookup_times()
    }

    /// Stops accepting, lets in-flight requests finish (at most a few seconds), and stops.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            // The server may already have stopped; then there is no one to tell.
            let _ = stop.send(());
        }
        let task = &mut self.task;
        if tokio::time::timeout(SHUTDOWN_GRACE, &mut *task)
            .await
            .is_err()
        {
            task.abort();
        }
        self.shared.flush_log();
    }
}

/// Starts the simulator on a loopback address (port 0 picks an ephemeral port) and serves
/// in a spawned task.
pub async fn start(config: SimConfig, addr: SocketAddr) -> Result<SimHandle, SimError> {
    if !addr.ip().is_loopback() {
        return Err(SimError::NotLoopback(addr));
    }
    config.faults.validate()?;
    let return_origin = config
        .return_origin
        .as_deref()
        .map(normalize_origin)
        .transpose()?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| SimError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| SimError::Bind { addr, source })?;
    let shared = Arc::new(state::Shared::new(config, local, return_origin)?);
    let app = server::router(Arc::clone(&shared));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                // A dropped handle also stops the server.
                let _ = stopped.await;
            })
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "simulator stopped");
        }
    });
    tracing::debug!(addr = %local, "payple simulator listening");
    Ok(SimHandle {
        addr: local,
        shared,
        stop: Some(stop),
        task,
    })
}

/// Reduces an `http(s)://host[:port][/...]` string to its origin.
fn normalize_origin(raw: &str) -> Result<String, SimError> {
    let bad = |reason: &str| SimError::BadReturnOrigin {
        origin: raw.to_owned(),
        reason: reason.to_owned(),
    };
    let url = url::Url::parse(raw).map_err(|e| bad(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(bad("expected http:// or https:// with a host"));
    }
    Ok(url.origin().ascii_serialization())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_normalized() {
        assert_eq!(
            normalize_origin("https://evil.example/php/x").expect("valid"),
            "https://evil.example"
        );
        assert_eq!(
            normalize_origin("http://127.0.0.1:9/").expect("valid"),
            "http://127.0.0.1:9"
        );
        assert!(normalize_origin("ftp://x").is_err());
        assert!(normalize_origin("nonsense").is_err());
    }

    #[tokio::test]
    async fn refuses_non_loopback_addresses() {
        let addr: SocketAddr = "0.0.0.0:0".parse().expect("addr");
        let err = start(SimConfig::default(), addr).await.err();
        assert!(matches!(err, Some(SimError::NotLoopback(_))), "{err:?}");
    }

    #[tokio::test]
    async fn refuses_bad_faults() {
        let config = SimConfig {
            faults: Faults {
                error_rate: 2.0,
                ..Faults::none()
            },
            ..SimConfig::default()
        };
        let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        assert!(matches!(
            start(config, addr).await.err(),
            Some(SimError::BadFraction { .. })
        ));
    }
}

//! The `simulate` subcommand: its flags, their conversion into a [`SimConfig`], and the
//! serve loop that announces the address on stdout and reports final stats on stderr.

use std::future::Future;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use super::{Faults, KeyBook, SimConfig, SimError, start};

/// Flags of `payple-reconcile simulate`.
#[derive(clap::Args, Debug, Clone)]
pub struct SimulateArgs {
    /// Loopback address to listen on.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub bind: IpAddr,
    /// Port to listen on (0 picks a free one; the address is printed on stdout).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// JSON Lines file of keys with fixed answers; other keys are derived from their hash.
    #[arg(long, value_name = "PATH")]
    pub keys: Option<PathBuf>,
    /// How long an issued token triple stays valid, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 1800)]
    pub token_ttl: u64,
    /// Latency added to every lookup, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Up to this many more milliseconds, uniformly drawn, added to every lookup.
    #[arg(long, default_value_t = 0)]
    pub jitter_ms: u64,
    /// Fraction of lookups answered HTTP 500.
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,
    /// Fraction of lookups whose connection is dropped without a response.
    #[arg(long, default_value_t = 0.0)]
    pub drop_rate: f64,
    /// Fraction of lookups whose JSON body is cut in half.
    #[arg(long, default_value_t = 0.0)]
    pub truncate_rate: f64,
    /// Fraction of lookups answered with an HTML error page (HTTP 200).
    #[arg(long, default_value_t = 0.0)]
    pub garbage_rate: f64,
    /// Lookups per second above which the simulator answers 429.
    #[arg(long, value_name = "PER_SEC")]
    pub rate_limit: Option<u32>,
    /// `Retry-After` value of 429 answers, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 1)]
    pub retry_after: u64,
    /// Answer the first N lookups of every key with HTTP 500.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub fail_first: u32,
    /// Write one JSON line per request to this file.
    #[arg(long, value_name = "PATH")]
    pub request_log: Option<PathBuf>,
    /// Seed of the fault RNG (0: random).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Origin to put in auth answers' `return_url` instead of the simulator's own.
    #[arg(long, value_name = "ORIGIN")]
    pub return_origin: Option<String>,
}

impl SimulateArgs {
    /// Validates the flags into a configuration (reads the key file).
    pub fn to_config(&self) -> Result<SimConfig, SimError> {
        let faults = Faults {
            latency: Duration::from_millis(self.latency_ms),
            jitter: Duration::from_millis(self.jitter_ms),
            error_rate: self.error_rate,
            drop_rate: self.drop_rate,
            truncate_rate: self.truncate_rate,
            garbage_rate: self.garbage_rate,
            rate_limit: self.rate_limit,
            retry_after: Duration::from_secs(self.retry_after.max(1)),
            fail_first: self.fail_first,
        };
        faults.validate()?;
        let keys = match &self.keys {
            Some(path) => KeyBook::from_file(path)?,
            None => KeyBook::derived(),
        };
        Ok(SimConfig {
            token_ttl: Duration::from_secs(self.token_ttl),
            keys,
            faults,
            request_log: self.request_log.clone(),
            return_origin: self.return_origin.clone(),
            seed: self.seed,
            ..SimConfig::default()
        })
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.bind, self.port)
    }
}

/// Runs the simulator until `shutdown` resolves: prints `listening on URL` as the only line
/// on stdout, and the final [`super::SimStats`] as one JSON line on stderr.
pub async fn serve(args: SimulateArgs, shutdown: impl Future<Output = ()>) -> Result<(), SimError> {
    serve_to(args, shutdown, std::io::stdout(), std::io::stderr()).await
}

/// [`serve`] with its two output streams injected.
async fn serve_to(
    args: SimulateArgs,
    shutdown: impl Future<Output = ()>,
    mut out: impl Write,
    mut err: impl Write,
) -> Result<(), SimError> {
    let config = args.to_config()?;
    let handle = start(config, args.addr()).await?;
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
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: SimulateArgs,
    }

    fn parse(argv: &[&str]) -> SimulateArgs {
        let argv = std::iter::once("simulate").chain(argv.iter().copied());
        Cli::try_parse_from(argv).expect("valid flags").args
    }

    #[test]
    fn defaults_are_loopback_and_fault_free() {
        let args = parse(&[]);
        assert_eq!(args.addr(), "127.0.0.1:0".parse().expect("addr"));
        let config = args.to_config().expect("valid");
        assert_eq!(config.faults, Faults::default());
        assert_eq!(config.token_ttl, Duration::from_secs(1800));
        assert!(matches!(config.keys, KeyBook::Derived));
        assert_eq!(config.partners.len(), 1);
    }

    #[test]
    fn flags_become_faults() {
        let args = parse(&[
            "--latency-ms",
            "5",
            "--jitter-ms",
            "3",
            "--error-rate",
            "0.1",
            "--drop-rate",
            "0.05",
            "--rate-limit",
            "20",
            "--retry-after",
            "0",
            "--fail-first",
            "2",
            "--token-ttl",
            "1",
            "--seed",
            "9",
            "--return-origin",
            "https://evil.example",
        ]);
        let config = args.to_config().expect("valid");
        assert_eq!(config.faults.latency, Duration::from_millis(5));
        assert_eq!(config.faults.jitter, Duration::from_millis(3));
        assert_eq!(config.faults.rate_limit, Some(20));
        assert_eq!(config.faults.retry_after, Duration::from_secs(1));
        assert_eq!(config.faults.fail_first, 2);
        assert_eq!(config.token_ttl, Duration::from_secs(1));
        assert_eq!(config.seed, 9);
        assert_eq!(
            config.return_origin.as_deref(),
            Some("https://evil.example")
        );
    }

    #[tokio::test]
    async fn serve_announces_the_address_and_reports_stats() {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        serve_to(parse(&[]), async {}, &mut out, &mut err)
            .await
            .expect("serves and stops");
        let out = String::from_utf8(out).expect("UTF-8");
        assert!(out.starts_with("listening on http://127.0.0.1:"), "{out}");
        assert_eq!(out.lines().count(), 1);
        let stats: super::super::SimStats =
            serde_json::from_slice(&err).expect("stats JSON on stderr");
        assert_eq!(stats, super::super::SimStats::default());

        let refused = serve_to(
            parse(&["--bind", "0.0.0.0"]),
            async {},
            Vec::new(),
            Vec::new(),
        );
        assert!(matches!(refused.await, Err(SimError::NotLoopback(_))));
    }

    #[test]
    fn bad_fractions_and_key_files_are_refused() {
        let err = parse(&["--drop-rate", "1.5"])
            .to_config()
            .expect_err("bad rate");
        assert!(matches!(
            err,
            SimError::BadFraction {
                name: "drop_rate",
                ..
            }
        ));
        let err = parse(&["--keys", "/nonexistent/keys.jsonl"])
            .to_config()
            .expect_err("missing file");
        assert!(matches!(err, SimError::KeyFileRead { .. }));
    }
}

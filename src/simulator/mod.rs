//! A loopback-only HTTP simulator of Payple's partner auth and PUSERINFO lookup, with
//! fault injection, for tests, demos and benchmarks.
//!
//! # Architecture
//! - [`keys`]: what each billing key answers (derived from its hash, or from a key file).
//! - [`faults`]: latency, rate limit, first failures per key and random faults.
//! - `server`: the axum routes (`POST /_sim/recover` ends every fault episode), the token
//!   book, counters and the request log.
//! - [`standalone`]: the `simulate` subcommand's serve loop (stdout address, stderr stats).
//!
//! [`start`] binds a loopback address (port 0 for an ephemeral one) and serves in a spawned
//! task until [`SimHandle::shutdown`] (or until the handle is dropped).

mod answer;
pub mod faults;
pub mod keys;
mod php;
mod server;
pub mod standalone;
mod state;
mod tokens;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use faults::{Episode, Faults};
pub use keys::{KeyBook, SimKey, SimKind, derive_key};
pub use standalone::serve;

pub use crate::payple::{TEST_CST_ID, TEST_CUST_KEY, TEST_REFERER};

/// How long shutdown waits for in-flight requests before aborting the server task.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Everything that shapes a simulator run.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Partners that may authenticate.
    pub partners: Vec<Partner>,
    /// How long an issued token triple stays valid.
    pub token_ttl: Duration,
    /// What each billing key answers.
    pub keys: KeyBook,
    /// Faults applied to lookups.
    pub faults: Faults,
    /// Where to write one JSON line per request (truncated at start).
    pub request_log: Option<PathBuf>,
    /// If set, auth answers point `return_url`/`PCD_PAY_HOST` at this origin instead of the
    /// simulator's own (to test that clients refuse a foreign `return_url`).
    pub return_origin: Option<String>,
    /// Seeds the fault RNG; 0 means a random seed.
    pub seed: u64,
    /// Remember every lookup's arrival time for [`SimHandle::lookup_times`] (16 bytes a
    /// lookup, for tests and benchmarks); off for `--simulator` and `simulate`, whose
    /// memory must not grow with the number of keys.
    pub keep_lookup_times: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            partners: vec![Partner::test_partner()],
            token_ttl: Duration::from_secs(1800),
            keys: KeyBook::derived(),
            faults: Faults::default(),
            request_log: None,
            return_origin: None,
            seed: 0,
            keep_lookup_times: true,
        }
    }
}

impl SimConfig {
    /// The default configuration, but accepting `partner` instead of the test partner:
    /// `--simulator` accepts whatever credentials the job is configured with.
    pub fn accepting(partner: Partner) -> Self {
        Self {
            partners: vec![partner],
            keep_lookup_times: false,
            ..Self::default()
        }
    }
}

/// A partner registered with the simulator.
#[derive(Clone, PartialEq, Eq)]
pub struct Partner {
    pub cst_id: String,
    pub cust_key: String,
    /// The registered domain; requests must carry a Referer with this origin.
    pub referer: String,
}

impl Partner {
    /// Payple's documented test partner, registered with [`TEST_REFERER`].
    pub fn test_partner() -> Self {
        Self {
            cst_id: TEST_CST_ID.to_owned(),
            cust_key: TEST_CUST_KEY.to_owned(),
            referer: TEST_REFERER.to_owned(),
        }
    }
}

impl std::fmt::Debug for Partner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partner")
            .field("cst_id", &self.cst_id)
            .field("cust_key", &"[REDACTED]")
            .field("referer", &self.referer)
            .finish()
    }
}

/// Why the simulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is not a loopback address: the simulator only listens on loopback")]
    NotLoopback(SocketAddr),
    #[error("cannot read key file {path}: {source}")]
    KeyFileRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("key file {path}:{line}: {reason}")]
    KeyFile {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("{name} must be a fraction between 0 and 1 (got {value})")]
    BadFraction { name: &'static str, value: f64 },
    #[error("rate limit must be at least 1 lookup per second")]
    BadRateLimit,
    #[error("an outage answers a 5xx status (got {0})")]
    BadOutageStatus(u16),
    #[error("return origin {origin:?} is not an http(s) origin: {reason}")]
    BadReturnOrigin { origin: String, reason: String },
    #[error("cannot open request log {path}: {source}")]
    RequestLog {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write to {what}: {source}")]
    Output {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Counters since start; also served as JSON at `GET /_sim/stats`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    pub auth_calls: u64,
    pub auth_failures: u64,
    /// Lookup requests received, whatever their outcome.
    pub lookups: u64,
    pub peak_concurrent_lookups: u64,
    pub expired_token_lookups: u64,
    pub bad_token_lookups: u64,
    pub rate_limited: u64,
    /// HTTP 500 answers, from `error_rate` and `fail_first`.
    pub injected_500: u64,
    pub dropped: u64,
    pub truncated: u64,
    pub garbage: u64,
    /// Lookups answered by an outage episode (5xx).
    #[serde(default)]
    pub outage: u64,
    /// Lookups answered by a storm episode's code.
    #[serde(default)]
    pub storm: u64,
    /// Lookups answered 429 by a throttle episode.
    #[serde(default)]
    pub throttled: u64,
    /// Lookups answered `always_code`.
    #[serde(default)]
    pub always_code: u64,
}

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

/// Locks a mutex, ignoring poisoning: every critical section leaves consistent state.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
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

    #[test]
    fn partner_debug_hides_the_key() {
        let text = format!("{:?}", Partner::test_partner());
        assert!(!text.contains(TEST_CUST_KEY), "{text}");
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

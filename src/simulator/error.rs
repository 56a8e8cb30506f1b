//! Why the simulator could not start ([`SimError`]).

use std::net::SocketAddr;
use std::path::PathBuf;

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

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
//! - `config`, `error`, `stats`: what shapes a run, why it cannot start, its counters.
//!
//! [`start`] (in `handle`) binds a loopback address (port 0 for an ephemeral one) and
//! serves in a spawned task until [`SimHandle::shutdown`] (or until the handle is dropped).

mod answer;
mod config;
mod error;
pub mod faults;
mod handle;
pub mod keys;
mod lock;
mod php;
mod server;
pub mod standalone;
mod state;
mod stats;
mod tokens;

pub use config::{Partner, SimConfig};
pub use error::SimError;
pub use faults::{Episode, Faults};
pub use handle::{SimHandle, start};
pub use keys::{KeyBook, SimKey, SimKind, derive_key};
pub use standalone::serve;
pub use stats::SimStats;

pub use crate::payple::{TEST_CST_ID, TEST_CUST_KEY, TEST_REFERER};

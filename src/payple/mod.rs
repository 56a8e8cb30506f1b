//! The Payple client: partner auth once per token lifetime, shared by every concurrent
//! lookup, and one `check` per billing key with retries for what is transient.
//!
//! # Architecture
//! [`PaypleClient::check`] loops over attempts. Each attempt asks the run's [`health`] gate
//! (closed, open or probing; `Retry-After` holds; the outage budget), waits for the rate
//! limiter, takes the shared token ([`token::TokenSlot`], renewed single-flight before it
//! lapses or when Payple answers `SPAY0001`), sends one lookup, and hands the reply to the
//! pure [`classify`] functions (codes looked up in the [`codebook`]); the attempt's
//! [`cause`] goes back to the health gate. An attempt that belongs to an outage episode
//! spends no retry budget: the key waits at the gate.
//! Configuration errors, a token storm and an unreachable auth endpoint end the run
//! ([`PaypleError`]); a spent outage budget cancels [`PaypleClient::unavailable`];
//! everything about one key ends in a [`LookupOutcome`].

mod auth;
pub mod cause;
pub mod classify;
mod client;
pub mod codebook;
mod config;
mod error;
pub mod health;
pub mod pace;
pub mod token;
mod transport;
pub mod wire;
pub use client::PaypleClient;
pub use config::{
    ClientConfig, LIVE_ORIGIN, MAX_REPLY_BYTES, Rate, TEST_CST_ID, TEST_CUST_KEY, TEST_ORIGIN,
    TEST_REFERER,
};
pub use error::PaypleError;
pub use transport::lookup_url;

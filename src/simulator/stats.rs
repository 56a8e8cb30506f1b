//! The simulator's counters ([`SimStats`]), also served as JSON.

use serde::{Deserialize, Serialize};

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

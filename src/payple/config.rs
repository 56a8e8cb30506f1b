//! What the Payple client is configured with: the origins, the documented test partner,
//! the reply and retry bounds, [`ClientConfig`] and the lookup pace ([`Rate`]).

use std::num::NonZeroU32;
use std::time::Duration;

use governor::Quota;
use secrecy::SecretString;
use url::Url;

use super::codebook::CodeBook;
use super::health::HealthConfig;

/// Payple's test origin, the default.
pub const TEST_ORIGIN: &str = "https://democpay.payple.kr";
/// Payple's live origin, selected by the word `live`.
pub const LIVE_ORIGIN: &str = "https://cpay.payple.kr";

/// Payple's documented test partner's `cst_id` (the built-in simulator's default partner).
pub const TEST_CST_ID: &str = "test";
/// Payple's documented test partner's `custKey`.
pub const TEST_CUST_KEY: &str = "abcd1234567890";
/// The Referer the test partner is registered with.
pub const TEST_REFERER: &str = "http://localhost:8080";

pub(super) const AUTH_PATH: &str = "/php/auth.php";
pub(super) const PAY_WORK: &str = "PUSERINFO";
/// A retry delay never exceeds this.
pub(super) const MAX_RETRY_DELAY: Duration = Duration::from_secs(120);
/// The largest auth or lookup reply read; Payple's are under 2 KiB.
pub const MAX_REPLY_BYTES: usize = 64 * 1024;
/// How much of a reason from Payple a log line or error carries.
pub(super) const MAX_LOGGED_REASON: usize = 500;

/// Everything the client needs, validated by the settings layer.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The Payple origin (scheme, host, port); lookups only ever go there.
    pub origin: Url,
    pub cst_id: SecretString,
    pub cust_key: SecretString,
    pub referer: String,
    pub token_ttl: Duration,
    pub refresh_margin: Duration,
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// Attempts per key for transient failures (the first try included).
    pub max_attempts: u32,
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// Lookups per second across the process; `None` for no limit.
    pub rate: Option<Rate>,
    pub codes: CodeBook,
    /// The circuit breaker and the outage budget.
    pub health: HealthConfig,
}

impl ClientConfig {
    /// The same configuration against another origin: for `--simulator`, the URL of the
    /// simulator the command has just started.
    pub fn with_origin(mut self, origin: Url) -> Self {
        self.origin = origin;
        self
    }
}

/// A lookup pace: `per_second` lookups every second, divided by `share` (shards).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_second: NonZeroU32,
    pub share: NonZeroU32,
}

impl Rate {
    /// The governor quota: evenly spaced cells, burst 1.
    pub fn quota(self) -> Quota {
        let period =
            Duration::from_secs_f64(f64::from(self.share.get()) / f64::from(self.per_second.get()));
        Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(self.per_second))
            .allow_burst(NonZeroU32::MIN)
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_quota_divides_by_share() {
        let r = Rate {
            per_second: NonZeroU32::new(200).unwrap(),
            share: NonZeroU32::new(4).unwrap(),
        };
        assert_eq!(r.quota().replenish_interval(), Duration::from_millis(20));
        assert_eq!(r.quota().burst_size().get(), 1);
    }
}

//! What shapes a simulator run ([`SimConfig`]) and the partners it accepts
//! ([`Partner`]).

use std::path::PathBuf;
use std::time::Duration;

use super::faults::Faults;
use super::keys::KeyBook;
use crate::payple::{TEST_CST_ID, TEST_CUST_KEY, TEST_REFERER};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partner_debug_hides_the_key() {
        let text = format!("{:?}", Partner::test_partner());
        assert!(!text.contains(TEST_CUST_KEY), "{text}");
    }
}

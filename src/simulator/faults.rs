//! Fault injection for lookups: latency, a rate limit, the first failures of each key,
//! random faults (500, dropped connection, truncated or non-JSON body) from a seeded RNG,
//! and service-wide episodes: an outage (5xx), a storm of one code, 429 with a given
//! `Retry-After`, each from the Nth lookup on for a while or forever, and one code for
//! every lookup.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use super::error::SimError;
use super::lock::lock;

/// Faults applied to lookups (never to partner authentication). Fractions are drawn per
/// lookup and are exclusive: their sum must not exceed 1.
#[derive(Debug, Clone, PartialEq)]
pub struct Faults {
    /// Added to every lookup.
    pub latency: Duration,
    /// Up to this much more, uniformly drawn, added to every lookup.
    pub jitter: Duration,
    /// Fraction of lookups answered HTTP 500.
    pub error_rate: f64,
    /// Fraction of lookups whose connection is closed without a response.
    pub drop_rate: f64,
    /// Fraction of lookups whose JSON body is cut in half (HTTP 200).
    pub truncate_rate: f64,
    /// Fraction of lookups answered 200 with an HTML error page.
    pub garbage_rate: f64,
    /// Lookups per second (sliding one-second window of admitted lookups) above which the
    /// simulator answers 429 with `Retry-After`.
    pub rate_limit: Option<u32>,
    /// The `Retry-After` value, in whole seconds (at least 1).
    pub retry_after: Duration,
    /// The first N lookup attempts of each key are answered HTTP 500.
    pub fail_first: u32,
    /// Every lookup answered with this HTTP status (500 or 503) during the episode.
    pub outage: Option<Episode<u16>>,
    /// Every lookup answered `PCD_PAY_RST=error` with this code during the episode.
    pub storm: Option<Episode<String>>,
    /// Every lookup answered 429 with this `Retry-After` (seconds) during the episode.
    pub throttle: Option<Episode<u64>>,
    /// Every lookup answered with this code, whatever the token (e.g. `SPAY0001`).
    pub always_code: Option<String>,
    /// When set, every lookup is answered 200 with a body this many bytes long, streamed
    /// in chunks without a `Content-Length` (a reply that never fits in memory).
    pub huge_reply: Option<u64>,
}

/// A service-wide fault: from the lookup numbered `after + 1` on, for `secs` (forever when
/// `None`), every lookup gets `what`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Episode<T> {
    pub what: T,
    pub after: u64,
    pub secs: Option<Duration>,
}

impl<T> Episode<T> {
    pub fn forever(what: T, after: u64) -> Self {
        Self {
            what,
            after,
            secs: None,
        }
    }

    pub fn lasting(what: T, after: u64, secs: Duration) -> Self {
        Self {
            what,
            after,
            secs: Some(secs),
        }
    }

    /// Whether lookup number `n` (1-based) arriving at `now` falls in the episode, which
    /// starts when lookup `after + 1` arrives (`started` remembers when).
    pub(crate) fn covers(&self, n: u64, now: Instant, started: &Mutex<Option<Instant>>) -> bool {
        if n <= self.after {
            return false;
        }
        let start = *lock(started).get_or_insert(now);
        self.secs
            .is_none_or(|secs| now.saturating_duration_since(start) < secs)
    }
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            jitter: Duration::ZERO,
            error_rate: 0.0,
            drop_rate: 0.0,
            truncate_rate: 0.0,
            garbage_rate: 0.0,
            rate_limit: None,
            retry_after: Duration::from_secs(1),
            fail_first: 0,
            outage: None,
            storm: None,
            throttle: None,
            always_code: None,
            huge_reply: None,
        }
    }
}

impl Faults {
    /// No faults at all.
    pub fn none() -> Self {
        Self::default()
    }

    /// Checks that every fraction is in `0..=1`, that they add up to at most 1, and that a
    /// rate limit is not zero.
    pub fn validate(&self) -> Result<(), SimError> {
        let fractions = [
            ("error_rate", self.error_rate),
            ("drop_rate", self.drop_rate),
            ("truncate_rate", self.truncate_rate),
            ("garbage_rate", self.garbage_rate),
        ];
        for (name, value) in fractions {
            if !(0.0..=1.0).contains(&value) {
                return Err(SimError::BadFraction { name, value });
            }
        }
        let sum: f64 = fractions.iter().map(|(_, v)| v).sum();
        if sum > 1.0 + 1e-9 {
            return Err(SimError::BadFraction {
                name: "error_rate + drop_rate + truncate_rate + garbage_rate",
                value: sum,
            });
        }
        if self.rate_limit == Some(0) {
            return Err(SimError::BadRateLimit);
        }
        if let Some(outage) = &self.outage
            && !(500..=599).contains(&outage.what)
        {
            return Err(SimError::BadOutageStatus(outage.what));
        }
        Ok(())
    }

    /// Only the random and per-key faults: the episodes and `always_code` cleared (what a
    /// test calls "the simulator recovers").
    pub fn recovered(&self) -> Self {
        Self {
            outage: None,
            storm: None,
            throttle: None,
            always_code: None,
            ..self.clone()
        }
    }

    /// The `Retry-After` header value: whole seconds, rounded up, at least 1.
    pub(crate) fn retry_after_secs(&self) -> u64 {
        let secs = self.retry_after.as_secs() + u64::from(self.retry_after.subsec_nanos() > 0);
        secs.max(1)
    }
}

/// The random fault drawn for one lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Fault {
    None,
    Error500,
    Drop,
    Truncate,
    Garbage,
}

impl Fault {
    /// The name used in the request log.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Error500 => "500",
            Self::Drop => "drop",
            Self::Truncate => "truncate",
            Self::Garbage => "garbage",
        }
    }
}

/// Maps a uniform draw `u` in `0..1` to a fault: the fractions are laid end to end.
pub(crate) fn pick_fault(faults: &Faults, u: f64) -> Fault {
    let bands = [
        (faults.error_rate, Fault::Error500),
        (faults.drop_rate, Fault::Drop),
        (faults.truncate_rate, Fault::Truncate),
        (faults.garbage_rate, Fault::Garbage),
    ];
    let mut edge = 0.0;
    for (rate, fault) in bands {
        edge += rate;
        if rate > 0.0 && u < edge {
            return fault;
        }
    }
    Fault::None
}

/// The seeded RNG behind random faults and jitter.
pub(crate) struct Dice {
    rng: Mutex<StdRng>,
}

impl Dice {
    /// Seed 0 means a random seed.
    pub(crate) fn new(seed: u64) -> Self {
        let rng = if seed == 0 {
            StdRng::from_os_rng()
        } else {
            StdRng::seed_from_u64(seed)
        };
        Self {
            rng: Mutex::new(rng),
        }
    }

    pub(crate) fn fault(&self, faults: &Faults) -> Fault {
        let u: f64 = lock(&self.rng).random();
        pick_fault(faults, u)
    }

    /// A uniform extra delay in `0..=max`.
    pub(crate) fn jitter(&self, max: Duration) -> Duration {
        if max.is_zero() {
            return Duration::ZERO;
        }
        let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(lock(&self.rng).random_range(0..=nanos))
    }
}

/// A sliding one-second window over admitted lookups.
pub(crate) struct RateWindow {
    limit: Option<u32>,
    admitted: Mutex<VecDeque<Instant>>,
}

impl RateWindow {
    pub(crate) fn new(limit: Option<u32>) -> Self {
        Self {
            limit,
            admitted: Mutex::new(VecDeque::new()),
        }
    }

    /// Whether a lookup arriving at `now` is admitted: fewer than `limit` lookups were
    /// admitted in the second before it.
    pub(crate) fn admit(&self, now: Instant) -> bool {
        let Some(limit) = self.limit else {
            return true;
        };
        let mut admitted = lock(&self.admitted);
        while admitted
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= Duration::from_secs(1))
        {
            admitted.pop_front();
        }
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        if admitted.len() < limit {
            admitted.push_back(now);
            true
        } else {
            false
        }
    }
}

/// Counts attempts per key (by hash) to fail the first N of each.
pub(crate) struct FailFirst {
    n: u32,
    attempts: Mutex<HashMap<u64, u32>>,
}

impl FailFirst {
    pub(crate) fn new(n: u32) -> Self {
        Self {
            n,
            attempts: Mutex::new(HashMap::new()),
        }
    }

    /// Records one attempt for the key and tells whether it must fail.
    pub(crate) fn should_fail(&self, key_hash: u64) -> bool {
        if self.n == 0 {
            return false;
        }
        let mut attempts = lock(&self.attempts);
        let seen = attempts.entry(key_hash).or_default();
        if *seen < self.n {
            *seen += 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_rejects_bad_fractions() {
        assert!(Faults::none().validate().is_ok());
        let bad = Faults {
            drop_rate: 1.5,
            ..Faults::none()
        };
        assert!(matches!(
            bad.validate(),
            Err(SimError::BadFraction {
                name: "drop_rate",
                ..
            })
        ));
        let negative = Faults {
            error_rate: -0.1,
            ..Faults::none()
        };
        assert!(negative.validate().is_err());
        let nan = Faults {
            garbage_rate: f64::NAN,
            ..Faults::none()
        };
        assert!(nan.validate().is_err());
        let too_much = Faults {
            error_rate: 0.6,
            truncate_rate: 0.6,
            ..Faults::none()
        };
        assert!(too_much.validate().is_err());
        let zero_limit = Faults {
            rate_limit: Some(0),
            ..Faults::none()
        };
        assert!(matches!(zero_limit.validate(), Err(SimError::BadRateLimit)));
    }

    #[test]
    fn pick_fault_lays_bands_end_to_end() {
        let f = Faults {
            error_rate: 0.1,
            drop_rate: 0.2,
            truncate_rate: 0.3,
            garbage_rate: 0.1,
            ..Faults::none()
        };
        assert_eq!(pick_fault(&f, 0.05), Fault::Error500);
        assert_eq!(pick_fault(&f, 0.15), Fault::Drop);
        assert_eq!(pick_fault(&f, 0.45), Fault::Truncate);
        assert_eq!(pick_fault(&f, 0.65), Fault::Garbage);
        assert_eq!(pick_fault(&f, 0.75), Fault::None);
        assert_eq!(pick_fault(&Faults::none(), 0.0), Fault::None);
    }

    #[test]
    fn seeded_faults_hit_their_fractions() {
        let f = Faults {
            error_rate: 0.1,
            drop_rate: 0.05,
            truncate_rate: 0.02,
            garbage_rate: 0.03,
            ..Faults::none()
        };
        let dice = Dice::new(42);
        let n = 20_000;
        let mut counts: HashMap<Fault, u32> = HashMap::new();
        for _ in 0..n {
            *counts.entry(dice.fault(&f)).or_default() += 1;
        }
        let frac = |fault| f64::from(counts.get(&fault).copied().unwrap_or(0)) / f64::from(n);
        for (fault, want) in [
            (Fault::Error500, 0.1),
            (Fault::Drop, 0.05),
            (Fault::Truncate, 0.02),
            (Fault::Garbage, 0.03),
            (Fault::None, 0.8),
        ] {
            let got = frac(fault);
            assert!((got - want).abs() < 0.01, "{fault:?}: {got} vs {want}");
        }
        // The same seed gives the same sequence.
        let (a, b) = (Dice::new(7), Dice::new(7));
        let seq = |d: &Dice| (0..100).map(|_| d.fault(&f)).collect::<Vec<_>>();
        assert_eq!(seq(&a), seq(&b));
    }

    #[test]
    fn jitter_stays_in_range() {
        let dice = Dice::new(1);
        assert_eq!(dice.jitter(Duration::ZERO), Duration::ZERO);
        for _ in 0..1000 {
            assert!(dice.jitter(Duration::from_millis(5)) <= Duration::from_millis(5));
        }
    }

    #[test]
    fn rate_window_slides() {
        let window = RateWindow::new(Some(3));
        let t0 = Instant::now();
        assert!(window.admit(t0));
        assert!(window.admit(t0 + Duration::from_millis(100)));
        assert!(window.admit(t0 + Duration::from_millis(200)));
        assert!(!window.admit(t0 + Duration::from_millis(300)));
        assert!(!window.admit(t0 + Duration::from_millis(999)));
        assert!(window.admit(t0 + Duration::from_millis(1000)));
        assert!(!window.admit(t0 + Duration::from_millis(1050)));
        assert!(window.admit(t0 + Duration::from_millis(1100)));
        assert!(RateWindow::new(None).admit(t0));
    }

    #[test]
    fn fail_first_counts_per_key() {
        let ff = FailFirst::new(2);
        assert!(ff.should_fail(1));
        assert!(ff.should_fail(2));
        assert!(ff.should_fail(1));
        assert!(!ff.should_fail(1));
        assert!(ff.should_fail(2));
        assert!(!ff.should_fail(2));
        assert!(!FailFirst::new(0).should_fail(1));
    }

    #[test]
    fn episodes_start_at_their_lookup_and_last_their_time() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let started = Mutex::new(None);
        let e = Episode::lasting(503u16, 5, 10 * s);
        assert!(!e.covers(5, t0, &started));
        assert!(e.covers(6, t0 + s, &started));
        assert!(e.covers(7, t0 + 10 * s, &started));
        assert!(!e.covers(8, t0 + 11 * s, &started));
        let forever = Episode::forever("SYS9999".to_owned(), 0);
        let started = Mutex::new(None);
        assert!(forever.covers(1, t0, &started));
        assert!(forever.covers(2, t0 + 1000 * s, &started));
        let bad = Faults {
            outage: Some(Episode::forever(404, 0)),
            ..Faults::none()
        };
        assert!(matches!(
            bad.validate(),
            Err(SimError::BadOutageStatus(404))
        ));
        let recovered = Faults {
            storm: Some(forever),
            always_code: Some("SPAY0001".into()),
            fail_first: 1,
            ..Faults::none()
        }
        .recovered();
        assert_eq!(
            recovered,
            Faults {
                fail_first: 1,
                ..Faults::none()
            }
        );
    }

    #[test]
    fn retry_after_is_whole_seconds_at_least_one() {
        let with = |retry_after| Faults {
            retry_after,
            ..Faults::none()
        };
        assert_eq!(with(Duration::ZERO).retry_after_secs(), 1);
        assert_eq!(with(Duration::from_millis(1500)).retry_after_secs(), 2);
        assert_eq!(with(Duration::from_secs(3)).retry_after_secs(), 3);
    }
}

//! Run health: a circuit breaker over recent lookup attempts, and the outage budget.
//! Pure: every method takes the current `Instant`, so tests drive the clock by hand.
//!
//! # Architecture
//! Every attempt's [`Cause`] is recorded. While closed, a sliding window of the last
//! attempts opens the circuit when systemic failures (transport, 5xx, 429, bad replies,
//! maintenance) reach a share of it, or when one non-gone, non-success code answered
//! several *different* keys in a row, or when a freshly issued token is refused. Open:
//! nothing is sent for a pause (doubling from `pause_min` to `pause_max`); then one probe
//! goes out (half-open): an answer closes the circuit, another systemic failure (or the
//! same code, or a refused token) reopens it with a longer pause. The time spent open (and
//! in `Retry-After` holds) is charged to the outage budget; when it is spent, the run stops.
//! Lives beside the client (not in `pipeline/`) because the client asks it before every
//! attempt, retries included, and `payple/` imports nothing above `domain`.

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use super::cause::Cause;

/// Thresholds and pauses of the breaker.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthConfig {
    /// How many recent attempts the share is computed over.
    pub window: usize,
    /// No share-based decision below this many samples.
    pub min_samples: usize,
    /// Share of systemic failures in the window that opens the circuit.
    pub share: f64,
    /// Different keys answered one code in a row that open the circuit.
    pub same_code_keys: usize,
    pub pause_min: Duration,
    pub pause_max: Duration,
    /// Total time the run may spend paused for systemic reasons.
    pub budget: Duration,
    /// A probe sent longer ago than this without a result counts as lost: another goes.
    pub probe_timeout: Duration,
    /// Rounds of "a new token refused at once" before the run stops (configuration).
    pub token_rounds: u32,
    /// `false`: only `Retry-After` holds and the budget apply (library use, unit tests of
    /// the retry loop).
    pub breaker: bool,
}

impl HealthConfig {
    /// No circuit breaker and an unbounded budget: each key retries on its own.
    pub fn without_breaker() -> Self {
        Self {
            breaker: false,
            budget: Duration::from_secs(100 * 365 * 86_400),
            ..Self::default()
        }
    }
}

/// `now + d`, or about a century ahead when that overflows.
fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 86_400)))
        .unwrap_or(now)
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            window: 20,
            min_samples: 8,
            share: 0.75,
            same_code_keys: 8,
            pause_min: Duration::from_secs(2),
            pause_max: Duration::from_secs(60),
            budget: Duration::from_secs(1800),
            probe_timeout: Duration::from_secs(30),
            token_rounds: 3,
            breaker: true,
        }
    }
}

/// What the gate says to an attempt about to be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Go,
    /// Go, as the single probe of a half-open circuit.
    Probe,
    /// Ask again at this instant (or when woken).
    Wait(Instant),
    /// The outage budget is spent: send nothing more.
    Exhausted,
}

/// A state change, for the log and the progress bar.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    Opened { reason: String, pause: Duration },
    Reopened { reason: String, pause: Duration },
    Closed { paused: Duration },
}

/// What recording an attempt decided.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Recorded {
    /// The attempt belongs to an outage episode (it tripped the circuit, or failed
    /// systemically while it was open): it spends no retry budget and writes no row.
    pub episode: bool,
    pub transition: Option<Transition>,
}

/// Freshly issued tokens were refused `rounds` times in a row: a partner problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenStorm {
    pub code: String,
    pub rounds: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { probe_sent: Instant },
}

/// One code answering different keys in a row.
#[derive(Debug, Clone)]
struct Streak {
    code: String,
    keys: BTreeSet<u64>,
}

/// The breaker and the budget.
#[derive(Debug)]
pub struct Health {
    config: HealthConfig,
    state: State,
    /// `true` = a systemic failure.
    samples: VecDeque<bool>,
    streak: Option<Streak>,
    /// The pause the next opening uses.
    pause: Duration,
    /// The code whose storm (or refused token) opened the circuit: a probe answering it
    /// again reopens it.
    trip_code: Option<String>,
    episode_start: Option<Instant>,
    /// A `Retry-After` pause in effect (start, end).
    hold: Option<(Instant, Instant)>,
    /// Budget spent by finished episodes and holds.
    spent: Duration,
    token_rounds: u32,
    exhausted: bool,
}

impl Health {
    pub fn new(config: HealthConfig) -> Self {
        Self {
            pause: config.pause_min,
            config,
            state: State::Closed,
            samples: VecDeque::new(),
            streak: None,
            trip_code: None,
            episode_start: None,
            hold: None,
            spent: Duration::ZERO,
            token_rounds: 0,
            exhausted: false,
        }
    }

    pub fn config(&self) -> &HealthConfig {
        &self.config
    }

    /// Budget spent so far: finished pauses plus the running ones.
    pub fn spent(&self, now: Instant) -> Duration {
        let episode = self
            .episode_start
            .map_or(Duration::ZERO, |s| now.saturating_duration_since(s));
        let hold = self.hold.map_or(Duration::ZERO, |(start, end)| {
            now.min(end).saturating_duration_since(start)
        });
        self.spent + episode + hold
    }

    fn remaining(&self, now: Instant) -> Duration {
        self.config.budget.saturating_sub(self.spent(now))
    }

    pub fn is_exhausted(&self) -> bool {
        self.exhausted
    }

    /// Whether no lookup may leave now but the probe.
    pub fn is_open(&self) -> bool {
        self.state != State::Closed
    }

    /// Whether an attempt may be sent at `now`.
    pub fn admit(&mut self, now: Instant) -> Admit {
        if self.exhausted || self.remaining(now).is_zero() {
            self.exhausted = true;
            return Admit::Exhausted;
        }
        let budget_end = later(now, self.remaining(now));
        match self.state {
            State::Closed => match self.hold {
                Some((_, end)) if end > now => Admit::Wait(end.min(budget_end)),
                _ => Admit::Go,
            },
            State::Open { until } if now < until => Admit::Wait(until.min(budget_end)),
            State::Open { .. } => {
                self.state = State::HalfOpen { probe_sent: now };
                Admit::Probe
            }
            State::HalfOpen { probe_sent }
                if now.saturating_duration_since(probe_sent) >= self.config.probe_timeout =>
            {
                // The probe was lost (its lookup was abandoned): send another.
                self.state = State::HalfOpen { probe_sent: now };
                Admit::Probe
            }
            State::HalfOpen { .. } => {
                Admit::Wait((now + Duration::from_millis(50)).min(budget_end))
            }
        }
    }

    /// Records what one attempt (for the key with hash `key`) came to.
    pub fn record(&mut self, now: Instant, cause: &Cause, key: u64, probe: bool) -> Recorded {
        if !self.config.breaker {
            return Recorded::default();
        }
        let systemic = cause.is_systemic();
        match self.state {
            State::Closed => {
                let storm = self.track_streak(cause, key);
                if systemic
                    || matches!(cause, Cause::Active | Cause::Gone)
                    || cause.storm_code().is_some()
                {
                    self.samples.push_back(systemic);
                    while self.samples.len() > self.config.window {
                        self.samples.pop_front();
                    }
                }
                let reason = storm.or_else(|| self.share_reason());
                match reason {
                    Some(reason) => Recorded {
                        episode: true,
                        transition: Some(self.open(now, reason)),
                    },
                    None => Recorded::default(),
                }
            }
            State::HalfOpen { .. } if probe => {
                if systemic || self.is_trip_code(cause) {
                    Recorded {
                        episode: true,
                        transition: Some(self.reopen(now, cause.label())),
                    }
                } else {
                    Recorded {
                        episode: false,
                        transition: Some(self.close(now)),
                    }
                }
            }
            State::Open { .. } | State::HalfOpen { .. } => Recorded {
                episode: systemic || self.is_trip_code(cause),
                transition: None,
            },
        }
    }

    /// A token refused on its first use (or a renewal refused at once). Opens (or, for
    /// the probe, reopens) the circuit; after `token_rounds` such rounds, the run stops.
    pub fn token_refused(
        &mut self,
        now: Instant,
        code: &str,
        probe: bool,
    ) -> Result<Recorded, TokenStorm> {
        if !self.config.breaker {
            return Ok(Recorded::default());
        }
        let new_round = match self.state {
            State::Closed => true,
            State::HalfOpen { .. } => probe,
            State::Open { .. } => false,
        };
        if !new_round {
            return Ok(Recorded {
                episode: true,
                transition: None,
            });
        }
        self.token_rounds += 1;
        if self.token_rounds >= self.config.token_rounds {
            return Err(TokenStorm {
                code: code.to_owned(),
                rounds: self.token_rounds,
            });
        }
        self.trip_code = Some(code.to_owned());
        let reason = format!("a token was refused right after it was issued ({code})");
        let transition = if self.state == State::Closed {
            self.open(now, reason)
        } else {
            self.reopen(now, reason)
        };
        Ok(Recorded {
            episode: true,
            transition: Some(transition),
        })
    }

    /// A token was accepted: token storm rounds start over.
    pub fn token_accepted(&mut self) {
        self.token_rounds = 0;
    }

    /// Payple asked for a pause (`Retry-After`). `Err` when it is longer than the budget
    /// left: the run stops rather than sleeping through it.
    pub fn hold(&mut self, now: Instant, pause: Duration) -> Result<(), Duration> {
        let left = self.remaining(now);
        if pause > left {
            self.exhausted = true;
            return Err(left);
        }
        if self.episode_start.is_some() {
            // Already paused and charged: just do not probe before Payple's time.
            if let State::Open { until } = &mut self.state {
                *until = (*until).max(later(now, pause));
            }
            return Ok(());
        }
        let end = later(now, pause);
        match self.hold {
            Some((start, old_end)) if old_end > now => {
                self.hold = Some((start, old_end.max(end)));
            }
            finished => {
                self.settle_hold(finished, now);
                self.hold = Some((now, end));
            }
        }
        Ok(())
    }

    fn settle_hold(&mut self, hold: Option<(Instant, Instant)>, now: Instant) {
        if let Some((start, end)) = hold {
            self.spent += now.min(end).saturating_duration_since(start);
        }
    }

    /// One line for the progress bar while the circuit is not closed.
    pub fn note(&self, now: Instant) -> Option<String> {
        let spent = self.spent(now).as_secs();
        let budget = self.config.budget.as_secs();
        match self.state {
            State::Closed => match self.hold {
                Some((_, end)) if end > now => Some(format!(
                    "Payple asked for a pause: {}s left (outage budget {spent}/{budget}s)",
                    end.saturating_duration_since(now).as_secs()
                )),
                _ => None,
            },
            State::Open { until } => Some(format!(
                "Payple unhealthy: paused, probing in {}s (outage budget {spent}/{budget}s)",
                until.saturating_duration_since(now).as_secs()
            )),
            State::HalfOpen { .. } => Some(format!(
                "Payple unhealthy: probing (outage budget {spent}/{budget}s)"
            )),
        }
    }

    /// Updates the same-code streak; the reason to open when it is long enough.
    fn track_streak(&mut self, cause: &Cause, key: u64) -> Option<String> {
        match cause {
            Cause::Active | Cause::Gone => self.streak = None,
            _ => {
                let code = cause.storm_code()?;
                match &mut self.streak {
                    Some(s) if s.code == code => {
                        s.keys.insert(key);
                    }
                    other => {
                        *other = Some(Streak {
                            code: code.to_owned(),
                            keys: BTreeSet::from([key]),
                        });
                    }
                }
            }
        }
        let streak = self.streak.as_ref()?;
        (streak.keys.len() >= self.config.same_code_keys).then(|| {
            self.trip_code = Some(streak.code.clone());
            format!(
                "code {} answered {} different keys in a row",
                streak.code,
                streak.keys.len()
            )
        })
    }

    fn share_reason(&self) -> Option<String> {
        let n = self.samples.len();
        if n < self.config.min_samples {
            return None;
        }
        let bad = self.samples.iter().filter(|s| **s).count();
        let share = bad as f64 / n as f64;
        (share >= self.config.share).then(|| {
            format!(
                "{bad} of the last {n} attempts failed for reasons not about the key ({:.0}%)",
                share * 100.0
            )
        })
    }

    fn is_trip_code(&self, cause: &Cause) -> bool {
        match (cause, &self.trip_code) {
            (Cause::Reauth, Some(_)) => true,
            (cause, Some(trip)) => cause.storm_code() == Some(trip.as_str()),
            _ => false,
        }
    }

    fn open(&mut self, now: Instant, reason: String) -> Transition {
        if let Some(hold) = self.hold.take() {
            // The hold's time up to now is charged; the episode charges the rest.
            self.settle_hold(Some((hold.0, hold.1.min(now))), now);
        }
        self.episode_start = Some(now);
        let pause = self.pause;
        self.state = State::Open { until: now + pause };
        Transition::Opened { reason, pause }
    }

    fn reopen(&mut self, now: Instant, reason: String) -> Transition {
        self.pause = (self.pause * 2).min(self.config.pause_max);
        let pause = self.pause;
        self.state = State::Open { until: now + pause };
        Transition::Reopened { reason, pause }
    }

    fn close(&mut self, now: Instant) -> Transition {
        let paused = self
            .episode_start
            .take()
            .map_or(Duration::ZERO, |s| now.saturating_duration_since(s));
        self.spent += paused;
        self.state = State::Closed;
        self.pause = self.config.pause_min;
        self.samples.clear();
        self.streak = None;
        self.trip_code = None;
        Transition::Closed { paused }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn health() -> (Health, Instant) {
        let config = HealthConfig {
            budget: Duration::from_secs(30),
            ..HealthConfig::default()
        };
        (Health::new(config), Instant::now())
    }

    fn fail(h: &mut Health, t: Instant, key: u64) -> Recorded {
        h.record(t, &Cause::Http5xx, key, false)
    }

    #[test]
    fn a_majority_of_systemic_failures_opens_then_a_probe_closes() {
        let (mut h, t0) = health();
        for key in 0..7 {
            assert_eq!(fail(&mut h, t0, key), Recorded::default(), "{key}");
            assert_eq!(h.admit(t0), Admit::Go);
        }
        let tripped = fail(&mut h, t0, 7);
        assert!(tripped.episode);
        assert!(matches!(
            tripped.transition,
            Some(Transition::Opened { pause, .. }) if pause == 2 * S
        ));
        assert_eq!(h.admit(t0 + S), Admit::Wait(t0 + 2 * S));
        let note = h.note(t0 + S).expect("the bar says why");
        assert!(note.contains("probing in 1s"), "{note}");
        // Late answers of attempts already in flight: systemic ones belong to the episode.
        assert!(fail(&mut h, t0 + S, 8).episode);
        assert!(!h.record(t0 + S, &Cause::Active, 9, false).episode);
        assert!(h.is_open(), "only the probe decides");
        assert_eq!(h.admit(t0 + 2 * S), Admit::Probe);
        assert!(matches!(h.admit(t0 + 2 * S), Admit::Wait(_)), "one probe");
        // The probe fails: a longer pause.
        let r = h.record(t0 + 3 * S, &Cause::Transport, 1, true);
        assert!(r.episode);
        assert!(matches!(
            r.transition,
            Some(Transition::Reopened { pause, .. }) if pause == 4 * S
        ));
        assert_eq!(h.admit(t0 + 4 * S), Admit::Wait(t0 + 7 * S));
        assert_eq!(h.admit(t0 + 7 * S), Admit::Probe);
        let r = h.record(t0 + 7 * S, &Cause::Active, 1, true);
        assert_eq!(r.transition, Some(Transition::Closed { paused: 7 * S }));
        assert_eq!(h.admit(t0 + 7 * S), Admit::Go);
        assert_eq!(h.note(t0 + 7 * S), None);
        assert_eq!(h.spent(t0 + 9 * S), 7 * S);
        // The next opening starts from the short pause again.
        for key in 0..8 {
            fail(&mut h, t0 + 9 * S, key);
        }
        assert_eq!(h.admit(t0 + 9 * S), Admit::Wait(t0 + 11 * S));
    }

    #[test]
    fn a_few_failures_among_answers_do_not_open() {
        let (mut h, t0) = health();
        for i in 0..200u64 {
            let cause = if i % 3 == 0 {
                Cause::Http5xx
            } else {
                Cause::Active
            };
            assert!(!h.record(t0, &cause, i, false).episode);
        }
        assert_eq!(h.admit(t0), Admit::Go);
    }

    #[test]
    fn pauses_double_up_to_the_cap() {
        let (mut h, mut t) = health();
        h.config.budget = Duration::from_secs(3600);
        for key in 0..8 {
            fail(&mut h, t, key);
        }
        let mut pauses = Vec::new();
        for _ in 0..7 {
            let Admit::Wait(until) = h.admit(t) else {
                panic!("open")
            };
            t = until;
            assert_eq!(h.admit(t), Admit::Probe);
            if let Some(Transition::Reopened { pause, .. }) =
                h.record(t, &Cause::Http5xx, 0, true).transition
            {
                pauses.push(pause.as_secs());
            }
        }
        assert_eq!(pauses, [4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn one_code_for_many_different_keys_opens() {
        let (mut h, t0) = health();
        let code = Cause::UnknownCode("SYS9999".into());
        // The same key over and over is about that key.
        for _ in 0..20 {
            assert!(!h.record(t0, &code, 1, false).episode);
        }
        for key in 2..8 {
            assert!(!h.record(t0, &code, key, false).episode, "{key}");
        }
        let r = h.record(t0, &code, 8, false);
        assert!(r.episode);
        assert!(
            matches!(r.transition, Some(Transition::Opened { reason, .. }) if reason.contains("SYS9999"))
        );
        // While open, the same code is part of the episode; another code is a key's own.
        assert!(h.record(t0, &code, 9, false).episode);
        assert!(
            !h.record(t0, &Cause::UnknownCode("X1".into()), 10, false)
                .episode
        );
        assert_eq!(h.admit(t0 + 2 * S), Admit::Probe);
        assert!(matches!(
            h.record(t0 + 2 * S, &code, 11, true).transition,
            Some(Transition::Reopened { .. })
        ));
        assert_eq!(h.admit(t0 + 6 * S), Admit::Probe);
        assert!(matches!(
            h.record(t0 + 6 * S, &Cause::Gone, 12, true).transition,
            Some(Transition::Closed { .. })
        ));
    }

    #[test]
    fn an_answer_breaks_the_streak() {
        let (mut h, t0) = health();
        let code = Cause::UnknownCode("SYS9999".into());
        for key in 0..100 {
            let cause = if key % 7 == 6 { &Cause::Active } else { &code };
            assert!(!h.record(t0, cause, key, false).episode);
        }
    }

    #[test]
    fn the_budget_ends_an_endless_outage() {
        let (mut h, t0) = health();
        for key in 0..8 {
            fail(&mut h, t0, key);
        }
        let mut t = t0;
        loop {
            match h.admit(t) {
                Admit::Wait(until) => t = until,
                Admit::Probe => {
                    h.record(t, &Cause::Http5xx, 0, true);
                }
                Admit::Go => panic!("never closes"),
                Admit::Exhausted => break,
            }
        }
        assert_eq!(t, t0 + 30 * S, "stops when the budget is spent, not later");
        assert!(h.is_exhausted());
        assert_eq!(h.admit(t0), Admit::Exhausted);
    }

    #[test]
    fn holds_count_against_the_budget_and_a_long_one_ends_the_run() {
        let (mut h, t0) = health();
        assert_eq!(h.hold(t0, 5 * S), Ok(()));
        assert_eq!(h.admit(t0 + S), Admit::Wait(t0 + 5 * S));
        assert_eq!(
            h.hold(t0 + S, 2 * S),
            Ok(()),
            "a shorter one does not shorten"
        );
        assert_eq!(h.admit(t0 + 5 * S), Admit::Go);
        assert_eq!(h.spent(t0 + 10 * S), 5 * S);
        assert_eq!(h.hold(t0 + 10 * S, 3 * S), Ok(()));
        assert_eq!(h.spent(t0 + 20 * S), 8 * S);
        assert_eq!(h.hold(t0 + 20 * S, 100_000 * S), Err(22 * S));
        assert_eq!(h.admit(t0 + 20 * S), Admit::Exhausted);
    }

    #[test]
    fn refused_fresh_tokens_pause_then_stop_the_run() {
        let (mut h, t0) = health();
        let r = h.token_refused(t0, "SPAY0001", false).expect("round 1");
        assert!(r.episode);
        assert!(matches!(r.transition, Some(Transition::Opened { .. })));
        // Other lookups with the same token: the same round.
        assert!(
            h.token_refused(t0, "SPAY0001", false)
                .expect("same")
                .episode
        );
        assert_eq!(h.admit(t0 + 2 * S), Admit::Probe);
        let r = h
            .token_refused(t0 + 2 * S, "SPAY0001", true)
            .expect("round 2");
        assert!(matches!(r.transition, Some(Transition::Reopened { .. })));
        assert_eq!(h.admit(t0 + 6 * S), Admit::Probe);
        assert_eq!(
            h.token_refused(t0 + 6 * S, "SPAY0001", true),
            Err(TokenStorm {
                code: "SPAY0001".into(),
                rounds: 3
            })
        );
        // An accepted token starts the count over.
        let (mut h, t0) = health();
        h.token_refused(t0, "SPAY0001", false).expect("round 1");
        assert_eq!(h.admit(t0 + 2 * S), Admit::Probe);
        h.token_accepted();
        h.record(t0 + 2 * S, &Cause::Active, 1, true);
        assert_eq!(h.admit(t0 + 2 * S), Admit::Go);
        assert!(h.token_refused(t0 + 3 * S, "SPAY0001", false).is_ok());
    }

    #[test]
    fn a_lost_probe_is_replaced() {
        let (mut h, t0) = health();
        for key in 0..8 {
            fail(&mut h, t0, key);
        }
        assert_eq!(h.admit(t0 + 2 * S), Admit::Probe);
        assert!(matches!(h.admit(t0 + 3 * S), Admit::Wait(_)));
        assert_eq!(h.admit(t0 + 33 * S), Admit::Exhausted, "budget of 30 s");
        let (mut h, t0) = health();
        h.config.budget = Duration::from_secs(3600);
        for key in 0..8 {
            fail(&mut h, t0, key);
        }
        assert_eq!(h.admit(t0 + 2 * S), Admit::Probe);
        assert_eq!(h.admit(t0 + 33 * S), Admit::Probe);
    }
}

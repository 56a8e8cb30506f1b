//! The Payple client ([`PaypleClient`]): one `check` per billing key with its attempts,
//! the health gate, the pace and the retry schedule.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use reqwest::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderMap, HeaderValue, REFERER};
use tokio_util::sync::CancellationToken;
use url::Url;

use super::cause::{self, Cause};
use super::classify::{Verdict, codes};
use super::codebook::CodeBook;
use super::config::{AUTH_PATH, ClientConfig, MAX_RETRY_DELAY};
use super::error::PaypleError;
use super::health::{Admit, Health, Recorded, Transition};
use super::token::{Lifetime, TokenSlot};
use crate::domain::{KeyStatus, LookupOutcome, PayerId, stable_hash};

/// The Payple client. Cheap to share behind an `Arc`; every method takes `&self`.
#[derive(Debug)]
pub struct PaypleClient {
    pub(super) http: reqwest::Client,
    pub(super) config: ClientConfig,
    pub(super) auth_url: Url,
    pub(super) slot: TokenSlot,
    pub(super) pacer: Option<super::pace::Pacer>,
    /// The breaker, `Retry-After` holds and the outage budget.
    pub(super) health: std::sync::Mutex<Health>,
    /// Cancelled when the outage budget is spent: nothing more is sent.
    pub(super) unavailable: CancellationToken,
    /// The highest token generation Payple accepted at least once.
    pub(super) accepted_generation: AtomicU64,
    /// A key that answered success: what a half-open circuit probes with.
    pub(super) canary: std::sync::Mutex<Option<PayerId>>,
    pub(super) auth_calls: AtomicU64,
    pub(super) lookups: AtomicU64,
}

/// After an attempt: the key's outcome (or what stops the run), or another attempt.
pub(super) enum Next {
    Done(Box<Result<LookupOutcome, PaypleError>>),
    Retry(Duration),
}

/// What one attempt produced: a verdict, plus the generation of the token it used.
pub(super) struct Attempt {
    pub(super) verdict: Verdict,
    pub(super) generation: u64,
}

impl PaypleClient {
    pub fn new(config: ClientConfig) -> Result<Self, PaypleError> {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        let referer = HeaderValue::from_str(&config.referer)
            .map_err(|_| PaypleError::IncompleteAuth("Referer header value"))?;
        headers.insert(REFERER, referer);
        let http = crate::http::client_builder()
            .default_headers(headers)
            .user_agent(concat!("payple-reconcile/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .pool_idle_timeout(Duration::from_secs(20))
            .redirect(reqwest::redirect::Policy::none())
            // Retries are this client's own (backoff, outage gate). reqwest's default
            // policy would also copy every request (headers, body) in case the
            // connection refuses it: with no retries allowed it keeps no copy.
            .retry(reqwest::retry::never().max_retries_per_request(0))
            .build()
            .map_err(PaypleError::Client)?;
        let auth_url = config
            .origin
            .join(AUTH_PATH)
            .map_err(|_| PaypleError::IncompleteAuth("auth URL"))?;
        let lifetime = Lifetime::new(config.token_ttl, config.refresh_margin);
        let pacer = match config.rate {
            Some(rate) => {
                Some(super::pace::Pacer::start(rate.quota()).map_err(PaypleError::Pacer)?)
            }
            None => None,
        };
        Ok(Self {
            http,
            auth_url,
            slot: TokenSlot::new(lifetime),
            pacer,
            health: std::sync::Mutex::new(Health::new(config.health)),
            unavailable: CancellationToken::new(),
            accepted_generation: AtomicU64::new(0),
            canary: std::sync::Mutex::new(None),
            auth_calls: AtomicU64::new(0),
            lookups: AtomicU64::new(0),
            config,
        })
    }

    /// The settings that shape results, for the runs table (no credentials).
    pub fn describe(&self) -> serde_json::Value {
        let c = &self.config;
        serde_json::json!({
            "origin": c.origin.origin().ascii_serialization(),
            "max_attempts": c.max_attempts,
            "rate": c.rate.map(|r| r.per_second.get()),
            "rate_share": c.rate.map(|r| r.share.get()),
            "token_ttl_secs": c.token_ttl.as_secs(),
            "request_timeout_secs": c.request_timeout.as_secs_f64(),
            "codes": c.codes.describe(),
            "outage_budget_secs": c.health.budget.as_secs(),
        })
    }

    /// Attempts per key for transient failures.
    pub fn max_attempts(&self) -> u32 {
        self.config.max_attempts
    }

    /// The code book this client classifies answers with.
    pub fn codes(&self) -> &CodeBook {
        &self.config.codes
    }

    /// Whether a `failed` outcome came from exhausted retries of a transient failure
    /// (worth another try later), not from a definite answer.
    pub fn failed_transiently(&self, outcome: &LookupOutcome) -> bool {
        outcome.status == KeyStatus::Failed
            && outcome
                .result_code
                .as_deref()
                .is_some_and(|code| cause::worth_second_look(code, &self.config.codes))
    }

    /// Cancelled once the outage budget is spent: the run stops (exit 4, resumable).
    pub fn unavailable(&self) -> &CancellationToken {
        &self.unavailable
    }

    /// Whether the outage budget is spent.
    pub fn is_unavailable(&self) -> bool {
        self.unavailable.is_cancelled()
    }

    /// Time paused so far for reasons not about any key (open circuit, `Retry-After`).
    pub fn outage_paused(&self) -> Duration {
        self.lock_health().spent(Instant::now())
    }

    /// What the health gate is doing, for the progress bar; `None` when all is well.
    pub fn health_note(&self) -> Option<String> {
        self.lock_health().note(Instant::now())
    }

    pub(super) fn lock_health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Auth requests sent so far.
    pub fn auth_calls(&self) -> u64 {
        self.auth_calls.load(Ordering::Relaxed)
    }

    /// Lookup requests sent so far.
    pub fn lookups(&self) -> u64 {
        self.lookups.load(Ordering::Relaxed)
    }

    /// Makes sure a fresh token is held: the start-of-run check that credentials work.
    pub async fn authenticate(&self) -> Result<(), PaypleError> {
        self.token().await.map(drop)
    }

    /// Looks one key up. `Err` only for what stops the run.
    pub async fn check(&self, id: &PayerId) -> Result<LookupOutcome, PaypleError> {
        let never = CancellationToken::new();
        let outcome = self.check_until(id, &never).await?;
        Ok(outcome.unwrap_or_else(|| {
            LookupOutcome::failed("STOPPED", "the lookup was stopped before it was sent", 0)
        }))
    }

    /// Looks one key up unless `stop` fires while it waits for its turn or for a retry, or
    /// the outage budget runs out: then `Ok(None)`, and no request is sent after that.
    pub async fn check_until(
        &self,
        id: &PayerId,
        stop: &CancellationToken,
    ) -> Result<Option<LookupOutcome>, PaypleError> {
        let mut delays = self.backoff();
        let mut attempts = 0u32;
        let mut renewed = false;
        loop {
            // Wait for our turn first: a token taken before a long wait could lapse.
            let Some(probe) = self.wait_turn(stop).await else {
                return Ok(None);
            };
            let token = self.token().await?;
            if probe && let Some(canary) = self.canary_other_than(id) {
                // A key known to answer tells best whether Payple is back.
                let attempt = self.attempt(&token, &canary).await;
                self.observe(&attempt, &canary, true)?;
                if !self.hold_for(&attempt.verdict) {
                    return Ok(None);
                }
                continue;
            }
            attempts += 1;
            let attempt = self.attempt(&token, id).await;
            let episode = self.observe(&attempt, id, probe)?.episode;
            if !self.hold_for(&attempt.verdict) {
                return Ok(None);
            }
            if episode || is_rate_limited(&attempt.verdict) {
                // Part of an outage, or pushback about our pace: no retry budget spent;
                // the key waits at the gate.
                continue;
            }
            let delay = match self.settle(attempt, attempts, &mut renewed, &mut delays) {
                Next::Done(outcome) => return (*outcome).map(Some),
                Next::Retry(delay) => delay,
            };
            tracing::debug!(key = %id, attempt = attempts, ?delay, "retrying");
            tokio::select! {
                biased;
                _ = stop.cancelled() => return Ok(None),
                _ = self.unavailable.cancelled() => return Ok(None),
                _ = tokio::time::sleep(delay.min(MAX_RETRY_DELAY)) => {}
            }
        }
    }

    /// What an attempt outside an outage episode means for the key: an outcome, or
    /// another attempt after a delay (a renewed token, a transient failure with retries
    /// left).
    pub(super) fn settle(
        &self,
        attempt: Attempt,
        attempts: u32,
        renewed: &mut bool,
        delays: &mut impl Iterator<Item = Duration>,
    ) -> Next {
        let done = |status, details, code, msg| {
            Next::Done(Box::new(Ok(LookupOutcome {
                status,
                details,
                result_code: Some(code),
                result_msg: msg,
                attempts,
            })))
        };
        let failed =
            |code, msg| Next::Done(Box::new(Ok(LookupOutcome::failed(code, msg, attempts))));
        match attempt.verdict {
            Verdict::Active { details, code, msg } => done(KeyStatus::Active, *details, code, msg),
            Verdict::Gone { code, msg } => done(KeyStatus::Gone, Default::default(), code, msg),
            Verdict::Failed { code, msg } => failed(code, msg),
            Verdict::Config { code, msg } => {
                Next::Done(Box::new(Err(PaypleError::Config { code, msg })))
            }
            Verdict::Reauth { code, msg } => {
                if self.slot.invalidate(attempt.generation) {
                    tracing::info!(%code, "Payple refused the token; renewing it");
                }
                if *renewed {
                    return failed(code, msg);
                }
                *renewed = true;
                Next::Retry(Duration::ZERO)
            }
            Verdict::Transient {
                code,
                msg,
                retry_after,
            } => match delays.next() {
                Some(d) => Next::Retry(d.max(retry_after.unwrap_or_default())),
                None => failed(code, msg),
            },
        }
    }

    /// Capped exponential backoff with jitter; yields `max_attempts - 1` delays.
    pub(super) fn backoff(&self) -> impl Iterator<Item = Duration> + use<> {
        backoff(&self.config)
    }

    /// After a 429, pauses every lookup for its `Retry-After`; `false` (and the run stops)
    /// when that is longer than the outage budget left.
    pub(super) fn hold_for(&self, verdict: &Verdict) -> bool {
        match verdict {
            Verdict::Transient { retry_after, .. } if is_rate_limited(verdict) => {
                self.hold_all(retry_after.unwrap_or(self.config.retry_base))
            }
            _ => true,
        }
    }

    /// Pauses every lookup for a `Retry-After`; `false` (and the run stops) when the pause
    /// is longer than the outage budget left.
    pub(super) fn hold_all(&self, pause: Duration) -> bool {
        let held = self.lock_health().hold(Instant::now(), pause);
        match held {
            Ok(()) => {
                if pause >= Duration::from_secs(1) {
                    tracing::info!(
                        pause_secs = pause.as_secs_f64(),
                        "Payple answered 429: pausing every lookup for its Retry-After"
                    );
                }
                true
            }
            Err(left) => {
                tracing::warn!(
                    retry_after_secs = pause.as_secs(),
                    budget_left_secs = left.as_secs(),
                    "Payple asked for a pause longer than the outage budget left"
                );
                self.give_up();
                false
            }
        }
    }

    /// The outage budget is spent: stop sending (once).
    pub(super) fn give_up(&self) {
        if !self.unavailable.is_cancelled() {
            tracing::error!(
                paused_secs = self.outage_paused().as_secs(),
                "outage budget spent: no more lookups; the run stops and is resumable"
            );
            self.unavailable.cancel();
        }
    }

    /// Waits until the health gate and the rate limiter let an attempt go. `Some(true)`
    /// for the half-open circuit's probe; `None` when `stop` fired or the budget is spent.
    pub(super) async fn wait_turn(&self, stop: &CancellationToken) -> Option<bool> {
        loop {
            let probe = self.wait_gate(stop).await?;
            self.pace(stop).await?;
            if probe {
                return Some(true);
            }
            // The circuit may have opened while this lookup queued for the pacer.
            let admit = self.lock_health().admit(Instant::now());
            match admit {
                Admit::Go => return Some(false),
                Admit::Probe => return Some(true),
                Admit::Exhausted => {
                    self.give_up();
                    return None;
                }
                Admit::Wait(_) => {}
            }
        }
    }

    /// Waits at the health gate: `Some(true)` for the probe, `Some(false)` to go.
    pub(super) async fn wait_gate(&self, stop: &CancellationToken) -> Option<bool> {
        loop {
            let admit = self.lock_health().admit(Instant::now());
            let until = match admit {
                Admit::Go => return Some(false),
                Admit::Probe => return Some(true),
                Admit::Exhausted => {
                    self.give_up();
                    return None;
                }
                Admit::Wait(until) => until,
            };
            tokio::select! {
                biased;
                _ = stop.cancelled() => return None,
                _ = self.unavailable.cancelled() => return None,
                _ = tokio::time::sleep_until(until.into()) => {}
            }
        }
    }

    pub(super) async fn pace(&self, stop: &CancellationToken) -> Option<()> {
        let Some(pacer) = &self.pacer else {
            return Some(());
        };
        tokio::select! {
            biased;
            _ = stop.cancelled() => None,
            _ = pacer.ready() => Some(()),
        }
    }

    /// The canary key for a probe, unless it is the key itself.
    pub(super) fn canary_other_than(&self, id: &PayerId) -> Option<PayerId> {
        let canary = self.canary.lock().unwrap_or_else(|p| p.into_inner());
        canary.as_ref().filter(|c| *c != id).cloned()
    }

    /// Tells the health gate what an attempt came to, logs any state change, and says
    /// whether the attempt belongs to an outage episode. `Err` for a token storm.
    pub(super) fn observe(
        &self,
        attempt: &Attempt,
        id: &PayerId,
        probe: bool,
    ) -> Result<Recorded, PaypleError> {
        let cause = cause::cause_of(&attempt.verdict, &self.config.codes);
        let now = Instant::now();
        let fresh_token = attempt.generation > self.accepted_generation.load(Ordering::Relaxed);
        let recorded = match (&cause, &attempt.verdict) {
            (Cause::Reauth, Verdict::Reauth { code, .. }) if fresh_token => {
                if self.slot.invalidate(attempt.generation) {
                    tracing::info!(%code, "Payple refused a token it had just issued");
                }
                self.lock_health()
                    .token_refused(now, code, probe)
                    .map_err(|storm| PaypleError::TokenStorm {
                        code: storm.code,
                        rounds: storm.rounds,
                    })?
            }
            _ => {
                if matches!(
                    cause,
                    Cause::Active
                        | Cause::Gone
                        | Cause::Mismatch
                        | Cause::UnknownCode(_)
                        | Cause::Maintenance
                ) {
                    self.accepted_generation
                        .fetch_max(attempt.generation, Ordering::Relaxed);
                    self.lock_health().token_accepted();
                }
                if cause == Cause::Active {
                    let mut canary = self.canary.lock().unwrap_or_else(|p| p.into_inner());
                    if canary.is_none() {
                        *canary = Some(id.clone());
                    }
                }
                let key = stable_hash(id.expose().as_bytes());
                self.lock_health().record(now, &cause, key, probe)
            }
        };
        if let Some(transition) = &recorded.transition {
            log_transition(transition, &cause);
        }
        Ok(recorded)
    }
}
pub(super) fn is_rate_limited(verdict: &Verdict) -> bool {
    matches!(verdict, Verdict::Transient { code, .. } if code == codes::RATE_LIMITED)
}

/// Logs a change of the health gate: WARN when lookups stop, INFO when they resume.
pub(super) fn log_transition(transition: &Transition, cause: &Cause) {
    match transition {
        Transition::Opened { reason, pause } => tracing::warn!(
            cause = %cause.label(),
            %reason,
            pause_secs = pause.as_secs_f64(),
            "Payple looks unavailable: lookups paused, then one probe"
        ),
        Transition::Reopened { reason, pause } => tracing::warn!(
            cause = %cause.label(),
            %reason,
            pause_secs = pause.as_secs_f64(),
            "the probe failed: lookups paused longer"
        ),
        Transition::Closed { paused } => tracing::info!(
            paused_secs = paused.as_secs_f64(),
            "the probe was answered: lookups resume at the configured pace"
        ),
    }
}

/// Capped exponential backoff with jitter seeded from the operating system's randomness
/// (backon without its `std` feature would seed every process alike, so shards and
/// restarted jobs would retry in lockstep).
pub(super) fn backoff(config: &ClientConfig) -> impl Iterator<Item = Duration> + use<> {
    backon::ExponentialBuilder::default()
        .with_min_delay(config.retry_base)
        .with_max_delay(config.retry_cap)
        .with_factor(2.0)
        .with_jitter()
        .with_jitter_seed(rand::random())
        .with_max_times(config.max_attempts.saturating_sub(1) as usize)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payple::health::HealthConfig;
    use secrecy::SecretString;

    #[test]
    fn backoff_jitter_differs_from_one_schedule_to_the_next() {
        let config = ClientConfig {
            origin: Url::parse("https://democpay.payple.kr").unwrap(),
            cst_id: SecretString::from("c"),
            cust_key: SecretString::from("k"),
            referer: "https://shop.example".into(),
            token_ttl: Duration::from_secs(1800),
            refresh_margin: Duration::from_secs(300),
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            max_attempts: 4,
            retry_base: Duration::from_millis(250),
            retry_cap: Duration::from_secs(10),
            rate: None,
            codes: CodeBook::default(),
            health: HealthConfig::default(),
        };
        let first: Vec<Duration> = backoff(&config).collect();
        assert_eq!(first.len(), 3);
        // With a fixed seed every schedule (and every process) is identical.
        let differs = (0..5).any(|_| backoff(&config).collect::<Vec<_>>() != first);
        assert!(differs, "the same jitter every time: {first:?}");
    }
}

//! The Payple client: partner auth once per token lifetime, shared by every concurrent
//! lookup, and one `check` per billing key with retries for what is transient.
//!
//! # Architecture
//! [`PaypleClient::check`] loops over attempts. Each attempt asks the run's [`health`] gate
//! (closed, open or probing; `Retry-After` holds; the outage budget), waits for the rate
//! limiter, takes the shared token ([`token::TokenSlot`], renewed single-flight before it
//! lapses or when Payple answers `SPAY0001`), sends one lookup, and hands the reply to the
//! pure [`classify`] functions; the attempt's cause goes back to the health gate. An attempt
//! that belongs to an outage episode spends no retry budget: the key waits at the gate.
//! Configuration errors, a token storm and an unreachable auth endpoint end the run
//! ([`PaypleError`]); a spent outage budget cancels [`PaypleClient::unavailable`];
//! everything about one key ends in a [`LookupOutcome`].

pub mod classify;
pub mod health;
pub mod pace;
pub mod token;
pub mod wire;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use governor::Quota;
use reqwest::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderMap, HeaderValue, REFERER, RETRY_AFTER};
use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::domain::{KeyStatus, LookupOutcome, PayerId, cut_chars, stable_hash};
use classify::{AuthVerdict, Cause, CodeBook, Verdict, codes};
use health::{Admit, Health, HealthConfig, Recorded, Transition};
use token::{Lifetime, Token, TokenSlot};
use wire::{AuthRequest, Fields, LookupRequest};

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

const AUTH_PATH: &str = "/php/auth.php";
const PAY_WORK: &str = "PUSERINFO";
/// A retry delay never exceeds this.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(120);
/// The largest auth or lookup reply read; Payple's are under 2 KiB.
pub const MAX_REPLY_BYTES: usize = 64 * 1024;
/// How much of a reason from Payple a log line or error carries.
const MAX_LOGGED_REASON: usize = 500;

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

/// Errors that stop the whole run: nothing about one key.
#[derive(Debug, thiserror::Error)]
pub enum PaypleError {
    #[error("Payple refused the partner configuration ({code}): {msg}")]
    Config { code: String, msg: String },
    #[error(
        "Payple's auth reply points lookups at {found}, not the configured origin {expected}; \
         credentials are never sent to another origin"
    )]
    ForeignLookupUrl { expected: String, found: String },
    #[error("Payple's auth reply carried no usable {0}")]
    IncompleteAuth(&'static str),
    #[error("partner authentication failed after {attempts} attempts: {reason}")]
    AuthUnavailable { attempts: u32, reason: String },
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("cannot start the pacer thread: {0}")]
    Pacer(#[source] std::io::Error),
    #[error(
        "Payple refused {rounds} freshly issued tokens in a row ({code}): check the partner \
         configuration (cst_id, custKey, Referer) with Payple"
    )]
    TokenStorm { code: String, rounds: u32 },
}

impl PaypleError {
    /// Whether the error is the partner's configuration (exit code 3) rather than an
    /// outage.
    pub fn is_configuration(&self) -> bool {
        !matches!(
            self,
            Self::AuthUnavailable { .. } | Self::Client(_) | Self::Pacer(_)
        )
    }
}

/// The Payple client. Cheap to share behind an `Arc`; every method takes `&self`.
#[derive(Debug)]
pub struct PaypleClient {
    http: reqwest::Client,
    config: ClientConfig,
    auth_url: Url,
    slot: TokenSlot,
    pacer: Option<pace::Pacer>,
    /// The breaker, `Retry-After` holds and the outage budget.
    health: std::sync::Mutex<Health>,
    /// Cancelled when the outage budget is spent: nothing more is sent.
    unavailable: CancellationToken,
    /// The highest token generation Payple accepted at least once.
    accepted_generation: AtomicU64,
    /// A key that answered success: what a half-open circuit probes with.
    canary: std::sync::Mutex<Option<PayerId>>,
    auth_calls: AtomicU64,
    lookups: AtomicU64,
}

/// After an attempt: the key's outcome (or what stops the run), or another attempt.
enum Next {
    Done(Box<Result<LookupOutcome, PaypleError>>),
    Retry(Duration),
}

/// What one attempt produced: a verdict, plus the generation of the token it used.
struct Attempt {
    verdict: Verdict,
    generation: u64,
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
            Some(rate) => Some(pace::Pacer::start(rate.quota()).map_err(PaypleError::Pacer)?),
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
                .is_some_and(|code| classify::worth_second_look(code, &self.config.codes))
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

    fn lock_health(&self) -> std::sync::MutexGuard<'_, Health> {
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
            // A spent outage budget wakes the sleep too: no sleep outlives the budget.
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
    fn settle(
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
    fn backoff(&self) -> impl Iterator<Item = Duration> + use<> {
        backoff(&self.config)
    }

    /// After a 429, pauses every lookup for its `Retry-After`; `false` (and the run stops)
    /// when that is longer than the outage budget left.
    fn hold_for(&self, verdict: &Verdict) -> bool {
        match verdict {
            Verdict::Transient { retry_after, .. } if is_rate_limited(verdict) => {
                self.hold_all(retry_after.unwrap_or(self.config.retry_base))
            }
            _ => true,
        }
    }

    /// Pauses every lookup for a `Retry-After`; `false` (and the run stops) when the pause
    /// is longer than the outage budget left.
    fn hold_all(&self, pause: Duration) -> bool {
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
    fn give_up(&self) {
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
    async fn wait_turn(&self, stop: &CancellationToken) -> Option<bool> {
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
    async fn wait_gate(&self, stop: &CancellationToken) -> Option<bool> {
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

    async fn pace(&self, stop: &CancellationToken) -> Option<()> {
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
    fn canary_other_than(&self, id: &PayerId) -> Option<PayerId> {
        let canary = self.canary.lock().unwrap_or_else(|p| p.into_inner());
        canary.as_ref().filter(|c| *c != id).cloned()
    }

    /// Tells the health gate what an attempt came to, logs any state change, and says
    /// whether the attempt belongs to an outage episode. `Err` for a token storm.
    fn observe(
        &self,
        attempt: &Attempt,
        id: &PayerId,
        probe: bool,
    ) -> Result<Recorded, PaypleError> {
        let cause = classify::cause_of(&attempt.verdict, &self.config.codes);
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

    /// One lookup request and what it means.
    async fn attempt(&self, token: &Token, id: &PayerId) -> Attempt {
        let body = LookupRequest {
            cst_id: token.cst_id.expose_secret(),
            cust_key: token.cust_key.expose_secret(),
            auth_key: token.auth_key.expose_secret(),
            payer_id: id.expose(),
        };
        self.lookups.fetch_add(1, Ordering::Relaxed);
        let verdict = match self.post(token.lookup_url.clone(), &body).await {
            Ok(Reply::Status(verdict)) => verdict,
            Ok(Reply::Body(fields)) => classify::classify_lookup(&fields, id, &self.config.codes),
            Err(verdict) => verdict,
        };
        Attempt {
            verdict,
            generation: token.generation,
        }
    }

    /// POSTs a JSON body; a non-2xx status or an unreadable body become a verdict.
    async fn post(&self, url: Url, body: &impl serde::Serialize) -> Result<Reply, Verdict> {
        let transient = |code: &str, msg: String| Verdict::Transient {
            code: code.to_owned(),
            msg,
            retry_after: None,
        };
        let bytes = serde_json::to_vec(body)
            .map_err(|e| transient(codes::BAD_BODY, format!("cannot encode request: {e}")))?;
        let response = self.http.post(url).body(bytes).send().await.map_err(|e| {
            if is_certificate_problem(&e) {
                // Not transient: the same certificate comes back on every try.
                Verdict::Failed {
                    code: codes::TLS_VERIFY.to_owned(),
                    msg: describe(&e),
                }
            } else {
                transient(codes::TRANSPORT, describe(&e))
            }
        })?;
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(classify::parse_retry_after);
        if let Some(verdict) = classify::classify_status(response.status().as_u16(), retry_after) {
            return Ok(Reply::Status(verdict));
        }
        let body = match read_capped(response, MAX_REPLY_BYTES).await {
            Ok(body) => body,
            Err(Capped::TooLarge) => {
                // Not worth retrying: the same reply would come back, as large.
                return Ok(Reply::Status(Verdict::Failed {
                    code: codes::TOO_LARGE.to_owned(),
                    msg: format!(
                        "Payple's reply is larger than {} KiB; not read further",
                        MAX_REPLY_BYTES / 1024
                    ),
                }));
            }
            Err(Capped::Broken(e)) => return Err(transient(codes::BAD_BODY, describe(&e))),
        };
        Fields::parse(&body)
            .map(Reply::Body)
            .map_err(|e| transient(codes::BAD_BODY, e.0))
    }

    /// The current token, renewing it first if needed. Single-flight: callers that find
    /// it stale queue on the gate, and all but the first find a fresh one there.
    async fn token(&self) -> Result<Arc<Token>, PaypleError> {
        if let Some(token) = self.slot.fresh() {
            return Ok(token);
        }
        let _gate = self.slot.gate.lock().await;
        if let Some(token) = self.slot.fresh() {
            return Ok(token);
        }
        let token = Arc::new(self.renew().await?);
        self.slot.store(Arc::clone(&token));
        Ok(token)
    }

    /// Partner auth with retries for transient failures.
    async fn renew(&self) -> Result<Token, PaypleError> {
        let mut delays = self.backoff();
        let mut attempts = 0;
        loop {
            attempts += 1;
            self.auth_calls.fetch_add(1, Ordering::Relaxed);
            let body = AuthRequest {
                cst_id: self.config.cst_id.expose_secret(),
                cust_key: self.config.cust_key.expose_secret(),
                pay_work: PAY_WORK,
            };
            let started = Instant::now();
            let reason = match self.post(self.auth_url.clone(), &body).await {
                Ok(Reply::Body(fields)) => {
                    match classify::classify_auth(&fields, &self.config.codes) {
                        AuthVerdict::Success => {
                            let token = self.token_from(&fields, started)?;
                            tracing::info!(generation = token.generation, "partner auth succeeded");
                            return Ok(token);
                        }
                        AuthVerdict::Config { code, msg } => {
                            let msg = cut_chars(&msg, MAX_LOGGED_REASON).into_owned();
                            return Err(PaypleError::Config { code, msg });
                        }
                        AuthVerdict::Transient { code, msg } => format!("{code}: {msg}"),
                    }
                }
                // A status or reply too large to read, or a certificate that fails
                // verification: the same answer would come back, so the run stops.
                Ok(Reply::Status(Verdict::Failed { code, msg }))
                | Err(Verdict::Failed { code, msg }) => {
                    return Err(PaypleError::Config { code, msg });
                }
                Ok(Reply::Status(v)) | Err(v) => match v {
                    Verdict::Transient { code, msg, .. } => format!("{code}: {msg}"),
                    other => format!("{other:?}"),
                },
            };
            let reason = cut_chars(&reason, MAX_LOGGED_REASON).into_owned();
            match delays.next() {
                Some(delay) => {
                    tracing::warn!(attempt = attempts, %reason, ?delay, "partner auth failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                None => return Err(PaypleError::AuthUnavailable { attempts, reason }),
            }
        }
    }

    /// Builds the token from a successful auth reply, refusing a foreign lookup URL.
    fn token_from(&self, fields: &Fields, issued_at: Instant) -> Result<Token, PaypleError> {
        let secret = |name: &'static str| {
            fields
                .get(name)
                .map(SecretString::from)
                .ok_or(PaypleError::IncompleteAuth(name))
        };
        let lookup_url = lookup_url(fields, &self.config.origin)?;
        Ok(Token {
            generation: self.slot.issue_generation(),
            cst_id: secret("cst_id")?,
            cust_key: secret("custKey")?,
            auth_key: secret("AuthKey")?,
            lookup_url,
            issued_at,
        })
    }
}

enum Reply {
    Status(Verdict),
    Body(Fields),
}

fn is_rate_limited(verdict: &Verdict) -> bool {
    matches!(verdict, Verdict::Transient { code, .. } if code == codes::RATE_LIMITED)
}

/// Logs a change of the health gate: WARN when lookups stop, INFO when they resume.
fn log_transition(transition: &Transition, cause: &Cause) {
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
fn backoff(config: &ClientConfig) -> impl Iterator<Item = Duration> + use<> {
    backon::ExponentialBuilder::default()
        .with_min_delay(config.retry_base)
        .with_max_delay(config.retry_cap)
        .with_factor(2.0)
        .with_jitter()
        .with_jitter_seed(rand::random())
        .with_max_times(config.max_attempts.saturating_sub(1) as usize)
        .build()
}

/// Why a reply body was not read to its end.
enum Capped {
    TooLarge,
    Broken(reqwest::Error),
}

/// Reads a body chunk by chunk, stopping as soon as it exceeds `cap` bytes (whatever
/// `Content-Length` claimed): memory stays bounded however much the peer sends.
async fn read_capped(mut response: reqwest::Response, cap: usize) -> Result<Vec<u8>, Capped> {
    if response.content_length().is_some_and(|n| n > cap as u64) {
        return Err(Capped::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(Capped::Broken)? {
        if body.len() + chunk.len() > cap {
            return Err(Capped::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Where lookups go: `return_url`, else `PCD_PAY_HOST` + `PCD_PAY_URL`, else the older
/// `cPayHost` + `cPayUrl`; always on the configured origin.
pub fn lookup_url(fields: &Fields, origin: &Url) -> Result<Url, PaypleError> {
    let joined = |host: &str, path: &str| {
        fields
            .get(host)
            .zip(fields.get(path))
            .map(|(h, p)| format!("{}{}", h.trim_end_matches('/'), p))
    };
    let raw = fields
        .get("return_url")
        .or_else(|| joined("PCD_PAY_HOST", "PCD_PAY_URL"))
        .or_else(|| joined("cPayHost", "cPayUrl"))
        .ok_or(PaypleError::IncompleteAuth("return_url"))?;
    let url = origin
        .join(&raw)
        .map_err(|_| PaypleError::IncompleteAuth("return_url"))?;
    if url.origin() != origin.origin() {
        return Err(PaypleError::ForeignLookupUrl {
            expected: origin.origin().ascii_serialization(),
            found: url.origin().ascii_serialization(),
        });
    }
    Ok(url)
}

/// Whether a transport error is a TLS certificate that failed verification (anywhere in
/// its chain of causes).
fn is_certificate_problem(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(error) = next {
        if let Some(rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented) =
            error.downcast_ref::<rustls::Error>()
        {
            return true;
        }
        if let Some(io) = error.downcast_ref::<std::io::Error>()
            && io
                .get_ref()
                .is_some_and(|inner| is_certificate_problem(inner))
        {
            return true;
        }
        next = error.source();
    }
    false
}

/// A transport error in one line, without the request URL's query.
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "reply body broken"
    } else {
        "request failed"
    };
    let mut detail = String::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {detail}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> Url {
        Url::parse("https://democpay.payple.kr").unwrap()
    }

    #[test]
    fn lookup_url_prefers_return_url_and_refuses_foreign_origins() {
        let f = Fields::parse(
            br#"{"return_url":"https://democpay.payple.kr/php/cPayUser/api/cPayUserAct.php?ACT_=PUSERINFO"}"#,
        )
        .unwrap();
        assert_eq!(
            lookup_url(&f, &origin()).unwrap().as_str(),
            "https://democpay.payple.kr/php/cPayUser/api/cPayUserAct.php?ACT_=PUSERINFO"
        );
        let f = Fields::parse(
            br#"{"PCD_PAY_HOST":"https://democpay.payple.kr/","PCD_PAY_URL":"/php/x.php"}"#,
        )
        .unwrap();
        assert_eq!(
            lookup_url(&f, &origin()).unwrap().as_str(),
            "https://democpay.payple.kr/php/x.php"
        );
        let f = Fields::parse(br#"{"return_url":"https://evil.example/steal"}"#).unwrap();
        assert!(matches!(
            lookup_url(&f, &origin()),
            Err(PaypleError::ForeignLookupUrl { .. })
        ));
        let f = Fields::parse(br#"{"return_url":"http://democpay.payple.kr/x"}"#).unwrap();
        assert!(lookup_url(&f, &origin()).is_err(), "scheme downgrade");
        let f = Fields::parse(br#"{}"#).unwrap();
        assert!(matches!(
            lookup_url(&f, &origin()),
            Err(PaypleError::IncompleteAuth(_))
        ));
    }

    #[test]
    fn rate_quota_divides_by_share() {
        let r = Rate {
            per_second: NonZeroU32::new(200).unwrap(),
            share: NonZeroU32::new(4).unwrap(),
        };
        assert_eq!(r.quota().replenish_interval(), Duration::from_millis(20));
        assert_eq!(r.quota().burst_size().get(), 1);
    }

    #[test]
    fn backoff_jitter_differs_from_one_schedule_to_the_next() {
        let config = ClientConfig {
            origin: origin(),
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

    #[test]
    fn certificate_failures_are_recognised_through_io_errors() {
        let bad = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::other(bad);
        assert!(is_certificate_problem(&io));
        assert!(!is_certificate_problem(&std::io::Error::other(
            "connection reset"
        )));
    }
}

//! The Payple client: partner auth once per token lifetime, shared by every concurrent
//! lookup, and one `check` per billing key with retries for what is transient.
//!
//! # Architecture
//! [`PaypleClient::check`] loops over attempts. Each attempt takes the shared token
//! ([`token::TokenSlot`], renewed single-flight before it lapses or when Payple answers
//! `SPAY0001`), waits for the rate limiter and any global `Retry-After` pause, sends one
//! lookup, and hands the reply to the pure [`classify`] functions. Configuration errors and
//! an unreachable auth endpoint end the run ([`PaypleError`]); everything about one key ends
//! in a [`LookupOutcome`].

pub mod classify;
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

use crate::domain::{KeyStatus, LookupOutcome, PayerId};
use classify::{AuthVerdict, CodeBook, Verdict, codes};
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
/// A `Retry-After` longer than this is cut to it: one slow night beats a stuck job.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);
/// How many HTTP 429 answers one key tolerates, on top of `max_attempts`.
const MAX_RATE_LIMITED: u32 = 30;

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
    /// Set on HTTP 429: no lookup starts before this instant.
    pause_until: std::sync::Mutex<Option<Instant>>,
    auth_calls: AtomicU64,
    lookups: AtomicU64,
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
            pause_until: std::sync::Mutex::new(None),
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
            "gone_codes": c.codes.gone,
        })
    }

    /// Attempts per key for transient failures.
    pub fn max_attempts(&self) -> u32 {
        self.config.max_attempts
    }

    /// Whether a `failed` outcome came from exhausted retries of a transient failure
    /// (worth another try later), not from a definite answer.
    pub fn failed_transiently(&self, outcome: &LookupOutcome) -> bool {
        outcome.status == KeyStatus::Failed
            && outcome
                .result_code
                .as_deref()
                .is_some_and(|code| classify::is_transient_code(code, &self.config.codes))
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

    /// Looks one key up unless `stop` fires while it waits for its turn or for a retry:
    /// then `Ok(None)`, and no request is sent after the signal.
    pub async fn check_until(
        &self,
        id: &PayerId,
        stop: &CancellationToken,
    ) -> Result<Option<LookupOutcome>, PaypleError> {
        let mut delays = self.backoff();
        let mut attempts = 0u32;
        let mut rate_limited = 0u32;
        let mut renewed = false;
        loop {
            // Wait for our turn first: a token taken before a long wait could lapse.
            tokio::select! {
                biased;
                _ = stop.cancelled() => return Ok(None),
                _ = self.wait_turn() => {}
            }
            let token = self.token().await?;
            attempts += 1;
            let Attempt {
                verdict,
                generation,
            } = self.attempt(&token, id).await;
            match verdict {
                Verdict::Active { details, code, msg } => {
                    return Ok(Some(LookupOutcome {
                        status: KeyStatus::Active,
                        details: *details,
                        result_code: Some(code),
                        result_msg: msg,
                        attempts,
                    }));
                }
                Verdict::Gone { code, msg } => {
                    return Ok(Some(LookupOutcome {
                        status: KeyStatus::Gone,
                        details: Default::default(),
                        result_code: Some(code),
                        result_msg: msg,
                        attempts,
                    }));
                }
                Verdict::Failed { code, msg } => {
                    return Ok(Some(LookupOutcome::failed(code, msg, attempts)));
                }
                Verdict::Config { code, msg } => return Err(PaypleError::Config { code, msg }),
                Verdict::Reauth { code, msg } => {
                    if self.slot.invalidate(generation) {
                        tracing::info!(%code, "Payple refused the token; renewing it");
                    }
                    if renewed {
                        return Ok(Some(LookupOutcome::failed(code, msg, attempts)));
                    }
                    renewed = true;
                }
                Verdict::Transient {
                    code,
                    msg,
                    retry_after,
                } => {
                    let delay =
                        self.retry_delay(&code, retry_after, &mut rate_limited, &mut delays);
                    let Some(delay) = delay else {
                        return Ok(Some(LookupOutcome::failed(code, msg, attempts)));
                    };
                    tracing::debug!(key = %id, %code, attempt = attempts, ?delay, "retrying");
                    tokio::select! {
                        biased;
                        _ = stop.cancelled() => return Ok(None),
                        _ = tokio::time::sleep(delay.min(MAX_RETRY_AFTER)) => {}
                    }
                }
            }
        }
    }

    /// How long to wait before the next attempt after a transient failure; `None` when the
    /// key's retries are spent. A rate limit pauses every lookup instead and does not spend
    /// the key's budget (at most `MAX_RATE_LIMITED` times).
    fn retry_delay(
        &self,
        code: &str,
        retry_after: Option<Duration>,
        rate_limited: &mut u32,
        delays: &mut impl Iterator<Item = Duration>,
    ) -> Option<Duration> {
        if code == codes::RATE_LIMITED && *rate_limited < MAX_RATE_LIMITED {
            // Pushback is about our pace, not this key: pause everyone and do not spend
            // the key's retry budget on it.
            *rate_limited += 1;
            let pause = retry_after.unwrap_or(self.config.retry_base);
            self.pause_all(pause.min(MAX_RETRY_AFTER));
            return Some(Duration::ZERO);
        }
        delays
            .next()
            .map(|d| d.max(retry_after.unwrap_or_default()))
    }

    /// Capped exponential backoff with jitter; yields `max_attempts - 1` delays.
    fn backoff(&self) -> impl Iterator<Item = Duration> + use<> {
        backon::ExponentialBuilder::default()
            .with_min_delay(self.config.retry_base)
            .with_max_delay(self.config.retry_cap)
            .with_factor(2.0)
            .with_jitter()
            .with_max_times(self.config.max_attempts.saturating_sub(1) as usize)
            .build()
    }

    fn pause_all(&self, pause: Duration) {
        let until = Instant::now() + pause;
        let mut slot = self.pause_until.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none_or(|t| t < until) {
            *slot = Some(until);
        }
    }

    /// Waits for any global pause, then for the rate limiter.
    async fn wait_turn(&self) {
        loop {
            self.wait_pause().await;
            if let Some(pacer) = &self.pacer {
                pacer.ready().await;
            }
            // A 429 may have paused everyone while this lookup queued for the pacer.
            if !self.paused() {
                return;
            }
        }
    }

    /// The end of the current `Retry-After` pause, if one is in effect.
    fn pause_end(&self) -> Option<Instant> {
        let until = *self.pause_until.lock().unwrap_or_else(|p| p.into_inner());
        until.filter(|t| *t > Instant::now())
    }

    fn paused(&self) -> bool {
        self.pause_end().is_some()
    }

    async fn wait_pause(&self) {
        while let Some(t) = self.pause_end() {
            tokio::time::sleep_until(t.into()).await;
        }
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
        let response = self
            .http
            .post(url)
            .body(bytes)
            .send()
            .await
            .map_err(|e| transient(codes::TRANSPORT, describe(&e)))?;
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(classify::parse_retry_after);
        if let Some(verdict) = classify::classify_status(response.status().as_u16(), retry_after) {
            return Ok(Reply::Status(verdict));
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| transient(codes::BAD_BODY, describe(&e)))?;
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
                            return Err(PaypleError::Config { code, msg });
                        }
                        AuthVerdict::Transient { code, msg } => format!("{code}: {msg}"),
                    }
                }
                Ok(Reply::Status(Verdict::Failed { code, msg })) => {
                    return Err(PaypleError::Config { code, msg });
                }
                Ok(Reply::Status(v)) | Err(v) => match v {
                    Verdict::Transient { code, msg, .. } => format!("{code}: {msg}"),
                    other => format!("{other:?}"),
                },
            };
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
}

//! Delivering the outbox's pending events to the merchant's endpoint as Standard Webhooks:
//! in order per key, a few keys at a time, each attempt signed afresh with the same
//! `webhook-id`, retried with backoff and jitter inside a time budget, and stopped at once
//! when the caller's cut (the shutdown grace) comes.
//!
//! # Decisions
//! [`verdict`] is the one pure decision about an answer: 2xx delivered, 410 the endpoint
//! gone (delivery stops, events stay pending), anything else (429, 5xx, timeouts, other
//! 4xx) tried again after [`pause`]: the backoff, or longer when a 429 or 503 asks for it
//! with `Retry-After`. A pause that would outlast the budget leaves the event pending for the
//! next pass. An event still pending past [`DeliveryConfig::max_age`] is marked `expired`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::http::SecretUrl;
use futures::StreamExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::error::EventsError;
use super::sign::Signer;
use crate::payple::classify::parse_retry_after;
use crate::store::{OutboxRow, Store};

/// The merchant's endpoint: a secret URL ([`SecretUrl`]: https or loopback http, shown by
/// its host only).
#[derive(Clone, Debug)]
pub struct Endpoint(SecretUrl);

impl Endpoint {
    /// The reason never holds the URL.
    pub fn parse(value: &str) -> Result<Self, String> {
        SecretUrl::parse(value).map(Self).map_err(|e| e.to_string())
    }

    pub fn host(&self) -> &str {
        self.0.host()
    }
}

/// How delivery goes.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    pub endpoint: Endpoint,
    pub signer: Signer,
    /// The whole delivery's time (`--events-budget`).
    pub budget: Duration,
    /// Keys whose events are sent at once.
    pub concurrency: usize,
    /// One attempt's time.
    pub timeout: Duration,
    /// The first pause between attempts of one event (doubles, capped, jittered).
    pub backoff: Duration,
    /// Pending events older than this are `expired`.
    pub max_age: Duration,
}

/// Events the outbox holds after a delivery pass, and what the pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct DeliveryCounts {
    /// Delivered by this pass.
    pub delivered: u64,
    /// Still pending in the outbox after it.
    pub pending: u64,
    /// Marked expired by this pass.
    pub expired: u64,
    /// Attempts that did not deliver (retried or left).
    pub failed_attempts: u64,
    /// The endpoint answered 410 Gone: delivery stopped.
    pub endpoint_disabled: bool,
    /// Seconds the pass took.
    #[serde(skip)]
    pub seconds: f64,
}

impl DeliveryCounts {
    /// The counts a run's summary, metrics and notification carry.
    pub fn tally(&self) -> crate::domain::EventTally {
        crate::domain::EventTally {
            delivered: self.delivered,
            pending: self.pending,
            expired: self.expired,
        }
    }
}

/// What an answer means for the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// 410 Gone: the receiver wants no more events.
    Disabled,
    Retry,
}

/// The decision about an HTTP status.
pub fn verdict(status: u16) -> Verdict {
    match status {
        200..=299 => Verdict::Delivered,
        410 => Verdict::Disabled,
        _ => Verdict::Retry,
    }
}

/// The most one pause between attempts lasts.
pub const MAX_DELAY: Duration = Duration::from_secs(60);

/// The pause before attempt `attempt + 1` (`attempt` from 1): `base · 2^(attempt-1)`, capped
/// at [`MAX_DELAY`], times a jitter factor in `[0.5, 1.0)` (`unit` in `[0, 1)`).
pub fn retry_delay(base: Duration, attempt: u32, unit: f64) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    exp.min(MAX_DELAY).mul_f64(0.5 + unit.clamp(0.0, 1.0) / 2.0)
}

/// The pause before attempt `attempt + 1`: the jittered backoff, or the receiver's own
/// `Retry-After` when that is longer (a receiver that asks for an hour gets its hour, or the
/// event waits for the next pass).
pub fn pause(base: Duration, attempt: u32, unit: f64, asked: Option<Duration>) -> Duration {
    retry_delay(base, attempt, unit).max(asked.unwrap_or_default())
}

/// The receiver's requested pause: `Retry-After` in seconds, read on 429 and 503 only.
fn asked_pause(status: u16, headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    if status != 429 && status != 503 {
        return None;
    }
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after)
}

/// An HTTP answer: its status and the pause it asked for.
struct Answer {
    status: u16,
    asked: Option<Duration>,
}

/// Pending events read per pass at most.
const PASS_LIMIT: i64 = 200_000;

/// Expires what is too old, then delivers the pending events until each is delivered, the
/// budget is spent, the endpoint answers 410 or `cut` is cancelled.
pub async fn deliver_pending(
    store: &Store,
    config: &DeliveryConfig,
    cut: &CancellationToken,
) -> Result<DeliveryCounts, EventsError> {
    let started = Instant::now();
    let mut counts = DeliveryCounts::default();
    let cutoff = chrono::Utc::now()
        - chrono::Duration::from_std(config.max_age).unwrap_or(chrono::Duration::MAX);
    counts.expired = store.expire_events(cutoff).await?;
    if counts.expired > 0 {
        tracing::warn!(
            expired = counts.expired,
            "events pending past their age expired"
        );
    }
    let pending = store.pending_events(PASS_LIMIT).await?;
    if !pending.is_empty() {
        let client = crate::http::client_builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.timeout)
            .build()
            .map_err(EventsError::Client)?;
        let pass = Pass {
            store,
            config,
            client,
            deadline: started + config.budget,
            cut,
            disabled: Arc::new(AtomicBool::new(false)),
            delivered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        };
        let keys = by_key(pending);
        tracing::info!(
            events = keys.iter().map(VecDeque::len).sum::<usize>(),
            keys = keys.len(),
            host = config.endpoint.host(),
            "delivering events"
        );
        futures::stream::iter(keys)
            .map(|events| pass.key(events))
            .buffer_unordered(config.concurrency.max(1))
            .collect::<Vec<()>>()
            .await;
        counts.delivered = pass.delivered.load(Ordering::Relaxed);
        counts.failed_attempts = pass.failed.load(Ordering::Relaxed);
        counts.endpoint_disabled = pass.disabled.load(Ordering::Relaxed);
    }
    counts.pending = store.event_counts().await?.pending;
    counts.seconds = started.elapsed().as_secs_f64();
    Ok(counts)
}

/// Pending events grouped by key, each key's in delivery order, keys by their first event.
fn by_key(rows: Vec<OutboxRow>) -> Vec<VecDeque<OutboxRow>> {
    let mut index = std::collections::HashMap::new();
    let mut keys: Vec<VecDeque<OutboxRow>> = Vec::new();
    for row in rows {
        let slot = *index.entry(row.payer_sha256.clone()).or_insert_with(|| {
            keys.push(VecDeque::new());
            keys.len() - 1
        });
        keys[slot].push_back(row);
    }
    keys
}

struct Pass<'a> {
    store: &'a Store,
    config: &'a DeliveryConfig,
    client: reqwest::Client,
    deadline: Instant,
    cut: &'a CancellationToken,
    disabled: Arc<AtomicBool>,
    delivered: AtomicU64,
    failed: AtomicU64,
}

impl Pass<'_> {
    /// One key's events in order; a key's later event waits for its earlier one.
    async fn key(&self, mut events: VecDeque<OutboxRow>) {
        while let Some(event) = events.pop_front() {
            if !self.event(&event).await {
                return;
            }
        }
    }

    /// Tries one event until delivered (`true`) or given up for this pass (`false`).
    async fn event(&self, event: &OutboxRow) -> bool {
        let mut attempt = 0u32;
        loop {
            if self.disabled.load(Ordering::Relaxed) || self.cut.is_cancelled() {
                return false;
            }
            attempt += 1;
            let answer = tokio::select! {
                biased;
                () = self.cut.cancelled() => return false,
                () = tokio::time::sleep_until(self.deadline) => return false,
                answer = self.send(event) => answer,
            };
            let asked = answer.as_ref().ok().and_then(|a| a.asked);
            let (delivered, error) = self.outcome(answer);
            if let Err(e) = self
                .store
                .record_attempt(&event.event_id, delivered, error.as_deref())
                .await
            {
                tracing::error!(error = %e, "cannot record a delivery attempt");
                return false;
            }
            if delivered {
                self.delivered.fetch_add(1, Ordering::Relaxed);
                return true;
            }
            self.failed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(event_id = %event.event_id, attempt, error = ?error, "event not delivered");
            if !self.wait_to_retry(event, attempt, asked).await {
                return false;
            }
        }
    }

    /// Whether an answer delivered the event, and what to record when it did not. A 410
    /// disables delivery for the rest of the pass (logged once).
    fn outcome(&self, answer: Result<Answer, String>) -> (bool, Option<String>) {
        let status = match answer {
            Ok(Answer { status, .. }) => status,
            Err(e) => return (false, Some(e)),
        };
        match verdict(status) {
            Verdict::Delivered => (true, None),
            Verdict::Disabled => {
                if !self.disabled.swap(true, Ordering::Relaxed) {
                    tracing::error!(
                        host = self.config.endpoint.host(),
                        "the events endpoint answered 410 Gone: delivery disabled for this \
                         pass; the events stay pending"
                    );
                }
                (false, Some("HTTP 410 Gone: endpoint disabled".to_owned()))
            }
            Verdict::Retry => (false, Some(format!("HTTP {status}"))),
        }
    }

    /// Pauses before the next attempt ([`pause`]); `false` when the pause would outlast the
    /// budget (the event stays pending) or the cut comes first.
    async fn wait_to_retry(
        &self,
        event: &OutboxRow,
        attempt: u32,
        asked: Option<Duration>,
    ) -> bool {
        let delay = pause(self.config.backoff, attempt, rand::random::<f64>(), asked);
        if Instant::now() + delay >= self.deadline {
            if let Some(asked) = asked {
                tracing::info!(
                    event_id = %event.event_id,
                    retry_after_seconds = asked.as_secs(),
                    "the events endpoint asked for a pause past the delivery budget: the \
                     event stays pending"
                );
            }
            return false;
        }
        tokio::select! {
            biased;
            () = self.cut.cancelled() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }

    /// One signed POST; the answer, or why there was none (never the URL).
    async fn send(&self, event: &OutboxRow) -> Result<Answer, String> {
        let timestamp = chrono::Utc::now().timestamp();
        let signature =
            self.config
                .signer
                .sign(&event.event_id, timestamp, event.payload.as_bytes());
        let answer = self
            .client
            .post(self.config.endpoint.0.expose())
            .header("content-type", "application/json")
            .header("webhook-id", &event.event_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(event.payload.clone())
            .send()
            .await;
        match answer {
            Ok(response) => {
                let status = response.status().as_u16();
                Ok(Answer {
                    status,
                    asked: asked_pause(status, response.headers()),
                })
            }
            Err(e) if e.is_timeout() => Err("timed out".to_owned()),
            Err(e) if e.is_connect() => Err("cannot connect".to_owned()),
            Err(_) => Err("transport error".to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_decide_the_event() {
        assert_eq!(verdict(200), Verdict::Delivered);
        assert_eq!(verdict(204), Verdict::Delivered);
        assert_eq!(verdict(410), Verdict::Disabled);
        for s in [301, 400, 404, 429, 500, 503] {
            assert_eq!(verdict(s), Verdict::Retry, "{s}");
        }
    }

    #[test]
    fn delays_double_with_jitter_and_a_cap() {
        let base = Duration::from_secs(1);
        assert_eq!(retry_delay(base, 1, 0.0), Duration::from_millis(500));
        assert_eq!(retry_delay(base, 1, 1.0), Duration::from_secs(1));
        assert_eq!(retry_delay(base, 3, 1.0), Duration::from_secs(4));
        assert_eq!(retry_delay(base, 30, 1.0), MAX_DELAY);
        assert!(retry_delay(base, 2, 0.3) < Duration::from_secs(2));
    }

    #[test]
    fn a_longer_retry_after_wins_over_the_backoff() {
        let base = Duration::from_secs(1);
        let hour = Duration::from_secs(3600);
        assert_eq!(pause(base, 1, 1.0, None), Duration::from_secs(1));
        assert_eq!(pause(base, 1, 1.0, Some(hour)), hour);
        assert_eq!(
            pause(base, 3, 1.0, Some(Duration::from_secs(1))),
            Duration::from_secs(4),
            "a shorter Retry-After never shortens the backoff"
        );
    }

    #[test]
    fn retry_after_is_read_on_429_and_503_only() {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::RETRY_AFTER, "7".parse().expect("value"));
        let seven = Some(Duration::from_secs(7));
        assert_eq!(asked_pause(429, &headers), seven);
        assert_eq!(asked_pause(503, &headers), seven);
        assert_eq!(asked_pause(500, &headers), None);
        assert_eq!(asked_pause(429, &reqwest::header::HeaderMap::new()), None);
    }

    #[test]
    fn urls_are_https_or_loopback() {
        assert!(Endpoint::parse("https://hooks.example.com/payple?token=x").is_ok());
        assert!(Endpoint::parse("http://127.0.0.1:9/e").is_ok());
        let e = Endpoint::parse("http://hooks.example.com/secret-path").unwrap_err();
        assert!(!e.contains("secret-path"), "{e}");
        assert!(Endpoint::parse("https://u:p@hooks.example.com/").is_err());
        let shown = format!("{:?}", Endpoint::parse("https://h.example/tok").unwrap());
        assert!(!shown.contains("tok"), "{shown}");
    }
}

//! Posting a message to the webhooks: a bounded timeout per attempt, a few attempts with
//! doubling pauses for answers that may pass (5xx, 429, 408, timeouts, refused
//! connections), no redirects. Failures are logged with the host only and counted. Every
//! webhook is posted to at once, and a cut (the end of the shutdown grace) abandons those
//! still waiting.

use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::webhook::{NotifyError, WebhookUrl};
use crate::http::{Failure, send_once};

/// How to send.
#[derive(Debug, Clone)]
pub struct NotifierConfig {
    pub urls: Vec<WebhookUrl>,
    /// Per attempt, connection included.
    pub timeout: Duration,
    /// Attempts per URL (at least 1).
    pub attempts: u32,
    /// The first pause between attempts (doubling).
    pub backoff: Duration,
}

/// What happened to one message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delivery {
    pub sent: u32,
    pub failed: u32,
}

/// Posts messages to the configured webhooks.
#[derive(Debug)]
pub struct Notifier {
    client: reqwest::Client,
    config: NotifierConfig,
    /// Cancelled when sending must stop (the shutdown grace is over).
    cut: Option<CancellationToken>,
}

impl Notifier {
    pub fn new(config: NotifierConfig) -> Result<Self, NotifyError> {
        let client = crate::http::client_builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("payple-reconcile/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(NotifyError::Client)?;
        Ok(Self {
            client,
            config,
            cut: None,
        })
    }

    /// The same notifier, abandoning whatever is still being sent when `cut` is cancelled.
    pub fn cut_by(mut self, cut: CancellationToken) -> Self {
        self.cut = Some(cut);
        self
    }

    /// Whether any webhook is configured.
    pub fn is_empty(&self) -> bool {
        self.config.urls.is_empty()
    }

    /// Posts `body` to every webhook at once (a webhook that hangs does not hold up the
    /// others); failures are logged (host only) and counted, and so are the webhooks still
    /// waiting when the cut comes.
    pub async fn send(&self, body: &Value) -> Delivery {
        let sent =
            futures::future::join_all(self.config.urls.iter().map(|url| self.send_one(url, body)))
                .await;
        let delivered = sent.iter().filter(|ok| **ok).count() as u32;
        Delivery {
            sent: delivered,
            failed: sent.len() as u32 - delivered,
        }
    }

    /// One webhook, abandoned at the cut.
    async fn send_one(&self, url: &WebhookUrl, body: &Value) -> bool {
        let Some(cut) = &self.cut else {
            return self.deliver(url, body).await;
        };
        tokio::select! {
            biased;
            _ = cut.cancelled() => {
                tracing::error!(
                    host = url.host(),
                    "notification not delivered: abandoned at the end of the shutdown grace"
                );
                false
            }
            sent = self.deliver(url, body) => sent,
        }
    }

    async fn deliver(&self, url: &WebhookUrl, body: &Value) -> bool {
        let attempts = self.config.attempts.max(1);
        let mut pause = self.config.backoff;
        for attempt in 1..=attempts {
            match self.attempt(url, body).await {
                Ok(()) => {
                    tracing::info!(host = url.host(), attempt, "notification sent");
                    return true;
                }
                Err(Failure::Transient(why)) if attempt < attempts => {
                    tracing::warn!(host = url.host(), attempt, error = %why, ?pause, "notification failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause = pause.saturating_mul(2);
                }
                Err(Failure::Transient(why) | Failure::Final(why)) => {
                    tracing::error!(host = url.host(), attempt, error = %why, "notification not delivered");
                    return false;
                }
            }
        }
        false
    }

    async fn attempt(&self, url: &WebhookUrl, body: &Value) -> Result<(), Failure> {
        send_once(self.client.post(url.expose()).json(body)).await
    }
}

//! Where notifications go: a webhook URL, a secret shown by its host only
//! ([`WebhookUrl`]), and what makes the notification configuration unusable.

use crate::http::SecretUrl;

/// What can be wrong with the notification configuration.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("notification URL: {0}")]
    Url(#[from] crate::http::UrlError),
    #[error("cannot build the HTTP client for notifications: {0}")]
    Client(#[source] reqwest::Error),
}

/// A webhook URL: a secret (it carries the token that lets anyone post), checked and
/// shown as every secret URL is ([`SecretUrl`]: https or loopback http, host only).
#[derive(Clone, Debug)]
pub struct WebhookUrl(SecretUrl);

impl WebhookUrl {
    /// Parses one URL.
    pub fn parse(value: &str) -> Result<Self, NotifyError> {
        Ok(Self(SecretUrl::parse(value)?))
    }

    /// Splits `PAYPLE_NOTIFY_URL`-style text (one URL, or several separated by commas).
    pub fn parse_list(value: &str) -> Result<Vec<Self>, NotifyError> {
        value
            .split(',')
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(Self::parse)
            .collect()
    }

    /// The host, which is what logs show.
    pub fn host(&self) -> &str {
        self.0.host()
    }

    pub(crate) fn expose(&self) -> &str {
        self.0.expose()
    }
}

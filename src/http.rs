//! The one way to build an HTTP client in this process, and what every client of a secret
//! URL (webhooks, the Pushgateway, the events endpoint) shares: [`SecretUrl`], the loopback
//! test for plain http, and errors told without their URL. reqwest is built without a TLS crypto provider of its own (its
//! default, aws-lc, takes minutes to compile): the first call installs rustls' *ring*
//! provider for the whole process.

use std::fmt;
use std::net::IpAddr;
use std::sync::Once;

use secrecy::{ExposeSecret, SecretString};

/// A `reqwest` client builder whose TLS uses the *ring* provider (certificates verified
/// against the platform's roots, as reqwest does by default).
pub fn client_builder() -> reqwest::ClientBuilder {
    static PROVIDER: Once = Once::new();
    PROVIDER.call_once(|| {
        // Fails only when a provider is already installed, which is just as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder()
}

/// A URL that is a secret (it carries the token that lets anyone post): https, or plain
/// http to a loopback host only (a secret sent in clear text is a leaked secret); no user
/// or password in it. `Debug`, [`SecretUrl::host`] and every [`UrlError`] show the host
/// only.
#[derive(Clone)]
pub struct SecretUrl {
    url: SecretString,
    host: String,
}

/// Why a secret URL is refused; never shows the URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("not a URL ({0})")]
    Malformed(String),
    #[error("the URL has no host")]
    NoHost,
    #[error("host {host}: {reason}")]
    Refused { host: String, reason: &'static str },
}

impl SecretUrl {
    /// Parses `value` (surrounding spaces ignored) under the rules above.
    pub fn parse(value: &str) -> Result<Self, UrlError> {
        Self::parse_with(value, |_| Ok(()))
    }

    /// [`Self::parse`], with the caller's own rule on top (`Err(reason)` refuses).
    pub fn parse_with(
        value: &str,
        rule: impl FnOnce(&url::Url) -> Result<(), &'static str>,
    ) -> Result<Self, UrlError> {
        let url = url::Url::parse(value.trim()).map_err(|e| UrlError::Malformed(e.to_string()))?;
        let host = url.host_str().unwrap_or_default().to_owned();
        if host.is_empty() {
            return Err(UrlError::NoHost);
        }
        let refused = |reason| UrlError::Refused {
            host: host.clone(),
            reason,
        };
        match url.scheme() {
            "https" => {}
            "http" if is_loopback(&url) => {}
            "http" => return Err(refused("plain http only to a loopback address; use https")),
            _ => return Err(refused("the scheme must be https")),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(refused("no user or password in the URL"));
        }
        rule(&url).map_err(refused)?;
        Ok(Self {
            url: SecretString::from(url.to_string()),
            host,
        })
    }

    /// The host, which is what logs show.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The whole URL, to send a request to; never to be logged.
    pub fn expose(&self) -> &str {
        self.url.expose_secret()
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({} …)", self.host)
    }
}

/// Whether `url` names a loopback host (`localhost`, 127.0.0.0/8, `::1`): the only place
/// a secret URL may be sent over plain http.
pub fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

/// One failed attempt at a secret URL, told without the URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Worth another attempt: the connection failed, or a 5xx, 429 or 408 answer.
    Transient(String),
    /// Not worth one (another non-2xx answer).
    Final(String),
}

/// Whether an answer may pass if asked again: a server error, 429 or 408.
pub fn retryable(status: reqwest::StatusCode) -> bool {
    status.is_server_error()
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
        || status == reqwest::StatusCode::REQUEST_TIMEOUT
}

/// Sends `request` once: `Ok` on a 2xx answer, else what failed, without the URL.
pub async fn send_once(request: reqwest::RequestBuilder) -> Result<(), Failure> {
    let answer = request
        .send()
        .await
        // reqwest's errors name the URL: strip it, the URL is a secret.
        .map_err(|e| Failure::Transient(describe(&e.without_url())))?;
    let status = answer.status();
    if status.is_success() {
        return Ok(());
    }
    let why = format!("HTTP {status}");
    if retryable(status) {
        Err(Failure::Transient(why))
    } else {
        Err(Failure::Final(why))
    }
}

/// An error and its causes on one line; call it on `e.without_url()` when the URL is a
/// secret.
pub fn describe(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "timed out".to_owned()
    } else {
        e.to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn builds_a_client_with_tls() {
        assert!(super::client_builder().build().is_ok());
        // A second call reuses the installed provider.
        assert!(super::client_builder().build().is_ok());
    }

    #[test]
    fn secret_urls_are_https_or_loopback_and_never_shown() {
        use super::{SecretUrl, UrlError};
        let url = SecretUrl::parse(" https://hooks.example/T0/SECRET ").expect("https");
        assert_eq!(url.expose(), "https://hooks.example/T0/SECRET");
        assert_eq!(url.host(), "hooks.example");
        assert!(!format!("{url:?}").contains("SECRET"));
        assert!(SecretUrl::parse("http://127.0.0.1:9/SECRET").is_ok());
        for bad in [
            "http://hooks.example/SECRET",
            "ftp://hooks.example/SECRET",
            "https://u:SECRET@hooks.example/",
            "not a url SECRET",
            "data:text/plain,SECRET",
        ] {
            let e = SecretUrl::parse(bad).expect_err(bad).to_string();
            assert!(!e.contains("SECRET"), "{bad}: {e}");
        }
        let rule = SecretUrl::parse_with("https://h.example/?q=SECRET", |u| {
            u.query().map_or(Ok(()), |_| Err("no query"))
        });
        assert_eq!(
            rule.expect_err("a query"),
            UrlError::Refused {
                host: "h.example".to_owned(),
                reason: "no query"
            }
        );
    }

    #[test]
    fn server_errors_429_and_408_are_worth_another_attempt() {
        use reqwest::StatusCode;
        for status in [
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::BAD_GATEWAY,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::REQUEST_TIMEOUT,
        ] {
            assert!(super::retryable(status), "{status}");
        }
        for status in [
            StatusCode::BAD_REQUEST,
            StatusCode::NOT_FOUND,
            StatusCode::FOUND,
            StatusCode::GONE,
        ] {
            assert!(!super::retryable(status), "{status}");
        }
    }

    #[test]
    fn only_loopback_hosts_are_loopback() {
        for (url, loopback) in [
            ("http://localhost:9091", true),
            ("http://127.0.0.1/x", true),
            ("http://127.8.9.10", true),
            ("http://[::1]:80", true),
            ("http://10.0.0.1", false),
            ("http://localhost.example.com", false),
            ("https://hooks.slack.com/x", false),
        ] {
            let parsed = url::Url::parse(url).expect("a URL");
            assert_eq!(super::is_loopback(&parsed), loopback, "{url}");
        }
    }
}

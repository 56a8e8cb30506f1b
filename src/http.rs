//! The one way to build an HTTP client in this process, and what every client of a secret
//! URL (webhooks, the Pushgateway) shares: the loopback test for plain http, and errors told
//! without their URL. reqwest is built without a TLS crypto provider of its own (its
//! default, aws-lc, takes minutes to compile): the first call installs rustls' *ring*
//! provider for the whole process.

use std::net::IpAddr;
use std::sync::Once;

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

//! The one way to build an HTTP client in this process. reqwest is built without a TLS
//! crypto provider of its own (its default, aws-lc, takes minutes to compile): the first
//! call installs rustls' *ring* provider for the whole process.

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

#[cfg(test)]
mod tests {
    #[test]
    fn builds_a_client_with_tls() {
        assert!(super::client_builder().build().is_ok());
        // A second call reuses the installed provider.
        assert!(super::client_builder().build().is_ok());
    }
}

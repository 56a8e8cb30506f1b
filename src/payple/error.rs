//! Errors that stop the whole run ([`PaypleError`]): nothing about one key.

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

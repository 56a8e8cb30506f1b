//! Partner auth: the shared token, renewed single-flight before it lapses, with retries
//! for transient failures.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use secrecy::{ExposeSecret, SecretString};

use super::classify::{self, AuthVerdict, Verdict};
use super::client::PaypleClient;
use super::config::{MAX_LOGGED_REASON, PAY_WORK};
use super::error::PaypleError;
use super::token::Token;
use super::transport::{Reply, lookup_url};
use super::wire::{AuthRequest, Fields};
use crate::domain::cut_chars;

impl PaypleClient {
    /// The current token, renewing it first if needed. Single-flight: callers that find
    /// it stale queue on the gate, and all but the first find a fresh one there.
    pub(super) async fn token(&self) -> Result<Arc<Token>, PaypleError> {
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
    pub(super) async fn renew(&self) -> Result<Token, PaypleError> {
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
    pub(super) fn token_from(
        &self,
        fields: &Fields,
        issued_at: Instant,
    ) -> Result<Token, PaypleError> {
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

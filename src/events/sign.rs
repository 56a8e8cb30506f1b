//! Standard Webhooks signing: the `whsec_` secret, and `webhook-signature: v1,<base64
//! HMAC-SHA256 of "{id}.{timestamp}.{body}">` (HMAC from *ring*).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::hmac;
use secrecy::{ExposeSecret, SecretSlice};

/// Why a signing secret is refused. Never holds the secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("the events secret must start with whsec_ (Standard Webhooks)")]
    NoPrefix,
    #[error("the events secret after whsec_ is not valid base64")]
    NotBase64,
    #[error("the events secret is shorter than 24 bytes (32 recommended)")]
    TooShort,
}

/// The signing key, decoded from `whsec_<base64>`.
pub struct Signer {
    key: SecretSlice<u8>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(…)")
    }
}

impl Clone for Signer {
    fn clone(&self) -> Self {
        Self {
            key: SecretSlice::from(self.key.expose_secret().to_vec()),
        }
    }
}

/// The least key length accepted: the specification asks for 24 to 64 bytes.
const MIN_KEY: usize = 24;

impl Signer {
    /// Decodes `whsec_<base64>` (surrounding whitespace, as a file ends, ignored).
    pub fn parse(secret: &str) -> Result<Self, SecretError> {
        let rest = secret
            .trim()
            .strip_prefix("whsec_")
            .ok_or(SecretError::NoPrefix)?;
        let key = STANDARD.decode(rest).map_err(|_| SecretError::NotBase64)?;
        if key.len() < MIN_KEY {
            return Err(SecretError::TooShort);
        }
        Ok(Self {
            key: SecretSlice::from(key),
        })
    }

    /// The `webhook-signature` header value for this id, timestamp (Unix seconds) and body.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let key = hmac::Key::new(hmac::HMAC_SHA256, self.key.expose_secret());
        let mut ctx = hmac::Context::with_key(&key);
        ctx.update(id.as_bytes());
        ctx.update(b".");
        ctx.update(timestamp.to_string().as_bytes());
        ctx.update(b".");
        ctx.update(body);
        format!("v1,{}", STANDARD.encode(ctx.sign().as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The published test vector of the Standard Webhooks reference libraries
    /// (standard-webhooks/standard-webhooks, `libraries/rust`, `test_sign`).
    #[test]
    fn the_specifications_test_vector() {
        let signer = Signer::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        assert_eq!(
            signer.sign(
                "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
                1649367553,
                br#"{"email":"test@example.com","username":"test_user"}"#,
            ),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
    }

    #[test]
    fn bad_secrets_are_refused_without_showing_them() {
        assert!(matches!(
            Signer::parse("C2FVsBQIhrscChlQIMV+b5sSYspob7oD"),
            Err(SecretError::NoPrefix)
        ));
        assert!(matches!(
            Signer::parse("whsec_!!!"),
            Err(SecretError::NotBase64)
        ));
        assert!(matches!(
            Signer::parse("whsec_c2hvcnQ="),
            Err(SecretError::TooShort)
        ));
        assert!(Signer::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\n").is_ok());
        let debug = format!(
            "{:?}",
            Signer::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap()
        );
        assert!(!debug.contains("C2FV"), "{debug}");
    }
}

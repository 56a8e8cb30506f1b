//! One lookup attempt: one POST to Payple and its reply read with a cap; where lookups go ([`lookup_url`]);
//! transport errors described in one line without the request's query.

use std::sync::atomic::Ordering;

use reqwest::header::RETRY_AFTER;
use secrecy::ExposeSecret;
use url::Url;

use crate::domain::PayerId;

use super::classify::{self, Verdict, codes};
use super::client::{Attempt, PaypleClient};
use super::config::MAX_REPLY_BYTES;
use super::error::PaypleError;
use super::token::Token;
use super::wire::{Fields, LookupRequest};

impl PaypleClient {
    /// One lookup request and what it means.
    pub(super) async fn attempt(&self, token: &Token, id: &PayerId) -> Attempt {
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
    pub(super) async fn post(
        &self,
        url: Url,
        body: &impl serde::Serialize,
    ) -> Result<Reply, Verdict> {
        let transient = |code: &str, msg: String| Verdict::Transient {
            code: code.to_owned(),
            msg,
            retry_after: None,
        };
        let bytes = serde_json::to_vec(body)
            .map_err(|e| transient(codes::BAD_BODY, format!("cannot encode request: {e}")))?;
        let response = self.http.post(url).body(bytes).send().await.map_err(|e| {
            if is_certificate_problem(&e) {
                // Not transient: the same certificate comes back on every try.
                Verdict::Failed {
                    code: codes::TLS_VERIFY.to_owned(),
                    msg: describe(&e),
                }
            } else {
                transient(codes::TRANSPORT, describe(&e))
            }
        })?;
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(classify::parse_retry_after);
        if let Some(verdict) = classify::classify_status(response.status().as_u16(), retry_after) {
            return Ok(Reply::Status(verdict));
        }
        let body = match read_capped(response, MAX_REPLY_BYTES).await {
            Ok(body) => body,
            Err(Capped::TooLarge) => {
                // Not worth retrying: the same reply would come back, as large.
                return Ok(Reply::Status(Verdict::Failed {
                    code: codes::TOO_LARGE.to_owned(),
                    msg: format!(
                        "Payple's reply is larger than {} KiB; not read further",
                        MAX_REPLY_BYTES / 1024
                    ),
                }));
            }
            Err(Capped::Broken(e)) => return Err(transient(codes::BAD_BODY, describe(&e))),
        };
        Fields::parse(&body)
            .map(Reply::Body)
            .map_err(|e| transient(codes::BAD_BODY, e.0))
    }
}
pub(super) enum Reply {
    Status(Verdict),
    Body(Fields),
}
/// Why a reply body was not read to its end.
pub(super) enum Capped {
    TooLarge,
    Broken(reqwest::Error),
}

/// Reads a body chunk by chunk, stopping as soon as it exceeds `cap` bytes (whatever
/// `Content-Length` claimed): memory stays bounded however much the peer sends.
pub(super) async fn read_capped(
    mut response: reqwest::Response,
    cap: usize,
) -> Result<Vec<u8>, Capped> {
    if response.content_length().is_some_and(|n| n > cap as u64) {
        return Err(Capped::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(Capped::Broken)? {
        if body.len() + chunk.len() > cap {
            return Err(Capped::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
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

/// Whether a transport error is a TLS certificate that failed verification (anywhere in
/// its chain of causes).
pub(super) fn is_certificate_problem(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(error) = next {
        if let Some(rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented) =
            error.downcast_ref::<rustls::Error>()
        {
            return true;
        }
        if let Some(io) = error.downcast_ref::<std::io::Error>()
            && io
                .get_ref()
                .is_some_and(|inner| is_certificate_problem(inner))
        {
            return true;
        }
        next = error.source();
    }
    false
}

/// A transport error in one line, without the request URL's query.
pub(super) fn describe(e: &reqwest::Error) -> String {
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
    fn certificate_failures_are_recognised_through_io_errors() {
        let bad = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::other(bad);
        assert!(is_certificate_problem(&io));
        assert!(!is_certificate_problem(&std::io::Error::other(
            "connection reset"
        )));
    }
}

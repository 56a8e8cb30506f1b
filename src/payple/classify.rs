//! Pure decisions about Payple's answers: what a lookup or auth reply says about a key,
//! and which failures are worth retrying. What each code means is the [`CodeBook`]'s.

use std::time::Duration;

use crate::domain::{KeyDetails, PayType, PayerId};

use super::codebook::{CodeBook, CodeClass};
use super::wire::{Fields, find_code};

/// What one lookup reply (or its absence) means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Success + `0000`: the key works.
    Active {
        details: Box<KeyDetails>,
        code: String,
        msg: Option<String>,
    },
    /// The key no longer exists.
    Gone { code: String, msg: Option<String> },
    /// A definite answer that is neither: recorded verbatim, not retried.
    Failed { code: String, msg: String },
    /// The token expired or mismatched: renew it and try this key once more.
    Reauth { code: String, msg: String },
    /// Worth another attempt after a pause (at least `retry_after` when given).
    Transient {
        code: String,
        msg: String,
        retry_after: Option<Duration>,
    },
    /// The partner configuration is wrong: stop the run.
    Config { code: String, msg: String },
}

/// Our own codes for failures that carry no Payple code.
pub mod codes {
    pub const TRANSPORT: &str = "TRANSPORT_ERROR";
    pub const BAD_BODY: &str = "BAD_REPLY";
    pub const TOO_LARGE: &str = "TOO_LARGE";
    pub const TLS_VERIFY: &str = "TLS_VERIFY_FAILED";
    pub const RATE_LIMITED: &str = "HTTP_429";
    pub const MISMATCH: &str = "PAYER_ID_MISMATCH";
    pub const NO_PAY_TYPE: &str = "UNKNOWN_PAY_TYPE";
    pub const NO_CODE: &str = "NO_RESULT_CODE";
    pub fn http(status: u16) -> String {
        format!("HTTP_{status}")
    }
}

/// Whether a failure code is one the client retries: transport errors, broken replies,
/// HTTP 408, 429 and 5xx, and the code book's transient codes.
pub fn is_transient_code(code: &str, book: &CodeBook) -> bool {
    match code {
        codes::TRANSPORT | codes::BAD_BODY | codes::RATE_LIMITED => true,
        _ => {
            book.is(code, CodeClass::Transient)
                || book.is(code, CodeClass::Maintenance)
                || code.strip_prefix("HTTP_").is_some_and(|status| {
                    status == "408" || (status.len() == 3 && status.starts_with('5'))
                })
        }
    }
}

/// What an HTTP status alone says, before the body is read.
pub fn classify_status(status: u16, retry_after: Option<Duration>) -> Option<Verdict> {
    if (200..=299).contains(&status) {
        return None;
    }
    let msg = format!("Payple answered HTTP {status}");
    match status {
        429 => Some(Verdict::Transient {
            code: codes::RATE_LIMITED.to_owned(),
            msg,
            retry_after,
        }),
        408 | 500..=599 => Some(Verdict::Transient {
            code: codes::http(status),
            msg,
            retry_after,
        }),
        _ => Some(Verdict::Failed {
            code: codes::http(status),
            msg,
        }),
    }
}

/// Parses a `Retry-After` value given in seconds (the HTTP-date form is ignored: the
/// backoff schedule applies instead).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Classifies a parsed lookup reply for the key that was asked about.
pub fn classify_lookup(reply: &Fields, asked: &PayerId, book: &CodeBook) -> Verdict {
    let success = reply
        .text("PCD_PAY_RST")
        .is_some_and(|r| r.eq_ignore_ascii_case("success"));
    let msg = reply.get("PCD_PAY_MSG");
    let code = reply
        .get("PCD_PAY_CODE")
        .or_else(|| msg.as_deref().and_then(find_code));
    let echoed = reply.text("PCD_PAYER_ID");
    let msg_or = |fallback: &str| msg.clone().unwrap_or_else(|| fallback.to_owned());

    // A definite answer about some other key is no answer about this one.
    if let Some(echoed) = echoed
        && echoed != asked.expose()
    {
        return Verdict::Failed {
            code: codes::MISMATCH.to_owned(),
            msg: format!(
                "Payple answered about {} when asked about {}",
                crate::domain::mask_payer_id(echoed),
                asked.masked()
            ),
        };
    }

    let Some(code) = code else {
        return Verdict::Failed {
            code: codes::NO_CODE.to_owned(),
            msg: msg_or("reply carried no PCD_PAY_CODE"),
        };
    };
    if let Some(v) = classify_code(&code, msg.as_deref(), book) {
        return v;
    }
    match (success, code.as_str()) {
        (true, "0000") => active(reply, echoed.is_some(), code, msg),
        _ => Verdict::Failed {
            msg: msg_or("no message"),
            code,
        },
    }
}

/// A success reply (code 0000): the key is active, when the reply says which key it is
/// about (`echoed`) and what it points at.
fn active(reply: &Fields, echoed: bool, code: String, msg: Option<String>) -> Verdict {
    if !echoed {
        return Verdict::Failed {
            code: codes::MISMATCH.to_owned(),
            msg: "success reply without the PCD_PAYER_ID it is about".to_owned(),
        };
    }
    match details(reply) {
        Some(details) => Verdict::Active {
            details: Box::new(details),
            code,
            msg,
        },
        None => Verdict::Failed {
            code: codes::NO_PAY_TYPE.to_owned(),
            msg: format!(
                "success reply with PCD_PAY_TYPE {:?}",
                reply.get("PCD_PAY_TYPE").unwrap_or_default()
            ),
        },
    }
}

/// The code-driven verdicts: gone, reauth, transient (maintenance too) and configuration
/// codes. `None` for success, unknown codes and codes configured as failures.
fn classify_code(code: &str, msg: Option<&str>, book: &CodeBook) -> Option<Verdict> {
    let class = book.class_of(code)?;
    let code = code.to_owned();
    let msg = msg.unwrap_or_default().to_owned();
    match class {
        CodeClass::Config => Some(Verdict::Config { code, msg }),
        CodeClass::Reauth => Some(Verdict::Reauth { code, msg }),
        CodeClass::Transient | CodeClass::Maintenance => Some(Verdict::Transient {
            code,
            msg,
            retry_after: None,
        }),
        CodeClass::Gone => Some(Verdict::Gone {
            code,
            msg: Some(msg).filter(|m| !m.is_empty()),
        }),
        CodeClass::Failed => None,
    }
}

/// The card or account an active key points at, or `None` if the pay type is unknown.
fn details(reply: &Fields) -> Option<KeyDetails> {
    let named = reply.text("PCD_PAY_TYPE")?;
    let pay_type = if named.eq_ignore_ascii_case("card") {
        PayType::Card
    } else if named.eq_ignore_ascii_case("transfer") {
        PayType::Transfer
    } else {
        return None;
    };
    let card = pay_type == PayType::Card;
    let only = |keep: bool, name: &str| if keep { reply.get(name) } else { None };
    Some(KeyDetails {
        pay_type: Some(pay_type),
        card_code: only(card, "PCD_PAY_CARD").map(|c| zero_pad(c, 4)),
        card_name: only(card, "PCD_PAY_CARDNAME"),
        card_mask: only(card, "PCD_PAY_CARDNUM"),
        bank_code: only(!card, "PCD_PAY_BANK").map(|c| zero_pad(c, 3)),
        bank_name: only(!card, "PCD_PAY_BANKNAME"),
        bank_mask: only(!card, "PCD_PAY_BANKNUM"),
        bank_account_type: reply.get("PCD_PAY_BANKACCTYPE"),
        payer_name: reply.get("PCD_PAYER_NAME"),
        payer_phone_mask: reply.get("PCD_PAYER_HP"),
        is_tax: reply.get("PCD_PAY_ISTAX"),
    })
}

/// Restores the leading zeros of a code that arrived as a JSON number (`200` for card
/// company `0200`, `81` for bank `081`), so one company is always recorded one way.
fn zero_pad(code: String, width: usize) -> String {
    if code.len() < width && code.bytes().all(|b| b.is_ascii_digit()) {
        format!("{code:0>width$}")
    } else {
        code
    }
}

/// What a partner-auth reply means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthVerdict {
    Success,
    /// Wrong credentials, Referer or partner: stop the run.
    Config {
        code: String,
        msg: String,
    },
    /// Worth retrying (`AUTH0005`, or an error without a known code).
    Transient {
        code: String,
        msg: String,
    },
}

/// Classifies a partner-auth reply by `result` and the code inside `result_msg`.
pub fn classify_auth(reply: &Fields, book: &CodeBook) -> AuthVerdict {
    let result = reply.get("result").map(|s| s.to_ascii_lowercase());
    let msg = reply.get("result_msg").unwrap_or_default();
    if result.as_deref() == Some("success") {
        return AuthVerdict::Success;
    }
    match find_code(&msg) {
        Some(code) if book.is(&code, CodeClass::Transient) => AuthVerdict::Transient { code, msg },
        // Any other coded auth refusal is about the partner's setup, not the network.
        Some(code) => AuthVerdict::Config { code, msg },
        None => AuthVerdict::Transient {
            code: "AUTH_ERROR".to_owned(),
            msg,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payple::cause::{Cause, cause_of};

    fn id() -> PayerId {
        PayerId::parse("NS9qNTgzU2xRNHR2RmFBWWFBTWk5UT09").unwrap()
    }

    fn reply(json: &str) -> Fields {
        Fields::parse(json.as_bytes()).unwrap()
    }

    #[test]
    fn card_reply_is_active_with_every_field() {
        let r = reply(
            r#"{"PCD_PAY_RST":"success","PCD_PAY_CODE":"0000","PCD_PAY_MSG":"회원조회 성공",
            "PCD_PAY_TYPE":"card","PCD_PAY_BANKACCTYPE":"개인",
            "PCD_PAYER_ID":"NS9qNTgzU2xRNHR2RmFBWWFBTWk5UT09","PCD_PAYER_NAME":"홍길동",
            "PCD_PAYER_HP":"010-****-5678","PCD_PAY_CARD":200,"PCD_PAY_CARDNAME":"BC카드",
            "PCD_PAY_CARDNUM":"1111-****-****-2222","PCD_PAY_ISTAX":"Y",
            "PCD_PAY_BANK":"","PCD_NEW_FIELD":{"x":1}}"#,
        );
        let Verdict::Active { details, code, msg } =
            classify_lookup(&r, &id(), &CodeBook::default())
        else {
            panic!("not active");
        };
        assert_eq!(code, "0000");
        assert_eq!(msg.as_deref(), Some("회원조회 성공"));
        assert_eq!(details.pay_type, Some(PayType::Card));
        assert_eq!(details.card_code.as_deref(), Some("0200"));
        assert_eq!(details.card_name.as_deref(), Some("BC카드"));
        assert_eq!(details.card_mask.as_deref(), Some("1111-****-****-2222"));
        assert_eq!(details.bank_code, None);
        assert_eq!(details.payer_name.as_deref(), Some("홍길동"));
        assert_eq!(details.payer_phone_mask.as_deref(), Some("010-****-5678"));
        assert_eq!(details.is_tax.as_deref(), Some("Y"));
        assert_eq!(details.bank_account_type.as_deref(), Some("개인"));
    }

    #[test]
    fn transfer_reply_keeps_bank_fields_only() {
        let r = reply(
            r#"{"PCD_PAY_RST":"success","PCD_PAY_CODE":"0000","PCD_PAY_TYPE":"transfer",
            "PCD_PAYER_ID":"NS9qNTgzU2xRNHR2RmFBWWFBTWk5UT09","PCD_PAY_BANK":"081",
            "PCD_PAY_BANKNAME":"KEB하나은행","PCD_PAY_BANKNUM":"123-********-021",
            "PCD_PAY_CARDNAME":"stale","PCD_PAY_BANKACCTYPE":"법인"}"#,
        );
        let Verdict::Active { details, .. } = classify_lookup(&r, &id(), &CodeBook::default())
        else {
            panic!("not active");
        };
        assert_eq!(details.pay_type, Some(PayType::Transfer));
        assert_eq!(details.bank_code.as_deref(), Some("081"));
        assert_eq!(details.bank_name.as_deref(), Some("KEB하나은행"));
        assert_eq!(details.bank_mask.as_deref(), Some("123-********-021"));
        assert_eq!(details.bank_account_type.as_deref(), Some("법인"));
        assert_eq!(details.card_name, None);
    }

    #[test]
    fn gone_reauth_config_and_unknown_codes() {
        let book = CodeBook::default();
        let v = |code: &str| {
            classify_lookup(
                &reply(&format!(
                    r#"{{"PCD_PAY_RST":"error","PCD_PAY_CODE":"{code}","PCD_PAY_MSG":"m"}}"#
                )),
                &id(),
                &book,
            )
        };
        assert!(matches!(v("SPAY0005"), Verdict::Gone { .. }));
        assert!(matches!(v("SPCD0001"), Verdict::Gone { .. }));
        assert!(matches!(v("SPAY0001"), Verdict::Reauth { .. }));
        assert!(matches!(v("AUTH0004"), Verdict::Config { .. }));
        assert!(matches!(v("AUTH0005"), Verdict::Transient { .. }));
        assert_eq!(
            v("ZZZZ9999"),
            Verdict::Failed {
                code: "ZZZZ9999".into(),
                msg: "m".into()
            }
        );
        let custom = CodeBook::default()
            .with_gone(["ZZZZ9999".to_owned()])
            .unwrap();
        let r = reply(r#"{"PCD_PAY_RST":"error","PCD_PAY_CODE":"ZZZZ9999"}"#);
        assert!(matches!(
            classify_lookup(&r, &id(), &custom),
            Verdict::Gone { .. }
        ));
        let r = reply(r#"{"PCD_PAY_RST":"error","PCD_PAY_CODE":"SPAY0005"}"#);
        assert!(matches!(
            classify_lookup(&r, &id(), &custom),
            Verdict::Failed { .. }
        ));
    }

    #[test]
    fn a_mismatched_or_missing_echo_is_a_failure() {
        let r = reply(
            r#"{"PCD_PAY_RST":"success","PCD_PAY_CODE":"0000","PCD_PAY_TYPE":"card",
            "PCD_PAYER_ID":"SomeoneElsesKey0000000000000000"}"#,
        );
        let Verdict::Failed { code, msg } = classify_lookup(&r, &id(), &CodeBook::default()) else {
            panic!("not failed");
        };
        assert_eq!(code, codes::MISMATCH);
        assert!(!msg.contains("SomeoneElsesKey0000000000000000"), "{msg}");
        let r = reply(r#"{"PCD_PAY_RST":"success","PCD_PAY_CODE":"0000","PCD_PAY_TYPE":"card"}"#);
        assert!(matches!(
            classify_lookup(&r, &id(), &CodeBook::default()),
            Verdict::Failed { .. }
        ));
    }

    #[test]
    fn success_without_a_known_pay_type_or_code_fails() {
        let r = reply(
            r#"{"PCD_PAY_RST":"success","PCD_PAY_CODE":"0000","PCD_PAY_TYPE":"phone",
            "PCD_PAYER_ID":"NS9qNTgzU2xRNHR2RmFBWWFBTWk5UT09"}"#,
        );
        assert!(matches!(
            classify_lookup(&r, &id(), &CodeBook::default()),
            Verdict::Failed { code, .. } if code == codes::NO_PAY_TYPE
        ));
        let r = reply(r#"{"PCD_PAY_RST":"success"}"#);
        assert!(matches!(
            classify_lookup(&r, &id(), &CodeBook::default()),
            Verdict::Failed { code, .. } if code == codes::NO_CODE
        ));
    }

    #[test]
    fn transient_codes() {
        let book = CodeBook::default();
        for code in [
            "TRANSPORT_ERROR",
            "BAD_REPLY",
            "HTTP_429",
            "HTTP_500",
            "HTTP_503",
            "HTTP_408",
            "AUTH0005",
        ] {
            assert!(is_transient_code(code, &book), "{code}");
        }
        for code in [
            "HTTP_404",
            "SPAY0005",
            "CPAY9999",
            "PAYER_ID_MISMATCH",
            "HTTP_5000",
        ] {
            assert!(!is_transient_code(code, &book), "{code}");
        }
    }

    #[test]
    fn http_statuses() {
        assert_eq!(classify_status(200, None), None);
        assert!(matches!(
            classify_status(429, Some(Duration::from_secs(3))),
            Some(Verdict::Transient { retry_after: Some(d), .. }) if d == Duration::from_secs(3)
        ));
        assert!(matches!(
            classify_status(503, None),
            Some(Verdict::Transient { .. })
        ));
        assert!(matches!(
            classify_status(404, None),
            Some(Verdict::Failed { .. })
        ));
        assert_eq!(parse_retry_after(" 2 "), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }

    #[test]
    fn auth_replies() {
        let book = CodeBook::default();
        let ok = reply(r#"{"result":"success","result_msg":"사용자 인증 완료!!"}"#);
        assert_eq!(classify_auth(&ok, &book), AuthVerdict::Success);
        let referer =
            reply(r#"{"result":"error","result_msg":"AUTH0004 : CONNECT SERVER ERROR!!"}"#);
        assert!(
            matches!(classify_auth(&referer, &book), AuthVerdict::Config { code, .. } if code == "AUTH0004")
        );
        let busy = reply(r#"{"result":"error","result_msg":"AUTH0005"}"#);
        assert!(matches!(
            classify_auth(&busy, &book),
            AuthVerdict::Transient { .. }
        ));
    }

    #[test]
    fn a_codes_file_merges_over_the_defaults() {
        let book = CodeBook::default()
            .merge_toml(
                "[codes]\nXPAY0042 = \"gone\"\n\"*9997\" = \"maintenance\"\n\
                 SPAY0005 = \"failed\"\n\"ZZ*\" = \"config\"\nZZAB9998 = \"gone\"\n",
            )
            .unwrap();
        assert_eq!(book.class_of("XPAY0042"), Some(CodeClass::Gone));
        assert_eq!(book.class_of("ABCD9997"), Some(CodeClass::Maintenance));
        assert_eq!(book.class_of("SPAY0005"), Some(CodeClass::Failed));
        // Exact beats pattern; the longer pattern beats the shorter.
        assert_eq!(book.class_of("ZZAB9998"), Some(CodeClass::Gone));
        assert_eq!(book.class_of("ZZAB9999"), Some(CodeClass::Config));
        let failed = reply(r#"{"PCD_PAY_RST":"error","PCD_PAY_CODE":"SPAY0005"}"#);
        assert!(matches!(
            classify_lookup(&failed, &id(), &book),
            Verdict::Failed { .. }
        ));
        let maint = reply(r#"{"PCD_PAY_RST":"error","PCD_PAY_CODE":"CPAY9998"}"#);
        let v = classify_lookup(&maint, &id(), &book);
        assert_eq!(cause_of(&v, &book), Cause::Maintenance);
        assert!(cause_of(&v, &book).is_systemic());
    }
}

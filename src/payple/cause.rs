//! Why one lookup attempt ended as it did ([`Cause`], the health monitor's input), and
//! which failed keys deserve a second lookup at the end of the run.

use super::classify::{Verdict, codes};
use super::codebook::{CodeBook, CodeClass};

/// Why one lookup attempt ended as it did: the health monitor's input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// Success, or a definite answer about the key.
    Active,
    Gone,
    /// Connect error, timeout, reset.
    Transport,
    /// HTTP 5xx or 408.
    Http5xx,
    /// HTTP 429.
    RateLimited,
    /// Unparseable, truncated or oversize body.
    BadReply,
    /// A maintenance-class code.
    Maintenance,
    /// A transient-class code (e.g. `AUTH0005`).
    TransientCode,
    Reauth,
    Config,
    /// Payple answered about another key.
    Mismatch,
    /// Any other code, ours (`HTTP_404`, `NO_RESULT_CODE`) or Payple's.
    UnknownCode(String),
}

impl Cause {
    /// Failures that are about the service, not about one key.
    pub fn is_systemic(&self) -> bool {
        matches!(
            self,
            Self::Transport
                | Self::Http5xx
                | Self::RateLimited
                | Self::BadReply
                | Self::Maintenance
                | Self::TransientCode
        )
    }

    /// The code a same-code storm is counted by: a non-gone, non-success answer.
    pub fn storm_code(&self) -> Option<&str> {
        match self {
            Self::Mismatch => Some(codes::MISMATCH),
            Self::UnknownCode(code) => Some(code),
            _ => None,
        }
    }

    /// Short name for logs.
    pub fn label(&self) -> String {
        match self {
            Self::Active => "answered".to_owned(),
            Self::Gone => "gone".to_owned(),
            Self::Transport => "transport".to_owned(),
            Self::Http5xx => "http 5xx".to_owned(),
            Self::RateLimited => "http 429".to_owned(),
            Self::BadReply => "bad reply".to_owned(),
            Self::Maintenance => "maintenance".to_owned(),
            Self::TransientCode => "transient code".to_owned(),
            Self::Reauth => "reauth".to_owned(),
            Self::Config => "config".to_owned(),
            Self::Mismatch => "mismatch".to_owned(),
            Self::UnknownCode(code) => format!("code {code}"),
        }
    }
}

/// The cause of an attempt's verdict.
pub fn cause_of(verdict: &Verdict, book: &CodeBook) -> Cause {
    match verdict {
        Verdict::Active { .. } => Cause::Active,
        Verdict::Gone { .. } => Cause::Gone,
        Verdict::Reauth { .. } => Cause::Reauth,
        Verdict::Config { .. } => Cause::Config,
        Verdict::Failed { code, .. } if code == codes::MISMATCH => Cause::Mismatch,
        Verdict::Failed { code, .. } => Cause::UnknownCode(code.clone()),
        Verdict::Transient { code, .. } => match code.as_str() {
            codes::TRANSPORT => Cause::Transport,
            codes::BAD_BODY => Cause::BadReply,
            codes::RATE_LIMITED => Cause::RateLimited,
            c if c.starts_with("HTTP_") => Cause::Http5xx,
            c if book.is(c, CodeClass::Maintenance) => Cause::Maintenance,
            _ => Cause::TransientCode,
        },
    }
}

/// Whether a key written `failed` with `code` deserves a second lookup at the end of the
/// run: everything but a mismatched echo, a reply too large to read (it would be as large
/// again), and codes configured as definite failures (an unknown code may be a storm's
/// first victims).
pub fn worth_second_look(code: &str, book: &CodeBook) -> bool {
    !matches!(code, codes::MISMATCH | codes::TOO_LARGE | codes::TLS_VERIFY)
        && !book.is(code, CodeClass::Failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_of_verdicts() {
        let book = CodeBook::default();
        let transient = |code: &str| Verdict::Transient {
            code: code.to_owned(),
            msg: String::new(),
            retry_after: None,
        };
        assert_eq!(cause_of(&transient("HTTP_503"), &book), Cause::Http5xx);
        assert_eq!(cause_of(&transient("HTTP_429"), &book), Cause::RateLimited);
        assert_eq!(cause_of(&transient("BAD_REPLY"), &book), Cause::BadReply);
        assert_eq!(
            cause_of(&transient("TRANSPORT_ERROR"), &book),
            Cause::Transport
        );
        assert_eq!(
            cause_of(&transient("AUTH0005"), &book),
            Cause::TransientCode
        );
        let failed = |code: &str| Verdict::Failed {
            code: code.to_owned(),
            msg: String::new(),
        };
        assert_eq!(
            cause_of(&failed("SYS9999"), &book),
            Cause::UnknownCode("SYS9999".into())
        );
        assert_eq!(cause_of(&failed(codes::MISMATCH), &book), Cause::Mismatch);
        assert!(!Cause::UnknownCode("X".into()).is_systemic());
        assert!(worth_second_look("SYS9999", &book));
        assert!(worth_second_look("HTTP_500", &book));
        assert!(!worth_second_look(codes::MISMATCH, &book));
    }

    #[test]
    fn a_reply_too_large_to_read_gets_no_second_look() {
        let book = CodeBook::default();
        assert!(!worth_second_look(codes::TOO_LARGE, &book));
        assert!(!worth_second_look(codes::TLS_VERIFY, &book));
        assert!(worth_second_look(codes::BAD_BODY, &book));
    }
}

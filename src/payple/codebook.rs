//! The code book: which Payple result code means what for a reconciliation job (API.md's
//! table as defaults, merged with `--codes FILE` and `--gone-codes`).

use std::collections::BTreeMap;

/// What a result code means for a reconciliation job.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum CodeClass {
    /// The billing key no longer exists.
    Gone,
    /// The auth token expired or mismatched: renew it and retry once.
    Reauth,
    /// Worth retrying with backoff.
    Transient,
    /// Payple (or a bank) is in maintenance: the whole run pauses, never a verdict on a key.
    Maintenance,
    /// The partner configuration is wrong: the run stops.
    Config,
    /// A definite per-key failure: recorded verbatim (lets a file take a default back).
    Failed,
}

impl CodeClass {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gone => "gone",
            Self::Reauth => "reauth",
            Self::Transient => "transient",
            Self::Maintenance => "maintenance",
            Self::Config => "config",
            Self::Failed => "failed",
        }
    }
}

/// The success code: never configurable.
pub const SUCCESS_CODE: &str = "0000";

/// Which result codes mean what. Payple publishes no PUSERINFO code list, so the mapping
/// is data: API.md's table as defaults, merged with `--codes FILE` and `--gone-codes`.
/// A code is looked up exactly first, then by pattern (`*9998` ends with, `SPAY*` starts
/// with; the longest pattern wins). A code matching nothing is unknown: a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeBook {
    exact: BTreeMap<String, CodeClass>,
    /// Keyed by the pattern as written (`*9998`, `SPAY*`).
    patterns: BTreeMap<String, CodeClass>,
}

/// Why a code book entry was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodeBookError {
    #[error(
        "{0:?} is not a code or pattern (letters, digits and `_`, with at most one `*` at the start or the end)"
    )]
    BadCode(String),
    #[error("{0:?} would cover the success code 0000, which always means success")]
    Success(String),
    #[error("not valid TOML: {0}")]
    Toml(String),
    #[error("no [codes] table")]
    NoTable,
    #[error(
        "{code:?}: {value:?} is not a class (gone, reauth, transient, maintenance, config, failed)"
    )]
    BadClass { code: String, value: String },
}

/// The defaults and where each came from (API.md's code table): docs/payple.md prints them.
pub const DEFAULT_CODES: &[(&str, CodeClass, &str)] = &[
    (
        "SPAY0005",
        CodeClass::Gone,
        "response-code manual: not registered / cancelled card",
    ),
    (
        "RPAY0005",
        CodeClass::Gone,
        "response-code manual: same wording as SPAY0005",
    ),
    (
        "SPCD0012",
        CodeClass::Gone,
        "response-code manual: same wording as SPAY0005",
    ),
    (
        "SPCD0001",
        CodeClass::Gone,
        "response-code manual: payment key missing",
    ),
    (
        "SPCD0011",
        CodeClass::Gone,
        "response-code manual: PCD_PAYER_ID differs (inferred)",
    ),
    (
        "CPAY0002",
        CodeClass::Gone,
        "response-code manual: recurring target missing (inferred)",
    ),
    (
        "CPAY0003",
        CodeClass::Gone,
        "response-code manual: withdrawal target missing (inferred)",
    ),
    (
        "CPAY0004",
        CodeClass::Gone,
        "response-code manual: recurring target missing (inferred)",
    ),
    (
        "SPAY0001",
        CodeClass::Reauth,
        "PUSERINFO page: token mismatch or session expired",
    ),
    (
        "BILL0002",
        CodeClass::Reauth,
        "response-code manual: auth session expired",
    ),
    (
        "CPAY0001",
        CodeClass::Reauth,
        "response-code manual: auth session expired",
    ),
    (
        "RPAY0001",
        CodeClass::Reauth,
        "response-code manual: auth session expired",
    ),
    (
        "SPCD0004",
        CodeClass::Reauth,
        "response-code manual: auth session expired",
    ),
    (
        "ARSA0001",
        CodeClass::Reauth,
        "older manual: auth key mismatch",
    ),
    (
        "AUTH0005",
        CodeClass::Transient,
        "response-code manual: token creation error",
    ),
    (
        "*9998",
        CodeClass::Maintenance,
        "response-code manual: bank maintenance time",
    ),
    (
        "*9991",
        CodeClass::Config,
        "card/bank code pages: partner key mismatch",
    ),
    (
        "AUTH0001",
        CodeClass::Config,
        "PUSERINFO page: cst_id empty",
    ),
    (
        "AUTH0002",
        CodeClass::Config,
        "PUSERINFO page: custKey empty",
    ),
    (
        "AUTH0003",
        CodeClass::Config,
        "PUSERINFO page: no partner account",
    ),
    (
        "AUTH0004",
        CodeClass::Config,
        "PUSERINFO page: Referer / domain not registered",
    ),
    (
        "AUTH0006",
        CodeClass::Config,
        "response-code manual: HTTPS required",
    ),
    (
        "AUTH0007",
        CodeClass::Config,
        "PUSERINFO page: test Referer differs",
    ),
];

impl Default for CodeBook {
    fn default() -> Self {
        let mut book = Self {
            exact: BTreeMap::new(),
            patterns: BTreeMap::new(),
        };
        for (code, class, _) in DEFAULT_CODES {
            // The defaults are valid by construction (a unit test checks them).
            let _ = book.insert(code, *class);
        }
        book
    }
}

/// A code or pattern's shape: letters, digits, `_`, and one `*` at one end at most.
fn check_code(raw: &str) -> Result<String, CodeBookError> {
    let code = raw.trim().to_ascii_uppercase();
    let body = code
        .strip_prefix('*')
        .or_else(|| code.strip_suffix('*'))
        .unwrap_or(&code);
    let ok = !body.is_empty()
        && body.len() <= 32
        && body.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !ok {
        return Err(CodeBookError::BadCode(raw.to_owned()));
    }
    if pattern_matches(&code, SUCCESS_CODE) {
        return Err(CodeBookError::Success(raw.to_owned()));
    }
    Ok(code)
}

/// Whether `pattern` (a code, `*SUFFIX` or `PREFIX*`) covers `code`.
fn pattern_matches(pattern: &str, code: &str) -> bool {
    if let Some(suffix) = pattern.strip_prefix('*') {
        code.ends_with(suffix)
    } else if let Some(prefix) = pattern.strip_suffix('*') {
        code.starts_with(prefix)
    } else {
        pattern == code
    }
}

impl CodeBook {
    /// Adds or replaces one entry (a code, or a pattern with `*`).
    pub fn insert(&mut self, code: &str, class: CodeClass) -> Result<(), CodeBookError> {
        let code = check_code(code)?;
        if code.contains('*') {
            self.patterns.insert(code, class);
        } else {
            self.exact.insert(code, class);
        }
        Ok(())
    }

    /// Replaces the exactly listed gone codes (from `--gone-codes`); patterns stay.
    pub fn with_gone(
        mut self,
        codes: impl IntoIterator<Item = String>,
    ) -> Result<Self, CodeBookError> {
        self.exact.retain(|_, class| *class != CodeClass::Gone);
        for code in codes {
            self.insert(&code, CodeClass::Gone)?;
        }
        Ok(self)
    }

    /// Merges a TOML document's `[codes]` table over this book.
    pub fn merge_toml(mut self, text: &str) -> Result<Self, CodeBookError> {
        let doc: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| CodeBookError::Toml(e.message().to_owned()))?;
        let table = doc
            .get("codes")
            .and_then(toml::Value::as_table)
            .ok_or(CodeBookError::NoTable)?;
        for (code, value) in table {
            let class = value
                .as_str()
                .and_then(|v| {
                    serde::Deserialize::deserialize(serde::de::value::StrDeserializer::<
                        serde::de::value::Error,
                    >::new(v))
                    .ok()
                })
                .ok_or_else(|| CodeBookError::BadClass {
                    code: code.clone(),
                    value: format!("{value:?}"),
                })?;
            self.insert(code, class)?;
        }
        Ok(self)
    }

    /// The class of a code: exact entries first, then the longest matching pattern.
    /// `0000` and unknown codes have none.
    pub fn class_of(&self, code: &str) -> Option<CodeClass> {
        if code == SUCCESS_CODE {
            return None;
        }
        if let Some(class) = self.exact.get(code) {
            return Some(*class);
        }
        self.patterns
            .iter()
            .filter(|(pattern, _)| pattern_matches(pattern, code))
            .max_by_key(|(pattern, _)| pattern.len())
            .map(|(_, class)| *class)
    }

    /// Whether `code` has this class.
    pub fn is(&self, code: &str, class: CodeClass) -> bool {
        self.class_of(code) == Some(class)
    }

    /// Every entry, code or pattern → class name, for the runs table and logs.
    pub fn describe(&self) -> BTreeMap<String, &'static str> {
        self.exact
            .iter()
            .chain(&self.patterns)
            .map(|(code, class)| (code.clone(), class.as_str()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_book_follows_the_api_table() {
        let book = CodeBook::default();
        for code in ["SPAY0005", "RPAY0005", "SPCD0012", "SPCD0011", "CPAY0003"] {
            assert_eq!(book.class_of(code), Some(CodeClass::Gone), "{code}");
        }
        for code in ["CPAY0001", "RPAY0001", "SPCD0004", "SPAY0001"] {
            assert_eq!(book.class_of(code), Some(CodeClass::Reauth), "{code}");
        }
        for code in ["ARSA9998", "CPAY9998", "SPAY9998"] {
            assert_eq!(book.class_of(code), Some(CodeClass::Maintenance), "{code}");
        }
        for code in ["SPCD9991", "RPCD9991", "CDAU9991", "AUTH0006"] {
            assert_eq!(book.class_of(code), Some(CodeClass::Config), "{code}");
        }
        assert_eq!(book.class_of("SYS9999"), None);
        assert_eq!(book.class_of("0000"), None);
        assert_eq!(book.describe().len(), DEFAULT_CODES.len());
    }

    #[test]
    fn success_can_never_be_configured() {
        let err = |text: &str| CodeBook::default().merge_toml(text).unwrap_err();
        assert!(matches!(
            err("[codes]\n\"0000\" = \"gone\""),
            CodeBookError::Success(_)
        ));
        assert!(matches!(
            err("[codes]\n\"*00\" = \"gone\""),
            CodeBookError::Success(_)
        ));
        assert!(matches!(
            err("[codes]\nX = \"sometimes\""),
            CodeBookError::BadClass { .. }
        ));
        assert!(matches!(
            err("[codes]\n\"A*B\" = \"gone\""),
            CodeBookError::BadCode(_)
        ));
        assert!(matches!(err("codes = 1"), CodeBookError::NoTable));
        assert!(matches!(err("[codes"), CodeBookError::Toml(_)));
        assert!(matches!(
            CodeBook::default().with_gone(["0000".to_owned()]),
            Err(CodeBookError::Success(_))
        ));
    }
}

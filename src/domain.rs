//! Domain types parsed once at the boundary: billing keys, what a lookup concluded, and
//! how a key is shown where it must not appear in full, and what a run did in the end.

use std::fmt;

use serde::Serialize;

/// Longest billing key accepted. Payple's keys are ~44 base64 characters; anything near
/// this bound is corrupt input, not a key.
pub const MAX_PAYER_ID_LEN: usize = 128;

/// A stored Payple billing key (`PCD_PAYER_ID`): non-empty, bounded, free of control
/// characters and surrounding whitespace. `Debug` and `Display` show it masked.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PayerId(String);

/// Why an input value is not a billing key that may be sent to Payple.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RejectReason {
    #[error("empty PCD_PAYER_ID")]
    Empty,
    #[error("PCD_PAYER_ID is {len} characters long (at most {max})", max = MAX_PAYER_ID_LEN)]
    TooLong { len: usize },
    #[error("PCD_PAYER_ID contains a control character at position {position}")]
    ControlCharacter { position: usize },
    #[error("PCD_PAYER_ID contains whitespace")]
    Whitespace,
}

impl RejectReason {
    /// The result code stored for a rejected row.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Empty => "REJECTED_EMPTY",
            Self::TooLong { .. } => "REJECTED_TOO_LONG",
            Self::ControlCharacter { .. } => "REJECTED_CONTROL_CHAR",
            Self::Whitespace => "REJECTED_WHITESPACE",
        }
    }
}

impl PayerId {
    /// Validates a raw value. Surrounding spaces are a data-entry artefact and are trimmed;
    /// anything else odd is rejected rather than repaired.
    pub fn parse(raw: &str) -> Result<Self, RejectReason> {
        let trimmed = raw.trim_matches(' ');
        if let Some(position) = trimmed.chars().position(char::is_control) {
            return Err(RejectReason::ControlCharacter { position });
        }
        if trimmed.is_empty() {
            return Err(RejectReason::Empty);
        }
        let len = trimmed.chars().count();
        if len > MAX_PAYER_ID_LEN {
            return Err(RejectReason::TooLong { len });
        }
        if trimmed.chars().any(char::is_whitespace) {
            return Err(RejectReason::Whitespace);
        }
        Ok(Self(trimmed.to_owned()))
    }

    /// The full key, for the wire and the results table only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The key as logs and reports show it.
    pub fn masked(&self) -> String {
        mask_payer_id(&self.0)
    }

    /// A stable 64-bit hash (FNV-1a) of the key: the same on every machine and every
    /// version, so shards and the simulator agree on it.
    pub fn stable_hash(&self) -> u64 {
        stable_hash(self.0.as_bytes())
    }
}

impl fmt::Debug for PayerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PayerId({})", self.masked())
    }
}

impl fmt::Display for PayerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

/// Masks a billing key: the first and last four characters of a long key, less of a short
/// one, never more than half of it.
pub fn mask_payer_id(id: &str) -> String {
    let chars: Vec<char> = id.chars().collect();
    let keep = match chars.len() {
        n if n >= 16 => 4,
        n if n >= 8 => 2,
        _ => 0,
    };
    if keep == 0 {
        return "****".to_owned();
    }
    let head: String = chars[..keep].iter().collect();
    let tail: String = chars[chars.len() - keep..].iter().collect();
    format!("{head}****{tail}")
}

/// FNV-1a, 64 bit.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET, |h, b| (h ^ u64::from(*b)).wrapping_mul(PRIME))
}

/// A key's status after one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    /// Payple answered success + `0000`: the key can be charged.
    Active,
    /// Payple says the key no longer exists.
    Gone,
    /// The lookup did not give an answer about the key (error code, retries exhausted).
    Failed,
    /// The input value was never sent: it is not a valid key.
    Rejected,
}

impl KeyStatus {
    pub const ALL: [KeyStatus; 4] = [Self::Active, Self::Gone, Self::Failed, Self::Rejected];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Gone => "gone",
            Self::Failed => "failed",
            Self::Rejected => "rejected",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for KeyStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a key is paid: card or bank transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PayType {
    Card,
    Transfer,
}

impl PayType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Card => "card",
            Self::Transfer => "transfer",
        }
    }

    /// The stored name back as a pay type.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Card, Self::Transfer]
            .into_iter()
            .find(|p| p.as_str() == s)
    }
}

/// What Payple told us about the payment instrument behind an active key. Only masked
/// numbers ever arrive, and only they are kept. Serialized (`lookup`'s lines) without the
/// payer's name, phone mask and tax flag, which only the results database holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KeyDetails {
    pub pay_type: Option<PayType>,
    pub card_code: Option<String>,
    pub card_name: Option<String>,
    pub card_mask: Option<String>,
    pub bank_code: Option<String>,
    pub bank_name: Option<String>,
    pub bank_mask: Option<String>,
    pub bank_account_type: Option<String>,
    #[serde(skip_serializing)]
    pub payer_name: Option<String>,
    #[serde(skip_serializing)]
    pub payer_phone_mask: Option<String>,
    #[serde(skip_serializing)]
    pub is_tax: Option<String>,
}

impl KeyDetails {
    /// Drops the personal fields (`--omit-pii`).
    pub fn without_pii(mut self) -> Self {
        self.payer_name = None;
        self.payer_phone_mask = None;
        self
    }
}

/// The conclusion about one key: the only thing the pipeline passes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupOutcome {
    pub status: KeyStatus,
    pub details: KeyDetails,
    /// Payple's `PCD_PAY_CODE` (or our own code for transport failures and rejections).
    pub result_code: Option<String>,
    /// Payple's message verbatim, or the reason we give.
    pub result_msg: Option<String>,
    /// HTTP lookups sent for this key.
    pub attempts: u32,
}

impl LookupOutcome {
    pub fn failed(code: impl Into<String>, msg: impl Into<String>, attempts: u32) -> Self {
        Self {
            status: KeyStatus::Failed,
            details: KeyDetails::default(),
            result_code: Some(code.into()),
            result_msg: Some(msg.into()),
            attempts,
        }
    }

    pub fn rejected(reason: &RejectReason, context: String) -> Self {
        Self {
            status: KeyStatus::Rejected,
            details: KeyDetails::default(),
            result_code: Some(reason.code().to_owned()),
            result_msg: Some(format!("{reason} ({context})")),
            attempts: 0,
        }
    }
}

/// The payer id stored for a rejected input row: its position in the source (`#N
/// rejected`), never its value. The space makes it something no valid key can be, so it
/// never hides a real key.
pub fn rejected_placeholder(seq: i64) -> String {
    format!("#{seq} rejected")
}

/// Whether a stored row's payer id is a [`rejected_placeholder`] (a rejected row whose id
/// starts with `#`): shown as it is in reports, not masked.
pub fn is_rejected_placeholder(status: KeyStatus, payer_id: &str) -> bool {
    status == KeyStatus::Rejected && payer_id.starts_with('#')
}

/// The state of a run (and of each shard of it), as stored and as printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Running,
    Completed,
    Interrupted,
    Failed,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Interrupted => "interrupted",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Self {
        match s {
            "completed" => Self::Completed,
            "interrupted" => Self::Interrupted,
            "failed" => Self::Failed,
            _ => Self::Running,
        }
    }
}

/// What a run did, printed as JSON on stdout at the end.
#[derive(Debug, Clone, Serialize)]
pub struct RunStats {
    pub run_id: i64,
    pub state: RunState,
    pub source: String,
    pub keys: Option<i64>,
    pub duplicates: i64,
    pub active: i64,
    pub gone: i64,
    pub failed: i64,
    pub rejected: i64,
    /// Keys looked up by this process (a resumed run counts only what it did).
    pub checked_now: u64,
    pub duration_secs: f64,
    pub lookups_per_second: f64,
    pub auth_calls: u64,
    pub lookups: u64,
    pub exit_code: u8,
    /// Keys of the source with a result in this run (all shards, resumes included).
    pub keys_checked: i64,
    /// The budget that ended the run before its last key (`max_lookups`, `time_budget`,
    /// `stop_at`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget_stop: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Per-key events after the run (`--events-url`): delivered, pending, expired.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<EventTally>,
}

/// What a run's event delivery left: delivered and expired by it, pending in the outbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EventTally {
    pub delivered: u64,
    pub pending: u64,
    pub expired: u64,
}

/// The marker left at the end of a value that was cut to its field's bound.
pub const CUT_MARKER: &str = "…[cut]";

/// Every free-text field this job stores, with the one bound it has (in characters). The
/// results tables' columns are sized from this table (see the migrations); a value longer
/// than its bound is cut, never refused, so one odd reply can never fail a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldBound {
    CustomerRef,
    CardCode,
    CardName,
    CardMask,
    BankCode,
    BankName,
    BankMask,
    BankAccountType,
    PayerName,
    PayerPhoneMask,
    IsTax,
    ResultCode,
    ResultMsg,
}

impl FieldBound {
    /// The longest value stored, in characters.
    pub const fn max_chars(self) -> usize {
        match self {
            Self::CustomerRef => 255,
            Self::CardCode | Self::BankCode | Self::BankAccountType | Self::PayerPhoneMask => 32,
            Self::CardName | Self::BankName | Self::PayerName => 100,
            Self::CardMask | Self::BankMask | Self::ResultCode => 64,
            Self::IsTax => 8,
            Self::ResultMsg => 500,
        }
    }

    /// The column the field is stored in.
    pub const fn column(self) -> &'static str {
        match self {
            Self::CustomerRef => "customer_ref",
            Self::CardCode => "card_code",
            Self::CardName => "card_name",
            Self::CardMask => "card_mask",
            Self::BankCode => "bank_code",
            Self::BankName => "bank_name",
            Self::BankMask => "bank_mask",
            Self::BankAccountType => "bank_account_type",
            Self::PayerName => "payer_name",
            Self::PayerPhoneMask => "payer_phone_mask",
            Self::IsTax => "is_tax",
            Self::ResultCode => "result_code",
            Self::ResultMsg => "result_msg",
        }
    }

    /// The value within the bound: as it is, or cut at a character boundary with
    /// [`CUT_MARKER`] at the end (the whole result is at most the bound).
    pub fn cut(self, value: &str) -> std::borrow::Cow<'_, str> {
        cut_chars(value, self.max_chars())
    }

    /// Cuts `value` in place; whether it was cut.
    pub fn apply(self, value: &mut Option<String>) -> bool {
        let Some(v) = value else { return false };
        match self.cut(v) {
            std::borrow::Cow::Borrowed(_) => false,
            std::borrow::Cow::Owned(cut) => {
                *v = cut;
                true
            }
        }
    }
}

/// `value` cut to at most `max` characters, marker included (`max` is at least the
/// marker's 6); never splits a character.
pub fn cut_chars(value: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if value.chars().nth(max).is_none() {
        return std::borrow::Cow::Borrowed(value);
    }
    let keep = max.saturating_sub(CUT_MARKER.chars().count());
    let cut_at = value
        .char_indices()
        .nth(keep)
        .map_or(value.len(), |(i, _)| i);
    let mut out = String::with_capacity(cut_at + CUT_MARKER.len());
    out.push_str(&value[..cut_at]);
    out.push_str(CUT_MARKER);
    std::borrow::Cow::Owned(out)
}

impl KeyDetails {
    /// Cuts every field to its bound; how many were cut.
    pub fn bound(&mut self) -> usize {
        [
            FieldBound::CardCode.apply(&mut self.card_code),
            FieldBound::CardName.apply(&mut self.card_name),
            FieldBound::CardMask.apply(&mut self.card_mask),
            FieldBound::BankCode.apply(&mut self.bank_code),
            FieldBound::BankName.apply(&mut self.bank_name),
            FieldBound::BankMask.apply(&mut self.bank_mask),
            FieldBound::BankAccountType.apply(&mut self.bank_account_type),
            FieldBound::PayerName.apply(&mut self.payer_name),
            FieldBound::PayerPhoneMask.apply(&mut self.payer_phone_mask),
            FieldBound::IsTax.apply(&mut self.is_tax),
        ]
        .into_iter()
        .filter(|cut| *cut)
        .count()
    }
}

impl LookupOutcome {
    /// Cuts every text field to its bound; how many were cut.
    pub fn bound(&mut self) -> usize {
        self.details.bound()
            + usize::from(FieldBound::ResultCode.apply(&mut self.result_code))
            + usize::from(FieldBound::ResultMsg.apply(&mut self.result_msg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_state_prints_as_it_is_stored() {
        use RunState::{Completed, Failed, Interrupted, Running};
        for state in [Running, Completed, Interrupted, Failed] {
            let printed = serde_json::to_string(&state).expect("serializes");
            assert_eq!(printed, format!("\"{}\"", state.as_str()));
            assert_eq!(RunState::parse(state.as_str()), state);
        }
    }

    #[test]
    fn parse_accepts_a_real_looking_key_and_trims_spaces() {
        let id = PayerId::parse("  NS9qNTgzU2xRNHR2RmFBWWFBTWk5UT09 ").unwrap();
        assert_eq!(id.expose(), "NS9qNTgzU2xRNHR2RmFBWWFBTWk5UT09");
    }

    #[test]
    fn parse_rejects_bad_values() {
        assert_eq!(PayerId::parse(""), Err(RejectReason::Empty));
        assert_eq!(PayerId::parse("   "), Err(RejectReason::Empty));
        assert!(matches!(
            PayerId::parse("ab\0cd"),
            Err(RejectReason::ControlCharacter { position: 2 })
        ));
        assert!(matches!(
            PayerId::parse("ab\tcd"),
            Err(RejectReason::ControlCharacter { .. })
        ));
        assert!(matches!(
            PayerId::parse(&"x".repeat(MAX_PAYER_ID_LEN + 1)),
            Err(RejectReason::TooLong { .. })
        ));
        assert_eq!(PayerId::parse("ab cd"), Err(RejectReason::Whitespace));
    }

    #[test]
    fn masking_never_shows_the_whole_key() {
        let id = PayerId::parse("NS9qNTgzU2xRNHR2RmFBWWFBTWk5UT09").unwrap();
        assert_eq!(id.masked(), "NS9q****UT09");
        assert_eq!(format!("{id:?}"), "PayerId(NS9q****UT09)");
        assert_eq!(mask_payer_id("abcdefghij"), "ab****ij");
        assert_eq!(mask_payer_id("abc"), "****");
    }

    #[test]
    fn stable_hash_is_fnv1a() {
        assert_eq!(stable_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn status_round_trips() {
        for s in KeyStatus::ALL {
            assert_eq!(KeyStatus::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn long_values_are_cut_at_a_character_with_a_marker() {
        let bound = FieldBound::PayerName;
        assert_eq!(bound.cut("홍길동"), "홍길동");
        let exact = "가".repeat(100);
        assert_eq!(bound.cut(&exact), exact.as_str());
        let long = "가".repeat(300);
        let cut = bound.cut(&long);
        assert_eq!(cut.chars().count(), 100);
        assert!(cut.ends_with(CUT_MARKER), "{cut}");
        assert!(cut.starts_with(&"가".repeat(94)));
        assert_eq!(cut_chars("abcdefghijk", 8), format!("ab{CUT_MARKER}"));
    }

    #[test]
    fn an_outcome_is_bounded_field_by_field() {
        let mut o = LookupOutcome::failed("X".repeat(70), "m".repeat(5_000_000), 1);
        o.details.payer_name = Some("n".repeat(101));
        o.details.card_name = Some("BC카드".to_owned());
        assert_eq!(o.bound(), 3);
        assert_eq!(
            o.result_msg.as_deref().map(|m| m.chars().count()),
            Some(500)
        );
        assert_eq!(
            o.result_code.as_deref().map(|m| m.chars().count()),
            Some(64)
        );
        assert_eq!(o.details.card_name.as_deref(), Some("BC카드"));
        assert_eq!(o.bound(), 0, "a bounded outcome is left alone");
    }
}

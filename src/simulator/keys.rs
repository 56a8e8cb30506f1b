//! What the simulator knows about each billing key: a deterministic profile derived from the
//! key's hash, optionally overridden per key by a JSON Lines key file.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use super::error::SimError;
use crate::domain::stable_hash;

/// What the simulator answers for one billing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SimKind {
    /// An active card key: success with card fields.
    Card,
    /// An active bank-account key: success with bank fields.
    Transfer,
    /// The key no longer exists: error with `SPAY0005` (or the configured code).
    Gone,
    /// Any other error answer, with the configured code and message.
    Error,
    /// A success answer whose echoed `PCD_PAYER_ID` is a different key.
    Mismatch,
}

/// The answer the simulator gives for one billing key. Fields that do not apply to the key's
/// pay type are empty strings (that is also how they go on the wire).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimKey {
    pub kind: SimKind,
    /// `card`, `transfer`, or empty for error kinds.
    pub pay_type: String,
    pub card_code: String,
    pub card_name: String,
    pub card_mask: String,
    pub bank_code: String,
    pub bank_name: String,
    pub bank_mask: String,
    /// `개인`, `법인` or `개인사업자`.
    pub bank_account_type: String,
    pub payer_name: String,
    pub payer_phone_mask: String,
    /// `Y` or `N`.
    pub is_tax: String,
    /// `PCD_PAY_CODE`: `0000` for success kinds.
    pub code: String,
    /// `PCD_PAY_MSG`.
    pub msg: String,
    /// Send the card or bank code as a JSON number (`200` instead of `"0200"`).
    pub numeric_codes: bool,
    /// Prefix the answer body with a UTF-8 byte order mark.
    pub bom: bool,
}

/// Where the simulator gets its keys from.
#[derive(Debug, Clone, Default)]
pub enum KeyBook {
    /// Every key is derived from its hash ([`derive_key`]).
    #[default]
    Derived,
    /// Keys listed in a file; any other key is derived.
    File(HashMap<String, SimKey>),
}

impl KeyBook {
    /// Every key derived from its hash.
    pub fn derived() -> Self {
        Self::Derived
    }

    /// Reads a JSON Lines key file: one object per line,
    /// `{"payer_id": "...", "kind": "card"|"transfer"|"gone"|"error"|"mismatch",
    /// "code": "...", "msg": "..."}` plus optional overrides of the fields of [`SimKey`]
    /// (`card_code`, `card_name`, `card_mask`, `bank_code`, `bank_name`, `bank_mask`,
    /// `bank_account_type`, `payer_name`, `payer_phone_mask`, `is_tax`, `numeric_codes`,
    /// `bom`). Blank lines and lines starting with `#` are skipped.
    pub fn from_file(path: &Path) -> Result<Self, SimError> {
        let text = std::fs::read_to_string(path).map_err(|source| SimError::KeyFileRead {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|(line, reason)| SimError::KeyFile {
            path: path.to_owned(),
            line,
            reason,
        })
    }

    /// Parses key-file text; an error carries the 1-based line number and the reason.
    pub(crate) fn parse(text: &str) -> Result<Self, (usize, String)> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut keys = HashMap::new();
        let mut first_line: HashMap<String, usize> = HashMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line_no = index + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let entry: FileEntry =
                serde_json::from_str(line).map_err(|e| (line_no, e.to_string()))?;
            if entry.payer_id.trim().is_empty() {
                return Err((line_no, "empty payer_id".to_owned()));
            }
            if let Some(first) = first_line.get(&entry.payer_id) {
                return Err((line_no, format!("payer_id already listed on line {first}")));
            }
            first_line.insert(entry.payer_id.clone(), line_no);
            let id = entry.payer_id.clone();
            keys.insert(id, entry.into_key());
        }
        Ok(Self::File(keys))
    }

    /// The answer for a key: from the file if listed there, else derived.
    pub fn get(&self, payer_id: &str) -> SimKey {
        match self {
            Self::File(keys) => keys
                .get(payer_id)
                .cloned()
                .unwrap_or_else(|| derive_key(payer_id)),
            Self::Derived => derive_key(payer_id),
        }
    }
}

/// One line of a key file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    payer_id: String,
    kind: SimKind,
    code: Option<String>,
    msg: Option<String>,
    card_code: Option<String>,
    card_name: Option<String>,
    card_mask: Option<String>,
    bank_code: Option<String>,
    bank_name: Option<String>,
    bank_mask: Option<String>,
    bank_account_type: Option<String>,
    payer_name: Option<String>,
    payer_phone_mask: Option<String>,
    is_tax: Option<String>,
    numeric_codes: Option<bool>,
    bom: Option<bool>,
}

impl FileEntry {
    fn into_key(self) -> SimKey {
        let profile = Profile::of(&self.payer_id);
        let mut key = profile.shape(self.kind, None);
        let overrides = [
            (&mut key.card_code, self.card_code),
            (&mut key.card_name, self.card_name),
            (&mut key.card_mask, self.card_mask),
            (&mut key.bank_code, self.bank_code),
            (&mut key.bank_name, self.bank_name),
            (&mut key.bank_mask, self.bank_mask),
            (&mut key.bank_account_type, self.bank_account_type),
            (&mut key.payer_name, self.payer_name),
            (&mut key.payer_phone_mask, self.payer_phone_mask),
            (&mut key.is_tax, self.is_tax),
            (&mut key.code, self.code),
            (&mut key.msg, self.msg),
        ];
        for (field, value) in overrides {
            if let Some(value) = value {
                *field = value;
            }
        }
        if let Some(numeric) = self.numeric_codes {
            key.numeric_codes = numeric;
        }
        if let Some(bom) = self.bom {
            key.bom = bom;
        }
        key
    }
}

/// The answer for a key, derived from `stable_hash(payer_id)` alone: about 80 % card,
/// 12 % transfer, 8 % gone (three quarters `SPAY0005`, one quarter `SPCD0001`).
pub fn derive_key(payer_id: &str) -> SimKey {
    let profile = Profile::of(payer_id);
    profile.shape(profile.kind, Some(profile.gone_code))
}

pub(crate) const SUCCESS_CODE: &str = "0000";
pub(crate) const SUCCESS_MSG: &str = "회원조회 성공";
const GONE_CODE: &str = "SPAY0005";
const GONE_MSG: &str = "등록된 결제수단 정보가 없습니다.";
const MISSING_CODE: &str = "SPCD0001";
const MISSING_MSG: &str = "결제키(PCD_PAYER_ID) 정보가 존재하지 않습니다.";
const ERROR_CODE: &str = "CPAY9999";
const ERROR_MSG: &str = "처리 중 오류가 발생했습니다. 잠시 후 다시 시도해 주세요.";

const SURNAMES: &[&str] = &[
    "김", "이", "박", "최", "정", "강", "조", "윤", "장", "임", "한", "오", "서", "신", "권", "황",
    "안", "송", "류", "홍",
];
const GIVEN_NAMES: &[&str] = &[
    "민준", "서연", "도윤", "서윤", "시우", "지우", "하준", "하윤", "주원", "지호", "지유", "은우",
    "수아", "예준", "지아", "건우", "서아", "우진", "하은", "선우", "지민", "현우", "유진", "민서",
    "준서", "채원", "예린", "도현", "수빈", "태윤",
];
const COMPANIES: &[&str] = &[
    "주식회사 한빛상사",
    "(주)다온테크",
    "누리물산(주)",
    "주식회사 새봄푸드",
    "(주)미래로직스",
    "가온네트웍스(주)",
];
/// Card companies with the 4-digit codes the simulator uses (plausible, not Payple's list).
const CARDS: &[(&str, &str)] = &[
    ("0100", "신한카드"),
    ("0200", "BC카드"),
    ("0300", "KB국민카드"),
    ("0400", "삼성카드"),
    ("0500", "현대카드"),
    ("0600", "롯데카드"),
    ("0700", "하나카드"),
    ("0800", "우리카드"),
    ("0900", "NH농협카드"),
];
const CARD_PREFIXES: &[&str] = &[
    "4518", "5365", "9410", "4048", "5107", "9490", "4673", "5522",
];
/// Banks with their 3-digit codes.
const BANKS: &[(&str, &str)] = &[
    ("004", "KB국민은행"),
    ("088", "신한은행"),
    ("081", "KEB하나은행"),
    ("020", "우리은행"),
    ("011", "NH농협은행"),
    ("003", "IBK기업은행"),
    ("090", "카카오뱅크"),
    ("089", "케이뱅크"),
    ("092", "토스뱅크"),
    ("023", "SC제일은행"),
    ("071", "우체국"),
    ("045", "새마을금고"),
];

/// Everything that can be derived about a key; [`Profile::shape`] keeps what its kind shows.
struct Profile {
    kind: SimKind,
    gone_code: (&'static str, &'static str),
    card: (&'static str, &'static str),
    card_mask: String,
    bank: (&'static str, &'static str),
    bank_mask: String,
    account_type: &'static str,
    payer_name: String,
    phone_mask: String,
    is_tax: &'static str,
    numeric_codes: bool,
    bom: bool,
}

impl Profile {
    fn of(payer_id: &str) -> Self {
        let mut draw = Draw(stable_hash(payer_id.as_bytes()));
        let kind = match draw.below(100) {
            0..80 => SimKind::Card,
            80..92 => SimKind::Transfer,
            _ => SimKind::Gone,
        };
        let gone_code = if draw.below(4) == 0 {
            (MISSING_CODE, MISSING_MSG)
        } else {
            (GONE_CODE, GONE_MSG)
        };
        let card = *draw.pick(CARDS);
        let card_mask = format!(
            "{}-****-****-{:04}",
            draw.pick(CARD_PREFIXES),
            draw.below(10_000)
        );
        let bank = *draw.pick(BANKS);
        let bank_mask = format!(
            "{:03}-********-{:03}",
            100 + draw.below(900),
            draw.below(1000)
        );
        let account_type = match draw.below(100) {
            0..85 => "개인",
            85..95 => "개인사업자",
            _ => "법인",
        };
        let payer_name = if account_type == "법인" {
            (*draw.pick(COMPANIES)).to_owned()
        } else {
            format!("{}{}", draw.pick(SURNAMES), draw.pick(GIVEN_NAMES))
        };
        let phone_mask = format!("010-****-{:04}", draw.below(10_000));
        let is_tax = if draw.below(10) < 7 { "Y" } else { "N" };
        let numeric_codes = draw.below(10) == 0;
        let bom = draw.below(20) == 0;
        Self {
            kind,
            gone_code,
            card,
            card_mask,
            bank,
            bank_mask,
            account_type,
            payer_name,
            phone_mask,
            is_tax,
            numeric_codes,
            bom,
        }
    }

    /// The key as `kind` shows it. `gone_code` picks the derived gone code; a key file's
    /// `gone` entries default to `SPAY0005`.
    fn shape(&self, kind: SimKind, gone_code: Option<(&str, &str)>) -> SimKey {
        let mut key = SimKey {
            kind,
            pay_type: String::new(),
            card_code: String::new(),
            card_name: String::new(),
            card_mask: String::new(),
            bank_code: String::new(),
            bank_name: String::new(),
            bank_mask: String::new(),
            bank_account_type: String::new(),
            payer_name: String::new(),
            payer_phone_mask: String::new(),
            is_tax: String::new(),
            code: SUCCESS_CODE.to_owned(),
            msg: SUCCESS_MSG.to_owned(),
            numeric_codes: self.numeric_codes,
            bom: self.bom,
        };
        let pay_type = match kind {
            SimKind::Card => Some(SimKind::Card),
            SimKind::Transfer => Some(SimKind::Transfer),
            // A mismatching answer looks like the key's natural success answer.
            SimKind::Mismatch if self.kind == SimKind::Transfer => Some(SimKind::Transfer),
            SimKind::Mismatch => Some(SimKind::Card),
            SimKind::Gone => {
                let (code, msg) = gone_code.unwrap_or((GONE_CODE, GONE_MSG));
                key.code = code.to_owned();
                key.msg = msg.to_owned();
                None
            }
            SimKind::Error => {
                key.code = ERROR_CODE.to_owned();
                key.msg = ERROR_MSG.to_owned();
                None
            }
        };
        let Some(pay_type) = pay_type else {
            return key;
        };
        key.bank_account_type = self.account_type.to_owned();
        key.payer_name = self.payer_name.clone();
        key.payer_phone_mask = self.phone_mask.clone();
        key.is_tax = self.is_tax.to_owned();
        if pay_type == SimKind::Card {
            key.pay_type = "card".to_owned();
            key.card_code = self.card.0.to_owned();
            key.card_name = self.card.1.to_owned();
            key.card_mask = self.card_mask.clone();
        } else {
            key.pay_type = "transfer".to_owned();
            key.bank_code = self.bank.0.to_owned();
            key.bank_name = self.bank.1.to_owned();
            key.bank_mask = self.bank_mask.clone();
        }
        key
    }
}

/// A deterministic stream of well-mixed numbers seeded by a key's hash (a SplitMix64
/// step, so that the weak low bits of FNV-1a on similar ids do not skew the choices).
struct Draw(u64);

impl Draw {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        let len = u64::try_from(items.len()).expect("slice length fits in u64");
        let index = usize::try_from(self.below(len)).expect("index below a usize length");
        &items[index]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> impl Iterator<Item = String> {
        (0..n).map(|i| format!("payer-{i:06}"))
    }

    #[test]
    fn derive_key_is_deterministic() {
        for id in ids(200) {
            assert_eq!(derive_key(&id), derive_key(&id));
        }
        assert_ne!(derive_key("payer-000001"), derive_key("payer-000002"));
    }

    #[test]
    fn derive_key_distribution_is_realistic() {
        let n = 10_000;
        let mut counts: HashMap<SimKind, usize> = HashMap::new();
        let mut spcd = 0;
        let mut numeric = 0;
        let mut bom = 0;
        for id in ids(n) {
            let key = derive_key(&id);
            *counts.entry(key.kind).or_default() += 1;
            spcd += usize::from(key.code == MISSING_CODE);
            numeric += usize::from(key.numeric_codes);
            bom += usize::from(key.bom);
        }
        let pct = |k| counts.get(&k).copied().unwrap_or(0) * 100 / n;
        assert!((70..=90).contains(&pct(SimKind::Card)), "{counts:?}");
        assert!((5..=20).contains(&pct(SimKind::Transfer)), "{counts:?}");
        assert!((3..=15).contains(&pct(SimKind::Gone)), "{counts:?}");
        assert!(spcd > 0 && spcd < counts[&SimKind::Gone] / 2, "{spcd}");
        assert!(numeric > n / 20 && numeric < n / 5, "{numeric}");
        assert!(bom > n / 50 && bom < n / 10, "{bom}");
    }

    #[test]
    fn derived_fields_match_the_pay_type() {
        for id in ids(500) {
            let key = derive_key(&id);
            match key.kind {
                SimKind::Card => {
                    assert_eq!(key.pay_type, "card");
                    assert_eq!(key.card_code.len(), 4);
                    assert!(key.card_name.ends_with("카드"));
                    assert!(key.card_mask.contains("-****-****-"));
                    assert!(key.bank_code.is_empty() && key.bank_mask.is_empty());
                    assert_eq!(key.code, "0000");
                }
                SimKind::Transfer => {
                    assert_eq!(key.pay_type, "transfer");
                    assert_eq!(key.bank_code.len(), 3);
                    assert!(key.bank_mask.contains("-********-"));
                    assert!(key.card_code.is_empty());
                }
                SimKind::Gone => {
                    assert!(key.code == GONE_CODE || key.code == MISSING_CODE);
                    assert!(key.payer_name.is_empty());
                }
                other => panic!("derived {other:?}"),
            }
            if matches!(key.kind, SimKind::Card | SimKind::Transfer) {
                assert!(key.payer_phone_mask.starts_with("010-****-"));
                assert!(["개인", "법인", "개인사업자"].contains(&key.bank_account_type.as_str()));
                assert!(key.is_tax == "Y" || key.is_tax == "N");
                assert!(!key.payer_name.is_empty());
            }
        }
    }

    #[test]
    fn key_file_overrides_and_falls_back() {
        let text = "\u{feff}{\"payer_id\": \"a\", \"kind\": \"gone\"}\n\
                    \n\
                    # comment\n\
                    {\"payer_id\": \"b\", \"kind\": \"error\", \"code\": \"CPAY0002\", \"msg\": \"x\"}\n\
                    {\"payer_id\": \"c\", \"kind\": \"card\", \"card_name\": \"BC카드\", \"bom\": true}\n\
                    {\"payer_id\": \"d\", \"kind\": \"mismatch\"}\n";
        let book = KeyBook::parse(text).expect("valid file");
        assert_eq!(book.get("a").kind, SimKind::Gone);
        assert_eq!(book.get("a").code, GONE_CODE);
        assert_eq!(book.get("b").code, "CPAY0002");
        assert_eq!(book.get("b").msg, "x");
        let c = book.get("c");
        assert_eq!(
            (c.kind, c.card_name.as_str(), c.bom),
            (SimKind::Card, "BC카드", true)
        );
        assert_eq!(c.pay_type, "card");
        assert_eq!(book.get("d").code, SUCCESS_CODE);
        assert_eq!(book.get("zzz"), derive_key("zzz"));
    }

    #[test]
    fn key_file_errors_name_the_line() {
        let cases = [
            (
                "{\"payer_id\": \"a\", \"kind\": \"card\"}\n{not json\n",
                2,
                "",
            ),
            ("\n\n{\"payer_id\": \"a\", \"kind\": \"lost\"}\n", 3, "lost"),
            (
                "{\"payer_id\": \"a\", \"kind\": \"card\", \"colour\": 1}",
                1,
                "colour",
            ),
            (
                "{\"payer_id\": \" \", \"kind\": \"card\"}",
                1,
                "empty payer_id",
            ),
            (
                "{\"payer_id\": \"a\", \"kind\": \"card\"}\n{\"payer_id\": \"a\", \"kind\": \"gone\"}",
                2,
                "line 1",
            ),
        ];
        for (text, line, needle) in cases {
            let (got, reason) = KeyBook::parse(text).expect_err(text);
            assert_eq!(got, line, "{text}: {reason}");
            assert!(reason.contains(needle), "{reason}");
        }
    }

    #[test]
    fn from_file_reports_path_and_line() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("keys.jsonl");
        std::fs::write(&path, "{\"payer_id\": \"a\", \"kind\": \"card\"}\n[]\n").expect("write");
        let err = KeyBook::from_file(&path).expect_err("bad line");
        let text = err.to_string();
        assert!(text.contains("keys.jsonl") && text.contains(":2"), "{text}");
        let missing = KeyBook::from_file(&dir.path().join("none.jsonl")).expect_err("missing");
        assert!(missing.to_string().contains("none.jsonl"));
    }
}

//! The event objects (`billing_key.gone`, …) built from a key's latest known result before
//! and after a run: pure, versioned, and never holding the full billing key.
//!
//! The change itself is decided by [`crate::report::changes::classify_latest`], the same
//! function `changes` uses; this file only says which changes are events and what their
//! JSON holds. Fields are only ever added within a [`VERSION`].

use chrono::{DateTime, Utc};
use ring::digest;
use serde::Serialize;

use crate::domain::{PayType, mask_payer_id};
use crate::report::changes::{ChangeKind, classify_latest};
use crate::store::{CheckRecord, LatestRecord};

/// The payload version: fields are only ever added within it.
pub const VERSION: u32 = 1;

/// The event types, in the order documented.
pub const TYPES: [&str; 5] = [
    "billing_key.gone",
    "billing_key.failing",
    "billing_key.recovered",
    "billing_key.card_changed",
    "billing_key.account_changed",
];

/// The event type of a change, `None` for changes that are not events: a new key is one
/// the merchant has just stored, a missing one one it removed from its own table.
pub fn event_type(kind: ChangeKind) -> Option<&'static str> {
    match kind {
        ChangeKind::NewlyGone => Some(TYPES[0]),
        ChangeKind::NewlyFailing => Some(TYPES[1]),
        ChangeKind::Recovered => Some(TYPES[2]),
        ChangeKind::CardChanged => Some(TYPES[3]),
        ChangeKind::AccountChanged => Some(TYPES[4]),
        ChangeKind::NewKey | ChangeKind::MissingKey => None,
    }
}

/// One event, ready for the outbox or a JSON line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The `webhook-id`: the same for the same run, key and type, however often built.
    pub id: String,
    pub run_id: i64,
    /// The hex SHA-256 of the billing key.
    pub payer_sha256: String,
    pub event_type: &'static str,
    /// The JSON object, as sent (the bytes that are signed).
    pub body: String,
}

#[derive(Serialize)]
struct Payload<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    version: u32,
    timestamp: &'a str,
    data: Data<'a>,
}

#[derive(Serialize)]
struct Data<'a> {
    run_id: i64,
    customer_ref: Option<&'a str>,
    payer_id_masked: String,
    payer_id_sha256: &'a str,
    before: Side<'a>,
    after: Side<'a>,
    result_code: Option<&'a str>,
    result_msg: Option<&'a str>,
}

/// A key's state on one side of the change.
#[derive(Serialize)]
struct Side<'a> {
    status: &'a str,
    pay_type: Option<&'a str>,
    card_name: Option<&'a str>,
    card_mask: Option<&'a str>,
    bank_name: Option<&'a str>,
    bank_mask: Option<&'a str>,
    #[serde(serialize_with = "crate::store::time::serialize")]
    checked_at: DateTime<Utc>,
}

fn nonempty(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

fn side(r: &CheckRecord) -> Side<'_> {
    let d = &r.details;
    let (card, bank) = match d.pay_type {
        Some(PayType::Card) => (true, false),
        Some(PayType::Transfer) => (false, true),
        None => (false, false),
    };
    Side {
        status: r.status.as_str(),
        pay_type: d.pay_type.map(PayType::as_str),
        card_name: nonempty(&d.card_name).filter(|_| card),
        card_mask: nonempty(&d.card_mask).filter(|_| card),
        bank_name: nonempty(&d.bank_name).filter(|_| bank),
        bank_mask: nonempty(&d.bank_mask).filter(|_| bank),
        checked_at: r.checked_at,
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The hex SHA-256 of a billing key, as the merchant computes it over its own column.
pub fn payer_sha256(payer_id: &str) -> String {
    hex(digest::digest(&digest::SHA256, payer_id.as_bytes()).as_ref())
}

/// The event id: `evt_` and 32 hex digits derived from the run, the key's hash and the type,
/// so writing a run's events twice writes the same ids.
fn event_id(run_id: i64, payer_sha256: &str, event_type: &str) -> String {
    let seed = format!("{run_id}.{payer_sha256}.{event_type}");
    let digest = digest::digest(&digest::SHA256, seed.as_bytes());
    format!("evt_{}", &hex(digest.as_ref())[..32])
}

/// The event for one key of run `run_id` (which ended at `timestamp`) from its latest known
/// result before and after; `None` when nothing changed that a merchant acts on.
pub fn event_of(
    run_id: i64,
    timestamp: &str,
    before: Option<&LatestRecord>,
    after: Option<&LatestRecord>,
) -> Option<Event> {
    let change = classify_latest(before, after)?;
    let event_type = event_type(change.kind)?;
    // Every event type compares two known results.
    let b = before?.latest.as_ref()?;
    let a = after?.latest.as_ref()?;
    let sha = payer_sha256(&a.payer_id);
    let customer_ref = after
        .and_then(|r| r.customer_ref.as_deref())
        .or(a.customer_ref.as_deref())
        .or(b.customer_ref.as_deref());
    let payload = Payload {
        kind: event_type,
        version: VERSION,
        timestamp,
        data: Data {
            run_id,
            customer_ref,
            payer_id_masked: mask_payer_id(&a.payer_id),
            payer_id_sha256: &sha,
            before: side(b),
            after: side(a),
            result_code: nonempty(&a.result_code),
            result_msg: nonempty(&a.result_msg),
        },
    };
    // Serialising plain strings and numbers cannot fail.
    let body = serde_json::to_string(&payload).unwrap_or_default();
    Some(Event {
        id: event_id(run_id, &sha, event_type),
        run_id,
        payer_sha256: sha,
        event_type,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{KeyDetails, KeyStatus};

    fn known(id: &str, status: KeyStatus, card_mask: Option<&str>) -> LatestRecord {
        let r = CheckRecord {
            run_id: 1,
            payer_id: id.to_owned(),
            customer_ref: Some("C-1".to_owned()),
            status,
            details: KeyDetails {
                pay_type: card_mask.map(|_| PayType::Card),
                card_name: card_mask.map(|_| "신한카드".to_owned()),
                card_mask: card_mask.map(str::to_owned),
                payer_name: Some("홍길동".to_owned()),
                ..KeyDetails::default()
            },
            result_code: Some(
                if status == KeyStatus::Gone {
                    "SPAY0005"
                } else {
                    "0000"
                }
                .to_owned(),
            ),
            result_msg: None,
            attempts: 1,
            checked_at: crate::store::time::parse_time("2026-12-01T17:00:00.000Z").expect("a time"),
        };
        LatestRecord {
            payer_id: id.to_owned(),
            customer_ref: r.customer_ref.clone(),
            latest: Some(r),
        }
    }

    const KEY: &str = "NS9qNTgzU2xRNHR2bFBHaWt2cGtX";

    #[test]
    fn a_gone_key_is_one_event_without_the_key() {
        let b = known(KEY, KeyStatus::Active, Some("4518-****-****-0001"));
        let a = known(KEY, KeyStatus::Gone, None);
        let e = event_of(7, "2026-12-02T00:00:00.000Z", Some(&b), Some(&a)).expect("an event");
        assert_eq!(e.event_type, "billing_key.gone");
        assert!(!e.body.contains(KEY), "{}", e.body);
        assert!(!e.body.contains("홍길동"), "no personal fields: {}", e.body);
        let v: serde_json::Value = serde_json::from_str(&e.body).unwrap();
        assert_eq!(v["type"], "billing_key.gone");
        assert_eq!(v["version"], 1);
        assert_eq!(v["data"]["payer_id_sha256"], payer_sha256(KEY));
        assert_eq!(v["data"]["payer_id_masked"], "NS9q****cGtX");
        assert_eq!(v["data"]["before"]["card_mask"], "4518-****-****-0001");
        assert_eq!(v["data"]["after"]["status"], "gone");
        assert_eq!(v["data"]["result_code"], "SPAY0005");
        // The same inputs give the same id (idempotency across rebuilds).
        let again = event_of(7, "2026-12-02T00:00:00.000Z", Some(&b), Some(&a)).unwrap();
        assert_eq!(again, e);
        let other_run = event_of(8, "2026-12-02T00:00:00.000Z", Some(&b), Some(&a)).unwrap();
        assert_ne!(other_run.id, e.id);
    }

    #[test]
    fn new_and_missing_keys_are_not_events() {
        let a = known(KEY, KeyStatus::Active, Some("1"));
        assert_eq!(event_of(1, "t", None, Some(&a)), None);
        assert_eq!(event_of(1, "t", Some(&a), None), None);
        assert_eq!(event_of(1, "t", Some(&a), Some(&a)), None);
        let changed = known(KEY, KeyStatus::Active, Some("2"));
        assert_eq!(
            event_of(1, "t", Some(&a), Some(&changed)).map(|e| e.event_type),
            Some("billing_key.card_changed")
        );
    }

    #[test]
    fn the_key_hash_is_plain_sha256_hex() {
        assert_eq!(
            payer_sha256("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}

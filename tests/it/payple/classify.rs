//! Classification: card, transfer and gone keys with every field, numeric codes, and a
//! mismatched echo.

use payple_reconcile::domain::{KeyDetails, KeyStatus, LookupOutcome, PayType, mask_payer_id};
use payple_reconcile::simulator::{SimConfig, SimKey, SimKind};
use serde_json::{Value, json};

use super::{assert_outcomes, check_all, client, config, derived_ids, key_file};
use crate::helpers::{payer_ids, spawn_sim, token_shaped};

// ---- Classification -------------------------------------------------------------------

/// Spot checks of the first six outcomes of
/// `card_transfer_and_gone_keys_are_classified_with_every_field` against the literal values
/// of its key file, in case `expected` shares a mistake.
fn assert_literal_values(outcomes: &[LookupOutcome]) {
    let card = &outcomes[0];
    assert_eq!(card.status, KeyStatus::Active);
    assert_eq!(card.result_code.as_deref(), Some("0000"));
    assert_eq!(card.result_msg.as_deref(), Some("회원조회 성공"));
    assert_eq!(card.details.pay_type, Some(PayType::Card));
    assert_eq!(card.details.card_code.as_deref(), Some("0200"));
    assert_eq!(card.details.card_name.as_deref(), Some("BC카드"));
    assert_eq!(
        card.details.card_mask.as_deref(),
        Some("1111-****-****-2222")
    );
    assert_eq!(card.details.payer_name.as_deref(), Some("홍길동"));
    assert_eq!(
        card.details.payer_phone_mask.as_deref(),
        Some("010-****-5678")
    );
    assert_eq!(card.details.bank_account_type.as_deref(), Some("개인"));
    assert_eq!(card.details.is_tax.as_deref(), Some("Y"));
    assert_eq!(card.details.bank_code, None);
    assert_eq!(card.details.bank_name, None);
    assert_eq!(card.details.bank_mask, None);
    let transfer = &outcomes[1];
    assert_eq!(transfer.details.pay_type, Some(PayType::Transfer));
    assert_eq!(transfer.details.bank_code.as_deref(), Some("081"));
    assert_eq!(transfer.details.bank_name.as_deref(), Some("KEB하나은행"));
    assert_eq!(
        transfer.details.bank_mask.as_deref(),
        Some("123-********-021")
    );
    assert_eq!(transfer.details.bank_account_type.as_deref(), Some("법인"));
    assert_eq!(transfer.details.card_code, None);
    assert_eq!(transfer.details.card_mask, None);
    let gone = &outcomes[2];
    assert_eq!(gone.status, KeyStatus::Gone);
    assert_eq!(gone.details, KeyDetails::default());
    assert_eq!(gone.result_code.as_deref(), Some("SPAY0005"));
    assert_eq!(
        gone.result_msg.as_deref(),
        Some("등록된 결제수단 정보가 없습니다.")
    );
    assert_eq!(outcomes[3].status, KeyStatus::Gone);
    assert_eq!(outcomes[3].result_code.as_deref(), Some("SPCD0001"));
    assert_eq!(outcomes[4].status, KeyStatus::Gone);
    assert_eq!(outcomes[4].result_code.as_deref(), Some("CPAY0002"));
    let unknown = &outcomes[5];
    assert_eq!(
        unknown.status,
        KeyStatus::Failed,
        "unknown codes are never guessed"
    );
    assert_eq!(unknown.result_code.as_deref(), Some("ZZZZ9999"));
    assert_eq!(unknown.result_msg.as_deref(), Some("알 수 없는 오류"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn card_transfer_and_gone_keys_are_classified_with_every_field() {
    let dir = tempfile::tempdir().expect("temp dir");
    let listed = payer_ids(8, "classify-file");
    let book = key_file(
        dir.path(),
        &[
            json!({"payer_id": listed[0], "kind": "card", "numeric_codes": false, "bom": false,
                   "card_code": "0200", "card_name": "BC카드", "card_mask": "1111-****-****-2222",
                   "payer_name": "홍길동", "payer_phone_mask": "010-****-5678",
                   "bank_account_type": "개인", "is_tax": "Y"}),
            json!({"payer_id": listed[1], "kind": "transfer", "numeric_codes": false, "bom": true,
                   "bank_code": "081", "bank_name": "KEB하나은행", "bank_mask": "123-********-021",
                   "bank_account_type": "법인", "payer_name": "(주)다온테크", "is_tax": "N"}),
            json!({"payer_id": listed[2], "kind": "gone", "numeric_codes": false}),
            json!({"payer_id": listed[3], "kind": "gone", "code": "SPCD0001",
                   "msg": "결제키(PCD_PAYER_ID) 정보가 존재하지 않습니다.", "numeric_codes": false}),
            json!({"payer_id": listed[4], "kind": "gone", "code": "CPAY0002", "msg": "출금 대상 없음",
                   "numeric_codes": false}),
            json!({"payer_id": listed[5], "kind": "error", "code": "ZZZZ9999",
                   "msg": "알 수 없는 오류", "numeric_codes": false}),
            json!({"payer_id": listed[6], "kind": "card", "numeric_codes": false, "bom": true}),
            json!({"payer_id": listed[7], "kind": "transfer", "numeric_codes": false}),
        ],
    );
    // Derived keys with string codes, of every kind the simulator derives.
    let plain = |k: &SimKey| !k.numeric_codes;
    let mut ids = listed.clone();
    ids.extend(derived_ids("classify-card", 6, |k| {
        plain(k) && k.kind == SimKind::Card
    }));
    ids.extend(derived_ids("classify-card-bom", 2, |k| {
        plain(k) && k.kind == SimKind::Card && k.bom
    }));
    ids.extend(derived_ids("classify-transfer", 6, |k| {
        plain(k) && k.kind == SimKind::Transfer
    }));
    ids.extend(derived_ids("classify-spay", 3, |k| k.code == "SPAY0005"));
    ids.extend(derived_ids("classify-spcd", 3, |k| k.code == "SPCD0001"));
    ids.extend(derived_ids("classify-corp", 2, |k| {
        plain(k) && k.bank_account_type == "법인"
    }));

    let sim = spawn_sim(SimConfig {
        keys: book.clone(),
        ..SimConfig::default()
    })
    .await;
    let client = client(config(&sim));
    let outcomes = check_all(&client, &ids).await;
    assert_outcomes(&book, &ids, &outcomes, 1);

    assert_literal_values(&outcomes);

    let stats = sim.stats();
    assert_eq!(stats.auth_calls, 1, "one auth for the whole batch");
    assert_eq!(stats.lookups, ids.len() as u64);
    assert_eq!(client.lookups(), ids.len() as u64);
    sim.shutdown().await;
}

/// Payple may send `PCD_PAY_CARD` / `PCD_PAY_BANK` as numbers (`200` for `"0200"`,
/// API.md); the code is the same either way, so the stored value must be too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numeric_card_and_bank_codes_keep_their_leading_zeros() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ids = payer_ids(2, "numeric-codes");
    let book = key_file(
        dir.path(),
        &[
            json!({"payer_id": ids[0], "kind": "card", "card_code": "0200",
                   "card_name": "BC카드", "numeric_codes": true}),
            json!({"payer_id": ids[1], "kind": "transfer", "bank_code": "081",
                   "bank_name": "KEB하나은행", "numeric_codes": true}),
        ],
    );
    let sim = spawn_sim(SimConfig {
        keys: book.clone(),
        ..SimConfig::default()
    })
    .await;
    let mut all = ids.clone();
    all.extend(derived_ids("numeric-card", 3, |k| {
        k.numeric_codes && k.kind == SimKind::Card
    }));
    all.extend(derived_ids("numeric-transfer", 2, |k| {
        k.numeric_codes && k.kind == SimKind::Transfer
    }));
    let outcomes = check_all(&client(config(&sim)), &all).await;
    assert_eq!(outcomes[0].status, KeyStatus::Active);
    assert_eq!(outcomes[1].status, KeyStatus::Active);
    assert_eq!(
        outcomes[0].details.card_code.as_deref(),
        Some("0200"),
        "card code sent as the number 200"
    );
    assert_eq!(
        outcomes[1].details.bank_code.as_deref(),
        Some("081"),
        "bank code sent as the number 81"
    );
    assert_outcomes(&book, &all, &outcomes, 1);
}

// ---- Mismatched echo -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mismatched_echoed_payer_id_is_a_failure() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ids = payer_ids(4, "mismatch");
    let lines: Vec<Value> = ids
        .iter()
        .map(|id| json!({"payer_id": id, "kind": "mismatch"}))
        .collect();
    let book = key_file(dir.path(), &lines);
    let sim = spawn_sim(SimConfig {
        keys: book,
        ..SimConfig::default()
    })
    .await;
    let outcomes = check_all(&client(config(&sim)), &ids).await;
    for (id, outcome) in ids.iter().zip(&outcomes) {
        assert_eq!(outcome.status, KeyStatus::Failed, "{outcome:?}");
        assert_eq!(outcome.result_code.as_deref(), Some("PAYER_ID_MISMATCH"));
        assert_eq!(outcome.details, KeyDetails::default(), "nothing kept");
        assert_eq!(outcome.attempts, 1, "a definite answer is not retried");
        let msg = outcome.result_msg.as_deref().expect("a reason");
        assert!(msg.contains(&mask_payer_id(id)), "{msg}");
        assert!(token_shaped(msg, 16).is_empty(), "no full key: {msg}");
    }
    sim.shutdown().await;
}

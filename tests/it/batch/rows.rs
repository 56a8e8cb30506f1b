//! Every column of every row the job writes, and the run's own row, on every database.

use std::collections::{HashMap, HashSet};

use payple_reconcile::domain::{KeyDetails, KeyStatus, PayType};
use payple_reconcile::payple::cause::worth_second_look;
use payple_reconcile::payple::codebook::CodeBook;
use payple_reconcile::simulator::{SimKey, SimKind, derive_key};
use payple_reconcile::store::{CheckRecord, RunRecord, RunState};
use serde_json::{Value, json};
use sqlx::Row;

use crate::helpers::{self, Ran, Scenario, TestDb, all_checks, key_file};

fn opt(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

/// The row the job must write for `payer_id` when the simulator answers `key`: every
/// column except `checked_at` (checked separately) and the message of a mismatch (which
/// names a masked other key).
fn expected_row(
    run_id: i64,
    payer_id: &str,
    customer_ref: Option<&str>,
    key: &SimKey,
) -> CheckRecord {
    let active = matches!(key.kind, SimKind::Card | SimKind::Transfer);
    let (status, code, msg) = match key.kind {
        SimKind::Card | SimKind::Transfer => ("active", key.code.clone(), opt(&key.msg)),
        SimKind::Gone => ("gone", key.code.clone(), opt(&key.msg)),
        SimKind::Error => ("failed", key.code.clone(), opt(&key.msg)),
        SimKind::Mismatch => ("failed", "PAYER_ID_MISMATCH".to_owned(), None),
    };
    let detail = |s: &str| if active { opt(s) } else { None };
    CheckRecord {
        run_id,
        payer_id: payer_id.to_owned(),
        customer_ref: customer_ref.map(str::to_owned),
        status: KeyStatus::parse(status).expect("a status"),
        details: KeyDetails {
            pay_type: detail(&key.pay_type).and_then(|p| PayType::parse(&p)),
            card_code: detail(&key.card_code),
            card_name: detail(&key.card_name),
            card_mask: detail(&key.card_mask),
            bank_code: detail(&key.bank_code),
            bank_name: detail(&key.bank_name),
            bank_mask: detail(&key.bank_mask),
            bank_account_type: detail(&key.bank_account_type),
            payer_name: detail(&key.payer_name),
            payer_phone_mask: detail(&key.payer_phone_mask),
            is_tax: detail(&key.is_tax),
        },
        result_code: Some(code),
        result_msg: msg,
        // A key failed with a code the code book does not know is looked up once more
        // after the last key (it may be a code storm's first victim).
        attempts: if key.kind == SimKind::Error
            && worth_second_look(&key.code, &CodeBook::default())
        {
            2
        } else {
            1
        },
        checked_at: chrono::DateTime::UNIX_EPOCH,
    }
}

/// Compares one stored row with the expected one, column by column.
fn assert_row(actual: &CheckRecord, mut expected: CheckRecord, run: &RunRecord) {
    // checked_at: stored to the millisecond, within the run.
    let at = actual.checked_at;
    assert!(
        at.timestamp_subsec_nanos().is_multiple_of(1_000_000),
        "checked_at {at:?} of {}",
        actual.payer_id
    );
    assert!(
        at >= run.started_at && Some(at) <= run.finished_at,
        "checked_at {at} outside the run {} .. {:?}",
        run.started_at,
        run.finished_at
    );
    expected.checked_at = at;
    if expected.result_code.as_deref() == Some("PAYER_ID_MISMATCH") && expected.result_msg.is_none()
    {
        let msg = actual.result_msg.clone().unwrap_or_default();
        assert!(msg.contains("answered about"), "{msg}");
        assert!(
            !msg.contains(&actual.payer_id),
            "a full key in a message: {msg}"
        );
        expected.result_msg = actual.result_msg.clone();
    }
    assert_eq!(*actual, expected, "row of {}", actual.payer_id);
}

// ---- every column, on every database ------------------------------------------------------

/// The key file's twelve keys: cards, transfers, gone and error codes, a mismatch.
fn file_key_lines(ids: &[String]) -> Vec<Value> {
    let f = |i: usize, kind: &str, extra: Value| {
        let mut line =
            json!({"payer_id": ids[i], "kind": kind, "numeric_codes": false, "bom": false});
        if let (Some(line), Value::Object(extra)) = (line.as_object_mut(), extra) {
            line.extend(extra);
        }
        line
    };
    vec![
        f(0, "card", json!({})),
        f(
            1,
            "card",
            json!({"card_code": "0300", "card_name": "KB국민카드", "card_mask": "4048-****-****-1234", "payer_name": "홍길동", "payer_phone_mask": "010-****-5678", "is_tax": "N", "bank_account_type": "개인"}),
        ),
        f(2, "card", json!({"bom": true})),
        f(3, "transfer", json!({})),
        f(
            4,
            "transfer",
            json!({"bank_code": "081", "bank_name": "KEB하나은행", "bank_mask": "123-********-021", "bank_account_type": "법인", "payer_name": "주식회사 한빛상사"}),
        ),
        f(5, "gone", json!({})),
        f(
            6,
            "gone",
            json!({"code": "SPCD0001", "msg": "결제키(PCD_PAYER_ID) 정보가 존재하지 않습니다."}),
        ),
        f(
            7,
            "gone",
            json!({"code": "CPAY0004", "msg": "정기결제 대상이 없습니다."}),
        ),
        f(8, "error", json!({})),
        f(
            9,
            "error",
            json!({"code": "CPAY0009", "msg": "알 수 없는 오류"}),
        ),
        // A transient code: retried until --max-attempts, then recorded as failed.
        f(
            10,
            "error",
            json!({"code": "AUTH0005", "msg": "토큰 생성 오류"}),
        ),
        f(11, "mismatch", json!({})),
    ]
}

/// 61 derived keys covering cards, transfers and both gone codes, one answered with a BOM
/// (numeric codes left out: see numeric_codes_keep_their_leading_zeros).
fn derived_sample() -> Vec<String> {
    let pool: Vec<String> = helpers::payer_ids(400, "derived-keys")
        .into_iter()
        .filter(|id| !derive_key(id).numeric_codes)
        .collect();
    let mut derived: Vec<String> = pool[..60].to_vec();
    // And one whose answer starts with a UTF-8 BOM (1 in 20).
    derived.extend(pool[60..].iter().find(|id| derive_key(id).bom).cloned());
    let kinds: HashSet<(SimKind, String)> = derived
        .iter()
        .map(|id| derive_key(id))
        .map(|k| (k.kind, k.code))
        .collect();
    for want in [
        (SimKind::Card, "0000"),
        (SimKind::Transfer, "0000"),
        (SimKind::Gone, "SPAY0005"),
        (SimKind::Gone, "SPCD0001"),
    ] {
        assert!(
            kinds.contains(&(want.0, want.1.to_owned())),
            "derived keys lack {want:?}"
        );
    }
    assert!(
        derived.iter().any(|id| derive_key(id).bom),
        "derived keys lack a BOM answer"
    );
    derived
}

/// Card, transfer, gone and failing keys (from a key file), plus derived keys compared to
/// `derive_key`: every column of every row, then the run's row.
async fn rows_and_run_record(db: TestDb) {
    let dir = tempfile::tempdir().expect("temp dir");
    let ids = helpers::payer_ids(12, "file-keys");
    let book = key_file(dir.path(), "keys.jsonl", &file_key_lines(&ids));
    let derived = derived_sample();
    let mut rows: Vec<(String, Option<String>)> = Vec::new();
    for (i, id) in ids.iter().chain(&derived).enumerate() {
        // Every fifth key has no customer reference.
        let r = (i % 5 != 4).then(|| format!("CUST-{i:04}"));
        rows.push((id.clone(), r));
    }
    let ran = Scenario::new()
        .csv_file("keys.csv", super::rows_csv(&rows))
        .book(book.clone())
        .on(db)
        .args(&["--rate", "0", "--max-attempts", "3"])
        .run()
        .await;
    ran.expect_exit(2);
    let run = ran.run_record().await;
    let checks = all_checks(&ran.store, run.id).await;
    assert_eq!(checks.len(), rows.len(), "one row per key");
    let mut expected_counts: HashMap<String, i64> = HashMap::new();
    for (id, r) in &rows {
        let actual = checks.get(id).unwrap_or_else(|| panic!("no row for {id}"));
        let key = book.get(id);
        let mut expected = expected_row(run.id, id, r.as_deref(), &key);
        if key.code == "AUTH0005" {
            // --max-attempts 3, then the second pass at the end of the run: 3 more.
            expected.attempts = 6;
        }
        *expected_counts
            .entry(expected.status.as_str().to_owned())
            .or_default() += 1;
        assert_row(actual, expected, &run);
    }
    let count = |s: &str| expected_counts.get(s).copied().unwrap_or(0);
    let counts = (count("active"), count("gone"), count("failed"));
    assert_run_row(&ran, &run, rows.len() as i64, counts).await;
    ran.close().await;
}

/// The run's row and the summary of [`rows_and_run_record`]: `total` keys, `(active,
/// gone, failed)` as the rows say.
async fn assert_run_row(ran: &Ran, run: &RunRecord, total: i64, counts: (i64, i64, i64)) {
    let (active, gone, failed) = counts;
    let summary = ran.summary();
    let stats = ran.sim.stats();
    assert_eq!(active + gone + failed, total);
    assert_eq!(failed, 4, "three error keys and a mismatch");
    assert_eq!(run.state, RunState::Completed);
    assert_eq!(run.source, format!("csv:{}", ran.csv_arg()));
    assert_eq!(run.keys_total, Some(total));
    assert_eq!(run.duplicates, 0);
    assert_eq!(
        (
            run.counts.active,
            run.counts.gone,
            run.counts.failed,
            run.counts.rejected
        ),
        (active, gone, failed, 0)
    );
    assert_eq!(run.auth_calls, 1);
    assert_eq!(stats.auth_calls, 1);
    // Every key once, the transient one three times in each of the two passes, and the
    // two keys with unknown codes once more in the second pass.
    assert_eq!(stats.lookups, total as u64 + 5 + 2);
    assert_eq!(run.lookups, stats.lookups as i64);
    assert_eq!(run.exit_code, Some(2));
    assert!(run.finished_at.is_some());
    assert!(run.run_key.is_none());
    let options: Value = serde_json::from_str(&run.options).expect("options are JSON");
    assert_eq!(options["concurrency"], 8, "{options}");
    let error: Option<String> = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT error FROM reconcile_runs WHERE id = {}",
        run.id
    )))
    .fetch_one(ran.store.pool())
    .await
    .expect("error column")
    .try_get(0)
    .expect("text");
    assert_eq!(error, None);

    // The summary says the same.
    assert_eq!(summary["run_id"], run.id);
    assert_eq!(summary["state"], "completed");
    assert_eq!(summary["keys"], total);
    assert_eq!(summary["active"], active);
    assert_eq!(summary["gone"], gone);
    assert_eq!(summary["failed"], failed);
    assert_eq!(summary["rejected"], 0);
    assert_eq!(summary["auth_calls"], 1);
    assert_eq!(summary["exit_code"], 2);
}

helpers::per_database!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    rows_and_run_record:
        Sqlite => every_column_of_every_row_on_sqlite,
        Postgres => every_column_of_every_row_on_postgres,
        MySql => every_column_of_every_row_on_mysql,
);

// ---- numeric codes ------------------------------------------------------------------------

/// Payple sends card and bank codes as strings or as numbers (`"0200"` or `200`); the
/// stored code is the code, leading zeros included, whichever way it arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numeric_codes_keep_their_leading_zeros() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ids = helpers::payer_ids(4, "numeric");
    let book = key_file(
        dir.path(),
        "keys.jsonl",
        &[
            json!({"payer_id": ids[0], "kind": "card", "card_code": "0200", "card_name": "BC카드", "numeric_codes": true}),
            json!({"payer_id": ids[1], "kind": "card", "card_code": "0200", "card_name": "BC카드", "numeric_codes": false}),
            json!({"payer_id": ids[2], "kind": "transfer", "bank_code": "081", "bank_name": "KEB하나은행", "numeric_codes": true}),
            json!({"payer_id": ids[3], "kind": "transfer", "bank_code": "004", "bank_name": "KB국민은행", "numeric_codes": true}),
        ],
    );
    let ran = Scenario::new()
        .ids(&ids)
        .book(book)
        .args(&["--rate", "0"])
        .run()
        .await;
    ran.expect_exit(0);
    let checks = ran.checks().await;
    let got: Vec<(Option<&str>, Option<&str>)> = ids
        .iter()
        .map(|id| {
            (
                checks[id].details.card_code.as_deref(),
                checks[id].details.bank_code.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (Some("0200"), None),
            (Some("0200"), None),
            (None, Some("081")),
            (None, Some("004"))
        ],
        "the same card company must not be stored as 200 one night and 0200 the next"
    );
    ran.close().await;
}

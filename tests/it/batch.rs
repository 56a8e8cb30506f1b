//! The nightly batch against the simulator and real databases: rows, sources, limits.
//!
//! Every test runs the real binary as a child process (`helpers::command`) against an
//! in-process simulator started by the test, then reads the simulator's own counters and
//! the results database. The per-database checks are written once (`rows_and_run_record`,
//! `latest_view_across_two_runs`, `table_and_query_sources`) and run on SQLite, PostgreSQL
//! and MySQL; a missing server prints why the test is skipped (unless `REQUIRE_POSTGRES=1`
//! / `REQUIRE_MYSQL=1`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use payple_reconcile::domain::{KeyDetails, KeyStatus, PayType, stable_hash};
use payple_reconcile::simulator::{Faults, KeyBook, SimKey, SimKind, derive_key};
use payple_reconcile::store::{CheckRecord, RunState, Store};
use serde_json::{Value, json};
use sqlx::Row;

use crate::helpers::{
    self, TestDb, all_checks, assert_exit, csv_run, derived_status, key_file, only_run, output_of,
    run_cmd, scalar_i64, sim_with, slow_sim, stderr_of, summary_of,
};

// ---- expected rows ------------------------------------------------------------------------

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
        attempts: 1,
        checked_at: String::new(),
    }
}

/// Compares one stored row with the expected one, column by column.
fn assert_row(
    actual: &CheckRecord,
    mut expected: CheckRecord,
    run: &payple_reconcile::store::RunRecord,
) {
    // checked_at: UTC RFC 3339 with milliseconds, within the run.
    let at = &actual.checked_at;
    assert!(
        chrono::DateTime::parse_from_rfc3339(at).is_ok() && at.ends_with('Z') && at.len() == 24,
        "checked_at {at:?} of {}",
        actual.payer_id
    );
    assert!(
        *at >= run.started_at && Some(at) <= run.finished_at.as_ref(),
        "checked_at {at} outside the run {} .. {:?}",
        run.started_at,
        run.finished_at
    );
    expected.checked_at = at.clone();
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

/// A CSV with `payer_id,customer_ref`; `None` writes an empty reference.
fn write_rows(dir: &Path, name: &str, rows: &[(String, Option<String>)]) -> PathBuf {
    let path = dir.join(name);
    let mut text = String::from("payer_id,customer_ref\n");
    for (id, r) in rows {
        text.push_str(&format!("{id},{}\n", r.as_deref().unwrap_or("")));
    }
    std::fs::write(&path, text).expect("write csv");
    path
}

// ---- every column, on every database ------------------------------------------------------

/// Card, transfer, gone and failing keys (from a key file), plus derived keys compared to
/// `derive_key`: every column of every row, then the run's row.
async fn rows_and_run_record(db: TestDb) {
    let dir = tempfile::tempdir().expect("temp dir");
    let ids = helpers::payer_ids(12, "file-keys");
    let f = |i: usize, kind: &str, extra: Value| {
        let mut line =
            json!({"payer_id": ids[i], "kind": kind, "numeric_codes": false, "bom": false});
        if let (Some(line), Value::Object(extra)) = (line.as_object_mut(), extra) {
            line.extend(extra);
        }
        line
    };
    let lines = vec![
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
    ];
    let book = key_file(dir.path(), "keys.jsonl", &lines);

    // Derived keys (numeric codes left out: see numeric_codes_keep_their_leading_zeros).
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

    let mut rows: Vec<(String, Option<String>)> = Vec::new();
    for (i, id) in ids.iter().chain(&derived).enumerate() {
        // Every fifth key has no customer reference.
        let r = (i % 5 != 4).then(|| format!("CUST-{i:04}"));
        rows.push((id.clone(), r));
    }
    let csv = write_rows(dir.path(), "keys.csv", &rows);
    let sim = sim_with(book.clone(), Faults::none(), None).await;

    let out = output_of(run_cmd(
        &sim,
        &db.url,
        &[
            "--csv",
            csv.to_str().unwrap(),
            "--rate",
            "0",
            "--max-attempts",
            "3",
        ],
    ))
    .await;
    assert_exit(&out, 2);
    let summary = summary_of(&out);
    let stats = sim.stats();

    let store = db.store().await;
    let run = only_run(&store).await;
    let checks = all_checks(&store, run.id).await;
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

    // The run's row.
    let total = rows.len() as i64;
    let (active, gone, failed) = (
        expected_counts.get("active").copied().unwrap_or(0),
        expected_counts.get("gone").copied().unwrap_or(0),
        expected_counts.get("failed").copied().unwrap_or(0),
    );
    assert_eq!(active + gone + failed, total);
    assert_eq!(failed, 4, "three error keys and a mismatch");
    assert_eq!(run.state, RunState::Completed);
    assert_eq!(run.source, format!("csv:{}", csv.display()));
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
    // Every key once, the transient one three times in each of the two passes.
    assert_eq!(stats.lookups, total as u64 + 5);
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
    .fetch_one(store.pool())
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
    store.close().await;
    sim.shutdown().await;
}

helpers::per_database!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    rows_and_run_record:
        Sqlite => every_column_of_every_row_on_sqlite,
        Postgres => every_column_of_every_row_on_postgres,
        MySql => every_column_of_every_row_on_mysql,
);

/// `run --csv CSV --rate 0` against a simulator answering from `keys`: asserts the exit
/// code and returns the run id.
async fn csv_run_id(db: &TestDb, keys: KeyBook, csv: &Path, code: i32) -> i64 {
    let sim = sim_with(keys, Faults::none(), None).await;
    let out = output_of(run_cmd(
        &sim,
        &db.url,
        &["--csv", csv.to_str().unwrap(), "--rate", "0"],
    ))
    .await;
    assert_exit(&out, code);
    let run_id = summary_of(&out)["run_id"].as_i64().expect("run id");
    sim.shutdown().await;
    run_id
}

/// A completed run's row: its counts `(active, gone, failed, rejected)` and `(keys_total,
/// auth_calls, lookups, exit_code)`.
async fn assert_completed_run(
    store: &Store,
    run_id: i64,
    counts: (i64, i64, i64, i64),
    totals: (Option<i64>, i64, i64, Option<i64>),
) {
    let run = store
        .run(run_id)
        .await
        .expect("read")
        .unwrap_or_else(|| panic!("run {run_id}"));
    assert_eq!(run.state, RunState::Completed);
    assert_eq!(
        (
            run.counts.active,
            run.counts.gone,
            run.counts.failed,
            run.counts.rejected
        ),
        counts
    );
    assert_eq!(
        (run.keys_total, run.auth_calls, run.lookups, run.exit_code),
        totals
    );
}

/// Two runs against simulators that answer differently: `billing_key_latest` gives each
/// key its newest status, keys only in the first run keep theirs, rejected rows are left
/// out, and each run's row has its own counts and exit code.
async fn latest_view_across_two_runs(db: TestDb) {
    let dir = tempfile::tempdir().expect("temp dir");
    let k = helpers::payer_ids(7, "latest");
    let line = |i: usize, kind: &str| json!({"payer_id": k[i], "kind": kind});
    let first = key_file(
        dir.path(),
        "first.jsonl",
        &[
            line(0, "card"),
            line(1, "card"),
            line(2, "transfer"),
            line(3, "gone"),
            line(4, "error"),
            line(5, "card"),
        ],
    );
    let second = key_file(
        dir.path(),
        "second.jsonl",
        &[
            line(0, "gone"),
            line(1, "card"),
            line(4, "transfer"),
            line(6, "transfer"),
        ],
    );
    let mut rows: Vec<(String, Option<String>)> =
        k[..6].iter().map(|id| (id.clone(), None)).collect();
    rows.push((String::new(), Some("EMPTY".to_owned())));
    let csv1 = write_rows(dir.path(), "first.csv", &rows);
    let csv2 = write_rows(
        dir.path(),
        "second.csv",
        &[0, 1, 4, 6].map(|i| (k[i].clone(), None)),
    );

    let run1 = csv_run_id(&db, first, &csv1, 2).await;
    let run2 = csv_run_id(&db, second, &csv2, 0).await;
    assert!(run2 > run1);

    let store = db.store().await;
    assert_completed_run(&store, run1, (4, 1, 1, 1), (Some(6), 1, 6, Some(2))).await;
    assert_completed_run(&store, run2, (3, 1, 0, 0), (Some(4), 1, 4, Some(0))).await;
    let latest = store
        .latest_runs(Some(RunState::Completed), 1)
        .await
        .expect("latest");
    assert_eq!(latest[0].id, run2);

    let view =
        sqlx::query("SELECT payer_id, run_id, status FROM billing_key_latest ORDER BY payer_id")
            .fetch_all(store.pool())
            .await
            .expect("read the view");
    let got: BTreeMap<String, (i64, String)> = view
        .iter()
        .map(|r| {
            (
                r.try_get::<String, _>(0).expect("payer_id"),
                (
                    r.try_get::<i64, _>(1).expect("run_id"),
                    r.try_get::<String, _>(2).expect("status"),
                ),
            )
        })
        .collect();
    assert_eq!(got.len(), view.len(), "a key twice in the view");
    let want: BTreeMap<String, (i64, String)> = [
        (0, run2, "gone"),
        (1, run2, "active"),
        (2, run1, "active"),
        (3, run1, "gone"),
        (4, run2, "active"),
        (5, run1, "active"),
        (6, run2, "active"),
    ]
    .into_iter()
    .map(|(i, run, s)| (k[i].clone(), (run, s.to_owned())))
    .collect();
    assert_eq!(got, want);
    store.close().await;
}

helpers::per_database!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    latest_view_across_two_runs:
        Sqlite => latest_view_across_runs_on_sqlite,
        Postgres => latest_view_across_runs_on_postgres,
        MySql => latest_view_across_runs_on_mysql,
);

// ---- sources ------------------------------------------------------------------------------

/// Runs SQL on a pool, panicking with the statement on error.
async fn exec(pool: &sqlx::AnyPool, sql: &str) {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Checks a finished run's rows against derived keys: exactly `want` (id → reference).
async fn assert_derived_rows(store: &Store, run_id: i64, want: &BTreeMap<String, Option<String>>) {
    let checks = all_checks(store, run_id).await;
    let got: BTreeMap<String, Option<String>> = checks
        .values()
        .map(|c| (c.payer_id.clone(), c.customer_ref.clone()))
        .collect();
    assert_eq!(&got, want, "rows of run {run_id}");
    for c in checks.values() {
        assert_eq!(
            c.status.as_str(),
            derived_status(&c.payer_id),
            "{}",
            c.payer_id
        );
        assert_eq!(c.attempts, 1);
    }
}

/// `--source-table` (default names and custom columns), `--source-query`, and
/// `--source-database-url` pointing at another (SQLite) database.
async fn table_and_query_sources(db: TestDb) {
    let dir = tempfile::tempdir().expect("temp dir");
    let sim = sim_with(KeyBook::derived(), Faults::none(), None).await;
    let store = db.store().await;
    let pool = store.pool();

    // 1. The default source: billing_keys(payer_id, customer_ref) in the results database.
    let ids = helpers::payer_ids(30, "table-source");
    exec(
        pool,
        "CREATE TABLE billing_keys (payer_id VARCHAR(255), customer_ref VARCHAR(255))",
    )
    .await;
    let values: Vec<String> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let r = if i % 3 == 0 {
                "NULL".to_owned()
            } else {
                format!("'T-{i}'")
            };
            format!("('{id}', {r})")
        })
        .collect();
    exec(
        pool,
        &format!("INSERT INTO billing_keys VALUES {}", values.join(", ")),
    )
    .await;
    let out = output_of(run_cmd(
        &sim,
        &db.url,
        &["--source-table", "billing_keys", "--rate", "0"],
    ))
    .await;
    assert_exit(&out, 0);
    let summary = summary_of(&out);
    let run1 = summary["run_id"].as_i64().expect("run id");
    assert_eq!(
        summary["source"],
        "table:billing_keys(payer_id,customer_ref)"
    );
    assert_eq!(summary["keys"], 30);
    let want: BTreeMap<String, Option<String>> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.clone(), (i % 3 != 0).then(|| format!("T-{i}"))))
        .collect();
    assert_derived_rows(&store, run1, &want).await;
    assert_eq!(sim.stats().lookups, 30);

    // 2. A query: only the rows it selects, first column the key, second the reference.
    exec(
        pool,
        "CREATE TABLE customers (id INTEGER, billing_key VARCHAR(255), ref_no VARCHAR(255), active INTEGER)",
    )
    .await;
    let values: Vec<String> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| format!("({i}, '{id}', 'Q-{i}', {})", i32::from(i % 2 == 0)))
        .collect();
    exec(
        pool,
        &format!("INSERT INTO customers VALUES {}", values.join(", ")),
    )
    .await;
    let out = output_of(run_cmd(
        &sim,
        &db.url,
        &[
            "--source-query",
            "SELECT billing_key, ref_no FROM customers WHERE active = 1 ORDER BY id",
            "--rate",
            "0",
        ],
    ))
    .await;
    assert_exit(&out, 0);
    let summary = summary_of(&out);
    let run2 = summary["run_id"].as_i64().expect("run id");
    assert_eq!(summary["source"], "query");
    let want: BTreeMap<String, Option<String>> = ids
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 2 == 0)
        .map(|(i, id)| (id.clone(), Some(format!("Q-{i}"))))
        .collect();
    assert_derived_rows(&store, run2, &want).await;
    assert_eq!(sim.stats().lookups, 30 + 15);

    // 3. Another database: a SQLite file with its own table and column names.
    let legacy_url = format!("sqlite://{}", dir.path().join("legacy.db").display());
    let legacy = Store::connect(&legacy_url).await.expect("legacy database");
    let legacy_ids = helpers::payer_ids(12, "legacy-source");
    exec(
        legacy.pool(),
        "CREATE TABLE legacy_keys (pid TEXT, note TEXT)",
    )
    .await;
    let values: Vec<String> = legacy_ids
        .iter()
        .map(|id| format!("('{id}', 'x')"))
        .collect();
    exec(
        legacy.pool(),
        &format!("INSERT INTO legacy_keys VALUES {}", values.join(", ")),
    )
    .await;
    legacy.close().await;
    let out = output_of(run_cmd(
        &sim,
        &db.url,
        &[
            "--source-database-url",
            &legacy_url,
            "--source-table",
            "legacy_keys",
            "--id-column",
            "pid",
            "--ref-column",
            "none",
            "--rate",
            "0",
        ],
    ))
    .await;
    assert_exit(&out, 0);
    let summary = summary_of(&out);
    let run3 = summary["run_id"].as_i64().expect("run id");
    assert_eq!(summary["source"], "table:legacy_keys(pid)");
    let want: BTreeMap<String, Option<String>> =
        legacy_ids.iter().map(|id| (id.clone(), None)).collect();
    assert_derived_rows(&store, run3, &want).await;
    assert_eq!(sim.stats().lookups, 30 + 15 + 12);
    // The results went to the results database only.
    let legacy = Store::connect(&legacy_url).await.expect("legacy database");
    let tables = scalar_i64(
        &legacy,
        "SELECT COUNT(*) FROM sqlite_master WHERE name = 'billing_key_checks'",
    )
    .await;
    assert_eq!(tables, 0, "the source database got a results table");
    legacy.close().await;
    store.close().await;
    sim.shutdown().await;
}

helpers::per_database!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    table_and_query_sources:
        Sqlite => table_query_and_other_database_sources_on_sqlite,
        Postgres => table_query_and_other_database_sources_on_postgres,
);

// ---- input hygiene ------------------------------------------------------------------------

/// Duplicates are looked up once and counted; empty, over-long and control-character ids
/// get `rejected` rows with the reason and are never sent; exit code 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_once_and_bad_ids_rejected_unsent() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("requests.jsonl");
    let sim = sim_with(KeyBook::derived(), Faults::none(), Some(log.clone())).await;
    let db = TestDb::sqlite();
    let ids = helpers::payer_ids(10, "dups");
    let too_long = "A".repeat(129);
    let control = format!("{}\u{1}x", &ids[0][..10]);
    // A row at index i of `lines` is on line i + 2 of the file (line 1 is the header).
    let mut text = String::from("payer_id,customer_ref\n");
    let mut lines: Vec<String> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| format!("{id},C-{i}"))
        .collect();
    lines.insert(3, format!("{},DUP-A", ids[0])); // line 5
    lines.insert(6, ",EMPTY".to_owned()); // line 8
    lines.insert(8, format!("{too_long},LONG")); // line 10
    lines.insert(9, format!("  {}  ,DUP-B", ids[4])); // line 11: spaces trimmed: a duplicate
    lines.insert(11, format!("{control},CTRL")); // line 13
    lines.push(format!("{},DUP-C", ids[9])); // last line: 17
    for l in &lines {
        text.push_str(l);
        text.push('\n');
    }
    let csv = dir.path().join("keys.csv");
    std::fs::write(&csv, &text).expect("write csv");

    let out = output_of(run_cmd(
        &sim,
        &db.url,
        &["--csv", csv.to_str().unwrap(), "--rate", "0"],
    ))
    .await;
    assert_exit(&out, 2);
    let summary = summary_of(&out);
    assert_eq!(summary["keys"], 10);
    assert_eq!(summary["duplicates"], 3);
    assert_eq!(summary["rejected"], 3);
    let stats = sim.stats();
    assert_eq!(stats.lookups, 10, "each distinct key once");
    sim.shutdown().await;

    let store = db.store().await;
    let run = only_run(&store).await;
    assert_eq!(
        (run.keys_total, run.duplicates, run.counts.rejected),
        (Some(10), 3, 3)
    );
    assert_eq!(run.exit_code, Some(2));
    let checks = all_checks(&store, run.id).await;
    assert_eq!(checks.len(), 13);
    for (i, id) in ids.iter().enumerate() {
        let c = &checks[id];
        assert_eq!(c.status.as_str(), derived_status(id));
        // The first occurrence's reference is kept.
        assert_eq!(c.customer_ref.as_deref(), Some(format!("C-{i}").as_str()));
        assert_eq!(c.attempts, 1);
    }
    let name = csv.display().to_string();
    let rejected: [(usize, &str, &str, &str); 3] = [
        (8, "EMPTY", "REJECTED_EMPTY", "empty PCD_PAYER_ID"),
        (
            10,
            "LONG",
            "REJECTED_TOO_LONG",
            "129 characters long (at most 128)",
        ),
        (
            13,
            "CTRL",
            "REJECTED_CONTROL_CHAR",
            "control character at position 10",
        ),
    ];
    for (line, reference, code, reason) in rejected {
        let c = checks
            .get(&format!("#{line} rejected"))
            .unwrap_or_else(|| panic!("no rejected row for line {line}: {:?}", checks.keys()));
        assert_eq!(c.status, KeyStatus::Rejected);
        assert_eq!(c.customer_ref.as_deref(), Some(reference));
        assert_eq!(c.result_code.as_deref(), Some(code));
        let msg = c.result_msg.as_deref().unwrap_or_default();
        assert!(msg.contains(reason), "{msg}");
        assert!(msg.contains(&format!("{name} line {line}")), "{msg}");
        assert_eq!(c.attempts, 0);
        assert_eq!(
            (
                &c.details.pay_type,
                &c.details.card_code,
                &c.details.bank_code,
                &c.details.payer_name
            ),
            (&None, &None, &None, &None)
        );
    }
    // No rejected value in the results table, and none sent.
    assert!(!checks.keys().any(|k| k.contains('\u{1}') || k.len() > 128));
    let sent: Vec<String> = std::fs::read_to_string(&log)
        .expect("request log")
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("log line"))
        .filter(|l| l["kind"] == "lookup")
        .map(|l| l["key"].as_str().unwrap_or_default().to_owned())
        .collect();
    let mut per_key: HashMap<&str, usize> = HashMap::new();
    for key in &sent {
        *per_key.entry(key).or_default() += 1;
    }
    let hash = |s: &str| format!("{:016x}", stable_hash(s.as_bytes()));
    for id in &ids {
        assert_eq!(
            per_key.get(hash(id).as_str()),
            Some(&1),
            "{id} looked up once"
        );
    }
    for bad in [
        "",
        too_long.as_str(),
        control.as_str(),
        &format!("  {}  ", ids[4]),
    ] {
        assert!(
            !per_key.contains_key(hash(bad).as_str()),
            "{bad:?} was sent"
        );
    }
    store.close().await;
}

/// Exit code 0 when every key is active or gone; 2 as soon as one key failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_code_zero_only_when_every_key_resolved() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ids = helpers::payer_ids(40, "exit-codes");
    assert!(ids.iter().any(|id| derived_status(id) == "gone"));
    let csv = helpers::write_csv(dir.path(), "keys.csv", &ids);
    let sim = sim_with(KeyBook::derived(), Faults::none(), None).await;
    let db = TestDb::sqlite();
    let out = output_of(run_cmd(
        &sim,
        &db.url,
        &["--csv", csv.to_str().unwrap(), "--rate", "0"],
    ))
    .await;
    assert_exit(&out, 0);
    let summary = summary_of(&out);
    assert_eq!(summary["exit_code"], 0);
    assert_eq!(summary["failed"], 0);
    sim.shutdown().await;

    // The same keys, one answering an unknown error code.
    let book = key_file(
        dir.path(),
        "keys.jsonl",
        &[json!({"payer_id": ids[7], "kind": "error"})],
    );
    let sim = sim_with(book, Faults::none(), None).await;
    let out = output_of(run_cmd(
        &sim,
        &db.url,
        &["--csv", csv.to_str().unwrap(), "--rate", "0"],
    ))
    .await;
    assert_exit(&out, 2);
    let summary = summary_of(&out);
    assert_eq!(
        (summary["failed"].as_i64(), summary["exit_code"].as_i64()),
        (Some(1), Some(2))
    );
    let store = db.store().await;
    let runs = store.latest_runs(None, 5).await.expect("runs");
    let codes: Vec<Option<i64>> = runs.iter().map(|r| r.exit_code).collect();
    assert_eq!(codes, [Some(2), Some(0)]);
    store.close().await;
    sim.shutdown().await;
}

// ---- token, concurrency, pace -------------------------------------------------------------

/// A run shorter than the token's life authenticates once, whatever the number of keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_auth_call_for_a_run_shorter_than_the_token_life() {
    let (_dir, _, csv) = helpers::keys_csv(150, "one-auth");
    let sim = sim_with(KeyBook::derived(), Faults::none(), None).await;
    let db = TestDb::sqlite();
    let out = output_of(csv_run(&sim, &db.url, &csv, "0", "16")).await;
    assert_exit(&out, 0);
    let stats = sim.stats();
    assert_eq!(stats.auth_calls, 1, "{stats:?}");
    assert_eq!(stats.lookups, 150);
    assert_eq!(
        (stats.expired_token_lookups, stats.bad_token_lookups),
        (0, 0)
    );
    assert_eq!(summary_of(&out)["auth_calls"], 1);
    let store = db.store().await;
    assert_eq!(only_run(&store).await.auth_calls, 1);
    store.close().await;
    sim.shutdown().await;
}

/// With 20 ms per lookup, concurrency builds up to `--concurrency` and never beyond it,
/// as the simulator counts requests in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peak_in_flight_lookups_reach_but_never_exceed_concurrency() {
    let (_dir, _, csv) = helpers::keys_csv(60, "concurrency");
    for n in [1u64, 5] {
        let sim = slow_sim(Duration::from_millis(20), None).await;
        let db = TestDb::sqlite();
        let out = output_of(csv_run(&sim, &db.url, &csv, "0", &n.to_string())).await;
        assert_exit(&out, 0);
        let stats = sim.stats();
        assert_eq!(stats.lookups, 60);
        assert!(
            stats.peak_concurrent_lookups <= n,
            "--concurrency {n}: {stats:?}"
        );
        assert_eq!(
            stats.peak_concurrent_lookups, n,
            "--concurrency {n} never reached: {stats:?}"
        );
        sim.shutdown().await;
    }
}

/// `--rate 20` (burst 1): no sliding one-second window of the simulator's arrival times
/// holds more than 21 lookups, and the run is paced, not bunched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_second_holds_more_than_rate_plus_burst_lookups() {
    let (_dir, _, csv) = helpers::keys_csv(100, "rate");
    let sim = slow_sim(Duration::from_millis(5), None).await;
    let db = TestDb::sqlite();
    let out = output_of(csv_run(&sim, &db.url, &csv, "20", "8")).await;
    assert_exit(&out, 0);
    let mut times = sim.lookup_times();
    assert_eq!(times.len(), 100);
    times.sort();
    let second = Duration::from_secs(1);
    let mut worst = (0usize, Duration::ZERO);
    for (i, start) in times.iter().enumerate() {
        let n = times[i..]
            .iter()
            .take_while(|t| **t < *start + second)
            .count();
        if n > worst.0 {
            worst = (n, *start);
        }
    }
    assert!(
        worst.0 <= 21,
        "{} lookups in the second from {:?}",
        worst.0,
        worst.1
    );
    let span = times[99] - times[0];
    // 99 gaps of at least 50 ms (minus scheduling jitter).
    assert!(
        span >= Duration::from_millis(4700),
        "100 lookups in {span:?}"
    );
    sim.shutdown().await;
}

// ---- malformed input ----------------------------------------------------------------------

/// A missing `payer_id` header, invalid UTF-8 on line 3, or an empty file: exit 3, stderr
/// names the file (and line), no lookup is sent and no result row written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_csv_stops_before_any_lookup_with_exit_3() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ids = helpers::payer_ids(3, "malformed");
    let cases: [(&str, Vec<u8>, Option<u64>, &str); 3] = [
        (
            "no-header.csv",
            format!("id,customer_ref\n{},C-1\n", ids[0]).into_bytes(),
            Some(1),
            "payer_id",
        ),
        (
            "latin1.csv",
            [
                format!("payer_id\n{}\n", ids[1]).as_bytes(),
                b"caf\xe9-key-123\n",
                ids[2].as_bytes(),
                b"\n",
            ]
            .concat(),
            Some(3),
            "UTF-8",
        ),
        ("empty.csv", Vec::new(), None, "empty"),
    ];
    for (name, bytes, line, what) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).expect("write csv");
        let sim = sim_with(KeyBook::derived(), Faults::none(), None).await;
        let db = TestDb::sqlite();
        let out = output_of(run_cmd(
            &sim,
            &db.url,
            &["--csv", path.to_str().unwrap(), "--rate", "0"],
        ))
        .await;
        assert_exit(&out, 3);
        let stderr = stderr_of(&out);
        assert!(
            stderr.contains(&path.display().to_string()),
            "{name}: {stderr}"
        );
        if let Some(line) = line {
            assert!(stderr.contains(&format!("line {line}")), "{name}: {stderr}");
        }
        assert!(stderr.contains(what), "{name}: {stderr}");
        assert_eq!(sim.stats().lookups, 0, "{name}: a lookup was sent");
        let store = db.store().await;
        assert_eq!(
            scalar_i64(&store, "SELECT COUNT(*) FROM billing_key_checks").await,
            0,
            "{name}"
        );
        for run in store.latest_runs(None, 5).await.expect("runs") {
            assert_ne!(run.state, RunState::Completed, "{name}: {run:?}");
            assert_eq!(run.exit_code, Some(3), "{name}: {run:?}");
        }
        store.close().await;
        sim.shutdown().await;
    }
}

// ---- stdout -------------------------------------------------------------------------------

/// stdout of `run` is one JSON line, and it agrees with the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_is_exactly_one_json_summary_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ids = helpers::payer_ids(25, "stdout");
    let mut with_dup = ids.clone();
    with_dup.push(ids[3].clone());
    with_dup.push(String::new());
    let csv = helpers::write_csv(dir.path(), "keys.csv", &with_dup);
    let sim = sim_with(KeyBook::derived(), Faults::none(), None).await;
    let db = TestDb::sqlite();
    let out = output_of(run_cmd(
        &sim,
        &db.url,
        &["--csv", csv.to_str().unwrap(), "--rate", "0"],
    ))
    .await;
    assert_exit(&out, 2);
    let s = summary_of(&out);
    let store = db.store().await;
    let run = only_run(&store).await;
    let gone = ids.iter().filter(|id| derived_status(id) == "gone").count() as i64;
    assert_eq!(s["run_id"], run.id);
    assert_eq!(s["state"], "completed");
    assert_eq!(s["source"], format!("csv:{}", csv.display()));
    assert_eq!(s["keys"], 25);
    assert_eq!(s["duplicates"], 1);
    assert_eq!(
        (s["active"].as_i64(), s["gone"].as_i64()),
        (Some(25 - gone), Some(gone))
    );
    assert_eq!(
        (s["failed"].as_i64(), s["rejected"].as_i64()),
        (Some(0), Some(1))
    );
    assert_eq!(s["checked_now"], 25);
    assert_eq!(s["lookups"], 25);
    assert_eq!(s["auth_calls"], 1);
    assert_eq!(s["exit_code"], 2);
    assert!(s["duration_secs"].as_f64().is_some_and(|d| d > 0.0), "{s}");
    assert!(
        s["lookups_per_second"].as_f64().is_some_and(|r| r > 0.0),
        "{s}"
    );
    assert_eq!(
        (run.counts.active, run.counts.gone, run.counts.rejected),
        (25 - gone, gone, 1)
    );
    store.close().await;
    sim.shutdown().await;
}

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
    let csv = helpers::write_csv(dir.path(), "keys.csv", &ids);
    let sim = sim_with(book, Faults::none(), None).await;
    let db = TestDb::sqlite();
    let out = output_of(run_cmd(
        &sim,
        &db.url,
        &["--csv", csv.to_str().unwrap(), "--rate", "0"],
    ))
    .await;
    assert_exit(&out, 0);
    let store = db.store().await;
    let run = only_run(&store).await;
    let checks = all_checks(&store, run.id).await;
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
    store.close().await;
    sim.shutdown().await;
}

// ---- resume with nothing to resume --------------------------------------------------------

/// `run --resume` with no unfinished run says so and starts a new run from the source
/// given; with the previous run completed it does the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_with_nothing_to_resume_starts_a_new_run() {
    let (_dir, _, csv) = helpers::keys_csv(20, "nothing-to-resume");
    let sim = sim_with(KeyBook::derived(), Faults::none(), None).await;
    let db = TestDb::sqlite();
    let mut first = None;
    for round in 0..2 {
        let mut cmd = run_cmd(
            &sim,
            &db.url,
            &["--resume", "--csv", csv.to_str().unwrap(), "--rate", "0"],
        );
        cmd.env("RUST_LOG", "info");
        let out = output_of(cmd).await;
        assert_exit(&out, 0);
        assert!(
            stderr_of(&out).contains("nothing to resume"),
            "round {round}: {}",
            stderr_of(&out)
        );
        let summary = summary_of(&out);
        assert_eq!(summary["state"], "completed");
        assert_eq!(summary["checked_now"], 20);
        let id = summary["run_id"].as_i64().expect("run id");
        assert_ne!(Some(id), first, "a completed run is not resumed");
        first = Some(id);
    }
    assert_eq!(sim.stats().lookups, 40);
    sim.shutdown().await;
}

/// A rejected input row is stored under a placeholder (`#LINE`); a real key that happens
/// to read the same must still be looked up and get its own row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_rows_placeholder_never_hides_a_real_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ids = helpers::payer_ids(3, "placeholder");
    // Line 2 holds the key "#4"; line 4 is an empty id, whose placeholder starts "#4" too.
    let text = format!(
        "payer_id,customer_ref\n#4,REAL\n{},A\n,EMPTY\n{},B\n",
        ids[0], ids[1]
    );
    let csv = dir.path().join("keys.csv");
    std::fs::write(&csv, text).expect("write csv");
    let sim = sim_with(KeyBook::derived(), Faults::none(), None).await;
    let db = TestDb::sqlite();
    let out = output_of(run_cmd(
        &sim,
        &db.url,
        &["--csv", csv.to_str().unwrap(), "--rate", "0"],
    ))
    .await;
    assert_exit(&out, 2);
    let summary = summary_of(&out);
    assert_eq!(
        (summary["keys"].as_i64(), summary["rejected"].as_i64()),
        (Some(3), Some(1))
    );
    assert_eq!(sim.stats().lookups, 3, "the key \"#4\" was never looked up");
    let store = db.store().await;
    let run = only_run(&store).await;
    let checks = all_checks(&store, run.id).await;
    assert_eq!(checks.len(), 4, "{checks:#?}");
    store.close().await;
    sim.shutdown().await;
}

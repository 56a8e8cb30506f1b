//! The store's bulk paths on each database: staging, result rows and pending pages in
//! batches that cross the fixed statement sizes, each key once; and a row PostgreSQL
//! refuses inside an array-bound batch isolated to that row.

use std::time::Duration;

use payple_reconcile::domain::{KeyDetails, KeyStatus, LookupOutcome, PayType};
use payple_reconcile::store::time::parse_time;
use payple_reconcile::store::writer::{self, STORE_REJECTED, WriterConfig};
use payple_reconcile::store::{CheckRow, NewRun, StagedKey, Store};

use crate::helpers::{self, TestDb};

async fn new_run(store: &Store) -> i64 {
    store
        .create_or_join_run(&NewRun {
            run_key: None,
            source: "test".to_owned(),
            source_spec: payple_reconcile::source::SourceSpec::Query {
                sql: "SELECT 1".to_owned(),
            },
            options: "{}".to_owned(),
            shard_count: 1,
        })
        .await
        .expect("run")
}

fn full_row(payer_id: &str, attempts: u32) -> CheckRow {
    CheckRow {
        payer_id: payer_id.to_owned(),
        customer_ref: Some("CUST \"7\", 고객".to_owned()),
        outcome: LookupOutcome {
            status: KeyStatus::Active,
            details: KeyDetails {
                pay_type: Some(PayType::Card),
                card_code: Some("41".to_owned()),
                card_name: Some("BC카드".to_owned()),
                card_mask: Some("1111-****-****-2222".to_owned()),
                payer_name: Some("홍*동".to_owned()),
                is_tax: Some("Y".to_owned()),
                ..KeyDetails::default()
            },
            result_code: Some("0000".to_owned()),
            result_msg: Some("line\nbreak \\ and \u{1F600}".to_owned()),
            attempts,
        },
        checked_at: parse_time("2026-11-28T09:00:00.123Z").expect("a time"),
    }
}

/// 2,500 keys (two whole 1,024-row MySQL statements and a remainder of every smaller
/// size): staged twice, paged back in input order, written with repeats; one row each.
async fn bulk_writes_keep_one_row_per_key(db: TestDb) {
    const N: usize = 2_500;
    let store = db.store().await;
    let run_id = new_run(&store).await;
    let ids = helpers::payer_ids(N, "bulk");
    let mut keys: Vec<StagedKey> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| StagedKey {
            seq: i as i64 + 1,
            payer_id: id.clone(),
            customer_ref: (i % 3 != 0).then(|| format!("고객-{i}, \"q\"")),
            prior_attempts: 0,
        })
        .collect();
    let by_seq = keys.clone();
    keys.sort_by(|a, b| a.payer_id.cmp(&b.payer_id));
    let mut staging = store.staging(run_id, 0);
    staging.write(&keys).await.expect("staged");
    // The same keys again, under other sequence numbers: the first occurrence stays.
    let again: Vec<StagedKey> = keys
        .iter()
        .map(|k| StagedKey {
            seq: k.seq + 10_000,
            ..k.clone()
        })
        .collect();
    staging.write(&again).await.expect("staged again");
    staging.commit().await.expect("committed");
    assert_eq!(
        store.count_staged(run_id, 0).await.expect("count"),
        N as i64
    );

    let mut read = Vec::new();
    let mut after = 0;
    loop {
        let page = store
            .pending_keys(run_id, 0, after, 1_000, true)
            .await
            .expect("page");
        let Some(last) = page.last() else { break };
        after = last.seq;
        read.extend(page);
    }
    assert_eq!(read, by_seq, "every key once, in input order, texts intact");

    // Results for the first 1,500 keys, 700 of them twice in the same call.
    let mut rows: Vec<CheckRow> = ids[..1_500].iter().map(|id| full_row(id, 3)).collect();
    rows.extend(ids[..700].iter().map(|id| full_row(id, 9)));
    store.insert_checks(run_id, &rows).await.expect("written");
    store
        .insert_checks(run_id, &rows[..10])
        .await
        .expect("written again, ignored");
    let counts = store.status_counts(run_id).await.expect("counts");
    assert_eq!(counts.total(), 1_500);
    let stored = store
        .check(run_id, &ids[42])
        .await
        .expect("read")
        .expect("row");
    let expected = full_row(&ids[42], 3);
    assert_eq!(stored.customer_ref, expected.customer_ref);
    assert_eq!(stored.details, expected.outcome.details);
    assert_eq!(stored.result_msg, expected.outcome.result_msg);
    assert_eq!(stored.attempts, 3, "the first row written stays");

    let pending = store
        .pending_keys(run_id, 0, 0, 10_000, false)
        .await
        .expect("pending");
    assert_eq!(pending, by_seq[1_500..]);
    assert_eq!(store.count_pending(run_id, 0).await.expect("count"), 1_000);
    store.close().await;
}

helpers::per_database!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    bulk_writes_keep_one_row_per_key:
        Sqlite => bulk_writes_keep_one_row_per_key_on_sqlite,
        Postgres => bulk_writes_keep_one_row_per_key_on_postgres,
        MySql => bulk_writes_keep_one_row_per_key_on_mysql,
);

/// One row of a 3,000-row batch holds a NUL character, which PostgreSQL refuses in any
/// text: the array-bound statement fails whole, the writer halves it down to that row,
/// writes the 2,999 others and stores the key as failed with the database's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_postgres_refuses_in_an_array_batch_is_isolated_to_that_row() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let store = db.store().await;
    let run_id = new_run(&store).await;
    let ids = helpers::payer_ids(3_000, "array-poison");
    let config = WriterConfig {
        batch_rows: 10_000,
        flush_every: Duration::from_secs(60),
        attempts: 1,
    };
    let w = writer::spawn(store.clone(), run_id, config);
    for (i, id) in ids.iter().enumerate() {
        let mut row = full_row(id, 1);
        row.checked_at = chrono::Utc::now();
        if i == 1_234 {
            row.outcome.details.payer_name = Some("홍\u{0}길동".to_owned());
        }
        w.sender.send(row).await.expect("writer alive");
    }
    drop(w.sender);
    let stats = w.task.await.expect("joined").expect("written");
    assert_eq!(stats.isolated, 1, "{stats:?}");
    assert_eq!(stats.rows, 3_000, "{stats:?}");

    let checks = helpers::all_checks(&store, run_id).await;
    assert_eq!(checks.len(), 3_000, "every key has its row");
    let poisoned = &checks[&ids[1_234]];
    assert_eq!(poisoned.status, KeyStatus::Failed);
    assert_eq!(poisoned.result_code.as_deref(), Some(STORE_REJECTED));
    let msg = poisoned.result_msg.as_deref().unwrap_or_default();
    assert!(msg.contains("0x00"), "{msg}");
    let others = checks
        .values()
        .filter(|c| c.status == KeyStatus::Active)
        .count();
    assert_eq!(others, 2_999);
    store.close().await;
}

/// On MySQL/MariaDB a page of pending keys is read from the `run_keys_page` index alone
/// ("Using index"): no key of the page is fetched again from the table by its primary key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_pages_of_pending_keys_come_from_one_covering_index() {
    use sqlx::Row;
    let Some(db) = TestDb::mysql().await else {
        return;
    };
    let store = db.store().await;
    let run_id = new_run(&store).await;
    let keys: Vec<StagedKey> = helpers::payer_ids(2_000, "page")
        .into_iter()
        .enumerate()
        .map(|(i, payer_id)| StagedKey {
            seq: i as i64 + 1,
            payer_id,
            customer_ref: Some(format!("c{i}")),
            prior_attempts: 0,
        })
        .collect();
    let mut staging = store.staging(run_id, 0);
    staging.write(&keys).await.expect("staged");
    staging.commit().await.expect("committed");
    store.close().await;

    let pool = sqlx::MySqlPool::connect(&db.url).await.expect("connect");
    sqlx::query("ANALYZE TABLE run_keys")
        .execute(&pool)
        .await
        .expect("analyze");
    let plan = sqlx::query(sqlx::AssertSqlSafe(format!(
        "EXPLAIN SELECT k.seq, k.payer_id, k.customer_ref, k.prior_attempts FROM run_keys k \
         WHERE k.run_id = {run_id} AND k.shard_index = 0 AND k.seq > 500 \
         ORDER BY k.seq LIMIT 1000"
    )))
    .fetch_one(&pool)
    .await
    .expect("explain");
    let key: Option<String> = plan.try_get("key").expect("key column");
    let extra: Option<String> = plan.try_get("Extra").expect("Extra column");
    pool.close().await;
    assert_eq!(key.as_deref(), Some("run_keys_page"), "extra: {extra:?}");
    let extra = extra.unwrap_or_default();
    assert!(extra.contains("Using index"), "{extra}");
    assert!(!extra.contains("filesort"), "{extra}");
}

//! Key sources other than a CSV: `--source-table`, `--source-query`, and
//! `--source-database-url` pointing at another database.

use std::collections::BTreeMap;

use payple_reconcile::store::Store;

use crate::helpers::{
    self, Scenario, Setup, TestDb, all_checks, assert_exit, derived_status, exec, output_of,
    scalar_i64, summary_of,
};

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

/// Runs `run ARGS` to the end with exit 0: the summary's source and run id.
async fn source_run(set: &Setup, args: &[&str]) -> (String, i64) {
    let out = output_of(set.bare_command(args)).await;
    assert_exit(&out, 0);
    let summary = summary_of(&out);
    let run_id = summary["run_id"].as_i64().expect("run id");
    let source = summary["source"].as_str().expect("source").to_owned();
    (source, run_id)
}

/// 1. The default source: billing_keys(payer_id, customer_ref) in the results database.
async fn default_table(set: &Setup, ids: &[String]) {
    let pool = set.store.pool();
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
    let out = output_of(set.bare_command(&["--source-table", "billing_keys", "--rate", "0"])).await;
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
    assert_derived_rows(&set.store, run1, &want).await;
    assert_eq!(set.sim.stats().lookups, 30);
}

/// 2. A query: only the rows it selects, first column the key, second the reference.
async fn query(set: &Setup, ids: &[String]) {
    let pool = set.store.pool();
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
    let (source, run2) = source_run(
        set,
        &[
            "--source-query",
            "SELECT billing_key, ref_no FROM customers WHERE active = 1 ORDER BY id",
            "--rate",
            "0",
        ],
    )
    .await;
    assert_eq!(source, "query");
    let want: BTreeMap<String, Option<String>> = ids
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 2 == 0)
        .map(|(i, id)| (id.clone(), Some(format!("Q-{i}"))))
        .collect();
    assert_derived_rows(&set.store, run2, &want).await;
    assert_eq!(set.sim.stats().lookups, 30 + 15);
}

/// 3. Another database: a SQLite file with its own table and column names.
async fn other_database(set: &Setup) {
    let legacy_url = format!("sqlite://{}", set.dir.path().join("legacy.db").display());
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
    let (source, run3) = source_run(
        set,
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
    )
    .await;
    assert_eq!(source, "table:legacy_keys(pid)");
    let want: BTreeMap<String, Option<String>> =
        legacy_ids.iter().map(|id| (id.clone(), None)).collect();
    assert_derived_rows(&set.store, run3, &want).await;
    assert_eq!(set.sim.stats().lookups, 30 + 15 + 12);
    // The results went to the results database only.
    let legacy = Store::connect(&legacy_url).await.expect("legacy database");
    let tables = scalar_i64(
        &legacy,
        "SELECT COUNT(*) FROM sqlite_master WHERE name = 'billing_key_checks'",
    )
    .await;
    assert_eq!(tables, 0, "the source database got a results table");
    legacy.close().await;
}

/// `--source-table` (default names and custom columns), `--source-query`, and
/// `--source-database-url` pointing at another (SQLite) database.
async fn table_and_query_sources(db: TestDb) {
    let set = Scenario::new().on(db).start().await;
    let ids = helpers::payer_ids(30, "table-source");
    default_table(&set, &ids).await;
    query(&set, &ids).await;
    other_database(&set).await;
    set.close().await;
}

helpers::per_database!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    table_and_query_sources:
        Sqlite => table_query_and_other_database_sources_on_sqlite,
        Postgres => table_query_and_other_database_sources_on_postgres,
);

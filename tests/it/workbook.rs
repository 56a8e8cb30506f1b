//! The finance workbook, read back with calamine.
//!
//! Two real runs of the binary against simulators whose key files differ (keys go, one
//! starts failing, one was already gone, a new key comes in gone), the second with
//! `--report night.xlsx`; then every sheet is read back and checked against the database:
//! names, headers, row counts, Korean text, statuses, KST date-times, the Action sheet's
//! order, the Changes sheet against the run-to-run merge, the charts in the drawing parts.
//! The same on SQLite, PostgreSQL and MySQL/MariaDB (their collations order customer
//! references; the Action sheet uses the database's order).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use calamine::{Data, Reader, Xlsx, open_workbook};
use payple_reconcile::report::changes::{ChangeStream, PAGE_ROWS};
use payple_reconcile::report::csv::REPORT_HEADER;
use payple_reconcile::report::xlsx::{XlsxOptions, write_workbook};
use payple_reconcile::simulator::SimConfig;
use payple_reconcile::store::{RunState, Store};
use serde_json::json;

use crate::helpers::{
    self, Scenario, TestDb, assert_exit, bin_output, sim_from_file, stderr_of, write_csv_rows,
    write_key_file,
};

const KEY_A: &str = "WbKeyA0000000000000001";
const KEY_B: &str = "WbKeyB0000000000000002";
const KEY_C: &str = "WbKeyC0000000000000003";
const KEY_D: &str = "WbKeyD0000000000000004";
const KEY_E: &str = "WbKeyE0000000000000005";
const KEY_F: &str = "WbKeyF0000000000000006";
const KEY_G: &str = "WbKeyG0000000000000007";

const FORMULA_REF: &str = "=HYPERLINK(\"http://evil.example\",\"click\")";
const BIDI_REF: &str = "\u{202E}evil-ref";

/// A sheet as rows of text (numbers and date-times shown as calamine gives them).
fn sheet(book: &mut Xlsx<std::io::BufReader<std::fs::File>>, name: &str) -> Vec<Vec<Data>> {
    let range = book
        .worksheet_range(name)
        .unwrap_or_else(|e| panic!("sheet {name}: {e}"));
    range.rows().map(<[Data]>::to_vec).collect()
}

fn text(cell: &Data) -> String {
    match cell {
        Data::String(s) => s.clone(),
        Data::Empty => String::new(),
        other => panic!("not a string cell: {other:?}"),
    }
}

/// A date-time cell as `YYYY-MM-DD HH:MM:SS`.
fn datetime(cell: &Data) -> String {
    let Data::DateTime(t) = cell else {
        panic!("not a date-time cell: {cell:?}")
    };
    assert!(t.is_datetime(), "{t:?}");
    let (y, mo, d, h, mi, s, _) = t.to_ymd_hms_milli();
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}")
}

/// Runs 1 and 2 as the binary; returns (run 1, run 2, the workbook run 2 wrote).
async fn two_runs(db: &TestDb, d: &Path) -> (i64, i64, PathBuf) {
    let card = |id: &str, name: &str| json!({"payer_id": id, "kind": "card", "card_name": name, "card_mask": "4518-****-****-1234"});
    let gone = |id: &str| json!({"payer_id": id, "kind": "gone"});
    let keys1 = write_key_file(
        d,
        "keys1.jsonl",
        &[
            card(KEY_A, "신한카드"),
            card(KEY_B, "BC카드"),
            gone(KEY_C),
            card(KEY_D, "현대카드"),
            card(KEY_E, "삼성카드"),
            card(KEY_F, "KB국민카드"),
        ],
    );
    let keys2 = write_key_file(
        d,
        "keys2.jsonl",
        &[
            gone(KEY_A),
            gone(KEY_B),
            gone(KEY_C),
            json!({"payer_id": KEY_D, "kind": "error"}),
            card(KEY_E, "삼성카드"),
            card(KEY_F, "KB국민카드"),
            gone(KEY_G),
        ],
    );
    let mut rows = vec![
        (KEY_A, "나-고객"),
        (KEY_B, "가-고객"),
        (KEY_C, "다-고객"),
        (KEY_D, "A-cust"),
        (KEY_E, FORMULA_REF),
        (KEY_F, BIDI_REF),
    ];
    let csv1 = write_csv_rows(d, "keys1.csv", &rows);
    rows.push((KEY_G, "R-new"));
    let csv2 = write_csv_rows(d, "keys2.csv", &rows);
    let sim1 = sim_from_file(&keys1, 5).await;
    let out = bin_output(
        &sim1,
        db,
        &["run", "--rate", "0", "--csv", csv1.to_str().unwrap()],
    )
    .await;
    assert_exit(&out, 0);
    sim1.shutdown().await;
    let sim2 = sim_from_file(&keys2, 5).await;
    let book = d.join("night.xlsx");
    let args = [
        "run",
        "--rate",
        "0",
        "--csv",
        csv2.to_str().unwrap(),
        "--report",
        book.to_str().unwrap(),
    ];
    let out = bin_output(&sim2, db, &args).await;
    assert_exit(&out, 2); // KEY_D failed
    sim2.shutdown().await;
    let store = db.store().await;
    let runs = store
        .latest_runs(Some(RunState::Completed), 5)
        .await
        .expect("runs");
    assert_eq!(runs.len(), 2);
    store.close().await;
    (runs[1].id, runs[0].id, book)
}

async fn scenario(db: TestDb) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (r1, r2, book_path) = two_runs(&db, dir.path()).await;
    let store = db.store().await;
    let mut book: Xlsx<_> = open_workbook(&book_path).expect("a workbook calamine reads");
    assert_eq!(book.sheet_names(), ["Summary", "Action", "Keys", "Changes"]);
    check_keys(&store, r2, &sheet(&mut book, "Keys")).await;
    check_action(&sheet(&mut book, "Action"));
    check_changes(&store, r1, r2, &sheet(&mut book, "Changes")).await;
    check_summary(&store, r2, &sheet(&mut book, "Summary")).await;
    check_charts(&book_path);
    check_spill(&store, r2, dir.path()).await;
    store.close().await;
}

helpers::per_database!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    scenario: Sqlite => workbook_sheets_on_sqlite,
        Postgres => workbook_sheets_on_postgres,
        MySql => workbook_sheets_on_mysql,
);

/// Keys: the CSV's header, one row per database row, Korean intact, statuses as stored,
/// times as KST date-times nine hours after the stored UTC, formulas and bidi defused.
async fn check_keys(store: &Store, run: i64, rows: &[Vec<Data>]) {
    let header: Vec<String> = rows[0].iter().map(text).collect();
    assert_eq!(header, REPORT_HEADER);
    let stored = helpers::all_checks(store, run).await;
    let db_rows = helpers::scalar_i64(store, &helpers::count_rows_sql(run)).await;
    assert_eq!(rows.len() as i64 - 1, db_rows);
    let by_ref: BTreeMap<String, &Vec<Data>> = rows[1..].iter().map(|r| (text(&r[0]), r)).collect();
    assert_eq!(text(&by_ref["나-고객"][2]), "gone");
    assert_eq!(text(&by_ref["A-cust"][2]), "failed");
    let formula = by_ref[&format!("'{FORMULA_REF}")];
    assert_eq!(text(&formula[4]), "삼성카드");
    assert_eq!(text(&formula[2]), "active");
    assert!(by_ref.contains_key("evil-ref"), "{:?}", by_ref.keys());
    for record in stored.values() {
        let row = rows[1..]
            .iter()
            .find(|r| text(&r[1]) == payple_reconcile::domain::mask_payer_id(&record.payer_id))
            .unwrap_or_else(|| panic!("no row for {}", record.payer_id));
        assert_eq!(text(&row[2]), record.status.as_str());
        let utc = record.checked_at;
        let kst = utc + chrono::Duration::hours(9);
        assert_eq!(
            datetime(&row[11]),
            kst.format("%Y-%m-%d %H:%M:%S").to_string()
        );
        assert_eq!(
            datetime(&row[12]),
            utc.format("%Y-%m-%d %H:%M:%S").to_string()
        );
    }
}

/// Action: newly gone first (gone now, not gone before, new keys included), then the
/// other gone and failed keys, each group by customer reference.
fn check_action(rows: &[Vec<Data>]) {
    assert_eq!(text(&rows[0][0]), "action");
    let got: Vec<(String, String, String)> = rows[1..]
        .iter()
        .map(|r| (text(&r[0]), text(&r[1]), text(&r[3])))
        .collect();
    let want = [
        ("newly gone", "R-new", "gone"),
        ("newly gone", "가-고객", "gone"),
        ("newly gone", "나-고객", "gone"),
        ("failed", "A-cust", "failed"),
        ("gone", "다-고객", "gone"),
    ];
    let want: Vec<(String, String, String)> = want
        .iter()
        .map(|(a, b, c)| ((*a).to_owned(), (*b).to_owned(), (*c).to_owned()))
        .collect();
    assert_eq!(got, want);
    for row in &rows[1..] {
        assert!(text(&row[2]).contains("****"), "masked: {row:?}");
        datetime(&row[6]);
    }
}

/// Changes: exactly what the run-to-run merge computes.
async fn check_changes(store: &Store, r1: i64, r2: i64, rows: &[Vec<Data>]) {
    let mut want = Vec::new();
    let mut stream = ChangeStream::new(store, r1, r2, PAGE_ROWS);
    while let Some(window) = stream.next_window().await.expect("changes") {
        want.extend(window.iter().map(|c| {
            let cells = c.cells();
            (
                cells[0].to_owned(),
                cells[2].to_owned(),
                cells[4].to_owned(),
            )
        }));
    }
    let got: Vec<(String, String, String)> = rows[1..]
        .iter()
        .map(|r| (text(&r[0]), text(&r[2]), text(&r[4])))
        .collect();
    assert_eq!(got, want);
    let kinds: Vec<&str> = want.iter().map(|w| w.0.as_str()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "newly_gone").count(), 2);
    assert!(kinds.contains(&"newly_failing") && kinds.contains(&"new_key"));
}

/// Summary: the run, and the status counts the database gives.
async fn check_summary(store: &Store, run: i64, rows: &[Vec<Data>]) {
    let value = |label: &str| {
        rows.iter()
            .find(|r| r.first().is_some_and(|c| text(c) == label))
            .unwrap_or_else(|| panic!("no {label:?} row"))[1]
            .clone()
    };
    assert_eq!(text(&value("run id")), run.to_string());
    assert_eq!(text(&value("state")), "completed");
    assert_eq!(text(&value("exit code")), "2");
    datetime(&value("started (KST)"));
    let counts = store.status_counts(run).await.expect("counts");
    assert_eq!(value("gone"), Data::Float(counts.gone as f64));
    assert_eq!(value("failed"), Data::Float(counts.failed as f64));
    assert_eq!(value("total"), Data::Float(counts.total() as f64));
    assert_eq!(value("KB국민카드"), Data::Float(1.0));
    // The trend: both completed runs, oldest first, gone in the fourth column.
    let trend: Vec<&Vec<Data>> = rows
        .iter()
        .filter(|r| {
            r.first().is_some_and(|c| {
                text(c)
                    .strip_prefix("run ")
                    .is_some_and(|n| n.parse::<i64>().is_ok())
            })
        })
        .collect();
    assert_eq!(trend.len(), 2, "{trend:?}");
    assert_eq!(text(&trend[1][0]), format!("run {run}"));
    datetime(&trend[1][1]);
    assert_eq!(trend[1][3], Data::Float(counts.gone as f64));
}

/// Both charts are in the Summary sheet's drawing.
fn check_charts(path: &Path) {
    let mut zip = zip::ZipArchive::new(std::fs::File::open(path).expect("open")).expect("zip");
    let mut read = |name: &str| {
        let mut s = String::new();
        zip.by_name(name)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .read_to_string(&mut s)
            .expect("read part");
        s
    };
    assert!(read("xl/charts/chart1.xml").contains("<c:pieChart>"));
    assert!(read("xl/charts/chart2.xml").contains("<c:barChart>"));
    let drawing = read("xl/drawings/_rels/drawing1.xml.rels");
    assert!(drawing.contains("../charts/chart1.xml") && drawing.contains("../charts/chart2.xml"));
    assert!(read("xl/worksheets/_rels/sheet1.xml.rels").contains("../drawings/drawing1.xml"));
    let workbook = read("xl/workbook.xml");
    assert!(
        workbook.contains("name=\"Summary\" sheetId=\"1\""),
        "{workbook}"
    );
}

/// With three data rows per worksheet, the tables continue on `(2)`, `(3)` sheets.
async fn check_spill(store: &Store, run: i64, dir: &Path) {
    let record = store.run(run).await.expect("run").expect("exists");
    let previous = store.completed_run_before(run).await.expect("previous");
    let path = dir.join("small.xlsx");
    let file = std::fs::File::create(&path).expect("create");
    let options = XlsxOptions {
        sheet_rows: 4,
        page: 2,
    };
    let stats = write_workbook(store, &record, previous.as_ref(), file, options)
        .await
        .expect("workbook");
    let mut book: Xlsx<_> = open_workbook(&path).expect("workbook");
    let names = book.sheet_names();
    assert_eq!(
        names,
        [
            "Summary",
            "Action",
            "Action (2)",
            "Keys",
            "Keys (2)",
            "Keys (3)",
            "Changes",
            "Changes (2)"
        ]
    );
    let mut keys = 0;
    for name in ["Keys", "Keys (2)", "Keys (3)"] {
        let rows = sheet(&mut book, name);
        assert_eq!(rows[0].iter().map(text).collect::<Vec<_>>(), REPORT_HEADER);
        assert!(rows.len() <= 4, "{name}: {}", rows.len());
        keys += rows.len() - 1;
    }
    assert_eq!(keys as u64, stats.keys);
    assert_eq!(stats.keys, 7);
}

/// The `report` command: xlsx by extension or by `--format` (to a pipe too), and
/// `--status` refused for a workbook.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_command_writes_workbooks() {
    // Unopened: the binary's `run` makes the database.
    let world = Scenario::new()
        .sim(SimConfig::default())
        .keys(12, "workbook-cmd")
        .start_unopened()
        .await;
    let (sim, db) = (&world.sim, &world.db);
    let out = bin_output(sim, db, &["run", "--rate", "0", "--csv", world.csv_arg()]).await;
    assert_exit(&out, 0);
    let path = world.dir.path().join("r.XLSX");
    let out = bin_output(sim, db, &["report", "--output", path.to_str().unwrap()]).await;
    assert_exit(&out, 0);
    let mut book: Xlsx<_> = open_workbook(&path).expect("workbook");
    assert_eq!(sheet(&mut book, "Keys").len(), 13);
    let out = bin_output(sim, db, &["report", "--format", "xlsx", "--output", "-"]).await;
    assert_exit(&out, 0);
    assert!(out.stdout.starts_with(b"PK\x03\x04"), "a zip on stdout");
    let out = bin_output(
        sim,
        db,
        &[
            "report",
            "--status",
            "gone",
            "--output",
            path.to_str().unwrap(),
        ],
    )
    .await;
    assert_exit(&out, 3);
    assert!(stderr_of(&out).contains("--status"), "{}", stderr_of(&out));
    world.close().await;
}

/// The workbook of a 1,000,000-key run (`WORKBOOK_ROWS` to change it): two completed runs
/// are written straight into a SQLite file with the store's writer (no lookups), then the
/// binary's `report --output x.xlsx` runs under `/usr/bin/time`, whose time and peak RSS
/// are printed. Run with `cargo test --test it -- --ignored --nocapture million_row`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: builds a 2,000,000-row database"]
async fn million_row_workbook() {
    let rows: usize = std::env::var("WORKBOOK_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("big.db").display());
    let store = Store::open(&url).await.expect("store");
    let started = Instant::now();
    for run in 0..2 {
        fill_run(&store, rows, run).await;
    }
    store.close().await;
    eprintln!("{rows} rows x 2 runs written in {:.1?}", started.elapsed());
    let book = dir.path().join("big.xlsx");
    let out = std::process::Command::new("/usr/bin/time")
        .args(["-f", "%e s %M KB", helpers::BIN, "report", "--output"])
        .arg(&book)
        .env("DATABASE_URL", &url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("/usr/bin/time runs");
    assert!(out.status.success(), "{}", stderr_of(&out));
    let stderr = stderr_of(&out);
    let size = std::fs::metadata(&book).expect("workbook").len();
    eprintln!("workbook of {rows} keys: {} ({size} bytes)", stderr.trim());
    let book: Xlsx<_> = open_workbook(&book).expect("a workbook");
    assert_eq!(book.sheet_names()[..3], ["Summary", "Action", "Keys"]);
}

/// One completed run of `rows` keys: mostly active cards, some gone, some failed; in the
/// second run (`run` = 1) part of the first run's active keys are gone.
async fn fill_run(store: &Store, rows: usize, run: usize) {
    use payple_reconcile::domain::{KeyDetails, KeyStatus, LookupOutcome, PayType};
    use payple_reconcile::store::{CheckRow, NewRun};
    let new = NewRun {
        run_key: None,
        source: "csv".to_owned(),
        source_spec: payple_reconcile::source::SourceSpec::Query {
            sql: "SELECT 1".to_owned(),
        },
        options: "{}".to_owned(),
        shard_count: 1,
    };
    let id = store.create_run(&new).await.expect("run");
    let now = chrono::Utc::now();
    let stored_now = payple_reconcile::store::time::time_text(now);
    let batch: Vec<usize> = (0..rows).collect();
    for chunk in batch.chunks(5000) {
        let checks: Vec<CheckRow> = chunk
            .iter()
            .map(|i| {
                let status = match (i % 50, run) {
                    (0 | 1, _) => KeyStatus::Gone,
                    (2, 1) => KeyStatus::Gone,
                    (3, _) => KeyStatus::Failed,
                    _ => KeyStatus::Active,
                };
                let details = KeyDetails {
                    pay_type: (status == KeyStatus::Active).then_some(PayType::Card),
                    card_name: Some(["신한카드", "KB국민카드", "BC카드"][i % 3].to_owned()),
                    card_mask: Some(format!("4518-****-****-{:04}", i % 10_000)),
                    bank_account_type: Some("개인".to_owned()),
                    ..KeyDetails::default()
                };
                CheckRow {
                    payer_id: format!("BigKey{i:012}abcdefghijkl"),
                    customer_ref: Some(format!("고객-{:07}", (i * 7919) % rows)),
                    outcome: LookupOutcome {
                        status,
                        details,
                        result_code: Some("0000".to_owned()),
                        result_msg: Some("회원조회 성공".to_owned()),
                        attempts: 1,
                    },
                    checked_at: now,
                }
            })
            .collect();
        store.insert_checks(id, &checks).await.expect("insert");
    }
    let counts = store.status_counts(id).await.expect("counts");
    let sql = format!(
        "UPDATE reconcile_runs SET state = 'completed', finished_at = '{stored_now}', exit_code = 2, \
         keys_total = {rows}, active_count = {}, gone_count = {}, failed_count = {} WHERE id = {id}",
        counts.active, counts.gone, counts.failed
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(store.pool())
        .await
        .expect("complete the run");
}

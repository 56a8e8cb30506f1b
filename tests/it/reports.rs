//! Finance reports, run-to-run changes, summaries and metrics.
//!
//! One scenario, run on SQLite, PostgreSQL and MySQL/MariaDB: two real `run`s of the binary
//! against two simulators whose key files differ (a key goes, one comes back, a card and
//! an account change, one starts failing, one key leaves the source and one joins it), the
//! second with `--report --excel --metrics-file`; then `report`, `changes` and `summary`
//! are run as the binary and checked against the database. The keys mix upper and lower
//! case so that a case-insensitive collation (MariaDB's default) orders them differently
//! from Rust, which the run-to-run merge must survive.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Output;

use payple_reconcile::report::changes::{ChangeKind, ChangeStream};
use payple_reconcile::report::csv::{REPORT_HEADER, UTF8_BOM};
use payple_reconcile::report::export::export_run;
use payple_reconcile::simulator::{SimConfig, SimHandle};
use payple_reconcile::store::{RunState, StatusCounts, Store};
use serde_json::json;

use crate::helpers::{
    self, Scenario, TestDb, assert_exit, bin_output, sim_from_file, stderr_of, write_csv_rows,
    write_key_file,
};

const GONE: &str = "GoneKey000000000000001";
const BACK: &str = "backKey000000000000002";
const CARD: &str = "CardKey000000000000003";
const ACCT: &str = "acctKey000000000000004";
const FAIL: &str = "FailKey000000000000005";
const MISS: &str = "missKey000000000000006";
const NEW: &str = "NewKey0000000000000007";
const FORMULA: &str = "ZetaKey000000000000008";
const KOREAN: &str = "alphaKey00000000000009";

const FORMULA_REF: &str = "=HYPERLINK(\"http://evil.example\",\"click\")";
const KOREAN_REF: &str = "홍길동상사";

/// The changes the scenario must show, by customer reference.
fn expected_changes() -> BTreeMap<String, &'static str> {
    [
        ("R-gone", "newly_gone"),
        ("R-back", "recovered"),
        ("R-card", "card_changed"),
        ("R-acct", "account_changed"),
        ("R-fail", "newly_failing"),
        ("R-miss", "missing_key"),
        ("R-new", "new_key"),
    ]
    .into_iter()
    .map(|(r, k)| (r.to_owned(), k))
    .collect()
}

fn stdout_of(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("stdout is UTF-8")
}

/// A CSV file's rows as header → value maps (a BOM, if any, stripped first).
fn csv_rows(bytes: &[u8]) -> (Vec<String>, Vec<BTreeMap<String, String>>) {
    let bytes = bytes.strip_prefix(UTF8_BOM).unwrap_or(bytes);
    let mut reader = csv::Reader::from_reader(bytes);
    let header: Vec<String> = reader
        .headers()
        .expect("header")
        .iter()
        .map(str::to_owned)
        .collect();
    let rows = reader
        .records()
        .map(|r| {
            let r = r.expect("CSV row");
            header
                .iter()
                .cloned()
                .zip(r.iter().map(str::to_owned))
                .collect()
        })
        .collect();
    (header, rows)
}

fn by_ref(rows: &[BTreeMap<String, String>]) -> BTreeMap<String, BTreeMap<String, String>> {
    rows.iter()
        .map(|r| (r["customer_ref"].clone(), r.clone()))
        .collect()
}

/// Each non-comment line is `name{labels} value` (or `name value`) with a numeric value.
fn prometheus_samples(text: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(comment) = line.strip_prefix("# ") {
            assert!(
                comment.starts_with("HELP ") || comment.starts_with("TYPE "),
                "{line}"
            );
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        let name = series.split('{').next().unwrap_or_default();
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "{line:?}"
        );
        if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
            assert!(labels.starts_with('{') && labels.ends_with('}'), "{line:?}");
        }
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "no TYPE for {name}"
        );
        let value: f64 = value.parse().unwrap_or_else(|e| panic!("{line:?}: {e}"));
        samples.insert(series.to_owned(), value);
    }
    samples
}

async fn completed_runs(store: &Store) -> Vec<i64> {
    let mut ids: Vec<i64> = store
        .latest_runs(Some(RunState::Completed), 10)
        .await
        .expect("list runs")
        .iter()
        .map(|r| r.id)
        .collect();
    ids.sort_unstable();
    ids
}

/// The scenario's key files (`keys1.jsonl`, `keys2.jsonl`) and key CSVs (`keys1.csv`,
/// `keys2.csv`) in `d`; returns the 30 bulk ids both CSVs hold.
fn scenario_files(d: &Path) -> Vec<String> {
    let bulk = helpers::payer_ids(30, "reports");
    let card = |id: &str, name: &str, mask: &str| json!({"payer_id": id, "kind": "card", "card_name": name, "card_mask": mask});
    let acct = |id: &str, mask: &str| json!({"payer_id": id, "kind": "transfer", "bank_name": "KB국민은행", "bank_mask": mask});
    write_key_file(
        d,
        "keys1.jsonl",
        &[
            card(GONE, "BC카드", "5365-****-****-1111"),
            json!({"payer_id": BACK, "kind": "gone"}),
            card(CARD, "신한카드", "4518-****-****-0001"),
            acct(ACCT, "123-********-456"),
            card(FAIL, "현대카드", "5107-****-****-2222"),
            card(FORMULA, "삼성카드", "9410-****-****-3333"),
            card(KOREAN, "KB국민카드", "4048-****-****-4444"),
        ],
    );
    write_key_file(
        d,
        "keys2.jsonl",
        &[
            json!({"payer_id": GONE, "kind": "gone"}),
            card(BACK, "롯데카드", "9490-****-****-5555"),
            card(CARD, "신한카드", "4518-****-****-0002"),
            acct(ACCT, "123-********-789"),
            json!({"payer_id": FAIL, "kind": "error"}),
            card(FORMULA, "삼성카드", "9410-****-****-3333"),
            card(KOREAN, "KB국민카드", "4048-****-****-4444"),
        ],
    );
    let common: Vec<(&str, &str)> = vec![
        (GONE, "R-gone"),
        (BACK, "R-back"),
        (CARD, "R-card"),
        (ACCT, "R-acct"),
        (FAIL, "R-fail"),
        (FORMULA, FORMULA_REF),
        (KOREAN, KOREAN_REF),
        ("", "REJ-1"),
    ];
    let bulk_rows: Vec<(&str, &str)> = bulk.iter().map(|id| (id.as_str(), "")).collect();
    let mut rows1 = common.clone();
    rows1.push((MISS, "R-miss"));
    rows1.extend(bulk_rows.iter().copied());
    let mut rows2 = bulk_rows.clone();
    rows2.push((NEW, "R-new"));
    rows2.extend(common.iter().copied());
    write_csv_rows(d, "keys1.csv", &rows1);
    write_csv_rows(d, "keys2.csv", &rows2);
    bulk
}

/// What the checks after the two runs share.
struct Ctx<'a> {
    d: &'a Path,
    db: &'a TestDb,
    /// The second run's simulator.
    sim: &'a SimHandle,
    store: &'a Store,
    r1: i64,
    r2: i64,
    /// The second run's counts.
    counts: StatusCounts,
}

impl Ctx<'_> {
    async fn bin(&self, args: &[&str]) -> Output {
        bin_output(self.sim, self.db, args).await
    }
}

/// Run 1, after which `changes` has only one run to go on.
async fn first_run(d: &Path, db: &TestDb) {
    let sim1 = sim_from_file(&d.join("keys1.jsonl"), 11).await;
    let csv1_s = d.join("keys1.csv").display().to_string();
    let out = bin_output(&sim1, db, &["run", "--rate", "0", "--csv", &csv1_s]).await;
    assert_exit(&out, 2); // a rejected input row
    let out = bin_output(&sim1, db, &["changes"]).await;
    assert_exit(&out, 3);
    assert!(
        stderr_of(&out).contains("two completed runs"),
        "{}",
        stderr_of(&out)
    );
    sim1.shutdown().await;
}

/// Run 2 writes the report and the metrics.
async fn second_run(d: &Path, db: &TestDb, sim2: &SimHandle) {
    let (csv2_s, report_s, metrics_s) = (
        d.join("keys2.csv").display().to_string(),
        d.join("report.csv").display().to_string(),
        d.join("metrics.prom").display().to_string(),
    );
    let out = bin_output(
        sim2,
        db,
        &[
            "run",
            "--rate",
            "0",
            "--csv",
            &csv2_s,
            "--report",
            &report_s,
            "--excel",
            "--metrics-file",
            &metrics_s,
        ],
    )
    .await;
    assert_exit(&out, 2);
}

/// The Excel report of run 2: BOM, header, every row, Korean intact, formulas defused.
fn assert_excel_report(c: &Ctx<'_>, bulk: &[String]) {
    let report = c.d.join("report.csv");
    let bytes = std::fs::read(&report).expect("report written");
    assert!(bytes.starts_with(b"\xEF\xBB\xBF"), "{:?}", &bytes[..8]);
    let text = String::from_utf8(bytes.clone()).expect("UTF-8 report");
    let (header, rows) = csv_rows(&bytes);
    assert_eq!(header, REPORT_HEADER.map(str::to_owned).to_vec());
    assert_eq!(rows.len() as i64, c.counts.total());
    let refs = by_ref(&rows);
    let korean = &refs[KOREAN_REF];
    assert_eq!(korean["card_name"], "KB국민카드");
    assert_eq!(korean["payer_id_masked"], "alph****0009");
    assert!(!korean["account_type"].is_empty());
    let formula = &refs[&format!("'{FORMULA_REF}")];
    assert_eq!(formula["status"], "active");
    assert!(!refs.contains_key(FORMULA_REF), "unescaped formula cell");
    let rejected = &refs["REJ-1"];
    assert_eq!(rejected["status"], "rejected");
    assert!(rejected["payer_id_masked"].starts_with('#'), "{rejected:?}");
    assert_eq!(refs["R-fail"]["result_code"], "CPAY9999");
    for id in bulk
        .iter()
        .map(String::as_str)
        .chain([GONE, KOREAN, FORMULA])
    {
        assert!(!text.contains(id), "full payer id {id} in the report");
    }
    for row in &rows {
        let kst =
            chrono::NaiveDateTime::parse_from_str(&row["checked_at_kst"], "%Y-%m-%d %H:%M:%S")
                .expect("KST time");
        let utc =
            chrono::NaiveDateTime::parse_from_str(&row["checked_at_utc"], "%Y-%m-%d %H:%M:%S")
                .expect("UTC time");
        assert_eq!(kst - utc, chrono::Duration::hours(9), "{row:?}");
    }
}

/// The metrics file of run 2.
fn assert_metrics(c: &Ctx<'_>) {
    let metrics = c.d.join("metrics.prom");
    let prom = std::fs::read_to_string(&metrics).expect("metrics written");
    let samples = prometheus_samples(&prom);
    assert_eq!(
        samples["payple_reconcile_keys{status=\"active\"}"],
        c.counts.active as f64
    );
    assert_eq!(samples["payple_reconcile_keys{status=\"rejected\"}"], 1.0);
    assert_eq!(samples["payple_reconcile_run_exit_code"], 2.0);
    assert!(samples["payple_reconcile_auth_calls"] >= 1.0);
    assert!(samples["payple_reconcile_lookups"] >= 38.0);
    assert!(samples["payple_reconcile_run_duration_seconds"] > 0.0);
    // Run 2 has a failed key (R-fail): not a success, and there was none before.
    assert_eq!(
        samples["payple_reconcile_last_success_timestamp_seconds"],
        0.0
    );
}

/// `report`: a status filter, another run to stdout, and paging.
async fn report_command(c: &Ctx<'_>) {
    let filtered = c.d.join("gone-failed.csv");
    let filtered_s = filtered.display().to_string();
    let out = c
        .bin(&["report", "--status", "gone,FAILED", "--output", &filtered_s])
        .await;
    assert_exit(&out, 0);
    let bytes = std::fs::read(&filtered).expect("filtered report");
    assert!(
        bytes.starts_with(b"customer_ref,"),
        "no BOM without --excel"
    );
    let (_, rows) = csv_rows(&bytes);
    assert_eq!(rows.len() as i64, c.counts.gone + c.counts.failed);
    assert!(
        rows.iter()
            .all(|r| r["status"] == "gone" || r["status"] == "failed")
    );
    let refs = by_ref(&rows);
    assert_eq!(refs["R-gone"]["status"], "gone");
    assert_eq!(refs["R-fail"]["status"], "failed");

    let r1_s = c.r1.to_string();
    let out = c.bin(&["report", "--run", &r1_s, "--output", "-"]).await;
    assert_exit(&out, 0);
    let (_, rows) = csv_rows(&out.stdout);
    let refs = by_ref(&rows);
    assert!(refs.contains_key("R-miss"), "{refs:?}");
    assert_eq!(refs["R-gone"]["card_name"], "BC카드");

    // Paging does not change the report.
    let mut whole = Vec::new();
    let mut paged = Vec::new();
    export_run(c.store, c.r2, &[], &mut whole, false, 5000)
        .await
        .expect("export");
    export_run(c.store, c.r2, &[], &mut paged, false, 2)
        .await
        .expect("export");
    assert_eq!(whole, paged);
}

/// `report` refusals: an unknown status, a run that does not exist, a run that is no id.
async fn report_refusals(c: &Ctx<'_>) {
    let nowhere = c.d.join("nowhere.csv");
    let nowhere_s = nowhere.display().to_string();
    let out = c
        .bin(&[
            "report",
            "--status",
            "active,expired",
            "--output",
            &nowhere_s,
        ])
        .await;
    assert_exit(&out, 3);
    assert!(stderr_of(&out).contains("expired"), "{}", stderr_of(&out));
    let out = c
        .bin(&["report", "--run", "999999", "--output", &nowhere_s])
        .await;
    assert_exit(&out, 3);
    assert!(stderr_of(&out).contains("999999"), "{}", stderr_of(&out));
    let out = c
        .bin(&["report", "--run", "yesterday", "--output", &nowhere_s])
        .await;
    assert_exit(&out, 3);
    assert!(!nowhere.exists());
}

/// `changes` as a table, as CSV, with explicit runs and with a run that does not exist.
async fn changes_command(c: &Ctx<'_>) {
    let r1 = c.r1;
    let out = c.bin(&["changes"]).await;
    assert_exit(&out, 0);
    let table = stdout_of(&out);
    assert!(
        table.starts_with(&format!("Changes from run {r1} (completed")),
        "{table}"
    );
    for (customer_ref, kind) in expected_changes() {
        assert!(
            table
                .lines()
                .any(|l| l.starts_with(kind) && l.contains(&customer_ref)),
            "{kind} {customer_ref} missing in\n{table}"
        );
    }
    assert!(table.trim_end().ends_with("1 missing_key"), "{table}");

    let changes_csv = c.d.join("changes.csv");
    let changes_s = changes_csv.display().to_string();
    let out = c.bin(&["changes", "--output", &changes_s]).await;
    assert_exit(&out, 0);
    let bytes = std::fs::read(&changes_csv).expect("changes CSV");
    let (header, rows) = csv_rows(&bytes);
    assert_eq!(
        header,
        [
            "change",
            "customer_ref",
            "payer_id_masked",
            "before",
            "after",
            "detail"
        ]
    );
    let got: BTreeMap<String, &str> = rows
        .iter()
        .map(|r| (r["customer_ref"].clone(), r["change"].as_str()))
        .collect();
    assert_eq!(got, expected_changes(), "{rows:#?}");
    let refs = by_ref(&rows);
    assert_eq!(
        refs["R-card"]["detail"],
        "신한카드 4518-****-****-0001 → 신한카드 4518-****-****-0002"
    );
    assert_eq!(refs["R-gone"]["before"], "active");
    assert_eq!(refs["R-gone"]["after"], "gone");
    assert_eq!(refs["R-gone"]["payer_id_masked"], "Gone****0001");
    assert!(refs["R-gone"]["detail"].starts_with("SPAY0005"));
    assert_eq!(refs["R-back"]["detail"], "롯데카드 9490-****-****-5555");
    assert_eq!(refs["R-miss"]["after"], "");

    let (since_s, run_s) = (c.r1.to_string(), c.r2.to_string());
    let out = c
        .bin(&[
            "changes", "--since", &since_s, "--run", &run_s, "--output", "-",
        ])
        .await;
    assert_exit(&out, 0);
    assert_eq!(out.stdout, bytes, "explicit runs give the same CSV");
    let out = c.bin(&["changes", "--run", &run_s, "--output", "-"]).await;
    assert_exit(&out, 0);
    assert_eq!(out.stdout, bytes, "--since defaults to the run before");
    let out = c
        .bin(&["changes", "--since", &run_s, "--run", "999999"])
        .await;
    assert_exit(&out, 3);
}

/// The merge gives the same answer whatever the window size, and reversing the runs swaps
/// new and missing keys.
async fn changes_merge(store: &Store, r1: i64, r2: i64) {
    for page in [1, 2, 3, 7, 5000] {
        let mut stream = ChangeStream::new(store, r1, r2, page);
        let mut got = BTreeMap::new();
        while let Some(window) = stream.next_window().await.expect("window") {
            for c in window {
                let customer_ref = c.customer_ref.clone().unwrap_or_default();
                assert!(
                    got.insert(customer_ref, c.kind.as_str()).is_none(),
                    "page {page}: a key twice"
                );
            }
        }
        assert_eq!(got, expected_changes(), "page {page}");
    }
    let mut reverse = ChangeStream::new(store, r2, r1, 4);
    let mut kinds = BTreeSet::new();
    while let Some(window) = reverse.next_window().await.expect("window") {
        kinds.extend(window.into_iter().map(|c| (c.customer_ref, c.kind)));
    }
    assert!(kinds.contains(&(Some("R-new".to_owned()), ChangeKind::MissingKey)));
    assert!(kinds.contains(&(Some("R-miss".to_owned()), ChangeKind::NewKey)));
}

/// `summary` of the latest run, of run 1, and of a run that does not exist.
async fn summary_command(c: &Ctx<'_>) {
    let r2 = c.r2;
    let r1_s = c.r1.to_string();
    let out = c.bin(&["summary"]).await;
    assert_exit(&out, 0);
    let text = stdout_of(&out);
    assert!(text.starts_with(&format!("run {r2}: completed")), "{text}");
    let count_of = |label: &str| -> i64 {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(label))
            .unwrap_or_else(|| panic!("no {label} line in\n{text}"));
        line.split_whitespace()
            .nth(1)
            .expect("count")
            .parse()
            .expect("number")
    };
    assert_eq!(count_of("active"), c.counts.active);
    assert_eq!(count_of("gone"), c.counts.gone);
    assert_eq!(count_of("failed"), c.counts.failed);
    assert_eq!(count_of("rejected"), 1);
    assert_eq!(count_of("total"), c.counts.total());
    assert!(count_of("KB국민카드") >= 1, "{text}");
    assert!(count_of("KB국민은행") >= 1, "{text}");
    let out = c.bin(&["summary", "--run", &r1_s]).await;
    assert_exit(&out, 0);
    assert!(stdout_of(&out).contains("BC카드"));
    let out = c.bin(&["summary", "--run", "999999"]).await;
    assert_exit(&out, 3);
}

/// The whole scenario on one database.
async fn scenario(db: TestDb) {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let bulk = scenario_files(d);
    let store = db.store().await;
    first_run(d, &db).await;
    let sim2 = sim_from_file(&d.join("keys2.jsonl"), 11).await;
    second_run(d, &db, &sim2).await;
    let runs = completed_runs(&store).await;
    assert_eq!(runs.len(), 2, "{runs:?}");
    let (r1, r2) = (runs[0], runs[1]);
    let counts = store.status_counts(r2).await.expect("counts");
    assert_eq!(counts.total(), 30 + 1 + 8);
    let c = Ctx {
        d,
        db: &db,
        sim: &sim2,
        store: &store,
        r1,
        r2,
        counts,
    };
    assert_excel_report(&c, &bulk);
    assert_metrics(&c);
    report_command(&c).await;
    report_refusals(&c).await;
    changes_command(&c).await;
    changes_merge(&store, r1, r2).await;
    summary_command(&c).await;
    store.close().await;
    sim2.shutdown().await;
}
helpers::per_database!(
    #[tokio::test]
    scenario:
        Sqlite => reports_on_sqlite,
        Postgres => reports_on_postgres,
        MySql => reports_on_mysql,
);

/// Commands on a database without runs, or without a database at all, exit 3 and say why.
#[tokio::test]
async fn no_runs_and_no_database() {
    // Unopened: first no database at all.
    let world = Scenario::new()
        .sim(SimConfig::default())
        .start_unopened()
        .await;
    let (sim, db) = (&world.sim, &world.db);
    let out = bin_output(sim, db, &["summary"]).await;
    assert_exit(&out, 3);
    assert!(
        stderr_of(&out).contains("does not exist"),
        "{}",
        stderr_of(&out)
    );
    let file = db.url.trim_start_matches("sqlite://").to_owned();
    assert!(
        !Path::new(&file).exists(),
        "a report command created the database"
    );

    db.store().await.close().await;
    let target = world.dir.path().join("r.csv");
    let target_s = target.display().to_string();
    let out = bin_output(sim, db, &["report", "--output", &target_s]).await;
    assert_exit(&out, 3);
    assert!(stderr_of(&out).contains("no runs"), "{}", stderr_of(&out));
    assert!(!target.exists());
    let out = bin_output(sim, db, &["changes"]).await;
    assert_exit(&out, 3);
    world.close().await;
}

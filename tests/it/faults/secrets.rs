//! Secrets: no custKey, token or full payer id in any output or file, through retries and
//! token renewals.

use std::path::Path;
use std::time::Duration;

use payple_reconcile::domain::stable_hash;
use payple_reconcile::simulator::{Faults, KeyBook, Partner, SimConfig, SimHandle};
use serde_json::{Value, json};

use crate::helpers::{self, assert_exit, output_of, stderr_of, summary_of};

const SECRET_CUST_KEY: &str = "ck-FAULTS-Zq81-distinctive-custKey-7Xp";

/// Asserts that `bytes` (named `what`) holds no custKey, no token-shaped string and, unless
/// it is the results database, no full payer id.
fn assert_clean(what: &str, bytes: &[u8], ids: &[String], database: bool) {
    let text = String::from_utf8_lossy(bytes);
    assert!(!text.contains(SECRET_CUST_KEY), "{what}: the custKey shows");
    assert!(
        !text.contains(payple_reconcile::simulator::TEST_CUST_KEY),
        "{what}: the test custKey shows"
    );
    // At least 32 long: the payer ids of this test have no such run (they are `pk_` and
    // three groups of 8 hex digits).
    let shaped = helpers::token_shaped(&text, 32);
    assert!(shaped.is_empty(), "{what}: token-shaped strings {shaped:?}");
    if !database {
        for id in ids {
            assert!(!text.contains(id.as_str()), "{what}: full payer id {id}");
        }
    }
}

/// Thirty payer ids with no run of 32 letters or digits (see [`assert_clean`]).
fn secret_ids() -> Vec<String> {
    (0..30u64)
        .map(|i| {
            let h = stable_hash(format!("secret-{i}").as_bytes());
            format!(
                "pk_{:08x}_{:08x}_{:08x}",
                h >> 32,
                h & 0xffff_ffff,
                i * 7919
            )
        })
        .collect()
}

/// A simulator for a distinctive partner, with 1 s tokens, an unknown error code, a
/// mismatching echo, a gone key, and faults on top.
async fn secret_sim(dir: &Path, ids: &[String]) -> SimHandle {
    let book_path = dir.join("keys.jsonl");
    let lines = [
        json!({"payer_id": ids[0], "kind": "error", "code": "ZZZZ9999", "msg": "unknown"}),
        json!({"payer_id": ids[1], "kind": "mismatch"}),
        json!({"payer_id": ids[2], "kind": "gone"}),
    ];
    std::fs::write(
        &book_path,
        lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .expect("key file");
    helpers::spawn_sim(SimConfig {
        partners: vec![Partner {
            cst_id: "shop_faults".to_owned(),
            cust_key: SECRET_CUST_KEY.to_owned(),
            referer: "https://shop.example.com".to_owned(),
        }],
        token_ttl: Duration::from_secs(1),
        keys: KeyBook::from_file(&book_path).expect("key file"),
        faults: Faults {
            fail_first: 1,
            error_rate: 0.1,
            drop_rate: 0.05,
            truncate_rate: 0.05,
            ..Faults::none()
        },
        seed: 77,
        ..SimConfig::default()
    })
    .await
}

/// Every file in `out_dir` is clean (the results database may hold the payer ids); at
/// least three were written.
fn assert_files_clean(out_dir: &Path, ids: &[String]) {
    let mut files = 0;
    for entry in std::fs::read_dir(out_dir).expect("out dir") {
        let path = entry.expect("entry").path();
        let bytes = std::fs::read(&path).expect("read output file");
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert_clean(&name, &bytes, ids, name.starts_with("results.db"));
        files += 1;
    }
    assert!(files >= 3, "report, metrics and database were written");
}

/// A run at `--log-format json` with `RUST_LOG=trace`, `--report` and `--metrics-file`, a
/// distinctive custKey, through retries (a 500 for every key's first attempt, random 500s,
/// drops and truncations), token renewals (1 s tokens), an unknown error code and a
/// mismatching echo: stdout, stderr and every file written hold neither the custKey, nor
/// any token-shaped string, nor any full payer id (the results database holds the ids by
/// design, but no secret either).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_any_output_or_file_through_retries_and_renewals() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).expect("out dir");
    let ids = secret_ids();
    let sim = secret_sim(dir.path(), &ids).await;
    let csv = helpers::write_csv(dir.path(), "keys.csv", &ids);
    let db_path = out_dir.join("results.db");
    let db_url = format!("sqlite://{}", db_path.display());
    let report = out_dir.join("report.csv");
    let metrics = out_dir.join("metrics.prom");
    let mut cmd = helpers::command(&sim.url());
    cmd.env("PAYPLE_CST_ID", "shop_faults")
        .env("PAYPLE_CUST_KEY", SECRET_CUST_KEY)
        .env("PAYPLE_REFERER", "https://shop.example.com")
        .env("RUST_LOG", "trace")
        .args(["--log-format", "json", "run", "--database-url", &db_url])
        .args([
            "--retry-base-ms",
            "10",
            "--rate",
            "10",
            "--concurrency",
            "4",
        ])
        .args(["--csv", csv.to_str().unwrap()])
        .args(["--report", report.to_str().unwrap()])
        .args(["--metrics-file", metrics.to_str().unwrap()]);
    let out = output_of(cmd).await;
    assert_exit(&out, 2);
    let stats = sim.stats();
    sim.shutdown().await;
    eprintln!(
        "secrets: {stats:?}; stderr {} bytes, files {:?}",
        out.stderr.len(),
        std::fs::read_dir(&out_dir)
            .expect("out dir")
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect::<Vec<_>>()
    );
    // The paths that could leak did run.
    assert!(stats.auth_calls >= 3, "tokens were renewed: {stats:?}");
    assert!(stats.expired_token_lookups >= 1, "{stats:?}");
    assert!(stats.injected_500 >= ids.len() as u64, "{stats:?}");
    assert!(out.stderr.len() > 10_000, "trace logs were written");
    let stderr = stderr_of(&out);
    for line in stderr.lines() {
        serde_json::from_str::<Value>(line)
            .unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {line:?}"));
    }
    summary_of(&out);

    assert_clean("stdout", &out.stdout, &ids, false);
    assert_clean("stderr", &out.stderr, &ids, false);
    assert_files_clean(&out_dir, &ids);
    let report_text = std::fs::read_to_string(&report).expect("report");
    assert_eq!(report_text.lines().count(), ids.len() + 1, "{report_text}");
}

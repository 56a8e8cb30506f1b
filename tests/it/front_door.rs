//! The front door: the README's first command on a merchant's machine, where the
//! merchant's own Payple credentials are exported.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::helpers::{self, assert_exit, output_of, stderr_of, summary_of};

/// Credentials of a real merchant: nothing the simulator knows beforehand.
const OWN_CST_ID: &str = "merchant-own-partner";
const OWN_CUST_KEY: &str = "merchant-own-cust-key-9f3b2c71e0";
const OWN_REFERER: &str = "https://shop.merchant.example";

/// `run --simulator --csv samples/payer_ids.csv` with `env` as the whole environment.
fn sample_run(db_url: &str, env: &[(&str, &str)]) -> Command {
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/payer_ids.csv");
    let mut cmd = Command::new(helpers::BIN);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", db_url)
        .envs(env.iter().copied())
        .args(["run", "--simulator", "--csv"])
        .arg(sample)
        .stdin(Stdio::null());
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_the_simulator_accepts_the_exported_credentials() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db_url = format!("sqlite://{}?mode=rwc", dir.path().join("r.db").display());
    let own = [
        ("PAYPLE_CST_ID", OWN_CST_ID),
        ("PAYPLE_CUST_KEY", OWN_CUST_KEY),
        ("PAYPLE_REFERER", OWN_REFERER),
    ];
    let out = output_of(sample_run(&db_url, &own)).await;
    assert_exit(&out, 0);
    let summary = summary_of(&out);
    assert_eq!(summary["keys"], 200, "{summary}");
    assert_eq!(summary["checked_now"], 200, "{summary}");
    assert_eq!(summary["failed"], 0, "{summary}");
    let stderr = stderr_of(&out);
    assert!(
        stderr.contains("built-in simulator accepts the configured partner"),
        "{stderr}"
    );
    assert!(
        !stderr.contains(OWN_CUST_KEY),
        "custKey in the logs: {stderr}"
    );
    assert!(
        !stderr.contains(OWN_CST_ID),
        "the partner id is shown masked: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_the_simulator_and_no_credentials_uses_the_test_partner() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db_url = format!("sqlite://{}?mode=rwc", dir.path().join("r.db").display());
    let out = output_of(sample_run(&db_url, &[])).await;
    assert_exit(&out, 0);
    assert_eq!(summary_of(&out)["keys"], 200);
    let stderr = stderr_of(&out);
    assert!(
        !stderr.contains(payple_reconcile::payple::TEST_CUST_KEY),
        "{stderr}"
    );
}

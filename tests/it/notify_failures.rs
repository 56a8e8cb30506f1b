//! Every way a run ends is told: a results or source database that refuses connections,
//! a missing source table, a refused configuration each send the notification with the
//! error text and no change counts; `notify` prints its JSON line. The webhook is a small
//! axum receiver on loopback, the binary the real one.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use serde_json::Value;

use crate::helpers::{self, Scenario, assert_exit, json_lines};

/// Records every message posted to it.
#[derive(Clone, Default)]
struct Hook {
    bodies: Arc<Mutex<Vec<Value>>>,
    url: String,
}

impl Hook {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let hook = Self {
            bodies: Arc::default(),
            url: format!("http://{addr}/hook/T0/B0/failures"),
        };
        let app = Router::new()
            .route("/hook/{*rest}", post(receive))
            .with_state(hook.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        hook
    }

    /// The one message received.
    fn only(&self) -> Value {
        let bodies = self.bodies.lock().expect("lock").clone();
        assert_eq!(bodies.len(), 1, "{bodies:?}");
        bodies[0].clone()
    }
}

async fn receive(State(h): State<Hook>, body: String) -> StatusCode {
    let value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    h.bodies.lock().expect("lock").push(value);
    StatusCode::OK
}

/// The message of a failed run: its error names `needle`, and it carries no changes.
fn assert_told_failure(message: &Value, exit: i64, needle: &str) {
    assert_eq!(message["state"], "failed", "{message}");
    assert_eq!(message["exit_code"], exit, "{message}");
    let error = message["error"].as_str().unwrap_or_default();
    assert!(error.contains(needle), "error {error:?} lacks {needle:?}");
    assert!(message["changes"].is_null(), "{message}");
    assert_eq!(message["newly_gone"], Value::Array(Vec::new()), "{message}");
}

/// A PostgreSQL URL on a port nothing listens on.
const REFUSING: &str = "postgres://postgres@127.0.0.1:1/payple";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_results_database_that_refuses_connections_is_told() {
    let hook = Hook::start().await;
    let set = Scenario::new().keys(5, "told-results-db").start().await;
    let mut cmd = set.command_on_url(REFUSING, &[]);
    cmd.args(["--notify", &hook.url, "--notify-format", "json"]);
    let out = helpers::output_of(cmd).await;
    assert_exit(&out, 3);
    assert_told_failure(&hook.only(), 3, "Connection refused");
    set.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_database_that_refuses_connections_is_told() {
    let hook = Hook::start().await;
    let set = Scenario::new()
        .args(&[
            "--source-database-url",
            REFUSING,
            "--source-table",
            "billing_keys",
            "--notify",
            &hook.url,
            "--notify-format",
            "json",
        ])
        .start()
        .await;
    let out = set.output(&[]).await;
    assert_exit(&out, 3);
    assert_told_failure(&hook.only(), 3, "source");
    set.close().await;
}

/// A completed night, then a night whose source table is missing: the message says the
/// run failed and why, and counts no key as missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_source_table_is_told_with_its_error_and_no_changes() {
    let hook = Hook::start().await;
    let set = Scenario::new().keys(5, "told-missing-table").start().await;
    assert_exit(&set.output(&[]).await, 0);
    let out = helpers::output_of({
        let mut cmd = set.bare_command(&[
            "--source-table",
            "no_such_table",
            "--notify",
            &hook.url,
            "--notify-format",
            "json",
        ]);
        cmd.env("RUST_LOG", "warn");
        cmd
    })
    .await;
    assert_exit(&out, 3);
    assert_told_failure(&hook.only(), 3, "no_such_table");
    set.close().await;
}

/// A configuration refused (`--concurrency 0`) with a valid webhook: told, exit 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_configuration_is_told() {
    let hook = Hook::start().await;
    let set = Scenario::new().keys(5, "told-config").start().await;
    let out = set
        .output(&[
            "--concurrency",
            "0",
            "--notify",
            &hook.url,
            "--notify-format",
            "json",
        ])
        .await;
    assert_exit(&out, 3);
    assert_told_failure(&hook.only(), 3, "--concurrency");
    assert_eq!(set.sim.stats().lookups, 0);
    set.close().await;
}

/// `notify` sends a run's message again and prints one JSON line saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_prints_its_json_line() {
    let hook = Hook::start().await;
    let set = Scenario::new().keys(3, "notify-line").start().await;
    assert_exit(&set.output(&[]).await, 0);
    let mut cmd = helpers::command(&set.sim.url());
    cmd.args([
        "notify",
        "--database-url",
        &set.db.url,
        "--notify",
        &hook.url,
    ]);
    let out = tokio::time::timeout(Duration::from_secs(60), helpers::output_of(cmd))
        .await
        .expect("notify ends");
    assert_exit(&out, 0);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["notified"], true);
    assert_eq!(lines[0]["webhooks"], 1);
    assert!(lines[0]["run_id"].as_i64().is_some(), "{}", lines[0]);
    hook.only();
    set.close().await;
}

/// The report's folder vanishes while the run looks keys up: the lookups are recorded,
/// the process ends with exit 1, and the notification carries that exit code and names
/// the report that could not be written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_that_fails_after_the_run_is_told_with_its_exit_code() {
    let hook = Hook::start().await;
    let set = Scenario::new().keys(20, "told-report").start().await;
    let folder = set.dir.path().join("reports");
    std::fs::create_dir(&folder).expect("report folder");
    let report = folder.join("night.csv");
    let child = set.spawn(&[
        "--rate",
        "10",
        "--report",
        report.to_str().expect("utf-8 path"),
        "--notify",
        &hook.url,
        "--notify-format",
        "json",
    ]);
    let started = std::time::Instant::now();
    while set.sim.stats().lookups < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no lookups yet"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::fs::remove_dir(&folder).expect("remove the report folder mid-run");
    let out = helpers::wait_output(child, Duration::from_secs(60)).await;
    assert_exit(&out, 1);
    assert_eq!(set.rows().await, 20, "every lookup is recorded");
    let message = hook.only();
    assert_eq!(message["exit_code"], 1, "{message}");
    let error = message["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("night.csv"),
        "error {error:?} does not name the report"
    );
    assert!(!report.exists());
}

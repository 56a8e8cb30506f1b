//! Run notifications, posted by the real binary to a webhook receiver on loopback (a
//! small axum server in the test): the Slack body and the json document, retries on 500,
//! the timeout on a receiver that hangs, the metrics, and that no secret (full payer id,
//! custKey, token, the webhook URL's path) reaches stdout, stderr or the message.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use payple_reconcile::simulator::{self, SimConfig, SimHandle};
use serde_json::{Value, json};

use crate::helpers::{
    self, TestDb, assert_exit, output_of, sim_from_file, stderr_of, write_key_file,
};

/// The secret part of the webhook URLs the tests use.
const HOOK_SECRET: &str = "T0SECRET/B0SECRET/XoXoWebhookToken42";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Accept,
    Fail,
    Hang,
}

#[derive(Clone)]
struct Receiver {
    mode: Mode,
    bodies: Arc<Mutex<Vec<String>>>,
    hits: Arc<AtomicU32>,
    url: String,
}

impl Receiver {
    async fn start(mode: Mode) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let receiver = Self {
            mode,
            bodies: Arc::default(),
            hits: Arc::default(),
            url: format!("http://{addr}/hook/{HOOK_SECRET}"),
        };
        let app = Router::new()
            .route("/hook/{*rest}", post(receive))
            .with_state(receiver.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        receiver
    }

    fn bodies(&self) -> Vec<Value> {
        let bodies = self.bodies.lock().expect("lock").clone();
        bodies
            .iter()
            .map(|b| serde_json::from_str(b).unwrap_or_else(|e| panic!("not JSON ({e}): {b}")))
            .collect()
    }

    fn raw(&self) -> String {
        self.bodies.lock().expect("lock").join("\n")
    }
}

async fn receive(State(r): State<Receiver>, body: String) -> StatusCode {
    r.hits.fetch_add(1, Ordering::SeqCst);
    match r.mode {
        Mode::Accept => {
            r.bodies.lock().expect("lock").push(body);
            StatusCode::OK
        }
        Mode::Fail => StatusCode::INTERNAL_SERVER_ERROR,
        Mode::Hang => {
            std::future::pending::<()>().await;
            StatusCode::OK
        }
    }
}

const GONE_KEY: &str = "NtKeyGone000000000000001";
const STAY_KEY: &str = "NtKeyStay000000000000002";
const NEW_KEY: &str = "NtKeyNew0000000000000003";

/// The binary, logging at info so the notification lines are in stderr.
async fn bin(sim: &SimHandle, db: &TestDb, args: &[&str]) -> Output {
    let mut cmd = helpers::command(&sim.url());
    cmd.args(args)
        .env("DATABASE_URL", &db.url)
        .env("RUST_LOG", "info")
        .current_dir(std::env::temp_dir());
    output_of(cmd).await
}

/// Run 1 (both keys active), then the simulator for run 2 (one key gone, one new key).
async fn first_run(db: &TestDb, dir: &Path) -> (SimHandle, PathBuf) {
    let card = |id: &str| json!({"payer_id": id, "kind": "card", "card_name": "신한카드", "card_mask": "4518-****-****-1234"});
    let keys1 = write_key_file(dir, "k1.jsonl", &[card(GONE_KEY), card(STAY_KEY)]);
    let keys2 = write_key_file(
        dir,
        "k2.jsonl",
        &[
            json!({"payer_id": GONE_KEY, "kind": "gone"}),
            card(STAY_KEY),
            card(NEW_KEY),
        ],
    );
    let csv1 = dir.join("k1.csv");
    std::fs::write(
        &csv1,
        format!("payer_id,customer_ref\n{GONE_KEY},홍길동상사\n{STAY_KEY},CUST-2\n"),
    )
    .expect("csv");
    let csv2 = dir.join("k2.csv");
    std::fs::write(
        &csv2,
        format!(
            "payer_id,customer_ref\n{GONE_KEY},홍길동상사\n{STAY_KEY},CUST-2\n{NEW_KEY},CUST-3\n"
        ),
    )
    .expect("csv");
    let sim1 = sim_from_file(&keys1, SimConfig::default().seed).await;
    let out = bin(
        &sim1,
        db,
        &["run", "--rate", "0", "--csv", csv1.to_str().unwrap()],
    )
    .await;
    assert_exit(&out, 0);
    sim1.shutdown().await;
    (sim_from_file(&keys2, SimConfig::default().seed).await, csv2)
}

/// Run 1 done ([`first_run`]) in a fresh SQLite file, and a receiver answering in `mode`:
/// the database, the folder of the key files, the simulator and key CSV for run 2, and the
/// receiver.
async fn second_night(mode: Mode) -> (TestDb, tempfile::TempDir, SimHandle, PathBuf, Receiver) {
    let db = TestDb::sqlite();
    let dir = tempfile::tempdir().expect("temp dir");
    let (sim2, csv2) = first_run(&db, dir.path()).await;
    let hook = Receiver::start(mode).await;
    (db, dir, sim2, csv2, hook)
}

/// Run 2, notifying `hook_url`: `run --rate 0 --csv CSV2 --notify URL EXTRA...` ([`bin`]).
async fn notify_run(
    sim2: &SimHandle,
    db: &TestDb,
    csv2: &Path,
    hook_url: &str,
    extra: &[&str],
) -> Output {
    let csv2 = csv2.to_str().unwrap();
    let mut args = vec!["run", "--rate", "0", "--csv", csv2, "--notify", hook_url];
    args.extend_from_slice(extra);
    bin(sim2, db, &args).await
}

/// Nothing secret in `text`: no full payer id, custKey, token-shaped string or webhook path.
fn assert_no_secrets(what: &str, text: &str) {
    for secret in [
        GONE_KEY,
        STAY_KEY,
        NEW_KEY,
        simulator::TEST_CUST_KEY,
        HOOK_SECRET,
        "XoXoWebhookToken42",
    ] {
        assert!(!text.contains(secret), "{secret} in {what}:\n{text}");
    }
    let tokens = helpers::token_shaped(text, 32);
    assert!(
        tokens.is_empty(),
        "token-shaped strings in {what}: {tokens:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_message_with_counts_and_changes() {
    let (db, dir, sim2, csv2, hook) = second_night(Mode::Accept).await;
    let report = dir.path().join("night.xlsx");
    let metrics = dir.path().join("m.prom");
    let args = [
        "--report",
        report.to_str().unwrap(),
        "--metrics-file",
        metrics.to_str().unwrap(),
    ];
    let out = notify_run(&sim2, &db, &csv2, &hook.url, &args).await;
    assert_exit(&out, 0);
    let bodies = hook.bodies();
    assert_eq!(bodies.len(), 1, "one message per run");
    let body = &bodies[0];
    let text = body["text"].as_str().expect("text");
    assert!(
        text.ends_with("completed (exit 0): 1 newly gone, 0 newly failing, 0 recovered"),
        "{text}"
    );
    let blocks = body["blocks"].as_array().expect("blocks");
    let details = blocks[1]["text"]["text"].as_str().expect("details");
    assert!(
        details.contains("2 active, 1 gone, 0 failed, 0 rejected"),
        "{details}"
    );
    assert!(details.contains("1 newly gone, 0 newly failing, 0 recovered, 0 card changed, 0 account changed, 1 new, 0 missing"), "{details}");
    assert!(details.contains("night.xlsx"), "{details}");
    let gone = blocks[2]["text"]["text"].as_str().expect("newly gone");
    assert!(gone.contains("홍길동상사 `NtKe****0001`"), "{gone}");
    let stderr = stderr_of(&out);
    assert!(
        stderr.contains("notification sent") && stderr.contains("127.0.0.1"),
        "{stderr}"
    );
    assert_no_secrets("stderr", &stderr);
    assert_no_secrets("stdout", &String::from_utf8_lossy(&out.stdout));
    assert_no_secrets("the message", &hook.raw());
    let prom = std::fs::read_to_string(&metrics).expect("metrics");
    assert!(
        prom.contains("\npayple_reconcile_notify_failures 0\n"),
        "{prom}"
    );

    // `notify --run latest` sends the same message again, in json this time.
    let out = bin(
        &sim2,
        &db,
        &["notify", "--notify", &hook.url, "--notify-format", "json"],
    )
    .await;
    assert_exit(&out, 0);
    let again = hook.bodies();
    assert_eq!(again.len(), 2);
    assert_eq!(again[1]["changes"]["newly_gone"], 1);
    assert_eq!(again[1]["newly_gone"][0]["payer_id_masked"], "NtKe****0001");
    sim2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_document_has_its_documented_fields() {
    let (db, _dir, sim2, csv2, hook) = second_night(Mode::Accept).await;
    let mut cmd = helpers::command(&sim2.url());
    cmd.args(["run", "--rate", "0", "--csv", csv2.to_str().unwrap()])
        .args(["--notify-format", "json", "--notify-on", "always"])
        .env("PAYPLE_NOTIFY_URL", format!("{},{}", hook.url, hook.url))
        .env("DATABASE_URL", &db.url);
    let out = output_of(cmd).await;
    assert_exit(&out, 0);
    let bodies = hook.bodies();
    assert_eq!(bodies.len(), 2, "both URLs of PAYPLE_NOTIFY_URL");
    let doc = &bodies[0];
    let fields: Vec<&str> = doc
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    let mut want = vec![
        "type",
        "version",
        "run_id",
        "run_key",
        "state",
        "exit_code",
        "clean",
        "keys",
        "duration_secs",
        "changes",
        "newly_gone",
        "report",
        "error",
    ];
    want.sort_unstable();
    let mut fields = fields.clone();
    fields.sort_unstable();
    assert_eq!(fields, want);
    assert_eq!(doc["type"], "payple_reconcile.run");
    assert_eq!(doc["version"], 1);
    assert_eq!(doc["state"], "completed");
    assert_eq!(doc["exit_code"], 0);
    assert_eq!(
        doc["keys"],
        json!({"active": 2, "gone": 1, "failed": 0, "rejected": 0})
    );
    let changes = &doc["changes"];
    assert_eq!(changes["newly_gone"], 1);
    assert_eq!(changes["new_keys"], 1);
    assert!(doc["duration_secs"].as_f64().expect("duration") > 0.0);
    assert!(doc["report"].is_null());

    // The URL never shows in --help, whatever the environment holds.
    let mut help = helpers::command(&sim2.url());
    help.args(["run", "--help"])
        .env("PAYPLE_NOTIFY_URL", &hook.url);
    let out = output_of(help).await;
    assert_exit(&out, 0);
    assert!(!String::from_utf8_lossy(&out.stdout).contains(HOOK_SECRET));
    sim2.shutdown().await;
}

/// A receiver that answers 500 is tried three times, then given up: the run's exit code
/// and results do not change, the failure is logged (host only) and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_is_retried_then_given_up() {
    let (db, dir, sim2, csv2, hook) = second_night(Mode::Fail).await;
    let metrics = dir.path().join("m.prom");
    let args = [
        "--notify-backoff-ms",
        "50",
        "--metrics-file",
        metrics.to_str().unwrap(),
    ];
    let out = notify_run(&sim2, &db, &csv2, &hook.url, &args).await;
    assert_exit(&out, 0);
    assert_eq!(hook.hits.load(Ordering::SeqCst), 3);
    let summary = helpers::summary_of(&out);
    assert_eq!(summary["gone"], 1);
    let stderr = stderr_of(&out);
    assert!(stderr.contains("notification not delivered"), "{stderr}");
    assert!(stderr.contains("HTTP 500"), "{stderr}");
    assert_no_secrets("stderr", &stderr);
    let prom = std::fs::read_to_string(&metrics).expect("metrics");
    assert!(
        prom.contains("\npayple_reconcile_notify_failures 1\n"),
        "{prom}"
    );
    assert!(
        prom.contains("\npayple_reconcile_run_exit_code 0\n"),
        "{prom}"
    );

    // By hand, an undelivered message is a failure of the command.
    let out = bin(
        &sim2,
        &db,
        &[
            "notify",
            "--run",
            "latest",
            "--notify",
            &hook.url,
            "--notify-backoff-ms",
            "10",
        ],
    )
    .await;
    assert_exit(&out, 1);
    assert_no_secrets("stderr", &stderr_of(&out));
    sim2.shutdown().await;
}

/// A receiver that never answers is cut at the timeout on every attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_receiver_is_cut_at_the_timeout() {
    let (db, _dir, sim2, csv2, hook) = second_night(Mode::Hang).await;
    let args = ["--notify-timeout", "1", "--notify-backoff-ms", "10"];
    let start = Instant::now();
    let out = notify_run(&sim2, &db, &csv2, &hook.url, &args).await;
    let took = start.elapsed();
    assert_exit(&out, 0);
    assert_eq!(hook.hits.load(Ordering::SeqCst), 3);
    assert!(took < Duration::from_secs(15), "took {took:?}");
    let stderr = stderr_of(&out);
    assert!(stderr.contains("timed out"), "{stderr}");
    assert_no_secrets("stderr", &stderr);
    sim2.shutdown().await;
}

//! Per-key events (issue 24): a night's newly gone keys reach a receiver as Standard
//! Webhooks whose signatures the receiver checks itself with *ring* over the raw bytes;
//! retries keep the `webhook-id`; a receiver that is down loses nothing; a 410 disables; a
//! SIGKILL during delivery sends nothing twice that was answered 2xx and recorded.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use crate::helpers::{
    self, Scenario, Setup, TestDb, assert_exit, derived_status, json_lines, output_of,
    per_database, stderr_of, summary_of,
};
use payple_reconcile::simulator::{Faults, SimHandle};

/// A test secret (32 bytes of base64 after the prefix).
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwZTIzNDU2Nzg5MDE=";

/// What the receiver answers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Accept,
    /// 500 to the first try of each event id, 200 after.
    FailFirst,
    /// 410 Gone to everything.
    Gone,
    /// 200 after this many milliseconds.
    Slow(u64),
    /// 429 with `Retry-After: N` (seconds) to the first try of each event id, 204 after.
    PauseFirst(u64),
}

/// One request as received.
#[derive(Clone, Debug)]
struct Hit {
    id: String,
    body: Vec<u8>,
    /// The signature checked here with ring, independently of the sender.
    verified: bool,
    answered: u16,
    /// When it arrived.
    at: std::time::Instant,
}

#[derive(Clone)]
struct Receiver {
    mode: Mode,
    hits: Arc<Mutex<Vec<Hit>>>,
    url: String,
}

impl Receiver {
    async fn start(mode: Mode) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        Self::serve(listener, mode)
    }

    fn serve(listener: tokio::net::TcpListener, mode: Mode) -> Self {
        let addr = listener.local_addr().expect("address");
        let receiver = Self {
            mode,
            hits: Arc::default(),
            url: format!("http://{addr}/payple/events"),
        };
        let app = Router::new()
            .route("/payple/events", post(receive))
            .with_state(receiver.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        receiver
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().expect("lock").clone()
    }

    /// The bodies answered 2xx, parsed, by event id (each must be the same on every try).
    fn delivered(&self) -> BTreeMap<String, Value> {
        self.hits()
            .into_iter()
            .filter(|h| (200..300).contains(&h.answered))
            .map(|h| (h.id, serde_json::from_slice(&h.body).expect("a JSON body")))
            .collect()
    }
}

/// The Standard Webhooks check, written here with ring and base64 directly.
fn verify(headers: &HeaderMap, body: &[u8]) -> bool {
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    };
    let key = STANDARD
        .decode(SECRET.strip_prefix("whsec_").expect("prefix"))
        .expect("base64");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);
    let mut signed = Vec::new();
    signed.extend_from_slice(header("webhook-id").as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(header("webhook-timestamp").as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(body);
    let fresh = header("webhook-timestamp")
        .parse::<i64>()
        .is_ok_and(|t| (chrono::Utc::now().timestamp() - t).abs() < 300);
    fresh
        && header("webhook-signature").split(' ').any(|s| {
            s.strip_prefix("v1,")
                .and_then(|b| STANDARD.decode(b).ok())
                .is_some_and(|tag| ring::hmac::verify(&key, &signed, &tag).is_ok())
        })
}

async fn receive(
    State(r): State<Receiver>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, HeaderMap) {
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let verified = verify(&headers, &body);
    let seen = r.hits().iter().any(|h| h.id == id);
    let mut answer_headers = HeaderMap::new();
    let status = match r.mode {
        Mode::Accept => StatusCode::OK,
        Mode::PauseFirst(secs) if !seen => {
            answer_headers.insert("retry-after", secs.into());
            StatusCode::TOO_MANY_REQUESTS
        }
        Mode::PauseFirst(_) => StatusCode::NO_CONTENT,
        Mode::FailFirst if !seen => StatusCode::INTERNAL_SERVER_ERROR,
        Mode::FailFirst => StatusCode::NO_CONTENT,
        Mode::Gone => StatusCode::GONE,
        Mode::Slow(ms) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            StatusCode::OK
        }
    };
    r.hits.lock().expect("lock").push(Hit {
        id,
        body: body.to_vec(),
        verified,
        answered: status.as_u16(),
        at: std::time::Instant::now(),
    });
    (status, answer_headers)
}

/// A loopback URL nobody listens on.
async fn closed_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    drop(listener);
    format!("http://{addr}/payple/events")
}

/// A first night over `n` keys (all derived), whose keys the next night sees `gone` for the
/// first `gone` active ones. Returns the set-up, the second night's simulator and the keys
/// that go.
async fn two_nights(db: TestDb, n: usize, gone: usize) -> (Setup, SimHandle, Vec<String>) {
    let setup = Scenario::new().keys(n, "events").on(db).start().await;
    let first = setup.output(&["--rate", "0"]).await;
    assert_exit(&first, 0);
    let going: Vec<String> = setup
        .ids
        .iter()
        .filter(|id| derived_status(id) == "active")
        .take(gone)
        .cloned()
        .collect();
    assert_eq!(going.len(), gone, "enough active keys");
    let lines: Vec<Value> = going
        .iter()
        .map(|id| json!({"payer_id": id, "kind": "gone"}))
        .collect();
    let book = helpers::key_file(setup.dir.path(), "night2.jsonl", &lines);
    let sim = setup.second_sim(book, Faults::none(), None).await;
    (setup, sim, going)
}

/// The second night's `run` with events to `url`.
fn night2(setup: &Setup, sim: &SimHandle, url: &str, extra: &[&str]) -> std::process::Command {
    let mut cmd = helpers::command(&sim.url());
    cmd.args([
        "run",
        "--database-url",
        &setup.db.url,
        "--retry-base-ms",
        "10",
    ])
    .args(["--rate", "0", "--csv", setup.csv_arg()])
    .args(["--events-backoff-ms", "20"])
    .args(extra)
    .env("PAYPLE_EVENTS_URL", url)
    .env("PAYPLE_EVENTS_SECRET", SECRET);
    cmd
}

/// `payple-reconcile ARGS` on the set-up's database ([`Setup::subcommand`]) with the events
/// secret.
fn with_secret(setup: &Setup, args: &[&str]) -> std::process::Command {
    let mut cmd = setup.subcommand(args);
    cmd.env("PAYPLE_EVENTS_SECRET", SECRET);
    cmd
}

fn sha256_hex(text: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, text.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn ten_gone_keys_are_ten_signed_events(db: TestDb) {
    let (setup, sim, going) = two_nights(db, 60, 10).await;
    let receiver = Receiver::start(Mode::Accept).await;
    let out = output_of(night2(&setup, &sim, &receiver.url, &[])).await;
    assert_exit(&out, 0);
    let hits = receiver.hits();
    assert_eq!(hits.len(), 10, "exactly one request per event");
    assert!(
        hits.iter().all(|h| h.verified),
        "every signature checks out"
    );
    let delivered = receiver.delivered();
    assert_eq!(delivered.len(), 10);
    let hashes: BTreeSet<String> = delivered
        .values()
        .map(|e| {
            assert_eq!(e["type"], "billing_key.gone", "{e}");
            assert_eq!(e["data"]["before"]["status"], "active");
            assert_eq!(e["data"]["after"]["status"], "gone");
            e["data"]["payer_id_sha256"]
                .as_str()
                .expect("hash")
                .to_owned()
        })
        .collect();
    let want: BTreeSet<String> = going.iter().map(|k| sha256_hex(k)).collect();
    assert_eq!(hashes, want);
    let raw: String = hits
        .iter()
        .map(|h| String::from_utf8_lossy(&h.body).into_owned())
        .collect();
    for key in &setup.ids {
        assert!(!raw.contains(key.as_str()), "a full key in a payload");
    }
    let summary = summary_of(&out);
    assert_eq!(
        summary["events"],
        json!({"delivered": 10, "pending": 0, "expired": 0})
    );
    let stderr = stderr_of(&out);
    assert!(
        !stderr.contains(SECRET) && !stderr.contains("/payple/events"),
        "{stderr}"
    );

    // The outbox says so, and `changes --format jsonl` gives the same objects.
    let list = output_of(with_secret(&setup, &["events", "list"])).await;
    assert_exit(&list, 0);
    let rows = json_lines(&list);
    assert_eq!(rows.len(), 10);
    assert!(
        rows.iter()
            .all(|r| r["state"] == "delivered" && r["attempts"] == 1)
    );
    let pending = output_of(with_secret(&setup, &["events", "list", "--pending"])).await;
    assert!(json_lines(&pending).is_empty());
    let jsonl = output_of(with_secret(&setup, &["changes", "--format", "jsonl"])).await;
    assert_exit(&jsonl, 0);
    let lines: BTreeSet<String> = json_lines(&jsonl).iter().map(Value::to_string).collect();
    let sent: BTreeSet<String> = delivered.values().map(Value::to_string).collect();
    assert_eq!(lines, sent);
    sim.shutdown().await;
    setup.close().await;
}

per_database!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    ten_gone_keys_are_ten_signed_events:
        Sqlite => ten_gone_keys_are_ten_signed_events_on_sqlite,
        Postgres => ten_gone_keys_are_ten_signed_events_on_postgres,
        MySql => ten_gone_keys_are_ten_signed_events_on_mysql,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_try_is_sent_again_with_the_same_id() {
    let (setup, sim, _) = two_nights(TestDb::sqlite(), 40, 3).await;
    let receiver = Receiver::start(Mode::FailFirst).await;
    let hook = Receiver::start(Mode::Accept).await;
    let metrics = setup.dir.path().join("night.prom");
    let mut cmd = night2(
        &setup,
        &sim,
        &receiver.url,
        &["--notify-format", "json", "--notify-on", "always"],
    );
    cmd.arg("--metrics-file")
        .arg(&metrics)
        .env("PAYPLE_NOTIFY_URL", &hook.url);
    let out = output_of(cmd).await;
    assert_exit(&out, 0);
    // The notification and the metrics say what was delivered.
    let told: Value = serde_json::from_slice(&hook.hits()[0].body).expect("JSON");
    assert_eq!(
        told["events"],
        json!({"delivered": 3, "pending": 0, "expired": 0})
    );
    let prom = std::fs::read_to_string(&metrics).expect("metrics file");
    assert!(
        prom.contains("\npayple_reconcile_events{state=\"delivered\"} 3\n"),
        "{prom}"
    );
    let hits = receiver.hits();
    assert_eq!(hits.len(), 6, "each event twice");
    assert!(hits.iter().all(|h| h.verified));
    let mut per_id: BTreeMap<String, Vec<(u16, Vec<u8>)>> = BTreeMap::new();
    for h in hits {
        per_id.entry(h.id).or_default().push((h.answered, h.body));
    }
    assert_eq!(per_id.len(), 3);
    for tries in per_id.values() {
        assert_eq!(
            tries.iter().map(|t| t.0).collect::<Vec<_>>(),
            vec![500, 204]
        );
        assert_eq!(tries[0].1, tries[1].1, "the same body on every try");
    }
    assert_eq!(summary_of(&out)["events"]["delivered"], 3);
    sim.shutdown().await;
    setup.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_all_night_loses_nothing() {
    let (setup, sim, _) = two_nights(TestDb::sqlite(), 40, 4).await;
    let down = closed_url().await;
    let out = output_of(night2(&setup, &sim, &down, &["--events-budget", "2s"])).await;
    assert_exit(&out, 0);
    assert_eq!(
        summary_of(&out)["events"],
        json!({"delivered": 0, "pending": 4, "expired": 0})
    );
    let pending = output_of(with_secret(&setup, &["events", "list", "--pending"])).await;
    let rows = json_lines(&pending);
    assert_eq!(rows.len(), 4);
    assert!(
        rows.iter().all(|r| r["attempts"].as_i64() >= Some(1)),
        "{rows:?}"
    );

    // The receiver is back: `events deliver` sends each exactly once, then nothing.
    let receiver = Receiver::start(Mode::Accept).await;
    let mut deliver = with_secret(&setup, &["events", "deliver"]);
    deliver.env("PAYPLE_EVENTS_URL", &receiver.url);
    let out = output_of(deliver).await;
    assert_exit(&out, 0);
    assert_eq!(json_lines(&out)[0]["delivered"], 4);
    let ids: Vec<String> = receiver.hits().into_iter().map(|h| h.id).collect();
    assert_eq!(ids.len(), 4);
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), 4);
    let mut again = with_secret(&setup, &["events", "deliver"]);
    again.env("PAYPLE_EVENTS_URL", &receiver.url);
    assert_exit(&output_of(again).await, 0);
    assert_eq!(receiver.hits().len(), 4, "nothing twice");
    sim.shutdown().await;
    setup.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_retry_after_is_waited_before_the_next_try() {
    let (setup, sim, _) = two_nights(TestDb::sqlite(), 40, 2).await;
    let receiver = Receiver::start(Mode::PauseFirst(2)).await;
    let out = output_of(night2(&setup, &sim, &receiver.url, &[])).await;
    assert_exit(&out, 0);
    assert_eq!(summary_of(&out)["events"]["delivered"], 2);
    let mut per_id: BTreeMap<String, Vec<Hit>> = BTreeMap::new();
    for h in receiver.hits() {
        per_id.entry(h.id.clone()).or_default().push(h);
    }
    assert_eq!(per_id.len(), 2);
    for tries in per_id.values() {
        let answered: Vec<u16> = tries.iter().map(|h| h.answered).collect();
        assert_eq!(answered, vec![429, 204]);
        let waited = tries[1].at - tries[0].at;
        assert!(
            waited >= Duration::from_secs(2),
            "asked for 2 s, tried again after {waited:?} (backoff 20 ms)"
        );
    }
    sim.shutdown().await;
    setup.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_past_the_budget_leaves_the_events_pending() {
    let (setup, sim, _) = two_nights(TestDb::sqlite(), 40, 3).await;
    let receiver = Receiver::start(Mode::PauseFirst(3600)).await;
    let out = output_of(night2(
        &setup,
        &sim,
        &receiver.url,
        &["--events-budget", "3s"],
    ))
    .await;
    assert_exit(&out, 0);
    assert_eq!(
        summary_of(&out)["events"],
        json!({"delivered": 0, "pending": 3, "expired": 0})
    );
    assert_eq!(
        receiver.hits().len(),
        3,
        "one try each, then the pause asked for"
    );
    sim.shutdown().await;
    setup.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_disables_the_endpoint() {
    let (setup, sim, _) = two_nights(TestDb::sqlite(), 40, 5).await;
    let receiver = Receiver::start(Mode::Gone).await;
    let out = output_of(night2(
        &setup,
        &sim,
        &receiver.url,
        &["--events-concurrency", "1"],
    ))
    .await;
    assert_exit(&out, 0);
    assert_eq!(receiver.hits().len(), 1, "nothing after the 410");
    assert_eq!(summary_of(&out)["events"]["pending"], 5);
    assert!(stderr_of(&out).contains("410"), "{}", stderr_of(&out));
    let mut deliver = with_secret(&setup, &["events", "deliver", "--events-concurrency", "1"]);
    deliver.env("PAYPLE_EVENTS_URL", &receiver.url);
    let out = output_of(deliver).await;
    assert_exit(&out, 4);
    assert_eq!(json_lines(&out)[0]["endpoint_disabled"], true);
    sim.shutdown().await;
    setup.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_during_delivery_sends_the_rest_later_and_nothing_twice() {
    let (setup, sim, _) = two_nights(TestDb::sqlite(), 80, 10).await;
    let slow = Receiver::start(Mode::Slow(300)).await;
    let mut child = helpers::spawn(night2(
        &setup,
        &sim,
        &slow.url,
        &["--events-concurrency", "1"],
    ));
    let waited = tokio::time::Instant::now();
    while slow.hits().len() < 3 {
        assert!(
            waited.elapsed() < Duration::from_secs(60),
            "delivery never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.start_kill().expect("SIGKILL");
    let _ = child.wait().await;
    let recorded: BTreeSet<String> =
        json_lines(&output_of(with_secret(&setup, &["events", "list"])).await)
            .into_iter()
            .filter(|r| r["state"] == "delivered")
            .map(|r| r["event_id"].as_str().unwrap_or_default().to_owned())
            .collect();
    assert!(!recorded.is_empty() && recorded.len() < 10, "{recorded:?}");

    let receiver = Receiver::start(Mode::Accept).await;
    let mut deliver = with_secret(&setup, &["events", "deliver"]);
    deliver.env("PAYPLE_EVENTS_URL", &receiver.url);
    assert_exit(&output_of(deliver).await, 0);
    let second: Vec<String> = receiver.hits().into_iter().map(|h| h.id).collect();
    for id in &second {
        assert!(
            !recorded.contains(id),
            "{id} was delivered and recorded, and sent again"
        );
    }
    let all: BTreeSet<String> = slow
        .delivered()
        .into_keys()
        .chain(second.iter().cloned())
        .collect();
    assert_eq!(all.len(), 10, "every event delivered");
    assert_eq!(recorded.len() + second.len(), 10);
    sim.shutdown().await;
    setup.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_event_settings_stop_before_any_lookup() {
    let setup = Scenario::new()
        .keys(3, "events-config")
        .request_log()
        .start()
        .await;
    let mut no_secret = setup.command(&[]);
    no_secret.env(
        "PAYPLE_EVENTS_URL",
        "https://hooks.example.com/p?token=hidden",
    );
    let out = output_of(no_secret).await;
    assert_exit(&out, 3);
    assert!(stderr_of(&out).contains("PAYPLE_EVENTS_SECRET"));
    let mut plain_http = setup.command(&[]);
    plain_http
        .env(
            "PAYPLE_EVENTS_URL",
            "http://hooks.example.com/p?token=hidden",
        )
        .env("PAYPLE_EVENTS_SECRET", SECRET);
    let out = output_of(plain_http).await;
    assert_exit(&out, 3);
    let text = format!(
        "{}{}",
        stderr_of(&out),
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!text.contains("hidden"), "{text}");
    let mut help = setup.command(&["--help"]);
    help.env(
        "PAYPLE_EVENTS_URL",
        "https://hooks.example.com/p?token=hidden",
    );
    let out = output_of(help).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("--events-url") && !text.contains("hidden"),
        "{text}"
    );
    assert_eq!(setup.rows().await, 0);
    let left = setup.close().await;
    let log = std::fs::read_to_string(left.log()).unwrap_or_default();
    assert!(!log.contains("\"lookup\""), "no lookup sent: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_delivery_ends_within_the_grace_and_keeps_the_events() {
    let (setup, sim, _) = two_nights(TestDb::sqlite(), 40, 3).await;
    // Answers only after a minute: every attempt is in flight when the signal comes.
    let hanging = Receiver::start(Mode::Slow(60_000)).await;
    let child = helpers::spawn(night2(
        &setup,
        &sim,
        &hanging.url,
        &["--shutdown-grace", "1", "--events-timeout", "120"],
    ));
    let pid = child.id().expect("pid");
    // Delivery has begun once the outbox holds the run's events.
    let waited = tokio::time::Instant::now();
    loop {
        let rows = json_lines(&output_of(with_secret(&setup, &["events", "list"])).await);
        if rows.len() == 3 {
            break;
        }
        assert!(
            waited.elapsed() < Duration::from_secs(60),
            "no events written"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let signalled = tokio::time::Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let out = helpers::wait_output(child, Duration::from_secs(30)).await;
    let took = signalled.elapsed();
    // Grace 1 s, the end-of-run floor 2 s: generous bound for a shared machine.
    assert!(
        took < Duration::from_secs(12),
        "took {took:?} after SIGTERM"
    );
    assert_eq!(
        summary_of(&out)["events"]["pending"],
        3,
        "{}",
        stderr_of(&out)
    );
    let pending = output_of(with_secret(&setup, &["events", "list", "--pending"])).await;
    assert_eq!(json_lines(&pending).len(), 3);
    sim.shutdown().await;
    setup.close().await;
}

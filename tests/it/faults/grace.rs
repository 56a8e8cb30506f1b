//! Signals obeyed in every phase: the real binary gets a real SIGTERM while it reads keys
//! from a pipe that stays open or a FIFO with no writer, reads a `--cust-key-file` FIFO,
//! or notifies two webhooks that hang (one accepts and never answers, one trickles bytes);
//! and a Payple that answers 503 with a long `Retry-After` does not outlive the outage
//! budget. Each is timed from the signal (or the budget) to the exit against a generous
//! bound.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use payple_reconcile::store::RunState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::helpers::{self, Scenario, Setup, assert_exit, kill, only_run, stderr_of};

const GRACE: &str = "2";
/// From the signal to the exit: the grace, the end-of-run floor and margin (2 s each),
/// and room for a shared machine.
const BOUND: Duration = Duration::from_secs(12);
const POLL: Duration = Duration::from_millis(50);

fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo runs");
    assert!(status.success(), "mkfifo {}", path.display());
}

/// Waits until the run row exists (the run is staging its keys).
async fn wait_for_run(store: &payple_reconcile::store::Store, child: &mut tokio::process::Child) {
    helpers::wait_for_count(
        store,
        "SELECT COUNT(*) FROM reconcile_runs",
        1,
        Duration::from_secs(20),
        POLL,
        child,
    )
    .await;
    // Past the run row, into the read.
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// SIGTERM to `child` while it is `doing` something: it exits 143 within [`BOUND`] of the
/// signal (the time is printed as a figure); its output.
async fn terminate(child: tokio::process::Child, doing: &str) -> std::process::Output {
    let pid = child.id().expect("child pid");
    let signalled = Instant::now();
    kill("TERM", pid);
    let out = helpers::wait_output(child, Duration::from_secs(90)).await;
    let took = signalled.elapsed();
    eprintln!("figures: SIGTERM {doing}: exit after {took:?}");
    assert_exit(&out, 143);
    assert!(took < BOUND, "exiting took {took:?} after SIGTERM {doing}");
    out
}

/// Keys from stdin, a pipe the test keeps open after a few rows: SIGTERM ends the run
/// (143, `interrupted`) without waiting for the end of input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_reading_keys_from_a_pipe_that_stays_open() {
    let set = Scenario::new()
        .args(&["--csv", "-", "--shutdown-grace", GRACE])
        .start()
        .await;
    let mut cmd = tokio::process::Command::from(set.command(&[]));
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("the binary starts");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(b"payer_id\nPipeKey0000000000000001\nPipeKey0000000000000002\n")
        .await
        .expect("write keys");
    stdin.flush().await.expect("flush");
    wait_for_run(&set.store, &mut child).await;
    terminate(child, "while reading a pipe").await;
    drop(stdin);
    assert_eq!(only_run(&set.store).await.state, RunState::Interrupted);
    set.close().await;
}

/// `--csv` names a FIFO nobody ever opens for writing: SIGTERM ends the run (143).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_waiting_for_a_fifo_with_no_writer() {
    let dir = tempfile::tempdir().expect("temp dir");
    let fifo = dir.path().join("keys.csv");
    mkfifo(&fifo);
    let set = Scenario::new()
        .args(&[
            "--csv",
            fifo.to_str().expect("utf-8"),
            "--shutdown-grace",
            GRACE,
        ])
        .start()
        .await;
    let mut child = set.spawn(&[]);
    wait_for_run(&set.store, &mut child).await;
    terminate(child, "while opening a FIFO with no writer").await;
    assert_eq!(only_run(&set.store).await.state, RunState::Interrupted);
    set.close().await;
}

/// `--cust-key-file` names a FIFO with no writer: SIGTERM ends the command with exit 143
/// and its JSON error line (not killed by the signal), before anything is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_reading_a_cust_key_file_fifo() {
    let dir = tempfile::tempdir().expect("temp dir");
    let fifo = dir.path().join("cust_key");
    mkfifo(&fifo);
    let set = Scenario::new()
        .keys(5, "cust-key-fifo")
        .args(&["--cust-key-file", fifo.to_str().expect("utf-8")])
        .start()
        .await;
    let child = set.spawn(&[]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let out = terminate(child, "while reading a --cust-key-file FIFO").await;
    let lines = helpers::json_lines(&out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let error = lines[0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("SIGTERM"), "{error}");
    assert_eq!(set.sim.stats().auth_calls, 0, "nothing sent");
    set.close().await;
}

/// A webhook that accepts connections and never answers.
async fn silent_webhook() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    format!("http://{addr}/hook/silent")
}

/// A webhook that reads the request, then trickles a response one byte a second.
async fn trickling_webhook() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf).await;
                let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n";
                for byte in reply.iter().chain(std::iter::repeat(&b'x')) {
                    if socket.write_all(&[*byte]).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            });
        }
    });
    format!("http://{addr}/hook/trickle")
}

/// A scenario notifying two webhooks that hang (one silent, one trickling) `always`, with
/// a metrics file in a folder of its own: `n` keys from `seed`, `flags` before the
/// notification flags; started, nothing run yet.
struct Hanging {
    set: Setup,
    metrics: PathBuf,
    _dir: tempfile::TempDir,
}

async fn hanging_webhooks(n: usize, seed: &str, flags: &[&str]) -> Hanging {
    let (silent, trickle) = (silent_webhook().await, trickling_webhook().await);
    let dir = tempfile::tempdir().expect("temp dir");
    let metrics = dir.path().join("metrics.prom");
    let set = Scenario::new()
        .keys(n, seed)
        .args(flags)
        .args(&[
            "--notify",
            &silent,
            "--notify",
            &trickle,
            "--notify-on",
            "always",
            "--metrics-file",
            metrics.to_str().expect("utf-8"),
        ])
        .start()
        .await;
    Hanging {
        set,
        metrics,
        _dir: dir,
    }
}

/// SIGTERM mid-run with two webhooks that hang: the run exits within the bound, and the
/// metrics file is written although no notification got through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_two_hanging_webhooks_exits_within_the_grace() {
    let Hanging { set, metrics, _dir } = hanging_webhooks(
        400,
        "hanging-webhooks",
        &["--rate", "50", "--shutdown-grace", GRACE],
    )
    .await;
    let mut child = set.spawn(&[]);
    helpers::wait_for_rows(&set.store, 20, Duration::from_secs(20), POLL, &mut child).await;
    let out = terminate(child, "with two hanging webhooks").await;
    let text = std::fs::read_to_string(&metrics).expect("the metrics file is written");
    assert!(text.contains("payple_reconcile_"), "{text}");
    let stderr = stderr_of(&out);
    assert!(stderr.contains("notification not delivered"), "{stderr}");
    assert_eq!(only_run(&set.store).await.state, RunState::Interrupted);
    set.close().await;
}

/// A long grace, two hanging webhooks, SIGTERM then SIGINT once the run has completed and
/// is notifying: the second signal ends the notification at once; the run's own exit (0)
/// stands, and the metrics count both webhooks as not reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_ends_a_hanging_notification_at_once() {
    let Hanging { set, metrics, _dir } =
        hanging_webhooks(20, "second-signal-notify", &["--shutdown-grace", "60"]).await;
    let mut child = set.spawn(&[]);
    // The run is over when the metrics file is there: the job is notifying.
    let waiting = Instant::now();
    while !metrics.exists() {
        assert!(
            waiting.elapsed() < Duration::from_secs(30),
            "no metrics file"
        );
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the run ended ({status}) before notifying");
        }
        tokio::time::sleep(POLL).await;
    }
    let pid = child.id().expect("child pid");
    kill("TERM", pid);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let signalled = Instant::now();
    kill("INT", pid);
    let out = helpers::wait_output(child, Duration::from_secs(90)).await;
    let took = signalled.elapsed();
    eprintln!("figures: second signal while notifying: exit after {took:?}");
    assert_exit(&out, 0);
    assert!(took < Duration::from_secs(3), "exiting took {took:?}");
    assert_eq!(set.run_record().await.state, RunState::Completed);
    let text = std::fs::read_to_string(&metrics).expect("metrics");
    assert!(
        text.contains("payple_reconcile_notify_failures 2"),
        "{text}"
    );
    set.close().await;
}

/// A Payple that authenticates (through the simulator) and answers every lookup 503 with
/// `Retry-After: 100`.
#[derive(Clone)]
struct Unavailable {
    sim: String,
    own: String,
    lookups: Arc<AtomicU64>,
    http: reqwest::Client,
}

async fn unavailable_payple(sim: String) -> (String, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let own = format!("http://{}", listener.local_addr().expect("address"));
    let state = Unavailable {
        sim,
        own: own.clone(),
        lookups: Arc::default(),
        http: payple_reconcile::http::client_builder()
            .build()
            .expect("an HTTP client"),
    };
    let lookups = Arc::clone(&state.lookups);
    let app = Router::new().fallback(answer).with_state(state);
    tokio::spawn(async move { axum::serve(listener, app).await });
    (own, lookups)
}

async fn answer(
    State(p): State<Unavailable>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if uri.path() != "/php/auth.php" {
        p.lookups.fetch_add(1, Ordering::SeqCst);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [("Retry-After", "100")],
            "down",
        )
            .into_response();
    }
    let mut request = p.http.post(format!("{}{uri}", p.sim)).body(body);
    for name in ["content-type", "referer"] {
        if let Some(value) = headers.get(name) {
            request = request.header(name, value.as_bytes());
        }
    }
    let reply = request.send().await.expect("the simulator answers");
    let status = reply.status().as_u16();
    let text = reply.text().await.expect("auth body");
    // The lookup URL the simulator hands out points at itself: point it here.
    let text = text.replace(&p.sim, &p.own);
    (
        StatusCode::from_u16(status).expect("status"),
        [("content-type", "application/json")],
        text,
    )
        .into_response()
}

/// 503 with `Retry-After: 100` for every lookup and a 3 s outage budget: exit 4 a few
/// seconds after the budget is spent, not after the 100 s retry sleeps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_retry_after_does_not_outlive_the_outage_budget() {
    // Unopened: the binary meets a fresh database, as before; the store opens after it ran.
    let world = Scenario::new()
        .keys(50, "retry-after-budget")
        .start_unopened()
        .await;
    let (payple, lookups) =
        unavailable_payple(world.sim.url().trim_end_matches('/').to_owned()).await;
    let mut cmd = helpers::command(&payple);
    cmd.args([
        "run",
        "--database-url",
        &world.db.url,
        "--csv",
        world.csv_arg(),
        "--outage-budget",
        "3",
        "--rate",
        "0",
    ]);
    let started = Instant::now();
    let out = helpers::wait_output(helpers::spawn(cmd), Duration::from_secs(150)).await;
    let took = started.elapsed();
    eprintln!(
        "figures: 503 Retry-After 100, budget 3 s: exit {:?} after {took:?}, {} lookups",
        out.status.code(),
        lookups.load(Ordering::SeqCst)
    );
    assert_exit(&out, 4);
    assert!(
        took < Duration::from_secs(15),
        "the run took {took:?} with a 3 s outage budget"
    );
    let set = world.open().await;
    assert_eq!(set.run_record().await.state, RunState::Interrupted);
    assert_eq!(set.rows().await, 0, "no key failed for an outage");
    set.close().await;
}

//! `--metrics-push` against the real Prometheus Pushgateway (Debian's
//! `prometheus-pushgateway`), started here on a free loopback port with its own persistence
//! file. Where the binary is absent the tests say so and pass, unless
//! `REQUIRE_PUSHGATEWAY=1` (CI sets it) makes that a failure.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use payple_reconcile::simulator::Faults;

use crate::helpers::{Scenario, TestDb};

const LAST_SUCCESS: &str = "payple_reconcile_last_success_timestamp_seconds";
const EXIT_CODE: &str = "payple_reconcile_run_exit_code";

/// A Pushgateway process on loopback, killed when dropped.
struct Pushgateway {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Pushgateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Pushgateway binary: `PUSHGATEWAY_BIN`, or Debian's name on PATH.
fn binary() -> Option<PathBuf> {
    if let Ok(bin) = std::env::var("PUSHGATEWAY_BIN") {
        return Some(PathBuf::from(bin));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| ["prometheus-pushgateway", "pushgateway"].map(|n| dir.join(n)))
        .find(|p| p.is_file())
}

fn http_client() -> reqwest::Client {
    payple_reconcile::http::client_builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client")
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

impl Pushgateway {
    /// Starts one, or `None` (with the reason printed) when there is no binary and
    /// `REQUIRE_PUSHGATEWAY` is not `1`.
    async fn start() -> Option<Self> {
        let Some(bin) = binary() else {
            assert!(
                std::env::var("REQUIRE_PUSHGATEWAY").as_deref() != Ok("1"),
                "REQUIRE_PUSHGATEWAY=1 but no prometheus-pushgateway on PATH (or PUSHGATEWAY_BIN)"
            );
            eprintln!(
                "skipping: no prometheus-pushgateway on PATH; set REQUIRE_PUSHGATEWAY=1 to fail instead"
            );
            return None;
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let child = Command::new(&bin)
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg(format!(
                "--persistence.file={}",
                dir.path().join("pushgateway.data").display()
            ))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let gateway = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        let client = http_client();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = client
                .get(format!("{}/-/ready", gateway.url))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return Some(gateway);
            }
            assert!(Instant::now() < deadline, "the Pushgateway never got ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every sample the Pushgateway serves: (name, labels) -> value.
    async fn samples(&self) -> BTreeMap<(String, BTreeMap<String, String>), f64> {
        let text = http_client()
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("body");
        parse(&text)
    }
}

/// Prometheus text format, as the Pushgateway writes it (label values without escapes).
fn parse(text: &str) -> BTreeMap<(String, BTreeMap<String, String>), f64> {
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("a value");
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels = labels
            .split(',')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once('=').expect("label=value");
                (k.to_owned(), v.trim_matches('"').to_owned())
            })
            .collect();
        out.insert((name.to_owned(), labels), value.parse().expect("a number"));
    }
    out
}

/// The value of `name` in the group whose labels include `group` (job excepted).
fn value_in(
    samples: &BTreeMap<(String, BTreeMap<String, String>), f64>,
    name: &str,
    group: &[(&str, &str)],
) -> Option<f64> {
    samples
        .iter()
        .find(|((n, labels), _)| {
            n == name
                && labels.get("job").map(String::as_str) == Some("payple_reconcile")
                && group
                    .iter()
                    .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, v)| *v)
}

/// The unix time a stored run ended.
fn finished(run: &payple_reconcile::store::RunRecord) -> f64 {
    let at = run.finished_at.expect("the run finished");
    payple_reconcile::report::metrics::unix_seconds(at)
}

/// A successful run, then a run whose keys all fail: the Pushgateway keeps the first run's
/// last-success time and shows the second run's exit code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_keeps_the_last_success_and_shows_its_exit_code() {
    let Some(gateway) = Pushgateway::start().await else {
        return;
    };
    let push = ["--metrics-push", gateway.url.as_str()];
    let good = Scenario::new()
        .keys(6, "push-good")
        .args(&["--rate", "0"])
        .args(&push)
        .run()
        .await;
    good.expect_exit(0);
    let first_end = finished(&good.run_record().await);
    let samples = gateway.samples().await;
    assert_eq!(value_in(&samples, EXIT_CODE, &[]), Some(0.0), "{samples:?}");
    let pushed = value_in(&samples, LAST_SUCCESS, &[]).expect("the last success is pushed");
    assert!((pushed - first_end).abs() < 0.01, "{pushed} vs {first_end}");
    assert_eq!(
        value_in(&samples, "payple_reconcile_keys", &[("status", "failed")]),
        Some(0.0)
    );
    good.close().await;

    // Every lookup answered HTTP 500 and a one-second outage budget: Payple is
    // unavailable, the run stops (exit 4) and is no success.
    let bad = Scenario::new()
        .keys(4, "push-bad")
        .faults(Faults {
            error_rate: 1.0,
            ..Faults::none()
        })
        .args(&["--rate", "0", "--max-attempts", "1", "--outage-budget", "1"])
        .args(&push)
        .run()
        .await;
    let code = bad.out.status.code().expect("an exit code");
    assert_ne!(code, 0, "{}", bad.stderr());
    let samples = gateway.samples().await;
    assert_eq!(
        value_in(&samples, EXIT_CODE, &[]),
        Some(f64::from(code)),
        "{samples:?}"
    );
    assert_eq!(
        value_in(&samples, LAST_SUCCESS, &[]),
        Some(pushed),
        "a failed run must not move the last success"
    );
    bad.close().await;
}

/// A sharded run pushes one group per shard index (stable across runs, unlike a pod
/// name), each with its own exit code. The run succeeds when its last shard completes it:
/// that shard's group carries the last success (alerts take the maximum over shards).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharded_run_pushes_one_group_per_shard() {
    let Some(gateway) = Pushgateway::start().await else {
        return;
    };
    let setup = Scenario::new()
        .keys(10, "push-shards")
        .on(TestDb::sqlite())
        .args(&["--rate", "0", "--run-key", "night-1"])
        .args(&["--metrics-push", gateway.url.as_str()])
        .args(&["--metrics-instance", "kr-prod"])
        .start()
        .await;
    for shard in ["0/2", "1/2"] {
        let out = setup.output(&["--shard", shard]).await;
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let samples = gateway.samples().await;
    for shard in ["0", "1"] {
        let group = [("instance", "kr-prod"), ("shard", shard)];
        assert_eq!(
            value_in(&samples, EXIT_CODE, &group),
            Some(0.0),
            "{samples:?}"
        );
        assert!(value_in(&samples, "push_time_seconds", &group).is_some());
    }
    // Shard 0 ended first: the shared run was still running, no success yet.
    let group = |shard| [("instance", "kr-prod"), ("shard", shard)];
    assert_eq!(value_in(&samples, LAST_SUCCESS, &group("0")), None);
    let completed = finished(&setup.run_record().await);
    let pushed = value_in(&samples, LAST_SUCCESS, &group("1")).expect("shard 1 completed the run");
    assert!((pushed - completed).abs() < 0.01, "{pushed} vs {completed}");
    let groups = samples
        .keys()
        .filter(|(n, l)| {
            n == "push_time_seconds" && l.get("job").map(String::as_str) == Some("payple_reconcile")
        })
        .count();
    assert_eq!(groups, 2, "{samples:?}");
    setup.close().await;
}

/// A Pushgateway that is down costs the run nothing but a counted failure: same exit code,
/// same results, a bounded delay, the failure in the metrics file, and no URL in the logs.
/// Needs no Pushgateway binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushgateway_that_is_down_is_only_a_counted_failure() {
    let dir = tempfile::tempdir().expect("temp dir");
    let metrics = dir.path().join("payple_reconcile.prom");
    // Nothing listens on this port once the listener is dropped.
    let url = format!("http://127.0.0.1:{}/SECRET-prefix", free_port());
    let ran = Scenario::new()
        .keys(5, "push-down")
        .args(&["--rate", "0"])
        .args(&["--metrics-push", url.as_str()])
        .args(&["--metrics-file", metrics.to_str().expect("utf-8 path")])
        .env("RUST_LOG", "info")
        .run()
        .await;
    ran.expect_exit(0);
    let summary = ran.summary();
    assert_eq!(summary["failed"], 0, "{summary}");
    assert_eq!(
        summary["active"].as_i64().unwrap_or(0) + summary["gone"].as_i64().unwrap_or(0),
        5
    );
    assert!(ran.took < Duration::from_secs(30), "took {:?}", ran.took);
    let stderr = ran.stderr();
    assert!(stderr.contains("metrics not pushed"), "{stderr}");
    assert!(stderr.contains("3 attempt(s)"), "{stderr}");
    assert!(!stderr.contains("SECRET"), "{stderr}");
    let text = std::fs::read_to_string(&metrics).expect("the metrics file is written");
    assert!(
        text.contains("\npayple_reconcile_metrics_push_failures 1\n"),
        "{text}"
    );
    assert!(text.contains(&format!("\n{EXIT_CODE} 0\n")), "{text}");
    // The first run had no run before it to compare with: no newly gone count. A second
    // run of the same keys finds none newly gone.
    assert!(!text.contains("payple_reconcile_keys_newly_gone"), "{text}");
    let again = ran.output(&["--rerun", "--run-key", "second"]).await;
    assert_eq!(again.status.code(), Some(0));
    let text = std::fs::read_to_string(&metrics).expect("the metrics file is rewritten");
    assert!(
        text.contains("\npayple_reconcile_keys_newly_gone 0\n"),
        "{text}"
    );
    ran.close().await;
}

/// A Pushgateway that accepts connections and never answers: SIGTERM during the push ends
/// the process within `--shutdown-grace` (not after three 5 s attempts), with the run's
/// own exit code and the failure counted. Needs no Pushgateway binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_hanging_push_ends_within_the_grace() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (accepted, mut first) = tokio::sync::mpsc::channel::<()>(8);
    let hole = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
            let _ = accepted.try_send(());
        }
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let metrics = dir.path().join("payple_reconcile.prom");
    let setup = Scenario::new()
        .keys(3, "push-hang")
        .args(&["--rate", "0", "--shutdown-grace", "2"])
        .args(&["--metrics-push", url.as_str()])
        .args(&["--metrics-file", metrics.to_str().expect("utf-8 path")])
        .start()
        .await;
    let child = setup.spawn(&[]);
    tokio::time::timeout(Duration::from_secs(60), first.recv())
        .await
        .expect("the push reaches the Pushgateway")
        .expect("accepted");
    let signalled = Instant::now();
    super::send(&child, libc::SIGTERM);
    let out = crate::helpers::wait_output(child, Duration::from_secs(60)).await;
    let took = signalled.elapsed();
    // Three attempts would take 15 s; the grace is 2 s (bound generous for a shared machine).
    assert!(
        took < Duration::from_secs(9),
        "ended {took:?} after SIGTERM"
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("shutdown grace ran out"), "{stderr}");
    let text = std::fs::read_to_string(&metrics).expect("the metrics file is written");
    assert!(
        text.contains("\npayple_reconcile_metrics_push_failures 1\n"),
        "{text}"
    );
    hole.abort();
    setup.close().await;
}

/// A run that cannot open its results database (exit 3, no summary) still pushes its exit
/// code; the earlier run's other metrics and last success stay as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_without_a_database_pushes_its_exit_code_only() {
    let Some(gateway) = Pushgateway::start().await else {
        return;
    };
    let good = Scenario::new()
        .keys(3, "push-nodb")
        .args(&["--rate", "0", "--metrics-push", gateway.url.as_str()])
        .run()
        .await;
    good.expect_exit(0);
    let before = gateway.samples().await;
    let last_success = value_in(&before, LAST_SUCCESS, &[]).expect("pushed");

    // Nothing listens on this port: the database cannot be opened.
    let refused = format!("postgres://postgres@127.0.0.1:{}/none", free_port());
    let mut cmd = crate::helpers::command(&good.sim.url());
    cmd.args(["run", "--database-url", refused.as_str()])
        .args(["--csv", good.csv_arg()])
        .args(["--metrics-push", gateway.url.as_str()]);
    let out = crate::helpers::output_of(cmd).await;
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = gateway.samples().await;
    assert_eq!(value_in(&after, EXIT_CODE, &[]), Some(3.0), "{after:?}");
    assert_eq!(value_in(&after, LAST_SUCCESS, &[]), Some(last_success));
    assert_eq!(
        value_in(&after, "payple_reconcile_lookups", &[]),
        value_in(&before, "payple_reconcile_lookups", &[])
    );
    good.close().await;
}

/// The push URL is a secret: `--help` names the variable but never shows its value, and a
/// refused URL (plain http off loopback) stops the run with exit 3 before any lookup, the
/// error naming the flag and the host only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_push_url_is_a_secret_checked_before_any_lookup() {
    const SECRET: &str = "SECRET-push-token";
    let mut cmd = crate::helpers::command("http://127.0.0.1:9");
    cmd.env(
        "PAYPLE_METRICS_PUSH_URL",
        format!("https://push.example/{SECRET}"),
    )
    .args(["run", "--help"]);
    let out = crate::helpers::output_of(cmd).await;
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("PAYPLE_METRICS_PUSH_URL"), "{help}");
    assert!(help.contains("--metrics-instance"), "{help}");
    assert!(!help.contains(SECRET), "{help}");

    let ran = Scenario::new()
        .keys(3, "push-refused")
        .env(
            "PAYPLE_METRICS_PUSH_URL",
            &format!("http://push.example:9091/{SECRET}"),
        )
        .run()
        .await;
    ran.expect_exit(3);
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&ran.out.stdout),
        ran.stderr()
    );
    assert!(shown.contains("--metrics-push"), "{shown}");
    assert!(shown.contains("push.example"), "{shown}");
    assert!(!shown.contains(SECRET), "{shown}");
    assert_eq!(ran.sim.stats().lookups, 0);
    assert_eq!(ran.sim.stats().auth_calls, 0);
    ran.close().await;
}

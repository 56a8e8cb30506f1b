//! The performance report (`cargo bench`): the real binary against the simulator on
//! loopback, each run a child process measured with `wait4` (peak RSS, CPU time), beside a
//! naive baseline written here (sequential lookups, a new auth per key, one insert per
//! row). Prints a Markdown table. `BENCH_QUICK=1` skips the million-key run.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use payple_reconcile::domain::{KeyDetails, KeyStatus, LookupOutcome};
use payple_reconcile::simulator::{TEST_CST_ID, TEST_CUST_KEY, TEST_REFERER};
use payple_reconcile::store::{CheckRow, Store, now_text};

const BIN: &str = env!("CARGO_BIN_EXE_payple-reconcile");

/// A simulator child process.
struct Sim {
    child: Child,
    url: String,
    log: Option<PathBuf>,
}

impl Sim {
    fn start(extra: &[&str], log: Option<PathBuf>) -> Sim {
        let mut cmd = Command::new(BIN);
        cmd.args(["--log-level", "error", "simulate", "--port", "0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(log) = &log {
            cmd.arg("--request-log").arg(log);
        }
        let mut child = cmd.spawn().expect("simulator starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("simulator prints its URL");
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .expect("listening line")
            .to_owned();
        Sim { child, url, log }
    }

    /// Arrival times (ms) of the lookups logged since the log was last truncated.
    fn lookup_times(&self) -> Vec<u64> {
        let Some(log) = &self.log else {
            return Vec::new();
        };
        let text = std::fs::read_to_string(log).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["kind"] == "lookup")
            .filter_map(|v| v["t_ms"].as_u64())
            .collect()
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one child process used.
struct Usage {
    wall: Duration,
    cpu: Duration,
    max_rss_kib: i64,
    summary: serde_json::Value,
}

/// Runs `payple-reconcile run` against `sim` and measures it.
#[allow(clippy::zombie_processes)] // reaped by `wait4` below, which also gives its usage
fn run_job(sim: &Sim, csv: &Path, db: &str, args: &[&str]) -> Usage {
    let started = Instant::now();
    let child = Command::new(BIN)
        .args(["--log-level", "error", "run", "--csv"])
        .arg(csv)
        .args(["--payple-url", &sim.url, "--database-url", db])
        .args(args)
        .env("PAYPLE_CST_ID", TEST_CST_ID)
        .env("PAYPLE_CUST_KEY", TEST_CUST_KEY)
        .env("PAYPLE_REFERER", TEST_REFERER)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("job starts");
    let pid = child.id() as libc::pid_t;
    let mut stdout = child.stdout.expect("stdout");
    let mut out = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut out).expect("job output");
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our own child, status and usage are valid for writing.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4");
    let wall = started.elapsed();
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    let summary = out
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_default();
    Usage {
        wall,
        cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
        max_rss_kib: usage.ru_maxrss,
        summary,
    }
}

fn write_keys(dir: &Path, n: usize) -> PathBuf {
    let path = dir.join(format!("keys-{n}.csv"));
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path).expect("csv"));
    writeln!(out, "payer_id,customer_ref").expect("write");
    for i in 0..n {
        let h = payple_reconcile::domain::stable_hash(format!("bench-{i}").as_bytes());
        let h2 = payple_reconcile::domain::stable_hash(format!("{i}-bench").as_bytes());
        writeln!(out, "{h:016x}{h2:016X},CUST-{i:07}").expect("write");
    }
    out.flush().expect("flush");
    path
}

fn sqlite(dir: &Path, name: &str) -> String {
    let path = dir.join(format!("{name}.db"));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    format!("sqlite://{}", path.display())
}

fn per_second(summary: &serde_json::Value) -> f64 {
    summary["lookups_per_second"].as_f64().unwrap_or(0.0)
}

/// Achieved pace from arrival times: lookups after the first, over the time they spanned.
fn achieved_rate(times: &[u64]) -> f64 {
    match (times.iter().min(), times.iter().max()) {
        (Some(first), Some(last)) if last > first => {
            (times.len() - 1) as f64 / ((last - first) as f64 / 1000.0)
        }
        _ => 0.0,
    }
}

/// The naive client: for every key a new auth, one lookup, one autocommitted insert.
async fn naive(sim_url: &str, keys: &[String], db: &str) -> (f64, Duration) {
    let store = Store::open(db).await.expect("store");
    let http = payple_reconcile::http::client_builder()
        .build()
        .expect("http client");
    let cpu_before = self_cpu();
    let started = Instant::now();
    for key in keys {
        let auth: serde_json::Value = http
            .post(format!("{sim_url}/php/auth.php"))
            .header("Referer", TEST_REFERER)
            .json(&serde_json::json!({"cst_id": TEST_CST_ID, "custKey": TEST_CUST_KEY, "PCD_PAY_WORK": "PUSERINFO"}))
            .send()
            .await
            .expect("auth")
            .json()
            .await
            .expect("auth json");
        let url = auth["return_url"].as_str().expect("return_url").to_owned();
        let body = http
            .post(url)
            .header("Referer", TEST_REFERER)
            .json(&serde_json::json!({
                "PCD_CST_ID": auth["cst_id"], "PCD_CUST_KEY": auth["custKey"],
                "PCD_AUTH_KEY": auth["AuthKey"], "PCD_PAYER_ID": key,
            }))
            .send()
            .await
            .expect("lookup")
            .bytes()
            .await
            .expect("body");
        let text = String::from_utf8_lossy(&body);
        let reply: serde_json::Value =
            serde_json::from_str(text.trim_start_matches('\u{feff}')).unwrap_or_default();
        let active = reply["PCD_PAY_RST"] == "success";
        let row = CheckRow {
            payer_id: key.clone(),
            customer_ref: None,
            outcome: LookupOutcome {
                status: if active {
                    KeyStatus::Active
                } else {
                    KeyStatus::Gone
                },
                details: KeyDetails::default(),
                result_code: reply["PCD_PAY_CODE"].as_str().map(str::to_owned),
                result_msg: None,
                attempts: 1,
            },
            checked_at: now_text(),
        };
        store.insert_checks(1, &[row]).await.expect("insert");
    }
    let rate = keys.len() as f64 / started.elapsed().as_secs_f64();
    (rate, self_cpu() - cpu_before)
}

fn self_cpu() -> Duration {
    // SAFETY: an all-zero rusage is valid; getrusage fills it for this process.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: usage is valid for writing.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Rows per second written through the store in 500-row transactions.
async fn write_rate(url: &str, rows: usize) -> f64 {
    let store = Store::open(url).await.expect("store");
    let batch: Vec<CheckRow> = (0..rows)
        .map(|i| CheckRow {
            payer_id: format!(
                "{:032x}",
                payple_reconcile::domain::stable_hash(format!("w{i}").as_bytes())
            ),
            customer_ref: Some(format!("CUST-{i}")),
            outcome: LookupOutcome {
                status: KeyStatus::Active,
                details: KeyDetails {
                    card_name: Some("BC카드".into()),
                    card_mask: Some("1111-****-****-2222".into()),
                    ..KeyDetails::default()
                },
                result_code: Some("0000".into()),
                result_msg: Some("회원조회 성공".into()),
                attempts: 1,
            },
            checked_at: now_text(),
        })
        .collect();
    let started = Instant::now();
    for chunk in batch.chunks(500) {
        store.insert_checks(1, chunk).await.expect("insert");
    }
    let rate = rows as f64 / started.elapsed().as_secs_f64();
    store.close().await;
    rate
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is taken.
    let quick = std::env::var("BENCH_QUICK").as_deref() == Ok("1");
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("payple-reconcile performance report ({cores} cores; simulator on loopback)\n");
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut row = |name: String, value: String| {
        println!("| {name} | {value} |");
        rows.push((name, value));
    };
    println!("| measure | figure |\n| --- | --- |");

    let sim = Sim::start(&[], None);
    let k20 = write_keys(d, 20_000);
    for c in [8, 32, 128] {
        let u = run_job(
            &sim,
            &k20,
            &sqlite(d, "thr"),
            &["--rate", "0", "--concurrency", &c.to_string()],
        );
        let looked = u.summary["checked_now"].as_f64().unwrap_or(0.0);
        row(
            format!("lookups/s, no rate limit, --concurrency {c} (20,000 keys)"),
            format!(
                "{:.0} ({:.2} CPU s per 10,000 lookups)",
                per_second(&u.summary),
                u.cpu.as_secs_f64() / looked.max(1.0) * 10_000.0
            ),
        );
    }

    let naive_keys: Vec<String> = (0..1000).map(|i| format!("{:032x}", i * 7919)).collect();
    let (naive_rate, naive_cpu) = rt.block_on(naive(&sim.url, &naive_keys, &sqlite(d, "naive")));
    row(
        "naive baseline lookups/s (sequential, auth per key, insert per row; 1,000 keys)".into(),
        format!(
            "{naive_rate:.0} ({:.2} CPU s per 10,000 lookups, client side)",
            naive_cpu.as_secs_f64() / 1000.0 * 10_000.0
        ),
    );

    for (rate, n) in [(50u32, 500usize), (200, 2_000), (1_000, 10_000)] {
        let log = d.join(format!("rate-{rate}.jsonl"));
        let paced = Sim::start(&[], Some(log));
        let keys = write_keys(d, n);
        let u = run_job(
            &paced,
            &keys,
            &sqlite(d, "rate"),
            &["--rate", &rate.to_string(), "--concurrency", "32"],
        );
        let achieved = achieved_rate(&paced.lookup_times());
        row(
            format!("achieved / configured, --rate {rate} ({n} keys)"),
            format!(
                "{achieved:.1}/s = {:.3} (run {:.1} s)",
                achieved / f64::from(rate),
                u.wall.as_secs_f64()
            ),
        );
    }

    let slow_log = d.join("slow.jsonl");
    let slow = Sim::start(&["--latency-ms", "100"], Some(slow_log));
    let k3200 = write_keys(d, 3_200);
    run_job(
        &slow,
        &k3200,
        &sqlite(d, "slow"),
        &["--rate", "0", "--concurrency", "64"],
    );
    let achieved = achieved_rate(&slow.lookup_times());
    row(
        "100 ms latency, --concurrency 64: achieved lookups/s vs the 640 limit".into(),
        format!("{achieved:.0} = {:.3}", achieved / 640.0),
    );
    drop(slow);

    let k10 = write_keys(d, 10_000);
    let small = run_job(
        &sim,
        &k10,
        &sqlite(d, "rss10k"),
        &["--rate", "0", "--concurrency", "32"],
    );
    row(
        "peak RSS, 10,000 keys from CSV (SQLite)".into(),
        format!("{:.1} MiB", small.max_rss_kib as f64 / 1024.0),
    );
    if !quick {
        let k1m = write_keys(d, 1_000_000);
        let big = run_job(
            &sim,
            &k1m,
            &sqlite(d, "rss1m"),
            &["--rate", "0", "--concurrency", "32"],
        );
        row(
            "peak RSS, 1,000,000 keys from CSV (SQLite)".into(),
            format!(
                "{:.1} MiB = {:.2} x the 10,000-key figure (run {:.0} s, {:.0} lookups/s)",
                big.max_rss_kib as f64 / 1024.0,
                big.max_rss_kib as f64 / small.max_rss_kib.max(1) as f64,
                big.wall.as_secs_f64(),
                per_second(&big.summary)
            ),
        );
    }

    let sqlite_rate = rt.block_on(write_rate(&sqlite(d, "writes"), 100_000));
    row(
        "results written per second, SQLite (500-row transactions)".into(),
        format!("{sqlite_rate:.0}"),
    );
    let pg = std::env::var("BENCH_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let pg_rate = rt.block_on(async {
        use sqlx::Executor;
        sqlx::any::install_default_drivers();
        let admin = sqlx::AnyPool::connect(&pg).await.ok()?;
        let name = format!("pr_bench_{}", std::process::id());
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .ok()?;
        let base = pg.rsplit_once('/').map_or(pg.as_str(), |(b, _)| b);
        let rate = write_rate(&format!("{base}/{name}"), 100_000).await;
        let _ = admin
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE {name} WITH (FORCE)"
            )))
            .await;
        Some(rate)
    });
    row(
        "results written per second, PostgreSQL (500-row transactions)".into(),
        pg_rate.map_or_else(|| "skipped: no server".to_owned(), |r| format!("{r:.0}")),
    );
    drop(sim);
}

//! The performance report (`cargo bench`): the real binary against the simulator (a
//! separate process) on loopback, each run a child process measured with `wait4` (user
//! and system CPU) and its own `VmHWM` (peak RSS), on random 32-character base64 keys
//! like real ones: 10,000 keys (the median of five runs) and 1,000,000 keys side by side,
//! and a Python asyncio client (also the median of five)
//! (`asyncio_client.py` beside this file; aiohttp is installed with pip if missing) on
//! the same keys and the same simulator; then the three results databases side by side
//! (`databases`). Prints Markdown tables. `BENCH_QUICK=1` skips the million-key run;
//! `BENCH_ONLY=databases` runs only the databases' table.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use payple_reconcile::domain::{KeyDetails, KeyStatus, LookupOutcome};
use payple_reconcile::simulator::{TEST_CST_ID, TEST_CUST_KEY, TEST_REFERER};
use payple_reconcile::store::writer::BATCH_ROWS;
use payple_reconcile::store::{CheckRow, Store};
use rand::RngCore;

mod databases;
#[path = "../support/peak_rss.rs"]
mod peak_rss;

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
    user: Duration,
    sys: Duration,
    max_rss_kib: i64,
    /// The last line of its stdout, as JSON.
    summary: serde_json::Value,
}

impl Usage {
    fn cpu(&self) -> Duration {
        self.user + self.sys
    }
}

/// Runs `payple-reconcile run` against `sim` and measures it.
fn run_job(sim: &Sim, csv: &Path, db: &str, args: &[&str]) -> Usage {
    let mut cmd = Command::new(BIN);
    cmd.args(["--log-level", "error", "run", "--csv"])
        .arg(csv)
        .args(["--payple-url", &sim.url, "--database-url", db])
        .args(args);
    measure(cmd)
}

/// Runs `cmd` with the test partner's credentials and measures it.
#[allow(clippy::zombie_processes)] // reaped by `wait4` below, which also gives its usage
fn measure(mut cmd: Command) -> Usage {
    let started = Instant::now();
    let child = cmd
        .env("PAYPLE_CST_ID", TEST_CST_ID)
        .env("PAYPLE_CUST_KEY", TEST_CUST_KEY)
        .env("PAYPLE_REFERER", TEST_REFERER)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("process starts");
    let pid = child.id() as libc::pid_t;
    let peak_reader = std::thread::spawn(move || peak_rss::peak_rss_kib(pid as u32));
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
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "measured process failed ({status}): {out}"
    );
    Usage {
        wall,
        user: tv(usage.ru_utime),
        sys: tv(usage.ru_stime),
        max_rss_kib: peak_reader.join().expect("peak reader"),
        summary,
    }
}

/// Standard base64 of `bytes` (with padding).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let b = [
            group[0],
            *group.get(1).unwrap_or(&0),
            *group.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= group.len() {
                out.push(ALPHABET[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `n` random keys like Payple's (32 base64 characters: 24 random bytes), in random order.
fn write_keys(dir: &Path, n: usize) -> PathBuf {
    let path = dir.join(format!("keys-{n}.csv"));
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path).expect("csv"));
    writeln!(out, "payer_id,customer_ref").expect("write");
    let mut rng = rand::rng();
    let mut bytes = [0u8; 24];
    for i in 0..n {
        rng.fill_bytes(&mut bytes);
        writeln!(out, "{},CUST-{i:07}", base64(&bytes)).expect("write");
    }
    out.flush().expect("flush");
    path
}

/// Installs aiohttp with pip if Python cannot import it; `false` if it stays missing.
fn ensure_aiohttp() -> bool {
    let has = || {
        Command::new("python3")
            .args(["-c", "import aiohttp"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if has() {
        return true;
    }
    eprintln!("installing aiohttp for the asyncio comparison (pip install aiohttp)");
    let _ = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "aiohttp"])
        .status();
    has()
}

/// The Python asyncio client on `keys` against `sim`.
fn run_asyncio(sim: &Sim, keys: &Path, db: &Path, concurrency: usize) -> Usage {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bench/asyncio_client.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script)
        .arg(&sim.url)
        .arg(keys)
        .arg(db)
        .arg(concurrency.to_string());
    measure(cmd)
}

/// Microseconds of `cpu` per lookup.
fn micros_per(cpu: Duration, lookups: f64) -> f64 {
    cpu.as_secs_f64() * 1e6 / lookups.max(1.0)
}

fn mib(kib: i64) -> f64 {
    kib as f64 / 1024.0
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

/// Rows per second written through the store in the writer's batches.
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
            checked_at: chrono::Utc::now(),
        })
        .collect();
    let started = Instant::now();
    for chunk in batch.chunks(BATCH_ROWS) {
        store.insert_checks(1, chunk).await.expect("insert");
    }
    let rate = rows as f64 / started.elapsed().as_secs_f64();
    store.close().await;
    rate
}

/// Runs of each short measurement (10,000 keys, job and asyncio client).
const SMALL_RUNS: usize = 5;

/// Runs `run` `n` times and keeps the median run by `figure`, printing every figure.
fn median_of(
    n: usize,
    what: &str,
    figure: impl Fn(&Usage) -> f64,
    mut run: impl FnMut() -> Usage,
) -> Usage {
    let mut runs: Vec<Usage> = (0..n).map(|_| run()).collect();
    runs.sort_by(|a, b| figure(a).total_cmp(&figure(b)));
    let all: Vec<String> = runs.iter().map(|u| format!("{:.0}", figure(u))).collect();
    println!("{what}, sorted (the median is used): {}", all.join(", "));
    runs.swap_remove(n / 2)
}

/// One throughput run: `--rate 0 --concurrency 32`, SQLite results.
fn throughput(sim: &Sim, keys: &Path, db: &str) -> Usage {
    run_job(sim, keys, db, &["--rate", "0", "--concurrency", "32"])
}

/// Prints the side-by-side table of the 10,000- and (unless quick) 1,000,000-key runs.
fn scale_table(runs: &[(&str, &Usage)]) {
    let head: Vec<&str> = runs.iter().map(|(n, _)| *n).collect();
    println!("| measure | {} |", head.join(" | "));
    println!("| --- |{}", " --- |".repeat(runs.len()));
    let line = |name: &str, f: &dyn Fn(&Usage) -> String| {
        let cells: Vec<String> = runs.iter().map(|(_, u)| f(u)).collect();
        println!("| {name} | {} |", cells.join(" | "));
    };
    let looked = |u: &Usage| u.summary["checked_now"].as_f64().unwrap_or(0.0);
    line("lookups/s (whole run, staging included)", &|u| {
        format!("{:.0}", per_second(&u.summary))
    });
    line("wall time", &|u| format!("{:.1} s", u.wall.as_secs_f64()));
    line("user CPU per lookup", &|u| {
        format!("{:.1} µs", micros_per(u.user, looked(u)))
    });
    line("system CPU per lookup", &|u| {
        format!("{:.1} µs", micros_per(u.sys, looked(u)))
    });
    line("lookups per CPU second", &|u| {
        format!("{:.0}", looked(u) / u.cpu().as_secs_f64().max(1e-9))
    });
    line("peak RSS", &|u| format!("{:.1} MiB", mib(u.max_rss_kib)));
    if let [(_, small), (_, big)] = runs {
        println!(
            "\nlookups/s at 1,000,000 keys = {:.2} x the 10,000-key figure (target >= 0.8)",
            per_second(&big.summary) / per_second(&small.summary).max(1e-9)
        );
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is taken.
    let quick = std::env::var("BENCH_QUICK").as_deref() == Ok("1");
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "payple-reconcile performance report ({cores} cores; simulator in its own process on \
         loopback; --rate 0 --concurrency 32; random 32-character base64 keys; SQLite)\n"
    );

    let sim = Sim::start(&[], None);
    if std::env::var("BENCH_ONLY").as_deref() == Ok("databases") {
        databases::compare(&rt, &sim, d, BIN);
        return;
    }
    let k10 = write_keys(d, 10_000);
    // The 10,000-key run lasts about half a second and swings by half between runs: the
    // median of five, by lookups/s, is the figure the ratios use.
    let small = median_of(
        SMALL_RUNS,
        "10,000-key runs, lookups/s",
        |u| per_second(&u.summary),
        || throughput(&sim, &k10, &sqlite(d, "k10")),
    );
    let big = (!quick).then(|| {
        let k1m = write_keys(d, 1_000_000);
        throughput(&sim, &k1m, &sqlite(d, "k1m"))
    });
    let mut runs = vec![("10,000 keys", &small)];
    if let Some(big) = &big {
        runs.push(("1,000,000 keys", big));
    }
    scale_table(&runs);
    databases::compare(&rt, &sim, d, BIN);

    println!();
    if ensure_aiohttp() {
        let py_per_cpu_of = |u: &Usage| {
            u.summary["lookups"].as_f64().unwrap_or(0.0) / u.cpu().as_secs_f64().max(1e-9)
        };
        let py = median_of(
            SMALL_RUNS,
            "asyncio runs, lookups per CPU second",
            py_per_cpu_of,
            || {
                let _ = std::fs::remove_file(d.join("asyncio.db"));
                run_asyncio(&sim, &k10, &d.join("asyncio.db"), 32)
            },
        );
        let py_looked = py.summary["lookups"].as_f64().unwrap_or(0.0);
        let rs_looked = small.summary["checked_now"].as_f64().unwrap_or(0.0);
        let py_per_cpu = py_looked / py.cpu().as_secs_f64().max(1e-9);
        let rs_per_cpu = rs_looked / small.cpu().as_secs_f64().max(1e-9);
        println!(
            "Python asyncio client (aiohttp, one session, semaphore 32, executemany batches), \
             10,000 keys: {:.0} lookups/s, {py_per_cpu:.0} lookups per CPU second, \
             {:.1} MiB peak RSS\n\
             payple-reconcile / asyncio, lookups per CPU second: {:.2} (target >= 5)",
            py_looked / py.wall.as_secs_f64().max(1e-9),
            mib(py.max_rss_kib),
            rs_per_cpu / py_per_cpu.max(1e-9)
        );
    } else {
        println!("Python asyncio client: skipped (python3 with aiohttp unavailable)");
    }

    println!("\n| measure | figure |\n| --- | --- |");
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
        println!(
            "| achieved / configured, --rate {rate} ({n} keys) | {achieved:.1}/s = {:.3} \
             (run {:.1} s, {:.2} CPU s) |",
            achieved / f64::from(rate),
            u.wall.as_secs_f64(),
            u.cpu().as_secs_f64()
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
    println!(
        "| 100 ms latency, --concurrency 64: achieved lookups/s vs the 640 limit | \
         {achieved:.0} = {:.3} |",
        achieved / 640.0
    );
    drop(slow);

    let sqlite_rate = rt.block_on(write_rate(&sqlite(d, "writes"), 100_000));
    println!(
        "| results written per second, SQLite ({BATCH_ROWS}-row batches) | {sqlite_rate:.0} |"
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
    println!(
        "| results written per second, PostgreSQL ({BATCH_ROWS}-row batches) | {} |",
        pg_rate.map_or_else(|| "skipped: no server".to_owned(), |r| format!("{r:.0}"))
    );
    drop(sim);
}

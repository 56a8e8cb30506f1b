//! The three results databases side by side: the same random keys (200,000 by default,
//! `BENCH_DB_KEYS`), the same simulator, only `--database-url` changed. Per database:
//! lookups/s and its ratio to SQLite's, staging time (from the `starting run` to the `key
//! list complete` log line), the job's CPU, the database server's CPU (its processes'
//! `/proc` times read through the run, where readable; other work on the same server
//! counts too) and peak RSS.
//! `BENCH_BASELINE_BIN` names an older binary to run interleaved with this one, each
//! database's runs back to back, so that a shared machine's load falls on both alike.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use payple_reconcile::simulator::{TEST_CST_ID, TEST_CUST_KEY, TEST_REFERER};

use super::{Sim, mib, peak_rss, per_second, sqlite, write_keys};

/// A database to measure: its name, its admin URL and whether it is PostgreSQL (none for
/// SQLite), and the names of its server's processes.
type Database<'a> = (&'a str, Option<(&'a str, bool)>, &'a [&'a str]);

/// One measured run against one database.
struct DbRun {
    lookups_per_second: f64,
    wall: Duration,
    staging: Option<Duration>,
    job_cpu: Duration,
    server_cpu: Option<Duration>,
    peak_rss_kib: i64,
}

/// A server database created for the benchmark and dropped after it.
struct ServerDb {
    admin: String,
    name: String,
    url: String,
    postgres: bool,
}

impl ServerDb {
    async fn create(admin: &str, postgres: bool) -> Option<ServerDb> {
        use sqlx::Executor;
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(admin).await.ok()?;
        let name = format!("pr_bench_{}_{}", std::process::id(), rand::random::<u32>());
        pool.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .ok()?;
        pool.close().await;
        let base = admin.rsplit_once('/').map_or(admin, |(b, _)| b);
        Some(ServerDb {
            admin: admin.to_owned(),
            url: format!("{base}/{name}"),
            name,
            postgres,
        })
    }

    async fn drop_it(self) {
        use sqlx::Executor;
        if let Ok(pool) = sqlx::AnyPool::connect(&self.admin).await {
            let force = if self.postgres { " WITH (FORCE)" } else { "" };
            let sql = format!("DROP DATABASE IF EXISTS {}{force}", self.name);
            let _ = pool.execute(sqlx::AssertSqlSafe(sql)).await;
            pool.close().await;
        }
    }
}

/// CPU ticks used so far by each process whose name is one of `names`, by pid; `None`
/// when `/proc` cannot be read.
fn server_ticks(names: &[String]) -> Option<HashMap<u32, u64>> {
    let mut ticks = HashMap::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if !names.iter().any(|n| n == &stat[open + 1..close]) {
            continue;
        }
        // After the name: state is field 3; utime and stime are fields 14 and 15.
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        let utime: u64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0);
        let stime: u64 = fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0);
        ticks.insert(pid, utime + stime);
    }
    Some(ticks)
}

/// The server's CPU time during a run, read every 50 ms: PostgreSQL's backends serving
/// the job's connections exit with it, so a reading after the run alone misses them.
struct ServerCpu {
    stop: Arc<AtomicBool>,
    sampler: std::thread::JoinHandle<Option<Duration>>,
}

impl ServerCpu {
    fn start(names: &[&str]) -> Self {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let sampler = std::thread::spawn(move || {
            let before = server_ticks(&names)?;
            let mut last = before.clone();
            loop {
                let done = stopped.load(Ordering::Relaxed);
                last.extend(server_ticks(&names).unwrap_or_default());
                if done {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if last.is_empty() {
                return None;
            }
            let used: u64 = last
                .iter()
                .map(|(pid, t)| t.saturating_sub(before.get(pid).copied().unwrap_or(0)))
                .sum();
            // SAFETY: sysconf only reads a configuration value.
            let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
            Some(Duration::from_secs_f64(used as f64 / per_sec))
        });
        Self { stop, sampler }
    }

    fn finish(self) -> Option<Duration> {
        self.stop.store(true, Ordering::Relaxed);
        self.sampler.join().expect("server CPU sampler")
    }
}

/// Runs `bin run` once on `db` and measures it, reading the staging time from its log.
#[allow(clippy::zombie_processes)] // reaped by `wait4` below, which also gives its usage
fn run_on(bin: &str, sim: &Sim, keys: &Path, db: &str, server: &[&str]) -> DbRun {
    let server_cpu = ServerCpu::start(server);
    let started = Instant::now();
    let mut child = Command::new(bin)
        .args(["--log-level", "info", "run", "--csv"])
        .arg(keys)
        .args(["--payple-url", &sim.url, "--database-url", db])
        .args(["--rate", "0", "--concurrency", "32"])
        .env("PAYPLE_CST_ID", TEST_CST_ID)
        .env("PAYPLE_CUST_KEY", TEST_CUST_KEY)
        .env("PAYPLE_REFERER", TEST_REFERER)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("job starts");
    let pid = child.id() as libc::pid_t;
    let peak_reader = std::thread::spawn(move || peak_rss::peak_rss_kib(pid as u32));
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    let log_reader = std::thread::spawn(move || {
        let (mut from, mut to) = (None, None);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("starting run") {
                from = Some(Instant::now());
            } else if line.contains("key list complete") {
                to = Some(Instant::now());
            } else if line.contains("ERROR") {
                eprintln!("{line}");
            }
        }
        let _ = tx.send(from.zip(to).map(|(a, b)| b - a));
    });
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().expect("stdout"), &mut out)
        .expect("job output");
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our own child, status and usage are valid for writing.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4");
    let wall = started.elapsed();
    let server_cpu = server_cpu.finish();
    log_reader.join().expect("log reader");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "measured process failed ({status}) on {}: {out}",
        db.split(':').next().unwrap_or_default()
    );
    let summary: serde_json::Value = out
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_default();
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    DbRun {
        lookups_per_second: per_second(&summary),
        wall,
        staging: rx.recv().ok().flatten(),
        job_cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
        server_cpu,
        peak_rss_kib: peak_reader.join().expect("peak reader"),
    }
}

/// Prints the table of the three databases (and the baseline binary's runs, if given).
pub(super) fn compare(rt: &tokio::runtime::Runtime, sim: &Sim, dir: &Path, bin: &str) {
    let n: usize = std::env::var("BENCH_DB_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let baseline = std::env::var("BENCH_BASELINE_BIN").ok();
    let keys = write_keys(dir, n);
    let pg_admin = std::env::var("BENCH_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let my_admin = std::env::var("BENCH_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/mysql".to_owned());
    let mut binaries = vec![("this build", bin.to_owned())];
    if let Some(old) = baseline {
        binaries.insert(0, ("baseline", old));
    }
    println!(
        "\nResults databases side by side: {n} random keys, --rate 0 --concurrency 32, \
         simulator in its own process; server CPU counts all work on that server.\n"
    );
    println!(
        "| database | binary | lookups/s | vs SQLite | wall | staging | job CPU | server CPU \
         | peak RSS |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    let mut sqlite_rate = vec![0.0; binaries.len()];
    let databases: [Database<'_>; 3] = [
        ("SQLite", None, &[]),
        ("PostgreSQL", Some((pg_admin.as_str(), true)), &["postgres"]),
        (
            "MySQL (MariaDB)",
            Some((my_admin.as_str(), false)),
            &["mariadbd", "mysqld"],
        ),
    ];
    for (name, server, processes) in databases {
        for (b, (label, path)) in binaries.iter().enumerate() {
            let created = match server {
                None => None,
                Some((admin, pg)) => match rt.block_on(ServerDb::create(admin, pg)) {
                    Some(db) => Some(db),
                    None => {
                        println!("| {name} | {label} | skipped: no server | | | | | | |");
                        continue;
                    }
                },
            };
            let url = created
                .as_ref()
                .map_or_else(|| sqlite(dir, &format!("db-{b}")), |db| db.url.clone());
            let run = run_on(path, sim, &keys, &url, processes);
            if let Some(db) = created {
                rt.block_on(db.drop_it());
            }
            if server.is_none() {
                sqlite_rate[b] = run.lookups_per_second;
            }
            let secs = |d: Option<Duration>| {
                d.map_or("n/a".to_owned(), |d| format!("{:.1} s", d.as_secs_f64()))
            };
            println!(
                "| {name} | {label} | {:.0} | {:.2}× | {:.1} s | {} | {:.1} s | {} | {:.1} MiB |",
                run.lookups_per_second,
                run.lookups_per_second / sqlite_rate[b].max(1e-9),
                run.wall.as_secs_f64(),
                secs(run.staging),
                run.job_cpu.as_secs_f64(),
                secs(run.server_cpu),
                mib(run.peak_rss_kib),
            );
        }
    }
    println!("\nTargets: PostgreSQL and MySQL each >= 0.60× SQLite; peak RSS < 64 MiB.");
}

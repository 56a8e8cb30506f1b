//! Shared test plumbing: the simulator on an ephemeral port, a fresh results database per
//! test (a SQLite file, or a new PostgreSQL / MySQL database), and the real binary.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use payple_reconcile::simulator::{self, SimConfig, SimHandle};
use payple_reconcile::store::Store;

pub const BIN: &str = env!("CARGO_BIN_EXE_payple-reconcile");

/// Starts a simulator on an ephemeral loopback port.
pub async fn spawn_sim(config: SimConfig) -> SimHandle {
    let addr: SocketAddr = "127.0.0.1:0".parse().expect("loopback address");
    simulator::start(config, addr)
        .await
        .expect("simulator starts")
}

/// A results database that exists only for one test.
pub struct TestDb {
    pub url: String,
    pub kind: DbKind,
    /// Keeps a SQLite file's folder alive.
    _dir: Option<tempfile::TempDir>,
    admin: Option<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbKind {
    Sqlite,
    Postgres,
    MySql,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique_name(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        chrono::Utc::now().timestamp_micros() % 1_000_000
    )
}

impl TestDb {
    /// A SQLite file in a fresh temporary folder.
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("results.db").display());
        Self {
            url,
            kind: DbKind::Sqlite,
            _dir: Some(dir),
            admin: None,
        }
    }

    /// A fresh database on the PostgreSQL server at 127.0.0.1:5432, or `None` (with the
    /// reason printed) when there is none and `REQUIRE_POSTGRES` is not `1`.
    pub async fn postgres() -> Option<Self> {
        let base = std::env::var("TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned());
        Self::server(DbKind::Postgres, &base, "postgres", "REQUIRE_POSTGRES").await
    }

    /// A fresh database on the MySQL/MariaDB server at 127.0.0.1:3306, or `None` like
    /// [`Self::postgres`] (`REQUIRE_MYSQL`).
    pub async fn mysql() -> Option<Self> {
        let base = std::env::var("TEST_MYSQL_URL")
            .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".to_owned());
        Self::server(DbKind::MySql, &base, "mysql", "REQUIRE_MYSQL").await
    }

    async fn server(kind: DbKind, base: &str, admin_db: &str, require: &str) -> Option<Self> {
        use sqlx::Executor;
        sqlx::any::install_default_drivers();
        let admin_url = format!("{base}/{admin_db}");
        let name = unique_name("pr_test");
        let created = async {
            let pool = sqlx::AnyPool::connect(&admin_url).await?;
            pool.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .await?;
            pool.close().await;
            Ok::<_, sqlx::Error>(())
        }
        .await;
        match created {
            Ok(()) => Some(Self {
                url: format!("{base}/{name}"),
                kind,
                _dir: None,
                admin: Some((admin_url, name)),
            }),
            Err(e) if std::env::var(require).as_deref() == Ok("1") => {
                panic!("{require}=1 but {kind:?} at {base} is not usable: {e}")
            }
            Err(e) => {
                eprintln!(
                    "skipping: no {kind:?} server at {base} ({e}); set {require}=1 to fail instead"
                );
                None
            }
        }
    }

    /// Opens (and migrates) the store.
    pub async fn store(&self) -> Store {
        Store::open(&self.url).await.expect("store opens")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((admin_url, name)) = self.admin.take() else {
            return;
        };
        // Best effort, on a thread of its own: Drop cannot await.
        let kind = self.kind;
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                use sqlx::Executor;
                if let Ok(pool) = sqlx::AnyPool::connect(&admin_url).await {
                    let force = if kind == DbKind::Postgres {
                        " WITH (FORCE)"
                    } else {
                        ""
                    };
                    let _ = pool
                        .execute(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name}{force}"
                        )))
                        .await;
                    pool.close().await;
                }
            });
        })
        .join();
    }
}

/// Writes a CSV with a `payer_id,customer_ref` header.
pub fn write_csv(dir: &Path, name: &str, ids: &[String]) -> PathBuf {
    let path = dir.join(name);
    let mut text = String::from("payer_id,customer_ref\n");
    for (i, id) in ids.iter().enumerate() {
        text.push_str(&format!("{id},CUST-{i:05}\n"));
    }
    std::fs::write(&path, text).expect("write csv");
    path
}

/// `n` distinct, realistic-looking billing keys (32 base64-ish characters).
pub fn payer_ids(n: usize, seed: &str) -> Vec<String> {
    (0..n)
        .map(|i| {
            let h = payple_reconcile::domain::stable_hash(format!("{seed}-{i}").as_bytes());
            let h2 = payple_reconcile::domain::stable_hash(format!("{i}-{seed}").as_bytes());
            format!("{h:016x}{h2:016X}")
        })
        .collect()
}

/// The binary, pointed at a simulator with the test partner's credentials, logs quiet.
pub fn command(sim_url: &str) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PAYPLE_URL", sim_url)
        .env("PAYPLE_CST_ID", simulator::TEST_CST_ID)
        .env("PAYPLE_CUST_KEY", simulator::TEST_CUST_KEY)
        .env("PAYPLE_REFERER", simulator::TEST_REFERER)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    cmd
}

/// Runs the binary to the end and returns its output.
pub fn run_bin(cmd: &mut Command) -> Output {
    cmd.output().expect("binary runs")
}

/// stdout's JSON lines.
pub fn json_lines(output: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

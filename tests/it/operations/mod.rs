//! Operations: leases, run keys, dry runs, shards, personal data, metrics, MySQL, and the
//! deployment samples under `samples/`.
//!
//! Every run test starts the real binary (through `helpers::Scenario`) against an
//! in-process simulator and a fresh results database, then
//! reads the database, the simulator's counters and the process's stdout, stderr and exit
//! code. The Kubernetes manifests and the Dockerfile cannot run here (no cluster, no Docker
//! engine): they are parsed and their required fields checked, and the manifests' container
//! arguments are validated by the binary's own parser and settings. The crontab line is
//! executed as cron would (with the paths moved into a temporary folder).

mod hardening;
mod hardening_text;
mod leases;
mod metrics;
mod pushgateway;
mod run_keys;
mod samples;
mod shards;
mod storage;
mod systemd;

use std::time::Duration;

use payple_reconcile::store::{RunRecord, Store};
use serde_json::Value;
use sqlx::Row;

// ---- plumbing -----------------------------------------------------------------------------

/// How often `helpers::wait_for_count` looks at the database.
const POLL: Duration = Duration::from_millis(25);

/// Sends `signal` to a running child.
fn send(child: &tokio::process::Child, signal: libc::c_int) {
    let pid = child.id().expect("the child is still running");
    let pid = libc::pid_t::try_from(pid).expect("pid fits");
    // SAFETY: kill(2) with a pid we spawned and a valid signal number.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
}

/// A row of `run_leases`.
#[derive(Debug)]
struct Lease {
    name: String,
    run_id: i64,
    holder: String,
    expires_at: String,
}

async fn leases(store: &Store) -> Vec<Lease> {
    let rows = sqlx::query("SELECT name, run_id, holder, expires_at FROM run_leases ORDER BY name")
        .fetch_all(store.pool())
        .await
        .expect("read run_leases");
    rows.iter()
        .map(|r| Lease {
            name: r.try_get(0).expect("name"),
            run_id: r.try_get(1).expect("run_id"),
            holder: r.try_get(2).expect("holder"),
            expires_at: r.try_get(3).expect("expires_at"),
        })
        .collect()
}

/// All runs, newest first.
async fn runs(store: &Store) -> Vec<RunRecord> {
    store.latest_runs(None, 100).await.expect("list runs")
}

fn run_id_of(summary: &Value) -> i64 {
    summary["run_id"]
        .as_i64()
        .unwrap_or_else(|| panic!("no run_id in {summary}"))
}

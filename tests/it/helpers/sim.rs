//! The in-process simulator on an ephemeral port, its key books, and its ground truth and
//! request log as a test reads them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use payple_reconcile::domain::stable_hash;
use payple_reconcile::simulator::{
    self, Faults, KeyBook, SimConfig, SimHandle, SimKind, derive_key,
};
use serde_json::Value;

/// Starts a simulator on an ephemeral loopback port.
pub async fn spawn_sim(config: SimConfig) -> SimHandle {
    let addr: SocketAddr = "127.0.0.1:0".parse().expect("loopback address");
    simulator::start(config, addr)
        .await
        .expect("simulator starts")
}

/// A simulator configuration with these keys and faults (and optionally a request log),
/// its random choices from seed 7.
pub fn seeded(keys: KeyBook, faults: Faults, log: Option<PathBuf>) -> SimConfig {
    SimConfig {
        keys,
        faults,
        request_log: log,
        seed: 7,
        ..SimConfig::default()
    }
}

/// A simulator answering from the key file at `keys`, its random choices from `seed`.
pub async fn sim_from_file(keys: &Path, seed: u64) -> SimHandle {
    spawn_sim(SimConfig {
        keys: KeyBook::from_file(keys).expect("key file"),
        seed,
        ..SimConfig::default()
    })
    .await
}

/// Faults that answer every lookup after `ms` milliseconds, and nothing else.
pub fn latency(ms: u64) -> Faults {
    Faults {
        latency: Duration::from_millis(ms),
        ..Faults::none()
    }
}

/// The status `derive_key` implies for a key the simulator derives.
pub fn derived_status(payer_id: &str) -> &'static str {
    match derive_key(payer_id).kind {
        SimKind::Card | SimKind::Transfer => "active",
        SimKind::Gone => "gone",
        other => panic!("derive_key gave {other:?}"),
    }
}

/// A key file for the simulator, one JSON object per line (no newline after the last).
pub fn write_key_file(dir: &Path, name: &str, entries: &[Value]) -> PathBuf {
    let path = dir.join(name);
    let text: Vec<String> = entries.iter().map(|e| e.to_string()).collect();
    std::fs::write(&path, text.join("\n")).expect("write key file");
    path
}

/// A JSON Lines key file for the simulator, read back the way the simulator does.
pub fn key_file(dir: &Path, name: &str, lines: &[Value]) -> KeyBook {
    let path = dir.join(name);
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&path, text).expect("write key file");
    KeyBook::from_file(&path).expect("valid key file")
}

/// The simulator request log's key field for a payer id.
pub fn key_hash(id: &str) -> String {
    format!("{:016x}", stable_hash(id.as_bytes()))
}

/// Request-log lines of lookups: the key hash of each, in the order they were written.
pub fn logged_lookups(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("request log {}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("log line"))
        .filter(|l| l["kind"] == "lookup")
        .map(|l| l["key"].as_str().unwrap_or_default().to_owned())
        .collect()
}

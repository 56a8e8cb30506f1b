//! The fault-tolerance suite: crashes, storms, pushback, expiry, database trouble, bad input,
//! secrets, and fuzzing of the two parsers that read what the outside world sends.
//!
//! Every scenario but the fuzzing runs the real binary as a child process against an
//! in-process simulator and a real results database, then compares the results table with
//! the simulator's ground truth: `derive_key(payer_id).kind` (card or transfer → `active`,
//! gone → `gone`). Where a fault decides what a key may end as, the simulator's request log
//! (one line per request: arrival time, fault, 16-hex hash of the payer id) says what each
//! key went through.
//!
//! Random choices (kill moments) come from a seed printed at the start of the test; set
//! `FAULTS_SEED` to replay one.

mod corpus;
mod crashes;
mod database;
mod expiry;
mod fuzz;
mod grace;
mod pushback;
mod secrets;
mod storm;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

// ---- plumbing -----------------------------------------------------------------------------

/// How often `wait_for_rows` looks at the results table.
const POLL: Duration = Duration::from_millis(25);

/// The seed of a test's random choices: `FAULTS_SEED`, or the clock.
fn seed(what: &str) -> u64 {
    let seed = std::env::var("FAULTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("{what}: seed {seed} (FAULTS_SEED={seed} replays it)");
    seed
}

/// One line of the simulator's request log.
#[derive(Debug, Clone, Deserialize)]
struct Logged {
    t_ms: u64,
    kind: String,
    http_status: Option<u16>,
    code: Option<String>,
    key: Option<String>,
    fault: String,
    expired_token: bool,
}

/// Every line of a request log, in arrival order (lines are written when answered).
fn read_log(path: &Path) -> Vec<Logged> {
    let text = std::fs::read_to_string(path).expect("request log");
    let mut lines: Vec<Logged> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("log line {l:?}: {e}")))
        .collect();
    lines.sort_by_key(|l| l.t_ms);
    lines
}

/// The lookups of each key (by hash), in arrival order.
fn lookups_by_key(log: &[Logged]) -> HashMap<String, Vec<Logged>> {
    let mut by_key: HashMap<String, Vec<Logged>> = HashMap::new();
    for line in log.iter().filter(|l| l.kind == "lookup") {
        let key = line.key.clone().expect("a lookup line names its key");
        by_key.entry(key).or_default().push(line.clone());
    }
    by_key
}

/// The reason a key that got only this fault must be recorded with.
fn fault_code(fault: &str) -> &'static str {
    match fault {
        "500" | "fail_first" => "HTTP_500",
        "drop" => "TRANSPORT_ERROR",
        "truncate" | "garbage" => "BAD_REPLY",
        other => panic!("no failure code for fault {other:?}"),
    }
}

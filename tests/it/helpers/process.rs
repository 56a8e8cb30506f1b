//! The real binary: its command line, run to the end or as a child process, and its exit
//! code, stdout and stderr as a test reads them.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use payple_reconcile::simulator::{self, SimHandle};
use serde_json::Value;

use super::db::TestDb;

pub const BIN: &str = env!("CARGO_BIN_EXE_payple-reconcile");

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

/// The binary (`ARGS`, any subcommand) against `sim`, with `DATABASE_URL` set to `db`'s
/// and the temporary folder as its working folder, run to the end ([`output_of`]).
pub async fn bin_output(sim: &SimHandle, db: &TestDb, args: &[&str]) -> Output {
    let mut cmd = command(&sim.url());
    cmd.args(args)
        .env("DATABASE_URL", &db.url)
        .current_dir(std::env::temp_dir());
    output_of(cmd).await
}

/// Runs a command to the end without blocking the runtime the simulator lives on.
pub async fn output_of(cmd: Command) -> Output {
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("the binary finishes within 60 s")
        .expect("the binary starts")
}

pub fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// stdout of `run` is exactly one JSON object on one line: the summary.
pub fn summary_of(out: &Output) -> Value {
    let stdout = String::from_utf8(out.stdout.clone()).expect("stdout is UTF-8");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "stdout must be exactly one JSON summary line: {stdout:?}\nstderr: {}",
        stderr_of(out)
    );
    assert!(stdout.ends_with('\n'), "{stdout:?}");
    let value: Value = serde_json::from_str(lines[0])
        .unwrap_or_else(|e| panic!("summary is not JSON ({e}): {:?}", lines[0]));
    assert!(value.is_object(), "{value}");
    value
}

/// Asserts the exit code, showing stderr when it differs.
pub fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "exit status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        stderr_of(out)
    );
}

/// Maximal runs of ASCII letters and digits at least `min` long: the simulator's tokens are
/// 32 (`cst_id`), 40 (`custKey`) and 64 (`AuthKey`) such characters.
pub fn token_shaped(text: &str, min: usize) -> Vec<String> {
    text.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|run| run.len() >= min)
        .map(str::to_owned)
        .collect()
}

/// Sends `signal` (e.g. `TERM`) to `pid` with the `kill` command.
pub fn kill(signal: &str, pid: u32) {
    let status = std::process::Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .expect("the kill command runs");
    assert!(status.success(), "kill -{signal} {pid}: {status}");
}

/// Starts a command as a child with piped output, killed if the test fails (or the child
/// is dropped).
pub fn spawn(cmd: Command) -> tokio::process::Child {
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd.spawn().expect("the binary starts")
}

/// Waits for a child to end (at most `limit`) and returns its output.
pub async fn wait_output(child: tokio::process::Child, limit: Duration) -> Output {
    tokio::time::timeout(limit, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("the child did not end within {limit:?}"))
        .expect("wait for the child")
}

/// Waits for a child to end (at most 30 s) and returns its output.
pub async fn finish(child: tokio::process::Child) -> Output {
    wait_output(child, Duration::from_secs(30)).await
}

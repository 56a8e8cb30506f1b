//! The systemd samples (`samples/systemd/`): the service and timer checked for what the
//! operations guide promises (oneshot, dedicated user, sandbox, credentials, 02:30 Seoul,
//! Persistent), then the service's command run the way systemd runs it, against the
//! simulator, with its paths moved into a temporary folder and custKey only in the
//! credentials folder.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;

use serde_json::Value;

use super::samples::{billing_keys_source, checked_env_example, read_sample, test_env_file};
use crate::helpers::{self, Scenario, assert_exit, output_of, summary_of};

/// `key=value` lines of a unit file per section (comments and blanks skipped).
fn unit(text: &str) -> BTreeMap<String, Vec<(String, String)>> {
    let mut sections: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut current = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.to_owned();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not key=value: {line}"));
        sections
            .entry(current.clone())
            .or_default()
            .push((key.to_owned(), value.to_owned()));
    }
    sections
}

fn values<'a>(
    unit: &'a BTreeMap<String, Vec<(String, String)>>,
    section: &str,
    key: &str,
) -> Vec<&'a str> {
    unit.get(section)
        .map(|kv| {
            kv.iter()
                .filter(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
                .collect()
        })
        .unwrap_or_default()
}

fn one<'a>(unit: &'a BTreeMap<String, Vec<(String, String)>>, section: &str, key: &str) -> &'a str {
    match values(unit, section, key).as_slice() {
        [v] => v,
        other => panic!("[{section}] {key}: {other:?}"),
    }
}

/// The timer: 02:30 in Seoul, catching up a missed night, with a randomised delay.
#[test]
fn the_timer_starts_the_service_at_0230_seoul() {
    let timer = unit(&read_sample("systemd/payple-reconcile.timer"));
    assert_eq!(
        one(&timer, "Timer", "OnCalendar"),
        "*-*-* 02:30:00 Asia/Seoul"
    );
    assert_eq!(one(&timer, "Timer", "Persistent"), "true");
    assert!(!one(&timer, "Timer", "RandomizedDelaySec").is_empty());
    assert_eq!(one(&timer, "Install", "WantedBy"), "timers.target");
}

/// `systemd-analyze verify` says nothing about the two units (where it is installed; CI
/// runs it in any case).
#[test]
fn systemd_analyze_verify_is_silent() {
    let Ok(version) = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
    else {
        eprintln!("skipping: no systemd-analyze");
        return;
    };
    assert!(version.status.success());
    let dir = tempfile::tempdir().expect("temp dir");
    for name in ["payple-reconcile.service", "payple-reconcile.timer"] {
        std::fs::write(
            dir.path().join(name),
            read_sample(&format!("systemd/{name}")),
        )
        .expect("copy the unit");
    }
    let out = std::process::Command::new("systemd-analyze")
        .current_dir(dir.path())
        .args([
            "verify",
            "./payple-reconcile.service",
            "./payple-reconcile.timer",
        ])
        .output()
        .expect("run systemd-analyze");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}

/// The service's `/bin/sh -c` script as systemd hands it to the shell (`$$` and `%%`
/// unescaped), its paths moved under `root`.
fn service_script(exec_start: &str, root: &Path) -> String {
    let script = exec_start
        .strip_prefix("/bin/sh -c '")
        .and_then(|s| s.strip_suffix('\''))
        .unwrap_or_else(|| panic!("ExecStart is not /bin/sh -c '...': {exec_start}"));
    assert!(!script.contains('\''), "one single-quoted argument");
    let without_escapes = script.replace("$$", "").replace("%%", "");
    assert!(
        !without_escapes.contains('$') && !without_escapes.contains('%'),
        "an unescaped $ or % would be expanded by systemd: {script}"
    );
    let mut script = script.replace("$$", "$").replace("%%", "%");
    for (from, to) in [
        ("/usr/local/bin/payple-reconcile", helpers::BIN.to_owned()),
        (
            "/var/lib/payple-reconcile/reports",
            root.join("reports").display().to_string(),
        ),
        (
            "/var/lib/node_exporter/textfile_collector",
            root.join("textfile").display().to_string(),
        ),
    ] {
        assert!(script.contains(from), "the service no longer uses {from}");
        script = script.replace(from, &to);
    }
    script
}

/// The service: a sandboxed oneshot as a dedicated user, custKey through LoadCredential=;
/// then its command, run as systemd would (Environment=, the EnvironmentFile, the
/// credentials folder), completes a run keyed by the Seoul date, with the dated report and
/// the metrics file. The environment file's custKey is wrong: the credential is what is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_runs_as_systemd_would() {
    let service = unit(&read_sample("systemd/payple-reconcile.service"));
    assert_eq!(one(&service, "Service", "Type"), "oneshot");
    let user = one(&service, "Service", "User");
    assert!(!user.is_empty() && user != "root" && user != "0", "{user}");
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("Environment", "TZ=Asia/Seoul"),
        ("LoadCredential", "cust-key:/etc/payple-reconcile/cust-key"),
        ("EnvironmentFile", "/etc/payple-reconcile/env"),
    ] {
        assert_eq!(one(&service, "Service", key), value, "{key}");
    }
    let exec_start = one(&service, "Service", "ExecStart");
    assert!(exec_start.contains("--cust-key-file \"$$CREDENTIALS_DIRECTORY/cust-key\""));

    let setup = Scenario::new().start().await;
    let root = setup.dir.path();
    for sub in ["reports", "textfile", "creds"] {
        std::fs::create_dir_all(root.join(sub)).expect("mkdir");
    }
    let ids = helpers::payer_ids(12, "systemd");
    let source_url = billing_keys_source(root, &ids).await;
    let env_file = test_env_file(
        &checked_env_example(),
        &setup.sim,
        &setup.db.url,
        &source_url,
    );
    std::fs::write(
        root.join("creds").join("cust-key"),
        format!("{}\n", payple_reconcile::simulator::TEST_CUST_KEY),
    )
    .expect("write the credential");

    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("TZ", "Asia/Seoul")
        .env("CREDENTIALS_DIRECTORY", root.join("creds"));
    // EnvironmentFile=: VAR=value lines, quotes removed.
    for line in env_file.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, value) = line.split_once('=').expect("VAR=value");
        cmd.env(name, value.trim_matches('\''));
    }
    cmd.env("PAYPLE_CUST_KEY", "WRONG-the-credential-must-win");
    cmd.args(["-c", &service_script(exec_start, root)])
        .stdin(Stdio::null());
    let seoul = || (chrono::Utc::now() + chrono::Duration::hours(9)).date_naive();
    let before = seoul();
    let out = output_of(cmd).await;
    let after = seoul();
    assert_exit(&out, 0);
    let summary: Value = summary_of(&out);
    assert_eq!(summary["state"], "completed", "{summary}");
    assert_eq!(summary["checked_now"], 12, "{summary}");

    let reports: Vec<String> = std::fs::read_dir(root.join("reports"))
        .expect("list")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .collect();
    assert_eq!(reports.len(), 1, "{reports:?}");
    let day = reports[0].strip_suffix(".csv").expect("a .csv report");
    assert!(
        [before, after]
            .iter()
            .any(|d| d.format("%F").to_string() == day),
        "{day} is not the date in Seoul"
    );
    assert!(root.join("textfile").join("payple_reconcile.prom").exists());
    assert_eq!(
        setup.run_record().await.run_key.as_deref(),
        Some(day),
        "the run key is the Seoul date"
    );
    setup.close().await;
}

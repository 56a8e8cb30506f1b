//! Unit tests of the settings: flags and environment in, validated settings or a
//! configuration error naming the flag out.

use std::time::Duration;

use clap::Parser;

use super::env::*;
use super::error::*;
use super::notify::*;
use super::payple::*;
use super::run::*;
use crate::budget;
use crate::cli::{NotifyArgs, NotifyOnArg, PaypleArgs, RunArgs};
use crate::notify::{NotifyFormat, NotifyOn};
use crate::payple::ClientConfig;
use crate::payple::TEST_REFERER;
use crate::source::SourceSpec;

#[test]
fn budgets() {
    let plain = run_with(&[]).unwrap();
    assert_eq!(plain.budget, None);
    assert_eq!(plain.timezone.local_minus_utc(), budget::KST_SECONDS);
    let s = run_with(&[
        "--max-lookups",
        "100",
        "--time-budget",
        "90m",
        "--stop-at",
        "06:30",
        "--timezone",
        "UTC",
        "--due-column",
        "next_charge",
        "--due-within",
        "2d",
    ])
    .unwrap();
    let b = s.budget.unwrap();
    assert_eq!(b.max_lookups, Some(100));
    assert_eq!(b.time, Some(Duration::from_secs(5400)));
    let stop = b.stop_at.unwrap();
    assert_eq!(stop.offset.local_minus_utc(), 0);
    assert_eq!(stop.time.format("%H:%M").to_string(), "06:30");
    let due = s.due.unwrap();
    assert_eq!(
        (due.column.as_str(), due.within.as_secs()),
        ("next_charge", 172_800)
    );
    for (flags, flag) in [
        (&["--max-lookups", "0"][..], "--max-lookups"),
        (&["--time-budget", "soon"], "--time-budget"),
        (&["--stop-at", "25:00"], "--stop-at"),
        (&["--stop-at", "06:00", "--timezone", "Mars"], "--timezone"),
        (&["--due-column", "next_charge"], "--due-column"),
        (
            &["--csv", "k.csv", "--max-lookups", "5", "--due-column", "d"],
            "--due-column",
        ),
        (
            &["--max-lookups", "5", "--due-column", "a;b"],
            "--due-column",
        ),
    ] {
        match run_with(flags) {
            Err(ConfigError::Invalid { flag: f, .. }) => assert_eq!(f, flag, "{flags:?}"),
            other => panic!("{flags:?}: {other:?}"),
        }
    }
}

fn payple_args(extra: &[&str]) -> PaypleArgs {
    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        p: PaypleArgs,
    }
    let mut argv = vec!["t"];
    argv.extend_from_slice(extra);
    T::try_parse_from(argv).unwrap().p
}

fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
    move |name| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
    }
}

fn payple_config(args: &PaypleArgs, env: &dyn Env) -> Result<ClientConfig, ConfigError> {
    payple_settings(args, env).map(|s| s.client)
}

const CREDS: &[(&str, &str)] = &[
    ("PAYPLE_CST_ID", "partner"),
    ("PAYPLE_CUST_KEY", "s3cr3t-cust-key"),
    ("PAYPLE_REFERER", "https://shop.example"),
];

#[test]
fn origins() {
    assert_eq!(
        parse_origin("test").unwrap().as_str(),
        "https://democpay.payple.kr/"
    );
    assert_eq!(
        parse_origin("live").unwrap().as_str(),
        "https://cpay.payple.kr/"
    );
    assert!(parse_origin("http://127.0.0.1:8080").is_ok());
    assert!(parse_origin("http://localhost:1").is_ok());
    assert!(parse_origin("http://[::1]:1").is_ok());
    assert!(parse_origin("http://democpay.payple.kr").is_err());
    assert!(parse_origin("https://cpay.payple.kr/php/auth.php").is_err());
    assert!(parse_origin("ftp://x").is_err());
    assert!(parse_origin("https://u:p@cpay.payple.kr").is_err());
}

#[test]
fn credentials_come_from_the_environment() {
    let config = payple_config(&payple_args(&[]), &env(CREDS)).unwrap();
    assert_eq!(config.referer, "https://shop.example");
    assert!(!format!("{config:?}").contains("s3cr3t-cust-key"));
    let e = payple_config(&payple_args(&[]), &env(&[])).unwrap_err();
    assert!(matches!(e, ConfigError::MissingEnv("PAYPLE_CST_ID")));
    // The simulator supplies the documented test partner.
    let sim = payple_settings(&payple_args(&["--simulator"]), &env(&[])).unwrap();
    assert_eq!(sim.target, PaypleTarget::Simulator);
    assert_eq!(sim.client.referer, TEST_REFERER);
}

#[test]
fn bad_numbers_are_refused() {
    for flags in [
        &["--max-attempts", "0"][..],
        &["--token-ttl", "1"],
        &["--request-timeout", "0"],
        &["--gone-codes", ","],
        &["--gone-codes", "0000"],
        &["--outage-budget", "0"],
        &["--codes", "/nonexistent/codes.toml"],
    ] {
        assert!(
            payple_config(&payple_args(flags), &env(CREDS)).is_err(),
            "{flags:?}"
        );
    }
    let config = payple_config(&payple_args(&["--rate", "0"]), &env(CREDS)).unwrap();
    assert!(config.rate.is_none());
}

fn run_args(extra: &[&str]) -> RunArgs {
    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        r: RunArgs,
    }
    let mut argv = vec!["t"];
    argv.extend_from_slice(extra);
    T::try_parse_from(argv).unwrap().r
}

fn run_with(extra: &[&str]) -> Result<BatchSettings, ConfigError> {
    batch_settings(&run_args(extra), &env(&[]))
}

#[test]
fn recheck_flags() {
    let s = run_with(&["--recheck-failed"]).unwrap();
    assert_eq!(s.recheck, Some(RecheckRun::Latest));
    assert!(!s.all_failed);
    let s = run_with(&["--recheck-failed", "42", "--all-failed"]).unwrap();
    assert_eq!(s.recheck, Some(RecheckRun::Run(42)));
    assert!(s.all_failed);
    assert_eq!(run_with(&[]).unwrap().recheck, None);
    // A re-check reads no source: the database URL of one is harmless.
    assert!(run_with(&["--recheck-failed", "--source-database-url", "sqlite://x"]).is_ok());
    // --all-failed belongs to a re-check, or a run key whose run completed.
    assert!(
        run_with(&["--run-key", "k", "--all-failed"])
            .unwrap()
            .all_failed
    );
    let e = run_with(&["--all-failed"]).unwrap_err();
    assert!(e.to_string().starts_with("--all-failed"), "{e}");
    let e = run_with(&["--recheck-failed", "x"]).unwrap_err();
    assert!(e.to_string().contains("not a run id"), "{e}");
}

#[test]
fn a_recheck_refuses_sources_runs_and_shards() {
    for flags in [
        &["--csv", "k.csv"][..],
        &["--source-table", "billing_keys"],
        &["--id-column", "payer_id"],
        &["--ref-column", "none"],
        &["--source-query", "SELECT 1"],
        &["--resume"],
        &["--run-key", "k"],
        &["--dry-run"],
        &["--shard", "0/2"],
        &["--shards", "2"],
    ] {
        let mut argv = vec!["--recheck-failed"];
        argv.extend_from_slice(flags);
        let e = run_with(&argv).unwrap_err().to_string();
        assert!(e.starts_with("--recheck-failed: "), "{flags:?}: {e}");
        assert!(e.contains(flags[0]), "{flags:?}: {e}");
    }
    // The table source's defaults still apply without the flags.
    let s = run_with(&[]).unwrap();
    assert_eq!(
        s.source,
        SourceSpec::Table {
            table: "billing_keys".into(),
            id_column: "payer_id".into(),
            ref_column: Some("customer_ref".into()),
        }
    );
}

#[test]
fn codes_file_and_outage_budget() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("codes.toml");
    std::fs::write(&path, "[codes]\nXPAY0042 = \"gone\"\n").unwrap();
    let file = path.to_str().unwrap();
    let config = payple_config(
        &payple_args(&["--codes", file, "--outage-budget", "10"]),
        &env(CREDS),
    )
    .unwrap();
    assert_eq!(
        config.codes.class_of("XPAY0042"),
        Some(crate::payple::codebook::CodeClass::Gone)
    );
    assert_eq!(config.health.budget, Duration::from_secs(10));
    std::fs::write(&path, "[codes]\n\"0000\" = \"gone\"\n").unwrap();
    let err = payple_config(&payple_args(&["--codes", file]), &env(CREDS))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--codes") && err.contains("codes.toml"),
        "{err}"
    );
    assert!(err.contains("0000"), "{err}");
}

#[test]
fn a_codes_file_over_a_mebibyte_is_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("codes.toml");
    // Valid TOML: only its size is wrong (a log or a dump given by mistake).
    let mut text = "[codes]\nXPAY0042 = \"gone\"\n".to_owned();
    while text.len() as u64 <= MAX_CODES_FILE {
        text.push_str("# padding padding padding padding padding padding padding\n");
    }
    std::fs::write(&path, &text).unwrap();
    let file = path.to_str().unwrap();
    let err = payple_config(&payple_args(&["--codes", file]), &env(CREDS))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--codes") && err.contains("codes.toml") && err.contains("larger than"),
        "{err}"
    );
    let started = std::time::Instant::now();
    let err = payple_config(&payple_args(&["--codes", "/dev/zero"]), &env(CREDS))
        .unwrap_err()
        .to_string();
    assert!(err.contains("larger than"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn notification_urls_are_validated_without_showing_them() {
    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        n: NotifyArgs,
    }
    let parse = |argv: &[&str]| T::try_parse_from(argv).unwrap().n;
    let none = parse(&["t"]);
    assert!(
        notify_settings(&none, NotifyOnArg::Changes)
            .unwrap()
            .is_none()
    );
    let two = parse(&[
        "t",
        "--notify",
        "https://hooks.slack.com/services/T/B/SECRET1",
        "--notify",
        "https://a.example/x,https://b.example/y",
        "--notify-format",
        "json",
    ]);
    let s = notify_settings(&two, NotifyOnArg::Problems)
        .unwrap()
        .unwrap();
    assert_eq!(s.notifier.urls.len(), 3);
    assert_eq!(s.format, NotifyFormat::Json);
    assert_eq!(s.on, NotifyOn::Problems);
    assert!(!format!("{s:?}").contains("SECRET1"));
    let bad = parse(&["t", "--notify", "http://hooks.example/T/SECRET2"]);
    let err = notify_settings(&bad, NotifyOnArg::Changes).unwrap_err();
    assert!(err.to_string().contains("hooks.example"), "{err}");
    assert!(!err.to_string().contains("SECRET2"), "{err}");
}

#[test]
fn shards() {
    let s = Shard::parse("1/3").unwrap();
    assert!(s.owns(4) && !s.owns(3));
    assert!(Shard::parse("3/3").is_err());
    assert!(Shard::parse("x").is_err());
    assert!(Shard::parse("0/0").is_err());
    assert!(Shard::WHOLE.owns(12345));
}

#[test]
fn a_key_file_is_read_with_a_small_cap() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    std::fs::write(&path, " k3y\n").unwrap();
    assert_eq!(read_small_file(&path, 16).unwrap(), " k3y\n");
    std::fs::write(&path, "x".repeat(17)).unwrap();
    assert!(read_small_file(&path, 16).is_err());
    let started = std::time::Instant::now();
    let e = read_small_file(std::path::Path::new("/dev/zero"), MAX_CUST_KEY_FILE).unwrap_err();
    assert!(e.to_string().contains("larger than"), "{e}");
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
}

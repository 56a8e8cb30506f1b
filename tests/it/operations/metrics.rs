//! `--metrics-file`: Prometheus text format whose numbers agree with the run.

use std::collections::BTreeMap;

use crate::helpers::{self, Scenario};

// ---- 6. metrics ---------------------------------------------------------------------------

/// Parses Prometheus text format (0.0.4): `name{labels} value` lines, comments, blanks.
fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let words: Vec<&str> = comment.split_whitespace().collect();
            if matches!(words.first(), Some(&"HELP") | Some(&"TYPE")) {
                assert!(words.len() >= 3, "bad comment line {line:?}");
            }
            if words.first() == Some(&"TYPE") {
                assert!(
                    ["gauge", "counter", "untyped", "summary", "histogram"].contains(&words[2]),
                    "{line:?}"
                );
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !name.starts_with(|c: char| c.is_ascii_digit()),
            "bad metric name in {line:?}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "bad labels in {line:?}");
        }
        let value: f64 = value
            .parse()
            .unwrap_or_else(|e| panic!("bad value in {line:?}: {e}"));
        assert!(
            samples.insert(series.to_owned(), value).is_none(),
            "{series} twice"
        );
    }
    samples
}

/// `--metrics-file` writes a parseable Prometheus file whose numbers agree with the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_file_after_a_run() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ids = helpers::payer_ids(25, "metrics");
    let mut rows = ids.clone();
    rows.push(String::new());
    let textfile = dir.path().join("textfile");
    std::fs::create_dir(&textfile).expect("mkdir");
    let metrics = textfile.join("payple_reconcile.prom");
    let ran = Scenario::new()
        .ids(&rows)
        .args(&["--rate", "0"])
        .args(&["--metrics-file", metrics.to_str().expect("utf-8 path")])
        .run()
        .await;
    let ended = chrono::Utc::now().timestamp() as f64;
    ran.expect_exit(2);
    let summary = ran.summary();
    let files: Vec<_> = std::fs::read_dir(&textfile)
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(
        files,
        ["payple_reconcile.prom"],
        "only the metrics file, no leftovers"
    );
    let text = std::fs::read_to_string(&metrics).expect("metrics file");
    let m = parse_prometheus(&text);
    for status in ["active", "gone", "failed", "rejected"] {
        let series = format!("payple_reconcile_keys{{status=\"{status}\"}}");
        assert_eq!(
            m.get(&series).copied(),
            summary[status].as_f64(),
            "{series} in\n{text}"
        );
    }
    assert_eq!(m.get("payple_reconcile_auth_calls"), Some(&1.0), "{text}");
    assert_eq!(m.get("payple_reconcile_lookups"), Some(&25.0), "{text}");
    assert_eq!(
        m.get("payple_reconcile_run_exit_code"),
        Some(&2.0),
        "{text}"
    );
    let duration = m["payple_reconcile_run_duration_seconds"];
    assert!(duration > 0.0 && duration < 60.0, "{text}");
    let last = m["payple_reconcile_last_success_timestamp_seconds"];
    assert!(
        (ended - 60.0..=ended + 1.0).contains(&last),
        "{last} vs {ended}"
    );
    assert!(
        text.contains("# TYPE payple_reconcile_keys gauge"),
        "{text}"
    );
    ran.close().await;
}

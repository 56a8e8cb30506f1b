//! Prometheus text-format metrics of the last run, for node_exporter's textfile collector:
//! duration, keys per status, auth calls, lookups, exit code, last success time.
//!
//! The file is a snapshot rewritten at the end of every run, so every metric is a gauge.
//! The last success time moves only for a run that completed with no failed key; otherwise
//! it is read back from the previous file, so an alert on its age fires.

use std::fmt::Write as _;

use crate::domain::{KeyStatus, RunState, RunStats};
use crate::store::StatusCounts;

/// The metric that must survive runs that did not succeed.
pub const LAST_SUCCESS: &str = "payple_reconcile_last_success_timestamp_seconds";
/// The exit code of the last run.
pub const EXIT_CODE: &str = "payple_reconcile_run_exit_code";

/// What the metrics file says about one run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunMetrics {
    pub duration_secs: f64,
    pub keys: StatusCounts,
    pub auth_calls: u64,
    pub lookups: u64,
    pub exit_code: u8,
    /// Unix time of the last successful run; `None` if there never was one.
    pub last_success: Option<f64>,
    /// Notifications that could not be delivered; `None` when none are configured.
    pub notify_failures: Option<u64>,
    /// Keys gone since the previous completed run; `None` when there is none to compare.
    pub newly_gone: Option<u64>,
    /// Pushes to the Pushgateway that failed; `None` when none is configured.
    pub push_failures: Option<u64>,
    /// Per-key events after the run; `None` without `--events-url`.
    pub events: Option<crate::domain::EventTally>,
}

/// What the end of a run adds to the metrics of its stats: notifications, changes, pushes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Extras {
    pub notify_failures: Option<u64>,
    pub newly_gone: Option<u64>,
    pub push_failures: Option<u64>,
}

impl Extras {
    pub fn apply(&self, m: &mut RunMetrics) {
        m.notify_failures = self.notify_failures;
        m.newly_gone = self.newly_gone;
        m.push_failures = self.push_failures;
    }
}

/// Whether a run counts as a success for alerting: it completed and no key is `failed`
/// (every key `active` or `gone`; `rejected` input rows, exit 2, are the source's problem
/// and do not make the night a failure). A run with failed keys is not a success, however
/// it ended, until a re-check repairs it.
pub fn succeeded(stats: &RunStats) -> bool {
    stats.state == RunState::Completed && stats.failed == 0 && matches!(stats.exit_code, 0 | 2)
}

/// The metrics of a finished run. `ended` is the Unix time the run ended (for an answer
/// about a run that completed earlier, that run's end); `previous` the text of the metrics
/// file it replaces, if any. The last success time never moves back.
pub fn from_stats(stats: &RunStats, ended: f64, previous: Option<&str>) -> RunMetrics {
    let before = previous.and_then(previous_last_success);
    let last_success = if succeeded(stats) {
        Some(before.map_or(ended, |b| b.max(ended)))
    } else {
        before
    };
    RunMetrics {
        duration_secs: stats.duration_secs,
        keys: StatusCounts {
            active: stats.active,
            gone: stats.gone,
            failed: stats.failed,
            rejected: stats.rejected,
        },
        auth_calls: stats.auth_calls,
        lookups: stats.lookups,
        exit_code: stats.exit_code,
        last_success,
        notify_failures: None,
        newly_gone: None,
        push_failures: None,
        events: stats.events,
    }
}

/// A time as Unix seconds, to the millisecond.
pub fn unix_seconds(t: chrono::DateTime<chrono::Utc>) -> f64 {
    t.timestamp_millis() as f64 / 1000.0
}

/// The last success time recorded in an earlier metrics file (`None` if absent, zero or
/// unreadable).
pub fn previous_last_success(text: &str) -> Option<f64> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.strip_prefix(LAST_SUCCESS))
        .filter(|rest| rest.starts_with([' ', '\t', '{']))
        .filter_map(|rest| rest.split_whitespace().last()?.parse::<f64>().ok())
        .find(|v| v.is_finite() && *v > 0.0)
}

/// One gauge: its name, its help text and its samples (labels, value).
struct Gauge {
    name: &'static str,
    help: &'static str,
    samples: Vec<(String, String)>,
}

impl Gauge {
    /// A gauge with one unlabelled sample.
    fn one(name: &'static str, help: &'static str, value: impl ToString) -> Self {
        Self {
            name,
            help,
            samples: vec![(String::new(), value.to_string())],
        }
    }

    fn write(&self, out: &mut String) {
        let name = self.name;
        let _ = writeln!(out, "# HELP {name} {}", self.help);
        let _ = writeln!(out, "# TYPE {name} gauge");
        for (labels, value) in &self.samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    }
}

/// The metrics in Prometheus text format (version 0.0.4).
pub fn render(m: &RunMetrics) -> String {
    let mut out = String::new();
    for gauge in run_gauges(m).into_iter().chain(after_run_gauges(m)) {
        gauge.write(&mut out);
    }
    out
}

/// The gauges every run has: its duration, keys, calls, exit code and last success.
fn run_gauges(m: &RunMetrics) -> Vec<Gauge> {
    let keys = KeyStatus::ALL
        .iter()
        .map(|s| {
            (
                format!("{{status=\"{}\"}}", s.as_str()),
                m.keys.get(*s).to_string(),
            )
        })
        .collect();
    vec![
        Gauge::one(
            "payple_reconcile_run_duration_seconds",
            "Wall-clock duration of the last run of this process.",
            m.duration_secs,
        ),
        Gauge {
            name: "payple_reconcile_keys",
            help: "Keys of the last run per status (the whole run, all shards so far).",
            samples: keys,
        },
        Gauge::one(
            "payple_reconcile_auth_calls",
            "Partner auth calls made by the last run.",
            m.auth_calls,
        ),
        Gauge::one(
            "payple_reconcile_lookups",
            "PUSERINFO lookups (HTTP requests, retries included) made by the last run.",
            m.lookups,
        ),
        Gauge::one(
            EXIT_CODE,
            "Exit code of the last run (0 all resolved, 2 some failed, 3 configuration, 4 Payple unavailable, 1 internal).",
            m.exit_code,
        ),
        Gauge::one(
            LAST_SUCCESS,
            "Unix time the last successful run (completed, no failed keys) ended; 0 if none yet.",
            m.last_success.unwrap_or(0.0),
        ),
    ]
}

/// The gauges of what followed the run, each when it was done: notifications, changes,
/// events and metric pushes.
fn after_run_gauges(m: &RunMetrics) -> Vec<Gauge> {
    let events = m.events.map(|e| Gauge {
        name: "payple_reconcile_events",
        help: "Per-key events after the last run: delivered and expired by it, pending in the outbox.",
        samples: [
            ("delivered", e.delivered),
            ("pending", e.pending),
            ("expired", e.expired),
        ]
        .into_iter()
        .map(|(state, n)| (format!("{{state=\"{state}\"}}"), n.to_string()))
        .collect(),
    });
    [
        m.notify_failures.map(|n| {
            Gauge::one(
                "payple_reconcile_notify_failures",
                "Run notifications of the last run that could not be delivered (after retries).",
                n,
            )
        }),
        m.newly_gone.map(|n| {
            Gauge::one(
                "payple_reconcile_keys_newly_gone",
                "Keys active in the previous completed run and gone in the last run.",
                n,
            )
        }),
        events,
        m.push_failures.map(|n| {
            Gauge::one(
                "payple_reconcile_metrics_push_failures",
                "Pushes of the last run's metrics to the Pushgateway that failed (after retries).",
                n,
            )
        }),
    ]
    .into_iter()
    .flatten()
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(state: &'static str, exit_code: u8) -> RunStats {
        RunStats {
            run_id: 3,
            state: RunState::parse(state),
            source: "csv".to_owned(),
            keys: Some(10),
            duplicates: 0,
            active: 7,
            gone: 2,
            failed: 0,
            rejected: 1,
            checked_now: 9,
            duration_secs: 12.5,
            lookups_per_second: 0.7,
            auth_calls: 1,
            lookups: 11,
            exit_code,
            keys_checked: 9,
            budget_stop: None,
            note: None,
            events: None,
        }
    }

    /// Every sample line is `name{labels} value`, every metric has HELP and TYPE.
    fn samples(text: &str) -> Vec<(String, f64)> {
        let mut out = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') {
                let mut parts = line.splitn(4, ' ');
                let kind = parts.nth(1).unwrap();
                assert!(kind == "HELP" || kind == "TYPE", "{line}");
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap();
            let name = series.split('{').next().unwrap();
            assert!(
                name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{line}"
            );
            assert!(text.contains(&format!("# TYPE {name} gauge\n")), "{name}");
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
            out.push((series.to_owned(), value.parse().unwrap()));
        }
        out
    }

    #[test]
    fn a_successful_run_records_everything() {
        let m = from_stats(&stats("completed", 2), 1_764_208_800.5, None);
        let text = render(&m);
        let got = samples(&text);
        let value = |series: &str| {
            got.iter()
                .find(|(s, _)| s == series)
                .map(|(_, v)| *v)
                .unwrap_or_else(|| panic!("{series} missing in\n{text}"))
        };
        assert_eq!(value("payple_reconcile_run_duration_seconds"), 12.5);
        assert_eq!(value("payple_reconcile_keys{status=\"active\"}"), 7.0);
        assert_eq!(value("payple_reconcile_keys{status=\"rejected\"}"), 1.0);
        assert_eq!(value("payple_reconcile_auth_calls"), 1.0);
        assert_eq!(value("payple_reconcile_lookups"), 11.0);
        assert_eq!(value("payple_reconcile_run_exit_code"), 2.0);
        assert_eq!(value(LAST_SUCCESS), 1_764_208_800.5);
        assert_eq!(got.len(), 9);
    }

    #[test]
    fn notification_failures_are_counted_when_configured() {
        let mut m = from_stats(&stats("completed", 0), 1.0, None);
        assert!(!render(&m).contains("notify"));
        m.notify_failures = Some(2);
        let text = render(&m);
        let got = samples(&text);
        assert!(got.contains(&("payple_reconcile_notify_failures".to_owned(), 2.0)));
    }

    #[test]
    fn a_failed_run_keeps_the_previous_success_time() {
        let earlier = render(&from_stats(&stats("completed", 0), 1_700_000_000.0, None));
        for (state, code) in [("completed", 1), ("interrupted", 130), ("failed", 3)] {
            let m = from_stats(&stats(state, code), 1_800_000_000.0, Some(&earlier));
            assert_eq!(m.last_success, Some(1_700_000_000.0), "{state} {code}");
        }
        let never = from_stats(&stats("interrupted", 143), 1.0, None);
        assert_eq!(never.last_success, None);
        assert!(render(&never).contains(&format!("\n{LAST_SUCCESS} 0\n")));
    }

    #[test]
    fn a_run_with_failed_keys_is_not_a_success() {
        let earlier = render(&from_stats(&stats("completed", 0), 1_700_000_000.0, None));
        let failing = RunStats {
            gone: 1,
            failed: 1,
            ..stats("completed", 2)
        };
        assert!(!succeeded(&failing));
        let m = from_stats(&failing, 1_800_000_000.0, Some(&earlier));
        assert_eq!(m.last_success, Some(1_700_000_000.0));
        assert_eq!(
            from_stats(&failing, 1_800_000_000.0, None).last_success,
            None
        );
        // "Already completed" answers carry the run's own exit code 0: the failed keys
        // still decide.
        let answered = RunStats {
            failed: 3,
            ..stats("completed", 0)
        };
        assert!(!succeeded(&answered));
        // Rejected input rows alone (exit 2) do not make the night a failure.
        assert!(succeeded(&stats("completed", 2)));
    }

    #[test]
    fn the_last_success_time_never_moves_back() {
        let later = render(&from_stats(&stats("completed", 0), 1_800_000_000.0, None));
        let m = from_stats(&stats("completed", 0), 1_700_000_000.0, Some(&later));
        assert_eq!(m.last_success, Some(1_800_000_000.0));
        let m = from_stats(&stats("completed", 0), 1_900_000_000.0, Some(&later));
        assert_eq!(m.last_success, Some(1_900_000_000.0));
    }

    #[test]
    fn stored_times_as_unix_seconds() {
        let at = crate::store::time::parse_time("2026-11-28T00:00:01.500Z").expect("a time");
        assert_eq!(unix_seconds(at), 1_795_824_001.5);
    }

    #[test]
    fn previous_values_parse_leniently() {
        assert_eq!(previous_last_success(""), None);
        assert_eq!(previous_last_success("garbage"), None);
        assert_eq!(
            previous_last_success(&format!("# {LAST_SUCCESS} 5\n{LAST_SUCCESS} 0\n")),
            None
        );
        assert_eq!(
            previous_last_success(&format!("{LAST_SUCCESS}{{job=\"x\"}} 1.5e9\n")),
            Some(1.5e9)
        );
        assert_eq!(
            previous_last_success(&format!("{LAST_SUCCESS}_other 7\n")),
            None
        );
    }
}

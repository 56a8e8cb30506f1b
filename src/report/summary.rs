//! A run at a glance: keys per status, the active keys per card company and per bank,
//! counted by the database (`GROUP BY`), and how recently the source's keys were checked
//! (coverage across partial runs), shown as text tables.

use chrono::{DateTime, Utc};

use super::csv::kst_label;
use super::error::ReportError;
use super::neutral::terminal;
use super::table;
use crate::domain::KeyStatus;
use crate::store::reports::{GroupCount, Grouping};
use crate::store::{Coverage, RunRecord, StatusCounts, Store};

/// What `summary` shows about one run.
#[derive(Debug, Clone)]
pub struct Summary {
    pub run: RunRecord,
    pub counts: StatusCounts,
    pub cards: Vec<GroupCount>,
    pub banks: Vec<GroupCount>,
    /// The run's source keys by how recently they were checked, as of the run's end.
    pub coverage: Coverage,
    pub as_of: DateTime<Utc>,
}

/// Counts a run's rows.
pub async fn load(store: &Store, run: RunRecord) -> Result<Summary, ReportError> {
    let id = run.id;
    let counts = store
        .status_counts(id)
        .await
        .map_err(ReportError::store(id))?;
    let cards = store
        .active_counts_by(id, Grouping::CardName)
        .await
        .map_err(ReportError::store(id))?;
    let banks = store
        .active_counts_by(id, Grouping::BankName)
        .await
        .map_err(ReportError::store(id))?;
    let as_of = run.finished_at.unwrap_or_else(Utc::now);
    let coverage = store
        .coverage(id, as_of)
        .await
        .map_err(ReportError::store(id))?;
    Ok(Summary {
        run,
        counts,
        cards,
        banks,
        coverage,
        as_of,
    })
}

/// `12.5%` of `total` (an empty total is 0%).
fn share(n: i64, total: i64) -> String {
    if total <= 0 {
        return "0.0%".to_owned();
    }
    format!("{:.1}%", n as f64 * 100.0 / total as f64)
}

fn groups(title: &str, empty: &str, rows: &[GroupCount]) -> String {
    if rows.is_empty() {
        return format!("{empty}\n");
    }
    let total: i64 = rows.iter().map(|g| g.keys).sum();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|g| {
            vec![
                g.shown_name().to_owned(),
                g.keys.to_string(),
                share(g.keys, total),
            ]
        })
        .collect();
    table::render(&[title, "keys", "share"], &cells, &[false, true, true])
}

/// Coverage as a table: keys checked within 1, 7 and 30 days, never checked, and the
/// oldest latest check.
fn coverage(c: &Coverage, as_of: DateTime<Utc>) -> String {
    let n = c.source_keys;
    let mut rows: Vec<Vec<String>> = [("1 day", c.within_1d), ("7 days", c.within_7d)]
        .into_iter()
        .chain([("30 days", c.within_30d)])
        .map(|(label, k)| vec![label.to_owned(), k.to_string(), share(k, n)])
        .collect();
    let never = n - c.ever_checked;
    rows.push(vec!["never".to_owned(), never.to_string(), share(never, n)]);
    let mut out = format!(
        "coverage of the source's {n} keys as of {}\n",
        terminal(&kst_label(as_of))
    );
    out.push_str(&table::render(
        &["checked within", "keys", "share"],
        &rows,
        &[false, true, true],
    ));
    let oldest = c.oldest_check.map_or_else(|| "none".to_owned(), kst_label);
    out.push_str(&format!("oldest check: {}\n", terminal(&oldest)));
    out
}

/// The summary as text: a line about the run, then four tables.
pub fn render(s: &Summary) -> String {
    let run = &s.run;
    let finished = run
        .finished_at
        .map(|f| format!(", finished {}", kst_label(f)))
        .unwrap_or_default();
    let key = run
        .run_key
        .as_deref()
        .map(|k| format!(" (key {k})"))
        .unwrap_or_default();
    // The run key and times are stored text: shown, never obeyed by the terminal.
    let line = format!(
        "run {}{key}: {}, started {}{finished}",
        run.id,
        run.state.as_str(),
        kst_label(run.started_at),
    );
    let mut out = format!("{}\n\n", terminal(&line));
    let total = s.counts.total();
    let mut rows: Vec<Vec<String>> = KeyStatus::ALL
        .iter()
        .map(|status| {
            let n = s.counts.get(*status);
            vec![status.as_str().to_owned(), n.to_string(), share(n, total)]
        })
        .collect();
    rows.push(vec![
        "total".to_owned(),
        total.to_string(),
        share(total, total),
    ]);
    out.push_str(&table::render(
        &["status", "keys", "share"],
        &rows,
        &[false, true, true],
    ));
    out.push('\n');
    out.push_str(&groups(
        "card company (active)",
        "no active card keys",
        &s.cards,
    ));
    out.push('\n');
    out.push_str(&groups(
        "bank (active)",
        "no active bank-account keys",
        &s.banks,
    ));
    out.push('\n');
    out.push_str(&coverage(&s.coverage, s.as_of));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RunState;

    fn at(text: &str) -> chrono::DateTime<chrono::Utc> {
        crate::store::time::parse_time(text).expect("a time")
    }

    fn run() -> RunRecord {
        RunRecord {
            id: 4,
            run_key: Some("2026-11-27".to_owned()),
            started_at: at("2026-11-26T17:00:00.000Z"),
            finished_at: Some(at("2026-11-26T17:14:40.000Z")),
            source: "csv".to_owned(),
            source_spec: Err("not stored".to_owned()),
            options: "{}".to_owned(),
            state: RunState::Completed,
            shard_count: 1,
            keys_total: Some(10),
            duplicates: 0,
            counts: StatusCounts::default(),
            auth_calls: 1,
            lookups: 10,
            exit_code: Some(0),
        }
    }

    #[test]
    fn renders_counts_and_shares() {
        let s = Summary {
            run: run(),
            counts: StatusCounts {
                active: 6,
                gone: 2,
                failed: 1,
                rejected: 1,
            },
            cards: vec![
                GroupCount {
                    name: Some("신한카드".to_owned()),
                    keys: 3,
                },
                GroupCount {
                    name: Some("BC카드".to_owned()),
                    keys: 1,
                },
            ],
            banks: vec![],
            coverage: Coverage {
                source_keys: 10,
                ever_checked: 9,
                within_1d: 4,
                within_7d: 8,
                within_30d: 9,
                oldest_check: Some(at("2026-11-01T17:00:00.000Z")),
            },
            as_of: at("2026-11-26T17:14:40.000Z"),
        };
        let text = render(&s);
        assert!(text.starts_with(
            "run 4 (key 2026-11-27): completed, started 2026-11-27 02:00:00 KST, \
             finished 2026-11-27 02:14:40 KST\n"
        ));
        assert!(text.contains("active       6   60.0%\n"), "{text}");
        assert!(text.contains("total       10  100.0%\n"), "{text}");
        assert!(
            text.contains("신한카드                  3  75.0%\n"),
            "{text}"
        );
        assert!(text.contains("no active bank-account keys"), "{text}");
        assert!(
            text.contains("coverage of the source's 10 keys as of 2026-11-27 02:14:40 KST\n"),
            "{text}"
        );
        assert!(text.contains("1 day              4  40.0%\n"), "{text}");
        assert!(text.contains("30 days            9  90.0%\n"), "{text}");
        assert!(text.contains("never              1  10.0%\n"), "{text}");
        assert!(
            text.ends_with("oldest check: 2026-11-02 02:00:00 KST\n"),
            "{text}"
        );
    }

    #[test]
    fn unnamed_groups_and_empty_totals() {
        assert_eq!(share(0, 0), "0.0%");
        let text = groups(
            "bank (active)",
            "none",
            &[GroupCount {
                name: None,
                keys: 2,
            }],
        );
        assert!(text.contains("(not reported)"), "{text}");
    }
}

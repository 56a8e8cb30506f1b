//! Which runs and rows a report is about: opening the results database read-only,
//! `--run` ([`RunSelector`]: `latest` or a run id) resolved, the pair of runs `changes`
//! compares, and the statuses `--status` names.

use std::path::PathBuf;

use super::csv::kst_label;
use super::error::ReportError;
use crate::domain::KeyStatus;
use crate::store::{Dialect, RunRecord, RunState, Store};

/// Connects without migrating (report users may only read) and without creating a
/// SQLite file that is not there.
pub async fn open_store(url: &str) -> Result<Store, ReportError> {
    if Dialect::from_url(url).ok() == Some(Dialect::Sqlite)
        && let Some(path) = sqlite_file(url)
        && !path.exists()
    {
        return Err(ReportError::NoDatabase { path });
    }
    Store::connect(url).await.map_err(ReportError::Connect)
}

/// The file of a `sqlite://PATH?…` URL (`None` for in-memory databases).
fn sqlite_file(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path.is_empty() || path == ":memory:" || query.contains("mode=memory") {
        return None;
    }
    Some(PathBuf::from(path))
}

/// The run `selector` names.
pub async fn resolve_run(store: &Store, selector: RunSelector) -> Result<RunRecord, ReportError> {
    match selector {
        RunSelector::Id(id) => store
            .run(id)
            .await
            .map_err(ReportError::store(id))?
            .ok_or(ReportError::NoSuchRun(id)),
        RunSelector::Latest => {
            let completed = store
                .latest_runs(Some(RunState::Completed), 1)
                .await
                .map_err(ReportError::Runs)?;
            if let Some(run) = completed.into_iter().next() {
                return Ok(run);
            }
            let any = store
                .latest_runs(None, 1)
                .await
                .map_err(ReportError::Runs)?;
            if any.is_empty() {
                return Err(ReportError::NoRuns);
            }
            // A run still in progress (or one that failed) is never `latest`: its report
            // would hold only the keys checked so far.
            Err(ReportError::NotEnoughRuns(
                "no run has completed yet, so there is no `latest` (name a run with --run ID)"
                    .to_owned(),
            ))
        }
    }
}

/// The (earlier, later) runs `changes` compares: the two newest completed runs, run `run`
/// and the completed run before it, or run `since` and run `run` (the newest completed
/// when not given).
pub async fn resolve_pair(
    store: &Store,
    since: Option<i64>,
    run: Option<i64>,
) -> Result<(RunRecord, RunRecord), ReportError> {
    let (before, after) = match (since, run) {
        (None, None) => latest_pair(store).await?,
        (None, Some(id)) => {
            let after = resolve_run(store, RunSelector::Id(id)).await?;
            let before = store
                .completed_run_before(id)
                .await
                .map_err(ReportError::store(id))?
                .ok_or_else(|| {
                    ReportError::NotEnoughRuns(format!(
                        "no completed run before run {id} to compare with (give --since)"
                    ))
                })?;
            (before, after)
        }
        (Some(since), run) => {
            let before = resolve_run(store, RunSelector::Id(since)).await?;
            let after = match run {
                Some(id) => resolve_run(store, RunSelector::Id(id)).await?,
                None => latest_completed(store).await?,
            };
            (before, after)
        }
    };
    if before.id == after.id {
        return Err(ReportError::NotEnoughRuns(format!(
            "both sides of the comparison are run {} (give --since and --run)",
            before.id
        )));
    }
    Ok((before, after))
}

/// The two newest completed runs, the earlier first.
async fn latest_pair(store: &Store) -> Result<(RunRecord, RunRecord), ReportError> {
    let mut runs = store
        .latest_runs(Some(RunState::Completed), 2)
        .await
        .map_err(ReportError::Runs)?;
    if runs.len() < 2 {
        return Err(ReportError::NotEnoughRuns(format!(
            "changes compares two completed runs, and {} completed so far \
             (name them with --since and --run)",
            runs.len()
        )));
    }
    let after = runs.remove(0);
    Ok((runs.remove(0), after))
}

/// The newest completed run, to compare `--since` with.
async fn latest_completed(store: &Store) -> Result<RunRecord, ReportError> {
    store
        .latest_runs(Some(RunState::Completed), 1)
        .await
        .map_err(ReportError::Runs)?
        .into_iter()
        .next()
        .ok_or_else(|| {
            ReportError::NotEnoughRuns("no completed run to compare with (give --run)".to_owned())
        })
}

/// The line above the changes table.
pub fn changes_title(before: &RunRecord, after: &RunRecord) -> String {
    let describe = |r: &RunRecord| {
        format!(
            "run {} ({}, started {})",
            r.id,
            r.state.as_str(),
            kst_label(r.started_at)
        )
    };
    format!("Changes from {} to {}", describe(before), describe(after))
}

/// Parses `--status` values (already split at commas; blanks ignored, case-insensitive).
/// An empty list means every status.
pub fn parse_statuses(values: &[String]) -> Result<Vec<KeyStatus>, ReportError> {
    let mut statuses = Vec::new();
    for value in values {
        let name = value.trim();
        if name.is_empty() {
            continue;
        }
        let status = KeyStatus::parse(&name.to_ascii_lowercase()).ok_or_else(|| {
            ReportError::UnknownStatus {
                given: name.to_owned(),
            }
        })?;
        if !statuses.contains(&status) {
            statuses.push(status);
        }
    }
    Ok(statuses)
}

/// Which run a command is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunSelector {
    /// The newest completed run (none completed: exit 3).
    Latest,
    Id(i64),
}

impl RunSelector {
    /// Parses `--run`: a run id or `latest`.
    pub fn parse(value: &str) -> Result<Self, ReportError> {
        let value = value.trim();
        if value.eq_ignore_ascii_case("latest") {
            return Ok(Self::Latest);
        }
        value
            .parse()
            .map(Self::Id)
            .map_err(|_| ReportError::BadRunSelector(value.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::ExitStatus;

    #[test]
    fn sqlite_files_from_urls() {
        assert_eq!(
            sqlite_file("sqlite:///tmp/x.db?mode=rwc"),
            Some(PathBuf::from("/tmp/x.db"))
        );
        assert_eq!(
            sqlite_file("sqlite://payple-reconcile.db"),
            Some(PathBuf::from("payple-reconcile.db"))
        );
        assert_eq!(
            sqlite_file("sqlite:data.db"),
            Some(PathBuf::from("data.db"))
        );
        assert_eq!(sqlite_file("sqlite::memory:"), None);
        assert_eq!(sqlite_file("sqlite://x.db?mode=memory"), None);
        assert_eq!(sqlite_file("postgres://h/db"), None);
    }

    #[tokio::test]
    async fn a_missing_sqlite_file_is_not_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("none.db");
        let url = format!("sqlite://{}", path.display());
        let err = open_store(&url).await.err().unwrap();
        assert_eq!(err.exit_status(), ExitStatus::Config);
        assert!(err.to_string().contains("none.db"), "{err}");
        assert!(!path.exists());
    }

    #[test]
    fn statuses_parse_case_insensitively_and_reject_unknown_names() {
        let given = ["Active".to_owned(), " gone ".to_owned(), String::new()];
        assert_eq!(
            parse_statuses(&given).unwrap(),
            vec![KeyStatus::Active, KeyStatus::Gone]
        );
        assert!(parse_statuses(&[]).unwrap().is_empty());
        let err = parse_statuses(&["active".to_owned(), "expired".to_owned()]).unwrap_err();
        assert_eq!(err.exit_status(), ExitStatus::Config);
        let text = err.to_string();
        assert!(text.contains("\"expired\"") && text.contains("active, gone, failed, rejected"));
    }

    #[test]
    fn run_selectors() {
        assert_eq!(RunSelector::parse("latest").unwrap(), RunSelector::Latest);
        assert_eq!(RunSelector::parse(" 12 ").unwrap(), RunSelector::Id(12));
        let err = RunSelector::parse("yesterday").unwrap_err();
        assert_eq!(err.exit_status(), ExitStatus::Config);
    }
}

//! `run`, validated: the batch (key source, shard, resume, re-check, budget) and the Payple
//! client that serves it.

use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use chrono::FixedOffset;

use super::env::Env;
use super::error::{ConfigError, invalid};
use super::notify::{NotifySettings, notify_settings};
use super::payple::{PaypleSettings, payple_settings};
use super::report::{RunReport, run_report};
use crate::budget::{self, Budget, DueSpec, StopAt};
use crate::cli::{BudgetArgs, RunArgs};
use crate::pushgateway::{PushError, PushTarget};
use crate::source::columns::ColumnNames;
use crate::source::{SourceSpec, validate_identifier};
use crate::store::writer::BATCH_ROWS;

/// Which part of the keys this process checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: NonZeroU32,
}

impl Shard {
    pub const WHOLE: Shard = Shard {
        index: 0,
        count: NonZeroU32::MIN,
    };

    /// Whether a key (by its stable hash) belongs to this shard.
    pub fn owns(&self, hash: u64) -> bool {
        hash % u64::from(self.count.get()) == u64::from(self.index)
    }

    pub fn is_whole(&self) -> bool {
        self.count.get() == 1
    }

    /// Parses `INDEX/COUNT`.
    pub fn parse(value: &str) -> Result<Self, ConfigError> {
        let bad = || invalid("--shard", format!("{value:?} is not INDEX/COUNT, e.g. 0/3"));
        let (index, count) = value.split_once('/').ok_or_else(bad)?;
        let index: u32 = index.trim().parse().map_err(|_| bad())?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        Self::new(index, count)
    }

    pub fn new(index: u32, count: u32) -> Result<Self, ConfigError> {
        let count = NonZeroU32::new(count)
            .ok_or_else(|| invalid("--shard", "the shard count must be at least 1"))?;
        if index >= count.get() {
            return Err(invalid(
                "--shard",
                format!("index {index} is not below the count {count}"),
            ));
        }
        Ok(Self { index, count })
    }
}

/// Which run to continue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// Start a new run (or continue the run key's).
    No,
    /// The latest unfinished run; a new one if there is none.
    Latest,
    Run(i64),
}

/// Which completed run `--recheck-failed` re-checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecheckRun {
    /// The newest completed run.
    Latest,
    Run(i64),
}

/// `run`, validated: the batch and the Payple client that serves it.
#[derive(Debug, Clone)]
pub struct RunSettings {
    pub batch: BatchSettings,
    /// The client configuration, its rate already shared among the shards.
    pub payple: PaypleSettings,
}

/// Everything the batch needs besides the Payple client.
#[derive(Debug, Clone)]
pub struct BatchSettings {
    pub source: SourceSpec,
    pub source_database_url: Option<String>,
    pub database_url: String,
    pub concurrency: NonZeroUsize,
    pub resume: Resume,
    pub run_key: Option<String>,
    pub rerun: bool,
    /// `--recheck-failed`: the run whose failed keys are looked up again.
    pub recheck: Option<RecheckRun>,
    /// `--all-failed`: a re-check takes every failed key, not only transient failures.
    pub all_failed: bool,
    pub dry_run: bool,
    /// `--allow-empty-source`: a source with no valid key is not an error.
    pub allow_empty_source: bool,
    pub shutdown_grace: Duration,
    pub progress_interval: Duration,
    /// `--report` (with `--excel`).
    pub report: Option<RunReport>,
    pub notify: Option<NotifySettings>,
    pub shard: Shard,
    pub metrics_file: Option<PathBuf>,
    /// `--metrics-push`: where the run's metrics are pushed, and under which group.
    pub metrics_push: Option<PushTarget>,
    pub omit_pii: bool,
    pub write_batch: usize,
    /// `None`: every key, in input order.
    pub budget: Option<Budget>,
    /// Only with a budget and a table or query source.
    pub due: Option<DueSpec>,
    /// The zone of `--stop-at` and of due dates.
    pub timezone: FixedOffset,
    /// `--events-url`: where per-key events are delivered after the run.
    pub events: Option<crate::events::DeliveryConfig>,
}

/// Validates `run`'s flags and credentials; the lookup rate is divided among the shards.
pub fn run_settings(args: &RunArgs, env: &dyn Env) -> Result<RunSettings, ConfigError> {
    let batch = batch_settings(args, env)?;
    let mut payple = payple_settings(&args.payple, env)?;
    if let Some(rate) = &mut payple.client.rate {
        rate.share = batch.shard.count;
    }
    Ok(RunSettings { batch, payple })
}

/// Where `run` reads its keys: `--csv`, `--source-query`, or `--source-table`.
pub(super) fn source_spec(args: &RunArgs) -> Result<SourceSpec, ConfigError> {
    if args.csv.is_some() || args.xlsx.is_some() {
        return file_source(args);
    }
    if let Some(sql) = &args.source_query {
        if sql.trim().is_empty() {
            return Err(invalid("--source-query", "empty query"));
        }
        // Refused before a run is created or a database opened.
        crate::source::readonly::check_query(sql)
            .map_err(|e| invalid("--source-query", e.to_string()))?;
        return Ok(SourceSpec::Query { sql: sql.clone() });
    }
    let check = |flag: &'static str, v: &str| {
        validate_identifier(v)
            .map(str::to_owned)
            .map_err(|e| invalid(flag, e.to_string()))
    };
    Ok(SourceSpec::Table {
        table: check(
            "--source-table",
            args.source_table.as_deref().unwrap_or("billing_keys"),
        )?,
        id_column: check(
            "--id-column",
            args.id_column.as_deref().unwrap_or("payer_id"),
        )?,
        ref_column: match args.ref_column.as_deref().unwrap_or("customer_ref") {
            "none" | "" => None,
            other => Some(check("--ref-column", other)?),
        },
    })
}

/// `--csv` (with its encoding and delimiter) or `--xlsx` (with its sheet), and the column
/// names of either.
fn file_source(args: &RunArgs) -> Result<SourceSpec, ConfigError> {
    use crate::cli::{CsvEncodingArg, DelimiterArg};
    use crate::source::csv_file::{CsvFormat, Delimiter};
    use crate::source::decode::TextEncoding;
    let columns = ColumnNames::from_flags(args.id_column.as_deref(), args.ref_column.as_deref())
        .map_err(|(flag, why)| invalid(flag, why))?;
    if let Some(path) = &args.xlsx {
        return Ok(SourceSpec::Xlsx {
            path: path.clone(),
            sheet: args.sheet.clone(),
            columns,
        });
    }
    let path = args.csv.clone().unwrap_or_default();
    let encoding = match args.csv_encoding {
        None | Some(CsvEncodingArg::Auto) => TextEncoding::Auto,
        Some(CsvEncodingArg::Utf8) => TextEncoding::Utf8,
        Some(CsvEncodingArg::Utf16) => TextEncoding::Utf16,
        Some(CsvEncodingArg::Cp949) => TextEncoding::Cp949,
    };
    let delimiter = match args.delimiter {
        None => Delimiter::for_path(&path),
        Some(DelimiterArg::Comma) => Delimiter::Comma,
        Some(DelimiterArg::Tab) => Delimiter::Tab,
    };
    Ok(SourceSpec::Csv {
        path,
        format: CsvFormat {
            encoding,
            delimiter,
            columns,
        },
    })
}

/// This process's shard: `--shard`, or `--shards` with `JOB_COMPLETION_INDEX`.
pub(super) fn shard_of(args: &RunArgs, env: &dyn Env) -> Result<Shard, ConfigError> {
    Ok(match (&args.shard, args.shards) {
        (Some(s), _) => Shard::parse(s)?,
        (None, Some(count)) => {
            let index = env.var("JOB_COMPLETION_INDEX").ok_or_else(|| {
                invalid(
                    "--shards",
                    "JOB_COMPLETION_INDEX is not set (use --shard INDEX/COUNT outside an Indexed Job)",
                )
            })?;
            let index = index
                .trim()
                .parse()
                .map_err(|_| invalid("--shards", "JOB_COMPLETION_INDEX is not a number"))?;
            Shard::new(index, count)?
        }
        (None, None) => Shard::WHOLE,
    })
}

/// Validates `run`'s batch flags (not the Payple ones). `env` supplies
/// `JOB_COMPLETION_INDEX` for `--shards`.
pub fn batch_settings(args: &RunArgs, env: &dyn Env) -> Result<BatchSettings, ConfigError> {
    let recheck = recheck_settings(args)?;
    let source = source_spec(args)?;
    let concurrency = NonZeroUsize::new(args.concurrency)
        .filter(|n| n.get() <= 1024)
        .ok_or_else(|| invalid("--concurrency", "must be within 1..=1024"))?;
    let resume = resume_of(args)?;
    let shard = shard_of(args, env)?;
    check_shard(args, shard, &resume)?;
    if args
        .run_key
        .as_deref()
        .is_some_and(|k| k.trim().is_empty() || k.len() > 200)
    {
        return Err(invalid("--run-key", "must be 1 to 200 characters"));
    }
    let write_batch = args.write_batch.unwrap_or(BATCH_ROWS);
    if !(1..=100_000).contains(&write_batch) {
        return Err(invalid("--write-batch", "must be within 1..=100000"));
    }
    let (budget, due, timezone) = budget_settings(&args.budget, &source)?;
    Ok(BatchSettings {
        source,
        source_database_url: args.source_database_url.clone(),
        database_url: args.database.database_url.clone(),
        concurrency,
        resume,
        run_key: args.run_key.clone(),
        rerun: args.rerun,
        recheck,
        all_failed: args.all_failed,
        dry_run: args.dry_run,
        allow_empty_source: args.allow_empty_source,
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
        progress_interval: Duration::from_secs(args.progress_interval.max(1)),
        report: run_report(args.report.as_deref(), args.excel),
        notify: notify_settings(&args.notify, args.notify_on)?,
        shard,
        metrics_file: args.metrics_file.clone(),
        metrics_push: metrics_push(args, shard)?,
        omit_pii: args.omit_pii,
        write_batch,
        budget,
        due,
        timezone,
        events: super::events::events_settings(&args.events, env)?,
    })
}

/// `--resume`: a run id or `latest`; not with `--run-key`, which continues its own run.
fn resume_of(args: &RunArgs) -> Result<Resume, ConfigError> {
    let resume = match args.resume.as_deref() {
        None => Resume::No,
        Some("latest") => Resume::Latest,
        Some(id) => Resume::Run(
            id.parse()
                .map_err(|_| invalid("--resume", format!("{id:?} is not a run id")))?,
        ),
    };
    if resume != Resume::No && args.run_key.is_some() {
        return Err(invalid(
            "--resume",
            "--run-key already continues its unfinished run; give one or the other",
        ));
    }
    Ok(resume)
}

/// What shards of one run must share (a run key) and cannot (`--rerun`, stdin).
fn check_shard(args: &RunArgs, shard: Shard, resume: &Resume) -> Result<(), ConfigError> {
    if shard.is_whole() {
        return Ok(());
    }
    if args.run_key.is_none() && *resume == Resume::No {
        return Err(invalid(
            "--shard",
            "shards must share a run: give them the same --run-key",
        ));
    }
    if args.rerun {
        return Err(invalid("--rerun", "not supported with shards"));
    }
    if args.csv.as_deref().is_some_and(|p| p.as_os_str() == "-") {
        return Err(invalid("--csv", "stdin cannot be shared by shards"));
    }
    Ok(())
}

/// `--metrics-push` and `--metrics-instance`; a sharded run's group names its shard index.
fn metrics_push(args: &RunArgs, shard: Shard) -> Result<Option<PushTarget>, ConfigError> {
    let Some(url) = &args.metrics_push else {
        return Ok(None);
    };
    let shard = (!shard.is_whole()).then_some(shard.index);
    PushTarget::new(url, args.metrics_instance.as_deref(), shard)
        .map(Some)
        .map_err(|e| match e {
            PushError::BadInstance(_) => invalid("--metrics-instance", e.to_string()),
            _ => invalid("--metrics-push", e.to_string()),
        })
}

/// `--recheck-failed [RUN_ID|latest]` and `--all-failed`: the keys come from the run, so
/// every flag naming a source, another run or a shard is refused. `--source-database-url`
/// is not: it names no keys, and the Kubernetes samples set it for every pod
/// (`SOURCE_DATABASE_URL`); a re-check never reads it.
pub(super) fn recheck_settings(args: &RunArgs) -> Result<Option<RecheckRun>, ConfigError> {
    let Some(value) = args.recheck_failed.as_deref() else {
        if args.all_failed && args.run_key.is_none() {
            return Err(invalid(
                "--all-failed",
                "only with --recheck-failed, or a --run-key whose run completed",
            ));
        }
        return Ok(None);
    };
    let which = match value.trim() {
        "latest" => RecheckRun::Latest,
        id => RecheckRun::Run(id.parse().map_err(|_| {
            invalid(
                "--recheck-failed",
                format!("{id:?} is not a run id (or `latest`)"),
            )
        })?),
    };
    let given = [
        ("--csv", args.csv.is_some()),
        ("--xlsx", args.xlsx.is_some()),
        ("--source-table", args.source_table.is_some()),
        ("--id-column", args.id_column.is_some()),
        ("--ref-column", args.ref_column.is_some()),
        ("--source-query", args.source_query.is_some()),
        ("--resume", args.resume.is_some()),
        ("--run-key (or PAYPLE_RUN_KEY)", args.run_key.is_some()),
        ("--dry-run", args.dry_run),
        ("--shard", args.shard.is_some()),
        ("--shards", args.shards.is_some()),
    ];
    if let Some((flag, _)) = given.iter().find(|(_, set)| *set) {
        return Err(invalid(
            "--recheck-failed",
            format!(
                "{flag} cannot be given with it: the keys, their source and shard come from \
                 the run being re-checked"
            ),
        ));
    }
    Ok(Some(which))
}

/// Validates the budget flags: the budget (if any), the due-date column, the time zone.
pub(super) fn budget_settings(
    args: &BudgetArgs,
    source: &SourceSpec,
) -> Result<(Option<Budget>, Option<DueSpec>, FixedOffset), ConfigError> {
    let timezone = budget::parse_timezone(&args.timezone).map_err(|e| invalid("--timezone", e))?;
    let max_lookups = match args.max_lookups {
        Some(0) => return Err(invalid("--max-lookups", "must be at least 1")),
        n => n,
    };
    let time = args
        .time_budget
        .as_deref()
        .map(budget::parse_duration)
        .transpose()
        .map_err(|e| invalid("--time-budget", e))?;
    let stop_at = args
        .stop_at
        .as_deref()
        .map(budget::parse_time_of_day)
        .transpose()
        .map_err(|e| invalid("--stop-at", e))?
        .map(|time| StopAt {
            time,
            offset: timezone,
        });
    let budget = Budget {
        max_lookups,
        time,
        stop_at,
    }
    .if_any();
    let due = match &args.due_column {
        None => None,
        Some(_) if budget.is_none() => {
            return Err(invalid(
                "--due-column",
                "orders a budgeted run: give --max-lookups, --time-budget or --stop-at",
            ));
        }
        Some(_) if source.is_file() => {
            return Err(invalid(
                "--due-column",
                "needs --source-table or --source-query",
            ));
        }
        Some(column) => Some(DueSpec {
            column: validate_identifier(column)
                .map_err(|e| invalid("--due-column", e.to_string()))?
                .to_owned(),
            within: budget::parse_duration(&args.due_within)
                .map_err(|e| invalid("--due-within", e))?,
        }),
    };
    Ok((budget, due, timezone))
}

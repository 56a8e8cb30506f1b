//! Validated settings: the raw flags and environment turned, once, into typed values
//! (`Duration`s, non-zero counts, secret credentials, an enum for the key source). A bad
//! configuration stops here, before any lookup is sent.

use std::net::{IpAddr, SocketAddr};
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use chrono::FixedOffset;
use secrecy::SecretString;
use url::Url;

use crate::budget::{self, Budget, DueSpec, StopAt};
use crate::cli::{
    BudgetArgs, ChangesArgs, Cli, Command, DatabaseArgs, LookupArgs, NotifyArgs, NotifyCmdArgs,
    NotifyFormatArg, NotifyOnArg, PaypleArgs, ReportArgs, ReportFormatArg, RunArgs, SimulateArgs,
};
use crate::domain::KeyStatus;
use crate::notify::{NotifierConfig, NotifyFormat, NotifyOn, WebhookUrl};
use crate::payple::classify::CodeBook;
use crate::payple::health::HealthConfig;
use crate::payple::{
    ClientConfig, LIVE_ORIGIN, Rate, TEST_CST_ID, TEST_CUST_KEY, TEST_ORIGIN, TEST_REFERER,
};
use crate::pushgateway::{PushError, PushTarget};
use crate::report::output::ReportFormat;
use crate::report::{ReportError, RunSelector, parse_statuses};
use crate::source::columns::ColumnNames;
use crate::source::{SourceSpec, validate_identifier};

/// A configuration that cannot run: exit code 3.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} is not set (see --help for the credentials the job needs)")]
    MissingEnv(&'static str),
    #[error("--payple-url {value:?}: {reason}")]
    BadOrigin { value: String, reason: String },
    #[error("cannot read --cust-key-file {path}: {source}")]
    CustKeyFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{flag}: {reason}")]
    Invalid { flag: &'static str, reason: String },
    #[error(transparent)]
    Report(#[from] ReportError),
}

impl ConfigError {
    /// `--resume` names a run whose stored source cannot be read back.
    pub fn unreadable_resumed_source(run_id: i64, reason: impl std::fmt::Display) -> Self {
        invalid(
            "--resume",
            format!("run {run_id} has an unreadable source: {reason}"),
        )
    }
}

fn invalid(flag: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        flag,
        reason: reason.into(),
    }
}

/// Reads an environment variable; injectable so tests need not touch the process's.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl<F: Fn(&str) -> Option<String>> Env for F {
    fn var(&self, name: &str) -> Option<String> {
        self(name)
    }
}

/// Turns `--payple-url` into an origin: `test`, `live`, or an https URL (plain http only
/// on loopback), with no path.
pub fn parse_origin(value: &str) -> Result<Url, ConfigError> {
    let bad = |reason: &str| ConfigError::BadOrigin {
        value: value.to_owned(),
        reason: reason.to_owned(),
    };
    let raw = match value.trim() {
        "test" | "" => TEST_ORIGIN,
        "live" => LIVE_ORIGIN,
        other => other,
    };
    let url = Url::parse(raw).map_err(|e| bad(&e.to_string()))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("credentials do not belong in the URL"));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(bad("give the origin only (scheme, host, port), no path"));
    }
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(&url) => {}
        "http" => return Err(bad("plain http is allowed only for loopback addresses")),
        _ => return Err(bad("the scheme must be https")),
    }
    Ok(url)
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

/// Where the Payple client sends its requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaypleTarget {
    /// `--simulator`: the built-in simulator, started by the command on a loopback port.
    Simulator,
    /// `--payple-url`: a real (or separately run) Payple origin.
    Origin(Url),
}

/// How to reach Payple, validated: the target and the whole client configuration.
#[derive(Debug, Clone)]
pub struct PaypleSettings {
    pub target: PaypleTarget,
    /// Complete for [`PaypleTarget::Origin`]. For [`PaypleTarget::Simulator`] its origin is
    /// [`SIMULATOR_PLACEHOLDER`] until the command has started the simulator and calls
    /// [`ClientConfig::with_origin`] with its URL.
    pub client: ClientConfig,
}

/// The origin a `--simulator` configuration holds before the simulator has a port.
pub const SIMULATOR_PLACEHOLDER: &str = "http://127.0.0.1/";

/// Validates the Payple flags and credentials. With `--simulator`, missing credentials
/// default to Payple's documented test partner.
pub fn payple_settings(args: &PaypleArgs, env: &dyn Env) -> Result<PaypleSettings, ConfigError> {
    let target = if args.simulator {
        PaypleTarget::Simulator
    } else {
        PaypleTarget::Origin(parse_origin(&args.payple_url)?)
    };
    let origin = match &target {
        PaypleTarget::Origin(url) => url.clone(),
        PaypleTarget::Simulator => parse_origin(SIMULATOR_PLACEHOLDER)?,
    };
    let (cst_id, cust_key, referer) = credentials(args, env, target == PaypleTarget::Simulator)?;
    if args.token_ttl < 2 {
        return Err(invalid("--token-ttl", "must be at least 2 seconds"));
    }
    if !(args.request_timeout > 0.0 && args.request_timeout <= 600.0) {
        return Err(invalid(
            "--request-timeout",
            "must be within (0, 600] seconds",
        ));
    }
    if args.max_attempts == 0 || args.max_attempts > 20 {
        return Err(invalid("--max-attempts", "must be within 1..=20"));
    }
    let codes = code_book(args)?;
    if args.outage_budget == 0 {
        return Err(invalid("--outage-budget", "must be at least 1 second"));
    }
    let request_timeout = Duration::from_secs_f64(args.request_timeout);
    let client = ClientConfig {
        origin,
        cst_id: SecretString::from(cst_id),
        cust_key: SecretString::from(cust_key),
        referer,
        token_ttl: Duration::from_secs(args.token_ttl),
        refresh_margin: Duration::from_secs(args.token_refresh_margin),
        request_timeout,
        connect_timeout: request_timeout.min(Duration::from_secs(5)),
        max_attempts: args.max_attempts,
        retry_base: Duration::from_millis(args.retry_base_ms.max(1)),
        retry_cap: Duration::from_secs(10),
        rate: NonZeroU32::new(args.rate).map(|per_second| Rate {
            per_second,
            share: NonZeroU32::MIN,
        }),
        codes,
        health: HealthConfig {
            budget: Duration::from_secs(args.outage_budget),
            probe_timeout: request_timeout * 2 + Duration::from_secs(1),
            ..HealthConfig::default()
        },
    };
    Ok(PaypleSettings { target, client })
}

/// The partner id, custKey and Referer from the environment (custKey from
/// `--cust-key-file` when given); for the simulator, the test partner's where unset.
fn credentials(
    args: &PaypleArgs,
    env: &dyn Env,
    simulator: bool,
) -> Result<(String, String, String), ConfigError> {
    let or_test = |name: &'static str, test: &str| -> Result<String, ConfigError> {
        match env.var(name) {
            Some(v) => Ok(v),
            None if simulator => Ok(test.to_owned()),
            None => Err(ConfigError::MissingEnv(name)),
        }
    };
    let cst_id = or_test("PAYPLE_CST_ID", TEST_CST_ID)?;
    let cust_key = match &args.cust_key_file {
        Some(path) => read_small_file(path, MAX_CUST_KEY_FILE)
            .map(|s| s.trim().to_owned())
            .map_err(|source| ConfigError::CustKeyFile {
                path: path.clone(),
                source,
            })?,
        None => or_test("PAYPLE_CUST_KEY", TEST_CUST_KEY)?,
    };
    if cust_key.is_empty() {
        return Err(ConfigError::MissingEnv("PAYPLE_CUST_KEY"));
    }
    let referer = or_test("PAYPLE_REFERER", TEST_REFERER)?;
    if referer.parse::<reqwest::header::HeaderValue>().is_err() {
        return Err(invalid("PAYPLE_REFERER", "not a valid header value"));
    }
    Ok((cst_id, cust_key, referer))
}

/// The code book: defaults, `--gone-codes` replacing the gone codes, then `--codes FILE`
/// merged over them.
fn code_book(args: &PaypleArgs) -> Result<CodeBook, ConfigError> {
    let mut codes = CodeBook::default();
    if let Some(gone) = &args.gone_codes {
        let gone: Vec<String> = gone
            .iter()
            .map(|c| c.trim().to_owned())
            .filter(|c| !c.is_empty())
            .collect();
        if gone.is_empty() {
            return Err(invalid("--gone-codes", "give at least one code"));
        }
        codes = codes
            .with_gone(gone)
            .map_err(|e| invalid("--gone-codes", e.to_string()))?;
    }
    if let Some(path) = &args.codes {
        let text = read_small_file(path, MAX_CODES_FILE)
            .map_err(|e| invalid("--codes", format!("{}: {e}", path.display())))?;
        codes = codes
            .merge_toml(&text)
            .map_err(|e| invalid("--codes", format!("{}: {e}", path.display())))?;
    }
    Ok(codes)
}

/// Where and how run notifications go.
#[derive(Debug, Clone)]
pub struct NotifySettings {
    pub notifier: NotifierConfig,
    pub format: NotifyFormat,
    pub on: NotifyOn,
}

/// Validates the notification flags: `None` when no URL is given. A bad URL is a
/// configuration error naming its host only (the URL is a secret).
pub fn notify_settings(
    args: &NotifyArgs,
    on: NotifyOnArg,
) -> Result<Option<NotifySettings>, ConfigError> {
    let mut urls = Vec::new();
    for value in &args.notify {
        urls.extend(WebhookUrl::parse_list(value).map_err(|e| invalid("--notify", e.to_string()))?);
    }
    if urls.is_empty() {
        return Ok(None);
    }
    if !(args.notify_timeout > 0.0 && args.notify_timeout <= 120.0) {
        return Err(invalid(
            "--notify-timeout",
            "must be within (0, 120] seconds",
        ));
    }
    Ok(Some(NotifySettings {
        notifier: NotifierConfig {
            urls,
            timeout: Duration::from_secs_f64(args.notify_timeout),
            attempts: 3,
            backoff: Duration::from_millis(args.notify_backoff_ms),
        },
        format: match args.notify_format {
            NotifyFormatArg::Slack => NotifyFormat::Slack,
            NotifyFormatArg::Json => NotifyFormat::Json,
        },
        on: match on {
            NotifyOnArg::Always => NotifyOn::Always,
            NotifyOnArg::Changes => NotifyOn::Changes,
            NotifyOnArg::Problems => NotifyOn::Problems,
        },
    }))
}

/// The most `--cust-key-file` may hold: a partner key is a few dozen characters.
pub const MAX_CUST_KEY_FILE: u64 = 4096;

/// The most a `--codes` file may hold: a code book of a few hundred codes is a few KiB,
/// and a file pointed at by mistake (a log, a dump, `/dev/zero`) is refused unread.
pub const MAX_CODES_FILE: u64 = 1024 * 1024;

/// Reads a small text file, refusing one larger than `cap` bytes without reading further
/// (`/dev/zero` fails at once).
pub fn read_small_file(path: &std::path::Path, cap: u64) -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(cap + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > cap {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {cap} bytes; not the small text file expected"),
        ));
    }
    String::from_utf8(bytes)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"))
}

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
    pub report: Option<PathBuf>,
    pub excel: bool,
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
fn source_spec(args: &RunArgs) -> Result<SourceSpec, ConfigError> {
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
fn shard_of(args: &RunArgs, env: &dyn Env) -> Result<Shard, ConfigError> {
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
    let shard = shard_of(args, env)?;
    if !shard.is_whole() && args.run_key.is_none() && resume == Resume::No {
        return Err(invalid(
            "--shard",
            "shards must share a run: give them the same --run-key",
        ));
    }
    if !shard.is_whole() && args.rerun {
        return Err(invalid("--rerun", "not supported with shards"));
    }
    if !shard.is_whole() && args.csv.as_deref().is_some_and(|p| p.as_os_str() == "-") {
        return Err(invalid("--csv", "stdin cannot be shared by shards"));
    }
    if args
        .run_key
        .as_deref()
        .is_some_and(|k| k.trim().is_empty() || k.len() > 200)
    {
        return Err(invalid("--run-key", "must be 1 to 200 characters"));
    }
    if !(1..=100_000).contains(&args.write_batch) {
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
        report: args.report.clone(),
        excel: args.excel,
        notify: notify_settings(&args.notify, args.notify_on)?,
        shard,
        metrics_file: args.metrics_file.clone(),
        metrics_push: metrics_push(args, shard)?,
        omit_pii: args.omit_pii,
        write_batch: args.write_batch,
        budget,
        due,
        timezone,
    })
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
fn recheck_settings(args: &RunArgs) -> Result<Option<RecheckRun>, ConfigError> {
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
fn budget_settings(
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

/// One validated configuration per subcommand: what [`from_cli`] turns the command line
/// into. Nothing past it sees a clap type.
#[derive(Debug)]
pub enum Settings {
    Run(Box<RunSettings>),
    Lookup(Box<LookupSettings>),
    Simulate(Box<SimulateSettings>),
    Migrate(DatabaseSettings),
    Report(ReportSettings),
    Changes(ChangesSettings),
    Summary(SummarySettings),
    Notify(NotifyCmdSettings),
}

/// Validates the command line (and the environment `env` stands for) into [`Settings`].
pub fn from_cli(cli: Cli, env: &dyn Env) -> Result<Settings, ConfigError> {
    Ok(match cli.command {
        Command::Run(args) => Settings::Run(Box::new(run_settings(&args, env)?)),
        Command::Lookup(args) => Settings::Lookup(Box::new(lookup_settings(args, env)?)),
        Command::Simulate(args) => Settings::Simulate(Box::new(simulate_settings(&args))),
        Command::Migrate(args) => Settings::Migrate(database_settings(args)),
        Command::Report(args) => Settings::Report(report_settings(args)?),
        Command::Changes(args) => Settings::Changes(changes_settings(args)),
        Command::Summary(args) => Settings::Summary(SummarySettings {
            database: database_settings(args.database),
            run: args.run.map_or(RunSelector::Latest, RunSelector::Id),
        }),
        Command::Notify(args) => Settings::Notify(notify_cmd_settings(args)?),
    })
}

/// The results database a command works on.
#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    pub database_url: String,
}

fn database_settings(args: DatabaseArgs) -> DatabaseSettings {
    DatabaseSettings {
        database_url: args.database_url,
    }
}

/// `lookup`, validated.
#[derive(Debug, Clone)]
pub struct LookupSettings {
    pub payer_ids: Vec<String>,
    pub payple: PaypleSettings,
    /// Lookups in flight at most (1 to 64).
    pub concurrency: usize,
}

fn lookup_settings(args: LookupArgs, env: &dyn Env) -> Result<LookupSettings, ConfigError> {
    Ok(LookupSettings {
        payple: payple_settings(&args.payple, env)?,
        concurrency: args.concurrency.clamp(1, 64),
        payer_ids: args.payer_ids,
    })
}

/// `report`, validated.
#[derive(Debug, Clone)]
pub struct ReportSettings {
    pub database: DatabaseSettings,
    pub run: RunSelector,
    /// Only these statuses; empty for all.
    pub statuses: Vec<KeyStatus>,
    /// `-` for stdout.
    pub output: PathBuf,
    pub excel: bool,
    /// `--format`, or the one `--output`'s extension names.
    pub format: ReportFormat,
    /// xlsx: rows per worksheet, header included.
    pub sheet_rows: u32,
}

fn report_settings(args: ReportArgs) -> Result<ReportSettings, ConfigError> {
    let format = match args.format {
        Some(ReportFormatArg::Csv) => ReportFormat::Csv,
        Some(ReportFormatArg::Xlsx) => ReportFormat::Xlsx,
        None => ReportFormat::from_path(&args.output),
    };
    let statuses = parse_statuses(args.status.as_deref().unwrap_or_default())?;
    if format == ReportFormat::Xlsx && !statuses.is_empty() {
        return Err(invalid(
            "--status",
            "filters CSV reports only; the workbook's Action sheet lists the gone and failed keys",
        ));
    }
    if args.sheet_rows < 2 {
        return Err(invalid("--sheet-rows", "must be at least 2"));
    }
    Ok(ReportSettings {
        statuses,
        run: RunSelector::parse(&args.run)?,
        database: database_settings(args.database),
        output: args.output,
        excel: args.excel,
        format,
        sheet_rows: args.sheet_rows,
    })
}

/// `notify`, validated: a webhook is required.
#[derive(Debug, Clone)]
pub struct NotifyCmdSettings {
    pub database: DatabaseSettings,
    pub run: RunSelector,
    pub notify: NotifySettings,
}

fn notify_cmd_settings(args: NotifyCmdArgs) -> Result<NotifyCmdSettings, ConfigError> {
    let notify = notify_settings(&args.notify, NotifyOnArg::Always)?
        .ok_or_else(|| invalid("--notify", "give a webhook URL (or set PAYPLE_NOTIFY_URL)"))?;
    Ok(NotifyCmdSettings {
        database: database_settings(args.database),
        run: RunSelector::parse(&args.run)?,
        notify,
    })
}

/// `changes`, validated.
#[derive(Debug, Clone)]
pub struct ChangesSettings {
    pub database: DatabaseSettings,
    pub since: Option<i64>,
    pub run: Option<i64>,
    /// CSV here (`-` for stdout); `None` for a text table on stdout.
    pub output: Option<PathBuf>,
    pub excel: bool,
}

fn changes_settings(args: ChangesArgs) -> ChangesSettings {
    ChangesSettings {
        database: database_settings(args.database),
        since: args.since,
        run: args.run,
        output: args.output,
        excel: args.excel,
    }
}

/// `summary`, validated.
#[derive(Debug, Clone)]
pub struct SummarySettings {
    pub database: DatabaseSettings,
    pub run: RunSelector,
}

/// `simulate`: the address to listen on and the simulator's flags as given. Nothing here
/// needs checking before the simulator starts: `app::simulate` turns the flags into the
/// simulator's configuration, which checks its fault fractions and key file itself.
#[derive(Debug, Clone)]
pub struct SimulateSettings {
    pub addr: SocketAddr,
    pub flags: SimulateArgs,
}

fn simulate_settings(args: &SimulateArgs) -> SimulateSettings {
    SimulateSettings {
        addr: SocketAddr::new(args.bind, args.port),
        flags: args.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

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
            Some(crate::payple::classify::CodeClass::Gone)
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
}

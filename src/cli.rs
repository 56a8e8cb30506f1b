//! The command line as typed: clap structures only. `settings::from_cli` turns them into
//! validated settings, once; nothing past that sees a flag.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::exit;
use crate::telemetry::LogFormat;

const CREDENTIALS_HELP: &str = "\
Credentials come from the environment only, never from flags:
  PAYPLE_CST_ID     partner id (cst_id)
  PAYPLE_CUST_KEY   partner key (custKey), or --cust-key-file PATH
  PAYPLE_REFERER    the partner's registered domain, sent as Referer";

/// Checks stored Payple billing keys (PCD_PAYER_ID) and records which still work.
#[derive(Debug, Parser)]
#[command(name = "payple-reconcile", version, after_help = exit::help_text())]
pub struct Cli {
    /// Log line format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "PAYPLE_LOG_FORMAT", hide_env_values = true)]
    pub log_format: LogFormat,
    /// Log filter (`info`, `debug`, `payple_reconcile=trace`); RUST_LOG wins when set.
    #[arg(long, global = true, default_value = "info")]
    pub log_level: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The nightly batch: read keys, look each up, write results.
    #[command(after_help = format!("{CREDENTIALS_HELP}\n\n{}", exit::help_text()))]
    Run(Box<RunArgs>),
    /// Look a few keys up now and print one JSON object per key on stdout.
    #[command(after_help = format!("{CREDENTIALS_HELP}\n\n{}", exit::help_text()))]
    Lookup(LookupArgs),
    /// Serve a Payple simulator on loopback (tests, demos, benchmarks).
    Simulate(SimulateArgs),
    /// Create or upgrade the results schema.
    Migrate(DatabaseArgs),
    /// Write a run's results as CSV for finance.
    Report(ReportArgs),
    /// List keys whose status changed between two runs.
    Changes(ChangesArgs),
    /// Counts per status, card company and bank for a run.
    Summary(SummaryArgs),
    /// Send a run's notification again (e.g. to try a webhook).
    Notify(NotifyCmdArgs),
    /// The per-key event outbox: deliver what is pending, or list it.
    #[command(subcommand)]
    Events(EventsCmd),
}

/// The notification message format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NotifyFormatArg {
    /// Slack-compatible incoming-webhook JSON (`text` and `blocks`).
    Slack,
    /// A documented JSON document (see docs/reports.md).
    Json,
}

/// `--csv-encoding`: the text encoding of a key file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CsvEncodingArg {
    /// A byte-order mark, else UTF-8 if the text is valid UTF-8, else CP949.
    Auto,
    #[value(name = "utf-8", alias = "utf8")]
    Utf8,
    /// UTF-16, little-endian unless a byte-order mark says otherwise.
    #[value(name = "utf-16", alias = "utf16")]
    Utf16,
    /// CP949 (EUC-KR), what Korean Excel saves as CSV.
    #[value(alias = "euc-kr")]
    Cp949,
}

/// `--delimiter`: what separates a key file's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DelimiterArg {
    Comma,
    Tab,
}

/// When `run` sends its notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NotifyOnArg {
    /// After every run.
    Always,
    /// When something changed against the previous completed run, or the run did not
    /// complete cleanly.
    Changes,
    /// When the run did not complete cleanly, or keys newly went or newly fail.
    Problems,
}

/// Where and how notifications go (`run`, `notify`).
#[derive(Debug, Clone, Args)]
pub struct NotifyArgs {
    /// Post a message about the run to this webhook URL (repeatable; also
    /// PAYPLE_NOTIFY_URL, comma-separated). Only the host is ever logged.
    #[arg(
        long = "notify",
        value_name = "URL",
        env = "PAYPLE_NOTIFY_URL",
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub notify: Vec<String>,
    /// Message format.
    #[arg(long, value_enum, default_value_t = NotifyFormatArg::Slack)]
    pub notify_format: NotifyFormatArg,
    /// Seconds one notification attempt may take.
    #[arg(long, default_value_t = 10.0, value_name = "SECS", hide = true)]
    pub notify_timeout: f64,
    /// First pause between notification attempts, in milliseconds (doubles).
    #[arg(long, default_value_t = 1000, hide = true)]
    pub notify_backoff_ms: u64,
}

/// The report file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormatArg {
    Csv,
    Xlsx,
}

/// How to reach Payple, shared by `run` and `lookup`.
#[derive(Debug, Clone, Args)]
pub struct PaypleArgs {
    /// Payple origin: `test` (https://democpay.payple.kr), `live` (https://cpay.payple.kr),
    /// or a URL (plain http only on loopback).
    #[arg(
        long,
        env = "PAYPLE_URL",
        hide_env_values = true,
        default_value = "test"
    )]
    pub payple_url: String,
    /// Read custKey from this file instead of PAYPLE_CUST_KEY (e.g. a mounted Secret).
    #[arg(long, env = "PAYPLE_CUST_KEY_FILE", hide_env_values = true)]
    pub cust_key_file: Option<PathBuf>,
    /// Start the built-in simulator on an ephemeral loopback port and use it; it accepts
    /// the configured credentials, which default to Payple's documented test partner.
    #[arg(long)]
    pub simulator: bool,
    /// Token lifetime in seconds (Payple: 30 minutes).
    #[arg(long, default_value_t = 1800, value_name = "SECS")]
    pub token_ttl: u64,
    /// Renew the token this many seconds before it lapses (at most half the lifetime).
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    pub token_refresh_margin: u64,
    /// Timeout of one HTTP request, in seconds.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub request_timeout: f64,
    /// Attempts per key for transient failures (timeouts, 5xx, broken replies).
    #[arg(long, default_value_t = 4)]
    pub max_attempts: u32,
    /// Lookups per second (burst 1); 0 for no limit. With shards, the global budget.
    #[arg(long, default_value_t = 10)]
    pub rate: u32,
    /// Result codes meaning the key is gone (comma-separated); replaces the default gone
    /// codes (SPAY0005,RPAY0005,SPCD0012,SPCD0001,SPCD0011,CPAY0002,CPAY0003,CPAY0004).
    #[arg(long, value_delimiter = ',', value_name = "CODES")]
    pub gone_codes: Option<Vec<String>>,
    /// A TOML file whose [codes] table maps a code or a `*`-pattern to a class (gone,
    /// reauth, transient, maintenance, config, failed), merged over the defaults.
    #[arg(long, value_name = "FILE")]
    pub codes: Option<PathBuf>,
    /// Seconds the run may spend paused because Payple is unavailable (open circuit,
    /// Retry-After) before it stops with exit code 4, resumable.
    #[arg(long, default_value_t = 1800, value_name = "SECS")]
    pub outage_budget: u64,
    /// First retry delay in milliseconds (doubles, with jitter, up to 10 s).
    #[arg(long, default_value_t = 250, hide = true)]
    pub retry_base_ms: u64,
}

/// Where the results database is.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// Results database: sqlite://FILE, postgres://..., or mysql://...
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        default_value = "sqlite://payple-reconcile.db"
    )]
    pub database_url: String,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Read keys from a CSV file (header `payer_id` or `PCD_PAYER_ID`, optional
    /// `customer_ref`; UTF-8, UTF-16 or CP949); `-` for stdin.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["source_table", "source_query", "xlsx"])]
    pub csv: Option<PathBuf>,
    /// The text encoding of --csv [default: auto].
    #[arg(long, value_enum, value_name = "ENCODING", requires = "csv")]
    pub csv_encoding: Option<CsvEncodingArg>,
    /// The field separator of --csv [default: tab for a .tsv file, comma otherwise].
    #[arg(long, value_enum, requires = "csv")]
    pub delimiter: Option<DelimiterArg>,
    /// Read keys from an Excel workbook (.xlsx), the same columns as --csv.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["source_table", "source_query"])]
    pub xlsx: Option<PathBuf>,
    /// The sheet of --xlsx [default: the first].
    #[arg(long, value_name = "NAME", requires = "xlsx")]
    pub sheet: Option<String>,
    /// Read keys from this table (the default source when no --csv or --source-query)
    /// [default: billing_keys].
    #[arg(long, value_name = "NAME")]
    pub source_table: Option<String>,
    /// The key column of --source-table [default: payer_id], or the key column's header in
    /// --csv/--xlsx [default: payer_id or PCD_PAYER_ID, any case].
    #[arg(long, value_name = "COL")]
    pub id_column: Option<String>,
    /// The customer reference column of --source-table, or its header in --csv/--xlsx;
    /// `none` for no such column [default: customer_ref].
    #[arg(long, value_name = "COL")]
    pub ref_column: Option<String>,
    /// Read keys with this query: first column the key, second the customer reference.
    #[arg(long, value_name = "SQL", conflicts_with_all = ["csv", "xlsx"])]
    pub source_query: Option<String>,
    /// The database --source-table/--source-query read from (default: the results one).
    #[arg(long, env = "SOURCE_DATABASE_URL", hide_env_values = true)]
    pub source_database_url: Option<String>,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub payple: PaypleArgs,
    /// Lookups in flight at most.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Continue the latest unfinished run, or the run RUN_ID: only keys without a result
    /// are looked up.
    #[arg(long, value_name = "RUN_ID", num_args = 0..=1, default_missing_value = "latest")]
    pub resume: Option<String>,
    /// Name this logical run (e.g. the schedule's date): the same key continues its
    /// unfinished run, and a completed one is not run again unless --rerun.
    #[arg(long, env = "PAYPLE_RUN_KEY", hide_env_values = true)]
    pub run_key: Option<String>,
    /// Run again even though the run key already completed.
    #[arg(long, requires = "run_key")]
    pub rerun: bool,
    /// Look up again the keys that failed in a completed run (RUN_ID, or `latest`: the
    /// newest completed run), by default only those whose failure said nothing about the
    /// key (transport errors, timeouts, HTTP 5xx and 429, broken replies, maintenance,
    /// unknown codes). Their rows are updated in place and the run's counts recomputed. The
    /// keys come from the run: no source flag.
    #[arg(long, value_name = "RUN_ID", num_args = 0..=1, default_missing_value = "latest")]
    pub recheck_failed: Option<String>,
    /// With --recheck-failed, or a --run-key that already completed: re-check every
    /// failed key, whatever the reason.
    #[arg(long)]
    pub all_failed: bool,
    /// Check configuration, source and credentials (one auth call), count keys, write
    /// nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// A source with no valid key is expected (e.g. a new merchant): finish with nothing
    /// checked instead of stopping with exit 3.
    #[arg(long)]
    pub allow_empty_source: bool,
    /// Seconds in-flight lookups get to finish after SIGTERM/SIGINT.
    #[arg(long, default_value_t = 20, value_name = "SECS")]
    pub shutdown_grace: u64,
    /// Seconds between progress log lines when stderr is not a terminal.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub progress_interval: u64,
    /// Write the finance report here at the end of the run: a workbook if the name ends
    /// in .xlsx, CSV otherwise.
    #[arg(long, value_name = "PATH")]
    pub report: Option<PathBuf>,
    #[command(flatten)]
    pub notify: NotifyArgs,
    /// When to send the notification.
    #[arg(long, value_enum, default_value_t = NotifyOnArg::Changes)]
    pub notify_on: NotifyOnArg,
    /// With --report: start the file with a UTF-8 BOM so Excel reads Korean text.
    #[arg(long)]
    pub excel: bool,
    /// This process's shard, INDEX/COUNT (e.g. 0/3); keys split by a stable hash.
    #[arg(long, value_name = "INDEX/COUNT", conflicts_with = "shards")]
    pub shard: Option<String>,
    /// Shard count; the index comes from JOB_COMPLETION_INDEX (Kubernetes Indexed Job).
    #[arg(long, value_name = "COUNT")]
    pub shards: Option<u32>,
    /// Write Prometheus text-format metrics here at the end (node_exporter textfile).
    #[arg(long, value_name = "PATH")]
    pub metrics_file: Option<PathBuf>,
    /// Push the run's metrics to this Prometheus Pushgateway (its base URL; https, or
    /// http on loopback) at the end of every run, job `payple_reconcile`. A secret: only
    /// the host is ever logged.
    #[arg(
        long,
        value_name = "URL",
        env = "PAYPLE_METRICS_PUSH_URL",
        hide_env_values = true
    )]
    pub metrics_push: Option<String>,
    /// With --metrics-push: an `instance` label for the group (stable across runs, e.g.
    /// the site); sharded runs add `shard`.
    #[arg(long, value_name = "NAME", requires = "metrics_push")]
    pub metrics_instance: Option<String>,
    /// Store no payer name or phone mask.
    #[arg(long)]
    pub omit_pii: bool,
    /// Result rows per write transaction (the writer's own batch size when not given).
    #[arg(long, hide = true)]
    pub write_batch: Option<usize>,
    #[command(flatten)]
    pub budget: BudgetArgs,
    #[command(flatten)]
    pub events: EventsArgs,
}

/// A budget makes a run check the most urgent keys first and end normally (`completed`)
/// when it is spent: never checked, then failed, then due soon, then the oldest checks.
#[derive(Debug, Args)]
pub struct BudgetArgs {
    /// Look up at most N keys in this run (per shard), most urgent first.
    #[arg(long, value_name = "N")]
    pub max_lookups: Option<u64>,
    /// Stop dispatching lookups after this long (e.g. 3h, 90m, 45s).
    #[arg(long, value_name = "DURATION")]
    pub time_budget: Option<String>,
    /// Stop dispatching lookups at the next HH:MM in --timezone.
    #[arg(long, value_name = "HH:MM")]
    pub stop_at: Option<String>,
    /// The time zone of --stop-at and of due dates: KST, UTC, or an offset like +09:00.
    #[arg(long, value_name = "ZONE", default_value = "KST")]
    pub timezone: String,
    /// With a budget: the column of --source-table or --source-query holding each key's
    /// next charge date (YYYY-MM-DD); keys due within --due-within come right after failed
    /// ones.
    #[arg(long, value_name = "COL")]
    pub due_column: Option<String>,
    /// How soon a charge date counts as due (e.g. 3d, 36h).
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "3d",
        requires = "due_column"
    )]
    pub due_within: String,
}

#[derive(Debug, Args)]
pub struct LookupArgs {
    /// Billing keys to look up.
    #[arg(required = true, value_name = "PAYER_ID")]
    pub payer_ids: Vec<String>,
    #[command(flatten)]
    pub payple: PaypleArgs,
    /// Lookups in flight at most.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The run: an id, or `latest` (the newest completed run).
    #[arg(long, default_value = "latest")]
    pub run: String,
    /// Only these statuses (comma-separated: active,gone,failed,rejected).
    #[arg(long, value_delimiter = ',')]
    pub status: Option<Vec<String>>,
    /// Where to write the report; `-` for stdout.
    #[arg(long, short)]
    pub output: PathBuf,
    /// csv or xlsx (default: xlsx when --output ends in .xlsx, csv otherwise). An xlsx
    /// workbook is never written to a terminal.
    #[arg(long, value_enum)]
    pub format: Option<ReportFormatArg>,
    /// CSV: start with a UTF-8 BOM so Excel reads Korean text.
    #[arg(long)]
    pub excel: bool,
    /// xlsx: rows per worksheet, header included, before a table continues on the next.
    #[arg(long, default_value_t = 1_048_576, hide = true)]
    pub sheet_rows: u32,
}

#[derive(Debug, Args)]
pub struct NotifyCmdArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The run: an id, or `latest` (the newest completed run).
    #[arg(long, default_value = "latest")]
    pub run: String,
    #[command(flatten)]
    pub notify: NotifyArgs,
}

#[derive(Debug, Args)]
pub struct ChangesArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The earlier run (default: the completed run before --run).
    #[arg(long)]
    pub since: Option<i64>,
    /// The later run (default: the latest completed run).
    #[arg(long)]
    pub run: Option<i64>,
    /// Write CSV here (`-` for stdout) instead of a text table.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// With --output: start the CSV with a UTF-8 BOM so Excel reads Korean text.
    #[arg(long, requires = "output")]
    pub excel: bool,
    /// `jsonl`: the per-key event objects (docs/events.md), one per line, unsigned, to
    /// --output or stdout [default: CSV with --output, a text table otherwise].
    #[arg(long, value_enum, conflicts_with = "excel")]
    pub format: Option<ChangesFormatArg>,
}

/// `changes --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ChangesFormatArg {
    Jsonl,
}

#[derive(Debug, Args)]
pub struct SummaryArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The run (default: the latest completed run).
    #[arg(long)]
    pub run: Option<i64>,
}

/// Flags of `payple-reconcile simulate`.
#[derive(Debug, Clone, Args)]
pub struct SimulateArgs {
    /// Loopback address to listen on.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub bind: IpAddr,
    /// Port to listen on (0 picks a free one; the address is printed on stdout).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// JSON Lines file of keys with fixed answers; other keys are derived from their hash.
    #[arg(long, value_name = "PATH")]
    pub keys: Option<PathBuf>,
    /// How long an issued token triple stays valid, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 1800)]
    pub token_ttl: u64,
    /// Latency added to every lookup, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Up to this many more milliseconds, uniformly drawn, added to every lookup.
    #[arg(long, default_value_t = 0)]
    pub jitter_ms: u64,
    /// Fraction of lookups answered HTTP 500.
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,
    /// Fraction of lookups whose connection is dropped without a response.
    #[arg(long, default_value_t = 0.0)]
    pub drop_rate: f64,
    /// Fraction of lookups whose JSON body is cut in half.
    #[arg(long, default_value_t = 0.0)]
    pub truncate_rate: f64,
    /// Fraction of lookups answered with an HTML error page (HTTP 200).
    #[arg(long, default_value_t = 0.0)]
    pub garbage_rate: f64,
    /// Lookups per second above which the simulator answers 429.
    #[arg(long, value_name = "PER_SEC")]
    pub rate_limit: Option<u32>,
    /// `Retry-After` value of 429 answers, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 1)]
    pub retry_after: u64,
    /// Answer the first N lookups of every key with HTTP 500.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub fail_first: u32,
    /// An outage: from the lookup after the Nth on, every lookup answers --outage-status.
    #[arg(long, value_name = "N")]
    pub outage_after_lookups: Option<u64>,
    /// How long the outage lasts, in seconds (forever when not given).
    #[arg(long, value_name = "SECS", requires = "outage_after_lookups")]
    pub outage_secs: Option<u64>,
    /// The outage's HTTP status.
    #[arg(long, value_name = "STATUS", default_value_t = 503)]
    pub outage_status: u16,
    /// A code storm: every lookup answers this code (e.g. SYS9999) from --storm-after on.
    #[arg(long, value_name = "CODE")]
    pub storm_code: Option<String>,
    /// Lookups answered normally before the storm.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub storm_after: u64,
    /// How long the storm lasts, in seconds (forever when not given).
    #[arg(long, value_name = "SECS", requires = "storm_code")]
    pub storm_secs: Option<u64>,
    /// Every lookup answers this code whatever the token (e.g. SPAY0001).
    #[arg(long, value_name = "CODE")]
    pub always_code: Option<String>,
    /// From the lookup after the Nth on, every lookup answers 429 with
    /// --throttle-retry-after.
    #[arg(long, value_name = "N")]
    pub throttle_after: Option<u64>,
    /// The throttle's Retry-After, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 1)]
    pub throttle_retry_after: u64,
    /// Write one JSON line per request to this file.
    #[arg(long, value_name = "PATH")]
    pub request_log: Option<PathBuf>,
    /// Seed of the fault RNG (0: random).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Origin to put in auth answers' `return_url` instead of the simulator's own.
    #[arg(long, value_name = "ORIGIN")]
    pub return_origin: Option<String>,
}

/// Where and how per-key events go (`run`, `events deliver`). The signing secret comes
/// from PAYPLE_EVENTS_SECRET (`whsec_...`) or --events-secret-file, never from a flag.
#[derive(Debug, Clone, Args)]
pub struct EventsArgs {
    /// Deliver signed per-key events (Standard Webhooks) to this URL after the run (https,
    /// or http on loopback). A secret: only the host is ever logged.
    #[arg(
        long,
        value_name = "URL",
        env = "PAYPLE_EVENTS_URL",
        hide_env_values = true
    )]
    pub events_url: Option<String>,
    /// Read the signing secret (`whsec_...`) from this file instead of PAYPLE_EVENTS_SECRET.
    #[arg(long, value_name = "PATH")]
    pub events_secret_file: Option<PathBuf>,
    /// How long delivery may take after the run (e.g. 3m, 90s); what is left stays pending.
    #[arg(long, value_name = "DURATION", default_value = "3m")]
    pub events_budget: String,
    /// Pending events older than this are given up as `expired` (e.g. 3d).
    #[arg(long, value_name = "DURATION", default_value = "3d")]
    pub events_max_age: String,
    /// Keys whose events are delivered at once.
    #[arg(long, default_value_t = 4, hide = true)]
    pub events_concurrency: usize,
    /// Seconds one delivery attempt may take.
    #[arg(long, default_value_t = 10.0, value_name = "SECS", hide = true)]
    pub events_timeout: f64,
    /// First pause between attempts of one event, in milliseconds (doubles, jittered).
    #[arg(long, default_value_t = 1000, hide = true)]
    pub events_backoff_ms: u64,
}

#[derive(Debug, Subcommand)]
pub enum EventsCmd {
    /// Deliver the pending events now; exit 0 when none is left pending, 4 otherwise.
    Deliver(EventsDeliverArgs),
    /// Print the outbox, one JSON object per event (never the payload's key hash).
    List(EventsListArgs),
}

#[derive(Debug, Args)]
pub struct EventsDeliverArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub events: EventsArgs,
    /// Seconds delivery may go on after SIGTERM/SIGINT.
    #[arg(long, default_value_t = 20, value_name = "SECS")]
    pub shutdown_grace: u64,
}

#[derive(Debug, Args)]
pub struct EventsListArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Only the events still pending.
    #[arg(long)]
    pub pending: bool,
}

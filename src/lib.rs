//! `payple-reconcile`: checks stored Payple billing keys (`PCD_PAYER_ID`) every night and
//! records which still work, what they point at (masked), and which lookups failed.
//!
//! # Layout
//! - [`cli`]: the command line as typed (clap only); [`settings`]: the same, validated
//!   once by [`settings::from_cli`] into one [`settings::Settings`] variant per subcommand.
//! - [`app`]: the command layer, one file per subcommand (`app/run.rs`, `app/lookup.rs`,
//!   `app/report.rs`, …), and [`app::AppError`], the one place exit codes are decided.
//! - [`budget`]: run budgets (lookups, time, a stop time) and the due-date window, the
//!   pure rules; [`pipeline::priority`] applies them to a run.
//! - [`domain`]: billing keys, statuses, outcomes, key details and a run's stats, parsed
//!   once at the boundary.
//! - [`events`]: signed per-key events (`billing_key.gone`, …) for the merchant's app: the
//!   outbox, Standard Webhooks signing and delivery; a leaf.
//! - [`notify`]: run notifications to webhooks (Slack-compatible or JSON); a leaf.
//! - [`pushgateway`]: a run's metrics pushed to a Prometheus Pushgateway; a leaf.
//! - [`payple`]: the Payple client: partner auth, the shared token, lookups, retries, the
//!   code book and the run's health gate (circuit breaker, outage budget); the documented
//!   test partner.
//! - [`pipeline`]: the nightly batch: plan, stage, bounded lookups, single writer;
//!   [`pipeline::end::conclude`] decides how a run ends; [`pipeline::recheck`] chooses the
//!   failed keys a re-check looks up again.
//! - [`report`]: finance CSV reports and the workbook, run-to-run changes, summaries, metrics: pure
//!   formatting, plus streaming a run from the store into the writers.
//! - [`simulator`]: a loopback Payple for tests, demos and benchmarks.
//! - [`source`]: where the keys come from: CSV (or stdin), a table, or a query.
//! - [`store`]: the results database (SQLite, PostgreSQL, MySQL), its typed records and its
//!   single writer.
//! - [`exit`], [`http`], [`shutdown`], [`telemetry`]: exit codes, the HTTP client, signals, logs;
//!   [`private_file`]: files created 0600, exclusively, never through a symlink;
//!   [`sql_errors`]: which sqlx errors mean the database is unreachable.
//!
//! Imports point down only: `app` → `pipeline` → `settings` → `cli`, and all of them →
//! the leaves (`payple`, `source`, `store`, `report`, `simulator`, `domain`), which never
//! import `cli`, `settings`, `app` or `pipeline`.

pub mod app;
pub mod budget;
pub mod cli;
pub mod domain;
pub mod events;
pub mod exit;
pub mod http;
pub mod notify;
pub mod payple;
pub mod pipeline;
pub mod private_file;
pub mod pushgateway;
pub mod report;
pub mod settings;
pub mod shutdown;
pub mod simulator;
pub mod source;
pub mod sql_errors;
pub mod store;
pub mod telemetry;

//! `payple-reconcile`: checks stored Payple billing keys (`PCD_PAYER_ID`) every night and
//! records which still work, what they point at (masked), and which lookups failed.
//!
//! # Layout
//! - [`cli`]: the command line as typed; [`settings`]: the same, validated.
//! - [`app`]: one function per subcommand, wiring the parts below together.
//! - [`domain`]: billing keys, statuses and outcomes, parsed once at the boundary.
//! - [`payple`]: the Payple client: partner auth, the shared token, lookups, retries.
//! - [`pipeline`]: the nightly batch: plan, stage, bounded lookups, single writer.
//! - [`report`]: finance CSV reports, run-to-run changes, summaries, metrics.
//! - [`simulator`]: a loopback Payple for tests, demos and benchmarks.
//! - [`source`]: where the keys come from: CSV (or stdin), a table, or a query.
//! - [`store`]: the results database (SQLite, PostgreSQL, MySQL) and its single writer.
//! - [`exit`], [`http`], [`shutdown`], [`telemetry`]: exit codes, the HTTP client, signals, logs.

pub mod app;
pub mod cli;
pub mod domain;
pub mod exit;
pub mod http;
pub mod payple;
pub mod pipeline;
pub mod report;
pub mod settings;
pub mod shutdown;
pub mod simulator;
pub mod source;
pub mod store;
pub mod telemetry;

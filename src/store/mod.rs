//! The results store: runs, the keys a run set out to check, one result row per key, and
//! the lease that keeps runs from overlapping, on SQLite, PostgreSQL or MySQL/MariaDB.
//!
//! # Architecture
//! One [`sqlx::AnyPool`] with plain column types (text, integers; times as UTC RFC 3339
//! text, which sorts correctly). SQL is written once with `?` placeholders and rewritten to
//! `$n` for PostgreSQL; only upserts and id retrieval differ per [`Dialect`]. Schemas are
//! embedded migrations, one folder per dialect. On PostgreSQL and MySQL the statements run
//! once per key (staging, result rows, pending pages) go through a native pool beside it
//! (`bulk`): array binds, statements prepared once and kept.
//!
//! The types live in `records`, the connection in `connect`, the errors in `error`, the
//! stored time format in `time` and the SQL dialects in `dialect`; this file only names the
//! modules. The queries live by subject in `runs` (runs, staging), `shards` (a shard's
//! start and end, the run recounted), `checks` (result rows), `leases`, `reports`
//! (what the finance reports read), `recheck` (failed keys made pending again), `coverage`
//! (budgeted runs' priority queue, latest results across partial runs, coverage) and
//! `writer` (the single batching writer); `open` checks a SQLite file is safe to use and
//! serialises MySQL migrations; `presence` notices a SQLite file deleted mid-run; `outbox` holds the per-key events
//! waiting for delivery.

mod bulk;
mod checks;
mod connect;
mod coverage;
mod dialect;
mod error;
mod leases;
mod open;
mod outbox;
mod packed;
mod presence;
mod recheck;
mod records;
pub mod reports;
mod runs;
mod shards;
pub mod time;
pub mod writer;

pub use connect::{CONNECT_TIMEOUT, Store};
pub use coverage::{Coverage, LatestRecord};
pub use dialect::Dialect;
pub use error::{StoreError, retrying};
pub use outbox::{OutboxCounts, OutboxEvent, OutboxRow};
pub use packed::PackedRow;
pub use recheck::{FailedCode, FailedSelection};
pub use records::{
    CheckRecord, CheckRow, Lease, MAX_ROWS_PER_STATEMENT, NewRun, RunRecord, RunState, ShardEnd,
    ShardRecord, StagedKey, StatusCounts, StoredSource,
};
pub use runs::Staging;

#[cfg(test)]
pub(crate) use connect::sqlite_with_run;

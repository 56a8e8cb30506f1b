//! The nightly batch: decide which run this is, stage its keys, look them up through a
//! bounded, rate-limited stream, and hand every outcome to the single writer.
//!
//! # Architecture
//! `run` = plan (new, resume, run key) → lease → partner auth → stage (the whole source,
//! before any lookup) → lookups → finish. Lookups page through the run's keys that have no
//! result row yet (so a resumed run only checks what is missing), run [`check_one`] with at
//! most `--concurrency` in flight, and send each row to [`crate::store::writer`]. On the
//! first signal the key stream ends, in-flight lookups get `--shutdown-grace`, and the run
//! is marked `interrupted`. A re-check (`--recheck-failed`, or a completed run key with
//! transient failures) first makes the chosen failed keys pending again ([`recheck`]), then
//! goes on like a resume.
//!
//! # Layout
//! [`run`] (the steps from plan to end) uses `plan` (which run), [`stage`], `lookups` (the
//! bounded stream into the writer) and [`end`] (how a run ends); all of them share
//! `context` (what one run needs) and return `error`'s [`RunError`]. Nothing here imports
//! this file back.

mod context;
pub mod end;
mod error;
pub mod lease;
mod lookups;
mod plan;
pub mod priority;
pub mod progress;
pub mod recheck;
mod run;
pub mod stage;

pub use crate::domain::RunStats;
pub use end::{Ended, RunEnd};
pub use error::RunError;
pub use lookups::check_one;
pub use run::{DryRun, dry_run, run};

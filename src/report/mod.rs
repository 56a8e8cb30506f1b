//! Reports for finance: a run's rows as CSV, the changes between two runs, a summary,
//! and Prometheus metrics at the end of a run.

pub mod command;

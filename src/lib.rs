//! `payple-reconcile`: checks stored Payple billing keys (`PCD_PAYER_ID`) every night and
//! records which still work, what they point at (masked), and which lookups failed.
//!
//! # Layout
//! - [`domain`]: billing keys, statuses and outcomes, parsed once at the boundary.
//! - [`payple`]: the Payple client: partner auth, the shared token, lookups, retries.
//! - [`simulator`]: a loopback Payple for tests, demos and benchmarks.
//! - [`source`]: where the keys come from: CSV (or stdin), a table, or a query.
//! - [`store`]: the results database (SQLite, PostgreSQL, MySQL) and its single writer.

pub mod domain;
pub mod payple;
pub mod simulator;
pub mod source;
pub mod store;

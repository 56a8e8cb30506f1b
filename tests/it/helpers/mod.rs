//! Shared test plumbing: the simulator on an ephemeral port, a fresh results database per
//! test (a SQLite file, or a new PostgreSQL / MySQL database), and the real binary: run to
//! the end or as a child process, with what it leaves in the database and the request log.
//! [`Scenario`] puts them together: the common set-up of a run test as one expression.
//!
//! One file per concern, everything re-exported here (`helpers::xyz`):
//! - [`db`]: [`TestDb`], one test per database kind ([`per_database!`]), reading results;
//! - [`sim`]: the simulator, its key books, ground truth and request log;
//! - [`process`]: the binary's command line, its runs and children, their output;
//! - [`files`]: key CSV files;
//! - [`scenario`]: [`Scenario`] and what it leaves ([`Setup`], [`Ran`], [`Leftover`]).

#![allow(dead_code)]

mod db;
mod files;
mod process;
mod scenario;
mod sim;

pub(crate) use db::per_database;
pub use db::{
    DbKind, TestDb, all_checks, assert_ground_truth, count_rows_sql, exec, on_database, only_run,
    scalar_i64, wait_for_count, wait_for_rows,
};
pub use files::{payer_ids, write_csv, write_csv_rows};
pub use process::{
    BIN, assert_exit, bin_output, command, finish, json_lines, kill, output_of, run_bin, spawn,
    stderr_of, summary_of, token_shaped, wait_output,
};
pub use scenario::{Ran, Scenario, Setup};
pub use sim::{
    derived_status, key_file, key_hash, latency, logged_lookups, sim_from_file, spawn_sim,
    write_key_file,
};

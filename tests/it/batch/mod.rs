//! The nightly batch against the simulator and real databases: rows, sources, limits.
//!
//! Every test runs the real binary as a child process (`helpers::command`, mostly through
//! `helpers::Scenario`) against an in-process simulator started by the test, then reads the
//! simulator's own counters and the results database. The per-database checks are written
//! once (`rows::rows_and_run_record`, `runs::latest_view_across_two_runs`,
//! `sources::table_and_query_sources`) and run on SQLite, PostgreSQL and MySQL; a missing
//! server prints why the test is skipped (unless `REQUIRE_POSTGRES=1` / `REQUIRE_MYSQL=1`).

mod input;
mod office;
mod pace;
mod rows;
mod runs;
mod sources;

/// A CSV's text with a `payer_id,customer_ref` header; `None` writes an empty reference.
fn rows_csv(rows: &[(String, Option<String>)]) -> String {
    let mut text = String::from("payer_id,customer_ref\n");
    for (id, r) in rows {
        text.push_str(&format!("{id},{}\n", r.as_deref().unwrap_or("")));
    }
    text
}

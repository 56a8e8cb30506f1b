//! Issue 26, the smaller items: the workbook's Summary sheet keeps the top card companies
//! and banks plus one "other" row, `summary` and the text tables never pass stored control
//! or bidi characters to the terminal, and a SQLite results file deleted mid-run fails the
//! run (exit 1) instead of ending it as a success.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use calamine::{Data, Reader, Xlsx, open_workbook};
use serde_json::json;

use crate::helpers::{
    self, Scenario, assert_exit, key_file, output_of, stderr_of, wait_for_rows, wait_output,
};

// ---- the Summary sheet: top names plus "other" ------------------------------------------

/// The rows of the workbook's Summary sheet, first two columns as text / numbers.
fn summary_sheet(path: &Path) -> Vec<Vec<Data>> {
    let mut book: Xlsx<_> = open_workbook(path).expect("open the workbook");
    let range = book.worksheet_range("Summary").expect("a Summary sheet");
    range.rows().map(<[Data]>::to_vec).collect()
}

fn cell_text(cell: Option<&Data>) -> String {
    match cell {
        Some(Data::String(s)) => s.clone(),
        _ => String::new(),
    }
}

/// The (name, keys) rows under a heading of the Summary sheet, up to the next heading.
fn block(rows: &[Vec<Data>], heading: &str) -> Vec<(String, f64)> {
    let start = rows
        .iter()
        .position(|r| cell_text(r.first()) == heading)
        .unwrap_or_else(|| panic!("no {heading:?} heading"));
    rows[start + 1..]
        .iter()
        .map_while(|r| match r.get(1) {
            Some(Data::Float(n)) => Some((cell_text(r.first()), *n)),
            _ => None,
        })
        .collect()
}

/// 100 active card keys: 40 share one card company, the other 60 each have a name of
/// their own. The sheet lists the top 30 names (the 40, then 29 of the single ones, by
/// name) and one "other" row for the 31 remaining names, instead of 61 rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_summary_sheet_lists_the_top_names_and_one_other_row() {
    let books = tempfile::tempdir().expect("temp dir");
    let ids: Vec<String> = (0..100).map(|i| format!("HtNames{i:015}")).collect();
    let lines: Vec<serde_json::Value> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let name = if i < 40 {
                "신한카드".to_owned()
            } else {
                format!("Card company {i:03}")
            };
            json!({"payer_id": id, "kind": "card", "card_name": name,
                   "card_mask": "4518-****-****-1234"})
        })
        .collect();
    let book = key_file(books.path(), "names.jsonl", &lines);
    let report = books.path().join("night.xlsx");
    let report_arg = report.to_str().expect("utf-8 path");
    let ran = Scenario::new()
        .ids(&ids)
        .book(book)
        .args(&["--rate", "0", "--report", report_arg])
        .run()
        .await;
    ran.expect_exit(0);
    let rows = summary_sheet(&report);
    let cards = block(&rows, "Active card keys per card company");
    assert_eq!(cards.len(), 31, "30 names and one other row: {cards:?}");
    assert_eq!(cards[0], ("신한카드".to_owned(), 40.0));
    assert_eq!(cards[1], ("Card company 040".to_owned(), 1.0));
    assert_eq!(cards[29], ("Card company 068".to_owned(), 1.0));
    assert_eq!(cards[30], ("other (31 names)".to_owned(), 31.0));
    let total: f64 = cards.iter().map(|(_, n)| n).sum();
    assert_eq!(total, 100.0, "every active key counted once");
    ran.close().await;
}

// ---- stored text on the terminal -------------------------------------------------------

/// Characters that must never reach a terminal from stored text: C0 and C1 controls
/// (except the newlines that end lines) and the bidirectional formatting characters.
fn dangerous(c: char) -> bool {
    (c.is_control() && c != '\n')
        || matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// A stored run key, card company and bank carrying ESC sequences, a C1 CSI, a
/// right-to-left override and an isolate: `summary` prints each as a visible `\u{..}`
/// escape, and no control or bidi character reaches stdout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn summary_shows_stored_controls_and_bidi_as_visible_escapes() {
    let ran = Scenario::new()
        .keys(12, "neutral")
        .args(&["--rate", "0"])
        .run()
        .await;
    ran.expect_exit(0);
    let run = ran.run_record().await;
    let hostile_key = "night\u{1b}]0;owned\u{7}\u{1b}[2J\u{9b}31m\u{202E}gpj.exe";
    let hostile_card = "\u{1b}[31m신한\u{2066}카드\u{2069}";
    let hostile_bank = "bank\u{202D}\u{85}\u{0}";
    sqlx::query("UPDATE reconcile_runs SET run_key = ?, source = ? WHERE id = ?")
        .bind(hostile_key)
        .bind("csv\u{1b}[8m")
        .bind(run.id)
        .execute(ran.store.pool())
        .await
        .expect("plant the run key");
    for (column, value) in [("card_name", hostile_card), ("bank_name", hostile_bank)] {
        let pay_type = if column == "card_name" {
            "card"
        } else {
            "transfer"
        };
        let sql =
            format!("UPDATE billing_key_checks SET {column} = ? WHERE run_id = ? AND pay_type = ?");
        let planted = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(value)
            .bind(run.id)
            .bind(pay_type)
            .execute(ran.store.pool())
            .await
            .expect("plant a name");
        assert!(planted.rows_affected() > 0, "no {pay_type} key to name");
    }
    let mut cmd = helpers::command(&ran.sim.url());
    cmd.args(["summary", "--database-url", &ran.db.url]);
    let out = output_of(cmd).await;
    assert_exit(&out, 0);
    let text = String::from_utf8(out.stdout.clone()).expect("utf-8 stdout");
    let bad: Vec<char> = text.chars().filter(|c| dangerous(*c)).collect();
    assert!(bad.is_empty(), "{bad:?} reached the terminal:\n{text}");
    assert!(
        text.contains(r"(key night\u{1b}]0;owned\u{7}\u{1b}[2J\u{9b}31m\u{202e}gpj.exe)"),
        "{text}"
    );
    assert!(
        text.contains(r"\u{1b}[31m신한\u{2066}카드\u{2069}"),
        "{text}"
    );
    assert!(text.contains(r"bank\u{202d}\u{85}\u{0}"), "{text}");
    ran.close().await;
}

// ---- a results file that disappears ----------------------------------------------------

/// `run` at 5 lookups a second; once results are on disk the SQLite file and its side
/// files are deleted. The run ends with exit 1, naming the file, not with exit 0 and a
/// summary saying everything was checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_results_file_deleted_mid_run_fails_the_run() {
    let set = Scenario::new()
        .keys(40, "vanish")
        .args(&["--rate", "5", "--concurrency", "1"])
        .start()
        .await;
    let db = set.db.url.trim_start_matches("sqlite://").to_owned();
    let db = db.split('?').next().expect("a path").to_owned();
    let mut child = set.spawn(&[]);
    wait_for_rows(
        &set.store,
        3,
        Duration::from_secs(30),
        Duration::from_millis(50),
        &mut child,
    )
    .await;
    for suffix in ["", "-wal", "-shm"] {
        let path = format!("{db}{suffix}");
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("delete {path}: {e}"),
        }
    }
    let out: Output = wait_output(child, Duration::from_secs(60)).await;
    assert_exit(&out, 1);
    let err = stderr_of(&out);
    assert!(err.contains(&db), "the error names the file: {err}");
    assert!(
        err.contains("was deleted while the run was writing"),
        "{err}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains(r#""state":"completed""#), "{stdout}");
    set.store.close().await;
}

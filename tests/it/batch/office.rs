//! Key files as Korean offices hand them over: CP949 and UTF-16 CSVs, Payple's own column
//! name and Hangul headers, tab-separated files, and Excel workbooks (written here with
//! rust_xlsxwriter, and one saved by openpyxl kept as a fixture).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use payple_reconcile::domain::KeyStatus;

use crate::helpers::{self, Scenario, derived_status};

/// The results that matter for comparing inputs: key (or rejected placeholder) to status,
/// customer reference and, for rejected rows, the code.
type Table = BTreeMap<String, (KeyStatus, Option<String>, Option<String>)>;

fn table(checks: BTreeMap<String, payple_reconcile::store::CheckRecord>) -> Table {
    checks
        .into_iter()
        .map(|(k, c)| {
            let code = (c.status == KeyStatus::Rejected)
                .then_some(c.result_code)
                .flatten();
            (k, (c.status, c.customer_ref, code))
        })
        .collect()
}

/// Runs `run --rate 0` over `name` holding `bytes` plus `args`; returns the results table
/// and the summary of a run that exited 0 (2 if `rejected`: some rows were).
async fn run_file(name: &str, bytes: Vec<u8>, args: &[&str]) -> (Table, serde_json::Value) {
    let mut all = vec!["--rate", "0"];
    all.extend_from_slice(args);
    let ran = Scenario::new().csv_file(name, bytes).args(&all).run().await;
    let summary = ran.summary();
    ran.expect_exit(if summary["rejected"] == 0 { 0 } else { 2 });
    let table = table(ran.checks().await);
    ran.close().await;
    (table, summary)
}

/// Ten keys with Hangul references (company names as offices write them).
fn hangul_rows() -> (Vec<String>, Vec<String>) {
    let ids = helpers::payer_ids(10, "office");
    let names = [
        "홍길동상사",
        "(주)한빛",
        "김철수",
        "㈜다온테크",
        "이영희 부장",
        "서울특별시 중구청",
        "똠방각하",
        "뷁",
        "박지성(개인)",
        "한국전력공사",
    ];
    (ids, names.iter().map(|n| (*n).to_owned()).collect())
}

fn csv_text(header: &str, sep: char, ids: &[String], refs: &[String]) -> String {
    let mut text = format!("{header}\r\n");
    for (id, r) in ids.iter().zip(refs) {
        text.push_str(&format!("{id}{sep}{r}\r\n"));
    }
    text
}

fn cp949(text: &str) -> Vec<u8> {
    let (bytes, _, unmappable) = encoding_rs::EUC_KR.encode(text);
    assert!(!unmappable, "the text has characters CP949 lacks");
    bytes.into_owned()
}

fn utf16le_with_bom(text: &str) -> Vec<u8> {
    let mut bytes = vec![0xFF, 0xFE];
    bytes.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
    bytes
}

/// A CP949 file (Korean Excel's "CSV") and a UTF-16 file with a BOM (Excel's "Unicode
/// text", tab-separated) give the UTF-8 file's results table, references byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cp949_and_utf16_files_give_the_utf8_files_results() {
    let (ids, refs) = hangul_rows();
    let text = csv_text("payer_id,customer_ref", ',', &ids, &refs);
    let (utf8, summary) = run_file("keys.csv", text.clone().into_bytes(), &[]).await;
    assert_eq!(summary["keys"], 10);
    for (id, r) in ids.iter().zip(&refs) {
        let (status, reference, _) = &utf8[id];
        assert_eq!(status.as_str(), derived_status(id));
        assert_eq!(reference.as_deref().map(str::as_bytes), Some(r.as_bytes()));
    }

    let (from_cp949, summary) = run_file("keys.csv", cp949(&text), &[]).await;
    assert_eq!(from_cp949, utf8, "CP949, detected");
    assert!(
        summary["source"]
            .as_str()
            .is_some_and(|s| s.starts_with("csv:") && s.ends_with("keys.csv")),
        "{summary}"
    );
    let (forced, _) = run_file("keys.csv", cp949(&text), &["--csv-encoding", "cp949"]).await;
    assert_eq!(forced, utf8, "CP949, forced");

    let tsv = csv_text("payer_id\tcustomer_ref", '\t', &ids, &refs);
    let (from_utf16, _) =
        run_file("keys.txt", utf16le_with_bom(&tsv), &["--delimiter", "tab"]).await;
    assert_eq!(from_utf16, utf8, "UTF-16 with a BOM, tab-separated");
    let bom_utf8 = [&b"\xEF\xBB\xBF"[..], tsv.as_bytes()].concat();
    let (from_tsv, _) = run_file("keys.tsv", bom_utf8, &[]).await;
    assert_eq!(from_tsv, utf8, "a .tsv file is tab-separated");
}

/// `PCD_PAYER_ID` (any case) is the key column without a flag; Hangul headers are named
/// with `--id-column`/`--ref-column`, in a CP949 file as well as a workbook.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payples_column_name_and_hangul_headers() {
    let (ids, refs) = hangul_rows();
    let plain = csv_text("payer_id,customer_ref", ',', &ids, &refs);
    let (expected, _) = run_file("keys.csv", plain.into_bytes(), &[]).await;

    // Payple's name, no reference column asked for: the keys without references.
    let pcd = csv_text("고객번호_비고, Pcd_Payer_Id ", ',', &refs, &ids);
    let (got, _) = run_file("keys.csv", cp949(&pcd), &[]).await;
    let no_refs: Table = expected
        .iter()
        .map(|(k, (s, _, c))| (k.clone(), (*s, None, c.clone())))
        .collect();
    assert_eq!(got, no_refs, "PCD_PAYER_ID");

    let hangul = csv_text("고객번호,빌링키", ',', &refs, &ids);
    let named = ["--id-column", "빌링키", "--ref-column", "고객번호"];
    let (got, _) = run_file("keys.csv", cp949(&hangul), &named).await;
    assert_eq!(got, expected, "Hangul headers named by flags");

    // Without the flags the header is refused, naming what it found.
    let ran = Scenario::new()
        .csv_file("keys.csv", cp949(&hangul))
        .args(&["--rate", "0"])
        .run()
        .await;
    ran.expect_exit(3);
    let stderr = ran.stderr();
    assert!(
        stderr.contains("line 1: no `payer_id` (or `PCD_PAYER_ID`) column")
            && stderr.contains("\"빌링키\""),
        "{stderr}"
    );
    assert_eq!(ran.sim.stats().lookups, 0);
    ran.close().await;

    // The same flags name a workbook's columns.
    let dir = tempfile::tempdir().expect("temp dir");
    let book = dir.path().join("keys.xlsx");
    let mut rows: Vec<Vec<Cell>> = vec![vec![Cell::Text("고객번호"), Cell::Text("빌링키")]];
    rows.extend(
        ids.iter()
            .zip(&refs)
            .map(|(id, r)| vec![Cell::Text(r), Cell::Text(id)]),
    );
    write_workbook(&book, &[("Sheet1", rows)]);
    let ran = Scenario::new()
        .args(&["--rate", "0", "--xlsx", path_arg(&book)])
        .args(&named)
        .run()
        .await;
    ran.expect_exit(0);
    assert_eq!(
        table(ran.checks().await),
        expected,
        "workbook, Hangul headers"
    );
    ran.close().await;
}

/// Bytes that are neither UTF-8 nor CP949 stop the run with exit 3 naming the line and
/// byte offset, before any lookup; so does a later line that breaks the encoding guessed
/// from the start of the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_files_stop_with_exit_3_naming_line_and_offset() {
    let (ids, refs) = hangul_rows();
    // Line 5 holds Latin-1 `é` (0xE9) before a comma: no UTF-8 and no CP949 pair.
    let mut bytes = csv_text("payer_id,customer_ref", ',', &ids[..3], &refs[..3]).into_bytes();
    let offset = bytes.len() + ids[3].len() + ",caf".len();
    bytes.extend(format!("{},caf", ids[3]).as_bytes());
    bytes.extend(b"\xe9,x\r\n");
    // Early UTF-8 Hangul, then a CP949 reference beyond the detection window on line N.
    let mut late = csv_text("payer_id,customer_ref", ',', &ids[..1], &refs[..1]);
    let mut line = 3;
    let mut i = 0;
    while late.len() < 200 * 1024 {
        late.push_str(&format!("filler{i:010}key,CUST-{i}\r\n"));
        i += 1;
        line += 1;
    }
    let mut late = late.into_bytes();
    let late_offset = late.len() + ids[1].len() + 1;
    late.extend(format!("{},", ids[1]).as_bytes());
    late.extend(cp949("한빛"));
    late.extend(b"\r\n");

    let cases: [(&str, Vec<u8>, &[&str], String); 3] = [
        (
            "latin1.csv",
            bytes.clone(),
            &[],
            format!("line 5, byte offset {offset}: neither UTF-8 nor CP949"),
        ),
        (
            "forced.csv",
            bytes,
            &["--csv-encoding", "utf-8"],
            format!("line 5, byte offset {offset}: not valid UTF-8"),
        ),
        (
            "late.csv",
            late,
            &[],
            format!("line {line}, byte offset {late_offset}: not valid UTF-8"),
        ),
    ];
    for (name, bytes, args, message) in cases {
        let ran = Scenario::new()
            .csv_file(name, bytes)
            .args(&["--rate", "0"])
            .args(args)
            .run()
            .await;
        ran.expect_exit(3);
        let stderr = ran.stderr();
        assert!(
            stderr.contains(&format!("{} {message}", ran.csv_arg())),
            "{name}: {stderr}"
        );
        assert_eq!(ran.sim.stats().lookups, 0, "{name}: a lookup was sent");
        assert_eq!(ran.rows().await, 0, "{name}");
        ran.close().await;
    }
}

// ---- workbooks --------------------------------------------------------------------------

/// A cell written by [`write_workbook`].
enum Cell<'a> {
    Text(&'a str),
    Number(f64),
    /// A date (year, month, day) formatted `yyyy-mm-dd`.
    Date(u16, u8, u8),
    Empty,
}

fn write_workbook(path: &Path, sheets: &[(&str, Vec<Vec<Cell<'_>>>)]) {
    use rust_xlsxwriter::{ExcelDateTime, Format, Workbook};
    let mut book = Workbook::new();
    let date = Format::new().set_num_format("yyyy-mm-dd");
    for (name, rows) in sheets {
        let sheet = book.add_worksheet();
        sheet.set_name(*name).expect("sheet name");
        for (r, row) in rows.iter().enumerate() {
            let r = u32::try_from(r).expect("row");
            for (c, cell) in row.iter().enumerate() {
                let c = u16::try_from(c).expect("column");
                match cell {
                    Cell::Text(t) => {
                        sheet.write_string(r, c, *t).expect("text");
                    }
                    Cell::Number(n) => {
                        sheet.write_number(r, c, *n).expect("number");
                    }
                    Cell::Date(y, m, d) => {
                        let value = ExcelDateTime::from_ymd(*y, *m, *d).expect("date");
                        sheet
                            .write_datetime_with_format(r, c, &value, &date)
                            .expect("date");
                    }
                    Cell::Empty => {}
                }
            }
        }
    }
    book.save(path).expect("save the workbook");
}

fn path_arg(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

/// The openpyxl fixture's first sheet as CSV: the same cells as displayed, line N for row N.
const FIXTURE_AS_CSV: &str = "고객번호,PCD_PAYER_ID,등록일
홍길동상사,FxOpenpyxlKey0001AbCdEfGh,2026-12-04
(주)한빛,12345678901,2026-11-30

2026-12-01,FxOpenpyxlKey0003IjKlMnOp,
빈칸,,
4017,FxOpenpyxlKey0004QrStUvWx,
";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/office/keys-openpyxl.xlsx")
}

/// A workbook saved by another program (openpyxl: shared strings, a number cell holding a
/// key, dates, an empty row, an empty key) gives the rows the same table gives as CSV, the
/// rejected row naming the sheet and row; so does one written by rust_xlsxwriter whose
/// keys are on the second sheet (`--sheet`). The summary's source names file and sheet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workbooks_give_the_same_rows_as_the_csv() {
    let (expected, _) = run_file(
        "keys.csv",
        FIXTURE_AS_CSV.as_bytes().to_vec(),
        &["--ref-column", "고객번호"],
    )
    .await;
    assert_eq!(expected.len(), 5, "{expected:?}");
    assert_eq!(
        expected["12345678901"].1.as_deref(),
        Some("(주)한빛"),
        "the number key"
    );
    assert_eq!(
        expected["#6 rejected"],
        (
            KeyStatus::Rejected,
            Some("빈칸".to_owned()),
            Some("REJECTED_EMPTY".to_owned())
        )
    );

    let ran = Scenario::new()
        .request_log()
        .args(&["--rate", "0", "--xlsx", path_arg(&fixture())])
        .args(&["--ref-column", "고객번호"])
        .run()
        .await;
    ran.expect_exit(2); // the rejected row
    let summary = ran.summary();
    assert_eq!(
        summary["source"],
        format!("xlsx:{}[빌링키]", fixture().display()),
        "{summary}"
    );
    assert_eq!(
        (summary["keys"].as_i64(), summary["rejected"].as_i64()),
        (Some(4), Some(1))
    );
    let checks = ran.checks().await;
    let msg = checks["#6 rejected"].result_msg.clone().unwrap_or_default();
    assert!(
        msg.contains(&format!("{} sheet 빌링키 row 6", fixture().display())),
        "{msg}"
    );
    assert_eq!(table(checks), expected, "the openpyxl workbook");
    let left = ran.close().await;
    // The number cell was sent as the digits Excel shows.
    let sent = helpers::logged_lookups(left.log());
    assert!(sent.contains(&helpers::key_hash("12345678901")), "{sent:?}");

    let dir = tempfile::tempdir().expect("temp dir");
    let book = dir.path().join("export.xlsx");
    let rows = vec![
        vec![
            Cell::Text("고객번호"),
            Cell::Text("pcd_payer_id"),
            Cell::Text("등록일"),
        ],
        vec![
            Cell::Text("홍길동상사"),
            Cell::Text("FxOpenpyxlKey0001AbCdEfGh"),
            Cell::Date(2026, 12, 4),
        ],
        vec![
            Cell::Text("(주)한빛"),
            Cell::Number(12_345_678_901.0),
            Cell::Date(2026, 11, 30),
        ],
        vec![Cell::Empty, Cell::Text("   ")],
        vec![
            Cell::Date(2026, 12, 1),
            Cell::Text("FxOpenpyxlKey0003IjKlMnOp"),
        ],
        vec![Cell::Text("빈칸")],
        vec![
            Cell::Number(4017.0),
            Cell::Text("FxOpenpyxlKey0004QrStUvWx"),
        ],
    ];
    write_workbook(
        &book,
        &[
            ("안내", vec![vec![Cell::Text("키는 다음 시트에")]]),
            ("키 목록", rows),
        ],
    );
    let ran = Scenario::new()
        .args(&[
            "--rate",
            "0",
            "--xlsx",
            path_arg(&book),
            "--sheet",
            "키 목록",
        ])
        .args(&["--ref-column", "고객번호"])
        .run()
        .await;
    ran.expect_exit(2);
    assert_eq!(
        ran.summary()["source"],
        format!("xlsx:{}[키 목록]", book.display())
    );
    assert_eq!(
        table(ran.checks().await),
        expected,
        "the rust_xlsxwriter workbook"
    );
    // --dry-run reads the same counts and writes nothing more.
    let out = ran.output(&["--dry-run"]).await;
    helpers::assert_exit(&out, 0);
    let dry = helpers::summary_of(&out);
    assert_eq!(
        (dry["keys"].as_i64(), dry["rejected"].as_i64()),
        (Some(4), Some(1)),
        "{dry}"
    );
    ran.close().await;
}

/// An empty sheet, a missing sheet and a file that is no workbook stop the run with exit
/// 3 before any lookup, naming file (and sheet); a sheet with only its header has no keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_or_missing_sheets_and_non_workbooks_exit_3() {
    let dir = tempfile::tempdir().expect("temp dir");
    let book = dir.path().join("keys.xlsx");
    write_workbook(
        &book,
        &[
            ("비어 있음", Vec::new()),
            ("header", vec![vec![Cell::Text("payer_id")]]),
        ],
    );
    let not_a_book = dir.path().join("keys-really.xlsx");
    std::fs::write(&not_a_book, "payer_id\nabcdefgh12345678\n").expect("write");
    let book_arg = path_arg(&book);
    let cases: [(&[&str], String); 3] = [
        (
            &["--xlsx", book_arg],
            format!("{book_arg} sheet 비어 있음: the sheet is empty"),
        ),
        (
            &["--xlsx", book_arg, "--sheet", "Sheet9"],
            format!("{book_arg}: no sheet named \"Sheet9\" (sheets: \"비어 있음\", \"header\")"),
        ),
        (
            &["--xlsx", path_arg(&not_a_book)],
            format!("{}: not an .xlsx workbook", not_a_book.display()),
        ),
    ];
    for (args, message) in cases {
        let ran = Scenario::new()
            .args(&["--rate", "0"])
            .args(args)
            .run()
            .await;
        ran.expect_exit(3);
        let stderr = ran.stderr();
        assert!(stderr.contains(&message), "{args:?}: {stderr}");
        assert_eq!(ran.sim.stats().lookups, 0, "{args:?}");
        assert_eq!(ran.rows().await, 0, "{args:?}");
        ran.close().await;
    }
    // A sheet with only its header is an empty source: a stop unless it is expected.
    let ran = Scenario::new()
        .args(&["--rate", "0", "--xlsx", book_arg, "--sheet", "header"])
        .run()
        .await;
    ran.expect_exit(3);
    ran.close().await;
    let ran = Scenario::new()
        .args(&["--rate", "0", "--xlsx", book_arg, "--sheet", "header"])
        .args(&["--allow-empty-source"])
        .run()
        .await;
    ran.expect_exit(0);
    assert_eq!(ran.summary()["keys"], 0);
    ran.close().await;
}

//! The finance CSV: one row per result row of a run, payer ids masked, times in KST and
//! UTC, cells escaped against spreadsheet formula injection, RFC 4180 quoting.
//!
//! Rows are built by pure functions ([`report_row`], [`kst_and_utc`]; cells are escaped by
//! [`super::neutral`]);
//! [`CsvOut`] and [`ReportWriter`] write them to any `impl Write`.

use std::io::{self, Write};

use chrono::{DateTime, FixedOffset, Utc};

use super::neutral::neutralise;
use crate::domain::{PayType, is_rejected_placeholder, mask_payer_id};
use crate::store::CheckRecord;

/// The UTF-8 byte order mark that makes Excel read the file as UTF-8.
pub const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// Korea Standard Time: UTC+9 all year (no daylight saving).
pub const KST: FixedOffset = match FixedOffset::east_opt(9 * 3600) {
    Some(offset) => offset,
    None => panic!("UTC+9 is a valid offset"),
};

/// How times are shown in reports: plain enough for Excel to read as a date and time.
const TIME_FORMAT: &str = "%Y-%m-%d %H:%M:%S";

/// The report's header row. The time columns say which zone they are in.
pub const REPORT_HEADER: [&str; 13] = [
    "customer_ref",
    "payer_id_masked",
    "status",
    "pay_type",
    "card_name",
    "card_mask",
    "bank_name",
    "bank_mask",
    "account_type",
    "result_code",
    "result_msg",
    "checked_at_kst",
    "checked_at_utc",
];

/// One report row, unescaped, in [`REPORT_HEADER`] order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportRow {
    pub customer_ref: String,
    pub payer_id_masked: String,
    pub status: String,
    pub pay_type: String,
    pub card_name: String,
    pub card_mask: String,
    pub bank_name: String,
    pub bank_mask: String,
    pub account_type: String,
    pub result_code: String,
    pub result_msg: String,
    pub checked_at_kst: String,
    pub checked_at_utc: String,
}

impl ReportRow {
    /// The cells in header order.
    pub fn cells(&self) -> [&str; 13] {
        [
            &self.customer_ref,
            &self.payer_id_masked,
            &self.status,
            &self.pay_type,
            &self.card_name,
            &self.card_mask,
            &self.bank_name,
            &self.bank_mask,
            &self.account_type,
            &self.result_code,
            &self.result_msg,
            &self.checked_at_kst,
            &self.checked_at_utc,
        ]
    }
}

/// How a stored payer id appears in a report: masked, except the `#N` placeholder of a
/// rejected input row, which is a position in the source and not a key.
pub fn shown_payer_id(record: &CheckRecord) -> String {
    if is_rejected_placeholder(record.status, &record.payer_id) {
        record.payer_id.clone()
    } else {
        mask_payer_id(&record.payer_id)
    }
}

/// Builds the report row of a stored result row.
pub fn report_row(record: &CheckRecord) -> ReportRow {
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    let (kst, utc) = kst_and_utc(record.checked_at);
    let d = &record.details;
    ReportRow {
        customer_ref: text(&record.customer_ref),
        payer_id_masked: shown_payer_id(record),
        status: record.status.as_str().to_owned(),
        pay_type: d
            .pay_type
            .map(PayType::as_str)
            .unwrap_or_default()
            .to_owned(),
        card_name: text(&d.card_name),
        card_mask: text(&d.card_mask),
        bank_name: text(&d.bank_name),
        bank_mask: text(&d.bank_mask),
        account_type: text(&d.bank_account_type),
        result_code: text(&record.result_code),
        result_msg: text(&record.result_msg),
        checked_at_kst: kst,
        checked_at_utc: utc,
    }
}

/// A time as (KST, UTC) report text.
pub fn kst_and_utc(t: DateTime<Utc>) -> (String, String) {
    (
        t.with_timezone(&KST).format(TIME_FORMAT).to_string(),
        t.format(TIME_FORMAT).to_string(),
    )
}

/// A time shown in KST (`2026-11-27 02:00:05 KST`).
pub fn kst_label(t: DateTime<Utc>) -> String {
    format!("{} KST", t.with_timezone(&KST).format(TIME_FORMAT))
}

/// A CSV writer for finance: optional BOM, a header, every cell neutralised (no control
/// or bidirectional characters) and formula-escaped,
/// RFC 4180 quoting and CRLF line ends.
pub struct CsvOut<W: Write> {
    inner: ::csv::Writer<W>,
    rows: u64,
}

impl<W: Write> CsvOut<W> {
    /// Starts the file: the BOM when `excel`, then the header.
    pub fn new(mut out: W, excel: bool, header: &[&str]) -> io::Result<Self> {
        if excel {
            out.write_all(UTF8_BOM)?;
        }
        let mut inner = ::csv::WriterBuilder::new()
            .terminator(::csv::Terminator::CRLF)
            .from_writer(out);
        inner.write_record(header)?;
        Ok(Self { inner, rows: 0 })
    }

    /// Writes one row, escaping each cell.
    pub fn write_cells<'a>(&mut self, cells: impl IntoIterator<Item = &'a str>) -> io::Result<()> {
        self.inner
            .write_record(cells.into_iter().map(|c| neutralise(c).into_owned()))?;
        self.rows += 1;
        Ok(())
    }

    /// Rows written so far (the header not counted).
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Flushes and hands back the underlying writer.
    pub fn finish(self) -> io::Result<W> {
        self.inner.into_inner().map_err(|e| {
            let kind = e.error().kind();
            io::Error::new(kind, e.error().to_string())
        })
    }
}

/// Writes stored result rows as the finance report.
pub struct ReportWriter<W: Write> {
    out: CsvOut<W>,
}

impl<W: Write> ReportWriter<W> {
    pub fn new(out: W, excel: bool) -> io::Result<Self> {
        Ok(Self {
            out: CsvOut::new(out, excel, &REPORT_HEADER)?,
        })
    }

    pub fn write(&mut self, record: &CheckRecord) -> io::Result<()> {
        let row = report_row(record);
        self.out.write_cells(row.cells())
    }

    pub fn rows(&self) -> u64 {
        self.out.rows()
    }

    pub fn finish(self) -> io::Result<W> {
        self.out.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{KeyDetails, KeyStatus};

    fn record() -> CheckRecord {
        CheckRecord {
            run_id: 7,
            payer_id: "NS9qNTgzU2xRNHR2RmFBWWFBTWk5UT09".to_owned(),
            customer_ref: Some("CUST-00001".to_owned()),
            status: KeyStatus::Active,
            details: KeyDetails {
                pay_type: Some(PayType::Card),
                card_code: Some("0100".to_owned()),
                card_name: Some("신한카드".to_owned()),
                card_mask: Some("4518-****-****-1234".to_owned()),
                bank_account_type: Some("개인".to_owned()),
                payer_name: Some("김민준".to_owned()),
                ..KeyDetails::default()
            },
            result_code: Some("0000".to_owned()),
            result_msg: Some("회원조회 성공".to_owned()),
            attempts: 1,
            checked_at: crate::store::time::parse_time("2026-11-26T17:05:03.123Z").unwrap(),
        }
    }

    #[test]
    fn times_are_shown_in_kst_and_utc() {
        let at = |text| crate::store::time::parse_time(text).expect("a time");
        assert_eq!(
            kst_and_utc(at("2026-11-26T17:05:03.123Z")),
            (
                "2026-11-27 02:05:03".to_owned(),
                "2026-11-26 17:05:03".to_owned()
            )
        );
        assert_eq!(
            kst_and_utc(at("2026-11-26T23:00:00+09:00")).1,
            "2026-11-26 14:00:00"
        );
        assert_eq!(
            kst_label(at("2026-11-26T17:05:03Z")),
            "2026-11-27 02:05:03 KST"
        );
    }

    #[test]
    fn rows_mask_the_key_but_keep_rejected_placeholders() {
        let row = report_row(&record());
        assert_eq!(row.payer_id_masked, "NS9q****UT09");
        assert_eq!(row.card_name, "신한카드");
        assert_eq!(row.account_type, "개인");
        assert_eq!(row.checked_at_kst, "2026-11-27 02:05:03");
        assert!(!row.cells().contains(&"김민준"), "no payer name in reports");
        let rejected = CheckRecord {
            payer_id: "#5".to_owned(),
            status: KeyStatus::Rejected,
            ..record()
        };
        assert_eq!(report_row(&rejected).payer_id_masked, "#5");
        let hashy_key = CheckRecord {
            payer_id: "#abcdefghijklmnopq".to_owned(),
            ..record()
        };
        assert_eq!(report_row(&hashy_key).payer_id_masked, "#abc****nopq");
    }

    #[test]
    fn writer_quotes_escapes_and_adds_the_bom() {
        let mut w = ReportWriter::new(Vec::new(), true).unwrap();
        w.write(&record()).unwrap();
        w.write(&CheckRecord {
            customer_ref: Some("=HYPERLINK(\"http://x\",\"a,b\")".to_owned()),
            result_msg: Some("line one\nline two".to_owned()),
            ..record()
        })
        .unwrap();
        assert_eq!(w.rows(), 2);
        let bytes = w.finish().unwrap();
        assert!(bytes.starts_with(UTF8_BOM));
        let text = String::from_utf8(bytes[3..].to_vec()).unwrap();
        assert!(text.starts_with(
            "customer_ref,payer_id_masked,status,pay_type,card_name,card_mask,bank_name,\
             bank_mask,account_type,result_code,result_msg,checked_at_kst,checked_at_utc\r\n"
        ));
        assert!(
            text.contains("\"'=HYPERLINK(\"\"http://x\"\",\"\"a,b\"\")\""),
            "{text}"
        );
        // Control characters (a newline too) never reach the file (issue 10).
        assert!(text.contains(",line one line two,"), "{text}");

        let mut reader = ::csv::Reader::from_reader(text.as_bytes());
        let rows: Vec<::csv::StringRecord> = reader.records().map(Result::unwrap).collect();
        assert_eq!(&rows[0][4], "신한카드");
        assert_eq!(&rows[1][0], "'=HYPERLINK(\"http://x\",\"a,b\")");

        let plain = ReportWriter::new(Vec::new(), false)
            .unwrap()
            .finish()
            .unwrap();
        assert!(plain.starts_with(b"customer_ref,"));
    }

    #[test]
    fn escape_sequences_and_bidi_overrides_never_reach_the_csv() {
        let mut w = ReportWriter::new(Vec::new(), false).unwrap();
        let mut row = CheckRecord {
            result_msg: Some("ok\u{202E}fdp.exe".to_owned()),
            ..record()
        };
        row.details.card_name = Some("BC\x1b]0;pwned\x07카드".to_owned());
        w.write(&row).unwrap();
        let text = String::from_utf8(w.finish().unwrap()).unwrap();
        assert!(!text.contains('\x1b') && !text.contains('\x07'), "{text:?}");
        assert!(!text.contains('\u{202E}'), "{text:?}");
        assert!(text.contains("BC ]0;pwned 카드"), "{text:?}");
    }
}

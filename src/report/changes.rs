//! What changed for each key between two runs: newly gone, newly failing, recovered, card
//! or account changed, new keys, keys no longer in the source.
//!
//! Each side is a run's source (its key list) with every key's latest known result as of
//! that run, so after a partial (budgeted) run a key not checked that night keeps its
//! earlier result: it is neither missing nor new. A key never checked as of a run has no
//! result to compare and changes nothing (not even as new or missing).
//!
//! # Architecture
//! [`classify`] decides about one key from its row in each run (a pure function).
//! [`ChangeStream`] merges the two runs' rows in windows of payer ids, so memory stays
//! flat however many keys there are: a window is a range `(cursor, boundary]` that the
//! database itself delimits (`payer_id > ? AND payer_id <= ?`), so it holds the same keys
//! on both sides whatever the column's collation (PostgreSQL locales and MySQL's
//! case-insensitive collations do not sort like Rust strings); within a window,
//! [`diff_window`] sorts both sides byte-wise and merges them. Rejected input rows are
//! placeholders (`#N`), not keys, and are left out.

use std::cmp::Ordering;
use std::io::{self, Write};

use super::csv::CsvOut;
use super::error::ReportError;
use super::table::Layout;
use crate::domain::{KeyStatus, PayType, mask_payer_id};
use crate::store::{CheckRecord, LatestRecord, Store};

/// Rows read per run per window.
pub const PAGE_ROWS: i64 = 5000;

/// How a key changed between two runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChangeKind {
    /// Active (or failed) before, gone now: the billing key can no longer be charged.
    NewlyGone,
    /// Active or gone before, the lookup failed now.
    NewlyFailing,
    /// Failed or gone before, active now.
    Recovered,
    /// Active both times, but the card (name or masked number) differs.
    CardChanged,
    /// Active both times, but the bank account (bank or masked number) differs.
    AccountChanged,
    /// Only in the later run.
    NewKey,
    /// Only in the earlier run: no longer in the source.
    MissingKey,
}

impl ChangeKind {
    pub const ALL: [ChangeKind; 7] = [
        Self::NewlyGone,
        Self::NewlyFailing,
        Self::Recovered,
        Self::CardChanged,
        Self::AccountChanged,
        Self::NewKey,
        Self::MissingKey,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NewlyGone => "newly_gone",
            Self::NewlyFailing => "newly_failing",
            Self::Recovered => "recovered",
            Self::CardChanged => "card_changed",
            Self::AccountChanged => "account_changed",
            Self::NewKey => "new_key",
            Self::MissingKey => "missing_key",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|k| *k == self).unwrap_or(0)
    }
}

/// One changed key, as the report shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub kind: ChangeKind,
    pub customer_ref: Option<String>,
    pub payer_id_masked: String,
    /// The status in the earlier run (`None`: not in it).
    pub before: Option<KeyStatus>,
    /// The status in the later run (`None`: not in it).
    pub after: Option<KeyStatus>,
    /// What changed, in words: the new card, the result code, …
    pub detail: String,
}

impl Change {
    /// The cells in [`CHANGES_HEADER`] order.
    pub fn cells(&self) -> [&str; 6] {
        [
            self.kind.as_str(),
            self.customer_ref.as_deref().unwrap_or_default(),
            &self.payer_id_masked,
            self.before.map(KeyStatus::as_str).unwrap_or_default(),
            self.after.map(KeyStatus::as_str).unwrap_or_default(),
            &self.detail,
        ]
    }
}

/// The columns of the changes table and CSV.
pub const CHANGES_HEADER: [&str; 6] = [
    "change",
    "customer_ref",
    "payer_id_masked",
    "before",
    "after",
    "detail",
];

fn text(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or_default().trim()
}

fn join(parts: &[&str]) -> String {
    parts
        .iter()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The card or account behind an active row: `신한카드 4518-****-****-1234`.
pub fn instrument(r: &CheckRecord) -> String {
    let d = &r.details;
    match d.pay_type {
        Some(PayType::Card) => join(&[text(&d.card_name), text(&d.card_mask)]),
        Some(PayType::Transfer) => join(&[text(&d.bank_name), text(&d.bank_mask)]),
        None => String::new(),
    }
}

/// The result code and message of a row: `SPAY0005 등록된 결제수단 정보가 없습니다.`
fn result(r: &CheckRecord) -> String {
    join(&[text(&r.result_code), text(&r.result_msg)])
}

/// What identifies the instrument of an active key.
fn instrument_key(r: &CheckRecord) -> [&str; 5] {
    let d = &r.details;
    [
        d.pay_type.map(PayType::as_str).unwrap_or_default(),
        text(&d.card_name),
        text(&d.card_mask),
        text(&d.bank_name),
        text(&d.bank_mask),
    ]
}

/// Classifies one key from its row in the earlier and the later run (`None`: not in
/// that run). Rejected rows count as absent. `None` when nothing worth reporting changed.
pub fn classify(before: Option<&CheckRecord>, after: Option<&CheckRecord>) -> Option<Change> {
    use KeyStatus::{Active, Failed, Gone};
    let before = before.filter(|r| r.status != KeyStatus::Rejected);
    let after = after.filter(|r| r.status != KeyStatus::Rejected);
    let (kind, detail) = match (before, after) {
        (None, None) => return None,
        (None, Some(a)) => {
            let detail = if a.status == Active {
                instrument(a)
            } else {
                result(a)
            };
            (ChangeKind::NewKey, detail)
        }
        (Some(_), None) => (ChangeKind::MissingKey, "no longer in the source".to_owned()),
        (Some(b), Some(a)) => match (b.status, a.status) {
            (Active | Failed, Gone) => (ChangeKind::NewlyGone, result(a)),
            (Active | Gone, Failed) => (ChangeKind::NewlyFailing, result(a)),
            (Failed | Gone, Active) => (ChangeKind::Recovered, instrument(a)),
            (Active, Active) if instrument_key(b) != instrument_key(a) => {
                let card = match a.details.pay_type {
                    Some(pay_type) => pay_type == PayType::Card,
                    None => b.details.pay_type == Some(PayType::Card),
                };
                let kind = if card {
                    ChangeKind::CardChanged
                } else {
                    ChangeKind::AccountChanged
                };
                (kind, format!("{} → {}", instrument(b), instrument(a)))
            }
            _ => return None,
        },
    };
    let either = after.or(before)?;
    Some(Change {
        kind,
        customer_ref: after
            .and_then(|a| a.customer_ref.clone())
            .or_else(|| before.and_then(|b| b.customer_ref.clone())),
        payer_id_masked: mask_payer_id(&either.payer_id),
        before: before.map(|b| b.status),
        after: after.map(|a| a.status),
        detail,
    })
}

/// Merges the rows of one window (the same payer-id range of both runs) into changes,
/// ordered by payer id.
pub fn diff_window(before: Vec<CheckRecord>, after: Vec<CheckRecord>) -> Vec<Change> {
    let known = |rows: Vec<CheckRecord>| -> Vec<LatestRecord> {
        rows.into_iter()
            .map(|r| LatestRecord {
                payer_id: r.payer_id.clone(),
                customer_ref: r.customer_ref.clone(),
                latest: Some(r),
            })
            .collect()
    };
    diff_latest(known(before), known(after))
}

/// Merges one window of two runs' sources, each key with its latest known result, into
/// changes ordered by payer id.
pub fn diff_latest(before: Vec<LatestRecord>, after: Vec<LatestRecord>) -> Vec<Change> {
    let mut changes = Vec::new();
    pair_up(before, after, |x, y| changes.extend(classify_latest(x, y)));
    changes
}

/// Calls `each` with every key of one window of two runs' sources, paired by exact payer
/// id (`None`: not in that run), in byte-wise payer id order.
pub fn pair_up(
    mut before: Vec<LatestRecord>,
    mut after: Vec<LatestRecord>,
    mut each: impl FnMut(Option<&LatestRecord>, Option<&LatestRecord>),
) {
    before.sort_by(|x, y| x.payer_id.cmp(&y.payer_id));
    after.sort_by(|x, y| x.payer_id.cmp(&y.payer_id));
    let mut b = before.iter().peekable();
    let mut a = after.iter().peekable();
    loop {
        let (x, y) = match (b.peek(), a.peek()) {
            (None, None) => break,
            (Some(x), None) => (Some(*x), None),
            (None, Some(y)) => (None, Some(*y)),
            (Some(x), Some(y)) => match x.payer_id.cmp(&y.payer_id) {
                Ordering::Less => (Some(*x), None),
                Ordering::Greater => (None, Some(*y)),
                Ordering::Equal => (Some(*x), Some(*y)),
            },
        };
        if x.is_some() {
            b.next();
        }
        if y.is_some() {
            a.next();
        }
        each(x, y);
    }
}

/// [`classify`] for keys of two sources (`None`: not in that source): a key in both is
/// compared only when both sides have a known result; a key never checked is neither new
/// nor missing.
pub fn classify_latest(
    before: Option<&LatestRecord>,
    after: Option<&LatestRecord>,
) -> Option<Change> {
    let before = before.map(|r| r.latest.as_ref());
    let after = after.map(|r| r.latest.as_ref());
    match (before, after) {
        (Some(Some(b)), Some(Some(a))) => classify(Some(b), Some(a)),
        (Some(Some(b)), None) => classify(Some(b), None),
        (None, Some(Some(a))) => classify(None, Some(a)),
        _ => None,
    }
}

/// The changes between two runs of the store, one window at a time.
pub struct ChangeStream<'a> {
    store: &'a Store,
    before_run: i64,
    after_run: i64,
    page: i64,
    /// The last payer id already compared; `None` once both runs are exhausted.
    cursor: Option<String>,
}

impl<'a> ChangeStream<'a> {
    /// Compares `before_run` with `after_run`, reading at most `page` rows per run at a
    /// time.
    pub fn new(store: &'a Store, before_run: i64, after_run: i64, page: i64) -> Self {
        Self {
            store,
            before_run,
            after_run,
            page: page.max(1),
            cursor: Some(String::new()),
        }
    }

    /// The changes of the next window (possibly none), or `None` when done.
    pub async fn next_window(&mut self) -> Result<Option<Vec<Change>>, ReportError> {
        Ok(self
            .next_rows()
            .await?
            .map(|(earlier, later)| diff_latest(earlier, later)))
    }

    /// The rows of both runs in the next window (see [`pair_up`]), or `None` when done.
    pub async fn next_rows(
        &mut self,
    ) -> Result<Option<(Vec<LatestRecord>, Vec<LatestRecord>)>, ReportError> {
        let Some(cursor) = self.cursor.take() else {
            return Ok(None);
        };
        let (store, page) = (self.store, self.page);
        let full = |rows: &[LatestRecord]| i64::try_from(rows.len()).unwrap_or(i64::MAX) >= page;
        let earlier = store
            .latest_range(self.before_run, &cursor, None, page)
            .await
            .map_err(ReportError::store(self.before_run))?;
        // With a full page of the earlier run, the window ends at its last key.
        let upper = earlier
            .last()
            .filter(|_| full(&earlier))
            .map(|r| r.payer_id.clone());
        let later = store
            .latest_range(self.after_run, &cursor, upper.as_deref(), page)
            .await
            .map_err(ReportError::store(self.after_run))?;
        let (earlier, next) = match later.last().filter(|_| full(&later)) {
            // The later run fills its page first: the window ends at its last key, and
            // the earlier run contributes what lies up to there (in the database's order).
            Some(last) => {
                let boundary = last.payer_id.clone();
                let earlier = if upper.as_deref() == Some(boundary.as_str()) {
                    earlier
                } else {
                    store
                        .latest_range(self.before_run, &cursor, Some(&boundary), page)
                        .await
                        .map_err(ReportError::store(self.before_run))?
                };
                (earlier, Some(boundary))
            }
            None => (earlier, upper),
        };
        self.cursor = next;
        Ok(Some((earlier, later)))
    }
}

/// Changes per kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChangeCounts([u64; 7]);

impl ChangeCounts {
    pub fn add(&mut self, kind: ChangeKind) {
        self.0[kind.index()] += 1;
    }

    pub fn get(&self, kind: ChangeKind) -> u64 {
        self.0[kind.index()]
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// `2 newly_gone, 1 recovered` (kinds without changes left out), or `no changes`.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = ChangeKind::ALL
            .iter()
            .filter(|k| self.get(**k) > 0)
            .map(|k| format!("{} {}", self.get(*k), k.as_str()))
            .collect();
        if parts.is_empty() {
            "no changes".to_owned()
        } else {
            parts.join(", ")
        }
    }
}

/// Rows a text table holds back to fit its columns before printing.
const TABLE_FIT_ROWS: usize = 500;

/// Writes changes as CSV or as a text table.
pub enum ChangeWriter<W: Write> {
    Csv {
        out: Box<CsvOut<W>>,
        counts: ChangeCounts,
    },
    Table {
        out: W,
        /// Rows held back until the layout is fitted.
        held: Vec<Vec<String>>,
        layout: Option<Layout>,
        counts: ChangeCounts,
    },
}

impl<W: Write> ChangeWriter<W> {
    /// CSV with a header row (a BOM first when `excel`).
    pub fn csv(out: W, excel: bool) -> io::Result<Self> {
        Ok(Self::Csv {
            out: Box::new(CsvOut::new(out, excel, &CHANGES_HEADER)?),
            counts: ChangeCounts::default(),
        })
    }

    /// A text table under a `title` line.
    pub fn table(mut out: W, title: &str) -> io::Result<Self> {
        // The title carries stored times: shown, never obeyed by the terminal.
        writeln!(out, "{}", super::neutral::terminal(title))?;
        Ok(Self::Table {
            out,
            held: Vec::new(),
            layout: None,
            counts: ChangeCounts::default(),
        })
    }

    pub fn write(&mut self, change: &Change) -> io::Result<()> {
        match self {
            Self::Csv { out, counts } => {
                counts.add(change.kind);
                out.write_cells(change.cells())
            }
            Self::Table {
                out,
                held,
                layout,
                counts,
            } => {
                counts.add(change.kind);
                let cells: Vec<String> = change.cells().iter().map(|c| (*c).to_owned()).collect();
                match layout {
                    Some(layout) => writeln!(out, "{}", layout.line(&cells)),
                    None => {
                        held.push(cells);
                        if held.len() >= TABLE_FIT_ROWS {
                            *layout = Some(flush_held(out, held)?);
                        }
                        Ok(())
                    }
                }
            }
        }
    }

    /// Ends the output (the table gets a count line) and returns the writer and counts.
    pub fn finish(self) -> io::Result<(W, ChangeCounts)> {
        match self {
            Self::Csv { out, counts } => Ok((out.finish()?, counts)),
            Self::Table {
                mut out,
                mut held,
                layout,
                counts,
            } => {
                if counts.total() > 0 && layout.is_none() {
                    flush_held(&mut out, &mut held)?;
                }
                writeln!(out, "{}", counts.describe())?;
                out.flush()?;
                Ok((out, counts))
            }
        }
    }
}

/// Fits the layout to the held rows, prints header, rule and rows.
fn flush_held<W: Write>(out: &mut W, held: &mut Vec<Vec<String>>) -> io::Result<Layout> {
    let layout = Layout::fit(&CHANGES_HEADER, held, &[false; 6]);
    writeln!(out, "{}", layout.line(&CHANGES_HEADER))?;
    writeln!(out, "{}", layout.rule())?;
    for row in held.drain(..) {
        writeln!(out, "{}", layout.line(&row))?;
    }
    Ok(layout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::KeyDetails;

    fn row(id: &str, status: &str) -> CheckRecord {
        CheckRecord {
            run_id: 1,
            payer_id: id.to_owned(),
            customer_ref: Some(format!("C-{id}")),
            status: KeyStatus::parse(status).expect("a known status"),
            checked_at: crate::store::time::parse_time("2026-11-26T17:00:00Z").expect("a time"),
            ..CheckRecord::default()
        }
    }

    fn card(id: &str, name: &str, mask: &str) -> CheckRecord {
        CheckRecord {
            details: KeyDetails {
                pay_type: Some(PayType::Card),
                card_name: Some(name.to_owned()),
                card_mask: Some(mask.to_owned()),
                ..KeyDetails::default()
            },
            result_code: Some("0000".to_owned()),
            ..row(id, "active")
        }
    }

    fn bank(id: &str, name: &str, mask: &str) -> CheckRecord {
        CheckRecord {
            details: KeyDetails {
                pay_type: Some(PayType::Transfer),
                bank_name: Some(name.to_owned()),
                bank_mask: Some(mask.to_owned()),
                ..KeyDetails::default()
            },
            ..row(id, "active")
        }
    }

    fn gone(id: &str) -> CheckRecord {
        CheckRecord {
            result_code: Some("SPAY0005".to_owned()),
            result_msg: Some("등록된 결제수단 정보가 없습니다.".to_owned()),
            ..row(id, "gone")
        }
    }

    fn kind(b: Option<&CheckRecord>, a: Option<&CheckRecord>) -> Option<ChangeKind> {
        classify(b, a).map(|c| c.kind)
    }

    #[test]
    fn status_transitions() {
        use ChangeKind::*;
        let active = card("k", "신한카드", "4518-****-****-0001");
        let failed = CheckRecord {
            result_code: Some("CPAY9999".to_owned()),
            ..row("k", "failed")
        };
        let gone = gone("k");
        let cases = [
            (&active, &gone, Some(NewlyGone)),
            (&failed, &gone, Some(NewlyGone)),
            (&active, &failed, Some(NewlyFailing)),
            (&gone, &failed, Some(NewlyFailing)),
            (&failed, &active, Some(Recovered)),
            (&gone, &active, Some(Recovered)),
            (&active, &active, None),
            (&gone, &gone, None),
            (&failed, &failed, None),
        ];
        for (b, a, want) in cases {
            assert_eq!(kind(Some(b), Some(a)), want, "{} → {}", b.status, a.status);
        }
    }

    #[test]
    fn details_name_the_new_state() {
        let b = card("NS9qNTgzU2xRNHR2", "신한카드", "4518-****-****-0001");
        let change = classify(Some(&b), Some(&gone("NS9qNTgzU2xRNHR2"))).unwrap();
        assert_eq!(change.detail, "SPAY0005 등록된 결제수단 정보가 없습니다.");
        assert_eq!(change.payer_id_masked, "NS9q****NHR2");
        assert_eq!(
            (
                change.before.map(KeyStatus::as_str),
                change.after.map(KeyStatus::as_str)
            ),
            (Some("active"), Some("gone"))
        );
        let back = classify(Some(&gone("k")), Some(&b)).unwrap();
        assert_eq!(back.detail, "신한카드 4518-****-****-0001");
    }

    #[test]
    fn instrument_changes() {
        use ChangeKind::*;
        let a = card("k", "신한카드", "4518-****-****-0001");
        let new_mask = card("k", "신한카드", "4518-****-****-0002");
        let new_company = card("k", "BC카드", "4518-****-****-0001");
        let acct = bank("k", "KB국민은행", "123-********-456");
        let acct2 = bank("k", "KB국민은행", "123-********-789");
        assert_eq!(kind(Some(&a), Some(&new_mask)), Some(CardChanged));
        assert_eq!(kind(Some(&a), Some(&new_company)), Some(CardChanged));
        assert_eq!(kind(Some(&acct), Some(&acct2)), Some(AccountChanged));
        assert_eq!(kind(Some(&a), Some(&acct)), Some(AccountChanged));
        assert_eq!(kind(Some(&acct), Some(&a)), Some(CardChanged));
        let detail = classify(Some(&a), Some(&new_mask)).unwrap().detail;
        assert_eq!(
            detail,
            "신한카드 4518-****-****-0001 → 신한카드 4518-****-****-0002"
        );
        // Fields that do not identify the instrument do not count.
        let renamed = CheckRecord {
            details: KeyDetails {
                payer_name: Some("다른이름".to_owned()),
                ..a.details.clone()
            },
            checked_at: crate::store::time::parse_time("2026-11-27T17:00:00Z").expect("a time"),
            attempts: 3,
            ..a.clone()
        };
        assert_eq!(kind(Some(&a), Some(&renamed)), None);
        // An absent field and an empty one are the same.
        let empty_bank = CheckRecord {
            details: KeyDetails {
                bank_name: Some(String::new()),
                ..a.details.clone()
            },
            ..a.clone()
        };
        assert_eq!(kind(Some(&a), Some(&empty_bank)), None);
    }

    #[test]
    fn new_and_missing_keys_and_rejected_placeholders() {
        use ChangeKind::*;
        let a = card("k", "신한카드", "4518-****-****-0001");
        assert_eq!(kind(None, Some(&a)), Some(NewKey));
        assert_eq!(kind(None, Some(&gone("k"))), Some(NewKey));
        assert_eq!(kind(Some(&a), None), Some(MissingKey));
        let missing = classify(Some(&a), None).unwrap();
        assert_eq!(missing.customer_ref.as_deref(), Some("C-k"));
        assert_eq!(missing.after, None);
        let rejected = row("#5", "rejected");
        assert_eq!(kind(None, Some(&rejected)), None);
        assert_eq!(kind(Some(&rejected), None), None);
        assert_eq!(kind(None, None), None);
        // A status this version does not know never reaches here: the store refuses to
        // read it (`store::tests::unknown_statuses_are_not_read`).
    }

    #[test]
    fn keys_never_checked_change_nothing() {
        use ChangeKind::*;
        let never = |id: &str| LatestRecord {
            payer_id: id.to_owned(),
            customer_ref: None,
            latest: None,
        };
        let known = |r: CheckRecord| LatestRecord {
            payer_id: r.payer_id.clone(),
            customer_ref: r.customer_ref.clone(),
            latest: Some(r),
        };
        let a = known(card("k", "신한카드", "4518-****-****-0001"));
        let kind = |b: Option<&LatestRecord>, x: Option<&LatestRecord>| {
            classify_latest(b, x).map(|c| c.kind)
        };
        assert_eq!(kind(Some(&never("k")), Some(&a)), None);
        assert_eq!(kind(Some(&a), Some(&never("k"))), None);
        assert_eq!(kind(Some(&never("k")), None), None);
        assert_eq!(kind(None, Some(&never("k"))), None);
        assert_eq!(kind(Some(&a), None), Some(MissingKey));
        assert_eq!(kind(None, Some(&a)), Some(NewKey));
        let gone = known(gone("k"));
        assert_eq!(kind(Some(&a), Some(&gone)), Some(NewlyGone));
    }

    #[test]
    fn windows_merge_by_exact_key_whatever_the_input_order() {
        let before = vec![
            card("b", "신한카드", "1"),
            card("A", "신한카드", "1"),
            gone("c"),
            card("d", "신한카드", "1"),
        ];
        let after = vec![
            card("d", "신한카드", "2"),
            card("a", "신한카드", "1"),
            card("c", "BC카드", "1"),
            card("b", "신한카드", "1"),
        ];
        let got: Vec<(String, ChangeKind)> = diff_window(before, after)
            .into_iter()
            .map(|c| (c.customer_ref.unwrap_or_default(), c.kind))
            .collect();
        assert_eq!(
            got,
            vec![
                ("C-A".to_owned(), ChangeKind::MissingKey),
                ("C-a".to_owned(), ChangeKind::NewKey),
                ("C-c".to_owned(), ChangeKind::Recovered),
                ("C-d".to_owned(), ChangeKind::CardChanged),
            ]
        );
    }

    #[test]
    fn csv_and_table_output() {
        let changes = diff_window(
            vec![card("k1", "신한카드", "1111"), card("k2", "BC카드", "2222")],
            vec![gone("k1"), card("k3", "=cmd", "3333")],
        );
        let mut csv = ChangeWriter::csv(Vec::new(), false).unwrap();
        for c in &changes {
            csv.write(c).unwrap();
        }
        let (bytes, counts) = csv.finish().unwrap();
        let text = String::from_utf8(bytes).unwrap();
        assert_eq!(counts.total(), 3);
        assert!(text.starts_with("change,customer_ref,payer_id_masked,before,after,detail\r\n"));
        assert!(
            text.contains("newly_gone,C-k1,****,active,gone,SPAY0005 "),
            "{text}"
        );
        assert!(text.contains("missing_key,C-k2,****,active,,no longer in the source"));
        assert!(
            text.contains("new_key,C-k3,****,,active,'=cmd 3333"),
            "{text}"
        );

        let mut table = ChangeWriter::table(Vec::new(), "changes from run 1 to run 2").unwrap();
        for c in &changes {
            table.write(c).unwrap();
        }
        let (bytes, counts) = table.finish().unwrap();
        let text = String::from_utf8(bytes).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "changes from run 1 to run 2");
        assert!(lines[1].starts_with("change       customer_ref  payer_id_masked  before"));
        assert!(lines[3].starts_with("newly_gone   C-k1          ****             active  gone"));
        assert_eq!(lines[6], "1 newly_gone, 1 new_key, 1 missing_key");
        assert_eq!(counts.get(ChangeKind::NewKey), 1);

        let empty = ChangeWriter::table(Vec::new(), "t")
            .unwrap()
            .finish()
            .unwrap();
        assert_eq!(String::from_utf8(empty.0).unwrap(), "t\nno changes\n");
    }

    #[test]
    fn long_tables_keep_the_fitted_layout() {
        let mut table = ChangeWriter::table(Vec::new(), "t").unwrap();
        for i in 0..TABLE_FIT_ROWS + 10 {
            let c = classify(None, Some(&gone(&format!("key{i:05}")))).unwrap();
            table.write(&c).unwrap();
        }
        let (bytes, counts) = table.finish().unwrap();
        let text = String::from_utf8(bytes).unwrap();
        assert_eq!(counts.get(ChangeKind::NewKey), (TABLE_FIT_ROWS + 10) as u64);
        assert_eq!(text.lines().count(), 1 + 2 + TABLE_FIT_ROWS + 10 + 1);
        assert_eq!(text.matches("change ").count(), 1, "one header");
    }
}

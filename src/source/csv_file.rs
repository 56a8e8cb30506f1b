//! The CSV key reader: a header naming the key column (`payer_id` or `PCD_PAYER_ID`, or
//! `--id-column`) and optionally the reference, other columns ignored; UTF-8, UTF-16 or
//! CP949 ([`super::decode`]), comma- or tab-separated, CRLF tolerated; read on a blocking
//! thread into a bounded channel.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::columns::ColumnNames;
use super::decode::{DecodeError, Decoded, TextEncoding};
use super::error::SourceError;
use super::item::{CHUNK, Item, ItemReceiver};

/// How a key file's text is laid out: `--csv-encoding`, `--delimiter`, `--id-column` and
/// `--ref-column`. Stored with the run, so a resumed run reads the file the same way.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CsvFormat {
    #[serde(default, skip_serializing_if = "TextEncoding::is_auto")]
    pub encoding: TextEncoding,
    #[serde(default, skip_serializing_if = "Delimiter::is_comma")]
    pub delimiter: Delimiter,
    #[serde(default, skip_serializing_if = "ColumnNames::is_default")]
    pub columns: ColumnNames,
}

impl CsvFormat {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// What separates the fields of a line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Delimiter {
    #[default]
    Comma,
    Tab,
}

impl Delimiter {
    pub fn is_comma(&self) -> bool {
        *self == Self::Comma
    }

    /// Tab for a `.tsv` file name (any case), comma otherwise.
    pub fn for_path(path: &Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some(ext) if ext.eq_ignore_ascii_case("tsv") => Self::Tab,
            _ => Self::Comma,
        }
    }

    fn byte(self) -> u8 {
        match self {
            Self::Comma => b',',
            Self::Tab => b'\t',
        }
    }
}

/// Reads `path` (`-` for stdin) in a blocking task.
pub fn spawn(path: PathBuf, format: CsvFormat) -> ItemReceiver {
    let (tx, rx) = mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        let name = display_name(&path);
        let result = if path.as_os_str() == "-" {
            read(std::io::stdin().lock(), &name, &format, &tx)
        } else {
            match std::fs::File::open(&path) {
                Ok(file) => read(file, &name, &format, &tx),
                Err(source) => Err(SourceError::Io { path: name, source }),
            }
        };
        if let Err(e) = result {
            let _ = tx.blocking_send(Err(e));
        }
    });
    rx
}

fn display_name(path: &Path) -> String {
    if path.as_os_str() == "-" {
        "<stdin>".to_owned()
    } else {
        path.display().to_string()
    }
}

/// An I/O error of the (decoded) input: a decoding error names its line and offset.
fn io_error(name: &str, e: std::io::Error) -> SourceError {
    match DecodeError::of(&e) {
        Some(decode) => SourceError::Encoding {
            path: name.to_owned(),
            source: decode.clone(),
        },
        None => SourceError::Io {
            path: name.to_owned(),
            source: e,
        },
    }
}

/// Reads every row, sending chunks of items; stops early if the receiver is gone.
pub fn read(
    input: impl Read,
    name: &str,
    format: &CsvFormat,
    tx: &mpsc::Sender<Result<Vec<Item>, SourceError>>,
) -> Result<(), SourceError> {
    let mut chunk = Vec::with_capacity(CHUNK);
    let sent = read_items(input, name, format, |item| {
        chunk.push(item);
        if chunk.len() >= CHUNK {
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK));
            return tx.blocking_send(Ok(full)).is_ok();
        }
        true
    })?;
    if sent && !chunk.is_empty() {
        let _ = tx.blocking_send(Ok(chunk));
    }
    Ok(())
}

/// How a reader's error is told: a decoding error, an I/O error, or a malformed record
/// with its line.
fn malformed(name: &str) -> impl Fn(csv::Error) -> SourceError + Copy + '_ {
    move |e: csv::Error| match e.kind() {
        csv::ErrorKind::Io(io) => match DecodeError::of(io) {
            Some(decode) => SourceError::Encoding {
                path: name.to_owned(),
                source: decode.clone(),
            },
            None => SourceError::Io {
                path: name.to_owned(),
                source: std::io::Error::new(io.kind(), io.to_string()),
            },
        },
        _ => SourceError::Malformed {
            path: name.to_owned(),
            line: e.position().map_or(0, csv::Position::line),
            reason: e.to_string(),
        },
    }
}

/// The key (and customer reference) of the record starting at `line`.
fn row_item(
    record: &csv::ByteRecord,
    line: u64,
    name: &str,
    id_at: usize,
    ref_at: Option<usize>,
) -> Result<Item, SourceError> {
    let text = |at: usize| -> Result<Option<&str>, SourceError> {
        field(record, at)
            .map(std::str::from_utf8)
            .transpose()
            .map_err(|_| SourceError::NotUtf8 {
                path: name.to_owned(),
                line,
            })
    };
    let raw = text(id_at)?.unwrap_or_default();
    let customer_ref = ref_at
        .map(text)
        .transpose()?
        .flatten()
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(|r| r.chars().take(255).collect());
    let seq = i64::try_from(line).unwrap_or(i64::MAX);
    Ok(Item::from_raw(seq, raw, customer_ref, || {
        format!("{name} line {line}")
    }))
}

/// The parsing itself, free of channels: calls `emit` for each row until it returns
/// `false`. Returns whether every row was emitted.
pub fn read_items(
    input: impl Read,
    name: &str,
    format: &CsvFormat,
    mut emit: impl FnMut(Item) -> bool,
) -> Result<bool, SourceError> {
    // Records end at `\n` (a CRLF's `\r` is trimmed from the last field below), and a
    // final `\n` is added, so the reader's position after a record always tells its line.
    // The decoder reads ahead in large blocks: no buffering of its own needed.
    let decoded = Decoded::new(input, format.encoding).map_err(|e| io_error(name, e))?;
    let tally = Tally::default();
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(format.delimiter.byte())
        .terminator(csv::Terminator::Any(b'\n'))
        .from_reader(tally.wrap(decoded).chain(&b"\n"[..]));
    let mut record = csv::ByteRecord::new();
    let malformed = malformed(name);

    // The header: the first record.
    if !reader.read_byte_record(&mut record).map_err(malformed)? {
        return Err(SourceError::Empty {
            path: name.to_owned(),
        });
    }
    unclosed_quote(&reader, &record, &tally, name)?;
    let header_line = start_line(&reader, &record);
    let (id_at, ref_at) = columns(&record, header_line, name, &format.columns)?;

    while reader.read_byte_record(&mut record).map_err(malformed)? {
        unclosed_quote(&reader, &record, &tally, name)?;
        let line = start_line(&reader, &record);
        // A blank CRLF line reads as one field holding `\r`: not a row.
        if record.len() == 1 && field(&record, 0).is_some_and(<[u8]>::is_empty) {
            continue;
        }
        let item = row_item(&record, line, name, id_at, ref_at)?;
        if !emit(item) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Where the key and customer-reference columns are in the header `record`.
fn columns(
    record: &csv::ByteRecord,
    header_line: u64,
    name: &str,
    names: &ColumnNames,
) -> Result<(usize, Option<usize>), SourceError> {
    let mut header = Vec::with_capacity(record.len());
    for i in 0..record.len() {
        let text = std::str::from_utf8(field(record, i).unwrap_or_default()).map_err(|_| {
            SourceError::NotUtf8 {
                path: name.to_owned(),
                line: header_line,
            }
        })?;
        header.push(text);
    }
    let at = names
        .find(&header)
        .map_err(|source| SourceError::MissingColumn {
            at: format!("{name} line {header_line}"),
            source,
        })?;
    Ok((at.id, at.reference))
}

/// Counts the bytes of the input and remembers the last one.
#[derive(Clone, Default)]
struct Tally(std::rc::Rc<std::cell::Cell<(u64, Option<u8>)>>);

impl Tally {
    fn wrap<R: Read>(&self, inner: R) -> Counted<R> {
        Counted {
            inner,
            tally: self.clone(),
        }
    }

    fn bytes(&self) -> u64 {
        self.0.get().0
    }

    fn last(&self) -> Option<u8> {
        self.0.get().1
    }
}

struct Counted<R> {
    inner: R,
    tally: Tally,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            let (bytes, _) = self.tally.0.get();
            self.tally.0.set((bytes + n as u64, Some(buf[n - 1])));
        }
        Ok(n)
    }
}

/// A quote opened and never closed swallows the rest of the file into one field: the
/// record then runs through the newline appended after the input. That is a malformed
/// file, not a row.
fn unclosed_quote<R: Read>(
    reader: &csv::Reader<R>,
    record: &csv::ByteRecord,
    tally: &Tally,
    name: &str,
) -> Result<(), SourceError> {
    let ends_in_newline = record
        .get(record.len().saturating_sub(1))
        .is_some_and(|f| f.ends_with(b"\n"));
    if ends_in_newline
        && reader.position().byte() == tally.bytes() + 1
        && tally.last() != Some(b'"')
    {
        let inner: usize = record
            .iter()
            .map(|f| f.iter().filter(|b| **b == b'\n').count())
            .sum();
        return Err(SourceError::Malformed {
            path: name.to_owned(),
            line: reader.position().line().saturating_sub(inner as u64).max(1),
            reason: "a quoted field opened here is never closed".to_owned(),
        });
    }
    Ok(())
}

/// A field, with the `\r` of a CRLF line end trimmed from the last one.
fn field(record: &csv::ByteRecord, at: usize) -> Option<&[u8]> {
    let value = record.get(at)?;
    if at + 1 == record.len() {
        Some(value.strip_suffix(b"\r").unwrap_or(value))
    } else {
        Some(value)
    }
}

/// The line a record started on: the reader stands on the line after it, less the line
/// breaks inside quoted fields.
fn start_line<R: Read>(reader: &csv::Reader<R>, record: &csv::ByteRecord) -> u64 {
    let inner: usize = record
        .iter()
        .map(|f| f.iter().filter(|b| **b == b'\n').count())
        .sum();
    reader
        .position()
        .line()
        .saturating_sub(1 + inner as u64)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::RejectReason;

    fn items(input: &[u8]) -> Result<Vec<Item>, SourceError> {
        let mut out = Vec::new();
        read_items(input, "keys.csv", &CsvFormat::default(), |i| {
            out.push(i);
            true
        })?;
        Ok(out)
    }

    fn key(item: &Item) -> (&str, Option<&str>, i64) {
        match item {
            Item::Key {
                id,
                customer_ref,
                seq,
            } => (id.expose(), customer_ref.as_deref(), *seq),
            Item::Rejected { .. } => panic!("rejected: {item:?}"),
        }
    }

    #[test]
    fn header_bom_crlf_quotes_and_extra_columns() {
        let input = "\u{feff}name,Payer_ID ,customer_ref\r\n\"Kim, M\",\"abcdefgh1\",C-1\r\nLee,abcdefgh2,\r\n\r\n";
        let got = items(input.as_bytes()).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(key(&got[0]), ("abcdefgh1", Some("C-1"), 2));
        assert_eq!(key(&got[1]), ("abcdefgh2", None, 3));
        let got = items(b"payer_id,customer_ref\n\"multi\nline\",r\nlast_key_1,\"r\"\r\n").unwrap();
        assert!(
            matches!(&got[0], Item::Rejected { location, .. } if location == "keys.csv line 2")
        );
        assert_eq!(key(&got[1]), ("last_key_1", Some("r"), 4));
    }

    #[test]
    fn bad_values_become_rejected_items_with_their_line() {
        let input = b"payer_id\r\n\r\nok_key_1\r\n\"\",x\r\nbad\x00key";
        let got = items(input).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(key(&got[0]).0, "ok_key_1");
        let Item::Rejected {
            reason, location, ..
        } = &got[1]
        else {
            panic!()
        };
        assert_eq!(*reason, RejectReason::Empty);
        assert_eq!(location, "keys.csv line 4");
        assert!(matches!(
            &got[2],
            Item::Rejected {
                reason: RejectReason::ControlCharacter { .. },
                ..
            }
        ));
    }

    #[test]
    fn malformed_files_name_file_and_line() {
        assert!(matches!(items(b""), Err(SourceError::Empty { .. })));
        let e = items(b"id,ref\nx,y\n").unwrap_err();
        assert!(
            e.to_string().starts_with("keys.csv line 1: no `payer_id`"),
            "{e}"
        );
        let e = items(b"payer_id\nabcdefgh\nab\xffcd\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "keys.csv line 3, byte offset 20: neither UTF-8 nor CP949: give --csv-encoding, or \
             save the file as UTF-8"
        );
    }

    #[test]
    fn an_unclosed_quote_is_malformed_not_a_row() {
        let e =
            items(b"payer_id,customer_ref\nkey_one_1,a\n\"key_two,b\nkey_three_3,c\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "keys.csv line 3: malformed CSV: a quoted field opened here is never closed"
        );
        // A quoted field that closes at the very end is fine, newline inside or not.
        let got = items(b"payer_id,customer_ref\nkey_one_1,\"multi\nline\"").unwrap();
        assert_eq!(got.len(), 1);
    }

    #[test]
    fn cp949_tab_separated_with_hangul_headers() {
        let format = CsvFormat {
            encoding: TextEncoding::Auto,
            delimiter: Delimiter::Tab,
            columns: ColumnNames::from_flags(Some("빌링키"), Some("고객번호")).unwrap(),
        };
        let text = "고객번호\t빌링키\n홍길동상사\tkey_one_1\n\tkey_two_2\n";
        let bytes = encoding_rs::EUC_KR.encode(text).0.into_owned();
        let mut out = Vec::new();
        read_items(&bytes[..], "keys.tsv", &format, |i| {
            out.push(i);
            true
        })
        .unwrap();
        assert_eq!(key(&out[0]), ("key_one_1", Some("홍길동상사"), 2));
        assert_eq!(key(&out[1]), ("key_two_2", None, 3));
        assert_eq!(Delimiter::for_path(Path::new("a/KEYS.TSV")), Delimiter::Tab);
    }

    #[test]
    fn only_a_header_is_no_keys() {
        assert!(items(b"payer_id\n").unwrap().is_empty());
        assert!(items(b"payer_id").unwrap().is_empty());
    }
}

//! The CSV key reader: header `payer_id` (optional `customer_ref`, other columns ignored),
//! a BOM and CRLF tolerated, read on a blocking thread into a bounded channel.

use std::io::Read;
use std::path::{Path, PathBuf};

use tokio::sync::mpsc;

use super::{CHUNK, Item, ItemReceiver, SourceError};

const ID_COLUMN: &str = "payer_id";
const REF_COLUMN: &str = "customer_ref";

/// Reads `path` (`-` for stdin) in a blocking task.
pub fn spawn(path: PathBuf) -> ItemReceiver {
    let (tx, rx) = mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        let name = display_name(&path);
        let result = if path.as_os_str() == "-" {
            read(std::io::stdin().lock(), &name, &tx)
        } else {
            match std::fs::File::open(&path) {
                Ok(file) => read(
                    std::io::BufReader::with_capacity(64 * 1024, file),
                    &name,
                    &tx,
                ),
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

/// Reads every row, sending chunks of items; stops early if the receiver is gone.
pub fn read(
    input: impl Read,
    name: &str,
    tx: &mpsc::Sender<Result<Vec<Item>, SourceError>>,
) -> Result<(), SourceError> {
    let mut chunk = Vec::with_capacity(CHUNK);
    let sent = read_items(input, name, |item| {
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

/// The parsing itself, free of channels: calls `emit` for each row until it returns
/// `false`. Returns whether every row was emitted.
pub fn read_items(
    input: impl Read,
    name: &str,
    mut emit: impl FnMut(Item) -> bool,
) -> Result<bool, SourceError> {
    // Records end at `\n` (a CRLF's `\r` is trimmed from the last field below), and a
    // final `\n` is added, so the reader's position after a record always tells its line.
    let tally = Tally::default();
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .terminator(csv::Terminator::Any(b'\n'))
        .from_reader(tally.wrap(input).chain(&b"\n"[..]));
    let mut record = csv::ByteRecord::new();
    let malformed = |e: csv::Error| match e.kind() {
        csv::ErrorKind::Io(_) => SourceError::Io {
            path: name.to_owned(),
            source: std::io::Error::other(e.to_string()),
        },
        _ => SourceError::Malformed {
            path: name.to_owned(),
            line: e.position().map_or(0, csv::Position::line),
            reason: e.to_string(),
        },
    };

    // The header: the first record.
    if !reader.read_byte_record(&mut record).map_err(malformed)? {
        return Err(SourceError::Empty {
            path: name.to_owned(),
        });
    }
    unclosed_quote(&reader, &record, &tally, name)?;
    let header_line = start_line(&reader, &record);
    let (id_at, ref_at) = columns(&record, header_line, name)?;

    while reader.read_byte_record(&mut record).map_err(malformed)? {
        unclosed_quote(&reader, &record, &tally, name)?;
        let line = start_line(&reader, &record);
        // A blank CRLF line reads as one field holding `\r`: not a row.
        if record.len() == 1 && field(&record, 0).is_some_and(<[u8]>::is_empty) {
            continue;
        }
        let text = |at: usize| -> Result<Option<&str>, SourceError> {
            field(&record, at)
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
        let item = Item::from_raw(seq, raw, customer_ref, || format!("{name} line {line}"));
        if !emit(item) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Where the key and customer-reference columns are in the header `record` (BOM
/// stripped, names compared without case or surrounding spaces).
fn columns(
    record: &csv::ByteRecord,
    header_line: u64,
    name: &str,
) -> Result<(usize, Option<usize>), SourceError> {
    let mut names = Vec::with_capacity(record.len());
    for i in 0..record.len() {
        let field = field(record, i).unwrap_or_default();
        let field = if i == 0 {
            field.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(field)
        } else {
            field
        };
        let text = std::str::from_utf8(field).map_err(|_| SourceError::NotUtf8 {
            path: name.to_owned(),
            line: header_line,
        })?;
        names.push(text.trim().to_ascii_lowercase());
    }
    let Some(id_at) = names.iter().position(|n| n == ID_COLUMN) else {
        return Err(SourceError::MissingColumn {
            path: name.to_owned(),
            line: header_line,
            found: names
                .iter()
                .map(|n| format!("{:?}", n.chars().take(40).collect::<String>()))
                .take(10)
                .collect::<Vec<_>>()
                .join(", "),
        });
    };
    let ref_at = names.iter().position(|n| n == REF_COLUMN);
    Ok((id_at, ref_at))
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
        read_items(input, "keys.csv", |i| {
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
        assert_eq!(e.to_string(), "keys.csv line 3: not valid UTF-8");
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
    fn only_a_header_is_no_keys() {
        assert!(items(b"payer_id\n").unwrap().is_empty());
        assert!(items(b"payer_id").unwrap().is_empty());
    }
}

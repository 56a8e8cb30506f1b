//! Text encodings of key files: a `Read` adapter that turns UTF-8 (with or without a BOM),
//! UTF-16 (with a BOM) or CP949/EUC-KR bytes into UTF-8 as it streams, guessing from a
//! bounded window when the encoding is not given.
//!
//! # Detection
//! A byte-order mark decides first. Without one, ASCII passes through undecided; at the
//! first byte above 0x7F the next [`WINDOW`] bytes decide: UTF-8 if they are valid UTF-8,
//! else CP949 if they decode as CP949. Up to that byte both read the same, so nothing is
//! ever decoded twice or read whole. A later byte that the chosen encoding refuses ends
//! the stream with a [`DecodeError`] naming its line and byte offset.

use std::io::Read;

use encoding_rs::{Decoder, DecoderResult, EUC_KR, Encoding, UTF_8, UTF_16LE};
use serde::{Deserialize, Serialize};

/// Bytes read ahead, and looked at from the first non-ASCII byte, to choose an encoding.
pub const WINDOW: usize = 64 * 1024;

/// The encoding of a key file, as `--csv-encoding` names it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TextEncoding {
    /// A BOM, else UTF-8 if valid, else CP949.
    #[default]
    Auto,
    Utf8,
    /// Little-endian unless a BOM says big-endian.
    Utf16,
    /// Windows code page 949 (a superset of EUC-KR), what Korean Excel saves as CSV.
    Cp949,
}

impl TextEncoding {
    pub fn is_auto(&self) -> bool {
        *self == Self::Auto
    }
}

/// The input is not in the encoding it was read as.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, byte offset {offset}: {what}")]
pub struct DecodeError {
    /// The line (from 1) holding the first byte that does not decode.
    pub line: u64,
    /// That byte's offset in the file, from 0.
    pub offset: u64,
    /// What was expected, and what to do.
    pub what: String,
}

impl DecodeError {
    fn into_io(self) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, self)
    }

    /// The decoding error an I/O error from [`Decoded`] carries, if it is one.
    pub fn of(error: &std::io::Error) -> Option<&Self> {
        error.get_ref().and_then(|e| e.downcast_ref::<Self>())
    }
}

/// What the stream is decoded as at the moment.
enum State {
    /// Only ASCII seen so far (the bytes are the same in every candidate encoding).
    Undecided,
    Decoding(Decoder),
    /// The input is over (or failed): nothing more comes.
    Done,
}

/// UTF-8 text out of `inner`'s bytes in the given (or detected) encoding.
pub struct Decoded<R> {
    inner: R,
    wanted: TextEncoding,
    state: State,
    /// Raw bytes read and not yet decoded: `raw[start..end]`.
    raw: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
    /// Decoded bytes not yet handed out: `out[out_at..]`.
    out: Vec<u8>,
    out_at: usize,
    /// Offset in the file of `raw[start]`.
    offset: u64,
    /// Line breaks decoded so far.
    newlines: u64,
    /// What the stream is being decoded as, once known.
    chosen: Option<&'static Encoding>,
}

impl<R: Read> Decoded<R> {
    /// Reads the first bytes (for a BOM) and returns the decoding reader.
    pub fn new(inner: R, wanted: TextEncoding) -> std::io::Result<Self> {
        let mut this = Self {
            inner,
            wanted,
            state: State::Undecided,
            raw: vec![0; WINDOW],
            start: 0,
            end: 0,
            eof: false,
            out: Vec::with_capacity(4 * WINDOW),
            out_at: 0,
            offset: 0,
            newlines: 0,
            chosen: None,
        };
        this.fill()?;
        let bom = Encoding::for_bom(&this.raw[..this.end]);
        let decided = match (wanted, bom) {
            (TextEncoding::Auto | TextEncoding::Utf8, Some((enc, len))) if enc == UTF_8 => {
                Some((enc, len))
            }
            (TextEncoding::Auto | TextEncoding::Utf16, Some((enc, len))) if enc != UTF_8 => {
                Some((enc, len))
            }
            (TextEncoding::Auto, Some(_)) | (TextEncoding::Auto, None) => None,
            (_, Some((enc, _))) => {
                return Err(DecodeError {
                    line: 1,
                    offset: 0,
                    what: format!(
                        "the file starts with a {} byte-order mark but --csv-encoding {} was \
                         given",
                        enc.name(),
                        label(wanted)
                    ),
                }
                .into_io());
            }
            (TextEncoding::Utf8, None) => Some((UTF_8, 0)),
            (TextEncoding::Utf16, None) => Some((UTF_16LE, 0)),
            (TextEncoding::Cp949, None) => Some((EUC_KR, 0)),
        };
        if let Some((enc, bom_len)) = decided {
            this.start = bom_len;
            this.offset = bom_len as u64;
            this.choose(enc);
        }
        Ok(this)
    }

    /// The encoding the stream is read as, once decided (`None` while only ASCII came).
    pub fn encoding(&self) -> Option<&'static Encoding> {
        self.chosen
    }

    fn choose(&mut self, enc: &'static Encoding) {
        self.chosen = Some(enc);
        self.state = State::Decoding(enc.new_decoder_without_bom_handling());
    }

    /// Moves the pending raw bytes to the front and reads until the buffer is full or the
    /// input ends.
    fn fill(&mut self) -> std::io::Result<()> {
        if self.start > 0 {
            self.raw.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        while !self.eof && self.end < self.raw.len() {
            match self.inner.read(&mut self.raw[self.end..]) {
                Ok(0) => self.eof = true,
                Ok(n) => self.end += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Decodes what the buffer holds into `out` (which is empty).
    fn step(&mut self) -> std::io::Result<()> {
        if self.start == self.end || (!self.eof && self.end - self.start < 8) {
            self.fill()?;
        }
        self.out.clear();
        self.out_at = 0;
        match self.state {
            State::Done => Ok(()),
            State::Undecided => self.pass_ascii(),
            State::Decoding(_) => self.decode(),
        }
    }

    /// Before the encoding is known: passes the ASCII bytes on, and at the first other
    /// byte lets the window from there choose the encoding.
    fn pass_ascii(&mut self) -> std::io::Result<()> {
        let pending = &self.raw[self.start..self.end];
        let ascii = pending.iter().position(|b| !b.is_ascii());
        let take = ascii.unwrap_or(pending.len());
        self.out.extend_from_slice(&pending[..take]);
        self.newlines += count_newlines(&pending[..take]);
        self.start += take;
        self.offset += take as u64;
        if ascii.is_some() {
            // The window from the first non-ASCII byte decides.
            self.fill()?;
            let enc = self.guess()?;
            self.choose(enc);
        } else if self.eof {
            self.state = State::Done;
        }
        Ok(())
    }

    /// Decodes the pending bytes with the chosen encoding; malformed input ends the stream
    /// with an error saying where.
    fn decode(&mut self) -> std::io::Result<()> {
        let State::Decoding(decoder) = &mut self.state else {
            return Ok(());
        };
        let last = self.eof;
        let src = &self.raw[self.start..self.end];
        let room = decoder
            .max_utf8_buffer_length_without_replacement(src.len())
            .unwrap_or(4 * src.len() + 16);
        self.out.resize(room, 0);
        let (result, read, written) =
            decoder.decode_to_utf8_without_replacement(src, &mut self.out, last);
        self.out.truncate(written);
        self.newlines += count_newlines(&self.out);
        match result {
            DecoderResult::Malformed(bad, extra) => {
                self.state = State::Done;
                let at = self.offset + read as u64 - u64::from(extra) - u64::from(bad);
                Err(self.malformed(at))
            }
            DecoderResult::InputEmpty | DecoderResult::OutputFull => {
                self.start += read;
                self.offset += read as u64;
                if last && matches!(result, DecoderResult::InputEmpty) {
                    self.state = State::Done;
                }
                Ok(())
            }
        }
    }

    /// The error for malformed input at byte `at`, on the current line.
    fn malformed(&self, at: u64) -> std::io::Error {
        let name = self.chosen.map_or("text", display_name);
        let what = if self.wanted.is_auto() {
            format!(
                "not valid {name} (the file was read as {name}, chosen from its first \
                 non-ASCII bytes); give --csv-encoding, or save the file as UTF-8"
            )
        } else {
            format!("not valid {name} (--csv-encoding {})", label(self.wanted))
        };
        DecodeError {
            line: self.newlines + 1,
            offset: at,
            what,
        }
        .into_io()
    }

    /// UTF-8 if the window at `raw[start..]` is valid UTF-8 (a sequence cut by the
    /// window's end allowed), else CP949 if it decodes as CP949; else an error.
    fn guess(&self) -> std::io::Result<&'static Encoding> {
        let window = &self.raw[self.start..self.end];
        let utf8 = valid_prefix(UTF_8, window, self.eof);
        if utf8 == window.len() {
            return Ok(UTF_8);
        }
        let cp949 = valid_prefix(EUC_KR, window, self.eof);
        if cp949 == window.len() {
            return Ok(EUC_KR);
        }
        // The first byte neither accepts: where the one that read further stopped.
        let further = cp949.max(utf8);
        let line = self.newlines + 1 + count_newlines(&window[..further]);
        Err(DecodeError {
            line,
            offset: self.offset + further as u64,
            what: "neither UTF-8 nor CP949: give --csv-encoding, or save the file as UTF-8"
                .to_owned(),
        }
        .into_io())
    }
}

/// How many bytes of `bytes` decode in `enc` before the first malformed sequence (all of
/// them if none; a sequence cut by the end counts as valid unless `last`).
fn valid_prefix(enc: &'static Encoding, bytes: &[u8], last: bool) -> usize {
    let mut decoder = enc.new_decoder_without_bom_handling();
    let mut out = vec![0; 4 * 1024];
    let mut at = 0;
    loop {
        let (result, read, _) =
            decoder.decode_to_utf8_without_replacement(&bytes[at..], &mut out, last);
        match result {
            DecoderResult::InputEmpty => return bytes.len(),
            DecoderResult::OutputFull => at += read,
            DecoderResult::Malformed(bad, extra) => {
                return at + read - usize::from(extra) - usize::from(bad);
            }
        }
    }
}

/// The name an encoding goes by in messages.
fn display_name(enc: &'static Encoding) -> &'static str {
    if enc == EUC_KR { "CP949" } else { enc.name() }
}

fn count_newlines(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|b| **b == b'\n').count() as u64
}

fn label(enc: TextEncoding) -> &'static str {
    match enc {
        TextEncoding::Auto => "auto",
        TextEncoding::Utf8 => "utf-8",
        TextEncoding::Utf16 => "utf-16",
        TextEncoding::Cp949 => "cp949",
    }
}

impl<R: Read> Read for Decoded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.out_at == self.out.len() {
            if matches!(self.state, State::Done) {
                return Ok(0);
            }
            self.step()?;
        }
        let n = buf.len().min(self.out.len() - self.out_at);
        buf[..n].copy_from_slice(&self.out[self.out_at..self.out_at + n]);
        self.out_at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bytes: &[u8], wanted: TextEncoding) -> Result<String, DecodeError> {
        let mut text = Vec::new();
        let result = Decoded::new(bytes, wanted).and_then(|mut d| d.read_to_end(&mut text));
        match result {
            Ok(_) => Ok(String::from_utf8(text).expect("decoded text is UTF-8")),
            Err(e) => Err(DecodeError::of(&e).cloned().expect("a decode error")),
        }
    }

    const TEXT: &str = "payer_id,customer_ref\nkey_one_1,홍길동상사\nkey_two_2,(주)한빛\n";

    fn cp949(text: &str) -> Vec<u8> {
        EUC_KR.encode(text).0.into_owned()
    }

    fn utf16le_bom(text: &str) -> Vec<u8> {
        let mut out = vec![0xFF, 0xFE];
        out.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
        out
    }

    #[test]
    fn every_accepted_encoding_reads_as_the_same_text() {
        let cases: [(&str, Vec<u8>); 5] = [
            ("utf-8", TEXT.as_bytes().to_vec()),
            ("utf-8 bom", [b"\xEF\xBB\xBF", TEXT.as_bytes()].concat()),
            ("utf-16le bom", utf16le_bom(TEXT)),
            ("utf-16be bom", {
                let mut out = vec![0xFE, 0xFF];
                out.extend(TEXT.encode_utf16().flat_map(u16::to_be_bytes));
                out
            }),
            ("cp949", cp949(TEXT)),
        ];
        for (name, bytes) in cases {
            assert_eq!(
                decode(&bytes, TextEncoding::Auto).as_deref(),
                Ok(TEXT),
                "{name}"
            );
        }
        assert_eq!(
            decode(&cp949(TEXT), TextEncoding::Cp949).as_deref(),
            Ok(TEXT)
        );
        let no_bom: Vec<u8> = TEXT.encode_utf16().flat_map(u16::to_le_bytes).collect();
        assert_eq!(decode(&no_bom, TextEncoding::Utf16).as_deref(), Ok(TEXT));
    }

    #[test]
    fn ascii_beyond_the_window_does_not_decide_too_early() {
        // Hangul first appears after more than a window of ASCII.
        let mut text = String::from("payer_id,customer_ref\n");
        while text.len() < 3 * WINDOW {
            text.push_str("abcdefgh12345678,CUST-1\n");
        }
        text.push_str("key_last_1,홍길동상사\n");
        assert_eq!(decode(&cp949(&text), TextEncoding::Auto), Ok(text.clone()));
        assert_eq!(decode(text.as_bytes(), TextEncoding::Auto), Ok(text));
    }

    #[test]
    fn a_later_line_that_breaks_the_guess_is_named_by_line_and_offset() {
        // UTF-8 Hangul early decides UTF-8; a CP949 reference beyond the window breaks it.
        let mut text = String::from("payer_id,customer_ref\nkey_one_1,홍길동\n");
        let mut lines = 3;
        while text.len() < 2 * WINDOW {
            text.push_str("abcdefgh12345678,CUST-1\n");
            lines += 1;
        }
        let mut bytes = text.clone().into_bytes();
        let offset = bytes.len() + "key_two_2,".len();
        bytes.extend(b"key_two_2,");
        bytes.extend(cp949("한빛"));
        bytes.push(b'\n');
        let e = decode(&bytes, TextEncoding::Auto).unwrap_err();
        assert_eq!((e.line, e.offset), (lines, offset as u64), "{e}");
        assert!(e.to_string().contains("not valid UTF-8"), "{e}");
    }

    #[test]
    fn neither_utf8_nor_cp949_names_line_and_offset() {
        // Latin-1 `café-`: 0xE9 followed by `-` is no CP949 pair either.
        let e = decode(b"payer_id\nabc\ncaf\xe9-key\n", TextEncoding::Auto).unwrap_err();
        assert_eq!((e.line, e.offset), (3, 16), "{e}");
        assert!(e.to_string().contains("neither UTF-8 nor CP949"), "{e}");
        // Forced: the first byte the named encoding refuses.
        let e = decode(b"payer_id\n\xff\n", TextEncoding::Utf8).unwrap_err();
        assert_eq!((e.line, e.offset), (2, 9), "{e}");
        let e = decode(b"\xEF\xBB\xBFpayer_id\n", TextEncoding::Cp949).unwrap_err();
        assert!(e.to_string().contains("byte-order mark"), "{e}");
    }
}

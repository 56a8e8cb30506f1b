//! Payple's JSON on the wire: request bodies, and replies parsed the way real clients
//! learned to (string-or-number fields, `""` as absent, a BOM tolerated, unknown fields
//! ignored). Nothing here does I/O.

use serde::Serialize;

/// The partner-auth request body.
#[derive(Serialize)]
pub(crate) struct AuthRequest<'a> {
    pub cst_id: &'a str,
    #[serde(rename = "custKey")]
    pub cust_key: &'a str,
    #[serde(rename = "PCD_PAY_WORK")]
    pub pay_work: &'a str,
}

/// The lookup request body: the auth tokens forwarded, and the key asked about.
#[derive(Serialize)]
pub(crate) struct LookupRequest<'a> {
    #[serde(rename = "PCD_CST_ID")]
    pub cst_id: &'a str,
    #[serde(rename = "PCD_CUST_KEY")]
    pub cust_key: &'a str,
    #[serde(rename = "PCD_AUTH_KEY")]
    pub auth_key: &'a str,
    #[serde(rename = "PCD_PAYER_ID")]
    pub payer_id: &'a str,
}

/// A reply body that is not a JSON object: truncated, an HTML error page, invalid UTF-8.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadBody(pub String);

/// A JSON object whose fields are read leniently. The reply's text is kept once; a
/// field's name and value point into it unless JSON escapes made them differ from it.
/// (The earlier `serde_json::Map` spent two allocations per field, about 30 per lookup,
/// most of what a lookup allocated outside reqwest.)
#[derive(Debug, Clone, Default)]
pub struct Fields {
    text: Box<str>,
    entries: Vec<Entry>,
}

/// One field: its name, and its value as text (`None` for `null`, arrays and objects).
#[derive(Debug, Clone)]
struct Entry {
    name: Piece,
    value: Option<Piece>,
}

/// Text inside the reply (`At(start, len)`), or text of its own (unescaped, or a number
/// or boolean written out).
#[derive(Debug, Clone)]
enum Piece {
    At(u32, u32),
    Own(Box<str>),
}

impl Fields {
    /// Parses a reply body: UTF-8 whatever the Content-Type said, an optional BOM, and a
    /// JSON object at the top.
    pub fn parse(body: &[u8]) -> Result<Self, BadBody> {
        let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
        let text =
            std::str::from_utf8(body).map_err(|e| BadBody(format!("reply is not UTF-8 ({e})")))?;
        let text: Box<str> = text.trim().into();
        if text.is_empty() {
            return Err(BadBody("empty reply".to_owned()));
        }
        let top = {
            let mut de = serde_json::Deserializer::from_str(&text);
            serde::de::DeserializeSeed::deserialize(TopSeed { text: &text }, &mut de)
                .and_then(|top| de.end().map(|()| top))
        };
        match top {
            Ok(Top::Object(entries)) => Ok(Self { text, entries }),
            Ok(Top::Other) => Err(BadBody("reply is JSON but not an object".to_owned())),
            Err(e) if e.is_eof() => Err(BadBody(format!("truncated JSON reply ({e})"))),
            Err(e) if e.to_string().starts_with(CONFLICT) => Err(BadBody(e.to_string())),
            Err(e) => Err(BadBody(format!(
                "reply is not JSON ({e}): {}",
                preview(&text)
            ))),
        }
    }

    /// A field as text: strings as they are (trimmed), numbers and booleans written out;
    /// `""`, `null` and whitespace-only values are absent.
    pub fn text(&self, name: &str) -> Option<&str> {
        let entry = self.entries.iter().find(|e| self.piece(&e.name) == name)?;
        let value = self.piece(entry.value.as_ref()?).trim();
        (!value.is_empty()).then_some(value)
    }

    /// [`Fields::text`], owned.
    pub fn get(&self, name: &str) -> Option<String> {
        self.text(name).map(str::to_owned)
    }

    fn piece<'a>(&'a self, piece: &'a Piece) -> &'a str {
        TopSeed { text: &self.text }.text_of(piece)
    }
}

/// How the error about a field given twice with different values starts.
const CONFLICT: &str = "reply gives two different values for";

/// A reply's top level: an object whose fields each appear once (or repeat the same
/// value), or anything else.
enum Top {
    Object(Vec<Entry>),
    Other,
}

/// Reads the top level of `text`, keeping borrowed strings as positions in it.
#[derive(Clone, Copy)]
struct TopSeed<'t> {
    text: &'t str,
}

impl<'t> TopSeed<'t> {
    /// The text of a piece read from `text`.
    fn text_of<'p>(self, piece: &'p Piece) -> &'p str
    where
        't: 'p,
    {
        match piece {
            Piece::At(start, len) => {
                let start = *start as usize;
                &self.text[start..start + *len as usize]
            }
            Piece::Own(own) => own,
        }
    }

    /// Keeps the first of the fields that share a name, or `Err(name)` when a repeat
    /// gives another value. Sorted, not compared pairwise: a 64 KiB reply can hold
    /// thousands of fields, and pairwise that is tens of millions of comparisons for
    /// every key of a night.
    fn drop_repeats(self, entries: &mut Vec<Entry>) -> Result<(), String> {
        let name = |i: usize| self.text_of(&entries[i].name);
        let value = |i: usize| entries[i].value.as_ref().map(|v| self.text_of(v));
        let mut order: Vec<usize> = (0..entries.len()).collect();
        order.sort_by(|&a, &b| name(a).cmp(name(b)).then(a.cmp(&b)));
        let mut repeats = Vec::new();
        for pair in order.windows(2) {
            let (first, next) = (pair[0], pair[1]);
            if name(first) == name(next) {
                if value(first) != value(next) {
                    return Err(name(next).to_owned());
                }
                repeats.push(next);
            }
        }
        if !repeats.is_empty() {
            repeats.sort_unstable();
            let mut index = 0;
            entries.retain(|_| {
                index += 1;
                repeats.binary_search(&(index - 1)).is_err()
            });
        }
        Ok(())
    }

    /// Where a string the deserializer lent out lies in the text; an owned copy if it
    /// is not a part of it.
    fn piece_of(self, s: &str) -> Piece {
        let base = self.text.as_ptr() as usize;
        let at = (s.as_ptr() as usize).wrapping_sub(base);
        match (u32::try_from(at), u32::try_from(s.len())) {
            (Ok(start), Ok(len)) if at + s.len() <= self.text.len() => Piece::At(start, len),
            _ => Piece::Own(s.into()),
        }
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for TopSeed<'_> {
    type Value = Top;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Top, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for TopSeed<'_> {
    type Value = Top;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut access: A) -> Result<Top, A::Error> {
        let mut entries: Vec<Entry> = Vec::with_capacity(16);
        while let Some(name) = access.next_key_seed(PieceSeed(self))? {
            let value = access.next_value_seed(PieceSeed(self))?;
            // An object key is always a string: a `None` name never reaches here.
            if let Some(name) = name {
                entries.push(Entry { name, value });
            }
        }
        self.drop_repeats(&mut entries)
            .map_err(|name| serde::de::Error::custom(format!("{CONFLICT} {name}")))?;
        Ok(Top::Object(entries))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Top, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(Top::Other)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Top, E> {
        Ok(Top::Other)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Top, E> {
        Ok(Top::Other)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Top, E> {
        Ok(Top::Other)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Top, E> {
        Ok(Top::Other)
    }

    fn visit_str<E>(self, _: &str) -> Result<Top, E> {
        Ok(Top::Other)
    }

    fn visit_unit<E>(self) -> Result<Top, E> {
        Ok(Top::Other)
    }
}

/// A field's name or value: text (borrowed where the reply's text holds it as is), or
/// `None` for `null`, arrays and objects.
#[derive(Clone, Copy)]
struct PieceSeed<'t>(TopSeed<'t>);

impl<'de> serde::de::DeserializeSeed<'de> for PieceSeed<'_> {
    type Value = Option<Piece>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for PieceSeed<'_> {
    type Value = Option<Piece>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(Some(self.0.piece_of(s)))
    }

    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Some(Piece::Own(s.into())))
    }

    fn visit_bool<E>(self, b: bool) -> Result<Self::Value, E> {
        Ok(Some(Piece::Own(b.to_string().into())))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Self::Value, E> {
        Ok(Some(Piece::Own(n.to_string().into())))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Self::Value, E> {
        Ok(Some(Piece::Own(n.to_string().into())))
    }

    fn visit_f64<E>(self, n: f64) -> Result<Self::Value, E> {
        let written =
            serde_json::Number::from_f64(n).map_or_else(|| n.to_string(), |n| n.to_string());
        Ok(Some(Piece::Own(written.into())))
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map
            .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
            .is_some()
        {}
        Ok(None)
    }
}

/// The start of a body, for an error message: no more than 80 characters, one line.
fn preview(text: &str) -> String {
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(80)
        .collect();
    if text.chars().count() > 80 {
        format!("{one_line}…")
    } else {
        one_line
    }
}

/// Finds a Payple result code (four capitals and four digits, e.g. `AUTH0004`) in a
/// message that may hold it bare or inside prose.
pub fn find_code(msg: &str) -> Option<String> {
    let bytes = msg.as_bytes();
    (0..bytes.len().saturating_sub(7)).find_map(|i| {
        let window = &bytes[i..i + 8];
        let shape = window[..4].iter().all(u8::is_ascii_uppercase)
            && window[4..].iter().all(u8::is_ascii_digit);
        let starts_word = i == 0 || !bytes[i - 1].is_ascii_alphanumeric();
        let ends_word = bytes.get(i + 8).is_none_or(|b| !b.is_ascii_alphanumeric());
        (shape && starts_word && ends_word).then(|| String::from_utf8_lossy(window).into_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_numbers_and_empty_values() {
        let f =
            Fields::parse(br#"{"a":"0200","b":200,"c":"","d":null,"e":true,"f":" x ","g":[1]}"#)
                .unwrap();
        assert_eq!(f.get("a").as_deref(), Some("0200"));
        assert_eq!(f.get("b").as_deref(), Some("200"));
        assert_eq!(f.get("c"), None);
        assert_eq!(f.get("d"), None);
        assert_eq!(f.get("e").as_deref(), Some("true"));
        assert_eq!(f.get("f").as_deref(), Some("x"));
        assert_eq!(f.get("g"), None);
        assert_eq!(f.get("missing"), None);
    }

    #[test]
    fn escaped_names_and_values_are_read_unescaped() {
        let f = Fields::parse(
            br#"{"PCD_PAY_MSG":"say \"hi\"\n","PCD_\u0050AY_CODE":"0000","n":1.5,"o":{"x":1}}"#,
        )
        .unwrap();
        assert_eq!(f.text("PCD_PAY_MSG"), Some("say \"hi\""));
        assert_eq!(f.text("PCD_PAY_CODE"), Some("0000"));
        assert_eq!(f.text("n"), Some("1.5"));
        assert_eq!(f.text("o"), None);
        // A name given once escaped and once plain is one field.
        let e = Fields::parse(br#"{"a":"1","\u0061":"2"}"#).unwrap_err();
        assert!(e.0.contains("two different values for a"), "{e}");
        assert!(Fields::parse(br#"{"a":"1"} x"#).is_err());
    }

    #[test]
    fn bom_and_korean_text_are_fine() {
        let body = "\u{feff}{\"PCD_PAY_MSG\":\"회원조회 성공\"}".as_bytes();
        let f = Fields::parse(body).unwrap();
        assert_eq!(f.get("PCD_PAY_MSG").as_deref(), Some("회원조회 성공"));
    }

    #[test]
    fn truncated_html_and_non_utf8_bodies_are_bad() {
        let e = Fields::parse(br#"{"PCD_PAY_RST":"succ"#).unwrap_err();
        assert!(e.0.contains("truncated"), "{e}");
        let e = Fields::parse(b"<html><body>502 Bad Gateway</body></html>").unwrap_err();
        assert!(e.0.contains("not JSON"), "{e}");
        assert!(Fields::parse(b"\xff\xfe{}").is_err());
        assert!(Fields::parse(b"").is_err());
        assert!(Fields::parse(b"[1,2]").is_err());
    }

    #[test]
    fn codes_are_found_bare_or_in_prose() {
        assert_eq!(find_code("AUTH0004").as_deref(), Some("AUTH0004"));
        assert_eq!(
            find_code("AUTH0004 : CONNECT SERVER ERROR!!").as_deref(),
            Some("AUTH0004")
        );
        assert_eq!(
            find_code("[AUTH0003] 파트너 없음").as_deref(),
            Some("AUTH0003")
        );
        assert_eq!(find_code("사용자 인증 완료!!"), None);
        assert_eq!(find_code("XAUTH00041"), None);
    }

    #[test]
    fn a_field_given_twice_with_different_values_is_a_bad_reply() {
        let e = Fields::parse(
            br#"{"PCD_PAYER_ID":"aaa","PCD_PAY_RST":"success","PCD_PAYER_ID":"bbb"}"#,
        )
        .unwrap_err();
        assert!(e.0.contains("two different values for PCD_PAYER_ID"), "{e}");
        // The same value twice says nothing new.
        let f = Fields::parse(br#"{"PCD_PAYER_ID":"aaa","PCD_PAYER_ID":"aaa"}"#).unwrap();
        assert_eq!(f.get("PCD_PAYER_ID").as_deref(), Some("aaa"));
        assert!(
            Fields::parse(br#""text""#)
                .unwrap_err()
                .0
                .contains("not an object")
        );
        assert!(
            Fields::parse(b"null")
                .unwrap_err()
                .0
                .contains("not an object")
        );
    }
}

//! Payple's JSON on the wire: request bodies, and replies parsed the way real clients
//! learned to (string-or-number fields, `""` as absent, a BOM tolerated, unknown fields
//! ignored). Nothing here does I/O.

use serde::Serialize;
use serde_json::{Map, Value};

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

/// A JSON object whose fields are read leniently.
#[derive(Debug, Clone, Default)]
pub struct Fields(Map<String, Value>);

impl Fields {
    /// Parses a reply body: UTF-8 whatever the Content-Type said, an optional BOM, and a
    /// JSON object at the top.
    pub fn parse(body: &[u8]) -> Result<Self, BadBody> {
        let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
        let text =
            std::str::from_utf8(body).map_err(|e| BadBody(format!("reply is not UTF-8 ({e})")))?;
        let text = text.trim();
        if text.is_empty() {
            return Err(BadBody("empty reply".to_owned()));
        }
        match serde_json::from_str::<Top>(text) {
            Ok(Top::Object(map)) => Ok(Self(map)),
            Ok(Top::Other) => Err(BadBody("reply is JSON but not an object".to_owned())),
            Err(e) if e.is_eof() => Err(BadBody(format!("truncated JSON reply ({e})"))),
            Err(e) if e.to_string().starts_with(CONFLICT) => Err(BadBody(e.to_string())),
            Err(e) => Err(BadBody(format!(
                "reply is not JSON ({e}): {}",
                preview(text)
            ))),
        }
    }

    /// A field as text: strings as they are, numbers and booleans written out, `""`, `null`
    /// and whitespace-only values as absent.
    pub fn get(&self, name: &str) -> Option<String> {
        let text = match self.0.get(name)? {
            Value::String(s) => s.trim().to_owned(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Null | Value::Array(_) | Value::Object(_) => return None,
        };
        (!text.is_empty()).then_some(text)
    }
}

/// How the error about a field given twice with different values starts.
const CONFLICT: &str = "reply gives two different values for";

/// A reply's top level: an object whose fields each appear once (or repeat the same
/// value), or anything else.
enum Top {
    Object(Map<String, Value>),
    Other,
}

impl<'de> serde::Deserialize<'de> for Top {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TopVisitor)
    }
}

struct TopVisitor;

impl<'de> serde::de::Visitor<'de> for TopVisitor {
    type Value = Top;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut access: A) -> Result<Top, A::Error> {
        let mut map = Map::new();
        while let Some((name, value)) = access.next_entry::<String, Value>()? {
            if map.get(&name).is_some_and(|old| *old != value) {
                return Err(serde::de::Error::custom(format!("{CONFLICT} {name}")));
            }
            map.insert(name, value);
        }
        Ok(Top::Object(map))
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

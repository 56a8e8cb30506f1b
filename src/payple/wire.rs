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
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => Ok(Self(map)),
            Ok(_) => Err(BadBody("reply is JSON but not an object".to_owned())),
            Err(e) if e.is_eof() => Err(BadBody(format!("truncated JSON reply ({e})"))),
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
}

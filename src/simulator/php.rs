//! What the simulated PHP endpoints look like on the wire: their paths, content type and
//! canned error pages, how a request body and fields are read, and the raw replies.

use std::io::{self};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::header::{CONTENT_TYPE, REFERER, RETRY_AFTER};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use url::{Origin, Url};

pub(crate) const AUTH_PATH: &str = "/php/auth.php";
pub(crate) const LOOKUP_PATH: &str = "/php/cPayUser/api/cPayUserAct.php";
pub(super) const LOOKUP_URL: &str = "/php/cPayUser/api/cPayUserAct.php?ACT_=PUSERINFO";
pub(super) const WORK: &str = "PUSERINFO";
/// What PHP answers with, whatever the body is.
pub(super) const PHP_CONTENT_TYPE: &str = "text/html; charset=UTF-8";
pub(super) const BOM: &[u8] = "\u{feff}".as_bytes();
/// Expired token triples are remembered this long after expiry (to tell "expired" from
/// "unknown"), at least.
pub(super) const EXPIRED_MEMORY: Duration = Duration::from_secs(600);

pub(super) const INTERNAL_ERROR_PAGE: &str = "<html>\r\n<head><title>500 Internal Server Error</title></head>\r\n\
<body>\r\n<center><h1>500 Internal Server Error</h1></center>\r\n<hr><center>nginx</center>\r\n\
</body>\r\n</html>\r\n";
pub(super) const GARBAGE_PAGE: &str = "<br />\n<b>Warning</b>:  mysqli_connect(): (HY000/2002): Connection \
timed out in <b>/home/cpay/php/cPayUser/api/cPayUserAct.php</b> on line <b>31</b><br />\n\
<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>페이플</title></head>\n<body>\
<p>일시적인 오류가 발생했습니다. 잠시 후 다시 시도해 주세요.</p></body></html>\n";
pub(super) const TOO_MANY_PAGE: &str = "<html><head><title>429 Too Many Requests</title></head>\
<body><h1>Too Many Requests</h1></body></html>\n";
pub(super) fn too_many(retry_after: &str) -> Response {
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(RETRY_AFTER, retry_after), (CONTENT_TYPE, PHP_CONTENT_TYPE)],
        TOO_MANY_PAGE,
    )
        .into_response()
}
/// Whether the query string says `ACT_=PUSERINFO`.
pub(super) fn asks_for_puserinfo(query: Option<&str>) -> bool {
    let Some(query) = query else {
        return false;
    };
    url::form_urlencoded::parse(query.as_bytes())
        .filter(|(name, _)| name == "ACT_")
        .map(|(_, value)| value == WORK)
        .last()
        .unwrap_or(false)
}

/// The request's Referer reduced to its origin.
pub(super) fn referer_origin(headers: &HeaderMap) -> Option<Origin> {
    let raw = headers.get(REFERER)?.to_str().ok()?;
    let origin = Url::parse(raw.trim()).ok()?.origin();
    origin.is_tuple().then_some(origin)
}

/// The request body as JSON (BOM tolerated); anything else reads as an empty object.
pub(super) fn parse_body(body: &[u8]) -> Value {
    let body = body.strip_prefix(BOM).unwrap_or(body);
    match serde_json::from_slice::<Value>(body) {
        Ok(value @ Value::Object(_)) => value,
        _ => Value::Object(serde_json::Map::new()),
    }
}

/// A request field as text: strings as they are, numbers printed, anything else empty.
pub(super) fn field(request: &Value, name: &str) -> String {
    match request.get(name) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

pub(super) fn json_bytes(value: &Value, bom: bool) -> Vec<u8> {
    let mut bytes = if bom { BOM.to_vec() } else { Vec::new() };
    // Writing a `Value` into a Vec cannot fail: its keys are strings and there is no I/O.
    serde_json::to_writer(&mut bytes, value).expect("a JSON value always encodes");
    bytes
}

pub(super) fn php_response(status: StatusCode, body: Vec<u8>) -> Response {
    (status, [(CONTENT_TYPE, PHP_CONTENT_TYPE)], body).into_response()
}

/// A 200 reply `size` bytes long, made in 64 KiB chunks as the client reads them: a JSON
/// object whose message never ends. No `Content-Length`: the client cannot know ahead.
pub(super) fn huge_reply(size: u64) -> Response {
    const CHUNK: u64 = 64 * 1024;
    let head = Bytes::from_static(b"{\"PCD_PAY_RST\":\"error\",\"PCD_PAY_MSG\":\"");
    let chunks = (0..size.div_ceil(CHUNK)).map(move |i| {
        let len = CHUNK.min(size - i * CHUNK) as usize;
        Ok::<_, io::Error>(Bytes::from(vec![b'x'; len]))
    });
    let body = futures::stream::iter(std::iter::once(Ok(head)).chain(chunks));
    (
        StatusCode::OK,
        [(CONTENT_TYPE, PHP_CONTENT_TYPE)],
        Body::from_stream(body),
    )
        .into_response()
}

pub(super) fn internal_error() -> Response {
    php_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        INTERNAL_ERROR_PAGE.as_bytes().to_vec(),
    )
}

/// A response whose body fails at once: hyper then closes the connection before the
/// buffered head is flushed, so the client sees the connection closed without a response.
pub(super) fn dropped_connection() -> Response {
    let failing = futures::stream::once(async {
        Err::<Bytes, io::Error>(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "simulated dropped connection",
        ))
    });
    (
        StatusCode::OK,
        [(CONTENT_TYPE, PHP_CONTENT_TYPE)],
        Body::from_stream(failing),
    )
        .into_response()
}

pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with_referer(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(REFERER, HeaderValue::from_str(value).expect("header"));
        headers
    }
    #[test]
    fn referer_compares_origins() {
        let origin = |v: &str| referer_origin(&with_referer(v));
        let registered = Url::parse("http://localhost:8080").expect("url").origin();
        assert_eq!(origin("http://localhost:8080/"), Some(registered.clone()));
        assert_eq!(
            origin("http://LOCALHOST:8080/shop/x?y"),
            Some(registered.clone())
        );
        assert_ne!(origin("http://localhost:8081"), Some(registered.clone()));
        assert_ne!(origin("https://localhost:8080"), Some(registered));
        assert_eq!(origin("not a url"), None);
        assert_eq!(referer_origin(&HeaderMap::new()), None);
    }
    #[test]
    fn fields_accept_strings_and_numbers() {
        let v = parse_body("\u{feff}{\"a\": \"x\", \"b\": 12, \"c\": null}".as_bytes());
        assert_eq!(field(&v, "a"), "x");
        assert_eq!(field(&v, "b"), "12");
        assert_eq!(field(&v, "c"), "");
        assert_eq!(field(&parse_body(b"[1]"), "a"), "");
        assert_eq!(field(&parse_body(b"garbage"), "a"), "");
    }
    #[test]
    fn only_puserinfo_is_served() {
        assert!(asks_for_puserinfo(Some("ACT_=PUSERINFO")));
        assert!(asks_for_puserinfo(Some("x=1&ACT_=PUSERINFO")));
        assert!(!asks_for_puserinfo(Some("ACT_=PUSERDEL")));
        assert!(!asks_for_puserinfo(None));
    }
}

//! The contract test against Payple's real test server (`https://democpay.payple.kr`, the
//! documented test partner): partner auth, then a lookup of a made-up key, checking that
//! both answers have the shape the client parses and a code the code book classifies.
//! Runs only with `PAYPLE_SANDBOX=1` (and `PAYPLE_SANDBOX_REFERER`): there is no internet
//! in CI, so otherwise it says why it is skipped and passes.

use std::time::Duration;

use payple_reconcile::domain::PayerId;
use payple_reconcile::payple::cause::cause_of;
use payple_reconcile::payple::classify::{AuthVerdict, Verdict, classify_auth, classify_lookup};
use payple_reconcile::payple::codebook::CodeBook;
use payple_reconcile::payple::wire::Fields;
use payple_reconcile::payple::{TEST_ORIGIN, lookup_url};
use serde_json::json;
use url::Url;

/// The documented test partner (API.md), public by design.
const TEST_PARTNER: (&str, &str) = ("test", "abcd1234567890");
/// A key no one registered: well formed, made up.
const MADE_UP_KEY: &str = "cHJyZWNvbmNpbGVTYW5kYm94TWFkZVVw";

/// The Referer to send, or `None` (with the reason printed) when the test must not run.
fn sandbox_referer() -> Option<String> {
    if std::env::var("PAYPLE_SANDBOX").as_deref() != Ok("1") {
        eprintln!(
            "skipping the Payple sandbox contract test: set PAYPLE_SANDBOX=1 and \
             PAYPLE_SANDBOX_REFERER=https://your.registered.domain on a machine that can reach \
             {TEST_ORIGIN} (see docs/payple.md, \"Before the first night\")"
        );
        return None;
    }
    let referer = std::env::var("PAYPLE_SANDBOX_REFERER")
        .expect("PAYPLE_SANDBOX=1 needs PAYPLE_SANDBOX_REFERER (the Referer Payple expects)");
    Some(referer)
}

async fn post(http: &reqwest::Client, url: Url, referer: &str, body: serde_json::Value) -> Fields {
    let reply = http
        .post(url.clone())
        .header("Content-Type", "application/json")
        .header("Cache-Control", "no-cache")
        .header("Referer", referer)
        .body(body.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = reply.status();
    let bytes = reply.bytes().await.expect("reply body");
    assert!(status.is_success(), "POST {url}: HTTP {status}");
    Fields::parse(&bytes).unwrap_or_else(|e| {
        panic!(
            "POST {url}: the body is not what the client parses ({e}): {} bytes",
            bytes.len()
        )
    })
}

#[tokio::test]
async fn sandbox_auth_and_lookup_have_the_shape_the_client_parses() {
    let Some(referer) = sandbox_referer() else {
        return;
    };
    let http = payple_reconcile::http::client_builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("HTTP client");
    let origin = Url::parse(TEST_ORIGIN).expect("origin");
    let book = CodeBook::default();

    let auth = post(
        &http,
        origin.join("/php/auth.php").expect("auth URL"),
        &referer,
        json!({"cst_id": TEST_PARTNER.0, "custKey": TEST_PARTNER.1, "PCD_PAY_WORK": "PUSERINFO"}),
    )
    .await;
    let verdict = classify_auth(&auth, &book);
    assert_eq!(
        verdict,
        AuthVerdict::Success,
        "partner auth refused: {:?}",
        auth.get("result_msg")
    );
    for name in ["cst_id", "custKey", "AuthKey"] {
        assert!(auth.get(name).is_some(), "auth reply without {name}");
    }
    let url = lookup_url(&auth, &origin).expect("a lookup URL on the test origin");
    eprintln!("sandbox: auth ok, lookups go to {}", url.path());

    let lookup = post(
        &http,
        url,
        &referer,
        json!({
            "PCD_CST_ID": auth.get("cst_id"),
            "PCD_CUST_KEY": auth.get("custKey"),
            "PCD_AUTH_KEY": auth.get("AuthKey"),
            "PCD_PAYER_ID": MADE_UP_KEY,
        }),
    )
    .await;
    let asked = PayerId::parse(MADE_UP_KEY).expect("a valid key");
    let rst = lookup.get("PCD_PAY_RST");
    let code = lookup.get("PCD_PAY_CODE");
    eprintln!(
        "sandbox: made-up key answered PCD_PAY_RST={rst:?} PCD_PAY_CODE={code:?} PCD_PAY_MSG={:?}",
        lookup.get("PCD_PAY_MSG")
    );
    assert!(rst.is_some(), "lookup reply without PCD_PAY_RST");
    let verdict = classify_lookup(&lookup, &asked, &book);
    assert!(
        !matches!(verdict, Verdict::Active { .. }),
        "a made-up key cannot be active"
    );
    let code = code.expect("lookup reply without PCD_PAY_CODE");
    assert!(
        book.class_of(&code).is_some(),
        "Payple answered {code} ({:?}), a code the default code book does not classify; \
         map it in a --codes file (docs/payple.md, \"Result codes\")",
        cause_of(&verdict, &book)
    );
}

//! Partner auth: the issued tokens forwarded, a bad Referer, a foreign `return_url`.

use std::time::Duration;

use payple_reconcile::domain::PayerId;
use payple_reconcile::payple::{ClientConfig, PaypleError};
use payple_reconcile::simulator::{
    KeyBook, SimConfig, TEST_CST_ID, TEST_CUST_KEY, TEST_REFERER, derive_key,
};
use serde_json::{Value, json};

use super::{assert_outcomes, check_all, client, code, config, plain_ids, run, stderr};
use crate::helpers::{self, payer_ids, spawn_sim};

// ---- Forwarded tokens -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_forwards_the_issued_tokens_and_echoed_credentials_fail() {
    let sim = spawn_sim(SimConfig::default()).await;
    let client = client(config(&sim));
    let ids = plain_ids(12, "forwarded");
    let outcomes = check_all(&client, &ids).await;
    assert_outcomes(&KeyBook::derived(), &ids, &outcomes, 1);
    let stats = sim.stats();
    assert_eq!(stats.bad_token_lookups, 0, "{stats:?}");
    assert_eq!(stats.expired_token_lookups, 0, "{stats:?}");
    assert_eq!(stats.auth_calls, 1);

    // A client that authenticates and then sends its own credentials back.
    let http = payple_reconcile::http::client_builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("reqwest client");
    let auth: Value = {
        let response = http
            .post(format!("{}/php/auth.php", sim.url()))
            .header(reqwest::header::REFERER, TEST_REFERER)
            .json(&json!({"cst_id": TEST_CST_ID, "custKey": TEST_CUST_KEY,
                          "PCD_PAY_WORK": "PUSERINFO"}))
            .send()
            .await
            .expect("auth response");
        serde_json::from_slice(&response.bytes().await.expect("body")).expect("JSON")
    };
    assert_eq!(auth["result"], "success", "{auth}");
    assert_ne!(auth["cst_id"], TEST_CST_ID, "returned tokens are opaque");
    assert_ne!(auth["custKey"], TEST_CUST_KEY, "returned tokens are opaque");
    let return_url = auth["return_url"].as_str().expect("return_url");
    let lookup = |cst_id: &Value, cust_key: &Value| {
        let body = json!({
            "PCD_CST_ID": cst_id,
            "PCD_CUST_KEY": cust_key,
            "PCD_AUTH_KEY": auth["AuthKey"],
            "PCD_PAYER_ID": ids[0],
        });
        let request = http
            .post(return_url)
            .header(reqwest::header::REFERER, TEST_REFERER)
            .json(&body);
        async move {
            let response = request.send().await.expect("lookup response");
            let bytes = response.bytes().await.expect("body");
            let bytes = bytes.strip_prefix("\u{feff}".as_bytes()).unwrap_or(&bytes);
            serde_json::from_slice::<Value>(bytes).expect("JSON")
        }
    };
    let own = lookup(&json!(TEST_CST_ID), &json!(TEST_CUST_KEY)).await;
    assert_eq!(own["PCD_PAY_RST"], "error", "{own}");
    assert_eq!(own["PCD_PAY_CODE"], "SPAY0001", "{own}");
    assert_eq!(sim.stats().bad_token_lookups, 1);
    // The same request with the issued tokens works: only the credentials were wrong.
    let issued = lookup(&auth["cst_id"], &auth["custKey"]).await;
    assert_eq!(issued["PCD_PAY_CODE"], derive_key(&ids[0]).code, "{issued}");
    assert_eq!(sim.stats().bad_token_lookups, 1);
    sim.shutdown().await;
}

// ---- Bad Referer ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_referer_stops_with_exit_code_3_and_auth0004() {
    let sim = spawn_sim(SimConfig::default()).await;
    let ids = payer_ids(2, "bad-referer");

    let wrong = ClientConfig {
        referer: "https://not-registered.example".to_owned(),
        ..config(&sim)
    };
    let err = client(wrong).authenticate().await.expect_err("refused");
    assert!(
        matches!(&err, PaypleError::Config { code, .. } if code == "AUTH0004"),
        "{err:?}"
    );
    assert!(err.is_configuration());

    let mut cmd = helpers::command(&sim.url());
    cmd.env("PAYPLE_REFERER", "https://not-registered.example")
        .args(["lookup", "--retry-base-ms", "10"])
        .args(&ids);
    let output = run(cmd).await;
    assert_eq!(code(&output), Some(3), "stderr: {}", stderr(&output));
    assert!(stderr(&output).contains("AUTH0004"), "{}", stderr(&output));
    // No key printed: only the JSON error line (issue 10).
    let lines = helpers::json_lines(&output);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["exit_code"], 3, "no key printed: {lines:?}");
    let stats = sim.stats();
    assert_eq!(stats.lookups, 0, "{stats:?}");
    assert_eq!(stats.auth_calls, 2, "one refused auth each, not retried");
    assert_eq!(stats.auth_failures, 2);
    sim.shutdown().await;
}

// ---- Foreign return_url ---------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_return_url_is_refused() {
    let sim = spawn_sim(SimConfig {
        return_origin: Some("http://127.0.0.2:9".to_owned()),
        ..SimConfig::default()
    })
    .await;
    let client = client(config(&sim));
    let err = client
        .authenticate()
        .await
        .expect_err("foreign URL refused");
    match &err {
        PaypleError::ForeignLookupUrl { expected, found } => {
            assert_eq!(expected, &sim.url());
            assert_eq!(found, "http://127.0.0.2:9");
        }
        other => panic!("expected ForeignLookupUrl, got {other:?}"),
    }
    assert!(err.is_configuration());
    // A check also stops the run rather than sending credentials anywhere.
    let id = PayerId::parse(&payer_ids(1, "foreign")[0]).expect("id");
    assert!(matches!(
        client.check(&id).await,
        Err(PaypleError::ForeignLookupUrl { .. })
    ));
    assert_eq!(client.lookups(), 0);

    let mut cmd = helpers::command(&sim.url());
    cmd.args(["lookup", "--retry-base-ms", "10"])
        .args(payer_ids(2, "foreign"));
    let output = run(cmd).await;
    assert_eq!(code(&output), Some(3), "stderr: {}", stderr(&output));
    assert!(
        stderr(&output).contains("127.0.0.2:9"),
        "{}",
        stderr(&output)
    );
    // Only the JSON error line (issue 10).
    let lines = helpers::json_lines(&output);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["exit_code"], 3, "{lines:?}");
    let stats = sim.stats();
    assert_eq!(stats.lookups, 0, "{stats:?}");
    assert_eq!(stats.auth_calls, 3, "one auth each, never retried");
    sim.shutdown().await;
}

//! The Payple simulator over real HTTP on an ephemeral loopback port: auth, lookups, token
//! expiry, fault injection, the stats endpoint and the request log.

use std::net::SocketAddr;
use std::time::Duration;

use payple_reconcile::domain::stable_hash;
use payple_reconcile::simulator::{
    self, Faults, KeyBook, SimConfig, SimHandle, SimKind, SimStats, TEST_CST_ID, TEST_CUST_KEY,
    TEST_REFERER, derive_key,
};
use serde_json::{Value, json};

const LOOKUP_PATH: &str = "/php/cPayUser/api/cPayUserAct.php?ACT_=PUSERINFO";

async fn spawn(config: SimConfig) -> SimHandle {
    let addr: SocketAddr = "127.0.0.1:0".parse().expect("loopback address");
    simulator::start(config, addr)
        .await
        .expect("simulator starts")
}

fn client() -> reqwest::Client {
    payple_reconcile::http::client_builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client")
}

/// Decodes a PHP-style body: UTF-8 whatever the Content-Type, BOM tolerated.
fn decode(bytes: &[u8]) -> Value {
    let bytes = bytes.strip_prefix("\u{feff}".as_bytes()).unwrap_or(bytes);
    serde_json::from_slice(bytes).expect("JSON body")
}

async fn post(url: &str, referer: Option<&str>, body: &Value) -> reqwest::Response {
    post_with(&client(), url, referer, body).await
}

async fn post_with(
    client: &reqwest::Client,
    url: &str,
    referer: Option<&str>,
    body: &Value,
) -> reqwest::Response {
    let mut request = client.post(url).json(body);
    if let Some(referer) = referer {
        request = request.header(reqwest::header::REFERER, referer);
    }
    request.send().await.expect("response")
}

async fn post_json(url: &str, referer: Option<&str>, body: &Value) -> Value {
    let response = post(url, referer, body).await;
    decode(&response.bytes().await.expect("body"))
}

async fn auth(sim: &SimHandle) -> Value {
    let body =
        json!({"cst_id": TEST_CST_ID, "custKey": TEST_CUST_KEY, "PCD_PAY_WORK": "PUSERINFO"});
    let answer = post_json(
        &format!("{}/php/auth.php", sim.url()),
        Some(TEST_REFERER),
        &body,
    )
    .await;
    assert_eq!(answer["result"], "success", "{answer}");
    answer
}

fn lookup_body(tokens: &Value, payer_id: &str) -> Value {
    json!({
        "PCD_CST_ID": tokens["cst_id"],
        "PCD_CUST_KEY": tokens["custKey"],
        "PCD_AUTH_KEY": tokens["AuthKey"],
        "PCD_PAYER_ID": payer_id,
    })
}

async fn lookup_once(sim: &SimHandle, tokens: &Value, payer_id: &str) -> reqwest::Response {
    let url = format!("{}{LOOKUP_PATH}", sim.url());
    post(&url, Some(TEST_REFERER), &lookup_body(tokens, payer_id)).await
}

fn faulty(faults: Faults) -> SimConfig {
    SimConfig {
        faults,
        seed: 11,
        ..SimConfig::default()
    }
}

#[tokio::test]
async fn auth_returns_fresh_tokens_and_the_lookup_url() {
    let sim = spawn(SimConfig::default()).await;
    let response = post(
        &format!("{}/php/auth.php", sim.url()),
        Some("http://localhost:8080/some/page"),
        &json!({"cst_id": TEST_CST_ID, "custKey": TEST_CUST_KEY, "PCD_PAY_WORK": "PUSERINFO"}),
    )
    .await;
    let content_type = response.headers()[reqwest::header::CONTENT_TYPE].clone();
    assert_eq!(content_type, "text/html; charset=UTF-8");
    let answer = decode(&response.bytes().await.expect("body"));
    assert_eq!(answer["result"], "success");
    assert_eq!(answer["result_msg"], "사용자 인증 완료!!");
    assert_ne!(answer["cst_id"], TEST_CST_ID);
    assert_ne!(answer["custKey"], TEST_CUST_KEY);
    assert!(answer["AuthKey"].as_str().is_some_and(|k| k.len() >= 32));
    assert_eq!(answer["PCD_PAY_HOST"], sim.url());
    assert_eq!(answer["PCD_PAY_URL"], LOOKUP_PATH);
    assert_eq!(answer["return_url"], format!("{}{LOOKUP_PATH}", sim.url()));
    let again = auth(&sim).await;
    assert_ne!(again["AuthKey"], answer["AuthKey"]);
    assert_eq!(sim.stats().auth_calls, 2);
    assert_eq!(sim.stats().auth_failures, 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn auth_errors_carry_their_codes() {
    let sim = spawn(SimConfig::default()).await;
    let url = format!("{}/php/auth.php", sim.url());
    let good =
        json!({"cst_id": TEST_CST_ID, "custKey": TEST_CUST_KEY, "PCD_PAY_WORK": "PUSERINFO"});
    let cases = [
        (Some("http://evil.example"), good.clone(), "AUTH0004"),
        (None, good.clone(), "AUTH0004"),
        (Some("http://localhost:9999"), good.clone(), "AUTH0004"),
        (
            Some(TEST_REFERER),
            json!({"cst_id": "", "custKey": TEST_CUST_KEY, "PCD_PAY_WORK": "PUSERINFO"}),
            "AUTH0001",
        ),
        (
            Some(TEST_REFERER),
            json!({"cst_id": TEST_CST_ID, "custKey": "", "PCD_PAY_WORK": "PUSERINFO"}),
            "AUTH0002",
        ),
        (
            Some(TEST_REFERER),
            json!({"cst_id": "nobody", "custKey": TEST_CUST_KEY, "PCD_PAY_WORK": "PUSERINFO"}),
            "AUTH0003",
        ),
        (
            Some(TEST_REFERER),
            json!({"cst_id": TEST_CST_ID, "custKey": "wrong", "PCD_PAY_WORK": "PUSERINFO"}),
            "AUTH0003",
        ),
        (
            Some(TEST_REFERER),
            json!({"cst_id": TEST_CST_ID, "custKey": TEST_CUST_KEY, "PCD_PAY_WORK": "PUSERDEL"}),
            "PCD_PAY_WORK",
        ),
    ];
    for (referer, body, code) in &cases {
        let answer = post_json(&url, *referer, body).await;
        assert_eq!(answer["result"], "error", "{answer}");
        let msg = answer["result_msg"].as_str().expect("result_msg");
        assert!(msg.contains(code), "{code}: {msg}");
        assert!(answer.get("AuthKey").is_none());
    }
    let wrong_referer = post_json(&url, Some("http://evil.example"), &good).await;
    assert_eq!(
        wrong_referer["result_msg"],
        "AUTH0004 : CONNECT SERVER ERROR!!"
    );
    let stats = sim.stats();
    assert_eq!(stats.auth_calls, cases.len() as u64 + 1);
    assert_eq!(stats.auth_failures, cases.len() as u64 + 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn lookups_with_the_tokens_give_the_derived_answers() {
    let sim = spawn(SimConfig::default()).await;
    let tokens = auth(&sim).await;
    let ids: Vec<String> = (0..60).map(|i| format!("payer-{i:06}")).collect();
    let mut seen = std::collections::HashSet::new();
    let http = client();
    let url = tokens["return_url"].as_str().expect("return_url");
    for id in &ids {
        let want = derive_key(id);
        let response = post_with(&http, url, Some(TEST_REFERER), &lookup_body(&tokens, id)).await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()[reqwest::header::CONTENT_TYPE],
            "text/html; charset=UTF-8"
        );
        let bytes = response.bytes().await.expect("body");
        assert_eq!(bytes.starts_with("\u{feff}".as_bytes()), want.bom, "{id}");
        let answer = decode(&bytes);
        seen.insert(want.kind);
        match want.kind {
            SimKind::Card | SimKind::Transfer => {
                assert_eq!(answer["PCD_PAY_RST"], "success", "{answer}");
                assert_eq!(answer["PCD_PAY_CODE"], "0000");
                assert_eq!(answer["PCD_PAY_MSG"], "회원조회 성공");
                assert_eq!(answer["PCD_PAY_WORK"], "PUSERINFO");
                assert_eq!(answer["PCD_PAYER_ID"], id.as_str());
                assert_eq!(answer["PCD_PAY_TYPE"], want.pay_type.as_str());
                assert_eq!(answer["PCD_PAYER_NAME"], want.payer_name.as_str());
                assert_eq!(answer["PCD_PAYER_HP"], want.payer_phone_mask.as_str());
                assert_eq!(
                    answer["PCD_PAY_BANKACCTYPE"],
                    want.bank_account_type.as_str()
                );
                assert_eq!(answer["PCD_PAY_ISTAX"], want.is_tax.as_str());
                let code_field = if want.kind == SimKind::Card {
                    assert_eq!(answer["PCD_PAY_CARDNUM"], want.card_mask.as_str());
                    assert_eq!(answer["PCD_PAY_BANKNUM"], "");
                    "PCD_PAY_CARD"
                } else {
                    assert_eq!(answer["PCD_PAY_BANKNUM"], want.bank_mask.as_str());
                    assert_eq!(answer["PCD_PAY_CARDNUM"], "");
                    "PCD_PAY_BANK"
                };
                let code = &answer[code_field];
                let code_text = code
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| code.to_string());
                let want_code = if want.kind == SimKind::Card {
                    &want.card_code
                } else {
                    &want.bank_code
                };
                assert_eq!(code.is_number(), want.numeric_codes, "{id}: {code}");
                assert_eq!(
                    code_text.trim_start_matches('0'),
                    want_code.trim_start_matches('0')
                );
            }
            SimKind::Gone => {
                assert_eq!(answer["PCD_PAY_RST"], "error");
                assert_eq!(answer["PCD_PAY_CODE"], want.code.as_str());
            }
            other => panic!("derived {other:?}"),
        }
    }
    assert!(seen.contains(&SimKind::Card) && seen.contains(&SimKind::Gone));
    let stats = sim.stats();
    assert_eq!(stats.lookups, ids.len() as u64);
    assert_eq!(stats.bad_token_lookups, 0);
    assert_eq!(sim.lookup_times().len(), ids.len());
    sim.shutdown().await;
}

#[tokio::test]
async fn key_file_kinds_are_served() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("keys.jsonl");
    std::fs::write(
        &path,
        concat!(
            "{\"payer_id\": \"k-gone\", \"kind\": \"gone\"}\n",
            "{\"payer_id\": \"k-err\", \"kind\": \"error\", \"code\": \"CPAY0004\", \"msg\": \"정기결제 대상이 없습니다.\"}\n",
            "{\"payer_id\": \"k-mis\", \"kind\": \"mismatch\"}\n",
            "{\"payer_id\": \"k-bank\", \"kind\": \"transfer\", \"bank_code\": \"081\", \"bank_name\": \"KEB하나은행\", \"numeric_codes\": true}\n",
        ),
    )
    .expect("write key file");
    let config = SimConfig {
        keys: KeyBook::from_file(&path).expect("key file"),
        ..SimConfig::default()
    };
    let sim = spawn(config).await;
    let tokens = auth(&sim).await;
    let answer = |id: &'static str| {
        let tokens = tokens.clone();
        let sim = &sim;
        async move {
            decode(
                &lookup_once(sim, &tokens, id)
                    .await
                    .bytes()
                    .await
                    .expect("body"),
            )
        }
    };
    let gone = answer("k-gone").await;
    assert_eq!(
        (gone["PCD_PAY_RST"].as_str(), gone["PCD_PAY_CODE"].as_str()),
        (Some("error"), Some("SPAY0005"))
    );
    let err = answer("k-err").await;
    assert_eq!(err["PCD_PAY_CODE"], "CPAY0004");
    assert_eq!(err["PCD_PAY_MSG"], "정기결제 대상이 없습니다.");
    let mis = answer("k-mis").await;
    assert_eq!(mis["PCD_PAY_RST"], "success");
    assert_ne!(mis["PCD_PAYER_ID"], "k-mis");
    let bank = answer("k-bank").await;
    assert_eq!(bank["PCD_PAY_TYPE"], "transfer");
    assert_eq!(bank["PCD_PAY_BANK"], 81);
    assert_eq!(bank["PCD_PAY_BANKNAME"], "KEB하나은행");
    assert_eq!(bank["PCD_PAY_CARD"], "");
    let unlisted = answer("payer-000003").await;
    let want = derive_key("payer-000003");
    assert_eq!(unlisted["PCD_PAY_CODE"], want.code.as_str());
    sim.shutdown().await;
}

#[tokio::test]
async fn lookup_protocol_errors() {
    let sim = spawn(SimConfig::default()).await;
    let tokens = auth(&sim).await;
    let url = format!("{}{LOOKUP_PATH}", sim.url());

    // A client forwarding its own credentials instead of the returned tokens.
    let own = json!({
        "PCD_CST_ID": TEST_CST_ID, "PCD_CUST_KEY": TEST_CUST_KEY,
        "PCD_AUTH_KEY": tokens["AuthKey"], "PCD_PAYER_ID": "payer-000001",
    });
    let answer = post_json(&url, Some(TEST_REFERER), &own).await;
    assert_eq!(answer["PCD_PAY_RST"], "error");
    assert_eq!(answer["PCD_PAY_CODE"], "SPAY0001");

    let wrong_referer = post_json(
        &url,
        Some("http://evil.example/"),
        &lookup_body(&tokens, "payer-1"),
    )
    .await;
    assert_eq!(wrong_referer["PCD_PAY_CODE"], "AUTH0004");

    let empty = post_json(&url, Some(TEST_REFERER), &lookup_body(&tokens, "")).await;
    assert_eq!(empty["PCD_PAY_CODE"], "SPCD0001");

    let delete = post(
        &format!(
            "{}/php/cPayUser/api/cPayUserAct.php?ACT_=PUSERDEL",
            sim.url()
        ),
        Some(TEST_REFERER),
        &lookup_body(&tokens, "payer-1"),
    )
    .await;
    assert_eq!(delete.status(), 404);

    let stats = sim.stats();
    assert_eq!(stats.bad_token_lookups, 1);
    assert_eq!(stats.expired_token_lookups, 0);
    assert_eq!(stats.lookups, 3);
    sim.shutdown().await;
}

#[tokio::test]
async fn expired_tokens_answer_spay0001_and_new_tokens_work() {
    let config = SimConfig {
        token_ttl: Duration::from_secs(1),
        ..SimConfig::default()
    };
    let sim = spawn(config).await;
    let old = auth(&sim).await;
    let ok = decode(
        &lookup_once(&sim, &old, "payer-000001")
            .await
            .bytes()
            .await
            .expect("body"),
    );
    assert_eq!(ok["PCD_PAY_CODE"], derive_key("payer-000001").code.as_str());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let expired = decode(
        &lookup_once(&sim, &old, "payer-000001")
            .await
            .bytes()
            .await
            .expect("body"),
    );
    assert_eq!(expired["PCD_PAY_RST"], "error");
    assert_eq!(expired["PCD_PAY_CODE"], "SPAY0001");
    let fresh = auth(&sim).await;
    let again = decode(
        &lookup_once(&sim, &fresh, "payer-000001")
            .await
            .bytes()
            .await
            .expect("body"),
    );
    assert_eq!(
        again["PCD_PAY_CODE"],
        derive_key("payer-000001").code.as_str()
    );
    let stats = sim.stats();
    assert_eq!(stats.expired_token_lookups, 1);
    assert_eq!(stats.bad_token_lookups, 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let sim = spawn(faulty(Faults {
        rate_limit: Some(5),
        retry_after: Duration::from_secs(2),
        ..Faults::none()
    }))
    .await;
    let tokens = auth(&sim).await;
    // One client for the eight: building one loads the platform's roots, and eight of
    // those under a loaded CPU can outlast the one-second window.
    let client = client();
    let url = format!("{}{LOOKUP_PATH}", sim.url());
    let mut statuses = Vec::new();
    for i in 0..8 {
        let body = lookup_body(&tokens, &format!("payer-{i}"));
        let response = post_with(&client, &url, Some(TEST_REFERER), &body).await;
        if response.status() == 429 {
            assert_eq!(response.headers()[reqwest::header::RETRY_AFTER], "2");
        }
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses[..5], [200; 5], "{statuses:?}");
    assert_eq!(statuses[5..], [429; 3], "{statuses:?}");
    assert_eq!(sim.stats().rate_limited, 3);
    assert_eq!(sim.stats().lookups, 8);
    let times = sim.lookup_times();
    assert_eq!(times.len(), 8);
    assert!(times.windows(2).all(|w| w[0] <= w[1]));
    sim.shutdown().await;
}

#[tokio::test]
async fn fail_first_fails_each_key_n_times() {
    let sim = spawn(faulty(Faults {
        fail_first: 2,
        ..Faults::none()
    }))
    .await;
    let tokens = auth(&sim).await;
    for id in ["payer-000001", "payer-000002"] {
        let statuses = [
            lookup_once(&sim, &tokens, id).await.status().as_u16(),
            lookup_once(&sim, &tokens, id).await.status().as_u16(),
            lookup_once(&sim, &tokens, id).await.status().as_u16(),
        ];
        assert_eq!(statuses, [500, 500, 200], "{id}");
    }
    assert_eq!(sim.stats().injected_500, 4);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_dropped_connection_is_a_transport_error() {
    let sim = spawn(faulty(Faults {
        drop_rate: 1.0,
        ..Faults::none()
    }))
    .await;
    let tokens = auth(&sim).await;
    let url = format!("{}{LOOKUP_PATH}", sim.url());
    let sent = client()
        .post(&url)
        .header(reqwest::header::REFERER, TEST_REFERER)
        .json(&lookup_body(&tokens, "payer-000001"))
        .send()
        .await;
    let error = sent.expect_err("no response on a dropped connection");
    assert!(!error.is_timeout(), "{error:?}");
    assert!(error.status().is_none());
    assert_eq!(sim.stats().dropped, 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn truncated_and_garbage_bodies_are_not_json() {
    for (faults, what) in [
        (
            Faults {
                truncate_rate: 1.0,
                ..Faults::none()
            },
            "truncated",
        ),
        (
            Faults {
                garbage_rate: 1.0,
                ..Faults::none()
            },
            "garbage",
        ),
        (
            Faults {
                error_rate: 1.0,
                ..Faults::none()
            },
            "500",
        ),
    ] {
        let sim = spawn(faulty(faults)).await;
        let tokens = auth(&sim).await;
        let response = lookup_once(&sim, &tokens, "payer-000001").await;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.expect("body");
        let bytes = bytes.strip_prefix("\u{feff}".as_bytes()).unwrap_or(&bytes);
        assert!(serde_json::from_slice::<Value>(bytes).is_err(), "{what}");
        let stats = sim.stats();
        match what {
            "truncated" => assert_eq!((status, stats.truncated), (200, 1)),
            "garbage" => assert_eq!((status, stats.garbage), (200, 1)),
            _ => assert_eq!((status, stats.injected_500), (500, 1)),
        }
        sim.shutdown().await;
    }
}

#[tokio::test]
async fn latency_and_concurrency_are_measured() {
    let sim = spawn(faulty(Faults {
        latency: Duration::from_millis(150),
        ..Faults::none()
    }))
    .await;
    let tokens = auth(&sim).await;
    let started = std::time::Instant::now();
    let lookups = (0..4).map(|i| {
        let tokens = tokens.clone();
        let sim = &sim;
        async move {
            lookup_once(sim, &tokens, &format!("payer-{i}"))
                .await
                .status()
        }
    });
    let statuses = futures::future::join_all(lookups).await;
    assert!(statuses.iter().all(|s| *s == 200));
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(sim.stats().peak_concurrent_lookups, 4);
    sim.shutdown().await;
}

#[tokio::test]
async fn stats_endpoint_matches_the_handle() {
    let sim = spawn(SimConfig::default()).await;
    let tokens = auth(&sim).await;
    let _ = lookup_once(&sim, &tokens, "payer-000001").await;
    let served: SimStats = client()
        .get(format!("{}/_sim/stats", sim.url()))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("stats JSON");
    assert_eq!(served, sim.stats());
    assert_eq!((served.auth_calls, served.lookups), (1, 1));
    sim.shutdown().await;
}

#[tokio::test]
async fn request_log_has_one_line_per_request_and_no_secrets() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log_path = dir.path().join("requests.jsonl");
    let sim = spawn(SimConfig {
        request_log: Some(log_path.clone()),
        ..faulty(Faults {
            fail_first: 1,
            ..Faults::none()
        })
    })
    .await;
    let tokens = auth(&sim).await;
    let id = "NS9qNTgzU2xRNHR2RmFBWWFBTWk5UT09";
    let _ = lookup_once(&sim, &tokens, id).await;
    let _ = lookup_once(&sim, &tokens, id).await;
    sim.shutdown().await;

    let text = std::fs::read_to_string(&log_path).expect("log");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(lines[0]["kind"], "auth");
    assert_eq!(lines[1]["kind"], "lookup");
    assert_eq!(lines[1]["fault"], "fail_first");
    assert_eq!(lines[1]["http_status"], 500);
    assert_eq!(lines[2]["fault"], "none");
    assert_eq!(lines[2]["http_status"], 200);
    assert_eq!(lines[2]["expired_token"], false);
    assert_eq!(
        lines[2]["key"],
        format!("{:016x}", stable_hash(id.as_bytes()))
    );
    assert!(lines[2]["t_ms"].is_u64());
    for secret in [
        id,
        TEST_CUST_KEY,
        tokens["custKey"].as_str().expect("custKey"),
        tokens["AuthKey"].as_str().expect("AuthKey"),
        tokens["cst_id"].as_str().expect("cst_id"),
    ] {
        assert!(!text.contains(secret), "log leaks a secret");
    }
}

#[tokio::test]
async fn return_origin_replaces_the_lookup_host() {
    let sim = spawn(SimConfig {
        return_origin: Some("https://evil.example/ignored/path".to_owned()),
        ..SimConfig::default()
    })
    .await;
    let tokens = auth(&sim).await;
    assert_eq!(tokens["PCD_PAY_HOST"], "https://evil.example");
    assert_eq!(
        tokens["return_url"],
        format!("https://evil.example{LOOKUP_PATH}")
    );
    sim.shutdown().await;
}

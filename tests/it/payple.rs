//! The Payple client against the simulator over real HTTP: classification, tokens, retries, secrets.

use std::num::NonZeroU32;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use payple_reconcile::domain::{
    KeyDetails, KeyStatus, LookupOutcome, PayType, PayerId, mask_payer_id,
};
use payple_reconcile::payple::classify::CodeBook;
use payple_reconcile::payple::{ClientConfig, PaypleClient, PaypleError, Rate};
use payple_reconcile::simulator::{
    Faults, KeyBook, Partner, SimConfig, SimHandle, SimKey, SimKind, TEST_CST_ID, TEST_CUST_KEY,
    TEST_REFERER, derive_key,
};
use secrecy::SecretString;
use serde_json::{Value, json};
use url::Url;

use crate::helpers::{self, json_lines, payer_ids, spawn_sim, token_shaped};

const MAX_ATTEMPTS: u32 = 3;

/// The client for the simulator's test partner: fast retries, no rate limit.
fn config(sim: &SimHandle) -> ClientConfig {
    ClientConfig {
        origin: Url::parse(&sim.url()).expect("simulator URL"),
        cst_id: SecretString::from(TEST_CST_ID),
        cust_key: SecretString::from(TEST_CUST_KEY),
        referer: TEST_REFERER.to_owned(),
        token_ttl: Duration::from_secs(1800),
        refresh_margin: Duration::from_secs(300),
        request_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
        max_attempts: MAX_ATTEMPTS,
        retry_base: Duration::from_millis(10),
        retry_cap: Duration::from_millis(100),
        rate: None,
        codes: CodeBook::default(),
    }
}

fn client(config: ClientConfig) -> Arc<PaypleClient> {
    Arc::new(PaypleClient::new(config).expect("client builds"))
}

fn rate(per_second: u32) -> Option<Rate> {
    Some(Rate {
        per_second: NonZeroU32::new(per_second).expect("non-zero rate"),
        share: NonZeroU32::MIN,
    })
}

/// Checks every id at once (one task each) and returns the outcomes in input order.
async fn check_all(client: &Arc<PaypleClient>, ids: &[String]) -> Vec<LookupOutcome> {
    let tasks: Vec<_> = ids
        .iter()
        .map(|raw| {
            let client = Arc::clone(client);
            let id = PayerId::parse(raw).expect("valid payer id");
            tokio::spawn(async move { client.check(&id).await })
        })
        .collect();
    let mut outcomes = Vec::with_capacity(tasks.len());
    for joined in futures::future::join_all(tasks).await {
        outcomes.push(joined.expect("task").expect("no run-stopping error"));
    }
    outcomes
}

/// Checks the ids with at most `concurrency` in flight, outcomes in input order.
async fn check_bounded(
    client: &Arc<PaypleClient>,
    ids: &[String],
    concurrency: usize,
) -> Vec<LookupOutcome> {
    futures::stream::iter(ids.iter().cloned())
        .map(|raw| {
            let client = Arc::clone(client);
            async move {
                let id = PayerId::parse(&raw).expect("valid payer id");
                client.check(&id).await.expect("no run-stopping error")
            }
        })
        .buffered(concurrency)
        .collect()
        .await
}

/// A field as the client must store it: empty is absent, anything else verbatim (a code
/// sent as a JSON number is still the code the key file gives).
fn text(value: &str) -> Option<String> {
    let value = value.trim();
    (!value.is_empty()).then(|| value.to_owned())
}

/// The outcome the client must reach for a key the simulator answers with `key`.
fn expected(key: &SimKey, attempts: u32) -> LookupOutcome {
    let details = |pay_type: PayType| {
        let card = pay_type == PayType::Card;
        let only = |keep: bool, v: &str| if keep { text(v) } else { None };
        KeyDetails {
            pay_type: Some(pay_type),
            card_code: only(card, &key.card_code),
            card_name: only(card, &key.card_name),
            card_mask: only(card, &key.card_mask),
            bank_code: only(!card, &key.bank_code),
            bank_name: only(!card, &key.bank_name),
            bank_mask: only(!card, &key.bank_mask),
            bank_account_type: text(&key.bank_account_type),
            payer_name: text(&key.payer_name),
            payer_phone_mask: text(&key.payer_phone_mask),
            is_tax: text(&key.is_tax),
        }
    };
    let (status, details) = match key.kind {
        SimKind::Card => (KeyStatus::Active, details(PayType::Card)),
        SimKind::Transfer => (KeyStatus::Active, details(PayType::Transfer)),
        SimKind::Gone => (KeyStatus::Gone, KeyDetails::default()),
        SimKind::Error => (KeyStatus::Failed, KeyDetails::default()),
        SimKind::Mismatch => panic!("a mismatch has no fixed outcome"),
    };
    LookupOutcome {
        status,
        details,
        result_code: text(&key.code),
        result_msg: text(&key.msg),
        attempts,
    }
}

/// Asserts that each id got exactly the outcome its simulator key calls for.
fn assert_outcomes(book: &KeyBook, ids: &[String], outcomes: &[LookupOutcome], attempts: u32) {
    assert_eq!(ids.len(), outcomes.len());
    for (id, outcome) in ids.iter().zip(outcomes) {
        let want = expected(&book.get(id), attempts);
        assert_eq!(outcome, &want, "key {}", mask_payer_id(id));
    }
}

/// Writes `keys.jsonl` and reads it back the way the simulator does.
fn key_file(dir: &Path, lines: &[Value]) -> KeyBook {
    helpers::key_file(dir, "keys.jsonl", lines)
}

/// Derived ids whose simulated answer passes `keep`.
fn derived_ids(seed: &str, n: usize, keep: impl Fn(&SimKey) -> bool) -> Vec<String> {
    let found: Vec<String> = payer_ids(5000, seed)
        .into_iter()
        .filter(|id| keep(&derive_key(id)))
        .take(n)
        .collect();
    assert_eq!(found.len(), n, "not enough derived keys of the wanted kind");
    found
}

/// Derived ids whose codes go on the wire as strings: the outcome of a key sent with
/// numeric codes is checked on its own (`numeric_card_and_bank_codes_keep_their_leading_zeros`).
fn plain_ids(n: usize, seed: &str) -> Vec<String> {
    derived_ids(seed, n, |k| !k.numeric_codes)
}

/// Runs the binary off the runtime's threads (the simulator is served on them).
async fn run(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().expect("binary runs"))
        .await
        .expect("join")
}

fn code(output: &Output) -> Option<i32> {
    output.status.code()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

// 1. Classification -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn card_transfer_and_gone_keys_are_classified_with_every_field() {
    let dir = tempfile::tempdir().expect("temp dir");
    let listed = payer_ids(8, "classify-file");
    let book = key_file(
        dir.path(),
        &[
            json!({"payer_id": listed[0], "kind": "card", "numeric_codes": false, "bom": false,
                   "card_code": "0200", "card_name": "BC카드", "card_mask": "1111-****-****-2222",
                   "payer_name": "홍길동", "payer_phone_mask": "010-****-5678",
                   "bank_account_type": "개인", "is_tax": "Y"}),
            json!({"payer_id": listed[1], "kind": "transfer", "numeric_codes": false, "bom": true,
                   "bank_code": "081", "bank_name": "KEB하나은행", "bank_mask": "123-********-021",
                   "bank_account_type": "법인", "payer_name": "(주)다온테크", "is_tax": "N"}),
            json!({"payer_id": listed[2], "kind": "gone", "numeric_codes": false}),
            json!({"payer_id": listed[3], "kind": "gone", "code": "SPCD0001",
                   "msg": "결제키(PCD_PAYER_ID) 정보가 존재하지 않습니다.", "numeric_codes": false}),
            json!({"payer_id": listed[4], "kind": "gone", "code": "CPAY0002", "msg": "출금 대상 없음",
                   "numeric_codes": false}),
            json!({"payer_id": listed[5], "kind": "error", "code": "ZZZZ9999",
                   "msg": "알 수 없는 오류", "numeric_codes": false}),
            json!({"payer_id": listed[6], "kind": "card", "numeric_codes": false, "bom": true}),
            json!({"payer_id": listed[7], "kind": "transfer", "numeric_codes": false}),
        ],
    );
    // Derived keys with string codes, of every kind the simulator derives.
    let plain = |k: &SimKey| !k.numeric_codes;
    let mut ids = listed.clone();
    ids.extend(derived_ids("classify-card", 6, |k| {
        plain(k) && k.kind == SimKind::Card
    }));
    ids.extend(derived_ids("classify-card-bom", 2, |k| {
        plain(k) && k.kind == SimKind::Card && k.bom
    }));
    ids.extend(derived_ids("classify-transfer", 6, |k| {
        plain(k) && k.kind == SimKind::Transfer
    }));
    ids.extend(derived_ids("classify-spay", 3, |k| k.code == "SPAY0005"));
    ids.extend(derived_ids("classify-spcd", 3, |k| k.code == "SPCD0001"));
    ids.extend(derived_ids("classify-corp", 2, |k| {
        plain(k) && k.bank_account_type == "법인"
    }));

    let sim = spawn_sim(SimConfig {
        keys: book.clone(),
        ..SimConfig::default()
    })
    .await;
    let client = client(config(&sim));
    let outcomes = check_all(&client, &ids).await;
    assert_outcomes(&book, &ids, &outcomes, 1);

    // Spot checks against the literal values, in case `expected` shares a mistake.
    let card = &outcomes[0];
    assert_eq!(card.status, KeyStatus::Active);
    assert_eq!(card.result_code.as_deref(), Some("0000"));
    assert_eq!(card.result_msg.as_deref(), Some("회원조회 성공"));
    assert_eq!(card.details.pay_type, Some(PayType::Card));
    assert_eq!(card.details.card_code.as_deref(), Some("0200"));
    assert_eq!(card.details.card_name.as_deref(), Some("BC카드"));
    assert_eq!(
        card.details.card_mask.as_deref(),
        Some("1111-****-****-2222")
    );
    assert_eq!(card.details.payer_name.as_deref(), Some("홍길동"));
    assert_eq!(
        card.details.payer_phone_mask.as_deref(),
        Some("010-****-5678")
    );
    assert_eq!(card.details.bank_account_type.as_deref(), Some("개인"));
    assert_eq!(card.details.is_tax.as_deref(), Some("Y"));
    assert_eq!(card.details.bank_code, None);
    assert_eq!(card.details.bank_name, None);
    assert_eq!(card.details.bank_mask, None);
    let transfer = &outcomes[1];
    assert_eq!(transfer.details.pay_type, Some(PayType::Transfer));
    assert_eq!(transfer.details.bank_code.as_deref(), Some("081"));
    assert_eq!(transfer.details.bank_name.as_deref(), Some("KEB하나은행"));
    assert_eq!(
        transfer.details.bank_mask.as_deref(),
        Some("123-********-021")
    );
    assert_eq!(transfer.details.bank_account_type.as_deref(), Some("법인"));
    assert_eq!(transfer.details.card_code, None);
    assert_eq!(transfer.details.card_mask, None);
    let gone = &outcomes[2];
    assert_eq!(gone.status, KeyStatus::Gone);
    assert_eq!(gone.details, KeyDetails::default());
    assert_eq!(gone.result_code.as_deref(), Some("SPAY0005"));
    assert_eq!(
        gone.result_msg.as_deref(),
        Some("등록된 결제수단 정보가 없습니다.")
    );
    assert_eq!(outcomes[3].status, KeyStatus::Gone);
    assert_eq!(outcomes[3].result_code.as_deref(), Some("SPCD0001"));
    assert_eq!(outcomes[4].status, KeyStatus::Gone);
    assert_eq!(outcomes[4].result_code.as_deref(), Some("CPAY0002"));
    let unknown = &outcomes[5];
    assert_eq!(
        unknown.status,
        KeyStatus::Failed,
        "unknown codes are never guessed"
    );
    assert_eq!(unknown.result_code.as_deref(), Some("ZZZZ9999"));
    assert_eq!(unknown.result_msg.as_deref(), Some("알 수 없는 오류"));

    let stats = sim.stats();
    assert_eq!(stats.auth_calls, 1, "one auth for the whole batch");
    assert_eq!(stats.lookups, ids.len() as u64);
    assert_eq!(client.lookups(), ids.len() as u64);
    sim.shutdown().await;
}

/// Payple may send `PCD_PAY_CARD` / `PCD_PAY_BANK` as numbers (`200` for `"0200"`,
/// API.md); the code is the same either way, so the stored value must be too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numeric_card_and_bank_codes_keep_their_leading_zeros() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ids = payer_ids(2, "numeric-codes");
    let book = key_file(
        dir.path(),
        &[
            json!({"payer_id": ids[0], "kind": "card", "card_code": "0200",
                   "card_name": "BC카드", "numeric_codes": true}),
            json!({"payer_id": ids[1], "kind": "transfer", "bank_code": "081",
                   "bank_name": "KEB하나은행", "numeric_codes": true}),
        ],
    );
    let sim = spawn_sim(SimConfig {
        keys: book.clone(),
        ..SimConfig::default()
    })
    .await;
    let mut all = ids.clone();
    all.extend(derived_ids("numeric-card", 3, |k| {
        k.numeric_codes && k.kind == SimKind::Card
    }));
    all.extend(derived_ids("numeric-transfer", 2, |k| {
        k.numeric_codes && k.kind == SimKind::Transfer
    }));
    let outcomes = check_all(&client(config(&sim)), &all).await;
    assert_eq!(outcomes[0].status, KeyStatus::Active);
    assert_eq!(outcomes[1].status, KeyStatus::Active);
    assert_eq!(
        outcomes[0].details.card_code.as_deref(),
        Some("0200"),
        "card code sent as the number 200"
    );
    assert_eq!(
        outcomes[1].details.bank_code.as_deref(),
        Some("081"),
        "bank code sent as the number 81"
    );
    assert_outcomes(&book, &all, &outcomes, 1);
}

// 2. Forwarded tokens -----------------------------------------------------------------

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

// 3. Bad Referer ----------------------------------------------------------------------

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
    assert!(output.stdout.is_empty(), "no key printed");
    let stats = sim.stats();
    assert_eq!(stats.lookups, 0, "{stats:?}");
    assert_eq!(stats.auth_calls, 2, "one refused auth each, not retried");
    assert_eq!(stats.auth_failures, 2);
    sim.shutdown().await;
}

// 4. Foreign return_url ---------------------------------------------------------------

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
    assert!(output.stdout.is_empty());
    let stats = sim.stats();
    assert_eq!(stats.lookups, 0, "{stats:?}");
    assert_eq!(stats.auth_calls, 3, "one auth each, never retried");
    sim.shutdown().await;
}

// 5. Token renewal --------------------------------------------------------------------

/// 20 keys at 4 per second with `in_flight` lookups at most: about 5 s under a 2 s token.
async fn renewal_run(in_flight: usize) {
    let sim = spawn_sim(SimConfig {
        token_ttl: Duration::from_secs(2),
        ..SimConfig::default()
    })
    .await;
    let client = client(ClientConfig {
        token_ttl: Duration::from_secs(2),
        rate: rate(4),
        ..config(&sim)
    });
    let ids = plain_ids(20, "renewal");
    let started = Instant::now();
    let outcomes = check_bounded(&client, &ids, in_flight).await;
    let elapsed = started.elapsed();
    let stats = sim.stats();
    assert_eq!(
        stats.expired_token_lookups, 0,
        "lookups sent with a lapsed token: {stats:?}"
    );
    assert_eq!(stats.bad_token_lookups, 0, "{stats:?}");
    assert!(stats.auth_calls >= 2, "token renewed: {stats:?}");
    assert_eq!(stats.auth_calls, client.auth_calls());
    assert_eq!(stats.lookups, 20);
    assert!(elapsed >= Duration::from_millis(4500), "{elapsed:?}");
    assert_outcomes(&KeyBook::derived(), &ids, &outcomes, 1);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_second_token_is_renewed_before_it_lapses() {
    renewal_run(2).await;
}

/// Like the batch (8 lookups in flight): a lookup waiting for the rate limiter must not
/// go out with a token that lapsed while it waited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_taken_before_waiting_for_the_rate_limiter_is_not_sent_stale() {
    renewal_run(8).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_renews_a_two_second_token() {
    let sim = spawn_sim(SimConfig {
        token_ttl: Duration::from_secs(2),
        ..SimConfig::default()
    })
    .await;
    let ids = payer_ids(20, "renewal-bin");
    let mut cmd = helpers::command(&sim.url());
    cmd.args([
        "lookup",
        "--token-ttl",
        "2",
        "--rate",
        "4",
        "--concurrency",
        "2",
    ])
    .args(["--retry-base-ms", "10"])
    .args(&ids);
    let output = run(cmd).await;
    assert_eq!(code(&output), Some(0), "stderr: {}", stderr(&output));
    let lines = json_lines(&output);
    assert_eq!(lines.len(), ids.len());
    for (id, line) in ids.iter().zip(&lines) {
        assert_eq!(line["payer_id"], mask_payer_id(id));
        assert_eq!(line["attempts"], 1, "{line}");
    }
    let stats = sim.stats();
    assert!(stats.auth_calls >= 2, "{stats:?}");
    assert_eq!(stats.expired_token_lookups, 0, "{stats:?}");
    assert_eq!(stats.bad_token_lookups, 0, "{stats:?}");
    sim.shutdown().await;
}

// 6. Single-flight renewal ------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_checks_share_one_auth() {
    let sim = spawn_sim(SimConfig::default()).await;
    let client = client(config(&sim));
    let ids = plain_ids(64, "single-flight");
    let outcomes = check_all(&client, &ids).await;
    assert_outcomes(&KeyBook::derived(), &ids, &outcomes, 1);
    assert_eq!(sim.stats().auth_calls, 1, "{:?}", sim.stats());
    assert_eq!(client.auth_calls(), 1);
    assert_eq!(sim.stats().lookups, 64);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_refused_with_spay0001_is_renewed_once_for_sixty_four_checks() {
    // The simulator's tokens last 1 s; the client believes in 30 minutes, so it learns of
    // each expiry only from SPAY0001. Jitter spreads the refusals out, so that some arrive
    // after the token was already renewed: they must not throw the new token away.
    let sim = spawn_sim(SimConfig {
        token_ttl: Duration::from_secs(1),
        faults: Faults {
            jitter: Duration::from_millis(300),
            ..Faults::none()
        },
        ..SimConfig::default()
    })
    .await;
    let client = client(config(&sim));
    let ids = plain_ids(64 * 3, "spay0001-wave");
    let mut expired_before = 0;
    for (wave, chunk) in ids.chunks(64).enumerate() {
        if wave > 0 {
            tokio::time::sleep(Duration::from_millis(1200)).await;
        }
        let outcomes = check_all(&client, chunk).await;
        for (id, outcome) in chunk.iter().zip(&outcomes) {
            // A key refused with the lapsed token took one more attempt, no more.
            assert!(
                (1..=2).contains(&outcome.attempts),
                "wave {wave}: {outcome:?}"
            );
            let want = expected(&derive_key(id), outcome.attempts);
            assert_eq!(outcome, &want, "wave {wave}, key {}", mask_payer_id(id));
        }
        let stats = sim.stats();
        let wave = wave as u64;
        assert_eq!(stats.auth_calls, wave + 1, "wave {wave}: {stats:?}");
        assert_eq!(client.auth_calls(), wave + 1);
        assert_eq!(stats.bad_token_lookups, 0);
        let retried = outcomes.iter().filter(|o| o.attempts == 2).count() as u64;
        assert_eq!(
            stats.expired_token_lookups - expired_before,
            retried,
            "wave {wave}: every SPAY0001 cost exactly one retry"
        );
        if wave > 0 {
            assert!(retried > 0, "wave {wave} saw the lapsed token");
        }
        expired_before = stats.expired_token_lookups;
    }
    sim.shutdown().await;
}

// 7. First-N failures -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_failures_of_each_key_are_recovered_by_retries() {
    let sim = spawn_sim(SimConfig {
        faults: Faults {
            fail_first: 2,
            ..Faults::none()
        },
        ..SimConfig::default()
    })
    .await;
    let client = client(ClientConfig {
        max_attempts: 4,
        ..config(&sim)
    });
    let ids = plain_ids(20, "fail-first");
    let outcomes = check_all(&client, &ids).await;
    assert_outcomes(&KeyBook::derived(), &ids, &outcomes, 3);
    let stats = sim.stats();
    assert_eq!(stats.injected_500, 40, "{stats:?}");
    assert_eq!(stats.lookups, 60, "{stats:?}");
    assert_eq!(stats.auth_calls, 1, "a 500 is not a token problem");
    sim.shutdown().await;
}

// 8. 429 with Retry-After -------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_429_pauses_every_lookup_for_retry_after() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log_path = dir.path().join("requests.jsonl");
    let sim = spawn_sim(SimConfig {
        faults: Faults {
            rate_limit: Some(5),
            retry_after: Duration::from_secs(1),
            ..Faults::none()
        },
        request_log: Some(log_path.clone()),
        ..SimConfig::default()
    })
    .await;
    // One attempt per key: a 429 is about our pace, not the key, and spends none of it.
    let client = client(ClientConfig {
        max_attempts: 1,
        ..config(&sim)
    });
    let ids = plain_ids(20, "rate-limited");
    let started = Instant::now();
    let outcomes = check_all(&client, &ids).await;
    let elapsed = started.elapsed();
    for (id, outcome) in ids.iter().zip(&outcomes) {
        let want = expected(&derive_key(id), outcome.attempts);
        assert_eq!(outcome, &want, "key {}", mask_payer_id(id));
    }
    let stats = sim.stats();
    assert!(stats.rate_limited > 0, "{stats:?}");
    assert!(elapsed >= Duration::from_secs(1), "{elapsed:?}");
    assert!(outcomes.iter().any(|o| o.attempts > 1), "{outcomes:?}");
    let attempts: u64 = outcomes.iter().map(|o| u64::from(o.attempts)).sum();
    assert_eq!(attempts, stats.lookups, "every attempt is one lookup");
    assert_eq!(stats.lookups, ids.len() as u64 + stats.rate_limited);

    // After the first 429 nothing arrives for about the Retry-After second, except what
    // was already on its way.
    let mut times = sim.lookup_times();
    times.sort();
    let widest = times
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .expect("several lookups");
    assert!(widest >= Duration::from_millis(900), "{times:?}");
    sim.shutdown().await;
    let log = std::fs::read_to_string(&log_path).expect("request log");
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .filter(|l: &Value| l["kind"] == "lookup")
        .collect();
    let at = |l: &Value| l["t_ms"].as_u64().expect("t_ms");
    let refused: Vec<u64> = lines
        .iter()
        .filter(|l| l["http_status"] == 429)
        .map(at)
        .collect();
    assert!(!refused.is_empty());
    for t in &refused {
        let early: Vec<u64> = lines
            .iter()
            .map(at)
            .filter(|u| *u > t + 250 && *u < t + 900)
            .collect();
        assert!(
            early.is_empty(),
            "lookups at {early:?} ms, during the pause after the 429 at {t} ms"
        );
    }
}

// 9. Broken replies -------------------------------------------------------------------

/// Every lookup broken the same way: retried `MAX_ATTEMPTS` times, then failed with `code`.
async fn always_broken(faults: Faults, code: &str) {
    let sim = spawn_sim(SimConfig {
        faults,
        seed: 7,
        ..SimConfig::default()
    })
    .await;
    let client = client(config(&sim));
    let ids = payer_ids(5, code);
    let outcomes = check_all(&client, &ids).await;
    for (id, outcome) in ids.iter().zip(&outcomes) {
        assert_eq!(outcome.status, KeyStatus::Failed, "{outcome:?}");
        assert_eq!(outcome.result_code.as_deref(), Some(code), "{outcome:?}");
        assert_eq!(outcome.attempts, MAX_ATTEMPTS, "{outcome:?}");
        assert_eq!(outcome.details, KeyDetails::default());
        let msg = outcome.result_msg.as_deref().unwrap_or_default();
        assert!(!msg.is_empty(), "the last reason is kept");
        assert!(!msg.contains(id.as_str()), "{msg}");
    }
    let stats = sim.stats();
    assert_eq!(stats.lookups, 5 * u64::from(MAX_ATTEMPTS), "{stats:?}");
    assert_eq!(stats.auth_calls, 1, "{stats:?}");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_bodies_are_retried_then_failed_as_bad_reply() {
    always_broken(
        Faults {
            truncate_rate: 1.0,
            ..Faults::none()
        },
        "BAD_REPLY",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn html_garbage_is_retried_then_failed_as_bad_reply() {
    always_broken(
        Faults {
            garbage_rate: 1.0,
            ..Faults::none()
        },
        "BAD_REPLY",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_are_retried_then_failed_as_transport_errors() {
    always_broken(
        Faults {
            drop_rate: 1.0,
            ..Faults::none()
        },
        "TRANSPORT_ERROR",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_500s_are_retried_then_failed() {
    always_broken(
        Faults {
            error_rate: 1.0,
            ..Faults::none()
        },
        "HTTP_500",
    )
    .await;
}

// 10. Mismatched echo -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mismatched_echoed_payer_id_is_a_failure() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ids = payer_ids(4, "mismatch");
    let lines: Vec<Value> = ids
        .iter()
        .map(|id| json!({"payer_id": id, "kind": "mismatch"}))
        .collect();
    let book = key_file(dir.path(), &lines);
    let sim = spawn_sim(SimConfig {
        keys: book,
        ..SimConfig::default()
    })
    .await;
    let outcomes = check_all(&client(config(&sim)), &ids).await;
    for (id, outcome) in ids.iter().zip(&outcomes) {
        assert_eq!(outcome.status, KeyStatus::Failed, "{outcome:?}");
        assert_eq!(outcome.result_code.as_deref(), Some("PAYER_ID_MISMATCH"));
        assert_eq!(outcome.details, KeyDetails::default(), "nothing kept");
        assert_eq!(outcome.attempts, 1, "a definite answer is not retried");
        let msg = outcome.result_msg.as_deref().expect("a reason");
        assert!(msg.contains(&mask_payer_id(id)), "{msg}");
        assert!(token_shaped(msg, 16).is_empty(), "no full key: {msg}");
    }
    sim.shutdown().await;
}

// 11. Secrets -------------------------------------------------------------------------

const SHOP_CUST_KEY: &str = "ck-Zq81-DISTINCTIVE-custkey-77Xp";
const SHOP_REFERER: &str = "https://shop.example.com";

fn shop_partner() -> Partner {
    Partner {
        cst_id: "shop77".to_owned(),
        cust_key: SHOP_CUST_KEY.to_owned(),
        referer: SHOP_REFERER.to_owned(),
    }
}

/// Asserts that nothing secret shows in a command's output.
fn assert_no_secrets(output: &Output, ids: &[String], what: &str) {
    let all = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!all.contains(SHOP_CUST_KEY), "{what}: custKey shown");
    assert!(!all.contains(TEST_CUST_KEY), "{what}: test custKey shown");
    for id in ids {
        assert!(
            !all.contains(id.as_str()),
            "{what}: full payer id {id} shown"
        );
    }
    // Issued tokens: 32, 40 and 64 letters and digits.
    let shaped = token_shaped(&all, 32);
    assert!(shaped.is_empty(), "{what}: token-shaped strings {shaped:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_credentials_tokens_or_full_keys_in_logs_or_output() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ids = payer_ids(6, "secrets");
    // A card, a transfer, a gone, an unknown error and a mismatch, plus retries (500s)
    // and token expiry (SPAY0001 and renewal) so that every log path runs.
    let book = key_file(
        dir.path(),
        &[
            json!({"payer_id": ids[0], "kind": "card"}),
            json!({"payer_id": ids[1], "kind": "transfer"}),
            json!({"payer_id": ids[2], "kind": "gone"}),
            json!({"payer_id": ids[3], "kind": "error"}),
            json!({"payer_id": ids[4], "kind": "mismatch"}),
            json!({"payer_id": ids[5], "kind": "card"}),
        ],
    );
    let sim = spawn_sim(SimConfig {
        partners: vec![shop_partner(), Partner::test_partner()],
        token_ttl: Duration::from_secs(1),
        keys: book,
        faults: Faults {
            fail_first: 1,
            ..Faults::none()
        },
        ..SimConfig::default()
    })
    .await;
    let lookup = |format: &str| {
        let mut cmd = helpers::command(&sim.url());
        cmd.env("PAYPLE_CST_ID", "shop77")
            .env("PAYPLE_CUST_KEY", SHOP_CUST_KEY)
            .env("PAYPLE_REFERER", SHOP_REFERER)
            .env("RUST_LOG", "trace")
            .args(["--log-format", format, "lookup", "--rate", "3"])
            .args(["--concurrency", "2", "--retry-base-ms", "10"])
            .args(&ids);
        cmd
    };
    let (json_out, text_out) = tokio::join!(run(lookup("json")), run(lookup("text")));
    for (output, what) in [(&json_out, "json logs"), (&text_out, "text logs")] {
        assert_eq!(code(output), Some(2), "{what}: {}", stderr(output));
        assert_eq!(json_lines(output).len(), ids.len(), "{what}");
        assert!(
            output.stderr.len() > 1000,
            "{what}: trace logs were written"
        );
        assert_no_secrets(output, &ids, what);
    }
    // The run did go through the paths it was meant to.
    let stats = sim.stats();
    // fail_first counts per key, whichever process asked first.
    assert_eq!(stats.injected_500, ids.len() as u64, "{stats:?}");
    // Each run outlives its 1 s token at least once; the client learns it from SPAY0001.
    assert!(stats.auth_calls >= 4, "tokens were renewed: {stats:?}");
    assert!(stats.expired_token_lookups >= 2, "{stats:?}");
    let lines = json_lines(&json_out);
    assert_eq!(lines[4]["result_code"], "PAYER_ID_MISMATCH");
    sim.shutdown().await;

    // The built-in simulator (the documented test partner) at trace level too.
    let mut cmd = Command::new(helpers::BIN);
    cmd.env_clear()
        .env("RUST_LOG", "trace")
        .args(["--log-format", "json", "lookup", "--simulator"])
        .args(&ids);
    let output = run(cmd).await;
    assert_eq!(code(&output), Some(0), "{}", stderr(&output));
    assert_no_secrets(&output, &ids, "--simulator");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_never_shows_the_cust_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key_path = dir.path().join("cust-key");
    std::fs::write(&key_path, SHOP_CUST_KEY).expect("write key file");
    for args in [
        &["run", "--help"][..],
        &["lookup", "--help"],
        &["--help"],
        &["run", "-h"],
        &["lookup", "-h"],
        &["simulate", "--help"],
    ] {
        let mut cmd = helpers::command("http://127.0.0.1:9");
        cmd.env("PAYPLE_CUST_KEY", SHOP_CUST_KEY)
            .env("PAYPLE_CST_ID", "shop77")
            .env("PAYPLE_CUST_KEY_FILE", &key_path)
            .args(args);
        let output = run(cmd).await;
        assert_eq!(code(&output), Some(0), "{args:?}: {}", stderr(&output));
        let shown = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!shown.contains(SHOP_CUST_KEY), "{args:?} shows the custKey");
        if args[0] != "simulate" && args[0] != "--help" {
            assert!(shown.contains("PAYPLE_CUST_KEY"), "{args:?}: {shown}");
        }
    }
}

// 12. lookup --simulator --------------------------------------------------------------

fn bare_lookup(ids: &[String]) -> Command {
    let mut cmd = Command::new(helpers::BIN);
    cmd.env_clear()
        .stdin(std::process::Stdio::null())
        .args(["lookup", "--simulator"])
        .args(ids);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_with_the_builtin_simulator_needs_no_configuration() {
    let plain_kind = |kind: SimKind| move |k: &SimKey| k.kind == kind && !k.numeric_codes;
    let mut ids = derived_ids("bare-card", 2, plain_kind(SimKind::Card));
    ids.extend(derived_ids(
        "bare-transfer",
        1,
        plain_kind(SimKind::Transfer),
    ));
    ids.extend(derived_ids("bare-gone", 2, plain_kind(SimKind::Gone)));
    ids.swap(1, 3);
    let output = run(bare_lookup(&ids)).await;
    assert_eq!(code(&output), Some(0), "{}", stderr(&output));
    let lines = json_lines(&output);
    assert_eq!(lines.len(), ids.len(), "one object per key");
    for (id, line) in ids.iter().zip(&lines) {
        let key = derive_key(id);
        let want = expected(&key, 1);
        assert_eq!(line["payer_id"], mask_payer_id(id), "input order, masked");
        assert_ne!(line["payer_id"], id.as_str());
        assert_eq!(line["status"], want.status.as_str(), "{line}");
        assert_eq!(line["result_code"], json!(want.result_code), "{line}");
        assert_eq!(line["result_msg"], json!(want.result_msg), "{line}");
        assert_eq!(line["attempts"], 1);
        let d = &want.details;
        assert_eq!(line["pay_type"], json!(d.pay_type.map(PayType::as_str)));
        for (field, value) in [
            ("card_code", &d.card_code),
            ("card_name", &d.card_name),
            ("card_mask", &d.card_mask),
            ("bank_code", &d.bank_code),
            ("bank_name", &d.bank_name),
            ("bank_mask", &d.bank_mask),
            ("bank_account_type", &d.bank_account_type),
        ] {
            assert_eq!(line[field], json!(value), "{field}: {line}");
        }
    }
    assert!(!String::from_utf8_lossy(&output.stdout).contains(ids[0].as_str()));

    // An empty argument is rejected (exit 2), its line kept in place.
    let with_empty = vec![ids[0].clone(), String::new(), ids[2].clone()];
    let output = run(bare_lookup(&with_empty)).await;
    assert_eq!(code(&output), Some(2), "{}", stderr(&output));
    let lines = json_lines(&output);
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["payer_id"], mask_payer_id(&ids[0]));
    assert_eq!(lines[1]["status"], "rejected", "{}", lines[1]);
    assert_eq!(lines[1]["result_code"], "REJECTED_EMPTY");
    assert_eq!(lines[1]["attempts"], 0);
    assert_eq!(lines[2]["payer_id"], mask_payer_id(&ids[2]));
    assert_eq!(
        lines[2]["status"],
        expected(&derive_key(&ids[2]), 1).status.as_str()
    );
}

//! The Payple client against the simulator over real HTTP: classification, tokens, retries,
//! secrets; and the binary's `lookup` command.

mod auth;
mod classify;
mod lookup;
mod retries;
mod secrets;
mod tokens;

use std::num::NonZeroU32;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use payple_reconcile::domain::{
    KeyDetails, KeyStatus, LookupOutcome, PayType, PayerId, mask_payer_id,
};
use payple_reconcile::payple::codebook::CodeBook;
use payple_reconcile::payple::health::HealthConfig;
use payple_reconcile::payple::{ClientConfig, PaypleClient, Rate};
use payple_reconcile::simulator::{
    KeyBook, SimHandle, SimKey, SimKind, TEST_CST_ID, TEST_CUST_KEY, TEST_REFERER, derive_key,
};
use secrecy::SecretString;
use serde_json::Value;
use url::Url;

use crate::helpers::{self, payer_ids};

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
        // These tests are about one key's retries; the breaker has tests of its own
        // (tests/it/outage.rs).
        health: HealthConfig::without_breaker(),
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

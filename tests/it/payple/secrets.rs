//! Secrets: no credentials, tokens or full keys in logs, output or `--help`.

use std::process::{Command, Output};
use std::time::Duration;

use payple_reconcile::simulator::{Faults, Partner, SimConfig, TEST_CUST_KEY};
use serde_json::json;

use super::{code, key_file, run, stderr};
use crate::helpers::{self, json_lines, payer_ids, spawn_sim, token_shaped};

// ---- Secrets -------------------------------------------------------------------------

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

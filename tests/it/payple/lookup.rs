//! `lookup --simulator` with no configuration at all.

use std::process::Command;

use payple_reconcile::domain::{PayType, mask_payer_id};
use payple_reconcile::simulator::{SimKey, SimKind, derive_key};
use serde_json::json;

use super::{code, derived_ids, expected, run, stderr};
use crate::helpers::{self, json_lines};

// ---- lookup --simulator --------------------------------------------------------------

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

//! What the results database keeps: no personal data with `--omit-pii`, and billing keys
//! byte for byte on MySQL.

use payple_reconcile::simulator::{SimKind, derive_key};
use payple_reconcile::store::RunState;
use serde_json::Value;

use super::run_id_of;
use crate::helpers::{
    self, Scenario, TestDb, all_checks, assert_exit, derived_status, output_of, scalar_i64,
    summary_of,
};

// ---- 5. personal data ---------------------------------------------------------------------

/// `--omit-pii`: no payer name or phone mask in any row, everything else as usual (and the
/// same keys without the flag do store them, so the check means something).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn omit_pii_stores_no_name_or_phone() {
    let ids = helpers::payer_ids(40, "pii");
    let active = |id: &String| matches!(derive_key(id).kind, SimKind::Card | SimKind::Transfer);
    assert!(
        ids.iter()
            .filter(|id| active(id))
            .all(|id| !derive_key(id).payer_name.is_empty()),
        "the simulator must answer names for the check to mean something"
    );
    let ran = Scenario::new()
        .ids(&ids)
        .args(&["--omit-pii", "--rate", "0"])
        .run()
        .await;
    ran.expect_exit(0);
    let omitted = run_id_of(&ran.summary());
    let out = output_of(ran.bare_command(&["--csv", ran.csv_arg(), "--rate", "0"])).await;
    assert_exit(&out, 0);
    let kept = run_id_of(&summary_of(&out));

    let store = &ran.store;
    let run = store.run(omitted).await.expect("read").expect("run");
    let options: Value = serde_json::from_str(&run.options).expect("options JSON");
    assert_eq!(options["omit_pii"], true, "{options}");
    let without = all_checks(store, omitted).await;
    let with = all_checks(store, kept).await;
    assert_eq!((without.len(), with.len()), (40, 40));
    let mut actives = 0;
    for id in &ids {
        let row = &without[id];
        assert_eq!(row.details.payer_name, None, "{id}");
        assert_eq!(row.details.payer_phone_mask, None, "{id}");
        assert_eq!(row.status.as_str(), derived_status(id));
        assert!(
            row.result_code.is_some() && row.result_msg.is_some(),
            "{row:?}"
        );
        // Everything but the two columns is as without the flag.
        let mut other = with[id].clone();
        if active(id) {
            actives += 1;
            assert!(other.details.payer_name.is_some(), "{other:?}");
            assert!(row.details.pay_type.is_some(), "{row:?}");
            assert!(
                row.details.card_name.is_some() || row.details.bank_name.is_some(),
                "{row:?}"
            );
        }
        other.details.payer_name = None;
        other.details.payer_phone_mask = None;
        other.run_id = row.run_id;
        other.checked_at = row.checked_at;
        assert_eq!(*row, other, "{id}");
    }
    assert!(actives > 20, "{actives} active keys");
    ran.close().await;
}

// ---- 7. MySQL -----------------------------------------------------------------------------

fn swap_case(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_lowercase() {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

/// One run end to end on MySQL/MariaDB: a row per key with the derived status, and two keys
/// that differ only in letter case are two keys (Payple keys are case-sensitive base64).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_on_mysql_with_keys_differing_only_in_case() {
    let Some(db) = TestDb::mysql().await else {
        return;
    };
    let mut ids = helpers::payer_ids(20, "mysql-e2e");
    for i in [0, 1] {
        let twin = swap_case(&ids[i]);
        assert_ne!(twin, ids[i]);
        assert_eq!(twin.to_lowercase(), ids[i].to_lowercase());
        ids.push(twin);
    }
    let ran = Scenario::new()
        .ids(&ids)
        .on(db)
        .args(&["--rate", "0"])
        .run()
        .await;
    ran.expect_exit(0);
    let summary = ran.summary();
    assert_eq!(summary["keys"], 22, "{summary}");
    assert_eq!(summary["duplicates"], 0, "{summary}");
    assert_eq!(ran.sim.stats().lookups, 22);

    let store = &ran.store;
    let run = ran.run_record().await;
    assert_eq!(run.state, RunState::Completed);
    assert_eq!((run.keys_total, run.duplicates), (Some(22), 0));
    let checks = all_checks(store, run.id).await;
    assert_eq!(checks.len(), 22, "{:?}", checks.keys().collect::<Vec<_>>());
    for (i, id) in ids.iter().enumerate() {
        let row = checks.get(id).unwrap_or_else(|| panic!("no row for {id}"));
        assert_eq!(&row.payer_id, id, "stored byte for byte");
        assert_eq!(row.status.as_str(), derived_status(id), "{id}");
        assert_eq!(
            row.customer_ref.as_deref(),
            Some(format!("CUST-{i:05}").as_str())
        );
    }
    assert_eq!(scalar_i64(store, "SELECT COUNT(*) FROM run_keys").await, 22);
    assert_eq!(
        scalar_i64(store, "SELECT COUNT(*) FROM billing_key_latest").await,
        22,
        "the latest view keeps both spellings"
    );
    ran.close().await;
}

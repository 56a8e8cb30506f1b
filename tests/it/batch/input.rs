//! Input hygiene: duplicates, rejected ids, malformed files, and the placeholder rows of
//! rejected lines.

use std::collections::{BTreeMap, HashMap};

use payple_reconcile::domain::KeyStatus;
use payple_reconcile::store::{CheckRecord, RunState};

use crate::helpers::{self, Scenario, derived_status, key_hash, logged_lookups};

/// The rows of `duplicates_once_and_bad_ids_rejected_unsent`'s file: ten keys, three
/// duplicates and three bad ids (empty, 129 characters, a control character); returns the
/// text, the over-long id and the one with a control character.
fn dups_and_bad_ids(ids: &[String]) -> (String, String, String) {
    let too_long = "A".repeat(129);
    let control = format!("{}\u{1}x", &ids[0][..10]);
    // A row at index i of `lines` is on line i + 2 of the file (line 1 is the header).
    let mut text = String::from("payer_id,customer_ref\n");
    let mut lines: Vec<String> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| format!("{id},C-{i}"))
        .collect();
    lines.insert(3, format!("{},DUP-A", ids[0])); // line 5
    lines.insert(6, ",EMPTY".to_owned()); // line 8
    lines.insert(8, format!("{too_long},LONG")); // line 10
    lines.insert(9, format!("  {}  ,DUP-B", ids[4])); // line 11: spaces trimmed: a duplicate
    lines.insert(11, format!("{control},CTRL")); // line 13
    lines.push(format!("{},DUP-C", ids[9])); // last line: 17
    for l in &lines {
        text.push_str(l);
        text.push('\n');
    }
    (text, too_long, control)
}

/// The three rejected rows: reason, reference and the file and line in the message.
fn assert_rejected_rows(checks: &BTreeMap<String, CheckRecord>, name: &str) {
    let rejected: [(usize, &str, &str, &str); 3] = [
        (8, "EMPTY", "REJECTED_EMPTY", "empty PCD_PAYER_ID"),
        (
            10,
            "LONG",
            "REJECTED_TOO_LONG",
            "129 characters long (at most 128)",
        ),
        (
            13,
            "CTRL",
            "REJECTED_CONTROL_CHAR",
            "control character at position 10",
        ),
    ];
    for (line, reference, code, reason) in rejected {
        let c = checks
            .get(&format!("#{line} rejected"))
            .unwrap_or_else(|| panic!("no rejected row for line {line}: {:?}", checks.keys()));
        assert_eq!(c.status, KeyStatus::Rejected);
        assert_eq!(c.customer_ref.as_deref(), Some(reference));
        assert_eq!(c.result_code.as_deref(), Some(code));
        let msg = c.result_msg.as_deref().unwrap_or_default();
        assert!(msg.contains(reason), "{msg}");
        assert!(msg.contains(&format!("{name} line {line}")), "{msg}");
        assert_eq!(c.attempts, 0);
        assert_eq!(
            (
                &c.details.pay_type,
                &c.details.card_code,
                &c.details.bank_code,
                &c.details.payer_name
            ),
            (&None, &None, &None, &None)
        );
    }
    // No rejected value in the results table.
    assert!(!checks.keys().any(|k| k.contains('\u{1}') || k.len() > 128));
}

/// Duplicates are looked up once and counted; empty, over-long and control-character ids
/// get `rejected` rows with the reason and are never sent; exit code 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_once_and_bad_ids_rejected_unsent() {
    let ids = helpers::payer_ids(10, "dups");
    let (text, too_long, control) = dups_and_bad_ids(&ids);
    let ran = Scenario::new()
        .csv_file("keys.csv", text)
        .request_log()
        .args(&["--rate", "0"])
        .run()
        .await;
    ran.expect_exit(2);
    let summary = ran.summary();
    assert_eq!(summary["keys"], 10);
    assert_eq!(summary["duplicates"], 3);
    assert_eq!(summary["rejected"], 3);
    let stats = ran.sim.stats();
    assert_eq!(stats.lookups, 10, "each distinct key once");

    let run = ran.run_record().await;
    assert_eq!(
        (run.keys_total, run.duplicates, run.counts.rejected),
        (Some(10), 3, 3)
    );
    assert_eq!(run.exit_code, Some(2));
    let checks = ran.checks().await;
    assert_eq!(checks.len(), 13);
    for (i, id) in ids.iter().enumerate() {
        let c = &checks[id];
        assert_eq!(c.status.as_str(), derived_status(id));
        // The first occurrence's reference is kept.
        assert_eq!(c.customer_ref.as_deref(), Some(format!("C-{i}").as_str()));
        assert_eq!(c.attempts, 1);
    }
    assert_rejected_rows(&checks, ran.csv_arg());
    // None of the rejected values was sent (the request log is complete once the
    // simulator has stopped).
    let left = ran.close().await;
    let sent = logged_lookups(left.log());
    let mut per_key: HashMap<&str, usize> = HashMap::new();
    for key in &sent {
        *per_key.entry(key).or_default() += 1;
    }
    for id in &ids {
        assert_eq!(
            per_key.get(key_hash(id).as_str()),
            Some(&1),
            "{id} looked up once"
        );
    }
    for bad in [
        "",
        too_long.as_str(),
        control.as_str(),
        &format!("  {}  ", ids[4]),
    ] {
        assert!(
            !per_key.contains_key(key_hash(bad).as_str()),
            "{bad:?} was sent"
        );
    }
}

// ---- malformed input ----------------------------------------------------------------------

/// A missing `payer_id` header, invalid UTF-8 on line 3, or an empty file: exit 3, stderr
/// names the file (and line), no lookup is sent and no result row written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_csv_stops_before_any_lookup_with_exit_3() {
    let ids = helpers::payer_ids(3, "malformed");
    let cases: [(&str, Vec<u8>, Option<u64>, &str); 3] = [
        (
            "no-header.csv",
            format!("id,customer_ref\n{},C-1\n", ids[0]).into_bytes(),
            Some(1),
            "payer_id",
        ),
        (
            "latin1.csv",
            [
                format!("payer_id\n{}\n", ids[1]).as_bytes(),
                b"caf\xe9-key-123\n",
                ids[2].as_bytes(),
                b"\n",
            ]
            .concat(),
            Some(3),
            "UTF-8",
        ),
        ("empty.csv", Vec::new(), None, "empty"),
    ];
    for (name, bytes, line, what) in cases {
        let ran = Scenario::new()
            .csv_file(name, bytes)
            .args(&["--rate", "0"])
            .run()
            .await;
        ran.expect_exit(3);
        let stderr = ran.stderr();
        assert!(stderr.contains(ran.csv_arg()), "{name}: {stderr}");
        if let Some(line) = line {
            assert!(stderr.contains(&format!("line {line}")), "{name}: {stderr}");
        }
        assert!(stderr.contains(what), "{name}: {stderr}");
        assert_eq!(ran.sim.stats().lookups, 0, "{name}: a lookup was sent");
        assert_eq!(ran.rows().await, 0, "{name}");
        for run in ran.store.latest_runs(None, 5).await.expect("runs") {
            assert_ne!(run.state, RunState::Completed, "{name}: {run:?}");
            assert_eq!(run.exit_code, Some(3), "{name}: {run:?}");
        }
        ran.close().await;
    }
}

/// A rejected input row is stored under a placeholder (`#LINE`); a real key that happens
/// to read the same must still be looked up and get its own row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_rows_placeholder_never_hides_a_real_key() {
    let ids = helpers::payer_ids(3, "placeholder");
    // Line 2 holds the key "#4"; line 4 is an empty id, whose placeholder starts "#4" too.
    let text = format!(
        "payer_id,customer_ref\n#4,REAL\n{},A\n,EMPTY\n{},B\n",
        ids[0], ids[1]
    );
    let ran = Scenario::new()
        .csv_file("keys.csv", text)
        .args(&["--rate", "0"])
        .run()
        .await;
    ran.expect_exit(2);
    let summary = ran.summary();
    assert_eq!(
        (summary["keys"].as_i64(), summary["rejected"].as_i64()),
        (Some(3), Some(1))
    );
    assert_eq!(
        ran.sim.stats().lookups,
        3,
        "the key \"#4\" was never looked up"
    );
    let checks = ran.checks().await;
    assert_eq!(checks.len(), 4, "{checks:#?}");
    ran.close().await;
}

//! The bad-input corpus: files a merchant's export may really look like, each run through
//! the binary with its documented outcome.

use payple_reconcile::domain::KeyStatus;
use payple_reconcile::store::CheckRecord;

use crate::helpers::{self, Ran, Scenario, derived_status};

/// What a corpus file must give.
enum Expect {
    /// Exit 3 naming the file (and the line), nothing sent, no row.
    Malformed {
        line: Option<u64>,
        says: &'static str,
    },
    /// The run completes with this exit code, these keys looked up once each (their rows
    /// have the true status and this customer_ref), and these rejected rows (code, the
    /// line named in the message, customer_ref).
    Runs {
        exit: i32,
        keys: Vec<(String, Option<String>)>,
        rejected: Vec<(&'static str, u64, Option<String>)>,
        duplicates: i64,
    },
}

/// Runs one corpus file through the binary and checks the documented outcome.
async fn corpus_case(name: &str, bytes: &[u8], expect: Expect) {
    let ran = Scenario::new()
        .csv_file(name, bytes)
        .args(&["--rate", "0"])
        .run()
        .await;
    let stderr = ran.stderr();
    assert!(
        stderr.len() < 64 * 1024,
        "{name}: {} bytes on stderr (is the input echoed?)",
        stderr.len()
    );
    match expect {
        Expect::Malformed { line, says } => assert_malformed(&ran, name, line, says).await,
        Expect::Runs {
            exit,
            keys,
            rejected,
            duplicates,
        } => {
            ran.expect_exit(exit);
            let summary = ran.summary();
            assert_eq!(summary["state"], "completed", "{name}");
            assert_eq!(summary["keys"], keys.len(), "{name}: {summary}");
            assert_eq!(summary["duplicates"], duplicates, "{name}: {summary}");
            assert_eq!(summary["rejected"], rejected.len(), "{name}: {summary}");
            assert_eq!(
                ran.sim.stats().lookups,
                keys.len() as u64,
                "{name}: lookups"
            );
            assert_rows(&ran, name, &keys, &rejected).await;
        }
    }
    ran.close().await;
}

/// Exit 3 naming the file (and `line`) and saying `says`; nothing sent, no row.
async fn assert_malformed(ran: &Ran, name: &str, line: Option<u64>, says: &str) {
    let stderr = ran.stderr();
    ran.expect_exit(3);
    assert!(stderr.contains(ran.csv_arg()), "{name}: {stderr}");
    if let Some(line) = line {
        assert!(stderr.contains(&format!("line {line}")), "{name}: {stderr}");
    }
    assert!(stderr.contains(says), "{name}: {stderr}");
    assert_eq!(ran.sim.stats().lookups, 0, "{name}: a lookup was sent");
    assert_eq!(ran.rows().await, 0, "{name}");
}

/// One row per key with its true status and reference, and the rejected rows in line order
/// with their code, reference, and the file and line in the message.
async fn assert_rows(
    ran: &Ran,
    name: &str,
    keys: &[(String, Option<String>)],
    rejected: &[(&'static str, u64, Option<String>)],
) {
    let checks = ran.checks().await;
    assert_eq!(checks.len(), keys.len() + rejected.len(), "{name}: rows");
    for (id, customer_ref) in keys {
        let row = checks
            .get(id)
            .unwrap_or_else(|| panic!("{name}: no row for {id:?}"));
        assert_eq!(row.status.as_str(), derived_status(id), "{name}: {row:?}");
        assert_eq!(&row.customer_ref, customer_ref, "{name}: {id}");
    }
    let mut got: Vec<&CheckRecord> = checks
        .values()
        .filter(|c| c.status == KeyStatus::Rejected)
        .collect();
    got.sort_by_key(|c| {
        c.payer_id
            .trim_start_matches('#')
            .split(' ')
            .next()
            .and_then(|n| n.parse::<u64>().ok())
    });
    assert_eq!(got.len(), rejected.len(), "{name}: {got:?}");
    for (row, (code, line, customer_ref)) in got.iter().zip(rejected) {
        assert_eq!(row.result_code.as_deref(), Some(*code), "{name}: {row:?}");
        let msg = row.result_msg.clone().unwrap_or_default();
        let place = format!("{} line {line}", ran.csv_arg());
        assert!(msg.contains(&place), "{name}: {msg:?} should name {place}");
        assert!(
            msg.len() < 1000,
            "{name}: a rejected value is echoed: {} bytes",
            msg.len()
        );
        assert_eq!(&row.customer_ref, customer_ref, "{name}: {row:?}");
        assert_eq!(row.payer_id, format!("#{line} rejected"), "{name}");
    }
}

/// BOM, CRLF and quoted fields read right; an empty file stops; only a header is a run.
async fn quoted_empty_and_header_only(ids: &[String]) {
    let id = |i: usize| ids[i].clone();
    let some = |s: &str| Some(s.to_owned());

    // BOM, CRLF, quotes (an id quoted, commas and doubled quotes in references), columns
    // in another order with extra ones, a blank line, and no line end at the end.
    let quoted = format!(
        "\u{feff}name,\"Payer_ID\",customer_ref\r\n\
         \"Kim, M\",\"{}\",\"C-1, main\"\r\n\
         Lee,{},\"say \"\"hi\"\"\"\r\n\
         \r\n\
         Park,  {}  ,\r\n\
         \"Choi\",\"{}\",C-4",
        id(0),
        id(1),
        id(2),
        id(3)
    );
    corpus_case(
        "bom-crlf-quoted.csv",
        quoted.as_bytes(),
        Expect::Runs {
            exit: 0,
            keys: vec![
                (id(0), some("C-1, main")),
                (id(1), some("say \"hi\"")),
                (id(2), None),
                (id(3), some("C-4")),
            ],
            rejected: vec![],
            duplicates: 0,
        },
    )
    .await;

    corpus_case(
        "empty.csv",
        b"",
        Expect::Malformed {
            line: None,
            says: "empty",
        },
    )
    .await;

    corpus_case(
        "header-only.csv",
        b"payer_id,customer_ref\r\n",
        // No valid key: not a clean night (issue 26); --allow-empty-source would run it.
        Expect::Malformed {
            line: None,
            says: "no valid billing key",
        },
    )
    .await;
}

/// A wrong header and invalid UTF-8 (in a row or in the header) stop with exit 3.
async fn wrong_header_and_invalid_utf8(ids: &[String]) {
    let id = |i: usize| ids[i].clone();
    corpus_case(
        "wrong-header.csv",
        format!("billing_key,customer_ref\n{},C-1\n", id(0)).as_bytes(),
        Expect::Malformed {
            line: Some(1),
            says: "payer_id",
        },
    )
    .await;

    let latin1 = [
        format!("payer_id\n{}\n{}\n", id(0), id(1)).as_bytes(),
        b"caf\xe9-key-1234\n",
        id(2).as_bytes(),
        b"\n",
    ]
    .concat();
    corpus_case(
        "invalid-utf8.csv",
        &latin1,
        Expect::Malformed {
            line: Some(4),
            says: "UTF-8",
        },
    )
    .await;

    corpus_case(
        "invalid-utf8-header.csv",
        &[b"payer_id,r\xe9f\n".as_slice(), id(0).as_bytes(), b"\n"].concat(),
        Expect::Malformed {
            line: Some(1),
            says: "UTF-8",
        },
    )
    .await;
}

/// A 10 MB id and NUL bytes are `rejected` rows naming file and line.
async fn huge_and_nul_ids(ids: &[String]) {
    let id = |i: usize| ids[i].clone();
    let some = |s: &str| Some(s.to_owned());

    // A 10 MB id on line 3: rejected (too long), the keys around it are checked.
    let mut huge = format!("payer_id,customer_ref\n{},C-1\n", id(0)).into_bytes();
    huge.extend(std::iter::repeat_n(b'A', 10 * 1024 * 1024));
    huge.extend_from_slice(format!(",C-BIG\n{},C-3\n", id(1)).as_bytes());
    corpus_case(
        "ten-megabyte-line.csv",
        &huge,
        Expect::Runs {
            exit: 2,
            keys: vec![(id(0), some("C-1")), (id(1), some("C-3"))],
            rejected: vec![("REJECTED_TOO_LONG", 3, some("C-BIG"))],
            duplicates: 0,
        },
    )
    .await;

    // NUL bytes inside an id, an id that is only a NUL, and a quoted id spanning two
    // lines: rejected (control characters), never sent.
    let nul = [
        format!("payer_id,customer_ref\n{},C-1\n", id(0)).as_bytes(),
        b"abcd\x00efgh1234,C-NUL\n",
        b"\x00,C-NUL2\n",
        b"\"two\nlines\",C-LF\n",
        format!("{},C-5\n", id(1)).as_bytes(),
    ]
    .concat();
    corpus_case(
        "nul-bytes.csv",
        &nul,
        Expect::Runs {
            exit: 2,
            keys: vec![(id(0), some("C-1")), (id(1), some("C-5"))],
            rejected: vec![
                ("REJECTED_CONTROL_CHAR", 3, some("C-NUL")),
                ("REJECTED_CONTROL_CHAR", 4, some("C-NUL2")),
                ("REJECTED_CONTROL_CHAR", 5, some("C-LF")),
            ],
            duplicates: 0,
        },
    )
    .await;
}

/// The bad-input corpus: BOM, CRLF and quoted fields read right; an empty file, a wrong
/// header and invalid UTF-8 stop with exit 3 naming file and line before any lookup; only
/// a header is a completed run of 0 keys; a 10 MB id and NUL bytes are `rejected` rows
/// naming file and line while the run goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_corpus_gives_the_documented_outcomes() {
    let ids = helpers::payer_ids(8, "corpus");
    quoted_empty_and_header_only(&ids).await;
    wrong_header_and_invalid_utf8(&ids).await;
    huge_and_nul_ids(&ids).await;
}

/// 100,000 rows of five keys, interleaved: each key is looked up once, 99,995 duplicates
/// are counted, and each key keeps the reference of its first row (as for a short file,
/// `batch::input::duplicates_once_and_bad_ids_rejected_unsent`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_duplicates_are_looked_up_once_keeping_the_first_row() {
    let ids = helpers::payer_ids(5, "duplicates");
    let id = |i: usize| ids[i].clone();
    let mut dups = String::from("payer_id,customer_ref\n");
    for i in 0..100_000usize {
        let k = (i * 7 + i / 5) % 5;
        dups.push_str(&format!("{},R-{i}\n", id(k)));
    }
    let first_ref = |k: usize| {
        (0..100_000usize)
            .find(|i| (i * 7 + i / 5) % 5 == k)
            .map(|i| format!("R-{i}"))
    };
    corpus_case(
        "duplicates.csv",
        dups.as_bytes(),
        Expect::Runs {
            exit: 0,
            keys: (0..5).map(|k| (id(k), first_ref(k))).collect(),
            rejected: vec![],
            duplicates: 99_995,
        },
    )
    .await;
}

/// A stray opening quote: on line 4 of a file of 40 keys, `"` opens a quoted field that
/// never closes, so the CSV reader takes the rest of the file as that one field. That is a
/// malformed file: the run must stop with exit 3 naming the file and line 4, with nothing
/// sent. (It goes on with exit 2: the 38 keys after the quote are never looked up, hidden
/// in one `rejected` row, `#3 rejected`, whose message names line 3.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unterminated_quote_stops_the_run_instead_of_swallowing_the_rest() {
    let ids = helpers::payer_ids(40, "stray-quote");
    let mut text = String::from("payer_id,customer_ref\n");
    for (i, id) in ids.iter().enumerate() {
        if i == 2 {
            text.push_str("\"KEY-WITH-STRAY-QUOTE,C-2\n");
        }
        text.push_str(&format!("{id},C-{i}\n"));
    }
    corpus_case(
        "stray-quote.csv",
        text.as_bytes(),
        Expect::Malformed {
            line: Some(4),
            says: "malformed CSV",
        },
    )
    .await;
}

//! Properties of the two parsers that read what the outside world sends: Payple's reply
//! bodies (`wire::Fields::parse`, then `classify::classify_lookup`) and the CSV key
//! reader (`csv_file::read_items`). No input makes them panic; a reply is only ever
//! `active` when it says success + `0000` about the key asked; every key the reader
//! yields is a valid `PayerId`, with lines that only go up.

use std::time::Instant;

use payple_reconcile::domain::PayerId;
use payple_reconcile::payple::classify::{Verdict, classify_lookup};
use payple_reconcile::payple::codebook::{CodeBook, CodeClass};
use payple_reconcile::payple::wire::Fields;
use payple_reconcile::source::Item;
use payple_reconcile::source::csv_file::read_items;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Map, Value, json};

/// Cases per property; `FUZZ_CASES` raises it for a longer session.
fn cases(default: u32) -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Runs one property and prints how many cases ran and how long it took.
fn check<S: Strategy>(
    name: &str,
    cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let started = Instant::now();
    let result = runner.run(&strategy, test);
    let took = started.elapsed();
    eprintln!("fuzz {name}: {cases} cases in {took:.2?}");
    if let Err(e) = result {
        panic!("fuzz {name}: {e}");
    }
}

const ASKED: &str = "NS9qNTgzU2xRNHR2RmFBWWFBTWk5UT09";

fn asked() -> PayerId {
    PayerId::parse(ASKED).expect("valid key")
}

/// What a verdict may be, given the reply: never `Active` without success, `0000`, the
/// asked key echoed and a known pay type; never `Gone` without a gone code.
fn check_verdict(fields: &Fields, verdict: &Verdict) -> Result<(), TestCaseError> {
    let book = CodeBook::default();
    match verdict {
        Verdict::Active { details, code, .. } => {
            prop_assert_eq!(
                fields.get("PCD_PAY_RST").map(|s| s.to_ascii_lowercase()),
                Some("success".to_owned())
            );
            prop_assert_eq!(code.as_str(), "0000");
            let echoed = fields.get("PCD_PAYER_ID");
            prop_assert_eq!(echoed.as_deref(), Some(ASKED));
            prop_assert!(details.pay_type.is_some());
        }
        Verdict::Gone { code, .. } => prop_assert!(book.is(code, CodeClass::Gone), "{code}"),
        Verdict::Reauth { code, .. } => prop_assert!(book.is(code, CodeClass::Reauth)),
        Verdict::Config { code, .. } => prop_assert!(book.is(code, CodeClass::Config)),
        Verdict::Transient { code, .. } => prop_assert!(matches!(
            book.class_of(code),
            Some(CodeClass::Transient | CodeClass::Maintenance)
        )),
        Verdict::Failed { .. } => {}
    }
    Ok(())
}

/// Parses a body and, if it is an object, classifies it and checks the verdict.
fn parse_and_classify(body: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(fields) = Fields::parse(body) {
        for name in ["PCD_PAY_RST", "PCD_PAY_CODE", "PCD_PAY_MSG", "PCD_PAYER_ID"] {
            let _ = fields.get(name);
        }
        let verdict = classify_lookup(&fields, &asked(), &CodeBook::default());
        check_verdict(&fields, &verdict)?;
    }
    Ok(())
}

/// Replies the simulator (and Payple) give: card, transfer with numeric codes and a
/// BOM, gone, expired token, an auth error inside prose.
fn valid_replies() -> Vec<Vec<u8>> {
    let card = json!({
        "PCD_PAY_RST": "success", "PCD_PAY_CODE": "0000", "PCD_PAY_MSG": "회원조회 성공",
        "PCD_PAY_WORK": "PUSERINFO", "PCD_PAY_TYPE": "card", "PCD_PAY_BANKACCTYPE": "개인",
        "PCD_PAYER_ID": ASKED, "PCD_PAYER_NAME": "홍길동", "PCD_PAYER_HP": "010-****-5678",
        "PCD_PAY_CARD": "0200", "PCD_PAY_CARDNAME": "BC카드",
        "PCD_PAY_CARDNUM": "1111-****-****-2222", "PCD_PAY_BANK": "", "PCD_PAY_ISTAX": "Y",
    });
    let transfer = json!({
        "PCD_PAY_RST": "success", "PCD_PAY_CODE": 0, "PCD_PAY_TYPE": "transfer",
        "PCD_PAYER_ID": ASKED, "PCD_PAY_BANK": 81, "PCD_PAY_BANKNAME": "KEB하나은행",
        "PCD_PAY_BANKNUM": "123-********-021", "PCD_PAYER_META": {"grade": 1, "tags": []},
    });
    let gone = json!({
        "PCD_PAY_RST": "error", "PCD_PAY_CODE": "SPAY0005",
        "PCD_PAY_MSG": "등록된 결제키가 없습니다.", "PCD_PAYER_ID": ASKED,
    });
    let expired = json!({
        "PCD_PAY_RST": "error", "PCD_PAY_CODE": "SPAY0001",
        "PCD_PAY_MSG": "가맹점 인증 시간이 만료되었습니다.",
    });
    let prose = json!({"PCD_PAY_RST": "error", "PCD_PAY_MSG": "[AUTH0004] CONNECT SERVER ERROR"});
    let mut with_bom = b"\xEF\xBB\xBF".to_vec();
    with_bom.extend(serde_json::to_vec(&transfer).unwrap());
    vec![
        serde_json::to_vec(&card).unwrap(),
        serde_json::to_vec_pretty(&card).unwrap(),
        with_bom,
        serde_json::to_vec(&gone).unwrap(),
        serde_json::to_vec(&expired).unwrap(),
        serde_json::to_vec(&prose).unwrap(),
    ]
}

/// One edit of a byte string.
#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Truncate(usize),
    Duplicate(usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    let interesting = prop::sample::select(vec![
        b"\"".to_vec(),
        b"\\".to_vec(),
        b"\\u".to_vec(),
        b"\\ud800".to_vec(),
        b"{".to_vec(),
        b"}".to_vec(),
        b"[".to_vec(),
        b",".to_vec(),
        b":".to_vec(),
        b"\x00".to_vec(),
        b"\xff".to_vec(),
        b"\xEF\xBB\xBF".to_vec(),
        b"1e999999".to_vec(),
        b"-0".to_vec(),
        b"null".to_vec(),
        b"\"PCD_PAYER_ID\":\"x\",".to_vec(),
        b"\"PCD_PAY_CODE\":\"0000\",".to_vec(),
        "한".as_bytes().to_vec(),
    ]);
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Edit::Flip(at, b)),
        (
            any::<usize>(),
            prop_oneof![interesting, prop::collection::vec(any::<u8>(), 1..8)]
        )
            .prop_map(|(at, bytes)| Edit::Insert(at, bytes)),
        (any::<usize>(), 1..16usize).prop_map(|(at, n)| Edit::Delete(at, n)),
        any::<usize>().prop_map(Edit::Truncate),
        (any::<usize>(), 1..64usize).prop_map(|(at, n)| Edit::Duplicate(at, n)),
    ]
}

fn apply(body: &mut Vec<u8>, edit: &Edit) {
    let at = |i: usize, len: usize| if len == 0 { 0 } else { i % (len + 1) };
    match edit {
        Edit::Flip(i, b) if !body.is_empty() => {
            let i = i % body.len();
            body[i] = *b;
        }
        Edit::Flip(..) => {}
        Edit::Insert(i, bytes) => {
            let i = at(*i, body.len());
            body.splice(i..i, bytes.iter().copied());
        }
        Edit::Delete(i, n) => {
            let i = at(*i, body.len());
            let end = (i + n).min(body.len());
            body.drain(i..end);
        }
        Edit::Truncate(i) => {
            let i = at(*i, body.len());
            body.truncate(i);
        }
        Edit::Duplicate(i, n) => {
            let i = at(*i, body.len());
            let end = (i + n).min(body.len());
            let copy = body[i..end].to_vec();
            body.splice(end..end, copy);
        }
    }
}

/// A JSON value of the kinds replies hold, and a few they should not.
fn any_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::from)),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
            prop::collection::btree_map("[A-Z_]{1,6}", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A value for a field: something that field plausibly holds, or anything.
fn field_value(plausible: &'static [&'static str]) -> impl Strategy<Value = Option<Value>> {
    let texts: Vec<Value> = plausible.iter().map(|s| Value::from(*s)).collect();
    prop_oneof![
        3 => prop::sample::select(texts).prop_map(Some),
        1 => any_value().prop_map(Some),
        1 => Just(None),
    ]
}

/// A reply object built field by field from plausible and hostile values.
fn reply_object() -> impl Strategy<Value = Value> {
    (
        field_value(&["success", "SUCCESS", " success ", "error", "", "fail"]),
        field_value(&[
            "0000", " 0000", "0", "SPAY0005", "SPCD0001", "SPAY0001", "ARSA0001", "AUTH0004",
            "AUTH0005", "ZZZZ9999", "", "00000",
        ]),
        field_value(&[
            "회원조회 성공",
            "[SPAY0005] gone",
            "AUTH0003 : 파트너 정보가 없습니다.",
            "XSPAY00051",
            "",
        ]),
        field_value(&[
            ASKED,
            " NS9qNTgzU2xRNHR2RmFBWWFBTWk5UT09 ",
            "someone-else",
            "",
        ]),
        field_value(&["card", "transfer", "CARD", "Transfer", "phone", ""]),
        field_value(&["0200", "200", "", "abc", "-1", "081"]),
        prop::collection::btree_map("PCD_[A-Z_]{1,10}", any_value(), 0..3),
    )
        .prop_map(|(rst, code, msg, payer, pay_type, card, extra)| {
            let mut map: Map<String, Value> = extra.into_iter().collect();
            let named = [
                ("PCD_PAY_RST", rst),
                ("PCD_PAY_CODE", code),
                ("PCD_PAY_MSG", msg),
                ("PCD_PAYER_ID", payer),
                ("PCD_PAY_TYPE", pay_type),
                ("PCD_PAY_CARD", card.clone()),
                ("PCD_PAY_BANK", card),
            ];
            for (name, value) in named {
                if let Some(value) = value {
                    map.insert(name.to_owned(), value);
                }
            }
            Value::Object(map)
        })
}

#[test]
fn reply_parser_never_panics_on_arbitrary_bytes() {
    check(
        "reply parser, arbitrary bytes",
        cases(5000),
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..256),
            // Mostly JSON punctuation and field names: gets past the first byte.
            prop::collection::vec(
                prop::sample::select(
                    b"{}[]\":,0123456789.eE+-\\u tnrfalsPCD_AY \xEF\xBB\xBF\xff".to_vec()
                ),
                0..256
            ),
        ],
        |body| parse_and_classify(&body),
    );
}

#[test]
fn reply_parser_never_panics_on_mutated_valid_replies() {
    let replies = valid_replies();
    check(
        "reply parser, mutated valid replies",
        cases(5000),
        (0..replies.len(), prop::collection::vec(edit(), 1..6)),
        |(which, edits)| {
            let mut body = replies[which].clone();
            for e in &edits {
                apply(&mut body, e);
            }
            parse_and_classify(&body)
        },
    );
}

#[test]
fn classifier_marks_active_only_success_about_the_asked_key() {
    check(
        "classifier, structured replies",
        cases(5000),
        (reply_object(), any::<bool>()),
        |(reply, bom)| {
            let mut body = if bom {
                b"\xEF\xBB\xBF".to_vec()
            } else {
                Vec::new()
            };
            body.extend(serde_json::to_vec(&reply).expect("encodes"));
            let fields = Fields::parse(&body)
                .map_err(|e| TestCaseError::fail(format!("an object did not parse: {e}")))?;
            let verdict = classify_lookup(&fields, &asked(), &CodeBook::default());
            check_verdict(&fields, &verdict)
        },
    );
}

/// Reads `input` to the end; every key must be a valid `PayerId` (parsing it again
/// gives itself) and lines only go up.
fn read_and_check(input: &[u8]) -> Result<usize, TestCaseError> {
    let mut items = Vec::new();
    let _ = read_items(input, "fuzz.csv", &Default::default(), |item| {
        items.push(item);
        true
    });
    let mut last_seq = 0;
    for item in &items {
        let seq = match item {
            Item::Key { seq, id, .. } => {
                let again = PayerId::parse(id.expose());
                prop_assert_eq!(again.as_ref().map(PayerId::expose), Ok(id.expose()));
                *seq
            }
            Item::Rejected { seq, location, .. } => {
                prop_assert!(location.starts_with("fuzz.csv line "), "{location}");
                *seq
            }
        };
        {
            prop_assert!(
                seq > last_seq,
                "line {seq} after line {last_seq} in {:?}: {items:?}",
                String::from_utf8_lossy(input)
            );
        }
        last_seq = seq;
    }
    Ok(items.len())
}

#[test]
fn csv_reader_never_panics_on_arbitrary_bytes() {
    check(
        "csv reader, arbitrary bytes",
        cases(5000),
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..512),
            // A valid header, then arbitrary bytes.
            prop::collection::vec(any::<u8>(), 0..512).prop_map(|tail| {
                let mut v = b"payer_id,customer_ref\n".to_vec();
                v.extend(tail);
                v
            }),
        ],
        |input| read_and_check(&input).map(drop),
    );
}

/// CSV-shaped text: a header with the key column somewhere, then rows of fields drawn
/// from what breaks readers (quotes, separators, CR, LF, NUL, BOM, spaces, tabs,
/// non-ASCII, long runs).
fn csv_text() -> impl Strategy<Value = Vec<u8>> {
    let header = prop::sample::select(vec![
        "payer_id",
        "payer_id,customer_ref",
        "\u{feff}payer_id,customer_ref",
        "name,\"Payer_ID \",customer_ref,extra",
        "customer_ref,payer_id",
        "\"payer_id\"",
        "payer_id,payer_id",
        "id,ref",
        "",
    ]);
    let piece = prop::sample::select(vec![
        "a",
        "Z9",
        "\"",
        "\"\"",
        ",",
        "\r",
        "\n",
        "\r\n",
        "\0",
        " ",
        "\t",
        "\u{feff}",
        "한글",
        "\u{85}",
        "\u{2028}",
        "=1+1",
        "NS9qNTgzU2xRNHR2RmFBWWFBTWk5UT09",
    ]);
    let field = prop_oneof![
        8 => prop::collection::vec(piece, 0..6).prop_map(|p| p.concat()),
        1 => (1..300usize).prop_map(|n| "k".repeat(n)),
    ];
    let row = prop::collection::vec(field, 0..4);
    let line_end = prop::sample::select(vec!["\n", "\r\n", "\r"]);
    (
        header,
        prop::collection::vec((row, line_end.clone()), 0..12),
        line_end,
    )
        .prop_map(|(header, rows, end)| {
            let mut text = format!("{header}{end}");
            for (fields, end) in rows {
                text.push_str(&fields.join(","));
                text.push_str(end);
            }
            text.into_bytes()
        })
}

#[test]
fn csv_reader_yields_only_valid_keys_from_csv_shaped_text() {
    check(
        "csv reader, CSV-shaped text",
        cases(5000),
        csv_text(),
        |input| read_and_check(&input).map(drop),
    );
}

/// One row of a well-formed file: an id (valid or not) and a reference, each written
/// plain or quoted.
#[derive(Debug, Clone)]
struct Row {
    id: String,
    reference: String,
    quote_id: bool,
    quote_ref: bool,
    crlf: bool,
    blank_after: bool,
}

fn rows() -> impl Strategy<Value = Vec<Row>> {
    let id = prop_oneof![
        6 => "[A-Za-z0-9+/=_-]{1,48}",
        1 => " {0,2}[A-Za-z0-9]{1,10} {0,2}",
        1 => "[A-Za-z0-9]{0,4}[ \t\u{0}][A-Za-z0-9]{1,4}",
        1 => Just(String::new()),
        1 => "[A-Za-z0-9]{129,140}",
        1 => "[가-힣]{1,6}",
    ];
    let reference = prop_oneof![Just(String::new()), "[A-Za-z0-9 ,\"-]{0,12}",];
    prop::collection::vec(
        (
            id,
            reference,
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            prop::bool::weighted(0.1),
        )
            .prop_map(
                |(id, reference, quote_id, quote_ref, crlf, blank_after)| Row {
                    id,
                    reference,
                    quote_id,
                    quote_ref,
                    crlf,
                    blank_after,
                },
            ),
        0..20,
    )
}

fn csv_field(value: &str, quote: bool) -> String {
    if quote || value.contains([',', '"']) || value.starts_with(' ') || value.ends_with(' ') {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_owned()
    }
}

/// What the reader must give for one row at `line`: `(line, Ok(id) | Err(()), ref)`.
type Expected = (i64, Result<String, ()>, Option<String>);

#[test]
fn csv_reader_reads_back_what_a_csv_writer_wrote() {
    check(
        "csv reader, round trip of well-formed files",
        cases(3000),
        (rows(), any::<bool>(), any::<bool>()),
        |(rows, bom, last_newline)| {
            let mut text = String::from(if bom { "\u{feff}" } else { "" });
            text.push_str("payer_id,customer_ref\n");
            let mut line = 2i64;
            let mut expected: Vec<Expected> = Vec::new();
            for (i, row) in rows.iter().enumerate() {
                text.push_str(&csv_field(&row.id, row.quote_id));
                text.push(',');
                text.push_str(&csv_field(&row.reference, row.quote_ref));
                let last = i + 1 == rows.len();
                if !last || last_newline {
                    text.push_str(if row.crlf { "\r\n" } else { "\n" });
                }
                let id = PayerId::parse(&row.id)
                    .map(|p| p.expose().to_owned())
                    .map_err(drop);
                let reference = Some(row.reference.trim().to_owned()).filter(|r| !r.is_empty());
                expected.push((line, id, reference));
                line += 1;
                if row.blank_after && !last {
                    text.push_str(if row.crlf { "\r\n" } else { "\n" });
                    line += 1;
                }
            }
            let mut got: Vec<Expected> = Vec::new();
            let done = read_items(text.as_bytes(), "fuzz.csv", &Default::default(), |item| {
                got.push(match item {
                    Item::Key {
                        seq,
                        id,
                        customer_ref,
                    } => (seq, Ok(id.expose().to_owned()), customer_ref),
                    Item::Rejected {
                        seq, customer_ref, ..
                    } => (seq, Err(()), customer_ref),
                });
                true
            });
            prop_assert!(matches!(done, Ok(true)), "{done:?} for {text:?}");
            prop_assert_eq!(got, expected, "{:?}", text);
            Ok(())
        },
    );
}

//! Unit tests of the pure parts: URLs, when to send, the two bodies.

use super::*;

fn notice() -> Notice {
    Notice {
        run_id: Some(42),
        run_key: Some("2026-11-28".to_owned()),
        state: RunState::Completed,
        exit_code: Some(0),
        keys: KeyCounts {
            active: 180,
            gone: 12,
            failed: 0,
            rejected: 1,
        },
        duration_secs: Some(20.4),
        changes: Some(ChangeCounts {
            since_run: 41,
            ..ChangeCounts::default()
        }),
        newly_gone: vec![],
        report: Some("/reports/night.xlsx".to_owned()),
        error: None,
        events: None,
    }
}

#[test]
fn urls_show_only_their_host() {
    let url = WebhookUrl::parse("https://hooks.slack.com/services/T000/B000/XXXXSECRET").unwrap();
    assert_eq!(url.host(), "hooks.slack.com");
    assert!(!format!("{url:?}").contains("XXXXSECRET"));
    assert!(WebhookUrl::parse("http://127.0.0.1:9/hook").is_ok());
    let err = WebhookUrl::parse("http://hooks.example/T/secret").unwrap_err();
    assert!(!err.to_string().contains("secret"), "{err}");
    assert!(WebhookUrl::parse("ftp://x/y").is_err());
    assert!(WebhookUrl::parse("https://u:p@x/y").is_err());
    assert!(WebhookUrl::parse("not a url").is_err());
    let list = WebhookUrl::parse_list(" https://a.example/1 , https://b.example/2,").unwrap();
    assert_eq!(
        list.iter().map(WebhookUrl::host).collect::<Vec<_>>(),
        ["a.example", "b.example"]
    );
}

#[test]
fn when_to_send() {
    let quiet = notice();
    assert!(should_send(NotifyOn::Always, &quiet));
    assert!(!should_send(NotifyOn::Changes, &quiet));
    assert!(!should_send(NotifyOn::Problems, &quiet));
    let recovered = Notice {
        changes: Some(ChangeCounts {
            since_run: 41,
            recovered: 1,
            ..ChangeCounts::default()
        }),
        ..notice()
    };
    assert!(should_send(NotifyOn::Changes, &recovered));
    assert!(!should_send(NotifyOn::Problems, &recovered));
    let gone = Notice {
        changes: Some(ChangeCounts {
            since_run: 41,
            newly_gone: 2,
            ..ChangeCounts::default()
        }),
        ..notice()
    };
    assert!(should_send(NotifyOn::Problems, &gone));
    for (state, exit) in [("completed", 2), ("interrupted", 143), ("failed", 1)] {
        let bad = Notice {
            state: RunState::parse(state),
            exit_code: Some(exit),
            ..notice()
        };
        assert!(should_send(NotifyOn::Changes, &bad), "{state}");
        assert!(should_send(NotifyOn::Problems, &bad), "{state}");
    }
}

#[test]
fn slack_body_has_text_blocks_counts_and_changes() {
    let n = Notice {
        changes: Some(ChangeCounts {
            since_run: 41,
            newly_gone: 12,
            recovered: 1,
            card_changed: 3,
            ..ChangeCounts::default()
        }),
        newly_gone: vec![GoneKey {
            customer_ref: Some("(주)다온<테크>".to_owned()),
            payer_id_masked: "cGFZ****MDI=".to_owned(),
        }],
        ..notice()
    };
    let body = slack_body(&n);
    let text = body["text"].as_str().unwrap();
    assert_eq!(
        text,
        "Payple reconcile run 42 completed (exit 0): 12 newly gone, 0 newly failing, 1 recovered"
    );
    let blocks = body["blocks"].as_array().unwrap();
    assert_eq!(blocks[0]["type"], "header");
    let details = blocks[1]["text"]["text"].as_str().unwrap();
    assert!(
        details.contains("180 active, 12 gone, 0 failed, 1 rejected"),
        "{details}"
    );
    assert!(
        details.contains("Changes since run 41:* 12 newly gone"),
        "{details}"
    );
    assert!(details.contains("3 card changed"), "{details}");
    assert!(details.contains("/reports/night.xlsx"), "{details}");
    let gone = blocks[2]["text"]["text"].as_str().unwrap();
    assert!(
        gone.contains("(주)다온&lt;테크&gt; `cGFZ****MDI=`"),
        "{gone}"
    );
    assert!(gone.contains("first 1 of 12"), "{gone}");
}

#[test]
fn json_body_has_the_documented_fields() {
    let body = json_body(&notice());
    let keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for field in [
        "type",
        "version",
        "run_id",
        "run_key",
        "state",
        "exit_code",
        "clean",
        "keys",
        "duration_secs",
        "changes",
        "newly_gone",
        "report",
        "error",
    ] {
        assert!(keys.contains(&field), "{field} missing: {keys:?}");
    }
    assert_eq!(body["keys"]["gone"], 12);
    assert_eq!(body["changes"]["since_run"], 41);
    assert_eq!(body["clean"], true);
    let none = json_body(&Notice {
        changes: None,
        ..notice()
    });
    assert!(none["changes"].is_null());
}

#[test]
fn retry_decisions() {
    use reqwest::StatusCode;
    assert!(crate::http::retryable(StatusCode::INTERNAL_SERVER_ERROR));
    assert!(crate::http::retryable(StatusCode::TOO_MANY_REQUESTS));
    assert!(!crate::http::retryable(StatusCode::NOT_FOUND));
    assert!(!crate::http::retryable(StatusCode::BAD_REQUEST));
}

#[test]
fn a_run_that_could_not_start_says_why() {
    let n = Notice::failed(None, 3, "another run holds the lease".to_owned());
    assert!(should_send(NotifyOn::Problems, &n));
    let body = slack_body(&n);
    assert_eq!(
        body["text"],
        "Payple reconcile: the run could not start (exit 3)"
    );
    assert!(body.to_string().contains("another run holds the lease"));
    assert!(json_body(&n)["run_id"].is_null());
}

#[test]
fn durations_read_like_a_person_would_say_them() {
    assert_eq!(human_duration(0.04), "0.0 s");
    assert_eq!(human_duration(9.96), "10.0 s");
    assert_eq!(human_duration(42.4), "42 s");
    assert_eq!(human_duration(845.0), "14 min 5 s");
    assert_eq!(human_duration(7380.0), "2 h 3 min");
}

#[test]
fn a_run_that_did_not_complete_is_not_compared() {
    let interrupted = Notice {
        state: RunState::Interrupted,
        exit_code: Some(143),
        changes: None,
        ..notice()
    };
    let lines = detail_lines(&interrupted).join("\n");
    assert!(
        lines.contains("not compared: the run did not complete"),
        "{lines}"
    );
    assert!(!lines.contains("no previous completed run"), "{lines}");
}

#[tokio::test]
async fn the_cut_abandons_webhooks_still_waiting() {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            sockets.push(socket);
        }
    });
    let url = WebhookUrl::parse(&format!("http://{addr}/hook/a")).unwrap();
    let config = NotifierConfig {
        urls: vec![url.clone(), url],
        timeout: std::time::Duration::from_secs(30),
        attempts: 3,
        backoff: std::time::Duration::from_secs(1),
    };
    let cut = tokio_util::sync::CancellationToken::new();
    let notifier = Notifier::new(config).unwrap().cut_by(cut.clone());
    let started = std::time::Instant::now();
    let body = json_body(&notice());
    let (delivery, ()) = tokio::join!(notifier.send(&body), async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        cut.cancel();
    });
    assert_eq!(delivery, Delivery { sent: 0, failed: 2 });
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    held.abort();
}

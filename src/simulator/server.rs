//! The simulator's HTTP side: the axum routes for `auth.php`, the PUSERINFO lookup and
//! `/_sim/stats` and `/_sim/recover`, and the faults injected into a lookup's answer.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::time::Instant;

use super::faults::{Fault, Faults};
use super::php::{
    AUTH_PATH, GARBAGE_PAGE, LOOKUP_PATH, asks_for_puserinfo, dropped_connection, field,
    huge_reply, internal_error, json_bytes, millis, parse_body, php_response, too_many,
};
use super::state::{Counters, LogLine, Shared};
use super::stats::SimStats;
use crate::domain::stable_hash;

/// Builds the router over the shared state.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(AUTH_PATH, post(auth))
        .route(LOOKUP_PATH, post(lookup))
        .route("/_sim/stats", get(stats))
        .route("/_sim/recover", post(recover))
        .with_state(shared)
}
/// `POST /php/auth.php`.
async fn auth(State(st): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let arrival = Instant::now();
    Counters::bump(&st.counters.auth_calls);
    let request = parse_body(&body);
    let (answer, code) = st.authenticate(&headers, &request);
    if code != "success" {
        Counters::bump(&st.counters.auth_failures);
    }
    st.write_log(&LogLine {
        t_ms: millis(st.since_start(arrival)),
        kind: "auth",
        http_status: Some(200),
        code: Some(code.to_owned()),
        key: None,
        fault: "none",
        expired_token: false,
    });
    php_response(StatusCode::OK, json_bytes(&answer, false))
}

/// A request for another `ACT_`: logged, and answered 404.
fn unsupported(st: &Shared, arrival: Instant) -> Response {
    st.write_log(&LogLine {
        t_ms: millis(st.since_start(arrival)),
        kind: "unsupported",
        http_status: Some(404),
        code: None,
        key: None,
        fault: "none",
        expired_token: false,
    });
    (StatusCode::NOT_FOUND, "only ACT_=PUSERINFO is simulated\n").into_response()
}

/// The fault that answers an admitted lookup before any key is looked at, if one does:
/// an outage or storm episode, `--fail-first`, a huge reply.
fn refusal(
    st: &Shared,
    faults: &Faults,
    n: u64,
    arrival: Instant,
    key_hash: u64,
    log: &mut LogLine,
) -> Option<Response> {
    if let Some(response) = st.episode(faults, n, arrival, log) {
        return Some(response);
    }
    if st.fail_first.should_fail(key_hash) {
        Counters::bump(&st.counters.injected_500);
        log.http_status = Some(500);
        log.fault = "fail_first";
        return Some(internal_error());
    }
    let size = faults.huge_reply?;
    log.fault = "huge_reply";
    Some(huge_reply(size))
}

/// `POST /php/cPayUser/api/cPayUserAct.php?ACT_=PUSERINFO`.
async fn lookup(
    State(st): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let arrival = Instant::now();
    if !asks_for_puserinfo(query.as_deref()) {
        return unsupported(&st, arrival);
    }
    let (_gauge, n) = st.enter_lookup(arrival);
    let faults = st.faults();
    let admitted = st.window.admit(arrival);
    let request = parse_body(&body);
    let payer_id = field(&request, "PCD_PAYER_ID");
    let key_hash = stable_hash(payer_id.as_bytes());
    let delay = faults.latency + st.dice.jitter(faults.jitter);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut log = LogLine {
        t_ms: millis(st.since_start(arrival)),
        kind: "lookup",
        http_status: Some(200),
        code: None,
        key: Some(format!("{key_hash:016x}")),
        fault: "none",
        expired_token: false,
    };
    let finish = |log: LogLine, response: Response| {
        st.write_log(&log);
        response
    };

    let refused = if admitted {
        refusal(&st, &faults, n, arrival, key_hash, &mut log)
    } else {
        Some(too_many_requests(&faults, &st, &mut log))
    };
    if let Some(response) = refused {
        return finish(log, response);
    }
    let fault = st.dice.fault(&faults);
    if let Some(response) = injected(&st, fault, &mut log) {
        return finish(log, response);
    }

    let answer = st.answer(&headers, &request, &payer_id);
    log.code = Some(answer.code.clone());
    log.expired_token = answer.expired_token;
    let mut bytes = json_bytes(&answer.body, answer.bom);
    if fault == Fault::Truncate {
        Counters::bump(&st.counters.truncated);
        bytes.truncate(bytes.len() / 2);
    }
    finish(log, php_response(StatusCode::OK, bytes))
}

/// The 429 answer of a lookup over the rate limit.
fn too_many_requests(faults: &Faults, st: &Shared, log: &mut LogLine) -> Response {
    Counters::bump(&st.counters.rate_limited);
    log.http_status = Some(429);
    log.fault = "429";
    too_many(&faults.retry_after_secs().to_string())
}

/// `POST /_sim/recover`: every fault episode and `always_code` end.
async fn recover(State(st): State<Arc<Shared>>) -> StatusCode {
    st.set_faults(st.faults().recovered());
    StatusCode::NO_CONTENT
}

/// The answer a drawn fault replaces the lookup's with (`None`: answer normally, perhaps
/// truncated later).
fn injected(st: &Shared, fault: Fault, log: &mut LogLine) -> Option<Response> {
    log.fault = fault.label();
    match fault {
        Fault::Error500 => {
            Counters::bump(&st.counters.injected_500);
            log.http_status = Some(500);
            Some(internal_error())
        }
        Fault::Drop => {
            Counters::bump(&st.counters.dropped);
            log.http_status = None;
            Some(dropped_connection())
        }
        Fault::Garbage => {
            Counters::bump(&st.counters.garbage);
            Some(php_response(
                StatusCode::OK,
                GARBAGE_PAGE.as_bytes().to_vec(),
            ))
        }
        Fault::None | Fault::Truncate => None,
    }
}

/// `GET /_sim/stats`.
async fn stats(State(st): State<Arc<Shared>>) -> Json<SimStats> {
    Json(st.stats())
}

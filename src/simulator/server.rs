//! The simulator's HTTP side: axum routes for `auth.php`, the PUSERINFO lookup and
//! `/_sim/stats`, plus the token book, the counters and the request log they share.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, LineWriter, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::header::{CONTENT_TYPE, REFERER, RETRY_AFTER};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rand::Rng;
use rand::distr::Alphanumeric;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::time::Instant;
use url::{Origin, Url};

use super::faults::{Dice, FailFirst, Fault, Faults, RateWindow};
use super::keys::{KeyBook, SimKey, SimKind};
use super::{Partner, SimConfig, SimError, SimStats, lock};
use crate::domain::stable_hash;

pub(crate) const AUTH_PATH: &str = "/php/auth.php";
pub(crate) const LOOKUP_PATH: &str = "/php/cPayUser/api/cPayUserAct.php";
const LOOKUP_URL: &str = "/php/cPayUser/api/cPayUserAct.php?ACT_=PUSERINFO";
const WORK: &str = "PUSERINFO";
/// What PHP answers with, whatever the body is.
const PHP_CONTENT_TYPE: &str = "text/html; charset=UTF-8";
const BOM: &[u8] = "\u{feff}".as_bytes();
/// Expired token triples are remembered this long after expiry (to tell "expired" from
/// "unknown"), at least.
const EXPIRED_MEMORY: Duration = Duration::from_secs(600);

const INTERNAL_ERROR_PAGE: &str = "<html>\r\n<head><title>500 Internal Server Error</title></head>\r\n\
<body>\r\n<center><h1>500 Internal Server Error</h1></center>\r\n<hr><center>nginx</center>\r\n\
</body>\r\n</html>\r\n";
const GARBAGE_PAGE: &str = "<br />\n<b>Warning</b>:  mysqli_connect(): (HY000/2002): Connection \
timed out in <b>/home/cpay/php/cPayUser/api/cPayUserAct.php</b> on line <b>31</b><br />\n\
<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>페이플</title></head>\n<body>\
<p>일시적인 오류가 발생했습니다. 잠시 후 다시 시도해 주세요.</p></body></html>\n";
const TOO_MANY_PAGE: &str = "<html><head><title>429 Too Many Requests</title></head>\
<body><h1>Too Many Requests</h1></body></html>\n";

/// Builds the router over the shared state.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(AUTH_PATH, post(auth))
        .route(LOOKUP_PATH, post(lookup))
        .route("/_sim/stats", get(stats))
        .route("/_sim/recover", post(recover))
        .with_state(shared)
}

/// State shared by every request.
pub(crate) struct Shared {
    partners: Vec<(Partner, Option<Origin>)>,
    token_ttl: Duration,
    keys: KeyBook,
    /// Replaceable while serving; `rate_limit` and `fail_first` are fixed at start.
    faults: Mutex<Faults>,
    /// When each fault episode began (reset when the faults are replaced).
    episodes: EpisodeStarts,
    /// The origin auth answers point lookups at.
    pay_host: String,
    server_name: String,
    started: Instant,
    counters: Counters,
    in_flight: AtomicU64,
    /// `None` unless the configuration keeps lookup times.
    lookup_times: Option<Mutex<Vec<Duration>>>,
    tokens: Mutex<TokenBook>,
    dice: Dice,
    window: RateWindow,
    fail_first: FailFirst,
    log: Option<Mutex<LineWriter<File>>>,
}

impl Shared {
    pub(crate) fn new(
        config: SimConfig,
        local: SocketAddr,
        return_origin: Option<String>,
    ) -> Result<Self, SimError> {
        let log = match &config.request_log {
            Some(path) => {
                let file = File::create(path).map_err(|source| SimError::RequestLog {
                    path: path.clone(),
                    source,
                })?;
                Some(Mutex::new(LineWriter::new(file)))
            }
            None => None,
        };
        let pay_host = return_origin.unwrap_or_else(|| format!("http://{local}"));
        let server_name = pay_host
            .split_once("://")
            .map_or(pay_host.as_str(), |(_, rest)| rest)
            .to_owned();
        let partners = config
            .partners
            .into_iter()
            .map(|p| {
                let origin = Url::parse(p.referer.trim()).ok().map(|u| u.origin());
                (p, origin)
            })
            .collect();
        Ok(Self {
            partners,
            token_ttl: config.token_ttl,
            keys: config.keys,
            dice: Dice::new(config.seed),
            window: RateWindow::new(config.faults.rate_limit),
            fail_first: FailFirst::new(config.faults.fail_first),
            faults: Mutex::new(config.faults),
            episodes: EpisodeStarts::default(),
            pay_host,
            server_name,
            started: Instant::now(),
            counters: Counters::default(),
            in_flight: AtomicU64::new(0),
            lookup_times: config.keep_lookup_times.then(|| Mutex::new(Vec::new())),
            tokens: Mutex::new(TokenBook::default()),
            log,
        })
    }

    pub(crate) fn stats(&self) -> SimStats {
        self.counters.snapshot()
    }

    pub(crate) fn faults(&self) -> Faults {
        lock(&self.faults).clone()
    }

    pub(crate) fn set_faults(&self, faults: Faults) {
        *lock(&self.faults) = faults;
        self.episodes.reset();
    }

    /// The answer of a fault episode (or `always_code`) covering lookup number `n`.
    fn episode(
        &self,
        faults: &Faults,
        n: u64,
        now: Instant,
        log: &mut LogLine,
    ) -> Option<Response> {
        let e = &self.episodes;
        if let Some(t) = &faults.throttle
            && t.covers(n, now, &e.throttle)
        {
            Counters::bump(&self.counters.throttled);
            log.http_status = Some(429);
            log.fault = "throttle";
            return Some(too_many(&t.what.max(1).to_string()));
        }
        if let Some(o) = &faults.outage
            && o.covers(n, now, &e.outage)
        {
            Counters::bump(&self.counters.outage);
            log.http_status = Some(o.what);
            log.fault = "outage";
            let status = StatusCode::from_u16(o.what).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            return Some(php_response(
                status,
                INTERNAL_ERROR_PAGE.as_bytes().to_vec(),
            ));
        }
        let (code, msg, fault) = if let Some(code) = &faults.always_code {
            Counters::bump(&self.counters.always_code);
            (code, "가맹점 인증에 실패했습니다.", "always_code")
        } else if let Some(storm) = &faults.storm
            && storm.covers(n, now, &e.storm)
        {
            Counters::bump(&self.counters.storm);
            (&storm.what, "시스템 점검 중입니다", "storm")
        } else {
            return None;
        };
        log.fault = fault;
        log.code = Some(code.clone());
        let answer = Answer::error(code, msg, None);
        Some(php_response(
            StatusCode::OK,
            json_bytes(&answer.body, false),
        ))
    }

    pub(crate) fn lookup_times(&self) -> Vec<Duration> {
        self.lookup_times
            .as_ref()
            .map(|times| lock(times).clone())
            .unwrap_or_default()
    }

    pub(crate) fn flush_log(&self) {
        if let Some(log) = &self.log
            && let Err(error) = lock(log).flush()
        {
            tracing::warn!(%error, "cannot flush the simulator's request log");
        }
    }

    fn since_start(&self, t: Instant) -> Duration {
        t.saturating_duration_since(self.started)
    }

    fn write_log(&self, line: &LogLine) {
        let Some(log) = &self.log else {
            return;
        };
        let mut text = match serde_json::to_vec(line) {
            Ok(text) => text,
            Err(error) => {
                tracing::warn!(%error, "cannot encode a request log line");
                return;
            }
        };
        text.push(b'\n');
        if let Err(error) = lock(log).write_all(&text) {
            tracing::warn!(%error, "cannot write the simulator's request log");
        }
    }

    /// Counts a lookup's arrival and holds the concurrency gauge until dropped; also says
    /// which lookup (1-based) this is.
    fn enter_lookup(&self, arrival: Instant) -> (InFlight<'_>, u64) {
        let n = self.counters.lookups.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(times) = &self.lookup_times {
            lock(times).push(self.since_start(arrival));
        }
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.counters
            .peak_concurrent_lookups
            .fetch_max(now, Ordering::SeqCst);
        (InFlight(&self.in_flight), n)
    }

    fn referer_matches(&self, headers: &HeaderMap, partner: &Partner) -> bool {
        let registered = self
            .partners
            .iter()
            .find(|(p, _)| p.cst_id == partner.cst_id)
            .and_then(|(_, origin)| origin.as_ref());
        match (registered, referer_origin(headers)) {
            (Some(registered), Some(sent)) => *registered == sent,
            _ => false,
        }
    }

    fn referer_matches_any(&self, headers: &HeaderMap) -> bool {
        let Some(sent) = referer_origin(headers) else {
            return false;
        };
        self.partners
            .iter()
            .any(|(_, origin)| origin.as_ref() == Some(&sent))
    }

    /// Partner authentication: the answer and the code for the log.
    fn authenticate(&self, headers: &HeaderMap, request: &Value) -> (Value, &'static str) {
        let cst_id = field(request, "cst_id");
        let cust_key = field(request, "custKey");
        let work = field(request, "PCD_PAY_WORK");
        let fail = |code: &'static str, msg: &str| {
            (
                json!({"result": "error", "result_msg": format!("{code} : {msg}")}),
                code,
            )
        };
        if cst_id.trim().is_empty() {
            return fail("AUTH0001", "파트너 아이디(cst_id)가 없습니다.");
        }
        if cust_key.trim().is_empty() {
            return fail("AUTH0002", "파트너 인증키(custKey)가 없습니다.");
        }
        let Some((index, partner)) = self
            .partners
            .iter()
            .enumerate()
            .find(|(_, (p, _))| p.cst_id == cst_id)
            .map(|(i, (p, _))| (i, p))
        else {
            return fail("AUTH0003", "파트너 정보가 없습니다.");
        };
        if !self.referer_matches(headers, partner) {
            return fail("AUTH0004", "CONNECT SERVER ERROR!!");
        }
        if partner.cust_key != cust_key {
            return fail("AUTH0003", "파트너 정보가 없습니다.");
        }
        if work != WORK {
            return (
                json!({
                    "result": "error",
                    "result_msg": "요청 작업구분(PCD_PAY_WORK)이 올바르지 않습니다."
                }),
                "bad_work",
            );
        }
        let issued = Issued {
            partner: index,
            expires: Instant::now() + self.token_ttl,
        };
        let triple = lock(&self.tokens).issue(issued);
        (
            json!({
                "server_name": self.server_name,
                "result": "success",
                "result_msg": "사용자 인증 완료!!",
                "cst_id": triple.cst_id,
                "custKey": triple.cust_key,
                "AuthKey": triple.auth_key,
                "PCD_PAY_HOST": self.pay_host,
                "PCD_PAY_URL": LOOKUP_URL,
                "return_url": format!("{}{}", self.pay_host, LOOKUP_URL),
            }),
            "success",
        )
    }

    /// The protocol answer to a lookup that passed the fault stage.
    fn answer(&self, headers: &HeaderMap, request: &Value, payer_id: &str) -> Answer {
        let now = Instant::now();
        let presented = Triple {
            cst_id: field(request, "PCD_CST_ID"),
            cust_key: field(request, "PCD_CUST_KEY"),
            auth_key: field(request, "PCD_AUTH_KEY"),
        };
        let issued = lock(&self.tokens).find(&presented);
        let referer_ok = match issued {
            Some(issued) => self
                .partners
                .get(issued.partner)
                .is_some_and(|(p, _)| self.referer_matches(headers, p)),
            None => self.referer_matches_any(headers),
        };
        if !referer_ok {
            return Answer::error("AUTH0004", "CONNECT SERVER ERROR!!", None);
        }
        match issued {
            None => {
                Counters::bump(&self.counters.bad_token_lookups);
                return Answer::error("SPAY0001", "가맹점 인증에 실패했습니다.", None);
            }
            Some(issued) if now >= issued.expires => {
                Counters::bump(&self.counters.expired_token_lookups);
                let mut answer = Answer::error(
                    "SPAY0001",
                    "가맹점 인증 시간이 만료되었습니다. 다시 인증해 주세요.",
                    None,
                );
                answer.expired_token = true;
                return answer;
            }
            Some(_) => {}
        }
        if payer_id.trim().is_empty() {
            return Answer::error("SPCD0001", "결제키(PCD_PAYER_ID)가 없습니다.", None);
        }
        let key = self.keys.get(payer_id);
        let mut answer = match key.kind {
            SimKind::Card | SimKind::Transfer => Answer::success(&key, payer_id),
            SimKind::Mismatch => Answer::success(&key, &other_payer_id(payer_id)),
            SimKind::Gone | SimKind::Error => Answer::error(&key.code, &key.msg, Some(payer_id)),
        };
        answer.bom = key.bom;
        answer
    }
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

/// `POST /php/cPayUser/api/cPayUserAct.php?ACT_=PUSERINFO`.
async fn lookup(
    State(st): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let arrival = Instant::now();
    if !asks_for_puserinfo(query.as_deref()) {
        st.write_log(&LogLine {
            t_ms: millis(st.since_start(arrival)),
            kind: "unsupported",
            http_status: Some(404),
            code: None,
            key: None,
            fault: "none",
            expired_token: false,
        });
        return (StatusCode::NOT_FOUND, "only ACT_=PUSERINFO is simulated\n").into_response();
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

    if !admitted {
        let response = too_many_requests(&faults, &st, &mut log);
        return finish(log, response);
    }
    if let Some(response) = st.episode(&faults, n, arrival, &mut log) {
        return finish(log, response);
    }
    if st.fail_first.should_fail(key_hash) {
        Counters::bump(&st.counters.injected_500);
        log.http_status = Some(500);
        log.fault = "fail_first";
        return finish(log, internal_error());
    }
    if let Some(size) = faults.huge_reply {
        log.fault = "huge_reply";
        return finish(log, huge_reply(size));
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

/// When each kind of fault episode began.
#[derive(Default)]
struct EpisodeStarts {
    outage: Mutex<Option<Instant>>,
    storm: Mutex<Option<Instant>>,
    throttle: Mutex<Option<Instant>>,
}

impl EpisodeStarts {
    fn reset(&self) {
        for started in [&self.outage, &self.storm, &self.throttle] {
            *lock(started) = None;
        }
    }
}

fn too_many(retry_after: &str) -> Response {
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(RETRY_AFTER, retry_after), (CONTENT_TYPE, PHP_CONTENT_TYPE)],
        TOO_MANY_PAGE,
    )
        .into_response()
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

/// One line of the request log. Never holds credentials, tokens or full billing keys.
#[derive(Debug, Serialize)]
struct LogLine {
    t_ms: u64,
    kind: &'static str,
    /// `null` when the connection was dropped.
    http_status: Option<u16>,
    code: Option<String>,
    /// 16 hex digits of `stable_hash(PCD_PAYER_ID)`.
    key: Option<String>,
    fault: &'static str,
    expired_token: bool,
}

/// A lookup answer before encoding.
struct Answer {
    body: Value,
    code: String,
    bom: bool,
    expired_token: bool,
}

impl Answer {
    fn error(code: &str, msg: &str, payer_id: Option<&str>) -> Self {
        let mut body = json!({
            "PCD_PAY_RST": "error",
            "PCD_PAY_CODE": code,
            "PCD_PAY_MSG": msg,
            "PCD_PAY_WORK": WORK,
        });
        if let (Some(id), Some(map)) = (payer_id, body.as_object_mut()) {
            map.insert("PCD_PAYER_ID".to_owned(), Value::from(id));
        }
        Self {
            body,
            code: code.to_owned(),
            bom: false,
            expired_token: false,
        }
    }

    /// A success answer echoing `echoed_id`, with every field of both pay types (the other
    /// type's empty), an unknown field or two, and numeric codes for some keys.
    fn success(key: &SimKey, echoed_id: &str) -> Self {
        let code_value = |code: &str| -> Value {
            match code.parse::<u64>() {
                Ok(n) if key.numeric_codes => Value::from(n),
                _ => Value::from(code),
            }
        };
        let mut body = json!({
            "PCD_PAY_RST": "success",
            "PCD_PAY_CODE": key.code,
            "PCD_PAY_MSG": key.msg,
            "PCD_PAY_WORK": WORK,
            "PCD_PAY_TYPE": key.pay_type,
            "PCD_PAY_BANKACCTYPE": key.bank_account_type,
            "PCD_PAYER_ID": echoed_id,
            "PCD_PAYER_NAME": key.payer_name,
            "PCD_PAYER_HP": key.payer_phone_mask,
            "PCD_PAYER_EMAIL": "",
            "PCD_PAY_CARD": code_value(&key.card_code),
            "PCD_PAY_CARDNAME": key.card_name,
            "PCD_PAY_CARDNUM": key.card_mask,
            "PCD_PAY_BANK": code_value(&key.bank_code),
            "PCD_PAY_BANKNAME": key.bank_name,
            "PCD_PAY_BANKNUM": key.bank_mask,
            "PCD_PAY_ISTAX": key.is_tax,
            "PCD_REGULER_FLAG": "N",
        });
        if key.numeric_codes
            && let Some(map) = body.as_object_mut()
        {
            map.insert(
                "PCD_PAYER_META".to_owned(),
                json!({"grade": 1, "tags": [], "since": 20240101}),
            );
        }
        Self {
            body,
            code: key.code.clone(),
            bom: false,
            expired_token: false,
        }
    }
}

/// Another key's id, as a mismatching answer echoes it.
fn other_payer_id(payer_id: &str) -> String {
    let a = stable_hash(format!("mismatch:{payer_id}").as_bytes());
    let b = stable_hash(format!("{payer_id}:mismatch").as_bytes());
    let other = format!("{a:016x}{b:016x}");
    if other == payer_id {
        format!("{other}0")
    } else {
        other
    }
}

/// Counters behind [`SimStats`].
#[derive(Default)]
struct Counters {
    auth_calls: AtomicU64,
    auth_failures: AtomicU64,
    lookups: AtomicU64,
    peak_concurrent_lookups: AtomicU64,
    expired_token_lookups: AtomicU64,
    bad_token_lookups: AtomicU64,
    rate_limited: AtomicU64,
    injected_500: AtomicU64,
    dropped: AtomicU64,
    truncated: AtomicU64,
    garbage: AtomicU64,
    outage: AtomicU64,
    storm: AtomicU64,
    throttled: AtomicU64,
    always_code: AtomicU64,
}

impl Counters {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::SeqCst);
    }

    fn snapshot(&self) -> SimStats {
        let get = |c: &AtomicU64| c.load(Ordering::SeqCst);
        SimStats {
            auth_calls: get(&self.auth_calls),
            auth_failures: get(&self.auth_failures),
            lookups: get(&self.lookups),
            peak_concurrent_lookups: get(&self.peak_concurrent_lookups),
            expired_token_lookups: get(&self.expired_token_lookups),
            bad_token_lookups: get(&self.bad_token_lookups),
            rate_limited: get(&self.rate_limited),
            injected_500: get(&self.injected_500),
            dropped: get(&self.dropped),
            truncated: get(&self.truncated),
            garbage: get(&self.garbage),
            outage: get(&self.outage),
            storm: get(&self.storm),
            throttled: get(&self.throttled),
            always_code: get(&self.always_code),
        }
    }
}

/// Decrements the in-flight gauge when a lookup ends, however it ends.
struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The token triple a client presents (or the simulator issued).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Triple {
    cst_id: String,
    cust_key: String,
    auth_key: String,
}

#[derive(Debug, Clone, Copy)]
struct Issued {
    partner: usize,
    expires: Instant,
}

/// Every token triple issued, each valid until its own expiry; expired ones are kept a
/// while longer so that their use counts as "expired", not "unknown".
#[derive(Default)]
struct TokenBook {
    issued: HashMap<Triple, Issued>,
    prune_at: usize,
}

impl TokenBook {
    fn issue(&mut self, issued: Issued) -> Triple {
        if self.issued.len() >= self.prune_at {
            let now = Instant::now();
            self.issued
                .retain(|_, i| now.saturating_duration_since(i.expires) < EXPIRED_MEMORY);
            self.prune_at = (self.issued.len() * 2).max(1024);
        }
        let mut rng = rand::rng();
        let mut token = |len: usize| -> String {
            (&mut rng)
                .sample_iter(Alphanumeric)
                .take(len)
                .map(char::from)
                .collect()
        };
        let triple = Triple {
            cst_id: token(32),
            cust_key: token(40),
            auth_key: (0..32)
                .map(|_| format!("{:02x}", rng.random::<u8>()))
                .collect(),
        };
        self.issued.insert(triple.clone(), issued);
        triple
    }

    fn find(&self, presented: &Triple) -> Option<Issued> {
        self.issued.get(presented).copied()
    }
}

/// Whether the query string says `ACT_=PUSERINFO`.
fn asks_for_puserinfo(query: Option<&str>) -> bool {
    let Some(query) = query else {
        return false;
    };
    url::form_urlencoded::parse(query.as_bytes())
        .filter(|(name, _)| name == "ACT_")
        .map(|(_, value)| value == WORK)
        .last()
        .unwrap_or(false)
}

/// The request's Referer reduced to its origin.
fn referer_origin(headers: &HeaderMap) -> Option<Origin> {
    let raw = headers.get(REFERER)?.to_str().ok()?;
    let origin = Url::parse(raw.trim()).ok()?.origin();
    origin.is_tuple().then_some(origin)
}

/// The request body as JSON (BOM tolerated); anything else reads as an empty object.
fn parse_body(body: &[u8]) -> Value {
    let body = body.strip_prefix(BOM).unwrap_or(body);
    match serde_json::from_slice::<Value>(body) {
        Ok(value @ Value::Object(_)) => value,
        _ => Value::Object(serde_json::Map::new()),
    }
}

/// A request field as text: strings as they are, numbers printed, anything else empty.
fn field(request: &Value, name: &str) -> String {
    match request.get(name) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

fn json_bytes(value: &Value, bom: bool) -> Vec<u8> {
    let mut bytes = if bom { BOM.to_vec() } else { Vec::new() };
    // Writing a `Value` into a Vec cannot fail: its keys are strings and there is no I/O.
    serde_json::to_writer(&mut bytes, value).expect("a JSON value always encodes");
    bytes
}

fn php_response(status: StatusCode, body: Vec<u8>) -> Response {
    (status, [(CONTENT_TYPE, PHP_CONTENT_TYPE)], body).into_response()
}

/// A 200 reply `size` bytes long, made in 64 KiB chunks as the client reads them: a JSON
/// object whose message never ends. No `Content-Length`: the client cannot know ahead.
fn huge_reply(size: u64) -> Response {
    const CHUNK: u64 = 64 * 1024;
    let head = Bytes::from_static(b"{\"PCD_PAY_RST\":\"error\",\"PCD_PAY_MSG\":\"");
    let chunks = (0..size.div_ceil(CHUNK)).map(move |i| {
        let len = CHUNK.min(size - i * CHUNK) as usize;
        Ok::<_, io::Error>(Bytes::from(vec![b'x'; len]))
    });
    let body = futures::stream::iter(std::iter::once(Ok(head)).chain(chunks));
    (
        StatusCode::OK,
        [(CONTENT_TYPE, PHP_CONTENT_TYPE)],
        Body::from_stream(body),
    )
        .into_response()
}

fn internal_error() -> Response {
    php_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        INTERNAL_ERROR_PAGE.as_bytes().to_vec(),
    )
}

/// A response whose body fails at once: hyper then closes the connection before the
/// buffered head is flushed, so the client sees the connection closed without a response.
fn dropped_connection() -> Response {
    let failing = futures::stream::once(async {
        Err::<Bytes, io::Error>(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "simulated dropped connection",
        ))
    });
    (
        StatusCode::OK,
        [(CONTENT_TYPE, PHP_CONTENT_TYPE)],
        Body::from_stream(failing),
    )
        .into_response()
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with_referer(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(REFERER, HeaderValue::from_str(value).expect("header"));
        headers
    }

    #[test]
    fn referer_compares_origins() {
        let origin = |v: &str| referer_origin(&with_referer(v));
        let registered = Url::parse("http://localhost:8080").expect("url").origin();
        assert_eq!(origin("http://localhost:8080/"), Some(registered.clone()));
        assert_eq!(
            origin("http://LOCALHOST:8080/shop/x?y"),
            Some(registered.clone())
        );
        assert_ne!(origin("http://localhost:8081"), Some(registered.clone()));
        assert_ne!(origin("https://localhost:8080"), Some(registered));
        assert_eq!(origin("not a url"), None);
        assert_eq!(referer_origin(&HeaderMap::new()), None);
    }

    #[test]
    fn fields_accept_strings_and_numbers() {
        let v = parse_body("\u{feff}{\"a\": \"x\", \"b\": 12, \"c\": null}".as_bytes());
        assert_eq!(field(&v, "a"), "x");
        assert_eq!(field(&v, "b"), "12");
        assert_eq!(field(&v, "c"), "");
        assert_eq!(field(&parse_body(b"[1]"), "a"), "");
        assert_eq!(field(&parse_body(b"garbage"), "a"), "");
    }

    #[test]
    fn success_answers_carry_both_pay_types() {
        let mut key = super::super::derive_key("payer-000001");
        key.kind = SimKind::Card;
        key.pay_type = "card".to_owned();
        key.card_code = "0200".to_owned();
        key.bank_code = String::new();
        key.numeric_codes = true;
        let answer = Answer::success(&key, "payer-000001");
        assert_eq!(answer.body["PCD_PAY_CARD"], json!(200));
        assert_eq!(answer.body["PCD_PAY_BANK"], json!(""));
        assert_eq!(answer.body["PCD_PAY_BANKNUM"], json!(""));
        assert!(answer.body.get("PCD_PAYER_META").is_some());
        key.numeric_codes = false;
        let answer = Answer::success(&key, "payer-000001");
        assert_eq!(answer.body["PCD_PAY_CARD"], json!("0200"));
    }

    #[test]
    fn only_puserinfo_is_served() {
        assert!(asks_for_puserinfo(Some("ACT_=PUSERINFO")));
        assert!(asks_for_puserinfo(Some("x=1&ACT_=PUSERINFO")));
        assert!(!asks_for_puserinfo(Some("ACT_=PUSERDEL")));
        assert!(!asks_for_puserinfo(None));
    }

    #[test]
    fn mismatch_ids_differ() {
        for id in ["a", "payer-1", ""] {
            assert_ne!(other_payer_id(id), id);
        }
    }

    #[test]
    fn token_book_issues_fresh_triples() {
        let mut book = TokenBook::default();
        let issued = Issued {
            partner: 0,
            expires: Instant::now(),
        };
        let a = book.issue(issued);
        let b = book.issue(issued);
        assert_ne!(a, b);
        assert_eq!(a.auth_key.len(), 64);
        assert!(book.find(&a).is_some());
        let forged = Triple {
            cst_id: "test".to_owned(),
            ..a
        };
        assert!(book.find(&forged).is_none());
    }
}

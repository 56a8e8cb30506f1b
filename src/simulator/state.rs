//! The state every simulator request shares ([`Shared`]): the configuration, the token
//! book, fault episodes, the counters and the request log.

use std::fs::File;
use std::io::{LineWriter, Write};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::http::HeaderMap;
use serde::Serialize;
use tokio::time::Instant;
use url::{Origin, Url};

use super::config::{Partner, SimConfig};
use super::error::SimError;
use super::faults::{Dice, FailFirst, Faults, RateWindow};
use super::keys::KeyBook;
use super::lock::lock;
use super::php::referer_origin;
use super::stats::SimStats;
use super::tokens::TokenBook;

/// State shared by every request.
pub(crate) struct Shared {
    pub(super) partners: Vec<(Partner, Option<Origin>)>,
    pub(super) token_ttl: Duration,
    pub(super) keys: KeyBook,
    /// Replaceable while serving; `rate_limit` and `fail_first` are fixed at start.
    pub(super) faults: Mutex<Faults>,
    /// When each fault episode began (reset when the faults are replaced).
    pub(super) episodes: EpisodeStarts,
    /// The origin auth answers point lookups at.
    pub(super) pay_host: String,
    pub(super) server_name: String,
    pub(super) started: Instant,
    pub(super) counters: Counters,
    pub(super) in_flight: AtomicU64,
    /// `None` unless the configuration keeps lookup times.
    pub(super) lookup_times: Option<Mutex<Vec<Duration>>>,
    pub(super) tokens: Mutex<TokenBook>,
    pub(super) dice: Dice,
    pub(super) window: RateWindow,
    pub(super) fail_first: FailFirst,
    pub(super) log: Option<Mutex<LineWriter<File>>>,
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

    pub(super) fn since_start(&self, t: Instant) -> Duration {
        t.saturating_duration_since(self.started)
    }

    pub(super) fn write_log(&self, line: &LogLine) {
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
    pub(super) fn enter_lookup(&self, arrival: Instant) -> (InFlight<'_>, u64) {
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

    pub(super) fn referer_matches(&self, headers: &HeaderMap, partner: &Partner) -> bool {
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

    pub(super) fn referer_matches_any(&self, headers: &HeaderMap) -> bool {
        let Some(sent) = referer_origin(headers) else {
            return false;
        };
        self.partners
            .iter()
            .any(|(_, origin)| origin.as_ref() == Some(&sent))
    }
}
/// When each kind of fault episode began.
#[derive(Default)]
pub(super) struct EpisodeStarts {
    pub(super) outage: Mutex<Option<Instant>>,
    pub(super) storm: Mutex<Option<Instant>>,
    pub(super) throttle: Mutex<Option<Instant>>,
}

impl EpisodeStarts {
    pub(super) fn reset(&self) {
        for started in [&self.outage, &self.storm, &self.throttle] {
            *lock(started) = None;
        }
    }
}
/// One line of the request log. Never holds credentials, tokens or full billing keys.
#[derive(Debug, Serialize)]
pub(super) struct LogLine {
    pub(super) t_ms: u64,
    pub(super) kind: &'static str,
    /// `null` when the connection was dropped.
    pub(super) http_status: Option<u16>,
    pub(super) code: Option<String>,
    /// 16 hex digits of `stable_hash(PCD_PAYER_ID)`.
    pub(super) key: Option<String>,
    pub(super) fault: &'static str,
    pub(super) expired_token: bool,
}
/// Counters behind [`SimStats`].
#[derive(Default)]
pub(super) struct Counters {
    pub(super) auth_calls: AtomicU64,
    pub(super) auth_failures: AtomicU64,
    pub(super) lookups: AtomicU64,
    pub(super) peak_concurrent_lookups: AtomicU64,
    pub(super) expired_token_lookups: AtomicU64,
    pub(super) bad_token_lookups: AtomicU64,
    pub(super) rate_limited: AtomicU64,
    pub(super) injected_500: AtomicU64,
    pub(super) dropped: AtomicU64,
    pub(super) truncated: AtomicU64,
    pub(super) garbage: AtomicU64,
    pub(super) outage: AtomicU64,
    pub(super) storm: AtomicU64,
    pub(super) throttled: AtomicU64,
    pub(super) always_code: AtomicU64,
}

impl Counters {
    pub(super) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::SeqCst);
    }

    pub(super) fn snapshot(&self) -> SimStats {
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
pub(super) struct InFlight<'a>(pub(super) &'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

//! Pushing a run's metrics to a Prometheus Pushgateway (`--metrics-push`): the URL (a
//! secret), the grouping key, what one push carries, and a bounded push.
//!
//! # Architecture
//! A leaf beside [`crate::notify`]. [`PushTarget::new`] validates once; [`group_path`] and
//! [`body`] are pure; [`push`] sends with the process's one HTTP client builder: one
//! attempt plus [`RETRIES`] retries, [`ATTEMPT_TIMEOUT`] each, no redirects, and it never
//! outlives `--shutdown-grace` after a signal.
//!
//! # Design: a failed run never lowers the last success
//! Every run `POST`s to the same group (`job="payple_reconcile"`, plus `instance` when
//! `--metrics-instance` is given and `shard` when sharded). A Pushgateway `POST` replaces
//! only the metrics whose names it carries, so a run that did not succeed simply leaves
//! [`LAST_SUCCESS`] out: the value a successful run pushed earlier stays untouched.

use std::time::Duration;

use crate::http::{Failure, SecretUrl, send_once};
use crate::report::metrics::{self, EXIT_CODE, LAST_SUCCESS, RunMetrics};
use crate::shutdown::Shutdown;

/// The job label of every push.
pub const JOB: &str = "payple_reconcile";
/// Retries after the first attempt.
pub const RETRIES: u32 = 2;
/// One attempt, connection included.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// The pause before the first retry (doubling).
pub const BACKOFF: Duration = Duration::from_millis(250);

/// What is wrong with `--metrics-push` or `--metrics-instance`, or why a push failed.
/// Never shows the URL.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error(transparent)]
    Url(#[from] crate::http::UrlError),
    #[error("{0:?}: use 1 to 64 letters, digits, '.', '_' or '-'")]
    BadInstance(String),
    #[error("cannot build the HTTP client for the Pushgateway: {0}")]
    Client(#[source] reqwest::Error),
    #[error("metrics not pushed to {host} after {attempts} attempt(s): {why}")]
    NotPushed {
        host: String,
        attempts: u32,
        why: String,
    },
}

/// The Pushgateway's base URL (with any path prefix it is served under): a secret URL
/// ([`SecretUrl`]) with no query or fragment.
#[derive(Clone, Debug)]
pub struct PushUrl(SecretUrl);

impl PushUrl {
    pub fn parse(value: &str) -> Result<Self, PushError> {
        let url = SecretUrl::parse_with(value, |url| {
            if url.query().is_some() || url.fragment().is_some() {
                return Err("no query or fragment: give the Pushgateway's base URL");
            }
            Ok(())
        })?;
        Ok(Self(url))
    }

    pub fn host(&self) -> &str {
        self.0.host()
    }

    /// The base URL without its trailing slash, to which the group's path is added.
    fn base(&self) -> &str {
        self.0.expose().trim_end_matches('/')
    }
}

/// Where a run's metrics go: the Pushgateway and the grouping key below the job.
#[derive(Debug, Clone)]
pub struct PushTarget {
    pub url: PushUrl,
    /// `--metrics-instance`.
    pub instance: Option<String>,
    /// The shard index, when the run is sharded.
    pub shard: Option<u32>,
}

impl PushTarget {
    /// Validates `--metrics-push` and `--metrics-instance`; `shard` is the shard index of
    /// a sharded run (stable across runs, unlike a pod name).
    pub fn new(url: &str, instance: Option<&str>, shard: Option<u32>) -> Result<Self, PushError> {
        let url = PushUrl::parse(url)?;
        let instance = match instance {
            None => None,
            Some(name) if valid_label_value(name) => Some(name.to_owned()),
            Some(name) => return Err(PushError::BadInstance(name.to_owned())),
        };
        Ok(Self {
            url,
            instance,
            shard,
        })
    }
}

/// Label values that need no encoding in a URL path.
fn valid_label_value(value: &str) -> bool {
    (1..=64).contains(&value.len())
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// The group's path below the base URL: `/metrics/job/payple_reconcile[/instance/NAME][/shard/N]`.
pub fn group_path(instance: Option<&str>, shard: Option<u32>) -> String {
    let mut path = format!("/metrics/job/{JOB}");
    if let Some(instance) = instance {
        path.push_str("/instance/");
        path.push_str(instance);
    }
    if let Some(shard) = shard {
        path.push_str(&format!("/shard/{shard}"));
    }
    path
}

/// What one push carries: the run's metrics in text format, without
/// [`LAST_SUCCESS`] unless `succeeded` (the run succeeded now, not an answer about an
/// earlier night), so a `POST` keeps the last success a successful run pushed.
pub fn body(m: &RunMetrics, succeeded: bool) -> String {
    let text = metrics::render(m);
    if succeeded {
        return text;
    }
    keep(&text, |name| name != LAST_SUCCESS)
}

/// What a run that ended without a summary (it could not start, or its end could not be
/// recorded) pushes: its exit code only; the other metrics keep their last values.
pub fn exit_code_body(exit_code: u8) -> String {
    let m = RunMetrics {
        exit_code,
        ..RunMetrics::default()
    };
    keep(&metrics::render(&m), |name| name == EXIT_CODE)
}

/// The lines of `text` (HELP, TYPE and samples) whose metric name passes `keep`.
fn keep(text: &str, keep: impl Fn(&str) -> bool) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let series = line
            .strip_prefix("# HELP ")
            .or_else(|| line.strip_prefix("# TYPE "))
            .unwrap_or(line);
        let name = series.split([' ', '{']).next().unwrap_or_default();
        if keep(name) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Pushes `text` to the target's group with `POST`: one attempt plus [`RETRIES`], each
/// bounded by [`ATTEMPT_TIMEOUT`]. It ends at the latest `grace` after the first signal
/// (which may have come during the run), at once at a second; it never changes how the
/// run ended.
pub async fn push(
    target: &PushTarget,
    text: String,
    shutdown: &Shutdown,
    grace: Duration,
) -> Result<(), PushError> {
    let client = crate::http::client_builder()
        .timeout(ATTEMPT_TIMEOUT)
        .connect_timeout(ATTEMPT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("payple-reconcile/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(PushError::Client)?;
    let url = format!(
        "{}{}",
        target.url.base(),
        group_path(target.instance.as_deref(), target.shard)
    );
    let host = target.url.host().to_owned();
    let attempts = std::cell::Cell::new(0u32);
    let tries = async {
        let mut pause = BACKOFF;
        loop {
            attempts.set(attempts.get() + 1);
            match attempt(&client, &url, &text).await {
                Ok(()) => return Ok(()),
                Err(Failure::Transient(why)) if attempts.get() <= RETRIES => {
                    tracing::warn!(host = %host, attempt = attempts.get(), error = %why, ?pause, "metrics push failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause = pause.saturating_mul(2);
                }
                Err(Failure::Transient(why) | Failure::Final(why)) => return Err(why),
            }
        }
    };
    // Within `grace` of the first signal, whether it came before the push or during it.
    let after_signal = async {
        shutdown.stop.cancelled().await;
        tokio::time::sleep(shutdown.grace_left(grace)).await;
    };
    let result = tokio::select! {
        r = tries => r,
        () = after_signal => Err("the shutdown grace ran out".to_owned()),
        () = shutdown.now.cancelled() => Err("abandoned at a second signal".to_owned()),
    };
    result.map_err(|why| PushError::NotPushed {
        host,
        attempts: attempts.get(),
        why,
    })
}

/// [`push`], logged (host only): returns the failed pushes (0 or 1), which the metrics
/// file counts.
pub async fn push_counted(
    target: &PushTarget,
    text: String,
    shutdown: &Shutdown,
    grace: Duration,
) -> u64 {
    match push(target, text, shutdown, grace).await {
        Ok(()) => {
            tracing::info!(host = target.url.host(), "metrics pushed");
            0
        }
        Err(e) => {
            tracing::error!("{e}");
            1
        }
    }
}

async fn attempt(client: &reqwest::Client, url: &str, text: &str) -> Result<(), Failure> {
    let request = client
        .post(url)
        .header(
            reqwest::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )
        .body(text.to_owned());
    send_once(request).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StatusCounts;

    fn run_metrics(last_success: Option<f64>) -> RunMetrics {
        RunMetrics {
            duration_secs: 3.0,
            keys: StatusCounts {
                active: 5,
                gone: 1,
                failed: 2,
                rejected: 0,
            },
            auth_calls: 1,
            lookups: 8,
            exit_code: 2,
            last_success,
            notify_failures: Some(1),
            newly_gone: Some(1),
            push_failures: None,
            events: None,
        }
    }

    #[test]
    fn urls_are_secrets_checked_like_webhooks() {
        let ok = PushUrl::parse("https://push.example/prefix/?").unwrap_err();
        assert!(ok.to_string().contains("push.example"), "{ok}");
        let url = PushUrl::parse("https://push.example/gw/").unwrap();
        assert_eq!(url.base(), "https://push.example/gw");
        assert!(!format!("{url:?}").contains("/gw"));
        assert!(PushUrl::parse("http://127.0.0.1:9091").is_ok());
        assert!(PushUrl::parse("http://localhost:9091").is_ok());
        for bad in [
            "http://push.example:9091/SECRET",
            "ftp://push.example",
            "https://u:SECRET@push.example",
            "not a url",
        ] {
            let e = PushUrl::parse(bad).unwrap_err().to_string();
            assert!(!e.contains("SECRET"), "{e}");
        }
    }

    #[test]
    fn the_group_is_stable_and_names_the_shard() {
        assert_eq!(group_path(None, None), "/metrics/job/payple_reconcile");
        assert_eq!(
            group_path(Some("billing-kr"), Some(2)),
            "/metrics/job/payple_reconcile/instance/billing-kr/shard/2"
        );
        assert!(PushTarget::new("https://p.example", Some("a/b"), None).is_err());
        assert!(PushTarget::new("https://p.example", Some(""), None).is_err());
        assert!(PushTarget::new("https://p.example", Some("prod.kr_1"), None).is_ok());
    }

    #[test]
    fn only_a_success_pushes_the_last_success_time() {
        let m = run_metrics(Some(1_700_000_000.0));
        let failed = body(&m, false);
        assert!(!failed.contains(LAST_SUCCESS), "{failed}");
        assert!(failed.contains("payple_reconcile_run_exit_code 2\n"));
        assert!(failed.contains("payple_reconcile_notify_failures 1\n"));
        let ok = body(&m, true);
        assert!(ok.contains(&format!("{LAST_SUCCESS} 1700000000\n")), "{ok}");
        assert_eq!(ok.lines().count(), failed.lines().count() + 3);
        let exit_only = exit_code_body(3);
        assert_eq!(exit_only.lines().count(), 3, "{exit_only}");
        assert!(
            exit_only.ends_with(&format!("\n{EXIT_CODE} 3\n")),
            "{exit_only}"
        );
    }

    #[test]
    fn the_grace_counts_from_the_first_signal() {
        let grace = Duration::from_secs(5);
        let shutdown = Shutdown::default();
        assert_eq!(shutdown.grace_left(grace), grace);
        shutdown.trigger(crate::shutdown::Signal::Terminate);
        let left = shutdown.grace_left(grace);
        assert!(left <= grace && left > Duration::from_secs(4), "{left:?}");
        assert_eq!(shutdown.grace_left(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn transient_answers_are_retried() {
        use reqwest::StatusCode;
        assert!(crate::http::retryable(StatusCode::BAD_GATEWAY));
        assert!(crate::http::retryable(StatusCode::TOO_MANY_REQUESTS));
        assert!(!crate::http::retryable(StatusCode::BAD_REQUEST));
        assert!(!crate::http::retryable(StatusCode::FOUND));
    }
}

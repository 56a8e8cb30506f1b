//! The Payple flags validated: the origin, the credentials, the code book and the client
//! configuration, shared by `run` and `lookup`.

use std::num::NonZeroU32;
use std::time::Duration;

use secrecy::SecretString;
use url::Url;

use super::env::{Env, read_small_file};
use super::error::{ConfigError, invalid};
use crate::cli::PaypleArgs;
use crate::http::is_loopback;
use crate::payple::codebook::CodeBook;
use crate::payple::health::HealthConfig;
use crate::payple::{
    ClientConfig, LIVE_ORIGIN, Rate, TEST_CST_ID, TEST_CUST_KEY, TEST_ORIGIN, TEST_REFERER,
};

/// Turns `--payple-url` into an origin: `test`, `live`, or an https URL (plain http only
/// on loopback), with no path.
pub fn parse_origin(value: &str) -> Result<Url, ConfigError> {
    let bad = |reason: &str| ConfigError::BadOrigin {
        value: value.to_owned(),
        reason: reason.to_owned(),
    };
    let raw = match value.trim() {
        "test" | "" => TEST_ORIGIN,
        "live" => LIVE_ORIGIN,
        other => other,
    };
    let url = Url::parse(raw).map_err(|e| bad(&e.to_string()))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("credentials do not belong in the URL"));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(bad("give the origin only (scheme, host, port), no path"));
    }
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(&url) => {}
        "http" => return Err(bad("plain http is allowed only for loopback addresses")),
        _ => return Err(bad("the scheme must be https")),
    }
    Ok(url)
}

/// Where the Payple client sends its requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaypleTarget {
    /// `--simulator`: the built-in simulator, started by the command on a loopback port.
    Simulator,
    /// `--payple-url`: a real (or separately run) Payple origin.
    Origin(Url),
}

/// How to reach Payple, validated: the target and the whole client configuration.
#[derive(Debug, Clone)]
pub struct PaypleSettings {
    pub target: PaypleTarget,
    /// Complete for [`PaypleTarget::Origin`]. For [`PaypleTarget::Simulator`] its origin is
    /// [`SIMULATOR_PLACEHOLDER`] until the command has started the simulator and calls
    /// [`ClientConfig::with_origin`] with its URL.
    pub client: ClientConfig,
}

/// The origin a `--simulator` configuration holds before the simulator has a port.
pub const SIMULATOR_PLACEHOLDER: &str = "http://127.0.0.1/";

/// Validates the Payple flags and credentials. With `--simulator`, missing credentials
/// default to Payple's documented test partner.
pub fn payple_settings(args: &PaypleArgs, env: &dyn Env) -> Result<PaypleSettings, ConfigError> {
    let target = if args.simulator {
        PaypleTarget::Simulator
    } else {
        PaypleTarget::Origin(parse_origin(&args.payple_url)?)
    };
    let origin = match &target {
        PaypleTarget::Origin(url) => url.clone(),
        PaypleTarget::Simulator => parse_origin(SIMULATOR_PLACEHOLDER)?,
    };
    let (cst_id, cust_key, referer) = credentials(args, env, target == PaypleTarget::Simulator)?;
    if args.token_ttl < 2 {
        return Err(invalid("--token-ttl", "must be at least 2 seconds"));
    }
    if !(args.request_timeout > 0.0 && args.request_timeout <= 600.0) {
        return Err(invalid(
            "--request-timeout",
            "must be within (0, 600] seconds",
        ));
    }
    if args.max_attempts == 0 || args.max_attempts > 20 {
        return Err(invalid("--max-attempts", "must be within 1..=20"));
    }
    let codes = code_book(args)?;
    if args.outage_budget == 0 {
        return Err(invalid("--outage-budget", "must be at least 1 second"));
    }
    let request_timeout = Duration::from_secs_f64(args.request_timeout);
    let client = ClientConfig {
        origin,
        cst_id: SecretString::from(cst_id),
        cust_key: SecretString::from(cust_key),
        referer,
        token_ttl: Duration::from_secs(args.token_ttl),
        refresh_margin: Duration::from_secs(args.token_refresh_margin),
        request_timeout,
        connect_timeout: request_timeout.min(Duration::from_secs(5)),
        max_attempts: args.max_attempts,
        retry_base: Duration::from_millis(args.retry_base_ms.max(1)),
        retry_cap: Duration::from_secs(10),
        rate: NonZeroU32::new(args.rate).map(|per_second| Rate {
            per_second,
            share: NonZeroU32::MIN,
        }),
        codes,
        health: HealthConfig {
            budget: Duration::from_secs(args.outage_budget),
            probe_timeout: request_timeout * 2 + Duration::from_secs(1),
            ..HealthConfig::default()
        },
    };
    Ok(PaypleSettings { target, client })
}

/// The partner id, custKey and Referer from the environment (custKey from
/// `--cust-key-file` when given); for the simulator, the test partner's where unset.
pub(super) fn credentials(
    args: &PaypleArgs,
    env: &dyn Env,
    simulator: bool,
) -> Result<(String, String, String), ConfigError> {
    let or_test = |name: &'static str, test: &str| -> Result<String, ConfigError> {
        match env.var(name) {
            Some(v) => Ok(v),
            None if simulator => Ok(test.to_owned()),
            None => Err(ConfigError::MissingEnv(name)),
        }
    };
    let cst_id = or_test("PAYPLE_CST_ID", TEST_CST_ID)?;
    let cust_key = match &args.cust_key_file {
        Some(path) => read_small_file(path, MAX_CUST_KEY_FILE)
            .map(|s| s.trim().to_owned())
            .map_err(|source| ConfigError::CustKeyFile {
                path: path.clone(),
                source,
            })?,
        None => or_test("PAYPLE_CUST_KEY", TEST_CUST_KEY)?,
    };
    if cust_key.is_empty() {
        return Err(ConfigError::MissingEnv("PAYPLE_CUST_KEY"));
    }
    let referer = or_test("PAYPLE_REFERER", TEST_REFERER)?;
    if referer.parse::<reqwest::header::HeaderValue>().is_err() {
        return Err(invalid("PAYPLE_REFERER", "not a valid header value"));
    }
    Ok((cst_id, cust_key, referer))
}

/// The code book: defaults, `--gone-codes` replacing the gone codes, then `--codes FILE`
/// merged over them.
pub(super) fn code_book(args: &PaypleArgs) -> Result<CodeBook, ConfigError> {
    let mut codes = CodeBook::default();
    if let Some(gone) = &args.gone_codes {
        let gone: Vec<String> = gone
            .iter()
            .map(|c| c.trim().to_owned())
            .filter(|c| !c.is_empty())
            .collect();
        if gone.is_empty() {
            return Err(invalid("--gone-codes", "give at least one code"));
        }
        codes = codes
            .with_gone(gone)
            .map_err(|e| invalid("--gone-codes", e.to_string()))?;
    }
    if let Some(path) = &args.codes {
        let text = read_small_file(path, MAX_CODES_FILE)
            .map_err(|e| invalid("--codes", format!("{}: {e}", path.display())))?;
        codes = codes
            .merge_toml(&text)
            .map_err(|e| invalid("--codes", format!("{}: {e}", path.display())))?;
    }
    Ok(codes)
}
/// The most `--cust-key-file` may hold: a partner key is a few dozen characters.
pub const MAX_CUST_KEY_FILE: u64 = 4096;

/// The most a `--codes` file may hold: a code book of a few hundred codes is a few KiB,
/// and a file pointed at by mistake (a log, a dump, `/dev/zero`) is refused unread.
pub const MAX_CODES_FILE: u64 = 1024 * 1024;

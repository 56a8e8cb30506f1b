//! The per-key events' flags and secret (`--events-url`, `PAYPLE_EVENTS_SECRET` or
//! `--events-secret-file`, the budget and age), validated; and `events`, validated.

use std::time::Duration;

use super::database::{DatabaseSettings, database_settings};
use super::env::{Env, read_small_file};
use super::error::{ConfigError, invalid};
use crate::budget::parse_duration;
use crate::cli::{EventsArgs, EventsCmd};
use crate::events::{DeliveryConfig, Endpoint, Signer};

/// The most a secret file may hold.
const MAX_SECRET_FILE: u64 = 4096;

/// `events`, validated.
#[derive(Debug)]
pub enum EventsCmdSettings {
    Deliver {
        database: DatabaseSettings,
        config: DeliveryConfig,
        shutdown_grace: Duration,
    },
    List {
        database: DatabaseSettings,
        pending: bool,
    },
}

/// The delivery configuration, `None` without `--events-url`. A URL without a secret, a
/// secret that is not `whsec_<base64>`, or a bad duration stops here (exit 3). Neither the
/// URL nor the secret ever shows in an error.
pub fn events_settings(
    args: &EventsArgs,
    env: &dyn Env,
) -> Result<Option<DeliveryConfig>, ConfigError> {
    // Without a URL the secret is not read: a shared configuration may name the file on
    // hosts that deliver no events.
    let Some(url) = args.events_url.as_deref().filter(|u| !u.trim().is_empty()) else {
        return Ok(None);
    };
    let endpoint = Endpoint::parse(url).map_err(|why| invalid("--events-url", why))?;
    let (source, secret) = match &args.events_secret_file {
        Some(path) => (
            "--events-secret-file",
            read_small_file(path, MAX_SECRET_FILE).map_err(|e| {
                invalid(
                    "--events-secret-file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?,
        ),
        None => (
            "PAYPLE_EVENTS_SECRET",
            env.var("PAYPLE_EVENTS_SECRET")
                .ok_or(ConfigError::MissingEnv("PAYPLE_EVENTS_SECRET"))?,
        ),
    };
    let signer = Signer::parse(&secret).map_err(|e| invalid(source, e.to_string()))?;
    let budget = parse_duration(&args.events_budget).map_err(|e| invalid("--events-budget", e))?;
    let max_age =
        parse_duration(&args.events_max_age).map_err(|e| invalid("--events-max-age", e))?;
    if !(1..=64).contains(&args.events_concurrency) {
        return Err(invalid("--events-concurrency", "must be within 1..=64"));
    }
    if !(args.events_timeout > 0.0 && args.events_timeout <= 300.0) {
        return Err(invalid(
            "--events-timeout",
            "must be within (0, 300] seconds",
        ));
    }
    Ok(Some(DeliveryConfig {
        endpoint,
        signer,
        budget,
        concurrency: args.events_concurrency,
        timeout: Duration::from_secs_f64(args.events_timeout),
        backoff: Duration::from_millis(args.events_backoff_ms.max(1)),
        max_age,
    }))
}

pub(super) fn events_cmd_settings(
    cmd: EventsCmd,
    env: &dyn Env,
) -> Result<EventsCmdSettings, ConfigError> {
    Ok(match cmd {
        EventsCmd::Deliver(args) => EventsCmdSettings::Deliver {
            config: events_settings(&args.events, env)?.ok_or(ConfigError::MissingEnv(
                "PAYPLE_EVENTS_URL (or --events-url)",
            ))?,
            database: database_settings(args.database),
            shutdown_grace: Duration::from_secs(args.shutdown_grace),
        },
        EventsCmd::List(args) => EventsCmdSettings::List {
            database: database_settings(args.database),
            pending: args.pending,
        },
    })
}

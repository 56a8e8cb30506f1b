//! `simulate`, validated: the address to listen on and the simulator's configuration,
//! built from its flags (the fault fractions checked, the key file read).

use std::net::SocketAddr;
use std::time::Duration;

use super::error::ConfigError;
use crate::cli::SimulateArgs;
use crate::simulator::{Episode, Faults, KeyBook, SimConfig, SimError};

/// `simulate`, validated: where to listen and what to serve.
#[derive(Debug, Clone)]
pub struct SimulateSettings {
    pub addr: SocketAddr,
    pub config: SimConfig,
}

pub(super) fn simulate_settings(args: &SimulateArgs) -> Result<SimulateSettings, ConfigError> {
    Ok(SimulateSettings {
        addr: SocketAddr::new(args.bind, args.port),
        config: sim_config(args)?,
    })
}

/// The simulator's configuration from its flags: the faults checked, the key file read.
fn sim_config(flags: &SimulateArgs) -> Result<SimConfig, SimError> {
    let secs = |s: Option<u64>| s.map(Duration::from_secs);
    let faults = Faults {
        latency: Duration::from_millis(flags.latency_ms),
        jitter: Duration::from_millis(flags.jitter_ms),
        error_rate: flags.error_rate,
        drop_rate: flags.drop_rate,
        truncate_rate: flags.truncate_rate,
        garbage_rate: flags.garbage_rate,
        rate_limit: flags.rate_limit,
        retry_after: Duration::from_secs(flags.retry_after.max(1)),
        fail_first: flags.fail_first,
        outage: flags.outage_after_lookups.map(|after| Episode {
            what: flags.outage_status,
            after,
            secs: secs(flags.outage_secs),
        }),
        storm: flags.storm_code.clone().map(|code| Episode {
            what: code,
            after: flags.storm_after,
            secs: secs(flags.storm_secs),
        }),
        throttle: flags
            .throttle_after
            .map(|after| Episode::forever(flags.throttle_retry_after, after)),
        always_code: flags.always_code.clone(),
        huge_reply: None,
    };
    faults.validate()?;
    let keys = match &flags.keys {
        Some(path) => KeyBook::from_file(path)?,
        None => KeyBook::derived(),
    };
    Ok(SimConfig {
        token_ttl: Duration::from_secs(flags.token_ttl),
        keys,
        faults,
        request_log: flags.request_log.clone(),
        return_origin: flags.return_origin.clone(),
        seed: flags.seed,
        // Nothing reads them from another process; a long benchmark must not grow.
        keep_lookup_times: false,
        ..SimConfig::default()
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(argv: &[&str]) -> SimulateArgs {
        let argv = ["payple-reconcile", "simulate"]
            .into_iter()
            .chain(argv.iter().copied());
        match Cli::try_parse_from(argv).expect("valid flags").command {
            Command::Simulate(args) => args,
            other => panic!("not simulate: {other:?}"),
        }
    }

    #[test]
    fn defaults_are_loopback_and_fault_free() {
        let settings = simulate_settings(&parse(&[])).expect("valid");
        assert_eq!(settings.addr, "127.0.0.1:0".parse().expect("addr"));
        let config = settings.config;
        assert_eq!(config.faults, Faults::default());
        assert_eq!(config.token_ttl, Duration::from_secs(1800));
        assert!(matches!(config.keys, KeyBook::Derived));
        assert_eq!(config.partners.len(), 1);
    }

    #[test]
    fn flags_become_faults() {
        let settings = parse(&[
            "--latency-ms",
            "5",
            "--jitter-ms",
            "3",
            "--error-rate",
            "0.1",
            "--drop-rate",
            "0.05",
            "--rate-limit",
            "20",
            "--retry-after",
            "0",
            "--fail-first",
            "2",
            "--token-ttl",
            "1",
            "--seed",
            "9",
            "--return-origin",
            "https://evil.example",
        ]);
        let config = sim_config(&settings).expect("valid");
        assert_eq!(config.faults.latency, Duration::from_millis(5));
        assert_eq!(config.faults.jitter, Duration::from_millis(3));
        assert_eq!(config.faults.rate_limit, Some(20));
        assert_eq!(config.faults.retry_after, Duration::from_secs(1));
        assert_eq!(config.faults.fail_first, 2);
        assert_eq!(config.faults.outage, None);
        let episodes = sim_config(&parse(&[
            "--outage-after-lookups",
            "50",
            "--outage-secs",
            "20",
            "--outage-status",
            "500",
            "--storm-code",
            "SYS9999",
            "--storm-after",
            "7",
            "--always-code",
            "SPAY0001",
            "--throttle-after",
            "3",
            "--throttle-retry-after",
            "100000",
        ]))
        .expect("valid");
        let f = &episodes.faults;
        assert_eq!(
            f.outage,
            Some(Episode::lasting(500, 50, Duration::from_secs(20)))
        );
        assert_eq!(f.storm, Some(Episode::forever("SYS9999".to_owned(), 7)));
        assert_eq!(f.always_code.as_deref(), Some("SPAY0001"));
        assert_eq!(f.throttle, Some(Episode::forever(100_000, 3)));
        assert!(
            sim_config(&parse(&[
                "--outage-after-lookups",
                "1",
                "--outage-status",
                "404"
            ]))
            .is_err()
        );
        assert_eq!(config.token_ttl, Duration::from_secs(1));
        assert_eq!(config.seed, 9);
        assert_eq!(
            config.return_origin.as_deref(),
            Some("https://evil.example")
        );
    }

    #[test]
    fn bad_fractions_and_key_files_are_refused() {
        let err = sim_config(&parse(&["--drop-rate", "1.5"])).expect_err("bad rate");
        assert!(matches!(
            err,
            SimError::BadFraction {
                name: "drop_rate",
                ..
            }
        ));
        let err =
            sim_config(&parse(&["--keys", "/nonexistent/keys.jsonl"])).expect_err("missing file");
        assert!(matches!(err, SimError::KeyFileRead { .. }));
        assert!(
            matches!(ConfigError::from(err), ConfigError::Simulator(_)),
            "a bad simulator configuration is a configuration error (exit 3)"
        );
    }
}

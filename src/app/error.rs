//! Why a command stopped ([`AppError`], one variant per kind of failure) and the one place
//! an error becomes the process's exit code ([`AppError::exit_status`]).

use crate::exit::ExitStatus;
use crate::notify::NotifyError;
use crate::payple::PaypleError;
use crate::pipeline::RunError;
use crate::report::ReportError;
use crate::settings::ConfigError;
use crate::shutdown::Signal;
use crate::simulator::SimError;
use crate::source::SourceError;
use crate::store::StoreError;

/// What the command was doing with Payple when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaypleStep {
    /// Building the client from the configuration: always the configuration's fault.
    Building,
    /// The partner authentication: the configuration's fault or an outage.
    Authenticating,
}

/// Which simulator failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimulatorRole {
    /// `--simulator`: the built-in one on an ephemeral loopback port.
    BuiltIn,
    /// `simulate`: the one the user configured (faults, key file, address).
    Served,
}

/// Whose report failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportStep {
    /// A reading command (`report`, `changes`, `summary`, `notify`).
    Command,
    /// What `run` writes at its end (`--report`, `--metrics-file`): the run itself is done.
    AfterRun,
}

/// Why a command stopped. Each variant is one kind of failure; where the same error means
/// the user's mistake in one place and a failure underneath in another, the variant
/// carries the step. [`Self::exit_status`] decides the exit code.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{source}")]
    Payple {
        step: PaypleStep,
        source: PaypleError,
    },
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("{source}")]
    Report {
        step: ReportStep,
        source: ReportError,
    },
    /// The results database cannot be opened.
    #[error(transparent)]
    Database(#[from] StoreError),
    /// The source database cannot be opened (read-only).
    #[error(transparent)]
    Source(SourceError),
    #[error("{source}")]
    Simulator {
        role: SimulatorRole,
        source: SimError,
    },
    #[error("the built-in simulator's address {url}: {source}")]
    SimulatorUrl {
        url: String,
        #[source]
        source: url::ParseError,
    },
    #[error("cannot listen for signals: {0}")]
    Signals(#[source] std::io::Error),
    /// A signal ended the command while it was still waiting.
    #[error("stopped by {signal} while {doing}")]
    Stopped { signal: Signal, doing: &'static str },
    /// The command line could not be validated (the validating thread failed).
    #[error("cannot validate the command line: {0}")]
    Validation(String),
    /// The HTTP client for notifications could not be built.
    #[error(transparent)]
    Notify(NotifyError),
    /// `events deliver`: the outbox could not be read or written.
    #[error(transparent)]
    Events(Box<crate::events::EventsError>),
}

impl AppError {
    /// The exit code this error ends the process with: 3 for what the configuration or
    /// the user named wrongly, 1 for what failed underneath, a signal's code when one
    /// stopped the command. The one place an error becomes an exit code.
    pub fn exit_status(&self) -> ExitStatus {
        match self {
            Self::Config(_) | Self::Database(_) | Self::Source(_) => ExitStatus::Config,
            Self::Payple { step, source } => match step {
                PaypleStep::Building => ExitStatus::Config,
                PaypleStep::Authenticating if source.is_configuration() => ExitStatus::Config,
                PaypleStep::Authenticating => ExitStatus::Internal,
            },
            Self::Run(e) => e.exit_status(),
            Self::Report { step, source } => match step {
                ReportStep::Command => source.exit_status(),
                ReportStep::AfterRun => ExitStatus::Internal,
            },
            Self::Simulator { role, .. } => match role {
                SimulatorRole::Served => ExitStatus::Config,
                SimulatorRole::BuiltIn => ExitStatus::Internal,
            },
            Self::Stopped { signal, .. } => signal.exit_status(),
            Self::SimulatorUrl { .. }
            | Self::Signals(_)
            | Self::Validation(_)
            | Self::Notify(_)
            | Self::Events(_) => ExitStatus::Internal,
        }
    }

    /// Building the Payple client failed.
    pub fn building(source: PaypleError) -> Self {
        Self::Payple {
            step: PaypleStep::Building,
            source,
        }
    }

    /// The partner authentication failed.
    pub fn authenticating(source: PaypleError) -> Self {
        Self::Payple {
            step: PaypleStep::Authenticating,
            source,
        }
    }

    /// What `run` writes at its end failed.
    pub fn after_run(source: ReportError) -> Self {
        Self::Report {
            step: ReportStep::AfterRun,
            source,
        }
    }

    /// The simulator in `role` failed.
    pub fn simulator(role: SimulatorRole) -> impl FnOnce(SimError) -> Self {
        move |source| Self::Simulator { role, source }
    }
}

/// A reading command's report failed.
impl From<ReportError> for AppError {
    fn from(source: ReportError) -> Self {
        Self::Report {
            step: ReportStep::Command,
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_step_picks_the_code_of_the_same_error() {
        let client = || PaypleError::IncompleteAuth("Referer header value");
        assert_eq!(
            AppError::building(client()).exit_status(),
            ExitStatus::Config
        );
        let outage = || PaypleError::AuthUnavailable {
            attempts: 3,
            reason: "timed out".to_owned(),
        };
        assert_eq!(
            AppError::authenticating(client()).exit_status(),
            ExitStatus::Config
        );
        assert_eq!(
            AppError::authenticating(outage()).exit_status(),
            ExitStatus::Internal
        );
        assert_eq!(
            AppError::building(outage()).exit_status(),
            ExitStatus::Config
        );
        let unknown = || ReportError::NoSuchRun(9);
        assert_eq!(AppError::from(unknown()).exit_status(), ExitStatus::Config);
        assert_eq!(
            AppError::after_run(unknown()).exit_status(),
            ExitStatus::Internal
        );
        let bind = || SimError::NotLoopback(([10, 0, 0, 1], 80).into());
        assert_eq!(
            AppError::simulator(SimulatorRole::Served)(bind()).exit_status(),
            ExitStatus::Config
        );
        assert_eq!(
            AppError::simulator(SimulatorRole::BuiltIn)(bind()).exit_status(),
            ExitStatus::Internal
        );
    }

    #[test]
    fn a_signal_picks_its_own_code() {
        for signal in [Signal::Interrupt, Signal::Terminate] {
            let stopped = AppError::Stopped {
                signal,
                doing: "reading the configuration",
            };
            assert_eq!(stopped.exit_status(), signal.exit_status());
        }
    }
}

//! The process exit codes, one named value each, as README and `--help` document them.

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Every key resolved (`active` or `gone`), or the command did what it was asked.
    Success,
    /// An unexpected internal error (the database failed mid-run, a bug).
    Internal,
    /// The run finished but some keys are `failed` (or `rejected`).
    KeysFailed,
    /// Configuration or authentication error: nothing was checked (or the run stopped).
    Config,
    /// Payple stayed unavailable past the outage budget: the run is `interrupted` and
    /// resumable.
    Unavailable,
    /// Interrupted by SIGINT.
    Interrupted,
    /// Stopped by SIGTERM.
    Terminated,
}

impl ExitStatus {
    pub fn code(self) -> u8 {
        match self {
            Self::Success => 0,
            Self::Internal => 1,
            Self::KeysFailed => 2,
            Self::Config => 3,
            Self::Unavailable => 4,
            Self::Interrupted => 130,
            Self::Terminated => 143,
        }
    }
}

impl From<ExitStatus> for std::process::ExitCode {
    fn from(status: ExitStatus) -> Self {
        Self::from(status.code())
    }
}

/// The exit code table for `--help` and README.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0    every key resolved (active or gone)
  2    finished, but some keys failed (or were rejected as invalid input)
  3    configuration or authentication error; no key was checked (or the run stopped)
  4    Payple unavailable past --outage-budget; the run is interrupted and resumable
  1    unexpected internal error (e.g. the results database failed); the run is resumable
  130  interrupted by SIGINT;  143  stopped by SIGTERM (the run is resumable)";

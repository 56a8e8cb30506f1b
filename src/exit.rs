//! The process exit codes, one named value each: the one table of them. `--help`'s text is
//! generated from it, and a test checks README's `## Exit codes` table against it.

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
    /// Every status, in the order `--help` and README list them.
    pub const ALL: [ExitStatus; 7] = [
        Self::Success,
        Self::KeysFailed,
        Self::Config,
        Self::Unavailable,
        Self::Internal,
        Self::Interrupted,
        Self::Terminated,
    ];

    /// A command's keys: one `failed` or `rejected` key makes exit code 2.
    pub fn of_keys(any_unresolved: bool) -> Self {
        if any_unresolved {
            Self::KeysFailed
        } else {
            Self::Success
        }
    }

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

    /// What the code tells the caller, as `--help` prints it.
    pub fn meaning(self) -> &'static str {
        match self {
            Self::Success => "every key resolved (active or gone)",
            Self::KeysFailed => {
                "finished, but some keys failed (or were rejected as invalid input)"
            }
            Self::Config => {
                "configuration or authentication error; no key was checked (or the run stopped)"
            }
            Self::Unavailable => {
                "Payple unavailable past --outage-budget; the run is interrupted and resumable"
            }
            Self::Internal => {
                "unexpected internal error (e.g. the results database failed); the run is \
                 resumable"
            }
            Self::Interrupted => "interrupted by SIGINT (the run is resumable)",
            Self::Terminated => "stopped by SIGTERM (the run is resumable)",
        }
    }
}

impl From<ExitStatus> for std::process::ExitCode {
    fn from(status: ExitStatus) -> Self {
        Self::from(status.code())
    }
}

/// The exit code table for `--help`, one line per code, generated from [`ExitStatus::ALL`].
pub fn help_text() -> String {
    let mut text = String::from("Exit codes:");
    for status in ExitStatus::ALL {
        text.push_str(&format!("\n  {:<4} {}", status.code(), status.meaning()));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_listed_once_in_the_help() {
        let codes: Vec<u8> = ExitStatus::ALL.iter().map(|s| s.code()).collect();
        let mut unique = codes.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), codes.len(), "{codes:?}");
        let help = help_text();
        assert_eq!(help.lines().count(), 1 + codes.len(), "{help}");
        for status in ExitStatus::ALL {
            let line = format!("  {:<4} {}", status.code(), status.meaning());
            assert!(
                help.lines().any(|l| l == line),
                "{line:?} missing from {help}"
            );
        }
    }

    /// The codes in README's `## Exit codes` table (`| code | meaning |`, a row may name
    /// two codes as `130 / 143`).
    fn readme_codes(readme: &str) -> Vec<u8> {
        let section = readme
            .split("\n## ")
            .find(|s| s.starts_with("Exit codes"))
            .expect("README has a `## Exit codes` section");
        let mut codes = Vec::new();
        for row in section.lines().filter(|l| l.starts_with('|')).skip(2) {
            let cell = row.split('|').nth(1).unwrap_or_default();
            for code in cell.split('/') {
                let code = code.trim();
                codes.push(
                    code.parse()
                        .unwrap_or_else(|_| panic!("not a code: {code:?}")),
                );
            }
        }
        codes.sort_unstable();
        codes
    }

    #[test]
    fn readme_lists_the_same_codes_as_the_enum() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
        let readme = std::fs::read_to_string(path).expect("README.md");
        let mut codes: Vec<u8> = ExitStatus::ALL.iter().map(|s| s.code()).collect();
        codes.sort_unstable();
        assert_eq!(readme_codes(&readme), codes);
    }

    #[test]
    fn a_readme_table_missing_a_code_is_noticed() {
        let readme = "# x\n\n## Exit codes\n\n| code | meaning |\n| --- | --- |\n| 0 | ok |\n\
                      | 130 / 143 | signals |\n\n## Next\n| 9 | not this table |\n";
        assert_eq!(readme_codes(readme), vec![0, 130, 143]);
    }
}

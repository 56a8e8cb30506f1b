//! What a command prints on stdout: one JSON line ([`print_json`]), such as the line of
//! a command that ends with an error ([`ErrorLine`]).

use std::io::Write;

use serde::Serialize;

use crate::exit::ExitStatus;

/// The line a command that ends without its own output prints on stdout.
#[derive(Debug, Serialize)]
pub struct ErrorLine {
    pub error: String,
    pub exit_code: u8,
}

impl ErrorLine {
    pub fn new(status: ExitStatus, error: &dyn std::fmt::Display) -> Self {
        Self {
            error: error.to_string(),
            exit_code: status.code(),
        }
    }
}

/// Prints one JSON line on stdout.
pub fn print_json(value: &impl Serialize) {
    let mut out = std::io::stdout().lock();
    if let Ok(line) = serde_json::to_string(value) {
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

//! Why events could not be built, written or delivered ([`EventsError`]).

use crate::report::ReportError;
use crate::store::StoreError;

/// Why events could not be built, written or delivered.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("events: {0}")]
    Store(#[from] StoreError),
    #[error("events: {0}")]
    Read(#[from] ReportError),
    #[error("cannot build the HTTP client for events: {0}")]
    Client(#[source] reqwest::Error),
}

//! What a reader sends: items (a valid key, or a value that will not be sent) in chunks
//! of [`CHUNK`] on an [`ItemReceiver`], and waiting for the next chunk until a stop.

use tokio::sync::mpsc;

use super::error::SourceError;
use crate::domain::{PayerId, RejectReason};

/// Items per message on the channel from a reader to the pipeline.
pub const CHUNK: usize = 1000;

/// One input row: a key to check, or a value that will not be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Key {
        /// Position in the input (CSV line, or row number).
        seq: i64,
        id: PayerId,
        customer_ref: Option<String>,
    },
    Rejected {
        seq: i64,
        reason: RejectReason,
        customer_ref: Option<String>,
        /// Where it was: `file line N` or `row N`.
        location: String,
    },
}

impl Item {
    /// Validates a raw id read at `seq`; a reference longer than its column is cut.
    pub fn from_raw(
        seq: i64,
        raw: &str,
        mut customer_ref: Option<String>,
        location: impl FnOnce() -> String,
    ) -> Self {
        crate::domain::FieldBound::CustomerRef.apply(&mut customer_ref);
        match PayerId::parse(raw) {
            Ok(id) => Self::Key {
                seq,
                id,
                customer_ref,
            },
            Err(reason) => Self::Rejected {
                seq,
                reason,
                customer_ref,
                location: location(),
            },
        }
    }
}

/// A reader's output: chunks of items in order, or the error that ended it.
pub type ItemReceiver = mpsc::Receiver<Result<Vec<Item>, SourceError>>;

/// The next chunk from a reader, or `Some(None)` as soon as `stop` is cancelled: a reader
/// blocked on a pipe that stays open, a FIFO with no writer or a slow database is left
/// behind (its thread ends with the process). `None` when the reader is done.
pub async fn next_or_stop(
    items: &mut ItemReceiver,
    stop: &tokio_util::sync::CancellationToken,
) -> Option<Option<Result<Vec<Item>, SourceError>>> {
    if stop.is_cancelled() {
        return Some(None);
    }
    tokio::select! {
        biased;
        () = stop.cancelled() => Some(None),
        chunk = items.recv() => chunk.map(Some),
    }
}

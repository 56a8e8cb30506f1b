//! What one run needs from start to end ([`RunContext`]) and the lease it holds: the
//! state the run's steps (`run`, `lookups`, `end`) share.

use std::sync::Arc;
use std::time::Instant;

use crate::payple::PaypleClient;
use crate::settings::BatchSettings;
use crate::shutdown::Shutdown;
use crate::store::Store;

/// The lease this process holds, by name and holder.
pub(super) struct HeldLease {
    pub(super) name: String,
    pub(super) holder: String,
}

/// What one run needs from start to end.
pub(super) struct RunContext<'a> {
    pub(super) settings: &'a BatchSettings,
    pub(super) store: &'a Store,
    pub(super) client: Arc<PaypleClient>,
    pub(super) shutdown: &'a Shutdown,
    pub(super) started: Instant,
}

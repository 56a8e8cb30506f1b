//! Keeping runs from overlapping: a lease row with a heartbeat. A second run is refused
//! while the holder lives; a crashed holder's lease is taken over at once on the same
//! machine, or once it expires when the holder ran elsewhere (a Kubernetes retry pod).

use std::time::Duration;

use crate::shutdown::Shutdown;
use crate::store::time::time_text;
use crate::store::{Lease, Store, StoreError};

use super::error::RunError;

/// How long a lease lives without a heartbeat: a crashed run on another machine blocks
/// the next for this long.
pub const TTL: Duration = Duration::from_secs(60);
/// How often a running job renews its lease.
pub const HEARTBEAT: Duration = Duration::from_secs(15);
/// How often a waiting job looks at a lease it may inherit.
const POLL: Duration = Duration::from_secs(5);

/// This process as a lease holder: `host:pid:millis`, unique per start.
pub fn holder_name() -> String {
    format!(
        "{}:{}:{}",
        hostname(),
        std::process::id(),
        chrono::Utc::now().timestamp_millis()
    )
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// What can be known about a lease holder from here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// A process of this machine that still runs.
    Alive,
    /// A process of this machine that is gone.
    Dead,
    /// Another machine: only its heartbeat tells.
    Elsewhere,
}

/// Judges a holder name by this machine's process table.
pub fn holder_state(holder: &str) -> Holder {
    let mut parts = holder.rsplitn(3, ':');
    let (Some(_), Some(pid), Some(host)) = (parts.next(), parts.next(), parts.next()) else {
        return Holder::Elsewhere;
    };
    if host != hostname() {
        return Holder::Elsewhere;
    }
    match pid.parse::<u32>() {
        Ok(pid) if pid == std::process::id() => Holder::Alive,
        Ok(pid) if std::path::Path::new(&format!("/proc/{pid}")).exists() => Holder::Alive,
        Ok(_) => Holder::Dead,
        Err(_) => Holder::Elsewhere,
    }
}

/// Takes the lease `name` for this process. A crashed holder's lease is inherited by the
/// run it left (`resuming`), or by anyone when it died before creating a run: at once if
/// it ran here, after expiry if not (refused if its heartbeat moves). Any live holder
/// means another run is going on, and this one is refused.
pub async fn take(
    store: &Store,
    name: &str,
    holder: &str,
    resuming: Option<i64>,
    shutdown: &Shutdown,
) -> Result<(), RunError> {
    let run_id = resuming.unwrap_or(0);
    let held_run = match store.acquire_lease(name, run_id, holder, TTL).await {
        Ok(()) => return Ok(()),
        Err(StoreError::LeaseHeld {
            run_id: held_run, ..
        }) => held_run,
        Err(e) => return Err(e.into()),
    };
    // The run the holder may have left is ours to continue; a holder that died before it
    // created any run (run 0) left nothing to continue, and blocks nobody.
    let inherits = held_run == 0 || resuming == Some(held_run);
    let Some(first) = store.lease(name).await? else {
        // Released meanwhile: try once more.
        return Ok(store.acquire_lease(name, run_id, holder, TTL).await?);
    };
    match holder_state(&first.holder) {
        Holder::Alive => Err(held_error(name, held_run, &first)),
        Holder::Dead if !inherits => Err(held_error(name, held_run, &first)),
        // Waiting a minute for a machine that may still be working is for resumes only.
        Holder::Elsewhere if !inherits || resuming.is_none() => {
            Err(held_error(name, held_run, &first))
        }
        Holder::Dead => {
            tracing::info!(previous = %first.holder, "the lease holder's process is gone; taking its lease");
            if store
                .take_over_lease(name, &first.holder, run_id, holder, TTL)
                .await?
            {
                Ok(())
            } else {
                Err(held_error(name, held_run, &first))
            }
        }
        Holder::Elsewhere => {
            tracing::info!(
                previous = %first.holder,
                expires_at = %time_text(first.expires_at),
                "the run's lease is held on another machine; waiting for it to expire (a live holder renews it)"
            );
            wait_for_expiry(store, name, holder, run_id, held_run, first, shutdown).await
        }
    }
}

/// Polls a lease held elsewhere until it expires (then takes it) or its heartbeat moves
/// (its holder lives: refused).
async fn wait_for_expiry(
    store: &Store,
    name: &str,
    holder: &str,
    run_id: i64,
    held_run: i64,
    first: Lease,
    shutdown: &Shutdown,
) -> Result<(), RunError> {
    let deadline = tokio::time::Instant::now() + TTL + POLL;
    while tokio::time::Instant::now() < deadline {
        tokio::select! {
            _ = shutdown.stop.cancelled() => return Err(RunError::Interrupted),
            _ = tokio::time::sleep(POLL) => {}
        }
        match store.acquire_lease(name, run_id, holder, TTL).await {
            Ok(()) => return Ok(()),
            Err(StoreError::LeaseHeld { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        match store.lease(name).await? {
            Some(now) if now.holder != first.holder || now.heartbeat_at != first.heartbeat_at => {
                return Err(held_error(name, held_run, &now));
            }
            Some(_) => {}
            None => return Ok(store.acquire_lease(name, run_id, holder, TTL).await?),
        }
    }
    Err(held_error(name, held_run, &first))
}

fn held_error(name: &str, run_id: i64, lease: &Lease) -> RunError {
    RunError::Store(StoreError::LeaseHeld {
        name: name.to_owned(),
        run_id: if lease.run_id != 0 {
            lease.run_id
        } else {
            run_id
        },
        holder: lease.holder.clone(),
        expires_at: lease.expires_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders_are_judged_by_host_and_process() {
        let me = holder_name();
        assert_eq!(holder_state(&me), Holder::Alive);
        let gone = format!("{}:{}:1", hostname(), u32::MAX - 7);
        assert_eq!(holder_state(&gone), Holder::Dead);
        assert_eq!(holder_state("some-other-pod:1:1"), Holder::Elsewhere);
        assert_eq!(holder_state("garbage"), Holder::Elsewhere);
    }
}

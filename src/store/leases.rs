//! The run lease: one row per lease name, taken, renewed by a heartbeat, taken over when
//! expired or when its holder is known dead, and released.

use std::time::Duration;

use super::connect::Store;
use super::error::{StoreError, ctx};
use super::records::Lease;
use super::time::{read_time, time_text};
use sqlx::Row;

impl Store {
    /// Takes the named lease for `ttl`, unless a live holder has it.
    pub async fn acquire_lease(
        &self,
        name: &str,
        run_id: i64,
        holder: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let (now_s, expires) = stamps(ttl);
        let insert = self.dialect.insert_ignoring(
            "run_leases (name, run_id, holder, heartbeat_at, expires_at)",
            "(?, ?, ?, ?, ?)",
            "name",
        );
        // Whether the insert took the lease cannot be read from rows_affected: MySQL's
        // ON DUPLICATE KEY UPDATE reports 1 for an untouched row (CLIENT_FOUND_ROWS).
        sqlx::query(self.sql(&insert))
            .bind(name.to_owned())
            .bind(run_id)
            .bind(holder.to_owned())
            .bind(now_s.clone())
            .bind(expires.clone())
            .execute(&self.pool)
            .await
            .map_err(ctx("taking the run lease"))?;
        // Take over an expired lease.
        sqlx::query(self.sql(
            "UPDATE run_leases SET run_id = ?, holder = ?, heartbeat_at = ?, expires_at = ? \
             WHERE name = ? AND expires_at < ?",
        ))
        .bind(run_id)
        .bind(holder.to_owned())
        .bind(now_s.clone())
        .bind(expires)
        .bind(name.to_owned())
        .bind(now_s)
        .execute(&self.pool)
        .await
        .map_err(ctx("taking the run lease"))?;
        match self.lease(name).await? {
            Some(lease) if lease.holder == holder => Ok(()),
            Some(lease) => Err(StoreError::LeaseHeld {
                name: name.to_owned(),
                run_id: lease.run_id,
                holder: lease.holder,
                expires_at: lease.expires_at,
            }),
            // Released between the statements: take it again.
            None => Box::pin(self.acquire_lease(name, run_id, holder, ttl)).await,
        }
    }

    /// The lease row `name`, if any.
    pub async fn lease(&self, name: &str) -> Result<Option<Lease>, StoreError> {
        let row =
            sqlx::query(self.sql(
                "SELECT run_id, holder, heartbeat_at, expires_at FROM run_leases WHERE name = ?",
            ))
            .bind(name.to_owned())
            .fetch_optional(&self.pool)
            .await
            .map_err(ctx("reading the run lease"))?;
        row.map(|r| {
            let run_id = r.try_get(0)?;
            Ok(Lease {
                run_id,
                holder: r.try_get(1)?,
                heartbeat_at: read_time(2, "heartbeat_at", run_id, &r.try_get::<String, _>(2)?)?,
                expires_at: read_time(3, "expires_at", run_id, &r.try_get::<String, _>(3)?)?,
            })
        })
        .transpose()
        .map_err(ctx("reading the run lease"))
    }

    /// Takes the lease from `previous`, a holder known to be dead; false if it changed.
    pub async fn take_over_lease(
        &self,
        name: &str,
        previous: &str,
        run_id: i64,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let (now, expires) = stamps(ttl);
        let n = sqlx::query(self.sql(
            "UPDATE run_leases SET run_id = ?, holder = ?, heartbeat_at = ?, expires_at = ? \
             WHERE name = ? AND holder = ?",
        ))
        .bind(run_id)
        .bind(holder.to_owned())
        .bind(now)
        .bind(expires)
        .bind(name.to_owned())
        .bind(previous.to_owned())
        .execute(&self.pool)
        .await
        .map_err(ctx("taking the run lease over"))?
        .rows_affected();
        Ok(n > 0)
    }

    /// Names the run a lease protects, once it has an id.
    pub async fn set_lease_run(
        &self,
        name: &str,
        holder: &str,
        run_id: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(self.sql("UPDATE run_leases SET run_id = ? WHERE name = ? AND holder = ?"))
            .bind(run_id)
            .bind(name.to_owned())
            .bind(holder.to_owned())
            .execute(&self.pool)
            .await
            .map_err(ctx("recording the lease's run"))?;
        Ok(())
    }

    /// Extends the lease while the run is alive.
    pub async fn renew_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let (now, expires) = stamps(ttl);
        let n = sqlx::query(self.sql(
            "UPDATE run_leases SET heartbeat_at = ?, expires_at = ? WHERE name = ? AND holder = ?",
        ))
        .bind(now)
        .bind(expires)
        .bind(name.to_owned())
        .bind(holder.to_owned())
        .execute(&self.pool)
        .await
        .map_err(ctx("renewing the run lease"))?
        .rows_affected();
        Ok(n > 0)
    }

    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        sqlx::query(self.sql("DELETE FROM run_leases WHERE name = ? AND holder = ?"))
            .bind(name.to_owned())
            .bind(holder.to_owned())
            .execute(&self.pool)
            .await
            .map_err(ctx("releasing the run lease"))?;
        Ok(())
    }
}

/// Now and `ttl` from now, as stored.
fn stamps(ttl: Duration) -> (String, String) {
    let now = chrono::Utc::now();
    let expires = now + chrono::Duration::from_std(ttl).unwrap_or_default();
    (time_text(now), time_text(expires))
}

//! Re-checking failed keys: the result codes a run's failed rows carry, and, in one
//! transaction, the chosen failed keys made pending again (rows deleted, attempts kept in
//! `run_keys.prior_attempts`) with the run and their shards `running` again.
//!
//! The normal lookup loop then checks them like any pending key, and finishing the run
//! recounts its rows; a re-check cut short is continued by `--resume` like any run.

use super::connect::Store;
use super::error::{StoreError, ctx};
use sqlx::Row;

/// Failed rows of a run that share one result code (`None`: no code recorded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedCode {
    pub code: Option<String>,
    pub keys: i64,
}

/// Which failed rows a re-check takes: those whose code is in `codes`, and those without
/// a code when `uncoded`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FailedSelection {
    pub codes: Vec<String>,
    pub uncoded: bool,
}

impl FailedSelection {
    pub fn is_empty(&self) -> bool {
        self.codes.is_empty() && !self.uncoded
    }

    /// The selection in pieces of at most `per_piece` codes (the first piece carries
    /// `uncoded`), so no statement exceeds a database's bind-parameter limit.
    fn pieces(&self, per_piece: usize) -> Vec<(&[String], bool)> {
        let mut pieces: Vec<(&[String], bool)> = self
            .codes
            .chunks(per_piece.max(1))
            .map(|chunk| (chunk, false))
            .collect();
        match pieces.first_mut() {
            Some(first) => first.1 = self.uncoded,
            None if self.uncoded => pieces.push((&[], true)),
            None => {}
        }
        pieces
    }
}

/// Result codes per statement of a re-check.
const CODES_PER_STATEMENT: usize = 500;

/// `(col IN (?, …) OR col IS NULL)` for `codes` placeholders.
fn code_filter(column: &str, codes: usize, uncoded: bool) -> String {
    let listed = (codes > 0).then(|| format!("{column} IN ({})", vec!["?"; codes].join(", ")));
    let null = uncoded.then(|| format!("{column} IS NULL"));
    let parts: Vec<String> = listed.into_iter().chain(null).collect();
    format!("({})", parts.join(" OR "))
}

impl Store {
    /// The result codes of a run's failed rows (keys the run set out to check), with how
    /// many rows carry each.
    pub async fn failed_codes(&self, run_id: i64) -> Result<Vec<FailedCode>, StoreError> {
        let rows = sqlx::query(self.sql(
            "SELECT c.result_code, COUNT(*) FROM billing_key_checks c \
             WHERE c.run_id = ? AND c.status = 'failed' \
             AND EXISTS (SELECT 1 FROM run_keys k \
                         WHERE k.run_id = c.run_id AND k.payer_id = c.payer_id) \
             GROUP BY c.result_code ORDER BY c.result_code",
        ))
        .bind(run_id)
        .fetch_all(&self.pool)
        .await
        .map_err(ctx("reading the codes of failed keys"))?;
        rows.iter()
            .map(|r| {
                Ok(FailedCode {
                    code: r.try_get(0)?,
                    keys: r.try_get(1)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(ctx("reading the codes of failed keys"))
    }

    /// Makes the failed rows `selection` names pending again, in one transaction: each
    /// key's attempts so far go to `run_keys.prior_attempts`, its row is deleted, and the
    /// shards holding such keys and the run become `running`. Returns the keys reopened
    /// (0: nothing changed).
    pub async fn reopen_failed(
        &self,
        run_id: i64,
        selection: &FailedSelection,
    ) -> Result<u64, StoreError> {
        let doing = "reopening failed keys";
        let mut tx = self.pool.begin().await.map_err(ctx(doing))?;
        let mut reopened = 0u64;
        for (codes, uncoded) in selection.pieces(CODES_PER_STATEMENT) {
            let chosen = code_filter("c.result_code", codes.len(), uncoded);
            let shards = format!(
                "UPDATE run_shards SET state = 'running', finished_at = NULL \
                 WHERE run_id = ? AND shard_index IN (SELECT k.shard_index FROM run_keys k \
                 JOIN billing_key_checks c ON c.run_id = k.run_id AND c.payer_id = k.payer_id \
                 WHERE k.run_id = ? AND c.status = 'failed' AND {chosen})"
            );
            let prior = format!(
                "UPDATE run_keys SET prior_attempts = (SELECT c.attempts FROM billing_key_checks c \
                 WHERE c.run_id = run_keys.run_id AND c.payer_id = run_keys.payer_id) \
                 WHERE run_id = ? AND payer_id IN (SELECT c.payer_id FROM billing_key_checks c \
                 WHERE c.run_id = ? AND c.status = 'failed' AND {chosen})"
            );
            for sql in [shards, prior] {
                let mut query = sqlx::query(self.sql(&sql)).bind(run_id).bind(run_id);
                for code in codes {
                    query = query.bind(code.clone());
                }
                query.execute(&mut *tx).await.map_err(ctx(doing))?;
            }
            let delete = format!(
                "DELETE FROM billing_key_checks WHERE run_id = ? AND status = 'failed' AND {} \
                 AND EXISTS (SELECT 1 FROM run_keys k WHERE k.run_id = billing_key_checks.run_id \
                             AND k.payer_id = billing_key_checks.payer_id)",
                code_filter("billing_key_checks.result_code", codes.len(), uncoded)
            );
            let mut query = sqlx::query(self.sql(&delete)).bind(run_id);
            for code in codes {
                query = query.bind(code.clone());
            }
            reopened += query
                .execute(&mut *tx)
                .await
                .map_err(ctx(doing))?
                .rows_affected();
        }
        if reopened > 0 {
            sqlx::query(self.sql(
                "UPDATE reconcile_runs SET state = 'running', finished_at = NULL, error = NULL \
                 WHERE id = ?",
            ))
            .bind(run_id)
            .execute(&mut *tx)
            .await
            .map_err(ctx(doing))?;
        }
        tx.commit().await.map_err(ctx(doing))?;
        Ok(reopened)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_list_codes_and_null() {
        assert_eq!(code_filter("c.x", 2, false), "(c.x IN (?, ?))");
        assert_eq!(code_filter("c.x", 1, true), "(c.x IN (?) OR c.x IS NULL)");
        assert_eq!(code_filter("c.x", 0, true), "(c.x IS NULL)");
    }

    #[test]
    fn selections_split_into_pieces() {
        let codes: Vec<String> = (0..5).map(|i| format!("C{i}")).collect();
        let sel = FailedSelection {
            codes: codes.clone(),
            uncoded: true,
        };
        let pieces = sel.pieces(2);
        assert_eq!(pieces.len(), 3);
        assert_eq!(pieces[0], (&codes[0..2], true));
        assert_eq!(pieces[2], (&codes[4..5], false));
        let only_null = FailedSelection {
            codes: vec![],
            uncoded: true,
        };
        assert_eq!(only_null.pieces(2), vec![(&[][..], true)]);
        assert!(FailedSelection::default().pieces(2).is_empty());
        assert!(FailedSelection::default().is_empty());
    }
}

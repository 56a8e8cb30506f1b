//! Re-checking a run's failed keys (`run --recheck-failed`, or the same `--run-key` after a
//! night with transient failures): which failures a new lookup may change (a pure decision
//! over stored result codes, [`worth_rechecking`] and [`select`]), and the steps around it:
//! the failed keys of a run a re-check takes, made pending again (which run a re-check is
//! about is decided in [`super::plan`]).

use super::error::RunError;
use crate::payple::classify::{codes, is_transient_code};
use crate::payple::codebook::{CodeBook, CodeClass};
use crate::store::{FailedCode, FailedSelection, RunRecord, Store, StoreError, retrying};

/// Which failed rows a re-check takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Only failures that were not about the key (the default).
    Transient,
    /// Every failed row (`--all-failed`).
    AllFailed,
}

/// Whether a failed row with this result code is worth another lookup by default: the
/// failure said nothing definite about the key.
///
/// Yes: transport errors and timeouts, HTTP 408, 429 and 5xx, broken replies and replies
/// without a code, and the code book's transient, maintenance (`….9998`) and re-auth codes
/// (a token that expired), and any code the code book does not know.
/// No: the code book's gone, configuration (`….9991`, `AUTH000x`) and definite-failure
/// codes, a reply about another key (`PAYER_ID_MISMATCH`), an unknown pay type, other HTTP
/// 4xx answers, and rejected input.
pub fn worth_rechecking(code: Option<&str>, book: &CodeBook) -> bool {
    let Some(code) = code.map(str::trim).filter(|c| !c.is_empty()) else {
        return true;
    };
    if is_transient_code(code, book) {
        return true;
    }
    match book.class_of(code) {
        Some(CodeClass::Reauth | CodeClass::Transient | CodeClass::Maintenance) => true,
        Some(CodeClass::Gone | CodeClass::Config | CodeClass::Failed) => false,
        None => {
            let definite = code == codes::MISMATCH
                || code == codes::NO_PAY_TYPE
                || code.starts_with("REJECTED_")
                || code
                    .strip_prefix("HTTP_")
                    .is_some_and(|s| s.starts_with('4'));
            !definite
        }
    }
}

/// The failed rows `scope` takes among `failed`, and how many keys that is.
pub fn select(failed: &[FailedCode], scope: Scope, book: &CodeBook) -> (FailedSelection, i64) {
    let mut selection = FailedSelection::default();
    let mut keys = 0;
    for group in failed {
        if scope == Scope::Transient && !worth_rechecking(group.code.as_deref(), book) {
            continue;
        }
        keys += group.keys;
        match &group.code {
            Some(code) => selection.codes.push(code.clone()),
            None => selection.uncoded = true,
        }
    }
    (selection, keys)
}

/// The failed keys of `run` a re-check in `scope` takes, or `None` when there are none.
pub(super) async fn selection(
    store: &Store,
    run: &RunRecord,
    scope: Scope,
    book: &CodeBook,
) -> Result<Option<FailedSelection>, RunError> {
    let failed = store.failed_codes(run.id).await?;
    let (selection, keys) = select(&failed, scope, book);
    if selection.is_empty() {
        return Ok(None);
    }
    tracing::info!(
        run_id = run.id,
        keys,
        codes = %selection.codes.join(","),
        "re-checking failed keys of a completed run"
    );
    Ok(Some(selection))
}

/// Makes the selected failed keys of run `run_id` pending again (one transaction); the
/// note for the run's summary says how many, `None` when another process already had.
pub(super) async fn reopen(
    store: &Store,
    run_id: i64,
    selection: &FailedSelection,
) -> Result<Option<String>, StoreError> {
    let reopened = retrying(|| store.reopen_failed(run_id, selection)).await?;
    if reopened == 0 {
        return Ok(None);
    }
    tracing::info!(run_id, keys = reopened, "failed keys are pending again");
    Ok(Some(format!(
        "re-checking {reopened} failed keys of run {run_id}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(code: Option<&str>, keys: i64) -> FailedCode {
        FailedCode {
            code: code.map(str::to_owned),
            keys,
        }
    }

    #[test]
    fn failures_not_about_the_key_are_worth_a_new_lookup() {
        let book = CodeBook::default();
        for code in [
            "TRANSPORT_ERROR",
            "BAD_REPLY",
            "NO_RESULT_CODE",
            "HTTP_429",
            "HTTP_500",
            "HTTP_503",
            "HTTP_408",
            "AUTH0005",
            "SPAY0001",
            "CPAY9998",
            "ARSA9998",
            "CPAY9999",
            "SYS99999",
            "XPAY0042",
        ] {
            assert!(worth_rechecking(Some(code), &book), "{code}");
        }
        assert!(worth_rechecking(None, &book));
        assert!(worth_rechecking(Some(" "), &book));
    }

    #[test]
    fn definite_answers_are_not() {
        let book = CodeBook::default();
        for code in [
            "SPAY0005",
            "SPCD0001",
            "AUTH0004",
            "AUTH0006",
            "SPCD9991",
            "PAYER_ID_MISMATCH",
            "UNKNOWN_PAY_TYPE",
            "HTTP_404",
            "HTTP_403",
            "REJECTED_EMPTY",
        ] {
            assert!(!worth_rechecking(Some(code), &book), "{code}");
        }
        // The code book decides: a code configured as gone is no longer re-checked.
        let book = CodeBook::default()
            .with_gone(["XPAY0042".to_owned()])
            .expect("a valid gone code");
        assert!(!worth_rechecking(Some("XPAY0042"), &book));
        assert!(worth_rechecking(Some("SPAY0005"), &book));
    }

    #[test]
    fn selections_by_scope() {
        let book = CodeBook::default();
        let failed = [
            group(None, 1),
            group(Some("HTTP_500"), 30),
            group(Some("PAYER_ID_MISMATCH"), 2),
            group(Some("SYS9999"), 5),
        ];
        let (sel, keys) = select(&failed, Scope::Transient, &book);
        assert_eq!(keys, 36);
        assert!(sel.uncoded);
        assert_eq!(sel.codes, ["HTTP_500", "SYS9999"]);
        let (sel, keys) = select(&failed, Scope::AllFailed, &book);
        assert_eq!(keys, 38);
        assert_eq!(sel.codes.len(), 3);
        let (sel, keys) = select(&failed[2..3], Scope::Transient, &book);
        assert!(sel.is_empty());
        assert_eq!(keys, 0);
        assert!(select(&[], Scope::AllFailed, &book).0.is_empty());
    }
}

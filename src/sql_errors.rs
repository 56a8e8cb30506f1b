//! What a sqlx error says about the database, for both database users (the key source and
//! the results store): unreachable (the connection, the pool, the server's protocol) or
//! not.

/// Whether the database could not be reached or stopped answering (an I/O error, a pool
/// timed out or closed, a crashed worker, a broken protocol), rather than refusing the
/// query.
pub fn is_unreachable(error: &sqlx::Error) -> bool {
    matches!(
        error,
        sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Protocol(_)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_trouble_is_unreachable_and_a_refused_query_is_not() {
        assert!(is_unreachable(&sqlx::Error::PoolTimedOut));
        assert!(is_unreachable(&sqlx::Error::Protocol("eof".to_owned())));
        assert!(!is_unreachable(&sqlx::Error::RowNotFound));
        assert!(!is_unreachable(&sqlx::Error::ColumnNotFound(
            "x".to_owned()
        )));
    }
}

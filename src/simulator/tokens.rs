//! The simulator's token book: every token triple issued, valid until its own expiry,
//! and expired ones remembered a while to tell "expired" from "unknown".

use std::collections::HashMap;

use rand::Rng;
use rand::distr::Alphanumeric;
use tokio::time::Instant;

use super::php::EXPIRED_MEMORY;

/// The token triple a client presents (or the simulator issued).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Triple {
    pub(super) cst_id: String,
    pub(super) cust_key: String,
    pub(super) auth_key: String,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Issued {
    pub(super) partner: usize,
    pub(super) expires: Instant,
}

/// Every token triple issued, each valid until its own expiry; expired ones are kept a
/// while longer so that their use counts as "expired", not "unknown".
#[derive(Default)]
pub(super) struct TokenBook {
    pub(super) issued: HashMap<Triple, Issued>,
    pub(super) prune_at: usize,
}

impl TokenBook {
    pub(super) fn issue(&mut self, issued: Issued) -> Triple {
        if self.issued.len() >= self.prune_at {
            let now = Instant::now();
            self.issued
                .retain(|_, i| now.saturating_duration_since(i.expires) < EXPIRED_MEMORY);
            self.prune_at = (self.issued.len() * 2).max(1024);
        }
        let mut rng = rand::rng();
        let mut token = |len: usize| -> String {
            (&mut rng)
                .sample_iter(Alphanumeric)
                .take(len)
                .map(char::from)
                .collect()
        };
        let triple = Triple {
            cst_id: token(32),
            cust_key: token(40),
            auth_key: (0..32)
                .map(|_| format!("{:02x}", rng.random::<u8>()))
                .collect(),
        };
        self.issued.insert(triple.clone(), issued);
        triple
    }

    pub(super) fn find(&self, presented: &Triple) -> Option<Issued> {
        self.issued.get(presented).copied()
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_book_issues_fresh_triples() {
        let mut book = TokenBook::default();
        let issued = Issued {
            partner: 0,
            expires: Instant::now(),
        };
        let a = book.issue(issued);
        let b = book.issue(issued);
        assert_ne!(a, b);
        assert_eq!(a.auth_key.len(), 64);
        assert!(book.find(&a).is_some());
        let forged = Triple {
            cst_id: "test".to_owned(),
            ..a
        };
        assert!(book.find(&forged).is_none());
    }
}

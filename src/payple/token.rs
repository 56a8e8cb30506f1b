//! The partner-auth token triple shared by every lookup: when it counts as fresh, and the
//! single-flight gate that makes 64 lookups needing a new token send one auth request.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use secrecy::SecretString;
use url::Url;

/// The opaque tokens `auth.php` returned, and where lookups go.
#[derive(Debug)]
pub struct Token {
    /// Increases with every renewal, so a stale failure cannot invalidate a newer token.
    pub generation: u64,
    pub cst_id: SecretString,
    pub cust_key: SecretString,
    pub auth_key: SecretString,
    pub lookup_url: Url,
    pub issued_at: Instant,
}

/// When a token must be renewed: its lifetime, less a margin for requests in flight.
#[derive(Debug, Clone, Copy)]
pub struct Lifetime {
    pub ttl: Duration,
    pub margin: Duration,
}

impl Lifetime {
    /// The margin never exceeds half the lifetime, so a short TTL still gets some use.
    pub fn new(ttl: Duration, margin: Duration) -> Self {
        Self {
            ttl,
            margin: margin.min(ttl / 2),
        }
    }

    /// Whether a token issued at `issued_at` may still be used at `now`.
    pub fn is_fresh(&self, issued_at: Instant, now: Instant) -> bool {
        now.saturating_duration_since(issued_at) + self.margin < self.ttl
    }
}

/// Holds the current token. Reads are a short lock; renewal goes through [`Self::gate`] so
/// only one renewal runs at a time and waiters pick up its result.
#[derive(Debug)]
pub struct TokenSlot {
    current: Mutex<Option<Arc<Token>>>,
    /// The last generation issued; only ever goes up, even across invalidation.
    generations: AtomicU64,
    lifetime: Lifetime,
    /// Held while renewing.
    pub gate: tokio::sync::Mutex<()>,
}

impl TokenSlot {
    pub fn new(lifetime: Lifetime) -> Self {
        Self {
            current: Mutex::new(None),
            generations: AtomicU64::new(0),
            lifetime,
            gate: tokio::sync::Mutex::new(()),
        }
    }

    /// The current token if it is still fresh.
    pub fn fresh(&self) -> Option<Arc<Token>> {
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        current
            .as_ref()
            .filter(|t| self.lifetime.is_fresh(t.issued_at, Instant::now()))
            .cloned()
    }

    /// A new generation number for a token about to be stored.
    pub fn issue_generation(&self) -> u64 {
        self.generations.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn store(&self, token: Arc<Token>) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(token);
    }

    /// Drops the token of `generation` after Payple refused it; a newer one is kept.
    pub fn invalidate(&self, generation: u64) -> bool {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.as_ref().is_some_and(|t| t.generation == generation) {
            *current = None;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshness_respects_the_margin() {
        let life = Lifetime::new(Duration::from_secs(1800), Duration::from_secs(300));
        let t0 = Instant::now();
        assert!(life.is_fresh(t0, t0));
        assert!(life.is_fresh(t0, t0 + Duration::from_secs(1499)));
        assert!(!life.is_fresh(t0, t0 + Duration::from_secs(1500)));
    }

    #[test]
    fn margin_is_capped_at_half_the_ttl() {
        let life = Lifetime::new(Duration::from_secs(2), Duration::from_secs(300));
        assert_eq!(life.margin, Duration::from_secs(1));
        let t0 = Instant::now();
        assert!(life.is_fresh(t0, t0 + Duration::from_millis(900)));
        assert!(!life.is_fresh(t0, t0 + Duration::from_millis(1000)));
    }

    #[test]
    fn invalidation_only_hits_its_own_generation() {
        let slot = TokenSlot::new(Lifetime::new(
            Duration::from_secs(60),
            Duration::from_secs(1),
        ));
        let token = |generation| {
            Arc::new(Token {
                generation,
                cst_id: "a".into(),
                cust_key: "b".into(),
                auth_key: "c".into(),
                lookup_url: Url::parse("http://127.0.0.1/x").unwrap(),
                issued_at: Instant::now(),
            })
        };
        assert_eq!(slot.issue_generation(), 1);
        slot.store(token(1));
        assert_eq!(slot.issue_generation(), 2);
        slot.store(token(2));
        assert!(!slot.invalidate(1));
        assert!(slot.fresh().is_some());
        assert!(slot.invalidate(2));
        assert!(slot.fresh().is_none());
        // After invalidation, numbering goes on: a late refusal of token 2 cannot hit 3.
        assert_eq!(slot.issue_generation(), 3);
        slot.store(token(3));
        assert!(!slot.invalidate(2));
        assert!(slot.fresh().is_some());
    }
}

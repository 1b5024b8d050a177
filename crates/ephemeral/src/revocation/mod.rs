//! Revoked tokens: one token by its id (`jti`), or every token of a user
//! issued before a time.
//!
//! Each gateway keeps a copy of every revocation not yet expired
//! ([`RevocationSet`]), so [`Revocations::is_revoked`] is a local,
//! synchronous look-up, and tells of each new one on a broadcast channel
//! ([`Revocations::subscribe`]) so the gateway can close the sockets that
//! use a revoked token (4001). A revocation is kept while it can matter:
//! one token's until that token expires, a user's for the longest token
//! lifetime the cluster accepts (a token issued before the cut-off has
//! expired by then).
//!
//! [`MemoryRevocations`] is the copy alone; [`RedisRevocations`] also
//! stores each revocation in Redis and announces it on a channel that every
//! gateway's copy follows.

mod memory;
mod redis;

use std::collections::HashMap;
use std::sync::RwLock;

use async_trait::async_trait;
use collab_protocol::UserId;
use tokio::sync::broadcast;

pub use memory::MemoryRevocations;
pub use redis::RedisRevocations;

use crate::error::EphemeralError;
use crate::metrics::EphemeralMetrics;

/// One revocation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Revocation {
    /// The token whose `jti` claim is `jti`.
    Token {
        jti: String,
        /// The token's own expiry (seconds since the Unix epoch): the
        /// revocation is kept until then.
        expires_at: u64,
    },
    /// Every token of `user` whose `iat` is before `issued_before` (seconds
    /// since the Unix epoch), and every token of `user` without an `iat`.
    User {
        user: UserId,
        issued_before: u64,
        /// When the last token it covers has expired.
        expires_at: u64,
    },
}

impl Revocation {
    pub fn expires_at(&self) -> u64 {
        match self {
            Revocation::Token { expires_at, .. } | Revocation::User { expires_at, .. } => {
                *expires_at
            }
        }
    }

    /// Whether it covers `token`.
    pub fn covers(&self, token: &TokenRef<'_>) -> bool {
        match self {
            Revocation::Token { jti, .. } => token.jti == Some(jti.as_str()),
            Revocation::User {
                user,
                issued_before,
                ..
            } => {
                token.user == user.as_str()
                    && token.issued_at.is_none_or(|iat| iat < *issued_before)
            }
        }
    }
}

/// What a revocation check needs of a token's claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenRef<'a> {
    /// `sub`.
    pub user: &'a str,
    /// `jti`, if the token has one.
    pub jti: Option<&'a str>,
    /// `iat`, if the token has one.
    pub issued_at: Option<u64>,
}

/// The revoked tokens every gateway of a cluster refuses.
#[async_trait]
pub trait Revocations: Send + Sync + 'static {
    /// Revokes the token `jti`, which expires at `expires_at` (seconds since
    /// the Unix epoch). It is refused here at once; on other gateways
    /// within a second. An error means Redis did not take it: this gateway
    /// refuses it anyway and hands it to Redis once it is back.
    async fn revoke_token(&self, jti: &str, expires_at: u64) -> Result<(), EphemeralError>;

    /// Revokes every token of `user` issued before `issued_before` (seconds
    /// since the Unix epoch; tokens without `iat` too). Errors as
    /// [`revoke_token`](Self::revoke_token).
    async fn revoke_user(&self, user: &UserId, issued_before: u64) -> Result<(), EphemeralError>;

    /// Whether `token` is revoked, by what this gateway knows: a local
    /// look-up.
    fn is_revoked(&self, token: &TokenRef<'_>) -> bool;

    /// Every revocation this gateway learns from now on, once it is in the
    /// local copy (so `is_revoked` already says yes). A receiver that lags
    /// behind misses some: it should then check every token it holds with
    /// `is_revoked`.
    fn subscribe(&self) -> broadcast::Receiver<Revocation>;
}

/// The local copy: every revocation not yet expired, and the channel that
/// tells of new ones. Both implementations keep one.
pub(crate) struct RevocationSet {
    inner: RwLock<Known>,
    announce: broadcast::Sender<Revocation>,
    metrics: EphemeralMetrics,
}

#[derive(Default)]
struct Known {
    /// jti → expiry.
    tokens: HashMap<String, u64>,
    /// user → (issued before, expiry); the latest cut-off wins.
    users: HashMap<String, (u64, u64)>,
}

impl RevocationSet {
    pub(crate) fn new(metrics: EphemeralMetrics) -> Self {
        RevocationSet {
            inner: RwLock::new(Known::default()),
            announce: broadcast::channel(1024).0,
            metrics,
        }
    }

    /// Adds `revocation` unless it is expired or already known (or covered
    /// by a later cut-off); announces it if it is new. Returns whether it was.
    pub(crate) fn insert(&self, revocation: Revocation, now: u64) -> bool {
        if revocation.expires_at() <= now {
            return false;
        }
        let mut known = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let new = match &revocation {
            Revocation::Token { jti, expires_at } => match known.tokens.get_mut(jti) {
                Some(expiry) => {
                    *expiry = (*expiry).max(*expires_at);
                    false
                }
                None => {
                    known.tokens.insert(jti.clone(), *expires_at);
                    true
                }
            },
            Revocation::User {
                user,
                issued_before,
                expires_at,
            } => match known.users.get_mut(user.as_str()) {
                Some((before, expiry)) => {
                    *expiry = (*expiry).max(*expires_at);
                    let later = *issued_before > *before;
                    *before = (*before).max(*issued_before);
                    later
                }
                None => {
                    known
                        .users
                        .insert(user.as_str().to_owned(), (*issued_before, *expires_at));
                    true
                }
            },
        };
        if new {
            known.prune(now);
            self.metrics
                .revocations_known
                .set((known.tokens.len() + known.users.len()) as i64);
            drop(known);
            self.metrics.revocations_received.inc();
            let _ = self.announce.send(revocation);
        }
        new
    }

    pub(crate) fn is_revoked(&self, token: &TokenRef<'_>, now: u64) -> bool {
        let known = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let by_id = token
            .jti
            .and_then(|jti| known.tokens.get(jti))
            .is_some_and(|expiry| *expiry > now);
        by_id
            || known.users.get(token.user).is_some_and(|(before, expiry)| {
                *expiry > now && token.issued_at.is_none_or(|iat| iat < *before)
            })
    }

    /// Every revocation known and not expired.
    pub(crate) fn all(&self, now: u64) -> Vec<Revocation> {
        let known = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let tokens = known
            .tokens
            .iter()
            .filter(|(_, expiry)| **expiry > now)
            .map(|(jti, expiry)| Revocation::Token {
                jti: jti.clone(),
                expires_at: *expiry,
            });
        let users = known
            .users
            .iter()
            .filter(|(_, (_, expiry))| *expiry > now)
            .filter_map(|(user, (before, expiry))| {
                Some(Revocation::User {
                    user: UserId::parse(user.clone()).ok()?,
                    issued_before: *before,
                    expires_at: *expiry,
                })
            });
        tokens.chain(users).collect()
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Revocation> {
        self.announce.subscribe()
    }
}

impl Known {
    fn prune(&mut self, now: u64) {
        self.tokens.retain(|_, expiry| *expiry > now);
        self.users.retain(|_, (_, expiry)| *expiry > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str) -> UserId {
        UserId::parse(id).expect("user id")
    }

    #[test]
    fn a_later_cut_off_replaces_an_earlier_one_and_expired_ones_are_ignored() {
        let set = RevocationSet::new(EphemeralMetrics::default());
        let mut news = set.subscribe();
        let now = 1_000;
        let rev = |before| Revocation::User {
            user: user("u"),
            issued_before: before,
            expires_at: now + 100,
        };
        assert!(set.insert(rev(500), now));
        assert!(
            !set.insert(rev(400), now),
            "an earlier cut-off adds nothing"
        );
        assert!(set.insert(rev(600), now));
        let token = |iat| TokenRef {
            user: "u",
            jti: None,
            issued_at: Some(iat),
        };
        assert!(set.is_revoked(&token(599), now));
        assert!(!set.is_revoked(&token(600), now));
        assert_eq!(news.try_recv().ok(), Some(rev(500)));
        assert_eq!(news.try_recv().ok(), Some(rev(600)));
        assert!(news.try_recv().is_err());

        let expired = Revocation::Token {
            jti: "old".into(),
            expires_at: now,
        };
        assert!(!set.insert(expired, now));
        // Once its time has passed, a revocation no longer counts.
        assert!(!set.is_revoked(&token(1), now + 100));
        assert!(set.all(now + 100).is_empty());
    }
}

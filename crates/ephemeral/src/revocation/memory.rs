//! Revocations of one process: the local copy alone.

use std::time::Duration;

use async_trait::async_trait;
use collab_protocol::UserId;
use tokio::sync::broadcast;

use super::{Revocation, RevocationSet, Revocations, TokenRef};
use crate::error::EphemeralError;
use crate::metrics::EphemeralMetrics;
use crate::unix_now_secs;

pub struct MemoryRevocations {
    set: RevocationSet,
    max_token_lifetime: Duration,
}

impl MemoryRevocations {
    pub fn new(max_token_lifetime: Duration, metrics: EphemeralMetrics) -> Self {
        MemoryRevocations {
            set: RevocationSet::new(metrics),
            max_token_lifetime,
        }
    }
}

#[async_trait]
impl Revocations for MemoryRevocations {
    async fn revoke_token(&self, jti: &str, expires_at: u64) -> Result<(), EphemeralError> {
        let revocation = Revocation::Token {
            jti: jti.to_owned(),
            expires_at,
        };
        self.set.insert(revocation, unix_now_secs());
        Ok(())
    }

    async fn revoke_user(&self, user: &UserId, issued_before: u64) -> Result<(), EphemeralError> {
        let revocation = Revocation::User {
            user: user.clone(),
            issued_before,
            expires_at: issued_before.saturating_add(self.max_token_lifetime.as_secs()),
        };
        self.set.insert(revocation, unix_now_secs());
        Ok(())
    }

    fn is_revoked(&self, token: &TokenRef<'_>) -> bool {
        self.set.is_revoked(token, unix_now_secs())
    }

    fn subscribe(&self) -> broadcast::Receiver<Revocation> {
        self.set.subscribe()
    }
}

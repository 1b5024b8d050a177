//! Revocations in Redis, followed by every gateway's local copy.
//!
//! Keys (after the key prefix):
//! - `revoked:tokens`: a sorted set, jti → the token's expiry;
//! - `revoked:users`: a sorted set, `"{issued_before}:{user}"` → expiry;
//! - channel `revocations`: `token {expires_at} {jti}` or
//!   `user {expires_at} {issued_before} {user}`.
//!
//! A revocation is stored and announced by one script call (`revoke.lua`).
//! Each gateway subscribes to the channel, then loads both sets — at start
//! and again after every reconnect, since announcements made while it was
//! away are lost — and writes back whatever it knows that Redis does not
//! (Redis restarted empty, or a revocation was made through this gateway
//! while Redis was down), so the other gateways learn it too.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use collab_protocol::UserId;
use redis::Script;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use super::{Revocation, RevocationSet, Revocations, TokenRef};
use crate::client::RedisClient;
use crate::error::EphemeralError;
use crate::metrics::Op;
use crate::task::TaskGuard;
use crate::unix_now_secs;

/// How often a failed load is tried again while Redis answers.
const RETRY_EVERY: Duration = Duration::from_millis(500);

pub struct RedisRevocations {
    shared: Arc<Shared>,
    _follow: TaskGuard,
}

struct Shared {
    client: RedisClient,
    set: RevocationSet,
    max_token_lifetime: Duration,
    tokens_key: String,
    users_key: String,
    channel: String,
    revoke: Script,
}

impl RedisRevocations {
    pub fn new(client: RedisClient, max_token_lifetime: Duration) -> Self {
        let shared = Arc::new(Shared {
            set: RevocationSet::new(client.metrics().clone()),
            max_token_lifetime,
            tokens_key: client.key("revoked:tokens"),
            users_key: client.key("revoked:users"),
            channel: client.key("revocations"),
            revoke: Script::new(include_str!("revoke.lua")),
            client,
        });
        let follow = TaskGuard::spawn(follow(shared.clone()));
        RedisRevocations {
            shared,
            _follow: follow,
        }
    }
}

#[async_trait]
impl Revocations for RedisRevocations {
    async fn revoke_token(&self, jti: &str, expires_at: u64) -> Result<(), EphemeralError> {
        let revocation = Revocation::Token {
            jti: jti.to_owned(),
            expires_at,
        };
        self.shared.revoke(revocation).await
    }

    async fn revoke_user(&self, user: &UserId, issued_before: u64) -> Result<(), EphemeralError> {
        let revocation = Revocation::User {
            user: user.clone(),
            issued_before,
            expires_at: issued_before.saturating_add(self.shared.max_token_lifetime.as_secs()),
        };
        self.shared.revoke(revocation).await
    }

    fn is_revoked(&self, token: &TokenRef<'_>) -> bool {
        self.shared.set.is_revoked(token, unix_now_secs())
    }

    fn subscribe(&self) -> broadcast::Receiver<Revocation> {
        self.shared.set.subscribe()
    }
}

// === impl Shared ===

impl Shared {
    /// Into the local copy first: this gateway refuses the token even if
    /// Redis does not take it.
    async fn revoke(&self, revocation: Revocation) -> Result<(), EphemeralError> {
        let now = unix_now_secs();
        if revocation.expires_at() <= now {
            return Ok(());
        }
        self.set.insert(revocation.clone(), now);
        self.store(&revocation).await
    }

    async fn store(&self, revocation: &Revocation) -> Result<(), EphemeralError> {
        let (key, member, message) = match revocation {
            Revocation::Token { jti, expires_at } => (
                &self.tokens_key,
                jti.clone(),
                format!("token {expires_at} {jti}"),
            ),
            Revocation::User {
                user,
                issued_before,
                expires_at,
            } => (
                &self.users_key,
                format!("{issued_before}:{user}"),
                format!("user {expires_at} {issued_before} {user}"),
            ),
        };
        let mut invocation = self.revoke.prepare_invoke();
        invocation
            .key(key)
            .arg(member)
            .arg(revocation.expires_at())
            .arg(&self.channel)
            .arg(message);
        self.client
            .call(Op::Revoke, |mut c| async move {
                invocation.invoke_async::<i64>(&mut c).await
            })
            .await
            .map(|_| ())
    }

    /// Loads every revocation Redis holds into the local copy (announcing
    /// the new ones), then writes back what only the local copy has.
    async fn resync(&self) -> Result<(), EphemeralError> {
        let now = unix_now_secs();
        let since = format!("({now}");
        let (tokens, users) = self
            .client
            .call(Op::RevocationsLoad, |mut c| {
                let mut pipe = redis::pipe();
                pipe.cmd("ZRANGEBYSCORE")
                    .arg(&self.tokens_key)
                    .arg(&since)
                    .arg("+inf")
                    .arg("WITHSCORES")
                    .cmd("ZRANGEBYSCORE")
                    .arg(&self.users_key)
                    .arg(&since)
                    .arg("+inf")
                    .arg("WITHSCORES");
                async move {
                    pipe.query_async::<(Vec<(String, f64)>, Vec<(String, f64)>)>(&mut c)
                        .await
                }
            })
            .await?;

        let mut stored_tokens = HashSet::new();
        for (jti, expiry) in tokens {
            stored_tokens.insert(jti.clone());
            self.set.insert(
                Revocation::Token {
                    jti,
                    expires_at: expiry as u64,
                },
                now,
            );
        }
        let mut stored_users: HashMap<String, u64> = HashMap::new();
        for (member, expiry) in users {
            let Some(revocation) = parse_user_member(&member, expiry as u64) else {
                tracing::warn!(member, "ignoring a malformed user revocation in redis");
                continue;
            };
            if let Revocation::User {
                user,
                issued_before,
                ..
            } = &revocation
            {
                let before = stored_users.entry(user.as_str().to_owned()).or_default();
                *before = (*before).max(*issued_before);
            }
            self.set.insert(revocation, now);
        }

        for revocation in self.set.all(now) {
            let stored = match &revocation {
                Revocation::Token { jti, .. } => stored_tokens.contains(jti),
                Revocation::User {
                    user,
                    issued_before,
                    ..
                } => stored_users
                    .get(user.as_str())
                    .is_some_and(|before| before >= issued_before),
            };
            if !stored {
                self.store(&revocation).await?;
            }
        }
        Ok(())
    }

    /// A revocation announced on the channel.
    fn apply(&self, payload: &[u8]) {
        match std::str::from_utf8(payload).ok().and_then(parse_message) {
            Some(revocation) => {
                self.set.insert(revocation, unix_now_secs());
            }
            None => tracing::warn!(
                payload = %String::from_utf8_lossy(payload),
                "ignoring a malformed revocation message"
            ),
        }
    }
}

/// Follows the channel, and loads everything at start and after each
/// reconnect (or a lag of the local message queue).
async fn follow(shared: Arc<Shared>) {
    // Listen before subscribing, so nothing between the two is lost.
    let mut messages = shared.client.messages();
    let mut connected = shared.client.connected();
    let mut subscribed = false;
    let mut resync = true;
    loop {
        if resync && shared.client.is_up() {
            if !subscribed {
                subscribed = shared.client.subscribe(&shared.channel).await.is_ok();
            }
            if subscribed {
                match shared.resync().await {
                    Ok(()) => resync = false,
                    Err(e) => tracing::debug!(error = %e, "revocations not loaded yet"),
                }
            }
        }
        tokio::select! {
            changed = connected.changed() => {
                if changed.is_err() {
                    return;
                }
                resync = true;
            }
            message = messages.recv() => match message {
                Ok(message) if message.channel == shared.channel => shared.apply(&message.payload),
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => resync = true,
                Err(RecvError::Closed) => return,
            },
            _ = tokio::time::sleep(RETRY_EVERY), if resync => {}
        }
    }
}

/// `token {expires_at} {jti}` or `user {expires_at} {issued_before} {user}`.
fn parse_message(text: &str) -> Option<Revocation> {
    let (kind, rest) = text.split_once(' ')?;
    let (expires_at, rest) = rest.split_once(' ')?;
    let expires_at = expires_at.parse().ok()?;
    match kind {
        "token" if !rest.is_empty() => Some(Revocation::Token {
            jti: rest.to_owned(),
            expires_at,
        }),
        "user" => {
            let (before, user) = rest.split_once(' ')?;
            Some(Revocation::User {
                user: UserId::parse(user).ok()?,
                issued_before: before.parse().ok()?,
                expires_at,
            })
        }
        _ => None,
    }
}

/// `{issued_before}:{user}`.
fn parse_user_member(member: &str, expires_at: u64) -> Option<Revocation> {
    let (before, user) = member.split_once(':')?;
    Some(Revocation::User {
        user: UserId::parse(user).ok()?,
        issued_before: before.parse().ok()?,
        expires_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_parse_with_spaces_in_ids() {
        assert_eq!(
            parse_message("token 10 a b"),
            Some(Revocation::Token {
                jti: "a b".into(),
                expires_at: 10
            })
        );
        assert_eq!(
            parse_message("user 10 5 x: y"),
            Some(Revocation::User {
                user: UserId::parse("x: y").expect("user"),
                issued_before: 5,
                expires_at: 10
            })
        );
        assert_eq!(parse_message("token 10 "), None);
        assert_eq!(parse_message("user 10 5 "), None);
        assert_eq!(parse_message("other 10 5 u"), None);
        assert_eq!(parse_message("token x j"), None);
        assert_eq!(
            parse_user_member("7:a:b", 9),
            Some(Revocation::User {
                user: UserId::parse("a:b").expect("user"),
                issued_before: 7,
                expires_at: 9
            })
        );
    }
}

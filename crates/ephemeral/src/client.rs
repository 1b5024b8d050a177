//! The one connection to Redis that every use in a process shares.
//!
//! It is `redis`'s connection manager over RESP3: commands of every task
//! are multiplexed on one socket, pub/sub messages arrive on the same
//! socket, and a lost connection is re-established by the manager itself —
//! subscriptions included — without anyone asking. What this wrapper adds:
//! - a deadline on every round trip, so a caller never waits for Redis
//!   longer than [`RedisOptions::timeout`];
//! - the latency and error metrics of every round trip, by operation;
//! - whether Redis is up: every answer says yes, every failure and every
//!   dropped connection says no, and a PING every
//!   [`RedisOptions::probe_interval`] keeps the answer fresh (and makes the
//!   manager try again while Redis is away). A change is logged once —
//!   the first failure of an outage loudly — and [`RedisClient::connected`]
//!   tells whoever must catch up after a reconnect.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, IntoConnectionInfo, Msg, ProtocolVersion, PushInfo, PushKind, RedisResult};
use tokio::sync::{broadcast, watch};

use crate::error::EphemeralError;
use crate::metrics::{EphemeralMetrics, Op, OpLabel};
use crate::task::TaskGuard;

/// How to reach Redis.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisOptions {
    /// `redis://[user:password@]host:port[/db]` (plain TCP: the build has
    /// no TLS).
    pub url: String,
    /// Put before every key and channel name, so that several deployments
    /// (or tests) can share one Redis.
    pub key_prefix: String,
    /// The longest wait for one round trip; past it the call fails and
    /// Redis counts as unreachable.
    pub timeout: Duration,
    /// How often Redis is pinged, to notice an outage and its end.
    pub probe_interval: Duration,
}

impl RedisOptions {
    pub fn new(url: impl Into<String>) -> Self {
        RedisOptions {
            url: url.into(),
            key_prefix: "collab:".into(),
            timeout: Duration::from_millis(250),
            probe_interval: Duration::from_millis(500),
        }
    }
}

impl RedisOptions {
    /// Whether `url` is a Redis URL this build can use (a configuration
    /// check, before anything connects).
    pub fn check_url(url: &str) -> Result<(), EphemeralError> {
        url.into_connection_info()
            .map(|_| ())
            .map_err(|e| EphemeralError::BadUrl(e.to_string()))
    }
}

/// A pub/sub message.
#[derive(Debug, Clone)]
pub(crate) struct Message {
    pub channel: String,
    pub payload: Vec<u8>,
}

/// A shared connection to Redis; cheap to clone. Create it inside a tokio
/// runtime; its probe stops when the last clone is dropped.
#[derive(Clone)]
pub struct RedisClient {
    inner: Arc<Inner>,
    _probe: Arc<TaskGuard>,
}

struct Inner {
    manager: ConnectionManager,
    options: RedisOptions,
    health: Arc<Health>,
    messages: broadcast::Sender<Message>,
    metrics: EphemeralMetrics,
}

impl RedisClient {
    /// Sets up the connection without waiting for it: a gateway starts and
    /// serves with Redis down. Fails only on a URL that does not parse.
    pub fn connect(
        options: RedisOptions,
        metrics: EphemeralMetrics,
    ) -> Result<RedisClient, EphemeralError> {
        let info = options
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| EphemeralError::BadUrl(e.to_string()))?;
        let address = info.addr().to_string();
        // RESP3: pub/sub messages come on the command connection, and the
        // manager re-subscribes after a reconnect.
        let redis_settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let info = info.set_redis_settings(redis_settings);
        let client = Client::open(info).map_err(|e| EphemeralError::BadUrl(e.to_string()))?;

        metrics.set_redis_up(false);
        let health = Arc::new(Health {
            state: AtomicU8::new(UNKNOWN),
            closed: AtomicBool::new(false),
            connected: watch::channel(0).0,
            address,
            metrics: metrics.clone(),
        });
        let (messages, _) = broadcast::channel(1024);
        let push_health = health.clone();
        let push_messages = messages.clone();
        let on_push = move |push: PushInfo| -> Result<(), std::convert::Infallible> {
            if push.kind == PushKind::Disconnection {
                push_health.down("connection", "the connection closed");
            } else if let Some(msg) = Msg::from_push_info(push) {
                let _ = push_messages.send(Message {
                    channel: msg.get_channel_name().to_owned(),
                    payload: msg.get_payload_bytes().to_vec(),
                });
            }
            Ok(())
        };
        let config = ConnectionManagerConfig::new()
            .set_push_sender(on_push)
            .set_automatic_resubscription()
            .set_response_timeout(Some(options.timeout))
            .set_connection_timeout(Some(options.timeout.max(Duration::from_secs(1))))
            // After Redis comes back, the next attempt is at most a second away.
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1));
        let manager = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| EphemeralError::BadUrl(e.to_string()))?;

        let inner = Arc::new(Inner {
            manager,
            options,
            health,
            messages,
            metrics,
        });
        let probe = TaskGuard::spawn(probe(inner.clone()));
        Ok(RedisClient {
            inner,
            _probe: Arc::new(probe),
        })
    }

    /// Whether Redis answered the last time it was asked.
    pub fn is_up(&self) -> bool {
        self.inner.health.state.load(Ordering::Relaxed) == UP
    }

    /// Waits until Redis answers, at most `timeout`; whether it does.
    pub async fn wait_until_up(&self, timeout: Duration) -> bool {
        let mut connected = self.connected();
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.is_up() {
            if tokio::time::timeout_at(deadline, connected.changed())
                .await
                .is_err()
            {
                return self.is_up();
            }
        }
        true
    }

    pub fn options(&self) -> &RedisOptions {
        &self.inner.options
    }

    pub fn metrics(&self) -> &EphemeralMetrics {
        &self.inner.metrics
    }

    /// Changes each time Redis becomes reachable (the first time, and after
    /// every outage): the moment to catch up on what was missed.
    pub(crate) fn connected(&self) -> watch::Receiver<u64> {
        self.inner.health.connected.subscribe()
    }

    /// Messages of the channels this client subscribed to.
    pub(crate) fn messages(&self) -> broadcast::Receiver<Message> {
        self.inner.messages.subscribe()
    }

    /// `key_prefix` + `name`.
    pub(crate) fn key(&self, name: &str) -> String {
        format!("{}{name}", self.inner.options.key_prefix)
    }

    /// Subscribes to `channel` for good: the manager subscribes again after
    /// every reconnect.
    pub(crate) async fn subscribe(&self, channel: &str) -> Result<(), EphemeralError> {
        let channel = channel.to_owned();
        self.call(
            Op::Subscribe,
            |mut c| async move { c.subscribe(channel).await },
        )
        .await
    }

    /// One round trip: `f` gets the connection; the call is timed, bounded
    /// by the timeout and counted; its outcome says whether Redis is up.
    pub(crate) async fn call<T, F, Fut>(&self, op: Op, f: F) -> Result<T, EphemeralError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        self.inner.call(op, f).await
    }
}

// === impl Inner ===

impl Drop for Inner {
    fn drop(&mut self) {
        // Before the manager (a field) is dropped and its connection closes.
        self.health.closed.store(true, Ordering::Release);
    }
}

impl Inner {
    async fn call<T, F, Fut>(&self, op: Op, f: F) -> Result<T, EphemeralError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let started = Instant::now();
        let result = tokio::time::timeout(self.options.timeout, f(self.manager.clone())).await;
        let label = OpLabel { op: op.as_str() };
        self.metrics
            .redis_latency
            .get_or_create(&label)
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(Ok(value)) => {
                self.health.up();
                Ok(value)
            }
            Ok(Err(e)) => {
                self.metrics.redis_errors.get_or_create(&label).inc();
                let reason = e.to_string();
                if e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_timeout()
                    || e.is_unrecoverable_error()
                {
                    self.health.down(op.as_str(), &reason);
                } else {
                    // Redis answered, with an error: it is up, and this is
                    // a bug (a script, a key of the wrong type).
                    self.health.up();
                    tracing::warn!(op = op.as_str(), error = %reason, "redis answered an error");
                }
                Err(EphemeralError::Unavailable {
                    op: op.as_str(),
                    reason,
                })
            }
            Err(_) => {
                self.metrics.redis_errors.get_or_create(&label).inc();
                self.health.down(op.as_str(), "no answer in time");
                Err(EphemeralError::Timeout {
                    op: op.as_str(),
                    timeout: self.options.timeout,
                })
            }
        }
    }
}

async fn probe(inner: Arc<Inner>) {
    let interval = inner.options.probe_interval;
    loop {
        let _ = inner
            .call(Op::Ping, |mut c| async move {
                redis::cmd("PING").query_async::<()>(&mut c).await
            })
            .await;
        tokio::time::sleep(interval).await;
    }
}

// === impl Health ===

const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// Whether Redis answers, shared by the client and its push handler.
struct Health {
    state: AtomicU8,
    /// The client is gone: its connection closing is no outage.
    closed: AtomicBool,
    /// Bumped on every change to up.
    connected: watch::Sender<u64>,
    /// host:port, for the logs (the URL may hold a password).
    address: String,
    metrics: EphemeralMetrics,
}

impl Health {
    fn up(&self) {
        let before = self.state.swap(UP, Ordering::AcqRel);
        if before == UP {
            return;
        }
        self.metrics.set_redis_up(true);
        if before == DOWN {
            tracing::warn!(redis = %self.address, "redis is reachable again: shared rate limits, revocations and presence resume");
        } else {
            tracing::info!(redis = %self.address, "connected to redis");
        }
        self.connected.send_modify(|n| *n += 1);
    }

    /// `what` failed: an operation, or the connection itself.
    fn down(&self, what: &str, reason: &str) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        let before = self.state.swap(DOWN, Ordering::AcqRel);
        if before == DOWN {
            return;
        }
        self.metrics.set_redis_up(false);
        self.metrics.redis_outages.inc();
        tracing::error!(
            redis = %self.address,
            op = what,
            error = %reason,
            "redis is unreachable: rate limits fall back to this gateway's own buckets, \
             known revocations are still refused, presence goes stale"
        );
    }
}

//! The gateway's metrics. Labels are bounded: op kinds, error codes and
//! disconnect reasons, never a room or user id. Every labelled series
//! exists at 0 from the start, so an alert on its rate can fire on the
//! first increase.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use collab_protocol::{ErrorCode, OpKind};

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// Why a WebSocket connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disconnect {
    /// The client closed it, or its stream ended.
    Client,
    /// Closed by us with 1001 because the gateway drains.
    Shutdown,
    /// Closed by us with 1001 because the gateway was cut off from the
    /// cluster (`bus_lost_close_ms`): its clients resume elsewhere.
    BusLost,
    /// Closed with 4008: it did not read what it was sent.
    Slow,
    /// Closed with 4001: its token expired.
    Expired,
    /// Closed because the peer was silent past the idle timeout.
    Idle,
    /// Closed with 1009: it sent a message over the limit.
    TooBig,
    /// A read or write failed, or the peer broke the WebSocket protocol.
    Error,
}

impl Disconnect {
    pub const ALL: [Disconnect; 8] = [
        Disconnect::Client,
        Disconnect::Shutdown,
        Disconnect::BusLost,
        Disconnect::Slow,
        Disconnect::Expired,
        Disconnect::Idle,
        Disconnect::TooBig,
        Disconnect::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Disconnect::Client => "client",
            Disconnect::Shutdown => "shutdown",
            Disconnect::BusLost => "bus_lost",
            Disconnect::Slow => "slow",
            Disconnect::Expired => "expired",
            Disconnect::Idle => "idle",
            Disconnect::TooBig => "too_big",
            Disconnect::Error => "error",
        }
    }
}

/// Why the gateway turned a client away before serving it: the `reason`
/// label of `collab_gateway_refusals_total`.
pub const REFUSAL_REASONS: [&str; 6] = [
    "sockets_per_user",
    "sockets_per_address",
    "overloaded",
    "origin",
    "rooms_per_user",
    "members_per_room",
];

#[derive(Clone)]
pub struct GatewayMetrics {
    pub connections: Gauge,
    pub joins: Counter,
    pub ops: Family<KindLabel, Counter>,
    pub errors: Family<CodeLabel, Counter>,
    /// From an op arriving at the gateway to its ack leaving it: routing
    /// plus the room's durable commit.
    pub ack_latency: Histogram,
    pub slow_closes: Counter,
    pub gaps_fetched: Counter,
    pub disconnects: Family<ReasonLabel, Counter>,
    /// Connections closed with 4001 because their token was revoked (also
    /// counted in `disconnects` as `expired`).
    pub revocation_closes: Counter,
    /// New tokens accepted on open connections (`refresh`); refused ones
    /// are in `errors` as `unauthorized`.
    pub token_refreshes: Counter,
    /// Upgrades and requests refused by an abuse limit, by reason
    /// ([`REFUSAL_REASONS`]).
    pub refusals: Family<ReasonLabel, Counter>,
}

impl GatewayMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = GatewayMetrics {
            connections: Gauge::default(),
            joins: Counter::default(),
            ops: Family::default(),
            errors: Family::default(),
            ack_latency: Histogram::new(exponential_buckets(0.0002, 2.0, 16)),
            slow_closes: Counter::default(),
            gaps_fetched: Counter::default(),
            disconnects: Family::default(),
            revocation_closes: Counter::default(),
            token_refreshes: Counter::default(),
            refusals: Family::default(),
        };
        for reason in REFUSAL_REASONS {
            let _ = metrics.refusals.get_or_create(&ReasonLabel { reason });
        }
        for kind in OpKind::ALL {
            let _ = metrics.ops.get_or_create(&KindLabel {
                kind: kind.as_str(),
            });
        }
        for code in ErrorCode::ALL {
            let _ = metrics.errors.get_or_create(&CodeLabel {
                code: code.as_str(),
            });
        }
        for reason in Disconnect::ALL {
            let _ = metrics.disconnects.get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            });
        }
        let r = registry.sub_registry_with_prefix("collab_gateway");
        r.register(
            "connections",
            "Open WebSocket connections",
            metrics.connections.clone(),
        );
        r.register("joins", "Room joins answered", metrics.joins.clone());
        r.register("ops", "Ops received, by kind", metrics.ops.clone());
        r.register(
            "errors",
            "Error frames and responses sent, by code",
            metrics.errors.clone(),
        );
        r.register(
            "ack_latency_seconds",
            "Time from an op's arrival to its ack, including the durable commit",
            metrics.ack_latency.clone(),
        );
        r.register(
            "slow_closes",
            "Connections closed with 4008 because they did not read",
            metrics.slow_closes.clone(),
        );
        r.register(
            "gaps_fetched",
            "Times a room stream had a gap that was filled from the owner",
            metrics.gaps_fetched.clone(),
        );
        r.register(
            "disconnects",
            "WebSocket connections ended, by reason",
            metrics.disconnects.clone(),
        );
        r.register(
            "revocation_closes",
            "WebSocket connections closed with 4001 because their token was revoked",
            metrics.revocation_closes.clone(),
        );
        r.register(
            "token_refreshes",
            "New tokens accepted on open WebSocket connections (refresh frames)",
            metrics.token_refreshes.clone(),
        );
        r.register(
            "refusals",
            "Clients turned away by an abuse limit before being served, by reason",
            metrics.refusals.clone(),
        );
        metrics
    }

    /// A client turned away; `reason` is one of [`REFUSAL_REASONS`].
    pub fn refusal(&self, reason: &'static str) {
        debug_assert!(REFUSAL_REASONS.contains(&reason), "{reason}");
        self.refusals.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub fn error(&self, code: ErrorCode) {
        self.errors
            .get_or_create(&CodeLabel {
                code: code.as_str(),
            })
            .inc();
    }

    pub fn op(&self, kind: OpKind) {
        self.ops
            .get_or_create(&KindLabel {
                kind: kind.as_str(),
            })
            .inc();
    }

    pub fn disconnect(&self, reason: Disconnect) {
        self.disconnects
            .get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_op_kind_error_code_and_disconnect_reason_is_there_at_zero_from_the_start() {
        let mut registry = Registry::default();
        GatewayMetrics::register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        let mut expected: Vec<String> = Vec::new();
        for kind in OpKind::ALL {
            expected.push(format!(
                r#"collab_gateway_ops_total{{kind="{}"}} 0"#,
                kind.as_str()
            ));
        }
        for code in ErrorCode::ALL {
            expected.push(format!(
                r#"collab_gateway_errors_total{{code="{}"}} 0"#,
                code.as_str()
            ));
        }
        for reason in Disconnect::ALL {
            expected.push(format!(
                r#"collab_gateway_disconnects_total{{reason="{}"}} 0"#,
                reason.as_str()
            ));
        }
        for reason in REFUSAL_REASONS {
            expected.push(format!(
                r#"collab_gateway_refusals_total{{reason="{reason}"}} 0"#
            ));
        }
        for line in expected {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }
}

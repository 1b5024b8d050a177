//! The webhook dispatcher's metrics. Labels are bounded: the endpoint's
//! configured id and an outcome, never a room.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// What became of one delivery attempt, or of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered 2xx: the event is delivered.
    Delivered,
    /// An attempt failed (not 2xx, refused, timed out); it is retried.
    Failed,
    /// Still failing at the retry horizon: given up and skipped.
    Expired,
    /// A best-effort event dropped because its endpoint's queue was full.
    Dropped,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [
        Outcome::Delivered,
        Outcome::Failed,
        Outcome::Expired,
        Outcome::Dropped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Failed => "failed",
            Outcome::Expired => "expired",
            Outcome::Dropped => "dropped",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DeliveryLabels {
    pub endpoint: String,
    pub outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct EndpointLabel {
    pub endpoint: String,
}

#[derive(Clone, Default)]
pub struct WebhookMetrics {
    /// Delivery attempts and given-up events, by endpoint and outcome.
    pub deliveries: Family<DeliveryLabels, Counter>,
    /// Ops committed in the rooms this process dispatches that an endpoint
    /// has not been sent yet (nor skipped by its filters).
    pub lag: Family<EndpointLabel, Gauge>,
    /// Events waiting for their next attempt after a failure.
    pub retrying: Family<EndpointLabel, Gauge>,
}

impl WebhookMetrics {
    /// Registers the metrics with every endpoint's series at zero.
    pub fn register(registry: &mut Registry, endpoints: &[String]) -> Self {
        let metrics = Self::for_endpoints(endpoints);
        registry.register(
            "collab_webhook_deliveries",
            "Webhook delivery attempts and given-up events, by endpoint and outcome",
            metrics.deliveries.clone(),
        );
        registry.register(
            "collab_webhook_lag_events",
            "Committed ops of the rooms this process dispatches not yet sent to the endpoint",
            metrics.lag.clone(),
        );
        registry.register(
            "collab_webhook_retry_queue",
            "Webhook events waiting for their next attempt after a failure",
            metrics.retrying.clone(),
        );
        metrics
    }

    /// Unregistered metrics with every endpoint's series at zero.
    pub fn for_endpoints(endpoints: &[String]) -> Self {
        let metrics = WebhookMetrics::default();
        for endpoint in endpoints {
            for outcome in Outcome::ALL {
                let _ = metrics.deliveries.get_or_create(&DeliveryLabels {
                    endpoint: endpoint.clone(),
                    outcome: outcome.as_str(),
                });
            }
            let label = EndpointLabel {
                endpoint: endpoint.clone(),
            };
            let _ = metrics.lag.get_or_create(&label);
            let _ = metrics.retrying.get_or_create(&label);
        }
        metrics
    }

    pub fn count(&self, endpoint: &str, outcome: Outcome) {
        self.deliveries
            .get_or_create(&DeliveryLabels {
                endpoint: endpoint.to_owned(),
                outcome: outcome.as_str(),
            })
            .inc();
    }

    pub fn lag_of(&self, endpoint: &str) -> Gauge {
        self.lag
            .get_or_create(&EndpointLabel {
                endpoint: endpoint.to_owned(),
            })
            .clone()
    }

    pub fn retrying_of(&self, endpoint: &str) -> Gauge {
        self.retrying
            .get_or_create(&EndpointLabel {
                endpoint: endpoint.to_owned(),
            })
            .clone()
    }
}

//! Latency histograms that travel between processes, and the counters of a
//! run.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// An HDR histogram of microseconds (3 significant digits), serialisable
/// as its recorded `(value, count)` pairs.
#[derive(Debug, Clone)]
pub struct Hist(Histogram<u64>);

impl Default for Hist {
    fn default() -> Self {
        Hist::new()
    }
}

impl Hist {
    pub fn new() -> Hist {
        // 1 µs .. 1 h: fixed bounds, so recording never allocates.
        let h = Histogram::new_with_bounds(1, 3_600_000_000, 3)
            .unwrap_or_else(|e| panic!("histogram bounds: {e}"));
        Hist(h)
    }

    /// Records `us` microseconds (clamped into the histogram's range).
    pub fn record(&mut self, us: u64) {
        self.0.saturating_record(us.max(1));
    }

    pub fn add(&mut self, other: &Hist) {
        let _ = self.0.add(&other.0);
    }

    pub fn len(&self) -> u64 {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn reset(&mut self) {
        self.0.reset();
    }

    /// The value at quantile `q` in milliseconds.
    pub fn ms(&self, q: f64) -> f64 {
        self.0.value_at_quantile(q) as f64 / 1000.0
    }

    pub fn summary(&self) -> Latency {
        if self.is_empty() {
            return Latency::default();
        }
        Latency {
            count: self.len(),
            p50_ms: self.ms(0.5),
            p90_ms: self.ms(0.9),
            p99_ms: self.ms(0.99),
            p999_ms: self.ms(0.999),
            max_ms: self.0.max() as f64 / 1000.0,
            mean_ms: self.0.mean() / 1000.0,
        }
    }
}

impl Serialize for Hist {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let pairs: Vec<(u64, u64)> = self
            .0
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect();
        pairs.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Hist {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let pairs = Vec::<(u64, u64)>::deserialize(d)?;
        let mut h = Hist::new();
        for (value, count) in pairs {
            let _ = h.0.record_n(value.max(1), count);
        }
        Ok(h)
    }
}

/// A latency distribution, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

/// Everything one worker (or the whole run) counted. Adds up.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Counters {
    pub clients: u64,
    pub connect_failed: u64,
    pub join_failed: u64,
    /// Ops sent.
    pub ops_sent: u64,
    /// Op deliveries expected: every op to every member of its room, its
    /// sender included.
    pub ops_expected: u64,
    /// Op deliveries received in order, each exactly once.
    pub ops_delivered: u64,
    /// Expected deliveries that never came.
    pub ops_lost: u64,
    /// An op received again, or after a later op of the same sender.
    pub ops_duplicated_or_reordered: u64,
    /// collab: an op whose `seq` was not the previous one + 1.
    pub seq_errors: u64,
    pub acked: u64,
    /// Ops sent that were never acked.
    pub ack_missing: u64,
    pub cursors_sent: u64,
    /// Cursor deliveries if nothing were coalesced or dropped.
    pub cursors_expected: u64,
    pub cursors_delivered: u64,
    /// Connections closed by the server or failing before the end.
    pub disconnected: u64,
    /// Connections that answered a ping at the end.
    pub alive_at_end: u64,
    /// Error frames and other errors, by code.
    pub errors: BTreeMap<String, u64>,
}

impl Counters {
    pub fn add(&mut self, o: &Counters) {
        self.clients += o.clients;
        self.connect_failed += o.connect_failed;
        self.join_failed += o.join_failed;
        self.ops_sent += o.ops_sent;
        self.ops_expected += o.ops_expected;
        self.ops_delivered += o.ops_delivered;
        self.ops_lost += o.ops_lost;
        self.ops_duplicated_or_reordered += o.ops_duplicated_or_reordered;
        self.seq_errors += o.seq_errors;
        self.acked += o.acked;
        self.ack_missing += o.ack_missing;
        self.cursors_sent += o.cursors_sent;
        self.cursors_expected += o.cursors_expected;
        self.cursors_delivered += o.cursors_delivered;
        self.disconnected += o.disconnected;
        self.alive_at_end += o.alive_at_end;
        for (k, v) in &o.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
    }

    pub fn error(&mut self, code: impl Into<String>) {
        *self.errors.entry(code.into()).or_default() += 1;
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// No op lost, duplicated, reordered, out of seq or unacked, no error,
    /// every client connected, joined and alive.
    pub fn clean(&self) -> bool {
        self.connect_failed == 0
            && self.join_failed == 0
            && self.ops_lost == 0
            && self.ops_duplicated_or_reordered == 0
            && self.seq_errors == 0
            && self.ack_missing == 0
            && self.disconnected == 0
            && self.error_count() == 0
            && self.alive_at_end == self.clients
    }
}

/// The histograms of a worker or run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Hists {
    pub connect: Hist,
    pub join: Hist,
    /// Op sent (due time) → delivered to a member.
    pub op: Hist,
    /// Op sent (due time) → its ack at the sender.
    pub ack: Hist,
    /// Cursor sent (due time) → delivered.
    pub cursor: Hist,
    /// How late the generator sent, against the schedule (its own lag).
    pub send_lag: Hist,
}

impl Hists {
    pub fn add(&mut self, o: &Hists) {
        self.connect.add(&o.connect);
        self.join.add(&o.join);
        self.op.add(&o.op);
        self.ack.add(&o.ack);
        self.cursor.add(&o.cursor);
        self.send_lag.add(&o.send_lag);
    }
}

/// One second of a run, as a worker saw it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Tick {
    /// Seconds since the start.
    pub second: u64,
    pub ops_sent: u64,
    pub ops_delivered: u64,
    pub cursors_delivered: u64,
    pub errors: u64,
    /// Op delivery latency within this second.
    pub op: Hist,
    pub ack: Hist,
    /// Cursor delivery latency within this second: a stall of the whole
    /// server shows here too, one of the op path only does not.
    #[serde(default)]
    pub cursor: Hist,
}

impl Tick {
    pub fn add(&mut self, o: &Tick) {
        self.ops_sent += o.ops_sent;
        self.ops_delivered += o.ops_delivered;
        self.cursors_delivered += o.cursors_delivered;
        self.errors += o.errors;
        self.op.add(&o.op);
        self.ack.add(&o.ack);
        self.cursor.add(&o.cursor);
    }
}

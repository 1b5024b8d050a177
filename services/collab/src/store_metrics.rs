//! The embedded store's own figures on `/metrics`, read at each scrape
//! from [`EmbeddedStore::stats`]: how often it makes writes durable, how
//! long that takes, and how its checkpoints keep up.

use std::sync::{Arc, Weak};
use std::time::Duration;

use collab_store::EmbeddedStore;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// Registers the store's metrics. The registry holds the store weakly, so
/// it does not keep the store (and its writer thread) alive.
pub fn register(registry: &mut Registry, store: &Arc<EmbeddedStore>) {
    registry.register_collector(Box::new(StoreCollector {
        store: Arc::downgrade(store),
    }));
}

#[derive(Debug)]
struct StoreCollector {
    store: Weak<EmbeddedStore>,
}

impl Collector for StoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(store) = self.store.upgrade() else {
            return Ok(());
        };
        let stats = store.stats();
        let seconds = |d: Duration| d.as_secs_f64();
        for (name, help, value) in [
            (
                "collab_store_group_commits",
                "Groups of writes made durable together (one fsync each)",
                stats.transactions,
            ),
            (
                "collab_store_failed_commits",
                "Groups and checkpoint slices that failed (their writes were refused)",
                stats.failed_transactions,
            ),
            (
                "collab_store_appends",
                "Append batches made durable",
                stats.appends,
            ),
            ("collab_store_ops", "Ops made durable", stats.ops),
            (
                "collab_store_checkpoints",
                "Checkpoint cycles completed",
                stats.checkpoints,
            ),
            (
                "collab_store_checkpoint_slices",
                "Checkpoint slices committed (one fsync each)",
                stats.checkpoint_slices,
            ),
            (
                "collab_store_checkpointed_ops",
                "Ops moved from the journal into the log tables",
                stats.checkpointed_ops,
            ),
        ] {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        for (name, help, value) in [
            (
                "collab_store_commit_seconds",
                "Time spent making groups durable (journal write and fsync, redb commits)",
                seconds(stats.commit_time),
            ),
            (
                "collab_store_checkpoint_seconds",
                "Time spent in checkpoint slices",
                seconds(stats.checkpoint_time),
            ),
        ] {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        for (name, help, value) in [
            (
                "collab_store_longest_checkpoint_pause_seconds",
                "The longest writes waited for a checkpoint since the store opened",
                seconds(stats.longest_checkpoint_pause),
            ),
            (
                "collab_store_journaled_ops",
                "Ops in the journal not yet checkpointed (what a restart replays)",
                store.journaled_ops() as f64,
            ),
        ] {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

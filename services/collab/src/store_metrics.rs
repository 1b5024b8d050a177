//! The embedded store's own figures on `/metrics`, read at each scrape
//! from [`EmbeddedStore::stats`]: how often it makes writes durable, how
//! long that takes, and how its checkpoints keep up.

use std::sync::{Arc, Weak};
use std::time::Duration;

use collab_metrics::emit;
use collab_store::EmbeddedStore;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
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
        let e = &mut encoder;
        emit(
            e,
            "collab_store_group_commits",
            "Groups of writes made durable together (one fsync each)",
            ConstCounter::new(stats.transactions),
        )?;
        emit(
            e,
            "collab_store_failed_commits",
            "Groups and checkpoint slices that failed (their writes were refused)",
            ConstCounter::new(stats.failed_transactions),
        )?;
        emit(
            e,
            "collab_store_appends",
            "Append batches made durable",
            ConstCounter::new(stats.appends),
        )?;
        emit(
            e,
            "collab_store_ops",
            "Ops made durable",
            ConstCounter::new(stats.ops),
        )?;
        emit(
            e,
            "collab_store_checkpoints",
            "Checkpoint cycles completed",
            ConstCounter::new(stats.checkpoints),
        )?;
        emit(
            e,
            "collab_store_checkpoint_slices",
            "Checkpoint slices committed (one fsync each)",
            ConstCounter::new(stats.checkpoint_slices),
        )?;
        emit(
            e,
            "collab_store_checkpointed_ops",
            "Ops moved from the journal into the log tables",
            ConstCounter::new(stats.checkpointed_ops),
        )?;
        emit(
            e,
            "collab_store_commit_seconds",
            "Time spent making groups durable (journal write and fsync, redb commits)",
            ConstCounter::new(seconds(stats.commit_time)),
        )?;
        emit(
            e,
            "collab_store_checkpoint_seconds",
            "Time spent in checkpoint slices",
            ConstCounter::new(seconds(stats.checkpoint_time)),
        )?;
        emit(
            e,
            "collab_store_longest_checkpoint_pause_seconds",
            "The longest writes waited for a checkpoint since the store opened",
            ConstGauge::new(seconds(stats.longest_checkpoint_pause)),
        )?;
        emit(
            e,
            "collab_store_journaled_ops",
            "Ops in the journal not yet checkpointed (what a restart replays)",
            ConstGauge::new(store.journaled_ops() as f64),
        )?;
        Ok(())
    }
}

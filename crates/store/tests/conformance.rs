//! Runs the conformance suite on both in-process implementations; the
//! embedded store three times, so that reads are served from the journal
//! (default thresholds: the cases never fill it), from the log tables
//! (a checkpoint after every group), and from both at once.

mod memory {
    use std::sync::Arc;

    use collab_store::MemoryStore;

    collab_store::store_conformance_tests!(async { Arc::new(MemoryStore::new()) });
}

/// Opens an embedded store in a fresh temporary directory, returned with it
/// so that the directory outlives the store (the pair drops in order).
fn embedded(
    options: collab_store::EmbeddedStoreOptions,
) -> (
    std::sync::Arc<collab_store::EmbeddedStore>,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = collab_store::EmbeddedStore::open_with(
        dir.path().join(collab_store::EmbeddedStore::FILE_NAME),
        options,
    )
    .expect("open the store");
    (std::sync::Arc::new(store), dir)
}

mod embedded_journal {
    collab_store::store_conformance_tests!(async { super::embedded(Default::default()) });
}

mod embedded_checkpoint_every_group {
    collab_store::store_conformance_tests!(async {
        super::embedded(collab_store::EmbeddedStoreOptions {
            checkpoint_ops: 1,
            ..Default::default()
        })
    });
}

mod embedded_checkpoint_often {
    collab_store::store_conformance_tests!(async {
        super::embedded(collab_store::EmbeddedStoreOptions {
            checkpoint_ops: 7,
            ..Default::default()
        })
    });
}

//! Runs the conformance suite on both in-process implementations.

mod memory {
    use std::sync::Arc;

    use collab_store::MemoryStore;

    collab_store::store_conformance_tests!(async { Arc::new(MemoryStore::new()) });
}

mod embedded {
    use std::sync::Arc;

    use collab_store::EmbeddedStore;

    collab_store::store_conformance_tests!(async {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = EmbeddedStore::open_in_dir(dir.path()).expect("open the store");
        // The directory must outlive the store: the pair drops in order.
        (Arc::new(store), dir)
    });
}

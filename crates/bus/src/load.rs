//! What a process holds, for the operators' cluster view: the rooms its
//! room node has live and the connections its gateway has open. Each part
//! says how to count its own (a read of a gauge it keeps anyway), and the
//! figures are read when asked for: at every heartbeat by a cluster member,
//! which announces them in its membership record, and by `collab serve`'s
//! gateway when it shows its one node.

use std::sync::{Arc, Mutex};

/// Reads a figure; cheap and non-blocking (it runs in the heartbeat).
pub type Count = Arc<dyn Fn() -> u64 + Send + Sync>;

/// A figure of one part of the process, with the id that part goes by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Figure {
    /// The room node's node id, or the gateway's id.
    pub holder: String,
    pub value: u64,
}

/// How this process counts what it holds. A part that is not in the
/// process (a gateway's room node) counts nothing.
#[derive(Default)]
pub struct Load {
    rooms: Mutex<Option<(String, Count)>>,
    connections: Mutex<Option<(String, Count)>>,
}

impl std::fmt::Debug for Load {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Load")
            .field("rooms", &self.rooms())
            .field("connections", &self.connections())
            .finish()
    }
}

impl Load {
    /// The room node `node` counts its live rooms with `count`.
    pub fn count_rooms(
        &self,
        node: impl Into<String>,
        count: impl Fn() -> u64 + Send + Sync + 'static,
    ) {
        *lock(&self.rooms) = Some((node.into(), Arc::new(count)));
    }

    /// The gateway `gateway` counts its open connections with `count`.
    pub fn count_connections(
        &self,
        gateway: impl Into<String>,
        count: impl Fn() -> u64 + Send + Sync + 'static,
    ) {
        *lock(&self.connections) = Some((gateway.into(), Arc::new(count)));
    }

    /// The live rooms of this process's room node, if it has one.
    pub fn rooms(&self) -> Option<Figure> {
        read(&self.rooms)
    }

    /// The open connections of this process's gateway, if it has one.
    pub fn connections(&self) -> Option<Figure> {
        read(&self.connections)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Replacing a counter cannot be left half done by a panic.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn read(slot: &Mutex<Option<(String, Count)>>) -> Option<Figure> {
    // Cloned out so the count runs without the lock held.
    let (holder, count) = lock(slot).clone()?;
    Some(Figure {
        holder,
        value: count(),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    #[test]
    fn figures_are_read_when_asked_for() {
        let load = Load::default();
        assert_eq!((load.rooms(), load.connections()), (None, None));
        let open = Arc::new(AtomicU64::new(2));
        let counted = open.clone();
        load.count_connections("g1", move || counted.load(Ordering::Relaxed));
        let figure = |holder: &str, value| {
            Some(Figure {
                holder: holder.into(),
                value,
            })
        };
        assert_eq!(load.connections(), figure("g1", 2));
        open.store(5, Ordering::Relaxed);
        assert_eq!(load.connections(), figure("g1", 5));
        assert_eq!(load.rooms(), None);
        load.count_rooms("r1", || 7);
        assert_eq!(load.rooms(), figure("r1", 7));
    }
}

//! The thread `collab serve` runs its room node on: a single-threaded
//! tokio runtime of its own beside the process's runtime, which serves
//! the connections (ADR 0017).
//!
//! Why: near a full core, every task a room's op passes (its actor, twice,
//! around the store's commit) waited in one run queue behind every
//! connection that had a frame to write. On a thread of its own the room
//! node is scheduled by the kernel, which runs a thread that was asleep
//! soon after it wakes, so an op's turns no longer queue behind the
//! connections.

use std::future::Future;
use std::io;
use std::thread;

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The room node's runtime thread. Dropping it stops the runtime: the
/// tasks still on it are dropped, and the thread ends.
pub(crate) struct RoomsThread {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
}

impl RoomsThread {
    /// Starts the thread and its runtime.
    pub fn start() -> io::Result<RoomsThread> {
        let runtime = Builder::new_current_thread()
            .enable_all()
            .thread_name("collab-rooms")
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        thread::Builder::new()
            .name("collab-rooms".into())
            .spawn(move || {
                // Until the owner drops its end (or says stop).
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        Ok(RoomsThread {
            handle,
            stop: Some(stop),
        })
    }

    /// Runs `future` on the room node's thread; whatever it spawns (the
    /// room supervisor, the rooms' actors, their timers) runs there too.
    pub fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(future)
    }
}

impl Drop for RoomsThread {
    fn drop(&mut self) {
        // Not joined: the drop may run inside the process's runtime, which
        // must not block; the thread ends by itself once its runtime has
        // dropped the tasks left on it.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_spawned_work_on_its_own_thread_and_stops_when_dropped() {
        let rooms = RoomsThread::start().expect("thread");
        let name = rooms
            .spawn(async {
                // What a room spawns lands on the same thread.
                tokio::spawn(async { thread::current().name().map(str::to_owned) })
                    .await
                    .expect("inner task")
            })
            .await
            .expect("task");
        assert_eq!(name.as_deref(), Some("collab-rooms"));

        // A task still waiting when the thread stops is dropped with it.
        let (tx, rx) = oneshot::channel::<()>();
        let waiting = rooms.spawn(async move {
            let _keep = tx;
            std::future::pending::<()>().await;
        });
        drop(rooms);
        assert!(rx.await.is_err(), "the waiting task was dropped");
        assert!(waiting.await.expect_err("cancelled").is_cancelled());
    }
}

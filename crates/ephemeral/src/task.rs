//! Background tasks that end with their owner.

use tokio::task::AbortHandle;

/// Aborts its task when dropped: a background task holds what it works on,
/// and the value that owns the guard stops it by going away.
#[derive(Debug)]
pub(crate) struct TaskGuard(AbortHandle);

impl TaskGuard {
    pub(crate) fn spawn<F>(future: F) -> TaskGuard
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        TaskGuard(tokio::spawn(future).abort_handle())
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

//! SIGTERM and SIGINT: the first one starts a graceful drain, a second one
//! ends the process at once (for an operator who will not wait).

use std::future::Future;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;
use tracing::{info, warn};

/// Exit code after a second signal: 128 + SIGINT, as shells report an
/// interrupted command.
pub const EXIT_IMMEDIATELY: i32 = 130;

/// Installs the handlers now (so a signal that arrives during start-up is
/// not lost) and returns the future of the first signal. Must be called
/// inside a tokio runtime.
pub fn install() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (first_tx, first_rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        info!(
            signal = name,
            "shutting down gracefully; send it again to exit now"
        );
        let _ = first_tx.send(());
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        warn!(signal = name, "second signal: exiting now");
        std::process::exit(EXIT_IMMEDIATELY);
    });
    Ok(async move {
        // The sender lives as long as the runtime; an error means the
        // runtime is going away, which is a shutdown too.
        let _ = first_rx.await;
    })
}

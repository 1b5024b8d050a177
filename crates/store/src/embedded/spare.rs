//! Zero-filled journal segments, made ahead of time by a helper thread.
//!
//! `fdatasync` after an append that grows a file must also write the file's
//! new size (its inode) before it returns: two dependent writes and a cache
//! flush per group. Over blocks that already exist and were synced, it
//! writes the data and flushes, nothing else. On the reference machine that
//! made a group's sync 35% faster and cost 30% less CPU (see
//! `docs/benchmarks/log/store-and-cluster.md`). Writing the zeros must stay
//! off the writer's path, so this thread writes the next segment's file
//! while the current one fills, in small synced chunks with pauses between
//! them (the disk is the one the groups sync to); the journal renames it
//! into place only once it is whole. The spare's name never parses as a
//! segment's, so a spare left by a crash, whole or not, is never replayed,
//! only removed at the next open.

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// The zeros are written and synced this much at a time.
const CHUNK: usize = 1 << 20;
/// The helper rests this long after each chunk, so that the groups'
/// syncs never queue behind a long run of its writes.
const PAUSE: Duration = Duration::from_millis(5);

#[derive(Default)]
struct State {
    /// The journal asked for a spare and none is ready yet.
    wanted: bool,
    /// A whole spare waits under `path`.
    ready: bool,
    stop: bool,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Three flags, each set whole: a panic cannot leave them torn.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The helper thread and the spare it keeps.
pub(crate) struct Spares {
    shared: Arc<Shared>,
    /// Where the spare is made and waits (synced) until taken.
    path: PathBuf,
    bytes: u64,
    thread: Option<JoinHandle<()>>,
}

impl Spares {
    /// Removes a spare a previous process left at `path` and starts the
    /// helper, which makes a spare of `bytes` there whenever
    /// [`want`](Self::want) is called and none is ready.
    pub(crate) fn start(path: PathBuf, bytes: u64) -> io::Result<Spares> {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let thread = std::thread::Builder::new()
            .name("collab-store-spare".into())
            .spawn({
                let shared = Arc::clone(&shared);
                let path = path.clone();
                move || helper(&shared, &path, bytes)
            })?;
        Ok(Spares {
            shared,
            path,
            bytes,
            thread: Some(thread),
        })
    }

    /// Asks for a spare unless one is ready or being made. Cheap: call it
    /// as often as convenient.
    pub(crate) fn want(&self) {
        let mut state = self.shared.lock();
        if !state.ready && !state.wanted {
            state.wanted = true;
            self.shared.changed.notify_one();
        }
    }

    /// A spare's length.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether a spare is ready to [`take`](Self::take).
    #[cfg(test)]
    pub(crate) fn is_ready(&self) -> bool {
        self.shared.lock().ready
    }

    /// Moves the ready spare to `dest` (not synced: the caller syncs the
    /// directory) and returns its length; `None` if none is ready.
    pub(crate) fn take(&self, dest: &Path) -> io::Result<Option<u64>> {
        let mut state = self.shared.lock();
        if !state.ready {
            return Ok(None);
        }
        state.ready = false;
        std::fs::rename(&self.path, dest)?;
        Ok(Some(self.bytes))
    }
}

impl Drop for Spares {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.changed.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn helper(shared: &Shared, path: &Path, bytes: u64) {
    loop {
        {
            let mut state = shared.lock();
            while !state.wanted && !state.stop {
                state = shared
                    .changed
                    .wait(state)
                    .unwrap_or_else(|p| p.into_inner());
            }
            if state.stop {
                break;
            }
        }
        let made = fill(shared, path, bytes);
        let mut state = shared.lock();
        state.wanted = false;
        match made {
            Ok(true) => state.ready = true,
            Ok(false) => break,
            Err(e) => {
                // The journal grows its segment instead; the next `want`
                // tries again.
                tracing::warn!(error = %e, "journal: cannot prepare a spare segment");
            }
        }
    }
    // Stopped: a spare nobody took, whole or not, is of no use.
    let _ = std::fs::remove_file(path);
}

/// Writes `bytes` of zeros to a fresh `path`, chunk by chunk, each synced.
/// `Ok(false)` when told to stop part-way.
fn fill(shared: &Shared, path: &Path, bytes: u64) -> io::Result<bool> {
    let mut file: File = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)?;
    let zeros = vec![0u8; CHUNK];
    let mut written = 0u64;
    while written < bytes {
        if shared.lock().stop {
            return Ok(false);
        }
        let n = (bytes - written).min(CHUNK as u64) as usize;
        file.write_all(&zeros[..n])?;
        file.sync_data()?;
        written += n as u64;
        std::thread::sleep(PAUSE);
    }
    file.sync_all()?;
    Ok(true)
}

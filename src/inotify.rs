//! An inotify instance on tokio's reactor, closed off the worker threads.
//!
//! Used where the daemon waits for a file to change instead of polling it
//! (a cgroup's `cgroup.events`, a Slurm job's output files). Owns the only
//! `unsafe` these need: registering the descriptor with the reactor.
//!
//! Inotify instances are counted per user over the whole host
//! (`fs.inotify.max_user_instances`, 128 by default): [`Watch::new`] says
//! so with [`WatchError::Exhausted`], and callers fall back to polling.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::Path;

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Why a watch could not be set up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WatchError {
    /// Out of inotify instances or watches, or memory for them: poll.
    #[error("out of inotify instances or watches")]
    Exhausted(#[source] io::Error),
    /// Any other failure (the path is missing, no runtime with I/O).
    #[error("cannot watch the file")]
    Failed(#[source] io::Error),
}

/// One inotify instance watching one path.
pub(crate) struct Watch(Option<AsyncFd<InotifyFd>>);

impl Watch {
    /// Watches `path` for `events`.
    ///
    /// # Errors
    /// [`WatchError`].
    pub(crate) fn new(path: &Path, events: AddWatchFlags) -> Result<Self, WatchError> {
        let watched = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).and_then(|i| {
            i.add_watch(path, events)?;
            Ok(i)
        });
        match watched {
            Ok(inotify) => register(inotify)
                .map(|fd| Self(Some(fd)))
                .map_err(WatchError::Failed),
            Err(errno @ (Errno::EMFILE | Errno::ENFILE | Errno::ENOSPC | Errno::ENOMEM)) => {
                Err(WatchError::Exhausted(errno.into()))
            }
            Err(errno) => Err(WatchError::Failed(errno.into())),
        }
    }

    /// Resolves once at least one event arrived since the last call, and
    /// drains them all: callers re-read what they watch, so how many
    /// arrived does not matter.
    ///
    /// # Errors
    /// The OS error of the read.
    ///
    /// # Cancel safety
    /// Cancel safe: an event that arrives meanwhile is seen by the next call.
    pub(crate) async fn changed(&self) -> io::Result<()> {
        let inotify = self.0.as_ref().expect("taken only when dropped");
        let mut ready = inotify.readable().await?;
        loop {
            match ready.get_inner().0.read_events() {
                Ok(_) => continue,
                Err(Errno::EAGAIN) => {
                    ready.clear_ready();
                    return Ok(());
                }
                Err(errno) => return Err(errno.into()),
            }
        }
    }
}

/// Closes its inotify instance on tokio's blocking pool: closing one waits
/// for an SRCU grace period (`fsnotify_destroy_group`), 5-15 ms on the
/// 2-core machine, which would otherwise hold the runtime worker that
/// drops it. Deregistered from the reactor first, on the calling thread;
/// closed inline when there is no runtime to hand it to.
impl Drop for Watch {
    fn drop(&mut self) {
        let Some(inotify) = self.0.take() else { return };
        let inotify = inotify.into_inner();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            // The close needs nothing back; the pool finishes it even while
            // the runtime shuts down.
            drop(runtime.spawn_blocking(move || drop(inotify)));
        }
    }
}

/// An inotify instance as tokio needs it (`AsRawFd`).
struct InotifyFd(Inotify);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

fn register(inotify: Inotify) -> io::Result<AsyncFd<InotifyFd>> {
    // SAFETY: `Inotify` owns its descriptor (an `OwnedFd`) and closes it only
    // when dropped, so the fd stays open and the same for as long as the
    // `AsyncFd` holds it, which is `register_with_interest`'s contract.
    unsafe { AsyncFd::register_with_interest(InotifyFd(inotify), Interest::READABLE) }
        .map_err(io::Error::from)
}

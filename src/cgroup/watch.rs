//! Waiting for a v2 group to empty: inotify on its `cgroup.events`.
//!
//! The kernel raises IN_MODIFY on `cgroup.events` whenever one of its values
//! (`populated`, `frozen`) changes (cgroup-v2.rst, "Core Interface Files").
//! The watch is set up before the first read, so a change between the read
//! and the wait is not missed.
//!
//! The only `unsafe` of the module is here: registering the inotify
//! descriptor with tokio's reactor.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::Path;

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::error::CgroupError;
use super::{fs, parse};

/// True while the group of this `cgroup.events` file (or a descendant)
/// holds a process.
pub(super) fn populated(events: &Path) -> Result<bool, CgroupError> {
    let text = fs::read(events)?;
    match parse::keyed_value(events, &text, "populated")? {
        Some(value) => Ok(value != 0),
        None => Err(CgroupError::parse(events, &text)),
    }
}

/// Resolves once `events` says `populated 0`.
///
/// Out of inotify instances or watches (a per-user limit over the host),
/// it polls the file with backoff instead.
///
/// # Errors
/// [`CgroupError::Watch`] if inotify cannot be set up for another reason or
/// read (or there is no tokio runtime with I/O enabled);
/// [`CgroupError::Read`] if the file cannot be read (e.g. the group was
/// removed).
///
/// # Cancel safety
/// Cancel-safe: everything lives in the future and is dropped with it.
pub(super) async fn wait_unpopulated(events: &Path) -> Result<(), CgroupError> {
    let watch_error = |source: io::Error| CgroupError::Watch {
        path: events.to_owned(),
        source,
    };
    let watched = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).and_then(|i| {
        i.add_watch(events, AddWatchFlags::IN_MODIFY)?;
        Ok(i)
    });
    let inotify = match watched {
        Ok(inotify) => inotify,
        // Inotify instances and watches are counted per user over the whole
        // host (`max_user_instances` is 128 by default, and every job end
        // waiting at once holds one): out of them, re-read the file with
        // backoff instead, so a job's end still waits until it is empty.
        Err(errno @ (Errno::EMFILE | Errno::ENFILE | Errno::ENOSPC | Errno::ENOMEM)) => {
            tracing::warn!(error = %errno, path = %events.display(),
                "cannot watch the group's cgroup.events; polling it instead (raise fs.inotify.max_user_instances)");
            let mut backoff = fs::Backoff::new();
            while populated(events)? {
                tokio::time::sleep(backoff.next_delay()).await;
            }
            return Ok(());
        }
        Err(errno) => return Err(watch_error(errno.into())),
    };
    // Held to the end of the function, which closes the instance.
    let guard = ClosedOffWorker(Some(register(inotify).map_err(watch_error)?));
    let inotify = guard.0.as_ref().expect("taken only when dropped");
    loop {
        if !populated(events)? {
            return Ok(());
        }
        let mut ready = inotify.readable().await.map_err(watch_error)?;
        // Drain the queue; the next loop re-reads the file, so how many
        // events arrived does not matter.
        loop {
            match ready.get_inner().0.read_events() {
                Ok(_) => continue,
                Err(Errno::EAGAIN) => {
                    ready.clear_ready();
                    break;
                }
                Err(errno) => return Err(watch_error(errno.into())),
            }
        }
    }
}

/// An inotify instance as tokio needs it (`AsRawFd`).
struct InotifyFd(Inotify);

/// Closes its inotify instance on tokio's blocking pool when dropped:
/// closing one waits for an SRCU grace period (`fsnotify_destroy_group`),
/// 5-15 ms on the 2-core machine, which would otherwise hold the runtime
/// worker that ends each job. Deregistered from the reactor first, on the
/// calling thread; closed inline when there is no runtime to hand it to.
struct ClosedOffWorker(Option<AsyncFd<InotifyFd>>);

impl Drop for ClosedOffWorker {
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

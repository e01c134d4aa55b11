//! Waiting for a v2 group to empty: inotify on its `cgroup.events`.
//!
//! The kernel raises IN_MODIFY on `cgroup.events` whenever one of its values
//! (`populated`, `frozen`) changes (cgroup-v2.rst, "Core Interface Files").
//! The watch is set up before the first read, so a change between the read
//! and the wait is not missed.
//! The inotify instance is [`crate::inotify::Watch`]'s.

use std::io;
use std::path::Path;

use nix::sys::inotify::AddWatchFlags;

use crate::inotify::{Watch, WatchError};

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
    let watch = match Watch::new(events, AddWatchFlags::IN_MODIFY) {
        Ok(watch) => watch,
        // Inotify instances and watches are counted per user over the whole
        // host (`max_user_instances` is 128 by default, and every job end
        // waiting at once holds one): out of them, re-read the file with
        // backoff instead, so a job's end still waits until it is empty.
        Err(WatchError::Exhausted(e)) => {
            tracing::warn!(error = %e, path = %events.display(),
                "cannot watch the group's cgroup.events; polling it instead (raise fs.inotify.max_user_instances)");
            let mut backoff = fs::Backoff::new();
            while populated(events)? {
                tokio::time::sleep(backoff.next_delay()).await;
            }
            return Ok(());
        }
        Err(WatchError::Failed(e)) => return Err(watch_error(e)),
    };
    loop {
        if !populated(events)? {
            return Ok(());
        }
        watch.changed().await.map_err(watch_error)?;
    }
}

//! Room for job output on the output directory's file system, kept apart
//! from a free-space headroom that job output never takes.
//!
//! On a full disk the daemon must still record how jobs end and remove jobs
//! (which free space); the store's own reserve (`store/reserve.rs`) covers
//! that only once. So job output stops short of the disk's end: writers
//! spend a byte budget ([`DiskRoom::spend`], an atomic subtraction, no
//! syscall per write), and one monitor task sets the budget from
//! statvfs(3) of the directory (on the blocking pool): free space minus the
//! headroom. It checks again when writers have spent half the budget it
//! last set, at least every [`CHECK_EVERY`] while output is written or the
//! budget is used up, and when a job is removed; an idle daemon does not
//! poll. Each check also makes the store's reserve again if it was spent
//! and there is room.
//!
//! When the budget is used up, the jobs of the identity whose running jobs
//! had written the most when the room ran out are stopped (`output_failed`);
//! that choice holds until there is room again, so when its jobs have
//! ended no other identity takes its place. Every other job waits without
//! reading its pipes (its writes block) until there is room again. So one
//! identity filling the disk ends its own jobs, never another's.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::auth::Identity;
use crate::store::Store;

/// Default headroom: 64 MiB, room for the store to record thousands of job
/// ends and removals and to make its 1 MiB reserve again, small next to a
/// disk that holds job output. On a small file system it is a quarter of
/// its size instead ([`headroom_for`]).
pub const DEFAULT_HEADROOM: u64 = 64 << 20;

/// Longest time between two checks while output is written or jobs wait
/// for room: a disk filled by something else than job output is noticed
/// this late at most (writes then fail with ENOSPC and wait the same way).
const CHECK_EVERY: Duration = Duration::from_millis(250);

/// The budget shared by the monitor and every job's writer.
#[derive(Debug)]
pub(super) struct DiskRoom {
    /// Bytes output may still take before the next check; ≤ 0: none.
    budget: AtomicI64,
    /// The budget the last check set, to wake the monitor at half of it.
    last_set: AtomicI64,
    /// Output was written since the last check.
    written: AtomicBool,
    /// Wakes the monitor for a check now.
    check: Notify,
    /// True while there is room; writers without room wait for it.
    room: watch::Sender<bool>,
    /// The identity whose job is stopped in the current spell without
    /// room, chosen once per spell (see [`DiskRoom::culprit`]); `None` when
    /// there is room.
    culprit: std::sync::Mutex<Option<Option<Identity>>>,
}

impl Default for DiskRoom {
    fn default() -> Self {
        Self {
            // Until the first check: writers go ahead (the first check runs
            // before any job can start).
            budget: AtomicI64::new(i64::MAX),
            last_set: AtomicI64::new(i64::MAX),
            written: AtomicBool::new(false),
            check: Notify::new(),
            room: watch::Sender::new(true),
            culprit: std::sync::Mutex::new(None),
        }
    }
}

impl DiskRoom {
    /// True while output may be written.
    pub(super) fn has_room(&self) -> bool {
        self.budget.load(Ordering::Relaxed) > 0
    }

    /// Counts `bytes` written; wakes the monitor once half the budget is
    /// spent or none is left.
    pub(super) fn spend(&self, bytes: u64) {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        let left = self
            .budget
            .fetch_sub(bytes, Ordering::Relaxed)
            .saturating_sub(bytes);
        self.written.store(true, Ordering::Relaxed);
        if left <= 0 {
            self.room
                .send_if_modified(|room| std::mem::replace(room, false));
        }
        if left <= self.last_set.load(Ordering::Relaxed) / 2 {
            self.check.notify_one();
        }
    }

    /// A write failed for lack of space: no room until the next check says
    /// otherwise.
    pub(super) fn exhausted(&self) {
        self.budget.store(0, Ordering::Relaxed);
        self.room.send_replace(false);
        self.check.notify_one();
    }

    /// Space may have been freed (a job was removed): check now.
    pub(super) fn recheck(&self) {
        self.check.notify_one();
    }

    /// Resolves once there is room.
    ///
    /// # Cancel safety
    /// Cancel-safe: it only watches.
    pub(super) async fn wait_for_room(&self) {
        let mut rx = self.room.subscribe();
        // The sender lives as long as `self`.
        let _ = rx.wait_for(|room| *room).await;
    }

    /// True if `owner`'s jobs are the ones to stop now that there is no
    /// room: the identity `top_writer` names when the first job of this
    /// spell without room asks, the same for the whole spell. So after its
    /// job ended no other identity takes its place: the others wait.
    pub(super) fn culprit(
        &self,
        owner: Identity,
        top_writer: impl FnOnce() -> Option<Identity>,
    ) -> bool {
        let mut culprit = self.culprit.lock().unwrap_or_else(|p| p.into_inner());
        *culprit.get_or_insert_with(top_writer) == Some(owner)
    }

    fn set(&self, budget: i64) {
        if budget > 0 {
            // A new spell without room chooses again.
            *self.culprit.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
        self.last_set.store(budget, Ordering::Relaxed);
        self.budget.store(budget, Ordering::Relaxed);
        self.room.send_if_modified(|room| {
            let changed = *room != (budget > 0);
            *room = budget > 0;
            changed
        });
    }
}

/// The headroom kept on a file system of `total` bytes: `headroom`, but at
/// most a quarter of it.
pub(super) fn headroom_for(headroom: u64, total: u64) -> u64 {
    headroom.min(total / 4)
}

/// Free bytes for unprivileged writers and the size of the file system
/// holding `dir`.
fn statvfs(dir: &std::path::Path) -> std::io::Result<(u64, u64)> {
    let st = nix::sys::statvfs::statvfs(dir)?;
    let frsize = st.fragment_size() as u64;
    Ok((
        (st.blocks_available() as u64).saturating_mul(frsize),
        (st.blocks() as u64).saturating_mul(frsize),
    ))
}

/// What the monitor task needs.
pub(super) struct Monitor {
    pub room: Arc<DiskRoom>,
    pub dir: PathBuf,
    pub headroom: u64,
    pub store: Store,
    pub shutdown: CancellationToken,
}

/// Checks once, so that the budget is right before the first job starts.
pub(super) fn first_check(room: &DiskRoom, dir: &std::path::Path, headroom: u64) {
    match statvfs(dir) {
        Ok((avail, total)) => room.set(budget(avail, total, headroom)),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot read the free space of the output directory; job output is not kept from filling it")
        }
    }
}

fn budget(avail: u64, total: u64, headroom: u64) -> i64 {
    let left = i128::from(avail) - i128::from(headroom_for(headroom, total));
    left.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

/// The monitor task: sets the budget from the file system; see the module
/// doc for when.
pub(super) async fn run(m: Monitor) {
    loop {
        let dir = m.dir.clone();
        let checked = tokio::task::spawn_blocking(move || statvfs(&dir)).await;
        m.room.written.store(false, Ordering::Relaxed);
        let had_room = m.room.has_room();
        match checked {
            Ok(Ok((avail, total))) => {
                let budget = budget(avail, total, m.headroom);
                m.room.set(budget);
                if budget > 0 && !had_room {
                    tracing::info!(
                        free_bytes = avail,
                        "the output directory has room again; jobs waiting to write go on"
                    );
                }
                if budget <= 0 && had_room {
                    tracing::warn!(
                        free_bytes = avail,
                        headroom = headroom_for(m.headroom, total),
                        "the output directory's disk is down to its headroom; jobs wait to write, and the jobs of the identity writing the most are stopped"
                    );
                }
                if budget > 0 {
                    // A no-op while the reserve is in place.
                    m.store.replenish_reserve().await;
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read the output directory's free space")
            }
            Err(e) => tracing::warn!(error = %e, "free-space check did not run"),
        }
        let busy = !m.room.has_room() || m.room.written.load(Ordering::Relaxed);
        tokio::select! {
            _ = m.shutdown.cancelled() => return,
            _ = m.room.check.notified() => {}
            _ = tokio::time::sleep(CHECK_EVERY), if busy => {}
        }
        // Writes after the check started are counted next time: let a burst
        // of notifications coalesce into one check per period at most.
        if m.room.has_room() {
            tokio::select! {
                _ = m.shutdown.cancelled() => return,
                _ = tokio::time::sleep(CHECK_EVERY / 10) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The headroom is the configured one, but never more than a quarter of
    // a small file system, so that such a disk still takes output.
    #[test]
    fn the_headroom_is_at_most_a_quarter_of_the_file_system() {
        assert_eq!(headroom_for(64 << 20, 100 << 30), 64 << 20);
        assert_eq!(headroom_for(64 << 20, 2 << 20), 512 << 10);
        assert_eq!(budget(10 << 20, 100 << 30, 64 << 20), -(54 << 20));
        assert_eq!(budget(2 << 20, 4 << 20, 64 << 20), 1 << 20);
    }

    // Within one spell without room the culprit is chosen once: when its
    // job has ended (no longer the top writer), no one else is chosen.
    #[test]
    fn the_culprit_is_chosen_once_per_spell_without_room() {
        let room = DiskRoom::default();
        let (alice, bob) = (
            Identity::from_spki_der(b"alice"),
            Identity::from_spki_der(b"bob"),
        );
        room.set(0);
        assert!(!room.culprit(bob, || Some(alice)));
        assert!(room.culprit(alice, || Some(bob)));
        assert!(!room.culprit(bob, || Some(bob)));
        room.set(10);
        room.set(0);
        assert!(room.culprit(bob, || Some(bob)));
    }

    // Spending the budget takes the room away; a check gives it back.
    #[tokio::test]
    async fn spending_the_budget_takes_the_room_until_a_check() {
        let room = DiskRoom::default();
        room.set(100);
        assert!(room.has_room());
        room.spend(60);
        assert!(room.has_room());
        room.spend(40);
        assert!(!room.has_room());
        room.exhausted();
        let waiter = room.wait_for_room();
        room.set(10);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap();
    }
}

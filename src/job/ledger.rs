//! Output on disk per identity, counted live: the bytes its running jobs
//! have written so far plus the output of its finished jobs still kept.
//!
//! The supervisors of running jobs take from it before every append
//! ([`Ledger::take`]), so an identity's cap
//! ([`super::Retention::max_output_per_identity`]) holds while its jobs run,
//! not only when they end. Against the cap count the running jobs' bytes
//! and the identity's most recently ended job, the one retention always
//! keeps; its older finished jobs are what retention removes to make room
//! (the take says when to wake it). The removal of a job gives its bytes
//! back ([`Ledger::forget`]). One identity's total never limits another's.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use super::JobId;
use crate::auth::Identity;
use crate::store::Ended;

/// A finished job, as the ledger knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Finished {
    pub id: JobId,
    pub ended_at: SystemTime,
    pub bytes: u64,
}

impl From<Ended> for Finished {
    fn from(e: Ended) -> Self {
        Self {
            id: e.id,
            ended_at: e.ended_at,
            bytes: e.output_bytes,
        }
    }
}

/// An identity whose output is over the cap, for retention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Over {
    pub owner: Identity,
    /// Bytes of its finished jobs to remove to fit the cap again.
    pub excess: u64,
    /// Its latest finished job, which is never removed.
    pub latest: Option<JobId>,
}

/// One identity's output bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Totals {
    /// Written by its running jobs so far.
    pub running: u64,
    /// Kept of all its finished jobs.
    pub finished: u64,
    /// Its most recently ended job, which retention never removes.
    pub latest: Option<Finished>,
}

impl Totals {
    fn all(&self) -> u64 {
        self.running.saturating_add(self.finished)
    }

    /// What counts against the cap: what retention cannot remove.
    fn kept(&self) -> u64 {
        self.running
            .saturating_add(self.latest.map_or(0, |l| l.bytes))
    }

    fn note(&mut self, job: Finished) {
        if self.latest.is_none_or(|l| l.ended_at <= job.ended_at) {
            self.latest = Some(job);
        }
    }
}

/// What [`Ledger::take`] allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Taken {
    /// Bytes counted; fewer than asked means the identity reached its cap.
    pub granted: u64,
    /// The identity's total, older finished jobs included, is over the cap:
    /// retention should remove some.
    pub over: bool,
}

/// Every identity's [`Totals`].
#[derive(Debug, Default)]
pub(super) struct Ledger {
    totals: Mutex<HashMap<Identity, Totals>>,
}

impl Ledger {
    fn lock(&self) -> MutexGuard<'_, HashMap<Identity, Totals>> {
        // Every change is one update of one entry.
        self.totals.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts `bytes` of a running job of `owner`, or as many as fit under
    /// `cap` (all of them without a cap).
    pub(super) fn take(&self, owner: Identity, bytes: u64, cap: Option<u64>) -> Taken {
        let mut totals = self.lock();
        let t = totals.entry(owner).or_default();
        let granted = match cap {
            None => bytes,
            Some(cap) => bytes.min(cap.saturating_sub(t.kept())),
        };
        t.running += granted;
        Taken {
            granted,
            over: cap.is_some_and(|cap| t.all() > cap),
        }
    }

    /// A running job of `owner` ended, having taken `taken` bytes and kept
    /// `job.bytes` of them in its log.
    pub(super) fn finish(&self, owner: Identity, taken: u64, job: Finished) {
        let mut totals = self.lock();
        let t = totals.entry(owner).or_default();
        t.running = t.running.saturating_sub(taken);
        t.finished += job.bytes;
        t.note(job);
    }

    /// Counts a finished job (one restored at start).
    pub(super) fn add_finished(&self, owner: Identity, job: Finished) {
        self.add_totals(owner, job.bytes, job);
    }

    /// Counts `bytes` of `owner`'s finished jobs, `latest` the most
    /// recently ended of them (the store's sums, at start).
    pub(super) fn add_totals(&self, owner: Identity, bytes: u64, latest: Finished) {
        let mut totals = self.lock();
        let t = totals.entry(owner).or_default();
        t.finished += bytes;
        t.note(latest);
    }

    /// The finished job `id` of `owner`, with `bytes` of output, was
    /// removed. Returns true if it was the identity's latest: then the
    /// caller names the next with [`Ledger::note_latest`].
    pub(super) fn forget(&self, owner: Identity, id: JobId, bytes: u64) -> bool {
        let mut totals = self.lock();
        let Some(t) = totals.get_mut(&owner) else {
            return false;
        };
        t.finished = t.finished.saturating_sub(bytes);
        let was_latest = t.latest.is_some_and(|l| l.id == id);
        if was_latest {
            t.latest = None;
        }
        if t.all() == 0 && t.latest.is_none() {
            totals.remove(&owner);
        }
        was_latest
    }

    /// `job` is `owner`'s most recently ended job among those kept, unless
    /// one that ended later was counted meanwhile.
    pub(super) fn note_latest(&self, owner: Identity, job: Finished) {
        if let Some(t) = self.lock().get_mut(&owner) {
            t.note(job);
        }
    }

    /// The identities whose output, finished jobs included, is over `cap`.
    pub(super) fn over(&self, cap: u64) -> Vec<Over> {
        self.lock()
            .iter()
            .filter(|(_, t)| t.all() > cap)
            .map(|(owner, t)| Over {
                owner: *owner,
                excess: t.all() - cap,
                latest: t.latest.map(|l| l.id),
            })
            .collect()
    }

    /// The identity whose running jobs have written the most, if any wrote
    /// at all: the one stopped when the disk has no room.
    pub(super) fn top_writer(&self) -> Option<Identity> {
        self.lock()
            .iter()
            .filter(|(_, t)| t.running > 0)
            .max_by_key(|(_, t)| t.running)
            .map(|(owner, _)| *owner)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn id(name: &str) -> Identity {
        Identity::from_spki_der(name.as_bytes())
    }

    fn done(n: u128, at: u64, bytes: u64) -> Finished {
        Finished {
            id: JobId::from_u128(n),
            ended_at: SystemTime::UNIX_EPOCH + Duration::from_secs(at),
            bytes,
        }
    }

    // One identity's cap counts its running output and its latest finished
    // job, never another identity's; older finished jobs only ask
    // retention to make room.
    #[test]
    fn the_cap_counts_running_output_and_the_latest_finished_job() {
        let ledger = Ledger::default();
        let (alice, bob) = (id("alice"), id("bob"));
        ledger.add_finished(alice, done(1, 1, 500));
        ledger.add_finished(alice, done(2, 2, 300));
        let t = ledger.take(alice, 600, Some(1000));
        assert_eq!(
            t,
            Taken {
                granted: 600,
                over: true
            }
        );
        assert_eq!(ledger.take(alice, 600, Some(1000)).granted, 100);
        assert_eq!(ledger.take(alice, 1, Some(1000)).granted, 0);
        assert_eq!(
            ledger.take(bob, 1000, Some(1000)),
            Taken {
                granted: 1000,
                over: false
            }
        );
        // The latest is removed: the one before it counts instead.
        assert_eq!(
            ledger.over(1000),
            vec![Over {
                owner: alice,
                excess: 500,
                latest: Some(JobId::from_u128(2)),
            }]
        );
        assert!(ledger.forget(alice, JobId::from_u128(2), 300));
        ledger.note_latest(alice, done(1, 1, 500));
        assert_eq!(ledger.take(alice, 1, Some(1000)).granted, 0);
        assert!(ledger.forget(alice, JobId::from_u128(1), 500));
        assert_eq!(ledger.take(alice, 500, Some(1000)).granted, 300);
        ledger.finish(alice, 1000, done(3, 3, 1000));
        assert_eq!(ledger.take(alice, 5, None).granted, 5);
    }

    // The identity whose running jobs wrote the most is the one stopped on a
    // full disk; finished output does not count for it.
    #[test]
    fn the_top_writer_is_chosen_by_running_output_only() {
        let ledger = Ledger::default();
        let (alice, bob) = (id("alice"), id("bob"));
        assert_eq!(ledger.top_writer(), None);
        ledger.add_finished(bob, done(1, 1, 1 << 30));
        ledger.take(alice, 10, None);
        ledger.take(bob, 5, None);
        assert_eq!(ledger.top_writer(), Some(alice));
    }
}

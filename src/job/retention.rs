//! Retention: when finished jobs and their output are removed.
//!
//! Two rules, applied by one task per registry: a finished job is removed
//! [`Retention::max_age`] after it ended, and when the output of all of an
//! identity's jobs adds up to more than [`Retention::max_output_per_identity`],
//! its finished jobs are removed oldest first (by end time) until the total
//! fits — except its most recently ended one, so that the output of the job
//! a user just ran is never gone the moment it ends (a single job's size is
//! bounded by the output quota instead). Running jobs are never removed.
//!
//! Both rules are queries on the store's indexes (finished jobs are not
//! held in memory); the per-identity totals come from the output ledger.
//! The task sleeps until the next job is due or a job ends; it never polls
//! (it wakes at least hourly, so that a change of the wall clock is noticed).
//! It also records the job ends the store could not write when they happened
//! (a full disk), whenever it wakes and every [`RETRY_UNRECORDED`] while any
//! are left.
//! A removal deletes the records from the store first, then the logs; a
//! crash in between leaves logs without records, which [`super::Jobs::open`]
//! deletes.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::{JobId, Registry};
use crate::store::{Ended, Store};

/// How long finished jobs are kept by default: 7 days, long enough to come
/// back after a weekend.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Longest the retention task sleeps without a job due, so that a wall-clock
/// change (NTP, an operator) delays a removal by at most this.
const MAX_SLEEP: Duration = Duration::from_secs(3600);

/// How often job ends the store could not record, and removals it refused
/// (its disk was full), are tried again, besides whenever a job ends or is
/// removed.
const RETRY_UNRECORDED: Duration = Duration::from_secs(10);

/// When finished jobs are removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Remove a finished job this long after it ended; `None`: never by age.
    /// Default [`DEFAULT_MAX_AGE`].
    pub max_age: Option<Duration>,
    /// Most output bytes (stdout and stderr, all of its jobs, running ones
    /// included) one identity keeps; above it, its oldest finished jobs are
    /// removed. `None` (the default): no cap.
    pub max_output_per_identity: Option<u64>,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_age: Some(DEFAULT_MAX_AGE),
            max_output_per_identity: None,
        }
    }
}

/// Most jobs one query of a retention pass returns; a pass repeats it
/// until nothing more is due, so memory holds one batch at a time.
const BATCH: usize = 1000;

/// The jobs of one identity to remove so that `excess` bytes are freed:
/// from `oldest` (its finished jobs, oldest end first), as few as that
/// takes, never `latest`. Pure, so that it is tested without a store.
pub(super) fn to_free(oldest: &[Ended], excess: u64, latest: Option<JobId>) -> Vec<Ended> {
    let mut freed = 0u64;
    oldest
        .iter()
        .filter(|job| Some(job.id) != latest)
        .take_while(|job| {
            let more = freed < excess;
            freed = freed.saturating_add(job.output_bytes);
            more
        })
        .copied()
        .collect()
}

pub(super) struct Task {
    pub registry: Arc<Registry>,
    pub store: Store,
    pub retention: Retention,
    pub output_dir: PathBuf,
    pub shutdown: CancellationToken,
}

/// What one retention pass found.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Pass {
    /// When the next job falls due by age (`None`: none will).
    pub next: Option<SystemTime>,
    /// The store refused a read or a removal: try again soon.
    pub refused: bool,
}

/// The retention task: removes due jobs, then sleeps until the next is due,
/// a job ends, or the registry shuts down.
pub(super) async fn run(task: Task) {
    loop {
        let unrecorded = task.registry.record_deferred_ends(&task.store).await;
        let now = SystemTime::now();
        let pass = pass(&task, now).await;
        let mut sleep = pass
            .next
            .map_or(MAX_SLEEP, |at| at.duration_since(now).unwrap_or_default())
            .min(MAX_SLEEP);
        if unrecorded > 0 || pass.refused {
            sleep = sleep.min(RETRY_UNRECORDED);
        }
        tokio::select! {
            _ = task.shutdown.cancelled() => return,
            _ = task.registry.ended.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}

/// Removes what is due at `now`: every job that ended `max_age` ago or
/// earlier, then, for each identity over its cap, its oldest finished jobs
/// until it fits (never its latest). Each query reads the store's index a
/// batch at a time; nothing is scanned in memory.
pub(super) async fn pass(task: &Task, now: SystemTime) -> Pass {
    let mut pass = Pass::default();
    let refused = |e: crate::store::StoreError, pass: &mut Pass| {
        tracing::error!(error = %e, "cannot read the job store for retention");
        pass.refused = true;
    };
    if let Some(cutoff) = task.retention.max_age.and_then(|age| now.checked_sub(age)) {
        loop {
            match task.store.ended_by(cutoff, BATCH).await {
                Ok(due) if due.is_empty() => break,
                Ok(due) => {
                    let full = due.len() == BATCH;
                    if !remove(task, due).await {
                        pass.refused = true;
                        break;
                    }
                    if !full {
                        break;
                    }
                }
                Err(e) => {
                    refused(e, &mut pass);
                    break;
                }
            }
        }
        match task.store.first_end_after(cutoff).await {
            Ok(first) => {
                pass.next = first
                    .and_then(|end| task.retention.max_age.and_then(|age| end.checked_add(age)))
            }
            Err(e) => refused(e, &mut pass),
        }
    }
    if let Some(cap) = task.retention.max_output_per_identity {
        for over in task.registry.output.over(cap) {
            let mut excess = over.excess;
            // At most as many batches as it takes; each removes its jobs
            // before the next is read.
            while excess > 0 {
                let oldest = match task.store.oldest_ended_of(over.owner, BATCH).await {
                    Ok(oldest) => oldest,
                    Err(e) => {
                        refused(e, &mut pass);
                        break;
                    }
                };
                let doomed = to_free(&oldest, excess, over.latest);
                if doomed.is_empty() {
                    break;
                }
                let freed: u64 = doomed.iter().map(|j| j.output_bytes).sum();
                if !remove(task, doomed).await {
                    pass.refused = true;
                    break;
                }
                excess = excess.saturating_sub(freed);
            }
        }
    }
    pass
}

/// Removes the finished jobs `doomed` from the store and the disk, and
/// gives their output back to their owners' counts. Returns false if the
/// store refused (nothing changed; they are tried again at the next
/// wake-up).
async fn remove(task: &Task, doomed: Vec<Ended>) -> bool {
    let ids: Vec<JobId> = doomed.iter().map(|j| j.id).collect();
    let removed = match delete_jobs(&task.store, &task.output_dir, &ids).await {
        Ok(removed) => removed,
        Err(e) => {
            tracing::error!(error = %e, jobs = ids.len(), "cannot remove expired jobs from the store");
            return false;
        }
    };
    // Only what this removal deleted: a `jobs rm` meanwhile gave its own
    // job's bytes back already.
    let removed: HashSet<JobId> = removed.into_iter().collect();
    for job in doomed.iter().filter(|j| removed.contains(&j.id)) {
        task.registry
            .forget_output(&task.store, job.owner, job.id, job.output_bytes)
            .await;
    }
    task.registry.disk.recheck();
    tracing::info!(jobs = removed.len(), "removed finished jobs by retention");
    true
}

/// Deletes the records of `ids` from the store, then the output logs of
/// those it deleted, so that a crash in between leaves only logs without
/// records (deleted at the next start), and a deletion the store refuses
/// changes nothing. On a full disk the store spends its reserve to record
/// the deletion; the space the logs free then makes the reserve again.
/// Returns the ids whose records it deleted (not those gone already). The
/// logs are deleted on the blocking pool.
///
/// # Errors
/// The store's error when the records cannot be deleted (on a disk full
/// beyond the reserve: [`crate::store::StoreError::Full`]); nothing was
/// deleted then.
pub(super) async fn delete_jobs(
    store: &Store,
    output_dir: &Path,
    ids: &[JobId],
) -> Result<Vec<JobId>, crate::store::StoreError> {
    let removed = store.remove(ids.to_vec()).await?;
    let dir = output_dir.to_owned();
    let logs = removed.clone();
    let deleted = tokio::task::spawn_blocking(move || {
        for id in logs {
            delete_log(&dir, id);
        }
    })
    .await;
    if deleted.is_err() {
        tracing::warn!("output logs of removed jobs left for the next start to delete");
    }
    store.replenish_reserve().await;
    Ok(removed)
}

/// Deletes the output log of job `id`; a log already gone is fine.
pub(super) fn delete_log(output_dir: &Path, id: JobId) {
    let path = output_dir.join(super::log_name(id));
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::error!(job = %id, error = %e, "cannot delete the job's output log"),
    }
}

/// Deletes every `<job id>.log` in `output_dir` whose job is not in `ids`
/// (left by a crash); other files are left alone.
pub(super) fn sweep_orphan_logs(output_dir: &Path, ids: &HashSet<JobId>) {
    let Ok(entries) = std::fs::read_dir(output_dir) else {
        return;
    };
    let mut swept = 0usize;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<JobId>().ok())
        else {
            continue;
        };
        if !ids.contains(&id) {
            delete_log(output_dir, id);
            swept += 1;
        }
    }
    if swept > 0 {
        tracing::warn!(
            logs = swept,
            "deleted output logs that had no job record (left by a crash)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Identity;
    use crate::model::{ExitInfo, State};
    use crate::store::{JobEnd, JobRecord};

    fn id(n: u128) -> JobId {
        JobId::from_u128(n)
    }

    fn owner(n: u8) -> Identity {
        Identity::from_spki_der(&[n])
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn ended(n: u128, who: u8, end: u64, bytes: u64) -> Ended {
        Ended {
            id: id(n),
            owner: owner(who),
            ended_at: at(end),
            output_bytes: bytes,
        }
    }

    #[test]
    fn over_the_size_cap_the_oldest_finished_go_first_but_never_the_latest() {
        // Owner 1 is 90 bytes over: oldest first, 50 then 40 free 90.
        let oldest = [
            ended(11, 1, 1, 50),
            ended(12, 1, 2, 40),
            ended(10, 1, 3, 60),
        ];
        let ids = |jobs: Vec<Ended>| jobs.into_iter().map(|j| j.id).collect::<Vec<_>>();
        assert_eq!(ids(to_free(&oldest, 90, Some(id(10)))), [id(11), id(12)]);
        // One byte over takes one job; nothing over takes none.
        assert_eq!(ids(to_free(&oldest, 1, Some(id(10)))), [id(11)]);
        assert_eq!(ids(to_free(&oldest, 0, Some(id(10)))), Vec::<JobId>::new());
        // The latest stays even when the others do not make up the excess.
        assert_eq!(ids(to_free(&oldest, 1000, Some(id(10)))), [id(11), id(12)]);
        let alone = [ended(30, 3, 5, 1000)];
        assert_eq!(ids(to_free(&alone, 900, Some(id(30)))), Vec::<JobId>::new());
    }

    /// A registry over a real store holding `jobs` (id, owner, end, bytes;
    /// `None`: running) with their logs, its ledger filled as at start.
    async fn task_with(
        jobs: &[(u128, u8, Option<u64>, u64)],
        retention: Retention,
    ) -> (tempfile::TempDir, Task) {
        let dir = tempfile::tempdir().unwrap();
        let output_dir = dir.path().join("output");
        std::fs::create_dir(&output_dir).unwrap();
        let store = Store::open(dir.path()).unwrap();
        for &(n, who, end, bytes) in jobs {
            store
                .insert(JobRecord {
                    id: id(n),
                    owner: owner(who),
                    command: vec!["true".into()],
                    started_at: at(0),
                    limits: None,
                    max_output_bytes: None,
                    recovery: None,
                    cluster_job_id: None,
                    end: None,
                })
                .await
                .unwrap();
            std::fs::write(output_dir.join(super::super::log_name(id(n))), b"").unwrap();
            if let Some(end) = end {
                let end = JobEnd {
                    state: State::Exited,
                    exit: Some(ExitInfo::Exited(0)),
                    ended_at: at(end),
                    usage: None,
                    output_bytes: bytes,
                };
                store.finish(id(n), end).await.unwrap();
            }
        }
        let registry = Arc::new(Registry::default());
        for (who, kept) in store.finished_output().unwrap() {
            registry
                .output
                .add_totals(who, kept.bytes, kept.latest.into());
        }
        let task = Task {
            registry,
            store,
            retention,
            output_dir,
            shutdown: CancellationToken::new(),
        };
        (dir, task)
    }

    fn left(task: &Task) -> Vec<JobId> {
        task.store
            .load()
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect()
    }

    #[tokio::test]
    async fn finished_jobs_go_at_their_age_and_running_ones_never() {
        let rules = Retention {
            max_age: Some(Duration::from_secs(100)),
            max_output_per_identity: None,
        };
        let (_dir, task) = task_with(
            &[
                (1, 1, Some(1000), 0),
                (2, 1, Some(1050), 0),
                (3, 1, None, 0),
            ],
            rules,
        )
        .await;
        // Job 1 expires at 1100 exactly; job 2 is next, at 1150.
        let pass_at = |secs| pass(&task, at(secs));
        assert_eq!(
            pass_at(1099).await,
            Pass {
                next: Some(at(1100)),
                refused: false
            }
        );
        assert_eq!(left(&task), [id(1), id(2), id(3)]);
        assert_eq!(
            pass_at(1100).await,
            Pass {
                next: Some(at(1150)),
                refused: false
            }
        );
        assert_eq!(left(&task), [id(2), id(3)]);
        assert!(!task.output_dir.join(super::super::log_name(id(1))).exists());
        assert_eq!(
            pass_at(5000).await,
            Pass {
                next: None,
                refused: false
            }
        );
        assert_eq!(left(&task), [id(3)]);
    }

    #[tokio::test]
    async fn without_a_max_age_nothing_goes_by_age() {
        let rules = Retention {
            max_age: None,
            max_output_per_identity: None,
        };
        let (_dir, task) = task_with(&[(1, 1, Some(0), 0)], rules).await;
        assert_eq!(pass(&task, at(u32::MAX as u64)).await, Pass::default());
        assert_eq!(left(&task), [id(1)]);
    }

    #[tokio::test]
    async fn age_and_size_together_count_each_job_once() {
        let rules = Retention {
            max_age: Some(Duration::from_secs(10)),
            max_output_per_identity: Some(50),
        };
        // Job 1 is expired (and its bytes no longer count); 2 + 3 = 60 > 50,
        // so job 2, the older of the two left, goes too. Owner 2 is under
        // its cap and keeps everything.
        let (_dir, task) = task_with(
            &[
                (1, 1, Some(0), 500),
                (2, 1, Some(95), 30),
                (3, 1, Some(96), 30),
                (4, 2, Some(97), 50),
            ],
            rules,
        )
        .await;
        assert_eq!(
            pass(&task, at(100)).await,
            Pass {
                next: Some(at(105)),
                refused: false
            }
        );
        assert_eq!(left(&task), [id(3), id(4)]);
        assert_eq!(task.registry.output.over(50), vec![]);
    }
}

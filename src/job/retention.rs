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
//! The task sleeps until the next job is due or a job ends; it never polls
//! (it wakes at least hourly, so that a change of the wall clock is noticed).
//! It also records the job ends the store could not write when they happened
//! (a full disk), whenever it wakes and every [`RETRY_UNRECORDED`] while any
//! are left.
//! A removal deletes the records from the store first, then the logs; a
//! crash in between leaves logs without records, which [`super::Jobs::open`]
//! deletes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::{Job, JobId, Phase, Registry};
use crate::auth::Identity;
use crate::store::Store;

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

/// What retention needs to know of one job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Entry {
    pub id: JobId,
    pub owner: Identity,
    /// `None` while running.
    pub ended_at: Option<SystemTime>,
    pub output_bytes: u64,
}

impl Entry {
    fn of(job: &Job) -> Self {
        Self {
            id: job.id,
            owner: job.owner,
            ended_at: match *job.phase.borrow() {
                Phase::Running => None,
                Phase::Final { ended_at, .. } => Some(ended_at),
            },
            output_bytes: job.log.data_len(),
        }
    }
}

/// The jobs due for removal at `now` under `rules`, and when the next one
/// falls due by age (`None`: none will). Pure, so that it is tested without
/// waiting.
pub(super) fn due(
    jobs: &[Entry],
    now: SystemTime,
    rules: &Retention,
) -> (Vec<JobId>, Option<SystemTime>) {
    let mut doomed = Vec::new();
    let mut next: Option<SystemTime> = None;
    let mut kept: HashMap<Identity, Vec<&Entry>> = HashMap::new();
    for job in jobs {
        let expires = match (job.ended_at, rules.max_age) {
            (Some(ended), Some(age)) => ended.checked_add(age),
            _ => None,
        };
        match expires {
            Some(at) if at <= now => doomed.push(job.id),
            _ => {
                if let Some(at) = expires {
                    next = Some(next.map_or(at, |n| n.min(at)));
                }
                kept.entry(job.owner).or_default().push(job);
            }
        }
    }
    if let Some(cap) = rules.max_output_per_identity {
        for mut owned in kept.into_values() {
            let mut total: u64 = owned.iter().map(|j| j.output_bytes).sum();
            if total <= cap {
                continue;
            }
            owned.retain(|j| j.ended_at.is_some());
            owned.sort_by_key(|j| (j.ended_at, j.id));
            // Never the most recently ended one.
            owned.pop();
            for job in owned {
                if total <= cap {
                    break;
                }
                total -= job.output_bytes;
                doomed.push(job.id);
            }
        }
    }
    (doomed, next)
}

pub(super) struct Task {
    pub registry: Arc<Registry>,
    pub store: Store,
    pub retention: Retention,
    pub output_dir: PathBuf,
    pub shutdown: CancellationToken,
}

/// The retention task: removes due jobs, then sleeps until the next is due,
/// a job ends, or the registry shuts down.
pub(super) async fn run(task: Task) {
    loop {
        let unrecorded = task.registry.record_deferred_ends(&task.store).await;
        let entries: Vec<Entry> = task
            .registry
            .lock()
            .values()
            .map(|j| Entry::of(j))
            .collect();
        let now = SystemTime::now();
        let (doomed, next) = due(&entries, now, &task.retention);
        let refused = !doomed.is_empty() && !remove(&task, doomed).await;
        let mut sleep = next
            .map_or(MAX_SLEEP, |at| at.duration_since(now).unwrap_or_default())
            .min(MAX_SLEEP);
        if unrecorded > 0 || refused {
            sleep = sleep.min(RETRY_UNRECORDED);
        }
        tokio::select! {
            _ = task.shutdown.cancelled() => return,
            _ = task.registry.ended.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}

/// Removes `ids` from the registry, the store and the disk. Returns false
/// if the store refused (they are back in the registry, to be tried again).
async fn remove(task: &Task, ids: Vec<JobId>) -> bool {
    let taken: Vec<Arc<Job>> = {
        let mut jobs = task.registry.lock();
        let taken: Vec<Arc<Job>> = ids.iter().filter_map(|id| jobs.remove(id)).collect();
        for job in &taken {
            task.registry.forget_output(&jobs, job);
        }
        taken
    };
    let ids: Vec<JobId> = taken.iter().map(|j| j.id).collect();
    if let Err(e) = delete_jobs(&task.store, &task.output_dir, &ids).await {
        // Put them back: they are tried again at the next wake-up.
        tracing::error!(error = %e, jobs = ids.len(), "cannot remove expired jobs from the store");
        let mut jobs = task.registry.lock();
        for job in taken {
            task.registry.count_output(&job);
            jobs.insert(job.id, job);
        }
        return false;
    }
    task.registry.disk.recheck();
    tracing::info!(jobs = ids.len(), "removed finished jobs by retention");
    true
}

/// Deletes the records of `ids` from the store, then their output logs, so
/// that a crash in between leaves only logs without records (deleted at the
/// next start), and a deletion the store refuses changes nothing. On a full
/// disk the store spends its reserve to record the deletion; the space the
/// logs free then makes the reserve again.
///
/// # Errors
/// The store's error when the records cannot be deleted (on a disk full
/// beyond the reserve: [`crate::store::StoreError::Full`]); nothing was
/// deleted then.
pub(super) async fn delete_jobs(
    store: &Store,
    output_dir: &Path,
    ids: &[JobId],
) -> Result<(), crate::store::StoreError> {
    store.remove(ids.to_vec()).await?;
    for id in ids {
        delete_log(output_dir, *id);
    }
    store.replenish_reserve().await;
    Ok(())
}

/// Deletes the output log of job `id`; a log already gone is fine.
pub(super) fn delete_log(output_dir: &Path, id: JobId) {
    let path = output_dir.join(id.log_name());
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::error!(job = %id, error = %e, "cannot delete the job's output log"),
    }
}

/// Deletes every `<job id>.log` in `output_dir` whose job is not in `jobs`
/// (left by a crash); other files are left alone.
pub(super) fn sweep_orphan_logs(output_dir: &Path, jobs: &HashMap<JobId, Arc<Job>>) {
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
        if !jobs.contains_key(&id) {
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

    fn id(n: u128) -> JobId {
        JobId(uuid::Uuid::from_u128(n))
    }

    fn owner(n: u8) -> Identity {
        Identity::from_spki_der(&[n])
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn job(n: u128, who: u8, ended: Option<u64>, bytes: u64) -> Entry {
        Entry {
            id: id(n),
            owner: owner(who),
            ended_at: ended.map(at),
            output_bytes: bytes,
        }
    }

    const BY_AGE: Retention = Retention {
        max_age: Some(Duration::from_secs(100)),
        max_output_per_identity: None,
    };

    #[test]
    fn finished_jobs_go_at_their_age_and_running_ones_never() {
        let jobs = [
            job(1, 1, Some(1000), 0),
            job(2, 1, Some(1050), 0),
            job(3, 1, None, 0),
        ];
        // Job 1 expires at 1100 exactly; job 2 is next, at 1150.
        assert_eq!(due(&jobs, at(1099), &BY_AGE), (vec![], Some(at(1100))));
        assert_eq!(due(&jobs, at(1100), &BY_AGE), (vec![id(1)], Some(at(1150))));
        assert_eq!(due(&jobs, at(5000), &BY_AGE), (vec![id(1), id(2)], None));
        let forever = Retention {
            max_age: None,
            max_output_per_identity: None,
        };
        assert_eq!(due(&jobs, at(u32::MAX as u64), &forever), (vec![], None));
    }

    #[test]
    fn over_the_size_cap_the_oldest_finished_go_first_but_never_the_latest() {
        let rules = Retention {
            max_age: None,
            max_output_per_identity: Some(100),
        };
        // Owner 1: 60 + 50 + 40 finished (ended 3, 1, 2) and 30 running = 180.
        // Oldest first: the job ended at 1 (50) → 130, then at 2 (40) → 90.
        let jobs = [
            job(10, 1, Some(3), 60),
            job(11, 1, Some(1), 50),
            job(12, 1, Some(2), 40),
            job(13, 1, None, 30),
            // Owner 2 is under the cap and keeps everything.
            job(20, 2, Some(0), 100),
        ];
        let (mut doomed, _) = due(&jobs, at(10), &rules);
        doomed.sort();
        assert_eq!(doomed, vec![id(11), id(12)]);

        // One job over the cap alone is kept (the latest is never removed).
        let alone = [job(30, 3, Some(5), 1000)];
        assert_eq!(due(&alone, at(10), &rules), (vec![], None));
        // Exactly at the cap is within it.
        let exact = [job(40, 4, Some(1), 50), job(41, 4, Some(2), 50)];
        assert_eq!(due(&exact, at(10), &rules).0, vec![]);
    }

    #[test]
    fn age_and_size_together_count_each_job_once() {
        let rules = Retention {
            max_age: Some(Duration::from_secs(10)),
            max_output_per_identity: Some(50),
        };
        // Job 1 is expired (and its bytes no longer count); 2 + 3 = 60 > 50,
        // so job 2, the older of the two left, goes too.
        let jobs = [
            job(1, 1, Some(0), 500),
            job(2, 1, Some(95), 30),
            job(3, 1, Some(96), 30),
        ];
        let (doomed, next) = due(&jobs, at(100), &rules);
        assert_eq!(doomed, vec![id(1), id(2)]);
        assert_eq!(next, Some(at(105)));
    }
}

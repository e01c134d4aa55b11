//! Rebuilding the registry from the store when the daemon starts.
//!
//! Finished jobs come back as they were recorded. A job without a recorded
//! end was running when the previous daemon died: what is left of its
//! processes is killed through the executor's recovery token, its output is
//! cut after the last complete record, and it is recorded as
//! [`State::Lost`]. Output logs without a record are deleted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;

use super::{Executor, Job, Phase, Registry, State, retention};
use crate::output;
use crate::store::{JobEnd, JobRecord, Store};

/// Fills `registry` from `store` for [`Jobs::open`].
pub(super) fn restore(
    registry: &Registry,
    executor: &dyn Executor,
    output_dir: &std::path::Path,
    store: &Store,
    records: Vec<JobRecord>,
) {
    let now = SystemTime::now();
    let mut lost = HashMap::new();
    let mut jobs = registry.lock();
    for record in &records {
        let path = output_dir.join(record.id.log_name());
        let (log, phase) = match &record.end {
            Some(end) => {
                // Its record says it ended with its output flushed, so only
                // someone else can have taken the file away: reading it
                // then fails (INTERNAL), rather than look empty.
                let log = output::open_sealed(&path, end.output_bytes);
                (
                    log,
                    Phase::Final {
                        state: end.state,
                        exit: end.exit,
                        ended_at: end.ended_at,
                        usage: end.usage,
                    },
                )
            }
            None => {
                // Left running by a dead daemon: kill what is left of it
                // before anything else reads its state.
                if let Some(token) = &record.recovery {
                    match executor.reclaim(token) {
                        Ok(0) => {}
                        Ok(n) => {
                            tracing::warn!(job = %record.id, killed = n, "killed what a dead daemon's job left running")
                        }
                        Err(e) => {
                            tracing::error!(job = %record.id, error = %e, "cannot kill what a dead daemon's job left running")
                        }
                    }
                }
                let log = output::recover(&path).map(|(log, found)| {
                    if found.cut > 0 {
                        tracing::warn!(job = %record.id, cut = found.cut, "cut an unfinished record from the end of a lost job's output");
                    }
                    lost.insert(record.id, found.data);
                    log
                });
                (
                    log,
                    Phase::Final {
                        state: State::Lost,
                        exit: None,
                        ended_at: now,
                        usage: None,
                    },
                )
            }
        };
        let log = match log {
            Ok(log) => log,
            Err(e) => {
                tracing::error!(job = %record.id, error = %e, "cannot open the job's output log; reading its output will fail");
                output::sealed_empty(&path)
            }
        };
        // The sender goes away at once: the phase is final for good.
        let (_, phase) = watch::channel(phase);
        let (stop, _) = watch::channel(false);
        jobs.insert(
            record.id,
            Arc::new(Job {
                id: record.id,
                owner: record.owner,
                command: record.command.clone(),
                started_at: record.started_at,
                phase,
                stop,
                log,
                limits: record.limits,
                max_output_bytes: record.max_output_bytes,
                meter: None,
            }),
        );
    }
    for job in jobs.values() {
        registry.count_output(job);
    }
    drop(jobs);
    if !lost.is_empty() {
        match store.mark_lost(now, |id| lost.get(&id).copied().unwrap_or(0)) {
            Ok(marked) => tracing::warn!(
                jobs = marked.len(),
                "jobs were running when the previous daemon died; they are now marked lost"
            ),
            // The daemon serves all the same (the jobs are lost in memory);
            // the ends are recorded once the store can be written.
            Err(e) => {
                tracing::error!(error = %e, jobs = lost.len(), "cannot record the jobs of the previous daemon as lost now; will retry");
                for (id, bytes) in &lost {
                    registry.defer_end(
                        *id,
                        JobEnd {
                            state: State::Lost,
                            exit: None,
                            ended_at: now,
                            usage: None,
                            output_bytes: *bytes,
                        },
                    );
                }
            }
        }
    }
    retention::sweep_orphan_logs(output_dir, &registry.lock());
    tracing::info!(jobs = records.len(), "job records loaded");
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::super::{
        BoxFuture, Capabilities, ExitInfo, JobId, Jobs, JobsConfig, Launch, SpawnError, Spawned,
    };
    use super::*;
    use crate::auth::{Caller, Identity};
    use crate::output::testing::{drain, record as log_record};
    use crate::output::{Chunk, Fd};
    use crate::policy::{Gate, PolicyHandle, Rpc};
    use crate::store::{JobEnd, JobRecord};

    /// Starts nothing; remembers the recovery tokens it was asked to reclaim.
    #[derive(Debug, Default)]
    struct Reclaimer {
        reclaimed: Mutex<Vec<String>>,
    }

    impl Executor for Reclaimer {
        fn capabilities(&self) -> Capabilities {
            Capabilities::default()
        }

        fn spawn<'a>(&'a self, _: Launch<'a>) -> BoxFuture<'a, Result<Spawned, SpawnError>> {
            Box::pin(async { Err(SpawnError::Os(std::io::Error::other("not in this test"))) })
        }

        fn reclaim(&self, recovery: &str) -> std::io::Result<usize> {
            self.reclaimed.lock().unwrap().push(recovery.to_owned());
            Ok(1)
        }
    }

    fn record(id: JobId, owner: Identity, recovery: Option<&str>) -> JobRecord {
        JobRecord {
            id,
            owner,
            command: vec!["prog".into(), "arg with space".into()],
            started_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000),
            limits: None,
            max_output_bytes: Some(4096),
            recovery: recovery.map(str::to_owned),
            end: None,
        }
    }

    #[tokio::test]
    async fn a_restart_keeps_finished_jobs_and_marks_running_ones_lost() {
        // Scenario: the previous daemon recorded one job's end and died while
        // another ran, in the middle of writing its output; it also left a
        // log whose job was never recorded. The new registry lists both jobs
        // (the finished one as it ended, the other lost with its complete
        // output), killed the lost job's leftovers once, recorded it as
        // lost, and deleted the orphan log.
        let dir = tempfile::tempdir().unwrap();
        let output_dir = dir.path().join("output");
        std::fs::create_dir(&output_dir).unwrap();
        let store = Store::open(dir.path()).unwrap();
        let owner = Identity::from_spki_der(b"alice");
        let (done, running, orphan): (JobId, JobId, JobId) = (
            "00000000-0000-4000-8000-000000000001".parse().unwrap(),
            "00000000-0000-4000-8000-000000000002".parse().unwrap(),
            "00000000-0000-4000-8000-000000000003".parse().unwrap(),
        );
        store.insert(record(done, owner, None)).await.unwrap();
        let end = JobEnd {
            state: State::Exited,
            exit: Some(ExitInfo::Exited(3)),
            ended_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_005),
            usage: None,
            output_bytes: 6,
        };
        store.finish(done, end.clone()).await.unwrap();
        let mut done_log = log_record(1, b"out\n");
        done_log.extend(log_record(2, b"E\n"));
        std::fs::write(output_dir.join(format!("{done}.log")), &done_log).unwrap();

        store
            .insert(record(running, owner, Some("pgid=4242,start=7")))
            .await
            .unwrap();
        let mut torn = log_record(1, b"complete");
        let complete = torn.len() as u64;
        torn.extend(&log_record(1, b"cut short by the crash")[..10]);
        std::fs::write(output_dir.join(format!("{running}.log")), &torn).unwrap();
        std::fs::write(output_dir.join(format!("{orphan}.log")), b"junk").unwrap();
        std::fs::write(output_dir.join("notes.txt"), b"not ours").unwrap();

        let executor = Arc::new(Reclaimer::default());
        let mut config = JobsConfig::new(output_dir.clone());
        config.retention.max_age = None;
        let records = store.load().unwrap();
        let jobs = Jobs::open(executor.clone(), config, store.clone(), records).unwrap();

        assert_eq!(*executor.reclaimed.lock().unwrap(), ["pgid=4242,start=7"]);
        let grant = Gate::new(PolicyHandle::default())
            .admit(&Caller::from_verified(owner), Rpc::List)
            .unwrap();
        let listed = jobs.list(&grant, false).unwrap();
        assert_eq!(
            listed.iter().map(|s| s.id).collect::<Vec<_>>(),
            [done, running]
        );
        let (d, r) = (&listed[0], &listed[1]);
        assert_eq!(
            (
                d.state,
                d.exit,
                d.ended_at,
                d.output_bytes,
                d.max_output_bytes
            ),
            (
                State::Exited,
                Some(ExitInfo::Exited(3)),
                Some(end.ended_at),
                6,
                Some(4096)
            )
        );
        assert_eq!(d.command, ["prog", "arg with space"]);
        assert_eq!((r.state, r.exit, r.output_bytes), (State::Lost, None, 8));

        let done_job = jobs.authorize(&grant, &done.to_string()).unwrap();
        assert_eq!(
            drain(done_job.output().unwrap()).await,
            [
                Chunk {
                    fd: Fd::Stdout,
                    data: b"out\n".to_vec()
                },
                Chunk {
                    fd: Fd::Stderr,
                    data: b"E\n".to_vec()
                }
            ]
        );
        let lost = jobs.authorize(&grant, &running.to_string()).unwrap();
        assert_eq!(
            drain(lost.follow().unwrap()).await,
            [Chunk {
                fd: Fd::Stdout,
                data: b"complete".to_vec()
            }]
        );
        assert_eq!(
            std::fs::metadata(output_dir.join(format!("{running}.log")))
                .unwrap()
                .len(),
            complete
        );
        assert!(!output_dir.join(format!("{orphan}.log")).exists());
        assert!(output_dir.join("notes.txt").exists());

        // The store now says lost too, so a second restart agrees.
        let stored = store.load().unwrap();
        let lost_end = stored[1].end.clone().expect("recorded as ended");
        assert_eq!(
            (lost_end.state, lost_end.exit, lost_end.output_bytes),
            (State::Lost, None, 8)
        );
        assert_eq!(stored[0].end, Some(end));
        jobs.shutdown().await;
    }
}

//! Rebuilding the registry from the store when the daemon starts.
//!
//! Finished jobs stay in the store, read when asked for; only their
//! output's sums per identity are read now, for the output ledger. A job
//! without a recorded end was running when the previous daemon died: what
//! is left of its processes is killed through the executor's recovery
//! token, its output is cut after the last complete record, and it is
//! recorded as [`State::Lost`]. Output logs without a record are deleted.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use super::{Executor, Job, JobId, Phase, Registry, State, retention};
use crate::output;
use crate::store::{JobEnd, Store, StoreError};

/// Fills `registry` from `store` for [`Jobs::open`]: the output ledger
/// from the store's sums, the lost jobs recorded as such (held in memory
/// only while that record cannot be written). `ids` are every record's.
pub(super) fn restore(
    registry: &Registry,
    executor: &dyn Executor,
    output_dir: &std::path::Path,
    store: &Store,
    ids: &HashSet<JobId>,
) -> Result<(), StoreError> {
    for (owner, kept) in store.finished_output()? {
        registry
            .output
            .add_totals(owner, kept.bytes, kept.latest.into());
    }
    let now = SystemTime::now();
    let mut lost = Vec::new();
    for record in store.load_unfinished()? {
        // Left running by a dead daemon: kill what is left of it before
        // anything else reads its state.
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
        let path = output_dir.join(super::log_name(record.id));
        let (log, data) = match output::recover(&path) {
            Ok((log, found)) => {
                if found.cut > 0 {
                    tracing::warn!(job = %record.id, cut = found.cut, "cut an unfinished record from the end of a lost job's output");
                }
                (log, found.data)
            }
            Err(e) => {
                tracing::error!(job = %record.id, error = %e, "cannot open the job's output log; reading its output will fail");
                (output::sealed_empty(&path), 0)
            }
        };
        lost.push((record, log, data));
    }
    if !lost.is_empty() {
        let bytes: HashMap<JobId, u64> = lost.iter().map(|(r, _, data)| (r.id, *data)).collect();
        let marked = store.mark_lost(now, |id| bytes.get(&id).copied().unwrap_or(0));
        match &marked {
            Ok(marked) => tracing::warn!(
                jobs = marked.len(),
                "jobs were running when the previous daemon died; they are now marked lost"
            ),
            Err(e) => {
                tracing::error!(error = %e, jobs = lost.len(), "cannot record the jobs of the previous daemon as lost now; will retry")
            }
        }
        let phase = Phase::Final {
            state: State::Lost,
            exit: None,
            ended_at: now,
            usage: None,
        };
        for (record, log, data) in lost {
            let (id, owner) = (record.id, record.owner);
            registry.output.add_finished(
                owner,
                super::ledger::Finished {
                    id,
                    ended_at: now,
                    bytes: data,
                },
            );
            if marked.is_err() {
                // The daemon serves all the same (the job is lost in
                // memory); the end is recorded once the store can be
                // written.
                registry
                    .lock()
                    .insert(id, Arc::new(Job::final_of(record, phase, log)));
                registry.defer_end(
                    id,
                    JobEnd {
                        state: State::Lost,
                        exit: None,
                        ended_at: now,
                        usage: None,
                        output_bytes: data,
                    },
                );
            }
        }
    }
    retention::sweep_orphan_logs(output_dir, ids);
    tracing::info!(jobs = ids.len(), "job records checked");
    Ok(())
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
            cluster_job_id: None,
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
        let ids = store.scan().unwrap();
        let jobs = Jobs::open(executor.clone(), config, store.clone(), ids).unwrap();

        assert_eq!(*executor.reclaimed.lock().unwrap(), ["pgid=4242,start=7"]);
        let grant = Gate::new(PolicyHandle::default())
            .admit(&Caller::from_verified(owner), Rpc::List)
            .unwrap();
        let listed = jobs.list(&grant, false, None, 10).await.unwrap();
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

        let done_job = jobs.authorize(&grant, &done.to_string()).await.unwrap();
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
        let lost = jobs.authorize(&grant, &running.to_string()).await.unwrap();
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

    // Scenario: alice has 10,000 finished jobs and keeps starting more while
    // she pages through `list` 97 at a time; every job is listed exactly
    // once, in start order, the new ones after the old (and ones recorded
    // with an earlier start, behind the cursor, not at all). After a
    // restart all of them are listed, and bob sees none of them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pages_over_ten_thousand_records_never_skip_or_repeat_and_survive_a_restart() {
        const RECORDS: u128 = 10_000;
        // tmpfs when there is one: each record is two fsynced transactions.
        let dir = tempfile::tempdir_in("/dev/shm")
            .or_else(|_| tempfile::tempdir())
            .unwrap();
        let output_dir = dir.path().join("output");
        std::fs::create_dir(&output_dir).unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (alice, bob) = (
            Identity::from_spki_der(b"alice"),
            Identity::from_spki_der(b"bob"),
        );
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let add = |n: u128, owner: Identity, started: SystemTime| {
            let store = store.clone();
            async move {
                let id = JobId::from_u128(n);
                let mut r = record(id, owner, None);
                r.started_at = started;
                store.insert(r).await.unwrap();
                let end = JobEnd {
                    state: State::Exited,
                    exit: Some(ExitInfo::Exited(0)),
                    ended_at: started + Duration::from_secs(1),
                    usage: None,
                    output_bytes: 0,
                };
                store.finish(id, end).await.unwrap();
                id
            }
        };
        let mut keyed = Vec::new();
        // Inserted newest first; pairs share a start time, the id breaks
        // the tie.
        for n in (0..RECORDS).rev() {
            let started = start + Duration::from_millis((n / 2) as u64);
            keyed.push((started, add(n, alice, started).await));
        }
        add(RECORDS, bob, start).await;
        keyed.sort();
        let mut want: Vec<JobId> = keyed.into_iter().map(|(_, id)| id).collect();

        let open = || {
            let mut config = JobsConfig::new(output_dir.clone());
            config.retention.max_age = None;
            Jobs::open(
                Arc::new(Reclaimer::default()),
                config,
                store.clone(),
                store.scan().unwrap(),
            )
            .unwrap()
        };
        let grant = Gate::new(PolicyHandle::default())
            .admit(&Caller::from_verified(alice), Rpc::List)
            .unwrap();
        let jobs = open();
        let mut seen = Vec::new();
        let mut after = None;
        let mut next = RECORDS + 1;
        let mut early = Vec::new();
        for round in 0.. {
            assert!(round < RECORDS / 97 + 30, "paging does not end");
            let page = jobs.list(&grant, false, after, 97).await.unwrap();
            let Some(last) = page.last() else { break };
            after = Some((last.started_at, last.id));
            seen.extend(page.iter().map(|s| s.id));
            if next < RECORDS + 21 {
                if next % 2 == 0 {
                    // A job started now sorts after every earlier one.
                    let later = start + Duration::from_secs(3600 + next as u64);
                    want.push(add(next, alice, later).await);
                } else {
                    // One recorded as started before everything listed so
                    // far (a clock stepped back) is behind the cursor: this
                    // walk misses it rather than shift the others.
                    early.push(add(next, alice, start - Duration::from_secs(1)).await);
                }
                next += 1;
            }
        }
        assert_eq!(seen.len(), want.len());
        assert!(seen == want, "every job once, in start order");
        early.sort();
        want.splice(0..0, early);
        jobs.shutdown().await;
        drop(jobs);

        let jobs = open();
        let mut again = Vec::new();
        let mut after = None;
        for round in 0.. {
            assert!(round < RECORDS / 1000 + 10, "paging does not end");
            let page = jobs.list(&grant, false, after, 1000).await.unwrap();
            let Some(last) = page.last() else { break };
            after = Some((last.started_at, last.id));
            again.extend(page.iter().map(|s| s.id));
        }
        assert!(again == want, "the restart lists them all again");
        let bobs = Gate::new(PolicyHandle::default())
            .admit(&Caller::from_verified(bob), Rpc::List)
            .unwrap();
        assert_eq!(
            jobs.list(&bobs, false, None, 1000)
                .await
                .unwrap()
                .iter()
                .map(|s| s.id)
                .collect::<Vec<_>>(),
            [JobId::from_u128(RECORDS)]
        );
        jobs.shutdown().await;
    }
}

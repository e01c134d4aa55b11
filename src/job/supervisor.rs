//! The one task per job that owns its processes and pipes. Every
//! supervisor runs on the jobs' output thread (`OutputThread` in the job
//! module): its appends to the log are plain writes that wait when the
//! disk stalls, and must not hold a worker of the runtime that answers
//! requests.
//!
//! Order of events, which is what makes output complete, final states
//! honest and records durable:
//! 0. The job's record goes into the store; only then is the start
//!    acknowledged (and the job registered). If it cannot be written, the
//!    job is killed and its log deleted: nothing unrecorded runs.
//! 1. While the main process runs: copy both pipes into the log as data
//!    arrives (whether or not anyone follows), and act on stop requests:
//!    SIGTERM + SIGCONT to the job, SIGKILL when the grace period ends. A job
//!    that reaches its output quota is stopped the same way; the log keeps
//!    exactly the quota's bytes, and whatever the job writes later is read
//!    (so it never blocks on a full pipe) and discarded. The owner's cap
//!    over all its jobs ([`super::ledger`]) ends the job the same way. When
//!    the disk is down to its headroom ([`super::disk`]) the pipes are not
//!    read (the job's writes block) until there is room, unless the job's
//!    owner is the identity stopped for it; a write that fails with ENOSPC
//!    waits the same way. A job whose output cannot be written otherwise is
//!    stopped like a stop request (`output_failed`).
//! 2. The main process exits. The executor kills what is left of the job
//!    (its cgroup, or its process group while the unreaped leader pins the
//!    group id), waits until no process of it remains, and reaps it.
//! 3. The pipes are drained to EOF (bounded by [`super::DRAIN_TIMEOUT`]).
//! 4. The log is flushed to disk, then the end is recorded in the store (so
//!    a record never says "ended" about output that a crash could lose),
//!    then the final state is published and the log sealed, so a follower
//!    that reaches the end of the log always finds the job final.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::io::AsyncReadExt;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{
    Ended, ExitInfo, Job, JobError, JobId, JobSignal, OutputPipe, Phase, Registry, RunningSlot,
    Spawned, State,
};
use crate::output::{Fd, LogWriter, RecordBuf};
use crate::store::{JobEnd, JobRecord, Store};

pub(super) struct Supervisor {
    /// The job, registered once its record is stored.
    pub job: Arc<Job>,
    /// Its record as stored at the start.
    pub record: JobRecord,
    /// Its output log, deleted if the record cannot be stored.
    pub log_path: PathBuf,
    /// Where the start is answered: the job once recorded, or why not.
    pub started: oneshot::Sender<Result<Arc<Job>, JobError>>,
    pub registry: Arc<Registry>,
    pub store: Store,
    pub spawned: Spawned,
    pub log: LogWriter,
    pub phase: watch::Sender<Phase>,
    pub stop: watch::Receiver<bool>,
    pub shutdown: CancellationToken,
    pub grace: std::time::Duration,
    /// The output quota in bytes, if any.
    pub max_output_bytes: Option<u64>,
    /// The owner's cap on all its output, running jobs' included
    /// ([`super::Retention::max_output_per_identity`]).
    pub identity_cap: Option<u64>,
    /// Counts the job against its owner's running-jobs quota until dropped.
    pub slot: RunningSlot,
    /// The uid it runs as, for the log; `None` when the executor's default
    /// or uncontained.
    pub uid: Option<u32>,
}

/// Where output goes: the log, up to the job's and its owner's quotas,
/// while the disk has room, until a write fails.
struct Sink {
    log: LogWriter,
    /// Bytes the log may still take; `None`: unlimited.
    room: Option<u64>,
    /// Bytes read after a quota was reached, and not recorded.
    discarded: u64,
    /// A write to the log failed: nothing more is recorded.
    failed: bool,
    /// The job's owner, whose output the ledger counts.
    owner: crate::auth::Identity,
    /// The owner's cap over all its jobs.
    identity_cap: Option<u64>,
    /// Bytes counted in the ledger for this job.
    taken: u64,
    registry: Arc<Registry>,
    /// A full disk makes a write wait (while the job runs) rather than fail.
    wait_on_full: bool,
}

impl Sink {
    /// True when this job should not read more output now: the disk is down
    /// to its headroom and what is read would be kept.
    fn must_wait(&self) -> bool {
        !self.registry.disk.has_room() && !self.failed && !self.over()
    }
}

impl Sink {
    /// True once the job wrote more than its quota (a job that writes
    /// exactly its quota is within it).
    fn over(&self) -> bool {
        self.discarded > 0
    }
}

/// One output pipe and its buffer; `None` once it reached EOF or failed.
struct Pipe {
    fd: Fd,
    reader: Option<OutputPipe>,
    buf: RecordBuf,
    /// Bytes in `buf` read but not yet in the log (the disk was full).
    pending: Option<usize>,
}

impl Pipe {
    fn new(fd: Fd, reader: OutputPipe) -> Self {
        Self {
            fd,
            reader: Some(reader),
            buf: RecordBuf::new(),
            pending: None,
        }
    }

    /// Reads once; `Ok(n)` with `n == 0` means EOF. Pending forever if closed.
    ///
    /// Cancel safe: `AsyncReadExt::read` loses nothing when dropped.
    async fn read(&mut self) -> std::io::Result<usize> {
        match self.reader.as_mut() {
            Some(r) => r.read(self.buf.data_mut()).await,
            None => std::future::pending().await,
        }
    }

    /// Stores the result of [`Pipe::read`] (as much as the quota leaves
    /// room for); closes the pipe on EOF or error.
    fn store(&mut self, job: JobId, result: std::io::Result<usize>, sink: &mut Sink) {
        match result {
            Ok(0) => self.reader = None,
            Ok(n) => {
                let keep = match sink.room {
                    None => n,
                    Some(room) => {
                        // `room < n` here means it fits in usize.
                        let keep = (room.min(n as u64)) as usize;
                        sink.room = Some(room - keep as u64);
                        sink.discarded += (n - keep) as u64;
                        keep
                    }
                };
                if sink.failed {
                    return;
                }
                // The owner's cap over all its jobs: at most `keep`, which
                // fits in usize.
                let taken = sink
                    .registry
                    .output
                    .take(sink.owner, keep as u64, sink.identity_cap);
                if taken.over {
                    // Older finished jobs of the owner may go to make room.
                    sink.registry.ended.notify_one();
                }
                let granted = taken.granted as usize;
                sink.taken += granted as u64;
                sink.discarded += (keep - granted) as u64;
                self.pending = Some(granted);
                self.flush(job, sink);
            }
            Err(e) => {
                tracing::error!(job = %job, error = %e, "cannot read job output pipe");
                self.reader = None;
            }
        }
    }

    /// Appends the bytes read but not yet written. On a full disk while
    /// the job runs they stay pending (and the disk counts as without room)
    /// until [`Pipe::flush`] is called again; any other failure stops the
    /// recording.
    fn flush(&mut self, job: JobId, sink: &mut Sink) {
        let Some(len) = self.pending else { return };
        if sink.failed {
            self.pending = None;
            return;
        }
        match sink.log.append(self.fd, &mut self.buf, len) {
            Ok(()) => {
                self.pending = None;
                sink.registry.disk.spend(len as u64 + RECORD_HEADER);
            }
            Err(crate::output::OutputError::Io(e)) if sink.wait_on_full && is_full(&e) => {
                tracing::warn!(job = %job, "the output directory's disk is full; the job waits to write");
                sink.registry.disk.exhausted();
            }
            Err(e) => {
                // The log keeps what it had; the job is stopped rather
                // than left running with its output thrown away.
                tracing::error!(job = %job, error = %e, "cannot write job output; stopping the job");
                sink.failed = true;
                self.pending = None;
            }
        }
    }

    /// True while this pipe may be read: open, nothing pending, and not
    /// waiting for room.
    fn readable(&self, sink: &Sink) -> bool {
        self.pending.is_none() && !sink.must_wait()
    }

    fn open(&self) -> bool {
        self.reader.is_some()
    }
}

/// Bytes of a log record's header, counted against the disk's budget.
const RECORD_HEADER: u64 = 5;

/// True for the errors of a full disk or an exhausted disk quota.
fn is_full(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

pub(super) async fn supervise(s: Supervisor) {
    let Supervisor {
        job,
        record,
        log_path,
        started,
        registry,
        store,
        spawned,
        log,
        phase,
        mut stop,
        shutdown,
        grace,
        max_output_bytes,
        identity_cap,
        slot,
        uid,
    } = s;
    let id = job.id;
    let owner = job.owner;
    let Spawned {
        mut process,
        stdout,
        stderr,
        meter: _,
        recovery: _,
        cluster_job_id: _,
        drain_until_eof,
        phases,
    } = spawned;

    // 0. Record the job before anyone is told it started.
    let recording = std::time::Instant::now();
    if let Err(e) = store.insert(record).await {
        tracing::error!(job = %id, error = %e, "cannot record the job; killing it");
        if let Err(e) = process.signal(JobSignal::Kill) {
            tracing::warn!(job = %id, error = %e, "cannot kill job");
        }
        if let Err(e) = process.exited().await {
            tracing::error!(job = %id, error = %e, "cannot wait for job");
        }
        if let Err(e) = process.finish().await {
            tracing::error!(job = %id, error = %e, "cannot reap job");
        }
        drop((log, process));
        if let Err(e) = std::fs::remove_file(&log_path) {
            tracing::warn!(job = %id, error = %e, "cannot delete the output log of an unrecorded job");
        }
        let _ = started.send(Err(e.into()));
        return;
    }
    registry.lock().insert(id, job.clone());
    tracing::debug!(job = %id, ?phases, record = ?recording.elapsed(), "start timings");
    tracing::info!(job = %id, owner = %job.owner, uid, command = ?job.command, "job started");
    // The caller may have gone away; the job runs on, recorded and listed.
    let _ = started.send(Ok(job));

    let mut sink = Sink {
        log,
        room: max_output_bytes,
        discarded: 0,
        failed: false,
        owner,
        identity_cap,
        taken: 0,
        registry: registry.clone(),
        wait_on_full: true,
    };
    let mut out = Pipe::new(Fd::Stdout, stdout);
    let mut err = Pipe::new(Fd::Stderr, stderr);
    let mut stopping = false;
    let mut over_quota = false;
    let mut write_failed = false;
    let mut kill_at: Option<Instant> = None;

    // 1. Until the main process exits.
    loop {
        tokio::select! {
            exited = process.exited() => {
                if let Err(e) = exited {
                    tracing::error!(job = %id, error = %e, "cannot wait for job");
                }
                break;
            }
            r = out.read(), if out.readable(&sink) => out.store(id, r, &mut sink),
            r = err.read(), if err.readable(&sink) => err.store(id, r, &mut sink),
            // Room again (or a check to make): write what is pending.
            _ = registry.disk.wait_for_room(), if sink.must_wait() || out.pending.is_some() || err.pending.is_some() => {
                out.flush(id, &mut sink);
                err.flush(id, &mut sink);
            }
            // No room: the identity that wrote the most when the room ran
            // out has its jobs stopped; the others wait.
            _ = std::future::ready(()), if sink.must_wait() && !stopping && !over_quota && !write_failed && registry.disk.culprit(owner, || registry.output.top_writer()) => {
                tracing::warn!(job = %id, owner = %owner, "the output directory's disk is down to its headroom and this identity writes the most; stopping the job");
                sink.failed = true;
                out.pending = None;
                err.pending = None;
            }
            // A stop request, the daemon shutting down, or the output quota.
            _ = stop_requested(&mut stop, &shutdown), if !stopping && !over_quota && !write_failed => {
                stopping = true;
                kill_at = Some(Instant::now() + grace);
                tracing::info!(job = %id, grace_ms = grace.as_millis() as u64, "stopping job");
                terminate(id, process.as_mut());
            }
            _ = std::future::ready(()), if sink.failed && !stopping && !over_quota && !write_failed => {
                write_failed = true;
                kill_at = Some(Instant::now() + grace);
                terminate(id, process.as_mut());
            }
            _ = std::future::ready(()), if sink.over() && !stopping && !over_quota && !write_failed => {
                over_quota = true;
                kill_at = Some(Instant::now() + grace);
                tracing::info!(job = %id, max_output_bytes = ?max_output_bytes, grace_ms = grace.as_millis() as u64, "output quota reached; stopping job");
                terminate(id, process.as_mut());
            }
            _ = sleep_until(kill_at) => {
                kill_at = None;
                tracing::info!(job = %id, "grace period over; killing job");
                if let Err(e) = process.signal(JobSignal::Kill) {
                    tracing::warn!(job = %id, error = %e, "cannot kill job");
                }
            }
        }
    }

    // 2. Kill what is left of the job, wait until nothing of it runs, reap.
    let Ended { exit, usage } = match process.finish().await {
        Ok(ended) => ended,
        Err(e) => {
            // The child is gone from under us (someone else reaped it); report
            // it as killed so it never looks like success.
            tracing::error!(job = %id, error = %e, "cannot reap job");
            Ended {
                exit: ExitInfo::Signaled {
                    signal: nix::sys::signal::Signal::SIGKILL as i32,
                    core_dumped: false,
                },
                usage: None,
            }
        }
    };
    drop(process);

    // 3. Drain both pipes to EOF, bounded. The processes are gone, so what
    // is left is at most the pipes' contents: it may take the headroom.
    sink.wait_on_full = false;
    out.flush(id, &mut sink);
    err.flush(id, &mut sink);
    let mut deadline = Instant::now() + super::DRAIN_TIMEOUT;
    // Pipes that end by themselves get the bound again with every byte.
    let progress = |r: &std::io::Result<usize>, deadline: &mut Instant| {
        if drain_until_eof && matches!(r, Ok(n) if *n > 0) {
            *deadline = Instant::now() + super::DRAIN_TIMEOUT;
        }
    };
    while out.open() || err.open() {
        tokio::select! {
            r = out.read() => {
                progress(&r, &mut deadline);
                out.store(id, r, &mut sink)
            }
            r = err.read() => {
                progress(&r, &mut deadline);
                err.store(id, r, &mut sink)
            }
            _ = tokio::time::sleep_until(deadline) => {
                tracing::warn!(job = %id, "output pipes still open after the job's processes were killed; a process escaped the job");
                break;
            }
        }
    }
    drop((out, err));

    // 4. Flush the log, record the end, publish the final state, seal.
    let oom = usage.is_some_and(|u| u.oom_kills > 0);
    // A failed write or bytes beyond the quota may also come after the main
    // process exited (still in the pipes): they make the state say so.
    let failed = write_failed || sink.failed;
    let state = match (failed, over_quota || sink.over(), stopping, oom, exit) {
        (true, _, _, _, _) => State::OutputFailed,
        (false, true, _, _, _) => State::OutputLimit,
        (false, false, true, _, _) => State::Stopped,
        (false, false, false, true, _) => State::Oom,
        (false, false, false, false, ExitInfo::Exited(_)) => State::Exited,
        (false, false, false, false, ExitInfo::Signaled { .. }) => State::Killed,
    };
    let ended_at = SystemTime::now();
    registry.output.finish(
        owner,
        sink.taken,
        super::ledger::Finished {
            id,
            ended_at,
            bytes: sink.log.data_len(),
        },
    );
    tracing::info!(job = %id, ?state, ?exit, ?usage, bytes = sink.log.data_len(), discarded = sink.discarded, "job final");
    // Whether the store holds the end now: then the job is read from there
    // and no longer held in memory.
    let mut recorded = false;
    match sink.log.sync().await {
        Ok(()) => {
            let end = JobEnd {
                state,
                exit: Some(exit),
                ended_at,
                usage,
                output_bytes: sink.log.data_len(),
            };
            match store.finish(id, end.clone()).await {
                Ok(()) => recorded = true,
                // Removed already (`jobs rm` of the final job): nothing to
                // record, nothing to hold.
                Err(crate::store::StoreError::NotRunning { .. }) => recorded = true,
                Err(e) => {
                    // Most likely a full disk: retried when space may be free.
                    tracing::error!(job = %id, error = %e, "cannot record the job's end now; will retry (until then, a restart shows it as lost)");
                    registry.defer_end(id, end);
                }
            }
        }
        // Recording the end now could leave a record of output a crash
        // loses; left unrecorded, a restart shows the job as lost instead.
        Err(e) => {
            tracing::error!(job = %id, error = %e, "cannot flush the job's output; after a restart it will show as lost");
        }
    }
    // The job stops counting against its owner's running-jobs quota before
    // anyone can see it final, so a start right after a stop always finds
    // the slot free.
    drop(slot);
    phase.send_replace(Phase::Final {
        state,
        exit: Some(exit),
        ended_at,
        usage,
    });
    sink.log.seal();
    if recorded {
        registry.retire(id);
    }
    registry.ended.notify_one();
}

/// SIGTERM and SIGCONT (so a stopped job sees the SIGTERM) to the job.
fn terminate(id: JobId, process: &mut dyn super::Process) {
    for signal in [JobSignal::Terminate, JobSignal::Continue] {
        if let Err(e) = process.signal(signal) {
            tracing::warn!(job = %id, error = %e, ?signal, "cannot signal job");
        }
    }
}

/// Sleeps until `at`, or forever when `None`.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Resolves when the owner asked for a stop or the daemon is shutting down.
async fn stop_requested(stop: &mut watch::Receiver<bool>, shutdown: &CancellationToken) {
    let asked = async {
        if stop.wait_for(|s| *s).await.is_err() {
            // The job record is gone; only shutdown can stop the job now.
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        _ = asked => {}
        _ = shutdown.cancelled() => {}
    }
}

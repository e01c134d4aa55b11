//! Jobs: ids, owners, states, the registry, and the per-job supervisor.
//!
//! This module owns what a job *is*: a UUID v4 [`JobId`], the [`Identity`] that
//! owns it, the command it runs, its [`State`], and its output [`Log`]. Each job
//! has exactly one supervisor task (see `supervisor.rs`) that owns the child's
//! processes and pipes, is the only writer of its state and output, and takes
//! stop requests as messages. RPC handlers never own a job: dropping one (the
//! client went away) changes nothing about the job.
//!
//! Where a job runs is behind the [`Executor`] trait (`executor.rs`); this module
//! must not fork, signal or wait on processes itself.
//!
//! Access control lives here too, in one function: [`Jobs::authorize`] is the
//! only way to get an [`OwnedJob`], and every operation on an existing job is a
//! method of `OwnedJob` (or, for [`Jobs::remove`], takes one).
//!
//! Jobs outlive the daemon: each job's record is written to the
//! [`crate::store::Store`] when it starts (before the start is acknowledged)
//! and when it ends (after its output is flushed to disk). Only jobs whose
//! end the store does not hold yet are kept in memory; a finished job is
//! read from the store when it is asked for ([`Jobs::authorize`],
//! [`Jobs::list`]), so the daemon's memory does not grow with the number
//! of records. [`Jobs::open`] marks the jobs a dead daemon left running
//! [`State::Lost`] and kills what is left of them. Finished jobs are
//! removed by age and by their owner's total output (`retention.rs`), or
//! by [`Jobs::remove`].

mod disk;
mod error;
mod executor;
mod ledger;
mod limits;
mod output_thread;
mod restore;
mod retention;
mod slots;
mod spec;
mod supervisor;
mod uids;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use error::{AccessDenied, JobError};
pub use executor::{
    BoxFuture, Capabilities, Ended, Executor, JobSignal, Launch, Meter, OutputPipe, Process,
    SpawnError, Spawned,
};
pub use limits::{
    Account, AccountError, CeilingOverrides, JobPermits, JobQuota, MAX_PIDS, MIN_CPU_MILLIS,
    MIN_MEMORY_BYTES, MIN_PIDS, Override, Resource, ResourceLimits, human_bytes,
};
pub use retention::{DEFAULT_MAX_AGE, Retention};
pub use spec::{JobSpec, MAX_ARGS, MAX_ARGV_BYTES, MAX_PROGRAM_LEN};

pub use crate::model::{ExitInfo, JobId, MalformedJobId, ResourceUsage, State};

use crate::accounts::UidRange;
use crate::auth::Identity;
use crate::output::{self, Log, LogReader};
use crate::policy::Grant;
pub(crate) use slots::RunningSlot;
use slots::RunningSlots;

use crate::store::{Cursor, JobEnd, JobRecord, Store, StoreError};

/// Default time between SIGTERM and SIGKILL when a job is stopped.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);

/// Longest grace period a daemon may be configured with. Stop answers only
/// once the job is final, so clients bound their wait by this.
pub const MAX_GRACE: Duration = Duration::from_secs(60);

/// How long the supervisor keeps reading a job's pipes after its process group
/// was killed. Every process of the group is dead by then, so the pipes reach
/// EOF as soon as their buffered bytes are read; only a process that left the
/// group (`setsid`) can hold them open, and it is not waited for beyond this.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// A point-in-time view of a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// The job's id.
    pub id: JobId,
    /// Its state.
    pub state: State,
    /// How the main process ended; `None` while running.
    pub exit: Option<ExitInfo>,
    /// The program as given, then its arguments.
    pub command: Vec<String>,
    /// When the process was spawned.
    pub started_at: SystemTime,
    /// When the job became final; `None` while running.
    pub ended_at: Option<SystemTime>,
    /// Who owns it.
    pub owner: Identity,
    /// The limits it runs under; `None` when jobs are not contained.
    pub limits: Option<ResourceLimits>,
    /// What it used so far (running) or in all (final); `None` when jobs are
    /// not contained or the counters could not be read.
    pub usage: Option<ResourceUsage>,
    /// Output bytes recorded so far (stdout and stderr together).
    pub output_bytes: u64,
    /// Its output quota in bytes; `None` when unlimited.
    pub max_output_bytes: Option<u64>,
    /// While [`State::Running`]: why the cluster still holds it queued
    /// (`None` once it runs, and for jobs run on this machine).
    pub pending: Option<String>,
    /// The cluster's own id for it, when a cluster runs it.
    pub cluster_job_id: Option<String>,
}

/// The name of job `id`'s output log in the output directory: `<id>.log`.
fn log_name(id: JobId) -> String {
    format!("{id}.log")
}

/// Settings of the job engine.
#[derive(Clone, Debug)]
pub struct JobsConfig {
    /// Directory for per-job output logs (created if missing, mode 0700).
    pub output_dir: PathBuf,
    /// Time between SIGTERM and SIGKILL on stop; at most [`MAX_GRACE`]
    /// (longer values are treated as [`MAX_GRACE`]).
    pub grace: Duration,
    /// The most each job may ask for, and what it gets by default, unless
    /// the caller's [`JobQuota::ceilings`] override it. Ignored when the
    /// executor cannot enforce limits (IO fields: IO limits).
    pub ceiling: ResourceLimits,
    /// Accounts for the jobs of particular identities (`jobsd
    /// --run-as-for`), ahead of `uid_range`. Ignored when the executor does
    /// not contain jobs.
    pub accounts: HashMap<Identity, Account>,
    /// Where every other identity's contained jobs get an account of their
    /// own: a uid (and the gid of the same number) of this range, assigned
    /// on the identity's first start and kept in the store for good (see
    /// [`crate::accounts`]). `None`: they run as the executor's default
    /// account, all sharing it (`jobsd --run-as`). Ignored when the
    /// executor does not contain jobs.
    pub uid_range: Option<UidRange>,
    /// When finished jobs are removed, and the output one identity may
    /// keep ([`Retention::max_output_per_identity`], counted live).
    pub retention: Retention,
    /// Most output bytes each job may write unless the caller's
    /// [`JobQuota::max_output_bytes`] says otherwise; `None`: not limited
    /// (`jobsd --max-output` sets it, 1 GiB by default).
    pub max_output_bytes: Option<u64>,
    /// Limits on all of one identity's running jobs together (memory, CPU,
    /// processes) unless the policy's `[identity_limits]` says otherwise;
    /// `None` fields: not limited (`jobsd --identity-max-*` sets them: half
    /// the machine's memory and 4096 processes by default). Ignored when the
    /// executor cannot limit.
    pub identity_limits: ResourceLimits,
    /// Free space on the output directory's file system that job output
    /// never takes (see `disk.rs`); at most a quarter of the file system.
    pub disk_headroom: u64,
}

impl JobsConfig {
    /// Output logs in `output_dir`, [`DEFAULT_GRACE`], no ceilings, an
    /// account of its own for every identity from
    /// [`crate::accounts::DEFAULT_UID_RANGE`], [`Retention::default`], no
    /// per-job output cap, no identity limits, the default disk headroom
    /// (64 MiB).
    pub fn new(output_dir: PathBuf) -> Self {
        Self {
            output_dir,
            grace: DEFAULT_GRACE,
            ceiling: ResourceLimits::default(),
            accounts: HashMap::new(),
            uid_range: Some(crate::accounts::DEFAULT_UID_RANGE),
            retention: Retention::default(),
            max_output_bytes: None,
            identity_limits: ResourceLimits::default(),
            disk_headroom: disk::DEFAULT_HEADROOM,
        }
    }
}

/// What the supervisor publishes about a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Running,
    Final {
        state: State,
        /// `None` only for [`State::Lost`].
        exit: Option<ExitInfo>,
        ended_at: SystemTime,
        usage: Option<ResourceUsage>,
    },
}

/// One job's shared record. Immutable but for the watch channels.
struct Job {
    id: JobId,
    owner: Identity,
    command: Vec<String>,
    started_at: SystemTime,
    phase: watch::Receiver<Phase>,
    stop: watch::Sender<bool>,
    log: Log,
    limits: Option<ResourceLimits>,
    max_output_bytes: Option<u64>,
    meter: Option<Arc<dyn Meter>>,
    cluster_job_id: Option<String>,
}

impl Job {
    /// A job that is final for good (`phase` is not [`Phase::Running`]),
    /// as `record` describes it, with output `log`.
    fn final_of(record: JobRecord, phase: Phase, log: Log) -> Self {
        // The sender goes away at once: the phase is final for good.
        let (_, phase) = watch::channel(phase);
        let (stop, _) = watch::channel(false);
        Self {
            id: record.id,
            owner: record.owner,
            command: record.command,
            started_at: record.started_at,
            phase,
            stop,
            log,
            limits: record.limits,
            max_output_bytes: record.max_output_bytes,
            meter: None,
            cluster_job_id: record.cluster_job_id,
        }
    }

    fn status(&self) -> Status {
        let phase = *self.phase.borrow();
        let pending = match phase {
            Phase::Running => self.meter.as_ref().and_then(|m| m.queued()),
            Phase::Final { .. } => None,
        };
        let (state, exit, ended_at, usage) = match phase {
            Phase::Running => (
                State::Running,
                None,
                None,
                self.meter.as_ref().and_then(|m| m.usage()),
            ),
            Phase::Final {
                state,
                exit,
                ended_at,
                usage,
            } => (state, exit, Some(ended_at), usage),
        };
        Status {
            id: self.id,
            state,
            exit,
            command: self.command.clone(),
            started_at: self.started_at,
            ended_at,
            owner: self.owner,
            limits: self.limits,
            usage,
            output_bytes: self.log.data_len(),
            max_output_bytes: self.max_output_bytes,
            pending,
            cluster_job_id: self.cluster_job_id.clone(),
        }
    }
}

/// The registry of jobs: starts them, finds them for their owners, and stops
/// them all at shutdown.
pub struct Jobs {
    executor: Arc<dyn Executor>,
    config: JobsConfig,
    registry: Arc<Registry>,
    store: Store,
    slots: Arc<RunningSlots>,
    /// `None` without [`JobsConfig::uid_range`].
    uids: Option<uids::IdentityUids>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    /// Where the supervisors run.
    output: output_thread::OutputThread,
}

/// The jobs held in memory, by id, and what wakes the retention task.
#[derive(Default)]
struct Registry {
    /// The jobs whose end the store does not hold: running ones, and
    /// ended ones whose end is still to be recorded. Every other job is
    /// read from the store.
    jobs: Mutex<HashMap<JobId, Arc<Job>>>,
    /// Notified when a job ends (its owner's total may now be over the cap)
    /// or is removed (space was freed for ends not yet recorded).
    ended: tokio::sync::Notify,
    /// Ends the store could not record when they happened (its disk was
    /// full), retried by the retention task until they are written.
    unrecorded: Mutex<Vec<(JobId, JobEnd)>>,
    /// Every identity's output on disk, counted live.
    output: ledger::Ledger,
    /// Room for output on the output directory's disk.
    disk: Arc<disk::DiskRoom>,
}

impl Registry {
    /// Keeps `end` of job `id` to be recorded later, and wakes the retention
    /// task.
    fn defer_end(&self, id: JobId, end: JobEnd) {
        self.unrecorded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((id, end));
        self.ended.notify_one();
    }

    /// Tries once to record every deferred end; keeps those that fail.
    /// Returns how many are still unrecorded.
    async fn record_deferred_ends(&self, store: &Store) -> usize {
        let pending =
            std::mem::take(&mut *self.unrecorded.lock().unwrap_or_else(|p| p.into_inner()));
        let mut failed = Vec::new();
        for (id, end) in pending {
            match store.finish(id, end.clone()).await {
                Ok(()) => {
                    tracing::info!(job = %id, "recorded the job's end after all");
                    self.retire(id);
                }
                // Removed meanwhile (`jobs rm`): nothing to record.
                Err(StoreError::NotRunning { .. }) => self.retire(id),
                Err(_) => failed.push((id, end)),
            }
        }
        let mut unrecorded = self.unrecorded.lock().unwrap_or_else(|p| p.into_inner());
        unrecorded.extend(failed);
        unrecorded.len()
    }

    /// Forgets job `id` in memory: the store holds its end (or it was
    /// removed), so it is read from there from now on.
    fn retire(&self, id: JobId) {
        self.lock().remove(&id);
    }

    /// Gives back the output of `owner`'s finished job `id` (`bytes`), just
    /// removed from the store, to its owner's count; if it was the owner's
    /// latest, the store names the next.
    async fn forget_output(&self, store: &Store, owner: Identity, id: JobId, bytes: u64) {
        if !self.output.forget(owner, id, bytes) {
            return;
        }
        match store.latest_ended_of(owner).await {
            Ok(Some(latest)) => self.output.note_latest(owner, latest.into()),
            Ok(None) => {}
            // Counted without a latest job: the cap is then looser by one
            // job's output until the owner's next job ends.
            Err(e) => {
                tracing::error!(error = %e, owner = %owner, "cannot read the identity's latest finished job")
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, Arc<Job>>> {
        // A panic while holding this lock leaves the map itself consistent
        // (every operation on it is a single insert, remove or read), so
        // poisoning is ignored rather than propagated to every later request.
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Why [`Jobs::open`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The output directory could not be created or made owner-only.
    #[error("cannot use the output directory {}", path.display())]
    OutputDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The store could not be read, or the lost jobs not recorded.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The thread the jobs' supervisors run on could not be started.
    #[error("cannot start the output thread")]
    OutputThread(#[source] std::io::Error),
}

/// A job the caller may act on: their own, or (for an admin) anyone's. Only
/// [`Jobs::authorize`] and [`Jobs::launch`] make one, so holding it proves the
/// access check was done.
#[derive(Clone)]
pub struct OwnedJob(Arc<Job>);

impl Jobs {
    /// The registry of the jobs in `store`, whose record ids are `ids` (as
    /// [`Store::scan`] returned them), which starts new jobs with
    /// `executor`; starts the retention task (so it must be called within a
    /// tokio runtime).
    ///
    /// Every job the store has is listed again: finished ones with their
    /// final status and output; ones a dead daemon left running become
    /// [`State::Lost`], after [`Executor::reclaim`] killed what was left of
    /// them and their output was cut after its last complete record
    /// ([`output::recover`]). Output logs with no record (a crash between
    /// creating a log and recording its job, or between removing a record
    /// and its log) are deleted. Reads the store (blocking): call it at
    /// start-up.
    ///
    /// # Errors
    /// [`OpenError::OutputDir`] if the output directory cannot be created;
    /// [`OpenError::Store`] if the store cannot be read. (Lost jobs that
    /// cannot be recorded as lost now, on a full disk, are recorded later,
    /// as ends are.)
    pub fn open(
        executor: Arc<dyn Executor>,
        config: JobsConfig,
        store: Store,
        ids: HashSet<JobId>,
    ) -> Result<Self, OpenError> {
        let dir_error = |source| OpenError::OutputDir {
            path: config.output_dir.clone(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&config.output_dir)
            .map_err(dir_error)?;
        restrict_to_owner(&config.output_dir).map_err(dir_error)?;
        let registry = Arc::new(Registry::default());
        disk::first_check(&registry.disk, &config.output_dir, config.disk_headroom);
        restore::restore(
            &registry,
            executor.as_ref(),
            &config.output_dir,
            &store,
            &ids,
        )?;
        drop(ids);
        let jobs = Self {
            uids: config
                .uid_range
                .map(|range| uids::IdentityUids::new(range, store.clone())),
            executor,
            config,
            registry,
            store,
            slots: Arc::default(),
            tracker: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            output: output_thread::OutputThread::start().map_err(OpenError::OutputThread)?,
        };
        jobs.tracker.spawn(disk::run(disk::Monitor {
            room: jobs.registry.disk.clone(),
            dir: jobs.config.output_dir.clone(),
            headroom: jobs.config.disk_headroom,
            store: jobs.store.clone(),
            shutdown: jobs.shutdown.clone(),
        }));
        jobs.tracker.spawn(retention::run(retention::Task {
            registry: jobs.registry.clone(),
            store: jobs.store.clone(),
            retention: jobs.config.retention,
            output_dir: jobs.config.output_dir.clone(),
            shutdown: jobs.shutdown.clone(),
        }));
        Ok(jobs)
    }

    /// The one access check: the job `id` if the grant's caller owns it, or
    /// if the caller is an admin (then [`OwnedJob::owner`] tells whose it is).
    ///
    /// # Errors
    /// [`AccessDenied::MalformedId`] for an id not in canonical form;
    /// [`AccessDenied::NoSuchJob`]; [`AccessDenied::NotOwner`] for another
    /// identity's job. Converted to [`JobError`], the last two are the same
    /// [`JobError::NotFound`].
    ///
    /// A job held in memory is found there; any other is read from the
    /// store (the access check comes before its output file is looked at).
    /// [`AccessDenied::Store`] when the store cannot be read.
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads.
    pub async fn authorize(&self, grant: &Grant, id: &str) -> Result<OwnedJob, AccessDenied> {
        let id: JobId = id.parse().map_err(|_| AccessDenied::MalformedId)?;
        let held = self.registry.lock().get(&id).cloned();
        if let Some(job) = held {
            if job.owner != grant.identity() && !grant.is_admin() {
                // The same work as refusing an id of no job (one lookup in
                // the store on the blocking pool), so how long the refusal
                // takes does not tell someone else's running job from no
                // job at all.
                let store = self.store.clone();
                let _ = tokio::task::spawn_blocking(move || store.get_now(id)).await;
                return Err(AccessDenied::NotOwner { owner: job.owner });
            }
            return Ok(OwnedJob(job));
        }
        let store = self.store.clone();
        let dir = self.config.output_dir.clone();
        let (caller, admin) = (grant.identity(), grant.is_admin());
        // One trip to the blocking pool: the record, the access check, then
        // (only for the caller's own, or an admin) its log's length.
        let found = tokio::task::spawn_blocking(move || {
            let Some(mut record) = store.get_now(id).map_err(AccessDenied::Store)? else {
                return Err(AccessDenied::NoSuchJob);
            };
            if record.owner != caller && !admin {
                return Err(AccessDenied::NotOwner {
                    owner: record.owner,
                });
            }
            // Recorded as running but not held: a start between its record
            // and its registration, whose id nobody has been told yet.
            let end = record.end.take().ok_or(AccessDenied::NoSuchJob)?;
            let path = dir.join(log_name(id));
            // Its record says it ended with its output flushed, so only
            // someone else can have taken the file away: reading it then
            // fails (INTERNAL), rather than look empty.
            let log = output::open_sealed(&path, end.output_bytes).unwrap_or_else(|e| {
                tracing::error!(job = %id, error = %e, "cannot open the job's output log; reading its output will fail");
                output::sealed_empty(&path)
            });
            Ok(Job::final_of(record, end.into(), log))
        })
        .await;
        match found {
            Ok(job) => Ok(OwnedJob(Arc::new(job?))),
            // The runtime is shutting down.
            Err(_) => Err(AccessDenied::NoSuchJob),
        }
    }

    /// Up to `limit` of the caller's own jobs, or with `all_users` of every
    /// user's jobs (admins only), oldest first (by start time, then id),
    /// from just after `after` (from the first without). Read from the
    /// store's index: the cost is the page's, however many jobs there are.
    ///
    /// # Errors
    /// [`JobError::AdminOnly`] when a non-admin asks for `all_users`;
    /// [`JobError::Store`] when the store cannot be read.
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads.
    pub async fn list(
        &self,
        grant: &Grant,
        all_users: bool,
        after: Option<Cursor>,
        limit: usize,
    ) -> Result<Vec<Status>, JobError> {
        if all_users && !grant.is_admin() {
            return Err(JobError::AdminOnly);
        }
        let owner = (!all_users).then(|| grant.identity());
        let records = self.store.page(owner, after, limit).await?;
        let held = self.registry.lock();
        Ok(records
            .into_iter()
            .map(|record| match held.get(&record.id) {
                Some(job) => job.status(),
                None => record_status(record),
            })
            .collect())
    }

    /// Every job of `owner` still running, oldest first, for an admin: the
    /// first half of stopping one identity's work (`jobs stop --owner`).
    ///
    /// # Errors
    /// [`JobError::AdminOnly`] unless the grant is an admin's.
    pub fn running_owned_by(
        &self,
        grant: &Grant,
        owner: Identity,
    ) -> Result<Vec<OwnedJob>, JobError> {
        if !grant.is_admin() {
            return Err(JobError::AdminOnly);
        }
        Ok(self.running_of(owner))
    }

    /// Every job of `owner` still running, oldest first. For the daemon's own
    /// enforcement (a revoked or denylisted identity), never for a request.
    pub(crate) fn running_of(&self, owner: Identity) -> Vec<OwnedJob> {
        let mut jobs: Vec<Arc<Job>> = self
            .registry
            .lock()
            .values()
            .filter(|j| j.owner == owner && matches!(*j.phase.borrow(), Phase::Running))
            .cloned()
            .collect();
        jobs.sort_by(|a, b| a.started_at.cmp(&b.started_at).then(a.id.cmp(&b.id)));
        jobs.into_iter().map(OwnedJob).collect()
    }

    /// Owners of the jobs still running.
    pub(crate) fn running_owners(&self) -> std::collections::HashSet<Identity> {
        self.registry
            .lock()
            .values()
            .filter(|j| matches!(*j.phase.borrow(), Phase::Running))
            .map(|j| j.owner)
            .collect()
    }

    /// Decides whether the grant's caller may start a job under `limits`
    /// now, and if so reserves its place: a new job id and a slot in the
    /// caller's running-jobs quota (freed when the ticket is dropped unused).
    /// Unset fields of `limits` take the ceiling: the configured one with the
    /// grant's [`JobQuota::ceilings`] applied. Nothing runs until
    /// [`Jobs::launch`]; in between the caller may record the decision.
    ///
    /// # Errors
    /// [`JobError::ShuttingDown`] after [`Jobs::shutdown`] began;
    /// [`JobError::LimitsUnavailable`], [`JobError::IoLimitsUnavailable`],
    /// [`JobError::LimitTooSmall`], [`JobError::LimitAboveCeiling`] for limits
    /// the daemon cannot or will not grant; [`JobError::TooManyRunningJobs`]
    /// when the caller has [`JobQuota::max_running_jobs`] jobs not yet final
    /// (reserved tickets count, so parallel starts cannot overshoot);
    /// [`JobError::UidRangeExhausted`] when the caller needs a uid of its
    /// own and none is left, [`JobError::AccountUnavailable`] when its uid
    /// turns out to be a local account's, or [`JobError::Store`] when it
    /// cannot be recorded (nothing is reserved then).
    ///
    /// # Cancel safety
    /// Dropping the future reserves nothing; a uid assigned to the caller
    /// meanwhile stays its own.
    pub async fn reserve(
        &self,
        grant: &Grant,
        limits: ResourceLimits,
    ) -> Result<StartTicket, JobError> {
        if self.shutdown.is_cancelled() {
            return Err(JobError::ShuttingDown);
        }
        let owner = grant.identity();
        let quota = grant.quota();
        // Output could not be kept: the disk is down to its headroom.
        if !self.registry.disk.has_room() {
            return Err(JobError::Store(StoreError::Full));
        }
        let caps = self.executor.capabilities();
        let (limits, account) = if caps.limits {
            if limits.has_io() && !caps.io_limits {
                return Err(JobError::IoLimitsUnavailable);
            }
            if limits.pids.is_some() && caps.no_pids_limit {
                return Err(JobError::PidsLimitUnavailable);
            }
            let mut ceiling = quota.ceilings.apply(&self.config.ceiling);
            if !caps.io_limits {
                (ceiling.io_read_bps, ceiling.io_write_bps) = (None, None);
            }
            if caps.no_pids_limit {
                ceiling.pids = None;
            }
            (
                Some(limits.resolve(&ceiling)?),
                self.config.accounts.get(&owner).cloned(),
            )
        } else if limits.is_empty() {
            (
                None,
                caps.accounts
                    .then(|| self.config.accounts.get(&owner).cloned())
                    .flatten(),
            )
        } else {
            return Err(JobError::LimitsUnavailable);
        };
        let slot = self.slots.acquire(owner, quota.max_running_jobs)?;
        // After the quota check, so that an identity that may not start
        // anything is never given a uid.
        let account = match (account, &self.uids) {
            (None, Some(uids)) if caps.limits || caps.accounts => Some(uids.account(owner).await?),
            (account, _) => account,
        };
        Ok(StartTicket {
            id: JobId::new_random(),
            owner,
            limits,
            account,
            permits: quota.permits,
            // Enforced only by an executor that limits at all, like the
            // per-job ceilings.
            owner_limits: if caps.limits && !caps.no_owner_limits {
                quota.identity_limits.apply(&self.config.identity_limits)
            } else {
                ResourceLimits::default()
            },
            max_output_bytes: quota.max_output_bytes.apply(self.config.max_output_bytes),
            slot,
        })
    }

    /// Starts `spec` on a reserved `ticket` and returns the running job,
    /// which gets the ticket's id, limits and output quota. Returns only once
    /// the job's record is in the store, so an acknowledged start survives a
    /// crash of the daemon.
    ///
    /// # Errors
    /// [`JobError::ShuttingDown`] if [`Jobs::shutdown`] began since the
    /// reservation; [`JobError::Spawn`] when the program is missing or not
    /// executable or the job cannot be contained (no job is created, nothing
    /// runs, the ticket's id is never used); [`JobError::Output`] if the
    /// output log cannot be made; [`JobError::Store`] if the record cannot be
    /// written (the job is killed; nothing of it is kept).
    ///
    /// # Cancel safety
    /// Dropping the future while the program is being started leaves no job
    /// and no process. Once it has started, the job is recorded and
    /// supervised whether or not the caller still waits.
    pub async fn launch(&self, ticket: StartTicket, spec: JobSpec) -> Result<OwnedJob, JobError> {
        if self.shutdown.is_cancelled() {
            return Err(JobError::ShuttingDown);
        }
        let StartTicket {
            id,
            owner,
            limits,
            account,
            permits,
            owner_limits,
            max_output_bytes,
            slot,
        } = ticket;
        let name = id.to_string();
        let owner_name = owner_group_name(&owner);
        let launch = Launch {
            name: &name,
            spec: &spec,
            limits: &limits.unwrap_or_default(),
            account: account.as_ref(),
            owner: &owner_name,
            owner_limits: &owner_limits,
            permits,
            max_output_bytes,
        };
        // Dropping this future while the executor starts the job kills and
        // reaps what it started; nothing else exists yet.
        let spawned = self.executor.spawn(launch).await?;
        // From here on nothing awaits until the supervisor runs, so the job
        // is supervised even if the caller goes away. Output waits in the
        // pipes meanwhile. If the log cannot be made, dropping `spawned`
        // kills the job.
        let log_path = self.config.output_dir.join(log_name(id));
        let (writer, log) = output::create(&log_path)?;
        let (phase_tx, phase_rx) = watch::channel(Phase::Running);
        let (stop_tx, stop_rx) = watch::channel(false);
        let job = Arc::new(Job {
            id,
            owner,
            command: spec.command(),
            started_at: SystemTime::now(),
            phase: phase_rx,
            stop: stop_tx,
            log,
            limits,
            max_output_bytes,
            meter: spawned.meter.clone(),
            cluster_job_id: spawned.cluster_job_id.clone(),
        });
        let record = JobRecord {
            id,
            owner,
            command: job.command.clone(),
            started_at: job.started_at,
            limits,
            max_output_bytes,
            recovery: spawned.recovery.clone(),
            cluster_job_id: spawned.cluster_job_id.clone(),
            end: None,
        };
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        self.tracker.spawn_on(
            supervisor::supervise(supervisor::Supervisor {
                job,
                record,
                log_path,
                started: started_tx,
                registry: self.registry.clone(),
                store: self.store.clone(),
                spawned,
                log: writer,
                phase: phase_tx,
                stop: stop_rx,
                shutdown: self.shutdown.clone(),
                grace: self.config.grace.min(MAX_GRACE),
                max_output_bytes,
                identity_cap: self.config.retention.max_output_per_identity,
                slot,
                uid: account.as_ref().map(|a| a.uid),
            }),
            self.output.handle(),
        );
        match started_rx.await {
            Ok(started) => started.map(OwnedJob),
            // The supervisor answers before anything else; it can only be
            // gone unanswered if the runtime is shutting down.
            Err(_) => Err(JobError::ShuttingDown),
        }
    }

    /// Deletes a finished job: its record, then its output log. Followers
    /// that have it open read on to the end; everyone else gets
    /// [`JobError::NotFound`] from then on.
    ///
    /// # Errors
    /// [`JobError::StillRunning`] if the job is not final;
    /// [`JobError::NotFound`] if it was removed meanwhile (by another
    /// request or by retention); [`JobError::Store`] if the record cannot be
    /// deleted, e.g. on a disk full beyond the store's reserve (the job
    /// stays as it was, output included).
    ///
    /// # Cancel safety
    /// The removal (record, log, and its owner's output count) completes
    /// even if the future is dropped.
    pub async fn remove(&self, job: &OwnedJob) -> Result<(), JobError> {
        if matches!(*job.0.phase.borrow(), Phase::Running) {
            return Err(JobError::StillRunning);
        }
        let (id, owner, bytes) = (job.id(), job.owner(), job.0.log.data_len());
        let registry = self.registry.clone();
        let store = self.store.clone();
        let output_dir = self.config.output_dir.clone();
        // A task of its own, so that the count of its owner's output is
        // given back even if the request goes away halfway.
        let task = self.tracker.spawn(async move {
            let removed = retention::delete_jobs(&store, &output_dir, &[id]).await?;
            if removed.is_empty() {
                // By another request or by retention, meanwhile.
                return Err(JobError::NotFound);
            }
            // Held in memory only if its end was still to be recorded.
            registry.retire(id);
            registry.forget_output(&store, owner, id, bytes).await;
            registry.disk.recheck();
            tracing::info!(job = %id, owner = %owner, "job removed");
            // Space was freed: ends that could not be recorded may fit now.
            registry.ended.notify_one();
            Ok(())
        });
        task.await.unwrap_or(Err(JobError::ShuttingDown))
    }

    /// Stops every running job (SIGTERM, grace period, SIGKILL) and waits until
    /// each one is final and its supervisor has exited. New starts are refused
    /// from the moment this is called.
    ///
    /// # Cancel safety
    /// Cancelling the wait does not undo the stop; call again to wait.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        let unrecorded = self.registry.record_deferred_ends(&self.store).await;
        if unrecorded > 0 {
            tracing::error!(
                jobs = unrecorded,
                "could not record how these jobs ended; the next daemon will show them as lost"
            );
        }
        self.executor.close();
    }

    /// Number of jobs not yet final.
    pub fn running(&self) -> usize {
        self.registry
            .lock()
            .values()
            .filter(|j| matches!(*j.phase.borrow(), Phase::Running))
            .count()
    }

    /// Resolves once [`Jobs::shutdown`] has begun: open streams end then.
    pub fn shutting_down(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.shutdown.clone().cancelled_owned()
    }
}

use std::os::unix::fs::DirBuilderExt;

/// The status of a job from its record alone (one not held in memory).
fn record_status(record: JobRecord) -> Status {
    let (state, exit, ended_at, usage, output_bytes) = match record.end {
        Some(end) => (
            end.state,
            end.exit,
            Some(end.ended_at),
            end.usage,
            end.output_bytes,
        ),
        // Recorded an instant ago and not registered yet.
        None => (State::Running, None, None, None, 0),
    };
    Status {
        id: record.id,
        state,
        exit,
        command: record.command,
        started_at: record.started_at,
        ended_at,
        owner: record.owner,
        limits: record.limits,
        usage,
        output_bytes,
        max_output_bytes: record.max_output_bytes,
        // A job not held in memory is final or an instant old.
        pending: None,
        cluster_job_id: record.cluster_job_id,
    }
}

impl From<JobEnd> for Phase {
    fn from(end: JobEnd) -> Self {
        Phase::Final {
            state: end.state,
            exit: end.exit,
            ended_at: end.ended_at,
            usage: end.usage,
        }
    }
}

impl OwnedJob {
    /// The job's id.
    pub fn id(&self) -> JobId {
        self.0.id
    }

    /// The job's owner.
    pub fn owner(&self) -> Identity {
        self.0.owner
    }

    /// The job's current status.
    pub fn status(&self) -> Status {
        self.0.status()
    }

    /// Asks the supervisor to stop the job (SIGTERM to every process, SIGKILL
    /// after the grace period) and waits until it is final. A job that is
    /// already final is not signalled.
    ///
    /// # Cancel safety
    /// Cancel safe: the stop request stands even if the wait is dropped.
    pub async fn stop(&self) -> Status {
        self.request_stop();
        self.wait_final().await
    }

    /// Asks the supervisor to stop the job, as [`OwnedJob::stop`], without
    /// waiting.
    pub fn request_stop(&self) {
        if matches!(*self.0.phase.borrow(), Phase::Running) {
            self.0.stop.send_replace(true);
        }
    }

    /// Waits until the job is final and returns its final status.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn wait_final(&self) -> Status {
        let mut rx = self.0.phase.clone();
        // The supervisor publishes a final phase before it drops its sender, so
        // an error here still leaves the final phase in the channel.
        let _ = rx.wait_for(|p| !matches!(p, Phase::Running)).await;
        self.0.status()
    }

    /// A reader of everything the job has written so far.
    ///
    /// # Errors
    /// [`output::OutputError::Io`] if the output log cannot be opened.
    pub fn output(&self) -> Result<LogReader, output::OutputError> {
        self.0.log.snapshot()
    }

    /// A reader that follows the job's output from byte 0 until the job is
    /// final. When it returns `None`, [`OwnedJob::status`] is final.
    ///
    /// # Errors
    /// [`output::OutputError::Io`] if the output log cannot be opened.
    pub fn follow(&self) -> Result<LogReader, output::OutputError> {
        self.0.log.follow()
    }
}

/// The opaque name executors group `owner`'s jobs under ([`Launch::owner`]):
/// `id-` and the first 16 hex digits of the fingerprint (64 bits: distinct
/// for any number of identities a daemon will see).
fn owner_group_name(owner: &Identity) -> String {
    let hex: String = owner.as_bytes()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("id-{hex}")
}

/// A reserved start: what [`Jobs::reserve`] decided, until [`Jobs::launch`]
/// uses it. Dropping it unused frees its running-jobs slot; its id is then
/// never used.
#[derive(Debug)]
pub struct StartTicket {
    id: JobId,
    owner: Identity,
    limits: Option<ResourceLimits>,
    account: Option<Account>,
    permits: JobPermits,
    owner_limits: ResourceLimits,
    max_output_bytes: Option<u64>,
    slot: RunningSlot,
}

impl StartTicket {
    /// The id the job will have.
    pub fn id(&self) -> JobId {
        self.id
    }
}

/// Makes an existing directory owner-only (mode 0700) if it is looser, with
/// a warning: job output lives there, and a directory prepared with the usual
/// 0755 would let every local user, and every job, read it. A directory this
/// process creates is 0700 already.
///
/// # Errors
/// The OS error of stat(2) or chmod(2).
pub(crate) fn restrict_to_owner(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(dir = %dir.display(), mode = format!("{mode:o}"), "directory was readable by others; making it owner-only (0700)");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

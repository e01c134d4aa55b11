//! The seam between what a job is and where it runs.
//!
//! The engine ([`super::Jobs`] and the supervisor) only sees these traits. The
//! local executor ([`crate::exec::LocalExecutor`]) implements them with a
//! cgroup, namespaces and an unprivileged account on this machine (or a bare
//! process group when it cannot contain jobs); a cluster executor can
//! implement them later without touching ids, owners, states or output.

use std::future::Future;
use std::io;
use std::pin::Pin;

use tokio::io::AsyncRead;

use super::{Account, ExitInfo, JobPermits, JobSpec, ResourceLimits, ResourceUsage};

/// A boxed future, as trait objects need.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A readable end of one of the job's output pipes.
pub type OutputPipe = Pin<Box<dyn AsyncRead + Send>>;

/// Why a program could not be started. No job exists after any of these.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    /// No executable of that name in the executor's PATH, or no file at that
    /// absolute path.
    #[error("program '{program}' not found")]
    NotFound {
        /// The program as given.
        program: String,
        /// The PATH searched for a bare name (`None` for an absolute path).
        search_path: Option<&'static str>,
    },
    /// The file exists but is not an executable regular file.
    #[error("program '{program}' is not an executable file")]
    NotExecutable {
        /// The program as given.
        program: String,
    },
    /// The operating system refused to create the process or its pipes.
    #[error("cannot start the process")]
    Os(#[source] io::Error),
    /// The owner's jobs together are at its process cap (the identity's
    /// `pids` limit): nothing more of it can start until some of its
    /// processes end.
    #[error("the identity's jobs are at its cap of {max} processes and threads")]
    IdentityProcessCap {
        /// The cap.
        max: u32,
    },
    /// The job's owner has no account to run it as (a cluster's executor
    /// without `--run-as-for` or `--run-as` for it).
    #[error("the identity has no account to run jobs as")]
    NoAccount,
    /// The cluster's controller does not answer: nothing was submitted.
    #[error("the cluster controller does not answer: {reason}")]
    ClusterUnavailable {
        /// What the cluster's command said.
        reason: String,
    },
    /// The cluster refused the job (a bad partition, over one of its
    /// limits, an account it does not know): nothing was submitted.
    #[error("the cluster refused the job: {reason}")]
    Refused {
        /// The cluster's own words.
        reason: String,
    },
    /// The job's container could not be set up (cgroup, namespaces, account):
    /// nothing of the job runs.
    #[error("cannot set up the job's containment: {what}")]
    Containment {
        /// The step that failed.
        what: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Signals the engine sends to a job. Delivered to every process of the job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobSignal {
    /// SIGTERM: ask to exit.
    Terminate,
    /// SIGCONT: resume stopped processes so they can act on SIGTERM.
    Continue,
    /// SIGKILL: end now.
    Kill,
}

/// Everything an executor needs to start one job.
#[derive(Clone, Debug)]
pub struct Launch<'a> {
    /// A name unique among this daemon's jobs (the job id), one path
    /// component; executors use it to name the job's cgroup.
    pub name: &'a str,
    /// What to run.
    pub spec: &'a JobSpec,
    /// The limits to enforce; all `None` when the executor cannot limit.
    pub limits: &'a ResourceLimits,
    /// The account to run as instead of the executor's default one; ignored
    /// by an executor that does not contain jobs.
    pub account: Option<&'a Account>,
    /// An opaque name for the job's owner, one path component, the same for
    /// every job of one identity and different between identities;
    /// executors group an owner's jobs by it (for example under one cgroup).
    pub owner: &'a str,
    /// Limits on all the owner's running jobs together (memory, CPU, pids;
    /// io unused), for an executor that groups them; all `None` when not
    /// limited or when the executor cannot limit.
    pub owner_limits: &'a ResourceLimits,
    /// What the job may do beyond the default sandbox.
    pub permits: JobPermits,
    /// The job's output quota (bytes kept in its log; `None`: unlimited).
    /// An executor that copies output from files may stop copying beyond
    /// it: the engine would discard those bytes.
    pub max_output_bytes: Option<u64>,
}

/// What an executor can enforce.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Memory, CPU and process limits, usage counters, OOM detection, and an
    /// account per job.
    pub limits: bool,
    /// IO bandwidth limits (some devices are configured).
    pub io_limits: bool,
    /// An account per job even without `limits` (a cluster's executor, as
    /// root, runs each identity's jobs as its account).
    pub accounts: bool,
    /// With `limits`: what of them it cannot enforce (a cluster limits a
    /// job's memory and CPUs, not its processes, nor an owner's jobs
    /// together). The engine refuses requests for these and applies no
    /// default for them.
    pub no_pids_limit: bool,
    /// With `limits`: the owner's jobs together are not limited.
    pub no_owner_limits: bool,
}

/// Starts programs.
pub trait Executor: Send + Sync + std::fmt::Debug + 'static {
    /// What this executor enforces; the engine refuses requests for more.
    fn capabilities(&self) -> Capabilities;

    /// Starts `launch` with stdin from /dev/null and stdout/stderr on pipes.
    /// Resolves once the program runs (its exec succeeded).
    ///
    /// # Errors
    /// [`SpawnError`]; nothing keeps running after an error.
    ///
    /// # Cancel safety
    /// Dropping the future kills and reaps whatever was started.
    fn spawn<'a>(&'a self, launch: Launch<'a>) -> BoxFuture<'a, Result<Spawned, SpawnError>>;

    /// Releases what the executor holds for all jobs (e.g. its cgroup
    /// subtree). Called once at shutdown, after every job is final.
    fn close(&self) {}

    /// Kills whatever is left of a job that a previous daemon started and
    /// did not see end (it died), found by the [`Spawned::recovery`] token
    /// that daemon recorded. Must never signal a process that is not part of
    /// that job (a reused pid). The default does nothing: an executor whose
    /// jobs cannot outlive it has no token.
    ///
    /// Returns how many processes or process groups it killed (0: nothing
    /// was left).
    ///
    /// # Errors
    /// The OS error; a token this executor cannot read is
    /// [`io::ErrorKind::InvalidData`].
    fn reclaim(&self, recovery: &str) -> io::Result<usize> {
        let _ = recovery;
        Ok(0)
    }
}

/// A live view of a running job: its counters, and whether it still waits
/// in a cluster's queue.
pub trait Meter: Send + Sync {
    /// The job's use so far; `None` once it can no longer be read.
    fn usage(&self) -> Option<ResourceUsage>;

    /// Why the executor's scheduler still holds the job queued (a
    /// cluster's words, e.g. Slurm's `Resources`), or `None` once it runs
    /// (and always, for an executor without a queue).
    fn queued(&self) -> Option<String> {
        None
    }
}

/// A started job: its processes and its two output pipes.
pub struct Spawned {
    /// The job's processes.
    pub process: Box<dyn Process>,
    /// The read end of the job's stdout.
    pub stdout: OutputPipe,
    /// The read end of the job's stderr.
    pub stderr: OutputPipe,
    /// Live counters, when the executor has them.
    pub meter: Option<std::sync::Arc<dyn Meter>>,
    /// The cluster's own id for the job (Slurm's job id), for `jobs
    /// status`; `None` for jobs run on this machine.
    pub cluster_job_id: Option<String>,
    /// The output pipes end by themselves once the job ended (they copy
    /// files of a size fixed by then): after the end the engine reads them
    /// for as long as bytes keep coming, not only for its usual bound
    /// (which is there for a process that escaped a local job).
    pub drain_until_eof: bool,
    /// What a later daemon needs to find this job's processes if this one
    /// dies without seeing the job end (see [`Executor::reclaim`]); stored
    /// with the job's record. `None` when the executor cleans up after a dead
    /// daemon by itself (the contained executor removes a dead daemon's whole
    /// cgroup subtree when it opens).
    pub recovery: Option<String>,
    /// Where the start's time went, phase by phase in order, as far as the
    /// executor measures it (empty when it does not): logged at debug
    /// level when the job starts, printed by `cargo bench --bench
    /// throughput`.
    pub phases: Vec<(&'static str, std::time::Duration)>,
}

/// How a job ended, once nothing of it runs any more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ended {
    /// How the main program ended.
    pub exit: ExitInfo,
    /// What the job used in all, when the executor counts it.
    pub usage: Option<ResourceUsage>,
}

/// The running processes of one job, owned by its supervisor.
pub trait Process: Send {
    /// Resolves once the main process has exited. It is not reaped yet, so
    /// [`Process::signal`] still reaches the right processes.
    ///
    /// # Cancel safety
    /// Cancel safe.
    fn exited(&mut self) -> BoxFuture<'_, io::Result<()>>;

    /// Sends `signal` to every process of the job. Only valid until
    /// [`Process::finish`]; never signals a process that may have been reused.
    ///
    /// # Errors
    /// The OS error; ESRCH (nothing left) is not an error.
    fn signal(&mut self, signal: JobSignal) -> io::Result<()>;

    /// Kills whatever is left of the job, waits until no process of it
    /// remains, reaps the main process and releases the job's resources. Call
    /// once, after [`Process::exited`] resolved; afterwards nothing is
    /// signalled.
    ///
    /// # Errors
    /// The OS error of the wait.
    ///
    /// # Cancel safety
    /// Not cancel safe: a dropped future leaves the cleanup to `Drop`.
    fn finish(&mut self) -> BoxFuture<'_, io::Result<Ended>>;
}

//! The seam between what a job is and where it runs.
//!
//! The engine ([`super::Jobs`] and the supervisor) only sees these traits. The
//! local executor ([`crate::exec::LocalExecutor`]) implements them with a
//! process group on this machine; a cluster executor can implement them later
//! without touching ids, owners, states or output.

use std::future::Future;
use std::io;
use std::pin::Pin;

use tokio::io::AsyncRead;

use super::{ExitInfo, JobSpec};

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

/// Starts programs.
pub trait Executor: Send + Sync + 'static {
    /// Starts `spec` with stdin from /dev/null and stdout/stderr on pipes.
    ///
    /// # Errors
    /// [`SpawnError`]; nothing keeps running after an error.
    fn spawn(&self, spec: &JobSpec) -> Result<Spawned, SpawnError>;
}

/// A started job: its processes and its two output pipes.
pub struct Spawned {
    /// The job's processes.
    pub process: Box<dyn Process>,
    /// The read end of the job's stdout.
    pub stdout: OutputPipe,
    /// The read end of the job's stderr.
    pub stderr: OutputPipe,
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
    /// [`Process::reap`]; never signals a process that may have been reused.
    ///
    /// # Errors
    /// The OS error; ESRCH (nothing left) is not an error.
    fn signal(&mut self, signal: JobSignal) -> io::Result<()>;

    /// Kills whatever is left of the job and reaps the main process. Call once,
    /// after [`Process::exited`] resolved; afterwards nothing is signalled.
    ///
    /// # Errors
    /// The OS error of the wait.
    fn reap(&mut self) -> io::Result<ExitInfo>;
}

//! Running a job on this machine: one process group per job.
//!
//! This module owns everything about local processes: resolving the program,
//! the clean environment, spawning into a new process group, waiting for the
//! main process through a pidfd (no polling, no blocking thread), signalling
//! the group, and reaping. It implements [`crate::job::Executor`] and must not
//! know about owners, job ids or output storage.
//!
//! # What a job gets
//! - argv exactly as requested; no shell.
//! - The program: an absolute path as given, or a bare name looked up in
//!   [`JOB_PATH`]. Must be an executable regular file.
//! - Environment: only `PATH=`[`JOB_PATH`], `HOME=/`, `LANG=C.UTF-8`. Nothing of
//!   the daemon's environment is passed on.
//! - Working directory `/`; stdin `/dev/null`; stdout and stderr on pipes; no
//!   other descriptors (Rust opens every descriptor close-on-exec, and
//!   [`LocalExecutor::new`] marks any the daemon inherited the same way).
//! - Its own process group (setpgid(0, 0) before exec).
//!
//! # Signals and PID reuse
//! The main process is reaped only after its exit has been seen through its
//! pidfd *and* its process group has been sent SIGKILL. While it is an
//! unreaped zombie, neither its pid nor its process-group id can be handed to
//! another process, so every signal this module sends reaches the job and
//! nothing else.

mod sys;

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;

use crate::job::{BoxFuture, Executor, ExitInfo, JobSignal, JobSpec, Process, SpawnError, Spawned};

/// The PATH bare program names are looked up in, and the PATH jobs get. Fixed
/// so that what runs never depends on the daemon's own environment.
pub const JOB_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The working directory of every job.
pub const JOB_CWD: &str = "/";

/// Starts jobs as process groups on this machine.
#[derive(Debug)]
pub struct LocalExecutor {
    _private: (),
}

impl LocalExecutor {
    /// A local executor. Marks every descriptor this process inherited (≥ 3)
    /// close-on-exec, so that jobs cannot inherit them.
    pub fn new() -> Self {
        sys::mark_inherited_fds_cloexec();
        Self { _private: () }
    }
}

impl Default for LocalExecutor {
    fn default() -> Self {
        Self::new()
    }
}

impl Executor for LocalExecutor {
    fn spawn(&self, spec: &JobSpec) -> Result<Spawned, SpawnError> {
        let path = resolve(spec.program())?;
        let mut child = Command::new(&path)
            .arg0(spec.program())
            .args(spec.args())
            .env_clear()
            .env("PATH", JOB_PATH)
            .env("HOME", "/")
            .env("LANG", "C.UTF-8")
            .current_dir(JOB_CWD)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| spawn_error(spec.program(), e))?;
        // From here on a failure must not leave the child running: kill it
        // (it is unreaped, so its pid is still ours) and reap it.
        let setup = (|| -> io::Result<_> {
            let pidfd = sys::async_pidfd(sys::pidfd_open(child.id())?)?;
            let stdout = pipe(child.stdout.take())?;
            let stderr = pipe(child.stderr.take())?;
            Ok((pidfd, stdout, stderr))
        })();
        match setup {
            Ok((pidfd, stdout, stderr)) => Ok(Spawned {
                process: Box::new(LocalProcess {
                    pgid: Pid::from_raw(child.id() as i32),
                    child: Some(child),
                    pidfd,
                }),
                stdout: Box::pin(stdout),
                stderr: Box::pin(stderr),
            }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(SpawnError::Os(e))
            }
        }
    }
}

/// The processes of one local job.
struct LocalProcess {
    /// The main process; `None` once reaped.
    child: Option<Child>,
    /// The job's process group id (= the main process's pid).
    pgid: Pid,
    /// Readable once the main process has exited.
    pidfd: AsyncFd<OwnedFd>,
}

impl Process for LocalProcess {
    fn exited(&mut self) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(async move {
            // Readiness stays set: an exited process stays exited.
            let _guard = self.pidfd.readable().await?;
            Ok(())
        })
    }

    fn signal(&mut self, signal: JobSignal) -> io::Result<()> {
        if self.child.is_none() {
            // Reaped: the group id may belong to someone else now.
            return Ok(());
        }
        let signal = match signal {
            JobSignal::Terminate => Signal::SIGTERM,
            JobSignal::Continue => Signal::SIGCONT,
            JobSignal::Kill => Signal::SIGKILL,
        };
        match killpg(self.pgid, signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn reap(&mut self) -> io::Result<ExitInfo> {
        // Kill the rest of the group while the zombie leader still pins the id.
        self.signal(JobSignal::Kill)?;
        let mut child = self
            .child
            .take()
            .ok_or_else(|| io::Error::other("job already reaped"))?;
        // The main process has exited (its pidfd is readable), so this wait
        // returns at once.
        let status = child.wait()?;
        Ok(match (status.code(), status.signal()) {
            (Some(code), _) => ExitInfo::Exited(code),
            (None, Some(signal)) => ExitInfo::Signaled {
                signal,
                core_dumped: status.core_dumped(),
            },
            // wait(2) reports either an exit or a signal for a dead process.
            (None, None) => return Err(io::Error::other("wait status is neither exit nor signal")),
        })
    }
}

impl Drop for LocalProcess {
    fn drop(&mut self) {
        // Dropped without reaping (the supervisor was cancelled): kill and
        // reap so that no zombie and no stray process is left.
        if let Some(mut child) = self.child.take() {
            let _ = killpg(self.pgid, Signal::SIGKILL);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Hardens the daemon process against its own jobs: marks it not dumpable
/// (prctl(2) `PR_SET_DUMPABLE` 0), which makes `/proc/<pid>/environ`, `mem`,
/// `fd/` and friends of the daemon owned by root and unreadable to processes of
/// the same user (proc(5)), forbids ptrace by them, and writes no core dump
/// that could hold key material. Jobs are unaffected: execve(2) resets the
/// attribute. A job running as root can still read them.
///
/// # Errors
/// The OS error of prctl(2).
pub fn protect_daemon_process() -> io::Result<()> {
    nix::sys::prctl::set_dumpable(false).map_err(io::Error::from)
}

/// Finds the file to execute for `program`.
fn resolve(program: &str) -> Result<PathBuf, SpawnError> {
    if program.starts_with('/') {
        let path = PathBuf::from(program);
        return match check_executable(&path) {
            Check::Executable => Ok(path),
            Check::Missing => Err(SpawnError::NotFound {
                program: program.to_owned(),
                search_path: None,
            }),
            Check::NotExecutable => Err(SpawnError::NotExecutable {
                program: program.to_owned(),
            }),
        };
    }
    let mut found_not_executable = false;
    for dir in JOB_PATH.split(':') {
        let path = Path::new(dir).join(program);
        match check_executable(&path) {
            Check::Executable => return Ok(path),
            Check::NotExecutable => found_not_executable = true,
            Check::Missing => {}
        }
    }
    if found_not_executable {
        Err(SpawnError::NotExecutable {
            program: program.to_owned(),
        })
    } else {
        Err(SpawnError::NotFound {
            program: program.to_owned(),
            search_path: Some(JOB_PATH),
        })
    }
}

enum Check {
    Executable,
    NotExecutable,
    Missing,
}

fn check_executable(path: &Path) -> Check {
    match std::fs::metadata(path) {
        Err(_) => Check::Missing,
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Check::Executable,
        Ok(_) => Check::NotExecutable,
    }
}

/// Maps an exec failure that slipped past [`resolve`] (a race, or a file that
/// is executable by mode but not by this user or format).
fn spawn_error(program: &str, e: io::Error) -> SpawnError {
    match e.kind() {
        io::ErrorKind::NotFound => SpawnError::NotFound {
            program: program.to_owned(),
            search_path: None,
        },
        io::ErrorKind::PermissionDenied => SpawnError::NotExecutable {
            program: program.to_owned(),
        },
        _ if e.raw_os_error() == Some(libc::ENOEXEC) => SpawnError::NotExecutable {
            program: program.to_owned(),
        },
        _ => SpawnError::Os(e),
    }
}

fn pipe(end: Option<impl Into<OwnedFd>>) -> io::Result<tokio::net::unix::pipe::Receiver> {
    let end = end.ok_or_else(|| io::Error::other("child pipe missing"))?;
    tokio::net::unix::pipe::Receiver::from_owned_fd(end.into())
}

//! Uncontained jobs: one process group each, as the daemon's own user.
//!
//! Used when `jobsd` cannot contain jobs (it does not run as root). A process
//! that calls `setsid` leaves the group and survives a stop; there are no
//! limits. The main process is reaped only after its exit has been seen
//! through its pidfd *and* its process group has been sent SIGKILL: while it
//! is an unreaped zombie neither its pid nor its group id can be reused, so
//! every signal sent here reaches the job and nothing else.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, Stdio};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;

use super::{JOB_CWD, JOB_PATH, pipe, resolve, spawn_error, sys};
use crate::job::{BoxFuture, Ended, ExitInfo, JobSignal, JobSpec, Process, SpawnError, Spawned};

/// Starts `spec` as the leader of a new process group.
pub(super) fn spawn(spec: &JobSpec) -> Result<Spawned, SpawnError> {
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
    // From here on a failure must not leave the child running: kill it (it is
    // unreaped, so its pid is still ours) and reap it.
    let setup = (|| -> io::Result<_> {
        let pidfd = sys::async_pidfd(sys::pidfd_open(child.id())?)?;
        let stdout = pipe(child.stdout.take())?;
        let stderr = pipe(child.stderr.take())?;
        Ok((pidfd, stdout, stderr))
    })();
    match setup {
        Ok((pidfd, stdout, stderr)) => Ok(Spawned {
            process: Box::new(GroupProcess {
                pgid: Pid::from_raw(child.id() as i32),
                child: Some(child),
                pidfd,
            }),
            stdout: Box::pin(stdout),
            stderr: Box::pin(stderr),
            meter: None,
        }),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(SpawnError::Os(e))
        }
    }
}

/// The processes of one uncontained job.
struct GroupProcess {
    /// The main process; `None` once reaped.
    child: Option<Child>,
    /// The job's process group id (= the main process's pid).
    pgid: Pid,
    /// Readable once the main process has exited.
    pidfd: AsyncFd<OwnedFd>,
}

impl Process for GroupProcess {
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

    fn finish(&mut self) -> BoxFuture<'_, io::Result<Ended>> {
        Box::pin(async move {
            // Kill the rest of the group while the zombie leader still pins
            // the id.
            self.signal(JobSignal::Kill)?;
            let mut child = self
                .child
                .take()
                .ok_or_else(|| io::Error::other("job already reaped"))?;
            // The main process has exited (its pidfd is readable), so this
            // wait returns at once.
            let status = child.wait()?;
            Ok(Ended {
                exit: exit_info(status)?,
                usage: None,
            })
        })
    }
}

/// How a reaped process ended.
pub(super) fn exit_info(status: std::process::ExitStatus) -> io::Result<ExitInfo> {
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

impl Drop for GroupProcess {
    fn drop(&mut self) {
        // Dropped without finishing (the supervisor was cancelled): kill and
        // reap so that no zombie and no stray process is left.
        if let Some(mut child) = self.child.take() {
            let _ = killpg(self.pgid, Signal::SIGKILL);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

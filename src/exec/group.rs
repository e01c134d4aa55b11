//! Uncontained jobs: one process group each, as the daemon's own user.
//!
//! Used when `jobsd` cannot contain jobs (it does not run as root). A process
//! that calls `setsid` leaves the group and survives a stop; there are no
//! limits. If the daemon dies, each job's main process gets SIGKILL
//! (`PR_SET_PDEATHSIG`); the rest of its group is killed by the next daemon,
//! from the recovery token recorded with the job. The main process is reaped only after its exit has been seen
//! through its pidfd *and* its process group has been sent SIGKILL: while it
//! is an unreaped zombie neither its pid nor its group id can be reused, so
//! every signal sent here reaches the job and nothing else.

use std::ffi::OsStr;
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
    let mut command = Command::new(&path);
    // A daemon killed between this spawn and the job's record would leave
    // the job unknown to the next one: its main process dies with the
    // daemon instead. (Spawned from a runtime worker thread, which lives as
    // long as the daemon; see `kill_with_daemon`.)
    sys::kill_with_daemon(&mut command);
    // Its own session (and so its own process group, which stop and reclaim
    // signal), without jobsd's controlling terminal.
    sys::new_session(&mut command);
    let env: [(&str, &OsStr); 3] = [
        ("PATH", JOB_PATH.as_ref()),
        ("HOME", "/".as_ref()),
        ("LANG", "C.UTF-8".as_ref()),
    ];
    let argv: Vec<&OsStr> = std::iter::once(spec.program().as_ref())
        .chain(spec.args().iter().map(|a| a.as_ref()))
        .collect();
    // Last of the hooks: the program itself, never a shell's guess at it.
    sys::exec_exactly(&mut command, &path, &argv, &env)
        .map_err(|e| spawn_error(spec.program(), e))?;
    command
        .arg0(spec.program())
        .args(spec.args())
        .env_clear()
        .envs(env)
        .current_dir(JOB_CWD)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // The fork waits until the child's exec succeeded or failed.
    let forking = std::time::Instant::now();
    let mut child =
        sys::off_worker(|| command.spawn()).map_err(|e| spawn_error(spec.program(), e))?;
    let phases = vec![("fork and exec", forking.elapsed())];
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
            recovery: recovery_token(child.id()),
            process: Box::new(GroupProcess {
                pgid: Pid::from_raw(child.id() as i32),
                child: Some(child),
                pidfd,
            }),
            stdout: Box::pin(stdout),
            stderr: Box::pin(stderr),
            meter: None,
            cluster_job_id: None,
            drain_until_eof: false,
            phases,
        }),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(SpawnError::Os(e))
        }
    }
}

/// The token [`reclaim`] reads: `pgid=<pid>,start=<ticks>`, the job's
/// process group and its leader's start time (field 22 of
/// `/proc/<pid>/stat`, proc(5)), which tells the leader from a later process
/// that got the same pid. `None` if the start time cannot be read (the job
/// then cannot be reclaimed after a crash; the caller logs nothing: the
/// process has just been started, so this does not happen in practice).
fn recovery_token(pid: u32) -> Option<String> {
    let start = start_time(pid)?;
    Some(format!("pgid={pid},start={start}"))
}

/// Start time of process `pid` in clock ticks since boot, from
/// `/proc/<pid>/stat` (proc(5), field 22); `None` if there is no such
/// process.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces or
    // parentheses: fields are counted after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    // `rest` starts at field 3, so field 22 is its 20th.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Kills the process group of an uncontained job a dead daemon left running,
/// given its [`recovery_token`]. The group is signalled only when it can
/// still be the job's: its leader is alive with the recorded start time, or
/// the leader is gone (a pid stays reserved while a process group of that
/// id has members, so any group with that id is what is left of the job).
/// A leader pid now used by another process means the job is gone.
pub(super) fn reclaim(token: &str) -> io::Result<usize> {
    let invalid = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad recovery token '{token}'"),
        )
    };
    let (pgid, start) = token
        .strip_prefix("pgid=")
        .and_then(|t| t.split_once(",start="))
        .ok_or_else(invalid)?;
    let pgid: i32 = pgid.parse().map_err(|_| invalid())?;
    let start: u64 = start.parse().map_err(|_| invalid())?;
    if pgid <= 1 {
        return Err(invalid());
    }
    if let Some(now) = start_time(pgid as u32) {
        if now != start {
            return Ok(0);
        }
    }
    match killpg(Pid::from_raw(pgid), Signal::SIGKILL) {
        Ok(()) => Ok(1),
        Err(nix::errno::Errno::ESRCH) => Ok(0),
        Err(e) => Err(e.into()),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A `sleep 600` leading its own process group, as jobs are started.
    fn group_leader() -> Child {
        Command::new("sleep")
            .arg("600")
            .process_group(0)
            .spawn()
            .unwrap()
    }

    #[test]
    fn reclaim_kills_the_recorded_group_and_only_that() {
        // Scenario: a dead daemon left an uncontained job running; the next
        // one kills its group from the recorded token, but not a process that
        // merely has the same pid with another start time.
        let mut job = group_leader();
        let token = recovery_token(job.id()).expect("token of a live process");
        assert_eq!(
            token,
            format!("pgid={},start={}", job.id(), start_time(job.id()).unwrap())
        );

        let mut other = group_leader();
        let pid = other.id();
        let stale = format!("pgid={pid},start={}", start_time(pid).unwrap() + 1);
        assert_eq!(reclaim(&stale).unwrap(), 0);
        assert_eq!(other.try_wait().unwrap(), None, "a reused pid was killed");

        assert_eq!(reclaim(&token).unwrap(), 1);
        assert_eq!(job.wait().unwrap().signal(), Some(libc::SIGKILL));
        // Gone: nothing left to kill.
        assert_eq!(reclaim(&token).unwrap(), 0);

        other.kill().unwrap();
        other.wait().unwrap();
    }

    #[test]
    fn reclaim_refuses_tokens_it_did_not_write() {
        for bad in [
            "",
            "pgid=",
            "pgid=12",
            "pgid=x,start=1",
            "pgid=1,start=5",
            "pgid=0,start=5",
            "cgroup=abc",
        ] {
            let e = reclaim(bad).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{bad:?}");
        }
    }

    #[test]
    fn start_time_reads_past_a_command_name_with_spaces_and_parentheses() {
        // Scenario: a job's program is named `x) 1 2 3`; a naive split of
        // /proc/PID/stat would read a field of the name as the start time.
        let dir = tempfile::tempdir().unwrap();
        let odd = dir.path().join("x) 1 2 3");
        std::os::unix::fs::symlink("/bin/sleep", &odd).unwrap();
        let mut child = Command::new(&odd).arg("600").spawn().unwrap();
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap();
        assert!(stat.contains("(x) 1 2 3)"), "{stat}");
        let ours = start_time(std::process::id()).unwrap();
        let mut later = group_leader();
        let after = start_time(later.id()).unwrap();
        let started = start_time(child.id()).expect("a start time");
        assert!(
            ours <= started && started <= after,
            "start time {started} not between ours ({ours}) and a later child's ({after})"
        );
        later.kill().unwrap();
        later.wait().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

//! Running a job on this machine.
//!
//! This module owns everything about local processes: resolving the program,
//! the clean environment, spawning, waiting for the main process through a
//! pidfd (no polling, no blocking thread), signalling, and reaping. It
//! implements [`crate::job::Executor`] and must not know about owners or
//! output storage; a job id reaches it only as an opaque name for the job's
//! cgroup.
//!
//! # Two modes
//! - **Contained** ([`LocalExecutor::contained`], what `jobsd` uses as root):
//!   every job gets its own cgroup ([`crate::cgroup`]) with memory, CPU,
//!   process and IO limits, entered before anything of the job runs; an
//!   unprivileged account; and namespaces ([`Namespaces`]). Its first process
//!   is `jobs-init` ([`crate::sandbox`]), which sets up the namespaces, drops
//!   privileges, runs the program, reaps orphans and reports how the program
//!   ended. Stop and end-of-job kill the whole cgroup, so nothing of a job
//!   survives it, whatever it forked or however it detached. See
//!   `contained.rs`.
//! - **Uncontained** ([`LocalExecutor::uncontained`], the fallback when the
//!   daemon is not root): a process group per job, as the daemon's user, no
//!   limits. See `group.rs`.
//!
//! # What a job gets, in both modes
//! - argv exactly as requested; no shell.
//! - The program: an absolute path as given, or a bare name looked up in
//!   [`JOB_PATH`]. Must be an executable regular file.
//! - Environment: only `PATH=`[`JOB_PATH`], `HOME` (the job account's home
//!   directory; `/` when uncontained), `LANG=C.UTF-8`. Nothing of the
//!   daemon's environment is passed on.
//! - Working directory `/`; stdin `/dev/null`; stdout and stderr on pipes; no
//!   other descriptors (Rust opens every descriptor close-on-exec, and
//!   creating an executor marks any the daemon inherited the same way).

mod contained;
mod group;
mod sys;

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub use contained::{ContainConfig, ContainError, IoDevice, Namespaces, Network, cgroup_name_for};

use crate::job::{BoxFuture, Capabilities, Executor, Launch, SpawnError, Spawned};

/// The PATH bare program names are looked up in, and the PATH jobs get. Fixed
/// so that what runs never depends on the daemon's own environment.
pub const JOB_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The working directory of every job.
pub const JOB_CWD: &str = "/";

/// Starts jobs on this machine, contained or not.
pub struct LocalExecutor {
    contained: Option<contained::Containment>,
}

impl std::fmt::Debug for LocalExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalExecutor")
            .field("contained", &self.contained.is_some())
            .finish()
    }
}

impl LocalExecutor {
    /// An executor that runs each job as a process group of the daemon's own
    /// user, without limits. Marks every descriptor this process inherited
    /// (≥ 3) close-on-exec, so that jobs cannot inherit them.
    pub fn uncontained() -> Self {
        sys::mark_inherited_fds_cloexec();
        Self { contained: None }
    }

    /// An executor that contains every job (see the module doc). Detects the
    /// cgroup layout, logs it, and opens the daemon's cgroup subtree (killing
    /// and removing what a previous daemon left in it). Needs root.
    ///
    /// # Errors
    /// [`ContainError`]: not root, no usable cgroup hierarchy, the init
    /// program missing, the subtree cannot be made.
    pub fn contained(config: ContainConfig) -> Result<Self, ContainError> {
        sys::mark_inherited_fds_cloexec();
        Ok(Self {
            contained: Some(contained::Containment::new(config)?),
        })
    }

    /// True when jobs are contained.
    pub fn is_contained(&self) -> bool {
        self.contained.is_some()
    }
}

impl Executor for LocalExecutor {
    fn capabilities(&self) -> Capabilities {
        match &self.contained {
            Some(c) => c.capabilities(),
            None => Capabilities::default(),
        }
    }

    fn spawn<'a>(&'a self, launch: Launch<'a>) -> BoxFuture<'a, Result<Spawned, SpawnError>> {
        match &self.contained {
            Some(c) => Box::pin(c.spawn(launch)),
            None => Box::pin(std::future::ready(group::spawn(launch.spec))),
        }
    }

    fn close(&self) {
        if let Some(c) = &self.contained {
            c.close();
        }
    }

    fn reclaim(&self, recovery: &str) -> io::Result<usize> {
        // The contained executor hands out no tokens: a dead contained
        // daemon's jobs die with its cgroup subtree, removed when this
        // executor opened. A token in the store therefore comes from an
        // uncontained predecessor on the same state directory (a daemon run
        // without root, or with `--containment off`), whose process groups
        // outlive it in either mode: reclaim them the same way.
        group::reclaim(recovery)
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

/// How much `jobsd` lowers its own OOM score (proc(5), `oom_score_adj`,
/// -1000..=1000): enough that the kernel's OOM killer takes a job's process,
/// which `jobs-init` resets to 0, long before the daemon that serves every
/// user; not -1000 (never), so that a leak in the daemon itself can still end
/// it rather than the machine.
pub const DAEMON_OOM_SCORE_ADJ: i32 = -900;

/// Shields the daemon from the OOM killer: sets its `oom_score_adj` to
/// [`DAEMON_OOM_SCORE_ADJ`]. Job cgroups live beneath the daemon's own, so
/// when the daemon's cgroup (or the machine) runs out of memory the kernel
/// picks among the daemon and every job; this makes it pick a job. Needs
/// root (CAP_SYS_RESOURCE) to lower the value.
///
/// # Errors
/// The OS error of writing `/proc/self/oom_score_adj`.
pub fn protect_daemon_from_oom() -> io::Result<()> {
    std::fs::write("/proc/self/oom_score_adj", DAEMON_OOM_SCORE_ADJ.to_string())
}

/// Finds the file to execute for `program`.
pub(crate) fn resolve(program: &str) -> Result<PathBuf, SpawnError> {
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

/// Maps an exec failure: one that slipped past [`resolve`] (a race, or a file
/// that is executable by mode but not by this user or format), or, for
/// contained jobs, the exec of an absolute path as the job's account.
fn spawn_error(program: &str, e: io::Error) -> SpawnError {
    // execve(2)'s errors about the file itself; anything else is the OS's.
    match e.raw_os_error() {
        Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP | libc::ENAMETOOLONG) => {
            SpawnError::NotFound {
                program: program.to_owned(),
                search_path: None,
            }
        }
        Some(libc::EACCES | libc::EPERM | libc::ENOEXEC | libc::EISDIR | libc::ETXTBSY) => {
            SpawnError::NotExecutable {
                program: program.to_owned(),
            }
        }
        _ => SpawnError::Os(e),
    }
}

fn pipe(end: Option<impl Into<OwnedFd>>) -> io::Result<LazyPipe> {
    let end = end.ok_or_else(|| io::Error::other("child pipe missing"))?;
    Ok(LazyPipe::Fd(Some(end.into())))
}

/// A job's output pipe, registered with the reactor of the runtime that
/// first reads it rather than of the one that started the job: the
/// supervisor reads on its own runtime (`jobs-output`), and a pipe left on
/// the request runtime's reactor woke that runtime's thread at every
/// readiness only to wake the supervisor's.
enum LazyPipe {
    /// Not read yet. `None` only after a failed registration.
    Fd(Option<OwnedFd>),
    Registered(tokio::net::unix::pipe::Receiver),
}

impl tokio::io::AsyncRead for LazyPipe {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let this = self.get_mut();
        if let LazyPipe::Fd(fd) = this {
            let fd = fd
                .take()
                .ok_or_else(|| io::Error::other("the pipe could not be registered"))?;
            *this = LazyPipe::Registered(tokio::net::unix::pipe::Receiver::from_owned_fd(fd)?);
        }
        match this {
            LazyPipe::Registered(rx) => std::pin::Pin::new(rx).poll_read(cx, buf),
            LazyPipe::Fd(_) => unreachable!("registered above"),
        }
    }
}

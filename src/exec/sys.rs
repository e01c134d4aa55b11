//! The system calls that have no safe wrapper in our dependencies.
//!
//! The only `unsafe` of the executor lives here (the job init has its own, in
//! `crate::sandbox`).

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

/// `pidfd_open(2)`: a file descriptor that refers to process `pid` and becomes
/// readable when it exits (Linux 5.3+). The descriptor is close-on-exec.
///
/// # Errors
/// The OS error: ESRCH if no such process, ENOSYS on kernels before 5.3.
pub(super) fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: pidfd_open takes two integers and touches no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned this descriptor to us and nothing else
    // owns it, so `OwnedFd` may take ownership and close it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sets FD_CLOEXEC on every open descriptor from 3 up, as listed in
/// `/proc/self/fd` (proc(5)). Everything Rust opens is close-on-exec already;
/// this covers descriptors a parent process left open for us.
pub(super) fn mark_inherited_fds_cloexec() {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        tracing::warn!("cannot list /proc/self/fd; inherited descriptors may leak into jobs");
        return;
    };
    let fds: Vec<i32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd >= 3)
        .collect();
    for fd in fds {
        // SAFETY: fcntl(F_SETFD) only changes a flag of the descriptor table
        // entry; on a descriptor that is closed by now (such as the directory
        // listing's own) it fails with EBADF and changes nothing.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
}

/// Registers a pidfd with the tokio reactor, readable once the process exits.
///
/// # Errors
/// The reactor's error (e.g. no runtime).
pub(super) fn async_pidfd(pidfd: OwnedFd) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: `OwnedFd` owns an open descriptor, closes it only on drop, and
    // always returns the same raw fd, which is exactly `register`'s contract.
    unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE)
    }
    .map_err(io::Error::from)
}

/// Makes the child of `cmd`, between fork and exec, write "0" (itself) into
/// each of `procs` (the `cgroup.procs` files of the job's cgroup, opened by the
/// parent) and place `status` (the write end of the status pipe) on
/// [`crate::sandbox::STATUS_FD`] without close-on-exec. If any step fails,
/// exec does not happen and `Command::spawn` returns the error.
///
/// The descriptors must stay open in the parent until `spawn` returns.
pub(super) fn enter_cgroup_before_exec(
    cmd: &mut std::process::Command,
    procs: Vec<std::os::fd::RawFd>,
    status: std::os::fd::RawFd,
) {
    use std::os::unix::process::CommandExt;
    let target = crate::sandbox::STATUS_FD;
    // SAFETY: the hook runs in the forked child of a multi-threaded process,
    // where only async-signal-safe calls are allowed. It makes only write(2),
    // dup2(2) and fcntl(2) system calls on descriptors the parent keeps open
    // until spawn returns, reads an already allocated Vec, and allocates
    // nothing (`io::Error::last_os_error` builds an OS-code error in place).
    unsafe {
        cmd.pre_exec(move || {
            for fd in &procs {
                if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            if status == target {
                // dup2 onto itself would keep close-on-exec set.
                if libc::fcntl(target, libc::F_SETFD, 0) == -1 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(status, target) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// What [`exec_exactly`] hands to execve(2), made before the fork: C strings
/// and the null-terminated pointer arrays into them.
struct ExecImage {
    path: std::ffi::CString,
    _strings: Vec<std::ffi::CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
}

// SAFETY: the pointers point into `_strings`' heap buffers, which the image
// owns and never changes; they are only read, by execve in the child.
unsafe impl Send for ExecImage {}
// SAFETY: as above; nothing mutates the image after it is made.
unsafe impl Sync for ExecImage {}

/// Makes the child of `cmd` end its set-up with execve(2) of exactly `path`,
/// `argv` and `env` (as the last `pre_exec` hook: add it after every other).
/// The standard library's own exec is execvp(3), which runs a file the
/// kernel refuses with ENOEXEC (a text file without `#!`) through
/// `/bin/sh` instead; a job must run the program it named or fail to start.
/// On success the hook never returns; on failure `Command::spawn` returns
/// execve's error.
///
/// # Errors
/// `InvalidInput` when a string holds a NUL byte.
pub(super) fn exec_exactly(
    cmd: &mut std::process::Command,
    path: &std::path::Path,
    argv: &[&std::ffi::OsStr],
    env: &[(&str, &std::ffi::OsStr)],
) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::process::CommandExt;
    let c = |bytes: &[u8]| {
        CString::new(bytes).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
    };
    let path = c(path.as_os_str().as_bytes())?;
    let args = argv
        .iter()
        .map(|a| c(a.as_bytes()))
        .collect::<io::Result<Vec<_>>>()?;
    let vars = env
        .iter()
        .map(|(k, v)| c(&[k.as_bytes(), b"=", v.as_bytes()].concat()))
        .collect::<io::Result<Vec<_>>>()?;
    let pointers = |strings: &[CString]| {
        strings
            .iter()
            .map(|s| s.as_ptr())
            .chain([std::ptr::null()])
            .collect::<Vec<_>>()
    };
    let image = ExecImage {
        path,
        argv: pointers(&args),
        envp: pointers(&vars),
        _strings: args.into_iter().chain(vars).collect(),
    };
    // SAFETY: the hook runs in the forked child of a multi-threaded process,
    // where only async-signal-safe calls are allowed; it makes one execve(2)
    // on memory made before the fork (kept alive by the closure, which owns
    // the image) and builds its error in place.
    unsafe {
        cmd.pre_exec(move || {
            // The whole image, not its fields one by one (edition 2024
            // closures capture disjoint fields; the raw pointers alone are
            // not Send).
            let image = &image;
            libc::execve(
                image.path.as_ptr(),
                image.argv.as_ptr(),
                image.envp.as_ptr(),
            );
            Err(io::Error::last_os_error())
        });
    }
    Ok(())
}

/// Makes the child of `cmd` the leader of a new session (setsid(2)), and so
/// of a new process group whose id is its pid, with no controlling terminal.
/// A job that kept the daemon's terminal could type into the shell that
/// started jobsd (TIOCSTI), take the terminal's foreground, or send the
/// daemon SIGINT or SIGTSTP through the terminal driver, around every signal
/// rule; a new process group alone does not end that.
pub(super) fn new_session(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the hook runs in the forked child of a multi-threaded process,
    // where only async-signal-safe calls are allowed; setsid(2) is a system
    // call that touches no memory, and the error is built in place.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Makes the child of `cmd` get SIGKILL when the thread that forks it ends
/// (prctl(2) `PR_SET_PDEATHSIG`), so that an uncontained job's main process
/// dies with a daemon that is killed before it could record the job. If the
/// daemon is already gone by the time the child asks (getppid(2) is no longer
/// `daemon`), exec does not happen and `Command::spawn` returns ESRCH.
///
/// The death signal follows the forking *thread*, not the process: call
/// `spawn` only from threads that live as long as the daemon serves (the
/// runtime's worker threads), never from a short-lived one.
pub(super) fn kill_with_daemon(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    let daemon = libc::pid_t::try_from(std::process::id()).unwrap_or(libc::pid_t::MAX);
    // SAFETY: the hook runs in the forked child of a multi-threaded process,
    // where only async-signal-safe calls are allowed; prctl(2) and getppid(2)
    // are system calls that touch no memory, and the error is built in place.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != daemon {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Runs `f`, which waits for the kernel (cgroupfs writes, a fork that
/// moves the child into its cgroup), without holding up the runtime's other
/// tasks: on a multi-threaded runtime the worker thread first hands its
/// queued tasks to another thread (`block_in_place`), so the call costs no
/// thread switch; anywhere else (a current-thread runtime, as in unit
/// tests, or no runtime) `f` runs inline.
pub(super) fn off_worker<R>(f: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

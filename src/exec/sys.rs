//! The system calls that have no safe wrapper in our dependencies.
//!
//! The only `unsafe` in the crate lives here.

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

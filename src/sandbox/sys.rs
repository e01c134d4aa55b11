//! The system calls of the init that have no safe wrapper in our dependencies.
//!
//! The only `unsafe` of `jobs-init` lives here; each block says why it is
//! sound.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use nix::unistd::ForkResult;

use super::STATUS_FD;

/// Set once [`take_status_pipe`] has handed out fd 3.
static STATUS_TAKEN: AtomicBool = AtomicBool::new(false);

/// Takes ownership of the status pipe on [`STATUS_FD`].
///
/// # Errors
/// `EBADF` if fd 3 is not open or not open for writing; `EBUSY` on a second
/// call.
pub(super) fn take_status_pipe() -> io::Result<File> {
    if STATUS_TAKEN.swap(true, Ordering::SeqCst) {
        return Err(io::Error::from_raw_os_error(libc::EBUSY));
    }
    // SAFETY: fcntl(F_GETFL) on an integer descriptor only reads its flags;
    // on a closed descriptor it fails with EBADF.
    let flags = unsafe { libc::fcntl(STATUS_FD, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    if flags & libc::O_ACCMODE == libc::O_RDONLY {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: fd 3 is open (checked above) and nothing else in this process
    // owns it: the spawner placed it for us, the Rust runtime only ever fixes
    // up fds 0-2, and STATUS_TAKEN makes this the only place that wraps it,
    // once. The `File` becomes its sole owner.
    Ok(unsafe { File::from_raw_fd(STATUS_FD) })
}

/// Marks every descriptor from `first` up close-on-exec (close_range(2) with
/// CLOSE_RANGE_CLOEXEC, Linux 5.11+). Descriptors stay open in this process.
///
/// # Errors
/// The OS error; ENOSYS or EINVAL on kernels without the flag.
pub(super) fn mark_cloexec_from(first: RawFd) -> io::Result<()> {
    let first =
        libc::c_uint::try_from(first).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: with CLOSE_RANGE_CLOEXEC, close_range closes nothing and touches
    // no memory; it only sets a flag on descriptor table entries.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The handler of forwarded signals: does nothing. Signals stay blocked in the
/// init and are taken with sigwait, so it never runs; its purpose is that the
/// disposition is not SIG_DFL, whose signals the kernel discards for a
/// PID-namespace init once they are not blocked (pid_namespaces(7)).
extern "C" fn ignore_signal(_: libc::c_int) {}

/// Installs the no-op handler for each signal in `signals`.
///
/// # Errors
/// The OS error of sigaction(2) (EINVAL for SIGKILL or SIGSTOP).
pub(super) fn install_noop_handlers(signals: &SigSet) -> nix::Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(ignore_signal),
        SaFlags::SA_RESTART,
        SigSet::all(),
    );
    for signal in signals.iter() {
        // SAFETY: the handler is an `extern "C"` function that does nothing,
        // so it is async-signal-safe, and it replaces no handler that other
        // code relies on (the init installs no other handlers).
        unsafe { sigaction(signal, &action) }?;
    }
    Ok(())
}

/// The size of the kernel's signal set, the last argument of rt_sigaction(2):
/// `_NSIG / 8` (glibc's `sigset_t` is larger, and the kernel refuses it).
const KERNEL_SIGSET_SIZE: usize = if cfg!(any(target_arch = "mips", target_arch = "mips64")) {
    16
} else {
    8
};

/// Restores the default disposition of every signal that can be caught,
/// real-time ones included. Meant for the program's process before exec:
/// handlers are reset by execve anyway, but ignored signals are inherited by
/// the program (the Rust runtime ignores SIGPIPE, and whoever started the init
/// may have ignored others: under `cargo test`, signal 32 is ignored).
///
/// # Errors
/// The OS error of sigaction(2) or rt_sigaction(2).
pub(super) fn reset_signal_dispositions() -> nix::Result<()> {
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for signal in Signal::iterator().filter(|s| !matches!(s, Signal::SIGKILL | Signal::SIGSTOP)) {
        // SAFETY: SIG_DFL is not a function of ours; setting it cannot run code.
        unsafe { sigaction(signal, &default) }?;
    }
    // The C library refuses the signals it reserves for itself (32 and 33 in
    // glibc), so the real-time range goes to the kernel directly. An all-zero
    // kernel `struct sigaction` is SIG_DFL with no flags and an empty mask in
    // every architecture's layout; 64 zero bytes cover the largest of them.
    let default = [0u64; 8];
    for signal in 32..=libc::SIGRTMAX() {
        // SAFETY: rt_sigaction reads at most sizeof(struct sigaction) bytes
        // from `default`, which is larger and lives across the call, and is
        // given no pointer to write to. Setting SIG_DFL cannot run code, and
        // the C library needs its reserved signals only for threads, which
        // this process does not have.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                signal,
                default.as_ptr(),
                std::ptr::null_mut::<u8>(),
                KERNEL_SIGSET_SIZE,
            )
        };
        Errno::result(rc)?;
    }
    Ok(())
}

/// fork(2).
///
/// Sound only in a single-threaded process: the child of a multi-threaded one
/// may find a lock (for example the allocator's) held forever by a thread that
/// does not exist in it. `jobs-init` starts no threads; as a check, this fails
/// with EBUSY if `/proc/self/task` lists more than one thread.
///
/// # Errors
/// EBUSY as above; the OS error of fork(2) (EAGAIN at a pids limit, ENOMEM).
pub(super) fn fork() -> nix::Result<ForkResult> {
    let threads = std::fs::read_dir("/proc/self/task").map(Iterator::count);
    if matches!(threads, Ok(n) if n > 1) {
        return Err(Errno::EBUSY);
    }
    // SAFETY: the process is single-threaded (the init starts no threads, and
    // the check above would catch one where /proc is readable), so the child
    // inherits no lock held by another thread and may run any code, including
    // allocation, before it execs or exits.
    unsafe { nix::unistd::fork() }
}

/// Brings the loopback interface `lo` of the current network namespace up:
/// SIOCGIFFLAGS, then SIOCSIFFLAGS with IFF_UP added (netdevice(7)).
///
/// # Errors
/// The OS error of socket(2) or ioctl(2) (ENODEV if there is no `lo`, EPERM
/// without CAP_NET_ADMIN).
pub(super) fn loopback_up() -> io::Result<()> {
    // SAFETY: socket(2) takes integers and touches no memory of ours.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor and nothing else owns
    // it, so `OwnedFd` may take it and close it on drop.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };

    // SAFETY: `ifreq` is plain data (a byte array and a union of integers,
    // addresses and arrays), for which all-zero bytes are a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the NUL-terminated ifr_name and writes
    // ifr_flags, both inside the `ifreq` we pass, which outlives the call.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the successful SIOCGIFFLAGS above wrote ifru_flags; reading an
    // integer union member is sound for any bytes anyway.
    let flags = unsafe { request.ifr_ifru.ifru_flags };
    request.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads ifr_name and ifr_flags from the `ifreq` we
    // pass, which outlives the call, and writes nothing of ours.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// waitpid(2), returning the raw status. nix's wrapper cannot be used here: it
/// fails with EINVAL on a death by a real-time signal *after* the kernel has
/// reaped the process, and that status would be lost.
///
/// `Ok(None)` means WNOHANG was given and no child has changed state.
///
/// # Errors
/// The OS error: ECHILD when there is no child left to wait for, EINTR.
pub(super) fn waitpid(
    pid: libc::pid_t,
    flags: libc::c_int,
) -> nix::Result<Option<(libc::pid_t, libc::c_int)>> {
    let mut status: libc::c_int = 0;
    // SAFETY: waitpid writes one int to `status`, a live local of that type.
    let reaped = unsafe { libc::waitpid(pid, &mut status, flags) };
    match Errno::result(reaped)? {
        0 => Ok(None),
        reaped => Ok(Some((reaped, status))),
    }
}

/// _exit(2): ends the process at once, without running atexit handlers or
/// flushing buffers that the forked process shares with the init.
pub(super) fn exit_immediately(code: libc::c_int) -> ! {
    // SAFETY: _exit takes an integer and never returns; skipping destructors
    // and atexit handlers is its purpose and leaks nothing the kernel does not
    // reclaim.
    unsafe { libc::_exit(code) }
}

/// `struct __user_cap_header_struct` (linux/capability.h).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`; version 3 takes two of them (caps 0–31
/// and 32–63).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// `_LINUX_CAPABILITY_VERSION_3`.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Empties the capability bounding set (every capability the kernel knows,
/// found by PR_CAPBSET_READ answering EINVAL past the last one), the ambient
/// set and the inheritable set. The effective and permitted sets are kept:
/// the caller still needs them for what it does before dropping its uid.
/// After this no execve can give a capability back, not even to uid 0.
///
/// # Errors
/// The OS error of prctl(2) or capget/capset(2) (EPERM without
/// CAP_SETPCAP).
pub(super) fn drop_capability_sets() -> io::Result<()> {
    for cap in 0..64 {
        // SAFETY: PR_CAPBSET_READ/DROP take integers and touch no memory.
        let present = unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap, 0, 0, 0) };
        if present < 0 {
            // EINVAL: past the last capability this kernel knows.
            break;
        }
        // SAFETY: as above.
        if present == 1 && unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: PR_CAP_AMBIENT_CLEAR_ALL takes integers and touches no memory.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes the header's version (on a mismatch) and two
    // `CapData` for version 3, both live locals of those C layouts.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    for d in &mut data {
        d.inheritable = 0;
    }
    // SAFETY: capset reads the header and two `CapData`, live locals of the
    // C layouts version 3 expects.
    if unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Installs the seccomp filter `program` on the calling thread (the program's
/// process is single-threaded). Needs `no_new_privs`, set before.
///
/// # Errors
/// The OS error of seccomp(2).
pub(super) fn install_seccomp(program: &[seccompiler::sock_filter]) -> io::Result<()> {
    seccompiler::apply_filter(program).map_err(|e| match e {
        seccompiler::Error::Seccomp(e) | seccompiler::Error::Prctl(e) => e,
        _ => io::Error::from_raw_os_error(libc::EINVAL),
    })
}

/// Whether the kernel runs seccomp filters that return errors:
/// `seccomp(SECCOMP_GET_ACTION_AVAIL)` for `SECCOMP_RET_ERRNO` (Linux 4.14+).
///
/// # Errors
/// The OS error: `EINVAL`/`ENOSYS` on a kernel without seccomp filters, or
/// `EOPNOTSUPP` where the action is not available.
pub(super) fn seccomp_errno_available() -> std::io::Result<()> {
    let action: u32 = libc::SECCOMP_RET_ERRNO;
    // SAFETY: SECCOMP_GET_ACTION_AVAIL reads one u32 from the pointer, which
    // points at a live local of that type, and writes nothing.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_GET_ACTION_AVAIL,
            0,
            &action as *const u32,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The kernel's Landlock ABI version (landlock_create_ruleset(2) with
/// LANDLOCK_CREATE_RULESET_VERSION).
///
/// # Errors
/// The OS error: `ENOSYS` on a kernel built without Landlock, `EOPNOTSUPP`
/// where it is built but not enabled at boot (the `lsm=` list).
pub(super) fn landlock_abi_version() -> std::io::Result<u32> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with the VERSION flag, landlock_create_ruleset takes a null
    // attribute pointer and size 0, reads and writes no memory, and returns
    // an integer (no descriptor is created).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(rc as u32)
}

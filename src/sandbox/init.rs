//! The init's whole life: set up the job's namespaces, start the program with
//! the job's identity, then forward signals and reap until the program ends.

use std::ffi::{CString, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nix::sys::prctl;
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, killpg, sigprocmask};
use nix::unistd::{
    ForkResult, Gid, Pid, Uid, chdir, execv, getgroups, getpid, getresgid, getresuid, pipe2,
    setgid, setgroups, setpgid, setuid,
};

use super::ruleset::{self, JobRules};
use super::{InitArgs, PRIVATE_HOME, Report, STATUS_FD, SetupStep, seccomp, sys};

/// Exit code for a rejected command line, as most tools use for usage errors.
const EXIT_USAGE: i32 = 2;
/// Exit code for any other setup failure: the init itself failed, not the
/// program (the convention of `env`, `chroot` and container runtimes).
const EXIT_SETUP: i32 = 125;
/// Exit code when the program exists but could not be executed (shell
/// convention).
const EXIT_CANNOT_EXECUTE: i32 = 126;
/// Exit code when the program does not exist (shell convention).
const EXIT_NOT_FOUND: i32 = 127;

/// The soft RLIMIT_NOFILE jobs get: the usual default on Linux. `jobsd` raises
/// its own limit to hold many jobs' descriptors; jobs should not inherit that
/// (`select(2)` breaks on descriptors at or above 1024).
const JOB_NOFILE: u64 = 1024;

/// The signals the init forwards to the job: everything someone outside may
/// send to ask the job to stop, pause, continue or re-read something.
///
/// Not forwarded (they stay blocked and pending in the init, which amounts to
/// ignoring them): the ones the kernel only raises because of the init's own
/// doing (SIGPIPE on a closed status pipe, SIGXCPU, SIGXFSZ), the synchronous
/// faults (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGSYS, SIGABRT), and
/// real-time signals. SIGKILL and SIGSTOP cannot be caught.
const FORWARDED: [Signal; 17] = [
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGALRM,
    Signal::SIGTERM,
    Signal::SIGCONT,
    Signal::SIGTSTP,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
    Signal::SIGURG,
    Signal::SIGVTALRM,
    Signal::SIGPROF,
    Signal::SIGWINCH,
    Signal::SIGIO,
    Signal::SIGPWR,
];

/// The init's whole life; never returns. `jobs-init`'s `main` is this, called
/// with its arguments without `argv[0]`.
///
/// In order:
/// 1. Take the status pipe on [`STATUS_FD`]. Without a writable fd 3 the
///    init prints one line on stderr and exits 125: there is nobody to report
///    to.
/// 2. Parse `args` as an [`InitArgs`]; on error print one line on stderr,
///    report [`SetupStep::Arguments`] and exit 2.
/// 3. Mark fd 3 and every other inherited descriptor above 2 close-on-exec.
///    Block all signals, and install a no-op handler for the forwarded ones
///    and SIGCHLD. This comes before any other setup, so that a signal that
///    arrives meanwhile stays pending and is forwarded once the program runs,
///    rather than being lost or killing the init.
/// 4. Unless PID 1, become a child subreaper so that orphans of the job are
///    reparented to the init and reaped by it.
/// 5. Cgroup namespace; mount namespace (private propagation, `/proc`,
///    `/sys/fs/cgroup` masked, the private home, `/tmp`, `/var/tmp`,
///    `/dev/shm`, `/run/lock`, `/dev/pts`), IPC namespace,
///    network namespace with `lo` up, `oom_score_adj` 0, soft RLIMIT_NOFILE of
///    min(1024, hard limit); then empty the capability bounding, ambient and
///    inheritable sets, and build the seccomp filter.
/// 6. Fork. The program's process restores the signal defaults, makes its own
///    process group, drops to the job's identity (no supplementary groups,
///    gid, uid; verified, and verified irreversible), sets `no_new_privs`,
///    changes to `/`, applies the Landlock ruleset, installs the seccomp
///    filter and executes the program. A failure there comes back on a
///    close-on-exec pipe as [`Report::ExecFailed`] or [`Report::SetupFailed`];
///    the init reports it, reaps the process and exits (126/127 for exec,
///    125 for setup).
/// 7. Drop the init's own privileges the same way and make it non-dumpable
///    (on failure the program is killed, reaped, the failure reported, exit
///    125); then report [`Report::Started`].
/// 8. Wait for signals with sigwait (no polling). SIGCHLD: reap every child
///    that has exited; once the program itself is reaped, report
///    [`Report::Exited`] or [`Report::Signaled`] and exit with its code, or
///    128 + signal. Any other waited signal is forwarded: as PID 1 to every
///    process of the namespace, otherwise to the program's process group.
///
/// A failed write on the status pipe (`jobsd` gone) changes nothing: the job
/// runs on, and `jobsd`'s cgroup is what contains it.
pub fn run_init(args: impl IntoIterator<Item = OsString>) -> ! {
    let status = match sys::take_status_pipe() {
        Ok(file) => StatusPipe(file),
        Err(err) => {
            eprintln!("jobs-init: no status pipe on fd {STATUS_FD}: {err}");
            std::process::exit(EXIT_SETUP);
        }
    };
    let args = match InitArgs::parse(args) {
        Ok(args) => args,
        Err(err) => {
            eprintln!("jobs-init: {err}");
            status.send(Report::SetupFailed {
                step: SetupStep::Arguments,
                errno: libc::EINVAL,
            });
            std::process::exit(EXIT_USAGE);
        }
    };
    let pid1 = getpid() == Pid::from_raw(1);
    match start(&status, &args, pid1) {
        Ok(program) => {
            status.send(Report::Started);
            supervise(&status, program, pid1)
        }
        Err(report) => {
            status.send(report);
            std::process::exit(exit_code(report))
        }
    }
}

/// The write end of the status pipe.
struct StatusPipe(File);

impl StatusPipe {
    /// Writes one record with a single write(2), atomic on a pipe. Errors are
    /// ignored: with `jobsd` gone there is nobody to tell.
    fn send(&self, report: Report) {
        let _ = (&self.0).write(&report.encode());
    }
}

/// A failed setup step and its errno.
#[derive(Clone, Copy, Debug)]
struct Failure {
    step: SetupStep,
    errno: Errno,
}

impl From<Failure> for Report {
    fn from(failure: Failure) -> Report {
        Report::SetupFailed {
            step: failure.step,
            errno: failure.errno as i32,
        }
    }
}

/// Names the step a system call belongs to.
trait At<T> {
    fn at(self, step: SetupStep) -> Result<T, Failure>;
}

impl<T> At<T> for nix::Result<T> {
    fn at(self, step: SetupStep) -> Result<T, Failure> {
        self.map_err(|errno| Failure { step, errno })
    }
}

impl<T> At<T> for io::Result<T> {
    fn at(self, step: SetupStep) -> Result<T, Failure> {
        self.map_err(|err| Failure {
            step,
            errno: err.raw_os_error().map_or(Errno::EIO, Errno::from_raw),
        })
    }
}

/// A check that failed without a system call failing (an id not changed, a
/// privilege still there).
fn refused(step: SetupStep) -> Failure {
    Failure {
        step,
        errno: Errno::EPERM,
    }
}

/// Steps 1 and 3 to 7 of [`run_init`]: returns the program's pid once it runs
/// and the init has dropped its privileges, or the report to send before
/// exiting (the program's process, if any, already reaped).
fn start(status: &StatusPipe, args: &InitArgs, pid1: bool) -> Result<Pid, Report> {
    protect_status_pipe(status)?;
    block_signals()?;
    if !pid1 {
        prctl::set_child_subreaper(true).at(SetupStep::Fork)?;
    }
    if args.cgroup_namespace {
        // The init is in the job's cgroup already (jobsd put it there before
        // exec), so that cgroup becomes the namespace's root. Before the
        // mounts: a cgroup2 mount shows the mounter's namespace.
        unshare(CloneFlags::CLONE_NEWCGROUP).at(SetupStep::CgroupNamespace)?;
    }
    if args.mount_namespace {
        enter_mount_namespace(args, pid1)?;
    }
    if args.ipc_namespace {
        unshare(CloneFlags::CLONE_NEWIPC).at(SetupStep::IpcNamespace)?;
    }
    if args.network_none {
        unshare(CloneFlags::CLONE_NEWNET).at(SetupStep::NetworkNamespace)?;
        sys::loopback_up().at(SetupStep::Loopback)?;
    }
    let (_soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).at(SetupStep::Rlimit)?;
    setrlimit(Resource::RLIMIT_NOFILE, JOB_NOFILE.min(hard), hard).at(SetupStep::Rlimit)?;
    // `jobsd` shields itself from the OOM killer (a negative adjustment);
    // the job must not inherit that shield, or a memory hog would outlive
    // its neighbours. Raising the value back to 0 needs no privilege.
    std::fs::write("/proc/self/oom_score_adj", "0").at(SetupStep::Rlimit)?;
    // Last of the root-only setup: from here no execve, by the program or
    // anything it runs, can gain a capability, not even as uid 0.
    sys::drop_capability_sets().at(SetupStep::Capabilities)?;
    // Built before the fork, so the program's process only installs it.
    let filter = if args.seccomp {
        Some(
            seccomp::build(args.allow_namespaces, args.allow_listen).map_err(|_| Failure {
                step: SetupStep::Seccomp,
                errno: Errno::EOPNOTSUPP,
            })?,
        )
    } else {
        None
    };

    let program = cstring(args.program.as_os_str().as_bytes())?;
    let argv = std::iter::once(args.argv0.as_bytes())
        .chain(args.args.iter().map(|a| a.as_bytes()))
        .map(cstring)
        .collect::<Result<Vec<_>, _>>()?;
    let (exec_errors, exec_errors_w) = pipe2(OFlag::O_CLOEXEC).at(SetupStep::Fork)?;
    let child = match sys::fork().at(SetupStep::Fork)? {
        ForkResult::Child => {
            drop(exec_errors);
            let report = exec_program(args, filter.as_deref(), &program, &argv);
            // One write of a whole record; if it fails the init sees EOF,
            // then reaps an exit code 127 as the program's.
            let _ = File::from(exec_errors_w).write(&report.encode());
            sys::exit_immediately(EXIT_NOT_FOUND)
        }
        ForkResult::Parent { child } => child,
    };
    drop(exec_errors_w);
    // Also set here, so that the group exists before the init forwards any
    // signal to it, whichever of the two runs first. Fails harmlessly (EACCES,
    // ESRCH) once the child has exec'd or exited.
    let _ = setpgid(child, child);

    match read_exec_outcome(exec_errors) {
        ExecOutcome::Executed => {}
        ExecOutcome::Failed(report) => {
            wait_for(child);
            return Err(report);
        }
        ExecOutcome::Garbled => {
            let _ = kill(child, Signal::SIGKILL);
            wait_for(child);
            return Err(refused_with(SetupStep::Fork, Errno::EIO));
        }
    }

    let own = drop_privileges(args.uid, args.gid)
        .and_then(|()| prctl::set_dumpable(false).at(SetupStep::NoNewPrivs));
    if let Err(failure) = own {
        // Never leave a job running under an init that kept root.
        forward(Signal::SIGKILL, child, pid1);
        wait_for(child);
        return Err(failure.into());
    }
    Ok(child)
}

fn refused_with(step: SetupStep, errno: Errno) -> Report {
    Failure { step, errno }.into()
}

/// Makes sure the status pipe (and anything else inherited above stderr) does
/// not reach the program. Falls back to fd 3 alone on kernels without
/// close_range's CLOEXEC flag (before 5.11).
fn protect_status_pipe(status: &StatusPipe) -> Result<(), Failure> {
    if sys::mark_cloexec_from(STATUS_FD).is_ok() {
        return Ok(());
    }
    fcntl(&status.0, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
        .map(drop)
        .at(SetupStep::StatusPipe)
}

/// The signals the init waits for: SIGCHLD and the forwarded ones.
fn waited_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    for signal in FORWARDED {
        set.add(signal);
    }
    set
}

/// Blocks every signal, and gives the waited ones a handler (that never runs).
/// Blocking alone keeps them queued for sigwait, even as PID 1 of a namespace;
/// the handler is a second line: should one ever be unblocked, an init whose
/// disposition is SIG_DFL would have it discarded by the kernel (signals from
/// the parent namespace included, pid_namespaces(7)), or be killed by it when
/// not PID 1.
fn block_signals() -> Result<(), Failure> {
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::all()), None).at(SetupStep::Signals)?;
    sys::install_noop_handlers(&waited_signals()).at(SetupStep::Signals)
}

/// Enters a new mount namespace whose mounts do not propagate to the host,
/// then mounts what `args` asks for.
fn enter_mount_namespace(args: &InitArgs, pid1: bool) -> Result<(), Failure> {
    unshare(CloneFlags::CLONE_NEWNS).at(SetupStep::MountNamespace)?;
    // Before anything is mounted: a shared `/` (systemd's default) would
    // otherwise carry the mounts below back to the host.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .at(SetupStep::MountNamespace)?;
    if args.mount_proc {
        // A proc mount shows the PID namespace of its mounter: from anything
        // but PID 1 of a fresh namespace it would show the host's processes.
        if !pid1 {
            return Err(Failure {
                step: SetupStep::MountProc,
                errno: Errno::EINVAL,
            });
        }
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        mount(Some("proc"), "/proc", Some("proc"), flags, None::<&str>).at(SetupStep::MountProc)?;
    }
    if args.cgroup_namespace {
        mask_cgroup_tree().at(SetupStep::CgroupNamespace)?;
    }
    if args.private_home {
        make_private_home(args.uid, args.gid)?;
    }
    if args.private_tmp {
        // Every world-writable scratch place of a usual Linux host; jobs of
        // different users (often the same account) must share none. A missing
        // directory shares nothing and is skipped.
        for target in PRIVATE_DIRS {
            if !std::path::Path::new(target).is_dir() {
                continue;
            }
            mount(
                Some("tmpfs"),
                target,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some("mode=1777"),
            )
            .at(SetupStep::PrivateTmp)?;
        }
        // Pseudo-terminals too: on the host's /dev/pts every job could open
        // (and write to) every other job's terminal. A new devpts instance
        // (devpts.rst) holds only the job's own; /dev/ptmx must then be its
        // ptmx, or new terminals would still be made on the host's.
        if std::path::Path::new("/dev/pts").is_dir() {
            mount(
                Some("devpts"),
                "/dev/pts",
                Some("devpts"),
                MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
                Some("newinstance,ptmxmode=0666,mode=0620"),
            )
            .at(SetupStep::PrivateTmp)?;
            mount(
                Some("/dev/pts/ptmx"),
                "/dev/ptmx",
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .at(SetupStep::PrivateTmp)?;
        }
    }
    Ok(())
}

/// Where the host's cgroup trees are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Hides the host's cgroup trees (every job's name and usage) from the job.
/// On a pure cgroup-v2 host a fresh cgroup2 mount, made in the job's cgroup
/// namespace, shows only the job's own subtree (and its limits), read-only;
/// on a hybrid or v1 host the controller trees cannot be shown that way
/// without mounting each again, and an empty read-only tmpfs hides them.
fn mask_cgroup_tree() -> nix::Result<()> {
    if !std::path::Path::new(CGROUP_ROOT).is_dir() {
        return Ok(());
    }
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY;
    let fs = nix::sys::statfs::statfs(CGROUP_ROOT)?;
    if fs.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC {
        mount(
            Some("cgroup2"),
            CGROUP_ROOT,
            Some("cgroup2"),
            flags,
            None::<&str>,
        )
    } else {
        mount(
            Some("tmpfs"),
            CGROUP_ROOT,
            Some("tmpfs"),
            flags,
            Some("mode=0555,size=4k"),
        )
    }
}

/// A fresh tmpfs on `/home`, hiding the host's homes, with only
/// [`PRIVATE_HOME`] in it, owned by the job, mode 0700 (ProtectHome=tmpfs).
fn make_private_home(uid: u32, gid: u32) -> Result<(), Failure> {
    use std::os::unix::fs::PermissionsExt;
    let step = SetupStep::PrivateHome;
    mount(
        Some("tmpfs"),
        "/home",
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )
    .at(step)?;
    std::fs::create_dir(PRIVATE_HOME).at(step)?;
    nix::unistd::chown(
        PRIVATE_HOME,
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
    )
    .at(step)?;
    // Set exactly: create_dir's mode is filtered by the umask.
    std::fs::set_permissions(PRIVATE_HOME, std::fs::Permissions::from_mode(0o700)).at(step)
}

/// The directories that get a fresh tmpfs with `private_tmp`.
const PRIVATE_DIRS: [&str; 4] = ["/tmp", "/var/tmp", "/dev/shm", "/run/lock"];

fn cstring(bytes: &[u8]) -> Result<CString, Failure> {
    // InitArgs::parse refuses NUL bytes; this is only a second line.
    CString::new(bytes).map_err(|_| Failure {
        step: SetupStep::Arguments,
        errno: Errno::EINVAL,
    })
}

/// In the program's process: everything between fork and exec. Returns only
/// on failure, with the report for the init.
fn exec_program(
    args: &InitArgs,
    filter: Option<&[seccompiler::sock_filter]>,
    program: &CString,
    argv: &[CString],
) -> Report {
    if let Err(failure) = prepare_program_process(args, filter) {
        return failure.into();
    }
    match execv(program, argv) {
        Err(errno) => Report::ExecFailed {
            errno: errno as i32,
        },
        Ok(never) => match never {},
    }
}

fn prepare_program_process(
    args: &InitArgs,
    filter: Option<&[seccompiler::sock_filter]>,
) -> Result<(), Failure> {
    // Dispositions first, mask second: a signal arriving in between then meets
    // the default action rather than the init's no-op handler.
    sys::reset_signal_dispositions().at(SetupStep::Signals)?;
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None).at(SetupStep::Signals)?;
    setpgid(Pid::from_raw(0), Pid::from_raw(0)).at(SetupStep::Fork)?;
    if let Some(n) = args.max_processes {
        // Before the uid changes, so that the count of the new uid is what
        // the kernel checks from the first fork on.
        setrlimit(Resource::RLIMIT_NPROC, n, n).at(SetupStep::Rlimit)?;
    }
    drop_privileges(args.uid, args.gid)?;
    chdir("/").at(SetupStep::Chdir)?;
    // The sandbox comes last, after no_new_privs (which both need), so that
    // it restricts the program and nothing of the setup.
    if args.landlock_abi != 0 {
        let rules = JobRules {
            abi: args.landlock_abi,
            allow_listen: args.allow_listen,
            writable: &args.writable,
            home: args
                .private_home
                .then(|| std::path::Path::new(PRIVATE_HOME)),
            own_proc: args.mount_proc,
        };
        ruleset::apply(&rules).map_err(|e| Failure {
            step: SetupStep::Landlock,
            errno: Errno::from_raw(e.errno()),
        })?;
    }
    if let Some(filter) = filter {
        sys::install_seccomp(filter).at(SetupStep::Seccomp)?;
    }
    Ok(())
}

/// No supplementary groups, then `gid`, then `uid` (the order matters: after
/// setuid there is no privilege left to change groups), verified, and verified
/// irreversible; then `no_new_privs`, so no set-user-ID program or file
/// capability can give anything back.
fn drop_privileges(uid: u32, gid: u32) -> Result<(), Failure> {
    let (uid, gid) = (Uid::from_raw(uid), Gid::from_raw(gid));
    setgroups(&[]).at(SetupStep::Groups)?;
    setgid(gid).at(SetupStep::Gid)?;
    setuid(uid).at(SetupStep::Uid)?;

    if !getgroups().at(SetupStep::Groups)?.is_empty() {
        return Err(refused(SetupStep::Groups));
    }
    let gids = getresgid().at(SetupStep::Gid)?;
    if [gids.real, gids.effective, gids.saved] != [gid; 3] {
        return Err(refused(SetupStep::Gid));
    }
    let uids = getresuid().at(SetupStep::Uid)?;
    if [uids.real, uids.effective, uids.saved] != [uid; 3] {
        return Err(refused(SetupStep::Uid));
    }
    if !uid.is_root() {
        // Root's privileges must be gone for good, not just set aside.
        if gid.as_raw() != 0 && setgid(Gid::from_raw(0)).is_ok() {
            return Err(refused(SetupStep::Gid));
        }
        if setuid(Uid::from_raw(0)).is_ok() {
            return Err(refused(SetupStep::Uid));
        }
    }
    prctl::set_no_new_privs().at(SetupStep::NoNewPrivs)
}

/// What the program's process said before exec.
enum ExecOutcome {
    /// EOF with nothing written: execve closed the pipe.
    Executed,
    /// It could not get to (or through) execve.
    Failed(Report),
    /// Something that is not a failure record.
    Garbled,
}

fn read_exec_outcome(pipe: OwnedFd) -> ExecOutcome {
    let mut pipe = File::from(pipe);
    let mut record = [0u8; Report::LEN];
    let mut filled = 0;
    while filled < record.len() {
        match pipe.read(&mut record[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return ExecOutcome::Garbled,
        }
    }
    if filled == 0 {
        return ExecOutcome::Executed;
    }
    match <&[u8; Report::LEN]>::try_from(&record[..filled]).map(Report::decode) {
        Ok(Ok(report @ (Report::ExecFailed { .. } | Report::SetupFailed { .. }))) => {
            ExecOutcome::Failed(report)
        }
        _ => ExecOutcome::Garbled,
    }
}

/// Step 8 of [`run_init`].
fn supervise(status: &StatusPipe, program: Pid, pid1: bool) -> ! {
    let waited = waited_signals();
    loop {
        let signal = match waited.wait() {
            Ok(signal) => signal,
            // sigwait fails only for an invalid set, which ours is not. Should
            // it fail anyway, keep the one duty that matters: report the end.
            Err(_) => finish(status, wait_for(program)),
        };
        if signal == Signal::SIGCHLD {
            if let Some(report) = reap(program) {
                finish(status, report);
            }
        } else {
            forward(signal, program, pid1);
        }
    }
}

/// Reports the program's end and exits with its code.
fn finish(status: &StatusPipe, report: Report) -> ! {
    status.send(report);
    std::process::exit(exit_code(report))
}

/// Sends `signal` to the job: as PID 1 to every process of the namespace
/// (kill(-1) spares the init itself and reaches nothing outside the
/// namespace), otherwise to the program's process group. Errors (ESRCH once
/// nobody is left) change nothing.
///
/// The group id is the program's pid, which cannot have been reused: the init
/// reaps the program only right before it exits. Processes that left the group
/// (setsid, setpgid) are not reached outside a PID namespace; `jobsd` reaches
/// them through the cgroup.
fn forward(signal: Signal, program: Pid, pid1: bool) {
    let _ = if pid1 {
        kill(Pid::from_raw(-1), signal)
    } else {
        killpg(program, signal)
    };
}

/// Reaps every child that has ended (the program, orphans reparented to the
/// init) without blocking; returns the program's end if it was among them.
fn reap(program: Pid) -> Option<Report> {
    let mut ended = None;
    loop {
        match sys::waitpid(-1, libc::WNOHANG) {
            Ok(Some((pid, status))) => {
                if pid == program.as_raw() {
                    ended = ended.or(end_of(status));
                }
            }
            Err(Errno::EINTR) => {}
            // None: children left, all running. ECHILD: none left.
            Ok(None) | Err(_) => return ended,
        }
    }
}

/// Blocks until `program` is reaped; its end as a report.
fn wait_for(program: Pid) -> Report {
    loop {
        match sys::waitpid(program.as_raw(), 0) {
            Ok(Some((_, status))) => {
                if let Some(report) = end_of(status) {
                    return report;
                }
            }
            Err(Errno::EINTR) | Ok(None) => {}
            // ECHILD: already reaped, which only this module does.
            Err(errno) => return refused_with(SetupStep::Fork, errno),
        }
    }
}

/// The report for a wait status that ends a process; `None` for stop and
/// continue statuses, which the init does not ask for but tolerates.
fn end_of(status: libc::c_int) -> Option<Report> {
    if libc::WIFEXITED(status) {
        Some(Report::Exited(libc::WEXITSTATUS(status)))
    } else if libc::WIFSIGNALED(status) {
        Some(Report::Signaled {
            signal: libc::WTERMSIG(status),
            core_dumped: libc::WCOREDUMP(status),
        })
    } else {
        None
    }
}

/// The init's exit code for its final report.
fn exit_code(report: Report) -> i32 {
    match report {
        Report::Exited(code) => code,
        Report::Signaled { signal, .. } => 128 + signal,
        Report::ExecFailed { errno } if errno == libc::ENOENT => EXIT_NOT_FOUND,
        Report::ExecFailed { .. } => EXIT_CANNOT_EXECUTE,
        Report::SetupFailed {
            step: SetupStep::Arguments,
            ..
        } => EXIT_USAGE,
        Report::SetupFailed { .. } | Report::Started => EXIT_SETUP,
    }
}

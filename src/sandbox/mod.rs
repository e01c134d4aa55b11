//! `jobs-init`: the first process of every contained job.
//!
//! `jobsd` starts `jobs-init` as root, already inside the job's cgroup and
//! (when PID namespaces are on) as PID 1 of a fresh PID namespace, with stdin
//! on `/dev/null`, stdout and stderr on the job's output pipes, the write end
//! of a *status pipe* on [`STATUS_FD`], and exactly the job's environment.
//! Its command line is an [`InitArgs`] as made by [`InitArgs::to_args`].
//!
//! # What the init owns
//! - The job's namespaces: a private mount namespace (a fresh `/proc`, private
//!   `/tmp`, `/var/tmp`, `/dev/shm` and `/run/lock`), and an empty network namespace with only
//!   `lo`, up.
//! - Starting the program: a new process group, no supplementary groups, the
//!   job's uid and gid (verified, and verified irreversible), `no_new_privs`,
//!   cwd `/`, argv exactly as given, the environment unchanged, no descriptor
//!   besides 0, 1 and 2.
//! - The kernel sandbox (the program's process only, after the privilege
//!   drop, last before `execve`): the Landlock ruleset of `ruleset.rs`, then
//!   the seccomp filter of [`seccomp`]. Before that, while still root and
//!   after its mounts, the init empties the capability bounding, ambient and
//!   inheritable sets, for itself and so for the program.
//! - Its own privileges: once the program runs, the init drops to the job's
//!   uid and gid and makes itself non-dumpable, so no job process can ptrace
//!   it or read its `/proc` files.
//! - Supervision: forwarding signals to the job, reaping every process
//!   reparented to it, and telling `jobsd` how things went in fixed-size
//!   [`Report`] records on the status pipe: exactly one of
//!   [`Report::Started`], [`Report::ExecFailed`] or [`Report::SetupFailed`],
//!   then (after `Started`) exactly one of [`Report::Exited`] or
//!   [`Report::Signaled`]. EOF without a final record means the init itself
//!   died (for example killed with SIGKILL).
//!
//! # What it must not do
//! - Decide anything about policy: which uid, which namespaces, which limits
//!   all come from `jobsd` through [`InitArgs`].
//! - Touch the host: mounts are made private before anything is mounted, so
//!   nothing propagates back.
//! - Start threads: it forks after setting up, which is only sound while it
//!   is single-threaded (checked before the fork).
//! - Outlive the program: it exits as soon as the program is reaped. As PID 1
//!   that makes the kernel kill the rest of the namespace; otherwise `jobsd`
//!   kills what is left through the cgroup.
//!
//! # Layout
//! - this file: [`InitArgs`] (the command line), [`Report`] (the status
//!   record), [`InitError`].
//! - `init.rs`: [`run_init`], the init's whole life.
//! - `plan.rs`: what the kernel offers and what `jobsd` decides
//!   ([`SandboxPlan`]), checked and logged at start-up.
//! - `ruleset.rs`: the Landlock ruleset. [`seccomp`]: the seccomp filter.
//! - `sys.rs`: the init's system calls without a safe wrapper; the only
//!   `unsafe` of the init.
//! - `bind.rs`: [`BindHook`], the cgroup BPF programs `jobsd` attaches to
//!   each job's group so that it binds no port without the `listen` permit
//!   (UDP included, which Landlock does not rule); its own `unsafe`, for
//!   `bpf(2)`.

mod bind;
mod init;
mod plan;
mod ruleset;
pub mod seccomp;
mod sys;

use std::ffi::OsString;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use clap::Parser;

pub use bind::BindHook;
pub use init::run_init;
pub use plan::{KernelSupport, PartLine, SandboxError, SandboxPlan, check_writable};
pub use ruleset::{LandlockParts, MAX_ABI};

/// The private home of a job whose account has `private_home`: made by the
/// init on a fresh tmpfs over `/home`, owned by the job's uid, mode 0700.
pub const PRIVATE_HOME: &str = "/home/job";

/// fd number of the status pipe in the init.
///
/// 3 because it is the first descriptor after stdin, stdout and stderr: the
/// one a spawner gets by `dup2`-ing its pipe just past the standard three.
pub const STATUS_FD: RawFd = 3;

/// What `jobsd` asks of one init: who the program runs as, which namespaces it
/// gets, and what to execute.
///
/// Rules checked by [`InitArgs::parse`]: `program` and every `writable`
/// directory are absolute; `mount_proc`, `private_tmp`, `cgroup_namespace`
/// and `private_home` need `mount_namespace`; `landlock_abi` is at most
/// [`MAX_ABI`]; no argument holds a NUL byte.
/// `mount_proc` further needs the init to be PID 1 of its namespace, which only
/// the running init can check (it fails with
/// [`SetupStep::MountProc`] otherwise).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitArgs {
    /// The user id the program (and, once it runs, the init) runs as. 0 is
    /// accepted and means the job runs as root.
    pub uid: u32,
    /// The group id the program runs as; it gets no supplementary groups.
    pub gid: u32,
    /// `RLIMIT_NPROC` (soft and hard) of the program's process: at most this
    /// many processes and threads of `uid` at once, counted by the kernel
    /// per uid. Meant for a uid that is one identity's alone, with its
    /// process cap: the kernel refuses a fork over it before copying the
    /// address space, whereas a fork over a cgroup's `pids.max` is refused
    /// only after the copy, which write-locks every shared library's mapping
    /// for the whole host (see the README's "Security model").
    pub max_processes: Option<u64>,
    /// Give the job its own mount namespace, with every mount made private
    /// (recursively) so nothing propagates back to the host.
    pub mount_namespace: bool,
    /// Mount a fresh `proc` on `/proc` (nosuid, nodev, noexec), so the job
    /// sees only its own PID namespace. Needs `mount_namespace` and the init
    /// to be PID 1.
    pub mount_proc: bool,
    /// Mount fresh tmpfs file systems (mode 1777, nosuid, nodev) on `/tmp`,
    /// `/var/tmp`, `/dev/shm` and `/run/lock` (those that exist), and a new
    /// devpts instance on `/dev/pts` (with `/dev/ptmx` bound to its ptmx), so
    /// jobs share no scratch space and no terminals. Needs
    /// `mount_namespace`. The tmpfs pages count against the job's memory
    /// limit.
    pub private_tmp: bool,
    /// Give the job its own network namespace with only the loopback
    /// interface, brought up.
    pub network_none: bool,
    /// Give the job its own IPC namespace (ipc_namespaces(7)): System V IPC
    /// objects and POSIX message queues it creates are its own and vanish
    /// with it, so they can neither outlive the job (and its memory limit)
    /// nor be read by other jobs.
    pub ipc_namespace: bool,
    /// Give the job its own cgroup namespace (cgroup_namespaces(7)), so
    /// `/proc/self/cgroup` shows `/` and no other job's name, and mask
    /// `/sys/fs/cgroup`: a fresh read-only cgroup2 mount of the job's own
    /// subtree on a pure cgroup-v2 host, an empty read-only tmpfs otherwise
    /// (hybrid and v1 hosts, whose controller trees would show every job).
    /// Needs `mount_namespace`.
    pub cgroup_namespace: bool,
    /// Mount a fresh tmpfs on `/home` (hiding the host's homes) holding only
    /// [`PRIVATE_HOME`], owned by `uid`:`gid`, mode 0700, writable under
    /// Landlock. Needs `mount_namespace` and an existing `/home`.
    pub private_home: bool,
    /// Install the seccomp filter of [`seccomp::build`] in the program's
    /// process, last before `execve`.
    pub seccomp: bool,
    /// The filter allows `unshare`, `setns`, `clone` with namespace flags and
    /// the mount calls (the `user_namespaces` permit).
    pub allow_namespaces: bool,
    /// The Landlock ABI level `jobsd` decided on: 0 is off, otherwise the
    /// parts of [`LandlockParts::for_abi`] are required of the kernel (the
    /// setup fails if it offers less). At most [`MAX_ABI`].
    pub landlock_abi: u8,
    /// Landlock leaves TCP bind alone (the `listen` permit).
    pub allow_listen: bool,
    /// Absolute host directories the job may write beneath (`jobsd
    /// --writable`), besides its private places.
    pub writable: Vec<PathBuf>,
    /// The absolute path to execute. It is not looked up in PATH.
    pub program: PathBuf,
    /// `argv[0]` as the user gave the program.
    pub argv0: String,
    /// `argv[1..]`, verbatim: may start with `-`, may be empty strings.
    pub args: Vec<String>,
}

/// The command line of `jobs-init`, as clap sees it. Kept private: the public
/// shape is [`InitArgs`], and [`InitArgs::to_args`] is the only writer.
#[derive(Parser)]
#[command(
    name = "jobs-init",
    no_binary_name = true,
    disable_help_flag = true,
    disable_version_flag = true
)]
struct Cli {
    #[arg(long)]
    uid: u32,
    #[arg(long)]
    gid: u32,
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    max_processes: Option<u64>,
    #[arg(long)]
    mount_namespace: bool,
    #[arg(long)]
    mount_proc: bool,
    #[arg(long)]
    private_tmp: bool,
    #[arg(long)]
    network_none: bool,
    #[arg(long)]
    ipc_namespace: bool,
    #[arg(long)]
    cgroup_namespace: bool,
    #[arg(long)]
    private_home: bool,
    #[arg(long)]
    seccomp: bool,
    #[arg(long)]
    allow_namespaces: bool,
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=MAX_ABI as i64))]
    landlock_abi: u8,
    #[arg(long)]
    allow_listen: bool,
    #[arg(long, action = clap::ArgAction::Append)]
    writable: Vec<PathBuf>,
    program: PathBuf,
    argv0: String,
    args: Vec<String>,
}

impl InitArgs {
    /// The argument list for `jobs-init` (without `argv[0]`): `--uid N --gid N`,
    /// one flag per namespace option that is on, then `--`, the program,
    /// `argv0` and the arguments. Everything after `--` is taken verbatim, so
    /// arguments such as `--`, `-x` or the empty string survive.
    /// Round-trips through [`InitArgs::parse`] for every value that `parse`
    /// accepts.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut out: Vec<OsString> = vec![
            "--uid".into(),
            self.uid.to_string().into(),
            "--gid".into(),
            self.gid.to_string().into(),
        ];
        if let Some(n) = self.max_processes {
            out.push("--max-processes".into());
            out.push(n.to_string().into());
        }
        let flags = [
            (self.mount_namespace, "--mount-namespace"),
            (self.mount_proc, "--mount-proc"),
            (self.private_tmp, "--private-tmp"),
            (self.network_none, "--network-none"),
            (self.ipc_namespace, "--ipc-namespace"),
            (self.cgroup_namespace, "--cgroup-namespace"),
            (self.private_home, "--private-home"),
            (self.seccomp, "--seccomp"),
            (self.allow_namespaces, "--allow-namespaces"),
            (self.allow_listen, "--allow-listen"),
        ];
        out.extend(
            flags
                .iter()
                .filter(|(on, _)| *on)
                .map(|(_, flag)| flag.into()),
        );
        if self.landlock_abi != 0 {
            out.push("--landlock-abi".into());
            out.push(self.landlock_abi.to_string().into());
        }
        for dir in &self.writable {
            out.push("--writable".into());
            out.push(dir.clone().into_os_string());
        }
        out.push("--".into());
        out.push(self.program.clone().into_os_string());
        out.push(self.argv0.clone().into());
        out.extend(self.args.iter().map(OsString::from));
        out
    }

    /// Parses a `jobs-init` argument list (without `argv[0]`), as made by
    /// [`InitArgs::to_args`].
    ///
    /// # Errors
    /// - [`InitError::Usage`]: an unknown or repeated option, a missing or
    ///   malformed `--uid`/`--gid`, no program or no `argv0`, an option-like
    ///   argument before `--`, or `argv0`/an argument that is not UTF-8.
    /// - [`InitError::RelativeProgram`]: the program path is not absolute.
    /// - [`InitError::NeedsMountNamespace`]: `--mount-proc` or `--private-tmp`
    ///   without `--mount-namespace`.
    /// - [`InitError::NulByte`]: an argument holds a NUL byte.
    pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Self, InitError> {
        let args: Vec<OsString> = args.into_iter().collect();
        if args.iter().any(|a| a.as_bytes().contains(&0)) {
            return Err(InitError::NulByte);
        }
        let cli = Cli::try_parse_from(args).map_err(InitError::Usage)?;
        if !cli.program.is_absolute() {
            return Err(InitError::RelativeProgram {
                program: cli.program,
            });
        }
        if let Some(dir) = cli.writable.iter().find(|d| !d.is_absolute()) {
            return Err(InitError::RelativeWritable { dir: dir.clone() });
        }
        for (on, option) in [
            (cli.mount_proc, "mount-proc"),
            (cli.private_tmp, "private-tmp"),
            (cli.cgroup_namespace, "cgroup-namespace"),
            (cli.private_home, "private-home"),
        ] {
            if on && !cli.mount_namespace {
                return Err(InitError::NeedsMountNamespace { option });
            }
        }
        Ok(Self {
            uid: cli.uid,
            gid: cli.gid,
            max_processes: cli.max_processes,
            mount_namespace: cli.mount_namespace,
            mount_proc: cli.mount_proc,
            private_tmp: cli.private_tmp,
            network_none: cli.network_none,
            ipc_namespace: cli.ipc_namespace,
            cgroup_namespace: cli.cgroup_namespace,
            private_home: cli.private_home,
            seccomp: cli.seccomp,
            allow_namespaces: cli.allow_namespaces,
            landlock_abi: cli.landlock_abi,
            allow_listen: cli.allow_listen,
            writable: cli.writable,
            program: cli.program,
            argv0: cli.argv0,
            args: cli.args,
        })
    }
}

/// The setup step that failed, in a [`Report::SetupFailed`].
///
/// Steps up to [`SetupStep::Fork`] run in the init before the program's process
/// exists; [`SetupStep::Groups`] to [`SetupStep::Chdir`] run in that process
/// before `execve`, and the identity steps also when the init drops its own
/// privileges after the program started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetupStep {
    /// The command line was rejected (errno is `EINVAL`); the init exits 2.
    Arguments,
    /// `unshare(CLONE_NEWNS)` or making `/` recursively private.
    MountNamespace,
    /// Mounting `/proc`; `EINVAL` when asked of an init that is not PID 1.
    MountProc,
    /// Mounting the tmpfs on `/tmp` or `/dev/shm`.
    PrivateTmp,
    /// `unshare(CLONE_NEWNET)`.
    NetworkNamespace,
    /// Bringing `lo` up in the new network namespace.
    Loopback,
    /// Setting the soft `RLIMIT_NOFILE`, or resetting `oom_score_adj` to 0,
    /// or (in the program's process) setting `RLIMIT_NPROC`.
    Rlimit,
    /// Blocking signals, installing the forwarding handlers, or (in the
    /// program's process) restoring the default mask and dispositions.
    Signals,
    /// Everything about making the program's process: becoming a child
    /// subreaper, the exec-error pipe, `fork(2)` (`EBUSY` if the init found
    /// itself multi-threaded), the program's own process group, or a garbled
    /// message from that process (`EIO`).
    Fork,
    /// `setgroups([])`, or supplementary groups still present after it
    /// (`EPERM`).
    Groups,
    /// `setgid`, or the real, effective or saved gid not the target afterwards,
    /// or `setgid(0)` still succeeding (`EPERM`).
    Gid,
    /// `setuid`, or the real, effective or saved uid not the target afterwards,
    /// or `setuid(0)` still succeeding (`EPERM`).
    Uid,
    /// `prctl(PR_SET_NO_NEW_PRIVS)`, or (for the init itself)
    /// `prctl(PR_SET_DUMPABLE, 0)`.
    NoNewPrivs,
    /// `chdir("/")`.
    Chdir,
    /// Marking the status pipe (and any other inherited descriptor)
    /// close-on-exec, so that the program cannot inherit it.
    StatusPipe,
    /// `unshare(CLONE_NEWIPC)`.
    IpcNamespace,
    /// `unshare(CLONE_NEWCGROUP)`, or masking `/sys/fs/cgroup`.
    CgroupNamespace,
    /// The tmpfs on `/home` or the job's home in it.
    PrivateHome,
    /// Emptying the capability bounding, ambient and inheritable sets.
    Capabilities,
    /// Applying the Landlock ruleset in the program's process (`ENOENT`: a
    /// directory to make writable is missing; `EOPNOTSUPP`: the kernel
    /// lacks a part of the ABI `jobsd` asked for, or enforced less).
    Landlock,
    /// Building or installing the seccomp filter (`EOPNOTSUPP`: no filter
    /// for this architecture).
    Seccomp,
}

impl SetupStep {
    /// Every step, in code order (the order of the enum).
    const ALL: [SetupStep; 21] = [
        SetupStep::Arguments,
        SetupStep::MountNamespace,
        SetupStep::MountProc,
        SetupStep::PrivateTmp,
        SetupStep::NetworkNamespace,
        SetupStep::Loopback,
        SetupStep::Rlimit,
        SetupStep::Signals,
        SetupStep::Fork,
        SetupStep::Groups,
        SetupStep::Gid,
        SetupStep::Uid,
        SetupStep::NoNewPrivs,
        SetupStep::Chdir,
        SetupStep::StatusPipe,
        SetupStep::IpcNamespace,
        SetupStep::CgroupNamespace,
        SetupStep::PrivateHome,
        SetupStep::Capabilities,
        SetupStep::Landlock,
        SetupStep::Seccomp,
    ];

    /// The step's wire code: 1 + its position in [`SetupStep::ALL`]; 0 is
    /// never a step, so a zeroed record cannot pass for one.
    fn code(self) -> u8 {
        match self {
            SetupStep::Arguments => 1,
            SetupStep::MountNamespace => 2,
            SetupStep::MountProc => 3,
            SetupStep::PrivateTmp => 4,
            SetupStep::NetworkNamespace => 5,
            SetupStep::Loopback => 6,
            SetupStep::Rlimit => 7,
            SetupStep::Signals => 8,
            SetupStep::Fork => 9,
            SetupStep::Groups => 10,
            SetupStep::Gid => 11,
            SetupStep::Uid => 12,
            SetupStep::NoNewPrivs => 13,
            SetupStep::Chdir => 14,
            SetupStep::StatusPipe => 15,
            SetupStep::IpcNamespace => 16,
            SetupStep::CgroupNamespace => 17,
            SetupStep::PrivateHome => 18,
            SetupStep::Capabilities => 19,
            SetupStep::Landlock => 20,
            SetupStep::Seccomp => 21,
        }
    }

    fn from_code(code: u8) -> Option<SetupStep> {
        SetupStep::ALL.into_iter().find(|s| s.code() == code)
    }
}

/// One record on the status pipe, from the init to `jobsd`.
///
/// Wire format ([`Report::LEN`] bytes, written with one `write(2)`, which is
/// atomic on a pipe): byte 0 the kind (1 `Started`, 2 `ExecFailed`,
/// 3 `SetupFailed`, 4 `Exited`, 5 `Signaled`); byte 1 the setup step's code or
/// the core-dumped flag (0 or 1), else 0; bytes 2–3 zero; bytes 4–7 the errno,
/// exit code or signal number as a little-endian `i32`, else 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Report {
    /// The program was executed: `execve` succeeded in its process and the
    /// init has dropped its own privileges.
    Started,
    /// `execve` of the program failed with this errno (`ENOENT`: no such file;
    /// `EACCES`: not executable, or not reachable for the job's uid; …). The
    /// init exits 127 for `ENOENT`, 126 otherwise.
    ExecFailed {
        /// The errno of `execve`.
        errno: i32,
    },
    /// A setup step failed; the program did not run (or, for the init's own
    /// privilege drop, was killed). The init exits 2 for
    /// [`SetupStep::Arguments`], 125 otherwise.
    SetupFailed {
        /// Which step.
        step: SetupStep,
        /// The errno of the failing call, or the one named in the step's doc.
        errno: i32,
    },
    /// The program exited with this code (0–255); the init exits with it too.
    Exited(i32),
    /// The program was killed by this signal; the init exits 128 + signal.
    Signaled {
        /// The signal number.
        signal: i32,
        /// Whether the kernel reported a core dump.
        core_dumped: bool,
    },
}

const KIND_STARTED: u8 = 1;
const KIND_EXEC_FAILED: u8 = 2;
const KIND_SETUP_FAILED: u8 = 3;
const KIND_EXITED: u8 = 4;
const KIND_SIGNALED: u8 = 5;

impl Report {
    /// The fixed size of a record, in bytes: far below `PIPE_BUF` (4096), so
    /// each record is written atomically and never interleaves.
    pub const LEN: usize = 8;

    /// The record's bytes; see [`Report`] for the layout.
    pub fn encode(&self) -> [u8; Report::LEN] {
        let (kind, aux, value) = match *self {
            Report::Started => (KIND_STARTED, 0, 0),
            Report::ExecFailed { errno } => (KIND_EXEC_FAILED, 0, errno),
            Report::SetupFailed { step, errno } => (KIND_SETUP_FAILED, step.code(), errno),
            Report::Exited(code) => (KIND_EXITED, 0, code),
            Report::Signaled {
                signal,
                core_dumped,
            } => (KIND_SIGNALED, u8::from(core_dumped), signal),
        };
        let v = value.to_le_bytes();
        [kind, aux, 0, 0, v[0], v[1], v[2], v[3]]
    }

    /// Reads a record made by [`Report::encode`].
    ///
    /// # Errors
    /// [`InitError::BadRecord`] for anything `encode` cannot produce: an
    /// unknown kind or step, a core-dumped flag other than 0 or 1, non-zero
    /// reserved bytes, or a value on `Started`.
    pub fn decode(bytes: &[u8; Report::LEN]) -> Result<Report, InitError> {
        let bad = || InitError::BadRecord { record: *bytes };
        let [kind, aux, r0, r1, v0, v1, v2, v3] = *bytes;
        if r0 != 0 || r1 != 0 {
            return Err(bad());
        }
        let value = i32::from_le_bytes([v0, v1, v2, v3]);
        let report = match (kind, aux) {
            (KIND_STARTED, 0) if value == 0 => Report::Started,
            (KIND_EXEC_FAILED, 0) => Report::ExecFailed { errno: value },
            (KIND_SETUP_FAILED, code) => Report::SetupFailed {
                step: SetupStep::from_code(code).ok_or_else(bad)?,
                errno: value,
            },
            (KIND_EXITED, 0) => Report::Exited(value),
            (KIND_SIGNALED, flag @ (0 | 1)) => Report::Signaled {
                signal: value,
                core_dumped: flag == 1,
            },
            _ => return Err(bad()),
        };
        Ok(report)
    }
}

/// Errors of the init's command line and status records.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InitError {
    /// The command line is malformed: an unknown or repeated option, a missing
    /// or non-numeric `--uid`/`--gid`, no program or `argv0`, an option-like
    /// argument before `--`, or an `argv0`/argument that is not UTF-8.
    #[error("invalid jobs-init command line: {}", first_line(.0))]
    Usage(#[source] clap::Error),
    /// The program is not an absolute path.
    #[error("the program path {} is not absolute", program.display())]
    RelativeProgram {
        /// The program as given.
        program: PathBuf,
    },
    /// A `--writable` directory is not an absolute path.
    #[error("the writable directory {} is not absolute", dir.display())]
    RelativeWritable {
        /// The directory as given.
        dir: PathBuf,
    },
    /// An option that works inside the mount namespace was given without
    /// `--mount-namespace`.
    #[error("--{option} needs --mount-namespace")]
    NeedsMountNamespace {
        /// The option, without its leading dashes.
        option: &'static str,
    },
    /// An argument holds a NUL byte, which `execve(2)` cannot pass.
    #[error("an argument holds a NUL byte")]
    NulByte,
    /// A status record that [`Report::encode`] cannot have written.
    #[error("malformed status record {record:02x?}")]
    BadRecord {
        /// The record as read.
        record: [u8; Report::LEN],
    },
}

/// The first line of clap's message, without its `error: ` prefix: the init
/// prints one line, and the rest (usage, tips) is for humans at a terminal.
fn first_line(err: &clap::Error) -> String {
    let text = err.to_string();
    let line = text.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    fn sample() -> InitArgs {
        InitArgs {
            uid: 65534,
            gid: 65533,
            max_processes: Some(4096),
            mount_namespace: true,
            mount_proc: true,
            private_tmp: true,
            network_none: true,
            ipc_namespace: true,
            cgroup_namespace: true,
            private_home: true,
            seccomp: true,
            allow_namespaces: false,
            landlock_abi: 7,
            allow_listen: false,
            writable: vec![PathBuf::from("/srv/shared"), PathBuf::from("/srv/a b")],
            program: PathBuf::from("/usr/bin/env"),
            argv0: "env".into(),
            args: vec![],
        }
    }

    // Arguments that look like options, separators, empty strings, spaces and
    // non-ASCII text reach the program unchanged.
    #[test]
    fn init_args_round_trip_awkward_arguments() {
        let args = InitArgs {
            argv0: "-bash".into(),
            args: ["--", "-x", "", "--uid", "0", "a b", "ünï cødé ✓", "--", " "]
                .map(String::from)
                .to_vec(),
            ..sample()
        };
        assert_eq!(InitArgs::parse(args.to_args()).unwrap(), args);
    }

    #[test]
    fn init_args_round_trip_every_flag_combination() {
        for bits in 0..4096u16 {
            let args = InitArgs {
                mount_namespace: bits & 1 != 0 || bits & 0b110_0000_0110 != 0,
                mount_proc: bits & 2 != 0,
                private_tmp: bits & 4 != 0,
                network_none: bits & 8 != 0,
                ipc_namespace: bits & 16 != 0,
                seccomp: bits & 32 != 0,
                allow_namespaces: bits & 64 != 0,
                allow_listen: bits & 128 != 0,
                landlock_abi: if bits & 256 != 0 { 4 } else { 0 },
                cgroup_namespace: bits & 512 != 0,
                private_home: bits & 1024 != 0,
                writable: if bits & 2048 != 0 {
                    vec![PathBuf::from("/w")]
                } else {
                    vec![]
                },
                uid: u32::MAX,
                gid: 0,
                max_processes: (bits & 2048 != 0).then_some(u64::MAX),
                argv0: String::new(),
                ..sample()
            };
            assert_eq!(
                InitArgs::parse(args.to_args()).unwrap(),
                args,
                "bits {bits}"
            );
        }
    }

    #[test]
    fn init_args_to_args_exact_shape() {
        let args = InitArgs {
            mount_proc: false,
            private_tmp: false,
            ipc_namespace: false,
            cgroup_namespace: false,
            private_home: false,
            landlock_abi: 0,
            writable: vec![PathBuf::from("/srv")],
            args: vec!["-l".into()],
            max_processes: Some(100),
            ..sample()
        };
        assert_eq!(
            args.to_args(),
            os(&[
                "--uid",
                "65534",
                "--gid",
                "65533",
                "--max-processes",
                "100",
                "--mount-namespace",
                "--network-none",
                "--seccomp",
                "--writable",
                "/srv",
                "--",
                "/usr/bin/env",
                "env",
                "-l"
            ])
        );
    }

    #[test]
    fn init_args_non_utf8_program_round_trips() {
        use std::os::unix::ffi::OsStringExt;
        let args = InitArgs {
            program: PathBuf::from(OsString::from_vec(b"/opt/\xff\xfe/run".to_vec())),
            ..sample()
        };
        assert_eq!(InitArgs::parse(args.to_args()).unwrap(), args);
    }

    // RLIMIT_NPROC 0 would refuse the program's own exec; it is never asked.
    #[test]
    fn init_args_rejects_zero_max_processes() {
        let err = InitArgs::parse(os(&[
            "--uid",
            "1",
            "--gid",
            "1",
            "--max-processes",
            "0",
            "--",
            "/bin/sh",
            "sh",
        ]));
        assert!(matches!(err, Err(InitError::Usage(_))), "{err:?}");
    }

    // A relative program would be resolved against whatever cwd the init has.
    #[test]
    fn init_args_rejects_relative_program() {
        let err = InitArgs::parse(os(&["--uid", "1", "--gid", "1", "--", "bin/sh", "sh"]));
        assert!(
            matches!(err, Err(InitError::RelativeProgram { program }) if program == std::path::Path::new("bin/sh"))
        );
    }

    // Without a mount namespace, mounting /proc or /tmp would change the host.
    #[test]
    fn init_args_rejects_mounts_without_mount_namespace() {
        for flag in [
            "--mount-proc",
            "--private-tmp",
            "--cgroup-namespace",
            "--private-home",
        ] {
            let err = InitArgs::parse(os(&[
                "--uid",
                "1",
                "--gid",
                "1",
                flag,
                "--",
                "/bin/true",
                "true",
            ]));
            assert!(
                matches!(err, Err(InitError::NeedsMountNamespace { option }) if flag.ends_with(option)),
                "{flag}: {err:?}"
            );
        }
    }

    #[test]
    fn init_args_rejects_malformed_command_lines() {
        let cases: &[&[&str]] = &[
            &[],
            &["--gid", "1", "--", "/bin/true", "true"],
            &["--uid", "1", "--", "/bin/true", "true"],
            &["--uid", "-1", "--gid", "1", "--", "/bin/true", "true"],
            &["--uid", "x", "--gid", "1", "--", "/bin/true", "true"],
            &[
                "--uid",
                "4294967296",
                "--gid",
                "1",
                "--",
                "/bin/true",
                "true",
            ],
            &[
                "--uid",
                "1",
                "--uid",
                "2",
                "--gid",
                "1",
                "--",
                "/bin/true",
                "true",
            ],
            &[
                "--uid",
                "1",
                "--gid",
                "1",
                "--network-none",
                "--network-none",
                "--",
                "/bin/true",
                "t",
            ],
            &[
                "--uid",
                "1",
                "--gid",
                "1",
                "--bogus",
                "--",
                "/bin/true",
                "true",
            ],
            &["--uid", "1", "--gid", "1", "--", "/bin/true"],
            &["--uid", "1", "--gid", "1"],
            &["--uid", "1", "--gid", "1", "/bin/true", "true", "-x"],
            &[
                "--uid",
                "1",
                "--gid",
                "1",
                "--help",
                "--",
                "/bin/true",
                "true",
            ],
        ];
        for case in cases {
            let err = InitArgs::parse(os(case));
            assert!(matches!(err, Err(InitError::Usage(_))), "{case:?}: {err:?}");
        }
    }

    #[test]
    fn init_args_rejects_non_utf8_and_nul_arguments() {
        use std::os::unix::ffi::OsStringExt;
        let mut bad = os(&["--uid", "1", "--gid", "1", "--", "/bin/echo", "echo"]);
        bad.push(OsString::from_vec(b"\xff".to_vec()));
        assert!(matches!(InitArgs::parse(bad), Err(InitError::Usage(_))));

        let nul = InitArgs {
            args: vec!["a\0b".into()],
            ..sample()
        };
        assert!(matches!(
            InitArgs::parse(nul.to_args()),
            Err(InitError::NulByte)
        ));
    }

    #[test]
    fn usage_error_is_one_line() {
        let err = InitArgs::parse(os(&["--bogus"])).unwrap_err().to_string();
        assert!(err.starts_with("invalid jobs-init command line: "), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    fn every_report() -> Vec<Report> {
        let mut all = vec![
            Report::Started,
            Report::ExecFailed {
                errno: libc::ENOENT,
            },
            Report::ExecFailed { errno: i32::MAX },
            Report::Exited(0),
            Report::Exited(3),
            Report::Exited(255),
            Report::Exited(-1),
            Report::Signaled {
                signal: 11,
                core_dumped: true,
            },
            Report::Signaled {
                signal: 15,
                core_dumped: false,
            },
            Report::Signaled {
                signal: 64,
                core_dumped: false,
            },
        ];
        for step in SetupStep::ALL {
            all.push(Report::SetupFailed {
                step,
                errno: libc::EPERM,
            });
        }
        all
    }

    #[test]
    fn report_round_trips_every_variant() {
        for report in every_report() {
            assert_eq!(Report::decode(&report.encode()).unwrap(), report);
        }
    }

    #[test]
    fn report_encoding_is_exact() {
        assert_eq!(Report::Started.encode(), [1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            Report::ExecFailed { errno: 2 }.encode(),
            [2, 0, 0, 0, 2, 0, 0, 0]
        );
        assert_eq!(
            Report::SetupFailed {
                step: SetupStep::Uid,
                errno: 1
            }
            .encode(),
            [3, 12, 0, 0, 1, 0, 0, 0]
        );
        assert_eq!(Report::Exited(258).encode(), [4, 0, 0, 0, 2, 1, 0, 0]);
        assert_eq!(
            Report::Signaled {
                signal: 9,
                core_dumped: true
            }
            .encode(),
            [5, 1, 0, 0, 9, 0, 0, 0]
        );
    }

    #[test]
    fn setup_step_codes_are_distinct_and_nonzero() {
        let codes: std::collections::BTreeSet<u8> =
            SetupStep::ALL.iter().map(|s| s.code()).collect();
        assert_eq!(codes.len(), SetupStep::ALL.len());
        assert!(!codes.contains(&0));
        assert_eq!(SetupStep::from_code(0), None);
        assert_eq!(SetupStep::from_code(22), None);
    }

    // Bytes that are not a record the init writes (a torn or garbled pipe, a
    // wrong spawner) are refused, never read as some report.
    #[test]
    fn report_rejects_garbage() {
        let garbage: &[[u8; Report::LEN]] = &[
            [0; 8],
            [0xff; 8],
            [6, 0, 0, 0, 0, 0, 0, 0],
            [1, 0, 0, 0, 1, 0, 0, 0],
            [1, 1, 0, 0, 0, 0, 0, 0],
            [2, 1, 0, 0, 2, 0, 0, 0],
            [3, 0, 0, 0, 1, 0, 0, 0],
            [3, 22, 0, 0, 1, 0, 0, 0],
            [4, 0, 1, 0, 0, 0, 0, 0],
            [4, 0, 0, 1, 0, 0, 0, 0],
            [4, 2, 0, 0, 0, 0, 0, 0],
            [5, 2, 0, 0, 9, 0, 0, 0],
            *b"Started!",
        ];
        for bytes in garbage {
            assert!(
                matches!(Report::decode(bytes), Err(InitError::BadRecord { record }) if record == *bytes),
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn report_decoding_accepts_only_what_encode_makes() {
        // Exhaustive over kind and aux bytes with a fixed value: whatever
        // decodes must re-encode to the same bytes.
        for kind in 0..=u8::MAX {
            for aux in 0..=u8::MAX {
                for value in [0i32, 7] {
                    let v = value.to_le_bytes();
                    let bytes = [kind, aux, 0, 0, v[0], v[1], v[2], v[3]];
                    if let Ok(report) = Report::decode(&bytes) {
                        assert_eq!(report.encode(), bytes);
                    }
                }
            }
        }
    }
}

//! Contained jobs: a cgroup, namespaces and an unprivileged account each.
//!
//! # Starting a job
//! 1. The job's cgroup is created with its limits ([`crate::cgroup`]).
//! 2. `jobs-init` is forked — from a short-lived thread that first unshared
//!    the PID namespace, so the child is PID 1 of a new one — and, between
//!    fork and exec, writes its own pid into every `cgroup.procs` of the
//!    job's group. If that fails, the spawn fails and nothing ran: there is no
//!    moment in which the job or its first children run outside the group.
//! 3. `jobs-init` sets up the cgroup, mount, IPC and network namespaces,
//!    empties its capability sets, drops to the job's account, applies the
//!    kernel sandbox of [`ContainConfig::sandbox`] (Landlock, then seccomp;
//!    with the launch's permits), executes the program and reports on the
//!    status pipe
//!    whether the exec succeeded; only then does the start succeed. A program
//!    that cannot be executed (missing, no permission, not a format the
//!    kernel runs) is a start error, and the group is removed.
//!
//! # Ending a job
//! Stop sends SIGTERM and SIGCONT to the init, which forwards them to every
//! process of the job; the grace-period kill and the end-of-job kill go to the
//! whole cgroup (`cgroup.kill`, or freeze-kill-thaw on v1 only), so processes
//! that called `setsid`, double-forked or were forked during the stop die too.
//! [`crate::job::Process::finish`] returns only once the cgroup is empty, then
//! reads its counters and removes it.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio::io::unix::AsyncFd;

use super::{JOB_CWD, JOB_PATH, group::exit_info, pipe, resolve, spawn_error, sys};
use crate::cgroup::{self, CgroupError, Cgroups, JobCgroup, Layout};
use crate::job::{
    Account, BoxFuture, Capabilities, Ended, ExitInfo, JobSignal, Launch, Meter, Process,
    ResourceLimits, ResourceUsage, SpawnError, Spawned,
};
use crate::sandbox::{BindHook, InitArgs, PRIVATE_HOME, Report, SandboxPlan};

/// How long `jobs-init` may take to set up and execute the program before the
/// start is abandoned. Setup is a few system calls and one exec (milliseconds);
/// this only bounds a hung mount or an overloaded machine.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`Process::finish`] waits for the cgroup to empty after killing
/// it. SIGKILL is not interruptible, so only a process stuck in the kernel
/// (uninterruptible sleep on a dead NFS server, say) takes longer; the job is
/// then reported final anyway and its group left for the next start-up.
pub const EMPTY_TIMEOUT: Duration = Duration::from_secs(10);

/// Which namespaces each job gets. The defaults are the secure ones: a private
/// PID namespace and a private mount namespace; the network is shared with
/// the host unless set to [`Network::None`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Namespaces {
    /// A private PID namespace (pid_namespaces(7)): the job sees only its own
    /// processes, `jobs-init` is its PID 1 and reaps every orphan, and no
    /// process of the job can signal anything outside it.
    pub pid: bool,
    /// A private mount namespace (mount_namespaces(7)) with its own empty
    /// tmpfs on `/tmp`, `/var/tmp`, `/dev/shm` and `/run/lock`, so jobs of
    /// different users share no scratch space. (With `pid` on, a job gets a
    /// mount namespace for its own `/proc` either way.)
    pub mount: bool,
    /// The job's network.
    pub network: Network,
}

impl Default for Namespaces {
    fn default() -> Self {
        Self {
            pid: true,
            mount: true,
            network: Network::Host,
        }
    }
}

/// A job's network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Network {
    /// The host's network (no network namespace).
    Host,
    /// A private network namespace with only a loopback interface
    /// (network_namespaces(7)): the job can reach nothing outside itself.
    None,
}

/// A block device IO limits apply to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IoDevice {
    /// The device node, e.g. `/dev/vda`.
    pub path: PathBuf,
    /// Its major number.
    pub major: u32,
    /// Its minor number.
    pub minor: u32,
}

impl IoDevice {
    /// The block device at `path` (stat(2) of the node).
    ///
    /// # Errors
    /// [`ContainError::IoDevice`] if it cannot be read or is not a block
    /// device.
    pub fn from_path(path: &Path) -> Result<Self, ContainError> {
        let meta = std::fs::metadata(path).map_err(|source| ContainError::IoDevice {
            path: path.to_owned(),
            source,
        })?;
        if !meta.file_type().is_block_device() {
            return Err(ContainError::IoDevice {
                path: path.to_owned(),
                source: io::Error::other("not a block device"),
            });
        }
        let rdev = meta.rdev();
        Ok(Self {
            path: path.to_owned(),
            major: nix::sys::stat::major(rdev) as u32,
            minor: nix::sys::stat::minor(rdev) as u32,
        })
    }
}

/// How a contained executor runs jobs.
#[derive(Clone, Debug)]
pub struct ContainConfig {
    /// The `jobs-init` program (installed next to `jobsd`).
    pub init: PathBuf,
    /// The account jobs run as unless the engine names another one
    /// ([`crate::job::Launch::account`]); `None`: the engine names one for every job
    /// (each identity has its own, see [`crate::accounts`]), and a job it
    /// names none for is refused.
    pub account: Option<Account>,
    /// The namespaces every job gets.
    pub namespaces: Namespaces,
    /// Devices that IO limits apply to; none means IO cannot be limited.
    pub io_devices: Vec<IoDevice>,
    /// The name of the daemon's cgroup subtree, one path component; see
    /// [`cgroup_name_for`].
    pub cgroup_name: String,
    /// The kernel sandbox every job gets (seccomp, Landlock, cgroup
    /// namespace), as decided at start-up.
    pub sandbox: SandboxPlan,
}

/// The cgroup subtree name for the daemon using `state_dir`: `jobsd-` and 16
/// hex digits of the SHA-256 of the directory's device and inode numbers and
/// its birth time (statx(2)), so that every path to one directory (symlinks,
/// `..`, trailing slashes, bind mounts) gives one name; of its path as given
/// if it cannot be stat'ed. A state directory is locked by one daemon at a
/// time, so the subtree is that daemon's alone, and a daemon restarted on the
/// same state directory finds what its predecessor left. The birth time
/// keeps a new directory that reuses a removed one's inode (ext4 hands the
/// number out again at once) from naming, and so reclaiming, the subtree a
/// daemon on the removed directory may still use; filesystems without birth
/// times name by device and inode alone.
pub fn cgroup_name_for(state_dir: &Path) -> String {
    let digest = match std::fs::metadata(state_dir) {
        Ok(meta) => {
            let born = meta
                .created()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(String::new(), |d| {
                    format!(":{}.{:09}", d.as_secs(), d.subsec_nanos())
                });
            Sha256::digest(format!("{}:{}{born}", meta.dev(), meta.ino()))
        }
        Err(_) => Sha256::digest(state_dir.as_os_str().as_encoded_bytes()),
    };
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("jobsd-{hex}")
}

/// Why jobs cannot be contained.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContainError {
    /// Containment needs root (cgroups, namespaces, changing user).
    #[error("containment needs root; jobsd runs as uid {uid}")]
    NotRoot {
        /// The daemon's effective uid.
        uid: u32,
    },
    /// The cgroup hierarchy cannot be used.
    #[error("cannot use cgroups")]
    Cgroup(#[from] CgroupError),
    /// The init program is missing or not executable.
    #[error("cannot use the job init program {}", path.display())]
    Init {
        /// Where it was looked for.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: io::Error,
    },
    /// The bind hook the sandbox plan asks for cannot be loaded.
    #[error("cannot load the bind hook (cgroup BPF programs)")]
    BindHook(#[source] io::Error),
    /// An IO device is not usable.
    #[error("cannot use {} for IO limits", path.display())]
    IoDevice {
        /// The path given.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: io::Error,
    },
}

/// The contained executor's state.
pub(super) struct Containment {
    config: ContainConfig,
    /// Whether the host has a `/home` for private homes to cover.
    home_root: bool,
    /// The daemon's subtree; `None` once closed.
    cgroups: RwLock<Option<Cgroups>>,
    /// Loaded when the plan has the bind hook.
    bind_hook: Option<BindHook>,
}

impl Drop for Containment {
    fn drop(&mut self) {
        // The executor went away without `close` (the runtime was dropped
        // mid-shutdown, say): remove the subtree all the same.
        self.close();
    }
}

impl Containment {
    pub(super) fn new(config: ContainConfig) -> Result<Self, ContainError> {
        let uid = nix::unistd::geteuid();
        if !uid.is_root() {
            return Err(ContainError::NotRoot { uid: uid.as_raw() });
        }
        check_init(&config.init)?;
        let layout = Layout::detect()?;
        tracing::info!(%layout, "cgroup layout");
        let bind_hook = if config.sandbox.bind_hook {
            Some(BindHook::load().map_err(ContainError::BindHook)?)
        } else {
            None
        };
        let cgroups = Cgroups::open(layout, &config.cgroup_name)?;
        tracing::info!(
            shared_account = config.account.as_ref().map_or("none", |a| a.name.as_str()),
            namespaces = ?config.namespaces,
            sandbox = ?config.sandbox,
            io_devices = ?config.io_devices.iter().map(|d| d.path.display().to_string()).collect::<Vec<_>>(),
            "jobs are contained"
        );
        Ok(Self {
            config,
            home_root: Path::new("/home").is_dir(),
            cgroups: RwLock::new(Some(cgroups)),
            bind_hook,
        })
    }

    pub(super) fn capabilities(&self) -> Capabilities {
        Capabilities {
            limits: true,
            io_limits: !self.config.io_devices.is_empty(),
            accounts: true,
            no_pids_limit: false,
            no_owner_limits: false,
        }
    }

    pub(super) fn close(&self) {
        let cgroups = self
            .cgroups
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(cgroups) = cgroups
            && let Err(e) = cgroups.close()
        {
            tracing::warn!(error = %e, "cannot remove the daemon's cgroup subtree");
        }
    }

    /// The job's group, `<subtree>/<owner>/<job>`, beneath its owner's
    /// group (equal CPU share between owners, the owner's limits).
    /// Creates the job's cgroup, attaches the bind hook to it unless
    /// `allow_listen`, and forks `cmd` into it (PID 1 of a new PID namespace
    /// when `new_pid_ns`). Blocking: call it through [`sys::off_worker`].
    /// Returns what it created (`None` when it created nothing) and the
    /// read end of the status pipe, or why it stopped; on an error the caller
    /// cleans up what was created.
    fn make(
        &self,
        launch: &Launch<'_>,
        allow_listen: bool,
        new_pid_ns: bool,
        cmd: &mut Command,
        phases: &mut Vec<(&'static str, Duration)>,
    ) -> (Option<Starting>, Result<OwnedFd, SpawnError>) {
        let t = std::time::Instant::now();
        let cgroup = match self.create_cgroup(launch) {
            Ok(cgroup) => cgroup,
            Err(e) => return (None, Err(e)),
        };
        // From here on every failure must leave nothing behind.
        let mut starting = Starting {
            cgroup: Some(Arc::new(cgroup)),
            child: None,
        };
        let made = (|| {
            if let (Some(hook), false) = (&self.bind_hook, allow_listen) {
                match starting.cgroup().unified_dir() {
                    Some(dir) => hook.attach(dir),
                    None => Err(io::Error::other("the job's cgroup has no cgroup2 group")),
                }
                .map_err(|source| SpawnError::Containment {
                    what: "cannot attach the bind hook to the job's cgroup".into(),
                    source,
                })?;
            }
            phases.push(("cgroup", t.elapsed()));
            let t = std::time::Instant::now();
            let (status_rx, status_tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                .map_err(|e| SpawnError::Os(e.into()))?;
            let procs: Vec<i32> = starting
                .cgroup()
                .procs_files()
                .iter()
                .map(|f| f.as_raw_fd())
                .collect();
            sys::enter_cgroup_before_exec(cmd, procs, status_tx.as_raw_fd());
            let spawned = if new_pid_ns {
                spawn_in_new_pid_namespace(cmd)
            } else {
                cmd.spawn()
            };
            // The child has its copy (or failed); ours must go so that the
            // status pipe reaches EOF when the init exits.
            drop(status_tx);
            let child = spawned.map_err(|e| SpawnError::Containment {
                what: "cannot start jobs-init in the job's cgroup".into(),
                source: e,
            })?;
            starting.child = Some(child);
            // Until jobs-init runs, in every group: the move into a v1 group
            // waits for an RCU grace period unless the kernel favours
            // dynamic cgroup changes (`favordynmods`).
            phases.push(("fork", t.elapsed()));
            Ok(status_rx)
        })();
        (Some(starting), made)
    }

    fn create_cgroup(&self, launch: &Launch<'_>) -> Result<JobCgroup, SpawnError> {
        let guard = self.cgroups.read().unwrap_or_else(|p| p.into_inner());
        let cgroups = guard.as_ref().ok_or_else(|| SpawnError::Containment {
            what: "the executor is closed".into(),
            source: io::Error::other("closed"),
        })?;
        let owner_limits = cgroup::Limits {
            io: Vec::new(),
            ..self.cgroup_limits(launch.owner_limits)
        };
        cgroups
            .create_for(
                launch.owner,
                &owner_limits,
                launch.name,
                &self.cgroup_limits(launch.limits),
            )
            .map_err(|e| SpawnError::Containment {
                what: "cannot create the job's cgroup".into(),
                source: io::Error::other(e),
            })
    }

    fn cgroup_limits(&self, l: &ResourceLimits) -> cgroup::Limits {
        let io = if l.has_io() {
            self.config
                .io_devices
                .iter()
                .map(|d| cgroup::IoLimit {
                    major: d.major,
                    minor: d.minor,
                    read_bps: l.io_read_bps,
                    write_bps: l.io_write_bps,
                })
                .collect()
        } else {
            Vec::new()
        };
        cgroup::Limits {
            memory_bytes: l.memory_bytes,
            cpu_millis: l.cpu_millis,
            pids: l.pids,
            io,
        }
    }

    pub(super) async fn spawn(&self, launch: Launch<'_>) -> Result<Spawned, SpawnError> {
        let program = launch.spec.program();
        // An absolute path is checked only by the exec itself, as the job's
        // account: checking it here, as root, would tell any user whether a
        // file exists in directories only root can read. Bare names are looked
        // up in JOB_PATH, which every account can read.
        let path = if program.starts_with('/') {
            PathBuf::from(program)
        } else {
            resolve(program)?
        };
        let account = launch
            .account
            .or(self.config.account.as_ref())
            .ok_or_else(|| SpawnError::Containment {
                what: "no account to run the job as".into(),
                source: io::Error::other("the engine named none and there is no default"),
            })?;
        let ns = self.config.namespaces;
        let permits = launch.permits;
        // In a network namespace of its own a job's ports reach nobody
        // else, so only the host network needs the listen permit.
        let allow_listen = permits.listen || ns.network == Network::None;
        let sandbox = &self.config.sandbox;
        let mount_namespace = ns.mount || ns.pid;
        // A private home needs the mount namespace and a /home to cover;
        // without /home such a job's home is its private /tmp.
        let private_home = account.private_home && mount_namespace && self.home_root;
        let home = if private_home {
            Path::new(PRIVATE_HOME)
        } else if account.private_home {
            Path::new("/tmp")
        } else {
            account.home.as_path()
        };
        if permits.user_namespaces || permits.listen {
            tracing::info!(
                job = launch.name,
                owner = launch.owner,
                user_namespaces = permits.user_namespaces,
                listen = permits.listen,
                "job starts with sandbox permits: user_namespaces lets the seccomp filter allow unshare, setns, clone with namespace flags and mounts; listen lets Landlock and the bind hook allow binding ports"
            );
        }
        let args = InitArgs {
            uid: account.uid,
            gid: account.gid,
            // Only for a uid that is this identity's alone: the kernel counts
            // RLIMIT_NPROC per uid, so on an account shared between identities
            // one of them would use up the others' count.
            max_processes: launch
                .owner_limits
                .pids
                .map(u64::from)
                .filter(|_| account.private_home),
            // A private PID namespace needs its own /proc (the host's would
            // show, and let the job read, every process), so it brings a
            // mount namespace even when the scratch places are shared.
            mount_namespace,
            mount_proc: ns.pid,
            private_tmp: ns.mount,
            network_none: ns.network == Network::None,
            // Always: nothing a job may do needs the host's System V IPC.
            ipc_namespace: true,
            cgroup_namespace: sandbox.cgroup_namespace && mount_namespace,
            private_home,
            seccomp: sandbox.seccomp,
            allow_namespaces: permits.user_namespaces,
            landlock_abi: sandbox.landlock_abi,
            allow_listen,
            // Under a private home the host's /home is hidden: a shared
            // directory there cannot be reached, and is left out.
            writable: sandbox
                .writable
                .iter()
                .filter(|d| !(private_home && d.starts_with("/home")))
                .cloned()
                .collect(),
            program: path,
            argv0: program.to_owned(),
            args: launch.spec.args().to_vec(),
        };
        let mut cmd = Command::new(&self.config.init);
        cmd.args(args.to_args())
            .env_clear()
            .env("PATH", JOB_PATH)
            .env("HOME", home)
            .env("LANG", "C.UTF-8")
            .current_dir(JOB_CWD)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Its own session: no controlling terminal, so nothing of the job
        // can reach jobsd's terminal (or be reached by a Ctrl-C there).
        sys::new_session(&mut cmd);
        // Creating the groups (cgroupfs writes), attaching the bind hook and
        // the fork wait for the kernel (moving the child into a v1 group
        // waits for an RCU grace period): off the runtime's worker.
        let mut phases = Vec::with_capacity(3);
        let (starting, made) =
            sys::off_worker(|| self.make(&launch, allow_listen, ns.pid, &mut cmd, &mut phases));
        let Some(mut starting) = starting else {
            // Nothing was created.
            return Err(made.expect_err("no group only on failure"));
        };
        let status_rx = match made {
            Ok(status_rx) => status_rx,
            Err(e) => {
                starting.clean_up().await;
                return Err(e);
            }
        };
        let child = starting.child.as_mut().expect("spawned when made");
        let setup = (|| -> io::Result<_> {
            let pidfd = sys::async_pidfd(sys::pidfd_open(child.id())?)?;
            let stdout = pipe(child.stdout.take())?;
            let stderr = pipe(child.stderr.take())?;
            let status = tokio::net::unix::pipe::Receiver::from_owned_fd(status_rx)?;
            Ok((pidfd, stdout, stderr, status))
        })();
        let (pidfd, stdout, stderr, mut status) = match setup {
            Ok(s) => s,
            Err(e) => {
                starting.clean_up().await;
                return Err(SpawnError::Os(e));
            }
        };
        let t = std::time::Instant::now();
        let first = tokio::time::timeout(SETUP_TIMEOUT, read_report(&mut status)).await;
        // jobs-init's namespaces, mounts, account, sandbox and the exec.
        phases.push(("init", t.elapsed()));
        let failure = match first {
            Ok(Ok(Some(Report::Started))) => None,
            Ok(Ok(Some(Report::ExecFailed { errno }))) => {
                Some(spawn_error(program, io::Error::from_raw_os_error(errno)))
            }
            Ok(Ok(Some(Report::SetupFailed { step, errno }))) => Some(SpawnError::Containment {
                what: format!("jobs-init failed at {step:?}"),
                source: io::Error::from_raw_os_error(errno),
            }),
            Ok(Ok(Some(other))) => Some(SpawnError::Containment {
                what: format!("jobs-init reported {other:?} before starting the program"),
                source: io::Error::other("protocol"),
            }),
            Ok(Ok(None)) => Some(SpawnError::Containment {
                what: "jobs-init ended before starting the program".into(),
                source: io::Error::from(io::ErrorKind::UnexpectedEof),
            }),
            Ok(Err(e)) => Some(SpawnError::Containment {
                what: "cannot read jobs-init's status pipe".into(),
                source: e,
            }),
            Err(_) => Some(SpawnError::Containment {
                what: format!("jobs-init did not start the program within {SETUP_TIMEOUT:?}"),
                source: io::Error::from(io::ErrorKind::TimedOut),
            }),
        };
        if let Some(e) = failure {
            let e = at_identity_cap(e, starting.cgroup(), launch.owner_limits.pids);
            starting.clean_up().await;
            return Err(e);
        }
        let (cgroup, child) = starting.disarm();
        let meter: Arc<dyn Meter> = Arc::new(CgroupMeter(Arc::downgrade(&cgroup)));
        Ok(Spawned {
            process: Box::new(ContainedProcess {
                child: Some(child),
                pidfd,
                status,
                cgroup: Some(cgroup),
            }),
            stdout: Box::pin(stdout),
            stderr: Box::pin(stderr),
            meter: Some(meter),
            cluster_job_id: None,
            drain_until_eof: false,
            // A dead daemon's whole subtree is killed and removed when the
            // next one opens it (`Containment::new`).
            recovery: None,
            phases,
        })
    }
}

/// Checks that `path` is an executable regular file.
fn check_init(path: &Path) -> Result<(), ContainError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source| ContainError::Init {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(err)?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(err(io::Error::other("not an executable file")));
    }
    Ok(())
}

/// Forks `cmd` from a fresh thread that first unshared its PID namespace, so
/// the child is PID 1 of a new namespace (unshare(2): CLONE_NEWPID applies to
/// the caller's later children, and namespaces are per thread). The daemon's
/// other threads are unaffected and the thread ends right after the fork.
///
/// # Errors
/// The OS error of creating the thread (EAGAIN when the daemon is at its
/// process or thread limit), of unshare(2), or of the spawn.
fn spawn_in_new_pid_namespace(cmd: &mut Command) -> io::Result<Child> {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("jobs-spawn".into())
            .spawn_scoped(scope, || {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID)?;
                cmd.spawn()
            })?
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the spawning thread panicked")))
    })
}

/// `e`, or [`SpawnError::IdentityProcessCap`] when it is a refused fork or
/// exec (EAGAIN: the init's fork over the identity group's `pids.max`, or
/// the program's exec over `RLIMIT_NPROC`) and the identity's group is at
/// its cap. Other EAGAINs (jobsd's own cgroup, the kernel's `pid_max`)
/// stay what they are.
fn at_identity_cap(e: SpawnError, cgroup: &JobCgroup, cap: Option<u32>) -> SpawnError {
    let eagain = match &e {
        SpawnError::Os(source) | SpawnError::Containment { source, .. } => {
            source.raw_os_error() == Some(libc::EAGAIN)
        }
        _ => false,
    };
    let Some(max) = cap.filter(|_| eagain) else {
        return e;
    };
    // The failed start's own init is counted: at the cap its fork was
    // refused, and past it the program's exec (the uid's count, without the
    // inits, over the cap). Below it the EAGAIN came from elsewhere, e.g.
    // another daemon's jobs on the same uid.
    match cgroup.identity_pids() {
        Ok(Some(current)) if current >= u64::from(max) => SpawnError::IdentityProcessCap { max },
        _ => e,
    }
}

/// Reads one report from the status pipe; `None` at EOF.
///
/// Cancel safe only between reports: dropping it mid-record loses the part
/// read. Records are written with one write(2) of [`Report::LEN`] bytes, far
/// below PIPE_BUF, so they arrive whole.
async fn read_report(pipe: &mut tokio::net::unix::pipe::Receiver) -> io::Result<Option<Report>> {
    let mut buf = [0u8; Report::LEN];
    let mut got = 0;
    while got < buf.len() {
        let n = pipe.read(&mut buf[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(io::Error::from(io::ErrorKind::UnexpectedEof))
            };
        }
        got += n;
    }
    Report::decode(&buf).map(Some).map_err(io::Error::other)
}

/// A job between fork and a confirmed exec. Dropping it kills and reaps
/// whatever was started and removes the cgroup.
struct Starting {
    cgroup: Option<Arc<JobCgroup>>,
    child: Option<Child>,
}

impl Starting {
    fn cgroup(&self) -> &JobCgroup {
        // Set at construction and only taken by `disarm`, which consumes self.
        self.cgroup.as_ref().expect("cgroup present until disarmed")
    }

    fn disarm(mut self) -> (Arc<JobCgroup>, Child) {
        let cgroup = self.cgroup.take().expect("cgroup present until disarmed");
        let child = self.child.take().expect("child present once spawned");
        (cgroup, child)
    }

    /// Kills everything, waits until the group is empty, reaps, removes.
    async fn clean_up(mut self) {
        if let Some(cgroup) = self.cgroup.take() {
            if let Some(mut child) = self.child.take() {
                end_group(&cgroup, &mut child).await;
            }
            // rmdirs, and on a busy group a wait for its last reference.
            sys::off_worker(|| remove_group(cgroup));
        }
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        if let Some(cgroup) = self.cgroup.take() {
            kill_sync(&cgroup, self.child.take());
            remove_group(cgroup);
        }
    }
}

/// Kills the group, waits (bounded) until it is empty, and reaps `child`.
async fn end_group(cgroup: &JobCgroup, child: &mut Child) -> Option<std::process::ExitStatus> {
    // cgroupfs writes; on pure v1 a freeze that is waited for.
    if let Err(e) = sys::off_worker(|| cgroup.kill()) {
        tracing::error!(error = %e, "cannot kill the job's cgroup");
        // Still take the init down; without the group kill others may stay.
        let _ = child.kill();
    }
    match tokio::time::timeout(EMPTY_TIMEOUT, cgroup.wait_empty()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "cannot wait for the job's cgroup to empty"),
        Err(_) => tracing::error!(
            timeout = ?EMPTY_TIMEOUT,
            paths = ?cgroup.paths(),
            "processes of the job are still alive after SIGKILL"
        ),
    }
    // The init is dead (its group was killed, or it had exited), so this
    // wait returns at once, unless the group did not empty in time.
    match sys::off_worker(|| child.wait()) {
        Ok(status) => Some(status),
        Err(e) => {
            tracing::error!(error = %e, "cannot reap jobs-init");
            None
        }
    }
}

/// Synchronous last resort for `Drop`: kill the group and the init, reap it.
fn kill_sync(cgroup: &JobCgroup, child: Option<Child>) {
    let _ = cgroup.kill();
    if let Some(mut child) = child {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Removes the job's group; logs failure (a daemon starting on the same state
/// directory removes leftovers). The group is shared only with the job's
/// [`CgroupMeter`], which holds it for the few microseconds of reading its
/// counters, so waiting for sole ownership is short.
fn remove_group(mut cgroup: Arc<JobCgroup>) {
    for _ in 0..10_000 {
        match Arc::try_unwrap(cgroup) {
            Ok(cgroup) => {
                let paths = cgroup.paths();
                if let Err(e) = cgroup.remove() {
                    tracing::warn!(error = %e, ?paths, "cannot remove the job's cgroup");
                }
                return;
            }
            Err(shared) => {
                cgroup = shared;
                std::thread::yield_now();
            }
        }
    }
    tracing::warn!(paths = ?cgroup.paths(), "job cgroup still in use; not removed");
}

/// A running contained job.
struct ContainedProcess {
    /// `jobs-init`; `None` once reaped.
    child: Option<Child>,
    /// Readable once `jobs-init` has exited.
    pidfd: AsyncFd<OwnedFd>,
    /// Reports from `jobs-init` after [`Report::Started`].
    status: tokio::net::unix::pipe::Receiver,
    /// The job's group; `None` once removed.
    cgroup: Option<Arc<JobCgroup>>,
}

impl Process for ContainedProcess {
    fn exited(&mut self) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(async move {
            let _guard = self.pidfd.readable().await?;
            Ok(())
        })
    }

    fn signal(&mut self, signal: JobSignal) -> io::Result<()> {
        let Some(child) = &self.child else {
            return Ok(());
        };
        // Unreaped, so the pid is still the init's.
        let init = Pid::from_raw(child.id() as i32);
        let signal = match signal {
            JobSignal::Terminate => Signal::SIGTERM,
            JobSignal::Continue => Signal::SIGCONT,
            JobSignal::Kill => {
                return match &self.cgroup {
                    Some(cgroup) => cgroup.kill().map_err(io::Error::other),
                    None => Ok(()),
                };
            }
        };
        // The init forwards it to every process of the job.
        match kill(init, signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn finish(&mut self) -> BoxFuture<'_, io::Result<Ended>> {
        Box::pin(async move {
            // The init wrote how the program ended before it exited; the pipe
            // is at EOF now, so this does not wait (bounded all the same).
            let report =
                match tokio::time::timeout(Duration::from_secs(1), read_report(&mut self.status))
                    .await
                {
                    Ok(Ok(report)) => report,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "cannot read the job's final report");
                        None
                    }
                    Err(_) => None,
                };
            let cgroup = self
                .cgroup
                .take()
                .ok_or_else(|| io::Error::other("job already finished"))?;
            let mut child = self
                .child
                .take()
                .ok_or_else(|| io::Error::other("job already reaped"))?;
            let status = end_group(&cgroup, &mut child).await;
            // Reading the counters and removing the groups (fourteen rmdirs
            // when the identity's group goes too) are cgroupfs calls.
            let usage = sys::off_worker(|| {
                let usage = match cgroup.usage() {
                    Ok(u) => Some(ResourceUsage {
                        peak_memory_bytes: u.peak_memory_bytes,
                        cpu_usec: u.cpu_usec,
                        oom_kills: u.oom_kills,
                    }),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the job's resource usage");
                        None
                    }
                };
                remove_group(cgroup);
                usage
            });
            let exit = match report {
                Some(Report::Exited(code)) => ExitInfo::Exited(code),
                Some(Report::Signaled {
                    signal,
                    core_dumped,
                }) => ExitInfo::Signaled {
                    signal,
                    core_dumped,
                },
                // No report: the init itself was killed (the grace-period kill
                // of a stop, or something killed it): that is how it ended.
                _ => match status {
                    Some(status) => exit_info(status)?,
                    None => return Err(io::Error::other("cannot reap jobs-init")),
                },
            };
            Ok(Ended { exit, usage })
        })
    }
}

impl Drop for ContainedProcess {
    fn drop(&mut self) {
        // Dropped without finishing (the supervisor was cancelled).
        if let Some(cgroup) = self.cgroup.take() {
            kill_sync(&cgroup, self.child.take());
            remove_group(cgroup);
        }
    }
}

/// Live usage of a running job, from its cgroup.
struct CgroupMeter(Weak<JobCgroup>);

impl Meter for CgroupMeter {
    fn usage(&self) -> Option<ResourceUsage> {
        let u = self.0.upgrade()?.usage().ok()?;
        Some(ResourceUsage {
            peak_memory_bytes: u.peak_memory_bytes,
            cpu_usec: u.cpu_usec,
            oom_kills: u.oom_kills,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_a_state_directory_names_one_subtree() {
        // Scenario: jobsd is restarted with `--state-dir /x/state/` after
        // `/x/state`; it must find its predecessor's jobs.
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        let name = cgroup_name_for(&state);
        assert!(name.starts_with("jobsd-") && name.len() == 6 + 16, "{name}");
        let mut slash = state.clone().into_os_string();
        slash.push("/");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&state, &link).unwrap();
        for other in [
            PathBuf::from(slash),
            state.join("..").join("state"),
            state.join("."),
            link,
        ] {
            assert_eq!(cgroup_name_for(&other), name, "{}", other.display());
        }
        if nix::unistd::geteuid().is_root() {
            // A bind mount of the state directory is the same directory.
            use nix::mount::{MsFlags, mount, umount};
            let bind = dir.path().join("bind");
            std::fs::create_dir(&bind).unwrap();
            mount(
                Some(&state),
                &bind,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .unwrap();
            let named = cgroup_name_for(&bind);
            umount(&bind).unwrap();
            assert_eq!(named, name, "through a bind mount");
        }
        let elsewhere = dir.path().join("other");
        std::fs::create_dir(&elsewhere).unwrap();
        assert_ne!(cgroup_name_for(&elsewhere), name);
    }

    #[test]
    fn a_new_directory_on_a_removed_ones_inode_names_another_subtree() {
        // Scenario: a state directory is removed while its daemon's subtree
        // still exists, and a new one gets the same inode number (ext4 and
        // tmpfs hand it out again); a daemon on the new directory must not
        // take, and reclaim, the other's subtree.
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        let first = (
            std::fs::metadata(&state).unwrap().ino(),
            cgroup_name_for(&state),
        );
        let mut reused = None;
        for _ in 0..100 {
            std::fs::remove_dir(&state).unwrap();
            std::fs::create_dir(&state).unwrap();
            let ino = std::fs::metadata(&state).unwrap().ino();
            if ino == first.0 {
                reused = Some(cgroup_name_for(&state));
                break;
            }
        }
        let Some(again) = reused else {
            // A filesystem that never reuses at once cannot show the fault.
            eprintln!(
                "{}: no inode reused in 100 tries; nothing to check",
                dir.path().display()
            );
            return;
        };
        if std::fs::metadata(&state).unwrap().created().is_err() {
            // The documented limit: such a filesystem names by inode alone.
            eprintln!(
                "{}: no birth times here; nothing to check",
                dir.path().display()
            );
            return;
        }
        assert_ne!(again, first.1);
    }
}

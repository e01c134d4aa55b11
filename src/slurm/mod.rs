//! The Slurm executor: jobs submitted to a Slurm cluster with `sbatch`,
//! their output followed in a spool directory that jobsd and the nodes
//! share, their states read from the controller.
//!
//! Everything above the executor (identities, owner checks, policy, quotas,
//! audit, output logs, retention) is the engine's, the same as for local
//! jobs. This module owns only what is Slurm's:
//! - `ctl.rs`: the client commands and what they print;
//! - `spool.rs`: a job's output files and following them;
//! - here: the executor, one job's process handle, and the one task that
//!   asks the controller about every job at once and sends the signals.
//!
//! A job runs `SPOOL/.jobs-exec PROGRAM ARGS…`, a fixed script that sets
//! the job's environment (`PATH`, `HOME`, `LANG`, as for a local job) and
//! execs its arguments as they are: Slurm passes a batch script's arguments
//! through unchanged, so nothing is parsed by a shell. Its stdout and
//! stderr go to files made for it in the spool (see `spool.rs`).

mod ctl;
mod spool;

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

pub use ctl::{Ctl, CtlError};
use ctl::{JobInfo, Submission};

use crate::job::{
    Account, BoxFuture, Capabilities, Ended, Executor, ExitInfo, JobSignal, Launch, Meter, Process,
    ResourceLimits, ResourceUsage, SpawnError, Spawned,
};

/// How often the controller is asked about running jobs.
const POLL: Duration = Duration::from_millis(250);

/// Name of the batch script in the spool.
const EXEC: &str = ".jobs-exec";

/// The batch script every job runs: its first argument is the job's home,
/// the rest its argv.
const EXEC_SCRIPT: &str = "#!/bin/sh\n\
# Written by jobsd: runs a job's argv as it is, with the environment a\n\
# local job gets.\n\
HOME=$1\n\
shift\n\
PATH=/usr/local/bin:/usr/bin:/bin\n\
LANG=C.UTF-8\n\
export HOME PATH LANG\n\
exec \"$@\"\n";

/// Prefix of a Slurm job's recovery token (`slurm:ID:NAME`).
const TOKEN: &str = "slurm:";

/// How a Slurm executor is set up.
#[derive(Clone, Debug)]
pub struct SlurmConfig {
    /// Where `sbatch`, `scancel` and `scontrol` are; `None`: PATH.
    pub bin: Option<PathBuf>,
    /// The cluster's `slurm.conf`; `None`: where Slurm looks itself
    /// (`SLURM_CONF`, then its compiled-in path).
    pub conf: Option<PathBuf>,
    /// The partition to submit to; `None`: the cluster's default.
    pub partition: Option<String>,
    /// A directory jobsd and every node see at the same path.
    pub spool: PathBuf,
    /// The account of jobs whose identity has none of its own (`--run-as`).
    pub default_account: Option<Account>,
}

/// Why the executor cannot be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SlurmError {
    /// The controller does not answer (or the commands are missing).
    #[error("the Slurm controller does not answer (scontrol ping): {0}")]
    Controller(#[source] CtlError),
    /// The spool directory cannot be made or written.
    #[error("cannot prepare the Slurm spool directory {}", path.display())]
    Spool {
        /// The directory or file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Runs jobs on a Slurm cluster.
#[derive(Debug)]
pub struct SlurmExecutor {
    config: SlurmConfig,
    ctl: Ctl,
    poller: Arc<Poller>,
    /// Ends the poller at [`Executor::close`].
    cancel: CancellationToken,
    /// The poller, ended with the executor if not closed before.
    _task: AbortOnDrop,
    /// jobsd runs as root: jobs run as their identity's account.
    as_root: bool,
}

impl SlurmExecutor {
    /// Checks that the controller answers, prepares the spool (refused
    /// when anyone but root and jobsd's user could change it or a
    /// directory above it, but for sticky ones like /tmp) and starts
    /// the task that follows the jobs' states. Needs a tokio runtime.
    ///
    /// # Errors
    /// [`SlurmError`].
    pub async fn open(config: SlurmConfig) -> Result<Self, SlurmError> {
        // sbatch expands `%` patterns in output paths, and a backslash
        // turns that off and is dropped: neither may be in the spool's.
        let spool_text = config.spool.to_string_lossy();
        if !config.spool.is_absolute() || spool_text.contains(['%', '\\']) {
            return Err(SlurmError::Spool {
                path: config.spool.clone(),
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "must be an absolute path without '%' or '\\' (sbatch reads those in output paths)",
                ),
            });
        }
        let ctl = Ctl::new(config.bin.clone(), config.conf.clone());
        ctl.ping().await.map_err(SlurmError::Controller)?;
        let spool = config.spool.clone();
        tokio::task::spawn_blocking(move || prepare_spool(&spool))
            .await
            .map_err(|e| SlurmError::Spool {
                path: config.spool.clone(),
                source: io::Error::other(e),
            })??;
        let cancel = CancellationToken::new();
        let (signals, queue) = mpsc::unbounded_channel();
        let poller = Arc::new(Poller {
            jobs: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            signals,
        });
        let task = tokio::spawn(poller.clone().run(ctl.clone(), queue, cancel.clone()));
        Ok(Self {
            config,
            ctl,
            poller,
            cancel,
            _task: AbortOnDrop(task),
            as_root: nix::unistd::geteuid().is_root(),
        })
    }
}

/// Makes the spool (mode 0711 when new) and writes the batch script.
fn prepare_spool(spool: &Path) -> Result<(), SlurmError> {
    let err = |path: &Path| {
        let path = path.to_owned();
        move |source| SlurmError::Spool { path, source }
    };
    match std::fs::DirBuilder::new().mode(0o711).create(spool) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(err(spool)(e)),
    }
    // Whoever could change the spool or a directory above it could put
    // their own `.jobs-exec` there, run as every identity's account.
    let me = nix::unistd::geteuid().as_raw();
    let mut dir = Some(spool);
    while let Some(d) = dir {
        let meta = std::fs::symlink_metadata(d).map_err(err(d))?;
        let mode = meta.mode();
        let trusted_owner = meta.uid() == me || meta.uid() == 0;
        let others_write = mode & 0o022 != 0;
        let sticky = mode & 0o1000 != 0;
        // The spool itself must be closed to others; a parent may be a
        // sticky directory like /tmp (nobody else can move ours away).
        let open = if d == spool {
            others_write
        } else {
            others_write && !sticky
        };
        if !meta.is_dir() || !trusted_owner || open {
            return Err(SlurmError::Spool {
                path: d.to_owned(),
                source: io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "must be a directory owned by root or jobsd's user and writable by no one else (owner uid {}, mode {:o})",
                        meta.uid(),
                        mode & 0o7777
                    ),
                ),
            });
        }
        dir = d.parent();
    }
    let script = spool.join(EXEC);
    let tmp = spool.join(format!("{EXEC}.{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o755)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .and_then(|mut f| {
            use std::io::Write;
            f.write_all(EXEC_SCRIPT.as_bytes())?;
            f.set_permissions(std::fs::Permissions::from_mode(0o755))?;
            f.sync_all()
        })
        .map_err(err(&tmp))?;
    std::fs::rename(&tmp, &script).map_err(err(&script))
}

impl Executor for SlurmExecutor {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            // Memory (`--mem`) and CPUs (`--cpus-per-task`); enforcing
            // them is the cluster's configuration (task/cgroup).
            limits: true,
            io_limits: false,
            accounts: self.as_root,
            no_pids_limit: true,
            no_owner_limits: true,
        }
    }

    fn spawn<'a>(&'a self, launch: Launch<'a>) -> BoxFuture<'a, Result<Spawned, SpawnError>> {
        Box::pin(async move {
            let begun = Instant::now();
            // Refused before anything is made.
            let (mem_mib, cpus) = slurm_limits(launch.limits)?;
            let (uid, gid, home) = match launch.account.or(self.config.default_account.as_ref()) {
                Some(a) => (Some(a.uid), Some(a.gid), a.home.clone()),
                // Submitted as root without one, it would run as root.
                None if self.as_root => return Err(SpawnError::NoAccount),
                None => (None, None, PathBuf::from("/")),
            };
            let (file_uid, file_gid) = match (uid, gid) {
                (Some(u), Some(g)) => (u, g),
                _ => (
                    nix::unistd::geteuid().as_raw(),
                    nix::unistd::getegid().as_raw(),
                ),
            };
            // Not found or not executable is a start error, as for a local
            // job, never a job that ends with 127 on a node: the program is
            // looked up here, in the PATH jobs get, on the rule that the
            // nodes have the software jobsd's machine has.
            let program = launch.spec.program().to_owned();
            tokio::task::spawn_blocking(move || crate::exec::resolve(&program))
                .await
                .map_err(|e| SpawnError::Os(io::Error::other(e)))??;
            let spool = self.config.spool.clone();
            let name = launch.name.to_owned();
            let job = tokio::task::spawn_blocking(move || {
                spool::create(&spool, &name, file_uid, file_gid)
            })
            .await
            .map_err(|e| SpawnError::Os(io::Error::other(e)))?
            .map_err(|source| SpawnError::Containment {
                what: "cannot make the job's files in the Slurm spool".into(),
                source,
            })?;
            let script = self.config.spool.join(EXEC);
            let mut argv = Vec::with_capacity(launch.spec.args().len() + 1);
            argv.push(launch.spec.program().to_owned());
            argv.extend_from_slice(launch.spec.args());
            let submitted = self
                .ctl
                .submit(&Submission {
                    name: launch.name,
                    partition: self.config.partition.as_deref(),
                    uid,
                    gid,
                    workdir: Path::new("/"),
                    stdout: &job.stdout,
                    stderr: &job.stderr,
                    mem_mib,
                    cpus,
                    script: &script,
                    home: &home,
                    argv: &argv,
                })
                .await;
            let id = match submitted {
                Ok(id) => id,
                Err(e) => {
                    let dir = job.dir.clone();
                    let _ = tokio::task::spawn_blocking(move || spool::remove(&dir)).await;
                    return Err(match e {
                        e if e.is_unavailable() => SpawnError::ClusterUnavailable {
                            reason: e.to_string(),
                        },
                        CtlError::Spawn { source, .. } => SpawnError::Os(source),
                        e => SpawnError::Refused {
                            reason: e.to_string(),
                        },
                    });
                }
            };
            let info = self.poller.register(id, uid);
            let info_view = info.clone();
            let (ended_tx, ended) = watch::channel(false);
            let (stdout, stderr, copy) = job.follow(ended, launch.max_output_bytes);
            let dir = job.dir.clone();
            // The spool files' bytes are in the job's log once the copy is
            // done: then they go.
            let cleanup = tokio::spawn(async move {
                match copy.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::error!(dir = %dir.display(), error = %e, "cannot follow a Slurm job's output")
                    }
                    Err(e) => {
                        tracing::error!(dir = %dir.display(), error = %e, "the follower of a Slurm job's output was lost")
                    }
                }
                let _ = tokio::task::spawn_blocking(move || spool::remove(&dir)).await;
            });
            Ok(Spawned {
                process: Box::new(SlurmProcess {
                    id,
                    info,
                    ended: ended_tx,
                    poller: self.poller.clone(),
                    _cleanup: cleanup,
                }),
                stdout,
                stderr,
                meter: Some(Arc::new(SlurmMeter(info_view))),
                cluster_job_id: Some(id.to_string()),
                // The follower ends once the files are read to their end
                // (or to the output quota).
                drain_until_eof: true,
                recovery: Some(format!("{TOKEN}{id}:{}", launch.name)),
                phases: vec![("sbatch", begun.elapsed())],
            })
        })
    }

    fn close(&self) {
        self.cancel.cancel();
    }

    fn reclaim(&self, recovery: &str) -> io::Result<usize> {
        // `slurm:ID:NAME`, NAME the job's spool directory (one component).
        let (id, name) =
            parse_token(recovery).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidData))?;
        spool::remove(&self.config.spool.join(name));
        let scancel = self
            .config
            .bin
            .as_ref()
            .map_or_else(|| PathBuf::from("scancel"), |b| b.join("scancel"));
        let mut cmd = std::process::Command::new(scancel);
        if let Some(conf) = &self.config.conf {
            cmd.env("SLURM_CONF", conf);
        }
        let status = cmd
            .arg(id.to_string())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()?;
        Ok(usize::from(status.success()))
    }
}

/// A job's limits as sbatch takes them: memory in MiB (rounded up) and
/// whole CPUs. Slurm allocates whole CPUs, so a fraction is refused rather
/// than rounded: the record would say less than the job gets.
fn slurm_limits(limits: &ResourceLimits) -> Result<(Option<u64>, Option<u32>), SpawnError> {
    let mem = limits.memory_bytes.map(|b| b.div_ceil(1 << 20));
    let cpus = match limits.cpu_millis {
        Some(m) if m % 1000 != 0 => {
            return Err(SpawnError::Refused {
                reason: format!(
                    "Slurm allocates whole CPUs, not {}.{:03}: ask for --cpus 1, 2, ...",
                    m / 1000,
                    m % 1000
                ),
            });
        }
        Some(m) => Some(m / 1000),
        None => None,
    };
    Ok((mem, cpus))
}

/// `slurm:ID:NAME` → `(ID, NAME)`; NAME must be one plain path component.
fn parse_token(token: &str) -> Option<(u64, &str)> {
    let (id, name) = token.strip_prefix(TOKEN)?.split_once(':')?;
    let plain = !name.is_empty() && !name.contains('/') && !name.starts_with('.');
    Some((id.parse().ok()?, name)).filter(|_| plain)
}

/// A task aborted when this is dropped.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the controller last said of a job, for `jobs status`.
struct SlurmMeter(watch::Receiver<Option<JobInfo>>);

impl Meter for SlurmMeter {
    fn usage(&self) -> Option<ResourceUsage> {
        None
    }

    fn queued(&self) -> Option<String> {
        // Before the first poll the job is as sbatch left it: queued.
        match &*self.0.borrow() {
            None => Some("submitted".to_owned()),
            Some(info) if info.state == "PENDING" => Some(info.reason.clone()),
            Some(_) => None,
        }
    }
}

/// One job on the cluster, owned by its supervisor.
struct SlurmProcess {
    id: u64,
    /// What the controller last said of it.
    info: watch::Receiver<Option<JobInfo>>,
    /// Tells the output follower the job ended (then it drains the files).
    ended: watch::Sender<bool>,
    poller: Arc<Poller>,
    /// Removes the spool files once followed to their end.
    _cleanup: tokio::task::JoinHandle<()>,
}

impl SlurmProcess {
    fn final_info(&self) -> Option<JobInfo> {
        self.info.borrow().clone().filter(JobInfo::is_final)
    }
}

impl Process for SlurmProcess {
    fn exited(&mut self) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(async move {
            loop {
                if self.final_info().is_some() {
                    self.ended.send_replace(true);
                    return Ok(());
                }
                if self.info.changed().await.is_err() {
                    self.ended.send_replace(true);
                    return Err(io::Error::other("the Slurm poller stopped"));
                }
            }
        })
    }

    fn signal(&mut self, signal: JobSignal) -> io::Result<()> {
        // A job still queued has no process to signal, and `scancel
        // --signal` of a pending job retries for 95 s before it fails: it
        // is cancelled instead (not yet seen by a poll counts as queued).
        let queued = self
            .info
            .borrow()
            .as_ref()
            .is_none_or(|i| i.state == "PENDING");
        let signal = match (signal, queued) {
            (JobSignal::Continue, true) => return Ok(()),
            (JobSignal::Terminate | JobSignal::Kill, true) => None,
            (JobSignal::Terminate, false) => Some("TERM"),
            (JobSignal::Continue, false) => Some("CONT"),
            // Slurm's own cancel: everything of the job, on every node.
            (JobSignal::Kill, false) => None,
        };
        self.poller
            .signals
            .send((self.id, signal))
            .map_err(|_| io::Error::other("the Slurm poller stopped"))
    }

    fn finish(&mut self) -> BoxFuture<'_, io::Result<Ended>> {
        Box::pin(async move {
            let info = self
                .final_info()
                .ok_or_else(|| io::Error::other("the Slurm job has not ended"))?;
            self.poller.deregister(self.id);
            if info.state == ctl::VANISHED {
                // Whatever is left of it must not run on unsupervised.
                let _ = self.poller.signals.send((self.id, None));
                return Err(io::Error::other(
                    "the cluster no longer knows the job, and nobody saw how it ended",
                ));
            }
            let (code, signal) = info.exit;
            let exit = if info.state == "OUT_OF_MEMORY" {
                // Slurm says 0:125 whatever the main process did; the
                // cgroup's OOM killer sends SIGKILL.
                ExitInfo::Signaled {
                    signal: libc::SIGKILL,
                    core_dumped: false,
                }
            } else if signal != 0 {
                ExitInfo::Signaled {
                    signal,
                    core_dumped: false,
                }
            } else {
                ExitInfo::Exited(code)
            };
            let usage = (info.state == "OUT_OF_MEMORY").then_some(ResourceUsage {
                peak_memory_bytes: None,
                cpu_usec: None,
                oom_kills: 1,
            });
            Ok(Ended { exit, usage })
        })
    }
}

impl Drop for SlurmProcess {
    fn drop(&mut self) {
        // Nothing more will say the job ended: the follower reads the files
        // once more and stops.
        self.ended.send_replace(true);
        self.poller.deregister(self.id);
    }
}

/// The one task that asks the controller about every job, and sends the
/// jobs' signals (each in a task of its own, at most [`SIGNALS_AT_ONCE`]
/// at a time, so that a slow `scancel` holds neither the polls nor other
/// jobs' signals).
#[derive(Debug)]
struct Poller {
    jobs: Mutex<HashMap<u64, Watched>>,
    /// A job was registered: poll now.
    wake: Notify,
    signals: mpsc::UnboundedSender<(u64, Option<&'static str>)>,
}

/// `scancel` calls in flight at once.
const SIGNALS_AT_ONCE: usize = 8;

/// Successful polls in a row that may miss a job before it counts as
/// vanished (2 s at [`POLL`]).
const MISSING_POLLS: u32 = 8;

/// A job the poller follows.
#[derive(Debug)]
struct Watched {
    info: watch::Sender<Option<JobInfo>>,
    /// The uid it was submitted as; `None`: jobsd's own.
    uid: Option<u32>,
    /// Successful polls in a row that did not list it.
    missing: u32,
}

impl Poller {
    fn register(&self, id: u64, uid: Option<u32>) -> watch::Receiver<Option<JobInfo>> {
        let (tx, rx) = watch::channel(None);
        self.lock().insert(
            id,
            Watched {
                info: tx,
                uid,
                missing: 0,
            },
        );
        self.wake.notify_one();
        rx
    }

    fn deregister(&self, id: u64) {
        self.lock().remove(&id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Watched>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands each followed job what the controller says of it now.
    fn dispatch(&self, list: Vec<JobInfo>) {
        let by_id: HashMap<u64, JobInfo> = list.into_iter().map(|j| (j.id, j)).collect();
        for (id, w) in self.lock().iter_mut() {
            let info = match by_id.get(id) {
                // Not what we submitted (the uid differs): ignored.
                Some(info) if w.uid.is_some() && info.uid.is_some() && info.uid != w.uid => {
                    tracing::warn!(slurm_job = id, expected = ?w.uid, listed = ?info.uid, "the controller lists a job of ours under another uid; ignored");
                    continue;
                }
                Some(info) => {
                    w.missing = 0;
                    info.clone()
                }
                None => {
                    w.missing += 1;
                    if w.missing < MISSING_POLLS {
                        continue;
                    }
                    tracing::error!(
                        slurm_job = id,
                        "the controller no longer lists the job, which was not seen to end"
                    );
                    JobInfo {
                        id: *id,
                        state: ctl::VANISHED.to_owned(),
                        reason: "None".to_owned(),
                        exit: (0, 0),
                        uid: w.uid,
                    }
                }
            };
            w.info.send_if_modified(|old| {
                // A final state is kept: nothing overwrites how a job ended.
                if old.as_ref().is_some_and(JobInfo::is_final) || old.as_ref() == Some(&info) {
                    return false;
                }
                *old = Some(info);
                true
            });
        }
    }

    async fn run(
        self: Arc<Self>,
        ctl: Ctl,
        mut signals: mpsc::UnboundedReceiver<(u64, Option<&'static str>)>,
        cancel: CancellationToken,
    ) {
        let mut failing = false;
        let mut in_flight = tokio::task::JoinSet::new();
        let slots = Arc::new(tokio::sync::Semaphore::new(SIGNALS_AT_ONCE));
        let mut next_poll = tokio::time::Instant::now();
        loop {
            let busy = !self.lock().is_empty();
            if busy && tokio::time::Instant::now() >= next_poll {
                next_poll = tokio::time::Instant::now() + POLL;
                match ctl.jobs().await {
                    Ok(list) => {
                        if failing {
                            tracing::info!("the Slurm controller answers again");
                            failing = false;
                        }
                        self.dispatch(list);
                    }
                    Err(e) => {
                        if !failing {
                            tracing::warn!(error = %e, "the Slurm controller does not answer; job states wait for it");
                            failing = true;
                        }
                    }
                }
            }
            tokio::select! {
                () = cancel.cancelled() => {
                    in_flight.abort_all();
                    return;
                }
                Some((id, signal)) = signals.recv() => {
                    let (ctl, slots) = (ctl.clone(), slots.clone());
                    in_flight.spawn(async move {
                        let Ok(_slot) = slots.acquire_owned().await else { return };
                        send_signal(&ctl, id, signal).await;
                    });
                }
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                () = self.wake.notified() => next_poll = tokio::time::Instant::now(),
                () = tokio::time::sleep_until(next_poll), if busy => {}
            }
        }
    }
}

async fn send_signal(ctl: &Ctl, id: u64, signal: Option<&'static str>) {
    if let Err(e) = ctl.cancel(id, signal).await {
        tracing::warn!(slurm_job = id, signal = signal.unwrap_or("cancel"), error = %e, "cannot signal a Slurm job");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Scenario: a job's limits as sbatch takes them: memory rounded up to
    // a MiB (never less than asked), CPUs whole or refused.
    #[test]
    fn limits_become_mebibytes_and_whole_cpus() {
        let l = |memory_bytes, cpu_millis| ResourceLimits {
            memory_bytes,
            cpu_millis,
            ..ResourceLimits::default()
        };
        assert_eq!(slurm_limits(&l(None, None)).unwrap(), (None, None));
        assert_eq!(
            slurm_limits(&l(Some(64 << 20), Some(2000))).unwrap(),
            (Some(64), Some(2))
        );
        assert_eq!(
            slurm_limits(&l(Some((64 << 20) + 1), None)).unwrap(),
            (Some(65), None)
        );
        assert!(matches!(
            slurm_limits(&l(None, Some(250))),
            Err(SpawnError::Refused { reason }) if reason.contains("not 0.250")
        ));
    }

    // Scenario: a restarted jobsd reclaims a Slurm job by the token its
    // record holds; a token that is not one of ours, or whose name would
    // leave the spool, is refused rather than acted on.
    #[test]
    fn a_recovery_token_names_a_job_and_one_spool_directory() {
        assert_eq!(parse_token("slurm:42:8d3f-aa"), Some((42, "8d3f-aa")));
        for bad in [
            "slurm:42",
            "slurm:x:name",
            "slurm:42:",
            "slurm:42:../etc",
            "slurm:42:a/b",
            "slurm:42:.jobs-exec",
            "pgid:42:name",
        ] {
            assert_eq!(parse_token(bad), None, "{bad}");
        }
    }
}

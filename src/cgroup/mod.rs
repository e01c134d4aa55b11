//! Per-job control groups: limits, usage counters, and a kill that no
//! process of the job can escape.
//!
//! This module owns the cgroup directories of jobs and nothing else: it
//! finds where the daemon's own cgroups are ([`Layout::detect`]), makes the
//! daemon's subtree beneath them ([`Cgroups::open`]), and one group per job
//! ([`Cgroups::create`]). It never moves the daemon itself, and never
//! creates groups outside the daemon's own cgroups. It does not spawn
//! processes: the job's child places itself into the group from a pre-exec
//! hook through [`JobCgroup::procs_files`], before `exec`, so every process
//! of the job is in the group from its first instruction.
//!
//! # Layouts
//! - **cgroup v2** (unified): one hierarchy with every controller. The
//!   daemon's own cgroup must hand the `memory`, `cpu`, `pids` and `io`
//!   controllers to the job subtree, which cgroup v2 allows only while no
//!   process sits in it (see [`CgroupError::ControllerBlocked`]).
//! - **cgroup v1**: one hierarchy per controller (or a few co-mounted, e.g.
//!   `cpu,cpuacct`). A job gets a group in each hierarchy of `memory`,
//!   `cpu`, `cpuacct`, `pids`, `blkio` and `freezer` that is mounted.
//!   **Hybrid** adds a cgroup2 mount without controllers, used for
//!   `cgroup.kill` and `cgroup.events`.
//!
//! A limit whose controller is missing is an error
//! ([`CgroupError::ControllerMissing`]): a job is never silently unlimited.
//!
//! # Security
//! Jobs that run as root can write to cgroup files and leave their group;
//! containment assumes jobs run as an unprivileged account. The `cgroup.procs`
//! descriptors are opened by the daemon, so a child that has already dropped
//! privileges can still place itself (the kernel checks the opener's
//! credentials, since Linux 5.16).

mod error;
mod fs;
mod identity;
mod parse;
mod watch;

#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use error::CgroupError;
use parse::{Caps, Flavor};

/// How long [`Cgroups::open`] waits for the processes of a leftover group to
/// die after SIGKILL. Killed processes leave within milliseconds; one in
/// uninterruptible sleep (a hung NFS read) may not, and then the daemon
/// should not start beside it but say so.
const LEFTOVER_DEADLINE: Duration = Duration::from_secs(5);

/// How long [`JobCgroup::kill`] waits for a v1 (or v2 `cgroup.freeze`) freezer
/// to report the group frozen. Freezing takes microseconds unless a task is
/// in uninterruptible sleep; after this the kill proceeds anyway and repeats
/// until no new process shows up.
const FREEZE_DEADLINE: Duration = Duration::from_secs(1);

/// How many times the unfrozen kill re-reads `cgroup.procs` looking for
/// processes forked after the previous read. Each round kills everything
/// listed; a fork bomb is bounded by `pids.max`, so rounds end quickly.
const KILL_ROUNDS: usize = 100;

/// Resource limits for one job. `None` (or an empty `io`) leaves that
/// resource unlimited (inherited from the daemon's cgroup).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Memory of all the job's processes together, in bytes (page cache
    /// included); the kernel rounds it down to whole pages. Swap is limited
    /// to nothing beyond it where the kernel accounts swap.
    pub memory_bytes: Option<u64>,
    /// CPU time, in thousandths of a core: 1000 is one full core, 2500 two
    /// and a half. Enforced per 100 ms period; below 10 it is rounded up to
    /// 10 (the kernel's smallest quota, 1 ms per period).
    pub cpu_millis: Option<u32>,
    /// Processes and threads the job may have at once. The kernel counts
    /// a process until it is reaped, so zombies count.
    pub pids: Option<u32>,
    /// Bandwidth limits per block device.
    pub io: Vec<IoLimit>,
}

/// A bandwidth limit on one block device. The device must be a whole disk
/// (not a partition) that exists, e.g. `major: 8, minor: 0` for `/dev/sda`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoLimit {
    /// The device's major number.
    pub major: u32,
    /// The device's minor number.
    pub minor: u32,
    /// Reads, in bytes per second; `None` for unlimited.
    pub read_bps: Option<u64>,
    /// Writes, in bytes per second; `None` for unlimited.
    pub write_bps: Option<u64>,
}

/// What a job's processes used, from its group's own counters (processes
/// that ever ran in the group, including those that already exited).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Highest memory use of the group, in bytes; `None` where the kernel
    /// does not record it (v2 before Linux 5.19, no memory controller).
    pub peak_memory_bytes: Option<u64>,
    /// CPU time of all processes, user and system, in microseconds; `None`
    /// without a CPU accounting file.
    pub cpu_usec: Option<u64>,
    /// Processes the kernel killed because the group hit its memory limit;
    /// 0 without a memory controller.
    pub oom_kills: u64,
}

/// Where cgroups are mounted and where the daemon's own cgroups are.
///
/// Displays as one line for the daemon's log, e.g.
/// `cgroup v2 at /sys/fs/cgroup (memory, cpu, pids, io)` or
/// `cgroup v1 (hybrid): cpu, cpuacct, memory, freezer, blkio, pids; v2 at
/// /sys/fs/cgroup/unified for kill`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Layout {
    /// cgroup v2 only. `controllers` are those of `memory`, `cpu`, `pids`
    /// and `io` that the daemon's own cgroup can use (its
    /// `cgroup.controllers`).
    V2(Hierarchy),
    /// cgroup v1 hierarchies for the controllers jobs use (each listed once,
    /// in mount order), and the cgroup2 mount of a hybrid layout, if any
    /// (with empty `controllers`).
    V1 {
        /// The v1 hierarchies of `memory`, `cpu`, `cpuacct`, `pids`, `blkio`
        /// and `freezer` that are mounted.
        hierarchies: Vec<Hierarchy>,
        /// The cgroup2 mount (hybrid layout), used for `cgroup.kill` and
        /// `cgroup.events`.
        unified: Option<Hierarchy>,
    },
}

/// One mounted cgroup hierarchy, as the daemon sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Hierarchy {
    /// The controllers jobs use in it, e.g. `["cpu", "cpuacct"]` for a
    /// co-mounted v1 hierarchy.
    pub controllers: Vec<String>,
    /// Where it is mounted, e.g. `/sys/fs/cgroup/memory`.
    pub mount_point: PathBuf,
    /// The directory of the daemon's own cgroup in it (from
    /// `/proc/self/cgroup`, relative to the mount's root).
    pub own_dir: PathBuf,
}

impl Layout {
    /// Finds the cgroup layout of this machine and this process's cgroups,
    /// from `/proc/self/mountinfo` and `/proc/self/cgroup` (and, on v2, the
    /// own cgroup's `cgroup.controllers`).
    ///
    /// # Errors
    /// [`CgroupError::Proc`] if a /proc file cannot be read;
    /// [`CgroupError::NotMounted`] without a usable cgroup mount;
    /// [`CgroupError::NotVisible`] if this process's cgroup is outside every
    /// mount of a hierarchy; [`CgroupError::Read`] if `cgroup.controllers`
    /// cannot be read.
    pub fn detect() -> Result<Layout, CgroupError> {
        let read_proc = |path: &str| {
            std::fs::read_to_string(path).map_err(|source| CgroupError::Proc {
                path: PathBuf::from(path),
                source,
            })
        };
        let mountinfo = read_proc("/proc/self/mountinfo")?;
        let proc_cgroup = read_proc("/proc/self/cgroup")?;
        let mut layout = parse::layout_from(&mountinfo, &proc_cgroup)?;
        if let Layout::V2(hierarchy) = &mut layout {
            let text = fs::read(&hierarchy.own_dir.join("cgroup.controllers"))?;
            hierarchy.controllers = parse::parse_v2_controllers(&text);
        }
        Ok(layout)
    }

    /// The directories of the daemon's own cgroups, with what each can do.
    fn own_nodes(&self) -> Vec<Node> {
        match self {
            Layout::V2(h) => vec![Node {
                flavor: Flavor::V2,
                caps: Caps::from_controllers(&h.controllers),
                dir: h.own_dir.clone(),
            }],
            Layout::V1 {
                hierarchies,
                unified,
            } => hierarchies
                .iter()
                .map(|h| Node {
                    flavor: Flavor::V1,
                    caps: Caps::from_controllers(&h.controllers),
                    dir: h.own_dir.clone(),
                })
                .chain(unified.iter().map(|h| Node {
                    flavor: Flavor::V2,
                    caps: Caps::default(),
                    dir: h.own_dir.clone(),
                }))
                .collect(),
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Layout::V2(h) => {
                write!(f, "cgroup v2 at {}", h.mount_point.display())?;
                if !h.controllers.is_empty() {
                    write!(f, " ({})", h.controllers.join(", "))?;
                }
                Ok(())
            }
            Layout::V1 {
                hierarchies,
                unified,
            } => {
                let names: Vec<String> = hierarchies
                    .iter()
                    .map(|h| h.controllers.join("+"))
                    .collect();
                match unified {
                    Some(u) => write!(
                        f,
                        "cgroup v1 (hybrid): {}; v2 at {} for kill",
                        names.join(", "),
                        u.mount_point.display()
                    ),
                    None => write!(
                        f,
                        "cgroup v1: {}; no cgroup2 mount (kill by freezer)",
                        names.join(", ")
                    ),
                }
            }
        }
    }
}

/// One directory of a group, in one hierarchy.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Node {
    flavor: Flavor,
    /// The controllers whose files are in `dir`. For the hybrid's cgroup2
    /// mount: none (it still has `cgroup.kill`, `cgroup.events`, `cpu.stat`).
    caps: Caps,
    dir: PathBuf,
}

impl Node {
    fn child(&self, name: impl AsRef<Path>) -> Node {
        Node {
            flavor: self.flavor,
            caps: self.caps,
            dir: self.dir.join(name),
        }
    }
}

/// The daemon's subtree: `<own cgroup>/<name>` in every hierarchy used.
/// Every job group is created beneath it. Dropping it without
/// [`Cgroups::close`] leaves the directories; the next [`Cgroups::open`] of
/// the same name reuses them.
#[derive(Debug)]
pub struct Cgroups {
    layout: Layout,
    nodes: Vec<Node>,
    /// The identity groups of [`Cgroups::create_for`].
    identities: Arc<identity::Registry>,
}

impl Cgroups {
    /// Creates (or reuses) the subtree `name` (a single path component, e.g.
    /// `jobsd-1a2b3c4d5e6f7a8b`) under the daemon's own cgroup in every
    /// hierarchy used.
    ///
    /// Groups already in a reused subtree are leftovers of a daemon that
    /// died: their processes are killed, and once none is left (waiting at
    /// most 5 s, blocking the thread) the groups are removed; each is
    /// logged at WARN. On v2, the `memory`, `cpu`, `pids` and `io`
    /// controllers the own cgroup offers are enabled for the subtree and its
    /// job groups; if the daemon's own presence in its cgroup blocks that
    /// (the "no internal processes" rule), the daemon first moves itself into
    /// the leaf [`DAEMON_LEAF`] beside the subtree. The daemon never joins the
    /// subtree itself.
    ///
    /// # Errors
    /// [`CgroupError::InvalidName`]; [`CgroupError::ControllerBlocked`] on v2
    /// when the own cgroup cannot hand controllers to children because other
    /// processes than the daemon are in it; [`CgroupError::Create`],
    /// [`CgroupError::Write`], [`CgroupError::Read`] for the directories and
    /// files; [`CgroupError::LeftoverBusy`] if a leftover's processes do not
    /// die; [`CgroupError::Signal`], [`CgroupError::Remove`] for leftovers.
    /// Directories this call created are removed again on error.
    pub fn open(layout: Layout, name: &str) -> Result<Cgroups, CgroupError> {
        check_name(name)?;
        let own = layout.own_nodes();
        if let Layout::V2(h) = &layout {
            enable_in_own_cgroup(h)?;
        }
        let nodes: Vec<Node> = own.iter().map(|n| n.child(name)).collect();
        let mut created: Vec<&Node> = Vec::new();
        let result = (|| {
            for node in &nodes {
                match std::fs::create_dir(&node.dir) {
                    Ok(()) => created.push(node),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(source) => {
                        return Err(CgroupError::Create {
                            path: node.dir.clone(),
                            source,
                        });
                    }
                }
            }
            remove_leftovers(&nodes)?;
            if let (Layout::V2(h), Some(subtree)) = (&layout, nodes.first()) {
                enable_controllers(&subtree.dir, &h.controllers)?;
            }
            Ok(())
        })();
        if let Err(e) = result {
            for node in created.iter().rev() {
                if let Err(undo) = fs::remove_dir(&node.dir) {
                    tracing::warn!(error = %undo, "cannot remove cgroup subtree after a failed open");
                }
            }
            return Err(e);
        }
        tracing::debug!(layout = %layout, subtree = name, "cgroup subtree ready");
        Ok(Cgroups {
            layout,
            nodes,
            identities: Arc::default(),
        })
    }

    /// The layout this subtree was opened with.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Creates the group for one job (`name`: the job id, one path
    /// component) in every hierarchy used, with `limits` applied, before
    /// any process is in it; opens its `cgroup.procs` files.
    ///
    /// # Errors
    /// [`CgroupError::InvalidName`]; [`CgroupError::ControllerMissing`] if a
    /// limit is set whose controller is not available;
    /// [`CgroupError::Create`] (`AlreadyExists` if a group of that name is
    /// there); [`CgroupError::Write`] if a limit is refused (e.g. EINVAL for
    /// an io limit on a missing device or a partition);
    /// [`CgroupError::Open`]. On any error, the directories this call
    /// created are removed again.
    pub fn create(&self, name: &str, limits: &Limits) -> Result<JobCgroup, CgroupError> {
        check_name(name)?;
        self.check_controllers(limits)?;
        create_job(&self.nodes, name, limits)
    }

    /// Creates the group for one job of the identity `owner` (one path
    /// component, the same for all its jobs), as [`Cgroups::create`] does
    /// but beneath the identity's own group `<subtree>/<owner>`, which is
    /// made on the identity's first job and removed with its last (see
    /// `identity.rs`). The identity's group gets the same CPU weight as
    /// every other identity's (v2 `cpu.weight` 100, v1 `cpu.shares` 1024),
    /// so identities that want CPU share it equally whatever their number of
    /// jobs, and `owner_limits` (memory, CPU and pids of all its jobs
    /// together; `io` is ignored; `None` lifts the limit). On a group that
    /// exists already the limits are written again, so a changed policy
    /// applies from the identity's next job on; a limit the kernel refuses
    /// there (e.g. memory below current use) is logged and the old one stays.
    ///
    /// # Errors
    /// As for [`Cgroups::create`], for the identity's group too (`owner` is
    /// checked as a name).
    pub fn create_for(
        &self,
        owner: &str,
        owner_limits: &Limits,
        name: &str,
        limits: &Limits,
    ) -> Result<JobCgroup, CgroupError> {
        check_name(owner)?;
        check_name(name)?;
        self.check_controllers(limits)?;
        self.check_controllers(owner_limits)?;
        let v2_controllers = match &self.layout {
            Layout::V2(h) => Some(h.controllers.as_slice()),
            Layout::V1 { .. } => None,
        };
        let (mut job, release) = self.identities.enter(
            &self.nodes,
            v2_controllers,
            owner,
            owner_limits,
            |parents| create_job(parents, name, limits),
        )?;
        job.identity = Some(release);
        Ok(job)
    }

    /// Removes the subtree directories themselves. Call at daemon shutdown,
    /// after every job's group was removed ([`JobCgroup::remove`]); a job
    /// group still there (its owner was dropped without removing it) is
    /// treated as a leftover first: its processes are killed and it is
    /// removed, as [`Cgroups::open`] does.
    ///
    /// # Errors
    /// As for leftovers in [`Cgroups::open`]; [`CgroupError::Remove`] for the
    /// first directory that could not be removed; the others are still
    /// attempted.
    pub fn close(self) -> Result<(), CgroupError> {
        remove_leftovers(&self.nodes)?;
        let mut first_error = None;
        for node in &self.nodes {
            if let Err(e) = fs::remove_dir(&node.dir) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn check_controllers(&self, limits: &Limits) -> Result<(), CgroupError> {
        let any = |has: fn(&Caps) -> bool| self.nodes.iter().any(|n| has(&n.caps));
        let wants_io = limits
            .io
            .iter()
            .any(|l| l.read_bps.is_some() || l.write_bps.is_some());
        let missing = [
            (
                limits.memory_bytes.is_some() && !any(|c| c.memory),
                "memory",
            ),
            (limits.cpu_millis.is_some() && !any(|c| c.cpu), "cpu"),
            (limits.pids.is_some() && !any(|c| c.pids), "pids"),
            (wants_io && !any(|c| c.io), "io"),
        ];
        match missing.into_iter().find(|(missing, _)| *missing) {
            Some((_, controller)) => Err(CgroupError::ControllerMissing { controller }),
            None => Ok(()),
        }
    }
}

/// One job's group, in every hierarchy used. Dropping it leaves the
/// directories in place (call [`JobCgroup::remove`]); a later
/// [`Cgroups::open`] of the same subtree cleans up what is left.
#[derive(Debug)]
pub struct JobCgroup {
    nodes: Vec<Node>,
    procs: Vec<OwnedFd>,
    /// Its place in its identity's group ([`Cgroups::create_for`]).
    identity: Option<identity::Release>,
}

impl JobCgroup {
    /// The `cgroup.procs` file of this group in every hierarchy (in the
    /// order of [`JobCgroup::paths`]), opened `O_WRONLY | O_CLOEXEC` when the
    /// group was created.
    ///
    /// A pre-exec hook writes `0` to each (one `write(2)` each, e.g.
    /// `nix::unistd::write(fd, b"0")`), which moves the forked child itself
    /// into the group before `exec`. Borrowing the slice does not allocate,
    /// so it may be used after `fork`. The descriptors close on `exec`.
    pub fn procs_files(&self) -> &[OwnedFd] {
        &self.procs
    }

    /// Kills every process in the group (and its descendants), including
    /// processes that `setsid` or double-fork, and processes forked while
    /// the kill is going on. Returns once the kill is issued; use
    /// [`JobCgroup::wait_empty`] to know they are gone.
    ///
    /// Uses v2 `cgroup.kill` where it exists (pure v2, or the hybrid's
    /// cgroup2 mount). Otherwise freezes the group (v1 `freezer.state`,
    /// or v2 `cgroup.freeze`), SIGKILLs every process listed in
    /// `cgroup.procs`, and thaws it: frozen processes cannot fork or exit, so
    /// none is missed and no pid is reused meanwhile. May block the thread
    /// for up to 1 s while the freezer settles. Without either, SIGKILLs what
    /// `cgroup.procs` lists until a round finds no new process (best effort:
    /// a pid can be reused between the read and the kill).
    ///
    /// # Errors
    /// [`CgroupError::Write`] or [`CgroupError::Read`] for the group's files;
    /// [`CgroupError::Signal`] if a listed process cannot be signalled.
    pub fn kill(&self) -> Result<(), CgroupError> {
        let v2 = self.nodes.iter().find(|n| n.flavor == Flavor::V2);
        if let Some(node) = v2 {
            let kill_file = node.dir.join("cgroup.kill");
            if kill_file.exists() {
                return fs::write(&kill_file, "1");
            }
        }
        if let Some(node) = self
            .nodes
            .iter()
            .find(|n| n.flavor == Flavor::V1 && n.caps.freezer)
        {
            return kill_frozen(&node.dir, Freezer::V1);
        }
        if let Some(node) = v2 {
            return kill_frozen(&node.dir, Freezer::V2);
        }
        match self.nodes.first() {
            Some(node) => kill_rounds(&node.dir),
            None => Ok(()),
        }
    }

    /// Resolves once no process is left in the group (zombies do not count:
    /// a process leaves its group when it exits, before it is reaped).
    ///
    /// With a cgroup2 hierarchy (v2 or hybrid) it reads `cgroup.events` and
    /// waits for inotify IN_MODIFY on it until it says `populated 0`; no
    /// polling. On pure v1 the kernel offers no such event (release_agent
    /// notifications are machine-wide and need a helper binary), so it
    /// re-reads `cgroup.procs` of every hierarchy with a delay doubling from
    /// 1 ms to 50 ms; this is the only polling in the module.
    ///
    /// Does not time out: wrap it in `tokio::time::timeout`.
    ///
    /// # Errors
    /// [`CgroupError::Watch`] if inotify cannot be used;
    /// [`CgroupError::Read`] or [`CgroupError::Parse`] for the group's files
    /// (e.g. the group was removed meanwhile).
    ///
    /// # Panics
    /// Outside a tokio runtime with I/O enabled (when registering the
    /// inotify descriptor), as tokio does.
    ///
    /// # Cancel safety
    /// Cancel-safe: it holds nothing but its own inotify descriptor and
    /// changes nothing; dropping it and calling it again starts over.
    pub async fn wait_empty(&self) -> Result<(), CgroupError> {
        if let Some(node) = self.nodes.iter().find(|n| n.flavor == Flavor::V2) {
            return watch::wait_unpopulated(&node.dir.join("cgroup.events")).await;
        }
        let mut backoff = fs::Backoff::new();
        while !all_procs(&self.nodes)?.is_empty() {
            tokio::time::sleep(backoff.next_delay()).await;
        }
        Ok(())
    }

    /// What the group's processes used so far, from the group's own
    /// counters: peak memory (v2 `memory.peak`, v1
    /// `memory.max_usage_in_bytes`), CPU time (v1 `cpuacct.usage`, else v2
    /// `cpu.stat` `usage_usec`), OOM kills (v2 `memory.events`, v1
    /// `memory.oom_control`). A counter whose file does not exist is `None`
    /// (or 0), not an error.
    ///
    /// # Errors
    /// [`CgroupError::Read`] if a counter file exists but cannot be read;
    /// [`CgroupError::Parse`] if it holds something unexpected.
    pub fn usage(&self) -> Result<Usage, CgroupError> {
        let mut usage = Usage::default();
        if let Some(node) = self.nodes.iter().find(|n| n.caps.memory) {
            let (peak, events, key) = match node.flavor {
                Flavor::V2 => ("memory.peak", "memory.events", "oom_kill"),
                Flavor::V1 => (
                    "memory.max_usage_in_bytes",
                    "memory.oom_control",
                    "oom_kill",
                ),
            };
            let path = node.dir.join(peak);
            if let Some(text) = fs::read_optional(&path)? {
                usage.peak_memory_bytes = Some(parse::single_value(&path, &text)?);
            }
            let path = node.dir.join(events);
            if let Some(text) = fs::read_optional(&path)? {
                usage.oom_kills = parse::keyed_value(&path, &text, key)?.unwrap_or(0);
            }
        }
        let v1_cpuacct = self
            .nodes
            .iter()
            .find(|n| n.flavor == Flavor::V1 && n.caps.cpuacct);
        if let Some(node) = v1_cpuacct {
            let path = node.dir.join("cpuacct.usage");
            if let Some(text) = fs::read_optional(&path)? {
                usage.cpu_usec = Some(parse::single_value(&path, &text)? / 1000);
            }
        }
        let v2 = self.nodes.iter().find(|n| n.flavor == Flavor::V2);
        if let (None, Some(node)) = (usage.cpu_usec, v2) {
            let path = node.dir.join("cpu.stat");
            if let Some(text) = fs::read_optional(&path)? {
                usage.cpu_usec = parse::keyed_value(&path, &text, "usage_usec")?;
            }
        }
        Ok(usage)
    }

    /// Processes and threads of every job of this group's identity right
    /// now (`pids.current` of the identity's group, [`Cgroups::create_for`]);
    /// `None` for a group made without one, or without the pids controller.
    ///
    /// # Errors
    /// As for [`JobCgroup::usage`].
    pub fn identity_pids(&self) -> Result<Option<u64>, CgroupError> {
        let identity_dir = self
            .identity
            .as_ref()
            .and_then(|_| self.nodes.iter().find(|n| n.caps.pids))
            .and_then(|node| node.dir.parent());
        let Some(dir) = identity_dir else {
            return Ok(None);
        };
        let path = dir.join("pids.current");
        match fs::read_optional(&path)? {
            Some(text) => Ok(Some(parse::single_value(&path, &text)?)),
            None => Ok(None),
        }
    }

    /// Removes every directory of the group (child groups first). Call
    /// after [`JobCgroup::wait_empty`]; an EBUSY right after the last
    /// process left is retried for up to 1 s (blocking the thread).
    ///
    /// # Errors
    /// [`CgroupError::Remove`] for the first directory that could not be
    /// removed (EBUSY if processes are still in it), after trying all;
    /// [`CgroupError::Read`] if a directory cannot be listed.
    pub fn remove(self) -> Result<(), CgroupError> {
        let JobCgroup {
            nodes,
            procs,
            identity,
        } = self;
        drop(procs);
        let mut first_error = None;
        for node in &nodes {
            if let Err(e) = fs::remove_tree(&node.dir) {
                first_error.get_or_insert(e);
            }
        }
        if let Some(identity) = identity {
            identity.release();
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The group's directory in every hierarchy, for logs and tests.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.nodes.iter().map(|n| n.dir.clone()).collect()
    }

    /// The group's directory in the cgroup2 hierarchy (pure v2, or the
    /// hybrid's cgroup2 mount), where cgroup BPF programs attach; `None` on
    /// a v1-only host.
    pub fn unified_dir(&self) -> Option<&Path> {
        self.nodes
            .iter()
            .find(|n| n.flavor == Flavor::V2)
            .map(|n| n.dir.as_path())
    }
}

/// Creates a job group `name` under each of `parents` with `limits`; see
/// [`Cgroups::create`].
fn create_job(parents: &[Node], name: &str, limits: &Limits) -> Result<JobCgroup, CgroupError> {
    let mut created: Vec<Node> = Vec::new();
    let result = (|| {
        let mut procs = Vec::with_capacity(parents.len());
        for parent in parents {
            let node = parent.child(name);
            std::fs::create_dir(&node.dir).map_err(|source| CgroupError::Create {
                path: node.dir.clone(),
                source,
            })?;
            created.push(node.clone());
            apply_limits(&node, limits)?;
            let path = node.dir.join("cgroup.procs");
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|source| CgroupError::Open { path, source })?;
            procs.push(OwnedFd::from(file));
        }
        Ok(procs)
    })();
    match result {
        Ok(procs) => Ok(JobCgroup {
            nodes: created,
            procs,
            identity: None,
        }),
        Err(e) => {
            for node in created.iter().rev() {
                if let Err(undo) = fs::remove_dir(&node.dir) {
                    tracing::warn!(error = %undo, "cannot remove job cgroup after a failed create");
                }
            }
            Err(e)
        }
    }
}

fn check_name(name: &str) -> Result<(), CgroupError> {
    if parse::valid_name(name) {
        Ok(())
    } else {
        Err(CgroupError::InvalidName {
            name: name.to_owned(),
        })
    }
}

/// Enables `controllers` for the children of the v2 group at `dir`, those
/// not enabled yet, one at a time so an error names the controller.
/// The leaf the daemon moves itself into on cgroup v2, beside its job
/// subtrees, so that its own cgroup holds no process and may pass controllers
/// to children (the layout systemd's `DelegateSubgroup=` sets up).
pub const DAEMON_LEAF: &str = "jobsd-daemon";

/// Enables the controllers for the children of the daemon's own v2 cgroup.
/// If the daemon's presence blocks that ("no internal processes"), the daemon
/// moves itself into [`DAEMON_LEAF`] and tries again; if other processes share
/// the cgroup, that still fails with [`CgroupError::ControllerBlocked`].
fn enable_in_own_cgroup(h: &Hierarchy) -> Result<(), CgroupError> {
    match enable_controllers(&h.own_dir, &h.controllers) {
        Err(CgroupError::ControllerBlocked { .. }) => {
            let leaf = h.own_dir.join(DAEMON_LEAF);
            match std::fs::create_dir(&leaf) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(source) => return Err(CgroupError::Create { path: leaf, source }),
            }
            fs::write(&leaf.join("cgroup.procs"), &std::process::id().to_string())?;
            tracing::info!(leaf = %leaf.display(), "moved jobsd into a leaf cgroup so that its own cgroup can hand controllers to job groups");
            enable_controllers(&h.own_dir, &h.controllers)
        }
        other => other,
    }
}

fn enable_controllers(dir: &Path, controllers: &[String]) -> Result<(), CgroupError> {
    let path = dir.join("cgroup.subtree_control");
    let enabled = parse::parse_v2_controllers(&fs::read(&path)?);
    for controller in controllers.iter().filter(|c| !enabled.contains(c)) {
        match fs::write(&path, &format!("+{controller}")) {
            Err(CgroupError::Write { source, .. })
                if source.raw_os_error() == Some(libc::EBUSY) =>
            {
                return Err(CgroupError::ControllerBlocked {
                    path,
                    controller: controller.clone(),
                    source,
                });
            }
            other => other?,
        }
    }
    Ok(())
}

fn apply_limits(node: &Node, limits: &Limits) -> Result<(), CgroupError> {
    for write in parse::limit_writes(node.flavor, node.caps, limits) {
        let path = node.dir.join(write.file);
        if write.only_if_present && !path.exists() {
            continue;
        }
        fs::write(&path, &write.value)?;
    }
    Ok(())
}

/// The processes listed in any of `nodes` (and their descendants).
fn all_procs(nodes: &[Node]) -> Result<Vec<i32>, CgroupError> {
    let mut pids = BTreeSet::new();
    for node in nodes {
        pids.extend(fs::procs_recursive(&node.dir)?);
    }
    Ok(pids.into_iter().collect())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Freezer {
    /// `freezer.state`: `FROZEN` / `THAWED`, reads `FREEZING` meanwhile.
    V1,
    /// `cgroup.freeze`: `1` / `0`; `cgroup.events` says `frozen 1` when done.
    V2,
}

/// Freeze, SIGKILL everything listed, thaw. The thaw is attempted even when
/// the kill failed, so a group is never left frozen by us.
fn kill_frozen(dir: &Path, freezer: Freezer) -> Result<(), CgroupError> {
    let (file, freeze, thaw) = match freezer {
        Freezer::V1 => ("freezer.state", "FROZEN", "THAWED"),
        Freezer::V2 => ("cgroup.freeze", "1", "0"),
    };
    let control = dir.join(file);
    fs::write(&control, freeze)?;
    let frozen = fs::wait_until(FREEZE_DEADLINE, || match freezer {
        Freezer::V1 => Ok(fs::read(&control)?.trim() == "FROZEN"),
        Freezer::V2 => {
            let events = dir.join("cgroup.events");
            let text = fs::read(&events)?;
            Ok(parse::keyed_value(&events, &text, "frozen")? == Some(1))
        }
    });
    let killed = frozen.and_then(|frozen| {
        if !frozen {
            tracing::warn!(group = %dir.display(), "cgroup did not freeze in time; killing it unfrozen");
        }
        fs::sigkill(dir, &fs::procs_recursive(dir)?)?;
        Ok(frozen)
    });
    let thawed = fs::write(&control, thaw);
    match killed? {
        true => thawed,
        // Not frozen: processes may have forked after the read.
        false => thawed.and_then(|()| kill_rounds(dir)),
    }
}

/// SIGKILLs what `cgroup.procs` lists until a read shows no process that an
/// earlier round did not already kill.
fn kill_rounds(dir: &Path) -> Result<(), CgroupError> {
    let mut killed = BTreeSet::new();
    for _ in 0..KILL_ROUNDS {
        let new: Vec<i32> = fs::procs_recursive(dir)?
            .into_iter()
            .filter(|pid| !killed.contains(pid))
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        fs::sigkill(dir, &new)?;
        killed.extend(new);
    }
    Ok(())
}

/// Kills and removes the job groups found in a subtree that is being
/// reused: they belong to a daemon that died.
fn remove_leftovers(subtree: &[Node]) -> Result<(), CgroupError> {
    let mut names = BTreeSet::new();
    for node in subtree {
        for dir in fs::child_dirs(&node.dir)? {
            if let Some(name) = dir.file_name() {
                names.insert(name.to_owned());
            }
        }
    }
    for name in names {
        let group = JobCgroup {
            nodes: subtree
                .iter()
                .map(|n| n.child(&name))
                .filter(|n| n.dir.is_dir())
                .collect(),
            procs: Vec::new(),
            identity: None,
        };
        let Some(first) = group.nodes.first().map(|n| n.dir.clone()) else {
            continue;
        };
        tracing::warn!(
            group = %first.display(),
            processes = all_procs(&group.nodes)?.len(),
            "removing a job cgroup left by an earlier jobsd"
        );
        group.kill()?;
        // A process may have left the hierarchy that kill() used (a root
        // job can move itself): SIGKILL whatever any hierarchy still lists.
        // Each pid is signalled right after the read that listed it.
        let emptied = fs::wait_until(LEFTOVER_DEADLINE, || {
            let pids = all_procs(&group.nodes)?;
            fs::sigkill(&first, &pids)?;
            Ok(pids.is_empty())
        })?;
        if !emptied {
            return Err(CgroupError::LeftoverBusy {
                path: first,
                pids: all_procs(&group.nodes)?,
            });
        }
        group.remove()?;
    }
    Ok(())
}

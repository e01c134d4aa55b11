//! Per-identity groups: `<subtree>/<owner>/<job>`, one group per identity
//! with running jobs, each with the same CPU weight, and the identity's
//! limits on all its jobs together.
//!
//! An identity's group is made by its first job's [`super::Cgroups::create_for`]
//! and removed when its last job's group is removed
//! ([`super::JobCgroup::remove`]). Both happen under one lock, with a count of
//! the identity's job groups, so a start racing the last job's removal
//! either counts itself first (the group stays) or finds the group gone and
//! makes it again; it never makes a job group in a directory being removed.
//!
//! Equal weights mean equal shares: the kernel divides CPU between sibling
//! groups that want it by weight (v2 `cpu.weight`, v1 `cpu.shares`), so an
//! identity with ten busy jobs gets what an identity with one gets. The
//! value is written, not left to the default, so that it holds whatever the
//! parent's configuration.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use super::parse::{Caps, Flavor, LimitWrite};
use super::{CgroupError, Limits, Node, fs};

/// `cpu.weight` of every identity group on v2: the kernel's default (range
/// 1–10000), the same for all, so identities share equally.
pub(super) const V2_WEIGHT: u32 = 100;
/// `cpu.shares` of every identity group on v1: the kernel's default 1024.
pub(super) const V1_SHARES: u32 = 1024;

/// The identity groups that exist, with how many job groups each holds.
/// Shared by [`super::Cgroups`] and every job group made under it.
#[derive(Debug, Default)]
pub(super) struct Registry {
    groups: Mutex<HashMap<String, usize>>,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, usize>> {
        // Every change is a single insert, update or remove: a panic cannot
        // leave the map half-changed.
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes (or reuses) the group `owner` under each of `subtree`, applies
    /// `limits` and the equal weight, and counts one more job group in it;
    /// then runs `make_job` with the identity's nodes, still under the lock.
    /// If `make_job` fails, the count is taken back (and a group made for it
    /// removed).
    ///
    /// On a group that already exists, a limit the kernel refuses (e.g. a
    /// memory limit below what its jobs use now) is logged and the old one
    /// stays: other jobs of the identity are running under it.
    pub(super) fn enter<T>(
        self: &Arc<Self>,
        subtree: &[Node],
        v2_controllers: Option<&[String]>,
        owner: &str,
        limits: &Limits,
        make_job: impl FnOnce(&[Node]) -> Result<T, CgroupError>,
    ) -> Result<(T, Release), CgroupError> {
        let nodes: Vec<Node> = subtree.iter().map(|n| n.child(owner)).collect();
        let mut groups = self.lock();
        let existing = groups.contains_key(owner);
        let mut created = Vec::new();
        let setup = (|| {
            for node in &nodes {
                match std::fs::create_dir(&node.dir) {
                    Ok(()) => created.push(node.clone()),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(source) => {
                        return Err(CgroupError::Create {
                            path: node.dir.clone(),
                            source,
                        });
                    }
                }
            }
            if let (Some(controllers), Some(first)) = (v2_controllers, nodes.first()) {
                super::enable_controllers(&first.dir, controllers)?;
            }
            for node in &nodes {
                apply(node, limits)
                    .or_else(|e| match existing {
                        true => {
                            tracing::warn!(group = %node.dir.display(), error = %e, "cannot change the identity's limits while its jobs run; the old ones stay");
                            Ok(())
                        }
                        false => Err(e),
                    })?;
            }
            make_job(&nodes)
        })();
        match setup {
            Ok(job) => {
                *groups.entry(owner.to_owned()).or_insert(0) += 1;
                Ok((
                    job,
                    Release {
                        registry: Arc::clone(self),
                        owner: owner.to_owned(),
                        nodes,
                    },
                ))
            }
            Err(e) => {
                if !existing {
                    for node in created.iter().rev() {
                        if let Err(undo) = fs::remove_dir(&node.dir) {
                            tracing::warn!(error = %undo, "cannot remove an identity cgroup after a failed create");
                        }
                    }
                }
                Err(e)
            }
        }
    }
}

/// One job group's place in its identity's group; [`Release::release`]
/// gives it back, removing the identity's group with its last job.
#[derive(Debug)]
pub(super) struct Release {
    registry: Arc<Registry>,
    owner: String,
    nodes: Vec<Node>,
}

impl Release {
    /// Counts the job group out (call after removing it); the last one out
    /// removes the identity's group. A group that cannot be removed is
    /// logged and kept for the identity's next job.
    pub(super) fn release(self) {
        let mut groups = self.registry.lock();
        let Some(count) = groups.get_mut(&self.owner) else {
            return;
        };
        *count = count.saturating_sub(1);
        if *count > 0 {
            return;
        }
        let mut removed = true;
        for node in &self.nodes {
            if let Err(e) = fs::remove_dir(&node.dir) {
                tracing::warn!(group = %node.dir.display(), error = %e, "cannot remove the identity's cgroup; kept for its next job");
                removed = false;
            }
        }
        if removed {
            groups.remove(&self.owner);
        }
    }

    /// The identity group's directories, for tests.
    #[cfg(test)]
    pub(super) fn dirs(&self) -> Vec<std::path::PathBuf> {
        self.nodes.iter().map(|n| n.dir.clone()).collect()
    }
}

/// Writes the identity's weight and limits to one of its directories; a
/// `None` limit is written as "no limit", so a reload that lifts a limit
/// lifts it.
fn apply(node: &Node, limits: &Limits) -> Result<(), CgroupError> {
    for write in writes(node.flavor, node.caps, limits) {
        let path = node.dir.join(write.file);
        if write.only_if_present && !path.exists() {
            continue;
        }
        fs::write(&path, &write.value)?;
    }
    Ok(())
}

/// The writes of [`apply`], in order.
pub(super) fn writes(flavor: Flavor, caps: Caps, limits: &Limits) -> Vec<LimitWrite> {
    let mut out = Vec::new();
    let set = |value: Option<u64>, unlimited: &str| {
        value.map_or_else(|| unlimited.to_owned(), |v| v.to_string())
    };
    if caps.cpu {
        out.push(match flavor {
            Flavor::V2 => LimitWrite::always("cpu.weight", V2_WEIGHT.to_string()),
            Flavor::V1 => LimitWrite::always("cpu.shares", V1_SHARES.to_string()),
        });
        let quota = limits.cpu_millis.map(super::parse::cpu_quota_usec);
        match flavor {
            Flavor::V2 => out.push(LimitWrite::always(
                "cpu.max",
                format!("{} {}", set(quota, "max"), super::parse::CPU_PERIOD_USEC),
            )),
            Flavor::V1 => {
                out.push(LimitWrite::always(
                    "cpu.cfs_period_us",
                    super::parse::CPU_PERIOD_USEC.to_string(),
                ));
                out.push(LimitWrite::always("cpu.cfs_quota_us", set(quota, "-1")));
            }
        }
    }
    if caps.memory {
        match flavor {
            Flavor::V2 => {
                out.push(LimitWrite::always(
                    "memory.max",
                    set(limits.memory_bytes, "max"),
                ));
            }
            Flavor::V1 => {
                // memsw may never be below limit_in_bytes: lift it, set the
                // memory limit, then set memsw to the same, so raising and
                // lowering both pass the kernel's check.
                out.push(LimitWrite::if_present(
                    "memory.memsw.limit_in_bytes",
                    "-1".to_owned(),
                ));
                out.push(LimitWrite::always(
                    "memory.limit_in_bytes",
                    set(limits.memory_bytes, "-1"),
                ));
                if let Some(bytes) = limits.memory_bytes {
                    out.push(LimitWrite::if_present(
                        "memory.memsw.limit_in_bytes",
                        bytes.to_string(),
                    ));
                }
            }
        }
    }
    if caps.pids {
        out.push(LimitWrite::always(
            "pids.max",
            set(limits.pids.map(u64::from), "max"),
        ));
    }
    out
}

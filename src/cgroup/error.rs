//! The one error type of the cgroup module.

use std::io;
use std::path::PathBuf;

/// Why a cgroup operation failed.
///
/// Every variant that touches a file names it; the OS error is the
/// [`source`](std::error::Error::source), not part of the message, so a caller
/// printing the cause chain shows each once. These messages hold server paths:
/// they are for the daemon's log, not for remote peers.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// `/proc/self/mountinfo` or `/proc/self/cgroup` could not be read.
    #[error("cannot read {path}")]
    Proc {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// Neither a cgroup2 file system nor a v1 hierarchy of a controller jobs
    /// use (memory, cpu, cpuacct, pids, blkio, freezer) is mounted.
    #[error(
        "no cgroup file system is mounted (neither cgroup2 nor a cgroup v1 hierarchy \
         of memory, cpu, cpuacct, pids, blkio or freezer)"
    )]
    NotMounted,

    /// This process's cgroup in a hierarchy lies outside every mount of that
    /// hierarchy (a mount shows only the subtree named by its root field, e.g.
    /// a container's bind mount of another group), so its directory cannot be
    /// reached.
    #[error("this process's {hierarchy} cgroup {cgroup} is not below any mount of that hierarchy")]
    NotVisible {
        /// The hierarchy: its controllers joined with `,`, or `cgroup2`.
        hierarchy: String,
        /// The cgroup path from `/proc/self/cgroup`.
        cgroup: String,
    },

    /// A subtree or job name is not a single safe path component: it must be
    /// 1 to 128 bytes of ASCII letters, digits, `-`, `_` and `.`, and must not
    /// start with `.`.
    #[error("invalid cgroup name {name:?}: use 1-128 of [A-Za-z0-9_.-], not starting with '.'")]
    InvalidName {
        /// The name as given.
        name: String,
    },

    /// A limit was asked for whose controller is not available in this
    /// layout (not mounted on v1, not in `cgroup.controllers` on v2). Nothing
    /// was created: a job is never started silently unlimited.
    #[error("a requested limit needs the {controller} cgroup controller, which is not available")]
    ControllerMissing {
        /// The controller: `memory`, `cpu`, `pids` or `io`.
        controller: &'static str,
    },

    /// cgroup v2 refused to enable a controller for the child groups of the
    /// daemon's own cgroup, because that cgroup holds processes other than
    /// the daemon (which moves itself out of the way): the "no internal
    /// processes" rule. Only the root cgroup is exempt.
    #[error(
        "cannot enable the {controller} controller in {path}: on cgroup v2 a cgroup other than \
         the root can pass controllers to child groups only while no process is in it (the \
         \"no internal processes\" rule), and other processes than jobsd are in it; run jobsd \
         in a cgroup of its own (e.g. a systemd service with Delegate=yes)"
    )]
    ControllerBlocked {
        /// The `cgroup.subtree_control` file written.
        path: PathBuf,
        /// The controller.
        controller: String,
        /// The OS error (EBUSY).
        #[source]
        source: io::Error,
    },

    /// A cgroup directory could not be created. `AlreadyExists` for a job
    /// group means a job of that name is still there.
    #[error("cannot create cgroup {path}")]
    Create {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// A cgroup file could not be opened.
    #[error("cannot open {path}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// A value was refused by a cgroup file (e.g. EINVAL for an io limit on a
    /// device that does not exist or is a partition).
    #[error("cannot write {value:?} to {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What was written.
        value: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// A cgroup file or directory could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// A cgroup file held something this module does not understand.
    #[error("unexpected contents in {path}: {found:?}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The offending text (at most 80 bytes of it).
        found: String,
    },

    /// SIGKILL could not be sent to a process of a group (EPERM: a process
    /// of another user in a group of ours). A process that is already gone
    /// is not an error.
    #[error("cannot kill process {pid} of cgroup {path}")]
    Signal {
        /// The process.
        pid: i32,
        /// The group it was listed in.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// inotify on `cgroup.events` could not be set up or read.
    #[error("cannot watch {path}")]
    Watch {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// A cgroup directory could not be removed. EBUSY: processes or child
    /// groups are still in it (after a short retry).
    #[error("cannot remove cgroup {path}")]
    Remove {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// A leftover job group of an earlier daemon still held processes after
    /// they were killed and the deadline passed (e.g. a process stuck in
    /// uninterruptible sleep). The daemon does not start beside it.
    #[error("leftover cgroup {path} still has processes {pids:?} after SIGKILL")]
    LeftoverBusy {
        /// The group.
        path: PathBuf,
        /// The processes still listed in it.
        pids: Vec<i32>,
    },
}

impl CgroupError {
    /// A [`CgroupError::Parse`] quoting at most 80 bytes of `found`.
    pub(super) fn parse(path: impl Into<PathBuf>, found: &str) -> Self {
        let mut end = found.len().min(80);
        while !found.is_char_boundary(end) {
            end -= 1;
        }
        CgroupError::Parse {
            path: path.into(),
            found: found[..end].to_owned(),
        }
    }
}

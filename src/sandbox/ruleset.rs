//! The Landlock ruleset of every contained job: the host's file system
//! read-only outside the job's private places, no TCP listening on the host,
//! and abstract Unix sockets and signals scoped to the job.
//!
//! Which parts a ruleset has follows from one number, the Landlock ABI that
//! `jobsd` found at start-up and passed on (see [`LandlockParts::for_abi`]):
//! the init asks the kernel for exactly those parts as a hard requirement, so
//! a kernel that offers less fails the job's setup rather than leaving a part
//! out silently.
//!
//! This module builds and applies the ruleset; `init.rs` calls [`apply`] in
//! the program's process, after the privilege drop and before seccomp.

use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd,
    Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope,
};

/// The highest Landlock ABI this build asks for. A newer kernel is used at
/// this level: its further rights (UDP rules, pathname-socket rules, …) are
/// not what the jobs' rules were written for.
pub const MAX_ABI: u8 = 7;

/// The parts of the Landlock sandbox an ABI level gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LandlockParts {
    /// File-system rules (ABI 1+): read-only host, writable private places.
    pub fs: bool,
    /// TCP bind rules (ABI 4+): no listening on the host network.
    pub net: bool,
    /// Abstract Unix socket and signal scopes (ABI 6+).
    pub scopes: bool,
}

impl LandlockParts {
    /// The parts at ABI `abi` (0: Landlock off).
    pub fn for_abi(abi: u8) -> Self {
        Self {
            fs: abi >= 1,
            net: abi >= 4,
            scopes: abi >= 6,
        }
    }
}

/// Directories the job may write beneath: its private tmpfs mounts (fresh
/// in its mount namespace) and its own terminals.
pub(crate) const PRIVATE_WRITABLE: [&str; 5] =
    ["/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/dev/pts"];

/// Character devices every job may open for writing (and use ioctls on):
/// the harmless ones programs expect to write to, and its own terminal.
pub(crate) const WRITABLE_DEVICES: [&str; 7] = [
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/tty",
    "/dev/ptmx",
    "/dev/random",
    "/dev/urandom",
];

/// Why a ruleset could not be applied.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApplyError {
    /// A directory the job must be able to write is missing.
    #[error("cannot open {}", path.display())]
    Path {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: landlock::PathFdError,
    },
    /// The kernel refused or does not offer a requested part.
    #[error("landlock")]
    Ruleset(#[from] landlock::RulesetError),
    /// The kernel enforced less than asked.
    #[error("landlock enforced only partly ({0:?})")]
    Partial(RulesetStatus),
}

impl ApplyError {
    /// The errno for the init's report.
    pub(crate) fn errno(&self) -> i32 {
        match self {
            ApplyError::Path { .. } => libc::ENOENT,
            ApplyError::Ruleset(_) | ApplyError::Partial(_) => libc::EOPNOTSUPP,
        }
    }
}

/// What one job's ruleset allows beyond the read-only host.
pub(crate) struct JobRules<'a> {
    /// The ABI level `jobsd` decided on (1..=[`MAX_ABI`]).
    pub(crate) abi: u8,
    /// May bind TCP ports (the `listen` permit).
    pub(crate) allow_listen: bool,
    /// Host directories shared writable by the operator (`--writable`).
    pub(crate) writable: &'a [PathBuf],
    /// The job's private home, when it has one.
    pub(crate) home: Option<&'a Path>,
    /// Whether `/proc` is the job's own (a PID namespace): then its files
    /// are writable, as `unshare -r` needs for `/proc/self/uid_map`.
    pub(crate) own_proc: bool,
}

/// Restricts the calling process (and everything it executes) to `rules`.
/// Needs `no_new_privs` (set before by the privilege drop).
///
/// # Errors
/// [`ApplyError`]: a private or shared directory cannot be opened, the
/// kernel lacks a part of ABI `rules.abi`, or enforced less than asked.
pub(crate) fn apply(rules: &JobRules<'_>) -> Result<(), ApplyError> {
    let abi = ABI::from(i32::from(rules.abi.min(MAX_ABI)));
    let parts = LandlockParts::for_abi(rules.abi);
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessFs::from_all(abi))?;
    if parts.net && !rules.allow_listen {
        // Handled with no port allowed: every bind(2) of a TCP socket is
        // refused with EACCES. connect(2) is not handled and stays free.
        ruleset = ruleset.handle_access(AccessNet::BindTcp)?;
    }
    if parts.scopes {
        ruleset = ruleset.scope(Scope::from_all(abi))?;
    }
    let read: BitFlags<AccessFs> = AccessFs::from_read(abi);
    let all = AccessFs::from_all(abi);
    let device = AccessFs::from_file(abi) & !BitFlags::from(AccessFs::Execute);
    let mut created = ruleset
        .create()?
        .add_rule(PathBeneath::new(open("/")?, read))?;
    for dir in PRIVATE_WRITABLE {
        if Path::new(dir).is_dir() {
            created = created.add_rule(PathBeneath::new(open(dir)?, all))?;
        }
    }
    for dev in WRITABLE_DEVICES {
        // /dev/tty opens only with a controlling terminal; the others may
        // be missing on a minimal host. A missing device is nothing to grant.
        if let Ok(fd) = PathFd::new(dev) {
            created = created.add_rule(PathBeneath::new(fd, device))?;
        }
    }
    if rules.own_proc {
        created = created.add_rule(PathBeneath::new(open("/proc")?, read | AccessFs::WriteFile))?;
    }
    for dir in rules
        .writable
        .iter()
        .map(PathBuf::as_path)
        .chain(rules.home)
    {
        created = created.add_rule(PathBeneath::new(open(dir)?, all))?;
    }
    let status = created.restrict_self()?;
    if status.ruleset != RulesetStatus::FullyEnforced {
        return Err(ApplyError::Partial(status.ruleset));
    }
    Ok(())
}

fn open(path: impl AsRef<Path>) -> Result<PathFd, ApplyError> {
    PathFd::new(path.as_ref()).map_err(|source| ApplyError::Path {
        path: path.as_ref().to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_follow_the_abi() {
        assert_eq!(
            LandlockParts::for_abi(0),
            LandlockParts {
                fs: false,
                net: false,
                scopes: false
            }
        );
        assert_eq!(
            LandlockParts::for_abi(3),
            LandlockParts {
                fs: true,
                net: false,
                scopes: false
            }
        );
        assert_eq!(
            LandlockParts::for_abi(5),
            LandlockParts {
                fs: true,
                net: true,
                scopes: false
            }
        );
        assert_eq!(
            LandlockParts::for_abi(7),
            LandlockParts {
                fs: true,
                net: true,
                scopes: true
            }
        );
    }
}

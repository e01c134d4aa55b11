//! Resource limits a job runs under, what it used, and whom it runs as.
//!
//! The engine decides *which* limits and account apply (the request's limits
//! checked against the daemon's ceilings, the owner mapped to an account);
//! the executor enforces them (see [`crate::exec`]).

use std::fmt;
use std::path::PathBuf;

use super::JobError;
pub use crate::limits::{
    CeilingOverrides, JobPermits, JobQuota, MAX_PIDS, MIN_CPU_MILLIS, MIN_MEMORY_BYTES, MIN_PIDS,
    Override, ResourceLimits, human_bytes,
};

/// One resource a limit applies to, for error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource {
    /// [`ResourceLimits::memory_bytes`].
    Memory,
    /// [`ResourceLimits::cpu_millis`].
    Cpu,
    /// [`ResourceLimits::pids`].
    Pids,
    /// [`ResourceLimits::io_read_bps`].
    IoRead,
    /// [`ResourceLimits::io_write_bps`].
    IoWrite,
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Resource::Memory => "memory_bytes",
            Resource::Cpu => "cpu_millis",
            Resource::Pids => "pids",
            Resource::IoRead => "io_read_bps",
            Resource::IoWrite => "io_write_bps",
        })
    }
}

impl Resource {
    /// ` (4.0 MiB)`, ` (0.500 cores)`: `value` in the unit people use, in
    /// parentheses after the wire value; empty for counts.
    pub fn gloss(self, value: u64) -> String {
        match self {
            Resource::Memory => format!(" ({})", human_bytes(value)),
            Resource::IoRead | Resource::IoWrite => format!(" ({}/s)", human_bytes(value)),
            Resource::Cpu => format!(" ({}.{:03} cores)", value / 1000, value % 1000),
            Resource::Pids => String::new(),
        }
    }
}

impl ResourceLimits {
    /// The limits a job gets when it asks for `self`: each field the request
    /// leaves unset takes the ceiling's value.
    ///
    /// # Errors
    /// [`JobError::LimitTooSmall`] for a value below the minimum (see the
    /// `MIN_*` constants; 0 included); [`JobError::LimitAboveCeiling`] for a
    /// value above `ceiling`.
    pub fn resolve(&self, ceiling: &ResourceLimits) -> Result<ResourceLimits, JobError> {
        Ok(ResourceLimits {
            memory_bytes: pick(
                Resource::Memory,
                self.memory_bytes,
                ceiling.memory_bytes,
                MIN_MEMORY_BYTES,
            )?,
            cpu_millis: pick(
                Resource::Cpu,
                self.cpu_millis.map(u64::from),
                ceiling.cpu_millis.map(u64::from),
                MIN_CPU_MILLIS.into(),
            )?
            .map(|v| v as u32), // ≤ a u32 ceiling or a u32 request
            pids: pick(
                Resource::Pids,
                self.pids.map(u64::from),
                ceiling.pids.map(u64::from),
                MIN_PIDS.into(),
            )
            .and_then(|p| {
                // Also without a ceiling: the kernel refuses more.
                match p {
                    Some(asked) if asked > MAX_PIDS.into() => Err(JobError::LimitAboveCeiling {
                        resource: Resource::Pids,
                        asked,
                        max: MAX_PIDS.into(),
                    }),
                    p => Ok(p),
                }
            })?
            .map(|v| v as u32), // ≤ a u32 ceiling or a u32 request
            io_read_bps: pick(Resource::IoRead, self.io_read_bps, ceiling.io_read_bps, 1)?,
            io_write_bps: pick(
                Resource::IoWrite,
                self.io_write_bps,
                ceiling.io_write_bps,
                1,
            )?,
        })
    }
}

fn pick(
    resource: Resource,
    asked: Option<u64>,
    ceiling: Option<u64>,
    min: u64,
) -> Result<Option<u64>, JobError> {
    match (asked, ceiling) {
        (None, ceiling) => Ok(ceiling),
        (Some(v), _) if v < min => Err(JobError::LimitTooSmall {
            resource,
            asked: v,
            min,
        }),
        (Some(v), Some(max)) if v > max => Err(JobError::LimitAboveCeiling {
            resource,
            asked: v,
            max,
        }),
        (Some(v), _) => Ok(Some(v)),
    }
}

/// A local account jobs run as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    /// The login name, from passwd(5).
    pub name: String,
    /// Its user id.
    pub uid: u32,
    /// Its primary group id. Jobs get no supplementary groups.
    pub gid: u32,
    /// Its home directory, given to jobs as `HOME`.
    pub home: PathBuf,
    /// True for an account made for one identity (a uid of the daemon's
    /// range, no passwd(5) entry): each of its jobs gets a private, empty
    /// home of its own, made by the job's init, instead of `home` on the
    /// host.
    pub private_home: bool,
}

/// Why an account cannot run jobs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccountError {
    /// No such user in passwd(5).
    #[error("no local account named '{0}'")]
    Unknown(String),
    /// The lookup itself failed.
    #[error("cannot look up account '{name}'")]
    Lookup {
        /// The name looked up.
        name: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// uid 0 or gid 0 without the explicit permission to run jobs as root.
    #[error(
        "account '{0}' is root (uid or gid 0); jobs run as root only if root is explicitly allowed"
    )]
    Root(String),
}

impl Account {
    /// Looks `name` up in the system's user database (getpwnam(3)).
    ///
    /// # Errors
    /// [`AccountError::Unknown`], [`AccountError::Lookup`], and
    /// [`AccountError::Root`] for uid 0 or gid 0 unless `allow_root`.
    pub fn lookup(name: &str, allow_root: bool) -> Result<Account, AccountError> {
        let user = nix::unistd::User::from_name(name)
            .map_err(|e| AccountError::Lookup {
                name: name.to_owned(),
                source: e.into(),
            })?
            .ok_or_else(|| AccountError::Unknown(name.to_owned()))?;
        if !allow_root && (user.uid.is_root() || user.gid.as_raw() == 0) {
            return Err(AccountError::Root(name.to_owned()));
        }
        Ok(Account {
            name: user.name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            home: user.dir,
            private_home: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ceiling() -> ResourceLimits {
        ResourceLimits {
            memory_bytes: Some(1 << 30),
            cpu_millis: Some(1000),
            pids: Some(512),
            io_read_bps: None,
            io_write_bps: None,
        }
    }

    #[test]
    fn unset_fields_take_the_ceiling() {
        assert_eq!(
            ResourceLimits::default().resolve(&ceiling()).unwrap(),
            ceiling()
        );
    }

    #[test]
    fn lower_limits_are_taken_as_asked() {
        let asked = ResourceLimits {
            memory_bytes: Some(64 << 20),
            cpu_millis: Some(200),
            pids: Some(64),
            io_read_bps: Some(1_000_000),
            io_write_bps: None,
        };
        assert_eq!(asked.resolve(&ceiling()).unwrap(), asked);
    }

    #[test]
    fn a_limit_above_the_ceiling_is_refused() {
        // Scenario: a user asks for more memory than the operator allows.
        let asked = ResourceLimits {
            memory_bytes: Some((1 << 30) + 1),
            ..Default::default()
        };
        let err = asked.resolve(&ceiling()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "memory_bytes 1073741825 (1.0 GiB) is above the server's ceiling of 1073741824 (1.0 GiB)"
        );
        let asked = ResourceLimits {
            pids: Some(513),
            ..Default::default()
        };
        assert!(matches!(
            asked.resolve(&ceiling()),
            Err(JobError::LimitAboveCeiling {
                resource: Resource::Pids,
                asked: 513,
                max: 512
            })
        ));
    }

    #[test]
    fn zero_and_tiny_limits_are_refused() {
        for (asked, resource) in [
            (
                ResourceLimits {
                    memory_bytes: Some(0),
                    ..Default::default()
                },
                Resource::Memory,
            ),
            (
                ResourceLimits {
                    cpu_millis: Some(9),
                    ..Default::default()
                },
                Resource::Cpu,
            ),
            (
                ResourceLimits {
                    pids: Some(1),
                    ..Default::default()
                },
                Resource::Pids,
            ),
            (
                ResourceLimits {
                    io_write_bps: Some(0),
                    ..Default::default()
                },
                Resource::IoWrite,
            ),
        ] {
            match asked.resolve(&ceiling()) {
                Err(JobError::LimitTooSmall { resource: r, .. }) => assert_eq!(r, resource),
                other => panic!("{resource}: {other:?}"),
            }
        }
    }

    #[test]
    fn pids_stop_at_the_kernels_maximum() {
        // Scenario: with no pids ceiling, a request for 2^32-1 processes is
        // refused up front instead of failing in the cgroup write.
        let asked = ResourceLimits {
            pids: Some(u32::MAX),
            ..Default::default()
        };
        assert!(matches!(
            asked.resolve(&ResourceLimits::default()),
            Err(JobError::LimitAboveCeiling {
                resource: Resource::Pids,
                max: 4194304,
                ..
            })
        ));
        let most = ResourceLimits {
            pids: Some(MAX_PIDS),
            ..Default::default()
        };
        assert_eq!(most.resolve(&ResourceLimits::default()).unwrap(), most);
    }

    #[test]
    fn an_unlimited_ceiling_takes_any_valid_request() {
        let asked = ResourceLimits {
            memory_bytes: Some(u64::MAX),
            ..Default::default()
        };
        assert_eq!(asked.resolve(&ResourceLimits::default()).unwrap(), asked);
    }

    #[test]
    fn root_is_refused_unless_allowed() {
        // Scenario: an operator maps users to root by mistake.
        assert!(matches!(
            Account::lookup("root", false),
            Err(AccountError::Root(_))
        ));
        assert_eq!(Account::lookup("root", true).unwrap().uid, 0);
        assert!(matches!(
            Account::lookup("no-such-user-here", false),
            Err(AccountError::Unknown(_))
        ));
    }

    #[test]
    fn overrides_replace_only_their_fields() {
        let o = CeilingOverrides {
            memory_bytes: Override::Limit(2 << 30),
            pids: Override::Unlimited,
            ..Default::default()
        };
        assert_eq!(
            o.apply(&ceiling()),
            ResourceLimits {
                memory_bytes: Some(2 << 30),
                cpu_millis: Some(1000),
                pids: None,
                io_read_bps: None,
                io_write_bps: None,
            }
        );
        assert_eq!(CeilingOverrides::default().apply(&ceiling()), ceiling());
    }
}

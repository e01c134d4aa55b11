//! What the kernel offers the job sandbox, and what `jobsd` decides to use:
//! detected once at start-up, logged one line per part, and passed to every
//! init, which fails the job's setup rather than do less than decided.

use std::path::{Path, PathBuf};

use super::ruleset::{LandlockParts, MAX_ABI, PRIVATE_WRITABLE};
use super::{BindHook, seccomp, sys};

/// What the running kernel (and this build) offers, as detected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelSupport {
    /// Seccomp filters returning errors, or why not.
    pub seccomp: Result<(), String>,
    /// The kernel's Landlock ABI version, or why there is none.
    pub landlock_abi: Result<u32, String>,
    /// Cgroup namespaces (`/proc/self/ns/cgroup` exists; Linux 4.6+).
    pub cgroup_namespace: bool,
    /// The bind hook ([`BindHook`]) loads and a cgroup2 hierarchy is
    /// mounted for it to attach to, or why not.
    pub bind_hook: Result<(), String>,
}

impl KernelSupport {
    /// Asks the kernel: `seccomp(SECCOMP_GET_ACTION_AVAIL)`,
    /// `landlock_create_ruleset(…VERSION)`, `/proc/self/ns/cgroup`, loading
    /// the bind hook and `/proc/self/mountinfo` for a cgroup2 mount.
    pub fn detect() -> Self {
        let seccomp = match seccomp::target_arch() {
            None => Err(format!(
                "this build has no system-call table for {}",
                std::env::consts::ARCH
            )),
            Some(_) => sys::seccomp_errno_available()
                .map_err(|e| format!("the kernel runs no seccomp filters ({e})")),
        };
        let landlock_abi = match sys::landlock_abi_version() {
            Ok(abi) => Ok(abi),
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                Err("Landlock is built into the kernel but not enabled at boot (lsm=)".into())
            }
            Err(e) => Err(format!("the kernel has no Landlock ({e})")),
        };
        let bind_hook = match BindHook::load() {
            Err(e) => Err(format!(
                "the kernel loads no cgroup socket-address programs ({e})"
            )),
            Ok(_) if !cgroup2_mounted() => {
                Err("no cgroup2 hierarchy is mounted for its programs to attach to".into())
            }
            Ok(_) => Ok(()),
        };
        Self {
            seccomp,
            landlock_abi,
            cgroup_namespace: Path::new("/proc/self/ns/cgroup").exists(),
            bind_hook,
        }
    }
}

/// Whether `/proc/self/mountinfo` lists a `cgroup2` file system.
fn cgroup2_mounted() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|text| {
        text.lines().any(|line| {
            line.split_once(" - ")
                .is_some_and(|(_, fs)| fs.starts_with("cgroup2 "))
        })
    })
}

/// What every contained job gets, as decided at start-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxPlan {
    /// Install the seccomp filter.
    pub seccomp: bool,
    /// The Landlock ABI level to require (0: none); see
    /// [`LandlockParts::for_abi`].
    pub landlock_abi: u8,
    /// A cgroup namespace and a masked `/sys/fs/cgroup`.
    pub cgroup_namespace: bool,
    /// Attach the bind hook to every job's group without the `listen`
    /// permit on the host network.
    pub bind_hook: bool,
    /// Host directories shared writable with every job (`--writable`),
    /// checked by [`check_writable`].
    pub writable: Vec<PathBuf>,
}

/// One line of the start-up report: a sandbox part, on or off, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartLine {
    /// The part, e.g. `seccomp filter`.
    pub part: &'static str,
    /// Whether jobs get it.
    pub on: bool,
    /// What it does when on; why it is off otherwise.
    pub detail: String,
}

/// Why the sandbox cannot be set up as asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// `--containment on` and the kernel lacks parts of the sandbox.
    #[error("--containment on needs the whole job sandbox, and this kernel lacks: {}", missing.join("; "))]
    Missing {
        /// One entry per missing part, with why.
        missing: Vec<String>,
    },
    /// This build cannot filter system calls on this CPU; no mode runs
    /// contained jobs without the filter.
    #[error(
        "no seccomp filter for the {arch} architecture in this build: refusing to run jobs unfiltered"
    )]
    UnsupportedArch {
        /// `std::env::consts::ARCH`.
        arch: &'static str,
    },
    /// A `--writable` directory is unusable.
    #[error("--writable {}: {reason}", path.display())]
    Writable {
        /// The path as given.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

impl SandboxPlan {
    /// Decides from `support`: every part the kernel offers is on. With
    /// `require_all` (`--containment on`) any missing part is an error; else
    /// missing parts are off, and said so in the report lines.
    ///
    /// # Errors
    /// [`SandboxError::Missing`] (with `require_all`),
    /// [`SandboxError::UnsupportedArch`] in every mode.
    pub fn decide(
        support: &KernelSupport,
        require_all: bool,
        writable: Vec<PathBuf>,
    ) -> Result<(Self, Vec<PartLine>), SandboxError> {
        if seccomp::target_arch().is_none() {
            return Err(SandboxError::UnsupportedArch {
                arch: std::env::consts::ARCH,
            });
        }
        let abi = match &support.landlock_abi {
            Ok(abi) => u8::try_from(*abi).unwrap_or(MAX_ABI).min(MAX_ABI),
            Err(_) => 0,
        };
        let plan = Self {
            seccomp: support.seccomp.is_ok(),
            landlock_abi: abi,
            cgroup_namespace: support.cgroup_namespace,
            bind_hook: support.bind_hook.is_ok(),
            writable,
        };
        let lines = plan.lines(support);
        let missing: Vec<String> = lines
            .iter()
            .filter(|l| !l.on)
            .map(|l| format!("{} ({})", l.part, l.detail))
            .collect();
        if require_all && !missing.is_empty() {
            return Err(SandboxError::Missing { missing });
        }
        Ok((plan, lines))
    }

    /// The plan this kernel allows without requiring anything, sharing no
    /// directory: what tests and benchmarks run jobs with.
    ///
    /// # Panics
    /// On a CPU this build has no seccomp filter for.
    pub fn detected() -> Self {
        match Self::decide(&KernelSupport::detect(), false, Vec::new()) {
            Ok((plan, _)) => plan,
            Err(e) => panic!("{e}"),
        }
    }

    /// One line per part, in a fixed order.
    fn lines(&self, support: &KernelSupport) -> Vec<PartLine> {
        let parts = LandlockParts::for_abi(self.landlock_abi);
        let landlock_off = |need: u8| match &support.landlock_abi {
            Err(why) => why.clone(),
            Ok(abi) => format!("the kernel's Landlock ABI is {abi}; this needs {need}"),
        };
        let groups: Vec<&str> = seccomp::ALWAYS.iter().map(|g| g.name).collect();
        let shared = if self.writable.is_empty() {
            "none".to_owned()
        } else {
            self.writable
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        vec![
            PartLine {
                part: "seccomp filter",
                on: self.seccomp,
                detail: match &support.seccomp {
                    Ok(()) => format!(
                        "refused with EPERM: {}, mount, setns, unshare/clone with namespace flags (unless the user_namespaces permit), odd personalities, other ABIs; clone3 answers ENOSYS",
                        groups.join(", ")
                    ),
                    Err(why) => why.clone(),
                },
            },
            PartLine {
                part: "landlock filesystem",
                on: parts.fs,
                detail: if parts.fs {
                    format!(
                        "ABI {}: the host is read-only outside {}, the private home and the usual character devices; shared writable: {shared}",
                        self.landlock_abi,
                        PRIVATE_WRITABLE.join(", ")
                    )
                } else {
                    landlock_off(1)
                },
            },
            PartLine {
                part: "landlock network",
                on: parts.net,
                detail: if parts.net {
                    "jobs cannot bind TCP ports (listen) unless permitted; outbound connections stay allowed".into()
                } else {
                    landlock_off(4)
                },
            },
            PartLine {
                part: "bind hook",
                on: self.bind_hook,
                detail: match &support.bind_hook {
                    Ok(()) => "jobs cannot bind a named port of any protocol (UDP included) on the host network unless permitted; port 0 and outbound traffic stay allowed".into(),
                    Err(why) => why.clone(),
                },
            },
            PartLine {
                part: "landlock scopes",
                on: parts.scopes,
                detail: if parts.scopes {
                    "abstract Unix sockets and signals do not reach outside the job".into()
                } else {
                    landlock_off(6)
                },
            },
            PartLine {
                part: "capabilities",
                on: true,
                detail: "empty bounding, ambient and inheritable sets for the init and the program"
                    .into(),
            },
            PartLine {
                part: "cgroup namespace",
                on: self.cgroup_namespace,
                detail: if self.cgroup_namespace {
                    "jobs see only their own cgroup in /proc/self/cgroup and /sys/fs/cgroup".into()
                } else {
                    "the kernel has no cgroup namespaces (Linux 4.6+)".into()
                },
            },
        ]
    }
}

/// Checks a `--writable` directory: absolute, an existing directory, and
/// not under a place every job gets its own of (there the job would find an
/// empty tmpfs instead, and fail to start).
///
/// # Errors
/// [`SandboxError::Writable`] saying what is wrong.
pub fn check_writable(path: &Path) -> Result<PathBuf, SandboxError> {
    let bad = |reason: &str| SandboxError::Writable {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    if !path.is_absolute() {
        return Err(bad("not an absolute path"));
    }
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Err(bad("not a directory")),
        Err(e) => return Err(bad(&format!("cannot be used ({e})"))),
    }
    if let Some(private) = PRIVATE_WRITABLE
        .iter()
        .chain(&["/proc", "/sys/fs/cgroup"])
        .find(|p| path.starts_with(p))
    {
        return Err(bad(&format!(
            "is under {private}, which jobs get a private one of (or must not write)"
        )));
    }
    Ok(path.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> KernelSupport {
        KernelSupport {
            seccomp: Ok(()),
            landlock_abi: Ok(7),
            cgroup_namespace: true,
            bind_hook: Ok(()),
        }
    }

    #[test]
    fn everything_on_when_the_kernel_has_everything() {
        let (plan, lines) = SandboxPlan::decide(&full(), true, vec![]).unwrap();
        assert_eq!(
            plan,
            SandboxPlan {
                seccomp: true,
                landlock_abi: 7,
                cgroup_namespace: true,
                bind_hook: true,
                writable: vec![]
            }
        );
        assert!(lines.iter().all(|l| l.on), "{lines:?}");
        assert_eq!(lines.len(), 7);
    }

    #[test]
    fn a_newer_kernel_is_used_at_the_known_abi() {
        let support = KernelSupport {
            landlock_abi: Ok(9),
            ..full()
        };
        let (plan, _) = SandboxPlan::decide(&support, true, vec![]).unwrap();
        assert_eq!(plan.landlock_abi, MAX_ABI);
    }

    // Scenario: `--containment on` on a kernel without Landlock must refuse
    // to start and name what is missing.
    #[test]
    fn on_refuses_and_names_what_is_missing() {
        let support = KernelSupport {
            seccomp: Err("no filters".into()),
            landlock_abi: Ok(3),
            cgroup_namespace: true,
            bind_hook: Err("no cgroup2 hierarchy is mounted".into()),
        };
        let err = SandboxPlan::decide(&support, true, vec![])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "--containment on needs the whole job sandbox, and this kernel lacks: seccomp filter (no filters); landlock network (the kernel's Landlock ABI is 3; this needs 4); bind hook (no cgroup2 hierarchy is mounted); landlock scopes (the kernel's Landlock ABI is 3; this needs 6)"
        );
    }

    // Scenario: `--containment auto` on the same kernel starts, with the
    // missing parts off and said so.
    #[test]
    fn auto_turns_off_what_is_missing() {
        let support = KernelSupport {
            seccomp: Ok(()),
            landlock_abi: Err("the kernel has no Landlock (ENOSYS)".into()),
            cgroup_namespace: false,
            bind_hook: Ok(()),
        };
        let (plan, lines) = SandboxPlan::decide(&support, false, vec![]).unwrap();
        assert_eq!(plan.landlock_abi, 0);
        assert!(plan.seccomp && !plan.cgroup_namespace);
        let off: Vec<&str> = lines.iter().filter(|l| !l.on).map(|l| l.part).collect();
        assert_eq!(
            off,
            [
                "landlock filesystem",
                "landlock network",
                "landlock scopes",
                "cgroup namespace"
            ]
        );
        assert_eq!(lines[1].detail, "the kernel has no Landlock (ENOSYS)");
    }

    // Scenario: an operator's typo or a private place in --writable is
    // refused at start-up with a clear reason.
    #[test]
    fn writable_directories_are_checked() {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "").unwrap();
        let cases = [
            (PathBuf::from("rel/dir"), "not an absolute path".to_owned()),
            (file.clone(), "not a directory".to_owned()),
            (
                dir.path().to_owned(),
                "is under /var/tmp, which jobs get a private one of (or must not write)".to_owned(),
            ),
        ];
        for (path, reason) in cases {
            match check_writable(&path) {
                Err(SandboxError::Writable { reason: r, .. }) => assert_eq!(r, reason),
                other => panic!("{}: {other:?}", path.display()),
            }
        }
        assert!(
            matches!(check_writable(Path::new("/nonexistent-jobs-dir")), Err(SandboxError::Writable { reason, .. }) if reason.starts_with("cannot be used"))
        );
        assert_eq!(
            check_writable(Path::new("/usr")).unwrap(),
            PathBuf::from("/usr")
        );
    }
}

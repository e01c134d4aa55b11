//! Pure functions over the text of `/proc/self/mountinfo`, `/proc/self/cgroup`
//! and cgroup files, and the limit values to write. No I/O here, so every
//! layout can be tested with fake inputs.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use super::error::CgroupError;
use super::{Hierarchy, IoLimit, Layout, Limits};

/// The v1 controllers jobs use, in the order they are reported.
pub(super) const V1_CONTROLLERS: [&str; 6] =
    ["memory", "cpu", "cpuacct", "pids", "blkio", "freezer"];

/// The v2 controllers enabled for the job subtree on pure v2.
pub(super) const V2_CONTROLLERS: [&str; 4] = ["memory", "cpu", "pids", "io"];

/// The CFS period written with every CPU limit, in µs: the kernel default
/// (100 ms), short enough that a capped job's latency stays reasonable.
pub(super) const CPU_PERIOD_USEC: u64 = 100_000;

/// The smallest CFS quota written, in µs: the kernel refuses quotas below
/// 1 ms, so `cpu_millis` below 10 is rounded up to 1 % of a core.
pub(super) const CPU_MIN_QUOTA_USEC: u64 = 1_000;

/// One cgroup mount from `/proc/self/mountinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct CgroupMount {
    /// `None` for cgroup2; for v1 the controllers named in the super options
    /// (only real controllers, not `rw`, `name=…` or other flags).
    pub(super) v1_controllers: Option<Vec<String>>,
    /// The mount's root field: the cgroup shown at the mount point.
    pub(super) root: String,
    /// Where it is mounted.
    pub(super) mount_point: PathBuf,
}

/// All v1 controllers the kernel knows; super options that are not in this
/// list are mount flags (`rw`, `noprefix`, `clone_children`, `xattr`, …).
const KNOWN_V1_CONTROLLERS: [&str; 14] = [
    "cpuset",
    "cpu",
    "cpuacct",
    "blkio",
    "memory",
    "devices",
    "freezer",
    "net_cls",
    "perf_event",
    "net_prio",
    "hugetlb",
    "pids",
    "rdma",
    "misc",
];

/// The cgroup mounts in mountinfo text (proc(5)): `ID PARENT MAJ:MIN ROOT
/// MOUNT_POINT OPTIONS [OPTIONAL…] - FSTYPE SOURCE SUPER_OPTIONS`. Lines of
/// other file systems and malformed lines are skipped.
pub(super) fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    text.lines().filter_map(parse_mountinfo_line).collect()
}

fn parse_mountinfo_line(line: &str) -> Option<CgroupMount> {
    let fields: Vec<&str> = line.split(' ').collect();
    // The optional fields end at the first lone "-" after the sixth field.
    let dash = fields.iter().skip(6).position(|f| *f == "-")? + 6;
    let fstype = *fields.get(dash + 1)?;
    let super_options = *fields.get(dash + 3)?;
    let root = String::from_utf8_lossy(&unescape(fields.get(3)?)).into_owned();
    let mount_point = PathBuf::from(OsString::from_vec(unescape(fields.get(4)?)));
    let v1_controllers = match fstype {
        "cgroup2" => None,
        "cgroup" => Some(
            super_options
                .split(',')
                .filter(|o| KNOWN_V1_CONTROLLERS.contains(o))
                .map(str::to_owned)
                .collect(),
        ),
        _ => return None,
    };
    Some(CgroupMount {
        v1_controllers,
        root,
        mount_point,
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\011`, `\012`,
/// `\134`) in a path field.
fn unescape(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|digits| bytes[i] == b'\\' && digits.iter().all(|d| (b'0'..=b'7').contains(d)))
            .and_then(|digits| {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                u8::try_from(value).ok()
            });
        match octal {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}

/// One line of `/proc/self/cgroup` (cgroups(7)): `ID:CONTROLLERS:PATH`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Membership {
    /// The controllers of the hierarchy (e.g. `cpu`, `cpuacct`, or
    /// `name=systemd`); empty for the v2 line `0::/path`.
    pub(super) controllers: Vec<String>,
    /// The cgroup, absolute within the hierarchy (as this process's cgroup
    /// namespace sees it).
    pub(super) path: String,
}

/// The lines of `/proc/self/cgroup`; malformed lines are skipped.
pub(super) fn parse_proc_cgroup(text: &str) -> Vec<Membership> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let _id = parts.next()?;
            let controllers = parts.next()?;
            let path = parts.next()?;
            Some(Membership {
                controllers: controllers
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(str::to_owned)
                    .collect(),
                path: path.to_owned(),
            })
        })
        .collect()
}

/// The directory of `cgroup` (a path from `/proc/self/cgroup`) under a mount
/// whose root field is `root`, or `None` if the mount does not show it.
fn dir_under_mount(mount_point: &Path, root: &str, cgroup: &str) -> Option<PathBuf> {
    let relative = Path::new(cgroup).strip_prefix(root).ok()?;
    if relative.as_os_str().is_empty() {
        // join("") would add a trailing slash.
        return Some(mount_point.to_path_buf());
    }
    Some(mount_point.join(relative))
}

/// Decides the layout from the text of `/proc/self/mountinfo` and
/// `/proc/self/cgroup`. v1 hierarchies of the controllers jobs use make it
/// [`Layout::V1`] (hybrid when a cgroup2 mount is there too); otherwise a
/// cgroup2 mount makes it [`Layout::V2`], with its controllers left empty
/// for the caller to read from `cgroup.controllers`.
pub(super) fn layout_from(mountinfo: &str, proc_cgroup: &str) -> Result<Layout, CgroupError> {
    let mounts = parse_mountinfo(mountinfo);
    let memberships = parse_proc_cgroup(proc_cgroup);

    let unified = match memberships.iter().find(|m| m.controllers.is_empty()) {
        None => None,
        Some(member) => {
            let v2_mounts: Vec<&CgroupMount> = mounts
                .iter()
                .filter(|m| m.v1_controllers.is_none())
                .collect();
            if v2_mounts.is_empty() {
                None
            } else {
                let found = v2_mounts.iter().find_map(|m| {
                    dir_under_mount(&m.mount_point, &m.root, &member.path).map(|own_dir| {
                        Hierarchy {
                            controllers: Vec::new(),
                            mount_point: m.mount_point.clone(),
                            own_dir,
                        }
                    })
                });
                Some(found.ok_or_else(|| CgroupError::NotVisible {
                    hierarchy: "cgroup2".to_owned(),
                    cgroup: member.path.clone(),
                })?)
            }
        }
    };

    let mut hierarchies: Vec<Hierarchy> = Vec::new();
    for mount in &mounts {
        let Some(all) = &mount.v1_controllers else {
            continue;
        };
        let used: Vec<String> = V1_CONTROLLERS
            .iter()
            .filter(|c| all.iter().any(|a| a == *c))
            .map(|c| (*c).to_owned())
            .collect();
        if used.is_empty()
            || hierarchies
                .iter()
                .any(|h| h.controllers.iter().any(|c| used.contains(c)))
        {
            // Not ours, or a second mount (bind mount) of a hierarchy that an
            // earlier mount already shows.
            continue;
        }
        let Some(member) = memberships
            .iter()
            .find(|m| m.controllers.iter().any(|c| used.contains(c)))
        else {
            continue;
        };
        let visible = mounts
            .iter()
            .filter(|m| m.v1_controllers.as_ref() == Some(all));
        let own_dir = visible
            .filter_map(|m| dir_under_mount(&m.mount_point, &m.root, &member.path).map(|d| (m, d)))
            .next();
        let Some((shown_by, own_dir)) = own_dir else {
            return Err(CgroupError::NotVisible {
                hierarchy: used.join(","),
                cgroup: member.path.clone(),
            });
        };
        hierarchies.push(Hierarchy {
            controllers: used,
            mount_point: shown_by.mount_point.clone(),
            own_dir,
        });
    }

    if !hierarchies.is_empty() {
        Ok(Layout::V1 {
            hierarchies,
            unified,
        })
    } else if let Some(unified) = unified {
        Ok(Layout::V2(unified))
    } else {
        Err(CgroupError::NotMounted)
    }
}

/// The controllers of a v2 `cgroup.controllers` or `cgroup.subtree_control`
/// file (space separated) that jobs use, in [`V2_CONTROLLERS`] order.
pub(super) fn parse_v2_controllers(text: &str) -> Vec<String> {
    let listed: Vec<&str> = text.split_whitespace().collect();
    V2_CONTROLLERS
        .iter()
        .filter(|c| listed.contains(c))
        .map(|c| (*c).to_owned())
        .collect()
}

/// The kind of hierarchy a group directory is in: its interface files differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Flavor {
    /// cgroup v1: `memory.limit_in_bytes`, `cpu.cfs_quota_us`, …
    V1,
    /// cgroup v2: `memory.max`, `cpu.max`, `cgroup.kill`, `cgroup.events`, …
    V2,
}

/// Which controllers' files exist in a group directory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Caps {
    pub(super) memory: bool,
    pub(super) cpu: bool,
    pub(super) cpuacct: bool,
    pub(super) pids: bool,
    /// v1 `blkio` or v2 `io`.
    pub(super) io: bool,
    /// v1 `freezer` (v2 has `cgroup.freeze` in every group instead).
    pub(super) freezer: bool,
}

impl Caps {
    pub(super) fn from_controllers(controllers: &[String]) -> Caps {
        let has = |name: &str| controllers.iter().any(|c| c == name);
        Caps {
            memory: has("memory"),
            cpu: has("cpu"),
            cpuacct: has("cpuacct"),
            pids: has("pids"),
            io: has("blkio") || has("io"),
            freezer: has("freezer"),
        }
    }
}

/// One write of a limit: `value` into `file` of the job's group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct LimitWrite {
    /// The interface file, relative to the group directory.
    pub(super) file: &'static str,
    /// What to write (one kernel command).
    pub(super) value: String,
    /// Written only if the file exists (swap accounting may be off).
    pub(super) only_if_present: bool,
}

impl LimitWrite {
    pub(super) fn always(file: &'static str, value: String) -> Self {
        LimitWrite {
            file,
            value,
            only_if_present: false,
        }
    }

    pub(super) fn if_present(file: &'static str, value: String) -> Self {
        LimitWrite {
            file,
            value,
            only_if_present: true,
        }
    }
}

/// The CFS quota for `cpu_millis` thousandths of a core, in µs per
/// [`CPU_PERIOD_USEC`], at least [`CPU_MIN_QUOTA_USEC`].
pub(super) fn cpu_quota_usec(cpu_millis: u32) -> u64 {
    (u64::from(cpu_millis) * CPU_PERIOD_USEC / 1000).max(CPU_MIN_QUOTA_USEC)
}

/// The writes that apply `limits` to a group of this flavor holding these
/// controllers, in the order they must happen. `None` limits write nothing.
pub(super) fn limit_writes(flavor: Flavor, caps: Caps, limits: &Limits) -> Vec<LimitWrite> {
    let mut writes = Vec::new();
    if let (Some(bytes), true) = (limits.memory_bytes, caps.memory) {
        match flavor {
            Flavor::V2 => {
                writes.push(LimitWrite::always("memory.max", bytes.to_string()));
                // Without swap.max a job over its limit is pushed to swap
                // instead of being stopped.
                writes.push(LimitWrite::if_present("memory.swap.max", "0".to_owned()));
            }
            Flavor::V1 => {
                // memsw (memory + swap) must never be below limit_in_bytes:
                // the kernel refuses either write that would break that, so
                // memory first, then memsw to the same value.
                writes.push(LimitWrite::always(
                    "memory.limit_in_bytes",
                    bytes.to_string(),
                ));
                writes.push(LimitWrite::if_present(
                    "memory.memsw.limit_in_bytes",
                    bytes.to_string(),
                ));
            }
        }
    }
    if let (Some(millis), true) = (limits.cpu_millis, caps.cpu) {
        let quota = cpu_quota_usec(millis);
        match flavor {
            Flavor::V2 => writes.push(LimitWrite::always(
                "cpu.max",
                format!("{quota} {CPU_PERIOD_USEC}"),
            )),
            Flavor::V1 => {
                writes.push(LimitWrite::always(
                    "cpu.cfs_period_us",
                    CPU_PERIOD_USEC.to_string(),
                ));
                writes.push(LimitWrite::always("cpu.cfs_quota_us", quota.to_string()));
            }
        }
    }
    if let (Some(pids), true) = (limits.pids, caps.pids) {
        writes.push(LimitWrite::always("pids.max", pids.to_string()));
    }
    if caps.io {
        for io in &limits.io {
            writes.extend(io_writes(flavor, io));
        }
    }
    writes
}

fn io_writes(flavor: Flavor, io: &IoLimit) -> Vec<LimitWrite> {
    let device = format!("{}:{}", io.major, io.minor);
    match flavor {
        Flavor::V2 => {
            let mut value = device;
            if let Some(bps) = io.read_bps {
                value.push_str(&format!(" rbps={bps}"));
            }
            if let Some(bps) = io.write_bps {
                value.push_str(&format!(" wbps={bps}"));
            }
            if io.read_bps.is_none() && io.write_bps.is_none() {
                return Vec::new();
            }
            vec![LimitWrite::always("io.max", value)]
        }
        Flavor::V1 => {
            let mut writes = Vec::new();
            if let Some(bps) = io.read_bps {
                writes.push(LimitWrite::always(
                    "blkio.throttle.read_bps_device",
                    format!("{device} {bps}"),
                ));
            }
            if let Some(bps) = io.write_bps {
                writes.push(LimitWrite::always(
                    "blkio.throttle.write_bps_device",
                    format!("{device} {bps}"),
                ));
            }
            writes
        }
    }
}

/// The value of `key` in a flat-keyed file (`key value` per line), as in
/// `cpu.stat`, `memory.events`, `memory.oom_control` and `cgroup.events`.
/// `Ok(None)` when the key is absent; an error when its value is not a
/// number.
pub(super) fn keyed_value(path: &Path, text: &str, key: &str) -> Result<Option<u64>, CgroupError> {
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        if parts.next() == Some(key) {
            let value = parts.next().unwrap_or("");
            return value
                .parse()
                .map(Some)
                .map_err(|_| CgroupError::parse(path, line));
        }
    }
    Ok(None)
}

/// A file holding one number (`memory.max_usage_in_bytes`, `cpuacct.usage`,
/// `memory.peak`).
pub(super) fn single_value(path: &Path, text: &str) -> Result<u64, CgroupError> {
    text.trim()
        .parse()
        .map_err(|_| CgroupError::parse(path, text))
}

/// The process ids in a `cgroup.procs` file, one per line.
pub(super) fn pids(path: &Path, text: &str) -> Result<Vec<i32>, CgroupError> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.trim().parse().map_err(|_| CgroupError::parse(path, l)))
        .collect()
}

/// True when `name` is a safe single path component for a cgroup: 1 to 128
/// bytes of `[A-Za-z0-9_.-]`, not starting with `.` (so never `.` or `..`).
pub(super) fn valid_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine: v1 controllers each in its own hierarchy, the memory
    /// cgroup nested, a named systemd hierarchy, and an empty cgroup2 mount.
    const HYBRID_MOUNTINFO: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
23 27 0:22 / /sys rw,relatime - sysfs sysfs rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const HYBRID_CGROUP: &str = "\
9:name=systemd:/
8:pids:/
7:blkio:/
6:freezer:/
5:devices:/
4:memory:/process_api/5626d6743719b7f463eae9229f5e604e
3:cpuset:/
2:cpuacct:/
1:cpu:/
0::/
";

    /// A systemd machine on pure cgroup v2 (optional field `shared:9`).
    const V2_MOUNTINFO: &str = "\
24 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw
25 24 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:2 - sysfs sysfs rw
30 25 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";
    const V2_CGROUP: &str = "0::/system.slice/jobsd.service\n";

    /// An older systemd host: cpu and cpuacct co-mounted, symlinks beside.
    const COMOUNT_MOUNTINFO: &str = "\
25 18 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
27 25 0:24 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
30 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,cpu,cpuacct
31 25 0:28 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,memory
32 25 0:29 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,pids
33 25 0:30 / /sys/fs/cgroup/blkio rw,nosuid,nodev,noexec,relatime shared:17 - cgroup cgroup rw,blkio
34 25 0:31 / /sys/fs/cgroup/freezer rw,nosuid,nodev,noexec,relatime shared:18 - cgroup cgroup rw,freezer
";
    const COMOUNT_CGROUP: &str = "\
12:freezer:/
8:blkio:/system.slice/jobsd.service
6:pids:/system.slice/jobsd.service
4:memory:/system.slice/jobsd.service
3:cpu,cpuacct:/system.slice/jobsd.service
1:name=systemd:/system.slice/jobsd.service
0::/system.slice/jobsd.service
";

    fn h(controllers: &[&str], mount: &str, own: &str) -> Hierarchy {
        Hierarchy {
            controllers: controllers.iter().map(|c| (*c).to_owned()).collect(),
            mount_point: PathBuf::from(mount),
            own_dir: PathBuf::from(own),
        }
    }

    // Scenario: this machine; the memory hierarchy's own group is nested, the
    // others are the root; cpuset, devices and name=systemd are not used.
    #[test]
    fn hybrid_layout_of_this_machine() {
        let layout = layout_from(HYBRID_MOUNTINFO, HYBRID_CGROUP).unwrap();
        let expected = Layout::V1 {
            hierarchies: vec![
                h(&["cpu"], "/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu"),
                h(
                    &["cpuacct"],
                    "/sys/fs/cgroup/cpuacct",
                    "/sys/fs/cgroup/cpuacct",
                ),
                h(
                    &["memory"],
                    "/sys/fs/cgroup/memory",
                    "/sys/fs/cgroup/memory/process_api/5626d6743719b7f463eae9229f5e604e",
                ),
                h(
                    &["freezer"],
                    "/sys/fs/cgroup/freezer",
                    "/sys/fs/cgroup/freezer",
                ),
                h(&["blkio"], "/sys/fs/cgroup/blkio", "/sys/fs/cgroup/blkio"),
                h(&["pids"], "/sys/fs/cgroup/pids", "/sys/fs/cgroup/pids"),
            ],
            unified: Some(h(&[], "/sys/fs/cgroup/unified", "/sys/fs/cgroup/unified")),
        };
        assert_eq!(layout, expected);
        assert_eq!(
            layout.to_string(),
            "cgroup v1 (hybrid): cpu, cpuacct, memory, freezer, blkio, pids; \
             v2 at /sys/fs/cgroup/unified for kill"
        );
    }

    // Scenario: pure v2 under systemd; the optional mountinfo field must not
    // shift the fields after the "-" separator.
    #[test]
    fn pure_v2_layout() {
        let layout = layout_from(V2_MOUNTINFO, V2_CGROUP).unwrap();
        assert_eq!(
            layout,
            Layout::V2(h(
                &[],
                "/sys/fs/cgroup",
                "/sys/fs/cgroup/system.slice/jobsd.service"
            ))
        );
        assert_eq!(layout.to_string(), "cgroup v2 at /sys/fs/cgroup");
        let Layout::V2(mut hierarchy) = layout else {
            unreachable!()
        };
        hierarchy.controllers =
            parse_v2_controllers("cpuset cpu io memory hugetlb pids rdma misc\n");
        assert_eq!(hierarchy.controllers, ["memory", "cpu", "pids", "io"]);
        assert_eq!(
            Layout::V2(hierarchy).to_string(),
            "cgroup v2 at /sys/fs/cgroup (memory, cpu, pids, io)"
        );
    }

    // Scenario: cpu and cpuacct share one hierarchy (one directory holds both
    // controllers' files); the /proc/self/cgroup line names both.
    #[test]
    fn comounted_cpu_cpuacct() {
        let layout = layout_from(COMOUNT_MOUNTINFO, COMOUNT_CGROUP).unwrap();
        let own = "/system.slice/jobsd.service";
        let expected = Layout::V1 {
            hierarchies: vec![
                h(
                    &["cpu", "cpuacct"],
                    "/sys/fs/cgroup/cpu,cpuacct",
                    &format!("/sys/fs/cgroup/cpu,cpuacct{own}"),
                ),
                h(
                    &["memory"],
                    "/sys/fs/cgroup/memory",
                    &format!("/sys/fs/cgroup/memory{own}"),
                ),
                h(
                    &["pids"],
                    "/sys/fs/cgroup/pids",
                    &format!("/sys/fs/cgroup/pids{own}"),
                ),
                h(
                    &["blkio"],
                    "/sys/fs/cgroup/blkio",
                    &format!("/sys/fs/cgroup/blkio{own}"),
                ),
                h(
                    &["freezer"],
                    "/sys/fs/cgroup/freezer",
                    "/sys/fs/cgroup/freezer",
                ),
            ],
            unified: Some(h(
                &[],
                "/sys/fs/cgroup/unified",
                &format!("/sys/fs/cgroup/unified{own}"),
            )),
        };
        assert_eq!(layout, expected);
        assert_eq!(
            layout.to_string(),
            "cgroup v1 (hybrid): cpu+cpuacct, memory, pids, blkio, freezer; \
             v2 at /sys/fs/cgroup/unified for kill"
        );
    }

    // Scenario: pure v1 (no cgroup2 mount): kill must use the freezer.
    #[test]
    fn pure_v1_layout_display() {
        let mountinfo: String = COMOUNT_MOUNTINFO
            .lines()
            .filter(|l| !l.contains("cgroup2"))
            .map(|l| format!("{l}\n"))
            .collect();
        let layout = layout_from(&mountinfo, COMOUNT_CGROUP).unwrap();
        assert!(matches!(&layout, Layout::V1 { unified: None, .. }));
        assert_eq!(
            layout.to_string(),
            "cgroup v1: cpu+cpuacct, memory, pids, blkio, freezer; no cgroup2 mount (kill by freezer)"
        );
    }

    // Scenario: a container bind-mounts its own memory group at the usual
    // place; the mount's root field is that group, so the own directory is
    // the mount point itself, not mount point + full path.
    #[test]
    fn mount_root_is_stripped() {
        let mountinfo = "\
50 40 0:32 /docker/abc /sys/fs/cgroup/memory ro,nosuid - cgroup cgroup rw,memory
";
        let cgroup = "4:memory:/docker/abc/jobs\n";
        let layout = layout_from(mountinfo, cgroup).unwrap();
        assert_eq!(
            layout,
            Layout::V1 {
                hierarchies: vec![h(
                    &["memory"],
                    "/sys/fs/cgroup/memory",
                    "/sys/fs/cgroup/memory/jobs"
                )],
                unified: None,
            }
        );
    }

    // Scenario: the only mount of a hierarchy shows a group that does not
    // contain ours; we must not guess a directory we do not own.
    #[test]
    fn own_group_outside_the_mount_is_an_error() {
        let mountinfo =
            "50 40 0:32 /docker/abc /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        let cgroup = "4:memory:/docker/abcdef\n";
        let err = layout_from(mountinfo, cgroup).unwrap_err();
        assert!(
            matches!(&err, CgroupError::NotVisible { hierarchy, cgroup } if hierarchy == "memory" && cgroup == "/docker/abcdef"),
            "{err:?}"
        );
        let v2 = "30 25 0:26 /other /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let err = layout_from(v2, "0::/mine\n").unwrap_err();
        assert!(matches!(err, CgroupError::NotVisible { .. }), "{err:?}");
    }

    // Scenario: the same hierarchy mounted twice; the first mount that shows
    // our group wins and the hierarchy is listed once.
    #[test]
    fn bind_mounted_hierarchy_counted_once() {
        let mountinfo = "\
50 40 0:32 /elsewhere /mnt/a rw - cgroup cgroup rw,pids
51 40 0:32 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
52 40 0:32 / /mnt/b rw - cgroup cgroup rw,pids
";
        let layout = layout_from(mountinfo, "8:pids:/x\n").unwrap();
        assert_eq!(
            layout,
            Layout::V1 {
                hierarchies: vec![h(&["pids"], "/sys/fs/cgroup/pids", "/sys/fs/cgroup/pids/x")],
                unified: None,
            }
        );
    }

    #[test]
    fn nothing_mounted() {
        let err = layout_from("27 1 254:0 / / rw - ext4 /dev/vda rw\n", "0::/\n").unwrap_err();
        assert!(matches!(err, CgroupError::NotMounted), "{err:?}");
        // Only hierarchies of controllers jobs do not use.
        let mountinfo = "34 31 0:31 / /sys/fs/cgroup/cpuset rw - cgroup cgroup rw,cpuset\n";
        let err = layout_from(mountinfo, "3:cpuset:/\n").unwrap_err();
        assert!(matches!(err, CgroupError::NotMounted), "{err:?}");
    }

    #[test]
    fn mountinfo_escapes_and_flags() {
        let text = "60 31 0:40 / /mnt/my\\040cgroups rw - cgroup cgroup rw,noprefix,cpu,release_agent=/x,clone_children\n\
                    garbage line\n\
                    61 31 0:41 / /mnt/v2 rw - cgroup2 none rw\n";
        assert_eq!(
            parse_mountinfo(text),
            vec![
                CgroupMount {
                    v1_controllers: Some(vec!["cpu".to_owned()]),
                    root: "/".to_owned(),
                    mount_point: PathBuf::from("/mnt/my cgroups"),
                },
                CgroupMount {
                    v1_controllers: None,
                    root: "/".to_owned(),
                    mount_point: PathBuf::from("/mnt/v2"),
                },
            ]
        );
        assert_eq!(unescape("a\\134b\\011"), b"a\\b\t");
        assert_eq!(unescape("trailing\\04"), b"trailing\\04");
    }

    #[test]
    fn proc_cgroup_lines() {
        let parsed = parse_proc_cgroup("3:cpu,cpuacct:/a:b\n1:name=systemd:/\n0::/\nbad\n");
        assert_eq!(
            parsed,
            vec![
                Membership {
                    controllers: vec!["cpu".into(), "cpuacct".into()],
                    path: "/a:b".into()
                },
                Membership {
                    controllers: vec!["name=systemd".into()],
                    path: "/".into()
                },
                Membership {
                    controllers: vec![],
                    path: "/".into()
                },
            ]
        );
    }

    fn all_caps() -> Caps {
        Caps {
            memory: true,
            cpu: true,
            cpuacct: true,
            pids: true,
            io: true,
            freezer: true,
        }
    }

    fn writes(flavor: Flavor, caps: Caps, limits: &Limits) -> Vec<(&'static str, String, bool)> {
        limit_writes(flavor, caps, limits)
            .into_iter()
            .map(|w| (w.file, w.value, w.only_if_present))
            .collect()
    }

    fn full_limits() -> Limits {
        Limits {
            memory_bytes: Some(64 << 20),
            cpu_millis: Some(1500),
            pids: Some(100),
            io: vec![
                IoLimit {
                    major: 8,
                    minor: 0,
                    read_bps: Some(1_000_000),
                    write_bps: Some(2_000_000),
                },
                IoLimit {
                    major: 254,
                    minor: 16,
                    read_bps: None,
                    write_bps: Some(5),
                },
            ],
        }
    }

    #[test]
    fn v2_limit_files() {
        assert_eq!(
            writes(Flavor::V2, all_caps(), &full_limits()),
            vec![
                ("memory.max", "67108864".to_owned(), false),
                ("memory.swap.max", "0".to_owned(), true),
                ("cpu.max", "150000 100000".to_owned(), false),
                ("pids.max", "100".to_owned(), false),
                ("io.max", "8:0 rbps=1000000 wbps=2000000".to_owned(), false),
                ("io.max", "254:16 wbps=5".to_owned(), false),
            ]
        );
    }

    // Scenario: v1 memsw must follow limit_in_bytes (memsw >= memory at all
    // times), and the CFS period is written before the quota.
    #[test]
    fn v1_limit_files_in_order() {
        assert_eq!(
            writes(Flavor::V1, all_caps(), &full_limits()),
            vec![
                ("memory.limit_in_bytes", "67108864".to_owned(), false),
                ("memory.memsw.limit_in_bytes", "67108864".to_owned(), true),
                ("cpu.cfs_period_us", "100000".to_owned(), false),
                ("cpu.cfs_quota_us", "150000".to_owned(), false),
                ("pids.max", "100".to_owned(), false),
                (
                    "blkio.throttle.read_bps_device",
                    "8:0 1000000".to_owned(),
                    false
                ),
                (
                    "blkio.throttle.write_bps_device",
                    "8:0 2000000".to_owned(),
                    false
                ),
                (
                    "blkio.throttle.write_bps_device",
                    "254:16 5".to_owned(),
                    false
                ),
            ]
        );
    }

    // Scenario: unset limits and directories without the controller write
    // nothing (the group inherits), and an io entry without rates is skipped.
    #[test]
    fn no_limits_no_writes() {
        assert!(writes(Flavor::V1, all_caps(), &Limits::default()).is_empty());
        assert!(writes(Flavor::V2, Caps::default(), &full_limits()).is_empty());
        let only_memory = Caps {
            memory: true,
            ..Caps::default()
        };
        assert_eq!(writes(Flavor::V1, only_memory, &full_limits()).len(), 2);
        let empty_io = Limits {
            io: vec![IoLimit {
                major: 8,
                minor: 0,
                read_bps: None,
                write_bps: None,
            }],
            ..Limits::default()
        };
        assert!(writes(Flavor::V2, all_caps(), &empty_io).is_empty());
        assert!(writes(Flavor::V1, all_caps(), &empty_io).is_empty());
    }

    #[test]
    fn cpu_quota_bounds() {
        assert_eq!(cpu_quota_usec(1000), 100_000);
        assert_eq!(cpu_quota_usec(250), 25_000);
        assert_eq!(cpu_quota_usec(10), 1_000);
        assert_eq!(cpu_quota_usec(1), 1_000);
        assert_eq!(cpu_quota_usec(0), 1_000);
        // No overflow at the top of the range.
        assert_eq!(cpu_quota_usec(u32::MAX), u64::from(u32::MAX) * 100);
    }

    #[test]
    fn counters() {
        let p = Path::new("x");
        let cpu_stat = "usage_usec 123456\nuser_usec 100000\nsystem_usec 23456\n";
        assert_eq!(
            keyed_value(p, cpu_stat, "usage_usec").unwrap(),
            Some(123_456)
        );
        assert_eq!(keyed_value(p, cpu_stat, "nr_throttled").unwrap(), None);
        let oom_control = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        assert_eq!(keyed_value(p, oom_control, "oom_kill").unwrap(), Some(2));
        let events = "low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(keyed_value(p, events, "oom_kill").unwrap(), Some(1));
        assert_eq!(
            keyed_value(p, "populated 0\nfrozen 0\n", "populated").unwrap(),
            Some(0)
        );
        assert!(matches!(
            keyed_value(p, "populated yes\n", "populated"),
            Err(CgroupError::Parse { .. })
        ));
        assert_eq!(
            single_value(p, "9223372036854771712\n").unwrap(),
            9_223_372_036_854_771_712
        );
        assert!(single_value(p, "max\n").is_err());
        assert_eq!(pids(p, "12\n345\n").unwrap(), vec![12, 345]);
        assert_eq!(pids(p, "").unwrap(), Vec::<i32>::new());
        assert!(pids(p, "12\nx\n").is_err());
    }

    #[test]
    fn names() {
        for good in [
            "jobsd-1a2b3c4d5e6f7a8b",
            "0f8e2a4c-1d2e-4f00-8abc-0123456789ab",
            "a",
            "a.b_c",
        ] {
            assert!(valid_name(good), "{good}");
        }
        let long = "a".repeat(129);
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "a b",
            "a\nb",
            "é",
            long.as_str(),
        ] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn parse_error_quotes_at_most_80_bytes() {
        let text = "é".repeat(100);
        let CgroupError::Parse { found, .. } = CgroupError::parse("x", &text) else {
            unreachable!()
        };
        assert!(found.len() <= 80);
        assert!(text.starts_with(&found));
    }
}

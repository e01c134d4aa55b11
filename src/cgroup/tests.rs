//! Tests of the cgroup module against the real kernel (as root) and against
//! a fake tree in a temporary directory (without root).
//!
//! Real tests make a subtree named after the test and this process's pid
//! beneath this process's own cgroups, so parallel tests do not collide, and
//! a [`Cleanup`] guard kills and removes whatever is left even when an
//! assertion fails. The test process becomes a child subreaper so the
//! orphaned grandchildren of a killed job are reparented to it and reaped
//! here, instead of becoming zombies under a PID 1 that may never reap them.

use std::io::{BufRead as _, BufReader};
use std::os::fd::OwnedFd;
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use nix::sys::wait::waitpid;
use nix::unistd::Pid;

use super::*;

mod identity;

/// Generous bound for a kill to take effect; measured: about a millisecond.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// A test that needs another cgroup layout than this host's says why on
/// stderr and passes; with `JOBS_NO_SKIPS` set (`.ci/run` sets it: the CI
/// host has every layout these tests need) it fails instead.
fn layout_skip(test: &str, why: &str) {
    assert!(
        std::env::var_os("JOBS_NO_SKIPS").is_none(),
        "{test}: {why}, and JOBS_NO_SKIPS forbids skipping"
    );
    eprintln!("skipping {test}: {why}");
}

/// The detected layout. Only root-only tests call this (marked ignored
/// unless built as root, see `build.rs`); a host without cgroups fails them.
fn real_layout() -> Layout {
    assert!(
        nix::unistd::geteuid().is_root(),
        "needs root to create cgroups (this build was made as root, or the test was run with --include-ignored)"
    );
    Layout::detect().unwrap_or_else(|e| panic!("cannot detect the cgroup layout: {e:?}"))
}

fn subtree_name(test: &str) -> String {
    format!("jobsd-test-{test}-{}", std::process::id())
}

fn become_subreaper() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| nix::sys::prctl::set_child_subreaper(true).unwrap());
}

/// Kills and removes a test's subtree when dropped, whatever happened.
struct Cleanup(Vec<PathBuf>);

impl Cleanup {
    fn new(layout: &Layout, name: &str) -> Self {
        Cleanup(
            layout
                .own_nodes()
                .iter()
                .map(|n| n.dir.join(name))
                .collect(),
        )
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for dir in &self.0 {
            let _ = fs::wait_until(Duration::from_secs(2), || {
                let pids = fs::procs_recursive(dir)?;
                fs::sigkill(dir, &pids)?;
                Ok(pids.is_empty())
            });
            if let Err(e) = fs::remove_tree(dir) {
                eprintln!("test cleanup: {e:?}");
            }
        }
    }
}

/// Starts `program` with the hook that places the child into `job` before
/// exec.
fn spawn_in(
    job: &JobCgroup,
    program: &str,
    args: &[&str],
    configure: impl FnOnce(&mut Command),
) -> Child {
    // The hook must own what it uses ('static); duplicates of the
    // descriptors, close-on-exec like the originals, are dropped with the
    // Command.
    let fds: Vec<OwnedFd> = job
        .procs_files()
        .iter()
        .map(|fd| fd.try_clone().unwrap())
        .collect();
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .env_clear();
    configure(&mut command);
    // SAFETY: the hook runs in the forked child before exec, where only
    // async-signal-safe calls are allowed: it calls write(2) on descriptors
    // it owns, and iterating the Vec allocates nothing.
    unsafe {
        command.pre_exec(move || {
            for fd in &fds {
                nix::unistd::write(fd, b"0")?;
            }
            Ok(())
        });
    }
    command.spawn().unwrap()
}

/// The shell workload of the brief, plus a line on stdout once both
/// background processes are forked (and so in the group).
fn spawn_workload(job: &JobCgroup) -> Child {
    let mut child = spawn_in(
        job,
        "/bin/sh",
        &["-c", "sleep 100 & setsid sleep 100 & echo ready; sleep 100"],
        |c| {
            c.stdout(Stdio::piped());
        },
    );
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ready\n");
    child
}

/// Reaps `child` and the processes it left (reparented to us, the
/// subreaper). Returns the child's exit status.
fn reap(mut child: Child, others: &[i32]) -> std::process::ExitStatus {
    let status = child.wait().unwrap();
    // The child's orphans were reparented to us before its exit was
    // reported, so each is our child now (or was reaped already: ECHILD).
    for &pid in others.iter().filter(|&&p| p != child.id() as i32) {
        let _ = waitpid(Pid::from_raw(pid), None);
    }
    status
}

/// The directory `pid` is in, per hierarchy of `layout`, from
/// `/proc/<pid>/cgroup` (mounts here have root `/`).
fn dirs_of(pid: i32, layout: &Layout) -> Vec<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let lines = parse::parse_proc_cgroup(&text);
    let dir = |h: &Hierarchy, v2: bool| {
        let line = lines
            .iter()
            .find(|l| {
                if v2 {
                    l.controllers.is_empty()
                } else {
                    l.controllers.contains(&h.controllers[0])
                }
            })
            .unwrap();
        h.mount_point.join(line.path.trim_start_matches('/'))
    };
    match layout {
        Layout::V2(h) => vec![dir(h, true)],
        Layout::V1 {
            hierarchies,
            unified,
        } => hierarchies
            .iter()
            .map(|h| dir(h, false))
            .chain(unified.iter().map(|h| dir(h, true)))
            .collect(),
    }
}

fn read_trimmed(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap().trim().to_owned()
}

/// A bandwidth limit on the whole disk holding `/`, if it is one (v1
/// blkio refuses partitions).
fn root_disk_limit() -> Option<IoLimit> {
    let dev = nix::sys::stat::stat("/").unwrap().st_dev;
    let (major, minor) = (
        nix::sys::stat::major(dev) as u32,
        nix::sys::stat::minor(dev) as u32,
    );
    let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    (sys.exists() && !sys.join("partition").exists()).then_some(IoLimit {
        major,
        minor,
        read_bps: Some(1 << 20),
        write_bps: Some(2 << 20),
    })
}

// Scenario: the whole life of a job group on this machine's real layout:
// limits land in the files before anything runs, the child and its
// background and setsid'd children are in the group in every hierarchy, the
// kill takes them all, the wait sees it, usage has counters, and removal and
// close leave nothing behind.
#[tokio::test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn job_group_life() {
    let layout = real_layout();
    become_subreaper();
    let name = subtree_name("job_group_life");
    let _cleanup = Cleanup::new(&layout, &name);
    let cgroups = Cgroups::open(layout.clone(), &name).unwrap();
    println!("{}", cgroups.layout());

    let io = root_disk_limit();
    let limits = Limits {
        memory_bytes: Some(64 << 20),
        cpu_millis: Some(500),
        pids: Some(64),
        io: io.into_iter().collect(),
    };
    let job = cgroups.create("job-1", &limits).unwrap();
    assert_eq!(job.procs_files().len(), job.paths().len());

    let mut checked = 0;
    for node in &job.nodes {
        let file = |f: &str| read_trimmed(&node.dir.join(f));
        match node.flavor {
            Flavor::V1 => {
                if node.caps.memory {
                    assert_eq!(file("memory.limit_in_bytes"), "67108864");
                    if node.dir.join("memory.memsw.limit_in_bytes").exists() {
                        assert_eq!(file("memory.memsw.limit_in_bytes"), "67108864");
                    }
                    checked += 1;
                }
                if node.caps.cpu {
                    assert_eq!(file("cpu.cfs_period_us"), "100000");
                    assert_eq!(file("cpu.cfs_quota_us"), "50000");
                    checked += 1;
                }
                if node.caps.pids {
                    assert_eq!(file("pids.max"), "64");
                    checked += 1;
                }
                if let (true, Some(io)) = (node.caps.io, io) {
                    let dev = format!("{}:{}", io.major, io.minor);
                    assert_eq!(
                        file("blkio.throttle.read_bps_device"),
                        format!("{dev} 1048576")
                    );
                    assert_eq!(
                        file("blkio.throttle.write_bps_device"),
                        format!("{dev} 2097152")
                    );
                    checked += 1;
                }
            }
            Flavor::V2 if node.caps.memory => {
                assert_eq!(file("memory.max"), "67108864");
                assert_eq!(file("cpu.max"), "50000 100000");
                assert_eq!(file("pids.max"), "64");
                checked += 3;
            }
            Flavor::V2 => {}
        }
    }
    assert!(checked >= 3, "no limit file was checked");

    let child = spawn_workload(&job);
    let pids = all_procs(&job.nodes).unwrap();
    assert!(
        pids.len() >= 3,
        "sh and its two background children: {pids:?}"
    );
    for &pid in &pids {
        assert_eq!(dirs_of(pid, &layout), job.paths(), "process {pid}");
    }

    let start = Instant::now();
    job.kill().unwrap();
    tokio::time::timeout(KILL_TIMEOUT, job.wait_empty())
        .await
        .expect("the group did not empty")
        .unwrap();
    println!("kill to empty: {:?}", start.elapsed());
    let status = reap(child, &pids);
    assert_eq!(status.signal(), Some(libc::SIGKILL));

    let usage = job.usage().unwrap();
    println!("{usage:?}");
    assert!(usage.cpu_usec.unwrap() > 0, "{usage:?}");
    assert!(usage.peak_memory_bytes.unwrap() > 0, "{usage:?}");
    assert_eq!(usage.oom_kills, 0);

    let paths = job.paths();
    job.remove().unwrap();
    for path in &paths {
        assert!(!path.exists(), "{} is left", path.display());
    }
    let subtree: Vec<PathBuf> = cgroups.nodes.iter().map(|n| n.dir.clone()).collect();
    cgroups.close().unwrap();
    for path in &subtree {
        assert!(!path.exists(), "{} is left", path.display());
    }
}

// Scenario: a job that allocates without bound under a 32 MiB limit is
// killed by the kernel's OOM killer, and the group counts it.
#[tokio::test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn memory_hog_is_oom_killed() {
    let layout = real_layout();
    let name = subtree_name("memory_hog_is_oom_killed");
    let _cleanup = Cleanup::new(&layout, &name);
    let cgroups = Cgroups::open(layout, &name).unwrap();
    let limits = Limits {
        memory_bytes: Some(32 << 20),
        ..Limits::default()
    };
    let job = cgroups.create("hog", &limits).unwrap();
    // Doubles a shell variable until the allocation fails or it is killed.
    let child = spawn_in(
        &job,
        "/bin/sh",
        &["-c", "x=x; while :; do x=$x$x; done"],
        |_| {},
    );
    let status = reap(child, &[]);
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    tokio::time::timeout(KILL_TIMEOUT, job.wait_empty())
        .await
        .unwrap()
        .unwrap();
    let usage = job.usage().unwrap();
    println!("{usage:?}");
    assert!(usage.oom_kills >= 1, "{usage:?}");
    let peak = usage.peak_memory_bytes.unwrap();
    assert!(peak > 16 << 20 && peak <= 32 << 20, "peak {peak}");
    job.remove().unwrap();
    cgroups.close().unwrap();
}

/// A subscriber that keeps what is logged, to check warnings.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// Scenario: the daemon died with a job running (its group, with a nested
// child group, is still there); the next open of the same subtree kills the
// job, removes its groups and warns about each.
#[tokio::test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn open_removes_leftovers() {
    let layout = real_layout();
    let name = subtree_name("open_removes_leftovers");
    let _cleanup = Cleanup::new(&layout, &name);
    let cgroups = Cgroups::open(layout.clone(), &name).unwrap();
    let job = cgroups.create("left", &Limits::default()).unwrap();
    let child = spawn_in(&job, "sleep", &["100"], |_| {});
    let paths = job.paths();
    for path in &paths {
        std::fs::create_dir(path.join("inner")).unwrap();
    }
    drop(job);
    drop(cgroups);

    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let cgroups =
        tracing::subscriber::with_default(subscriber, || Cgroups::open(layout, &name)).unwrap();
    let status = reap(child, &[]);
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    for path in &paths {
        assert!(!path.exists(), "{} is left", path.display());
    }
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(log.contains("WARN"), "{log}");
    assert!(log.contains(&paths[0].display().to_string()), "{log}");
    assert!(log.contains("processes=1"), "{log}");
    cgroups.close().unwrap();
}

// Scenario: a limit the kernel refuses (bandwidth of a device that does not
// exist) fails the create and leaves no directory; a second group of the
// same name is refused without touching the first; a bad name is refused.
#[tokio::test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn create_errors_leave_nothing() {
    let layout = real_layout();
    let name = subtree_name("create_errors_leave_nothing");
    let _cleanup = Cleanup::new(&layout, &name);
    let cgroups = Cgroups::open(layout, &name).unwrap();
    let bad_io = Limits {
        memory_bytes: Some(64 << 20),
        io: vec![IoLimit {
            major: 4095,
            minor: 4095,
            read_bps: Some(1),
            write_bps: None,
        }],
        ..Limits::default()
    };
    let err = cgroups.create("bad", &bad_io).unwrap_err();
    assert!(matches!(err, CgroupError::Write { .. }), "{err:?}");
    for node in &cgroups.nodes {
        assert!(!node.dir.join("bad").exists());
    }

    let job = cgroups.create("dup", &Limits::default()).unwrap();
    let err = cgroups.create("dup", &Limits::default()).unwrap_err();
    assert!(
        matches!(&err, CgroupError::Create { source, .. } if source.kind() == io::ErrorKind::AlreadyExists),
        "{err:?}"
    );
    for path in job.paths() {
        assert!(path.exists(), "the first group must survive");
    }
    let err = cgroups.create("../escape", &Limits::default()).unwrap_err();
    assert!(matches!(err, CgroupError::InvalidName { .. }), "{err:?}");
    job.remove().unwrap();
    cgroups.close().unwrap();
}

// Scenario: the pure-v2 code path, run on the hybrid's cgroup2 mount (which
// has no controllers here): cgroup.kill, cgroup.events, cpu.stat, and the
// v2 freezer fallback of kill; a limit without its controller is refused.
#[tokio::test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn v2_paths_on_the_unified_mount() {
    let layout = real_layout();
    let Layout::V1 {
        unified: Some(unified),
        ..
    } = layout
    else {
        layout_skip("v2_paths_on_the_unified_mount", "no hybrid cgroup2 mount");
        return;
    };
    become_subreaper();
    let v2 = Layout::V2(Hierarchy {
        controllers: Vec::new(),
        ..unified
    });
    let name = subtree_name("v2_paths_on_the_unified_mount");
    let _cleanup = Cleanup::new(&v2, &name);
    let cgroups = Cgroups::open(v2.clone(), &name).unwrap();

    let err = cgroups
        .create(
            "limited",
            &Limits {
                memory_bytes: Some(1 << 30),
                ..Limits::default()
            },
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            CgroupError::ControllerMissing {
                controller: "memory"
            }
        ),
        "{err:?}"
    );
    assert!(!cgroups.nodes[0].dir.join("limited").exists());

    for (group, by_freezer) in [("by-kill", false), ("by-freeze", true)] {
        let job = cgroups.create(group, &Limits::default()).unwrap();
        let child = spawn_workload(&job);
        let pids = all_procs(&job.nodes).unwrap();
        for &pid in &pids {
            assert_eq!(dirs_of(pid, &v2), job.paths(), "process {pid}");
        }
        if by_freezer {
            kill_frozen(&job.nodes[0].dir, Freezer::V2).unwrap();
        } else {
            job.kill().unwrap();
        }
        tokio::time::timeout(KILL_TIMEOUT, job.wait_empty())
            .await
            .expect("the group did not empty")
            .unwrap();
        assert_eq!(reap(child, &pids).signal(), Some(libc::SIGKILL));
        let usage = job.usage().unwrap();
        assert!(usage.cpu_usec.unwrap() > 0, "{usage:?}");
        assert_eq!(usage.peak_memory_bytes, None);
        assert_eq!(read_trimmed(&job.nodes[0].dir.join("cgroup.freeze")), "0");
        job.remove().unwrap();
    }
    cgroups.close().unwrap();
}

// Scenario: pure v1 (the cgroup2 mount ignored): kill goes through the v1
// freezer and leaves the group thawed, and wait_empty polls cgroup.procs.
#[tokio::test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn v1_freezer_kill_and_polling_wait() {
    let layout = real_layout();
    let Layout::V1 { hierarchies, .. } = layout else {
        layout_skip("v1_freezer_kill_and_polling_wait", "not a v1 layout");
        return;
    };
    if !hierarchies
        .iter()
        .any(|h| h.controllers.iter().any(|c| c == "freezer"))
    {
        layout_skip("v1_freezer_kill_and_polling_wait", "no v1 freezer");
        return;
    }
    become_subreaper();
    let v1 = Layout::V1 {
        hierarchies,
        unified: None,
    };
    let name = subtree_name("v1_freezer_kill_and_polling_wait");
    let _cleanup = Cleanup::new(&v1, &name);
    let cgroups = Cgroups::open(v1, &name).unwrap();
    let job = cgroups.create("job", &Limits::default()).unwrap();
    let child = spawn_workload(&job);
    let pids = all_procs(&job.nodes).unwrap();
    assert!(pids.len() >= 3, "{pids:?}");
    let start = Instant::now();
    job.kill().unwrap();
    tokio::time::timeout(KILL_TIMEOUT, job.wait_empty())
        .await
        .expect("the group did not empty")
        .unwrap();
    println!("v1 freezer kill to empty: {:?}", start.elapsed());
    assert_eq!(reap(child, &pids).signal(), Some(libc::SIGKILL));
    let freezer = job.nodes.iter().find(|n| n.caps.freezer).unwrap();
    assert_eq!(read_trimmed(&freezer.dir.join("freezer.state")), "THAWED");
    job.remove().unwrap();
    cgroups.close().unwrap();
}

// Scenario: the child drops to an unprivileged user before the hook runs
// (std runs setuid before pre_exec hooks); the descriptors opened by root
// still let it place itself.
#[tokio::test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn unprivileged_child_joins_through_the_descriptors() {
    let layout = real_layout();
    let name = subtree_name("unprivileged_child_joins");
    let _cleanup = Cleanup::new(&layout, &name);
    let cgroups = Cgroups::open(layout.clone(), &name).unwrap();
    let job = cgroups.create("nobody", &Limits::default()).unwrap();
    let child = spawn_in(&job, "sleep", &["100"], |c| {
        c.uid(65534).gid(65534);
    });
    let pid = child.id() as i32;
    assert_eq!(dirs_of(pid, &layout), job.paths());
    job.kill().unwrap();
    tokio::time::timeout(KILL_TIMEOUT, job.wait_empty())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reap(child, &[]).signal(), Some(libc::SIGKILL));
    job.remove().unwrap();
    cgroups.close().unwrap();
}

// Scenario: a killed process that nobody reaped yet (a zombie) does not keep
// its group populated and does not block rmdir, so a job's groups can be
// removed even while its orphans wait for a reaper.
#[tokio::test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn zombies_do_not_keep_a_group_busy() {
    let layout = real_layout();
    let name = subtree_name("zombies_do_not_keep_a_group_busy");
    let _cleanup = Cleanup::new(&layout, &name);
    let cgroups = Cgroups::open(layout, &name).unwrap();
    let job = cgroups.create("zombie", &Limits::default()).unwrap();
    let child = spawn_in(&job, "sleep", &["100"], |_| {});
    job.kill().unwrap();
    tokio::time::timeout(KILL_TIMEOUT, job.wait_empty())
        .await
        .unwrap()
        .unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap();
    let state = stat.rsplit(") ").next().unwrap().chars().next();
    assert_eq!(state, Some('Z'), "{stat}");
    if let Some(pids) = job
        .nodes
        .iter()
        .find(|n| n.caps.pids && n.flavor == Flavor::V1)
    {
        // Observed, not required: the pids controller still counts it.
        println!(
            "pids.current with one zombie: {}",
            read_trimmed(&pids.dir.join("pids.current"))
        );
    }
    job.remove().unwrap();
    assert_eq!(reap(child, &[]).signal(), Some(libc::SIGKILL));
    cgroups.close().unwrap();
}

// Scenario: a job group whose owner dropped it without removing it is
// swept by close (killed, removed) and the subtree goes too.
#[tokio::test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn close_sweeps_a_job_group_left_behind() {
    let layout = real_layout();
    let name = subtree_name("close_sweeps_a_job_group_left_behind");
    let _cleanup = Cleanup::new(&layout, &name);
    let cgroups = Cgroups::open(layout, &name).unwrap();
    let job = cgroups.create("still-here", &Limits::default()).unwrap();
    let paths = job.paths();
    drop(job);
    cgroups.close().unwrap();
    for path in paths {
        assert!(!path.exists(), "{} left behind", path.display());
        assert!(!path.parent().unwrap().exists(), "subtree left behind");
    }
}

fn assert_send_sync<T: Send + Sync>() {}
fn assert_send<T: Send>(_: &T) {}

#[test]
fn handles_are_send_and_sync() {
    assert_send_sync::<Cgroups>();
    assert_send_sync::<JobCgroup>();
    assert_send_sync::<Layout>();
    let job = JobCgroup {
        nodes: Vec::new(),
        procs: Vec::new(),
        identity: None,
    };
    assert_send(&job.wait_empty());
}

/// A fake v1 layout in a temporary directory (plain directories, not a
/// cgroup file system) with only a pids hierarchy.
fn fake_pids_layout(root: &Path) -> Layout {
    let own = root.join("pids/daemon");
    std::fs::create_dir_all(&own).unwrap();
    Layout::V1 {
        hierarchies: vec![Hierarchy {
            controllers: vec!["pids".to_owned()],
            mount_point: root.join("pids"),
            own_dir: own,
        }],
        unified: None,
    }
}

// Scenario: a limit whose controller is not mounted is refused before any
// directory is made, rather than running the job unlimited.
#[test]
fn missing_controller_is_refused_up_front() {
    let tmp = tempfile::tempdir().unwrap();
    let cgroups = Cgroups::open(fake_pids_layout(tmp.path()), "jobsd-x").unwrap();
    for (limits, controller) in [
        (
            Limits {
                memory_bytes: Some(1),
                ..Limits::default()
            },
            "memory",
        ),
        (
            Limits {
                cpu_millis: Some(1),
                ..Limits::default()
            },
            "cpu",
        ),
        (
            Limits {
                io: vec![IoLimit {
                    major: 8,
                    minor: 0,
                    read_bps: Some(1),
                    write_bps: None,
                }],
                ..Limits::default()
            },
            "io",
        ),
    ] {
        let err = cgroups.create("job", &limits).unwrap_err();
        assert!(
            matches!(err, CgroupError::ControllerMissing { controller: c } if c == controller),
            "{err:?}"
        );
        assert!(!tmp.path().join("pids/daemon/jobsd-x/job").exists());
    }
}

// Scenario: names that are not one safe path component are refused before
// anything is touched.
#[test]
fn bad_names_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = fake_pids_layout(tmp.path());
    for bad in ["", "..", "a/b", "../../etc"] {
        let err = Cgroups::open(layout.clone(), bad).unwrap_err();
        assert!(matches!(err, CgroupError::InvalidName { .. }), "{err:?}");
    }
    let cgroups = Cgroups::open(layout, "jobsd-x").unwrap();
    let err = cgroups.create("..", &Limits::default()).unwrap_err();
    assert!(matches!(err, CgroupError::InvalidName { .. }), "{err:?}");
}

// Scenario: the subtree directory is made beneath the own cgroup, reused by
// a second open, and removed by close.
#[test]
fn subtree_is_made_reused_and_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = fake_pids_layout(tmp.path());
    let subtree = tmp.path().join("pids/daemon/jobsd-x");
    let cgroups = Cgroups::open(layout.clone(), "jobsd-x").unwrap();
    assert!(subtree.is_dir());
    assert_eq!(cgroups.layout(), &layout);
    drop(cgroups);
    let cgroups = Cgroups::open(layout, "jobsd-x").unwrap();
    cgroups.close().unwrap();
    assert!(!subtree.exists());
}

// Scenario: on pure cgroup v2 the daemon sits in its own cgroup, which the
// "no internal processes" rule then forbids to hand controllers to job groups;
// `open` moves the daemon into a leaf beside its subtree and succeeds. Runs
// in a process of its own (it moves its whole process), with the v2 mount of
// the hybrid layout and its `hugetlb` controller standing in for a v2 host.
#[test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
fn v2_open_moves_the_daemon_out_of_its_own_cgroup() {
    let test = "v2_open_moves_the_daemon_out_of_its_own_cgroup";
    real_layout();
    let controllers =
        std::fs::read_to_string("/sys/fs/cgroup/unified/cgroup.controllers").unwrap_or_default();
    if !controllers.split_whitespace().any(|c| c == "hugetlb") {
        layout_skip(
            test,
            "no cgroup v2 mount with a controller at /sys/fs/cgroup/unified",
        );
        return;
    }
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "cgroup::tests::v2_self_move_in_a_process_of_its_own",
            "--ignored",
            "--test-threads=1",
        ])
        .env("JOBS_V2_SELF_MOVE_CHILD", "1")
        .status()
        .unwrap();
    assert!(status.success(), "the child test failed: {status}");
}

#[test]
#[ignore = "run by v2_open_moves_the_daemon_out_of_its_own_cgroup in a process of its own"]
fn v2_self_move_in_a_process_of_its_own() {
    if std::env::var_os("JOBS_V2_SELF_MOVE_CHILD").is_none() {
        return;
    }
    let root = PathBuf::from("/sys/fs/cgroup/unified");
    // The root (exempt from the rule) hands hugetlb down for this test; undone
    // at the end if this test turned it on.
    let root_control = root.join("cgroup.subtree_control");
    let was_on = std::fs::read_to_string(&root_control)
        .unwrap()
        .split_whitespace()
        .any(|c| c == "hugetlb");
    if !was_on {
        std::fs::write(&root_control, "+hugetlb").unwrap();
    }
    let own_name = format!("jobs-v2-test-{}", std::process::id());
    let own = root.join(&own_name);
    std::fs::create_dir(&own).unwrap();
    let me = std::process::id().to_string();
    std::fs::write(own.join("cgroup.procs"), &me).unwrap();
    let layout = Layout::V2(Hierarchy {
        controllers: vec!["hugetlb".to_owned()],
        mount_point: root.clone(),
        own_dir: own.clone(),
    });
    let result = std::panic::catch_unwind(|| {
        // Blocked while we sit in `own`: the precondition of this test.
        let blocked = std::fs::write(own.join("cgroup.subtree_control"), "+hugetlb");
        assert_eq!(
            blocked.unwrap_err().raw_os_error(),
            Some(libc::EBUSY),
            "the own cgroup was not blocked to begin with"
        );
        let cgroups = Cgroups::open(layout, "jobsd-v2test").unwrap();
        let mine = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        assert!(
            mine.lines()
                .any(|l| l == format!("0::/{own_name}/{DAEMON_LEAF}")),
            "{mine}"
        );
        let control = std::fs::read_to_string(own.join("cgroup.subtree_control")).unwrap();
        assert_eq!(control.trim(), "hugetlb");
        let job = cgroups.create("job", &Limits::default()).unwrap();
        assert!(own.join("jobsd-v2test/job").is_dir());
        job.remove().unwrap();
        cgroups.close().unwrap();
        assert!(!own.join("jobsd-v2test").exists());
    });
    // Back to the root and away with the test's groups, whatever happened.
    std::fs::write(root.join("cgroup.procs"), &me).unwrap();
    let _ = std::fs::write(own.join("cgroup.subtree_control"), "-hugetlb");
    let _ = std::fs::remove_dir(own.join("jobsd-v2test"));
    let _ = std::fs::remove_dir(own.join(DAEMON_LEAF));
    std::fs::remove_dir(&own).unwrap();
    if !was_on {
        let _ = std::fs::write(&root_control, "-hugetlb");
    }
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

// Scenario: the host is out of inotify instances (they are counted per user
// over the whole host, 128 by default, and each job end waiting at once holds
// one). Waiting for a v2 group to empty still waits, and returns once it is
// empty, instead of failing (which would leave the group behind). The wait
// runs in a process of its own, in a user namespace whose inotify limit is 0.
#[test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
fn a_group_is_waited_for_when_inotify_is_used_up() {
    let test = "a_group_is_waited_for_when_inotify_is_used_up";
    real_layout();
    let root = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .into_iter()
        .map(PathBuf::from)
        .find(|r| r.join("cgroup.procs").exists() && r.join("cgroup.subtree_control").exists());
    let Some(root) = root else {
        layout_skip(test, "no cgroup v2 mount");
        return;
    };
    let group = root.join(format!("jobs-no-inotify-{}", std::process::id()));
    std::fs::create_dir(&group).unwrap();
    let mut sleeper = Command::new("sleep").arg("600").spawn().unwrap();
    std::fs::write(group.join("cgroup.procs"), sleeper.id().to_string()).unwrap();
    let mut waiter = Command::new("unshare")
        .args(["--user", "--map-root-user", "--"])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "cgroup::tests::the_wait_without_inotify_in_a_process_of_its_own",
            "--ignored",
            "--test-threads=1",
            "--nocapture",
        ])
        .env("JOBS_NO_INOTIFY_EVENTS", group.join("cgroup.events"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(waiter.stdout.take().unwrap()).lines();
    // libtest prints the test's output after its "test … " prefix.
    let waiting = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.contains("waiting for the group to empty"));
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
    // Read the rest, so that the child's last lines find their pipe open.
    lines.for_each(drop);
    let status = waiter.wait().unwrap();
    std::fs::remove_dir(&group).unwrap();
    assert!(waiting, "the child never waited");
    assert!(status.success(), "the child test failed: {status}");
}

#[test]
#[ignore = "run by a_group_is_waited_for_when_inotify_is_used_up in a user namespace of its own"]
fn the_wait_without_inotify_in_a_process_of_its_own() {
    let Some(events) = std::env::var_os("JOBS_NO_INOTIFY_EVENTS") else {
        return;
    };
    let events = PathBuf::from(events);
    // This user namespace's own limit; the host's is untouched.
    std::fs::write("/proc/sys/user/max_inotify_instances", "0").unwrap();
    assert_eq!(
        nix::sys::inotify::Inotify::init(nix::sys::inotify::InitFlags::empty()).err(),
        Some(nix::errno::Errno::EMFILE),
        "the inotify limit did not bite"
    );
    assert!(watch::populated(&events).unwrap());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let wait = watch::wait_unpopulated(&events);
        tokio::pin!(wait);
        // Still populated: the wait must not end before the sleeper dies.
        assert!(
            tokio::time::timeout(Duration::from_millis(200), &mut wait)
                .await
                .is_err(),
            "the wait ended while the group held a process"
        );
        println!("waiting for the group to empty");
        tokio::time::timeout(KILL_TIMEOUT, wait)
            .await
            .expect("the group's emptying was not seen")
            .unwrap();
    });
    // Once the parent killed it, the group is empty.
    assert!(!watch::populated(&events).unwrap());
}

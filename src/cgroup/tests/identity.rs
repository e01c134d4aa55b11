//! Identity groups against the real kernel (as root) and a fake tree.

use super::*;

/// The group of the hierarchy that holds `file`'s controller among `dirs`.
fn with_file(dirs: &[PathBuf], file: &str) -> Option<PathBuf> {
    dirs.iter().find(|d| d.join(file).exists()).cloned()
}

/// CPU time of the group at `dir` in microseconds, from its own counter
/// (v1 `cpuacct.usage`, else v2 `cpu.stat` `usage_usec`).
fn cpu_usec(dirs: &[PathBuf]) -> u64 {
    if let Some(dir) = with_file(dirs, "cpuacct.usage") {
        return read_trimmed(&dir.join("cpuacct.usage"))
            .parse::<u64>()
            .unwrap()
            / 1000;
    }
    let dir = with_file(dirs, "cpu.stat").expect("a cpu.stat");
    let path = dir.join("cpu.stat");
    parse::keyed_value(&path, &read_trimmed(&path), "usage_usec")
        .unwrap()
        .unwrap()
}

// Scenario: an identity's jobs sit in `<subtree>/<owner>/<job>`; the owner's
// group carries the equal weight and its limits, stays while any of its jobs
// is there, and goes with the last; another owner's group is its own.
#[tokio::test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn identity_group_life() {
    let layout = real_layout();
    let name = subtree_name("identity_group_life");
    let _cleanup = Cleanup::new(&layout, &name);
    let cgroups = Cgroups::open(layout.clone(), &name).unwrap();
    let owner_limits = Limits {
        memory_bytes: Some(64 << 20),
        cpu_millis: Some(500),
        pids: Some(50),
        io: Vec::new(),
    };
    let a1 = cgroups
        .create_for("id-a", &owner_limits, "a1", &Limits::default())
        .unwrap();
    let a2 = cgroups
        .create_for("id-a", &owner_limits, "a2", &Limits::default())
        .unwrap();
    let b1 = cgroups
        .create_for("id-b", &Limits::default(), "b1", &Limits::default())
        .unwrap();
    let a_dirs = a1.identity.as_ref().unwrap().dirs();
    let b_dirs = b1.identity.as_ref().unwrap().dirs();
    for (dir, job) in a_dirs.iter().zip(a1.paths()) {
        assert_eq!(job, dir.join("a1"));
        assert!(dir.ends_with(Path::new(&name).join("id-a")), "{dir:?}");
    }
    let shares = |dirs: &[PathBuf]| match with_file(dirs, "cpu.shares") {
        Some(d) => read_trimmed(&d.join("cpu.shares")),
        None => read_trimmed(&with_file(dirs, "cpu.weight").unwrap().join("cpu.weight")),
    };
    let expected = if with_file(&a_dirs, "cpu.shares").is_some() {
        "1024"
    } else {
        "100"
    };
    assert_eq!(shares(&a_dirs), expected);
    assert_eq!(shares(&b_dirs), expected);
    let pids =
        |dirs: &[PathBuf]| read_trimmed(&with_file(dirs, "pids.max").unwrap().join("pids.max"));
    assert_eq!(pids(&a_dirs), "50");
    assert_eq!(pids(&b_dirs), "max");
    if let Some(d) = with_file(&a_dirs, "memory.limit_in_bytes") {
        assert_eq!(
            read_trimmed(&d.join("memory.limit_in_bytes")),
            (64u64 << 20).to_string()
        );
    } else if let Some(d) = with_file(&a_dirs, "memory.max") {
        assert_eq!(
            read_trimmed(&d.join("memory.max")),
            (64u64 << 20).to_string()
        );
    }
    if let Some(d) = with_file(&a_dirs, "cpu.cfs_quota_us") {
        assert_eq!(read_trimmed(&d.join("cpu.cfs_quota_us")), "50000");
    }

    // A changed limit is written at the identity's next job; a lifted one
    // is lifted.
    let a3 = cgroups
        .create_for("id-a", &Limits::default(), "a3", &Limits::default())
        .unwrap();
    assert_eq!(pids(&a_dirs), "max");
    if let Some(d) = with_file(&a_dirs, "cpu.cfs_quota_us") {
        assert_eq!(read_trimmed(&d.join("cpu.cfs_quota_us")), "-1");
    }

    a1.remove().unwrap();
    a3.remove().unwrap();
    assert!(
        a_dirs.iter().all(|d| d.is_dir()),
        "id-a went with a job still in it"
    );
    a2.remove().unwrap();
    for dir in &a_dirs {
        assert!(!dir.exists(), "{} is left", dir.display());
    }
    assert!(b_dirs.iter().all(|d| d.is_dir()));
    b1.remove().unwrap();
    assert!(b_dirs.iter().all(|d| !d.exists()));
    cgroups.close().unwrap();
}

// Scenario: one identity's jobs start and end on many threads at once; a
// start never lands in a group being removed (each create succeeds), and
// once all ended nothing of the identity is left.
#[tokio::test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn identity_group_survives_racing_starts_and_ends() {
    let layout = real_layout();
    let name = subtree_name("identity_group_survives_racing_starts_and_ends");
    let _cleanup = Cleanup::new(&layout, &name);
    let cgroups = Arc::new(Cgroups::open(layout, &name).unwrap());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let cgroups = Arc::clone(&cgroups);
            std::thread::spawn(move || {
                for i in 0..50 {
                    let job = cgroups
                        .create_for(
                            "id-race",
                            &Limits::default(),
                            &format!("j{t}-{i}"),
                            &Limits::default(),
                        )
                        .unwrap_or_else(|e| panic!("thread {t} job {i}: {e:?}"));
                    job.remove().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for node in &cgroups.nodes {
        assert_eq!(fs::child_dirs(&node.dir).unwrap(), Vec::<PathBuf>::new());
    }
    Arc::try_unwrap(cgroups).unwrap().close().unwrap();
}

// Scenario: a leftover identity group with a job group and a process in it
// (a daemon died) is killed and removed by the next open.
#[tokio::test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn open_removes_leftover_identity_groups() {
    let layout = real_layout();
    let name = subtree_name("open_removes_leftover_identity_groups");
    let _cleanup = Cleanup::new(&layout, &name);
    let cgroups = Cgroups::open(layout.clone(), &name).unwrap();
    let job = cgroups
        .create_for("id-left", &Limits::default(), "left", &Limits::default())
        .unwrap();
    let child = spawn_in(&job, "sleep", &["100"], |_| {});
    let dirs = job.identity.as_ref().unwrap().dirs();
    drop(job);
    drop(cgroups);
    let cgroups = Cgroups::open(layout, &name).unwrap();
    let status = reap(child, &[]);
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    for dir in &dirs {
        assert!(!dir.exists(), "{} is left", dir.display());
    }
    cgroups.close().unwrap();
}

/// Spawns a busy loop in `job`.
fn spin(job: &JobCgroup) -> Child {
    spawn_in(job, "/bin/sh", &["-c", "while :; do :; done"], |_| {})
}

// Scenario: identity A runs two CPU-bound jobs and identity B one, in a
// subtree held to one core's worth so they must contend; B gets about half
// of the CPU the three used (equal share per identity), not a third (equal
// share per job). Measured from the groups' own usage counters over at least
// 3 s of CPU time, so a loaded machine only makes it slower.
#[tokio::test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn identities_share_cpu_equally_whatever_their_number_of_jobs() {
    let layout = real_layout();
    let name = subtree_name("identities_share_cpu_equally");
    let _cleanup = Cleanup::new(&layout, &name);
    let cgroups = Cgroups::open(layout, &name).unwrap();
    // One core for the whole subtree: contention whatever the machine has.
    let subtree_cpu = cgroups
        .nodes
        .iter()
        .find(|n| n.caps.cpu)
        .expect("a cpu controller");
    match subtree_cpu.flavor {
        Flavor::V1 => fs::write(&subtree_cpu.dir.join("cpu.cfs_quota_us"), "100000").unwrap(),
        Flavor::V2 => fs::write(&subtree_cpu.dir.join("cpu.max"), "100000 100000").unwrap(),
    }
    let none = Limits::default();
    let a1 = cgroups.create_for("id-a", &none, "a1", &none).unwrap();
    let a2 = cgroups.create_for("id-a", &none, "a2", &none).unwrap();
    let b1 = cgroups.create_for("id-b", &none, "b1", &none).unwrap();
    let a_dirs = a1.identity.as_ref().unwrap().dirs();
    let b_dirs = b1.identity.as_ref().unwrap().dirs();
    let children = [spin(&a1), spin(&a2), spin(&b1)];
    // Counted from now: the spinners started a few milliseconds apart.
    let (a0, b0) = (cpu_usec(&a_dirs), cpu_usec(&b_dirs));
    let deadline = Instant::now() + Duration::from_secs(120);
    let (a, b) = loop {
        let (a, b) = (cpu_usec(&a_dirs) - a0, cpu_usec(&b_dirs) - b0);
        if a + b >= 3_000_000 {
            break (a, b);
        }
        assert!(
            Instant::now() < deadline,
            "only {a} + {b} µs of CPU in 120 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    for job in [&a1, &a2, &b1] {
        job.kill().unwrap();
    }
    for child in children {
        reap(child, &[]);
    }
    let share = b as f64 / (a + b) as f64;
    println!("identity A {a} µs (2 jobs), identity B {b} µs (1 job): B's share {share:.3}");
    assert!(
        (0.35..=0.65).contains(&share),
        "B's share {share:.3} (A {a} µs, B {b} µs)"
    );
    for job in [a1, a2, b1] {
        tokio::time::timeout(KILL_TIMEOUT, job.wait_empty())
            .await
            .unwrap()
            .unwrap();
        job.remove().unwrap();
    }
    cgroups.close().unwrap();
}

// Scenario: the identity's memory limit holds across its jobs: two jobs
// that each fit alone do not fit together, and the kernel kills one of them,
// while another identity's job with the same allocation is unaffected.
#[tokio::test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn identity_memory_limit_holds_across_its_jobs() {
    let layout = real_layout();
    let name = subtree_name("identity_memory_limit_holds_across_its_jobs");
    let _cleanup = Cleanup::new(&layout, &name);
    let cgroups = Cgroups::open(layout, &name).unwrap();
    // One holder peaks at about 42 MiB (dash doubles its buffer while
    // reading 20 MiB), and keeps at least 20 MiB after.
    let owner = Limits {
        memory_bytes: Some(56 << 20),
        ..Limits::default()
    };
    let none = Limits::default();
    let a1 = cgroups.create_for("id-a", &owner, "a1", &none).unwrap();
    let a2 = cgroups.create_for("id-a", &owner, "a2", &none).unwrap();
    let b1 = cgroups.create_for("id-b", &none, "b1", &none).unwrap();
    // 20 MiB each, held until killed: `head` into a shell variable.
    let hold = "x=$(head -c 20971520 /dev/zero | tr '\\0' x); echo ready; sleep 100";
    let spawn_holder = |job: &JobCgroup| {
        let mut child = spawn_in(job, "/bin/sh", &["-c", hold], |c| {
            c.stdout(Stdio::piped());
        });
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        (child, line)
    };
    let (first, line) = spawn_holder(&a1);
    assert_eq!(line, "ready\n");
    let (b_child, line) = spawn_holder(&b1);
    assert_eq!(line, "ready\n");
    // At least 20 + 42 MiB > 56 MiB: one of A's two holders is killed (the kernel
    // picks the larger, so it may be the first), never B's.
    let (second, line) = spawn_holder(&a2);
    let (killed, mut survivor) = match line.as_str() {
        "" => (second, first),
        "ready\n" => (first, second),
        other => panic!("A's second holder said {other:?}"),
    };
    let status = reap(killed, &[]);
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    let mut b_child = b_child;
    assert!(b_child.try_wait().unwrap().is_none(), "B's job ended");
    assert!(
        survivor.try_wait().unwrap().is_none(),
        "both of A's jobs ended"
    );
    for job in [&a1, &a2, &b1] {
        job.kill().unwrap();
    }
    reap(survivor, &[]);
    reap(b_child, &[]);
    for job in [a1, a2, b1] {
        tokio::time::timeout(KILL_TIMEOUT, job.wait_empty())
            .await
            .unwrap()
            .unwrap();
        job.remove().unwrap();
    }
    cgroups.close().unwrap();
}

/// The writes of `identity::writes`, as (file, value) pairs.
fn writes_of(flavor: Flavor, limits: &Limits) -> Vec<(&'static str, String, bool)> {
    let caps = Caps::from_controllers(&["memory".to_owned(), "cpu".to_owned(), "pids".to_owned()]);
    crate::cgroup::identity::writes(flavor, caps, limits)
        .into_iter()
        .map(|w| (w.file, w.value, w.only_if_present))
        .collect()
}

// An identity group gets the equal weight and its limits; a limit not set
// is written as "no limit", so a reload that lifts it lifts it (v2).
#[test]
fn v2_identity_writes_set_and_lift() {
    let set = Limits {
        memory_bytes: Some(1 << 30),
        cpu_millis: Some(1500),
        pids: Some(100),
        io: Vec::new(),
    };
    let s = |v: &str| v.to_owned();
    assert_eq!(
        writes_of(Flavor::V2, &set),
        vec![
            ("cpu.weight", s("100"), false),
            ("cpu.max", s("150000 100000"), false),
            ("memory.max", s("1073741824"), false),
            ("pids.max", s("100"), false),
        ]
    );
    assert_eq!(
        writes_of(Flavor::V2, &Limits::default()),
        vec![
            ("cpu.weight", s("100"), false),
            ("cpu.max", s("max 100000"), false),
            ("memory.max", s("max"), false),
            ("pids.max", s("max"), false),
        ]
    );
}

// v1: shares 1024; memsw is lifted before the memory limit and set after,
// so that both raising and lowering pass the kernel's memsw >= memory rule.
#[test]
fn v1_identity_writes_order_memsw_around_the_memory_limit() {
    let set = Limits {
        memory_bytes: Some(64 << 20),
        cpu_millis: None,
        pids: None,
        io: Vec::new(),
    };
    let s = |v: &str| v.to_owned();
    assert_eq!(
        writes_of(Flavor::V1, &set),
        vec![
            ("cpu.shares", s("1024"), false),
            ("cpu.cfs_period_us", s("100000"), false),
            ("cpu.cfs_quota_us", s("-1"), false),
            ("memory.memsw.limit_in_bytes", s("-1"), true),
            ("memory.limit_in_bytes", s("67108864"), false),
            ("memory.memsw.limit_in_bytes", s("67108864"), true),
            ("pids.max", s("max"), false),
        ]
    );
}

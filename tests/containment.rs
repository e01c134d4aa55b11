//! Containment: every job in its own cgroup, as an unprivileged account, in
//! its own namespaces; stop leaves nothing behind.
//!
//! These tests need root (cgroups, namespaces, changing user). CI runs them as
//! root; built as another user, each is reported as ignored (needs root).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use jobs::client::Client;
use jobs::exec::{Namespaces, Network};
use jobs::job::ResourceLimits;
use jobs::proto::{self, State};

async fn start_limited(
    client: &Client,
    limits: proto::Limits,
    program: &str,
    args: &[&str],
) -> proto::JobStatus {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    client
        .start_with_limits(program, &args, limits)
        .await
        .unwrap_or_else(|e| panic!("start {program}: {e:?}"))
}

/// The gRPC code and message of a `true` job refused for `limits`.
async fn refused(client: &Client, limits: proto::Limits) -> (tonic::Code, String) {
    let err = client
        .start_with_limits("true", &[], limits)
        .await
        .expect_err("the start was not refused");
    (code(&err), message(&err))
}

/// Reads output until a line `ready` arrives.
async fn until_ready(client: &Client, id: &str) -> tonic::Streaming<proto::StreamEvent> {
    let mut stream = client.stream(id).await.unwrap();
    let line = read_lines(&mut stream, 1).await;
    assert_eq!(line, b"ready\n");
    stream
}

async fn stop_leaves_nothing(namespaces: Namespaces) {
    let server = TestServer::start_with_namespaces(namespaces, |_| {}).await;
    let alice = client(&server, "alice").await;
    // setsid: a new session and process group; nohup: ignores SIGHUP; the
    // subshell double-forks so the sleep is orphaned; the trap ignores TERM.
    let job = start(
        &alice,
        "sh",
        &[
            "-c",
            "trap '' TERM; setsid sleep 600 & nohup sleep 600 >/dev/null 2>&1 & (sleep 600 &); echo ready; wait",
        ],
    )
    .await;
    let _stream = until_ready(&alice, &job.id).await;
    let before = job_processes(&job.id);
    assert!(before.len() >= 5, "job processes before stop: {before:?}");
    let s = alice.stop(&job.id).await.unwrap();
    // Checked at once: stop returns only when no process of the job remains.
    assert_eq!(job_processes(&job.id), Vec::<i32>::new());
    for pid in before {
        assert!(!alive(pid), "process {pid} survived the stop");
    }
    assert_eq!(s.state(), State::Stopped);
    assert_eq!(cgroup_dirs_named(&job.id), Vec::<PathBuf>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn setsid_nohup_and_double_fork_do_not_survive_stop() {
    // Scenario: a job detaches children every way a shell can; after stop
    // returns none of them is alive and its cgroup is gone.
    require_root();
    stop_leaves_nothing(Namespaces::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn without_a_pid_namespace_the_cgroup_kill_still_gets_every_process() {
    // Scenario: the same escapes with the PID namespace off, so only the
    // cgroup kill can find the escaped processes.
    require_root();
    stop_leaves_nothing(Namespaces {
        pid: false,
        ..Namespaces::default()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn a_fast_forker_is_gone_after_stop() {
    // Scenario: a job forks as fast as it can while it is being stopped.
    require_root();
    let server = TestServer::start_with_namespaces(
        Namespaces {
            pid: false,
            ..Namespaces::default()
        },
        |_| {},
    )
    .await;
    let alice = client(&server, "alice").await;
    let job = start(
        &alice,
        "sh",
        &["-c", "echo ready; while :; do sleep 600 & done"],
    )
    .await;
    let _stream = until_ready(&alice, &job.id).await;
    assert!(eventually(Duration::from_secs(5), || job_processes(&job.id).len() > 20).await);
    alice.stop(&job.id).await.unwrap();
    assert_eq!(job_processes(&job.id), Vec::<i32>::new());
    assert_eq!(cgroup_dirs_named(&job.id), Vec::<PathBuf>::new());
}

/// Paths of `/proc/self/cgroup` lines for the hierarchies jobs are placed in.
fn placed_lines(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| l.starts_with("0::") || l.contains(":memory:") || l.contains(":pids:"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn a_memory_hog_ends_oom_and_nothing_else_is_disturbed() {
    // Scenario (C04): a job over its 64 MiB limit is killed by the kernel and
    // ends in state OOM; it and its first child were in the job's cgroup from
    // the start; another job and the daemon carry on.
    require_root();
    let server = TestServer::start().await;
    let alice = client(&server, "alice").await;
    let bob = client(&server, "bob").await;
    let other = start(&bob, "sleep", &["600"]).await;
    let limit = 64 << 20;
    let job = start_limited(
        &alice,
        proto::Limits {
            memory_bytes: Some(limit),
            ..Default::default()
        },
        "sh",
        &[
            "-c",
            "cat /proc/self/cgroup; sh -c 'cat /proc/self/cgroup'; x=$(head -c 300M /dev/zero | tr '\\0' a); echo survived",
        ],
    )
    .await;
    let f = follow(&alice, &job.id).await;
    let out = String::from_utf8(f.stdout()).unwrap();
    assert!(!out.contains("survived"), "the hog ran to its end: {out}");
    let placed = placed_lines(&out);
    assert!(placed.len() >= 4, "cgroup lines: {out}");
    // The job's cgroup namespace was made once its init was in the job's
    // cgroup, so that cgroup is the root the job sees ("/"); a process
    // outside it would show a path above the root ("/..").
    for line in &placed {
        assert!(line.ends_with(":/"), "not in the job's cgroup: {line}");
    }
    assert_eq!(
        (f.status.state(), f.status.signal),
        (State::Oom, Some(9)),
        "{:?}",
        f.status
    );
    assert_eq!(f.status.limits.unwrap().memory_bytes, Some(limit));
    let usage = f.status.usage.unwrap();
    assert!(usage.oom_kills >= 1, "{usage:?}");
    assert!(usage.peak_memory_bytes.unwrap() <= limit, "{usage:?}");

    // The other user's job and the daemon are untouched.
    assert_eq!(bob.status(&other.id).await.unwrap().state(), State::Running);
    let after = start(&alice, "echo", &["still serving"]).await;
    assert_eq!(follow(&alice, &after.id).await.stdout(), b"still serving\n");
    bob.stop(&other.id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn the_pids_limit_caps_a_fork_bomb() {
    // Scenario: a fork loop under a limit of 16 processes saturates at
    // exactly 16, the daemon keeps serving, and stop (while the bomb keeps
    // forking) leaves nothing.
    require_root();
    let server = TestServer::start().await;
    let alice = client(&server, "alice").await;
    let limits = proto::Limits {
        pids: Some(16),
        ..Default::default()
    };
    let bomb = start_limited(
        &alice,
        limits,
        "sh",
        &[
            "-c",
            // bash retries a failed fork instead of giving up as dash does,
            // so the bomb keeps pushing against the limit.
            "bash -c 'while :; do sleep 600 & done' 2>/dev/null & echo ready; exec sleep 600",
        ],
    )
    .await;
    let _stream = until_ready(&alice, &bomb.id).await;
    // Sampled until the bomb is seen at the limit (a loaded machine may take
    // a while to fork 15 processes), never above it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = job_processes(&bomb.id).len();
        assert!(n <= 16, "{n} processes under a limit of 16");
        if n == 16 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the bomb never reached the limit"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..20 {
        let n = job_processes(&bomb.id).len();
        assert!(n <= 16, "{n} processes under a limit of 16");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let after = start(&alice, "echo", &["ok"]).await;
    assert_eq!(follow(&alice, &after.id).await.stdout(), b"ok\n");
    let s = alice.stop(&bomb.id).await.unwrap();
    assert_eq!(s.state(), State::Stopped);
    assert_eq!(job_processes(&bomb.id), Vec::<i32>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn a_cpu_spinner_gets_its_share_and_no_more() {
    // Scenario: a busy loop under --cpus 0.2 uses about 20 % of one core, as
    // the job's own cgroup counters measure it, and never more than 30 %. A
    // loaded machine may give it less (other work competes), so the lower
    // bound only says that it ran.
    require_root();
    let server = TestServer::start().await;
    let alice = client(&server, "alice").await;
    let job = start_limited(
        &alice,
        proto::Limits {
            cpu_millis: Some(200),
            ..Default::default()
        },
        "sh",
        &["-c", "while :; do :; done"],
    )
    .await;
    let cpu = |s: &proto::JobStatus| s.usage.as_ref().unwrap().cpu_usec.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await; // let it settle
    let (u0, t0) = (cpu(&alice.status(&job.id).await.unwrap()), Instant::now());
    tokio::time::sleep(Duration::from_secs(3)).await; // the measuring window
    let (u1, t1) = (cpu(&alice.status(&job.id).await.unwrap()), Instant::now());
    let share = (u1 - u0) as f64 / (t1 - t0).as_micros() as f64;
    alice.stop(&job.id).await.unwrap();
    assert!(
        (0.02..=0.3).contains(&share),
        "the spinner used {share:.3} of a core under a limit of 0.2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn jobs_run_as_their_own_uid_without_capabilities_or_new_privileges() {
    // Scenario: the daemon is root; its jobs are not, cannot regain it, and
    // have no supplementary groups. The first identity on a new state
    // directory gets the default range's first uid.
    require_root();
    let server = TestServer::start().await;
    let alice = client(&server, "alice").await;
    let job = start(
        &alice,
        "sh",
        &[
            "-c",
            "id -u; id -g; id -G; grep -E '^(CapPrm|CapEff|NoNewPrivs)' /proc/self/status",
        ],
    )
    .await;
    let f = follow(&alice, &job.id).await;
    assert_eq!(
        String::from_utf8(f.stdout()).unwrap(),
        "2013265920\n2013265920\n2013265920\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\nNoNewPrivs:\t1\n"
    );
    assert_eq!(f.status.exit_code, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn a_job_sees_only_its_own_processes() {
    // Scenario: with the PID namespace on, /proc inside the job lists its init
    // and its own processes, nothing of the host or other jobs.
    require_root();
    let server = TestServer::start().await;
    let alice = client(&server, "alice").await;
    let other = start(&alice, "sleep", &["600"]).await;
    let job = start(
        &alice,
        "sh",
        &[
            "-c",
            "for p in /proc/[0-9]*; do echo \"${p#/proc/} $(cat $p/comm)\"; done",
        ],
    )
    .await;
    let f = follow(&alice, &job.id).await;
    assert_eq!(
        String::from_utf8(f.stdout()).unwrap(),
        "1 jobs-init\n2 sh\n"
    );
    alice.stop(&other.id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn a_job_cannot_read_the_daemons_keys_state_or_environment() {
    // Scenario (C28): a job tries to read the server's private key, another
    // user's output log, and its init's environment; every read fails, while
    // the same files are there for the daemon.
    require_root();
    let server = TestServer::start().await;
    let alice = client(&server, "alice").await;
    let bob = client(&server, "bob").await;
    let secret = start(&bob, "echo", &["bob's secret"]).await;
    assert_eq!(follow(&bob, &secret.id).await.stdout(), b"bob's secret\n");
    let log = server
        .state_dir()
        .join("output")
        .join(format!("{}.log", secret.id));
    let key = server_pem().key;
    for path in [&log, &key] {
        assert!(std::fs::read(path).is_ok(), "{} must exist", path.display());
        let job = start(&alice, "cat", &[path.to_str().unwrap()]).await;
        let f = follow(&alice, &job.id).await;
        assert_eq!(
            (f.stdout(), f.status.exit_code),
            (vec![], Some(1)),
            "{} was readable",
            path.display()
        );
    }
    let job = start(&alice, "sh", &["-c", "cat /proc/$PPID/environ"]).await;
    let f = follow(&alice, &job.id).await;
    assert_eq!((f.stdout(), f.status.exit_code), (vec![], Some(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn scratch_places_are_private_to_each_job() {
    // Scenario: one job leaves a file in every world-writable scratch place
    // (/tmp, /var/tmp, /dev/shm, /run/lock); a second job and the host see
    // nothing of it.
    require_root();
    let server = TestServer::start().await;
    let alice = client(&server, "alice").await;
    let name = format!("jobs-private-{}", std::process::id());
    let dirs = ["/dev/shm", "/run/lock", "/tmp", "/var/tmp"]; // as ls sorts them
    let script = format!(
        "for d in {}; do echo x > $d/{name} || exit 1; done; ls -A {}",
        dirs.join(" "),
        dirs.join(" ")
    );
    let job = start(&alice, "sh", &["-c", &script]).await;
    let f = follow(&alice, &job.id).await;
    let expected: Vec<String> = dirs.iter().map(|d| format!("{d}:\n{name}\n")).collect();
    assert_eq!(String::from_utf8(f.stdout()).unwrap(), expected.join("\n"));
    let mut ls = vec!["-A"];
    ls.extend(dirs);
    let job = start(&alice, "ls", &ls).await;
    let expected: Vec<String> = dirs.iter().map(|d| format!("{d}:\n")).collect();
    assert_eq!(
        String::from_utf8(follow(&alice, &job.id).await.stdout()).unwrap(),
        expected.join("\n")
    );
    for d in dirs {
        assert!(
            !Path::new(d).join(&name).exists(),
            "{d} is shared with the host"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn network_none_leaves_only_loopback() {
    // Scenario: with `network = none` a job has a loopback interface that is
    // up and nothing else.
    require_root();
    let server = TestServer::start_with_namespaces(
        Namespaces {
            network: Network::None,
            ..Namespaces::default()
        },
        |_| {},
    )
    .await;
    let alice = client(&server, "alice").await;
    let job = start(
        &alice,
        "sh",
        &["-c", "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '"],
    )
    .await;
    assert_eq!(follow(&alice, &job.id).await.stdout(), b"lo\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn no_cgroup_is_left_after_jobs_end_and_the_daemon_stops() {
    // Scenario: jobs that exit, are stopped, and are OOM-killed each leave no
    // cgroup once final; after shutdown the daemon's subtree is gone too.
    require_root();
    let server = TestServer::start().await;
    let subtree = jobs::exec::cgroup_name_for(server.state_dir());
    assert!(!cgroup_dirs_named(&subtree).is_empty());
    let alice = client(&server, "alice").await;
    let quick = start(&alice, "true", &[]).await;
    follow(&alice, &quick.id).await;
    assert_eq!(cgroup_dirs_named(&quick.id), Vec::<PathBuf>::new());
    let long = start(&alice, "sleep", &["600"]).await;
    assert!(!cgroup_dirs_named(&long.id).is_empty());
    alice.stop(&long.id).await.unwrap();
    assert_eq!(cgroup_dirs_named(&long.id), Vec::<PathBuf>::new());
    let running = start(&alice, "sleep", &["600"]).await;
    server.shutdown().await.unwrap();
    assert_eq!(cgroup_dirs_named(&running.id), Vec::<PathBuf>::new());
    assert_eq!(cgroup_dirs_named(&subtree), Vec::<PathBuf>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn limits_default_to_the_ceiling_and_may_only_be_lowered() {
    // Scenario: the operator's ceilings are a job's defaults; a request may
    // ask for less, never for more, and never for nothing.
    require_root();
    let ceiling = ResourceLimits {
        memory_bytes: Some(128 << 20),
        cpu_millis: Some(1000),
        pids: Some(64),
        io_read_bps: None,
        io_write_bps: None,
    };
    let server = TestServer::start_with(|c| c.jobs.ceiling = ceiling).await;
    let alice = client(&server, "alice").await;
    let job = start(&alice, "true", &[]).await;
    assert_eq!(
        job.limits,
        Some(proto::Limits {
            memory_bytes: Some(128 << 20),
            cpu_millis: Some(1000),
            pids: Some(64),
            io_read_bps: None,
            io_write_bps: None,
        })
    );
    let lower = proto::Limits {
        memory_bytes: Some(32 << 20),
        cpu_millis: Some(500),
        pids: Some(8),
        ..Default::default()
    };
    let job = start_limited(&alice, lower, "true", &[]).await;
    assert_eq!(job.limits, Some(lower));

    for (asked, text) in [
        (
            proto::Limits {
                memory_bytes: Some(256 << 20),
                ..Default::default()
            },
            "memory_bytes 268435456 (256.0 MiB) is above the server's ceiling of 134217728 (128.0 MiB)",
        ),
        (
            proto::Limits {
                pids: Some(0),
                ..Default::default()
            },
            "pids 0 is below the minimum of 2",
        ),
        (
            proto::Limits {
                cpu_millis: Some(2000),
                ..Default::default()
            },
            "cpu_millis 2000 (2.000 cores) is above the server's ceiling of 1000 (1.000 cores)",
        ),
    ] {
        let before = alice.list(false).await.unwrap().len();
        assert_eq!(
            refused(&alice, asked).await,
            (tonic::Code::InvalidArgument, text.into())
        );
        assert_eq!(
            alice.list(false).await.unwrap().len(),
            before,
            "a job was created"
        );
    }
    assert_eq!(
        refused(
            &alice,
            proto::Limits {
                io_write_bps: Some(1 << 20),
                ..Default::default()
            }
        )
        .await,
        (
            tonic::Code::FailedPrecondition,
            "this server has no IO devices configured and cannot enforce IO limits".into()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn status_reports_usage_from_the_cgroup() {
    // Scenario: a finished job's status carries its CPU time and peak memory.
    require_root();
    let server = TestServer::start().await;
    let alice = client(&server, "alice").await;
    let job = start(
        &alice,
        "sh",
        &["-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done"],
    )
    .await;
    let f = follow(&alice, &job.id).await;
    let usage = f.status.usage.unwrap();
    assert!(usage.cpu_usec.unwrap() > 10_000, "{usage:?}");
    assert!(usage.peak_memory_bytes.unwrap() > 0, "{usage:?}");
    assert_eq!(usage.oom_kills, 0);
    assert_eq!(alice.status(&job.id).await.unwrap().usage, Some(usage));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn a_job_whose_cgroup_cannot_be_made_does_not_start() {
    // Scenario (C04): the daemon cannot create the job's cgroup (its subtree
    // vanished in one hierarchy); the start fails, no job exists and nothing
    // ran.
    require_root();
    let server = TestServer::start().await;
    let alice = client(&server, "alice").await;
    let subtree = jobs::exec::cgroup_name_for(server.state_dir());
    let pids_subtree = cgroup_dirs_named(&subtree)
        .into_iter()
        .find(|p| p.starts_with("/sys/fs/cgroup/pids") || p.starts_with("/sys/fs/cgroup/unified"))
        .expect("the subtree in the pids or unified hierarchy");
    std::fs::remove_dir(&pids_subtree).unwrap();
    let dir = scratch();
    let marker = dir.path().join("ran");
    let err = alice
        .start("touch", &[marker.to_str().unwrap().to_owned()])
        .await
        .unwrap_err();
    assert_eq!(code(&err), tonic::Code::Internal);
    assert!(message(&err).starts_with("internal error (reference "));
    assert!(!marker.exists(), "the program ran");
    assert_eq!(alice.list(false).await.unwrap(), vec![]);
    std::fs::create_dir(&pids_subtree).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_need_a_contained_server() {
    // Scenario: a server that cannot contain jobs refuses limits instead of
    // silently running the job unlimited.
    let server = TestServer::start_uncontained(|_| {}).await;
    let alice = client(&server, "alice").await;
    assert_eq!(
        refused(
            &alice,
            proto::Limits {
                memory_bytes: Some(64 << 20),
                ..Default::default()
            }
        )
        .await,
        (
            tonic::Code::FailedPrecondition,
            "this server runs jobs without containment and cannot enforce resource limits".into()
        )
    );
    assert_eq!(alice.list(false).await.unwrap(), vec![]);
    let job = start(&alice, "true", &[]).await;
    assert_eq!((job.limits, job.usage), (None, None));
}

/// The first whole disk under /sys/block that has a device node in /dev
/// (loop and zram devices are skipped), e.g. /dev/vda.
fn a_block_device() -> Option<PathBuf> {
    std::fs::read_dir("/sys/block")
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("loop") && !n.starts_with("zram") && !n.starts_with("ram"))
        .map(|n| Path::new("/dev").join(n))
        .find(|p| p.exists())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn io_limits_are_written_for_every_configured_device() {
    // Scenario: the operator names a disk and a write ceiling; a job asking
    // for less gets exactly that bandwidth limit on that disk, in its cgroup.
    require_root();
    let Some(disk) = a_block_device() else {
        skip_here(
            "io_limits_are_written_for_every_configured_device",
            "no disk in /sys/block",
        );
        return;
    };
    let device = jobs::exec::IoDevice::from_path(&disk).unwrap();
    let devices = vec![device.clone()];
    let server = TestServer::start_contained(
        move |contain| contain.io_devices = devices,
        |c| c.jobs.ceiling.io_write_bps = Some(100 << 20),
    )
    .await;
    let alice = client(&server, "alice").await;
    let job = start_limited(
        &alice,
        proto::Limits {
            io_write_bps: Some(1 << 20),
            ..Default::default()
        },
        "sleep",
        &["600"],
    )
    .await;
    let dirs = cgroup_dirs_named(&job.id);
    let file = dirs
        .iter()
        .map(|d| d.join("blkio.throttle.write_bps_device"))
        .chain(dirs.iter().map(|d| d.join("io.max")))
        .find(|f| f.exists())
        .expect("an io limit file in the job's cgroup");
    let text = std::fs::read_to_string(&file).unwrap();
    let expected = if file.ends_with("io.max") {
        format!(
            "{}:{} rbps=max wbps=1048576 riops=max wiops=max\n",
            device.major, device.minor
        )
    } else {
        format!("{}:{} 1048576\n", device.major, device.minor)
    };
    assert_eq!(text, expected);
    alice.stop(&job.id).await.unwrap();

    // Above the ceiling: refused.
    let limits = proto::Limits {
        io_write_bps: Some(200 << 20),
        ..Default::default()
    };
    assert_eq!(
        refused(&alice, limits).await,
        (
            tonic::Code::InvalidArgument,
            "io_write_bps 209715200 (200.0 MiB/s) is above the server's ceiling of 104857600 (100.0 MiB/s)".into()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn an_io_write_limit_slows_a_jobs_direct_writes_to_it() {
    // Scenario: the limit is not only written, it holds: a job limited to
    // 1 MiB/s on the disk under a shared directory writes 3 MiB there with
    // O_DIRECT (which the throttle sees on cgroup v1 and v2 alike); it takes
    // at least 1.5 s (about 3 s; unthrottled it takes milliseconds). A lower
    // bound: a loaded machine only makes it slower.
    require_root();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = scratch();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let dev = std::fs::metadata(dir.path()).unwrap().dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let device = std::fs::read_dir("/sys/block")
        .unwrap()
        .flatten()
        .map(|e| Path::new("/dev").join(e.file_name()))
        .filter_map(|p| jobs::exec::IoDevice::from_path(&p).ok())
        .find(|d| (d.major, d.minor) == (major, minor));
    let Some(device) = device else {
        skip_here(
            "an_io_write_limit_slows_a_jobs_direct_writes_to_it",
            &format!(
                "{} is not on a whole disk ({major}:{minor})",
                dir.path().display()
            ),
        );
        return;
    };
    let shared = dir.path().to_owned();
    let server = TestServer::start_contained(
        move |contain| {
            contain.io_devices = vec![device];
            contain.sandbox.writable = vec![shared];
        },
        |_| {},
    )
    .await;
    let alice = client(&server, "alice").await;
    let script = format!(
        "s=$(date +%s%N); dd if=/dev/zero of={}/f bs=64k count=48 oflag=direct 2>/dev/null || exit 9; e=$(date +%s%N); echo $(( (e - s) / 1000000 ))",
        dir.path().display()
    );
    let job = start_limited(
        &alice,
        proto::Limits {
            io_write_bps: Some(1 << 20),
            ..Default::default()
        },
        "sh",
        &["-c", &script],
    )
    .await;
    let done = follow(&alice, &job.id).await;
    assert_eq!(done.status.exit_code, Some(0), "{:?}", done.chunks);
    let ms: u64 = String::from_utf8(done.stdout())
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(ms >= 1500, "3 MiB at 1 MiB/s took {ms} ms");
}

#[test]
fn io_limits_need_a_block_device() {
    // Scenario: an operator passes a file that is not a disk to --io-device.
    let err = jobs::exec::IoDevice::from_path(Path::new("/dev/null")).unwrap_err();
    assert_eq!(err.to_string(), "cannot use /dev/null for IO limits");
    assert_eq!(
        std::error::Error::source(&err).unwrap().to_string(),
        "not a block device"
    );
}

/// System V shared memory segments the host can see.
fn host_shm_segments() -> usize {
    std::fs::read_to_string("/proc/sysvipc/shm")
        .unwrap()
        .lines()
        .skip(1)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn system_v_ipc_is_private_to_each_job_and_dies_with_it() {
    // Scenario: a job leaves a System V shared memory segment behind (memory
    // that would outlive its limit, readable by every job of the same
    // account); another job does not see it and the host has none left.
    require_root();
    let server = TestServer::start().await;
    let alice = client(&server, "alice").await;
    let bob = client(&server, "bob").await;
    let before = host_shm_segments();
    let count = "tail -n +2 /proc/sysvipc/shm | wc -l";
    let job = start(
        &alice,
        "sh",
        &["-c", &format!("ipcmk -M 1048576 >/dev/null && {count}")],
    )
    .await;
    let f = follow(&alice, &job.id).await;
    assert_eq!((f.stdout(), f.status.exit_code), (b"1\n".to_vec(), Some(0)));
    let job = start(&bob, "sh", &["-c", count]).await;
    assert_eq!(follow(&bob, &job.id).await.stdout(), b"0\n");
    assert_eq!(host_shm_segments(), before, "a segment outlived its job");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn start_errors_do_not_reveal_files_only_root_can_see() {
    // Scenario: a user probes the daemon's private state directory by asking
    // to run paths in it; an existing and a missing file get the same answer,
    // because the path is checked as the job's account, not as root.
    require_root();
    let server = TestServer::start().await;
    let alice = client(&server, "alice").await;
    let job = start(&alice, "true", &[]).await;
    follow(&alice, &job.id).await;
    let output = server.state_dir().join("output");
    let existing = output.join(format!("{}.log", job.id));
    assert!(existing.exists());
    let missing = output.join("67e55044-10b1-426f-9247-bb680e5fe0c8.log");
    let mut answers = Vec::new();
    for path in [&existing, &missing] {
        let program = path.to_str().unwrap();
        let err = alice.start(program, &[]).await.unwrap_err();
        assert_eq!(code(&err), tonic::Code::InvalidArgument);
        answers.push(message(&err).replace(program, "PROGRAM"));
    }
    // "not an executable file" where the account may not enter the state
    // directory; "not found" where it cannot even see it (under a /tmp that
    // is private to the job). The same for both files either way.
    assert_eq!(answers[0], answers[1]);
    assert!(
        [
            "program 'PROGRAM' is not an executable file",
            "program 'PROGRAM' not found"
        ]
        .contains(&answers[0].as_str()),
        "{answers:?}"
    );
    // Where the account can look, missing is missing.
    let err = alice.start("/etc/passwd/x", &[]).await.unwrap_err();
    assert_eq!(message(&err), "program '/etc/passwd/x' not found");
    assert_eq!(alice.list(false).await.unwrap().len(), 1);
    assert_eq!(cgroup_dirs_named(&job.id), Vec::<PathBuf>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn without_private_scratch_places_proc_stays_private() {
    // Scenario: an operator shares /tmp with jobs (--no-mount-namespace); a
    // job still sees only its own processes in /proc, not the host's.
    require_root();
    let server = TestServer::start_with_namespaces(
        Namespaces {
            mount: false,
            ..Namespaces::default()
        },
        |_| {},
    )
    .await;
    let alice = client(&server, "alice").await;
    let name = format!("jobs-shared-{}", std::process::id());
    let host_file = Path::new("/tmp").join(&name);
    std::fs::write(&host_file, "from the host\n").unwrap();
    let job = start(
        &alice,
        "sh",
        &[
            "-c",
            &format!("cat /tmp/{name}; for p in /proc/[0-9]*; do cat $p/comm; done"),
        ],
    )
    .await;
    let f = follow(&alice, &job.id).await;
    std::fs::remove_file(&host_file).unwrap();
    assert_eq!(
        String::from_utf8(f.stdout()).unwrap(),
        "from the host\njobs-init\nsh\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn jobs_do_not_share_terminals() {
    // Scenario: one job holds a pseudo-terminal (script(1) makes one); another
    // job lists /dev/pts and finds no terminal of it to open or write to.
    require_root();
    let server = TestServer::start().await;
    let alice = client(&server, "alice").await;
    let bob = client(&server, "bob").await;
    let holder = start(
        &alice,
        "script",
        &["-qfc", "sh -c 'tty; echo ready; sleep 600'", "/dev/null"],
    )
    .await;
    let mut stream = alice.stream(&holder.id).await.unwrap();
    let lines = String::from_utf8(read_lines(&mut stream, 2).await).unwrap();
    assert!(lines.starts_with("/dev/pts/0\r\n"), "{lines:?}");
    let job = start(&bob, "ls", &["-A", "/dev/pts"]).await;
    assert_eq!(follow(&bob, &job.id).await.stdout(), b"ptmx\n");
    alice.stop(&holder.id).await.unwrap();
}

/// The identity group `job`'s cgroup sits in, per hierarchy: the parent of
/// each of its directories.
fn identity_groups_of(job: &str) -> Vec<PathBuf> {
    cgroup_dirs_named(job)
        .iter()
        .map(|p| p.parent().expect("a parent").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn each_identitys_jobs_share_one_group_with_the_policys_identity_limits() {
    // Scenario: with [identity_limits] pids = 64 and bob's "unlimited",
    // alice's two jobs sit in one group `id-…` with pids.max 64 and the
    // equal CPU weight; bob's job sits in another without a pids limit; once
    // alice's jobs end, her group is gone and bob's stays.
    require_root();
    let text = format!(
        "[identity_limits]\npids = 64\n[users.\"{}\".identity_limits]\npids = \"unlimited\"\n",
        identity("bob")
    );
    let policy = jobs::policy::Policy::parse(&text, Path::new("policy.toml")).unwrap();
    let server =
        TestServer::start_with(|c| c.policy = jobs::policy::PolicyHandle::new(policy)).await;
    let alice = client(&server, "alice").await;
    let bob = client(&server, "bob").await;
    let a1 = start(&alice, "sleep", &["600"]).await;
    let a2 = start(&alice, "sleep", &["600"]).await;
    let b1 = start(&bob, "sleep", &["600"]).await;
    let alices = identity_groups_of(&a1.id);
    assert!(!alices.is_empty());
    assert_eq!(identity_groups_of(&a2.id), alices);
    let bobs = identity_groups_of(&b1.id);
    assert_ne!(bobs, alices);
    let subtree = jobs::exec::cgroup_name_for(server.state_dir());
    for group in alices.iter().chain(&bobs) {
        let name = group.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with("id-") && name.len() == 19, "{group:?}");
        assert_eq!(
            group.parent().unwrap().file_name().unwrap(),
            subtree.as_str()
        );
    }
    let read = |dir: &Path, file: &str| {
        std::fs::read_to_string(dir.join(file))
            .ok()
            .map(|s| s.trim().to_owned())
    };
    let pids_of = |groups: &[PathBuf]| groups.iter().find_map(|g| read(g, "pids.max"));
    assert_eq!(pids_of(&alices).as_deref(), Some("64"));
    assert_eq!(pids_of(&bobs).as_deref(), Some("max"));
    let weight = |groups: &[PathBuf]| {
        groups
            .iter()
            .find_map(|g| read(g, "cpu.shares").or_else(|| read(g, "cpu.weight")))
    };
    let w = weight(&alices).expect("a cpu weight");
    assert!(w == "1024" || w == "100", "{w}");
    assert_eq!(weight(&bobs), Some(w));

    alice.stop(&a1.id).await.unwrap();
    assert!(
        alices.iter().all(|g| g.is_dir()),
        "alice's group went with a job left"
    );
    alice.stop(&a2.id).await.unwrap();
    assert!(alices.iter().all(|g| !g.exists()), "alice's group is left");
    assert!(bobs.iter().all(|g| g.is_dir()));
    bob.stop(&b1.id).await.unwrap();
    assert!(bobs.iter().all(|g| !g.exists()), "bob's group is left");
}

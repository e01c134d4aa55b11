//! The Slurm executor against a real one-node Slurm cluster on loopback
//! (`scripts/slurm-loopback.sh`: munged, slurmctld and slurmd, state in a
//! temporary directory, stopped by PID when the test ends).
//!
//! One test runs every scenario on one cluster, in order: bringing a
//! cluster up takes seconds, and its jobs start a second apart at best.
//! Identities map to system accounts that exist on every Debian host
//! (alice → nobody, bob → daemon); carol has none.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use jobs::job::Account;
use jobs::proto::{self, State};
use jobs::slurm::{SlurmConfig, SlurmExecutor};

/// A running cluster; `down` when dropped.
struct Cluster {
    dir: tempfile::TempDir,
    env: HashMap<String, String>,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/slurm-loopback.sh")
}

/// Makes `dir` traversable by every account (the jobs' uids must reach
/// their files under it).
fn open_up(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
}

impl Cluster {
    fn up() -> Option<Self> {
        if Command::new("sh")
            .args(["-c", "command -v slurmctld && command -v munged"])
            .output()
            .map_or(true, |o| !o.status.success())
        {
            skip_here(
                "slurm",
                "Slurm is not installed (apt-get install slurm-wlm munge; .ci/run does)",
            );
            return None;
        }
        // Under /tmp, whose parents every account may traverse.
        let dir = tempfile::Builder::new()
            .prefix("jobs-slurm-")
            .tempdir_in("/tmp")
            .unwrap();
        open_up(dir.path());
        let cluster_dir = dir.path().join("cluster");
        let out = Command::new("bash")
            .arg(script())
            .arg("up")
            .arg(&cluster_dir)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let cluster = Self {
            dir,
            env: HashMap::new(),
        };
        assert!(
            out.status.success(),
            "slurm-loopback.sh up failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let env = std::fs::read_to_string(cluster_dir.join("env")).unwrap();
        let mut cluster = cluster;
        for line in env.lines() {
            if let Some((k, v)) = line.strip_prefix("export ").and_then(|l| l.split_once('=')) {
                cluster
                    .env
                    .insert(k.to_owned(), v.trim_matches('\'').to_owned());
            }
        }
        Some(cluster)
    }

    fn conf(&self) -> PathBuf {
        PathBuf::from(&self.env["SLURM_CONF"])
    }

    fn bin(&self) -> PathBuf {
        PathBuf::from(&self.env["SLURM_LOOPBACK_BIN"])
    }

    fn config(&self, spool: &str, partition: Option<&str>) -> SlurmConfig {
        SlurmConfig {
            bin: Some(self.bin()),
            conf: Some(self.conf()),
            partition: partition.map(str::to_owned),
            spool: self.dir.path().join(spool),
            default_account: None,
        }
    }

    fn down(&self) {
        let out = Command::new("bash")
            .arg(script())
            .arg("down")
            .arg(self.dir.path().join("cluster"))
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "slurm-loopback.sh down failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.down();
    }
}

/// A server whose jobs run on the cluster, alice as nobody, bob as daemon.
async fn slurm_server(cluster: &Cluster, spool: &str, partition: Option<&str>) -> TestServer {
    let executor = SlurmExecutor::open(cluster.config(spool, partition))
        .await
        .expect("the Slurm executor opens");
    TestServer::start_uncontained(move |c| {
        c.executor = Arc::new(executor);
        c.jobs.uid_range = None;
        c.jobs.grace = Duration::from_secs(1);
        for (name, user) in [("alice", "nobody"), ("bob", "daemon")] {
            c.jobs
                .accounts
                .insert(identity(name), Account::lookup(user, false).unwrap());
        }
    })
    .await
}

fn state(status: &proto::JobStatus) -> State {
    State::try_from(status.state).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(jobs_root), ignore = "needs root (sbatch --uid, a Slurm cluster)")]
async fn jobs_run_on_a_real_slurm_cluster() {
    require_root();
    let Some(cluster) = Cluster::up() else { return };
    let server = slurm_server(&cluster, "spool", None).await;
    let alice = client(&server, "alice").await;
    let bob = client(&server, "bob").await;

    // Exit code, stdout and stderr apart, two followers from byte 0, and
    // arguments exactly as given (spaces, quotes, $, non-ASCII, empty).
    let job = start(
        &alice,
        "sh",
        &[
            "-c",
            r#"printf '[%s]' "$@"; echo; id -un; echo err >&2; exit 3"#,
            "sh",
            "a b",
            "\"q\"",
            "$HOME",
            "ünï€",
            "",
        ],
    )
    .await;
    let (one, two) = tokio::join!(follow(&alice, &job.id), follow(&alice, &job.id));
    for f in [&one, &two] {
        assert_eq!(
            String::from_utf8_lossy(&f.stdout()),
            "[a b][\"q\"][$HOME][ünï€][]\nnobody\n"
        );
        assert_eq!(f.stderr(), b"err\n");
        assert_eq!(
            (state(&f.status), f.status.exit_code),
            (State::Exited, Some(3))
        );
    }

    // The cluster's id is kept with the job, ended too.
    let id = alice.status(&job.id).await.unwrap().cluster_job_id;
    assert!(
        id.as_deref()
            .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit())),
        "{id:?}"
    );

    // A job that renames itself to text shaped like the controller's
    // fields (Slurm allows spaces and newlines in a job name) still ends
    // when it ends, with every byte: the states come from JSON.
    let job = start(
        &alice,
        "sh",
        &[
            "-c",
            "scontrol update jobid=$SLURM_JOB_ID JobName=\"x JobState=COMPLETED ExitCode=0:0\nJobId=1 JobState=COMPLETED ExitCode=0:0\" && sleep 2 && echo still-here",
        ],
    )
    .await;
    let f = follow(&alice, &job.id).await;
    assert_eq!(
        (f.stdout(), f.stderr(), state(&f.status), f.status.exit_code),
        (b"still-here\n".to_vec(), Vec::new(), State::Exited, Some(0))
    );

    // Another identity's job does not exist for it.
    for code in [
        bob.status(&job.id).await.unwrap_err().code(),
        bob.stream(&job.id).await.err().and_then(|e| e.code()),
        bob.stop(&job.id).await.unwrap_err().code(),
    ] {
        assert_eq!(code, Some(tonic::Code::NotFound));
    }

    // 64 MiB of every byte value, exactly.
    let blob = cluster.dir.path().join("blob");
    let bytes = random_bytes(64 << 20);
    std::fs::write(&blob, &bytes).unwrap();
    let job = start(&bob, "cat", &[blob.to_str().unwrap()]).await;
    let (got, end) = follow_digest(bob.stream(&job.id).await.unwrap()).await;
    assert_eq!(
        got.stdout_sha256,
        sha256(&bytes),
        "64 MiB through Slurm differ"
    );
    assert_eq!((got.stdout_len, got.stderr_len), (bytes.len() as u64, 0));
    assert_eq!(state(&end), State::Exited);

    // A job that leaves more in its files at its end than can be read in
    // the usual drain bound (a sparse 600 MiB) still has every byte.
    let job = start(
        &bob,
        "sh",
        &[
            "-c",
            "truncate -s 600M /proc/self/fd/1 && echo end-marker >&2",
        ],
    )
    .await;
    let (got, end) = follow_digest(bob.stream(&job.id).await.unwrap()).await;
    assert_eq!(
        (got.stdout_len, got.stderr_len, state(&end)),
        (600 << 20, 11, State::Exited)
    );

    // A death by signal says which.
    let job = start(&alice, "sh", &["-c", "kill -KILL $$"]).await;
    let end = follow(&alice, &job.id).await.status;
    assert_eq!((state(&end), end.signal), (State::Killed, Some(9)));

    // A job that ignores SIGTERM is stopped all the same: SIGTERM, then
    // Slurm's cancel after the grace period.
    let job = start(
        &alice,
        "sh",
        &["-c", "trap '' TERM; echo ready; while :; do sleep 1; done"],
    )
    .await;
    let mut stream = alice.stream(&job.id).await.unwrap();
    assert_eq!(read_lines(&mut stream, 1).await, b"ready\n");
    let stopped = tokio::time::timeout(Duration::from_secs(60), alice.stop(&job.id))
        .await
        .expect("stop returned within 60 s")
        .unwrap();
    assert_eq!(state(&stopped), State::Stopped);
    drop(stream);

    // Memory and CPUs go to Slurm (`--mem`, `--cpus-per-task`); over its
    // memory the job ends oom. What Slurm cannot limit is refused, naming
    // it, and nothing is submitted.
    let limits = |memory_bytes, cpu_millis, pids| proto::Limits {
        memory_bytes,
        cpu_millis,
        pids,
        ..Default::default()
    };
    if cluster.env["SLURM_LOOPBACK_MEM_ENFORCED"] == "1" {
        let job = alice
            .start_with_limits(
                "tail",
                &args(&["/dev/zero"]),
                limits(Some(64 << 20), Some(1000), None),
            )
            .await
            .unwrap();
        let asked = job
            .limits
            .as_ref()
            .map(|l| (l.memory_bytes, l.cpu_millis, l.pids));
        assert_eq!(asked, Some((Some(64 << 20), Some(1000), None)));
        let end = follow(&alice, &job.id).await.status;
        assert_eq!(state(&end), State::Oom, "{end:?}");
    } else {
        skip_here(
            "slurm: --memory",
            "the cluster cannot enforce --mem here (no cgroup v1 memory controller for task/cgroup)",
        );
    }
    let listed = alice.list(false).await.unwrap().len();
    for (asked, says) in [
        (limits(None, None, Some(10)), "leave out --pids"),
        (
            limits(None, Some(1500), None),
            "Slurm allocates whole CPUs, not 1.500",
        ),
    ] {
        let e = alice
            .start_with_limits("true", &[], asked)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some(tonic::Code::FailedPrecondition), "{e}");
        assert!(e.to_string().contains(says), "{e}");
    }
    assert_eq!(alice.list(false).await.unwrap().len(), listed);

    // A program that is not there, or not executable, is a start error
    // (C29), not a job that ends with 127 on a node; nothing is submitted.
    let listed = alice.list(false).await.unwrap().len();
    for (program, says) in [
        (
            "nonexistent-binary",
            "program 'nonexistent-binary' not found",
        ),
        (
            "/etc/passwd",
            "program '/etc/passwd' is not an executable file",
        ),
    ] {
        let e = alice.start(program, &[]).await.unwrap_err();
        assert_eq!(e.code(), Some(tonic::Code::InvalidArgument), "{e}");
        assert!(e.to_string().contains(says), "{e}");
    }
    assert_eq!(alice.list(false).await.unwrap().len(), listed);

    // Nothing of the daemon's environment reaches a job (C28): the job
    // gets PATH, HOME (its account's) and LANG as a local job does, plus
    // Slurm's own SLURM_* and what slurmstepd sets.
    let job = start(&alice, "env", &[]).await;
    let env = String::from_utf8(follow(&alice, &job.id).await.stdout()).unwrap();
    let vars: HashMap<&str, &str> = env.lines().filter_map(|l| l.split_once('=')).collect();
    assert_eq!(
        vars.get("PATH"),
        Some(&"/usr/local/bin:/usr/bin:/bin"),
        "{env}"
    );
    assert_eq!(vars.get("LANG"), Some(&"C.UTF-8"), "{env}");
    let home = Account::lookup("nobody", false).unwrap().home;
    assert_eq!(
        vars.get("HOME").map(Path::new),
        Some(home.as_path()),
        "{env}"
    );
    // Not even where jobsd runs.
    assert_eq!(vars.get("SLURM_SUBMIT_DIR"), Some(&"/"), "{env}");
    for (k, _) in std::env::vars() {
        // The shell sets PWD, OLDPWD and SHLVL itself.
        let own = ["PATH", "HOME", "LANG", "PWD", "OLDPWD", "SHLVL", "_"];
        if !k.starts_with("SLURM") && !own.contains(&k.as_str()) {
            assert!(
                !vars.contains_key(k.as_str()),
                "jobsd's {k} reached the job:\n{env}"
            );
        }
    }

    // An identity without an account on the cluster is told so, and no
    // job of it exists.
    let carol = client(&server, "carol").await;
    let e = carol.start("true", &[]).await.unwrap_err();
    assert_eq!(e.code(), Some(tonic::Code::FailedPrecondition), "{e}");
    assert!(e.to_string().contains("--run-as-for"), "{e}");
    assert!(carol.list(false).await.unwrap().is_empty());

    // Nothing of the finished jobs is left in the spool but the script.
    let left = || -> Vec<String> {
        std::fs::read_dir(cluster.dir.path().join("spool"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    assert!(
        eventually(Duration::from_secs(10), || left() == [".jobs-exec"]).await,
        "spool left: {:?}",
        left()
    );
    server.shutdown().await.unwrap();

    // sbatch refusing a job (no such partition): its words, no record.
    let server = server_with_partition(&cluster).await;
    let alice = client(&server, "alice").await;
    let e = alice.start("true", &[]).await.unwrap_err();
    assert_eq!(e.code(), Some(tonic::Code::FailedPrecondition), "{e}");
    assert!(
        e.to_string()
            .contains("the cluster refused the job: Batch job submission failed: Invalid partition name specified"),
        "{e}"
    );
    assert!(alice.list(false).await.unwrap().is_empty());
    server.shutdown().await.unwrap();

    // A job the cluster keeps queued is pending, with Slurm's reason, and
    // a stop ends it there.
    let server = slurm_server(&cluster, "spool4", Some("pending")).await;
    let alice = client(&server, "alice").await;
    let job = start(&alice, "true", &[]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = alice.status(&job.id).await.unwrap();
        if state(&s) == State::Pending && s.pending_reason.as_deref() == Some("PartitionDown") {
            assert!(s.cluster_job_id.is_some(), "{s:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not pending with Slurm's reason within 10 s: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stopped = tokio::time::timeout(Duration::from_secs(60), alice.stop(&job.id))
        .await
        .expect("stop returned within 60 s")
        .unwrap();
    assert_eq!(
        (state(&stopped), stopped.pending_reason),
        (State::Stopped, None)
    );
    server.shutdown().await.unwrap();

    // A spool another account made (or could change) is refused: it could
    // put its own batch script there, run as everyone's account.
    let planted = cluster.dir.path().join("planted");
    std::fs::create_dir(&planted).unwrap();
    nix::unistd::chown(&planted, Some(65534.into()), None).unwrap();
    let e = SlurmExecutor::open(cluster.config("planted", None))
        .await
        .unwrap_err();
    let text = format!("{e}: {}", std::error::Error::source(&e).unwrap());
    assert!(
        text.contains("planted") && text.contains("writable by no one else (owner uid 65534"),
        "{text}"
    );
    assert!(!planted.join(".jobs-exec").exists());

    // With the controller down, jobsd refuses to start, naming it.
    cluster.down();
    let out = Command::new(env!("CARGO_BIN_EXE_jobsd"))
        .args(["--listen", "127.0.0.1:0", "--executor", "slurm"])
        .arg("--ca")
        .arg(ca_cert())
        .arg("--cert")
        .arg(&server_pem().cert)
        .arg("--key")
        .arg(&server_pem().key)
        .arg("--state-dir")
        .arg(cluster.dir.path().join("state"))
        .arg("--slurm-spool")
        .arg(cluster.dir.path().join("spool3"))
        .arg("--slurm-conf")
        .arg(cluster.conf())
        .arg("--slurm-bin")
        .arg(cluster.bin())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the Slurm controller does not answer"),
        "{stderr}"
    );
}

async fn server_with_partition(cluster: &Cluster) -> TestServer {
    slurm_server(cluster, "spool2", Some("nosuch")).await
}

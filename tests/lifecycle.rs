//! A job from start to final state: what is refused at start, what a job
//! runs with, how it ends, and how stop ends it and everything it started.

mod common;

use std::time::{Duration, Instant, SystemTime};

use common::*;
use jobs::proto::{self, State};

/// The message for a bare name that is not in the job PATH.
fn not_found_in_path(program: &str) -> String {
    format!("program '{program}' not found in PATH /usr/local/bin:/usr/bin:/bin")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_commands_are_invalid_argument_and_create_no_job() {
    // Scenario: every malformed or unrunnable command is refused at start with
    // a specific message, and no job (nor its log file) is left behind.
    let server = TestServer::start().await;
    let alice = client(&server, "alice").await;
    let too_many: Vec<&str> = vec!["x"; 4097];
    let huge = "x".repeat(1024 * 1024);
    let cases: Vec<(&str, Vec<&str>, String)> = vec![
        ("", vec![], "program must not be empty".into()),
        ("ec\0ho", vec![], "program and arguments must not contain NUL bytes".into()),
        ("echo", vec!["a\0b"], "program and arguments must not contain NUL bytes".into()),
        (
            "./run.sh",
            vec![],
            "program './run.sh' is a relative path; give an absolute path or a bare name looked up in PATH"
                .into(),
        ),
        (
            "bin/true",
            vec![],
            "program 'bin/true' is a relative path; give an absolute path or a bare name looked up in PATH"
                .into(),
        ),
        ("nonexistent-binary-5c1f", vec![], not_found_in_path("nonexistent-binary-5c1f")),
        ("/nonexistent/program", vec![], "program '/nonexistent/program' not found".into()),
        ("/etc/passwd", vec![], "program '/etc/passwd' is not an executable file".into()),
        ("/tmp", vec![], "program '/tmp' is not an executable file".into()),
        ("echo", too_many, "more than 4096 arguments".into()),
        ("echo", vec![huge.as_str()], "program and arguments exceed 1048576 bytes".into()),
    ];
    for (program, a, expected) in &cases {
        let err = alice.start(program, &args(a)).await.unwrap_err();
        let shown: String = program.chars().take(40).collect();
        assert_eq!(code(&err), tonic::Code::InvalidArgument, "{shown:?}");
        assert_eq!(&message(&err), expected, "{shown:?}");
    }
    assert_eq!(alice.list(false).await.unwrap(), vec![]);
    let logs: Vec<_> = std::fs::read_dir(server.state_dir().join("output"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        logs,
        Vec::<std::ffi::OsString>::new(),
        "log files of refused starts"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_line_in_one_string_is_not_split() {
    // Scenario (C29): `jobs start "sleep 100"` sends the program "sleep 100";
    // it is refused at once and the message says the name is not split.
    let server = TestServer::start().await;
    let alice = client(&server, "alice").await;
    let err = alice.start("sleep 100", &[]).await.unwrap_err();
    assert_eq!(code(&err), tonic::Code::InvalidArgument);
    assert_eq!(
        message(&err),
        format!(
            "{}; the program name is not split on spaces: pass the program and each argument separately",
            not_found_in_path("sleep 100")
        )
    );
    assert_eq!(alice.list(false).await.unwrap(), vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arguments_reach_the_program_verbatim() {
    // Scenario (C29): no shell and no re-splitting: spaces, `;`, `$HOME` and
    // `*` arrive as written.
    let server = TestServer::start().await;
    let alice = client(&server, "alice").await;
    let job = start(&alice, "echo", &["a b", "c;d", "$HOME", "*"]).await;
    let f = follow(&alice, &job.id).await;
    assert_eq!(f.stdout(), b"a b c;d $HOME *\n");
    assert_eq!(f.stderr(), b"");
    assert_eq!(f.status.command, ["echo", "a b", "c;d", "$HOME", "*"]);
}

/// Runs `sh -c SCRIPT` to its end and returns the final status.
async fn run_sh(client: &jobs::client::Client, script: &str) -> proto::JobStatus {
    let job = start(client, "sh", &["-c", script]).await;
    wait_final(client, &job.id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_deaths_and_exit_codes_are_separate() {
    // Scenario (C09): a signal death is never an exit code, and exit 137 is
    // not SIGKILL.
    let server = TestServer::start().await;
    let alice = client(&server, "alice").await;

    let s = run_sh(&alice, "kill -9 $$").await;
    assert_eq!(
        (s.state(), s.exit_code, s.signal),
        (State::Killed, None, Some(9))
    );

    let s = run_sh(&alice, "kill -SEGV $$").await;
    assert_eq!(
        (s.state(), s.exit_code, s.signal),
        (State::Killed, None, Some(11))
    );

    let s = run_sh(&alice, "exit 137").await;
    assert_eq!(
        (s.state(), s.exit_code, s.signal),
        (State::Exited, Some(137), None)
    );
    assert!(!s.core_dumped);

    let s = run_sh(&alice, "exit 1").await;
    assert_eq!(
        (s.state(), s.exit_code, s.signal),
        (State::Exited, Some(1), None)
    );

    let s = run_sh(&alice, "exit 0").await;
    assert_eq!(
        (s.state(), s.exit_code, s.signal),
        (State::Exited, Some(0), None)
    );

    let job = start(&alice, "sleep", &["600"]).await;
    let s = alice.stop(&job.id).await.unwrap();
    assert_eq!(
        (s.state(), s.exit_code, s.signal),
        (State::Stopped, None, Some(15))
    );
    assert!(!s.core_dumped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_kills_the_jobs_children() {
    // Scenario: the job starts two background children and waits; after stop
    // returns, neither child is alive.
    let server = TestServer::start().await;
    let alice = client(&server, "alice").await;
    let job = start(
        &alice,
        "sh",
        &["-c", "sleep 300 & echo $!; sleep 300 & echo $!; wait"],
    )
    .await;
    let mut stream = alice.stream(&job.id).await.unwrap();
    let pids = job_pids(&job.id, &read_lines(&mut stream, 2).await);
    assert_eq!(pids.len(), 2);
    assert!(
        pids.iter().all(|p| alive(*p)),
        "children not running: {pids:?}"
    );

    let s = alice.stop(&job.id).await.unwrap();
    assert_eq!((s.state(), s.signal), (State::Stopped, Some(15)));
    for pid in &pids {
        assert!(
            dies(*pid).await,
            "child {pid} survived the stop: {:?}",
            proc_state(*pid)
        );
    }
    // The follower ends with the same final status.
    let (_, _, status) = follow_to_end(stream).await;
    assert_eq!(status, s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_left_of_a_job_is_killed_when_its_main_process_exits() {
    // Scenario: the main process exits, leaving a background child that does
    // not hold the pipes; the child is killed and the job ends normally.
    let server = TestServer::start().await;
    let alice = client(&server, "alice").await;
    let dir = scratch();
    let script = format!(
        "sleep 300 >/dev/null 2>&1 & echo $!; {}",
        wait_for(dir.path(), "go")
    );
    let job = start(&alice, "sh", &["-c", &script]).await;
    let mut stream = alice.stream(&job.id).await.unwrap();
    let pids = job_pids(&job.id, &read_lines(&mut stream, 1).await);
    assert_eq!(pids.len(), 1);
    trigger(dir.path(), "go");
    let f = follow(&alice, &job.id).await;
    assert_eq!(
        (f.status.state(), f.status.exit_code),
        (State::Exited, Some(0))
    );
    assert!(
        dies(pids[0]).await,
        "the leftover child runs on: {:?}",
        proc_state(pids[0])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_ignores_sigterm_is_killed_after_the_grace_period() {
    // Scenario (C07a): the job traps SIGTERM; stop escalates to SIGKILL after
    // the grace period (2 s here), and other calls are answered meanwhile.
    let grace = Duration::from_secs(2);
    let server = TestServer::start_with(|c| c.jobs.grace = grace).await;
    let alice = client(&server, "alice").await;
    let other = start(&alice, "sleep", &["600"]).await;
    let job = start(
        &alice,
        "sh",
        &["-c", "trap '' TERM; echo $$; sleep 600 & echo $!; wait"],
    )
    .await;
    let mut stream = alice.stream(&job.id).await.unwrap();
    let pids = job_pids(&job.id, &read_lines(&mut stream, 2).await);
    let (pid, child) = (pids[0], pids[1]);

    let asked = Instant::now();
    let stopper = {
        let alice = alice.clone();
        let id = job.id.clone();
        tokio::spawn(async move { alice.stop(&id).await })
    };
    // While the stop waits out the grace period, status calls are answered.
    let t = Instant::now();
    let s = alice.status(&other.id).await.unwrap();
    assert_eq!(s.state(), State::Running);
    assert!(t.elapsed() < grace, "status blocked by a pending stop");
    assert!(
        !stopper.is_finished(),
        "stop returned before the grace period"
    );

    let s = tokio::time::timeout(grace + Duration::from_secs(3), stopper)
        .await
        .expect("stop did not finish within grace + 3 s")
        .unwrap()
        .unwrap();
    let took = asked.elapsed();
    assert!(
        took >= grace - Duration::from_millis(100),
        "killed before the grace period: {took:?}"
    );
    // The grace period plus room for a loaded machine; a stop that waited
    // for an exit that never comes would hit the test's deadline instead.
    assert!(took <= grace + Duration::from_secs(5), "stop took {took:?}");
    assert_eq!(
        (s.state(), s.exit_code, s.signal),
        (State::Stopped, None, Some(9))
    );
    assert!(
        dies(pid).await && dies(child).await,
        "a process survived the stop"
    );
    let (_, _, status) = follow_to_end(stream).await;
    assert_eq!(status, s);
    alice.stop(&other.id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigstopped_job_still_stops_within_the_bound() {
    // Scenario (C07b): the job's process is stopped with SIGSTOP behind the
    // server's back; stop's SIGCONT lets the SIGTERM act.
    let grace = Duration::from_secs(2);
    let server = TestServer::start_with(|c| c.jobs.grace = grace).await;
    let alice = client(&server, "alice").await;
    let (job, stream, main) = start_with_pid(&alice, "exec sleep 600").await;
    let pid = main.pid();
    // `exec` keeps the pid; wait until it is sleep that runs there.
    assert!(
        eventually(Duration::from_secs(5), || {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c == "sleep\n")
        })
        .await
    );
    main.signal(libc::SIGSTOP).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || matches!(
            proc_state(pid),
            Some(('T', _))
        ))
        .await,
        "the job did not enter the stopped state"
    );

    let asked = Instant::now();
    let s = tokio::time::timeout(grace + Duration::from_secs(2), alice.stop(&job.id))
        .await
        .expect("stop hung on a SIGSTOPped job")
        .unwrap();
    assert!(
        asked.elapsed() < grace,
        "SIGCONT + SIGTERM should end it without SIGKILL"
    );
    assert_eq!(
        (s.state(), s.exit_code, s.signal),
        (State::Stopped, None, Some(15))
    );
    assert!(main.dies().await);
    let (_, _, status) = follow_to_end(stream).await;
    assert_eq!(status, s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_a_finished_job_returns_its_final_status_unchanged() {
    // Scenario: stop after the job exited on its own: no signal, no state change.
    let server = TestServer::start().await;
    let alice = client(&server, "alice").await;
    let job = start(&alice, "sh", &["-c", "exit 3"]).await;
    let final_status = wait_final(&alice, &job.id).await;
    assert_eq!(
        (final_status.state(), final_status.exit_code),
        (State::Exited, Some(3))
    );
    let stopped = alice.stop(&job.id).await.unwrap();
    assert_eq!(stopped, final_status);
    assert_eq!(alice.status(&job.id).await.unwrap(), final_status);
    // And stopping twice is the same.
    let job = start(&alice, "sleep", &["600"]).await;
    let first = alice.stop(&job.id).await.unwrap();
    assert_eq!(alice.stop(&job.id).await.unwrap(), first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_child_holding_the_pipe_does_not_delay_the_end() {
    // Scenario: `sh -c 'sleep 300 & echo started'`: the child inherits stdout;
    // the job still ends as soon as sh exits, with all its output.
    let server = TestServer::start().await;
    let alice = client(&server, "alice").await;
    let t = Instant::now();
    let job = start(&alice, "sh", &["-c", "sleep 300 & echo started"]).await;
    let f = follow(&alice, &job.id).await;
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(f.stdout(), b"started\n");
    assert_eq!(f.stderr(), b"");
    assert_eq!(
        (f.status.state(), f.status.exit_code, f.status.signal),
        (State::Exited, Some(0), None)
    );
}

#[test]
fn a_jobs_environment_is_exactly_path_home_lang() {
    // Scenario (C28): the daemon's process holds a secret in its environment;
    // a job sees only PATH, HOME (the job account's home; `/` uncontained) and
    // LANG.
    //
    // The PKI is made first: it initialises the crypto library, which reads
    // the environment through C code once.
    let _ = pem("alice");
    let _ = server_pem();
    // SAFETY: in this test binary nothing reads the environment through C
    // code (no name resolution, no locale or time-zone calls, tracing is not
    // set up); Rust's own readers take std's environment lock, as this does.
    unsafe { std::env::set_var("JOBSD_SECRET", "hunter2") };
    assert_eq!(std::env::var("JOBSD_SECRET").as_deref(), Ok("hunter2"));
    assert!(
        std::env::vars_os().count() > 3,
        "the daemon's environment is too small to tell"
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let server = TestServer::start().await;
        let alice = client(&server, "alice").await;
        let job = start(&alice, "/usr/bin/env", &[]).await;
        let f = follow(&alice, &job.id).await;
        let mut lines: Vec<String> = String::from_utf8(f.stdout())
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        lines.sort();
        let home = if is_root() {
            "HOME=/home/job" // an identity's own account: a private home
        } else {
            "HOME=/"
        };
        assert_eq!(
            lines,
            [home, "LANG=C.UTF-8", "PATH=/usr/local/bin:/usr/bin:/bin"],
            "job environment"
        );
        assert_eq!(
            (f.status.state(), f.status.exit_code),
            (State::Exited, Some(0))
        );
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_has_only_its_three_standard_descriptors() {
    // Scenario (C28): the daemon's sockets, key files and logs are not
    // inherited: `ls /proc/self/fd` shows 0, 1, 2 and ls's own directory fd.
    // stdin is /dev/null and the working directory is /.
    let server = TestServer::start().await;
    let alice = client(&server, "alice").await;
    // Some connections and an open log in the daemon while the job starts.
    let _bob = client(&server, "bob").await;
    let busy = start(&alice, "sleep", &["600"]).await;
    let _open = alice.stream(&busy.id).await.unwrap();

    let job = start(&alice, "/bin/ls", &["/proc/self/fd"]).await;
    let f = follow(&alice, &job.id).await;
    assert_eq!(String::from_utf8(f.stdout()).unwrap(), "0\n1\n2\n3\n");
    assert_eq!(f.stderr(), b"");

    let job = start(&alice, "readlink", &["/proc/self/fd/0"]).await;
    assert_eq!(follow(&alice, &job.id).await.stdout(), b"/dev/null\n");

    let job = start(&alice, "pwd", &[]).await;
    assert_eq!(follow(&alice, &job.id).await.stdout(), b"/\n");

    // Reading stdin gets end-of-file at once.
    let job = start(&alice, "cat", &[]).await;
    let f = follow(&alice, &job.id).await;
    assert_eq!((f.stdout(), f.stderr()), (vec![], vec![]));
    assert_eq!(
        (f.status.state(), f.status.exit_code),
        (State::Exited, Some(0))
    );
    alice.stop(&busy.id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_job_is_its_own_process_group() {
    // Scenario: a job's main process leads its own process group, so stop
    // signals reach all of the job and nothing else.
    let server = TestServer::start().await;
    let alice = client(&server, "alice").await;
    let (job, _stream, main) = start_with_pid(&alice, "exec sleep 600").await;
    let pid = main.pid();
    let pgid = nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid))).unwrap();
    assert_eq!(pgid.as_raw(), pid);
    assert_ne!(
        pgid,
        nix::unistd::getpgrp(),
        "the job shares the daemon's group"
    );
    alice.stop(&job.id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_carry_command_times_and_owner() {
    // Scenario: start, status, list and the final status all describe the job:
    // its canonical UUID v4 id, command, start and end times and owner.
    let server = TestServer::start().await;
    let alice = client(&server, "alice").await;
    let before = SystemTime::now();
    let started = start(&alice, "sh", &["-c", "echo hi; exit 4"]).await;
    let after = SystemTime::now();

    let uuid = uuid::Uuid::parse_str(&started.id).unwrap();
    assert_eq!(uuid.get_version_num(), 4);
    assert_eq!(uuid.hyphenated().to_string(), started.id);
    // The reply describes the job as it is when the reply is built: running,
    // or (on a loaded machine the job can be quicker) already exited 4.
    match started.state() {
        State::Running => assert_eq!(
            (started.exit_code, started.signal, started.ended_at),
            (None, None, None)
        ),
        State::Exited => assert_eq!(
            (
                started.exit_code,
                started.signal,
                started.ended_at.is_some()
            ),
            (Some(4), None, true)
        ),
        other => panic!("a started job is {other:?}"),
    }
    assert_eq!(started.command, ["sh", "-c", "echo hi; exit 4"]);
    assert_eq!(started.owner, identity("alice").to_string());
    let started_at = SystemTime::try_from(started.started_at.unwrap()).unwrap();
    assert!(
        before <= started_at && started_at <= after,
        "started_at {started_at:?}"
    );

    let done = wait_final(&alice, &started.id).await;
    assert_eq!(
        (done.state(), done.exit_code, done.signal),
        (State::Exited, Some(4), None)
    );
    assert_eq!(done.id, started.id);
    assert_eq!(done.command, started.command);
    assert_eq!(done.owner, started.owner);
    assert_eq!(done.started_at, started.started_at);
    let ended_at = SystemTime::try_from(done.ended_at.unwrap()).unwrap();
    assert!(
        started_at <= ended_at && ended_at <= SystemTime::now(),
        "ended_at {ended_at:?}"
    );

    assert_eq!(alice.status(&started.id).await.unwrap(), done);
    assert_eq!(alice.list(false).await.unwrap(), vec![done]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_is_oldest_first() {
    // Scenario: three jobs started one after another are listed in that order.
    let server = TestServer::start().await;
    let alice = client(&server, "alice").await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(start(&alice, "true", &[]).await.id);
    }
    let listed = listed_ids(&alice).await;
    assert_eq!(listed, ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_the_kernel_cannot_execute_is_refused_at_start() {
    // Scenario (C29): an executable-mode text file without `#!` (exec fails
    // with ENOEXEC) is a start error, not a job that "exits 126".
    refuses_a_file_without_a_shebang(TestServer::start().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncontained_daemon_refuses_a_file_the_kernel_cannot_execute() {
    // Scenario: the same without containment (jobsd as a developer runs it);
    // the C library's execvp would run the file through /bin/sh, so the job
    // printed "hi" instead of failing to start.
    refuses_a_file_without_a_shebang(TestServer::start_uncontained(|_| {}).await).await;
}

async fn refuses_a_file_without_a_shebang(server: TestServer) {
    use std::os::unix::fs::PermissionsExt;
    let alice = client(&server, "alice").await;
    let dir = scratch();
    let script = dir.path().join("no-shebang");
    std::fs::write(&script, "echo hi\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let program = script.to_str().unwrap();
    let err = alice.start(program, &[]).await.unwrap_err();
    assert_eq!(code(&err), tonic::Code::InvalidArgument);
    assert_eq!(
        message(&err),
        format!("program '{program}' is not an executable file")
    );
    assert_eq!(alice.list(false).await.unwrap(), vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncontained_job_has_no_controlling_terminal() {
    // Scenario: jobsd runs without root from a user's terminal; its jobs
    // must not share that terminal (a job could type into the user's shell
    // or stop the daemon with a ^C sent through it). The job's main process
    // leads a session of its own, without a terminal (tty_nr 0).
    let server = TestServer::start_uncontained(|_| {}).await;
    let alice = client(&server, "alice").await;
    let job = start(
        &alice,
        "sh",
        &["-c", "echo $$; cut -d' ' -f6,7 /proc/self/stat"],
    )
    .await;
    let f = follow(&alice, &job.id).await;
    let text = String::from_utf8(f.stdout()).unwrap();
    let pid = text.lines().next().unwrap();
    assert_eq!(text, format!("{pid}\n{pid} 0\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_left_the_group_cannot_hold_the_job_open() {
    // Scenario: an uncontained job (a daemon without root, or
    // --containment off) starts a child in a new session (out of reach of
    // the group kill) that keeps stdout open; the job still ends, with its
    // output, once the bounded drain after the main process's exit is over.
    // Uncontained on purpose: a contained job's cgroup kill would end the
    // child at once and the drain timeout would never be reached.
    let server = TestServer::start_uncontained(|_| {}).await;
    let alice = client(&server, "alice").await;
    let t = Instant::now();
    let job = start(
        &alice,
        "sh",
        // The job ends only once its child has left the process group
        // (its session id, field 6 of /proc/PID/stat, is its own pid):
        // ending earlier, the end-of-job group kill would still reach it.
        &[
            "-c",
            "setsid sleep 300 & while [ \"$(cut -d' ' -f6 /proc/$!/stat)\" != $! ]; do :; done; \
             echo $!; echo started",
        ],
    )
    .await;
    // Uncontained, the job shares the host's PID namespace, so the pid it
    // prints is the host's; it is held by a pidfd (and checked to be that
    // sleep) before the clean-up signals it, so that no other process that
    // reused the pid can be hit.
    let mut stream = alice.stream(&job.id).await.unwrap();
    let first = read_lines(&mut stream, 1).await;
    let first = String::from_utf8(first).unwrap();
    let escaped: i32 = first.lines().next().unwrap().parse().unwrap();
    let held = Pidfd::open(escaped).expect("the escaped child runs");
    // `$!` is printed right after the fork: the child becomes `setsid`, then
    // `sleep`, by two execs that may not have happened yet.
    let cmdline = || std::fs::read(format!("/proc/{escaped}/cmdline")).unwrap_or_default();
    assert!(
        eventually(STREAM_DEADLINE, || held.alive()
            && cmdline() == b"sleep\x00300\x00")
        .await,
        "pid {escaped} is not the job's sleep: {:?}",
        String::from_utf8_lossy(&cmdline())
    );
    let f = follow(&alice, &job.id).await;
    let took = t.elapsed();
    held.kill();
    let text = String::from_utf8(f.stdout()).unwrap();
    assert_eq!(text, format!("{escaped}\nstarted\n"));
    assert_eq!(
        (f.status.state(), f.status.exit_code),
        (State::Exited, Some(0))
    );
    assert!(
        took >= jobs::job::DRAIN_TIMEOUT,
        "ended after {took:?}, before the drain timeout: the child did not hold stdout"
    );
    assert!(
        took < jobs::job::DRAIN_TIMEOUT + Duration::from_secs(10),
        "took {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_output_is_stored_in_a_private_directory() {
    // Scenario: output logs live under the state directory in a directory
    // only the daemon's user can enter.
    use std::os::unix::fs::PermissionsExt;
    let server = TestServer::start().await;
    let alice = client(&server, "alice").await;
    let job = start(&alice, "echo", &["private"]).await;
    follow(&alice, &job.id).await;
    let dir = server.state_dir().join("output");
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "output directory mode {mode:o}");
    let logs: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
    assert_eq!(logs.len(), 1, "one job, one log");
    assert!(logs[0].file_type().unwrap().is_file());
}

#[tokio::test]
async fn state_and_output_are_owner_only_even_in_a_loose_directory() {
    // Scenario: an operator prepares the state directory with the usual 0755
    // (and an output directory inside); the daemon makes both owner-only, and
    // every output log is 0600 whatever the umask.
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch();
    let state = dir.path().join("state");
    let output = state.join("output");
    std::fs::create_dir_all(&output).unwrap();
    for d in [&state, &output] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let state_dir = jobs::server::StateDir::open(&state).unwrap();
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join(jobs::store::FILE_NAME)), 0o600);
    let _jobs = jobs::job::Jobs::open(
        std::sync::Arc::new(jobs::exec::LocalExecutor::uncontained()),
        jobs::job::JobsConfig::new(output.clone()),
        state_dir.store().clone(),
        state_dir.record_ids().unwrap(),
    )
    .unwrap();
    assert_eq!(mode(&output), 0o700);
    let log = output.join("x.log");
    let _ = jobs::output::create(&log).unwrap();
    assert_eq!(mode(&log), 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_returns_more_than_four_mib_of_jobs_in_pages() {
    // Scenario: alice's five jobs have ~1 MB command lines each (5 MB of
    // records in all, past gRPC's 4 MiB message limit); list still returns
    // all five, in start order, with their exact commands.
    let server = TestServer::start().await;
    let alice = client(&server, "alice").await;
    let mut started = Vec::new();
    for letter in ['a', 'b', 'c', 'd', 'e'] {
        let word = letter.to_string().repeat(100_000);
        let words = vec![word.as_str(); 10];
        let job = start(&alice, "/bin/true", &words).await;
        let mut command = vec!["/bin/true".to_string()];
        command.extend(args(&words));
        assert_eq!(job.command, command);
        started.push((job.id, command));
    }
    let listed: Vec<(String, Vec<String>)> = alice
        .list(false)
        .await
        .unwrap()
        .into_iter()
        .map(|j| (j.id, j.command))
        .collect();
    assert_eq!(listed.len(), 5);
    assert!(
        listed == started,
        "list differs from the jobs started, in order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_return_every_job_once_while_jobs_come_and_go() {
    // Scenario: alice pages through her jobs two at a time; between the
    // pages a job of a later page is removed and a new job is started. Every
    // job still there is returned exactly once, in start order, and the last
    // page has no next token.
    let server = TestServer::start().await;
    let alice = client(&server, "alice").await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(start(&alice, "/bin/true", &[]).await.id);
    }
    let first = alice.list_page(false, 2, "").await.unwrap();
    let page_ids = |page: &proto::ListResponse| -> Vec<String> {
        page.jobs.iter().map(|j| j.id.clone()).collect()
    };
    assert_eq!(page_ids(&first), ids[..2]);
    assert!(!first.next_page_token.is_empty());
    wait_final(&alice, &ids[2]).await;
    alice.remove(&ids[2]).await.unwrap();
    let late = start(&alice, "/bin/true", &[]).await.id;
    let mut seen = page_ids(&first);
    let mut token = first.next_page_token;
    let mut pages = 1;
    while !token.is_empty() {
        let page = alice.list_page(false, 2, &token).await.unwrap();
        assert!(page.jobs.len() <= 2, "page of {}", page.jobs.len());
        seen.extend(page_ids(&page));
        token = page.next_page_token;
        pages += 1;
    }
    let expected = vec![
        ids[0].clone(),
        ids[1].clone(),
        ids[3].clone(),
        ids[4].clone(),
        late,
    ];
    assert_eq!(seen, expected);
    assert_eq!(pages, 3);
    // Without a page size, one page holds them all.
    let all = alice.list_page(false, 0, "").await.unwrap();
    assert_eq!(page_ids(&all), expected);
    assert_eq!(all.next_page_token, "");
}

#[tokio::test]
async fn malformed_list_paging_is_invalid_argument() {
    // Scenario: a page token the server never issued and a negative page
    // size are each refused with INVALID_ARGUMENT and a fixed message.
    let server = TestServer::start().await;
    let alice = client(&server, "alice").await;
    let bad_token = "page_token is not one this server issued; list again from an empty page_token";
    for token in [
        "garbage",
        "12:not-a-uuid",
        "12:67e55044-10b1-426f-9247-bb680e5fe0c8x",
    ] {
        let e = alice.list_page(false, 0, token).await.unwrap_err();
        assert_eq!(code(&e), tonic::Code::InvalidArgument, "{token}");
        assert_eq!(message(&e), bad_token, "{token}");
    }
    let e = alice.list_page(false, -1, "").await.unwrap_err();
    assert_eq!(code(&e), tonic::Code::InvalidArgument);
    assert_eq!(
        message(&e),
        "page_size must not be negative (0 means the server's default)"
    );
}

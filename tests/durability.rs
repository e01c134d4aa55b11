//! Jobs outlive the daemon: records and output survive a restart on the same
//! state directory byte for byte; finished jobs go by age, by their owner's
//! total output, or by Remove, and stay gone; a job store the daemon cannot
//! read is refused without being touched.
//!
//! A daemon killed with SIGKILL cannot be in-process (the test would die
//! with it): [`a_job_left_running_by_a_killed_daemon_comes_back_lost`] runs
//! the server in a child process (this test binary again, running only
//! [`doomed_daemon`]) and kills that.

mod common;

use std::collections::BTreeSet;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::*;
use jobs::client::Client;
use jobs::job::Retention;
use jobs::proto::{self, State};
use jobs::server::{ServerError, StateDir};
use jobs::store::{SCHEMA_VERSION, StoreError};

/// A job's output as `(fd, bytes)` runs: adjacent chunks of the same fd
/// merged, so that two reads of one log compare equal however the server cut
/// it into chunks, while the order of stdout and stderr is kept.
fn runs(chunks: &[(proto::Fd, Vec<u8>)]) -> Vec<(proto::Fd, Vec<u8>)> {
    let mut out: Vec<(proto::Fd, Vec<u8>)> = Vec::new();
    for (fd, data) in chunks {
        match out.last_mut() {
            Some((last, bytes)) if last == fd => bytes.extend_from_slice(data),
            _ => out.push((*fd, data.clone())),
        }
    }
    out
}

/// The bytes of `fd` in `runs`.
fn of_fd(runs: &[(proto::Fd, Vec<u8>)], fd: proto::Fd) -> Vec<u8> {
    runs.iter()
        .filter(|(f, _)| *f == fd)
        .flat_map(|(_, d)| d.iter().copied())
        .collect()
}

/// What `seq 1 200000` prints.
fn seq_reference() -> Vec<u8> {
    (1..=200_000)
        .map(|n| format!("{n}\n"))
        .collect::<String>()
        .into_bytes()
}

/// A proto timestamp as a `SystemTime`; panics when unset.
fn time_of(ts: Option<prost_types::Timestamp>) -> SystemTime {
    SystemTime::try_from(ts.expect("timestamp set")).expect("timestamp in range")
}

/// The names of the files in the server's output directory.
fn log_files(state_dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(state_dir.join("output"))
        .expect("list the output directory")
        .flatten()
        .map(|e| e.file_name().into_string().expect("UTF-8 file name"))
        .collect()
}

/// `<id>.log` for each id.
fn logs_of<'a>(ids: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    ids.into_iter().map(|id| format!("{id}.log")).collect()
}

/// True when `id`'s status is NOT_FOUND for `client`.
async fn is_gone(client: &Client, id: &str) -> bool {
    match client.status(id).await {
        Ok(_) => false,
        Err(e) => {
            assert_eq!(
                (code(&e), message(&e).as_str()),
                (tonic::Code::NotFound, "no such job"),
                "status of {id}"
            );
            true
        }
    }
}

/// Asserts that every call on `id` (stop, status, output, stream) and Remove
/// answer NOT_FOUND "no such job", as for an id that never existed.
async fn assert_no_such_job(client: &Client, id: &str) {
    for (call, e) in every_job_call(client, id).await {
        assert_eq!(
            (code(&e), message(&e).as_str()),
            (tonic::Code::NotFound, "no such job"),
            "{call}({id})"
        );
    }
    let e = client.remove(id).await.unwrap_err();
    assert_eq!(
        (code(&e), message(&e).as_str()),
        (tonic::Code::NotFound, "no such job"),
        "remove({id})"
    );
}

/// How a job must end: state, exit code or signal, and its output.
struct Ending<'a> {
    job: &'a proto::JobStatus,
    state: State,
    exit_code: Option<i32>,
    signal: Option<i32>,
    stdout: &'a [u8],
    stderr: &'a [u8],
}

impl<'a> Ending<'a> {
    /// Exits with `code` after writing `stdout` and `stderr`.
    fn exit(job: &'a proto::JobStatus, code: i32, stdout: &'a [u8], stderr: &'a [u8]) -> Self {
        Self {
            job,
            state: State::Exited,
            exit_code: Some(code),
            signal: None,
            stdout,
            stderr,
        }
    }
}

/// Everything a finished job showed before the restart.
struct Seen {
    status: proto::JobStatus,
    stream: Vec<(proto::Fd, Vec<u8>)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_graceful_shutdown_keeps_every_job_and_its_output() {
    // Scenario: alice has finished jobs of every kind (1.3 MB of stdout,
    // stdout and stderr interleaved, exit 3, killed by SIGKILL) and one that
    // is still running when the server shuts down; bob has one. On the same
    // state directory, the next server lists the same jobs in the same order
    // with identical statuses, the running one as Stopped by SIGTERM, and
    // serves every byte of their output on the right fd.
    let server = TestServer::start().await;
    let alice = client(&server, "alice").await;
    let bob = client(&server, "bob").await;

    let seq = start(&alice, "seq", &["1", "200000"]).await;
    let mixed = start(
        &alice,
        "sh",
        &[
            "-c",
            "for i in 1 2 3 4 5; do echo out$i; echo err$i >&2; done",
        ],
    )
    .await;
    let three = start(&alice, "sh", &["-c", "echo to-stderr >&2; exit 3"]).await;
    let killed = start(&alice, "sh", &["-c", "echo before; kill -9 $$"]).await;
    let bobs = start(&bob, "echo", &["bob's"]).await;

    let seq_out = seq_reference();
    assert_eq!(
        (seq_out.len(), seq_out.ends_with(b"\n200000\n")),
        (1_288_895, true)
    );
    let expected = [
        Ending::exit(&seq, 0, &seq_out, b""),
        Ending::exit(
            &mixed,
            0,
            b"out1\nout2\nout3\nout4\nout5\n",
            b"err1\nerr2\nerr3\nerr4\nerr5\n",
        ),
        Ending::exit(&three, 3, b"", b"to-stderr\n"),
        Ending {
            job: &killed,
            state: State::Killed,
            exit_code: None,
            signal: Some(9),
            stdout: b"before\n",
            stderr: b"",
        },
    ];
    let mut seen = Vec::new();
    for e in &expected {
        let (job, stdout, stderr) = (e.job, e.stdout, e.stderr);
        let f = follow(&alice, &job.id).await;
        assert_eq!(
            (f.status.state(), f.status.exit_code, f.status.signal),
            (e.state, e.exit_code, e.signal),
            "{:?}",
            job.command
        );
        assert_eq!(f.stdout(), stdout, "stdout of {:?}", job.command);
        assert_eq!(f.stderr(), stderr, "stderr of {:?}", job.command);
        assert_eq!(
            f.status.output_bytes,
            (stdout.len() + stderr.len()) as u64,
            "{:?}",
            job.command
        );
        seen.push(Seen {
            status: f.status.clone(),
            stream: runs(&f.chunks),
        });
    }
    let bobs_final = wait_final(&bob, &bobs.id).await;

    // Started last, so listed last; running when the server stops.
    let sleeper = start(&alice, "sleep", &["600"]).await;
    let before = alice.list(false).await.unwrap();
    let order: Vec<&str> = [&seq, &mixed, &three, &killed, &sleeper]
        .iter()
        .map(|j| j.id.as_str())
        .collect();
    assert_eq!(
        before.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        order
    );
    for (listed, seen) in before.iter().zip(&seen) {
        assert_eq!(listed, &seen.status);
    }
    assert_eq!(before[4].state(), State::Running);
    drop((alice, bob));

    let (result, state) = server.shutdown_keeping_state().await;
    result.expect("serve failed");
    let server = TestServer::start_on(state, true, |_| {}).await;
    let alice = client(&server, "alice").await;
    let bob = client(&server, "bob").await;

    let after = alice.list(false).await.unwrap();
    assert_eq!(
        after.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        order,
        "the same jobs in the same order"
    );
    for (e, (seen, now)) in expected.iter().zip(seen.iter().zip(&after)) {
        let job = e.job;
        assert_eq!(now, &seen.status, "status of {:?}", job.command);
        assert_eq!(
            &alice.status(&job.id).await.unwrap(),
            now,
            "status of {:?}",
            job.command
        );
    }
    // The running job was stopped by the shutdown, and that is what was
    // recorded; it is otherwise the job it was.
    let stopped = &after[4];
    let mut want = before[4].clone();
    want.state = State::Stopped as i32;
    want.signal = Some(15);
    want.ended_at = stopped.ended_at;
    want.usage = stopped.usage;
    assert_eq!(stopped, &want);
    let (started, ended) = (time_of(stopped.started_at), time_of(stopped.ended_at));
    assert!(
        started <= ended && ended <= SystemTime::now(),
        "ended_at {ended:?} outside [{started:?}, now]"
    );

    // Output, byte for byte and fd for fd, by Stream and by Output.
    for (e, seen) in expected.iter().zip(&seen) {
        let (job, stdout, stderr) = (e.job, e.stdout, e.stderr);
        let f = follow(&alice, &job.id).await;
        assert_eq!(&f.status, &seen.status, "final status of {:?}", job.command);
        let streamed = runs(&f.chunks);
        assert_eq!(
            (
                sha256(&of_fd(&streamed, proto::Fd::Stdout)),
                sha256(&of_fd(&streamed, proto::Fd::Stderr))
            ),
            (sha256(stdout), sha256(stderr)),
            "streamed output of {:?}",
            job.command
        );
        assert!(streamed == seen.stream, "interleaving of {:?}", job.command);
        let output = runs(&output_chunks(&alice, &job.id).await);
        assert!(output == seen.stream, "Output of {:?}", job.command);
    }
    let f = follow(&alice, &sleeper.id).await;
    assert_eq!((f.chunks.len(), &f.status), (0, stopped));
    assert_eq!(output_chunks(&alice, &sleeper.id).await, vec![]);

    // Bob's job is his alone, as before.
    assert_eq!(bob.list(false).await.unwrap(), vec![bobs_final.clone()]);
    let f = follow(&bob, &bobs.id).await;
    assert_eq!(
        (f.stdout(), f.stderr(), f.status),
        (b"bob's\n".to_vec(), vec![], bobs_final)
    );
    assert_no_such_job(&bob, &seq.id).await;
    assert_no_such_job(&alice, &bobs.id).await;
    server.shutdown().await.expect("serve failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_jobs_are_removed_after_max_age_and_running_ones_never() {
    // Scenario: with a 300 ms retention age, a finished job and its log file
    // disappear on their own, but no earlier than 300 ms after it ended; a
    // job that runs all the while stays, and goes the same way once stopped.
    const AGE: Duration = Duration::from_millis(300);
    let server = TestServer::start_with(|c| c.jobs.retention.max_age = Some(AGE)).await;
    let alice = client(&server, "alice").await;
    let state = server.state_dir().to_owned();
    let long = start(&alice, "sleep", &["600"]).await;
    let short = start(&alice, "echo", &["bye"]).await;
    let ended = wait_final(&alice, &short.id).await;
    assert_eq!(ended.state(), State::Exited);
    assert_eq!(
        log_files(&state),
        logs_of([long.id.as_str(), short.id.as_str()])
    );

    assert!(
        eventually_async(Duration::from_secs(10), || is_gone(&alice, &short.id)).await,
        "the finished job was not removed within 10 s"
    );
    let seen_gone = SystemTime::now();
    let due = time_of(ended.ended_at) + AGE;
    assert!(
        seen_gone >= due,
        "removed {:?} before it was due",
        due.duration_since(seen_gone).unwrap_or_default()
    );
    assert_no_such_job(&alice, &short.id).await;
    assert!(
        eventually(Duration::from_secs(5), || !state
            .join("output")
            .join(format!("{}.log", short.id))
            .exists())
        .await,
        "the removed job's log file is still there"
    );

    // The long job has run for longer than the age by now, and stays.
    let now = alice.status(&long.id).await.unwrap();
    assert_eq!(now.state(), State::Running);
    assert!(
        SystemTime::now()
            .duration_since(time_of(now.started_at))
            .unwrap()
            > AGE
    );
    assert_eq!(listed_ids(&alice).await, vec![long.id.clone()]);
    assert_eq!(log_files(&state), logs_of([long.id.as_str()]));

    let stopped = alice.stop(&long.id).await.unwrap();
    assert_eq!(
        (stopped.state(), stopped.signal),
        (State::Stopped, Some(15))
    );
    assert!(
        eventually_async(Duration::from_secs(10), || is_gone(&alice, &long.id)).await,
        "the stopped job was not removed within 10 s"
    );
    let seen_gone = SystemTime::now();
    assert!(
        seen_gone >= time_of(stopped.ended_at) + AGE,
        "removed before it was due"
    );
    assert_eq!(listed_ids(&alice).await, Vec::<String>::new());
    assert!(
        eventually(Duration::from_secs(5), || log_files(&state).is_empty()).await,
        "log files left: {:?}",
        log_files(&state)
    );
    server.shutdown().await.expect("serve failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_output_cap_an_identitys_oldest_finished_jobs_go_but_never_its_latest() {
    // Scenario: with a 10 KiB cap per identity, alice runs 4 KiB jobs one
    // after another: once a third runs, her oldest goes, and so on, so that
    // she always keeps the two latest; a 12 KiB job, over the cap beside her
    // latest 4 KiB one, is cut at the cap while it runs (output_limit, 6 KiB
    // kept) and then takes the older of the two with it. Bob's older jobs,
    // 8 KiB in all, are never touched by alice's removals.
    const CAP: u64 = 10 * 1024;
    let server = TestServer::start_with(|c| {
        c.jobs.retention = Retention {
            max_age: None,
            max_output_per_identity: Some(CAP),
        }
    })
    .await;
    let alice = client(&server, "alice").await;
    let bob = client(&server, "bob").await;
    let state = server.state_dir().to_owned();

    /// Runs `head -c BYTES /dev/zero` to its end and returns its id.
    async fn run(client: &Client, bytes: u64) -> String {
        let job = start(client, "head", &["-c", &bytes.to_string(), "/dev/zero"]).await;
        let end = wait_final(client, &job.id).await;
        assert_eq!(
            (end.state(), end.exit_code, end.output_bytes),
            (State::Exited, Some(0), bytes)
        );
        job.id
    }

    let bobs = vec![run(&bob, 4096).await, run(&bob, 4096).await];
    let mut alices: Vec<String> = Vec::new();
    // After the nth of alice's jobs ends: the ids she keeps.
    for n in 1..=4 {
        alices.push(run(&alice, 4096).await);
        let keep: Vec<String> = alices[alices.len().saturating_sub(2)..].to_vec();
        assert!(
            eventually_async(Duration::from_secs(10), || async {
                listed_ids(&alice).await == keep
            })
            .await,
            "after job {n}: alice has {:?}, expected {keep:?} (all: {alices:?})",
            listed_ids(&alice).await
        );
    }
    let big = start(&alice, "head", &["-c", "12288", "/dev/zero"])
        .await
        .id;
    let end = wait_final(&alice, &big).await;
    assert_eq!(
        (end.state(), end.output_bytes, end.max_output_bytes),
        (State::OutputLimit, CAP - 4096, None)
    );
    let latest = alices[3].clone();
    assert!(
        eventually_async(Duration::from_secs(10), || async {
            listed_ids(&alice).await == [latest.clone(), big.clone()]
        })
        .await,
        "after the 12 KiB job: alice has {:?}, expected {latest} and it",
        listed_ids(&alice).await
    );
    for gone in &alices[..3] {
        assert_no_such_job(&alice, gone).await;
    }
    assert_eq!(listed_ids(&bob).await, bobs);
    let kept = [
        latest.as_str(),
        big.as_str(),
        bobs[0].as_str(),
        bobs[1].as_str(),
    ];
    assert!(
        eventually(Duration::from_secs(5), || log_files(&state)
            == logs_of(kept))
        .await,
        "log files {:?}, expected those of {kept:?}",
        log_files(&state)
    );
    // The survivors' output is intact.
    let (out, err) = collect_output(&alice, &big).await;
    assert_eq!((out, err), (vec![0u8; (CAP - 4096) as usize], vec![]));
    server.shutdown().await.expect("serve failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_over_its_output_cap_ends_only_its_own_running_job() {
    // Scenario: with a 64 KiB cap per identity, bob's job prints a line and
    // keeps running; alice's job writes without end. Alice's job ends in
    // output_limit with exactly the cap kept while it ran; bob's job runs on
    // and its output is intact; bob can still write up to his own cap.
    const CAP: u64 = 64 * 1024;
    let server = TestServer::start_with(|c| {
        c.jobs.retention = Retention {
            max_age: None,
            max_output_per_identity: Some(CAP),
        }
    })
    .await;
    let alice = client(&server, "alice").await;
    let bob = client(&server, "bob").await;
    let bobs = start(&bob, "sh", &["-c", "echo bob; exec sleep 600"]).await;
    let mut stream = bob.stream(&bobs.id).await.unwrap();
    assert_eq!(read_lines(&mut stream, 1).await, b"bob\n");
    let filler = start(&alice, "cat", &["/dev/zero"]).await;
    let end = wait_final(&alice, &filler.id).await;
    assert_eq!((end.state(), end.output_bytes), (State::OutputLimit, CAP));
    let still = bob.status(&bobs.id).await.unwrap();
    assert_eq!(still.state(), State::Running);
    let more = start(&bob, "head", &["-c", "32768", "/dev/zero"]).await;
    let more_end = wait_final(&bob, &more.id).await;
    assert_eq!(
        (more_end.state(), more_end.exit_code, more_end.output_bytes),
        (State::Exited, Some(0), 32768)
    );
    let stopped = bob.stop(&bobs.id).await.unwrap();
    assert_eq!(stopped.state(), State::Stopped);
    let (out, err) = collect_output(&bob, &bobs.id).await;
    assert_eq!((out, err), (b"bob\n".to_vec(), vec![]));
    server.shutdown().await.expect("serve failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_deletes_a_finished_job_for_good_and_nothing_else() {
    // Scenario: alice removes her finished job: it is gone from every call
    // and from the disk, also after a restart. A running job cannot be
    // removed; bob cannot tell alice's job from a random id; a malformed id
    // is INVALID_ARGUMENT; a follower that had the job open reads it to the
    // end anyway.
    let server = TestServer::start().await;
    let alice = client(&server, "alice").await;
    let bob = client(&server, "bob").await;
    let state = server.state_dir().to_owned();

    let done = start(&alice, "echo", &["done"]).await;
    wait_final(&alice, &done.id).await;
    let kept = start(&alice, "echo", &["kept"]).await;
    let kept_final = wait_final(&alice, &kept.id).await;
    let running = start(&alice, "sleep", &["600"]).await;
    assert!(log_files(&state).contains(&format!("{}.log", done.id)));

    alice.remove(&done.id).await.expect("remove a finished job");
    assert_no_such_job(&alice, &done.id).await;
    assert_eq!(
        listed_ids(&alice).await,
        vec![kept.id.clone(), running.id.clone()]
    );
    assert_eq!(
        log_files(&state),
        logs_of([kept.id.as_str(), running.id.as_str()])
    );

    // A running job stays as it is.
    let e = alice.remove(&running.id).await.unwrap_err();
    assert_eq!(
        (code(&e), message(&e).as_str()),
        (
            tonic::Code::FailedPrecondition,
            "the job is still running; stop it first"
        )
    );
    assert_eq!(
        alice.status(&running.id).await.unwrap().state(),
        State::Running
    );

    // Bob gets exactly what an unknown id gets, and alice's job stays.
    let unknown = "67e55044-10b1-426f-9247-bb680e5fe0c8";
    let theirs = bob.remove(&kept.id).await.unwrap_err();
    let nobodys = bob.remove(unknown).await.unwrap_err();
    assert_eq!(
        (code(&theirs), message(&theirs)),
        (code(&nobodys), message(&nobodys))
    );
    assert_eq!(
        (code(&theirs), message(&theirs).as_str()),
        (tonic::Code::NotFound, "no such job")
    );
    assert_eq!(alice.status(&kept.id).await.unwrap(), kept_final);

    for malformed in [
        "",
        "not-a-job",
        "67E55044-10B1-426F-9247-BB680E5FE0C8",
        "67e5504410b1426f9247bb680e5fe0c8",
    ] {
        let e = alice.remove(malformed).await.unwrap_err();
        assert_eq!(
            (code(&e), message(&e).as_str()),
            (
                tonic::Code::InvalidArgument,
                "job id must be a UUID in canonical lower-case form, like 67e55044-10b1-426f-9247-bb680e5fe0c8"
            ),
            "{malformed:?}"
        );
    }

    // Followers that opened the job before it was removed read all of it.
    let big = start(&alice, "seq", &["1", "200000"]).await;
    let big_final = wait_final(&alice, &big.id).await;
    let mut stream = alice.stream(&big.id).await.unwrap();
    let first = match stream.message().await.unwrap() {
        Some(proto::StreamEvent {
            event: Some(proto::stream_event::Event::Chunk(c)),
        }) => c,
        other => panic!("expected a first chunk, got {other:?}"),
    };
    let mut output = alice.output(&big.id).await.unwrap();
    alice.remove(&big.id).await.expect("remove");
    assert!(!log_files(&state).contains(&format!("{}.log", big.id)));
    assert_no_such_job(&alice, &big.id).await;
    let rest = tokio::time::timeout(STREAM_DEADLINE, follow_stream(stream))
        .await
        .expect("the follower did not finish");
    let mut streamed = first.data;
    streamed.extend(rest.stdout());
    assert_eq!(
        (sha256(&streamed), rest.stderr(), &rest.status),
        (sha256(&seq_reference()), vec![], &big_final)
    );
    let mut read = Vec::new();
    while let Some(c) = output.message().await.expect("output after remove") {
        assert_eq!(check_chunk(&c), proto::Fd::Stdout);
        read.extend(c.data);
    }
    assert_eq!(sha256(&read), sha256(&seq_reference()));

    // Removed stays removed on the next server.
    drop((alice, bob));
    let (result, state) = server.shutdown_keeping_state().await;
    result.expect("serve failed");
    let server = TestServer::start_on(state, true, |_| {}).await;
    let alice = client(&server, "alice").await;
    assert_eq!(
        listed_ids(&alice).await,
        vec![kept.id.clone(), running.id.clone()]
    );
    assert_no_such_job(&alice, &done.id).await;
    assert_no_such_job(&alice, &big.id).await;
    assert_eq!(
        log_files(server.state_dir()),
        logs_of([kept.id.as_str(), running.id.as_str()])
    );
    // The job the shutdown stopped can be removed now.
    alice
        .remove(&running.id)
        .await
        .expect("remove the stopped job");
    assert_eq!(listed_ids(&alice).await, vec![kept.id.clone()]);
    server.shutdown().await.expect("serve failed");
}

/// A state directory to break, under Cargo's target tmp dir.
fn scratch_state() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("jobs-store-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("temp dir");
    let state = dir.path().join("state");
    (dir, state)
}

#[test]
fn a_store_written_by_a_newer_jobsd_is_refused_and_left_alone() {
    // Scenario: the state directory's jobs.db says schema version 99 (a later
    // jobsd wrote it); this one refuses to open it, says which versions, and
    // changes nothing in the file.
    let (_dir, state) = scratch_state();
    drop(StateDir::open(&state).expect("a new state directory"));
    let db = state.join(jobs::store::FILE_NAME);
    {
        let conn = rusqlite::Connection::open(&db).expect("open jobs.db");
        conn.pragma_update(None, "user_version", 99)
            .expect("set user_version");
    }
    let before = std::fs::read(&db).unwrap();
    match StateDir::open(&state) {
        Err(ServerError::Store(StoreError::SchemaTooNew {
            path,
            found,
            supported,
        })) => {
            assert_eq!((path, found, supported), (db.clone(), 99, SCHEMA_VERSION));
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
    assert!(std::fs::read(&db).unwrap() == before, "jobs.db was changed");
    // Refused again, the same way: nothing was half-migrated.
    assert!(matches!(
        StateDir::open(&state),
        Err(ServerError::Store(StoreError::SchemaTooNew {
            found: 99,
            ..
        }))
    ));
}

#[test]
fn a_jobs_db_that_is_not_ours_is_refused_and_left_alone() {
    // Scenario: jobs.db is a text file, or another program's SQLite database;
    // either is NotAJobsDatabase and stays exactly as it was.
    let (_dir, state) = scratch_state();
    std::fs::create_dir_all(&state).unwrap();
    let db = state.join(jobs::store::FILE_NAME);
    let text = b"not a database, just some text that is long enough to be a header\n".repeat(4);
    std::fs::write(&db, &text).unwrap();
    match StateDir::open(&state) {
        Err(ServerError::Store(StoreError::NotAJobsDatabase { path })) => assert_eq!(path, db),
        other => panic!("expected NotAJobsDatabase, got {other:?}"),
    }
    assert!(
        std::fs::read(&db).unwrap() == text,
        "the text file was changed"
    );

    let (_dir, state) = scratch_state();
    std::fs::create_dir_all(&state).unwrap();
    let db = state.join(jobs::store::FILE_NAME);
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch("CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('mine');")
            .unwrap();
    }
    let before = std::fs::read(&db).unwrap();
    match StateDir::open(&state) {
        Err(ServerError::Store(StoreError::NotAJobsDatabase { path })) => assert_eq!(path, db),
        other => panic!("expected NotAJobsDatabase, got {other:?}"),
    }
    assert!(
        std::fs::read(&db).unwrap() == before,
        "the other database was changed"
    );
}

/// Environment of [`doomed_daemon`]: the state directory, then the PEM files
/// of the server and of alice (the parent's PKI, so that alice is the same
/// identity on both sides).
const DOOMED_ENV: [&str; 6] = [
    "JOBS_TEST_DOOMED_STATE",
    "JOBS_TEST_DOOMED_CA",
    "JOBS_TEST_DOOMED_SERVER_CERT",
    "JOBS_TEST_DOOMED_SERVER_KEY",
    "JOBS_TEST_DOOMED_ALICE_CERT",
    "JOBS_TEST_DOOMED_ALICE_KEY",
];

/// Runs [`doomed_daemon`] in a child process on `state` (uncontained if
/// asked) and waits until its job has written its line: the child, the
/// job's id, and the pid the job printed (as the job sees it).
async fn spawn_doomed(
    state: &Path,
    uncontained: bool,
) -> Result<(std::process::Child, String, i32), String> {
    let (server_pem, alice_pem) = (server_pem(), pem("alice"));
    let paths = [
        state,
        &server_pem.ca,
        &server_pem.cert,
        &server_pem.key,
        &alice_pem.cert,
        &alice_pem.key,
    ];
    let mut command = std::process::Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--exact",
            "doomed_daemon",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .envs(DOOMED_ENV.iter().zip(paths))
        .stdout(std::process::Stdio::piped());
    if uncontained {
        command.env(DOOMED_UNCONTAINED, "1");
    }
    let mut child = command.spawn().expect("run the doomed daemon");
    let stdout = child.stdout.take().unwrap();
    let line = tokio::time::timeout(
        STREAM_DEADLINE,
        tokio::task::spawn_blocking(move || {
            std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                // libtest may have printed "test doomed_daemon ... " first.
                .find_map(|l| Some(l[l.find(DOOMED_LINE)?..].to_owned()))
        }),
    )
    .await;
    let Ok(Ok(Some(line))) = line else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!("{line:?}"));
    };
    let fields: Vec<&str> = line.split(' ').collect();
    Ok((
        child,
        fields[1].to_owned(),
        fields[2].parse::<i32>().unwrap(),
    ))
}

/// Ends a test whose doomed daemon did not report: a server on the state
/// directory kills whatever job the child started, then the test fails.
async fn doomed_failed(state: tempfile::TempDir, why: String) -> ! {
    let server = TestServer::start_on(state, true, |_| {}).await;
    let _ = server.shutdown().await;
    panic!("the doomed daemon did not report its job: {why}");
}

/// What [`doomed_daemon`] prints once its job has written its line:
/// `PREFIX <job id> <pid as the job sees it>`.
const DOOMED_LINE: &str = "doomed-daemon-job";

/// Set in [`doomed_daemon`]'s environment when it is to run its job
/// uncontained (as a daemon without root, or with `--containment off`,
/// would), with a child left in the job's process group: the job prints that
/// child's pid instead of its own.
const DOOMED_UNCONTAINED: &str = "JOBS_TEST_DOOMED_UNCONTAINED";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a helper: runs only as the child process of a_job_left_running_by_a_killed_daemon_comes_back_lost"]
async fn doomed_daemon() {
    // Scenario: none of its own. Serves on the given state directory (jobs
    // contained as root, as TestServer does), has alice start a job that
    // prints its pid and a line and then sleeps, prints the job's id and
    // pid, and waits to be killed.
    let Ok(state) = std::env::var(DOOMED_ENV[0]) else {
        eprintln!("doomed_daemon: nothing to do outside its parent test");
        return;
    };
    let var = |i: usize| PathBuf::from(std::env::var(DOOMED_ENV[i]).expect(DOOMED_ENV[i]));
    let server_pem = jobs::tls::PemFiles {
        ca: var(1),
        cert: var(2),
        key: var(3),
    };
    let alice_pem = jobs::tls::PemFiles {
        ca: var(1),
        cert: var(4),
        key: var(5),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = PathBuf::from(state);
    let mut config = jobs::server::ServerConfig::new(
        server_pem.server_config().unwrap(),
        StateDir::open(&state).unwrap(),
    );
    let uncontained = std::env::var_os(DOOMED_UNCONTAINED).is_some();
    if let Some(contain) = contain_config(&state).filter(|_| !uncontained) {
        config.executor =
            std::sync::Arc::new(jobs::exec::LocalExecutor::contained(contain).unwrap());
    }
    tokio::spawn(jobs::server::serve(
        listener,
        config,
        std::future::pending(),
    ));
    let alice = Client::connect(&jobs::client::ConnectOptions {
        addr: addr.to_string(),
        pem: alice_pem,
        timeout: TIMEOUT,
    })
    .await
    .unwrap();
    let script = if uncontained {
        // The main process dies with this daemon (PR_SET_PDEATHSIG); the
        // sleep it forked stays in the job's process group.
        "sleep 600 & echo $!; echo line; wait"
    } else {
        "echo $$; echo line; exec sleep 600"
    };
    let job = start(&alice, "sh", &["-c", script]).await;
    let mut stream = alice.stream(&job.id).await.unwrap();
    let out = read_lines(&mut stream, 2).await;
    let pid = std::str::from_utf8(&out)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_owned();
    println!("{DOOMED_LINE} {} {pid}", job.id);
    std::future::pending::<()>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_left_running_by_a_killed_daemon_comes_back_lost() {
    // Scenario: a daemon (in a child process) is killed with SIGKILL while
    // alice's job runs; the job's process outlives it. The next daemon on the
    // same state directory kills that process and lists the job as Lost: no
    // exit code or signal, ended when it was found, with the output it had
    // written; it can be followed, read and removed like any finished job.
    let state = tempfile::Builder::new()
        .prefix("jobs-state-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("state dir");
    let (mut child, id, inner) = match spawn_doomed(state.path(), false).await {
        Ok(doomed) => doomed,
        Err(why) => doomed_failed(state, why).await,
    };
    let pid = host_pid(&id, inner).expect("the job's process on the host");

    child.kill().expect("SIGKILL the daemon");
    let killed = SystemTime::now();
    child.wait().unwrap();
    if is_root() {
        // Contained: the job's init is nobody's child; it runs on until the
        // next daemon removes the dead one's cgroups.
        assert!(alive(pid), "the job's process died with its daemon");
    } else {
        // Uncontained: the main process dies with its daemon
        // (PR_SET_PDEATHSIG); what it forked is the next daemon's to kill
        // (tests/cli.rs, kill_9_mid_output_repeatedly_uncontained).
        assert!(dies(pid).await, "an uncontained job outlived its daemon");
    }

    let server = TestServer::start_on(state, true, |_| {}).await;
    assert!(
        dies(pid).await,
        "the next daemon left the lost job's process running: {:?}",
        proc_state(pid)
    );
    let alice = client(&server, "alice").await;
    let listed = alice.list(false).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    let lost = &listed[0];
    let output = format!("{inner}\nline\n").into_bytes();
    assert_eq!(
        (
            lost.id.as_str(),
            lost.state(),
            lost.exit_code,
            lost.signal,
            lost.command.as_slice(),
            lost.owner.clone(),
            lost.output_bytes,
        ),
        (
            id.as_str(),
            State::Lost,
            None,
            None,
            &args(&["sh", "-c", "echo $$; echo line; exec sleep 600"])[..],
            identity("alice").to_string(),
            output.len() as u64,
        )
    );
    let ended = time_of(lost.ended_at);
    assert!(
        ended >= killed && ended <= SystemTime::now(),
        "ended_at {ended:?} is not the time the job was found (killed at {killed:?})"
    );
    assert!(time_of(lost.started_at) < killed);

    let f = follow(&alice, &id).await;
    assert_eq!(
        (f.stdout(), f.stderr(), &f.status),
        (output.clone(), vec![], lost)
    );
    assert_eq!(collect_output(&alice, &id).await, (output, vec![]));
    alice.remove(&id).await.expect("remove the lost job");
    assert_no_such_job(&alice, &id).await;
    assert_eq!(log_files(server.state_dir()), BTreeSet::new());
    server.shutdown().await.expect("serve failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn a_contained_daemon_reclaims_what_an_uncontained_predecessor_left() {
    // Scenario: jobsd ran uncontained (no root, or --containment off) on a
    // state directory and was killed with SIGKILL; a process its job forked
    // stays in the job's process group. A contained jobsd started next on
    // that directory kills it through the recovery record (its own jobs never
    // need one) and lists the job as lost.
    require_root();
    let state = tempfile::Builder::new()
        .prefix("jobs-state-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("state dir");
    let (mut child, id, pid) = match spawn_doomed(state.path(), true).await {
        Ok(doomed) => doomed,
        Err(why) => doomed_failed(state, why).await,
    };
    // Uncontained, the job shares the host's PID namespace: the pid it
    // printed is the host's. Hold the process by a pidfd, so that the
    // clean-up below can never signal a process that reused the pid.
    let left = Pidfd::open(pid).expect("the job's child is running");
    // `$!` is printed right after the fork, maybe before the exec of sleep.
    let cmdline = || std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    assert!(
        eventually(STREAM_DEADLINE, || left.alive()
            && cmdline() == b"sleep\x00600\x00")
        .await,
        "pid {pid} is not the job's sleep: {:?}",
        String::from_utf8_lossy(&cmdline())
    );
    child.kill().expect("SIGKILL the daemon");
    child.wait().unwrap();
    assert!(left.alive(), "the job's child died with its daemon");

    let server = TestServer::start_on(state, true, |_| {}).await;
    let reclaimed = eventually(Duration::from_secs(5), || !left.alive()).await;
    if !reclaimed {
        left.kill();
    }
    assert!(
        reclaimed,
        "the contained daemon left the predecessor's process running"
    );
    let alice = client(&server, "alice").await;
    let listed = alice.list(false).await.unwrap();
    assert_eq!(
        listed
            .iter()
            .map(|s| (s.id.as_str(), s.state()))
            .collect::<Vec<_>>(),
        [(id.as_str(), State::Lost)]
    );
    server.shutdown().await.expect("serve failed");
}

/// `ended_at_ns` of job `id` as the store holds it now (read-only, beside
/// the running daemon: SQLite's WAL lets a reader in).
fn recorded_end(state: &Path, id: &str) -> Option<i64> {
    let db = rusqlite::Connection::open_with_flags(
        state.join(jobs::store::FILE_NAME),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    db.query_row("SELECT ended_at_ns FROM jobs WHERE id = ?1", [id], |r| {
        r.get(0)
    })
    .unwrap()
}

/// Fills the file system of `dir` with `name`, until the kernel says it is
/// full.
fn fill(dir: &Path, name: &str) {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join(name)).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    loop {
        if let Err(e) = f.write_all(&chunk).and_then(|()| f.sync_all()) {
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn an_end_the_full_disk_refused_is_recorded_once_there_is_room() {
    // Scenario: the state disk is full and the store's reserve already
    // spent when a job is stopped; its end cannot be recorded then, so it is
    // kept and retried: once space is back (and another job ends), the
    // store holds it, and a restart shows the job stopped, not lost.
    require_root();
    let state = tempfile::Builder::new()
        .prefix("jobs-state-full-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let _tmpfs = Tmpfs::mount(state.path(), "4m", None);
    let dir = state.path().to_owned();
    let server = TestServer::start_on(state, false, |c| c.jobs.disk_headroom = 0).await;
    let alice = client(&server, "alice").await;
    let job = start(&alice, "sleep", &["600"]).await;

    std::fs::remove_file(dir.join(jobs::store::RESERVE_FILE)).unwrap();
    fill(&dir, "filler");
    alice.stop(&job.id).await.unwrap();
    assert_eq!(alice.status(&job.id).await.unwrap().state(), State::Stopped);
    assert_eq!(recorded_end(&dir, &job.id), None, "recorded on a full disk");

    std::fs::remove_file(dir.join("filler")).unwrap();
    let other = start(&alice, "true", &[]).await;
    assert_eq!(
        follow(&alice, &other.id).await.status.state(),
        State::Exited
    );
    assert!(
        eventually(Duration::from_secs(30), || recorded_end(&dir, &job.id)
            .is_some())
        .await,
        "the deferred end was never recorded"
    );

    let (result, state) = server.shutdown_keeping_state().await;
    result.unwrap();
    let server = TestServer::start_on(state, false, |c| c.jobs.disk_headroom = 0).await;
    let alice = client(&server, "alice").await;
    let after = alice.status(&job.id).await.unwrap();
    assert_eq!(after.state(), State::Stopped);
    assert_eq!(after.signal, Some(libc::SIGTERM));
    server.shutdown().await.unwrap();
}

/// The names of this process's threads (the in-process server's) that are
/// in uninterruptible sleep: what waits on a frozen file system.
fn threads_waiting_for_a_disk() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("stat")).ok())
        // `pid (name) state …`: the state follows the parenthesised name.
        .filter_map(|stat| {
            let (head, rest) = stat.rsplit_once(") ")?;
            let name = head.split_once(" (")?.1;
            rest.starts_with('D').then(|| name.to_owned())
        })
        .collect()
}

/// True when `text` holds the lines `0`, `1`, … `n` and nothing else.
fn counts_from_zero(text: &[u8]) -> bool {
    let text = std::str::from_utf8(text).unwrap();
    text.ends_with('\n')
        && text
            .lines()
            .enumerate()
            .all(|(i, l)| l.parse::<usize>() == Ok(i))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn a_stalled_output_disk_holds_only_the_jobs_writing_to_it() {
    // Scenario: the state directory's disk stalls (frozen with fsfreeze)
    // while two jobs, as many as the runtime has worker threads, print a
    // line every 10 ms. Their appends wait for the disk on the jobs' output
    // thread; the runtime that answers requests does not: no thread of it
    // waits for the disk, and the status of each job answers while the disk
    // is frozen. After the thaw the output goes on, and each job's log is
    // every line it printed, in order.
    require_root();
    let dir = tempfile::Builder::new()
        .prefix("jobs-output-frozen-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let fs = common::disk::LoopExt4::mount(dir.path());
    let state = tempfile::tempdir_in(&fs.at).unwrap();
    let server = TestServer::start_on(state, true, |_| {}).await;
    let alice = client(&server, "alice").await;
    let counter = "i=0; while [ $i -lt 100000 ]; do echo $i; i=$((i+1)); sleep 0.01; done";
    let jobs = [
        start(&alice, "sh", &["-c", counter]).await,
        start(&alice, "sh", &["-c", counter]).await,
    ];
    let mut stream = alice.stream(&jobs[0].id).await.unwrap();
    let mut seen = Vec::new();
    let mut lines_seen = async |seen: &mut Vec<u8>, lines: usize| {
        while seen.iter().filter(|b| **b == b'\n').count() < lines {
            match stream.message().await.unwrap().and_then(|e| e.event) {
                Some(proto::stream_event::Event::Chunk(c)) => seen.extend(c.data),
                other => panic!("the stream ended: {other:?}"),
            }
        }
    };
    tokio::time::timeout(TIMEOUT, lines_seen(&mut seen, 5))
        .await
        .expect("the first lines");

    let frozen = common::disk::Frozen::freeze(&fs.at, Duration::from_secs(30));
    assert!(
        eventually(TIMEOUT, || threads_waiting_for_a_disk()
            .contains(&"jobs-output".to_owned()))
        .await,
        "the jobs' appends never waited for the frozen disk on their output thread: {:?}",
        threads_waiting_for_a_disk()
    );
    for job in &jobs {
        let status = tokio::time::timeout(Duration::from_secs(5), alice.status(&job.id))
            .await
            .expect("a status waited for the frozen output disk")
            // The client's own deadline, when the runtime was held so long
            // that even the timeout above could not fire.
            .unwrap_or_else(|e| panic!("a status waited for the frozen output disk: {e}"));
        assert_eq!(status.state(), State::Running);
    }
    let waiting = threads_waiting_for_a_disk();
    assert_eq!(waiting, ["jobs-output"], "only the output thread waits");
    frozen.thaw();
    let before = seen.iter().filter(|b| **b == b'\n').count();
    tokio::time::timeout(TIMEOUT, lines_seen(&mut seen, before + 50))
        .await
        .expect("the output after the thaw");
    drop(stream);
    for job in &jobs {
        alice.stop(&job.id).await.unwrap();
        let (stdout, stderr) = collect_output(&alice, &job.id).await;
        assert!(
            counts_from_zero(&stdout),
            "not every line, in order: {:?}",
            String::from_utf8_lossy(&stdout)
        );
        assert!(stderr.is_empty());
    }
    server.shutdown().await.unwrap();
}

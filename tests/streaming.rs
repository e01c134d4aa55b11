//! Output: byte-exact, complete, in order, for any number of followers at any
//! moment, and never held up by a reader that does not read.

mod common;

use std::time::{Duration, Instant, SystemTime};

use common::*;
use jobs::client::Client;
use jobs::proto::stream_event::Event;
use jobs::proto::{self, Fd, State};
use tonic::Streaming;

/// `seq FROM TO` as the program prints it.
fn seq(from: u32, to: u32) -> Vec<u8> {
    (from..=to)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect()
}

/// SHA-256 of `n` zero bytes.
fn zeros_sha256(n: usize) -> [u8; 32] {
    use sha2::Digest;
    let block = vec![0u8; 1 << 20];
    let mut sha = sha2::Sha256::new();
    let mut left = n;
    while left > 0 {
        let k = left.min(block.len());
        sha.update(&block[..k]);
        left -= k;
    }
    sha.finalize().into()
}

async fn cat_file_is_byte_exact(len: usize) {
    let server = TestServer::start().await;
    let alice = client(&server, "alice").await;
    let dir = scratch();
    let data = random_bytes(len);
    let file = dir.path().join("random.bin");
    std::fs::write(&file, &data).unwrap();

    let job = start(&alice, "/bin/cat", &[file.to_str().unwrap()]).await;
    let followed = follow(&alice, &job.id).await;
    assert!(
        followed.stdout() == data,
        "followed output differs from the file"
    );
    assert_eq!(followed.stderr(), b"");
    assert_eq!(
        (followed.status.state(), followed.status.exit_code),
        (State::Exited, Some(0))
    );
    let (out, err) = collect_output(&alice, &job.id).await;
    assert!(out == data, "output after exit differs from the file");
    assert_eq!(err, b"");
}

/// Generous bound for "at once" on a loaded 2-core machine: what happens in
/// milliseconds when idle. A daemon that waits for a timer or a poll instead
/// of the event still misses it (its timers are seconds long).
const LATENCY: Duration = Duration::from_secs(5);

/// The longest pause a follow may show while handshakes load the server:
/// seconds of stall mean the runtime's workers were blocked.
const STALL: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mib_of_random_bytes_comes_back_byte_exact() {
    // Scenario: `cat` of a 1 MiB random file, followed live and read after exit.
    cat_file_is_byte_exact(1 << 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_mib_of_random_bytes_come_back_byte_exact() {
    // Scenario (C12): 10 MiB of random bytes, more than gRPC's 4 MiB message
    // limit, through both calls with default limits.
    cat_file_is_byte_exact(10 << 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hundred_mb_come_back_byte_exact() {
    // Scenario (C12): `head -c 104857600 /dev/zero`, followed from the start
    // and read again after exit; length and SHA-256 match.
    const LEN: usize = 104_857_600;
    let server = TestServer::start().await;
    let alice = client(&server, "alice").await;
    let job = start(&alice, "head", &["-c", "104857600", "/dev/zero"]).await;
    let stream = alice.stream(&job.id).await.unwrap();
    let (followed, status) = tokio::time::timeout(Duration::from_secs(120), follow_digest(stream))
        .await
        .expect("following 100 MB took over 2 minutes");
    let expected = Digested {
        stdout_len: LEN as u64,
        stdout_sha256: zeros_sha256(LEN),
        stderr_len: 0,
    };
    assert_eq!(followed, expected);
    assert_eq!((status.state(), status.exit_code), (State::Exited, Some(0)));
    let after = tokio::time::timeout(Duration::from_secs(120), output_digest(&alice, &job.id))
        .await
        .expect("reading 100 MB took over 2 minutes");
    assert_eq!(after, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seq_output_is_complete_on_every_run() {
    // Scenario (C01): `seq 1 200000` exits as soon as it has written; the tail
    // must never be lost. Even runs follow the job from the start; odd runs
    // do what a script does: poll Status until the job is final, then Output
    // at once (a final status must mean the pipes were drained).
    let server = TestServer::start().await;
    let alice = client(&server, "alice").await;
    let expected = seq(1, 200_000);
    assert_eq!(expected.len(), 1_288_895);
    for run in 0..20 {
        let job = start(&alice, "/usr/bin/seq", &["1", "200000"]).await;
        let status = if run % 2 == 0 {
            let followed = follow(&alice, &job.id).await;
            assert_eq!(
                followed.stdout().len(),
                expected.len(),
                "run {run}: followed length"
            );
            assert!(
                followed.stdout() == expected,
                "run {run}: followed bytes differ"
            );
            followed.status
        } else {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let s = alice.status(&job.id).await.unwrap();
                if s.state() != State::Running {
                    break s;
                }
                assert!(Instant::now() < deadline, "run {run}: still running");
            }
        };
        assert_eq!(
            (status.state(), status.exit_code),
            (State::Exited, Some(0)),
            "run {run}"
        );
        let (out, err) = collect_output(&alice, &job.id).await;
        assert_eq!(out.len(), expected.len(), "run {run}: output length");
        assert!(out.ends_with(b"\n200000\n"), "run {run}: tail");
        assert!(out == expected, "run {run}: output bytes differ");
        assert_eq!(err, b"");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_output_is_never_lost() {
    // Scenario (C01): `echo hello` exits at once; 100 runs, each followed
    // from the start and read again after exit.
    let server = TestServer::start().await;
    let alice = client(&server, "alice").await;
    for run in 0..100 {
        let job = start(&alice, "echo", &["hello"]).await;
        let followed = follow(&alice, &job.id).await;
        assert_eq!(followed.stdout(), b"hello\n", "run {run}: followed");
        assert_eq!(
            (followed.status.state(), followed.status.exit_code),
            (State::Exited, Some(0))
        );
        assert_eq!(
            collect_output(&alice, &job.id).await,
            (b"hello\n".to_vec(), vec![]),
            "run {run}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_base64_then_exit_3_agrees_between_follow_and_output() {
    // Scenario (C01): `head -c 3000000 /dev/urandom | base64; exit 3`. The
    // bytes are random, so follow and Output of the same job are compared,
    // and the length is base64's exact length for 3,000,000 bytes.
    let server = TestServer::start().await;
    let alice = client(&server, "alice").await;
    let job = start(
        &alice,
        "sh",
        &["-c", "head -c 3000000 /dev/urandom | base64; exit 3"],
    )
    .await;
    let followed = follow(&alice, &job.id).await;
    let (out, err) = collect_output(&alice, &job.id).await;
    // 4,000,000 base64 characters in lines of 76, each ending in a newline.
    assert_eq!(out.len(), 4_000_000 + 4_000_000_usize.div_ceil(76));
    assert!(followed.stdout() == out, "follow and output differ");
    assert!(
        out.split(|b| *b == b'\n').all(|line| line.len() <= 76
            && line
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(b))),
        "not base64 lines"
    );
    assert_eq!((err, followed.stderr()), (vec![], vec![]));
    assert_eq!(
        (
            followed.status.state(),
            followed.status.exit_code,
            followed.status.signal
        ),
        (State::Exited, Some(3), None)
    );
}

/// Reads `stream` until its stdout holds at least `len` bytes; returns the
/// chunks read.
async fn read_stdout_bytes(
    stream: &mut Streaming<proto::StreamEvent>,
    len: usize,
) -> Vec<(Fd, Vec<u8>)> {
    tokio::time::timeout(STREAM_DEADLINE, async {
        let mut chunks = Vec::new();
        let mut have = 0;
        while have < len {
            match stream.message().await.unwrap() {
                Some(proto::StreamEvent {
                    event: Some(Event::Chunk(c)),
                }) => {
                    let fd = check_chunk(&c);
                    if fd == Fd::Stdout {
                        have += c.data.len();
                    }
                    chunks.push((fd, c.data));
                }
                other => panic!("stream ended early: {other:?}"),
            }
        }
        chunks
    })
    .await
    .expect("the bytes did not arrive within the deadline")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_followers_at_different_moments_get_identical_output() {
    // Scenario: one follower attaches before any output, one half-way, one
    // after exit; all three see the same complete output and final status.
    let server = TestServer::start().await;
    let alice = client(&server, "alice").await;
    let dir = scratch();
    let script = format!(
        "{}; seq 1 30000; {}; seq 30001 60000; echo done >&2",
        wait_for(dir.path(), "a"),
        wait_for(dir.path(), "b")
    );
    let job = start(&alice, "sh", &["-c", &script]).await;

    let mut early = alice.stream(&job.id).await.unwrap();
    trigger(dir.path(), "a");
    let first_half = seq(1, 30000);
    let mut early_chunks = read_stdout_bytes(&mut early, first_half.len()).await;
    let middle = alice.stream(&job.id).await.unwrap();
    trigger(dir.path(), "b");

    let rest = follow_stream(early).await;
    early_chunks.extend(rest.chunks);
    let early = Followed {
        chunks: early_chunks,
        status: rest.status,
    };
    let middle = follow_stream(middle).await;
    let late = follow(&alice, &job.id).await;

    let expected = seq(1, 60000);
    for (who, f) in [("early", &early), ("middle", &middle), ("late", &late)] {
        assert!(f.stdout() == expected, "{who}: stdout differs");
        assert_eq!(f.stderr(), b"done\n", "{who}");
        assert_eq!(
            (f.status.state(), f.status.exit_code),
            (State::Exited, Some(0)),
            "{who}"
        );
    }
    assert_eq!(early.status, middle.status);
    assert_eq!(early.status, late.status);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_attached_after_exit_gets_everything_and_ends() {
    // Scenario: the job is long over when the follow starts; it gets every
    // byte and the final status at once.
    let server = TestServer::start().await;
    let alice = client(&server, "alice").await;
    let job = start(&alice, "sh", &["-c", "echo out; echo err >&2; exit 5"]).await;
    let first = follow(&alice, &job.id).await;
    let t = Instant::now();
    let late = follow(&alice, &job.id).await;
    assert!(t.elapsed() < LATENCY, "took {:?}", t.elapsed());
    assert_eq!(late.stdout(), b"out\n");
    assert_eq!(late.stderr(), b"err\n");
    assert_eq!(
        (late.status.state(), late.status.exit_code),
        (State::Exited, Some(5))
    );
    assert_eq!(late.status, first.status);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_and_stderr_keep_their_order() {
    // Scenario: a job alternates stdout and stderr, each write after the
    // previous one was delivered; follow, Output and a late follow all show
    // the same four chunks in the same order.
    let server = TestServer::start().await;
    let alice = client(&server, "alice").await;
    let dir = scratch();
    let script = format!(
        "echo o1; {}; echo e1 >&2; {}; echo o2; {}; echo e2 >&2",
        wait_for(dir.path(), "1"),
        wait_for(dir.path(), "2"),
        wait_for(dir.path(), "3"),
    );
    let job = start(&alice, "sh", &["-c", &script]).await;
    let mut stream = alice.stream(&job.id).await.unwrap();
    let mut live = Vec::new();
    let status = tokio::time::timeout(STREAM_DEADLINE, async {
        loop {
            match stream.message().await.unwrap().and_then(|e| e.event) {
                Some(Event::Chunk(c)) => {
                    live.push((check_chunk(&c), c.data));
                    if live.len() <= 3 {
                        trigger(dir.path(), &live.len().to_string());
                    }
                }
                Some(Event::FinalStatus(s)) => break s,
                None => panic!("stream ended without a final status"),
            }
        }
    })
    .await
    .expect("the job did not finish");
    let expected = vec![
        (Fd::Stdout, b"o1\n".to_vec()),
        (Fd::Stderr, b"e1\n".to_vec()),
        (Fd::Stdout, b"o2\n".to_vec()),
        (Fd::Stderr, b"e2\n".to_vec()),
    ];
    assert_eq!(live, expected);
    assert_eq!((status.state(), status.exit_code), (State::Exited, Some(0)));
    assert_eq!(output_chunks(&alice, &job.id).await, expected);
    assert_eq!(follow(&alice, &job.id).await.chunks, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_and_stderr_are_kept_apart() {
    // Scenario: two processes write 100,000 lines each to stdout and stderr at
    // the same time; each fd gets exactly its own bytes.
    let server = TestServer::start().await;
    let alice = client(&server, "alice").await;
    let job = start(
        &alice,
        "sh",
        &["-c", "seq 1 100000 & seq 100001 200000 >&2; wait"],
    )
    .await;
    let f = follow(&alice, &job.id).await;
    assert!(f.stdout() == seq(1, 100_000), "stdout differs");
    assert!(f.stderr() == seq(100_001, 200_000), "stderr differs");
    let (out, err) = collect_output(&alice, &job.id).await;
    assert!(
        out == seq(1, 100_000) && err == seq(100_001, 200_000),
        "output differs"
    );
}

/// Follows job `id` from now on; returns the final status and how long after
/// the job's end (its `ended_at`) the final status arrived.
async fn follow_lag(client: &Client, id: &str) -> (Followed, Duration) {
    let f = follow(client, id).await;
    let ended = SystemTime::try_from(f.status.ended_at.unwrap()).unwrap();
    let lag = SystemTime::now().duration_since(ended).unwrap_or_default();
    (f, lag)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_ends_promptly_when_the_job_ends() {
    // Scenario (C18): follows of a job that exits 0, one that exits 1 and one
    // that is stopped all end within 1 s of the job ending, and say which.
    let server = TestServer::start().await;
    let alice = client(&server, "alice").await;

    let ok = start(&alice, "sh", &["-c", "sleep 1; echo hello"]).await;
    let fail = start(&alice, "sh", &["-c", "sleep 1; exit 1"]).await;
    let stopped = start(&alice, "sleep", &["600"]).await;
    let (a, b) = tokio::join!(follow_lag(&alice, &ok.id), follow_lag(&alice, &fail.id));
    let stopper = {
        let alice = alice.clone();
        let id = stopped.id.clone();
        tokio::spawn(async move { alice.stop(&id).await })
    };
    let c = follow_lag(&alice, &stopped.id).await;

    let (f, lag) = a;
    assert_eq!(f.stdout(), b"hello\n");
    assert_eq!(
        (f.status.state(), f.status.exit_code),
        (State::Exited, Some(0))
    );
    assert!(lag < LATENCY, "exit 0: final status {lag:?} after the end");
    let (f, lag) = b;
    assert_eq!(
        (f.status.state(), f.status.exit_code),
        (State::Exited, Some(1))
    );
    assert!(lag < LATENCY, "exit 1: final status {lag:?} after the end");
    let (f, lag) = c;
    assert_eq!(
        (f.status.state(), f.status.signal),
        (State::Stopped, Some(15))
    );
    assert!(lag < LATENCY, "stop: final status {lag:?} after the end");
    assert_eq!(stopper.await.unwrap().unwrap(), f.status);

    // `echo hello`, followed at once and again after it ended.
    let job = start(&alice, "echo", &["hello"]).await;
    let (f, lag) = follow_lag(&alice, &job.id).await;
    assert_eq!(f.stdout(), b"hello\n");
    assert!(lag < LATENCY);
    let t = Instant::now();
    let again = follow(&alice, &job.id).await;
    assert!(t.elapsed() < LATENCY);
    assert_eq!(again.stdout(), b"hello\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unread_follow_stalls_neither_the_connection_nor_the_job() {
    // Scenario (C15): on one connection, a follow of a 200 MB job is opened and
    // not read. Other calls on the same connection complete promptly, the job
    // finishes anyway, and the stalled follow later delivers all 200 MB.
    const LEN: usize = 209_715_200;
    let server = TestServer::start().await;
    let conn = client(&server, "alice").await;
    let big = start(&conn, "head", &["-c", "209715200", "/dev/zero"]).await;
    let stalled = conn.clone().stream(&big.id).await.unwrap();

    let prompt = Duration::from_secs(5);
    let small = start(&conn.clone(), "echo", &["small"]).await;
    let f = tokio::time::timeout(prompt, follow(&conn.clone(), &small.id))
        .await
        .expect("follow of a small job stalled behind the unread stream");
    assert_eq!(f.stdout(), b"small\n");
    let s = tokio::time::timeout(prompt, conn.clone().status(&small.id))
        .await
        .expect("status stalled")
        .unwrap();
    assert_eq!(s, f.status);
    let out = tokio::time::timeout(prompt, collect_output(&conn.clone(), &small.id))
        .await
        .expect("output stalled");
    assert_eq!(out, (b"small\n".to_vec(), vec![]));
    let other = start(&conn, "sh", &["-c", "echo c1; echo c2 >&2"]).await;
    let f = tokio::time::timeout(prompt, follow(&conn.clone(), &other.id))
        .await
        .expect("follow of another job stalled");
    assert_eq!(
        (f.stdout(), f.stderr()),
        (b"c1\n".to_vec(), b"c2\n".to_vec())
    );

    // The big job ends although nobody reads its output. There is no event to
    // wait on without reading it, so its status is polled, under a deadline.
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = loop {
        let s = conn.status(&big.id).await.unwrap();
        if s.state() != State::Running {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the job is held up by its unread follower"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((done.state(), done.exit_code), (State::Exited, Some(0)));

    let (got, status) = tokio::time::timeout(Duration::from_secs(120), follow_digest(stalled))
        .await
        .expect("reading the stalled follow took over 2 minutes");
    assert_eq!(
        got,
        Digested {
            stdout_len: LEN as u64,
            stdout_sha256: zeros_sha256(LEN),
            stderr_len: 0
        }
    );
    assert_eq!(status, done);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hundred_fifty_follows_on_one_connection_all_complete() {
    // Scenario (C16): 150 follows multiplexed on one connection, over the
    // HTTP/2 default of 100 concurrent streams; every one gets the full output.
    let server = TestServer::start().await;
    let conn = client(&server, "alice").await;
    let job = start(
        &conn,
        "sh",
        &[
            "-c",
            "for i in $(seq 1 30); do echo line $i; sleep 0.1; done",
        ],
    )
    .await;
    let followers: Vec<_> = (0..150)
        .map(|_| {
            let conn = conn.clone();
            let id = job.id.clone();
            tokio::spawn(async move {
                let stream = conn.stream(&id).await.expect("open follow");
                follow_stream(stream).await
            })
        })
        .collect();
    let expected: Vec<u8> = (1..=30)
        .flat_map(|i| format!("line {i}\n").into_bytes())
        .collect();
    let all = tokio::time::timeout(
        Duration::from_secs(30),
        futures_util::future::join_all(followers),
    )
    .await
    .expect("some follows hang");
    let mut statuses = Vec::new();
    for (i, f) in all.into_iter().enumerate() {
        let f = f.unwrap();
        assert!(
            f.stdout() == expected,
            "follower {i}: {:?}",
            String::from_utf8_lossy(&f.stdout())
        );
        statuses.push(f.status);
    }
    assert_eq!(statuses[0].state(), State::Exited);
    assert!(statuses.iter().all(|s| *s == statuses[0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_over_the_per_identity_cap_are_refused_at_once() {
    // Scenario (C16): with a cap of 4 open streams per identity, the 5th
    // follow and an Output get RESOURCE_EXHAUSTED promptly, never a silent
    // wait; other identities are unaffected; closing one frees a slot.
    let server = TestServer::start_with(|c| c.max_streams_per_identity = 4).await;
    let alice = client(&server, "alice").await;
    let bob = client(&server, "bob").await;
    let job = start(&alice, "sleep", &["600"]).await;
    let mut open = Vec::new();
    for _ in 0..4 {
        open.push(alice.stream(&job.id).await.unwrap());
    }
    let expected = "too many open output streams for this identity; close some and retry";
    let t = Instant::now();
    let err = alice.stream(&job.id).await.unwrap_err();
    assert_eq!(
        (code(&err), message(&err).as_str()),
        (tonic::Code::ResourceExhausted, expected)
    );
    let err = alice.output(&job.id).await.unwrap_err();
    assert_eq!(
        (code(&err), message(&err).as_str()),
        (tonic::Code::ResourceExhausted, expected)
    );
    // A fresh connection of the same identity shares the cap.
    let err = client(&server, "alice")
        .await
        .stream(&job.id)
        .await
        .unwrap_err();
    assert_eq!(code(&err), tonic::Code::ResourceExhausted);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "refusals took {:?}",
        t.elapsed()
    );

    let bobs = start(&bob, "sleep", &["600"]).await;
    let bob_stream = bob.stream(&bobs.id).await.unwrap();

    // Closing one of alice's streams frees its slot once the server sees the
    // reset; retry under a deadline.
    drop(open.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    let reopened = loop {
        match alice.stream(&job.id).await {
            Ok(s) => break s,
            Err(e) if code(&e) == tonic::Code::ResourceExhausted => {
                assert!(
                    Instant::now() < deadline,
                    "the closed stream's slot was never freed"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    };
    open.push(reopened);

    let stopped = alice.stop(&job.id).await.unwrap();
    for stream in open {
        let (_, _, status) = tokio::time::timeout(Duration::from_secs(5), follow_to_end(stream))
            .await
            .expect("an open follow did not end after stop");
        assert_eq!(status, stopped);
    }
    bob.stop(&bobs.id).await.unwrap();
    drop(bob_stream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_new_connections_does_not_disturb_a_follow() {
    // Scenario (C20, light): while a follow of a steadily printing job runs,
    // 50 fresh connections (full RSA-4096 handshakes) each ask for its status;
    // all succeed and the follow keeps flowing.
    let server = TestServer::start().await;
    let alice = client(&server, "alice").await;
    let job = start(
        &alice,
        "sh",
        &[
            "-c",
            "for i in $(seq 1 40); do echo tick $i; sleep 0.1; done",
        ],
    )
    .await;
    let mut stream = alice.stream(&job.id).await.unwrap();
    let first = read_lines(&mut stream, 1).await;
    let follower = tokio::spawn(async move {
        let mut arrivals = vec![Instant::now()];
        let mut out = first;
        loop {
            match stream.message().await.unwrap().and_then(|e| e.event) {
                Some(Event::Chunk(c)) => {
                    arrivals.push(Instant::now());
                    out.extend(c.data);
                }
                Some(Event::FinalStatus(s)) => return (arrivals, out, s),
                None => panic!("stream ended without a final status"),
            }
        }
    });

    let options = options(&server, pem("alice"));
    let calls: Vec<_> = (0..50)
        .map(|_| {
            let options = options.clone();
            let id = job.id.clone();
            tokio::spawn(async move {
                let c = Client::connect(&options).await?;
                c.status(&id).await
            })
        })
        .collect();
    for (i, call) in futures_util::future::join_all(calls)
        .await
        .into_iter()
        .enumerate()
    {
        let s = call
            .unwrap()
            .unwrap_or_else(|e| panic!("connection {i}: {e:?}"));
        assert_eq!(s.id, job.id);
    }

    let (arrivals, out, status) = tokio::time::timeout(Duration::from_secs(30), follower)
        .await
        .expect("the follow stopped flowing")
        .unwrap();
    let expected: Vec<u8> = (1..=40)
        .flat_map(|i| format!("tick {i}\n").into_bytes())
        .collect();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        String::from_utf8(expected).unwrap()
    );
    assert_eq!((status.state(), status.exit_code), (State::Exited, Some(0)));
    let gap = arrivals.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(gap < STALL, "the follow stalled for {gap:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_of_a_running_job_is_what_it_wrote_so_far() {
    // Scenario: Output on a job that is still running returns what it has
    // written so far and ends; it does not follow.
    let server = TestServer::start().await;
    let alice = client(&server, "alice").await;
    let dir = scratch();
    let script = format!("echo before; {}; echo after", wait_for(dir.path(), "go"));
    let job = start(&alice, "sh", &["-c", &script]).await;
    let mut stream = alice.stream(&job.id).await.unwrap();
    assert_eq!(read_lines(&mut stream, 1).await, b"before\n");
    let snapshot = tokio::time::timeout(Duration::from_secs(5), collect_output(&alice, &job.id))
        .await
        .expect("Output of a running job did not end");
    assert_eq!(snapshot, (b"before\n".to_vec(), vec![]));
    assert_eq!(alice.status(&job.id).await.unwrap().state(), State::Running);
    trigger(dir.path(), "go");
    let (rest, _, status) = follow_to_end(stream).await;
    assert_eq!(rest, b"after\n");
    assert_eq!(status.state(), State::Exited);
    assert_eq!(
        collect_output(&alice, &job.id).await,
        (b"before\nafter\n".to_vec(), vec![])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_one_identity_follows_256_times_on_one_connection_and_no_more() {
    // Scenario: the documented defaults, not a test-sized cap: one identity
    // opens 256 follows of one job over a single connection (HTTP/2 allows
    // 1024 streams per connection, so none waits for a free stream); the
    // 257th is refused at once with RESOURCE_EXHAUSTED while the 256 keep
    // receiving the job's output, and another identity still follows.
    let server = TestServer::start().await;
    let alice = client(&server, "alice").await;
    let bob = client(&server, "bob").await;
    let job = start(
        &alice,
        "sh",
        &["-c", "while :; do echo tick; sleep 0.2; done"],
    )
    .await;
    let mut open = Vec::with_capacity(jobs::server::DEFAULT_MAX_STREAMS_PER_IDENTITY);
    for i in 0..256 {
        match tokio::time::timeout(Duration::from_secs(30), alice.stream(&job.id)).await {
            Ok(Ok(s)) => open.push(s),
            Ok(Err(e)) => panic!("follow {i}: {e:?}"),
            Err(_) => panic!("follow {i} waited for a free stream"),
        }
    }
    let refused = tokio::time::timeout(Duration::from_secs(30), alice.stream(&job.id))
        .await
        .expect("the 257th follow waited instead of being refused")
        .unwrap_err();
    assert_eq!(
        (code(&refused), message(&refused).as_str()),
        (
            tonic::Code::ResourceExhausted,
            "too many open output streams for this identity; close some and retry"
        )
    );
    let bobs = start(&bob, "sleep", &["600"]).await;
    drop(bob.stream(&bobs.id).await.unwrap());
    // Every one of the 256 still flows: each reads output after the refusal.
    for (i, stream) in open.iter_mut().enumerate() {
        let got = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match stream.message().await.unwrap().and_then(|e| e.event) {
                    Some(Event::Chunk(c)) if !c.data.is_empty() => break c.data,
                    Some(Event::FinalStatus(s)) => panic!("follow {i} ended: {s:?}"),
                    _ => {}
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("follow {i} received nothing"));
        assert!(got.starts_with(b"tick\n"), "follow {i}: {got:?}");
    }
    drop(open);
    alice.stop(&job.id).await.unwrap();
    bob.stop(&bobs.id).await.unwrap();
}

//! What the daemon leaves behind: no zombie processes, no descriptors or
//! stream slots held for clients that went away.
//!
//! The server runs in this process, so these tests measure this process
//! (`/proc/self/fd`, our zombie children). They hold [`SERIAL`] so that the
//! other test of this binary does not disturb the measurement.

mod common;

use std::time::{Duration, Instant};

use common::*;
use jobs::proto::State;

/// Held by each test for its whole run: measurements of the process must not
/// overlap.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_zombies_after_many_short_stopped_and_cancelled_jobs() {
    // Scenario (C05): 200 `/bin/true` started as fast as possible, 50
    // `sleep 600` stopped right after start, 50 starts cancelled mid-request;
    // afterwards no zombie child remains, every job is final, and new jobs
    // still start.
    let _serial = SERIAL.lock().await;
    let server = TestServer::start().await;
    let alice = client(&server, "alice").await;

    let cancelled: Vec<_> = (0..50)
        .map(|_| {
            let alice = alice.clone();
            tokio::spawn(async move { alice.start("sleep", &args(&["600"])).await })
        })
        .collect();
    tokio::task::yield_now().await;
    for task in &cancelled {
        task.abort();
    }
    // Each was cut off before its answer came (a start takes milliseconds
    // of network and spawning; the abort came one yield after the spawn):
    // none completed.
    let mut cut_off = 0;
    for task in cancelled {
        match task.await {
            Err(e) if e.is_cancelled() => cut_off += 1,
            Err(e) => panic!("a cancelled start panicked: {e:?}"),
            Ok(answer) => panic!("a start finished before its cancel: {answer:?}"),
        }
    }
    assert_eq!(cut_off, 50);

    let short: Vec<_> = (0..200)
        .map(|_| {
            let alice = alice.clone();
            tokio::spawn(async move { start(&alice, "/bin/true", &[]).await.id })
        })
        .collect();
    let stopped: Vec<_> = (0..50)
        .map(|_| {
            let alice = alice.clone();
            tokio::spawn(async move {
                let job = start(&alice, "sleep", &["600"]).await;
                alice.stop(&job.id).await.unwrap()
            })
        })
        .collect();
    let mut short_ids = Vec::new();
    for task in short {
        short_ids.push(task.await.unwrap());
    }
    for task in stopped {
        let s = task.await.unwrap();
        assert_eq!(
            (s.state(), s.exit_code, s.signal),
            (State::Stopped, None, Some(15))
        );
    }
    // Cancelled starts that reached the server made running jobs: stop them.
    for job in alice.list(false).await.unwrap() {
        if job.state() == State::Running && job.command == ["sleep", "600"] {
            alice.stop(&job.id).await.unwrap();
        }
    }
    for id in &short_ids {
        let s = wait_final(&alice, id).await;
        assert_eq!(
            (s.state(), s.exit_code, s.signal),
            (State::Exited, Some(0), None),
            "{id}"
        );
    }
    let all = alice.list(false).await.unwrap();
    assert!(all.len() >= 250, "{} jobs", all.len());
    for job in &all {
        assert_ne!(job.state(), State::Running, "{job:?}");
        assert!(job.ended_at.is_some(), "{job:?}");
    }

    // Control: the scan does see a zombie child of ours.
    let mut unreaped = std::process::Command::new("/bin/true").spawn().unwrap();
    let control = unreaped.id() as i32;
    assert!(
        eventually(Duration::from_secs(5), || our_zombies().contains(&control)).await,
        "the zombie scan cannot see an unreaped child"
    );
    unreaped.wait().unwrap();

    assert!(
        eventually(Duration::from_secs(1), || our_zombies().is_empty()).await,
        "zombie children: {:?}",
        our_zombies()
    );

    let job = start(&alice, "echo", &["still accepting"]).await;
    assert_eq!(follow(&alice, &job.id).await.stdout(), b"still accepting\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_dropped_by_their_clients_release_everything() {
    // Scenario (C19): 200 follows of a silent job are opened and dropped on
    // one connection, and 100 more on fresh connections that are then closed.
    // The stream slots come back, the process's descriptors return to the
    // baseline within seconds, and the job can still be stopped.
    let _serial = SERIAL.lock().await;
    const CAP: usize = 16;
    let server = TestServer::start_with(|c| c.max_streams_per_identity = CAP).await;
    let alice = client(&server, "alice").await;
    let job = start(&alice, "sleep", &["600"]).await;
    // One follow opened and dropped first, so that what lives as long as the
    // server or the connection is already in the baseline.
    drop(alice.stream(&job.id).await.unwrap());
    let baseline = open_fds();

    // On one connection. A dropped stream's slot is freed when the server
    // processes the reset, a moment later; a leak would exhaust the cap for good.
    for i in 0..200 {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match alice.stream(&job.id).await {
                Ok(stream) => {
                    drop(stream);
                    break;
                }
                Err(e) if code(&e) == tonic::Code::ResourceExhausted => {
                    assert!(Instant::now() < deadline, "follow {i}: stream slots leak");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => panic!("follow {i}: {e:?}"),
            }
        }
    }

    // On fresh connections, ten at a time.
    let options = options(&server, pem("alice"));
    for batch in 0..10 {
        let opened: Vec<_> = (0..10)
            .map(|_| {
                let options = options.clone();
                let id = job.id.clone();
                tokio::spawn(async move {
                    let c = jobs::client::Client::connect(&options).await.unwrap();
                    let stream = c.stream(&id).await;
                    drop(stream);
                    drop(c);
                })
            })
            .collect();
        for task in opened {
            task.await
                .unwrap_or_else(|e| panic!("batch {batch}: {e:?}"));
        }
    }

    // Every slot is free again: CAP follows can be open at once.
    let deadline = Instant::now() + Duration::from_secs(5);
    let held = loop {
        let mut held = Vec::new();
        for _ in 0..CAP {
            match alice.stream(&job.id).await {
                Ok(s) => held.push(s),
                Err(e) if code(&e) == tonic::Code::ResourceExhausted => break,
                Err(e) => panic!("{e:?}"),
            }
        }
        if held.len() == CAP {
            break held;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {CAP} stream slots came back",
            held.len()
        );
        drop(held);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    drop(held);

    let settled = eventually(Duration::from_secs(5), || open_fds() <= baseline + 2).await;
    assert!(
        settled,
        "descriptors: {} now, {baseline} before",
        open_fds()
    );
    println!("descriptors: {} now, {baseline} before", open_fds());

    let s = tokio::time::timeout(Duration::from_secs(10), alice.stop(&job.id))
        .await
        .expect("stop hung")
        .unwrap();
    assert_eq!((s.state(), s.signal), (State::Stopped, Some(15)));
}

/// Resident set size of this process, in bytes (`VmRSS` in `/proc/self/status`).
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_output_does_not_grow_the_daemons_memory() {
    // Scenario (C11): a job writes 300 MiB while one client follows it and
    // another reads it all after exit; the process's resident memory (daemon
    // and clients together) stays within 100 MiB of where it started, since
    // output goes to disk, not to buffers.
    let _serial = SERIAL.lock().await;
    const LEN: u64 = 300 << 20;
    let server = TestServer::start().await;
    let alice = client(&server, "alice").await;
    let bob = client(&server, "bob").await;
    // Warm up connections and buffers with a small job first.
    let warm = start(&alice, "head", &["-c", "1048576", "/dev/zero"]).await;
    follow(&alice, &warm.id).await;
    let baseline = rss();

    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(baseline));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss(), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let job = start(&alice, "head", &["-c", "314572800", "/dev/zero"]).await;
    let stream = alice.stream(&job.id).await.unwrap();
    // Another user's calls are answered meanwhile.
    let bobs = start(&bob, "echo", &["unaffected"]).await;
    let t = Instant::now();
    assert_eq!(follow(&bob, &bobs.id).await.stdout(), b"unaffected\n");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "bob waited {:?}",
        t.elapsed()
    );

    let (followed, status) = tokio::time::timeout(Duration::from_secs(180), follow_digest(stream))
        .await
        .expect("following 300 MiB took over 3 minutes");
    assert_eq!((followed.stdout_len, status.state()), (LEN, State::Exited));
    let after = output_digest(&alice, &job.id).await;
    assert_eq!(after, followed);
    sampler.abort();
    let grew = peak
        .load(std::sync::atomic::Ordering::Relaxed)
        .saturating_sub(baseline);
    println!(
        "resident memory: {} MiB before, grew by {} MiB",
        baseline >> 20,
        grew >> 20
    );
    assert!(
        grew < 100 << 20,
        "resident memory grew by {} MiB",
        grew >> 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_jobs_hold_no_descriptors() {
    // Scenario (D2 of the fresh-clone review): every finished job kept its
    // output log open, so ~1000 jobs exhausted the daemon's descriptor limit
    // and broke it for everyone. After 300 jobs end, the process has no more
    // descriptors than before them, and their output is still readable.
    let _serial = SERIAL.lock().await;
    let server = TestServer::start().await;
    let alice = client(&server, "alice").await;
    // One job first, so that what lives as long as the server or the
    // connection is already in the baseline.
    let first = start(&alice, "echo", &["first"]).await;
    wait_final(&alice, &first.id).await;
    let baseline = open_fds();
    let mut ids = Vec::new();
    for i in 0..300 {
        ids.push(start(&alice, "echo", &[&i.to_string()]).await.id);
    }
    for id in &ids {
        let status = wait_final(&alice, id).await;
        assert_eq!((status.state(), status.exit_code), (State::Exited, Some(0)));
    }
    assert!(
        eventually(Duration::from_secs(5), || open_fds() <= baseline).await,
        "descriptors: {} before, {} after 300 finished jobs",
        baseline,
        open_fds()
    );
    let (stdout, stderr) = collect_output(&alice, &ids[299]).await;
    assert_eq!((stdout, stderr), (b"299\n".to_vec(), Vec::new()));
    server.shutdown().await.unwrap();
}

//! Graceful shutdown: running jobs are stopped, open follows get their final
//! status, and `serve` returns within a bounded time.

mod common;

use std::time::{Duration, Instant};

use common::*;
use jobs::client::{ClientError, ConnectError};
use jobs::proto::State;
use jobs::server::SHUTDOWN_DRAIN;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_running_jobs_and_finishes_open_follows() {
    // Scenario: two jobs run, one of them ignoring SIGTERM, each with an open
    // follow, when the server is asked to stop. Both followers receive the
    // final status before `serve` returns, no job process is left, and the
    // listener is closed.
    let grace = Duration::from_secs(1);
    let server = TestServer::start_with(|c| c.jobs.grace = grace).await;
    let alice = client(&server, "alice").await;
    let (polite, polite_stream, polite_pid) = start_with_pid(&alice, "exec sleep 600").await;
    let stubborn = start(
        &alice,
        "sh",
        &["-c", "trap '' TERM; echo $$; sleep 600 & echo $!; wait"],
    )
    .await;
    let mut stubborn_stream = alice.stream(&stubborn.id).await.unwrap();
    let pids = job_pids(&stubborn.id, &read_lines(&mut stubborn_stream, 2).await);

    let followers: Vec<_> = [polite_stream, stubborn_stream]
        .into_iter()
        .map(|stream| {
            tokio::spawn(async move {
                let (_, _, status) = follow_to_end(stream).await;
                (status, Instant::now())
            })
        })
        .collect();

    let asked = Instant::now();
    let bound = grace + SHUTDOWN_DRAIN + Duration::from_secs(3);
    let port = server.port();
    tokio::time::timeout(bound, server.shutdown())
        .await
        .expect("serve did not return within grace + drain + 3 s")
        .expect("serve failed");
    let returned = Instant::now();
    println!("shutdown took {:?}", returned - asked);

    let mut statuses = Vec::new();
    for follower in followers {
        let (status, arrived) = follower.await.unwrap();
        assert!(
            arrived <= returned,
            "a follower got its final status only after serve returned"
        );
        statuses.push(status);
    }
    let (p, s) = (&statuses[0], &statuses[1]);
    assert_eq!(
        (p.id.as_str(), p.state(), p.signal),
        (polite.id.as_str(), State::Stopped, Some(15))
    );
    assert_eq!(
        (s.id.as_str(), s.state(), s.signal),
        (stubborn.id.as_str(), State::Stopped, Some(9))
    );
    for pid in [polite_pid, pids[0], pids[1]] {
        assert!(
            dies(pid).await,
            "process {pid} outlived the server: {:?}",
            proc_state(pid)
        );
    }

    // Nothing listens any more.
    let mut gone = options_for_port(port);
    gone.timeout = Duration::from_secs(2);
    match jobs::client::Client::connect(&gone).await {
        Err(ClientError::Connect {
            source: ConnectError::Tcp(_),
            ..
        }) => {}
        other => panic!("expected a refused TCP connection, got {other:?}"),
    }
}

/// Connect options for alice to a port where the server was.
fn options_for_port(port: u16) -> jobs::client::ConnectOptions {
    jobs::client::ConnectOptions {
        addr: format!("127.0.0.1:{port}"),
        pem: pem("alice"),
        timeout: TIMEOUT,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_an_idle_client_returns_within_grace_and_a_moment() {
    // Scenario: a job is running and alice's connection is open but idle; the
    // server stops the job (SIGTERM is enough) and returns without waiting
    // for alice to hang up.
    let server = TestServer::start().await;
    let alice = client(&server, "alice").await;
    let (_job, _stream, pid) = start_with_pid(&alice, "exec sleep 600").await;
    let asked = Instant::now();
    tokio::time::timeout(Duration::from_secs(20), server.shutdown())
        .await
        .expect("serve did not return")
        .expect("serve failed");
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(3), "shutdown took {took:?}");
    assert!(dies(pid).await);
    drop(alice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_of_an_idle_server_is_prompt() {
    // Scenario: no jobs and no clients: nothing to wait for.
    let server = TestServer::start().await;
    let asked = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), server.shutdown())
        .await
        .expect("serve did not return")
        .expect("serve failed");
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "took {:?}",
        asked.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_during_shutdown_are_refused_as_unavailable() {
    // Scenario: while shutdown waits out the grace period of a job that
    // ignores SIGTERM, alice keeps starting jobs on her open connection. As
    // `serve` documents, starts that arrive once shutdown has begun get
    // UNAVAILABLE (never CANCELLED or INTERNAL, which read as a client or
    // server fault); then nothing listens any more.
    let grace = Duration::from_secs(2);
    let server = TestServer::start_with(|c| c.jobs.grace = grace).await;
    let alice = client(&server, "alice").await;
    let job = start(&alice, "sh", &["-c", "trap '' TERM; echo ready; sleep 600"]).await;
    let mut stream = alice.stream(&job.id).await.unwrap();
    read_lines(&mut stream, 1).await;
    let follower = tokio::spawn(follow_to_end(stream));
    let options = options(&server, pem("alice"));
    let shutdown = tokio::spawn(server.shutdown());
    // Nothing tells a client that shutdown has begun: start jobs on the open
    // connection, one after another, until the server has returned. Once one
    // is refused every later one must be too; starts that slip in before are
    // stopped by the shutdown like any other job.
    let t = Instant::now();
    let mut refusals: Vec<(Duration, ClientError)> = Vec::new();
    while !shutdown.is_finished() {
        match alice.start("true", &[]).await {
            Ok(_) => assert!(refusals.is_empty(), "a start accepted after a refusal"),
            Err(e) => {
                refusals.push((t.elapsed(), e));
                // Pace the retries once refused: the daemon needs the CPU.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        assert!(
            t.elapsed() < grace + SHUTDOWN_DRAIN + Duration::from_secs(3),
            "serve did not return"
        );
    }
    assert!(!refusals.is_empty(), "no start was refused during shutdown");
    assert!(
        refusals[0].0 < grace,
        "first refusal only after {:?}",
        refusals[0].0
    );
    // A new connection finds nothing listening.
    match jobs::client::Client::connect(&options).await {
        Err(ClientError::Connect {
            source: ConnectError::Tcp(_),
            ..
        }) => {}
        other => panic!("expected a refused TCP connection, got {other:?}"),
    }
    tokio::time::timeout(grace + SHUTDOWN_DRAIN + Duration::from_secs(3), shutdown)
        .await
        .expect("serve did not return")
        .unwrap()
        .expect("serve failed");
    let (_, _, status) = follower.await.unwrap();
    assert_eq!((status.state(), status.signal), (State::Stopped, Some(9)));
    for (after, refused) in &refusals {
        assert_eq!(
            code(refused),
            tonic::Code::Unavailable,
            "a start {after:?} into shutdown: {refused}"
        );
    }
}

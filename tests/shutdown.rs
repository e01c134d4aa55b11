//! Graceful shutdown: open Output and Stream calls end with UNAVAILABLE at
//! once, running jobs are stopped and their final states recorded (a server
//! on the same state directory shows them), and `serve` returns within a
//! bounded time.

mod common;

use std::time::{Duration, Instant};

use common::*;
use jobs::client::{ClientError, ConnectError};
use jobs::proto::{self, State};
use jobs::server::SHUTDOWN_DRAIN;
use tonic::Streaming;

/// What an open Output or Stream call is told when shutdown begins.
const SHUTTING_DOWN: &str =
    "the server is shutting down; the job's record and output are kept, ask again once it is back";

/// Reads a Stream call until it fails and returns the error and when it
/// came. Panics if it ends, or sends a final status, instead.
async fn follow_until_error(mut stream: Streaming<proto::StreamEvent>) -> (tonic::Status, Instant) {
    loop {
        match stream.message().await {
            Ok(Some(proto::StreamEvent {
                event: Some(proto::stream_event::Event::Chunk(c)),
            })) => {
                check_chunk(&c);
            }
            Ok(other) => panic!("expected the stream to fail, got {other:?}"),
            Err(status) => return (status, Instant::now()),
        }
    }
}

/// Reads an Output call until it fails and returns the bytes read before, the
/// error and when it came. Panics if it ends instead.
async fn output_until_error(
    mut output: Streaming<proto::OutputChunk>,
) -> (u64, tonic::Status, Instant) {
    let mut read = 0u64;
    loop {
        match output.message().await {
            Ok(Some(c)) => {
                check_chunk(&c);
                read += c.data.len() as u64;
            }
            Ok(None) => panic!("the Output call ended after {read} bytes instead of failing"),
            Err(status) => return (read, status, Instant::now()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_streams_at_once_then_stops_and_records_the_jobs() {
    // Scenario: two jobs run, one of them ignoring SIGTERM, each with an open
    // follow, and an Output call of a finished 32 MiB job is open (held by
    // flow control) when the server is asked to stop. All three calls end
    // with UNAVAILABLE before the grace period is over; then both jobs are
    // stopped (SIGTERM; SIGKILL after the grace period), no job process is
    // left, `serve` returns in bounded time, nothing listens any more, and a
    // server on the same state directory shows both jobs Stopped.
    const BIG: u64 = 32 * 1024 * 1024;
    let grace = Duration::from_secs(2);
    let server = TestServer::start_with(|c| c.jobs.grace = grace).await;
    let alice = client(&server, "alice").await;
    let big = start(&alice, "head", &["-c", &BIG.to_string(), "/dev/zero"]).await;
    let big_final = wait_final(&alice, &big.id).await;
    assert_eq!(
        (
            big_final.state(),
            big_final.exit_code,
            big_final.output_bytes
        ),
        (State::Exited, Some(0), BIG)
    );
    // Opened, not read: the server blocks on the client's flow control.
    let output = alice.output(&big.id).await.unwrap();

    let (polite, polite_stream, polite_main) = start_with_pid(&alice, "exec sleep 600").await;
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
        .map(|stream| tokio::spawn(follow_until_error(stream)))
        .collect();

    let asked = Instant::now();
    let reader = tokio::spawn(output_until_error(output));
    let bound = grace + SHUTDOWN_DRAIN + Duration::from_secs(3);
    let port = server.port();
    let (result, state) = tokio::time::timeout(bound, server.shutdown_keeping_state())
        .await
        .expect("serve did not return within grace + drain + 3 s");
    result.expect("serve failed");
    let returned = Instant::now();
    println!("shutdown took {:?}", returned - asked);

    for (name, follower) in ["polite", "stubborn"].into_iter().zip(followers) {
        let (status, arrived) = follower.await.unwrap();
        assert_eq!(
            (status.code(), status.message()),
            (tonic::Code::Unavailable, SHUTTING_DOWN),
            "{name}'s follower"
        );
        assert!(
            arrived - asked < grace,
            "{name}'s follower ended only {:?} into the shutdown",
            arrived - asked
        );
    }
    let (read, status, arrived) = reader.await.unwrap();
    assert_eq!(
        (status.code(), status.message()),
        (tonic::Code::Unavailable, SHUTTING_DOWN),
        "the Output call, after {read} bytes"
    );
    assert!(
        read < BIG,
        "the Output call was not open: it had sent everything"
    );
    assert!(
        arrived - asked < grace,
        "the Output call ended only {:?} into the shutdown",
        arrived - asked
    );
    for pid in [polite_main.pid(), pids[0], pids[1]] {
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

    // The final states were recorded before `serve` returned.
    let server = TestServer::start_on(state, true, |_| {}).await;
    let alice = client(&server, "alice").await;
    let p = alice.status(&polite.id).await.unwrap();
    let s = alice.status(&stubborn.id).await.unwrap();
    assert_eq!(
        (p.state(), p.exit_code, p.signal),
        (State::Stopped, None, Some(15))
    );
    assert_eq!(
        (s.state(), s.exit_code, s.signal),
        (State::Stopped, None, Some(9))
    );
    assert_eq!(alice.status(&big.id).await.unwrap(), big_final);
    server.shutdown().await.expect("serve failed");
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
    let (_job, _stream, main) = start_with_pid(&alice, "exec sleep 600").await;
    let asked = Instant::now();
    tokio::time::timeout(Duration::from_secs(20), server.shutdown())
        .await
        .expect("serve did not return")
        .expect("serve failed");
    let took = asked.elapsed();
    // SIGTERM ends `sleep` at once; waiting out the grace period (5 s)
    // would mean the job was not told. Generous for a loaded machine.
    assert!(took < jobs::job::DEFAULT_GRACE, "shutdown took {took:?}");
    assert!(main.dies().await);
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
    // Under the drain every open stream gets (2 s): an idle server waits
    // for nothing.
    assert!(
        asked.elapsed() < jobs::server::SHUTDOWN_DRAIN,
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
    // server fault); then nothing listens any more. Her open follow of the
    // job ends with UNAVAILABLE, and the next server on the same state
    // directory shows the job killed after the grace period.
    let grace = Duration::from_secs(2);
    let server = TestServer::start_with(|c| c.jobs.grace = grace).await;
    let alice = client(&server, "alice").await;
    let job = start(&alice, "sh", &["-c", "trap '' TERM; echo ready; sleep 600"]).await;
    let mut stream = alice.stream(&job.id).await.unwrap();
    read_lines(&mut stream, 1).await;
    let follower = tokio::spawn(follow_until_error(stream));
    let options = options(&server, pem("alice"));
    let shutdown = tokio::spawn(server.shutdown_keeping_state());
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
    let (result, state) =
        tokio::time::timeout(grace + SHUTDOWN_DRAIN + Duration::from_secs(3), shutdown)
            .await
            .expect("serve did not return")
            .unwrap();
    result.expect("serve failed");
    let (status, _) = follower.await.unwrap();
    assert_eq!(
        (status.code(), status.message()),
        (tonic::Code::Unavailable, SHUTTING_DOWN)
    );
    let server = TestServer::start_on(state, true, |_| {}).await;
    let alice = client(&server, "alice").await;
    let status = alice.status(&job.id).await.unwrap();
    assert_eq!((status.state(), status.signal), (State::Stopped, Some(9)));
    server.shutdown().await.expect("serve failed");
    for (after, refused) in &refusals {
        assert_eq!(
            code(refused),
            tonic::Code::Unavailable,
            "a start {after:?} into shutdown: {refused}"
        );
    }
}

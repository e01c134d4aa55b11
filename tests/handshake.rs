//! Peers that connect and then say nothing, or stop halfway through the TLS
//! handshake, cost the server a bounded amount and never delay real clients.
//!
//! Each test sets its own deadlines and caps, and checks both sides: the real
//! client gets through at once, and the server closes the hostile sockets
//! itself, at their deadline (not before) or, over a cap, at once.

mod common;

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::*;
use jobs::client::{ClientError, ConnectError};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};

/// How long a real client may take to connect and list (a full RSA-4096
/// handshake is a few milliseconds; the rest is slack for a loaded machine).
const REAL_CLIENT: Duration = Duration::from_secs(5);

/// Slack for the server to notice a deadline and for us to see the close.
const SLACK: Duration = Duration::from_secs(4);

/// How soon a connection over a cap must be closed: "at once" with room for
/// a loaded machine, far below the 60 s deadlines that would close it
/// otherwise.
const PROMPT: Duration = Duration::from_secs(5);

/// Connects alice and lists her jobs; returns when the list arrived.
async fn alice_lists(server: &TestServer) -> Instant {
    let alice = connect(server, pem("alice"))
        .await
        .unwrap_or_else(|e| panic!("alice cannot connect: {e:?}"));
    assert_eq!(alice.list(false).await.unwrap(), vec![]);
    Instant::now()
}

/// Reads `tcp` until the server closes it, discarding what it sent; returns
/// the result of the read that ended it and when that was. Gives up (panics)
/// after `within`.
fn read_until_closed(
    mut tcp: TcpStream,
    within: Duration,
) -> JoinHandle<(io::Result<usize>, Instant)> {
    tokio::spawn(async move {
        let mut sink = Vec::new();
        let result = timeout(within, tcp.read_to_end(&mut sink))
            .await
            .expect("the server did not close the connection within the deadline");
        (result, Instant::now())
    })
}

/// A real ClientHello from alice's client configuration, as the first bytes
/// a client sends, captured from rustls without any socket.
fn client_hello() -> Vec<u8> {
    let config = pem("alice").client_config().expect("alice's TLS config");
    let name = ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
    let mut conn = rustls::ClientConnection::new(config, name).expect("a client connection");
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello).expect("write into a Vec");
    }
    hello
}

/// A TLS connection as alice to `server` from the local address `source`;
/// `Ok` carries the server's first bytes after the handshake.
async fn tls_from(source: IpAddr, server: &TestServer) -> io::Result<Vec<u8>> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let server_addr: SocketAddr = server.addr().parse().expect("the server's address");
    let tcp = socket.connect(server_addr).await?;
    let config = pem("alice").client_config().expect("alice's TLS config");
    let name = ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await?;
    let mut first = vec![0u8; 256];
    let n = tls.read(&mut first).await?;
    first.truncate(n);
    Ok(first)
}

/// Asserts that connecting was refused by the server closing the socket.
fn assert_closed_during_handshake(result: Result<jobs::client::Client, ClientError>) {
    match result {
        Err(ClientError::Connect {
            source: ConnectError::ClosedBeforeHandshake,
            ..
        }) => {}
        Err(other) => panic!("expected the server to close the connection, got {other:?}"),
        Ok(_) => panic!("connected while the cap was full"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_do_not_delay_a_real_client() {
    // Scenario: 200 peers open TCP connections and send nothing; alice
    // connects and lists within 5 s while all of them are still open, and the
    // server closes each idle one at its 8 s ClientHello deadline, not before.
    const IDLE: usize = 200;
    let hello_timeout = Duration::from_secs(8);
    let server = TestServer::start_with(|c| {
        c.client_hello_timeout = hello_timeout;
        // Every peer here is 127.0.0.1, like alice: room for all of them.
        c.max_pending_per_ip = IDLE + 1;
    })
    .await;
    // Make alice's certificate now: RSA-4096 key generation must not eat
    // into the deadlines below.
    pem("alice");

    let mut idle = Vec::new();
    for _ in 0..IDLE {
        let connected = Instant::now();
        let tcp = TcpStream::connect(server.addr()).await.unwrap();
        idle.push((connected, read_until_closed(tcp, hello_timeout + SLACK * 2)));
    }
    let first_connected = idle[0].0;

    let asked = Instant::now();
    let listed = timeout(REAL_CLIENT, alice_lists(&server))
        .await
        .expect("alice waited behind idle connections");
    println!(
        "alice listed in {:?} with {IDLE} idle connections open",
        listed - asked
    );
    // The server cannot close an idle connection before its deadline (checked
    // below), so all of them were open while alice got through; this says the
    // timing allowed for that.
    assert!(
        listed < first_connected + hello_timeout,
        "opening the idle connections took too long to prove anything: {:?}",
        listed - first_connected
    );

    for (i, (connected, reader)) in idle.into_iter().enumerate() {
        let (result, closed) = reader.await.unwrap();
        assert_eq!(
            result.unwrap(),
            0,
            "idle connection {i}: the server sent data"
        );
        let open_for = closed - connected;
        assert!(
            open_for >= hello_timeout,
            "idle connection {i} was closed after {open_for:?}, before its deadline"
        );
        assert!(
            open_for < hello_timeout + SLACK,
            "idle connection {i} was closed only after {open_for:?}"
        );
        assert!(
            closed > listed,
            "idle connection {i} closed before alice listed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_per_address_cap_are_closed_at_once() {
    // Scenario: with a cap of 8 pending connections per address and 60 s
    // deadlines, 8 idle sockets from 127.0.0.1 fill the cap; the 9th to 16th
    // are closed at once, alice (also 127.0.0.1) is refused while the cap is
    // full, alice from 127.0.0.2 gets in, and alice from 127.0.0.1 gets in as
    // soon as the idle peers hang up.
    const CAP: usize = 8;
    let server = TestServer::start_with(|c| {
        c.max_pending_per_ip = CAP;
        // Only the cap may close anything in this test.
        c.client_hello_timeout = Duration::from_secs(60);
        c.handshake_timeout = Duration::from_secs(60);
    })
    .await;
    pem("alice");

    // The server accepts in connection order, so these 8 are counted before
    // any later connection is.
    let mut held = Vec::new();
    for _ in 0..CAP {
        held.push(TcpStream::connect(server.addr()).await.unwrap());
    }
    for i in CAP..2 * CAP {
        let mut over = TcpStream::connect(server.addr()).await.unwrap();
        let mut buf = [0u8; 16];
        let n = timeout(PROMPT, over.read(&mut buf))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "connection {} over the cap was not closed within {PROMPT:?}",
                    i + 1
                )
            });
        assert_eq!(n.unwrap(), 0, "connection {}: the server sent data", i + 1);
    }

    // alice shares the full cap of 127.0.0.1.
    assert_closed_during_handshake(connect(&server, pem("alice")).await);

    // Another address has its own cap.
    let first = timeout(REAL_CLIENT, tls_from(IpAddr::from([127, 0, 0, 2]), &server))
        .await
        .expect("alice from 127.0.0.2 did not get in in time")
        .expect("alice from 127.0.0.2 was refused");
    // An HTTP/2 frame header: 3 bytes length, type 0x4 (SETTINGS).
    assert!(first.len() >= 9, "{first:?}");
    assert_eq!(first[3], 0x04, "first frame is not SETTINGS: {first:?}");

    // The idle peers hang up; the server ends their handshakes and closes its
    // side, which is the event we wait for.
    for (i, mut tcp) in held.into_iter().enumerate() {
        tcp.shutdown().await.unwrap();
        let mut buf = [0u8; 16];
        let n = timeout(PROMPT, tcp.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("the server kept idle connection {i} after it hung up"));
        assert_eq!(n.unwrap(), 0, "idle connection {i}: the server sent data");
    }
    // The server frees a slot just after closing the socket, so a first
    // attempt can still, rarely, find the cap full: retry under a deadline.
    let end = Instant::now() + REAL_CLIENT;
    let alice = loop {
        match connect(&server, pem("alice")).await {
            Ok(alice) => break alice,
            Err(ClientError::Connect {
                source: ConnectError::ClosedBeforeHandshake,
                ..
            }) if Instant::now() < end => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("alice was refused after the idle peers hung up: {e:?}"),
        }
    };
    assert_eq!(alice.list(false).await.unwrap(), vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_stall_after_their_client_hello_hold_no_handshake_permit() {
    // Scenario: with a single handshake permit and an 8 s handshake deadline,
    // 4 peers each send a real ClientHello, get the server's signed answer,
    // and send nothing more; alice connects and lists within 5 s, before any
    // of their deadlines, and the server closes each stalled peer at its
    // deadline, not before.
    const STALLED: usize = 4;
    let handshake_timeout = Duration::from_secs(8);
    let server = TestServer::start_with(|c| {
        c.max_handshakes = 1;
        c.handshake_timeout = handshake_timeout;
    })
    .await;
    let hello = client_hello();

    let mut stalled = Vec::new();
    for i in 0..STALLED {
        let connected = Instant::now();
        let mut tcp = TcpStream::connect(server.addr()).await.unwrap();
        tcp.write_all(&hello).await.unwrap();
        // The first record the server sends: a handshake record holding its
        // ServerHello, built together with its signature.
        let mut head = [0u8; 6];
        timeout(REAL_CLIENT, tcp.read_exact(&mut head))
            .await
            .unwrap_or_else(|_| panic!("stalled peer {i} got no answer to its ClientHello"))
            .unwrap();
        assert_eq!(
            (head[0], head[1], head[2], head[5]),
            (0x16, 0x03, 0x03, 0x02),
            "peer {i}: not a ServerHello record: {head:?}"
        );
        stalled.push((
            connected,
            read_until_closed(tcp, handshake_timeout + SLACK * 2),
        ));
    }
    let first_connected = stalled[0].0;

    let listed = timeout(REAL_CLIENT, alice_lists(&server))
        .await
        .expect("alice waited behind stalled handshakes");
    assert!(
        listed < first_connected + handshake_timeout,
        "the stalled peers took too long to set up to prove anything: {:?}",
        listed - first_connected
    );

    for (i, (connected, reader)) in stalled.into_iter().enumerate() {
        let (result, closed) = reader.await.unwrap();
        result.unwrap_or_else(|e| panic!("stalled peer {i}: {e}"));
        let open_for = closed - connected;
        assert!(
            open_for >= handshake_timeout,
            "stalled peer {i} was closed after {open_for:?}, before its deadline"
        );
        assert!(
            open_for < handshake_timeout + SLACK,
            "stalled peer {i} was closed only after {open_for:?}"
        );
        assert!(
            closed > listed,
            "stalled peer {i} closed before alice listed"
        );
    }
}

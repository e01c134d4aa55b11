//! Who may connect, and who may touch which job.
//!
//! Every security rule here has a negative test: certificates the server must
//! refuse at the handshake, servers the client must refuse, and the ownership
//! check that makes another user's job indistinguishable from no job at all.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use jobs::auth::Identity;
use jobs::client::{ClientError, ConnectError};
use jobs::proto::State;
use rustls::AlertDescription;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A job id that exists nowhere.
const UNKNOWN_ID: &str = "0b5fa4f4-9f0f-4d59-b0a8-3c86d7a4e7a1";

/// The message every malformed id gets.
const INVALID_ID_MESSAGE: &str =
    "job id must be a UUID in canonical lower-case form, like 67e55044-10b1-426f-9247-bb680e5fe0c8";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_job_looks_exactly_like_no_job() {
    // Scenario: bob knows the id of alice's running job and tries every call on
    // it; each answer must equal the answer for an id that does not exist, and
    // the job must be untouched.
    let server = TestServer::start().await;
    let alice = client(&server, "alice").await;
    let bob = client(&server, "bob").await;
    let job = start(&alice, "sleep", &["600"]).await;

    let foreign = every_job_call(&bob, &job.id).await;
    let unknown = every_job_call(&bob, UNKNOWN_ID).await;
    for ((call, on_alices), (_, on_unknown)) in foreign.iter().zip(&unknown) {
        assert_eq!(
            code(on_alices),
            tonic::Code::NotFound,
            "{call} on alice's job"
        );
        assert_eq!(
            code(on_unknown),
            tonic::Code::NotFound,
            "{call} on an unknown id"
        );
        assert_eq!(
            message(on_alices),
            message(on_unknown),
            "{call}: the answers differ"
        );
        assert_eq!(message(on_alices), "no such job", "{call}");
    }

    // bob lists nothing; alice lists her job, still running after bob's stop.
    assert_eq!(bob.list(false).await.unwrap(), vec![]);
    let mine = alice.list(false).await.unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].id, job.id);
    assert_eq!(mine[0].state(), State::Running);
    assert_eq!(alice.status(&job.id).await.unwrap().state(), State::Running);

    // bob's own job is his alone.
    let bobs = start(&bob, "sleep", &["600"]).await;
    assert_eq!(
        code(&alice.status(&bobs.id).await.unwrap_err()),
        tonic::Code::NotFound
    );
    let listed = listed_ids(&bob).await;
    assert_eq!(listed, vec![bobs.id.clone()]);
    let listed = listed_ids(&alice).await;
    assert_eq!(listed, vec![job.id.clone()]);

    assert_eq!(alice.stop(&job.id).await.unwrap().state(), State::Stopped);
    assert_eq!(bob.stop(&bobs.id).await.unwrap().state(), State::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_ids_are_invalid_argument() {
    // Scenario: ids that are not a canonical lower-case hyphenated UUID are
    // refused as malformed, not looked up.
    let server = TestServer::start().await;
    let alice = client(&server, "alice").await;
    let job = start(&alice, "sleep", &["600"]).await;
    let upper = job.id.to_uppercase();
    let simple = job.id.replace('-', "");
    let braced = format!("{{{}}}", job.id);
    let padded = format!(" {}", job.id);
    let urn = format!("urn:uuid:{}", job.id);
    for bad in [
        "",
        "not-a-uuid",
        "../../etc/passwd",
        &upper,
        &simple,
        &braced,
        &padded,
        &urn,
    ] {
        for (call, e) in every_job_call(&alice, bad).await {
            assert_eq!(code(&e), tonic::Code::InvalidArgument, "{call}({bad:?})");
            assert_eq!(message(&e), INVALID_ID_MESSAGE, "{call}({bad:?})");
        }
    }
    // None of that touched the job.
    assert_eq!(alice.status(&job.id).await.unwrap().state(), State::Running);
    alice.stop(&job.id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_is_the_fingerprint_of_the_callers_certificate() {
    // Scenario: the owner in a status is the SPKI fingerprint of the
    // certificate alice connected with, as the CA module computed it.
    let server = TestServer::start().await;
    let alice = client(&server, "alice").await;
    let bob = client(&server, "bob").await;
    let a = start(&alice, "true", &[]).await;
    let b = start(&bob, "true", &[]).await;

    let alice_der = std::fs::read(pem("alice").cert).unwrap();
    let alice_der = {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_slice(&alice_der).unwrap()
    };
    let from_cert = Identity::from_certificate_der(&alice_der).unwrap();
    assert_eq!(from_cert, identity("alice"));
    assert_eq!(a.owner, identity("alice").to_string());
    assert_eq!(
        wait_final(&alice, &a.id).await.owner,
        identity("alice").to_string()
    );
    assert_eq!(b.owner, identity("bob").to_string());
    assert_ne!(a.owner, b.owner);
    assert_eq!(a.owner.len(), "sha256:".len() + 64);
}

/// Asserts that a raw TLS connection was refused with `alert`.
fn assert_alert(result: Result<Vec<u8>, std::io::Error>, alert: AlertDescription) {
    match result {
        Err(e) => assert_eq!(received_alert(&e), Some(alert), "{e:?}"),
        Ok(bytes) => panic!("the server accepted the connection and sent {bytes:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_tls_client_with_a_valid_certificate_gets_http2_settings() {
    // Scenario: control for the raw-TLS refusals below: alice's certificate
    // through the same path is accepted and the server speaks HTTP/2 first.
    let server = TestServer::start().await;
    let first = raw_tls(&server, pem("alice").client_config().unwrap())
        .await
        .unwrap();
    // An HTTP/2 frame header: 3 bytes length, type 0x4 (SETTINGS), flags, stream 0.
    assert!(first.len() >= 9, "{first:?}");
    assert_eq!(first[3], 0x04, "first frame is not SETTINGS: {first:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_from_another_ca_is_refused() {
    // Scenario: mallory has a certificate from another CA made by `jobs-ca`.
    // Each such CA has its own name, so the server finds no trust anchor for
    // it and refuses the handshake with UnknownCA.
    let server = TestServer::start().await;
    match connect(&server, pem("mallory")).await {
        Err(ClientError::Connect {
            source: ConnectError::ClientCertificateRefused { alert },
            ..
        }) => assert_eq!(alert, "UnknownCA"),
        Err(other) => panic!("expected the server to refuse mallory, got {other:?}"),
        Ok(_) => panic!("mallory connected with a certificate from another CA"),
    }
    match raw_tls(&server, raw_client_config(Some(&pem("mallory")))).await {
        Err(e) => assert!(
            matches!(received_alert(&e), Some(AlertDescription::UnknownCA)),
            "{e:?}"
        ),
        Ok(bytes) => panic!("the server accepted mallory and sent {bytes:?}"),
    }
    // The server keeps serving others.
    let alice = client(&server, "alice").await;
    assert_eq!(alice.list(false).await.unwrap(), vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_client_certificate_is_refused() {
    // Scenario: a certificate whose notAfter is yesterday. The client library
    // refuses before dialling, saying so; a client that dials anyway is
    // refused by the server.
    let server = TestServer::start().await;
    let msg = refused_locally(connect(&server, pem("expired")).await);
    let prefix = format!(
        "client certificate {} expired 1 day ago (not valid after ",
        pem("expired").cert.display()
    );
    assert!(msg.starts_with(&prefix), "{msg}");
    assert_alert(
        raw_tls(&server, raw_client_config(Some(&pem("expired")))).await,
        AlertDescription::CertificateExpired,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_not_yet_valid_client_certificate_is_refused() {
    // Scenario: a certificate whose notBefore is tomorrow.
    let server = TestServer::start().await;
    let msg = refused_locally(connect(&server, pem("not-yet-valid")).await);
    let prefix = format!(
        "client certificate {} is not valid yet: it starts in 23 hours (not valid before ",
        pem("not-yet-valid").cert.display()
    );
    assert!(msg.starts_with(&prefix), "{msg}");
    assert_alert(
        raw_tls(&server, raw_client_config(Some(&pem("not-yet-valid")))).await,
        AlertDescription::CertificateExpired,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_certificate_is_refused() {
    // Scenario: a TLS 1.3 client that trusts our CA but offers no certificate.
    let server = TestServer::start().await;
    assert_alert(
        raw_tls(&server, raw_client_config(None)).await,
        AlertDescription::CertificateRequired,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_certificate_is_refused_as_a_client_certificate() {
    // Scenario: someone copies server.crt/server.key and uses them as a client
    // identity; the certificate chains to our CA but is serverAuth only. Our
    // client says so before connecting; any client that offers it anyway is
    // refused by the server.
    let server = TestServer::start().await;
    assert_refused_locally(
        connect(&server, pem("server")).await,
        "is not made for client authentication (its extended key usage lacks clientAuth): issue one with `jobs-ca sign` (on a request from `jobs-ca request NAME`) or `jobs-ca client NAME`",
    );
    assert_alert(
        raw_tls(&server, raw_client_config(Some(&pem("server")))).await,
        AlertDescription::UnsupportedCertificate,
    );
}

/// Asserts that our client refused to use its own certificate, saying `why`.
fn assert_refused_locally(result: Result<jobs::client::Client, ClientError>, why: &str) {
    let msg = refused_locally(result);
    assert!(msg.ends_with(why), "{msg}");
}

/// The message of our client's refusal to use its own certificate.
fn refused_locally(result: Result<jobs::client::Client, ClientError>) -> String {
    match result {
        Err(ClientError::Tls(e @ jobs::tls::TlsError::Unsuitable { .. })) => e.to_string(),
        Err(other) => panic!("expected our client to refuse its certificate, got {other:?}"),
        Ok(_) => panic!("connected with a certificate the server must refuse"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaf_with_ca_true_is_refused() {
    // Scenario: a client certificate signed by our CA but issued with
    // basicConstraints cA:TRUE (a CA used as an end entity). Our client says
    // so; a client that offers it anyway is refused by the server.
    let server = TestServer::start().await;
    assert_refused_locally(
        connect(&server, pem("ca-leaf")).await,
        "is a CA certificate (basicConstraints cA:TRUE), not an end-entity certificate: issue one with `jobs-ca sign` (on a request from `jobs-ca request NAME`) or `jobs-ca client NAME`",
    );
    assert_alert(
        raw_tls(&server, raw_client_config(Some(&pem("ca-leaf")))).await,
        AlertDescription::CertificateUnknown,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_x509_v1_client_certificate_is_refused() {
    // Scenario: an `openssl req -x509`-style v1 certificate (no extensions),
    // signed by our CA. The client library refuses to use it; a client that
    // offers it anyway is refused by the server.
    let server = TestServer::start().await;
    assert_refused_locally(
        connect(&server, pem("v1-client")).await,
        "is an X.509 v1 certificate; TLS needs v3 with extensions: issue one with `jobs-ca sign` (on a request from `jobs-ca request NAME`) or `jobs-ca client NAME`",
    );
    assert_alert(
        raw_tls(&server, raw_client_config(Some(&pem("v1-client")))).await,
        AlertDescription::CertificateUnknown,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_refuses_a_server_certificate_without_the_dialled_ip() {
    // Scenario: the server's certificate names only DNS:localhost and the
    // client dials 127.0.0.1; dialling localhost works.
    let dns_only = pem("dns-only-server");
    let server = TestServer::start_tls(dns_only.server_config().unwrap(), |_| {}).await;
    match connect(&server, pem("alice")).await {
        Err(ClientError::Connect {
            source: e @ ConnectError::ServerCertificate(_),
            ..
        }) => {
            let ConnectError::ServerCertificate(rustls::Error::InvalidCertificate(cert)) = &e
            else {
                panic!("not a certificate error: {e:?}");
            };
            assert!(
                matches!(
                    cert,
                    rustls::CertificateError::NotValidForName
                        | rustls::CertificateError::NotValidForNameContext { .. }
                ),
                "{cert:?}"
            );
            let msg = e.to_string();
            assert!(
                msg.contains("dial a name or address listed in its subject alternative names"),
                "{msg}"
            );
        }
        Err(other) => panic!("expected ServerCertificate, got {other:?}"),
        Ok(_) => panic!("the client accepted a certificate not valid for 127.0.0.1"),
    }
    // Control: the same certificate is fine for the name it carries.
    let mut by_name = options(&server, pem("alice"));
    by_name.addr = format!("localhost:{}", server.port());
    let alice = jobs::client::Client::connect(&by_name).await.unwrap();
    assert_eq!(alice.list(false).await.unwrap(), vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_refuses_a_server_certificate_from_another_ca() {
    // Scenario: something else answers on the port with a certificate from a
    // CA the client does not trust.
    let foreign = pem("foreign-server");
    let server = TestServer::start_tls(foreign.server_config().unwrap(), |_| {}).await;
    match connect(&server, pem("alice")).await {
        Err(ClientError::Connect {
            source: e @ ConnectError::ServerCertificate(_),
            ..
        }) => {
            assert!(
                matches!(
                    e,
                    ConnectError::ServerCertificate(rustls::Error::InvalidCertificate(
                        rustls::CertificateError::UnknownIssuer
                    ))
                ),
                "{e:?}"
            );
            let msg = e.to_string();
            assert!(
                msg.contains("(it was not issued by the CA given with --ca / JOBS_CA)"),
                "{msg}"
            );
        }
        Err(other) => panic!("expected ServerCertificate, got {other:?}"),
        Ok(_) => panic!("the client accepted a server certificate from another CA"),
    }
}

/// A TLS 1.2 ClientHello (no supported_versions extension), as a client
/// that cannot speak TLS 1.3 sends it.
fn tls12_client_hello() -> Vec<u8> {
    let mut body = Vec::new();
    body.extend([0x03, 0x03]); // legacy_version TLS 1.2
    body.extend([0x5a; 32]); // random
    body.push(0); // no session id
    // Cipher suites: ECDHE-RSA-AES128-GCM-SHA256, ECDHE-RSA-AES256-GCM-SHA384.
    body.extend([0x00, 0x04, 0xc0, 0x2f, 0xc0, 0x30]);
    body.extend([0x01, 0x00]); // compression: null
    let mut ext = Vec::new();
    // signature_algorithms: rsa_pkcs1_sha256, rsa_pss_rsae_sha256.
    ext.extend([0x00, 0x0d, 0x00, 0x06, 0x00, 0x04, 0x04, 0x01, 0x08, 0x04]);
    // supported_groups: x25519, secp256r1.
    ext.extend([0x00, 0x0a, 0x00, 0x06, 0x00, 0x04, 0x00, 0x1d, 0x00, 0x17]);
    // ec_point_formats: uncompressed.
    ext.extend([0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]);
    body.extend((ext.len() as u16).to_be_bytes());
    body.extend(ext);

    let mut handshake = vec![0x01]; // ClientHello
    handshake.extend(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend(body);
    let mut record = vec![0x16, 0x03, 0x01]; // handshake record, TLS 1.0 record version
    record.extend((handshake.len() as u16).to_be_bytes());
    record.extend(handshake);
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls12_client_is_refused() {
    // Scenario: a client that offers only TLS 1.2. This build of rustls has no
    // TLS 1.2 code (no `tls12` feature), so the ClientHello is written by hand;
    // the server must answer with a fatal protocol_version alert.
    let server = TestServer::start().await;
    let mut tcp = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    tcp.write_all(&tls12_client_hello()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(TIMEOUT, tcp.read_to_end(&mut answer))
        .await
        .expect("the server neither answered nor closed")
        .ok();
    // alert record: type 21, version, length 2, level fatal (2), protocol_version (70).
    assert!(answer.len() >= 7, "{answer:?}");
    assert_eq!(answer[0], 21, "not an alert record: {answer:?}");
    assert_eq!(&answer[3..7], &[0, 2, 2, 70], "{answer:?}");
    assert_eq!(
        answer.len(),
        7,
        "the server sent more than the alert: {answer:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_for_the_same_key_is_the_same_user() {
    // Scenario: alice's certificate is re-issued for her key (new serial, new
    // name); she is the same identity and still owns her jobs.
    let server = TestServer::start().await;
    let alice = client(&server, "alice").await;
    let job = start(&alice, "sleep", &["600"]).await;
    let renewed = client(&server, "alice-renewed").await;
    let listed = listed_ids(&renewed).await;
    assert_eq!(listed, vec![job.id.clone()]);
    let s = renewed.stop(&job.id).await.unwrap();
    assert_eq!(
        (s.state(), s.owner.as_str()),
        (State::Stopped, identity("alice").to_string().as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_cannot_hold_the_handshake_slots() {
    // Scenario: with one handshake permit and a 6 s handshake deadline, a peer
    // opens TCP and never speaks; alice gets in without waiting for it (before
    // its deadline), and the server drops it at its deadline, not before.
    // Long enough for alice's RSA-4096 handshake on a loaded machine.
    let deadline = Duration::from_secs(6);
    let server = TestServer::start_with(|c| {
        c.max_handshakes = 1;
        c.handshake_timeout = deadline;
        c.client_hello_timeout = deadline;
    })
    .await;
    pem("alice");
    let t = Instant::now();
    let mut silent = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let alice = tokio::time::timeout(deadline, connect(&server, pem("alice")))
        .await
        .expect("alice waited behind a silent peer")
        .unwrap();
    assert_eq!(alice.list(false).await.unwrap(), vec![]);
    let listed = t.elapsed();
    assert!(listed < deadline, "alice listed only after {listed:?}");
    // The silent peer was closed at its deadline.
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(20), silent.read(&mut buf))
        .await
        .expect("the silent peer was never dropped");
    assert_eq!(n.unwrap(), 0, "the server sent data to a silent peer");
    let closed = t.elapsed();
    assert!(
        closed >= deadline && closed < deadline + Duration::from_secs(5),
        "the silent peer was closed after {closed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_offers_no_session_resumption() {
    // Scenario: a client that would resume TLS sessions (rustls's default
    // in-memory cache) connects twice; the second handshake is still a full
    // one with certificate verification, so a certificate cannot outlive its
    // validity through a session ticket.
    let server = TestServer::start().await;
    let mut config = (*pem("alice").client_config().unwrap()).clone();
    config.resumption = rustls::client::Resumption::in_memory_sessions(16);
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    for attempt in 0..2 {
        let tcp = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
        let name = rustls::pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
        let mut tls = connector.connect(name, tcp).await.unwrap();
        // Read the server's first bytes, which follow any ticket it would send.
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(TIMEOUT, tls.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        assert_eq!(
            tls.get_ref().1.handshake_kind(),
            Some(rustls::HandshakeKind::Full),
            "connection {attempt}"
        );
    }
}

#[test]
fn the_server_refuses_to_start_with_a_certificate_clients_must_refuse() {
    // Scenario (D7 of the fresh-clone review): jobsd started with a user's
    // certificate, or with the CA's, and every client then failed; now the
    // server configuration is refused up front, saying why.
    let alice = pem("alice");
    match alice.server_config() {
        Err(e @ jobs::tls::TlsError::Unsuitable { .. }) => assert_eq!(
            e.to_string(),
            format!(
                "server certificate {} is not made for server authentication (its extended key usage lacks serverAuth): issue one with `jobs-ca server`",
                alice.cert.display()
            )
        ),
        other => panic!("expected Unsuitable, got {other:?}"),
    }
    let ca_as_server = jobs::tls::PemFiles {
        cert: ca_cert(),
        ..server_pem()
    };
    match ca_as_server.server_config() {
        Err(e @ jobs::tls::TlsError::Unsuitable { .. }) => assert!(
            e.to_string()
                .ends_with("is a CA certificate (basicConstraints cA:TRUE), not an end-entity certificate: issue one with `jobs-ca server`"),
            "{e}"
        ),
        other => panic!("expected Unsuitable, got {other:?}"),
    }
}

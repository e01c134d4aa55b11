//! Revocation and denial reaching a running daemon: `jobsd --crl` refuses
//! revoked certificates at the handshake (and the client says so), a CRL
//! reload (the call SIGHUP makes, or a change of the file) or a denylist
//! reload ends the banned identity's streams, closes its connections and
//! stops its jobs while leaving every other identity alone, a bad CRL is
//! refused at start and at reload, and `StopOwner` is for admins only.
//!
//! CRLs are made by our own `ca` module on a copy of the harness's CA
//! directory (same CA key, same record), one copy per test, so no test
//! changes the PKI the others use.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::*;
use jobs::audit::AuditLog;
use jobs::ca::{self, registry::RevocationReason};
use jobs::client::{Client, ClientError, ConnectError};
use jobs::policy::{Policy, PolicyHandle};
use jobs::proto::{self, State};
use jobs::server::{OnRevoke, TlsHandle};
use jobs::tls::TlsError;
use tempfile::TempDir;
use tonic::{Code, Streaming};

/// What a revoked identity's ended stream says.
const REVOKED: &str = "this client certificate was revoked (ask your CA admin for a new one)";
/// What a denylisted identity's ended stream says.
const DENIED: &str = "this identity is denied by the server's policy; ask the server's operator";

/// A copy of the harness's CA directory with a CRL (`crl.pem`) that revokes
/// `revoked`.
fn ca_copy(revoked: &[&str]) -> TempDir {
    // Every name used here is issued (and recorded) before the copy.
    for name in ["alice", "bob", "carol"] {
        let _ = pem(name);
    }
    let dir = tempfile::Builder::new()
        .prefix("jobs-crl-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("CRL dir");
    for file in ["ca.crt", "ca.key", "issued.json"] {
        std::fs::copy(ca_dir().join(file), dir.path().join(file)).expect("copy the CA");
    }
    ca::write_crl(dir.path(), 30).expect("an empty CRL");
    for name in revoked {
        revoke(dir.path(), name);
    }
    dir
}

fn revoke(dir: &Path, name: &str) {
    let r = ca::revoke(dir, name, RevocationReason::KeyCompromise, 30).expect("revoke");
    assert_eq!(r.identity, identity(name));
}

fn crl_path(dir: &TempDir) -> PathBuf {
    dir.path().join(ca::CRL_FILE)
}

/// The server's TLS settings with the CRL at `crl`.
fn tls_with(crl: PathBuf) -> Result<TlsHandle, TlsError> {
    let files = server_pem();
    let material = files.read().expect("server PEM");
    TlsHandle::with_crl(files, material, crl)
}

/// An audit log in its own directory.
struct Audit {
    dir: TempDir,
    log: Arc<AuditLog>,
}

impl Audit {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("jobs-audit-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("audit dir");
        let log = Arc::new(AuditLog::open(&dir.path().join("audit.log")).expect("audit log"));
        Self { dir, log }
    }

    /// `(subject, rpc, owner, outcome, reason)` of every line about `job`.
    fn about(&self, job: &str) -> Vec<(String, String, String, String, Option<String>)> {
        let text = std::fs::read_to_string(self.dir.path().join("audit.log")).expect("read");
        text.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON line"))
            .filter(|v| v["job"] == job)
            .map(|v| {
                let s = |k: &str| v[k].as_str().unwrap_or("").to_owned();
                (
                    s("subject"),
                    s("rpc"),
                    s("owner"),
                    s("outcome"),
                    v["reason"].as_str().map(str::to_owned),
                )
            })
            .collect()
    }
}

/// A policy making alice an admin, plus `extra` TOML.
fn policy(extra: &str) -> Policy {
    let text = format!("admins = [\"{}\"]\n{extra}", identity("alice"));
    Policy::parse(&text, Path::new("test-policy.toml")).expect("valid policy")
}

/// A job printing a line every 50 ms until stopped.
async fn chatty(client: &Client) -> proto::JobStatus {
    start(
        client,
        "sh",
        &["-c", "while :; do echo x; sleep 0.05; done"],
    )
    .await
}

/// Reads `stream` until it fails; the status it failed with.
async fn read_until_error(stream: &mut Streaming<proto::StreamEvent>) -> tonic::Status {
    tokio::time::timeout(STREAM_DEADLINE, async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => {}
                Ok(None) => panic!("the stream ended without an error"),
                Err(status) => return status,
            }
        }
    })
    .await
    .expect("the stream did not end within the deadline")
}

/// A verified TLS connection of `name` that sends nothing after the
/// handshake (its first bytes from the server already read), to watch the
/// server close it.
async fn raw_connection(
    server: &TestServer,
    name: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use tokio::io::AsyncReadExt;
    let tcp = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let dial = rustls::pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let mut tls = tokio_rustls::TlsConnector::from(raw_client_config(Some(&pem(name))))
        .connect(dial, tcp)
        .await
        .expect("handshake");
    // The server's SETTINGS: the server verified the certificate.
    let mut first = [0u8; 256];
    assert!(tls.read(&mut first).await.unwrap() > 0);
    tls
}

/// Waits until the server closes `conn` (EOF or a reset), with a deadline.
async fn closed_by_server(conn: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>) {
    use tokio::io::AsyncReadExt;
    tokio::time::timeout(STREAM_DEADLINE, async {
        let mut buf = [0u8; 4096];
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                // Whatever the server still sends (a GOAWAY) before closing.
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the connection was not closed within the deadline")
}

/// True while `conn` stays open: nothing to read and no close after the
/// banned identity's connections were closed.
async fn still_open(conn: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 64];
    // Long past CLOSE_DELAY: a close would have come by then.
    tokio::time::timeout(jobs::server::CLOSE_DELAY * 4, conn.read(&mut buf))
        .await
        .is_err()
}

/// Waits until the job is final, as the admin `alice` sees it.
async fn final_state(alice: &Client, id: &str) -> State {
    wait_final(alice, id).await.state()
}

fn is_revoked(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Connect {
            source: ConnectError::ClientCertificateRevoked,
            ..
        }
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_certificate_is_refused_at_the_handshake_and_the_client_says_revoked() {
    // Scenario: carol's certificate is on the CRL jobsd starts with; her
    // handshake fails with a one-line "revoked" message; bob connects.
    let dir = ca_copy(&["carol"]);
    let tls = tls_with(crl_path(&dir)).expect("a good CRL");
    let server = TestServer::start_with(move |c| c.tls = tls).await;
    let err = connect(&server, pem("carol")).await.unwrap_err();
    assert!(is_revoked(&err), "{err:?}");
    let ClientError::Connect { source, .. } = &err else {
        unreachable!()
    };
    assert_eq!(
        source.to_string(),
        "the server refused this certificate: it was revoked (ask your CA admin for a new one)"
    );
    let bob = client(&server, "bob").await;
    assert_eq!(bob.list(false).await.unwrap().len(), 0);
    server.shutdown().await.unwrap();
}

/// The scenario both CRL reload tests share: alice (admin) and carol each
/// run a chatty job and follow it; carol is revoked by `reload`; her stream
/// ends PERMISSION_DENIED, her connection closes, her job is stopped and
/// audited, her new handshake is refused; alice's stream keeps flowing.
async fn revoke_while_running(on_revoke: OnRevoke, reload: impl AsyncFnOnce(&TlsHandle, &Path)) {
    let dir = ca_copy(&[]);
    let tls = tls_with(crl_path(&dir)).expect("a good CRL");
    let audit = Audit::new();
    let (t, a, p) = (
        tls.clone(),
        audit.log.clone(),
        PolicyHandle::new(policy("")),
    );
    let server = TestServer::start_with(move |c| {
        c.tls = t;
        c.audit = Some(a);
        c.policy = p;
        c.on_revoke = on_revoke;
    })
    .await;
    let alice = client(&server, "alice").await;
    let carol = client(&server, "carol").await;
    let (mine, theirs) = (chatty(&alice).await, chatty(&carol).await);
    let mut my_stream = alice.stream(&mine.id).await.unwrap();
    let mut her_stream = carol.stream(&theirs.id).await.unwrap();
    read_lines(&mut my_stream, 1).await;
    read_lines(&mut her_stream, 1).await;
    let mut her_conn = raw_connection(&server, "carol").await;
    let mut my_conn = raw_connection(&server, "alice").await;

    reload(&tls, dir.path()).await;

    let status = read_until_error(&mut her_stream).await;
    assert_eq!(
        (status.code(), status.message()),
        (Code::PermissionDenied, REVOKED)
    );
    closed_by_server(&mut her_conn).await;
    assert!(
        still_open(&mut my_conn).await,
        "alice's connection was closed"
    );
    assert!(
        carol.list(false).await.is_err(),
        "carol's client still works"
    );
    let err = connect(&server, pem("carol")).await.unwrap_err();
    assert!(is_revoked(&err), "{err:?}");
    // Alice's stream still flows and her job runs.
    read_lines(&mut my_stream, 3).await;
    assert_eq!(
        alice.status(&mine.id).await.unwrap().state(),
        State::Running
    );
    match on_revoke {
        OnRevoke::Stop => {
            assert_eq!(final_state(&alice, &theirs.id).await, State::Stopped);
            let stops: Vec<_> = audit
                .about(&theirs.id)
                .into_iter()
                .filter(|l| l.0 == jobs::server::DAEMON_SUBJECT)
                .collect();
            assert_eq!(
                stops,
                [(
                    "jobsd".to_owned(),
                    "Stop".to_owned(),
                    identity("carol").to_string(),
                    "allowed".to_owned(),
                    Some("revoked".to_owned())
                )]
            );
        }
        OnRevoke::Keep => {
            assert_eq!(
                alice.status(&theirs.id).await.unwrap().state(),
                State::Running
            );
            alice.stop(&theirs.id).await.unwrap();
        }
    }
    alice.stop(&mine.id).await.unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_reload_revokes_a_connected_identity_and_stops_its_jobs() {
    // Scenario: the operator revokes carol and sends SIGHUP (the reload call).
    revoke_while_running(OnRevoke::Stop, async |tls, dir| {
        // The file watcher may reload it first; the result is the same.
        revoke(dir, "carol");
        let summary = tls.reload_crl().expect("reload").expect("a CRL");
        assert_eq!(summary.revoked_certificates, 1);
        assert_eq!(summary.revoked_identities, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_crl_file_is_reloaded_without_a_signal() {
    // Scenario: `jobs-ca revoke` rewrites crl.pem (atomic rename); jobsd
    // notices through inotify alone.
    revoke_while_running(OnRevoke::Stop, async |_, dir| revoke(dir, "carol")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_revoke_keep_ends_streams_and_connections_but_keeps_the_jobs() {
    // Scenario: jobsd --on-revoke keep; carol is revoked; her job runs on.
    revoke_while_running(OnRevoke::Keep, async |_, dir| revoke(dir, "carol")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denylist_reload_ends_streams_closes_connections_and_stops_jobs() {
    // Scenario: the operator denylists carol and reloads; her stream ends,
    // her connection closes, her job is stopped (audited "denylisted");
    // alice's job and stream are untouched.
    let audit = Audit::new();
    let handle = PolicyHandle::new(policy(""));
    let (a, p) = (audit.log.clone(), handle.clone());
    let server = TestServer::start_with(move |c| {
        c.audit = Some(a);
        c.policy = p;
    })
    .await;
    let alice = client(&server, "alice").await;
    let carol = client(&server, "carol").await;
    let (mine, theirs) = (chatty(&alice).await, chatty(&carol).await);
    let mut my_stream = alice.stream(&mine.id).await.unwrap();
    let mut her_stream = carol.stream(&theirs.id).await.unwrap();
    read_lines(&mut her_stream, 1).await;
    let mut her_conn = raw_connection(&server, "carol").await;
    let mut my_conn = raw_connection(&server, "alice").await;

    handle.replace(policy(&format!("denylist = [\"{}\"]\n", identity("carol"))));

    let status = read_until_error(&mut her_stream).await;
    assert_eq!(
        (status.code(), status.message()),
        (Code::PermissionDenied, DENIED)
    );
    closed_by_server(&mut her_conn).await;
    assert!(
        still_open(&mut my_conn).await,
        "alice's connection was closed"
    );
    assert_eq!(final_state(&alice, &theirs.id).await, State::Stopped);
    let reasons: Vec<_> = audit
        .about(&theirs.id)
        .into_iter()
        .filter(|l| l.0 == "jobsd")
        .map(|l| l.4)
        .collect();
    assert_eq!(reasons, [Some("denylisted".to_owned())]);
    read_lines(&mut my_stream, 3).await;
    assert_eq!(
        alice.status(&mine.id).await.unwrap().state(),
        State::Running
    );
    alice.stop(&mine.id).await.unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_may_keep_a_denylisted_identitys_jobs_running() {
    // Scenario: jobsd runs with the default --on-revoke stop, but the policy
    // says keep_jobs_when_banned = true; the operator denylists carol: her
    // stream ends and her requests are refused, her job keeps running (an
    // admin still sees it running) and no daemon stop is audited.
    let audit = Audit::new();
    let keep = "keep_jobs_when_banned = true\n";
    let handle = PolicyHandle::new(policy(keep));
    let (a, p) = (audit.log.clone(), handle.clone());
    let server = TestServer::start_with(move |c| {
        c.audit = Some(a);
        c.policy = p;
    })
    .await;
    let alice = client(&server, "alice").await;
    let carol = client(&server, "carol").await;
    let theirs = chatty(&carol).await;
    let mut her_stream = carol.stream(&theirs.id).await.unwrap();
    read_lines(&mut her_stream, 1).await;

    handle.replace(policy(&format!(
        "{keep}denylist = [\"{}\"]\n",
        identity("carol")
    )));

    let status = read_until_error(&mut her_stream).await;
    assert_eq!(
        (status.code(), status.message()),
        (Code::PermissionDenied, DENIED)
    );
    // The ban has been acted on (the stream ended); the job is untouched.
    assert_eq!(
        alice.status(&theirs.id).await.unwrap().state(),
        State::Running
    );
    assert!(
        audit.about(&theirs.id).into_iter().all(|l| l.0 != "jobsd"),
        "a daemon stop was audited"
    );
    alice.stop(&theirs.id).await.unwrap();
    server.shutdown().await.unwrap();
}

#[test]
fn a_bad_crl_is_refused_at_start_naming_the_file() {
    // Scenario: garbage, a CRL signed by another key under the CA's name,
    // and an expired CRL of the CA are each refused.
    let dir = ca_copy(&[]);
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a CRL\n").unwrap();
    let ca_pem = std::fs::read_to_string(ca_dir().join("ca.crt")).unwrap();
    let ca_key = std::fs::read_to_string(ca_dir().join("ca.key")).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let sign = |key: rcgen::KeyPair, from: time::OffsetDateTime, to: time::OffsetDateTime| {
        let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, key).expect("issuer");
        rcgen::CertificateRevocationListParams {
            this_update: from,
            next_update: to,
            crl_number: rcgen::SerialNumber::from(7u64),
            issuing_distribution_point: None,
            revoked_certs: Vec::new(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&issuer)
        .expect("sign")
        .pem()
        .expect("PEM")
    };
    let foreign = dir.path().join("foreign.pem");
    let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    std::fs::write(&foreign, sign(other, now, now + time::Duration::days(1))).unwrap();
    let expired = dir.path().join("expired.pem");
    let key = rcgen::KeyPair::from_pem(&ca_key).unwrap();
    let old = now - time::Duration::days(2);
    std::fs::write(&expired, sign(key, old, old + time::Duration::days(1))).unwrap();

    for (path, says) in [
        (&garbage, "is not a valid X.509 CRL"),
        (&foreign, "is not signed by the CA given with --ca"),
        (&expired, "expired at its nextUpdate"),
    ] {
        match tls_with(path.clone()) {
            Err(e @ TlsError::Crl { .. }) => {
                let text = e.to_string();
                assert!(
                    text.starts_with(&format!("CRL file {}", path.display())),
                    "{text}"
                );
                assert!(text.contains(says), "{text}");
            }
            other => panic!("{}: {other:?}", path.display()),
        }
    }
}

#[test]
fn jobsd_refuses_to_start_with_a_bad_crl() {
    // Scenario: `jobsd --crl garbage` exits non-zero naming the file.
    let dir = ca_copy(&[]);
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a CRL\n").unwrap();
    let server = server_pem();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_jobsd"))
        .args(["--listen", "127.0.0.1:0", "--state-dir"])
        .arg(dir.path().join("state"))
        .arg("--ca")
        .arg(&server.ca)
        .arg("--cert")
        .arg(&server.cert)
        .arg("--key")
        .arg(&server.key)
        .arg("--crl")
        .arg(&garbage)
        .output()
        .expect("run jobsd");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "CRL file {} is not a valid X.509 CRL",
            garbage.display()
        )),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_crl_at_reload_keeps_the_old_one() {
    // Scenario: the CRL revoking carol is overwritten with garbage; the
    // reload is refused and carol stays refused; bob still connects.
    let dir = ca_copy(&["carol"]);
    let tls = tls_with(crl_path(&dir)).expect("a good CRL");
    let t = tls.clone();
    let server = TestServer::start_with(move |c| c.tls = t).await;
    std::fs::write(crl_path(&dir), "garbage\n").unwrap();
    assert!(matches!(tls.reload_crl(), Err(TlsError::Crl { .. })));
    let err = connect(&server, pem("carol")).await.unwrap_err();
    assert!(is_revoked(&err), "{err:?}");
    client(&server, "bob").await.list(false).await.unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_owner_is_for_admins_and_stops_exactly_that_identitys_jobs() {
    // Scenario: bob (not an admin) asks to stop carol's jobs: refused,
    // nothing stops; alice (admin) stops carol's two jobs, bob's runs on.
    let audit = Audit::new();
    let a = audit.log.clone();
    let server = TestServer::start_with(move |c| {
        c.policy = PolicyHandle::new(policy(""));
        c.audit = Some(a);
    })
    .await;
    let (alice, bob, carol) = (
        client(&server, "alice").await,
        client(&server, "bob").await,
        client(&server, "carol").await,
    );
    let hers = [chatty(&carol).await, chatty(&carol).await];
    let his = chatty(&bob).await;

    let err = bob
        .stop_owner(&identity("carol").to_string())
        .await
        .unwrap_err();
    let denied = |e: &ClientError| match e {
        ClientError::Rpc(s) => (s.code(), s.message().to_owned()),
        other => panic!("{other:?}"),
    };
    let said = (
        Code::PermissionDenied,
        "only admins may stop every job of an identity".to_owned(),
    );
    assert_eq!(denied(&err), said);
    // Malformed, unknown or real, a non-admin hears the same.
    assert_eq!(denied(&bob.stop_owner("nonsense").await.unwrap_err()), said);
    for job in &hers {
        assert_eq!(carol.status(&job.id).await.unwrap().state(), State::Running);
    }

    let stopped = alice
        .stop_owner(&identity("carol").to_string())
        .await
        .unwrap();
    let mut ids: Vec<_> = stopped.iter().map(|s| (s.id.clone(), s.state())).collect();
    ids.sort();
    let mut want: Vec<_> = hers
        .iter()
        .map(|j| (j.id.clone(), State::Stopped))
        .collect();
    want.sort();
    assert_eq!(ids, want);
    assert_eq!(bob.status(&his.id).await.unwrap().state(), State::Running);
    for job in &hers {
        let lines: Vec<_> = audit
            .about(&job.id)
            .into_iter()
            .filter(|l| l.1 == "StopOwner")
            .map(|l| (l.2, l.3))
            .collect();
        assert_eq!(
            lines,
            [(identity("carol").to_string(), "allowed".to_owned())]
        );
    }
    assert_eq!(
        alice
            .stop_owner(&identity("carol").to_string())
            .await
            .unwrap()
            .len(),
        0
    );
    bob.stop(&his.id).await.unwrap();
    server.shutdown().await.unwrap();
}

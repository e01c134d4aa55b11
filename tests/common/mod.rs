//! The harness every integration test shares.
//!
//! - **PKI**, made once per test binary and only as far as a binary needs it
//!   (RSA-4096 key generation costs about a second per key): a CA, a server
//!   certificate and the users `alice` and `bob`, all made by [`jobs::ca`] and
//!   written to a directory under Cargo's target tmp dir; plus odd certificates
//!   for negative tests (expired, not yet valid, from a second CA, `cA:TRUE`
//!   leaf, X.509 v1, server cert with only a DNS name). The odd ones that
//!   `jobs::ca` rightly cannot make are built with `rcgen` (or by hand, for v1)
//!   and signed by the same CA key; they share one RSA key.
//! - [`TestServer`]: the real server, in-process, on `127.0.0.1:0` (bound
//!   before `serve` is spawned), with its own state directory and a oneshot
//!   for shutdown. As root it contains jobs exactly as `jobsd` does (cgroup,
//!   namespaces, a uid of its own per identity), so every test exercises containment in
//!   CI; otherwise jobs run uncontained.
//! - Helpers that read output streams to the end and check every chunk's shape.
//! - [`disk`]: a loop-mounted ext4 and `fsfreeze` on it, to stall a disk.
//!
//! No helper sleeps to synchronise: waits are on events (a stream's final
//! status, a line of output) under a deadline. Where the only observation is a
//! condition in `/proc`, [`eventually`] polls it under a deadline.

#![allow(dead_code)]

pub mod disk;

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use jobs::auth::Identity;
use jobs::ca::{
    CA_CERT_FILE, CA_KEY_FILE, IssuedFiles, SERVER_CERT_FILE, SERVER_KEY_FILE, Validity,
    default_server_sans, init_dir, write_client, write_server,
};
use jobs::client::{Client, ClientError, ConnectOptions};
use jobs::proto;
use jobs::proto::stream_event::Event;
use jobs::server::{ServerConfig, ServerError, serve};
use jobs::tls::PemFiles;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_RSA_SHA256, PublicKeyData, RsaKeySize, SanType,
    SerialNumber, SigningKey,
};
use rustls::pki_types::ServerName;
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::Streaming;

/// Deadline for unary calls and connecting, as the CLI uses.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Largest chunk the server may send (the documented 64 KiB).
pub const MAX_CHUNK: usize = 64 * 1024;

/// Deadline for reading a whole stream of a small job.
pub const STREAM_DEADLINE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// PKI

/// Everything the PKI writes lives here, in Cargo's target tmp dir, named
/// `jobs-pki-PID-…`. A static is never dropped, so the directory outlives the
/// test binary; the next binary that makes one removes those of processes
/// that are gone.
static PKI_DIR: LazyLock<TempDir> = LazyLock::new(|| {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    if let Ok(entries) = std::fs::read_dir(tmp) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_prefix("jobs-pki-"))
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok())
            else {
                continue;
            };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    tempfile::Builder::new()
        .prefix(&format!("jobs-pki-{}-", std::process::id()))
        .tempdir_in(tmp)
        .expect("create the PKI directory")
});

fn main_dir() -> PathBuf {
    PKI_DIR.path().join("main")
}

fn foreign_dir() -> PathBuf {
    PKI_DIR.path().join("foreign")
}

fn days(n: u32) -> Validity {
    Validity::days(n).expect("valid number of days")
}

static CA: LazyLock<IssuedFiles> =
    LazyLock::new(|| init_dir(&main_dir(), days(60)).expect("make the CA"));

static SERVER: LazyLock<IssuedFiles> = LazyLock::new(|| {
    LazyLock::force(&CA);
    write_server(&main_dir(), &default_server_sans(), days(30)).expect("issue the server cert")
});

fn client_cert(name: &str, validity: Validity) -> IssuedFiles {
    LazyLock::force(&CA);
    write_client(&main_dir(), name, validity).expect("issue a client cert")
}

static ALICE: LazyLock<IssuedFiles> = LazyLock::new(|| client_cert("alice", days(30)));
static BOB: LazyLock<IssuedFiles> = LazyLock::new(|| client_cert("bob", days(30)));
/// A third user, made only by the binaries that name her (policy tests make
/// her an admin).
static CAROL: LazyLock<IssuedFiles> = LazyLock::new(|| client_cert("carol", days(30)));

static EXPIRED: LazyLock<IssuedFiles> = LazyLock::new(|| {
    let now = time::OffsetDateTime::now_utc();
    client_cert(
        "expired",
        Validity {
            not_before: now - time::Duration::days(10),
            not_after: now - time::Duration::days(1),
        },
    )
});

static NOT_YET_VALID: LazyLock<IssuedFiles> = LazyLock::new(|| {
    let now = time::OffsetDateTime::now_utc();
    client_cert(
        "not-yet-valid",
        Validity {
            not_before: now + time::Duration::days(1),
            not_after: now + time::Duration::days(2),
        },
    )
});

/// A second, unrelated CA, made the same way as ours.
static FOREIGN_CA: LazyLock<IssuedFiles> =
    LazyLock::new(|| init_dir(&foreign_dir(), days(60)).expect("make the foreign CA"));

static FOREIGN_CLIENT: LazyLock<IssuedFiles> = LazyLock::new(|| {
    LazyLock::force(&FOREIGN_CA);
    write_client(&foreign_dir(), "mallory", days(30)).expect("issue the foreign client cert")
});

static FOREIGN_SERVER: LazyLock<IssuedFiles> = LazyLock::new(|| {
    LazyLock::force(&FOREIGN_CA);
    write_server(&foreign_dir(), &default_server_sans(), days(30))
        .expect("issue the foreign server cert")
});

/// One RSA-4096 key (PEM) shared by every hand-made odd certificate.
static ODD_KEY: LazyLock<String> = LazyLock::new(|| {
    KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_4096)
        .expect("generate the odd key")
        .serialize_pem()
});

fn odd_key() -> KeyPair {
    KeyPair::from_pem_and_sign_algo(&ODD_KEY, &PKCS_RSA_SHA256).expect("parse the odd key")
}

/// Our CA's key, for signing odd certificates that `jobs::ca` refuses to make.
fn ca_issuer() -> Issuer<'static, KeyPair> {
    LazyLock::force(&CA);
    let cert = std::fs::read_to_string(main_dir().join(CA_CERT_FILE)).expect("read ca.crt");
    let key = std::fs::read_to_string(main_dir().join(CA_KEY_FILE)).expect("read ca.key");
    let key = KeyPair::from_pem_and_sign_algo(&key, &PKCS_RSA_SHA256).expect("parse ca.key");
    Issuer::from_ca_cert_pem(&cert, key).expect("load the CA as an rcgen issuer")
}

fn leaf_params(cn: &str, serial: u8) -> CertificateParams {
    let now = time::OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(30);
    params.serial_number = Some(SerialNumber::from_slice(&[0x51, serial, 0x0d, 0xd5]));
    params.use_authority_key_identifier_extension = true;
    params
}

/// Writes `NAME.crt` (the given PEM) and `NAME.key` (the odd key) to the main dir.
fn write_odd(name: &str, cert_pem: &str) -> PathBuf {
    let dir = main_dir();
    std::fs::write(dir.join(format!("{name}.crt")), cert_pem).expect("write odd cert");
    std::fs::write(dir.join(format!("{name}.key")), ODD_KEY.as_str()).expect("write odd key");
    dir.join(format!("{name}.crt"))
}

/// A client leaf signed by our CA but carrying `basicConstraints cA:TRUE`.
static CA_LEAF: LazyLock<PathBuf> = LazyLock::new(|| {
    let mut params = leaf_params("ca-leaf", 1);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params
        .signed_by(&odd_key(), &ca_issuer())
        .expect("sign the cA:TRUE leaf");
    write_odd("ca-leaf", &cert.pem())
});

/// A server certificate signed by our CA whose only SAN is `DNS:localhost`.
static DNS_ONLY_SERVER: LazyLock<PathBuf> = LazyLock::new(|| {
    let mut params = leaf_params("jobs server", 2);
    params.is_ca = IsCa::ExplicitNoCa;
    params.subject_alt_names = vec![SanType::DnsName(
        "localhost".try_into().expect("valid DNS name"),
    )];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params
        .signed_by(&odd_key(), &ca_issuer())
        .expect("sign the DNS-only server cert");
    write_odd("dns-only", &cert.pem())
});

/// A second certificate for alice's key (a renewal), signed by our CA with
/// rcgen: same SubjectPublicKeyInfo, different serial, subject and validity.
static ALICE_RENEWED: LazyLock<PathBuf> = LazyLock::new(|| {
    let key_pem = std::fs::read_to_string(&ALICE.key_path).expect("read alice.key");
    let key = KeyPair::from_pem_and_sign_algo(&key_pem, &PKCS_RSA_SHA256).expect("alice's key");
    let mut params = leaf_params("alice-renewed", 3);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params
        .signed_by(&key, &ca_issuer())
        .expect("sign alice's renewal");
    let dir = main_dir();
    std::fs::write(dir.join("alice-renewed.crt"), cert.pem()).expect("write cert");
    std::fs::write(dir.join("alice-renewed.key"), key_pem).expect("write key");
    dir.join("alice-renewed.crt")
});

/// An X.509 **v1** client certificate (no version field, no extensions) signed
/// by our CA. rcgen only makes v3, so the DER is assembled here.
static V1_CLIENT: LazyLock<PathBuf> = LazyLock::new(|| {
    let ca_pem = std::fs::read(CA.cert_path.as_path()).expect("read ca.crt");
    let ca_der = {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_slice(&ca_pem).expect("PEM certificate")
    };
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).expect("parse ca.crt");
    let issuer_name = ca.tbs_certificate.subject.as_raw().to_vec();
    drop(ca);

    // sha256WithRSAEncryption, NULL parameters.
    let alg = der(
        0x30,
        &[
            der(
                0x06,
                &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b],
            ),
            der(0x05, &[]),
        ]
        .concat(),
    );
    let utc = |t: time::OffsetDateTime| {
        let s = format!(
            "{:02}{:02}{:02}{:02}{:02}{:02}Z",
            t.year() % 100,
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        );
        der(0x17, s.as_bytes())
    };
    let now = time::OffsetDateTime::now_utc();
    let validity = der(
        0x30,
        &[
            utc(now - time::Duration::hours(1)),
            utc(now + time::Duration::days(30)),
        ]
        .concat(),
    );
    // CN=v1-client
    let subject = der(
        0x30,
        &der(
            0x31,
            &der(
                0x30,
                &[der(0x06, &[0x55, 0x04, 0x03]), der(0x0c, b"v1-client")].concat(),
            ),
        ),
    );
    let key = odd_key();
    let tbs = der(
        0x30,
        &[
            der(0x02, &[0x3a, 0x11, 0x7e, 0x42]),
            alg.clone(),
            issuer_name,
            validity,
            subject,
            key.subject_public_key_info(),
        ]
        .concat(),
    );
    let ca_key = std::fs::read_to_string(&CA.key_path).expect("read ca.key");
    let ca_key = KeyPair::from_pem_and_sign_algo(&ca_key, &PKCS_RSA_SHA256).expect("parse ca.key");
    let signature = ca_key.sign(&tbs).expect("sign the v1 cert");
    let cert = der(
        0x30,
        &[tbs, alg, der(0x03, &[&[0u8][..], &signature].concat())].concat(),
    );
    let pem = pem_encode("CERTIFICATE", &cert);
    write_odd("v1-client", &pem)
});

/// One DER TLV.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk.len();
        let v = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= n {
                b64.push(B64[((v >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The directory of our PKI's CA (`ca.crt`, `ca.key`, `issued.json`, …), as
/// `jobs-ca --dir` takes it.
pub fn ca_dir() -> PathBuf {
    LazyLock::force(&CA);
    main_dir()
}

/// The CA certificate path of our PKI.
pub fn ca_cert() -> PathBuf {
    CA.cert_path.clone()
}

/// The PEM files of a named certificate, made on first use:
/// - `alice`, `bob`: ordinary users;
/// - `carol`: a third user (made on first use, like every name here);
/// - `server`: the server certificate (default SANs);
/// - `expired`, `not-yet-valid`: users whose validity is over / not begun;
/// - `mallory`: a user of a second CA (the CA file is still ours);
/// - `foreign-server`: a server certificate from that second CA;
/// - `ca-leaf`: a client leaf with `cA:TRUE`;
/// - `v1-client`: an X.509 v1 client certificate;
/// - `dns-only-server`: a server certificate with only `DNS:localhost`;
/// - `alice-renewed`: another certificate for alice's key.
pub fn pem(name: &str) -> PemFiles {
    let files = |f: &IssuedFiles| PemFiles {
        ca: ca_cert(),
        cert: f.cert_path.clone(),
        key: f.key_path.clone(),
    };
    let odd = |cert: &Path| PemFiles {
        ca: ca_cert(),
        cert: cert.to_path_buf(),
        key: cert.with_extension("key"),
    };
    match name {
        "alice" => files(&ALICE),
        "bob" => files(&BOB),
        "carol" => files(&CAROL),
        "server" => files(&SERVER),
        "expired" => files(&EXPIRED),
        "not-yet-valid" => files(&NOT_YET_VALID),
        "mallory" => files(&FOREIGN_CLIENT),
        "foreign-server" => files(&FOREIGN_SERVER),
        "ca-leaf" => odd(&CA_LEAF),
        "v1-client" => odd(&V1_CLIENT),
        "dns-only-server" => odd(&DNS_ONLY_SERVER),
        "alice-renewed" => odd(&ALICE_RENEWED),
        other => panic!("the harness has no certificate named {other:?}"),
    }
}

/// The identity the CA module reported when it issued `name`'s certificate.
pub fn identity(name: &str) -> Identity {
    match name {
        "alice" => ALICE.identity,
        "bob" => BOB.identity,
        "carol" => CAROL.identity,
        other => panic!("no recorded identity for {other:?}"),
    }
}

/// The standard server certificate and key paths (as `jobs-ca server` writes them).
pub fn server_pem() -> PemFiles {
    LazyLock::force(&SERVER);
    PemFiles {
        ca: ca_cert(),
        cert: main_dir().join(SERVER_CERT_FILE),
        key: main_dir().join(SERVER_KEY_FILE),
    }
}

// ---------------------------------------------------------------------------
// Server

/// A change to the default containment of a [`TestServer`].
type ContainChange = Box<dyn FnOnce(&mut jobs::exec::ContainConfig)>;

/// The real server on `127.0.0.1:0`, in-process. Dropping it asks it to shut
/// down; [`TestServer::shutdown`] also waits until `serve` has returned.
pub struct TestServer {
    addr: SocketAddr,
    /// `None` only once [`TestServer::shutdown_keeping_state`] took it.
    state: Option<TempDir>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServerError>>>,
}

impl TestServer {
    /// Default settings and the standard server certificate.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// The standard server certificate and `tweak` applied to the settings.
    pub async fn start_with(tweak: impl FnOnce(&mut ServerConfig)) -> Self {
        let tls = server_pem().server_config().expect("server TLS config");
        Self::start_tls(tls, tweak).await
    }

    /// Any TLS settings (e.g. an odd server certificate).
    pub async fn start_tls(
        tls: Arc<rustls::ServerConfig>,
        tweak: impl FnOnce(&mut ServerConfig),
    ) -> Self {
        Self::start_full(tls, Some(Box::new(|_| {})), tweak).await
    }

    /// As root, jobs contained with these namespaces (see [`Self::start`]).
    pub async fn start_with_namespaces(
        namespaces: jobs::exec::Namespaces,
        tweak: impl FnOnce(&mut ServerConfig),
    ) -> Self {
        Self::start_contained(move |c| c.namespaces = namespaces, tweak).await
    }

    /// As root, jobs contained as `contain` changes the default containment.
    pub async fn start_contained(
        contain: impl FnOnce(&mut jobs::exec::ContainConfig) + 'static,
        tweak: impl FnOnce(&mut ServerConfig),
    ) -> Self {
        let tls = server_pem().server_config().expect("server TLS config");
        Self::start_full(tls, Some(Box::new(contain)), tweak).await
    }

    /// Jobs never contained, even as root.
    pub async fn start_uncontained(tweak: impl FnOnce(&mut ServerConfig)) -> Self {
        let tls = server_pem().server_config().expect("server TLS config");
        Self::start_full(tls, None, tweak).await
    }

    /// A server on the state directory an earlier one left (see
    /// [`TestServer::shutdown_keeping_state`]), with the standard server
    /// certificate. With `contained`, jobs are contained as root exactly as
    /// [`TestServer::start`] does; without, never (as
    /// [`TestServer::start_uncontained`]).
    pub async fn start_on(
        state: TempDir,
        contained: bool,
        tweak: impl FnOnce(&mut ServerConfig),
    ) -> Self {
        let tls = server_pem().server_config().expect("server TLS config");
        let contain: Option<ContainChange> = if contained {
            Some(Box::new(|_| {}))
        } else {
            None
        };
        Self::start_in(state, tls, contain, tweak).await
    }

    async fn start_full(
        tls: Arc<rustls::ServerConfig>,
        contain: Option<ContainChange>,
        tweak: impl FnOnce(&mut ServerConfig),
    ) -> Self {
        let state = tempfile::Builder::new()
            .prefix("jobs-state-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("state dir");
        Self::start_in(state, tls, contain, tweak).await
    }

    async fn start_in(
        state: TempDir,
        tls: Arc<rustls::ServerConfig>,
        contain: Option<ContainChange>,
        tweak: impl FnOnce(&mut ServerConfig),
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let state_dir = jobs::server::StateDir::open(state.path()).expect("lock state dir");
        let mut config = ServerConfig::new(tls, state_dir);
        if let (Some(change), Some(mut contain)) = (contain, contain_config(state.path())) {
            change(&mut contain);
            config.executor = Arc::new(
                jobs::exec::LocalExecutor::contained(contain).expect("contain jobs as root"),
            );
        }
        tweak(&mut config);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, config, async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            state: Some(state),
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The server's state directory.
    pub fn state_dir(&self) -> &Path {
        self.state.as_ref().expect("the state directory").path()
    }

    /// Resolves the shutdown future and waits for `serve` to return.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = self.task.take().expect("server task");
        task.await.expect("the server task panicked")
    }

    /// As [`TestServer::shutdown`], but hands back the state directory
    /// instead of deleting it, for [`TestServer::start_on`]. Once `serve` has
    /// returned it has dropped its configuration, and with it the directory's
    /// lock and job store, so the next server can open the directory.
    pub async fn shutdown_keeping_state(mut self) -> (Result<(), ServerError>, TempDir) {
        let state = self.state.take().expect("the state directory");
        (self.shutdown().await, state)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// True when the tests run as root, so servers contain their jobs.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The containment `jobsd` would use for `state_dir`, with the test build's
/// `jobs-init`; `None` when not root (jobs then run uncontained).
pub fn contain_config(state_dir: &Path) -> Option<jobs::exec::ContainConfig> {
    if !is_root() {
        return None;
    }
    Some(jobs::exec::ContainConfig {
        init: PathBuf::from(env!("CARGO_BIN_EXE_jobs-init")),
        // jobsd's default: no shared account, each identity a uid of its
        // own from the default range (`JobsConfig::uid_range`).
        account: None,
        namespaces: jobs::exec::Namespaces::default(),
        io_devices: Vec::new(),
        cgroup_name: jobs::exec::cgroup_name_for(state_dir),
        sandbox: jobs::sandbox::SandboxPlan::detected(),
    })
}

/// A test that cannot check its claim on this host (a cgroup layout, a
/// tool, a kernel limit it needs is missing) says why on stderr and
/// passes; with `JOBS_NO_SKIPS` set (`.ci/run` sets it: the CI host has all
/// of them) it fails instead, so CI never passes a check it did not make.
pub fn skip_here(test: &str, why: &str) {
    assert!(
        std::env::var_os("JOBS_NO_SKIPS").is_none(),
        "{test}: cannot run here: {why}; JOBS_NO_SKIPS forbids skipping"
    );
    eprintln!("{test}: skipped: {why}");
}

/// The guard of a root-only test. Such a test is marked
/// `#[cfg_attr(not(jobs_root), ignore = "needs root …")]`, so that a build
/// made as another user reports it as ignored, with the reason (`build.rs`
/// sets `jobs_root` when it runs as root); it panics only when run anyway
/// (`--include-ignored`) or when a build made as root runs as someone else.
/// `--uid-range FIRST-LAST` for one test daemon, unless `extra` names a
/// range or `--run-as`: 256 uids of their own above the default range, so that daemons
/// running at once never share a uid (a daemon claims its range host-wide
/// and refuses an overlapping one) and no test's jobs count against another
/// test's `RLIMIT_NPROC`.
pub fn own_uid_range(extra: &[&str]) -> Vec<String> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // `--run-as` uses no range (and clap refuses the two together).
    if extra.contains(&"--uid-range") || extra.contains(&"--run-as") {
        return Vec::new();
    }
    // Test binaries run one after another; within one, daemons are counted.
    let slot = (std::process::id() % 16) * 256 + NEXT.fetch_add(1, Ordering::Relaxed) % 256;
    let first = 0x7801_0000 + slot * 256;
    vec!["--uid-range".into(), format!("{first}-{}", first + 255)]
}

pub fn require_root() {
    assert!(
        is_root(),
        "needs root (cgroups, namespaces, changing user): this build was made as root, or the test was run with --include-ignored; rebuild as this user or run as root"
    );
}

// ---------------------------------------------------------------------------
// Clients

/// Options for connecting to `server` with `pem`.
pub fn options(server: &TestServer, pem: PemFiles) -> ConnectOptions {
    ConnectOptions {
        addr: server.addr(),
        pem,
        timeout: TIMEOUT,
    }
}

/// Connects to `server` with `pem`.
pub async fn connect(server: &TestServer, pem: PemFiles) -> Result<Client, ClientError> {
    Client::connect(&options(server, pem)).await
}

/// A connected client for the named certificate (see [`pem`]).
pub async fn client(server: &TestServer, name: &str) -> Client {
    connect(server, pem(name))
        .await
        .unwrap_or_else(|e| panic!("{name} cannot connect: {e:?}"))
}

/// Strings for [`Client::start`].
pub fn args(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// Starts `program args` and returns its status; panics on refusal.
pub async fn start(client: &Client, program: &str, a: &[&str]) -> proto::JobStatus {
    client
        .start(program, &args(a))
        .await
        .unwrap_or_else(|e| panic!("start {program} {a:?}: {e:?}"))
}

/// A raw TLS connection with `config` to `server` (dialled as 127.0.0.1).
/// `Ok` carries the first bytes the server sent after the handshake (its
/// HTTP/2 SETTINGS frame); `Err` is what the handshake or the first read
/// failed with. In TLS 1.3 the server judges our certificate after our side of
/// the handshake, so a refusal arrives as an alert on that first read.
pub async fn raw_tls(
    server: &TestServer,
    config: Arc<rustls::ClientConfig>,
) -> Result<Vec<u8>, io::Error> {
    let tcp = tokio::time::timeout(TIMEOUT, TcpStream::connect(server.addr))
        .await
        .expect("connect within the deadline")?;
    raw_tls_on(tcp, config).await
}

/// [`raw_tls`] over a connection already made.
pub async fn raw_tls_on(
    tcp: TcpStream,
    config: Arc<rustls::ClientConfig>,
) -> Result<Vec<u8>, io::Error> {
    let attempt = async {
        let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
        let mut tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await?;
        let mut buf = vec![0u8; 256];
        let n = tls.read(&mut buf).await?;
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        buf.truncate(n);
        Ok(buf)
    };
    tokio::time::timeout(TIMEOUT, attempt)
        .await
        .expect("the server neither answered nor refused within the deadline")
}

/// A TCP connection to `server` from a socket made under fsuid `uid`: the
/// uid the kernel stamps a socket with, which the server counts a local
/// peer by (a job runs under its identity's uid). Needs root.
pub fn connect_as(uid: u32, server: &TestServer) -> TcpStream {
    let addr = server.addr;
    let tcp = std::thread::spawn(move || {
        // SAFETY: setfsuid changes this thread's credentials only, and this
        // thread ends right after.
        unsafe { libc::setfsuid(uid) };
        std::net::TcpStream::connect(addr)
    })
    .join()
    .expect("connecting thread")
    .expect("connect");
    tcp.set_nonblocking(true).unwrap();
    TcpStream::from_std(tcp).unwrap()
}

/// A TLS 1.3 client configuration that trusts our CA and offers `client` as
/// its certificate without any local check of the certificate (rustls's own
/// builder refuses some odd certificates, such as X.509 v1, before the server
/// could judge them). `None` offers no certificate at all.
pub fn raw_client_config(client: Option<&PemFiles>) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(ca_cert()).expect("read ca.crt");
    for cert in CertificateDer::pem_slice_iter(&ca) {
        roots
            .add(cert.expect("CA PEM"))
            .expect("CA as trust anchor");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let chain = CertificateDer::pem_file_iter(&pem.cert)
                .expect("read cert")
                .collect::<Result<Vec<_>, _>>()
                .expect("cert PEM");
            let key = PrivateKeyDer::from_pem_file(&pem.key).expect("key PEM");
            let key = provider
                .key_provider
                .load_private_key(key)
                .expect("usable key");
            let certified = Arc::new(rustls::sign::CertifiedKey::new(chain, key));
            builder.with_client_cert_resolver(Arc::new(Unchecked(certified)))
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// Offers one certificate, whatever the server asks for.
#[derive(Debug)]
struct Unchecked(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for Unchecked {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The TLS alert inside an I/O error from [`raw_tls`], if that is what it is.
pub fn received_alert(e: &io::Error) -> Option<rustls::AlertDescription> {
    match e.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::AlertReceived(alert) => Some(*alert),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Output

/// Checks the shape every chunk must have: stdout or stderr, 1..=64 KiB.
pub fn check_chunk(chunk: &proto::OutputChunk) -> proto::Fd {
    assert!(!chunk.data.is_empty(), "empty chunk");
    assert!(
        chunk.data.len() <= MAX_CHUNK,
        "chunk of {} bytes is over 64 KiB",
        chunk.data.len()
    );
    match proto::Fd::try_from(chunk.fd) {
        Ok(fd @ (proto::Fd::Stdout | proto::Fd::Stderr)) => fd,
        _ => panic!("chunk with fd {}", chunk.fd),
    }
}

/// A stream read to the end: every chunk in order and the final status.
pub struct Followed {
    /// `(fd, bytes)` in the order received.
    pub chunks: Vec<(proto::Fd, Vec<u8>)>,
    /// The final status (the last message).
    pub status: proto::JobStatus,
}

impl Followed {
    /// Everything written to `fd`, concatenated.
    pub fn bytes(&self, fd: proto::Fd) -> Vec<u8> {
        self.chunks
            .iter()
            .filter(|(f, _)| *f == fd)
            .flat_map(|(_, d)| d.iter().copied())
            .collect()
    }

    pub fn stdout(&self) -> Vec<u8> {
        self.bytes(proto::Fd::Stdout)
    }

    pub fn stderr(&self) -> Vec<u8> {
        self.bytes(proto::Fd::Stderr)
    }
}

/// Reads one event; panics on a transport or status error.
async fn next_event(stream: &mut Streaming<proto::StreamEvent>) -> Option<Event> {
    match stream.message().await {
        Ok(Some(proto::StreamEvent { event: Some(e) })) => Some(e),
        Ok(Some(proto::StreamEvent { event: None })) => panic!("stream event without content"),
        Ok(None) => None,
        Err(status) => panic!("stream failed: {status:?}"),
    }
}

/// Reads a Stream call to its end. Panics if it ends without a final status or
/// sends anything after it.
pub async fn follow_stream(mut stream: Streaming<proto::StreamEvent>) -> Followed {
    let mut chunks = Vec::new();
    loop {
        match next_event(&mut stream).await {
            Some(Event::Chunk(c)) => {
                let fd = check_chunk(&c);
                chunks.push((fd, c.data));
            }
            Some(Event::FinalStatus(status)) => {
                assert!(
                    next_event(&mut stream).await.is_none(),
                    "a message after the final status"
                );
                return Followed { chunks, status };
            }
            None => panic!("stream ended without a final status"),
        }
    }
}

/// Opens a Stream call on job `id` and reads it to the end, within
/// [`STREAM_DEADLINE`].
pub async fn follow(client: &Client, id: &str) -> Followed {
    tokio::time::timeout(STREAM_DEADLINE, async {
        let stream = client.stream(id).await.expect("open stream");
        follow_stream(stream).await
    })
    .await
    .expect("the stream did not end within the deadline")
}

/// (stdout, stderr, final status) of a stream read to the end.
pub async fn follow_to_end(
    stream: Streaming<proto::StreamEvent>,
) -> (Vec<u8>, Vec<u8>, proto::JobStatus) {
    let f = follow_stream(stream).await;
    (f.stdout(), f.stderr(), f.status)
}

/// Waits for job `id` to be final (by following it) and returns its final status.
pub async fn wait_final(client: &Client, id: &str) -> proto::JobStatus {
    follow(client, id).await.status
}

/// Reads an Output call to its end: `(fd, bytes)` in order.
pub async fn output_chunks(client: &Client, id: &str) -> Vec<(proto::Fd, Vec<u8>)> {
    tokio::time::timeout(STREAM_DEADLINE, async {
        let mut stream = client.output(id).await.expect("open output");
        let mut chunks = Vec::new();
        while let Some(c) = stream.message().await.expect("output stream failed") {
            let fd = check_chunk(&c);
            chunks.push((fd, c.data));
        }
        chunks
    })
    .await
    .expect("the output stream did not end within the deadline")
}

/// (stdout, stderr) of an Output call.
pub async fn collect_output(client: &Client, id: &str) -> (Vec<u8>, Vec<u8>) {
    let chunks = output_chunks(client, id).await;
    let mut out = Vec::new();
    let mut err = Vec::new();
    for (fd, data) in chunks {
        match fd {
            proto::Fd::Stdout => out.extend(data),
            _ => err.extend(data),
        }
    }
    (out, err)
}

/// Length and SHA-256 of a stream's stdout, without keeping the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Digested {
    pub stdout_len: u64,
    pub stdout_sha256: [u8; 32],
    pub stderr_len: u64,
}

/// Reads a Stream call to its end, hashing stdout.
pub async fn follow_digest(
    mut stream: Streaming<proto::StreamEvent>,
) -> (Digested, proto::JobStatus) {
    let mut sha = Sha256::new();
    let mut len = 0u64;
    let mut stderr_len = 0u64;
    loop {
        match next_event(&mut stream).await {
            Some(Event::Chunk(c)) => match check_chunk(&c) {
                proto::Fd::Stdout => {
                    len += c.data.len() as u64;
                    sha.update(&c.data);
                }
                _ => stderr_len += c.data.len() as u64,
            },
            Some(Event::FinalStatus(status)) => {
                assert!(
                    next_event(&mut stream).await.is_none(),
                    "a message after the final status"
                );
                let d = Digested {
                    stdout_len: len,
                    stdout_sha256: sha.finalize().into(),
                    stderr_len,
                };
                return (d, status);
            }
            None => panic!("stream ended without a final status"),
        }
    }
}

/// Reads an Output call to its end, hashing stdout.
pub async fn output_digest(client: &Client, id: &str) -> Digested {
    let mut stream = client.output(id).await.expect("open output");
    let mut sha = Sha256::new();
    let mut len = 0u64;
    let mut stderr_len = 0u64;
    while let Some(c) = stream.message().await.expect("output stream failed") {
        match check_chunk(&c) {
            proto::Fd::Stdout => {
                len += c.data.len() as u64;
                sha.update(&c.data);
            }
            _ => stderr_len += c.data.len() as u64,
        }
    }
    Digested {
        stdout_len: len,
        stdout_sha256: sha.finalize().into(),
        stderr_len,
    }
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Reads `stream` until its stdout so far contains `lines` newline characters,
/// and returns that stdout. Panics if the stream ends first or the deadline passes.
pub async fn read_lines(stream: &mut Streaming<proto::StreamEvent>, lines: usize) -> Vec<u8> {
    tokio::time::timeout(STREAM_DEADLINE, async {
        let mut out = Vec::new();
        while out.iter().filter(|b| **b == b'\n').count() < lines {
            match next_event(stream).await {
                Some(Event::Chunk(c)) => {
                    if check_chunk(&c) == proto::Fd::Stdout {
                        out.extend(c.data);
                    }
                }
                Some(Event::FinalStatus(s)) => {
                    panic!("job ended before printing {lines} lines: {out:?}, {s:?}")
                }
                None => panic!("stream ended before {lines} lines"),
            }
        }
        out
    })
    .await
    .expect("the lines did not arrive within the deadline")
}

/// Starts `sh -c 'echo $$; SCRIPT'`, follows it, and returns the job's
/// status, its stream (past the pid line) and its main process held by a
/// pidfd (opened while the process was seen in the job's cgroup, so the
/// handle names the job's process and no other). SCRIPT must not print at
/// once (its output could arrive in the same chunk as the pid).
pub async fn start_with_pid(
    client: &Client,
    script: &str,
) -> (proto::JobStatus, Streaming<proto::StreamEvent>, Pidfd) {
    let job = start(client, "sh", &["-c", &format!("echo $$; {script}")]).await;
    let mut stream = client.stream(&job.id).await.expect("open stream");
    let line = read_lines(&mut stream, 1).await;
    let pids = job_pids(&job.id, &line);
    assert_eq!(
        pids.len(),
        1,
        "SCRIPT printed more before the pid line was read: {line:?}"
    );
    let held = Pidfd::open(pids[0]).expect("the job's main process runs");
    // Checked again with the handle held: had the pid been reused between
    // the search and the open, the process would not be the job's. As root
    // that is its cgroup and NSpid; without containment the job's main
    // process is a child of this process (the server runs in-process).
    let job_s = if is_root() {
        host_pid(&job.id, parse_pids(&line)[0]) == Some(pids[0])
    } else {
        proc_state(pids[0]).is_some_and(|(_, ppid)| ppid == std::process::id() as i32)
    };
    assert!(
        held.alive() && job_s,
        "job {}: process {} is gone or not the job's",
        job.id,
        pids[0]
    );
    (job, stream, held)
}

/// The pids a job printed (one per line, as `$$` or `$!` print them inside
/// the job, which may be a PID namespace), as the host sees them. Each must
/// belong to a live process of job `id`.
pub fn job_pids(id: &str, text: &[u8]) -> Vec<i32> {
    parse_pids(text)
        .into_iter()
        .map(|inner| {
            host_pid(id, inner)
                .unwrap_or_else(|| panic!("no live process {inner} of job {id} on the host"))
        })
        .collect()
}

/// The host pid of the process of job `id` that is `inner` in its own PID
/// namespace: the process whose cgroup path names the job and whose
/// `NSpid` (proc(5)) ends in `inner`. Without containment, `inner` itself.
pub fn host_pid(id: &str, inner: i32) -> Option<i32> {
    if !is_root() {
        return Some(inner);
    }
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| {
            let in_job = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .is_ok_and(|c| c.contains(id));
            in_job
                && std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("NSpid:"))
                        .and_then(|l| l.split_whitespace().last()?.parse::<i32>().ok())
                        == Some(inner)
                })
        })
}

/// Host pids of every live process in job `id`'s cgroup (empty without
/// containment or once the job is gone). Zombies are dead and not counted:
/// without a PID namespace, killed orphans of a job go to PID 1, which on
/// some container hosts (this CI's among them) never reaps them.
pub fn job_processes(id: &str) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|c| c.contains(id))
                && alive(*pid)
        })
        .collect()
}

/// The decimal numbers in `text`, one per line.
pub fn parse_pids(text: &[u8]) -> Vec<i32> {
    std::str::from_utf8(text)
        .expect("pids are ASCII")
        .lines()
        .map(|l| {
            l.trim()
                .parse()
                .unwrap_or_else(|_| panic!("not a pid: {l:?}"))
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Processes

/// The state letter of process `pid` (`R`, `S`, `T`, `Z`, ...) and its parent,
/// from `/proc/PID/stat`; `None` if there is no such process.
pub fn proc_state(pid: i32) -> Option<(char, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields resume after
    // the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ');
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// True while `pid` is a live (not zombie) process. An orphaned job process
/// that was killed may linger as a zombie of PID 1 on hosts whose init does
/// not reap; it is dead all the same.
pub fn alive(pid: i32) -> bool {
    matches!(proc_state(pid), Some((s, _)) if s != 'Z' && s != 'X')
}

/// Waits (up to 2 s) until `pid` is dead. SIGKILL takes effect when the
/// target next runs, so a process killed a moment ago may still show as
/// running; two seconds is far beyond that and far below any job's lifetime.
pub async fn dies(pid: i32) -> bool {
    eventually(Duration::from_secs(2), || !alive(pid)).await
}

/// Zombie children of this process (the server runs in-process, so the jobs'
/// main processes are our children).
pub fn our_zombies() -> Vec<i32> {
    let me = std::process::id() as i32;
    std::fs::read_dir("/proc")
        .expect("list /proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| matches!(proc_state(*pid), Some(('Z', ppid)) if ppid == me))
        .collect()
}

/// Number of open descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("list /proc/self/fd")
        .count()
}

/// Polls `cond` every 20 ms until it holds or `deadline` passes; returns
/// whether it held. For conditions with no event to wait on (`/proc` state).
pub async fn eventually(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// As [`eventually`], for a condition only a call to the server can observe
/// (e.g. a removal by retention, which no event announces): awaits `cond`
/// every 20 ms until it holds or `deadline` passes; returns whether it held.
pub async fn eventually_async<F, Fut>(deadline: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if cond().await {
            return true;
        }
        if tokio::time::Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `n` bytes from the kernel's random generator.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut f = std::fs::File::open("/dev/urandom").expect("open /dev/urandom");
    let mut buf = vec![0u8; n];
    std::io::Read::read_exact(&mut f, &mut buf).expect("read /dev/urandom");
    buf
}

/// A scratch directory for one test whose files jobs can read: as root (jobs
/// run as uids of their own with private `/tmp`, `/var/tmp` and `/dev/shm`) a
/// world-readable directory under `/var/lib/jobs-test-scratch`; otherwise
/// under Cargo's target tmp dir. Files written into it with `std::fs::write`
/// are world-readable (umask 022).
pub fn scratch() -> TempDir {
    use std::os::unix::fs::PermissionsExt;
    let base = if is_root() {
        let base = PathBuf::from("/var/lib/jobs-test-scratch");
        std::fs::create_dir_all(&base).expect("create the scratch base");
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755))
            .expect("chmod the scratch base");
        base
    } else {
        PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
    };
    let dir = tempfile::Builder::new()
        .prefix("jobs-test-")
        .tempdir_in(base)
        .expect("scratch dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod scratch dir");
    dir
}

/// Creates the trigger file `name` in `dir`, which a job's script waits for.
pub fn trigger(dir: &Path, name: &str) {
    std::fs::write(dir.join(name), b"").unwrap();
}

/// Shell that waits for the trigger file `name` in `dir` (the job polls; the
/// test never sleeps).
pub fn wait_for(dir: &Path, name: &str) -> String {
    format!(
        "while [ ! -e {}/{name} ]; do sleep 0.01; done",
        dir.display()
    )
}

/// The gRPC code of a client error; panics if it is not an RPC error.
pub fn code(e: &ClientError) -> tonic::Code {
    e.code()
        .unwrap_or_else(|| panic!("expected an RPC error, got {e:?}"))
}

/// The server's message of an RPC error.
pub fn message(e: &ClientError) -> String {
    match e {
        ClientError::Rpc(s) => s.message().to_owned(),
        other => panic!("expected an RPC error, got {other:?}"),
    }
}

/// Calls stop, status, output and stream with `id` and returns each call's
/// error, named; panics if any of them succeeds.
pub async fn every_job_call(client: &Client, id: &str) -> Vec<(&'static str, ClientError)> {
    let mut errors = Vec::new();
    match client.stop(id).await {
        Ok(s) => panic!("stop({id}) succeeded: {s:?}"),
        Err(e) => errors.push(("stop", e)),
    }
    match client.status(id).await {
        Ok(s) => panic!("status({id}) succeeded: {s:?}"),
        Err(e) => errors.push(("status", e)),
    }
    match client.output(id).await {
        Ok(_) => panic!("output({id}) opened"),
        Err(e) => errors.push(("output", e)),
    }
    match client.stream(id).await {
        Ok(_) => panic!("stream({id}) opened"),
        Err(e) => errors.push(("stream", e)),
    }
    errors
}

/// The ids of `client`'s own jobs, oldest first.
pub async fn listed_ids(client: &Client) -> Vec<String> {
    client
        .list(false)
        .await
        .expect("list")
        .into_iter()
        .map(|s| s.id)
        .collect()
}

/// A process held by a pidfd (pidfd_open(2)): a handle that names one
/// process for as long as it is held, so that checking or signalling it can
/// never reach another process that reused the pid.
pub struct Pidfd {
    fd: std::os::fd::OwnedFd,
    pid: i32,
}

impl Pidfd {
    /// Opens a pidfd for `pid`; `None` if no such process runs.
    pub fn open(pid: i32) -> Option<Self> {
        use std::os::fd::FromRawFd;
        // SAFETY: pidfd_open takes a pid and flags and touches no memory.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return None;
        }
        // SAFETY: the kernel just returned this descriptor; nothing else
        // owns it.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
        Some(Self { fd, pid })
    }

    /// The pid it was opened for (to read `/proc`; signal through the
    /// handle).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Waits (up to 2 s, as [`dies`]) until the process has exited.
    pub async fn dies(&self) -> bool {
        eventually(Duration::from_secs(2), || !self.alive()).await
    }

    /// True while the process has not exited (the pidfd is not readable).
    pub fn alive(&self) -> bool {
        use std::os::fd::AsRawFd;
        let mut poll = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll reads and writes the one pollfd we pass, which lives
        // across the call; a timeout of 0 never blocks.
        let n = unsafe { libc::poll(&mut poll, 1, 0) };
        n == 0
    }

    /// Sends SIGKILL to the process (pidfd_send_signal(2)); nothing if it has
    /// exited.
    pub fn kill(&self) {
        let _ = self.signal(libc::SIGKILL);
    }

    /// Sends `signal` to the process (pidfd_send_signal(2)); an error (ESRCH)
    /// once it has exited.
    pub fn signal(&self, signal: i32) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: pidfd_send_signal with a null siginfo reads no memory.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// This process's own cgroup directory in every mounted hierarchy (v1
/// controllers, `name=` hierarchies, cgroup2), from `/proc/self/mountinfo`
/// and `/proc/self/cgroup`: where a daemon started by the tests (in-process
/// or a child, which inherits it) makes its subtree. On pure v2 a daemon may
/// have moved this process into its `jobsd-daemon` leaf; the subtree is then
/// beside it, so the leaf's parent is given.
pub fn own_cgroup_dirs() -> Vec<PathBuf> {
    let membership = std::fs::read_to_string("/proc/self/cgroup").expect("read /proc/self/cgroup");
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    let mut dirs = Vec::new();
    for line in mountinfo.lines() {
        let Some((before, after)) = line.split_once(" - ") else {
            continue;
        };
        let mount_point = before.split(' ').nth(4).unwrap_or_default();
        let mut after = after.split(' ');
        let (fstype, options) = (after.next(), after.nth(1).unwrap_or_default());
        // The controllers (or `name=`) the hierarchy has, as /proc/self/cgroup
        // lists them: "" for cgroup2.
        let wanted: Vec<&str> = match fstype {
            Some("cgroup2") => Vec::new(),
            Some("cgroup") => options
                .split(',')
                .filter(|o| !matches!(*o, "rw" | "ro") && !o.contains("clone_children"))
                .filter(|o| !o.starts_with("release_agent") && *o != "noprefix" && *o != "xattr")
                .collect(),
            _ => continue,
        };
        let path = membership.lines().find_map(|m| {
            let mut f = m.splitn(3, ':');
            let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
            let mut have: Vec<&str> = controllers.split(',').filter(|c| !c.is_empty()).collect();
            let mut want = wanted.clone();
            have.sort_unstable();
            want.sort_unstable();
            (have == want).then_some(path)
        });
        let Some(path) = path else { continue };
        let mut dir = Path::new(mount_point).join(path.trim_start_matches('/'));
        if dir.file_name().is_some_and(|n| n == "jobsd-daemon") {
            dir.pop();
        }
        dirs.push(dir);
    }
    assert!(!dirs.is_empty(), "no cgroup hierarchy is mounted");
    dirs
}

/// Every directory named `name` (a job id or a daemon's subtree name) under
/// this process's own cgroups ([`own_cgroup_dirs`]), at any depth: where a
/// daemon the tests started keeps its groups, on v1, hybrid and pure v2.
pub fn cgroup_dirs_named(name: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, name: &str, found: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let path = e.path();
            if e.file_name() == name {
                found.push(path.clone());
            }
            walk(&path, name, found);
        }
    }
    let mut found = Vec::new();
    for dir in own_cgroup_dirs() {
        walk(&dir, name, &mut found);
    }
    found.sort();
    found.dedup();
    found
}

/// A tmpfs of `size` (e.g. `"4m"`) mounted at `at` (made if missing) for one
/// test; unmounted when dropped (even if the test panics), which then
/// removes `cleanup` if given (the directory it was mounted in, whose owner
/// may have tried to remove it while the mount still covered it).
pub struct Tmpfs {
    at: PathBuf,
    cleanup: Option<PathBuf>,
}

impl Tmpfs {
    /// Mounts it (root only).
    pub fn mount(at: &Path, size: &str, cleanup: Option<&Path>) -> Self {
        use nix::mount::{MsFlags, mount};
        if !at.exists() {
            std::fs::create_dir(at).expect("create the mount point");
        }
        let data = format!("size={size},mode=0700");
        mount(
            Some("tmpfs"),
            at,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(data.as_str()),
        )
        .expect("mount a tmpfs");
        Self {
            at: at.to_owned(),
            cleanup: cleanup.map(Path::to_owned),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.at, nix::mount::MntFlags::MNT_DETACH);
        if let Some(dir) = &self.cleanup {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

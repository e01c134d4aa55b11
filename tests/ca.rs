//! The certificate authority: what `jobs::ca` puts in certificates, and what
//! the `jobs-ca` binary writes, refuses and prints.
//!
//! RSA-4096 key generation costs about a second, so the library tests share one
//! CA, one server and one client certificate, and the binary's whole flow runs
//! once, in one test.

use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::LazyLock;

use jobs::auth::Identity;
use jobs::ca::request::{CertRequest, RequestError, make_request};
use jobs::ca::{
    BACKDATE, CaError, CertAuthority, IssuedCert, MAX_DAYS, San, Validity, default_server_sans,
    init_dir,
};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256, PublicKeyData, RsaKeySize,
    SanType, SignatureAlgorithm, SigningKey,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{
    GeneralName, ParsedExtension, X509Certificate, X509Version, parse_x509_certificate,
};
use x509_parser::public_key::PublicKey;

const JOBS_CA: &str = env!("CARGO_BIN_EXE_jobs-ca");

/// Something issued, with the clock read just before and just after.
struct Timed<T> {
    before: OffsetDateTime,
    value: T,
    after: OffsetDateTime,
}

fn timed<T>(f: impl FnOnce() -> T) -> Timed<T> {
    let before = OffsetDateTime::now_utc();
    let value = f();
    let after = OffsetDateTime::now_utc();
    Timed {
        before,
        value,
        after,
    }
}

static CA: LazyLock<Timed<CertAuthority>> =
    LazyLock::new(|| timed(|| CertAuthority::generate(Validity::days(3650).unwrap()).unwrap()));

const SERVER_DAYS: u32 = 30;
static SERVER: LazyLock<Timed<IssuedCert>> = LazyLock::new(|| {
    let sans: Vec<San> = ["jobs.example.com", "10.1.2.3", "fd00::7"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let ca = &CA.value;
    timed(|| {
        ca.issue_server(&sans, Validity::days(SERVER_DAYS).unwrap())
            .unwrap()
    })
});

const CLIENT_DAYS: u32 = 7;
static CLIENT: LazyLock<Timed<IssuedCert>> = LazyLock::new(|| {
    let ca = &CA.value;
    timed(|| {
        ca.issue_client("alice", Validity::days(CLIENT_DAYS).unwrap())
            .unwrap()
    })
});

// ---------------------------------------------------------------------------
// Helpers that read certificates with x509-parser.

fn parse(der: &[u8]) -> X509Certificate<'_> {
    let (rest, cert) = parse_x509_certificate(der).expect("valid X.509");
    assert!(rest.is_empty(), "trailing bytes after the certificate");
    cert
}

fn der_of_pem_file(path: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_vec()
}

fn common_name(cert: &X509Certificate<'_>) -> String {
    let mut cns = cert.subject().iter_common_name();
    let cn = cns.next().expect("a CN").as_str().unwrap().to_owned();
    assert!(cns.next().is_none(), "more than one CN");
    cn
}

fn rsa_modulus_bits(cert: &X509Certificate<'_>) -> usize {
    match cert.public_key().parsed().expect("SPKI parses") {
        PublicKey::RSA(rsa) => {
            let m: Vec<u8> = rsa
                .modulus
                .iter()
                .copied()
                .skip_while(|&b| b == 0)
                .collect();
            m.len() * 8 - m[0].leading_zeros() as usize
        }
        other => panic!("not an RSA key: {other:?}"),
    }
}

/// (critical, cA, pathLenConstraint)
fn basic_constraints(cert: &X509Certificate<'_>) -> (bool, bool, Option<u32>) {
    let bc = cert
        .basic_constraints()
        .unwrap()
        .expect("basicConstraints present");
    (bc.critical, bc.value.ca, bc.value.path_len_constraint)
}

/// (critical, flags) with x509-parser's bit order: digitalSignature = 1,
/// keyEncipherment = 4, keyCertSign = 32, cRLSign = 64.
fn key_usage(cert: &X509Certificate<'_>) -> (bool, u16) {
    let ku = cert.key_usage().unwrap().expect("keyUsage present");
    (ku.critical, ku.value.flags)
}

/// The extended key usages, by name.
fn eku(cert: &X509Certificate<'_>) -> Vec<&'static str> {
    let Some(ext) = cert.extended_key_usage().unwrap() else {
        return vec![];
    };
    let e = ext.value;
    assert!(e.other.is_empty(), "unexpected EKU OIDs: {:?}", e.other);
    [
        (e.any, "any"),
        (e.server_auth, "serverAuth"),
        (e.client_auth, "clientAuth"),
        (e.code_signing, "codeSigning"),
        (e.email_protection, "emailProtection"),
        (e.time_stamping, "timeStamping"),
        (e.ocsp_signing, "ocspSigning"),
    ]
    .into_iter()
    .filter_map(|(set, name)| set.then_some(name))
    .collect()
}

fn sans(cert: &X509Certificate<'_>) -> Vec<String> {
    let Some(ext) = cert.subject_alternative_name().unwrap() else {
        return vec![];
    };
    ext.value
        .general_names
        .iter()
        .map(|name| match name {
            GeneralName::DNSName(dns) => format!("DNS:{dns}"),
            GeneralName::IPAddress(bytes) => {
                let ip = match bytes.len() {
                    4 => IpAddr::from(<[u8; 4]>::try_from(*bytes).unwrap()),
                    16 => IpAddr::from(<[u8; 16]>::try_from(*bytes).unwrap()),
                    n => panic!("IP SAN of {n} bytes"),
                };
                format!("IP:{ip}")
            }
            other => panic!("unexpected SAN {other:?}"),
        })
        .collect()
}

fn subject_key_id(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
            _ => None,
        })
}

fn authority_key_id(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|id| id.0.to_vec())
            }
            _ => None,
        })
}

/// Serials are 16 random octets, positive and minimally encoded.
fn assert_serial_shape(cert: &X509Certificate<'_>) {
    let serial = cert.raw_serial();
    assert_eq!(serial.len(), 16, "serial {serial:02x?}");
    assert!(
        (0x01..=0x7f).contains(&serial[0]),
        "first serial octet {:#04x}",
        serial[0]
    );
}

fn assert_all_distinct(serials: &[Vec<u8>]) {
    for (i, a) in serials.iter().enumerate() {
        for b in &serials[i + 1..] {
            assert_ne!(a, b, "two certificates share a serial");
        }
    }
}

fn whole_second(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(0).unwrap()
}

/// notBefore is "now - 1 h" for some "now" between `before` and `after`, and
/// the certificate lasts exactly `days` days plus that hour.
fn assert_validity(
    cert: &X509Certificate<'_>,
    before: OffsetDateTime,
    after: OffsetDateTime,
    days: u32,
) {
    let not_before = cert.validity().not_before.to_datetime();
    let not_after = cert.validity().not_after.to_datetime();
    assert!(
        whole_second(before) - BACKDATE <= not_before && not_before <= after - BACKDATE,
        "notBefore {not_before} is not 1 h before the issuing time ({before}..{after})"
    );
    assert_eq!(
        not_after - not_before,
        Duration::days(i64::from(days)) + Duration::hours(1)
    );
}

// ---------------------------------------------------------------------------
// Library API.

#[test]
fn ca_certificate_is_a_v3_rsa4096_ca_that_signs_only_leaves() {
    // Scenario: the trust anchor must be a real CA cert, and must not be able to mint sub-CAs.
    let ca = &CA.value;
    let cert = parse(ca.cert_der());
    assert_eq!(cert.version(), X509Version::V3);
    // "jobs CA " + the first 12 hex digits of its own fingerprint.
    assert_eq!(
        common_name(&cert),
        format!("jobs CA {}", &ca.identity().to_string()[7..19])
    );
    assert_eq!(
        cert.subject().as_raw(),
        cert.issuer().as_raw(),
        "self-signed"
    );
    assert_eq!(rsa_modulus_bits(&cert), 4096);
    assert_eq!(basic_constraints(&cert), (true, true, Some(0)));
    assert_eq!(key_usage(&cert), (true, 32 | 64));
    assert_eq!(eku(&cert), Vec::<&str>::new());
    assert_eq!(subject_key_id(&cert).map(|id| id.len()), Some(20));
    assert_serial_shape(&cert);
    cert.verify_signature(None)
        .expect("self-signature verifies");
    assert_validity(&cert, CA.before, CA.after, 3650);
    assert_eq!(ca.not_after(), cert.validity().not_after.to_datetime());
    assert_eq!(
        CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap(),
        *ca.cert_der()
    );
    assert_eq!(
        ca.identity(),
        Identity::from_certificate_der(ca.cert_der()).unwrap()
    );
}

#[test]
fn server_certificate_is_server_auth_only_for_exactly_the_given_names() {
    // Scenario: a server cert must not double as a client cert, and must name what clients dial.
    let server = &SERVER.value;
    let cert = parse(&server.cert_der);
    assert_eq!(cert.version(), X509Version::V3);
    assert_eq!(common_name(&cert), "jobs server");
    assert_eq!(
        sans(&cert),
        ["DNS:jobs.example.com", "IP:10.1.2.3", "IP:fd00::7"]
    );
    assert_eq!(eku(&cert), ["serverAuth"]);
    assert_eq!(key_usage(&cert), (true, 1 | 4));
    assert_eq!(basic_constraints(&cert), (true, false, None));
    assert_eq!(rsa_modulus_bits(&cert), 4096);
    assert_serial_shape(&cert);
    assert_validity(&cert, SERVER.before, SERVER.after, SERVER_DAYS);
}

#[test]
fn client_certificate_is_client_auth_only_with_the_name_as_cn() {
    // Scenario: a user cert must not let its holder impersonate the server.
    let client = &CLIENT.value;
    let cert = parse(&client.cert_der);
    assert_eq!(cert.version(), X509Version::V3);
    assert_eq!(common_name(&cert), "alice");
    assert_eq!(sans(&cert), Vec::<String>::new());
    assert_eq!(eku(&cert), ["clientAuth"]);
    assert_eq!(key_usage(&cert), (true, 1));
    assert_eq!(basic_constraints(&cert), (true, false, None));
    assert_eq!(rsa_modulus_bits(&cert), 4096);
    assert_serial_shape(&cert);
    assert_validity(&cert, CLIENT.before, CLIENT.after, CLIENT_DAYS);
}

#[test]
fn leaves_chain_to_the_ca_and_not_to_another_key() {
    // Scenario: a leaf must verify under the CA's key, name it as issuer, and fail under any other key.
    let ca = parse(CA.value.cert_der());
    for leaf in [&SERVER.value, &CLIENT.value] {
        let cert = parse(&leaf.cert_der);
        assert_eq!(cert.issuer().as_raw(), ca.subject().as_raw());
        assert_eq!(authority_key_id(&cert), subject_key_id(&ca));
        cert.verify_signature(Some(ca.public_key()))
            .expect("signed by the CA");
        assert!(
            cert.verify_signature(Some(cert.public_key())).is_err(),
            "a leaf verified under its own key"
        );
    }
}

#[test]
fn serials_are_random_positive_and_distinct() {
    // Scenario: rcgen's default serial is derived from the key; ours must be random and unique.
    let serials: Vec<Vec<u8>> = [
        CA.value.cert_der().to_vec(),
        SERVER.value.cert_der.to_vec(),
        CLIENT.value.cert_der.to_vec(),
    ]
    .iter()
    .map(|der| parse(der).raw_serial().to_vec())
    .collect();
    assert_all_distinct(&serials);
}

#[test]
fn identity_is_the_sha256_of_the_issued_keys_spki() {
    // Scenario: the identity reported at issue time must be the one the daemon computes from the cert.
    let client = &CLIENT.value;
    assert_eq!(
        client.identity,
        Identity::from_certificate_der(&client.cert_der).unwrap()
    );
    let key = KeyPair::from_pem(client.key_pem.as_str()).unwrap();
    assert_eq!(
        client.identity,
        Identity::from_spki_der(&key.subject_public_key_info())
    );
    assert_eq!(
        key.serialize_der(),
        client.key_pem.to_der().secret_der().to_vec()
    );
    assert_eq!(
        CertificateDer::from_pem_slice(client.cert_pem.as_bytes()).unwrap(),
        client.cert_der
    );
    assert_ne!(client.identity, SERVER.value.identity);
}

#[test]
fn debug_output_never_shows_a_private_key() {
    // Scenario: a stray `{:?}` in a log line must not leak key material.
    let client = &CLIENT.value;
    let key_body: String = client
        .key_pem
        .as_str()
        .lines()
        .nth(1)
        .expect("a base64 line")
        .to_owned();
    for debug in [
        format!("{:?}", CA.value),
        format!("{client:?}"),
        format!("{:?}", client.key_pem),
    ] {
        assert!(!debug.contains("PRIVATE KEY"), "{debug}");
        assert!(!debug.contains(&key_body), "{debug}");
        assert!(debug.contains("[redacted]"), "{debug}");
    }
}

#[test]
fn bad_requests_are_refused_before_any_key_is_made() {
    // Scenario: invalid names, no SANs and impossible dates are refused with a specific error.
    let ca = &CA.value;
    let week = Validity::days(7).unwrap();
    for name in [
        "",
        "ca",
        "server",
        "../x",
        ".hidden",
        "-rf",
        "a b",
        &"n".repeat(65),
    ] {
        assert!(
            matches!(ca.issue_client(name, week), Err(CaError::InvalidClientName { name: ref n, .. }) if n == name),
            "{name:?} was not refused as a client name"
        );
    }
    assert!(matches!(ca.issue_server(&[], week), Err(CaError::NoSans)));
    assert!(matches!(
        ca.issue_server(&[San::Dns("bad name".into())], week),
        Err(CaError::InvalidSan { name }) if name == "bad name"
    ));

    let past_ca = Validity {
        not_before: week.not_before,
        not_after: ca.not_after() + Duration::seconds(1),
    };
    assert!(matches!(
        ca.issue_client("alice", past_ca),
        Err(CaError::OutlivesCa { not_after, ca_not_after })
            if not_after == past_ca.not_after && ca_not_after == ca.not_after()
    ));
    let reversed = Validity {
        not_before: week.not_after,
        not_after: week.not_before,
    };
    assert!(matches!(
        ca.issue_client("alice", reversed),
        Err(CaError::EmptyValidity { .. })
    ));
    for days in [0, MAX_DAYS + 1] {
        assert!(matches!(
            Validity::days(days),
            Err(CaError::InvalidDays { days: d, max: 3650 }) if d == days
        ));
    }
}

#[test]
fn default_server_names_are_the_loopback_ones() {
    assert_eq!(
        default_server_sans(),
        [
            San::Dns("localhost".into()),
            San::Ip("127.0.0.1".parse().unwrap()),
            San::Ip("::1".parse().unwrap()),
        ]
    );
}

#[test]
fn load_refuses_a_key_that_is_not_the_cas_and_a_cert_that_is_not_a_ca() {
    // Scenario: a mixed-up CA directory must be refused, not used to sign unverifiable leaves.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let write = |name: &str, contents: &str| fs::write(dir.join(name), contents).unwrap();

    write("ca.crt", CA.value.cert_pem());
    write("ca.key", CLIENT.value.key_pem.as_str());
    match CertAuthority::load(dir) {
        Err(CaError::KeyMismatch { cert, key }) => {
            assert_eq!((cert, key), (dir.join("ca.crt"), dir.join("ca.key")));
        }
        other => panic!("expected KeyMismatch, got {other:?}"),
    }

    write("ca.crt", &SERVER.value.cert_pem);
    write("ca.key", SERVER.value.key_pem.as_str());
    assert!(
        matches!(CertAuthority::load(dir), Err(CaError::NotACa { path }) if path == dir.join("ca.crt"))
    );

    write("ca.crt", "not a certificate\n");
    assert!(
        matches!(CertAuthority::load(dir), Err(CaError::BadPem { path, .. }) if path == dir.join("ca.crt"))
    );
}

#[test]
fn init_refuses_a_directory_that_already_has_a_ca_certificate() {
    // Scenario: a half-present CA (ca.crt without ca.key) is not silently replaced.
    let tmp = tempfile::tempdir().unwrap();
    let crt = tmp.path().join("ca.crt");
    fs::write(&crt, "precious").unwrap();
    match init_dir(tmp.path(), Validity::days(1).unwrap()) {
        Err(CaError::AlreadyExists { path }) => assert_eq!(path, crt),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert_eq!(fs::read_to_string(&crt).unwrap(), "precious");
    assert!(!tmp.path().join("ca.key").exists());
}

// ---------------------------------------------------------------------------
// The `jobs-ca` binary.

fn jobs_ca(cwd: &Path, args: &[&str]) -> Output {
    Command::new(JOBS_CA)
        .args(args)
        .current_dir(cwd)
        .env_clear()
        .output()
        .expect("run jobs-ca")
}

fn stdout(out: &Output) -> &str {
    std::str::from_utf8(&out.stdout).unwrap()
}

fn stderr(out: &Output) -> &str {
    std::str::from_utf8(&out.stderr).unwrap()
}

/// Runs `jobs-ca` expecting success; returns stdout and the clock around the run.
fn ok(cwd: &Path, args: &[&str]) -> Timed<String> {
    let out = timed(|| jobs_ca(cwd, args));
    assert_eq!(
        out.value.status.code(),
        Some(0),
        "jobs-ca {args:?} failed: {}",
        stderr(&out.value)
    );
    Timed {
        before: out.before,
        value: stdout(&out.value).to_owned(),
        after: out.after,
    }
}

/// Runs `jobs-ca` expecting exit status 1 and `message` on stderr.
fn refused(cwd: &Path, args: &[&str], message: &str) {
    let out = jobs_ca(cwd, args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "jobs-ca {args:?}: stderr {}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains(message),
        "jobs-ca {args:?}: stderr {:?} lacks {message:?}",
        stderr(&out)
    );
    assert_eq!(stdout(&out), "", "jobs-ca {args:?} printed on stdout");
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn listing(dir: &Path) -> Vec<PathBuf> {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    entries
}

/// `openssl x509 -pubkey -noout | openssl pkey -pubin -outform der | sha256sum`,
/// as `sha256:<hex>`; `None` if openssl is not installed.
fn openssl_fingerprint(cert: &Path) -> Option<String> {
    let found = Command::new("openssl").arg("version").output();
    if !found.is_ok_and(|out| out.status.success()) {
        return None;
    }
    let out = Command::new("sh")
        .args([
            "-c",
            r#"openssl x509 -pubkey -noout -in "$1" | openssl pkey -pubin -outform der | sha256sum"#,
            "sh",
        ])
        .arg(cert)
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl pipeline failed");
    let hex = stdout(&out).split_whitespace().next().unwrap().to_owned();
    Some(format!("sha256:{hex}"))
}

#[test]
fn cli_init_server_clients_fingerprint_flow() {
    // Scenario: an operator makes a CA, the server cert and two users, and checks a fingerprint.
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let dir = cwd.join("site/pki");
    let d = dir.to_str().unwrap();
    let file = |name: &str| dir.join(name);

    // init: a missing directory is created 0700; cert 0644, key 0600; CA fingerprint on stdout.
    let init = ok(cwd, &["init", "--dir", d]);
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&file("ca.crt")), 0o644);
    assert_eq!(mode(&file("ca.key")), 0o600);
    let ca_der = der_of_pem_file(&file("ca.crt"));
    let ca = parse(&ca_der);
    assert_eq!(
        init.value,
        format!("{}\n", Identity::from_certificate_der(&ca_der).unwrap())
    );
    assert_eq!(basic_constraints(&ca), (true, true, Some(0)));
    assert_validity(&ca, init.before, init.after, 3650);

    // Scenario: a second init must not overwrite the CA key.
    let ca_key_before = fs::read(file("ca.key")).unwrap();
    let ca_crt_before = fs::read(file("ca.crt")).unwrap();
    refused(
        cwd,
        &["init", "--dir", d],
        &format!(
            "{} already exists; refusing to overwrite it",
            file("ca.crt").display()
        ),
    );
    assert_eq!(fs::read(file("ca.key")).unwrap(), ca_key_before);
    assert_eq!(fs::read(file("ca.crt")).unwrap(), ca_crt_before);

    // server: no --san gives the loopback names; --days bounds the validity.
    let server_out = ok(cwd, &["server", "--dir", d, "--days", "30"]);
    assert_eq!(mode(&file("server.crt")), 0o644);
    assert_eq!(mode(&file("server.key")), 0o600);
    let server_der = der_of_pem_file(&file("server.crt"));
    let server = parse(&server_der);
    assert_eq!(
        server_out.value,
        format!("{}\n", Identity::from_certificate_der(&server_der).unwrap())
    );
    assert_eq!(sans(&server), ["DNS:localhost", "IP:127.0.0.1", "IP:::1"]);
    assert_eq!(eku(&server), ["serverAuth"]);
    assert_eq!(basic_constraints(&server), (true, false, None));
    assert_eq!(key_usage(&server), (true, 1 | 4));
    assert_eq!(authority_key_id(&server), subject_key_id(&ca));
    server
        .verify_signature(Some(ca.public_key()))
        .expect("server.crt is signed by ca.crt");
    assert_validity(&server, server_out.before, server_out.after, 30);
    refused(
        cwd,
        &["server", "--dir", d],
        &format!(
            "{} already exists; refusing to overwrite it",
            file("server.key").display()
        ),
    );

    // client alice: the fingerprint alone on stdout, equal to `fingerprint` and to openssl's.
    let alice_out = ok(cwd, &["client", "alice", "--dir", d, "--days", "7"]);
    let alice_id = alice_out.value.strip_suffix('\n').expect("one line");
    assert!(!alice_id.contains('\n'), "more than one line: {alice_id:?}");
    assert_eq!(alice_id.len(), "sha256:".len() + 64);
    assert!(alice_id.parse::<Identity>().is_ok(), "{alice_id}");
    let alice_crt = file("alice.crt");
    let alice_crt_arg = alice_crt.to_str().unwrap();
    assert_eq!(
        ok(cwd, &["fingerprint", alice_crt_arg]).value,
        alice_out.value
    );
    match openssl_fingerprint(&alice_crt) {
        Some(openssl) => assert_eq!(openssl, alice_id),
        None => {
            // .ci/run installs openssl and sets JOBS_NO_SKIPS.
            assert!(
                std::env::var_os("JOBS_NO_SKIPS").is_none(),
                "`openssl` is not on PATH and JOBS_NO_SKIPS forbids skipping the comparison"
            );
            eprintln!("skipping the openssl comparison: `openssl` is not on PATH");
        }
    }
    assert_eq!(mode(&alice_crt), 0o644);
    assert_eq!(mode(&file("alice.key")), 0o600);
    let alice_der = der_of_pem_file(&alice_crt);
    let alice = parse(&alice_der);
    assert_eq!(common_name(&alice), "alice");
    assert_eq!(eku(&alice), ["clientAuth"]);
    assert_eq!(key_usage(&alice), (true, 1));
    assert_eq!(basic_constraints(&alice), (true, false, None));
    alice
        .verify_signature(Some(ca.public_key()))
        .expect("alice.crt is signed by ca.crt");
    assert_validity(&alice, alice_out.before, alice_out.after, 7);
    let alice_key = KeyPair::from_pem(&fs::read_to_string(file("alice.key")).unwrap()).unwrap();
    assert_eq!(
        alice_key.subject_public_key_info(),
        alice.public_key().raw,
        "alice.key is alice.crt's key"
    );

    // client bob: default validity 365 days, a different identity.
    let bob_out = ok(cwd, &["client", "bob", "--dir", d]);
    let bob_der = der_of_pem_file(&file("bob.crt"));
    let bob = parse(&bob_der);
    assert_ne!(bob_out.value, alice_out.value);
    assert_validity(&bob, bob_out.before, bob_out.after, 365);

    // Every key is RSA-4096; every serial 16 random positive octets, all distinct.
    for cert in [&ca, &server, &alice, &bob] {
        assert_eq!(rsa_modulus_bits(cert), 4096);
        assert_serial_shape(cert);
    }
    assert_all_distinct(&[&ca, &server, &alice, &bob].map(|c| c.raw_serial().to_vec()));

    // Scenario: bad names, bad --days and bad --san are refused and write nothing.
    let files_before = listing(&dir);
    let long = "n".repeat(65);
    let reserved = "'ca' and 'server' are reserved for the CA's and the server's own files";
    let bad_start = "must not start with '.' or '-'";
    let bad_chars = "may contain only ASCII letters, digits, '.', '_' and '-'";
    for (args, message) in [
        (
            vec!["client", "ca"],
            format!("invalid client name \"ca\": {reserved}"),
        ),
        (
            vec!["client", "Server"],
            format!("invalid client name \"Server\": {reserved}"),
        ),
        (
            vec!["client", ".hidden"],
            format!("invalid client name \".hidden\": {bad_start}"),
        ),
        (
            vec!["client", "--", "-rf"],
            format!("invalid client name \"-rf\": {bad_start}"),
        ),
        (
            vec!["client", "../evil"],
            format!("invalid client name \"../evil\": {bad_chars}"),
        ),
        (
            vec!["client", "a/b"],
            format!("invalid client name \"a/b\": {bad_chars}"),
        ),
        (
            vec!["client", long.as_str()],
            format!("invalid client name \"{long}\": must be at most 64 characters"),
        ),
        (
            vec!["client", "carol", "--days", "0"],
            "validity must be between 1 and 3650 days, got 0".to_owned(),
        ),
        (
            vec!["client", "carol", "--days", "3651"],
            "validity must be between 1 and 3650 days, got 3651".to_owned(),
        ),
        (
            vec!["server", "--san", "bad name!"],
            "invalid subject alternative name \"bad name!\"".to_owned(),
        ),
    ] {
        // --dir goes right after the subcommand: after `--` it would be a name.
        let mut args = args;
        args.splice(1..1, ["--dir", d]);
        refused(cwd, &args, &message);
    }
    assert_eq!(
        listing(&dir),
        files_before,
        "a refused command wrote a file"
    );

    let fresh = cwd.join("fresh");
    refused(
        cwd,
        &["init", "--dir", fresh.to_str().unwrap(), "--days", "0"],
        "validity must be between 1 and 3650 days, got 0",
    );
    assert!(!fresh.exists(), "init --days 0 created its directory");

    // Scenario: no CA in --dir, or no such certificate, is explained.
    refused(
        cwd,
        &["client", "dave", "--dir", fresh.to_str().unwrap()],
        &format!(
            "no CA in {}; create one with `jobs-ca init",
            fresh.display()
        ),
    );
    assert!(!fresh.exists());
    refused(
        cwd,
        &["fingerprint", "missing.crt"],
        "cannot read missing.crt",
    );
}

#[test]
fn cli_help_states_units_and_defaults_and_usage_errors_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    for (command, expected) in [
        (
            "init",
            &["in days", "[default: 3650]", "[default: certs]"][..],
        ),
        (
            "server",
            &[
                "in days",
                "[default: 825]",
                "[default: localhost, 127.0.0.1, ::1]",
            ][..],
        ),
        (
            "client",
            &["in days", "[default: 365]", "[default: certs]"][..],
        ),
        ("fingerprint", &["PEM certificate"][..]),
    ] {
        let help = ok(cwd, &[command, "--help"]).value;
        for text in expected {
            assert!(
                help.contains(text),
                "`{command} --help` lacks {text:?}:\n{help}"
            );
        }
    }
    for args in [
        &["client"][..],
        &["init", "--days", "ten"][..],
        &["frobnicate"][..],
    ] {
        let out = jobs_ca(cwd, args);
        assert_eq!(out.status.code(), Some(2), "jobs-ca {args:?}");
    }
    assert!(listing(cwd).is_empty(), "a usage error wrote a file");
}

// ---------------------------------------------------------------------------
// Certificate signing requests

/// A 4096-bit key made once: alice's, from [`CLIENT`].
fn alice_key() -> KeyPair {
    KeyPair::from_pem(CLIENT.value.key_pem.as_str()).unwrap()
}

fn request_der(params: &CertificateParams, key: &impl SigningKey) -> Vec<u8> {
    params.serialize_request(key).unwrap().der().to_vec()
}

fn named(cn: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params
}

/// A DER length.
fn der_len(n: usize) -> Vec<u8> {
    match n {
        0..=0x7f => vec![n as u8],
        0x80..=0xff => vec![0x81, n as u8],
        _ => vec![0x82, (n >> 8) as u8, n as u8],
    }
}

fn der_tlv(tag: u8, body: &[u8]) -> Vec<u8> {
    [vec![tag], der_len(body.len()), body.to_vec()].concat()
}

/// A public key rcgen can put in a request without holding its private half:
/// an RSA modulus of `bits` bits and exponent `e`, and a signature of junk.
struct FakeRsa {
    rsa_public_key: Vec<u8>,
}

impl FakeRsa {
    fn new(bits: usize, e: &[u8]) -> Self {
        let mut modulus = vec![0xc5; bits.div_ceil(8)];
        modulus[0] = 0x80 >> ((8 - bits % 8) % 8);
        // A DER INTEGER is signed: a leading zero keeps a set top bit positive.
        if modulus[0] & 0x80 != 0 {
            modulus.insert(0, 0);
        }
        let body = [der_tlv(0x02, &modulus), der_tlv(0x02, e)].concat();
        Self {
            rsa_public_key: der_tlv(0x30, &body),
        }
    }
}

impl PublicKeyData for FakeRsa {
    fn der_bytes(&self) -> &[u8] {
        &self.rsa_public_key
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_RSA_SHA256
    }
}

impl SigningKey for FakeRsa {
    fn sign(&self, _msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        Ok(vec![0x5a; 512])
    }
}

const F4: &[u8] = &[0x01, 0x00, 0x01];

#[test]
fn a_request_asking_for_a_ca_server_auth_and_names_gets_a_plain_client_leaf() {
    // Scenario: a request asks for cA:TRUE, serverAuth, extra SANs, key
    // usages and an organisation; the CA grants only a clientAuth leaf.
    let key = alice_key();
    let mut params = named("mallory");
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Evil Corp");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::CodeSigning,
    ];
    params.subject_alt_names = vec![
        SanType::DnsName("evil.example".try_into().unwrap()),
        SanType::IpAddress("10.0.0.1".parse().unwrap()),
    ];
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let request = CertRequest::from_der(&request_der(&params, &key)).unwrap();
    assert_eq!(request.common_name(), Some("mallory"));
    assert_eq!(request.key_bits(), 4096);
    assert_eq!(request.identity(), CLIENT.value.identity);
    assert_eq!(
        request.ignored(),
        [
            "subject O=Evil Corp",
            "keyUsage Key Cert Sign",
            "subjectAltName DNS:evil.example",
            "subjectAltName IP:10.0.0.1",
            "extendedKeyUsage serverAuth",
            "extendedKeyUsage codeSigning",
            "basicConstraints CA:TRUE",
        ]
    );

    let week = Validity::days(7).unwrap();
    let signed = CA.value.sign_request(&request, "mallory", week).unwrap();
    let leaf = parse(&signed.cert_der);
    assert_eq!(leaf.subject().to_string(), "CN=mallory");
    assert_eq!(eku(&leaf), ["clientAuth"]);
    assert_eq!(basic_constraints(&leaf), (true, false, None));
    assert_eq!(key_usage(&leaf), (true, 1));
    assert!(sans(&leaf).is_empty(), "{:?}", sans(&leaf));
    assert_eq!(leaf.public_key().raw, key.subject_public_key_info());
    assert_eq!(signed.identity, request.identity());
    assert_eq!(
        Identity::from_certificate_der(&signed.cert_der).unwrap(),
        request.identity()
    );
    assert_serial_shape(&leaf);
    let ca = parse(CA.value.cert_der());
    leaf.verify_signature(Some(ca.public_key()))
        .expect("signed by the CA");
    assert_eq!(authority_key_id(&leaf), subject_key_id(&ca));
}

#[test]
fn requests_that_do_not_prove_a_strong_rsa_key_are_refused() {
    let key = alice_key();
    let good = request_der(&named("alice"), &key);
    assert!(CertRequest::from_der(&good).is_ok());

    // Scenario: the name was changed after signing (alice → alicf).
    let at = good
        .windows(5)
        .position(|w| w == b"alice")
        .expect("the CN in the DER");
    let mut renamed = good.clone();
    renamed[at + 4] = b'f';
    assert!(matches!(
        CertRequest::from_der(&renamed),
        Err(RequestError::BadSignature)
    ));
    // Scenario: the signature itself was damaged.
    let mut bad_signature = good.clone();
    *bad_signature.last_mut().unwrap() ^= 1;
    assert!(matches!(
        CertRequest::from_der(&bad_signature),
        Err(RequestError::BadSignature)
    ));
    // Scenario: a 2048-bit key, properly signed.
    let small = KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_2048).unwrap();
    assert!(matches!(
        CertRequest::from_der(&request_der(&named("alice"), &small)),
        Err(RequestError::KeyTooSmall { bits: 2048 })
    ));
    // Scenario: an elliptic-curve key.
    let ec = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    match CertRequest::from_der(&request_der(&named("alice"), &ec)) {
        Err(RequestError::NotRsa { algorithm }) => {
            assert!(algorithm.contains("1.2.840.10045.2.1"), "{algorithm}");
        }
        other => panic!("{other:?}"),
    }
    // Scenario: keys the server could never verify, or with a weak exponent,
    // are refused on their shape, before their (junk) signature is looked at.
    let fake = |bits, e| request_der(&named("alice"), &FakeRsa::new(bits, e));
    assert!(matches!(
        CertRequest::from_der(&fake(8200, F4)),
        Err(RequestError::KeyTooLarge { bits: 8200 })
    ));
    assert!(matches!(
        CertRequest::from_der(&fake(4095, F4)),
        Err(RequestError::KeyTooSmall { bits: 4095 })
    ));
    assert!(matches!(
        CertRequest::from_der(&fake(4096, &[0x03])),
        Err(RequestError::BadExponent)
    ));
    assert!(matches!(
        CertRequest::from_der(&fake(4096, &[0x01, 0x00, 0x00])),
        Err(RequestError::BadExponent)
    ));
    assert!(matches!(
        CertRequest::from_der(&fake(4096, F4)),
        Err(RequestError::BadSignature)
    ));
    // Scenario: bytes after the request.
    let trailing = [good.as_slice(), &[0]].concat();
    assert!(matches!(
        CertRequest::from_der(&trailing),
        Err(RequestError::Malformed(_))
    ));
    // Scenario: OpenSSL's older PEM label is read too.
    let legacy = named("alice")
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap()
        .replace("CERTIFICATE REQUEST-----", "NEW CERTIFICATE REQUEST-----");
    assert!(legacy.starts_with("-----BEGIN NEW CERTIFICATE REQUEST-----\n"));
    assert_eq!(
        CertRequest::from_pem(legacy.as_bytes()).unwrap().identity(),
        CLIENT.value.identity
    );
}

#[test]
fn a_request_is_made_for_the_given_key_and_refused_for_a_weak_one() {
    // Scenario: a renewal request keeps the key, and so the identity.
    let made = make_request("alice", Some(alice_key())).unwrap();
    assert_eq!(made.identity, CLIENT.value.identity);
    let parsed = CertRequest::from_pem(made.csr_pem.as_bytes()).unwrap();
    assert_eq!(parsed.common_name(), Some("alice"));
    assert!(parsed.ignored().is_empty(), "{:?}", parsed.ignored());
    assert!(
        format!("{made:?}").contains("[redacted]") && !format!("{made:?}").contains("PRIVATE"),
        "{made:?}"
    );
    // Scenario: a user's 2048-bit key is refused before any request is written.
    let small = KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_2048).unwrap();
    assert!(matches!(
        make_request("alice", Some(small)),
        Err(CaError::UnsuitableKey(RequestError::KeyTooSmall {
            bits: 2048
        }))
    ));
    assert!(matches!(
        make_request("../x", Some(alice_key())),
        Err(CaError::InvalidClientName { .. })
    ));
}

//! Certificate lifecycle through `jobs-ca` against a running server: a user
//! makes their own key and request, the admin signs it, the user works;
//! renewal keeps the identity and the jobs; one key never becomes two
//! identities; testers get many identities at once.
//!
//! Every test signs with the shared test CA (so the test server trusts what
//! it issues) from a private copy of its directory, so each has a record of
//! its own: tests run in parallel and compare records exactly.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use jobs::auth::Identity;
use jobs::tls::PemFiles;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use x509_parser::prelude::parse_x509_certificate;

use common::TestServer;

const JOBS_CA: &str = env!("CARGO_BIN_EXE_jobs-ca");

fn jobs_ca(args: &[&str]) -> Output {
    Command::new(JOBS_CA)
        .args(args)
        .env_clear()
        .output()
        .expect("run jobs-ca")
}

/// Runs `jobs-ca` expecting success; returns (stdout, stderr).
fn ok(args: &[&str]) -> (String, String) {
    let out = jobs_ca(args);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "jobs-ca {args:?} failed: {stderr}"
    );
    (String::from_utf8(out.stdout).unwrap(), stderr)
}

/// Runs `jobs-ca` expecting exit 1, nothing on stdout and `message` on stderr.
fn refused(args: &[&str], message: &str) {
    let out = jobs_ca(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "jobs-ca {args:?}: {stderr}");
    assert!(
        stderr.contains(message),
        "jobs-ca {args:?}: stderr {stderr:?} lacks {message:?}"
    );
    assert!(out.stdout.is_empty(), "jobs-ca {args:?} printed on stdout");
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn cert_der(path: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(path).unwrap().to_vec()
}

/// (serial hex, notAfter unix seconds, identity, EKU client_auth only, is CA)
fn shape(path: &Path) -> (String, i64, Identity, bool, bool) {
    let der = cert_der(path);
    let (_, cert) = parse_x509_certificate(&der).unwrap();
    let serial: String = cert
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    let client_only = eku.client_auth && !eku.server_auth && !eku.any && eku.other.is_empty();
    (
        serial,
        cert.validity().not_after.timestamp(),
        Identity::from_certificate_der(&der).unwrap(),
        client_only,
        cert.is_ca(),
    )
}

fn user_pem(dir: &Path, name: &str) -> PemFiles {
    PemFiles {
        ca: common::ca_cert(),
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
    }
}

/// A CA directory of this test's own: the shared test CA's certificate and
/// key, and a record holding only the CA.
fn private_ca() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    fs::create_dir(&dir).unwrap();
    for file in ["ca.crt", "ca.key"] {
        fs::copy(common::ca_dir().join(file), dir.join(file)).unwrap();
    }
    // The first run gives it a record holding the CA alone.
    let (_, said) = ok(&["list", "--dir", s(&dir)]);
    assert!(
        said.contains("was missing; rebuilt it from the 1 certificates"),
        "{said}"
    );
    (tmp, dir)
}

/// The bytes of the CA's record; `None` before anything was issued.
fn record(ca: &Path) -> Option<Vec<u8>> {
    fs::read(ca.join("issued.json")).ok()
}

/// `jobs-ca list --json` rows for `name`.
fn listed(ca: &Path, name: &str) -> Vec<serde_json::Value> {
    let (out, _) = ok(&["list", "--dir", s(ca), "--json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    rows.into_iter().filter(|r| r["name"] == name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_sign_use_then_renew_keeps_the_identity_and_the_jobs() {
    // Scenario: dora makes her key at home, the admin signs her request, she
    // runs a job; later she renews with the same key and still sees the job.
    let home = tempfile::tempdir().unwrap();
    let home = home.path().join("dora-home");
    let (_ca_dir, ca) = private_ca();

    let (fingerprint, said) = ok(&["request", "dora", "--dir", s(&home)]);
    let identity: Identity = fingerprint.trim_end().parse().unwrap();
    assert_eq!(fingerprint, format!("{identity}\n"));
    assert_eq!(names_in(&home), ["dora.csr", "dora.key"]);
    assert_eq!(mode(&home), 0o700);
    assert_eq!(mode(&home.join("dora.key")), 0o600);
    assert_eq!(mode(&home.join("dora.csr")), 0o644);
    assert!(!said.contains("PRIVATE KEY"), "{said}");
    let key_before = fs::read(home.join("dora.key")).unwrap();

    // The admin sees only the request and prints the same fingerprint.
    let (signed, said) = ok(&[
        "sign",
        s(&home.join("dora.csr")),
        "--dir",
        s(&ca),
        "--days",
        "20",
    ]);
    assert_eq!(signed, fingerprint);
    assert!(said.contains("user certificate, CN=dora"), "{said}");
    // The CA key is never printed (nor any key).
    assert!(!said.contains("PRIVATE KEY"), "{said}");
    assert_eq!(names_in(&home), ["dora.crt", "dora.csr", "dora.key"]);
    assert_eq!(mode(&home.join("dora.crt")), 0o644);
    let (serial1, not_after1, cert_identity, client_only, is_ca) = shape(&home.join("dora.crt"));
    assert_eq!(cert_identity, identity);
    assert!(client_only && !is_ca);

    let server = TestServer::start().await;
    let dora = common::connect(&server, user_pem(&home, "dora"))
        .await
        .expect("the signed certificate is accepted");
    let job = common::start(&dora, "echo", &["before renewal"]).await;
    assert_eq!(job.owner, identity.to_string());
    let ended = common::wait_final(&dora, &job.id).await;
    assert_eq!(ended.exit_code, Some(0));
    // Another user is refused dora's job like an unknown one.
    let bob = common::client(&server, "bob").await;
    assert_eq!(
        common::code(&bob.status(&job.id).await.unwrap_err()),
        tonic::Code::NotFound
    );

    // Renewal: a new request for the same key, signed for the same name.
    let (renewal, said) = ok(&["request", "dora", "--dir", s(&home), "--renew"]);
    assert_eq!(renewal, fingerprint);
    assert!(said.contains("reused"), "{said}");
    assert_eq!(fs::read(home.join("dora.key")).unwrap(), key_before);
    let (renewed, said) = ok(&[
        "sign",
        s(&home.join("dora.csr")),
        "--dir",
        s(&ca),
        "--days",
        "40",
    ]);
    assert_eq!(renewed, fingerprint);
    assert!(
        said.contains(&format!("replaces serial {serial1}, same identity")),
        "{said}"
    );
    let (serial2, not_after2, renewed_identity, _, _) = shape(&home.join("dora.crt"));
    assert_ne!(serial2, serial1);
    assert_eq!(renewed_identity, identity);
    // Valid 40 days from the second signing, a few seconds after the first.
    assert!(
        (20 * 86_400..20 * 86_400 + 60).contains(&(not_after2 - not_after1)),
        "{not_after1} -> {not_after2}"
    );
    assert_eq!(names_in(&home), ["dora.crt", "dora.csr", "dora.key"]);

    // With the renewed certificate dora still sees and reads her job.
    let dora = common::connect(&server, user_pem(&home, "dora"))
        .await
        .expect("the renewed certificate is accepted");
    assert_eq!(common::listed_ids(&dora).await, vec![job.id.clone()]);
    let (stdout, stderr) = common::collect_output(&dora, &job.id).await;
    assert_eq!(stdout, b"before renewal\n");
    assert_eq!(stderr, b"");

    // The CA's record has both certificates: the first renewed, the second valid.
    let rows = listed(&ca, "dora");
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0]["serial"], serial1.as_str());
    assert_eq!(rows[0]["status"], "renewed");
    assert_eq!(rows[0]["days_left"], 19);
    assert_eq!(rows[1]["serial"], serial2.as_str());
    assert_eq!(rows[1]["status"], "valid");
    assert_eq!(rows[1]["days_left"], 39);
    for row in &rows {
        assert_eq!(row["fingerprint"], identity.to_string().as_str());
        assert_eq!(row["kind"], "client");
    }
    server.shutdown().await.unwrap();
}

#[test]
fn a_key_is_one_identity_and_a_name_belongs_to_one_key() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let (_ca_dir, ca) = private_ca();
    let erin_csr = home.join("erin.csr");
    let (erin, _) = ok(&["request", "erin", "--dir", s(home)]);
    assert_eq!(
        ok(&["sign", s(&erin_csr), "--dir", s(&ca), "--days", "10"]).0,
        erin,
        "first signing"
    );
    let before = record(&ca);

    // Scenario: erin's key sent again under another name is refused.
    let frank = home.join("frank.crt");
    refused(
        &[
            "sign",
            s(&erin_csr),
            "--dir",
            s(&ca),
            "--name",
            "frank",
            "--out",
            s(&frank),
        ],
        &format!(
            "key {} was already issued as client \"erin\"; one key is one identity",
            erin.trim_end()
        ),
    );
    assert!(!frank.exists());
    assert_eq!(record(&ca), before, "a refused signing changed the record");

    // Scenario: someone else's new key asking for the name "erin" is refused.
    let other = home.join("other");
    ok(&["request", "erin", "--dir", s(&other)]);
    refused(
        &[
            "sign",
            s(&other.join("erin.csr")),
            "--dir",
            s(&ca),
            "--days",
            "10",
        ],
        &format!(
            "the name \"erin\" already belongs to key {}",
            erin.trim_end()
        ),
    );
    assert!(!other.join("erin.crt").exists());
    assert_eq!(record(&ca), before);

    // Scenario: the output file holds another key's certificate: not replaced.
    let erin_crt = fs::read(home.join("erin.crt")).unwrap();
    refused(
        &[
            "sign",
            s(&other.join("erin.csr")),
            "--dir",
            s(&ca),
            "--name",
            "gina",
            "--out",
            s(&home.join("erin.crt")),
        ],
        &format!(
            "{} already exists; refusing to overwrite it",
            home.join("erin.crt").display()
        ),
    );
    assert_eq!(fs::read(home.join("erin.crt")).unwrap(), erin_crt);
    assert_eq!(record(&ca), before);

    // Scenario: the CA's own key, sent as a request, does not become a user.
    let stolen = home.join("stolen");
    fs::create_dir(&stolen).unwrap();
    fs::copy(ca.join("ca.key"), stolen.join("evil.key")).unwrap();
    ok(&["request", "evil", "--dir", s(&stolen), "--renew"]);
    refused(
        &["sign", s(&stolen.join("evil.csr")), "--dir", s(&ca)],
        "is the CA's own key; it can never be a user's",
    );
    assert!(!stolen.join("evil.crt").exists());
    assert_eq!(record(&ca), before);
    fs::remove_dir_all(&stolen).unwrap();

    // Scenario: a user asks twice for a new key under one name: the second
    // is refused, and the message says how to renew instead.
    refused(
        &["request", "erin", "--dir", s(home)],
        &format!(
            "you already have a key for \"erin\"; to renew its certificate, \
             `jobs-ca request erin --dir {} --renew` makes a new request for it\n  \
             caused by: {} already exists; refusing to overwrite it",
            home.display(),
            home.join("erin.key").display()
        ),
    );
    // Scenario: --renew with no key to reuse says so.
    refused(
        &["request", "hana", "--dir", s(home), "--renew"],
        &format!("cannot read {}", home.join("hana.key").display()),
    );
    assert_eq!(
        names_in(home),
        ["erin.crt", "erin.csr", "erin.key", "other"]
    );
}

#[test]
fn requests_that_prove_nothing_or_name_no_one_are_refused_by_the_cli() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let (_ca_dir, ca) = private_ca();
    let before = record(&ca);
    // Scenario: the admin is handed something that is not a request.
    let junk = home.join("junk.csr");
    fs::write(&junk, "hello\n").unwrap();
    refused(
        &["sign", s(&junk), "--dir", s(&ca)],
        "no PEM CERTIFICATE REQUEST block found",
    );
    // Scenario: a request with a valid signature but no common name and no --name.
    let key =
        rcgen::KeyPair::from_pem(&fs::read_to_string(common::pem("bob").key).unwrap()).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let nameless = home.join("nameless.csr");
    fs::write(
        &nameless,
        params.serialize_request(&key).unwrap().pem().unwrap(),
    )
    .unwrap();
    refused(
        &["sign", s(&nameless), "--dir", s(&ca)],
        "the request has no common name; give the user's name",
    );
    // Scenario: the request's common name is not a usable user name.
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Bob Smith");
    let spaced = home.join("spaced.csr");
    fs::write(
        &spaced,
        params.serialize_request(&key).unwrap().pem().unwrap(),
    )
    .unwrap();
    refused(
        &["sign", s(&spaced), "--dir", s(&ca)],
        "the request's common name cannot be a user name; give one with --name NAME",
    );
    // Scenario: a directory or a huge file given as the request.
    refused(
        &["sign", s(home), "--dir", s(&ca)],
        &format!("cannot read {}", home.display()),
    );
    let huge = home.join("huge.csr");
    fs::write(&huge, vec![b'A'; 65 * 1024]).unwrap();
    refused(
        &["sign", s(&huge), "--dir", s(&ca)],
        &format!(
            "cannot read {}\n  caused by: larger than 65536 bytes",
            huge.display()
        ),
    );
    assert_eq!(record(&ca), before);
    assert_eq!(
        names_in(home),
        ["huge.csr", "junk.csr", "nameless.csr", "spaced.csr"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_issue_makes_distinct_valid_identities() {
    // Scenario: a tester makes 8 identities in one command and uses each.
    let (_ca_dir, ca) = private_ca();
    let names: Vec<String> = (1..=8).map(|i| format!("tester-{i}")).collect();
    let mut args = vec!["client", "--dir", s(&ca), "--days", "10"];
    args.extend(names.iter().map(String::as_str));
    let (out, said) = ok(&args);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 8, "{out}");
    assert!(!said.contains("PRIVATE KEY") && !out.contains("PRIVATE KEY"));

    let server = TestServer::start().await;
    let mut identities = Vec::new();
    let mut serials = Vec::new();
    for (line, name) in lines.iter().zip(&names) {
        let (fingerprint, printed_name) = line.split_once(' ').unwrap();
        assert_eq!(printed_name, name);
        let crt = ca.join(format!("{name}.crt"));
        let key = ca.join(format!("{name}.key"));
        assert!(said.contains(&format!("wrote {}", crt.display())), "{said}");
        assert_eq!(mode(&crt), 0o644);
        assert_eq!(mode(&key), 0o600);
        let (serial, _, identity, client_only, is_ca) = shape(&crt);
        assert_eq!(fingerprint, identity.to_string());
        assert!(client_only && !is_ca);
        // The key is the certificate's: the server accepts the pair.
        let client = common::connect(&server, user_pem(&ca, name))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert_eq!(common::listed_ids(&client).await, Vec::<String>::new());
        let job = common::start(&client, "true", &[]).await;
        assert_eq!(job.owner, fingerprint);
        identities.push(identity);
        serials.push(serial);
        let rows = listed(&ca, name);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0]["fingerprint"], fingerprint);
        assert_eq!(rows[0]["serial"], serials.last().unwrap().as_str());
    }
    identities.sort_by_key(|i| *i.as_bytes());
    identities.dedup();
    serials.sort();
    serials.dedup();
    assert_eq!((identities.len(), serials.len()), (8, 8));
    server.shutdown().await.unwrap();

    // Scenario: a batch with one bad, repeated or existing name makes nothing.
    let before = record(&ca);
    let files = names_in(&ca);
    for (args, message) in [
        (
            vec!["client", "ivan", "../x"],
            "invalid client name \"../x\"",
        ),
        (
            vec!["client", "ivan", "judy", "ivan"],
            "the name \"ivan\" is given more than once",
        ),
        (
            vec!["client", "ivan", "tester-3"],
            "tester-3.key already exists; refusing to overwrite it",
        ),
    ] {
        let mut args = args;
        args.splice(1..1, ["--dir", s(&ca)]);
        refused(&args, message);
    }
    assert_eq!(record(&ca), before);
    assert_eq!(names_in(&ca), files);
}

#[test]
fn two_admins_issuing_one_name_at_once_make_one_certificate() {
    // Scenario: two `jobs-ca client kim` race; the record lock lets one win.
    let (_ca_dir, ca) = private_ca();
    let run = || {
        let ca = ca.clone();
        std::thread::spawn(move || jobs_ca(&["client", "kim", "--dir", s(&ca), "--days", "10"]))
    };
    let (a, b) = (run(), run());
    let outs = [a.join().unwrap(), b.join().unwrap()];
    let codes: Vec<Option<i32>> = outs.iter().map(|o| o.status.code()).collect();
    assert!(
        codes == [Some(0), Some(1)] || codes == [Some(1), Some(0)],
        "{codes:?}"
    );
    let loser = outs.iter().find(|o| o.status.code() == Some(1)).unwrap();
    let said = String::from_utf8_lossy(&loser.stderr);
    assert!(
        said.contains("already exists; refusing to overwrite it")
            || said.contains("the name \"kim\" already belongs to key"),
        "{said}"
    );
    let winner = outs.iter().find(|o| o.status.code() == Some(0)).unwrap();
    let rows = listed(&ca, "kim");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        format!("{}\n", rows[0]["fingerprint"].as_str().unwrap()),
        String::from_utf8_lossy(&winner.stdout)
    );
    assert_eq!(
        shape(&ca.join("kim.crt")).2.to_string(),
        rows[0]["fingerprint"].as_str().unwrap()
    );
}

#[test]
fn a_broken_record_stops_issuing_and_is_left_as_it_is() {
    // Scenario: issued.json was damaged by hand; without it one key could
    // become two identities, so nothing is issued until it is fixed.
    let (tmp, dir) = private_ca();
    for (broken, reason) in [
        (
            &b"{\"version\": 1, \"certificates\": ["[..],
            "EOF while parsing",
        ),
        (
            &b"{\"version\": 3, \"certificates\": []}"[..],
            "format version 3 (this jobs-ca reads versions 1 to 2)",
        ),
    ] {
        fs::write(dir.join("issued.json"), broken).unwrap();
        let message = format!(
            "the CA's record {} is unreadable: ",
            dir.join("issued.json").display()
        );
        refused(&["client", "lena", "--dir", s(&dir)], &message);
        refused(&["list", "--dir", s(&dir)], reason);
        assert_eq!(fs::read(dir.join("issued.json")).unwrap(), broken);
        assert_eq!(names_in(&dir), ["ca.crt", "ca.key", "issued.json"]);
    }
    // Scenario: `list` on a directory without a CA says so.
    refused(
        &["list", "--dir", s(tmp.path())],
        &format!(
            "no CA in {}; create one with `jobs-ca init",
            tmp.path().display()
        ),
    );
}

/// The record as JSON.
fn record_json(ca: &Path) -> serde_json::Value {
    serde_json::from_slice(&record(ca).expect("a record")).unwrap()
}

#[test]
fn what_a_killed_run_left_is_settled_by_the_next_run() {
    // Scenario: `jobs-ca client p1 p2` was killed after writing p1's files
    // and p2's key but not p2's certificate; the record still says pending
    // (with paths relative to the CA directory, which is then moved).
    let (tmp, first_home) = private_ca();
    let ca = tmp.path().join("moved-ca");
    ok(&[
        "client",
        "p1",
        "p2",
        "--dir",
        s(&first_home),
        "--days",
        "10",
    ]);
    let mut json = record_json(&first_home);
    let certificates = json["certificates"].as_array_mut().unwrap();
    let entries: Vec<serde_json::Value> = certificates.drain(1..).collect();
    json["pending"] = entries
        .into_iter()
        .map(|record| {
            let name = record["name"].as_str().unwrap().to_owned();
            serde_json::json!({
                "record": record,
                "cert_path": format!("{name}.crt"),
                "key_path": format!("{name}.key"),
            })
        })
        .collect();
    let p1_serial = json["pending"][0]["record"]["serial"].clone();
    let p2_serial = json["pending"][1]["record"]["serial"].clone();
    // Scenario: a hand-edited entry points at a key outside the CA
    // directory; the repair must never delete it.
    let outside = tempfile::tempdir().unwrap();
    let bobs_key = outside.path().join("bob.key");
    fs::copy(common::pem("bob").key, &bobs_key).unwrap();
    let mut forged = json["pending"][1].clone();
    forged["record"]["name"] = "p3".into();
    forged["record"]["fingerprint"] = common::identity("bob").to_string().into();
    forged["cert_path"] = serde_json::json!(ca.join("p3.crt"));
    forged["key_path"] = serde_json::json!(bobs_key);
    json["pending"].as_array_mut().unwrap().push(forged);
    // Scenario: another forged entry names the CA's own key in its directory.
    let mut forged = json["pending"][1].clone();
    forged["record"]["name"] = "p4".into();
    forged["record"]["fingerprint"] = json["certificates"][0]["fingerprint"].clone();
    forged["cert_path"] = "p4.crt".into();
    forged["key_path"] = "ca.key".into();
    json["pending"].as_array_mut().unwrap().push(forged);
    let ca_key = fs::read(first_home.join("ca.key")).unwrap();
    fs::write(
        first_home.join("issued.json"),
        serde_json::to_vec(&json).unwrap(),
    )
    .unwrap();
    fs::rename(&first_home, &ca).unwrap();
    fs::remove_file(ca.join("p2.crt")).unwrap();
    fs::write(ca.join(".jobs-ca-issuing-AbC123.tmp"), "half a key").unwrap();

    let (out, said) = ok(&["list", "--dir", s(&ca), "--json"]);
    assert_eq!(
        said,
        format!(
            "note: an interrupted jobs-ca run had written the certificate for \"p1\" (serial {}): now recorded\n\
             note: an interrupted jobs-ca run never wrote the certificate for \"p2\" (serial {}): dropped from the record\n\
             note: an interrupted jobs-ca run never wrote the certificate for \"p3\" (serial {}): dropped from the record\n\
             note: an interrupted jobs-ca run never wrote the certificate for \"p4\" (serial {}): dropped from the record\n\
             note: removed 1 temporary file(s) an interrupted jobs-ca run left in {}\n",
            p1_serial.as_str().unwrap(),
            p2_serial.as_str().unwrap(),
            p2_serial.as_str().unwrap(),
            p2_serial.as_str().unwrap(),
            ca.display()
        )
    );
    assert_eq!(fs::read(ca.join("ca.key")).unwrap(), ca_key);
    assert_eq!(
        fs::read(&bobs_key).unwrap(),
        fs::read(common::pem("bob").key).unwrap()
    );
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["ca", "p1"]);
    assert_eq!(rows[1]["serial"], p1_serial);
    assert_eq!(
        names_in(&ca),
        [
            "ca.crt",
            "ca.key",
            "issued",
            "issued.json",
            "p1.crt",
            "p1.key"
        ]
    );
    // The CA's copies: p1's stays, p2's (never handed out) is gone.
    assert_eq!(
        names_in(&ca.join("issued")),
        [format!("{}.crt", p1_serial.as_str().unwrap())]
    );
    assert!(record_json(&ca).get("pending").is_none());
    // The name is free again, and a second run finds nothing to settle.
    let (_, said) = ok(&["client", "p2", "--dir", s(&ca), "--days", "10"]);
    assert!(!said.contains("note:"), "{said}");
}

#[test]
fn a_batch_killed_at_any_moment_leaves_the_record_matching_the_files() {
    // Scenario: `jobs-ca client` is killed with SIGKILL as soon as its first
    // key file appears; whatever it had done, the next run's record lists
    // exactly the certificates on disk, and no temporary file remains.
    let (_tmp, ca) = private_ca();
    let mut args = vec!["client", "--dir", s(&ca), "--days", "10"];
    let names: Vec<String> = (1..=8).map(|i| format!("q{i}")).collect();
    args.extend(names.iter().map(String::as_str));
    let mut child = Command::new(JOBS_CA)
        .args(&args)
        .env_clear()
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !names_in(&ca).iter().any(|n| n.starts_with('q')) {
        if child.try_wait().unwrap().is_some() || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    child.kill().unwrap();
    // The kill interrupted the batch: it ended by SIGKILL, not by finishing
    // (eight RSA-4096 keys take seconds; the first file appeared long before).
    let status = child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL),
        "the batch was not running when killed: {status}"
    );

    let (out, _) = ok(&["list", "--dir", s(&ca), "--json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let mut listed: Vec<String> = rows
        .iter()
        .filter(|r| r["kind"] == "client")
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect();
    listed.sort();
    let mut on_disk: Vec<String> = names_in(&ca)
        .iter()
        .filter_map(|n| n.strip_suffix(".crt"))
        .filter(|n| *n != "ca")
        .map(str::to_owned)
        .collect();
    on_disk.sort();
    assert_eq!(listed, on_disk);
    for name in &on_disk {
        assert!(ca.join(format!("{name}.key")).exists(), "{name}.key");
        let row = rows.iter().find(|r| r["name"] == name.as_str()).unwrap();
        assert_eq!(
            row["serial"],
            shape(&ca.join(format!("{name}.crt"))).0.as_str()
        );
    }
    let keys = names_in(&ca).iter().filter(|n| n.ends_with(".key")).count();
    assert_eq!(keys, on_disk.len() + 1, "a key without its certificate");
    assert!(
        !names_in(&ca).iter().any(|n| n.ends_with(".tmp")),
        "{:?}",
        names_in(&ca)
    );
    assert!(record_json(&ca).get("pending").is_none());
}

#[test]
fn a_lost_record_is_rebuilt_and_still_keeps_one_key_one_identity() {
    // Scenario: issued.json was deleted; the next run rebuilds it from the
    // certificates this CA signed (its copies of each, wherever the issued
    // one went), so no key it issued can become a new identity.
    let (tmp, ca) = private_ca();
    ok(&["server", "--dir", s(&ca), "--days", "10"]);
    ok(&[
        "client",
        "r-alice",
        "r-bob",
        "--dir",
        s(&ca),
        "--days",
        "10",
    ]);
    // carol's certificate goes next to her request, outside the CA directory.
    let carol_home = tmp.path().join("carol");
    let carol_csr = carol_home.join("r-carol.csr");
    ok(&["request", "r-carol", "--dir", s(&carol_home)]);
    ok(&["sign", s(&carol_csr), "--dir", s(&ca), "--days", "10"]);
    // The server certificate is replaced as the README says; the old key
    // stays out of users' hands.
    let old_server = tmp.path().join("old-server");
    fs::create_dir(&old_server).unwrap();
    for file in ["server.crt", "server.key"] {
        fs::rename(ca.join(file), old_server.join(file)).unwrap();
    }
    ok(&["server", "--dir", s(&ca), "--days", "10"]);
    // A certificate from another CA in the directory is not this CA's.
    fs::copy(common::pem("mallory").cert, ca.join("stray.crt")).unwrap();
    let before: Vec<serde_json::Value> =
        record_json(&ca)["certificates"].as_array().unwrap().clone();
    assert_eq!(before.len(), 6);
    fs::remove_file(ca.join("issued.json")).unwrap();

    let (out, said) = ok(&["list", "--dir", s(&ca), "--json"]);
    assert_eq!(
        said,
        format!(
            "note: {} was missing; rebuilt it from the 6 certificates this CA signed \
             (ca.crt, the certificates in {} and the CA's copies in its issued/ directory)\n",
            ca.join("issued.json").display(),
            ca.display()
        )
    );
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(rows.len(), 6);
    let rebuilt = record_json(&ca)["certificates"].as_array().unwrap().clone();
    for old in &before {
        let new = rebuilt
            .iter()
            .find(|r| r["serial"] == old["serial"])
            .unwrap_or_else(|| panic!("{old} not rebuilt"));
        for field in ["name", "kind", "fingerprint", "not_before", "not_after"] {
            assert_eq!(old[field], new[field], "{field}");
        }
    }

    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let server_key = "is the server's key; it can never be a user's";
    for (key, name, message) in [
        (ca.join("server.key"), "web", server_key),
        (old_server.join("server.key"), "web2", server_key),
        (
            ca.join("r-alice.key"),
            "r-alice2",
            "was already issued as client \"r-alice\"; one key is one identity",
        ),
        (
            carol_home.join("r-carol.key"),
            "r-carol2",
            "was already issued as client \"r-carol\"; one key is one identity",
        ),
    ] {
        fs::copy(key, home.join(format!("{name}.key"))).unwrap();
        ok(&["request", name, "--dir", s(home), "--renew"]);
        refused(
            &[
                "sign",
                s(&home.join(format!("{name}.csr"))),
                "--dir",
                s(&ca),
                "--days",
                "10",
            ],
            message,
        );
    }
}

#[test]
fn request_files_that_are_fifos_hold_keys_or_hide_escapes_are_handled() {
    let (_tmp, ca) = private_ca();
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let bob_key = fs::read_to_string(common::pem("bob").key).unwrap();
    let key = rcgen::KeyPair::from_pem(&bob_key).unwrap();
    let request = |params: &rcgen::CertificateParams| params.serialize_request(&key).unwrap();

    // Scenario: a FIFO given as the request or certificate is refused at once.
    let fifo = home.join("fifo.csr");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    refused(
        &["sign", s(&fifo), "--dir", s(&ca)],
        &format!(
            "cannot read {}\n  caused by: not a regular file",
            fifo.display()
        ),
    );
    refused(
        &["fingerprint", s(&fifo)],
        &format!(
            "cannot read {}\n  caused by: not a regular file",
            fifo.display()
        ),
    );
    // Scenario: a FIFO planted as the CA certificate does not hang issuing.
    let (_planted_tmp, planted) = private_ca();
    fs::remove_file(planted.join("ca.crt")).unwrap();
    assert!(
        Command::new("mkfifo")
            .arg(planted.join("ca.crt"))
            .status()
            .unwrap()
            .success()
    );
    refused(
        &["client", "x", "--dir", s(&planted), "--days", "10"],
        "caused by: not a regular file",
    );

    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "esc");
    // Scenario: the request file also holds the user's private key.
    let leaked = home.join("leaked.csr");
    fs::write(
        &leaked,
        format!("{}{bob_key}", request(&params).pem().unwrap()),
    )
    .unwrap();
    refused(
        &["sign", s(&leaked), "--dir", s(&ca)],
        "the file also holds a PRIVATE KEY; a private key must never leave its owner",
    );
    // Scenario: two requests in one file.
    let two = home.join("two.csr");
    let pem = request(&params).pem().unwrap();
    fs::write(&two, format!("{pem}{pem}")).unwrap();
    refused(
        &["sign", s(&two), "--dir", s(&ca)],
        "the file holds 2 certificate requests; give one request per file",
    );
    // Scenario: an organisation with terminal escapes reaches the admin's
    // screen only escaped.
    params.distinguished_name.push(
        rcgen::DnType::OrganizationName,
        "x\u{1b}]0;pwned\u{7}\u{1b}[2K\rFAKE",
    );
    // A DER request is read as well as a PEM one.
    let der = home.join("esc.der");
    fs::write(&der, request(&params).der().as_ref()).unwrap();
    let out = jobs_ca(&[
        "sign",
        s(&der),
        "--dir",
        s(&ca),
        "--days",
        "10",
        "--out",
        s(&home.join("esc.crt")),
    ]);
    assert_eq!(out.status.code(), Some(0));
    let said = String::from_utf8(out.stderr).unwrap();
    assert!(
        said.starts_with(
            "ignored from the request (not granted): subject O=x\\u{1b}]0;pwned\\u{7}\\u{1b}[2K\\rFAKE\n"
        ),
        "{said:?}"
    );
    assert!(!said.contains('\u{1b}') && !said.contains('\r'), "{said:?}");

    // Scenario: a DER key appended to a PEM request is not sent along unseen.
    let with_der = home.join("with-der.csr");
    let mut bytes = request(&params).pem().unwrap().into_bytes();
    bytes.extend_from_slice(&key.serialize_der());
    fs::write(&with_der, bytes).unwrap();
    refused(
        &["sign", s(&with_der), "--dir", s(&ca)],
        "binary data besides the PEM request (a DER key or certificate?); send only the request",
    );
    // Scenario: a file name chosen by the requester carries terminal escapes
    // (a renewal of the key just signed as "esc").
    let sneaky = home.join("carol\u{1b}]0;OWNED\u{7}.csr");
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "esc");
    fs::write(&sneaky, request(&params).pem().unwrap()).unwrap();
    let out = jobs_ca(&["sign", s(&sneaky), "--dir", s(&ca), "--days", "10"]);
    assert_eq!(out.status.code(), Some(0));
    let said = String::from_utf8(out.stderr).unwrap();
    assert!(said.contains("carol\\u{1b}]0;OWNED\\u{7}.crt"), "{said:?}");
    assert!(
        !said.contains('\u{1b}') && !said.contains('\u{7}'),
        "{said:?}"
    );
}

#[test]
fn an_init_killed_before_it_wrote_the_ca_certificate_is_run_again() {
    // Scenario: `jobs-ca init` died after the record said "pending" and
    // ca.key was written, before ca.crt; running init again recovers.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    fs::create_dir(&dir).unwrap();
    fs::copy(common::pem("bob").key, dir.join("ca.key")).unwrap();
    let record = serde_json::json!({
        "version": 1,
        "certificates": [],
        "pending": [{
            "record": {
                "serial": "01",
                "name": "ca",
                "kind": "ca",
                "fingerprint": common::identity("bob").to_string(),
                "not_before": "2026-01-01T00:00:00Z",
                "not_after": "2027-01-01T00:00:00Z",
                "issued_at": "2026-01-01T00:00:00Z",
            },
            "cert_path": "ca.crt",
            "key_path": "ca.key",
        }],
    });
    fs::write(dir.join("issued.json"), record.to_string()).unwrap();
    // Without a CA certificate nothing else works: the hint says init.
    refused(
        &["client", "x", "--dir", s(&dir)],
        &format!("no CA in {}; create one with `jobs-ca init", dir.display()),
    );
    let (ca_fingerprint, _) = ok(&["init", "--dir", s(&dir), "--days", "30"]);
    let rows = listed(&dir, "ca");
    assert_eq!(rows.len(), 1);
    assert_eq!(
        format!("{}\n", rows[0]["fingerprint"].as_str().unwrap()),
        ca_fingerprint
    );
    assert_ne!(
        fs::read(dir.join("ca.key")).unwrap(),
        fs::read(common::pem("bob").key).unwrap()
    );
    // A second init refuses, as before.
    refused(
        &["init", "--dir", s(&dir)],
        &format!(
            "{} already exists; refusing to overwrite it",
            dir.join("ca.crt").display()
        ),
    );
}

#[test]
fn hand_edited_pending_entries_never_delete_what_is_in_use() {
    // Scenario: someone edits issued.json by hand; settling its pending
    // entries must not delete keys or copies still in use, nor anything
    // named through a forged serial.
    let (tmp, ca) = private_ca();
    ok(&["client", "h-alice", "--dir", s(&ca), "--days", "10"]);
    let home = tmp.path().join("home");
    ok(&["request", "h-bob", "--dir", s(&home)]);
    ok(&[
        "sign",
        s(&home.join("h-bob.csr")),
        "--dir",
        s(&ca),
        "--days",
        "10",
    ]);
    let clean = record_json(&ca);
    let alice = clean["certificates"][1].clone();
    let alice_key = fs::read(ca.join("h-alice.key")).unwrap();
    let copies = names_in(&ca.join("issued"));
    assert_eq!(copies.len(), 2, "{copies:?}");

    // A serial that is a path is refused outright; nothing is touched.
    let victim = tmp.path().join("victim.crt");
    fs::write(&victim, "precious").unwrap();
    let mut json = clean.clone();
    let mut forged = alice.clone();
    forged["serial"] = format!("../../{}", victim.with_extension("").display()).into();
    json["pending"] = serde_json::json!([{ "record": forged, "cert_path": "nothere.crt" }]);
    fs::write(ca.join("issued.json"), json.to_string()).unwrap();
    refused(
        &["list", "--dir", s(&ca)],
        "is not 1 to 40 lower-case hex digits",
    );
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");

    // alice's key with a made-up serial, and alice's own serial again:
    // dropped, but her key and the copy of her certificate stay.
    let mut json = clean.clone();
    let mut made_up = alice.clone();
    made_up["serial"] = "deadbeef".into();
    json["pending"] = serde_json::json!([
        { "record": made_up, "cert_path": "nothere.crt", "key_path": "h-alice.key" },
        { "record": alice.clone(), "cert_path": "nothere2.crt", "key_path": "h-alice.key" },
    ]);
    fs::write(ca.join("issued.json"), json.to_string()).unwrap();
    let (_, said) = ok(&["list", "--dir", s(&ca)]);
    assert_eq!(said.matches("dropped from the record").count(), 2, "{said}");
    assert_eq!(fs::read(ca.join("h-alice.key")).unwrap(), alice_key);
    assert_eq!(names_in(&ca.join("issued")), copies);
    assert_eq!(record_json(&ca)["certificates"], clean["certificates"]);

    // The CA's copies are not an output path.
    let first_copy = ca.join("issued").join(&copies[0]);
    refused(
        &[
            "sign",
            s(&home.join("h-bob.csr")),
            "--dir",
            s(&ca),
            "--out",
            s(&first_copy),
        ],
        "is in the CA's own copies directory; write the certificate elsewhere",
    );

    // Scenario: a `sign` was killed after writing the CA's copy, and the
    // certificate it handed out was moved away before the next run: the
    // copy proves it may be out, so bob's key keeps its one name.
    ok(&["request", "h-carol", "--dir", s(&home)]);
    ok(&[
        "sign",
        s(&home.join("h-carol.csr")),
        "--dir",
        s(&ca),
        "--days",
        "10",
    ]);
    let mut json = record_json(&ca);
    let carol = json["certificates"].as_array_mut().unwrap().pop().unwrap();
    json["pending"] = serde_json::json!([{
        "record": carol,
        "cert_path": home.join("h-carol.crt"),
    }]);
    fs::write(ca.join("issued.json"), json.to_string()).unwrap();
    fs::remove_file(home.join("h-carol.crt")).unwrap();
    let (_, said) = ok(&["list", "--dir", s(&ca)]);
    assert!(
        said.contains("had written the certificate for \"h-carol\""),
        "{said}"
    );
    refused(
        &[
            "sign",
            s(&home.join("h-carol.csr")),
            "--dir",
            s(&ca),
            "--name",
            "h-carol2",
            "--out",
            s(&home.join("x.crt")),
        ],
        "was already issued as client \"h-carol\"",
    );

    // Scenario: `request` was killed while writing; the next one for the
    // same name removes its leftover temporary key file.
    let leftover = home.join(".jobs-ca-request-h-dave-key.tmp");
    fs::write(&leftover, "half a key from a killed request").unwrap();
    ok(&["request", "h-dave", "--dir", s(&home)]);
    assert!(!leftover.exists());
    assert!(
        !names_in(&home).iter().any(|n| n.ends_with(".tmp")),
        "{:?}",
        names_in(&home)
    );
}

/// `(serial hex, reason code)` of every entry of the CRL at `path`, after
/// checking it is signed by the test CA; with its number and dates.
fn crl_of(path: &Path) -> (Vec<(String, Option<u8>)>, String, i64, i64) {
    let pem = fs::read(path).unwrap();
    let der = rustls::pki_types::CertificateRevocationListDer::from_pem_slice(&pem).unwrap();
    let (_, crl) = x509_parser::parse_x509_crl(&der).unwrap();
    let ca_der = cert_der(&common::ca_cert());
    let (_, ca) = parse_x509_certificate(&ca_der).unwrap();
    crl.verify_signature(ca.public_key())
        .expect("the CRL is signed by the CA");
    assert_eq!(crl.issuer().as_raw(), ca.subject().as_raw());
    let entries = crl
        .iter_revoked_certificates()
        .map(|r| {
            let serial: String = r.raw_serial().iter().map(|b| format!("{b:02x}")).collect();
            (serial, r.reason_code().map(|(_, c)| c.0))
        })
        .collect();
    (
        entries,
        crl.crl_number().unwrap().to_string(),
        crl.last_update().timestamp(),
        crl.next_update().unwrap().timestamp(),
    )
}

#[test]
fn revoke_marks_every_certificate_of_the_identity_and_signs_a_crl() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let (_ca_dir, ca) = private_ca();
    let (erin, _) = ok(&["request", "erin", "--dir", s(home)]);
    let csr = home.join("erin.csr");
    ok(&["sign", s(&csr), "--dir", s(&ca), "--days", "10"]);
    // A renewal: a second serial for the same identity.
    ok(&["sign", s(&csr), "--dir", s(&ca), "--days", "20"]);
    let serials: Vec<String> = listed(&ca, "erin")
        .iter()
        .map(|r| r["serial"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(serials.len(), 2);
    let before = record(&ca).unwrap();

    // Scenario: a name, fingerprint or serial the record does not hold is one
    // line of error, and nothing is written.
    for unknown in [
        "nobody",
        "sha256:0000000000000000000000000000000000000000000000000000000000000000",
        "0123abcd",
    ] {
        let out = jobs_ca(&["revoke", unknown, "--dir", s(&ca)]);
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(
            String::from_utf8(out.stderr).unwrap(),
            format!(
                "jobs-ca: error: no certificate in the CA's record has the name, fingerprint or serial {unknown:?}\n"
            )
        );
        assert!(out.stdout.is_empty());
    }
    // Scenario: the CA's own certificate cannot be revoked through its CRL.
    refused(
        &["revoke", "ca", "--dir", s(&ca)],
        "\"ca\" is the CA's own certificate; a CA cannot revoke itself",
    );
    assert_eq!(record(&ca).unwrap(), before, "a refusal changed the record");
    assert!(!ca.join("crl.pem").exists());

    // The first serial selects the identity: both certificates are revoked.
    let (out, said) = ok(&[
        "revoke",
        &serials[0],
        "--dir",
        s(&ca),
        "--reason",
        "keyCompromise",
    ]);
    assert_eq!(out, erin);
    assert!(
        said.contains("CRL number 1, 2 revoked certificate(s)"),
        "{said}"
    );
    let rows = listed(&ca, "erin");
    for row in &rows {
        assert_eq!(row["status"], "revoked");
        assert_eq!(row["revocation_reason"], "keyCompromise");
        assert!(row["revoked_at"].is_string());
    }
    assert_eq!(listed(&ca, "ca")[0]["status"], "valid");
    assert!(listed(&ca, "ca")[0].get("revoked_at").is_none());
    let (table, _) = ok(&["list", "--dir", s(&ca)]);
    let erin_lines: Vec<&str> = table.lines().filter(|l| l.starts_with("erin ")).collect();
    assert_eq!(erin_lines.len(), 2);
    assert!(
        erin_lines.iter().all(|l| l.contains(" revoked ")),
        "{table}"
    );

    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let (mut entries, number, this_update, next_update) = crl_of(&ca.join("crl.pem"));
    entries.sort();
    let mut want: Vec<_> = serials.iter().map(|s| (s.clone(), Some(1u8))).collect();
    want.sort();
    assert_eq!(entries, want);
    assert_eq!(number, "1");
    // Backdated one hour for clock skew, valid 30 days.
    assert!(
        (now - 3600 - 5..=now - 3600).contains(&this_update),
        "{this_update}"
    );
    assert!((now + 30 * 86_400 - 5..=now + 30 * 86_400).contains(&next_update));

    // Re-signing: a larger number, new dates, the same entries.
    let (_, said) = ok(&["crl", "--dir", s(&ca), "--crl-days", "7"]);
    assert!(said.contains("CRL number 2"), "{said}");
    let (again, number, _, next_update) = crl_of(&ca.join("crl.pem"));
    assert_eq!((again.len(), number.as_str()), (2, "2"));
    assert!((now + 7 * 86_400 - 5..=now + 7 * 86_400 + 5).contains(&next_update));
    // Revoking again revokes nothing new, and the number still grows.
    let (_, said) = ok(&["revoke", "erin", "--dir", s(&ca)]);
    assert!(
        said.contains("already revoked") && said.contains("CRL number 3"),
        "{said}"
    );

    // Scenario: a revoked key never gets a certificate again.
    refused(
        &["sign", s(&csr), "--dir", s(&ca)],
        &format!("key {} was revoked", erin.trim_end()),
    );
    refused(
        &["crl", "--dir", s(&ca), "--crl-days", "0"],
        "a CRL must be valid for 1 to 366 days, got 0",
    );
}

#[test]
fn a_record_of_the_first_format_is_still_read() {
    // Scenario: a CA directory from before revocation (record version 1, no
    // revocation fields) lists and revokes as before.
    let (_ca_dir, ca) = private_ca();
    let mut json: serde_json::Value = serde_json::from_slice(&record(&ca).unwrap()).unwrap();
    json["version"] = 1.into();
    fs::write(ca.join("issued.json"), serde_json::to_vec(&json).unwrap()).unwrap();
    assert_eq!(listed(&ca, "ca")[0]["status"], "valid");
    ok(&["crl", "--dir", s(&ca)]);
    let (entries, number, _, _) = crl_of(&ca.join("crl.pem"));
    assert_eq!((entries.len(), number.as_str()), (0, "1"));
    let now: serde_json::Value = serde_json::from_slice(&record(&ca).unwrap()).unwrap();
    assert_eq!(now["version"], 2);
}

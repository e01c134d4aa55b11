//! The operator's policy as clients meet it: the denylist, admins, rate
//! limits, quotas, the handshake rate per source address, reloads (good and
//! bad) and the audit log that records every decision.
//!
//! Each test runs the real server in-process with a [`PolicyHandle`] it keeps,
//! so it can change the policy mid-test the way `jobsd` does on SIGHUP: by
//! rewriting the file and calling [`PolicyHandle::reload`] (or, where no file
//! is needed, [`PolicyHandle::replace`]). Rate-limit tests use refills far
//! slower than the test runs (1 per second, 5 per minute), so the number of
//! calls that pass is exactly the burst.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::disk::{Frozen, LoopExt4};
use common::*;
use jobs::audit::AuditLog;
use jobs::client::{Client, ClientError};
use jobs::policy::{Policy, PolicyHandle};
use jobs::proto::{self, State};
use serde_json::Value;
use tempfile::TempDir;
use tokio::net::TcpSocket;
use tokio::task::JoinSet;
use tokio::time::timeout;
use tonic::{Code, Streaming};
use tonic_types::StatusExt;

/// What every RPC of a denylisted identity gets.
const DENIED: &str = "this identity is denied by the server's policy; ask the server's operator";

/// What another user's job (or no job) looks like.
const NO_SUCH_JOB: &str = "no such job";

/// The start of a request-rate refusal; "X.Y s" follows.
const TOO_MANY_REQUESTS: &str = "too many requests from this identity; retry in ";

/// The start of a start-rate refusal; "X.Y s" follows.
const TOO_MANY_STARTS: &str = "too many job starts from this identity; retry in ";

/// A job id that exists nowhere.
const UNKNOWN_ID: &str = "0b5fa4f4-9f0f-4d59-b0a8-3c86d7a4e7a1";

// ---------------------------------------------------------------------------
// Helpers

/// `name`'s fingerprint as the policy file writes it.
fn fp(name: &str) -> String {
    identity(name).to_string()
}

/// The message of a running-jobs quota refusal.
fn quota_message(max: u32) -> String {
    format!(
        "you have {max} running job(s), the most your quota allows; wait for one to end or stop one"
    )
}

/// A policy file in its own directory, which tests rewrite and reload.
struct PolicyFile {
    dir: TempDir,
}

impl PolicyFile {
    fn new(text: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("jobs-policy-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("policy dir");
        let file = Self { dir };
        file.write(text);
        file
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("policy.toml")
    }

    fn write(&self, text: &str) {
        std::fs::write(self.path(), text).expect("write the policy file");
    }

    /// A handle on the file as it is now; panics if it is not valid.
    fn handle(&self) -> PolicyHandle {
        PolicyHandle::new(Policy::load(&self.path()).expect("a valid policy"))
    }
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
        let log = Arc::new(AuditLog::open(&dir.path().join("audit.log")).expect("open audit log"));
        Self { dir, log }
    }

    /// Every line so far, each checked to be one JSON object with exactly
    /// the documented keys.
    fn lines(&self) -> Vec<AuditLine> {
        let text =
            std::fs::read_to_string(self.dir.path().join("audit.log")).expect("read audit log");
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "last line unfinished: {text:?}"
        );
        text.lines().map(AuditLine::parse).collect()
    }

    /// The lines about job `id`.
    fn about(&self, id: &str) -> Vec<AuditLine> {
        self.lines()
            .into_iter()
            .filter(|l| l.job.as_deref() == Some(id))
            .collect()
    }
}

/// One audit line, parsed.
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
struct AuditLine {
    time: String,
    identity: String,
    subject: String,
    peer: String,
    rpc: String,
    job: Option<String>,
    owner: Option<String>,
    admin: bool,
    outcome: String,
    reason: Option<String>,
}

/// The keys of a line, in the documented order.
const AUDIT_KEYS: [&str; 10] = [
    "time", "identity", "subject", "peer", "rpc", "job", "owner", "admin", "outcome", "reason",
];

impl AuditLine {
    fn parse(line: &str) -> Self {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let object = value
            .as_object()
            .unwrap_or_else(|| panic!("not an object: {line}"));
        let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
        keys.sort_unstable();
        let mut expected = AUDIT_KEYS.to_vec();
        expected.sort_unstable();
        assert_eq!(keys, expected, "{line}");
        // serde_json's map does not keep order; the keys' first appearances
        // in the text do (every key appears as `"key":` once, and no value
        // written here contains such a string).
        let at: Vec<usize> = AUDIT_KEYS
            .iter()
            .map(|k| line.find(&format!("\"{k}\":")).expect("key present"))
            .collect();
        assert!(at.is_sorted(), "keys out of order: {line}");
        serde_json::from_value(value).unwrap_or_else(|e| panic!("bad field ({e}): {line}"))
    }

    /// (identity, rpc, job, owner, admin, outcome, reason), for exact
    /// comparisons.
    fn decision(&self) -> Decision {
        (
            self.identity.clone(),
            self.rpc.clone(),
            self.job.clone(),
            self.owner.clone(),
            self.admin,
            self.outcome.clone(),
            self.reason.clone(),
        )
    }
}

type Decision = (
    String,
    String,
    Option<String>,
    Option<String>,
    bool,
    String,
    Option<String>,
);

/// The expected [`Decision`] tuple.
fn decision(
    who: &str,
    rpc: &str,
    job: Option<&str>,
    owner: Option<&str>,
    admin: bool,
    outcome: &str,
    reason: Option<&str>,
) -> Decision {
    (
        fp(who),
        rpc.to_owned(),
        job.map(str::to_owned),
        owner.map(fp),
        admin,
        outcome.to_owned(),
        reason.map(str::to_owned),
    )
}

/// A server under `policy`, writing its audit log to `audit` if given.
async fn server_with(policy: &PolicyHandle, audit: Option<&Audit>) -> TestServer {
    let policy = policy.clone();
    let audit = audit.map(|a| a.log.clone());
    TestServer::start_with(move |c| {
        c.policy = policy;
        c.audit = audit;
    })
    .await
}

/// The status inside an RPC error; panics on anything else.
fn rpc_status(e: &ClientError) -> &tonic::Status {
    match e {
        ClientError::Rpc(s) => s,
        other => panic!("expected an RPC error, got {other:?}"),
    }
}

/// Asserts `e` is PERMISSION_DENIED for a denylisted identity.
fn assert_denylisted(call: &str, e: &ClientError) {
    assert_eq!(
        (code(e), message(e).as_str()),
        (Code::PermissionDenied, DENIED),
        "{call}"
    );
}

/// Checks a rate refusal: RESOURCE_EXHAUSTED, the message `prefix` then
/// "X.Y s" with 0 < X.Y ≤ `most` rounded up to a tenth, and a RetryInfo
/// detail with 0 < delay ≤ `most`.
fn assert_retry_later(e: &ClientError, prefix: &str, most: Duration) {
    let status = rpc_status(e);
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let wait = status
        .message()
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_suffix(" s"))
        .unwrap_or_else(|| panic!("unexpected message: {:?}", status.message()));
    let (whole, tenth) = wait
        .split_once('.')
        .unwrap_or_else(|| panic!("not X.Y: {wait:?}"));
    assert_eq!(tenth.len(), 1, "not X.Y: {wait:?}");
    let tenths: u64 =
        whole.parse::<u64>().expect("seconds") * 10 + tenth.parse::<u64>().expect("tenths");
    assert!(
        tenths > 0 && u128::from(tenths) * 100 <= most.as_millis(),
        "retry in {wait} s is not in (0, {most:?}]"
    );
    let delay = status
        .get_details_retry_info()
        .unwrap_or_else(|| panic!("no RetryInfo detail in {status:?}"))
        .retry_delay
        .expect("RetryInfo without a delay");
    assert!(
        !delay.is_zero() && delay <= most,
        "RetryInfo delay {delay:?} is not in (0, {most:?}]"
    );
    // The message rounds the delay up to the next tenth of a second.
    assert_eq!(
        u128::from(tenths),
        delay.as_nanos().div_ceil(100_000_000),
        "message {wait} s does not match RetryInfo {delay:?}"
    );
}

/// Starts `program args` as alice `per_connection` times on each of
/// `connections` connections, all at once; every call's result.
async fn parallel_starts(
    server: &TestServer,
    connections: usize,
    per_connection: usize,
    program: &'static str,
    a: &[&str],
) -> Vec<Result<proto::JobStatus, ClientError>> {
    let mut alices = Vec::new();
    for _ in 0..connections {
        alices.push(client(server, "alice").await);
    }
    let argv = args(a);
    let mut calls = JoinSet::new();
    for _ in 0..per_connection {
        for alice in &alices {
            let (alice, argv) = (alice.clone(), argv.clone());
            calls.spawn(async move { alice.start(program, &argv).await });
        }
    }
    calls.join_all().await
}

/// Calls every RPC with job `id` (Start, List, List of all users, then
/// Stop, Status, Output, Stream) and returns each call's error, named;
/// panics if any of them succeeds.
async fn every_rpc(client: &Client, id: &str) -> Vec<(&'static str, ClientError)> {
    let mut errors = Vec::new();
    match client.start("/bin/true", &[]).await {
        Ok(s) => panic!("start succeeded: {s:?}"),
        Err(e) => errors.push(("start", e)),
    }
    match client.list(false).await {
        Ok(s) => panic!("list succeeded: {s:?}"),
        Err(e) => errors.push(("list", e)),
    }
    match client.list(true).await {
        Ok(s) => panic!("list --all succeeded: {s:?}"),
        Err(e) => errors.push(("list --all", e)),
    }
    errors.extend(every_job_call(client, id).await);
    errors
}

/// Reads a Stream call until its stdout holds exactly `n` bytes; panics if
/// it holds more, the job ends first, or the deadline passes.
async fn read_stdout(stream: &mut Streaming<proto::StreamEvent>, n: usize) -> Vec<u8> {
    tokio::time::timeout(STREAM_DEADLINE, async {
        let mut out = Vec::new();
        while out.len() < n {
            match stream.message().await {
                Ok(Some(proto::StreamEvent {
                    event: Some(proto::stream_event::Event::Chunk(c)),
                })) => {
                    assert_eq!(check_chunk(&c), proto::Fd::Stdout, "output on stderr");
                    out.extend(c.data);
                }
                other => panic!("expected output, got {other:?} after {} bytes", out.len()),
            }
        }
        assert_eq!(out.len(), n, "more output than expected");
        out
    })
    .await
    .expect("the output did not arrive within the deadline")
}

/// Reads `stream` until it fails and returns (bytes of output received,
/// the status it failed with). Panics if it ends cleanly, delivers a final
/// status, or the deadline passes.
async fn read_until_refused<T: std::fmt::Debug>(
    stream: &mut Streaming<T>,
    size: impl Fn(&T) -> usize,
) -> (usize, tonic::Status) {
    tokio::time::timeout(STREAM_DEADLINE, async {
        let mut received = 0;
        loop {
            match stream.message().await {
                Ok(Some(m)) => received += size(&m),
                Ok(None) => panic!("the stream ended cleanly after {received} bytes"),
                Err(status) => return (received, status),
            }
        }
    })
    .await
    .expect("the stream was not ended within the deadline")
}

/// Output bytes in a stream event; panics on a final status.
fn event_bytes(e: &proto::StreamEvent) -> usize {
    match &e.event {
        Some(proto::stream_event::Event::Chunk(c)) => c.data.len(),
        other => panic!("expected output, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Denylist

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denylisted_user_is_refused_on_every_rpc_while_others_work() {
    // Scenario: alice is on the denylist; each of her RPCs, on bob's job, on
    // an unknown id and on a malformed one, is PERMISSION_DENIED with the
    // one message, while bob starts, follows, lists and stops his jobs.
    let file = PolicyFile::new(&format!("denylist = [\"{}\"]\n", fp("alice")));
    let policy = file.handle();
    let audit = Audit::new();
    let server = server_with(&policy, Some(&audit)).await;
    let alice = client(&server, "alice").await;
    let bob = client(&server, "bob").await;

    let bobs = start(&bob, "sh", &["-c", "echo hi; exec sleep 600"]).await;
    for id in [bobs.id.as_str(), UNKNOWN_ID, "not-a-uuid"] {
        let errors = every_rpc(&alice, id).await;
        assert_eq!(errors.len(), 7);
        for (call, e) in &errors {
            assert_denylisted(&format!("{call}({id})"), e);
        }
    }

    // bob is unaffected.
    let mut stream = bob.stream(&bobs.id).await.unwrap();
    assert_eq!(read_lines(&mut stream, 1).await, b"hi\n");
    assert_eq!(
        collect_output(&bob, &bobs.id).await,
        (b"hi\n".to_vec(), vec![])
    );
    let listed = listed_ids(&bob).await;
    assert_eq!(listed, vec![bobs.id.clone()]);
    let stopped = bob.stop(&bobs.id).await.unwrap();
    assert_eq!(
        (stopped.state(), stopped.signal),
        (State::Stopped, Some(15))
    );
    let done = tokio::time::timeout(STREAM_DEADLINE, follow_stream(stream))
        .await
        .expect("bob's stream did not end");
    // (Its first line was read above.)
    assert_eq!(
        (done.stdout(), done.status.state()),
        (vec![], State::Stopped)
    );

    // Every refusal of alice is audited as denylisted, before any job lookup.
    let denied: Vec<(String, String, Option<String>)> = audit
        .lines()
        .into_iter()
        .filter(|l| l.identity == fp("alice"))
        .map(|l| {
            assert_eq!(
                (
                    l.owner.as_deref(),
                    l.admin,
                    l.outcome.as_str(),
                    l.reason.as_deref()
                ),
                (None, false, "denied", Some("denylisted")),
                "{l:?}"
            );
            (l.rpc, l.subject, l.job)
        })
        .collect();
    let mut expected = Vec::new();
    for id in [bobs.id.as_str(), UNKNOWN_ID, "not-a-uuid"] {
        for (rpc, job) in [
            ("Start", None),
            ("List", None),
            ("List", None),
            ("Stop", Some(id)),
            ("Status", Some(id)),
            ("Output", Some(id)),
            ("Stream", Some(id)),
        ] {
            expected.push((
                rpc.to_owned(),
                "CN=alice".to_owned(),
                job.map(str::to_owned),
            ));
        }
    }
    assert_eq!(denied, expected);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_denylists_a_user_ends_their_open_streams_but_not_their_job() {
    // Scenario: alice follows her job (4 MiB written, then quiet) with a
    // Stream that has read everything and an Output she stopped reading
    // after one chunk (held by HTTP/2 flow control). The operator adds her to
    // the denylist and reloads: both calls end with PERMISSION_DENIED (the
    // Output before its last byte), each with an audit line, and her job
    // keeps running (the server runs with `--on-revoke keep`; by default a
    // newly denylisted identity's jobs are stopped, see tests/revocation.rs),
    // as carol (an admin) sees and alice herself sees once the denylist is
    // lifted again.
    const WRITTEN: usize = 4 << 20;
    let admins = format!("admins = [\"{}\"]\n", fp("carol"));
    let file = PolicyFile::new(&admins);
    let policy = file.handle();
    let audit = Audit::new();
    let (p, a) = (policy.clone(), audit.log.clone());
    let server = TestServer::start_with(move |c| {
        c.policy = p;
        c.audit = Some(a);
        c.on_revoke = jobs::server::OnRevoke::Keep;
    })
    .await;
    let alice = client(&server, "alice").await;
    let carol = client(&server, "carol").await;

    let job = start(
        &alice,
        "sh",
        &[
            "-c",
            &format!("head -c {WRITTEN} /dev/zero; exec sleep 600"),
        ],
    )
    .await;
    let mut stream = alice.stream(&job.id).await.unwrap();
    assert_eq!(read_stdout(&mut stream, WRITTEN).await, vec![0u8; WRITTEN]);
    let mut output = alice.output(&job.id).await.unwrap();
    let first = output.message().await.unwrap().expect("a first chunk");
    assert_eq!(check_chunk(&first), proto::Fd::Stdout);

    file.write(&format!("{admins}denylist = [\"{}\"]\n", fp("alice")));
    let summary = policy.reload().expect("reload the denylist");
    assert_eq!((summary.denied, summary.admins), (1, 1));

    let (more, status) = read_until_refused(&mut stream, event_bytes).await;
    assert_eq!(more, 0, "the stream sent output after the reload");
    assert_eq!(
        (status.code(), status.message()),
        (Code::PermissionDenied, DENIED)
    );
    let (rest, status) = read_until_refused(&mut output, |c| c.data.len()).await;
    assert_eq!(
        (status.code(), status.message()),
        (Code::PermissionDenied, DENIED)
    );
    assert!(
        first.data.len() + rest < WRITTEN,
        "the Output call delivered all {WRITTEN} bytes before ending"
    );
    assert_denylisted("status", &alice.status(&job.id).await.unwrap_err());

    // The job is untouched.
    let seen = carol.status(&job.id).await.unwrap();
    assert_eq!(
        (seen.state(), seen.owner.as_str(), seen.output_bytes),
        (State::Running, fp("alice").as_str(), WRITTEN as u64)
    );
    let mut ended: Vec<Decision> = audit
        .about(&job.id)
        .into_iter()
        .filter(|l| l.identity == fp("alice") && l.outcome == "denied")
        .map(|l| l.decision())
        .collect();
    // Each open call writes its own line when the server next polls it, so
    // the two stream lines come in either order.
    ended[..2].sort();
    assert_eq!(
        ended,
        [
            decision(
                "alice",
                "Output",
                Some(&job.id),
                Some("alice"),
                false,
                "denied",
                Some("stream_ended_denylisted")
            ),
            decision(
                "alice",
                "Stream",
                Some(&job.id),
                Some("alice"),
                false,
                "denied",
                Some("stream_ended_denylisted")
            ),
            decision(
                "alice",
                "Status",
                Some(&job.id),
                None,
                false,
                "denied",
                Some("denylisted")
            ),
        ]
    );

    file.write(&admins);
    assert_eq!(policy.reload().expect("lift the denylist").denied, 0);
    let s = alice.status(&job.id).await.unwrap();
    assert_eq!(
        (s.state(), s.output_bytes),
        (State::Running, WRITTEN as u64)
    );
    let s = alice.stop(&job.id).await.unwrap();
    assert_eq!((s.state(), s.signal), (State::Stopped, Some(15)));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_certificate_for_a_denylisted_key_is_denied_too() {
    // Scenario: alice's key is denylisted (by `replace`, without a file)
    // while she follows her job with a renewed certificate for the same key:
    // the stream ends, and the renewed certificate, like the original, is
    // refused on every RPC. Lifting the denylist shows the job ran on.
    let policy = PolicyHandle::new(Policy::default());
    let server = server_with(&policy, None).await;
    let alice = client(&server, "alice").await;
    let renewed = client(&server, "alice-renewed").await;
    let job = start(&alice, "sh", &["-c", "echo ready; exec sleep 600"]).await;
    let mut stream = renewed.stream(&job.id).await.unwrap();
    assert_eq!(read_lines(&mut stream, 1).await, b"ready\n");

    let denying = format!("denylist = [\"{}\"]\n", fp("alice"));
    policy.replace(Policy::parse(&denying, Path::new("policy.toml")).unwrap());

    let (more, status) = read_until_refused(&mut stream, event_bytes).await;
    assert_eq!(more, 0);
    assert_eq!(
        (status.code(), status.message()),
        (Code::PermissionDenied, DENIED)
    );
    for who in [&renewed, &alice] {
        for (call, e) in every_rpc(who, &job.id).await {
            assert_denylisted(call, &e);
        }
    }
    // A fresh connection with the renewed certificate is refused as well.
    let again = client(&server, "alice-renewed").await;
    assert_denylisted("status", &again.status(&job.id).await.unwrap_err());

    policy.replace(Policy::default());
    let s = renewed.stop(&job.id).await.unwrap();
    assert_eq!((s.state(), s.signal), (State::Stopped, Some(15)));
    server.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------
// Rate limits

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_request_rate_holds_across_connections_and_spares_other_users() {
    // Scenario: with 1 request per second and a burst of 10, alice fires 40
    // List calls at once over 4 connections while bob fires 10: exactly 10 of
    // alice's pass, each of the other 30 is RESOURCE_EXHAUSTED saying when to
    // retry (message and RetryInfo, at most 1 s), and all of bob's pass.
    let file = PolicyFile::new("[rate]\nrequests_per_second = 1\nrequest_burst = 10\n");
    let policy = file.handle();
    let server = server_with(&policy, None).await;
    let mut alices = Vec::new();
    for _ in 0..4 {
        alices.push(client(&server, "alice").await);
    }
    let bob = client(&server, "bob").await;

    let began = tokio::time::Instant::now();
    let mut calls = JoinSet::new();
    for _ in 0..10 {
        for alice in &alices {
            let alice = alice.clone();
            calls.spawn(async move { ("alice", alice.list(false).await) });
        }
        let bob = bob.clone();
        calls.spawn(async move { ("bob", bob.list(false).await) });
    }
    let results = calls.join_all().await;
    let took = began.elapsed();

    let alice_ok = results
        .iter()
        .filter(|(w, r)| *w == "alice" && r.is_ok())
        .count();
    // The burst, plus one token per second the flood lasted: on a loaded
    // machine the 40 calls may take longer than a second. Never all 40.
    let refilled = took.as_secs() as usize + 1;
    assert!(
        (10..=(10 + refilled).min(39)).contains(&alice_ok),
        "alice got {alice_ok} calls through (the flood took {took:?}; one more token per second)"
    );
    for (who, result) in &results {
        match (who, result) {
            (&"bob", Ok(jobs)) => assert_eq!(jobs, &vec![]),
            (&"bob", Err(e)) => panic!("bob was limited: {e:?}"),
            (_, Ok(_)) => {}
            (_, Err(e)) => assert_retry_later(e, TOO_MANY_REQUESTS, Duration::from_secs(1)),
        }
    }
    assert_eq!(results.len(), 50);
    // The bucket is per identity: a new connection does not reset it (a
    // reset would let 10 calls through at once; at 1 token per second only
    // what refilled since passes).
    let fresh = client(&server, "alice").await;
    let since = tokio::time::Instant::now();
    let mut refusal = None;
    let mut passed = 0;
    for _ in 0..10 {
        match fresh.list(false).await {
            Ok(_) => passed += 1,
            Err(e) => {
                refusal = Some(e);
                break;
            }
        }
    }
    let refilled = (since - began).as_secs() as usize + since.elapsed().as_secs() as usize + 1;
    assert!(
        passed <= refilled.min(9),
        "{passed} calls passed on a new connection"
    );
    assert_retry_later(
        &refusal.expect("a new connection reset the bucket"),
        TOO_MANY_REQUESTS,
        Duration::from_secs(1),
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_start_rate_holds_across_connections_and_certificates() {
    // Scenario (C30): with 5 starts per minute, alice fires 50 starts of
    // /bin/true at once over 10 connections: exactly 5 start, the other 45
    // are RESOURCE_EXHAUSTED "too many job starts" (retry within 12 s), and
    // her renewed certificate (same key) is refused too; bob still starts.
    let file = PolicyFile::new("[rate]\nstarts_per_minute = 5\n");
    let policy = file.handle();
    let server = server_with(&policy, None).await;
    let began = tokio::time::Instant::now();
    let results = parallel_starts(&server, 10, 5, "/bin/true", &[]).await;
    let took = began.elapsed();
    let alice = client(&server, "alice").await;
    assert_eq!(results.len(), 50);
    let started: Vec<&proto::JobStatus> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    // The burst of 5, plus one start per 12 s the flood lasted (a loaded
    // machine may take that long for 50 starts and 10 handshakes).
    let refilled = (took.as_secs() / 12) as usize;
    assert!(
        (5..=5 + refilled).contains(&started.len()),
        "{} starts passed in {took:?}",
        started.len()
    );
    for e in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_retry_later(e, TOO_MANY_STARTS, Duration::from_secs(12));
    }

    let renewed = client(&server, "alice-renewed").await;
    assert_retry_later(
        &renewed.start("/bin/true", &[]).await.unwrap_err(),
        TOO_MANY_STARTS,
        Duration::from_secs(12),
    );
    // Other calls are not starts: alice still sees her five jobs end.
    for job in started {
        let s = wait_final(&alice, &job.id).await;
        assert_eq!((s.state(), s.exit_code), (State::Exited, Some(0)));
    }
    let bob = client(&server, "bob").await;
    let bobs = start(&bob, "/bin/true", &[]).await;
    assert_eq!(wait_final(&bob, &bobs.id).await.state(), State::Exited);
    server.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------
// Quotas

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_running_jobs_quota_refuses_a_start_until_a_job_ends() {
    // Scenario: with max_running_jobs = 2, alice's third job is refused with
    // the exact message (and an audit line), bob is unaffected, and once
    // alice stops one of hers she can start another.
    let file = PolicyFile::new("[quota]\nmax_running_jobs = 2\n");
    let policy = file.handle();
    let audit = Audit::new();
    let server = server_with(&policy, Some(&audit)).await;
    let alice = client(&server, "alice").await;
    let bob = client(&server, "bob").await;

    let first = start(&alice, "sleep", &["600"]).await;
    let second = start(&alice, "sleep", &["600"]).await;
    let e = alice.start("sleep", &args(&["600"])).await.unwrap_err();
    assert_eq!(
        (code(&e), message(&e)),
        (Code::ResourceExhausted, quota_message(2))
    );
    let last = audit.lines().pop().unwrap();
    assert_eq!(
        last.decision(),
        decision(
            "alice",
            "Start",
            None,
            None,
            false,
            "denied",
            Some("running_jobs_quota")
        )
    );
    let bobs = start(&bob, "sleep", &["600"]).await;

    let s = alice.stop(&first.id).await.unwrap();
    assert_eq!(s.state(), State::Stopped);
    let third = start(&alice, "sleep", &["600"]).await;
    assert_eq!(third.state(), State::Running);
    let e = alice.start("sleep", &args(&["600"])).await.unwrap_err();
    assert_eq!(message(&e), quota_message(2));

    for (who, id) in [(&alice, &second.id), (&alice, &third.id), (&bob, &bobs.id)] {
        assert_eq!(who.stop(id).await.unwrap().state(), State::Stopped);
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_reported_stopped_no_longer_counts_against_the_quota() {
    // Scenario: with max_running_jobs = 1, alice starts a job, stops it and
    // starts the next as soon as Stop answers, 30 times: a job the server
    // has reported final must never still hold her only slot. (The
    // supervisor publishes the final state a moment before it frees the
    // slot; a Stop answer and a new Start must not fit in between.)
    let file = PolicyFile::new("[quota]\nmax_running_jobs = 1\n");
    let policy = file.handle();
    let server = server_with(&policy, None).await;
    let alice = client(&server, "alice").await;
    for round in 0..30 {
        let job = alice
            .start("sleep", &args(&["600"]))
            .await
            .unwrap_or_else(|e| panic!("round {round}: the start was refused: {e}"));
        let s = alice.stop(&job.id).await.unwrap();
        assert_eq!(s.state(), State::Stopped, "round {round}");
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_starts_never_exceed_the_running_jobs_quota() {
    // Scenario: with max_running_jobs = 3, alice fires 10 starts at once over
    // 5 connections: exactly 3 run, 7 are refused with the quota message,
    // and she has exactly 3 jobs.
    let file = PolicyFile::new("[quota]\nmax_running_jobs = 3\n");
    let policy = file.handle();
    let server = server_with(&policy, None).await;
    let results = parallel_starts(&server, 5, 2, "sleep", &["600"]).await;
    let alice = client(&server, "alice").await;
    let mut started: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().map(|s| s.id.clone()))
        .collect();
    assert_eq!(started.len(), 3, "{results:?}");
    for e in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(
            (code(e), message(e)),
            (Code::ResourceExhausted, quota_message(3))
        );
    }
    let mut listed = listed_ids(&alice).await;
    listed.sort();
    started.sort();
    assert_eq!(listed, started);
    for id in &started {
        assert_eq!(alice.stop(id).await.unwrap().state(), State::Stopped);
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_output_quota_keeps_exactly_that_many_bytes_and_stops_the_job() {
    // Scenario: with max_output_bytes = 1000 (bob: "1K" by override), a job
    // writing 1 MB and `yes` (which never ends) each end in OutputLimit
    // with exactly the quota's bytes, the same for a follower that was
    // waiting before the first byte, for Output and for Status; a job
    // writing less ends normally.
    let file = PolicyFile::new(&format!(
        "[quota]\nmax_output_bytes = 1000\n[users.\"{}\".quota]\nmax_output_bytes = \"1K\"\n",
        fp("bob")
    ));
    let policy = file.handle();
    let server = server_with(&policy, None).await;
    let alice = client(&server, "alice").await;
    let bob = client(&server, "bob").await;
    let dir = scratch();

    // 1 MB of zeros, written only once the follower is waiting.
    let script = format!(
        "{}; exec head -c 1000000 /dev/zero",
        wait_for(dir.path(), "go")
    );
    let job = start(&alice, "sh", &["-c", &script]).await;
    assert_eq!(job.max_output_bytes, Some(1000));
    let stream = alice.stream(&job.id).await.unwrap();
    trigger(dir.path(), "go");
    let followed = tokio::time::timeout(STREAM_DEADLINE, follow_stream(stream))
        .await
        .expect("the follower did not end");
    assert_eq!(followed.stdout(), vec![0u8; 1000]);
    assert_eq!(followed.stderr(), b"");
    let f = &followed.status;
    assert_eq!(
        (f.state(), f.max_output_bytes, f.output_bytes),
        (State::OutputLimit, Some(1000), 1000)
    );
    assert_eq!(
        collect_output(&alice, &job.id).await,
        (vec![0u8; 1000], vec![])
    );
    assert_eq!(&alice.status(&job.id).await.unwrap(), f);

    // `yes` is stopped by the quota: SIGTERM, which it does not catch.
    let yes = start(&alice, "yes", &[]).await;
    let followed = follow(&alice, &yes.id).await;
    assert_eq!(followed.stdout(), b"y\n".repeat(500));
    let f = &followed.status;
    assert_eq!(
        (
            f.state(),
            f.exit_code,
            f.signal,
            f.max_output_bytes,
            f.output_bytes
        ),
        (State::OutputLimit, None, Some(15), Some(1000), 1000)
    );
    assert_eq!(
        collect_output(&alice, &yes.id).await,
        (b"y\n".repeat(500), vec![])
    );

    // bob's override: "1K" is 1024 bytes.
    let yes = start(&bob, "yes", &[]).await;
    let followed = follow(&bob, &yes.id).await;
    assert_eq!(followed.stdout(), b"y\n".repeat(512));
    assert_eq!(
        (
            followed.status.state(),
            followed.status.max_output_bytes,
            followed.status.output_bytes
        ),
        (State::OutputLimit, Some(1024), 1024)
    );

    // Under the quota: a normal exit.
    let small = start(&alice, "head", &["-c", "999", "/dev/zero"]).await;
    let followed = follow(&alice, &small.id).await;
    assert_eq!(followed.stdout(), vec![0u8; 999]);
    let f = &followed.status;
    assert_eq!(
        (f.state(), f.exit_code, f.max_output_bytes, f.output_bytes),
        (State::Exited, Some(0), Some(1000), 999)
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_writes_exactly_its_quota_is_not_stopped() {
    // Scenario: with max_output_bytes = 1000, a job writes exactly 1000 bytes
    // and then, once the test has seen them, exits 3 on its own. It never
    // wrote more than its quota, so nothing was discarded and it must end
    // Exited with code 3, not OutputLimit (which the proto and `State`
    // define as "wrote more than max_output_bytes").
    let file = PolicyFile::new("[quota]\nmax_output_bytes = 1000\n");
    let policy = file.handle();
    let server = server_with(&policy, None).await;
    let alice = client(&server, "alice").await;
    let dir = scratch();
    let script = format!(
        "head -c 1000 /dev/zero; {}; exit 3",
        wait_for(dir.path(), "done")
    );
    let job = start(&alice, "sh", &["-c", &script]).await;
    let mut stream = alice.stream(&job.id).await.unwrap();
    assert_eq!(read_stdout(&mut stream, 1000).await, vec![0u8; 1000]);
    trigger(dir.path(), "done");
    let rest = tokio::time::timeout(STREAM_DEADLINE, follow_stream(stream))
        .await
        .expect("the stream did not end");
    assert_eq!(rest.chunks, vec![]);
    let f = &rest.status;
    assert_eq!(
        (f.state(), f.exit_code, f.signal, f.output_bytes),
        (State::Exited, Some(3), None, 1000),
        "a job that wrote exactly its quota was stopped"
    );
    server.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------
// Admins

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_sees_and_stops_every_users_jobs_and_is_audited() {
    // Scenario: carol is an admin: she lists everyone's jobs, reads the
    // status and output of bob's job, follows it and stops it (audited with
    // admin true and bob as owner). alice, not an admin, may not list
    // everyone's jobs nor stop bob's (NOT_FOUND, audited not_owner).
    let file = PolicyFile::new(&format!("admins = [\"{}\"]\n", fp("carol")));
    let policy = file.handle();
    let audit = Audit::new();
    let server = server_with(&policy, Some(&audit)).await;
    let alice = client(&server, "alice").await;
    let bob = client(&server, "bob").await;
    let carol = client(&server, "carol").await;

    let bobs = start(&bob, "sh", &["-c", "echo hello; exec sleep 600"]).await;
    let alices = start(&alice, "sleep", &["600"]).await;

    let mut all: Vec<(String, String)> = carol
        .list(true)
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.id, s.owner))
        .collect();
    all.sort();
    let mut expected = vec![
        (bobs.id.clone(), fp("bob")),
        (alices.id.clone(), fp("alice")),
    ];
    expected.sort();
    assert_eq!(all, expected);
    assert_eq!(carol.list(false).await.unwrap(), vec![]);

    let e = alice.list(true).await.unwrap_err();
    assert_eq!(
        (code(&e), message(&e).as_str()),
        (
            Code::PermissionDenied,
            "only admins may list every user's jobs"
        )
    );
    let e = bob.list(true).await.unwrap_err();
    assert_eq!(code(&e), Code::PermissionDenied);

    let mut stream = carol.stream(&bobs.id).await.unwrap();
    assert_eq!(read_lines(&mut stream, 1).await, b"hello\n");
    let s = carol.status(&bobs.id).await.unwrap();
    assert_eq!(
        (s.state(), s.owner.as_str()),
        (State::Running, fp("bob").as_str())
    );
    assert_eq!(
        collect_output(&carol, &bobs.id).await,
        (b"hello\n".to_vec(), vec![])
    );

    let e = alice.stop(&bobs.id).await.unwrap_err();
    assert_eq!(
        (code(&e), message(&e).as_str()),
        (Code::NotFound, NO_SUCH_JOB)
    );
    assert_eq!(bob.status(&bobs.id).await.unwrap().state(), State::Running);

    let s = carol.stop(&bobs.id).await.unwrap();
    assert_eq!((s.state(), s.signal), (State::Stopped, Some(15)));
    let followed = tokio::time::timeout(STREAM_DEADLINE, follow_stream(stream))
        .await
        .expect("carol's stream did not end");
    assert_eq!(followed.status.state(), State::Stopped);
    assert_eq!(bob.status(&bobs.id).await.unwrap().state(), State::Stopped);
    assert_eq!(
        alice.status(&alices.id).await.unwrap().state(),
        State::Running
    );

    let lines: Vec<Decision> = audit
        .about(&bobs.id)
        .iter()
        .map(AuditLine::decision)
        .collect();
    let id = Some(bobs.id.as_str());
    assert_eq!(
        lines,
        [
            decision("bob", "Start", id, Some("bob"), false, "allowed", None),
            decision("carol", "Stream", id, Some("bob"), true, "allowed", None),
            decision("carol", "Status", id, Some("bob"), true, "allowed", None),
            decision("carol", "Output", id, Some("bob"), true, "allowed", None),
            decision(
                "alice",
                "Stop",
                id,
                Some("bob"),
                false,
                "denied",
                Some("not_owner")
            ),
            decision("bob", "Status", id, Some("bob"), false, "allowed", None),
            decision("carol", "Stop", id, Some("bob"), true, "allowed", None),
            decision("bob", "Status", id, Some("bob"), false, "allowed", None),
        ]
    );
    let lists: Vec<Decision> = audit
        .lines()
        .into_iter()
        .filter(|l| l.rpc == "List")
        .map(|l| l.decision())
        .collect();
    assert_eq!(
        lists[..2],
        [
            decision("carol", "List", None, None, true, "allowed", None),
            decision("carol", "List", None, None, false, "allowed", None),
        ]
    );
    // (Whether a refused list of every user's jobs is marked admin is
    // checked on its own below.)
    let refused: Vec<(String, String, Option<String>)> = lists[2..]
        .iter()
        .map(|(who, _, _, _, _, outcome, reason)| (who.clone(), outcome.clone(), reason.clone()))
        .collect();
    assert_eq!(
        refused,
        [
            (
                fp("alice"),
                "denied".to_owned(),
                Some("admin_only".to_owned())
            ),
            (
                fp("bob"),
                "denied".to_owned(),
                Some("admin_only".to_owned())
            ),
        ]
    );
    alice.stop(&alices.id).await.unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_removes_an_admin_ends_their_streams_on_others_jobs() {
    // Scenario: carol, an admin, follows bob's job and her own; a reload
    // drops her from the admins: her stream on bob's job ends with NOT_FOUND
    // (as if the job did not exist, audited stream_ended_not_admin), her
    // stream on her own job goes on, and bob's job keeps running.
    let file = PolicyFile::new(&format!("admins = [\"{}\"]\n", fp("carol")));
    let policy = file.handle();
    let audit = Audit::new();
    let server = server_with(&policy, Some(&audit)).await;
    let bob = client(&server, "bob").await;
    let carol = client(&server, "carol").await;
    let bobs = start(&bob, "sh", &["-c", "echo hello; exec sleep 600"]).await;
    let carols = start(&carol, "sh", &["-c", "echo mine; exec sleep 600"]).await;
    let mut on_bobs = carol.stream(&bobs.id).await.unwrap();
    assert_eq!(read_lines(&mut on_bobs, 1).await, b"hello\n");
    let mut on_own = carol.stream(&carols.id).await.unwrap();
    assert_eq!(read_lines(&mut on_own, 1).await, b"mine\n");

    file.write("");
    assert_eq!(policy.reload().unwrap().admins, 0);

    let (more, status) = read_until_refused(&mut on_bobs, event_bytes).await;
    assert_eq!(more, 0);
    assert_eq!(
        (status.code(), status.message()),
        (Code::NotFound, NO_SUCH_JOB)
    );
    let e = carol.status(&bobs.id).await.unwrap_err();
    assert_eq!(
        (code(&e), message(&e).as_str()),
        (Code::NotFound, NO_SUCH_JOB)
    );
    assert_eq!(bob.status(&bobs.id).await.unwrap().state(), State::Running);

    // Her own stream was not ended: it sees her job's end.
    let s = carol.stop(&carols.id).await.unwrap();
    assert_eq!(s.state(), State::Stopped);
    let own = tokio::time::timeout(STREAM_DEADLINE, follow_stream(on_own))
        .await
        .expect("carol's own stream did not end");
    assert_eq!((own.stdout(), own.status.state()), (vec![], State::Stopped));

    let ended: Vec<Decision> = audit
        .about(&bobs.id)
        .iter()
        .filter(|l| l.outcome == "denied")
        .map(AuditLine::decision)
        .collect();
    assert_eq!(
        ended,
        [
            decision(
                "carol",
                "Stream",
                Some(&bobs.id),
                Some("bob"),
                true,
                "denied",
                Some("stream_ended_not_admin")
            ),
            decision(
                "carol",
                "Status",
                Some(&bobs.id),
                Some("bob"),
                false,
                "denied",
                Some("not_owner")
            ),
        ]
    );
    assert_eq!(bob.stop(&bobs.id).await.unwrap().state(), State::Stopped);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_list_of_every_users_jobs_is_not_audited_as_admin_access() {
    // Scenario: alice, not an admin, asks for every user's jobs and is
    // refused. The audit line says so (denied, admin_only) but must not mark
    // the call `"admin":true`, which the audit format reserves for a caller
    // who acted with admin rights (`Entry::admin`: "on someone else's job,
    // or listed every user's jobs"); alice did neither.
    let audit = Audit::new();
    let server = server_with(&PolicyHandle::default(), Some(&audit)).await;
    let alice = client(&server, "alice").await;
    let e = alice.list(true).await.unwrap_err();
    assert_eq!(code(&e), Code::PermissionDenied);
    let lines: Vec<Decision> = audit.lines().iter().map(AuditLine::decision).collect();
    assert_eq!(
        lines,
        [decision(
            "alice",
            "List",
            None,
            None,
            false,
            "denied",
            Some("admin_only")
        )]
    );
    server.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------
// Reloading a malformed policy

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_policy_is_refused_on_reload_and_the_old_one_stays() {
    // Scenario (C27): the operator edits the policy with a mistake that a
    // lenient parser would read as "no restriction" (a misspelled key, the
    // denylist under [rate], a number in quotes, fingerprints in another
    // spelling, a key given twice) and reloads: each reload fails naming the
    // file, line and key; bob stays denied and alice's quota of one running
    // job still holds. A correct edit then applies.
    let bob = fp("bob");
    let hex = bob.strip_prefix("sha256:").unwrap();
    let good = format!("denylist = [\"{bob}\"]\n[quota]\nmax_running_jobs = 1\n");
    let file = PolicyFile::new(&good);
    let policy = file.handle();
    let original = policy.current();
    let server = server_with(&policy, None).await;
    let alice = client(&server, "alice").await;
    let bob_client = client(&server, "bob").await;
    let running = start(&alice, "sleep", &["600"]).await;

    let upper = format!("sha256:{}", hex.to_uppercase());
    let short = format!("sha256:{}", &hex[..63]);
    let cases: Vec<(String, usize, &str)> = vec![
        (
            format!("denylst = [\"{bob}\"]\n[quota]\nmax_running_jobs = 1\n"),
            1,
            "denylst",
        ),
        (
            format!("[rate]\ndenylist = [\"{bob}\"]\n[quota]\nmax_running_jobs = 1\n"),
            2,
            "rate.denylist",
        ),
        (
            format!("{good}[rate]\nrequests_per_second = \"10\"\n"),
            5,
            "rate.requests_per_second",
        ),
        (
            format!("denylist = [\"{upper}\"]\n[quota]\nmax_running_jobs = 1\n"),
            1,
            "denylist[0]",
        ),
        (
            format!("denylist = [\"{hex}\"]\n[quota]\nmax_running_jobs = 1\n"),
            1,
            "denylist[0]",
        ),
        (
            format!(
                "denylist = [\n  \"{bob}\",\n  \"{short}\",\n]\n[quota]\nmax_running_jobs = 1\n"
            ),
            3,
            "denylist[1]",
        ),
        (
            format!("{good}max_running_jobs = 5\n"),
            4,
            "quota.max_running_jobs",
        ),
    ];
    for (text, line, key) in &cases {
        file.write(text);
        let e = policy.reload().expect_err(text);
        assert_eq!(
            (e.path.as_path(), e.line, e.key.as_deref()),
            (file.path().as_path(), Some(*line), Some(*key)),
            "{text}"
        );
        assert!(
            e.to_string().starts_with(&format!(
                "{}:{line}:{}: key '{key}': ",
                file.path().display(),
                e.column.expect("a column")
            )),
            "{e}"
        );
        assert_eq!(policy.current(), original, "{text}");
        assert_denylisted(text, &bob_client.list(false).await.unwrap_err());
        let e = alice.start("sleep", &args(&["600"])).await.unwrap_err();
        assert_eq!(
            (code(&e), message(&e)),
            (Code::ResourceExhausted, quota_message(1)),
            "{text}"
        );
    }

    // A correct edit applies: bob is let in, alice's quota is 2.
    file.write("[quota]\nmax_running_jobs = 2\n");
    policy.reload().expect("a valid policy");
    assert_eq!(bob_client.list(false).await.unwrap(), vec![]);
    let second = start(&alice, "sleep", &["600"]).await;
    for id in [&running.id, &second.id] {
        assert_eq!(alice.stop(id).await.unwrap().state(), State::Stopped);
    }
    server.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------
// Audit log

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_has_one_line_per_decision_in_order() {
    // Scenario: alice starts, follows, inspects, lists and stops a job; bob
    // asks for its status; alice asks about a malformed id and an unknown
    // one. The audit log holds exactly one JSON line per call, in order,
    // with the documented keys, RFC 3339 UTC times, the certificate subject
    // and the caller's address.
    let audit = Audit::new();
    let server = server_with(&PolicyHandle::default(), Some(&audit)).await;
    let alice = client(&server, "alice").await;
    let bob = client(&server, "bob").await;
    let before = time::OffsetDateTime::now_utc();

    let job = start(&alice, "sh", &["-c", "echo hi; exec sleep 600"]).await;
    let mut stream = alice.stream(&job.id).await.unwrap();
    assert_eq!(read_lines(&mut stream, 1).await, b"hi\n");
    drop(stream);
    assert_eq!(alice.status(&job.id).await.unwrap().state(), State::Running);
    assert_eq!(collect_output(&alice, &job.id).await.0, b"hi\n");
    assert_eq!(alice.list(false).await.unwrap().len(), 1);
    assert_eq!(alice.stop(&job.id).await.unwrap().state(), State::Stopped);
    let e = bob.status(&job.id).await.unwrap_err();
    assert_eq!(code(&e), Code::NotFound);
    let e = alice.status("not-a-uuid").await.unwrap_err();
    assert_eq!(code(&e), Code::InvalidArgument);
    let e = alice.stop(UNKNOWN_ID).await.unwrap_err();
    assert_eq!(code(&e), Code::NotFound);
    let e = alice.start("", &[]).await.unwrap_err();
    assert_eq!(code(&e), Code::InvalidArgument);
    let e = alice.start("no-such-program-here", &[]).await.unwrap_err();
    assert_eq!(code(&e), Code::InvalidArgument);
    let after = time::OffsetDateTime::now_utc();

    let lines = audit.lines();
    let id = Some(job.id.as_str());
    // A start whose program is missing was allowed (its id recorded before
    // the spawn) and then failed: two lines for one id that never ran.
    let never_ran = lines.last().and_then(|l| l.job.clone());
    let never_ran = never_ran.as_deref();
    assert!(never_ran.is_some_and(|j| j != job.id), "{lines:?}");
    assert_eq!(
        lines.iter().map(AuditLine::decision).collect::<Vec<_>>(),
        [
            decision("alice", "Start", id, Some("alice"), false, "allowed", None),
            decision("alice", "Stream", id, Some("alice"), false, "allowed", None),
            decision("alice", "Status", id, Some("alice"), false, "allowed", None),
            decision("alice", "Output", id, Some("alice"), false, "allowed", None),
            decision("alice", "List", None, None, false, "allowed", None),
            decision("alice", "Stop", id, Some("alice"), false, "allowed", None),
            decision(
                "bob",
                "Status",
                id,
                Some("alice"),
                false,
                "denied",
                Some("not_owner")
            ),
            decision(
                "alice",
                "Status",
                Some("not-a-uuid"),
                None,
                false,
                "denied",
                Some("malformed_job_id")
            ),
            decision(
                "alice",
                "Stop",
                Some(UNKNOWN_ID),
                None,
                false,
                "denied",
                Some("no_such_job")
            ),
            decision(
                "alice",
                "Start",
                None,
                None,
                false,
                "failed",
                Some("invalid_argument")
            ),
            decision(
                "alice",
                "Start",
                never_ran,
                Some("alice"),
                false,
                "allowed",
                None
            ),
            decision(
                "alice",
                "Start",
                never_ran,
                Some("alice"),
                false,
                "failed",
                Some("invalid_argument")
            ),
        ]
    );
    let mut last = before;
    for line in &lines {
        let time =
            time::OffsetDateTime::parse(&line.time, &time::format_description::well_known::Rfc3339)
                .unwrap_or_else(|e| panic!("time {:?} is not RFC 3339: {e}", line.time));
        assert_eq!(time.offset(), time::UtcOffset::UTC, "{line:?}");
        assert!(line.time.ends_with('Z'), "{line:?}");
        assert!(
            time >= last && time <= after,
            "{line:?} out of order or range"
        );
        last = time;
        let subject = if line.identity == fp("bob") {
            "CN=bob"
        } else {
            "CN=alice"
        };
        assert_eq!(line.subject, subject, "{line:?}");
        let peer: SocketAddr = line.peer.parse().expect("peer is ADDRESS:PORT");
        assert_eq!(peer.ip(), IpAddr::from(Ipv4Addr::LOCALHOST), "{line:?}");
        assert_ne!(peer.port(), server.port(), "{line:?}");
    }
    // One connection each: one peer address per user.
    let peers = |who: &str| {
        let mut p: Vec<&str> = lines
            .iter()
            .filter(|l| l.identity == fp(who))
            .map(|l| l.peer.as_str())
            .collect();
        p.dedup();
        p.len()
    };
    assert_eq!((peers("alice"), peers("bob")), (1, 1));
    server.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------
// Handshakes

/// [`raw_tls_on`] a connection from `source` (any loopback address) made by
/// this process, i.e. by this test's user.
async fn tls_from(
    source: IpAddr,
    server: &TestServer,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<Vec<u8>> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let tcp = socket
        .connect(server.addr().parse().expect("server address"))
        .await?;
    raw_tls_on(tcp, config).await
}

/// What one attempt of [`raw_tls_on`] came to: a full handshake (an anonymous
/// client gets the server's certificate_required alert, one with a
/// certificate the server's first HTTP/2 frame), or closed before any TLS
/// byte. Anything else fails the test.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Attempt {
    Handshake,
    Closed,
}

fn attempt(outcome: std::io::Result<Vec<u8>>) -> Attempt {
    match outcome {
        Ok(first) => {
            // An HTTP/2 frame header: 3 bytes length, type 0x4 (SETTINGS).
            assert!(first.len() >= 9, "{first:?}");
            assert_eq!(first[3], 0x04, "first frame is not SETTINGS: {first:?}");
            Attempt::Handshake
        }
        Err(e) => match received_alert(&e) {
            Some(rustls::AlertDescription::CertificateRequired) => Attempt::Handshake,
            Some(other) => panic!("unexpected alert {other:?}"),
            None => {
                assert!(
                    matches!(
                        e.kind(),
                        std::io::ErrorKind::UnexpectedEof
                            | std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::BrokenPipe
                    ),
                    "not a close: {e:?}"
                );
                Attempt::Closed
            }
        },
    }
}

/// Spends the handshake tokens of this test's user with 15 rapid anonymous
/// attempts from 127.0.0.1 under `[handshakes]` per_second = 1, burst = 5:
/// the first 5 get a full handshake, after them at most one more per second
/// the attempts lasted, every other one closed before any TLS byte.
async fn spend_the_burst(server: &TestServer) {
    let anonymous = raw_client_config(None);
    let began = tokio::time::Instant::now();
    let mut outcomes = Vec::new();
    for _ in 0..15 {
        let outcome = tls_from(Ipv4Addr::LOCALHOST.into(), server, anonymous.clone()).await;
        outcomes.push(attempt(outcome));
    }
    let took = began.elapsed();
    // A loaded machine may take over a second for five RSA-4096 handshakes.
    let refilled = took.as_secs() as usize + 1;
    assert_eq!(
        outcomes[..5],
        [Attempt::Handshake; 5],
        "{outcomes:?} in {took:?}"
    );
    let later = outcomes[5..]
        .iter()
        .filter(|o| **o == Attempt::Handshake)
        .count();
    assert!(later <= refilled.min(9), "{outcomes:?} in {took:?}");
}

/// Attempts from `source` with alice's certificate until one is closed
/// before TLS; fails if more got through than the one token per second
/// that refills meanwhile (and one more).
async fn cut_off_from(source: IpAddr, server: &TestServer) {
    let alice = pem("alice").client_config().expect("alice's TLS config");
    let began = tokio::time::Instant::now();
    let mut through = 0;
    while attempt(tls_from(source, server, alice.clone()).await) == Attempt::Handshake {
        through += 1;
        assert!(
            through <= began.elapsed().as_secs() as usize + 1,
            "alice from {source} was not cut off: {through} handshakes in {:?}",
            began.elapsed()
        );
    }
}

const ONE_PER_SECOND_BURST_5: &str = "[handshakes]\nper_second = 1\nburst = 5\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_flood_from_one_source_is_cut_off_before_tls() {
    // Scenario (C30): with 1 handshake per second and a burst of 5 per
    // source, 15 rapid attempts without a client certificate from this
    // test's user over 127.0.0.1 spend the burst; alice connecting as the
    // same local user is cut off too, from 127.0.0.1 and from 127.0.0.2
    // alike: a local user is one source whichever loopback address it uses.
    // (The CLI would retry; these are single attempts.)
    let file = PolicyFile::new(ONE_PER_SECOND_BURST_5);
    let policy = file.handle();
    let server = server_with(&policy, None).await;
    spend_the_burst(&server).await;
    cut_off_from(Ipv4Addr::LOCALHOST.into(), &server).await;
    cut_off_from(IpAddr::from([127, 0, 0, 2]), &server).await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn a_local_users_handshake_flood_leaves_another_users_tokens_alone() {
    // Scenario: this test's user (root) spends its burst of handshakes over
    // 127.0.0.1; alice connecting from a socket owned by uid 65534 (as
    // another local user's or another identity's job would) completes her
    // handshake at once, although she also comes from 127.0.0.1.
    let file = PolicyFile::new(ONE_PER_SECOND_BURST_5);
    let policy = file.handle();
    let server = server_with(&policy, None).await;
    spend_the_burst(&server).await;
    cut_off_from(Ipv4Addr::LOCALHOST.into(), &server).await;
    let alice = pem("alice").client_config().expect("alice's TLS config");
    for n in 0..5 {
        let tcp = connect_as(65534, &server);
        assert_eq!(
            attempt(raw_tls_on(tcp, alice.clone()).await),
            Attempt::Handshake,
            "uid 65534's handshake {n} of its own burst of 5"
        );
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_with_a_grant_is_audited_with_the_grant_named() {
    // Scenario: alice is granted allow_listen and allow_user_namespaces in
    // her own table; the audit line of her start names both grants, and
    // bob's start (no grant) has no grants key.
    let file = PolicyFile::new(&format!(
        "[users.\"{}\"]\nallow_listen = true\nallow_user_namespaces = true\n",
        fp("alice")
    ));
    let policy = file.handle();
    let audit = Audit::new();
    let server = server_with(&policy, Some(&audit)).await;
    let alice = client(&server, "alice").await;
    let bob = client(&server, "bob").await;
    let a = start(&alice, "true", &[]).await;
    let b = start(&bob, "true", &[]).await;
    let text = std::fs::read_to_string(audit.dir.path().join("audit.log")).unwrap();
    let start_line = |id: &str| -> serde_json::Value {
        let line = text
            .lines()
            .find(|l| l.contains(id) && l.contains("\"rpc\":\"Start\""))
            .unwrap_or_else(|| panic!("no Start line for {id}: {text}"));
        serde_json::from_str(line).unwrap()
    };
    let alices = start_line(&a.id);
    assert_eq!(alices["outcome"], "allowed");
    assert_eq!(
        alices["grants"],
        serde_json::json!(["allow_listen", "allow_user_namespaces"])
    );
    let bobs = start_line(&b.id);
    assert_eq!(bobs["outcome"], "allowed");
    assert!(bobs.get("grants").is_none(), "{bobs}");
    server.shutdown().await.expect("serve failed");
}

/// The number on the last complete line of `text` that holds one.
fn last_count(text: &[u8]) -> Option<u64> {
    let complete = &text[..text.iter().rposition(|b| *b == b'\n')? + 1];
    complete
        .split(|b| *b == b'\n')
        .rev()
        .find_map(|l| std::str::from_utf8(l).ok()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn a_stalled_audit_disk_holds_only_the_requests_waiting_for_their_line() {
    // Scenario: the audit log's disk stalls (here: frozen with fsfreeze)
    // while alice follows a job that prints a line every 10 ms. Two status
    // requests, as many as the runtime has worker threads, wait for their
    // audit lines; the stream keeps flowing meanwhile. Once the disk
    // thaws, both requests answer and their lines are in the log.
    let dir = tempfile::Builder::new()
        .prefix("jobs-audit-frozen-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let fs = LoopExt4::mount(dir.path());
    let path = fs.at.join("audit.log");
    let log = Arc::new(AuditLog::open(&path).unwrap());
    let server = TestServer::start_with(move |c| c.audit = Some(log)).await;
    let alice = client(&server, "alice").await;
    let counter = start(
        &alice,
        "sh",
        &[
            "-c",
            "i=0; while [ $i -lt 100000 ]; do echo $i; i=$((i+1)); sleep 0.01; done",
        ],
    )
    .await;
    let mut stream = alice.stream(&counter.id).await.expect("open stream");
    let mut stdout = Vec::new();
    let mut read_until = async |stdout: &mut Vec<u8>, count: u64| {
        while last_count(stdout).is_none_or(|n| n < count) {
            match next_chunk(&mut stream).await {
                Some(data) => stdout.extend(data),
                None => panic!("the stream ended: {:?}", String::from_utf8_lossy(stdout)),
            }
        }
    };
    timeout(TIMEOUT, read_until(&mut stdout, 5))
        .await
        .expect("the job's first lines");
    let lines_before = std::fs::read_to_string(&path).unwrap().lines().count();

    let frozen = Frozen::freeze(&fs.at, Duration::from_secs(30));
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let (alice, id) = (alice.clone(), counter.id.clone());
            tokio::spawn(async move { alice.status(&id).await })
        })
        .collect();
    // 50 more lines (half a second or more) reach the follower while both
    // requests wait for the disk.
    let seen = last_count(&stdout).unwrap();
    timeout(TIMEOUT, read_until(&mut stdout, seen + 50))
        .await
        .expect("the stream stalled behind the frozen audit disk");
    assert!(
        waiting.iter().all(|w| !w.is_finished()),
        "a request answered without its audit line being written"
    );
    frozen.thaw();
    for w in waiting {
        let status = timeout(TIMEOUT, w)
            .await
            .expect("a status after the thaw")
            .unwrap()
            .expect("status");
        assert_eq!(status.state(), State::Running);
    }
    let lines: Vec<Value> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .skip(lines_before)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    for line in &lines {
        assert_eq!(
            (&line["rpc"], &line["job"], &line["outcome"]),
            (
                &Value::from("Status"),
                &Value::from(counter.id.as_str()),
                &Value::from("allowed")
            )
        );
    }
    alice.stop(&counter.id).await.unwrap();
    server.shutdown().await.unwrap();
}

/// The data of the next output chunk of a Stream call; `None` at its end.
async fn next_chunk(stream: &mut Streaming<proto::StreamEvent>) -> Option<Vec<u8>> {
    use proto::stream_event::Event;
    match stream.message().await.expect("stream failed")?.event {
        Some(Event::Chunk(c)) => Some(c.data),
        Some(Event::FinalStatus(s)) => panic!("the job ended: {s:?}"),
        None => panic!("stream event without content"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn an_audit_line_that_cannot_be_written_fails_the_request_and_changes_nothing() {
    // Scenario: the audit log's file system fills up. Every request whose
    // line cannot be written gets INTERNAL and is not carried out: no job
    // starts, a running job is not stopped, a finished one is not removed.
    // Once there is room again, the same requests work.
    require_root();
    let dir = tempfile::Builder::new()
        .prefix("jobs-audit-full-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let fs = dir.path().join("fs");
    let _tmpfs = Tmpfs::mount(&fs, "64k", None);
    let log = Arc::new(AuditLog::open(&fs.join("audit.log")).unwrap());
    let server = TestServer::start_with(move |c| c.audit = Some(log)).await;
    let alice = client(&server, "alice").await;
    let sleeper = start(&alice, "sleep", &["600"]).await;
    let done = start(&alice, "true", &[]).await;
    assert_eq!(follow(&alice, &done.id).await.status.state(), State::Exited);

    // Fill the file system; the audit file's last page may still take a few
    // lines, so ask (a status, which changes nothing) until one fails.
    let filler = fs.join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 128 * 1024]);
    let mut failed = None;
    for _ in 0..100 {
        if let Err(e) = alice.status(&sleeper.id).await {
            failed = Some(e);
            break;
        }
    }
    let internal = |e: &ClientError| {
        assert_eq!(code(e), Code::Internal, "{e:?}");
        assert!(
            message(e).starts_with("internal error (reference "),
            "{}",
            message(e)
        );
    };
    internal(&failed.expect("the audit file system never filled"));
    internal(
        &alice
            .start("echo", &["unrecorded".into()])
            .await
            .unwrap_err(),
    );
    internal(&alice.stop(&sleeper.id).await.unwrap_err());
    internal(&alice.remove(&done.id).await.unwrap_err());

    std::fs::remove_file(&filler).unwrap();
    let mut listed: Vec<(String, State)> = alice
        .list(false)
        .await
        .unwrap()
        .into_iter()
        .map(|j| (j.id.clone(), j.state()))
        .collect();
    listed.sort();
    let mut want = vec![
        (sleeper.id.clone(), State::Running),
        (done.id.clone(), State::Exited),
    ];
    want.sort();
    assert_eq!(listed, want, "a refused request changed something");
    alice.stop(&sleeper.id).await.unwrap();
    alice.remove(&done.id).await.unwrap();
    server.shutdown().await.unwrap();
}

//! One account per identity: each identity's contained jobs run as a uid
//! and gid of its own from the daemon's range, kept across jobs and
//! restarts; a full range refuses new identities; a range that overlaps an
//! account of the machine, or is malformed, stops jobsd at start-up.
//!
//! Most tests need root (containment); CI runs them as root, elsewhere each
//! is reported as ignored (needs root) when built as another user.

mod common;

use std::process::{Command, Stdio};

use common::*;
use jobs::accounts::{DEFAULT_UID_RANGE, UidRange};
use jobs::client::Client;

/// A block of uids for one test, away from the default range, so that jobs
/// of other tests running at the same time (whose identities get the
/// default range's first uids) share no per-uid kernel state with it.
fn private_range(block: u32, len: u32) -> UidRange {
    let first = 0x7900_0000 + block * 0x1_0000;
    UidRange::new(first, first + len - 1).unwrap()
}

/// The stdout of `sh -c SCRIPT` run by `client`, once it ended with 0.
async fn run_sh(client: &Client, script: &str) -> String {
    let job = start(client, "sh", &["-c", script]).await;
    let f = follow(client, &job.id).await;
    assert_eq!(f.status.exit_code, Some(0), "{script}: {:?}", f.stderr());
    String::from_utf8(f.stdout()).unwrap()
}

/// What a job tells of its ids: `id -u`, `id -g`, its user namespace, and
/// the Uid and Gid lines of /proc/self/status (real, effective, saved and
/// file-system ids).
const IDS: &str =
    "id -u; id -g; readlink /proc/self/ns/user; grep -E '^(Uid|Gid):' /proc/self/status";

/// `uid` in all four places, as [`IDS`] prints it.
fn ids_of(uid: u32, userns: &str) -> String {
    format!(
        "{uid}\n{uid}\n{userns}\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\nGid:\t{uid}\t{uid}\t{uid}\t{uid}\n"
    )
}

/// The user namespace jobs run in: the host's (jobs get none of their own).
fn host_userns() -> String {
    std::fs::read_link("/proc/self/ns/user")
        .unwrap()
        .display()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn each_identity_has_its_own_uid_for_good() {
    // Scenario: alice and bob use one server: their jobs run as different
    // uids and gids (so the kernel gives them different user keyrings and
    // per-user limits); alice's jobs always as the same one, after a
    // restart too, whoever starts first then.
    require_root();
    let userns = host_userns();
    let server = TestServer::start().await;
    let (alice, bob) = (client(&server, "alice").await, client(&server, "bob").await);
    let first = DEFAULT_UID_RANGE.first();
    assert_eq!(run_sh(&alice, IDS).await, ids_of(first, &userns));
    assert_eq!(run_sh(&bob, IDS).await, ids_of(first + 1, &userns));
    assert_eq!(run_sh(&alice, IDS).await, ids_of(first, &userns));

    let (result, state) = server.shutdown_keeping_state().await;
    result.unwrap();
    let server = TestServer::start_on(state, true, |_| {}).await;
    let (alice, bob) = (client(&server, "alice").await, client(&server, "bob").await);
    assert_eq!(run_sh(&bob, IDS).await, ids_of(first + 1, &userns));
    assert_eq!(run_sh(&alice, IDS).await, ids_of(first, &userns));
    // Both are in the host's user namespace, where the kernel keys the user
    // and user-session keyrings by uid (keyrings(7)): different uids,
    // different keyrings.
    assert_eq!(userns, host_userns());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn parallel_first_starts_give_each_identity_one_uid() {
    // Scenario: three identities start three jobs each, all at once, on a
    // new server: every identity's jobs share one uid, no two identities do.
    require_root();
    let range = private_range(1, 16);
    let server = TestServer::start_with(|c| c.jobs.uid_range = Some(range)).await;
    let mut clients = Vec::new();
    for name in ["alice", "bob", "carol"] {
        clients.push((name, client(&server, name).await));
    }
    let runs = clients.iter().flat_map(|(name, c)| {
        (0..3).map(move |_| async move { (*name, run_sh(c, "id -u; id -g").await) })
    });
    let outputs = futures_util::future::join_all(runs).await;
    let mut by_name = std::collections::BTreeMap::new();
    for (name, out) in outputs {
        let (uid, gid) = out.trim_end().split_once('\n').unwrap();
        assert_eq!(uid, gid, "{name}");
        let uid: u32 = uid.parse().unwrap();
        assert!(range.contains(uid), "{name}: {uid}");
        assert_eq!(*by_name.entry(name).or_insert(uid), uid, "{name}");
    }
    let mut uids: Vec<u32> = by_name.values().copied().collect();
    uids.sort_unstable();
    assert_eq!(
        uids,
        vec![range.first(), range.first() + 1, range.first() + 2]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn one_identity_using_up_its_inotify_instances_leaves_others_theirs() {
    // Scenario: alice's job opens inotify instances until the kernel's
    // per-user limit refuses more; bob's job can still open one. With one
    // shared account the limit would have been reached for both.
    require_root();
    let limit: usize = std::fs::read_to_string("/proc/sys/fs/inotify/max_user_instances")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Each instance is a descriptor: above the jobs' descriptor limit the
    // process limit, not the per-user one, would stop the loop.
    let (nofile, _) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    if limit as u64 + 16 > nofile {
        skip_here(
            "one_identity_using_up_its_inotify_instances_leaves_others_theirs",
            &format!(
                "fs.inotify.max_user_instances ({limit}) is not below the open-file limit ({nofile})"
            ),
        );
        return;
    }
    let range = private_range(2, 2);
    let server = TestServer::start_with(|c| c.jobs.uid_range = Some(range)).await;
    let (alice, bob) = (client(&server, "alice").await, client(&server, "bob").await);
    let hog = "import ctypes, os, time\n\
               libc = ctypes.CDLL(None, use_errno=True)\n\
               n = 0\n\
               while libc.inotify_init1(0) >= 0:\n    n += 1\n\
               print(n, os.strerror(ctypes.get_errno()), flush=True)\n\
               time.sleep(600)\n";
    let job = start(&alice, "/usr/bin/python3", &["-c", hog]).await;
    let mut stream = alice.stream(&job.id).await.unwrap();
    let line = String::from_utf8(read_lines(&mut stream, 1).await).unwrap();
    // Every instance of alice's uid is this job's: it got exactly the limit.
    assert_eq!(line, format!("{limit} Too many open files\n"));
    let one = "import ctypes, os\n\
               libc = ctypes.CDLL(None, use_errno=True)\n\
               fd = libc.inotify_init1(0)\n\
               print('ok' if fd >= 0 else os.strerror(ctypes.get_errno()))\n";
    let job2 = start(&bob, "/usr/bin/python3", &["-c", one]).await;
    let f = follow(&bob, &job2.id).await;
    assert_eq!(String::from_utf8(f.stdout()).unwrap(), "ok\n");
    alice.stop(&job.id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn a_full_range_refuses_new_identities_and_creates_nothing() {
    // Scenario: two uids, three identities: the third is refused with
    // RESOURCE_EXHAUSTED naming the range; no job or record of it exists,
    // not even after a restart; the first two keep working.
    require_root();
    let range = private_range(3, 2);
    let server = TestServer::start_with(|c| c.jobs.uid_range = Some(range)).await;
    let alice = client(&server, "alice").await;
    let bob = client(&server, "bob").await;
    let carol = client(&server, "carol").await;
    assert_eq!(
        run_sh(&alice, "id -u").await,
        format!("{}\n", range.first())
    );
    assert_eq!(run_sh(&bob, "id -u").await, format!("{}\n", range.last()));
    let err = carol.start("true", &[]).await.unwrap_err();
    assert_eq!(code(&err), tonic::Code::ResourceExhausted);
    assert_eq!(
        message(&err),
        format!(
            "the server has no uid left for a new identity: its range {range} is used up; ask the server's operator"
        )
    );
    assert!(listed_ids(&carol).await.is_empty());
    assert_eq!(listed_ids(&alice).await.len(), 1);

    let (result, state) = server.shutdown_keeping_state().await;
    result.unwrap();
    let server = TestServer::start_on(state, true, |c| c.jobs.uid_range = Some(range)).await;
    let carol = client(&server, "carol").await;
    assert!(listed_ids(&carol).await.is_empty());
    let err = carol.start("true", &[]).await.unwrap_err();
    assert_eq!(code(&err), tonic::Code::ResourceExhausted);
    let bob = client(&server, "bob").await;
    assert_eq!(run_sh(&bob, "id -u").await, format!("{}\n", range.last()));
    // The database holds exactly the two assignments and no row of carol's.
    let (result, state) = server.shutdown_keeping_state().await;
    result.unwrap();
    let db = rusqlite::Connection::open(state.path().join(jobs::store::FILE_NAME)).unwrap();
    let rows: Vec<(u32, String)> = db
        .prepare("SELECT uid, owner FROM uids ORDER BY uid")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        rows,
        vec![
            (range.first(), identity("alice").to_string()),
            (range.last(), identity("bob").to_string())
        ]
    );
    let carols: i64 = db
        .query_row(
            "SELECT count(*) FROM jobs WHERE owner = ?1",
            [identity("carol").to_string()],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(carols, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn a_shared_account_is_still_possible() {
    // Scenario: the operator chose one account for everyone (jobsd
    // --run-as): jobs of both identities run as it.
    require_root();
    let server = TestServer::start_contained(
        |c| c.account = Some(jobs::job::Account::lookup("nobody", false).unwrap()),
        |c| c.jobs.uid_range = None,
    )
    .await;
    let (alice, bob) = (client(&server, "alice").await, client(&server, "bob").await);
    assert_eq!(run_sh(&alice, "id -u; id -g").await, "65534\n65534\n");
    assert_eq!(run_sh(&bob, "id -u; id -g").await, "65534\n65534\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn a_real_account_for_an_identity_wins_over_the_range() {
    // Scenario: the operator maps alice to a real account (--run-as-for):
    // her jobs run as it and she takes no uid of the range; bob gets the
    // range's first.
    require_root();
    let range = private_range(4, 2);
    let server = TestServer::start_with(|c| {
        c.jobs.uid_range = Some(range);
        c.jobs.accounts.insert(
            identity("alice"),
            jobs::job::Account::lookup("nobody", false).unwrap(),
        );
    })
    .await;
    let (alice, bob) = (client(&server, "alice").await, client(&server, "bob").await);
    assert_eq!(run_sh(&alice, "id -u; id -g").await, "65534\n65534\n");
    let first = range.first();
    assert_eq!(
        run_sh(&bob, "id -u; id -g").await,
        format!("{first}\n{first}\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn a_uid_that_a_local_account_has_is_never_used() {
    // Scenario: the range holds the uid of a real account that the start-up
    // check did not see (a name service that does not list its accounts,
    // here a server built without the check): the start is refused and
    // nothing runs as that account; a later start is refused again.
    require_root();
    let daemon = jobs::job::Account::lookup("daemon", false).unwrap();
    let range = UidRange::new(daemon.uid, daemon.uid).unwrap();
    let server = TestServer::start_with(|c| c.jobs.uid_range = Some(range)).await;
    let alice = client(&server, "alice").await;
    for _ in 0..2 {
        let err = alice.start("true", &[]).await.unwrap_err();
        assert_eq!(
            (code(&err), message(&err)),
            (
                tonic::Code::FailedPrecondition,
                "the server cannot give your jobs an account of their own now; ask the server's operator"
                    .to_owned()
            )
        );
    }
    assert!(listed_ids(&alice).await.is_empty());
}

/// Runs jobsd (see [`jobsd`]) expecting it to refuse to start; returns its
/// stderr, which must be the one error line.
fn jobsd_refuses(extra: &[&str]) -> String {
    let out = jobsd(extra);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        (out.status.code(), String::from_utf8(out.stdout).unwrap()),
        (Some(1), String::new()),
        "{extra:?}: {stderr}"
    );
    stderr
}

/// Runs jobsd with the test server certificate, a new state directory and
/// `extra`, with its log off, until it exits.
fn jobsd(extra: &[&str]) -> std::process::Output {
    let pem = server_pem();
    let state = tempfile::Builder::new()
        .prefix("jobs-state-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_jobsd"))
        .args(["--listen", "127.0.0.1:0", "--ca"])
        .arg(&pem.ca)
        .arg("--cert")
        .arg(&pem.cert)
        .arg("--key")
        .arg(&pem.key)
        .arg("--state-dir")
        .arg(state.path())
        .args(extra)
        .env("RUST_LOG", "off")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn a_malformed_uid_range_is_a_one_line_error_naming_the_flag() {
    // Scenario: typos in --uid-range stop jobsd before it serves, saying
    // which flag and why, in any containment mode.
    for (value, why) in [
        ("10-5", "10-5 is empty: FIRST is above LAST".to_owned()),
        (
            "0-1000",
            "0-1000 includes uid 0, root, which no identity may have".to_owned(),
        ),
        (
            "65000-65534",
            "65000-65534 includes uid 65534, the overflow uid, nobody, which no identity may have"
                .to_owned(),
        ),
        (
            "70000-4294967296",
            "'70000-4294967296' is not a range FIRST-LAST of uids, e.g. 2013265920-2013331455"
                .to_owned(),
        ),
        (
            "lots",
            "'lots' is not a range FIRST-LAST of uids, e.g. 2013265920-2013331455".to_owned(),
        ),
    ] {
        assert_eq!(
            jobsd_refuses(&["--uid-range", value]),
            format!("jobsd: error: --uid-range: {why}\n"),
            "{value}"
        );
    }
}

#[test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
fn a_uid_range_over_an_existing_account_stops_jobsd() {
    // Scenario: the operator's range holds the uid of a real account
    // (`daemon`): its files and processes would become some identity's, so
    // jobsd refuses to start, naming the account and the range.
    require_root();
    let daemon = jobs::job::Account::lookup("daemon", false).unwrap();
    let range = format!("{}-{}", daemon.uid, daemon.uid + 1);
    assert_eq!(
        jobsd_refuses(&["--uid-range", &range]),
        format!(
            "jobsd: error: --uid-range: {range} overlaps the account 'daemon' (uid {}) of the user database\n",
            daemon.uid
        )
    );
    // Sharing one account and giving a range at once is a contradiction.
    let out = jobsd(&["--run-as", "nobody", "--uid-range", "70000-70001"]);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with(
            "error: the argument '--run-as <USER>' cannot be used with '--uid-range <FIRST-LAST>'"
        ),
        "{stderr}"
    );
}

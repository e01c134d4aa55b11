//! The kernel sandbox of contained jobs: the seccomp filter, Landlock (the
//! file system read-only outside the private places, no TCP listening,
//! abstract sockets and signals scoped to the job), the empty capability
//! bounding set, the cgroup view and the private home.
//!
//! Jobs run through the real contained executor (cgroup, `jobs-init`,
//! namespaces, account) made from the harness's [`common::contain_config`],
//! so a test can set a job's permits and account; one test goes through the
//! whole server. Every test needs root (ignored, with the reason, when built as
//! another user). Probes are
//! `/bin/sh` and `/usr/bin/perl -e 'syscall(…)'` (perl-base is Essential on
//! Debian) with the x86_64 system-call numbers.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::*;
use jobs::exec::{ContainConfig, LocalExecutor};
use jobs::job::{
    Account, Ended, Executor, ExitInfo, JobPermits, JobSignal, JobSpec, Launch, ResourceLimits,
    Spawned,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

/// Far above what any job here needs; reaching it fails the test.
const DEADLINE: Duration = Duration::from_secs(30);

const NO_PERMITS: JobPermits = JobPermits {
    listen: false,
    user_namespaces: false,
};

/// A contained executor as the harness's servers have, changed by `tweak`.
/// The temporary directory names its cgroup subtree and must outlive it.
fn executor(tweak: impl FnOnce(&mut ContainConfig)) -> (LocalExecutor, tempfile::TempDir) {
    let state = tempfile::tempdir().expect("state dir");
    let mut config = contain_config(state.path()).expect("root");
    // The executor is driven directly here, without the engine that names
    // each identity's account: jobs without one run as nobody.
    config.account = Some(Account::lookup("nobody", false).expect("account nobody"));
    tweak(&mut config);
    (
        LocalExecutor::contained(config).expect("contain jobs"),
        state,
    )
}

/// A job name unique in this test binary.
fn job_name() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "iso-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}

async fn spawn(
    exec: &LocalExecutor,
    account: Option<&Account>,
    permits: JobPermits,
    name: &str,
    program: &str,
    args: &[&str],
) -> Spawned {
    let spec = JobSpec::new(program.into(), args.iter().map(|a| a.to_string()).collect())
        .expect("job spec");
    let limits = ResourceLimits::default();
    exec.spawn(Launch {
        name,
        spec: &spec,
        limits: &limits,
        account,
        owner: "id-0000000000000000",
        owner_limits: &limits,
        permits,
        max_output_bytes: None,
    })
    .await
    .unwrap_or_else(|e| panic!("start {program} {args:?}: {e:?}"))
}

/// What a job printed and how it ended.
struct Done {
    stdout: String,
    stderr: String,
    exit: ExitInfo,
}

async fn finish(mut spawned: Spawned) -> Done {
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let (out, err) = tokio::join!(
        spawned.stdout.read_to_end(&mut stdout),
        spawned.stderr.read_to_end(&mut stderr)
    );
    out.expect("stdout");
    err.expect("stderr");
    spawned.process.exited().await.expect("exited");
    let Ended { exit, .. } = spawned.process.finish().await.expect("finish");
    Done {
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        exit,
    }
}

/// Runs one job to its end.
async fn run_with(
    exec: &LocalExecutor,
    account: Option<&Account>,
    permits: JobPermits,
    program: &str,
    args: &[&str],
) -> Done {
    let name = job_name();
    let spawned = spawn(exec, account, permits, &name, program, args).await;
    tokio::time::timeout(DEADLINE, finish(spawned))
        .await
        .expect("job within the deadline")
}

async fn run(exec: &LocalExecutor, program: &str, args: &[&str]) -> Done {
    run_with(exec, None, NO_PERMITS, program, args).await
}

/// The perl probe: for each `NR,ARG,…` argument, one line `NR=E<errno>` or
/// `NR=R<return value>`. Arguments are numbers (`0x…` for hex).
const PROBE: &str = r#"for (@ARGV) { my ($nr, @a) = map { /^0x/ ? hex($_) : $_ + 0 } split /,/; my $r = syscall($nr, @a); print "$nr=", ($r == -1 ? "E" . ($! + 0) : "R$r"), "\n"; }"#;

/// Runs the probe in a job; returns its lines.
async fn probe(exec: &LocalExecutor, permits: JobPermits, calls: &[&str]) -> Vec<String> {
    let mut args = vec!["-e", PROBE];
    args.extend_from_slice(calls);
    let done = run_with(exec, None, permits, "/usr/bin/perl", &args).await;
    assert_eq!(done.exit, ExitInfo::Exited(0), "stderr: {}", done.stderr);
    done.stdout.lines().map(str::to_owned).collect()
}

/// The line the probe prints for `call` answered with `errno`.
fn refused(call: &str, errno: i32) -> String {
    let nr = call.split(',').next().unwrap();
    let nr = nr.strip_prefix("0x").map_or_else(
        || nr.parse::<i64>().unwrap(),
        |h| i64::from_str_radix(h, 16).unwrap(),
    );
    format!("{nr}=E{errno}")
}

// ---------------------------------------------------------------------------
// The filter is installed, capabilities are gone

#[tokio::test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn a_job_runs_under_a_seccomp_filter_with_no_capabilities() {
    // Scenario: a job reads its own status through the real server; it has
    // a seccomp filter (mode 2), no_new_privs and empty capability sets,
    // bounding set included, so no setuid or file-capability program can
    // give it anything.
    require_root();
    let server = TestServer::start().await;
    let alice = client(&server, "alice").await;
    let job = start(
        &alice,
        "grep",
        &[
            "-E",
            "^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):",
            "/proc/self/status",
        ],
    )
    .await;
    let out = follow(&alice, &job.id).await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout()),
        "CapInh:\t0000000000000000\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\n\
         CapBnd:\t0000000000000000\nCapAmb:\t0000000000000000\nNoNewPrivs:\t1\nSeccomp:\t2\n"
    );
}

// ---------------------------------------------------------------------------
// One test per refused group (x86_64 numbers)

#[cfg(target_arch = "x86_64")]
macro_rules! refused_group {
    ($name:ident, $scenario:literal, $errno:expr, [$($call:literal),+ $(,)?]) => {
        #[tokio::test]
        #[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
        async fn $name() {
            require_root();
            let (exec, _state) = executor(|_| {});
            let calls = [$($call),+];
            let lines = probe(&exec, NO_PERMITS, &calls).await;
            let expected: Vec<String> = calls.iter().map(|c| refused(c, $errno)).collect();
            assert_eq!(lines, expected, "{}", $scenario);
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod groups {
    use super::*;

    refused_group!(
        keyring_calls_are_refused,
        "a job may not read or fill kernel keyrings, which are not namespaced",
        libc::EPERM,
        ["248,0,0,0,0,0", "250,0,0,0", "249,0,0,0,0"]
    );
    refused_group!(
        bpf_is_refused,
        "a job may not load eBPF programs",
        libc::EPERM,
        ["321,0,0,0"]
    );
    refused_group!(
        perf_event_open_is_refused,
        "a job may not open performance events",
        libc::EPERM,
        ["298,0,0,-1,-1,0"]
    );
    refused_group!(
        userfaultfd_is_refused,
        "a job may not stall the kernel with userfaultfd",
        libc::EPERM,
        ["323,0", "323,1"]
    );
    refused_group!(
        io_uring_is_refused,
        "a job may not go around the filter with io_uring",
        libc::EPERM,
        ["425,1,0", "426,-1,0,0,0,0,0", "427,-1,0,0,0"]
    );
    refused_group!(
        mount_calls_are_refused,
        "a job may not mount, unmount or pivot",
        libc::EPERM,
        [
            "165,0,0,0,0,0",
            "166,0,0",
            "155,0,0",
            "430,0,0",
            "431,-1,0,0,0,0",
            "432,-1,0,0",
            "433,-1,0,0",
            "428,-1,0,0",
            "429,-1,0,-1,0,0",
            "442,-1,0,0,0,0",
            "467,-1,0,0,0,0"
        ]
    );
    refused_group!(
        namespace_calls_are_refused,
        "a job may not make or enter namespaces: unshare and clone with CLONE_NEW* flags, setns",
        libc::EPERM,
        [
            "272,0x10000000",
            "272,0x20000",
            "272,0x80",
            "308,-1,0",
            "56,0x10000011,0,0,0,0",
            "56,0x40000011,0,0,0,0"
        ]
    );
    refused_group!(
        clone3_answers_enosys,
        "clone3's flags cannot be checked, so it is unavailable and libc falls back to clone",
        libc::ENOSYS,
        ["435,0,0", "435,0,88"]
    );
    refused_group!(
        module_calls_are_refused,
        "a job may not load or remove kernel modules",
        libc::EPERM,
        ["175,0,0,0", "313,-1,0,0", "176,0,0"]
    );
    refused_group!(
        kexec_and_reboot_are_refused,
        "a job may not replace or reboot the kernel",
        libc::EPERM,
        ["246,0,0,0,0", "320,-1,-1,0,0,0", "169,0,0,0,0"]
    );
    refused_group!(
        clock_calls_are_refused,
        "a job may not set the host's clocks",
        libc::EPERM,
        ["164,0,0", "227,9999,0", "305,9999,0", "159,0"]
    );
    refused_group!(
        swap_acct_and_quota_are_refused,
        "a job may not touch swap, process accounting or quotas",
        libc::EPERM,
        ["167,0,0", "168,0", "163,0", "179,0,0,0,0", "443,-1,0,0,0"]
    );
    refused_group!(
        file_handle_calls_are_refused,
        "a job may not open files by handle around directory permissions",
        libc::EPERM,
        ["304,-1,0,0", "303,-1,0,0,0,0"]
    );
    refused_group!(
        odd_personalities_are_refused,
        "a job may not switch to a persona such as ADDR_NO_RANDOMIZE or READ_IMPLIES_EXEC",
        libc::EPERM,
        ["135,0x0040000", "135,0x0400000", "135,0x7"]
    );
    refused_group!(
        kernel_admin_calls_are_refused,
        "a job may not read the kernel log or use dcookies, nfsservctl or fanotify",
        libc::EPERM,
        ["103,10,0,0", "212,0,0,0", "180,0,0,0", "300,0,0"]
    );
    refused_group!(
        x86_legacy_calls_are_refused,
        "a job may not use port IO or obsolete x86 calls",
        libc::EPERM,
        [
            "172,0",
            "173,0,0,0",
            "134,0",
            "136,0,0",
            "139,2,0,0",
            "156,0"
        ]
    );
    refused_group!(
        x32_abi_calls_are_refused,
        "the x32 ABI (__X32_SYSCALL_BIT) cannot reach a call under another number",
        libc::EPERM,
        ["0x40000027", "0x400000fa,0,0,0", "0x40000110,0x10000000"]
    );
}

#[cfg(target_arch = "x86_64")]
#[tokio::test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn the_filter_answers_where_the_kernel_would_not() {
    // Scenario: the same calls without the filter succeed or fail with
    // another errno, so the EPERMs above come from the filter, not from the
    // kernel's own permission checks; the harmless personality query and
    // ordinary calls still work with it.
    require_root();
    let calls = [
        "250,0,0,0",      // keyctl(GET_KEYRING_ID, 0): ENOKEY or EINVAL
        "248,0,0,0,0,0",  // add_key(NULL…): EFAULT
        "323,0x7fff",     // userfaultfd(bad flags): EINVAL
        "425,1,0",        // io_uring_setup(1, NULL): EFAULT
        "272,0x10000000", // unshare(CLONE_NEWUSER): allowed on this host
        "308,-1,0",       // setns(-1): EBADF
        "159,0",          // adjtimex(NULL): EFAULT
        "227,9999,0",     // clock_settime(bad clock): EINVAL
        "443,-1,0,0,0",   // quotactl_fd(-1): EBADF
        "135,0x0040000",  // personality(ADDR_NO_RANDOMIZE): allowed
        "180,0,0,0",      // nfsservctl: ENOSYS (removed)
        "172,0",          // iopl(0): allowed
        "435,0,0",        // clone3(NULL, 0): EINVAL
    ];
    let (plain, _s1) = executor(|c| c.sandbox.seccomp = false);
    let unfiltered = probe(&plain, NO_PERMITS, &calls).await;
    eprintln!("without the filter: {unfiltered:?}");
    for (call, line) in calls.iter().zip(&unfiltered) {
        assert_ne!(
            line,
            &refused(call, libc::EPERM),
            "{call} without the filter"
        );
    }
    let (exec, _s2) = executor(|_| {});
    let allowed = probe(&exec, NO_PERMITS, &["135,0xffffffff", "39", "102"]).await;
    assert_eq!(allowed[0], "135=R0", "the personality query stays allowed");
    assert!(allowed[1].starts_with("39=R"), "getpid: {}", allowed[1]);
    assert_eq!(allowed[2], "102=R65534", "getuid");
}

// ---------------------------------------------------------------------------
// User namespaces

#[tokio::test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn unshare_ur_is_refused_without_the_permit_and_works_with_it() {
    // Scenario: `unshare -Ur` (an unprivileged user namespace, the door to
    // most root-only kernel code) fails in a job; a job with the
    // user_namespaces permit becomes root of its own namespace.
    require_root();
    let (exec, _state) = executor(|_| {});
    let denied = run(&exec, "unshare", &["-Ur", "/usr/bin/id", "-u"]).await;
    assert_eq!(denied.exit, ExitInfo::Exited(1), "{}", denied.stderr);
    assert_eq!(denied.stdout, "");
    assert!(
        denied.stderr.contains("Operation not permitted"),
        "{}",
        denied.stderr
    );
    let permits = JobPermits {
        user_namespaces: true,
        ..NO_PERMITS
    };
    let allowed = run_with(
        &exec,
        None,
        permits,
        "unshare",
        &["-Ur", "/usr/bin/id", "-u"],
    )
    .await;
    assert_eq!(allowed.exit, ExitInfo::Exited(0), "{}", allowed.stderr);
    assert_eq!(allowed.stdout, "0\n");
}

// ---------------------------------------------------------------------------
// cgroup view

#[tokio::test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn a_job_sees_no_other_jobs_cgroup() {
    // Scenario: while another job runs, a job's /proc/self/cgroup shows
    // only "/" paths and /sys/fs/cgroup holds nothing of the host's trees,
    // so neither job's id (its cgroup name) nor its usage is visible.
    require_root();
    let (exec, _state) = executor(|_| {});
    let other_name = job_name();
    let mut other = spawn(&exec, None, NO_PERMITS, &other_name, "sleep", &["600"]).await;
    let own_name = job_name();
    let spawned = spawn(
        &exec,
        None,
        NO_PERMITS,
        &own_name,
        "sh",
        &["-c", "cat /proc/self/cgroup; echo --; ls -A /sys/fs/cgroup; echo --; grep -rl . /sys/fs/cgroup 2>/dev/null | head -n 3"],
    )
    .await;
    let done = tokio::time::timeout(DEADLINE, finish(spawned))
        .await
        .unwrap();
    other.process.signal(JobSignal::Kill).unwrap();
    tokio::time::timeout(DEADLINE, finish(other)).await.unwrap();

    assert_eq!(done.exit, ExitInfo::Exited(0), "{}", done.stderr);
    let (cgroups, rest) = done.stdout.split_once("--\n").unwrap();
    assert!(!cgroups.is_empty());
    for line in cgroups.lines() {
        assert!(line.ends_with(":/"), "{line}");
    }
    assert!(!done.stdout.contains(&other_name) && !done.stdout.contains(&own_name));
    assert!(!done.stdout.contains("jobsd-"), "{}", done.stdout);
    let unified = std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .any(|l| {
            l.split(' ').nth(1) == Some("/sys/fs/cgroup") && l.split(' ').nth(2) == Some("cgroup2")
        });
    if unified {
        // A fresh cgroup2 mount of the job's own subtree: its own files only.
        assert!(rest.contains("cgroup.procs"), "{rest}");
    } else {
        // Hybrid or v1 host (as in CI): an empty tmpfs.
        assert_eq!(rest, "--\n");
    }
}

// ---------------------------------------------------------------------------
// Landlock: the file system

/// A world-writable (1777) directory on the host that removes itself.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        use std::os::unix::fs::PermissionsExt;
        let dir = PathBuf::from(format!(
            "/var/lib/jobs-test-scratch-{}-{}",
            std::process::id(),
            job_name()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const TOUCH_BOTH: &str = "touch \"$1/f\" 2>/dev/null; echo host=$?; touch /tmp/f; echo tmp=$?; echo x > /dev/null; echo null=$?";

#[tokio::test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn the_host_is_read_only_outside_the_private_places() {
    // Scenario: a world-writable host directory (the classic shared drop
    // box) is not writable by a job, while its private /tmp and /dev/null
    // are.
    require_root();
    let scratch = Scratch::new();
    let (exec, _state) = executor(|_| {});
    let dir = scratch.0.to_str().unwrap();
    let done = run(&exec, "sh", &["-c", TOUCH_BOTH, "sh", dir]).await;
    assert_eq!(done.stdout, "host=1\ntmp=0\nnull=0\n", "{}", done.stderr);
    assert!(!scratch.0.join("f").exists());
}

#[tokio::test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn a_writable_directory_is_shared_with_jobs() {
    // Scenario: `jobsd --writable DIR` lets jobs write there, and only there.
    require_root();
    let shared = Scratch::new();
    let other = Scratch::new();
    let path = jobs::sandbox::check_writable(&shared.0).unwrap();
    let (exec, _state) = executor(|c| c.sandbox.writable = vec![path]);
    let done = run(
        &exec,
        "sh",
        &["-c", TOUCH_BOTH, "sh", shared.0.to_str().unwrap()],
    )
    .await;
    assert_eq!(done.stdout, "host=0\ntmp=0\nnull=0\n", "{}", done.stderr);
    assert!(shared.0.join("f").exists());
    let done = run(
        &exec,
        "sh",
        &["-c", TOUCH_BOTH, "sh", other.0.to_str().unwrap()],
    )
    .await;
    assert_eq!(done.stdout, "host=1\ntmp=0\nnull=0\n", "{}", done.stderr);
}

#[tokio::test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn a_private_home_is_empty_owned_by_the_job_and_hides_the_hosts() {
    // Scenario: an account made for one identity gets HOME=/home/job, its
    // own empty 0700 directory on a fresh tmpfs; the host's homes are not
    // there, and it can write its home.
    require_root();
    let account = Account {
        name: "jobs-isolation-test".into(),
        uid: 2_000_000_123,
        gid: 2_000_000_123,
        home: PathBuf::from("/nonexistent"),
        private_home: true,
    };
    let (exec, _state) = executor(|_| {});
    let done = run_with(
        &exec,
        Some(&account),
        NO_PERMITS,
        "sh",
        &["-c", "echo \"$HOME\"; stat -c '%u %g %a' \"$HOME\"; ls -A /home; ls -A \"$HOME\"; touch \"$HOME/f\" && echo wrote"],
    )
    .await;
    let expected = if Path::new("/home").is_dir() {
        "/home/job\n2000000123 2000000123 700\njob\nwrote\n"
    } else {
        "/tmp\n0 0 1777\nwrote\n"
    };
    assert_eq!(done.stdout, expected, "{}", done.stderr);
}

// ---------------------------------------------------------------------------
// Landlock: the network

const BIND: &str = r#"use Socket; socket(S, PF_INET, SOCK_STREAM, 0) or die "socket: $!"; if (bind(S, pack_sockaddr_in(0, inet_aton("127.0.0.1")))) { listen(S, 1) or die; print "listening\n" } else { print "bind=", $! + 0, "\n" }"#;

#[tokio::test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn a_job_cannot_listen_on_the_host_network_unless_permitted() {
    // Scenario: a job binding a TCP port (to listen, on the host's network)
    // is refused with EACCES; with the listen permit it listens.
    require_root();
    let (exec, _state) = executor(|_| {});
    let denied = run(&exec, "perl", &["-e", BIND]).await;
    assert_eq!(
        denied.stdout,
        format!("bind={}\n", libc::EACCES),
        "{}",
        denied.stderr
    );
    let permits = JobPermits {
        listen: true,
        ..NO_PERMITS
    };
    let allowed = run_with(&exec, None, permits, "perl", &["-e", BIND]).await;
    assert_eq!(allowed.stdout, "listening\n", "{}", allowed.stderr);
}

/// listen(2) on a TCP socket never bound: the kernel picks a port itself
/// (autobind), with no bind(2) for Landlock to refuse.
const AUTOBIND: &str = r#"use Socket; socket(S, PF_INET, SOCK_STREAM, 0) or die "socket: $!"; if (listen(S, 1)) { print "listening
" } else { print "listen=", $! + 0, "
" }"#;

#[tokio::test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn a_job_cannot_listen_without_binding_unless_permitted() {
    // Scenario: a job skips bind(2) and calls listen(2) on a fresh TCP
    // socket, so that the kernel binds it to a free port on every address;
    // the filter refuses listen itself (EPERM); with the permit it listens.
    require_root();
    let (exec, _state) = executor(|_| {});
    let denied = run(&exec, "perl", &["-e", AUTOBIND]).await;
    assert_eq!(
        denied.stdout,
        format!("listen={}\n", libc::EPERM),
        "{}",
        denied.stderr
    );
    let permits = JobPermits {
        listen: true,
        ..NO_PERMITS
    };
    let allowed = run_with(&exec, None, permits, "perl", &["-e", AUTOBIND]).await;
    assert_eq!(allowed.stdout, "listening\n", "{}", allowed.stderr);
}

/// Binds UDP sockets: IPv4 and IPv6 to the named port `$ARGV[0]`, IPv4 to
/// port 0; then sends "hi" over a connected UDP socket to `$ARGV[1]`, as a
/// resolver asks its DNS server; then binds a UDP-Lite socket to the named
/// port. One word each: `ok` or the errno.
const UDP: &str = r#"use Socket qw(:all); my ($port, $to) = @ARGV; my @r; socket(A, PF_INET, SOCK_DGRAM, 0) or die "socket: $!"; push @r, bind(A, pack_sockaddr_in($port, inet_aton("127.0.0.1"))) ? "ok" : $! + 0; socket(B, PF_INET6, SOCK_DGRAM, 0) or die "socket6: $!"; push @r, bind(B, pack_sockaddr_in6($port, inet_pton(AF_INET6, "::1"))) ? "ok" : $! + 0; socket(C, PF_INET, SOCK_DGRAM, 0) or die; push @r, bind(C, pack_sockaddr_in(0, inet_aton("127.0.0.1"))) ? "ok" : $! + 0; socket(D, PF_INET, SOCK_DGRAM, 0) or die; connect(D, pack_sockaddr_in($to, inet_aton("127.0.0.1"))) or die "connect: $!"; push @r, send(D, "hi", 0) == 2 ? "ok" : $! + 0; if (socket(E, PF_INET, SOCK_DGRAM, 136)) { push @r, bind(E, pack_sockaddr_in($port, inet_aton("127.0.0.1"))) ? "ok" : $! + 0 } else { push @r, "no-udplite" } print "@r\n""#;

#[tokio::test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn a_job_cannot_bind_udp_ports_on_the_host_network_unless_permitted() {
    // Scenario: Landlock rules TCP only; a job binding a UDP port on the
    // host's addresses would serve anyone, other identities' jobs included.
    // The bind hook refuses named ports (EPERM) over IPv4 and IPv6, UDP-Lite
    // too, leaves port 0 and outbound datagrams alone, and the listen permit
    // lifts it.
    require_root();
    let (exec, _state) = executor(|_| {});
    let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    server.set_read_timeout(Some(DEADLINE)).unwrap();
    let to = server.local_addr().unwrap().port().to_string();
    // A port free on both loopbacks for the permitted job to bind.
    let port = {
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port().to_string()
    };
    let denied = run(&exec, "perl", &["-e", UDP, &port, &to]).await;
    if denied.stdout.ends_with(" no-udplite\n") {
        skip_here(
            "a_job_cannot_bind_udp_ports_on_the_host_network_unless_permitted",
            "the kernel has no UDP-Lite",
        );
        return;
    }
    let eperm = libc::EPERM;
    assert_eq!(
        denied.stdout,
        format!("{eperm} {eperm} ok ok {eperm}\n"),
        "{}",
        denied.stderr
    );
    let mut got = [0u8; 16];
    let (n, _) = server.recv_from(&mut got).unwrap();
    assert_eq!(&got[..n], b"hi");
    let permits = JobPermits {
        listen: true,
        ..NO_PERMITS
    };
    let allowed = run_with(&exec, None, permits, "perl", &["-e", UDP, &port, &to]).await;
    assert_eq!(allowed.stdout, "ok ok ok ok ok\n", "{}", allowed.stderr);
    let (n, _) = server.recv_from(&mut got).unwrap();
    assert_eq!(&got[..n], b"hi");
}

#[tokio::test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn a_job_cannot_open_vsock_sockets() {
    // Scenario: a job opens an AF_VSOCK socket to talk to the hypervisor or
    // other guests, which neither its network namespace nor Landlock
    // describes; socket(2) and socketpair(2) answer EPERM.
    require_root();
    let (exec, _state) = executor(|_| {});
    let probe = r#"use Socket; my @r; push @r, socket(S, 40, SOCK_STREAM, 0) ? "ok" : $! + 0; push @r, socketpair(A, B, 40, SOCK_STREAM, 0) ? "ok" : $! + 0; print "@r\n""#;
    let done = run(&exec, "perl", &["-e", probe]).await;
    assert_eq!(
        done.stdout,
        format!("{} {}\n", libc::EPERM, libc::EPERM),
        "{}",
        done.stderr
    );
}

#[tokio::test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn a_job_has_no_controlling_terminal() {
    // Scenario: jobsd was started from an admin's terminal; a job that kept
    // it could type commands into the admin's shell (TIOCSTI) or send jobsd
    // SIGINT through it. Every job runs in a session of its own (led by its
    // init, PID 1 of the job) with no terminal (tty_nr 0).
    require_root();
    let (exec, _state) = executor(|_| {});
    let probe =
        r#"open S, "/proc/self/stat" or die; my @f = split / /, <S>; print "$f[5] $f[6]\n""#;
    let done = run(&exec, "perl", &["-e", probe]).await;
    assert_eq!(done.stdout, "1 0\n", "{}", done.stderr);
}

#[tokio::test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn outbound_connections_still_work() {
    // Scenario: Landlock refuses binds only: a job connects to a listener
    // the test owns on loopback and its bytes arrive.
    require_root();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accept = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut got = String::new();
        conn.read_to_string(&mut got).unwrap();
        got
    });
    let (exec, _state) = executor(|_| {});
    let script = format!(
        r#"use Socket; socket(S, PF_INET, SOCK_STREAM, 0) or die; connect(S, pack_sockaddr_in({port}, inet_aton("127.0.0.1"))) or die "connect: $!"; syswrite(S, "hello from a job"); print "sent\n""#
    );
    let done = run(&exec, "perl", &["-e", &script]).await;
    assert_eq!(done.stdout, "sent\n", "{}", done.stderr);
    assert_eq!(accept.join().unwrap(), "hello from a job");
}

// ---------------------------------------------------------------------------
// Landlock: scopes

#[tokio::test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn an_abstract_socket_of_one_job_is_unreachable_from_another() {
    // Scenario: two jobs of the same uid; one binds an abstract Unix socket,
    // the other cannot connect to it (EPERM), though the host (outside any
    // job) can, so the socket is there.
    require_root();
    let (exec, _state) = executor(|_| {});
    let name = format!("jobs-isolation-{}", job_name());
    let server = format!(
        r#"use Socket; socket(S, PF_UNIX, SOCK_STREAM, 0) or die; bind(S, pack_sockaddr_un("\0{name}")) or die "bind: $!"; listen(S, 5) or die; $| = 1; print "listening\n"; while (accept(C, S)) {{ syswrite(C, "hi"); close C }}"#
    );
    let job_name_a = job_name();
    // The listening job needs the listen permit (listen(2) is refused
    // without it); its abstract socket stays scoped to it all the same.
    let listen = JobPermits {
        listen: true,
        ..NO_PERMITS
    };
    let mut a = spawn(&exec, None, listen, &job_name_a, "perl", &["-e", &server]).await;
    let mut lines = BufReader::new(&mut a.stdout).lines();
    let first = tokio::time::timeout(DEADLINE, lines.next_line())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.as_deref(), Some("listening"));

    let client = format!(
        r#"use Socket; socket(S, PF_UNIX, SOCK_STREAM, 0) or die; if (connect(S, pack_sockaddr_un("\0{name}"))) {{ print "connected\n" }} else {{ print "connect=", $! + 0, "\n" }}"#
    );
    let done = run(&exec, "perl", &["-e", &client]).await;

    let host = {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        std::os::unix::net::UnixStream::connect_addr(&addr).map(|mut s| {
            let mut got = String::new();
            s.read_to_string(&mut got).unwrap();
            got
        })
    };
    a.process.signal(JobSignal::Kill).unwrap();
    drop(lines);
    tokio::time::timeout(DEADLINE, finish(a)).await.unwrap();

    assert_eq!(
        done.stdout,
        format!("connect={}\n", libc::EPERM),
        "{}",
        done.stderr
    );
    assert_eq!(host.expect("the host reaches the socket"), "hi");
}

#[tokio::test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn a_job_cannot_signal_outside_itself() {
    // Scenario: the job's init (PID 1 of its namespace, same uid once it
    // dropped privileges, but outside the job's Landlock domain) cannot be
    // signalled by the job, while the job's own processes can.
    require_root();
    let (exec, _state) = executor(|_| {});
    let done = run(
        &exec,
        "sh",
        &[
            "-c",
            "kill -s CONT 1 2>/dev/null; echo init=$?; kill -s CONT $$; echo own=$?",
        ],
    )
    .await;
    assert_eq!(done.stdout, "init=1\nown=0\n", "{}", done.stderr);
}

// ---------------------------------------------------------------------------
// jobsd's start-up

/// `jobsd` on a free loopback port with the harness's server certificate,
/// a fresh state directory and `extra` options.
fn jobsd(state: &Path, extra: &[&str]) -> std::process::Command {
    let pem = server_pem();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_jobsd"));
    cmd.args(["--listen", "127.0.0.1:0", "--ca"])
        .arg(&pem.ca)
        .arg("--cert")
        .arg(&pem.cert)
        .arg("--key")
        .arg(&pem.key)
        .arg("--state-dir")
        .arg(state.join("state"))
        .args(extra)
        .args(common::own_uid_range(extra))
        .env_clear()
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null());
    cmd
}

#[test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
fn jobsd_refuses_a_bad_writable_directory() {
    // Scenario: an operator's `--writable` typo (a relative path, a file)
    // stops jobsd at start-up with a one-line reason, before it listens.
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, "").unwrap();
    for (value, reason) in [
        ("srv/shared", "not an absolute path"),
        (file.to_str().unwrap(), "not a directory"),
    ] {
        let out = jobsd(dir.path(), &["--writable", value]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(&format!("--writable {value}: {reason}")),
            "{stderr}"
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "",
            "it must not listen"
        );
    }
}

#[test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
fn jobsd_reports_every_sandbox_part_at_start_up() {
    // Scenario: the operator reads in jobsd's log, one line per part, what
    // the sandbox of every job is (here, on a kernel that has it all, with
    // --containment on, everything is on).
    require_root();
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut child = jobsd(dir.path(), &["--containment", "on"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    // An orderly stop, which removes jobsd's cgroup subtree (a SIGKILL would
    // leave it on the host, for a successor on this state directory).
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        line.starts_with("listening on 127.0.0.1:"),
        "{line}\n{stderr}"
    );
    assert!(status.success(), "jobsd ended with {status}:\n{stderr}");
    let subtree = jobs::exec::cgroup_name_for(&dir.path().join("state"));
    assert_eq!(cgroup_dirs_named(&subtree), Vec::<PathBuf>::new());
    for part in [
        "seccomp filter",
        "landlock filesystem",
        "landlock network",
        "bind hook",
        "landlock scopes",
        "capabilities",
        "cgroup namespace",
    ] {
        let lines = stderr
            .lines()
            .filter(|l| l.contains(&format!("sandbox: {part} ")))
            .count();
        assert_eq!(lines, 1, "{part}:\n{stderr}");
        assert!(
            stderr.contains(&format!("sandbox: {part} on: ")),
            "{part}:\n{stderr}"
        );
    }
    // What no kernel part isolates is said too, once.
    assert_eq!(
        stderr
            .lines()
            .filter(|l| l.contains(" WARN ") && l.contains("shared: process creation: "))
            .count(),
        1,
        "{stderr}"
    );
}

#[tokio::test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn a_job_whose_sandbox_cannot_be_set_up_does_not_start() {
    // Scenario: a shared directory vanished after jobsd checked it; the init
    // cannot apply the Landlock ruleset jobsd decided on, so the start fails
    // (naming the step) instead of running the job with less.
    require_root();
    let gone = Scratch::new();
    let path = gone.0.clone();
    drop(gone);
    let (exec, _state) = executor(|c| c.sandbox.writable = vec![path]);
    let spec = JobSpec::new("true".into(), vec![]).unwrap();
    let limits = ResourceLimits::default();
    let name = job_name();
    let err = exec
        .spawn(Launch {
            name: &name,
            spec: &spec,
            limits: &limits,
            account: None,
            owner: "id-0000000000000000",
            owner_limits: &limits,
            permits: NO_PERMITS,
            max_output_bytes: None,
        })
        .await
        .err()
        .expect("the start must fail");
    match err {
        jobs::job::SpawnError::Containment { what, source } => {
            assert_eq!(what, "jobs-init failed at Landlock");
            assert_eq!(source.raw_os_error(), Some(libc::ENOENT));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
async fn a_job_with_its_own_network_may_listen_there() {
    // Scenario: with `--network none` the job's loopback is its own, so it
    // may bind without the listen permit (a test suite's local server).
    require_root();
    let (exec, _state) = executor(|c| c.namespaces.network = jobs::exec::Network::None);
    let done = run(&exec, "perl", &["-e", BIND]).await;
    assert_eq!(done.stdout, "listening\n", "{}", done.stderr);
}

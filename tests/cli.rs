//! The `jobs` command line, run as the real binary against a real `jobsd`.
//!
//! Each test works in its own [`Sandbox`] (a temp dir with the PEM files, the
//! CLI's working directory), starts its own daemon on `127.0.0.1:0` (stopped
//! by [`Daemon`]'s `Drop`) and runs `jobs` with `JOBS_ADDR`, `JOBS_CA`,
//! `JOBS_CERT` and `JOBS_KEY` set. The certificates (RSA-4096, about a second
//! per key) are made once per test binary with [`jobs::ca`].

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::ops::Deref;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

mod common;

use jobs::ca::{CertAuthority, IssuedCert, Validity, default_server_sans};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use tempfile::TempDir;

const JOBS: &str = env!("CARGO_BIN_EXE_jobs");
const JOBSD: &str = env!("CARGO_BIN_EXE_jobsd");

/// How long any one CLI invocation or daemon shutdown may take before the
/// test fails instead of hanging.
const DEADLINE: Duration = Duration::from_secs(30);

/// The test PKI, in memory: one CA, the server's certificate, alice and bob.
/// The CA is kept, to issue certificates only some tests need.
struct Pki {
    authority: CertAuthority,
    ca: String,
    server: IssuedCert,
    alice: IssuedCert,
    bob: IssuedCert,
}

static PKI: LazyLock<Pki> = LazyLock::new(|| {
    // Leaves may not outlive their CA.
    let ca = CertAuthority::generate(Validity::days(60).unwrap()).unwrap();
    let leaf = || Validity::days(30).unwrap();
    Pki {
        server: ca.issue_server(&default_server_sans(), leaf()).unwrap(),
        alice: ca.issue_client("alice", leaf()).unwrap(),
        bob: ca.issue_client("bob", leaf()).unwrap(),
        ca: ca.cert_pem().to_owned(),
        authority: ca,
    }
});

/// A second, unrelated CA with a client "mallory": what the daemon must refuse.
struct Foreign {
    ca: String,
    mallory: IssuedCert,
}

static FOREIGN: LazyLock<Foreign> = LazyLock::new(|| {
    let ca = CertAuthority::generate(Validity::days(60).unwrap()).unwrap();
    Foreign {
        mallory: ca
            .issue_client("mallory", Validity::days(30).unwrap())
            .unwrap(),
        ca: ca.cert_pem().to_owned(),
    }
});

/// A client's certificate and key files.
struct User {
    cert: PathBuf,
    key: PathBuf,
}

/// A private temp dir holding the PEM files; the working directory of every
/// `jobs` run. Removed on drop.
struct Sandbox {
    dir: TempDir,
    ca: PathBuf,
    server: User,
    alice: User,
    bob: User,
}

impl Sandbox {
    fn new() -> Self {
        // Jobs run as unprivileged uids when the daemon is root: they must be able to
        // read files the tests put here (keys stay 0600).
        let dir = common::scratch();
        let ca = dir.path().join("ca.crt");
        write_file(&ca, PKI.ca.as_bytes());
        Self {
            ca,
            server: write_issued(dir.path(), "server", &PKI.server),
            alice: write_issued(dir.path(), "alice", &PKI.alice),
            bob: write_issued(dir.path(), "bob", &PKI.bob),
            dir,
        }
    }

    /// Writes the foreign CA and mallory's files; returns the CA path and mallory.
    fn foreign(&self) -> (PathBuf, User) {
        let ca = self.dir.path().join("foreign-ca.crt");
        write_file(&ca, FOREIGN.ca.as_bytes());
        (
            ca,
            write_issued(self.dir.path(), "mallory", &FOREIGN.mallory),
        )
    }

    /// `jobs ARGS` as `user` against `addr`, not yet started.
    fn command_to(&self, addr: &str, user: &User, args: &[&str]) -> Command {
        let mut cmd = Command::new(JOBS);
        cmd.args(args)
            .env("JOBS_ADDR", addr)
            .env("JOBS_CA", &self.ca)
            .env("JOBS_CERT", &user.cert)
            .env("JOBS_KEY", &user.key)
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        cmd
    }
}

fn write_issued(dir: &Path, name: &str, issued: &IssuedCert) -> User {
    let user = User {
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
    };
    write_file(&user.cert, issued.cert_pem.as_bytes());
    write_file(&user.key, issued.key_pem.as_str().as_bytes());
    user
}

fn write_file(path: &Path, data: &[u8]) {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap()
        .write_all(data)
        .unwrap();
}

/// A running `jobsd` (grace period 1 s) with its own sandbox and state dir;
/// `Drop` sends SIGTERM and waits for it to exit.
struct Daemon {
    child: Child,
    addr: String,
    _stdout: ChildStdout,
    sandbox: Sandbox,
}

impl Deref for Daemon {
    type Target = Sandbox;

    fn deref(&self) -> &Sandbox {
        &self.sandbox
    }
}

impl Daemon {
    fn start() -> Self {
        Self::start_in(Sandbox::new(), &[])
    }

    /// A daemon on `sandbox` (its state dir included) with `extra` options.
    fn start_in(sandbox: Sandbox, extra: &[&str]) -> Self {
        Self::start_as(sandbox, extra, None, None)
    }

    /// As [`Daemon::start_in`], as user `uid` (and group `uid`) if given, and
    /// placed (by a shell that then execs jobsd) into the cgroup whose
    /// `cgroup.procs` is `cgroup` if given.
    fn start_as(sandbox: Sandbox, extra: &[&str], uid: Option<u32>, cgroup: Option<&Path>) -> Self {
        use std::os::unix::process::CommandExt;
        let dir = sandbox.dir.path();
        let log = fs::File::create(dir.join("jobsd.log")).unwrap();
        let mut jobsd = match cgroup {
            None => Command::new(JOBSD),
            Some(procs) => {
                let mut sh = Command::new("sh");
                sh.args(["-c", "echo 0 > \"$0\" && exec \"$@\""])
                    .arg(procs)
                    .arg(JOBSD);
                sh
            }
        };
        if let Some(uid) = uid {
            jobsd.uid(uid).gid(uid);
        }
        let mut child = jobsd
            .args(["--listen", "127.0.0.1:0", "--grace-secs", "1", "--ca"])
            .arg(&sandbox.ca)
            .arg("--cert")
            .arg(&sandbox.server.cert)
            .arg("--key")
            .arg(&sandbox.server.key)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args(extra)
            .args(common::own_uid_range(extra))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let Some(addr) = line.trim_end().strip_prefix("listening on ") else {
            let _ = child.kill();
            let _ = child.wait();
            let log = fs::read_to_string(dir.join("jobsd.log")).unwrap_or_default();
            panic!("jobsd did not start: stdout {line:?}, log:\n{log}");
        };
        Self {
            addr: addr.to_owned(),
            child,
            _stdout: stdout.into_inner(),
            sandbox,
        }
    }

    /// `jobs ARGS` as `user`, run to completion.
    fn jobs(&self, user: &User, args: &[&str]) -> Out {
        run(self.command(user, args))
    }

    /// `jobs ARGS` as `user`, not yet started.
    fn command(&self, user: &User, args: &[&str]) -> Command {
        self.command_to(&self.addr, user, args)
    }

    /// Starts `argv` as `user` and returns the job id.
    fn start_job(&self, user: &User, argv: &[&str]) -> String {
        let mut args = vec!["start", "--"];
        args.extend_from_slice(argv);
        let out = self.jobs(user, &args);
        assert_eq!(
            (out.code, out.stderr.as_str()),
            (0, ""),
            "jobs start {argv:?}"
        );
        let id = String::from_utf8(out.stdout).unwrap();
        id.trim_end().to_owned()
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).unwrap())
    }

    /// SIGKILLs jobsd (it gets no chance to record anything more) and returns
    /// its sandbox, state directory included, for a successor.
    fn crash(mut self) -> Sandbox {
        kill(self.pid(), Signal::SIGKILL).unwrap();
        self.child.wait().unwrap();
        std::mem::replace(&mut self.sandbox, Sandbox::new())
    }

    /// SIGTERMs jobsd, checks that it exits 0 within [`DEADLINE`], and
    /// returns its sandbox for a successor.
    fn terminate(mut self) -> Sandbox {
        kill(self.pid(), Signal::SIGTERM).unwrap();
        let status = wait_until(&mut self.child, Instant::now() + DEADLINE)
            .expect("jobsd did not exit after SIGTERM");
        assert!(status.success(), "jobsd ended with {status}");
        std::mem::replace(&mut self.sandbox, Sandbox::new())
    }

    /// `jobs ARGS` as `user` with its stdout and stderr on one file, so that
    /// the order in which the CLI wrote them is kept; returns the exit code
    /// and what the file holds.
    fn jobs_merged(&self, user: &User, args: &[&str]) -> (i32, Vec<u8>) {
        let path = self
            .dir
            .path()
            .join(format!("merged-{}", uuid::Uuid::new_v4()));
        let file = fs::File::create_new(&path).unwrap();
        let mut cmd = self.command(user, args);
        cmd.stdout(file.try_clone().unwrap()).stderr(file);
        let out = finish(cmd.spawn().unwrap());
        let merged = fs::read(&path).unwrap();
        fs::remove_file(&path).unwrap();
        (out.code, merged)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // A daemon a test already reaped is left alone: its pid may be
        // another process's by now.
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        // ESRCH if a test killed it already; it is reaped below either way.
        let _ = kill(pid, Signal::SIGTERM);
        if wait_until(&mut self.child, Instant::now() + DEADLINE).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
            if !std::thread::panicking() {
                panic!("jobsd did not exit within {DEADLINE:?} of SIGTERM");
            }
        }
    }
}

/// What a finished `jobs` printed and how it exited.
#[derive(Debug)]
struct Out {
    code: i32,
    stdout: Vec<u8>,
    stderr: String,
}

/// `out` with stdout cut to its first line: `jobs status` adds indented
/// limits and usage lines when the daemon contains jobs.
fn headline(mut out: Out) -> Out {
    if let Some(end) = out.stdout.iter().position(|&b| b == b'\n') {
        out.stdout.truncate(end + 1);
    }
    out
}

impl Out {
    fn stdout_str(&self) -> &str {
        std::str::from_utf8(&self.stdout).unwrap()
    }
}

fn run(mut cmd: Command) -> Out {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    finish(child)
}

/// Waits for `child` (with [`DEADLINE`]) and collects its piped output.
fn finish(mut child: Child) -> Out {
    let stdout = child.stdout.take().map(drain);
    let stderr = child.stderr.take().map(drain);
    let status = wait_until(&mut child, Instant::now() + DEADLINE).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("jobs did not finish within {DEADLINE:?}");
    });
    Out {
        code: code(status),
        stdout: stdout.map(|h| h.join().unwrap()).unwrap_or_default(),
        stderr: String::from_utf8(stderr.map(|h| h.join().unwrap()).unwrap_or_default()).unwrap(),
    }
}

fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        r.read_to_end(&mut buf).unwrap();
        buf
    })
}

fn code(status: ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| panic!("jobs died of a signal: {status:?}"))
}

/// Waits for `child` to exit until `deadline`; `None` if it is still running.
fn wait_until(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        // std offers no wait-with-timeout on a child; poll its exit.
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn json(out: &Out) -> Value {
    serde_json::from_slice(&out.stdout).unwrap()
}

fn is_canonical_uuid(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok_and(|u| u.hyphenated().to_string() == s)
}

fn random_bytes(n: u64) -> Vec<u8> {
    let mut buf = Vec::new();
    fs::File::open("/dev/urandom")
        .unwrap()
        .take(n)
        .read_to_end(&mut buf)
        .unwrap();
    buf
}

#[test]
fn start_prints_only_a_canonical_uuid() {
    // Scenario: scripts capture `id=$(jobs start -- …)`; nothing else may be on stdout.
    let d = Daemon::start();
    let out = d.jobs(&d.alice, &["start", "--", "sleep", "60"]);
    assert_eq!((out.code, out.stderr.as_str()), (0, ""));
    let text = out.stdout_str();
    let id = text.strip_suffix('\n').unwrap();
    assert!(is_canonical_uuid(id), "{text:?}");
}

#[test]
fn start_json_has_exactly_the_documented_fields() {
    // Scenario: `jobs start --json` is an interface; its field names and types are fixed.
    let d = Daemon::start();
    let before = time::OffsetDateTime::now_utc();
    let out = d.jobs(&d.alice, &["start", "--json", "--", "sleep", "60"]);
    assert_eq!((out.code, out.stderr.as_str()), (0, ""));
    assert_eq!(out.stdout.last(), Some(&b'\n'));
    let v = json(&out);
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "cluster_job_id",
            "command",
            "ended_at",
            "exit_code",
            "id",
            "limits",
            "max_output_bytes",
            "output_bytes",
            "owner",
            "pending_reason",
            "signal",
            "started_at",
            "state",
            "usage",
        ]
    );
    assert_eq!(
        (&v["cluster_job_id"], &v["pending_reason"]),
        (&Value::Null, &Value::Null)
    );
    assert!(is_canonical_uuid(v["id"].as_str().unwrap()));
    assert_eq!(v["state"], "running");
    assert_eq!(v["exit_code"], Value::Null);
    assert_eq!(v["signal"], Value::Null);
    assert_eq!(v["command"], serde_json::json!(["sleep", "60"]));
    assert_eq!(v["ended_at"], Value::Null);
    assert_eq!(v["owner"], PKI.alice.identity.to_string());
    let started = time::OffsetDateTime::parse(
        v["started_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert!(
        started >= before - Duration::from_secs(1),
        "{started} < {before}"
    );
    assert!(started <= time::OffsetDateTime::now_utc());
}

#[test]
fn arguments_reach_the_program_verbatim() {
    // Scenario (C29): no shell anywhere; spaces, `;`, `$HOME` and `*` stay as typed.
    let d = Daemon::start();
    let id = d.start_job(&d.alice, &["echo", "a b", "c;d", "$HOME", "*"]);
    let out = d.jobs(&d.alice, &["stream", &id]);
    assert_eq!(
        (out.code, out.stdout.as_slice(), out.stderr.as_str()),
        (0, &b"a b c;d $HOME *\n"[..], "")
    );
    // Without `--` the words after the program still belong to it, flags included.
    let out = d.jobs(
        &d.alice,
        &["run", "sh", "-c", "echo \"$0\" \"$1\"", "--json", "--addr"],
    );
    assert_eq!(
        (out.code, out.stdout_str(), out.stderr.as_str()),
        (0, "--json --addr\n", "")
    );
}

#[test]
fn stream_exits_with_the_jobs_exit_code() {
    // Scenario: `jobs stream` in a script must report the job's failure as its own.
    let d = Daemon::start();
    let id = d.start_job(&d.alice, &["sh", "-c", "exit 3"]);
    let out = d.jobs(&d.alice, &["stream", &id]);
    assert_eq!(
        (out.code, out.stdout_str(), out.stderr.as_str()),
        (3, "", "")
    );
    let out = headline(d.jobs(&d.alice, &["status", &id]));
    assert_eq!(
        (out.code, out.stdout_str(), out.stderr.as_str()),
        (
            0,
            format!("{id}  exited with code 3  sh -c 'exit 3'\n").as_str(),
            ""
        )
    );
}

#[test]
fn signal_death_exits_128_plus_signal_and_is_named() {
    // Scenario (C09): a job killed by SIGKILL must never look like success or like a plain code.
    let d = Daemon::start();
    let id = d.start_job(&d.alice, &["sh", "-c", "kill -9 $$"]);
    let out = d.jobs(&d.alice, &["stream", &id]);
    assert_eq!(
        (out.code, out.stdout_str(), out.stderr.as_str()),
        (137, "", "")
    );
    let out = headline(d.jobs(&d.alice, &["status", &id]));
    assert_eq!(
        out.stdout_str(),
        format!("{id}  killed by signal 9 (SIGKILL)  sh -c 'kill -9 $$'\n")
    );
    let out = d.jobs(&d.alice, &["status", "--json", &id]);
    let v = json(&out);
    assert_eq!(
        (&v["state"], &v["exit_code"], &v["signal"]),
        (
            &Value::from("killed"),
            &Value::Null,
            &Value::from("SIGKILL")
        )
    );
    assert!(v["ended_at"].is_string());

    let id = d.start_job(&d.alice, &["sh", "-c", "kill -SEGV $$"]);
    let out = d.jobs(&d.alice, &["stream", &id]);
    assert_eq!(out.code, 139);
    let out = headline(d.jobs(&d.alice, &["status", &id]));
    // ", core dumped" depends on the host's core dump settings.
    assert!(
        out.stdout_str()
            .starts_with(&format!("{id}  killed by signal 11 (SIGSEGV)")),
        "{out:?}"
    );
}

#[test]
fn exit_137_is_an_exit_code_not_a_signal() {
    // Scenario (C09): `exit 137` is a code; it must not be reported as SIGKILL.
    let d = Daemon::start();
    let id = d.start_job(&d.alice, &["sh", "-c", "exit 137"]);
    let out = d.jobs(&d.alice, &["stream", &id]);
    assert_eq!(out.code, 137);
    let out = headline(d.jobs(&d.alice, &["status", &id]));
    assert_eq!(
        out.stdout_str(),
        format!("{id}  exited with code 137  sh -c 'exit 137'\n")
    );
    let v = json(&d.jobs(&d.alice, &["status", "--json", &id]));
    assert_eq!(
        (&v["state"], &v["exit_code"], &v["signal"]),
        (&Value::from("exited"), &Value::from(137), &Value::Null)
    );
}

#[test]
fn output_keeps_stdout_and_stderr_apart() {
    // Scenario: the job's stderr must not leak into our stdout or the other way round.
    let d = Daemon::start();
    let id = d.start_job(&d.alice, &["sh", "-c", "printf out; printf err >&2"]);
    let streamed = d.jobs(&d.alice, &["stream", &id]);
    assert_eq!(
        (
            streamed.code,
            streamed.stdout_str(),
            streamed.stderr.as_str()
        ),
        (0, "out", "err")
    );
    let out = d.jobs(&d.alice, &["output", &id]);
    assert_eq!(
        (out.code, out.stdout_str(), out.stderr.as_str()),
        (0, "out", "err")
    );
}

#[test]
fn binary_output_is_byte_exact() {
    // Scenario: random bytes (not UTF-8, many 64 KiB chunks) come back unchanged.
    let d = Daemon::start();
    let blob = random_bytes((1 << 20) + 7);
    let path = d.dir.path().join("blob");
    fs::write(&path, &blob).unwrap(); // world-readable: jobs run unprivileged
    // Jobs run with cwd `/`, so the path must be absolute.
    let id = d.start_job(&d.alice, &["/bin/cat", path.to_str().unwrap()]);
    let streamed = d.jobs(&d.alice, &["stream", &id]);
    assert_eq!((streamed.code, streamed.stderr.as_str()), (0, ""));
    assert!(
        streamed.stdout == blob,
        "stream differs: {} bytes",
        streamed.stdout.len()
    );
    let out = d.jobs(&d.alice, &["output", &id]);
    assert_eq!((out.code, out.stderr.as_str()), (0, ""));
    assert!(
        out.stdout == blob,
        "output differs: {} bytes",
        out.stdout.len()
    );
}

#[test]
fn run_follows_and_exits_like_the_job() {
    // Scenario: `jobs run` behaves like running the program locally: output, streams, code.
    let d = Daemon::start();
    let out = d.jobs(
        &d.alice,
        &["run", "--", "sh", "-c", "echo out; echo err >&2; exit 7"],
    );
    assert_eq!(
        (out.code, out.stdout_str(), out.stderr.as_str()),
        (7, "out\n", "err\n")
    );
}

#[test]
fn quoted_command_line_is_not_split_and_creates_no_job() {
    // Scenario (C29): `jobs start "sleep 100"` names a program with a space; it fails at once.
    let d = Daemon::start();
    let out = d.jobs(&d.alice, &["start", "sleep 100"]);
    assert_eq!(
        (out.code, out.stdout_str(), out.stderr.as_str()),
        (
            1,
            "",
            "jobs: error: invalid request: program 'sleep 100' not found in PATH \
             /usr/local/bin:/usr/bin:/bin; the program name is not split on spaces: \
             pass the program and each argument separately\n"
        )
    );
    let list = d.jobs(&d.alice, &["list", "--json"]);
    assert_eq!((list.code, list.stdout_str()), (0, "[]\n"));
    // Unquoted, the same words are a program and its argument.
    let id = d.start_job(&d.alice, &["sleep", "100"]);
    let list = d.jobs(&d.alice, &["list"]);
    assert_eq!(list.stdout_str(), format!("{id}  running  sleep 100\n"));
}

#[test]
fn bad_programs_are_refused_at_start() {
    // Scenario (C29): relative, missing and non-executable programs are start errors, not exit 127.
    let d = Daemon::start();
    for (program, message) in [
        (
            "./run.sh",
            "program './run.sh' is a relative path; give an absolute path or a bare name looked up in PATH",
        ),
        (
            "nonexistent-binary-xyz",
            "program 'nonexistent-binary-xyz' not found in PATH /usr/local/bin:/usr/bin:/bin",
        ),
        (
            "/etc/passwd",
            "program '/etc/passwd' is not an executable file",
        ),
    ] {
        let out = d.jobs(&d.alice, &["start", "--", program]);
        assert_eq!(
            (out.code, out.stdout_str(), out.stderr.as_str()),
            (
                1,
                "",
                format!("jobs: error: invalid request: {message}\n").as_str()
            ),
            "{program}"
        );
    }
    let list = d.jobs(&d.alice, &["list"]);
    assert_eq!((list.code, list.stdout_str()), (0, ""));
}

#[test]
fn malformed_job_id_is_refused() {
    // Scenario: a typo in an id gets a message that says what an id looks like.
    let d = Daemon::start();
    let out = d.jobs(&d.alice, &["status", "not-a-uuid"]);
    assert_eq!(
        (out.code, out.stdout_str(), out.stderr.as_str()),
        (
            1,
            "",
            "jobs: error: invalid request: job id must be a UUID in canonical lower-case form, like 67e55044-10b1-426f-9247-bb680e5fe0c8\n"
        )
    );
}

#[test]
fn usage_errors_exit_2_without_contacting_the_server() {
    // Scenario: `jobs start` with no program is clap's usage error; no connection is made.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let sb = Sandbox::new();
    let out = run(sb.command_to(&addr, &sb.alice, &["start"]));
    assert_eq!((out.code, out.stdout_str()), (2, ""));
    assert_eq!(
        out.stderr,
        "error: the following required arguments were not provided:\n  <PROGRAM>...\n\n\
         Usage: jobs start [--json] [LIMITS] [--] PROGRAM [ARG]...\n\n\
         For more information, try '--help'.\n"
    );
    // Missing certificate settings are usage errors too.
    let mut cmd = sb.command_to(&addr, &sb.alice, &["list"]);
    cmd.env_remove("JOBS_KEY");
    let out = run(cmd);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr
            .starts_with("error: --key <FILE> is required (or set JOBS_KEY)\n"),
        "{out:?}"
    );
    let accepted = listener.accept();
    assert!(
        matches!(&accepted, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the CLI connected: {accepted:?}"
    );
}

#[test]
fn help_documents_exit_codes_and_the_no_split_rule() {
    // Scenario: the exit code contract and the quoting rule are in `--help`, where users look.
    let sb = Sandbox::new();
    let out = run(sb.command_to("127.0.0.1:1", &sb.alice, &["--help"]));
    assert_eq!(out.code, 0);
    for line in [
        "  2      usage error (nothing was sent to the server)\n",
        "  128+N  a signal N killed the job (137: SIGKILL, 143: SIGTERM); never 0\n",
        "  255    jobs could not follow the job to its end: the stream was cut and\n",
        "name is never split on spaces: `jobs start \"sleep 100\"` asks for a program\n",
    ] {
        assert!(out.stdout_str().contains(line), "missing {line:?}");
    }
    let out = run(sb.command_to("127.0.0.1:1", &sb.alice, &["start", "--help"]));
    assert!(
        out.stdout_str().contains(
            "program name is never split on spaces, so `jobs start \"sleep 100\"` fails\n"
        ),
        "{}",
        out.stdout_str()
    );
}

#[test]
fn another_users_job_is_indistinguishable_from_no_job() {
    // Scenario: bob learns nothing about alice's job id, and cannot stop or read it.
    let d = Daemon::start();
    let id = d.start_job(&d.alice, &["sleep", "60"]);
    let unknown = uuid::Uuid::new_v4().to_string();
    for args in [
        ["status", id.as_str()],
        ["stop", &id],
        ["output", &id],
        ["stream", &id],
        ["status", &unknown],
    ] {
        let out = d.jobs(&d.bob, &args);
        assert_eq!(
            (out.code, out.stdout_str(), out.stderr.as_str()),
            (1, "", "jobs: error: not found: no such job\n"),
            "{args:?}"
        );
    }
    assert_eq!(d.jobs(&d.bob, &["list", "--json"]).stdout_str(), "[]\n");
    assert_eq!(d.jobs(&d.bob, &["list"]).stdout_str(), "");
    // Bob's stop did nothing.
    let out = headline(d.jobs(&d.alice, &["status", &id]));
    assert_eq!(out.stdout_str(), format!("{id}  running  sleep 60\n"));
}

#[test]
fn stop_ends_every_follower_with_the_final_status() {
    // Scenario (C18): a follower of a stopped job ends at once with 128+15, and stop prints the end.
    let d = Daemon::start();
    let id = d.start_job(&d.alice, &["sleep", "600"]);
    let follower = d
        .command(&d.alice, &["stream", &id])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let line = format!("{id}  stopped: killed by signal 15 (SIGTERM)  sleep 600\n");
    let out = d.jobs(&d.alice, &["stop", &id]);
    assert_eq!(
        (out.code, out.stdout_str(), out.stderr.as_str()),
        (0, line.as_str(), "")
    );
    let followed = finish(follower);
    assert_eq!(
        (
            followed.code,
            followed.stdout_str(),
            followed.stderr.as_str()
        ),
        (143, "", "")
    );
    // Stopping again sends nothing and reports the same end; a late follower ends too.
    assert_eq!(d.jobs(&d.alice, &["stop", &id]).stdout_str(), line);
    assert_eq!(d.jobs(&d.alice, &["stream", &id]).code, 143);
}

#[test]
fn ctrl_c_in_run_stops_the_job_and_waits_for_its_end() {
    // Scenario: Ctrl-C during `jobs run` stops the remote job; the CLI reports how it ended.
    let d = Daemon::start();
    let mut child = d
        .command(&d.alice, &["run", "--", "sh", "-c", "echo hi; sleep 60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "hi\n");
    child.stdout = Some(stdout.into_inner());
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap());
    kill(pid, Signal::SIGINT).unwrap();
    let out = finish(child);
    let jobs = json(&d.jobs(&d.alice, &["list", "--json"]));
    let id = jobs[0]["id"].as_str().unwrap();
    assert_eq!(
        (out.code, out.stdout_str(), out.stderr.as_str()),
        (
            143,
            "",
            format!("jobs: stopping job {id}; press Ctrl-C again to stop waiting\n").as_str()
        )
    );
    assert_eq!(
        headline(d.jobs(&d.alice, &["status", id])).stdout_str(),
        format!("{id}  stopped: killed by signal 15 (SIGTERM)  sh -c 'echo hi; sleep 60'\n")
    );
}

#[test]
fn closed_stdout_is_a_clean_exit() {
    // Scenario: `jobs output ID | head -c 1` must not print an error or fail the pipeline.
    let d = Daemon::start();
    let id = d.start_job(&d.alice, &["head", "-c", "10000000", "/dev/zero"]);
    let mut wait = d.command(&d.alice, &["stream", &id]);
    wait.stdout(Stdio::null());
    assert_eq!(run(wait).code, 0);
    for command in ["output", "stream"] {
        let mut child = d
            .command(&d.alice, &[command, &id])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = [0u8; 1];
        child.stdout.take().unwrap().read_exact(&mut first).unwrap();
        assert_eq!(first, [0]);
        // The read end is closed now; the CLI still has megabytes to write.
        let out = finish(child);
        assert_eq!((out.code, out.stderr.as_str()), (0, ""), "jobs {command}");
    }
}

#[test]
fn cut_stream_exits_255_and_says_output_may_be_incomplete() {
    // Scenario (C17): the daemon dies mid-stream; the CLI must not exit 0 with partial output.
    let mut d = Daemon::start();
    // The loop ends by SIGPIPE once the daemon (the pipe's reader) is gone.
    let id = d.start_job(
        &d.alice,
        &["sh", "-c", "echo a; while sleep 0.2; do echo .; done"],
    );
    let mut child = d
        .command(&d.alice, &["stream", &id])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "a\n");
    child.stdout = Some(stdout.into_inner());
    kill(
        Pid::from_raw(i32::try_from(d.child.id()).unwrap()),
        Signal::SIGKILL,
    )
    .unwrap();
    d.child.wait().unwrap();
    let out = finish(child);
    assert_eq!(out.code, 255, "{out:?}");
    let prefix = format!(
        "jobs: error: lost track of job {id} before it ended; its output may be incomplete: "
    );
    assert!(out.stderr.starts_with(&prefix), "{}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    // A daemon on the same state directory cleans up what the killed one
    // left (the job, its cgroup).
    let sandbox = std::mem::replace(&mut d.sandbox, Sandbox::new());
    drop(d);
    drop(Daemon::start_in(sandbox, &[]));
}

#[test]
fn client_certificate_from_another_ca_is_refused() {
    // Scenario: mallory's certificate is well-formed but issued by a CA the daemon does not trust.
    let d = Daemon::start();
    let (_, mallory) = d.foreign();
    let out = d.jobs(&mallory, &["list"]);
    assert_eq!((out.code, out.stdout_str()), (1, ""));
    let prefix = format!(
        "jobs: error: cannot connect to {}: the server refused our client certificate (TLS alert: ",
        d.addr
    );
    assert!(out.stderr.starts_with(&prefix), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("issued by a CA the server does not trust"),
        "{}",
        out.stderr
    );
}

#[test]
fn server_certificate_from_another_ca_is_not_trusted() {
    // Scenario: alice points JOBS_CA at the wrong CA file; the CLI says which certificate failed.
    let d = Daemon::start();
    let (foreign_ca, _) = d.foreign();
    let mut cmd = d.command(&d.alice, &["list"]);
    cmd.env("JOBS_CA", foreign_ca);
    let out = run(cmd);
    assert_eq!((out.code, out.stdout_str()), (1, ""));
    let prefix = format!(
        "jobs: error: cannot connect to {}: the server's certificate is not trusted: ",
        d.addr
    );
    assert!(out.stderr.starts_with(&prefix), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("(it was not issued by the CA given with --ca / JOBS_CA)"),
        "{}",
        out.stderr
    );
}

#[test]
fn nothing_listening_suggests_starting_jobsd() {
    // Scenario: the daemon is not running; the user is told so, not "transport error".
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let sb = Sandbox::new();
    let unknown = uuid::Uuid::new_v4().to_string();
    let out = run(sb.command_to(&addr, &sb.alice, &["status", &unknown]));
    assert_eq!((out.code, out.stdout_str()), (1, ""));
    assert_eq!(
        out.stderr,
        format!(
            "jobs: error: cannot connect to {addr}: TCP connection failed; is jobsd running and \
             listening on that address?: Connection refused (os error 111)\n"
        )
    );
}

#[test]
fn silent_server_times_out_after_10_seconds() {
    // Scenario: a peer accepts TCP but never answers; the CLI gives up after 10 s with a clear message.
    // The kernel completes the TCP handshake into the backlog; nobody ever reads.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let sb = Sandbox::new();
    let unknown = uuid::Uuid::new_v4().to_string();
    let began = Instant::now();
    let out = run(sb.command_to(&addr, &sb.alice, &["status", &unknown]));
    let took = began.elapsed();
    assert_eq!(
        (out.code, out.stdout_str(), out.stderr.as_str()),
        (
            1,
            "",
            format!("jobs: error: no answer from {addr} within 10 s\n").as_str()
        )
    );
    assert!(
        took >= Duration::from_millis(9_500) && took <= Duration::from_secs(25),
        "took {took:?}"
    );
    drop(listener);
}

/// `jobsd` with the sandbox's server certificate and `state_dir`, run until
/// it exits (it is expected to refuse to start).
fn jobsd_refusing(sb: &Sandbox, state_dir: &Path) -> Out {
    jobsd_refusing_with(sb, state_dir, &[])
}

fn jobsd_refusing_with(sb: &Sandbox, state_dir: &Path, extra: &[&str]) -> Out {
    run(jobsd_command(sb, state_dir, extra))
}

/// `jobsd` on 127.0.0.1:0 with the sandbox's CA and server files, the state
/// directory `state_dir` and `extra` options, stdin closed.
fn jobsd_command(sb: &Sandbox, state_dir: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(JOBSD);
    cmd.args(["--listen", "127.0.0.1:0", "--ca"])
        .arg(&sb.ca)
        .arg("--cert")
        .arg(&sb.server.cert)
        .arg("--key")
        .arg(&sb.server.key)
        .arg("--state-dir")
        .arg(state_dir)
        .args(extra)
        .args(common::own_uid_range(extra))
        .stdin(Stdio::null());
    cmd
}

#[test]
fn jobsd_refuses_an_unusable_state_directory_before_saying_it_listens() {
    // Scenario: `--state-dir` names a file; scripts wait for "listening on",
    // so jobsd must fail before printing it, saying which directory is wrong.
    let sb = Sandbox::new();
    let file = sb.dir.path().join("not-a-dir");
    write_file(&file, b"");
    let out = jobsd_refusing(&sb, &file);
    assert_eq!((out.code, out.stdout_str()), (1, ""));
    assert!(
        out.stderr.ends_with(&format!(
            "jobsd: error: cannot use the state directory {}: File exists (os error 17)\n",
            file.display()
        )),
        "{}",
        out.stderr
    );

    // The same when the directory is fine but its `output` is a file.
    let state = sb.dir.path().join("state");
    fs::create_dir(&state).unwrap();
    write_file(&state.join("output"), b"x");
    let out = jobsd_refusing(&sb, &state);
    assert_eq!((out.code, out.stdout_str()), (1, ""), "{}", out.stderr);
    assert!(
        out.stderr.ends_with(&format!(
            "jobsd: error: cannot use the state directory {}: File exists (os error 17)\n",
            state.join("output").display()
        )),
        "{}",
        out.stderr
    );
}

#[test]
fn a_second_jobsd_cannot_share_a_state_directory() {
    // Scenario: an operator starts jobsd twice on the same --state-dir; the
    // second refuses instead of writing into the first one's job files.
    let daemon = Daemon::start();
    let state = daemon.dir.path().join("state");
    let out = jobsd_refusing(&daemon, &state);
    assert_eq!((out.code, out.stdout_str()), (1, ""));
    assert!(
        out.stderr.ends_with(&format!(
            "jobsd: error: the state directory {} is in use by another jobsd\n",
            state.display()
        )),
        "{}",
        out.stderr
    );
    // The first daemon still serves.
    let id = daemon.start_job(&daemon.alice, &["true"]);
    assert_eq!(daemon.jobs(&daemon.alice, &["status", &id]).code, 0);
}

#[test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
fn start_takes_limits_and_status_shows_them() {
    // Scenario: `jobs start --memory 256M --cpus 0.5 --pids 64` runs the job
    // under those limits; `jobs status` names them and the job's use.
    common::require_root();
    let d = Daemon::start();
    let out = d.jobs(
        &d.alice,
        &[
            "start", "--memory", "256M", "--cpus", "0.5", "--pids", "64", "--", "sleep", "60",
        ],
    );
    assert_eq!((out.code, out.stderr.as_str()), (0, ""));
    let id = out.stdout_str().trim_end().to_owned();
    let v = json(&d.jobs(&d.alice, &["status", "--json", &id]));
    assert_eq!(
        v["limits"],
        serde_json::json!({
            "memory_bytes": 268435456u64,
            "cpu_millis": 500,
            "pids": 64,
            "io_read_bps": null,
            "io_write_bps": null,
        })
    );
    let out = d.jobs(&d.alice, &["status", &id]);
    let lines: Vec<&str> = out.stdout_str().lines().collect();
    assert_eq!(
        lines[1],
        "  limits: memory 256.0 MiB, cpu 0.500 cores, pids 64"
    );
    assert!(lines[2].starts_with("  usage: peak memory "), "{lines:?}");
    assert_eq!(d.jobs(&d.alice, &["stop", &id]).code, 0);

    // Above the daemon's default ceiling of 1 GiB: refused, nothing runs.
    let out = d.jobs(&d.alice, &["start", "--memory", "2G", "--", "true"]);
    assert_eq!(
        (out.code, out.stderr.as_str()),
        (
            1,
            "jobs: error: invalid request: memory_bytes 2147483648 (2.0 GiB) is above the server's ceiling of 1073741824 (1.0 GiB)\n"
        )
    );
}

#[test]
fn malformed_limits_are_usage_errors() {
    // Scenario: a typo in a limit is caught by the CLI before anything is sent.
    let sb = Sandbox::new();
    for (flag, value, text) in [
        ("--memory", "12X", "'12X' is not a size"),
        ("--cpus", "half", "'half' is not a number of cores"),
        ("--pids", "-1", "unexpected argument '-1'"),
    ] {
        let out = run(sb.command_to(
            "127.0.0.1:9",
            &sb.alice,
            &["start", flag, value, "--", "true"],
        ));
        assert_eq!(out.code, 2, "{flag} {value}: {out:?}");
        assert!(out.stderr.contains(text), "{flag} {value}: {}", out.stderr);
    }
}

#[test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
fn a_restarted_jobsd_kills_what_a_killed_one_left_running() {
    // Scenario: jobsd is SIGKILLed with a job running; its processes keep
    // running unowned until a new jobsd on the same state directory starts,
    // kills them and removes their cgroup.
    common::require_root();
    let mut first = Daemon::start();
    let id = first.start_job(&first.alice, &["sleep", "600"]);
    let procs = common::job_processes(&id);
    assert!(!procs.is_empty(), "no process of the job found");
    // The check below can see the job's groups: here they are.
    assert!(!common::cgroup_dirs_named(&id).is_empty());
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    assert!(procs.iter().all(|p| common::alive(*p)), "killed with jobsd");
    // Take the sandbox over (Drop of the dead daemon is a no-op).
    let sandbox = std::mem::replace(&mut first.sandbox, Sandbox::new());
    drop(first);
    let second = Daemon::start_in(sandbox, &[]);
    for pid in &procs {
        // Killed before it said it listens; a SIGKILLed process may show
        // as running until it is next scheduled.
        assert!(
            settles(|| !common::alive(*pid)),
            "process {pid} survived the restart"
        );
    }
    assert_eq!(common::cgroup_dirs_named(&id), Vec::<PathBuf>::new());
    drop(second);
}

#[test]
fn containment_on_refuses_to_start_without_root() {
    // Scenario: an operator asks for containment but starts jobsd as an
    // ordinary user: it must refuse, in one line, before it listens, rather
    // than run jobs uncontained. As root the test runs jobsd as nobody
    // (65534), with the CA, the server certificate and key and the state
    // directory given to it.
    use std::os::unix::process::CommandExt;
    let sb = Sandbox::new();
    let state = sb.dir.path().join("state");
    fs::create_dir(&state).unwrap();
    let mut cmd = jobsd_command(&sb, &state, &["--containment", "on"]);
    if common::is_root() {
        let nobody = Some(nix::unistd::Uid::from_raw(65534));
        let nogroup = Some(nix::unistd::Gid::from_raw(65534));
        for path in [&state, &sb.ca, &sb.server.cert, &sb.server.key] {
            nix::unistd::chown(path.as_path(), nobody, nogroup).unwrap();
        }
        cmd.uid(65534).gid(65534);
    }
    let out = run(cmd);
    assert_eq!((out.code, out.stdout_str()), (1, ""), "{}", out.stderr);
    assert!(
        out.stderr
            .ends_with("jobsd: error: --containment on needs jobsd to run as root\n"),
        "{}",
        out.stderr
    );
}

#[test]
fn containment_off_is_loud() {
    // Scenario: an operator turns containment off; jobsd says so on stderr
    // and its jobs run as its own user.
    let sb = Sandbox::new();
    if common::is_root() {
        // As root that would run jobs as root: refused unless asked for.
        let state = sb.dir.path().join("state");
        let out = jobsd_refusing_with(&sb, &state, &["--containment", "off"]);
        assert!(
            out.stderr.ends_with(
                "jobsd: error: --containment off as root would run every user's jobs as root; add --allow-root if that is really meant\n"
            ),
            "{}",
            out.stderr
        );
    }
    let d = Daemon::start_in(sb, &["--containment", "off", "--allow-root"]);
    let id = d.start_job(&d.alice, &["id", "-u"]);
    let out = d.jobs(&d.alice, &["stream", &id]);
    assert_eq!(out.stdout_str(), format!("{}\n", nix::unistd::geteuid()));
    let log = fs::read_to_string(d.dir.path().join("jobsd.log")).unwrap();
    assert!(
        log.contains("containment is OFF (--containment off)"),
        "{log}"
    );
}

#[test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
fn jobsd_gives_each_identity_its_own_uid_unless_told_to_share_one() {
    // Scenario: by default alice's and bob's jobs run as different uids of
    // the default range; with --run-as the operator shares one account, and
    // jobsd says at start-up what that shares.
    common::require_root();
    // The default range, named: the harness gives every other daemon a range
    // of its own, and the one below shows what `--uid-range` defaults to.
    let default = "2013265920-2013331455";
    let d = Daemon::start_in(Sandbox::new(), &["--uid-range", default]);
    for (user, uid) in [(&d.alice, 2013265920), (&d.bob, 2013265921)] {
        let id = d.start_job(user, &["id", "-u"]);
        assert_eq!(
            d.jobs(user, &["stream", &id]).stdout_str(),
            format!("{uid}\n")
        );
    }
    let log = fs::read_to_string(d.dir.path().join("jobsd.log")).unwrap();
    assert!(
        log.contains("each identity's jobs run as a uid and gid of its own from this range range=2013265920-2013331455"),
        "{log}"
    );
    assert!(!log.contains("--run-as:"), "{log}");
    // A second jobsd on this host, given the same range or one that shares
    // uids with the first, is refused before it listens: it would give other
    // identities the same uids.
    let sb = Sandbox::new();
    let state = sb.dir.path().join("state");
    for ours in [default, "2013265000-2013265920"] {
        let extra = ["--uid-range", ours];
        let out = jobsd_refusing_with(&sb, &state, &extra);
        assert_eq!((out.code, out.stdout_str()), (1, ""), "{extra:?}");
        assert!(
            out.stderr.ends_with(&format!(
                "jobsd: error: --uid-range: {ours} overlaps {default}, which another jobsd on this host holds (pid {}); the two would give different identities the same uids: give each jobsd a range of its own\n",
                d.child.id()
            )),
            "{extra:?}: {}",
            out.stderr
        );
    }
    drop(d);
    // Once the first is gone, the range is free again.
    let d = Daemon::start_in(Sandbox::new(), &["--uid-range", default]);
    drop(d);

    let d = Daemon::start_in(Sandbox::new(), &["--run-as", "nobody"]);
    for user in [&d.alice, &d.bob] {
        let id = d.start_job(user, &["id", "-u"]);
        assert_eq!(d.jobs(user, &["stream", &id]).stdout_str(), "65534\n");
    }
    let log = fs::read_to_string(d.dir.path().join("jobsd.log")).unwrap();
    assert!(
        log.contains("--run-as: every identity without --run-as-for runs its jobs as this one account, so they share what the kernel keeps per uid: the user keyring"),
        "{log}"
    );
}

/// The limits on the identity group of `job` (the directory above the job's
/// group in every hierarchy): memory (v1 `memory.limit_in_bytes` or v2
/// `memory.max`) and processes (`pids.max`), as the files say.
fn identity_group_limits(job: &str) -> (Option<String>, Option<String>) {
    let groups: Vec<PathBuf> = common::cgroup_dirs_named(job)
        .iter()
        .map(|p| p.parent().expect("a parent").to_owned())
        .collect();
    assert!(!groups.is_empty(), "no cgroup for job {job}");
    let read = |file: &str| {
        groups
            .iter()
            .find_map(|g| fs::read_to_string(g.join(file)).ok())
            .map(|s| s.trim().to_owned())
    };
    (
        read("memory.limit_in_bytes").or_else(|| read("memory.max")),
        read("pids.max"),
    )
}

#[test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
fn jobsd_limits_each_identity_to_half_the_memory_and_4096_processes_by_default() {
    // Scenario: with default settings one identity starts job after job; all
    // of its jobs together may not take more than half of the machine's
    // memory, nor more than 4096 processes, so other identities keep the
    // rest. The --identity-max-* flags change or lift these.
    common::require_root();
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap();
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    // The kernel keeps memory limits in whole pages: half, rounded down.
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .unwrap()
        .unwrap() as u64;
    let d = Daemon::start();
    let id = d.start_job(&d.alice, &["sleep", "600"]);
    let (memory, pids) = identity_group_limits(&id);
    assert_eq!(
        (memory, pids.as_deref()),
        (
            Some((kib * 1024 / 2 / page * page).to_string()),
            Some("4096")
        )
    );
    // The uid is alice's alone, so the cap is her RLIMIT_NPROC too: the
    // kernel refuses a fork over it before copying the address space.
    assert_eq!(
        nproc_line(&d),
        "Max processes 4096 4096 processes",
        "the identity's cap as RLIMIT_NPROC"
    );
    assert_eq!(d.jobs(&d.alice, &["stop", &id]).code, 0);
    drop(d);

    let d = Daemon::start_in(
        Sandbox::new(),
        &[
            "--identity-max-memory",
            "64M",
            "--identity-max-pids",
            "none",
        ],
    );
    let id = d.start_job(&d.alice, &["sleep", "600"]);
    let (memory, pids) = identity_group_limits(&id);
    assert_eq!(
        (memory.as_deref(), pids.as_deref()),
        (Some("67108864"), Some("max"))
    );
    assert_ne!(nproc_line(&d), "Max processes 4096 4096 processes");
    assert_eq!(d.jobs(&d.alice, &["stop", &id]).code, 0);
    drop(d);

    // An account every identity shares gets no RLIMIT_NPROC: the kernel
    // counts it per uid, so one identity's processes would use up the
    // others' count.
    let d = Daemon::start_in(Sandbox::new(), &["--run-as", "nobody"]);
    assert_ne!(nproc_line(&d), "Max processes 4096 4096 processes");
}

#[test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
fn a_start_at_the_identitys_process_cap_says_so_and_others_still_start() {
    // Scenario: alice's running jobs hold all the processes her identity may
    // have. Her next start is refused naming her cap and what to do, not
    // blamed on the server; bob starts as before, and alice can start again
    // once one of her jobs is stopped.
    common::require_root();
    // A uid range of its own: every other test's daemon gives its first
    // identity the default range's first uid, whose processes would count
    // against this cap as RLIMIT_NPROC.
    let d = Daemon::start_in(
        Sandbox::new(),
        &[
            "--identity-max-pids",
            "8",
            "--uid-range",
            "2013331200-2013331201",
        ],
    );
    // Each job is its init and the program: four fill the cap.
    let ids: Vec<String> = (0..4)
        .map(|_| d.start_job(&d.alice, &["sleep", "600"]))
        .collect();
    let out = d.jobs(&d.alice, &["start", "--", "sleep", "600"]);
    assert_eq!(
        (out.code, out.stdout_str(), out.stderr.as_str()),
        (
            1,
            "",
            "jobs: error: limit reached: your jobs together are at your cap of 8 processes and threads; stop some of them, or ask the server's operator to raise the cap (jobsd --identity-max-pids, or [identity_limits] pids in the policy)\n"
        )
    );
    // The refused start left no job behind.
    let listed = d.jobs(&d.alice, &["list"]);
    let mut listed: Vec<&str> = listed
        .stdout_str()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    listed.sort_unstable();
    let mut started: Vec<&str> = ids.iter().map(String::as_str).collect();
    started.sort_unstable();
    assert_eq!(listed, started);
    let bobs = d.start_job(&d.bob, &["sleep", "600"]);
    assert_eq!(d.jobs(&d.alice, &["stop", &ids[0]]).code, 0);
    let again = d.start_job(&d.alice, &["sleep", "600"]);
    for id in ids[1..].iter().chain([&again]) {
        assert_eq!(d.jobs(&d.alice, &["stop", id]).code, 0);
    }
    assert_eq!(d.jobs(&d.bob, &["stop", &bobs]).code, 0);
}

/// alice's job's `Max processes` line of /proc/self/limits, spaces squeezed.
fn nproc_line(d: &Daemon) -> String {
    let out = d.jobs(&d.alice, &["run", "--", "cat", "/proc/self/limits"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    out.stdout_str()
        .lines()
        .find(|l| l.starts_with("Max processes"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

#[test]
fn jobsd_refuses_bad_retention_settings_before_anything_else() {
    // Scenario: an operator writes `--retention 0`, a typo, an unknown
    // size suffix, or an identity process cap no start could fit in; jobsd
    // names the option and the value, creates no state directory and never
    // listens.
    let sb = Sandbox::new();
    let state = sb.dir.path().join("state");
    for (extra, message) in [
        (
            ["--retention", "0"],
            "jobsd: error: --retention: '0' would delete jobs as they end; use a positive duration or `never`\n",
        ),
        (
            ["--retention", "7 dayz"],
            "jobsd: error: --retention: '7 dayz' is not a duration such as 7d, 12h or 30m: unknown time unit \"dayz\", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations)\n",
        ),
        (
            ["--max-stored-output", "5Q"],
            "jobsd: error: --max-stored-output: '5Q' is not a size: use a number of bytes with an optional K, M, G or T suffix (powers of 1024), e.g. 256M\n",
        ),
    ] {
        let out = jobsd_refusing_with(&sb, &state, &extra);
        assert_eq!(
            (out.code, out.stdout_str(), out.stderr.as_str()),
            (1, "", message),
            "{extra:?}"
        );
        assert!(!state.exists(), "{extra:?} created the state directory");
    }
    for n in ["0", "1"] {
        let out = jobsd_refusing_with(&sb, &state, &["--identity-max-pids", n]);
        assert_eq!(
            (out.code, out.stdout_str(), out.stderr.as_str()),
            (
                1,
                "",
                format!(
                    "jobsd: error: --identity-max-pids: {n} is out of range: an integer from 2 to 4194304, or none\n"
                )
                .as_str()
            ),
        );
        assert!(!state.exists(), "{n} created the state directory");
    }
}

#[test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
fn jobsd_refuses_root_or_unknown_job_accounts() {
    // Scenario: an operator maps jobs to root by mistake, or misspells an
    // account; jobsd refuses to start and says which option is wrong.
    common::require_root();
    let sb = Sandbox::new();
    let state = sb.dir.path().join("state");
    let out = jobsd_refusing_with(&sb, &state, &["--run-as", "root"]);
    assert_eq!((out.code, out.stdout_str()), (1, ""));
    assert!(
        out.stderr.ends_with(
            "jobsd: error: --run-as root: account 'root' is root (uid or gid 0); jobs run as root only if root is explicitly allowed\n"
        ),
        "{}",
        out.stderr
    );
    let out = jobsd_refusing_with(&sb, &state, &["--run-as", "no-such-user"]);
    assert!(
        out.stderr.ends_with(
            "jobsd: error: --run-as no-such-user: no local account named 'no-such-user'\n"
        ),
        "{}",
        out.stderr
    );
    let out = jobsd_refusing_with(&sb, &state, &["--max-memory", "1M"]);
    assert!(
        out.stderr.ends_with(
            "jobsd: error: a --max-* value is out of range: memory_bytes 1048576 (1.0 MiB) is below the minimum of 4194304 (4.0 MiB)\n"
        ),
        "{}",
        out.stderr
    );
}

#[test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
fn jobsd_as_an_ordinary_user_runs_uncontained_and_says_so() {
    // Scenario: someone starts jobsd without root; it serves anyway, warns
    // that containment is off, runs jobs as that user, and refuses limits
    // rather than ignoring them.
    common::require_root();
    let nobody = 65534;
    let sb = Sandbox::new();
    // The daemon's files must be its own (keys stay 0600).
    for entry in fs::read_dir(sb.dir.path()).unwrap().flatten() {
        std::os::unix::fs::chown(entry.path(), Some(nobody), Some(nobody)).unwrap();
    }
    std::os::unix::fs::chown(sb.dir.path(), Some(nobody), Some(nobody)).unwrap();
    let d = Daemon::start_as(sb, &[], Some(nobody), None);
    let log = fs::read_to_string(d.dir.path().join("jobsd.log")).unwrap();
    assert!(
        log.contains("containment is OFF because jobsd does not run as root"),
        "{log}"
    );
    let id = d.start_job(&d.alice, &["id", "-u"]);
    assert_eq!(d.jobs(&d.alice, &["stream", &id]).stdout_str(), "65534\n");
    let out = d.jobs(&d.alice, &["start", "--memory", "64M", "--", "true"]);
    assert_eq!(
        (out.code, out.stderr.as_str()),
        (
            1,
            "jobs: error: not possible now: this server runs jobs without containment and cannot enforce resource limits\n"
        )
    );
}

#[test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
fn a_daemon_out_of_processes_says_so_and_recovers() {
    // Scenario: jobsd runs in a cgroup with a process limit (as under systemd's
    // TasksMax) and its jobs use it up; a start is refused with
    // RESOURCE_EXHAUSTED instead of crashing the daemon, other calls are
    // answered, and starts work again once jobs end.
    common::require_root();
    let own = fs::read_to_string("/proc/self/cgroup")
        .unwrap()
        .lines()
        .find_map(|l| l.split_once(":pids:").map(|(_, p)| p.to_owned()));
    let Some(own) = own else {
        common::skip_here(
            "a_daemon_out_of_processes_says_so_and_recovers",
            "no v1 pids hierarchy",
        );
        return;
    };
    let group = PathBuf::from(format!(
        "/sys/fs/cgroup/pids{}/jobs-test-tasksmax-{}",
        own.trim_end_matches('/'),
        std::process::id()
    ));
    fs::create_dir(&group).unwrap();
    // The daemon joins the group before it execs (a pre-exec write of "0").
    let d = Daemon::start_as(Sandbox::new(), &[], None, Some(&group.join("cgroup.procs")));
    // jobsd's own threads count too, and its thread pools grow with the
    // first starts and stops (and keep idle threads for a while): go through
    // the same calls once, so that the limit set below is bitten by the
    // jobs' processes, which is the scenario, not by the pools' growth.
    let warm: Vec<String> = (0..4)
        .map(|_| d.start_job(&d.alice, &["sleep", "600"]))
        .collect();
    assert_eq!(d.jobs(&d.alice, &["list"]).code, 0);
    for id in &warm {
        assert_eq!(d.jobs(&d.alice, &["stop", id]).code, 0);
    }
    let in_use: u32 = fs::read_to_string(group.join("pids.current"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Room for a few jobs (2 processes each: jobs-init and the program).
    fs::write(group.join("pids.max"), (in_use + 8).to_string()).unwrap();
    let mut ids = Vec::new();
    let refused = loop {
        let out = d.jobs(&d.alice, &["start", "--", "sleep", "600"]);
        if out.code != 0 {
            break out;
        }
        ids.push(out.stdout_str().trim_end().to_owned());
        assert!(ids.len() < 20, "the process limit never bit");
    };
    assert_eq!(
        refused.stderr,
        "jobs: error: limit reached: the server cannot start more processes right now; retry later\n"
    );
    assert!(!ids.is_empty());
    assert_eq!(d.jobs(&d.alice, &["list"]).code, 0);
    for id in &ids {
        assert_eq!(d.jobs(&d.alice, &["stop", id]).code, 0);
    }
    let id = d.start_job(&d.alice, &["true"]);
    assert_eq!(d.jobs(&d.alice, &["stream", &id]).code, 0);
    drop(d);
    let _ = fs::remove_dir(&group);
}

#[test]
fn sighup_does_not_kill_jobsd_and_an_early_sigterm_is_orderly() {
    // Scenario: the terminal jobsd runs in closes (SIGHUP); later a script
    // sends SIGTERM the moment jobsd says it listens. jobsd survives the
    // first, shuts down in order on the second, and leaves no cgroup.
    let mut d = Daemon::start();
    let id = d.start_job(&d.alice, &["sleep", "600"]);
    let subtree = jobs::exec::cgroup_name_for(&d.dir.path().join("state"));
    if common::is_root() {
        // The check at the end can see the daemon's subtree: here it is.
        assert!(!common::cgroup_dirs_named(&subtree).is_empty());
    }
    let pid = Pid::from_raw(i32::try_from(d.child.id()).unwrap());
    kill(pid, Signal::SIGHUP).unwrap();
    let again = d.start_job(&d.alice, &["true"]);
    assert_eq!(d.jobs(&d.alice, &["stream", &again]).code, 0);
    assert!(
        headline(d.jobs(&d.alice, &["status", &id]))
            .stdout_str()
            .contains("  running  "),
        "the job did not survive SIGHUP"
    );
    let log = fs::read_to_string(d.dir.path().join("jobsd.log")).unwrap();
    assert!(
        log.contains("SIGHUP received: no --policy file to reload"),
        "{log}"
    );

    let sandbox = std::mem::replace(&mut d.sandbox, Sandbox::new());
    kill(pid, Signal::SIGTERM).unwrap();
    assert!(d.child.wait().unwrap().success());
    drop(d);
    let mut d = Daemon::start_in(sandbox, &[]);
    let pid = Pid::from_raw(i32::try_from(d.child.id()).unwrap());
    kill(pid, Signal::SIGTERM).unwrap();
    let status = d.child.wait().unwrap();
    assert!(status.success(), "jobsd ended with {status}");
    if common::is_root() {
        assert_eq!(common::cgroup_dirs_named(&subtree), Vec::<PathBuf>::new());
    }
}

#[test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
fn the_oom_killer_prefers_jobs_to_jobsd() {
    // Scenario: job cgroups sit beneath jobsd's own, so an out-of-memory
    // condition there makes the kernel choose between jobsd and the jobs;
    // jobsd shields itself, and its jobs do not inherit the shield.
    common::require_root();
    let d = Daemon::start();
    let id = d.start_job(&d.alice, &["cat", "/proc/self/oom_score_adj"]);
    assert_eq!(d.jobs(&d.alice, &["stream", &id]).stdout_str(), "0\n");
    let daemon = fs::read_to_string(format!("/proc/{}/oom_score_adj", d.child.id())).unwrap();
    // Lowering the score needs CAP_SYS_RESOURCE (capabilities(7)), which some
    // container sandboxes withhold even from root; jobsd then says so.
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap();
    const CAP_SYS_RESOURCE: u32 = 24; // linux/capability.h
    if eff & (1 << CAP_SYS_RESOURCE) != 0 {
        assert_eq!(daemon, format!("{}\n", jobs::exec::DAEMON_OOM_SCORE_ADJ));
    } else {
        eprintln!(
            "the_oom_killer_prefers_jobs_to_jobsd: no CAP_SYS_RESOURCE here; checking the warning instead"
        );
        assert_eq!(daemon, "0\n");
        let log = fs::read_to_string(d.dir.path().join("jobsd.log")).unwrap();
        assert!(log.contains("cannot lower jobsd's OOM score"), "{log}");
    }
}

/// Writes `text` as the sandbox's `policy.toml` and returns its path.
fn write_policy(sb: &Sandbox, text: &str) -> PathBuf {
    let path = sb.dir.path().join("policy.toml");
    fs::write(&path, text).unwrap();
    path
}

/// Waits until jobsd's log contains `what` `n` times.
fn wait_for_log(d: &Daemon, what: &str, n: usize) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let log = fs::read_to_string(d.dir.path().join("jobsd.log")).unwrap();
        if log.matches(what).count() >= n {
            return log;
        }
        assert!(Instant::now() < deadline, "no {what:?} in the log:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn jobsd_refuses_to_start_with_a_broken_policy_naming_file_line_and_key() {
    // Scenario (C27): a typo or a misplaced key in the policy file must stop
    // jobsd before it serves anyone, saying where the mistake is.
    let sb = Sandbox::new();
    let alice = PKI.alice.identity.to_string();
    for (text, at) in [
        (
            format!("denylst = [\"{alice}\"]\n"),
            ":1:1: key 'denylst': unknown key; expected one of: denylist, admins, rate, quota, limits, handshakes, identity_limits, keep_jobs_when_banned, users",
        ),
        (
            format!("[rate]\ndenylist = [\"{alice}\"]\n"),
            ":2:1: key 'rate.denylist': unknown key; expected one of: requests_per_second, request_burst, starts_per_minute, start_burst",
        ),
    ] {
        let path = write_policy(&sb, &text);
        let out = jobsd_refusing_with(
            &sb,
            &sb.dir.path().join("state"),
            &["--policy", path.to_str().unwrap()],
        );
        assert_eq!((out.code, out.stdout_str()), (1, ""), "{text}");
        assert!(
            out.stderr.ends_with(&format!(
                "jobsd: error: invalid policy: {}{at}\n",
                path.display()
            )),
            "{text}: {}",
            out.stderr
        );
    }
    // `--check-policy` says the same without starting, and accepts a good one.
    let path = write_policy(&sb, &format!("denylist = [\"{}\"]\n", alice.to_uppercase()));
    let mut cmd = Command::new(JOBSD);
    cmd.args(["--policy", path.to_str().unwrap(), "--check-policy"]);
    let out = run(cmd);
    assert_eq!((out.code, out.stdout_str()), (1, ""));
    assert!(
        out.stderr.starts_with(&format!(
            "jobsd: error: invalid policy: {}:1:13: key 'denylist[0]': ",
            path.display()
        )),
        "{}",
        out.stderr
    );
    let path = write_policy(&sb, &format!("denylist = [\"{alice}\"]\nadmins = []\n"));
    let mut cmd = Command::new(JOBSD);
    cmd.args(["--policy", path.to_str().unwrap(), "--check-policy"]);
    let out = run(cmd);
    assert_eq!(
        (out.code, out.stdout_str(), out.stderr.as_str()),
        (
            0,
            format!(
                "{}: valid (1 denied, 0 admins, 0 identities with overrides)\n",
                path.display()
            )
            .as_str(),
            ""
        )
    );
}

#[test]
fn sighup_reloads_the_policy_and_a_broken_file_keeps_the_old_one() {
    // Scenario: the operator denylists alice and sends SIGHUP; later a typo
    // in the file must not silently lift the denylist. With `--on-revoke
    // keep` her running job is not touched (by default a newly denylisted
    // identity's jobs are stopped: tests/revocation.rs), and every decision
    // is in the audit log.
    let sb = Sandbox::new();
    let alice = PKI.alice.identity.to_string();
    let bob = PKI.bob.identity.to_string();
    let policy = write_policy(&sb, &format!("admins = [\"{bob}\"]\n"));
    let audit = sb.dir.path().join("audit.jsonl");
    let d = Daemon::start_in(
        sb,
        &[
            "--on-revoke",
            "keep",
            "--policy",
            policy.to_str().unwrap(),
            "--audit-log",
            audit.to_str().unwrap(),
        ],
    );
    let pid = Pid::from_raw(i32::try_from(d.child.id()).unwrap());
    let running = d.start_job(&d.alice, &["sleep", "600"]);

    fs::write(
        &policy,
        format!("denylist = [\"{alice}\"]\nadmins = [\"{bob}\"]\n"),
    )
    .unwrap();
    kill(pid, Signal::SIGHUP).unwrap();
    wait_for_log(&d, "policy reloaded", 1);
    let denied = "jobs: error: permission denied: this identity is denied by the server's policy; ask the server's operator\n";
    let out = d.jobs(&d.alice, &["list"]);
    assert_eq!((out.code, out.stderr.as_str()), (1, denied));

    // A broken file: rejected, logged with file, line and key; alice stays denied.
    fs::write(&policy, format!("denylist = [\"{alice}\"]\nadmns = []\n")).unwrap();
    kill(pid, Signal::SIGHUP).unwrap();
    let log = wait_for_log(&d, "policy NOT reloaded", 1);
    assert!(
        log.contains(&format!(
            "policy NOT reloaded, the previous policy stays in force: {}:2:1: key 'admns': unknown key",
            policy.display()
        )),
        "{log}"
    );
    let out = d.jobs(&d.alice, &["list"]);
    assert_eq!((out.code, out.stderr.as_str()), (1, denied));

    // bob, an admin, sees alice's job still running and lists everyone's.
    let out = headline(d.jobs(&d.bob, &["status", &running]));
    assert!(out.stdout_str().contains("  running  "), "{out:?}");
    let out = d.jobs(&d.bob, &["list", "--all"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout_str()
            .starts_with(&format!("{alice}  {running}  running")),
        "{out:?}"
    );

    // Every decision is one JSON line, in order.
    let lines: Vec<Value> = fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let summary: Vec<(String, String, String, Option<String>)> = lines
        .iter()
        .map(|v| {
            (
                v["subject"].as_str().unwrap().to_owned(),
                v["rpc"].as_str().unwrap().to_owned(),
                v["outcome"].as_str().unwrap().to_owned(),
                v["reason"].as_str().map(str::to_owned),
            )
        })
        .collect();
    let line = |who: &str, rpc: &str, outcome: &str, reason: Option<&str>| {
        (
            format!("CN={who}"),
            rpc.to_owned(),
            outcome.to_owned(),
            reason.map(str::to_owned),
        )
    };
    assert_eq!(
        summary,
        vec![
            line("alice", "Start", "allowed", None),
            line("alice", "List", "denied", Some("denylisted")),
            line("alice", "List", "denied", Some("denylisted")),
            line("bob", "Status", "allowed", None),
            line("bob", "List", "allowed", None),
        ]
    );
    assert_eq!(lines[3]["admin"], Value::Bool(true));
    assert_eq!(lines[3]["owner"], Value::String(alice.clone()));
    assert_eq!(lines[3]["job"], Value::String(running.clone()));

    // A FIFO in place of the file (nobody writing to it) is refused at
    // once: the daemon keeps serving and alice stays denied.
    fs::remove_file(&policy).unwrap();
    nix::unistd::mkfifo(&policy, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    kill(pid, Signal::SIGHUP).unwrap();
    let log = wait_for_log(&d, "policy NOT reloaded", 2);
    assert!(log.contains("not a regular file"), "{log}");
    let out = d.jobs(&d.alice, &["list"]);
    assert_eq!((out.code, out.stderr.as_str()), (1, denied));
    assert_eq!(d.jobs(&d.bob, &["list"]).code, 0);

    // Scenario: `jobs stop --owner` from alice (denylisted, no admin) is
    // refused; bob, an admin, stops her one running job and is told how many.
    let out = d.jobs(&d.alice, &["stop", "--owner", &alice]);
    assert_eq!((out.code, out.stderr.as_str()), (1, denied));
    let out = d.jobs(&d.bob, &["stop", "--owner", &alice]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.stdout_str(),
        format!(
            "{running}  stopped: killed by signal 15 (SIGTERM)  sleep 600\nstopped 1 job(s) of {alice}\n"
        )
    );
    let out = d.jobs(&d.bob, &["stop", "--owner", &alice]);
    assert_eq!(out.stdout_str(), format!("stopped 0 job(s) of {alice}\n"));
    drop(d);
}

#[test]
fn a_job_over_its_output_quota_is_stopped_and_says_so() {
    // Scenario: a job that writes forever under a 1000-byte output quota
    // keeps exactly 1000 bytes and ends in state output_limit.
    let sb = Sandbox::new();
    let policy = write_policy(&sb, "[quota]\nmax_output_bytes = 1000\n");
    let d = Daemon::start_in(sb, &["--policy", policy.to_str().unwrap()]);
    let id = d.start_job(&d.alice, &["yes"]);
    let out = d.jobs(&d.alice, &["stream", &id]);
    assert_eq!(out.code, 128 + 15, "{out:?}");
    assert_eq!(out.stdout, b"y\n".repeat(500));
    let out = d.jobs(&d.alice, &["status", &id]);
    assert_eq!(out.code, 0);
    let text = out.stdout_str();
    assert!(
        text.starts_with(&format!(
            "{id}  stopped at its output limit of 1000 B: killed by signal 15 (SIGTERM)  yes\n"
        )),
        "{text}"
    );
    assert!(
        text.ends_with("  output: 1000 B of at most 1000 B\n"),
        "{text}"
    );
    let out = d.jobs(&d.alice, &["status", "--json", &id]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (&v["state"], &v["output_bytes"], &v["max_output_bytes"]),
        (
            &Value::from("output_limit"),
            &Value::from(1000),
            &Value::from(1000)
        )
    );
}

// ---------------------------------------------------------------------------
// Durable state: crashes and restarts, `jobs rm`, foreign databases, a full
// disk, shutdown with open streams.

/// How the daemon under test runs its jobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Containment {
    /// In a cgroup and namespaces, as a uid of the identity's own: jobsd's
    /// default as root.
    On,
    /// In a process group of jobsd's own user.
    Off,
}

impl Containment {
    /// jobsd's options for this mode.
    fn args(self) -> &'static [&'static str] {
        match self {
            Containment::On => &[],
            // As root, running jobs as root needs the operator's consent.
            Containment::Off if common::is_root() => &["--containment", "off", "--allow-root"],
            Containment::Off => &["--containment", "off"],
        }
    }

    /// Host pids of the live processes of job `id`, whose first process
    /// printed `leader` as its `$$`: for a contained job those in its cgroup,
    /// for an uncontained one those in the process group `leader` leads.
    fn processes(self, id: &str, leader: i32) -> Vec<i32> {
        match self {
            Containment::On => common::job_processes(id),
            Containment::Off => group_members(leader),
        }
    }
}

/// The process group of `pid` (field 5 of `/proc/PID/stat`, proc(5)).
fn process_group(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields resume after
    // the last ')', at field 3.
    stat[stat.rfind(')')? + 2..].split(' ').nth(2)?.parse().ok()
}

fn host_pids() -> Vec<i32> {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .collect()
}

/// Live (not zombie) processes in process group `pgid`.
fn group_members(pgid: i32) -> Vec<i32> {
    host_pids()
        .into_iter()
        .filter(|&pid| process_group(pid) == Some(pgid) && common::alive(pid))
        .collect()
}

/// Live processes whose argv is `sleep ARG` (not, say, a `jobs-init` whose
/// own argv ends in those words).
fn sleeping(arg: &str) -> Vec<i32> {
    let cmdline = format!("sleep\0{arg}\0");
    host_pids()
        .into_iter()
        .filter(|&pid| {
            fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == cmdline.as_bytes())
                && common::alive(pid)
        })
        .collect()
}

/// A `sleep` argument no other test uses (GNU sleep takes fractions), so
/// that the job's process can be told apart in `/proc` from everyone else's.
fn unique_sleep() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("600.{}{n:04}", std::process::id())
}

/// Polls `cond` every 20 ms until it holds, for up to 2 s; returns whether
/// it held. Only for `/proc` conditions, which have no event to wait on:
/// SIGKILL takes effect when its target next runs, so a process killed a
/// moment ago may still show as running.
fn settles(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Where `text` first differs from "1\n2\n3\n…" (what `seq 1 N` prints),
/// `None` if it is a prefix of that.
fn counting_mismatch(text: &[u8]) -> Option<usize> {
    let mut expected = Vec::with_capacity(text.len() + 24);
    let mut i = 1u64;
    while expected.len() < text.len() {
        writeln!(expected, "{i}").unwrap();
        i += 1;
    }
    text.iter().zip(&expected).position(|(a, b)| a != b)
}

/// What a job's status line says of a job that ran when jobsd died.
const LOST: &str = "lost: the server stopped while it ran";

/// Jobs that count "1\n2\n3\n…" forever after printing their `$$` on a line
/// of its own, with a `sleep` beside them that writes nothing (so it
/// outlives a dead daemon's pipes: only a restart's clean-up ends it). One
/// writes a few bytes per `write`, one a few KiB (`seq` in blocks).
const COUNTERS: [&str; 2] = [
    "sleep 600 & echo $$; i=0; while :; do i=$((i+1)); echo $i; done",
    "sleep 600 & echo $$; i=0; while :; do seq $((i*1000+1)) $((i*1000+1000)); i=$((i+1)); done",
];

/// A job that ran when jobsd was SIGKILLed, as its follower saw it.
struct Crashed {
    id: String,
    /// The `sh -c` script.
    script: &'static str,
    /// The `$$` the job printed (a host pid only without containment).
    leader: i32,
    /// Host pids of its processes, alive just before the kill.
    processes: Vec<i32>,
    /// Everything `jobs stream` printed before it was cut off.
    seen: Vec<u8>,
}

/// Starts `script` (one of [`COUNTERS`]) on `d`, follows it until at least
/// `offset` bytes have arrived, SIGKILLs jobsd and returns its sandbox and
/// the job. The follower must be cut off with exit 255.
fn crash_mid_output(
    d: Daemon,
    mode: Containment,
    script: &'static str,
    offset: usize,
) -> (Sandbox, Crashed) {
    let id = d.start_job(&d.alice, &["sh", "-c", script]);
    let mut follower = d
        .command(&d.alice, &["stream", &id])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = follower.stdout.take().unwrap();
    let (reached, at_offset) = std::sync::mpsc::channel();
    // Reads to the end; tells once `offset` bytes (and the pid line) are in.
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut told = false;
        loop {
            let n = stdout.read(&mut buf).unwrap();
            if n == 0 {
                return seen;
            }
            seen.extend_from_slice(&buf[..n]);
            if !told && seen.len() >= offset && seen.contains(&b'\n') {
                told = true;
                let line = seen.split(|&b| b == b'\n').next().unwrap().to_vec();
                let _ = reached.send(line);
            }
        }
    });
    let line = at_offset
        .recv_timeout(DEADLINE)
        .unwrap_or_else(|e| panic!("job {id} did not print {offset} bytes: {e}"));
    let leader: i32 = std::str::from_utf8(&line).unwrap().parse().unwrap();
    let processes = mode.processes(&id, leader);
    assert!(
        processes.len() >= 2,
        "job {id}: the counter and its sleep should be running: {processes:?}"
    );
    let sandbox = d.crash();
    let cut = finish(follower);
    assert_eq!(cut.code, 255, "{cut:?}");
    assert!(
        cut.stderr.starts_with(&format!(
            "jobs: error: lost track of job {id} before it ended; its output may be incomplete: "
        )),
        "{}",
        cut.stderr
    );
    let seen = reader.join().unwrap();
    (
        sandbox,
        Crashed {
            id,
            script,
            leader,
            processes,
            seen,
        },
    )
}

/// Checks, on the daemon that followed a crash, that `job` is `lost`, that
/// nothing of it runs any more, and that its kept output is a byte-exact
/// prefix of what it printed, holding everything its follower saw; returns
/// that output.
fn check_lost(d: &Daemon, mode: Containment, job: &Crashed) -> Vec<u8> {
    let id = job.id.as_str();
    let left = || mode.processes(id, job.leader);
    assert!(settles(|| left().is_empty()), "job {id} left {:?}", left());
    for &pid in &job.processes {
        assert!(!common::alive(pid), "process {pid} of job {id} survived");
    }
    let out = headline(d.jobs(&d.alice, &["status", id]));
    assert_eq!(
        (out.code, out.stdout_str(), out.stderr.as_str()),
        (
            0,
            format!("{id}  {LOST}  sh -c '{}'\n", job.script).as_str(),
            ""
        ),
    );
    let out = d.jobs(&d.alice, &["output", id]);
    assert_eq!((out.code, out.stderr.as_str()), (0, ""), "jobs output {id}");
    let kept = out.stdout;
    assert!(
        kept.starts_with(&job.seen),
        "job {id}: kept {} bytes, not a continuation of the {} its follower saw",
        kept.len(),
        job.seen.len()
    );
    let pid_line = format!("{}\n", job.leader);
    assert!(kept.starts_with(pid_line.as_bytes()), "job {id}");
    let counted = &kept[pid_line.len()..];
    assert_eq!(
        counting_mismatch(counted),
        None,
        "job {id}: kept output differs from the count ({} bytes)",
        counted.len()
    );
    let v = json(&d.jobs(&d.alice, &["status", "--json", id]));
    assert_eq!(
        (
            &v["state"],
            &v["exit_code"],
            &v["signal"],
            &v["output_bytes"]
        ),
        (
            &Value::from("lost"),
            &Value::Null,
            &Value::Null,
            &Value::from(kept.len())
        ),
        "job {id}"
    );
    // A follower gets all of it, then is told the job was lost.
    let out = d.jobs(&d.alice, &["stream", id]);
    assert_eq!(
        (out.code, out.stderr.as_str()),
        (255, format!("jobs: job {id}: {LOST}\n").as_str()),
    );
    assert!(
        out.stdout == kept,
        "jobs stream {id} differs from jobs output"
    );
    kept
}

/// The body of [`kill_9_mid_output_repeatedly_contained`] and
/// [`kill_9_mid_output_repeatedly_uncontained`].
fn kill_9_mid_output_repeatedly(mode: Containment) {
    let mut d = Daemon::start_in(Sandbox::new(), mode.args());
    let finished = d.start_job(&d.alice, &["sh", "-c", "echo done; exit 3"]);
    assert_eq!(d.jobs(&d.alice, &["stream", &finished]).code, 3);
    let finished_line = format!("{finished}  exited with code 3  sh -c 'echo done; exit 3'\n");
    // Every job so far: its status line and output, which no later crash
    // may change.
    let mut earlier: Vec<(String, String, Vec<u8>)> =
        vec![(finished.clone(), finished_line, b"done\n".to_vec())];
    for (round, offset) in [1, 256 << 10, 2 << 20].into_iter().enumerate() {
        let script = COUNTERS[(round + 1) % COUNTERS.len()];
        let (sandbox, job) = crash_mid_output(d, mode, script, offset);
        d = Daemon::start_in(sandbox, mode.args());
        let kept = check_lost(&d, mode, &job);
        for (id, line, output) in &earlier {
            let status = headline(d.jobs(&d.alice, &["status", id]));
            assert_eq!(status.stdout_str(), line, "round {round}");
            let out = d.jobs(&d.alice, &["output", id]);
            assert!(
                (out.code, out.stderr.as_str()) == (0, "") && out.stdout == *output,
                "round {round}: the output of job {id} changed ({} bytes now, {} before)",
                out.stdout.len(),
                output.len()
            );
        }
        let line = format!("{}  {LOST}  sh -c '{script}'\n", job.id);
        earlier.push((job.id, line, kept));
        // `jobs list`: every job, oldest first, none running.
        let out = d.jobs(&d.alice, &["list", "--json"]);
        let listed: Vec<(String, String)> = json(&out)
            .as_array()
            .unwrap()
            .iter()
            .map(|j| {
                (
                    j["id"].as_str().unwrap().to_owned(),
                    j["state"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let mut expected = vec![(finished.clone(), "exited".to_owned())];
        expected.extend(
            earlier[1..]
                .iter()
                .map(|(id, ..)| (id.clone(), "lost".to_owned())),
        );
        assert_eq!(listed, expected, "round {round}");
    }
}

#[test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
fn kill_9_mid_output_repeatedly_contained() {
    // Scenario: jobsd is SIGKILLed three times on one state directory, each
    // time while a contained job is writing (after its first line, 256 KiB,
    // 2 MiB). After each restart the job is `lost`, nothing of it runs, its
    // output is a byte-exact prefix of what it wrote holding all its follower
    // saw, and every earlier job keeps its state and output.
    common::require_root();
    kill_9_mid_output_repeatedly(Containment::On);
}

#[test]
fn kill_9_mid_output_repeatedly_uncontained() {
    // Scenario: as kill_9_mid_output_repeatedly_contained, with containment
    // off: the restart finds what is left of each job by its process group.
    kill_9_mid_output_repeatedly(Containment::Off);
}

/// The body of [`kill_9_after_a_burst_of_starts_contained`] and its
/// uncontained twin.
fn kill_9_after_a_burst_of_starts(mode: Containment) {
    let d = Daemon::start_in(Sandbox::new(), mode.args());
    let sleep = unique_sleep();
    let ids: Vec<String> = (0..20)
        .map(|_| d.start_job(&d.alice, &["sleep", &sleep]))
        .collect();
    let sandbox = d.crash();
    match mode {
        // Orphaned, contained jobs run on until a successor cleans up.
        Containment::On => assert!(
            settles(|| sleeping(&sleep).len() == ids.len()),
            "{:?}",
            sleeping(&sleep)
        ),
        // An uncontained job's main process dies with its daemon
        // (PR_SET_PDEATHSIG), recorded or not.
        Containment::Off => assert!(
            settles(|| sleeping(&sleep).is_empty()),
            "{:?}",
            sleeping(&sleep)
        ),
    }
    let d = Daemon::start_in(sandbox, mode.args());
    assert!(
        settles(|| sleeping(&sleep).is_empty()),
        "{:?}",
        sleeping(&sleep)
    );
    if mode == Containment::On {
        for id in &ids {
            let left = common::job_processes(id);
            assert!(left.is_empty(), "job {id} left {left:?} in its cgroup");
        }
    }
    let expected: String = ids
        .iter()
        .map(|id| format!("{id}  {LOST}  sleep {sleep}\n"))
        .collect();
    let out = d.jobs(&d.alice, &["list"]);
    assert_eq!(
        (out.code, out.stdout_str(), out.stderr.as_str()),
        (0, expected.as_str(), "")
    );
}

#[test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
fn kill_9_after_a_burst_of_starts_contained() {
    // Scenario: 20 `jobs start` in a row, jobsd SIGKILLed the moment the
    // last id is printed: every acknowledged job is listed after the
    // restart, as lost, and none of them still runs.
    common::require_root();
    kill_9_after_a_burst_of_starts(Containment::On);
}

#[test]
fn kill_9_after_a_burst_of_starts_uncontained() {
    // Scenario: as kill_9_after_a_burst_of_starts_contained, containment off.
    kill_9_after_a_burst_of_starts(Containment::Off);
}

/// The body of [`finished_jobs_survive_kill_9_contained`] and its twin.
fn finished_jobs_survive_kill_9(mode: Containment) {
    let d = Daemon::start_in(Sandbox::new(), mode.args());
    let blob = random_bytes((1 << 20) + 7);
    let path = d.dir.path().join("blob");
    fs::write(&path, &blob).unwrap();
    let interleaved = "echo out1; echo err1 >&2; printf out2; printf err2 >&2; exit 0";
    let jobs: [(Vec<&str>, i32, &str); 4] = [
        (
            vec!["sh", "-c", "exit 3"],
            3,
            "exited with code 3  sh -c 'exit 3'",
        ),
        (
            vec!["sh", "-c", "kill -9 $$"],
            137,
            "killed by signal 9 (SIGKILL)  sh -c 'kill -9 $$'",
        ),
        (vec!["sh", "-c", interleaved], 0, ""),
        (vec!["cat", path.to_str().unwrap()], 0, ""),
    ];
    // Per job: id, full status text, JSON status, merged and split output.
    let mut before = Vec::new();
    for (argv, code, line) in &jobs {
        let id = d.start_job(&d.alice, argv);
        assert_eq!(d.jobs(&d.alice, &["stream", &id]).code, *code, "{argv:?}");
        if !line.is_empty() {
            let out = headline(d.jobs(&d.alice, &["status", &id]));
            assert_eq!(out.stdout_str(), format!("{id}  {line}\n"));
        }
        let status = d.jobs(&d.alice, &["status", &id]).stdout;
        let v = json(&d.jobs(&d.alice, &["status", "--json", &id]));
        let merged = d.jobs_merged(&d.alice, &["output", &id]);
        let out = d.jobs(&d.alice, &["output", &id]);
        before.push((id, status, v, merged, out.stdout, out.stderr));
    }
    assert!(before[3].4 == blob, "cat's output differs before the crash");
    assert_eq!(
        (before[2].4.as_slice(), before[2].5.as_str()),
        (&b"out1\nout2"[..], "err1\nerr2")
    );
    let sandbox = d.crash();
    let d = Daemon::start_in(sandbox, mode.args());
    for (id, status, v, merged, stdout, stderr) in &before {
        let out = d.jobs(&d.alice, &["status", id]);
        assert_eq!(
            (out.code, out.stdout_str(), out.stderr.as_str()),
            (0, std::str::from_utf8(status).unwrap(), "")
        );
        assert_eq!(&json(&d.jobs(&d.alice, &["status", "--json", id])), v);
        assert!(
            d.jobs_merged(&d.alice, &["output", id]) == *merged,
            "the interleaving of job {id}'s output changed"
        );
        let out = d.jobs(&d.alice, &["output", id]);
        assert!(
            out.code == 0 && out.stdout == *stdout && out.stderr == *stderr,
            "job {id}'s output changed: {} bytes of stdout, stderr {:?}",
            out.stdout.len(),
            out.stderr
        );
    }
}

#[test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
fn finished_jobs_survive_kill_9_contained() {
    // Scenario: jobs that exited 3, died of SIGKILL, interleaved stdout and
    // stderr, or wrote 1 MiB of random bytes have ended when jobsd is
    // SIGKILLed: after the restart each has the same status (text and JSON)
    // and byte-exact output, stdout and stderr still in their order.
    common::require_root();
    finished_jobs_survive_kill_9(Containment::On);
}

#[test]
fn finished_jobs_survive_kill_9_uncontained() {
    // Scenario: as finished_jobs_survive_kill_9_contained, containment off.
    finished_jobs_survive_kill_9(Containment::Off);
}

#[test]
fn rm_deletes_finished_jobs_and_refuses_running_ones() {
    // Scenario: `jobs rm` deletes a finished job's record and output file
    // for good (a restart does not bring it back), refuses a running job
    // (which keeps running), and takes each of several ids on its own: one
    // unknown, malformed or other user's id fails the command but not the
    // others.
    let d = Daemon::start();
    let output_dir = d.dir.path().join("state/output");
    let log = |id: &str| output_dir.join(format!("{id}.log"));
    let finished = |argv: &[&str]| {
        let id = d.start_job(&d.alice, argv);
        assert_eq!(d.jobs(&d.alice, &["stream", &id]).code, 0);
        assert!(log(&id).is_file(), "no {}", log(&id).display());
        id
    };
    let gone = "jobs: error: not found: no such job\n";

    let a = finished(&["echo", "a"]);
    let out = d.jobs(&d.alice, &["rm", &a]);
    assert_eq!(
        (out.code, out.stdout_str(), out.stderr.as_str()),
        (0, "", "")
    );
    let out = d.jobs(&d.alice, &["status", &a]);
    assert_eq!(
        (out.code, out.stdout_str(), out.stderr.as_str()),
        (1, "", gone)
    );
    assert!(!log(&a).exists());

    let sleep = unique_sleep();
    let running = d.start_job(&d.alice, &["sleep", &sleep]);
    let out = d.jobs(&d.alice, &["rm", &running]);
    assert_eq!(
        (out.code, out.stdout_str(), out.stderr.as_str()),
        (
            1,
            "",
            format!(
                "jobs: error: cannot remove job {running}: not possible now: the job is still running; stop it first\n"
            )
            .as_str()
        )
    );
    let out = headline(d.jobs(&d.alice, &["status", &running]));
    assert_eq!(
        out.stdout_str(),
        format!("{running}  running  sleep {sleep}\n")
    );
    assert_eq!(sleeping(&sleep).len(), 1);

    let b = finished(&["echo", "b"]);
    let c = finished(&["echo", "c"]);
    let bobs = d.start_job(&d.bob, &["true"]);
    assert_eq!(d.jobs(&d.bob, &["stream", &bobs]).code, 0);
    let unknown = uuid::Uuid::new_v4().to_string();
    let out = d.jobs(&d.alice, &["rm", &b, &unknown, &bobs, "not-a-uuid", &c]);
    assert_eq!(
        (out.code, out.stdout_str(), out.stderr.as_str()),
        (
            1,
            "",
            format!(
                "jobs: error: cannot remove job {unknown}: not found: no such job\n\
                 jobs: error: cannot remove job {bobs}: not found: no such job\n\
                 jobs: error: cannot remove job not-a-uuid: invalid request: job id must be a UUID in canonical lower-case form, like 67e55044-10b1-426f-9247-bb680e5fe0c8\n"
            )
            .as_str()
        )
    );
    for id in [&b, &c] {
        assert_eq!(d.jobs(&d.alice, &["status", id]).stderr, gone);
        assert!(!log(id).exists());
    }
    assert_eq!(
        d.jobs(&d.bob, &["status", &bobs]).code,
        0,
        "bob's job was removed"
    );
    assert!(log(&bobs).is_file());

    // Removed stays removed; what was not removed is still there.
    let sandbox = d.terminate();
    let d = Daemon::start_in(sandbox, &[]);
    for id in [&a, &b, &c] {
        assert_eq!(d.jobs(&d.alice, &["status", id]).stderr, gone);
    }
    let out = d.jobs(&d.alice, &["list"]);
    assert_eq!(
        out.stdout_str(),
        format!("{running}  stopped: killed by signal 15 (SIGTERM)  sleep {sleep}\n")
    );
    assert_eq!(d.jobs(&d.alice, &["rm", &running]).code, 0);
    assert_eq!(d.jobs(&d.alice, &["list"]).stdout_str(), "");
    let out = d.jobs(&d.bob, &["output", &bobs]);
    assert_eq!((out.code, out.stdout_str()), (0, ""));
}

/// Runs jobsd on `sb`'s state directory, expecting it to refuse to start
/// before it prints `listening on`; checks that `jobs.db` is byte for byte
/// what it was and returns jobsd's stderr.
fn refused_with_db_unchanged(sb: &Sandbox) -> String {
    let state = sb.dir.path().join("state");
    let db = state.join("jobs.db");
    let before = fs::read(&db).unwrap();
    let out = jobsd_refusing(sb, &state);
    assert_eq!((out.code, out.stdout_str()), (1, ""), "{}", out.stderr);
    assert!(
        fs::read(&db).unwrap() == before,
        "jobsd changed {}",
        db.display()
    );
    out.stderr
}

#[test]
fn jobsd_refuses_a_database_of_a_newer_schema_and_leaves_it_alone() {
    // Scenario: an operator downgrades jobsd after a newer one migrated the
    // state directory; the old one must not start (nor touch the file), and
    // must say why.
    let d = Daemon::start();
    let id = d.start_job(&d.alice, &["echo", "kept"]);
    assert_eq!(d.jobs(&d.alice, &["stream", &id]).code, 0);
    let sb = d.terminate();
    let db = sb.dir.path().join("state/jobs.db");
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        let version: u32 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, jobs::store::SCHEMA_VERSION);
        conn.pragma_update(None, "user_version", 99).unwrap();
    }
    let stderr = refused_with_db_unchanged(&sb);
    assert!(
        stderr.ends_with(&format!(
            "{} was written by a newer jobsd (schema version 99, this one supports up to {}); \
             run that jobsd, or use another state directory\n",
            db.display(),
            jobs::store::SCHEMA_VERSION
        )),
        "{stderr}"
    );
    // Put back, the same file serves again, its job intact.
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.pragma_update(None, "user_version", jobs::store::SCHEMA_VERSION)
            .unwrap();
    }
    let d = Daemon::start_in(sb, &[]);
    assert_eq!(d.jobs(&d.alice, &["output", &id]).stdout_str(), "kept\n");
}

#[test]
fn jobsd_refuses_a_file_that_is_not_a_job_database_and_leaves_it_alone() {
    // Scenario: the state directory's jobs.db is something else (a text
    // file, another program's SQLite database); jobsd refuses to start
    // before it listens and does not write to the file.
    let sb = Sandbox::new();
    let state = sb.dir.path().join("state");
    fs::create_dir(&state).unwrap();
    let db = state.join("jobs.db");
    let message = format!(
        "{} is not a jobsd job database (not SQLite, or a database of another program); \
         move it away or use another state directory\n",
        db.display()
    );
    fs::write(&db, "not a database, just text\n".repeat(200)).unwrap();
    let stderr = refused_with_db_unchanged(&sb);
    assert!(stderr.ends_with(&message), "text file: {stderr}");

    fs::remove_file(&db).unwrap();
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch("CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('mine');")
            .unwrap();
    }
    let stderr = refused_with_db_unchanged(&sb);
    assert!(stderr.ends_with(&message), "another program's: {stderr}");
}

#[test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
fn a_full_disk_fails_the_job_not_the_daemon() {
    // Scenario: the state directory is on a 2 MiB file system and a job
    // writes 10 MiB. The job is stopped in state output_failed keeping what
    // was written; the daemon keeps answering; once the job is removed the
    // space is back and a new job runs with exact output.
    common::require_root();
    let sb = Sandbox::new();
    let _tmpfs = common::Tmpfs::mount(&sb.dir.path().join("state"), "2m", Some(sb.dir.path()));
    let d = Daemon::start_in(sb, &[]);
    let small = d.start_job(&d.alice, &["echo", "small"]);
    assert_eq!(d.jobs(&d.alice, &["stream", &small]).code, 0);

    let out = d.jobs(&d.alice, &["run", "--", "head", "-c", "10M", "/dev/zero"]);
    let v = json(&d.jobs(&d.alice, &["list", "--json"]));
    let big = v[1]["id"].as_str().unwrap().to_owned();
    assert_eq!((out.code, out.stderr.as_str()), (143, ""), "jobs run");
    let v = json(&d.jobs(&d.alice, &["status", "--json", &big]));
    assert_eq!(v["state"], "output_failed");
    let kept = v["output_bytes"].as_u64().unwrap();
    assert!(kept > 0 && kept < 10 << 20, "{kept}");
    assert_eq!(out.stdout.len() as u64, kept);
    let out = headline(d.jobs(&d.alice, &["status", &big]));
    assert_eq!(
        out.stdout_str(),
        format!(
            "{big}  stopped: the server could not store its output (disk full or write error): \
             killed by signal 15 (SIGTERM)  head -c 10M /dev/zero\n"
        )
    );
    let out = d.jobs(&d.alice, &["output", &big]);
    assert_eq!((out.code, out.stderr.as_str()), (0, ""));
    assert!(
        out.stdout.len() as u64 == kept && out.stdout.iter().all(|&b| b == 0),
        "jobs output: {} bytes, status says {kept}",
        out.stdout.len()
    );
    // Other calls are answered.
    let out = headline(d.jobs(&d.alice, &["status", &small]));
    assert_eq!(
        out.stdout_str(),
        format!("{small}  exited with code 0  echo small\n")
    );
    assert_eq!(
        d.jobs(&d.alice, &["output", &small]).stdout_str(),
        "small\n"
    );

    // With the disk full, starting is refused and nothing runs.
    let out = d.jobs(&d.alice, &["start", "--", "true"]);
    assert_eq!(
        (out.code, out.stdout_str(), out.stderr.as_str()),
        (
            1,
            "",
            "jobs: error: server unavailable: the server's disk is full, so it cannot record jobs now; retry later or ask its operator\n"
        )
    );
    assert_eq!(
        json(&d.jobs(&d.alice, &["list", "--json"]))
            .as_array()
            .unwrap()
            .len(),
        2
    );

    let out = d.jobs(&d.alice, &["rm", &big]);
    assert_eq!((out.code, out.stderr.as_str()), (0, ""));
    let out = d.jobs(
        &d.alice,
        &["run", "--", "sh", "-c", "echo out; echo err >&2"],
    );
    assert_eq!(
        (out.code, out.stdout_str(), out.stderr.as_str()),
        (0, "out\n", "err\n")
    );
}

#[test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
fn a_daemon_killed_on_a_full_disk_comes_back_and_removal_frees_space() {
    // Scenario: while a job runs, something else fills the state
    // directory's 4 MiB disk, and jobsd is killed. The next jobsd starts all
    // the same and lists both jobs (the running one lost); `jobs rm` of the
    // finished one works and deletes its output; after the disk has room
    // again, a restart shows the lost mark and the removal were recorded,
    // and jobs run. (Starts refused on a full disk: the test above.)
    common::require_root();
    let sb = Sandbox::new();
    let state = sb.dir.path().join("state");
    let _tmpfs = common::Tmpfs::mount(&state, "4m", Some(sb.dir.path()));
    let d = Daemon::start_in(sb, &[]);
    let done = d.start_job(&d.alice, &["head", "-c", "100000", "/dev/zero"]);
    assert_eq!(d.jobs(&d.alice, &["stream", &done]).code, 0);
    let running = d.start_job(&d.alice, &["sleep", "600"]);
    let filler = state.join("filler");
    fill(&filler);
    let sandbox = d.crash();

    let d = Daemon::start_in(sandbox, &[]);
    let out = d.jobs(&d.alice, &["list"]);
    assert_eq!(
        (out.code, out.stdout_str(), out.stderr.as_str()),
        (
            0,
            format!(
                "{done}  {:<w$}  head -c 100000 /dev/zero\n{running}  {LOST}  sleep 600\n",
                "exited with code 0",
                w = LOST.len()
            )
            .as_str(),
            ""
        )
    );
    let out = d.jobs(&d.alice, &["rm", &done]);
    assert_eq!((out.code, out.stderr.as_str()), (0, ""));
    assert!(!state.join("output").join(format!("{done}.log")).exists());

    let sandbox = d.terminate();
    fs::remove_file(&filler).unwrap();
    let d = Daemon::start_in(sandbox, &[]);
    let out = d.jobs(&d.alice, &["list"]);
    assert_eq!(
        (out.code, out.stdout_str(), out.stderr.as_str()),
        (0, format!("{running}  {LOST}  sleep 600\n").as_str(), "")
    );
    let out = d.jobs(&d.alice, &["run", "--", "echo", "room again"]);
    assert_eq!((out.code, out.stdout_str()), (0, "room again\n"));
}

/// Polls `check` until it holds (a CLI process per try), for at most
/// `within`.
fn within(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    check()
}

#[test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
fn one_identity_filling_the_disk_ends_only_its_own_job_and_rm_works_at_once() {
    // Scenario (the bug report): on an 8 MiB state disk bob's job writes a
    // line every 50 ms while alice's job writes 20 MiB. Alice's job is
    // stopped (output_failed) once only the headroom is left; bob's job
    // keeps running, its writes wait, and its output is intact; the store's
    // reserve was never needed; `jobs rm` of alice's job works at once and
    // bob's job writes again.
    common::require_root();
    let sb = Sandbox::new();
    let state = sb.dir.path().join("state");
    let _tmpfs = common::Tmpfs::mount(&state, "8m", Some(sb.dir.path()));
    let d = Daemon::start_in(sb, &[]);
    let ticker = d.start_job(
        &d.bob,
        &[
            "sh",
            "-c",
            "echo ready; while :; do echo tick; sleep 0.05; done",
        ],
    );
    assert!(within(Duration::from_secs(10), || d
        .jobs(&d.bob, &["output", &ticker])
        .stdout
        .starts_with(b"ready\ntick\n")));

    let out = d.jobs(&d.alice, &["run", "--", "head", "-c", "20M", "/dev/zero"]);
    assert_eq!((out.code, out.stderr.as_str()), (143, ""), "jobs run");
    let v = json(&d.jobs(&d.alice, &["list", "--json"]));
    let filler = v[0]["id"].as_str().unwrap().to_owned();
    let v = json(&d.jobs(&d.alice, &["status", "--json", &filler]));
    assert_eq!(v["state"], "output_failed");
    assert!(
        state.join("jobs.db-reserve").exists(),
        "the store's reserve was spent"
    );

    let v = json(&d.jobs(&d.bob, &["status", "--json", &ticker]));
    assert_eq!(v["state"], "running");
    let before = d.jobs(&d.bob, &["output", &ticker]).stdout;

    let out = d.jobs(&d.alice, &["rm", &filler]);
    assert_eq!(
        (out.code, out.stdout_str(), out.stderr.as_str()),
        (0, "", "")
    );
    // Room again: bob's job writes on.
    assert!(within(Duration::from_secs(10), || d
        .jobs(&d.bob, &["output", &ticker])
        .stdout
        .len()
        > before.len() + 5));
    let out = d.jobs(&d.bob, &["stop", &ticker]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let all = d.jobs(&d.bob, &["output", &ticker]).stdout;
    let text = String::from_utf8(all).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("ready"));
    assert!(lines.all(|l| l == "tick"), "bob's output: {text:?}");
}

/// Writes zeros to `path` until its file system is full.
fn fill(path: &Path) {
    let mut file = fs::File::create(path).unwrap();
    let block = vec![0u8; 64 * 1024];
    loop {
        match file.write_all(&block) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => return,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
}

#[test]
fn sigterm_ends_open_streams_and_records_the_stopped_job() {
    // Scenario: jobsd gets SIGTERM while `jobs stream` follows a long job;
    // the follower exits 255 at once saying the server is shutting down,
    // and after a restart the job shows as stopped, its output kept.
    let d = Daemon::start();
    let id = d.start_job(&d.alice, &["sh", "-c", "echo ready; exec sleep 600"]);
    let mut follower = d
        .command(&d.alice, &["stream", &id])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(follower.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    follower.stdout = Some(stdout.into_inner());
    let began = Instant::now();
    kill(d.pid(), Signal::SIGTERM).unwrap();
    let out = finish(follower);
    let took = began.elapsed();
    assert_eq!(
        (out.code, out.stdout_str(), out.stderr.as_str()),
        (
            255,
            "",
            format!(
                "jobs: error: lost track of job {id} before it ended; its output may be incomplete: \
                 server unavailable: the server is shutting down; the job's record and output are \
                 kept, ask again once it is back\n"
            )
            .as_str()
        )
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let sandbox = d.terminate();
    let d = Daemon::start_in(sandbox, &[]);
    let out = headline(d.jobs(&d.alice, &["status", &id]));
    assert_eq!(
        out.stdout_str(),
        format!(
            "{id}  stopped: killed by signal 15 (SIGTERM)  sh -c 'echo ready; exec sleep 600'\n"
        )
    );
    assert_eq!(d.jobs(&d.alice, &["output", &id]).stdout_str(), "ready\n");
}

/// A validity from an hour ago to `days` days and one hour from now: the
/// extra hour keeps the whole days a warning shows at `days` however long
/// the test takes.
fn days_left(days: i64) -> Validity {
    let now = time::OffsetDateTime::now_utc();
    Validity {
        not_before: now - time::Duration::hours(1),
        not_after: now + time::Duration::days(days) + time::Duration::hours(1),
    }
}

/// A client certificate with three days left, shared by the tests that need one.
static THREE_DAYS_LEFT: LazyLock<IssuedCert> = LazyLock::new(|| {
    PKI.authority
        .issue_client("expiring", days_left(3))
        .unwrap()
});

/// The expiry warning for `cert`, issued with [`days_left`]`(3)` and written
/// to `path`; its not-after time is read from the certificate.
fn three_day_warning(path: &Path, cert: &IssuedCert) -> String {
    let (_, x509) = x509_parser::parse_x509_certificate(&cert.cert_der).unwrap();
    let not_after = x509
        .validity()
        .not_after
        .to_datetime()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    format!(
        "certificate {} expires in 3 days (not valid after {not_after}); ask your CA admin to \
         renew it before then (jobs-ca request NAME --renew, then jobs-ca sign)",
        path.display()
    )
}

#[test]
fn expiry_warning_on_stderr_when_the_client_certificate_has_3_days_left() {
    // Scenario: a user's certificate expires in 3 days; each command warns
    // once on stderr, and the server still accepts the certificate.
    let d = Daemon::start();
    let user = write_issued(d.dir.path(), "expiring", &THREE_DAYS_LEFT);
    let warning = format!(
        "jobs: warning: {}\n",
        three_day_warning(&user.cert, &THREE_DAYS_LEFT)
    );
    let start = d.jobs(&user, &["start", "--", "sleep", "600"]);
    assert_eq!((start.code, start.stderr.as_str()), (0, warning.as_str()));
    let id = start.stdout_str().strip_suffix('\n').unwrap();
    assert!(is_canonical_uuid(id), "{:?}", start.stdout_str());
    let list = d.jobs(&user, &["list"]);
    assert_eq!(
        (list.code, list.stdout_str(), list.stderr.as_str()),
        (
            0,
            format!("{id}  running  sleep 600\n").as_str(),
            warning.as_str()
        )
    );
}

#[test]
fn expiry_warning_absent_with_15_days_left() {
    // Scenario: a certificate outside the 14-day window gets no warning at all.
    let d = Daemon::start();
    let cert = PKI
        .authority
        .issue_client("renewed", days_left(15))
        .unwrap();
    let user = write_issued(d.dir.path(), "renewed", &cert);
    let list = d.jobs(&user, &["list"]);
    assert_eq!(
        (list.code, list.stdout_str(), list.stderr.as_str()),
        (0, "", "")
    );
}

#[test]
fn expiry_warning_keeps_json_stdout_clean() {
    // Scenario: a script parses `jobs list --json` while the certificate
    // nears expiry; the warning goes to stderr only.
    let d = Daemon::start();
    let user = write_issued(d.dir.path(), "expiring", &THREE_DAYS_LEFT);
    let warning = format!(
        "jobs: warning: {}\n",
        three_day_warning(&user.cert, &THREE_DAYS_LEFT)
    );
    let start = d.jobs(&user, &["start", "--", "sleep", "600"]);
    assert_eq!(start.code, 0, "{}", start.stderr);
    let id = start.stdout_str().trim_end();
    let list = d.jobs(&user, &["list", "--json"]);
    assert_eq!((list.code, list.stderr.as_str()), (0, warning.as_str()));
    let jobs = json(&list);
    let jobs = jobs.as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(
        (&jobs[0]["id"], &jobs[0]["state"], &jobs[0]["owner"]),
        (
            &Value::from(id),
            &Value::from("running"),
            &Value::from(THREE_DAYS_LEFT.identity.to_string())
        )
    );
}

#[test]
fn expiry_warning_in_the_jobsd_log_when_its_certificate_has_3_days_left() {
    // Scenario: the server's certificate has 3 days left; jobsd logs one
    // warning at start-up and serves as usual.
    let mut sandbox = Sandbox::new();
    let server = PKI
        .authority
        .issue_server(&default_server_sans(), days_left(3))
        .unwrap();
    sandbox.server = write_issued(sandbox.dir.path(), "server-expiring", &server);
    let user_text = three_day_warning(&sandbox.server.cert, &server);
    let expected = format!(
        "WARN jobsd: server {}; before then, move server.crt and server.key aside, run \
         `jobs-ca server` again (with the same --san names) and restart jobsd",
        user_text
            .split_once("; ask your CA admin")
            .expect("the user's advice")
            .0
    );
    let d = Daemon::start_in(sandbox, &[]);
    // Logged before "listening on", which `start_in` waited for.
    let log = fs::read_to_string(d.dir.path().join("jobsd.log")).unwrap();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("expires in")).collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(lines[0].ends_with(&expected), "{log}");
    let out = d.jobs(&d.alice, &["list"]);
    assert_eq!(
        (out.code, out.stdout_str(), out.stderr.as_str()),
        (0, "", "")
    );
}

#[test]
fn a_fifo_or_device_as_the_certificate_is_refused_without_hanging() {
    // Scenario: JOBS_CERT names a FIFO with no writer, or /dev/zero; reading
    // it must neither block for ever nor read without end.
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("cert.pem");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    for cert in [fifo.as_path(), Path::new("/dev/zero")] {
        let out = Command::new(JOBS)
            .args(["--addr", "127.0.0.1:1", "list"])
            .env_clear()
            .env("JOBS_CA", cert)
            .env("JOBS_CERT", cert)
            .env("JOBS_KEY", cert)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            format!(
                "jobs: error: cannot read CA certificate file {}: not a regular file\n",
                cert.display()
            )
        );
    }
}

/// Every binary is built without aws-lc's CPU jitter entropy source
/// (`.cargo/config.toml`): seeding it cost each new `jobs` process ~35 ms of
/// CPU before its first handshake, half of a cold `jobs run -- true`. The
/// source's functions are named `…jent_…` in the symbol table; the control
/// is a function of aws-lc every binary links (RSA signing), so a stripped
/// binary cannot pass for one without jitter entropy.
#[test]
fn binaries_are_built_without_cpu_jitter_entropy() {
    // grep(1): debug binaries are hundreds of MiB.
    let has = |bin: &str, needle: &str| {
        let found = Command::new("grep")
            .args(["-q", "-a", "-F", needle, bin])
            .status()
            .expect("run grep");
        match found.code() {
            Some(0) => true,
            Some(1) => false,
            _ => panic!("grep {needle} {bin}: {found}"),
        }
    };
    for bin in [JOBS, JOBSD, env!("CARGO_BIN_EXE_jobs-ca")] {
        assert!(has(bin, "RSA_sign"), "{bin}: no aws-lc symbols to look at");
        assert!(
            !has(bin, "jent_read_entropy"),
            "{bin} has aws-lc's CPU jitter entropy built in (AWS_LC_SYS_NO_JITTER_ENTROPY unset?)"
        );
    }
}

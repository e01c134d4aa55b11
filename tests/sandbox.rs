//! The real `jobs-init` binary, started the way `jobsd` starts it: as root,
//! with the status pipe on fd 3, stdin, stdout and stderr on pipes, a clean
//! environment, and (for the PID-namespace tests) as PID 1 of a fresh PID
//! namespace, made by a thread that unshares CLONE_NEWPID before spawning.
//!
//! The program runs as uid/gid 65534. Tests that need root are reported
//! as ignored (with the reason) when built as another user. No test sleeps to synchronise: each waits on
//! a report, an exit or EOF, under [`DEADLINE`] (a watchdog kills the init
//! when it is exceeded); where the only observation is a condition in
//! `/proc`, the job's own script polls it under a deadline.

use std::ffi::OsString;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use jobs::sandbox::{InitArgs, Report, SetupStep};
use nix::fcntl::OFlag;
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, geteuid, pipe2};

const INIT: &str = env!("CARGO_BIN_EXE_jobs-init");

/// The uid and gid jobs run as here: `nobody`, which owns nothing.
const NOBODY: u32 = 65534;

/// The environment every test job gets; the init must pass it on unchanged.
const ENV: [(&str, &str); 4] = [
    ("HOME", "/"),
    ("LANG", "C.UTF-8"),
    ("PATH", "/usr/local/bin:/usr/bin:/bin"),
    ("ODD_VALUE", "a b=c\tü"),
];

/// How long any one init may take before the watchdog kills it. Far above
/// what any test needs; reaching it means the test failed.
const DEADLINE: Duration = Duration::from_secs(30);

/// Guards a root-only test (marked ignored unless built as root, see
/// `build.rs`): jobs-init needs root to change uid and make namespaces.
fn require_root() {
    assert!(
        geteuid().is_root(),
        "needs root: jobs-init changes uid and makes namespaces (this build was made as root, or the test was run with --include-ignored)"
    );
}

/// A job running `program` as nobody, without namespaces.
fn job(program: &str, args: &[&str]) -> InitArgs {
    InitArgs {
        uid: NOBODY,
        gid: NOBODY,
        max_processes: None,
        mount_namespace: false,
        mount_proc: false,
        private_tmp: false,
        network_none: false,
        ipc_namespace: false,
        cgroup_namespace: false,
        private_home: false,
        seccomp: false,
        allow_namespaces: false,
        landlock_abi: 0,
        allow_listen: false,
        writable: Vec::new(),
        program: PathBuf::from(program),
        argv0: program.rsplit('/').next().unwrap_or(program).to_owned(),
        args: args.iter().map(|a| a.to_string()).collect(),
    }
}

/// `/bin/sh -c script`.
fn shell(script: &str) -> InitArgs {
    job("/bin/sh", &["-c", script])
}

/// Where the init is started.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pidns {
    /// In the test's own PID namespace (the init becomes a subreaper).
    Host,
    /// As PID 1 of a new PID namespace.
    New,
}

/// A started init.
struct Running {
    child: Option<Child>,
    pid: Pid,
    status: File,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    /// Reads stderr to EOF, so that a chatty job never blocks on it.
    stderr: Option<std::thread::JoinHandle<Vec<u8>>>,
    /// Dropping it stops the watchdog.
    _watchdog: mpsc::Sender<()>,
}

/// What a finished init left behind.
#[derive(Debug)]
struct Finished {
    /// Every report after those already taken with `next_report`.
    reports: Vec<Report>,
    /// stdout after the lines already taken with `read_line`.
    stdout: String,
    stderr: String,
    status: ExitStatus,
}

/// Starts `jobs-init` with `args` as its command line and, if
/// `with_status_pipe`, the write end of a status pipe on fd 3.
fn spawn_raw(args: Vec<OsString>, pidns: Pidns, with_status_pipe: bool) -> Running {
    let (status_r, status_w) = pipe2(OFlag::O_CLOEXEC).expect("status pipe");
    let make = move || -> std::io::Result<Child> {
        let mut cmd = Command::new(INIT);
        cmd.args(args)
            .env_clear()
            .envs(ENV)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let status_fd = status_w.as_raw_fd();
        let root = geteuid().is_root();
        // SAFETY: the closure runs in the forked child before exec and only
        // makes async-signal-safe system calls on integers and on locals
        // that outlive each call: it gives the init supplementary groups,
        // puts the status pipe's write end (kept open by the
        // closure, which owns `status_w`) on fd 3 without close-on-exec, as
        // jobsd does; forbids core files so that signal deaths report
        // `core_dumped: false`; raises the soft RLIMIT_NOFILE to the hard
        // limit, as jobsd does, so that the init's reset to 1024 is visible;
        // and sets an OOM score adjustment for the same reason.
        unsafe {
            cmd.pre_exec(move || {
                if with_status_pipe {
                    let rc = if status_fd == 3 {
                        libc::fcntl(3, libc::F_SETFD, 0)
                    } else {
                        libc::dup2(status_fd, 3)
                    };
                    if rc < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // Supplementary groups, as a root jobsd may well have, so
                // that the init visibly has to drop them (root only: others
                // may not set groups).
                let groups: [libc::gid_t; 2] = [4, 27];
                if root && libc::setgroups(groups.len(), groups.as_ptr()) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let no_core = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                let mut files = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                if libc::setrlimit(libc::RLIMIT_CORE, &no_core) < 0
                    || libc::getrlimit(libc::RLIMIT_NOFILE, &mut files) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                files.rlim_cur = files.rlim_max;
                if libc::setrlimit(libc::RLIMIT_NOFILE, &files) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // A non-zero OOM score adjustment, as a jobsd that shields
                // itself has, so that the init's reset to 0 is visible
                // (raising it needs no privilege).
                let adj = libc::open(c"/proc/self/oom_score_adj".as_ptr(), libc::O_WRONLY);
                if adj < 0 || libc::write(adj, b"500".as_ptr().cast(), 3) != 3 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(adj);
                Ok(())
            });
        }
        let child = cmd.spawn();
        // `cmd` (and with it our copy of the write end) is dropped here, so
        // the status pipe reaches EOF once the init is gone.
        drop(cmd);
        child
    };
    let mut child = match pidns {
        Pidns::Host => make().expect("spawn jobs-init"),
        // unshare(CLONE_NEWPID) changes only where the calling thread's
        // future children go, so a throwaway thread does it.
        Pidns::New => std::thread::spawn(move || {
            unshare(CloneFlags::CLONE_NEWPID).expect("unshare(CLONE_NEWPID)");
            make()
        })
        .join()
        .expect("spawner thread")
        .expect("spawn jobs-init in a new PID namespace"),
    };
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits i32"));
    let (watchdog, cancelled) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = cancelled.recv_timeout(DEADLINE) {
            // The init is not reaped before the watchdog is cancelled (see
            // `finish`), so this pid is still the init's.
            eprintln!("watchdog: jobs-init {pid} exceeded {DEADLINE:?}; killing it");
            let _ = kill(pid, Signal::SIGKILL);
        }
    });
    let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut stderr = child.stderr.take().expect("piped stderr");
    let stderr = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stderr.read_to_end(&mut bytes);
        bytes
    });
    Running {
        stdin: child.stdin.take(),
        stdout,
        stderr: Some(stderr),
        child: Some(child),
        pid,
        status: File::from(status_r),
        _watchdog: watchdog,
    }
}

fn spawn(args: &InitArgs, pidns: Pidns) -> Running {
    spawn_raw(args.to_args(), pidns, true)
}

fn run(args: &InitArgs) -> Finished {
    spawn(args, Pidns::Host).finish()
}

fn run_as_pid1(args: &InitArgs) -> Finished {
    spawn(args, Pidns::New).finish()
}

impl Running {
    /// The next report; `None` at EOF (the init is gone).
    fn next_report(&mut self) -> Option<Report> {
        let mut record = [0u8; Report::LEN];
        match self.status.read_exact(&mut record) {
            Ok(()) => Some(Report::decode(&record).expect("a well-formed record")),
            Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => None,
            Err(err) => panic!("reading the status pipe: {err}"),
        }
    }

    /// The next line the job writes on stdout, without its newline.
    fn read_line(&mut self) -> String {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("read the job's stdout");
        assert!(line.ends_with('\n'), "stdout ended early: {line:?}");
        line.pop();
        line
    }

    /// Lets a job that waits on its stdin go on.
    fn release(&mut self) {
        let mut stdin = self.stdin.take().expect("stdin still open");
        stdin.write_all(b"go\n").expect("write to the job's stdin");
    }

    /// Waits for the init to exit (closing the job's stdin first) and collects
    /// what it left. stdout and stderr are read to EOF, so every process that
    /// held them must be gone too.
    fn finish(mut self) -> Finished {
        drop(self.stdin.take());
        let mut stdout = Vec::new();
        self.stdout
            .read_to_end(&mut stdout)
            .expect("read the job's stdout");
        let stderr = self
            .stderr
            .take()
            .expect("not finished yet")
            .join()
            .expect("stderr reader");
        let mut child = self.child.take().expect("not finished yet");
        // Reaps the init; the watchdog is cancelled only after this returns,
        // when `self` is dropped below.
        let status = child.wait().expect("wait for jobs-init");
        let mut rest = Vec::new();
        self.status
            .read_to_end(&mut rest)
            .expect("read the status pipe");
        assert_eq!(rest.len() % Report::LEN, 0, "torn record: {rest:?}");
        let reports = rest
            .chunks_exact(Report::LEN)
            .map(|r| Report::decode(r.try_into().expect("chunk of LEN")).expect("well-formed"))
            .collect();
        Finished {
            reports,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
            status,
        }
    }
}

impl Drop for Running {
    /// On a failed assertion: kill and reap the init rather than leak it.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Finished {
    /// Asserts the program ran and exited with `code`, and the init with it.
    #[track_caller]
    fn assert_exited(&self, code: i32) {
        assert_eq!(
            self.reports,
            [Report::Started, Report::Exited(code)],
            "{self:#?}"
        );
        assert_eq!(self.status.code(), Some(code), "{self:#?}");
    }

    /// As [`Finished::assert_exited`], when `Started` was already taken.
    #[track_caller]
    fn assert_exited_after_start(&self, code: i32) {
        assert_eq!(self.reports, [Report::Exited(code)], "{self:#?}");
        assert_eq!(self.status.code(), Some(code), "{self:#?}");
    }
}

/// `/proc/<pid>/status` lines that start with one of `keys` (followed by ':').
fn status_lines(status: &str, keys: &[&str]) -> String {
    status
        .lines()
        .filter(|line| keys.iter().any(|k| line.split(':').next() == Some(*k)))
        .map(|line| format!("{line}\n"))
        .collect()
}

const NOBODY_IDS: &str = "Uid:\t65534\t65534\t65534\t65534\n\
                          Gid:\t65534\t65534\t65534\t65534\n\
                          Groups:\t \n";

// ---------------------------------------------------------------- arguments

// A malformed command line is refused before anything happens: the init says
// so on stderr in one line, reports it, and exits 2.
#[test]
fn bad_command_line_is_reported_and_exits_2() {
    let out = spawn_raw(vec!["--uid".into(), "nobody".into()], Pidns::Host, true).finish();
    assert_eq!(
        out.reports,
        [Report::SetupFailed {
            step: SetupStep::Arguments,
            errno: libc::EINVAL
        }]
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        out.stderr
            .starts_with("jobs-init: invalid jobs-init command line: "),
        "{out:#?}"
    );
    assert_eq!(out.stderr.lines().count(), 1, "{out:#?}");
    assert_eq!(out.stdout, "");
}

// Without a status pipe nobody would learn what happened: refuse to run.
#[test]
fn missing_status_pipe_refuses_to_run() {
    let out = spawn_raw(job("/usr/bin/id", &[]).to_args(), Pidns::Host, false).finish();
    assert_eq!(out.reports, []);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        out.stderr
            .starts_with("jobs-init: no status pipe on fd 3: "),
        "{out:#?}"
    );
    assert_eq!(out.stdout, "", "the program must not have run");
}

// /proc can only show the job's own processes from PID 1 of a fresh PID
// namespace; anywhere else mounting it would show the host's.
#[test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
fn mount_proc_outside_a_pid_namespace_is_refused() {
    require_root();
    let args = InitArgs {
        mount_namespace: true,
        mount_proc: true,
        ..job("/usr/bin/id", &[])
    };
    let out = run(&args);
    assert_eq!(
        out.reports,
        [Report::SetupFailed {
            step: SetupStep::MountProc,
            errno: libc::EINVAL
        }]
    );
    assert_eq!(out.status.code(), Some(125));
    assert_eq!(out.stdout, "");
}

// ---------------------------------------------------------------- identity

#[test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
fn program_runs_as_nobody_with_no_supplementary_groups() {
    require_root();
    for (flag, expected) in [("-u", "65534\n"), ("-g", "65534\n"), ("-G", "65534\n")] {
        let out = run(&job("/usr/bin/id", &[flag]));
        out.assert_exited(0);
        assert_eq!(out.stdout, expected, "id {flag}");
    }
}

// Real, effective and saved ids all changed (so none can be switched back),
// no capabilities, and no_new_privs set (so no set-user-ID program can give
// root back). The gid differs from the uid to show each is set on its own.
#[test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
fn program_has_no_way_back_to_root() {
    require_root();
    let args = InitArgs {
        gid: 65533,
        ..job("/usr/bin/cat", &["/proc/self/status"])
    };
    let out = run(&args);
    out.assert_exited(0);
    assert_eq!(
        status_lines(
            &out.stdout,
            &["Uid", "Gid", "Groups", "CapPrm", "CapEff", "NoNewPrivs"]
        ),
        "Uid:\t65534\t65534\t65534\t65534\n\
         Gid:\t65533\t65533\t65533\t65533\n\
         Groups:\t \n\
         CapPrm:\t0000000000000000\n\
         CapEff:\t0000000000000000\n\
         NoNewPrivs:\t1\n"
    );
}

// The identity's process cap reaches the program as RLIMIT_NPROC, soft and
// hard, so the account cannot raise it; without one the limit is left alone.
#[test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
fn program_gets_the_process_cap_as_rlimit_nproc() {
    require_root();
    let line = |out: &Finished| {
        out.stdout
            .lines()
            .find(|l| l.starts_with("Max processes"))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
    };
    let capped = run(&InitArgs {
        max_processes: Some(300),
        ..job("/usr/bin/cat", &["/proc/self/limits"])
    });
    capped.assert_exited(0);
    assert_eq!(
        line(&capped).as_deref(),
        Some("Max processes 300 300 processes")
    );
    let raise = run(&InitArgs {
        max_processes: Some(300),
        ..shell("ulimit -p 301")
    });
    assert_ne!(raise.status.code(), Some(0), "{raise:#?}");
    assert!(
        raise.stderr.contains("Operation not permitted"),
        "{raise:#?}"
    );
    let open = run(&job("/usr/bin/cat", &["/proc/self/limits"]));
    open.assert_exited(0);
    assert_ne!(
        line(&open).as_deref(),
        Some("Max processes 300 300 processes")
    );
}

// A program only root may execute is refused: privileges are dropped before
// exec, not after.
#[test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
fn root_only_program_is_refused() {
    require_root();
    let dir = world_readable_tempdir();
    let program = dir.path().join("root-only");
    std::fs::write(&program, "#!/bin/sh\necho ran\n").unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = run(&job(program.to_str().unwrap(), &[]));
    assert_eq!(
        out.reports,
        [Report::ExecFailed {
            errno: libc::EACCES
        }],
        "{out:#?}"
    );
    assert_eq!(out.status.code(), Some(126));
    assert_eq!(out.stdout, "");
}

// Once the program runs, the init itself is nobody too, with no_new_privs,
// and non-dumpable: its /proc files belong to root, not to the job's uid.
#[test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
fn init_drops_its_own_privileges() {
    require_root();
    let mut init = spawn(&job("/bin/sh", &["-c", "read go"]), Pidns::Host);
    assert_eq!(init.next_report(), Some(Report::Started));
    let status = std::fs::read_to_string(format!("/proc/{}/status", init.pid)).unwrap();
    assert_eq!(status_lines(&status, &["Uid", "Gid", "Groups"]), NOBODY_IDS);
    assert_eq!(status_lines(&status, &["NoNewPrivs"]), "NoNewPrivs:\t1\n");
    let environ = std::fs::metadata(format!("/proc/{}/environ", init.pid)).unwrap();
    assert_eq!(
        environ.uid(),
        0,
        "a dumpable init's /proc files would belong to 65534"
    );
    init.release();
    init.finish().assert_exited_after_start(0);
}

// ---------------------------------------------------------------- what the program gets

// The init blocks every signal and the Rust runtime ignores SIGPIPE; none of
// that may reach the program (with SIGPIPE ignored, a job's pipelines would
// fail with EPIPE errors instead of ending quietly).
#[test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
fn program_starts_with_default_signal_state() {
    require_root();
    let out = run(&job("/usr/bin/cat", &["/proc/self/status"]));
    out.assert_exited(0);
    assert_eq!(
        status_lines(&out.stdout, &["SigBlk", "SigIgn", "SigCgt"]),
        "SigBlk:\t0000000000000000\n\
         SigIgn:\t0000000000000000\n\
         SigCgt:\t0000000000000000\n"
    );
}

#[test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
fn environment_passes_through_exactly() {
    require_root();
    let out = run(&job("/usr/bin/env", &[]));
    out.assert_exited(0);
    let mut got: Vec<&str> = out.stdout.lines().collect();
    got.sort_unstable();
    let mut want: Vec<String> = ENV.iter().map(|(k, v)| format!("{k}={v}")).collect();
    want.sort_unstable();
    assert_eq!(got, want);
}

#[test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
fn argv0_and_arguments_reach_the_program_verbatim() {
    require_root();
    let args = InitArgs {
        argv0: "my cat".into(),
        ..job("/usr/bin/cat", &["/proc/self/cmdline"])
    };
    let out = run(&args);
    out.assert_exited(0);
    assert_eq!(out.stdout, "my cat\0/proc/self/cmdline\0");

    let script = r#"for a in "$@"; do printf '[%s]' "$a"; done"#;
    let out = run(&shell(script).with_args(&["sh", "--", "-x", "", "a b", "ünï", "--uid"]));
    out.assert_exited(0);
    assert_eq!(out.stdout, "[--][-x][][a b][ünï][--uid]");
}

// The job starts in `/`, not wherever jobsd happens to be.
#[test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
fn program_starts_in_the_root_directory() {
    require_root();
    assert_ne!(std::env::current_dir().unwrap(), PathBuf::from("/"));
    let out = run(&job("/usr/bin/pwd", &[]));
    out.assert_exited(0);
    assert_eq!(out.stdout, "/\n");
}

// The status pipe on fd 3 must not reach the program: `ls` lists only 0-2 and
// the descriptor it opened itself to read the directory (3).
#[test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
fn only_stdio_descriptors_reach_the_program() {
    require_root();
    let out = run(&job("/usr/bin/ls", &["/proc/self/fd"]));
    out.assert_exited(0);
    assert_eq!(out.stdout, "0\n1\n2\n3\n");
}

// jobsd raises its own descriptor limit; the job gets the usual 1024 back
// (the hard limit is kept).
#[test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
fn open_file_limit_is_reset_to_1024() {
    require_root();
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    let out = run(&shell("ulimit -n; ulimit -Hn"));
    out.assert_exited(0);
    let hard_text = if hard == libc::RLIM_INFINITY {
        "unlimited".to_owned()
    } else {
        hard.to_string()
    };
    assert_eq!(out.stdout, format!("{}\n{hard_text}\n", hard.min(1024)));
}

#[test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
fn oom_score_adjustment_is_reset_to_0() {
    // Scenario: jobsd lowers its own OOM score; its jobs must not inherit
    // that (here the init starts with +500, as the harness sets it).
    require_root();
    let out = run(&shell("cat /proc/self/oom_score_adj"));
    out.assert_exited(0);
    assert_eq!(out.stdout, "0\n");
}

// ---------------------------------------------------------------- outcomes

#[test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
fn exit_code_comes_back() {
    require_root();
    run(&shell("exit 3")).assert_exited(3);
}

#[test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
fn signal_death_comes_back() {
    require_root();
    let out = run(&shell("kill -SEGV $$"));
    assert_eq!(
        out.reports,
        [
            Report::Started,
            Report::Signaled {
                signal: libc::SIGSEGV,
                core_dumped: false
            }
        ]
    );
    assert_eq!(out.status.code(), Some(128 + libc::SIGSEGV));
}

// A real-time signal is not one nix's wait status knows; the death must
// still be reported, not lost.
#[test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
fn realtime_signal_death_comes_back() {
    require_root();
    let out = run(&shell("kill -s RTMIN+3 $$"));
    let signal = libc::SIGRTMIN() + 3;
    assert_eq!(
        out.reports,
        [
            Report::Started,
            Report::Signaled {
                signal,
                core_dumped: false
            }
        ]
    );
    assert_eq!(out.status.code(), Some(128 + signal));
}

#[test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
fn missing_program_is_exec_failed_enoent() {
    require_root();
    let out = run(&job("/nonexistent/program", &[]));
    assert_eq!(
        out.reports,
        [Report::ExecFailed {
            errno: libc::ENOENT
        }]
    );
    assert_eq!(out.status.code(), Some(127));
    assert_eq!((out.stdout.as_str(), out.stderr.as_str()), ("", ""));
}

#[test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
fn non_executable_file_is_exec_failed_eacces() {
    require_root();
    let dir = world_readable_tempdir();
    let program = dir.path().join("not-executable");
    std::fs::write(&program, "#!/bin/sh\necho ran\n").unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(&job(program.to_str().unwrap(), &[]));
    assert_eq!(
        out.reports,
        [Report::ExecFailed {
            errno: libc::EACCES
        }]
    );
    assert_eq!(out.status.code(), Some(126));
    assert_eq!(out.stdout, "");
}

// ---------------------------------------------------------------- signals and orphans

// SIGTERM sent to the init (as jobsd does to stop a job) reaches the program
// through its process group.
#[test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
fn sigterm_is_forwarded_to_the_program() {
    require_root();
    sigterm_is_forwarded(Pidns::Host);
}

// As PID 1 of a namespace the init must still take SIGTERM from the parent
// namespace (the kernel drops signals an init leaves at SIG_DFL) and forward
// it to every process of the namespace.
#[test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
fn sigterm_is_forwarded_by_pid1() {
    require_root();
    sigterm_is_forwarded(Pidns::New);
}

fn sigterm_is_forwarded(pidns: Pidns) {
    let mut init = spawn(&job("/usr/bin/sleep", &["100"]), pidns);
    assert_eq!(init.next_report(), Some(Report::Started));
    kill(init.pid, Signal::SIGTERM).unwrap();
    let out = init.finish();
    assert_eq!(
        out.reports,
        [Report::Signaled {
            signal: libc::SIGTERM,
            core_dumped: false
        }]
    );
    assert_eq!(out.status.code(), Some(128 + libc::SIGTERM));
}

// Forwarding reaches the program's whole process group, not just the program:
// here a shell that handles SIGTERM, and its background sleep, which dies of it.
#[test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
fn sigterm_reaches_the_programs_process_group() {
    require_root();
    // "ready" only once the child runs `sleep`: before its exec it is a copy
    // of the shell, with the shell's trap, and would swallow the signal.
    let script = "trap 'echo got TERM' TERM; sleep 100 & child=$!; \
                  i=0; until [ \"$(cat /proc/$child/comm)\" = sleep ]; do \
                  i=$((i + 1)); [ $i -gt 1000 ] && exit 1; sleep 0.01; done; echo ready; \
                  wait $child; wait $child; echo \"sleep: $?\"";
    sigterm_reaches_the_helper(shell(script), Pidns::Host);
}

// As PID 1, forwarding reaches every process of the namespace, even one that
// left the program's process group and session (setsid). "ready" only once
// the helper has its own session, which `setsid` makes right before exec.
#[test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
fn pid1_forwards_to_the_whole_namespace() {
    require_root();
    let script = "trap 'echo got TERM' TERM; setsid sleep 100 & child=$!; \
                  i=0; until [ \"$(cut -d' ' -f6 /proc/$child/stat)\" = $child ]; do \
                  i=$((i + 1)); [ $i -gt 1000 ] && exit 1; sleep 0.01; done; echo ready; \
                  wait $child; wait $child; echo \"sleep: $?\"";
    let args = InitArgs {
        mount_namespace: true,
        mount_proc: true,
        ..shell(script)
    };
    sigterm_reaches_the_helper(args, Pidns::New);
}

/// Runs a script that starts a helper, says "ready", and then reports how
/// the helper ended; sends SIGTERM to the init once it is ready.
fn sigterm_reaches_the_helper(args: InitArgs, pidns: Pidns) {
    let mut init = spawn(&args, pidns);
    assert_eq!(init.next_report(), Some(Report::Started));
    assert_eq!(init.read_line(), "ready");
    kill(init.pid, Signal::SIGTERM).unwrap();
    let out = init.finish();
    out.assert_exited_after_start(0);
    assert_eq!(out.stdout, "got TERM\nsleep: 143\n");
}

/// A script that leaves an orphan (a child of a shell that exits at once) and
/// prints who adopted it and whether it was reaped once it exited: a zombie
/// keeps its /proc entry, so the entry vanishing means its new parent waited
/// for it. Each wait polls /proc (the only way to observe either) for at most
/// 10 s.
const ORPHAN_SCRIPT: &str = r#"
set -- $(sh -c 'sleep 1 >/dev/null 2>&1 & echo $$ $!')
shell=$1 orphan=$2
parent() { cut -d' ' -f4 /proc/$orphan/stat; }
i=0
while [ "$(parent)" = "$shell" ]; do
    i=$((i + 1)); [ $i -gt 200 ] && { echo "never reparented"; exit 1; }
    sleep 0.05
done
if [ "$(parent)" = "$PPID" ]; then echo "adopted by the init"; else echo "adopted by $(parent)"; fi
i=0
while [ -e /proc/$orphan ]; do
    i=$((i + 1)); [ $i -gt 200 ] && { echo "not reaped: $(cat /proc/$orphan/stat)"; exit 1; }
    sleep 0.05
done
echo reaped
"#;

// Not PID 1: the init is a child subreaper, so orphans come to it (not to the
// host's PID 1, which may never reap them) and it reaps them.
#[test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
fn orphans_are_reaped_by_the_subreaper() {
    require_root();
    let out = run(&shell(ORPHAN_SCRIPT));
    out.assert_exited(0);
    assert_eq!(out.stdout, "adopted by the init\nreaped\n");
}

#[test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
fn orphans_are_reaped_by_pid1() {
    require_root();
    let args = InitArgs {
        mount_namespace: true,
        mount_proc: true,
        ..shell(ORPHAN_SCRIPT)
    };
    let out = run_as_pid1(&args);
    out.assert_exited(0);
    assert_eq!(out.stdout, "adopted by the init\nreaped\n");
}

// When the program ends, PID 1 exits and the kernel kills the rest of the
// namespace: the background sleep, which holds stdout, is gone at once
// (`finish` reads stdout to EOF under the deadline).
#[test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
fn pid1_exit_ends_the_whole_namespace() {
    require_root();
    let out = run_as_pid1(&shell("sleep 100 & exit 0"));
    out.assert_exited(0);
}

// ---------------------------------------------------------------- PID namespace

// With a fresh /proc, the job sees only its namespace: the init (1) and
// itself (2).
#[test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
fn proc_shows_only_the_job() {
    require_root();
    let args = InitArgs {
        mount_namespace: true,
        mount_proc: true,
        ..job("/usr/bin/ls", &["/proc"])
    };
    let out = run_as_pid1(&args);
    out.assert_exited(0);
    let pids: Vec<&str> = out
        .stdout
        .lines()
        .filter(|name| name.bytes().all(|b| b.is_ascii_digit()))
        .collect();
    assert_eq!(pids, ["1", "2"]);
}

#[test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
fn pid1_is_jobs_init() {
    require_root();
    let args = InitArgs {
        mount_namespace: true,
        mount_proc: true,
        ..job("/usr/bin/cat", &["/proc/1/cmdline"])
    };
    let out = run_as_pid1(&args);
    out.assert_exited(0);
    let mut expected = Vec::new();
    for arg in std::iter::once(OsString::from(INIT)).chain(args.to_args()) {
        expected.extend_from_slice(arg.as_bytes());
        expected.push(0);
    }
    assert_eq!(out.stdout.as_bytes(), expected);
}

// The job cannot read the init's memory-derived /proc files (its environment
// here): the init is non-dumpable, although it runs as the job's uid. The job
// waits on stdin until the init has reported Started, so it looks only after
// the init dropped its privileges.
#[test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
fn job_cannot_read_the_inits_environment() {
    require_root();
    let args = InitArgs {
        mount_namespace: true,
        mount_proc: true,
        ..shell(
            "read go; grep -E '^(Uid|Gid|Groups):' /proc/1/status; \
             cat /proc/1/environ; echo \"cat: $?\"",
        )
    };
    let mut init = spawn(&args, Pidns::New);
    assert_eq!(init.next_report(), Some(Report::Started));
    init.release();
    let out = init.finish();
    out.assert_exited_after_start(0);
    assert_eq!(out.stdout, format!("{NOBODY_IDS}cat: 1\n"));
    assert_eq!(out.stderr, "cat: /proc/1/environ: Permission denied\n");
}

// ---------------------------------------------------------------- mounts and network

// A private /tmp and /dev/shm: empty, sticky and world-writable, and what the
// job writes there never reaches the host (nor does the mount itself).
#[test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
fn private_tmp_is_not_the_hosts() {
    require_root();
    let name = format!("jobs-sandbox-test-{}", std::process::id());
    let host_marker = tempfile::Builder::new()
        .prefix(&name)
        .tempfile_in("/tmp")
        .unwrap();
    let mounts_before = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let script = format!(
        "ls -A /tmp /dev/shm; stat -c %a /tmp /dev/shm; stat -f -c %T /tmp /dev/shm; \
         echo secret > /tmp/{name}.job && echo secret > /dev/shm/{name}.job && echo wrote"
    );
    let args = InitArgs {
        mount_namespace: true,
        private_tmp: true,
        ..shell(&script)
    };
    let out = run(&args);
    out.assert_exited(0);
    assert_eq!(
        out.stdout,
        "/dev/shm:\n\n/tmp:\n1777\n1777\ntmpfs\ntmpfs\nwrote\n"
    );
    assert!(host_marker.path().exists());
    for dir in ["/tmp", "/dev/shm"] {
        let path = PathBuf::from(format!("{dir}/{name}.job"));
        assert!(!path.exists(), "{} leaked to the host", path.display());
    }
    assert_eq!(
        std::fs::read_to_string("/proc/self/mountinfo").unwrap(),
        mounts_before
    );
}

// No network but loopback, and loopback up: connecting to a closed local port
// is refused (with lo down it would be "Network is unreachable").
#[test]
#[cfg_attr(not(jobs_root), ignore = "needs root (cgroups, namespaces, uids)")]
fn network_none_has_only_loopback_up() {
    require_root();
    let args = InitArgs {
        network_none: true,
        ipc_namespace: false,
        ..job(
            "/usr/bin/bash",
            &["-c", "cat /proc/net/dev; echo > /dev/tcp/127.0.0.1/9"],
        )
    };
    let out = run(&args);
    out.assert_exited(1);
    let interfaces: Vec<&str> = out
        .stdout
        .lines()
        .skip(2)
        .filter_map(|line| line.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(interfaces, ["lo"], "{}", out.stdout);
    assert!(out.stderr.contains("Connection refused"), "{}", out.stderr);
}

// ---------------------------------------------------------------- helpers

trait WithArgs {
    fn with_args(self, more: &[&str]) -> Self;
}

impl WithArgs for InitArgs {
    /// Appends arguments (for `sh -c script` these are `$0`, `$1`…).
    fn with_args(mut self, more: &[&str]) -> Self {
        self.args.extend(more.iter().map(|a| a.to_string()));
        self
    }
}

/// A temporary directory nobody can traverse (tempfile makes them 0700).
fn world_readable_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

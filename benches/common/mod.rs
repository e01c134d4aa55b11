//! What the benches share: a PKI made once, and a real `jobsd` child
//! process on loopback whose memory can be read.

// Each bench uses a part of this.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use jobs::auth::Identity;
use jobs::ca::{CertAuthority, Validity, default_server_sans};
use jobs::tls::PemFiles;

const JOBSD: &str = env!("CARGO_BIN_EXE_jobsd");

pub struct Pki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub alice: PemFiles,
    pub identity: Identity,
}

/// A CA, a server certificate and alice's client certificate, as PEM
/// files in `dir`.
pub fn pki(dir: &Path) -> Pki {
    let validity = || Validity::days(1).expect("validity");
    let ca = CertAuthority::generate(Validity::days(2).expect("validity")).expect("CA");
    let server = ca
        .issue_server(&default_server_sans(), validity())
        .expect("server cert");
    let alice = ca.issue_client("alice", validity()).expect("client cert");
    let write = |name: &str, data: &str| {
        let path = dir.join(name);
        std::fs::write(&path, data).expect("write PEM");
        path
    };
    let ca_path = write("ca.crt", ca.cert_pem());
    Pki {
        server_cert: write("server.crt", &server.cert_pem),
        server_key: write("server.key", server.key_pem.as_str()),
        alice: PemFiles {
            ca: ca_path.clone(),
            cert: write("alice.crt", &alice.cert_pem),
            key: write("alice.key", alice.key_pem.as_str()),
        },
        ca: ca_path,
        identity: alice.identity,
    }
}

/// A `jobsd` child on `state`, stopped (SIGTERM, then waited for) on drop.
pub struct Jobsd {
    child: Child,
    /// Where it listens.
    pub addr: String,
    /// From spawning it to its "listening on" line.
    pub ready_after: Duration,
}

impl Jobsd {
    /// Starts it on `state` with `extra` flags, its stderr in `log`.
    pub fn start(pki: &Pki, state: &Path, log: &Path, extra: &[&str]) -> Self {
        let t = Instant::now();
        let mut child = Command::new(JOBSD)
            .args(["--listen", "127.0.0.1:0", "--ca"])
            .arg(&pki.ca)
            .arg("--cert")
            .arg(&pki.server_cert)
            .arg("--key")
            .arg(&pki.server_key)
            .arg("--state-dir")
            .arg(state)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).expect("log"))
            .spawn()
            .expect("spawn jobsd");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read");
        let ready_after = t.elapsed();
        let Some(addr) = line.trim_end().strip_prefix("listening on ") else {
            let _ = child.kill();
            panic!(
                "jobsd did not start: {line:?}\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        };
        Self {
            addr: addr.to_owned(),
            child,
            ready_after,
        }
    }

    /// Its resident memory now.
    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    /// The most resident memory it has had.
    pub fn peak_kib(&self) -> u64 {
        self.status_kib("VmHWM:")
    }

    fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Jobsd {
    fn drop(&mut self) {
        // Our own child, not yet reaped: its pid cannot have been reused.
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

/// The middle of `times`.
pub fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// The 99th percentile of `times`.
pub fn p99(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[(times.len() * 99 / 100).min(times.len() - 1)]
}

/// `d` in milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The positive number in the environment variable `var`, else `default`.
pub fn count_from_env(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}

/// A runtime like jobsd's on the 2-core machine: two worker threads.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

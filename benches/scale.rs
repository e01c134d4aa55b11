//! Many jobs running at once: a real `jobsd` (contained when run as root,
//! as an operator runs it) starts `JOBS_BENCH_JOBS` (default 1,000)
//! `sleep` jobs of one identity, 32 starts in flight on one connection;
//! then lists them, stops them all the same way, and prints how long each
//! took and the daemon's RSS per running job. Run with
//! `cargo bench --bench scale`.

mod common;

use std::time::{Duration, Instant};

use common::{Jobsd, count_from_env, ms, pki, runtime};
use futures_util::StreamExt;
use jobs::client::{Client, ConnectOptions, DEFAULT_TIMEOUT};

/// Requests in flight at once on the one connection.
const IN_FLIGHT: usize = 32;

fn main() {
    let n = count_from_env("JOBS_BENCH_JOBS", 1000);
    let runtime = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki(dir.path());
    // Each job is its init and `sleep`: room for all of them.
    let pids = (2 * n + 64).to_string();
    let jobsd = Jobsd::start(
        &pki,
        &dir.path().join("state"),
        &dir.path().join("jobsd.log"),
        &["--identity-max-pids", &pids, "--grace-secs", "1"],
    );
    let client = runtime
        .block_on(Client::connect(&ConnectOptions {
            addr: jobsd.addr.clone(),
            pem: pki.alice.clone(),
            timeout: DEFAULT_TIMEOUT,
        }))
        .expect("connect");
    runtime
        .block_on(client.list_page(false, 0, ""))
        .expect("list");
    let rss_idle = jobsd.rss_kib();

    let t = Instant::now();
    let starts: Vec<(Duration, String)> = runtime.block_on(
        futures_util::stream::iter(0..n)
            .map(|_| {
                let client = client.clone();
                async move {
                    let t = Instant::now();
                    let job = client.start("sleep", &["600".into()]).await.expect("start");
                    (t.elapsed(), job.id)
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .collect(),
    );
    let started = t.elapsed();
    let rss_running = jobsd.rss_kib();

    let t = Instant::now();
    let listed = runtime.block_on(client.list(false)).expect("list");
    let list = t.elapsed();
    assert_eq!(listed.len(), n, "every job listed");
    let running = listed.iter().filter(|j| j.state == 1).count();

    let t = Instant::now();
    let stopped: Vec<i32> = runtime.block_on(
        futures_util::stream::iter(starts.iter().map(|(_, id)| id.clone()))
            .map(|id| {
                let client = client.clone();
                async move { client.stop(&id).await.expect("stop").state }
            })
            .buffer_unordered(IN_FLIGHT)
            .collect(),
    );
    let stop = t.elapsed();
    assert_eq!(stopped.len(), n);

    let mut latencies: Vec<Duration> = starts.iter().map(|(d, _)| *d).collect();
    latencies.sort();
    let per_job = (rss_running.saturating_sub(rss_idle) * 1024) as f64 / n as f64;
    println!(
        "scale: {n} sleep jobs ({}), {IN_FLIGHT} requests in flight on one connection",
        if nix::unistd::geteuid().is_root() {
            "contained"
        } else {
            "not contained: not root"
        }
    );
    println!(
        "scale: all started in {:.2} s (start median {:.1} ms, p99 {:.1} ms under that load); \
         {running} running; RSS {} KiB idle, {} KiB with {n} running: {:.1} KiB per job; \
         list of all {n} {:.0} ms; all stopped in {:.2} s",
        started.as_secs_f64(),
        ms(latencies[n / 2]),
        ms(latencies[(n * 99 / 100).min(n - 1)]),
        rss_idle,
        rss_running,
        per_job / 1024.0,
        ms(list),
        stop.as_secs_f64(),
    );
}

//! Many followers of one job: a real `jobsd` (contained when run as root)
//! runs `seq 1 30000000` (~248 MiB of output), and `JOBS_BENCH_FOLLOWERS`
//! (default 100) clients, each on its own connection, follow it from byte
//! 0 as it runs. Prints whether every follower got exactly the bytes `seq`
//! writes (SHA-256 against the same numbers formatted here), how long the
//! slowest took, and the daemon's RSS growth meanwhile. Run with
//! `cargo bench --bench fanout`.

mod common;

use std::time::Instant;

use common::{Jobsd, count_from_env, pki, runtime};
use jobs::client::{Client, ConnectOptions, DEFAULT_TIMEOUT};
use jobs::proto::stream_event::Event;
use sha2::{Digest, Sha256};

/// The last number `seq` prints.
const LAST: u64 = 30_000_000;

fn main() {
    let followers = count_from_env("JOBS_BENCH_FOLLOWERS", 100);
    let runtime = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki(dir.path());
    let jobsd = Jobsd::start(
        &pki,
        &dir.path().join("state"),
        &dir.path().join("jobsd.log"),
        &[],
    );
    let options = ConnectOptions {
        addr: jobsd.addr.clone(),
        pem: pki.alice.clone(),
        timeout: DEFAULT_TIMEOUT,
    };

    let mut want = Sha256::new();
    let mut size = 0u64;
    let mut line = String::new();
    for n in 1..=LAST {
        use std::fmt::Write;
        line.clear();
        let _ = writeln!(line, "{n}");
        want.update(line.as_bytes());
        size += line.len() as u64;
    }
    let want = want.finalize();

    let clients: Vec<Client> = runtime.block_on(async {
        let mut clients = Vec::with_capacity(followers);
        for _ in 0..followers {
            clients.push(Client::connect(&options).await.expect("connect"));
        }
        clients
    });
    runtime
        .block_on(clients[0].list_page(false, 0, ""))
        .expect("list");
    let rss_before = jobsd.rss_kib();

    let t = Instant::now();
    let job = runtime
        .block_on(clients[0].start("seq", &["1".into(), LAST.to_string()]))
        .expect("start");
    let results: Vec<(bool, f64)> = runtime.block_on(async {
        let mut tasks = Vec::with_capacity(followers);
        for client in &clients {
            let (client, id) = (client.clone(), job.id.clone());
            tasks.push(tokio::spawn(async move {
                let mut stream = client.stream(&id).await.expect("stream");
                let mut got = Sha256::new();
                let mut bytes = 0u64;
                while let Some(event) = stream.message().await.expect("message") {
                    if let Some(Event::Chunk(chunk)) = event.event {
                        bytes += chunk.data.len() as u64;
                        got.update(&chunk.data);
                    }
                }
                (
                    got.finalize() == want && bytes == size,
                    t.elapsed().as_secs_f64(),
                )
            }));
        }
        let mut results = Vec::with_capacity(followers);
        for task in tasks {
            results.push(task.await.expect("follower"));
        }
        results
    });
    let rss_after = jobsd.peak_kib();
    let exact = results.iter().filter(|(ok, _)| *ok).count();
    let slowest = results.iter().map(|(_, s)| *s).fold(0.0, f64::max);
    println!(
        "fanout: {followers} followers of one job writing {:.0} MiB ({}): {exact} of \
         {followers} byte-exact (sha256); the slowest done {slowest:.1} s after the start \
         ({:.0} MB/s delivered in all); daemon RSS {} KiB before, peak {} KiB: grew {:.1} MiB",
        size as f64 / 1048576.0,
        if nix::unistd::geteuid().is_root() {
            "contained"
        } else {
            "not contained: not root"
        },
        size as f64 * followers as f64 / slowest / 1e6,
        rss_before,
        rss_after,
        rss_after.saturating_sub(rss_before) as f64 / 1024.0,
    );
    assert_eq!(exact, followers, "every follower got every byte");
}

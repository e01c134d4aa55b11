//! Issuing identities: `jobs-ca client NAME...` for 16 names at once (keys
//! made in parallel on all cores, [`jobs::ca::write_clients`]) next to 16
//! single issues one after another ([`jobs::ca::write_client`]), each into a
//! fresh CA directory. RSA-4096 key generation dominates both and its time
//! varies widely from key to key, so each way runs `JOBS_BENCH_ROUNDS` times
//! (default 3) and the median is reported. Run with `cargo bench --bench issue`.

use std::time::{Duration, Instant};

use jobs::ca::{Validity, init_dir, write_client, write_clients};

/// Identities per round: what the issue asks the benchmark to compare.
const IDENTITIES: usize = 16;

fn main() {
    let rounds: usize = std::env::var("JOBS_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(3);
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let names: Vec<String> = (0..IDENTITIES).map(|i| format!("tester-{i:02}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let validity = || Validity::days(30).expect("validity");

    let mut batch = Vec::with_capacity(rounds);
    let mut sequential = Vec::with_capacity(rounds);
    for round in 1..=rounds {
        let dir = tempfile::tempdir().expect("temp dir");
        init_dir(dir.path(), Validity::days(60).expect("validity")).expect("CA");
        let started = Instant::now();
        let issued = write_clients(dir.path(), &names, validity()).expect("batch issue");
        batch.push(started.elapsed());
        assert_eq!(issued.len(), IDENTITIES);

        let dir = tempfile::tempdir().expect("temp dir");
        init_dir(dir.path(), Validity::days(60).expect("validity")).expect("CA");
        let started = Instant::now();
        for name in &names {
            write_client(dir.path(), name, validity()).expect("single issue");
        }
        sequential.push(started.elapsed());
        println!(
            "round {round}/{rounds}: batch {:.2} s, sequential {:.2} s",
            batch[round - 1].as_secs_f64(),
            sequential[round - 1].as_secs_f64()
        );
    }
    let (b, s) = (median(&mut batch), median(&mut sequential));
    println!(
        "issue {IDENTITIES} identities (RSA-4096, {cores} cores), median of {rounds}: \
         batch {:.2} s ({:.0} ms each), sequential {:.2} s ({:.0} ms each), speed-up {:.2}x",
        b.as_secs_f64(),
        b.as_secs_f64() * 1000.0 / IDENTITIES as f64,
        s.as_secs_f64(),
        s.as_secs_f64() * 1000.0 / IDENTITIES as f64,
        s.as_secs_f64() / b.as_secs_f64()
    );
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

//! The job store at scale: a real `jobsd` on a state directory holding
//! `JOBS_BENCH_RECORDS` (default 100,000) finished jobs of one identity,
//! each with its (empty) output log, next to one on an empty state
//! directory. Prints how long each takes from exec to listening, its RSS
//! once listening and after walking every page of `List`, the growth per
//! finished job, and the latency of a `List` page (first, middle, last)
//! and of `Status` of a finished job on one warm connection.
//!
//! The records are written straight into `jobs.db` in one transaction, in
//! the columns of the store's schema (`src/store/schema.rs`): through the
//! daemon, each start and end is an fsynced transaction, and filling
//! 100,000 would take minutes of disk flushes that measure nothing here.
//! Run with `cargo bench --bench records`.

mod common;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Jobsd, count_from_env, median, ms, p99, pki};
use jobs::auth::Identity;
use jobs::client::{Client, ConnectOptions, DEFAULT_TIMEOUT};

/// Calls per latency figure.
const SAMPLES: usize = 200;

/// Writes `n` finished jobs of `owner` into the store of `state` (made by
/// [`jobs::store::Store::open`], so the schema is the daemon's), one
/// transaction, and an empty output log for each.
fn fill(state: &Path, owner: Identity, n: usize) -> Vec<String> {
    std::fs::create_dir_all(state.join("output")).expect("output dir");
    drop(jobs::store::Store::open(state).expect("store"));
    let mut conn =
        rusqlite::Connection::open(state.join(jobs::store::FILE_NAME)).expect("open jobs.db");
    let tx = conn.transaction().expect("transaction");
    let base = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as i64
        - 3_600_000_000_000;
    let mut ids = Vec::with_capacity(n);
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO jobs (id, owner, command, started_at_ns, ended_at_ns, state,
                 exit_code, output_bytes) VALUES (?1, ?2, ?3, ?4, ?5, 'exited', 0, 0)",
            )
            .expect("prepare");
        for i in 0..n as i64 {
            let id = uuid::Uuid::new_v4().hyphenated().to_string();
            insert
                .execute(rusqlite::params![
                    id,
                    owner.to_string(),
                    r#"["true","--job-number",""#.to_owned() + &i.to_string() + r#""]"#,
                    base + i * 1000,
                    base + i * 1000 + 500,
                ])
                .expect("insert");
            std::fs::File::create(state.join("output").join(format!("{id}.log"))).expect("log");
            ids.push(id);
        }
    }
    tx.commit().expect("commit");
    ids
}

fn main() {
    let n = count_from_env("JOBS_BENCH_RECORDS", 100_000);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki(dir.path());
    let connect = |addr: &str| {
        runtime
            .block_on(Client::connect(&ConnectOptions {
                addr: addr.to_owned(),
                pem: pki.alice.clone(),
                timeout: DEFAULT_TIMEOUT,
            }))
            .expect("connect")
    };

    // Unlimited retention: every record stays for the measurement.
    let keep = ["--retention", "never"];
    let empty = Jobsd::start(
        &pki,
        &dir.path().join("empty"),
        &dir.path().join("empty.log"),
        &keep,
    );
    let client = connect(&empty.addr);
    runtime
        .block_on(client.list_page(false, 0, ""))
        .expect("list");
    let (empty_ready, empty_rss) = (empty.ready_after, empty.rss_kib());
    drop(client);
    drop(empty);

    let t = Instant::now();
    let ids = fill(&dir.path().join("full"), pki.identity, n);
    println!(
        "filled {n} finished jobs in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let full = Jobsd::start(
        &pki,
        &dir.path().join("full"),
        &dir.path().join("full.log"),
        &keep,
    );
    let rss_listening = full.rss_kib();
    let client = connect(&full.addr);

    let page = |token: &str| {
        let t = Instant::now();
        let page = runtime
            .block_on(client.list_page(false, 0, token))
            .expect("list page");
        (t.elapsed(), page)
    };
    // Walk every page once: every job once, in order.
    let t = Instant::now();
    let (mut token, mut seen, mut tokens) = (String::new(), 0usize, Vec::new());
    loop {
        let (_, p) = page(&token);
        seen += p.jobs.len();
        if p.next_page_token.is_empty() {
            break;
        }
        token = p.next_page_token;
        tokens.push(token.clone());
    }
    let walk = t.elapsed();
    assert_eq!(seen, n, "every job listed once");
    let rss_walked = full.rss_kib();

    let middle = tokens[tokens.len() / 2].clone();
    let last = tokens.last().cloned().unwrap_or_default();
    let mut figures = Vec::new();
    for (name, token) in [("first", String::new()), ("middle", middle), ("last", last)] {
        let times: Vec<Duration> = (0..SAMPLES / 10).map(|_| page(&token).0).collect();
        figures.push(format!("{name} {:.1} ms", ms(median(times))));
    }
    let mut status = Vec::with_capacity(SAMPLES);
    for i in 0..SAMPLES {
        let id = &ids[i * (n / SAMPLES).max(1) % n];
        let t = Instant::now();
        let s = runtime.block_on(client.status(id)).expect("status");
        status.push(t.elapsed());
        assert_eq!(s.id, *id);
    }

    let growth_b = (rss_walked.saturating_sub(empty_rss) * 1024) as f64 / n as f64;
    println!(
        "records: {n} finished jobs; listening after {:.2} s (empty state: {:.2} s); \
         RSS {} KiB listening, {} KiB after listing all {n} ({:.1} s, {} pages), \
         {} KiB with no jobs: {growth_b:.1} B per finished job",
        full.ready_after.as_secs_f64(),
        empty_ready.as_secs_f64(),
        rss_listening,
        rss_walked,
        walk.as_secs_f64(),
        tokens.len() + 1,
        empty_rss,
    );
    println!(
        "records: a page of list (500 jobs), median of {}: {}; status of a finished job, \
         median {:.2} ms, p99 {:.2} ms ({SAMPLES} calls, one warm connection)",
        SAMPLES / 10,
        figures.join(", "),
        ms(median(status.clone())),
        ms(p99(status)),
    );
}

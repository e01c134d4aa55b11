//! Output throughput and daemon memory, end to end on loopback.
//!
//! Runs the real server in-process on 127.0.0.1 with certificates from
//! `jobs::ca`, starts jobs that write a lot, and measures how fast their output
//! reaches a follower (pipe → log file → TLS → client) and an `Output` reader
//! after the job ended, the process's peak RSS growth while doing so, and the
//! latency of starting a job (contained, as `jobsd` does it, when run as
//! root), and the cost of the policy gate and the audit log on a unary call
//! (Status on one warm connection, without and with both), and the job
//! store: records written per second (each start and end is one
//! transaction, fsynced) and how long a restart takes to list 2000 earlier
//! jobs. Run with
//! `cargo bench --bench throughput`; `JOBS_BENCH_MIB` sets the output size
//! (default 1024 MiB).

use std::time::{Duration, Instant};

use jobs::ca::{CertAuthority, Validity, default_server_sans};
use jobs::client::{Client, ConnectOptions, DEFAULT_TIMEOUT};
use jobs::proto::stream_event::Event;
use jobs::server::{ServerConfig, serve};
use jobs::tls::PemFiles;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

fn rss_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn run() {
    let mib: u64 = std::env::var("JOBS_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let dir = tempfile::tempdir().expect("tempdir");
    let validity = || Validity::days(1).expect("validity");
    // The CA must outlive the leaves issued after it.
    let ca = CertAuthority::generate(Validity::days(2).expect("validity")).expect("CA");
    let server_cert = ca
        .issue_server(&default_server_sans(), validity())
        .expect("server cert");
    let alice = ca.issue_client("alice", validity()).expect("client cert");
    let write = |name: &str, data: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, data).expect("write PEM");
        path
    };
    let ca_path = write("ca.crt", ca.cert_pem());
    let server_pem = PemFiles {
        ca: ca_path.clone(),
        cert: write("server.crt", &server_cert.cert_pem),
        key: write("server.key", server_cert.key_pem.as_str()),
    };
    let alice_pem = PemFiles {
        ca: ca_path.clone(),
        cert: write("alice.crt", &alice.cert_pem),
        key: write("alice.key", alice.key_pem.as_str()),
    };

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let state = jobs::server::StateDir::open(dir.path().join("state")).expect("state dir");
    let cgroup_name = jobs::exec::cgroup_name_for(state.path());
    let mut config = ServerConfig::new(server_pem.server_config().expect("tls"), state);
    // As root, jobs are contained as `jobsd` contains them (cgroup, a uid
    // of their own, namespaces), so start latency includes all of that.
    if nix::unistd::geteuid().is_root() {
        let contain = jobs::exec::ContainConfig {
            init: env!("CARGO_BIN_EXE_jobs-init").into(),
            account: None,
            namespaces: jobs::exec::Namespaces::default(),
            io_devices: Vec::new(),
            cgroup_name,
            sandbox: jobs::sandbox::SandboxPlan::detected(),
        };
        config.executor =
            std::sync::Arc::new(jobs::exec::LocalExecutor::contained(contain).expect("contain"));
        println!("jobs contained (cgroup, a uid per identity, namespaces, seccomp, Landlock)");
    } else {
        println!("jobs not contained (not root)");
    }
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, config, async {
        let _ = stop_rx.await;
    }));
    let client = Client::connect(&ConnectOptions {
        addr: addr.to_string(),
        pem: alice_pem,
        timeout: DEFAULT_TIMEOUT,
    })
    .await
    .expect("connect");

    let rss_before = rss_kib("VmRSS:");
    let bytes = mib * 1024 * 1024;
    let job = client
        .start(
            "head",
            &["-c".into(), bytes.to_string(), "/dev/zero".into()],
        )
        .await
        .expect("start");
    let t = Instant::now();
    let mut stream = client.stream(&job.id).await.expect("stream");
    let mut got = 0u64;
    while let Some(event) = stream.message().await.expect("message") {
        if let Some(Event::Chunk(c)) = event.event {
            got += c.data.len() as u64;
        }
    }
    let follow = t.elapsed();
    assert_eq!(got, bytes, "follower lost bytes");
    report("follow from start", bytes, follow);

    let t = Instant::now();
    let mut output = client.output(&job.id).await.expect("output");
    let mut got = 0u64;
    while let Some(chunk) = output.message().await.expect("message") {
        got += chunk.data.len() as u64;
    }
    assert_eq!(got, bytes, "output lost bytes");
    report("output after exit", bytes, t.elapsed());
    println!(
        "peak RSS {} MiB; RSS grew {} KiB while moving {} MiB twice",
        rss_kib("VmHWM:") / 1024,
        rss_kib("VmRSS:").saturating_sub(rss_before),
        mib
    );

    let mut latencies: Vec<Duration> = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        client.start("true", &[]).await.expect("start");
        latencies.push(t.elapsed());
    }
    latencies.sort();
    println!(
        "start latency over 200 jobs: median {:?}, p95 {:?}, p99 {:?}",
        latencies[100], latencies[190], latencies[198]
    );

    let plain = status_latency(&client, &job.id).await;
    let _ = stop_tx.send(());
    server.await.expect("server task").expect("server");

    // The same calls through a policy (1000 denylisted identities, rate
    // limits that never trip, alice with overrides) and an audit log.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let state = jobs::server::StateDir::open(dir.path().join("state2")).expect("state dir");
    let mut config = ServerConfig::new(server_pem.server_config().expect("tls"), state);
    let mut text = String::from("denylist = [\n");
    for i in 0..1000u32 {
        let id = jobs::auth::Identity::from_spki_der(&i.to_be_bytes());
        text.push_str(&format!("  \"{id}\",\n"));
    }
    text.push_str(&format!(
        "]\n[rate]\nrequests_per_second = 1000000\nstarts_per_minute = 1000000\n\
         [quota]\nmax_running_jobs = 1000\nmax_output_bytes = \"1T\"\n\
         [users.\"{}\".quota]\nmax_running_jobs = 2000\n",
        alice.identity
    ));
    let policy_path = write("policy.toml", &text);
    config.policy =
        jobs::policy::PolicyHandle::new(jobs::policy::Policy::load(&policy_path).expect("policy"));
    config.audit = Some(std::sync::Arc::new(
        jobs::audit::AuditLog::open(&dir.path().join("audit.jsonl")).expect("audit log"),
    ));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, config, async {
        let _ = stop_rx.await;
    }));
    let client = connect_alice(addr, &ca_path, dir.path()).await;
    let job = client.start("true", &[]).await.expect("start");
    let gated = status_latency(&client, &job.id).await;
    println!(
        "status latency over 2000 calls: median {:?} (p95 {:?}) plain, {:?} (p95 {:?}) with policy and audit log",
        plain.0, plain.1, gated.0, gated.1
    );
    let _ = stop_tx.send(());
    server.await.expect("server task").expect("server");

    store_and_restart(
        &dir.path().join("state3"),
        &server_pem,
        &ca_path,
        dir.path(),
    )
    .await;
    if nix::unistd::geteuid().is_root() {
        sandbox_cost(&dir.path().join("state4")).await;
    }
}

/// What the kernel sandbox (seccomp filter, Landlock, cgroup namespace)
/// adds to a contained start: the executor alone (no server, no store)
/// starts `true` and waits for its end, 200 times with the sandbox the
/// kernel offers and 200 times without, interleaved so that other load on
/// the machine falls on both alike.
async fn sandbox_cost(state: &std::path::Path) {
    use jobs::exec::{ContainConfig, LocalExecutor};
    use jobs::job::{Account, Executor, JobPermits, JobSpec, Launch, ResourceLimits};
    use jobs::sandbox::SandboxPlan;
    std::fs::create_dir_all(state).expect("state dir");
    let executor = |sandbox: SandboxPlan, name: &str| {
        LocalExecutor::contained(ContainConfig {
            init: env!("CARGO_BIN_EXE_jobs-init").into(),
            account: Some(Account::lookup("nobody", false).expect("nobody")),
            namespaces: jobs::exec::Namespaces::default(),
            io_devices: Vec::new(),
            cgroup_name: format!("{}-{name}", jobs::exec::cgroup_name_for(state)),
            sandbox,
        })
        .expect("contain")
    };
    let none = SandboxPlan {
        seccomp: false,
        landlock_abi: 0,
        cgroup_namespace: false,
        bind_hook: false,
        writable: Vec::new(),
    };
    let executors = [
        executor(SandboxPlan::detected(), "sandboxed"),
        executor(none, "bare"),
    ];
    let spec = JobSpec::new("true".into(), Vec::new()).expect("spec");
    let limits = ResourceLimits::default();
    let mut took: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    // The sandboxed starts' phases as the executor measured them, and the
    // end (exit, kill of the group, reap, counters, removal).
    let mut phases: Vec<(&'static str, Vec<Duration>)> = Vec::new();
    let mut ends = Vec::new();
    for i in 0..400 {
        let which = i % 2;
        let name = format!("bench-{i}");
        let t = Instant::now();
        let mut spawned = executors[which]
            .spawn(Launch {
                name: &name,
                spec: &spec,
                limits: &limits,
                account: None,
                owner: "id-0000000000000000",
                owner_limits: &limits,
                permits: JobPermits::default(),
                max_output_bytes: None,
            })
            .await
            .expect("spawn");
        let end = Instant::now();
        spawned.process.exited().await.expect("exited");
        spawned.process.finish().await.expect("finish");
        took[which].push(t.elapsed());
        if which == 0 {
            ends.push(end.elapsed());
            for (k, (name, d)) in spawned.phases.iter().enumerate() {
                if phases.len() <= k {
                    phases.push((name, Vec::new()));
                }
                phases[k].1.push(*d);
            }
        }
    }
    for executor in &executors {
        executor.close();
    }
    let [mut with, mut without] = took;
    with.sort();
    without.sort();
    let median = |v: &[Duration]| v[v.len() / 2];
    println!(
        "sandbox cost per contained start (executor only, 200 each, interleaved): \
         median {:?} with the sandbox, {:?} without, +{:?}",
        median(&with),
        median(&without),
        median(&with).saturating_sub(median(&without))
    );
    let mut line = String::from("start breakdown (sandboxed, medians):");
    for (name, mut times) in phases {
        times.sort();
        line.push_str(&format!(" {name} {:?},", median(&times)));
    }
    ends.sort();
    println!(
        "{line} then the job's end (exit, group kill, reap, removal) {:?}; \
         the record's store transaction is in the job store line",
        median(&ends)
    );
}

/// Writes 2000 finished job records through the store (one transaction
/// each for the start and the end, as jobs do), then times a server restart
/// on that state directory up to the answer of a List.
async fn store_and_restart(
    state_path: &std::path::Path,
    server_pem: &PemFiles,
    ca_path: &std::path::Path,
    dir: &std::path::Path,
) {
    const RECORDS: usize = 2000;
    let state = jobs::server::StateDir::open(state_path).expect("state dir");
    let store = state.store().clone();
    let owner =
        jobs::auth::Identity::from_certificate_der(&rustls_pemfile_der(&dir.join("alice.crt")))
            .expect("alice's identity");
    std::fs::create_dir_all(state_path.join("output")).expect("output dir");
    let t = Instant::now();
    for i in 0..RECORDS {
        let id: jobs::job::JobId = uuid_like(i).parse().expect("id");
        std::fs::write(state_path.join("output").join(format!("{id}.log")), b"").expect("log");
        store
            .insert(jobs::store::JobRecord {
                id,
                owner,
                command: vec!["true".into()],
                started_at: std::time::SystemTime::now(),
                limits: None,
                max_output_bytes: None,
                recovery: None,
                cluster_job_id: None,
                end: None,
            })
            .await
            .expect("insert");
        store
            .finish(
                id,
                jobs::store::JobEnd {
                    state: jobs::job::State::Exited,
                    exit: Some(jobs::job::ExitInfo::Exited(0)),
                    ended_at: std::time::SystemTime::now(),
                    usage: None,
                    output_bytes: 0,
                },
            )
            .await
            .expect("finish");
    }
    let took = t.elapsed();
    println!(
        "job store: {} transactions in {took:.2?} = {:.0} per second (start + end of {RECORDS} jobs)",
        2 * RECORDS,
        (2 * RECORDS) as f64 / took.as_secs_f64()
    );
    drop((store, state));

    let t = Instant::now();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let state = jobs::server::StateDir::open(state_path).expect("state dir");
    let config = ServerConfig::new(server_pem.server_config().expect("tls"), state);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, config, async {
        let _ = stop_rx.await;
    }));
    let client = connect_alice(addr, ca_path, dir).await;
    let listed = client.list(false).await.expect("list").len();
    let took = t.elapsed();
    assert_eq!(listed, RECORDS, "a restart lost job records");
    println!(
        "restart: {listed} earlier jobs listed {took:.2?} after the state directory was opened (TLS connect included)"
    );
    let _ = stop_tx.send(());
    server.await.expect("server task").expect("server");
}

/// alice's client (her certificate and key in `dir`) to `addr`.
async fn connect_alice(
    addr: std::net::SocketAddr,
    ca_path: &std::path::Path,
    dir: &std::path::Path,
) -> Client {
    Client::connect(&ConnectOptions {
        addr: addr.to_string(),
        pem: PemFiles {
            ca: ca_path.to_owned(),
            cert: dir.join("alice.crt"),
            key: dir.join("alice.key"),
        },
        timeout: DEFAULT_TIMEOUT,
    })
    .await
    .expect("connect")
}

/// The DER of the first certificate in a PEM file.
fn rustls_pemfile_der(path: &std::path::Path) -> Vec<u8> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    CertificateDer::pem_file_iter(path)
        .expect("PEM file")
        .next()
        .expect("a certificate")
        .expect("valid PEM")
        .to_vec()
}

/// A canonical UUID v4 string made from `i`, for bench records.
fn uuid_like(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012x}")
}

/// Median and p95 of 2000 Status calls on one warm connection.
async fn status_latency(client: &Client, id: &str) -> (Duration, Duration) {
    let mut latencies: Vec<Duration> = Vec::with_capacity(2000);
    for _ in 0..2000 {
        let t = Instant::now();
        client.status(id).await.expect("status");
        latencies.push(t.elapsed());
    }
    latencies.sort();
    (latencies[1000], latencies[1900])
}

fn report(what: &str, bytes: u64, took: Duration) {
    let mb_s = bytes as f64 / 1e6 / took.as_secs_f64();
    println!(
        "{what:>18}: {} MiB in {took:.2?} = {mb_s:.0} MB/s",
        bytes >> 20
    );
}

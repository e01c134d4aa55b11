//! `jobsd`: the job server daemon. Parses arguments, sets up logging, binds the
//! listener and runs [`jobs::server::serve`] until SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use jobs::accounts::UidRange;
use jobs::audit::AuditLog;
use jobs::auth::Identity;
use jobs::client::units;
use jobs::exec::{ContainConfig, IoDevice, LocalExecutor, Namespaces, Network};
use jobs::job::{Account, JobsConfig, ResourceLimits};
use jobs::policy::{Policy, PolicyHandle};

/// `--on-revoke`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum OnRevokeArg {
    Stop,
    Keep,
}

/// The jobs daemon: runs programs for clients authenticated by mutual TLS 1.3.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Address to listen on. Port 0 picks a free port; the chosen address is
    /// printed as `listening on HOST:PORT`.
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// CA certificate (PEM) that client certificates must chain to.
    #[arg(long, required_unless_present = "check_policy")]
    ca: Option<PathBuf>,
    /// The server's certificate (PEM), e.g. from `jobs-ca server`.
    #[arg(long, required_unless_present = "check_policy")]
    cert: Option<PathBuf>,
    /// The server's private key (PEM).
    #[arg(long, required_unless_present = "check_policy")]
    key: Option<PathBuf>,
    /// Directory for the job database (jobs.db) and output logs (created
    /// with mode 0700 if missing). Jobs, finished or not, are listed again
    /// by the next jobsd on the same directory.
    #[arg(long, default_value = "/var/lib/jobsd")]
    state_dir: PathBuf,
    /// Delete a finished job and its output this long after it ended, e.g.
    /// 7d, 12h, 30m; `never` to keep jobs until `jobs rm`.
    #[arg(long, value_name = "DURATION", default_value = "7d")]
    retention: String,
    /// Most output one identity keeps over all its jobs, running ones
    /// included (SIZE: bytes or K/M/G/T), counted while they write: a
    /// running job that would pass it ends in state output_limit; when one
    /// ends above it, the identity's oldest finished jobs are deleted, never
    /// its most recent one. `none` for no cap.
    #[arg(long, value_name = "SIZE", default_value = "10G")]
    max_stored_output: String,
    /// Most output each job may write (SIZE), unless the policy's
    /// `[quota] max_output_bytes` says otherwise; beyond it the job ends in
    /// state output_limit. `none` for no cap.
    #[arg(long, value_name = "SIZE", default_value = "1G")]
    max_output: String,
    /// Free space on the state directory's file system that job output
    /// never takes (SIZE; at most a quarter of the file system), so that
    /// job ends and `jobs rm` are recorded on a full disk. When only the
    /// headroom is left, jobs wait to write and the identity writing the
    /// most has its job stopped (output_failed).
    #[arg(long, value_name = "SIZE", default_value = "64M")]
    disk_headroom: String,
    /// Seconds between SIGTERM and SIGKILL when a job is stopped (0-60).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=60))]
    grace_secs: u64,
    /// Policy file (TOML; see policy.example.toml): denylist, admins, rate
    /// limits, quotas, per-identity overrides. Checked strictly at start-up
    /// (jobsd refuses to start on any error) and read again on SIGHUP (an
    /// invalid file is rejected and the old policy stays). Without it: no
    /// restriction beyond authentication.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Certificate revocation list (PEM, from `jobs-ca revoke` / `jobs-ca crl`):
    /// handshakes with a certificate it lists are refused. It must be signed
    /// by --ca and not past its next update, or jobsd does not start. It is
    /// reloaded on SIGHUP and whenever the file is replaced; a bad one at a
    /// reload is logged and the old one stays.
    #[arg(long, value_name = "FILE")]
    crl: Option<PathBuf>,
    /// What happens to the running jobs of an identity that is revoked (by a
    /// reloaded CRL) or denylisted (by a reloaded policy) while they run:
    /// `stop` them (SIGTERM, the grace period, SIGKILL) or `keep` them
    /// running. Its streams end and its connections close either way.
    #[arg(long, value_enum, default_value_t = OnRevokeArg::Stop)]
    on_revoke: OnRevokeArg,
    /// Check the --policy file, print a summary and exit (0 if valid).
    #[arg(long, requires = "policy")]
    check_policy: bool,
    /// Append one JSON line per access decision to FILE (created with mode
    /// 0600). Reopened on SIGHUP, for log rotation.
    #[arg(long, value_name = "FILE")]
    audit_log: Option<PathBuf>,
    #[command(flatten)]
    contain: ContainArgs,
    #[command(flatten)]
    slurm: SlurmArgs,
}

/// Where jobs run.
#[derive(clap::Args, Debug)]
#[command(next_help_heading = "Executor")]
struct SlurmArgs {
    /// `local`: on this machine, contained as set below. `slurm`: submitted
    /// to a Slurm cluster with sbatch (jobsd checks at start-up that its
    /// controller answers); as root, each identity's jobs run as its
    /// --run-as-for account (or --run-as), which must exist on the cluster.
    #[arg(long, value_enum, default_value_t = ExecutorArg::Local)]
    executor: ExecutorArg,
    /// Slurm partition to submit to [default: the cluster's default].
    #[arg(long, value_name = "NAME", requires = "slurm_spool")]
    slurm_partition: Option<String>,
    /// Directory for the Slurm jobs' output files, seen at the same path by
    /// jobsd and every node (a shared file system on a real cluster);
    /// created with mode 0711 if missing. Needed with --executor slurm.
    #[arg(long, value_name = "DIR")]
    slurm_spool: Option<PathBuf>,
    /// Directory of sbatch, scancel and scontrol [default: found on PATH].
    #[arg(long, value_name = "DIR", requires = "slurm_spool")]
    slurm_bin: Option<PathBuf>,
    /// The cluster's slurm.conf [default: Slurm's own: $SLURM_CONF, then
    /// its compiled-in path].
    #[arg(long, value_name = "FILE", requires = "slurm_spool")]
    slurm_conf: Option<PathBuf>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum ExecutorArg {
    Local,
    Slurm,
}

/// How jobs are contained. jobsd must run as root for any of this.
#[derive(clap::Args, Debug)]
#[command(next_help_heading = "Containment")]
struct ContainArgs {
    /// `auto`: contain jobs when running as root, otherwise start with a
    /// warning that containment is off. `on`: refuse to start without it.
    /// `off`: never contain (jobs run as jobsd's user, without limits).
    #[arg(long, value_enum, default_value_t = Mode::Auto)]
    containment: Mode,
    /// Give each identity its own uid and gid (the same number) from
    /// FIRST-LAST, on its first start, kept in the state directory for good:
    /// no two identities ever share one. Such an account has no passwd entry
    /// and a private, empty home. Checked at start-up against every user and
    /// group the name service lists, /etc/subuid and /etc/subgid (jobsd
    /// refuses to start on an overlap). The default, 0x78000000-0x7800FFFF,
    /// stays clear of system and login accounts (below 60001),
    /// systemd-homed and DynamicUser (60001-65519), nobody (65534),
    /// useradd's subordinate ids (100000-600165535), systemd's container
    /// ranges (524288-1879048191), sssd's default id mapping
    /// (200000-2000200000, not listed by the name service), systemd's
    /// foreign range (2147352576-) and uids of 2^31 and more, which some
    /// tools mishandle. [default: 2013265920-2013331455]
    #[arg(long, value_name = "FIRST-LAST", conflicts_with = "run_as")]
    uid_range: Option<String>,
    /// Run the jobs of every identity without --run-as-for as this one local
    /// account instead of one per identity: they then share what the kernel
    /// keeps per uid (user keyring, per-user limits such as inotify
    /// instances, the account's files). jobsd warns at start-up.
    #[arg(long, value_name = "USER")]
    run_as: Option<String>,
    /// Account for one identity's jobs, as FINGERPRINT=USER (repeatable),
    /// ahead of --uid-range and --run-as; FINGERPRINT as `jobs-ca
    /// fingerprint` prints it.
    #[arg(long, value_name = "FINGERPRINT=USER")]
    run_as_for: Vec<String>,
    /// Allow jobs to run as root: accounts with uid 0 or gid 0 in --run-as /
    /// --run-as-for, and --containment off when jobsd runs as root.
    #[arg(long)]
    allow_root: bool,
    /// The job init program [default: jobs-init next to jobsd].
    #[arg(long, value_name = "FILE")]
    init: Option<PathBuf>,
    /// Most memory a job may have, and its default (SIZE: bytes or K/M/G/T,
    /// powers of 1024). `none` for no limit.
    #[arg(long, value_name = "SIZE", default_value = "1G")]
    max_memory: String,
    /// Most CPU a job may have, and its default, in cores. `none` for no
    /// limit.
    #[arg(long, value_name = "CORES", default_value = "1")]
    max_cpus: String,
    /// Most processes and threads a job may have, and its default. `none` for
    /// no limit.
    #[arg(long, value_name = "N", default_value = "512")]
    max_pids: String,
    /// Most memory all of one identity's running jobs may have together
    /// (SIZE, or `half`: half of this machine's memory, so that no identity
    /// can take the machine's memory from the others), unless the policy's
    /// [identity_limits] says otherwise. `none` for no limit.
    #[arg(long, value_name = "SIZE", default_value = "half")]
    identity_max_memory: String,
    /// Most CPU all of one identity's running jobs may have together, in
    /// cores. Default `none`: identities that want CPU share it equally
    /// anyway (each has the same weight), and a cap would leave cores idle.
    #[arg(long, value_name = "CORES", default_value = "none")]
    identity_max_cpus: String,
    /// Most processes and threads all of one identity's running jobs may
    /// have together, so that no identity can use up the machine's process
    /// table. `none` for no limit.
    #[arg(long, value_name = "N", default_value = "4096")]
    identity_max_pids: String,
    /// A block device IO limits apply to (repeatable), e.g. /dev/vda. Without
    /// any, jobs cannot ask for IO limits.
    #[arg(long, value_name = "DEVICE")]
    io_device: Vec<PathBuf>,
    /// Most read bandwidth per IO device, and its default (SIZE per second).
    /// Default: no limit.
    #[arg(long, value_name = "SIZE")]
    max_io_read: Option<String>,
    /// Most write bandwidth per IO device, and its default (SIZE per second).
    /// Default: no limit.
    #[arg(long, value_name = "SIZE")]
    max_io_write: Option<String>,
    /// Run jobs in the host's PID namespace: they see every process, and
    /// jobs of one account can signal and trace each other's processes.
    #[arg(long)]
    no_pid_namespace: bool,
    /// Share the host's /tmp, /var/tmp, /dev/shm and /run/lock with jobs
    /// (jobs of one account can read and change each other's files there).
    /// /proc stays private while the PID namespace is on.
    #[arg(long)]
    no_mount_namespace: bool,
    /// `host`: jobs share the host's network. `none`: a private network
    /// namespace with only loopback.
    #[arg(long, value_enum, default_value_t = Net::Host)]
    network: Net,
    /// Share this host directory writable with every job (repeatable; an
    /// absolute, existing directory). Everything else outside the jobs'
    /// private places is read-only to them (Landlock).
    #[arg(long, value_name = "DIR")]
    writable: Vec<PathBuf>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Auto,
    On,
    Off,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Net {
    Host,
    None,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    if args.check_policy {
        return check_policy(args.policy.as_deref());
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("jobsd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--check-policy`: validates the file and says what it holds.
fn check_policy(path: Option<&std::path::Path>) -> ExitCode {
    let Some(path) = path else {
        eprintln!("jobsd: error: --check-policy needs --policy FILE");
        return ExitCode::FAILURE;
    };
    match Policy::load(path) {
        Ok(policy) => {
            let s = policy.summary();
            println!(
                "{}: valid ({} denied, {} admins, {} identities with overrides)",
                path.display(),
                s.denied,
                s.admins,
                s.users
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("jobsd: error: invalid policy: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the daemon on a multi-threaded runtime. When it is done, blocking
/// work still running (a policy reload stuck reading its file) is abandoned
/// after [`BLOCKING_SHUTDOWN`] rather than waited for forever.
fn run(args: Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let result = runtime.block_on(daemon(args));
    runtime.shutdown_timeout(BLOCKING_SHUTDOWN);
    result
}

/// How long exit waits for blocking work that outlived the server.
const BLOCKING_SHUTDOWN: Duration = Duration::from_secs(1);

async fn daemon(args: Args) -> anyhow::Result<()> {
    jobs::exec::protect_daemon_process().context("cannot mark jobsd non-dumpable")?;
    let retention = jobs::job::Retention {
        max_age: retention(&args.retention).context("--retention")?,
        max_output_per_identity: optional(&args.max_stored_output, units::parse_size)
            .context("--max-stored-output")?,
    };
    // Used once the executor is made, after the state directory; checked
    // here so that a bad value leaves nothing behind.
    optional(&args.contain.identity_max_pids, parse_identity_pids)
        .context("--identity-max-pids")?;
    let policy = match &args.policy {
        Some(path) => {
            let policy = Policy::load(path).map_err(|e| anyhow::anyhow!("invalid policy: {e}"))?;
            let s = policy.summary();
            tracing::info!(file = %path.display(), denied = s.denied, admins = s.admins, overrides = s.users, "policy loaded");
            PolicyHandle::new(policy)
        }
        None => PolicyHandle::default(),
    };
    let audit = match &args.audit_log {
        Some(path) => Some(Arc::new(
            AuditLog::open(path).context("cannot open the audit log")?,
        )),
        None => None,
    };
    let (Some(ca), Some(cert), Some(key)) = (args.ca, args.cert, args.key) else {
        // clap requires all three unless --check-policy, handled in main.
        anyhow::bail!("--ca, --cert and --key are required");
    };
    let pem = jobs::tls::PemFiles { ca, cert, key };
    let material = pem.read().context("cannot load the TLS configuration")?;
    let tls = match &args.crl {
        None => jobs::server::TlsHandle::fixed(
            pem.server_config_from(&material)
                .context("cannot load the TLS configuration")?,
        ),
        Some(crl) => {
            let tls = jobs::server::TlsHandle::with_crl(pem.clone(), material, crl.clone())
                .context("cannot load the TLS configuration")?;
            tracing::info!(file = %crl.display(), "CRL loaded");
            tls
        }
    };
    // Before anything that needs undoing (the cgroup subtree, jobs): a
    // SIGTERM from now on is an orderly shutdown, never a sudden death.
    let shutdown = shutdown_signal(policy.clone(), audit.clone(), tls.clone())?;
    if let Some(warning) = jobs::client::expiry_warning(&pem.cert, time::OffsetDateTime::now_utc())
    {
        tracing::warn!("{}", warning.server_text());
    }
    // Everything that can fail is checked before the "listening on" line, so
    // that a script waiting for it knows the daemon is really serving.
    let state = jobs::server::StateDir::open(&args.state_dir)?;
    let cgroup_name = jobs::exec::cgroup_name_for(state.path());
    let mut config = jobs::server::ServerConfig::new(tls.config_now(), state);
    config.tls = tls;
    config.on_revoke = match args.on_revoke {
        OnRevokeArg::Stop => jobs::server::OnRevoke::Stop,
        OnRevokeArg::Keep => jobs::server::OnRevoke::Keep,
    };
    config.jobs.grace = Duration::from_secs(args.grace_secs);
    config.jobs.retention = retention;
    config.jobs.max_output_bytes =
        optional(&args.max_output, units::parse_size).context("--max-output")?;
    config.jobs.disk_headroom =
        units::parse_size(&args.disk_headroom).context("--disk-headroom")?;
    config.policy = policy;
    config.audit = audit;
    // Held until jobsd ends: no other jobsd on this host may hand out these uids.
    let mut uid_claim = None;
    if args.slurm.executor == ExecutorArg::Slurm {
        config.executor = Arc::new(slurm(&args.slurm, &args.contain, &mut config.jobs).await?);
    } else if let Some(executor) =
        contain(&args.contain, cgroup_name, &mut config.jobs, &mut uid_claim).await?
    {
        config.executor = Arc::new(executor);
    } else if config.policy.current().sets_job_limits() {
        tracing::warn!(
            "the policy's [limits] and [identity_limits] cannot be enforced: jobs run without containment (requests for limits are refused)"
        );
    }
    raise_open_file_limit();
    let listener =
        listen(args.listen).with_context(|| format!("cannot listen on {}", args.listen))?;
    let local = listener
        .local_addr()
        .context("cannot read the listening address")?;
    if !local.ip().is_loopback() {
        tracing::warn!(%local, "listening beyond loopback");
    }
    // The line scripts and tests wait for; printed after the bind succeeded.
    println!("listening on {local}");
    tracing::info!(%local, state_dir = %args.state_dir.display(), "jobsd ready");
    jobs::server::serve(listener, config, shutdown)
        .await
        .context("server failed")?;
    drop(uid_claim);
    Ok(())
}

/// The contained executor, or `None` (with a warning) when jobs run
/// uncontained. Sets the ceilings and per-identity accounts in `jobs`, and
/// puts the host-wide claim on the uid range (when one is used) in
/// `uid_claim`.
async fn contain(
    args: &ContainArgs,
    cgroup_name: String,
    jobs: &mut JobsConfig,
    uid_claim: &mut Option<jobs::accounts::RangeClaim>,
) -> anyhow::Result<Option<LocalExecutor>> {
    // Checked in every mode: a bad value is a mistake either way.
    let uid_range: UidRange = args
        .uid_range
        .as_deref()
        .map(str::parse)
        .transpose()
        .context("--uid-range")?
        .unwrap_or_default();
    let root = nix::unistd::geteuid().is_root();
    match (args.containment, root) {
        (Mode::Off, true) if !args.allow_root => anyhow::bail!(
            "--containment off as root would run every user's jobs as root; add --allow-root if that is really meant"
        ),
        (Mode::Off, _) => {
            tracing::warn!(
                "containment is OFF (--containment off): jobs run as jobsd's own user, see each other's processes and files, and have no resource limits"
            );
            return Ok(None);
        }
        (Mode::Auto, false) => {
            tracing::warn!(
                uid = nix::unistd::geteuid().as_raw(),
                "containment is OFF because jobsd does not run as root: jobs run as jobsd's own user, see each other's processes and files, and have no resource limits"
            );
            return Ok(None);
        }
        (Mode::On, false) => anyhow::bail!("--containment on needs jobsd to run as root"),
        (Mode::Auto | Mode::On, true) => {}
    }
    let shared = match &args.run_as {
        Some(user) => {
            let account = Account::lookup(user, args.allow_root)
                .with_context(|| format!("--run-as {user}"))?;
            warn_if_root(&account, "--run-as");
            tracing::warn!(
                account = %account.name,
                uid = account.uid,
                "--run-as: every identity without --run-as-for runs its jobs as this one account, so they share what the kernel keeps per uid: the user keyring, per-user limits (inotify instances and watches, processes), the account's files, and without a PID namespace the right to signal and trace each other's processes; without --run-as each identity gets a uid of its own"
            );
            jobs.uid_range = None;
            Some(account)
        }
        None => {
            // getpwent(3) keeps process-wide state and may be slow (a
            // network name service): on a blocking thread.
            tokio::task::spawn_blocking(move || jobs::accounts::check_system(uid_range))
                .await
                .context("the uid range check did not run")?
                .context("--uid-range")?;
            *uid_claim = Some(
                jobs::accounts::claim(uid_range, Path::new(jobs::accounts::CLAIMS_DIR))
                    .context("--uid-range")?,
            );
            tracing::info!(range = %uid_range, "each identity's jobs run as a uid and gid of its own from this range");
            jobs.uid_range = Some(uid_range);
            None
        }
    };
    run_as_for(args, jobs)?;
    jobs.identity_limits = ResourceLimits {
        memory_bytes: match args.identity_max_memory.as_str() {
            "half" => Some(half_the_memory().context("--identity-max-memory half")?),
            other => optional(other, units::parse_size).context("--identity-max-memory")?,
        },
        cpu_millis: optional(&args.identity_max_cpus, units::parse_cpus)
            .context("--identity-max-cpus")?,
        pids: optional(&args.identity_max_pids, parse_identity_pids)
            .context("--identity-max-pids")?,
        ..ResourceLimits::default()
    };
    jobs.ceiling = ceiling(args)?;
    let io_devices = args
        .io_device
        .iter()
        .map(|p| IoDevice::from_path(p))
        .collect::<Result<Vec<_>, _>>()?;
    let init = match &args.init {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .context("cannot find jobsd's own path to locate jobs-init; pass --init")?
            .with_file_name("jobs-init"),
    };
    let writable = args
        .writable
        .iter()
        .map(|p| jobs::sandbox::check_writable(p))
        .collect::<Result<Vec<_>, _>>()?;
    let support = jobs::sandbox::KernelSupport::detect();
    let (sandbox, lines) =
        jobs::sandbox::SandboxPlan::decide(&support, args.containment == Mode::On, writable)?;
    for line in &lines {
        if line.on {
            tracing::info!(
                part = line.part,
                "sandbox: {} on: {}",
                line.part,
                line.detail
            );
        } else {
            tracing::warn!(
                part = line.part,
                "sandbox: {} OFF: {}",
                line.part,
                line.detail
            );
        }
    }
    let config = ContainConfig {
        init,
        account: shared,
        namespaces: Namespaces {
            pid: !args.no_pid_namespace,
            mount: !args.no_mount_namespace,
            network: match args.network {
                Net::Host => Network::Host,
                Net::None => Network::None,
            },
        },
        io_devices,
        cgroup_name,
        sandbox,
    };
    // No cgroup or namespace covers this; the operator must know (README,
    // "Security model").
    tracing::warn!(
        "shared: process creation: every fork and exit write-locks, host-wide, the mappings of the files a process maps (the C library and the dynamic loader above all), so one identity's fork bomb of dynamically linked programs, within its process cap, stalls other identities' and the host's forks, execs and exits (for seconds on 2 cores); a shared machine needs a low --identity-max-pids or [identity_limits] pids"
    );
    let executor = LocalExecutor::contained(config).context("cannot contain jobs")?;
    if let Err(e) = jobs::exec::protect_daemon_from_oom() {
        tracing::warn!(error = %e, "cannot lower jobsd's OOM score; the OOM killer may pick jobsd over a job");
    }
    tracing::info!(ceiling = ?jobs.ceiling, "job limits");
    Ok(Some(executor))
}

/// The --max-* ceilings (also every job's defaults).
fn ceiling(args: &ContainArgs) -> anyhow::Result<ResourceLimits> {
    let ceiling = ResourceLimits {
        memory_bytes: optional(&args.max_memory, units::parse_size).context("--max-memory")?,
        cpu_millis: optional(&args.max_cpus, units::parse_cpus).context("--max-cpus")?,
        pids: optional(&args.max_pids, parse_pids).context("--max-pids")?,
        io_read_bps: args
            .max_io_read
            .as_deref()
            .map(units::parse_size)
            .transpose()
            .context("--max-io-read")?,
        io_write_bps: args
            .max_io_write
            .as_deref()
            .map(units::parse_size)
            .transpose()
            .context("--max-io-write")?,
    };
    // The ceilings are also the defaults, so they must pass the minimums.
    ceiling
        .resolve(&ceiling)
        .context("a --max-* value is out of range")?;
    Ok(ceiling)
}

/// The accounts of --run-as-for, into `jobs.accounts`.
fn run_as_for(args: &ContainArgs, jobs: &mut JobsConfig) -> anyhow::Result<()> {
    for entry in &args.run_as_for {
        let (fingerprint, user) = entry
            .split_once('=')
            .with_context(|| format!("--run-as-for {entry}: expected FINGERPRINT=USER"))?;
        let identity: Identity = fingerprint
            .parse()
            .with_context(|| format!("--run-as-for {entry}"))?;
        let account = Account::lookup(user, args.allow_root)
            .with_context(|| format!("--run-as-for {entry}"))?;
        warn_if_root(&account, "--run-as-for");
        if jobs.accounts.insert(identity, account).is_some() {
            anyhow::bail!("--run-as-for: {fingerprint} is given twice");
        }
    }
    Ok(())
}

/// The Slurm executor, its controller checked; the accounts of --run-as-for
/// into `jobs` (and --run-as as the default one).
async fn slurm(
    args: &SlurmArgs,
    contain: &ContainArgs,
    jobs: &mut JobsConfig,
) -> anyhow::Result<jobs::slurm::SlurmExecutor> {
    let Some(spool) = args.slurm_spool.clone() else {
        anyhow::bail!(
            "--executor slurm needs --slurm-spool DIR (a directory jobsd and the nodes share)"
        );
    };
    if contain.uid_range.is_some() {
        anyhow::bail!(
            "--uid-range does not apply to --executor slurm: Slurm runs jobs only as accounts the cluster knows; map identities with --run-as-for FINGERPRINT=USER"
        );
    }
    // Slurm knows only named accounts: no uid of a range.
    jobs.uid_range = None;
    run_as_for(contain, jobs)?;
    let default_account = match &contain.run_as {
        Some(user) => {
            let account = Account::lookup(user, contain.allow_root)
                .with_context(|| format!("--run-as {user}"))?;
            warn_if_root(&account, "--run-as");
            Some(account)
        }
        None => None,
    };
    let root = nix::unistd::geteuid().is_root();
    if !root {
        tracing::warn!(
            uid = nix::unistd::geteuid().as_raw(),
            "jobsd does not run as root: every Slurm job runs as jobsd's own account, so identities share its files and processes on the nodes"
        );
    } else if jobs.accounts.is_empty() && default_account.is_none() {
        tracing::warn!(
            "no identity has an account on the cluster (--run-as-for FINGERPRINT=USER, or --run-as USER): every start is refused"
        );
    }
    // Slurm limits memory and CPUs; processes and IO it cannot.
    jobs.ceiling = ResourceLimits {
        pids: None,
        io_read_bps: None,
        io_write_bps: None,
        ..ceiling(contain)?
    };
    let executor = jobs::slurm::SlurmExecutor::open(jobs::slurm::SlurmConfig {
        bin: args.slurm_bin.clone(),
        conf: args.slurm_conf.clone(),
        partition: args.slurm_partition.clone(),
        spool,
        default_account,
    })
    .await?;
    tracing::info!(
        partition = args.slurm_partition.as_deref().unwrap_or("(default)"),
        ceiling = ?jobs.ceiling,
        "jobs run on the Slurm cluster: memory and CPUs as sbatch --mem and --cpus-per-task (enforced as far as the cluster's task plugin does); process, IO and per-identity limits are not Slurm's, and requests for them are refused"
    );
    Ok(executor)
}

/// Says loudly that jobs will run as root (possible only with --allow-root).
fn warn_if_root(account: &Account, option: &str) {
    if account.uid == 0 || account.gid == 0 {
        tracing::warn!(
            account = %account.name,
            option,
            "jobs of this account run as ROOT (uid or gid 0; --allow-root): they are contained in a cgroup and namespaces but hold root's privileges in them"
        );
    }
}

/// Parses `s` with `parse`, or `None` for the word `none`.
/// `never`, or a positive duration such as `7d` or `90m` (humantime's
/// format).
fn retention(s: &str) -> anyhow::Result<Option<Duration>> {
    if s == "never" {
        return Ok(None);
    }
    let d = humantime::parse_duration(s)
        .map_err(|e| anyhow::anyhow!("'{s}' is not a duration such as 7d, 12h or 30m: {e}"))?;
    if d.is_zero() {
        anyhow::bail!("'{s}' would delete jobs as they end; use a positive duration or `never`");
    }
    Ok(Some(d))
}

/// A number of processes, as the `--*-pids` flags take it.
fn parse_pids(s: &str) -> anyhow::Result<u32> {
    s.parse::<u32>()
        .map_err(|_| anyhow::anyhow!("'{s}' is not a number of processes"))
}

/// As [`parse_pids`], within what the policy's `[identity_limits] pids`
/// takes: fewer than two processes would refuse every start.
fn parse_identity_pids(s: &str) -> anyhow::Result<u32> {
    let (min, max) = (jobs::limits::MIN_PIDS, jobs::limits::MAX_PIDS);
    let n = parse_pids(s)?;
    if !(min..=max).contains(&n) {
        anyhow::bail!("{n} is out of range: an integer from {min} to {max}, or none");
    }
    Ok(n)
}

/// Half of this machine's memory (`MemTotal` of /proc/meminfo), in bytes,
/// rounded down to whole pages: the kernel keeps a memory limit in pages,
/// so this is the limit it applies, and the one jobs report.
fn half_the_memory() -> anyhow::Result<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").context("cannot read /proc/meminfo")?;
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .context("no MemTotal in /proc/meminfo")?;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|p| u64::try_from(p).ok())
        .filter(|p| *p > 0)
        .unwrap_or(4096);
    Ok(kib * 1024 / 2 / page * page)
}

fn optional<T, E: Into<anyhow::Error>>(
    s: &str,
    parse: impl Fn(&str) -> Result<T, E>,
) -> anyhow::Result<Option<T>> {
    if s == "none" {
        Ok(None)
    } else {
        parse(s).map(Some).map_err(Into::into)
    }
}

/// Connections the kernel queues before jobsd accepts them (listen(2)). Above
/// tokio's default of 128 so that a burst of clients is not dropped.
const LISTEN_BACKLOG: u32 = 1024;

fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Raises the soft limit on open files to the hard limit: every connection,
/// open output stream and running job costs descriptors, and the common soft
/// default of 1024 is below what the server's own caps allow.
fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(error = %e, soft, hard, "cannot raise the open-file limit");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the open-file limit"),
    }
}

/// Resolves on the first SIGTERM or SIGINT. SIGHUP reloads the policy file
/// (an invalid one is logged with file, line and key and the old policy
/// stays), reloads the CRL (likewise) and reopens the audit log; it never
/// stops the daemon, though a reload may stop a newly banned identity's jobs.
fn shutdown_signal(
    policy: PolicyHandle,
    audit: Option<Arc<AuditLog>>,
    tls: jobs::server::TlsHandle,
) -> anyhow::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    Ok(async move {
        // At most one reload at a time, on a blocking thread (reading files
        // may block: a stalled disk or network file system), and never in
        // the way of SIGTERM: the loop keeps handling signals meanwhile.
        let mut reloading: Option<tokio::task::JoinHandle<()>> = None;
        loop {
            tokio::select! {
                _ = term.recv() => break tracing::info!("SIGTERM received"),
                _ = int.recv() => break tracing::info!("SIGINT received"),
                _ = hup.recv() => {
                    if reloading.is_some() {
                        tracing::warn!("SIGHUP received while a reload is still running; ignored");
                        continue;
                    }
                    let (policy, audit, tls) = (policy.clone(), audit.clone(), tls.clone());
                    reloading = Some(tokio::task::spawn_blocking(move || {
                        reload(&policy, audit.as_deref());
                        if let Some(path) = tls.crl_path() {
                            jobs::server::log_reload("SIGHUP received", path, tls.reload_crl());
                        }
                    }));
                }
                done = async { reloading.as_mut().expect("guarded by the branch condition").await }, if reloading.is_some() => {
                    reloading = None;
                    if let Err(e) = done {
                        tracing::error!(error = %e, "policy reload failed");
                    }
                }
            }
        }
        if reloading.is_some() {
            tracing::warn!(
                "a policy reload is still blocked reading its file; shutting down without it"
            );
        }
    })
}

/// What SIGHUP does.
fn reload(policy: &PolicyHandle, audit: Option<&AuditLog>) {
    match policy.current().source().map(std::path::Path::to_path_buf) {
        None => tracing::info!("SIGHUP received: no --policy file to reload"),
        Some(path) => {
            let old = policy.current();
            match policy.reload() {
                Ok(s) => {
                    tracing::info!(file = %path.display(), denied = s.denied, admins = s.admins, overrides = s.users, "SIGHUP received: policy reloaded");
                    let c = policy.current().changes_from(&old);
                    if c.denied_removed > 0 || c.admins_added > 0 {
                        // An emptied or truncated file lifts every ban: say so.
                        tracing::warn!(
                            left_denylist = c.denied_removed,
                            new_admins = c.admins_added,
                            "the reloaded policy gives identities more access than before"
                        );
                    }
                }
                Err(e) => tracing::error!(
                    "SIGHUP received: policy NOT reloaded, the previous policy stays in force: {e}"
                ),
            }
        }
    }
    if let Some(audit) = audit {
        // On a blocking thread (see `shutdown_signal`): wait for the writer.
        match tokio::runtime::Handle::current().block_on(audit.reopen()) {
            Ok(()) => tracing::info!(file = %audit.path().display(), "audit log reopened"),
            Err(e) => {
                tracing::error!(error = %e, "cannot reopen the audit log; still writing to the old file")
            }
        }
    }
}

//! `jobsd`: the job server daemon. Parses arguments, sets up logging, binds the
//! listener and runs [`jobs::server::serve`] until SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

/// The jobs daemon: runs programs for clients authenticated by mutual TLS 1.3.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Address to listen on. Port 0 picks a free port; the chosen address is
    /// printed as `listening on HOST:PORT`.
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// CA certificate (PEM) that client certificates must chain to.
    #[arg(long)]
    ca: PathBuf,
    /// The server's certificate (PEM), e.g. from `jobs-ca server`.
    #[arg(long)]
    cert: PathBuf,
    /// The server's private key (PEM).
    #[arg(long)]
    key: PathBuf,
    /// Directory for job output logs (created with mode 0700 if missing).
    #[arg(long, default_value = "/var/lib/jobsd")]
    state_dir: PathBuf,
    /// Seconds between SIGTERM and SIGKILL when a job is stopped (0-60).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=60))]
    grace_secs: u64,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("jobsd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn run(args: Args) -> anyhow::Result<()> {
    jobs::exec::protect_daemon_process().context("cannot mark jobsd non-dumpable")?;
    let pem = jobs::tls::PemFiles {
        ca: args.ca,
        cert: args.cert,
        key: args.key,
    };
    let tls = pem
        .server_config()
        .context("cannot load the TLS configuration")?;
    // Everything that can fail is checked before the "listening on" line, so
    // that a script waiting for it knows the daemon is really serving.
    let state = jobs::server::StateDir::open(&args.state_dir)?;
    let mut config = jobs::server::ServerConfig::new(tls, state);
    config.jobs.grace = Duration::from_secs(args.grace_secs);
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
    jobs::server::serve(listener, config, shutdown_signal()?)
        .await
        .context("server failed")?;
    Ok(())
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

/// Resolves on the first SIGTERM or SIGINT.
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}

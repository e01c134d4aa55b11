//! The daemon: gRPC over mutual TLS 1.3 on a listener the caller provides.
//!
//! This module owns the network side: the accept loop and TLS handshakes
//! (`accept.rs`), the tonic service that only translates between messages and
//! library calls (`service.rs`), the single error-to-status mapping
//! (`status.rs`), per-identity stream caps (`limits.rs`), the order of
//! admission, access check and audit line for every RPC (`service.rs`), and
//! the shutdown order ([`serve`]), the swappable TLS settings and their CRL
//! (`revocation.rs`), and what happens to an identity's connections, streams
//! and jobs when it is revoked or denylisted while they run (`enforce.rs`). It must not decide access itself: that is
//! [`crate::policy::Gate::admit`] and [`crate::job::Jobs::authorize`].

mod accept;
mod convert;
mod enforce;
mod limits;
mod paging;
mod peer;
mod revocation;
mod service;
mod state;
mod status;

pub use enforce::{CLOSE_DELAY, DAEMON_SUBJECT, OnRevoke};
pub use revocation::{CrlSummary, TlsHandle, log_reload};
pub use state::StateDir;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::AuditLog;
use crate::exec::LocalExecutor;
use crate::job::{Executor, Jobs, JobsConfig, OpenError};
use crate::policy::{Gate, HandshakeLimiter, PolicyHandle};
use crate::proto::job_service_server::JobServiceServer;

/// Default cap on open Output and Stream calls per identity, across all its
/// connections. Each open stream costs the daemon one 64 KiB read buffer.
pub const DEFAULT_MAX_STREAMS_PER_IDENTITY: usize = 256;

/// HTTP/2 streams one connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS,
/// RFC 9113 §6.5.2). Above the per-identity stream cap, so that a client
/// multiplexing many follows on one connection gets RESOURCE_EXHAUSTED from
/// the cap instead of streams that wait silently for a free slot.
pub const MAX_CONCURRENT_STREAMS_PER_CONNECTION: u32 = 1024;

/// Interval of the server's HTTP/2 PINGs on idle connections. With
/// [`KEEPALIVE_TIMEOUT`], a half-open connection (peer vanished) is closed
/// within 80 s and its streams are freed. The daemon sets no minimum ping
/// interval for clients, so client keepalives never trigger GOAWAY.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);
/// How long a PING may go unanswered before the connection is closed.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// How long open connections get to finish after every job is final during
/// shutdown, before they are closed. Open streams have ended by then, so
/// this only lets unary calls in flight finish.
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(2);

/// Verified connections waiting for the HTTP/2 server to take them; the
/// server takes them as fast as they come, so this only smooths bursts.
const VERIFIED_CONNECTION_QUEUE: usize = 64;

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The state directory could not be created, locked or used.
    #[error("cannot use the state directory {}", path.display())]
    StateDir {
        /// The directory.
        path: std::path::PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Another process (a second jobsd) holds the state directory's lock.
    #[error("the state directory {} is in use by another jobsd", path.display())]
    StateDirInUse {
        /// The directory.
        path: std::path::PathBuf,
    },
    /// The job store (`jobs.db` in the state directory) cannot be opened or
    /// read: not a jobs database, written by a newer jobsd, unreadable.
    #[error("cannot use the job store")]
    Store(#[from] crate::store::StoreError),
    /// The HTTP/2 server failed.
    #[error("gRPC server failed")]
    Transport(#[source] tonic::transport::Error),
    /// A thread of the daemon's own could not be started.
    #[error("cannot start {what}")]
    Thread {
        /// Which one.
        what: &'static str,
        /// The OS error (EAGAIN at the process's thread limit).
        #[source]
        source: std::io::Error,
    },
}

/// Everything [`serve`] needs besides the listener.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// TLS settings, normally from [`crate::tls::PemFiles::server_config`]
    /// (fixed) or [`TlsHandle::with_crl`] (with a CRL, reloadable; keep a
    /// clone to reload it while the server runs).
    pub tls: TlsHandle,
    /// What happens to the running jobs of an identity that is revoked or
    /// denylisted while they run. Default: [`OnRevoke::Stop`].
    pub on_revoke: OnRevoke,
    /// The locked state directory; job output lives in its `output/`.
    pub state: Arc<StateDir>,
    /// The job engine's settings.
    pub jobs: JobsConfig,
    /// Where jobs run. Default: [`LocalExecutor::uncontained`]; `jobsd` uses
    /// [`LocalExecutor::contained`] when it runs as root.
    pub executor: Arc<dyn Executor>,
    /// The policy in force (denylist, admins, rates, quotas). Keep a clone to
    /// reload it while the server runs. Default: [`Policy::default`], which
    /// restricts nothing beyond authentication.
    ///
    /// [`Policy::default`]: crate::policy::Policy
    pub policy: PolicyHandle,
    /// Where each access decision is recorded, one JSON line each. Default:
    /// none (decisions go to the debug log only).
    pub audit: Option<Arc<AuditLog>>,
    /// Cap on open Output/Stream calls per identity.
    pub max_streams_per_identity: usize,
    /// Deadline for the whole TLS handshake, from TCP accept: the ClientHello,
    /// the server's answer and the client's certificate. Also the longest a
    /// connection counts as pending (see `max_pending_connections`). Default
    /// 10 s: a real handshake takes milliseconds plus two round trips.
    pub handshake_timeout: Duration,
    /// Deadline for the peer's ClientHello, from TCP accept (never later than
    /// `handshake_timeout`). Default 5 s: a real client sends its ClientHello
    /// as soon as it has connected, so only silent sockets (scanners, peers
    /// holding slots) run into it, and they are closed twice as soon as by the
    /// handshake deadline.
    pub client_hello_timeout: Duration,
    /// Most pending connections (accepted, handshake not yet verified) over
    /// all peers. Below it every connection waits its turn; at it, sources
    /// share the slots fairly (a source with fewer takes the busiest one's
    /// newest slot, one holding its share is closed at once; see the
    /// `accept` module). Default 1024: each may buffer up to 64 KiB of
    /// ClientHello, so about 64 MiB in all, and holds a descriptor, so the
    /// daemon's descriptor limit must be well above this value. Values below
    /// 1 count as 1.
    pub max_pending_connections: usize,
    /// Most handshakes computing the server's half (its RSA-4096 signature,
    /// a few milliseconds of CPU) at once, each on a blocking thread. Waiting
    /// for a peer holds no permit, so idle or stalled peers cannot use them
    /// up; the cap keeps a burst of new connections from taking every core
    /// from established streams. Default twice the available parallelism (at
    /// least 2). Values below 1 count as 1.
    pub max_handshakes: usize,
}

impl ServerConfig {
    /// Defaults for everything but TLS and the state directory: 5 s stop grace
    /// period, [`DEFAULT_MAX_STREAMS_PER_IDENTITY`], 10 s handshake deadline,
    /// 5 s ClientHello deadline, 1024 pending connections shared fairly between
    /// sources, and twice the available parallelism (at least 2) in
    /// concurrent handshake signatures. Each field's doc says why.
    pub fn new(tls: Arc<rustls::ServerConfig>, state: StateDir) -> Self {
        Self {
            tls: TlsHandle::fixed(tls),
            on_revoke: OnRevoke::Stop,
            jobs: JobsConfig::new(state.path().join(state::OUTPUT_DIR)),
            executor: Arc::new(LocalExecutor::uncontained()),
            policy: PolicyHandle::default(),
            audit: None,
            max_streams_per_identity: DEFAULT_MAX_STREAMS_PER_IDENTITY,
            handshake_timeout: Duration::from_secs(10),
            client_hello_timeout: accept::DEFAULT_CLIENT_HELLO_TIMEOUT,
            max_pending_connections: accept::DEFAULT_MAX_PENDING_CONNECTIONS,
            max_handshakes: accept::default_max_handshakes(),
            state: Arc::new(state),
        }
    }
}

/// Serves the job API on `listener` until `shutdown` resolves, then shuts down.
///
/// Bind the listener first (tests bind `127.0.0.1:0` and read the port) and
/// pass it in; `serve` never binds.
///
/// # Start
/// Reads the state directory's job store and lists every job an
/// earlier daemon recorded (see [`Jobs::open`]: jobs it left running are
/// marked lost and what is left of them is killed) before it serves.
///
/// # Shutdown order
/// 1. `shutdown` resolves: the listener is closed and handshakes in progress
///    are abandoned; open Output and Stream calls end with UNAVAILABLE (the
///    client may ask again after a restart: records and output are kept);
///    starts get UNAVAILABLE. Unary calls on open connections keep working.
/// 2. Every running job is stopped (SIGTERM, the grace period, SIGKILL),
///    its output drained and flushed, and its final state recorded in the
///    store.
/// 3. Connections are told (HTTP/2 GOAWAY) to start no new calls and get
///    [`SHUTDOWN_DRAIN`] to finish; any still open are closed.
/// 4. Every task the server started has ended; `serve` returns.
///
/// So `serve` returns within the grace period (at most
/// [`crate::job::MAX_GRACE`]) + [`crate::job::DRAIN_TIMEOUT`] +
/// [`SHUTDOWN_DRAIN`] + the time the store takes to record the final states
/// (milliseconds on a healthy disk) after `shutdown` resolves: 9 s with the
/// default 5 s grace period.
///
/// # Errors
/// [`ServerError::StateDir`] if the output directory cannot be created;
/// [`ServerError::Store`] if the job store cannot be read;
/// [`ServerError::Transport`] if the HTTP/2 server fails.
///
/// # Cancel safety
/// Not cancel safe: dropping the future skips the orderly stop of jobs (their
/// processes are still killed and reaped as their supervisors are dropped with
/// the runtime). Resolve `shutdown` instead.
pub async fn serve(
    listener: TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let store = config.state.store().clone();
    let ids = config.state.record_ids()?;
    let jobs = Arc::new(
        Jobs::open(config.executor.clone(), config.jobs.clone(), store, ids).map_err(
            |e| match e {
                OpenError::OutputDir { path, source } => ServerError::StateDir { path, source },
                OpenError::Store(e) => ServerError::Store(e),
                OpenError::OutputThread(source) => ServerError::Thread {
                    what: "the jobs' output thread",
                    source,
                },
            },
        )?,
    );
    let tracker = TaskTracker::new();
    let cancel = CancellationToken::new();
    let (conns_tx, conns_rx) = mpsc::channel(VERIFIED_CONNECTION_QUEUE);
    let connections = Arc::new(enforce::Connections::default());
    tracker.spawn(revocation::watch_crl_file(
        config.tls.clone(),
        cancel.clone(),
    ));
    tracker.spawn(
        enforce::Enforcer {
            jobs: jobs.clone(),
            conns: connections.clone(),
            policy: config.policy.clone(),
            tls: config.tls.clone(),
            audit: config.audit.clone(),
            on_revoke: config.on_revoke,
            tracker: tracker.clone(),
            cancel: cancel.clone(),
        }
        .run(),
    );
    tracker.spawn(
        accept::AcceptLoop {
            listener,
            tls: config.tls.clone(),
            connections,
            conns: conns_tx,
            client_hello_timeout: config.client_hello_timeout,
            handshake_timeout: config.handshake_timeout,
            pending: accept::Pending::new(config.max_pending_connections),
            signing: Arc::new(Semaphore::new(config.max_handshakes.max(1))),
            policy: config.policy.clone(),
            handshakes: HandshakeLimiter::new(),
            tracker: tracker.clone(),
            cancel: cancel.clone(),
        }
        .run(),
    );
    let service = service::Service {
        jobs: jobs.clone(),
        streams: limits::StreamLimits::new(config.max_streams_per_identity),
        gate: Arc::new(Gate::new(config.policy.clone())),
        audit: config.audit.clone(),
        tls: config.tls.clone(),
    };
    let stop_serving = CancellationToken::new();
    let server = tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS_PER_CONNECTION)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .add_service(JobServiceServer::new(service))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::ReceiverStream::new(conns_rx),
            stop_serving.clone().cancelled_owned(),
        );
    tokio::pin!(server);

    // Serve until asked to stop (or the server fails on its own).
    let early = tokio::select! {
        r = &mut server => Some(r),
        _ = shutdown => None,
    };
    tracing::info!("shutting down");
    // 1. No new connections; no new jobs.
    cancel.cancel();
    let result = match early {
        Some(r) => {
            jobs.shutdown().await;
            r
        }
        None => {
            // 2. Stop every job while the server keeps serving; 3. then GOAWAY
            // and a bounded drain.
            let stop_then_drain = async {
                jobs.shutdown().await;
                stop_serving.cancel();
                tokio::time::sleep(SHUTDOWN_DRAIN).await;
            };
            tokio::select! {
                r = &mut server => {
                    // The server ended on its own; the jobs still stop.
                    jobs.shutdown().await;
                    r
                }
                _ = stop_then_drain => {
                    tracing::warn!("connections still open after the shutdown drain; closing them");
                    Ok(())
                }
            }
        }
    };
    // 4. Every task ended.
    tracker.close();
    tracker.wait().await;
    tracing::info!("shut down");
    result.map_err(ServerError::Transport)
}

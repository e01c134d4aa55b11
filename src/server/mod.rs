//! The daemon: gRPC over mutual TLS 1.3 on a listener the caller provides.
//!
//! This module owns the network side: the accept loop and TLS handshakes
//! (`accept.rs`), the tonic service that only translates between messages and
//! library calls (`service.rs`), the single error-to-status mapping
//! (`status.rs`), per-identity stream caps (`limits.rs`), and the shutdown
//! order ([`serve`]). It must not decide access itself: that is
//! [`crate::job::Jobs::authorize`].

mod accept;
mod limits;
mod service;
mod status;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::exec::LocalExecutor;
use crate::job::{Jobs, JobsConfig};
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
/// shutdown, before they are closed.
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The state directory could not be prepared.
    #[error("cannot prepare the state directory")]
    StateDir(#[source] std::io::Error),
    /// The HTTP/2 server failed.
    #[error("gRPC server failed")]
    Transport(#[source] tonic::transport::Error),
}

/// Everything [`serve`] needs besides the listener.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// TLS settings, normally from [`crate::tls::PemFiles::server_config`].
    pub tls: Arc<rustls::ServerConfig>,
    /// The job engine's settings.
    pub jobs: JobsConfig,
    /// Cap on open Output/Stream calls per identity.
    pub max_streams_per_identity: usize,
    /// Deadline for a TLS handshake, from TCP accept.
    pub handshake_timeout: Duration,
    /// Most TLS handshakes in progress at once. An RSA-4096 handshake costs the
    /// server a few milliseconds of CPU; the cap keeps a burst of new
    /// connections from starving established streams.
    pub max_handshakes: usize,
}

impl ServerConfig {
    /// Defaults for everything but TLS and the state directory: 5 s stop grace
    /// period, [`DEFAULT_MAX_STREAMS_PER_IDENTITY`], 10 s handshake deadline,
    /// 64 concurrent handshakes.
    pub fn new(tls: Arc<rustls::ServerConfig>, state_dir: impl Into<std::path::PathBuf>) -> Self {
        Self {
            tls,
            jobs: JobsConfig {
                output_dir: state_dir.into().join("output"),
                grace: crate::job::DEFAULT_GRACE,
            },
            max_streams_per_identity: DEFAULT_MAX_STREAMS_PER_IDENTITY,
            handshake_timeout: Duration::from_secs(10),
            max_handshakes: 64,
        }
    }
}

/// Serves the job API on `listener` until `shutdown` resolves, then shuts down.
///
/// Bind the listener first (tests bind `127.0.0.1:0` and read the port) and
/// pass it in; `serve` never binds.
///
/// # Shutdown order
/// 1. `shutdown` resolves: the listener is closed and handshakes in progress
///    are abandoned. Open connections keep working, but starts get
///    UNAVAILABLE.
/// 2. Every running job is stopped (SIGTERM, the grace period, SIGKILL) and
///    becomes final. Open Stream calls deliver the rest of the output and the
///    final status, and end; status and output stay readable meanwhile.
/// 3. Connections are told (HTTP/2 GOAWAY) to start no new calls and get
///    [`SHUTDOWN_DRAIN`] to finish; any still open are closed.
/// 4. Every task the server started has ended; `serve` returns.
///
/// # Errors
/// [`ServerError::StateDir`] if the state directory cannot be created;
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
    let jobs = Arc::new(
        Jobs::new(Arc::new(LocalExecutor::new()), config.jobs.clone())
            .map_err(ServerError::StateDir)?,
    );
    let tracker = TaskTracker::new();
    let cancel = CancellationToken::new();
    let (conns_tx, conns_rx) = mpsc::channel(config.max_handshakes.max(1));
    tracker.spawn(
        accept::AcceptLoop {
            listener,
            acceptor: TlsAcceptor::from(config.tls.clone()),
            conns: conns_tx,
            handshake_timeout: config.handshake_timeout,
            handshakes: Arc::new(Semaphore::new(config.max_handshakes.max(1))),
            tracker: tracker.clone(),
            cancel: cancel.clone(),
        }
        .run(),
    );
    let service = service::Service {
        jobs: jobs.clone(),
        streams: limits::StreamLimits::new(config.max_streams_per_identity),
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

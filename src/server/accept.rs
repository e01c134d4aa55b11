//! Accepting TCP connections and completing the TLS handshake.
//!
//! Each handshake runs in its own tracked task with a deadline, and at most
//! [`super::ServerConfig::max_handshakes`] run at once, so slow or hostile
//! peers cannot hold the accept loop or use unbounded memory. The verified
//! client certificate becomes the connection's [`Caller`] here, once; request
//! handlers read it from the request's extensions.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::server::Connected;

use crate::auth::{Caller, Identity};

/// What the service knows about the peer of a connection.
#[derive(Clone, Debug)]
pub(crate) struct ConnInfo {
    /// The peer's address.
    pub remote: SocketAddr,
    /// The peer's verified identity.
    pub caller: Caller,
}

/// A TLS connection whose client certificate has been verified.
pub(crate) struct VerifiedConn {
    stream: TlsStream<TcpStream>,
    info: ConnInfo,
}

impl Connected for VerifiedConn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for VerifiedConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for VerifiedConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

pub(crate) struct AcceptLoop {
    pub listener: TcpListener,
    pub acceptor: TlsAcceptor,
    pub conns: mpsc::Sender<io::Result<VerifiedConn>>,
    pub handshake_timeout: Duration,
    pub handshakes: Arc<Semaphore>,
    pub tracker: TaskTracker,
    pub cancel: CancellationToken,
}

impl AcceptLoop {
    /// Accepts until cancelled, then drops the listener.
    pub(crate) async fn run(self) {
        loop {
            let accepted = tokio::select! {
                _ = self.cancel.cancelled() => return,
                a = self.listener.accept() => a,
            };
            let (tcp, remote) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::select! {
                        _ = self.cancel.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            };
            let permit = tokio::select! {
                _ = self.cancel.cancelled() => return,
                p = self.handshakes.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            let acceptor = self.acceptor.clone();
            let conns = self.conns.clone();
            let timeout = self.handshake_timeout;
            let cancel = self.cancel.clone();
            self.tracker.spawn(async move {
                let _permit = permit;
                let _ = tcp.set_nodelay(true);
                let result = tokio::select! {
                    _ = cancel.cancelled() => return,
                    r = tokio::time::timeout(timeout, handshake(&acceptor, tcp, remote)) => r,
                };
                match result {
                    Ok(Ok(conn)) => {
                        tracing::debug!(%remote, caller = %conn.info.caller.identity(), "connection verified");
                        tokio::select! {
                            _ = cancel.cancelled() => {}
                            _ = conns.send(Ok(conn)) => {}
                        }
                    }
                    Ok(Err(e)) => tracing::info!(%remote, error = %e, "TLS handshake refused"),
                    Err(_) => tracing::info!(%remote, "TLS handshake timed out"),
                }
            });
        }
    }
}

async fn handshake(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    remote: SocketAddr,
) -> io::Result<VerifiedConn> {
    let stream = acceptor.accept(tcp).await?;
    // The verifier requires a client certificate, so a completed handshake
    // always has one; a missing one is refused all the same.
    let leaf = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| io::Error::new(io::ErrorKind::PermissionDenied, "no client certificate"))?;
    let identity = Identity::from_certificate_der(leaf)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok(VerifiedConn {
        stream,
        info: ConnInfo {
            remote,
            caller: Caller::from_verified(identity),
        },
    })
}

//! Accepting TCP connections and completing the TLS handshake.
//!
//! The accept loop never waits on anything but the listener: it accepts, and
//! either hands the connection to its own tracked task at once or, when a
//! pending-connection cap is full, closes it at once. No peer can make it
//! wait, so one client's handshake never queues behind another's socket.
//!
//! A connection is *pending* from TCP accept until its handshake is verified
//! or abandoned. Each pending connection costs a descriptor, a task and
//! rustls's buffer for a ClientHello (at most 64 KiB, the largest handshake
//! message rustls accepts), and none of that is tied to an identity yet, so
//! pending connections are capped:
//! - [`ServerConfig::max_pending_connections`] (default
//!   [`DEFAULT_MAX_PENDING_CONNECTIONS`], 1024) over all peers, which bounds
//!   ClientHello buffers at about 64 MiB and pending descriptors at 1024
//!   (the daemon's descriptor limit must be well above that, or accept fails
//!   with EMFILE before the cap is reached);
//! - [`ServerConfig::max_pending_per_ip`] (default
//!   [`DEFAULT_MAX_PENDING_PER_IP`], 128) per source address, so one host
//!   cannot take the whole global cap. IPv6 peers count per /64, the block a
//!   single host is usually given; IPv4-mapped IPv6 addresses count as the
//!   IPv4 address. On loopback every client shares 127.0.0.1, which is why
//!   the default is generous.
//!
//! A connection over either cap is closed without reading from it and logged
//! at debug level with its address (an attacker sets the rate of these, so
//! they must not flood the log at the default level).
//!
//! The handshake then runs in two phases with different costs:
//! 1. **ClientHello.** The task reads the ClientHello with
//!    [`LazyConfigAcceptor`]. This costs the server nothing but waiting, so it
//!    holds no CPU permit, only its pending slot, and has its own short
//!    deadline: [`ServerConfig::client_hello_timeout`] (default
//!    [`DEFAULT_CLIENT_HELLO_TIMEOUT`], 5 s) from TCP accept. A real client
//!    sends its ClientHello right after connecting; a socket that stays silent
//!    (a scanner, a half-open connection, an attacker holding slots) is closed
//!    at that deadline.
//! 2. **The rest.** Answering the ClientHello computes the server's RSA-4096
//!    signature (CertificateVerify), several milliseconds of CPU, all of it
//!    inside the synchronous [`StartHandshake::into_stream`]. That call runs
//!    on a blocking thread while holding one of
//!    [`ServerConfig::max_handshakes`] permits (default twice the available
//!    parallelism), so a burst of handshakes neither blocks the runtime's
//!    workers, which serve established streams, nor runs more signatures at
//!    once than the machine has use for. The permit is released as soon as the
//!    server's flight is built: waiting for the client's answer costs no CPU,
//!    so a client that sends a ClientHello and then stalls holds no permit.
//!    Verifying the client's certificate chain and signature (public-key
//!    operations, far cheaper than signing) runs on the runtime.
//!    Both phases together end at [`ServerConfig::handshake_timeout`] (10 s)
//!    from TCP accept, which is also the longest a connection stays pending.
//!
//! The verified client certificate becomes the connection's [`Caller`] here,
//! once; request handlers read it from the request's extensions. Every task
//! ends when the server is cancelled, except that a signature already running
//! on a blocking thread finishes first (milliseconds; the tracker waits).
//!
//! [`ServerConfig::max_pending_connections`]: super::ServerConfig::max_pending_connections
//! [`ServerConfig::max_pending_per_ip`]: super::ServerConfig::max_pending_per_ip
//! [`ServerConfig::client_hello_timeout`]: super::ServerConfig::client_hello_timeout
//! [`ServerConfig::max_handshakes`]: super::ServerConfig::max_handshakes
//! [`ServerConfig::handshake_timeout`]: super::ServerConfig::handshake_timeout

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tokio_rustls::{LazyConfigAcceptor, StartHandshake};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::server::Connected;

use super::enforce::{Connections, Registration};
use super::revocation::TlsHandle;
use crate::auth::{Caller, Identity};
use crate::policy::{HandshakeLimiter, PolicyHandle, source_of};

/// Default deadline for a peer's ClientHello, from TCP accept. A real client
/// sends it in its first packet after connecting, so 5 s covers any link a
/// client can work over, while a silent socket is dropped twice as fast as
/// by the 10 s handshake deadline.
pub(crate) const DEFAULT_CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Default cap on pending (accepted, not yet verified) connections over all
/// peers. At most 64 KiB of buffered ClientHello each, so about 64 MiB in
/// all, and one descriptor each: the daemon needs a descriptor limit well
/// above 1024 (systemd's default soft limit for services is exactly 1024).
pub(crate) const DEFAULT_MAX_PENDING_CONNECTIONS: usize = 1024;

/// Default cap on pending connections from one source address (IPv6: one
/// /64). An eighth of [`DEFAULT_MAX_PENDING_CONNECTIONS`], so a single host
/// cannot fill the global cap; generous because every client on loopback,
/// or behind one NAT, shares an address, and a burst of real clients
/// connecting at once must not be refused.
pub(crate) const DEFAULT_MAX_PENDING_PER_IP: usize = 128;

/// Default cap on handshakes computing the server's signature at once: twice
/// the available parallelism (at least 2). A signature keeps one core busy
/// for a few milliseconds; the headroom over one per core covers permit
/// holders whose blocking thread is still being started or scheduled, so a
/// burst of handshakes can use every core but never queues far beyond them.
pub(crate) fn default_max_handshakes() -> usize {
    std::thread::available_parallelism()
        .map_or(1, NonZeroUsize::get)
        .saturating_mul(2)
        .max(2)
}

/// What the service knows about the peer of a connection.
#[derive(Clone, Debug)]
pub(crate) struct ConnInfo {
    /// The peer's address.
    pub remote: SocketAddr,
    /// The peer's verified identity.
    pub caller: Caller,
    /// The subject of the peer's certificate (RFC 4514), for the audit log.
    pub subject: Arc<str>,
}

/// A TLS connection whose client certificate has been verified.
///
/// It is registered under its identity in [`Connections`] while it lives;
/// once its token is cancelled (the identity was revoked or denylisted),
/// every read and write fails, so the HTTP/2 server drops the connection
/// and everything it holds.
pub(crate) struct VerifiedConn {
    stream: TlsStream<TcpStream>,
    info: ConnInfo,
    closed: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    registration: Registration,
}

impl VerifiedConn {
    /// An error once the connection was told to close; registers the waker
    /// otherwise, so that a cancel wakes the connection's task. The HTTP/2
    /// server always has a read pending on a live connection, so reads
    /// register it and writes only check the flag (an atomic load).
    fn check_open(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.closed.as_mut().poll(cx) {
            Poll::Ready(()) => Err(closed_error()),
            Poll::Pending => Ok(()),
        }
    }

    /// As [`VerifiedConn::check_open`], without registering a waker.
    fn check_open_now(&self) -> io::Result<()> {
        if self.registration.token().is_cancelled() {
            return Err(closed_error());
        }
        Ok(())
    }
}

fn closed_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "connection closed: its identity was revoked or denylisted",
    )
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
        if let Err(e) = self.check_open(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for VerifiedConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Err(e) = self.check_open_now() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Err(e) = self.check_open_now() {
            return Poll::Ready(Err(e));
        }
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

/// Why a connection never became a [`VerifiedConn`]; for the log only, the
/// peer is told nothing beyond what rustls sends.
#[derive(Debug, thiserror::Error)]
enum HandshakeError {
    /// No complete ClientHello by the ClientHello deadline.
    #[error("no ClientHello before the deadline")]
    HelloTimeout,
    /// The handshake was not complete by the handshake deadline.
    #[error("TLS handshake not finished before the deadline")]
    Timeout,
    /// rustls refused the handshake (and sent the peer an alert where it
    /// could), the peer closed the connection, or the certificate it presented
    /// gives no identity.
    #[error("TLS handshake refused")]
    Refused(#[source] io::Error),
}

/// The pending-connection caps and the current counts.
///
/// Cloning shares the counts.
#[derive(Clone, Debug)]
pub(crate) struct Pending(Arc<PendingInner>);

#[derive(Debug)]
struct PendingInner {
    max_total: usize,
    max_per_source: usize,
    counts: Mutex<PendingCounts>,
}

#[derive(Debug, Default)]
struct PendingCounts {
    total: usize,
    /// Only sources with at least one pending connection, so the map is no
    /// larger than the global cap.
    per_source: HashMap<IpAddr, usize>,
}

/// Which cap refused a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OverCap {
    Total,
    Source,
}

impl Pending {
    /// Caps of `max_total` pending connections in all and `max_per_source`
    /// per source address (see [`source_of`]); values below 1 count as 1.
    pub(crate) fn new(max_total: usize, max_per_source: usize) -> Self {
        Self(Arc::new(PendingInner {
            max_total: max_total.max(1),
            max_per_source: max_per_source.max(1),
            counts: Mutex::new(PendingCounts::default()),
        }))
    }

    /// Counts a new connection from `peer`, or says which cap is full. The
    /// slot is freed when the returned guard is dropped.
    fn admit(&self, peer: IpAddr) -> Result<PendingSlot, OverCap> {
        let source = source_of(peer);
        let mut counts = self.lock();
        if counts.total >= self.0.max_total {
            return Err(OverCap::Total);
        }
        let from_source = counts.per_source.entry(source).or_insert(0);
        if *from_source >= self.0.max_per_source {
            return Err(OverCap::Source);
        }
        *from_source += 1;
        counts.total += 1;
        Ok(PendingSlot {
            pending: self.clone(),
            source,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PendingCounts> {
        // Nothing panics while the lock is held, and the counts are updated
        // together, so a poisoned lock still guards consistent counts.
        self.0.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One pending connection's place in the counts of [`Pending`].
#[derive(Debug)]
struct PendingSlot {
    pending: Pending,
    source: IpAddr,
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut counts = self.pending.lock();
        counts.total -= 1;
        if let Some(n) = counts.per_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                counts.per_source.remove(&self.source);
            }
        }
    }
}

/// The accept loop and what every handshake task needs.
pub(crate) struct AcceptLoop {
    pub listener: TcpListener,
    /// The server's TLS settings, read anew for every handshake.
    pub tls: TlsHandle,
    /// Live verified connections per identity.
    pub connections: Arc<Connections>,
    /// Verified connections go to the HTTP/2 server here.
    pub conns: mpsc::Sender<io::Result<VerifiedConn>>,
    /// Deadline for the ClientHello, from TCP accept.
    pub client_hello_timeout: Duration,
    /// Deadline for the whole handshake, from TCP accept.
    pub handshake_timeout: Duration,
    /// Caps on pending connections.
    pub pending: Pending,
    /// Permits to compute the server's half of a handshake.
    pub signing: Arc<Semaphore>,
    /// The policy in force, for its handshake rate per source address.
    pub policy: PolicyHandle,
    /// Handshake token buckets per source address.
    pub handshakes: HandshakeLimiter,
    pub tracker: TaskTracker,
    pub cancel: CancellationToken,
}

impl AcceptLoop {
    /// Accepts until cancelled, then drops the listener. Never waits on
    /// anything but the listener (and, after an accept error, a short pause).
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
            let accepted_at = Instant::now();
            let slot = match self.pending.admit(remote.ip()) {
                Ok(slot) => slot,
                Err(cap) => {
                    let cap = match cap {
                        OverCap::Total => "max_pending_connections",
                        OverCap::Source => "max_pending_per_ip",
                    };
                    tracing::debug!(%remote, cap, "too many pending connections; closed");
                    drop(tcp);
                    continue;
                }
            };
            // Each connection costs a token of its source before the server
            // spends anything on it, so one source cannot flood the signing
            // permits that every client shares.
            if let Err(wait) = self
                .handshakes
                .check(remote.ip(), self.policy.current().handshakes())
            {
                tracing::debug!(%remote, retry_ms = wait.as_millis() as u64, "handshake rate of this source exceeded; closed");
                drop((slot, tcp));
                continue;
            }
            let deadline = accepted_at + self.handshake_timeout;
            let handshake = Handshake {
                tls: self.tls.clone(),
                connections: self.connections.clone(),
                signing: self.signing.clone(),
                tracker: self.tracker.clone(),
                hello_deadline: deadline.min(accepted_at + self.client_hello_timeout),
                deadline,
            };
            let conns = self.conns.clone();
            let cancel = self.cancel.clone();
            self.tracker.spawn(async move {
                let _ = tcp.set_nodelay(true);
                let result = tokio::select! {
                    _ = cancel.cancelled() => return,
                    r = handshake.run(tcp, remote) => r,
                };
                // No longer pending, whatever the outcome.
                drop(slot);
                match result {
                    Ok(conn) => {
                        tracing::debug!(%remote, caller = %conn.info.caller.identity(), "connection verified");
                        tokio::select! {
                            _ = cancel.cancelled() => {}
                            _ = conns.send(Ok(conn)) => {}
                        }
                    }
                    Err(e @ HandshakeError::HelloTimeout) => tracing::debug!(%remote, "{e}"),
                    Err(e @ HandshakeError::Timeout) => tracing::info!(%remote, "{e}"),
                    Err(HandshakeError::Refused(error)) => {
                        tracing::info!(%remote, %error, "TLS handshake refused")
                    }
                }
            });
        }
    }
}

/// One connection's handshake: its deadlines and the shared resources.
struct Handshake {
    tls: TlsHandle,
    connections: Arc<Connections>,
    signing: Arc<Semaphore>,
    tracker: TaskTracker,
    /// End of phase 1 (never after `deadline`).
    hello_deadline: Instant,
    /// End of the whole handshake.
    deadline: Instant,
}

impl Handshake {
    async fn run(self, tcp: TcpStream, remote: SocketAddr) -> Result<VerifiedConn, HandshakeError> {
        // Phase 1: wait for the ClientHello; no permit held.
        let hello = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
        let start = tokio::time::timeout_at(self.hello_deadline, hello)
            .await
            .map_err(|_| HandshakeError::HelloTimeout)?
            .map_err(HandshakeError::Refused)?;
        // Phase 2: the server's flight, then the client's answer.
        let deadline = self.deadline;
        tokio::time::timeout_at(deadline, self.finish(start, remote))
            .await
            .map_err(|_| HandshakeError::Timeout)?
            .map_err(HandshakeError::Refused)
    }

    async fn finish(
        self,
        start: StartHandshake<TcpStream>,
        remote: SocketAddr,
    ) -> io::Result<VerifiedConn> {
        let permit = self
            .signing
            .acquire_owned()
            .await
            // The semaphore is never closed.
            .map_err(io::Error::other)?;
        // The config in force now: a CRL reload affects every handshake
        // that reaches this point after it.
        let tls = self.tls.config();
        // `into_stream` answers the ClientHello: it builds the server's whole
        // flight, signature included, before returning. The permit moves into
        // the blocking task so that it is held exactly as long as that work,
        // even if this task gives up (deadline, shutdown) meanwhile.
        let accept = self
            .tracker
            .spawn_blocking(move || {
                let _permit = permit;
                start.into_stream(tls)
            })
            .await
            .map_err(io::Error::other)?;
        let stream = accept.await?;
        // The verifier requires a client certificate, so a completed handshake
        // always has one; a missing one is refused all the same.
        let leaf = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::PermissionDenied, "no client certificate")
            })?;
        let (identity, subject) = Identity::with_subject_from_certificate_der(leaf)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let serial = x509_parser::parse_x509_certificate(leaf)
            .map(|(_, cert)| cert.raw_serial().to_vec())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        // Verified under the CRL of when the handshake began; one loaded
        // since may revoke it.
        if !self.tls.admit(identity, &serial) {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "client certificate revoked by a CRL loaded during the handshake",
            ));
        }
        let registration = self.connections.register(identity);
        Ok(VerifiedConn {
            stream,
            closed: Box::pin(registration.token().clone().cancelled_owned()),
            registration,
            info: ConnInfo {
                remote,
                caller: Caller::from_verified(identity),
                subject: subject.into(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn counts(p: &Pending) -> (usize, usize) {
        let c = p.lock();
        (c.total, c.per_source.len())
    }

    #[test]
    fn the_per_source_cap_refuses_only_that_source() {
        // Scenario: one address fills its cap of 2; a third connection from it
        // is refused, another address still gets in.
        let p = Pending::new(10, 2);
        let a1 = p.admit(ip("192.0.2.1")).unwrap();
        let _a2 = p.admit(ip("192.0.2.1")).unwrap();
        assert_eq!(p.admit(ip("192.0.2.1")).unwrap_err(), OverCap::Source);
        let _b = p.admit(ip("192.0.2.2")).unwrap();
        assert_eq!(counts(&p), (3, 2));
        // A freed slot is usable again.
        drop(a1);
        let _a3 = p.admit(ip("192.0.2.1")).unwrap();
        assert_eq!(counts(&p), (3, 2));
    }

    #[test]
    fn the_global_cap_refuses_every_source() {
        // Scenario: two addresses fill the global cap of 2; a third address is
        // refused until a slot is freed.
        let p = Pending::new(2, 10);
        let a = p.admit(ip("192.0.2.1")).unwrap();
        let _b = p.admit(ip("192.0.2.2")).unwrap();
        assert_eq!(p.admit(ip("192.0.2.3")).unwrap_err(), OverCap::Total);
        drop(a);
        let _c = p.admit(ip("192.0.2.3")).unwrap();
    }

    #[test]
    fn freed_slots_leave_no_entries() {
        // Scenario: every slot is dropped; the map of sources is empty again,
        // so it cannot grow with the number of distinct peers over time.
        let p = Pending::new(10, 10);
        let slots: Vec<_> = ["192.0.2.1", "192.0.2.2", "2001:db8::1"]
            .into_iter()
            .map(|a| p.admit(ip(a)).unwrap())
            .collect();
        assert_eq!(counts(&p), (3, 3));
        drop(slots);
        assert_eq!(counts(&p), (0, 0));
    }

    #[test]
    fn ipv6_peers_count_per_64_and_mapped_ipv4_as_ipv4() {
        // Scenario: two addresses in one /64 share a count; another /64 does
        // not; ::ffff:192.0.2.1 is the same source as 192.0.2.1.
        let p = Pending::new(10, 1);
        let _a = p.admit(ip("2001:db8:0:1::1")).unwrap();
        assert_eq!(
            p.admit(ip("2001:db8:0:1:ffff::2")).unwrap_err(),
            OverCap::Source
        );
        let _b = p.admit(ip("2001:db8:0:2::1")).unwrap();
        let _c = p.admit(ip("192.0.2.1")).unwrap();
        assert_eq!(
            p.admit(ip("::ffff:192.0.2.1")).unwrap_err(),
            OverCap::Source
        );
        assert_eq!(source_of(ip("2001:db8:0:1:aaaa::1")), ip("2001:db8:0:1::"));
    }
}

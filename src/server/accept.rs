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
//! pending connections are capped at [`ServerConfig::max_pending_connections`]
//! (default [`DEFAULT_MAX_PENDING_CONNECTIONS`], 1024), which bounds
//! ClientHello buffers at about 64 MiB and pending descriptors at 1024 (the
//! daemon's descriptor limit must be well above that, or accept fails with
//! EMFILE before the cap is reached).
//!
//! Below the cap every connection is taken and waits its turn: a burst of
//! clients from one place (hundreds of `jobs` processes started at once on
//! one host) is queued and served at the pace of the signing permits below,
//! not refused. At the cap the slots are shared out between *sources*
//! ([`peer::Source`]: a remote address or IPv6 /64; on this machine, the uid
//! owning the peer's socket, so that each local user and each identity's
//! jobs count apart although all of them are 127.0.0.1): a connection from a
//! source holding at least two slots fewer than the busiest one takes the
//! newest slot of the busiest, whose connection is closed; a connection from
//! a source that already holds its share is closed at once. One source alone
//! may use every slot, and no source can keep another out.
//!
//! A connection closed for want of a slot is closed without reading from it
//! and logged at debug level (an attacker sets the rate of these, so they
//! must not flood the log at the default level); the CLI retries such a
//! close with a jittered backoff.
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
//! [`ServerConfig::client_hello_timeout`]: super::ServerConfig::client_hello_timeout
//! [`ServerConfig::max_handshakes`]: super::ServerConfig::max_handshakes
//! [`ServerConfig::handshake_timeout`]: super::ServerConfig::handshake_timeout

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
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
use super::peer::{self, Source};
use super::revocation::TlsHandle;
use crate::auth::{Caller, Identity};
use crate::policy::{HandshakeLimiter, PolicyHandle};

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

/// The pending-connection cap and who holds the slots.
///
/// Cloning shares the counts.
#[derive(Clone, Debug)]
pub(crate) struct Pending(Arc<PendingInner>);

#[derive(Debug)]
struct PendingInner {
    max_total: usize,
    counts: Mutex<PendingCounts>,
}

#[derive(Debug, Default)]
struct PendingCounts {
    total: usize,
    /// For tie-free "newest": every slot gets the next number.
    next: u64,
    /// Only sources with at least one pending connection, so the map is no
    /// larger than the cap. Each source's slots by number, with the token
    /// that tells the slot's task to give the slot up.
    per_source: HashMap<Source, BTreeMap<u64, CancellationToken>>,
}

/// What became of a new connection.
#[derive(Debug)]
enum Admitted {
    /// A free slot.
    Free(PendingSlot),
    /// Every slot was taken: this one was given up by the newest pending
    /// connection of the source that held the most (`from`), which is now
    /// told to close.
    Displaced(PendingSlot, Source),
}

impl Pending {
    /// A cap of `max_total` pending connections (values below 1 count as 1).
    pub(crate) fn new(max_total: usize) -> Self {
        Self(Arc::new(PendingInner {
            max_total: max_total.max(1),
            counts: Mutex::new(PendingCounts::default()),
        }))
    }

    /// Counts a new connection from `source`. With a slot free it takes it.
    /// With every slot taken, the slots are shared out fairly: if some source
    /// holds at least two more than `source` does, the newest connection of
    /// the one holding the most gives its slot to this one (and is closed);
    /// otherwise `source` already holds its share and `None` is returned (the
    /// new connection is closed). So one source alone may use every slot,
    /// yet any other source still gets in, up to an equal share. The slot is
    /// freed when the returned guard is dropped.
    fn admit(&self, source: Source) -> Option<Admitted> {
        let mut counts = self.lock();
        let mut displaced = None;
        if counts.total >= self.0.max_total {
            let mine = counts.per_source.get(&source).map_or(0, BTreeMap::len);
            let (busiest, most) = counts
                .per_source
                .iter()
                .map(|(source, slots)| (*source, slots.len()))
                .max_by_key(|&(_, held)| held)?;
            if most < mine + 2 {
                return None;
            }
            let slots = counts.per_source.get_mut(&busiest)?;
            let (_, newest) = slots.pop_last()?;
            if slots.is_empty() {
                counts.per_source.remove(&busiest);
            }
            newest.cancel();
            counts.total -= 1;
            displaced = Some(busiest);
        }
        let number = counts.next;
        counts.next += 1;
        let evicted = CancellationToken::new();
        counts
            .per_source
            .entry(source)
            .or_default()
            .insert(number, evicted.clone());
        counts.total += 1;
        let slot = PendingSlot {
            pending: self.clone(),
            source,
            number,
            evicted,
        };
        Some(match displaced {
            None => Admitted::Free(slot),
            Some(from) => Admitted::Displaced(slot, from),
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
    source: Source,
    number: u64,
    /// Cancelled when another source's connection took this slot.
    evicted: CancellationToken,
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut counts = self.pending.lock();
        // A displaced slot was already taken out of the counts.
        let Some(slots) = counts.per_source.get_mut(&self.source) else {
            return;
        };
        if slots.remove(&self.number).is_none() {
            return;
        }
        if slots.is_empty() {
            counts.per_source.remove(&self.source);
        }
        counts.total -= 1;
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
    /// The policy in force, for its handshake rate per source.
    pub policy: PolicyHandle,
    /// Handshake token buckets per source.
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
            let source = match tcp.local_addr() {
                Ok(local) => peer::source(remote, local),
                Err(_) => Source::from(remote.ip()),
            };
            let slot = match self.pending.admit(source) {
                Some(Admitted::Free(slot)) => slot,
                Some(Admitted::Displaced(slot, from)) => {
                    tracing::debug!(%remote, %source, displaced = %from, "every pending slot taken; the busiest source's newest connection gave up its slot");
                    slot
                }
                None => {
                    tracing::debug!(%remote, %source, "every pending slot taken, this source holding its share; closed");
                    drop(tcp);
                    continue;
                }
            };
            // Each connection costs a token of its source before the server
            // spends anything on it, so one source cannot flood the signing
            // permits that every client shares.
            if let Err(wait) = self
                .handshakes
                .check(source, self.policy.current().handshakes())
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
                let evicted = slot.evicted.clone();
                let result = tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = evicted.cancelled() => {
                        tracing::debug!(%remote, "pending slot given to another source; closed");
                        return;
                    }
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
    use std::net::IpAddr;

    fn from(n: u8) -> Source {
        Source::Address(IpAddr::from([192, 0, 2, n]))
    }

    fn counts(p: &Pending) -> (usize, Vec<(Source, usize)>) {
        let c = p.lock();
        let mut per: Vec<_> = c.per_source.iter().map(|(s, v)| (*s, v.len())).collect();
        per.sort_by_key(|(s, _)| format!("{s}"));
        (c.total, per)
    }

    fn free(a: Option<Admitted>) -> PendingSlot {
        match a {
            Some(Admitted::Free(slot)) => slot,
            other => panic!("expected a free slot, got {other:?}"),
        }
    }

    #[test]
    fn one_source_alone_may_take_every_slot() {
        // Scenario: a burst of 5 from one address under a cap of 5 is all
        // taken; the 6th from it is refused; a freed slot is usable again.
        let p = Pending::new(5);
        let mut slots: Vec<_> = (0..5).map(|_| free(p.admit(from(1)))).collect();
        assert!(p.admit(from(1)).is_none());
        assert_eq!(counts(&p), (5, vec![(from(1), 5)]));
        slots.pop();
        slots.push(free(p.admit(from(1))));
        assert_eq!(counts(&p), (5, vec![(from(1), 5)]));
    }

    #[test]
    fn at_the_cap_another_source_displaces_the_busiest_sources_newest() {
        // Scenario: source 1 holds all 4 slots; source 2 takes the newest
        // of them (slot 1's last), then a second; a third from source 2 would
        // leave it ahead of source 1 and is refused, as is one more from 1.
        let p = Pending::new(4);
        let ones: Vec<_> = (0..4).map(|_| free(p.admit(from(1)))).collect();
        let take = |p: &Pending| match p.admit(from(2)) {
            Some(Admitted::Displaced(slot, busiest)) => {
                assert_eq!(busiest, from(1));
                slot
            }
            other => panic!("expected to displace source 1, got {other:?}"),
        };
        let two_a = take(&p);
        assert!(ones[3].evicted.is_cancelled(), "the newest gave way");
        assert!(ones[..3].iter().all(|s| !s.evicted.is_cancelled()));
        let _two_b = take(&p);
        assert!(ones[2].evicted.is_cancelled());
        assert_eq!(counts(&p), (4, vec![(from(1), 2), (from(2), 2)]));
        assert!(p.admit(from(2)).is_none());
        assert!(p.admit(from(1)).is_none());
        // A third source still gets in: source 1 and 2 hold 2 each, and one
        // of them (either is the busiest) gives way.
        let Some(Admitted::Displaced(three, gave)) = p.admit(from(3)) else {
            panic!("source 3 was kept out");
        };
        let mut expected = vec![(from(1), 2), (from(2), 2), (from(3), 1)];
        expected.iter_mut().find(|(s, _)| *s == gave).unwrap().1 = 1;
        assert_eq!(counts(&p), (4, expected));
        // Every guard, displaced or not, frees its slot once: nothing is
        // left and nothing underflows.
        drop((ones, two_a, _two_b, three));
        assert_eq!(counts(&p), (0, vec![]));
    }

    #[test]
    fn freed_slots_leave_no_entries() {
        // Scenario: every slot is dropped; the map of sources is empty again,
        // so it cannot grow with the number of distinct peers over time.
        let p = Pending::new(10);
        let slots: Vec<_> = [from(1), from(2), Source::LocalUser(1000)]
            .into_iter()
            .map(|s| free(p.admit(s)))
            .collect();
        assert_eq!(counts(&p).0, 3);
        drop(slots);
        assert_eq!(counts(&p), (0, vec![]));
    }
}

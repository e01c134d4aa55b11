//! TCP + TLS connection set-up for the client, and what its failures mean.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Why a connection could not be set up, with the likely cause spelled out.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// TCP failed: nothing listening, unreachable, or refused.
    #[error("TCP connection failed; is jobsd running and listening on that address?")]
    Tcp(#[source] io::Error),
    /// The server's certificate was not accepted by us.
    #[error("the server's certificate is not trusted: {0}{hint}", hint = server_hint(.0))]
    ServerCertificate(rustls::Error),
    /// The server refused our certificate (it sent this TLS alert).
    #[error(
        "the server refused our client certificate (TLS alert: {alert}); it may be expired or not yet valid, issued by a CA the server does not trust, or not made for client authentication (use a certificate from `jobs-ca client`)"
    )]
    ClientCertificateRefused {
        /// The alert, as rustls names it.
        alert: String,
    },
    /// The server refused our certificate because its CA revoked it (TLS
    /// alert `certificate_revoked`).
    #[error(
        "the server refused this certificate: it was revoked (ask your CA admin for a new one)"
    )]
    ClientCertificateRevoked,
    /// Any other TLS failure.
    #[error("TLS handshake failed: {0}")]
    Tls(rustls::Error),
    /// The server closed the connection before the TLS handshake finished,
    /// without an alert: it sheds connections it cannot take (every pending
    /// slot taken, this source holding its share), or it is not jobsd.
    /// [`crate::client::Client::connect`] retries it with jittered backoff.
    #[error(
        "the server closed the connection before the TLS handshake finished; it may be overloaded (too many connections in progress), or it is not jobsd; retry later"
    )]
    ClosedBeforeHandshake,
    /// The server closed the connection right after the handshake without a
    /// TLS alert; most often it refused our certificate.
    #[error(
        "the server closed the connection during the handshake; it most likely refused our client certificate"
    )]
    ClosedDuringHandshake,
    /// Something else (the detail is in the source).
    #[error("connection failed: {0}")]
    Other(String),
}

fn server_hint(e: &rustls::Error) -> &'static str {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => {
            " (it was not issued by the CA given with --ca / JOBS_CA)"
        }
        rustls::Error::InvalidCertificate(
            C::NotValidForName | C::NotValidForNameContext { .. },
        ) => {
            " (dial a name or address listed in its subject alternative names, or reissue it with `jobs-ca server --san`)"
        }
        _ => "",
    }
}

impl ConnectError {
    /// Classifies an I/O error from the TCP connect or the TLS handshake.
    fn from_io(e: io::Error) -> Self {
        if let Some(tls) = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Self::from_rustls(tls.clone());
        }
        match e.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe => Self::ClosedDuringHandshake,
            _ => Self::Other(e.to_string()),
        }
    }

    fn from_rustls(e: rustls::Error) -> Self {
        match e {
            rustls::Error::InvalidCertificate(_) => Self::ServerCertificate(e),
            rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRevoked) => {
                Self::ClientCertificateRevoked
            }
            rustls::Error::AlertReceived(alert) => Self::ClientCertificateRefused {
                alert: format!("{alert:?}"),
            },
            other => Self::Tls(other),
        }
    }

    /// Finds our own error in the source chain of a tonic transport error.
    pub(super) fn from_transport(e: &tonic::transport::Error) -> Self {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = source {
            if let Some(ours) = err.downcast_ref::<ConnectErrorBox>() {
                return ours.0.clone_shallow();
            }
            source = err.source();
        }
        Self::Other(chain(e))
    }

    fn clone_shallow(&self) -> Self {
        match self {
            Self::Tcp(e) => Self::Tcp(io::Error::new(e.kind(), e.to_string())),
            Self::ServerCertificate(e) => Self::ServerCertificate(e.clone()),
            Self::ClientCertificateRefused { alert } => Self::ClientCertificateRefused {
                alert: alert.clone(),
            },
            Self::ClientCertificateRevoked => Self::ClientCertificateRevoked,
            Self::Tls(e) => Self::Tls(e.clone()),
            Self::ClosedBeforeHandshake => Self::ClosedBeforeHandshake,
            Self::ClosedDuringHandshake => Self::ClosedDuringHandshake,
            Self::Other(s) => Self::Other(s.clone()),
        }
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(err) = source {
        s.push_str(": ");
        s.push_str(&err.to_string());
        source = err.source();
    }
    s
}

/// Carries a [`ConnectError`] through tonic's boxed errors.
#[derive(Debug)]
pub(super) struct ConnectErrorBox(ConnectError);

impl fmt::Display for ConnectErrorBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for ConnectErrorBox {}

/// Host and port to dial, and the name the server's certificate must carry.
#[derive(Clone, Debug)]
pub(super) struct Target {
    host: String,
    port: u16,
    name: ServerName<'static>,
}

impl Target {
    /// Parses `HOST:PORT` or `[IPv6]:PORT`.
    pub(super) fn parse(addr: &str) -> Option<Self> {
        let (host, port) = addr.rsplit_once(':')?;
        let port: u16 = port.parse().ok()?;
        let host = match host.strip_prefix('[') {
            Some(h) => h.strip_suffix(']')?,
            None if host.contains(':') => return None,
            None => host,
        };
        if host.is_empty() {
            return None;
        }
        let name = match host.parse::<IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => ServerName::try_from(host.to_owned()).ok()?,
        };
        Some(Self {
            host: host.to_owned(),
            port,
            name,
        })
    }
}

/// What one connection attempt resolves to.
type Connecting =
    Pin<Box<dyn Future<Output = Result<TokioIo<Handshaken>, ConnectErrorBox>> + Send>>;

/// The connector tonic calls for each (re)connection.
pub(super) fn connector(
    target: Target,
    tls: Arc<rustls::ClientConfig>,
) -> impl tower::Service<
    http::Uri,
    Response = TokioIo<Handshaken>,
    Error = ConnectErrorBox,
    Future = Connecting,
> + Clone
+ Send
+ 'static {
    let connector = TlsConnector::from(tls);
    tower::service_fn(move |_: http::Uri| {
        let target = target.clone();
        let connector = connector.clone();
        Box::pin(async move {
            connect(&target, &connector)
                .await
                .map(TokioIo::new)
                .map_err(ConnectErrorBox)
        }) as Connecting
    })
}

async fn connect(target: &Target, connector: &TlsConnector) -> Result<Handshaken, ConnectError> {
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(ConnectError::Tcp)?;
    let _ = tcp.set_nodelay(true);
    // Our side of a TLS 1.3 handshake does not wait for the server's verdict
    // on our certificate, so a close here is the server shedding load.
    let mut tls = connector
        .connect(target.name.clone(), tcp)
        .await
        .map_err(|e| match ConnectError::from_io(e) {
            ConnectError::ClosedDuringHandshake => ConnectError::ClosedBeforeHandshake,
            other => other,
        })?;
    // In TLS 1.3 the server checks our certificate only after our side of the
    // handshake is done, so a refusal arrives as an alert on the first read.
    // The server speaks first in HTTP/2 (its SETTINGS frame), so read that
    // much now and replay it to the HTTP/2 layer.
    let mut first = vec![0u8; 256];
    let n = tls.read(&mut first).await.map_err(ConnectError::from_io)?;
    if n == 0 {
        return Err(ConnectError::ClosedDuringHandshake);
    }
    first.truncate(n);
    // Replay those bytes ahead of the rest of the stream.
    let (read, write) = tokio::io::split(tls);
    Ok(tokio::io::join(
        std::io::Cursor::new(first).chain(read),
        write,
    ))
}

/// A TLS stream whose first bytes were read during set-up and are replayed.
pub(super) type Handshaken = tokio::io::Join<
    tokio::io::Chain<std::io::Cursor<Vec<u8>>, tokio::io::ReadHalf<TlsStream<TcpStream>>>,
    tokio::io::WriteHalf<TlsStream<TcpStream>>,
>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_into_host_port_and_server_name() {
        let t = Target::parse("127.0.0.1:50051").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 50051));
        assert!(matches!(t.name, ServerName::IpAddress(_)));
        let t = Target::parse("[::1]:7").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 7));
        let t = Target::parse("localhost:1").unwrap();
        assert!(matches!(t.name, ServerName::DnsName(_)));
        for bad in [
            "localhost",
            ":1",
            "::1:7",
            "host:notaport",
            "host:70000",
            "[::1:7",
        ] {
            assert!(Target::parse(bad).is_none(), "{bad} parsed");
        }
    }

    #[test]
    fn only_the_certificate_revoked_alert_says_revoked() {
        // Scenario: a revoked client gets one clear line; an expired one
        // still gets the general explanation.
        let revoked = ConnectError::from_rustls(rustls::Error::AlertReceived(
            rustls::AlertDescription::CertificateRevoked,
        ));
        assert_eq!(
            revoked.to_string(),
            "the server refused this certificate: it was revoked (ask your CA admin for a new one)"
        );
        assert!(matches!(
            revoked.clone_shallow(),
            ConnectError::ClientCertificateRevoked
        ));
        let expired = ConnectError::from_rustls(rustls::Error::AlertReceived(
            rustls::AlertDescription::CertificateExpired,
        ));
        assert!(
            matches!(&expired, ConnectError::ClientCertificateRefused { alert } if alert == "CertificateExpired"),
            "{expired:?}"
        );
    }
}

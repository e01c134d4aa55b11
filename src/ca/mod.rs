//! The project's own small certificate authority.
//!
//! This module owns issuing the three kinds of certificate a `jobs` deployment
//! needs, all with [`rcgen`] and all RSA-4096:
//! - the CA itself ([`CertAuthority::generate`]): self-signed, `cA:TRUE`,
//!   path length 0, so it can sign leaves but no intermediate CA;
//! - the server certificate ([`CertAuthority::issue_server`]): `serverAuth` only,
//!   valid for the given DNS names and IP addresses;
//! - user certificates ([`CertAuthority::issue_client`]): `clientAuth` only, the
//!   user's name in the common name. The daemon identifies a user by the SHA-256
//!   of the certificate's public key ([`crate::auth::Identity`]), never by that name.
//!
//! Users may keep their keys to themselves: [`request_files`] makes a key and
//! a PKCS#10 request on the user's machine ([`request`]), and
//! [`sign_request_file`] signs the request on the CA's, trusting nothing in
//! it but its public key and name. Testers get many identities at once from
//! [`write_clients`], which makes the keys in parallel.
//!
//! It also owns the layout of a CA directory (`ca.crt`, `ca.key`, `server.crt`,
//! `server.key`, `NAME.crt`, `NAME.key`, and the record `issued.json`; see
//! [`init_dir`], [`write_server`], [`write_clients`]): private keys are
//! created mode 0600, every file is written atomically, and nothing is
//! overwritten except a renewed certificate. The record ([`registry`]) keeps
//! one key to one name: re-signing a key for its name is a renewal that keeps
//! the identity, and a key cannot become a second identity.
//!
//! It must not verify certificates or decide who may do what (that is
//! [`crate::auth`] and the TLS layer), must not talk to the network, and must not
//! print: the `jobs-ca` binary decides what the operator sees.
//!
//! Revocation ([`revoke`], [`write_crl`]) marks every certificate of one
//! identity revoked in the record and writes a CRL signed by the CA
//! (`crl.pem`) for `jobsd --crl`. A revoked key never gets a certificate
//! again. The CA's own and the server's certificate are not revoked this way
//! (see [`CaError::RevokeRefused`]).

mod authority;
mod files;
mod fsio;
pub mod registry;
pub mod request;
mod revoke;

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::str::FromStr;

use time::{Duration, OffsetDateTime, UtcOffset};

use crate::auth::{AuthError, Identity};
pub use authority::{CertAuthority, IssuedCert, PrivateKeyPem, SignedCert};
use authority::{common_name, generate_key};
pub use files::{
    IssuedFiles, RequestFiles, SignedFiles, fingerprint_file, init_dir, issued, recover,
    request_files, sign_request_file, write_client, write_clients, write_server,
};
pub use fsio::{CA_CERT_FILE, CA_KEY_FILE, CRL_FILE, SERVER_CERT_FILE, SERVER_KEY_FILE};
use registry::CertKind;
use request::RequestError;
pub use revoke::{CrlInfo, DEFAULT_CRL_DAYS, MAX_CRL_DAYS, Revoked, revoke, write_crl};

/// How far before "now" every certificate's `notBefore` is set: 1 hour.
///
/// A certificate is checked against the verifying host's clock, which may run
/// behind the issuing host's. Without this margin a certificate issued a moment
/// ago is "not yet valid" on a peer whose clock is a few seconds or minutes slow.
pub const BACKDATE: Duration = Duration::hours(1);

/// The longest validity [`Validity::days`] accepts: 3650 days (about 10 years).
///
/// Long enough for a CA that is re-made rarely; anything longer is almost
/// certainly a typo. There is no revocation, so leaves should use far less
/// (`jobs-ca` defaults: 825 days for the server, 365 for users).
pub const MAX_DAYS: u32 = 3650;

/// The longest client name [`CertAuthority::issue_client`] accepts: 64
/// characters, the X.509 upper bound for a common name (RFC 5280 `ub-common-name`).
pub const MAX_CLIENT_NAME_LEN: usize = 64;

/// Errors from issuing certificates and from CA directory operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// [`Validity::days`] was asked for 0 days or more than [`MAX_DAYS`].
    #[error("validity must be between 1 and {max} days, got {days}")]
    InvalidDays {
        /// The number of days asked for.
        days: u32,
        /// [`MAX_DAYS`].
        max: u32,
    },
    /// A hand-built [`Validity`] ends before (or when) it starts.
    #[error("validity ends ({not_after}) before it starts ({not_before})")]
    EmptyValidity {
        /// The requested start.
        not_before: OffsetDateTime,
        /// The requested end.
        not_after: OffsetDateTime,
    },
    /// A leaf certificate would still be valid after the CA that signs it has
    /// expired. It would stop working when the CA does, so this is refused
    /// rather than issued with a misleading date.
    #[error(
        "the certificate would expire at {not_after}, after the CA itself ({ca_not_after}); \
         ask for fewer days or make a new CA"
    )]
    OutlivesCa {
        /// The requested end of the leaf's validity.
        not_after: OffsetDateTime,
        /// When the CA expires.
        ca_not_after: OffsetDateTime,
    },
    /// A client name is empty, too long, uses characters outside
    /// `[A-Za-z0-9._-]`, starts with `.` or `-`, or is reserved (`ca`, `server`).
    #[error("invalid client name {name:?}: {reason}")]
    InvalidClientName {
        /// The name as given.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// A subject alternative name is neither an IP address nor a valid DNS name
    /// (wildcards and a trailing dot are not accepted).
    #[error("invalid subject alternative name {name:?}: not an IP address or a valid DNS name")]
    InvalidSan {
        /// The name as given.
        name: String,
    },
    /// A server certificate was asked for with no subject alternative name; no
    /// client could ever match it.
    #[error("a server certificate needs at least one DNS name or IP address")]
    NoSans,
    /// The file to be written exists already (or is a dangling symlink).
    /// Nothing was overwritten.
    #[error("{} already exists; refusing to overwrite it", path.display())]
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
    },
    /// A file could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A file could not be created or written.
    #[error("cannot write {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The CA directory could not be created.
    #[error("cannot create directory {}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A file holds no PEM `CERTIFICATE` block.
    #[error("{} holds no PEM certificate", path.display())]
    BadPem {
        /// The file.
        path: PathBuf,
        /// What the PEM reader found wrong.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// A PEM certificate does not hold valid DER X.509.
    #[error("{} is not a valid X.509 certificate", path.display())]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: AuthError,
    },
    /// The CA certificate file holds a certificate that may not sign others
    /// (no `basicConstraints cA:TRUE`).
    #[error("{} is not a CA certificate (basicConstraints cA is not TRUE)", path.display())]
    NotACa {
        /// The file.
        path: PathBuf,
    },
    /// The CA key file is not a PEM RSA private key.
    #[error("{} is not a PEM RSA private key", path.display())]
    BadKey {
        /// The file.
        path: PathBuf,
        /// What rcgen found wrong.
        #[source]
        source: rcgen::Error,
    },
    /// The CA key file holds a key that does not belong to the CA certificate.
    #[error("{} does not hold the private key of {}", key.display(), cert.display())]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// The operating system's random number generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// RSA-4096 key generation failed.
    #[error("RSA-4096 key generation failed")]
    KeyGeneration(#[source] rcgen::Error),
    /// Building or signing the certificate failed.
    #[error("signing the certificate failed")]
    Sign(#[source] rcgen::Error),
    /// A certificate signing request was refused: malformed, a bad
    /// signature, a key that is not RSA of 4096-8192 bits, or no name.
    #[error("the request {} is refused", path.display())]
    Request {
        /// The request file.
        path: PathBuf,
        /// Why.
        #[source]
        source: RequestError,
    },
    /// A key given to make a request from is one the CA would refuse.
    #[error("this key cannot be used for a jobs certificate")]
    UnsuitableKey(#[source] RequestError),
    /// The key already has a certificate under another name (or is the CA's
    /// or a server's key): one key is one identity, so it cannot get a
    /// second name.
    #[error("{}", key_already_issued(identity, name, *kind))]
    KeyAlreadyIssued {
        /// The key's fingerprint.
        identity: Identity,
        /// The name it was issued under.
        name: String,
        /// What it was issued as.
        kind: CertKind,
    },
    /// The client name belongs to another key.
    #[error(
        "the name {name:?} already belongs to key {identity}; a new key would be a different identity under the same name, so choose another name (or renew the existing key)"
    )]
    NameTaken {
        /// The name asked for.
        name: String,
        /// The key that holds it.
        identity: Identity,
    },
    /// A certificate was asked to be written into the CA's copies directory
    /// (`issued/`), which only the CA writes.
    #[error("{} is in the CA's own copies directory; write the certificate elsewhere", path.display())]
    ReservedPath {
        /// The path asked for.
        path: PathBuf,
    },
    /// The certificate was written and handed out, but the record could not
    /// be marked: it stays pending, and the next `jobs-ca` run on the CA
    /// directory records it (once the cause, e.g. a full disk, is gone).
    #[error(
        "the certificate was written to {} but the CA's record could not be updated; \
         the next jobs-ca run on this CA directory records it",
        path.display()
    )]
    RecordPending {
        /// The certificate written.
        path: PathBuf,
        /// Why the record could not be written.
        #[source]
        source: Box<CaError>,
    },
    /// The same name was given twice in one batch.
    #[error("the name {name:?} is given more than once")]
    DuplicateName {
        /// The repeated name.
        name: String,
    },
    /// `jobs-ca revoke` was given a name, fingerprint or serial that is not
    /// in the CA's record. Nothing was written.
    #[error("no certificate in the CA's record has the name, fingerprint or serial {target:?}")]
    UnknownCertificate {
        /// What was given.
        target: String,
    },
    /// `jobs-ca revoke` was asked to revoke the CA's own or the server's
    /// certificate. A CRL cannot revoke the CA that signs it, and a revoked
    /// server key is replaced, not listed: make a new CA (or server
    /// certificate) instead. Nothing was written.
    #[error("{}", revoke_refused(name, *kind))]
    RevokeRefused {
        /// The record's name for it.
        name: String,
        /// What it is.
        kind: CertKind,
    },
    /// The key was revoked: it is compromised or withdrawn for good, so it
    /// gets no new certificate.
    #[error("key {identity} was revoked; it gets no new certificate (make a new key)")]
    KeyRevoked {
        /// The key's fingerprint.
        identity: Identity,
    },
    /// A CRL validity of 0 days or more than [`MAX_CRL_DAYS`].
    #[error("a CRL must be valid for 1 to {max} days, got {days}")]
    InvalidCrlDays {
        /// The number of days asked for.
        days: u32,
        /// [`MAX_CRL_DAYS`].
        max: u32,
    },
    /// The CA's record (`issued.json`) is malformed or of a newer format.
    /// Nothing is issued until it is fixed: without it, one key could
    /// become two identities.
    #[error("the CA's record {} is unreadable: {reason}", path.display())]
    Registry {
        /// The record file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

fn revoke_refused(name: &str, kind: CertKind) -> String {
    match kind {
        CertKind::Ca => format!(
            "{name:?} is the CA's own certificate; a CA cannot revoke itself (make a new CA and reissue every certificate)"
        ),
        CertKind::Server => format!(
            "{name:?} is the server's certificate; a CRL for clients is not the way to retire it: remove server.crt and server.key, issue a new one with `jobs-ca server`, and restart jobsd"
        ),
        CertKind::Client => format!("{name:?} cannot be revoked"),
    }
}

fn key_already_issued(identity: &Identity, name: &str, kind: CertKind) -> String {
    match kind {
        CertKind::Ca => format!("key {identity} is the CA's own key; it can never be a user's"),
        CertKind::Server => {
            format!("key {identity} is the server's key; it can never be a user's")
        }
        CertKind::Client => format!(
            "key {identity} was already issued as client {name:?}; one key is one identity, so it \
             cannot be issued under another name (renew it under {name:?}, or make a new key)"
        ),
    }
}

/// When a certificate is valid: from `not_before` to `not_after`, inclusive, UTC.
///
/// Build it with [`Validity::days`]. The fields are public so that tests can
/// make certificates that are expired or not yet valid; the issuing functions
/// refuse a period that ends before it starts ([`CaError::EmptyValidity`]).
/// X.509 stores whole seconds: sub-second parts are dropped when issuing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    /// The first instant the certificate is valid.
    pub not_before: OffsetDateTime,
    /// The last instant the certificate is valid.
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From `now - BACKDATE` to `now + days`, in whole seconds, UTC.
    ///
    /// `days` counts 24-hour days from now; the [`BACKDATE`] hour comes on top,
    /// so `not_after - not_before` is exactly `days * 24 h + 1 h`.
    ///
    /// # Errors
    /// [`CaError::InvalidDays`] if `days` is 0 or more than [`MAX_DAYS`].
    pub fn days(days: u32) -> Result<Self, CaError> {
        if days == 0 || days > MAX_DAYS {
            return Err(CaError::InvalidDays {
                days,
                max: MAX_DAYS,
            });
        }
        let now = whole_seconds(OffsetDateTime::now_utc());
        Ok(Self {
            not_before: now - BACKDATE,
            not_after: now + Duration::days(i64::from(days)),
        })
    }

    /// The same period in UTC and whole seconds, as it will be written; or
    /// [`CaError::EmptyValidity`] if it ends before it starts.
    fn normalized(self) -> Result<Self, CaError> {
        let not_before = whole_seconds(self.not_before.to_offset(UtcOffset::UTC));
        let not_after = whole_seconds(self.not_after.to_offset(UtcOffset::UTC));
        if not_after <= not_before {
            return Err(CaError::EmptyValidity {
                not_before,
                not_after,
            });
        }
        Ok(Self {
            not_before,
            not_after,
        })
    }
}

/// `t` without its sub-second part: X.509 times have one-second resolution.
fn whole_seconds(t: OffsetDateTime) -> OffsetDateTime {
    t - Duration::nanoseconds(i64::from(t.nanosecond()))
}

/// A subject alternative name of a server certificate: what clients may dial.
///
/// Parse one with [`FromStr`]: an IP literal (`127.0.0.1`, `::1`) becomes
/// [`San::Ip`], anything else must be a valid DNS name and becomes [`San::Dns`].
/// A hand-built `San::Dns` is validated again when issuing.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum San {
    /// A DNS name such as `localhost` or `jobs.example.com` (no wildcard, no
    /// trailing dot).
    Dns(String),
    /// An IPv4 or IPv6 address.
    Ip(IpAddr),
}

impl San {
    /// The rcgen form, validating a DNS name.
    fn to_rcgen(&self) -> Result<rcgen::SanType, CaError> {
        match self {
            Self::Ip(ip) => Ok(rcgen::SanType::IpAddress(*ip)),
            Self::Dns(name) => {
                validate_dns_name(name)?;
                let ia5 = rcgen::string::Ia5String::try_from(name.as_str())
                    .map_err(|_| CaError::InvalidSan { name: name.clone() })?;
                Ok(rcgen::SanType::DnsName(ia5))
            }
        }
    }
}

impl FromStr for San {
    type Err = CaError;

    /// # Errors
    /// [`CaError::InvalidSan`] if `s` is neither an IP address nor a valid DNS name.
    fn from_str(s: &str) -> Result<Self, CaError> {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Self::Ip(ip));
        }
        validate_dns_name(s)?;
        Ok(Self::Dns(s.to_owned()))
    }
}

impl fmt::Display for San {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dns(name) => write!(f, "DNS:{name}"),
            Self::Ip(ip) => write!(f, "IP:{ip}"),
        }
    }
}

/// Checks a DNS name with rustls' own rules (the ones a client applies when it
/// dials the name), and refuses a trailing dot, which RFC 5280 does not allow
/// in a certificate's `dNSName`.
fn validate_dns_name(name: &str) -> Result<(), CaError> {
    let valid = !name.ends_with('.')
        && name.parse::<IpAddr>().is_err()
        && rustls::pki_types::DnsName::try_from(name).is_ok();
    if valid {
        Ok(())
    } else {
        Err(CaError::InvalidSan {
            name: name.to_owned(),
        })
    }
}

/// The names a server certificate gets when none are given: `localhost`,
/// `127.0.0.1` and `::1`, enough for a daemon and its clients on one host.
pub fn default_server_sans() -> Vec<San> {
    vec![
        San::Dns("localhost".to_owned()),
        San::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        San::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)),
    ]
}

/// Checks a client name: 1..=[`MAX_CLIENT_NAME_LEN`] characters of
/// `[A-Za-z0-9._-]`, not starting with `.` or `-`, and not `ca` or `server` in
/// any case.
///
/// The name becomes the file names `NAME.crt` and `NAME.key`, so this keeps it
/// one plain path component: no `/`, no `..`, no hidden file, nothing a shell
/// or `jobs-ca` could read as an option, and no clash with the CA's or the
/// server's files (refused case-insensitively, for case-insensitive file systems).
fn validate_client_name(name: &str) -> Result<(), CaError> {
    let reason = if name.is_empty() {
        Some("must not be empty")
    } else if name.len() > MAX_CLIENT_NAME_LEN {
        Some("must be at most 64 characters")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        Some("may contain only ASCII letters, digits, '.', '_' and '-'")
    } else if name.starts_with('.') || name.starts_with('-') {
        Some("must not start with '.' or '-'")
    } else if name.eq_ignore_ascii_case("ca") || name.eq_ignore_ascii_case("server") {
        Some("'ca' and 'server' are reserved for the CA's and the server's own files")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(CaError::InvalidClientName {
            name: name.to_owned(),
            reason,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn san_parses_ip_literals_as_ip_and_names_as_dns() {
        assert_eq!(
            "127.0.0.1".parse::<San>().unwrap(),
            San::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST))
        );
        assert_eq!(
            "::1".parse::<San>().unwrap(),
            San::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST))
        );
        assert_eq!(
            "jobs.example.com".parse::<San>().unwrap(),
            San::Dns("jobs.example.com".to_owned())
        );
    }

    #[test]
    fn san_refuses_what_is_not_a_dns_name() {
        // Scenario: a typo or shell junk in --san must not end up in a certificate.
        for bad in [
            "",
            "*.example.com",
            "jobs.example.com.",
            "has space",
            "-leading.example",
            "a..b",
            "300.1.1.1",
            "héllo.example",
            "under/slash",
        ] {
            assert!(
                matches!(bad.parse::<San>(), Err(CaError::InvalidSan { ref name }) if name == bad),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn hand_built_dns_san_is_validated_when_issuing() {
        // Scenario: San::Dns is a public variant, so a bad name can bypass FromStr.
        assert!(matches!(
            San::Dns("bad name".to_owned()).to_rcgen(),
            Err(CaError::InvalidSan { .. })
        ));
    }

    #[test]
    fn client_names_follow_the_documented_rules() {
        for good in ["alice", "Bob_2", "a", "x.y-z", "CAt", &"n".repeat(64)] {
            assert!(validate_client_name(good).is_ok(), "{good:?} was refused");
        }
        for (bad, reason) in [
            ("", "must not be empty"),
            (&"n".repeat(65), "must be at most 64 characters"),
            (
                "a/b",
                "may contain only ASCII letters, digits, '.', '_' and '-'",
            ),
            ("..", "must not start with '.' or '-'"),
            (".hidden", "must not start with '.' or '-'"),
            ("-rf", "must not start with '.' or '-'"),
            (
                "ca",
                "'ca' and 'server' are reserved for the CA's and the server's own files",
            ),
            (
                "SERVER",
                "'ca' and 'server' are reserved for the CA's and the server's own files",
            ),
        ] {
            match validate_client_name(bad) {
                Err(CaError::InvalidClientName { name, reason: r }) => {
                    assert_eq!((name.as_str(), r), (bad, reason));
                }
                other => panic!("{bad:?}: expected InvalidClientName, got {other:?}"),
            }
        }
    }

    #[test]
    fn validity_days_is_bounded() {
        // Scenario: `--days 0` or an extra zero must be refused, not issued.
        for days in [0, MAX_DAYS + 1, u32::MAX] {
            assert!(matches!(
                Validity::days(days),
                Err(CaError::InvalidDays { days: d, max: MAX_DAYS }) if d == days
            ));
        }
        let v = Validity::days(MAX_DAYS).unwrap();
        assert_eq!(
            v.not_after - v.not_before,
            Duration::days(i64::from(MAX_DAYS)) + BACKDATE
        );
        assert_eq!(v.not_before.nanosecond(), 0);
    }

    #[test]
    fn reversed_validity_is_refused() {
        let v = Validity::days(1).unwrap();
        let reversed = Validity {
            not_before: v.not_after,
            not_after: v.not_before,
        };
        assert!(matches!(
            reversed.normalized(),
            Err(CaError::EmptyValidity { .. })
        ));
    }
}

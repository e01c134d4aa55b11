//! TLS 1.3 configuration for both ends of a connection, from PEM files.
//!
//! This module owns the rustls settings that make the transport secure by
//! default: TLS 1.3 only (RFC 8446), one crypto provider (aws-lc-rs), a client
//! certificate that chains to the configured CA and carries the clientAuth
//! extended key usage (RFC 5280 §4.2.1.12), the server verified against the same
//! CA and the name dialled, ALPN `h2`, and no session resumption.
//!
//! Resumption is off on both sides because a resumed TLS 1.3 session skips
//! certificate verification: a ticket issued while a certificate was valid would
//! let it keep connecting after it expired. Every connection therefore pays a
//! full handshake (~5-7 ms with RSA-4096 on loopback); connections are long-lived,
//! so this is rarely felt.
//!
//! It must not decide who may do what: it only proves which key the peer holds.

mod crl;

pub use crl::Crl;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// The largest certificate, chain or key file read: 1 MiB. An RSA-8192 key
/// in PEM is ~6 KiB and a chain of a few certificates a few KiB more.
pub const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// ALPN protocol id of HTTP/2 (RFC 7540 §3.1); gRPC runs over it.
const ALPN_H2: &[u8] = b"h2";

/// Errors while loading PEM files or building a TLS configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {what} file {}", path.display())]
    Read {
        /// Which file this is ("CA certificate", "certificate", "private key").
        what: &'static str,
        /// The path given.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A file holds no PEM block of the expected kind, or a malformed one.
    #[error("{what} file {} holds no valid PEM {kind}", path.display())]
    Pem {
        /// Which file this is.
        what: &'static str,
        /// The path given.
        path: PathBuf,
        /// The PEM block expected ("CERTIFICATE", "PRIVATE KEY").
        kind: &'static str,
    },
    /// The CA certificate could not be used as a trust anchor.
    #[error("CA certificate {} cannot be used as a trust anchor", path.display())]
    TrustAnchor {
        /// The path given.
        path: PathBuf,
        /// rustls's reason.
        #[source]
        source: rustls::Error,
    },
    /// rustls refused the certificate/key pair or the settings.
    #[error("certificate and key do not form a usable TLS identity: {0}")]
    Config(rustls::Error),
    /// This end's own certificate is one its peer is bound to refuse: not
    /// X.509 v3, a CA certificate, without the extended key usage for its
    /// role, expired, or not yet valid. Checked before any connection, since
    /// the peer would only send a generic TLS alert.
    #[error("{role} certificate {} {reason}", path.display())]
    Unsuitable {
        /// "server" or "client".
        role: &'static str,
        /// The path given.
        path: PathBuf,
        /// What is wrong, and what to do.
        reason: String,
    },
    /// The CRL given with `--crl` is unusable: it does not parse, was not
    /// issued or signed by the configured CA, or is past its `nextUpdate`.
    #[error("CRL file {} {reason}", path.display())]
    Crl {
        /// The path given.
        path: PathBuf,
        /// What is wrong, and what to do.
        reason: String,
    },
    /// The client-certificate verifier could not be built.
    #[error("cannot build the client certificate verifier")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
}

/// The three PEM files that make one end of a mutual-TLS connection.
#[derive(Clone, PartialEq, Eq)]
pub struct PemFiles {
    /// The CA certificate that peers must chain to.
    pub ca: PathBuf,
    /// This end's certificate (leaf first, then any intermediates).
    pub cert: PathBuf,
    /// This end's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl fmt::Debug for PemFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Paths only: never the key material.
        f.debug_struct("PemFiles")
            .field("ca", &self.ca)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish()
    }
}

/// PEM material already in memory: a CA certificate, a certificate chain and a
/// private key. `Debug` redacts the key.
#[derive(Clone)]
pub struct PemMaterial {
    /// CA certificate, PEM.
    pub ca: Vec<u8>,
    /// Certificate chain, PEM, leaf first.
    pub cert: Vec<u8>,
    /// Private key, PEM.
    pub key: Vec<u8>,
}

impl fmt::Debug for PemMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PemMaterial")
            .field("ca", &format_args!("{} bytes", self.ca.len()))
            .field("cert", &format_args!("{} bytes", self.cert.len()))
            .field("key", &"<redacted>")
            .finish()
    }
}

/// A parsed certificate chain and key, ready for rustls.
struct Parsed {
    roots: RootCertStore,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl PemFiles {
    /// Reads the three files.
    /// Each must be a regular file of at most [`MAX_PEM_BYTES`]; a FIFO or a
    /// device is refused, never waited on (see `bounded.rs`).
    ///
    /// # Errors
    /// [`TlsError::Read`] naming the file that could not be read.
    pub fn read(&self) -> Result<PemMaterial, TlsError> {
        let read = |what, path: &Path| {
            crate::bounded::read_bounded(path, MAX_PEM_BYTES).map_err(|e| TlsError::Read {
                what,
                path: path.to_owned(),
                source: e.into_io(),
            })
        };
        Ok(PemMaterial {
            ca: read("CA certificate", &self.ca)?,
            cert: read("certificate", &self.cert)?,
            key: read("private key", &self.key)?,
        })
    }

    fn parse(&self, pem: &PemMaterial, role: Role) -> Result<Parsed, TlsError> {
        let certs = |what, path: &Path, bytes: &[u8]| {
            let certs: Vec<_> = CertificateDer::pem_slice_iter(bytes)
                .collect::<Result<_, _>>()
                .map_err(|_| TlsError::Pem {
                    what,
                    path: path.to_owned(),
                    kind: "CERTIFICATE",
                })?;
            if certs.is_empty() {
                return Err(TlsError::Pem {
                    what,
                    path: path.to_owned(),
                    kind: "CERTIFICATE",
                });
            }
            Ok(certs)
        };
        let mut roots = RootCertStore::empty();
        for ca in certs("CA certificate", &self.ca, &pem.ca)? {
            roots.add(ca).map_err(|source| TlsError::TrustAnchor {
                path: self.ca.clone(),
                source,
            })?;
        }
        let chain = certs("certificate", &self.cert, &pem.cert)?;
        check_leaf(role, &self.cert, &chain[0])?;
        let key = PrivateKeyDer::from_pem_slice(&pem.key).map_err(|_| TlsError::Pem {
            what: "private key",
            path: self.key.clone(),
            kind: "PRIVATE KEY",
        })?;
        Ok(Parsed { roots, chain, key })
    }

    /// The first CA certificate of `pem.ca`, DER: what a CRL must be signed by.
    ///
    /// # Errors
    /// [`TlsError::Pem`] if the CA file holds no certificate.
    pub fn ca_certificate(&self, pem: &PemMaterial) -> Result<CertificateDer<'static>, TlsError> {
        CertificateDer::pem_slice_iter(&pem.ca)
            .next()
            .and_then(Result::ok)
            .ok_or_else(|| TlsError::Pem {
                what: "CA certificate",
                path: self.ca.clone(),
                kind: "CERTIFICATE",
            })
    }

    /// The server side: TLS 1.3 only, a client certificate chaining to `ca` with
    /// clientAuth required, ALPN `h2`, no session tickets or session cache.
    ///
    /// # Errors
    /// [`TlsError`] naming the file that is unreadable or malformed, or rustls's
    /// reason when the key does not match the certificate.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        self.server_config_from(&self.read()?)
    }

    /// [`PemFiles::server_config`] from material already read; `self` only names
    /// the files in errors.
    ///
    /// # Errors
    /// As [`PemFiles::server_config`].
    pub fn server_config_from(&self, pem: &PemMaterial) -> Result<Arc<ServerConfig>, TlsError> {
        self.server_config_with_crl(pem, None)
    }

    /// [`PemFiles::server_config_from`] that also refuses every client
    /// certificate `crl` revokes (TLS alert `certificate_revoked`). Only the
    /// client's own certificate is checked: the CA is the trust anchor, and
    /// its path length 0 allows no intermediates.
    ///
    /// # Errors
    /// As [`PemFiles::server_config`]; [`TlsError::Verifier`] if rustls
    /// cannot parse the CRL.
    pub fn server_config_with_crl(
        &self,
        pem: &PemMaterial,
        crl: Option<&Crl>,
    ) -> Result<Arc<ServerConfig>, TlsError> {
        let Parsed { roots, chain, key } = self.parse(pem, Role::Server)?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut builder = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        );
        if let Some(crl) = crl {
            builder = builder
                .with_crls([crl.der()])
                .only_check_end_entity_revocation();
        }
        let verifier = builder.build().map_err(TlsError::Verifier)?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(TlsError::Config)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(TlsError::Config)?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        // No resumption: see the module doc.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(Arc::new(config))
    }

    /// The client side: TLS 1.3 only, the server verified against `ca` and the
    /// name dialled, this end's certificate offered, ALPN `h2`, no resumption.
    ///
    /// # Errors
    /// As [`PemFiles::server_config`].
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        self.client_config_from(&self.read()?)
    }

    /// [`PemFiles::client_config`] from material already read.
    ///
    /// # Errors
    /// As [`PemFiles::server_config`].
    pub fn client_config_from(&self, pem: &PemMaterial) -> Result<Arc<ClientConfig>, TlsError> {
        let Parsed { roots, chain, key } = self.parse(pem, Role::Client)?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(TlsError::Config)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(TlsError::Config)?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        config.resumption = rustls::client::Resumption::disabled();
        Ok(Arc::new(config))
    }
}

/// Which end a certificate is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Server,
    Client,
}

/// Refuses a leaf certificate its peer is bound to refuse, saying what is
/// wrong (RFC 5280: v3 with extensions, basicConstraints §4.2.1.9, extended
/// key usage §4.2.1.12, validity §4.1.2.5).
fn check_leaf(role: Role, path: &Path, der: &CertificateDer<'_>) -> Result<(), TlsError> {
    let (name, purpose, command) = match role {
        Role::Server => ("server", "serverAuth", "`jobs-ca server`"),
        Role::Client => (
            "client",
            "clientAuth",
            "`jobs-ca sign` (on a request from `jobs-ca request NAME`) or `jobs-ca client NAME`",
        ),
    };
    let unsuitable = |reason: String| TlsError::Unsuitable {
        role: name,
        path: path.to_owned(),
        reason,
    };
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| unsuitable(format!("is not a valid X.509 certificate ({e})")))?;
    if cert.version() != x509_parser::x509::X509Version::V3 {
        return Err(unsuitable(format!(
            "is an X.509 v{} certificate; TLS needs v3 with extensions: issue one with {command}",
            cert.version().0 + 1
        )));
    }
    if cert.is_ca() {
        return Err(unsuitable(format!(
            "is a CA certificate (basicConstraints cA:TRUE), not an end-entity certificate: issue one with {command}"
        )));
    }
    if let Ok(Some(eku)) = cert.extended_key_usage() {
        let ok = eku.value.any
            || match role {
                Role::Server => eku.value.server_auth,
                Role::Client => eku.value.client_auth,
            };
        if !ok {
            return Err(unsuitable(format!(
                "is not made for {name} authentication (its extended key usage lacks {purpose}): issue one with {command}"
            )));
        }
    }
    let now = time::OffsetDateTime::now_utc();
    let not_before = cert.validity().not_before.to_datetime();
    let not_after = cert.validity().not_after.to_datetime();
    if now > not_after {
        let renew = match role {
            Role::Server => "make a new one with `jobs-ca server`",
            Role::Client => {
                "ask your CA admin for a new one (jobs-ca request NAME --renew, then jobs-ca sign)"
            }
        };
        return Err(unsuitable(format!(
            "expired {} ago (not valid after {}); {renew}",
            human(now - not_after),
            rfc3339(not_after)
        )));
    }
    if now < not_before {
        return Err(unsuitable(format!(
            "is not valid yet: it starts in {} (not valid before {}); check the clocks of this machine and the CA's",
            human(not_before - now),
            rfc3339(not_before)
        )));
    }
    Ok(())
}

/// `t` as RFC 3339 (`2030-06-15T12:00:00Z` for UTC).
pub(crate) fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// "3 days", "5 hours", "12 minutes", "40 seconds": the largest whole unit,
/// rounded down; negative durations read as "0 seconds".
pub(crate) fn human(d: time::Duration) -> String {
    let s = d.whole_seconds().max(0);
    let (n, unit) = if s >= 86_400 {
        (s / 86_400, "day")
    } else if s >= 3_600 {
        (s / 3_600, "hour")
    } else if s >= 60 {
        (s / 60, "minute")
    } else {
        (s, "second")
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(human(time::Duration::seconds(1)), "1 second");
        assert_eq!(human(time::Duration::minutes(5)), "5 minutes");
        assert_eq!(
            human(time::Duration::days(3) + time::Duration::hours(2)),
            "3 days"
        );
    }
}

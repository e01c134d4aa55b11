//! Certificate revocation lists for the server's client-certificate check.
//!
//! [`Crl::load`] reads `jobsd --crl FILE` (PEM `X509 CRL`, or DER) and
//! accepts it only if it parses, names the configured CA as its issuer, is
//! signed by that CA's key, has a `nextUpdate` and is not past it. rustls
//! (webpki) then refuses, during the handshake, a client certificate whose
//! serial the list holds, with the TLS alert `certificate_revoked`.
//!
//! A CRL that passes its `nextUpdate` while the daemon runs stays in force
//! (webpki's expiration policy is left at "ignore"): refusing every client
//! because an operator forgot `jobs-ca crl` would turn a missed chore into
//! an outage, while a stale list still refuses everything it lists. Loading
//! an expired list — at start or at a reload — is refused, so the operator
//! hears about it at the next reload at the latest.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
use time::OffsetDateTime;

use super::{MAX_PEM_BYTES, TlsError};

/// A verified CRL of the configured CA.
#[derive(Clone, Debug)]
pub struct Crl {
    path: PathBuf,
    der: CertificateRevocationListDer<'static>,
    number: Option<String>,
    next_update: OffsetDateTime,
    serials: HashSet<Vec<u8>>,
}

impl Crl {
    /// Reads and checks the CRL at `path` against the CA certificate `ca`
    /// (DER), at the instant `now`.
    ///
    /// # Errors
    /// [`TlsError::Read`] if the file cannot be read (it must be a regular
    /// file of at most [`MAX_PEM_BYTES`]); [`TlsError::Crl`] naming the file
    /// and what is wrong: not a CRL, another issuer, a bad signature, no
    /// `nextUpdate`, or past it.
    pub fn load(
        path: &Path,
        ca: &CertificateDer<'_>,
        now: OffsetDateTime,
    ) -> Result<Self, TlsError> {
        let bytes =
            crate::bounded::read_bounded(path, MAX_PEM_BYTES).map_err(|e| TlsError::Read {
                what: "CRL",
                path: path.to_owned(),
                source: e.into_io(),
            })?;
        let bad = |reason: String| TlsError::Crl {
            path: path.to_owned(),
            reason,
        };
        // PEM (what `jobs-ca` writes), else DER.
        let der = CertificateRevocationListDer::from_pem_slice(&bytes)
            .unwrap_or_else(|_| CertificateRevocationListDer::from(bytes));
        let (_, ca_cert) = x509_parser::parse_x509_certificate(ca).map_err(|e| {
            bad(format!(
                "cannot be checked: the CA certificate does not parse ({e})"
            ))
        })?;
        let (_, crl) = x509_parser::parse_x509_crl(&der)
            .map_err(|e| bad(format!("is not a valid X.509 CRL ({e})")))?;
        if crl.issuer().as_raw() != ca_cert.subject().as_raw() {
            return Err(bad(format!(
                "was issued by {}, not by the CA given with --ca ({})",
                crl.issuer(),
                ca_cert.subject()
            )));
        }
        crl.verify_signature(ca_cert.public_key())
            .map_err(|_| bad("is not signed by the CA given with --ca".to_owned()))?;
        let Some(next_update) = crl.next_update() else {
            return Err(bad(
                "has no nextUpdate; sign it with `jobs-ca crl`".to_owned()
            ));
        };
        let next_update = next_update.to_datetime();
        if next_update <= now {
            return Err(bad(format!(
                "expired at its nextUpdate {next_update}; re-sign it with `jobs-ca crl`"
            )));
        }
        let serials = crl
            .iter_revoked_certificates()
            .map(|r| r.raw_serial().to_vec())
            .collect();
        let number = crl.crl_number().map(ToString::to_string);
        Ok(Self {
            path: path.to_owned(),
            der: der.clone(),
            number,
            next_update,
            serials,
        })
    }

    /// The file it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its CRL number (decimal), if it has one.
    pub fn number(&self) -> Option<&str> {
        self.number.as_deref()
    }

    /// Its `nextUpdate`.
    pub fn next_update(&self) -> OffsetDateTime {
        self.next_update
    }

    /// How many certificates it revokes.
    pub fn len(&self) -> usize {
        self.serials.len()
    }

    /// True if it revokes nothing.
    pub fn is_empty(&self) -> bool {
        self.serials.is_empty()
    }

    /// True if it revokes the certificate with this serial (the DER
    /// INTEGER's content bytes, as x509-parser's `raw_serial` gives them).
    pub fn revokes(&self, serial: &[u8]) -> bool {
        self.serials.contains(serial)
    }

    pub(super) fn der(&self) -> CertificateRevocationListDer<'static> {
        self.der.clone()
    }
}

//! Who the caller is, and whether they may touch a job.
//!
//! This module owns the two security decisions of the daemon:
//! - [`Identity`]: a user is the SHA-256 of the DER `SubjectPublicKeyInfo` of their
//!   certificate (an SPKI fingerprint, as in RFC 7469 §2.4 but hex-encoded). It is
//!   computed only from a certificate the TLS layer has already verified.
//! - [`Caller`]: the verified identity of the peer on one connection. The only way
//!   to turn a job id into a job handle that allows operations is
//!   [`crate::job::Jobs::authorize`], which takes a `Caller`; a missed check does
//!   not compile.
//!
//! It must not parse requests or talk to the network.

mod subject;

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// Errors while deriving an identity.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The certificate is not DER-encoded X.509.
    #[error("certificate is not valid DER X.509: {0}")]
    BadCertificate(String),
    /// A fingerprint string is not `sha256:` followed by 64 lower-case hex digits.
    #[error("fingerprint must be 'sha256:' followed by 64 lower-case hex digits")]
    BadFingerprint,
    /// The connection carried no verified client certificate. The TLS layer
    /// requires one, so this means the server was misconfigured.
    #[error("no verified client certificate on this connection")]
    NoClientCertificate,
}

/// A user's identity: the SHA-256 of the DER `SubjectPublicKeyInfo` of their
/// certificate. Displayed as `sha256:` + 64 lower-case hex digits, the same as
/// `openssl x509 -pubkey -noout | openssl pkey -pubin -outform der | sha256sum`.
///
/// Two certificates carrying the same key are the same identity.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity([u8; 32]);

impl Identity {
    /// The identity of the key in a DER-encoded X.509 certificate.
    ///
    /// # Errors
    /// [`AuthError::BadCertificate`] if `der` is not an X.509 certificate.
    pub fn from_certificate_der(der: &[u8]) -> Result<Self, AuthError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| AuthError::BadCertificate(e.to_string()))?;
        Ok(Self::from_spki_der(cert.public_key().raw))
    }

    /// The identity of the key in a DER-encoded X.509 certificate, and the
    /// certificate's subject as an RFC 4514 string (e.g. `CN=alice`,
    /// `CN=x,O=evil\,CN=root`), for logs and the audit log. The subject is a
    /// label chosen by whoever issued the certificate, escaped so that no
    /// value can pass for another attribute or break a line; only the
    /// identity decides anything.
    ///
    /// # Errors
    /// [`AuthError::BadCertificate`] if `der` is not an X.509 certificate.
    pub fn with_subject_from_certificate_der(der: &[u8]) -> Result<(Self, String), AuthError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| AuthError::BadCertificate(e.to_string()))?;
        Ok((
            Self::from_spki_der(cert.public_key().raw),
            subject::rfc4514(cert.subject()),
        ))
    }

    /// The identity of a DER-encoded `SubjectPublicKeyInfo`.
    pub fn from_spki_der(spki: &[u8]) -> Self {
        Self(Sha256::digest(spki).into())
    }

    /// The raw 32-byte digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Identity {
    type Err = AuthError;

    /// Parses the one canonical form, `sha256:` + 64 lower-case hex digits.
    /// Upper case, a missing prefix or a wrong length are refused rather than
    /// normalised, so that one identity has exactly one spelling.
    fn from_str(s: &str) -> Result<Self, AuthError> {
        let hex = s.strip_prefix("sha256:").ok_or(AuthError::BadFingerprint)?;
        if hex.len() != 64 {
            return Err(AuthError::BadFingerprint);
        }
        let mut out = [0u8; 32];
        for (i, pair) in hex.as_bytes().chunks_exact(2).enumerate() {
            let hi = lower_hex_value(pair[0]).ok_or(AuthError::BadFingerprint)?;
            let lo = lower_hex_value(pair[1]).ok_or(AuthError::BadFingerprint)?;
            out[i] = hi << 4 | lo;
        }
        Ok(Self(out))
    }
}

fn lower_hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// The verified identity of the peer of one connection.
///
/// Built only by the TLS acceptor from the leaf certificate rustls verified
/// against the configured CA (see [`crate::server`]); never from a request field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    identity: Identity,
}

impl Caller {
    /// Wraps the identity of a certificate that the TLS handshake verified.
    /// Crate-private: nothing outside the TLS acceptor may claim an identity.
    pub(crate) fn from_verified(identity: Identity) -> Self {
        Self { identity }
    }

    /// The caller's identity.
    pub fn identity(&self) -> Identity {
        self.identity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_round_trips_through_its_one_canonical_form() {
        let id = Identity::from_spki_der(b"some key");
        let s = id.to_string();
        assert_eq!(s.len(), 7 + 64);
        assert_eq!(s.parse::<Identity>().unwrap(), id);
    }

    #[test]
    fn sha256_of_the_spki_bytes() {
        // SHA-256("abc") from FIPS 180-2, appendix B.1.
        let id = Identity::from_spki_der(b"abc");
        assert_eq!(
            id.to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn non_canonical_fingerprints_are_refused() {
        let good = Identity::from_spki_der(b"k").to_string();
        let hex = &good[7..];
        for bad in [
            hex.to_string(),                          // no prefix
            format!("SHA256:{hex}"),                  // prefix case
            format!("sha256:{}", hex.to_uppercase()), // upper-case hex
            format!("sha256:{}", &hex[1..]),          // 63 digits
            format!("sha256:{hex}0"),                 // 65 digits
            format!("sha256:{}g", &hex[1..]),         // not hex
            format!("sha256: {}", &hex[1..]),         // space
        ] {
            assert!(
                matches!(bad.parse::<Identity>(), Err(AuthError::BadFingerprint)),
                "{bad} was accepted"
            );
        }
    }
}

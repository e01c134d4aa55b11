//! Certificate signing requests (PKCS#10, RFC 2986): made on the user's side
//! for a key that never leaves it, read and checked on the CA's side.
//!
//! A request proves possession of a private key (it is signed with it) and
//! names who asks. Everything else in it — requested extensions, other
//! subject attributes — is reported by [`CertRequest::ignored`] and never
//! reaches a certificate: the CA decides a leaf's shape, not the requester.

use std::fmt;

use rcgen::{KeyPair, PKCS_RSA_SHA256};
use rustls::pki_types::CertificateSigningRequestDer;
use rustls::pki_types::pem::PemObject;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_PKCS1_RSAENCRYPTION, OID_PKCS1_RSASSAPSS, OID_PKCS1_SHA256WITHRSA, OID_PKCS1_SHA384WITHRSA,
    OID_PKCS1_SHA512WITHRSA, OID_X509_COMMON_NAME,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

use super::{CaError, PrivateKeyPem, common_name, generate_key, validate_client_name};
use crate::auth::Identity;

/// The smallest RSA modulus accepted in a request: 4096 bits, the size every
/// key of a `jobs` deployment has.
pub const MIN_RSA_BITS: usize = 4096;

/// The largest RSA modulus accepted in a request: 8192 bits. The server
/// verifies client signatures with webpki's RSA algorithms, which stop at
/// 8192 bits; a larger key would be issued a certificate that can never
/// complete a handshake (see the handed case C20).
pub const MAX_RSA_BITS: usize = 8192;

/// The largest request read: 64 KiB. A PKCS#10 request for an RSA-8192 key is
/// under 4 KiB; anything much larger is not a request.
pub const MAX_REQUEST_BYTES: u64 = 64 * 1024;

/// Why a certificate signing request was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The bytes hold no PEM `CERTIFICATE REQUEST` (or `NEW CERTIFICATE
    /// REQUEST`) block and are not a DER request either.
    #[error("no PEM CERTIFICATE REQUEST block found (nor a DER request)")]
    NoPem,
    /// The file holds more than one request: which one is meant is not clear.
    #[error("the file holds {count} certificate requests; give one request per file")]
    SeveralRequests {
        /// How many `CERTIFICATE REQUEST` blocks it holds.
        count: usize,
    },
    /// The file holds a private key besides the request: the key has left
    /// its owner, which a request exists to avoid.
    #[error(
        "the file also holds a PRIVATE KEY; a private key must never leave its owner: \
         send only the request (NAME.csr), and make a new key if this one was shared"
    )]
    HoldsPrivateKey,
    /// The request is not valid DER PKCS#10.
    #[error("not a valid PKCS#10 request: {0}")]
    Malformed(String),
    /// The key is not an RSA key (`rsaEncryption`).
    #[error(
        "the request's key is {algorithm}; only RSA keys of {MIN_RSA_BITS} to {MAX_RSA_BITS} bits are accepted"
    )]
    NotRsa {
        /// The key's algorithm, as named by its OID.
        algorithm: String,
    },
    /// The RSA key is smaller than [`MIN_RSA_BITS`].
    #[error(
        "the request's RSA key has {bits} bits; at least {MIN_RSA_BITS} are required (make a new one with `jobs-ca request`)"
    )]
    KeyTooSmall {
        /// The modulus size.
        bits: usize,
    },
    /// The RSA key is larger than [`MAX_RSA_BITS`].
    #[error(
        "the request's RSA key has {bits} bits; the server cannot verify signatures of keys over {MAX_RSA_BITS} bits"
    )]
    KeyTooLarge {
        /// The modulus size.
        bits: usize,
    },
    /// The RSA public exponent is even, below 65537 or above 2^32: RFC 8017
    /// allows odd exponents from 3, but small ones are a known weakness and
    /// webpki refuses very large ones.
    #[error("the request's RSA public exponent is not an odd number from 65537 to 2^32")]
    BadExponent,
    /// The request is signed with an algorithm other than RSA PKCS#1 v1.5 or
    /// PSS with SHA-256/384/512 (SHA-1 is refused: its collisions make a
    /// signature a weak proof of possession).
    #[error(
        "the request is signed with an unsupported algorithm ({algorithm}); use SHA-256 with RSA"
    )]
    SignatureAlgorithm {
        /// The signature algorithm's OID.
        algorithm: String,
    },
    /// The signature does not verify with the request's own key: the request
    /// was altered, or whoever made it does not hold the key.
    #[error(
        "the request's signature does not verify with its key (altered, or not made with that key)"
    )]
    BadSignature,
    /// The request names no one (no common name) and no name was given.
    #[error("the request has no common name; give the user's name")]
    NoName,
}

/// A PKCS#10 request whose signature has been verified and whose key is an
/// RSA key of [`MIN_RSA_BITS`] to [`MAX_RSA_BITS`] bits.
///
/// Only [`CertRequest::from_der`] / [`CertRequest::from_pem`] make one, so
/// holding one means the checks passed.
#[derive(Clone)]
pub struct CertRequest {
    spki_der: Vec<u8>,
    identity: Identity,
    common_name: Option<String>,
    key_bits: usize,
    ignored: Vec<String>,
}

impl fmt::Debug for CertRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertRequest")
            .field("identity", &self.identity)
            .field("common_name", &self.common_name)
            .field("key_bits", &self.key_bits)
            .field("ignored", &self.ignored)
            .finish_non_exhaustive()
    }
}

impl CertRequest {
    /// Reads the one `CERTIFICATE REQUEST` PEM block of `pem` (OpenSSL's
    /// older `NEW CERTIFICATE REQUEST` label too) and checks it as
    /// [`CertRequest::from_der`] does; bytes that hold no PEM block but start
    /// like DER are read as a DER request.
    ///
    /// # Errors
    /// [`RequestError::HoldsPrivateKey`] if any `PRIVATE KEY` block is there
    /// too; [`RequestError::SeveralRequests`]; [`RequestError::NoPem`]; or
    /// the errors of [`CertRequest::from_der`].
    pub fn from_pem(pem: &[u8]) -> Result<Self, RequestError> {
        let labels: Vec<&[u8]> = pem
            .windows(b"-----BEGIN ".len())
            .enumerate()
            .filter(|(_, w)| *w == b"-----BEGIN ")
            .map(|(i, _)| {
                let rest = &pem[i + b"-----BEGIN ".len()..];
                let end = rest.iter().position(|&b| b == b'-').unwrap_or(rest.len());
                &rest[..end]
            })
            .collect();
        if labels.iter().any(|l| l.ends_with(b"PRIVATE KEY")) {
            return Err(RequestError::HoldsPrivateKey);
        }
        let requests = labels
            .iter()
            .filter(|l| l.ends_with(b"CERTIFICATE REQUEST"))
            .count();
        if requests > 1 {
            return Err(RequestError::SeveralRequests { count: requests });
        }
        if labels.is_empty() && pem.first() == Some(&0x30) {
            return Self::from_der(pem);
        }
        // RFC 7468 allows explanatory text around PEM blocks, never binary:
        // that would be a DER key or certificate sent along.
        if !labels.is_empty()
            && !pem
                .iter()
                .all(|&b| b.is_ascii_graphic() || b.is_ascii_whitespace())
        {
            return Err(RequestError::Malformed(
                "binary data besides the PEM request (a DER key or certificate?); send only the request"
                    .to_owned(),
            ));
        }
        if let Ok(der) = CertificateSigningRequestDer::from_pem_slice(pem) {
            return Self::from_der(der.as_ref());
        }
        // rustls-pki-types knows only the RFC 7468 label.
        let text = std::str::from_utf8(pem).map_err(|_| RequestError::NoPem)?;
        let legacy = text
            .replace(
                "-----BEGIN NEW CERTIFICATE REQUEST-----",
                "-----BEGIN CERTIFICATE REQUEST-----",
            )
            .replace(
                "-----END NEW CERTIFICATE REQUEST-----",
                "-----END CERTIFICATE REQUEST-----",
            );
        let der = CertificateSigningRequestDer::from_pem_slice(legacy.as_bytes())
            .map_err(|_| RequestError::NoPem)?;
        Self::from_der(der.as_ref())
    }

    /// Parses a DER PKCS#10 request and checks, in this order: the key is RSA,
    /// [`MIN_RSA_BITS`]..=[`MAX_RSA_BITS`] bits, with an exponent from 65537;
    /// the signature algorithm is RSA with SHA-256/384/512; the signature
    /// verifies with the request's key (RFC 2986 §4.2: proof of possession).
    ///
    /// # Errors
    /// [`RequestError::Malformed`] (also for trailing bytes),
    /// [`RequestError::NotRsa`], [`RequestError::KeyTooSmall`],
    /// [`RequestError::KeyTooLarge`], [`RequestError::BadExponent`],
    /// [`RequestError::SignatureAlgorithm`], [`RequestError::BadSignature`].
    pub fn from_der(der: &[u8]) -> Result<Self, RequestError> {
        let (rest, csr) = X509CertificationRequest::from_der(der)
            .map_err(|e| RequestError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(RequestError::Malformed(format!(
                "{} bytes after the request",
                rest.len()
            )));
        }
        let info = &csr.certification_request_info;
        let spki = &info.subject_pki;
        if spki.algorithm.algorithm != OID_PKCS1_RSAENCRYPTION {
            return Err(RequestError::NotRsa {
                algorithm: algorithm_name(&spki.algorithm.algorithm),
            });
        }
        let Ok(PublicKey::RSA(rsa)) = spki.parsed() else {
            return Err(RequestError::Malformed("unreadable RSA public key".into()));
        };
        let bits = modulus_bits(rsa.modulus);
        if bits < MIN_RSA_BITS {
            return Err(RequestError::KeyTooSmall { bits });
        }
        if bits > MAX_RSA_BITS {
            return Err(RequestError::KeyTooLarge { bits });
        }
        match rsa.try_exponent() {
            Ok(e) if e % 2 == 1 && (65_537..=1 << 32).contains(&e) => {}
            _ => return Err(RequestError::BadExponent),
        }
        let sig_alg = &csr.signature_algorithm.algorithm;
        let accepted = [
            OID_PKCS1_SHA256WITHRSA,
            OID_PKCS1_SHA384WITHRSA,
            OID_PKCS1_SHA512WITHRSA,
            OID_PKCS1_RSASSAPSS,
        ];
        if !accepted.contains(sig_alg) {
            return Err(RequestError::SignatureAlgorithm {
                algorithm: sig_alg.to_id_string(),
            });
        }
        csr.verify_signature().map_err(|e| match e {
            x509_parser::error::X509Error::SignatureUnsupportedAlgorithm => {
                RequestError::SignatureAlgorithm {
                    algorithm: sig_alg.to_id_string(),
                }
            }
            _ => RequestError::BadSignature,
        })?;

        let mut common_name = None;
        let mut ignored = Vec::new();
        for attribute in info.subject.iter_attributes() {
            let value = attribute
                .as_str()
                .map_or_else(|_| "<binary>".to_owned(), str::to_owned);
            let shown = printable(&value);
            if *attribute.attr_type() == OID_X509_COMMON_NAME && common_name.is_none() {
                common_name = Some(value);
            } else {
                ignored.push(format!(
                    "subject {}={shown}",
                    attribute_name(attribute.attr_type())
                ));
            }
        }
        if let Some(extensions) = csr.requested_extensions() {
            for extension in extensions {
                ignored.extend(describe_extension(extension));
            }
        }
        Ok(Self {
            spki_der: spki.raw.to_vec(),
            identity: Identity::from_spki_der(spki.raw),
            common_name,
            key_bits: bits,
            ignored,
        })
    }

    /// The SPKI fingerprint of the request's key: the identity its
    /// certificate will have.
    pub fn identity(&self) -> Identity {
        self.identity
    }

    /// The request's first common name, if any (not yet checked against the
    /// client name rules).
    pub fn common_name(&self) -> Option<&str> {
        self.common_name.as_deref()
    }

    /// The size of the request's RSA modulus, in bits.
    pub fn key_bits(&self) -> usize {
        self.key_bits
    }

    /// What the request asked for that no certificate will carry, one
    /// human-readable item each: requested extensions (`basicConstraints
    /// CA:TRUE`, `extendedKeyUsage serverAuth`, `subjectAltName DNS:x`, …) and
    /// subject attributes other than the common name (`subject O=x`).
    pub fn ignored(&self) -> &[String] {
        &self.ignored
    }

    /// The DER `SubjectPublicKeyInfo` of the request's key.
    pub(super) fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }
}

/// A new key and the request that asks for a certificate for it.
pub struct NewRequest {
    /// The private key in PKCS#8 PEM: stays with the user.
    pub key_pem: PrivateKeyPem,
    /// The request in PEM (`CERTIFICATE REQUEST`): goes to the CA admin.
    pub csr_pem: String,
    /// The key's SPKI fingerprint: the identity the certificate will have.
    pub identity: Identity,
}

impl fmt::Debug for NewRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewRequest")
            .field("identity", &self.identity)
            .field("key_pem", &self.key_pem)
            .finish_non_exhaustive()
    }
}

/// Makes a request for `name`: with `key` when given (a renewal keeps the
/// key, and so the identity), else with a fresh RSA-4096 key. The request's
/// subject is `CN=name`; it asks for no extension, since the CA decides them.
/// Signed with SHA-256 with RSA.
///
/// Takes about a second with a fresh key (RSA-4096 key generation).
///
/// # Errors
/// [`CaError::InvalidClientName`]; [`CaError::UnsuitableKey`] with
/// [`RequestError::NotRsa`] / [`RequestError::KeyTooSmall`] /
/// [`RequestError::KeyTooLarge`] for a `key` the CA would refuse;
/// [`CaError::KeyGeneration`] or [`CaError::Sign`] if the cryptography fails.
pub fn make_request(name: &str, key: Option<KeyPair>) -> Result<NewRequest, CaError> {
    validate_client_name(name)?;
    let key = match key {
        Some(key) => key,
        None => generate_key()?,
    };
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = common_name(name);
    let csr = params.serialize_request(&key).map_err(CaError::Sign)?;
    let csr_pem = csr.pem().map_err(CaError::Sign)?;
    // Check our own output as the CA will: a key the CA refuses is refused
    // here, before anything is written.
    let checked = CertRequest::from_der(csr.der()).map_err(CaError::UnsuitableKey)?;
    Ok(NewRequest {
        key_pem: PrivateKeyPem::from_key_pair(&key),
        csr_pem,
        identity: checked.identity(),
    })
}

/// Reads a PEM private key for [`make_request`]: RSA, PKCS#8 or PKCS#1.
///
/// # Errors
/// The rcgen error when the PEM holds no RSA key rcgen can sign with.
pub(super) fn key_from_pem(pem: &str) -> Result<KeyPair, rcgen::Error> {
    KeyPair::from_pem_and_sign_algo(pem, &PKCS_RSA_SHA256)
}

/// Bits in a DER INTEGER's magnitude: leading zero bytes and bits do not count.
fn modulus_bits(modulus: &[u8]) -> usize {
    let trimmed = match modulus.iter().position(|&b| b != 0) {
        Some(i) => &modulus[i..],
        None => return 0,
    };
    trimmed.len() * 8 - trimmed[0].leading_zeros() as usize
}

fn algorithm_name(oid: &x509_parser::der_parser::oid::Oid<'_>) -> String {
    let registry = x509_parser::oid_registry::OidRegistry::default().with_all_crypto();
    match registry.get(oid) {
        Some(entry) => format!("{} ({oid})", entry.sn()),
        None => oid.to_id_string(),
    }
}

fn attribute_name(oid: &x509_parser::der_parser::oid::Oid<'_>) -> String {
    x509_parser::objects::oid2abbrev(oid, x509_parser::objects::oid_registry())
        .map_or_else(|_| oid.to_id_string(), str::to_owned)
}

/// What a requested extension asks for, as items for [`CertRequest::ignored`].
fn describe_extension(extension: &ParsedExtension<'_>) -> Vec<String> {
    match extension {
        ParsedExtension::BasicConstraints(bc) => vec![format!(
            "basicConstraints CA:{}",
            if bc.ca { "TRUE" } else { "FALSE" }
        )],
        ParsedExtension::ExtendedKeyUsage(eku) => {
            // clientAuth is not listed: every client certificate has it,
            // asked for or not.
            let mut items = Vec::new();
            let named = [
                (eku.any, "anyExtendedKeyUsage"),
                (eku.server_auth, "serverAuth"),
                (eku.code_signing, "codeSigning"),
                (eku.email_protection, "emailProtection"),
                (eku.time_stamping, "timeStamping"),
                (eku.ocsp_signing, "OCSPSigning"),
            ];
            for (asked, name) in named {
                if asked {
                    items.push(format!("extendedKeyUsage {name}"));
                }
            }
            items.extend(
                eku.other
                    .iter()
                    .map(|oid| format!("extendedKeyUsage {oid}")),
            );
            items
        }
        ParsedExtension::SubjectAlternativeName(san) => san
            .general_names
            .iter()
            .map(|name| format!("subjectAltName {}", general_name(name)))
            .collect(),
        ParsedExtension::KeyUsage(ku) => vec![format!("keyUsage {ku}")],
        ParsedExtension::UnsupportedExtension { oid } => vec![format!("extension {oid}")],
        other => vec![printable(&format!("extension {other:?}"))],
    }
}

/// `text` with control characters, quotes and backslashes escaped (Rust's
/// `escape_debug`), so that a requester cannot move the cursor, retitle the
/// terminal or forge lines in the admin's output.
fn printable(text: &str) -> String {
    text.escape_debug().to_string()
}

fn general_name(name: &GeneralName<'_>) -> String {
    match name {
        GeneralName::DNSName(dns) => format!("DNS:{}", printable(dns)),
        GeneralName::RFC822Name(mail) => format!("email:{}", printable(mail)),
        GeneralName::URI(uri) => format!("URI:{}", printable(uri)),
        GeneralName::IPAddress(bytes) => match bytes.len() {
            4 => format!(
                "IP:{}",
                std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*bytes).unwrap_or_default())
            ),
            16 => format!(
                "IP:{}",
                std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*bytes).unwrap_or_default())
            ),
            _ => "IP:<malformed>".to_owned(),
        },
        other => printable(&format!("{other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modulus_bits_ignores_leading_zeros() {
        assert_eq!(modulus_bits(&[0x00, 0x80, 0x00]), 16);
        assert_eq!(modulus_bits(&[0x01, 0xff]), 9);
        assert_eq!(modulus_bits(&[0x00, 0x00]), 0);
        assert_eq!(modulus_bits(&[]), 0);
    }

    #[test]
    fn garbage_is_malformed_and_text_without_a_block_has_no_pem() {
        // Scenario: an admin points `sign` at the wrong file.
        assert!(matches!(
            CertRequest::from_der(b"not der"),
            Err(RequestError::Malformed(_))
        ));
        assert!(matches!(
            CertRequest::from_pem(b"hello\n"),
            Err(RequestError::NoPem)
        ));
        assert!(matches!(
            CertRequest::from_pem(&[0xff, 0xfe, 0x00]),
            Err(RequestError::NoPem)
        ));
    }
}

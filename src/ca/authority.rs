//! The CA in memory: its certificate and key, and the issuing of leaves.

use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_RSA_SHA256, PublicKeyData, RsaKeySize, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;

use super::fsio::{CA_CERT_FILE, CA_KEY_FILE, hex};
use super::registry::CertKind;
use super::request::CertRequest;
use super::{CaError, San, Validity, validate_client_name};
use crate::auth::{AuthError, Identity};

/// The common name of the CA certificate.
const CA_COMMON_NAME: &str = "jobs CA";

/// The common name of server certificates. Clients match the server by its
/// subject alternative names, never by this.
const SERVER_COMMON_NAME: &str = "jobs server";

/// Serial numbers are this many random bytes: 128 bits, so two certificates
/// from one CA never share a serial (CA/Browser Forum asks for at least 64),
/// and well under RFC 5280's 20-octet limit.
const SERIAL_LEN: usize = 16;

/// A certificate authority able to issue server and client certificates.
///
/// Holds the CA certificate and its RSA-4096 private key. `Debug` shows the
/// CA's identity and expiry, never the key.
pub struct CertAuthority {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    identity: Identity,
    not_after: OffsetDateTime,
    issuer: Issuer<'static, KeyPair>,
}

impl CertAuthority {
    /// Makes a new CA: a fresh RSA-4096 key and a self-signed certificate with
    /// common name `jobs CA <first 12 hex digits of its fingerprint>`, `basicConstraints` critical `cA:TRUE` with path
    /// length 0 (it signs leaves, never another CA), key usage `keyCertSign` and
    /// `cRLSign`, a subject key identifier and a random serial.
    ///
    /// Takes about a second (RSA-4096 key generation).
    ///
    /// # Errors
    /// [`CaError::EmptyValidity`] for a reversed `validity`;
    /// [`CaError::Random`], [`CaError::KeyGeneration`] or [`CaError::Sign`] if
    /// the cryptography fails.
    pub fn generate(validity: Validity) -> Result<Self, CaError> {
        let validity = validity.normalized()?;
        let mut params = CertificateParams::default();
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        params.serial_number = Some(random_serial()?);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];

        let key = generate_key()?;
        // Each CA gets its own subject, so that a certificate from another
        // jobs-ca deployment is refused as "unknown issuer" (no trust anchor
        // with that name) rather than as a bad signature.
        let tag = Identity::from_spki_der(&key.subject_public_key_info()).to_string();
        params.distinguished_name = common_name(&format!("{CA_COMMON_NAME} {}", &tag[7..19]));
        let cert = params.self_signed(&key).map_err(CaError::Sign)?;
        let identity = Identity::from_spki_der(&key.subject_public_key_info());
        let cert_der = cert.der().clone();
        let issuer = Issuer::from_ca_cert_der(&cert_der, key).map_err(CaError::Sign)?;
        Ok(Self {
            cert_pem: cert.pem(),
            cert_der,
            identity,
            not_after: validity.not_after,
            issuer,
        })
    }

    /// Loads the CA from `dir/ca.crt` (PEM certificate) and `dir/ca.key` (PEM
    /// RSA private key, PKCS#8 or PKCS#1).
    ///
    /// # Errors
    /// [`CaError::Read`] if a file cannot be read (a missing CA directory shows
    /// up as a missing `ca.crt`); [`CaError::BadPem`] or
    /// [`CaError::BadCertificate`] if `ca.crt` holds no certificate;
    /// [`CaError::NotACa`] if it is not a CA certificate; [`CaError::BadKey`] if
    /// `ca.key` is not an RSA key; [`CaError::KeyMismatch`] if the key is not
    /// the certificate's.
    pub fn load(dir: &Path) -> Result<Self, CaError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);

        let cert_pem = read_text(&cert_path)?;
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|source| {
            CaError::BadPem {
                path: cert_path.clone(),
                source,
            }
        })?;
        let bad_certificate = |reason: String| CaError::BadCertificate {
            path: cert_path.clone(),
            source: AuthError::BadCertificate(reason),
        };
        let (_, x509) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| bad_certificate(e.to_string()))?;
        let is_ca = matches!(x509.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
        if !is_ca {
            return Err(CaError::NotACa { path: cert_path });
        }
        let cert_spki = x509.public_key().raw.to_vec();
        let not_after = x509.validity().not_after.to_datetime();
        drop(x509);

        let key_pem = read_text(&key_path)?;
        let key =
            KeyPair::from_pem_and_sign_algo(&key_pem, &PKCS_RSA_SHA256).map_err(|source| {
                CaError::BadKey {
                    path: key_path.clone(),
                    source,
                }
            })?;
        // Signing with a key that is not the CA's would produce leaves that
        // name this CA as issuer but fail verification: refuse up front.
        if key.subject_public_key_info() != cert_spki {
            return Err(CaError::KeyMismatch {
                cert: cert_path,
                key: key_path,
            });
        }

        let issuer =
            Issuer::from_ca_cert_der(&cert_der, key).map_err(|e| bad_certificate(e.to_string()))?;
        Ok(Self {
            cert_pem,
            cert_der,
            identity: Identity::from_spki_der(&cert_spki),
            not_after,
            issuer,
        })
    }

    /// The CA certificate in PEM: what servers and clients are given as their
    /// trust anchor. For a loaded CA, the contents of `ca.crt` as read.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate in DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA's SPKI fingerprint.
    pub fn identity(&self) -> Identity {
        self.identity
    }

    /// When the CA certificate expires (UTC, whole seconds). No leaf is issued
    /// past this instant.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// The CA's private key, for writing `ca.key`.
    pub(super) fn private_key(&self) -> PrivateKeyPem {
        PrivateKeyPem::from_key_pair(self.issuer.key())
    }

    /// Issues a server certificate: a fresh RSA-4096 key, common name
    /// `jobs server`, the given subject alternative names, extended key usage
    /// `serverAuth` only, key usage `digitalSignature` and `keyEncipherment`,
    /// `basicConstraints` critical `cA:FALSE`, subject and authority key
    /// identifiers, a random serial.
    ///
    /// Takes about a second (RSA-4096 key generation).
    ///
    /// # Errors
    /// [`CaError::NoSans`] if `sans` is empty; [`CaError::InvalidSan`] for a
    /// hand-built invalid [`San::Dns`]; [`CaError::EmptyValidity`] or
    /// [`CaError::OutlivesCa`] for a bad `validity`; [`CaError::Random`],
    /// [`CaError::KeyGeneration`] or [`CaError::Sign`] if the cryptography fails.
    pub fn issue_server(&self, sans: &[San], validity: Validity) -> Result<IssuedCert, CaError> {
        if sans.is_empty() {
            return Err(CaError::NoSans);
        }
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans.iter().map(San::to_rcgen).collect::<Result<_, _>>()?;
        params.distinguished_name = common_name(SERVER_COMMON_NAME);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue_leaf(params, validity)
    }

    /// Issues a client (user) certificate: a fresh RSA-4096 key, common name
    /// `name`, no subject alternative name, extended key usage `clientAuth`
    /// only, key usage `digitalSignature`, `basicConstraints` critical
    /// `cA:FALSE`, subject and authority key identifiers, a random serial.
    ///
    /// The daemon identifies the user by [`IssuedCert::identity`]; `name` is for
    /// people reading the certificate and names the files in a CA directory.
    ///
    /// Takes about a second (RSA-4096 key generation).
    ///
    /// # Errors
    /// [`CaError::InvalidClientName`] if `name` breaks the rules (see
    /// [`CaError::InvalidClientName`]); [`CaError::EmptyValidity`] or
    /// [`CaError::OutlivesCa`] for a bad `validity`; [`CaError::Random`],
    /// [`CaError::KeyGeneration`] or [`CaError::Sign`] if the cryptography fails.
    pub fn issue_client(&self, name: &str, validity: Validity) -> Result<IssuedCert, CaError> {
        validate_client_name(name)?;
        self.issue_leaf(client_params(name), validity)
    }

    /// Issues client certificates for every name in `names` at once, the
    /// RSA-4096 keys made in parallel on all available cores (one thread
    /// per core, at most one per name). Results are in the order of `names`.
    ///
    /// Every name is checked before any key is made: one bad name refuses
    /// the whole batch.
    ///
    /// # Errors
    /// As [`CertAuthority::issue_client`], for the first failing name.
    pub fn issue_clients(
        &self,
        names: &[&str],
        validity: Validity,
    ) -> Result<Vec<IssuedCert>, CaError> {
        for name in names {
            validate_client_name(name)?;
        }
        self.check_validity(validity)?;
        let workers = std::thread::available_parallelism()
            .map_or(1, std::num::NonZeroUsize::get)
            .min(names.len());
        let next = AtomicUsize::new(0);
        let mut done: Vec<(usize, Result<IssuedCert, CaError>)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    scope.spawn(|| {
                        let mut done = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(name) = names.get(i) else { break };
                            done.push((i, self.issue_client(name, validity)));
                        }
                        done
                    })
                })
                .collect();
            handles
                .into_iter()
                // A worker only panics if issuing panicked: pass it on.
                .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        });
        done.sort_by_key(|(i, _)| *i);
        done.into_iter().map(|(_, result)| result).collect()
    }

    /// Signs a client certificate for the key of a verified request, with
    /// the same shape as [`CertAuthority::issue_client`] and the common name
    /// `name`. Only the request's public key is used: its subject, requested
    /// extensions and attributes are not (see [`CertRequest::ignored`]).
    ///
    /// The result has no private key: the user holds it.
    ///
    /// # Errors
    /// [`CaError::InvalidClientName`]; [`CaError::KeyAlreadyIssued`] if the
    /// request holds the CA's own key; [`CaError::EmptyValidity`] or
    /// [`CaError::OutlivesCa`]; [`CaError::Random`] or [`CaError::Sign`].
    pub fn sign_request(
        &self,
        request: &CertRequest,
        name: &str,
        validity: Validity,
    ) -> Result<SignedCert, CaError> {
        validate_client_name(name)?;
        if request.identity() == self.identity {
            return Err(CaError::KeyAlreadyIssued {
                identity: self.identity,
                name: CA_COMMON_NAME.to_owned(),
                kind: CertKind::Ca,
            });
        }
        let public_key =
            rcgen::SubjectPublicKeyInfo::from_der(request.spki_der()).map_err(CaError::Sign)?;
        let signed = self.sign_leaf(client_params(name), &public_key, validity)?;
        // The identity is the request's key: check the certificate says so.
        if signed.identity != request.identity() {
            return Err(CaError::Sign(rcgen::Error::X509(
                "the signed certificate does not carry the request's key".to_owned(),
            )));
        }
        Ok(signed)
    }

    fn check_validity(&self, validity: Validity) -> Result<Validity, CaError> {
        let validity = validity.normalized()?;
        if validity.not_after > self.not_after {
            return Err(CaError::OutlivesCa {
                not_after: validity.not_after,
                ca_not_after: self.not_after,
            });
        }
        Ok(validity)
    }

    /// Fills in what every leaf shares, makes its key and signs it. Checks come
    /// before key generation so that a refused request costs nothing.
    fn issue_leaf(
        &self,
        params: CertificateParams,
        validity: Validity,
    ) -> Result<IssuedCert, CaError> {
        self.check_validity(validity)?;
        let key = generate_key()?;
        let signed = self.sign_leaf(params, &key, validity)?;
        Ok(IssuedCert {
            key_pem: PrivateKeyPem::from_key_pair(&key),
            cert_pem: signed.cert_pem,
            cert_der: signed.cert_der,
            identity: signed.identity,
            serial: signed.serial,
            validity: signed.validity,
        })
    }

    /// Signs a leaf for `public_key`: validity, a random serial,
    /// `basicConstraints` critical `cA:FALSE`, the authority key identifier.
    fn sign_leaf(
        &self,
        mut params: CertificateParams,
        public_key: &impl PublicKeyData,
        validity: Validity,
    ) -> Result<SignedCert, CaError> {
        let validity = self.check_validity(validity)?;
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let serial = random_serial()?;
        params.serial_number = Some(serial.clone());
        params.is_ca = IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(public_key, &self.issuer)
            .map_err(CaError::Sign)?;
        Ok(SignedCert {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            identity: Identity::from_spki_der(&public_key.subject_public_key_info()),
            serial: hex(serial.as_ref()),
            validity,
        })
    }

    /// Signs `params` as this CA's certificate revocation list; the PEM
    /// (`X509 CRL`).
    ///
    /// # Errors
    /// [`CaError::Sign`] if rcgen refuses the parameters (`next_update` not
    /// after `this_update`) or signing fails.
    pub(super) fn sign_crl(
        &self,
        params: &rcgen::CertificateRevocationListParams,
    ) -> Result<String, CaError> {
        params
            .signed_by(&self.issuer)
            .and_then(|crl| crl.pem())
            .map_err(CaError::Sign)
    }
}

impl fmt::Debug for CertAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertAuthority")
            .field("identity", &self.identity)
            .field("not_after", &self.not_after)
            .field("key", &"[redacted]")
            .finish_non_exhaustive()
    }
}

/// A freshly issued leaf certificate and its private key.
///
/// `Debug` redacts the key.
#[derive(Clone, Debug)]
pub struct IssuedCert {
    /// The certificate in PEM.
    pub cert_pem: String,
    /// The same certificate in DER.
    pub cert_der: CertificateDer<'static>,
    /// The certificate's private key.
    pub key_pem: PrivateKeyPem,
    /// The certificate's SPKI fingerprint: how the daemon names this user.
    pub identity: Identity,
    /// The serial number, lower-case hex of its DER INTEGER bytes.
    pub serial: String,
    /// The validity written, UTC, whole seconds.
    pub validity: Validity,
}

/// A leaf certificate signed for a key the CA never saw the private half
/// of (see [`CertAuthority::sign_request`]).
#[derive(Clone, Debug)]
pub struct SignedCert {
    /// The certificate in PEM.
    pub cert_pem: String,
    /// The same certificate in DER.
    pub cert_der: CertificateDer<'static>,
    /// The certificate's SPKI fingerprint: how the daemon names this user.
    pub identity: Identity,
    /// The serial number, lower-case hex of its DER INTEGER bytes.
    pub serial: String,
    /// The validity written, UTC, whole seconds.
    pub validity: Validity,
}

/// An RSA private key in PKCS#8 PEM (a PEM block labelled `PRIVATE KEY`).
///
/// `Debug` prints `[redacted]`; read the key with [`PrivateKeyPem::as_str`].
/// The memory is not wiped on drop.
#[derive(Clone)]
pub struct PrivateKeyPem {
    pem: String,
    pkcs8_der: Vec<u8>,
}

impl PrivateKeyPem {
    pub(super) fn from_key_pair(key: &KeyPair) -> Self {
        Self {
            pem: key.serialize_pem(),
            pkcs8_der: key.serialize_der(),
        }
    }

    /// The key in PEM, as written to a `.key` file.
    pub fn as_str(&self) -> &str {
        &self.pem
    }

    /// The same key in DER, as rustls takes it.
    pub fn to_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.pkcs8_der.clone()))
    }
}

impl fmt::Debug for PrivateKeyPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKeyPem([redacted])")
    }
}

/// The parameters every client certificate has: `CN=name`, key usage
/// `digitalSignature`, extended key usage `clientAuth` only.
fn client_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params
}

/// A PEM file of the CA directory as text, read without ever blocking (a
/// FIFO planted as `ca.crt` is refused) and at most
/// [`crate::tls::MAX_PEM_BYTES`] long.
fn read_text(path: &Path) -> Result<String, CaError> {
    let read_error = |source| CaError::Read {
        path: path.to_path_buf(),
        source,
    };
    let bytes = crate::bounded::read_bounded(path, crate::tls::MAX_PEM_BYTES)
        .map_err(|e| read_error(e.into_io()))?;
    String::from_utf8(bytes)
        .map_err(|e| read_error(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
}

/// A new RSA-4096 key. `KeyPair::generate_for` would silently make 2048 bits.
pub(super) fn generate_key() -> Result<KeyPair, CaError> {
    KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_4096).map_err(CaError::KeyGeneration)
}

/// A distinguished name holding only a common name.
pub(super) fn common_name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// [`SERIAL_LEN`] random bytes from the system generator (through rustls'
/// aws-lc provider, the one crypto provider of this crate).
///
/// The first byte is forced into `0x01..=0x7f`: a clear top bit keeps the DER
/// INTEGER positive without a padding byte, and a non-zero byte keeps it
/// minimally encoded, so the serial is exactly [`SERIAL_LEN`] octets.
fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; SERIAL_LEN];
    rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| CaError::Random)?;
    bytes[0] = (bytes[0] & 0x7f).max(1);
    Ok(SerialNumber::from_slice(&bytes))
}

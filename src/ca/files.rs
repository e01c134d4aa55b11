//! The CA directory: which file holds what, and writing them safely.
//!
//! Every file is created with `O_CREAT | O_EXCL` (`create_new`): an existing
//! file, or a symlink planted where a key will go, is never written through.

use std::fs::{self, DirBuilder, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::{CaError, CertAuthority, IssuedCert, San, Validity, validate_client_name};
use crate::auth::Identity;

/// The CA certificate, in PEM. Give it to servers and clients.
pub const CA_CERT_FILE: &str = "ca.crt";
/// The CA private key, in PEM. Never leaves the CA directory.
pub const CA_KEY_FILE: &str = "ca.key";
/// The server certificate, in PEM.
pub const SERVER_CERT_FILE: &str = "server.crt";
/// The server private key, in PEM.
pub const SERVER_KEY_FILE: &str = "server.key";

/// Mode of private key files: owner read/write only.
const KEY_MODE: u32 = 0o600;
/// Mode of certificate files: public, readable by all.
const CERT_MODE: u32 = 0o644;
/// Mode of a CA directory we create: it holds `ca.key`, so owner only.
const DIR_MODE: u32 = 0o700;

/// The files one issuing operation wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedFiles {
    /// The new certificate (PEM, mode 0644).
    pub cert_path: PathBuf,
    /// The new private key (PEM, mode 0600).
    pub key_path: PathBuf,
    /// The new certificate's SPKI fingerprint.
    pub identity: Identity,
}

/// Creates a CA in `dir`: writes `ca.crt` (mode 0644) and `ca.key` (mode 0600).
/// Creates `dir` (mode 0700, and missing parents) if it does not exist.
///
/// Returns the paths written and the CA's identity. Takes about a second.
///
/// # Errors
/// [`CaError::AlreadyExists`] if `ca.key` or `ca.crt` exists (checked before
/// the key is made; nothing is overwritten); [`CaError::CreateDir`] or
/// [`CaError::Write`] on I/O failure; the errors of [`CertAuthority::generate`].
pub fn init_dir(dir: &Path, validity: Validity) -> Result<IssuedFiles, CaError> {
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    refuse_existing(&[&key_path, &cert_path])?;
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|source| CaError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
    let ca = CertAuthority::generate(validity)?;
    write_pair(
        &cert_path,
        ca.cert_pem(),
        &key_path,
        ca.private_key().as_str(),
    )?;
    Ok(IssuedFiles {
        cert_path,
        key_path,
        identity: ca.identity(),
    })
}

/// Issues a server certificate from the CA in `dir` (see
/// [`CertAuthority::issue_server`]) and writes `server.crt` and `server.key`.
///
/// # Errors
/// [`CaError::AlreadyExists`] if either file exists (nothing is overwritten);
/// the errors of [`CertAuthority::load`] and [`CertAuthority::issue_server`];
/// [`CaError::Write`] on I/O failure.
pub fn write_server(dir: &Path, sans: &[San], validity: Validity) -> Result<IssuedFiles, CaError> {
    let cert_path = dir.join(SERVER_CERT_FILE);
    let key_path = dir.join(SERVER_KEY_FILE);
    refuse_existing(&[&key_path, &cert_path])?;
    let issued = CertAuthority::load(dir)?.issue_server(sans, validity)?;
    write_issued(cert_path, key_path, issued)
}

/// Issues a client certificate for `name` from the CA in `dir` (see
/// [`CertAuthority::issue_client`]) and writes `NAME.crt` and `NAME.key`.
///
/// # Errors
/// [`CaError::InvalidClientName`] (checked first, so a bad name never reaches
/// the file system); [`CaError::AlreadyExists`] if either file exists; the
/// errors of [`CertAuthority::load`] and [`CertAuthority::issue_client`];
/// [`CaError::Write`] on I/O failure.
pub fn write_client(dir: &Path, name: &str, validity: Validity) -> Result<IssuedFiles, CaError> {
    validate_client_name(name)?;
    let cert_path = dir.join(format!("{name}.crt"));
    let key_path = dir.join(format!("{name}.key"));
    refuse_existing(&[&key_path, &cert_path])?;
    let issued = CertAuthority::load(dir)?.issue_client(name, validity)?;
    write_issued(cert_path, key_path, issued)
}

/// The identity of the first certificate in a PEM file: the SHA-256 of its
/// DER `SubjectPublicKeyInfo` (see [`Identity`]).
///
/// # Errors
/// [`CaError::Read`], [`CaError::BadPem`] or [`CaError::BadCertificate`].
pub fn fingerprint_file(cert_pem_path: &Path) -> Result<Identity, CaError> {
    let path = cert_pem_path.to_path_buf();
    let pem = fs::read(cert_pem_path).map_err(|source| CaError::Read {
        path: path.clone(),
        source,
    })?;
    let der = CertificateDer::from_pem_slice(&pem).map_err(|source| CaError::BadPem {
        path: path.clone(),
        source,
    })?;
    Identity::from_certificate_der(&der).map_err(|source| CaError::BadCertificate { path, source })
}

fn write_issued(
    cert_path: PathBuf,
    key_path: PathBuf,
    issued: IssuedCert,
) -> Result<IssuedFiles, CaError> {
    write_pair(
        &cert_path,
        &issued.cert_pem,
        &key_path,
        issued.key_pem.as_str(),
    )?;
    Ok(IssuedFiles {
        cert_path,
        key_path,
        identity: issued.identity,
    })
}

/// Fails with [`CaError::AlreadyExists`] for the first path that exists, so
/// that a doomed request is refused before a key is generated.
/// `symlink_metadata` counts a dangling symlink as existing.
fn refuse_existing(paths: &[&Path]) -> Result<(), CaError> {
    match paths.iter().find(|p| p.symlink_metadata().is_ok()) {
        Some(path) => Err(CaError::AlreadyExists {
            path: path.to_path_buf(),
        }),
        None => Ok(()),
    }
}

/// Writes the key, then the certificate. If the certificate cannot be
/// written the key is removed again: a key without its certificate is useless,
/// and its file would make every retry fail with `AlreadyExists`.
fn write_pair(
    cert_path: &Path,
    cert_pem: &str,
    key_path: &Path,
    key_pem: &str,
) -> Result<(), CaError> {
    write_new(key_path, key_pem, KEY_MODE)?;
    if let Err(e) = write_new(cert_path, cert_pem, CERT_MODE) {
        // Best effort: the error being reported is the write failure.
        let _ = fs::remove_file(key_path);
        return Err(e);
    }
    Ok(())
}

/// Creates `path` (which must not exist) with `mode` and writes `contents`.
///
/// The mode is given at `open` so that a key is never readable by others, even
/// for an instant, and set again afterwards because the umask may have
/// narrowed it (a 0644 certificate under umask 077). A partly written file is
/// removed.
fn write_new(path: &Path, contents: &str, mode: u32) -> Result<(), CaError> {
    let write_error = |source| CaError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => CaError::AlreadyExists {
                path: path.to_path_buf(),
            },
            _ => write_error(source),
        })?;
    let written = file
        .set_permissions(Permissions::from_mode(mode))
        .and_then(|()| file.write_all(contents.as_bytes()))
        .and_then(|()| file.sync_all());
    if let Err(source) = written {
        drop(file);
        // Best effort: we created this file a moment ago; the error being
        // reported is the write failure.
        let _ = fs::remove_file(path);
        return Err(write_error(source));
    }
    Ok(())
}

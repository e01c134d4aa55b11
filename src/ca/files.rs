//! The CA directory: which file holds what, and writing them safely.
//!
//! Every file is written atomically: into a temporary file in the same
//! directory, fsynced, then renamed into place (`renameat2(RENAME_NOREPLACE)`
//! where nothing may be overwritten) and the directory fsynced. A crash
//! leaves the old file or the whole new one, never half a key; an existing
//! file, or a symlink planted where a key will go, is never written through.
//!
//! Issuing also updates the CA's record ([`super::registry`]) under its lock:
//! certificates are recorded as pending before their files are written and
//! as issued after, and a failed write is undone, so a certificate on disk is
//! always in the record; what a killed run left pending is settled by the
//! next one.

use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use time::OffsetDateTime;

use super::fsio::{
    CA_CERT_FILE, CA_KEY_FILE, Clobber, LOCKED_TEMP_PREFIX, SERVER_CERT_FILE, SERVER_KEY_FILE,
    read_regular, write_atomic, write_atomic_as,
};
use super::registry::{
    self, CertKind, ClientCheck, IssuedRecord, LockedRegistry, PendingIssue, Repairs,
};
use super::request::{self, CertRequest, MAX_REQUEST_BYTES};
use super::{CaError, CertAuthority, San, Validity, validate_client_name};
use crate::auth::Identity;

/// Mode of private key files: owner read/write only.
const KEY_MODE: u32 = 0o600;
/// Mode of certificate and request files: public, readable by all.
const CERT_MODE: u32 = 0o644;
/// Mode of a CA or key directory we create: it holds private keys, so owner only.
const DIR_MODE: u32 = 0o700;

/// Prefix of the temporary files `request NAME` writes (without the CA's
/// lock, often not in a CA directory): only the next `request NAME` in the
/// same directory removes them.
const REQUEST_TEMP_PREFIX: &str = ".jobs-ca-request-";

/// The largest certificate file read: 1 MiB (a long chain is a few KiB).
const MAX_CERT_BYTES: u64 = 1024 * 1024;

/// The files one issuing operation wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedFiles {
    /// The new certificate (PEM, mode 0644).
    pub cert_path: PathBuf,
    /// The new private key (PEM, mode 0600).
    pub key_path: PathBuf,
    /// The new certificate's SPKI fingerprint.
    pub identity: Identity,
    /// What the CA's record says about it (name, serial, validity).
    pub record: IssuedRecord,
}

/// The files a certificate request wrote (see [`request_files`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestFiles {
    /// The private key (PEM, mode 0600): new, or the existing one reused.
    pub key_path: PathBuf,
    /// The request (PEM, mode 0644): send it to the CA admin.
    pub csr_path: PathBuf,
    /// The key's SPKI fingerprint: the identity the certificate will have.
    pub identity: Identity,
    /// Whether an existing key was reused (a renewal request).
    pub renewal: bool,
}

/// What signing a request wrote (see [`sign_request_file`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedFiles {
    /// The new certificate (PEM, mode 0644).
    pub cert_path: PathBuf,
    /// The CA's record of it: name, serial, fingerprint, validity.
    pub record: IssuedRecord,
    /// The previous certificate for the same key and name, if this was a
    /// renewal.
    pub renewed: Option<IssuedRecord>,
    /// What the request asked for and did not get (see
    /// [`CertRequest::ignored`]).
    pub ignored: Vec<String>,
}

/// Creates a CA in `dir`: writes `ca.crt` (mode 0644), `ca.key` (mode 0600)
/// and the record `issued.json` with the CA in it. Creates `dir` (mode 0700,
/// and missing parents) if it does not exist.
///
/// Returns the paths written and the CA's identity. Takes about a second.
///
/// A directory where an earlier `init` was killed before it wrote `ca.crt` is
/// settled first (its orphan `ca.key` removed), so running `init` again
/// recovers it.
///
/// # Errors
/// [`CaError::AlreadyExists`] if `ca.crt` or `ca.key` exists or `issued.json`
/// records anything (checked before the key is made; nothing is overwritten);
/// [`CaError::CreateDir`] or [`CaError::Write`] on I/O failure; the errors of
/// [`CertAuthority::generate`].
pub fn init_dir(dir: &Path, validity: Validity) -> Result<IssuedFiles, CaError> {
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    let record_path = dir.join(registry::REGISTRY_FILE);
    refuse_existing(&[&cert_path])?;
    create_dir(dir)?;
    // Settles a killed `init` first (its half-written CA is dropped), so
    // that running `init` again is the way out of one.
    let mut registry = LockedRegistry::open(dir)?;
    refuse_existing(&[&key_path, &cert_path])?;
    if !registry.records().is_empty() {
        return Err(CaError::AlreadyExists { path: record_path });
    }
    let ca = CertAuthority::generate(validity)?;
    let files = Pending {
        record: record_for(ca.cert_der(), "ca", CertKind::Ca)?,
        cert_path,
        key_path,
        cert_pem: ca.cert_pem().to_owned(),
        key_pem: ca.private_key().as_str().to_owned(),
        identity: ca.identity(),
    };
    Ok(commit(&mut registry, vec![files])?.remove(0))
}

/// Settles what an interrupted `jobs-ca` run left in the CA directory `dir`
/// (see [`registry`]): rebuilds a missing record, records or drops pending
/// certificates, removes temporary files. Every issuing function does this
/// too; call it first to learn what was repaired.
///
/// # Errors
/// As [`LockedRegistry::open`].
pub fn recover(dir: &Path) -> Result<Repairs, CaError> {
    Ok(LockedRegistry::open(dir)?.repairs().clone())
}

/// Issues a server certificate from the CA in `dir` (see
/// [`CertAuthority::issue_server`]), writes `server.crt` and `server.key`
/// and records it under the name `server`.
///
/// # Errors
/// [`CaError::AlreadyExists`] if either file exists (nothing is overwritten);
/// the errors of [`CertAuthority::load`] and [`CertAuthority::issue_server`];
/// [`CaError::Registry`] for a malformed record; [`CaError::Write`] on I/O
/// failure.
pub fn write_server(dir: &Path, sans: &[San], validity: Validity) -> Result<IssuedFiles, CaError> {
    let cert_path = dir.join(SERVER_CERT_FILE);
    let key_path = dir.join(SERVER_KEY_FILE);
    refuse_existing(&[&key_path, &cert_path])?;
    let issued = CertAuthority::load(dir)?.issue_server(sans, validity)?;
    let mut registry = LockedRegistry::open(dir)?;
    let files = Pending {
        cert_path,
        key_path,
        cert_pem: issued.cert_pem,
        key_pem: issued.key_pem.as_str().to_owned(),
        identity: issued.identity,
        record: record_for(&issued.cert_der, "server", CertKind::Server)?,
    };
    Ok(commit(&mut registry, vec![files])?.remove(0))
}

/// Issues a client certificate for `name` from the CA in `dir` and writes
/// `NAME.crt` and `NAME.key`: [`write_clients`] with one name.
///
/// # Errors
/// As [`write_clients`].
pub fn write_client(dir: &Path, name: &str, validity: Validity) -> Result<IssuedFiles, CaError> {
    Ok(write_clients(dir, &[name], validity)?.remove(0))
}

/// Issues client certificates for every name from the CA in `dir` (see
/// [`CertAuthority::issue_clients`]: keys made in parallel on all cores),
/// writes `NAME.crt` and `NAME.key` for each and records them. Results are in
/// the order of `names`.
///
/// Every name is checked (valid, given once, no file of that name, not in
/// the record) before any key is made, and again under the record's lock
/// before anything is written; if a file cannot be written, what this call
/// wrote is removed and the record restored. A process killed while writing
/// leaves pending entries that the next run settles (see [`registry`]).
///
/// # Errors
/// [`CaError::InvalidClientName`] or [`CaError::DuplicateName`] (checked
/// first, so a bad name never reaches the file system);
/// [`CaError::AlreadyExists`] if a file exists; [`CaError::NameTaken`] if a
/// name is in the record; the errors of [`CertAuthority::load`] and
/// [`CertAuthority::issue_clients`]; [`CaError::Registry`];
/// [`CaError::Write`].
pub fn write_clients(
    dir: &Path,
    names: &[&str],
    validity: Validity,
) -> Result<Vec<IssuedFiles>, CaError> {
    for (i, name) in names.iter().enumerate() {
        validate_client_name(name)?;
        if names[..i].contains(name) {
            return Err(CaError::DuplicateName {
                name: (*name).to_owned(),
            });
        }
    }
    let paths: Vec<(PathBuf, PathBuf)> = names
        .iter()
        .map(|name| {
            (
                dir.join(format!("{name}.crt")),
                dir.join(format!("{name}.key")),
            )
        })
        .collect();
    let refuse_files = || {
        paths
            .iter()
            .try_for_each(|(cert, key)| refuse_existing(&[key, cert]))
    };
    refuse_files()?;
    let ca = CertAuthority::load(dir)?;
    // Fail fast on names already issued, before a second of key generation
    // per name; checked again under the lock below.
    let issued = registry::read(dir)?;
    if let Some(taken) = issued
        .iter()
        .find(|r| r.kind == CertKind::Client && names.contains(&r.name.as_str()))
    {
        return Err(CaError::NameTaken {
            name: taken.name.clone(),
            identity: taken.fingerprint,
        });
    }
    let certs = ca.issue_clients(names, validity)?;

    let mut registry = LockedRegistry::open(dir)?;
    refuse_files()?;
    let mut pending = Vec::with_capacity(names.len());
    for ((name, (cert_path, key_path)), issued) in names.iter().zip(paths).zip(certs) {
        match registry.check_client(name, issued.identity)? {
            ClientCheck::New => {}
            // A fresh key cannot have been issued before.
            ClientCheck::Renewal(previous) => {
                return Err(CaError::KeyAlreadyIssued {
                    identity: previous.fingerprint,
                    name: previous.name,
                    kind: previous.kind,
                });
            }
        }
        pending.push(Pending {
            cert_path,
            key_path,
            record: record_for(&issued.cert_der, name, CertKind::Client)?,
            cert_pem: issued.cert_pem,
            key_pem: issued.key_pem.as_str().to_owned(),
            identity: issued.identity,
        });
    }
    commit(&mut registry, pending)
}

/// The user's side of a signed certificate: writes `DIR/NAME.key` (a new
/// RSA-4096 key, mode 0600) and `DIR/NAME.csr` (a PKCS#10 request for
/// `CN=NAME`, mode 0644), creating `DIR` (mode 0700) if missing.
///
/// With `renew`, the existing `DIR/NAME.key` is reused and only a new
/// `NAME.csr` is written (replacing an old one): signed for the same name it
/// renews the certificate and keeps the identity.
///
/// # Errors
/// [`CaError::InvalidClientName`]; [`CaError::AlreadyExists`] if, without
/// `renew`, either file exists; [`CaError::Read`] (a missing key with
/// `renew`) or [`CaError::BadKey`] if the key cannot be used;
/// [`CaError::UnsuitableKey`] if it is one the CA would refuse (not RSA of
/// 4096-8192 bits); [`CaError::CreateDir`], [`CaError::Write`].
pub fn request_files(dir: &Path, name: &str, renew: bool) -> Result<RequestFiles, CaError> {
    validate_client_name(name)?;
    let key_path = dir.join(format!("{name}.key"));
    let csr_path = dir.join(format!("{name}.csr"));
    // Temporary files named after NAME, so that a `request NAME` killed
    // midway leaves nothing the next one does not remove first (the key's
    // may hold a whole private key).
    let key_temp = format!("{REQUEST_TEMP_PREFIX}{name}-key");
    let csr_temp = format!("{REQUEST_TEMP_PREFIX}{name}-csr");
    for temp in [&key_temp, &csr_temp] {
        let path = dir.join(format!("{temp}.tmp"));
        if path
            .symlink_metadata()
            .is_ok_and(|m| m.file_type().is_file())
        {
            remove_quietly(&[&path]);
        }
    }
    if renew {
        let pem = read_limited(&key_path, MAX_REQUEST_BYTES)?;
        let pem = String::from_utf8(pem).map_err(|_| CaError::BadKey {
            path: key_path.clone(),
            source: rcgen::Error::CouldNotParseKeyPair,
        })?;
        let key = request::key_from_pem(&pem).map_err(|source| CaError::BadKey {
            path: key_path.clone(),
            source,
        })?;
        let made = request::make_request(name, Some(key))?;
        write_atomic_as(
            &csr_temp,
            false,
            &csr_path,
            made.csr_pem.as_bytes(),
            CERT_MODE,
            Clobber::Replace,
        )?;
        return Ok(RequestFiles {
            key_path,
            csr_path,
            identity: made.identity,
            renewal: true,
        });
    }
    refuse_existing(&[&key_path, &csr_path])?;
    create_dir(dir)?;
    let made = request::make_request(name, None)?;
    write_atomic_as(
        &key_temp,
        false,
        &key_path,
        made.key_pem.as_str().as_bytes(),
        KEY_MODE,
        Clobber::Refuse,
    )?;
    if let Err(e) = write_atomic_as(
        &csr_temp,
        false,
        &csr_path,
        made.csr_pem.as_bytes(),
        CERT_MODE,
        Clobber::Refuse,
    ) {
        remove_quietly(&[&key_path]);
        return Err(e);
    }
    Ok(RequestFiles {
        key_path,
        csr_path,
        identity: made.identity,
        renewal: false,
    })
}

/// The CA admin's side: reads the PKCS#10 request at `csr_path`, checks it
/// ([`CertRequest::from_pem`]), and signs a client certificate for its key
/// with the CA in `ca_dir` (see [`CertAuthority::sign_request`]).
///
/// The name is `name` if given, else the request's common name; either must
/// pass the client name rules. The record decides what this is: a new
/// identity, or a renewal when this key was issued under this name before
/// (new serial and validity, same fingerprint); a key issued under another
/// name, or a name held by another key, is refused.
///
/// The certificate goes to `out`, by default the request's path with the
/// extension `.crt`. An existing `out` is replaced only when it holds a
/// certificate for the same key (the one being renewed); anything else is
/// refused before signing.
///
/// # Errors
/// [`CaError::Read`] for an unreadable request (or one over 64 KiB);
/// [`CaError::Request`] for a request that fails the checks;
/// [`CaError::InvalidClientName`], [`CaError::KeyAlreadyIssued`],
/// [`CaError::NameTaken`], [`CaError::AlreadyExists`]; the errors of
/// [`CertAuthority::load`] and [`CertAuthority::sign_request`];
/// [`CaError::Registry`]; [`CaError::Write`].
pub fn sign_request_file(
    ca_dir: &Path,
    csr_path: &Path,
    name: Option<&str>,
    validity: Validity,
    out: Option<&Path>,
) -> Result<SignedFiles, CaError> {
    let bytes = read_limited(csr_path, MAX_REQUEST_BYTES)?;
    let request = CertRequest::from_pem(&bytes).map_err(|source| CaError::Request {
        path: csr_path.to_path_buf(),
        source,
    })?;
    let name = match name.or(request.common_name()) {
        Some(name) => name.to_owned(),
        None => {
            return Err(CaError::Request {
                path: csr_path.to_path_buf(),
                source: request::RequestError::NoName,
            });
        }
    };
    validate_client_name(&name)?;
    let cert_path = out.map_or_else(|| csr_path.with_extension("crt"), Path::to_path_buf);
    let copies = absolute(&ca_dir.join(registry::COPIES_DIR))?;
    if absolute(&cert_path)?.starts_with(&copies) {
        return Err(CaError::ReservedPath { path: cert_path });
    }
    // Fail fast; checked again under the lock.
    replaceable(&cert_path, request.identity())?;
    let ca = CertAuthority::load(ca_dir)?;
    refuse_server_key(ca_dir, request.identity())?;

    let mut registry = LockedRegistry::open(ca_dir)?;
    let renewed = match registry.check_client(&name, request.identity())? {
        ClientCheck::New => None,
        ClientCheck::Renewal(previous) => Some(previous),
    };
    // Under the lock: a concurrent renewal may have written this file since.
    let clobber = replaceable(&cert_path, request.identity())?;
    let signed = ca.sign_request(&request, &name, validity)?;
    let record = record_for(&signed.cert_der, &name, CertKind::Client)?;
    registry.begin(vec![PendingIssue {
        record: record.clone(),
        cert_path: absolute(&cert_path)?,
        key_path: None,
    }])?;
    let copy = registry::copy_path(ca_dir, &record.serial);
    let written = write_copy(ca_dir, &signed.cert_pem, &record.serial).and_then(|()| {
        write_certificate(&cert_path, &signed.cert_pem, &record.serial, clobber)
            .inspect_err(|_| remove_quietly(&[&copy]))
    });
    if let Err(e) = written {
        // Nothing was handed out. Best effort: if the record cannot be
        // settled now, the next run settles it against the disk.
        let _ = registry.abort();
        return Err(e);
    }
    // The certificate is out: if it cannot be recorded as issued now, it
    // stays pending and the next run records it (it finds the file).
    registry.finish().map_err(|source| CaError::RecordPending {
        path: cert_path.clone(),
        source: Box::new(source),
    })?;
    Ok(SignedFiles {
        cert_path,
        record,
        renewed,
        ignored: request.ignored().to_vec(),
    })
}

/// The record of the CA in `dir`, in issue order.
///
/// # Errors
/// [`CaError::Read`] if `dir` holds no `ca.crt` (not a CA directory) or the
/// record cannot be read; [`CaError::Registry`] if it is malformed.
pub fn issued(dir: &Path) -> Result<Vec<IssuedRecord>, CaError> {
    let ca_cert = dir.join(CA_CERT_FILE);
    if let Err(source) = fs::metadata(&ca_cert) {
        return Err(CaError::Read {
            path: ca_cert,
            source,
        });
    }
    registry::read(dir)
}

/// The identity of the first certificate in a PEM file: the SHA-256 of its
/// DER `SubjectPublicKeyInfo` (see [`Identity`]).
///
/// # Errors
/// [`CaError::Read`], [`CaError::BadPem`] or [`CaError::BadCertificate`].
pub fn fingerprint_file(cert_pem_path: &Path) -> Result<Identity, CaError> {
    let path = cert_pem_path.to_path_buf();
    let pem = read_limited(cert_pem_path, MAX_CERT_BYTES)?;
    let der = CertificateDer::from_pem_slice(&pem).map_err(|source| CaError::BadPem {
        path: path.clone(),
        source,
    })?;
    Identity::from_certificate_der(&der).map_err(|source| CaError::BadCertificate { path, source })
}

/// A certificate and key made but not yet written.
struct Pending {
    cert_path: PathBuf,
    key_path: PathBuf,
    cert_pem: String,
    key_pem: String,
    identity: Identity,
    record: IssuedRecord,
}

/// Records every certificate as pending, writes their files, then records
/// them as issued; if a file cannot be written, removes what was written and
/// drops them from the record.
fn commit(
    registry: &mut LockedRegistry,
    pending: Vec<Pending>,
) -> Result<Vec<IssuedFiles>, CaError> {
    let entries = pending
        .iter()
        .map(|p| {
            Ok(PendingIssue {
                record: p.record.clone(),
                cert_path: absolute(&p.cert_path)?,
                key_path: Some(absolute(&p.key_path)?),
            })
        })
        .collect::<Result<Vec<_>, CaError>>()?;
    registry.begin(entries)?;
    let dir = registry.dir().to_path_buf();
    let mut written: Vec<&Pending> = Vec::with_capacity(pending.len());
    let mut result = Ok(());
    for files in &pending {
        result = write_copy(&dir, &files.cert_pem, &files.record.serial).and_then(|()| {
            write_pair(files).inspect_err(|_| {
                remove_quietly(&[&registry::copy_path(&dir, &files.record.serial)]);
            })
        });
        if result.is_err() {
            break;
        }
        written.push(files);
    }
    let result = result.and_then(|()| registry.finish());
    if let Err(e) = result {
        for done in written {
            remove_quietly(&[
                &done.cert_path,
                &done.key_path,
                &registry::copy_path(&dir, &done.record.serial),
            ]);
        }
        // Best effort: if the record cannot be settled now, the next run
        // finds no files and drops the entries.
        let _ = registry.abort();
        return Err(e);
    }
    Ok(pending
        .into_iter()
        .map(|p| IssuedFiles {
            cert_path: p.cert_path,
            key_path: p.key_path,
            identity: p.identity,
            record: p.record,
        })
        .collect())
}

/// The record entry for a certificate just made, issued now.
fn record_for(cert_der: &[u8], name: &str, kind: CertKind) -> Result<IssuedRecord, CaError> {
    let now = super::whole_seconds(OffsetDateTime::now_utc());
    registry::record_of(cert_der, name, kind, now)
        .map_err(|e| CaError::Sign(rcgen::Error::X509(e.to_string())))
}

/// `path` made absolute against the working directory, so that a pending
/// record names the same file for the next run wherever it is started.
fn absolute(path: &Path) -> Result<PathBuf, CaError> {
    std::path::absolute(path).map_err(|source| CaError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Refuses the key of the CA directory's own `server.crt` as a user's key,
/// whatever the record says.
fn refuse_server_key(ca_dir: &Path, identity: Identity) -> Result<(), CaError> {
    let server = ca_dir.join(SERVER_CERT_FILE);
    let server_identity = read_limited(&server, MAX_CERT_BYTES)
        .ok()
        .and_then(|pem| CertificateDer::from_pem_slice(&pem).ok())
        .and_then(|der| Identity::from_certificate_der(&der).ok());
    if server_identity == Some(identity) {
        return Err(CaError::KeyAlreadyIssued {
            identity,
            name: "server".to_owned(),
            kind: CertKind::Server,
        });
    }
    Ok(())
}

/// Whether a signed certificate may go to `path`: [`Clobber::Refuse`] if
/// nothing is there, [`Clobber::Replace`] if a certificate for the same key
/// is (a renewal replaces it), else [`CaError::AlreadyExists`].
fn replaceable(path: &Path, identity: Identity) -> Result<Clobber, CaError> {
    let meta = match path.symlink_metadata() {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Clobber::Refuse),
        Err(source) => {
            return Err(CaError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
        Ok(meta) => meta,
    };
    let same_key = meta.is_file()
        && read_limited(path, MAX_REQUEST_BYTES)
            .ok()
            .and_then(|pem| CertificateDer::from_pem_slice(&pem).ok())
            .and_then(|der| Identity::from_certificate_der(&der).ok())
            == Some(identity);
    if same_key {
        Ok(Clobber::Replace)
    } else {
        Err(CaError::AlreadyExists {
            path: path.to_path_buf(),
        })
    }
}

/// Reads a regular file of at most `limit` bytes, as [`CaError::Read`].
fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, CaError> {
    read_regular(path, limit).map_err(|source| CaError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn create_dir(dir: &Path) -> Result<(), CaError> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|source| CaError::CreateDir {
            path: dir.to_path_buf(),
            source,
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

fn remove_quietly(paths: &[&Path]) {
    for path in paths {
        // Best effort: only called to undo our own writes on a failure that
        // is being reported.
        let _ = fs::remove_file(path);
    }
}

/// Writes the key, then the certificate (or request). If the second cannot
/// be written the key is removed again: a key without its certificate is
/// useless, and its file would make every retry fail with `AlreadyExists`.
fn write_pair(files: &Pending) -> Result<(), CaError> {
    let Pending {
        cert_path,
        cert_pem,
        key_path,
        key_pem,
        record,
        ..
    } = files;
    write_atomic(key_path, key_pem.as_bytes(), KEY_MODE, Clobber::Refuse)?;
    if let Err(e) = write_certificate(cert_path, cert_pem, &record.serial, Clobber::Refuse) {
        remove_quietly(&[key_path]);
        return Err(e);
    }
    Ok(())
}

/// Writes the certificate with `serial` (hex) to `path` as [`write_atomic`]
/// does, through the temporary file [`registry::cert_temp_path`] names, so
/// that the run after a killed one removes it wherever `path` is.
fn write_certificate(
    path: &Path,
    pem: &str,
    serial: &str,
    clobber: Clobber,
) -> Result<(), CaError> {
    let prefix = format!("{LOCKED_TEMP_PREFIX}{serial}");
    write_atomic_as(&prefix, false, path, pem.as_bytes(), CERT_MODE, clobber)
}

/// Writes the CA's own copy of a certificate ([`registry::copy_path`]),
/// making the copies directory (mode 0700) if needed.
fn write_copy(dir: &Path, pem: &str, serial: &str) -> Result<(), CaError> {
    create_dir(&dir.join(registry::COPIES_DIR))?;
    write_certificate(
        &registry::copy_path(dir, serial),
        pem,
        serial,
        Clobber::Refuse,
    )
}

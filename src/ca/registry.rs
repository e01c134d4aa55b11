//! The record of what a CA issued: `issued.json` in the CA directory.
//!
//! One entry per certificate (serial, name, kind, fingerprint, validity, when
//! issued, and when and why it was revoked), appended in issue order; only
//! revocation changes an entry, and nothing removes one. It also keeps the
//! number of the last CRL signed, so that every CRL gets a larger one. It enforces "one key,
//! one identity": a key is issued under one name only, and a client name
//! belongs to one key; signing the same key for the same name again is a
//! renewal (new serial and validity, same fingerprint).
//!
//! Writers hold an exclusive `flock(2)` on the CA directory from the check to
//! the write, so two `jobs-ca` runs cannot both issue a name; the file is
//! replaced atomically (write a temporary file, fsync, rename, fsync the
//! directory), so a crash leaves the old record or the new one, never half.
//!
//! Certificates are recorded as *pending* (with the paths of their files)
//! before their files are written, and as issued once they are. A run that
//! was killed in between leaves pending entries; the next run that locks the
//! directory resolves them against the disk ([`Repairs`]): a certificate file
//! that holds the pending serial is recorded as issued, anything else is
//! dropped (with a key written for it alone), so the record never claims a
//! certificate that does not exist nor misses one that does.
//!
//! A CA directory without a record (made before it existed, or the file was
//! lost) gets one rebuilt from the certificates in the directory that this CA
//! signed: the CA itself, `server.crt`, and every `NAME.crt`. Certificates
//! written elsewhere (`sign --out`) cannot be found that way.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use rustls::pki_types::pem::PemObject;

use super::CaError;
use super::fsio::{CA_CERT_FILE, Clobber, LOCKED_TEMP_PREFIX, hex, read_regular, write_atomic};
use crate::auth::Identity;

/// The file name of the record inside a CA directory.
pub const REGISTRY_FILE: &str = "issued.json";

/// The record format written; a newer one is refused rather than rewritten.
/// Version 2 added revocations ([`IssuedRecord::revoked`]) and the number of
/// the last CRL; version 1 records (which have neither) are read as they
/// are and written back as version 2. A jobs-ca that reads only version 1
/// refuses a version 2 record with a clear message instead of issuing to a
/// revoked key it cannot see.
const FORMAT_VERSION: u32 = 2;

/// The oldest record format still read.
const OLDEST_FORMAT_VERSION: u32 = 1;

/// The largest record read: 64 MiB (about 200 000 certificates).
const MAX_REGISTRY_BYTES: u64 = 64 * 1024 * 1024;

/// Mode of the record: it holds names and fingerprints, nothing secret.
const REGISTRY_MODE: u32 = 0o644;

/// What a certificate is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertKind {
    /// The CA's own self-signed certificate.
    Ca,
    /// A server certificate (`serverAuth`).
    Server,
    /// A user certificate (`clientAuth`).
    Client,
}

impl CertKind {
    /// `ca`, `server` or `client`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ca => "ca",
            Self::Server => "server",
            Self::Client => "client",
        }
    }
}

/// One issued certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuedRecord {
    /// The serial number: lower-case hex of its DER INTEGER bytes.
    pub serial: String,
    /// The certificate's common name: the user's name for a client.
    pub name: String,
    /// What the certificate is for.
    pub kind: CertKind,
    /// The SPKI fingerprint of the certificate's key.
    #[serde(with = "fingerprint")]
    pub fingerprint: Identity,
    /// The first instant the certificate is valid (UTC).
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    /// The last instant the certificate is valid (UTC).
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// When it was issued (UTC).
    #[serde(with = "time::serde::rfc3339")]
    pub issued_at: OffsetDateTime,
    /// When and why it was revoked; `None` while it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<Revocation>,
}

/// The revocation of one certificate, as `jobs-ca revoke` recorded it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revocation {
    /// When it was revoked (UTC, whole seconds).
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Why.
    pub reason: RevocationReason,
}

/// Why a certificate was revoked: the reason codes of RFC 5280 §5.3.1 that
/// apply to a leaf (`certificateHold` and `removeFromCRL` are left out: a
/// revocation here is final), under their RFC names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RevocationReason {
    /// No reason given (code 0).
    Unspecified,
    /// The private key is, or may be, known to someone else (code 1).
    KeyCompromise,
    /// The CA's own key was compromised (code 2).
    CaCompromise,
    /// The holder's name or affiliation changed (code 3).
    AffiliationChanged,
    /// Replaced by another certificate (code 4).
    Superseded,
    /// No longer needed (code 5).
    CessationOfOperation,
    /// The holder's rights were withdrawn (code 9).
    PrivilegeWithdrawn,
    /// An attribute authority was compromised (code 10).
    AaCompromise,
}

impl RevocationReason {
    /// The RFC 5280 name (`keyCompromise`, …), as written in the record and
    /// shown by `jobs-ca list`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::KeyCompromise => "keyCompromise",
            Self::CaCompromise => "cACompromise",
            Self::AffiliationChanged => "affiliationChanged",
            Self::Superseded => "superseded",
            Self::CessationOfOperation => "cessationOfOperation",
            Self::PrivilegeWithdrawn => "privilegeWithdrawn",
            Self::AaCompromise => "aACompromise",
        }
    }

    /// The rcgen reason code written into the CRL entry.
    pub(super) fn to_rcgen(self) -> rcgen::RevocationReason {
        match self {
            Self::Unspecified => rcgen::RevocationReason::Unspecified,
            Self::KeyCompromise => rcgen::RevocationReason::KeyCompromise,
            Self::CaCompromise => rcgen::RevocationReason::CaCompromise,
            Self::AffiliationChanged => rcgen::RevocationReason::AffiliationChanged,
            Self::Superseded => rcgen::RevocationReason::Superseded,
            Self::CessationOfOperation => rcgen::RevocationReason::CessationOfOperation,
            Self::PrivilegeWithdrawn => rcgen::RevocationReason::PrivilegeWithdrawn,
            Self::AaCompromise => rcgen::RevocationReason::AaCompromise,
        }
    }
}

#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    version: u32,
    certificates: Vec<IssuedRecord>,
    /// Certificates whose files are being written (see the module doc).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pending: Vec<PendingIssue>,
    /// The number of the last CRL signed (0: none yet). Every CRL gets the
    /// next one, so a relying party can tell a newer list from an older.
    #[serde(default, skip_serializing_if = "is_zero")]
    crl_number: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Where the CA keeps its own copy of every certificate it issues (besides
/// the one it hands out): `issued/<serial>.crt` in the CA directory, so that
/// a lost record can be rebuilt from them all, wherever the others went.
pub const COPIES_DIR: &str = "issued";

/// The path of the CA's copy of the certificate with `serial` (hex).
pub(super) fn copy_path(dir: &Path, serial: &str) -> PathBuf {
    dir.join(COPIES_DIR).join(format!("{serial}.crt"))
}

/// The temporary file a certificate with `serial` is written to before it
/// is renamed to `cert_path`: named after the serial, beside `cert_path`, so
/// that the run after a killed one finds and removes it wherever it is.
pub(super) fn cert_temp_path(cert_path: &Path, serial: &str) -> PathBuf {
    let dir = cert_path.parent().unwrap_or(Path::new("."));
    dir.join(format!("{LOCKED_TEMP_PREFIX}{serial}.tmp"))
}

/// A certificate recorded before its files are written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PendingIssue {
    /// The entry it becomes once its certificate is on disk.
    pub record: IssuedRecord,
    /// Where its certificate goes: relative to the CA directory when inside
    /// it, else absolute.
    pub cert_path: PathBuf,
    /// Where its private key goes (as `cert_path`), when the CA made the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_path: Option<PathBuf>,
}

/// What opening a CA's record had to put right after an earlier run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Repairs {
    /// The record was missing and was rebuilt from this many certificates
    /// found in the CA directory (the CA's own included).
    pub rebuilt_from: Option<usize>,
    /// Certificates an interrupted run wrote completely: now recorded.
    pub completed: Vec<IssuedRecord>,
    /// Certificates an interrupted run did not write: dropped from the
    /// record (and their key files, if the run made the key, removed).
    pub dropped: Vec<IssuedRecord>,
    /// Temporary files of interrupted runs removed from the CA directory.
    pub temp_files_removed: usize,
}

impl Repairs {
    /// Whether anything was repaired.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// What the record says about issuing a client certificate for a key and name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientCheck {
    /// Neither the key nor the name has been issued.
    New,
    /// This key was issued under this name before: the latest such entry.
    Renewal(IssuedRecord),
}

/// The record, read under an exclusive lock on the CA directory that is held
/// until this value is dropped.
pub struct LockedRegistry {
    dir: PathBuf,
    file: RegistryFile,
    repairs: Repairs,
    _lock: Flock<File>,
}

impl LockedRegistry {
    /// Locks `dir` (waiting for another `jobs-ca` to finish), reads its
    /// record and repairs what an interrupted run left (see the module doc
    /// and [`LockedRegistry::repairs`]). A directory with neither a record
    /// nor a CA certificate has an empty record.
    ///
    /// # Errors
    /// [`CaError::Read`] if the directory cannot be opened or locked or the
    /// record cannot be read; [`CaError::Registry`] if it is malformed;
    /// [`CaError::Write`] if a repair cannot be written.
    pub fn open(dir: &Path) -> Result<Self, CaError> {
        let handle = File::open(dir).map_err(|source| CaError::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        let lock =
            Flock::lock(handle, FlockArg::LockExclusive).map_err(|(_, errno)| CaError::Read {
                path: dir.to_path_buf(),
                source: io::Error::from(errno),
            })?;
        // Under the lock no other run is writing: their temporary files are
        // leftovers of a killed one.
        let mut repairs = Repairs {
            temp_files_removed: remove_stale_temp_files(dir),
            ..Repairs::default()
        };
        let (mut file, found) = read_file(dir)?;
        let mut changed = false;
        if !found && dir.join(CA_CERT_FILE).exists() {
            file.certificates = rebuild(dir)?;
            repairs.rebuilt_from = Some(file.certificates.len());
            changed = true;
        }
        for pending in std::mem::take(&mut file.pending) {
            changed = true;
            let record = pending.record;
            let cert_path = dir.join(&pending.cert_path);
            let copy = copy_path(dir, &record.serial);
            // The run may have died between writing a temporary file and
            // renaming it into place: that file is never used.
            for target in [&cert_path, &copy] {
                let _ = std::fs::remove_file(cert_temp_path(target, &record.serial));
            }
            // A certificate for a key the CA made counts once it is where
            // the key is; one for a user's own key counts as soon as it may
            // have left (its file, or the CA's copy, which is written
            // first), so that key can never be issued a second name.
            let written = holds_certificate(&cert_path, &record)
                || (pending.key_path.is_none() && holds_certificate(&copy, &record));
            if written {
                repairs.completed.push(record.clone());
                file.certificates.push(record);
                continue;
            }
            if !file.certificates.iter().any(|r| r.serial == record.serial) {
                // Best effort: a copy left behind would only be found again
                // by a rebuild, which would then record a certificate no
                // one has.
                let _ = std::fs::remove_file(&copy);
            }
            if let Some(key_path) = &pending.key_path {
                remove_orphan_key(dir, &dir.join(key_path), &record, &file.certificates);
            }
            repairs.dropped.push(record);
        }
        let mut registry = Self {
            dir: dir.to_path_buf(),
            file,
            repairs,
            _lock: lock,
        };
        if changed {
            registry.save(registry.file.clone())?;
        }
        Ok(registry)
    }

    /// The CA directory.
    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    /// What opening the record repaired.
    pub fn repairs(&self) -> &Repairs {
        &self.repairs
    }

    /// Every entry, in issue order.
    pub fn records(&self) -> &[IssuedRecord] {
        &self.file.certificates
    }

    /// Whether a client certificate may be issued for `identity` under `name`.
    ///
    /// # Errors
    /// [`CaError::KeyAlreadyIssued`] if the key was issued under another name
    /// or as the CA's or a server's key; [`CaError::NameTaken`] if the name
    /// belongs to another key.
    pub fn check_client(&self, name: &str, identity: Identity) -> Result<ClientCheck, CaError> {
        let mut previous = None;
        for record in &self.file.certificates {
            let same_key = record.fingerprint == identity;
            if same_key && record.revoked.is_some() {
                return Err(CaError::KeyRevoked { identity });
            }
            let same_name = record.kind == CertKind::Client && record.name == name;
            match (same_key, same_name) {
                (true, true) => previous = Some(record),
                (true, false) => {
                    return Err(CaError::KeyAlreadyIssued {
                        identity,
                        name: record.name.clone(),
                        kind: record.kind,
                    });
                }
                (false, true) => {
                    return Err(CaError::NameTaken {
                        name: name.to_owned(),
                        identity: record.fingerprint,
                    });
                }
                (false, false) => {}
            }
        }
        Ok(previous.map_or(ClientCheck::New, |r| ClientCheck::Renewal(r.clone())))
    }

    /// Records `entries` as pending, atomically, before their files are
    /// written; [`LockedRegistry::finish`] or [`LockedRegistry::abort`]
    /// settles them. Paths inside the CA directory are kept relative to it,
    /// so that the directory can be moved with a run pending.
    ///
    /// # Errors
    /// [`CaError::Write`]; on error the record on disk is unchanged.
    pub(super) fn begin(&mut self, entries: Vec<PendingIssue>) -> Result<(), CaError> {
        let base = std::path::absolute(&self.dir).map_err(|source| CaError::Write {
            path: self.path(),
            source,
        })?;
        let relative = |path: PathBuf| -> Result<PathBuf, CaError> {
            let path = std::path::absolute(&path).map_err(|source| CaError::Write {
                path: path.clone(),
                source,
            })?;
            // `absolute` does not resolve `..`: a path that climbs out of
            // the directory stays absolute.
            let inside = path.strip_prefix(&base).ok().filter(|rest| {
                rest.components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)))
            });
            Ok(inside.map_or_else(|| path.clone(), Path::to_path_buf))
        };
        let mut file = self.file.clone();
        for entry in entries {
            file.pending.push(PendingIssue {
                cert_path: relative(entry.cert_path)?,
                key_path: entry.key_path.map(relative).transpose()?,
                record: entry.record,
            });
        }
        self.save(file)
    }

    /// The pending entries' files are written: records them as issued.
    ///
    /// # Errors
    /// [`CaError::Write`]; the entries stay pending on disk, and the next run
    /// finds their files and records them.
    pub(super) fn finish(&mut self) -> Result<(), CaError> {
        let mut file = self.file.clone();
        let done = std::mem::take(&mut file.pending);
        file.certificates
            .extend(done.into_iter().map(|pending| pending.record));
        self.save(file)
    }

    /// The pending entries' files could not be written (and what was written
    /// has been removed): drops them.
    ///
    /// # Errors
    /// [`CaError::Write`]; the entries stay pending on disk, and the next run
    /// finds no files and drops them.
    pub(super) fn abort(&mut self) -> Result<(), CaError> {
        let mut file = self.file.clone();
        file.pending.clear();
        self.save(file)
    }

    /// Marks every certificate of `identity` not yet revoked as revoked by
    /// `revocation`, takes the next CRL number, and writes the record
    /// atomically. Returns the serials newly revoked and the CRL number.
    ///
    /// # Errors
    /// [`CaError::Write`]; on error the record on disk is unchanged.
    pub(super) fn revoke(
        &mut self,
        identity: Identity,
        revocation: Revocation,
    ) -> Result<(Vec<String>, u64), CaError> {
        let mut file = self.file.clone();
        let mut serials = Vec::new();
        for record in &mut file.certificates {
            if record.fingerprint == identity && record.revoked.is_none() {
                record.revoked = Some(revocation);
                serials.push(record.serial.clone());
            }
        }
        file.crl_number += 1;
        let number = file.crl_number;
        self.save(file)?;
        Ok((serials, number))
    }

    /// Takes the next CRL number and writes the record atomically.
    ///
    /// # Errors
    /// [`CaError::Write`]; on error the record on disk is unchanged.
    pub(super) fn next_crl_number(&mut self) -> Result<u64, CaError> {
        let mut file = self.file.clone();
        file.crl_number += 1;
        let number = file.crl_number;
        self.save(file)?;
        Ok(number)
    }

    /// Writes `file` as the whole record, atomically, and keeps it.
    fn save(&mut self, mut file: RegistryFile) -> Result<(), CaError> {
        file.version = FORMAT_VERSION;
        let mut json = serde_json::to_vec_pretty(&file).map_err(|e| CaError::Write {
            path: self.path(),
            source: io::Error::other(e),
        })?;
        json.push(b'\n');
        write_atomic(&self.path(), &json, REGISTRY_MODE, Clobber::Replace)?;
        self.file = file;
        Ok(())
    }

    fn path(&self) -> PathBuf {
        self.dir.join(REGISTRY_FILE)
    }
}

/// Reads the record of the CA in `dir` without locking it (a writer replaces
/// it atomically, so a reader sees one whole version): the certificates
/// issued, without pending ones.
///
/// # Errors
/// [`CaError::Read`]; [`CaError::Registry`] if it is malformed.
pub fn read(dir: &Path) -> Result<Vec<IssuedRecord>, CaError> {
    Ok(read_file(dir)?.0.certificates)
}

/// The record and whether it exists (a missing one reads as empty).
fn read_file(dir: &Path) -> Result<(RegistryFile, bool), CaError> {
    let path = dir.join(REGISTRY_FILE);
    let bytes = match read_regular(&path, MAX_REGISTRY_BYTES) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok((
                RegistryFile {
                    version: FORMAT_VERSION,
                    ..RegistryFile::default()
                },
                false,
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            return Err(CaError::Registry {
                path,
                reason: e.to_string(),
            });
        }
        Err(source) => return Err(CaError::Read { path, source }),
    };
    let parsed: RegistryFile = serde_json::from_slice(&bytes).map_err(|e| CaError::Registry {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&parsed.version) {
        return Err(CaError::Registry {
            path,
            reason: format!(
                "format version {} (this jobs-ca reads versions {OLDEST_FORMAT_VERSION} to {FORMAT_VERSION})",
                parsed.version
            ),
        });
    }
    let serials = parsed
        .certificates
        .iter()
        .chain(parsed.pending.iter().map(|p| &p.record))
        .map(|r| &r.serial);
    for serial in serials {
        let hex = !serial.is_empty()
            && serial.len() <= 40
            && serial
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !hex {
            return Err(CaError::Registry {
                path,
                reason: format!(
                    "serial {:?} is not 1 to 40 lower-case hex digits",
                    serial.escape_debug().to_string()
                ),
            });
        }
    }
    Ok((parsed, true))
}

/// The record entry for a certificate, read from the certificate itself so
/// the record cannot say something the certificate does not.
pub(super) fn record_of(
    cert_der: &[u8],
    name: &str,
    kind: CertKind,
    issued_at: OffsetDateTime,
) -> Result<IssuedRecord, x509_parser::nom::Err<x509_parser::error::X509Error>> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)?;
    Ok(IssuedRecord {
        serial: hex(cert.raw_serial()),
        name: name.to_owned(),
        kind,
        fingerprint: Identity::from_spki_der(cert.public_key().raw),
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
        issued_at,
        revoked: None,
    })
}

/// Rebuilds a lost record from the certificates in the CA directory that the
/// CA signed: `ca.crt` itself (`ca`), `server.crt` (`server`), and every
/// other `*.crt` leaf (a client under its common name when that is a valid
/// client name, else under its file name). Ordered by `notBefore`; the
/// issue time is taken to be `notBefore` + [`super::BACKDATE`].
fn rebuild(dir: &Path) -> Result<Vec<IssuedRecord>, CaError> {
    let ca_path = dir.join(CA_CERT_FILE);
    let ca_der = read_certificate(&ca_path).ok_or_else(|| CaError::Registry {
        path: dir.join(REGISTRY_FILE),
        reason: format!(
            "it is missing, and {} cannot be read to rebuild it",
            ca_path.display()
        ),
    })?;
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).map_err(|e| CaError::Registry {
        path: dir.join(REGISTRY_FILE),
        reason: format!(
            "it is missing, and {} is not a certificate: {e}",
            ca_path.display()
        ),
    })?;
    let issued_at = |record: &IssuedRecord| record.not_before + super::BACKDATE;
    let mut records = Vec::new();
    if let Ok(mut record) = record_of(&ca_der, "ca", CertKind::Ca, OffsetDateTime::UNIX_EPOCH) {
        record.issued_at = issued_at(&record);
        records.push(record);
    }
    for path in certificate_files(dir) {
        let Some(stem) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".crt"))
        else {
            continue;
        };
        if path == ca_path {
            continue;
        }
        let Some(der) = read_certificate(&path) else {
            continue;
        };
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(&der) else {
            continue;
        };
        if cert.verify_signature(Some(ca.public_key())).is_err() {
            continue;
        }
        let eku = cert.extended_key_usage().ok().flatten().map(|e| e.value);
        let (name, kind) = if eku.as_ref().is_some_and(|e| e.server_auth) {
            ("server".to_owned(), CertKind::Server)
        } else {
            let cn = cert
                .subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .filter(|cn| super::validate_client_name(cn).is_ok())
                .unwrap_or(stem);
            (cn.to_owned(), CertKind::Client)
        };
        if let Ok(mut record) = record_of(&der, &name, kind, OffsetDateTime::UNIX_EPOCH) {
            record.issued_at = issued_at(&record);
            if !records.iter().any(|r| r.serial == record.serial) {
                records.push(record);
            }
        }
    }
    records.sort_by(|a, b| {
        (a.kind != CertKind::Ca, a.not_before, &a.name).cmp(&(
            b.kind != CertKind::Ca,
            b.not_before,
            &b.name,
        ))
    });
    Ok(records)
}

/// Every `*.crt` in the CA directory `dir` and among its copies
/// ([`COPIES_DIR`]).
fn certificate_files(dir: &Path) -> Vec<PathBuf> {
    [dir.to_path_buf(), dir.join(COPIES_DIR)]
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|x| x == "crt"))
        .collect()
}

/// Whether `path` holds the certificate `record` describes: its serial and
/// its key.
fn holds_certificate(path: &Path, record: &IssuedRecord) -> bool {
    read_certificate(path)
        .and_then(|der| {
            x509_parser::parse_x509_certificate(&der)
                .ok()
                .map(|(_, cert)| {
                    hex(cert.raw_serial()) == record.serial
                        && Identity::from_spki_der(cert.public_key().raw) == record.fingerprint
                })
        })
        .unwrap_or(false)
}

/// The DER of the first PEM certificate in a regular file of at most 1 MiB.
fn read_certificate(path: &Path) -> Option<Vec<u8>> {
    let pem = read_regular(path, 1024 * 1024).ok()?;
    rustls::pki_types::CertificateDer::from_pem_slice(&pem)
        .ok()
        .map(|der| der.to_vec())
}

/// Removes the key file at `path`, made by an interrupted run for the
/// certificate `record` it never wrote, if and only if: it is a regular file
/// directly in the CA directory `dir` (where issuing writes keys), it holds
/// the private key of `record`, no certificate in `issued` has that key, and
/// no certificate file in the directory or among the CA's copies does. A
/// record naming anything else
/// (edited by hand, say) never makes this delete a key that is in use.
fn remove_orphan_key(dir: &Path, path: &Path, record: &IssuedRecord, issued: &[IssuedRecord]) {
    let in_ca_dir = match (std::path::absolute(dir), std::path::absolute(path)) {
        (Ok(dir), Ok(path)) => path.parent() == Some(dir.as_path()),
        _ => false,
    };
    let is_file = path
        .symlink_metadata()
        .is_ok_and(|m| m.file_type().is_file());
    let in_use = issued.iter().any(|r| r.fingerprint == record.fingerprint)
        || certificate_files(dir).into_iter().any(|path| {
            read_certificate(&path).is_some_and(|der| {
                Identity::from_certificate_der(&der).is_ok_and(|id| id == record.fingerprint)
            })
        });
    if !in_ca_dir || !is_file || in_use {
        return;
    }
    let identity = record.fingerprint;
    let matches = read_regular(path, 64 * 1024)
        .ok()
        .and_then(|pem| String::from_utf8(pem).ok())
        .and_then(|pem| rcgen::KeyPair::from_pem(&pem).ok())
        .is_some_and(|key| {
            use rcgen::PublicKeyData as _;
            Identity::from_spki_der(&key.subject_public_key_info()) == identity
        });
    if matches {
        // Best effort: a leftover key file only makes a retry say it exists.
        let _ = std::fs::remove_file(path);
    }
}

/// Removes the temporary files of killed runs from `dir`; returns how many.
fn remove_stale_temp_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|entry| {
            entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(LOCKED_TEMP_PREFIX) && n.ends_with(".tmp"))
                && entry.file_type().is_ok_and(|t| t.is_file())
        })
        .filter(|entry| std::fs::remove_file(entry.path()).is_ok())
        .count()
}

/// How a listed certificate stands now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CertStatus {
    /// Within its validity period and not replaced.
    Valid,
    /// Its `notBefore` is still in the future.
    NotYetValid,
    /// Past its `notAfter`.
    Expired,
    /// A later certificate was issued for the same key and name (a renewal).
    /// The old one still works until it expires unless it is revoked.
    Renewed,
    /// Revoked by `jobs-ca revoke` (whatever its dates say).
    Revoked,
}

/// An entry of the record as it stands at some instant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    /// The entry.
    pub record: IssuedRecord,
    /// Whole days until `not_after`, rounded down (0 in its last day,
    /// negative once expired).
    pub days_left: i64,
    /// Its status at that instant.
    pub status: CertStatus,
}

/// The record's entries as they stand at `now`, in issue order.
pub fn listing(records: &[IssuedRecord], now: OffsetDateTime) -> Vec<Listed> {
    records
        .iter()
        .enumerate()
        .map(|(i, record)| {
            let renewed = records[i + 1..].iter().any(|later| {
                later.fingerprint == record.fingerprint
                    && later.name == record.name
                    && later.kind == record.kind
            });
            let status = if record.revoked.is_some() {
                CertStatus::Revoked
            } else if now > record.not_after {
                CertStatus::Expired
            } else if now < record.not_before {
                CertStatus::NotYetValid
            } else if renewed {
                CertStatus::Renewed
            } else {
                CertStatus::Valid
            };
            Listed {
                days_left: (record.not_after - now).whole_seconds().div_euclid(86_400),
                status,
                record: record.clone(),
            }
        })
        .collect()
}

/// Serde for [`Identity`] as its canonical `sha256:<64 hex>` text.
mod fingerprint {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::auth::Identity;

    pub fn serialize<S: Serializer>(identity: &Identity, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(identity)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Identity, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use time::Duration;

    use super::*;

    fn id(byte: u8) -> Identity {
        format!("sha256:{}", format!("{byte:02x}").repeat(32))
            .parse()
            .unwrap()
    }

    fn entry(
        name: &str,
        kind: CertKind,
        key: u8,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> IssuedRecord {
        IssuedRecord {
            serial: format!("{key:02x}{}", name.len()),
            name: name.to_owned(),
            kind,
            fingerprint: id(key),
            not_before: from,
            not_after: to,
            issued_at: from,
            revoked: None,
        }
    }

    #[test]
    fn listing_rounds_days_down_and_tells_renewed_from_valid() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let day = Duration::days(1);
        let records = [
            entry("a", CertKind::Client, 1, now - day, now + day * 1.5),
            entry(
                "a",
                CertKind::Client,
                1,
                now - day,
                now + Duration::hours(23),
            ),
            entry(
                "b",
                CertKind::Client,
                2,
                now - day * 3,
                now - Duration::hours(1),
            ),
            entry("c", CertKind::Client, 3, now + day, now + day * 9),
            entry("server", CertKind::Server, 4, now - day, now + day * 30),
        ];
        let listed = listing(&records, now);
        let got: Vec<(i64, CertStatus)> = listed.iter().map(|l| (l.days_left, l.status)).collect();
        assert_eq!(
            got,
            [
                (1, CertStatus::Renewed),
                (0, CertStatus::Valid),
                (-1, CertStatus::Expired),
                (9, CertStatus::NotYetValid),
                (30, CertStatus::Valid),
            ]
        );
    }

    #[test]
    fn revoked_outranks_every_other_status_and_a_revoked_key_gets_nothing() {
        // Scenario: a revoked certificate lists as revoked whether it is
        // current, expired or renewed, and its key cannot be issued again.
        let dir = tempfile::tempdir().unwrap();
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let day = Duration::days(1);
        let revocation = Revocation {
            at: now,
            reason: RevocationReason::KeyCompromise,
        };
        let mut records = [
            entry("a", CertKind::Client, 1, now - day, now + day),
            entry("a", CertKind::Client, 1, now - day, now + day * 2),
            entry("b", CertKind::Client, 2, now - day * 3, now - day),
        ];
        for r in &mut records {
            r.revoked = Some(revocation);
        }
        let got: Vec<CertStatus> = listing(&records, now).iter().map(|l| l.status).collect();
        assert_eq!(got, [CertStatus::Revoked; 3]);

        let mut registry = LockedRegistry::open(dir.path()).unwrap();
        registry
            .begin(vec![PendingIssue {
                record: entry("a", CertKind::Client, 1, now, now + day),
                cert_path: dir.path().join("a.crt"),
                key_path: None,
            }])
            .unwrap();
        registry.finish().unwrap();
        let (serials, number) = registry.revoke(id(1), revocation).unwrap();
        assert_eq!((serials.len(), number), (1, 1));
        assert_eq!(registry.next_crl_number().unwrap(), 2);
        assert!(matches!(
            registry.check_client("a", id(1)),
            Err(CaError::KeyRevoked { identity }) if identity == id(1)
        ));
        drop(registry);
        let text = std::fs::read_to_string(dir.path().join(REGISTRY_FILE)).unwrap();
        assert!(text.contains("\"reason\": \"keyCompromise\""), "{text}");
        assert!(text.contains("\"crl_number\": 2"), "{text}");
        assert!(text.contains("\"version\": 2"), "{text}");
    }

    #[test]
    fn one_key_one_name_and_renewal_is_the_same_key_and_name() {
        // Scenario: the rules `sign` enforces, on a record written and read back.
        let dir = tempfile::tempdir().unwrap();
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let later = now + Duration::days(10);
        let mut registry = LockedRegistry::open(dir.path()).unwrap();
        assert!(registry.records().is_empty());
        let pending = |record| PendingIssue {
            record,
            cert_path: dir.path().join("never-written.crt"),
            key_path: None,
        };
        registry
            .begin(vec![
                pending(entry("server", CertKind::Server, 9, now, later)),
                pending(entry("alice", CertKind::Client, 1, now, later)),
            ])
            .unwrap();
        registry.finish().unwrap();
        drop(registry);
        assert_eq!(read(dir.path()).unwrap().len(), 2);

        let registry = LockedRegistry::open(dir.path()).unwrap();
        assert_eq!(
            registry.check_client("bob", id(2)).unwrap(),
            ClientCheck::New
        );
        assert!(matches!(
            registry.check_client("alice", id(1)).unwrap(),
            ClientCheck::Renewal(r) if r.fingerprint == id(1) && r.name == "alice"
        ));
        assert!(matches!(
            registry.check_client("bob", id(1)),
            Err(CaError::KeyAlreadyIssued { name, kind: CertKind::Client, .. }) if name == "alice"
        ));
        assert!(matches!(
            registry.check_client("alice", id(2)),
            Err(CaError::NameTaken { name, identity }) if name == "alice" && identity == id(1)
        ));
        assert!(matches!(
            registry.check_client("web", id(9)),
            Err(CaError::KeyAlreadyIssued {
                kind: CertKind::Server,
                ..
            })
        ));
        // A file in the record's format survives a round trip exactly.
        let text = std::fs::read_to_string(dir.path().join(REGISTRY_FILE)).unwrap();
        assert!(text.contains("\"fingerprint\": \"sha256:0101"), "{text}");
        assert!(
            text.contains("\"not_before\": \"2027-01-15T08:00:00Z\""),
            "{text}"
        );
    }
}

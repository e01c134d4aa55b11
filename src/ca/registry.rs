//! The record of what a CA issued: `issued.json` in the CA directory.
//!
//! One entry per certificate (serial, name, kind, fingerprint, validity, when
//! issued), appended in issue order and never rewritten. It enforces "one key,
//! one identity": a key is issued under one name only, and a client name
//! belongs to one key; signing the same key for the same name again is a
//! renewal (new serial and validity, same fingerprint).
//!
//! Writers hold an exclusive `flock(2)` on the CA directory from the check to
//! the write, so two `jobs-ca` runs cannot both issue a name; the file is
//! replaced atomically (write a temporary file, fsync, rename, fsync the
//! directory), so a crash leaves the old record or the new one, never half.
//!
//! A CA directory made before this record existed has none: the record starts
//! empty and knows only what is issued from then on.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::CaError;
use super::files::{Clobber, write_atomic};
use crate::auth::Identity;

/// The file name of the record inside a CA directory.
pub const REGISTRY_FILE: &str = "issued.json";

/// The record format written; a newer one is refused rather than rewritten.
const FORMAT_VERSION: u32 = 1;

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
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    version: u32,
    certificates: Vec<IssuedRecord>,
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
    records: Vec<IssuedRecord>,
    _lock: Flock<File>,
}

impl LockedRegistry {
    /// Locks `dir` (waiting for another `jobs-ca` to finish) and reads its
    /// record; a missing record is an empty one.
    ///
    /// # Errors
    /// [`CaError::Read`] if the directory cannot be opened or locked or the
    /// record cannot be read; [`CaError::Registry`] if it is malformed.
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
        Ok(Self {
            dir: dir.to_path_buf(),
            records: read(dir)?,
            _lock: lock,
        })
    }

    /// Every entry, in issue order.
    pub fn records(&self) -> &[IssuedRecord] {
        &self.records
    }

    /// Whether a client certificate may be issued for `identity` under `name`.
    ///
    /// # Errors
    /// [`CaError::KeyAlreadyIssued`] if the key was issued under another name
    /// or as the CA's or a server's key; [`CaError::NameTaken`] if the name
    /// belongs to another key.
    pub fn check_client(&self, name: &str, identity: Identity) -> Result<ClientCheck, CaError> {
        let mut previous = None;
        for record in &self.records {
            let same_key = record.fingerprint == identity;
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

    /// Appends `entries` and writes the record atomically.
    ///
    /// # Errors
    /// [`CaError::Write`]; on error the record on disk is unchanged.
    pub fn append(
        &mut self,
        entries: impl IntoIterator<Item = IssuedRecord>,
    ) -> Result<(), CaError> {
        let mut records = self.records.clone();
        records.extend(entries);
        self.replace(records)
    }

    /// Writes `records` as the whole record, atomically: used to undo an
    /// [`LockedRegistry::append`] whose certificates could not be written.
    ///
    /// # Errors
    /// [`CaError::Write`]; on error the record on disk is unchanged.
    pub(super) fn replace(&mut self, records: Vec<IssuedRecord>) -> Result<(), CaError> {
        let file = RegistryFile {
            version: FORMAT_VERSION,
            certificates: records,
        };
        let mut json = serde_json::to_vec_pretty(&file).map_err(|e| CaError::Write {
            path: self.path(),
            source: io::Error::other(e),
        })?;
        json.push(b'\n');
        write_atomic(&self.path(), &json, REGISTRY_MODE, Clobber::Replace)?;
        self.records = file.certificates;
        Ok(())
    }

    fn path(&self) -> PathBuf {
        self.dir.join(REGISTRY_FILE)
    }
}

/// Reads the record of the CA in `dir` without locking it (a writer replaces
/// it atomically, so a reader sees one whole version).
///
/// # Errors
/// [`CaError::Read`]; [`CaError::Registry`] if it is malformed.
pub fn read(dir: &Path) -> Result<Vec<IssuedRecord>, CaError> {
    let path = dir.join(REGISTRY_FILE);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(CaError::Read { path, source }),
    };
    let read_error = |source| CaError::Read {
        path: path.clone(),
        source,
    };
    let meta = file.metadata().map_err(read_error)?;
    if !meta.is_file() {
        return Err(CaError::Registry {
            path,
            reason: "not a regular file".into(),
        });
    }
    if meta.len() > MAX_REGISTRY_BYTES {
        return Err(CaError::Registry {
            path,
            reason: format!("larger than {MAX_REGISTRY_BYTES} bytes"),
        });
    }
    let mut bytes = Vec::new();
    io::Read::read_to_end(&mut io::Read::take(&file, MAX_REGISTRY_BYTES), &mut bytes)
        .map_err(read_error)?;
    let parsed: RegistryFile = serde_json::from_slice(&bytes).map_err(|e| CaError::Registry {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    if parsed.version != FORMAT_VERSION {
        return Err(CaError::Registry {
            path,
            reason: format!(
                "format version {} (this jobs-ca reads version {FORMAT_VERSION})",
                parsed.version
            ),
        });
    }
    Ok(parsed.certificates)
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
    /// The old one still works until it expires: there is no revocation.
    Renewed,
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
            let status = if now > record.not_after {
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
    fn one_key_one_name_and_renewal_is_the_same_key_and_name() {
        // Scenario: the rules `sign` enforces, on a record written and read back.
        let dir = tempfile::tempdir().unwrap();
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let later = now + Duration::days(10);
        let mut registry = LockedRegistry::open(dir.path()).unwrap();
        assert!(registry.records().is_empty());
        registry
            .append([
                entry("server", CertKind::Server, 9, now, later),
                entry("alice", CertKind::Client, 1, now, later),
            ])
            .unwrap();
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

//! Revocation: marking an identity's certificates revoked in the record and
//! signing the CA's certificate revocation list (`crl.pem`).
//!
//! One key is one identity, so revocation works per identity: naming one of
//! its certificates (by name, fingerprint or serial) revokes every
//! certificate the record holds for that key, renewals included. The record
//! is written first (it is what the CRL is made from), then the CRL,
//! atomically, under the CA directory's lock; a crash in between leaves a
//! record that `jobs-ca crl` turns into the CRL it should have produced.
//!
//! Every CRL gets the next number (kept in the record), a `thisUpdate`
//! backdated by [`super::BACKDATE`] like every certificate (for verifiers
//! whose clock runs behind), and a `nextUpdate` [`DEFAULT_CRL_DAYS`] later
//! unless told otherwise: a daemon refuses a CRL past its `nextUpdate`, so
//! `jobs-ca crl` must re-sign it before then.

use std::path::{Path, PathBuf};

use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber};
use time::{Duration, OffsetDateTime};

use super::fsio::{CRL_FILE, Clobber, write_atomic};
use super::registry::{CertKind, IssuedRecord, LockedRegistry, Revocation, RevocationReason};
use super::{BACKDATE, CaError, CertAuthority, whole_seconds};
use crate::auth::Identity;

/// Default validity of a CRL: 30 days. Long enough that a monthly `jobs-ca
/// crl` (from cron, say) keeps it current with margin; short enough that an
/// old copy replayed to a daemon stops being accepted within a month.
pub const DEFAULT_CRL_DAYS: u32 = 30;

/// The longest CRL validity accepted: 366 days. Beyond a year an old list
/// would stay acceptable for too long after newer ones exist.
pub const MAX_CRL_DAYS: u32 = 366;

/// Mode of `crl.pem`: public, like the certificates.
const CRL_MODE: u32 = 0o644;

/// The CRL just written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrlInfo {
    /// Where it was written (`DIR/crl.pem`).
    pub path: PathBuf,
    /// Its CRL number; each CRL of a CA has a larger one than the last.
    pub number: u64,
    /// Its `thisUpdate` (now minus [`BACKDATE`]).
    pub this_update: OffsetDateTime,
    /// Its `nextUpdate`: re-sign it with `jobs-ca crl` before then.
    pub next_update: OffsetDateTime,
    /// How many certificates it lists.
    pub revoked: usize,
}

/// What [`revoke`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revoked {
    /// The identity revoked.
    pub identity: Identity,
    /// Its name in the record.
    pub name: String,
    /// The serials revoked by this call (empty if all were revoked before).
    pub serials: Vec<String>,
    /// The CRL written.
    pub crl: CrlInfo,
}

/// Revokes every certificate of the identity `target` names in the CA
/// directory `dir`, records why (`reason`) and when, and writes `DIR/crl.pem`
/// valid for `crl_days`.
///
/// `target` is, in this order: `sha256:<64 hex>`, a fingerprint; a client
/// name in the record; a serial in the record (lower-case hex, as `jobs-ca
/// list` shows it). Revoking an identity again revokes nothing new but
/// re-signs the CRL.
///
/// # Errors
/// [`CaError::UnknownCertificate`] if `target` names nothing in the record
/// and [`CaError::RevokeRefused`] for the CA's or the server's certificate
/// (nothing is written for either); [`CaError::InvalidCrlDays`];
/// [`CaError::Read`] and the other errors of [`CertAuthority::load`] if the
/// CA cannot be loaded; [`CaError::Write`] if the record or the CRL cannot be
/// written; [`CaError::Sign`].
pub fn revoke(
    dir: &Path,
    target: &str,
    reason: RevocationReason,
    crl_days: u32,
) -> Result<Revoked, CaError> {
    check_days(crl_days)?;
    let mut registry = LockedRegistry::open(dir)?;
    let record = resolve(registry.records(), target)?.clone();
    if record.kind != CertKind::Client {
        return Err(CaError::RevokeRefused {
            name: record.name,
            kind: record.kind,
        });
    }
    // Loaded before anything is written: a CA that cannot sign changes nothing.
    let ca = CertAuthority::load(dir)?;
    let now = whole_seconds(OffsetDateTime::now_utc());
    let (serials, number) = registry.revoke(record.fingerprint, Revocation { at: now, reason })?;
    let crl = sign_and_write(dir, &ca, registry.records(), number, now, crl_days)?;
    Ok(Revoked {
        identity: record.fingerprint,
        name: record.name,
        serials,
        crl,
    })
}

/// Re-signs `DIR/crl.pem` from the record with the next CRL number, a fresh
/// `thisUpdate` and a `nextUpdate` `crl_days` from now. Run it before the
/// current CRL's `nextUpdate`.
///
/// # Errors
/// [`CaError::InvalidCrlDays`]; those of [`CertAuthority::load`];
/// [`CaError::Write`]; [`CaError::Sign`].
pub fn write_crl(dir: &Path, crl_days: u32) -> Result<CrlInfo, CaError> {
    check_days(crl_days)?;
    let mut registry = LockedRegistry::open(dir)?;
    let ca = CertAuthority::load(dir)?;
    let now = whole_seconds(OffsetDateTime::now_utc());
    let number = registry.next_crl_number()?;
    sign_and_write(dir, &ca, registry.records(), number, now, crl_days)
}

fn check_days(days: u32) -> Result<(), CaError> {
    if days == 0 || days > MAX_CRL_DAYS {
        return Err(CaError::InvalidCrlDays {
            days,
            max: MAX_CRL_DAYS,
        });
    }
    Ok(())
}

/// The record entry `target` names (see [`revoke`] for the order).
fn resolve<'a>(records: &'a [IssuedRecord], target: &str) -> Result<&'a IssuedRecord, CaError> {
    let found = if target.starts_with("sha256:") {
        target
            .parse::<Identity>()
            .ok()
            .and_then(|id| records.iter().find(|r| r.fingerprint == id))
    } else {
        records
            .iter()
            .find(|r| r.kind == CertKind::Client && r.name == target)
            .or_else(|| records.iter().find(|r| r.serial == target))
            .or_else(|| {
                records
                    .iter()
                    .find(|r| r.kind != CertKind::Client && r.name == target)
            })
    };
    found.ok_or_else(|| CaError::UnknownCertificate {
        target: target.to_owned(),
    })
}

/// Signs the CRL listing every revoked certificate in `records` and writes
/// it to `DIR/crl.pem` atomically.
fn sign_and_write(
    dir: &Path,
    ca: &CertAuthority,
    records: &[IssuedRecord],
    number: u64,
    now: OffsetDateTime,
    days: u32,
) -> Result<CrlInfo, CaError> {
    let revoked_certs: Vec<RevokedCertParams> = records
        .iter()
        .filter_map(|r| {
            let revocation = r.revoked?;
            Some(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&unhex(&r.serial)?),
                revocation_time: revocation.at,
                reason_code: Some(revocation.reason.to_rcgen()),
                invalidity_date: None,
            })
        })
        .collect();
    let this_update = now - BACKDATE;
    let next_update = now + Duration::days(i64::from(days));
    let params = CertificateRevocationListParams {
        this_update,
        next_update,
        crl_number: SerialNumber::from_slice(minimal(&number.to_be_bytes())),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let pem = ca.sign_crl(&params)?;
    let path = dir.join(CRL_FILE);
    write_atomic(&path, pem.as_bytes(), CRL_MODE, Clobber::Replace)?;
    Ok(CrlInfo {
        path,
        number,
        this_update,
        next_update,
        revoked: params.revoked_certs.len(),
    })
}

/// `bytes` without leading zero bytes (at least one byte): the CRL number
/// is a DER INTEGER, which must be minimally encoded.
fn minimal(bytes: &[u8]) -> &[u8] {
    let first = bytes
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(bytes.len() - 1);
    &bytes[first..]
}

/// The bytes of a lower-case hex serial from the record (validated when the
/// record was read, so `None` only for a record edited in memory).
fn unhex(hex: &str) -> Option<Vec<u8>> {
    if hex.len() % 2 != 0 {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect()
}

//! The bottom of the CA module: the CA directory's file names and the two
//! file primitives everything above uses — a bounded read that never blocks,
//! and an atomic write (temporary file, fsync, rename, fsync the directory).
//!
//! It imports nothing from the rest of `ca`, so `registry`, `authority`,
//! `files` and `revoke` all point down to it and never at each other in a
//! circle.

use std::fs::{File, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::CaError;

/// The CA certificate, in PEM. Give it to servers and clients.
pub const CA_CERT_FILE: &str = "ca.crt";
/// The CA private key, in PEM. Never leaves the CA directory.
pub const CA_KEY_FILE: &str = "ca.key";
/// The server certificate, in PEM.
pub const SERVER_CERT_FILE: &str = "server.crt";
/// The server private key, in PEM.
pub const SERVER_KEY_FILE: &str = "server.key";
/// The certificate revocation list, in PEM (`X509 CRL`): give it to
/// `jobsd --crl`. Rewritten by `jobs-ca revoke` and `jobs-ca crl`.
pub const CRL_FILE: &str = "crl.pem";

/// Prefix of the temporary files written under the CA directory's lock. A
/// run that holds the lock removes those it finds: their writer was killed.
pub(super) const LOCKED_TEMP_PREFIX: &str = ".jobs-ca-issuing-";

/// Reads a regular file of at most `limit` bytes without ever blocking (see
/// [`crate::bounded`]); anything but a regular file, or a larger one, is an
/// [`io::ErrorKind::InvalidData`] error.
pub(super) fn read_regular(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    crate::bounded::read_bounded(path, limit).map_err(crate::bounded::BoundedReadError::into_io)
}

/// Whether [`write_atomic`] may replace an existing file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Clobber {
    /// Fail with [`CaError::AlreadyExists`] if anything (even a dangling
    /// symlink) is at the path.
    Refuse,
    /// Replace what is there (a symlink itself, never its target).
    Replace,
}

/// Writes `contents` to `path` atomically with `mode`: a temporary file in
/// the same directory (created with `mode`, so a key is never readable by
/// others even for an instant, and set to `mode` again since the umask may
/// have narrowed it), fsynced, renamed into place, then the directory fsynced.
///
/// # Errors
/// [`CaError::AlreadyExists`] under [`Clobber::Refuse`]; [`CaError::Write`].
pub(super) fn write_atomic(
    path: &Path,
    contents: &[u8],
    mode: u32,
    clobber: Clobber,
) -> Result<(), CaError> {
    write_atomic_as(LOCKED_TEMP_PREFIX, true, path, contents, mode, clobber)
}

/// [`write_atomic`] with the temporary file named `PREFIX<random>.tmp`, or
/// exactly `PREFIX.tmp` when `random` is false (a name the next run can find).
pub(super) fn write_atomic_as(
    prefix: &str,
    random: bool,
    path: &Path,
    contents: &[u8],
    mode: u32,
    clobber: Clobber,
) -> Result<(), CaError> {
    let write_error = |source| CaError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let mut temp = tempfile::Builder::new()
        .prefix(prefix)
        .suffix(".tmp")
        .rand_bytes(if random { 6 } else { 0 })
        .permissions(Permissions::from_mode(mode))
        .tempfile_in(dir)
        .map_err(write_error)?;
    temp.as_file()
        .set_permissions(Permissions::from_mode(mode))
        .and_then(|()| temp.write_all(contents))
        .and_then(|()| temp.as_file().sync_all())
        .map_err(write_error)?;
    let persisted = match clobber {
        Clobber::Refuse => temp.persist_noclobber(path),
        Clobber::Replace => temp.persist(path),
    };
    persisted.map_err(|e| match e.error.kind() {
        io::ErrorKind::AlreadyExists => CaError::AlreadyExists {
            path: path.to_path_buf(),
        },
        _ => write_error(e.error),
    })?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(write_error)
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            // Writing to a String cannot fail.
            let _ = write!(s, "{b:02x}");
            s
        })
}

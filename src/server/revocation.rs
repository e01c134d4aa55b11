//! The server's TLS settings as a swappable value, the CRL behind them, and
//! which identities the CRL revokes among those seen.
//!
//! [`TlsHandle`] holds the `rustls::ServerConfig` every new handshake uses.
//! With `jobsd --crl FILE` ([`TlsHandle::with_crl`]) the config refuses the
//! client certificates the CRL lists, and [`TlsHandle::reload_crl`] (SIGHUP,
//! and a change of the file: see [`watch_crl_file`]) swaps in a config
//! built from the new CRL; handshakes already under way finish with the
//! config they started with, connections already verified are judged by
//! [`revoked`](TlsHandle::revoked) instead. A CRL that fails to load at a
//! reload is refused with the reason and the old one stays.
//!
//! Revocation reaches work already running through the serials seen: every
//! verified handshake records its certificate's serial under its identity
//! (in memory: jobs do not survive a restart, so neither need these). When a
//! new CRL revokes a serial seen for an identity, that identity joins the
//! revoked set, which the server watches to end its streams, close its
//! connections and stop its jobs (`enforce.rs`).

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use rustls::pki_types::CertificateDer;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::auth::Identity;
use crate::tls::{Crl, PemFiles, PemMaterial, TlsError};

/// The server's TLS configuration, swappable while the server runs.
///
/// Cloning shares it.
#[derive(Clone)]
pub struct TlsHandle(Arc<Inner>);

struct Inner {
    config: watch::Sender<Arc<rustls::ServerConfig>>,
    source: Option<CrlSource>,
    seen: Mutex<Seen>,
    revoked: watch::Sender<Arc<HashSet<Identity>>>,
}

/// What a new config is built from.
struct CrlSource {
    files: PemFiles,
    pem: PemMaterial,
    ca: CertificateDer<'static>,
    path: PathBuf,
}

#[derive(Default)]
struct Seen {
    crl: Option<Crl>,
    serials: HashMap<Identity, HashSet<Vec<u8>>>,
}

impl std::fmt::Debug for TlsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsHandle")
            .field("crl", &self.crl_path())
            .finish_non_exhaustive()
    }
}

/// What a CRL reload put in force, for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrlSummary {
    /// The CRL's number, if it has one.
    pub number: Option<String>,
    /// Certificates it revokes.
    pub revoked_certificates: usize,
    /// Identities seen since start that it revokes.
    pub revoked_identities: usize,
    /// Its `nextUpdate`.
    pub next_update: time::OffsetDateTime,
}

impl From<Arc<rustls::ServerConfig>> for TlsHandle {
    fn from(config: Arc<rustls::ServerConfig>) -> Self {
        Self::fixed(config)
    }
}

impl TlsHandle {
    /// A config that never changes (no CRL).
    pub fn fixed(config: Arc<rustls::ServerConfig>) -> Self {
        Self(Arc::new(Inner {
            config: watch::Sender::new(config),
            source: None,
            seen: Mutex::new(Seen::default()),
            revoked: watch::Sender::new(Arc::default()),
        }))
    }

    /// The server config of `files` (read as `pem`) that also refuses what
    /// the CRL at `crl` revokes. Blocking (reads the file).
    ///
    /// # Errors
    /// [`TlsError`] for the TLS files, [`TlsError::Read`] or
    /// [`TlsError::Crl`] naming the CRL file when it is unreadable, not
    /// signed by the CA, garbage or past its `nextUpdate`.
    pub fn with_crl(files: PemFiles, pem: PemMaterial, crl: PathBuf) -> Result<Self, TlsError> {
        let ca = files.ca_certificate(&pem)?;
        let list = Crl::load(&crl, &ca, time::OffsetDateTime::now_utc())?;
        let config = files.server_config_with_crl(&pem, Some(&list))?;
        Ok(Self(Arc::new(Inner {
            config: watch::Sender::new(config),
            source: Some(CrlSource {
                files,
                pem,
                ca,
                path: crl,
            }),
            seen: Mutex::new(Seen {
                crl: Some(list),
                serials: HashMap::new(),
            }),
            revoked: watch::Sender::new(Arc::default()),
        })))
    }

    /// The CRL file, if there is one.
    pub fn crl_path(&self) -> Option<&Path> {
        self.0.source.as_ref().map(|s| s.path.as_path())
    }

    /// Reads the CRL file again and, if it is valid, puts it in force for
    /// every new handshake and revokes the identities it names among those
    /// seen. Blocking: call it on a blocking thread. `Ok(None)` without a CRL.
    ///
    /// # Errors
    /// As [`TlsHandle::with_crl`]; the CRL in force stays.
    pub fn reload_crl(&self) -> Result<Option<CrlSummary>, TlsError> {
        let Some(source) = &self.0.source else {
            return Ok(None);
        };
        let list = Crl::load(&source.path, &source.ca, time::OffsetDateTime::now_utc())?;
        let config = source
            .files
            .server_config_with_crl(&source.pem, Some(&list))?;
        let mut seen = self.lock();
        let revoked: HashSet<Identity> = seen
            .serials
            .iter()
            .filter(|(_, serials)| serials.iter().any(|s| list.revokes(s)))
            .map(|(identity, _)| *identity)
            .collect();
        let summary = CrlSummary {
            number: list.number().map(str::to_owned),
            revoked_certificates: list.len(),
            revoked_identities: revoked.len(),
            next_update: list.next_update(),
        };
        seen.crl = Some(list);
        // Under the lock, so that a handshake recorded after this sees the
        // new CRL in `admit`, and one recorded before is in `revoked`.
        self.0.config.send_replace(config);
        self.0.revoked.send_replace(Arc::new(revoked));
        Ok(Some(summary))
    }

    /// The config for a new handshake.
    pub(crate) fn config(&self) -> Arc<rustls::ServerConfig> {
        self.0.config.borrow().clone()
    }

    /// The config in force now (for [`super::ServerConfig::new`]).
    pub fn config_now(&self) -> Arc<rustls::ServerConfig> {
        self.config()
    }

    /// Records that `identity` completed a handshake with the certificate
    /// `serial`; false if the CRL in force revokes it (a handshake that
    /// began under the previous CRL), which the caller must refuse.
    pub(crate) fn admit(&self, identity: Identity, serial: &[u8]) -> bool {
        if self.0.source.is_none() {
            return true;
        }
        let mut seen = self.lock();
        if seen.crl.as_ref().is_some_and(|crl| crl.revokes(serial)) {
            return false;
        }
        seen.serials
            .entry(identity)
            .or_default()
            .insert(serial.to_vec());
        true
    }

    /// The identities the CRL in force revokes among those seen.
    pub(crate) fn revoked(&self) -> watch::Receiver<Arc<HashSet<Identity>>> {
        self.0.revoked.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        // Every update of `Seen` is a single insert or assignment.
        self.0.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Reloads the CRL of `tls` whenever its file is replaced or rewritten,
/// until `cancel`: inotify on the file's directory (an atomic write renames
/// a new file over the old, which a watch on the file itself would miss),
/// for `IN_MOVED_TO` and `IN_CLOSE_WRITE` of that name. No polling.
///
/// A reload that fails is logged and the old CRL stays. Returns at once if
/// `tls` has no CRL or inotify is unavailable (logged).
pub(crate) async fn watch_crl_file(tls: TlsHandle, cancel: CancellationToken) {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    let Some(path) = tls.crl_path().map(Path::to_path_buf) else {
        return;
    };
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let watch = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).and_then(|ino| {
        ino.add_watch(
            dir,
            AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_CLOSE_WRITE | AddWatchFlags::IN_CREATE,
        )
        .map(|_| ino)
    });
    let inotify = match watch.map_err(std::io::Error::from).and_then(|ino| {
        // SAFETY: `InotifyFd` owns the inotify descriptor (an `OwnedFd`
        // inside `Inotify`) and returns that same descriptor from every
        // `as_raw_fd`; it is closed only when the `AsyncFd` drops it.
        unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(
                InotifyFd(ino),
                tokio::io::Interest::READABLE,
            )
        }
        .map_err(|e| e.into_parts().1)
    }) {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the CRL's directory; the CRL is reloaded on SIGHUP only");
            return;
        }
    };
    let mut last = None;
    loop {
        let mut ready = tokio::select! {
            _ = cancel.cancelled() => return,
            r = inotify.readable() => match r {
                Ok(ready) => ready,
                Err(e) => {
                    tracing::warn!(error = %e, "watching the CRL file failed; the CRL is reloaded on SIGHUP only");
                    return;
                }
            },
        };
        let events = match ready.try_io(|fd| fd.get_ref().0.read_events().map_err(Into::into)) {
            Ok(Ok(events)) => events,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "reading CRL file events failed; the CRL is reloaded on SIGHUP only");
                return;
            }
            Err(_would_block) => continue,
        };
        // IN_CREATE alone is an empty file being made: wait for its write.
        let changed = events.iter().any(|e| {
            e.name.as_deref() == Some(name)
                && e.mask
                    .intersects(AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_CLOSE_WRITE)
        });
        if !changed {
            continue;
        }
        // An atomic write shows up twice (the rename, then the close of the
        // renamed file): the second finds the same file and is skipped.
        let (tls, file, seen) = (tls.clone(), path.clone(), last);
        let reloaded = tokio::task::spawn_blocking(move || {
            let now = file_key(&file);
            if now.is_some() && now == seen {
                return (now, None);
            }
            (now, Some(tls.reload_crl()))
        })
        .await;
        match reloaded {
            Ok((key, Some(result))) => {
                last = key;
                log_reload("the CRL file changed", &path, result);
            }
            Ok((_, None)) => {}
            Err(e) => tracing::error!(error = %e, "CRL reload failed"),
        }
    }
}

/// What tells one version of a file from another here: its inode, size and
/// modification time (every `jobs-ca` write is a new inode).
fn file_key(path: &Path) -> Option<(u64, u64, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

/// An inotify instance as tokio's `AsyncFd` wants it.
struct InotifyFd(nix::sys::inotify::Inotify);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// Logs the outcome of a CRL reload triggered by `why`.
pub fn log_reload(why: &str, path: &Path, result: Result<Option<CrlSummary>, TlsError>) {
    match result {
        Ok(Some(s)) => tracing::info!(
            file = %path.display(),
            number = s.number.as_deref().unwrap_or("none"),
            revoked_certificates = s.revoked_certificates,
            revoked_identities = s.revoked_identities,
            next_update = %s.next_update,
            "{why}: CRL reloaded"
        ),
        Ok(None) => {}
        Err(e) => tracing::error!(
            "{why}: CRL NOT reloaded, the previous CRL stays in force: {}",
            super::status::error_chain(&e)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fixed_config_admits_every_serial_and_revokes_nobody() {
        // Scenario: without --crl nothing is tracked or revoked.
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(rustls::server::ResolvesServerCertUsingSni::new()));
        let tls = TlsHandle::fixed(Arc::new(config));
        let id = Identity::from_spki_der(b"k");
        assert!(tls.admit(id, &[1, 2]));
        assert!(tls.revoked().borrow().is_empty());
        assert!(tls.lock().serials.is_empty());
        assert!(matches!(tls.reload_crl(), Ok(None)));
    }
}

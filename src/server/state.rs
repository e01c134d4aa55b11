//! The daemon's state directory: the lock that makes it one daemon's, and
//! the job store in it.

use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use super::ServerError;
use std::collections::HashSet;

use crate::model::JobId;
use crate::store::{Store, StoreError};

/// Name of the lock file inside the state directory.
const LOCK_FILE: &str = "jobsd.lock";

/// Name of the directory of output logs inside the state directory.
pub const OUTPUT_DIR: &str = "output";

/// A state directory, created if missing (mode 0700) and locked with an
/// exclusive flock(2) on `jobsd.lock` for as long as this value lives, so that
/// two daemons never write the same job files; and its job store
/// ([`crate::store::FILE_NAME`]).
#[derive(Debug)]
pub struct StateDir {
    path: PathBuf,
    store: Store,
    /// The ids of the records checked at open, until the server takes them.
    ids: std::sync::Mutex<Option<HashSet<JobId>>>,
    _lock: Flock<File>,
}

impl StateDir {
    /// Creates (if needed) and locks `path`, then opens (or creates) its
    /// job store and decodes every record in it (one at a time), so that a store the daemon
    /// cannot use is found before it says it is ready.
    ///
    /// # Errors
    /// [`ServerError::StateDir`] if the directory cannot be created or the
    /// lock file opened (e.g. the path is a file, or permission is denied);
    /// [`ServerError::StateDirInUse`] if another process holds the lock;
    /// [`ServerError::Store`] if the job store cannot be opened or read (not
    /// a jobs database, written by a newer jobsd, a corrupt record).
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, ServerError> {
        let path = path.into();
        let err = |source| ServerError::StateDir {
            path: path.clone(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&path)
            .map_err(err)?;
        crate::job::restrict_to_owner(&path).map_err(err)?;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path.join(LOCK_FILE))
            .map_err(err)?;
        let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(ServerError::StateDirInUse { path });
            }
            Err((_, e)) => return Err(err(e.into())),
        };
        // The default output directory: made here, so that a path that
        // cannot be one is found before the daemon says it is ready.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path.join(OUTPUT_DIR))
            .map_err(|source| ServerError::StateDir {
                path: path.join(OUTPUT_DIR),
                source,
            })?;
        let store = Store::open(&path)?;
        let ids = store.scan()?;
        Ok(Self {
            path,
            store,
            ids: std::sync::Mutex::new(Some(ids)),
            _lock: lock,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its job store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The ids of every record: those checked when the directory was
    /// opened (the first call), or scanned again (later calls).
    ///
    /// # Errors
    /// [`StoreError`] if the store must be read again and cannot be.
    pub fn record_ids(&self) -> Result<HashSet<JobId>, StoreError> {
        let cached = self
            .ids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        match cached {
            Some(ids) => Ok(ids),
            None => self.store.scan(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_daemon_cannot_take_a_locked_state_directory() {
        // Scenario: two jobsd started with the same --state-dir.
        let dir = tempfile::tempdir().unwrap();
        let first = StateDir::open(dir.path().join("state")).unwrap();
        assert!(matches!(
            StateDir::open(dir.path().join("state")),
            Err(ServerError::StateDirInUse { path }) if path == first.path()
        ));
        drop(first);
        StateDir::open(dir.path().join("state")).unwrap();
    }

    #[test]
    fn a_file_is_not_a_state_directory() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        assert!(matches!(
            StateDir::open(&file),
            Err(ServerError::StateDir { .. })
        ));
    }
}

//! Space held back on the store's file system, so that the writes which free
//! space or record what already happened still succeed on a full disk.
//!
//! SQLite needs room in its write-ahead log even to delete a row. On a full
//! disk that would leave the daemon unable to remove jobs (to free space), to
//! record how jobs ended, or to mark the jobs of a dead daemon lost at start
//! (so it could not start at all). The reserve is a file of
//! [`RESERVE_BYTES`] allocated next to the database: such a write that fails
//! with a full disk releases it and is tried once more. A new job is
//! accepted only while the reserve is in place (it is made again first, if
//! there is room), so that starting jobs never eats the space that removing
//! them needs.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Name of the reserve file in the state directory.
pub const RESERVE_FILE: &str = "jobs.db-reserve";

/// Size of the reserve in bytes: 1 MiB, 256 SQLite pages of 4 KiB, room
/// in the write-ahead log for deleting or ending thousands of records at
/// once, and small next to any disk that holds job output.
pub const RESERVE_BYTES: u64 = 1 << 20;

/// The reserve file of one store.
#[derive(Debug)]
pub(super) struct Reserve {
    path: PathBuf,
}

impl Reserve {
    /// The reserve for the store in `dir` (nothing is created yet).
    pub(super) fn new(dir: &Path) -> Self {
        Self {
            path: dir.join(RESERVE_FILE),
        }
    }

    /// Makes sure the reserve holds [`RESERVE_BYTES`] of allocated space
    /// (posix_fallocate(3), which allocates blocks rather than a sparse
    /// file); a partly made one is removed again.
    ///
    /// # Errors
    /// The OS error: ENOSPC (or EDQUOT) when the disk has no room for it.
    pub(super) fn ensure(&self) -> io::Result<()> {
        if std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.is_file() && m.len() == RESERVE_BYTES)
        {
            return Ok(());
        }
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&self.path)?;
        // `RESERVE_BYTES` fits in an i64.
        let allocated = nix::fcntl::posix_fallocate(&file, 0, RESERVE_BYTES as libc::off_t)
            .map_err(io::Error::from)
            .and_then(|()| file.set_len(RESERVE_BYTES));
        if let Err(e) = allocated {
            drop(file);
            let _ = std::fs::remove_file(&self.path);
            return Err(e);
        }
        Ok(())
    }

    /// Gives the reserved space back to the file system. Returns whether
    /// there was a reserve to give.
    pub(super) fn release(&self) -> bool {
        let released = std::fs::remove_file(&self.path).is_ok();
        if released {
            tracing::warn!(file = %self.path.display(), "disk full: released the job store's reserve to record a change");
        }
        released
    }
}

/// True for the errors of a full disk or an exhausted quota.
pub(super) fn is_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_allocated_once_and_released_once() {
        let dir = tempfile::tempdir().unwrap();
        let reserve = Reserve::new(dir.path());
        let path = dir.path().join(RESERVE_FILE);
        reserve.ensure().unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        // Allocated, not sparse: st_blocks counts 512-byte units.
        use std::os::unix::fs::MetadataExt;
        assert_eq!(meta.len(), RESERVE_BYTES);
        assert!(
            meta.blocks() * 512 >= RESERVE_BYTES,
            "{} blocks",
            meta.blocks()
        );
        assert_eq!(meta.mode() & 0o777, 0o600);
        reserve.ensure().unwrap();
        assert!(reserve.release());
        assert!(!path.exists());
        assert!(!reserve.release());
    }
}

//! The host-wide claim on a [`UidRange`]: a daemon's uids are handed out per
//! state directory, so two daemons on one host with overlapping ranges
//! would give different identities the same uid (and with it each other's
//! files and one `RLIMIT_NPROC` count). A claim is a file named
//! `FIRST-LAST` in a root-only directory (by default [`CLAIMS_DIR`]),
//! exclusively `flock(2)`ed for as long as the [`RangeClaim`] lives; the
//! kernel drops the lock when the daemon dies, so a left-over file is only
//! stale. Claims are checked and made under a lock on the directory, so two
//! daemons starting at once cannot both pass.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use super::UidRange;

/// Where daemons on this host record their ranges.
pub const CLAIMS_DIR: &str = "/run/jobs/uid-ranges";

/// A held claim; dropping it releases the range and removes its file.
#[derive(Debug)]
pub struct RangeClaim {
    dir: PathBuf,
    path: PathBuf,
    _lock: Flock<File>,
}

impl Drop for RangeClaim {
    fn drop(&mut self) {
        // Under the directory's lock, so that no claimer is between opening
        // this file and locking it. Best effort: a file left behind is
        // stale, and the next overlapping claim removes it.
        if let Ok(file) = open(&self.dir.join(".lock")) {
            if let Ok(_dir_lock) = Flock::lock(file, FlockArg::LockExclusive) {
                let _ = fs::remove_file(&self.path);
            }
        }
    }
}

/// Why a range cannot be claimed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClaimError {
    /// Another live daemon holds an overlapping range.
    #[error(
        "{ours} overlaps {theirs}, which another jobsd on this host holds{}; the two would give different identities the same uids: give each jobsd a range of its own",
        holder.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    InUse {
        /// The range asked for.
        ours: UidRange,
        /// The range held.
        theirs: UidRange,
        /// The holder's pid, as it wrote it.
        holder: Option<u32>,
    },
    /// The claims directory or a file in it cannot be used.
    #[error("{}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> ClaimError + '_ {
    move |source| ClaimError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Claims `range` in `dir` (made, mode 0700, if missing) for the calling
/// process, writing its pid into the claim. Stale claims that overlap are
/// removed.
///
/// # Errors
/// [`ClaimError::InUse`] if a live claim overlaps (the same range
/// included); [`ClaimError::Io`] if the directory or a claim cannot be
/// made, read or locked.
pub fn claim(range: UidRange, dir: &Path) -> Result<RangeClaim, ClaimError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_at(dir))?;
    let lock_path = dir.join(".lock");
    let dir_lock = open(&lock_path)?;
    // Held only while checking and claiming: no long waits under it.
    let _dir_lock = Flock::lock(dir_lock, FlockArg::LockExclusive)
        .map_err(|(_, e)| io_at(&lock_path)(e.into()))?;
    for entry in fs::read_dir(dir).map_err(io_at(dir))? {
        let entry = entry.map_err(io_at(dir))?;
        let Some(theirs) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<UidRange>().ok())
        else {
            continue;
        };
        if theirs.last() < range.first() || range.last() < theirs.first() {
            continue;
        }
        let path = entry.path();
        match Flock::lock(open(&path)?, FlockArg::LockSharedNonblock) {
            // Nobody holds it: a daemon that died. Ours is made below.
            Ok(_stale) => match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_at(&path)(e)),
                _ => {}
            },
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut text = String::new();
                // The pid is only for the message.
                let _ = file.read_to_string(&mut text);
                return Err(ClaimError::InUse {
                    ours: range,
                    theirs,
                    holder: text.trim().parse().ok(),
                });
            }
            Err((_, e)) => return Err(io_at(&path)(e.into())),
        }
    }
    let path = dir.join(range.to_string());
    let mut lock = Flock::lock(open(&path)?, FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| io_at(&path)(e.into()))?;
    lock.set_len(0).map_err(io_at(&path))?;
    writeln!(lock, "{}", std::process::id()).map_err(io_at(&path))?;
    Ok(RangeClaim {
        dir: dir.to_owned(),
        path,
        _lock: lock,
    })
}

fn open(path: &Path) -> Result<File, ClaimError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path)
        .map_err(io_at(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(first: u32, last: u32) -> UidRange {
        UidRange::new(first, last).unwrap()
    }

    #[test]
    fn overlapping_ranges_are_refused_while_held_and_free_once_released() {
        // Scenario: a second daemon on the host is given a range that shares
        // uids with a running one's; it is refused naming both, and gets the
        // range once the first is gone.
        let dir = tempfile::tempdir().unwrap();
        let held = claim(range(70000, 70099), dir.path()).unwrap();
        for (first, last) in [
            (70000, 70099),
            (70050, 70200),
            (69000, 70000),
            (70099, 70099),
        ] {
            let err = claim(range(first, last), dir.path()).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "{first}-{last} overlaps 70000-70099, which another jobsd on this host holds (pid {}); the two would give different identities the same uids: give each jobsd a range of its own",
                    std::process::id()
                )
            );
        }
        let beside = claim(range(70100, 70199), dir.path()).unwrap();
        drop(held);
        assert!(!dir.path().join("70000-70099").exists());
        // A file left behind by a daemon that died is stale: removed, and
        // the range claimed.
        fs::write(dir.path().join("70040-70049"), "1\n").unwrap();
        let again = claim(range(70045, 70060), dir.path()).unwrap();
        assert!(!dir.path().join("70040-70049").exists());
        assert_eq!(
            fs::read_to_string(dir.path().join("70045-70060")).unwrap(),
            format!("{}\n", std::process::id())
        );
        drop((beside, again));
    }

    #[test]
    fn an_unusable_claim_names_the_file_and_the_error_once() {
        // Scenario: a directory sits where a claim file would be; the error
        // chain (as jobsd prints it) names the path, then the OS error, once.
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("90000-90009")).unwrap();
        let err = claim(range(90005, 90006), dir.path()).unwrap_err();
        let chain = format!("{:#}", anyhow_like(&err));
        assert_eq!(
            chain,
            format!(
                "{}: Is a directory (os error 21)",
                dir.path().join("90000-90009").display()
            )
        );
    }

    /// `error: source`, as anyhow's `{:#}` prints a chain of two.
    fn anyhow_like(e: &ClaimError) -> String {
        use std::error::Error;
        match e.source() {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        }
    }

    #[test]
    fn other_files_in_the_directory_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("notes"), "x").unwrap();
        let _held = claim(range(80000, 80009), dir.path()).unwrap();
        assert_eq!(fs::read_to_string(dir.path().join("notes")).unwrap(), "x");
    }
}

//! Reading and writing cgroup interface files and directories, with the
//! error context every caller needs.

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::error::CgroupError;
use super::parse;

/// How long `rmdir` is retried while it fails with EBUSY: the last task of a
/// group can still be listed for a moment after `populated` went to 0 (its
/// exit is finishing on another CPU). Measured here: never needed after
/// `cgroup.events` said `populated 0`; 1 s bounds a slow machine.
const RMDIR_RETRY: Duration = Duration::from_secs(1);

/// Writes `value` to a cgroup file in one `write(2)` (each write is one
/// command to the kernel). Never creates the file.
pub(super) fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    let to_error = |source| CgroupError::Write {
        path: path.to_owned(),
        value: value.to_owned(),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(to_error)?;
    match file.write(value.as_bytes()) {
        Ok(n) if n == value.len() => Ok(()),
        Ok(_) => Err(to_error(io::Error::from(io::ErrorKind::WriteZero))),
        Err(source) => Err(to_error(source)),
    }
}

/// The contents of a cgroup file.
pub(super) fn read(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The contents of a cgroup file, `None` if it does not exist (a controller
/// or kernel feature that is not there).
pub(super) fn read_optional(path: &Path) -> Result<Option<String>, CgroupError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CgroupError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// The child groups of `dir` (its subdirectories); none if `dir` is gone.
pub(super) fn child_dirs(dir: &Path) -> Result<Vec<PathBuf>, CgroupError> {
    let to_error = |source| CgroupError::Read {
        path: dir.to_owned(),
        source,
    };
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(to_error(e)),
    };
    let mut dirs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(to_error)?;
        if entry.file_type().map_err(to_error)?.is_dir() {
            dirs.push(entry.path());
        }
    }
    dirs.sort();
    Ok(dirs)
}

/// The processes of the group at `dir` and of all its descendants; none if
/// the group is gone. Zombies are not listed (they left the group when they
/// exited, even before they are reaped).
pub(super) fn procs_recursive(dir: &Path) -> Result<Vec<i32>, CgroupError> {
    let path = dir.join("cgroup.procs");
    let mut pids = match read_optional(&path)? {
        Some(text) => parse::pids(&path, &text)?,
        None => return Ok(Vec::new()),
    };
    for child in child_dirs(dir)? {
        pids.extend(procs_recursive(&child)?);
    }
    Ok(pids)
}

/// SIGKILLs each of `pids`, listed in the group at `dir`. A process that is
/// already gone (ESRCH) is not an error.
pub(super) fn sigkill(dir: &Path, pids: &[i32]) -> Result<(), CgroupError> {
    for &pid in pids {
        match kill(Pid::from_raw(pid), Signal::SIGKILL) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(errno) => {
                return Err(CgroupError::Signal {
                    pid,
                    path: dir.to_owned(),
                    source: io::Error::from(errno),
                });
            }
        }
    }
    Ok(())
}

/// Removes the group at `dir` and its descendants, deepest first, retrying
/// EBUSY briefly (see [`RMDIR_RETRY`]). A group that is already gone is not
/// an error.
pub(super) fn remove_tree(dir: &Path) -> Result<(), CgroupError> {
    for child in child_dirs(dir)? {
        remove_tree(&child)?;
    }
    remove_dir(dir)
}

/// Removes the group at `dir`, retrying EBUSY briefly unless it has child
/// groups.
pub(super) fn remove_dir(dir: &Path) -> Result<(), CgroupError> {
    let deadline = Instant::now() + RMDIR_RETRY;
    let mut backoff = Backoff::new();
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e)
                if e.raw_os_error() == Some(libc::EBUSY)
                    && Instant::now() < deadline
                    // Child groups do not go away by waiting.
                    && child_dirs(dir).is_ok_and(|c| c.is_empty()) =>
            {
                std::thread::sleep(backoff.next_delay());
            }
            Err(source) => {
                return Err(CgroupError::Remove {
                    path: dir.to_owned(),
                    source,
                });
            }
        }
    }
}

/// Delays for re-checking a condition the kernel offers no notification
/// for: 1 ms doubling to 50 ms, so a quick change is seen quickly and a slow
/// one costs at most 20 reads a second.
#[derive(Debug)]
pub(super) struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(1);
    const MAX: Duration = Duration::from_millis(50);

    pub(super) fn new() -> Self {
        Backoff { next: Self::FIRST }
    }

    pub(super) fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        delay
    }
}

/// Re-checks `done` with [`Backoff`] delays (blocking the thread) until it
/// returns true or `limit` has passed. Returns the last answer.
pub(super) fn wait_until(
    limit: Duration,
    mut done: impl FnMut() -> Result<bool, CgroupError>,
) -> Result<bool, CgroupError> {
    let deadline = Instant::now() + limit;
    let mut backoff = Backoff::new();
    loop {
        if done()? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(backoff.next_delay());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_cap() {
        let mut b = Backoff::new();
        let delays: Vec<u128> = (0..8).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 50, 50]);
    }

    // Scenario: writing never creates a file, so a typo or a missing
    // controller file is an error instead of a stray regular file.
    #[test]
    fn write_does_not_create() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory.max");
        let err = write(&path, "1").unwrap_err();
        assert!(
            matches!(&err, CgroupError::Write { source, value, .. } if source.kind() == io::ErrorKind::NotFound && value == "1"),
            "{err:?}"
        );
        assert!(!path.exists());
        fs::write(&path, "").unwrap();
        write(&path, "42").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "42");
    }

    #[test]
    fn missing_things_are_empty() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("gone");
        assert_eq!(read_optional(&gone.join("x")).unwrap(), None);
        assert!(child_dirs(&gone).unwrap().is_empty());
        assert!(procs_recursive(&gone).unwrap().is_empty());
        remove_tree(&gone).unwrap();
    }

    // Scenario: a fake tree in a temporary directory (not a cgroup fs):
    // processes are gathered from every level, and removal goes deepest first.
    #[test]
    fn tree_walks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("g");
        fs::create_dir_all(root.join("a/b")).unwrap();
        fs::write(root.join("cgroup.procs"), "1\n").unwrap();
        fs::write(root.join("a/cgroup.procs"), "2\n3\n").unwrap();
        let mut pids = procs_recursive(&root).unwrap();
        pids.sort_unstable();
        assert_eq!(pids, [1, 2, 3]);
        // Plain directories with files in them: rmdir fails with ENOTEMPTY,
        // which is reported (not retried like EBUSY).
        let err = remove_tree(&root).unwrap_err();
        assert!(matches!(err, CgroupError::Remove { .. }), "{err:?}");
        assert!(!root.join("a/b").exists(), "the deepest group goes first");
    }
}

//! Reading the small files people name on a command line or in a config:
//! policies, certificates, keys, certificate requests, the CA's record.
//!
//! It owns one rule: nothing read this way can block or read without end.
//! The path is checked before opening, because merely opening some devices
//! acts (a watchdog starts its timer, a tape rewinds); the open itself is
//! `O_NONBLOCK | O_NOCTTY`, so a FIFO swapped in after that check opens at
//! once rather than waiting for a writer and a terminal never becomes the
//! process's controlling terminal; and the opened file is checked again
//! (`fstat`) and read to one byte past the cap, so neither a swapped file
//! nor one still growing gets further.

use std::fs::{Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Why [`read_bounded`] read nothing.
#[derive(Debug)]
pub(crate) enum BoundedReadError {
    /// The path names no regular file (symlinks are followed): a FIFO, a
    /// device, a directory, a socket.
    NotRegularFile,
    /// The file holds more than the cap.
    TooLarge {
        /// The cap, in bytes.
        max: u64,
    },
    /// Opening or reading failed.
    Io(io::Error),
}

impl BoundedReadError {
    /// The same failure as an [`io::Error`]: the OS error as it is, the
    /// others as [`io::ErrorKind::InvalidData`] with a message that says which.
    pub(crate) fn into_io(self) -> io::Error {
        match self {
            Self::Io(e) => e,
            Self::NotRegularFile => {
                io::Error::new(io::ErrorKind::InvalidData, "not a regular file")
            }
            Self::TooLarge { max } => io::Error::new(
                io::ErrorKind::InvalidData,
                format!("larger than {max} bytes"),
            ),
        }
    }
}

/// The bytes of the regular file at `path` (symlinks followed), at most
/// `max` of them.
///
/// # Errors
/// [`BoundedReadError::NotRegularFile`], [`BoundedReadError::TooLarge`],
/// [`BoundedReadError::Io`].
pub(crate) fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, BoundedReadError> {
    let check = |metadata: Metadata| {
        if !metadata.is_file() {
            return Err(BoundedReadError::NotRegularFile);
        }
        if metadata.len() > max {
            return Err(BoundedReadError::TooLarge { max });
        }
        Ok(())
    };
    check(std::fs::metadata(path).map_err(BoundedReadError::Io)?)?;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(path)
        .map_err(BoundedReadError::Io)?;
    check(file.metadata().map_err(BoundedReadError::Io)?)?;
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(BoundedReadError::Io)?;
    if bytes.len() as u64 > max {
        return Err(BoundedReadError::TooLarge { max });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifos_devices_directories_and_big_files_are_refused_without_blocking() {
        // Scenario: a FIFO with no writer would block a plain open for ever.
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        for path in [fifo.as_path(), Path::new("/dev/zero"), dir.path()] {
            assert!(
                matches!(
                    read_bounded(path, 10),
                    Err(BoundedReadError::NotRegularFile)
                ),
                "{}",
                path.display()
            );
        }
        let file = dir.path().join("f");
        std::fs::write(&file, b"0123456789").unwrap();
        assert_eq!(read_bounded(&file, 10).unwrap(), b"0123456789");
        assert!(matches!(
            read_bounded(&file, 9),
            Err(BoundedReadError::TooLarge { max: 9 })
        ));
        assert!(matches!(
            read_bounded(&dir.path().join("missing"), 9),
            Err(BoundedReadError::Io(e)) if e.kind() == io::ErrorKind::NotFound
        ));
    }
}

//! Where a log's bytes move, and on which thread.
//!
//! A read the page cache can answer (a follower close behind the writer,
//! nearly always) is made on the calling thread: `preadv2(2)` with
//! `RWF_NOWAIT` returns what is cached and fails with `EAGAIN` instead of
//! waiting for the disk. The rest of a read runs on tokio's blocking pool,
//! so a slow or stalled disk holds the follower that waits for it, never a
//! runtime worker thread that other jobs and requests need. (Appends are
//! not made here; see the module doc of `output` for why.)

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// Reads into `buf` at `offset` what the page cache holds, without waiting
/// for the disk. `Ok(n)`: `n` bytes read (fewer than asked when the rest
/// is not cached; 0 at the end of the file). `Err` of kind `WouldBlock`:
/// nothing is cached there; of `Unsupported`: the file system cannot say
/// (ask the blocking pool instead, from now on).
pub(super) fn read_cached(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let offset = libc::off_t::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: `iov` describes `buf`, which is valid for writes of its whole
    // length and borrowed mutably for the duration of the call; the
    // descriptor is `file`'s, open while `file` is borrowed. The kernel
    // writes at most `iov_len` bytes.
    let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset, libc::RWF_NOWAIT) };
    if n >= 0 {
        // `n <= buf.len()`, which fits in usize.
        return Ok(n as usize);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN) => Err(io::ErrorKind::WouldBlock.into()),
        // No RWF_NOWAIT here (an old kernel or a file system without it).
        Some(libc::EOPNOTSUPP | libc::EINVAL | libc::ENOSYS) => {
            Err(io::ErrorKind::Unsupported.into())
        }
        _ => Err(e),
    }
}

/// Runs `work` on `file` and `buf` on tokio's blocking pool and gives the
/// buffer back. If the pool cannot run it (the runtime shuts down) the
/// result is an error and the buffer a new one of the same length.
async fn on_pool(
    file: Arc<File>,
    mut buf: Box<[u8]>,
    work: impl FnOnce(&File, &mut [u8]) -> io::Result<()> + Send + 'static,
) -> (Box<[u8]>, io::Result<()>) {
    let len = buf.len();
    let task = tokio::task::spawn_blocking(move || {
        let result = work(&file, &mut buf);
        (buf, result)
    });
    match task.await {
        Ok(done) => done,
        Err(e) => (
            vec![0; len].into_boxed_slice(),
            Err(io::Error::other(e.to_string())),
        ),
    }
}

/// Fills `buf[range]` from `offset` on the blocking pool.
pub(super) async fn read_exact_at(
    file: Arc<File>,
    buf: Box<[u8]>,
    range: std::ops::Range<usize>,
    offset: u64,
) -> (Box<[u8]>, io::Result<()>) {
    on_pool(file, buf, move |file, buf| {
        file.read_exact_at(&mut buf[range], offset)
    })
    .await
}

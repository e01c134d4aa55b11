//! A job's output: an append-only log on disk and the cursors that read it.
//!
//! This module owns the on-disk format of a job's output and the rules for
//! reading it while it grows. The supervisor of a job is the only writer
//! ([`LogWriter`]); any number of readers ([`LogReader`]) start at byte 0 and
//! move at their own pace. A reader waits for new data on a [`watch`] channel
//! that the writer updates after every append, so nobody polls, and a slow or
//! stalled reader costs the job nothing: the job's pipes are drained into the
//! file whether or not anyone reads.
//!
//! It must not know about jobs, processes or gRPC.
//!
//! # Format
//! A sequence of records, each `[fd: u8][len: u32 little-endian][len bytes]`,
//! with `fd` 1 for stdout and 2 for stderr and `1 <= len <=` [`MAX_CHUNK`].
//! Records appear in the order the writer read them from the pipes, which keeps
//! the interleaving of stdout and stderr.
//!
//! # Memory and descriptors
//! The writer holds one buffer of [`MAX_CHUNK`] + 5 bytes per pipe; a reader
//! holds one of [`MAX_CHUNK`] + 5 bytes. Neither grows with the output's size.
//! The writer's file descriptor is closed when the log is sealed, and each
//! reader opens the file for itself, so a finished job holds no descriptor.
//! What the page cache keeps of a log, and on which thread its pages are
//! handed back, is `cache.rs`'s.
//!
//! # Threads
//! Reads never wait for the disk on a runtime worker thread (`fileio.rs`):
//! they are answered from the page cache on the calling thread when they
//! can be (`RWF_NOWAIT`), and go to tokio's blocking pool when they cannot
//! (a follower far behind, a finished log read cold). The flush at a job's
//! end ([`LogWriter::sync`]) runs on the blocking pool too. Appends are
//! written on the thread of whoever calls [`LogWriter::append`]: buffered
//! writes cannot be asked not to wait (ext4 refuses `RWF_NOWAIT` for them),
//! and handing each 64 KiB record to another thread costs a followed job a
//! third of its throughput on the 2-core machine (631 → 312 MB/s waiting for
//! each; pipelined through the blocking pool or with `block_in_place`
//! still 296–352 against 418–586 MB/s). The job module therefore runs the
//! writers on a thread of their own (`crate::job`'s output thread), so a
//! disk that stalls holds that thread, never a worker of the runtime that
//! answers requests.

mod cache;
mod fileio;

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::watch;

/// Largest chunk of output stored in one record and sent in one message, in
/// bytes. 64 KiB is the Linux default pipe capacity, so one read rarely needs
/// more, and it is far below gRPC's default 4 MiB message limit.
pub const MAX_CHUNK: usize = 64 * 1024;

/// Size of a record header: one byte of fd, four of length.
const HEADER: usize = 5;

/// Which of the job's pipes a chunk came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fd {
    /// File descriptor 1.
    Stdout,
    /// File descriptor 2.
    Stderr,
}

impl Fd {
    fn tag(self) -> u8 {
        match self {
            Fd::Stdout => 1,
            Fd::Stderr => 2,
        }
    }

    fn from_tag(tag: u8) -> Option<Self> {
        match tag {
            1 => Some(Fd::Stdout),
            2 => Some(Fd::Stderr),
            _ => None,
        }
    }
}

/// A piece of output: consecutive bytes of one fd, 1..=[`MAX_CHUNK`] long.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// The pipe the bytes came from.
    pub fd: Fd,
    /// The bytes, never empty.
    pub data: Vec<u8>,
}

/// Errors while reading or writing a log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutputError {
    /// The log file could not be created, written or read.
    #[error("output log I/O failed")]
    Io(#[from] io::Error),
    /// The log holds a record that this format does not allow; the file was
    /// changed by someone other than its writer.
    #[error("output log is corrupt at byte {offset}")]
    Corrupt {
        /// Offset of the bad record header.
        offset: u64,
    },
}

/// How far the log has been written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Progress {
    /// Bytes of complete records in the file; readers never read past it.
    committed: u64,
    /// Output bytes in those records (headers not counted).
    data: u64,
    /// No more records will be appended.
    sealed: bool,
}

/// The shared, read-only side of one job's log: where it is and how far it
/// has been written.
#[derive(Debug)]
pub struct Log {
    path: PathBuf,
    progress: watch::Receiver<Progress>,
    cursors: Arc<cache::Cursors>,
}

/// The single writer of a log, owned by the job's supervisor.
#[derive(Debug)]
pub struct LogWriter {
    file: Arc<File>,
    committed: u64,
    data: u64,
    progress: watch::Sender<Progress>,
    cursors: Arc<cache::Cursors>,
    /// Writeback was started below this offset.
    written_back: u64,
    /// Released by the cursors, not yet handed back.
    to_release: Option<cache::Release>,
    /// The writeback and release in flight, if any.
    cache_work: Option<cache::Pending>,
}

/// Creates the log file at `path` (which must not exist) and returns its writer
/// and its shared read side.
///
/// # Errors
/// [`OutputError::Io`] if the file cannot be created (including when it exists).
pub fn create(path: &Path) -> Result<(LogWriter, Log), OutputError> {
    // Owner-only whatever the directory's mode or the umask: output is
    // its job owner's alone.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    let (tx, rx) = watch::channel(Progress {
        committed: 0,
        data: 0,
        sealed: false,
    });
    let cursors = cache::Cursors::writing();
    Ok((
        LogWriter {
            file: Arc::new(file),
            committed: 0,
            data: 0,
            progress: tx,
            cursors: cursors.clone(),
            written_back: 0,
            to_release: None,
            cache_work: None,
        },
        Log {
            path: path.to_owned(),
            progress: rx,
            cursors,
        },
    ))
}

/// Opens the complete log of a finished job at `path`: `data` output bytes
/// (the count recorded when the job ended) in records filling the whole
/// file. The log is sealed: readers stop at its end.
///
/// # Errors
/// [`OutputError::Io`] if the file's length cannot be read (it is missing,
/// for one).
pub fn open_sealed(path: &Path, data: u64) -> Result<Log, OutputError> {
    let committed = std::fs::metadata(path)?.len();
    Ok(sealed(path, committed, data))
}

/// What [`recover`] found in a log whose writer died.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recovered {
    /// Output bytes in the complete records kept.
    pub data: u64,
    /// Bytes cut from the end: a record the writer did not finish, or
    /// anything after the first invalid record header.
    pub cut: u64,
}

/// Opens the log at `path` after its writer died mid-write (a crash): keeps
/// the complete records from the start, truncates the file after the last
/// of them, and returns the sealed log. A missing file is created empty.
/// Reads the record headers only (through one 64 KiB buffer), so its cost
/// grows with the number of records, not with the bytes in them.
///
/// # Errors
/// [`OutputError::Io`] if the file cannot be opened, read or truncated.
pub fn recover(path: &Path) -> Result<(Log, Recovered), OutputError> {
    use std::io::{BufReader, Read};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let len = file.metadata()?.len();
    let mut reader = BufReader::with_capacity(MAX_CHUNK, &file);
    let (mut committed, mut data) = (0u64, 0u64);
    let mut header = [0u8; HEADER];
    while committed + HEADER as u64 <= len {
        reader.read_exact(&mut header)?;
        let record = u32::from_le_bytes([header[1], header[2], header[3], header[4]]) as u64;
        let valid = Fd::from_tag(header[0]).is_some() && (1..=MAX_CHUNK as u64).contains(&record);
        if !valid || committed + HEADER as u64 + record > len {
            break;
        }
        // `record <= MAX_CHUNK` fits in i64.
        reader.seek_relative(record as i64)?;
        committed += HEADER as u64 + record;
        data += record;
    }
    drop(reader);
    if committed < len {
        file.set_len(committed)?;
        file.sync_all()?;
    }
    Ok((
        sealed(path, committed, data),
        Recovered {
            data,
            cut: len - committed,
        },
    ))
}

/// A sealed log at `path` that claims no bytes, for a job whose log cannot
/// be opened: readers get an I/O error while the file is not there (the
/// output is missing, which must not look like no output), and nothing
/// otherwise.
pub fn sealed_empty(path: &Path) -> Log {
    sealed(path, 0, 0)
}

/// A sealed log of `committed` bytes holding `data` output bytes.
fn sealed(path: &Path, committed: u64, data: u64) -> Log {
    // The sender goes away at once; readers still see the last value.
    let (_, progress) = watch::channel(Progress {
        committed,
        data,
        sealed: true,
    });
    Log {
        path: path.to_owned(),
        progress,
        cursors: cache::Cursors::sealed(),
    }
}

/// A buffer a pipe can be read into and then appended without a copy: the
/// first 5 bytes are reserved for the record header.
pub struct RecordBuf(Box<[u8]>);

impl RecordBuf {
    /// A new buffer for one record of up to [`MAX_CHUNK`] bytes.
    pub fn new() -> Self {
        Self(vec![0; HEADER + MAX_CHUNK].into_boxed_slice())
    }

    /// Where a pipe read should put its bytes ([`MAX_CHUNK`] bytes).
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.0[HEADER..]
    }
}

impl Default for RecordBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl LogWriter {
    /// Appends the first `len` bytes of `buf`'s data area as one record from
    /// `fd` and wakes every reader. `len == 0` appends nothing. The write is
    /// made on the calling thread (see "Threads" above for why).
    ///
    /// # Errors
    /// [`OutputError::Io`] if the write fails (e.g. the disk is full); the
    /// committed length is then unchanged, so readers never see a partial
    /// record.
    ///
    /// # Panics
    /// If `len > MAX_CHUNK` (a caller bug: the data area is that long).
    pub fn append(&mut self, fd: Fd, buf: &mut RecordBuf, len: usize) -> Result<(), OutputError> {
        assert!(len <= MAX_CHUNK, "record longer than MAX_CHUNK");
        if len == 0 {
            return Ok(());
        }
        buf.0[0] = fd.tag();
        // `len <= MAX_CHUNK` fits in u32.
        buf.0[1..HEADER].copy_from_slice(&(len as u32).to_le_bytes());
        let record = &buf.0[..HEADER + len];
        self.file.write_all_at(record, self.committed)?;
        let before = self.committed;
        self.committed += record.len() as u64;
        self.data += len as u64;
        self.progress.send_modify(|p| {
            p.committed = self.committed;
            p.data = self.data;
        });
        if before / cache::WINDOW != self.committed / cache::WINDOW {
            self.window_done();
        }
        Ok(())
    }

    /// A window of the log is complete: its writeback starts, so that it is
    /// clean when its turn to be released comes, and what every cursor has
    /// passed is released. Both go to a blocking thread (inline they cost
    /// this thread a third of its time), one batch at a time: while one
    /// runs, the windows completed meanwhile wait for the next.
    fn window_done(&mut self) {
        let now = self.cursors.writer_at(self.committed);
        self.to_release = cache::Release::hull(self.to_release, now);
        if self.cache_work.as_mut().is_some_and(|w| !w.is_done()) {
            return;
        }
        self.cache_work = Some(self.cache_work());
    }

    /// Hands the writeback to start and the release due now to the cache
    /// thread.
    fn cache_work(&mut self) -> cache::Pending {
        let upto = self.committed / cache::WINDOW * cache::WINDOW;
        let from = self.written_back;
        self.written_back = upto.max(from);
        cache::Work {
            file: self.file.clone(),
            writeback: (upto > from).then(|| cache::Release {
                offset: from,
                len: upto - from,
            }),
            release: self.to_release.take(),
        }
        .send()
    }

    /// Bytes of complete records written so far (the file's logical length).
    pub fn len(&self) -> u64 {
        self.committed
    }

    /// True before the first append.
    pub fn is_empty(&self) -> bool {
        self.committed == 0
    }

    /// Output bytes appended so far (record headers not counted): what a
    /// reader of the whole log receives.
    pub fn data_len(&self) -> u64 {
        self.data
    }

    /// Flushes every appended record to the disk (fdatasync(2)), so that a
    /// record saying the job ended never outlives its output in a crash. The
    /// flush runs on tokio's blocking pool (on a duplicate of the
    /// descriptor), never on a runtime worker thread: it waits for the disk.
    ///
    /// # Errors
    /// [`OutputError::Io`] if the flush fails.
    pub async fn sync(&mut self) -> Result<(), OutputError> {
        // What waited for the last batch goes too, not waited for: the
        // cache thread serves every log, and a job's end must not wait for
        // other jobs' writeback there.
        drop(self.cache_work.take());
        drop(self.cache_work());
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || file.sync_data())
            .await
            .map_err(io::Error::other)??;
        Ok(())
    }

    /// Marks the log complete (readers that reach its end stop waiting) and
    /// closes the writer's descriptor.
    pub fn seal(self) {
        self.progress.send_modify(|p| p.sealed = true);
        self.cursors.writer_gone();
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        // A writer that goes away without `seal` (its task was cancelled) must
        // not leave readers waiting forever.
        self.progress
            .send_if_modified(|p| !std::mem::replace(&mut p.sealed, true));
        self.cursors.writer_gone();
    }
}

impl Log {
    /// A reader from byte 0 that follows the log until it is sealed. It opens
    /// the file and holds the descriptor until dropped.
    ///
    /// # Errors
    /// [`OutputError::Io`] if the file cannot be opened.
    pub fn follow(&self) -> Result<LogReader, OutputError> {
        Ok(LogReader {
            file: Arc::new(File::open(&self.path)?),
            progress: self.progress.clone(),
            position: self.cursors.reader(),
            cursors: self.cursors.clone(),
            release: None,
            cache_work: None,
            offset: 0,
            limit: None,
            buf: vec![0; HEADER + MAX_CHUNK].into_boxed_slice(),
            nowait: true,
        })
    }

    /// A reader from byte 0 that stops at what has been written now.
    ///
    /// # Errors
    /// As [`Log::follow`].
    pub fn snapshot(&self) -> Result<LogReader, OutputError> {
        let mut reader = self.follow()?;
        reader.limit = Some(self.progress.borrow().committed);
        Ok(reader)
    }

    /// True once the writer has sealed the log (or gone away).
    pub fn is_sealed(&self) -> bool {
        self.progress.borrow().sealed
    }

    /// Bytes of complete records written so far, headers included.
    pub fn committed_len(&self) -> u64 {
        self.progress.borrow().committed
    }

    /// Output bytes in the complete records written so far (headers not
    /// counted).
    pub fn data_len(&self) -> u64 {
        self.progress.borrow().data
    }
}

/// A cursor over a log from byte 0, with its own offset.
pub struct LogReader {
    file: Arc<File>,
    progress: watch::Receiver<Progress>,
    /// This reader's offset as the log's cursors see it.
    position: Arc<std::sync::atomic::AtomicU64>,
    cursors: Arc<cache::Cursors>,
    /// Pages this reader should hand back, not yet handed to the cache
    /// thread.
    release: Option<cache::Release>,
    /// This reader's release in flight, if any.
    cache_work: Option<cache::Pending>,
    offset: u64,
    /// Stop here instead of following (a snapshot).
    limit: Option<u64>,
    buf: Box<[u8]>,
    /// The file system answers `RWF_NOWAIT` reads (see `fileio.rs`).
    nowait: bool,
}

impl LogReader {
    /// The next chunk of output, or `None` at the end: for a follower, once the
    /// log is sealed and every record was returned; for a snapshot, at the
    /// length the log had when the snapshot was taken.
    ///
    /// Consecutive records of the same fd are merged into one chunk of at most
    /// [`MAX_CHUNK`] bytes. Waits (without polling) while the reader has caught
    /// up with an unsealed log.
    ///
    /// # Errors
    /// [`OutputError::Io`] if reading fails, [`OutputError::Corrupt`] if a
    /// record header is invalid.
    ///
    /// # Cancel safety
    /// Cancel safe: the offset only moves when a chunk is returned.
    pub async fn next(&mut self) -> Result<Option<Chunk>, OutputError> {
        if self.release.is_some() && self.cache_work.as_mut().is_none_or(|w| w.is_done()) {
            // Off this thread (it waits for the disk), and not waited for:
            // it changes nothing this reader reads. One at a time: what is
            // released meanwhile joins the next.
            self.cache_work = Some(
                cache::Work {
                    file: self.file.clone(),
                    writeback: None,
                    release: self.release.take(),
                }
                .send(),
            );
        }
        let end = loop {
            let Progress {
                committed, sealed, ..
            } = *self.progress.borrow_and_update();
            let end = self.limit.map_or(committed, |l| l.min(committed));
            if self.offset < end {
                break end;
            }
            if sealed || self.limit.is_some() {
                return Ok(None);
            }
            if self.progress.changed().await.is_err() {
                // Writer dropped after its final update; look once more.
                let Progress { committed, .. } = *self.progress.borrow();
                if self.offset >= committed {
                    return Ok(None);
                }
            }
        };
        self.read_chunk(end).await.map(Some)
    }

    /// Fills `self.buf[..want]` from `self.offset`: from the page cache on
    /// this thread as far as it holds the bytes, the rest on the blocking
    /// pool.
    async fn fill(&mut self, want: usize) -> Result<(), OutputError> {
        let mut done = 0;
        while self.nowait && done < want {
            match fileio::read_cached(
                &self.file,
                &mut self.buf[done..want],
                self.offset + done as u64,
            ) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Unsupported => self.nowait = false,
                Err(e) => return Err(e.into()),
            }
        }
        if done < want {
            let lent = std::mem::take(&mut self.buf);
            let (back, read) = fileio::read_exact_at(
                self.file.clone(),
                lent,
                done..want,
                self.offset + done as u64,
            )
            .await;
            self.buf = back;
            read?;
        }
        Ok(())
    }

    /// Reads the records starting at `self.offset` (which is `< end`) and
    /// merges those of the same fd that fit in one chunk.
    ///
    /// Cancel safe: the offset moves only once the chunk is complete (a
    /// dropped read on the pool gives its buffer back to nobody; the next
    /// call reads into a new one).
    async fn read_chunk(&mut self, end: u64) -> Result<Chunk, OutputError> {
        let want = (end - self.offset).min((HEADER + MAX_CHUNK) as u64) as usize;
        if self.buf.len() < HEADER + MAX_CHUNK {
            // Lent to a read that was dropped (see above).
            self.buf = vec![0; HEADER + MAX_CHUNK].into_boxed_slice();
        }
        self.fill(want).await?;
        let mut pos = 0usize;
        let mut fd = None;
        let mut data = Vec::new();
        while pos + HEADER <= want {
            let tag = self.buf[pos];
            let len = u32::from_le_bytes([
                self.buf[pos + 1],
                self.buf[pos + 2],
                self.buf[pos + 3],
                self.buf[pos + 4],
            ]) as usize;
            let this_fd = match Fd::from_tag(tag) {
                Some(f) if (1..=MAX_CHUNK).contains(&len) => f,
                _ => {
                    return Err(OutputError::Corrupt {
                        offset: self.offset + pos as u64,
                    });
                }
            };
            if pos + HEADER + len > want || fd.is_some_and(|f| f != this_fd) {
                break;
            }
            if data.len() + len > MAX_CHUNK {
                break;
            }
            fd = Some(this_fd);
            data.extend_from_slice(&self.buf[pos + HEADER..pos + HEADER + len]);
            pos += HEADER + len;
        }
        match fd {
            Some(fd) => {
                let before = self.offset;
                self.offset += pos as u64;
                if before / cache::WINDOW != self.offset / cache::WINDOW {
                    let now = self
                        .cursors
                        .reader_moved(&self.position, before, self.offset);
                    self.release = cache::Release::hull(self.release, now);
                }
                Ok(Chunk { fd, data })
            }
            // A committed record always fits in the buffer, so the first
            // header read must describe a whole record.
            None => Err(OutputError::Corrupt {
                offset: self.offset,
            }),
        }
    }
}

/// Helpers for tests of code that reads or damages logs.
#[cfg(test)]
pub(crate) mod testing {
    use super::{Chunk, LogReader};

    /// Every chunk `r` returns, to its end.
    pub(crate) async fn drain(mut r: LogReader) -> Vec<Chunk> {
        let mut out = Vec::new();
        while let Some(c) = r.next().await.unwrap() {
            out.push(c);
        }
        out
    }

    /// Bytes `[fd][len][data]` of one record, for building damaged files.
    pub(crate) fn record(fd: u8, data: &[u8]) -> Vec<u8> {
        let mut r = vec![fd];
        r.extend_from_slice(&(data.len() as u32).to_le_bytes());
        r.extend_from_slice(data);
        r
    }
}

#[cfg(test)]
mod tests;

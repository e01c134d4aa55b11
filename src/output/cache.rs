//! How much of a log the page cache keeps: what lies between its slowest
//! reader and its writer, within bounds, and nothing its cursors have all
//! passed.
//!
//! Left to itself the kernel keeps every page of a log cached until memory
//! runs short, so a job writing gigabytes fills the host's page cache with
//! pages nobody reads again, and every new page of a log is one taken from
//! free memory. On a VM that hands free memory back to its host (free page
//! reporting, as on the 2-core machine) a page taken from free memory costs
//! about ten times a reused one: `head -c 2G /dev/zero > file` took
//! 0.5 s into reused pages and 6.5 s into new ones there, and a job's
//! 2 GiB of output took its writer 3.1 to 8.3 s by the same measure. Here
//! a log's pages go back to the kernel (`POSIX_FADV_DONTNEED`) once they
//! are on the disk and every cursor has passed them, so the next pages
//! written are those same pages again: that writer takes 2.1 to 2.6 s,
//! whatever the memory did before.
//!
//! A log is cut into windows of [`WINDOW`] bytes. When the writer
//! completes one, that window's writeback starts (`sync_file_range(2)`,
//! not waited for) and whatever every cursor has passed is released: the
//! writer keeps the last [`KEEP`] bytes for followers close behind, a slow
//! follower holds the cache back to its own offset but never more than
//! [`MAX_HOLD`] behind the writer, and a follower behind what was released
//! (it reads from the disk) hands back each window it read when nobody is
//! still in it. A log opened sealed (a finished job's, read from the
//! store by `jobs output`) releases nothing: reading it again is served
//! from the cache, as the kernel would keep it.
//!
//! The calls go to one thread of their own, `jobs-log-cache`: a release
//! waits for the writeback of its pages, and inline they took a third of
//! the writer's time. Each writer has at most one batch queued (windows
//! completed meanwhile join the next), and so has each reader: the queue
//! holds at most one entry per log cursor (one whose reader was dropped
//! meanwhile stays until its turn, with its descriptor). Nobody waits for
//! the thread, not even a job's end: a disk that stalls stalls this thread
//! and nothing else; the pages then simply stay cached. Nothing here changes what a reader gets, only whether it
//! comes from the cache or from the disk.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak, mpsc};

/// Bytes of a log per window: the unit of writeback and of release.
pub(super) const WINDOW: u64 = 8 << 20;
/// Bytes behind the writer always kept cached, for readers close behind.
pub(super) const KEEP: u64 = 32 << 20;
/// Most bytes behind the writer kept cached for a slow reader; a reader
/// further behind reads from the disk. A follower of a job that writes
/// faster than the network carries (2 GiB of zeros) fell more than 256 MiB
/// behind and read back from the disk what had just been written.
pub(super) const MAX_HOLD: u64 = 1 << 30;

/// The cursors of one log: where each reader is and where the writer is.
#[derive(Debug, Default)]
pub(super) struct Cursors {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Every reader's offset; dead ones are pruned as they are found.
    readers: Vec<Weak<AtomicU64>>,
    /// The writer's length while it writes; `None` once it is gone.
    writer: Option<u64>,
    /// Everything below this offset was released (a multiple of WINDOW).
    released: u64,
    /// Nothing is ever released (a log that was sealed when opened).
    passive: bool,
}

/// A byte range of a log to hand back to the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Release {
    pub(super) offset: u64,
    pub(super) len: u64,
}

impl Release {
    /// The smallest range holding `a` and `b`, either of which may be
    /// missing. (Between two releases lies only what was released once
    /// already.)
    pub(super) fn hull(a: Option<Self>, b: Option<Self>) -> Option<Self> {
        match (a, b) {
            (Some(a), Some(b)) => {
                let offset = a.offset.min(b.offset);
                let end = (a.offset + a.len).max(b.offset + b.len);
                Some(Self {
                    offset,
                    len: end - offset,
                })
            }
            (a, b) => a.or(b),
        }
    }
}

impl Cursors {
    /// Cursors of a log that a writer is writing.
    pub(super) fn writing() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                writer: Some(0),
                ..State::default()
            }),
        })
    }

    /// Cursors of a log nobody writes (a finished job's): its readers
    /// release nothing, so that a log read again is read from the cache,
    /// as the kernel would keep it.
    pub(super) fn sealed() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                passive: true,
                ..State::default()
            }),
        })
    }

    /// A new reader at byte 0.
    pub(super) fn reader(&self) -> Arc<AtomicU64> {
        let position = Arc::new(AtomicU64::new(0));
        self.lock().readers.push(Arc::downgrade(&position));
        position
    }

    /// The writer has written `len` bytes: what to release now, if anything.
    pub(super) fn writer_at(&self, len: u64) -> Option<Release> {
        let mut state = self.lock();
        state.writer = Some(len);
        state.release_below_low()
    }

    /// The writer is gone: its cursor no longer holds anything.
    pub(super) fn writer_gone(&self) {
        self.lock().writer = None;
    }

    /// The reader at `position` moved from `from` to `to`, crossing a window
    /// boundary: what to release now, if anything.
    pub(super) fn reader_moved(
        &self,
        position: &Arc<AtomicU64>,
        from: u64,
        to: u64,
    ) -> Option<Release> {
        position.store(to, Ordering::Relaxed);
        let mut state = self.lock();
        if state.passive {
            return None;
        }
        if let Some(release) = state.release_below_low() {
            return Some(release);
        }
        // Behind what was released already: this reader read that window
        // from the disk into the cache again. Hand it back when nobody else
        // is still in it or behind it.
        let window = from / WINDOW * WINDOW;
        let end = window + WINDOW;
        if end <= to && end <= state.released && state.min_reader().is_none_or(|min| min >= end) {
            return Some(Release {
                offset: window,
                len: WINDOW,
            });
        }
        None
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a few numbers always left consistent; a panic
        // elsewhere while holding it cannot break it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    /// The slowest live reader's offset, pruning readers that are gone.
    fn min_reader(&mut self) -> Option<u64> {
        self.readers.retain(|r| r.strong_count() > 0);
        self.readers
            .iter()
            .filter_map(Weak::upgrade)
            .map(|r| r.load(Ordering::Relaxed))
            .min()
    }

    /// Releases every whole window below the lowest cursor that was not
    /// released yet.
    fn release_below_low(&mut self) -> Option<Release> {
        let readers = self.min_reader();
        let low = match (self.writer, readers) {
            // A slow reader holds the cache back, but at most MAX_HOLD
            // behind the writer; the writer keeps KEEP behind itself.
            (Some(w), Some(r)) => r
                .max(w.saturating_sub(MAX_HOLD))
                .min(w.saturating_sub(KEEP)),
            (Some(w), None) => w.saturating_sub(KEEP),
            (None, Some(r)) => r,
            // Nobody reads or writes: nothing moves, nothing to release.
            (None, None) => return None,
        };
        let floor = low / WINDOW * WINDOW;
        if floor <= self.released {
            return None;
        }
        let release = Release {
            offset: self.released,
            len: floor - self.released,
        };
        self.released = floor;
        Some(release)
    }
}

/// One call's worth of work for the cache thread.
pub(super) struct Work {
    /// The log.
    pub(super) file: Arc<File>,
    /// Where to start writeback (not waited for).
    pub(super) writeback: Option<Release>,
    /// What to hand back once it is on the disk.
    pub(super) release: Option<Release>,
}

/// The cache thread's queue: work, and whom to tell it is done.
type Queue = mpsc::Sender<(Work, tokio::sync::oneshot::Sender<()>)>;

/// Work handed to the cache thread; [`Pending::is_done`] says when it was done.
#[derive(Debug)]
pub(super) struct Pending(tokio::sync::oneshot::Receiver<()>);

impl Work {
    /// Queues this work on the cache thread (started on first use).
    pub(super) fn send(self) -> Pending {
        let (tx, rx) = tokio::sync::oneshot::channel();
        static THREAD: OnceLock<Queue> = OnceLock::new();
        let thread = THREAD.get_or_init(|| {
            let (queue, work) = mpsc::channel::<(Work, tokio::sync::oneshot::Sender<()>)>();
            let started = std::thread::Builder::new()
                .name("jobs-log-cache".into())
                .spawn(move || {
                    for (w, done) in work {
                        w.run();
                        let _ = done.send(());
                    }
                });
            if let Err(e) = started {
                tracing::warn!(error = %e, "cannot start the log cache thread; logs stay in the page cache");
            }
            queue
        });
        // Without the thread the work is dropped, and with it `tx`: the
        // pending work reads as done, and the pages stay cached.
        let _ = thread.send((self, tx));
        Pending(rx)
    }

    fn run(self) {
        if let Some(w) = self.writeback {
            start_writeback(&self.file, w.offset, w.len);
        }
        if let Some(r) = self.release {
            release(&self.file, r);
        }
    }
}

impl Pending {
    /// True once the work was done (or dropped).
    pub(super) fn is_done(&mut self) -> bool {
        !matches!(
            self.0.try_recv(),
            Err(tokio::sync::oneshot::error::TryRecvError::Empty)
        )
    }
}

/// Starts the writeback of `[offset, offset + len)` without waiting for it.
pub(super) fn start_writeback(file: &File, offset: u64, len: u64) {
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: plain syscall on a descriptor `file` keeps open; no memory is
    // passed. A failure only means the kernel writes the pages back later.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// Hands the cached pages of `release` back to the kernel once they are
/// on the disk: waits for their writeback first, so it runs off the
/// runtime's worker threads and off the writer's.
pub(super) fn release(file: &File, release: Release) {
    let (Ok(offset), Ok(len)) = (i64::try_from(release.offset), i64::try_from(release.len)) else {
        return;
    };
    let fd = file.as_raw_fd();
    // SAFETY: plain syscalls on a descriptor `file` keeps open; no memory
    // is passed. A failure only means the pages stay cached, as they would
    // without this module.
    unsafe {
        libc::sync_file_range(
            fd,
            offset,
            len,
            libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER,
        );
        libc::posix_fadvise(fd, offset, len, libc::POSIX_FADV_DONTNEED);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = 1 << 20;

    // Scenario: a writer with nobody following releases what lies more
    // than KEEP behind it, a window at a time, each byte once.
    #[test]
    fn a_lone_writer_releases_what_lies_more_than_keep_behind_it() {
        let c = Cursors::writing();
        assert_eq!(c.writer_at(KEEP), None);
        assert_eq!(c.writer_at(KEEP + WINDOW - 1), None);
        assert_eq!(
            c.writer_at(KEEP + WINDOW),
            Some(Release {
                offset: 0,
                len: WINDOW
            })
        );
        assert_eq!(c.writer_at(KEEP + WINDOW + M), None);
        assert_eq!(
            c.writer_at(KEEP + 4 * WINDOW + M),
            Some(Release {
                offset: WINDOW,
                len: 3 * WINDOW
            })
        );
    }

    // Scenario: a follower behind the writer keeps the cache from there;
    // moving on it releases what it passed; a reader that stalls holds at
    // most MAX_HOLD.
    #[test]
    fn a_slow_reader_holds_the_cache_back_up_to_max_hold() {
        let c = Cursors::writing();
        let r = c.reader();
        assert_eq!(c.writer_at(KEEP + 3 * WINDOW), None);
        assert_eq!(
            c.reader_moved(&r, 0, WINDOW + 5),
            Some(Release {
                offset: 0,
                len: WINDOW
            })
        );
        // The reader stalls; the writer goes on.
        assert_eq!(c.writer_at(MAX_HOLD + WINDOW), None);
        assert_eq!(
            c.writer_at(MAX_HOLD + 3 * WINDOW),
            Some(Release {
                offset: WINDOW,
                len: 2 * WINDOW
            })
        );
        // A dropped reader holds nothing.
        drop(r);
        assert_eq!(
            c.writer_at(MAX_HOLD + 3 * WINDOW + KEEP),
            Some(Release {
                offset: 3 * WINDOW,
                len: MAX_HOLD
            })
        );
    }

    // Scenario: a reader behind what was released (it reads from the
    // disk) hands back each window it read when nobody else is in it, but
    // not while another reader is still behind it.
    #[test]
    fn a_reader_behind_the_released_part_hands_back_what_it_read_again() {
        let c = Cursors::writing();
        assert!(c.writer_at(KEEP + 4 * WINDOW).is_some());
        let late = c.reader();
        let later = c.reader();
        assert_eq!(
            c.reader_moved(&late, 0, WINDOW),
            None,
            "`later` is still at 0"
        );
        assert_eq!(
            c.reader_moved(&later, 0, WINDOW + 1),
            Some(Release {
                offset: 0,
                len: WINDOW
            })
        );
        // Within one window: nothing.
        assert_eq!(c.reader_moved(&later, WINDOW + 1, WINDOW + 2), None);
    }

    #[test]
    fn a_hull_spans_both_ranges_and_keeps_a_lone_one() {
        let r = |offset, len| Some(Release { offset, len });
        assert_eq!(Release::hull(r(8, 8), r(32, 8)), r(8, 32));
        assert_eq!(Release::hull(r(32, 8), r(0, 8)), r(0, 40));
        assert_eq!(Release::hull(None, r(4, 4)), r(4, 4));
        assert_eq!(Release::hull(r(4, 4), None), r(4, 4));
        assert_eq!(Release::hull(None, None), None);
    }

    // Scenario: once the writer is gone, the readers of its log go on
    // releasing what they all passed; a log opened sealed (a finished
    // job's, read by `jobs output`) releases nothing, so that reading it
    // again is served from the cache.
    #[test]
    fn readers_release_after_the_writer_is_gone_but_not_in_a_log_opened_sealed() {
        let c = Cursors::writing();
        let r = c.reader();
        c.writer_gone();
        assert_eq!(c.reader_moved(&r, 0, WINDOW - 1), None);
        assert_eq!(
            c.reader_moved(&r, WINDOW - 1, 2 * WINDOW),
            Some(Release {
                offset: 0,
                len: 2 * WINDOW
            })
        );
        let c = Cursors::sealed();
        let r = c.reader();
        assert_eq!(c.reader_moved(&r, WINDOW - 1, 2 * WINDOW), None);
    }
}

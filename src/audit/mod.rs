//! The audit log: one JSON line per access decision (`jobsd --audit-log FILE`).
//!
//! This module owns the audit file, its writer thread and its line format.
//! [`AuditLog::open`] opens the file append-only and private to the daemon's
//! user (mode 0600; a symbolic link or anything but a regular file at the
//! path is refused), [`AuditLog::record`] appends one [`Entry`] as one line
//! and waits for the write, [`AuditLog::record_in_background`] does so
//! without waiting, and [`AuditLog::reopen`] opens the path again after the
//! file was rotated.
//!
//! # The writer thread
//! Every write and every reopen happens on one thread of the log's own, in
//! the order they were asked for; callers wait for it asynchronously. A
//! disk that stalls (a frozen file system, a hung network mount) therefore
//! stalls only the requests that wait for their audit line, never the async
//! runtime's threads, so open streams, and requests that need no line, go
//! on. What is queued for the thread is one line per request in flight (or
//! per stop and stream end the daemon makes), so the queue is bounded by
//! what the server admits at once, not by time. The thread ends when the
//! log is dropped, after writing what was queued.
//!
//! A line is one JSON object with these keys, in this order:
//!
//! ```json
//! {"time":"2026-11-30T03:04:05.123456789Z","identity":"sha256:…","subject":"CN=alice","peer":"127.0.0.1:5555","rpc":"Stop","job":"67e55044-10b1-426f-9247-bb680e5fe0c8","owner":"sha256:…","admin":false,"outcome":"allowed","reason":null}
//! ```
//!
//! - `time`: when the line was written, RFC 3339 in UTC, with as many
//!   fractional digits as needed (none on a whole second, at most 9).
//! - `identity`, `owner`: fingerprints as [`Identity`] displays them;
//!   `owner` is `null` when no job or no owner is known.
//! - `subject`: the caller's certificate subject (RFC 4514), verbatim.
//! - `peer`: the caller's address and port.
//! - `rpc`: the method name ([`Rpc::name`]).
//! - `job`: the job id as the caller sent it or as it was created, or `null`.
//! - `admin`: true when the caller acted with admin rights.
//! - `outcome`: `allowed`, `denied` or `failed` ([`Outcome`]).
//! - `reason`: a short snake_case word, or `null`.
//! - A stop the daemon itself makes (its owner was revoked or denylisted
//!   while the job ran) is written with `subject` `jobsd`, `peer`
//!   `0.0.0.0:0`, `identity` and `owner` the job's owner, `rpc` `Stop`,
//!   `outcome` `allowed` and `reason` `revoked` or `denylisted`.
//! - `grants` (only when not empty): for a Start, the policy grants the job
//!   runs with, e.g. `["allow_listen"]` (see `policy.example.toml`).
//! - `suppressed` (only when not 0): refusals of this identity that were
//!   not written since its previous refusal line (see below).
//!
//! # Refusal floods
//! A caller decides how often it is refused, so refusals (`denied`) are
//! written at most [`DENIED_LINES_PER_SECOND`] per second per identity, after
//! a burst of [`DENIED_LINES_BURST`]. Beyond that they are counted, not
//! written, and the next refusal line of that identity carries the count in
//! `suppressed`, so none goes unaccounted. Allowed and failed requests are
//! always written (the policy's rate limits bound them).
//!
//! Text fields come from certificates and requests, so they may hold
//! quotes, backslashes, newlines or other control characters; JSON escapes
//! them, and a line never holds a raw newline before its end.
//!
//! It must not decide anything: callers pass the decision they made, and
//! whether a failed write stops the action is theirs to choose.

use std::collections::HashMap;
use std::fmt;
use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, mpsc};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use serde::{Serialize, Serializer};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::oneshot;

use crate::auth::Identity;
use crate::policy::{Limiters, Rate, Rpc};

/// Permission bits of the audit file: read and write for the daemon's user
/// only. The log names every user and what they did.
const MODE: u32 = 0o600;

/// Refusal lines written per second per identity, after the burst: enough
/// to see what a misbehaving client does, too few for it to fill the disk
/// (about 3 KiB/s).
pub const DENIED_LINES_PER_SECOND: u32 = 10;

/// Refusal lines an identity may have written at once before
/// [`DENIED_LINES_PER_SECOND`] applies.
pub const DENIED_LINES_BURST: u32 = 100;

/// Refusals not written, per identity, since its last refusal line.
type Suppressed = Arc<Mutex<HashMap<Identity, u64>>>;

/// The audit log, shared by every request. Lines from concurrent callers
/// never interleave.
pub struct AuditLog {
    path: PathBuf,
    /// To the writer thread, which owns the file.
    tasks: mpsc::Sender<Task>,
    /// Refusal lines per identity.
    denied: Limiters,
    /// Shared with the writer thread, which gives a count back when the line
    /// carrying it could not be written.
    suppressed: Suppressed,
}

/// What the writer thread is asked to do.
enum Task {
    Line {
        line: Vec<u8>,
        /// The refusal count the line carries, given back to `identity` if
        /// the line is not written.
        identity: Identity,
        suppressed: u64,
        /// `None`: nobody waits; a failure is logged.
        done: Option<oneshot::Sender<io::Result<()>>>,
    },
    Reopen(oneshot::Sender<Result<(), AuditError>>),
}

impl fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens the audit file at `path` for appending, creating it with mode
    /// 0600 if it is missing, and starts its writer thread. An existing file
    /// whose mode gives the group or others any permission is changed to
    /// 0600 (with a warning in the log). The file is opened with `O_APPEND`,
    /// `O_CLOEXEC` and `O_NOFOLLOW`, and never truncated. This opens the
    /// file on the calling thread (at start-up).
    ///
    /// # Errors
    /// [`AuditError::Open`] when the file cannot be created, opened or
    /// changed to 0600, or the path is not a regular file: a symbolic link
    /// (ELOOP), a directory (EISDIR), a FIFO without a reader or a socket
    /// (ENXIO), or a device or a FIFO with a reader ("not a regular file");
    /// or when the writer thread cannot be started.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        let file = open_file(path)?;
        let (tasks, queue) = mpsc::channel();
        let suppressed = Suppressed::default();
        let writer = Writer {
            path: path.to_path_buf(),
            file,
            suppressed: Arc::clone(&suppressed),
        };
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run(queue))
            .map_err(|source| AuditError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            tasks,
            denied: Limiters::new(),
            suppressed,
        })
    }

    /// Opens the path again and writes later lines there, for log rotation
    /// (`jobsd` calls it on SIGHUP): after the old file was renamed, a new
    /// one is created at the path. Checks as [`AuditLog::open`]; done by the
    /// writer thread after every line asked for before.
    ///
    /// # Errors
    /// As [`AuditLog::open`]; the old file is kept and lines still go to it.
    pub async fn reopen(&self) -> Result<(), AuditError> {
        let (done, result) = oneshot::channel();
        if self.tasks.send(Task::Reopen(done)).is_err() {
            return Err(self.open_error(writer_gone()));
        }
        result
            .await
            .unwrap_or_else(|_| Err(self.open_error(writer_gone())))
    }

    /// Appends `entry` as one line and waits until the write returned. The
    /// whole line, newline included, is built first (its `time` is now) and
    /// handed to the kernel in one `write(2)` (more only if the kernel
    /// writes less, e.g. on a full disk) by the writer thread, so lines
    /// never interleave. The line is then in the page cache, not
    /// necessarily on disk (no `fsync`).
    ///
    /// On a disk that stalls, this waits (asynchronously) as long as the
    /// disk does. A refusal over its identity's budget (see "Refusal floods"
    /// in the module doc) is counted instead of written, and `Ok` at once.
    ///
    /// # Errors
    /// [`AuditError::Write`] when the write fails (e.g. the disk is full), or
    /// when the system clock is outside the years 0–9999 that RFC 3339 can
    /// write. A part of the line that reached the file is cut off again
    /// (best effort), so the next line starts on a line of its own.
    pub async fn record(&self, entry: &Entry<'_>) -> Result<(), AuditError> {
        let (done, result) = oneshot::channel();
        if !self.submit(entry, Some(done))? {
            return Ok(());
        }
        result
            .await
            .unwrap_or_else(|_| Err(writer_gone()))
            .map_err(|source| self.write_error(source))
    }

    /// Queues `entry` as [`AuditLog::record`] does, without waiting: for
    /// what the daemon does whether or not the line can be written (a stop
    /// of a banned identity's job, the end of a stream). A line that cannot
    /// be written is logged as an error.
    pub fn record_in_background(&self, entry: &Entry<'_>) {
        if let Err(e) = self.submit(entry, None) {
            let cause = std::error::Error::source(&e).map(ToString::to_string);
            tracing::error!(error = %e, cause, "cannot write the audit log");
        }
    }

    /// Builds `entry`'s line and queues it; `false` when it was counted as
    /// a suppressed refusal instead.
    fn submit(
        &self,
        entry: &Entry<'_>,
        done: Option<oneshot::Sender<io::Result<()>>>,
    ) -> Result<bool, AuditError> {
        let mut suppressed = 0;
        if entry.outcome == Outcome::Denied {
            let mut counts = self
                .suppressed
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if self
                .denied
                .check_request(entry.identity, Some(DENIED_LINES_RATE))
                .is_err()
            {
                let n = counts.entry(entry.identity).or_insert(0);
                if *n == 0 {
                    tracing::warn!(identity = %entry.identity, "refusals of this identity come faster than the audit log records them; counting the rest");
                }
                *n += 1;
                return Ok(false);
            }
            suppressed = counts.remove(&entry.identity).unwrap_or(0);
        }
        let task = line(entry, suppressed, OffsetDateTime::now_utc()).map(|line| Task::Line {
            line,
            identity: entry.identity,
            suppressed,
            done,
        });
        let sent = match task {
            Ok(task) => self.tasks.send(task).map_err(|_| writer_gone()),
            Err(e) => Err(e),
        };
        sent.map(|()| true).map_err(|source| {
            give_back(&self.suppressed, entry.identity, suppressed);
            self.write_error(source)
        })
    }

    /// The path the log was opened with.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write_error(&self, source: io::Error) -> AuditError {
        AuditError::Write {
            path: self.path.clone(),
            source,
        }
    }

    fn open_error(&self, source: io::Error) -> AuditError {
        AuditError::Open {
            path: self.path.clone(),
            source,
        }
    }
}

/// What a caller gets if the writer thread is gone (it panicked).
fn writer_gone() -> io::Error {
    io::Error::other("the audit log's writer thread has ended")
}

/// Adds `n` refusals not written back to `identity`'s count.
fn give_back(suppressed: &Mutex<HashMap<Identity, u64>>, identity: Identity, n: u64) {
    if n > 0 {
        *suppressed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(identity)
            .or_insert(0) += n;
    }
}

/// The writer thread's state: the only owner of the open file.
struct Writer {
    path: PathBuf,
    file: File,
    suppressed: Suppressed,
}

impl Writer {
    /// Does each task in turn until every sender is gone.
    fn run(mut self, queue: mpsc::Receiver<Task>) {
        for task in queue {
            match task {
                Task::Line {
                    line,
                    identity,
                    suppressed,
                    done,
                } => {
                    let written = self.append(&line);
                    if written.is_err() {
                        // Not written: the count goes to the next refusal line.
                        give_back(&self.suppressed, identity, suppressed);
                    }
                    match done {
                        Some(done) => {
                            let _ = done.send(written);
                        }
                        None => {
                            if let Err(e) = written {
                                tracing::error!(path = %self.path.display(), error = %e, "cannot write the audit log");
                            }
                        }
                    }
                }
                Task::Reopen(done) => {
                    let reopened = open_file(&self.path).map(|file| self.file = file);
                    let _ = done.send(reopened);
                }
            }
        }
    }

    /// One line in one write; a part that reached the file is cut off
    /// again, since a torn line would glue the next one to it.
    fn append(&self, line: &[u8]) -> io::Result<()> {
        let before = self.file.metadata().map(|m| m.len());
        (&self.file).write_all(line).inspect_err(|_| {
            if let Ok(before) = before {
                let _ = self.file.set_len(before);
            }
        })
    }
}

/// Opens, checks and if needed tightens the audit file at `path`.
fn open_file(path: &Path) -> Result<File, AuditError> {
    let open_error = |source| AuditError::Open {
        path: path.to_path_buf(),
        source,
    };
    // O_NONBLOCK: opening a FIFO for writing would otherwise wait for a
    // reader; it is refused below, and cleared again for a regular file.
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(MODE)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(open_error)?;
    let metadata = file.metadata().map_err(open_error)?;
    // Checked before any change of mode, so a device at the path (say
    // /dev/null) is never chmod-ed.
    if !metadata.file_type().is_file() {
        return Err(open_error(io::Error::other("not a regular file")));
    }
    fcntl(&file, FcntlArg::F_SETFL(OFlag::O_APPEND)).map_err(|e| open_error(e.into()))?;
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        tracing::warn!(
            path = %path.display(),
            mode = format_args!("{mode:04o}"),
            "the audit log was readable or writable by others; changing its mode to 0600"
        );
        file.set_permissions(Permissions::from_mode(MODE))
            .map_err(open_error)?;
    }
    Ok(file)
}

/// One access decision, as a caller hands it to [`AuditLog::record`].
#[derive(Clone, Debug)]
pub struct Entry<'a> {
    /// The caller's identity, from their verified certificate.
    pub identity: Identity,
    /// The caller's certificate subject, RFC 4514 (e.g. `CN=alice`).
    pub subject: &'a str,
    /// The caller's address and port.
    pub peer: SocketAddr,
    /// The RPC.
    pub rpc: Rpc,
    /// The job id as given by the caller or as created; may be malformed.
    pub job: Option<String>,
    /// The job's owner, when known.
    pub owner: Option<Identity>,
    /// The caller acted with admin rights on someone else's job, or listed
    /// every user's jobs.
    pub admin: bool,
    /// What was decided.
    pub outcome: Outcome,
    /// Why, as a short snake_case word (`denylisted`, `rate_limited`,
    /// `not_owner`, …); `None` for a plain allow.
    pub reason: Option<&'a str>,
    /// The policy grants in force for a started job (`allow_listen`,
    /// `allow_user_namespaces`); empty for none and for every other RPC.
    pub grants: &'a [&'static str],
}

/// The outcome of a decision, as the `outcome` field writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `allowed`: the request was let through.
    Allowed,
    /// `denied`: the policy or an access check refused it.
    Denied,
    /// `failed`: it was allowed but the action failed (the `reason` says
    /// how, e.g. `invalid_argument`).
    Failed,
}

impl Outcome {
    /// The word the log writes: `allowed`, `denied` or `failed`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Denied => "denied",
            Outcome::Failed => "failed",
        }
    }
}

/// The audit log cannot be opened or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// Creating, opening or changing the mode of the file failed, or the
    /// path is not a regular file (a symbolic link, directory, FIFO, socket
    /// or device).
    #[error("cannot open the audit log {}", path.display())]
    Open {
        /// The audit log's path.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// A line could not be written.
    #[error("cannot write to the audit log {}", path.display())]
    Write {
        /// The audit log's path.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
}

/// One line as serialised; field order is the line's key order.
#[derive(Serialize)]
struct Line<'a> {
    time: &'a str,
    identity: Shown<Identity>,
    subject: &'a str,
    peer: Shown<SocketAddr>,
    rpc: &'static str,
    job: Option<&'a str>,
    owner: Option<Shown<Identity>>,
    admin: bool,
    outcome: &'static str,
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    grants: &'a [&'static str],
    #[serde(skip_serializing_if = "is_zero")]
    suppressed: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// [`DENIED_LINES_PER_SECOND`] after [`DENIED_LINES_BURST`].
const DENIED_LINES_RATE: Rate = Rate {
    count: NonZeroU32::new(DENIED_LINES_PER_SECOND).unwrap(),
    period: std::time::Duration::from_secs(1),
    burst: NonZeroU32::new(DENIED_LINES_BURST).unwrap(),
};

/// Serialises as the string its `Display` writes.
struct Shown<T>(T);

impl<T: fmt::Display> Serialize for Shown<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

/// The bytes of `entry`'s line written at `now`, newline included.
fn line(entry: &Entry<'_>, suppressed: u64, now: OffsetDateTime) -> io::Result<Vec<u8>> {
    let time = now.format(&Rfc3339).map_err(io::Error::other)?;
    let mut line = serde_json::to_vec(&Line {
        time: &time,
        identity: Shown(entry.identity),
        subject: entry.subject,
        peer: Shown(entry.peer),
        rpc: entry.rpc.name(),
        job: entry.job.as_deref(),
        owner: entry.owner.map(Shown),
        admin: entry.admin,
        outcome: entry.outcome.as_str(),
        reason: entry.reason,
        grants: entry.grants,
        suppressed,
    })?;
    line.push(b'\n');
    Ok(line)
}

#[cfg(test)]
mod tests;

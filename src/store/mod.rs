//! The job-record database in the daemon's state directory.
//!
//! This module owns the on-disk schema of `jobs.db` (an SQLite file), its
//! version and migrations (`schema.rs`), the mapping between a
//! [`JobRecord`] and a table row (`row.rs`), the uid each identity's jobs
//! run as (`uids.rs`), and the transactions that write records. After a
//! restart the database is the source of truth for job records: what
//! [`Store::load`] returns is what the daemon knew, and every write here is
//! one transaction that either happened completely or not at all.
//!
//! It must not know about processes, gRPC or the contents of output files: it
//! stores the numbers and names it is given (an executor's opaque recovery
//! token, a byte count of the output) and nothing else.
//!
//! Writes are serialised by one connection behind a mutex; the async methods
//! run on tokio's blocking pool so that a disk that stalls does not stall the
//! runtime, and so that a dropped caller cannot cut a write in half. A
//! reserve of disk space (`reserve.rs`) keeps removals, job ends and lost
//! marks possible on a full disk.

mod read;
mod reserve;
mod row;
mod schema;
mod uids;

pub use read::{Cursor, Ended, OwnerOutput};
pub use reserve::{RESERVE_BYTES, RESERVE_FILE};
pub use uids::UidAssignment;

use std::fs::OpenOptions;
use std::io;
use std::ops::RangeInclusive;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;
use std::{fmt, panic};

use rusqlite::{Connection, ErrorCode, OpenFlags, Transaction, TransactionBehavior, params};

use crate::auth::Identity;
use crate::limits::ResourceLimits;
use crate::model::{ExitInfo, JobId, ResourceUsage, State};

/// The version of the on-disk schema this build writes and reads: how many
/// migrations have been applied to a database, stored in SQLite's
/// `PRAGMA user_version` (0 = an empty, new database). Changing the schema
/// means bumping this and appending one migration to the list in `schema.rs`
/// (a compile-time assertion keeps the two in step).
pub const SCHEMA_VERSION: u32 = 4;

/// The database's file name inside the state directory. SQLite keeps its
/// write-ahead log next to it as `jobs.db-wal` and `jobs.db-shm`.
pub const FILE_NAME: &str = "jobs.db";

/// One job as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobRecord {
    /// The job's id, unique in the database.
    pub id: JobId,
    /// Who owns it.
    pub owner: Identity,
    /// The program as given, then its arguments (UTF-8, any character but NUL;
    /// stored verbatim).
    pub command: Vec<String>,
    /// When the process was spawned. Stored in nanoseconds since the Unix
    /// epoch: it must lie between 1970-01-01 and 2262-04-11 (`i64::MAX` ns).
    pub started_at: SystemTime,
    /// The limits it runs under; `None` when jobs are not contained.
    pub limits: Option<ResourceLimits>,
    /// Its output quota in bytes; `None` when unlimited. At most `i64::MAX`.
    pub max_output_bytes: Option<u64>,
    /// An opaque token from the executor to find the job's leftover processes
    /// after a crash (e.g. a cgroup name); `None` if the executor has none.
    pub recovery: Option<String>,
    /// The cluster's own id for the job (Slurm's job id) when a cluster
    /// runs it; `None` for jobs run on this machine.
    pub cluster_job_id: Option<String>,
    /// How it ended; `None` while it runs (as far as the database knows).
    pub end: Option<JobEnd>,
}

/// How and when a job ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobEnd {
    /// Its final state; never [`State::Running`] (refused on write).
    pub state: State,
    /// How the main process ended; `None` for [`State::Lost`] and only for it
    /// (anything else is refused on write).
    pub exit: Option<ExitInfo>,
    /// When it became final; the same range as [`JobRecord::started_at`].
    pub ended_at: SystemTime,
    /// What it used in all; `None` when not contained or not readable.
    pub usage: Option<ResourceUsage>,
    /// Output bytes recorded (stdout and stderr; headers not counted). At
    /// most `i64::MAX`.
    pub output_bytes: u64,
}

/// Errors of the job-record database. Each variant says when it happens.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// [`Store::open`] could not create the database file.
    #[error("cannot create the job database {}", path.display())]
    CreateFile {
        /// The database file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// [`Store::open`]: SQLite could not open the file or set it up
    /// (journal mode, synchronous mode).
    #[error("cannot open the job database {}", path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// [`Store::open`]: the file exists but is not SQLite, or is an SQLite
    /// database of another program (its `application_id` is not ours, or it
    /// has tables without being ours). Nothing was written to it.
    #[error(
        "{} is not a jobsd job database (not SQLite, or a database of another program); \
         move it away or use another state directory",
        path.display()
    )]
    NotAJobsDatabase {
        /// The database file.
        path: PathBuf,
    },
    /// [`Store::open`]: the database has a newer schema than this build
    /// knows. Nothing was written to it.
    #[error(
        "{} was written by a newer jobsd (schema version {found}, this one supports up to \
         {supported}); run that jobsd, or use another state directory",
        path.display()
    )]
    SchemaTooNew {
        /// The database file.
        path: PathBuf,
        /// Its schema version.
        found: u32,
        /// [`SCHEMA_VERSION`].
        supported: u32,
    },
    /// [`Store::open`]: migrating the schema from `from` to `to` failed; that
    /// step was rolled back, so the database is at version `from`.
    #[error("cannot migrate the job database {} from schema version {from} to {to}", path.display())]
    Migration {
        /// The database file.
        path: PathBuf,
        /// The version before the failed step.
        from: u32,
        /// The version the step would have reached.
        to: u32,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// A write failed because the disk (or the file system's quota) is full
    /// (`SQLITE_FULL`). The transaction was rolled back; nothing changed.
    #[error("the job database cannot grow: the disk is full")]
    Full,
    /// A write failed for another reason (I/O error, database locked by
    /// another process, SQLite-level corruption). The transaction was rolled
    /// back.
    #[error("cannot write the job database")]
    Write {
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// Reading records failed for a reason other than their contents.
    #[error("cannot read the job database")]
    Read {
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// A stored row cannot be decoded into a [`JobRecord`]: the database was
    /// changed by something other than this module.
    #[error("job record {id} in the database is corrupt: {what}")]
    Corrupt {
        /// The row's id as stored (it may itself be what is corrupt).
        id: String,
        /// What is wrong with it, e.g. `unknown state "paused"`.
        what: String,
    },
    /// [`Store::insert`]: a record with this id already exists.
    #[error("job {id} is already in the database")]
    AlreadyExists {
        /// The id.
        id: JobId,
    },
    /// [`Store::finish`]: there is no record with this id, or it has ended
    /// already.
    #[error("job {id} is not running in the database")]
    NotRunning {
        /// The id.
        id: JobId,
    },
    /// [`Store::insert`] was given a record that has an end: records are
    /// inserted running and ended with [`Store::finish`].
    #[error("job {id} must be inserted as running (without an end)")]
    InsertedEnded {
        /// The id.
        id: JobId,
    },
    /// A [`JobEnd`] does not describe an end: [`State::Running`], or exit
    /// information missing (other than for [`State::Lost`]) or present for
    /// [`State::Lost`].
    #[error("cannot record job {id} as ended in state {state:?}: {why}")]
    InvalidEnd {
        /// The job.
        id: JobId,
        /// The state given.
        state: State,
        /// What is wrong.
        why: &'static str,
    },
    /// A time is before the Unix epoch or after 2262-04-11, which the
    /// database cannot hold (nanoseconds in an `i64`).
    #[error("job {id}: {column} {time:?} is outside 1970-01-01..2262-04-11")]
    TimeOutOfRange {
        /// The job.
        id: JobId,
        /// `started_at` or `ended_at`.
        column: &'static str,
        /// The time given.
        time: SystemTime,
    },
    /// A byte count is above `i64::MAX`, which SQLite's integers cannot hold.
    #[error(
        "job {id}: {column} {value} is above the largest storable value {}",
        i64::MAX
    )]
    ValueTooLarge {
        /// The job.
        id: JobId,
        /// `max_output_bytes` or `output_bytes`.
        column: &'static str,
        /// The value given.
        value: u64,
    },
    /// An async write was not run at all because the tokio runtime shut down
    /// before its blocking pool started it; nothing was written.
    #[error("the job database write was not run: the runtime is shutting down")]
    NotRun,
}

impl StoreError {
    /// The error for a failed write: [`StoreError::Full`] when SQLite says the
    /// disk is full, else [`StoreError::Write`].
    fn write(source: rusqlite::Error) -> Self {
        match source.sqlite_error_code() {
            Some(ErrorCode::DiskFull) => StoreError::Full,
            _ => StoreError::Write { source },
        }
    }

    /// The error for a failed read.
    fn read(source: rusqlite::Error) -> Self {
        StoreError::Read { source }
    }
}

/// The job-record database: one SQLite connection shared by clones.
///
/// `Debug` shows the file's path only.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    /// A second, read-only connection for the reads requests make: in WAL
    /// mode they see the last commit without waiting for a write (and its
    /// fsync) on `conn`.
    reader: Arc<Mutex<Connection>>,
    path: Arc<Path>,
    reserve: Arc<reserve::Reserve>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens `dir/`[`FILE_NAME`], creating it (mode 0600, so that only the
    /// daemon's user reads job owners and commands) if it does not exist;
    /// an existing file's mode is left as it is. `dir` must exist.
    ///
    /// It then checks that the file is ours (an empty file, an empty
    /// database, or one carrying our `application_id`) and not newer than
    /// this build, before writing anything; switches to a write-ahead log
    /// with `synchronous = FULL` (a commit that returned survives a power
    /// loss); and applies the migrations from the file's schema version up to
    /// [`SCHEMA_VERSION`], each in its own transaction.
    ///
    /// Blocking: call it at start-up, not from an async task.
    ///
    /// # Errors
    /// [`StoreError::CreateFile`] if the file cannot be created;
    /// [`StoreError::NotAJobsDatabase`] if it belongs to something else;
    /// [`StoreError::SchemaTooNew`] if a newer jobsd wrote it;
    /// [`StoreError::Migration`] if a migration fails;
    /// [`StoreError::Open`] for other SQLite errors.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let path = dir.join(FILE_NAME);
        create_private(&path)?;
        let open_err = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        // No SQLITE_OPEN_CREATE: the file exists now, with our mode. No
        // SQLITE_OPEN_URI: the path is a path. NO_MUTEX: the Mutex below
        // serialises all use of the connection.
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn = Connection::open_with_flags(&path, flags).map_err(open_err)?;
        schema::check_and_migrate(&mut conn, &path)?;
        let reader = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_err)?;
        let reserve = reserve::Reserve::new(dir);
        if let Err(e) = reserve.ensure() {
            tracing::warn!(error = %e, "cannot reserve space for the job store; on a full disk, jobs can then not be removed or recorded as ended");
        }
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
            reader: Arc::new(Mutex::new(reader)),
            path: path.into(),
            reserve: Arc::new(reserve),
        })
    }

    /// The database file, `dir/`[`FILE_NAME`].
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every record, oldest first (by `started_at`, then by id).
    ///
    /// Blocking: call it once at start-up, not from an async task.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] for a row that cannot be decoded (the whole
    /// load fails: a record silently dropped would be a job forgotten);
    /// [`StoreError::Read`] if SQLite fails.
    pub fn load(&self) -> Result<Vec<JobRecord>, StoreError> {
        row::load_all(&self.lock())
    }

    /// Every record without an end (jobs a dead daemon left running, at
    /// start-up), oldest first.
    ///
    /// Blocking: call it at start-up, not from an async task.
    ///
    /// # Errors
    /// As [`Store::load`].
    pub fn load_unfinished(&self) -> Result<Vec<JobRecord>, StoreError> {
        read::unfinished(&self.lock())
    }

    /// Decodes every record, one at a time, and returns their ids: at
    /// start-up, a database with a row that cannot be read is refused
    /// before anything is served (rather than fail the first request that
    /// reads it), and the ids tell which output logs have a record.
    ///
    /// Blocking: call it at start-up, not from an async task.
    ///
    /// # Errors
    /// As [`Store::load`].
    pub fn scan(&self) -> Result<std::collections::HashSet<JobId>, StoreError> {
        read::scan(&self.lock())
    }

    /// Every identity's finished output: the bytes its finished jobs keep
    /// and its most recently ended job. Identities without a finished job
    /// are not listed.
    ///
    /// Blocking: call it at start-up, not from an async task.
    ///
    /// # Errors
    /// As [`Store::load`].
    pub fn finished_output(&self) -> Result<Vec<(Identity, OwnerOutput)>, StoreError> {
        Ok(read::finished_output(&self.lock())?
            .into_iter()
            .map(|o| (o.latest.owner, o))
            .collect())
    }

    /// The record `id`, if there is one, read on the read-only connection.
    ///
    /// Blocking: call it on the blocking pool (or at start-up), not from an
    /// async task.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] if its row cannot be decoded;
    /// [`StoreError::Read`] if SQLite fails.
    pub fn get_now(&self, id: JobId) -> Result<Option<JobRecord>, StoreError> {
        read::get(
            &self.reader.lock().unwrap_or_else(PoisonError::into_inner),
            id,
        )
    }

    /// Up to `limit` records in start order (by `started_at`, then id)
    /// strictly after `after` (from the first without), of `owner` only or
    /// of everyone. Reads an index from the cursor on: the cost is the
    /// page's, whatever the number of records.
    ///
    /// # Errors
    /// As [`Store::get_now`]; [`StoreError::NotRun`] if the runtime shuts
    /// down first.
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads.
    pub async fn page(
        &self,
        owner: Option<Identity>,
        after: Option<Cursor>,
        limit: usize,
    ) -> Result<Vec<JobRecord>, StoreError> {
        self.reading(move |conn| read::page(conn, owner, after, limit))
            .await
    }

    /// Up to `limit` finished jobs that ended at or before `cutoff`, oldest
    /// end first.
    ///
    /// # Errors
    /// As [`Store::get_now`]; [`StoreError::NotRun`] if the runtime shuts
    /// down first.
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads.
    pub async fn ended_by(
        &self,
        cutoff: SystemTime,
        limit: usize,
    ) -> Result<Vec<Ended>, StoreError> {
        self.reading(move |conn| read::ended_by(conn, cutoff, limit))
            .await
    }

    /// The earliest end of a job that ended after `cutoff`, if any.
    ///
    /// # Errors
    /// As [`Store::get_now`]; [`StoreError::NotRun`] if the runtime shuts
    /// down first.
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads.
    pub async fn first_end_after(
        &self,
        cutoff: SystemTime,
    ) -> Result<Option<SystemTime>, StoreError> {
        self.reading(move |conn| read::first_end_after(conn, cutoff))
            .await
    }

    /// Up to `limit` finished jobs of `owner`, oldest end first.
    ///
    /// # Errors
    /// As [`Store::get_now`]; [`StoreError::NotRun`] if the runtime shuts
    /// down first.
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads.
    pub async fn oldest_ended_of(
        &self,
        owner: Identity,
        limit: usize,
    ) -> Result<Vec<Ended>, StoreError> {
        self.reading(move |conn| read::oldest_ended_of(conn, owner, limit))
            .await
    }

    /// The most recently ended job of `owner`, if it has a finished one.
    ///
    /// # Errors
    /// As [`Store::get_now`]; [`StoreError::NotRun`] if the runtime shuts
    /// down first.
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads.
    pub async fn latest_ended_of(&self, owner: Identity) -> Result<Option<Ended>, StoreError> {
        self.reading(move |conn| read::latest_ended_of(conn, owner))
            .await
    }

    /// Marks every record that has no end as lost: state [`State::Lost`], no
    /// exit information, no usage, ended at `at`, with `bytes(id)` output
    /// bytes (the caller counts what the output log holds). All in one
    /// transaction. Returns the ids marked, oldest first.
    ///
    /// Blocking: call it at start-up, before any job is inserted — every
    /// running record is taken to be from a daemon that died. `bytes` must
    /// not use this store (it runs under the store's lock).
    ///
    /// # Errors
    /// [`StoreError::TimeOutOfRange`] if `at` cannot be stored;
    /// [`StoreError::ValueTooLarge`] if `bytes` returns more than `i64::MAX`;
    /// [`StoreError::Corrupt`] for a running row whose id cannot be decoded;
    /// [`StoreError::Full`] or [`StoreError::Write`] if SQLite fails. On any
    /// error nothing was marked.
    pub fn mark_lost(
        &self,
        at: SystemTime,
        bytes: impl Fn(JobId) -> u64,
    ) -> Result<Vec<JobId>, StoreError> {
        let mut conn = self.lock();
        self.spending_reserve(&mut conn, |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(StoreError::write)?;
            let ids = row::running_ids(&tx)?;
            for &id in &ids {
                let end = JobEnd {
                    state: State::Lost,
                    exit: None,
                    ended_at: at,
                    usage: None,
                    output_bytes: bytes(id),
                };
                let updated = row::finish(&tx, id, &end)?;
                // It was selected as running in this very transaction.
                debug_assert!(updated, "running record {id} vanished inside a transaction");
            }
            tx.commit().map_err(StoreError::write)?;
            Ok(ids)
        })
    }

    /// Inserts a new record of a running job (`record.end` must be `None`),
    /// in one transaction.
    ///
    /// # Errors
    /// [`StoreError::InsertedEnded`] if `record.end` is set;
    /// [`StoreError::AlreadyExists`] if its id is stored already;
    /// [`StoreError::TimeOutOfRange`] / [`StoreError::ValueTooLarge`] for
    /// values the database cannot hold; [`StoreError::Full`] if the disk is
    /// full, or has no room left to hold back the store's reserve (see
    /// `reserve.rs`): new jobs wait until removing them is possible;
    /// [`StoreError::Write`] for other SQLite errors;
    /// [`StoreError::NotRun`] if the runtime shuts down first. On any error
    /// nothing was written.
    ///
    /// # Cancel safety
    /// The write runs on tokio's blocking pool and completes even if this
    /// future is dropped: the record is then either fully inserted or not at
    /// all, and the caller does not learn which (a later [`Store::load`]
    /// tells). Only a runtime shutting down before the pool started the
    /// write can prevent it (tokio drops queued blocking tasks at shutdown);
    /// then nothing was written.
    pub async fn insert(&self, record: JobRecord) -> Result<(), StoreError> {
        let reserve = self.reserve.clone();
        self.blocking(move |conn| {
            // A new job only while the space to remove it is held back.
            if let Err(e) = reserve.ensure() {
                if reserve::is_full(&e) {
                    return Err(StoreError::Full);
                }
                tracing::warn!(error = %e, "cannot reserve space for the job store");
            }
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(StoreError::write)?;
            row::insert(&tx, &record)?;
            tx.commit().map_err(StoreError::write)
        })
        .await
    }

    /// Records the end of a running job, in one transaction.
    ///
    /// # Errors
    /// [`StoreError::InvalidEnd`] if `end` is not a valid end (see
    /// [`JobEnd`]); [`StoreError::NotRunning`] if there is no record `id`
    /// or it has ended already; [`StoreError::TimeOutOfRange`] /
    /// [`StoreError::ValueTooLarge`] for values the database cannot hold;
    /// [`StoreError::Full`] / [`StoreError::Write`] if SQLite fails;
    /// [`StoreError::NotRun`] if the runtime shuts down first. On any error
    /// nothing was written.
    ///
    /// # Cancel safety
    /// The write runs on tokio's blocking pool and completes even if this
    /// future is dropped: the end is then either fully recorded or not at
    /// all. Only a runtime shutting down before the pool started the write
    /// can prevent it; then nothing was written.
    pub async fn finish(&self, id: JobId, end: JobEnd) -> Result<(), StoreError> {
        self.write_spending_reserve(move |tx| match row::finish(tx, id, &end)? {
            true => Ok(()),
            false => Err(StoreError::NotRunning { id }),
        })
        .await
    }

    /// Deletes the records with these ids, whatever their state, in one
    /// transaction. Returns the ids of those that existed, in the order
    /// given (an id given twice is returned once; unknown ids not at all).
    ///
    /// # Errors
    /// [`StoreError::Full`] / [`StoreError::Write`] if SQLite fails (a
    /// delete can need space in the write-ahead log);
    /// [`StoreError::NotRun`] if the runtime shuts down first. On any error
    /// nothing was deleted.
    ///
    /// # Cancel safety
    /// The delete runs on tokio's blocking pool and completes even if this
    /// future is dropped: then either all of the records are gone or none.
    /// Only a runtime shutting down before the pool started the delete can
    /// prevent it; then nothing was deleted.
    pub async fn remove(&self, ids: Vec<JobId>) -> Result<Vec<JobId>, StoreError> {
        self.write_spending_reserve(move |tx| {
            let mut delete = tx
                .prepare("DELETE FROM jobs WHERE id = ?1")
                .map_err(StoreError::write)?;
            let mut removed = Vec::new();
            for id in &ids {
                if delete
                    .execute(params![id.to_string()])
                    .map_err(StoreError::write)?
                    == 1
                {
                    removed.push(*id);
                }
            }
            Ok(removed)
        })
        .await
    }

    /// The uid `owner`'s jobs run as, of the uids in `range`: the one it
    /// was given before if it has one there, else the lowest uid of `range`
    /// that was never anyone's, recorded as `owner`'s for good (see
    /// `uids.rs`). One transaction: parallel calls for one identity get one
    /// uid, and no two identities ever get the same one.
    ///
    /// # Errors
    /// [`StoreError::Full`] if a new uid would have to be recorded and the
    /// disk is full (or cannot hold the store's reserve, as for
    /// [`Store::insert`]); [`StoreError::Read`] / [`StoreError::Write`] if
    /// SQLite fails; [`StoreError::NotRun`] if the runtime shuts down first.
    /// On any error nothing was written. A full range is not an error:
    /// [`UidAssignment::RangeFull`].
    ///
    /// # Cancel safety
    /// The transaction runs on tokio's blocking pool and completes even if
    /// this future is dropped; a later call returns what it recorded.
    pub async fn assign_uid(
        &self,
        owner: Identity,
        range: RangeInclusive<u32>,
    ) -> Result<UidAssignment, StoreError> {
        let reserve = self.reserve.clone();
        self.blocking(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(StoreError::write)?;
            if let Some(uid) = uids::current(&tx, owner, &range)? {
                return Ok(UidAssignment::Existing(uid));
            }
            let Some(uid) = uids::first_free(&tx, &range)? else {
                return Ok(UidAssignment::RangeFull);
            };
            // As for a new job: only while the space to remove jobs is held
            // back.
            if let Err(e) = reserve.ensure() {
                if reserve::is_full(&e) {
                    return Err(StoreError::Full);
                }
                tracing::warn!(error = %e, "cannot reserve space for the job store");
            }
            uids::insert(&tx, owner, uid)?;
            tx.commit().map_err(StoreError::write)?;
            Ok(UidAssignment::New(uid))
        })
        .await
    }

    /// Runs `work` in one immediate transaction on the blocking pool and
    /// commits it; on a full disk, spends the reserve and runs it again.
    async fn write_spending_reserve<T: Send + 'static>(
        &self,
        work: impl Fn(&Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.clone();
        self.blocking(move |conn| {
            store.spending_reserve(conn, |conn| {
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(StoreError::write)?;
                let done = work(&tx)?;
                tx.commit().map_err(StoreError::write)?;
                Ok(done)
            })
        })
        .await
    }

    /// Makes the reserve again if it was spent and there is room (after
    /// output was deleted, say). Best effort: a disk still full leaves it
    /// spent, and new jobs wait.
    ///
    /// # Cancel safety
    /// Runs on the blocking pool to its end even if dropped.
    pub async fn replenish_reserve(&self) {
        let reserve = self.reserve.clone();
        let _ = self
            .blocking(move |_| {
                if let Err(e) = reserve.ensure() {
                    tracing::debug!(error = %e, "cannot make the job store's reserve again yet");
                }
                Ok(())
            })
            .await;
    }

    /// Runs the write `work`; if it fails because the disk is full, gives
    /// back the reserve (see `reserve.rs`) and runs it once more.
    fn spending_reserve<T>(
        &self,
        conn: &mut Connection,
        mut work: impl FnMut(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match work(conn) {
            Err(StoreError::Full) if self.reserve.release() => work(conn),
            result => result,
        }
    }

    /// The connection, whoever held it before.
    fn lock(&self) -> MutexGuard<'_, Connection> {
        // Poisoning is safe to ignore: every operation is one transaction,
        // and a panic inside one drops its `Transaction`, which rolls it back,
        // so the connection is never left in the middle of a write.
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs the read `work` on the read-only connection on tokio's blocking
    /// pool.
    async fn reading<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let reader = self.reader.clone();
        // Poisoning is safe to ignore: a read changes nothing.
        let task = tokio::task::spawn_blocking(move || {
            work(&reader.lock().unwrap_or_else(PoisonError::into_inner))
        });
        match task.await {
            Ok(result) => result,
            Err(e) if e.is_panic() => panic::resume_unwind(e.into_panic()),
            Err(_) => Err(StoreError::NotRun),
        }
    }

    /// Runs `work` on the connection on tokio's blocking pool. The spawned
    /// task runs to its end even if the returned future is dropped.
    async fn blocking<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let store = self.clone();
        let task = tokio::task::spawn_blocking(move || work(&mut store.lock()));
        match task.await {
            Ok(result) => result,
            // A panic in the store is a bug: let it reach the caller as one.
            Err(e) if e.is_panic() => panic::resume_unwind(e.into_panic()),
            // Blocking tasks cannot be aborted; only a runtime shutting down
            // before the task started cancels it, and then it never ran.
            Err(_) => Err(StoreError::NotRun),
        }
    }
}

/// Creates `path` with mode 0600 unless it exists. Whether an existing file
/// is a database, and ours, SQLite and [`schema::check_and_migrate`] decide.
fn create_private(path: &Path) -> Result<(), StoreError> {
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(StoreError::CreateFile {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests;

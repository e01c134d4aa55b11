//! The schema of `jobs.db`: telling our database from anything else, its
//! version (`PRAGMA user_version`), and the migrations between versions.

use std::path::Path;

use rusqlite::{Connection, ErrorCode, Transaction, TransactionBehavior};

use super::{SCHEMA_VERSION, StoreError};

/// `PRAGMA application_id` of a jobs database: `jobs` in ASCII. SQLite keeps
/// it in the file header (offset 68), so any database without it (or with
/// another program's) is not ours.
pub(super) const APPLICATION_ID: i32 = 0x6a6f_6273;

/// One schema step, run inside the transaction that also sets the new
/// `user_version`.
type Migration = fn(&Transaction<'_>) -> rusqlite::Result<()>;

/// Entry `i` takes a database from schema version `i` to `i + 1`. Append
/// only: a released entry never changes, since databases out there ran it.
const MIGRATIONS: &[Migration] = &[to_v1, to_v2, to_v3, to_v4];

// A new migration without a new SCHEMA_VERSION (or the reverse) does not build.
const _: () = assert!(MIGRATIONS.len() == SCHEMA_VERSION as usize);

/// Version 1: one row per job. Times are nanoseconds since the Unix epoch;
/// byte counts are bytes. A running job has NULL in every end column
/// (`ended_at_ns` .. `output_bytes`); an ended one has `ended_at_ns`,
/// `state` and `output_bytes`, and `exit_code` or `signal` + `core_dumped`
/// unless its state is `lost`. What is never queried (command, limits,
/// usage) is JSON text.
fn to_v1(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "CREATE TABLE jobs (
            id               TEXT    NOT NULL PRIMARY KEY, -- canonical UUID v4
            owner            TEXT    NOT NULL,             -- sha256:<64 hex>
            command          TEXT    NOT NULL,             -- JSON array of strings
            started_at_ns    INTEGER NOT NULL,
            limits           TEXT,                         -- JSON object, NULL: none
            max_output_bytes INTEGER,                      -- NULL: unlimited
            recovery         TEXT,                         -- executor's token
            ended_at_ns      INTEGER,                      -- NULL: running
            state            TEXT,                         -- e.g. exited, lost
            exit_code        INTEGER,
            signal           INTEGER,
            core_dumped      INTEGER,                      -- 0 or 1, with signal
            usage            TEXT,                         -- JSON object, NULL: unknown
            output_bytes     INTEGER
        ) STRICT;
        -- Retention: an owner's ended jobs, oldest first.
        CREATE INDEX jobs_owner_ended ON jobs (owner, ended_at_ns);",
    )
}

/// Version 2: the uid each identity's jobs run as (`uids.rs`). A row is
/// never deleted or changed, so a uid, once given to an identity, is never
/// given to another: `uid` is the primary key. An identity has one row per
/// uid range it ran in (usually one).
fn to_v2(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "CREATE TABLE uids (
            uid            INTEGER NOT NULL PRIMARY KEY   -- uid and gid, unique
                           CHECK (uid BETWEEN 1 AND 4294967294),
            owner          TEXT    NOT NULL,              -- sha256:<64 hex>
            assigned_at_ns INTEGER NOT NULL
        ) STRICT;
        CREATE INDEX uids_owner ON uids (owner);",
    )
}

/// Applies the first `version` migrations to an empty database, as a
/// daemon of that schema version would have left it.
/// Version 3: finished jobs are read from the database, not kept in memory, so
/// the reads the daemon makes per request have indexes: a page of `List`
/// (everyone's, or one owner's, in start order from a key cursor) and
/// retention by age (every owner's ended jobs, oldest end first).
fn to_v3(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "CREATE INDEX jobs_started ON jobs (started_at_ns, id);
        CREATE INDEX jobs_owner_started ON jobs (owner, started_at_ns, id);
        CREATE INDEX jobs_ended ON jobs (ended_at_ns) WHERE ended_at_ns IS NOT NULL;",
    )
}

/// Version 4: the cluster's own id of a job a cluster runs (Slurm's job
/// id), shown by `jobs status`; NULL for jobs run on the daemon's machine
/// and for every job recorded before.
fn to_v4(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch("ALTER TABLE jobs ADD COLUMN cluster_job_id TEXT;")
}

#[cfg(test)]
pub(super) fn create_at_version(conn: &mut Connection, version: u32) {
    for (from, migration) in MIGRATIONS[..version as usize].iter().enumerate() {
        let tx = conn.transaction().unwrap();
        migration(&tx).unwrap();
        tx.pragma_update(None, "application_id", APPLICATION_ID)
            .unwrap();
        tx.pragma_update(None, "user_version", from as u32 + 1)
            .unwrap();
        tx.commit().unwrap();
    }
}

/// Checks that the freshly opened `conn` is an empty database or ours and
/// not newer than [`SCHEMA_VERSION`] (writing nothing until then), sets the
/// journal and sync modes, and migrates it to [`SCHEMA_VERSION`].
pub(super) fn check_and_migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let open_err = |source: rusqlite::Error| match source.sqlite_error_code() {
        // SQLite reads the header lazily, at the first statement.
        Some(ErrorCode::NotADatabase) => StoreError::NotAJobsDatabase {
            path: path.to_owned(),
        },
        _ => StoreError::Open {
            path: path.to_owned(),
            source,
        },
    };
    let application_id: i32 = conn
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .map_err(open_err)?;
    // user_version is a signed 32-bit field; a negative one is simply a very
    // large (too new) version.
    let version = conn
        .pragma_query_value(None, "user_version", |r| r.get::<_, i32>(0))
        .map_err(open_err)? as u32;
    let objects: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
        .map_err(open_err)?;
    let empty = application_id == 0 && version == 0 && objects == 0;
    if application_id != APPLICATION_ID && !empty {
        return Err(StoreError::NotAJobsDatabase {
            path: path.to_owned(),
        });
    }
    if version > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            path: path.to_owned(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }

    // A write-ahead log: a commit is one append and one fsync, and readers
    // never see half a transaction. FULL syncs the log at every commit, so a
    // write that returned survives a crash or power loss.
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        .map_err(open_err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        // E.g. a file system without shared memory for the WAL index. The
        // rollback journal is as durable, only slower.
        tracing::warn!(path = %path.display(), mode, "job database is not in WAL mode");
    }
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(open_err)?;
    // Checkpoint every 64 pages (256 KiB) rather than SQLite's 1000, so the
    // log file stays small and, once it has that size, is written over from
    // its start instead of growing: on a full disk, the space the store's
    // reserve gives back is enough for every later removal and job end.
    conn.pragma_update(None, "wal_autocheckpoint", 64)
        .map_err(open_err)?;

    for from in version..SCHEMA_VERSION {
        let to = from + 1;
        let migration_err = |source| StoreError::Migration {
            path: path.to_owned(),
            from,
            to,
            source,
        };
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(migration_err)?;
        MIGRATIONS[from as usize](&tx).map_err(migration_err)?;
        tx.pragma_update(None, "application_id", APPLICATION_ID)
            .map_err(migration_err)?;
        tx.pragma_update(None, "user_version", to)
            .map_err(migration_err)?;
        tx.commit().map_err(migration_err)?;
    }
    Ok(())
}

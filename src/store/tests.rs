use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::FutureExt;
use rusqlite::Connection;
use tempfile::TempDir;

use super::schema::APPLICATION_ID;
use super::*;

fn id(n: u128) -> JobId {
    uuid::Uuid::from_u128(n)
        .hyphenated()
        .to_string()
        .parse()
        .unwrap()
}

fn owner(n: u8) -> Identity {
    Identity::from_spki_der(&[n])
}

/// `secs` seconds and `nanos` nanoseconds after the Unix epoch.
fn at(secs: u64, nanos: u32) -> SystemTime {
    UNIX_EPOCH + Duration::new(secs, nanos)
}

/// A running record with every optional field set.
fn full(n: u128, started_secs: u64) -> JobRecord {
    JobRecord {
        id: id(n),
        owner: owner(n as u8),
        command: vec![
            "/bin/printf".to_owned(),
            String::new(),
            "tab\there\nnewline \"quoted\" \\ 'single' ünïcödé 🦀".to_owned(),
            "--flag=value".to_owned(),
        ],
        started_at: at(started_secs, 123_456_789),
        limits: Some(ResourceLimits {
            memory_bytes: Some(u64::MAX),
            cpu_millis: Some(1500),
            pids: Some(64),
            io_read_bps: Some(1 << 20),
            io_write_bps: None,
        }),
        max_output_bytes: Some(i64::MAX as u64),
        recovery: Some("jobsd/job-7".to_owned()),
        cluster_job_id: Some("4711".to_owned()),
        end: None,
    }
}

/// A running record with every optional field empty.
fn bare(n: u128, started_secs: u64) -> JobRecord {
    JobRecord {
        id: id(n),
        owner: owner(1),
        command: vec!["true".to_owned()],
        started_at: at(started_secs, 0),
        limits: None,
        max_output_bytes: None,
        recovery: None,
        cluster_job_id: None,
        end: None,
    }
}

fn exited(code: i32, ended_secs: u64) -> JobEnd {
    JobEnd {
        state: State::Exited,
        exit: Some(ExitInfo::Exited(code)),
        ended_at: at(ended_secs, 1),
        usage: None,
        output_bytes: 0,
    }
}

fn raw(dir: &TempDir) -> Connection {
    Connection::open(dir.path().join(FILE_NAME)).unwrap()
}

fn user_version(conn: &Connection) -> i64 {
    conn.pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap()
}

fn application_id(conn: &Connection) -> i64 {
    conn.pragma_query_value(None, "application_id", |r| r.get(0))
        .unwrap()
}

// A record with every field set, ended by a signal with a core dump and
// usage, comes back exactly as written (nanoseconds, odd characters, u64::MAX
// inside JSON, i64::MAX in a column).
#[tokio::test]
async fn full_record_round_trips() {
    let dir = TempDir::new().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut record = full(1, 1_700_000_000);
    store.insert(record.clone()).await.unwrap();
    assert_eq!(store.load().unwrap(), vec![record.clone()]);

    let end = JobEnd {
        state: State::Killed,
        exit: Some(ExitInfo::Signaled {
            signal: 11,
            core_dumped: true,
        }),
        ended_at: at(1_700_000_009, 999_999_999),
        usage: Some(ResourceUsage {
            peak_memory_bytes: Some(u64::MAX),
            cpu_usec: None,
            oom_kills: 3,
        }),
        output_bytes: i64::MAX as u64,
    };
    store.finish(record.id, end.clone()).await.unwrap();
    record.end = Some(end);
    assert_eq!(store.load().unwrap(), vec![record]);
}

// Each final state is stored under its fixed lower-case name, with its exit
// in the exit columns, and reads back as the same state and exit.
#[tokio::test]
async fn every_end_state_round_trips_under_its_name() {
    let signaled = Some(ExitInfo::Signaled {
        signal: 9,
        core_dumped: false,
    });
    // The stored exit columns: exit_code, signal, core_dumped.
    type Columns = (Option<i32>, Option<i32>, Option<i64>);
    let by_code = |code| (Some(code), None, None);
    let by_kill: Columns = (None, Some(9), Some(0));
    let cases: [(State, Option<ExitInfo>, &str, Columns); 8] = [
        (
            State::Exited,
            Some(ExitInfo::Exited(3)),
            "exited",
            by_code(3),
        ),
        (State::Killed, signaled, "killed", by_kill),
        (
            State::Stopped,
            Some(ExitInfo::Exited(0)),
            "stopped",
            by_code(0),
        ),
        (State::Stopped, signaled, "stopped", by_kill),
        (State::Oom, signaled, "oom", by_kill),
        (
            State::OutputLimit,
            Some(ExitInfo::Exited(255)),
            "output_limit",
            by_code(255),
        ),
        (State::Lost, None, "lost", (None, None, None)),
        (State::OutputFailed, signaled, "output_failed", by_kill),
    ];
    let dir = TempDir::new().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut expected = Vec::new();
    for (n, (state, exit, ..)) in cases.iter().enumerate() {
        let mut record = bare(n as u128, n as u64);
        store.insert(record.clone()).await.unwrap();
        let end = JobEnd {
            state: *state,
            exit: *exit,
            ended_at: at(100 + n as u64, 5),
            usage: None,
            output_bytes: n as u64,
        };
        store.finish(record.id, end.clone()).await.unwrap();
        record.end = Some(end);
        expected.push(record);
    }
    assert_eq!(store.load().unwrap(), expected);

    let conn = raw(&dir);
    let mut select = conn
        .prepare("SELECT state, exit_code, signal, core_dumped FROM jobs ORDER BY started_at_ns")
        .unwrap();
    let rows: Vec<(String, Columns)> = select
        .query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?, r.get(3)?))))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let want: Vec<_> = cases
        .iter()
        .map(|(_, _, name, columns)| (name.to_string(), *columns))
        .collect();
    assert_eq!(rows, want);
}

// Records come back oldest first, then by id; a finished one carries its end,
// a running one none.
#[tokio::test]
async fn insert_finish_load() {
    let dir = TempDir::new().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let late = bare(1, 20);
    let early_b = bare(3, 10);
    let early_a = bare(2, 10);
    for r in [&late, &early_b, &early_a] {
        store.insert(r.clone()).await.unwrap();
    }
    store.finish(id(3), exited(0, 30)).await.unwrap();

    let mut early_b_done = early_b;
    early_b_done.end = Some(exited(0, 30));
    assert_eq!(store.load().unwrap(), vec![early_a, early_b_done, late]);
}

// After a crash every record without an end becomes Lost with the byte count
// the caller supplies; finished records keep their end; a second pass finds
// nothing.
#[tokio::test]
async fn mark_lost_marks_only_unfinished_records() {
    let dir = TempDir::new().unwrap();
    let store = Store::open(dir.path()).unwrap();
    for r in [bare(1, 3), bare(2, 1), bare(3, 2)] {
        store.insert(r).await.unwrap();
    }
    store.finish(id(3), exited(4, 5)).await.unwrap();

    let now = at(1_000, 42);
    let marked = store
        .mark_lost(now, |job| if job == id(1) { 10 } else { 20 })
        .unwrap();
    assert_eq!(marked, vec![id(2), id(1)]);

    let lost = |bytes| {
        Some(JobEnd {
            state: State::Lost,
            exit: None,
            ended_at: now,
            usage: None,
            output_bytes: bytes,
        })
    };
    let ends: Vec<_> = store
        .load()
        .unwrap()
        .into_iter()
        .map(|r| (r.id, r.end))
        .collect();
    assert_eq!(
        ends,
        vec![
            (id(2), lost(20)),
            (id(3), Some(exited(4, 5))),
            (id(1), lost(10)),
        ]
    );
    assert_eq!(store.mark_lost(at(2_000, 0), |_| 0).unwrap(), vec![]);
}

// remove deletes running and finished records alike and returns only the
// ones that existed, each once.
#[tokio::test]
async fn remove_returns_the_existing_records() {
    let dir = TempDir::new().unwrap();
    let store = Store::open(dir.path()).unwrap();
    for r in [bare(1, 1), bare(2, 2), bare(3, 3)] {
        store.insert(r).await.unwrap();
    }
    store.finish(id(2), exited(0, 9)).await.unwrap();

    assert_eq!(
        store
            .remove(vec![id(1), id(2), id(1), id(99)])
            .await
            .unwrap(),
        [id(1), id(2)]
    );
    assert_eq!(store.remove(vec![]).await.unwrap(), []);
    assert_eq!(store.load().unwrap(), vec![bare(3, 3)]);
}

// Everything written is there for a new connection after every handle of the
// old one is gone.
#[tokio::test]
async fn reopen_keeps_everything() {
    let dir = TempDir::new().unwrap();
    let mut finished = full(1, 1);
    let running = full(2, 2);
    {
        let store = Store::open(dir.path()).unwrap();
        let clone = store.clone();
        store.insert(finished.clone()).await.unwrap();
        clone.insert(running.clone()).await.unwrap();
        clone.insert(bare(3, 3)).await.unwrap();
        store.finish(id(1), exited(7, 8)).await.unwrap();
        assert_eq!(store.remove(vec![id(3)]).await.unwrap(), [id(3)]);
    }
    finished.end = Some(exited(7, 8));

    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.load().unwrap(), vec![finished, running]);
    let conn = raw(&dir);
    assert_eq!(user_version(&conn), i64::from(SCHEMA_VERSION));
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

// A database from a newer jobsd is refused with both versions and left
// exactly as it was.
#[test]
fn newer_schema_is_refused_untouched() {
    let dir = TempDir::new().unwrap();
    drop(Store::open(dir.path()).unwrap());
    let newer = SCHEMA_VERSION + 1;
    raw(&dir)
        .pragma_update(None, "user_version", newer)
        .unwrap();

    let err = Store::open(dir.path()).unwrap_err();
    let path = dir.path().join(FILE_NAME);
    match &err {
        StoreError::SchemaTooNew {
            path: p,
            found,
            supported,
        } => assert_eq!((p, *found, *supported), (&path, newer, SCHEMA_VERSION)),
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        format!(
            "{} was written by a newer jobsd (schema version {newer}, this one supports up to \
             {SCHEMA_VERSION}); run that jobsd, or use another state directory",
            path.display()
        )
    );
    assert_eq!(user_version(&raw(&dir)), i64::from(newer));
}

// A file that is not SQLite (long or short) is refused and not overwritten.
#[test]
fn non_sqlite_file_is_refused_untouched() {
    for len in [4096, 10] {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join(FILE_NAME);
        let text = "not a database\n".repeat(300)[..len].to_owned();
        fs::write(&path, &text).unwrap();

        match Store::open(dir.path()) {
            Err(StoreError::NotAJobsDatabase { path: p }) => assert_eq!(p, path),
            other => panic!("{len} bytes: expected NotAJobsDatabase, got {other:?}"),
        }
        assert_eq!(fs::read_to_string(&path).unwrap(), text);
    }
}

// A file that starts like SQLite but is garbage after the magic (a torn
// header) is refused too, and not overwritten.
#[test]
fn sqlite_magic_with_garbage_is_refused() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join(FILE_NAME);
    let mut bytes = b"SQLite format 3\0".to_vec();
    bytes.resize(4096, b'x');
    fs::write(&path, &bytes).unwrap();

    match Store::open(dir.path()) {
        Err(StoreError::NotAJobsDatabase { path: p }) => assert_eq!(p, path),
        other => panic!("expected NotAJobsDatabase, got {other:?}"),
    }
    assert_eq!(fs::read(&path).unwrap(), bytes);
}

// Another program's SQLite database — marked with its own application_id,
// or unmarked but with tables — is refused and not changed.
#[test]
fn foreign_sqlite_database_is_refused_untouched() {
    for foreign_id in [0x1234_5678, 0] {
        let dir = TempDir::new().unwrap();
        let conn = raw(&dir);
        conn.execute_batch("CREATE TABLE photos (name TEXT);")
            .unwrap();
        conn.pragma_update(None, "application_id", foreign_id)
            .unwrap();
        drop(conn);

        match Store::open(dir.path()) {
            Err(StoreError::NotAJobsDatabase { path }) => {
                assert_eq!(path, dir.path().join(FILE_NAME))
            }
            other => panic!("id {foreign_id:#x}: expected NotAJobsDatabase, got {other:?}"),
        }
        let conn = raw(&dir);
        assert_eq!(application_id(&conn), foreign_id);
        assert_eq!(user_version(&conn), 0);
        let tables: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_schema")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(tables, vec!["photos".to_owned()]);
    }
}

// An existing SQLite file at version 0 without tables (e.g. left by a run
// that died before its first migration committed) is ours to initialise.
#[tokio::test]
async fn empty_version_0_database_is_migrated() {
    let dir = TempDir::new().unwrap();
    let conn = raw(&dir);
    conn.execute_batch("CREATE TABLE t (x); DROP TABLE t;")
        .unwrap();
    assert_eq!(user_version(&conn), 0);
    drop(conn);
    assert!(fs::metadata(dir.path().join(FILE_NAME)).unwrap().len() > 0);

    let store = Store::open(dir.path()).unwrap();
    let conn = raw(&dir);
    assert_eq!(user_version(&conn), i64::from(SCHEMA_VERSION));
    assert_eq!(application_id(&conn), i64::from(APPLICATION_ID));
    let mut names: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_schema ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    names.retain(|n| !n.starts_with("sqlite_autoindex"));
    assert_eq!(
        names,
        vec![
            "jobs",
            "jobs_ended",
            "jobs_owner_ended",
            "jobs_owner_started",
            "jobs_started",
            "uids",
            "uids_owner"
        ]
    );
    store.insert(bare(1, 1)).await.unwrap();
    assert_eq!(store.load().unwrap(), vec![bare(1, 1)]);
}

// Owners and commands are private: the file and its write-ahead log are
// readable by the daemon's user only.
#[tokio::test]
async fn new_database_file_is_private() {
    let dir = TempDir::new().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.insert(bare(1, 1)).await.unwrap();
    assert_eq!(store.path(), dir.path().join(FILE_NAME));
    for name in [FILE_NAME, "jobs.db-wal"] {
        let mode = fs::metadata(dir.path().join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}: {mode:o}");
    }
}

// Debug names the file and nothing else.
#[test]
fn debug_shows_the_path() {
    let dir = TempDir::new().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(
        format!("{store:?}"),
        format!("Store {{ path: {:?} }}", dir.path().join(FILE_NAME))
    );
}

// One id, one record: a second insert is refused and the first record stays.
#[tokio::test]
async fn inserting_an_existing_id_is_refused() {
    let dir = TempDir::new().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.insert(bare(1, 1)).await.unwrap();
    match store.insert(full(1, 2)).await {
        Err(StoreError::AlreadyExists { id: got }) => assert_eq!(got, id(1)),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert_eq!(store.load().unwrap(), vec![bare(1, 1)]);
}

// A record is inserted running; an end comes only through finish.
#[tokio::test]
async fn inserting_an_ended_record_is_refused() {
    let dir = TempDir::new().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut record = bare(1, 1);
    record.end = Some(exited(0, 2));
    match store.insert(record).await {
        Err(StoreError::InsertedEnded { id: got }) => assert_eq!(got, id(1)),
        other => panic!("expected InsertedEnded, got {other:?}"),
    }
    assert_eq!(store.load().unwrap(), vec![]);
}

// An end is recorded once, and only for a record that exists.
#[tokio::test]
async fn finishing_an_unknown_or_finished_job_is_refused() {
    let dir = TempDir::new().unwrap();
    let store = Store::open(dir.path()).unwrap();
    match store.finish(id(5), exited(0, 1)).await {
        Err(StoreError::NotRunning { id: got }) => assert_eq!(got, id(5)),
        other => panic!("unknown: expected NotRunning, got {other:?}"),
    }
    store.insert(bare(1, 1)).await.unwrap();
    store.finish(id(1), exited(0, 2)).await.unwrap();
    match store.finish(id(1), exited(9, 3)).await {
        Err(StoreError::NotRunning { id: got }) => assert_eq!(got, id(1)),
        other => panic!("finished: expected NotRunning, got {other:?}"),
    }
    let mut want = bare(1, 1);
    want.end = Some(exited(0, 2));
    assert_eq!(store.load().unwrap(), vec![want]);
}

// Running is not an end; non-lost ends need exit information and lost ones
// have none. Each is refused and the record stays running.
#[tokio::test]
async fn invalid_ends_are_refused() {
    let dir = TempDir::new().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.insert(bare(1, 1)).await.unwrap();
    let cases = [
        (State::Running, None, "running is not an end"),
        (
            State::Running,
            Some(ExitInfo::Exited(0)),
            "running is not an end",
        ),
        (State::Exited, None, "exit information is missing"),
        (State::OutputFailed, None, "exit information is missing"),
        (
            State::Lost,
            Some(ExitInfo::Exited(1)),
            "a lost job has no exit information",
        ),
    ];
    for (state, exit, want_why) in cases {
        let end = JobEnd {
            state,
            exit,
            ended_at: at(2, 0),
            usage: None,
            output_bytes: 0,
        };
        match store.finish(id(1), end).await {
            Err(StoreError::InvalidEnd {
                id: got,
                state: got_state,
                why,
            }) => assert_eq!((got, got_state, why), (id(1), state, want_why)),
            other => panic!("{state:?}/{exit:?}: expected InvalidEnd, got {other:?}"),
        }
    }
    assert_eq!(store.load().unwrap(), vec![bare(1, 1)]);
}

// Times outside 1970..2262 and byte counts above i64::MAX are errors, not
// panics or wrapped values, and nothing is written.
#[tokio::test]
async fn unstorable_values_are_refused() {
    let dir = TempDir::new().unwrap();
    let store = Store::open(dir.path()).unwrap();

    let before_epoch = UNIX_EPOCH - Duration::from_secs(1);
    let after_2262 = UNIX_EPOCH + Duration::from_secs(300 * 366 * 24 * 3600);
    for time in [before_epoch, after_2262] {
        let mut record = bare(1, 0);
        record.started_at = time;
        match store.insert(record).await {
            Err(StoreError::TimeOutOfRange {
                id: got,
                column,
                time: got_time,
            }) => assert_eq!((got, column, got_time), (id(1), "started_at", time)),
            other => panic!("expected TimeOutOfRange, got {other:?}"),
        }
    }
    let mut record = bare(1, 0);
    record.max_output_bytes = Some(i64::MAX as u64 + 1);
    match store.insert(record).await {
        Err(StoreError::ValueTooLarge {
            id: got,
            column,
            value,
        }) => assert_eq!(
            (got, column, value),
            (id(1), "max_output_bytes", i64::MAX as u64 + 1)
        ),
        other => panic!("expected ValueTooLarge, got {other:?}"),
    }
    assert_eq!(store.load().unwrap(), vec![]);

    store.insert(bare(1, 0)).await.unwrap();
    let mut end = exited(0, 1);
    end.output_bytes = u64::MAX;
    match store.finish(id(1), end).await {
        Err(StoreError::ValueTooLarge {
            id: got,
            column,
            value,
        }) => {
            assert_eq!((got, column, value), (id(1), "output_bytes", u64::MAX))
        }
        other => panic!("expected ValueTooLarge, got {other:?}"),
    }
    let mut end = exited(0, 1);
    end.ended_at = before_epoch;
    match store.finish(id(1), end).await {
        Err(StoreError::TimeOutOfRange { column, .. }) => assert_eq!(column, "ended_at"),
        other => panic!("expected TimeOutOfRange, got {other:?}"),
    }
    assert_eq!(
        store
            .mark_lost(before_epoch, |_| 0)
            .unwrap_err()
            .to_string(),
        format!(
            "job {}: ended_at {before_epoch:?} is outside 1970-01-01..2262-04-11",
            id(1)
        )
    );
    assert_eq!(store.load().unwrap(), vec![bare(1, 0)]);
}

// Rows changed behind the store's back fail the load with the row's id and
// what is wrong, instead of being skipped or guessed at.
#[tokio::test]
async fn corrupt_rows_fail_the_load() {
    let cases = [
        (
            "UPDATE jobs SET id = 'job-1'",
            "job-1",
            "the id is not a canonical UUID",
        ),
        (
            "UPDATE jobs SET owner = 'alice'",
            "",
            "owner \"alice\" is not an identity",
        ),
        (
            "UPDATE jobs SET state = 'paused'",
            "",
            "unknown state \"paused\"",
        ),
        (
            "UPDATE jobs SET state = 'running'",
            "",
            "state \"running\": running is not an end",
        ),
        (
            "UPDATE jobs SET output_bytes = -1",
            "",
            "output_bytes -1 < 0",
        ),
        (
            "UPDATE jobs SET started_at_ns = -5",
            "",
            "started_at_ns -5 < 0",
        ),
        (
            "UPDATE jobs SET signal = 9",
            "",
            "exit_code Some(0), signal Some(9), core_dumped None do not describe one exit",
        ),
        (
            "UPDATE jobs SET state = NULL",
            "",
            "its end is partly stored (ended_at_ns, state, output_bytes and the exit columns \
             disagree)",
        ),
    ];
    for (sql, stored_id, want) in cases {
        let dir = TempDir::new().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.insert(bare(1, 1)).await.unwrap();
        store.finish(id(1), exited(0, 2)).await.unwrap();
        raw(&dir).execute_batch(sql).unwrap();
        let want_id = if stored_id.is_empty() {
            id(1).to_string()
        } else {
            stored_id.to_owned()
        };
        match store.load() {
            Err(StoreError::Corrupt { id: got, what }) => {
                assert_eq!(
                    (got.as_str(), what.as_str()),
                    (want_id.as_str(), want),
                    "{sql}"
                )
            }
            other => panic!("{sql}: expected Corrupt, got {other:?}"),
        }
    }
}

// A full disk is told apart from other write failures, and the failed
// transaction leaves nothing behind. SQLite's page limit stands in for the
// disk: it fails with the same SQLITE_FULL.
#[tokio::test]
async fn full_disk_is_reported_as_full() {
    let dir = TempDir::new().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.insert(bare(1, 1)).await.unwrap();
    {
        let conn = store.lock();
        let pages: i64 = conn
            .pragma_query_value(None, "page_count", |r| r.get(0))
            .unwrap();
        conn.pragma_update(None, "max_page_count", pages).unwrap();
    }
    let mut big = bare(2, 2);
    big.command = vec!["x".repeat(1 << 20)];
    match store.insert(big).await {
        Err(StoreError::Full) => {}
        other => panic!("expected Full, got {other:?}"),
    }
    assert_eq!(store.load().unwrap(), vec![bare(1, 1)]);
}

// A caller that goes away after starting a write does not cancel it: the
// write still lands, whole.
#[tokio::test]
async fn dropped_insert_still_completes() {
    let dir = TempDir::new().unwrap();
    let store = Store::open(dir.path()).unwrap();
    {
        // Holding the connection keeps the write pending at its first poll.
        let _held = store.lock();
        assert!(store.insert(full(1, 1)).now_or_never().is_none());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let records = store.load().unwrap();
        if !records.is_empty() {
            assert_eq!(records, vec![full(1, 1)]);
            break;
        }
        assert!(Instant::now() < deadline, "the dropped insert never landed");
        std::thread::yield_now();
    }
}

// The reads requests make: one record, pages in start order from a key
// cursor (everyone's or one owner's, same-time starts ordered by id), and
// what retention and the output ledger ask of finished jobs.
#[tokio::test]
async fn pages_and_finished_job_reads_follow_the_indexes() {
    let dir = TempDir::new().unwrap();
    let store = Store::open(dir.path()).unwrap();
    // Jobs 1..=6 start at 10, 10, 11, 12, 13, 14; owner 2 has 3 and 5.
    for (n, started, who) in [
        (2, 10, 1),
        (1, 10, 1),
        (3, 11, 2),
        (4, 12, 1),
        (5, 13, 2),
        (6, 14, 1),
    ] {
        let mut r = bare(n, started);
        r.owner = owner(who);
        store.insert(r).await.unwrap();
    }
    let bytes = |_: u128, b: u64, ended: u64| JobEnd {
        output_bytes: b,
        ..exited(0, ended)
    };
    store.finish(id(1), bytes(1, 100, 50)).await.unwrap();
    store.finish(id(4), bytes(4, 40, 30)).await.unwrap();
    store.finish(id(3), bytes(3, 7, 40)).await.unwrap();
    store.finish(id(5), bytes(5, 9, 60)).await.unwrap();

    let ids = |records: Vec<JobRecord>| records.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.page(None, None, 100).await.unwrap()),
        [id(1), id(2), id(3), id(4), id(5), id(6)]
    );
    let first = store.page(None, None, 2).await.unwrap();
    assert_eq!(ids(first.clone()), [id(1), id(2)]);
    let cursor = (first[1].started_at, first[1].id);
    assert_eq!(
        ids(store.page(None, Some(cursor), 2).await.unwrap()),
        [id(3), id(4)]
    );
    assert_eq!(
        ids(store.page(Some(owner(1)), Some(cursor), 10).await.unwrap()),
        [id(4), id(6)]
    );
    assert_eq!(
        ids(store.page(Some(owner(2)), None, 10).await.unwrap()),
        [id(3), id(5)]
    );
    assert_eq!(ids(store.page(Some(owner(9)), None, 10).await.unwrap()), []);
    // A cursor before the epoch starts at the first job, one past the
    // last start ends the listing.
    let before = (UNIX_EPOCH - Duration::from_secs(1), id(0));
    assert_eq!(store.page(None, Some(before), 1).await.unwrap().len(), 1);
    assert_eq!(
        ids(store
            .page(None, Some((at(14, 0), id(6))), 10)
            .await
            .unwrap()),
        []
    );

    assert_eq!(
        store.get_now(id(4)).unwrap().unwrap().end,
        Some(bytes(4, 40, 30))
    );
    assert_eq!(store.get_now(id(99)).unwrap(), None);

    let ended = |v: Vec<Ended>| {
        v.into_iter()
            .map(|e| (e.id, e.output_bytes))
            .collect::<Vec<_>>()
    };
    // Ends at 30 (4), 40 (3), 50 (1), 60 (5); 2 and 6 run.
    assert_eq!(
        ended(store.ended_by(at(40, 1), 10).await.unwrap()),
        [(id(4), 40), (id(3), 7)]
    );
    assert_eq!(
        ended(store.ended_by(at(100, 0), 1).await.unwrap()),
        [(id(4), 40)]
    );
    assert_eq!(
        store.first_end_after(at(40, 1)).await.unwrap(),
        Some(at(50, 1))
    );
    assert_eq!(store.first_end_after(at(60, 1)).await.unwrap(), None);
    assert_eq!(
        ended(store.oldest_ended_of(owner(1), 10).await.unwrap()),
        [(id(4), 40), (id(1), 100)]
    );
    assert_eq!(
        store.latest_ended_of(owner(2)).await.unwrap().map(|e| e.id),
        Some(id(5))
    );
    assert_eq!(store.latest_ended_of(owner(9)).await.unwrap(), None);

    let mut totals: Vec<(Identity, u64, JobId)> = store
        .finished_output()
        .unwrap()
        .into_iter()
        .map(|(who, kept)| (who, kept.bytes, kept.latest.id))
        .collect();
    totals.sort_by_key(|t| t.1);
    assert_eq!(totals, [(owner(2), 16, id(5)), (owner(1), 140, id(1))]);
    assert_eq!(ids(store.load_unfinished().unwrap()), [id(2), id(6)]);
    assert_eq!(store.scan().unwrap().len(), 6);
}

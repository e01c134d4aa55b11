//! The `uids` table: which uid (and gid, the same number) each identity's
//! jobs run as.
//!
//! A row is written once, when an identity first needs a uid of the
//! daemon's range, and never changed or deleted: removing an identity's jobs
//! or changing the range leaves it, so a uid that was ever an identity's is
//! never given to another (files or kernel state such a uid left behind stay
//! that identity's). The uid is the table's primary key, so the database
//! itself refuses a second owner for one uid.

use std::ops::RangeInclusive;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{OptionalExtension, Transaction, params};

use super::StoreError;
use crate::auth::Identity;

/// What [`super::Store::assign_uid`] found or did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UidAssignment {
    /// The identity had this uid of the range already.
    Existing(u32),
    /// The identity had none in the range; this one, never anyone's before,
    /// is now recorded as its.
    New(u32),
    /// The identity has none in the range and every uid of the range is
    /// taken (by other identities, or by this one's rows from other ranges).
    RangeFull,
}

impl UidAssignment {
    /// The uid, unless the range is full.
    pub fn uid(self) -> Option<u32> {
        match self {
            UidAssignment::Existing(uid) | UidAssignment::New(uid) => Some(uid),
            UidAssignment::RangeFull => None,
        }
    }
}

/// The uid of `range` that `owner` was given last, if any. (An identity has
/// more than one only if the range moved away from its first and back.)
pub(super) fn current(
    tx: &Transaction<'_>,
    owner: Identity,
    range: &RangeInclusive<u32>,
) -> Result<Option<u32>, StoreError> {
    tx.query_row(
        "SELECT uid FROM uids WHERE owner = ?1 AND uid BETWEEN ?2 AND ?3
         ORDER BY assigned_at_ns DESC, uid DESC LIMIT 1",
        params![owner.to_string(), range.start(), range.end()],
        |r| r.get::<_, u32>(0),
    )
    .optional()
    .map_err(StoreError::read)
}

/// The lowest uid of `range` that no row holds; `None` when there is none.
pub(super) fn first_free(
    tx: &Transaction<'_>,
    range: &RangeInclusive<u32>,
) -> Result<Option<u32>, StoreError> {
    // The range's first uid if free, else the first taken uid in the range
    // whose successor (still in the range) is free. Both walk the primary
    // key's index.
    tx.query_row(
        "SELECT CASE
            WHEN NOT EXISTS (SELECT 1 FROM uids WHERE uid = ?1) THEN ?1
            ELSE (SELECT u.uid + 1 FROM uids u
                  WHERE u.uid BETWEEN ?1 AND ?2 - 1
                    AND NOT EXISTS (SELECT 1 FROM uids v WHERE v.uid = u.uid + 1)
                  ORDER BY u.uid LIMIT 1)
         END",
        params![range.start(), range.end()],
        |r| r.get::<_, Option<u32>>(0),
    )
    .map_err(StoreError::read)
}

/// Records `uid` as `owner`'s, now.
pub(super) fn insert(tx: &Transaction<'_>, owner: Identity, uid: u32) -> Result<(), StoreError> {
    // Before 1970 or after 2262 only on a clock gone badly wrong; the time
    // only orders an identity's rows, so it is clamped rather than refused.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    tx.execute(
        "INSERT INTO uids (uid, owner, assigned_at_ns) VALUES (?1, ?2, ?3)",
        params![uid, owner.to_string(), now],
    )
    .map_err(StoreError::write)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use rusqlite::Connection;
    use tempfile::TempDir;

    use super::super::{FILE_NAME, SCHEMA_VERSION, Store, schema};
    use super::*;

    fn owner(n: u8) -> Identity {
        Identity::from_spki_der(&[n])
    }

    fn rows(dir: &TempDir) -> Vec<(u32, String)> {
        let conn = Connection::open(dir.path().join(FILE_NAME)).unwrap();
        conn.prepare("SELECT uid, owner FROM uids ORDER BY uid")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[tokio::test]
    async fn identities_get_the_lowest_free_uids_and_keep_them() {
        let dir = TempDir::new().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let range = 1000..=1002;
        assert_eq!(
            store.assign_uid(owner(1), range.clone()).await.unwrap(),
            UidAssignment::New(1000)
        );
        assert_eq!(
            store.assign_uid(owner(2), range.clone()).await.unwrap(),
            UidAssignment::New(1001)
        );
        assert_eq!(
            store.assign_uid(owner(1), range.clone()).await.unwrap(),
            UidAssignment::Existing(1000)
        );
        assert_eq!(
            rows(&dir),
            vec![(1000, owner(1).to_string()), (1001, owner(2).to_string())]
        );
    }

    // Scenario: more identities than uids; the one left over is refused and
    // nothing is written for it.
    #[tokio::test]
    async fn a_full_range_is_reported_and_writes_nothing() {
        let dir = TempDir::new().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for (n, uid) in [(1, 7), (2, 8)] {
            assert_eq!(
                store.assign_uid(owner(n), 7..=8).await.unwrap(),
                UidAssignment::New(uid)
            );
        }
        assert_eq!(
            store.assign_uid(owner(3), 7..=8).await.unwrap(),
            UidAssignment::RangeFull
        );
        assert_eq!(rows(&dir).len(), 2);
        // The ones that have a uid still get it.
        assert_eq!(
            store.assign_uid(owner(2), 7..=8).await.unwrap(),
            UidAssignment::Existing(8)
        );
    }

    #[tokio::test]
    async fn assignments_survive_a_reopen() {
        let dir = TempDir::new().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.assign_uid(owner(1), 50..=60).await.unwrap();
        store.assign_uid(owner(2), 50..=60).await.unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.assign_uid(owner(2), 50..=60).await.unwrap(),
            UidAssignment::Existing(51)
        );
        assert_eq!(
            store.assign_uid(owner(3), 50..=60).await.unwrap(),
            UidAssignment::New(52)
        );
    }

    // Scenario: the operator moves the range, then moves it back over the old
    // uids: an old uid is never given to someone else, and its owner gets it
    // back when it is in the range again.
    #[tokio::test]
    async fn a_uid_never_changes_owner_when_the_range_moves() {
        let dir = TempDir::new().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.assign_uid(owner(1), 10..=11).await.unwrap(),
            UidAssignment::New(10)
        );
        // A new range overlapping the old one: 10 is taken, 11 is free.
        assert_eq!(
            store.assign_uid(owner(2), 9..=11).await.unwrap(),
            UidAssignment::New(9)
        );
        assert_eq!(
            store.assign_uid(owner(3), 9..=11).await.unwrap(),
            UidAssignment::New(11)
        );
        // Owner 1 in a range that lost its uid gets a new one there...
        assert_eq!(
            store.assign_uid(owner(1), 11..=20).await.unwrap(),
            UidAssignment::New(12)
        );
        // ...and, back in a range with both, the one given last.
        assert_eq!(
            store.assign_uid(owner(1), 10..=12).await.unwrap(),
            UidAssignment::Existing(12)
        );
        assert_eq!(
            store.assign_uid(owner(1), 10..=10).await.unwrap(),
            UidAssignment::Existing(10)
        );
        let owners: HashSet<u32> = rows(&dir).iter().map(|r| r.0).collect();
        assert_eq!(owners, HashSet::from([9, 10, 11, 12]));
    }

    // Scenario: many first starts at once, of different identities and of
    // the same one: no uid has two owners, no identity two uids.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn parallel_first_assignments_never_share_a_uid() {
        let dir = TempDir::new().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut tasks = Vec::new();
        for n in 0..40u8 {
            for _ in 0..3 {
                let store = store.clone();
                tasks.push(tokio::spawn(async move {
                    (n, store.assign_uid(owner(n), 100..=199).await.unwrap())
                }));
            }
        }
        let mut by_owner = std::collections::HashMap::new();
        for t in tasks {
            let (n, a) = t.await.unwrap();
            let uid = a.uid().unwrap();
            assert_eq!(*by_owner.entry(n).or_insert(uid), uid, "owner {n}");
        }
        let uids: HashSet<u32> = by_owner.values().copied().collect();
        assert_eq!(uids.len(), 40);
        assert_eq!(uids, (100..140).collect());
        assert_eq!(rows(&dir).len(), 40);
    }

    #[test]
    fn the_database_refuses_a_second_owner_for_a_uid() {
        let dir = TempDir::new().unwrap();
        drop(Store::open(dir.path()).unwrap());
        let conn = Connection::open(dir.path().join(FILE_NAME)).unwrap();
        conn.execute("INSERT INTO uids VALUES (5, ?1, 0)", [owner(1).to_string()])
            .unwrap();
        let e = conn
            .execute("INSERT INTO uids VALUES (5, ?1, 0)", [owner(2).to_string()])
            .unwrap_err();
        assert_eq!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::ConstraintViolation)
        );
        for bad in [0i64, 4294967295, -1] {
            assert!(
                conn.execute("INSERT INTO uids VALUES (?1, 'x', 0)", [bad])
                    .is_err(),
                "uid {bad}"
            );
        }
    }

    // Scenario: a daemon of schema version 1 left jobs; the new one adds the
    // table, keeps every job, and assigns uids.
    #[tokio::test]
    async fn a_version_1_database_with_jobs_is_migrated() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join(FILE_NAME);
        let mut conn = Connection::open(&path).unwrap();
        schema::create_at_version(&mut conn, 1);
        conn.execute(
            "INSERT INTO jobs (id, owner, command, started_at_ns, ended_at_ns, state, exit_code, output_bytes)
             VALUES ('67e55044-10b1-426f-9247-bb680e5fe0c8', ?1, '[\"true\"]', 5, 6, 'exited', 0, 0)",
            [owner(1).to_string()],
        )
        .unwrap();
        drop(conn);

        let store = Store::open(dir.path()).unwrap();
        let version: u32 = Connection::open(&path)
            .unwrap()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let records = store.load().unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].owner, owner(1));
        // Recorded before clusters ran jobs: none ran it.
        assert_eq!(records[0].cluster_job_id, None);
        assert_eq!(
            store.assign_uid(owner(1), 3..=4).await.unwrap(),
            UidAssignment::New(3)
        );
    }
}

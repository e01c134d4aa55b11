//! The reads the daemon makes while it serves: one record, a page of
//! records in start order, and what retention and the output ledger need
//! to know of finished jobs. Each is one statement on an index (see
//! `schema.rs`, version 3), so its cost grows with what it returns, not
//! with the number of records.

use std::collections::HashSet;
use std::time::SystemTime;

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::row::{self, COLUMNS};
use super::{JobRecord, StoreError};
use crate::auth::Identity;
use crate::model::JobId;

/// A finished job as retention and the output ledger know it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ended {
    /// The job.
    pub id: JobId,
    /// Its owner.
    pub owner: Identity,
    /// When it became final.
    pub ended_at: SystemTime,
    /// Output bytes its log keeps.
    pub output_bytes: u64,
}

/// The finished output one identity keeps, as [`super::Store::finished_output`]
/// sums it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwnerOutput {
    /// Output bytes of all its finished jobs.
    pub bytes: u64,
    /// Its most recently ended job.
    pub latest: Ended,
}

/// Where a page starts: after the job with this start time and id.
pub type Cursor = (SystemTime, JobId);

/// `time` as a time column's value to compare with: a time before the
/// epoch precedes every record, one past `i64::MAX` ns follows them.
fn time_key(time: SystemTime) -> i64 {
    match time.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(_) => -1,
    }
}

/// `cursor` as the row value `(started_at_ns, id)` it names.
fn cursor_key(cursor: Option<Cursor>) -> (i64, String) {
    match cursor {
        None => (-1, String::new()),
        Some((time, id)) => (time_key(time), id.to_string()),
    }
}

pub(super) fn get(conn: &Connection, id: JobId) -> Result<Option<JobRecord>, StoreError> {
    let mut found = row::select(
        conn,
        &format!("SELECT {COLUMNS} FROM jobs WHERE id = ?1"),
        params![id.to_string()],
    )?;
    Ok(found.pop())
}

pub(super) fn page(
    conn: &Connection,
    owner: Option<Identity>,
    after: Option<Cursor>,
    limit: usize,
) -> Result<Vec<JobRecord>, StoreError> {
    let (ns, id) = cursor_key(after);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    match owner {
        // Row-value comparison: SQLite walks the index from the cursor on.
        None => row::select(
            conn,
            &format!(
                "SELECT {COLUMNS} FROM jobs WHERE (started_at_ns, id) > (?1, ?2)
                 ORDER BY started_at_ns, id LIMIT ?3"
            ),
            params![ns, id, limit],
        ),
        Some(owner) => row::select(
            conn,
            &format!(
                "SELECT {COLUMNS} FROM jobs WHERE owner = ?4 AND (started_at_ns, id) > (?1, ?2)
                 ORDER BY started_at_ns, id LIMIT ?3"
            ),
            params![ns, id, limit, owner.to_string()],
        ),
    }
}

pub(super) fn unfinished(conn: &Connection) -> Result<Vec<JobRecord>, StoreError> {
    row::select(
        conn,
        &format!("SELECT {COLUMNS} FROM jobs WHERE ended_at_ns IS NULL ORDER BY started_at_ns, id"),
        [],
    )
}

pub(super) fn scan(conn: &Connection) -> Result<HashSet<JobId>, StoreError> {
    let mut select = conn
        .prepare(&format!("SELECT {COLUMNS} FROM jobs"))
        .map_err(StoreError::read)?;
    let mut rows = select.query([]).map_err(StoreError::read)?;
    let mut ids = HashSet::new();
    // One row at a time: memory holds the ids, never the records.
    while let Some(r) = rows.next().map_err(StoreError::read)? {
        ids.insert(row::decode_row(r)?.id);
    }
    Ok(ids)
}

/// Reads `id, owner, ended_at_ns, output_bytes` (the first four columns).
fn ended_raw(r: &Row<'_>) -> rusqlite::Result<(String, String, i64, i64)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
}

fn ended_decode(
    (id, owner, ended_ns, bytes): (String, String, i64, i64),
) -> Result<Ended, StoreError> {
    let corrupt = |what: String| StoreError::Corrupt {
        id: id.clone(),
        what,
    };
    Ok(Ended {
        id: row::parse_id(&id)?,
        owner: owner
            .parse()
            .map_err(|_| corrupt(format!("owner {owner:?} is not an identity")))?,
        ended_at: row::from_ns(ended_ns)
            .ok_or_else(|| corrupt(format!("ended_at_ns {ended_ns} < 0")))?,
        output_bytes: u64::try_from(bytes)
            .map_err(|_| corrupt(format!("output_bytes {bytes} < 0")))?,
    })
}

fn select_ended(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<Ended>, StoreError> {
    let mut select = conn.prepare_cached(sql).map_err(StoreError::read)?;
    let raws = select
        .query_map(params, ended_raw)
        .map_err(StoreError::read)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(StoreError::read)?;
    raws.into_iter().map(ended_decode).collect()
}

pub(super) fn ended_by(
    conn: &Connection,
    cutoff: SystemTime,
    limit: usize,
) -> Result<Vec<Ended>, StoreError> {
    let ns = time_key(cutoff);
    select_ended(
        conn,
        "SELECT id, owner, ended_at_ns, output_bytes FROM jobs WHERE ended_at_ns <= ?1
         ORDER BY ended_at_ns, id LIMIT ?2",
        params![ns, i64::try_from(limit).unwrap_or(i64::MAX)],
    )
}

pub(super) fn first_end_after(
    conn: &Connection,
    cutoff: SystemTime,
) -> Result<Option<SystemTime>, StoreError> {
    let ns = time_key(cutoff);
    let first: Option<i64> = conn
        .prepare_cached("SELECT MIN(ended_at_ns) FROM jobs WHERE ended_at_ns > ?1")
        .and_then(|mut s| s.query_row(params![ns], |r| r.get(0)))
        .map_err(StoreError::read)?;
    Ok(first.and_then(row::from_ns))
}

pub(super) fn oldest_ended_of(
    conn: &Connection,
    owner: Identity,
    limit: usize,
) -> Result<Vec<Ended>, StoreError> {
    select_ended(
        conn,
        "SELECT id, owner, ended_at_ns, output_bytes FROM jobs
         WHERE owner = ?1 AND ended_at_ns IS NOT NULL ORDER BY ended_at_ns, id LIMIT ?2",
        params![owner.to_string(), i64::try_from(limit).unwrap_or(i64::MAX)],
    )
}

pub(super) fn latest_ended_of(
    conn: &Connection,
    owner: Identity,
) -> Result<Option<Ended>, StoreError> {
    conn.prepare_cached(
        "SELECT id, owner, ended_at_ns, output_bytes FROM jobs
         WHERE owner = ?1 AND ended_at_ns IS NOT NULL ORDER BY ended_at_ns DESC, id DESC LIMIT 1",
    )
    .and_then(|mut s| {
        s.query_row(params![owner.to_string()], ended_raw)
            .optional()
    })
    .map_err(StoreError::read)?
    .map(ended_decode)
    .transpose()
}

pub(super) fn finished_output(conn: &Connection) -> Result<Vec<OwnerOutput>, StoreError> {
    // With exactly one max() in the query, SQLite takes the bare columns
    // (`id`, `output_bytes`) from the row holding the maximum.
    let mut select = conn
        .prepare(
            "SELECT id, owner, MAX(ended_at_ns), output_bytes, SUM(output_bytes) FROM jobs
             WHERE ended_at_ns IS NOT NULL GROUP BY owner",
        )
        .map_err(StoreError::read)?;
    let raws = select
        .query_map([], |r| Ok((ended_raw(r)?, r.get::<_, i64>(4)?)))
        .map_err(StoreError::read)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(StoreError::read)?;
    raws.into_iter()
        .map(|(raw, sum)| {
            let latest = ended_decode(raw)?;
            let bytes = u64::try_from(sum).map_err(|_| StoreError::Corrupt {
                id: latest.id.to_string(),
                what: format!("its owner's output_bytes add up to {sum} < 0"),
            })?;
            Ok(OwnerOutput { bytes, latest })
        })
        .collect()
}

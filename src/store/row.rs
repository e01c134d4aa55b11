//! Between a [`JobRecord`] and a row of the `jobs` table: the encoding, the
//! decoding with its checks, and the statements that use them.
//!
//! Decoding trusts nothing: a row another program edited yields
//! [`StoreError::Corrupt`], never a panic or a made-up value.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, Row, ffi, params};
use serde::{Deserialize, Serialize};

use super::{JobEnd, JobRecord, StoreError};
use crate::auth::Identity;
use crate::limits::ResourceLimits;
use crate::model::{ExitInfo, JobId, ResourceUsage, State};

/// Defines `state_name` and `state_from_name` from one table, so that the
/// two directions cannot disagree and a new [`State`] does not build until
/// it has a name here. Names are stored: never change one.
macro_rules! state_names {
    ($($variant:ident => $name:literal,)*) => {
        /// The stored name of `state`.
        fn state_name(state: State) -> &'static str {
            match state {
                $(State::$variant => $name,)*
            }
        }

        /// The state stored as `name`; `None` for a name no state has.
        fn state_from_name(name: &str) -> Option<State> {
            match name {
                $($name => Some(State::$variant),)*
                _ => None,
            }
        }
    };
}

state_names! {
    Running => "running",
    Exited => "exited",
    Killed => "killed",
    Stopped => "stopped",
    Oom => "oom",
    OutputLimit => "output_limit",
    Lost => "lost",
    OutputFailed => "output_failed",
}

/// What is wrong with an end in `state` with `exit`, if anything. Used on
/// write (→ [`StoreError::InvalidEnd`]) and on read (→ [`StoreError::Corrupt`]).
fn end_problem(state: State, exit: Option<ExitInfo>) -> Option<&'static str> {
    match (state, exit) {
        (State::Running, _) => Some("running is not an end"),
        (State::Lost, None) => None,
        (State::Lost, Some(_)) => Some("a lost job has no exit information"),
        (_, None) => Some("exit information is missing"),
        (_, Some(_)) => None,
    }
}

/// [`ResourceLimits`] as JSON; a mirror so that the job types need no serde.
#[derive(Serialize, Deserialize)]
struct LimitsJson {
    memory_bytes: Option<u64>,
    cpu_millis: Option<u32>,
    pids: Option<u32>,
    io_read_bps: Option<u64>,
    io_write_bps: Option<u64>,
}

impl From<ResourceLimits> for LimitsJson {
    fn from(l: ResourceLimits) -> Self {
        // Destructured, so that a new field does not build until it is here.
        let ResourceLimits {
            memory_bytes,
            cpu_millis,
            pids,
            io_read_bps,
            io_write_bps,
        } = l;
        Self {
            memory_bytes,
            cpu_millis,
            pids,
            io_read_bps,
            io_write_bps,
        }
    }
}

impl From<LimitsJson> for ResourceLimits {
    fn from(l: LimitsJson) -> Self {
        let LimitsJson {
            memory_bytes,
            cpu_millis,
            pids,
            io_read_bps,
            io_write_bps,
        } = l;
        Self {
            memory_bytes,
            cpu_millis,
            pids,
            io_read_bps,
            io_write_bps,
        }
    }
}

/// [`ResourceUsage`] as JSON.
#[derive(Serialize, Deserialize)]
struct UsageJson {
    peak_memory_bytes: Option<u64>,
    cpu_usec: Option<u64>,
    oom_kills: u64,
}

impl From<ResourceUsage> for UsageJson {
    fn from(u: ResourceUsage) -> Self {
        let ResourceUsage {
            peak_memory_bytes,
            cpu_usec,
            oom_kills,
        } = u;
        Self {
            peak_memory_bytes,
            cpu_usec,
            oom_kills,
        }
    }
}

impl From<UsageJson> for ResourceUsage {
    fn from(u: UsageJson) -> Self {
        let UsageJson {
            peak_memory_bytes,
            cpu_usec,
            oom_kills,
        } = u;
        Self {
            peak_memory_bytes,
            cpu_usec,
            oom_kills,
        }
    }
}

/// `value` as JSON text. Only for the mirrors and `Vec<String>` above, which
/// always serialise: serde_json fails only on non-string map keys or a
/// failing `Serialize` impl, and these have neither.
fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("plain structs and strings always serialise")
}

/// `time` in nanoseconds since the Unix epoch.
pub(super) fn to_ns(id: JobId, column: &'static str, time: SystemTime) -> Result<i64, StoreError> {
    time.duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_nanos()).ok())
        .ok_or(StoreError::TimeOutOfRange { id, column, time })
}

/// The time `ns` nanoseconds after the Unix epoch; `None` if negative.
pub(super) fn from_ns(ns: i64) -> Option<SystemTime> {
    let ns = u64::try_from(ns).ok()?;
    Some(UNIX_EPOCH + Duration::from_nanos(ns))
}

/// A byte count as an SQLite integer.
fn to_i64(id: JobId, column: &'static str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::ValueTooLarge { id, column, value })
}

/// Inserts `record` (which must have no end) through `conn`.
pub(super) fn insert(conn: &Connection, record: &JobRecord) -> Result<(), StoreError> {
    let id = record.id;
    if record.end.is_some() {
        return Err(StoreError::InsertedEnded { id });
    }
    let started_at_ns = to_ns(id, "started_at", record.started_at)?;
    let max_output_bytes = record
        .max_output_bytes
        .map(|m| to_i64(id, "max_output_bytes", m))
        .transpose()?;
    let limits = record.limits.map(|l| json(&LimitsJson::from(l)));
    let inserted = conn.execute(
        "INSERT INTO jobs (id, owner, command, started_at_ns, limits, max_output_bytes, recovery, cluster_job_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            id.to_string(),
            record.owner.to_string(),
            json(&record.command),
            started_at_ns,
            limits,
            max_output_bytes,
            record.recovery,
            record.cluster_job_id,
        ],
    );
    match inserted {
        Ok(_) => Ok(()),
        Err(e) if e.sqlite_extended_error_code() == Some(ffi::SQLITE_CONSTRAINT_PRIMARYKEY) => {
            Err(StoreError::AlreadyExists { id })
        }
        Err(e) => Err(StoreError::write(e)),
    }
}

/// Records `end` for the running record `id` through `conn`. Returns false
/// if there is no such running record (nothing changed then).
pub(super) fn finish(conn: &Connection, id: JobId, end: &JobEnd) -> Result<bool, StoreError> {
    if let Some(why) = end_problem(end.state, end.exit) {
        return Err(StoreError::InvalidEnd {
            id,
            state: end.state,
            why,
        });
    }
    let ended_at_ns = to_ns(id, "ended_at", end.ended_at)?;
    let output_bytes = to_i64(id, "output_bytes", end.output_bytes)?;
    let (exit_code, signal, core_dumped) = match end.exit {
        None => (None, None, None),
        Some(ExitInfo::Exited(code)) => (Some(code), None, None),
        Some(ExitInfo::Signaled {
            signal,
            core_dumped,
        }) => (None, Some(signal), Some(core_dumped)),
    };
    let usage = end.usage.map(|u| json(&UsageJson::from(u)));
    let changed = conn
        .execute(
            "UPDATE jobs SET ended_at_ns = ?2, state = ?3, exit_code = ?4, signal = ?5,
                 core_dumped = ?6, usage = ?7, output_bytes = ?8
             WHERE id = ?1 AND ended_at_ns IS NULL",
            params![
                id.to_string(),
                ended_at_ns,
                state_name(end.state),
                exit_code,
                signal,
                core_dumped,
                usage,
                output_bytes,
            ],
        )
        .map_err(StoreError::write)?;
    Ok(changed == 1)
}

/// The ids of every record without an end, oldest first.
pub(super) fn running_ids(conn: &Connection) -> Result<Vec<JobId>, StoreError> {
    let mut select = conn
        .prepare("SELECT id FROM jobs WHERE ended_at_ns IS NULL ORDER BY started_at_ns, id")
        .map_err(StoreError::read)?;
    let texts = select
        .query_map([], |r| r.get::<_, String>(0))
        .map_err(StoreError::read)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(StoreError::read)?;
    texts.into_iter().map(|text| parse_id(&text)).collect()
}

/// The columns of a record, in the order [`RawRow::read`] takes them.
pub(super) const COLUMNS: &str = "id, owner, command, started_at_ns, limits, max_output_bytes, \
    recovery, ended_at_ns, state, exit_code, signal, core_dumped, usage, output_bytes, cluster_job_id";

/// The records `sql` (a `SELECT` of [`COLUMNS`]) returns for `params`, in
/// its order.
pub(super) fn select(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<JobRecord>, StoreError> {
    let mut select = conn.prepare_cached(sql).map_err(StoreError::read)?;
    let raws = select
        .query_map(params, RawRow::read)
        .map_err(StoreError::read)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(StoreError::read)?;
    raws.into_iter().map(RawRow::decode).collect()
}

/// The record in the row `r` of a `SELECT` of [`COLUMNS`].
pub(super) fn decode_row(r: &Row<'_>) -> Result<JobRecord, StoreError> {
    RawRow::read(r).map_err(StoreError::read)?.decode()
}

/// Every record, oldest first.
pub(super) fn load_all(conn: &Connection) -> Result<Vec<JobRecord>, StoreError> {
    select(
        conn,
        &format!("SELECT {COLUMNS} FROM jobs ORDER BY started_at_ns, id"),
        [],
    )
}

/// `text` as a job id, or why the row holding it is corrupt.
pub(super) fn parse_id(text: &str) -> Result<JobId, StoreError> {
    text.parse().map_err(|_| StoreError::Corrupt {
        id: text.to_owned(),
        what: "the id is not a canonical UUID".to_owned(),
    })
}

/// A row as SQLite holds it, before any check.
struct RawRow {
    id: String,
    owner: String,
    command: String,
    started_at_ns: i64,
    limits: Option<String>,
    max_output_bytes: Option<i64>,
    recovery: Option<String>,
    ended_at_ns: Option<i64>,
    state: Option<String>,
    exit_code: Option<i32>,
    signal: Option<i32>,
    core_dumped: Option<i64>,
    usage: Option<String>,
    output_bytes: Option<i64>,
    cluster_job_id: Option<String>,
}

impl RawRow {
    /// Reads the columns in the order of [`COLUMNS`].
    fn read(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: r.get(0)?,
            owner: r.get(1)?,
            command: r.get(2)?,
            started_at_ns: r.get(3)?,
            limits: r.get(4)?,
            max_output_bytes: r.get(5)?,
            recovery: r.get(6)?,
            ended_at_ns: r.get(7)?,
            state: r.get(8)?,
            exit_code: r.get(9)?,
            signal: r.get(10)?,
            core_dumped: r.get(11)?,
            usage: r.get(12)?,
            output_bytes: r.get(13)?,
            cluster_job_id: r.get(14)?,
        })
    }

    fn decode(self) -> Result<JobRecord, StoreError> {
        let corrupt = |what: String| StoreError::Corrupt {
            id: self.id.clone(),
            what,
        };
        let id = parse_id(&self.id)?;
        let owner: Identity = self
            .owner
            .parse()
            .map_err(|_| corrupt(format!("owner {:?} is not an identity", self.owner)))?;
        let command: Vec<String> = serde_json::from_str(&self.command)
            .map_err(|e| corrupt(format!("command is not a JSON list of strings: {e}")))?;
        let started_at = from_ns(self.started_at_ns)
            .ok_or_else(|| corrupt(format!("started_at_ns {} < 0", self.started_at_ns)))?;
        let limits = match &self.limits {
            None => None,
            Some(text) => Some(
                serde_json::from_str::<LimitsJson>(text)
                    .map_err(|e| corrupt(format!("limits are not valid JSON limits: {e}")))?
                    .into(),
            ),
        };
        let max_output_bytes = match self.max_output_bytes {
            None => None,
            Some(n) => {
                Some(u64::try_from(n).map_err(|_| corrupt(format!("max_output_bytes {n} < 0")))?)
            }
        };
        let end = match (self.ended_at_ns, &self.state, self.output_bytes) {
            (None, None, None)
                if self.exit_code.is_none()
                    && self.signal.is_none()
                    && self.core_dumped.is_none()
                    && self.usage.is_none() =>
            {
                None
            }
            (Some(ended_at_ns), Some(state), Some(output_bytes)) => {
                let ended_at = from_ns(ended_at_ns)
                    .ok_or_else(|| corrupt(format!("ended_at_ns {ended_at_ns} < 0")))?;
                let state = state_from_name(state)
                    .ok_or_else(|| corrupt(format!("unknown state {state:?}")))?;
                let exit = match (self.exit_code, self.signal, self.core_dumped) {
                    (None, None, None) => None,
                    (Some(code), None, None) => Some(ExitInfo::Exited(code)),
                    (None, Some(signal), Some(core @ (0 | 1))) => Some(ExitInfo::Signaled {
                        signal,
                        core_dumped: core == 1,
                    }),
                    (code, signal, core) => {
                        return Err(corrupt(format!(
                            "exit_code {code:?}, signal {signal:?}, core_dumped {core:?} \
                             do not describe one exit"
                        )));
                    }
                };
                if let Some(why) = end_problem(state, exit) {
                    return Err(corrupt(format!("state {:?}: {why}", state_name(state))));
                }
                let usage = match &self.usage {
                    None => None,
                    Some(text) => Some(
                        serde_json::from_str::<UsageJson>(text)
                            .map_err(|e| corrupt(format!("usage is not valid JSON usage: {e}")))?
                            .into(),
                    ),
                };
                let output_bytes = u64::try_from(output_bytes)
                    .map_err(|_| corrupt(format!("output_bytes {output_bytes} < 0")))?;
                Some(JobEnd {
                    state,
                    exit,
                    ended_at,
                    usage,
                    output_bytes,
                })
            }
            _ => {
                return Err(corrupt(
                    "its end is partly stored (ended_at_ns, state, output_bytes and the \
                     exit columns disagree)"
                        .to_owned(),
                ));
            }
        };
        Ok(JobRecord {
            id,
            owner,
            command,
            started_at,
            limits,
            max_output_bytes,
            recovery: self.recovery,
            cluster_job_id: self.cluster_job_id,
            end,
        })
    }
}

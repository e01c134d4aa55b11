//! The values a job is described by, shared by every layer that keeps or
//! shows jobs: its [`JobId`], its [`State`], how its main process ended
//! ([`ExitInfo`]) and what it used ([`ResourceUsage`]).
//!
//! This module owns only these types and their parsing; it imports nothing
//! of the crate, so the job engine (`job`), the record database (`store`)
//! and the server all depend on it and not on each other. Re-exported from
//! [`crate::job`].

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

/// A job's id: a UUID v4, written in canonical hyphenated lower-case form.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(Uuid);

impl JobId {
    /// A new random (v4) id.
    pub(crate) fn new_random() -> Self {
        Self(Uuid::new_v4())
    }

    /// The id whose 128 bits are `n` (tests only).
    #[cfg(test)]
    pub(crate) fn from_u128(n: u128) -> Self {
        Self(Uuid::from_u128(n))
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for JobId {
    type Err = MalformedJobId;

    /// Accepts only the canonical form (36 characters, lower-case, hyphens), so
    /// one job has one spelling.
    fn from_str(s: &str) -> Result<Self, MalformedJobId> {
        let uuid = Uuid::try_parse(s).map_err(|_| MalformedJobId)?;
        if s.len() != 36 || uuid.hyphenated().to_string() != s {
            return Err(MalformedJobId);
        }
        Ok(Self(uuid))
    }
}

/// How the main process of a job ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitInfo {
    /// It called exit(2) with this code (0..=255).
    Exited(i32),
    /// It was killed by this signal.
    Signaled {
        /// The signal number (signal(7)).
        signal: i32,
        /// The kernel wrote a core dump.
        core_dumped: bool,
    },
}

/// A job's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Not final yet: the main process runs, or its output is still draining.
    Running,
    /// The main process exited on its own.
    Exited,
    /// The main process was killed by a signal the daemon did not send.
    Killed,
    /// Its owner, an admin, or the daemon's shutdown stopped it.
    Stopped,
    /// The kernel's OOM killer killed at least one of its processes and
    /// nobody stopped it: the job reached its memory limit, or the machine or
    /// the daemon's own cgroup ran out of memory (the status's `usage` has the
    /// peak, the status's `limits` the limit). The status's `exit` tells how the
    /// main process ended.
    Oom,
    /// It wrote more than its output quota (the status's `max_output_bytes`):
    /// the log keeps exactly that many bytes, later output was discarded, and
    /// the job, if still running, was stopped as by a stop request.
    /// the status's `exit` tells how the main process ended.
    OutputLimit,
    /// The daemon ended (killed, or the machine went down) while the job
    /// ran; the next daemon on the same state directory found its record
    /// unfinished, killed what was left of its processes and kept its output
    /// up to the last complete record. The status's `exit` is `None` (nobody saw
    /// the main process end); the status's `ended_at` is when it was found.
    Lost,
    /// The daemon could not store the job's output (disk full, or the write
    /// failed), so the job was stopped as by a stop request; the log keeps
    /// every byte written before the failure. The status's `exit` tells how the
    /// main process ended.
    OutputFailed,
}

/// A job id that is not a UUID in canonical lower-case hyphenated form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "job id must be a UUID in canonical lower-case form, like 67e55044-10b1-426f-9247-bb680e5fe0c8"
)]
pub struct MalformedJobId;

/// What a job used, from its cgroup's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResourceUsage {
    /// Highest memory use of all its processes together, in bytes.
    pub peak_memory_bytes: Option<u64>,
    /// CPU time of all its processes, in microseconds.
    pub cpu_usec: Option<u64>,
    /// Processes the kernel killed for exceeding the memory limit.
    pub oom_kills: u64,
}

//! What job operations can fail with: [`JobError`], which the server maps
//! to one gRPC status per variant, and [`AccessDenied`], the detail of a
//! refused [`super::Jobs::authorize`] that only the audit log sees.

use super::{Resource, SpawnError};
use crate::accounts::UidRange;
use crate::auth::Identity;
use crate::model::MalformedJobId;
use crate::output;
use crate::store::StoreError;

/// Errors of job operations. The server maps each variant to one gRPC status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// A job id is not a UUID in canonical form.
    #[error(
        "job id must be a UUID in canonical lower-case form, like 67e55044-10b1-426f-9247-bb680e5fe0c8"
    )]
    InvalidId,
    /// No such job, or it belongs to someone else (deliberately one answer).
    #[error("no such job")]
    NotFound,
    /// The program is the empty string.
    #[error("program must not be empty")]
    EmptyProgram,
    /// The program or an argument holds a NUL byte, which execve(2) cannot pass.
    #[error("program and arguments must not contain NUL bytes")]
    NulByte,
    /// The program is longer than [`MAX_PROGRAM_LEN`](super::MAX_PROGRAM_LEN).
    #[error("program is longer than {max} bytes")]
    ProgramTooLong {
        /// The limit.
        max: usize,
    },
    /// The program is a relative path such as `./run.sh`.
    #[error(
        "program '{program}' is a relative path; give an absolute path or a bare name looked up in PATH"
    )]
    RelativeProgram {
        /// The program as given.
        program: String,
    },
    /// More than [`MAX_ARGS`](super::MAX_ARGS) arguments.
    #[error("more than {max} arguments")]
    TooManyArgs {
        /// The limit.
        max: usize,
    },
    /// Program and arguments exceed [`MAX_ARGV_BYTES`](super::MAX_ARGV_BYTES).
    #[error("program and arguments exceed {max} bytes")]
    ArgvTooLarge {
        /// The limit.
        max: usize,
    },
    /// The executor could not start the program.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// The job's output log could not be created.
    #[error("cannot create the job's output log")]
    Output(#[from] output::OutputError),
    /// The registry is shutting down and takes no new jobs.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// A requested limit is below its minimum (e.g. zero memory).
    #[error(
        "{resource} {asked}{} is below the minimum of {min}{}",
        resource.gloss(*asked),
        resource.gloss(*min)
    )]
    LimitTooSmall {
        /// Which limit.
        resource: Resource,
        /// The value asked for.
        asked: u64,
        /// The smallest accepted value.
        min: u64,
    },
    /// A requested limit is above the daemon's ceiling for it.
    #[error(
        "{resource} {asked}{} is above the server's ceiling of {max}{}",
        resource.gloss(*asked),
        resource.gloss(*max)
    )]
    LimitAboveCeiling {
        /// Which limit.
        resource: Resource,
        /// The value asked for.
        asked: u64,
        /// The ceiling.
        max: u64,
    },
    /// Limits were asked of a daemon that does not contain jobs.
    #[error("this server runs jobs without containment and cannot enforce resource limits")]
    LimitsUnavailable,
    /// A process limit was asked of a daemon whose executor cannot limit
    /// processes (a cluster's).
    #[error("this server's cluster cannot limit a job's processes; leave out --pids")]
    PidsLimitUnavailable,
    /// IO limits were asked of a daemon with no IO devices configured.
    #[error("this server has no IO devices configured and cannot enforce IO limits")]
    IoLimitsUnavailable,
    /// The caller has no uid of its own yet and every uid of the daemon's
    /// range ([`JobsConfig::uid_range`]) is another identity's.
    #[error(
        "the server has no uid left for a new identity: its range {range} is used up; ask the server's operator"
    )]
    UidRangeExhausted {
        /// The range.
        range: UidRange,
    },
    /// The caller's uid of the range is also a local user's or group's
    /// (a name service that does not list its accounts escaped the start-up
    /// check), or the name service could not say: nothing runs as it. The
    /// log has the detail.
    #[error(
        "the server cannot give your jobs an account of their own now; ask the server's operator"
    )]
    AccountUnavailable,
    /// The caller already has as many jobs running as its quota allows.
    #[error("{}", too_many_running(*max))]
    TooManyRunningJobs {
        /// The quota.
        max: u32,
    },
    /// Only admins may do this (list every user's jobs).
    #[error("only admins may list every user's jobs")]
    AdminOnly,
    /// The job is still running, so it cannot be removed.
    #[error("the job is still running; stop it first")]
    StillRunning,
    /// The job's record could not be written to the store (e.g. the disk is
    /// full); for a start, nothing runs.
    #[error("cannot record the job")]
    Store(#[from] StoreError),
}

fn too_many_running(max: u32) -> String {
    if max == 0 {
        "your quota allows no running jobs; ask the server's operator".to_owned()
    } else {
        format!(
            "you have {max} running job(s), the most your quota allows; wait for one to end or stop one"
        )
    }
}

/// Why [`Jobs::authorize`] refused, in more detail than the caller is told:
/// the audit log records it, the peer sees only [`JobError::InvalidId`] or
/// [`JobError::NotFound`] (via `From`).
#[derive(Debug)]
#[non_exhaustive]
pub enum AccessDenied {
    /// The id is not a UUID in canonical form.
    MalformedId,
    /// No job has this id.
    NoSuchJob,
    /// The job belongs to another identity and the caller is not an admin.
    NotOwner {
        /// The job's owner.
        owner: Identity,
    },
    /// The store could not be read, so nobody can tell (a failure, not a
    /// refusal).
    Store(StoreError),
}

impl AccessDenied {
    /// A short stable name for the audit log.
    pub fn reason(&self) -> &'static str {
        match self {
            AccessDenied::MalformedId => "malformed_job_id",
            AccessDenied::NoSuchJob => "no_such_job",
            AccessDenied::NotOwner { .. } => "not_owner",
            AccessDenied::Store(_) => "store_unreadable",
        }
    }
}

impl From<AccessDenied> for JobError {
    fn from(e: AccessDenied) -> Self {
        match e {
            AccessDenied::MalformedId => JobError::InvalidId,
            // Same answer for both, so that job ids cannot be probed.
            AccessDenied::NoSuchJob | AccessDenied::NotOwner { .. } => JobError::NotFound,
            AccessDenied::Store(e) => JobError::Store(e),
        }
    }
}

impl From<MalformedJobId> for JobError {
    fn from(_: MalformedJobId) -> Self {
        JobError::InvalidId
    }
}

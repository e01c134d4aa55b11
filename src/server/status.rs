//! The one place that decides what a peer is told when something fails.
//!
//! Every library error reaches the wire through [`to_status`], an exhaustive
//! `match` with no catch-all arm, so a new error variant forces a decision
//! here. Peers get short, fixed messages built from their own input and
//! documented constants; server paths and OS error texts go only to the log,
//! tagged with a reference the peer can quote to an operator.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::paging::PageError;
use crate::job::{JobError, SpawnError};
use crate::output::OutputError;
use crate::policy::Denial;
use crate::store::StoreError;

/// What a revoked identity is told (PERMISSION_DENIED) when its open
/// stream ends or it makes a request on a connection about to be closed.
pub(crate) const REVOKED: &str =
    "this client certificate was revoked (ask your CA admin for a new one)";

/// What a non-admin is told for StopOwner, whatever owner it named.
pub(crate) const STOP_OWNER_ADMIN_ONLY: &str = "only admins may stop every job of an identity";

/// Maps a job error to the gRPC status the peer sees.
pub(crate) fn to_status(e: JobError) -> Status {
    match e {
        JobError::InvalidId
        | JobError::EmptyProgram
        | JobError::NulByte
        | JobError::ProgramTooLong { .. }
        | JobError::RelativeProgram { .. }
        | JobError::TooManyArgs { .. }
        | JobError::ArgvTooLarge { .. }
        | JobError::LimitTooSmall { .. }
        | JobError::LimitAboveCeiling { .. } => Status::invalid_argument(e.to_string()),
        JobError::LimitsUnavailable
        | JobError::IoLimitsUnavailable
        | JobError::PidsLimitUnavailable
        | JobError::AccountUnavailable => Status::failed_precondition(e.to_string()),
        // Same code and text for "no such job" and "not yours".
        JobError::NotFound => Status::not_found("no such job"),
        JobError::Spawn(spawn) => spawn_status(spawn),
        JobError::Output(e) => output_status(e),
        JobError::ShuttingDown => Status::unavailable("the server is shutting down"),
        JobError::TooManyRunningJobs { .. } | JobError::UidRangeExhausted { .. } => {
            Status::resource_exhausted(e.to_string())
        }
        JobError::AdminOnly => Status::permission_denied(e.to_string()),
        JobError::StillRunning => Status::failed_precondition(e.to_string()),
        JobError::Store(e) => store_status(e),
    }
}

/// A failure of the job store: a full disk is the operator's to fix and the
/// caller's to retry later, as is a write the shutdown cut off; anything else
/// is an internal error, detailed in the log only.
fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::Full => {
            tracing::error!("the job store's disk is full");
            Status::unavailable(STORE_FULL)
        }
        StoreError::NotRun => Status::unavailable("the server is shutting down"),
        StoreError::CreateFile { .. }
        | StoreError::Open { .. }
        | StoreError::NotAJobsDatabase { .. }
        | StoreError::SchemaTooNew { .. }
        | StoreError::Migration { .. }
        | StoreError::Write { .. }
        | StoreError::Read { .. }
        | StoreError::Corrupt { .. }
        | StoreError::AlreadyExists { .. }
        | StoreError::NotRunning { .. }
        | StoreError::InsertedEnded { .. }
        | StoreError::InvalidEnd { .. }
        | StoreError::TimeOutOfRange { .. }
        | StoreError::ValueTooLarge { .. } => internal("cannot record the job", &error_chain(&e)),
    }
}

/// `e` and its sources, `: `-separated, for the log.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// What a caller is told when the server's disk is too full to record jobs.
const STORE_FULL: &str =
    "the server's disk is full, so it cannot record jobs now; retry later or ask its operator";

fn spawn_status(e: SpawnError) -> Status {
    match e {
        SpawnError::NotFound {
            program,
            search_path,
        } => {
            let mut msg = format!("program '{program}' not found");
            if let Some(path) = search_path {
                msg.push_str(&format!(" in PATH {path}"));
            }
            if program.contains(char::is_whitespace) {
                msg.push_str(
                    "; the program name is not split on spaces: pass the program and each argument separately",
                );
            }
            Status::invalid_argument(msg)
        }
        SpawnError::NotExecutable { program } => {
            Status::invalid_argument(format!("program '{program}' is not an executable file"))
        }
        // The caller's own doing: retrying helps only once its jobs have
        // fewer processes.
        SpawnError::IdentityProcessCap { max } => Status::resource_exhausted(format!(
            "your jobs together are at your cap of {max} processes and threads; stop some of them, or ask the server's operator to raise the cap (jobsd --identity-max-pids, or [identity_limits] pids in the policy)"
        )),
        // The machine or the daemon's cgroup is at its process or memory
        // limit: a transient condition the caller can retry.
        SpawnError::Os(e) if is_transient(&e) => {
            tracing::warn!(error = %e, "cannot start a job now");
            Status::resource_exhausted(BUSY)
        }
        SpawnError::Containment { what, source } if is_transient(&source) => {
            tracing::warn!(error = %source, %what, "cannot start a job now");
            Status::resource_exhausted(BUSY)
        }
        SpawnError::NoAccount => Status::failed_precondition(
            "your identity has no account to run jobs as on the cluster; ask the server's operator to map it (jobsd --run-as-for FINGERPRINT=USER)",
        ),
        SpawnError::ClusterUnavailable { reason } => {
            tracing::warn!(%reason, "the cluster controller does not answer");
            Status::unavailable("the cluster controller does not answer; retry later")
        }
        SpawnError::Refused { reason } => {
            Status::failed_precondition(format!("the cluster refused the job: {reason}"))
        }
        SpawnError::Os(e) => internal("cannot start the process", &e),
        SpawnError::Containment { what, source } => internal(
            "cannot set up the job's containment",
            &format_args!("{what}: {source}"),
        ),
    }
}

/// What a caller is told when the server cannot create processes right now.
const BUSY: &str = "the server cannot start more processes right now; retry later";

/// EAGAIN (fork(2), clone(2): a process or thread limit) and ENOMEM.
fn is_transient(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::ENOMEM))
}

/// Maps an output-log error met while serving Output or Stream.
pub(crate) fn output_status(e: OutputError) -> Status {
    match e {
        OutputError::Io(io) => internal("output log I/O failed", &io),
        OutputError::Corrupt { offset } => {
            internal("output log is corrupt", &format!("at byte {offset}"))
        }
    }
}

/// Maps a refusal of a List request's paging fields: the caller's own
/// input, so INVALID_ARGUMENT with a fixed message.
pub(crate) fn page_status(e: PageError) -> Status {
    match e {
        PageError::InvalidToken | PageError::NegativeSize => {
            Status::invalid_argument(e.to_string())
        }
    }
}

/// An INTERNAL status with a fresh reference; the detail goes to the log only.
pub(crate) fn internal(what: &str, detail: &dyn std::fmt::Display) -> Status {
    let reference = uuid::Uuid::new_v4().simple().to_string();
    let reference = &reference[..12];
    tracing::error!(reference, error = %detail, "{what}");
    Status::new(
        Code::Internal,
        format!("internal error (reference {reference})"),
    )
}

/// Maps a refusal of the policy gate to the status the peer sees. Rate
/// limits say how long to wait, in the message and as a
/// `google.rpc.RetryInfo` detail.
pub(crate) fn denial_status(d: Denial) -> Status {
    match d {
        Denial::Denylisted => Status::permission_denied(
            "this identity is denied by the server's policy; ask the server's operator",
        ),
        Denial::RateLimited { retry_after } => {
            retry_status("too many requests from this identity", retry_after)
        }
        Denial::StartRateLimited { retry_after } => {
            retry_status("too many job starts from this identity", retry_after)
        }
    }
}

fn retry_status(what: &str, retry_after: std::time::Duration) -> Status {
    // Rounded up to the next tenth of a second, so that waiting as told is
    // always enough.
    let tenths = retry_after.as_nanos().div_ceil(100_000_000);
    Status::with_error_details(
        Code::ResourceExhausted,
        format!("{what}; retry in {}.{} s", tenths / 10, tenths % 10),
        ErrorDetails::with_retry_info(Some(retry_after)),
    )
}

/// The status code in snake case, as the audit log records failures:
/// `invalid_argument`, `not_found`, …
pub(crate) fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

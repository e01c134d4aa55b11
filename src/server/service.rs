//! The gRPC service: translates requests into library calls and results into
//! messages. It decides nothing itself: admission (denylist, rate limits) is
//! [`Gate::admit`], access to a job is [`Jobs::authorize`], quotas are the job
//! engine's, and errors go through [`super::status`]. What it owns is the
//! order, the same for every RPC:
//!
//! 1. admission, 2. access to the named job (and a stream slot), 3. one
//!    audit line recording the decision, 4. the action, 5. the response.
//!
//! For Start, step 2 is the engine's reservation (limits, the running-jobs
//! quota, the new job's id), and the line is written before the program is
//! spawned; a start that was allowed but then failed to spawn gets a second
//! line (`failed`) with the same id. An audit line that cannot be written
//! fails the request (INTERNAL) before its action: nothing is done
//! unrecorded. Open Output and Stream calls watch the policy and end with
//! PERMISSION_DENIED (and an audit line) when a reload denylists their caller
//! or takes away the admin rights they were opened with, and end with
//! UNAVAILABLE when the server begins to shut down.

use std::pin::Pin;
use std::sync::Arc;

use futures_util::{Stream, StreamExt};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use super::accept::ConnInfo;
use super::limits::{StreamLimits, StreamPermit};
use super::status::{
    code_name, denial_status, error_chain, internal, output_status, page_status, to_status,
};
use crate::audit::{AuditLog, Entry, Outcome};
use crate::auth::Identity;
use crate::job::{
    ExitInfo, JobError, JobSpec, Jobs, OwnedJob, ResourceLimits, ResourceUsage, State,
};
use crate::output::{Chunk, Fd, LogReader};
use crate::policy::{Gate, Grant, Policy, Rpc};
use crate::proto;
use crate::proto::job_service_server::JobService;

pub(crate) struct Service {
    pub jobs: Arc<Jobs>,
    pub streams: Arc<StreamLimits>,
    pub gate: Arc<Gate>,
    pub audit: Option<Arc<AuditLog>>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The verified peer of a request, from its connection.
fn conn<T>(request: &Request<T>) -> Result<ConnInfo, Status> {
    request
        .extensions()
        .get::<ConnInfo>()
        .cloned()
        // Only reachable if the service were mounted without the TLS acceptor.
        .ok_or_else(|| Status::unauthenticated("no verified client certificate"))
}

/// One audit line's worth of facts about a request.
struct Decision<'a> {
    conn: &'a ConnInfo,
    rpc: Rpc,
    job: Option<String>,
    owner: Option<Identity>,
    admin: bool,
    outcome: Outcome,
    reason: Option<&'a str>,
    /// Policy grants a started job runs with; empty elsewhere.
    grants: &'a [&'static str],
}

/// A request that may act on a job.
struct Access {
    job: OwnedJob,
    /// A slot among the caller's open streams (Output, Stream).
    permit: Option<StreamPermit>,
    /// For streams: who opened it, to check again on a policy reload.
    conn: ConnInfo,
    rpc: Rpc,
}

impl Service {
    /// Writes one audit line. With no audit log configured this does nothing.
    ///
    /// # Errors
    /// INTERNAL when the line cannot be written; the caller must not act.
    fn record(&self, d: Decision<'_>) -> Result<(), Status> {
        tracing::debug!(remote = %d.conn.remote, caller = %d.conn.caller.identity(), rpc = d.rpc.name(), job = ?d.job, outcome = ?d.outcome, reason = ?d.reason, "decision");
        let Some(audit) = &self.audit else {
            return Ok(());
        };
        audit
            .record(&Entry {
                identity: d.conn.caller.identity(),
                subject: &d.conn.subject,
                peer: d.conn.remote,
                rpc: d.rpc,
                job: d.job,
                owner: d.owner,
                admin: d.admin,
                outcome: d.outcome,
                reason: d.reason,
                grants: d.grants,
            })
            .map_err(|e| internal("cannot write the audit log", &error_chain(&e)))
    }

    /// Step 1: the gate. A refusal is audited and becomes the status.
    fn admit(&self, conn: &ConnInfo, rpc: Rpc, job: Option<&str>) -> Result<Grant, Status> {
        self.gate.admit(&conn.caller, rpc).or_else(|denial| {
            self.record(Decision {
                conn,
                rpc,
                job: job.map(shown_id),
                owner: None,
                admin: false,
                outcome: Outcome::Denied,
                reason: Some(denial.reason()),
                grants: &[],
            })?;
            Err(denial_status(denial))
        })
    }

    /// Steps 1–3 for an RPC on the job `id`: admission, access, a stream
    /// slot when `stream`, and the audit line.
    fn access<T>(&self, request: &Request<T>, rpc: Rpc, id: &str) -> Result<Access, Status> {
        let conn = conn(request)?;
        let grant = self.admit(&conn, rpc, Some(id))?;
        let job = match self.jobs.authorize(&grant, id) {
            Ok(job) => job,
            Err(denied) => {
                self.record(Decision {
                    conn: &conn,
                    rpc,
                    job: Some(shown_id(id)),
                    owner: match denied {
                        crate::job::AccessDenied::NotOwner { owner } => Some(owner),
                        _ => None,
                    },
                    admin: false,
                    outcome: Outcome::Denied,
                    reason: Some(denied.reason()),
                    grants: &[],
                })?;
                return Err(to_status(denied.into()));
            }
        };
        let admin = job.owner() != grant.identity();
        let decision = |outcome, reason| Decision {
            conn: &conn,
            rpc,
            job: Some(job.id().to_string()),
            owner: Some(job.owner()),
            admin,
            outcome,
            reason,
            grants: &[],
        };
        let permit = if matches!(rpc, Rpc::Output | Rpc::Stream) {
            match self.streams.acquire(grant.identity()) {
                Some(permit) => Some(permit),
                None => {
                    self.record(decision(Outcome::Denied, Some("too_many_streams")))?;
                    return Err(Status::resource_exhausted(
                        "too many open output streams for this identity; close some and retry",
                    ));
                }
            }
        } else {
            None
        };
        self.record(decision(Outcome::Allowed, None))?;
        if admin {
            tracing::info!(caller = %grant.identity(), owner = %job.owner(), job = %job.id(), rpc = rpc.name(), "admin access to another user's job");
        }
        Ok(Access {
            job,
            permit,
            conn,
            rpc,
        })
    }

    /// Ends `stream` with PERMISSION_DENIED (after an audit line) as soon as
    /// a new policy denies `access.conn`'s caller, or takes away the admin
    /// rights the stream was opened with.
    fn guard<T: Send + 'static>(
        &self,
        access: &Access,
        stream: impl Stream<Item = Result<T, Status>> + Send + 'static,
    ) -> impl Stream<Item = Result<T, Status>> + Send + 'static {
        let mut policy = self.gate.policy().subscribe();
        // A reload between the admission and this subscription would count as
        // seen: check the policy in force once, at the first poll.
        policy.mark_changed();
        let watch = Watch {
            shutdown: Box::pin(self.jobs.shutting_down()),
            policy,
            conn: access.conn.clone(),
            rpc: access.rpc,
            job: access.job.id().to_string(),
            owner: access.job.owner(),
            audit: self.audit.clone(),
        };
        futures_util::stream::unfold(Some((Box::pin(stream), watch)), |state| async move {
            let (mut stream, mut watch) = state?;
            loop {
                tokio::select! {
                    // The policy first: when both are ready (a reload before
                    // the first poll, or while output flows), not one more
                    // chunk goes out under a policy that refuses it.
                    biased;
                    changed = watch.policy.changed(), if !watch.closed() => {
                        if changed.is_err() {
                            continue;
                        }
                        let policy = watch.policy.borrow_and_update().clone();
                        if let Some(status) = watch.revoked(&policy) {
                            return Some((Err(status), None));
                        }
                    }
                    () = &mut watch.shutdown => {
                        return Some((Err(Status::unavailable(SHUTTING_DOWN)), None));
                    }
                    item = stream.next() => return item.map(|item| (item, Some((stream, watch)))),
                }
            }
        })
    }
}

/// Longest job id written to the audit log as sent. A real id is 36
/// characters; anything longer is a malformed id, cut so that a caller cannot
/// make lines (and the disk) fill with junk.
const MAX_SHOWN_ID: usize = 64;

/// `id` as the audit log shows it: as sent if short, else its first
/// characters and its length (`abc…(4000000 bytes)`).
fn shown_id(id: &str) -> String {
    if id.len() <= MAX_SHOWN_ID {
        return id.to_owned();
    }
    let mut end = MAX_SHOWN_ID;
    while !id.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…({} bytes)", &id[..end], id.len())
}

/// What an open stream is told when the server begins to shut down. The
/// job's record and output are kept, so the caller can ask again later.
const SHUTTING_DOWN: &str =
    "the server is shutting down; the job's record and output are kept, ask again once it is back";

/// What an open stream needs to check itself against a new policy, and the
/// server's shutdown.
struct Watch {
    shutdown: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    policy: watch::Receiver<Arc<Policy>>,
    conn: ConnInfo,
    rpc: Rpc,
    job: String,
    owner: Identity,
    audit: Option<Arc<AuditLog>>,
}

impl Watch {
    /// True once the policy's sender is gone (the server is ending).
    fn closed(&self) -> bool {
        self.policy.has_changed().is_err()
    }

    /// The status to end the stream with under `policy`, if it must end.
    fn revoked(&self, policy: &Policy) -> Option<Status> {
        let identity = self.conn.caller.identity();
        let (reason, status) = if policy.is_denied(&identity) {
            (
                "stream_ended_denylisted",
                super::status::denial_status(crate::policy::Denial::Denylisted),
            )
        } else if self.owner != identity && !policy.is_admin(&identity) {
            ("stream_ended_not_admin", to_status(JobError::NotFound))
        } else {
            return None;
        };
        tracing::info!(caller = %identity, job = %self.job, rpc = self.rpc.name(), reason, "open stream ended by a new policy");
        if let Some(audit) = &self.audit {
            if let Err(e) = audit.record(&Entry {
                identity,
                subject: &self.conn.subject,
                peer: self.conn.remote,
                rpc: self.rpc,
                job: Some(self.job.clone()),
                owner: Some(self.owner),
                admin: self.owner != identity,
                outcome: Outcome::Denied,
                reason: Some(reason),
                grants: &[],
            }) {
                // The stream ends all the same: refusing is the safe side.
                tracing::error!(error = %error_chain(&e), "cannot write the audit log");
            }
        }
        Some(status)
    }
}

#[tonic::async_trait]
impl JobService for Service {
    async fn start(
        &self,
        request: Request<proto::StartRequest>,
    ) -> Result<Response<proto::StartResponse>, Status> {
        let conn = conn(&request)?;
        let grant = self.admit(&conn, Rpc::Start, None)?;
        let proto::StartRequest {
            program,
            args,
            limits,
        } = request.into_inner();
        let limits = limits.map(limits_from_message).unwrap_or_default();
        let grants = grant_names(grant.quota().permits);
        let decision = |job: Option<String>, outcome, reason| Decision {
            conn: &conn,
            rpc: Rpc::Start,
            owner: job.as_ref().map(|_| grant.identity()),
            job,
            admin: false,
            outcome,
            reason,
            grants: &grants,
        };
        // The decision, with the new job's id, is recorded before anything
        // runs: if the line cannot be written, nothing starts.
        let ticket = match JobSpec::new(program, args).and_then(|spec| {
            self.jobs
                .reserve(&grant, limits)
                .map(|ticket| (ticket, spec))
        }) {
            Ok(ticket) => ticket,
            Err(e @ JobError::TooManyRunningJobs { .. }) => {
                self.record(decision(None, Outcome::Denied, Some("running_jobs_quota")))?;
                return Err(to_status(e));
            }
            Err(e) => {
                let status = to_status(e);
                self.record(decision(
                    None,
                    Outcome::Failed,
                    Some(code_name(status.code())),
                ))?;
                return Err(status);
            }
        };
        let (ticket, spec) = ticket;
        let id = ticket.id().to_string();
        self.record(decision(Some(id.clone()), Outcome::Allowed, None))?;
        let job = match self.jobs.launch(ticket, spec).await {
            Ok(job) => job,
            Err(e) => {
                // A second line for this id: it was allowed but never ran.
                let status = to_status(e);
                self.record(decision(
                    Some(id),
                    Outcome::Failed,
                    Some(code_name(status.code())),
                ))?;
                return Err(status);
            }
        };
        Ok(Response::new(proto::StartResponse {
            id: job.id().to_string(),
            status: Some(status_message(&job.status())),
        }))
    }

    async fn stop(
        &self,
        request: Request<proto::StopRequest>,
    ) -> Result<Response<proto::StopResponse>, Status> {
        let access = self.access(&request, Rpc::Stop, &request.get_ref().id)?;
        let status = access.job.stop().await;
        Ok(Response::new(proto::StopResponse {
            status: Some(status_message(&status)),
        }))
    }

    async fn status(
        &self,
        request: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::StatusResponse>, Status> {
        let access = self.access(&request, Rpc::Status, &request.get_ref().id)?;
        Ok(Response::new(proto::StatusResponse {
            status: Some(status_message(&access.job.status())),
        }))
    }

    async fn list(
        &self,
        request: Request<proto::ListRequest>,
    ) -> Result<Response<proto::ListResponse>, Status> {
        let conn = conn(&request)?;
        let grant = self.admit(&conn, Rpc::List, None)?;
        let proto::ListRequest {
            all_users,
            page_size,
            page_token,
        } = request.into_inner();
        let decision = |outcome, reason| Decision {
            conn: &conn,
            rpc: Rpc::List,
            job: None,
            owner: None,
            // Admin rights used, not merely asked for.
            admin: all_users && grant.is_admin(),
            outcome,
            reason,
            grants: &[],
        };
        // As for Start's command: a malformed request is refused (and
        // recorded) before the access check.
        let page = match paging::PageRequest::parse(page_size, &page_token) {
            Ok(page) => page,
            Err(e) => {
                let status = page_status(e);
                self.record(decision(Outcome::Failed, Some(code_name(status.code()))))?;
                return Err(status);
            }
        };
        let jobs = match self.jobs.list(&grant, all_users) {
            Ok(jobs) => jobs,
            Err(e) => {
                self.record(decision(Outcome::Denied, Some("admin_only")))?;
                return Err(to_status(e));
            }
        };
        self.record(decision(Outcome::Allowed, None))?;
        Ok(Response::new(page.of(&jobs)))
    }

    type OutputStream = BoxStream<proto::OutputChunk>;

    async fn output(
        &self,
        request: Request<proto::OutputRequest>,
    ) -> Result<Response<Self::OutputStream>, Status> {
        let mut access = self.access(&request, Rpc::Output, &request.get_ref().id)?;
        let permit = access.permit.take();
        let reader = access.job.output().map_err(output_status)?;
        let stream = chunks(reader, permit, chunk_message);
        Ok(Response::new(Box::pin(self.guard(&access, stream))))
    }

    type StreamStream = BoxStream<proto::StreamEvent>;

    async fn stream(
        &self,
        request: Request<proto::StreamRequest>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let mut access = self.access(&request, Rpc::Stream, &request.get_ref().id)?;
        let permit = access.permit.take();
        let job = access.job.clone();
        let reader = job.follow().map_err(output_status)?;
        let output = chunks(reader, permit, |chunk| proto::StreamEvent {
            event: Some(proto::stream_event::Event::Chunk(chunk_message(chunk))),
        });
        // After the last byte: the final status. The log is sealed only after
        // the job is final, so this does not wait in practice.
        let last = futures_util::stream::once(async move {
            let status = job.wait_final().await;
            if status.state == State::Running {
                return Err(Status::internal(
                    "job supervisor ended without a final status",
                ));
            }
            Ok(proto::StreamEvent {
                event: Some(proto::stream_event::Event::FinalStatus(status_message(
                    &status,
                ))),
            })
        });
        let stream = output.chain(last);
        Ok(Response::new(Box::pin(self.guard(&access, stream))))
    }

    async fn remove(
        &self,
        request: Request<proto::RemoveRequest>,
    ) -> Result<Response<proto::RemoveResponse>, Status> {
        let access = self.access(&request, Rpc::Remove, &request.get_ref().id)?;
        self.jobs.remove(&access.job).await.map_err(to_status)?;
        Ok(Response::new(proto::RemoveResponse {}))
    }
}

/// The log's chunks as messages; ends after the last chunk or the first error.
/// Holds `permit` until dropped (when the stream ends or the client leaves).
fn chunks<T: Send + 'static>(
    reader: LogReader,
    permit: Option<StreamPermit>,
    to_message: fn(Chunk) -> T,
) -> impl Stream<Item = Result<T, Status>> + Send + 'static {
    futures_util::stream::unfold(Some((reader, permit)), move |state| async move {
        let (mut reader, permit) = state?;
        match reader.next().await {
            Ok(Some(chunk)) => Some((Ok(to_message(chunk)), Some((reader, permit)))),
            Ok(None) => None,
            Err(e) => Some((Err(output_status(e)), None)),
        }
    })
}

fn chunk_message(chunk: Chunk) -> proto::OutputChunk {
    proto::OutputChunk {
        fd: match chunk.fd {
            Fd::Stdout => proto::Fd::Stdout,
            Fd::Stderr => proto::Fd::Stderr,
        } as i32,
        data: chunk.data,
    }
}

/// The wire form of a job's status.
pub(crate) fn status_message(s: &crate::job::Status) -> proto::JobStatus {
    let (exit_code, signal, core_dumped) = match s.exit {
        None => (None, None, false),
        Some(ExitInfo::Exited(code)) => (Some(code), None, false),
        Some(ExitInfo::Signaled {
            signal,
            core_dumped,
        }) => (None, Some(signal), core_dumped),
    };
    proto::JobStatus {
        id: s.id.to_string(),
        state: match s.state {
            State::Running => proto::State::Running,
            State::Exited => proto::State::Exited,
            State::Killed => proto::State::Killed,
            State::Stopped => proto::State::Stopped,
            State::Oom => proto::State::Oom,
            State::OutputLimit => proto::State::OutputLimit,
            State::Lost => proto::State::Lost,
            State::OutputFailed => proto::State::OutputFailed,
        } as i32,
        exit_code,
        signal,
        core_dumped,
        command: s.command.clone(),
        started_at: Some(s.started_at.into()),
        ended_at: s.ended_at.map(Into::into),
        owner: s.owner.to_string(),
        limits: s.limits.map(limits_message),
        usage: s.usage.map(usage_message),
        output_bytes: s.output_bytes,
        max_output_bytes: s.max_output_bytes,
    }
}

fn limits_from_message(m: proto::Limits) -> ResourceLimits {
    ResourceLimits {
        memory_bytes: m.memory_bytes,
        cpu_millis: m.cpu_millis,
        pids: m.pids,
        io_read_bps: m.io_read_bps,
        io_write_bps: m.io_write_bps,
    }
}

fn limits_message(l: ResourceLimits) -> proto::Limits {
    proto::Limits {
        memory_bytes: l.memory_bytes,
        cpu_millis: l.cpu_millis,
        pids: l.pids,
        io_read_bps: l.io_read_bps,
        io_write_bps: l.io_write_bps,
    }
}

fn usage_message(u: ResourceUsage) -> proto::ResourceUsage {
    proto::ResourceUsage {
        peak_memory_bytes: u.peak_memory_bytes,
        cpu_usec: u.cpu_usec,
        oom_kills: u.oom_kills,
    }
}

/// List pagination (Google AIP-158): how a request's `page_size` and
/// `page_token` pick one page out of the jobs the caller may see, so that no
/// List response comes near gRPC's 4 MiB default message limit however many
/// jobs, or however long their commands, there are.
///
/// A token is the sort key of the last job the previous page returned,
/// `<started_at as nanoseconds since the Unix epoch>:<job id>`; a page holds
/// the jobs strictly after it. Jobs started or removed between pages
/// therefore neither repeat nor shift the others. (A wall clock stepped back
/// between pages could put a new job before the token: it is then missed by
/// that listing, never repeated.)
pub(super) mod paging {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use prost::Message;

    use super::status_message;
    use crate::job::{JobId, MAX_ARGS, MAX_ARGV_BYTES, Status};
    use crate::proto;

    /// Jobs per page when the request leaves `page_size` at 0. Ordinary
    /// records are a few hundred bytes, so such a page is ~100 KiB.
    pub(crate) const DEFAULT_PAGE_JOBS: usize = 500;
    /// Most jobs per page, whatever `page_size` asks: bounds the work of one
    /// call.
    pub(crate) const MAX_PAGE_JOBS: usize = 1000;
    /// A page stops before its encoded size would pass this many bytes: a
    /// quarter of gRPC's 4 MiB default decode limit, which clients must
    /// never need to raise. A page always holds at least one job (when any
    /// are left), and one job may be larger than this, but never larger than
    /// [`MAX_JOB_BYTES`].
    pub(crate) const MAX_PAGE_BYTES: usize = 1024 * 1024;
    /// An upper bound on one encoded job status: its command (at most
    /// [`MAX_ARGV_BYTES`], plus up to 5 bytes of field tag and length per
    /// word) and 4 KiB for every other field (id, owner, times, limits, …).
    const MAX_JOB_BYTES: usize = MAX_ARGV_BYTES + 5 * (MAX_ARGS + 1) + 4096;
    const _: () = assert!(
        MAX_PAGE_BYTES < 4 * 1024 * 1024 && MAX_JOB_BYTES + 2 + MAX_TOKEN_LEN < 4 * 1024 * 1024,
        "a List page must fit gRPC's 4 MiB default message limit"
    );
    /// Longest token we issue: an `i128` (at most 40 characters), `:` and a
    /// 36-character id; anything longer was not issued by us.
    const MAX_TOKEN_LEN: usize = 128;

    /// Why a List request's paging fields are refused.
    #[derive(Debug, thiserror::Error, PartialEq, Eq)]
    #[non_exhaustive]
    pub(crate) enum PageError {
        /// `page_token` is not a token this server issued (not
        /// `<nanoseconds>:<job id>`).
        #[error("page_token is not one this server issued; list again from an empty page_token")]
        InvalidToken,
        /// `page_size` is below 0.
        #[error("page_size must not be negative (0 means the server's default)")]
        NegativeSize,
    }

    /// A validated page request: how many jobs, after which key.
    #[derive(Debug, PartialEq, Eq)]
    pub(crate) struct PageRequest {
        size: usize,
        after: Option<(SystemTime, JobId)>,
    }

    impl PageRequest {
        /// Validates a List request's `page_size` and `page_token`.
        ///
        /// # Errors
        /// [`PageError::NegativeSize`], [`PageError::InvalidToken`].
        pub(crate) fn parse(page_size: i32, page_token: &str) -> Result<Self, PageError> {
            let size = match usize::try_from(page_size) {
                Err(_) => return Err(PageError::NegativeSize),
                Ok(0) => DEFAULT_PAGE_JOBS,
                Ok(n) => n.min(MAX_PAGE_JOBS),
            };
            let after = if page_token.is_empty() {
                None
            } else {
                Some(decode(page_token).ok_or(PageError::InvalidToken)?)
            };
            Ok(Self { size, after })
        }

        /// The page of `jobs` (sorted by `(started_at, id)`, as
        /// [`crate::job::Jobs::list`] returns them) this request asks for,
        /// with the token of the next page if any jobs are left after it.
        pub(crate) fn of(&self, jobs: &[Status]) -> proto::ListResponse {
            let start = match self.after {
                None => 0,
                Some(after) => jobs.partition_point(|s| (s.started_at, s.id) <= after),
            };
            let rest = &jobs[start..];
            let mut page = Vec::new();
            // Room for next_page_token (tag, length, text).
            let mut bytes = 2 + MAX_TOKEN_LEN;
            for job in rest.iter().take(self.size) {
                let message = status_message(job);
                let len = message.encoded_len();
                // Field tag (1 byte for field 1), length, the message.
                let field = 1 + prost::length_delimiter_len(len) + len;
                if !page.is_empty() && bytes + field > MAX_PAGE_BYTES {
                    break;
                }
                bytes += field;
                page.push(message);
            }
            let next_page_token = match rest.get(page.len()) {
                // `page` is not empty here: `rest` has an element past it
                // and the loop takes at least one (`size` is at least 1).
                Some(_) => encode(&rest[page.len() - 1]),
                None => String::new(),
            };
            proto::ListResponse {
                jobs: page,
                next_page_token,
            }
        }
    }

    /// The token continuing after `job`.
    fn encode(job: &Status) -> String {
        let nanos = match job.started_at.duration_since(UNIX_EPOCH) {
            // At most u64::MAX s in nanoseconds (< 2^94): no i128 overflow.
            Ok(d) => d.as_nanos() as i128,
            Err(before) => -(before.duration().as_nanos() as i128),
        };
        format!("{nanos}:{}", job.id)
    }

    /// The key a token of [`encode`] holds; `None` for anything else.
    fn decode(token: &str) -> Option<(SystemTime, JobId)> {
        if token.len() > MAX_TOKEN_LEN {
            return None;
        }
        let (nanos, id) = token.split_once(':')?;
        // `i128::from_str` takes a leading '+', which `encode` never writes:
        // one key, one spelling.
        if nanos.starts_with('+') {
            return None;
        }
        let nanos: i128 = nanos.parse().ok()?;
        let id: JobId = id.parse().ok()?;
        const NANOS_PER_SEC: u128 = 1_000_000_000;
        let magnitude = nanos.unsigned_abs();
        let secs = u64::try_from(magnitude / NANOS_PER_SEC).ok()?;
        // The remainder is below 10^9: it fits a u32.
        let offset = Duration::new(secs, (magnitude % NANOS_PER_SEC) as u32);
        let time = if nanos < 0 {
            UNIX_EPOCH.checked_sub(offset)?
        } else {
            UNIX_EPOCH.checked_add(offset)?
        };
        Some((time, id))
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::job::State;

        fn job(started_ns: u64, id: &str, command_bytes: usize) -> Status {
            Status {
                id: id.parse().unwrap(),
                state: State::Running,
                exit: None,
                command: vec!["/bin/true".into(), "x".repeat(command_bytes)],
                started_at: UNIX_EPOCH + Duration::from_nanos(started_ns),
                ended_at: None,
                owner: crate::auth::Identity::from_spki_der(b"alice"),
                limits: None,
                usage: None,
                output_bytes: 0,
                max_output_bytes: None,
            }
        }

        fn ids(page: &proto::ListResponse) -> Vec<&str> {
            page.jobs.iter().map(|j| j.id.as_str()).collect()
        }

        const A: &str = "00000000-0000-4000-8000-00000000000a";
        const B: &str = "00000000-0000-4000-8000-00000000000b";
        const C: &str = "00000000-0000-4000-8000-00000000000c";

        #[test]
        fn a_token_names_the_last_job_and_the_next_page_starts_after_it() {
            // Scenario: pages of two over three jobs, two of which started in
            // the same nanosecond (ordered by id); the token is the last
            // job's key, and a removed job does not shift the next page.
            let jobs = vec![
                job(5, A, 1),
                job(1_700_000_000_123_456_789, B, 1),
                job(1_700_000_000_123_456_789, C, 1),
            ];
            let first = PageRequest::parse(2, "").unwrap().of(&jobs);
            assert_eq!(ids(&first), [A, B]);
            assert_eq!(first.next_page_token, format!("1700000000123456789:{B}"));
            let second = PageRequest::parse(2, &first.next_page_token).unwrap();
            assert_eq!(ids(&second.of(&jobs)), [C]);
            assert_eq!(second.of(&jobs).next_page_token, "");
            // B removed between the pages: C still follows.
            assert_eq!(
                ids(&second.of(&[job(5, A, 1), job(1_700_000_000_123_456_789, C, 1)])),
                [C]
            );
            // Everything after the token removed: an empty last page.
            assert_eq!(second.of(&jobs[..2]), proto::ListResponse::default());
        }

        #[test]
        fn a_page_stops_at_its_byte_budget_but_holds_at_least_one_job() {
            // Scenario: three jobs of 600 KB commands: each page holds one
            // (two would pass 1 MiB); a single job larger than the budget
            // still goes out alone.
            let jobs = vec![job(1, A, 600_000), job(2, B, 600_000), job(3, C, 600_000)];
            let mut token = String::new();
            let mut seen = Vec::new();
            loop {
                let page = PageRequest::parse(0, &token).unwrap().of(&jobs);
                assert_eq!(page.jobs.len(), 1);
                assert!(
                    page.encoded_len() <= MAX_PAGE_BYTES,
                    "{}",
                    page.encoded_len()
                );
                seen.push(page.jobs[0].id.clone());
                token = page.next_page_token;
                if token.is_empty() {
                    break;
                }
            }
            assert_eq!(seen, [A, B, C]);
            let huge = [job(1, A, MAX_ARGV_BYTES - 16), job(2, B, 1)];
            let page = PageRequest::parse(0, "").unwrap().of(&huge);
            assert_eq!(ids(&page), [A]);
            assert!(page.encoded_len() > MAX_PAGE_BYTES);
            assert!(page.encoded_len() <= MAX_JOB_BYTES + 2 + MAX_TOKEN_LEN);
        }

        #[test]
        fn page_size_zero_is_the_default_and_large_ones_are_capped() {
            // Scenario: 0 asks for the default page, i32::MAX for the maximum.
            assert_eq!(PageRequest::parse(0, "").unwrap().size, DEFAULT_PAGE_JOBS);
            assert_eq!(
                PageRequest::parse(i32::MAX, "").unwrap().size,
                MAX_PAGE_JOBS
            );
            assert_eq!(PageRequest::parse(7, "").unwrap().size, 7);
            let jobs: Vec<Status> = (0..MAX_PAGE_JOBS as u64 + 1)
                .map(|n| {
                    let id = format!("00000000-0000-4000-8000-{n:012x}");
                    job(n, &id, 1)
                })
                .collect();
            let page = PageRequest::parse(i32::MAX, "").unwrap().of(&jobs);
            assert_eq!(page.jobs.len(), MAX_PAGE_JOBS);
            assert_eq!(page.next_page_token, encode(&jobs[MAX_PAGE_JOBS - 1]));
        }

        #[test]
        fn tokens_not_issued_by_the_server_are_refused() {
            // Scenario: garbage, near-misses of the format and a negative
            // size are each refused with their own error.
            for token in [
                "garbage",
                ":",
                "12",
                &format!("12:{}", A.to_uppercase()),
                &format!("+12:{A}"),
                &format!("1.5:{A}"),
                &format!("12:{A}:"),
                &format!("{}0:{A}", i128::MAX),
                &format!("{}:{A}", "9".repeat(MAX_TOKEN_LEN)),
            ] {
                assert_eq!(
                    PageRequest::parse(0, token),
                    Err(PageError::InvalidToken),
                    "{token}"
                );
            }
            assert_eq!(PageRequest::parse(-1, ""), Err(PageError::NegativeSize));
            assert_eq!(
                PageRequest::parse(i32::MIN, "garbage"),
                Err(PageError::NegativeSize)
            );
        }

        #[test]
        fn a_token_round_trips_every_start_time() {
            // Scenario: start times before the epoch, at it and far after it
            // come back exactly from their token.
            for time in [
                UNIX_EPOCH - Duration::new(3, 7),
                UNIX_EPOCH,
                UNIX_EPOCH + Duration::new(1_700_000_000, 999_999_999),
                UNIX_EPOCH + Duration::new(u64::MAX / 4, 1),
            ] {
                let mut j = job(0, A, 1);
                j.started_at = time;
                assert_eq!(decode(&encode(&j)), Some((time, j.id)));
            }
        }
    }
}

/// The names of the policy grants in `permits`, as the policy file spells
/// them, for the audit line of a start.
fn grant_names(permits: crate::job::JobPermits) -> Vec<&'static str> {
    let crate::job::JobPermits {
        listen,
        user_namespaces,
    } = permits;
    [
        (listen, "allow_listen"),
        (user_namespaces, "allow_user_namespaces"),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_job_id_is_cut_in_the_audit_log() {
        // Scenario: a caller sends a 4 MB "job id" so that every refusal line
        // is 4 MB; the audit log keeps 64 bytes of it and its length.
        let id = "\u{1}".repeat(4_000_000);
        assert_eq!(
            shown_id(&id),
            format!("{}…(4000000 bytes)", "\u{1}".repeat(MAX_SHOWN_ID))
        );
        // Multi-byte characters are cut at a character boundary.
        let id = "é".repeat(40);
        assert_eq!(shown_id(&id), format!("{}…(80 bytes)", "é".repeat(32)));
        let real = "67e55044-10b1-426f-9247-bb680e5fe0c8";
        assert_eq!(shown_id(real), real);
    }
}

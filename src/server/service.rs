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

use std::collections::HashSet;

use super::accept::ConnInfo;
use super::convert::{chunk_message, limits_from_message, status_message};
use super::limits::{StreamLimits, StreamPermit};
use super::revocation::TlsHandle;
use super::status::{
    REVOKED, STOP_OWNER_ADMIN_ONLY, code_name, denial_status, error_chain, internal, output_status,
    page_status, to_status,
};
use crate::audit::{AuditLog, Entry, Outcome};
use crate::auth::Identity;
use crate::job::{JobError, JobSpec, Jobs, OwnedJob, State};
use crate::output::{Chunk, LogReader};
use crate::policy::{Gate, Grant, Policy, Rpc};
use crate::proto;
use crate::proto::job_service_server::JobService;

pub(crate) struct Service {
    pub jobs: Arc<Jobs>,
    pub streams: Arc<StreamLimits>,
    pub gate: Arc<Gate>,
    pub audit: Option<Arc<AuditLog>>,
    /// For the identities a CRL revoked while they were connected.
    pub tls: TlsHandle,
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
    async fn record(&self, d: Decision<'_>) -> Result<(), Status> {
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
            .await
            .map_err(|e| internal("cannot write the audit log", &error_chain(&e)))
    }

    /// Step 1: the gate, after the CRL (a revoked identity's connection is
    /// about to be closed: nothing more gets through it). A refusal is
    /// audited and becomes the status.
    async fn admit(&self, conn: &ConnInfo, rpc: Rpc, job: Option<&str>) -> Result<Grant, Status> {
        if self
            .tls
            .revoked()
            .borrow()
            .contains(&conn.caller.identity())
        {
            self.record(Decision {
                conn,
                rpc,
                job: job.map(shown_id),
                owner: None,
                admin: false,
                outcome: Outcome::Denied,
                reason: Some("revoked"),
                grants: &[],
            })
            .await?;
            return Err(Status::permission_denied(REVOKED));
        }
        match self.gate.admit(&conn.caller, rpc) {
            Ok(grant) => Ok(grant),
            Err(denial) => {
                self.record(Decision {
                    conn,
                    rpc,
                    job: job.map(shown_id),
                    owner: None,
                    admin: false,
                    outcome: Outcome::Denied,
                    reason: Some(denial.reason()),
                    grants: &[],
                })
                .await?;
                Err(denial_status(denial))
            }
        }
    }

    /// Steps 1–3 for an RPC on the job `id`: admission, access, a stream
    /// slot when `stream`, and the audit line.
    async fn access<T>(&self, request: &Request<T>, rpc: Rpc, id: &str) -> Result<Access, Status> {
        let conn = conn(request)?;
        let grant = self.admit(&conn, rpc, Some(id)).await?;
        let job = match self.jobs.authorize(&grant, id).await {
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
                    // The store failing is not a decision about the caller.
                    outcome: match denied {
                        crate::job::AccessDenied::Store(_) => Outcome::Failed,
                        _ => Outcome::Denied,
                    },
                    reason: Some(denied.reason()),
                    grants: &[],
                })
                .await?;
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
                    self.record(decision(Outcome::Denied, Some("too_many_streams")))
                        .await?;
                    return Err(Status::resource_exhausted(
                        "too many open output streams for this identity; close some and retry",
                    ));
                }
            }
        } else {
            None
        };
        self.record(decision(Outcome::Allowed, None)).await?;
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
        let mut revoked = self.tls.revoked();
        revoked.mark_changed();
        let watch = Watch {
            shutdown: Box::pin(self.jobs.shutting_down()),
            policy,
            revoked,
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
                    changed = watch.revoked.changed(), if !watch.revoked_closed() => {
                        if changed.is_err() {
                            continue;
                        }
                        let revoked = watch.revoked.borrow_and_update().clone();
                        if let Some(status) = watch.ended_by_crl(&revoked) {
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
    revoked: watch::Receiver<Arc<HashSet<Identity>>>,
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

    /// True once the CRL's sender is gone (the server is ending).
    fn revoked_closed(&self) -> bool {
        self.revoked.has_changed().is_err()
    }

    /// The status to end the stream with when a CRL revoked its caller.
    fn ended_by_crl(&self, revoked: &HashSet<Identity>) -> Option<Status> {
        let identity = self.conn.caller.identity();
        if !revoked.contains(&identity) {
            return None;
        }
        self.ended("stream_ended_revoked");
        Some(Status::permission_denied(REVOKED))
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
        self.ended(reason);
        Some(status)
    }

    /// Logs and audits the end of the stream for `reason`.
    fn ended(&self, reason: &str) {
        let identity = self.conn.caller.identity();
        tracing::info!(caller = %identity, job = %self.job, rpc = self.rpc.name(), reason, "open stream ended by a new policy or CRL");
        if let Some(audit) = &self.audit {
            // The stream ends whether or not the line can be written:
            // refusing is the safe side.
            audit.record_in_background(&Entry {
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
            });
        }
    }
}

#[tonic::async_trait]
impl JobService for Service {
    async fn start(
        &self,
        request: Request<proto::StartRequest>,
    ) -> Result<Response<proto::StartResponse>, Status> {
        let conn = conn(&request)?;
        let grant = self.admit(&conn, Rpc::Start, None).await?;
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
        let reserved = match JobSpec::new(program, args) {
            Ok(spec) => self
                .jobs
                .reserve(&grant, limits)
                .await
                .map(|ticket| (ticket, spec)),
            Err(e) => Err(e),
        };
        let ticket = match reserved {
            Ok(ticket) => ticket,
            Err(e @ JobError::TooManyRunningJobs { .. }) => {
                self.record(decision(None, Outcome::Denied, Some("running_jobs_quota")))
                    .await?;
                return Err(to_status(e));
            }
            Err(e) => {
                let status = to_status(e);
                self.record(decision(
                    None,
                    Outcome::Failed,
                    Some(code_name(status.code())),
                ))
                .await?;
                return Err(status);
            }
        };
        let (ticket, spec) = ticket;
        let id = ticket.id().to_string();
        self.record(decision(Some(id.clone()), Outcome::Allowed, None))
            .await?;
        let job = match self.jobs.launch(ticket, spec).await {
            Ok(job) => job,
            Err(e) => {
                // A second line for this id: it was allowed but never ran.
                let status = to_status(e);
                self.record(decision(
                    Some(id),
                    Outcome::Failed,
                    Some(code_name(status.code())),
                ))
                .await?;
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
        let access = self
            .access(&request, Rpc::Stop, &request.get_ref().id)
            .await?;
        let status = access.job.stop().await;
        Ok(Response::new(proto::StopResponse {
            status: Some(status_message(&status)),
        }))
    }

    async fn stop_owner(
        &self,
        request: Request<proto::StopOwnerRequest>,
    ) -> Result<Response<proto::StopOwnerResponse>, Status> {
        let conn = conn(&request)?;
        let grant = self.admit(&conn, Rpc::StopOwner, None).await?;
        let decision = |job: Option<String>, owner, outcome, reason| Decision {
            conn: &conn,
            rpc: Rpc::StopOwner,
            job,
            owner,
            admin: grant.is_admin(),
            outcome,
            reason,
            grants: &[],
        };
        // The admin check first, so that a non-admin learns nothing, not
        // even whether the fingerprint is well formed.
        if !grant.is_admin() {
            self.record(decision(None, None, Outcome::Denied, Some("admin_only")))
                .await?;
            return Err(Status::permission_denied(STOP_OWNER_ADMIN_ONLY));
        }
        let Ok(owner) = request.get_ref().owner.parse::<Identity>() else {
            self.record(decision(
                None,
                None,
                Outcome::Failed,
                Some("invalid_argument"),
            ))
            .await?;
            return Err(Status::invalid_argument(
                "owner must be 'sha256:' and 64 lower-case hex digits",
            ));
        };
        let jobs = self
            .jobs
            .running_owned_by(&grant, owner)
            .map_err(to_status)?;
        // One line per job, all written before any is stopped.
        for job in &jobs {
            self.record(decision(
                Some(job.id().to_string()),
                Some(owner),
                Outcome::Allowed,
                None,
            ))
            .await?;
        }
        tracing::info!(caller = %grant.identity(), %owner, jobs = jobs.len(), "admin stops every running job of an identity");
        for job in &jobs {
            job.request_stop();
        }
        let mut stopped = Vec::with_capacity(jobs.len());
        for job in &jobs {
            stopped.push(status_message(&job.wait_final().await));
        }
        Ok(Response::new(proto::StopOwnerResponse { stopped }))
    }

    async fn status(
        &self,
        request: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::StatusResponse>, Status> {
        let access = self
            .access(&request, Rpc::Status, &request.get_ref().id)
            .await?;
        Ok(Response::new(proto::StatusResponse {
            status: Some(status_message(&access.job.status())),
        }))
    }

    async fn list(
        &self,
        request: Request<proto::ListRequest>,
    ) -> Result<Response<proto::ListResponse>, Status> {
        let conn = conn(&request)?;
        let grant = self.admit(&conn, Rpc::List, None).await?;
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
        let page = match super::paging::PageRequest::parse(page_size, &page_token) {
            Ok(page) => page,
            Err(e) => {
                let status = page_status(e);
                self.record(decision(Outcome::Failed, Some(code_name(status.code()))))
                    .await?;
                return Err(status);
            }
        };
        let jobs = match self
            .jobs
            .list(&grant, all_users, page.after(), page.fetch())
            .await
        {
            Ok(jobs) => jobs,
            Err(e @ JobError::AdminOnly) => {
                self.record(decision(Outcome::Denied, Some("admin_only")))
                    .await?;
                return Err(to_status(e));
            }
            Err(e) => {
                let status = to_status(e);
                self.record(decision(Outcome::Failed, Some(code_name(status.code()))))
                    .await?;
                return Err(status);
            }
        };
        self.record(decision(Outcome::Allowed, None)).await?;
        Ok(Response::new(page.of(&jobs)))
    }

    type OutputStream = BoxStream<proto::OutputChunk>;

    async fn output(
        &self,
        request: Request<proto::OutputRequest>,
    ) -> Result<Response<Self::OutputStream>, Status> {
        let mut access = self
            .access(&request, Rpc::Output, &request.get_ref().id)
            .await?;
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
        let mut access = self
            .access(&request, Rpc::Stream, &request.get_ref().id)
            .await?;
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
        let access = self
            .access(&request, Rpc::Remove, &request.get_ref().id)
            .await?;
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

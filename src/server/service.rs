//! The gRPC service: translates requests into library calls and results into
//! messages. It holds no logic of its own: authorisation is
//! [`Jobs::authorize`], errors go through [`super::status::to_status`].

use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use tonic::{Request, Response, Status};

use super::accept::ConnInfo;
use super::limits::{StreamLimits, StreamPermit};
use super::status::{output_status, to_status};
use crate::auth::Caller;
use crate::job::{ExitInfo, JobSpec, Jobs, OwnedJob, ResourceLimits, ResourceUsage, State};
use crate::output::{Chunk, Fd, LogReader};
use crate::proto;
use crate::proto::job_service_server::JobService;

pub(crate) struct Service {
    pub jobs: Arc<Jobs>,
    pub streams: Arc<StreamLimits>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The verified caller of a request, from its connection.
fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<ConnInfo>()
        .map(|c| {
            tracing::debug!(remote = %c.remote, caller = %c.caller.identity(), path = ?std::any::type_name::<T>(), "request");
            c.caller
        })
        // Only reachable if the service were mounted without the TLS acceptor.
        .ok_or_else(|| Status::unauthenticated("no verified client certificate"))
}

impl Service {
    fn owned<T>(&self, request: &Request<T>, id: &str) -> Result<OwnedJob, Status> {
        let caller = caller(request)?;
        self.jobs.authorize(&caller, id).map_err(to_status)
    }

    fn permit<T>(&self, request: &Request<T>) -> Result<StreamPermit, Status> {
        let caller = caller(request)?;
        self.streams.acquire(caller.identity()).ok_or_else(|| {
            Status::resource_exhausted(
                "too many open output streams for this identity; close some and retry",
            )
        })
    }
}

#[tonic::async_trait]
impl JobService for Service {
    async fn start(
        &self,
        request: Request<proto::StartRequest>,
    ) -> Result<Response<proto::StartResponse>, Status> {
        let caller = caller(&request)?;
        let proto::StartRequest {
            program,
            args,
            limits,
        } = request.into_inner();
        let spec = JobSpec::new(program, args).map_err(to_status)?;
        let limits = limits.map(limits_from_message).unwrap_or_default();
        let job = self
            .jobs
            .start(&caller, spec, limits)
            .await
            .map_err(to_status)?;
        Ok(Response::new(proto::StartResponse {
            id: job.id().to_string(),
            status: Some(status_message(&job.status())),
        }))
    }

    async fn stop(
        &self,
        request: Request<proto::StopRequest>,
    ) -> Result<Response<proto::StopResponse>, Status> {
        let job = self.owned(&request, &request.get_ref().id)?;
        let status = job.stop().await;
        Ok(Response::new(proto::StopResponse {
            status: Some(status_message(&status)),
        }))
    }

    async fn status(
        &self,
        request: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::StatusResponse>, Status> {
        let job = self.owned(&request, &request.get_ref().id)?;
        Ok(Response::new(proto::StatusResponse {
            status: Some(status_message(&job.status())),
        }))
    }

    async fn list(
        &self,
        request: Request<proto::ListRequest>,
    ) -> Result<Response<proto::ListResponse>, Status> {
        let caller = caller(&request)?;
        let jobs = self.jobs.list(&caller).iter().map(status_message).collect();
        Ok(Response::new(proto::ListResponse { jobs }))
    }

    type OutputStream = BoxStream<proto::OutputChunk>;

    async fn output(
        &self,
        request: Request<proto::OutputRequest>,
    ) -> Result<Response<Self::OutputStream>, Status> {
        let job = self.owned(&request, &request.get_ref().id)?;
        let permit = self.permit(&request)?;
        let reader = job.output().map_err(output_status)?;
        let stream = chunks(reader, permit, chunk_message);
        Ok(Response::new(Box::pin(stream)))
    }

    type StreamStream = BoxStream<proto::StreamEvent>;

    async fn stream(
        &self,
        request: Request<proto::StreamRequest>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let job = self.owned(&request, &request.get_ref().id)?;
        let permit = self.permit(&request)?;
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
        Ok(Response::new(Box::pin(futures_util::StreamExt::chain(
            output, last,
        ))))
    }
}

/// The log's chunks as messages; ends after the last chunk or the first error.
/// Holds `permit` until dropped (when the stream ends or the client leaves).
fn chunks<T: Send + 'static>(
    reader: LogReader,
    permit: StreamPermit,
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

//! The wire forms of the engine's values: job statuses, limits, usage and
//! output chunks as proto messages, and limits back from them. Pure
//! conversions, used by the service and by List paging.

use crate::job::{ExitInfo, ResourceLimits, ResourceUsage, State};
use crate::output::{Chunk, Fd};
use crate::proto;

pub(crate) fn chunk_message(chunk: Chunk) -> proto::OutputChunk {
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
            State::Running if s.pending.is_some() => proto::State::Pending,
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
        pending_reason: s.pending.clone().filter(|_| s.state == State::Running),
        cluster_job_id: s.cluster_job_id.clone(),
    }
}

pub(crate) fn limits_from_message(m: proto::Limits) -> ResourceLimits {
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

//! How a job's status reads for people, for scripts, and as an exit code.
//!
//! This module owns the three views the `jobs` CLI gives of a
//! [`proto::JobStatus`]: one human line (`ID  exited with code 3  sh -c …`),
//! a JSON object with fixed field names ([`StatusJson`]), and the exit code
//! `jobs stream` / `jobs run` end with ([`exit_code`]). It must not print or
//! talk to the server.
//!
//! Signal names come from [`nix::sys::signal::Signal`], so the numbers are the
//! ones of the platform the CLI runs on; the daemon reports Linux numbers.

use std::borrow::Cow;

use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::proto::{self, State};

/// The CLI's exit code when it could not follow a job to its end (the stream
/// was cut, or its output could not be written). Also what a job that itself
/// exits with 255 yields; the two cannot be told apart by the code alone.
pub const EXIT_INCOMPLETE: u8 = 255;

/// Added to a signal number to form the exit code of a job killed by that
/// signal, as POSIX shells do (SIGKILL, 9, gives 137).
pub const SIGNAL_EXIT_BASE: u8 = 128;

/// The name of signal `signal` on this platform, e.g. `SIGKILL` for 9;
/// `SIGRTMIN+n` for real-time signals; `None` for a number that is no signal.
pub fn signal_name(signal: i32) -> Option<Cow<'static, str>> {
    if let Ok(known) = nix::sys::signal::Signal::try_from(signal) {
        return Some(Cow::Borrowed(known.as_str()));
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if (libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&signal) {
        return Some(Cow::Owned(format!(
            "SIGRTMIN+{}",
            signal - libc::SIGRTMIN()
        )));
    }
    None
}

/// The `state` field of the JSON view: `pending`, `running`, `exited`, `killed`,
/// `stopped`, `oom`, `output_limit`, `lost`, `output_failed`, or `unknown` for a value this client
/// does not know.
pub fn state_name(status: &proto::JobStatus) -> &'static str {
    match State::try_from(status.state) {
        Ok(State::Pending) => "pending",
        Ok(State::Running) => "running",
        Ok(State::Exited) => "exited",
        Ok(State::Killed) => "killed",
        Ok(State::Stopped) => "stopped",
        Ok(State::Oom) => "oom",
        Ok(State::OutputLimit) => "output_limit",
        Ok(State::Lost) => "lost",
        Ok(State::OutputFailed) => "output_failed",
        Ok(State::Unspecified) | Err(_) => "unknown",
    }
}

/// How the job stands, in words: `pending: Resources` (queued by a
/// cluster, with its reason), `running`, `exited with code 3`,
/// `killed by signal 11 (SIGSEGV), core dumped`,
/// `stopped: killed by signal 15 (SIGTERM)`,
/// `out of memory (limit 64.0 MiB, peak 64.0 MiB): killed by signal 9
/// (SIGKILL)`.
pub fn describe(status: &proto::JobStatus) -> String {
    match State::try_from(status.state) {
        Ok(State::Pending) => match &status.pending_reason {
            Some(reason) => format!("pending: {reason}"),
            None => "pending".to_owned(),
        },
        Ok(State::Running) => "running".to_owned(),
        Ok(State::Exited | State::Killed) => describe_end(status),
        // By its owner, an admin, or the daemon's shutdown.
        Ok(State::Stopped) => format!("stopped: {}", describe_end(status)),
        Ok(State::OutputLimit) => match status.max_output_bytes {
            Some(max) => format!(
                "stopped at its output limit of {}: {}",
                super::units::human_bytes(max),
                describe_end(status)
            ),
            None => format!("stopped at its output limit: {}", describe_end(status)),
        },
        Ok(State::Lost) => "lost: the server stopped while it ran".to_owned(),
        Ok(State::OutputFailed) => format!(
            "stopped: the server could not store its output (disk full or write error): {}",
            describe_end(status)
        ),
        Ok(State::Oom) => {
            // Both numbers, not a verdict: the OOM killer may also act because
            // the machine, not the job, ran out of memory.
            let limit = status.limits.as_ref().and_then(|l| l.memory_bytes);
            let peak = status.usage.as_ref().and_then(|u| u.peak_memory_bytes);
            let facts: Vec<String> = [("limit", limit), ("peak", peak)]
                .into_iter()
                .filter_map(|(what, v)| Some(format!("{what} {}", super::units::human_bytes(v?))))
                .collect();
            if facts.is_empty() {
                format!("out of memory: {}", describe_end(status))
            } else {
                format!(
                    "out of memory ({}): {}",
                    facts.join(", "),
                    describe_end(status)
                )
            }
        }
        Ok(State::Unspecified) | Err(_) => format!("in unknown state {}", status.state),
    }
}

/// `exited with code N` or `killed by signal N (NAME)[, core dumped]`.
fn describe_end(status: &proto::JobStatus) -> String {
    match (status.exit_code, status.signal) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => {
            let mut s = format!("killed by signal {signal}");
            if let Some(name) = signal_name(signal) {
                s.push_str(&format!(" ({name})"));
            }
            if status.core_dumped {
                s.push_str(", core dumped");
            }
            s
        }
        (None, None) => "ended".to_owned(),
    }
}

/// One line for a job: id, [`describe`], and the command as a shell would
/// need it quoted. `state_width` pads the middle column (for tables).
pub fn status_line(status: &proto::JobStatus, state_width: usize) -> String {
    format!(
        "{}  {:<state_width$}  {}",
        status.id,
        describe(status),
        command_line(&status.command)
    )
}

/// Lines for a list of jobs, one per job, with the state column aligned; each
/// line ends in `\n`. With `owners`, each line starts with the job's owner
/// (`sha256:…`) and two spaces. Empty for no jobs.
pub fn status_table(jobs: &[proto::JobStatus], owners: bool) -> String {
    let width = jobs.iter().map(|j| describe(j).len()).max().unwrap_or(0);
    jobs.iter()
        .map(|j| {
            let mut line = if owners {
                format!("{}  ", j.owner)
            } else {
                String::new()
            };
            line.push_str(&status_line(j, width));
            line.push('\n');
            line
        })
        .collect()
}

/// argv joined by spaces, each word single-quoted when a POSIX shell would
/// otherwise split or expand it, so the line can be pasted back.
pub fn command_line(command: &[String]) -> String {
    command
        .iter()
        .map(|word| shell_quote(word))
        .collect::<Vec<_>>()
        .join(" ")
}

fn shell_quote(word: &str) -> Cow<'_, str> {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@%+,".contains(&b));
    if plain {
        Cow::Borrowed(word)
    } else {
        Cow::Owned(format!("'{}'", word.replace('\'', r"'\''")))
    }
}

/// The exit code `jobs stream` and `jobs run` end with for a final status:
/// the job's own exit code, or [`SIGNAL_EXIT_BASE`] + N for a death by
/// signal N (never 0), or [`EXIT_INCOMPLETE`] when nobody saw how it ended
/// (a lost job). `None` while the job is running.
pub fn exit_code(status: &proto::JobStatus) -> Option<u8> {
    if matches!(
        State::try_from(status.state),
        Ok(State::Running | State::Pending)
    ) {
        return None;
    }
    match (status.exit_code, status.signal) {
        (Some(code), _) => Some(u8::try_from(code).unwrap_or(EXIT_INCOMPLETE)),
        (None, Some(signal)) => Some(
            u8::try_from(signal)
                .ok()
                .and_then(|s| SIGNAL_EXIT_BASE.checked_add(s))
                .filter(|&c| c != SIGNAL_EXIT_BASE)
                .unwrap_or(EXIT_INCOMPLETE),
        ),
        (None, None) => Some(EXIT_INCOMPLETE),
    }
}

/// The JSON view of a job's status; these field names are a stable interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StatusJson {
    /// The job id.
    pub id: String,
    /// See [`state_name`].
    pub state: &'static str,
    /// Exit code when the process exited; `null` otherwise.
    pub exit_code: Option<i32>,
    /// Signal name (`SIGKILL`) when a signal killed the process; `null`
    /// otherwise. A number this platform has no name for is given as `SIG<N>`.
    pub signal: Option<String>,
    /// argv as started.
    pub command: Vec<String>,
    /// RFC 3339, UTC.
    pub started_at: Option<String>,
    /// RFC 3339, UTC; `null` while running.
    pub ended_at: Option<String>,
    /// The owner's identity, `sha256:…`.
    pub owner: String,
    /// The limits the job runs under; `null` when the server does not
    /// contain jobs. Unlimited fields are `null`.
    pub limits: Option<LimitsJson>,
    /// What the job used; `null` when not counted.
    pub usage: Option<UsageJson>,
    /// Output bytes recorded so far.
    pub output_bytes: u64,
    /// The job's output quota in bytes; `null` when unlimited.
    pub max_output_bytes: Option<u64>,
    /// Why a cluster keeps the job queued (state `pending`); `null`
    /// otherwise.
    pub pending_reason: Option<String>,
    /// The cluster's own id for the job (Slurm's job id); `null` for jobs
    /// run on the server's machine.
    pub cluster_job_id: Option<String>,
}

/// The JSON view of a job's limits (units in the field names).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LimitsJson {
    /// Bytes.
    pub memory_bytes: Option<u64>,
    /// Thousandths of a core.
    pub cpu_millis: Option<u32>,
    /// Processes and threads.
    pub pids: Option<u32>,
    /// Bytes per second per configured device.
    pub io_read_bps: Option<u64>,
    /// Bytes per second per configured device.
    pub io_write_bps: Option<u64>,
}

/// The JSON view of a job's resource use (units in the field names).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UsageJson {
    /// Bytes.
    pub peak_memory_bytes: Option<u64>,
    /// Microseconds of CPU time.
    pub cpu_usec: Option<u64>,
    /// Processes killed for exceeding the memory limit.
    pub oom_kills: u64,
}

impl From<&proto::JobStatus> for StatusJson {
    fn from(s: &proto::JobStatus) -> Self {
        Self {
            id: s.id.clone(),
            state: state_name(s),
            exit_code: s.exit_code,
            signal: s.signal.map(|n| match signal_name(n) {
                Some(name) => name.into_owned(),
                None => format!("SIG{n}"),
            }),
            command: s.command.clone(),
            started_at: s.started_at.as_ref().and_then(rfc3339),
            ended_at: s.ended_at.as_ref().and_then(rfc3339),
            owner: s.owner.clone(),
            limits: s.limits.as_ref().map(|l| LimitsJson {
                memory_bytes: l.memory_bytes,
                cpu_millis: l.cpu_millis,
                pids: l.pids,
                io_read_bps: l.io_read_bps,
                io_write_bps: l.io_write_bps,
            }),
            usage: s.usage.as_ref().map(|u| UsageJson {
                peak_memory_bytes: u.peak_memory_bytes,
                cpu_usec: u.cpu_usec,
                oom_kills: u.oom_kills,
            }),
            output_bytes: s.output_bytes,
            max_output_bytes: s.max_output_bytes,
            pending_reason: s.pending_reason.clone(),
            cluster_job_id: s.cluster_job_id.clone(),
        }
    }
}

/// A protobuf timestamp as RFC 3339 in UTC; `None` if it is out of range.
pub fn rfc3339(t: &prost_types::Timestamp) -> Option<String> {
    let nanos = i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos);
    OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()?
        .format(&Rfc3339)
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: State, exit_code: Option<i32>, signal: Option<i32>) -> proto::JobStatus {
        proto::JobStatus {
            id: "67e55044-10b1-426f-9247-bb680e5fe0c8".to_owned(),
            state: state as i32,
            exit_code,
            signal,
            core_dumped: false,
            command: vec!["sleep".to_owned(), "600".to_owned()],
            started_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 5_000_000,
            }),
            ended_at: None,
            owner: "sha256:ab".to_owned(),
            limits: None,
            usage: None,
            output_bytes: 0,
            max_output_bytes: None,
            pending_reason: None,
            cluster_job_id: None,
        }
    }

    #[test]
    fn a_pending_job_says_why_and_has_no_exit_code_yet() {
        let mut s = status(State::Pending, None, None);
        s.pending_reason = Some("PartitionDown".to_owned());
        assert_eq!(describe(&s), "pending: PartitionDown");
        assert_eq!(state_name(&s), "pending");
        assert_eq!(exit_code(&s), None);
        s.pending_reason = None;
        assert_eq!(describe(&s), "pending");
    }

    #[test]
    fn an_oom_job_names_its_memory_limit() {
        let mut s = status(State::Oom, None, Some(9));
        s.limits = Some(proto::Limits {
            memory_bytes: Some(64 << 20),
            ..Default::default()
        });
        assert_eq!(
            describe(&s),
            "out of memory (limit 64.0 MiB): killed by signal 9 (SIGKILL)"
        );
        s.usage = Some(proto::ResourceUsage {
            peak_memory_bytes: Some(40 << 20),
            cpu_usec: None,
            oom_kills: 1,
        });
        assert_eq!(
            describe(&s),
            "out of memory (limit 64.0 MiB, peak 40.0 MiB): killed by signal 9 (SIGKILL)"
        );
        s.limits = None;
        s.usage = None;
        assert_eq!(describe(&s), "out of memory: killed by signal 9 (SIGKILL)");
        assert_eq!(state_name(&s), "oom");
    }

    #[test]
    fn each_state_reads_as_one_phrase() {
        assert_eq!(describe(&status(State::Running, None, None)), "running");
        assert_eq!(
            describe(&status(State::Exited, Some(3), None)),
            "exited with code 3"
        );
        assert_eq!(
            describe(&status(State::Killed, None, Some(9))),
            "killed by signal 9 (SIGKILL)"
        );
        let mut segv = status(State::Killed, None, Some(11));
        segv.core_dumped = true;
        assert_eq!(
            describe(&segv),
            "killed by signal 11 (SIGSEGV), core dumped"
        );
        assert_eq!(
            describe(&status(State::Stopped, None, Some(15))),
            "stopped: killed by signal 15 (SIGTERM)"
        );
        assert_eq!(
            describe(&status(State::Stopped, Some(0), None)),
            "stopped: exited with code 0"
        );
        let mut over = status(State::OutputLimit, None, Some(15));
        over.max_output_bytes = Some(1 << 20);
        assert_eq!(
            describe(&over),
            "stopped at its output limit of 1.0 MiB: killed by signal 15 (SIGTERM)"
        );
        assert_eq!(state_name(&over), "output_limit");
    }

    #[test]
    fn status_line_is_id_state_command() {
        assert_eq!(
            status_line(&status(State::Running, None, None), 0),
            "67e55044-10b1-426f-9247-bb680e5fe0c8  running  sleep 600"
        );
    }

    #[test]
    fn table_aligns_the_state_column() {
        let jobs = [
            status(State::Running, None, None),
            status(State::Exited, Some(1), None),
        ];
        assert_eq!(
            status_table(&jobs, false),
            "67e55044-10b1-426f-9247-bb680e5fe0c8  running             sleep 600\n\
             67e55044-10b1-426f-9247-bb680e5fe0c8  exited with code 1  sleep 600\n"
        );
        assert_eq!(status_table(&[], false), "");
    }

    #[test]
    fn command_words_are_quoted_only_when_a_shell_would_misread_them() {
        let argv = [
            "echo",
            "a b",
            "c;d",
            "$HOME",
            "*",
            "",
            "it's",
            "/usr/bin/x=1",
        ];
        let argv: Vec<String> = argv.iter().map(|s| (*s).to_owned()).collect();
        assert_eq!(
            command_line(&argv),
            r#"echo 'a b' 'c;d' '$HOME' '*' '' 'it'\''s' /usr/bin/x=1"#
        );
    }

    #[test]
    fn exit_code_keeps_signal_deaths_apart_from_success() {
        // Scenario (C09): a signal death must never map to 0, and exit 137 is a code.
        assert_eq!(exit_code(&status(State::Running, None, None)), None);
        assert_eq!(exit_code(&status(State::Exited, Some(0), None)), Some(0));
        assert_eq!(
            exit_code(&status(State::Exited, Some(137), None)),
            Some(137)
        );
        assert_eq!(exit_code(&status(State::Killed, None, Some(9))), Some(137));
        assert_eq!(
            exit_code(&status(State::Stopped, None, Some(15))),
            Some(143)
        );
        assert_eq!(exit_code(&status(State::Stopped, Some(0), None)), Some(0));
        // Nonsense from the wire is "could not tell", not success.
        assert_eq!(exit_code(&status(State::Killed, None, Some(0))), Some(255));
        assert_eq!(exit_code(&status(State::Killed, None, Some(-1))), Some(255));
        assert_eq!(exit_code(&status(State::Exited, Some(-1), None)), Some(255));
    }

    #[test]
    fn signal_names_come_from_the_platform() {
        assert_eq!(signal_name(9).as_deref(), Some("SIGKILL"));
        assert_eq!(signal_name(15).as_deref(), Some("SIGTERM"));
        assert_eq!(signal_name(0), None);
        assert_eq!(signal_name(1000), None);
        #[cfg(target_os = "linux")]
        assert_eq!(
            signal_name(libc::SIGRTMIN() + 2).as_deref(),
            Some("SIGRTMIN+2")
        );
    }

    #[test]
    fn json_has_the_documented_fields() {
        let mut s = status(State::Killed, None, Some(9));
        s.ended_at = Some(prost_types::Timestamp {
            seconds: 1_700_000_060,
            nanos: 0,
        });
        let json = serde_json::to_value(StatusJson::from(&s)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "id": "67e55044-10b1-426f-9247-bb680e5fe0c8",
                "state": "killed",
                "exit_code": null,
                "signal": "SIGKILL",
                "command": ["sleep", "600"],
                "started_at": "2023-11-14T22:13:20.005Z",
                "ended_at": "2023-11-14T22:14:20Z",
                "owner": "sha256:ab",
                "limits": null,
                "usage": null,
                "output_bytes": 0,
                "max_output_bytes": null,
                "pending_reason": null,
                "cluster_job_id": null,
            })
        );
        let running =
            serde_json::to_value(StatusJson::from(&status(State::Running, None, None))).unwrap();
        assert_eq!(running["ended_at"], serde_json::Value::Null);
        assert_eq!(running["state"], "running");
    }
}

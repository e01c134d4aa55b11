//! Slurm's client commands, run as child processes, and what they print.
//!
//! Every call runs one of `sbatch`, `scancel` or `scontrol` from the
//! configured directory (or PATH) with a timeout, never through a shell:
//! arguments go to the command as they are. What they print is parsed here
//! and nowhere else.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// How long one Slurm command may take before it counts as not answering.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Why a Slurm command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CtlError {
    /// The command could not be run at all (not installed there).
    #[error("cannot run {command}")]
    Spawn {
        /// The command's path.
        command: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// It ran longer than its timeout and was killed.
    #[error("{command} did not answer within {} s", TIMEOUT.as_secs())]
    Timeout {
        /// The command's path.
        command: PathBuf,
    },
    /// It failed; `reason` is the last line it printed on stderr.
    #[error("{reason}")]
    Failed {
        /// The command's name.
        command: &'static str,
        /// What it said (one line).
        reason: String,
    },
    /// It succeeded but printed something this module does not understand.
    #[error("{command} printed {output:?}, which is not understood")]
    Unexpected {
        /// The command's name.
        command: &'static str,
        /// Its first line.
        output: String,
    },
}

impl CtlError {
    /// True when the controller did not answer (as opposed to refusing).
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Timeout { .. } => true,
            Self::Failed { reason, .. } => {
                let r = reason.to_ascii_lowercase();
                r.contains("unable to contact slurm controller")
                    || r.contains("socket timed out")
                    || r.contains("connection refused")
                    || r.contains("zero bytes were transmitted")
            }
            Self::Spawn { .. } | Self::Unexpected { .. } => false,
        }
    }
}

/// Where the Slurm client commands are.
#[derive(Clone, Debug)]
pub struct Ctl {
    /// The directory of `sbatch`, `scancel` and `scontrol`; `None`: PATH.
    bin: Option<PathBuf>,
    /// The cluster's `slurm.conf`; `None`: Slurm's own lookup.
    conf: Option<PathBuf>,
}

/// One job as `scontrol show job` describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct JobInfo {
    pub(super) id: u64,
    /// The base state (`PENDING`, `RUNNING`, `COMPLETED`…), without flags.
    pub(super) state: String,
    /// Why it is in that state (`None` when Slurm gives no reason).
    pub(super) reason: String,
    /// The exit code and the signal that ended it (`ExitCode=N:S`).
    pub(super) exit: (i32, i32),
    /// The uid it runs as.
    pub(super) uid: Option<u32>,
}

impl JobInfo {
    /// True once nothing of the job runs any more.
    pub(super) fn is_final(&self) -> bool {
        matches!(
            self.state.as_str(),
            "COMPLETED"
                | VANISHED
                | "CANCELLED"
                | "FAILED"
                | "TIMEOUT"
                | "NODE_FAIL"
                | "PREEMPTED"
                | "BOOT_FAIL"
                | "DEADLINE"
                | "OUT_OF_MEMORY"
        )
    }
}

/// The state of a job the controller no longer lists although it was not
/// seen to end (purged, or the controller lost its state).
pub(super) const VANISHED: &str = "VANISHED";

/// What to submit.
#[derive(Debug)]
pub(super) struct Submission<'a> {
    pub(super) name: &'a str,
    pub(super) partition: Option<&'a str>,
    pub(super) uid: Option<u32>,
    pub(super) gid: Option<u32>,
    /// `--mem`, in MiB.
    pub(super) mem_mib: Option<u64>,
    /// `--cpus-per-task`.
    pub(super) cpus: Option<u32>,
    pub(super) workdir: &'a Path,
    pub(super) stdout: &'a Path,
    pub(super) stderr: &'a Path,
    /// The batch script: its first argument is the job's home, the rest
    /// the job's argv, run as they are.
    pub(super) script: &'a Path,
    pub(super) home: &'a Path,
    pub(super) argv: &'a [String],
}

impl Ctl {
    /// The commands in `bin` (or on PATH), for the cluster of `conf` (or
    /// the one Slurm finds itself: `SLURM_CONF`, then its default path).
    pub fn new(bin: Option<PathBuf>, conf: Option<PathBuf>) -> Self {
        Self { bin, conf }
    }

    fn command(&self, name: &str) -> PathBuf {
        match &self.bin {
            Some(dir) => dir.join(name),
            None => PathBuf::from(name),
        }
    }

    /// Runs `name args` and returns its stdout.
    async fn run(&self, name: &'static str, args: Vec<OsString>) -> Result<String, CtlError> {
        let command = self.command(name);
        let mut cmd = tokio::process::Command::new(&command);
        // Nothing of jobsd's environment reaches the commands (nor, through
        // sbatch, the jobs) but where to find them and the cluster.
        // Nor where jobsd runs (sbatch records its directory for the job).
        cmd.env_clear().env("LANG", "C.UTF-8").current_dir("/");
        for var in ["PATH", "SLURM_CONF"] {
            if let Some(value) = std::env::var_os(var) {
                cmd.env(var, value);
            }
        }
        if let Some(conf) = &self.conf {
            cmd.env("SLURM_CONF", conf);
        }
        let child = cmd
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| CtlError::Spawn {
                command: command.clone(),
                source,
            })?;
        let output = match tokio::time::timeout(TIMEOUT, child.wait_with_output()).await {
            Ok(Ok(output)) => output,
            Ok(Err(source)) => return Err(CtlError::Spawn { command, source }),
            Err(_) => return Err(CtlError::Timeout { command }),
        };
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let reason = stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map_or_else(
                    || format!("{name} failed ({})", output.status),
                    |l| {
                        let l = l.trim();
                        l.strip_prefix(name)
                            .and_then(|l| l.strip_prefix(": error: "))
                            .unwrap_or(l)
                            .to_owned()
                    },
                );
            return Err(CtlError::Failed {
                command: name,
                reason,
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Succeeds when the controller answers.
    ///
    /// # Errors
    /// [`CtlError`]: the command is missing, or the controller is down.
    pub async fn ping(&self) -> Result<(), CtlError> {
        let out = self.run("scontrol", vec!["ping".into()]).await?;
        if out.contains("is UP") {
            Ok(())
        } else {
            Err(CtlError::Failed {
                command: "scontrol",
                reason: out.trim().lines().next().unwrap_or("no answer").to_owned(),
            })
        }
    }

    /// Submits a batch job and returns its Slurm id.
    pub(super) async fn submit(&self, s: &Submission<'_>) -> Result<u64, CtlError> {
        let mut args: Vec<OsString> = vec![
            "--parsable".into(),
            format!("--job-name=jobs-{}", s.name).into(),
            "--no-requeue".into(),
            "--open-mode=append".into(),
            // The job gets sbatch's environment, which is cleared (`run`):
            // NONE would load the account's login environment on the node
            // (0.15-1.2 s a start, and nothing for a nologin account).
            "--export=ALL".into(),
            "--nodes=1".into(),
            "--ntasks=1".into(),
        ];
        let path = |flag: &str, p: &Path| {
            let mut a = OsString::from(flag);
            a.push(p.as_os_str());
            a
        };
        args.push(path("--chdir=", s.workdir));
        args.push(path("--output=", s.stdout));
        args.push(path("--error=", s.stderr));
        if let Some(p) = s.partition {
            args.push(format!("--partition={p}").into());
        }
        if let Some(uid) = s.uid {
            args.push(format!("--uid={uid}").into());
        }
        if let Some(gid) = s.gid {
            args.push(format!("--gid={gid}").into());
        }
        if let Some(mib) = s.mem_mib {
            args.push(format!("--mem={mib}M").into());
        }
        if let Some(cpus) = s.cpus {
            args.push(format!("--cpus-per-task={cpus}").into());
        }
        args.push(s.script.as_os_str().to_owned());
        args.push(s.home.as_os_str().to_owned());
        args.extend(s.argv.iter().map(OsString::from));
        let out = self.run("sbatch", args).await?;
        parse_submitted(&out)
    }

    /// Sends `signal` to every process of job `id` (`scancel --signal
    /// --full`), or, for `None`, cancels it (Slurm's own end: SIGCONT,
    /// SIGTERM, SIGKILL after its KillWait).
    pub(super) async fn cancel(&self, id: u64, signal: Option<&str>) -> Result<(), CtlError> {
        let mut args: Vec<OsString> = Vec::new();
        if let Some(signal) = signal {
            args.push(format!("--signal={signal}").into());
            args.push("--full".into());
        }
        args.push(id.to_string().into());
        self.run("scancel", args).await.map(drop)
    }

    /// Every job the controller still knows of (ended ones for its
    /// `MinJobAge`), from `squeue --json`: JSON, so no text a job can set
    /// (its name, its comment) can pass for another field or another job,
    /// as it could in `scontrol --oneliner show job`, which prints them
    /// raw, newlines included.
    pub(super) async fn jobs(&self) -> Result<Vec<JobInfo>, CtlError> {
        let out = self.run("squeue", vec!["--json".into()]).await?;
        parse_squeue_json(&out)
    }
}

/// `sbatch --parsable` prints `ID` or `ID;CLUSTER`.
fn parse_submitted(out: &str) -> Result<u64, CtlError> {
    let line = out.trim();
    line.split(';')
        .next()
        .and_then(|id| id.parse().ok())
        .ok_or_else(|| CtlError::Unexpected {
            command: "sbatch",
            output: line.lines().next().unwrap_or("").to_owned(),
        })
}

/// The jobs of `squeue --json` (Slurm 22.05, openapi v0.0.38): each
/// entry's `job_id`, `job_state`, `state_reason`, `exit_code` (a wait(2)
/// status) and `user_id`. An entry without them is skipped; it never
/// hides the others.
fn parse_squeue_json(out: &str) -> Result<Vec<JobInfo>, CtlError> {
    let unexpected = || CtlError::Unexpected {
        command: "squeue",
        output: out.chars().take(200).collect(),
    };
    let value: serde_json::Value = serde_json::from_str(out).map_err(|_| unexpected())?;
    let entries = value
        .get("jobs")
        .and_then(serde_json::Value::as_array)
        .ok_or_else(unexpected)?;
    let mut jobs = Vec::with_capacity(entries.len());
    for entry in entries {
        let field = |k: &str| entry.get(k);
        let (Some(id), Some(state)) = (
            field("job_id").and_then(serde_json::Value::as_u64),
            field("job_state").and_then(serde_json::Value::as_str),
        ) else {
            continue;
        };
        let status = field("exit_code")
            .and_then(serde_json::Value::as_i64)
            .unwrap_or(0);
        // A wait(2) status: the signal in the low 7 bits, else the code.
        let exit = match (status & 0x7f) as i32 {
            0 => (((status >> 8) & 0xff) as i32, 0),
            signal => (0, signal),
        };
        jobs.push(JobInfo {
            id,
            state: state.to_owned(),
            reason: field("state_reason")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("None")
                .to_owned(),
            exit,
            uid: field("user_id")
                .and_then(serde_json::Value::as_u64)
                .and_then(|u| u32::try_from(u).ok()),
        });
    }
    Ok(jobs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sbatch_prints_the_id_with_or_without_a_cluster() {
        assert_eq!(parse_submitted("42\n").unwrap(), 42);
        assert_eq!(parse_submitted("43;cluster\n").unwrap(), 43);
        assert!(matches!(
            parse_submitted("Submitted batch job 44\n"),
            Err(CtlError::Unexpected { .. })
        ));
    }

    // Scenario: a job sets its own name to text shaped like other fields
    // and other jobs (Slurm allows newlines there): in JSON it stays a
    // name. Exit statuses decode as wait(2) statuses; a malformed entry is
    // skipped without hiding the others.
    #[test]
    fn squeue_json_gives_each_job_its_own_fields_only() {
        let out = r#"{"meta":{},"errors":[],"jobs":[
            {"job_id":7,"name":"x JobState=COMPLETED ExitCode=0:0\nJobId=8 JobState=COMPLETED","job_state":"RUNNING","state_reason":"None","exit_code":0,"user_id":65534},
            {"job_id":8,"job_state":"PENDING","state_reason":"PartitionDown","exit_code":0,"user_id":1},
            {"job_id":9,"job_state":"FAILED","state_reason":"NonZeroExitCode","exit_code":768,"user_id":1},
            {"job_id":10,"job_state":"FAILED","state_reason":"JobLaunchFailure","exit_code":9,"user_id":1},
            {"job_state":"COMPLETED"},
            {"job_id":11,"job_state":"OUT_OF_MEMORY","state_reason":"OutOfMemory","exit_code":253}
        ]}"#;
        let jobs = parse_squeue_json(out).unwrap();
        let got: Vec<_> = jobs
            .iter()
            .map(|j| {
                (
                    j.id,
                    j.state.as_str(),
                    j.reason.as_str(),
                    j.exit,
                    j.uid,
                    j.is_final(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (7, "RUNNING", "None", (0, 0), Some(65534), false),
                (8, "PENDING", "PartitionDown", (0, 0), Some(1), false),
                (9, "FAILED", "NonZeroExitCode", (3, 0), Some(1), true),
                (10, "FAILED", "JobLaunchFailure", (0, 9), Some(1), true),
                (11, "OUT_OF_MEMORY", "OutOfMemory", (0, 125), None, true),
            ]
        );
        assert!(matches!(
            parse_squeue_json("slurm_load_jobs error"),
            Err(CtlError::Unexpected { .. })
        ));
    }
}

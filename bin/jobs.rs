//! `jobs`: the command-line client of `jobsd`. Parses arguments, calls
//! [`jobs::client`], prints what comes back, and picks the exit code (see
//! [`AFTER_HELP`]). Formatting lives in [`jobs::client::format`].

use std::io::{self, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use clap::{CommandFactory, Parser, Subcommand};
use jobs::client::format::{self, EXIT_INCOMPLETE, StatusJson};
use jobs::client::units::{self, UnitError};
use jobs::client::{Client, ClientError, ConnectOptions, DEFAULT_TIMEOUT};
use jobs::proto::{self, stream_event::Event};
use jobs::tls::PemFiles;
use tokio::signal::unix::{Signal, SignalKind, signal};

/// Shown at the end of `jobs --help`.
const AFTER_HELP: &str = "\
Exit status:
  0      success
  1      error: cannot connect, certificate refused, no such job, invalid
         argument, no answer within 10 s, ...
  2      usage error (nothing was sent to the server)
  For `stream` and `run`, once the job is followed:
  N      the job exited with code N
  128+N  a signal N killed the job (137: SIGKILL, 143: SIGTERM); never 0
  255    jobs could not follow the job to its end: the stream was cut and
         the output may be incomplete, or the job was lost (the server
         stopped while it ran)

Programs run without a shell, with argv exactly as given, and the program
name is never split on spaces: `jobs start \"sleep 100\"` asks for a program
named 'sleep 100' and fails. Write `jobs start -- sleep 100`.

A closed stdout (`jobs output ID | head`) ends jobs quietly with status 0;
the job itself keeps running.";

/// Shown at the end of `jobs start --help` and `jobs run --help`.
const COMMAND_HELP: &str = "\
PROGRAM is an absolute path or a bare name looked up in the server's fixed
PATH (/usr/local/bin:/usr/bin:/bin); relative paths such as ./run.sh are
refused. It runs without a shell: each ARG reaches it verbatim, and the
program name is never split on spaces, so `jobs start \"sleep 100\"` fails
(no program is named 'sleep 100') and creates no job. Put `--` before
PROGRAM when an argument starts with `-`.";

/// Client of jobsd, the multi-user job server (gRPC over mutual TLS 1.3).
#[derive(Parser, Debug)]
#[command(name = "jobs", version, after_help = AFTER_HELP)]
struct Cli {
    /// Address of jobsd, HOST:PORT; the server's certificate must be valid for HOST.
    #[arg(
        long,
        env = "JOBS_ADDR",
        default_value = "127.0.0.1:50051",
        global = true
    )]
    addr: String,
    /// CA certificate (PEM) the server's certificate must chain to [required].
    #[arg(long, env = "JOBS_CA", value_name = "FILE", global = true)]
    ca: Option<PathBuf>,
    /// Our client certificate (PEM), e.g. from `jobs-ca client NAME` [required].
    #[arg(long, env = "JOBS_CERT", value_name = "FILE", global = true)]
    cert: Option<PathBuf>,
    /// Our private key (PEM) [required].
    #[arg(long, env = "JOBS_KEY", value_name = "FILE", global = true)]
    key: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start a job and print its id.
    #[command(
        override_usage = "jobs start [--json] [LIMITS] [--] PROGRAM [ARG]...",
        after_help = COMMAND_HELP
    )]
    Start {
        /// Print the job's status as a JSON object instead of its id.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        limits: LimitArgs,
        /// The program, then its arguments.
        #[arg(required = true, trailing_var_arg = true, value_name = "PROGRAM")]
        command: Vec<String>,
    },
    /// Start a job and follow its output until it ends (start + stream).
    ///
    /// The first Ctrl-C stops the job and keeps following it to its end; a
    /// second Ctrl-C exits at once with status 130.
    #[command(
        override_usage = "jobs run [LIMITS] [--] PROGRAM [ARG]...",
        after_help = COMMAND_HELP
    )]
    Run {
        #[command(flatten)]
        limits: LimitArgs,
        /// The program, then its arguments.
        #[arg(required = true, trailing_var_arg = true, value_name = "PROGRAM")]
        command: Vec<String>,
    },
    /// Stop a job (SIGTERM, then SIGKILL after the server's grace period) and
    /// print its final status.
    ///
    /// With `--owner sha256:…` (admins only): stop every running job of that
    /// identity and print how many were stopped.
    Stop {
        /// Job id, as printed by `jobs start`.
        #[arg(required_unless_present = "owner", conflicts_with = "owner")]
        id: Option<String>,
        /// Stop every running job of this identity instead (admins only).
        #[arg(long, value_name = "sha256:FINGERPRINT")]
        owner: Option<String>,
    },
    /// Print a job's status.
    Status {
        /// Print a JSON object.
        #[arg(long)]
        json: bool,
        /// Job id, as printed by `jobs start`.
        id: String,
    },
    /// List your jobs, oldest first.
    List {
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
        /// Every user's jobs, each line starting with its owner (admins
        /// named in the server's policy only).
        #[arg(long)]
        all: bool,
    },
    /// Print everything a job has written so far, then exit: its stdout to
    /// stdout and its stderr to stderr, byte for byte.
    Output {
        /// Job id, as printed by `jobs start`.
        id: String,
    },
    /// Follow a job's output from its first byte until it ends, then exit with
    /// the job's exit code (128+N for a death by signal N).
    Stream {
        /// Job id, as printed by `jobs start`.
        id: String,
    },
    /// Delete finished jobs now: their records and output, for good. A
    /// running job is refused (stop it first). Otherwise the server deletes
    /// finished jobs after its retention time (7 days by default).
    Rm {
        /// Job ids, as printed by `jobs start`.
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
    },
}

/// Resource limits for a new job. Each one left out takes the server's
/// ceiling; asking for more than the ceiling is refused.
#[derive(clap::Args, Debug)]
#[command(next_help_heading = "Limits")]
struct LimitArgs {
    /// Memory for all the job's processes together: bytes, or with a K, M, G
    /// or T suffix (powers of 1024), e.g. 256M.
    #[arg(long, value_name = "SIZE", value_parser = size)]
    memory: Option<u64>,
    /// CPU time as a number of cores, e.g. 0.5 for half of one core.
    #[arg(long, value_name = "CORES", value_parser = cpus)]
    cpus: Option<u32>,
    /// Processes and threads at once (the job's init included).
    #[arg(long, value_name = "N")]
    pids: Option<u32>,
    /// Read bandwidth per server IO device, bytes per second (SIZE syntax).
    #[arg(long, value_name = "SIZE", value_parser = size)]
    io_read: Option<u64>,
    /// Write bandwidth per server IO device, bytes per second (SIZE syntax).
    #[arg(long, value_name = "SIZE", value_parser = size)]
    io_write: Option<u64>,
}

impl LimitArgs {
    fn to_proto(&self) -> proto::Limits {
        proto::Limits {
            memory_bytes: self.memory,
            cpu_millis: self.cpus,
            pids: self.pids,
            io_read_bps: self.io_read,
            io_write_bps: self.io_write,
        }
    }
}

fn size(s: &str) -> Result<u64, UnitError> {
    units::parse_size(s)
}

fn cpus(s: &str) -> Result<u32, UnitError> {
    units::parse_cpus(s)
}

/// Our stdout was closed by its reader: a clean exit, not an error.
#[derive(Debug, thiserror::Error)]
#[error("stdout was closed")]
struct StdoutClosed;

/// Following a job failed after it had begun: what was printed may be
/// incomplete. Exits with [`EXIT_INCOMPLETE`].
#[derive(Debug, thiserror::Error)]
#[error("lost track of job {id} before it ended; its output may be incomplete")]
struct Incomplete {
    id: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let options = connect_options(&cli);
    // On stderr, so that stdout (`--json` included) stays machine-readable.
    if let Some(warning) =
        jobs::client::expiry_warning(&options.pem.cert, time::OffsetDateTime::now_utc())
    {
        eprint_line(&format!("jobs: warning: {warning}"));
    }
    match run(cli.command, options) {
        Ok(code) => ExitCode::from(code),
        Err(e) if e.downcast_ref::<StdoutClosed>().is_some() => ExitCode::SUCCESS,
        Err(e) => {
            // If stderr is gone too there is no one left to tell.
            let _ = writeln!(io::stderr(), "jobs: error: {e:#}");
            if e.downcast_ref::<Incomplete>().is_some() {
                ExitCode::from(EXIT_INCOMPLETE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// The connection settings; a missing file option is a usage error (exit 2).
fn connect_options(cli: &Cli) -> ConnectOptions {
    let required = |value: &Option<PathBuf>, flag: &str, env: &str| {
        value.clone().unwrap_or_else(|| {
            Cli::command()
                .error(
                    clap::error::ErrorKind::MissingRequiredArgument,
                    format!("{flag} <FILE> is required (or set {env})"),
                )
                .exit()
        })
    };
    ConnectOptions {
        addr: cli.addr.clone(),
        pem: PemFiles {
            ca: required(&cli.ca, "--ca", "JOBS_CA"),
            cert: required(&cli.cert, "--cert", "JOBS_CERT"),
            key: required(&cli.key, "--key", "JOBS_KEY"),
        },
        timeout: DEFAULT_TIMEOUT,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn run(command: Command, options: ConnectOptions) -> anyhow::Result<u8> {
    // `run` handles Ctrl-C from the start, so that one pressed while the job
    // is being created still stops it.
    let mut sigint = match command {
        Command::Run { .. } => {
            Some(signal(SignalKind::interrupt()).context("cannot handle SIGINT")?)
        }
        _ => None,
    };
    let client = Client::connect(&options).await?;
    match command {
        Command::Start {
            json,
            limits,
            command,
        } => {
            let (program, args) = split_command(&command);
            let status = client
                .start_with_limits(program, args, limits.to_proto())
                .await?;
            if json {
                print(&format!("{}\n", to_json(&StatusJson::from(&status))?))?;
            } else {
                print(&format!("{}\n", status.id))?;
            }
            Ok(0)
        }
        Command::Run { limits, command } => {
            let (program, args) = split_command(&command);
            let mut interrupts = Interrupts::new(sigint.take());
            let start = client.start_with_limits(program, args, limits.to_proto());
            tokio::pin!(start);
            let status = loop {
                tokio::select! {
                    status = &mut start => break status?,
                    () = interrupts.next() => {
                        if interrupts.count >= 2 {
                            eprint_line("jobs: interrupted before the job's id was known");
                            return Ok(130);
                        }
                    }
                }
            };
            follow(&client, &status.id, interrupts).await
        }
        Command::Rm { ids } => {
            // Each id on its own: one refused id does not keep the others.
            let mut failed = 0;
            for id in &ids {
                if let Err(e) = client.remove(id).await {
                    eprint_line(&format!("jobs: error: cannot remove job {id}: {e:#}"));
                    failed += 1;
                }
            }
            Ok(if failed == 0 { 0 } else { 1 })
        }
        Command::Stop { id, owner } => {
            if let Some(owner) = owner {
                let stopped = client.stop_owner(&owner).await?;
                let mut text = String::new();
                for status in &stopped {
                    text.push_str(&format!("{}\n", format::status_line(status, 0)));
                }
                text.push_str(&format!("stopped {} job(s) of {owner}\n", stopped.len()));
                print(&text)?;
                return Ok(0);
            }
            // clap requires one of the two.
            let id = id.unwrap_or_default();
            let status = client.stop(&id).await?;
            print(&format!("{}\n", format::status_line(&status, 0)))?;
            Ok(0)
        }
        Command::Status { json, id } => {
            let status = client.status(&id).await?;
            if json {
                print(&format!("{}\n", to_json(&StatusJson::from(&status))?))?;
            } else {
                let mut text = format!("{}\n", format::status_line(&status, 0));
                if let Some(id) = &status.cluster_job_id {
                    text.push_str(&format!("  cluster job: {id}\n"));
                }
                if let Some(limits) = &status.limits {
                    text.push_str(&format!("  limits: {}\n", units::describe_limits(limits)));
                }
                if let Some(usage) = &status.usage {
                    text.push_str(&format!("  usage: {}\n", units::describe_usage(usage)));
                }
                if let Some(max) = status.max_output_bytes {
                    text.push_str(&format!(
                        "  output: {} of at most {}\n",
                        units::human_bytes(status.output_bytes),
                        units::human_bytes(max)
                    ));
                }
                print(&text)?;
            }
            Ok(0)
        }
        Command::List { json, all } => {
            let jobs = client.list(all).await?;
            if json {
                let jobs: Vec<StatusJson> = jobs.iter().map(StatusJson::from).collect();
                print(&format!("{}\n", to_json(&jobs)?))?;
            } else {
                print(&format::status_table(&jobs, all))?;
            }
            Ok(0)
        }
        Command::Output { id } => {
            let mut chunks = client.output(&id).await?;
            let mut writer = OutputWriter::new()?;
            loop {
                match chunks.message().await {
                    Ok(Some(chunk)) => writer.write(chunk).await?,
                    Ok(None) => break,
                    Err(e) => {
                        // What arrived is written before the error is told.
                        writer.finish().await?;
                        return Err(ClientError::Rpc(e)).with_context(|| {
                            format!("reading the output of job {id} failed; it may be incomplete")
                        });
                    }
                }
            }
            writer.finish().await?;
            Ok(0)
        }
        Command::Stream { id } => follow(&client, &id, Interrupts::new(None)).await,
    }
}

/// Follows job `id` to its end, writing its output as it arrives; returns the
/// exit code its final status maps to. Ctrl-C, when `interrupts` watches for
/// it, stops the job once, then exits at once.
async fn follow(client: &Client, id: &str, mut interrupts: Interrupts) -> anyhow::Result<u8> {
    type Stopping<'a> = Pin<Box<dyn Future<Output = Result<proto::JobStatus, ClientError>> + 'a>>;
    let mut events = client.stream(id).await?;
    let incomplete = || Incomplete { id: id.to_owned() };
    let mut stopping: Option<Stopping<'_>> = None;
    let mut stop_sent = false;
    let mut writer = OutputWriter::new()?;
    loop {
        if interrupts.count >= 1 && !stop_sent {
            stop_sent = true;
            eprint_line(&format!(
                "jobs: stopping job {id}; press Ctrl-C again to stop waiting"
            ));
            stopping = Some(Box::pin(client.stop(id)));
        }
        tokio::select! {
            event = events.message() => {
                let event = match event {
                    Ok(Some(event)) => event,
                    // What arrived is written before the error is told.
                    Ok(None) => {
                        writer.finish().await.with_context(incomplete)?;
                        return Err(anyhow!("the stream ended without the job's final status"))
                            .with_context(incomplete);
                    }
                    Err(e) => {
                        writer.finish().await.with_context(incomplete)?;
                        return Err(ClientError::Rpc(e)).with_context(incomplete);
                    }
                };
                match event.event {
                    Some(Event::Chunk(chunk)) => writer.write(chunk).await.with_context(incomplete)?,
                    Some(Event::FinalStatus(status)) => {
                        // Every byte is out before anything else is said.
                        writer.finish().await.with_context(incomplete)?;
                        if status.state == proto::State::Lost as i32 {
                            eprint_line(&format!("jobs: job {id}: {}", format::describe(&status)));
                        }
                        return format::exit_code(&status)
                            .ok_or_else(|| anyhow!("the server sent a final status that is not final"))
                            .with_context(incomplete);
                    }
                    // An event kind newer than this client: nothing to print.
                    None => {}
                }
            }
            result = async { stopping.as_mut().expect("guarded by the branch condition").await },
                if stopping.is_some() => {
                stopping = None;
                if let Err(e) = result {
                    eprint_line(&format!("jobs: error: cannot stop job {id}: {e:#}"));
                }
            }
            () = interrupts.next() => {
                if interrupts.count >= 2 {
                    eprint_line(&format!(
                        "jobs: interrupted; not waiting for job {id} to end"
                    ));
                    return Ok(130);
                }
            }
        }
    }
}

/// Counts SIGINTs, when there is a handler; never fires otherwise.
struct Interrupts {
    signal: Option<Signal>,
    count: u32,
}

impl Interrupts {
    fn new(signal: Option<Signal>) -> Self {
        Self { signal, count: 0 }
    }

    /// Waits for the next SIGINT. Cancel safe, as [`Signal::recv`].
    async fn next(&mut self) {
        match self.signal.as_mut() {
            Some(s) => {
                s.recv().await;
                self.count += 1;
            }
            None => std::future::pending().await,
        }
    }
}

fn split_command(command: &[String]) -> (&str, &[String]) {
    // clap's `required = true` guarantees at least the program.
    let (program, args) = command.split_first().expect("clap requires PROGRAM");
    (program, args)
}

fn to_json(value: &impl serde::Serialize) -> anyhow::Result<String> {
    serde_json::to_string(value).context("cannot encode JSON")
}

/// Writes `text` to stdout and flushes it.
fn print(text: &str) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(stdout_error)
}

fn stdout_error(e: io::Error) -> anyhow::Error {
    if e.kind() == io::ErrorKind::BrokenPipe {
        anyhow!(StdoutClosed)
    } else {
        anyhow::Error::new(e).context("cannot write to stdout")
    }
}

/// Best effort: a message on stderr that must not fail the command.
fn eprint_line(text: &str) {
    let _ = writeln!(io::stderr(), "{text}");
}

/// Chunks of job output on their way to our stdout or stderr.
const WRITES_IN_FLIGHT: usize = 2;

/// Writes job output to our stdout and stderr, byte for byte and in order,
/// on a thread of its own: the runtime keeps answering the server's HTTP/2
/// PINGs while a slow reader (a paused pager) holds the pipe, and the next
/// chunk is received while the last one is written. At most
/// [`WRITES_IN_FLIGHT`] chunks wait; then [`OutputWriter::write`] waits.
struct OutputWriter {
    chunks: Option<tokio::sync::mpsc::Sender<proto::OutputChunk>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl OutputWriter {
    fn new() -> anyhow::Result<Self> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<proto::OutputChunk>(WRITES_IN_FLIGHT);
        let thread = std::thread::Builder::new()
            .name("output".into())
            .spawn(move || {
                while let Some(chunk) = rx.blocking_recv() {
                    write_chunk(&chunk)?;
                }
                Ok(())
            })
            .context("cannot start the output writer thread")?;
        Ok(Self {
            chunks: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queues `chunk`; waits while [`WRITES_IN_FLIGHT`] are queued.
    ///
    /// # Errors
    /// The writer's error once it failed (e.g. stdout closed).
    async fn write(&mut self, chunk: proto::OutputChunk) -> anyhow::Result<()> {
        let sent = match &self.chunks {
            Some(tx) => tx.send(chunk).await.is_ok(),
            None => false,
        };
        if sent {
            Ok(())
        } else {
            // The thread stopped: it failed.
            self.finish().await
        }
    }

    /// Waits until every queued chunk is written.
    ///
    /// # Errors
    /// The first write that failed.
    async fn finish(&mut self) -> anyhow::Result<()> {
        self.chunks = None;
        match self.thread.take() {
            None => Ok(()),
            Some(thread) => tokio::task::spawn_blocking(move || thread.join())
                .await
                .context("the output writer thread was lost")?
                .map_err(|_| anyhow!("the output writer thread panicked"))?,
        }
    }
}

/// Writes all of `buf` to `fd`, unbuffered.
fn write_all_fd(fd: std::os::fd::BorrowedFd<'_>, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match nix::unistd::write(fd, buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Writes a chunk of job output to our stdout or stderr and flushes it.
fn write_chunk(chunk: &proto::OutputChunk) -> anyhow::Result<()> {
    match chunk.fd() {
        proto::Fd::Stdout => {
            // Straight to the descriptor: std's stdout is line-buffered and
            // scans every chunk for its last newline, which took 7% of this
            // process's time following 2 GiB. Nothing else writes stdout
            // meanwhile, and `print` flushes what it writes.
            let out = io::stdout();
            let _lock = out.lock();
            write_all_fd(out.as_fd(), &chunk.data).map_err(stdout_error)
        }
        proto::Fd::Stderr => {
            let mut err = io::stderr().lock();
            err.write_all(&chunk.data)
                .and_then(|()| err.flush())
                .context("cannot write to stderr")
        }
        proto::Fd::Unspecified => Err(anyhow!(
            "the server sent output from an unknown file descriptor ({})",
            chunk.fd
        )),
    }
}

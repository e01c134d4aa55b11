//! `jobs`: a multi-user job server over mutual TLS.
//!
//! # Background
//! Several people share one Linux machine through `jobsd`. Each runs programs
//! there remotely with the `jobs` CLI, follows their output live, and stops
//! them; nobody can see or touch another person's jobs. An admin issues the
//! certificates with `jobs-ca`. This crate is the library under those three
//! binaries; the binaries only parse arguments, call it and pick exit codes.
//!
//! # Design
//! - [`auth`]: a user is the SHA-256 of their certificate's public key (an SPKI
//!   fingerprint); [`auth::Caller`] is the verified peer of a connection.
//! - [`policy`]: the operator's TOML policy file (denylist, admins, rate
//!   limits, quotas, per-identity overrides), its reload, and
//!   [`policy::Gate::admit`], which turns a caller into the
//!   [`policy::Grant`] that job operations require.
//! - [`audit`]: the audit log, one JSON line per access decision.
//! - [`job`]: what a job is — [`job::JobId`], owner, command, [`job::State`],
//!   output — the registry [`job::Jobs`] with the one access check
//!   [`job::Jobs::authorize`] (owner, or an admin), the quotas a grant
//!   carries (running jobs, output bytes), and one supervisor task per job. Where a job
//!   runs is behind the [`job::Executor`] trait.
//! - [`limits`]: limits and quotas as plain values (per-job ceilings and
//!   their per-identity overrides, identity limits, output quotas, grants),
//!   below both `policy` and `job`.
//! - [`exec`]: the local executor — as root, a cgroup, an unprivileged account
//!   and namespaces per job (otherwise a process group), a clean environment,
//!   pidfd-based waiting, stop that kills the whole cgroup.
//! - [`cgroup`]: per-job control groups on cgroup v2 and v1/hybrid layouts:
//!   limits, kill, waiting until empty, usage counters, cleanup.
//! - [`sandbox`]: `jobs-init`, each contained job's first process: namespaces,
//!   privilege drop, exec, reaping, signal forwarding, exit report.
//! - [`output`]: the append-only per-job output log on disk and the cursors
//!   that let any number of followers read it from byte 0 at their own pace.
//! - [`store`]: the SQLite database of job records in the state directory
//!   (schema version, migrations, one transaction per write); the source of
//!   truth for jobs after a restart.
//! - [`server`]: the tonic service (translation only), the single
//!   error-to-status mapping, the TLS accept loop, the shutdown order.
//! - [`client`]: connecting with mutual TLS and explaining failures.
//! - [`tls`]: rustls configurations (TLS 1.3 only, client certificates
//!   required, no resumption) from PEM files.
//! - [`ca`]: issuing the CA, server and client certificates (RSA-4096), signing
//!   users' own certificate requests (PKCS#10), and the record of what was
//!   issued that keeps one key to one identity (renewals keep it).
//! - [`proto`]: the generated gRPC types of `proto/jobs/v1/jobs.proto`.
//!
//! # Security boundary
//! Only a peer whose TLS 1.3 handshake presented a certificate chaining to the
//! configured CA, valid now and made for client authentication, reaches the
//! service. Its identity comes from that certificate alone. Every request
//! passes [`policy::Gate::admit`] (denylist, then rate limits) and is then
//! recorded in the audit log; every operation on an existing job goes through
//! [`job::Jobs::authorize`]; "no such job" and "not your job" are the same
//! NOT_FOUND answer. Admins named in the policy may reach every job. Jobs get argv verbatim (no
//! shell), a fixed minimal environment, stdin from /dev/null and no inherited
//! descriptors. When `jobsd` is root each job is contained: its own cgroup
//! with limits (entered before exec), an unprivileged account without
//! capabilities or new privileges, private PID and mount namespaces, and
//! optionally no network. Peers see short fixed error messages; details stay
//! in the log.
//!
//! # Current limitations
//! - Without root, `jobsd` cannot contain jobs: they run as its own user in a
//!   process group (a `setsid` child survives a stop) with no limits. It says
//!   so at start-up.
//! - Contained jobs of all users run as one account (`nobody`) unless
//!   identities are mapped to accounts of their own; the namespaces separate
//!   their processes, scratch directories, terminals and System V IPC, but
//!   what the kernel keeps per uid (the user keyring, inotify limits) and
//!   world-writable places elsewhere on the host are shared, and with the
//!   host network so are abstract Unix sockets.
//! - Jobs can read `/sys/fs/cgroup` (other jobs' ids and use), create user
//!   namespaces of their own, and run without a seccomp filter.
//! - On a pure cgroup v2 host `jobsd` moves itself into a leaf of its own
//!   cgroup (`jobsd-daemon`) so that the cgroup may hand controllers to job
//!   groups; if other processes share that cgroup it refuses to start and
//!   says why (run it as a systemd service with `Delegate=yes`). The v2 paths
//!   are verified here on the hybrid layout's v2 mount (kill, events, the
//!   self-move with `hugetlb`); the v2 limit files only by their formats.
//! - A restart lists every job again, but what was only in memory is gone:
//!   rate-limit buckets start full, and jobs that ran are `lost` (never
//!   resumed). Every job record is also held in memory while the daemon runs
//!   (bounded by retention).
//! - Rate limits and quotas are per identity. Aggregate memory, CPU and pids
//!   per identity (`[identity_limits]`) and the equal CPU share between
//!   identities need containment (cgroups); without it they are not
//!   enforced. A changed `[identity_limits]` reaches an identity's group at
//!   its next job start, not its running jobs at the reload.
//! - The denylist is checked per request, not at the TLS handshake: a
//!   denylisted key still completes handshakes (and they still cost the
//!   server a signature each; `[handshakes]` in the policy limits that per
//!   source address).
//! - Output reads and writes are synchronous `pread`/`write` calls on the
//!   page cache from async tasks; a disk that stalls stalls those tasks.
//! - Output on disk is bounded by default: per job by `--max-output` (1 GiB,
//!   the policy's `max_output_bytes` overriding), per identity by
//!   `--max-stored-output` (10 GiB) counted live, and over all identities by
//!   the disk itself less `--disk-headroom`. An identity's older finished jobs
//!   exceed its cap for the moments retention takes to delete them. A
//!   disk filled by something else than job output is noticed at the next
//!   free-space check or the first ENOSPC.
//! - If `jobsd` is killed with SIGKILL, its jobs keep running unowned until a
//!   new `jobsd` starts on the same state directory (it kills them, removes
//!   their cgroups and marks them lost). An uncontained job's processes that
//!   left its process group (`setsid`) are not found then.
//! - Without a PID namespace, orphans of a job whose init was killed are
//!   reparented to PID 1, which on some container hosts never reaps them; they
//!   stay as zombies there. With it (the default), the job's init reaps them.
//! - Unauthenticated connections are shed at 1024 pending handshakes in all
//!   and 128 per source address; on loopback every client shares one address,
//!   so a local user holding 128 idle sockets locks other local clients out
//!   (promptly, not by hanging) until the sockets close or time out (5 s).

pub mod audit;
pub mod auth;
mod bounded;
pub mod ca;
pub mod cgroup;
pub mod client;
pub mod exec;
pub mod job;
pub mod limits;
pub mod output;
pub mod policy;
pub mod sandbox;
pub mod server;
pub mod store;
pub mod tls;

/// Generated gRPC types and stubs for `proto/jobs/v1/jobs.proto`.
pub mod proto {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("jobs.v1");
}

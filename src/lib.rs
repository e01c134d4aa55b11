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
//! - [`accounts`]: the range of uids identities' own accounts come from, its
//!   start-up check against the machine's accounts, and what such an account
//!   is.
//! - [`limits`]: limits and quotas as plain values (per-job ceilings and
//!   their per-identity overrides, identity limits, output quotas, grants),
//!   below both `policy` and `job`.
//! - [`model`]: the values a job is described by ([`model::JobId`],
//!   [`model::State`], exit and usage), below `job`, `store` and `server`.
//! - [`exec`]: the local executor — as root, a cgroup, an unprivileged account
//!   and namespaces per job (otherwise a process group), a clean environment,
//!   pidfd-based waiting, stop that kills the whole cgroup.
//! - [`cgroup`]: per-job control groups on cgroup v2 and v1/hybrid layouts:
//!   limits, kill, waiting until empty, usage counters, cleanup.
//! - [`sandbox`]: `jobs-init`, each contained job's first process: namespaces,
//!   privilege drop, exec, reaping, signal forwarding, exit report.
//! - [`output`]: the append-only per-job output log on disk and the cursors
//!   that let any number of followers read it from byte 0 at their own pace.
//! - [`store`]: the SQLite database of job records and of each identity's
//!   uid in the state directory (schema version, migrations, one transaction
//!   per write, indexed reads); the source of truth for jobs after a
//!   restart, and the only place finished jobs are kept while the daemon
//!   runs.
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
//! with limits (entered before exec), an unprivileged account of its
//! identity's own (a uid no other identity ever gets) without capabilities
//! (an empty bounding set) or new privileges, private PID, mount, IPC and
//! cgroup namespaces, optionally no network, a Landlock ruleset (the host
//! read-only outside the job's private places, no TCP listening, abstract
//! sockets and signals scoped to the job) and a seccomp filter (see
//! [`sandbox::seccomp`]). Peers see short fixed error messages; details stay
//! in the log.
//!
//! # Current limitations
//! - Without root, `jobsd` cannot contain jobs: they run as its own user in a
//!   process group (a `setsid` child survives a stop) with no limits. It says
//!   so at start-up.
//! - Contained jobs of different identities run as different uids (see
//!   [`accounts`]) unless the operator shares one account (`jobsd
//!   --run-as`). The start-up check of the uid range sees only name services
//!   that enumerate (not sssd or LDAP by default); those are asked about one
//!   identity's uid at its first job in each daemon run, so an overlap shows
//!   there, not at start-up. Every identity ever seen keeps its uid for good,
//!   so a range is used up by the number of identities, not of jobs.
//! - Landlock and seccomp need kernel support (Landlock ABI 6 for every
//!   part); with `--containment auto` a kernel without them runs jobs
//!   without those parts, and says so at start-up. Jobs may create user
//!   namespaces only with the `user_namespaces` permit, and bind or listen
//!   only with the `listen` permit (the filter cannot tell a socket's family
//!   on `listen`, so Unix stream sockets cannot listen without it either).
//! - With the host network (the default) jobs share the host's loopback and
//!   addresses: they see every socket of the host in `/proc/net/*`, receive
//!   datagrams on the port the kernel picked for a socket they sent from
//!   (the bind hook refuses named ports only), and may open unauthenticated
//!   connections to jobsd itself. Pending handshakes are shared fairly per
//!   source at the cap, a local peer counted by the uid owning its socket,
//!   so such a job takes only its own share; the signing permits are first
//!   come, first served, so a flood slows others' new connections.
//! - On a pure cgroup v2 host `jobsd` moves itself into a leaf of its own
//!   cgroup (`jobsd-daemon`) so that the cgroup may hand controllers to job
//!   groups; if other processes share that cgroup it refuses to start and
//!   says why (run it as a systemd service with `Delegate=yes`). The v2 paths
//!   are verified here on the hybrid layout's v2 mount (kill, events, the
//!   self-move with `hugetlb`); the v2 limit files only by their formats.
//! - A restart lists every job again, but what was only in memory is gone:
//!   rate-limit buckets start full, and jobs that ran are `lost` (never
//!   resumed).
//! - Identity limits bound each identity (by default half the machine's
//!   memory and 4096 processes), not all identities together: several of
//!   them can still fill the machine's memory.
//! - Rate limits and quotas are per identity. Aggregate memory, CPU and pids
//!   per identity (`[identity_limits]`) and the equal CPU share between
//!   identities need containment (cgroups); without it they are not
//!   enforced. A changed `[identity_limits]` reaches an identity's group at
//!   its next job start, not its running jobs at the reload.
//! - The denylist is checked per request, not at the TLS handshake: a
//!   denylisted key still completes handshakes (and they still cost the
//!   server a signature each; `[handshakes]` in the policy limits that per
//!   source: a remote address, or the local user owning the socket). A reload that denylists an identity, or a CRL that
//!   revokes a certificate it was seen using, ends its streams, closes its
//!   connections and stops its jobs; revocation reaches a running daemon
//!   only through `jobsd --crl` (there is no OCSP), and a revoked identity
//!   is recognised only by the serials seen since the daemon started.
//! - Output appends are synchronous writes to the page cache from the job's
//!   supervisor task, and every supervisor runs on the one `jobs-output`
//!   thread: a disk that stalls stalls every job's output capture and
//!   stops, never the runtime that answers requests. Reads wait for the
//!   disk only on the blocking pool.
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
//! - Unauthenticated connections are queued up to 1024 pending handshakes;
//!   beyond that the slots are shared fairly between sources (a remote
//!   address or IPv6 /64, or on this machine the uid owning the peer's
//!   socket), so a source can be held to an equal share but never kept out.
//!   Local peers in another network namespace (a container on a bridge)
//!   count by their address; NAT puts everyone behind it in one source.

pub mod accounts;
pub mod audit;
pub mod auth;
mod bounded;
pub mod ca;
pub mod cgroup;
pub mod client;
pub mod exec;
mod inotify;
pub mod job;
pub mod limits;
pub mod model;
pub mod output;
pub mod policy;
pub mod sandbox;
pub mod server;
pub mod slurm;
pub mod store;
pub mod tls;

/// Generated gRPC types and stubs for `proto/jobs/v1/jobs.proto`.
pub mod proto {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("jobs.v1");
}

//! The operator's policy: who may use the daemon, how fast, and how much.
//!
//! This module owns the optional TOML policy file of `jobsd --policy FILE`
//! (format: `policy.example.toml` at the repository root) and every decision
//! made from it before a request reaches a job:
//! - [`Policy`]: the validated file — denylist, admins, per-identity rate
//!   limits and quotas with per-identity overrides, per-job limit overrides,
//!   and the rate of unauthenticated TLS handshakes per [`Source`].
//!   Parsing is strict (`file.rs`): unknown keys, wrong types, malformed or
//!   duplicate fingerprints and duplicate keys are errors naming file, line
//!   and key. An absent section means "no restriction of that kind"; nothing
//!   in the file can switch authentication off.
//! - [`PolicyHandle`]: the policy in force, shared by every connection, and
//!   its reload (SIGHUP in `jobsd`): a file that fails to parse or validate
//!   is rejected and the old policy stays.
//! - [`Gate`]: admission of one request — the denylist, then the identity's
//!   request rate, then (for Start) its start rate — producing the [`Grant`]
//!   that job operations require. Token buckets (`limiter.rs`, GCRA from
//!   `governor`) are keyed by identity, so they hold across every
//!   connection and every certificate of one key.
//!
//! It must not touch jobs or the network: the job engine enforces the
//! quotas a [`Grant`] carries, and the server maps a [`Denial`] to a status.

mod file;
mod limiter;

pub use limiter::{HandshakeLimiter, Limiters, Source};

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::auth::{Caller, Identity};
use crate::limits::JobQuota;

/// A token-bucket rate: `count` tokens every `period`, at most `burst` saved.
///
/// Over any interval of length `t`, at most `burst + count * t / period`
/// requests pass (GCRA, the generic cell rate algorithm of ITU-T I.371).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rate {
    /// Tokens added per `period`.
    pub count: NonZeroU32,
    /// The period `count` refers to (1 s for requests and handshakes, 60 s
    /// for starts).
    pub period: Duration,
    /// Most tokens that can be saved up, i.e. the largest burst at once.
    pub burst: NonZeroU32,
}

/// Limits of unauthenticated TLS handshakes from one [`Source`] (a local
/// user, an IPv4 address or an IPv6 /64).
pub type HandshakeRate = Rate;

/// What applies to one identity, after its overrides are merged with the
/// file's defaults. Every `None` means "not limited".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rules {
    /// Every RPC of the identity, across all its connections (per second).
    pub requests: Option<Rate>,
    /// Start RPCs of the identity (per minute), counted besides `requests`.
    pub starts: Option<Rate>,
    /// Quotas and per-job limits the job engine enforces.
    pub jobs: JobQuota,
}

/// A validated policy. [`Policy::default`] is the policy without a file: no
/// denylist, no admins, no rate limits, no quotas.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Policy {
    /// The file it was read from; `None` for the default policy.
    source: Option<PathBuf>,
    denylist: HashSet<Identity>,
    admins: HashSet<Identity>,
    defaults: Rules,
    users: HashMap<Identity, Rules>,
    handshakes: Option<HandshakeRate>,
    keep_jobs_when_banned: Option<bool>,
}

impl Policy {
    /// Reads and validates the policy file at `path`.
    ///
    /// `path` must name a regular file (a symlink to one is followed) of at
    /// most [`MAX_POLICY_BYTES`]. It never blocks: a FIFO, device, socket or
    /// directory is refused without reading from it, so a mistaken path can
    /// neither hang a SIGHUP reload nor fill memory.
    ///
    /// # Errors
    /// [`PolicyError`] naming the file, and where it applies the line,
    /// column and dotted key, for an unreadable file
    /// ([`PolicyErrorKind::Read`]), one that is not a regular file
    /// ([`PolicyErrorKind::NotRegularFile`]), too large
    /// ([`PolicyErrorKind::TooLarge`]) or not UTF-8
    /// ([`PolicyErrorKind::NotUtf8`]), TOML syntax, unknown or duplicate
    /// keys, wrong types, malformed or repeated fingerprints, out-of-range
    /// values, or an identity that is both denied and an admin.
    #[expect(
        clippy::result_large_err,
        reason = "made once per load or reload; its size does not matter"
    )]
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = file::read_text(path)?;
        Self::parse(&text, path)
    }

    /// Validates `text` as if read from `path` (used in messages only).
    ///
    /// # Errors
    /// As [`Policy::load`], but never the errors of reading a file
    /// ([`PolicyErrorKind::Read`], `NotRegularFile`, `TooLarge`, `NotUtf8`).
    #[expect(
        clippy::result_large_err,
        reason = "made once per load or reload; its size does not matter"
    )]
    pub fn parse(text: &str, path: &Path) -> Result<Self, PolicyError> {
        file::parse(text, path)
    }

    /// The file this policy came from, if any.
    pub fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    /// True if `identity` is on the denylist.
    pub fn is_denied(&self, identity: &Identity) -> bool {
        self.denylist.contains(identity)
    }

    /// True if `identity` may list, inspect, follow and stop every user's jobs.
    pub fn is_admin(&self, identity: &Identity) -> bool {
        self.admins.contains(identity)
    }

    /// The rules for `identity`: its `[users."…"]` overrides merged over the
    /// file's defaults.
    pub fn rules(&self, identity: &Identity) -> &Rules {
        self.users.get(identity).unwrap_or(&self.defaults)
    }

    /// True if `[limits]` or any `[users."…".limits]` changes a per-job
    /// ceiling, or `[identity_limits]` sets a limit (which only a daemon
    /// that contains jobs can enforce).
    pub fn sets_job_limits(&self) -> bool {
        std::iter::once(&self.defaults)
            .chain(self.users.values())
            .any(|r| {
                r.jobs.ceilings != crate::limits::CeilingOverrides::default()
                    || r.jobs.identity_limits != crate::limits::CeilingOverrides::default()
            })
    }

    /// Whether the running jobs of an identity that becomes revoked or
    /// denylisted keep running (`true`) or are stopped (`false`), as the
    /// file's top-level `keep_jobs_when_banned` says; `None` when it says
    /// nothing, and `jobsd --on-revoke` decides.
    pub fn keep_jobs_when_banned(&self) -> Option<bool> {
        self.keep_jobs_when_banned
    }

    /// The rate of unauthenticated handshakes allowed per [`Source`], if
    /// limited.
    pub fn handshakes(&self) -> Option<HandshakeRate> {
        self.handshakes
    }

    /// What putting `self` in force in place of `old` changes in the
    /// denylist and the admins, for the log line at reload: identities
    /// leaving the denylist are access given back, and worth a warning.
    pub fn changes_from(&self, old: &Policy) -> PolicyChanges {
        PolicyChanges {
            denied_added: self.denylist.difference(&old.denylist).count(),
            denied_removed: old.denylist.difference(&self.denylist).count(),
            admins_added: self.admins.difference(&old.admins).count(),
            admins_removed: old.admins.difference(&self.admins).count(),
        }
    }

    /// Number of denylisted identities, admins and per-identity overrides,
    /// for the log line at load and reload.
    pub fn summary(&self) -> PolicySummary {
        PolicySummary {
            denied: self.denylist.len(),
            admins: self.admins.len(),
            users: self.users.len(),
        }
    }
}

/// Largest policy file [`Policy::load`] reads: 1 MiB. A fingerprint line is
/// under 80 bytes, so this holds over ten thousand identities with room to
/// spare, yet bounds the memory and time a reload can take when `--policy`
/// names a log, an image or a file that keeps growing.
pub const MAX_POLICY_BYTES: u64 = 1 << 20;

/// How a new policy's denylist and admins differ from the old one's, by
/// [`Policy::changes_from`]. Counts of identities; all zero when the lists
/// are unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyChanges {
    /// Identities denied now that were not before.
    pub denied_added: usize,
    /// Identities denied before that are not now: they regain access.
    pub denied_removed: usize,
    /// Identities that became admins.
    pub admins_added: usize,
    /// Identities that are no longer admins.
    pub admins_removed: usize,
}

/// Counts describing a policy, for logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicySummary {
    /// Denylisted identities.
    pub denied: usize,
    /// Admin identities.
    pub admins: usize,
    /// Identities with overrides.
    pub users: usize,
}

/// A policy file that cannot be used. Displays as
/// `FILE:LINE:COLUMN: key 'a.b': message`, leaving out what is unknown.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct PolicyError {
    /// The policy file.
    pub path: PathBuf,
    /// 1-based line of the offending key or value, when known.
    pub line: Option<usize>,
    /// 1-based column (in characters) on that line, when known.
    pub column: Option<usize>,
    /// Dotted path of the offending key, e.g. `users."sha256:…".quota.max_running_jobs`.
    pub key: Option<String>,
    /// What is wrong.
    pub kind: PolicyErrorKind,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        if let Some(key) = &self.key {
            write!(f, ": key '{key}'")?;
        }
        write!(f, ": {}", self.kind)
    }
}

/// What is wrong with a policy file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyErrorKind {
    /// The file cannot be read (the OS error's text).
    #[error("cannot read the policy file: {0}")]
    Read(String),
    /// The path names a directory, FIFO, socket or device rather than a
    /// regular file (symlinks are followed). Refused unread: a FIFO without
    /// a writer would block forever, `/dev/zero` never ends, and
    /// `/dev/null` would quietly be an empty policy.
    #[error("not a regular file")]
    NotRegularFile,
    /// The file is larger than [`MAX_POLICY_BYTES`].
    #[error("the file is larger than {max} bytes")]
    TooLarge {
        /// The limit, [`MAX_POLICY_BYTES`].
        max: u64,
    },
    /// The file is not UTF-8 text; the error's line and column point at the
    /// first byte that is not.
    #[error("not UTF-8 text")]
    NotUtf8,
    /// Not valid TOML (the parser's message).
    #[error("{0}")]
    Syntax(String),
    /// A key the format does not have (a typo, or a key in the wrong table).
    #[error("unknown key; expected one of: {expected}")]
    UnknownKey {
        /// The keys valid at that place, comma-separated.
        expected: String,
    },
    /// The same key twice in one table.
    #[error("duplicate key")]
    DuplicateKey,
    /// A value of the wrong TOML type (the deserializer's message).
    #[error("{0}")]
    WrongType(String),
    /// A fingerprint not in the one canonical form.
    #[error(
        "'{value}' is not a fingerprint: write 'sha256:' and 64 lower-case hex digits, as `jobs-ca fingerprint` prints"
    )]
    BadFingerprint {
        /// The value as written.
        value: String,
    },
    /// The same fingerprint twice in one list.
    #[error("{fingerprint} is listed twice")]
    RepeatedFingerprint {
        /// The fingerprint.
        fingerprint: String,
    },
    /// An identity that is both denylisted and an admin.
    #[error("{fingerprint} is both in 'denylist' and in 'admins'")]
    DeniedAdmin {
        /// The fingerprint.
        fingerprint: String,
    },
    /// A grant (`allow_listen`, `allow_user_namespaces`) at the top level:
    /// grants are given to one identity in its `[users."…"]` table only.
    #[error(
        "a grant applies to one identity: write it in a [users.\"sha256:…\"] table, not at the top level"
    )]
    GrantAtTopLevel,
    /// A value outside the key's range.
    #[error("{value} is out of range: {expected}")]
    OutOfRange {
        /// The value as written.
        value: String,
        /// The accepted range, in words.
        expected: String,
    },
}

/// Why a request was refused before it reached a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Denial {
    /// The identity is on the denylist.
    Denylisted,
    /// The identity exceeded its request rate.
    RateLimited {
        /// When the next request would pass.
        retry_after: Duration,
    },
    /// The identity exceeded its start rate.
    StartRateLimited {
        /// When the next start would pass.
        retry_after: Duration,
    },
}

impl Denial {
    /// A short stable name for the audit log: `denylisted`, `rate_limited`,
    /// `start_rate_limited`.
    pub fn reason(&self) -> &'static str {
        match self {
            Denial::Denylisted => "denylisted",
            Denial::RateLimited { .. } => "rate_limited",
            Denial::StartRateLimited { .. } => "start_rate_limited",
        }
    }
}

/// The RPCs, as the gate and the audit log name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rpc {
    /// `Start`.
    Start,
    /// `Stop`.
    Stop,
    /// Stop every running job of one identity (admins only).
    StopOwner,
    /// `Status`.
    Status,
    /// `List`.
    List,
    /// `Output`.
    Output,
    /// `Stream`.
    Stream,
    /// `Remove`.
    Remove,
}

impl Rpc {
    /// The method name in the proto service, e.g. `Start`.
    pub fn name(&self) -> &'static str {
        match self {
            Rpc::Start => "Start",
            Rpc::Stop => "Stop",
            Rpc::StopOwner => "StopOwner",
            Rpc::Status => "Status",
            Rpc::List => "List",
            Rpc::Output => "Output",
            Rpc::Stream => "Stream",
            Rpc::Remove => "Remove",
        }
    }
}

/// A request that passed the [`Gate`]: the caller, whether the policy made
/// them an admin at that moment, and the quotas their jobs get. Only
/// [`Gate::admit`] makes one, so holding one proves the denylist and rate
/// limits were checked.
#[derive(Clone, Debug)]
pub struct Grant {
    caller: Caller,
    admin: bool,
    quota: JobQuota,
}

impl Grant {
    /// The verified caller.
    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    /// The caller's identity.
    pub fn identity(&self) -> Identity {
        self.caller.identity()
    }

    /// True if the caller is an admin under the policy in force at admission.
    pub fn is_admin(&self) -> bool {
        self.admin
    }

    /// Quotas and limit overrides for the caller's jobs.
    pub fn quota(&self) -> &JobQuota {
        &self.quota
    }
}

/// The policy in force, shared by the server and the reloader. Cloning
/// shares the same policy.
#[derive(Clone, Debug)]
pub struct PolicyHandle {
    current: Arc<watch::Sender<Arc<Policy>>>,
}

impl Default for PolicyHandle {
    /// A handle on [`Policy::default`] (no file).
    fn default() -> Self {
        Self::new(Policy::default())
    }
}

impl PolicyHandle {
    /// A handle on `policy`.
    pub fn new(policy: Policy) -> Self {
        Self {
            current: Arc::new(watch::Sender::new(Arc::new(policy))),
        }
    }

    /// The policy in force now.
    pub fn current(&self) -> Arc<Policy> {
        self.current.borrow().clone()
    }

    /// A receiver that sees every later policy (open streams watch it to
    /// apply a new denylist).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Policy>> {
        self.current.subscribe()
    }

    /// Replaces the policy in force; it applies from the next request, and to
    /// open streams at once. Running jobs are not touched.
    pub fn replace(&self, policy: Policy) {
        self.current.send_replace(Arc::new(policy));
    }

    /// Reads the current policy's file again and puts it in force if it is
    /// valid. Returns the new policy's summary.
    ///
    /// # Errors
    /// [`PolicyError`] (the old policy stays in force) when the file no
    /// longer parses or validates, or [`PolicyErrorKind::Read`] with an empty
    /// path when the policy did not come from a file.
    #[expect(
        clippy::result_large_err,
        reason = "made once per load or reload; its size does not matter"
    )]
    pub fn reload(&self) -> Result<PolicySummary, PolicyError> {
        let Some(path) = self.current().source.clone() else {
            return Err(PolicyError {
                path: PathBuf::new(),
                line: None,
                column: None,
                key: None,
                kind: PolicyErrorKind::Read("jobsd was started without --policy".into()),
            });
        };
        let policy = Policy::load(&path)?;
        let summary = policy.summary();
        self.replace(policy);
        Ok(summary)
    }
}

/// Admits requests: the one place the denylist and the rate limits are
/// applied.
#[derive(Debug)]
pub struct Gate {
    policy: PolicyHandle,
    limiters: Limiters,
}

impl Gate {
    /// A gate applying whatever policy `policy` holds at each request.
    pub fn new(policy: PolicyHandle) -> Self {
        Self {
            policy,
            limiters: Limiters::new(),
        }
    }

    /// The policy handle.
    pub fn policy(&self) -> &PolicyHandle {
        &self.policy
    }

    /// Decides whether `caller` may make an `rpc` request now: refused if
    /// denylisted, then if over its request rate, then (Start only) if over
    /// its start rate. A refused request uses no start token.
    ///
    /// # Errors
    /// The [`Denial`].
    pub fn admit(&self, caller: &Caller, rpc: Rpc) -> Result<Grant, Denial> {
        let policy = self.policy.current();
        let identity = caller.identity();
        if policy.is_denied(&identity) {
            return Err(Denial::Denylisted);
        }
        let rules = policy.rules(&identity);
        self.limiters
            .check_request(identity, rules.requests)
            .map_err(|retry_after| Denial::RateLimited { retry_after })?;
        if rpc == Rpc::Start {
            self.limiters
                .check_start(identity, rules.starts)
                .map_err(|retry_after| Denial::StartRateLimited { retry_after })?;
        }
        Ok(Grant {
            caller: *caller,
            admin: policy.is_admin(&identity),
            quota: rules.jobs,
        })
    }
}

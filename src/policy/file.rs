//! The policy file's TOML format (`policy.example.toml`), parsed strictly.
//!
//! [`read_text`] first fetches the text: only a regular file of at most
//! [`MAX_POLICY_BYTES`] in UTF-8, without ever blocking on what the path
//! names. Parsing then has three steps, each refusing what it cannot vouch
//! for:
//! 1. the TOML parser: syntax, and duplicate keys and tables;
//! 2. serde, with `#[serde(deny_unknown_fields)]` on every table and
//!    `serde_path_to_error` for the dotted key: unknown keys (also a known
//!    key in the wrong table) and wrong types. Every leaf value is kept with
//!    its byte span (`toml::Spanned`);
//! 3. [`Check`]: fingerprints, ranges, repeated fingerprints, an admin on
//!    the denylist and a burst without a rate, with the spans of step 2 so
//!    these errors name line and column too. It also merges each
//!    `[users."…"]` over the top level.
//!
//! Nothing here may be lenient: a misspelled key that quietly meant "no
//! restriction" once switched authentication off (case C27). Whatever is not
//! understood is an error naming file, line, column and key.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::marker::PhantomData;
use std::num::NonZeroU32;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use crate::bounded::BoundedReadError;

use serde::de::{self, Deserialize, Deserializer, Unexpected, Visitor};
use serde_path_to_error::Segment;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::{MAX_POLICY_BYTES, Policy, PolicyError, PolicyErrorKind, Rate, Rules};
use crate::auth::Identity;
use crate::client::units::{parse_cpus, parse_size};
use crate::job::{
    CeilingOverrides, JobPermits, JobQuota, MAX_PIDS, MIN_CPU_MILLIS, MIN_MEMORY_BYTES, MIN_PIDS,
    Override, human_bytes,
};

/// The period of `requests_per_second` and `[handshakes] per_second`.
const SECOND: Duration = Duration::from_secs(1);
/// The period of `starts_per_minute`.
const MINUTE: Duration = Duration::from_secs(60);
/// The one string accepted where a number is expected (sizes aside).
const UNLIMITED: &str = "unlimited";
/// Serde's message for `deny_unknown_fields`, which the toml crate keeps
/// verbatim; the tests pin it.
const UNKNOWN_FIELD: &str = "unknown field `";
/// The TOML parser's message for a repeated key or table.
const DUPLICATE_KEY: &str = "duplicate key";
/// Prefix of the map keys `toml::Spanned` deserializes through; they are
/// not keys of the file and are left out of error paths.
const SPANNED_PRIVATE: &str = "$__serde_spanned_private_";

/// Parses and validates a policy file's text; see the module doc.
#[allow(
    clippy::result_large_err,
    reason = "the signature `Policy::parse` forwards; one error per failed load"
)]
pub(super) fn parse(text: &str, path: &Path) -> Result<Policy, PolicyError> {
    read(text, path).map_err(|problem| {
        let (line, column) = problem.span.map(|s| position(text, s.start)).unzip();
        PolicyError {
            path: path.to_path_buf(),
            line,
            column,
            key: problem.key,
            kind: problem.kind,
        }
    })
}

/// The text of the policy file at `path`, for [`Policy::load`]: a regular
/// file (symlinks followed) of at most [`MAX_POLICY_BYTES`], in UTF-8.
///
/// Nothing here can block or read without end (see [`crate::bounded`]).
#[allow(
    clippy::result_large_err,
    reason = "the signature `Policy::load` forwards; one error per failed load"
)]
pub(super) fn read_text(path: &Path) -> Result<String, PolicyError> {
    let error = |kind| PolicyError {
        path: path.to_path_buf(),
        line: None,
        column: None,
        key: None,
        kind,
    };
    let bytes = crate::bounded::read_bounded(path, MAX_POLICY_BYTES).map_err(|e| match e {
        BoundedReadError::NotRegularFile => error(PolicyErrorKind::NotRegularFile),
        BoundedReadError::TooLarge { max } => error(PolicyErrorKind::TooLarge { max }),
        BoundedReadError::Io(e) => error(PolicyErrorKind::Read(e.to_string())),
    })?;
    String::from_utf8(bytes).map_err(|e| {
        let valid_up_to = e.utf8_error().valid_up_to();
        // The prefix before the first bad byte is valid by definition.
        let before = std::str::from_utf8(&e.as_bytes()[..valid_up_to]).unwrap_or_default();
        let (line, column) = position(before, before.len());
        PolicyError {
            line: Some(line),
            column: Some(column),
            ..error(PolicyErrorKind::NotUtf8)
        }
    })
}

/// What is wrong and where, before the span is turned into line and column.
#[derive(Debug)]
struct Problem {
    /// Bytes of the offending key or value in the text, when known.
    span: Option<Range<usize>>,
    /// Its dotted key, when known.
    key: Option<String>,
    kind: PolicyErrorKind,
}

impl Problem {
    fn new(span: Option<Range<usize>>, key: Option<String>, kind: PolicyErrorKind) -> Self {
        Self { span, key, kind }
    }
}

/// [`parse`], with errors still in bytes.
fn read(text: &str, path: &Path) -> Result<Policy, Problem> {
    let check = Check { text, path };
    let root = DeTable::parse(text).map_err(|e| check.syntax_error(&e))?;
    // The users' keys as written, with their spans: serde hands them over
    // as plain strings, and a malformed one must still point at its line.
    let user_keys: HashMap<String, Range<usize>> = root
        .get_ref()
        .get("users")
        .and_then(|users| users.get_ref().as_table())
        .map(|users| {
            users
                .iter()
                .map(|(key, _)| (key.get_ref().to_string(), key.span()))
                .collect()
        })
        .unwrap_or_default();
    let raw: RawPolicy = serde_path_to_error::deserialize(toml::de::Deserializer::from(root))
        .map_err(|e| check.shape_error(&e))?;
    check.policy(raw, &user_keys)
}

// ---------------------------------------------------------------------------
// Step 2: the shape of the file, as serde sees it.

/// The whole file. Every section is optional: absent means no restriction
/// of that kind.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawPolicy {
    denylist: Option<Vec<Spanned<String>>>,
    admins: Option<Vec<Spanned<String>>>,
    rate: Option<RawRate>,
    quota: Option<RawQuota>,
    limits: Option<RawLimits>,
    handshakes: Option<RawHandshakes>,
    users: Option<BTreeMap<String, RawUser>>,
}

/// `[users."sha256:…"]`: the tables an identity may override, and no others.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawUser {
    rate: Option<RawRate>,
    quota: Option<RawQuota>,
    limits: Option<RawLimits>,
}

/// `[rate]`, top level or per user.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawRate {
    requests_per_second: Field<IntegerOrUnlimited>,
    request_burst: Field<Integer>,
    starts_per_minute: Field<IntegerOrUnlimited>,
    start_burst: Field<Integer>,
}

/// `[quota]`, top level or per user.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawQuota {
    max_running_jobs: Field<IntegerOrUnlimited>,
    max_output_bytes: Field<Size>,
}

/// `[limits]`, top level or per user.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawLimits {
    memory: Field<Size>,
    cpus: Field<Cores>,
    pids: Field<IntegerOrUnlimited>,
    io_read: Field<Size>,
    io_write: Field<Size>,
}

/// `[handshakes]`, top level only: nothing is known of the peer yet.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawHandshakes {
    per_second: Field<Integer>,
    burst: Field<Integer>,
}

/// One optional leaf value, kept with its span for the checks of step 3.
type Field<S> = Option<Spanned<Written<S>>>;

/// A leaf value as written, of one of the TOML types its key accepts
/// (`S`), not yet range-checked.
struct Written<S> {
    scalar: Scalar,
    shape: PhantomData<S>,
}

impl<S> fmt::Debug for Written<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.scalar.fmt(f)
    }
}

/// What a leaf visitor accepted.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Scalar {
    /// A TOML integer.
    Integer(i64),
    /// A TOML float (cores only).
    Float(f64),
    /// A size string such as `"512M"`, in bytes (sizes only).
    Bytes(u64),
    /// The string `"unlimited"`.
    Unlimited,
}

/// The TOML types one kind of key accepts. The expectation is what a
/// wrong-type error says after "expected".
trait Shape {
    const EXPECTING: &'static str;
    const UNLIMITED: bool;
    const SIZE: bool;
    const FLOAT: bool;
}

/// Bursts and handshake rates: an integer.
#[derive(Debug)]
struct Integer;
impl Shape for Integer {
    const EXPECTING: &'static str = "an integer";
    const UNLIMITED: bool = false;
    const SIZE: bool = false;
    const FLOAT: bool = false;
}

/// Rates, `max_running_jobs`, `pids`: an integer or `"unlimited"`.
#[derive(Debug)]
struct IntegerOrUnlimited;
impl Shape for IntegerOrUnlimited {
    const EXPECTING: &'static str = "an integer or \"unlimited\"";
    const UNLIMITED: bool = true;
    const SIZE: bool = false;
    const FLOAT: bool = false;
}

/// Byte counts and byte rates: an integer, a size string or `"unlimited"`.
#[derive(Debug)]
struct Size;
impl Shape for Size {
    const EXPECTING: &'static str =
        "a size (an integer of bytes, or a string like \"512M\" or \"1G\") or \"unlimited\"";
    const UNLIMITED: bool = true;
    const SIZE: bool = true;
    const FLOAT: bool = false;
}

/// CPU cores: an integer, a float or `"unlimited"`.
#[derive(Debug)]
struct Cores;
impl Shape for Cores {
    const EXPECTING: &'static str = "a number of cores (like 2 or 1.5) or \"unlimited\"";
    const UNLIMITED: bool = true;
    const SIZE: bool = false;
    const FLOAT: bool = true;
}

impl<'de, S: Shape> Deserialize<'de> for Written<S> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let scalar = deserializer.deserialize_any(ScalarVisitor::<S>(PhantomData))?;
        Ok(Written {
            scalar,
            shape: PhantomData,
        })
    }
}

/// Accepts exactly the TOML types of `S`; every other type, a string other
/// than `"unlimited"` (sizes aside) or a malformed size is an error.
struct ScalarVisitor<S>(PhantomData<S>);

impl<S: Shape> Visitor<'_> for ScalarVisitor<S> {
    type Value = Scalar;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(S::EXPECTING)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
        Ok(Scalar::Integer(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
        // TOML integers are i64; this is only for other deserializers.
        i64::try_from(v)
            .map(Scalar::Integer)
            .map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &self))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
        if S::FLOAT {
            Ok(Scalar::Float(v))
        } else {
            Err(E::invalid_type(Unexpected::Float(v), &self))
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
        if S::UNLIMITED && v == UNLIMITED {
            Ok(Scalar::Unlimited)
        } else if S::SIZE {
            parse_size(v)
                .map(Scalar::Bytes)
                .map_err(|_| E::invalid_value(Unexpected::Str(v), &self))
        } else {
            Err(E::invalid_type(Unexpected::Str(v), &self))
        }
    }
}

// ---------------------------------------------------------------------------
// Step 3: what serde cannot check, and the merge.

/// One table set's values after range checks: the top level, or one user's
/// overrides. [`Override::Inherit`] and `None` mean "not written here".
#[derive(Clone, Copy, Debug, Default)]
struct Settings {
    requests: Override<NonZeroU32>,
    request_burst: Option<NonZeroU32>,
    starts: Override<NonZeroU32>,
    start_burst: Option<NonZeroU32>,
    max_running_jobs: Override<u32>,
    max_output_bytes: Override<u64>,
    ceilings: CeilingOverrides,
}

impl Settings {
    /// These settings where written, else `base`'s, field by field; see
    /// [`burst_over`] for the bursts.
    fn over(&self, base: &Settings) -> Settings {
        Settings {
            requests: or(self.requests, base.requests),
            request_burst: burst_over(self.request_burst, self.requests, base.request_burst),
            starts: or(self.starts, base.starts),
            start_burst: burst_over(self.start_burst, self.starts, base.start_burst),
            max_running_jobs: or(self.max_running_jobs, base.max_running_jobs),
            max_output_bytes: or(self.max_output_bytes, base.max_output_bytes),
            ceilings: CeilingOverrides {
                memory_bytes: or(self.ceilings.memory_bytes, base.ceilings.memory_bytes),
                cpu_millis: or(self.ceilings.cpu_millis, base.ceilings.cpu_millis),
                pids: or(self.ceilings.pids, base.ceilings.pids),
                io_read_bps: or(self.ceilings.io_read_bps, base.ceilings.io_read_bps),
                io_write_bps: or(self.ceilings.io_write_bps, base.ceilings.io_write_bps),
            },
        }
    }

    /// The rules these (merged) settings make.
    fn rules(&self) -> Rules {
        Rules {
            requests: rate(self.requests, self.request_burst, SECOND),
            starts: rate(self.starts, self.start_burst, MINUTE),
            jobs: JobQuota {
                max_running_jobs: limit(self.max_running_jobs),
                max_output_bytes: limit(self.max_output_bytes),
                ceilings: self.ceilings,
                permits: JobPermits::default(),
            },
        }
    }
}

/// `value` if written, else `base`.
fn or<T>(value: Override<T>, base: Override<T>) -> Override<T> {
    match value {
        Override::Inherit => base,
        written => written,
    }
}

/// A user's burst: their own, else none (so their own rate, in [`rate`])
/// if they set the rate itself, else the top level's.
///
/// A top-level burst is sized for the top-level rate: `request_burst = 1000`
/// beside `requests_per_second = 100` must not give a user throttled to
/// `requests_per_second = 1` a thousand requests at once.
fn burst_over(
    own: Option<NonZeroU32>,
    own_rate: Override<NonZeroU32>,
    base: Option<NonZeroU32>,
) -> Option<NonZeroU32> {
    match (own, own_rate) {
        (Some(burst), _) => Some(burst),
        (None, Override::Inherit) => base,
        (None, Override::Limit(_) | Override::Unlimited) => None,
    }
}

/// A quota: `None` unless a limit is written.
fn limit<T>(value: Override<T>) -> Option<T> {
    match value {
        Override::Limit(v) => Some(v),
        Override::Inherit | Override::Unlimited => None,
    }
}

/// A rate of `count` per `period`; the burst defaults to the count.
fn rate(count: Override<NonZeroU32>, burst: Option<NonZeroU32>, period: Duration) -> Option<Rate> {
    limit(count).map(|count| Rate {
        count,
        period,
        burst: burst.unwrap_or(count),
    })
}

/// The text being checked, and the file it came from.
struct Check<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Check<'_> {
    fn policy(
        &self,
        raw: RawPolicy,
        user_keys: &HashMap<String, Range<usize>>,
    ) -> Result<Policy, Problem> {
        let denylist =
            self.fingerprints(raw.denylist.as_deref().unwrap_or_default(), "denylist")?;
        let admin_list = raw.admins.as_deref().unwrap_or_default();
        let admins = self.fingerprints(admin_list, "admins")?;
        let denied: HashSet<Identity> = denylist.into_iter().collect();
        for (index, (identity, written)) in admins.iter().zip(admin_list).enumerate() {
            if denied.contains(identity) {
                return Err(Problem::new(
                    Some(written.span()),
                    Some(format!("admins[{index}]")),
                    PolicyErrorKind::DeniedAdmin {
                        fingerprint: written.get_ref().clone(),
                    },
                ));
            }
        }

        let top = self.settings(
            "",
            raw.rate.as_ref(),
            raw.quota.as_ref(),
            raw.limits.as_ref(),
            &Settings::default(),
        )?;
        let handshakes = self.handshakes(raw.handshakes.as_ref())?;
        let mut users = HashMap::new();
        for (name, user) in raw.users.unwrap_or_default() {
            let key = format!("users.{}", quote(&name));
            let identity = self.fingerprint(&name, user_keys.get(&name).cloned(), &key)?;
            let own = self.settings(
                &format!("{key}."),
                user.rate.as_ref(),
                user.quota.as_ref(),
                user.limits.as_ref(),
                &top,
            )?;
            users.insert(identity, own.over(&top).rules());
        }

        Ok(Policy {
            source: Some(self.path.to_path_buf()),
            denylist: denied,
            admins: admins.into_iter().collect(),
            defaults: top.rules(),
            users,
            handshakes,
        })
    }

    /// The identities of one list, in order, refusing malformed and repeated
    /// fingerprints.
    fn fingerprints(&self, list: &[Spanned<String>], name: &str) -> Result<Vec<Identity>, Problem> {
        let mut seen = HashSet::new();
        let mut identities = Vec::with_capacity(list.len());
        for (index, written) in list.iter().enumerate() {
            let key = format!("{name}[{index}]");
            let identity = self.fingerprint(written.get_ref(), Some(written.span()), &key)?;
            if !seen.insert(identity) {
                return Err(Problem::new(
                    Some(written.span()),
                    Some(key),
                    PolicyErrorKind::RepeatedFingerprint {
                        fingerprint: written.get_ref().clone(),
                    },
                ));
            }
            identities.push(identity);
        }
        Ok(identities)
    }

    /// The identity `written` names, in the one canonical spelling only.
    fn fingerprint(
        &self,
        written: &str,
        span: Option<Range<usize>>,
        key: &str,
    ) -> Result<Identity, Problem> {
        written.parse().map_err(|_| {
            Problem::new(
                span,
                Some(key.to_owned()),
                PolicyErrorKind::BadFingerprint {
                    value: written.to_owned(),
                },
            )
        })
    }

    /// The range-checked settings of one table set. `prefix` is `""` or
    /// `users."…".`; `base` is what applies where these say nothing (the
    /// top level, for a user), needed to refuse a burst without a rate.
    fn settings(
        &self,
        prefix: &str,
        rate: Option<&RawRate>,
        quota: Option<&RawQuota>,
        limits: Option<&RawLimits>,
        base: &Settings,
    ) -> Result<Settings, Problem> {
        let key = |name: &str| format!("{prefix}{name}");
        let mut own = Settings::default();
        if let Some(rate) = rate {
            own.requests =
                self.count(&rate.requests_per_second, &key("rate.requests_per_second"))?;
            own.starts = self.count(&rate.starts_per_minute, &key("rate.starts_per_minute"))?;
            own.request_burst = self.burst(
                &rate.request_burst,
                &key("rate.request_burst"),
                or(own.requests, base.requests),
                "requests_per_second",
            )?;
            own.start_burst = self.burst(
                &rate.start_burst,
                &key("rate.start_burst"),
                or(own.starts, base.starts),
                "starts_per_minute",
            )?;
        }
        if let Some(quota) = quota {
            own.max_running_jobs = self.checked(
                &quota.max_running_jobs,
                &key("quota.max_running_jobs"),
                || format!("an integer from 0 to {}", u32::MAX),
                |s| integer(s).and_then(|n| u32::try_from(n).ok()),
            )?;
            own.max_output_bytes = self.bytes(
                &quota.max_output_bytes,
                &key("quota.max_output_bytes"),
                1,
                "",
            )?;
        }
        if let Some(limits) = limits {
            own.ceilings = CeilingOverrides {
                memory_bytes: self.bytes(
                    &limits.memory,
                    &key("limits.memory"),
                    MIN_MEMORY_BYTES,
                    "",
                )?,
                cpu_millis: self.checked(
                    &limits.cpus,
                    &key("limits.cpus"),
                    || {
                        let min = f64::from(MIN_CPU_MILLIS) / 1000.0;
                        format!("at least {min} cores, in steps of 0.001")
                    },
                    |s| cpu_millis(s).filter(|&m| m >= MIN_CPU_MILLIS),
                )?,
                pids: self.checked(
                    &limits.pids,
                    &key("limits.pids"),
                    || format!("an integer from {MIN_PIDS} to {MAX_PIDS}"),
                    |s| {
                        integer(s)
                            .and_then(|n| u32::try_from(n).ok())
                            .filter(|n| (MIN_PIDS..=MAX_PIDS).contains(n))
                    },
                )?,
                io_read_bps: self.bytes(
                    &limits.io_read,
                    &key("limits.io_read"),
                    1,
                    " per second",
                )?,
                io_write_bps: self.bytes(
                    &limits.io_write,
                    &key("limits.io_write"),
                    1,
                    " per second",
                )?,
            };
        }
        Ok(own)
    }

    /// `[handshakes]`: per source address, one second period.
    fn handshakes(&self, raw: Option<&RawHandshakes>) -> Result<Option<Rate>, Problem> {
        let Some(raw) = raw else { return Ok(None) };
        let count = self.count(&raw.per_second, "handshakes.per_second")?;
        let burst = self.burst(&raw.burst, "handshakes.burst", count, "per_second")?;
        Ok(rate(count, burst, SECOND))
    }

    /// A rate's count: an integer from 1 (or `"unlimited"` where `S` allows).
    fn count<S: Shape>(
        &self,
        field: &Field<S>,
        key: &str,
    ) -> Result<Override<NonZeroU32>, Problem> {
        self.checked(
            field,
            key,
            || format!("an integer from 1 to {}", u32::MAX),
            positive,
        )
    }

    /// A burst: an integer from 1, only where the rate it belongs to is
    /// limited (`rate`: the value written beside it, else the base's).
    fn burst(
        &self,
        field: &Field<Integer>,
        key: &str,
        rate: Override<NonZeroU32>,
        rate_name: &str,
    ) -> Result<Option<NonZeroU32>, Problem> {
        let burst = self.checked(
            field,
            key,
            || format!("an integer from 1 to {}", u32::MAX),
            positive,
        )?;
        let (written, rate_is) = match (field, rate) {
            (Some(written), Override::Inherit) => (written, "absent"),
            (Some(written), Override::Unlimited) => (written, "\"unlimited\""),
            _ => return Ok(limit(burst)),
        };
        Err(Problem::new(
            Some(written.span()),
            Some(key.to_owned()),
            PolicyErrorKind::OutOfRange {
                value: self.written(written.span()),
                expected: format!("no burst while {rate_name} is {rate_is}"),
            },
        ))
    }

    /// A byte count or byte rate of at least `min` (`"unlimited"` allowed).
    fn bytes(
        &self,
        field: &Field<Size>,
        key: &str,
        min: u64,
        per: &str,
    ) -> Result<Override<u64>, Problem> {
        // The job store keeps byte counts as SQLite integers (i64).
        const MAX: u64 = i64::MAX as u64;
        let expected = || match min {
            1 => format!("at least 1 byte and at most 8 EiB{per}"),
            _ => format!(
                "at least {} ({min} bytes) and at most 8 EiB{per}",
                human_bytes(min)
            ),
        };
        self.checked(field, key, expected, |s| {
            let bytes = match s {
                Scalar::Bytes(b) => Some(b),
                s => integer(s).and_then(|n| u64::try_from(n).ok()),
            };
            bytes.filter(|&b| (min..=MAX).contains(&b))
        })
    }

    /// `field` as written: `Inherit` if absent, `Unlimited` for
    /// `"unlimited"` (only `S` that allow it get there), else `convert`'s
    /// value, or `OutOfRange` with `expected` if `convert` refuses it.
    fn checked<S: Shape, T>(
        &self,
        field: &Field<S>,
        key: &str,
        expected: impl FnOnce() -> String,
        convert: impl FnOnce(Scalar) -> Option<T>,
    ) -> Result<Override<T>, Problem> {
        let Some(written) = field else {
            return Ok(Override::Inherit);
        };
        let scalar = written.get_ref().scalar;
        if matches!(scalar, Scalar::Unlimited) {
            return Ok(Override::Unlimited);
        }
        match convert(scalar) {
            Some(value) => Ok(Override::Limit(value)),
            None => Err(Problem::new(
                Some(written.span()),
                Some(key.to_owned()),
                PolicyErrorKind::OutOfRange {
                    value: self.written(written.span()),
                    expected: if S::UNLIMITED {
                        format!("{}, or \"unlimited\"", expected())
                    } else {
                        expected()
                    },
                },
            )),
        }
    }

    /// The source text of `span`, as the user wrote it.
    fn written(&self, span: Range<usize>) -> String {
        self.text.get(span).unwrap_or_default().to_owned()
    }

    /// A TOML parser error: a duplicate key or table, or any other syntax
    /// error.
    fn syntax_error(&self, e: &toml::de::Error) -> Problem {
        let span = e.span();
        if e.message() == DUPLICATE_KEY {
            let key = span.clone().and_then(|s| self.duplicate_key(s));
            return Problem::new(span, key, PolicyErrorKind::DuplicateKey);
        }
        Problem::new(span, None, PolicyErrorKind::Syntax(e.message().to_owned()))
    }

    /// A serde error: an unknown key or a wrong type.
    fn shape_error(&self, e: &serde_path_to_error::Error<toml::de::Error>) -> Problem {
        let segments: Vec<Seg> = e
            .path()
            .iter()
            .filter_map(|segment| match segment {
                Segment::Map { key } if key.starts_with(SPANNED_PRIVATE) => None,
                Segment::Map { key } | Segment::Enum { variant: key } => {
                    Some(Seg::Key(key.clone()))
                }
                Segment::Seq { index } => Some(Seg::Index(*index)),
                Segment::Unknown => Some(Seg::Key("?".to_owned())),
            })
            .collect();
        let key = (!segments.is_empty()).then(|| render(&segments));
        let message = e.inner().message();
        let kind = match unknown_field_expected(message) {
            Some(expected) => PolicyErrorKind::UnknownKey { expected },
            None => PolicyErrorKind::WrongType(message.to_owned()),
        };
        Problem::new(e.inner().span(), key, kind)
    }

    /// The dotted key of a duplicate whose name is at `span`: the path of
    /// the table header above it, then the (possibly dotted) key written
    /// from the start of its line. `None` where that is not a plain key,
    /// e.g. inside an inline table.
    fn duplicate_key(&self, span: Range<usize>) -> Option<String> {
        // The parser recovers past the error, so the tree has every header
        // with its span; the one just above the duplicate is its table.
        let (tree, _) = DeTable::parse_recoverable(self.text);
        let mut headers = Vec::new();
        collect_headers(tree.get_ref(), self.text, &mut Vec::new(), &mut headers);
        let header = headers
            .into_iter()
            .filter(|(header, _)| header.start <= span.start)
            .max_by_key(|(header, _)| header.start);
        let mut path = match header {
            // The table itself is defined twice.
            Some((header, path)) if span.end <= header.end => return Some(render(&path)),
            Some((_, path)) => path,
            None => Vec::new(),
        };
        let line_start = self
            .text
            .get(..span.start)?
            .rfind('\n')
            .map_or(0, |i| i + 1);
        let written = self.text.get(line_start..span.end)?.trim_start();
        path.extend(key_segments(written)?);
        Some(render(&path))
    }
}

/// The integer, if `s` is one.
fn integer(s: Scalar) -> Option<i64> {
    match s {
        Scalar::Integer(n) => Some(n),
        Scalar::Float(_) | Scalar::Bytes(_) | Scalar::Unlimited => None,
    }
}

/// An integer from 1 to `u32::MAX`.
fn positive(s: Scalar) -> Option<NonZeroU32> {
    integer(s)
        .and_then(|n| u32::try_from(n).ok())
        .and_then(NonZeroU32::new)
}

/// Cores in thousandths, as `parse_cpus` reads them from the CLI: at most
/// three decimals, not negative.
fn cpu_millis(s: Scalar) -> Option<u32> {
    match s {
        Scalar::Integer(n) => u32::try_from(n).ok()?.checked_mul(1000),
        // Display of a finite f64 is its shortest exact decimal, never in
        // exponent form, so `0.5` reads as "0.5" and `1e-4` as "0.0001".
        Scalar::Float(f) if f.is_finite() && f >= 0.0 => parse_cpus(&f.to_string()).ok(),
        Scalar::Float(_) | Scalar::Bytes(_) | Scalar::Unlimited => None,
    }
}

/// The 1-based line and column (in characters) of byte `offset` in `text`.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.matches('\n').count() + 1;
    (line, before[line_start..].chars().count() + 1)
}

/// For serde's `deny_unknown_fields` message, the valid keys it lists
/// ("unknown field `x`, expected one of `a`, `b`"), comma-separated.
fn unknown_field_expected(message: &str) -> Option<String> {
    let rest = message.strip_prefix(UNKNOWN_FIELD)?;
    let listed = match rest.rfind("`, expected ") {
        Some(at) => &rest[at + 2..],
        None => "",
    };
    let names: Vec<&str> = listed.split('`').skip(1).step_by(2).collect();
    Some(names.join(", "))
}

/// One step of a key path.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

/// A key path as TOML writes it: `users."sha256:…".quota`, `denylist[2]`.
fn render(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(key) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&quote(key));
            }
            Seg::Index(index) => out.push_str(&format!("[{index}]")),
        }
    }
    out
}

/// `key` bare if TOML allows it bare, else as a basic string.
fn quote(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        return key.to_owned();
    }
    let mut out = String::from('"');
    for c in key.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The segments of a key as written (`quota.max_running_jobs`,
/// `users."sha256:…"`), or `None` if `written` is not just a key.
fn key_segments(written: &str) -> Option<Vec<Seg>> {
    let line = format!("{written} = 0");
    let tree = DeTable::parse(&line).ok()?;
    let mut table = tree.get_ref();
    let mut path = Vec::new();
    loop {
        let mut entries = table.iter();
        let (key, value) = entries.next()?;
        if entries.next().is_some() {
            return None;
        }
        path.push(Seg::Key(key.get_ref().to_string()));
        match value.get_ref() {
            DeValue::Table(inner) => table = inner,
            _ => return Some(path),
        }
    }
}

/// Every table defined by a `[header]` or `[[header]]` in `table`, with the
/// header's span and the table's path.
fn collect_headers(
    table: &DeTable<'_>,
    text: &str,
    path: &mut Vec<Seg>,
    out: &mut Vec<(Range<usize>, Vec<Seg>)>,
) {
    // A header's table is spanned by the header itself; implicit, dotted
    // and inline tables start with a key or `{`, never `[`.
    let is_header =
        |span: &Range<usize>| text.get(span.clone()).is_some_and(|s| s.starts_with('['));
    for (key, value) in table {
        path.push(Seg::Key(key.get_ref().to_string()));
        match value.get_ref() {
            DeValue::Table(inner) => {
                if is_header(&value.span()) {
                    out.push((value.span(), path.clone()));
                }
                collect_headers(inner, text, path, out);
            }
            DeValue::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    if let DeValue::Table(inner) = item.get_ref() {
                        path.push(Seg::Index(index));
                        if is_header(&item.span()) {
                            out.push((item.span(), path.clone()));
                        }
                        collect_headers(inner, text, path, out);
                        path.pop();
                    }
                }
            }
            _ => {}
        }
        path.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{PolicyChanges, PolicySummary};

    fn fp(name: &str) -> String {
        Identity::from_spki_der(name.as_bytes()).to_string()
    }

    fn id(name: &str) -> Identity {
        Identity::from_spki_der(name.as_bytes())
    }

    fn parsed(text: &str) -> Policy {
        parse(text, Path::new("policy.toml")).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    fn rejected(text: &str) -> PolicyError {
        match parse(text, Path::new("policy.toml")) {
            Ok(p) => panic!("accepted: {p:?}\n{text}"),
            Err(e) => e,
        }
    }

    /// Line, column, key and kind of an error, for one assert.
    fn at(e: &PolicyError) -> (Option<usize>, Option<usize>, Option<&str>, &PolicyErrorKind) {
        (e.line, e.column, e.key.as_deref(), &e.kind)
    }

    /// The column just after `prefix`, e.g. of a value after a fingerprint.
    fn after(prefix: &str) -> usize {
        prefix.chars().count() + 1
    }

    fn n(v: u32) -> NonZeroU32 {
        NonZeroU32::new(v).unwrap()
    }

    fn per_second(count: u32, burst: u32) -> Option<Rate> {
        Some(Rate {
            count: n(count),
            period: SECOND,
            burst: n(burst),
        })
    }

    fn per_minute(count: u32, burst: u32) -> Option<Rate> {
        Some(Rate {
            count: n(count),
            period: MINUTE,
            burst: n(burst),
        })
    }

    fn unknown(expected: &str) -> PolicyErrorKind {
        PolicyErrorKind::UnknownKey {
            expected: expected.to_owned(),
        }
    }

    fn out_of_range(value: &str, expected: &str) -> PolicyErrorKind {
        PolicyErrorKind::OutOfRange {
            value: value.to_owned(),
            expected: expected.to_owned(),
        }
    }

    const TOP_KEYS: &str = "denylist, admins, rate, quota, limits, handshakes, users";
    const RATE_KEYS: &str = "requests_per_second, request_burst, starts_per_minute, start_burst";

    // The documented example parses, and means what its comments say.
    #[test]
    fn the_example_file_parses() {
        let p = parsed(include_str!("../../policy.example.toml"));
        let bad = format!("sha256:{:0>64}", "bad");
        let admin = format!("sha256:{:0>64}", "ad111");
        let robot = format!("sha256:{:0>64}", "c1c1");
        assert!(p.is_denied(&bad.parse().unwrap()));
        assert!(p.is_admin(&admin.parse().unwrap()));
        assert_eq!(
            p.summary(),
            PolicySummary {
                denied: 1,
                admins: 1,
                users: 1
            }
        );
        let top = Rules {
            requests: per_second(20, 40),
            starts: per_minute(30, 5),
            jobs: JobQuota {
                max_running_jobs: Some(16),
                max_output_bytes: Some(1 << 30),
                ceilings: CeilingOverrides {
                    memory_bytes: Override::Limit(1 << 30),
                    cpu_millis: Override::Limit(1500),
                    pids: Override::Limit(512),
                    io_read_bps: Override::Limit(100 << 20),
                    io_write_bps: Override::Limit(100 << 20),
                },
                permits: JobPermits::default(),
            },
        };
        assert_eq!(p.rules(&id("anyone")), &top);
        assert_eq!(
            p.rules(&robot.parse().unwrap()),
            &Rules {
                requests: per_second(20, 40),
                // Its own rate, so not the top-level start_burst of 5.
                starts: per_minute(120, 120),
                jobs: JobQuota {
                    max_running_jobs: Some(100),
                    max_output_bytes: None,
                    ceilings: CeilingOverrides {
                        memory_bytes: Override::Limit(8 << 30),
                        cpu_millis: Override::Limit(4000),
                        ..top.jobs.ceilings
                    },
                    permits: JobPermits::default(),
                },
            }
        );
        assert_eq!(p.handshakes(), per_second(20, 50));
        assert_eq!(p.source(), Some(Path::new("policy.toml")));
    }

    // A file with nothing in it restricts nothing (and is not an error).
    #[test]
    fn an_empty_file_restricts_nothing() {
        for text in ["", "# only a comment\n", "\n\n"] {
            assert_eq!(
                parsed(text),
                Policy {
                    source: Some("policy.toml".into()),
                    ..Policy::default()
                }
            );
        }
    }

    // Every key at once: exact rules, defaults for bursts, users merged
    // field by field over the top level.
    #[test]
    fn a_full_policy_maps_to_exact_rules() {
        let (alice, bob, carol, mallory) = (fp("alice"), fp("bob"), fp("carol"), fp("mallory"));
        let text = format!(
            r#"
denylist = ["{mallory}"]
admins = ["{carol}"]

[rate]
requests_per_second = 10
starts_per_minute = 6
start_burst = 2

[quota]
max_running_jobs = 4
max_output_bytes = 1048576

[limits]
memory = "256M"
cpus = 0.5
pids = 64
io_write = "unlimited"

[handshakes]
per_second = 5

[users."{alice}".rate]
request_burst = 100
starts_per_minute = "unlimited"

[users."{alice}".quota]
max_running_jobs = 0

[users."{alice}".limits]
cpus = 2
io_read = "10M"

[users."{bob}"]
rate = {{ requests_per_second = 1 }}
"#
        );
        let p = parsed(&text);
        assert!(p.is_denied(&id("mallory")) && !p.is_admin(&id("mallory")));
        assert!(p.is_admin(&id("carol")) && !p.is_denied(&id("carol")));
        assert!(!p.is_admin(&id("alice")) && !p.is_denied(&id("alice")));
        let top = Rules {
            requests: per_second(10, 10),
            starts: per_minute(6, 2),
            jobs: JobQuota {
                max_running_jobs: Some(4),
                max_output_bytes: Some(1 << 20),
                ceilings: CeilingOverrides {
                    memory_bytes: Override::Limit(256 << 20),
                    cpu_millis: Override::Limit(500),
                    pids: Override::Limit(64),
                    io_read_bps: Override::Inherit,
                    io_write_bps: Override::Unlimited,
                },
                permits: JobPermits::default(),
            },
        };
        assert_eq!(p.rules(&id("carol")), &top);
        assert_eq!(
            p.rules(&id("alice")),
            &Rules {
                requests: per_second(10, 100),
                starts: None,
                jobs: JobQuota {
                    max_running_jobs: Some(0),
                    max_output_bytes: Some(1 << 20),
                    ceilings: CeilingOverrides {
                        cpu_millis: Override::Limit(2000),
                        io_read_bps: Override::Limit(10 << 20),
                        ..top.jobs.ceilings
                    },
                    permits: JobPermits::default(),
                },
            }
        );
        // Bob's own rate with the top-level burst (none: his own count).
        assert_eq!(
            p.rules(&id("bob")),
            &Rules {
                requests: per_second(1, 1),
                ..top
            }
        );
        assert_eq!(p.handshakes(), per_second(5, 5));
        assert_eq!(
            p.summary(),
            PolicySummary {
                denied: 1,
                admins: 1,
                users: 2
            }
        );
    }

    // The review's trap: a user throttled to 1 request per second must not
    // inherit the 1000-request burst sized for the top-level rate of 100.
    #[test]
    fn a_users_own_rate_does_not_take_the_top_level_burst() {
        let alice = fp("alice");
        let p = parsed(&format!(
            "[rate]\nrequests_per_second = 100\nrequest_burst = 1000\n\
             starts_per_minute = 60\nstart_burst = 600\n\
             [users.\"{alice}\".rate]\nrequests_per_second = 1\nstarts_per_minute = 2\n"
        ));
        assert_eq!(p.rules(&id("alice")).requests, per_second(1, 1));
        assert_eq!(p.rules(&id("alice")).starts, per_minute(2, 2));
        assert_eq!(p.rules(&id("bob")).requests, per_second(100, 1000));
        assert_eq!(p.rules(&id("bob")).starts, per_minute(60, 600));
    }

    // A user who sets only a burst keeps the top-level rate with their
    // burst; one who sets neither inherits both; one who sets both gets both.
    #[test]
    fn a_users_burst_and_rate_are_inherited_field_by_field() {
        let (alice, bob, carol) = (fp("alice"), fp("bob"), fp("carol"));
        let p = parsed(&format!(
            "[rate]\nrequests_per_second = 100\nrequest_burst = 1000\nstarts_per_minute = 6\n\
             [users.\"{alice}\".rate]\nrequest_burst = 5\nstart_burst = 3\n\
             [users.\"{bob}\".quota]\nmax_running_jobs = 1\n\
             [users.\"{carol}\".rate]\nrequests_per_second = 7\nrequest_burst = 70\n"
        ));
        let alice = p.rules(&id("alice"));
        assert_eq!(alice.requests, per_second(100, 5));
        assert_eq!(alice.starts, per_minute(6, 3));
        let bob = p.rules(&id("bob"));
        assert_eq!(bob.requests, per_second(100, 1000));
        // No top-level start_burst: the rate in effect.
        assert_eq!(bob.starts, per_minute(6, 6));
        let carol = p.rules(&id("carol"));
        assert_eq!(carol.requests, per_second(7, 70));
        assert_eq!(carol.starts, per_minute(6, 6));
    }

    // "unlimited" in one user's table lifts the top-level limits for that
    // user only.
    #[test]
    fn unlimited_in_a_user_lifts_a_top_level_limit_for_that_user_only() {
        let alice = fp("alice");
        let p = parsed(&format!(
            r#"
[rate]
requests_per_second = 10
request_burst = 20
[quota]
max_running_jobs = 2
max_output_bytes = "1M"
[limits]
memory = "1G"
[users."{alice}".rate]
requests_per_second = "unlimited"
[users."{alice}".quota]
max_running_jobs = "unlimited"
max_output_bytes = "unlimited"
[users."{alice}".limits]
memory = "unlimited"
"#
        ));
        let alice = p.rules(&id("alice"));
        assert_eq!(alice.requests, None);
        assert_eq!(alice.jobs.max_running_jobs, None);
        assert_eq!(alice.jobs.max_output_bytes, None);
        assert_eq!(alice.jobs.ceilings.memory_bytes, Override::Unlimited);
        let bob = p.rules(&id("bob"));
        assert_eq!(bob.requests, per_second(10, 20));
        assert_eq!(bob.jobs.max_running_jobs, Some(2));
        assert_eq!(bob.jobs.max_output_bytes, Some(1 << 20));
        assert_eq!(bob.jobs.ceilings.memory_bytes, Override::Limit(1 << 30));
    }

    // C27: a misspelled top-level key is an error, not "no denylist".
    #[test]
    fn a_misspelled_key_is_refused() {
        let e = rejected(&format!("denylst = [\"{}\"]\n", fp("mallory")));
        assert_eq!(
            at(&e),
            (Some(1), Some(1), Some("denylst"), &unknown(TOP_KEYS))
        );
        assert_eq!(
            e.to_string(),
            "policy.toml:1:1: key 'denylst': unknown key; expected one of: \
             denylist, admins, rate, quota, limits, handshakes, users"
        );
    }

    // C27: the denylist written under [rate] is not a denylist.
    #[test]
    fn a_known_key_in_the_wrong_table_is_refused() {
        let e = rejected(&format!("[rate]\ndenylist = [\"{}\"]\n", fp("mallory")));
        assert_eq!(
            at(&e),
            (Some(2), Some(1), Some("rate.denylist"), &unknown(RATE_KEYS))
        );
        let e = rejected("[quota]\nmemory = \"1G\"\n");
        assert_eq!(
            at(&e),
            (
                Some(2),
                Some(1),
                Some("quota.memory"),
                &unknown("max_running_jobs, max_output_bytes")
            )
        );
        let e = rejected("[limits]\nmax_pids = 5\n");
        assert_eq!(
            at(&e),
            (
                Some(2),
                Some(1),
                Some("limits.max_pids"),
                &unknown("memory, cpus, pids, io_read, io_write")
            )
        );
        let e = rejected("[handshakes]\nrequests_per_second = 5\n");
        assert_eq!(
            at(&e),
            (
                Some(2),
                Some(1),
                Some("handshakes.requests_per_second"),
                &unknown("per_second, burst")
            )
        );
        // A dotted key names the same place.
        let e = rejected("rate.request = 5\n");
        assert_eq!(
            at(&e),
            (Some(1), Some(6), Some("rate.request"), &unknown(RATE_KEYS))
        );
    }

    // A [users."…"] table may hold only rate, quota and limits: not the
    // denylist, admins or handshakes, nor a typo.
    #[test]
    fn an_unknown_key_in_a_user_table_is_refused() {
        let alice = fp("alice");
        let e = rejected(&format!("[users.\"{alice}\"]\nadmins = []\n"));
        let key = format!("users.\"{alice}\".admins");
        assert_eq!(
            at(&e),
            (
                Some(2),
                Some(1),
                Some(key.as_str()),
                &unknown("rate, quota, limits")
            )
        );
        assert_eq!(
            e.to_string(),
            format!(
                "policy.toml:2:1: key '{key}': unknown key; expected one of: rate, quota, limits"
            )
        );
        let e = rejected(&format!("[users.\"{alice}\".quota]\nmax_jobs = 1\n"));
        let key = format!("users.\"{alice}\".quota.max_jobs");
        assert_eq!(
            at(&e),
            (
                Some(2),
                Some(1),
                Some(key.as_str()),
                &unknown("max_running_jobs, max_output_bytes")
            )
        );
    }

    // C27: a number written as a string is not taken as that number.
    #[test]
    fn a_number_in_a_string_is_refused() {
        let e = rejected("[rate]\nrequests_per_second = \"10\"\n");
        let kind = PolicyErrorKind::WrongType(
            "invalid type: string \"10\", expected an integer or \"unlimited\"".into(),
        );
        assert_eq!(
            at(&e),
            (Some(2), Some(23), Some("rate.requests_per_second"), &kind)
        );
        assert_eq!(
            e.to_string(),
            "policy.toml:2:23: key 'rate.requests_per_second': \
             invalid type: string \"10\", expected an integer or \"unlimited\""
        );
    }

    // Wrong TOML types anywhere are refused with the deserializer's message.
    #[test]
    fn wrong_types_are_refused() {
        let alice = fp("alice");
        let cases: &[(&str, usize, usize, &str, &str)] = &[
            (
                &format!("denylist = \"{alice}\"\n"),
                1,
                12,
                "denylist",
                &format!("invalid type: string \"{alice}\", expected a sequence"),
            ),
            (
                "admins = [1]\n",
                1,
                11,
                "admins[0]",
                "invalid type: integer `1`, expected a string",
            ),
            (
                "[quota]\nmax_running_jobs = 1.5\n",
                2,
                20,
                "quota.max_running_jobs",
                "invalid type: floating point `1.5`, expected an integer or \"unlimited\"",
            ),
            (
                "[rate]\nstart_burst = \"unlimited\"\n",
                2,
                15,
                "rate.start_burst",
                "invalid type: string \"unlimited\", expected an integer",
            ),
            (
                "[limits]\ncpus = \"fast\"\n",
                2,
                8,
                "limits.cpus",
                "invalid type: string \"fast\", expected a number of cores (like 2 or 1.5) or \"unlimited\"",
            ),
            (
                "[limits]\ncpus = \"1.5\"\n",
                2,
                8,
                "limits.cpus",
                "invalid type: string \"1.5\", expected a number of cores (like 2 or 1.5) or \"unlimited\"",
            ),
            (
                "[limits]\nmemory = \"1.5G\"\n",
                2,
                10,
                "limits.memory",
                "invalid value: string \"1.5G\", expected a size (an integer of bytes, or a string like \"512M\" or \"1G\") or \"unlimited\"",
            ),
            (
                "[limits]\npids = true\n",
                2,
                8,
                "limits.pids",
                "invalid type: boolean `true`, expected an integer or \"unlimited\"",
            ),
            (
                "rate = 5\n",
                1,
                8,
                "rate",
                "invalid type: integer `5`, expected a table",
            ),
            (
                &format!("[users]\n\"{alice}\" = 1\n"),
                2,
                after(&format!("\"{alice}\" = ")),
                &format!("users.\"{alice}\""),
                "invalid type: integer `1`, expected a table",
            ),
        ];
        for (text, line, column, key, message) in cases {
            let e = rejected(text);
            let kind = PolicyErrorKind::WrongType((*message).to_owned());
            assert_eq!(
                at(&e),
                (Some(*line), Some(*column), Some(*key), &kind),
                "{text}"
            );
        }
    }

    // Fingerprints have one spelling; anything else is refused wherever it
    // is written, not normalised or skipped.
    #[test]
    fn malformed_fingerprints_are_refused() {
        let good = fp("alice");
        let hex = good.strip_prefix("sha256:").unwrap();
        let bad = [
            format!("sha256:{}", hex.to_uppercase()),
            hex.to_owned(),
            format!("SHA256:{hex}"),
            format!("sha256:{}", &hex[..63]),
            format!("sha256:{hex}0"),
            format!("sha256:{}g", &hex[..63]),
            format!("sha256: {hex}"),
            String::new(),
        ];
        for value in &bad {
            let kind = PolicyErrorKind::BadFingerprint {
                value: value.clone(),
            };
            let e = rejected(&format!("denylist = [\"{good}\", \"{value}\"]\n"));
            assert_eq!(
                at(&e),
                (
                    Some(1),
                    Some(after(&format!("denylist = [\"{good}\", "))),
                    Some("denylist[1]"),
                    &kind
                ),
                "{value}"
            );
            let e = rejected(&format!("admins = [\n  \"{value}\",\n]\n"));
            assert_eq!(
                at(&e),
                (Some(2), Some(3), Some("admins[0]"), &kind),
                "{value}"
            );
            let e = rejected(&format!(
                "[users.\"{value}\".quota]\nmax_running_jobs = 1\n"
            ));
            let key = format!("users.{}", quote(value));
            assert_eq!(
                at(&e),
                (Some(1), Some(8), Some(key.as_str()), &kind),
                "{value}"
            );
        }
        let e = rejected(&format!("denylist = [\"{}\"]\n", hex.to_uppercase()));
        assert_eq!(
            e.to_string(),
            format!(
                "policy.toml:1:13: key 'denylist[0]': '{}' is not a fingerprint: write 'sha256:' \
                 and 64 lower-case hex digits, as `jobs-ca fingerprint` prints",
                hex.to_uppercase()
            )
        );
    }

    // A bare users key (no quotes) that is not a fingerprint is refused too.
    #[test]
    fn a_bare_user_key_is_refused() {
        let e = rejected("[users.alice]\nquota.max_running_jobs = 1\n");
        let kind = PolicyErrorKind::BadFingerprint {
            value: "alice".into(),
        };
        assert_eq!(at(&e), (Some(1), Some(8), Some("users.alice"), &kind));
    }

    // The same fingerprint twice in one list is a mistake worth knowing of.
    #[test]
    fn a_repeated_fingerprint_is_refused() {
        let (alice, bob) = (fp("alice"), fp("bob"));
        let e = rejected(&format!(
            "denylist = [\n  \"{alice}\",\n  \"{bob}\",\n  \"{alice}\",\n]\n"
        ));
        let kind = PolicyErrorKind::RepeatedFingerprint {
            fingerprint: alice.clone(),
        };
        assert_eq!(at(&e), (Some(4), Some(3), Some("denylist[2]"), &kind));
        let e = rejected(&format!("admins = [\"{bob}\", \"{bob}\"]\n"));
        let kind = PolicyErrorKind::RepeatedFingerprint {
            fingerprint: bob.clone(),
        };
        assert_eq!(
            at(&e),
            (
                Some(1),
                Some(after(&format!("admins = [\"{bob}\", "))),
                Some("admins[1]"),
                &kind
            )
        );
    }

    // One identity cannot be both refused and an admin.
    #[test]
    fn a_denied_admin_is_refused() {
        let (alice, bob) = (fp("alice"), fp("bob"));
        let e = rejected(&format!(
            "denylist = [\"{alice}\"]\nadmins = [\"{bob}\", \"{alice}\"]\n"
        ));
        let kind = PolicyErrorKind::DeniedAdmin {
            fingerprint: alice.clone(),
        };
        assert_eq!(
            at(&e),
            (
                Some(2),
                Some(after(&format!("admins = [\"{bob}\", "))),
                Some("admins[1]"),
                &kind
            )
        );
        assert_eq!(
            e.to_string(),
            format!(
                "policy.toml:2:{}: key 'admins[1]': {alice} is both in 'denylist' and in 'admins'",
                after(&format!("admins = [\"{bob}\", "))
            )
        );
    }

    // A key written twice is refused by the TOML parser; we name it.
    #[test]
    fn a_duplicate_key_is_refused() {
        let e = rejected("[quota]\nmax_running_jobs = 1\nmax_running_jobs = 1\n");
        assert_eq!(
            at(&e),
            (
                Some(3),
                Some(1),
                Some("quota.max_running_jobs"),
                &PolicyErrorKind::DuplicateKey
            )
        );
        assert_eq!(
            e.to_string(),
            "policy.toml:3:1: key 'quota.max_running_jobs': duplicate key"
        );
        let e = rejected("admins = []\ndenylist = []\n  admins = []\n");
        assert_eq!(
            at(&e),
            (
                Some(3),
                Some(3),
                Some("admins"),
                &PolicyErrorKind::DuplicateKey
            )
        );
        let e = rejected("quota.max_running_jobs = 1\nquota . \"max_running_jobs\" = 2\n");
        assert_eq!(
            at(&e),
            (
                Some(2),
                Some(9),
                Some("quota.max_running_jobs"),
                &PolicyErrorKind::DuplicateKey
            )
        );
        let alice = fp("alice");
        let e = rejected(&format!(
            "[quota]\nmax_running_jobs = 1\n[users.\"{alice}\"]\nquota.max_running_jobs = 1\n\
             [rate]\n[users.\"{alice}\".quota]\n"
        ));
        let key = format!("users.\"{alice}\".quota");
        assert_eq!(
            at(&e),
            (
                Some(6),
                Some(after(&format!("[users.\"{alice}\"."))),
                Some(key.as_str()),
                &PolicyErrorKind::DuplicateKey
            )
        );
        // Inside an inline table the key path is not recovered; the line is.
        let e = rejected("[quota]\nx = { a = 1, a = 2 }\n");
        assert_eq!(
            at(&e),
            (Some(2), Some(14), None, &PolicyErrorKind::DuplicateKey)
        );
    }

    // A table defined twice is refused as a duplicate of its header.
    #[test]
    fn a_duplicate_table_is_refused() {
        let e = rejected("[quota]\nmax_running_jobs = 1\n\n[quota]\nmax_output_bytes = 1\n");
        assert_eq!(
            at(&e),
            (
                Some(4),
                Some(2),
                Some("quota"),
                &PolicyErrorKind::DuplicateKey
            )
        );
        let alice = fp("alice");
        let e = rejected(&format!(
            "[users.\"{alice}\".rate]\n[rate]\n[users.\"{alice}\".rate]\n"
        ));
        let key = format!("users.\"{alice}\".rate");
        assert_eq!(
            at(&e),
            (
                Some(3),
                Some(after(&format!("[users.\"{alice}\"."))),
                Some(key.as_str()),
                &PolicyErrorKind::DuplicateKey
            )
        );
    }

    // Not TOML at all: the parser's message, with line and column.
    #[test]
    fn a_syntax_error_is_refused() {
        let e = rejected("[rate]\nrequests_per_second = 10\nstart_burst = \n");
        assert_eq!(
            at(&e),
            (
                Some(3),
                Some(15),
                None,
                &PolicyErrorKind::Syntax(
                    "string values must be quoted, expected literal string".into()
                )
            )
        );
        let e = rejected("[rate\n");
        assert_eq!(
            at(&e),
            (
                Some(1),
                Some(6),
                None,
                &PolicyErrorKind::Syntax("unclosed table, expected `]`".into())
            )
        );
    }

    // A burst needs a limited rate in effect beside it, at the top level and
    // per user.
    #[test]
    fn a_burst_without_a_rate_is_refused() {
        let e = rejected("[rate]\nrequest_burst = 40\n");
        let kind = out_of_range("40", "no burst while requests_per_second is absent");
        assert_eq!(
            at(&e),
            (Some(2), Some(17), Some("rate.request_burst"), &kind)
        );
        assert_eq!(
            e.to_string(),
            "policy.toml:2:17: key 'rate.request_burst': 40 is out of range: \
             no burst while requests_per_second is absent"
        );
        let e = rejected("[rate]\nstarts_per_minute = \"unlimited\"\nstart_burst = 5\n");
        let kind = out_of_range("5", "no burst while starts_per_minute is \"unlimited\"");
        assert_eq!(at(&e), (Some(3), Some(15), Some("rate.start_burst"), &kind));
        let e = rejected("[handshakes]\nburst = 50\n");
        let kind = out_of_range("50", "no burst while per_second is absent");
        assert_eq!(at(&e), (Some(2), Some(9), Some("handshakes.burst"), &kind));
        // A user's burst, with the user's rate lifted.
        let alice = fp("alice");
        let e = rejected(&format!(
            "[rate]\nrequests_per_second = 1\n[users.\"{alice}\".rate]\n\
             requests_per_second = \"unlimited\"\nrequest_burst = 9\n"
        ));
        let key = format!("users.\"{alice}\".rate.request_burst");
        let kind = out_of_range("9", "no burst while requests_per_second is \"unlimited\"");
        assert_eq!(at(&e), (Some(5), Some(17), Some(key.as_str()), &kind));
        // A user's burst with no rate anywhere.
        let e = rejected(&format!("[users.\"{alice}\".rate]\nstart_burst = 9\n"));
        let key = format!("users.\"{alice}\".rate.start_burst");
        let kind = out_of_range("9", "no burst while starts_per_minute is absent");
        assert_eq!(at(&e), (Some(2), Some(15), Some(key.as_str()), &kind));
        // A user's burst over the top-level rate is fine, and a top-level
        // burst does not stop a user's rate from being lifted.
        let p = parsed(&format!(
            "[rate]\nstarts_per_minute = 3\nstart_burst = 1\n\
             [users.\"{alice}\".rate]\nstart_burst = 9\n\
             [users.\"{}\".rate]\nstarts_per_minute = \"unlimited\"\n",
            fp("bob")
        ));
        assert_eq!(p.rules(&id("alice")).starts, per_minute(3, 9));
        assert_eq!(p.rules(&id("bob")).starts, None);
        assert_eq!(p.rules(&id("carol")).starts, per_minute(3, 1));
    }

    // Values outside their key's range are refused, naming the range.
    #[test]
    fn out_of_range_values_are_refused() {
        let max = u32::MAX;
        let rate = format!("an integer from 1 to {max}, or \"unlimited\"");
        let burst = format!("an integer from 1 to {max}");
        let memory = "at least 4.0 MiB (4194304 bytes) and at most 8 EiB, or \"unlimited\"";
        let cases: Vec<(String, &str, &str, String)> = vec![
            (
                "[rate]\nrequests_per_second = 0".into(),
                "rate.requests_per_second",
                "0",
                rate.clone(),
            ),
            (
                "[rate]\nstarts_per_minute = -5".into(),
                "rate.starts_per_minute",
                "-5",
                rate.clone(),
            ),
            (
                "[rate]\nrequests_per_second = 4294967296".into(),
                "rate.requests_per_second",
                "4294967296",
                rate,
            ),
            (
                "[rate]\nrequests_per_second = 1\nrequest_burst = 0".into(),
                "rate.request_burst",
                "0",
                burst.clone(),
            ),
            (
                "[handshakes]\nper_second = 0".into(),
                "handshakes.per_second",
                "0",
                burst.clone(),
            ),
            (
                "[handshakes]\nper_second = 1\nburst = 0".into(),
                "handshakes.burst",
                "0",
                burst,
            ),
            (
                "[quota]\nmax_running_jobs = -1".into(),
                "quota.max_running_jobs",
                "-1",
                format!("an integer from 0 to {max}, or \"unlimited\""),
            ),
            (
                "[quota]\nmax_output_bytes = 0".into(),
                "quota.max_output_bytes",
                "0",
                "at least 1 byte and at most 8 EiB, or \"unlimited\"".into(),
            ),
            (
                "[quota]\nmax_output_bytes = \"0M\"".into(),
                "quota.max_output_bytes",
                "\"0M\"",
                "at least 1 byte and at most 8 EiB, or \"unlimited\"".into(),
            ),
            (
                "[limits]\nmemory = \"1M\"".into(),
                "limits.memory",
                "\"1M\"",
                memory.into(),
            ),
            (
                "[limits]\nmemory = 4194303".into(),
                "limits.memory",
                "4194303",
                memory.into(),
            ),
            (
                "[limits]\npids = 4194305".into(),
                "limits.pids",
                "4194305",
                "an integer from 2 to 4194304, or \"unlimited\"".into(),
            ),
            (
                "[limits]\npids = 1".into(),
                "limits.pids",
                "1",
                "an integer from 2 to 4194304, or \"unlimited\"".into(),
            ),
            (
                "[limits]\ncpus = 0.001".into(),
                "limits.cpus",
                "0.001",
                "at least 0.01 cores, in steps of 0.001, or \"unlimited\"".into(),
            ),
            (
                "[limits]\ncpus = 0".into(),
                "limits.cpus",
                "0",
                "at least 0.01 cores, in steps of 0.001, or \"unlimited\"".into(),
            ),
            (
                "[limits]\ncpus = 1.0005".into(),
                "limits.cpus",
                "1.0005",
                "at least 0.01 cores, in steps of 0.001, or \"unlimited\"".into(),
            ),
            (
                "[limits]\ncpus = -1.5".into(),
                "limits.cpus",
                "-1.5",
                "at least 0.01 cores, in steps of 0.001, or \"unlimited\"".into(),
            ),
            (
                "[limits]\ncpus = inf".into(),
                "limits.cpus",
                "inf",
                "at least 0.01 cores, in steps of 0.001, or \"unlimited\"".into(),
            ),
            (
                "[limits]\ncpus = 5000000".into(),
                "limits.cpus",
                "5000000",
                "at least 0.01 cores, in steps of 0.001, or \"unlimited\"".into(),
            ),
            (
                "[limits]\nio_read = 0".into(),
                "limits.io_read",
                "0",
                "at least 1 byte and at most 8 EiB per second, or \"unlimited\"".into(),
            ),
            (
                // Byte counts are stored as SQLite (signed 64-bit) integers.
                "[quota]\nmax_output_bytes = \"8388608T\"".into(),
                "quota.max_output_bytes",
                "\"8388608T\"",
                "at least 1 byte and at most 8 EiB, or \"unlimited\"".into(),
            ),
        ];
        for (text, key, value, expected) in &cases {
            let e = rejected(text);
            let column = text.rsplit('\n').next().unwrap().find(" = ").unwrap() + 4;
            let line = text.lines().count();
            assert_eq!(
                at(&e),
                (
                    Some(line),
                    Some(column),
                    Some(*key),
                    &out_of_range(value, expected)
                ),
                "{text}"
            );
        }
    }

    // The smallest and largest accepted values are accepted, and units
    // convert as in the CLI.
    #[test]
    fn range_bounds_and_units_are_accepted() {
        let p = parsed(
            "[rate]\nrequests_per_second = 4294967295\nrequest_burst = 1\n\
             [quota]\nmax_running_jobs = 0\nmax_output_bytes = 1\n\
             [limits]\nmemory = \"4M\"\ncpus = 0.01\npids = 4194304\nio_read = 1\nio_write = \"1k\"\n",
        );
        let r = p.rules(&id("anyone"));
        assert_eq!(
            r.requests,
            Some(Rate {
                count: n(u32::MAX),
                period: SECOND,
                burst: n(1)
            })
        );
        assert_eq!(r.jobs.max_running_jobs, Some(0));
        assert_eq!(r.jobs.max_output_bytes, Some(1));
        assert_eq!(
            r.jobs.ceilings,
            CeilingOverrides {
                memory_bytes: Override::Limit(MIN_MEMORY_BYTES),
                cpu_millis: Override::Limit(MIN_CPU_MILLIS),
                pids: Override::Limit(MAX_PIDS),
                io_read_bps: Override::Limit(1),
                io_write_bps: Override::Limit(1024),
            }
        );
        let p = parsed("[limits]\ncpus = 1.125\npids = 2\n");
        let c = p.rules(&id("anyone")).jobs.ceilings;
        assert_eq!(
            (c.cpu_millis, c.pids),
            (Override::Limit(1125), Override::Limit(MIN_PIDS))
        );
    }

    // Keys that need quotes are quoted in messages, as TOML would write them.
    #[test]
    fn odd_keys_are_quoted_in_messages() {
        let e = rejected("\"deny list\" = []\n");
        assert_eq!(
            at(&e),
            (Some(1), Some(1), Some("\"deny list\""), &unknown(TOP_KEYS))
        );
        assert_eq!(quote("a\"b\\c\u{1}"), "\"a\\\"b\\\\c\\u0001\"");
        assert_eq!(quote(""), "\"\"");
        assert_eq!(quote("max_running-jobs2"), "max_running-jobs2");
    }

    /// `Policy::load(path)`'s error, which must come promptly: a load that
    /// blocks (a FIFO without a writer) fails the test instead of hanging it.
    fn load_refused(path: &Path) -> PolicyError {
        let (done, result) = std::sync::mpsc::channel();
        let owned = path.to_path_buf();
        std::thread::spawn(move || {
            // The receiver is gone only after a timeout, which already fails.
            let _ = done.send(Policy::load(&owned));
        });
        match result.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(p)) => panic!("{} accepted: {p:?}", path.display()),
            Ok(Err(e)) => e,
            Err(_) => panic!("Policy::load({}) blocked", path.display()),
        }
    }

    /// A load error with no position: just the file and the kind.
    fn whole_file(path: &Path, kind: PolicyErrorKind) -> PolicyError {
        PolicyError {
            path: path.to_path_buf(),
            line: None,
            column: None,
            key: None,
            kind,
        }
    }

    // `--policy fifo` once blocked jobsd (and a SIGHUP reload, the whole
    // server) forever waiting for a writer; it is refused at once.
    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("p.toml");
        nix::unistd::mkfifo(
            &fifo,
            nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
        )
        .unwrap();
        let e = load_refused(&fifo);
        assert_eq!(e, whole_file(&fifo, PolicyErrorKind::NotRegularFile));
        assert_eq!(
            e.to_string(),
            format!("{}: not a regular file", fifo.display())
        );
    }

    // Devices are refused unread: /dev/null is not an empty policy, and
    // /dev/zero does not grow memory without bound.
    #[test]
    fn devices_are_refused() {
        for device in ["/dev/null", "/dev/zero"] {
            let device = Path::new(device);
            assert_eq!(
                load_refused(device),
                whole_file(device, PolicyErrorKind::NotRegularFile)
            );
        }
    }

    // A directory is not a policy either.
    #[test]
    fn a_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            load_refused(dir.path()),
            whole_file(dir.path(), PolicyErrorKind::NotRegularFile)
        );
    }

    // A file over the cap is refused before it is read; one exactly at the
    // cap is read.
    #[test]
    fn a_file_over_the_cap_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cap = usize::try_from(MAX_POLICY_BYTES).unwrap();
        let big = dir.path().join("big.toml");
        std::fs::write(&big, format!("#{}\n", "x".repeat(cap - 1))).unwrap();
        let e = load_refused(&big);
        assert_eq!(
            e,
            whole_file(
                &big,
                PolicyErrorKind::TooLarge {
                    max: MAX_POLICY_BYTES
                }
            )
        );
        assert_eq!(
            e.to_string(),
            format!("{}: the file is larger than 1048576 bytes", big.display())
        );
        let at_cap = dir.path().join("at_cap.toml");
        std::fs::write(&at_cap, format!("#{}\n", "x".repeat(cap - 2))).unwrap();
        assert_eq!(std::fs::metadata(&at_cap).unwrap().len(), MAX_POLICY_BYTES);
        let p = Policy::load(&at_cap).unwrap();
        assert_eq!(p.summary(), Policy::default().summary());
    }

    // Operators point --policy at a symlink they swap; it is followed, and
    // the policy remembers the link (so a reload reads the new target).
    #[test]
    fn a_symlink_to_a_regular_file_is_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("v1.toml");
        std::fs::write(&target, format!("denylist = [\"{}\"]\n", fp("mallory"))).unwrap();
        let link = dir.path().join("policy.toml");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let p = Policy::load(&link).unwrap();
        assert!(p.is_denied(&id("mallory")));
        assert_eq!(p.source(), Some(link.as_path()));
        // A symlink to something that is not a regular file is still refused.
        let to_null = dir.path().join("null.toml");
        std::os::unix::fs::symlink("/dev/null", &to_null).unwrap();
        assert_eq!(
            load_refused(&to_null),
            whole_file(&to_null, PolicyErrorKind::NotRegularFile)
        );
    }

    // A file that is not UTF-8 is refused, pointing at the first bad byte.
    #[test]
    fn a_file_not_in_utf8_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latin1.toml");
        std::fs::write(&path, b"denylist = []\n# caf\xe9\n").unwrap();
        let e = load_refused(&path);
        assert_eq!(
            e,
            PolicyError {
                line: Some(2),
                column: Some(6),
                ..whole_file(&path, PolicyErrorKind::NotUtf8)
            }
        );
        assert_eq!(
            e.to_string(),
            format!("{}:2:6: not UTF-8 text", path.display())
        );
    }

    // A missing file is a read error with the OS's reason.
    #[test]
    fn a_missing_file_is_a_read_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.toml");
        assert_eq!(
            load_refused(&path),
            whole_file(
                &path,
                PolicyErrorKind::Read("No such file or directory (os error 2)".into())
            )
        );
    }

    // A reload that takes identities off the denylist or the admins says so,
    // counted each way.
    #[test]
    fn changes_count_identities_added_and_removed() {
        let (a, b, c, d, e) = (fp("a"), fp("b"), fp("c"), fp("d"), fp("e"));
        let old = parsed(&format!(
            "denylist = [\"{a}\", \"{b}\"]\nadmins = [\"{c}\"]\n"
        ));
        let new = parsed(&format!(
            "denylist = [\"{b}\", \"{d}\", \"{e}\"]\nadmins = [\"{a}\"]\n"
        ));
        assert_eq!(
            new.changes_from(&old),
            PolicyChanges {
                denied_added: 2,
                denied_removed: 1,
                admins_added: 1,
                admins_removed: 1,
            }
        );
        assert_eq!(
            old.changes_from(&new),
            PolicyChanges {
                denied_added: 1,
                denied_removed: 2,
                admins_added: 1,
                admins_removed: 1,
            }
        );
        let none = PolicyChanges {
            denied_added: 0,
            denied_removed: 0,
            admins_added: 0,
            admins_removed: 0,
        };
        assert_eq!(new.changes_from(&new), none);
        // Rates and quotas are not counted.
        assert_eq!(
            parsed("[rate]\nrequests_per_second = 1\n").changes_from(&Policy::default()),
            none
        );
        assert_eq!(
            Policy::default().changes_from(&old),
            PolicyChanges {
                denied_removed: 2,
                admins_removed: 1,
                ..none
            }
        );
    }

    // Line and column count characters, not bytes, from 1.
    #[test]
    fn positions_are_one_based_characters() {
        assert_eq!(position("", 0), (1, 1));
        assert_eq!(position("ab\ncd", 3), (2, 1));
        assert_eq!(position("ab\ncd", 4), (2, 2));
        assert_eq!(position("é = 1\nx", 3), (1, 3));
        assert_eq!(position("ab", 99), (1, 3));
    }
}

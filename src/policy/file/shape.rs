//! Step 2 of parsing: the shape of the file as serde sees it, every leaf
//! kept with its span and checked for its TOML type only.

#[allow(clippy::wildcard_imports)]
use super::*;

/// The whole file. Every section is optional: absent means no restriction
/// of that kind.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawPolicy {
    pub(super) denylist: Option<Vec<Spanned<String>>>,
    pub(super) admins: Option<Vec<Spanned<String>>>,
    pub(super) rate: Option<RawRate>,
    pub(super) quota: Option<RawQuota>,
    pub(super) limits: Option<RawLimits>,
    pub(super) handshakes: Option<RawHandshakes>,
    pub(super) identity_limits: Option<RawIdentityLimits>,
    /// What happens to the running jobs of an identity that becomes revoked
    /// or denylisted ([`Policy::keep_jobs_when_banned`]).
    pub(super) keep_jobs_when_banned: Option<bool>,
    pub(super) users: Option<BTreeMap<String, RawUser>>,
}

/// `[users."sha256:…"]`: the tables an identity may override, and no others.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawUser {
    pub(super) rate: Option<RawRate>,
    pub(super) quota: Option<RawQuota>,
    pub(super) limits: Option<RawLimits>,
    pub(super) identity_limits: Option<RawIdentityLimits>,
    /// The grant to bind ports and listen ([`crate::limits::JobPermits::listen`]).
    pub(super) allow_listen: Option<bool>,
    /// The grant to make user namespaces
    /// ([`crate::limits::JobPermits::user_namespaces`]).
    pub(super) allow_user_namespaces: Option<bool>,
}

/// `[identity_limits]`, top level or per user: all of one identity's
/// running jobs together.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawIdentityLimits {
    pub(super) memory: Field<Size>,
    pub(super) cpus: Field<Cores>,
    pub(super) pids: Field<IntegerOrUnlimited>,
}

/// `[rate]`, top level or per user.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawRate {
    pub(super) requests_per_second: Field<IntegerOrUnlimited>,
    pub(super) request_burst: Field<Integer>,
    pub(super) starts_per_minute: Field<IntegerOrUnlimited>,
    pub(super) start_burst: Field<Integer>,
}

/// `[quota]`, top level or per user.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawQuota {
    pub(super) max_running_jobs: Field<IntegerOrUnlimited>,
    pub(super) max_output_bytes: Field<Size>,
}

/// `[limits]`, top level or per user.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawLimits {
    pub(super) memory: Field<Size>,
    pub(super) cpus: Field<Cores>,
    pub(super) pids: Field<IntegerOrUnlimited>,
    pub(super) io_read: Field<Size>,
    pub(super) io_write: Field<Size>,
}

/// `[handshakes]`, top level only: nothing is known of the peer yet.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawHandshakes {
    pub(super) per_second: Field<Integer>,
    pub(super) burst: Field<Integer>,
}

/// One optional leaf value, kept with its span for the checks of step 3.
pub(super) type Field<S> = Option<Spanned<Written<S>>>;

/// A leaf value as written, of one of the TOML types its key accepts
/// (`S`), not yet range-checked.
pub(super) struct Written<S> {
    pub(super) scalar: Scalar,
    pub(super) shape: PhantomData<S>,
}

impl<S> fmt::Debug for Written<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.scalar.fmt(f)
    }
}

/// What a leaf visitor accepted.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Scalar {
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
pub(super) trait Shape {
    const EXPECTING: &'static str;
    const UNLIMITED: bool;
    const SIZE: bool;
    const FLOAT: bool;
}

/// Bursts and handshake rates: an integer.
#[derive(Debug)]
pub(super) struct Integer;
impl Shape for Integer {
    const EXPECTING: &'static str = "an integer";
    const UNLIMITED: bool = false;
    const SIZE: bool = false;
    const FLOAT: bool = false;
}

/// Rates, `max_running_jobs`, `pids`: an integer or `"unlimited"`.
#[derive(Debug)]
pub(super) struct IntegerOrUnlimited;
impl Shape for IntegerOrUnlimited {
    const EXPECTING: &'static str = "an integer or \"unlimited\"";
    const UNLIMITED: bool = true;
    const SIZE: bool = false;
    const FLOAT: bool = false;
}

/// Byte counts and byte rates: an integer, a size string or `"unlimited"`.
#[derive(Debug)]
pub(super) struct Size;
impl Shape for Size {
    const EXPECTING: &'static str =
        "a size (an integer of bytes, or a string like \"512M\" or \"1G\") or \"unlimited\"";
    const UNLIMITED: bool = true;
    const SIZE: bool = true;
    const FLOAT: bool = false;
}

/// CPU cores: an integer, a float or `"unlimited"`.
#[derive(Debug)]
pub(super) struct Cores;
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
pub(super) struct ScalarVisitor<S>(PhantomData<S>);

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

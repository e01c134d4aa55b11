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
use crate::limits::{
    CeilingOverrides, JobPermits, JobQuota, MAX_PIDS, MIN_CPU_MILLIS, MIN_MEMORY_BYTES, MIN_PIDS,
    Override, human_bytes,
};

/// The period of `requests_per_second` and `[handshakes] per_second`.
const SECOND: Duration = Duration::from_secs(1);
/// The period of `starts_per_minute`.
const MINUTE: Duration = Duration::from_secs(60);
/// The keys of `[users."…"]` that grant more than the default sandbox; not
/// accepted at the top level.
const GRANTS: [&str; 2] = ["allow_listen", "allow_user_namespaces"];
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
    // A grant is given to one identity by name, never to everyone: refused
    // here with its own message rather than as just an unknown key.
    if let Some((key, _)) = root
        .get_ref()
        .iter()
        .find(|(key, _)| GRANTS.contains(&key.get_ref().as_ref()))
    {
        return Err(Problem::new(
            Some(key.span()),
            Some(key.get_ref().to_string()),
            PolicyErrorKind::GrantAtTopLevel,
        ));
    }
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

mod check;
mod locate;
mod shape;
#[cfg(test)]
mod tests;

use check::*;
use locate::*;
use shape::*;

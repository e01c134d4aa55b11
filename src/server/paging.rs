//! List pagination (Google AIP-158): how a request's `page_size` and
//! `page_token` pick one page out of the jobs the caller may see, so that no
//! List response comes near gRPC's 4 MiB default message limit however many
//! jobs, or however long their commands, there are.
//!
//! A token is the sort key of the last job the previous page returned,
//! `<started_at as nanoseconds since the Unix epoch>:<job id>`; a page holds
//! the jobs strictly after it. Jobs started or removed between pages
//! therefore neither repeat nor shift the others. (A wall clock stepped back
//! between pages could put a new job before the token: it is then missed by
//! that listing, never repeated.)

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message;

use super::convert::status_message;
use crate::job::{JobId, MAX_ARGS, MAX_ARGV_BYTES, Status};
use crate::proto;

/// Jobs per page when the request leaves `page_size` at 0. Ordinary
/// records are a few hundred bytes, so such a page is ~100 KiB.
pub(crate) const DEFAULT_PAGE_JOBS: usize = 500;
/// Most jobs per page, whatever `page_size` asks: bounds the work of one
/// call.
pub(crate) const MAX_PAGE_JOBS: usize = 1000;
/// A page stops before its encoded size would pass this many bytes: a
/// quarter of gRPC's 4 MiB default decode limit, which clients must
/// never need to raise. A page always holds at least one job (when any
/// are left), and one job may be larger than this, but never larger than
/// [`MAX_JOB_BYTES`].
pub(crate) const MAX_PAGE_BYTES: usize = 1024 * 1024;
/// An upper bound on one encoded job status: its command (at most
/// [`MAX_ARGV_BYTES`], plus up to 5 bytes of field tag and length per
/// word) and 4 KiB for every other field (id, owner, times, limits, …).
const MAX_JOB_BYTES: usize = MAX_ARGV_BYTES + 5 * (MAX_ARGS + 1) + 4096;
const _: () = assert!(
    MAX_PAGE_BYTES < 4 * 1024 * 1024 && MAX_JOB_BYTES + 2 + MAX_TOKEN_LEN < 4 * 1024 * 1024,
    "a List page must fit gRPC's 4 MiB default message limit"
);
/// Longest token we issue: an `i128` (at most 40 characters), `:` and a
/// 36-character id; anything longer was not issued by us.
const MAX_TOKEN_LEN: usize = 128;

/// Why a List request's paging fields are refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub(crate) enum PageError {
    /// `page_token` is not a token this server issued (not
    /// `<nanoseconds>:<job id>`).
    #[error("page_token is not one this server issued; list again from an empty page_token")]
    InvalidToken,
    /// `page_size` is below 0.
    #[error("page_size must not be negative (0 means the server's default)")]
    NegativeSize,
}

/// A validated page request: how many jobs, after which key.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct PageRequest {
    size: usize,
    after: Option<(SystemTime, JobId)>,
}

impl PageRequest {
    /// Validates a List request's `page_size` and `page_token`.
    ///
    /// # Errors
    /// [`PageError::NegativeSize`], [`PageError::InvalidToken`].
    pub(crate) fn parse(page_size: i32, page_token: &str) -> Result<Self, PageError> {
        let size = match usize::try_from(page_size) {
            Err(_) => return Err(PageError::NegativeSize),
            Ok(0) => DEFAULT_PAGE_JOBS,
            Ok(n) => n.min(MAX_PAGE_JOBS),
        };
        let after = if page_token.is_empty() {
            None
        } else {
            Some(decode(page_token).ok_or(PageError::InvalidToken)?)
        };
        Ok(Self { size, after })
    }

    /// The key the page starts after (`None`: from the first job).
    pub(crate) fn after(&self) -> Option<(SystemTime, JobId)> {
        self.after
    }

    /// How many jobs to read for this page: one more than it holds, which
    /// tells whether a next page exists.
    pub(crate) fn fetch(&self) -> usize {
        self.size + 1
    }

    /// The page of `jobs` (sorted by `(started_at, id)`, as
    /// [`crate::job::Jobs::list`] returns them: from after the token, at
    /// least [`PageRequest::fetch`] of them when more exist) this request
    /// asks for, with the token of the next page if any jobs are left
    /// after it.
    pub(crate) fn of(&self, jobs: &[Status]) -> proto::ListResponse {
        let start = match self.after {
            None => 0,
            Some(after) => jobs.partition_point(|s| (s.started_at, s.id) <= after),
        };
        let rest = &jobs[start..];
        let mut page = Vec::new();
        // Room for next_page_token (tag, length, text).
        let mut bytes = 2 + MAX_TOKEN_LEN;
        for job in rest.iter().take(self.size) {
            let message = status_message(job);
            let len = message.encoded_len();
            // Field tag (1 byte for field 1), length, the message.
            let field = 1 + prost::length_delimiter_len(len) + len;
            if !page.is_empty() && bytes + field > MAX_PAGE_BYTES {
                break;
            }
            bytes += field;
            page.push(message);
        }
        let next_page_token = match rest.get(page.len()) {
            // `page` is not empty here: `rest` has an element past it
            // and the loop takes at least one (`size` is at least 1).
            Some(_) => encode(&rest[page.len() - 1]),
            None => String::new(),
        };
        proto::ListResponse {
            jobs: page,
            next_page_token,
        }
    }
}

/// The token continuing after `job`.
fn encode(job: &Status) -> String {
    let nanos = match job.started_at.duration_since(UNIX_EPOCH) {
        // At most u64::MAX s in nanoseconds (< 2^94): no i128 overflow.
        Ok(d) => d.as_nanos() as i128,
        Err(before) => -(before.duration().as_nanos() as i128),
    };
    format!("{nanos}:{}", job.id)
}

/// The key a token of [`encode`] holds; `None` for anything else.
fn decode(token: &str) -> Option<(SystemTime, JobId)> {
    if token.len() > MAX_TOKEN_LEN {
        return None;
    }
    let (nanos, id) = token.split_once(':')?;
    // `i128::from_str` takes a leading '+', which `encode` never writes:
    // one key, one spelling.
    if nanos.starts_with('+') {
        return None;
    }
    let nanos: i128 = nanos.parse().ok()?;
    let id: JobId = id.parse().ok()?;
    const NANOS_PER_SEC: u128 = 1_000_000_000;
    let magnitude = nanos.unsigned_abs();
    let secs = u64::try_from(magnitude / NANOS_PER_SEC).ok()?;
    // The remainder is below 10^9: it fits a u32.
    let offset = Duration::new(secs, (magnitude % NANOS_PER_SEC) as u32);
    let time = if nanos < 0 {
        UNIX_EPOCH.checked_sub(offset)?
    } else {
        UNIX_EPOCH.checked_add(offset)?
    };
    Some((time, id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::State;

    fn job(started_ns: u64, id: &str, command_bytes: usize) -> Status {
        Status {
            id: id.parse().unwrap(),
            state: State::Running,
            exit: None,
            command: vec!["/bin/true".into(), "x".repeat(command_bytes)],
            started_at: UNIX_EPOCH + Duration::from_nanos(started_ns),
            ended_at: None,
            owner: crate::auth::Identity::from_spki_der(b"alice"),
            limits: None,
            usage: None,
            output_bytes: 0,
            max_output_bytes: None,
            pending: None,
            cluster_job_id: None,
        }
    }

    fn ids(page: &proto::ListResponse) -> Vec<&str> {
        page.jobs.iter().map(|j| j.id.as_str()).collect()
    }

    const A: &str = "00000000-0000-4000-8000-00000000000a";
    const B: &str = "00000000-0000-4000-8000-00000000000b";
    const C: &str = "00000000-0000-4000-8000-00000000000c";

    #[test]
    fn a_token_names_the_last_job_and_the_next_page_starts_after_it() {
        // Scenario: pages of two over three jobs, two of which started in
        // the same nanosecond (ordered by id); the token is the last
        // job's key, and a removed job does not shift the next page.
        let jobs = vec![
            job(5, A, 1),
            job(1_700_000_000_123_456_789, B, 1),
            job(1_700_000_000_123_456_789, C, 1),
        ];
        let first = PageRequest::parse(2, "").unwrap().of(&jobs);
        assert_eq!(ids(&first), [A, B]);
        assert_eq!(first.next_page_token, format!("1700000000123456789:{B}"));
        let second = PageRequest::parse(2, &first.next_page_token).unwrap();
        assert_eq!(ids(&second.of(&jobs)), [C]);
        assert_eq!(second.of(&jobs).next_page_token, "");
        // B removed between the pages: C still follows.
        assert_eq!(
            ids(&second.of(&[job(5, A, 1), job(1_700_000_000_123_456_789, C, 1)])),
            [C]
        );
        // Everything after the token removed: an empty last page.
        assert_eq!(second.of(&jobs[..2]), proto::ListResponse::default());
    }

    #[test]
    fn a_page_stops_at_its_byte_budget_but_holds_at_least_one_job() {
        // Scenario: three jobs of 600 KB commands: each page holds one
        // (two would pass 1 MiB); a single job larger than the budget
        // still goes out alone.
        let jobs = vec![job(1, A, 600_000), job(2, B, 600_000), job(3, C, 600_000)];
        let mut token = String::new();
        let mut seen = Vec::new();
        loop {
            let page = PageRequest::parse(0, &token).unwrap().of(&jobs);
            assert_eq!(page.jobs.len(), 1);
            assert!(
                page.encoded_len() <= MAX_PAGE_BYTES,
                "{}",
                page.encoded_len()
            );
            seen.push(page.jobs[0].id.clone());
            token = page.next_page_token;
            if token.is_empty() {
                break;
            }
        }
        assert_eq!(seen, [A, B, C]);
        let huge = [job(1, A, MAX_ARGV_BYTES - 16), job(2, B, 1)];
        let page = PageRequest::parse(0, "").unwrap().of(&huge);
        assert_eq!(ids(&page), [A]);
        assert!(page.encoded_len() > MAX_PAGE_BYTES);
        assert!(page.encoded_len() <= MAX_JOB_BYTES + 2 + MAX_TOKEN_LEN);
    }

    #[test]
    fn page_size_zero_is_the_default_and_large_ones_are_capped() {
        // Scenario: 0 asks for the default page, i32::MAX for the maximum.
        assert_eq!(PageRequest::parse(0, "").unwrap().size, DEFAULT_PAGE_JOBS);
        assert_eq!(
            PageRequest::parse(i32::MAX, "").unwrap().size,
            MAX_PAGE_JOBS
        );
        assert_eq!(PageRequest::parse(7, "").unwrap().size, 7);
        let jobs: Vec<Status> = (0..MAX_PAGE_JOBS as u64 + 1)
            .map(|n| {
                let id = format!("00000000-0000-4000-8000-{n:012x}");
                job(n, &id, 1)
            })
            .collect();
        let page = PageRequest::parse(i32::MAX, "").unwrap().of(&jobs);
        assert_eq!(page.jobs.len(), MAX_PAGE_JOBS);
        assert_eq!(page.next_page_token, encode(&jobs[MAX_PAGE_JOBS - 1]));
    }

    #[test]
    fn tokens_not_issued_by_the_server_are_refused() {
        // Scenario: garbage, near-misses of the format and a negative
        // size are each refused with their own error.
        for token in [
            "garbage",
            ":",
            "12",
            &format!("12:{}", A.to_uppercase()),
            &format!("+12:{A}"),
            &format!("1.5:{A}"),
            &format!("12:{A}:"),
            &format!("{}0:{A}", i128::MAX),
            &format!("{}:{A}", "9".repeat(MAX_TOKEN_LEN)),
        ] {
            assert_eq!(
                PageRequest::parse(0, token),
                Err(PageError::InvalidToken),
                "{token}"
            );
        }
        assert_eq!(PageRequest::parse(-1, ""), Err(PageError::NegativeSize));
        assert_eq!(
            PageRequest::parse(i32::MIN, "garbage"),
            Err(PageError::NegativeSize)
        );
    }

    #[test]
    fn a_token_round_trips_every_start_time() {
        // Scenario: start times before the epoch, at it and far after it
        // come back exactly from their token.
        for time in [
            UNIX_EPOCH - Duration::new(3, 7),
            UNIX_EPOCH,
            UNIX_EPOCH + Duration::new(1_700_000_000, 999_999_999),
            UNIX_EPOCH + Duration::new(u64::MAX / 4, 1),
        ] {
            let mut j = job(0, A, 1);
            j.started_at = time;
            assert_eq!(decode(&encode(&j)), Some((time, j.id)));
        }
    }
}

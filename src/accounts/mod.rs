//! Accounts made for one identity: the range of uids they come from, the
//! check that no account of the machine uses that range, and the account a
//! uid of it stands for.
//!
//! Each identity's contained jobs run as a uid (and a gid of the same
//! number) of the daemon's [`UidRange`], assigned on its first start and kept
//! for good in the job store ([`crate::store::Store::assign_uid`]; the engine
//! caches it, see [`crate::job::Jobs`]). Such a uid has no passwd(5) entry:
//! [`identity_account`] describes it, with a private empty home made by the
//! job's init. So two identities share no uid, and with it nothing the
//! kernel keeps per uid: the user keyring, inotify and other per-user
//! limits, the right to signal or trace each other's processes, files.
//!
//! A daemon claims its range host-wide for as long as it runs (`claim.rs`),
//! so that two daemons on one host never hand out the same uid.
//!
//! This module must not know about jobs, owners or the store; it deals in
//! numbers and the machine's account database (`system.rs`, the only place
//! here that calls into libc).

mod claim;
mod system;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

pub use claim::{CLAIMS_DIR, ClaimError, RangeClaim, claim};
pub use system::{RangeConflict, check_system, local_owner_of};

use crate::job::Account;

/// A range of uids, each used as both uid and gid of one identity's
/// account: `FIRST-LAST`, inclusive, never holding a uid that is special to
/// the kernel ([`SPECIAL_UIDS`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UidRange {
    first: u32,
    last: u32,
}

/// The default range, 2013265920-2013331455 (`0x78000000`-`0x7800FFFF`):
/// 65,536 identities. Chosen to stay clear of every range in common use
/// (systemd's `UIDS-GIDS.md`, shadow's `login.defs`, sssd):
/// - below 1000 system accounts, 1000-60000 login accounts, 60001-60513
///   systemd-homed, 61184-65519 systemd `DynamicUser=`, 65534 `nobody`,
///   65535 the 16-bit `(uid_t) -1`;
/// - 100000-600165535 the subordinate ids useradd hands out for rootless
///   containers (`/etc/subuid`, `SUB_UID_MIN`..`SUB_UID_MAX`), and
///   524288-1879048191 systemd-nspawn's container ranges;
/// - 200000-2000200000 sssd's default id mapping of Active Directory users,
///   which does not enumerate, so the start-up check cannot see it;
/// - 2147352576-2147418111 systemd's "foreign" uid range, and everything
///   from 2^31 up, which tools that keep uids in signed 32-bit integers get
///   wrong.
///
/// What is left is 2000200001-2147352575, in systemd's own words "unused";
/// the default sits in it on a round hexadecimal boundary. The start-up
/// check ([`check_system`]) still compares it with the account database.
pub const DEFAULT_UID_RANGE: UidRange = UidRange {
    first: 0x7800_0000,
    last: 0x7800_FFFF,
};

/// Uids a range must not hold, and why: 0 is root; 65534 is the kernel's
/// overflow uid (`/proc/sys/kernel/overflowuid`: unmapped owners show as
/// it); 65535 and 4294967295 are `(uid_t) -1` in 16 and 32 bits, which
/// setresuid(2) and chown(2) read as "leave unchanged".
pub const SPECIAL_UIDS: [(u32, &str); 4] = [
    (0, "root"),
    (65534, "the overflow uid, nobody"),
    (65535, "the 16-bit (uid_t) -1"),
    (u32::MAX, "(uid_t) -1"),
];

/// The home directory a job of an identity's account gets as `HOME`: a
/// private, empty directory the job's init makes, not a place on the host.
pub const IDENTITY_HOME: &str = "/home/job";

/// Why a [`UidRange`] is not acceptable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum UidRangeError {
    /// Not `FIRST-LAST` with two decimal numbers that fit a uid.
    #[error("'{0}' is not a range FIRST-LAST of uids, e.g. 2013265920-2013331455")]
    Syntax(String),
    /// FIRST is above LAST.
    #[error("{first}-{last} is empty: FIRST is above LAST")]
    Reversed {
        /// FIRST.
        first: u32,
        /// LAST.
        last: u32,
    },
    /// The range holds one of [`SPECIAL_UIDS`].
    #[error("{first}-{last} includes uid {uid}, {why}, which no identity may have")]
    Special {
        /// FIRST.
        first: u32,
        /// LAST.
        last: u32,
        /// The special uid.
        uid: u32,
        /// What it is.
        why: &'static str,
    },
}

impl UidRange {
    /// The uids `first..=last`.
    ///
    /// # Errors
    /// [`UidRangeError::Reversed`] if `first > last`;
    /// [`UidRangeError::Special`] if the range holds one of [`SPECIAL_UIDS`].
    pub fn new(first: u32, last: u32) -> Result<Self, UidRangeError> {
        if first > last {
            return Err(UidRangeError::Reversed { first, last });
        }
        if let Some(&(uid, why)) = SPECIAL_UIDS
            .iter()
            .find(|(uid, _)| (first..=last).contains(uid))
        {
            return Err(UidRangeError::Special {
                first,
                last,
                uid,
                why,
            });
        }
        Ok(Self { first, last })
    }

    /// Its first uid.
    pub fn first(&self) -> u32 {
        self.first
    }

    /// Its last uid.
    pub fn last(&self) -> u32 {
        self.last
    }

    /// How many uids it holds (at least 1).
    pub fn len(&self) -> u64 {
        u64::from(self.last) - u64::from(self.first) + 1
    }

    /// Never true: a range holds at least one uid.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// True if `id` lies in it.
    pub fn contains(&self, id: u32) -> bool {
        (self.first..=self.last).contains(&id)
    }

    /// The same uids as a `RangeInclusive`.
    pub fn to_range(self) -> std::ops::RangeInclusive<u32> {
        self.first..=self.last
    }

    /// True if it shares a uid with `first..=first + count - 1` (`count` 0:
    /// nothing).
    pub fn overlaps(&self, first: u64, count: u64) -> bool {
        count > 0 && first <= u64::from(self.last) && first + count > u64::from(self.first)
    }
}

impl Default for UidRange {
    fn default() -> Self {
        DEFAULT_UID_RANGE
    }
}

impl fmt::Display for UidRange {
    /// `FIRST-LAST`, as [`FromStr`] reads it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl FromStr for UidRange {
    type Err = UidRangeError;

    /// `FIRST-LAST`: two decimal numbers up to 4294967295, FIRST ≤ LAST, no
    /// special uid in between (see [`UidRange::new`]).
    fn from_str(s: &str) -> Result<Self, UidRangeError> {
        let syntax = || UidRangeError::Syntax(s.to_owned());
        let (first, last) = s.split_once('-').ok_or_else(syntax)?;
        let number = |n: &str| {
            if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
                return Err(syntax());
            }
            n.parse::<u32>().map_err(|_| syntax())
        };
        Self::new(number(first)?, number(last)?)
    }
}

/// The account an identity's `uid` stands for: named `jobs-<uid>` (a label
/// for logs only; there is no passwd(5) entry), gid the same number, home
/// [`IDENTITY_HOME`], private home on.
pub fn identity_account(uid: u32) -> Account {
    Account {
        name: format!("jobs-{uid}"),
        uid,
        gid: uid,
        home: PathBuf::from(IDENTITY_HOME),
        private_home: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_print() {
        let r: UidRange = "2013265920-2013331455".parse().unwrap();
        assert_eq!(r, DEFAULT_UID_RANGE);
        assert_eq!(r.to_string(), "2013265920-2013331455");
        assert_eq!(r.len(), 65536);
        let one: UidRange = "70000-70000".parse().unwrap();
        assert_eq!((one.first(), one.last(), one.len()), (70000, 70000, 1));
        assert!(one.contains(70000) && !one.contains(70001));
    }

    // Scenario: an operator's typo in --uid-range is refused with the text
    // as given, never read as some other range.
    #[test]
    fn malformed_ranges_are_refused() {
        for bad in [
            "",
            "5",
            "5-",
            "-5",
            "a-b",
            "1 - 5",
            "+1-5",
            "1-5-7",
            "0x10-0x20",
            "4294967296-4294967297",
            "1-99999999999",
        ] {
            assert_eq!(
                bad.parse::<UidRange>(),
                Err(UidRangeError::Syntax(bad.to_owned())),
                "{bad:?}"
            );
        }
        assert_eq!(
            "9-5".parse::<UidRange>().unwrap_err().to_string(),
            "9-5 is empty: FIRST is above LAST"
        );
    }

    // Scenario: a range that would make an identity root, nobody, or the
    // "unchanged" uid is refused.
    #[test]
    fn special_uids_are_refused() {
        assert_eq!(
            "0-100".parse::<UidRange>().unwrap_err().to_string(),
            "0-100 includes uid 0, root, which no identity may have"
        );
        for (text, uid) in [
            ("65000-66000", 65534),
            ("65535-65535", 65535),
            ("4294967000-4294967295", u32::MAX),
        ] {
            match text.parse::<UidRange>() {
                Err(UidRangeError::Special { uid: u, .. }) => assert_eq!(u, uid, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        assert!("4294967000-4294967294".parse::<UidRange>().is_ok());
        assert!("65536-65536".parse::<UidRange>().is_ok());
    }

    #[test]
    fn overlap_is_exact_at_both_ends() {
        let r = UidRange::new(100, 199).unwrap();
        assert!(!r.overlaps(0, 100));
        assert!(r.overlaps(0, 101));
        assert!(r.overlaps(199, 1));
        assert!(!r.overlaps(200, 65536));
        assert!(!r.overlaps(150, 0));
        assert!(r.overlaps(0, u64::from(u32::MAX) + 1));
    }

    #[test]
    fn an_identity_account_has_a_private_home_and_no_passwd_entry() {
        assert_eq!(
            identity_account(2013265921),
            Account {
                name: "jobs-2013265921".to_owned(),
                uid: 2013265921,
                gid: 2013265921,
                home: PathBuf::from("/home/job"),
                private_home: true,
            }
        );
    }
}

//! The start-up check of a [`UidRange`] against the machine: every user and
//! group the name service lists (getpwent(3), getgrent(3): `/etc/passwd`,
//! `/etc/group`, and whatever else `/etc/nsswitch.conf` enumerates), the
//! subordinate ids of `/etc/subuid` and `/etc/subgid`, and the daemon's own
//! user namespace (`/proc/self/uid_map`, `gid_map`).
//!
//! Name services that do not enumerate (sssd and LDAP by default,
//! systemd's dynamic users while not allocated) are not seen: the default
//! range is chosen to avoid their usual ranges (see
//! [`super::DEFAULT_UID_RANGE`]), and [`local_owner_of`] asks them about one
//! id at a time (the engine does, before an identity's first job).

use std::ffi::CStr;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::UidRange;

/// Why a range cannot be used on this machine. Each names the range and
/// what it collides with, in one line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RangeConflict {
    /// An account of the user database has a uid in the range.
    #[error("{range} overlaps the account '{name}' (uid {uid}) of the user database")]
    User {
        /// The range.
        range: UidRange,
        /// The account's name.
        name: String,
        /// Its uid.
        uid: u32,
    },
    /// An account's primary group, or a group of the group database, has
    /// a gid in the range (jobs use each uid as a gid too).
    #[error("{range} overlaps the group {gid} of {what} '{name}' of the user database")]
    Group {
        /// The range.
        range: UidRange,
        /// `account` (its primary group) or `group`.
        what: &'static str,
        /// The account's or group's name.
        name: String,
        /// The gid.
        gid: u32,
    },
    /// A line of `/etc/subuid` or `/etc/subgid` gives ids in the range.
    #[error("{range} overlaps the subordinate ids {first}-{last} of '{owner}' in {}", file.display())]
    Subordinate {
        /// The range.
        range: UidRange,
        /// The file.
        file: PathBuf,
        /// The line's user (a name or a uid).
        owner: String,
        /// Its first id.
        first: u64,
        /// Its last id.
        last: u64,
    },
    /// The daemon runs in a user namespace that does not map every id of
    /// the range, so jobs could not switch to them.
    #[error("{range} is not wholly mapped in jobsd's user namespace ({})", file.display())]
    Unmapped {
        /// The range.
        range: UidRange,
        /// `/proc/self/uid_map` or `gid_map`.
        file: PathBuf,
    },
    /// A file to check could not be read (a missing subuid or subgid file
    /// is not an error: there are no subordinate ids then).
    #[error("cannot read {} to check {range}", file.display())]
    Read {
        /// The range.
        range: UidRange,
        /// The file.
        file: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Checks `range` against the machine's accounts, groups, subordinate ids
/// and user namespace (see the module doc).
///
/// Blocking, and it uses getpwent(3)/getgrent(3), whose iteration state is
/// process-wide: call it at start-up or on a blocking thread. Concurrent
/// calls are serialised here; nothing else in this crate enumerates
/// accounts.
///
/// # Errors
/// The first [`RangeConflict`] found.
pub fn check_system(range: UidRange) -> Result<(), RangeConflict> {
    for file in ["/proc/self/uid_map", "/proc/self/gid_map"] {
        let file = Path::new(file);
        match std::fs::read_to_string(file) {
            Ok(text) => check_mapped(range, &text, file)?,
            // Not Linux's procfs (no user namespaces to speak of).
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(RangeConflict::Read {
                    range,
                    file: file.to_owned(),
                    source,
                });
            }
        }
    }
    let (users, groups, incomplete) = enumerate();
    if let Some(e) = incomplete {
        // Refusing would stop every jobsd behind a flaky name service; say
        // how far the check got instead.
        tracing::warn!(error = %e, users = users.len(), groups = groups.len(), "the name service failed while listing accounts; the uid range was checked against those it listed");
    }
    check_accounts(range, &users, &groups)?;
    for file in ["/etc/subuid", "/etc/subgid"] {
        let file = Path::new(file);
        match std::fs::read_to_string(file) {
            Ok(text) => check_subordinate(range, &text, file)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(RangeConflict::Read {
                    range,
                    file: file.to_owned(),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// The user or group of the name service that has `id` as its uid or gid
/// (`user NAME`, `group NAME`), asked directly (getpwuid_r(3),
/// getgrgid_r(3)), so that name services which do not list their accounts
/// (sssd, LDAP) are asked too. `None` when neither exists.
///
/// Blocking (a name service may be remote): call it on a blocking thread.
///
/// # Errors
/// The name service's error; the id's owner is then unknown.
pub fn local_owner_of(id: u32) -> io::Result<Option<String>> {
    use nix::unistd::{Gid, Group, Uid, User};
    if let Some(user) = User::from_uid(Uid::from_raw(id))? {
        return Ok(Some(format!("user {}", user.name)));
    }
    Ok(Group::from_gid(Gid::from_raw(id))?.map(|g| format!("group {}", g.name)))
}

/// A user database entry: name, uid, primary gid.
type User = (String, u32, u32);
/// A group database entry: name, gid.
type Group = (String, u32);

fn check_accounts(range: UidRange, users: &[User], groups: &[Group]) -> Result<(), RangeConflict> {
    for (name, uid, gid) in users {
        if range.contains(*uid) {
            return Err(RangeConflict::User {
                range,
                name: name.clone(),
                uid: *uid,
            });
        }
        if range.contains(*gid) {
            return Err(RangeConflict::Group {
                range,
                what: "account",
                name: name.clone(),
                gid: *gid,
            });
        }
    }
    for (name, gid) in groups {
        if range.contains(*gid) {
            return Err(RangeConflict::Group {
                range,
                what: "group",
                name: name.clone(),
                gid: *gid,
            });
        }
    }
    Ok(())
}

/// subuid(5)/subgid(5): `owner:first:count` per line. Lines that are not
/// of that form (comments, blank lines, damage) give no ids to anyone, as
/// newuidmap(1) reads them, so they are skipped.
fn check_subordinate(range: UidRange, text: &str, file: &Path) -> Result<(), RangeConflict> {
    for line in text.lines() {
        let mut fields = line.trim().split(':');
        let (Some(owner), Some(first), Some(count), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let (Ok(first), Ok(count)) = (first.parse::<u64>(), count.parse::<u64>()) else {
            continue;
        };
        if range.overlaps(first, count) {
            return Err(RangeConflict::Subordinate {
                range,
                file: file.to_owned(),
                owner: owner.to_owned(),
                first,
                last: first + count - 1,
            });
        }
    }
    Ok(())
}

/// user_namespaces(7): `inside outside count` per line; every id of the
/// range must lie in some line's `inside..inside + count`.
fn check_mapped(range: UidRange, text: &str, file: &Path) -> Result<(), RangeConflict> {
    let mut spans: Vec<(u64, u64)> = text
        .lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let inside = f.next()?.parse::<u64>().ok()?;
            let _outside = f.next()?;
            let count = f.next()?.parse::<u64>().ok()?;
            Some((inside, inside + count))
        })
        .collect();
    spans.sort_unstable();
    let mut next = u64::from(range.first());
    for (start, end) in spans {
        if start <= next && next < end {
            next = end;
        }
    }
    if next > u64::from(range.last()) {
        Ok(())
    } else {
        Err(RangeConflict::Unmapped {
            range,
            file: file.to_owned(),
        })
    }
}

/// Serialises [`enumerate`]: getpwent(3) and getgrent(3) keep one cursor
/// per process.
static ENUMERATING: Mutex<()> = Mutex::new(());

/// Every user and group the name service enumerates, and the error that
/// ended a listing early, if any.
fn enumerate() -> (Vec<User>, Vec<Group>, Option<io::Error>) {
    let _guard = ENUMERATING.lock().unwrap_or_else(|p| p.into_inner());
    let mut users = Vec::new();
    // getpwent(3)/getgrent(3) return NULL both at the end and on an error;
    // only errno tells them apart (ENOENT, or unchanged, at the end).
    let failed = || match nix::errno::Errno::last_raw() {
        0 | libc::ENOENT => None,
        e => Some(io::Error::from_raw_os_error(e)),
    };
    // SAFETY: setpwent/getpwent/endpwent share one process-wide cursor;
    // ENUMERATING keeps every use of it in this process to one thread at a
    // time (nothing else in the crate calls them). Each returned entry is
    // valid until the next call, and is copied out before it.
    let users_failed = unsafe {
        libc::setpwent();
        let error = loop {
            nix::errno::Errno::clear();
            let entry = libc::getpwent();
            if entry.is_null() {
                break failed();
            }
            let entry = &*entry;
            users.push((
                CStr::from_ptr(entry.pw_name).to_string_lossy().into_owned(),
                entry.pw_uid,
                entry.pw_gid,
            ));
        };
        libc::endpwent();
        error
    };
    let mut groups = Vec::new();
    // SAFETY: as above, for the group cursor.
    let groups_failed = unsafe {
        libc::setgrent();
        let error = loop {
            nix::errno::Errno::clear();
            let entry = libc::getgrent();
            if entry.is_null() {
                break failed();
            }
            let entry = &*entry;
            groups.push((
                CStr::from_ptr(entry.gr_name).to_string_lossy().into_owned(),
                entry.gr_gid,
            ));
        };
        libc::endgrent();
        error
    };
    (users, groups, users_failed.or(groups_failed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(first: u32, last: u32) -> UidRange {
        UidRange::new(first, last).unwrap()
    }

    // Scenario: the operator's range holds a login account's uid, or only
    // its group: refused, naming the account and the range.
    #[test]
    fn accounts_and_groups_in_the_range_are_conflicts() {
        let users = vec![
            ("root".to_owned(), 0, 0),
            ("alice".to_owned(), 1000, 1000),
            ("svc".to_owned(), 900, 5000),
        ];
        let groups = vec![("staff".to_owned(), 50), ("web".to_owned(), 7000)];
        assert!(check_accounts(range(1001, 4999), &users, &groups).is_ok());
        assert_eq!(
            check_accounts(range(999, 1000), &users, &groups)
                .unwrap_err()
                .to_string(),
            "999-1000 overlaps the account 'alice' (uid 1000) of the user database"
        );
        assert_eq!(
            check_accounts(range(5000, 5000), &users, &groups)
                .unwrap_err()
                .to_string(),
            "5000-5000 overlaps the group 5000 of account 'svc' of the user database"
        );
        assert_eq!(
            check_accounts(range(6000, 8000), &users, &groups)
                .unwrap_err()
                .to_string(),
            "6000-8000 overlaps the group 7000 of group 'web' of the user database"
        );
    }

    // Scenario: rootless containers of a user own 100000-165535; a range
    // that touches its last id is refused.
    #[test]
    fn subordinate_ids_in_the_range_are_conflicts() {
        let text = "# comment\n\nalice:100000:65536\nbroken line\n1001:200000:0\n";
        let file = Path::new("/etc/subuid");
        assert!(check_subordinate(range(165536, 199999), text, file).is_ok());
        assert!(check_subordinate(range(200000, 200000), text, file).is_ok());
        assert_eq!(
            check_subordinate(range(165535, 170000), text, file)
                .unwrap_err()
                .to_string(),
            "165535-170000 overlaps the subordinate ids 100000-165535 of 'alice' in /etc/subuid"
        );
    }

    // Scenario: jobsd in a container that maps only 65536 ids cannot switch
    // jobs to the default range: refused at start-up, not at the first job.
    #[test]
    fn the_range_must_be_mapped_in_our_user_namespace() {
        let file = Path::new("/proc/self/uid_map");
        let full = "         0          0 4294967295\n";
        assert!(check_mapped(super::super::DEFAULT_UID_RANGE, full, file).is_ok());
        let small = "0 100000 65536\n";
        assert!(check_mapped(range(1, 65533), small, file).is_ok());
        assert_eq!(
            check_mapped(range(65536, 65536), small, file)
                .unwrap_err()
                .to_string(),
            "65536-65536 is not wholly mapped in jobsd's user namespace (/proc/self/uid_map)"
        );
        let split = "0 0 1000\n2000 5000 1000\n1000 9000 1000\n";
        assert!(check_mapped(range(500, 2999), split, file).is_ok());
        assert!(check_mapped(range(500, 3000), split, file).is_err());
    }

    #[test]
    fn owners_of_ids_are_found_by_asking_for_them() {
        assert_eq!(local_owner_of(0).unwrap().as_deref(), Some("user root"));
        assert_eq!(local_owner_of(0x7800_0000).unwrap(), None);
    }

    #[test]
    fn this_machines_accounts_are_enumerated() {
        let (users, groups, incomplete) = enumerate();
        assert!(incomplete.is_none(), "{incomplete:?}");
        assert!(users.iter().any(|u| u == &("root".to_owned(), 0, 0)));
        assert!(groups.iter().any(|g| g == &("root".to_owned(), 0)));
        // Run in a user namespace that maps only some ids (a rootless
        // container), an unmapped range is refused as such, before any
        // account is looked at; so each expectation says which it is.
        let map = Path::new("/proc/self/uid_map");
        let map_text = std::fs::read_to_string(map).unwrap();
        let unmapped = |r: UidRange| check_mapped(r, &map_text, map).err().map(|e| e.to_string());
        // The default range is free here, as on any machine set up as usual.
        let default = super::super::DEFAULT_UID_RANGE;
        assert_eq!(
            check_system(default).err().map(|e| e.to_string()),
            unmapped(default)
        );
        // root's neighbour, `daemon` (uid 1 on Debian), is an account.
        let daemon = crate::job::Account::lookup("daemon", false).unwrap();
        let r = range(daemon.uid, daemon.uid);
        let expected = unmapped(r).unwrap_or_else(|| {
            format!(
                "{r} overlaps the account 'daemon' (uid {}) of the user database",
                daemon.uid
            )
        });
        assert_eq!(check_system(r).unwrap_err().to_string(), expected);
    }
}

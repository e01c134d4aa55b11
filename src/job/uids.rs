//! The account of each identity's contained jobs when identities get uids
//! of their own ([`super::JobsConfig::uid_range`]): the uid the store
//! assigned it ([`Store::assign_uid`]), cached here after its first start.
//!
//! The cache holds one small entry (an identity and a uid, 36 bytes) per
//! identity that started a job since the daemon started, so at most one per
//! uid of the range (65,536 by default: a few MiB at worst); the store is
//! the source of truth, so a cache miss (a restart, a lookup whose caller
//! went away) only costs one transaction.

use std::collections::HashMap;
use std::sync::Mutex;

use super::{Account, JobError};
use crate::accounts::{UidRange, identity_account, local_owner_of};
use crate::auth::Identity;
use crate::store::{Store, UidAssignment};

/// Identities' uids of one range.
pub(super) struct IdentityUids {
    range: UidRange,
    store: Store,
    known: Mutex<HashMap<Identity, u32>>,
}

impl IdentityUids {
    pub(super) fn new(range: UidRange, store: Store) -> Self {
        Self {
            range,
            store,
            known: Mutex::default(),
        }
    }

    /// `owner`'s account: its uid of the range, assigned now if it has
    /// none yet.
    ///
    /// # Errors
    /// [`JobError::UidRangeExhausted`] when `owner` has no uid and none is
    /// left; [`JobError::AccountUnavailable`] when its uid is also a local
    /// user's or group's, or the name service cannot say;
    /// [`JobError::Store`] when the store fails (nothing was assigned).
    ///
    /// # Cancel safety
    /// An assignment under way completes even if the future is dropped; the
    /// next call finds it.
    pub(super) async fn account(&self, owner: Identity) -> Result<Account, JobError> {
        if let Some(&uid) = self.lock().get(&owner) {
            return Ok(identity_account(uid));
        }
        let uid = match self.store.assign_uid(owner, self.range.to_range()).await? {
            UidAssignment::Existing(uid) => uid,
            UidAssignment::New(uid) => {
                tracing::info!(%owner, uid, "identity assigned its own uid and gid");
                uid
            }
            UidAssignment::RangeFull => {
                tracing::error!(%owner, range = %self.range, "no uid left for a new identity; widen --uid-range");
                return Err(JobError::UidRangeExhausted { range: self.range });
            }
        };
        // The start-up check saw only the accounts the name service lists;
        // one that does not list them (sssd, LDAP) is asked about this uid
        // directly, once per identity and daemon run. Nothing runs as a uid
        // that a local user or group has.
        let asked = tokio::task::spawn_blocking(move || local_owner_of(uid))
            .await
            .map_err(|_| JobError::ShuttingDown)?;
        match asked {
            Ok(None) => {}
            Ok(Some(holder)) => {
                tracing::error!(%owner, uid, %holder, range = %self.range, "the identity's uid belongs to a local account too; its jobs are refused until --uid-range is changed");
                return Err(JobError::AccountUnavailable);
            }
            Err(e) => {
                tracing::error!(%owner, uid, error = %e, "cannot ask the name service whether the identity's uid is a local account's; its jobs are refused");
                return Err(JobError::AccountUnavailable);
            }
        }
        self.lock().insert(owner, uid);
        Ok(identity_account(uid))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Identity, u32>> {
        // Each use is a single get or insert: a panic cannot leave the map
        // half-changed.
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }
}

//! Revocation and denial reaching work already running.
//!
//! When an identity becomes revoked (a CRL reload revokes a certificate
//! this daemon saw it use, see `revocation.rs`) or denylisted (a policy
//! reload adds it), the [`Enforcer`] task:
//! 1. stops its running jobs (the normal stop: SIGTERM, the grace period,
//!    SIGKILL), one audit line per job with the reason `revoked` or
//!    `denylisted` — unless the server runs with [`OnRevoke::Keep`];
//! 2. after [`CLOSE_DELAY`], closes its connections.
//!
//! Its open Output and Stream calls end at once, with PERMISSION_DENIED and
//! a fixed message, by their own watch (`service.rs`), and any new request
//! on a connection not yet closed is refused the same way; the delay before
//! closing lets those statuses reach the client rather than a reset. Other
//! identities' jobs, streams and connections are untouched.
//!
//! An identity acted on once is acted on again only after it was cleared
//! (left the denylist, or a CRL no longer revokes it) and banned anew.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::revocation::TlsHandle;
use crate::audit::{AuditLog, Entry, Outcome};
use crate::auth::Identity;
use crate::job::Jobs;
use crate::policy::{PolicyHandle, Rpc};

/// How long a banned identity's connections stay open after its streams
/// were ended: long enough for those final statuses (a few hundred bytes)
/// to be written out, short enough that nothing else gets through (every
/// new request is refused meanwhile).
pub const CLOSE_DELAY: Duration = Duration::from_millis(500);

/// The audit `subject` of a stop the daemon itself made.
pub const DAEMON_SUBJECT: &str = "jobsd";

/// What happens to the running jobs of an identity that is revoked or
/// denylisted while they run (`jobsd --on-revoke`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnRevoke {
    /// Stop them (the default): a revoked key is presumed stolen, and what
    /// it started is presumed hostile.
    #[default]
    Stop,
    /// Let them run to their end; their owner can no longer reach them, an
    /// admin can (`jobs stop --owner`).
    Keep,
}

/// Why an identity was banned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Why {
    Revoked,
    Denylisted,
}

impl Why {
    fn reason(self) -> &'static str {
        match self {
            Why::Revoked => "revoked",
            Why::Denylisted => "denylisted",
        }
    }
}

/// Live verified connections, per identity, each with the token that
/// closes it.
#[derive(Debug, Default)]
pub(crate) struct Connections {
    next: AtomicU64,
    live: Mutex<HashMap<Identity, HashMap<u64, CancellationToken>>>,
}

impl Connections {
    /// Registers a new connection of `identity`; it is forgotten when the
    /// returned value is dropped (with the connection).
    pub(crate) fn register(self: &Arc<Self>, identity: Identity) -> Registration {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let token = CancellationToken::new();
        self.lock()
            .entry(identity)
            .or_default()
            .insert(id, token.clone());
        Registration {
            conns: self.clone(),
            identity,
            id,
            token,
        }
    }

    /// Closes every connection of `identity`; returns how many.
    pub(crate) fn close(&self, identity: Identity) -> usize {
        let tokens = self.lock().remove(&identity).unwrap_or_default();
        for token in tokens.values() {
            token.cancel();
        }
        tokens.len()
    }

    /// Open connections of `identity`.
    #[cfg(test)]
    pub(crate) fn count(&self, identity: Identity) -> usize {
        self.lock().get(&identity).map_or(0, HashMap::len)
    }

    fn identities(&self) -> HashSet<Identity> {
        self.lock().keys().copied().collect()
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<Identity, HashMap<u64, CancellationToken>>> {
        // Every update is a single insert or remove.
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One connection's entry in [`Connections`].
#[derive(Debug)]
pub(crate) struct Registration {
    conns: Arc<Connections>,
    identity: Identity,
    id: u64,
    token: CancellationToken,
}

impl Registration {
    /// Cancelled when the connection must close.
    pub(crate) fn token(&self) -> &CancellationToken {
        &self.token
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut live = self.conns.lock();
        if let Some(of) = live.get_mut(&self.identity) {
            of.remove(&self.id);
            if of.is_empty() {
                live.remove(&self.identity);
            }
        }
    }
}

/// The task that acts on identities becoming revoked or denylisted.
pub(crate) struct Enforcer {
    pub jobs: Arc<Jobs>,
    pub conns: Arc<Connections>,
    pub policy: PolicyHandle,
    pub tls: TlsHandle,
    pub audit: Option<Arc<AuditLog>>,
    pub on_revoke: OnRevoke,
    pub tracker: TaskTracker,
    pub cancel: CancellationToken,
}

impl Enforcer {
    /// Runs until cancelled.
    pub(crate) async fn run(self) {
        let mut policy = self.policy.subscribe();
        let mut revoked = self.tls.revoked();
        let mut acted: HashMap<Identity, Why> = HashMap::new();
        let (mut policy_open, mut revoked_open) = (true, true);
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                r = policy.changed(), if policy_open => policy_open = r.is_ok(),
                r = revoked.changed(), if revoked_open => revoked_open = r.is_ok(),
            }
            let denylist = self.policy.current();
            let revoked_now = revoked.borrow_and_update().clone();
            // Everyone who has something to lose: a connection or a job.
            let mut known = self.conns.identities();
            known.extend(self.jobs.running_owners());
            known.extend(acted.keys().copied());
            let mut now: HashMap<Identity, Why> = HashMap::new();
            for identity in known {
                if revoked_now.contains(&identity) {
                    now.insert(identity, Why::Revoked);
                } else if denylist.is_denied(&identity) {
                    now.insert(identity, Why::Denylisted);
                }
            }
            for (identity, why) in &now {
                if !acted.contains_key(identity) {
                    self.act(*identity, *why);
                }
            }
            acted = now;
        }
    }

    fn act(&self, identity: Identity, why: Why) {
        // The policy in force decides if it says; else `jobsd --on-revoke`.
        let on_revoke = match self.policy.current().keep_jobs_when_banned() {
            Some(true) => OnRevoke::Keep,
            Some(false) => OnRevoke::Stop,
            None => self.on_revoke,
        };
        let jobs = match on_revoke {
            OnRevoke::Stop => self.jobs.running_of(identity),
            OnRevoke::Keep => Vec::new(),
        };
        tracing::warn!(%identity, reason = why.reason(), jobs_stopped = jobs.len(), "identity banned: ending its streams, closing its connections");
        for job in jobs {
            if let Some(audit) = &self.audit {
                let entry = Entry {
                    identity,
                    subject: DAEMON_SUBJECT,
                    peer: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
                    rpc: Rpc::Stop,
                    job: Some(job.id().to_string()),
                    owner: Some(identity),
                    admin: false,
                    outcome: Outcome::Allowed,
                    reason: Some(why.reason()),
                    grants: &[],
                };
                // The job stops whether or not the line can be written:
                // stopping is the safe side.
                audit.record_in_background(&entry);
            }
            self.tracker.spawn(async move {
                job.stop().await;
            });
        }
        let (conns, cancel) = (self.conns.clone(), self.cancel.clone());
        self.tracker.spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = tokio::time::sleep(CLOSE_DELAY) => {
                    let closed = conns.close(identity);
                    tracing::info!(%identity, connections = closed, "closed the connections of a banned identity");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_connection_leaves_no_entry_and_close_cancels_only_that_identity() {
        // Scenario: alice has two connections, bob one; closing alice's
        // cancels exactly hers; dropped registrations leave nothing behind.
        let conns = Arc::new(Connections::default());
        let (alice, bob) = (Identity::from_spki_der(b"a"), Identity::from_spki_der(b"b"));
        let a1 = conns.register(alice);
        let a2 = conns.register(alice);
        let b1 = conns.register(bob);
        assert_eq!((conns.count(alice), conns.count(bob)), (2, 1));
        assert_eq!(conns.close(alice), 2);
        assert!(a1.token().is_cancelled() && a2.token().is_cancelled());
        assert!(!b1.token().is_cancelled());
        drop((a1, a2));
        drop(b1);
        assert!(conns.lock().is_empty());
    }
}

//! Per-identity caps on open output streams.
//!
//! HTTP/2 lets a peer open many streams on one connection; a peer that opens
//! more than the connection allows sees the extra ones wait silently. Capping
//! Output and Stream calls per identity, across all its connections, turns that
//! into a prompt RESOURCE_EXHAUSTED and keeps one user from holding every
//! reader the daemon can serve.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::auth::Identity;

/// Counts open streams per identity.
#[derive(Debug)]
pub(crate) struct StreamLimits {
    max: usize,
    open: Mutex<HashMap<Identity, usize>>,
}

/// One open stream; dropping it frees the slot.
#[derive(Debug)]
pub(crate) struct StreamPermit {
    limits: Arc<StreamLimits>,
    identity: Identity,
}

impl StreamLimits {
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for `identity`, or `None` when it already has `max` open.
    pub(crate) fn acquire(self: &Arc<Self>, identity: Identity) -> Option<StreamPermit> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(identity).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(StreamPermit {
            limits: self.clone(),
            identity,
        })
    }

    #[cfg(test)]
    fn open(&self, identity: Identity) -> usize {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(&identity).copied().unwrap_or(0)
    }
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.identity) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.identity);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_frees_when_its_permit_drops_and_identities_are_separate() {
        let limits = StreamLimits::new(2);
        let alice = Identity::from_spki_der(b"alice");
        let bob = Identity::from_spki_der(b"bob");
        let a1 = limits.acquire(alice).unwrap();
        let _a2 = limits.acquire(alice).unwrap();
        assert!(limits.acquire(alice).is_none());
        assert!(limits.acquire(bob).is_some());
        drop(a1);
        assert_eq!(limits.open(alice), 1);
        assert!(limits.acquire(alice).is_some());
    }
}

//! How many jobs each owner has that are not final yet, for
//! [`super::JobQuota::max_running_jobs`]: a [`RunningSlot`] is held by the
//! job's supervisor and uncounts the job when dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::JobError;
use crate::auth::Identity;

/// Jobs not yet final, per owner, for [`JobQuota::max_running_jobs`].
#[derive(Debug, Default)]
pub(super) struct RunningSlots {
    counts: Mutex<HashMap<Identity, u32>>,
}

/// One job of `owner` counted as running; dropping it uncounts the job.
#[derive(Debug)]
pub(crate) struct RunningSlot {
    slots: Arc<RunningSlots>,
    owner: Identity,
}

impl RunningSlots {
    /// Counts one more job of `owner`, unless it has `max` already.
    pub(super) fn acquire(
        self: &Arc<Self>,
        owner: Identity,
        max: Option<u32>,
    ) -> Result<RunningSlot, JobError> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(owner).or_insert(0);
        if let Some(max) = max {
            if *n >= max {
                if *n == 0 {
                    counts.remove(&owner);
                }
                return Err(JobError::TooManyRunningJobs { max });
            }
        }
        *n += 1;
        Ok(RunningSlot {
            slots: self.clone(),
            owner,
        })
    }
}

impl Drop for RunningSlot {
    fn drop(&mut self) {
        let mut counts = self.slots.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.owner) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.owner);
            }
        }
    }
}

//! Limits and quotas as values: what a job may use and what an identity's
//! jobs may have, shared by the policy (which writes them) and the job
//! engine (which enforces them).
//!
//! This module owns only the types and their pure merging; it imports
//! nothing of the crate, so `policy` and `job` both depend on it and not on
//! each other. Checking a request against a ceiling (with its errors) stays
//! in `job`. Re-exported from [`crate::job`].

/// Smallest memory limit accepted: 4 MiB. Below it the job's init and a shell
/// cannot even start, which would look like a server fault.
pub const MIN_MEMORY_BYTES: u64 = 4 * 1024 * 1024;
/// Smallest CPU limit accepted, in thousandths of a core: 10 (1 %). The
/// kernel's CFS bandwidth control takes at least 1 ms of runtime per 100 ms
/// period (sched(7), `cpu.cfs_quota_us`).
pub const MIN_CPU_MILLIS: u32 = 10;
/// Smallest process limit accepted: 2, the job's init and the program.
pub const MIN_PIDS: u32 = 2;
/// Largest process limit accepted: the kernel's `PID_MAX_LIMIT` on 64-bit
/// Linux (4 Mi, `include/linux/threads.h`); `pids.max` refuses more.
pub const MAX_PIDS: u32 = 4 * 1024 * 1024;

/// Resource limits of one job. `None` means "not limited" in a ceiling or an
/// effective limit, and "take the ceiling" in a request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResourceLimits {
    /// Memory of all the job's processes together, in bytes (no swap beyond).
    pub memory_bytes: Option<u64>,
    /// CPU bandwidth in thousandths of one core (1000 = one core).
    pub cpu_millis: Option<u32>,
    /// Processes and threads at once, the job's init included; at most
    /// [`MAX_PIDS`].
    pub pids: Option<u32>,
    /// Read bandwidth per configured IO device, in bytes per second.
    pub io_read_bps: Option<u64>,
    /// Write bandwidth per configured IO device, in bytes per second.
    pub io_write_bps: Option<u64>,
}

impl ResourceLimits {
    /// True when no field is set.
    pub fn is_empty(&self) -> bool {
        *self == ResourceLimits::default()
    }

    /// True when an IO field is set.
    pub fn has_io(&self) -> bool {
        self.io_read_bps.is_some() || self.io_write_bps.is_some()
    }
}

/// `n` bytes for people: `512 B`, `4.0 MiB`, `1.5 GiB` (powers of 1024, one
/// decimal).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// One field of a per-identity change to the daemon's ceilings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Override<T> {
    /// Keep the daemon's ceiling (`jobsd --max-*`).
    #[default]
    Inherit,
    /// No ceiling for this identity.
    Unlimited,
    /// This ceiling (and default) instead, in the field's unit.
    Limit(T),
}

impl<T: Copy> Override<T> {
    /// The value in force over `base` (`None`: not limited).
    pub fn apply(self, base: Option<T>) -> Option<T> {
        match self {
            Override::Inherit => base,
            Override::Unlimited => None,
            Override::Limit(v) => Some(v),
        }
    }
}

/// Changes to the daemon's per-job ceilings for one identity (from the policy
/// file's `[limits]` and `[users."…".limits]`). Fields and units as in
/// [`ResourceLimits`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CeilingOverrides {
    /// Memory, in bytes.
    pub memory_bytes: Override<u64>,
    /// CPU, in thousandths of a core.
    pub cpu_millis: Override<u32>,
    /// Processes and threads.
    pub pids: Override<u32>,
    /// Read bandwidth per IO device, in bytes per second.
    pub io_read_bps: Override<u64>,
    /// Write bandwidth per IO device, in bytes per second.
    pub io_write_bps: Override<u64>,
}

impl CeilingOverrides {
    /// `base` with every overridden field replaced.
    pub fn apply(&self, base: &ResourceLimits) -> ResourceLimits {
        ResourceLimits {
            memory_bytes: self.memory_bytes.apply(base.memory_bytes),
            cpu_millis: self.cpu_millis.apply(base.cpu_millis),
            pids: self.pids.apply(base.pids),
            io_read_bps: self.io_read_bps.apply(base.io_read_bps),
            io_write_bps: self.io_write_bps.apply(base.io_write_bps),
        }
    }
}

/// What one identity's jobs may have, from the policy. `None` means not
/// limited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JobQuota {
    /// Most jobs of the identity not yet final at once; 0 forbids starting
    /// any. Checked atomically with the start, so parallel starts cannot
    /// overshoot it.
    pub max_running_jobs: Option<u32>,
    /// Most output bytes (stdout and stderr together) each job may write:
    /// [`Override::Inherit`] keeps the daemon's default
    /// ([`crate::job::JobsConfig::max_output_bytes`]).
    /// The job's log keeps exactly this many; a job that writes more ends in
    /// [`crate::job::State::OutputLimit`], and if it is still running it is
    /// stopped like a stop request. Writing exactly this many is within it.
    pub max_output_bytes: Override<u64>,
    /// Changes to the daemon's ceilings for this identity's jobs.
    pub ceilings: CeilingOverrides,
    /// Changes to the daemon's limits on all of one identity's running jobs
    /// together (memory, CPU, processes; `jobsd --identity-max-*`, the
    /// engine's `JobsConfig::identity_limits`), enforced on the identity's
    /// own group where the executor has one. The io fields are always
    /// [`Override::Inherit`].
    pub identity_limits: CeilingOverrides,
    /// What this identity's jobs may do beyond the default sandbox.
    pub permits: JobPermits,
}

/// What a job may do beyond the default sandbox. Each is an explicit
/// per-identity opt-in in the policy; the default (all `false`) is the
/// strict sandbox.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JobPermits {
    /// May bind ports (TCP: Landlock; any other protocol: the bind hook) and
    /// listen on the host network.
    pub listen: bool,
    /// May create user namespaces and use the calls that make or enter
    /// namespaces (`unshare`, `clone` with namespace flags, `setns`).
    pub user_namespaces: bool,
}

//! The seccomp filter of every contained job: which system calls a job is
//! refused, and why.
//!
//! Modelled on Docker's default profile, but written as a deny list (the job
//! already runs as an unprivileged uid with no capabilities, no_new_privs,
//! Landlock and its own namespaces; the filter removes kernel surface that
//! none of those cover, or that is not namespaced at all). Every refused call
//! answers `EPERM` — the job sees an ordinary error, nothing is killed —
//! except `clone3`, which answers `ENOSYS`: its flags sit in memory a filter
//! cannot read, and `ENOSYS` makes the C library fall back to `clone`, whose
//! flags the filter does check.
//!
//! Left allowed on purpose: `ptrace`, `process_vm_readv`/`writev` and
//! `kcmp`: the job's PID namespace holds only its own processes, its uid and
//! non-dumpable init keep it from anything else, and Landlock refuses to
//! trace a process outside the job's domain (the init included). The NUMA calls (`mbind`,
//! `set_mempolicy`, `move_pages`), which Docker refuses without
//! CAP_SYS_NICE: they only place the job's own memory, which its cgroup
//! bounds.
//!
//! # Other ABIs
//! The filter opens with its own check (`prologue`) before the
//! seccompiler program: a system call made through another ABI of the CPU
//! (i386 `int 0x80` or the x32 ABI on x86_64, numbers with
//! `__X32_SYSCALL_BIT` set) is refused with `EPERM` whatever its number, so
//! it can never reach a call this list refuses under another number.
//! seccompiler's own architecture check would kill the process instead, and
//! it does not look at the x32 bit at all.
//!
//! This module only builds the program; `init.rs` installs it in the
//! program's process, last before `execve`.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch, sock_filter,
};

/// A set of system calls refused for one reason.
pub struct Group {
    /// A short name for logs and tests.
    pub name: &'static str,
    /// Why a job must not have them.
    pub why: &'static str,
    /// Their numbers on this architecture.
    pub calls: &'static [libc::c_long],
}

/// The groups refused to every job, whatever it is permitted.
pub const ALWAYS: &[Group] = &[
    Group {
        name: "keyring",
        why: "kernel keyrings are not namespaced: a job could read or fill keys of its uid outside the job",
        calls: &[libc::SYS_add_key, libc::SYS_keyctl, libc::SYS_request_key],
    },
    Group {
        name: "bpf",
        why: "eBPF programs run in the kernel: a large attack surface, and tracing that sees other jobs",
        calls: &[libc::SYS_bpf],
    },
    Group {
        name: "perf",
        why: "performance events can observe other processes and the kernel, and have a long history of exploits",
        calls: &[libc::SYS_perf_event_open],
    },
    Group {
        name: "userfaultfd",
        why: "userfaultfd lets a job stall the kernel mid-copy, the classic way to win kernel races",
        calls: &[libc::SYS_userfaultfd],
    },
    Group {
        name: "io_uring",
        why: "io_uring bypasses this very filter (its operations are not system calls) and is a frequent source of kernel bugs",
        calls: &[
            libc::SYS_io_uring_setup,
            libc::SYS_io_uring_enter,
            libc::SYS_io_uring_register,
        ],
    },
    Group {
        name: "modules",
        why: "loading or removing kernel modules changes the kernel itself",
        calls: &[
            libc::SYS_init_module,
            libc::SYS_finit_module,
            libc::SYS_delete_module,
        ],
    },
    Group {
        name: "kexec",
        why: "kexec replaces the running kernel",
        calls: &[libc::SYS_kexec_load, libc::SYS_kexec_file_load],
    },
    Group {
        name: "reboot",
        why: "rebooting or halting the host is no job's business",
        calls: &[libc::SYS_reboot],
    },
    Group {
        name: "clock",
        why: "the clocks are shared by the whole host (there is no time namespace for CLOCK_REALTIME)",
        calls: &[
            libc::SYS_settimeofday,
            libc::SYS_clock_settime,
            libc::SYS_clock_adjtime,
            libc::SYS_adjtimex,
        ],
    },
    Group {
        name: "swap",
        why: "swap areas are host-wide",
        calls: &[libc::SYS_swapon, libc::SYS_swapoff],
    },
    Group {
        name: "acct",
        why: "process accounting is host-wide",
        calls: &[libc::SYS_acct],
    },
    Group {
        name: "quota",
        why: "disk quotas are host-wide and quotactl parses file systems",
        calls: &[libc::SYS_quotactl, libc::SYS_quotactl_fd],
    },
    Group {
        name: "file_handles",
        why: "open_by_handle_at opens files by inode, around every directory permission (the 'shocker' escape)",
        calls: &[libc::SYS_open_by_handle_at, libc::SYS_name_to_handle_at],
    },
    Group {
        name: "kernel_admin",
        why: "obsolete or administrative interfaces: the kernel log, dcookies, the NFS server, fanotify",
        calls: &[
            libc::SYS_syslog,
            libc::SYS_lookup_dcookie,
            libc::SYS_nfsservctl,
            libc::SYS_fanotify_init,
        ],
    },
    #[cfg(target_arch = "x86_64")]
    Group {
        name: "x86_legacy",
        why: "port IO and obsolete calls of x86: direct hardware access, and code nobody maintains",
        calls: &[
            libc::SYS_iopl,
            libc::SYS_ioperm,
            libc::SYS_uselib,
            libc::SYS_ustat,
            libc::SYS_sysfs,
            libc::SYS__sysctl,
        ],
    },
];

/// Refused unless the job has the `user_namespaces` permit: mounting. In the
/// job's own user namespace (only with the permit) mounts are confined to
/// mount namespaces that namespace owns; outside one the kernel refuses them
/// anyway for lack of CAP_SYS_ADMIN, and this removes the parsing surface.
pub const MOUNT: Group = Group {
    name: "mount",
    why: "mounting parses untrusted file system images and changes what the job's paths mean",
    calls: &[
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_fsopen,
        libc::SYS_fsconfig,
        libc::SYS_fsmount,
        libc::SYS_fspick,
        libc::SYS_open_tree,
        libc::SYS_move_mount,
        libc::SYS_mount_setattr,
        SYS_OPEN_TREE_ATTR,
    ],
};

/// `open_tree_attr(2)` (Linux 6.15), not yet in the `libc` crate. Calls
/// added since Linux 5.1 have one number on every architecture but alpha.
const SYS_OPEN_TREE_ATTR: libc::c_long = 467;

/// Refused unless the job has the `listen` permit or a network of its own:
/// `listen(2)`. Landlock refuses `bind` of TCP ports, but `listen` on a
/// socket that was never bound picks a free port itself (autobind) without a
/// `bind`, which no Landlock right covers (ABI 7), so a job could still serve
/// on every address of the host. The filter cannot see a socket's family, so
/// Unix stream sockets cannot listen either.
pub const LISTEN: Group = Group {
    name: "listen",
    why: "a listening socket on the host network is a door into the job for anyone, other identities' jobs included",
    calls: &[libc::SYS_listen],
};

/// Socket families refused to every job: `socket(2)` and `socketpair(2)`
/// with one of these as the domain answer `EPERM`, as in Docker's profile.
/// AF_VSOCK reaches the hypervisor or other guests, outside everything the
/// job's network namespace and Landlock describe.
pub const SOCKET_FAMILIES: [u64; 1] = [libc::AF_VSOCK as u64];

/// Refused unless the job has the `user_namespaces` permit: entering any
/// namespace. (Making one is refused by flag, see [`NAMESPACE_FLAGS`].)
pub const SETNS: Group = Group {
    name: "setns",
    why: "joining another namespace would leave the job's own",
    calls: &[libc::SYS_setns],
};

/// The `CLONE_NEW*` flags that `unshare` (and `clone`, without
/// `CLONE_NEWTIME`, whose bit is part of `clone`'s exit signal) may not
/// carry without the `user_namespaces` permit: unprivileged user namespaces
/// open most of the kernel's root-only code to the job.
pub const NAMESPACE_FLAGS: [u64; 8] = [
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWTIME as u64,
];

/// `personality(2)` values Docker allows: PER_LINUX, PER_LINUX32, UNAME26,
/// both, and the query 0xffffffff. Every other persona changes how the
/// kernel treats the process (READ_IMPLIES_EXEC, ADDR_NO_RANDOMIZE, …).
pub const PERSONALITIES: [u64; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// The architecture the filter is compiled for; `None` where this build does
/// not know the system-call numbers, and containment must then refuse.
pub fn target_arch() -> Option<TargetArch> {
    if cfg!(target_arch = "x86_64") {
        Some(TargetArch::x86_64)
    } else if cfg!(target_arch = "aarch64") {
        Some(TargetArch::aarch64)
    } else if cfg!(target_arch = "riscv64") {
        Some(TargetArch::riscv64)
    } else {
        None
    }
}

/// The AUDIT_ARCH value of this build's system calls (linux/audit.h).
fn audit_arch() -> Option<u32> {
    const LE64: u32 = 0x8000_0000 | 0x4000_0000;
    if cfg!(target_arch = "x86_64") {
        Some(62 | LE64)
    } else if cfg!(target_arch = "aarch64") {
        Some(183 | LE64)
    } else if cfg!(target_arch = "riscv64") {
        Some(243 | LE64)
    } else {
        None
    }
}

/// Why no filter can be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FilterError {
    /// This build does not know the system-call numbers of the CPU.
    #[error("no seccomp filter for the {arch} architecture in this build")]
    UnsupportedArch {
        /// `std::env::consts::ARCH`.
        arch: &'static str,
    },
    /// seccompiler refused the rules (a bug here).
    #[error("cannot compile the seccomp filter")]
    Compile(#[source] seccompiler::BackendError),
}

// Classic BPF opcodes (linux/bpf_common.h): class | size | mode/op | source.
/// BPF_LD | BPF_W | BPF_ABS: load a 32-bit word of `seccomp_data`.
const BPF_LD_W_ABS: u16 = 0x20;
/// BPF_JMP | BPF_JEQ | BPF_K.
const BPF_JMP_JEQ_K: u16 = 0x05 | 0x10;
/// BPF_JMP | BPF_JGE | BPF_K.
const BPF_JMP_JGE_K: u16 = 0x05 | 0x30;
/// BPF_RET | BPF_K.
const BPF_RET_K: u16 = 0x06;
/// offsetof(struct seccomp_data, nr) and (…, arch).
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
/// x86_64's `__X32_SYSCALL_BIT`.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

fn ret_errno(errno: i32) -> u32 {
    libc::SECCOMP_RET_ERRNO | (errno as u32 & libc::SECCOMP_RET_DATA)
}

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// The filter's first instructions: a call of another ABI → `EPERM`; on
/// x86_64 an x32 call (number ≥ `__X32_SYSCALL_BIT`) → `EPERM`; `clone3` →
/// `ENOSYS`. Everything else falls through to the seccompiler program, which
/// repeats its own architecture check (always true by then).
fn prologue(arch: u32) -> Vec<sock_filter> {
    let mut out = vec![
        stmt(BPF_LD_W_ABS, DATA_ARCH),
        jump(BPF_JMP_JEQ_K, arch, 1, 0),
        stmt(BPF_RET_K, ret_errno(libc::EPERM)),
        stmt(BPF_LD_W_ABS, DATA_NR),
    ];
    if cfg!(target_arch = "x86_64") {
        out.push(jump(BPF_JMP_JGE_K, X32_SYSCALL_BIT, 0, 1));
        out.push(stmt(BPF_RET_K, ret_errno(libc::EPERM)));
    }
    out.push(jump(BPF_JMP_JEQ_K, libc::SYS_clone3 as u32, 0, 1));
    out.push(stmt(BPF_RET_K, ret_errno(libc::ENOSYS)));
    out
}

/// The whole filter for a job: [`ALWAYS`]; unless `allow_namespaces`,
/// [`MOUNT`], [`SETNS`], `unshare`/`clone` with any of [`NAMESPACE_FLAGS`];
/// unless `allow_listen`, [`LISTEN`]; sockets of [`SOCKET_FAMILIES`];
/// `personality` other than [`PERSONALITIES`]; `clone3` → `ENOSYS`.
///
/// # Errors
/// [`FilterError::UnsupportedArch`] on a CPU this build has no numbers for;
/// [`FilterError::Compile`] should seccompiler refuse the rules.
pub fn build(allow_namespaces: bool, allow_listen: bool) -> Result<BpfProgram, FilterError> {
    let unsupported = || FilterError::UnsupportedArch {
        arch: std::env::consts::ARCH,
    };
    let arch = target_arch().ok_or_else(unsupported)?;
    let audit = audit_arch().ok_or_else(unsupported)?;
    let compile = FilterError::Compile;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let mut groups: Vec<&Group> = ALWAYS.iter().collect();
    if !allow_namespaces {
        groups.push(&MOUNT);
        groups.push(&SETNS);
    }
    if !allow_listen {
        groups.push(&LISTEN);
    }
    for group in groups {
        for &call in group.calls {
            rules.insert(call, Vec::new());
        }
    }
    if !allow_namespaces {
        let flag_rules = |flags: &[u64]| -> Result<Vec<SeccompRule>, FilterError> {
            flags
                .iter()
                .map(|&flag| {
                    let cond = SeccompCondition::new(
                        0,
                        SeccompCmpArgLen::Dword,
                        SeccompCmpOp::MaskedEq(flag),
                        flag,
                    )
                    .map_err(compile)?;
                    SeccompRule::new(vec![cond]).map_err(compile)
                })
                .collect()
        };
        rules.insert(libc::SYS_unshare, flag_rules(&NAMESPACE_FLAGS)?);
        // clone(2)'s flags are its first argument on x86_64, aarch64 and
        // riscv64 (the only architectures `target_arch` accepts).
        let clone_flags: Vec<u64> = NAMESPACE_FLAGS
            .into_iter()
            .filter(|&f| f != libc::CLONE_NEWTIME as u64)
            .collect();
        rules.insert(libc::SYS_clone, flag_rules(&clone_flags)?);
    }
    let family_rules = SOCKET_FAMILIES
        .iter()
        .map(|&family| {
            let cond = SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, family)
                .map_err(compile)?;
            SeccompRule::new(vec![cond]).map_err(compile)
        })
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_socket, family_rules.clone());
    rules.insert(libc::SYS_socketpair, family_rules);
    let not_allowed = PERSONALITIES
        .iter()
        .map(|&p| SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(compile)?;
    rules.insert(
        libc::SYS_personality,
        vec![SeccompRule::new(not_allowed).map_err(compile)?],
    );
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(compile)?;
    let body: BpfProgram = filter.try_into().map_err(|e| match e {
        seccompiler::BackendError::InvalidTargetArch(_) => unsupported(),
        other => compile(other),
    })?;
    let mut program = prologue(audit);
    program.extend(body);
    Ok(program)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_group_says_why_and_names_distinct_calls() {
        let mut seen = std::collections::BTreeSet::new();
        for group in ALWAYS.iter().chain([&MOUNT, &SETNS, &LISTEN]) {
            assert!(!group.why.is_empty() && !group.name.is_empty());
            for &call in group.calls {
                assert!(seen.insert(call), "{} listed twice ({})", call, group.name);
            }
        }
        assert!(!seen.contains(&libc::SYS_ptrace), "ptrace stays allowed");
        assert!(
            !seen.contains(&libc::SYS_clone3),
            "clone3 has its own answer"
        );
    }

    /// getpid through the i386 entry (`int 0x80`, call 20) in a forked
    /// child, with the filter installed when `filtered`; the child's exit
    /// code says what it returned: 0 a pid, 1 EPERM, 2 anything else.
    #[cfg(target_arch = "x86_64")]
    fn i386_getpid_in_child(filtered: bool) -> i32 {
        let program = build(false, false).unwrap();
        // SAFETY: the child only makes system calls (prctl, seccomp, the
        // i386 getpid) and _exits: no allocation, no lock, nothing that a
        // fork of a multi-threaded test process could find held.
        match unsafe { libc::fork() } {
            0 => {
                if filtered && seccompiler::apply_filter(&program).is_err() {
                    // SAFETY: _exit ends the child at once.
                    unsafe { libc::_exit(3) }
                }
                let ret: i64;
                // SAFETY: `int 0x80` with eax = 20 is the i386 getpid; it
                // reads no memory, returns in rax and (since Linux 4.15)
                // zeroes r8-r11, declared clobbered.
                unsafe {
                    std::arch::asm!(
                        "int 0x80",
                        inlateout("rax") 20i64 => ret,
                        lateout("r8") _, lateout("r9") _, lateout("r10") _, lateout("r11") _,
                        options(nostack)
                    );
                }
                let code = match ret as i32 {
                    r if r > 0 => 0,
                    r if r == -libc::EPERM => 1,
                    _ => 2,
                };
                // SAFETY: as above.
                unsafe { libc::_exit(code) }
            }
            pid => {
                assert!(pid > 0, "fork failed");
                let mut status = 0;
                // SAFETY: waitpid writes one int to a live local.
                assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
                assert!(libc::WIFEXITED(status), "status {status:#x}");
                libc::WEXITSTATUS(status)
            }
        }
    }

    // Scenario: a job switches to the i386 system-call entry to reach calls
    // the x86_64 filter lists under other numbers; every such call is
    // refused with EPERM (and nothing is killed).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn i386_system_calls_are_refused() {
        let unfiltered = i386_getpid_in_child(false);
        if unfiltered != 0 {
            eprintln!("i386_system_calls_are_refused: skipped: the kernel runs no i386 calls");
            return;
        }
        assert_eq!(i386_getpid_in_child(true), 1);
    }

    #[test]
    fn the_filter_compiles_every_way() {
        let strict = build(false, false).unwrap();
        for (namespaces, listen) in [(true, false), (false, true), (true, true)] {
            let permitted = build(namespaces, listen).unwrap();
            assert!(strict.len() > permitted.len(), "{namespaces} {listen}");
        }
        // Far below the kernel's BPF_MAXINSNS (4096).
        assert!(strict.len() < 1000, "{}", strict.len());
    }
}

//! The bind hook: no job binds a port of the host network's addresses
//! without the `listen` permit, whatever the protocol.
//!
//! Landlock (ABI 4–7) rules TCP binds only; a UDP (or SCTP, or ICMP-ping)
//! socket bound to a named port is a service anyone on the network reaches,
//! other identities' jobs included, and a rendezvous between them. The hook
//! is a cgroup socket-address program (`BPF_CGROUP_INET4_BIND` and
//! `BPF_CGROUP_INET6_BIND`) on each job's cgroup2 group: every `bind(2)` of
//! an IPv4 or IPv6 socket by a process in the group asks it, and it answers
//! "refuse" (the caller gets `EPERM`) unless the port asked for is 0.
//! Port 0 stays allowed: it is what a client's resolver asks for (musl binds
//! its DNS sockets so), and the kernel's pick of a free port is no more
//! than the automatic bind of any `sendto`/`connect`, which no hook sees.
//!
//! The two programs are loaded once when the executor opens; each job's
//! group gets them attached before its first process enters, and they go
//! with the group. Only `jobsd` (root) loads and attaches; a job has no
//! capabilities and cannot detach them.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// `BPF_PROG_LOAD`, `BPF_PROG_ATTACH` (`include/uapi/linux/bpf.h`).
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
/// `BPF_PROG_TYPE_CGROUP_SOCK_ADDR`.
const PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
/// `BPF_CGROUP_INET4_BIND`, `BPF_CGROUP_INET6_BIND`.
const ATTACH_INET4_BIND: u32 = 8;
const ATTACH_INET6_BIND: u32 = 9;
/// Offset of `user_port` in `struct bpf_sock_addr` (after `user_family`,
/// `user_ip4` and `user_ip6[4]`), in network byte order; 0 is 0 in any order.
const USER_PORT_OFFSET: i16 = 24;

/// One eBPF instruction (`struct bpf_insn`): opcode, destination and source
/// registers (low and high nibble), offset, immediate.
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

/// The program: `r0 = (ctx->user_port == 0)`; 1 lets the bind go on, 0
/// refuses it.
const PROGRAM: [Insn; 5] = [
    // r2 = *(u32 *)(r1 + user_port)    BPF_LDX | BPF_MEM | BPF_W
    Insn {
        code: 0x61,
        regs: 2 | (1 << 4),
        off: USER_PORT_OFFSET,
        imm: 0,
    },
    // r0 = 1                           BPF_ALU64 | BPF_MOV | BPF_K
    Insn {
        code: 0xb7,
        regs: 0,
        off: 0,
        imm: 1,
    },
    // if r2 == 0 goto +1               BPF_JMP | BPF_JEQ | BPF_K
    Insn {
        code: 0x15,
        regs: 2,
        off: 1,
        imm: 0,
    },
    // r0 = 0
    Insn {
        code: 0xb7,
        regs: 0,
        off: 0,
        imm: 0,
    },
    // exit                             BPF_JMP | BPF_EXIT
    Insn {
        code: 0x95,
        regs: 0,
        off: 0,
        imm: 0,
    },
];

/// The first fields of `union bpf_attr` for `BPF_PROG_LOAD`, up to
/// `expected_attach_type`; the kernel takes the rest as zero.
#[repr(C)]
#[derive(Default)]
struct LoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The fields of `union bpf_attr` for `BPF_PROG_ATTACH` that we set.
#[repr(C)]
struct AttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
}

/// The loaded programs, one per address family.
#[derive(Debug)]
pub struct BindHook {
    v4: OwnedFd,
    v6: OwnedFd,
}

impl BindHook {
    /// Loads both programs.
    ///
    /// # Errors
    /// What `bpf(BPF_PROG_LOAD)` says: `EPERM` without `CAP_BPF` (or
    /// `CAP_SYS_ADMIN`), `ENOSYS` on a kernel without `bpf(2)`, `EINVAL` on
    /// one without cgroup socket-address programs (before Linux 4.17).
    pub fn load() -> io::Result<Self> {
        Ok(Self {
            v4: load(ATTACH_INET4_BIND)?,
            v6: load(ATTACH_INET6_BIND)?,
        })
    }

    /// Attaches both programs to the cgroup2 group `dir`, so that every
    /// process in it or below is asked before it binds.
    ///
    /// # Errors
    /// Opening `dir`, or what `bpf(BPF_PROG_ATTACH)` says (`EBADF`/`EINVAL`
    /// for a directory that is not a cgroup2 group).
    pub fn attach(&self, dir: &Path) -> io::Result<()> {
        let group = File::open(dir)?;
        for (prog, attach_type) in [(&self.v4, ATTACH_INET4_BIND), (&self.v6, ATTACH_INET6_BIND)] {
            let attr = AttachAttr {
                target_fd: fd_u32(&group),
                attach_bpf_fd: fd_u32(prog),
                attach_type,
                // No BPF_F_ALLOW_OVERRIDE / ALLOW_MULTI: nothing below the
                // group may attach a program of its own for these hooks.
                attach_flags: 0,
            };
            bpf(BPF_PROG_ATTACH, &attr)?;
        }
        Ok(())
    }
}

fn fd_u32(fd: &impl AsRawFd) -> u32 {
    // A descriptor of ours is never negative.
    u32::try_from(fd.as_raw_fd()).unwrap_or(u32::MAX)
}

fn load(expected_attach_type: u32) -> io::Result<OwnedFd> {
    let mut name = [0u8; 16];
    name[..9].copy_from_slice(b"jobs_bind");
    let attr = LoadAttr {
        prog_type: PROG_TYPE_CGROUP_SOCK_ADDR,
        insn_cnt: PROGRAM.len() as u32,
        insns: PROGRAM.as_ptr() as u64,
        license: c"GPL".as_ptr() as u64,
        prog_name: name,
        expected_attach_type,
        ..LoadAttr::default()
    };
    let fd = bpf(BPF_PROG_LOAD, &attr)?;
    // SAFETY: a successful BPF_PROG_LOAD returns a new descriptor that
    // nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `bpf(cmd, attr, sizeof attr)`; the new descriptor, or 0.
fn bpf<T>(cmd: libc::c_long, attr: &T) -> io::Result<i32> {
    // SAFETY: `attr` is a live, initialised `repr(C)` prefix of `union
    // bpf_attr` of the size passed; every pointer in it (instructions,
    // license) points at data that outlives the call. The kernel only reads
    // it for these commands.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_ref(attr),
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(i32::try_from(ret).unwrap_or(i32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_attributes_have_the_kernels_layout() {
        // expected_attach_type sits at byte 68 of union bpf_attr.
        assert_eq!(std::mem::size_of::<LoadAttr>(), 72);
        assert_eq!(std::mem::size_of::<AttachAttr>(), 16);
        assert_eq!(std::mem::size_of::<Insn>(), 8);
    }
}

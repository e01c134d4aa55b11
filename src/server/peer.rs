//! Who is behind a TCP connection, as far as counting pending handshakes and
//! their rate goes: the [`Source`] a connection is counted under.
//!
//! A remote peer is its address (an IPv4 address or an IPv6 /64, see
//! `policy::source_of`). A peer on this machine would share one address with every
//! local user and every job (127.0.0.1, or the host's own address), so one
//! local program could take every local client's share; it is told apart by
//! the uid that owns its socket instead. The kernel knows that uid
//! (`NETLINK_SOCK_DIAG`, the interface `ss -e` reads), and every identity's
//! jobs run under their own uid, so each identity's jobs and each local user
//! are sources of their own.
//!
//! The lookup is one exact-match netlink request for the peer's socket (its
//! local end is the connection's remote address and the other way round):
//! a few microseconds in the kernel, no file system and nothing that waits
//! on another process. A peer whose socket is not in this network namespace
//! is remote; one whose socket is gone by the time of the lookup (it closed
//! at once) falls back to its address.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

pub(crate) use crate::policy::Source;

/// The source of a connection from `peer` accepted on `local`.
pub(crate) fn source(peer: SocketAddr, local: SocketAddr) -> Source {
    match local_owner(peer, local) {
        Ok(Some(uid)) => Source::LocalUser(uid),
        Ok(None) => Source::from(peer.ip()),
        Err(e) => {
            tracing::debug!(%peer, error = %e, "cannot look up the peer's socket; counting it by address");
            Source::from(peer.ip())
        }
    }
}

// linux/netlink.h, linux/sock_diag.h, linux/inet_diag.h.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const INET_DIAG_NOCOOKIE: u32 = !0;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct NlMsgHdr {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct InetDiagSockId {
    /// Network byte order.
    sport: [u8; 2],
    dport: [u8; 2],
    src: [u8; 16],
    dst: [u8; 16],
    interface: u32,
    cookie: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct InetDiagReqV2 {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: InetDiagSockId,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Request {
    header: NlMsgHdr,
    body: InetDiagReqV2,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct InetDiagMsg {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: InetDiagSockId,
    expires: u32,
    rqueue: u32,
    wqueue: u32,
    uid: u32,
    inode: u32,
}

/// The uid owning the TCP socket of this machine whose local end is `peer`
/// and remote end `local`; `None` if there is none (the peer is elsewhere,
/// or its socket is already gone).
fn local_owner(peer: SocketAddr, local: SocketAddr) -> io::Result<Option<u32>> {
    let (family, src, dst) = match (peer, local) {
        (SocketAddr::V4(p), SocketAddr::V4(l)) => {
            let mut src = [0u8; 16];
            let mut dst = [0u8; 16];
            src[..4].copy_from_slice(&p.ip().octets());
            dst[..4].copy_from_slice(&l.ip().octets());
            (libc::AF_INET, src, dst)
        }
        (SocketAddr::V6(p), SocketAddr::V6(l)) => {
            (libc::AF_INET6, p.ip().octets(), l.ip().octets())
        }
        // A listener has one family; mixed ends cannot be one connection.
        _ => return Ok(None),
    };
    let request = Request {
        header: NlMsgHdr {
            len: size_of::<Request>() as u32,
            kind: SOCK_DIAG_BY_FAMILY,
            flags: libc::NLM_F_REQUEST as u16,
            seq: 1,
            pid: 0,
        },
        body: InetDiagReqV2 {
            family: family as u8,
            protocol: libc::IPPROTO_TCP as u8,
            ext: 0,
            pad: 0,
            states: !0,
            id: InetDiagSockId {
                sport: peer.port().to_be_bytes(),
                dport: local.port().to_be_bytes(),
                src,
                dst,
                interface: 0,
                cookie: [INET_DIAG_NOCOOKIE; 2],
            },
        },
    };
    // SAFETY: socket(2) takes no pointers; the descriptor it returns is
    // owned by `fd` alone.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: the request and the address are plain repr(C) values that live
    // across the call; the lengths passed are theirs.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            (&raw const request).cast(),
            size_of::<Request>(),
            0,
            (&raw const kernel).cast(),
            size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    // The answer: one message (the socket) or an error message (ENOENT when
    // no socket matches). Room for either with slack.
    let mut answer = [0u64; 64];
    // SAFETY: recv writes at most the length given into `answer`, which lives
    // across the call.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            answer.as_mut_ptr().cast(),
            size_of_val(&answer),
            0,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let bytes: Vec<u8> = answer.iter().flat_map(|w| w.to_ne_bytes()).collect();
    parse_answer(&bytes[..n as usize])
}

/// The uid in a sock_diag answer, `None` for "no such socket".
fn parse_answer(bytes: &[u8]) -> io::Result<Option<u32>> {
    let header_len = size_of::<NlMsgHdr>();
    let short = || io::Error::new(io::ErrorKind::InvalidData, "short sock_diag answer");
    let header = bytes.get(..header_len).ok_or_else(short)?;
    let kind = u16::from_ne_bytes([header[4], header[5]]);
    let body = &bytes[header_len..];
    if kind == libc::NLMSG_ERROR as u16 {
        let errno = i32::from_ne_bytes(body.get(..4).ok_or_else(short)?.try_into().unwrap());
        return match -errno {
            0 | libc::ENOENT => Ok(None),
            e => Err(io::Error::from_raw_os_error(e)),
        };
    }
    if kind != SOCK_DIAG_BY_FAMILY {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected sock_diag answer type {kind}"),
        ));
    }
    let at = std::mem::offset_of!(InetDiagMsg, uid);
    let uid = body.get(at..at + 4).ok_or_else(short)?;
    Ok(Some(u32::from_ne_bytes(uid.try_into().unwrap())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    /// A connection to a listener on `addr`, as (accepted peer, local end).
    fn connection(addr: &str) -> Option<(TcpStream, TcpStream, SocketAddr, SocketAddr)> {
        let listener = TcpListener::bind(addr).ok()?;
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, peer) = listener.accept().unwrap();
        let local = server.local_addr().unwrap();
        Some((client, server, peer, local))
    }

    #[test]
    fn a_loopback_peer_is_its_sockets_owner() {
        // Scenario: this process connects to itself over 127.0.0.1 and ::1;
        // the peer is counted as this process's uid, not as the address.
        let me = nix::unistd::geteuid().as_raw();
        for addr in ["127.0.0.1:0", "[::1]:0"] {
            let Some((_client, _server, peer, local)) = connection(addr) else {
                assert_eq!(addr, "[::1]:0", "no IPv4 loopback");
                continue;
            };
            assert_eq!(source(peer, local), Source::LocalUser(me), "{addr}");
        }
    }

    #[test]
    fn a_socket_made_under_another_fsuid_is_counted_as_that_user() {
        // Scenario: as root, a thread takes fsuid 65534 (the uid a socket is
        // stamped with) and connects; the peer is uid 65534, while this
        // thread's own connection is uid 0.
        if !nix::unistd::geteuid().is_root() {
            eprintln!("needs root to change its fsuid; the own-uid case is checked above");
            return;
        }
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let to = listener.local_addr().unwrap();
        let client = std::thread::spawn(move || {
            // SAFETY: setfsuid changes this thread's credentials only.
            unsafe { libc::setfsuid(65534) };
            let s = TcpStream::connect(to).unwrap();
            // SAFETY: as above; back to root before the thread ends.
            unsafe { libc::setfsuid(0) };
            s
        })
        .join()
        .unwrap();
        let (server, peer) = listener.accept().unwrap();
        assert_eq!(
            source(peer, server.local_addr().unwrap()),
            Source::LocalUser(65534)
        );
        let own = TcpStream::connect(to).unwrap();
        let (server, peer) = listener.accept().unwrap();
        assert_eq!(
            source(peer, server.local_addr().unwrap()),
            Source::LocalUser(0)
        );
        drop((client, own));
    }

    #[test]
    fn a_peer_whose_socket_is_not_here_is_its_address() {
        // Scenario: the lookup finds no socket for an address pair that is no
        // connection of this machine: the source is the address (IPv6 /64).
        let peer: SocketAddr = "192.0.2.7:40000".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(local_owner(peer, local).unwrap(), None);
        assert_eq!(
            source(peer, local),
            Source::Address("192.0.2.7".parse().unwrap())
        );
        let peer: SocketAddr = "[2001:db8:1:2:3::4]:40000".parse().unwrap();
        let local: SocketAddr = "[::1]:1".parse().unwrap();
        assert_eq!(
            source(peer, local),
            Source::Address("2001:db8:1:2::".parse().unwrap())
        );
    }
}

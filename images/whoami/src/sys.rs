//! Thin wrappers over the few libc calls std does not offer: hostname, interface
//! addresses, exit-on-signal handlers and IPv6-only sockets.

use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener, UdpSocket};
use std::os::fd::{FromRawFd, OwnedFd};
use std::ptr;

/// The kernel's host name (UTS nodename); inside a container this is the task's hostname.
/// Falls back to `"unknown"` if the call fails.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is writable for buf.len() bytes; gethostname writes at most that many.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast::<libc::c_char>(), buf.len()) };
    if rc != 0 {
        return "unknown".to_string();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).into_owned();
    if name.is_empty() {
        "unknown".to_string()
    } else {
        name
    }
}

/// Every IPv4/IPv6 address configured on a non-loopback interface, in the order
/// getifaddrs reports them, without duplicates. Empty if getifaddrs fails.
pub fn interface_addrs() -> Vec<IpAddr> {
    let mut head: *mut libc::ifaddrs = ptr::null_mut();
    // SAFETY: head is a valid out pointer; on success it must be released with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: cur is a node of the list getifaddrs returned and has not been freed yet.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_flags & (libc::IFF_LOOPBACK as libc::c_uint) != 0 {
            continue;
        }
        // SAFETY: ifa_addr is non-null and points at a sockaddr whose family tells its real type;
        // read_unaligned avoids assuming the stricter alignment of the concrete type.
        let ip = unsafe {
            match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let sin = ptr::read_unaligned(ifa.ifa_addr.cast::<libc::sockaddr_in>());
                    IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)))
                }
                libc::AF_INET6 => {
                    let sin6 = ptr::read_unaligned(ifa.ifa_addr.cast::<libc::sockaddr_in6>());
                    IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr))
                }
                _ => continue,
            }
        };
        if !ip.is_loopback() && !out.contains(&ip) {
            out.push(ip);
        }
    }
    // SAFETY: head came from a successful getifaddrs and is freed exactly once.
    unsafe { libc::freeifaddrs(head) };
    out
}

extern "C" fn exit_on_signal(_sig: libc::c_int) {
    const MSG: &[u8] = b"whoami: signal received, exiting\n";
    // SAFETY: write(2) and _exit(2) are async-signal-safe; MSG is a static buffer.
    unsafe {
        libc::write(1, MSG.as_ptr().cast(), MSG.len());
        libc::_exit(0);
    }
}

/// Make SIGTERM and SIGINT end the process with status 0. Needed because PID 1 in a
/// container ignores signals that have no handler.
pub fn install_exit_handlers() -> io::Result<()> {
    let handler = exit_on_signal as extern "C" fn(libc::c_int);
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: a zeroed sigaction is a valid starting value; the handler only calls
        // async-signal-safe functions.
        unsafe {
            let mut sa: libc::sigaction = mem::zeroed();
            sa.sa_sigaction = handler as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(sig, &sa, ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn set_int_opt(
    fd: &OwnedFd,
    level: libc::c_int,
    opt: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: value lives across the call and its size is passed alongside.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&value as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
}

/// A socket of `kind` bound to `[::]:port` with IPV6_V6ONLY set, so it can sit next to
/// the IPv4 socket on the same port. Stream sockets are also put into listening state.
fn bind_v6_only(port: u16, kind: libc::c_int) -> io::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    // SAFETY: plain socket(2) call; the descriptor is owned right away.
    let raw = unsafe { libc::socket(libc::AF_INET6, kind | libc::SOCK_CLOEXEC, 0) };
    check(raw)?;
    // SAFETY: raw is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    set_int_opt(&fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
    if kind == libc::SOCK_STREAM {
        set_int_opt(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    }
    // SAFETY: all-zero sockaddr_in6 is the unspecified address; family and port set below.
    let mut addr: libc::sockaddr_in6 = unsafe { mem::zeroed() };
    addr.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    addr.sin6_port = port.to_be();
    // SAFETY: addr is a valid sockaddr_in6 and its exact size is passed.
    check(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_in6).cast(),
            mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        )
    })?;
    if kind == libc::SOCK_STREAM {
        // SAFETY: fd is a bound stream socket.
        check(unsafe { libc::listen(fd.as_raw_fd(), 1024) })?;
    }
    Ok(fd)
}

/// TCP listener on `[::]:port`, IPv6 only.
pub fn tcp_listener_v6(port: u16) -> io::Result<TcpListener> {
    bind_v6_only(port, libc::SOCK_STREAM).map(TcpListener::from)
}

/// UDP socket on `[::]:port`, IPv6 only.
pub fn udp_socket_v6(port: u16) -> io::Result<UdpSocket> {
    bind_v6_only(port, libc::SOCK_DGRAM).map(UdpSocket::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostname_matches_kernel() {
        let h = hostname();
        assert!(!h.is_empty());
        if let Ok(k) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
            assert_eq!(h, k.trim_end());
        }
    }

    #[test]
    fn interface_addrs_skip_loopback() {
        let addrs = interface_addrs();
        assert!(addrs.iter().all(|a| !a.is_loopback()), "{addrs:?}");
        let mut dedup = addrs.clone();
        dedup.dedup();
        assert_eq!(dedup.len(), addrs.len());
    }

    #[test]
    fn v6_only_sockets_coexist_with_v4() {
        // Skip quietly where the machine has no IPv6 at all.
        let Ok(v6) = tcp_listener_v6(0) else { return };
        let port = v6.local_addr().expect("local addr").port();
        assert!(v6.local_addr().expect("local addr").is_ipv6());
        // Because of IPV6_V6ONLY the IPv4 wildcard on the same port is still free.
        let v4 = TcpListener::bind(("0.0.0.0", port));
        assert!(v4.is_ok(), "{v4:?}");
        let Ok(u6) = udp_socket_v6(0) else { return };
        let uport = u6.local_addr().expect("local addr").port();
        assert!(UdpSocket::bind(("0.0.0.0", uport)).is_ok());
    }
}

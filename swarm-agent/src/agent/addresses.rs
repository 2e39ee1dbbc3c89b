//! The node's addresses: where its manager listens, and the address other nodes reach it at.

use std::net::SocketAddr;

use anyhow::{bail, Context};

pub const DEFAULT_PORT: u16 = 2377;

pub(super) fn listen_addr(s: &str) -> anyhow::Result<SocketAddr> {
    let s = if s.is_empty() { "0.0.0.0:2377" } else { s };
    let with_port = with_default_port(s);
    with_port
        .parse()
        .with_context(|| format!("invalid listen address {s:?}: expected IP[:PORT]"))
}

pub fn with_default_port(s: &str) -> String {
    if s.parse::<SocketAddr>().is_ok() {
        s.to_string()
    } else {
        format!("{s}:{DEFAULT_PORT}")
    }
}

pub(super) fn host_of(addr: &str) -> String {
    addr.parse::<SocketAddr>()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|_| addr.to_string())
}

/// The address other nodes reach this node at: the flag (IP or IP:PORT, port defaulting to
/// the listen port), else the listen IP when it is specific, else the only non-loopback
/// IPv4 address of the host.
pub(super) fn advertise_addr(flag: &str, listen: SocketAddr) -> anyhow::Result<String> {
    if !flag.is_empty() {
        if let Ok(a) = flag.parse::<SocketAddr>() {
            return Ok(a.to_string());
        }
        let ip: std::net::IpAddr = flag.parse().with_context(|| {
            format!("invalid advertise address {flag:?}: expected an IP address, optionally with a port")
        })?;
        return Ok(SocketAddr::new(ip, listen.port()).to_string());
    }
    if !listen.ip().is_unspecified() {
        return Ok(listen.to_string());
    }
    let ips = host_ipv4s();
    match ips.as_slice() {
        [ip] => Ok(SocketAddr::new((*ip).into(), listen.port()).to_string()),
        [] => bail!("could not find an address to advertise: specify one with --advertise-addr"),
        many => bail!(
            "could not choose an IP address to advertise since this system has multiple addresses ({}): specify one with --advertise-addr",
            many.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
        ),
    }
}

fn host_ipv4s() -> Vec<std::net::Ipv4Addr> {
    let mut out = Vec::new();
    // SAFETY: getifaddrs fills a linked list we free with freeifaddrs; we only read it.
    unsafe {
        let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&mut ifap) != 0 {
            return out;
        }
        let mut cur = ifap;
        while !cur.is_null() {
            let ifa = &*cur;
            if !ifa.ifa_addr.is_null() && (*ifa.ifa_addr).sa_family as i32 == libc::AF_INET {
                let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                if !ip.is_loopback() {
                    out.push(ip);
                }
            }
            cur = ifa.ifa_next;
        }
        libc::freeifaddrs(ifap);
    }
    out.sort();
    out.dedup();
    out
}

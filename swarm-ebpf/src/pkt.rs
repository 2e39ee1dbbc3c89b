//! Bounded access to packet headers (every read is checked against `data_end`, which is what
//! the verifier asks for) and the parsed IPv4 view the programs share.

use aya_ebpf::programs::TcContext;
use network_types::eth::EthHdr;
use network_types::ip::Ipv4Hdr;

pub const ETH_LEN: usize = EthHdr::LEN;
pub const IP_OFF: usize = ETH_LEN;
/// `ether_type` values as they sit in the frame (network order read natively).
pub const ETH_P_IP: u16 = 0x0800u16.to_be();
pub const ETH_P_ARP: u16 = 0x0806u16.to_be();

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Offsets inside the IPv4 header.
pub const IP_CHECK_OFF: usize = IP_OFF + 10;
pub const IP_SADDR_OFF: usize = IP_OFF + 12;
pub const IP_DADDR_OFF: usize = IP_OFF + 16;

/// A pointer to a `T` at `off` bytes into the packet, if the packet is that long.
#[inline(always)]
pub fn ptr_at<T>(ctx: &TcContext, off: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *mut T)
}

#[inline(always)]
pub fn eth(ctx: &TcContext) -> Option<*mut EthHdr> {
    ptr_at::<EthHdr>(ctx, 0)
}

/// The fields of an IPv4 packet the programs decide on.
#[derive(Clone, Copy)]
pub struct Ip4 {
    pub saddr: u32,
    pub daddr: u32,
    pub proto: u8,
    /// Offset of the L4 header.
    pub l4: usize,
    /// A fragment (first or later): no complete L4 header to translate.
    pub fragment: bool,
}

#[inline(always)]
pub fn ipv4(ctx: &TcContext) -> Option<Ip4> {
    let ip = ptr_at::<Ipv4Hdr>(ctx, IP_OFF)?;
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &*ip };
    let ihl = (ip.vihl & 0x0f) as usize;
    if ip.vihl >> 4 != 4 || ihl < 5 {
        return None;
    }
    let frags = u16::from_be_bytes(ip.frags);
    Some(Ip4 {
        saddr: u32::from_ne_bytes(ip.src_addr),
        daddr: u32::from_ne_bytes(ip.dst_addr),
        proto: ip.proto,
        l4: IP_OFF + ihl * 4,
        // MF set, or a non-zero offset.
        fragment: frags & 0x3fff != 0,
    })
}

/// Source and destination ports (TCP, UDP) or the echo identifier twice (ICMP echo), as
/// the packet carries them; `None` for anything else.
#[inline(always)]
pub fn ports(ctx: &TcContext, ip: &Ip4) -> Option<(u16, u16)> {
    if ip.fragment {
        return None;
    }
    match ip.proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            let p = ptr_at::<[u16; 2]>(ctx, ip.l4)?;
            // SAFETY: bounds checked by ptr_at.
            let p = unsafe { *p };
            Some((p[0], p[1]))
        }
        IPPROTO_ICMP => {
            let h = ptr_at::<[u8; 8]>(ctx, ip.l4)?;
            // SAFETY: bounds checked by ptr_at.
            let h = unsafe { *h };
            // Echo request (8) and echo reply (0) only.
            if h[0] != 8 && h[0] != 0 {
                return None;
            }
            let id = u16::from_ne_bytes([h[4], h[5]]);
            Some((id, id))
        }
        _ => None,
    }
}

/// TCP flags as the flags byte carries them.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// The flags byte of a TCP packet (0 for anything else, or a header cut short).
#[inline(always)]
pub fn tcp_flags(ctx: &TcContext, ip: &Ip4) -> u8 {
    if ip.proto != IPPROTO_TCP {
        return 0;
    }
    match ptr_at::<[u8; 14]>(ctx, ip.l4) {
        // SAFETY: bounds checked by ptr_at; byte 13 holds the flags.
        Some(h) => unsafe { (*h)[13] },
        None => 0,
    }
}

/// A connection's first packet: SYN without ACK.
#[inline(always)]
pub fn is_syn(flags: u8) -> bool {
    flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// The flow of a packet with these ports.
#[inline(always)]
pub fn flow(ip: &Ip4, sport: u16, dport: u16) -> swarm_ebpf_common::FlowKey {
    swarm_ebpf_common::FlowKey::new(ip.saddr, ip.daddr, sport, dport, ip.proto)
}

/// Offset of the L4 checksum field, and whether it is a UDP one (0 = no checksum).
#[inline(always)]
pub fn l4_check_off(ip: &Ip4) -> Option<(usize, bool)> {
    match ip.proto {
        IPPROTO_TCP => Some((ip.l4 + 16, false)),
        IPPROTO_UDP => Some((ip.l4 + 6, true)),
        IPPROTO_ICMP => Some((ip.l4 + 2, false)),
        _ => None,
    }
}

/// Sets both MAC addresses of the frame.
#[inline(always)]
pub fn set_macs(ctx: &TcContext, dst: &[u8; 6], src: &[u8; 6]) -> Option<()> {
    let e = eth(ctx)?;
    // SAFETY: bounds checked by ptr_at; the frame is writable in tc programs.
    unsafe {
        (*e).dst_addr = *dst;
        (*e).src_addr = *src;
    }
    Some(())
}

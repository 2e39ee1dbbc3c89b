//! Masquerade: traffic from a task to outside the cluster leaves with the node's address and
//! a port of the node's masquerade range; replies are translated back and handed straight to
//! the task. Flows live in two LRU maps: `SNAT_OUT` (task flow → port) and `SNAT_IN` (reply
//! flow → task), each refreshed by the traffic that uses it.
//!
//! TCP, UDP and ICMP echo (the identifier stands in for the ports). Fragments and ICMP
//! errors are not translated (the node's MTU is the overlay's plus 50, so tasks do not
//! fragment towards it).

use aya_ebpf::bindings::{
    BPF_F_INGRESS, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_NOEXIST, TC_ACT_OK, TC_ACT_SHOT,
};
use aya_ebpf::helpers::{bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer};
use aya_ebpf::programs::TcContext;
use swarm_ebpf_common::{stat, FlowKey, Iface, NodeConfig, SnatIn, SnatOut};

use crate::maps::{IFACES, SNAT_IN, SNAT_OUT};
use crate::pkt::{
    flow, ipv4, l4_check_off, ports, set_macs, Ip4, IPPROTO_ICMP, IP_CHECK_OFF, IP_DADDR_OFF,
    IP_SADDR_OFF,
};
use crate::stats;

/// Ports tried for a new flow before giving up.
const PORT_TRIES: u32 = 16;

/// Offset of the port to translate: TCP/UDP source (`dst` false) or destination port, the
/// ICMP echo identifier.
#[inline(always)]
fn port_off(ip: &Ip4, dst: bool) -> usize {
    if ip.proto == IPPROTO_ICMP {
        ip.l4 + 4
    } else if dst {
        ip.l4 + 2
    } else {
        ip.l4
    }
}

/// Rewrites one address (at `addr_off`) and one port (at `port_off`), fixing the IPv4 and L4
/// checksums. Works for packets whose L4 checksum is still to be computed (CHECKSUM_PARTIAL,
/// what a local TCP stack hands a veth) and for complete ones.
#[inline(always)]
pub fn rewrite(
    ctx: &TcContext,
    ip: &Ip4,
    addr_off: usize,
    old_addr: u32,
    new_addr: u32,
    port_off: usize,
    old_port: u16,
    new_port: u16,
) -> Option<()> {
    let (check_off, udp) = l4_check_off(ip)?;
    let mangled = if udp { BPF_F_MARK_MANGLED_0 as u64 } else { 0 };
    if ip.proto != IPPROTO_ICMP {
        // The address is part of the TCP/UDP pseudo header; ICMP has none.
        ctx.l4_csum_replace(
            check_off,
            old_addr as u64,
            new_addr as u64,
            BPF_F_PSEUDO_HDR as u64 | mangled | 4,
        )
        .ok()?;
    }
    ctx.l4_csum_replace(check_off, old_port as u64, new_port as u64, mangled | 2)
        .ok()?;
    ctx.l3_csum_replace(IP_CHECK_OFF, old_addr as u64, new_addr as u64, 4)
        .ok()?;
    ctx.store(addr_off, &new_addr, 0).ok()?;
    ctx.store(port_off, &new_port, 0).ok()?;
    Some(())
}

#[inline(always)]
fn mix(k: &FlowKey) -> u32 {
    let mut h = k.saddr ^ k.daddr.rotate_left(13);
    h ^= ((k.sport as u32) << 16) | k.dport as u32;
    h = h.wrapping_mul(0x9e37_79b1);
    h ^ (h >> 15)
}

/// The reply key of a flow from the task translated to `port`.
#[inline(always)]
fn reply_key(out: &FlowKey, node: &NodeConfig, port: u16) -> FlowKey {
    let icmp = out.proto == IPPROTO_ICMP;
    FlowKey::new(
        out.daddr,
        node.addr,
        if icmp { port } else { out.dport },
        port,
        out.proto,
    )
}

/// The port of the flow `out`: the one it has, or a free one of the range.
#[inline(always)]
fn port_for(out: &FlowKey, node: &NodeConfig, ifindex: u32) -> Option<u16> {
    let back = SnatIn {
        addr: out.saddr,
        port: out.sport,
        _pad: [0; 2],
        ifindex,
    };
    if let Some(o) = SNAT_OUT.get_ptr(out) {
        // SAFETY: value pointer from a lookup.
        let port = unsafe { (*o).port };
        // Keep the reply side alive too (an LRU lookup refreshes it), or put it back.
        let rk = reply_key(out, node, port);
        if SNAT_IN.get_ptr(&rk).is_none() {
            SNAT_IN.insert(&rk, &back, 0).ok()?;
        }
        return Some(port);
    }
    let min = node.snat_port_min as u32;
    let max = node.snat_port_max as u32;
    if max < min {
        return None;
    }
    let range = max - min + 1;
    let start = mix(out);
    for i in 0..PORT_TRIES {
        let port = ((min + start.wrapping_add(i.wrapping_mul(7919)) % range) as u16).to_be();
        let rk = reply_key(out, node, port);
        if SNAT_IN.insert(&rk, &back, BPF_NOEXIST as u64).is_ok() {
            let _ = SNAT_OUT.insert(out, &SnatOut { port, _pad: [0; 2] }, 0);
            return Some(port);
        }
    }
    None
}

/// A task's packet to outside the cluster: translate its source and hand it to the route
/// towards its destination (the kernel resolves the next hop's MAC).
#[inline(always)]
pub fn masquerade(
    ctx: &TcContext,
    node: &NodeConfig,
    ifindex: u32,
    iface: &Iface,
    ip: &Ip4,
) -> i32 {
    let Some((sport, dport)) = ports(ctx, ip) else {
        stats::drop(iface.vni, stat::DROP_EGRESS);
        return TC_ACT_SHOT as i32;
    };
    let out = flow(ip, sport, dport);
    let Some(port) = port_for(&out, node, ifindex) else {
        stats::drop(iface.vni, stat::DROP_EGRESS);
        return TC_ACT_SHOT as i32;
    };
    if rewrite(
        ctx,
        ip,
        IP_SADDR_OFF,
        ip.saddr,
        node.addr,
        port_off(ip, false),
        sport,
        port,
    )
    .is_none()
    {
        stats::drop(iface.vni, stat::DROP_EGRESS);
        return TC_ACT_SHOT as i32;
    }
    stats::count(iface.vni, stat::EGRESS_PACKETS, ctx.len());
    if crate::ingress::is_local(node, ip.daddr, false) {
        // One of the node's own addresses (a published port, or a service of the node): into
        // the node's stack as if over the loopback, whose address is all zeros; `from_host`
        // sees it there, and the replies.
        if set_macs(ctx, &[0; 6], &[0; 6]).is_none() {
            stats::drop(iface.vni, stat::DROP_EGRESS);
            return TC_ACT_SHOT as i32;
        }
        // SAFETY: plain helper call.
        return unsafe { bpf_redirect(node.lo_ifindex, BPF_F_INGRESS as u64) as i32 };
    }
    // Out of the node's data-path interface; without parameters the helper looks the route
    // up (restricted to that interface) and resolves the next hop's MAC itself.
    // SAFETY: plain helper call.
    unsafe { bpf_redirect_neigh(node.uplink_ifindex, core::ptr::null_mut(), 0, 0) as i32 }
}

/// A packet arriving on the underlay interface: a reply to a masqueraded flow goes back to
/// its task; anything else (VXLAN, the node's own traffic) goes on to the kernel.
#[inline(always)]
pub fn unmasquerade(ctx: &TcContext, node: &NodeConfig) -> i32 {
    let Some(ip) = ipv4(ctx) else {
        return TC_ACT_OK as i32;
    };
    if ip.daddr != node.addr {
        return TC_ACT_OK as i32;
    }
    let Some((sport, dport)) = ports(ctx, &ip) else {
        return TC_ACT_OK as i32;
    };
    let p = u16::from_be(dport);
    if p < node.snat_port_min || p > node.snat_port_max {
        return TC_ACT_OK as i32;
    }
    let rk = flow(&ip, sport, dport);
    let Some(back) = SNAT_IN.get_ptr(&rk) else {
        return TC_ACT_OK as i32;
    };
    // SAFETY: value pointer from a lookup; copied out before any helper call.
    let back = unsafe { *back };
    // SAFETY: entries are replaced whole by the agent.
    let Some(iface) = (unsafe { IFACES.get(back.ifindex) }) else {
        return TC_ACT_SHOT as i32;
    };
    if iface.addr != back.addr {
        // The task's veth is gone and its index reused: not this flow's task any more.
        return TC_ACT_SHOT as i32;
    }
    let iface = *iface;
    if rewrite(
        ctx,
        &ip,
        IP_DADDR_OFF,
        ip.daddr,
        back.addr,
        port_off(&ip, true),
        dport,
        back.port,
    )
    .is_none()
    {
        return TC_ACT_SHOT as i32;
    }
    stats::count(iface.vni, stat::INGRESS_PACKETS, ctx.len());
    if set_macs(ctx, &iface.mac, &iface.host_mac).is_none() {
        return TC_ACT_SHOT as i32;
    }
    // SAFETY: plain helper call.
    unsafe { bpf_redirect_peer(back.ifindex, 0) as i32 }
}

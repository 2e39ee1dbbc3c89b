//! The program entry points.

use aya_ebpf::bindings::{TC_ACT_OK, TC_ACT_SHOT};
use aya_ebpf::helpers::bpf_skb_get_tunnel_key;
use aya_ebpf::macros::classifier;
use aya_ebpf::maps::lpm_trie::Key;
use aya_ebpf::programs::TcContext;
use swarm_ebpf_common::{stat, IFACE_INTERNAL};

use crate::maps::{node, IFACES, SUBNETS};
use crate::pkt::{eth, ipv4, ETH_P_ARP, ETH_P_IP};
use crate::{arp, lb, nat, overlay, stats};

/// Everything a task sends, at the tc ingress of its host-side veth.
#[classifier]
pub fn from_container(ctx: TcContext) -> i32 {
    // SAFETY: reading the context's own fields.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: entries are replaced whole by the agent.
    let Some(iface) = (unsafe { IFACES.get(ifindex) }) else {
        // Not (or no longer) a task interface of ours.
        return TC_ACT_SHOT as i32;
    };
    let iface = *iface;
    let Some(node) = node() else {
        return TC_ACT_SHOT as i32;
    };
    let Some(e) = eth(&ctx) else {
        return TC_ACT_SHOT as i32;
    };
    // SAFETY: bounds checked by eth().
    let ether_type = unsafe { (*e).ether_type };
    if ether_type == ETH_P_ARP {
        return arp::answer(&ctx, ifindex, &iface);
    }
    if ether_type != ETH_P_IP {
        // IPv6 and the rest are not carried (yet).
        return TC_ACT_SHOT as i32;
    }
    let Some(ip) = ipv4(&ctx) else {
        return TC_ACT_SHOT as i32;
    };
    if ip.saddr != iface.addr {
        stats::drop(iface.vni, stat::DROP_SPOOFED);
        return TC_ACT_SHOT as i32;
    }
    let len = ctx.len();
    // A VIP the socket hooks did not translate (UDP, mostly): to a backend now.
    let mut ip = ip;
    match lb::dnat(&ctx, &ip, iface.vni) {
        lb::Dnat::NotVip => {}
        lb::Dnat::To(backend) => ip.daddr = backend,
        lb::Dnat::Drop => {
            stats::drop(iface.vni, stat::DROP_NO_ENDPOINT);
            return TC_ACT_SHOT as i32;
        }
    }
    if let Some(ep) = overlay::endpoint(iface.vni, ip.daddr) {
        if ep.node_addr == 0 {
            stats::count(iface.vni, stat::LOCAL_PACKETS, len);
            lb::reverse(&ctx, &ip);
            return overlay::deliver_local(&ctx, ep);
        }
        return overlay::tunnel(&ctx, node, iface.vni, ep, len);
    }
    // Inside any overlay subnet (this network's or another's) but no such endpoint: dropped,
    // never routed out, so networks stay apart.
    if SUBNETS.get(Key::new(32, ip.daddr.to_ne_bytes())).is_some() {
        stats::drop(iface.vni, stat::DROP_NO_ENDPOINT);
        return TC_ACT_SHOT as i32;
    }
    if iface.flags & IFACE_INTERNAL != 0 {
        stats::drop(iface.vni, stat::DROP_INTERNAL);
        return TC_ACT_SHOT as i32;
    }
    nat::masquerade(&ctx, node, ifindex, &iface, &ip)
}

/// Everything other nodes send to this node's tasks, at the tc ingress of the VXLAN device
/// (decapsulated, with the tunnel key).
#[classifier]
pub fn from_overlay(ctx: TcContext) -> i32 {
    // SAFETY: an all-zero key is a valid value; the helper fills it in.
    let mut key: aya_ebpf::bindings::bpf_tunnel_key = unsafe { core::mem::zeroed() };
    // SAFETY: the key lives on the stack for the duration of the call.
    let rc = unsafe {
        bpf_skb_get_tunnel_key(
            ctx.skb.skb,
            &mut key,
            core::mem::size_of::<aya_ebpf::bindings::bpf_tunnel_key>() as u32,
            0,
        )
    };
    if rc != 0 {
        return TC_ACT_SHOT as i32;
    }
    let vni = key.tunnel_id;
    // SAFETY: union field the helper set for an IPv4 tunnel (host order).
    let remote = unsafe { key.__bindgen_anon_1.remote_ipv4 }.to_be();
    let Some(e) = eth(&ctx) else {
        return TC_ACT_SHOT as i32;
    };
    // SAFETY: bounds checked by eth().
    if unsafe { (*e).ether_type } != ETH_P_IP {
        return TC_ACT_SHOT as i32;
    }
    let Some(ip) = ipv4(&ctx) else {
        return TC_ACT_SHOT as i32;
    };
    let Some(dst) = overlay::endpoint(vni, ip.daddr) else {
        stats::drop(vni, stat::DROP_NO_ENDPOINT);
        return TC_ACT_SHOT as i32;
    };
    if dst.node_addr != 0 {
        stats::drop(vni, stat::DROP_NO_ENDPOINT);
        return TC_ACT_SHOT as i32;
    }
    // The source must be a task of this network on the node that sent the packet.
    match overlay::endpoint(vni, ip.saddr) {
        Some(src) if src.node_addr == remote => {}
        _ => {
            stats::drop(vni, stat::DROP_BAD_SOURCE);
            return TC_ACT_SHOT as i32;
        }
    }
    stats::count(vni, stat::RX_TUNNEL_PACKETS, ctx.len());
    let dst = *dst;
    lb::reverse(&ctx, &ip);
    overlay::deliver_local(&ctx, &dst)
}

/// The underlay interface's ingress: replies to masqueraded traffic.
#[classifier]
pub fn from_uplink(ctx: TcContext) -> i32 {
    let Some(node) = node() else {
        return TC_ACT_OK as i32;
    };
    let Some(e) = eth(&ctx) else {
        return TC_ACT_OK as i32;
    };
    // SAFETY: bounds checked by eth().
    if unsafe { (*e).ether_type } != ETH_P_IP {
        return TC_ACT_OK as i32;
    }
    nat::unmasquerade(&ctx, node)
}

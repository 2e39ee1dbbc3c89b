//! The program entry points.

use aya_ebpf::bindings::{TC_ACT_OK, TC_ACT_SHOT};
use aya_ebpf::helpers::bpf_skb_get_tunnel_key;
use aya_ebpf::macros::classifier;
use aya_ebpf::maps::lpm_trie::Key;
use aya_ebpf::programs::TcContext;
use swarm_ebpf_common::{stat, ENDPOINT_NODE_INGRESS, IFACE_INTERNAL, ORIGIN_LOCAL, ORIGIN_UPLINK};

use crate::maps::{node, IFACES, SUBNETS};
use crate::pkt::{eth, ipv4, ETH_P_ARP, ETH_P_IP};
use crate::{arp, ingress, lb, nat, overlay, stats};

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
        // A reply of the routing mesh the task sends from its ingress address through the
        // interface of its default route: its flow proves the address is the task's.
        if let Some(rc) = ingress::back(&ctx, node, &ip) {
            return rc;
        }
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
        if ep.flags & ENDPOINT_NODE_INGRESS != 0 {
            // To this node's ingress address: a reply of the routing mesh.
            return ingress::back(&ctx, node, &ip).unwrap_or(TC_ACT_SHOT as i32);
        }
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
    // A reply to a mesh client that kept its address.
    if let Some(rc) = ingress::back(&ctx, node, &ip) {
        return rc;
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
    let src_ok = matches!(overlay::endpoint(vni, ip.saddr), Some(src) if src.node_addr == remote);
    let Some(dst) = overlay::endpoint(vni, ip.daddr) else {
        // Not an endpoint: a reply of a mesh flow that kept its client's address, on its
        // way back to the client through this (its ingress) node.
        if src_ok {
            if let Some(node) = node() {
                if vni == node.ingress_vni {
                    if let Some(rc) = ingress::back(&ctx, node, &ip) {
                        return rc;
                    }
                }
            }
        }
        stats::drop(vni, stat::DROP_NO_ENDPOINT);
        return TC_ACT_SHOT as i32;
    };
    let dst = *dst;
    if dst.flags & ENDPOINT_NODE_INGRESS != 0 {
        // To this node's ingress address: a reply of the routing mesh.
        if !src_ok {
            stats::drop(vni, stat::DROP_BAD_SOURCE);
            return TC_ACT_SHOT as i32;
        }
        let Some(node) = node() else {
            return TC_ACT_SHOT as i32;
        };
        return ingress::back(&ctx, node, &ip).unwrap_or(TC_ACT_SHOT as i32);
    }
    if dst.node_addr != 0 {
        stats::drop(vni, stat::DROP_NO_ENDPOINT);
        return TC_ACT_SHOT as i32;
    }
    // The source must be a task of this network on the node that sent the packet, or, on the
    // ingress network, a client of the mesh another node kept the address of.
    if !src_ok {
        let mesh = match node() {
            Some(n) => {
                vni == n.ingress_vni && n.ingress_vni != 0 && ingress::learn(&ctx, &ip, remote)
            }
            None => false,
        };
        if !mesh {
            stats::drop(vni, stat::DROP_BAD_SOURCE);
            return TC_ACT_SHOT as i32;
        }
    }
    stats::count(vni, stat::RX_TUNNEL_PACKETS, ctx.len());
    lb::reverse(&ctx, &ip);
    overlay::deliver_local(&ctx, &dst)
}

/// The underlay interface's ingress: published ports (the routing mesh) and replies to
/// masqueraded traffic; everything else (VXLAN, the node's own traffic) goes on to the kernel.
#[classifier]
pub fn from_uplink(ctx: TcContext) -> i32 {
    // SAFETY: reading the context's own fields.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    from_outside(&ctx, ifindex, ORIGIN_UPLINK)
}

/// The loopback device's ingress: the node's own processes (and its tasks, masqueraded to one
/// of its addresses) reaching published ports, the replies of those connections, and replies
/// of the node's sockets to tasks.
#[classifier]
pub fn from_host(ctx: TcContext) -> i32 {
    // SAFETY: reading the context's own fields.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    from_outside(&ctx, ifindex, ORIGIN_LOCAL)
}

#[inline(always)]
fn from_outside(ctx: &TcContext, ifindex: u32, origin: u32) -> i32 {
    let Some(node) = node() else {
        return TC_ACT_OK as i32;
    };
    let Some(e) = eth(ctx) else {
        return TC_ACT_OK as i32;
    };
    // SAFETY: bounds checked by eth().
    if unsafe { (*e).ether_type } != ETH_P_IP {
        return TC_ACT_OK as i32;
    }
    let Some(ip) = ipv4(ctx) else {
        return TC_ACT_OK as i32;
    };
    if let Some(rc) = ingress::forward(ctx, node, &ip, ifindex, origin) {
        return rc;
    }
    nat::unmasquerade(ctx, node)
}

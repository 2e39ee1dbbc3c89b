//! Endpoints and delivery: to a task on this node (redirect into its namespace), or to a task
//! on another node (VXLAN tunnel key + redirect to the node's metadata-mode VXLAN device).

use aya_ebpf::bindings::{bpf_tunnel_key, TC_ACT_SHOT};
use aya_ebpf::helpers::{bpf_redirect, bpf_redirect_peer, bpf_skb_set_tunnel_key};
use aya_ebpf::programs::TcContext;
use swarm_ebpf_common::{stat, Endpoint, EndpointKey, NodeConfig};

use crate::maps::ENDPOINTS;
use crate::pkt::set_macs;
use crate::stats;

#[inline(always)]
pub fn endpoint(vni: u32, addr: u32) -> Option<&'static Endpoint> {
    // SAFETY: entries are only replaced whole by the agent; a concurrent update is read as
    // either the old or the new endpoint.
    unsafe { ENDPOINTS.get(EndpointKey { vni, addr }) }
}

/// Hands the frame to a local task: rewrites the MACs to the task's and redirects it to the
/// peer of its host-side veth (straight into the task's namespace).
#[inline(always)]
pub fn deliver_local(ctx: &TcContext, ep: &Endpoint) -> i32 {
    if set_macs(ctx, &ep.mac, &ep.host_mac).is_none() {
        return TC_ACT_SHOT as i32;
    }
    // SAFETY: plain helper call.
    unsafe { bpf_redirect_peer(ep.ifindex, 0) as i32 }
}

/// Sends the frame to the node `ep` lives on, in the tunnel of `vni`. The inner MACs are left
/// as they are: the receiving node rewrites them for its task.
#[inline(always)]
pub fn tunnel(ctx: &TcContext, node: &NodeConfig, vni: u32, ep: &Endpoint, len: u32) -> i32 {
    // SAFETY: an all-zero bpf_tunnel_key is a valid value.
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    key.tunnel_id = vni;
    // The helper takes the remote address in host order.
    key.__bindgen_anon_1.remote_ipv4 = u32::from_be(ep.node_addr);
    key.tunnel_ttl = 64;
    // SAFETY: the key lives on the stack for the duration of the call.
    let rc = unsafe {
        bpf_skb_set_tunnel_key(
            ctx.skb.skb,
            &mut key,
            core::mem::size_of::<bpf_tunnel_key>() as u32,
            0,
        )
    };
    if rc != 0 {
        stats::drop(vni, stat::DROP_NO_ENDPOINT);
        return TC_ACT_SHOT as i32;
    }
    stats::count(vni, stat::TX_TUNNEL_PACKETS, len);
    // SAFETY: plain helper call.
    unsafe { bpf_redirect(node.vxlan_ifindex, 0) as i32 }
}

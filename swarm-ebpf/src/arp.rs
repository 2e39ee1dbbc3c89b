//! ARP for tasks: there is no bridge, so the host side answers every request of a task (for
//! its peers and its gateway alike) with the host-side MAC; frames then reach
//! `from_container`, which routes them by IP. The reply is written over the request and sent
//! back out of the same veth.

use aya_ebpf::bindings::TC_ACT_SHOT;
use aya_ebpf::helpers::bpf_redirect;
use aya_ebpf::programs::TcContext;
use network_types::arp::ArpHdr;
use swarm_ebpf_common::Iface;

use crate::pkt::{ptr_at, set_macs, ETH_LEN};

const ARP_REQUEST: u16 = 1u16.to_be();
const ARP_REPLY: [u8; 2] = 2u16.to_be_bytes();

#[inline(always)]
pub fn answer(ctx: &TcContext, ifindex: u32, iface: &Iface) -> i32 {
    let Some(arp) = ptr_at::<ArpHdr>(ctx, ETH_LEN) else {
        return TC_ACT_SHOT as i32;
    };
    // SAFETY: bounds checked by ptr_at.
    let arp = unsafe { &mut *arp };
    let target = u32::from_ne_bytes(arp.tpa);
    // Only IPv4-over-Ethernet requests; never answer for the task's own address (duplicate
    // address detection) or gratuitous announcements.
    if u16::from_ne_bytes(arp.oper) != ARP_REQUEST
        || arp.hlen != 6
        || arp.plen != 4
        || target == iface.addr
        || target == 0
    {
        return TC_ACT_SHOT as i32;
    }
    let asker_mac = arp.sha;
    let asker_ip = arp.spa;
    arp.oper = ARP_REPLY;
    arp.tha = asker_mac;
    arp.tpa = asker_ip;
    arp.sha = iface.host_mac;
    arp.spa = target.to_ne_bytes();
    if set_macs(ctx, &asker_mac, &iface.host_mac).is_none() {
        return TC_ACT_SHOT as i32;
    }
    // SAFETY: plain helper call.
    unsafe { bpf_redirect(ifindex, 0) as i32 }
}

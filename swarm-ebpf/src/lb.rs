//! Service load balancing, shared by the socket hooks and the tc path: VIP lookup, scoping to
//! the asking task's networks, round-robin choice among the serving backends, counters, and
//! the tc path's connection tracking (DNAT of task → VIP packets, reverse translation of the
//! replies).

use aya_ebpf::bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_NOEXIST};
use aya_ebpf::programs::TcContext;
use swarm_ebpf_common::{
    BackendKey, CtEntry, CtRev, EndpointKey, FlowKey, LbStats, LbStatsKey, Service, INLINE_BACKENDS,
};

use crate::maps::{BACKENDS, CT, CT_REV, ENDPOINTS, LB_STATS, SERVICES, SVC_STATS};
use crate::pkt::{
    flow, is_syn, l4_check_off, ports, tcp_flags, Ip4, IPPROTO_TCP, IPPROTO_UDP, IP_CHECK_OFF,
    IP_DADDR_OFF, IP_SADDR_OFF,
};

#[inline(always)]
pub fn service(vip: u32) -> Option<*mut Service> {
    SERVICES.get_ptr_mut(vip)
}

/// The backend in `slot` of `svc`: inline for the first [`INLINE_BACKENDS`], else in
/// `BACKENDS`.
#[inline(always)]
fn backend(svc: *mut Service, id: u32, slot: u32) -> Option<u32> {
    let i = slot as usize;
    if i < INLINE_BACKENDS {
        // SAFETY: value pointer from a map lookup; the index is checked above.
        return Some(unsafe { (*svc).backends[i] });
    }
    // SAFETY: entries are replaced whole by the agent.
    unsafe { BACKENDS.get(BackendKey { id, slot }) }.copied()
}

/// The next backend of `svc` in round-robin order, skipping `avoid` (the asking task itself,
/// for UDP) when there is another one. `None` when no backend serves.
#[inline(always)]
pub fn pick(svc: *mut Service, avoid: u32) -> Option<u32> {
    // SAFETY: value pointer from a map lookup; the fields are plain integers.
    let (id, count) = unsafe { ((*svc).id, (*svc).count) };
    if count == 0 {
        return None;
    }
    // SAFETY: as above. The position is advanced with a plain add (see `Service::rr`).
    let n = unsafe {
        let n = (*svc).rr;
        (*svc).rr = n.wrapping_add(1);
        n
    };
    let slot = n % count;
    let first = backend(svc, id, slot)?;
    if first != avoid || count == 1 {
        return Some(first);
    }
    backend(svc, id, (slot + 1) % count)
}

/// Adds to the counters of the service `id` and of its backend.
#[inline(always)]
pub fn count(id: u32, backend: u32, connections: u64, packets: u64, bytes: u64) {
    let add = |s: *mut LbStats| {
        // SAFETY: this CPU's value.
        unsafe {
            (*s).connections += connections;
            (*s).packets += packets;
            (*s).bytes += bytes;
        }
    };
    // The service's total: an array slot (never evicted, cheap to find).
    if let Some(s) = SVC_STATS.get_ptr_mut(id) {
        add(s);
    }
    let key = LbStatsKey { id, backend };
    let mut p = LB_STATS.get_ptr_mut(&key);
    if p.is_none() {
        let _ = LB_STATS.insert(&key, &LbStats::default(), BPF_NOEXIST as u64);
        p = LB_STATS.get_ptr_mut(&key);
    }
    if let Some(s) = p {
        add(s);
    }
}

/// Whether `addr` is still an endpoint of network `vni` (its task has not ended).
#[inline(always)]
fn alive(vni: u32, addr: u32) -> bool {
    ENDPOINTS.get_ptr(EndpointKey { vni, addr }).is_some()
}

/// Rewrites one IPv4 address of the packet (source or destination), fixing the checksums.
#[inline(always)]
fn set_addr(ctx: &TcContext, ip: &Ip4, off: usize, old: u32, new: u32) -> Option<()> {
    if let Some((check_off, udp)) = l4_check_off(ip) {
        if ip.proto == IPPROTO_TCP || ip.proto == IPPROTO_UDP {
            let mangled = if udp { BPF_F_MARK_MANGLED_0 as u64 } else { 0 };
            ctx.l4_csum_replace(
                check_off,
                old as u64,
                new as u64,
                BPF_F_PSEUDO_HDR as u64 | mangled | 4,
            )
            .ok()?;
        }
    }
    ctx.l3_csum_replace(IP_CHECK_OFF, old as u64, new as u64, 4)
        .ok()?;
    ctx.store(off, &new, 0).ok()
}

/// What [`dnat`] decided.
pub enum Dnat {
    /// Not a VIP: go on with the packet as it is.
    NotVip,
    /// Translated: the packet now goes to this backend.
    To(u32),
    /// A VIP this task may not use, no backend, or a TCP flow whose backend is gone.
    Drop,
}

/// A task's packet to a VIP that the socket hooks did not translate (UDP, or TCP from outside
/// their reach): the flow keeps its backend while that backend's task lives; a UDP flow (or a
/// new TCP connection) whose backend went away gets a live one. Ports are not translated.
#[inline(always)]
pub fn dnat(ctx: &TcContext, ip: &Ip4, vni: u32) -> Dnat {
    let Some(svc) = service(ip.daddr) else {
        return Dnat::NotVip;
    };
    // SAFETY: value pointer from a lookup.
    let (svc_vni, id) = unsafe { ((*svc).vni, (*svc).id) };
    if svc_vni != vni {
        return Dnat::Drop;
    }
    let Some((sport, dport)) = ports(ctx, ip) else {
        return Dnat::Drop;
    };
    if ip.proto != IPPROTO_TCP && ip.proto != IPPROTO_UDP {
        return Dnat::Drop;
    }
    let key = flow(ip, sport, dport);
    let mut new_flow = false;
    let backend = match CT.get_ptr(&key) {
        // SAFETY: value pointer from a lookup.
        Some(e) if alive(vni, unsafe { (*e).backend }) => unsafe { (*e).backend },
        found => {
            // A TCP packet of an established flow whose backend is gone cannot be moved to
            // another backend; only a SYN (or any UDP datagram) picks one.
            if ip.proto == IPPROTO_TCP && found.is_some() && !is_syn(tcp_flags(ctx, ip)) {
                return Dnat::Drop;
            }
            let Some(b) = pick(svc, ip.saddr) else {
                return Dnat::Drop;
            };
            let _ = CT.insert(&key, &CtEntry { backend: b, id }, 0);
            new_flow = true;
            b
        }
    };
    let rev = FlowKey::new(backend, ip.saddr, dport, sport, ip.proto);
    if new_flow || CT_REV.get_ptr(&rev).is_none() {
        let _ = CT_REV.insert(&rev, &CtRev { vip: ip.daddr, id }, 0);
    }
    if set_addr(ctx, ip, IP_DADDR_OFF, ip.daddr, backend).is_none() {
        return Dnat::Drop;
    }
    count(id, backend, new_flow as u64, 1, ctx.len() as u64);
    Dnat::To(backend)
}

/// A packet about to be delivered to a local task: if it is a reply of a flow [`dnat`]
/// translated, its source becomes the VIP again.
#[inline(always)]
pub fn reverse(ctx: &TcContext, ip: &Ip4) {
    if ip.proto != IPPROTO_TCP && ip.proto != IPPROTO_UDP {
        return;
    }
    let Some((sport, dport)) = ports(ctx, ip) else {
        return;
    };
    let key = flow(ip, sport, dport);
    let Some(r) = CT_REV.get_ptr(&key) else {
        return;
    };
    // SAFETY: value pointer from a lookup; copied before any helper call.
    let r = unsafe { *r };
    if set_addr(ctx, ip, IP_SADDR_OFF, ip.saddr, r.vip).is_some() {
        count(r.id, ip.saddr, 0, 1, ctx.len() as u64);
    }
}

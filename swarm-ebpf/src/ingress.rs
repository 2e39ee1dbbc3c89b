//! The routing mesh: published ports answered on every address of the node, for clients
//! outside the cluster (`from_uplink`), for the node's own processes and its tasks (`from_host`
//! on the loopback device), sent to a serving task of the service on any node over the
//! ingress network.
//!
//! A new flow (TCP SYN, or any UDP datagram) picks its task: ingress mode round robin over the
//! serving backends of the service's ingress VIP (`SERVICES`, as the VIP does: stopping and
//! unhealthy tasks are not among them), host mode the local task of `PUBLISHED`. Its source
//! becomes this node's ingress address and a free port (SNAT, Docker's behaviour), unless the
//! port keeps the client's address (`source-ip=preserve`, and host mode); the destination
//! becomes the task's ingress address and port. Flows are kept in three LRU maps:
//!
//! - `ING_CT` (client flow → task, translation): the forward direction on the ingress node;
//! - `ING_REV` (task's reply flow → client): on the ingress node, read when the reply comes
//!   back, locally (`from_container`) or through the tunnel (`from_overlay`);
//! - `ING_RET` (task's reply flow → ingress node): on the task's node, for flows that keep
//!   their client's address and came through another node, so that the reply goes back
//!   through the tunnel to the node the client talks to (never straight to the client: the
//!   underlay need not accept a source address that is not the sender's).
//!
//! A TCP packet that is not a SYN and has no flow is left to the node's stack; one whose task
//! is gone is dropped (counted as stale): it cannot move to another task.
//!
//! Translation ports are per (task address, task port): 1024–65535 of the node's ingress
//! address. A port goes to a new flow when it is free, or when its flow ended (FIN or RST
//! seen) and was quiet for 500 ms, or sat idle (UDP 30 s, TCP that never closed 1 h); the LRU
//! maps drop the oldest flows only when they are full. A client that connects again from the
//! same address and port gets its port back first (to the task, the same client
//! reconnecting), after a new round-robin choice of task.

use aya_ebpf::bindings::{BPF_F_INGRESS, BPF_NOEXIST, TC_ACT_SHOT};
use aya_ebpf::helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_redirect, bpf_redirect_neigh};
use aya_ebpf::maps::lpm_trie::Key;
use aya_ebpf::programs::TcContext;
use swarm_ebpf_common::{
    port_stat, Endpoint, EndpointKey, FlowKey, IngressCt, IngressRev, NodeConfig, Published,
    PublishedKey, ENDPOINT_NODE_INGRESS, FLOW_CLOSED, FLOW_CLOSED_REUSE_NS, FLOW_TCP_IDLE_NS,
    FLOW_UDP_IDLE_NS, ORIGIN_LOCAL, PUBLISHED_HOST, PUBLISHED_PRESERVE,
};

use crate::maps::{
    ENDPOINTS, HOST_ADDRS, ING_CT, ING_RET, ING_REV, PEERS, PORT_STATS, PUBLISHED, SUBNETS,
};
use crate::pkt::{
    flow, is_syn, ports, set_macs, tcp_flags, Ip4, IPPROTO_TCP, IPPROTO_UDP, IP_DADDR_OFF,
    IP_SADDR_OFF, TCP_FIN, TCP_RST,
};
use crate::{lb, nat, overlay};

/// Translation ports tried for a new SNAT flow before giving up.
const PORT_TRIES: u32 = 16;
/// Translation ports: 1024–65535 of the node's ingress address (used for nothing else).
const NAT_PORT_MIN: u32 = 1024;
const NAT_PORT_RANGE: u32 = 65536 - NAT_PORT_MIN;

const SHOT: i32 = TC_ACT_SHOT as i32;

#[inline(always)]
fn bump(key: &PublishedKey, idx: usize) {
    if let Some(s) = PORT_STATS.get_ptr_mut(key) {
        if idx < port_stat::COUNT {
            // SAFETY: this CPU's value; index checked above.
            unsafe { (*s).c[idx] += 1 };
        }
    }
}

#[inline(always)]
fn count(key: &PublishedKey, packets: usize, len: u32) {
    if let Some(s) = PORT_STATS.get_ptr_mut(key) {
        if packets + 1 < port_stat::COUNT {
            // SAFETY: as above.
            unsafe {
                (*s).c[packets] += 1;
                (*s).c[packets + 1] += len as u64;
            }
        }
    }
}

#[inline(always)]
fn dropped(key: &PublishedKey, reason: usize) -> i32 {
    bump(key, reason);
    SHOT
}

/// Whether `addr` is one of the node's own addresses (loopback ones only for clients on the
/// node itself).
#[inline(always)]
pub fn is_local(node: &NodeConfig, addr: u32, local_client: bool) -> bool {
    addr == node.addr
        || (local_client && addr.to_ne_bytes()[0] == 127)
        || HOST_ADDRS.get_ptr(&addr).is_some()
}

/// Whether `addr` is still a task's endpoint on the ingress network.
#[inline(always)]
fn alive(node: &NodeConfig, addr: u32) -> bool {
    ENDPOINTS
        .get_ptr(&EndpointKey {
            vni: node.ingress_vni,
            addr,
        })
        .is_some()
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: plain helper call.
    unsafe { bpf_ktime_get_ns() }
}

/// Records a packet of the flow of `r`: its time, and whether it ends the connection.
#[inline(always)]
fn touch(r: *mut IngressRev, flags: u8, now: u64) {
    // SAFETY: value pointer from a lookup; plain integers.
    unsafe {
        (*r).last_ns = now;
        if flags & (TCP_FIN | TCP_RST) != 0 {
            (*r).flags |= FLOW_CLOSED;
        }
    }
}

/// Whether the translation port held by `r` may go to a new flow: its flow ended (or went
/// idle) long enough ago that no packet of it is still under way.
#[inline(always)]
fn reusable(r: &IngressRev, proto: u8, now: u64) -> bool {
    let idle = now.saturating_sub(r.last_ns);
    if proto == IPPROTO_UDP {
        idle >= FLOW_UDP_IDLE_NS
    } else if r.flags & FLOW_CLOSED != 0 {
        idle >= FLOW_CLOSED_REUSE_NS
    } else {
        idle >= FLOW_TCP_IDLE_NS
    }
}

#[inline(always)]
fn mix(k: &FlowKey) -> u32 {
    let mut h = k.saddr.rotate_left(7) ^ k.daddr;
    h ^= ((k.sport as u32) << 16) | k.dport as u32;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^ (h >> 13)
}

/// A packet to a published port of this node (the client's flow is `key`, arriving on
/// `ifindex`): its flow, made when it is a new one. `None` = not a packet of the mesh: it
/// goes on to the node's stack. `Some(verdict)` = handled.
#[inline(always)]
pub fn forward(
    ctx: &TcContext,
    node: &NodeConfig,
    ip: &Ip4,
    ifindex: u32,
    origin: u32,
) -> Option<i32> {
    if node.ingress_vni == 0 || (ip.proto != IPPROTO_TCP && ip.proto != IPPROTO_UDP) {
        return None;
    }
    let (sport, dport) = ports(ctx, ip)?;
    let pk = PublishedKey {
        port: dport,
        proto: ip.proto,
        _pad: 0,
    };
    // SAFETY: entries are replaced whole by the agent.
    let p = unsafe { PUBLISHED.get(&pk) }.copied()?;
    if !is_local(node, ip.daddr, origin == ORIGIN_LOCAL) {
        return None;
    }
    let key = flow(ip, sport, dport);
    let len = ctx.len();
    let flags = tcp_flags(ctx, ip);
    let now = now();
    let syn = is_syn(flags);
    // The task's endpoint, looked up once for the check and the delivery.
    let mut ep: Option<Endpoint> = None;
    let found = ING_CT.get_ptr(&key);
    // SAFETY: value pointer from a lookup; copied before any helper call.
    let current = found.map(|c| unsafe { *c }).filter(|c| {
        // Its task is gone: not a flow to go on with.
        let Some(e) = overlay::endpoint(node.ingress_vni, c.backend) else {
            return false;
        };
        ep = Some(*e);
        let rk = FlowKey::new(c.backend, c.nat_addr, c.target_port, c.nat_port, ip.proto);
        match ING_REV.get_ptr_mut(&rk) {
            // Its translation port went to another flow meanwhile: this one is over.
            // SAFETY: value pointer from a lookup.
            Some(r) if unsafe { (*r).client != ip.saddr || (*r).client_port != sport } => false,
            // A new connection on the tuple of one that ended: a fresh translation.
            // SAFETY: as above.
            Some(r) if syn && unsafe { (*r).flags } & FLOW_CLOSED != 0 => false,
            Some(r) => {
                touch(r, flags, now);
                true
            }
            // Keep the reply side (an LRU eviction took it): put it back.
            None => {
                let rev = reverse_of(ctx, ip, sport, dport, ifindex, origin, now);
                ING_REV.insert(&rk, &rev, 0).is_ok()
            }
        }
    });
    let mut new = false;
    let ct = match current {
        Some(c) => c,
        None => {
            if ip.proto == IPPROTO_TCP && !syn {
                if found.is_some() {
                    // Its task is gone: the connection cannot move.
                    return Some(dropped(&pk, port_stat::DROP_STALE));
                }
                // Not a connection of the mesh: the node's stack answers it.
                return None;
            }
            // A flow of this client tuple before (a connection that ended): its port first.
            // SAFETY: value pointer from a lookup.
            let prev = found.map(|c| unsafe { (*c).nat_port });
            let rev = reverse_of(ctx, ip, sport, dport, ifindex, origin, now);
            match open(node, ip, &p, &key, &rev, origin, now, prev) {
                Ok(c) => {
                    new = true;
                    ep = None;
                    c
                }
                Err(reason) => return Some(dropped(&pk, reason)),
            }
        }
    };
    if (ct.nat_addr != ip.saddr || ct.nat_port != sport)
        && nat::rewrite(
            ctx,
            ip,
            IP_SADDR_OFF,
            ip.saddr,
            ct.nat_addr,
            ip.l4,
            sport,
            ct.nat_port,
        )
        .is_none()
    {
        return Some(dropped(&pk, port_stat::DROP_NAT));
    }
    if nat::rewrite(
        ctx,
        ip,
        IP_DADDR_OFF,
        ip.daddr,
        ct.backend,
        ip.l4 + 2,
        dport,
        ct.target_port,
    )
    .is_none()
    {
        return Some(dropped(&pk, port_stat::DROP_NAT));
    }
    let ep = match ep {
        Some(e) => e,
        None => match overlay::endpoint(node.ingress_vni, ct.backend) {
            Some(e) => *e,
            None => return Some(dropped(&pk, port_stat::DROP_STALE)),
        },
    };
    if new {
        bump(&pk, port_stat::CONNECTIONS);
    }
    count(&pk, port_stat::PACKETS_IN, len);
    if ep.node_addr == 0 {
        if ep.flags & ENDPOINT_NODE_INGRESS != 0 {
            return Some(dropped(&pk, port_stat::DROP_STALE));
        }
        return Some(overlay::deliver_local(ctx, &ep));
    }
    Some(overlay::tunnel(ctx, node, node.ingress_vni, &ep, len))
}

/// How the replies of the flow of this packet go back to its client.
#[inline(always)]
fn reverse_of(
    ctx: &TcContext,
    ip: &Ip4,
    sport: u16,
    dport: u16,
    ifindex: u32,
    origin: u32,
    now: u64,
) -> IngressRev {
    let mut rev = IngressRev {
        client: ip.saddr,
        node_addr: ip.daddr,
        client_port: sport,
        published_port: dport,
        ifindex,
        origin,
        flags: 0,
        last_ns: now,
        peer_mac: [0; 6],
        own_mac: [0; 6],
        _pad: [0; 4],
    };
    if origin != ORIGIN_LOCAL {
        if let Some(e) = crate::pkt::eth(ctx) {
            // SAFETY: bounds checked by eth().
            unsafe {
                rev.peer_mac = (*e).src_addr;
                rev.own_mac = (*e).dst_addr;
            }
        }
    }
    rev
}

/// A new flow: its task, and the source the task sees. Err = the drop reason.
#[inline(always)]
fn open(
    node: &NodeConfig,
    ip: &Ip4,
    p: &Published,
    key: &FlowKey,
    rev: &IngressRev,
    origin: u32,
    now: u64,
    prev: Option<u16>,
) -> Result<IngressCt, usize> {
    let backend = if p.flags & PUBLISHED_HOST != 0 {
        p.backend
    } else {
        let svc = lb::service(p.vip).ok_or(port_stat::DROP_NO_BACKEND)?;
        lb::pick(svc, 0).ok_or(port_stat::DROP_NO_BACKEND)?
    };
    if backend == 0 || !alive(node, backend) {
        return Err(port_stat::DROP_NO_BACKEND);
    }
    // The node's own processes (and tasks, masqueraded to the node) always get the ingress
    // address: the task could not answer 127.0.0.1 or the node's address through the mesh.
    let snat = origin == ORIGIN_LOCAL || p.flags & PUBLISHED_PRESERVE == 0;
    let (nat_addr, nat_port) = if snat {
        if node.ingress_addr == 0 {
            return Err(port_stat::DROP_NAT);
        }
        let start = mix(key);
        // First the port this client tuple had (a reconnect from the same port looks to the
        // task like the same client reconnecting), then ports spread over the range.
        let mut found = prev.filter(|&port| take_port(ip, p, backend, node, rev, port, now));
        if found.is_none() {
            for i in 0..PORT_TRIES {
                // Independent random probes (no clusters to run into, unlike a fixed stride),
                // as the kernel's `fully-random` NAT does.
                // SAFETY: plain helper call.
                let r = if i == 0 {
                    start
                } else {
                    unsafe { bpf_get_prandom_u32() }
                };
                let port = ((NAT_PORT_MIN + r % NAT_PORT_RANGE) as u16).to_be();
                if take_port(ip, p, backend, node, rev, port, now) {
                    found = Some(port);
                    break;
                }
            }
        }
        (node.ingress_addr, found.ok_or(port_stat::DROP_NAT)?)
    } else {
        let rk = FlowKey::new(backend, ip.saddr, p.target_port, key.sport, ip.proto);
        ING_REV
            .insert(&rk, rev, 0)
            .map_err(|_| port_stat::DROP_NAT)?;
        (ip.saddr, key.sport)
    };
    let ct = IngressCt {
        backend,
        nat_addr,
        nat_port,
        target_port: p.target_port,
    };
    ING_CT
        .insert(key, &ct, 0)
        .map_err(|_| port_stat::DROP_NAT)?;
    Ok(ct)
}

/// Takes translation port `port` (network order) towards `backend` for the flow of `rev`
/// when it is free, its own already, or reusable.
#[inline(always)]
fn take_port(
    ip: &Ip4,
    p: &Published,
    backend: u32,
    node: &NodeConfig,
    rev: &IngressRev,
    port: u16,
    now: u64,
) -> bool {
    let rk = FlowKey::new(backend, node.ingress_addr, p.target_port, port, ip.proto);
    match ING_REV.get_ptr(&rk) {
        None => ING_REV.insert(&rk, rev, BPF_NOEXIST as u64).is_ok(),
        Some(r) => {
            // SAFETY: value pointer from a lookup.
            let r = unsafe { &*r };
            let own = r.client == rev.client && r.client_port == rev.client_port;
            (own || reusable(r, ip.proto, now)) && ING_REV.insert(&rk, rev, 0).is_ok()
        }
    }
}

/// A task's packet that may be a reply of the mesh: back to its client when this node is the
/// flow's ingress node (`ING_REV`), or through the tunnel to the ingress node (`ING_RET`).
/// `None` = not a reply of the mesh.
#[inline(always)]
pub fn back(ctx: &TcContext, node: &NodeConfig, ip: &Ip4) -> Option<i32> {
    if node.ingress_vni == 0 || (ip.proto != IPPROTO_TCP && ip.proto != IPPROTO_UDP) {
        return None;
    }
    let (sport, dport) = ports(ctx, ip)?;
    let rk = flow(ip, sport, dport);
    if let Some(r) = ING_REV.get_ptr_mut(&rk) {
        touch(r, tcp_flags(ctx, ip), now());
        // SAFETY: value pointer from a lookup; copied before any helper call.
        let r = unsafe { *r };
        return Some(to_client(ctx, ip, &r, sport, dport));
    }
    // SAFETY: as above.
    let ingress_node = unsafe { *ING_RET.get_ptr(&rk)? };
    let ep = Endpoint {
        node_addr: ingress_node,
        ..Endpoint::default()
    };
    Some(overlay::tunnel(ctx, node, node.ingress_vni, &ep, ctx.len()))
}

/// Translates a reply back (the source becomes the address and port the client connected
/// to, the destination the client) and sends it to the client.
#[inline(always)]
fn to_client(ctx: &TcContext, ip: &Ip4, r: &IngressRev, sport: u16, dport: u16) -> i32 {
    let pk = PublishedKey {
        port: r.published_port,
        proto: ip.proto,
        _pad: 0,
    };
    let len = ctx.len();
    if nat::rewrite(
        ctx,
        ip,
        IP_SADDR_OFF,
        ip.saddr,
        r.node_addr,
        ip.l4,
        sport,
        r.published_port,
    )
    .is_none()
    {
        return dropped(&pk, port_stat::DROP_NAT);
    }
    if (ip.daddr != r.client || dport != r.client_port)
        && nat::rewrite(
            ctx,
            ip,
            IP_DADDR_OFF,
            ip.daddr,
            r.client,
            ip.l4 + 2,
            dport,
            r.client_port,
        )
        .is_none()
    {
        return dropped(&pk, port_stat::DROP_NAT);
    }
    count(&pk, port_stat::PACKETS_OUT, len);
    if r.origin == ORIGIN_LOCAL {
        // Back into the node's stack as if it came over the loopback (whose address is
        // all zeros: any other destination MAC would make it a packet for another host).
        if set_macs(ctx, &[0; 6], &[0; 6]).is_none() {
            return SHOT;
        }
        // SAFETY: plain helper call.
        return unsafe { bpf_redirect(r.ifindex, BPF_F_INGRESS as u64) as i32 };
    }
    if r.peer_mac != [0; 6] {
        // Straight back to where the client's packets came from.
        if set_macs(ctx, &r.peer_mac, &r.own_mac).is_none() {
            return SHOT;
        }
        // SAFETY: plain helper call.
        return unsafe { bpf_redirect(r.ifindex, 0) as i32 };
    }
    // Out where the client came in; the kernel resolves the next hop.
    // SAFETY: plain helper call.
    unsafe { bpf_redirect_neigh(r.ifindex, core::ptr::null_mut(), 0, 0) as i32 }
}

/// A packet another node tunnelled to a local task on the ingress network whose source is
/// not a task: a mesh flow that keeps its client's address. Accepted when the sender is a
/// node of the cluster and the source is outside every overlay subnet; the sender is
/// remembered so that the task's replies go back through it.
#[inline(always)]
pub fn learn(ctx: &TcContext, ip: &Ip4, remote: u32) -> bool {
    if (ip.proto != IPPROTO_TCP && ip.proto != IPPROTO_UDP)
        || PEERS.get_ptr(&remote).is_none()
        || SUBNETS.get(Key::new(32, ip.saddr.to_ne_bytes())).is_some()
    {
        return false;
    }
    let Some((sport, dport)) = ports(ctx, ip) else {
        return false;
    };
    let rk = FlowKey::new(ip.daddr, ip.saddr, dport, sport, ip.proto);
    match ING_RET.get_ptr(&rk) {
        // SAFETY: value pointer from a lookup.
        Some(v) if unsafe { *v } == remote => true,
        _ => ING_RET.insert(&rk, &remote, 0).is_ok(),
    }
}

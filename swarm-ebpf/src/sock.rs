//! Socket hooks on the node's container cgroup (every task's processes are below it):
//!
//! - connect4: TCP to a VIP connects straight to a backend chosen at connect time (no
//!   per-packet translation at all); TCP and UDP to 127.0.0.11:53 go to the port the agent's
//!   resolver listens on inside that task. Connected UDP to a VIP is left alone: the tc path
//!   translates it per packet, so the socket follows a backend that goes away.
//! - sendmsg4: unconnected UDP to 127.0.0.11:53, likewise.
//! - recvmsg4 / getpeername4: the resolver answers from port 53; a load-balanced socket's
//!   peer reads as the VIP.
//! - cgroup_skb egress/ingress: packet and byte counters of load-balanced sockets, kept in
//!   the socket and added to the shared counters in batches (see `count_skb`).
//!
//! What connect4 did to a socket (`SOCK_LB`) is socket storage: it lives in the socket and
//! goes with it, found from the socket without hashing, never evicted, never cleaned up.
//!
//! A task whose networks do not include the VIP's network is not translated, and its packets
//! to the VIP are dropped by `from_container`.

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::bindings::bpf_sock_addr;
use aya_ebpf::helpers::bpf_get_netns_cookie;
use aya_ebpf::helpers::generated::bpf_sk_storage_get;
use aya_ebpf::macros::{cgroup_skb, cgroup_sock_addr};
use aya_ebpf::programs::{SkBuffContext, SockAddrContext};
use swarm_ebpf_common::{
    NetnsNet, SockLb, SockPending, DNS_ADDR, DNS_PORT, SOCK_FLUSH_BYTES, SOCK_FLUSH_PACKETS,
};

use crate::lb;
use crate::maps::{DNS_PORTS, NETNS_NETS, SOCK_LB};
use crate::pkt::{IPPROTO_TCP, TCP_FIN, TCP_RST};

const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
const ALLOW: i32 = 1;
const DENY: i32 = 0;
/// `TCP_ESTABLISHED` of the kernel's socket states.
const TCP_ESTABLISHED: u32 = 1;
/// Indexes of `SockLb::pending`.
const EGRESS: usize = 0;
const INGRESS: usize = 1;

#[inline(always)]
fn netns_cookie(ctx: &SockAddrContext) -> u64 {
    // SAFETY: plain helper call on the program's context.
    unsafe { bpf_get_netns_cookie(ctx.sock_addr as *mut _) }
}

/// Points a socket at the task's resolver when it aims at 127.0.0.11:53.
#[inline(always)]
fn to_resolver(sa: &mut bpf_sock_addr, cookie: u64) -> bool {
    if sa.user_ip4 != DNS_ADDR || sa.user_port as u16 != DNS_PORT {
        return false;
    }
    // SAFETY: entries are replaced whole by the agent.
    let Some(p) = (unsafe { DNS_PORTS.get(cookie) }) else {
        return false;
    };
    let port = if sa.type_ == SOCK_STREAM {
        p.tcp
    } else {
        p.udp
    };
    if port != 0 {
        sa.user_port = port as u32;
    }
    true
}

/// The resolver's port back to 53, for addresses the task reads.
#[inline(always)]
fn from_resolver(sa: &mut bpf_sock_addr, cookie: u64) -> bool {
    if sa.user_ip4 != DNS_ADDR {
        return false;
    }
    // SAFETY: as above.
    let Some(p) = (unsafe { DNS_PORTS.get(cookie) }) else {
        return false;
    };
    let port = sa.user_port as u16;
    if port != 0 && (port == p.udp || port == p.tcp) {
        sa.user_port = DNS_PORT as u32;
        return true;
    }
    false
}

#[cgroup_sock_addr(connect4)]
pub fn sock_connect4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the context pointer is valid for the program's run.
    let sa = unsafe { &mut *ctx.sock_addr };
    let cookie = netns_cookie(&ctx);
    if to_resolver(sa, cookie) {
        return ALLOW;
    }
    if sa.type_ != SOCK_STREAM {
        return ALLOW;
    }
    let vip = sa.user_ip4;
    let Some(svc) = lb::service(vip) else {
        return ALLOW;
    };
    // SAFETY: value pointer from a lookup.
    let (vni, id) = unsafe { ((*svc).vni, (*svc).id) };
    let scope = NetnsNet {
        cookie,
        vni,
        _pad: 0,
    };
    if NETNS_NETS.get_ptr(&scope).is_none() {
        // Not this task's network: untranslated, and dropped on the way out.
        return ALLOW;
    }
    let Some(backend) = lb::pick(svc, 0) else {
        // No task serves the service: fail at once (EPERM) rather than time out.
        return DENY;
    };
    sa.user_ip4 = backend;
    // SAFETY: the context's own socket; created zeroed when it has no entry yet.
    let lb = unsafe { SOCK_LB.get_or_insert_ptr_mut(&ctx, None) };
    if lb.is_null() {
        // No storage (memory): the connection is counted now, its packets not at all.
        lb::count(id, backend, 1, 0, 0);
        return ALLOW;
    }
    // SAFETY: a non-null pointer from bpf_sk_storage_get, to this socket's entry. The
    // connection is counted with the SYN's flush, in the same connect().
    unsafe {
        *lb = SockLb {
            vip,
            backend,
            id,
            connection: 1,
            pending: [SockPending::default(); 2],
        }
    };
    ALLOW
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    // SAFETY: as above.
    let sa = unsafe { &mut *ctx.sock_addr };
    if sa.type_ == SOCK_DGRAM {
        to_resolver(sa, netns_cookie(&ctx));
    }
    ALLOW
}

#[cgroup_sock_addr(recvmsg4)]
pub fn sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    // SAFETY: as above.
    let sa = unsafe { &mut *ctx.sock_addr };
    from_resolver(sa, netns_cookie(&ctx));
    ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn sock_getpeername4(ctx: SockAddrContext) -> i32 {
    // SAFETY: as above.
    let sa = unsafe { &mut *ctx.sock_addr };
    if from_resolver(sa, netns_cookie(&ctx)) {
        return ALLOW;
    }
    // SAFETY: the context's own socket.
    let lb = unsafe { SOCK_LB.get_ptr_mut(&ctx) };
    if !lb.is_null() {
        // SAFETY: a non-null pointer from bpf_sk_storage_get.
        let lb = unsafe { *lb };
        if sa.user_ip4 == lb.backend {
            sa.user_ip4 = lb.vip;
        }
    }
    ALLOW
}

/// The TCP flags of the skb's packet (a cgroup_skb's data starts at the IP header); 0 when it
/// is not IPv4 TCP or the header is not in the linear part.
#[inline(always)]
fn tcp_flags(ctx: &SkBuffContext) -> u8 {
    // SAFETY: the context's skb.
    let (start, end) = unsafe {
        let skb = ctx.skb.skb;
        ((*skb).data as usize, (*skb).data_end as usize)
    };
    if start + 20 > end {
        return 0;
    }
    let ip = start as *const u8;
    // SAFETY: the 20 bytes of an IPv4 header are within the packet (checked above).
    let (version_ihl, proto) = unsafe { (*ip, *ip.add(9)) };
    if version_ihl >> 4 != 4 || proto != IPPROTO_TCP {
        return 0;
    }
    let l4 = start + (version_ihl & 0x0f) as usize * 4;
    if l4 + 14 > end {
        return 0;
    }
    // SAFETY: byte 13 of the TCP header, within the packet (checked above).
    unsafe { *((l4 + 13) as *const u8) }
}

/// `*dst += v` as one instruction (BPF's atomic add, its result unused), safe against a
/// concurrent add on another CPU.
///
/// # Safety
/// `dst` points into a map value.
#[inline(always)]
unsafe fn xadd(dst: *mut u64, v: u64) {
    // SAFETY: the caller's pointer; the result is not used, so this is the base `lock add`
    // every kernel with BPF has.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(dst, v) };
}

/// Counts a packet of a load-balanced socket. While the connection is ESTABLISHED the
/// packets wait in the socket's own storage (plain adds to a line already in cache) and are
/// added to `LB_STATS` and `SVC_STATS` in batches: when [`SOCK_FLUSH_PACKETS`] or
/// [`SOCK_FLUSH_BYTES`] are reached, on a FIN or RST, and on every packet in any other state
/// (the SYN, which also counts the connection, the handshake, and the close), so what a
/// socket carried is in the counters by the time it closes. A connection that dies
/// ESTABLISHED without a packet (its retransmissions timed out) leaves at most a batch
/// uncounted.
///
/// Egress runs under the socket's lock, so its side is plain reads and writes. Ingress runs
/// before the lock is taken: its side is added atomically, and a flush takes out exactly what
/// it read. (Two ingress flushes of one socket at the same instant on two CPUs would count
/// one batch twice; TCP's receive path keeps a flow on one CPU.)
#[inline(always)]
fn count_skb(ctx: &SkBuffContext, dir: usize) {
    // aya-ebpf's `SkStorage` reads its socket from a sock_addr context only, so the helper
    // is called here on the skb's socket. The kernel runs cgroup_skb programs for full
    // sockets only, and the helper checks that again itself.
    // SAFETY: the context's skb; `sk` is checked for null before use.
    let (sk, lb) = unsafe {
        let sk = (*ctx.skb.skb).__bindgen_anon_2.sk;
        if sk.is_null() {
            return;
        }
        let map = core::ptr::from_ref(&SOCK_LB).cast_mut().cast();
        let lb = bpf_sk_storage_get(map, sk.cast(), core::ptr::null_mut(), 0).cast::<SockLb>();
        (sk, lb)
    };
    if lb.is_null() || dir > INGRESS {
        return;
    }
    let len = ctx.len() as u64;
    // SAFETY: `sk` is non-null (checked above); `state` is readable from any socket.
    let state = unsafe { (*sk).state };
    // SAFETY: a non-null pointer from bpf_sk_storage_get, to this socket's entry; `dir` is
    // checked above.
    let p = unsafe { core::ptr::addr_of_mut!((*lb).pending[dir]) };
    // SAFETY: as above.
    let (packets, bytes) = unsafe { ((*p).packets, (*p).bytes) };
    if state == TCP_ESTABLISHED
        && packets + 1 < SOCK_FLUSH_PACKETS
        && bytes + len < SOCK_FLUSH_BYTES
        && tcp_flags(ctx) & (TCP_FIN | TCP_RST) == 0
    {
        // SAFETY: as above.
        unsafe {
            if dir == EGRESS {
                (*p).packets = packets + 1;
                (*p).bytes = bytes + len;
            } else {
                xadd(core::ptr::addr_of_mut!((*p).packets), 1);
                xadd(core::ptr::addr_of_mut!((*p).bytes), len);
            }
        }
        return;
    }
    // SAFETY: as above.
    let (id, backend, connection) = unsafe {
        let connection = if dir == EGRESS {
            let c = (*lb).connection;
            (*lb).connection = 0;
            c
        } else {
            0
        };
        ((*lb).id, (*lb).backend, connection)
    };
    // SAFETY: as above.
    unsafe {
        if dir == EGRESS {
            (*p).packets = 0;
            (*p).bytes = 0;
        } else {
            xadd(
                core::ptr::addr_of_mut!((*p).packets),
                packets.wrapping_neg(),
            );
            xadd(core::ptr::addr_of_mut!((*p).bytes), bytes.wrapping_neg());
        }
    }
    lb::count(id, backend, connection as u64, packets + 1, bytes + len);
}

#[cgroup_skb(egress)]
pub fn skb_egress(ctx: SkBuffContext) -> i32 {
    count_skb(&ctx, EGRESS);
    ALLOW
}

#[cgroup_skb(ingress)]
pub fn skb_ingress(ctx: SkBuffContext) -> i32 {
    count_skb(&ctx, INGRESS);
    ALLOW
}

//! Socket hooks on the node's container cgroup (every task's processes are below it):
//!
//! - connect4: TCP to a VIP connects straight to a backend chosen at connect time (no
//!   per-packet translation at all); TCP and UDP to 127.0.0.11:53 go to the port the agent's
//!   resolver listens on inside that task. Connected UDP to a VIP is left alone: the tc path
//!   translates it per packet, so the socket follows a backend that goes away.
//! - sendmsg4: unconnected UDP to 127.0.0.11:53, likewise.
//! - recvmsg4 / getpeername4: the resolver answers from port 53; a load-balanced socket's
//!   peer reads as the VIP.
//! - cgroup_skb egress/ingress: packet and byte counters of load-balanced sockets.
//!
//! What connect4 did to a socket (`SOCK_LB`) is socket storage: it lives in the socket and
//! goes with it, found from the socket without hashing, never evicted, never cleaned up.
//!
//! A task whose networks do not include the VIP's network is not translated, and its packets
//! to the VIP are dropped by `from_container`.

use aya_ebpf::bindings::bpf_sock_addr;
use aya_ebpf::helpers::bpf_get_netns_cookie;
use aya_ebpf::helpers::generated::{bpf_sk_fullsock, bpf_sk_storage_get};
use aya_ebpf::macros::{cgroup_skb, cgroup_sock_addr};
use aya_ebpf::programs::{SkBuffContext, SockAddrContext};
use swarm_ebpf_common::{NetnsNet, SockLb, DNS_ADDR, DNS_PORT};

use crate::lb;
use crate::maps::{DNS_PORTS, NETNS_NETS, SOCK_LB};

const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
const ALLOW: i32 = 1;
const DENY: i32 = 0;

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
    if !lb.is_null() {
        // SAFETY: a non-null pointer from bpf_sk_storage_get, to this socket's entry.
        unsafe { *lb = SockLb { vip, backend, id } };
    }
    lb::count(id, backend, 1, 0);
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

#[inline(always)]
fn count_skb(ctx: &SkBuffContext) {
    // aya-ebpf's `SkStorage` reads its socket from a sock_addr context only, so the helper
    // is called here on the skb's socket.
    // SAFETY: the context's skb; `sk` is checked for null and for being a full socket (what
    // socket storage needs) before use.
    let lb = unsafe {
        let sk = (*ctx.skb.skb).__bindgen_anon_2.sk;
        if sk.is_null() {
            return;
        }
        let sk = bpf_sk_fullsock(sk);
        if sk.is_null() {
            return;
        }
        let map = core::ptr::from_ref(&SOCK_LB).cast_mut().cast();
        bpf_sk_storage_get(map, sk.cast(), core::ptr::null_mut(), 0).cast::<SockLb>()
    };
    if lb.is_null() {
        return;
    }
    // SAFETY: a non-null pointer from bpf_sk_storage_get.
    let lb = unsafe { *lb };
    lb::count(lb.id, lb.backend, 0, ctx.len());
}

#[cgroup_skb(egress)]
pub fn skb_egress(ctx: SkBuffContext) -> i32 {
    count_skb(&ctx);
    ALLOW
}

#[cgroup_skb(ingress)]
pub fn skb_ingress(ctx: SkBuffContext) -> i32 {
    count_skb(&ctx);
    ALLOW
}

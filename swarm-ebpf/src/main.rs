//! The node's eBPF data plane. One object, several programs sharing the maps of [`maps`]:
//!
//! - `from_container` (tc ingress of each task's host-side veth): ARP answers, source check,
//!   delivery to a local task (redirect into its namespace), to a remote task (tunnel key +
//!   redirect to the VXLAN device), or out of the cluster (masquerade to the node's address);
//! - `from_overlay` (tc ingress of the VXLAN device): VNI + destination → a local task;
//!   anything else is dropped;
//! - `from_uplink` (tc ingress of the underlay interface): published ports (the routing
//!   mesh, [`ingress`]) and replies to masqueraded traffic back to their task; everything
//!   else goes on to the kernel;
//! - `from_host` (tc ingress of the loopback device): published ports reached by the node's
//!   own processes and tasks, the replies of those connections, and replies of the node's
//!   own sockets to tasks that reached one of its addresses;
//! - socket hooks on the node's container cgroup ([`sock`]): VIP → backend at connect time,
//!   127.0.0.11:53 → the task's resolver port, and load-balancing counters.
//!
//! Helpers are split by concern, as in Cilium's bpf/lib: [`pkt`] (bounded header access),
//! [`arp`], [`overlay`] (endpoints, delivery, tunnel), [`nat`] (masquerade), [`lb`] (service
//! load balancing and its connection tracking), [`ingress`] (the routing mesh), [`stats`].
//! Built only for the bpf target, with the feature `program` (swarm-agent's build script
//! does both): a host build (`cargo build --workspace`) makes no binary of this crate, and
//! forcing one (`--features program` on the host) fails with the command that builds it.
#![cfg_attr(target_arch = "bpf", no_std)]
// `atomic_xadd`: the bpf target has no atomic read-modify-write types, but its instruction
// set has an atomic add (see `sock::xadd`).
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]
#![no_main]

#[cfg(target_arch = "bpf")]
mod arp;
#[cfg(target_arch = "bpf")]
mod ingress;
#[cfg(target_arch = "bpf")]
mod lb;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod nat;
#[cfg(target_arch = "bpf")]
mod overlay;
#[cfg(target_arch = "bpf")]
mod pkt;
#[cfg(target_arch = "bpf")]
mod programs;
#[cfg(target_arch = "bpf")]
mod sock;
#[cfg(target_arch = "bpf")]
mod stats;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach here; there is nothing to unwind to.
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
compile_error!(
    "swarm-ebpf holds eBPF programs for bpfel-unknown-none only: swarm-agent's build script \
     builds them (nightly with rust-src, bpf-linker); by hand: cd swarm-ebpf && cargo +nightly \
     build --target bpfel-unknown-none -Z build-std=core --release --features program"
);

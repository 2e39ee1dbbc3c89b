//! Per-network counters (`NET_STATS`, per CPU: no atomics on the hot path). The agent
//! creates each network's entry; a network without one is simply not counted.

use swarm_ebpf_common::stat;

use crate::maps::NET_STATS;

/// Adds one packet of `len` bytes to the counter pair starting at `packets`.
#[inline(always)]
pub fn count(vni: u32, packets: usize, len: u32) {
    if let Some(s) = NET_STATS.get_ptr_mut(vni) {
        if packets + 1 < stat::COUNT {
            // SAFETY: per-CPU value of this CPU; indexes checked above.
            unsafe {
                (*s).c[packets] += 1;
                (*s).c[packets + 1] += len as u64;
            }
        }
    }
}

/// Counts one dropped packet under `reason`.
#[inline(always)]
pub fn drop(vni: u32, reason: usize) {
    if let Some(s) = NET_STATS.get_ptr_mut(vni) {
        if reason < stat::COUNT {
            // SAFETY: as above.
            unsafe { (*s).c[reason] += 1 };
        }
    }
}

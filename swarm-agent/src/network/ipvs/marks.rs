//! Firewall marks of the IPVS data path, stable across agent restarts: a restarted agent
//! gives every VIP and published port the mark it had, so its first sync changes nothing.
//!
//! - A published port's mark is a function of the port alone ([`port_mark`]): one bit for
//!   UDP, the port number, above every VIP mark. No collision, no state.
//! - A VIP's mark (one per (service, network) pair) is [`FWMARK_BASE`] plus an FNV-1a hash
//!   of the pair's ids into [`VIP_MARKS`] marks; a pair whose slot is taken probes the next
//!   ones. [`VipMarks`] keeps the marks of live pairs while the agent runs and gives new pairs
//!   theirs in id order, so an agent that starts afresh computes the same marks unless two
//!   pairs collided and the later-made one sorts first (then the two swap once, at the
//!   restart; with 16 million slots, a node with a thousand VIPs collides with odds of 3 in
//!   100 000 per pair made).

use std::collections::{BTreeMap, BTreeSet};

/// The first VIP mark (Docker's first mark too).
pub const FWMARK_BASE: u32 = 0x100;
/// How many VIP marks there are: [`FWMARK_BASE`] up to [`PORT_MARK_BASE`].
pub const VIP_MARKS: u32 = PORT_MARK_BASE - FWMARK_BASE;
/// The published ports' marks start here (above every VIP mark).
pub const PORT_MARK_BASE: u32 = 0x0100_0000;

/// The mark of the published port `port` of IP protocol `ip_proto` (6 TCP, 17 UDP).
pub fn port_mark(ip_proto: u8, port: u16) -> u32 {
    PORT_MARK_BASE | (u32::from(ip_proto == 17) << 16) | u32::from(port)
}

/// A (service id, network id) pair.
pub type VipKey = (String, String);

/// FNV-1a (32 bits) of the pair: fixed by its definition, so the same in every build.
fn hash(key: &VipKey) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in key.0.bytes().chain([0]).chain(key.1.bytes()) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// The marks of the VIPs the node load-balances (see the module's documentation).
#[derive(Debug)]
pub struct VipMarks {
    by_key: BTreeMap<VipKey, u32>,
    used: BTreeSet<u32>,
    /// How many slots there are ([`VIP_MARKS`]; fewer in tests, to force collisions).
    space: u32,
}

impl Default for VipMarks {
    fn default() -> Self {
        VipMarks::with_space(VIP_MARKS)
    }
}

impl VipMarks {
    /// An allocator over `space` slots from [`FWMARK_BASE`] (at most [`VIP_MARKS`]).
    pub fn with_space(space: u32) -> VipMarks {
        VipMarks {
            by_key: BTreeMap::new(),
            used: BTreeSet::new(),
            space: space.clamp(1, VIP_MARKS),
        }
    }

    /// Makes `live` the set of pairs with marks: the others lose theirs, the ones that had
    /// one keep it, new ones get theirs in key order. Marks run out only past `space` pairs:
    /// those get none (and are left out of the tables).
    pub fn assign(&mut self, live: &BTreeSet<VipKey>) {
        let used = &mut self.used;
        self.by_key.retain(|k, m| {
            let keep = live.contains(k);
            if !keep {
                used.remove(m);
            }
            keep
        });
        for k in live {
            if self.by_key.contains_key(k) || self.used.len() as u32 >= self.space {
                continue;
            }
            let start = hash(k) % self.space;
            let slot = (0..self.space)
                .map(|i| FWMARK_BASE + (start + i) % self.space)
                .find(|m| !self.used.contains(m));
            if let Some(m) = slot {
                self.used.insert(m);
                self.by_key.insert(k.clone(), m);
            }
        }
    }

    /// The mark of `key`, if it has one.
    pub fn get(&self, key: &VipKey) -> Option<u32> {
        self.by_key.get(key).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str, n: &str) -> VipKey {
        (s.to_string(), n.to_string())
    }

    #[test]
    fn a_fresh_allocator_gives_every_pair_the_mark_a_running_one_gave_it() {
        let keys: Vec<VipKey> = (0..200)
            .map(|i| key(&format!("svc{i:03}"), &format!("net{}", i % 7)))
            .collect();
        // The running agent saw the pairs come one by one, in another order.
        let mut running = VipMarks::default();
        let mut live = BTreeSet::new();
        for k in keys.iter().rev() {
            live.insert(k.clone());
            running.assign(&live);
        }
        let mut restarted = VipMarks::default();
        restarted.assign(&live);
        for k in &keys {
            let m = running.get(k).unwrap();
            assert_eq!(restarted.get(k), Some(m), "{k:?}");
            assert!((FWMARK_BASE..PORT_MARK_BASE).contains(&m), "{m:#x}");
        }
        let distinct: BTreeSet<u32> = keys.iter().filter_map(|k| running.get(k)).collect();
        assert_eq!(distinct.len(), keys.len());
    }

    #[test]
    fn colliding_pairs_get_distinct_marks_and_a_pair_keeps_its_mark_while_it_lives() {
        // Three slots: collisions are certain.
        let mut m = VipMarks::with_space(3);
        let (a, b, c, d) = (key("a", "n"), key("b", "n"), key("c", "n"), key("d", "n"));
        m.assign(&BTreeSet::from([a.clone(), b.clone(), c.clone()]));
        let marks: BTreeSet<u32> = [&a, &b, &c].iter().filter_map(|k| m.get(k)).collect();
        assert_eq!(
            marks,
            BTreeSet::from([FWMARK_BASE, FWMARK_BASE + 1, FWMARK_BASE + 2])
        );
        let (ma, mc) = (m.get(&a), m.get(&c));
        // No slot left: d gets none and nobody else moves.
        m.assign(&BTreeSet::from([
            a.clone(),
            b.clone(),
            c.clone(),
            d.clone(),
        ]));
        assert_eq!(m.get(&d), None);
        assert_eq!((m.get(&a), m.get(&c)), (ma, mc));
        // b goes: its mark is free for d; a and c keep theirs.
        let mb = m.get(&b);
        m.assign(&BTreeSet::from([a.clone(), c.clone(), d.clone()]));
        assert_eq!(m.get(&b), None);
        assert_eq!(m.get(&d), mb);
        assert_eq!((m.get(&a), m.get(&c)), (ma, mc));
    }

    #[test]
    fn port_marks_are_distinct_per_port_and_protocol_and_above_every_vip_mark() {
        let all: BTreeSet<u32> = [6u8, 17]
            .iter()
            .flat_map(|p| [1u16, 80, 8080, 65535].map(|port| port_mark(*p, port)))
            .collect();
        assert_eq!(all.len(), 8);
        assert!(all.iter().all(|m| *m >= FWMARK_BASE + VIP_MARKS), "{all:?}");
        assert_eq!(port_mark(6, 8080), 0x0100_1f90);
        assert_eq!(port_mark(17, 53), 0x0101_0035);
    }
}

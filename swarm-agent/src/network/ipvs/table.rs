//! What the IPVS of one task's namespace must hold (Docker's recipe): for each VIP of a
//! vip-mode service on a network the task is attached to, one service keyed by a firewall
//! mark, its destinations the service's tasks on that network (NAT, port 0: the port the
//! client asked for), weight 1 for a task that serves and 0 for one that starts or stops
//! (its open connections go on, no new one comes). A task that is gone is no destination.
//! VIPs of networks the task is not on have no mark: they are not reachable (network
//! scoping). [`sync`] brings a namespace's IPVS there with the fewest changes; [`marking_rules`]
//! is the nftables ruleset that marks packets to the VIPs (what IPVS cannot do alone). Marks
//! come from [`super::marks`] (stable across agent restarts).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::net::{Ipv4Addr, SocketAddrV4};

use super::marks::VipMarks;
use super::sandbox::DnsPorts;
use super::{Destination, Ipvs, IpvsError, Service, ServiceKey};
use crate::network::parse_cidr;
use crate::network::view::NetworkView;

/// One VIP's service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipEntry {
    pub vip: Ipv4Addr,
    /// Task address → weight.
    pub dests: BTreeMap<Ipv4Addr, u32>,
}

/// Firewall mark → its VIP and destinations.
pub type Table = BTreeMap<u32, VipEntry>;

/// The table of a task attached to `networks` (network ids).
pub fn desired_table(
    view: &NetworkView,
    networks: &BTreeSet<String>,
    marks: &mut VipMarks,
) -> Table {
    marks.assign(&live_vips(view));
    let mut out = Table::new();
    for s in view.services.values() {
        if s.endpoint_mode != proto::EndpointMode::Vip as i32 {
            continue;
        }
        for v in &s.virtual_ips {
            let Some((vip, _)) = parse_cidr(&v.addr) else {
                continue;
            };
            if !view.networks.contains_key(&v.network_id) {
                continue;
            }
            // Every VIP the node sees has its mark, also on a network this task is not on:
            // marks are the same in every namespace of the node.
            let Some(mark) = marks.get(&(s.id.clone(), v.network_id.clone())) else {
                continue;
            };
            if !networks.contains(&v.network_id) {
                continue;
            }
            let dests = view
                .endpoints_on(&v.network_id)
                .filter(|e| e.service_id == s.id && !e.node_ingress)
                .filter_map(|e| Some((e.address.parse().ok()?, u32::from(e.serving))))
                .collect();
            out.insert(mark, VipEntry { vip, dests });
        }
    }
    out
}

/// The (service, network) pairs of the VIPs the node sees (what has a mark).
pub fn live_vips(view: &NetworkView) -> BTreeSet<(String, String)> {
    let vip_mode = proto::EndpointMode::Vip as i32;
    view.services
        .values()
        .filter(|s| s.endpoint_mode == vip_mode)
        .flat_map(|s| {
            s.virtual_ips
                .iter()
                .filter(|v| {
                    parse_cidr(&v.addr).is_some() && view.networks.contains_key(&v.network_id)
                })
                .map(|v| (s.id.clone(), v.network_id.clone()))
        })
        .collect()
}

/// A namespace's IPVS as [`sync`] takes it: mark → destination (address and port; port 0:
/// the port the client asked for) → weight.
pub type Marked = BTreeMap<u32, BTreeMap<SocketAddrV4, u32>>;

impl VipEntry {
    /// The destinations as [`sync`] takes them (port 0).
    pub fn dest_ports(&self) -> BTreeMap<SocketAddrV4, u32> {
        self.dests
            .iter()
            .map(|(a, w)| (SocketAddrV4::new(*a, 0), *w))
            .collect()
    }
}

/// A task table as [`sync`] takes it.
pub fn marked(table: &Table) -> Marked {
    table.iter().map(|(m, e)| (*m, e.dest_ports())).collect()
}

/// What one [`sync`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub services_added: usize,
    pub services_removed: usize,
    pub dests_added: usize,
    pub dests_changed: usize,
    pub dests_removed: usize,
}

/// Brings the IPVS of `h`'s namespace to `want`: services of marks no longer wanted removed
/// (with their destinations), missing ones added, destinations added, reweighted, removed.
/// Services that are not mark-based are left alone.
pub fn sync(h: &mut Ipvs, want: &Marked) -> Result<SyncReport, IpvsError> {
    let mut r = SyncReport::default();
    let have: BTreeSet<u32> = h
        .services()?
        .into_iter()
        .filter_map(|s| match s.key {
            ServiceKey::Fwmark(m) => Some(m),
            ServiceKey::Addr { .. } => None,
        })
        .collect();
    for m in have.iter().filter(|m| !want.contains_key(m)) {
        h.del_service(ServiceKey::Fwmark(*m))?;
        r.services_removed += 1;
    }
    for (mark, dests) in want {
        let key = ServiceKey::Fwmark(*mark);
        let current: BTreeMap<SocketAddrV4, u32> = if have.contains(mark) {
            h.dests(key)?
                .into_iter()
                .map(|d| (d.addr, d.weight))
                .collect()
        } else {
            h.new_service(&Service::round_robin(key))?;
            r.services_added += 1;
            BTreeMap::new()
        };
        for (addr, weight) in dests {
            let d = Destination::masquerade(*addr, *weight);
            match current.get(addr) {
                None => {
                    h.new_dest(key, &d)?;
                    r.dests_added += 1;
                }
                Some(w) if w != weight => {
                    h.set_dest(key, &d)?;
                    r.dests_changed += 1;
                }
                Some(_) => {}
            }
        }
        for addr in current.keys().filter(|a| !dests.contains_key(a)) {
            h.del_dest(key, *addr)?;
            r.dests_removed += 1;
        }
    }
    Ok(r)
}

/// The nftables table the marking rules live in (one per task namespace).
pub const NFT_TABLE: &str = "swarm_lb";

/// The ruleset (for `nft -f -`) that marks every packet a task sends to a VIP of its table
/// with the VIP's mark, before IPVS sees it (mangle priority, below IPVS's output hook), and,
/// when the task has a resolver port, sends 127.0.0.11:53 there. Replaces the table whole,
/// in one transaction.
pub fn marking_rules(table: &Table, dns: Option<DnsPorts>) -> String {
    let mut s = String::new();
    // Declared first so that the delete never fails on a namespace without it.
    let _ = writeln!(s, "table ip {NFT_TABLE} {{}}\ndelete table ip {NFT_TABLE}");
    let _ = writeln!(s, "table ip {NFT_TABLE} {{");
    let _ = writeln!(
        s,
        "  chain output {{\n    type route hook output priority mangle; policy accept;"
    );
    if !table.is_empty() {
        let map: Vec<String> = table
            .iter()
            .map(|(m, e)| format!("{} : {:#x}", e.vip, m))
            .collect();
        let _ = writeln!(s, "    meta mark set ip daddr map {{ {} }}", map.join(", "));
    }
    let _ = writeln!(s, "  }}");
    if let Some(ports) = dns {
        let _ = writeln!(
            s,
            // `dstnat` names -100 on prerouting only (nft 1.0): a number on output.
            "  chain dns {{\n    type nat hook output priority -100; policy accept;"
        );
        for (proto, port) in [("udp", ports.udp), ("tcp", ports.tcp)] {
            let _ = writeln!(
                s,
                "    ip daddr 127.0.0.11 {proto} dport 53 dnat to 127.0.0.11:{port}"
            );
        }
        let _ = writeln!(s, "  }}");
    }
    let _ = writeln!(s, "}}");
    s
}

/// Applies `marking_rules` in the calling thread's namespace through `nft -f -`.
pub fn apply_marking_rules(table: &Table, dns: Option<DnsPorts>) -> std::io::Result<()> {
    apply_nft(&marking_rules(table, dns))
}

/// Applies a ruleset in the calling thread's namespace through `nft -f -` (one transaction).
pub fn apply_nft(rules: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut child = std::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or_else(|| std::io::Error::other("nft: no stdin"))?
        .write_all(rules.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "nft -f: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::marks::{FWMARK_BASE, PORT_MARK_BASE};
    use super::*;
    use crate::network::testbed::{endpoint_info, network_info, vip_service};

    fn view() -> NetworkView {
        let mut v = NetworkView::default();
        for (id, vni, subnet) in [("n1", 4096, "10.0.0.0/24"), ("n2", 4097, "10.1.0.0/24")] {
            v.networks
                .insert(id.into(), network_info(id, vni, subnet, false));
        }
        v.services
            .insert("web".into(), vip_service("web", "web", "n1", "10.0.0.2/24"));
        v.services
            .insert("db".into(), vip_service("db", "db", "n2", "10.1.0.2/24"));
        for (task, svc, net, addr, serving) in [
            ("t1", "web", "n1", "10.0.0.7", true),
            ("t2", "web", "n1", "10.0.0.8", false),
            ("t3", "db", "n2", "10.1.0.9", true),
        ] {
            let mut e = endpoint_info(task, net, addr, "node", "192.168.0.1");
            e.service_id = svc.into();
            e.serving = serving;
            v.endpoints.insert((task.into(), net.into()), e);
        }
        v
    }

    #[test]
    fn a_task_gets_the_vips_of_its_networks_with_weight_0_for_tasks_that_do_not_serve() {
        let mut ids = VipMarks::default();
        let nets = BTreeSet::from(["n1".to_string()]);
        let t = desired_table(&view(), &nets, &mut ids);
        assert_eq!(t.len(), 1, "{t:?}");
        let (mark, e) = t.iter().next().unwrap();
        assert!((FWMARK_BASE..PORT_MARK_BASE).contains(mark), "{mark}");
        assert_eq!(e.vip, Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(
            e.dests,
            BTreeMap::from([
                (Ipv4Addr::new(10, 0, 0, 7), 1),
                (Ipv4Addr::new(10, 0, 0, 8), 0)
            ])
        );
        // The other network's VIP has a mark in the node (the same in every namespace) but
        // none in this task's table; on both networks the task gets both, marks unchanged.
        let both = desired_table(
            &view(),
            &BTreeSet::from(["n1".to_string(), "n2".to_string()]),
            &mut ids,
        );
        assert_eq!(both.len(), 2);
        assert_eq!(both.get(mark), Some(e));
        // A task that is gone is no destination.
        let mut v = view();
        v.endpoints.remove(&("t2".into(), "n1".into()));
        let t = desired_table(&v, &nets, &mut ids);
        assert_eq!(t.get(mark).map(|e| e.dests.len()), Some(1), "{t:?}");
    }

    #[test]
    fn the_marking_rules_map_each_vip_to_its_mark_and_redirect_dns() {
        let t = Table::from([(
            0x101,
            VipEntry {
                vip: Ipv4Addr::new(10, 0, 0, 2),
                dests: BTreeMap::new(),
            },
        )]);
        let r = marking_rules(
            &t,
            Some(DnsPorts {
                udp: 40123,
                tcp: 40124,
            }),
        );
        assert!(
            r.starts_with("table ip swarm_lb {}\ndelete table ip swarm_lb\n"),
            "{r}"
        );
        assert!(
            r.contains("type route hook output priority mangle; policy accept;\n    meta mark set ip daddr map { 10.0.0.2 : 0x101 }\n"),
            "{r}"
        );
        assert!(
            r.contains("type nat hook output priority -100; policy accept;\n    ip daddr 127.0.0.11 udp dport 53 dnat to 127.0.0.11:40123"),
            "{r}"
        );
        assert!(
            r.contains("ip daddr 127.0.0.11 tcp dport 53 dnat to 127.0.0.11:40124"),
            "{r}"
        );
        let r = marking_rules(&Table::new(), None);
        assert!(!r.contains("map") && !r.contains("dnat"), "{r}");
    }
}

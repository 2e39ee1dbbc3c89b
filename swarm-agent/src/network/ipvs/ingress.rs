//! The routing mesh of the IPVS data path (Docker's `ingress-sbox` recipe). Every node has
//! one ingress sandbox: a network namespace with
//!
//! - `eth0` on the ingress network, at the node's own ingress address (what the allocator
//!   gave the node), plugged like a task's interface (its host side carries `from_container`),
//!   so it reaches every task on the ingress network, on any node, through the overlay;
//! - `eth1`, a veth to the node ([`SBOX_ADDR`] ↔ [`HOST_ADDR`], a /30 of link-local space;
//!   Docker's is `docker_gwbridge`), its default route.
//!
//! On the node, an nftables table ([`host_rules`]) sends a packet to one of the node's own
//! addresses on a published port (prerouting: clients outside; output: the node's own
//! processes) to the sandbox (DNAT to [`SBOX_ADDR`], port kept), and masquerades what the node
//! itself sends there. In the sandbox ([`sandbox_rules`]) the packet gets its port's mark
//! ([`super::marks::port_mark`]); an IPVS service per mark balances it round robin to the
//! service's tasks on the ingress network (NAT to the target port; weight 1 serving, 0
//! starting or stopping, removed once gone), and the packets leaving on `eth0` are
//! masqueraded to the sandbox's ingress address, so the replies come back through it.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;

use super::marks::port_mark;
use super::table::{apply_nft, Marked, SyncReport};
use crate::network::plumbing::PlumbingError;
use crate::network::view::NetworkView;
use crate::network::{ingress_network, ingress_ports};

/// The node's end of the link to the sandbox.
pub const HOST_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 239, 1);
/// The sandbox's end (where the node sends published ports).
pub const SBOX_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 239, 2);
/// The prefix length of the link.
pub const LINK_PREFIX: u8 = 30;
/// The host side of the sandbox's interface on the ingress network.
pub const HOST_INGRESS_IF: &str = "swarm-ingress0";
/// The host side of the link to the sandbox.
pub const HOST_LINK_IF: &str = "swarm-ingress1";
/// The sandbox's interface on the ingress network.
pub const SBOX_INGRESS_IF: &str = "eth0";
/// The sandbox's end of the link to the node.
pub const SBOX_LINK_IF: &str = "eth1";
/// The nftables table of the mesh, on the node and in the sandbox.
pub const NFT_TABLE: &str = "swarm_ingress";

/// One published port of ingress mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortEntry {
    /// "tcp" or "udp".
    pub proto: &'static str,
    pub port: u16,
    /// The service's port in its tasks.
    pub target: u16,
    /// The service's tasks on the ingress network: address → weight.
    pub dests: BTreeMap<Ipv4Addr, u32>,
    /// The service publishing it (for logs).
    pub service: String,
    /// `source-ip=preserve` was asked: the IPVS mesh masquerades (like Docker's) and cannot.
    pub preserve: bool,
}

/// Port mark → its port.
pub type IngressTable = BTreeMap<u32, PortEntry>;

/// Every ingress-mode port of every service the node sees with a VIP on the ingress network
/// (what `desired_published` gives the eBPF mesh), with the service's tasks on that network.
pub fn desired_ingress(view: &NetworkView) -> IngressTable {
    let mut out = IngressTable::new();
    let Some(ingress) = ingress_network(view) else {
        return out;
    };
    for p in ingress_ports(view, ingress) {
        let dests = view
            .endpoints_on(&ingress.id)
            .filter(|e| e.service_id == p.service.id && !e.node_ingress)
            .filter_map(|e| Some((e.address.parse().ok()?, u32::from(e.serving))))
            .collect();
        // As in PUBLISHED: of two services on one port, the later by id has it.
        out.insert(
            port_mark(p.ip_proto, p.port),
            PortEntry {
                proto: if p.ip_proto == 17 { "udp" } else { "tcp" },
                port: p.port,
                target: p.target,
                dests,
                service: p.service.name.clone(),
                preserve: p.config.preserve_source_ip,
            },
        );
    }
    out
}

/// The table as [`sync`] takes it: NAT to each task's target port.
pub fn marked(table: &IngressTable) -> Marked {
    table
        .iter()
        .map(|(m, e)| {
            let dests = e
                .dests
                .iter()
                .map(|(a, w)| (SocketAddrV4::new(*a, e.target), *w))
                .collect();
            (*m, dests)
        })
        .collect()
}

/// `nft` lines that replace the table whole, in one transaction (declared first so that the
/// delete never fails where it is missing).
fn replace_table(s: &mut String) {
    let _ = writeln!(
        s,
        "table ip {NFT_TABLE} {{}}\ndelete table ip {NFT_TABLE}\ntable ip {NFT_TABLE} {{"
    );
}

/// The node's ruleset: published ports to the sandbox, the node's own packets to it
/// masqueraded (a client on 127.0.0.1 included: the link allows loopback sources).
pub fn host_rules(table: &IngressTable) -> String {
    let mut s = String::new();
    replace_table(&mut s);
    let ports: Vec<String> = table
        .values()
        .map(|e| format!("{} . {}", e.proto, e.port))
        .collect();
    // `dstnat`/`srcnat` are names for these numbers on prerouting/postrouting only (nft 1.0).
    for (chain, hook) in [("prerouting", "prerouting"), ("output", "output")] {
        let _ = writeln!(
            s,
            "  chain {chain} {{\n    type nat hook {hook} priority -100; policy accept;"
        );
        if !ports.is_empty() {
            let _ = writeln!(
                s,
                "    fib daddr type local meta l4proto . th dport {{ {} }} dnat to {SBOX_ADDR}",
                ports.join(", ")
            );
        }
        let _ = writeln!(s, "  }}");
    }
    let _ = writeln!(
        s,
        "  chain postrouting {{\n    type nat hook postrouting priority 100; policy accept;\n    oifname \"{HOST_LINK_IF}\" fib saddr type local masquerade\n  }}\n}}"
    );
    s
}

/// The sandbox's ruleset: a packet from the node on a published port gets the port's mark
/// (before IPVS sees it, at mangle priority), and what leaves on the ingress network is
/// masqueraded to the sandbox's address there.
pub fn sandbox_rules(table: &IngressTable) -> String {
    let mut s = String::new();
    replace_table(&mut s);
    let _ = writeln!(
        s,
        "  chain prerouting {{\n    type filter hook prerouting priority -150; policy accept;"
    );
    if !table.is_empty() {
        let map: Vec<String> = table
            .iter()
            .map(|(m, e)| format!("{} . {} : {m:#x}", e.proto, e.port))
            .collect();
        let _ = writeln!(
            s,
            "    iifname \"{SBOX_LINK_IF}\" meta mark set meta l4proto . th dport map {{ {} }}",
            map.join(", ")
        );
    }
    let _ = writeln!(
        s,
        "  }}\n  chain postrouting {{\n    type nat hook postrouting priority 100; policy accept;\n    oifname \"{SBOX_INGRESS_IF}\" masquerade\n  }}\n}}"
    );
    s
}

/// Sysctls of the sandbox, on top of IPVS's ([`super::sandbox::SYSCTLS`]).
const SBOX_SYSCTLS: &[(&str, &str)] = &[("/proc/sys/net/ipv4/ip_forward", "1")];

/// Brings the sandbox at `netns` to `table`: sysctls (when `first`), its rules, its IPVS.
pub async fn program_sandbox(
    netns: &Path,
    table: IngressTable,
    first: bool,
) -> Result<SyncReport, PlumbingError> {
    let rules = sandbox_rules(&table);
    super::sandbox::program_netns(
        netns,
        first,
        SBOX_SYSCTLS,
        rules,
        "the ingress rules",
        marked(&table),
    )
    .await
}

/// The node's side (in the calling thread's namespace): forwarding on, loopback sources
/// allowed on the link (a client of 127.0.0.1), the rules.
pub fn program_host(table: &IngressTable) -> Result<(), PlumbingError> {
    let io = |what: String| move |source| PlumbingError::Io { what, source };
    for path in [
        "/proc/sys/net/ipv4/ip_forward".to_string(),
        format!("/proc/sys/net/ipv4/conf/{HOST_LINK_IF}/route_localnet"),
    ] {
        std::fs::write(&path, "1").map_err(io(format!("setting {path}")))?;
    }
    apply_nft(&host_rules(table)).map_err(io("applying the node's ingress rules".into()))
}

/// Takes the node's ingress rules away (the eBPF data plane serves published ports; rules
/// an IPVS-mode agent left would take the node's own clients). Nothing to do is fine.
pub fn remove_host_rules() {
    let listed = std::process::Command::new("nft")
        .args(["list", "table", "ip", NFT_TABLE])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    if listed.is_ok_and(|s| s.success()) {
        match apply_nft(&format!("delete table ip {NFT_TABLE}\n")) {
            Ok(()) => tracing::info!("removed the IPVS routing mesh's rules of an earlier agent"),
            Err(e) => tracing::warn!("removing the table {NFT_TABLE}: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::testbed::{
        endpoint_info, ingress_network, node_ingress_endpoint, published_service,
    };

    fn view() -> NetworkView {
        let mut v = NetworkView::default();
        v.networks
            .insert("ing".into(), ingress_network("ing", 4096, "10.255.0.0/16"));
        let mut web = published_service("web", "web", "ing", "10.255.0.2/16", &[(80, 8080)]);
        web.ports.push(proto::PortConfig {
            protocol: proto::PortProtocol::Udp as i32,
            target_port: 53,
            published_port: 5353,
            publish_mode: proto::PublishMode::Host as i32,
            ..Default::default()
        });
        v.services.insert("web".into(), web);
        for (task, addr, serving) in [("t1", "10.255.0.7", true), ("t2", "10.255.0.8", false)] {
            let mut e = endpoint_info(task, "ing", addr, "n2", "192.168.0.2");
            e.service_id = "web".into();
            e.serving = serving;
            v.endpoints.insert((task.into(), "ing".into()), e);
        }
        let me = node_ingress_endpoint("n1", "ing", "10.255.0.3", "192.168.0.1");
        v.endpoints.insert(("n1".into(), "ing".into()), me);
        v
    }

    #[test]
    fn an_ingress_port_balances_to_the_tasks_target_port_with_weight_0_for_those_not_serving() {
        let t = desired_ingress(&view());
        // The host-mode port is not the mesh's; the node's own address is no destination.
        assert_eq!(t.len(), 1, "{t:?}");
        let (mark, e) = t.iter().next().unwrap();
        assert_eq!(*mark, port_mark(6, 8080));
        assert_eq!((e.proto, e.port, e.target), ("tcp", 8080, 80));
        let m = marked(&t);
        assert_eq!(
            m[mark],
            BTreeMap::from([
                (SocketAddrV4::new(Ipv4Addr::new(10, 255, 0, 7), 80), 1),
                (SocketAddrV4::new(Ipv4Addr::new(10, 255, 0, 8), 80), 0),
            ])
        );
        // A task that is gone is no destination; no ingress network, no ports.
        let mut v = view();
        v.endpoints.remove(&("t2".into(), "ing".into()));
        assert_eq!(desired_ingress(&v)[mark].dests.len(), 1);
        v.networks.clear();
        assert!(desired_ingress(&v).is_empty());
    }

    #[test]
    fn the_rules_send_published_ports_to_the_sandbox_and_mark_them_there() {
        let t = desired_ingress(&view());
        let host = host_rules(&t);
        assert!(
            host.starts_with("table ip swarm_ingress {}\ndelete table ip swarm_ingress\n"),
            "{host}"
        );
        for hook in ["prerouting", "output"] {
            assert!(
                host.contains(&format!("type nat hook {hook} priority -100; policy accept;\n    fib daddr type local meta l4proto . th dport {{ tcp . 8080 }} dnat to 169.254.239.2\n")),
                "{host}"
            );
        }
        assert!(
            host.contains("oifname \"swarm-ingress1\" fib saddr type local masquerade"),
            "{host}"
        );
        let sbox = sandbox_rules(&t);
        assert!(
            sbox.contains("iifname \"eth1\" meta mark set meta l4proto . th dport map { tcp . 8080 : 0x1001f90 }"),
            "{sbox}"
        );
        assert!(sbox.contains("oifname \"eth0\" masquerade"), "{sbox}");
        // No port: no set, no map (nft refuses empty anonymous ones).
        let empty = IngressTable::new();
        assert!(!host_rules(&empty).contains("dnat"));
        assert!(!sandbox_rules(&empty).contains("map"));
    }
}

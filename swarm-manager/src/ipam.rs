//! IP address management for overlay networks (pure logic, no I/O).
//!
//! - Subnets are carved from the cluster's address pools (`Cluster.default_addr_pool`,
//!   default 10.0.0.0/8) with the cluster's prefix length (`Cluster.subnet_size`, default
//!   24), lowest free first, skipping every subnet that overlaps one already in use
//!   (allocated or requested with `--subnet`).
//! - Addresses inside a subnet skip the network address, the gateway and the broadcast
//!   address; the gateway is the first host unless the network names one.
//! - VNIs come from 4096 … 2^24−1, lowest free first.
//!
//! There is no hidden state: [`Ipam::from_state`] rebuilds everything from the store's
//! objects (allocated networks, the addresses of tasks that have not ended, the services'
//! virtual IPs), so a new leader allocates exactly what the old one would have.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use proto::{Network, NetworkAllocation, Task};

use crate::store::State;

/// Docker's default address pool.
pub const DEFAULT_POOL: &str = "10.0.0.0/8";
/// Docker's default prefix length of the subnets carved from the pool.
pub const DEFAULT_SUBNET_SIZE: u8 = 24;
/// First VXLAN network identifier handed out (Docker's).
pub const VNI_START: u32 = 4096;
/// Last valid VNI (24 bits).
pub const VNI_END: u32 = (1 << 24) - 1;
/// Docker's VXLAN UDP port.
pub const DEFAULT_VXLAN_PORT: u32 = 4789;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error("invalid subnet {value:?}: {reason}")]
    InvalidSubnet { value: String, reason: String },
    #[error("invalid address pool mask length {0}: it must be between 1 and 30 (e.g. 24)")]
    InvalidSubnetSize(u32),
    #[error(
        "address pool {pool} is smaller than the subnet size /{size}: use a larger pool or a longer --default-addr-pool-mask-length"
    )]
    PoolTooSmall { pool: String, size: u8 },
    #[error(
        "no available subnet for network {network} in the address pools {pools}: remove unused networks, or create the network with an explicit --subnet"
    )]
    PoolExhausted { network: String, pools: String },
    #[error(
        "subnet {subnet} of network {network} overlaps subnet {other} of network {other_network}: choose another --subnet"
    )]
    SubnetOverlap {
        network: String,
        subnet: String,
        other: String,
        other_network: String,
    },
    #[error("gateway {gateway} of network {network} is not a host address of subnet {subnet}")]
    BadGateway {
        network: String,
        gateway: String,
        subnet: String,
    },
    #[error(
        "no available IP addresses on network {network}: all addresses of subnet {subnet} are in use; remove tasks from the network, or recreate it with a larger --subnet"
    )]
    AddressesExhausted { network: String, subnet: String },
    #[error("no available VXLAN network identifier for network {network}: remove unused networks")]
    VnisExhausted { network: String },
    #[error("network {network} is not allocated yet")]
    NotAllocated { network: String },
}

/// An IPv4 subnet, normalized to its network address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Subnet {
    base: u32,
    len: u8,
}

impl Subnet {
    pub fn new(addr: Ipv4Addr, len: u8) -> Option<Subnet> {
        if len > 32 {
            return None;
        }
        Some(Subnet {
            base: u32::from(addr) & mask(len),
            len,
        })
    }
    pub fn addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base)
    }
    pub fn prefix_len(&self) -> u8 {
        self.len
    }
    /// Number of addresses (including network and broadcast).
    pub fn size(&self) -> u64 {
        1u64 << (32 - self.len as u32)
    }
    fn last(&self) -> u32 {
        self.base | !mask(self.len)
    }
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.len) == self.base
    }
    pub fn overlaps(&self, other: &Subnet) -> bool {
        self.base <= other.last() && other.base <= self.last()
    }
    /// A usable host address: not the network address nor the broadcast address (/31 and
    /// /32 have no such reserved addresses).
    pub fn is_host(&self, ip: Ipv4Addr) -> bool {
        let v = u32::from(ip);
        self.contains(ip) && (self.len >= 31 || (v != self.base && v != self.last()))
    }
    pub fn first_host(&self) -> Option<Ipv4Addr> {
        if self.len >= 31 {
            Some(self.addr())
        } else {
            Some(Ipv4Addr::from(self.base + 1))
        }
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr(), self.len)
    }
}

impl FromStr for Subnet {
    type Err = IpamError;
    fn from_str(s: &str) -> Result<Subnet, IpamError> {
        let bad = |reason: &str| IpamError::InvalidSubnet {
            value: s.to_string(),
            reason: reason.to_string(),
        };
        let (addr, len) = s.split_once('/').ok_or_else(|| {
            bad("expected an IPv4 address with a prefix length such as 10.10.0.0/24")
        })?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| bad("only IPv4 subnets such as 10.10.0.0/24 are supported"))?;
        let len: u8 = len
            .parse()
            .ok()
            .filter(|l| *l <= 32)
            .ok_or_else(|| bad("the prefix length must be between 0 and 32"))?;
        Subnet::new(addr, len).ok_or_else(|| bad("the prefix length must be between 0 and 32"))
    }
}

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - len as u32)
    }
}

/// Name of the network `swarm init` creates for the routing mesh.
pub const INGRESS_NETWORK_NAME: &str = "ingress";

/// The `ingress` overlay network `swarm init` creates (unallocated: the allocator gives it
/// the first subnet of the cluster's address pool, 10.0.0.0/24 by default).
pub fn ingress_network() -> Network {
    Network {
        id: swarm_common::id::new_id(),
        meta: None,
        spec: Some(proto::NetworkSpec {
            name: INGRESS_NETWORK_NAME.to_string(),
            driver: "overlay".to_string(),
            ingress: true,
            ..Default::default()
        }),
        allocation: None,
    }
}

/// Parses "10.0.1.5/24" or "10.0.1.5" into the address.
pub fn address_of(cidr: &str) -> Option<Ipv4Addr> {
    cidr.split('/').next()?.parse().ok()
}

/// Checks `init --default-addr-pool` / `--default-addr-pool-mask-length` values (0 and
/// empty mean the defaults).
pub fn validate_pools(pools: &[String], subnet_size: u32) -> Result<(), IpamError> {
    parse_pools(pools, subnet_size).map(|_| ())
}

fn parse_pools(pools: &[String], subnet_size: u32) -> Result<(Vec<Subnet>, u8), IpamError> {
    let size = match subnet_size {
        0 => DEFAULT_SUBNET_SIZE,
        1..=30 => subnet_size as u8,
        n => return Err(IpamError::InvalidSubnetSize(n)),
    };
    let mut out: Vec<Subnet> = Vec::new();
    let defaults = [DEFAULT_POOL.to_string()];
    let pools = if pools.is_empty() {
        &defaults[..]
    } else {
        pools
    };
    for p in pools {
        let s: Subnet = p.parse()?;
        if s.len > size {
            return Err(IpamError::PoolTooSmall {
                pool: s.to_string(),
                size,
            });
        }
        if let Some(o) = out.iter().find(|o| o.overlaps(&s)) {
            return Err(IpamError::InvalidSubnet {
                value: p.clone(),
                reason: format!("it overlaps address pool {o}"),
            });
        }
        out.push(s);
    }
    Ok((out, size))
}

/// What one network holds.
#[derive(Clone, Debug)]
struct NetAddrs {
    name: String,
    subnet: Subnet,
    gateway: Ipv4Addr,
    vni: u32,
    used: BTreeSet<u32>,
    /// Where the next search starts (wraps around), so that freed addresses are not reused
    /// at once.
    next: u32,
}

/// The allocator's view of subnets, VNIs and addresses.
#[derive(Clone, Debug)]
pub struct Ipam {
    pools: Vec<Subnet>,
    subnet_size: u8,
    /// network id → (name, subnet) of every allocated or requested subnet.
    subnets: BTreeMap<String, (String, Subnet)>,
    vnis: BTreeSet<u32>,
    nets: BTreeMap<String, NetAddrs>,
}

pub(crate) fn net_name(n: &Network) -> &str {
    n.spec.as_ref().map_or(n.id.as_str(), |s| s.name.as_str())
}

/// The task still holds its addresses: it has not ended.
pub fn task_holds_addresses(t: &Task) -> bool {
    !t.state().is_terminal()
}

impl Ipam {
    /// An empty IPAM over these pools (empty = 10.0.0.0/8) and prefix length (0 = 24).
    pub fn new(pools: &[String], subnet_size: u32) -> Result<Ipam, IpamError> {
        let (pools, subnet_size) = parse_pools(pools, subnet_size)?;
        Ok(Ipam {
            pools,
            subnet_size,
            subnets: BTreeMap::new(),
            vnis: BTreeSet::new(),
            nets: BTreeMap::new(),
        })
    }

    /// Everything allocated in `state`: the cluster's pools, allocated networks (and the
    /// subnets unallocated networks ask for), the addresses of tasks that have not ended,
    /// and the virtual IPs services hold (`Service.endpoint.virtual_ips`). Bad cluster pool settings fall back to the defaults (they are validated at
    /// `init`).
    pub fn from_state(state: &State) -> Ipam {
        let (pools, size) = state
            .cluster()
            .map(|c| (c.default_addr_pool.clone(), c.subnet_size))
            .unwrap_or_default();
        let mut ipam = Ipam::new(&pools, size).unwrap_or_else(|e| {
            tracing::warn!("cluster address pools are invalid ({e}); using {DEFAULT_POOL}");
            Ipam::new(&[], 0).expect("default pool is valid")
        });
        for n in state.networks() {
            if let Some(a) = &n.allocation {
                ipam.restore_network(n, a);
            }
        }
        for n in state.networks().filter(|n| n.allocation.is_none()) {
            // Explicit subnets of networks still to allocate are taken too, so that a
            // carved subnet never lands on them.
            for cfg in n.spec.iter().flat_map(|s| s.ipam.iter()) {
                if let Ok(s) = cfg.subnet.parse::<Subnet>() {
                    ipam.subnets
                        .entry(n.id.clone())
                        .or_insert_with(|| (net_name(n).to_string(), s));
                }
            }
        }
        for t in state.tasks().filter(|t| task_holds_addresses(t)) {
            for a in &t.networks {
                for addr in &a.addresses {
                    ipam.reserve_address(&a.network_id, addr);
                }
            }
        }
        for s in state.services() {
            for v in s.endpoint.iter().flat_map(|e| e.virtual_ips.iter()) {
                ipam.reserve_address(&v.network_id, &v.addr);
            }
        }
        for n in state.nodes() {
            for a in &n.attachments {
                for addr in &a.addresses {
                    ipam.reserve_address(&a.network_id, addr);
                }
            }
        }
        ipam
    }

    fn restore_network(&mut self, n: &Network, a: &NetworkAllocation) {
        let Ok(subnet) = a.subnet.parse::<Subnet>() else {
            tracing::warn!(network = %n.id, subnet = %a.subnet, "allocated subnet does not parse; ignored");
            return;
        };
        let gateway = a
            .gateway
            .parse()
            .ok()
            .or_else(|| subnet.first_host())
            .unwrap_or(subnet.addr());
        let name = net_name(n).to_string();
        self.vnis.insert(a.vni);
        self.subnets.insert(n.id.clone(), (name.clone(), subnet));
        let mut used = BTreeSet::new();
        used.insert(u32::from(gateway));
        self.nets.insert(
            n.id.clone(),
            NetAddrs {
                name,
                subnet,
                gateway,
                vni: a.vni,
                used,
                next: 0,
            },
        );
    }

    pub fn is_allocated(&self, network_id: &str) -> bool {
        self.nets.contains_key(network_id)
    }

    /// VNI, subnet and gateway for a network not allocated yet: its `--subnet` and
    /// `--gateway` when given, else the lowest free subnet of the pools and its first host.
    /// Records the allocation.
    pub fn allocate_network(&mut self, n: &Network) -> Result<NetworkAllocation, IpamError> {
        let name = net_name(n).to_string();
        if let Some(existing) = self.nets.get(&n.id) {
            return Ok(NetworkAllocation {
                vni: existing.vni,
                subnet: existing.subnet.to_string(),
                gateway: existing.gateway.to_string(),
            });
        }
        let cfg = n.spec.as_ref().and_then(|s| s.ipam.first());
        let others = |me: &str, s: &Subnet| -> Option<(String, Subnet)> {
            self.subnets
                .iter()
                .find(|(id, (_, o))| id.as_str() != me && o.overlaps(s))
                .map(|(_, (nm, o))| (nm.clone(), *o))
        };
        let subnet = match cfg.filter(|c| !c.subnet.is_empty()) {
            Some(c) => {
                let s: Subnet = c.subnet.parse()?;
                if let Some((other_network, other)) = others(&n.id, &s) {
                    return Err(IpamError::SubnetOverlap {
                        network: name,
                        subnet: s.to_string(),
                        other: other.to_string(),
                        other_network,
                    });
                }
                s
            }
            None => self.carve(&n.id).ok_or_else(|| IpamError::PoolExhausted {
                network: name.clone(),
                pools: self
                    .pools
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?,
        };
        let gateway = match cfg.map(|c| c.gateway.as_str()).filter(|g| !g.is_empty()) {
            Some(g) => match g.parse::<Ipv4Addr>() {
                Ok(ip) if subnet.is_host(ip) => ip,
                _ => {
                    return Err(IpamError::BadGateway {
                        network: name,
                        gateway: g.to_string(),
                        subnet: subnet.to_string(),
                    })
                }
            },
            None => subnet.first_host().ok_or_else(|| IpamError::BadGateway {
                network: name.clone(),
                gateway: String::new(),
                subnet: subnet.to_string(),
            })?,
        };
        let vni = (VNI_START..=VNI_END)
            .find(|v| !self.vnis.contains(v))
            .ok_or_else(|| IpamError::VnisExhausted {
                network: name.clone(),
            })?;
        let alloc = NetworkAllocation {
            vni,
            subnet: subnet.to_string(),
            gateway: gateway.to_string(),
        };
        self.restore_network(n, &alloc);
        Ok(alloc)
    }

    /// The lowest subnet of the pools that overlaps no subnet in use.
    fn carve(&self, me: &str) -> Option<Subnet> {
        let step = 1u64 << (32 - self.subnet_size as u32);
        let taken: Vec<Subnet> = self
            .subnets
            .iter()
            .filter(|(id, _)| id.as_str() != me)
            .map(|(_, (_, s))| *s)
            .collect();
        for pool in &self.pools {
            let mut at = pool.base as u64;
            let end = pool.last() as u64;
            while at + step - 1 <= end {
                let cand = Subnet {
                    base: at as u32,
                    len: self.subnet_size,
                };
                match taken
                    .iter()
                    .filter(|t| t.overlaps(&cand))
                    .map(|t| t.last())
                    .max()
                {
                    None => return Some(cand),
                    // Jump past the overlapping subnet, aligned to the step.
                    Some(last) => {
                        let next = last as u64 + 1;
                        at = next.div_ceil(step) * step;
                    }
                }
            }
        }
        None
    }

    /// Forgets a network (it was removed).
    pub fn release_network(&mut self, network_id: &str) {
        if let Some(n) = self.nets.remove(network_id) {
            self.vnis.remove(&n.vni);
        }
        self.subnets.remove(network_id);
    }

    /// Marks an address ("10.0.1.5/24" or "10.0.1.5") of a network as used. False if the
    /// network is unknown, the address is not a host of its subnet, or it is already used.
    pub fn reserve_address(&mut self, network_id: &str, addr: &str) -> bool {
        let (Some(n), Some(ip)) = (self.nets.get_mut(network_id), address_of(addr)) else {
            return false;
        };
        n.subnet.is_host(ip) && n.used.insert(u32::from(ip))
    }

    /// A free address of the network in CIDR notation ("10.0.1.5/24"), recorded as used.
    pub fn allocate_address(&mut self, network_id: &str) -> Result<String, IpamError> {
        let n = self
            .nets
            .get_mut(network_id)
            .ok_or_else(|| IpamError::NotAllocated {
                network: network_id.to_string(),
            })?;
        let first = n.subnet.first_host().map_or(n.subnet.base, u32::from);
        let last = if n.subnet.len >= 31 {
            n.subnet.last()
        } else {
            n.subnet.last() - 1
        };
        let start = n.next.clamp(first, last.max(first));
        let free = (start..=last)
            .chain(first..start)
            .find(|a| !n.used.contains(a));
        let Some(a) = free else {
            return Err(IpamError::AddressesExhausted {
                network: n.name.clone(),
                subnet: n.subnet.to_string(),
            });
        };
        n.used.insert(a);
        n.next = if a >= last { first } else { a + 1 };
        Ok(format!("{}/{}", Ipv4Addr::from(a), n.subnet.len))
    }

    /// Frees an address of a network (the task holding it ended).
    pub fn release_address(&mut self, network_id: &str, addr: &str) {
        if let (Some(n), Some(ip)) = (self.nets.get_mut(network_id), address_of(addr)) {
            if ip != n.gateway {
                n.used.remove(&u32::from(ip));
            }
        }
    }

    /// Addresses in use on a network, gateway included.
    pub fn used_count(&self, network_id: &str) -> usize {
        self.nets.get(network_id).map_or(0, |n| n.used.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{Cluster, IpamConfig, NetworkAttachment, NetworkSpec, TaskState, TaskStatus};

    fn net(id: &str, subnet: &str, gateway: &str) -> Network {
        Network {
            id: id.into(),
            spec: Some(NetworkSpec {
                name: format!("net-{id}"),
                driver: "overlay".into(),
                ipam: if subnet.is_empty() {
                    vec![]
                } else {
                    vec![IpamConfig {
                        subnet: subnet.into(),
                        gateway: gateway.into(),
                    }]
                },
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn subnet_parsing_and_math() {
        let s: Subnet = "10.0.1.7/24".parse().unwrap();
        assert_eq!(s.to_string(), "10.0.1.0/24", "normalized");
        assert_eq!(s.size(), 256);
        assert!(s.contains("10.0.1.255".parse().unwrap()));
        assert!(!s.is_host("10.0.1.255".parse().unwrap()));
        assert!(!s.is_host("10.0.1.0".parse().unwrap()));
        assert!(s.is_host("10.0.1.1".parse().unwrap()));
        assert!(!s.contains("10.0.2.0".parse().unwrap()));
        let big: Subnet = "10.0.0.0/8".parse().unwrap();
        assert!(big.overlaps(&s) && s.overlaps(&big));
        assert!(!s.overlaps(&"10.0.2.0/24".parse().unwrap()));
        for bad in ["10.0.0.0", "10.0.0.0/33", "fe80::/64", "x/8"] {
            let e = bad.parse::<Subnet>().unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn pools_are_validated() {
        assert!(validate_pools(&[], 0).is_ok());
        assert!(validate_pools(&["192.168.0.0/16".into()], 24).is_ok());
        let e = validate_pools(&["10.0.0.0/8".into()], 31).unwrap_err();
        assert!(e.to_string().contains("between 1 and 30"), "{e}");
        let e = validate_pools(&["10.0.0.0/26".into()], 24).unwrap_err();
        assert!(e.to_string().contains("mask-length"), "{e}");
        let e = validate_pools(&["10.0.0.0/8".into(), "10.1.0.0/16".into()], 24).unwrap_err();
        assert!(e.to_string().contains("overlaps"), "{e}");
    }

    #[test]
    fn subnets_are_carved_in_order_and_skip_explicit_ones() {
        let mut ipam = Ipam::new(&[], 0).unwrap();
        let a = ipam.allocate_network(&net("a", "", "")).unwrap();
        assert_eq!(a.subnet, "10.0.0.0/24");
        assert_eq!(a.gateway, "10.0.0.1");
        assert_eq!(a.vni, VNI_START);
        let b = ipam
            .allocate_network(&net("b", "10.0.1.0/24", "10.0.1.254"))
            .unwrap();
        assert_eq!(b.gateway, "10.0.1.254");
        assert_eq!(b.vni, VNI_START + 1);
        let c = ipam.allocate_network(&net("c", "", "")).unwrap();
        assert_eq!(c.subnet, "10.0.2.0/24", "skips the explicit 10.0.1.0/24");
        // An explicit subnet that overlaps is refused with both names.
        let e = ipam
            .allocate_network(&net("d", "10.0.2.128/25", ""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("net-d") && e.contains("net-c"), "{e}");
        // A gateway outside the subnet is refused.
        let e = ipam
            .allocate_network(&net("e", "192.168.0.0/24", "192.168.1.1"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("192.168.1.1"), "{e}");
        // Releasing a network frees its subnet for the next one.
        ipam.release_network("a");
        let f = ipam.allocate_network(&net("f", "", "")).unwrap();
        assert_eq!(f.subnet, "10.0.0.0/24");
        assert_eq!(f.vni, VNI_START, "VNI of the released network reused");
    }

    #[test]
    fn carving_honours_pool_and_mask_and_reports_exhaustion() {
        let mut ipam = Ipam::new(&["192.168.0.0/23".into()], 24).unwrap();
        assert_eq!(
            ipam.allocate_network(&net("a", "", "")).unwrap().subnet,
            "192.168.0.0/24"
        );
        assert_eq!(
            ipam.allocate_network(&net("b", "", "")).unwrap().subnet,
            "192.168.1.0/24"
        );
        let e = ipam.allocate_network(&net("c", "", "")).unwrap_err();
        assert!(matches!(e, IpamError::PoolExhausted { .. }));
        let text = e.to_string();
        assert!(
            text.contains("net-c") && text.contains("192.168.0.0/23"),
            "{text}"
        );
        assert!(text.contains("--subnet"), "names a fix: {text}");

        // A larger explicit subnet inside the pool makes carving jump past it.
        let mut ipam = Ipam::new(&["10.10.0.0/16".into()], 26).unwrap();
        ipam.allocate_network(&net("big", "10.10.0.0/25", ""))
            .unwrap();
        assert_eq!(
            ipam.allocate_network(&net("x", "", "")).unwrap().subnet,
            "10.10.0.128/26"
        );
    }

    #[test]
    fn addresses_skip_network_gateway_broadcast_and_run_out() {
        let mut ipam = Ipam::new(&[], 0).unwrap();
        ipam.allocate_network(&net("n", "10.9.0.0/29", "")).unwrap();
        // Hosts .1-.6; .1 is the gateway.
        let got: Vec<String> = (0..5)
            .map(|_| ipam.allocate_address("n").unwrap())
            .collect();
        assert_eq!(
            got,
            [
                "10.9.0.2/29",
                "10.9.0.3/29",
                "10.9.0.4/29",
                "10.9.0.5/29",
                "10.9.0.6/29"
            ]
        );
        let e = ipam.allocate_address("n").unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with("no available IP addresses on network net-n:"),
            "{text}"
        );
        assert!(
            text.contains("10.9.0.0/29") && text.contains("--subnet"),
            "{text}"
        );
        ipam.release_address("n", "10.9.0.4/29");
        ipam.release_address("n", "10.9.0.1"); // the gateway is never released
        assert_eq!(ipam.allocate_address("n").unwrap(), "10.9.0.4/29");
        assert!(ipam.allocate_address("n").is_err());
        assert!(matches!(
            ipam.allocate_address("unknown"),
            Err(IpamError::NotAllocated { .. })
        ));
    }

    #[test]
    fn freed_addresses_are_not_reused_at_once() {
        let mut ipam = Ipam::new(&[], 0).unwrap();
        ipam.allocate_network(&net("n", "", "")).unwrap();
        let a = ipam.allocate_address("n").unwrap();
        assert_eq!(a, "10.0.0.2/24");
        ipam.release_address("n", &a);
        assert_eq!(ipam.allocate_address("n").unwrap(), "10.0.0.3/24");
    }

    #[test]
    fn reserve_refuses_duplicates_and_outsiders() {
        let mut ipam = Ipam::new(&[], 0).unwrap();
        ipam.allocate_network(&net("n", "", "")).unwrap();
        assert!(ipam.reserve_address("n", "10.0.0.9/24"));
        assert!(!ipam.reserve_address("n", "10.0.0.9/24"));
        assert!(!ipam.reserve_address("n", "10.0.0.1"), "gateway");
        assert!(!ipam.reserve_address("n", "10.0.0.255/24"), "broadcast");
        assert!(!ipam.reserve_address("n", "10.0.1.9/24"));
        assert!(!ipam.reserve_address("other", "10.0.0.9/24"));
        assert_eq!(ipam.used_count("n"), 2);
    }

    #[tokio::test]
    async fn rebuilt_from_state() {
        let store = crate::store::Store::memory();
        let mut ipam0 = Ipam::new(&["172.20.0.0/16".into()], 24).unwrap();
        let mut a = net("a", "", "");
        a.allocation = Some(ipam0.allocate_network(&a).unwrap());
        let b = net("b", "172.20.1.0/24", ""); // not allocated yet, but its subnet is asked for
        let task = |id: &str, addr: &str, st: TaskState| Task {
            id: id.into(),
            status: Some(TaskStatus {
                state: st as i32,
                ..Default::default()
            }),
            networks: vec![NetworkAttachment {
                network_id: "a".into(),
                network_name: "net-a".into(),
                addresses: vec![addr.into()],
                aliases: vec![],
            }],
            ..Default::default()
        };
        crate::orchestrator::testutil::put(
            &store,
            vec![
                Cluster {
                    id: "c".into(),
                    default_addr_pool: vec!["172.20.0.0/16".into()],
                    subnet_size: 24,
                    ..Default::default()
                }
                .into(),
                a.clone().into(),
                b.into(),
                task("t1", "172.20.0.2/24", TaskState::Running).into(),
                task("t2", "172.20.0.3/24", TaskState::Shutdown).into(),
                proto::Service {
                    id: "s".into(),
                    endpoint: Some(proto::Endpoint {
                        virtual_ips: vec![proto::VirtualIp {
                            network_id: "a".into(),
                            addr: "172.20.0.4/24".into(),
                        }],
                        ..Default::default()
                    }),
                    ..Default::default()
                }
                .into(),
            ],
        )
        .await;
        let mut ipam = Ipam::from_state(&store.read());
        assert!(ipam.is_allocated("a"));
        assert!(!ipam.is_allocated("b"));
        assert_eq!(
            ipam.used_count("a"),
            3,
            "gateway + running task + service VIP"
        );
        // t2 ended: its address is free again (t1's and the VIP are not).
        let next: Vec<String> = (0..2)
            .map(|_| ipam.allocate_address("a").unwrap())
            .collect();
        assert!(!next.contains(&"172.20.0.2/24".to_string()), "{next:?}");
        assert!(!next.contains(&"172.20.0.4/24".to_string()), "{next:?}");
        assert!(next.contains(&"172.20.0.3/24".to_string()), "{next:?}");
        // A new network skips a's subnet and b's requested one; VNI after a's.
        let c = ipam.allocate_network(&net("c", "", "")).unwrap();
        assert_eq!(c.subnet, "172.20.2.0/24");
        assert_eq!(c.vni, VNI_START + 1);
    }
}

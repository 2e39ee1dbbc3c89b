//! The names the embedded DNS server answers itself: an [`Index`] built from a
//! [`NetworkView`] snapshot, and [`Index::answer`], which decides for one question asked by one
//! task (its [`Scope`]: the networks it is attached to) whether the answer is local (records,
//! possibly none), NXDOMAIN, or a matter for the node's resolvers.
//!
//! Pure: no I/O, no clock. Every name is indexed lowercase, without the trailing dot, with the
//! network each record belongs to; a question only sees records of the asking task's networks.
//!
//! What a task can resolve, on every network it shares with the target (Docker's `addSvcRecords`
//! calls, ingress excluded: Docker adds no names there, it is a routing-only network):
//!
//! | name | answer |
//! |---|---|
//! | `<service>` | A: the service's VIP on that network; `dnsrr`: the addresses of its serving tasks |
//! | `tasks.<service>` | A: the addresses of its serving tasks (both modes) |
//! | `<alias>` (network alias of the attachment) | as `<service>`: VIP, or serving tasks with the alias in `dnsrr` |
//! | `tasks.<alias>` | A: serving tasks that carry the alias |
//! | `<service>.<slot>.<task id>` (the task name) | A: the task's address, serving or not |
//! | the first 12 characters of the task id | A: the task's address (Docker's short-container-ID alias, which is also the task's default hostname) |
//! | `_<port name>._<tcp\|udp\|sctp>.<service>` | SRV per serving task: priority 0, weight 0, the target port, the task name as target; the target's A record in the additional section |
//! | `d.c.b.a.in-addr.arpa` of a task address | PTR `<task name>.<network name>.` |
//! | `d.c.b.a.in-addr.arpa` of a VIP | PTR `<service name>.<network name>.` |
//!
//! Every name also works as `<name>.<network name>` (only that network's records), which is how
//! Docker reads a dotted name: the full name on every network first, then a shorter prefix on
//! the network named by the rest.
//!
//! Decisions (the answer codes are summed up in [`super`]):
//! - `<service>.<slot>` is not a name: Docker does not resolve it (only the full task name, the
//!   container's short ID and its hostname); a hostname template such as
//!   `{{.Service.Name}}-{{.Task.Slot}}` is Docker's way to get per-slot names.
//! - Records of every shared network are answered together (Docker answers with the first
//!   network, in the sandbox's endpoint order, that has the name): both are reachable from the
//!   asking task, and the order Docker uses is not something the view carries.
//! - A name we know on one of the task's networks answers NOERROR even when it has no record
//!   of the asked type (NODATA): AAAA (no IPv6 in the overlay), MX, TXT, … and also A of a
//!   `dnsrr` service or `tasks.` name with no serving task at this moment. Docker forwards
//!   types other than A/AAAA/MX/PTR/SRV and names with no current record, and the host's
//!   resolvers answer NXDOMAIN for a name that exists in the swarm.
//! - PTR of a VIP answers `<service>.<network>.` (Docker has no PTR for VIPs and forwards).
//!   PTR of an address inside the subnet of one of the task's networks that is no task and no
//!   VIP answers NXDOMAIN: no resolver outside the swarm knows those addresses.
//! - A name we do not know is forwarded, unless every network of the task is internal
//!   (`--internal`: no way out, Docker gives no external DNS there), in which case the answer is
//!   NXDOMAIN (Docker answers SERVFAIL, which resolvers retry and report as a temporary
//!   failure; on an internal network the name will never resolve).
//! - A VIP-mode service with no VIP on a network answers NODATA there (Docker would fall back
//!   to the task addresses, bypassing the load balancer).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};

use hickory_proto::op::Query;
use hickory_proto::rr::{DNSClass, Name, RecordType};
use proto::{EndpointMode, PortProtocol};

use crate::network::view::NetworkView;

/// TTL of every local answer (Docker's `respTTL`).
pub const TTL: u32 = 600;

/// Position of a network in [`Index`]'s table.
pub type NetIdx = u32;

static NEXT_INDEX_ID: AtomicU64 = AtomicU64::new(1);

#[derive(Debug)]
struct Net {
    /// Its own position, so that a one-network scope can borrow it.
    idx: NetIdx,
    id: String,
    internal: bool,
    /// (network address, mask) of its IPv4 subnet.
    subnet: Option<(u32, u32)>,
}

impl Net {
    fn contains(&self, ip: Ipv4Addr) -> bool {
        self.subnet
            .is_some_and(|(net, mask)| u32::from(ip) & mask == net)
    }
}

#[derive(Debug)]
struct Srv {
    net: NetIdx,
    port: u16,
    target: Name,
    addr: Ipv4Addr,
}

/// Everything one name has, per network.
#[derive(Debug, Default)]
struct Entry {
    /// Networks on which the name exists (it answers NODATA there when it has no record of
    /// the asked type).
    known: Vec<NetIdx>,
    a: Vec<(NetIdx, Ipv4Addr)>,
    ptr: Vec<(NetIdx, Name)>,
    srv: Vec<Srv>,
}

impl Entry {
    fn finish(&mut self) {
        self.known.sort_unstable();
        self.known.dedup();
        self.a.sort_unstable();
        self.a.dedup();
        self.ptr.sort();
        self.ptr.dedup();
        self.srv
            .sort_by(|x, y| (x.net, &x.target, x.port).cmp(&(y.net, &y.target, y.port)));
        self.srv
            .dedup_by(|x, y| (x.net, &x.target, x.port) == (y.net, &y.target, y.port));
    }

    fn known_in(&self, nets: &[NetIdx]) -> bool {
        self.known.iter().any(|n| nets.contains(n))
    }
}

/// The records of one view, ready to answer from.
#[derive(Debug)]
pub struct Index {
    id: u64,
    nets: Vec<Net>,
    net_by_id: HashMap<String, NetIdx>,
    /// Lowercase network name → network.
    net_by_name: HashMap<String, NetIdx>,
    names: HashMap<Box<str>, Entry>,
    /// Objects of the view left out, with the reason (bad address, name too long, …).
    skipped: Vec<String>,
}

/// The networks of the task asking, resolved against one [`Index`] ([`Index::scope`]).
#[derive(Clone, Debug)]
pub struct Scope {
    index_id: u64,
    nets: Vec<NetIdx>,
    forward: bool,
}

impl Scope {
    /// Whether names we do not know may be sent to the node's resolvers.
    pub fn may_forward(&self) -> bool {
        self.forward
    }
}

/// What to do with one question.
#[derive(Clone, Copy, Debug)]
pub enum Answer<'a> {
    /// NOERROR from the index; no records means NODATA (the name exists, not that type).
    Local(Records<'a>),
    /// NXDOMAIN, authoritatively: the name cannot exist for this task.
    NxDomain,
    /// Not a name of ours: ask the node's resolvers.
    Forward,
}

/// One record's data, borrowed from the index. The owner is always the question's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rdata<'a> {
    A(Ipv4Addr),
    Ptr(&'a Name),
    Srv { port: u16, target: &'a Name },
}

/// The records of one name that the asking task sees, for the asked type.
#[derive(Clone, Copy, Debug)]
pub struct Records<'a> {
    entry: &'a Entry,
    nets: &'a [NetIdx],
    a: bool,
    ptr: bool,
    srv: bool,
}

impl<'a> Records<'a> {
    fn new(entry: &'a Entry, nets: &'a [NetIdx], rtype: RecordType) -> Records<'a> {
        let any = rtype == RecordType::ANY;
        Records {
            entry,
            nets,
            a: any || rtype == RecordType::A,
            ptr: any || rtype == RecordType::PTR,
            srv: any || rtype == RecordType::SRV,
        }
    }

    /// The answer section, in index order (the server rotates it).
    pub fn answers(&self) -> impl Iterator<Item = Rdata<'a>> + Clone + 'a {
        let (nets, e) = (self.nets, self.entry);
        let (a, ptr, srv) = (self.a, self.ptr, self.srv);
        let a =
            e.a.iter()
                .filter(move |(n, _)| a && nets.contains(n))
                .map(|(_, ip)| Rdata::A(*ip));
        let p = e
            .ptr
            .iter()
            .filter(move |(n, _)| ptr && nets.contains(n))
            .map(|(_, name)| Rdata::Ptr(name));
        let s = e
            .srv
            .iter()
            .filter(move |s| srv && nets.contains(&s.net))
            .map(|s| Rdata::Srv {
                port: s.port,
                target: &s.target,
            });
        a.chain(p).chain(s)
    }

    /// The additional section: the A record of each SRV target.
    pub fn additionals(&self) -> impl Iterator<Item = (&'a Name, Ipv4Addr)> + Clone + 'a {
        let (nets, srv) = (self.nets, self.srv);
        self.entry
            .srv
            .iter()
            .filter(move |s| srv && nets.contains(&s.net))
            .map(|s| (&s.target, s.addr))
    }

    pub fn len(&self) -> usize {
        self.answers().count()
    }

    pub fn is_empty(&self) -> bool {
        self.answers().next().is_none()
    }
}

/// Lowercase ASCII copy of `name`'s labels joined by dots into `buf`; `None` for the root, for
/// a label holding a dot (it could not be told from two labels) or for non-UTF-8 bytes, none of
/// which can be a name of ours.
fn lower_key<'b>(name: &Name, buf: &'b mut [u8; 256]) -> Option<&'b str> {
    let mut len = 0;
    for label in name.iter() {
        if label.contains(&b'.') {
            return None;
        }
        let need = label.len() + usize::from(len > 0);
        if len + need > buf.len() {
            return None;
        }
        if len > 0 {
            buf[len] = b'.';
            len += 1;
        }
        for &b in label {
            buf[len] = b.to_ascii_lowercase();
            len += 1;
        }
    }
    if len == 0 {
        return None;
    }
    std::str::from_utf8(&buf[..len]).ok()
}

/// `d.c.b.a.in-addr.arpa` → a.b.c.d
fn parse_reverse(key: &str) -> Option<Ipv4Addr> {
    let rest = key.strip_suffix(".in-addr.arpa")?;
    let mut octets = [0u8; 4];
    let mut n = 0;
    for part in rest.split('.') {
        if n == 4 || part.is_empty() || part.len() > 3 || (part.len() > 1 && part.starts_with('0'))
        {
            return None;
        }
        octets[3 - n] = part.parse().ok()?;
        n += 1;
    }
    (n == 4).then(|| Ipv4Addr::from(octets))
}

fn reverse_key(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("{d}.{c}.{b}.{a}.in-addr.arpa")
}

/// "10.0.1.2/24" or "10.0.1.2" → the address.
fn parse_addr(s: &str) -> Option<Ipv4Addr> {
    s.split('/').next()?.trim().parse().ok()
}

fn parse_subnet(s: &str) -> Option<(u32, u32)> {
    let (addr, len) = s.split_once('/')?;
    let addr: Ipv4Addr = addr.trim().parse().ok()?;
    let len: u32 = len.trim().parse().ok()?;
    if len > 32 {
        return None;
    }
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    Some((u32::from(addr) & mask, mask))
}

/// An absolute name from dotted text.
fn fqdn(text: &str) -> Option<Name> {
    let mut n = Name::from_ascii(text).ok()?;
    n.set_fqdn(true);
    Some(n)
}

#[derive(Default)]
struct Builder {
    names: HashMap<Box<str>, Entry>,
    skipped: Vec<String>,
}

impl Builder {
    fn entry(&mut self, name: &str) -> &mut Entry {
        let lc = name.to_ascii_lowercase();
        self.names.entry(lc.into_boxed_str()).or_default()
    }

    fn known(&mut self, name: &str, net: NetIdx) {
        if !name.is_empty() {
            self.entry(name).known.push(net);
        }
    }

    fn a(&mut self, name: &str, net: NetIdx, ip: Ipv4Addr) {
        if !name.is_empty() {
            let e = self.entry(name);
            e.known.push(net);
            e.a.push((net, ip));
        }
    }

    fn ptr(&mut self, ip: Ipv4Addr, net: NetIdx, target: &str) {
        match fqdn(target) {
            Some(t) => {
                let e = self.entry(&reverse_key(ip));
                e.known.push(net);
                e.ptr.push((net, t));
            }
            None => self
                .skipped
                .push(format!("PTR {ip} → {target:?}: not a valid domain name")),
        }
    }
}

fn srv_proto(p: i32) -> &'static str {
    match PortProtocol::try_from(p) {
        Ok(PortProtocol::Udp) => "udp",
        Ok(PortProtocol::Sctp) => "sctp",
        _ => "tcp",
    }
}

impl Index {
    /// An index with no names: every question is forwarded.
    pub fn empty() -> Index {
        Index::build(&NetworkView::default())
    }

    /// Builds the index of `view`. Objects that cannot be indexed (an address that does not
    /// parse, a name that is no domain name) are left out and listed by [`Index::skipped`].
    pub fn build(view: &NetworkView) -> Index {
        let mut nets = Vec::new();
        let mut net_by_id = HashMap::new();
        let mut net_by_name = HashMap::new();
        // Lowercase name and ingress flag of each network, for the builder.
        let mut meta: Vec<(String, bool)> = Vec::new();
        for n in view.networks.values() {
            let idx = nets.len() as NetIdx;
            nets.push(Net {
                idx,
                id: n.id.clone(),
                internal: n.internal,
                subnet: parse_subnet(&n.subnet),
            });
            net_by_id.insert(n.id.clone(), idx);
            if !n.ingress && !n.name.is_empty() {
                net_by_name
                    .entry(n.name.to_ascii_lowercase())
                    .or_insert(idx);
            }
            meta.push((n.name.to_ascii_lowercase(), n.ingress));
        }
        // A network with records: known to the view and not ingress.
        let usable = |id: &str| -> Option<NetIdx> {
            let idx = *net_by_id.get(id)?;
            (!meta[idx as usize].1).then_some(idx)
        };

        let mut b = Builder::default();

        for s in view.services.values() {
            let name = s.name.as_str();
            if name.is_empty() {
                continue;
            }
            let dnsrr = s.endpoint_mode == EndpointMode::Dnsrr as i32;
            let mut service_nets: Vec<&str> = s.network_ids.iter().map(String::as_str).collect();
            service_nets.extend(s.virtual_ips.iter().map(|v| v.network_id.as_str()));
            for net_id in service_nets {
                let Some(net) = usable(net_id) else { continue };
                b.known(name, net);
                b.known(&format!("tasks.{name}"), net);
                for p in s.ports.iter().filter(|p| !p.name.is_empty()) {
                    b.known(
                        &format!("_{}._{}.{name}", p.name, srv_proto(p.protocol)),
                        net,
                    );
                }
            }
            if dnsrr {
                continue;
            }
            for vip in &s.virtual_ips {
                let Some(net) = usable(&vip.network_id) else {
                    continue;
                };
                match parse_addr(&vip.addr) {
                    Some(ip) => {
                        b.a(name, net, ip);
                        let target = format!("{name}.{}", meta[net as usize].0);
                        b.ptr(ip, net, &target);
                    }
                    None => b.skipped.push(format!(
                        "VIP {:?} of service {name} on network {}: not an IPv4 address",
                        vip.addr, vip.network_id
                    )),
                }
            }
        }

        for e in view.endpoints.values() {
            let Some(net) = usable(&e.network_id) else {
                continue;
            };
            let Some(ip) = parse_addr(&e.address) else {
                b.skipped.push(format!(
                    "endpoint of task {} on network {}: address {:?} is not IPv4",
                    e.task_id, e.network_id, e.address
                ));
                continue;
            };
            let net_name = &meta[net as usize].0;
            // The task's own names, whatever its state.
            b.a(&e.task_name, net, ip);
            if let Some(short) = e.task_id.get(..12) {
                b.a(short, net, ip);
            }
            if !e.task_name.is_empty() {
                b.ptr(ip, net, &format!("{}.{net_name}", e.task_name));
            }

            let service = view.services.get(&e.service_id);
            let service_name = service.map_or(e.service_name.as_str(), |s| s.name.as_str());
            // Without its service object, the endpoint resolves as dnsrr would.
            let dnsrr = service.is_none_or(|s| s.endpoint_mode == EndpointMode::Dnsrr as i32);
            let vip = service.and_then(|s| {
                s.virtual_ips
                    .iter()
                    .find(|v| v.network_id == e.network_id)
                    .and_then(|v| parse_addr(&v.addr))
            });
            if !service_name.is_empty() {
                let tasks = format!("tasks.{service_name}");
                b.known(service_name, net);
                b.known(&tasks, net);
                if e.serving {
                    b.a(&tasks, net, ip);
                    if dnsrr {
                        b.a(service_name, net, ip);
                    }
                    let target = fqdn(&e.task_name);
                    for p in service
                        .map(|s| s.ports.as_slice())
                        .unwrap_or_default()
                        .iter()
                        .filter(|p| !p.name.is_empty())
                    {
                        let Some(target) = target.clone() else { break };
                        let Ok(port) = u16::try_from(p.target_port) else {
                            continue;
                        };
                        let srv_name =
                            format!("_{}._{}.{service_name}", p.name, srv_proto(p.protocol));
                        let entry = b.entry(&srv_name);
                        entry.known.push(net);
                        entry.srv.push(Srv {
                            net,
                            port,
                            target,
                            addr: ip,
                        });
                    }
                }
            }
            for alias in e.aliases.iter().filter(|a| !a.is_empty()) {
                let tasks = format!("tasks.{alias}");
                b.known(alias, net);
                b.known(&tasks, net);
                if e.serving {
                    b.a(&tasks, net, ip);
                }
                if dnsrr {
                    if e.serving {
                        b.a(alias, net, ip);
                    }
                } else if let Some(vip) = vip {
                    b.a(alias, net, vip);
                }
            }
        }

        let mut names = b.names;
        for e in names.values_mut() {
            e.finish();
        }
        Index {
            id: NEXT_INDEX_ID.fetch_add(1, Ordering::Relaxed),
            nets,
            net_by_id,
            net_by_name,
            names,
            skipped: b.skipped,
        }
    }

    /// Objects of the view that were left out, and why.
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }

    /// Number of distinct names (including reverse names).
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The scope of a task attached to `network_ids`. Ids the view does not know are ignored
    /// for the records; forwarding is refused only when every id is a known internal network.
    pub fn scope<S: AsRef<str>>(&self, network_ids: &[S]) -> Scope {
        let mut nets: Vec<NetIdx> = network_ids
            .iter()
            .filter_map(|id| self.net_by_id.get(id.as_ref()).copied())
            .collect();
        nets.sort_unstable();
        nets.dedup();
        let all_internal = !network_ids.is_empty()
            && network_ids.iter().all(|id| {
                self.net_by_id
                    .get(id.as_ref())
                    .is_some_and(|&i| self.nets[i as usize].internal)
            });
        Scope {
            index_id: self.id,
            nets,
            forward: !all_internal,
        }
    }

    fn not_ours(scope: &Scope) -> Answer<'static> {
        if scope.forward {
            Answer::Forward
        } else {
            Answer::NxDomain
        }
    }

    fn lookup<'a>(
        &'a self,
        key: &str,
        nets: &'a [NetIdx],
        rtype: RecordType,
    ) -> Option<Records<'a>> {
        let entry = self.names.get(key)?;
        entry
            .known_in(nets)
            .then(|| Records::new(entry, nets, rtype))
    }

    /// The answer to `query` asked by a task of `scope` (made by this index's
    /// [`Index::scope`]; a scope of another index sees no records).
    pub fn answer<'a>(&'a self, query: &Query, scope: &'a Scope) -> Answer<'a> {
        if !matches!(query.query_class(), DNSClass::IN | DNSClass::ANY) {
            return Self::not_ours(scope);
        }
        let nets: &[NetIdx] = if scope.index_id == self.id {
            &scope.nets
        } else {
            &[]
        };
        let mut buf = [0u8; 256];
        let Some(key) = lower_key(query.name(), &mut buf) else {
            return Self::not_ours(scope);
        };
        let rtype = query.query_type();
        if let Some(r) = self.lookup(key, nets, rtype) {
            return Answer::Local(r);
        }
        // `<name>.<network>`: the longest prefix first, as Docker does.
        let mut end = key.len();
        while let Some(dot) = key[..end].rfind('.') {
            let (prefix, suffix) = (&key[..dot], &key[dot + 1..]);
            if let Some(&n) = self.net_by_name.get(suffix) {
                if nets.contains(&n) {
                    let one = std::slice::from_ref(&self.nets[n as usize].idx);
                    if let Some(r) = self.lookup(prefix, one, rtype) {
                        return Answer::Local(r);
                    }
                }
            }
            end = dot;
        }
        if let Some(ip) = parse_reverse(key) {
            if nets.iter().any(|&n| self.nets[n as usize].contains(ip)) {
                return Answer::NxDomain;
            }
        }
        Self::not_ours(scope)
    }

    /// The id of network `idx` (for logs and tests).
    pub fn network_id(&self, idx: NetIdx) -> Option<&str> {
        self.nets.get(idx as usize).map(|n| n.id.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::dns::testdata::*;
    use std::str::FromStr;

    fn q(name: &str, t: RecordType) -> Query {
        Query::query(Name::from_str(name).expect("name"), t)
    }

    /// The A addresses of `name` for a task on `nets`, or what else the answer was.
    fn a(index: &Index, nets: &[&str], name: &str) -> Result<Vec<Ipv4Addr>, String> {
        let scope = index.scope(nets);
        match index.answer(&q(name, RecordType::A), &scope) {
            Answer::Local(r) => Ok(r
                .answers()
                .map(|d| match d {
                    Rdata::A(ip) => ip,
                    other => panic!("A query answered {other:?}"),
                })
                .collect()),
            Answer::NxDomain => Err("NXDOMAIN".into()),
            Answer::Forward => Err("forward".into()),
        }
    }

    fn ips(v: &[&str]) -> Vec<Ipv4Addr> {
        let mut out: Vec<Ipv4Addr> = v.iter().map(|s| s.parse().unwrap()).collect();
        out.sort();
        out
    }

    fn sorted(r: Result<Vec<Ipv4Addr>, String>) -> Result<Vec<Ipv4Addr>, String> {
        r.map(|mut v| {
            v.sort();
            v
        })
    }

    #[test]
    fn dns_service_name_is_its_vip_and_tasks_name_its_serving_tasks() {
        let i = Index::build(&sample_view());
        assert!(i.skipped().is_empty(), "{:?}", i.skipped());
        assert_eq!(a(&i, &[FRONT], "web"), Ok(ips(&["10.0.1.2"])));
        // The non-serving task (web.3) is not a backend.
        assert_eq!(
            sorted(a(&i, &[FRONT], "tasks.web")),
            Ok(ips(&["10.0.1.3", "10.0.1.4"]))
        );
    }

    #[test]
    fn dns_names_are_case_insensitive_with_or_without_the_trailing_dot() {
        let i = Index::build(&sample_view());
        for n in ["web", "web.", "WEB", "Web.", "TASKS.Web."] {
            assert!(a(&i, &[FRONT], n).is_ok_and(|v| !v.is_empty()), "{n}");
        }
    }

    #[test]
    fn dns_dnsrr_service_and_aliases_resolve_to_serving_tasks() {
        let i = Index::build(&sample_view());
        let both = Ok(ips(&["10.0.2.3", "10.0.2.4"]));
        assert_eq!(sorted(a(&i, &[BACK], "db")), both);
        assert_eq!(sorted(a(&i, &[BACK], "tasks.db")), both);
        assert_eq!(sorted(a(&i, &[BACK], "database")), both);
        assert_eq!(sorted(a(&i, &[BACK], "tasks.database")), both);
    }

    #[test]
    fn dns_alias_of_a_vip_service_is_its_vip_and_tasks_alias_its_tasks() {
        let i = Index::build(&sample_view());
        assert_eq!(a(&i, &[FRONT], "www"), Ok(ips(&["10.0.1.2"])));
        assert_eq!(
            sorted(a(&i, &[FRONT], "tasks.www")),
            Ok(ips(&["10.0.1.3", "10.0.1.4"]))
        );
    }

    #[test]
    fn dns_task_names_resolve_whatever_the_task_state_and_slot_names_do_not() {
        let i = Index::build(&sample_view());
        assert_eq!(a(&i, &[FRONT], WEB1_NAME), Ok(ips(&["10.0.1.3"])));
        // Not serving, still its own name.
        assert_eq!(a(&i, &[FRONT], WEB3_NAME), Ok(ips(&["10.0.1.5"])));
        // The short task id (Docker's short container ID alias, our default hostname).
        assert_eq!(a(&i, &[FRONT], &WEB1_ID[..12]), Ok(ips(&["10.0.1.3"])));
        assert_eq!(a(&i, &[FRONT], "web.1"), Err("forward".into()));
    }

    #[test]
    fn dns_name_dot_network_restricts_to_that_network() {
        let i = Index::build(&sample_view());
        // "multi" has a VIP on front and on back.
        assert_eq!(
            sorted(a(&i, &[FRONT, BACK], "multi")),
            Ok(ips(&["10.0.1.20", "10.0.2.20"]))
        );
        assert_eq!(
            a(&i, &[FRONT, BACK], "multi.front"),
            Ok(ips(&["10.0.1.20"]))
        );
        assert_eq!(
            a(&i, &[FRONT, BACK], "MULTI.Back."),
            Ok(ips(&["10.0.2.20"]))
        );
        assert_eq!(
            sorted(a(&i, &[FRONT], "tasks.web.front")),
            Ok(ips(&["10.0.1.3", "10.0.1.4"]))
        );
        assert_eq!(
            a(&i, &[FRONT], &format!("{WEB1_NAME}.front")),
            Ok(ips(&["10.0.1.3"]))
        );
        // A network the task is not on is no suffix.
        assert_eq!(a(&i, &[FRONT], "multi.back"), Err("forward".into()));
        // A name that is not on the named network.
        assert_eq!(a(&i, &[FRONT, BACK], "web.back"), Err("forward".into()));
    }

    #[test]
    fn dns_only_the_networks_of_the_asking_task_are_visible() {
        let i = Index::build(&sample_view());
        assert_eq!(a(&i, &[OTHER], "secret"), Ok(ips(&["10.0.3.2"])));
        assert_eq!(a(&i, &[FRONT, BACK], "secret"), Err("forward".into()));
        assert_eq!(a(&i, &[BACK], "web"), Err("forward".into()));
        assert_eq!(a(&i, &[BACK], WEB1_NAME), Err("forward".into()));
        // Records of a multi-network service: only the shared network's.
        assert_eq!(a(&i, &[BACK], "multi"), Ok(ips(&["10.0.2.20"])));
        assert_eq!(a(&i, &[], "web"), Err("forward".into()));
        assert_eq!(a(&i, &["no-such-network"], "web"), Err("forward".into()));
    }

    #[test]
    fn dns_ingress_has_no_names() {
        let i = Index::build(&sample_view());
        // "multi" also has a VIP on ingress; a task on ingress only sees nothing.
        assert_eq!(a(&i, &[INGRESS], "multi"), Err("forward".into()));
        assert_eq!(a(&i, &[INGRESS], "multi.ingress"), Err("forward".into()));
        assert_eq!(
            sorted(a(&i, &[FRONT, INGRESS], "multi")),
            Ok(ips(&["10.0.1.20"]))
        );
    }

    #[test]
    fn dns_known_names_answer_nodata_for_other_types() {
        let i = Index::build(&sample_view());
        let s = i.scope(&[FRONT]);
        for t in [
            RecordType::AAAA,
            RecordType::MX,
            RecordType::TXT,
            RecordType::CNAME,
        ] {
            for n in ["web", "tasks.web", WEB1_NAME] {
                match i.answer(&q(n, t), &s) {
                    Answer::Local(r) => assert!(r.is_empty(), "{n} {t}"),
                    other => panic!("{n} {t}: {other:?}"),
                }
            }
        }
        // Unknown names are not ours whatever the type.
        assert!(matches!(
            i.answer(&q("example.com", RecordType::AAAA), &s),
            Answer::Forward
        ));
    }

    #[test]
    fn dns_a_service_with_no_serving_task_is_nodata_not_forwarded() {
        let i = Index::build(&sample_view());
        // "idle" is dnsrr with one task that is not serving.
        assert_eq!(a(&i, &[BACK], "idle"), Ok(vec![]));
        assert_eq!(a(&i, &[BACK], "tasks.idle"), Ok(vec![]));
        // "empty" is a vip service without tasks.
        assert_eq!(a(&i, &[FRONT], "tasks.empty"), Ok(vec![]));
        assert_eq!(a(&i, &[FRONT], "empty"), Ok(ips(&["10.0.1.30"])));
    }

    fn ptr(i: &Index, nets: &[&str], name: &str) -> Result<Vec<String>, String> {
        let s = i.scope(nets);
        match i.answer(&q(name, RecordType::PTR), &s) {
            Answer::Local(r) => Ok(r
                .answers()
                .map(|d| match d {
                    Rdata::Ptr(n) => n.to_string(),
                    other => panic!("PTR answered {other:?}"),
                })
                .collect()),
            Answer::NxDomain => Err("NXDOMAIN".into()),
            Answer::Forward => Err("forward".into()),
        }
    }

    #[test]
    fn dns_ptr_of_tasks_and_vips() {
        let i = Index::build(&sample_view());
        assert_eq!(
            ptr(&i, &[FRONT], "3.1.0.10.in-addr.arpa."),
            Ok(vec![format!("{WEB1_NAME}.front.")])
        );
        assert_eq!(
            ptr(&i, &[FRONT], "2.1.0.10.IN-ADDR.ARPA"),
            Ok(vec!["web.front.".to_string()])
        );
        // In our subnet but nothing there: NXDOMAIN, not forwarded.
        assert_eq!(
            ptr(&i, &[FRONT], "99.1.0.10.in-addr.arpa"),
            Err("NXDOMAIN".into())
        );
        // Another network's address is not ours to answer.
        assert_eq!(
            ptr(&i, &[FRONT], "2.3.0.10.in-addr.arpa"),
            Err("forward".into())
        );
        assert_eq!(
            ptr(&i, &[FRONT], "8.8.8.8.in-addr.arpa"),
            Err("forward".into())
        );
        // Malformed reverse names are not ours.
        for n in [
            "1.0.10.in-addr.arpa",
            "03.1.0.10.in-addr.arpa",
            "300.1.0.10.in-addr.arpa",
        ] {
            assert_eq!(ptr(&i, &[FRONT], n), Err("forward".into()), "{n}");
        }
    }

    #[test]
    fn dns_srv_per_serving_task_with_target_addresses() {
        let i = Index::build(&sample_view());
        let s = i.scope(&[FRONT]);
        let Answer::Local(r) = i.answer(&q("_http._tcp.web", RecordType::SRV), &s) else {
            panic!("SRV not answered locally");
        };
        let mut srv: Vec<(u16, String)> = r
            .answers()
            .map(|d| match d {
                Rdata::Srv { port, target } => (port, target.to_string()),
                other => panic!("SRV answered {other:?}"),
            })
            .collect();
        srv.sort();
        assert_eq!(
            srv,
            vec![(80, format!("{WEB1_NAME}.")), (80, format!("{WEB2_NAME}."))]
        );
        let mut add: Vec<(String, Ipv4Addr)> =
            r.additionals().map(|(n, ip)| (n.to_string(), ip)).collect();
        add.sort();
        assert_eq!(
            add,
            vec![
                (format!("{WEB1_NAME}."), "10.0.1.3".parse().unwrap()),
                (format!("{WEB2_NAME}."), "10.0.1.4".parse().unwrap())
            ]
        );
        // The UDP port, and a protocol with no such named port.
        let Answer::Local(r) = i.answer(&q("_dns._udp.web", RecordType::SRV), &s) else {
            panic!("SRV udp");
        };
        assert_eq!(r.len(), 2);
        assert!(matches!(
            i.answer(&q("_http._udp.web", RecordType::SRV), &s),
            Answer::Forward
        ));
        // An A question on an SRV name is NODATA.
        assert_eq!(a(&i, &[FRONT], "_http._tcp.web"), Ok(vec![]));
    }

    #[test]
    fn dns_unknown_names_from_internal_only_tasks_are_nxdomain() {
        let i = Index::build(&sample_view());
        assert_eq!(a(&i, &[OTHER], "example.com"), Err("NXDOMAIN".into()));
        assert!(!i.scope(&[OTHER]).may_forward());
        // One network with a way out is enough.
        assert_eq!(a(&i, &[OTHER, FRONT], "example.com"), Err("forward".into()));
        // Unknown networks are not known to be internal.
        assert!(i.scope(&[OTHER, "unknown"]).may_forward());
        assert!(i.scope::<&str>(&[]).may_forward());
    }

    #[test]
    fn dns_scope_of_another_index_sees_nothing() {
        let i = Index::build(&sample_view());
        let j = Index::build(&sample_view());
        let s = j.scope(&[FRONT]);
        assert!(matches!(
            i.answer(&q("web", RecordType::A), &s),
            Answer::Forward
        ));
    }

    #[test]
    fn dns_bad_objects_are_skipped_not_fatal() {
        let mut v = sample_view();
        let mut e = endpoint(
            FRONT,
            "bad1234567890",
            "web",
            "web.9.bad1234567890",
            "10.0.1.300",
            true,
        );
        e.service_id = "svc-web".into();
        v.endpoints
            .insert(("bad1234567890".into(), FRONT.into()), e);
        let mut s = v.services["svc-web"].clone();
        s.id = "svc-badvip".into();
        s.name = "badvip".into();
        s.virtual_ips[0].addr = "nope".into();
        v.services.insert(s.id.clone(), s);
        let i = Index::build(&v);
        assert_eq!(i.skipped().len(), 2, "{:?}", i.skipped());
        assert!(i.skipped()[0].contains("badvip") || i.skipped()[1].contains("badvip"));
        assert_eq!(a(&i, &[FRONT], "web"), Ok(ips(&["10.0.1.2"])));
        assert_eq!(a(&i, &[FRONT], "badvip"), Ok(vec![]));
    }

    #[test]
    fn dns_lower_key_and_reverse_parsing() {
        let mut buf = [0u8; 256];
        let n = Name::from_str("Tasks.WEB.").unwrap();
        assert_eq!(lower_key(&n, &mut buf), Some("tasks.web"));
        assert_eq!(lower_key(&Name::root(), &mut buf), None);
        let dotted = Name::from_labels(vec![b"a.b".as_slice(), b"c".as_slice()]).unwrap();
        assert_eq!(lower_key(&dotted, &mut buf), None);
        assert_eq!(
            parse_reverse("4.3.2.1.in-addr.arpa"),
            Some(Ipv4Addr::new(1, 2, 3, 4))
        );
        assert_eq!(parse_reverse("4.3.2.1.0.in-addr.arpa"), None);
        assert_eq!(parse_reverse("x.3.2.1.in-addr.arpa"), None);
        assert_eq!(
            parse_subnet("10.0.1.7/24"),
            Some((0x0a00_0100, 0xffff_ff00))
        );
        assert_eq!(parse_subnet("10.0.1.0/33"), None);
        assert_eq!(parse_subnet("0.0.0.0/0"), Some((0, 0)));
    }

    #[test]
    fn dns_other_classes_are_not_ours() {
        let i = Index::build(&sample_view());
        let s = i.scope(&[FRONT]);
        let mut query = q("web", RecordType::TXT);
        query.set_query_class(DNSClass::CH);
        assert!(matches!(i.answer(&query, &s), Answer::Forward));
    }
}

//! IPVS, the kernel's layer-4 load balancer, programmed over generic netlink (family "IPVS"):
//! virtual services (by address, protocol and port, or by firewall mark), their real servers
//! (destinations) with weights, and dumps of both. What the IPVS data path builds on, as
//! Docker's service load balancer does (a service per VIP and mark in each task's namespace,
//! masqueraded destinations).
//!
//! An [`Ipvs`] handle talks to the IPVS of the network namespace the thread that opened it
//! was in (IPVS tables are per namespace). Calls are blocking and short (one request, its
//! answer); [`message`] is the wire encoding. The `ip_vs` module is loaded when the family is
//! missing ([`Ipvs::open`]); a kernel without it is named in the error.

pub mod ingress;
pub mod marks;
pub mod message;
pub mod sandbox;
pub mod table;

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable, NLM_F_ACK, NLM_F_DUMP,
    NLM_F_REQUEST,
};
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::GenlMessage;
use netlink_sys::{protocols::NETLINK_GENERIC, Socket, SocketAddr};

use message::{CmdAttr, DestAttr, IpvsCmd, IpvsMessage, SvcAttr, AF_INET};

/// What failed, naming the operation.
#[derive(Debug, thiserror::Error)]
pub enum IpvsError {
    #[error("the kernel has no IPVS (generic netlink family \"IPVS\" not found): the ip_vs module is not loaded and {load}; load it (`modprobe ip_vs`, package linux-modules on most distributions) or use --data-plane ebpf")]
    NoModule { load: String },
    #[error("IPVS {op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("IPVS {op}: the kernel answered {0}", .source)]
    Kernel {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("IPVS {op}: undecodable answer: {detail}")]
    Decode { op: &'static str, detail: String },
}

impl IpvsError {
    /// The errno the kernel refused a request with, if that is what happened.
    pub fn errno(&self) -> Option<i32> {
        match self {
            IpvsError::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// `IPPROTO_TCP`.
pub const TCP: u16 = 6;
/// `IPPROTO_UDP`.
pub const UDP: u16 = 17;

/// `IP_VS_SVC_F_HASHED`: set by the kernel on every service in its table.
pub const SVC_F_HASHED: u32 = 0x0002;

/// Which virtual service: packets carrying a firewall mark, or one address, protocol, port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ServiceKey {
    Fwmark(u32),
    Addr { protocol: u16, addr: SocketAddrV4 },
}

/// A virtual service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub key: ServiceKey,
    /// The scheduler: "rr" (round robin) for swarm's services.
    pub scheduler: String,
    /// `IP_VS_SVC_F_*` (0: not persistent).
    pub flags: u32,
    /// Persistence timeout, seconds.
    pub timeout: u32,
}

impl Service {
    /// A round-robin service without persistence, as Docker makes them.
    pub fn round_robin(key: ServiceKey) -> Service {
        Service {
            key,
            scheduler: "rr".into(),
            flags: 0,
            timeout: 0,
        }
    }

    /// The attributes that name the service (delete, dump its destinations).
    fn key_attrs(&self) -> Vec<SvcAttr> {
        let mut a = vec![SvcAttr::Af(AF_INET)];
        match self.key {
            ServiceKey::Fwmark(m) => a.push(SvcAttr::Fwmark(m)),
            ServiceKey::Addr { protocol, addr } => a.extend([
                SvcAttr::Protocol(protocol),
                SvcAttr::Addr(*addr.ip()),
                SvcAttr::Port(addr.port()),
            ]),
        }
        a
    }

    /// The full entry (add, change): the kernel wants scheduler, flags, timeout and netmask.
    pub fn attrs(&self) -> Vec<SvcAttr> {
        let mut a = self.key_attrs();
        a.extend([
            SvcAttr::SchedName(self.scheduler.clone()),
            SvcAttr::Flags {
                flags: self.flags,
                mask: u32::MAX,
            },
            SvcAttr::Timeout(self.timeout),
            SvcAttr::Netmask(u32::MAX),
        ]);
        a
    }

    /// A service from the kernel's attributes (IPv4 ones; others are `None`).
    pub fn from_attrs(attrs: &[SvcAttr]) -> Option<Service> {
        let (mut af, mut proto, mut addr, mut port, mut mark) = (0, 0, None, 0, 0);
        let mut s = Service::round_robin(ServiceKey::Fwmark(0));
        for a in attrs {
            match a {
                SvcAttr::Af(v) => af = *v,
                SvcAttr::Protocol(v) => proto = *v,
                SvcAttr::Addr(v) => addr = Some(*v),
                SvcAttr::Port(v) => port = *v,
                SvcAttr::Fwmark(v) => mark = *v,
                SvcAttr::SchedName(v) => s.scheduler = v.clone(),
                // HASHED is the kernel's own bookkeeping (the service is in its table),
                // set on every service it reports and never one a caller asks for.
                SvcAttr::Flags { flags, .. } => s.flags = *flags & !SVC_F_HASHED,
                SvcAttr::Timeout(v) => s.timeout = *v,
                SvcAttr::Netmask(_) | SvcAttr::Other(_) => {}
            }
        }
        if af != AF_INET {
            return None;
        }
        s.key = if mark != 0 {
            ServiceKey::Fwmark(mark)
        } else {
            ServiceKey::Addr {
                protocol: proto,
                addr: SocketAddrV4::new(addr?, port),
            }
        };
        Some(s)
    }
}

/// How packets reach a real server (`IP_VS_CONN_F_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forward {
    /// NAT: the destination address (and port) rewritten; what swarm uses.
    Masquerade,
    Local,
    Tunnel,
    DirectRoute,
    Bypass,
}

impl Forward {
    fn number(self) -> u32 {
        match self {
            Forward::Masquerade => 0,
            Forward::Local => 1,
            Forward::Tunnel => 2,
            Forward::DirectRoute => 3,
            Forward::Bypass => 4,
        }
    }

    fn from_number(n: u32) -> Forward {
        match n & 7 {
            1 => Forward::Local,
            2 => Forward::Tunnel,
            3 => Forward::DirectRoute,
            4 => Forward::Bypass,
            _ => Forward::Masquerade,
        }
    }
}

/// A real server of a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    pub addr: SocketAddrV4,
    pub forward: Forward,
    /// 0: no new connections (existing ones go on); swarm's weight of a stopping task.
    pub weight: u32,
    /// Connections now (answers only; ignored when sent).
    pub active_conns: u32,
    pub inactive_conns: u32,
}

impl Destination {
    /// A masqueraded destination of weight `weight`.
    pub fn masquerade(addr: SocketAddrV4, weight: u32) -> Destination {
        Destination {
            addr,
            forward: Forward::Masquerade,
            weight,
            active_conns: 0,
            inactive_conns: 0,
        }
    }

    fn key_attrs(&self) -> Vec<DestAttr> {
        vec![
            DestAttr::AddrFamily(AF_INET),
            DestAttr::Addr(*self.addr.ip()),
            DestAttr::Port(self.addr.port()),
        ]
    }

    /// The full entry (add, change): the kernel wants method, weight and both thresholds.
    pub fn attrs(&self) -> Vec<DestAttr> {
        let mut a = self.key_attrs();
        a.extend([
            DestAttr::FwdMethod(self.forward.number()),
            DestAttr::Weight(self.weight),
            DestAttr::UpperThreshold(0),
            DestAttr::LowerThreshold(0),
        ]);
        a
    }

    pub fn from_attrs(attrs: &[DestAttr]) -> Option<Destination> {
        let (mut addr, mut port) = (None, 0);
        let mut d = Destination::masquerade(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0), 0);
        for a in attrs {
            match a {
                DestAttr::Addr(v) => addr = Some(*v),
                DestAttr::Port(v) => port = *v,
                DestAttr::FwdMethod(v) => d.forward = Forward::from_number(*v),
                DestAttr::Weight(v) => d.weight = *v,
                DestAttr::ActiveConns(v) => d.active_conns = *v,
                DestAttr::InactiveConns(v) => d.inactive_conns = *v,
                DestAttr::AddrFamily(f) if *f != AF_INET => return None,
                _ => {}
            }
        }
        d.addr = SocketAddrV4::new(addr?, port);
        Some(d)
    }
}

/// The request for `cmd` on a service (and a destination).
pub fn request(
    cmd: IpvsCmd,
    svc: Option<Vec<SvcAttr>>,
    dest: Option<Vec<DestAttr>>,
) -> IpvsMessage {
    let mut attrs = Vec::new();
    if let Some(s) = svc {
        attrs.push(CmdAttr::Service(s));
    }
    if let Some(d) = dest {
        attrs.push(CmdAttr::Dest(d));
    }
    IpvsMessage { cmd, attrs }
}

/// A netlink socket on the IPVS family of the namespace it was opened in.
pub struct Ipvs {
    sock: Socket,
    family: u16,
    seq: u32,
}

impl Ipvs {
    /// Opens IPVS in the calling thread's network namespace, loading `ip_vs` (`modprobe`)
    /// when the kernel does not know the family yet.
    pub fn open() -> Result<Ipvs, IpvsError> {
        let mut h = Ipvs {
            sock: socket().map_err(|source| IpvsError::Io {
                op: "opening a generic netlink socket",
                source,
            })?,
            family: 0,
            seq: 0,
        };
        match h.resolve_family() {
            Ok(id) => h.family = id,
            Err(IpvsError::Kernel { source, .. })
                if source.raw_os_error() == Some(libc::ENOENT) =>
            {
                let load = load_module();
                h.family = match h.resolve_family() {
                    Ok(id) => id,
                    Err(IpvsError::Kernel { source, .. })
                        if source.raw_os_error() == Some(libc::ENOENT) =>
                    {
                        return Err(IpvsError::NoModule {
                            load: load.err().unwrap_or_else(|| {
                                "`modprobe ip_vs` succeeded without adding it".into()
                            }),
                        })
                    }
                    Err(e) => return Err(e),
                };
            }
            Err(e) => return Err(e),
        }
        Ok(h)
    }

    fn resolve_family(&mut self) -> Result<u16, IpvsError> {
        const OP: &str = "resolving the generic netlink family";
        let msg = GenlMessage::from_payload(GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: vec![GenlCtrlAttrs::FamilyName(message::FAMILY_NAME.into())],
        });
        let answers =
            self.transact::<GenlMessage<GenlCtrl>, _>(OP, msg, NLM_F_REQUEST | NLM_F_ACK)?;
        answers
            .iter()
            .flat_map(|m| m.payload.nlas.iter())
            .find_map(|a| match a {
                GenlCtrlAttrs::FamilyId(id) => Some(*id),
                _ => None,
            })
            .ok_or(IpvsError::Decode {
                op: OP,
                detail: "no family id in the controller's answer".into(),
            })
    }

    /// The family id the kernel gave IPVS.
    pub fn family_id(&self) -> u16 {
        self.family
    }

    fn ipvs(
        &mut self,
        op: &'static str,
        msg: IpvsMessage,
        dump: bool,
    ) -> Result<Vec<IpvsMessage>, IpvsError> {
        let mut m = GenlMessage::from_payload(msg);
        m.set_resolved_family_id(self.family);
        let flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { NLM_F_ACK };
        Ok(self
            .transact::<GenlMessage<IpvsMessage>, _>(op, m, flags)?
            .into_iter()
            .map(|m| m.payload)
            .collect())
    }

    /// Adds a service (EEXIST if it is there).
    pub fn new_service(&mut self, s: &Service) -> Result<(), IpvsError> {
        let m = request(IpvsCmd::NewService, Some(s.attrs()), None);
        self.ipvs("adding a service", m, false).map(drop)
    }

    /// Changes a service's scheduler, flags or timeout.
    pub fn set_service(&mut self, s: &Service) -> Result<(), IpvsError> {
        let m = request(IpvsCmd::SetService, Some(s.attrs()), None);
        self.ipvs("changing a service", m, false).map(drop)
    }

    /// Removes a service and its destinations.
    pub fn del_service(&mut self, key: ServiceKey) -> Result<(), IpvsError> {
        let m = request(
            IpvsCmd::DelService,
            Some(Service::round_robin(key).key_attrs()),
            None,
        );
        self.ipvs("removing a service", m, false).map(drop)
    }

    /// Every IPv4 service of the namespace.
    pub fn services(&mut self) -> Result<Vec<Service>, IpvsError> {
        let m = request(IpvsCmd::GetService, None, None);
        Ok(self
            .ipvs("listing services", m, true)?
            .iter()
            .flat_map(|m| m.attrs.iter())
            .filter_map(|a| match a {
                CmdAttr::Service(s) => Service::from_attrs(s),
                _ => None,
            })
            .collect())
    }

    /// Adds a destination to the service `key`. The kernel refuses (EINVAL) an address that
    /// is not unicast in this namespace's routing (a namespace with no local route at all
    /// makes every address broadcast).
    pub fn new_dest(&mut self, key: ServiceKey, d: &Destination) -> Result<(), IpvsError> {
        let m = request(
            IpvsCmd::NewDest,
            Some(Service::round_robin(key).key_attrs()),
            Some(d.attrs()),
        );
        self.ipvs("adding a destination", m, false).map(drop)
    }

    /// Changes a destination's weight (or method).
    pub fn set_dest(&mut self, key: ServiceKey, d: &Destination) -> Result<(), IpvsError> {
        let m = request(
            IpvsCmd::SetDest,
            Some(Service::round_robin(key).key_attrs()),
            Some(d.attrs()),
        );
        self.ipvs("changing a destination", m, false).map(drop)
    }

    /// Removes a destination.
    pub fn del_dest(&mut self, key: ServiceKey, addr: SocketAddrV4) -> Result<(), IpvsError> {
        let m = request(
            IpvsCmd::DelDest,
            Some(Service::round_robin(key).key_attrs()),
            Some(Destination::masquerade(addr, 0).key_attrs()),
        );
        self.ipvs("removing a destination", m, false).map(drop)
    }

    /// The destinations of the service `key`.
    pub fn dests(&mut self, key: ServiceKey) -> Result<Vec<Destination>, IpvsError> {
        let m = request(
            IpvsCmd::GetDest,
            Some(Service::round_robin(key).key_attrs()),
            None,
        );
        Ok(self
            .ipvs("listing destinations", m, true)?
            .iter()
            .flat_map(|m| m.attrs.iter())
            .filter_map(|a| match a {
                CmdAttr::Dest(d) => Destination::from_attrs(d),
                _ => None,
            })
            .collect())
    }

    /// Sends one request and reads its answers until the dump's DONE or the request's
    /// acknowledgement (requests carry NLM_F_ACK), or the kernel's error.
    fn transact<T, P>(
        &mut self,
        op: &'static str,
        payload: P,
        flags: u16,
    ) -> Result<Vec<T>, IpvsError>
    where
        T: netlink_packet_core::NetlinkDeserializable + std::fmt::Debug,
        P: Into<NetlinkPayload<T>>,
        T: NetlinkSerializable,
    {
        self.seq = self.seq.wrapping_add(1);
        let mut hdr = NetlinkHeader::default();
        hdr.flags = flags;
        hdr.sequence_number = self.seq;
        let mut msg = NetlinkMessage::new(hdr, payload.into());
        msg.finalize();
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut buf);
        let io = |source| IpvsError::Io { op, source };
        self.sock.send(&buf, 0).map_err(io)?;
        let mut out = Vec::new();
        let mut rx = vec![0u8; 64 * 1024];
        loop {
            let n = self.sock.recv(&mut &mut rx[..], 0).map_err(io)?;
            let mut off = 0;
            while off < n {
                let m = NetlinkMessage::<T>::deserialize(&rx[off..n]).map_err(|e| {
                    IpvsError::Decode {
                        op,
                        detail: e.to_string(),
                    }
                })?;
                let len = m.header.length as usize;
                if m.header.sequence_number == self.seq {
                    match m.payload {
                        NetlinkPayload::InnerMessage(inner) => out.push(inner),
                        NetlinkPayload::Done(_) => return Ok(out),
                        NetlinkPayload::Error(e) if e.code.is_none() => return Ok(out),
                        NetlinkPayload::Error(e) => {
                            return Err(IpvsError::Kernel {
                                op,
                                source: e.to_io(),
                            })
                        }
                        _ => {}
                    }
                }
                if len == 0 {
                    break;
                }
                off += netlink_align(len);
            }
        }
    }
}

fn netlink_align(len: usize) -> usize {
    (len + 3) & !3
}

fn socket() -> io::Result<Socket> {
    let mut s = Socket::new(NETLINK_GENERIC)?;
    s.bind_auto()?;
    s.connect(&SocketAddr::new(0, 0))?;
    Ok(s)
}

/// `modprobe ip_vs`, as Docker does; the error says what modprobe said.
fn load_module() -> Result<(), String> {
    match std::process::Command::new("modprobe").arg("ip_vs").output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "`modprobe ip_vs` failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("`modprobe` could not run: {e}")),
    }
}

/// Whether the kernel offers IPVS (the module loaded when needed), for the probe: `Ok` or
/// the error naming what is missing.
pub fn probe() -> Result<(), IpvsError> {
    Ipvs::open().map(drop)
}

#[cfg(test)]
mod tests;

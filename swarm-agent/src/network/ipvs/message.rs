//! The IPVS generic netlink family on the wire: its commands and nested attributes
//! (`include/uapi/linux/ip_vs.h`), as [`netlink_packet_generic`] payloads.
//!
//! A request is a genl header (command, version 1) followed by at most two nested
//! attributes: `IPVS_CMD_ATTR_SERVICE` (which virtual service) and `IPVS_CMD_ATTR_DEST` (which
//! real server). Numbers are in host byte order except ports, which are big endian; addresses
//! are raw bytes (4 for IPv4 when sent, the 16-byte `nf_inet_addr` union when received).

use std::net::Ipv4Addr;

use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, Nla, NlaBuffer, NlasIterator, ParseableParametrized,
    NLA_TYPE_MASK,
};
use netlink_packet_generic::{GenlFamily, GenlHeader};

/// The family's name, resolved to its id through the genl controller.
pub const FAMILY_NAME: &str = "IPVS";
/// `IPVS_GENL_VERSION`.
pub const VERSION: u8 = 1;
/// `AF_INET`.
pub const AF_INET: u16 = 2;

/// `IPVS_CMD_*`: the commands this module sends (and the NEW_* the kernel answers dumps with).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpvsCmd {
    NewService,
    SetService,
    DelService,
    GetService,
    NewDest,
    SetDest,
    DelDest,
    GetDest,
    /// Any other command number (answers only).
    Other(u8),
}

impl IpvsCmd {
    pub fn number(self) -> u8 {
        match self {
            IpvsCmd::NewService => 1,
            IpvsCmd::SetService => 2,
            IpvsCmd::DelService => 3,
            IpvsCmd::GetService => 4,
            IpvsCmd::NewDest => 5,
            IpvsCmd::SetDest => 6,
            IpvsCmd::DelDest => 7,
            IpvsCmd::GetDest => 8,
            IpvsCmd::Other(n) => n,
        }
    }

    fn from_number(n: u8) -> IpvsCmd {
        match n {
            1 => IpvsCmd::NewService,
            2 => IpvsCmd::SetService,
            3 => IpvsCmd::DelService,
            4 => IpvsCmd::GetService,
            5 => IpvsCmd::NewDest,
            6 => IpvsCmd::SetDest,
            7 => IpvsCmd::DelDest,
            8 => IpvsCmd::GetDest,
            n => IpvsCmd::Other(n),
        }
    }
}

/// `IPVS_CMD_ATTR_*`: the top-level attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CmdAttr {
    /// `IPVS_CMD_ATTR_SERVICE` (1), nested.
    Service(Vec<SvcAttr>),
    /// `IPVS_CMD_ATTR_DEST` (2), nested.
    Dest(Vec<DestAttr>),
    Other(DefaultNla),
}

/// `IPVS_SVC_ATTR_*`: what describes a virtual service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SvcAttr {
    /// 1: u16.
    Af(u16),
    /// 2: u16 (`IPPROTO_TCP` 6, `IPPROTO_UDP` 17).
    Protocol(u16),
    /// 3: the virtual address.
    Addr(Ipv4Addr),
    /// 4: big-endian u16.
    Port(u16),
    /// 5: u32, the firewall mark of a mark-based service.
    Fwmark(u32),
    /// 6: NUL-terminated scheduler name ("rr").
    SchedName(String),
    /// 7: `struct ip_vs_flags { u32 flags; u32 mask; }`.
    Flags { flags: u32, mask: u32 },
    /// 8: u32, persistence timeout in seconds.
    Timeout(u32),
    /// 9: u32, persistence netmask.
    Netmask(u32),
    /// Stats and anything else, kept as they came.
    Other(DefaultNla),
}

/// `IPVS_DEST_ATTR_*`: what describes a real server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DestAttr {
    /// 1: the real server's address.
    Addr(Ipv4Addr),
    /// 2: big-endian u16.
    Port(u16),
    /// 3: u32, `IP_VS_CONN_F_*` forwarding method.
    FwdMethod(u32),
    /// 4: u32 (the kernel keeps an int).
    Weight(u32),
    /// 5: u32, upper connection threshold (0: none).
    UpperThreshold(u32),
    /// 6: u32, lower connection threshold.
    LowerThreshold(u32),
    /// 7: u32 (answers only).
    ActiveConns(u32),
    /// 8: u32 (answers only).
    InactiveConns(u32),
    /// 11: u16, the real server's address family (Linux 3.18+; ignored by older kernels).
    AddrFamily(u16),
    Other(DefaultNla),
}

fn u16_ne(v: &[u8]) -> Result<u16, DecodeError> {
    Ok(u16::from_ne_bytes(
        v.get(..2)
            .ok_or("IPVS: short u16")?
            .try_into()
            .unwrap_or_default(),
    ))
}

fn u32_ne(v: &[u8]) -> Result<u32, DecodeError> {
    Ok(u32::from_ne_bytes(
        v.get(..4)
            .ok_or("IPVS: short u32")?
            .try_into()
            .unwrap_or_default(),
    ))
}

fn u16_be(v: &[u8]) -> Result<u16, DecodeError> {
    Ok(u16::from_be_bytes(
        v.get(..2)
            .ok_or("IPVS: short port")?
            .try_into()
            .unwrap_or_default(),
    ))
}

/// An IPv4 address: 4 bytes, or the first 4 of the kernel's 16-byte union.
fn ipv4(v: &[u8]) -> Result<Ipv4Addr, DecodeError> {
    let b: [u8; 4] = v
        .get(..4)
        .ok_or("IPVS: short address")?
        .try_into()
        .unwrap_or_default();
    Ok(Ipv4Addr::from(b))
}

fn nlas(buf: &[u8]) -> impl Iterator<Item = Result<NlaBuffer<&[u8]>, DecodeError>> {
    NlasIterator::new(buf)
}

fn other(nla: &NlaBuffer<&[u8]>) -> DefaultNla {
    DefaultNla::new(nla.kind() & NLA_TYPE_MASK, nla.value().to_vec())
}

impl Nla for SvcAttr {
    fn value_len(&self) -> usize {
        match self {
            SvcAttr::Af(_) | SvcAttr::Protocol(_) | SvcAttr::Port(_) => 2,
            SvcAttr::Addr(_) | SvcAttr::Fwmark(_) | SvcAttr::Timeout(_) | SvcAttr::Netmask(_) => 4,
            SvcAttr::SchedName(s) => s.len() + 1,
            SvcAttr::Flags { .. } => 8,
            SvcAttr::Other(n) => n.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            SvcAttr::Af(_) => 1,
            SvcAttr::Protocol(_) => 2,
            SvcAttr::Addr(_) => 3,
            SvcAttr::Port(_) => 4,
            SvcAttr::Fwmark(_) => 5,
            SvcAttr::SchedName(_) => 6,
            SvcAttr::Flags { .. } => 7,
            SvcAttr::Timeout(_) => 8,
            SvcAttr::Netmask(_) => 9,
            SvcAttr::Other(n) => n.kind(),
        }
    }

    fn emit_value(&self, buf: &mut [u8]) {
        match self {
            SvcAttr::Af(v) | SvcAttr::Protocol(v) => buf[..2].copy_from_slice(&v.to_ne_bytes()),
            SvcAttr::Port(p) => buf[..2].copy_from_slice(&p.to_be_bytes()),
            SvcAttr::Addr(a) => buf[..4].copy_from_slice(&a.octets()),
            SvcAttr::Fwmark(v) | SvcAttr::Timeout(v) | SvcAttr::Netmask(v) => {
                buf[..4].copy_from_slice(&v.to_ne_bytes())
            }
            SvcAttr::SchedName(s) => {
                buf[..s.len()].copy_from_slice(s.as_bytes());
                buf[s.len()] = 0;
            }
            SvcAttr::Flags { flags, mask } => {
                buf[..4].copy_from_slice(&flags.to_ne_bytes());
                buf[4..8].copy_from_slice(&mask.to_ne_bytes());
            }
            SvcAttr::Other(n) => n.emit_value(buf),
        }
    }
}

impl SvcAttr {
    fn parse(nla: &NlaBuffer<&[u8]>) -> Result<SvcAttr, DecodeError> {
        let v = nla.value();
        Ok(match nla.kind() & NLA_TYPE_MASK {
            1 => SvcAttr::Af(u16_ne(v)?),
            2 => SvcAttr::Protocol(u16_ne(v)?),
            3 => SvcAttr::Addr(ipv4(v)?),
            4 => SvcAttr::Port(u16_be(v)?),
            5 => SvcAttr::Fwmark(u32_ne(v)?),
            6 => SvcAttr::SchedName(
                String::from_utf8_lossy(v.split(|b| *b == 0).next().unwrap_or_default())
                    .into_owned(),
            ),
            7 => SvcAttr::Flags {
                flags: u32_ne(v)?,
                mask: u32_ne(v.get(4..).unwrap_or_default())?,
            },
            8 => SvcAttr::Timeout(u32_ne(v)?),
            9 => SvcAttr::Netmask(u32_ne(v)?),
            _ => SvcAttr::Other(other(nla)),
        })
    }
}

impl Nla for DestAttr {
    fn value_len(&self) -> usize {
        match self {
            DestAttr::Port(_) | DestAttr::AddrFamily(_) => 2,
            DestAttr::Other(n) => n.value_len(),
            _ => 4,
        }
    }

    fn kind(&self) -> u16 {
        match self {
            DestAttr::Addr(_) => 1,
            DestAttr::Port(_) => 2,
            DestAttr::FwdMethod(_) => 3,
            DestAttr::Weight(_) => 4,
            DestAttr::UpperThreshold(_) => 5,
            DestAttr::LowerThreshold(_) => 6,
            DestAttr::ActiveConns(_) => 7,
            DestAttr::InactiveConns(_) => 8,
            DestAttr::AddrFamily(_) => 11,
            DestAttr::Other(n) => n.kind(),
        }
    }

    fn emit_value(&self, buf: &mut [u8]) {
        match self {
            DestAttr::Addr(a) => buf[..4].copy_from_slice(&a.octets()),
            DestAttr::Port(p) => buf[..2].copy_from_slice(&p.to_be_bytes()),
            DestAttr::AddrFamily(f) => buf[..2].copy_from_slice(&f.to_ne_bytes()),
            DestAttr::FwdMethod(v)
            | DestAttr::Weight(v)
            | DestAttr::UpperThreshold(v)
            | DestAttr::LowerThreshold(v)
            | DestAttr::ActiveConns(v)
            | DestAttr::InactiveConns(v) => buf[..4].copy_from_slice(&v.to_ne_bytes()),
            DestAttr::Other(n) => n.emit_value(buf),
        }
    }
}

impl DestAttr {
    fn parse(nla: &NlaBuffer<&[u8]>) -> Result<DestAttr, DecodeError> {
        let v = nla.value();
        Ok(match nla.kind() & NLA_TYPE_MASK {
            1 => DestAttr::Addr(ipv4(v)?),
            2 => DestAttr::Port(u16_be(v)?),
            3 => DestAttr::FwdMethod(u32_ne(v)?),
            4 => DestAttr::Weight(u32_ne(v)?),
            5 => DestAttr::UpperThreshold(u32_ne(v)?),
            6 => DestAttr::LowerThreshold(u32_ne(v)?),
            7 => DestAttr::ActiveConns(u32_ne(v)?),
            8 => DestAttr::InactiveConns(u32_ne(v)?),
            11 => DestAttr::AddrFamily(u16_ne(v)?),
            _ => DestAttr::Other(other(nla)),
        })
    }
}

impl Nla for CmdAttr {
    fn value_len(&self) -> usize {
        match self {
            CmdAttr::Service(a) => a.as_slice().buffer_len(),
            CmdAttr::Dest(a) => a.as_slice().buffer_len(),
            CmdAttr::Other(n) => n.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            CmdAttr::Service(_) => 1,
            CmdAttr::Dest(_) => 2,
            CmdAttr::Other(n) => n.kind(),
        }
    }

    fn is_nested(&self) -> bool {
        matches!(self, CmdAttr::Service(_) | CmdAttr::Dest(_))
    }

    fn emit_value(&self, buf: &mut [u8]) {
        match self {
            CmdAttr::Service(a) => a.as_slice().emit(buf),
            CmdAttr::Dest(a) => a.as_slice().emit(buf),
            CmdAttr::Other(n) => n.emit_value(buf),
        }
    }
}

impl CmdAttr {
    fn parse(nla: &NlaBuffer<&[u8]>) -> Result<CmdAttr, DecodeError> {
        Ok(match nla.kind() & NLA_TYPE_MASK {
            1 => CmdAttr::Service(
                nlas(nla.value())
                    .map(|n| SvcAttr::parse(&n?))
                    .collect::<Result<_, _>>()?,
            ),
            2 => CmdAttr::Dest(
                nlas(nla.value())
                    .map(|n| DestAttr::parse(&n?))
                    .collect::<Result<_, _>>()?,
            ),
            _ => CmdAttr::Other(other(nla)),
        })
    }
}

/// One IPVS genl message: a command and its top-level attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpvsMessage {
    pub cmd: IpvsCmd,
    pub attrs: Vec<CmdAttr>,
}

impl GenlFamily for IpvsMessage {
    fn family_name() -> &'static str {
        FAMILY_NAME
    }

    fn command(&self) -> u8 {
        self.cmd.number()
    }

    fn version(&self) -> u8 {
        VERSION
    }
}

impl Emitable for IpvsMessage {
    fn buffer_len(&self) -> usize {
        self.attrs.as_slice().buffer_len()
    }

    fn emit(&self, buf: &mut [u8]) {
        self.attrs.as_slice().emit(buf)
    }
}

impl ParseableParametrized<[u8], GenlHeader> for IpvsMessage {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        Ok(IpvsMessage {
            cmd: IpvsCmd::from_number(header.cmd),
            attrs: nlas(buf)
                .map(|n| CmdAttr::parse(&n?))
                .collect::<Result<_, _>>()?,
        })
    }
}

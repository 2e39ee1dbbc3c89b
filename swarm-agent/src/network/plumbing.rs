//! Interfaces of tasks, and the node's VXLAN device, made over rtnetlink (no `ip`).
//!
//! A task attachment is a veth pair: the host side (`sw<task id prefix><n>`) stays in the
//! node's namespace and carries `from_container`; the other side moves into the task's
//! namespace as `eth<n>` with the task's address, the network's MTU and (on the first
//! network that is not internal) the default route via the network's gateway. Its MAC is
//! Docker's: `02:42` followed by the IPv4 address.
//!
//! A netlink socket acts in the namespace of the thread that opened it, so work inside a
//! task's namespace runs on a short-lived thread that entered it (with a runtime of its own).

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, LinkVxlan, RouteMessageBuilder};

/// Name of the node's VXLAN device (metadata mode, one for every network).
pub const VXLAN_DEVICE: &str = "swarm_vxlan";
/// VXLAN adds 50 bytes to every frame.
pub const VXLAN_OVERHEAD: u32 = 50;

#[derive(Debug, thiserror::Error)]
pub enum PlumbingError {
    #[error("{what}: {source}")]
    Netlink {
        what: String,
        source: rtnetlink::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> PlumbingError {
    let what = what.into();
    move |source| PlumbingError::Netlink { what, source }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PlumbingError {
    let what = what.into();
    move |source| PlumbingError::Io { what, source }
}

/// One attachment of a task to a network, as the task will see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachmentSpec {
    /// Host-side veth name (≤ 15 bytes).
    pub host_name: String,
    /// Name inside the task (`eth0`, `eth1` …).
    pub task_name: String,
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
    pub mtu: u32,
    /// Set on the attachment that carries the default route.
    pub gateway: Option<Ipv4Addr>,
}

/// What was made: the host side of the pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostSide {
    pub ifindex: u32,
    pub mac: [u8; 6],
}

/// The host-side veth name of attachment `n` of a task.
pub fn host_name(task_id: &str, n: usize) -> String {
    let prefix: String = task_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(10)
        .collect();
    format!("sw{prefix}{n}")
}

/// Docker's MAC for an address: 02:42 and the four bytes of the address.
pub fn task_mac(addr: Ipv4Addr) -> [u8; 6] {
    let o = addr.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

/// An rtnetlink handle in the calling thread's namespace; its connection runs on the
/// current runtime.
pub fn handle() -> Result<Handle, PlumbingError> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(io("opening an rtnetlink socket"))?;
    tokio::spawn(conn);
    Ok(handle)
}

/// The link named `name`, if there is one.
pub async fn link_by_name(h: &Handle, name: &str) -> Result<Option<LinkMessage>, PlumbingError> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(l) => Ok(l),
        // ENODEV: no such device.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(nl(format!("looking up link {name}"))(e)),
    }
}

fn mac_of(l: &LinkMessage) -> [u8; 6] {
    l.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(b) if b.len() == 6 => {
                let mut m = [0u8; 6];
                m.copy_from_slice(b);
                Some(m)
            }
            _ => None,
        })
        .unwrap_or_default()
}

fn mtu_of(l: &LinkMessage) -> Option<u32> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(m) => Some(*m),
        _ => None,
    })
}

/// Makes (or finds, after an agent restart) the veth pair of one attachment. The task side
/// is configured before this returns; the host side is up.
pub async fn attach(
    h: &Handle,
    netns: &Path,
    spec: &AttachmentSpec,
) -> Result<HostSide, PlumbingError> {
    if let Some(l) = link_by_name(h, &spec.host_name).await? {
        return Ok(HostSide {
            ifindex: l.header.index,
            mac: mac_of(&l),
        });
    }
    let peer = format!("{}p", spec.host_name.chars().take(14).collect::<String>());
    h.link()
        .add(LinkVeth::new(&spec.host_name, &peer).mtu(spec.mtu).build())
        .execute()
        .await
        .map_err(nl(format!("creating veth {}", spec.host_name)))?;
    let result = configure(h, netns, spec, &peer).await;
    if result.is_err() {
        if let Ok(Some(l)) = link_by_name(h, &spec.host_name).await {
            let _ = h.link().del(l.header.index).execute().await;
        }
    }
    result
}

async fn configure(
    h: &Handle,
    netns: &Path,
    spec: &AttachmentSpec,
    peer: &str,
) -> Result<HostSide, PlumbingError> {
    let host = link_by_name(h, &spec.host_name)
        .await?
        .ok_or_else(|| PlumbingError::Other(format!("veth {} vanished", spec.host_name)))?;
    let peer_link = link_by_name(h, peer)
        .await?
        .ok_or_else(|| PlumbingError::Other(format!("veth peer {peer} vanished")))?;
    let ns = File::open(netns).map_err(io(format!(
        "opening the task's network namespace {}",
        netns.display()
    )))?;
    h.link()
        .set(
            LinkUnspec::new_with_index(peer_link.header.index)
                .setns_by_fd(ns.as_raw_fd())
                .build(),
        )
        .execute()
        .await
        .map_err(nl(format!("moving {peer} into {}", netns.display())))?;
    let inside = spec.clone();
    let peer = peer.to_string();
    in_netns(netns, move |h| async move {
        configure_task_side(&h, &inside, &peer).await
    })
    .await?;
    h.link()
        .set(LinkUnspec::new_with_index(host.header.index).up().build())
        .execute()
        .await
        .map_err(nl(format!("bringing {} up", spec.host_name)))?;
    Ok(HostSide {
        ifindex: host.header.index,
        mac: mac_of(&host),
    })
}

async fn configure_task_side(
    h: &Handle,
    spec: &AttachmentSpec,
    peer: &str,
) -> Result<(), PlumbingError> {
    let l = link_by_name(h, peer)
        .await?
        .ok_or_else(|| PlumbingError::Other(format!("{peer} did not arrive in the task")))?;
    let idx = l.header.index;
    h.link()
        .set(
            LinkUnspec::new_with_index(idx)
                .name(spec.task_name.clone())
                .address(task_mac(spec.addr).to_vec())
                .mtu(spec.mtu)
                .build(),
        )
        .execute()
        .await
        .map_err(nl(format!("naming {} in the task", spec.task_name)))?;
    // IPv6 is not carried by the overlay: keep the task from sending it at all.
    let _ = std::fs::write(
        format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", spec.task_name),
        "1",
    );
    h.address()
        .add(idx, IpAddr::V4(spec.addr), spec.prefix_len)
        .execute()
        .await
        .map_err(nl(format!(
            "adding {}/{} to {}",
            spec.addr, spec.prefix_len, spec.task_name
        )))?;
    h.link()
        .set(LinkUnspec::new_with_index(idx).up().build())
        .execute()
        .await
        .map_err(nl(format!("bringing {} up", spec.task_name)))?;
    if let Some(gw) = spec.gateway {
        h.route()
            .add(
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
                    .gateway(gw)
                    .output_interface(idx)
                    .build(),
            )
            .execute()
            .await
            .map_err(nl(format!("adding the default route via {gw}")))?;
    }
    Ok(())
}

/// Gives the link `ifindex` the address `addr/prefix_len` (there already is fine).
pub async fn ensure_addr(
    h: &Handle,
    ifindex: u32,
    addr: Ipv4Addr,
    prefix_len: u8,
) -> Result<(), PlumbingError> {
    match h
        .address()
        .add(ifindex, IpAddr::V4(addr), prefix_len)
        .execute()
        .await
    {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
        Err(e) => Err(nl(format!("adding {addr}/{prefix_len} to link {ifindex}"))(
            e,
        )),
    }
}

/// Deletes the host side of an attachment (its peer goes with it). Missing is fine.
pub async fn detach(h: &Handle, host_name: &str) -> Result<(), PlumbingError> {
    if let Some(l) = link_by_name(h, host_name).await? {
        match h.link().del(l.header.index).execute().await {
            Ok(()) => {}
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => {}
            Err(e) => return Err(nl(format!("deleting {host_name}"))(e)),
        }
    }
    Ok(())
}

/// Makes (or finds) the node's VXLAN device: metadata mode (the programs set VNI and remote
/// per packet), UDP `port`, no learning, MTU = `underlay_mtu` − 50. Returns its ifindex.
pub async fn ensure_vxlan(h: &Handle, port: u16, underlay_mtu: u32) -> Result<u32, PlumbingError> {
    let mtu = underlay_mtu.saturating_sub(VXLAN_OVERHEAD).max(576);
    if let Some(l) = link_by_name(h, VXLAN_DEVICE).await? {
        let port_ok = vxlan_port(&l) == Some(port);
        if port_ok {
            if mtu_of(&l) != Some(mtu) {
                h.link()
                    .set(LinkUnspec::new_with_index(l.header.index).mtu(mtu).build())
                    .execute()
                    .await
                    .map_err(nl(format!("setting the MTU of {VXLAN_DEVICE}")))?;
            }
            return Ok(l.header.index);
        }
        // Another data-path port: make the device again.
        h.link()
            .del(l.header.index)
            .execute()
            .await
            .map_err(nl(format!("deleting {VXLAN_DEVICE} (wrong port)")))?;
    }
    h.link()
        .add(
            LinkMessageBuilder::<LinkVxlan>::new(VXLAN_DEVICE)
                .collect_metadata(true)
                .port(port)
                .learning(false)
                .mtu(mtu)
                .up()
                .build(),
        )
        .execute()
        .await
        .map_err(nl(format!(
            "creating {VXLAN_DEVICE} (vxlan external dstport {port})"
        )))?;
    link_by_name(h, VXLAN_DEVICE)
        .await?
        .map(|l| l.header.index)
        .ok_or_else(|| PlumbingError::Other(format!("{VXLAN_DEVICE} vanished")))
}

fn vxlan_port(l: &LinkMessage) -> Option<u16> {
    use rtnetlink::packet_route::link::{InfoData, InfoVxlan, LinkInfo};
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Data(InfoData::Vxlan(v)) => v.iter().find_map(|x| match x {
                InfoVxlan::Port(p) => Some(*p),
                _ => None,
            }),
            _ => None,
        }),
        _ => None,
    })
}

/// Every IPv4 address of the calling thread's namespace but the loopback ones.
pub async fn local_ipv4_addrs(h: &Handle) -> Result<Vec<Ipv4Addr>, PlumbingError> {
    use rtnetlink::packet_route::address::AddressAttribute;
    let mut out = Vec::new();
    let mut addrs = h.address().get().execute();
    while let Some(a) = addrs.try_next().await.map_err(nl("listing addresses"))? {
        for x in &a.attributes {
            if let AddressAttribute::Local(IpAddr::V4(v))
            | AddressAttribute::Address(IpAddr::V4(v)) = x
            {
                if !v.is_loopback() && !out.contains(v) {
                    out.push(*v);
                }
            }
        }
    }
    Ok(out)
}

/// Lets the loopback device of the calling thread's namespace take packets the data plane
/// hands it (replies of published ports to the node's own processes, tasks reaching the
/// node's addresses): such packets carry no route, so the kernel checks their addresses as
/// if they came from another host, and rejects a source that is one of the node's addresses
/// (`accept_local`) or in 127.0.0.0/8 (`route_localnet`). Only packets arriving on `lo`
/// without a route are concerned: the node's own loopback traffic always carries one.
pub fn accept_reinjected_on_loopback() -> Result<(), PlumbingError> {
    for key in ["accept_local", "route_localnet"] {
        let path = format!("/proc/sys/net/ipv4/conf/lo/{key}");
        std::fs::write(&path, "1").map_err(|e| PlumbingError::Io {
            what: format!("setting {path} to 1"),
            source: e,
        })?;
    }
    Ok(())
}

/// The index of the loopback device of the calling thread's namespace.
pub async fn loopback_index(h: &Handle) -> Result<u32, PlumbingError> {
    link_by_name(h, "lo")
        .await?
        .map(|l| l.header.index)
        .ok_or_else(|| PlumbingError::Other("this namespace has no loopback device".into()))
}

/// The interface that holds `addr` in the calling thread's namespace: (name, ifindex, MTU).
pub async fn interface_with(
    h: &Handle,
    addr: Ipv4Addr,
) -> Result<(String, u32, u32), PlumbingError> {
    use rtnetlink::packet_route::address::AddressAttribute;
    let mut addrs = h.address().get().execute();
    let mut index = None;
    while let Some(a) = addrs.try_next().await.map_err(nl("listing addresses"))? {
        let has = a.attributes.iter().any(|x| {
            matches!(x, AddressAttribute::Local(IpAddr::V4(v)) | AddressAttribute::Address(IpAddr::V4(v)) if *v == addr)
        });
        if has {
            index = Some(a.header.index);
            break;
        }
    }
    let index = index.ok_or_else(|| {
        PlumbingError::Other(format!(
            "no interface of this node has the data-path address {addr}: give the node's own address with --advertise-addr"
        ))
    })?;
    let mut links = h.link().get().match_index(index).execute();
    let l = links
        .try_next()
        .await
        .map_err(nl(format!("looking up link {index}")))?
        .ok_or_else(|| PlumbingError::Other(format!("link {index} vanished")))?;
    let name = l
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        })
        .unwrap_or_default();
    Ok((name, index, mtu_of(&l).unwrap_or(1500)))
}

/// The cookie of the network namespace at `netns` (what eBPF programs see as
/// `bpf_get_netns_cookie`).
pub async fn netns_cookie(netns: &Path) -> Result<u64, PlumbingError> {
    in_netns(netns, |_h| async move { current_netns_cookie() }).await
}

/// The cookie of the calling thread's network namespace.
pub fn current_netns_cookie() -> Result<u64, PlumbingError> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    // SAFETY: a plain socket whose fd we close; getsockopt into a u64 with its size.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(PlumbingError::Io {
                what: "opening a socket to read the namespace cookie".into(),
                source: std::io::Error::last_os_error(),
            });
        }
        let mut cookie: u64 = 0;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        let rc = libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            &mut cookie as *mut u64 as *mut libc::c_void,
            &mut len,
        );
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if rc != 0 {
            return Err(PlumbingError::Io {
                what: "reading SO_NETNS_COOKIE".into(),
                source: err,
            });
        }
        Ok(cookie)
    }
}

/// Runs `f` with an rtnetlink handle inside the network namespace at `netns`, on a thread of
/// its own (with a current-thread runtime), without blocking the caller's runtime.
pub async fn in_netns<F, Fut, T>(netns: &Path, f: F) -> Result<T, PlumbingError>
where
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, PlumbingError>>,
    T: Send + 'static,
{
    let path: PathBuf = netns.to_path_buf();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("netns".into())
        .spawn(move || {
            let r = (|| {
                let ns = File::open(&path).map_err(io(format!(
                    "opening the network namespace {}",
                    path.display()
                )))?;
                // SAFETY: setns on this thread only, with a descriptor we own.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(PlumbingError::Io {
                        what: format!("entering the network namespace {}", path.display()),
                        source: std::io::Error::last_os_error(),
                    });
                }
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(io("starting a runtime in the task's namespace"))?;
                rt.block_on(async move {
                    let h = handle()?;
                    f(h).await
                })
            })();
            let _ = tx.send(r);
        })
        .map_err(io("starting a thread for the task's namespace"))?;
    rx.await
        .map_err(|_| PlumbingError::Other("the namespace thread panicked".into()))?
}

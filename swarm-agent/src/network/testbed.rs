//! Namespace testbeds for the data plane, without a cluster: what the network tests and the
//! data-plane benchmarks (`cargo xtask bench overlay|lb|ingress`) build on.
//!
//! - [`Topology`]: two "node" namespaces (`n1`, `n2`, underlay addresses 10.99.x.1 and .2)
//!   joined by a bridge in a third (`ul`, .254), more hosts on that bridge when asked for
//!   ([`Topology::add_host`]: a client outside the nodes, a peer's node), a directory for task
//!   namespaces, and the bpffs directories handed out by [`Topology::bpf_dir`]; all removed on
//!   drop.
//! - [`Cgroup`]: a cgroup v2 directory (the socket hooks attach there; processes of a child
//!   directory meet them), removed on drop.
//! - [`in_ns`]: work on a thread inside a namespace, with a runtime of its own there;
//!   [`spawn_in`]: a process inside a namespace (and a cgroup), the way a task's process runs.
//! - Hand-made network state: [`network_info`], [`endpoint_info`], [`vip_service`],
//!   [`complete`], and [`task`] for the tasks to attach; for the routing mesh,
//!   [`ingress_network`], [`node_ingress_endpoint`] and [`published_service`].
//!
//! - [`tc_attach`]: how the testbed's data planes attach tc programs (`SWARM_TEST_TC_ATTACH`).
//!
//! Needs root. Every constructor that fails half-way leaves nothing behind.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use proto::{
    network_state_change::Change, network_state_message, EndpointInfo, NetworkAttachment,
    NetworkInfo, NetworkStateChange, NetworkStateMessage, ServiceInfo, Task,
};

use super::dataplane;

#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    #[error("`{cmd}` failed: {detail}")]
    Command { cmd: String, detail: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Netns(#[from] crate::netns::NetnsError),
    #[error("{0}")]
    Other(String),
}

/// The variable that forces how the testbed's data planes attach their tc programs.
pub const TC_ATTACH_ENV: &str = "SWARM_TEST_TC_ATTACH";

/// How the testbed's data planes attach tc programs: `SWARM_TEST_TC_ATTACH` = `tcx` or
/// `legacy` forces it (CI runs the network tests once more with `legacy` on a kernel with
/// TCX); unset or `auto`, what the agent's probe picks on this kernel.
pub fn tc_attach() -> Result<super::probe::TcAttach, TestbedError> {
    use super::probe::{self, DataPlaneRequest, TcAttachRequest};
    let req = match std::env::var(TC_ATTACH_ENV).as_deref() {
        Ok("tcx") => TcAttachRequest::Tcx,
        Ok("legacy") => TcAttachRequest::Legacy,
        Ok("auto") | Ok("") | Err(_) => TcAttachRequest::Auto,
        Ok(other) => {
            return Err(TestbedError::Other(format!(
                "{TC_ATTACH_ENV}={other:?}: give tcx, legacy or auto"
            )))
        }
    };
    let choice = probe::choose(DataPlaneRequest::Ebpf, req, &probe::KernelProbe::run())
        .map_err(|e| TestbedError::Other(e.to_string()))?;
    choice
        .attach
        .ok_or_else(|| TestbedError::Other("the eBPF data plane has no tc attach".into()))
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TestbedError {
    let what = what.into();
    move |source| TestbedError::Io { what, source }
}

/// Runs a command to completion; its stdout, or an error with its stderr.
pub fn run(args: &[&str]) -> Result<String, TestbedError> {
    let Some((prog, rest)) = args.split_first() else {
        return Err(TestbedError::Other("empty command".into()));
    };
    let cmd = args.join(" ");
    let out = Command::new(prog)
        .args(rest)
        .output()
        .map_err(|e| TestbedError::Command {
            cmd: cmd.clone(),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(TestbedError::Command {
            cmd,
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Two node namespaces on a bridge (10.99.x.1 and .2, the bridge namespace is .254), removed
/// with everything pinned, every added host and every task namespace on drop.
pub struct Topology {
    prefix: String,
    subnet: u8,
    dir: PathBuf,
    pins: Vec<PathBuf>,
    /// Hosts added by [`Topology::add_host`]: (name, host byte).
    hosts: Vec<(String, u8)>,
}

impl Topology {
    /// Namespaces `<tag><6 hex digits>-{ul,n1,n2}`; `tag` keeps tests and benchmarks apart
    /// in `ip netns` listings (at most 5 characters, so interface names derived from the
    /// prefix stay short).
    pub fn new(tag: &str) -> Result<Topology, TestbedError> {
        let r: u32 = rand::random();
        let tag: String = tag.chars().take(5).collect();
        let prefix = format!("{tag}{:06x}", r & 0xff_ffff);
        let subnet = 100 + (r >> 24) as u8 % 100;
        let dir = PathBuf::from("/run").join(&prefix);
        // Built first, so that whatever fails below is undone by Drop.
        let t = Topology {
            prefix,
            subnet,
            dir,
            pins: Vec::new(),
            hosts: Vec::new(),
        };
        std::fs::create_dir_all(t.netns_dir())
            .map_err(io_err(format!("creating {}", t.netns_dir().display())))?;
        let ul = t.ns("ul");
        run(&["ip", "netns", "add", &ul])?;
        run(&["ip", "-n", &ul, "link", "set", "lo", "up"])?;
        run(&["ip", "-n", &ul, "link", "add", "br0", "type", "bridge"])?;
        run(&[
            "ip",
            "-n",
            &ul,
            "addr",
            "add",
            &t.underlay_addr(254, 24),
            "dev",
            "br0",
        ])?;
        run(&["ip", "-n", &ul, "link", "set", "br0", "up"])?;
        for i in [1u8, 2] {
            let ns = t.ns(&format!("n{i}"));
            run(&["ip", "netns", "add", &ns])?;
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
            let v = format!("v{i}");
            run(&[
                "ip", "-n", &ul, "link", "add", &v, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ])?;
            run(&["ip", "-n", &ul, "link", "set", &v, "master", "br0", "up"])?;
            run(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &t.underlay_addr(i, 24),
                "dev",
                "eth0",
            ])?;
            run(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
        }
        Ok(t)
    }

    /// Another host on the underlay bridge: the namespace `<prefix>-<name>` (loopback up) with
    /// `eth0` at [`Topology::underlay_ip`]`(host)`/24, joined to the bridge by the veth
    /// `v<host>` in `ul`; removed with the topology. Its path.
    pub fn add_host(&mut self, name: &str, host: u8) -> Result<PathBuf, TestbedError> {
        if matches!(name, "ul" | "n1" | "n2")
            || matches!(host, 0 | 1 | 2 | 254 | 255)
            || self.hosts.iter().any(|(n, h)| n == name || *h == host)
        {
            return Err(TestbedError::Other(format!(
                "host {name} (.{host}): the name or the address is taken"
            )));
        }
        let (ul, ns, v) = (self.ns("ul"), self.ns(name), format!("v{host}"));
        run(&["ip", "netns", "add", &ns])?;
        // Recorded once it exists, so that whatever fails below is undone by Drop.
        self.hosts.push((name.to_string(), host));
        run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        run(&[
            "ip", "-n", &ul, "link", "add", &v, "type", "veth", "peer", "name", "eth0", "netns",
            &ns,
        ])?;
        run(&["ip", "-n", &ul, "link", "set", &v, "master", "br0", "up"])?;
        run(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &self.underlay_addr(host, 24),
            "dev",
            "eth0",
        ])?;
        run(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
        Ok(self.ns_path(name))
    }

    /// What every name of this topology starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The `ip netns` name of `ul`, `n1`, `n2` or an added host.
    pub fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    pub fn ns_path(&self, name: &str) -> PathBuf {
        PathBuf::from("/run/netns").join(self.ns(name))
    }

    /// Underlay address of host `host` (1, 2: the nodes; 254: the bridge namespace; others:
    /// added hosts).
    pub fn underlay_ip(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 99, self.subnet, host)
    }

    pub fn underlay_addr(&self, host: u8, len: u8) -> String {
        format!("{}/{len}", self.underlay_ip(host))
    }

    /// A bpffs directory for a node's data plane, removed with the topology.
    pub fn bpf_dir(&mut self, node: &str) -> PathBuf {
        let d = PathBuf::from("/sys/fs/bpf").join(format!("{}-{node}", self.prefix));
        self.pins.push(d.clone());
        d
    }

    /// Where the task namespaces live (as the agent's `<exec-root>/netns`).
    pub fn netns_dir(&self) -> PathBuf {
        self.dir.join("netns")
    }

    /// A task namespace made the way the executor makes it (loopback up), removed with the
    /// topology.
    pub fn task_netns(&self, task_id: &str) -> Result<PathBuf, TestbedError> {
        Ok(crate::netns::create(&self.netns_dir(), task_id)?)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for t in crate::netns::list(&self.netns_dir()) {
            let _ = crate::netns::remove(&self.netns_dir().join(t));
        }
        let hosts = self.hosts.iter().map(|(n, _)| n.as_str());
        for n in hosts.chain(["n1", "n2", "ul"]) {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(n)])
                .stderr(std::process::Stdio::null())
                .status();
        }
        for p in &self.pins {
            let _ = dataplane::remove_pins(p);
        }
        let _ = std::fs::remove_dir(self.netns_dir());
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A cgroup v2 directory (under the unified hierarchy), removed on drop with its child
/// directories (they must have no processes left by then).
pub struct Cgroup(PathBuf);

impl Cgroup {
    pub fn new(name: &str) -> Result<Cgroup, TestbedError> {
        super::cgroup2_dir(name)
            .map(Cgroup)
            .map_err(io_err(format!("creating the cgroup {name}")))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// A child directory (made if needed): processes there meet what is attached here.
    pub fn child(&self, name: &str) -> Result<PathBuf, TestbedError> {
        let p = self.0.join(name);
        std::fs::create_dir_all(&p).map_err(io_err(format!("creating {}", p.display())))?;
        Ok(p)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if let Ok(rd) = std::fs::read_dir(&self.0) {
            for e in rd.flatten() {
                if e.path().is_dir() {
                    let _ = std::fs::remove_dir(e.path());
                }
            }
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Runs `f` on a thread inside the namespace at `ns`, with a runtime of its own there.
pub fn in_ns<T: Send + 'static, F, Fut>(ns: &Path, f: F) -> Result<T, TestbedError>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
{
    let file = std::fs::File::open(ns).map_err(io_err(format!("opening {}", ns.display())))?;
    let what = ns.display().to_string();
    std::thread::spawn(move || {
        // SAFETY: setns on this thread only, with a descriptor we own.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(TestbedError::Io {
                what: format!("entering {what}"),
                source: std::io::Error::last_os_error(),
            });
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io_err("starting a runtime"))?;
        Ok(rt.block_on(f()))
    })
    .join()
    .map_err(|_| TestbedError::Other(format!("the thread in {} panicked", ns.display())))?
}

/// Starts `cmd` inside the network namespace `ns`, and inside the cgroup directory `cgroup`
/// when given (its sockets then meet the socket hooks attached above it), as a task's process
/// runs.
pub fn spawn_in(
    cmd: &mut Command,
    ns: &Path,
    cgroup: Option<&Path>,
) -> Result<Child, TestbedError> {
    let file = std::fs::File::open(ns).map_err(io_err(format!("opening {}", ns.display())))?;
    let procs = match cgroup {
        Some(cg) => Some(
            std::ffi::CString::new(cg.join("cgroup.procs").as_os_str().as_encoded_bytes())
                .map_err(|_| TestbedError::Other(format!("bad cgroup path {}", cg.display())))?,
        ),
        None => None,
    };
    // SAFETY: only async-signal-safe calls (open, write, close, setns) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(procs) = &procs {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    let e = std::io::Error::last_os_error();
                    libc::close(fd);
                    return Err(e);
                }
                libc::close(fd);
            }
            if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().map_err(io_err(format!(
        "starting {:?} in {}",
        cmd.get_program(),
        ns.display()
    )))
}

/// A network as the managers describe it; the gateway is the subnet's first address.
pub fn network_info(id: &str, vni: u32, subnet: &str, internal: bool) -> NetworkInfo {
    let gateway = super::parse_cidr(subnet)
        .map(|(a, _)| Ipv4Addr::from(u32::from(a).wrapping_add(1)).to_string())
        .unwrap_or_default();
    NetworkInfo {
        id: id.into(),
        name: format!("net-{id}"),
        vni,
        subnet: subnet.into(),
        gateway,
        internal,
        ..Default::default()
    }
}

/// A serving endpoint of task `task` on network `net`, on the node `node` (at `node_addr`).
pub fn endpoint_info(
    task: &str,
    net: &str,
    addr: &str,
    node: &str,
    node_addr: &str,
) -> EndpointInfo {
    EndpointInfo {
        task_id: task.into(),
        network_id: net.into(),
        address: addr.into(),
        node_id: node.into(),
        node_addr: node_addr.into(),
        serving: true,
        ..Default::default()
    }
}

/// A service in endpoint mode vip with one VIP (`addr/len`) on network `net`.
pub fn vip_service(id: &str, name: &str, net: &str, vip: &str) -> ServiceInfo {
    ServiceInfo {
        id: id.into(),
        name: name.into(),
        endpoint_mode: proto::EndpointMode::Vip as i32,
        virtual_ips: vec![proto::VirtualIp {
            network_id: net.into(),
            addr: vip.into(),
        }],
        network_ids: vec![net.into()],
        ports: vec![],
    }
}

/// The ingress network (the routing mesh's): [`network_info`] with `ingress` set.
pub fn ingress_network(id: &str, vni: u32, subnet: &str) -> NetworkInfo {
    NetworkInfo {
        ingress: true,
        ..network_info(id, vni, subnet, false)
    }
}

/// Node `node`'s own endpoint on the ingress network `net` (Docker's `ingress-sbox`): its
/// address there is `addr`, its underlay address `node_addr`; the task id is the node id, and
/// it never serves.
pub fn node_ingress_endpoint(node: &str, net: &str, addr: &str, node_addr: &str) -> EndpointInfo {
    EndpointInfo {
        node_ingress: true,
        serving: false,
        ..endpoint_info(node, net, addr, node, node_addr)
    }
}

/// [`vip_service`] with TCP ports published in ingress mode (the routing mesh), each
/// `(target port, published port)`, the client address not preserved.
pub fn published_service(
    id: &str,
    name: &str,
    net: &str,
    vip: &str,
    ports: &[(u32, u32)],
) -> ServiceInfo {
    ServiceInfo {
        ports: ports
            .iter()
            .map(|&(target, published)| proto::PortConfig {
                name: String::new(),
                protocol: proto::PortProtocol::Tcp as i32,
                target_port: target,
                published_port: published,
                publish_mode: proto::PublishMode::Ingress as i32,
                preserve_source_ip: false,
            })
            .collect(),
        ..vip_service(id, name, net, vip)
    }
}

/// A COMPLETE message with these networks, endpoints and services.
pub fn complete(
    nets: Vec<NetworkInfo>,
    eps: Vec<EndpointInfo>,
    services: Vec<ServiceInfo>,
) -> NetworkStateMessage {
    let changes = nets
        .into_iter()
        .map(Change::Network)
        .chain(eps.into_iter().map(Change::Endpoint))
        .chain(services.into_iter().map(Change::Service))
        .map(|c| NetworkStateChange { change: Some(c) })
        .collect();
    NetworkStateMessage {
        r#type: network_state_message::Type::Complete as i32,
        changes,
        ..Default::default()
    }
}

/// A task with one attachment per `(network id, address/len)`.
pub fn task(id: &str, attachments: &[(&str, &str)]) -> Task {
    Task {
        id: id.into(),
        networks: attachments
            .iter()
            .map(|(n, a)| NetworkAttachment {
                network_id: n.to_string(),
                network_name: format!("net-{n}"),
                addresses: vec![a.to_string()],
                aliases: vec![],
            })
            .collect(),
        ..Default::default()
    }
}

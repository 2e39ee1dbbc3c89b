//! The lab's underlay ([`Underlay`]): the namespace `<name>-ul` with the bridge every node's
//! cable (`veth<i>` there, `eth0` in the node) is plugged into, and the two services it runs
//! for the nodes: the OCI registry holding the test images, and the upstream resolver (dnsmasq)
//! the agents forward the names they do not know to.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use swarm_oci::LocalSecurity;

use super::config::{registry_addr, LabConfig, UNDERLAY_IP};
use super::daemon::{tail, wait_for_quick, Daemon};
use super::node::LabNode;
use super::sys;
use crate::client::CliOutput;
use crate::images;

pub(super) const DOCKER_REGISTRY: &str = "/usr/bin/docker-registry";
const DNSMASQ: &str = "/usr/sbin/dnsmasq";
/// The zone the lab's upstream resolver (dnsmasq in the underlay) serves, with one name in
/// it and its address. The agents forward what they do not know there.
pub const UPSTREAM_TEST_ZONE: &str = "example.test";
pub const UPSTREAM_TEST_NAME: &str = "www.example.test";
pub const UPSTREAM_TEST_ADDR: &str = "192.0.2.7";

/// The underlay of one lab, with its registry and its upstream resolver.
pub struct Underlay {
    name: String,
    root: PathBuf,
    registry: Daemon,
    upstream_dns: Daemon,
}

impl Underlay {
    pub(super) fn new(cfg: &LabConfig) -> Underlay {
        Underlay {
            name: cfg.name.clone(),
            root: cfg.root.clone(),
            registry: Daemon::new(
                "registry".into(),
                PathBuf::from(DOCKER_REGISTRY),
                cfg.root.join("registry").join("registry.pid"),
                cfg.root.join("registry").join("registry.log"),
            ),
            upstream_dns: Daemon::new(
                "upstream dns".into(),
                PathBuf::from(DNSMASQ),
                cfg.root.join("dns").join("dnsmasq.pid"),
                cfg.root.join("dns").join("dnsmasq.log"),
            ),
        }
    }

    /// `<name>-ul`: the namespace of the bridge and the registry.
    pub fn netns(&self) -> String {
        format!("{}-ul", self.name)
    }

    pub fn netns_path(&self) -> PathBuf {
        sys::netns_path(&self.netns())
    }

    /// The underlay namespace with its bridge (`br0`, [`UNDERLAY_IP`]), and each node's
    /// namespace with its cable to the bridge.
    pub(super) fn make_network(&self, nodes: &[LabNode]) -> anyhow::Result<()> {
        let ul = self.netns();
        sys::ip(&["netns", "add", &ul])?;
        sys::ip(&["-n", &ul, "link", "set", "lo", "up"])?;
        sys::ip(&["-n", &ul, "link", "add", "br0", "type", "bridge"])?;
        sys::ip(&[
            "-n",
            &ul,
            "addr",
            "add",
            &format!("{UNDERLAY_IP}/24"),
            "dev",
            "br0",
        ])?;
        sys::ip(&["-n", &ul, "link", "set", "br0", "up"])?;
        for n in nodes {
            let ns = n.netns();
            let veth = format!("veth{}", n.index());
            sys::plug_into_bridge(&ul, &veth, &ns, &format!("{}/24", n.ip()))?;
        }
        Ok(())
    }

    /// Runs `f` on a thread inside the underlay namespace: a client outside every node (its
    /// address is [`UNDERLAY_IP`]), as a machine on the nodes' LAN would be.
    pub fn in_underlay<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        sys::on_netns_thread(&self.netns_path(), f)
    }

    /// A command in the underlay namespace (for `tc qdisc … dev veth<i>`, `ip link set veth<i>
    /// down` …: node i's cable is `veth<i>` there).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> anyhow::Result<Command> {
        let mut cmd = Command::new(program);
        sys::in_netns(&mut cmd, &self.netns_path(), false)?;
        Ok(cmd)
    }

    /// Runs a command in the underlay namespace.
    pub fn exec(&self, args: &[&str]) -> CliOutput {
        sys::exec(args, |prog| self.command(prog))
    }

    pub fn registry_running(&self) -> bool {
        self.registry.pid().is_some()
    }

    pub(super) fn registry_pid(&self) -> Option<i32> {
        self.registry.pid()
    }

    /// The node's resolvers as the agents see them (`--resolv-conf`): the lab's upstream.
    pub fn resolv_conf(&self) -> PathBuf {
        self.root.join("dns").join("resolv.conf")
    }

    /// dnsmasq in the underlay on port 53, serving the zone [`UPSTREAM_TEST_ZONE`]
    /// ([`UPSTREAM_TEST_NAME`] → [`UPSTREAM_TEST_ADDR`]): what the agents forward to.
    pub fn start_upstream_dns(&self) -> anyhow::Result<()> {
        if self.upstream_dns.pid().is_some() {
            return Ok(());
        }
        let dir = self.root.join("dns");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(self.resolv_conf(), format!("nameserver {UNDERLAY_IP}\n"))?;
        let log = dir.join("dnsmasq.log");
        let mut cmd = Command::new(DNSMASQ);
        cmd.args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            &format!("--listen-address={UNDERLAY_IP}"),
            "--port=53",
            // The zone is local: its name has an A record (AAAA questions get NODATA, other
            // names NXDOMAIN); anything outside it is refused (no upstream of its own).
            &format!("--local=/{UPSTREAM_TEST_ZONE}/"),
            &format!("--host-record={UPSTREAM_TEST_NAME},{UPSTREAM_TEST_ADDR}"),
            "--user=root",
            "--pid-file=",
            "--log-facility=-",
        ]);
        self.upstream_dns.spawn_in(cmd, &self.netns_path())?;
        wait_for_quick(Duration::from_secs(10), || {
            let addr = format!("{UNDERLAY_IP}:53");
            sys::on_netns_thread(&self.netns_path(), move || {
                Ok(std::net::TcpStream::connect_timeout(
                    &addr.parse()?,
                    Duration::from_millis(200),
                )?)
            })
            .is_ok()
        })
        .with_context(|| {
            format!(
                "dnsmasq did not listen on {UNDERLAY_IP}:53; log:\n{}",
                tail(&log, 20)
            )
        })
    }

    /// Starts the registry (when not running) and waits until `GET /v2/` answers.
    pub fn start_registry(&self) -> anyhow::Result<()> {
        if self.registry_running() {
            return Ok(());
        }
        let dir = self.root.join("registry");
        std::fs::create_dir_all(dir.join("data"))
            .with_context(|| format!("creating {}", dir.display()))?;
        let cfg = dir.join("config.yml");
        std::fs::write(
            &cfg,
            registry_config(&dir, &registry_addr(), &LocalSecurity::default()),
        )
        .with_context(|| format!("writing {}", cfg.display()))?;
        let log = dir.join("registry.log");
        let mut cmd = Command::new(DOCKER_REGISTRY);
        cmd.arg("serve").arg(&cfg);
        self.registry.spawn_in(cmd, &self.netns_path())?;
        let addr = registry_addr();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let a = addr.clone();
            let ping = sys::on_netns_thread(&self.netns_path(), move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async {
                    let c = swarm_oci::Registry::with_options(
                        &a,
                        swarm_oci::RegistryOptions {
                            insecure: true,
                            attempts: 1,
                            connect_timeout: Duration::from_millis(500),
                            request_timeout: Duration::from_secs(2),
                            ..Default::default()
                        },
                    )?;
                    c.ping().await?;
                    anyhow::Ok(())
                })
            });
            match ping {
                Ok(()) => return Ok(()),
                Err(e) => {
                    if !self.registry_running() {
                        bail!(
                            "{DOCKER_REGISTRY} exited; log {}:\n{}",
                            log.display(),
                            tail(&log, 20)
                        );
                    }
                    if Instant::now() > deadline {
                        bail!(
                            "the registry did not answer on {addr} within 20 s ({e:#}); log {}:\n{}",
                            log.display(),
                            tail(&log, 20)
                        );
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// SIGKILL the registry (pulls fail until [`start_registry`](Self::start_registry)).
    pub fn stop_registry(&self) -> anyhow::Result<()> {
        self.registry.stop(libc::SIGKILL, Duration::from_secs(10))
    }

    /// Kills and reaps this process's own child, the registry (no zombie left behind by a
    /// teardown).
    pub(super) fn kill_daemons(&self) {
        let _ = self.registry.stop(libc::SIGKILL, Duration::from_secs(5));
    }

    /// Builds the test images (whoami from the binary `whoami`) and pushes them to the lab
    /// registry (from the underlay namespace); returns `REGISTRY/NAME:latest@DIGEST` lines.
    pub fn push_images(&self, whoami: &Path) -> anyhow::Result<Vec<String>> {
        let whoami = images::whoami_image(whoami)?;
        let busybox = images::busybox_image(Path::new(images::BUSYBOX))?;
        let addr = registry_addr();
        sys::on_netns_thread(&self.netns_path(), move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(images::push_images(&addr, &whoami, &busybox))
        })
    }
}

/// A registry's config.yml: storage under `dir`, listening on `addr` in the underlay, with
/// TLS and a login when `security` says so.
pub(super) fn registry_config(dir: &Path, addr: &str, security: &LocalSecurity) -> String {
    let q = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"));
    format!(
        "version: 0.1\n\
         log:\n  level: info\n  accesslog:\n    disabled: true\n\
         storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
         health:\n  storagedriver:\n    enabled: false\n\
         http:\n  addr: {}\n  secret: swarm-lab\n{}",
        q(&dir.join("data").to_string_lossy()),
        q(addr),
        swarm_oci::local::security_config(security),
    )
}

/// A registry a test serves in the underlay besides the lab's own (on another port, with TLS
/// from the lab's CA and a login, or without): killed and reaped when dropped (the lab's
/// teardown kills it too, with everything in its namespaces).
pub struct ExtraRegistry {
    child: std::process::Child,
    addr: String,
    log: PathBuf,
}

impl ExtraRegistry {
    /// `10.77.0.254:PORT`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The end of its log.
    pub fn log_tail(&self) -> String {
        tail(&self.log, 20)
    }
}

impl Drop for ExtraRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Underlay {
    /// Starts `docker-registry` on `10.77.0.254:port` with `security` (data and log under
    /// `<root>/<name>/`) and waits until it accepts connections.
    pub fn start_extra_registry(
        &self,
        name: &str,
        port: u16,
        security: &LocalSecurity,
    ) -> anyhow::Result<ExtraRegistry> {
        let dir = self.root.join(name);
        std::fs::create_dir_all(dir.join("data"))
            .with_context(|| format!("creating {}", dir.display()))?;
        let addr = format!("{UNDERLAY_IP}:{port}");
        let cfg = dir.join("config.yml");
        std::fs::write(&cfg, registry_config(&dir, &addr, security))
            .with_context(|| format!("writing {}", cfg.display()))?;
        let log = dir.join("registry.log");
        let out = std::fs::File::create(&log)?;
        let mut cmd = self.command(DOCKER_REGISTRY)?;
        cmd.arg("serve")
            .arg(&cfg)
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {DOCKER_REGISTRY}"))?;
        let mut reg = ExtraRegistry { child, addr, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let a = reg.addr.clone();
            let up = sys::on_netns_thread(&self.netns_path(), move || {
                Ok(
                    std::net::TcpStream::connect_timeout(&a.parse()?, Duration::from_millis(300))
                        .is_ok(),
                )
            })?;
            if up {
                return Ok(reg);
            }
            if let Some(status) = reg.child.try_wait()? {
                bail!(
                    "{DOCKER_REGISTRY} on {} exited ({status}):\n{}",
                    reg.addr,
                    reg.log_tail()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{DOCKER_REGISTRY} did not listen on {} within 20 s:\n{}",
                    reg.addr,
                    reg.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

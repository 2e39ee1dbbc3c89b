//! `FaultNet`: one network namespace per node on a bridge, so links between nodes can be cut
//! and healed (nftables drop rules inside a node's namespace) and slowed or made lossy on
//! everything a node sends. Latency and loss come from tc netem on the node's cable where the
//! kernel has `sch_netem`; elsewhere (this project's usual host: a 6.18 kernel without it)
//! from [`super::nfqueue`]: an iptables NFQUEUE rule in the node's namespace and a thread of
//! the test process that holds, releases and drops the packets. [`FaultNet::netem_works`]
//! tries both for real and says which one the run uses. Everything lives in namespaces of its
//! own: the addresses (10.77.0.N) and rules never touch the host or another test's cluster.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::Context;

use super::nfqueue::{Shape, Shaper};
use crate::lab::sys;

/// The nodes' subnet inside the namespaces (private to them: never seen by the host).
const SUBNET_PREFIX: &str = "10.77.0";
/// A node's cable inside its namespace (the veth end [`sys::plug_into_bridge`] names).
const CABLE: &str = "eth0";
/// Where the NFQUEUE probe sends its packet: an address of the subnet no node has (the
/// packet is queued on its way out whether or not anyone answers).
const PROBE_TARGET: &str = "10.77.0.254:9";
/// How long the NFQUEUE probe waits for its packet to reach the handler.
const PROBE_WAIT: Duration = Duration::from_secs(2);

/// How this machine adds latency and loss to what a node sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mechanism {
    /// `tc qdisc replace dev eth0 root netem` in the node's namespace.
    TcNetem,
    /// The NFQUEUE rule and handler of [`super::nfqueue`]; `no_netem` says why tc netem
    /// could not be used.
    Nfqueue { no_netem: String },
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mechanism::TcNetem => write!(f, "tc netem"),
            Mechanism::Nfqueue { .. } => write!(f, "NFQUEUE (iptables rule, handler thread)"),
        }
    }
}

/// The namespaces of one cluster: `<name>-br` (the bridge) and `<name>-n<i>` per node.
pub struct FaultNet {
    name: String,
    count: usize,
    /// Seeds the NFQUEUE handlers' draws of jitter and loss.
    seed: u64,
    /// How latency and loss are added, found once (tried for real).
    mechanism: OnceLock<Result<Mechanism, String>>,
    /// Per node, its NFQUEUE handler while latency or loss is on (the NFQUEUE mechanism).
    shapers: Mutex<Vec<Option<Shaper>>>,
    /// Handlers started so far (each draws from a seed of its own).
    started: AtomicU64,
}

impl FaultNet {
    /// Makes the bridge namespace and `count` node namespaces, each cabled to the bridge
    /// with its address (fails, naming the step, without root or `ip`).
    pub fn new(count: usize) -> anyhow::Result<FaultNet> {
        anyhow::ensure!(
            sys::is_root(),
            "the fault suite needs root (network namespaces, nftables, tc or iptables)"
        );
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!("swf{}x{}", std::process::id(), nanos % 10_000);
        let net = FaultNet {
            name,
            count,
            seed: 0,
            mechanism: OnceLock::new(),
            shapers: Mutex::new((0..count).map(|_| None).collect()),
            started: AtomicU64::new(0),
        };
        net.make()
            .with_context(|| format!("making the fault network {}", net.name))?;
        Ok(net)
    }

    /// Seeds the draws of jitter and loss of the NFQUEUE mechanism (a fault schedule's seed).
    pub fn with_seed(mut self, seed: u64) -> FaultNet {
        self.seed = seed;
        self
    }

    fn make(&self) -> anyhow::Result<()> {
        let br = self.bridge_ns();
        sys::ip(&["netns", "add", &br])?;
        sys::ip(&["-n", &br, "link", "set", "lo", "up"])?;
        sys::ip(&["-n", &br, "link", "add", "br0", "type", "bridge"])?;
        sys::ip(&["-n", &br, "link", "set", "br0", "up"])?;
        for i in 0..self.count {
            let ns = self.node_ns(i);
            let veth = format!("v{i}");
            sys::plug_into_bridge(&br, &veth, &ns, &format!("{}/24", self.ip(i)))?;
            // Every node's filter table: `cut` adds rules to its chains, `heal` flushes them.
            self.nft(
                i,
                "add table inet swarm_faults\n\
                 add chain inet swarm_faults out { type filter hook output priority 0 ; }\n\
                 add chain inet swarm_faults in { type filter hook input priority 0 ; }\n",
            )?;
        }
        Ok(())
    }

    /// How many node namespaces there are.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Node `i`'s address (0-based).
    pub fn ip(&self, i: usize) -> String {
        format!("{SUBNET_PREFIX}.{}", i + 1)
    }

    /// Node `i`'s namespace file (what its processes are started in).
    pub fn netns_path(&self, i: usize) -> PathBuf {
        sys::netns_path(&self.node_ns(i))
    }

    /// Node `i`'s namespace name (for `ip netns exec`).
    pub(crate) fn node_ns(&self, i: usize) -> String {
        format!("{}-n{i}", self.name)
    }

    fn bridge_ns(&self) -> String {
        format!("{}-br", self.name)
    }

    fn nft(&self, i: usize, script: &str) -> anyhow::Result<()> {
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", &self.node_ns(i), "nft", "-f", "-"]);
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd
            .spawn()
            .context("starting nft (is nftables installed?)")?;
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().context("nft's stdin")?;
            stdin.write_all(script.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        anyhow::ensure!(
            out.status.success(),
            "nft in {} failed: {}\n{script}",
            self.node_ns(i),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }

    /// Drops every packet from node `from` to node `to` (one direction: TCP between them
    /// stalls both ways, as with a real one-way loss; UDP from `to` still arrives).
    pub fn cut(&self, from: usize, to: usize) -> anyhow::Result<()> {
        let (src, dst) = (self.ip(from), self.ip(to));
        self.nft(
            from,
            &format!("add rule inet swarm_faults out ip daddr {dst} drop\n"),
        )?;
        self.nft(
            to,
            &format!("add rule inet swarm_faults in ip saddr {src} drop\n"),
        )
    }

    /// Heals every cut of every node (rules flushed) and removes every delay and loss (the
    /// NFQUEUE handlers release what they hold). Every node is healed even if one fails; the
    /// first failure is returned.
    pub fn heal_all(&self) -> anyhow::Result<()> {
        let mut first = Ok(());
        for i in 0..self.count {
            let healed = self
                .nft(
                    i,
                    "flush chain inet swarm_faults out\nflush chain inet swarm_faults in\n",
                )
                .and_then(|()| self.clear_netem(i));
            first = first.and(healed);
        }
        first
    }

    /// Delay (± jitter) and loss on everything node `i` sends, by this machine's
    /// [`Mechanism`]; a second call on the same node replaces the first one's values.
    pub fn netem(
        &self,
        i: usize,
        delay_ms: u32,
        jitter_ms: u32,
        loss_pct: u32,
    ) -> anyhow::Result<()> {
        anyhow::ensure!(
            i < self.count,
            "netem on node {i}: there are {} nodes",
            self.count
        );
        let shape = Shape {
            delay_ms,
            jitter_ms,
            loss_pct,
        };
        match self.mechanism() {
            Ok(Mechanism::TcNetem) => self.tc_netem(i, shape),
            Ok(Mechanism::Nfqueue { .. }) => self.nfqueue(i, shape),
            Err(why) => anyhow::bail!(
                "cannot add latency and loss to node {i} ({}): {why}",
                self.node_ns(i)
            ),
        }
    }

    /// How this machine adds latency and loss: tc netem if it works, else the NFQUEUE way,
    /// each tried for real on node 0's cable and removed again. `Err` says why neither can.
    pub fn netem_works(&self) -> Result<Mechanism, String> {
        self.mechanism()
    }

    fn mechanism(&self) -> Result<Mechanism, String> {
        self.mechanism.get_or_init(|| self.probe()).clone()
    }

    fn probe(&self) -> Result<Mechanism, String> {
        let zero = Shape {
            delay_ms: 0,
            jitter_ms: 0,
            loss_pct: 0,
        };
        let tc = self.tc_netem(
            0,
            Shape {
                delay_ms: 1,
                ..zero
            },
        );
        self.clear_tc(0);
        let no_netem = match tc {
            Ok(()) => return Ok(Mechanism::TcNetem),
            Err(e) => format!("{e:#}"),
        };
        match self.try_nfqueue(zero) {
            Ok(()) => Ok(Mechanism::Nfqueue { no_netem }),
            Err(e) => Err(format!("tc netem: {no_netem}; NFQUEUE: {e:#}")),
        }
    }

    /// Starts an NFQUEUE handler on node 0, sends a packet from node 0 and checks that the
    /// handler received it, then removes the handler.
    fn try_nfqueue(&self, zero: Shape) -> anyhow::Result<()> {
        let shaper = Shaper::start(
            &self.node_ns(0),
            &self.netns_path(0),
            CABLE,
            zero,
            self.seed,
        )?;
        let sent = sys::on_netns_thread(&self.netns_path(0), || {
            let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
            socket.send_to(b"nfqueue probe", PROBE_TARGET)?;
            Ok(())
        });
        let seen =
            crate::helpers::poll(PROBE_WAIT, Duration::from_millis(20), || shaper.seen() > 0);
        let stopped = shaper.stop();
        sent.with_context(|| format!("sending a probe packet from {}", self.node_ns(0)))?;
        seen.with_context(|| {
            format!(
                "the NFQUEUE rule in {} handed nothing to its queue of a packet sent to {PROBE_TARGET}",
                self.node_ns(0)
            )
        })?;
        stopped
    }

    fn tc_netem(&self, i: usize, shape: Shape) -> anyhow::Result<()> {
        sys::run(std::process::Command::new("ip").args([
            "netns",
            "exec",
            &self.node_ns(i),
            "tc",
            "qdisc",
            "replace",
            "dev",
            CABLE,
            "root",
            "netem",
            "delay",
            &format!("{}ms", shape.delay_ms),
            &format!("{}ms", shape.jitter_ms),
            "loss",
            &format!("{}%", shape.loss_pct),
        ]))
        .context("tc netem (is iproute2's tc installed, and the sch_netem module?)")
        .map(|_| ())
    }

    /// Node `i`'s NFQUEUE handler gets `shape`: a new one (rule and thread), or the running
    /// one's values replaced.
    fn nfqueue(&self, i: usize, shape: Shape) -> anyhow::Result<()> {
        let mut shapers = self.shapers.lock().unwrap_or_else(|p| p.into_inner());
        let slot = shapers
            .get_mut(i)
            .with_context(|| format!("node {i} has no NFQUEUE slot"))?;
        if let Some(running) = slot {
            running.set(shape);
            return Ok(());
        }
        let seed = self.next_seed(i);
        let shaper = Shaper::start(&self.node_ns(i), &self.netns_path(i), CABLE, shape, seed)
            .with_context(|| {
                format!(
                    "adding latency and loss to node {i} ({}) with NFQUEUE",
                    self.node_ns(i)
                )
            })?;
        *slot = Some(shaper);
        Ok(())
    }

    /// A seed of its own for the next handler, on node `i`, from the net's seed.
    fn next_seed(&self, i: usize) -> u64 {
        let started = self.started.fetch_add(1, Ordering::SeqCst) + 1;
        let mut rng = super::schedule::Rng::new(self.seed ^ ((i as u64) << 48) ^ started);
        rng.next_u64()
    }

    /// Removes node `i`'s latency and loss, whichever way they were added.
    fn clear_netem(&self, i: usize) -> anyhow::Result<()> {
        if let Some(Ok(Mechanism::TcNetem)) = self.mechanism.get() {
            self.clear_tc(i);
        }
        let shaper = self
            .shapers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(i)
            .and_then(Option::take);
        match shaper {
            Some(s) => s.stop().with_context(|| {
                format!(
                    "removing node {i}'s NFQUEUE latency and loss ({})",
                    self.node_ns(i)
                )
            }),
            None => Ok(()),
        }
    }

    fn clear_tc(&self, i: usize) {
        // Fails when there is none: nothing to remove.
        let _ = sys::run(std::process::Command::new("ip").args([
            "netns",
            "exec",
            &self.node_ns(i),
            "tc",
            "qdisc",
            "del",
            "dev",
            CABLE,
            "root",
        ]));
    }
}

impl Drop for FaultNet {
    fn drop(&mut self) {
        // The handlers stop first (their threads release what they hold); the rules go
        // with the namespaces.
        self.shapers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        for i in 0..self.count {
            let _ = sys::ip(&["netns", "del", &self.node_ns(i)]);
        }
        let _ = sys::ip(&["netns", "del", &self.bridge_ns()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pings node 1 from node 0 `count` times: (packets lost in percent, the average round
    /// trip in ms when any answer came).
    fn ping(net: &FaultNet, count: u32) -> (u32, Option<f64>) {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &net.node_ns(0), "ping", "-q", "-n"])
            .args(["-c", &count.to_string(), "-i", "0.2", "-W", "2", &net.ip(1)])
            .output()
            .expect("running ping");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        // "5 packets transmitted, 5 received, 0% packet loss, time 801ms"
        let loss = text
            .split(',')
            .find_map(|part| part.trim().strip_suffix("% packet loss"))
            .and_then(|p| p.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no packet loss in ping's output: {text}"))
            as u32;
        // "rtt min/avg/max/mdev = 0.040/0.052/0.071/0.011 ms"
        let avg = text
            .lines()
            .find_map(|l| l.split_once(" = "))
            .and_then(|(_, v)| v.split('/').nth(1)?.parse().ok());
        (loss, avg)
    }

    /// What the fault schedule's latency and loss do, against real packets, by whichever
    /// mechanism this machine has: NFQUEUE on this project's host (its kernel has no
    /// `sch_netem`), tc netem in `cargo xtask vm-test`'s Debian 12 guest. It fails, never
    /// skips, when neither works.
    #[test]
    fn netem_delays_and_drops_what_a_node_sends_and_healing_removes_it() {
        let net = FaultNet::new(2).unwrap().with_seed(11);
        let mechanism = net
            .netem_works()
            .unwrap_or_else(|why| panic!("this machine cannot add latency and loss: {why}"));
        eprintln!("latency and loss by {mechanism}");
        let (loss, rtt) = ping(&net, 5);
        assert_eq!(loss, 0, "the cable loses packets before any fault");
        let base = rtt.unwrap();
        net.netem(0, 300, 0, 0).unwrap();
        let (loss, rtt) = ping(&net, 5);
        assert_eq!(loss, 0, "a delay alone lost packets");
        let slowed = rtt.unwrap();
        assert!(
            slowed >= 300.0 && slowed >= base + 250.0,
            "300 ms of delay on node 0's cable: round trip {slowed} ms (before: {base} ms)"
        );
        net.netem(0, 0, 0, 100).unwrap();
        let (loss, _) = ping(&net, 5);
        assert_eq!(loss, 100, "100% loss on node 0's cable let packets through");
        net.heal_all().unwrap();
        let (loss, rtt) = ping(&net, 5);
        assert_eq!(loss, 0, "healed, the cable still loses packets");
        let healed = rtt.unwrap();
        assert!(
            healed < 250.0,
            "healed, the round trip is still {healed} ms"
        );
        eprintln!("round trips: {base} ms, {slowed} ms under 300 ms of delay, {healed} ms healed");
    }
}

//! Delay (± jitter) and loss without `sch_netem`: a rule in a node's namespace hands every
//! IPv4 packet the node sends on its cable to a netfilter queue (`iptables -t mangle -A
//! POSTROUTING -o <cable> -j NFQUEUE`, the `xt_NFQUEUE` target through `nft_compat`), and a
//! thread of the test process, whose queue socket was opened inside that namespace (queues
//! are per namespace), holds each packet for the delay ± jitter and then accepts it, or drops
//! it at once with the loss's probability. Release times never decrease (a packet leaves at
//! the later of its own time and the previous packet's), so a node's packets keep their
//! order, as with netem without reordering. Only the payload-less metadata of a packet
//! crosses to user space.

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use nfq::{Message, Queue, Verdict};

use super::schedule::Rng;
use crate::lab::sys;

/// The first queue number handed out; each [`Shaper`] takes the next one ([`next_queue_num`]).
pub const FIRST_QUEUE_NUM: u16 = 7;
/// Packets the kernel may hold for the queue (its default is 1024): far more than a node
/// sends during the longest delay, so the queue never overflows (packets beyond it would be
/// dropped, as netem drops beyond its limit).
const QUEUE_MAX_LEN: u32 = 65_536;
/// How often the handler looks for new packets when none is due sooner (its socket is
/// polled without blocking: the crate gives no descriptor to wait on).
const TICK: Duration = Duration::from_millis(1);

/// What is done to a node's packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub delay_ms: u32,
    pub jitter_ms: u32,
    pub loss_pct: u32,
}

/// When a packet that arrived at `now` leaves: `now` + delay ± jitter (never before `now`),
/// and never before the packet ahead of it (`prev`).
pub fn release_at(prev: Option<Instant>, now: Instant, shape: Shape, rng: &mut Rng) -> Instant {
    let jitter = i64::from(shape.jitter_ms);
    let drawn = rng.range(0, 2 * jitter as u64) as i64 - jitter;
    let ms = (i64::from(shape.delay_ms) + drawn).max(0) as u64;
    let own = now + Duration::from_millis(ms);
    prev.map_or(own, |p| p.max(own))
}

/// Whether a packet is lost: `loss_pct` in a hundred (all of them from 100 on).
pub fn lost(shape: Shape, rng: &mut Rng) -> bool {
    shape.loss_pct > 0 && rng.range(1, 100) <= u64::from(shape.loss_pct)
}

/// A queue number no other [`Shaper`] of this process took (until the numbers wrap).
///
/// Queues are per namespace, so one number would do, but a queue stays bound for as long as
/// any process holds its socket, and `nfq` opens that socket without `SOCK_CLOEXEC`: a
/// process another test starts meanwhile inherits it and keeps the queue bound after the
/// shaper closed it. Binding the same number again in that namespace (the probe's node,
/// then a fault on it) then fails with EPERM, as it did once in CI's parallel tests.
fn next_queue_num() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(FIRST_QUEUE_NUM);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    if n < FIRST_QUEUE_NUM {
        // Wrapped past u16::MAX: start over (the old shapers are long gone).
        NEXT.store(FIRST_QUEUE_NUM + 1, Ordering::Relaxed);
        return FIRST_QUEUE_NUM;
    }
    n
}

/// The NFQUEUE rule of a node's namespace for queue `num`: `-A` adds it, `-D` deletes it.
/// `--queue-bypass`: should the handler be gone, the node's packets pass (instead of every
/// one being dropped, a cut nobody asked for).
fn rule(ns: &str, cable: &str, num: u16, action: &str) -> anyhow::Result<()> {
    let queue = num.to_string();
    sys::run(std::process::Command::new("ip").args([
        "netns",
        "exec",
        ns,
        "iptables",
        "-w",
        "-t",
        "mangle",
        action,
        "POSTROUTING",
        "-o",
        cable,
        "-j",
        "NFQUEUE",
        "--queue-num",
        &queue,
        "--queue-bypass",
    ]))
    .map(|_| ())
}

/// One node's delay and loss: the NFQUEUE rule in its namespace and the thread that handles
/// the queue. [`Shaper::stop`] removes both, releasing what the thread holds.
pub struct Shaper {
    ns: String,
    cable: String,
    /// The queue number of its rule and socket.
    num: u16,
    shape: Arc<Mutex<Shape>>,
    stop: Arc<AtomicBool>,
    seen: Arc<AtomicU64>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Shaper {
    /// Binds the queue inside the namespace `ns` (its file `netns`) on a thread of its own,
    /// then adds the rule that fills it with what leaves on `cable`. `seed` seeds the draws
    /// of jitter and loss.
    pub fn start(
        ns: &str,
        netns: &Path,
        cable: &str,
        shape: Shape,
        seed: u64,
    ) -> anyhow::Result<Shaper> {
        let mut shaper = Shaper {
            ns: ns.to_string(),
            cable: cable.to_string(),
            num: next_queue_num(),
            shape: Arc::new(Mutex::new(shape)),
            stop: Arc::new(AtomicBool::new(false)),
            seen: Arc::new(AtomicU64::new(0)),
            thread: None,
        };
        shaper.thread = Some(shaper.spawn(netns.to_path_buf(), seed)?);
        rule(ns, cable, shaper.num, "-A").with_context(|| {
            format!(
                "adding the NFQUEUE rule in {ns} (needs iptables with the nf_tables backend and \
                 a kernel with NETFILTER_XT_TARGET_NFQUEUE and NFT_COMPAT)"
            )
        })?;
        Ok(shaper)
    }

    /// Starts the handler thread and waits until its queue is bound (or failed to be).
    fn spawn(&self, netns: PathBuf, seed: u64) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let (shape, stop, seen) = (self.shape.clone(), self.stop.clone(), self.seen.clone());
        let (ns, num) = (self.ns.clone(), self.num);
        let thread = std::thread::Builder::new()
            .name(format!("nfqueue-{ns}"))
            .spawn(move || {
                let queue = open_in(&netns, &ns, num);
                let failed = queue.as_ref().err().map(|e| anyhow::anyhow!("{e:#}"));
                let _ = ready_tx.send(failed);
                let mut queue = queue?;
                let mut rng = Rng::new(seed);
                serve(&mut queue, &shape, &stop, &seen, &mut rng)
                    .with_context(|| format!("the NFQUEUE handler of {ns}"))
            })
            .context("starting the NFQUEUE handler thread")?;
        match ready_rx.recv() {
            Ok(None) => Ok(thread),
            Ok(Some(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => Err(anyhow::anyhow!(
                "the NFQUEUE handler thread of {} ended before binding its queue",
                self.ns
            )),
        }
    }

    /// Changes the delay, jitter and loss of the packets still to come.
    pub fn set(&self, shape: Shape) {
        *self.shape.lock().unwrap_or_else(|p| p.into_inner()) = shape;
    }

    /// How many packets the handler has received so far.
    pub fn seen(&self) -> u64 {
        self.seen.load(Ordering::SeqCst)
    }

    /// Deletes the rule (no packet is queued any more), then stops the thread, which accepts
    /// every packet it still holds. Fails if the rule could not be deleted or the thread had
    /// failed (its packets then passed unshaped, `--queue-bypass`).
    pub fn stop(mut self) -> anyhow::Result<()> {
        let deleted = rule(&self.ns, &self.cable, self.num, "-D")
            .with_context(|| format!("deleting the NFQUEUE rule in {}", self.ns));
        let ended = self.end();
        deleted.and(ended)
    }

    fn end(&mut self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| {
                anyhow::anyhow!("the NFQUEUE handler thread of {} panicked", self.ns)
            })?,
            None => Ok(()),
        }
    }
}

impl Drop for Shaper {
    fn drop(&mut self) {
        // Only after a failed `start` or when the whole network goes: the namespace (and
        // its rule) is deleted next.
        let _ = self.end();
    }
}

/// Opens a queue socket inside the namespace at `netns` (this thread enters it for good) and
/// binds the queue, metadata only, with room for [`QUEUE_MAX_LEN`] packets.
fn open_in(netns: &Path, ns: &str, num: u16) -> anyhow::Result<Queue> {
    let file = File::open(netns)
        .with_context(|| format!("opening the network namespace {}", netns.display()))?;
    // SAFETY: setns on this thread only, with a descriptor we own.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("entering the network namespace {ns}"));
    }
    let bound = || -> std::io::Result<Queue> {
        let mut queue = Queue::open()?;
        queue.bind(num)?;
        queue.set_copy_range(num, 0)?;
        queue.set_queue_max_len(num, QUEUE_MAX_LEN)?;
        queue.set_fail_open(num, false)?;
        queue.set_nonblocking(true);
        Ok(queue)
    };
    bound().with_context(|| {
        format!(
            "binding netfilter queue {num} in {ns} (needs root and a kernel with \
             NETFILTER_NETLINK_QUEUE)"
        )
    })
}

/// The handler's loop until `stop`: new packets dropped or held, due ones accepted. However
/// it ends, everything still held (or queued) is accepted before the socket closes (closing
/// would drop them).
fn serve(
    queue: &mut Queue,
    shape: &Mutex<Shape>,
    stop: &AtomicBool,
    seen: &AtomicU64,
    rng: &mut Rng,
) -> anyhow::Result<()> {
    let mut held: VecDeque<(Instant, Message)> = VecDeque::new();
    let mut result = Ok(());
    while result.is_ok() && !stop.load(Ordering::SeqCst) {
        let current = *shape.lock().unwrap_or_else(|p| p.into_inner());
        result = take_new(queue, &mut held, current, seen, rng)
            .and_then(|()| release(queue, &mut held, Instant::now()));
        let next = held.front().map(|(at, _)| *at);
        let wait = next.map_or(TICK, |at| at.saturating_duration_since(Instant::now()));
        std::thread::sleep(wait.min(TICK));
    }
    // Packets queued before the rule went are still handed over: held with the rest.
    let current = Shape {
        delay_ms: 0,
        jitter_ms: 0,
        loss_pct: 0,
    };
    let drained = take_new(queue, &mut held, current, seen, rng);
    let released = release(queue, &mut held, far_future());
    result.and(drained).and(released)
}

/// A time after every release time.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(24 * 3600)
}

/// Receives every packet waiting: each one lost is dropped at once, the others held until
/// their release time.
fn take_new(
    queue: &mut Queue,
    held: &mut VecDeque<(Instant, Message)>,
    shape: Shape,
    seen: &AtomicU64,
    rng: &mut Rng,
) -> anyhow::Result<()> {
    loop {
        let mut msg = match queue.recv() {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("receiving from the netfilter queue"),
        };
        seen.fetch_add(1, Ordering::SeqCst);
        if lost(shape, rng) {
            msg.set_verdict(Verdict::Drop);
            queue
                .verdict(msg)
                .context("dropping a packet (verdict to the netfilter queue)")?;
        } else {
            let at = release_at(held.back().map(|(t, _)| *t), Instant::now(), shape, rng);
            held.push_back((at, msg));
        }
    }
}

/// Accepts, in order, every held packet due by `now`.
fn release(
    queue: &mut Queue,
    held: &mut VecDeque<(Instant, Message)>,
    now: Instant,
) -> anyhow::Result<()> {
    while held.front().is_some_and(|(at, _)| *at <= now) {
        if let Some((_, mut msg)) = held.pop_front() {
            msg.set_verdict(Verdict::Accept);
            queue
                .verdict(msg)
                .context("accepting a packet (verdict to the netfilter queue)")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(delay_ms: u32, jitter_ms: u32, loss_pct: u32) -> Shape {
        Shape {
            delay_ms,
            jitter_ms,
            loss_pct,
        }
    }

    #[test]
    fn release_times_stay_within_delay_and_jitter_and_never_go_back() {
        let mut rng = Rng::new(3);
        let t0 = Instant::now();
        let s = shape(100, 40, 0);
        let mut prev = None;
        let mut spread = std::collections::BTreeSet::new();
        for k in 0..1_000u64 {
            let now = t0 + Duration::from_millis(k);
            let at = release_at(prev, now, s, &mut rng);
            assert!(
                at >= now + Duration::from_millis(60),
                "packet {k} left early"
            );
            assert!(
                prev.is_none_or(|p| at >= p),
                "packet {k} overtook the one before"
            );
            // Held behind the one before, it still leaves by its own latest time.
            assert!(
                at <= now + Duration::from_millis(140),
                "packet {k} held too long"
            );
            spread.insert((at - now).as_millis());
            prev = Some(at);
        }
        assert!(spread.len() > 10, "no jitter drawn: {spread:?}");
    }

    #[test]
    fn jitter_larger_than_the_delay_never_releases_before_arrival() {
        let mut rng = Rng::new(9);
        let now = Instant::now();
        for _ in 0..1_000 {
            assert!(release_at(None, now, shape(5, 50, 0), &mut rng) >= now);
        }
    }

    #[test]
    fn loss_drops_its_share() {
        let mut rng = Rng::new(5);
        let count =
            |pct, rng: &mut Rng| (0..10_000).filter(|_| lost(shape(0, 0, pct), rng)).count();
        assert_eq!(count(0, &mut rng), 0);
        assert_eq!(count(100, &mut rng), 10_000);
        let some = count(20, &mut rng);
        assert!(
            (1_700..2_300).contains(&some),
            "20% loss dropped {some} of 10000"
        );
    }

    /// A UDP socket bound to `addr` inside the namespace at `netns`.
    fn udp_in(netns: &Path, addr: String) -> std::net::UdpSocket {
        sys::on_netns_thread(netns, move || Ok(std::net::UdpSocket::bind(addr)?)).unwrap()
    }

    /// Against real packets: with jitter twice the delay's size, 300 datagrams node 0 sends
    /// still arrive all and in order, and later than the delay's lower end.
    #[test]
    fn jittered_packets_arrive_in_order() {
        let net = crate::faults::FaultNet::new(2).unwrap();
        let s = shape(30, 25, 0);
        let shaper = Shaper::start(&net.node_ns(0), &net.netns_path(0), "eth0", s, 1).unwrap();
        let rx = udp_in(&net.netns_path(1), format!("{}:5000", net.ip(1)));
        rx.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let tx = udp_in(&net.netns_path(0), format!("{}:0", net.ip(0)));
        let sent_at = Instant::now();
        for k in 0..300u32 {
            tx.send_to(&k.to_be_bytes(), format!("{}:5000", net.ip(1)))
                .unwrap();
            std::thread::sleep(Duration::from_micros(300));
        }
        let mut got = Vec::new();
        let mut buf = [0u8; 16];
        while got.len() < 300 {
            let n = rx.recv(&mut buf).expect("a datagram missing");
            got.push(u32::from_be_bytes(buf[..n].try_into().unwrap()));
            if got.len() == 1 {
                assert!(
                    sent_at.elapsed() >= Duration::from_millis(5),
                    "the first came at once"
                );
            }
        }
        assert_eq!(got, (0..300).collect::<Vec<_>>(), "reordered or lost");
        assert!(
            shaper.seen() >= 300,
            "the handler saw {} packets",
            shaper.seen()
        );
        shaper.stop().unwrap();
    }

    /// A process started while a shaper's queue socket is open inherits the socket (nfq opens
    /// it without `SOCK_CLOEXEC`) and keeps its queue bound after the shaper stopped; a new
    /// shaper in the same namespace still starts, and shapes (CI's parallel tests once failed
    /// here with EPERM, when every shaper bound the same queue number).
    #[test]
    fn a_new_shaper_starts_where_a_stopped_ones_queue_is_still_held_by_a_child() {
        let net = crate::faults::FaultNet::new(2).unwrap();
        let s = shape(0, 0, 0);
        let first = Shaper::start(&net.node_ns(0), &net.netns_path(0), "eth0", s, 1).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        first.stop().unwrap();
        let second = Shaper::start(&net.node_ns(0), &net.netns_path(0), "eth0", s, 2);
        let _ = child.kill();
        let _ = child.wait();
        let second = second.unwrap();
        let rx = udp_in(&net.netns_path(1), format!("{}:5001", net.ip(1)));
        rx.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let tx = udp_in(&net.netns_path(0), format!("{}:0", net.ip(0)));
        tx.send_to(b"x", format!("{}:5001", net.ip(1))).unwrap();
        let mut buf = [0u8; 4];
        rx.recv(&mut buf)
            .expect("the datagram did not pass the second shaper");
        assert!(second.seen() >= 1, "the second shaper saw no packet");
        second.stop().unwrap();
    }

    /// Against real packets: a heal accepts what the handler holds at once (a ping under 2 s
    /// of delay answers soon after the heal instead of after the delay or never), and the
    /// rule is gone afterwards.
    #[test]
    fn stopping_releases_the_held_packets_and_removes_the_rule() {
        let net = crate::faults::FaultNet::new(2).unwrap();
        let s = shape(2_000, 0, 0);
        let shaper = Shaper::start(&net.node_ns(0), &net.netns_path(0), "eth0", s, 1).unwrap();
        let ping = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &net.node_ns(0),
                "ping",
                "-q",
                "-n",
                "-c",
                "1",
            ])
            .args(["-W", "5", &net.ip(1)])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let healed = Instant::now();
        shaper.stop().unwrap();
        let out = ping.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "the held ping was dropped at the heal"
        );
        assert!(
            healed.elapsed() < Duration::from_millis(1_000),
            "the held ping came back {:?} after the heal",
            healed.elapsed()
        );
        let rules = sys::run(std::process::Command::new("ip").args([
            "netns",
            "exec",
            &net.node_ns(0),
            "iptables",
            "-t",
            "mangle",
            "-S",
            "POSTROUTING",
        ]))
        .unwrap();
        assert!(
            !rules.contains("NFQUEUE"),
            "the rule outlived the heal: {rules}"
        );
    }
}

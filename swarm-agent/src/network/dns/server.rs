//! [`DnsServer`]: the node's embedded DNS server, one pair of listeners per task.
//!
//! The server holds the current [`Index`] (rebuilt on a blocking thread whenever the
//! [`ViewHandle`] publishes a new view) and the [`Forwarder`]. [`DnsServer::serve_task`] opens
//! a UDP socket and a TCP listener on `127.0.0.11:0` inside the task's network namespace (on a
//! short-lived thread that joined it: a socket stays in the namespace it was created in). Each
//! listener belongs to one task, so the networks of the asking task are known from the socket a
//! question arrived on; the eBPF programs of the task's cgroup redirect `127.0.0.11:53` to these
//! ports.
//!
//! Every listener of the node is served by one thread of its own (`swarm-dns`, a
//! current-thread tokio runtime), not by the agent's multi-threaded runtime: measured with
//! `cargo xtask bench dns` on 2 cores, the agent's runtime (2 workers) gave 182k q/s and a p99
//! of 700 µs at 50k q/s, a single worker 241k q/s and 321 µs (dnsmasq, single-threaded
//! too: 171k q/s, 1 ms): the second worker's wake-ups and task migrations cost more than they
//! bring to a loop that is one socket. It also keeps answers independent of what else the
//! agent's runtime is busy with. Forwards run on that thread too (they only wait on sockets);
//! index builds and resolv.conf reads go to its blocking pool, whose threads never change
//! namespace (only the short-lived binding threads do).
//!
//! The serving loops keep their own snapshot of the index and of the task's scope and only
//! look at the shared state when its version changed (an atomic load per question); a local
//! answer is written into a buffer the loop reuses. Forwarded questions get a tokio task of
//! their own so that a slow upstream never holds up local answers.

use std::collections::HashMap;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::runtime::Handle;
use tokio::sync::{oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::{AbortHandle, JoinSet};

use super::forward::{ForwardConfig, Forwarder, Transport};
use super::metrics::METRICS;
use super::records::{Answer, Index, Scope};
use super::wire::{self, Reject};
use crate::network::view::{NetworkView, ViewHandle};

/// Where tasks send their questions (Docker's address).
pub const DNS_ADDR: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);

/// A TCP client that sends nothing for this long is disconnected.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// TCP connections per task at a time; more are closed at once.
const MAX_TCP_CONNECTIONS: usize = 64;
/// Receive buffer of a task's UDP socket (the kernel doubles it for its bookkeeping).
const UDP_RCVBUF: libc::c_int = 1 << 20;
/// Largest UDP query read (bigger datagrams are cut, then rejected as malformed).
const UDP_BUF: usize = 4096;

#[derive(Clone, Debug)]
pub struct DnsConfig {
    pub forward: ForwardConfig,
    /// How often the resolv.conf is checked for changes.
    pub resolv_conf_poll: Duration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            forward: ForwardConfig::default(),
            resolv_conf_poll: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("starting the embedded DNS server's thread: {source}")]
    Start { source: io::Error },
    #[error("task {task_id} already has DNS listeners; drop its TaskDns before serving it again")]
    AlreadyServed { task_id: String },
    #[error("DNS listeners of task {task_id}: {what} in the network namespace {path}: {source}")]
    Netns {
        task_id: String,
        path: PathBuf,
        what: &'static str,
        source: io::Error,
    },
}

struct TaskEntry {
    networks: watch::Sender<Arc<[String]>>,
}

struct Shared {
    index: watch::Sender<Arc<Index>>,
    forwarder: Arc<Forwarder>,
    tasks: Mutex<HashMap<String, Arc<TaskEntry>>>,
    /// The `swarm-dns` thread's runtime.
    rt: Handle,
    /// Dropped with the last reference: the thread ends.
    _stop: oneshot::Sender<()>,
}

impl Shared {
    fn tasks(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<TaskEntry>>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The embedded DNS server of the node. Cheap to clone.
#[derive(Clone)]
pub struct DnsServer {
    shared: Arc<Shared>,
}

/// The listeners of one task: the eBPF side redirects the task's `127.0.0.11:53` UDP to
/// `127.0.0.11:udp_port` and TCP to `127.0.0.11:tcp_port`. Dropping it stops serving them.
pub struct TaskDns {
    pub udp_port: u16,
    pub tcp_port: u16,
    _guard: TaskGuard,
}

impl std::fmt::Debug for TaskDns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskDns")
            .field("task_id", &self._guard.task_id)
            .field("udp_port", &self.udp_port)
            .field("tcp_port", &self.tcp_port)
            .finish()
    }
}

struct TaskGuard {
    shared: Arc<Shared>,
    task_id: String,
    entry: Arc<TaskEntry>,
    loops: Vec<AbortHandle>,
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        for l in &self.loops {
            l.abort();
        }
        let mut tasks = self.shared.tasks();
        if tasks
            .get(&self.task_id)
            .is_some_and(|e| Arc::ptr_eq(e, &self.entry))
        {
            tasks.remove(&self.task_id);
        }
    }
}

impl DnsServer {
    /// A server answering from `view` (and every view it publishes later), forwarding as
    /// `config` says, served by a thread of its own that ends when the last clone of the server
    /// and the last [`TaskDns`] are dropped.
    pub fn new(config: DnsConfig, view: &ViewHandle) -> Result<DnsServer, DnsError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("swarm-dns-blocking")
            .build()
            .map_err(|source| DnsError::Start { source })?;
        let rt = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("swarm-dns".into())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })
            .map_err(|source| DnsError::Start { source })?;
        let mut views = view.subscribe();
        let first = Index::build(&views.borrow_and_update());
        log_skipped(&first);
        let shared = Arc::new(Shared {
            index: watch::channel(Arc::new(first)).0,
            forwarder: Arc::new(Forwarder::new(config.forward)),
            tasks: Mutex::new(HashMap::new()),
            rt: rt.clone(),
            _stop: stop,
        });

        let weak = Arc::downgrade(&shared);
        rt.spawn(async move {
            while views.changed().await.is_ok() {
                let v: Arc<NetworkView> = views.borrow_and_update().clone();
                let built = tokio::task::spawn_blocking(move || Index::build(&v)).await;
                let Some(shared) = weak.upgrade() else { break };
                match built {
                    Ok(index) => {
                        log_skipped(&index);
                        shared.index.send_replace(Arc::new(index));
                    }
                    Err(e) => tracing::error!("building the DNS index: {e}"),
                }
            }
        });

        let weak = Arc::downgrade(&shared);
        let every = config.resolv_conf_poll.max(Duration::from_millis(100));
        rt.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(shared) = weak.upgrade() else { break };
                let f = shared.forwarder.clone();
                drop(shared);
                let _ = tokio::task::spawn_blocking(move || f.reload()).await;
            }
        });
        Ok(DnsServer { shared })
    }

    /// The index answers come from now.
    pub fn index(&self) -> Arc<Index> {
        self.shared.index.borrow().clone()
    }

    /// Rebuilds the index from `view` now (the subscription does it on its own; this is for
    /// callers that hold a view outside the [`ViewHandle`]).
    pub fn rebuild(&self, view: &NetworkView) {
        let index = Index::build(view);
        log_skipped(&index);
        self.shared.index.send_replace(Arc::new(index));
    }

    /// The upstreams forwarded to.
    pub fn upstreams(&self) -> Arc<[std::net::SocketAddr]> {
        self.shared.forwarder.upstreams()
    }

    /// Opens the listeners of task `task_id` in the network namespace at `netns` (a bind
    /// mount, as `netns::create` makes) and serves them for a task attached to `network_ids`.
    pub async fn serve_task(
        &self,
        task_id: &str,
        netns: &Path,
        network_ids: Vec<String>,
    ) -> Result<TaskDns, DnsError> {
        if self.shared.tasks().contains_key(task_id) {
            return Err(DnsError::AlreadyServed {
                task_id: task_id.to_string(),
            });
        }
        let netns_err = |what: &'static str, source: io::Error| DnsError::Netns {
            task_id: task_id.to_string(),
            path: netns.to_path_buf(),
            what,
            source,
        };
        let (udp, tcp) = bind_in_netns(netns)
            .await
            .map_err(|(what, e)| netns_err(what, e))?;
        let port = |r: io::Result<std::net::SocketAddr>| r.map(|a| a.port());
        let udp_port = port(udp.local_addr()).map_err(|e| netns_err("reading the UDP port", e))?;
        let tcp_port = port(tcp.local_addr()).map_err(|e| netns_err("reading the TCP port", e))?;

        let entry = Arc::new(TaskEntry {
            networks: watch::channel(Arc::from(network_ids)).0,
        });
        {
            let mut tasks = self.shared.tasks();
            if tasks.contains_key(task_id) {
                return Err(DnsError::AlreadyServed {
                    task_id: task_id.to_string(),
                });
            }
            tasks.insert(task_id.to_string(), entry.clone());
        }
        let mut guard = TaskGuard {
            shared: self.shared.clone(),
            task_id: task_id.to_string(),
            entry: entry.clone(),
            loops: Vec::new(),
        };
        let (udp, tcp) = {
            let _rt = self.shared.rt.enter();
            let udp =
                UdpSocket::from_std(udp).map_err(|e| netns_err("registering the UDP socket", e))?;
            let tcp = TcpListener::from_std(tcp)
                .map_err(|e| netns_err("registering the TCP listener", e))?;
            (udp, tcp)
        };
        let lens = Lens::new(self.shared.index.subscribe(), entry.networks.subscribe());
        let fwd = self.shared.forwarder.clone();
        let rt = &self.shared.rt;
        guard.loops.push(
            rt.spawn(udp_loop(Arc::new(udp), lens.clone(), fwd.clone()))
                .abort_handle(),
        );
        guard
            .loops
            .push(rt.spawn(tcp_loop(tcp, lens, fwd)).abort_handle());
        tracing::debug!(task_id, udp_port, tcp_port, "embedded DNS serving");
        Ok(TaskDns {
            udp_port,
            tcp_port,
            _guard: guard,
        })
    }

    /// Changes the networks of a served task (network attached or detached); returns false
    /// when the task has no listeners.
    pub fn update_task_networks(&self, task_id: &str, network_ids: Vec<String>) -> bool {
        match self.shared.tasks().get(task_id) {
            Some(e) => {
                e.networks.send_replace(Arc::from(network_ids));
                true
            }
            None => false,
        }
    }
}

fn log_skipped(index: &Index) {
    for s in index.skipped() {
        tracing::warn!("embedded DNS leaves out {s}");
    }
}

type BindResult = Result<(std::net::UdpSocket, std::net::TcpListener), (&'static str, io::Error)>;

/// Opens the sockets on a new thread that joins the namespace and ends right after (never a
/// runtime or pool thread: it would stay in the task's namespace).
async fn bind_in_netns(netns: &Path) -> BindResult {
    let (tx, rx) = oneshot::channel();
    let p = netns.to_path_buf();
    std::thread::Builder::new()
        .name("dns-netns".into())
        .spawn(move || {
            let _ = tx.send(bind_on_this_thread(&p));
        })
        .map_err(|e| ("starting the thread that joins it", e))?;
    rx.await.unwrap_or_else(|_| {
        Err((
            "joining it (the thread panicked)",
            io::Error::other("thread panicked"),
        ))
    })
}

fn bind_on_this_thread(p: &Path) -> BindResult {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(p).map_err(|e| ("opening", e))?;
    // SAFETY: setns on a valid fd; it changes this short-lived thread only.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(("setns(CLONE_NEWNET)", io::Error::last_os_error()));
    }
    let udp =
        std::net::UdpSocket::bind((DNS_ADDR, 0)).map_err(|e| ("binding UDP 127.0.0.11:0", e))?;
    udp.set_nonblocking(true)
        .map_err(|e| ("making the UDP socket non-blocking", e))?;
    grow_receive_buffer(&udp);
    let tcp =
        std::net::TcpListener::bind((DNS_ADDR, 0)).map_err(|e| ("binding TCP 127.0.0.11:0", e))?;
    tcp.set_nonblocking(true)
        .map_err(|e| ("making the TCP listener non-blocking", e))?;
    Ok((udp, tcp))
}

/// Makes room for bursts of questions (an application resolving many names at once): with
/// the default buffer (~200 KiB, a few hundred small datagrams) the kernel drops the rest and
/// the client waits its timeout (5 s for glibc) before asking again. The memory is only used
/// while datagrams wait. Root may exceed `net.core.rmem_max` (SO_RCVBUFFORCE); otherwise the
/// kernel caps the value, which is fine too.
fn grow_receive_buffer(sock: &std::net::UdpSocket) {
    use std::os::fd::AsRawFd;
    let size: libc::c_int = UDP_RCVBUF;
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: setsockopt on a valid socket with a pointer to a c_int and its size.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return;
        }
    }
}

/// A serving loop's snapshot of the index and of its task's scope.
#[derive(Clone)]
struct Lens {
    index_rx: watch::Receiver<Arc<Index>>,
    nets_rx: watch::Receiver<Arc<[String]>>,
    index: Arc<Index>,
    nets: Arc<[String]>,
    scope: Scope,
}

impl Lens {
    fn new(
        mut index_rx: watch::Receiver<Arc<Index>>,
        mut nets_rx: watch::Receiver<Arc<[String]>>,
    ) -> Lens {
        let index = index_rx.borrow_and_update().clone();
        let nets = nets_rx.borrow_and_update().clone();
        let scope = index.scope(&nets);
        Lens {
            index_rx,
            nets_rx,
            index,
            nets,
            scope,
        }
    }

    fn refresh(&mut self) {
        let i = self.index_rx.has_changed().unwrap_or(false);
        let n = self.nets_rx.has_changed().unwrap_or(false);
        if i {
            self.index = self.index_rx.borrow_and_update().clone();
        }
        if n {
            self.nets = self.nets_rx.borrow_and_update().clone();
        }
        if i || n {
            self.scope = self.index.scope(&self.nets);
        }
    }
}

/// What to do with one received message ([`respond`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `out` holds the answer.
    Reply,
    Drop,
    /// Ask the node's resolvers.
    Forward {
        client_limit: usize,
    },
}

fn handle(lens: &Lens, msg: &[u8], tcp: bool, rotate: usize, out: &mut Vec<u8>) -> Outcome {
    respond(&lens.index, &lens.scope, msg, tcp, rotate, out)
}

/// The request handling of one message from a task (what the serving loops run on every
/// datagram or TCP message): parsed, answered from `index` within the task's `scope` into
/// `out`, dropped, or left to the node's resolvers. Public for the fuzz target `dns_query`.
pub fn respond(
    index: &Index,
    scope: &Scope,
    msg: &[u8],
    tcp: bool,
    rotate: usize,
    out: &mut Vec<u8>,
) -> Outcome {
    let m = &*METRICS;
    let req = match wire::parse(msg) {
        Ok(r) => r,
        Err(Reject::Drop) => return Outcome::Drop,
        Err(Reject::Error {
            meta,
            question,
            edns,
            rcode,
        }) => {
            m.formerr.inc();
            wire::write_error(out, &meta, question, edns, rcode, false);
            return Outcome::Reply;
        }
    };
    match index.answer(&req.query, scope) {
        Answer::Local(records) => {
            let limit = if tcp {
                usize::from(u16::MAX)
            } else {
                req.udp_limit()
            };
            wire::write_records(out, &req, &records, rotate, limit);
            if records.is_empty() {
                m.nodata.inc();
            } else {
                m.local.inc();
            }
            Outcome::Reply
        }
        Answer::NxDomain => {
            m.nxdomain.inc();
            wire::write_error(
                out,
                &req.meta,
                Some(req.question),
                req.edns,
                ResponseCode::NXDomain,
                true,
            );
            Outcome::Reply
        }
        Answer::Forward => Outcome::Forward {
            client_limit: req.udp_limit(),
        },
    }
}

/// The upstream's answer, or a SERVFAIL saying we could not get one.
async fn forward_or_fail(fwd: &Forwarder, msg: &[u8], transport: Transport) -> Option<Vec<u8>> {
    match fwd.forward(msg, transport).await {
        Ok(answer) => {
            METRICS.forwarded.inc();
            Some(answer)
        }
        Err(e) => {
            METRICS.forward_error.inc();
            tracing::debug!("embedded DNS answers SERVFAIL: {e}");
            let req = wire::parse(msg).ok()?;
            let mut out = Vec::new();
            wire::write_error(
                &mut out,
                &req.meta,
                Some(req.question),
                req.edns,
                ResponseCode::ServFail,
                false,
            );
            (!out.is_empty()).then_some(out)
        }
    }
}

async fn udp_loop(sock: Arc<UdpSocket>, mut lens: Lens, fwd: Arc<Forwarder>) {
    let mut buf = vec![0u8; UDP_BUF];
    let mut out = Vec::with_capacity(1500);
    let mut rotate = 0usize;
    let mut errors = 0u64;
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(r) => {
                errors = 0;
                r
            }
            Err(e) => {
                errors += 1;
                if errors == 1 {
                    tracing::warn!("embedded DNS: receiving on UDP: {e}");
                }
                if errors > 100 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                continue;
            }
        };
        lens.refresh();
        rotate = rotate.wrapping_add(1);
        match handle(&lens, &buf[..n], false, rotate, &mut out) {
            Outcome::Reply => {
                if !out.is_empty() {
                    if let Err(e) = sock.send_to(&out, peer).await {
                        tracing::debug!("embedded DNS: answering {peer}: {e}");
                    }
                }
            }
            Outcome::Drop => {}
            Outcome::Forward { client_limit } => {
                let (sock, fwd, q) = (sock.clone(), fwd.clone(), buf[..n].to_vec());
                tokio::spawn(async move {
                    let transport = Transport::Udp { client_limit };
                    if let Some(answer) = forward_or_fail(&fwd, &q, transport).await {
                        if let Err(e) = sock.send_to(&answer, peer).await {
                            tracing::debug!("embedded DNS: answering {peer}: {e}");
                        }
                    }
                });
            }
        }
    }
}

async fn tcp_loop(listener: TcpListener, lens: Lens, fwd: Arc<Forwarder>) {
    let slots = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    // Dropping the set (the loop aborted) aborts every connection.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => match slots.clone().try_acquire_owned() {
                    Ok(permit) => {
                        conns.spawn(tcp_conn(stream, lens.clone(), fwd.clone(), permit));
                    }
                    Err(_) => {
                        tracing::debug!("embedded DNS: more than {MAX_TCP_CONNECTIONS} TCP clients, closing one");
                    }
                },
                Err(e) => {
                    tracing::debug!("embedded DNS: accepting on TCP: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn tcp_conn(
    mut s: TcpStream,
    mut lens: Lens,
    fwd: Arc<Forwarder>,
    _slot: OwnedSemaphorePermit,
) {
    let mut msg = Vec::new();
    let mut out = Vec::new();
    let mut frame = Vec::new();
    let mut rotate = 0usize;
    loop {
        let len = match tokio::time::timeout(TCP_IDLE, s.read_u16()).await {
            Ok(Ok(len)) => usize::from(len),
            _ => return,
        };
        msg.resize(len, 0);
        if !matches!(
            tokio::time::timeout(TCP_IDLE, s.read_exact(&mut msg)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        lens.refresh();
        rotate = rotate.wrapping_add(1);
        let forwarded;
        let answer: &[u8] = match handle(&lens, &msg, true, rotate, &mut out) {
            Outcome::Reply => &out,
            Outcome::Drop => continue,
            Outcome::Forward { .. } => match forward_or_fail(&fwd, &msg, Transport::Tcp).await {
                Some(a) => {
                    forwarded = a;
                    &forwarded
                }
                None => continue,
            },
        };
        let Ok(n) = u16::try_from(answer.len()) else {
            return;
        };
        if n == 0 {
            continue;
        }
        frame.clear();
        frame.extend_from_slice(&n.to_be_bytes());
        frame.extend_from_slice(answer);
        if s.write_all(&frame).await.is_err() {
            return;
        }
    }
}

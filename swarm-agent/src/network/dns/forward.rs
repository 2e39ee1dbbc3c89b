//! Forwarding of the questions the index does not answer to the node's resolvers.
//!
//! Upstreams come from a resolv.conf (default `/etc/resolv.conf`): the first three
//! `nameserver` lines (Docker's and glibc's limit), re-read when the file changes. Forwarding
//! sockets are opened by the agent's runtime threads, so they live in the node's network
//! namespace, never in a task's: this is why loopback resolvers are **kept**. A
//! `127.0.0.53` systemd-resolved stub, a node-local dnsmasq or unbound on `127.0.0.1`, or the
//! `127.0.0.11` of a container the agent itself runs in are reachable from there and are what
//! the node itself uses (Docker does the same since it forwards from the host namespace:
//! `HostLoopback`). None of them can be us: we listen only inside task namespaces, and the
//! eBPF redirection of `127.0.0.11:53` applies to the tasks' cgroups, not to the agent. The
//! only nameservers skipped are those the node could not use either: unspecified addresses
//! (`0.0.0.0`, `::`) and link-local IPv6 with a `%zone`.
//!
//! Per question: at most 1024 forwards in flight on the node (beyond that SERVFAIL at once;
//! Docker counts per container and waits up to 4 s for a slot, then answers REFUSED), each upstream in order with a 4 s timeout, the next one on a
//! timeout, a network error, SERVFAIL or REFUSED (as Docker does). Every forward uses a new
//! socket (a random source port) and a random message id, restored to the client's before the
//! answer is relayed; an answer must come from the upstream, carry that id and echo the
//! question. A truncated UDP answer is asked again over TCP and relayed when it fits the
//! client's UDP limit (otherwise the truncated one is, and the client comes back over TCP); a
//! question that came over TCP is forwarded over TCP.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use hickory_proto::op::ResponseCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::Semaphore;

use super::metrics::METRICS;
use super::wire::{message_id, set_message_id, HEADER_LEN};

/// Docker's limits.
pub const MAX_UPSTREAMS: usize = 3;
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(4);
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;
/// Largest UDP answer read from an upstream.
const UDP_ANSWER_MAX: usize = 4096;

#[derive(Clone, Debug)]
pub struct ForwardConfig {
    /// Where the node's resolvers are listed.
    pub resolv_conf: PathBuf,
    /// Port of the upstreams (resolv.conf has no port; 53 except in tests).
    pub port: u16,
    /// Per upstream.
    pub timeout: Duration,
    pub max_in_flight: usize,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        ForwardConfig {
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            port: 53,
            timeout: DEFAULT_TIMEOUT,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        }
    }
}

/// How the question reached us, hence how to forward it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// The largest answer the client takes over UDP.
    Udp {
        client_limit: usize,
    },
    Tcp,
}

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("no nameserver in {path} that the agent can use; add one (at most {MAX_UPSTREAMS} are used)")]
    NoUpstream { path: PathBuf },
    #[error("more than {limit} forwarded questions in flight; the node's resolvers are slow or unreachable")]
    Busy { limit: usize },
    #[error("no answer from the node's resolvers ({tried}): {last}")]
    Failed { tried: String, last: String },
}

/// The nameservers of a resolv.conf, in order, at most [`MAX_UPSTREAMS`].
pub fn nameservers(resolv_conf: &str) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    for line in resolv_conf.lines() {
        let line = line.split(['#', ';']).next().unwrap_or("");
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(addr) = words.next() else { continue };
        if addr.contains('%') {
            // A link-local IPv6 with its zone: would need the interface's index.
            continue;
        }
        let Ok(ip) = addr.parse::<IpAddr>() else {
            continue;
        };
        if ip.is_unspecified() || out.contains(&ip) {
            continue;
        }
        out.push(ip);
        if out.len() == MAX_UPSTREAMS {
            break;
        }
    }
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    ino: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        ino: m.ino(),
    })
}

pub struct Forwarder {
    cfg: ForwardConfig,
    upstreams: RwLock<Arc<[SocketAddr]>>,
    stamp: Mutex<Option<Stamp>>,
    in_flight: Arc<Semaphore>,
}

/// Why one upstream gave no usable answer.
#[derive(Debug)]
enum Miss {
    Timeout,
    Io(io::Error),
    /// SERVFAIL or REFUSED.
    Code(ResponseCode),
}

impl std::fmt::Display for Miss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Miss::Timeout => write!(f, "timed out"),
            Miss::Io(e) => write!(f, "{e}"),
            Miss::Code(c) => write!(f, "answered {c}"),
        }
    }
}

impl Forwarder {
    pub fn new(cfg: ForwardConfig) -> Forwarder {
        let f = Forwarder {
            in_flight: Arc::new(Semaphore::new(cfg.max_in_flight.max(1))),
            cfg,
            upstreams: RwLock::new(Arc::from(Vec::new())),
            stamp: Mutex::new(None),
        };
        f.reload();
        f
    }

    pub fn config(&self) -> &ForwardConfig {
        &self.cfg
    }

    /// The upstreams in use.
    pub fn upstreams(&self) -> Arc<[SocketAddr]> {
        self.upstreams
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Re-reads the resolv.conf if it changed since the last read (or was never read).
    /// Returns whether the upstreams were read again.
    pub fn reload(&self) -> bool {
        let now = stamp(&self.cfg.resolv_conf);
        {
            let mut last = self.stamp.lock().unwrap_or_else(|e| e.into_inner());
            if now.is_some() && *last == now {
                return false;
            }
            *last = now;
        }
        let content = match std::fs::read_to_string(&self.cfg.resolv_conf) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(
                    path = %self.cfg.resolv_conf.display(),
                    "reading the node's resolvers: {e}; names outside the swarm get SERVFAIL until it is readable"
                );
                String::new()
            }
        };
        let ups: Vec<SocketAddr> = nameservers(&content)
            .into_iter()
            .map(|ip| SocketAddr::new(ip, self.cfg.port))
            .collect();
        if ups.is_empty() {
            tracing::warn!(
                path = %self.cfg.resolv_conf.display(),
                "no usable nameserver: names outside the swarm get SERVFAIL"
            );
        } else {
            tracing::info!(upstreams = ?ups, "embedded DNS forwards to the node's resolvers");
        }
        *self.upstreams.write().unwrap_or_else(|e| e.into_inner()) = Arc::from(ups);
        true
    }

    /// Forwards `query` (a parsed, valid query: header and one question) and returns the
    /// answer to relay, with the client's id.
    pub async fn forward(
        &self,
        query: &[u8],
        transport: Transport,
    ) -> Result<Vec<u8>, ForwardError> {
        let start = Instant::now();
        let res = self.forward_inner(query, transport).await;
        let took = start.elapsed().as_secs_f64();
        match &res {
            Ok(_) => METRICS.forward_answered.observe(took),
            Err(_) => METRICS.forward_failed.observe(took),
        }
        res
    }

    async fn forward_inner(
        &self,
        query: &[u8],
        transport: Transport,
    ) -> Result<Vec<u8>, ForwardError> {
        let ups = self.upstreams();
        if ups.is_empty() {
            return Err(ForwardError::NoUpstream {
                path: self.cfg.resolv_conf.clone(),
            });
        }
        let Ok(_permit) = self.in_flight.clone().try_acquire_owned() else {
            return Err(ForwardError::Busy {
                limit: self.cfg.max_in_flight,
            });
        };
        let client_id = message_id(query).unwrap_or(0);
        let mut q = query.to_vec();
        let id: u16 = rand::random();
        set_message_id(&mut q, id);
        let mut misses = Vec::new();
        for &up in ups.iter() {
            let got = match transport {
                Transport::Udp { client_limit } => {
                    self.exchange_udp(up, &q, id, client_limit).await
                }
                Transport::Tcp => self.exchange_tcp(up, &q, id).await,
            };
            match got {
                Ok(mut answer) => {
                    set_message_id(&mut answer, client_id);
                    return Ok(answer);
                }
                Err(m) => {
                    tracing::debug!(upstream = %up, "forwarded question: {m}");
                    misses.push(format!("{up}: {m}"));
                }
            }
        }
        let tried = ups
            .iter()
            .map(|u| u.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        Err(ForwardError::Failed {
            tried,
            last: misses.join("; "),
        })
    }

    /// An answer (or a miss) from `up` over UDP, asked again over TCP when truncated.
    async fn exchange_udp(
        &self,
        up: SocketAddr,
        q: &[u8],
        id: u16,
        client_limit: usize,
    ) -> Result<Vec<u8>, Miss> {
        let deadline = tokio::time::Instant::now() + self.cfg.timeout;
        let bind: SocketAddr = match up {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let sock = UdpSocket::bind(bind).await.map_err(Miss::Io)?;
        sock.connect(up).await.map_err(Miss::Io)?;
        sock.send(q).await.map_err(Miss::Io)?;
        // Servers that ignore EDNS may send more than 512 bytes: take up to 4 KiB, and ask
        // over TCP when that is not enough.
        let mut buf = vec![0u8; UDP_ANSWER_MAX];
        let answer = loop {
            let n = match tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
                Err(_) => return Err(Miss::Timeout),
                Ok(Err(e)) => return Err(Miss::Io(e)),
                Ok(Ok(n)) => n,
            };
            if matches_question(&buf[..n], q, id) {
                buf.truncate(n);
                break buf;
            }
            // Not our answer (late, spoofed, garbage): keep waiting until the deadline.
        };
        check_code(&answer)?;
        if answer.len() == UDP_ANSWER_MAX {
            // Perhaps cut by our buffer: only the TCP answer is certainly whole.
            return self.exchange_tcp(up, q, id).await;
        }
        if answer[2] & 0x02 == 0 {
            return Ok(answer);
        }
        // Truncated: the whole answer over TCP, if the client can take it over UDP.
        match self.exchange_tcp(up, q, id).await {
            Ok(full) if full.len() <= client_limit => Ok(full),
            Ok(_) => Ok(answer),
            Err(m) => {
                tracing::debug!(upstream = %up, "TCP retry of a truncated answer: {m}");
                Ok(answer)
            }
        }
    }

    async fn exchange_tcp(&self, up: SocketAddr, q: &[u8], id: u16) -> Result<Vec<u8>, Miss> {
        let fut = async {
            let mut s = TcpStream::connect(up).await.map_err(Miss::Io)?;
            let len = u16::try_from(q.len()).map_err(|_| {
                Miss::Io(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "query too long",
                ))
            })?;
            let mut framed = Vec::with_capacity(q.len() + 2);
            framed.extend_from_slice(&len.to_be_bytes());
            framed.extend_from_slice(q);
            s.write_all(&framed).await.map_err(Miss::Io)?;
            loop {
                let len = s.read_u16().await.map_err(Miss::Io)? as usize;
                let mut buf = vec![0u8; len];
                s.read_exact(&mut buf).await.map_err(Miss::Io)?;
                if matches_question(&buf, q, id) {
                    check_code(&buf)?;
                    return Ok(buf);
                }
            }
        };
        tokio::time::timeout(self.cfg.timeout, fut)
            .await
            .unwrap_or(Err(Miss::Timeout))
    }
}

/// SERVFAIL and REFUSED make us try the next upstream.
fn check_code(answer: &[u8]) -> Result<(), Miss> {
    match answer[3] & 0x0F {
        2 => Err(Miss::Code(ResponseCode::ServFail)),
        5 => Err(Miss::Code(ResponseCode::Refused)),
        _ => Ok(()),
    }
}

/// Whether `answer` answers `q` (sent with `id`): a response with that id whose question is
/// ours (ASCII case ignored; some resolvers change it). Answers without a question are
/// accepted only with an error code (FORMERR, NOTIMP … from servers that drop it).
fn matches_question(answer: &[u8], q: &[u8], id: u16) -> bool {
    if answer.len() < HEADER_LEN || message_id(answer) != Some(id) || answer[2] & 0x80 == 0 {
        return false;
    }
    let qd = u16::from_be_bytes([answer[4], answer[5]]);
    if qd == 0 {
        return answer[3] & 0x0F != 0;
    }
    if qd != 1 {
        return false;
    }
    // The query's question is everything up to the end of its name + 4.
    let Some(qlen) = question_len(&q[HEADER_LEN..]) else {
        return false;
    };
    let ours = &q[HEADER_LEN..HEADER_LEN + qlen];
    answer
        .get(HEADER_LEN..HEADER_LEN + qlen)
        .is_some_and(|theirs| theirs.eq_ignore_ascii_case(ours))
}

fn question_len(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    loop {
        let len = *buf.get(i)? as usize;
        if len == 0 {
            let end = i + 1 + 4;
            return (end <= buf.len()).then_some(end);
        }
        if len & 0xC0 != 0 {
            return None;
        }
        i += 1 + len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_nameservers_keep_loopback_and_take_three() {
        let conf = "# generated\nsearch example.com\nnameserver 127.0.0.53\noptions edns0\n\
                    nameserver 10.0.0.2 # office\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\n\
                    nameserver 0.0.0.0\nnameserver bogus\nnameserver 2001:db8::53\n\
                    nameserver 10.0.0.3\n";
        let ips: Vec<String> = nameservers(conf).iter().map(|i| i.to_string()).collect();
        assert_eq!(ips, vec!["127.0.0.53", "10.0.0.2", "2001:db8::53"]);
        assert!(nameservers("").is_empty());
        assert!(nameservers("nameserver\n").is_empty());
    }

    #[test]
    fn dns_reload_follows_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        std::fs::write(&path, "nameserver 10.1.1.1\n").unwrap();
        let f = Forwarder::new(ForwardConfig {
            resolv_conf: path.clone(),
            port: 5353,
            ..Default::default()
        });
        assert_eq!(&*f.upstreams(), &["10.1.1.1:5353".parse().unwrap()]);
        assert!(!f.reload(), "unchanged file read again");
        std::fs::write(&path, "nameserver 10.1.1.2\nnameserver 10.1.1.3\n").unwrap();
        assert!(f.reload());
        assert_eq!(f.upstreams().len(), 2);
        std::fs::remove_file(&path).unwrap();
        f.reload();
        assert!(f.upstreams().is_empty());
    }

    #[test]
    fn dns_answers_must_match_the_question_and_id() {
        // id 0xabcd, RD, one question "a." A IN
        let q = [
            0xab, 0xcd, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'a', 0, 0, 1, 0, 1,
        ];
        let mut a = q.to_vec();
        a[2] |= 0x80;
        assert!(matches_question(&a, &q, 0xabcd));
        a[13] = b'A';
        assert!(matches_question(&a, &q, 0xabcd), "case is ignored");
        assert!(!matches_question(&a, &q, 0xabce), "another id");
        a[13] = b'b';
        assert!(!matches_question(&a, &q, 0xabcd), "another name");
        assert!(!matches_question(&q, &q, 0xabcd), "a query, not a response");
        assert!(!matches_question(&a[..5], &q, 0xabcd));
        let mut formerr = [0xab, 0xcd, 0x81, 0x01, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(matches_question(&formerr, &q, 0xabcd));
        formerr[3] = 0x80;
        assert!(
            !matches_question(&formerr, &q, 0xabcd),
            "NOERROR without question"
        );
    }

    #[tokio::test]
    async fn dns_forward_without_upstreams_or_slots_fails_fast() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        std::fs::write(&path, "search x\n").unwrap();
        let f = Forwarder::new(ForwardConfig {
            resolv_conf: path.clone(),
            ..Default::default()
        });
        let q = [
            0xab, 0xcd, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'a', 0, 0, 1, 0, 1,
        ];
        let e = f.forward(&q, Transport::Tcp).await.unwrap_err();
        assert!(matches!(e, ForwardError::NoUpstream { .. }), "{e}");
        assert!(e.to_string().contains("resolv.conf"), "{e}");

        // An upstream that never answers, one slot: the second question is refused at once.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = silent.local_addr().unwrap().port();
        std::fs::write(&path, "nameserver 127.0.0.1\n").unwrap();
        let f = Arc::new(Forwarder::new(ForwardConfig {
            resolv_conf: path,
            port,
            timeout: Duration::from_millis(300),
            max_in_flight: 1,
        }));
        let f2 = f.clone();
        let first =
            tokio::spawn(async move { f2.forward(&q, Transport::Udp { client_limit: 512 }).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let t = Instant::now();
        let e = f
            .forward(&q, Transport::Udp { client_limit: 512 })
            .await
            .unwrap_err();
        assert!(matches!(e, ForwardError::Busy { limit: 1 }), "{e}");
        assert!(t.elapsed() < Duration::from_millis(100));
        let e = first.await.unwrap().unwrap_err();
        assert!(matches!(e, ForwardError::Failed { .. }), "{e}");
        assert!(e.to_string().contains("timed out"), "{e}");
    }
}

//! The load generator of `bench lb` and `bench ingress` (hidden subcommand
//! `bench-lb-client`), run by the bench inside a task's (or a client host's) namespace (and
//! cgroup): sequential connections, one at a time, each
//! connect → [`REQUEST`] → response until the server closes → close (a reset, see [`one`]),
//! for a fixed time; with `--requests N`, N − 1 keep-alive exchanges come first.
//! The target of each connection is drawn uniformly from the `ip:port` lines on stdin.
//! `--connect-timeout-ms` bounds each connect (see [`connect`]); without it a connect that
//! gets no answer waits for the kernel's SYN retries.
//!
//! Prints `RESULT <connections> <seconds> <p50 ns> <p90 ns> <p99 ns> <p99.9 ns> <mean ns> <errors>
//! <first error>`.

use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::responder::{REQUEST, REQUEST_KEEP_ALIVE, RESPONSE};

/// Not measured: ARP, caches, the first connections.
const WARMUP: Duration = Duration::from_millis(300);

/// SO_LINGER 0: `close` resets the connection instead of finishing it.
pub(super) fn reset_on_close(s: &TcpStream) -> std::io::Result<()> {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on an open socket with a linger struct and its size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A connection to `to`; with a `timeout`, a connect that is not answered within it fails
/// (`SO_SNDTIMEO` on the socket before a blocking connect: one more system call than a plain
/// connect, and nothing else on the path).
fn connect(to: &SocketAddr, timeout: Option<Duration>) -> std::io::Result<TcpStream> {
    let (Some(t), SocketAddr::V4(v4)) = (timeout, to) else {
        return match timeout {
            Some(t) => TcpStream::connect_timeout(to, t),
            None => TcpStream::connect(to),
        };
    };
    // SAFETY: socket has no preconditions.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh socket nothing else owns; the stream closes it.
    let s = unsafe { TcpStream::from_raw_fd(fd) };
    let tv = libc::timeval {
        tv_sec: t.as_secs() as libc::time_t,
        tv_usec: t.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: setsockopt on an open socket with a timeval and its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*v4.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: connect on an open socket with a sockaddr_in and its size.
    let rc = unsafe {
        libc::connect(
            fd,
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        // A blocking connect whose send timeout expired says EINPROGRESS.
        if e.raw_os_error() == Some(libc::EINPROGRESS) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("connect not answered within {t:?}"),
            ));
        }
        return Err(e);
    }
    Ok(s)
}

/// One connection; the number of response bytes. The server closes after its response; the
/// client then resets the connection (SO_LINGER 0), so that neither side keeps it in
/// TIME_WAIT: at tens of thousands of connections per second from one address, TIME_WAIT
/// sockets (and conntrack entries) of earlier connections would meet new ones with the same
/// ports and the benchmark would measure that instead of the load balancing.
///
/// With `requests` above 1, the first `requests - 1` exchanges are keep-alive ones, each
/// response read whole before the next request.
fn one(
    to: &SocketAddr,
    timeout: Option<Duration>,
    requests: u32,
    buf: &mut [u8],
) -> std::io::Result<usize> {
    let mut s = connect(to, timeout)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    for _ in 1..requests {
        s.write_all(REQUEST_KEEP_ALIVE)?;
        let mut got = 0;
        while got < RESPONSE.len() {
            match s.read(&mut buf[..RESPONSE.len() - got])? {
                0 => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "closed during a keep-alive exchange",
                    ))
                }
                n => got += n,
            }
        }
    }
    s.write_all(REQUEST)?;
    let mut got = 0;
    loop {
        match s.read(buf)? {
            0 => break,
            n => got += n,
        }
    }
    if got == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed without a response",
        ));
    }
    reset_on_close(&s)?;
    Ok(got)
}

/// xorshift64*: cheap, and good enough to spread connections over the targets.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as usize % n.max(1)
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub fn run(
    secs: f64,
    seed: u64,
    connect_timeout: Option<Duration>,
    requests: u32,
) -> anyhow::Result<()> {
    let mut targets: Vec<SocketAddr> = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let line = line.context("reading the targets from stdin")?;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        targets.push(
            line.parse()
                .with_context(|| format!("target {line:?} is not ip:port"))?,
        );
    }
    if targets.is_empty() {
        bail!("no targets on stdin (one ip:port per line)");
    }
    if !(secs > 0.0 && secs.is_finite()) {
        bail!("--secs must be positive");
    }
    if requests == 0 {
        bail!("--requests must be at least 1");
    }
    let mut rng = Rng(seed | 1);
    let mut buf = [0u8; 512];
    let warm_until = Instant::now() + WARMUP;
    while Instant::now() < warm_until {
        let t = &targets[rng.below(targets.len())];
        let _ = one(t, connect_timeout, requests, &mut buf);
    }
    let mut lat: Vec<u64> = Vec::with_capacity(1 << 20);
    let mut errors = 0u64;
    let mut first_error = String::new();
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    loop {
        let t = &targets[rng.below(targets.len())];
        let t0 = Instant::now();
        if t0 >= end {
            break;
        }
        match one(t, connect_timeout, requests, &mut buf) {
            Ok(_) => lat.push(t0.elapsed().as_nanos() as u64),
            Err(e) => {
                errors += 1;
                if first_error.is_empty() {
                    first_error = format!("{t}: {e}");
                }
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let n = lat.len();
    let mean = if n == 0 {
        0
    } else {
        lat.iter().sum::<u64>() / n as u64
    };
    lat.sort_unstable();
    println!(
        "RESULT {n} {elapsed:.6} {} {} {} {} {mean} {errors} {}",
        percentile(&lat, 0.50),
        percentile(&lat, 0.90),
        percentile(&lat, 0.99),
        percentile(&lat, 0.999),
        if first_error.is_empty() {
            "-".to_string()
        } else {
            first_error.replace(' ', "_")
        }
    );
    Ok(())
}

/// One load generator run, parsed.
#[derive(Clone, Copy, Debug, Default)]
pub struct ClientResult {
    pub conns_per_sec: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub mean_us: f64,
    pub errors: u64,
}

pub fn parse(out: &str) -> anyhow::Result<(ClientResult, String)> {
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .with_context(|| format!("no RESULT line in the load generator's output: {out}"))?;
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() != 9 {
        bail!("malformed RESULT line {line:?}");
    }
    let num = |i: usize| -> anyhow::Result<f64> {
        f[i].parse::<f64>()
            .with_context(|| format!("field {i} of {line:?}"))
    };
    let (n, secs) = (num(0)?, num(1)?);
    Ok((
        ClientResult {
            conns_per_sec: if secs > 0.0 { n / secs } else { 0.0 },
            p50_us: num(2)? / 1000.0,
            p90_us: num(3)? / 1000.0,
            p99_us: num(4)? / 1000.0,
            p999_us: num(5)? / 1000.0,
            mean_us: num(6)? / 1000.0,
            errors: num(7)? as u64,
        },
        f[8].replace('_', " "),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_its_own_line() {
        let (r, e) =
            parse("noise\nRESULT 1000 2.0 15000 20000 40000 90000 16000 3 10.0.0.1:80:_refused\n")
                .unwrap();
        assert_eq!(r.conns_per_sec, 500.0);
        assert_eq!(r.p50_us, 15.0);
        assert_eq!(r.p90_us, 20.0);
        assert_eq!(r.p99_us, 40.0);
        assert_eq!(r.p999_us, 90.0);
        assert_eq!(r.mean_us, 16.0);
        assert_eq!(r.errors, 3);
        assert_eq!(e, "10.0.0.1:80: refused");
        assert!(parse("RESULT 1 2").is_err());
        assert_eq!(percentile(&[1, 2, 3, 4, 5], 0.5), 3);
    }
}

//! `whoami`: the project's test image server.
//!
//! Listens on one port for TCP (minimal HTTP/1.1, one thread per connection) and UDP (echo
//! prefixed with the hostname; the datagram `remoteaddr` is answered with the sender's address
//! as this server sees it, `HOSTNAME: RemoteAddr: IP:PORT`), on `0.0.0.0` and, where
//! available, `[::]`.
//! HTTP routes: `/health`, `/health/fail`, `/health/ok`, `/hostname`, anything else prints
//! hostname, interface addresses, the peer address and the request head.
//! `/data?size=N` streams N bytes of a fixed pattern (for transfer checks).
//! SIGTERM/SIGINT exit with status 0. One log line per request on stdout.
//! `whoami get|udp|lookup …` are client modes for tests (see `client.rs`).

mod client;
mod http;
mod sys;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

const DEFAULT_PORT: u16 = 80;
const READ_TIMEOUT: Duration = Duration::from_secs(10);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to keep reading (and discarding) after answering, so unread request bytes do
/// not turn the close into a reset that could destroy the response in flight.
const LINGER: Duration = Duration::from_secs(2);
const MAX_CONNECTIONS: usize = 512;
const USAGE: &str = "usage: whoami [--port N]   (default 80, or env WHOAMI_PORT)\n       whoami get URL [--count N] [--interval-ms MS] [--check-data]\n       whoami udp HOST:PORT TEXT [--count N] [--interval-ms MS]\n       whoami lookup NAME\n";

static HEALTHY: AtomicBool = AtomicBool::new(true);
static ACTIVE: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug, PartialEq, Eq)]
enum Command {
    Run { port: u16 },
    Help,
}

fn parse_port(s: &str, from: &str) -> Result<u16, String> {
    match s.trim().parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(format!(
            "invalid port {s:?} from {from}: expected a number from 1 to 65535"
        )),
    }
}

/// `--port N` / `--port=N` / `-p N` win over `WHOAMI_PORT`, which wins over 80.
fn parse_args(
    args: impl IntoIterator<Item = String>,
    env_port: Option<String>,
) -> Result<Command, String> {
    let mut port = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-p" | "--port" => {
                let v = args.next().ok_or_else(|| format!("{arg} needs a value"))?;
                port = Some(parse_port(&v, "--port")?);
            }
            _ => match arg.strip_prefix("--port=") {
                Some(v) => port = Some(parse_port(v, "--port")?),
                None => return Err(format!("unknown argument {arg:?}")),
            },
        }
    }
    let port = match (port, env_port) {
        (Some(p), _) => p,
        (None, Some(v)) => parse_port(&v, "WHOAMI_PORT")?,
        (None, None) => DEFAULT_PORT,
    };
    Ok(Command::Run { port })
}

/// Write one line to stdout; a closed stdout must never bring the server down.
fn log(line: std::fmt::Arguments<'_>) {
    let mut out = io::stdout().lock();
    let _ = out.write_fmt(line).and_then(|_| out.write_all(b"\n"));
}

struct ConnSlot;

impl ConnSlot {
    fn acquire() -> Option<ConnSlot> {
        let prev = ACTIVE.fetch_add(1, Ordering::SeqCst);
        if prev >= MAX_CONNECTIONS {
            ACTIVE.fetch_sub(1, Ordering::SeqCst);
            None
        } else {
            Some(ConnSlot)
        }
    }
}

/// Streams `size` bytes of the `/data` pattern.
fn write_data(stream: &mut TcpStream, size: u64) -> io::Result<()> {
    // 251 × 261 bytes: a whole number of pattern periods, so every chunk is the same.
    let chunk: Vec<u8> = (0..251 * 261).map(http::data_byte).collect();
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        stream.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    stream.flush()
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        ACTIVE.fetch_sub(1, Ordering::SeqCst);
    }
}

fn finish(mut stream: TcpStream, resp: &http::Response, head_only: bool) {
    let _ = stream
        .write_all(&resp.encode(head_only))
        .and_then(|_| stream.flush());
    if resp.data > 0 && !head_only && write_data(&mut stream, resp.data).is_err() {
        return;
    }
    let _ = stream.shutdown(Shutdown::Write);
    // Drain what the client may still send until it closes, within LINGER.
    let _ = stream.set_read_timeout(Some(LINGER));
    let mut sink = [0u8; 4096];
    let mut drained = 0usize;
    while drained < 1 << 20 {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

fn serve_connection(mut stream: TcpStream, peer: SocketAddr, hostname: &str) {
    let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let _ = stream.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let scanned = loop {
        match http::scan(&buf) {
            http::Scan::Complete { start, end } => break Ok((start, end)),
            http::Scan::Invalid(e) => break Err(e),
            http::Scan::Incomplete => {}
        }
        // scan() reports TooLarge once buf reaches MAX_HEAD, so this is never zero.
        let want = chunk.len().min(http::MAX_HEAD - buf.len());
        match stream.read(&mut chunk[..want]) {
            Ok(0) => {
                if buf.iter().all(|b| b.is_ascii_whitespace()) {
                    return; // connected and closed without a request (e.g. a TCP probe)
                }
                break Err(http::ParseError::Malformed(
                    "connection closed before the request head ended",
                ));
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if !buf.is_empty() {
                    log(format_args!("- - {peer} 408"));
                    finish(
                        stream,
                        &http::Response::text(408, "408 Request Timeout\n"),
                        false,
                    );
                }
                return;
            }
            Err(_) => return,
        }
    };
    let parsed = scanned.and_then(|(start, end)| http::parse(&buf[start..end]));
    match parsed {
        Ok(req) => {
            let ifaces = sys::interface_addrs;
            let ctx = http::Ctx {
                hostname,
                healthy: &HEALTHY,
                interfaces: &ifaces,
            };
            let resp = http::handle(&req, peer, &ctx);
            log(format_args!(
                "{} {} {peer} {}",
                req.method, req.target, resp.status
            ));
            finish(stream, &resp, req.method == "HEAD");
        }
        Err(e) => {
            let resp = http::Response::error(e);
            log(format_args!("- - {peer} {} ({})", resp.status, e.message()));
            finish(stream, &resp, false);
        }
    }
}

fn accept_loop(listener: TcpListener, hostname: &'static str) {
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                let Some(slot) = ConnSlot::acquire() else {
                    log(format_args!(
                        "- - {peer} dropped: {MAX_CONNECTIONS} connections already open"
                    ));
                    continue;
                };
                let spawned = thread::Builder::new()
                    .name("conn".into())
                    .stack_size(256 * 1024)
                    .spawn(move || {
                        let _slot = slot;
                        serve_connection(stream, peer, hostname);
                    });
                if let Err(e) = spawned {
                    log(format_args!(
                        "- - {peer} dropped: cannot start a thread: {e}"
                    ));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // EMFILE/ENFILE/ENOBUFS and friends: back off instead of spinning.
                log(format_args!("accept failed: {e}"));
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// The datagram that asks for the sender's address instead of an echo.
const REMOTE_ADDR_QUERY: &[u8] = b"remoteaddr";

/// The answer to a datagram: `HOSTNAME: ` and the datagram, or `HOSTNAME: RemoteAddr: PEER`
/// for [`REMOTE_ADDR_QUERY`] (what a UDP service sees as the client's address).
fn udp_reply(reply: &mut Vec<u8>, prefix: &str, datagram: &[u8], peer: SocketAddr) {
    reply.clear();
    reply.extend_from_slice(prefix.as_bytes());
    if datagram == REMOTE_ADDR_QUERY {
        reply.extend_from_slice(format!("RemoteAddr: {peer}").as_bytes());
    } else {
        reply.extend_from_slice(datagram);
    }
}

fn udp_loop(socket: UdpSocket, hostname: &'static str) {
    let prefix = format!("{hostname}: ");
    let mut buf = vec![0u8; 65536];
    let mut reply = Vec::with_capacity(prefix.len() + buf.len());
    loop {
        match socket.recv_from(&mut buf) {
            Ok((n, peer)) => {
                udp_reply(&mut reply, &prefix, &buf[..n], peer);
                let status = match socket.send_to(&reply, peer) {
                    Ok(_) => "ok".to_string(),
                    Err(e) => format!("send failed: {e}"),
                };
                log(format_args!("UDP {n}B {peer} {status}"));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                log(format_args!("udp receive failed: {e}"));
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if let Some(code) = client::run(&argv) {
        return code;
    }
    let cmd = parse_args(argv, std::env::var("WHOAMI_PORT").ok());
    let port = match cmd {
        Ok(Command::Run { port }) => port,
        Ok(Command::Help) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprint!("whoami: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = sys::install_exit_handlers() {
        eprintln!("whoami: cannot install SIGTERM/SIGINT handlers: {e}");
        return ExitCode::FAILURE;
    }
    let hostname: &'static str = Box::leak(sys::hostname().into_boxed_str());

    let tcp4 = match TcpListener::bind(("0.0.0.0", port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("whoami: cannot listen on TCP 0.0.0.0:{port}: {e} (pick another --port)");
            return ExitCode::FAILURE;
        }
    };
    let udp4 = match UdpSocket::bind(("0.0.0.0", port)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("whoami: cannot bind UDP 0.0.0.0:{port}: {e} (pick another --port)");
            return ExitCode::FAILURE;
        }
    };
    // Threads run for the life of the process; their handles are not needed.
    let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| match thread::Builder::new()
        .name(name.into())
        .spawn(f)
    {
        Ok(_) => true,
        Err(e) => {
            eprintln!("whoami: cannot start the {name} thread: {e}");
            false
        }
    };
    if !spawn("udp4", Box::new(move || udp_loop(udp4, hostname))) {
        return ExitCode::FAILURE;
    }
    let mut listening = format!("tcp+udp 0.0.0.0:{port}");
    // IPv6 is optional: many containers have it disabled.
    match (sys::tcp_listener_v6(port), sys::udp_socket_v6(port)) {
        (Ok(tcp6), Ok(udp6)) => {
            if spawn("tcp6", Box::new(move || accept_loop(tcp6, hostname)))
                && spawn("udp6", Box::new(move || udp_loop(udp6, hostname)))
            {
                listening.push_str(&format!(", tcp+udp [::]:{port}"));
            }
        }
        (Err(e), _) | (_, Err(e)) => log(format_args!("whoami: IPv6 not used: {e}")),
    }
    log(format_args!(
        "whoami: hostname {hostname}, listening on {listening}"
    ));
    accept_loop(tcp4, hostname);
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn port_sources_and_precedence() {
        assert_eq!(parse_args(args(&[]), None), Ok(Command::Run { port: 80 }));
        assert_eq!(
            parse_args(args(&[]), Some("8080".into())),
            Ok(Command::Run { port: 8080 })
        );
        assert_eq!(
            parse_args(args(&["--port", "81"]), Some("8080".into())),
            Ok(Command::Run { port: 81 })
        );
        assert_eq!(
            parse_args(args(&["--port=82"]), None),
            Ok(Command::Run { port: 82 })
        );
        assert_eq!(
            parse_args(args(&["-p", "83"]), None),
            Ok(Command::Run { port: 83 })
        );
        assert_eq!(parse_args(args(&["--help"]), None), Ok(Command::Help));
    }

    #[test]
    fn udp_echoes_or_tells_the_remote_address() {
        let peer: SocketAddr = "10.0.0.9:5555".parse().unwrap();
        let mut r = Vec::new();
        udp_reply(&mut r, "box1: ", b"hello", peer);
        assert_eq!(r, b"box1: hello");
        udp_reply(&mut r, "box1: ", b"remoteaddr", peer);
        assert_eq!(r, b"box1: RemoteAddr: 10.0.0.9:5555");
        udp_reply(&mut r, "box1: ", b"remoteaddr2", peer);
        assert_eq!(r, b"box1: remoteaddr2");
    }

    #[test]
    fn bad_arguments_are_errors() {
        assert!(parse_args(args(&["--port"]), None).is_err());
        assert!(parse_args(args(&["--port", "0"]), None).is_err());
        assert!(parse_args(args(&["--port", "70000"]), None).is_err());
        assert!(parse_args(args(&["--port=x"]), None).is_err());
        assert!(parse_args(args(&["--bogus"]), None).is_err());
        assert!(parse_args(args(&[]), Some("nope".into()))
            .unwrap_err()
            .contains("WHOAMI_PORT"));
    }
}

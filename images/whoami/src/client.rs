//! Client modes, so that tests can act from inside a container the way an application does
//! (its namespace, its cgroup, its /etc/resolv.conf): name lookups go through the C library's
//! resolver (musl: /etc/resolv.conf, hence the cluster's DNS), connections through the
//! socket calls the node's hooks see.
//!
//! - `whoami get URL [--count N] [--interval-ms MS] [--check-data]`: N sequential HTTP GETs
//!   (one connection each); prints each body's first line (or `ok <bytes>` with
//!   `--check-data`, which verifies a `/data` body byte for byte), `error: …` for a failure;
//!   exits 1 if any failed.
//! - `whoami udp HOST:PORT TEXT [--count N] [--interval-ms MS]`: one connected UDP socket,
//!   N datagrams; prints each answer (`timeout` when none came within a second).
//! - `whoami lookup NAME`: the IPv4 addresses NAME resolves to, one per line, sorted.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::process::ExitCode;
use std::time::Duration;

use crate::http;

const TIMEOUT: Duration = Duration::from_secs(5);

struct Opts {
    positional: Vec<String>,
    count: usize,
    interval: Duration,
    check_data: bool,
}

fn parse(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        positional: Vec::new(),
        count: 1,
        interval: Duration::ZERO,
        check_data: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--count" => {
                let v = it.next().ok_or("--count needs a value")?;
                o.count = v.parse().map_err(|_| format!("invalid --count {v:?}"))?;
            }
            "--interval-ms" => {
                let v = it.next().ok_or("--interval-ms needs a value")?;
                let ms: u64 = v
                    .parse()
                    .map_err(|_| format!("invalid --interval-ms {v:?}"))?;
                o.interval = Duration::from_millis(ms);
            }
            "--check-data" => o.check_data = true,
            _ => o.positional.push(a.clone()),
        }
    }
    Ok(o)
}

/// `http://host[:port]/path` → (host, port, path).
fn split_url(url: &str) -> Result<(String, u16, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url:?}: only http:// URLs"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().map_err(|_| format!("{url:?}: bad port"))?),
        None => (authority, 80),
    };
    if host.is_empty() {
        return Err(format!("{url:?}: no host"));
    }
    Ok((host.to_string(), port, path.to_string()))
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("resolving {host}: {e}"))?
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| format!("{host} has no IPv4 address"))
}

/// One GET; the body.
fn get_once(host: &str, port: u16, path: &str) -> Result<Vec<u8>, String> {
    let addr = resolve(host, port)?;
    let mut s =
        TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = s.set_read_timeout(Some(TIMEOUT));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("send: {e}"))?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).map_err(|e| format!("read: {e}"))?;
    let end = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no response head")?;
    let head = String::from_utf8_lossy(&resp[..end]).to_string();
    let status = head.split(' ').nth(1).unwrap_or("");
    if status != "200" {
        return Err(format!("HTTP {status}"));
    }
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.trim().parse::<usize>().ok());
    let body = resp[end + 4..].to_vec();
    if let Some(len) = len {
        if body.len() != len {
            return Err(format!(
                "body of {} bytes, Content-Length {len}",
                body.len()
            ));
        }
    }
    Ok(body)
}

fn get(o: &Opts) -> ExitCode {
    let Some(url) = o.positional.first() else {
        eprintln!("usage: whoami get URL [--count N] [--interval-ms MS] [--check-data]");
        return ExitCode::from(2);
    };
    let (host, port, path) = match split_url(url) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("whoami get: {e}");
            return ExitCode::from(2);
        }
    };
    let mut failed = false;
    for i in 0..o.count {
        if i > 0 {
            std::thread::sleep(o.interval);
        }
        match get_once(&host, port, &path) {
            Ok(body) if o.check_data => {
                match body
                    .iter()
                    .enumerate()
                    .find(|(i, b)| **b != http::data_byte(*i as u64))
                {
                    None => println!("ok {}", body.len()),
                    Some((at, _)) => {
                        failed = true;
                        println!("error: byte {at} of {} differs", body.len());
                    }
                }
            }
            Ok(body) => {
                let text = String::from_utf8_lossy(&body);
                println!("{}", text.lines().next().unwrap_or(""));
            }
            Err(e) => {
                failed = true;
                println!("error: {e}");
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn udp(o: &Opts) -> ExitCode {
    let (Some(target), Some(text)) = (o.positional.first(), o.positional.get(1)) else {
        eprintln!("usage: whoami udp HOST:PORT TEXT [--count N] [--interval-ms MS]");
        return ExitCode::from(2);
    };
    let addr = match target
        .rsplit_once(':')
        .ok_or_else(|| format!("{target:?}: HOST:PORT expected"))
        .and_then(|(h, p)| resolve(h, p.parse().map_err(|_| format!("bad port in {target:?}"))?))
    {
        Ok(a) => a,
        Err(e) => {
            eprintln!("whoami udp: {e}");
            return ExitCode::from(2);
        }
    };
    let sock = match UdpSocket::bind("0.0.0.0:0").and_then(|s| s.connect(addr).map(|_| s)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("whoami udp: {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let _ = sock.set_read_timeout(Some(Duration::from_secs(1)));
    let mut buf = [0u8; 2048];
    for i in 0..o.count {
        if i > 0 {
            std::thread::sleep(o.interval);
        }
        if let Err(e) = sock.send(text.as_bytes()) {
            println!("error: {e}");
            continue;
        }
        match sock.recv(&mut buf) {
            Ok(n) => println!("{}", String::from_utf8_lossy(&buf[..n])),
            Err(_) => println!("timeout"),
        }
        let _ = std::io::stdout().flush();
    }
    ExitCode::SUCCESS
}

fn lookup(o: &Opts) -> ExitCode {
    let Some(name) = o.positional.first() else {
        eprintln!("usage: whoami lookup NAME");
        return ExitCode::from(2);
    };
    match (name.as_str(), 0).to_socket_addrs() {
        Ok(addrs) => {
            let mut ips: Vec<IpAddr> = addrs.map(|a| a.ip()).filter(IpAddr::is_ipv4).collect();
            ips.sort();
            ips.dedup();
            for ip in ips {
                println!("{ip}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a client mode if `args` (without the program name) names one.
pub fn run(args: &[String]) -> Option<ExitCode> {
    let (mode, rest) = args.split_first()?;
    let o = match parse(rest) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("whoami {mode}: {e}");
            return Some(ExitCode::from(2));
        }
    };
    match mode.as_str() {
        "get" => Some(get(&o)),
        "udp" => Some(udp(&o)),
        "lookup" => Some(lookup(&o)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split() {
        assert_eq!(
            split_url("http://web/x?y").unwrap(),
            ("web".into(), 80, "/x?y".into())
        );
        assert_eq!(
            split_url("http://10.0.0.1:8080").unwrap(),
            ("10.0.0.1".into(), 8080, "/".into())
        );
        assert!(split_url("https://x/").is_err());
        assert!(split_url("http://:80/").is_err());
    }

    #[test]
    fn options_parse() {
        let o = parse(&[
            "http://a/".into(),
            "--count".into(),
            "3".into(),
            "--check-data".into(),
        ])
        .unwrap();
        assert_eq!((o.count, o.check_data, o.positional.len()), (3, true, 1));
        assert!(parse(&["--count".into(), "x".into()]).is_err());
    }
}

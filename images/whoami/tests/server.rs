//! Runs the built `whoami` binary on a free port and talks to it over real sockets.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

struct Server {
    child: Child,
    port: u16,
    log: Arc<Mutex<String>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A port that is free for both TCP and UDP on 0.0.0.0 right now.
fn free_port() -> u16 {
    loop {
        let tcp = TcpListener::bind("0.0.0.0:0").expect("bind probe");
        let port = tcp.local_addr().expect("probe addr").port();
        if UdpSocket::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
}

impl Server {
    fn start() -> Server {
        Self::start_with(|cmd, port| {
            cmd.arg("--port").arg(port.to_string());
        })
    }

    /// Start with `configure` choosing how the port is passed; retries on a port race.
    fn start_with(configure: impl Fn(&mut Command, u16)) -> Server {
        for _ in 0..10 {
            let port = free_port();
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_whoami"));
            cmd.env_remove("WHOAMI_PORT")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null());
            configure(&mut cmd, port);
            let mut child = cmd.spawn().expect("spawn whoami");
            let stdout = child.stdout.take().expect("piped stdout");
            let log = Arc::new(Mutex::new(String::new()));
            let (ready_tx, ready_rx) = mpsc::channel();
            let sink = Arc::clone(&log);
            thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if line.contains("listening on") {
                        let _ = ready_tx.send(());
                    }
                    let mut l = sink.lock().expect("log lock");
                    l.push_str(&line);
                    l.push('\n');
                }
            });
            if ready_rx.recv_timeout(Duration::from_secs(10)).is_ok() {
                return Server { child, port, log };
            }
            // Port taken in the meantime (the server exited) or it hung: try another.
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("whoami did not start on any of 10 ports");
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s
    }

    /// Send raw bytes, read until the server closes, return (status, headers, body).
    fn raw(&self, bytes: &[u8]) -> (u16, String, String) {
        let mut s = self.connect();
        s.write_all(bytes).expect("write request");
        let mut out = Vec::new();
        s.read_to_end(&mut out).expect("read response");
        let text = String::from_utf8(out).expect("utf8 response");
        let (head, body) = text.split_once("\r\n\r\n").expect("response has a head");
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("bad status line in {head:?}"));
        (status, head.to_string(), body.to_string())
    }

    fn get(&self, path: &str) -> (u16, String) {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
            self.port
        );
        let (status, _, body) = self.raw(req.as_bytes());
        (status, body)
    }

    fn log_contains(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.log.lock().expect("log lock").contains(needle) {
                return true;
            }
            thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

fn machine_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is writable for its full length.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    assert_eq!(rc, 0, "gethostname");
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[test]
fn root_page_shows_hostname_peer_and_request() {
    let srv = Server::start();
    let req = format!(
        "GET /some/path?x=1 HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nX-Custom-Test: hello-42\r\nConnection: close\r\n\r\n",
        srv.port
    );
    let (status, head, body) = srv.raw(req.as_bytes());
    assert_eq!(status, 200, "{head}\n{body}");
    assert!(head.contains("Content-Type: text/plain"), "{head}");
    assert!(head.contains("Connection: close"), "{head}");
    assert!(
        head.contains(&format!("Content-Length: {}", body.len())),
        "{head}"
    );
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(
        lines[0],
        format!("Hostname: {}", machine_hostname()),
        "{body}"
    );
    assert!(body.contains("\nRemoteAddr: 127.0.0.1:"), "{body}");
    assert!(body.contains("\nGET /some/path?x=1 HTTP/1.1\n"), "{body}");
    assert!(body.contains("\nX-Custom-Test: hello-42\n"), "{body}");
    assert!(
        lines
            .iter()
            .all(|l| !l.starts_with("IP: 127.") && *l != "IP: ::1"),
        "{body}"
    );
    assert!(
        srv.log_contains("GET /some/path?x=1 127.0.0.1:"),
        "{}",
        srv.log.lock().expect("log")
    );
}

#[test]
fn head_request_has_no_body() {
    let srv = Server::start();
    let (status, head, body) = srv.raw(b"HEAD /hostname HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 200);
    assert_eq!(body, "");
    assert!(
        head.contains(&format!("Content-Length: {}", machine_hostname().len() + 1)),
        "{head}"
    );
}

#[test]
fn hostname_route() {
    let srv = Server::start();
    assert_eq!(
        srv.get("/hostname"),
        (200, format!("{}\n", machine_hostname()))
    );
}

#[test]
fn health_flips_between_200_and_503() {
    let srv = Server::start();
    assert_eq!(srv.get("/health"), (200, "ok\n".to_string()));
    assert_eq!(
        srv.get("/health/fail"),
        (200, "unhealthy now\n".to_string())
    );
    assert_eq!(srv.get("/health"), (503, "unhealthy\n".to_string()));
    assert_eq!(srv.get("/health/ok"), (200, "healthy now\n".to_string()));
    assert_eq!(srv.get("/health"), (200, "ok\n".to_string()));
    assert!(srv.log_contains(" /health 127.0.0.1:"));
    assert!(srv.log_contains(" 503"));
}

#[test]
fn udp_echo_is_prefixed_with_hostname() {
    let srv = Server::start();
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind client");
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let want = format!("{}: ping-123 \u{1F600}", machine_hostname());
    let mut buf = [0u8; 2048];
    for _ in 0..10 {
        sock.send_to("ping-123 \u{1F600}".as_bytes(), ("127.0.0.1", srv.port))
            .expect("send");
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            assert_eq!(from.port(), srv.port);
            assert_eq!(std::str::from_utf8(&buf[..n]).expect("utf8"), want);
            return;
        }
    }
    panic!("no UDP answer");
}

#[test]
fn udp_remoteaddr_tells_the_senders_address() {
    let srv = Server::start();
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind client");
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let want = format!(
        "{}: RemoteAddr: {}",
        machine_hostname(),
        sock.local_addr().expect("local addr")
    );
    let mut buf = [0u8; 2048];
    for _ in 0..10 {
        sock.send_to(b"remoteaddr", ("127.0.0.1", srv.port))
            .expect("send");
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            assert_eq!(std::str::from_utf8(&buf[..n]).expect("utf8"), want);
            return;
        }
    }
    panic!("no UDP answer");
}

#[test]
fn garbage_gets_400_and_server_keeps_serving() {
    let srv = Server::start();
    for bad in [
        &b"garbage\r\n\r\n"[..],
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
        b"GET /\r\n\r\n",
        b"GET / HTTP/1.1\r\nNoColonHere\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x", // closed (below) before the head ended
    ] {
        let mut s = srv.connect();
        s.write_all(bad).expect("write garbage");
        let _ = s.shutdown(Shutdown::Write);
        let mut out = Vec::new();
        s.read_to_end(&mut out).expect("read answer");
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{:?} -> {text:?}",
            String::from_utf8_lossy(bad)
        );
    }
    // Oversized head.
    let mut big = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
    big.resize(70 * 1024, b'a');
    let mut s = srv.connect();
    let _ = s.write_all(&big); // the server may answer and close before all is written
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert!(
        String::from_utf8_lossy(&out).starts_with("HTTP/1.1 431 "),
        "{:?}",
        String::from_utf8_lossy(&out)
    );
    // Connect-and-close without a request.
    drop(srv.connect());
    assert!(srv.log_contains("400"));
    assert_eq!(
        srv.get("/hostname"),
        (200, format!("{}\n", machine_hostname()))
    );
}

#[test]
fn slow_client_does_not_block_others() {
    let srv = Server::start();
    let mut idle = srv.connect();
    idle.write_all(b"GET / HTTP/1.1\r\n")
        .expect("partial request");
    assert_eq!(srv.get("/health"), (200, "ok\n".to_string()));
    idle.write_all(b"Host: late\r\n\r\n")
        .expect("rest of request");
    let mut out = String::new();
    idle.read_to_string(&mut out).expect("read");
    assert!(
        out.starts_with("HTTP/1.1 200 OK\r\n") && out.contains("\nHost: late\n"),
        "{out}"
    );
}

#[test]
fn port_from_environment() {
    let srv = Server::start_with(|cmd, port| {
        cmd.env("WHOAMI_PORT", port.to_string());
    });
    assert_eq!(srv.get("/health").0, 200);
}

#[test]
fn bad_port_argument_exits_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_whoami"))
        .args(["--port", "nope"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid port"));
}

fn signal_exits_zero(sig: libc::c_int) {
    let mut srv = Server::start();
    assert_eq!(srv.get("/health").0, 200);
    let pid = srv.child.id() as libc::pid_t;
    // SAFETY: plain kill(2) on the child this test started.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    let status = srv
        .wait_exit(Duration::from_secs(2))
        .expect("whoami did not exit within 2 s");
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[test]
fn sigterm_exits_zero_promptly() {
    signal_exits_zero(libc::SIGTERM);
}

#[test]
fn sigint_exits_zero_promptly() {
    signal_exits_zero(libc::SIGINT);
}

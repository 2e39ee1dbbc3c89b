//! The server of the connection benchmarks, and the request and response it shares with the
//! load generator.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};

use super::cpu::{pin_current_thread, Cpu};

/// The request the load generator sends and the servers expect (its end).
pub const REQUEST: &[u8] = b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n";
/// A request after which the connection stays open for the next (`bench lb --requests`): the
/// server answers it and reads on.
pub const REQUEST_KEEP_ALIVE: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n";
pub const RESPONSE: &[u8] = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// A minimal HTTP/1.0 server on a thread inside a task's namespace: reads a request,
/// answers, closes (the server closes first, so the client keeps no TIME_WAIT); after a
/// [`REQUEST_KEEP_ALIVE`] it reads the next request instead of closing. Stopped on drop.
pub struct Responder {
    stop: Arc<AtomicBool>,
    fd: i32,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Responder {
    pub fn start(ns: &Path, addr: SocketAddr, cpu: Cpu) -> anyhow::Result<Responder> {
        let file = std::fs::File::open(ns).with_context(|| format!("opening {}", ns.display()))?;
        let (tx, rx) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            // SAFETY: setns on this thread only, with a descriptor we own.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                let _ = tx.send(Err(std::io::Error::last_os_error()));
                return;
            }
            if let Err(e) = pin_current_thread(cpu) {
                let _ = tx.send(Err(e));
                return;
            }
            let l = match TcpListener::bind(addr) {
                Ok(l) => l,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let _ = tx.send(Ok(l.as_raw_fd()));
            let mut buf = [0u8; 1024];
            while !stop2.load(Ordering::Relaxed) {
                let Ok((mut s, _)) = l.accept() else {
                    continue;
                };
                // One request at a time (the client waits for each response); the server
                // closes after a request that is not a keep-alive one.
                loop {
                    let mut got = 0;
                    while got < buf.len() {
                        match s.read(&mut buf[got..]) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                got += n;
                                if buf[..got].ends_with(b"\r\n\r\n") {
                                    break;
                                }
                            }
                        }
                    }
                    if s.write_all(RESPONSE).is_err() || &buf[..got] != REQUEST_KEEP_ALIVE {
                        break;
                    }
                }
            }
        });
        let fd = match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(fd)) => fd,
            Ok(Err(e)) => bail!("server on {addr} in {}: {e}", ns.display()),
            Err(_) => bail!("server on {addr} in {} did not start", ns.display()),
        };
        Ok(Responder {
            stop,
            fd,
            thread: Some(thread),
        })
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // SAFETY: the listener is still open (its thread owns it until it returns); shutting
        // it down wakes the blocked accept with an error.
        unsafe {
            libc::shutdown(self.fd, libc::SHUT_RDWR);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

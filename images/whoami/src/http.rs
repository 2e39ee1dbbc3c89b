//! Minimal HTTP/1.x request-head parsing, routing and response encoding.
//! Pure functions: no I/O here, so everything is unit-tested.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};

/// Largest request head (request line + headers + blank line) accepted, in bytes.
pub const MAX_HEAD: usize = 64 * 1024;

/// Why a request head was rejected; each maps to one status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Not HTTP at all, or a broken request line / header line.
    Malformed(&'static str),
    /// Well-formed, but an HTTP major version other than 1.
    VersionNotSupported,
    /// No end of the head within [`MAX_HEAD`] bytes.
    TooLarge,
}

impl ParseError {
    pub fn status(self) -> u16 {
        match self {
            ParseError::Malformed(_) => 400,
            ParseError::VersionNotSupported => 505,
            ParseError::TooLarge => 431,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            ParseError::Malformed(why) => why,
            ParseError::VersionNotSupported => "only HTTP/1.0 and HTTP/1.1 are supported",
            ParseError::TooLarge => "request head larger than 64 KiB",
        }
    }
}

/// Result of looking at the bytes received so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Scan {
    /// The head is `buf[start..end]` (end includes the blank line).
    Complete { start: usize, end: usize },
    /// Need more bytes.
    Incomplete,
    /// Can already tell the request is bad; answer without waiting for more.
    Invalid(ParseError),
}

/// Decide whether `buf` holds a complete request head. Leading empty lines are skipped
/// (RFC 9112 §2.2). Rejects early when the request line contains bytes no request line can
/// hold (e.g. a TLS handshake), and when the head exceeds [`MAX_HEAD`].
pub fn scan(buf: &[u8]) -> Scan {
    let start = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    let rest = &buf[start..];
    let first_line_end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
    let first_line = &rest[..first_line_end];
    // A trailing CR may still be followed by its LF; any other CR is an error.
    let body_of_line = first_line.strip_suffix(b"\r").unwrap_or(first_line);
    if body_of_line.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return Scan::Invalid(ParseError::Malformed("control bytes in request line"));
    }
    let mut i = 0;
    while let Some(off) = rest[i..].iter().position(|&b| b == b'\n') {
        let nl = i + off;
        match (rest.get(nl + 1), rest.get(nl + 2)) {
            (Some(b'\n'), _) => {
                return Scan::Complete {
                    start,
                    end: start + nl + 2,
                }
            }
            (Some(b'\r'), Some(b'\n')) => {
                return Scan::Complete {
                    start,
                    end: start + nl + 3,
                }
            }
            _ => i = nl + 1,
        }
    }
    if buf.len() >= MAX_HEAD {
        Scan::Invalid(ParseError::TooLarge)
    } else {
        Scan::Incomplete
    }
}

/// A parsed request head. Header names keep the case they were sent with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub target: String,
    pub version: String,
    pub headers: Vec<(String, String)>,
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_tchar(b))
}

/// Parse a complete head as delimited by [`scan`]. Lines may end in CRLF or a bare LF.
pub fn parse(head: &[u8]) -> Result<Request, ParseError> {
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .skip_while(|l| l.is_empty());
    let request_line = lines.next().ok_or(ParseError::Malformed("empty request"))?;
    let parts: Vec<&[u8]> = request_line.split(|&b| b == b' ').collect();
    let [method, target, version] = parts[..] else {
        return Err(ParseError::Malformed(
            "request line must be `METHOD TARGET HTTP/1.1`",
        ));
    };
    if !is_token(method) {
        return Err(ParseError::Malformed("invalid method"));
    }
    if target.is_empty() || !target.iter().all(|&b| (0x21..=0x7e).contains(&b)) {
        return Err(ParseError::Malformed("invalid request target"));
    }
    match version {
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            if *major != b'1' {
                return Err(ParseError::VersionNotSupported);
            }
        }
        _ => return Err(ParseError::Malformed("invalid HTTP version")),
    }
    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            return Err(ParseError::Malformed("folded header lines are not allowed"));
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(ParseError::Malformed("header line without `:`"))?;
        let name = &line[..colon];
        if !is_token(name) {
            return Err(ParseError::Malformed("invalid header name"));
        }
        let value = line[colon + 1..].trim_ascii();
        if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(ParseError::Malformed("control bytes in header value"));
        }
        headers.push((
            String::from_utf8_lossy(name).into_owned(),
            String::from_utf8_lossy(value).into_owned(),
        ));
    }
    Ok(Request {
        // All three were checked to be ASCII above.
        method: String::from_utf8_lossy(method).into_owned(),
        target: String::from_utf8_lossy(target).into_owned(),
        version: String::from_utf8_lossy(version).into_owned(),
        headers,
    })
}

/// The path a target routes on: origin-form loses its query and fragment, absolute-form
/// (`http://host/p?q`) loses scheme and authority too; `*` and anything odd stay as they are.
pub fn route_path(target: &str) -> &str {
    let path = if target.starts_with('/') {
        target
    } else if let Some(after) = target.split_once("://").map(|(_, a)| a) {
        after.find('/').map_or("/", |i| &after[i..])
    } else {
        target
    };
    let end = path.find(['?', '#']).unwrap_or(path.len());
    &path[..end]
}

/// Everything a handler needs besides the request.
pub struct Ctx<'a> {
    pub hostname: &'a str,
    pub healthy: &'a AtomicBool,
    /// Produces the non-loopback interface addresses (called only for the `/` page).
    pub interfaces: &'a dyn Fn() -> Vec<IpAddr>,
}

/// Largest `/data?size=` served: 1 GiB.
pub const MAX_DATA: u64 = 1 << 30;

/// Byte `i` of a `/data` body: a fixed pattern (not all zeros, not periodic in 2^k), so a
/// client can check what arrived with a checksum it computes on its own.
pub fn data_byte(i: u64) -> u8 {
    (i % 251) as u8
}

/// A plain-text response, or a `/data` body of `data` pattern bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: String,
    /// When non-zero: the body is this many bytes of [`data_byte`] (the writer streams them).
    pub data: u64,
}

impl Response {
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Response {
            status,
            body: body.into(),
            data: 0,
        }
    }

    pub fn data(size: u64) -> Self {
        Response {
            status: 200,
            body: String::new(),
            data: size,
        }
    }

    /// The answer for a rejected head.
    pub fn error(err: ParseError) -> Self {
        Response::text(
            err.status(),
            format!(
                "{} {}: {}\n",
                err.status(),
                reason(err.status()),
                err.message()
            ),
        )
    }

    /// Wire form; `head_only` (HEAD requests) leaves the body out but keeps its length. A
    /// `/data` body is not included: the writer streams it after this.
    pub fn encode(&self, head_only: bool) -> Vec<u8> {
        let (kind, len) = if self.data > 0 {
            ("application/octet-stream", self.data)
        } else {
            ("text/plain; charset=utf-8", self.body.len() as u64)
        };
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {kind}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n",
            self.status,
            reason(self.status),
        )
        .into_bytes();
        if !head_only {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Route a parsed request. Every method is answered like GET (HEAD without body, see
/// [`Response::encode`]), so `busybox wget` can drive everything.
pub fn handle(req: &Request, peer: SocketAddr, ctx: &Ctx<'_>) -> Response {
    match route_path(&req.target) {
        "/health" => {
            if ctx.healthy.load(Ordering::SeqCst) {
                Response::text(200, "ok\n")
            } else {
                Response::text(503, "unhealthy\n")
            }
        }
        "/health/fail" => {
            ctx.healthy.store(false, Ordering::SeqCst);
            Response::text(200, "unhealthy now\n")
        }
        "/health/ok" => {
            ctx.healthy.store(true, Ordering::SeqCst);
            Response::text(200, "healthy now\n")
        }
        "/hostname" => Response::text(200, format!("{}\n", ctx.hostname)),
        "/data" => match query_value(&req.target, "size").map(str::parse::<u64>) {
            Some(Ok(n)) if (1..=MAX_DATA).contains(&n) => Response::data(n),
            _ => Response::text(
                400,
                format!("400 Bad Request: /data wants ?size=N with 1 <= N <= {MAX_DATA}\n"),
            ),
        },
        _ => Response::text(200, whoami_page(req, peer, ctx)),
    }
}

/// The value of `key` in the target's query string.
fn query_value<'a>(target: &'a str, key: &str) -> Option<&'a str> {
    let query = target.split_once('?')?.1;
    let query = query.split('#').next().unwrap_or(query);
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn whoami_page(req: &Request, peer: SocketAddr, ctx: &Ctx<'_>) -> String {
    let mut body = format!("Hostname: {}\n", ctx.hostname);
    for ip in (ctx.interfaces)() {
        let _ = writeln!(body, "IP: {ip}");
    }
    let _ = writeln!(body, "RemoteAddr: {peer}");
    let _ = writeln!(body, "{} {} {}", req.method, req.target, req.version);
    for (name, value) in &req.headers {
        let _ = writeln!(body, "{name}: {value}");
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head_of(buf: &[u8]) -> &[u8] {
        match scan(buf) {
            Scan::Complete { start, end } => &buf[start..end],
            other => panic!("expected complete head, got {other:?}"),
        }
    }

    #[test]
    fn scan_finds_end_of_head() {
        let req = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nBODY";
        assert_eq!(
            scan(req),
            Scan::Complete {
                start: 0,
                end: req.len() - 4
            }
        );
        let bare = b"GET / HTTP/1.0\nHost: a\n\n";
        assert_eq!(
            scan(bare),
            Scan::Complete {
                start: 0,
                end: bare.len()
            }
        );
        let lead = b"\r\n\r\nGET / HTTP/1.1\r\n\r\n";
        assert_eq!(
            scan(lead),
            Scan::Complete {
                start: 4,
                end: lead.len()
            }
        );
    }

    #[test]
    fn scan_waits_for_more() {
        assert_eq!(scan(b""), Scan::Incomplete);
        assert_eq!(scan(b"\r\n"), Scan::Incomplete);
        assert_eq!(scan(b"GET / HT"), Scan::Incomplete);
        assert_eq!(scan(b"GET / HTTP/1.1\r"), Scan::Incomplete);
        assert_eq!(scan(b"GET / HTTP/1.1\r\nHost: a\r\n"), Scan::Incomplete);
        assert_eq!(scan(b"GET / HTTP/1.1\r\nHost: a\r\n\r"), Scan::Incomplete);
    }

    #[test]
    fn scan_rejects_binary_early() {
        assert!(matches!(
            scan(b"\x16\x03\x01\x02\x00"),
            Scan::Invalid(ParseError::Malformed(_))
        ));
        assert!(matches!(
            scan(b"GET /\x00 HTTP/1.1\r\n"),
            Scan::Invalid(ParseError::Malformed(_))
        ));
        assert!(matches!(
            scan(b"GET\r/ HTTP/1.1"),
            Scan::Invalid(ParseError::Malformed(_))
        ));
    }

    #[test]
    fn scan_caps_head_size() {
        let mut big = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        big.resize(MAX_HEAD, b'a');
        assert_eq!(scan(&big), Scan::Invalid(ParseError::TooLarge));
        big.truncate(MAX_HEAD - 1);
        assert_eq!(scan(&big), Scan::Incomplete);
    }

    #[test]
    fn parse_valid_request() {
        let raw =
            b"GET /x?y=1 HTTP/1.1\r\nHost: example\r\nX-Thing:  spaced value \r\nAccept:\r\n\r\n";
        let req = parse(head_of(raw)).expect("valid");
        assert_eq!(req.method, "GET");
        assert_eq!(req.target, "/x?y=1");
        assert_eq!(req.version, "HTTP/1.1");
        assert_eq!(
            req.headers,
            vec![
                ("Host".to_string(), "example".to_string()),
                ("X-Thing".to_string(), "spaced value".to_string()),
                ("Accept".to_string(), String::new()),
            ]
        );
    }

    #[test]
    fn parse_rejects_garbage() {
        for raw in [
            &b"garbage\r\n\r\n"[..],
            b"GET /\r\n\r\n",
            b"GET  / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1 extra\r\n\r\n",
            b"G@T / HTTP/1.1\r\n\r\n",
            b"GET / FTP/1.1\r\n\r\n",
            b"GET / HTTP/1\r\n\r\n",
            b"GET / HTTP/1.1\r\nNoColon\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            b"GET / HTTP/1.1\r\n: empty name\r\n\r\n",
            b"GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n",
            b"GET / HTTP/1.1\r\nA: b\x01c\r\n\r\n",
            b"GET /\xff HTTP/1.1\r\n\r\n",
        ] {
            let got = parse(raw);
            assert!(
                matches!(got, Err(ParseError::Malformed(_))),
                "{:?} -> {got:?}",
                String::from_utf8_lossy(raw)
            );
            assert_eq!(got.err().map(ParseError::status), Some(400));
        }
        assert_eq!(
            parse(b"GET / HTTP/2.0\r\n\r\n"),
            Err(ParseError::VersionNotSupported)
        );
    }

    #[test]
    fn route_path_strips_query_and_authority() {
        assert_eq!(route_path("/health?x=1"), "/health");
        assert_eq!(route_path("/hostname#frag"), "/hostname");
        assert_eq!(route_path("http://h:80/health/fail"), "/health/fail");
        assert_eq!(route_path("http://h:80"), "/");
        assert_eq!(route_path("*"), "*");
    }

    fn ctx<'a>(healthy: &'a AtomicBool, ifs: &'a dyn Fn() -> Vec<IpAddr>) -> Ctx<'a> {
        Ctx {
            hostname: "box1",
            healthy,
            interfaces: ifs,
        }
    }

    fn get(target: &str) -> Request {
        Request {
            method: "GET".into(),
            target: target.into(),
            version: "HTTP/1.1".into(),
            headers: vec![("Host".into(), "x".into()), ("X-Test".into(), "42".into())],
        }
    }

    #[test]
    fn whoami_page_lists_everything() {
        let healthy = AtomicBool::new(true);
        let ifs = || {
            vec![
                "10.0.0.7".parse().expect("ip"),
                "fd00::7".parse().expect("ip"),
            ]
        };
        let peer: SocketAddr = "10.0.0.9:5555".parse().expect("addr");
        let resp = handle(&get("/anything?q"), peer, &ctx(&healthy, &ifs));
        assert_eq!(resp.status, 200);
        assert_eq!(
            resp.body,
            "Hostname: box1\nIP: 10.0.0.7\nIP: fd00::7\nRemoteAddr: 10.0.0.9:5555\n\
             GET /anything?q HTTP/1.1\nHost: x\nX-Test: 42\n"
        );
    }

    #[test]
    fn health_flips_and_hostname() {
        let healthy = AtomicBool::new(true);
        let ifs = Vec::new;
        let c = ctx(&healthy, &ifs);
        let peer: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let call = |t: &str| handle(&get(t), peer, &c);
        assert_eq!(call("/health"), Response::text(200, "ok\n"));
        assert_eq!(call("/health/fail"), Response::text(200, "unhealthy now\n"));
        assert_eq!(call("/health"), Response::text(503, "unhealthy\n"));
        assert_eq!(call("/health/ok"), Response::text(200, "healthy now\n"));
        assert_eq!(call("/health"), Response::text(200, "ok\n"));
        assert_eq!(call("/hostname"), Response::text(200, "box1\n"));
        assert_eq!(call("/data?size=1000"), Response::data(1000));
        assert_eq!(call("/data?x=1&size=7#f"), Response::data(7));
        assert_eq!(call("/data").status, 400);
        assert_eq!(call("/data?size=0").status, 400);
        assert_eq!(call(&format!("/data?size={}", MAX_DATA + 1)).status, 400);
        let head = String::from_utf8(Response::data(1000).encode(false)).unwrap();
        assert!(head.contains("Content-Length: 1000\r\n"), "{head}");
        assert!(head.ends_with("\r\n\r\n"), "{head}");
        assert_eq!((data_byte(0), data_byte(250), data_byte(251)), (0, 250, 0));
    }

    #[test]
    fn encode_response() {
        let r = Response::text(503, "unhealthy\n");
        let full = String::from_utf8(r.encode(false)).expect("utf8");
        assert_eq!(
            full,
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: 10\r\nConnection: close\r\n\r\nunhealthy\n"
        );
        let head = String::from_utf8(r.encode(true)).expect("utf8");
        assert!(head.ends_with("Content-Length: 10\r\nConnection: close\r\n\r\n"));
        let e = Response::error(ParseError::TooLarge);
        assert_eq!(e.status, 431);
        assert!(e.body.starts_with("431 Request Header Fields Too Large"));
    }
}

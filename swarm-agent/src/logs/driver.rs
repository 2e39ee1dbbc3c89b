//! The containerd "binary" log driver: `swarm-agent log-driver <task dir>`.
//!
//! For a task created with stdout and stderr URIs `binary:///path/to/swarm-agent?log-driver=<task dir>`
//! (see [`stdio_uri`]), containerd's runc shim (containerd 1.6 `pkg/process/io.go`
//! `NewBinaryIO` and `NewBinaryCmd` in `pkg/process/utils.go`) starts
//! `/path/to/swarm-agent log-driver <task dir>` (each query key, then its value, becomes
//! an argument) with only `CONTAINER_ID` and `CONTAINER_NAMESPACE` in its environment and
//! three extra files: fd 3 is the read end of the container's stdout pipe, fd 4 of its
//! stderr pipe, fd 5 the write end of a pipe the shim waits on until it is closed (or a
//! byte is written): the driver closes it once it is ready. When the task is deleted the
//! shim closes its ends of the pipes, then sends SIGTERM and kills the driver 12 s later.
//!
//! The driver is a child of the shim, not of the agent: it keeps writing while the agent
//! restarts. It appends Docker json-file entries
//! `{"log":"line\n","stream":"stdout","time":"2024-05-01T12:00:00.123456789Z"}` to
//! `<task dir>/container.log`, splits lines longer than 16 KiB, rotates the file at
//! 10 MiB to `container.log.1` (one old file kept), and exits once both pipes reach EOF.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};

use super::{format_rfc3339_nano, Stream, LOG_FILE, MAX_FILE_SIZE, MAX_LINE, ROTATED_FILE};

/// The argument (and URI query key) that selects the log driver in `swarm-agent`.
pub const LOG_DRIVER_ARG: &str = "log-driver";

const STDOUT_FD: RawFd = 3;
const STDERR_FD: RawFd = 4;
const READY_FD: RawFd = 5;
/// After SIGTERM the driver gives the pipes this long to reach EOF, then exits.
const TERM_GRACE: Duration = Duration::from_secs(5);

/// Percent-encodes what Go's `url.Parse` would not give back as is (everything but
/// unreserved characters and `/`), so that spaces, `?`, `&`, `+`, `%` survive.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The stdio URI of a task's stdout and stderr (pass the same URI for both in
/// `Tasks.Create`): containerd starts `agent_exe log-driver task_dir`. Both paths must be
/// absolute.
pub fn stdio_uri(agent_exe: &Path, task_dir: &Path) -> String {
    format!(
        "binary://{}?{LOG_DRIVER_ARG}={}",
        escape(&agent_exe.to_string_lossy()),
        escape(&task_dir.to_string_lossy())
    )
}

fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only reads the descriptor flags.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

/// Entry point of `swarm-agent log-driver <task dir>`, started by containerd's shim
/// with fds 3/4/5 (see the module documentation). Synchronous: call it before starting
/// any runtime. Returns once both streams reached EOF.
pub fn run(task_dir: &Path) -> anyhow::Result<()> {
    if !task_dir.is_absolute() {
        bail!(
            "the log driver needs an absolute task directory, got {}",
            task_dir.display()
        );
    }
    for fd in [STDOUT_FD, STDERR_FD, READY_FD] {
        if !fd_is_open(fd) {
            bail!(
                "file descriptor {fd} is not open: `swarm-agent log-driver` is started by containerd's shim for a task whose stdio URI is {}",
                stdio_uri(Path::new("/path/to/swarm-agent"), task_dir)
            );
        }
    }
    // SAFETY: the descriptors are open (checked above), were handed to this process by
    // the shim for this purpose, and nothing else in the process owns them.
    let (stdout, stderr, ready) = unsafe {
        (
            File::from_raw_fd(STDOUT_FD),
            File::from_raw_fd(STDERR_FD),
            File::from_raw_fd(READY_FD),
        )
    };
    handle_sigterm();
    drive(task_dir, stdout, stderr, Some(ready))
}

/// SIGTERM (sent by the shim when the task is deleted, right after it closed the pipes)
/// does not cut the last lines: the pumps finish at EOF; if they have not within
/// [`TERM_GRACE`] the process exits.
fn handle_sigterm() {
    // SAFETY: plain signal-mask calls on a zeroed sigset; the mask is set before any
    // other thread starts, so every thread inherits it and only the waiter gets SIGTERM.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return;
        }
        std::thread::spawn(move || {
            let mut sig: libc::c_int = 0;
            if libc::sigwait(&set, &mut sig) == 0 {
                std::thread::sleep(TERM_GRACE);
                std::process::exit(0);
            }
        });
    }
}

/// The log file of one task: both streams write through it (behind a mutex).
struct LogFile {
    dir: PathBuf,
    file: Option<File>,
    size: u64,
    max_size: u64,
}

impl LogFile {
    fn open(dir: &Path, max_size: u64) -> io::Result<LogFile> {
        std::fs::create_dir_all(dir)?;
        let mut f = LogFile {
            dir: dir.to_path_buf(),
            file: None,
            size: 0,
            max_size,
        };
        f.reopen()?;
        Ok(f)
    }

    fn reopen(&mut self) -> io::Result<()> {
        // Docker's json-file mode: the owner writes, its group may read, nobody else.
        let path = self.dir.join(LOG_FILE);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(&path)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o640))?;
        self.size = file.metadata()?.len();
        self.file = Some(file);
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        match std::fs::rename(self.dir.join(LOG_FILE), self.dir.join(ROTATED_FILE)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        self.reopen()
    }

    /// Appends encoded entries (each ends with `\n`), rotating between two entries when
    /// the next would not fit. An entry larger than the limit fills a file alone.
    fn write(&mut self, mut entries: &[u8]) -> io::Result<()> {
        while !entries.is_empty() {
            if self.file.is_none() {
                self.reopen()?;
            }
            let room = self.max_size.saturating_sub(self.size);
            let mut take = 0;
            for (i, b) in entries.iter().enumerate() {
                if *b == b'\n' {
                    if (i + 1) as u64 > room {
                        break;
                    }
                    take = i + 1;
                }
            }
            if take == 0 {
                if self.size > 0 {
                    self.rotate()?;
                    continue;
                }
                take = entries
                    .iter()
                    .position(|b| *b == b'\n')
                    .map_or(entries.len(), |i| i + 1);
            }
            let Some(f) = self.file.as_mut() else {
                return Err(io::Error::other("no log file open"));
            };
            f.write_all(&entries[..take])?;
            self.size += take as u64;
            entries = &entries[take..];
        }
        Ok(())
    }
}

#[derive(serde::Serialize)]
struct Entry<'a> {
    log: &'a str,
    stream: &'a str,
    time: &'a str,
}

/// Appends one json-file entry (and its newline) to `out`.
fn encode(out: &mut Vec<u8>, data: &[u8], stream: Stream, time: &str) {
    let log = String::from_utf8_lossy(data);
    let entry = Entry {
        log: &log,
        stream: stream.as_str(),
        time,
    };
    if serde_json::to_writer(&mut *out, &entry).is_ok() {
        out.push(b'\n');
    }
}

/// Where to cut a line longer than [`MAX_LINE`]: at `MAX_LINE`, or a few bytes earlier so
/// that a UTF-8 character is not split.
fn split_point(rest: &[u8]) -> usize {
    let mut cut = MAX_LINE;
    while cut > MAX_LINE - 3 && rest.get(cut).is_some_and(|b| b & 0xC0 == 0x80) {
        cut -= 1;
    }
    if rest.get(cut).is_some_and(|b| b & 0xC0 == 0x80) {
        MAX_LINE
    } else {
        cut
    }
}

/// Encodes the complete lines at the start of `pending` (and 16 KiB pieces of longer
/// ones) and removes them from it; an unfinished line stays.
fn take_lines(pending: &mut Vec<u8>, stream: Stream, time: &str, out: &mut Vec<u8>) {
    let mut start = 0;
    loop {
        let rest = &pending[start..];
        let window = &rest[..rest.len().min(MAX_LINE)];
        match window.iter().position(|b| *b == b'\n') {
            Some(i) => {
                encode(out, &rest[..=i], stream, time);
                start += i + 1;
            }
            None if rest.len() > MAX_LINE => {
                let cut = split_point(rest);
                encode(out, &rest[..cut], stream, time);
                start += cut;
            }
            None => break,
        }
    }
    pending.drain(..start);
}

/// Copies one stream into the log file until EOF. Write errors (disk full) drop the
/// lines but never stop the reading: a stalled pipe would block the container.
fn pump(mut src: File, stream: Stream, out: &Mutex<Option<LogFile>>) {
    let mut buf = vec![0u8; 32 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    let mut encoded: Vec<u8> = Vec::new();
    let mut warned = false;
    let mut flush = |encoded: &mut Vec<u8>| {
        if encoded.is_empty() {
            return;
        }
        let mut guard = out.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = guard.as_mut() {
            if let Err(e) = f.write(encoded) {
                if !warned {
                    tracing::warn!("log driver: writing the log file: {e}");
                    warned = true;
                }
            }
        }
        encoded.clear();
    };
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!("log driver: reading {}: {e}", stream.as_str());
                break;
            }
        };
        pending.extend_from_slice(&buf[..n]);
        let time = format_rfc3339_nano(SystemTime::now());
        take_lines(&mut pending, stream, &time, &mut encoded);
        flush(&mut encoded);
    }
    if !pending.is_empty() {
        let time = format_rfc3339_nano(SystemTime::now());
        encode(&mut encoded, &pending, stream, &time);
        flush(&mut encoded);
    }
}

/// The driver's work, with the streams given: writes `task_dir/container.log` until both
/// streams reach EOF. `ready` is closed once the log file is open.
pub fn drive(
    task_dir: &Path,
    stdout: File,
    stderr: File,
    ready: Option<File>,
) -> anyhow::Result<()> {
    drive_with_limit(task_dir, stdout, stderr, ready, MAX_FILE_SIZE)
}

fn drive_with_limit(
    task_dir: &Path,
    stdout: File,
    stderr: File,
    ready: Option<File>,
    max_size: u64,
) -> anyhow::Result<()> {
    // The streams are drained even when the file cannot be opened, so that the
    // container does not block on a full pipe; the error is returned at the end.
    let (file, open_err) = match LogFile::open(task_dir, max_size) {
        Ok(f) => (Some(f), None),
        Err(e) => (None, Some(e)),
    };
    drop(ready);
    let out = Mutex::new(file);
    std::thread::scope(|s| {
        let o = &out;
        s.spawn(move || pump(stderr, Stream::Stderr, o));
        pump(stdout, Stream::Stdout, o);
    });
    match open_err {
        Some(e) => Err(e).with_context(|| {
            format!(
                "opening {}: the task's output was discarded",
                task_dir.join(LOG_FILE).display()
            )
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::reader::read_logs;

    fn pipe() -> (File, File) {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe2 fills two new descriptors that we own from here on.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
        assert_eq!(rc, 0, "pipe2 failed");
        // SAFETY: both descriptors were just created and are owned by nobody else.
        unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
    }

    fn entries(dir: &Path, name: &str) -> Vec<serde_json::Value> {
        std::fs::read_to_string(dir.join(name))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is one JSON object"))
            .collect()
    }

    #[test]
    fn uri_gives_back_the_paths() {
        assert_eq!(
            stdio_uri(
                Path::new("/usr/local/bin/swarm-agent"),
                Path::new("/var/lib/swarm/tasks/abc")
            ),
            "binary:///usr/local/bin/swarm-agent?log-driver=/var/lib/swarm/tasks/abc"
        );
        assert_eq!(
            stdio_uri(Path::new("/opt/my bin/agent"), Path::new("/d/a&b=c+%")),
            "binary:///opt/my%20bin/agent?log-driver=/d/a%26b%3Dc%2B%25"
        );
    }

    #[test]
    fn driver_writes_both_streams_as_json_file_entries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let task_dir = dir.path().join("task1");
        let (out_r, mut out_w) = pipe();
        let (err_r, mut err_w) = pipe();
        let (ready_r, ready_w) = pipe();
        let td = task_dir.clone();
        let driver = std::thread::spawn(move || drive(&td, out_r, err_r, Some(ready_w)));
        // The shim waits for the ready pipe: it is closed (EOF) once the file is open.
        let mut b = [0u8; 1];
        let mut ready_r = ready_r;
        assert_eq!(ready_r.read(&mut b).expect("read ready"), 0);
        assert!(task_dir.join(LOG_FILE).exists());
        let mode = std::fs::metadata(task_dir.join(LOG_FILE))
            .expect("log file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640, "Docker's json-file mode");

        out_w.write_all(b"hello\nwor").expect("write");
        err_w.write_all(b"oops \"quoted\"\n").expect("write");
        out_w.write_all(b"ld\n").expect("write");
        let long = vec![b'x'; MAX_LINE + 10];
        out_w.write_all(&long).expect("write");
        out_w.write_all(b"\nno newline").expect("write");
        drop(out_w);
        drop(err_w);
        driver
            .join()
            .expect("driver thread")
            .expect("driver result");

        let e = entries(&task_dir, LOG_FILE);
        let of = |stream: &str| -> Vec<String> {
            e.iter()
                .filter(|v| v["stream"] == stream)
                .map(|v| v["log"].as_str().unwrap_or_default().to_string())
                .collect()
        };
        let stdout = of("stdout");
        assert_eq!(stdout.len(), 5, "{stdout:?}");
        assert_eq!(stdout[0], "hello\n");
        assert_eq!(stdout[1], "world\n");
        assert_eq!(stdout[2].len(), MAX_LINE);
        assert_eq!(stdout[3], "x".repeat(10) + "\n");
        assert_eq!(stdout[4], "no newline");
        assert_eq!(of("stderr"), vec!["oops \"quoted\"\n".to_string()]);
        for v in &e {
            let t = v["time"].as_str().unwrap_or_default();
            assert!(crate::logs::parse_rfc3339(t).is_some(), "bad time {t}");
        }
        // The reader gives the same lines back.
        let lines = read_logs(&task_dir, None, None);
        assert_eq!(lines.len(), 6);
        assert_eq!(
            lines
                .iter()
                .filter(|l| l.stream == Stream::Stderr)
                .map(|l| l.data.clone())
                .collect::<Vec<_>>(),
            vec![b"oops \"quoted\"\n".to_vec()]
        );
    }

    #[test]
    fn utf8_characters_are_not_split() {
        let mut pending = vec![b'a'; MAX_LINE - 1];
        pending.extend_from_slice("é€".as_bytes());
        pending.push(b'\n');
        let mut out = Vec::new();
        take_lines(&mut pending, Stream::Stdout, "t", &mut out);
        let text = String::from_utf8(out).expect("utf8");
        assert!(!text.contains('\u{fffd}'), "a character was cut");
        assert_eq!(text.lines().count(), 2);
        assert!(pending.is_empty());
    }

    #[test]
    fn file_rotates_keeping_one_old_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let task_dir = dir.path().to_path_buf();
        let (out_r, mut out_w) = pipe();
        let (err_r, err_w) = pipe();
        drop(err_w);
        let td = task_dir.clone();
        let driver = std::thread::spawn(move || drive_with_limit(&td, out_r, err_r, None, 2_000));
        for i in 0..200 {
            // One write per line: each becomes its own entry.
            out_w
                .write_all(format!("line {i:03}\n").as_bytes())
                .expect("write");
            std::thread::sleep(Duration::from_micros(200));
        }
        drop(out_w);
        driver
            .join()
            .expect("driver thread")
            .expect("driver result");
        let current = std::fs::metadata(task_dir.join(LOG_FILE))
            .expect("current")
            .len();
        let old = std::fs::metadata(task_dir.join(ROTATED_FILE))
            .expect("rotated")
            .len();
        assert!(current <= 2_000 && old <= 2_000, "{current} {old}");
        assert!(!task_dir.join("container.log.2").exists());
        // The newest lines are all there, in order, across both files.
        let lines = read_logs(&task_dir, Some(5), None);
        let text: Vec<String> = lines
            .iter()
            .map(|l| String::from_utf8_lossy(&l.data).to_string())
            .collect();
        assert_eq!(
            text,
            [
                "line 195\n",
                "line 196\n",
                "line 197\n",
                "line 198\n",
                "line 199\n"
            ]
        );
        let all = read_logs(&task_dir, None, None);
        let first: u32 = String::from_utf8_lossy(&all[0].data)[5..8]
            .parse()
            .expect("number");
        assert_eq!(all.len() as u32, 200 - first);
    }
}

//! Reads a task's log files back: the last lines (`tail`, `since`) across the rotated
//! file and the current one, and a follower that polls the current file for new lines and
//! follows it through rotations.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{parse_rfc3339, LogLine, Stream, LOG_FILE, ROTATED_FILE};

/// How often a follower looks for new lines.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Lines per batch a follower yields.
pub const BATCH: usize = 256;

#[derive(serde::Deserialize)]
struct Entry {
    log: String,
    stream: String,
    time: String,
}

/// One json-file entry; `None` for a line that is not one (it is skipped).
fn parse_entry(line: &[u8]) -> Option<LogLine> {
    let e: Entry = serde_json::from_slice(line).ok()?;
    Some(LogLine {
        stream: Stream::parse(&e.stream)?,
        time: parse_rfc3339(&e.time)?,
        data: e.log.into_bytes(),
    })
}

/// Keeps the lines a `tail`/`since` request wants while a file is read.
struct Collect {
    tail: Option<usize>,
    since: Option<SystemTime>,
    lines: VecDeque<LogLine>,
}

impl Collect {
    fn push(&mut self, l: LogLine) {
        if self.since.is_some_and(|s| l.time < s) {
            return;
        }
        if self.tail == Some(0) {
            return;
        }
        self.lines.push_back(l);
        if self.tail.is_some_and(|t| self.lines.len() > t) {
            self.lines.pop_front();
        }
    }
}

fn file_id(m: &std::fs::Metadata) -> (u64, u64) {
    (m.dev(), m.ino())
}

/// Reads what is in `file` from its current position, splitting entries at `\n`; an
/// incomplete last entry stays in `partial` for the next read.
fn read_entries(file: &mut File, partial: &mut Vec<u8>, mut each: impl FnMut(LogLine)) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::debug!("reading a log file: {e}");
                break;
            }
        };
        partial.extend_from_slice(&buf[..n]);
        let mut start = 0;
        while let Some(i) = partial[start..].iter().position(|b| *b == b'\n') {
            if let Some(l) = parse_entry(&partial[start..start + i]) {
                each(l);
            }
            start += i + 1;
        }
        partial.drain(..start);
    }
}

/// Follows one task's `container.log`: every [`Tailer::poll`] returns the entries written
/// since the last one, across a rotation.
pub struct Tailer {
    dir: PathBuf,
    file: Option<File>,
    id: (u64, u64),
    partial: Vec<u8>,
}

impl Tailer {
    /// Opens the task's logs: the tailer, positioned at the end, and the lines already
    /// written (the last `tail` ones at or after `since`), oldest first.
    pub fn open(
        task_dir: &Path,
        tail: Option<usize>,
        since: Option<SystemTime>,
    ) -> (Tailer, Vec<LogLine>) {
        let mut c = Collect {
            tail,
            since,
            lines: VecDeque::new(),
        };
        let mut t = Tailer {
            dir: task_dir.to_path_buf(),
            file: None,
            id: (0, 0),
            partial: Vec::new(),
        };
        // The current file first: if it rotates while we read the old one, the handle
        // still reads the right file.
        if let Ok(f) = File::open(task_dir.join(LOG_FILE)) {
            if let Ok(m) = f.metadata() {
                t.id = file_id(&m);
            }
            t.file = Some(f);
        }
        if let Ok(mut old) = File::open(task_dir.join(ROTATED_FILE)) {
            let same = old.metadata().map(|m| file_id(&m) == t.id).unwrap_or(true);
            if !same {
                let mut partial = Vec::new();
                read_entries(&mut old, &mut partial, |l| c.push(l));
            }
        }
        if let Some(f) = t.file.as_mut() {
            read_entries(f, &mut t.partial, |l| c.push(l));
        }
        (t, c.lines.into())
    }

    /// The entries written since the last call (or since [`Tailer::open`]).
    pub fn poll(&mut self) -> Vec<LogLine> {
        let mut out = Vec::new();
        let path = self.dir.join(LOG_FILE);
        if self.file.is_none() {
            let Ok(f) = File::open(&path) else {
                return out;
            };
            self.id = f.metadata().map(|m| file_id(&m)).unwrap_or_default();
            self.file = Some(f);
        }
        if let Some(f) = self.file.as_mut() {
            read_entries(f, &mut self.partial, |l| out.push(l));
        }
        let rotated = std::fs::metadata(&path)
            .map(|m| file_id(&m) != self.id)
            .unwrap_or(false);
        if rotated {
            // The writer renamed the file after its last write to it: finish it, then
            // read the new one from its start.
            if let Some(f) = self.file.as_mut() {
                read_entries(f, &mut self.partial, |l| out.push(l));
            }
            self.partial.clear();
            if let Ok(mut f) = File::open(&path) {
                self.id = f.metadata().map(|m| file_id(&m)).unwrap_or_default();
                read_entries(&mut f, &mut self.partial, |l| out.push(l));
                self.file = Some(f);
            }
        }
        out
    }
}

/// The last `tail` lines (all when `None`) at or after `since` of a task, oldest first,
/// across `container.log.1` and `container.log`. No file: no lines.
pub fn read_logs(task_dir: &Path, tail: Option<usize>, since: Option<SystemTime>) -> Vec<LogLine> {
    Tailer::open(task_dir, tail, since).1
}

/// The lines [`read_logs`] gives, then every new line, in batches (at most [`BATCH`]
/// lines each), polling every [`POLL_INTERVAL`]. A task whose log file does not exist
/// yet is waited for. The stream ends only when it is dropped. Needs a tokio runtime.
pub fn follow(
    task_dir: PathBuf,
    tail: Option<usize>,
    since: Option<SystemTime>,
) -> ReceiverStream<Vec<LogLine>> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let opened = tokio::task::spawn_blocking(move || Tailer::open(&task_dir, tail, since));
        let Ok((mut tailer, initial)) = opened.await else {
            return;
        };
        for chunk in initial.chunks(BATCH) {
            if tx.send(chunk.to_vec()).await.is_err() {
                return;
            }
        }
        loop {
            tokio::select! {
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
                _ = tx.closed() => return,
            }
            let polled = tokio::task::spawn_blocking(move || {
                let lines = tailer.poll();
                (tailer, lines)
            });
            let Ok((t, mut lines)) = polled.await else {
                return;
            };
            tailer = t;
            if let Some(s) = since {
                lines.retain(|l| l.time >= s);
            }
            for chunk in lines.chunks(BATCH) {
                if tx.send(chunk.to_vec()).await.is_err() {
                    return;
                }
            }
        }
    });
    ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::format_rfc3339_nano;
    use std::io::Write;
    use std::time::UNIX_EPOCH;
    use tokio_stream::StreamExt;

    fn entry(text: &str, stream: &str, secs: u64) -> String {
        let time = format_rfc3339_nano(UNIX_EPOCH + Duration::from_secs(secs));
        format!(
            "{}\n",
            serde_json::json!({"log": format!("{text}\n"), "stream": stream, "time": time})
        )
    }

    fn append(path: &Path, s: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open");
        f.write_all(s.as_bytes()).expect("write");
    }

    fn texts(lines: &[LogLine]) -> Vec<String> {
        lines
            .iter()
            .map(|l| String::from_utf8_lossy(&l.data).trim_end().to_string())
            .collect()
    }

    #[test]
    fn tail_and_since_span_the_rotated_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        assert!(read_logs(d, None, None).is_empty());
        append(
            &d.join(ROTATED_FILE),
            &(entry("a", "stdout", 10) + &entry("b", "stderr", 20)),
        );
        append(
            &d.join(LOG_FILE),
            &(entry("c", "stdout", 30) + "not json\n" + &entry("d", "stdout", 40)),
        );
        assert_eq!(texts(&read_logs(d, None, None)), ["a", "b", "c", "d"]);
        assert_eq!(texts(&read_logs(d, Some(3), None)), ["b", "c", "d"]);
        assert_eq!(texts(&read_logs(d, Some(0), None)), Vec::<String>::new());
        let since = Some(UNIX_EPOCH + Duration::from_secs(20));
        assert_eq!(texts(&read_logs(d, None, since)), ["b", "c", "d"]);
        assert_eq!(texts(&read_logs(d, Some(1), since)), ["d"]);
        let lines = read_logs(d, None, None);
        assert_eq!(lines[1].stream, Stream::Stderr);
        assert_eq!(lines[1].time, UNIX_EPOCH + Duration::from_secs(20));
    }

    #[test]
    fn tailer_follows_appends_partial_writes_and_rotation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let (mut t, initial) = Tailer::open(d, None, None);
        assert!(initial.is_empty());
        assert!(t.poll().is_empty());
        append(&d.join(LOG_FILE), &entry("one", "stdout", 1));
        assert_eq!(texts(&t.poll()), ["one"]);
        // A half-written entry is kept until its end arrives.
        let two = entry("two", "stdout", 2);
        append(&d.join(LOG_FILE), &two[..10]);
        assert!(t.poll().is_empty());
        append(&d.join(LOG_FILE), &two[10..]);
        assert_eq!(texts(&t.poll()), ["two"]);
        // Last write to the old file, rotation, first write to the new one.
        append(&d.join(LOG_FILE), &entry("three", "stdout", 3));
        std::fs::rename(d.join(LOG_FILE), d.join(ROTATED_FILE)).expect("rotate");
        append(&d.join(LOG_FILE), &entry("four", "stdout", 4));
        assert_eq!(texts(&t.poll()), ["three", "four"]);
        append(&d.join(LOG_FILE), &entry("five", "stdout", 5));
        assert_eq!(texts(&t.poll()), ["five"]);
    }

    #[tokio::test]
    async fn follow_yields_old_then_new_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().to_path_buf();
        append(
            &d.join(LOG_FILE),
            &(entry("old1", "stdout", 1) + &entry("old2", "stdout", 2)),
        );
        let mut s = follow(d.clone(), Some(1), None);
        let first = tokio::time::timeout(Duration::from_secs(5), s.next())
            .await
            .expect("initial lines in time")
            .expect("a batch");
        assert_eq!(texts(&first), ["old2"]);
        append(&d.join(LOG_FILE), &entry("new", "stderr", 3));
        let next = tokio::time::timeout(Duration::from_secs(5), s.next())
            .await
            .expect("new line in time")
            .expect("a batch");
        assert_eq!(texts(&next), ["new"]);
        assert_eq!(next[0].stream, Stream::Stderr);
    }
}

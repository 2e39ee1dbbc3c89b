//! The node's side of `swarm service logs`: listens to the leader's log subscriptions
//! (`LogBroker.ListenSubscriptions`, over the dispatcher session's channel and node
//! certificate) and publishes the lines of the subscribed tasks (`LogBroker.PublishLogs`,
//! one call per subscription) from `<data root>/tasks/<task id>/container.log`.
//!
//! Without `follow`, a subscription sends the last `tail` lines of each task, then
//! `close`. With `follow` it keeps sending new lines until the leader closes it, the
//! publish call fails (the subscription is over) or the listen stream ends.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use proto::log_broker_client::LogBrokerClient;
use proto::{
    ListenSubscriptionsRequest, LogContext, LogMessage, LogStream, LogSubscriptionOptions,
    PublishLogsMessage, SubscriptionMessage,
};
use rand::Rng;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Status;

use super::reader::{follow, read_logs};
use super::{from_unix_nanos, unix_nanos, LogLine};

/// Lines per published message.
const MAX_BATCH_LINES: usize = 256;
/// Bytes of log data per published message (gRPC's default limit is 4 MiB).
const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// Serves log subscriptions over `ch` (the channel of the dispatcher session, to the
/// leader) forever, reconnecting after errors. Run it next to the session and drop it
/// when the session ends; dropping it stops every publication.
pub async fn serve(tasks_dir: PathBuf, ch: Channel) -> Infallible {
    loop {
        match listen(&tasks_dir, ch.clone()).await {
            Ok(()) => tracing::debug!("log subscription stream ended; reconnecting"),
            Err(s) => tracing::debug!(
                code = ?s.code(),
                "log subscription stream failed: {}; reconnecting",
                s.message()
            ),
        }
        let ms = rand::rng().random_range(500..1500);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

/// One subscription being served. Dropping it stops its work.
struct Active {
    tasks: HashSet<String>,
    /// Following: where new tasks' lines go.
    tx: Option<mpsc::Sender<PublishLogsMessage>>,
    options: LogSubscriptionOptions,
    workers: Vec<JoinHandle<()>>,
}

impl Active {
    fn finished(&self) -> bool {
        self.workers.iter().all(JoinHandle::is_finished)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        for w in &self.workers {
            w.abort();
        }
    }
}

/// Task ids become directory names: only plain ids are accepted.
fn valid_task_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

async fn listen(tasks_dir: &Path, ch: Channel) -> Result<(), Status> {
    let mut client = LogBrokerClient::new(ch.clone());
    let mut stream = client
        .listen_subscriptions(ListenSubscriptionsRequest {})
        .await?
        .into_inner();
    let mut active: HashMap<String, Active> = HashMap::new();
    while let Some(msg) = stream.message().await? {
        active.retain(|_, a| !a.finished());
        handle(tasks_dir, &ch, &mut active, msg);
    }
    Ok(())
}

fn handle(
    tasks_dir: &Path,
    ch: &Channel,
    active: &mut HashMap<String, Active>,
    msg: SubscriptionMessage,
) {
    if msg.close {
        if active.remove(&msg.id).is_some() {
            tracing::debug!(subscription = %msg.id, "log subscription closed");
        }
        return;
    }
    let tasks: Vec<String> = msg
        .selector
        .map(|s| s.task_ids)
        .unwrap_or_default()
        .into_iter()
        .filter(|t| valid_task_id(t))
        .collect();
    if let Some(a) = active.get_mut(&msg.id) {
        // A known subscription with more tasks (following: a task appeared).
        let Some(tx) = a.tx.clone() else {
            return;
        };
        for t in tasks {
            if a.tasks.insert(t.clone()) {
                let w = tokio::spawn(follow_task(
                    tasks_dir.to_path_buf(),
                    msg.id.clone(),
                    t,
                    a.options.clone(),
                    tx.clone(),
                ));
                a.workers.push(w);
            }
        }
        return;
    }
    let options = msg.options.unwrap_or_default();
    tracing::debug!(subscription = %msg.id, tasks = tasks.len(), follow = options.follow, "log subscription");
    let (tx, rx) = mpsc::channel::<PublishLogsMessage>(16);
    let mut workers = Vec::new();
    let mut client = LogBrokerClient::new(ch.clone());
    let id = msg.id.clone();
    workers.push(tokio::spawn(async move {
        if let Err(s) = client.publish_logs(ReceiverStream::new(rx)).await {
            tracing::debug!(subscription = %id, "publishing logs: {}", s.message());
        }
    }));
    let keep_tx = if options.follow {
        for t in &tasks {
            workers.push(tokio::spawn(follow_task(
                tasks_dir.to_path_buf(),
                msg.id.clone(),
                t.clone(),
                options.clone(),
                tx.clone(),
            )));
        }
        Some(tx)
    } else {
        workers.push(tokio::spawn(send_once(
            tasks_dir.to_path_buf(),
            msg.id.clone(),
            tasks.clone(),
            options.clone(),
            tx,
        )));
        None
    };
    active.insert(
        msg.id,
        Active {
            tasks: tasks.into_iter().collect(),
            tx: keep_tx,
            options,
            workers,
        },
    );
}

fn tail_of(o: &LogSubscriptionOptions) -> Option<usize> {
    usize::try_from(o.tail).ok()
}

fn wants(o: &LogSubscriptionOptions, l: &LogLine) -> bool {
    let s = l.stream.to_proto() as i32;
    o.streams.is_empty() || o.streams.contains(&s)
}

/// The lines as messages, in batches that fit a gRPC message.
fn batches(task_id: &str, lines: Vec<LogLine>, o: &LogSubscriptionOptions) -> Vec<Vec<LogMessage>> {
    let mut out: Vec<Vec<LogMessage>> = Vec::new();
    let mut cur: Vec<LogMessage> = Vec::new();
    let mut bytes = 0;
    for l in lines.into_iter().filter(|l| wants(o, l)) {
        if !cur.is_empty()
            && (cur.len() >= MAX_BATCH_LINES || bytes + l.data.len() > MAX_BATCH_BYTES)
        {
            out.push(std::mem::take(&mut cur));
            bytes = 0;
        }
        bytes += l.data.len();
        cur.push(LogMessage {
            context: Some(LogContext {
                service_id: String::new(),
                node_id: String::new(),
                task_id: task_id.to_string(),
            }),
            timestamp_ns: unix_nanos(l.time),
            stream: l.stream.to_proto() as i32,
            data: l.data,
        });
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

async fn send_batches(
    sub: &str,
    task_id: &str,
    lines: Vec<LogLine>,
    o: &LogSubscriptionOptions,
    tx: &mpsc::Sender<PublishLogsMessage>,
) -> bool {
    for messages in batches(task_id, lines, o) {
        let msg = PublishLogsMessage {
            subscription_id: sub.to_string(),
            messages,
            close: false,
        };
        if tx.send(msg).await.is_err() {
            return false;
        }
    }
    true
}

/// Not following: every task's lines, then `close`.
async fn send_once(
    tasks_dir: PathBuf,
    sub: String,
    tasks: Vec<String>,
    o: LogSubscriptionOptions,
    tx: mpsc::Sender<PublishLogsMessage>,
) {
    for t in tasks {
        let dir = tasks_dir.join(&t);
        let (tail, since) = (tail_of(&o), from_unix_nanos(o.since_ns));
        let lines = tokio::task::spawn_blocking(move || read_logs(&dir, tail, since))
            .await
            .unwrap_or_default();
        if !send_batches(&sub, &t, lines, &o, &tx).await {
            return;
        }
    }
    let _ = tx
        .send(PublishLogsMessage {
            subscription_id: sub,
            messages: Vec::new(),
            close: true,
        })
        .await;
}

/// Following one task: its last lines, then new ones as they are written.
async fn follow_task(
    tasks_dir: PathBuf,
    sub: String,
    task_id: String,
    o: LogSubscriptionOptions,
    tx: mpsc::Sender<PublishLogsMessage>,
) {
    let mut lines = follow(
        tasks_dir.join(&task_id),
        tail_of(&o),
        from_unix_nanos(o.since_ns),
    );
    while let Some(batch) = lines.next().await {
        if !send_batches(&sub, &task_id, batch, &o, &tx).await {
            return;
        }
    }
}

/// The streams a subscription wants, for tests and callers that build options.
pub fn streams(stdout: bool, stderr: bool) -> Vec<i32> {
    let mut v = Vec::new();
    if stdout {
        v.push(LogStream::Stdout as i32);
    }
    if stderr {
        v.push(LogStream::Stderr as i32);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::Stream;
    use std::time::UNIX_EPOCH;

    fn line(stream: Stream, text: &str) -> LogLine {
        LogLine {
            stream,
            time: UNIX_EPOCH + Duration::from_secs(5),
            data: text.as_bytes().to_vec(),
        }
    }

    #[test]
    fn batches_filter_streams_and_stay_small() {
        let o = LogSubscriptionOptions {
            streams: streams(false, true),
            ..Default::default()
        };
        let lines = vec![line(Stream::Stdout, "a\n"), line(Stream::Stderr, "b\n")];
        let b = batches("t1", lines, &o);
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].len(), 1);
        assert_eq!(b[0][0].data, b"b\n");
        assert_eq!(b[0][0].stream, LogStream::Stderr as i32);
        assert_eq!(b[0][0].timestamp_ns, 5_000_000_000);
        assert_eq!(
            b[0][0].context.as_ref().map(|c| c.task_id.as_str()),
            Some("t1")
        );
        let big: Vec<LogLine> = (0..300)
            .map(|_| line(Stream::Stdout, &"x".repeat(16 * 1024)))
            .collect();
        let b = batches("t1", big, &LogSubscriptionOptions::default());
        assert!(b.len() >= 5);
        assert!(b
            .iter()
            .all(|m| m.iter().map(|l| l.data.len()).sum::<usize>() <= MAX_BATCH_BYTES));
        assert_eq!(b.iter().map(Vec::len).sum::<usize>(), 300);
    }

    #[test]
    fn only_plain_task_ids_name_directories() {
        assert!(valid_task_id("abc123XYZ"));
        assert!(!valid_task_id(""));
        assert!(!valid_task_id("../etc"));
        assert!(!valid_task_id("a/b"));
    }

    #[test]
    fn tail_option() {
        let o = |tail| LogSubscriptionOptions {
            tail,
            ..Default::default()
        };
        assert_eq!(tail_of(&o(-1)), None);
        assert_eq!(tail_of(&o(0)), Some(0));
        assert_eq!(tail_of(&o(7)), Some(7));
    }
}

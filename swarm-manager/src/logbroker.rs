//! The log broker: `swarm service logs`.
//!
//! Clients call `Logs.SubscribeLogs` on any manager: the local socket
//! ([`LocalCaller`](crate::api::LocalCaller)) or a manager certificate may; followers
//! forward the call to the leader and relay its stream. The leader's broker (in memory,
//! leader only) resolves the selector to the tasks in the store (any state: a stopped
//! task's logs show while the task exists), groups them by node and tells each node
//! through its `LogBroker.ListenSubscriptions` stream which of its tasks to read. Nodes
//! answer with `LogBroker.PublishLogs` (one call per subscription); the broker stamps
//! each message with the service, node and task it knows (a node can publish only for
//! its own tasks of the subscription) and relays it.
//!
//! Without `follow` the client's stream ends once every node that was told closed,
//! disconnected, or stayed silent for [`NODE_SILENCE`]; nodes that are not connected
//! give no logs (as in Docker). With `follow` the stream lasts until the client goes
//! away, and tasks of the selected services that appear later are added.
//!
//! Agents authenticate with their node certificate; the node id is the certificate's CN.
//! A follower answers agents `Unavailable` with the leader's address in `x-swarm-leader`,
//! like the dispatcher.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::Stream;
use proto::log_broker_server::LogBroker as LogBrokerRpc;
use proto::logs_client::LogsClient;
use proto::logs_server::Logs;
use proto::{
    ListenSubscriptionsRequest, LogContext, LogSelector, LogSubscriptionOptions,
    PublishLogsMessage, PublishLogsResponse, SubscribeLogsMessage, SubscribeLogsRequest,
    SubscriptionMessage,
};
use swarm_common::id::new_id;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream};
use tonic::{Request, Response, Status, Streaming};

use crate::api::{authorize, forwarded, leader_only, member_role, node_of};
use crate::router::{Route, Router};
use crate::store::{Standing, State, Store};

/// A subscription that is not following ends when its pending nodes have published
/// nothing for this long.
pub const NODE_SILENCE: Duration = Duration::from_secs(20);
/// How often subscriptions and listeners check leadership and their peers.
const TICK: Duration = Duration::from_secs(1);

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;
type ClientTx = mpsc::Sender<Result<SubscribeLogsMessage, Status>>;
type ListenerTx = mpsc::UnboundedSender<Result<SubscriptionMessage, Status>>;

struct Listener {
    id: u64,
    tx: ListenerTx,
}

struct Sub {
    /// Services whose new tasks join a following subscription.
    services: BTreeSet<String>,
    options: LogSubscriptionOptions,
    /// Per node, the tasks (id -> service id) it was given.
    nodes: HashMap<String, BTreeMap<String, String>>,
    /// Nodes that were told and have not closed (not following).
    pending: HashSet<String>,
    client: ClientTx,
    last_activity: Instant,
}

impl Sub {
    fn message(&self, id: &str, node: &str) -> SubscriptionMessage {
        SubscriptionMessage {
            id: id.to_string(),
            selector: Some(LogSelector {
                service_ids: Vec::new(),
                task_ids: self
                    .nodes
                    .get(node)
                    .map(|t| t.keys().cloned().collect())
                    .unwrap_or_default(),
            }),
            options: Some(self.options.clone()),
            close: false,
        }
    }
}

#[derive(Default)]
struct BrokerState {
    listeners: HashMap<String, Listener>,
    subs: HashMap<String, Sub>,
}

impl BrokerState {
    /// Sends to a node's listener; false when it is not connected.
    fn tell(&self, node: &str, msg: SubscriptionMessage) -> bool {
        self.listeners
            .get(node)
            .is_some_and(|l| l.tx.send(Ok(msg)).is_ok())
    }

    /// Ends a subscription: its client stream ends (with `err` when given) and its nodes
    /// stop publishing.
    fn finish(&mut self, id: &str, err: Option<Status>) {
        let Some(sub) = self.subs.remove(id) else {
            return;
        };
        if let Some(e) = err {
            let _ = sub.client.try_send(Err(e));
        }
        for node in sub.nodes.keys() {
            self.tell(
                node,
                SubscriptionMessage {
                    id: id.to_string(),
                    close: true,
                    ..Default::default()
                },
            );
        }
    }

    /// A node finished (or can no longer serve) the subscriptions it had pending.
    fn node_done(&mut self, node: &str, only: Option<&str>) {
        let done: Vec<String> = self
            .subs
            .iter_mut()
            .filter(|(id, _)| only.is_none_or(|o| o == id.as_str()))
            .filter_map(|(id, s)| {
                s.pending.remove(node);
                (!s.options.follow && s.pending.is_empty()).then(|| id.clone())
            })
            .collect();
        for id in done {
            // Everything was sent: the client stream simply ends.
            self.subs.remove(&id);
        }
    }
}

/// The broker of one manager (serves while it leads).
#[derive(Clone)]
pub struct LogBroker {
    store: Store,
    router: Router,
    state: Arc<Mutex<BrokerState>>,
    next_listener: Arc<AtomicU64>,
}

/// The resolved selector: service ids and task ids.
#[derive(Debug, Default)]
struct Resolved {
    services: BTreeSet<String>,
    tasks: BTreeSet<String>,
}

fn find_service(st: &State, r: &str) -> Result<String, Status> {
    if st.service(r).is_some() {
        return Ok(r.to_string());
    }
    if let Some(s) = st.service_by_name(r) {
        return Ok(s.id.clone());
    }
    let prefixed: Vec<&str> = st
        .services()
        .filter(|s| s.id.starts_with(r))
        .map(|s| s.id.as_str())
        .collect();
    match prefixed.as_slice() {
        [one] => Ok(one.to_string()),
        [] if st.tasks_of_service(r).next().is_some() => Ok(r.to_string()),
        [] => Err(Status::not_found(format!("service {r} not found"))),
        many => Err(Status::invalid_argument(format!(
            "service {r} is ambiguous: multiple IDs found with provided prefix ({} services match); give more characters of the ID",
            many.len()
        ))),
    }
}

fn find_task(st: &State, r: &str) -> Result<String, Status> {
    if st.task(r).is_some() {
        return Ok(r.to_string());
    }
    let prefixed: Vec<&str> = st
        .tasks()
        .filter(|t| t.id.starts_with(r))
        .map(|t| t.id.as_str())
        .collect();
    match prefixed.as_slice() {
        [one] => Ok(one.to_string()),
        [] => Err(Status::not_found(format!("task {r} not found"))),
        many => Err(Status::invalid_argument(format!(
            "task {r} is ambiguous: multiple IDs found with provided prefix ({} tasks match); give more characters of the ID",
            many.len()
        ))),
    }
}

fn resolve(st: &State, sel: &LogSelector) -> Result<Resolved, Status> {
    let refs = sel.service_ids.iter().chain(&sel.task_ids);
    if refs.clone().all(|r| r.is_empty()) {
        return Err(Status::invalid_argument(
            "select the logs of at least one service or task",
        ));
    }
    let mut out = Resolved::default();
    for r in sel.service_ids.iter().filter(|r| !r.is_empty()) {
        out.services.insert(find_service(st, r)?);
    }
    for r in sel.task_ids.iter().filter(|r| !r.is_empty()) {
        out.tasks.insert(find_task(st, r)?);
    }
    Ok(out)
}

/// The tasks a selector covers that are on a node: node -> (task id -> service id).
fn placed_tasks(st: &State, r: &Resolved) -> HashMap<String, BTreeMap<String, String>> {
    let mut out: HashMap<String, BTreeMap<String, String>> = HashMap::new();
    let from_services = r.services.iter().flat_map(|s| st.tasks_of_service(s));
    let named = r.tasks.iter().filter_map(|t| st.task(t));
    for t in from_services.chain(named) {
        if t.node_id.is_empty() {
            continue;
        }
        out.entry(t.node_id.clone())
            .or_default()
            .insert(t.id.clone(), t.service_id.clone());
    }
    out
}

fn over(id: &str) -> Status {
    Status::not_found(format!(
        "log subscription {id} is over: stop publishing for it"
    ))
}

impl LogBroker {
    pub fn new(store: Store, router: Router) -> Self {
        LogBroker {
            store,
            router,
            state: Arc::new(Mutex::new(BrokerState::default())),
            next_listener: Arc::new(AtomicU64::new(1)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BrokerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn leading(&self) -> bool {
        matches!(self.router.route(), Route::Local)
    }

    /// Starts a subscription on this (leading) manager: the stream of its log messages.
    pub fn subscribe(
        &self,
        selector: LogSelector,
        options: LogSubscriptionOptions,
    ) -> Result<mpsc::Receiver<Result<SubscribeLogsMessage, Status>>, Status> {
        let (resolved, nodes) = {
            let st = self.store.read();
            let r = resolve(&st, &selector)?;
            let nodes = placed_tasks(&st, &r);
            (r, nodes)
        };
        let id = new_id();
        let (tx, rx) = mpsc::channel(16);
        let mut sub = Sub {
            services: resolved.services,
            options,
            nodes,
            pending: HashSet::new(),
            client: tx,
            last_activity: Instant::now(),
        };
        let follow = sub.options.follow;
        {
            let mut state = self.lock();
            let nodes: Vec<String> = sub.nodes.keys().cloned().collect();
            for node in nodes {
                if state.tell(&node, sub.message(&id, &node)) {
                    sub.pending.insert(node);
                } else {
                    tracing::debug!(subscription = %id, %node, "node not connected: no logs from it");
                }
            }
            tracing::debug!(subscription = %id, nodes = sub.pending.len(), follow, "log subscription");
            if !follow && sub.pending.is_empty() {
                return Ok(rx);
            }
            state.subs.insert(id.clone(), sub);
        }
        tokio::spawn(self.clone().supervise(id));
        Ok(rx)
    }

    /// Ends the subscription when its client leaves, when this manager stops leading or
    /// (not following) when its nodes stay silent; adds new tasks when following.
    async fn supervise(self, id: String) {
        let mut watch = self.store.watch();
        loop {
            tokio::select! {
                r = watch.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(TICK) => {}
            }
            if !self.leading() {
                self.lock().finish(
                    &id,
                    Some(Status::unavailable(
                        "the manager serving the logs lost its leadership; run the command again",
                    )),
                );
                return;
            }
            let services = {
                let mut state = self.lock();
                let Some(sub) = state.subs.get(&id) else {
                    return;
                };
                if sub.client.is_closed() {
                    state.finish(&id, None);
                    return;
                }
                if !sub.options.follow {
                    if sub.last_activity.elapsed() >= NODE_SILENCE {
                        tracing::info!(subscription = %id, nodes = ?sub.pending, "nodes sent no logs in time; ending the log stream without them");
                        state.finish(&id, None);
                        return;
                    }
                    continue;
                }
                sub.services.clone()
            };
            if services.is_empty() {
                continue;
            }
            let now = {
                let st = self.store.read();
                placed_tasks(
                    &st,
                    &Resolved {
                        services,
                        tasks: BTreeSet::new(),
                    },
                )
            };
            let mut state = self.lock();
            let mut changed = Vec::new();
            if let Some(sub) = state.subs.get_mut(&id) {
                for (node, tasks) in now {
                    let known = sub.nodes.entry(node.clone()).or_default();
                    let before = known.len();
                    known.extend(tasks);
                    if known.len() != before {
                        changed.push((node.clone(), sub.message(&id, &node)));
                    }
                }
            }
            for (node, msg) in changed {
                state.tell(&node, msg);
            }
        }
    }

    /// Registers the listener of `node` (replacing an older one): the subscriptions it
    /// must serve, starting with the following ones that cover its tasks.
    pub fn listen(
        &self,
        node: &str,
    ) -> mpsc::UnboundedReceiver<Result<SubscriptionMessage, Status>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let lid = self.next_listener.fetch_add(1, Ordering::Relaxed);
        {
            let mut state = self.lock();
            for (id, sub) in &state.subs {
                if sub.options.follow && sub.nodes.get(node).is_some_and(|t| !t.is_empty()) {
                    let _ = tx.send(Ok(sub.message(id, node)));
                }
            }
            if state
                .listeners
                .insert(node.to_string(), Listener { id: lid, tx })
                .is_some()
            {
                // The node reconnected: what the old listener had pending is lost.
                tracing::debug!(%node, "log listener replaced");
                state.node_done(node, None);
            }
        }
        tokio::spawn(self.clone().watch_listener(node.to_string(), lid));
        rx
    }

    /// Unregisters a listener whose stream closed, or ends it when leadership is lost or its
    /// node is removed from the swarm (`PermissionDenied`, as the dispatcher's streams).
    async fn watch_listener(self, node: String, lid: u64) {
        loop {
            tokio::time::sleep(TICK).await;
            if let Some(denied) = self.removed(&node) {
                let mut state = self.lock();
                if state.listeners.get(&node).is_some_and(|l| l.id == lid) {
                    if let Some(l) = state.listeners.remove(&node) {
                        let _ = l.tx.send(Err(denied));
                    }
                    state.node_done(&node, None);
                }
                return;
            }
            let leading = self.leading();
            let mut state = self.lock();
            let closed = match state.listeners.get(&node) {
                Some(l) if l.id == lid => l.tx.is_closed(),
                _ => return,
            };
            if closed || !leading {
                if let Some(l) = state.listeners.remove(&node) {
                    if !leading {
                        let _ =
                            l.tx.send(Err(Status::unavailable("leadership changed; reconnect")));
                    }
                }
                state.node_done(&node, None);
                return;
            }
        }
    }

    /// One message a node published: relayed to the subscription's client.
    pub async fn publish(&self, node: &str, msg: PublishLogsMessage) -> Result<(), Status> {
        let id = msg.subscription_id;
        let (client, messages) = {
            let mut state = self.lock();
            let Some(sub) = state.subs.get_mut(&id) else {
                return Err(over(&id));
            };
            let Some(tasks) = sub.nodes.get(node) else {
                return Err(Status::permission_denied(format!(
                    "node {node} has no task in log subscription {id}"
                )));
            };
            let messages: Vec<_> = msg
                .messages
                .into_iter()
                .filter_map(|mut m| {
                    let task = m.context.as_ref()?.task_id.clone();
                    let service = tasks.get(&task)?.clone();
                    m.context = Some(LogContext {
                        service_id: service,
                        node_id: node.to_string(),
                        task_id: task,
                    });
                    Some(m)
                })
                .collect();
            sub.last_activity = Instant::now();
            (sub.client.clone(), messages)
        };
        if !messages.is_empty()
            && client
                .send(Ok(SubscribeLogsMessage { messages }))
                .await
                .is_err()
        {
            self.lock().finish(&id, None);
            return Err(over(&id));
        }
        if msg.close {
            self.lock().node_done(node, Some(&id));
        }
        Ok(())
    }

    /// Serves one `PublishLogs` call of `node` (one subscription per call).
    async fn publish_stream(
        &self,
        node: &str,
        mut stream: impl Stream<Item = Result<PublishLogsMessage, Status>> + Unpin,
    ) -> Result<(), Status> {
        use futures::StreamExt;
        let mut subscription: Option<String> = None;
        let result = async {
            while let Some(m) = stream.next().await {
                let m = m?;
                match &subscription {
                    None => subscription = Some(m.subscription_id.clone()),
                    Some(s) if *s != m.subscription_id => {
                        return Err(Status::invalid_argument(
                            "a PublishLogs call carries one subscription: open one call per subscription",
                        ))
                    }
                    Some(_) => {}
                }
                if let Some(denied) = self.removed(node) {
                    return Err(denied);
                }
                self.publish(node, m).await?;
            }
            Ok(())
        }
        .await;
        // A node whose call ended has nothing more for that subscription.
        if let Some(s) = &subscription {
            self.lock().node_done(node, Some(s));
        }
        result
    }

    /// `PermissionDenied` when `node` was removed from the swarm: its open streams end.
    fn removed(&self, node: &str) -> Option<Status> {
        let state = self.store.read();
        match state.standing(node) {
            Standing::Removed => member_role(&state, node).err(),
            _ => None,
        }
    }

    /// Subscriptions in progress (for tests and metrics).
    pub fn subscriptions(&self) -> usize {
        self.lock().subs.len()
    }
}

#[tonic::async_trait]
impl Logs for LogBroker {
    type SubscribeLogsStream = BoxStream<SubscribeLogsMessage>;

    async fn subscribe_logs(
        &self,
        req: Request<SubscribeLogsRequest>,
    ) -> Result<Response<Self::SubscribeLogsStream>, Status> {
        let caller = authorize(&req, &self.store.read())?;
        match self.router.route() {
            Route::Local => {
                let r = req.into_inner();
                let rx = self.subscribe(
                    r.selector.unwrap_or_default(),
                    r.options.unwrap_or_default(),
                )?;
                Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
            }
            Route::Leader(ch) => {
                tracing::debug!("forwarding SubscribeLogs to the leader");
                let stream = LogsClient::new(ch)
                    .subscribe_logs(forwarded(req, caller.as_ref()))
                    .await?
                    .into_inner();
                Ok(Response::new(Box::pin(stream)))
            }
            Route::NoLeader => Err(crate::router::no_leader()),
            Route::Stopped(reason) => Err(crate::router::raft_stopped(&reason)),
        }
    }
}

#[tonic::async_trait]
impl LogBrokerRpc for LogBroker {
    type ListenSubscriptionsStream = BoxStream<SubscriptionMessage>;

    async fn listen_subscriptions(
        &self,
        req: Request<ListenSubscriptionsRequest>,
    ) -> Result<Response<Self::ListenSubscriptionsStream>, Status> {
        leader_only(&self.router)?;
        let node = node_of(&req, &self.store.read())?;
        let rx = self.listen(&node);
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }

    async fn publish_logs(
        &self,
        req: Request<Streaming<PublishLogsMessage>>,
    ) -> Result<Response<PublishLogsResponse>, Status> {
        leader_only(&self.router)?;
        let node = node_of(&req, &self.store.read())?;
        self.publish_stream(&node, req.into_inner()).await?;
        Ok(Response::new(PublishLogsResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Kind, Object, Op};
    use proto::{LogMessage, LogStream, Service, ServiceSpec, Task, TaskState, TaskStatus};
    use tokio::time::timeout;

    const WAIT: Duration = Duration::from_secs(5);

    fn service(id: &str, name: &str) -> Object {
        Object::Service(Service {
            id: id.into(),
            spec: Some(ServiceSpec {
                name: name.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn task(id: &str, svc: &str, node: &str, slot: u64) -> Object {
        Object::Task(Task {
            id: id.into(),
            service_id: svc.into(),
            node_id: node.into(),
            slot,
            status: Some(TaskStatus {
                state: TaskState::Running as i32,
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    async fn broker(objects: Vec<Object>) -> (LogBroker, Store) {
        let store = Store::memory();
        store
            .write(objects.into_iter().map(Op::Create).collect())
            .await
            .expect("write objects");
        (LogBroker::new(store.clone(), Router::local()), store)
    }

    fn line(task: &str, text: &str) -> LogMessage {
        LogMessage {
            context: Some(LogContext {
                task_id: task.into(),
                ..Default::default()
            }),
            timestamp_ns: 1,
            stream: LogStream::Stdout as i32,
            data: text.as_bytes().to_vec(),
        }
    }

    fn publish(sub: &str, lines: Vec<LogMessage>, close: bool) -> PublishLogsMessage {
        PublishLogsMessage {
            subscription_id: sub.into(),
            messages: lines,
            close,
        }
    }

    async fn next<T>(rx: &mut mpsc::UnboundedReceiver<Result<T, Status>>) -> T {
        timeout(WAIT, rx.recv())
            .await
            .expect("a message in time")
            .expect("stream open")
            .expect("not an error")
    }

    fn tasks_of(m: &SubscriptionMessage) -> Vec<String> {
        m.selector
            .as_ref()
            .map(|s| s.task_ids.clone())
            .unwrap_or_default()
    }

    fn by_service(svc: &str) -> LogSelector {
        LogSelector {
            service_ids: vec![svc.into()],
            task_ids: vec![],
        }
    }

    #[tokio::test]
    async fn logs_of_every_node_then_the_stream_ends() {
        let (b, _) = broker(vec![
            service("svc1", "web"),
            task("t1", "svc1", "n1", 1),
            task("t2", "svc1", "n2", 2),
            task("t3", "svc1", "n1", 3),
            task("t4", "svc1", "n3", 4),
            task("tp", "svc1", "", 5),
            service("svc2", "other"),
            task("x1", "svc2", "n1", 1),
        ])
        .await;
        let mut l1 = b.listen("n1");
        let mut l2 = b.listen("n2");
        // n3 has no listener: it gives no logs and is not waited for.
        let mut client = b
            .subscribe(
                by_service("web"),
                LogSubscriptionOptions {
                    tail: -1,
                    ..Default::default()
                },
            )
            .expect("subscribe");
        let m1 = next(&mut l1).await;
        let m2 = next(&mut l2).await;
        assert_eq!(tasks_of(&m1), ["t1", "t3"]);
        assert_eq!(tasks_of(&m2), ["t2"]);
        assert_eq!(m1.id, m2.id);
        assert_eq!(m1.options.as_ref().map(|o| o.tail), Some(-1));

        // A node may publish only its own tasks of the subscription.
        b.publish(
            "n1",
            publish(
                &m1.id,
                vec![
                    line("t1", "a\n"),
                    line("t2", "forged\n"),
                    line("x1", "other\n"),
                ],
                false,
            ),
        )
        .await
        .expect("publish");
        let got = timeout(WAIT, client.recv())
            .await
            .expect("in time")
            .expect("open")
            .expect("ok");
        assert_eq!(got.messages.len(), 1);
        let ctx = got.messages[0].context.clone().unwrap_or_default();
        assert_eq!(
            (
                ctx.service_id.as_str(),
                ctx.node_id.as_str(),
                ctx.task_id.as_str()
            ),
            ("svc1", "n1", "t1")
        );
        assert_eq!(
            b.publish("n9", publish(&m1.id, vec![line("t4", "x\n")], false))
                .await
                .map_err(|s| s.code()),
            Err(tonic::Code::PermissionDenied)
        );

        b.publish("n1", publish(&m1.id, vec![line("t3", "b\n")], true))
            .await
            .expect("publish");
        let got = timeout(WAIT, client.recv())
            .await
            .expect("in time")
            .expect("open")
            .expect("ok");
        assert_eq!(got.messages[0].data, b"b\n");
        assert_eq!(b.subscriptions(), 1, "n2 has not closed yet");
        b.publish("n2", publish(&m1.id, vec![], true))
            .await
            .expect("close");
        assert!(
            timeout(WAIT, client.recv())
                .await
                .expect("in time")
                .is_none(),
            "stream ended"
        );
        assert_eq!(b.subscriptions(), 0);
        // Publishing for a finished subscription tells the node to stop.
        assert_eq!(
            b.publish("n1", publish(&m1.id, vec![line("t1", "late\n")], false))
                .await
                .map_err(|s| s.code()),
            Err(tonic::Code::NotFound)
        );
    }

    #[tokio::test]
    async fn selectors_resolve_like_the_cli_types_them() {
        let (b, _) = broker(vec![
            service("abcdef", "web"),
            task("task111", "abcdef", "n1", 1),
            task("task222", "abcdef", "n1", 2),
        ])
        .await;
        let mut l1 = b.listen("n1");
        let none = LogSubscriptionOptions::default();
        for sel in [by_service("web"), by_service("abc"), by_service("abcdef")] {
            let _c = b.subscribe(sel, none.clone()).expect("subscribe");
            assert_eq!(tasks_of(&next(&mut l1).await), ["task111", "task222"]);
        }
        let _c = b
            .subscribe(
                LogSelector {
                    service_ids: vec![],
                    task_ids: vec!["task2".into()],
                },
                none.clone(),
            )
            .expect("subscribe");
        assert_eq!(tasks_of(&next(&mut l1).await), ["task222"]);
        let code = |sel| b.subscribe(sel, none.clone()).err().map(|s| s.code());
        assert_eq!(code(by_service("nope")), Some(tonic::Code::NotFound));
        assert_eq!(
            code(LogSelector {
                service_ids: vec![],
                task_ids: vec!["task".into()]
            }),
            Some(tonic::Code::InvalidArgument)
        );
        assert_eq!(
            code(LogSelector::default()),
            Some(tonic::Code::InvalidArgument)
        );
    }

    #[tokio::test]
    async fn nothing_connected_ends_at_once_and_a_lost_node_ends_the_wait() {
        let (b, _) = broker(vec![service("s", "web"), task("t1", "s", "n1", 1)]).await;
        let mut c = b
            .subscribe(by_service("s"), LogSubscriptionOptions::default())
            .expect("subscribe");
        assert!(timeout(WAIT, c.recv()).await.expect("in time").is_none());

        let l1 = b.listen("n1");
        let mut c = b
            .subscribe(by_service("s"), LogSubscriptionOptions::default())
            .expect("subscribe");
        drop(l1); // the node disconnects before publishing
        assert!(timeout(WAIT, c.recv()).await.expect("in time").is_none());
        assert_eq!(b.subscriptions(), 0);

        // The node reconnects (a new listener replaces the old one) before publishing.
        let _old = b.listen("n1");
        let mut c = b
            .subscribe(by_service("s"), LogSubscriptionOptions::default())
            .expect("subscribe");
        let _new = b.listen("n1");
        assert!(timeout(WAIT, c.recv()).await.expect("in time").is_none());
    }

    #[tokio::test]
    async fn follow_adds_new_tasks_reaches_late_listeners_and_closes_on_client_exit() {
        let (b, store) = broker(vec![service("s", "web"), task("t1", "s", "n1", 1)]).await;
        let mut l1 = b.listen("n1");
        let follow = LogSubscriptionOptions {
            follow: true,
            tail: 10,
            ..Default::default()
        };
        let client = b.subscribe(by_service("s"), follow).expect("subscribe");
        let first = next(&mut l1).await;
        assert_eq!(tasks_of(&first), ["t1"]);
        // A task of the service appears on n1, another one on n2 (not listening yet).
        store
            .write(vec![
                Op::Create(task("t2", "s", "n1", 2)),
                Op::Create(task("t3", "s", "n2", 3)),
            ])
            .await
            .expect("write");
        let more = next(&mut l1).await;
        assert_eq!(more.id, first.id);
        assert_eq!(tasks_of(&more), ["t1", "t2"]);
        let mut l2 = b.listen("n2");
        let late = next(&mut l2).await;
        assert_eq!(
            (late.id.as_str(), tasks_of(&late)),
            (first.id.as_str(), vec!["t3".to_string()])
        );
        // A follow subscription does not end when nodes close.
        b.publish("n2", publish(&first.id, vec![], true))
            .await
            .expect("close");
        assert_eq!(b.subscriptions(), 1);
        // The client leaves: the nodes are told to stop.
        drop(client);
        let closed = next(&mut l1).await;
        assert!(closed.close);
        assert_eq!(closed.id, first.id);
        assert!(next(&mut l2).await.close);
        assert_eq!(b.subscriptions(), 0);
    }

    #[tokio::test]
    async fn a_removed_nodes_log_streams_end_with_permission_denied() {
        let cluster = Object::Cluster(proto::Cluster {
            id: "c1".into(),
            ..Default::default()
        });
        let node = Object::Node(proto::Node {
            id: "n1".into(),
            ..Default::default()
        });
        let (b, store) = broker(vec![cluster, node]).await;
        let mut l1 = b.listen("n1");
        store
            .write(vec![Op::Delete {
                kind: Kind::Node,
                id: "n1".into(),
            }])
            .await
            .expect("remove n1");
        let end = timeout(WAIT, l1.recv())
            .await
            .expect("the listener ends in time")
            .expect("an answer before the stream closes");
        assert_eq!(end.unwrap_err().code(), tonic::Code::PermissionDenied);
        let stream = futures::stream::iter(vec![Ok(publish("s1", vec![], false))]);
        let err = b.publish_stream("n1", stream).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    }

    #[tokio::test]
    async fn publish_stream_is_one_subscription_and_ends_the_node_part() {
        let (b, _) = broker(vec![service("s", "web"), task("t1", "s", "n1", 1)]).await;
        let mut l1 = b.listen("n1");
        let mut c = b
            .subscribe(by_service("s"), LogSubscriptionOptions::default())
            .expect("subscribe");
        let id = next(&mut l1).await.id;
        // The call ends without `close`: the node is done all the same.
        let msgs = futures::stream::iter(vec![Ok(publish(&id, vec![line("t1", "x\n")], false))]);
        b.publish_stream("n1", msgs).await.expect("publish");
        let got = timeout(WAIT, c.recv())
            .await
            .expect("in time")
            .expect("open")
            .expect("ok");
        assert_eq!(got.messages[0].data, b"x\n");
        assert!(timeout(WAIT, c.recv()).await.expect("in time").is_none());

        let _c2 = b
            .subscribe(
                by_service("s"),
                LogSubscriptionOptions {
                    follow: true,
                    ..Default::default()
                },
            )
            .expect("subscribe");
        let id2 = next(&mut l1).await.id;
        let mixed = futures::stream::iter(vec![
            Ok(publish(&id2, vec![], false)),
            Ok(publish("other", vec![], false)),
        ]);
        assert_eq!(
            b.publish_stream("n1", mixed).await.map_err(|s| s.code()),
            Err(tonic::Code::InvalidArgument)
        );
    }
}

//! Orchestrators (leader only): they turn services into tasks.
//!
//! - [`replicated::ReplicatedOrchestrator`]: `replicas` slots per replicated service, scale up
//!   and down, replace tasks of an old spec (rolling update) and tasks of unusable nodes.
//! - [`global::GlobalOrchestrator`]: one task per eligible node for global services.
//! - [`restart::RestartSupervisor`]: applies the restart policy to tasks that ended while
//!   still wanted, and starts delayed replacements when their restart delay has passed.
//!
//! Each is a reconciler: it waits for the store to change, reads the state, computes a
//! [`Plan`] in a pure function and proposes it. Nothing that matters is kept outside the
//! store, so a new leader simply starts them again.
//!
//! Task lifecycle conventions shared by all of them (see ARCHITECTURE.md):
//! - a task is *active* (it occupies its slot) while its desired state is ≤ COMPLETE;
//!   desired COMPLETE means "ended and must not be restarted";
//! - a task is *dead* when it is still wanted (desired ≤ RUNNING) but its observed state is
//!   terminal: only the restart supervisor acts on dead tasks;
//! - desired READY marks a restart replacement waiting for its restart delay; agents start
//!   only tasks whose desired state is RUNNING.
//!
//! Two components never both replace the same task: a replacement retires the old task with
//! a version-checked update in the same atomic batch as the create, so the store rejects the
//! second of two concurrent decisions.

pub mod global;
pub mod replicated;
pub mod restart;

use std::collections::HashMap;
use std::time::Duration;

use proto::{NodeAvailability, NodeState, Service, Task, TaskState, TaskStatus};

use crate::store::{new_id, now_ms, Object, Op, OpOutcome, ProposeError, Request, State, Store};

/// Ops per best-effort request.
const OPS_PER_REQUEST: usize = 1000;
/// All-or-nothing groups packed into one atomic request.
const GROUPS_PER_REQUEST: usize = 32;

/// What one reconcile round wants written.
#[derive(Debug, Default)]
pub struct Plan {
    /// Independent ops, proposed in best-effort batches.
    pub ops: Vec<Op>,
    /// Groups that must apply all or nothing (a replacement: the old task retired with a
    /// version check and its successor created).
    pub groups: Vec<Vec<Op>>,
    /// When the component must run again even if the store does not change (timers).
    pub wake_at_ms: Option<i64>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.groups.is_empty()
    }

    pub(crate) fn wake_at(&mut self, at_ms: i64) {
        self.wake_at_ms = Some(self.wake_at_ms.map_or(at_ms, |w| w.min(at_ms)));
    }

    /// The requests to propose, replacements first.
    pub fn into_requests(self) -> Vec<Request> {
        let mut out = Vec::new();
        let mut groups = self.groups.into_iter().peekable();
        while groups.peek().is_some() {
            let ops: Vec<Op> = groups.by_ref().take(GROUPS_PER_REQUEST).flatten().collect();
            out.push(Request::atomic(ops));
        }
        let mut ops = self.ops.into_iter().peekable();
        while ops.peek().is_some() {
            out.push(Request::best_effort(
                ops.by_ref().take(OPS_PER_REQUEST).collect(),
            ));
        }
        out
    }
}

// ---------------------------------------------------------------- task helpers

/// A new task of `service` in `slot` (replicated, from 1) or on `node_id` (global, slot 0).
pub fn new_task(
    service: &Service,
    slot: u64,
    node_id: &str,
    desired: TaskState,
    now_ms: i64,
) -> Task {
    let spec = service.spec.as_ref();
    Task {
        id: new_id(),
        meta: None,
        service_id: service.id.clone(),
        slot,
        node_id: node_id.to_string(),
        spec: spec.and_then(|s| s.task.clone()),
        spec_version: service.spec_version,
        service_name: service.name().to_string(),
        status: Some(TaskStatus {
            timestamp: now_ms,
            state: TaskState::New as i32,
            message: "created".into(),
            ..Default::default()
        }),
        desired_state: desired as i32,
        endpoint: service.endpoint.clone(),
        networks: Vec::new(),
    }
}

/// The task occupies its slot: desired state ≤ COMPLETE.
pub fn is_active(t: &Task) -> bool {
    t.desired_state <= TaskState::Complete as i32
}

/// The task is still wanted (desired ≤ RUNNING) but has ended: the restart supervisor's job.
pub fn is_dead(t: &Task) -> bool {
    t.desired_state <= TaskState::Running as i32 && t.state().is_terminal()
}

/// Observed RUNNING.
pub fn is_running(t: &Task) -> bool {
    t.state() == TaskState::Running
}

/// The node cannot keep tasks: removed from the store, DOWN, or drained.
pub fn node_unusable(state: &State, node_id: &str) -> bool {
    match state.node(node_id) {
        None => true,
        Some(n) => n.state() == NodeState::Down || n.availability() == NodeAvailability::Drain,
    }
}

/// The node is gone or DOWN: tasks assigned there will never report again.
pub fn node_lost(state: &State, node_id: &str) -> bool {
    state
        .node(node_id)
        .is_none_or(|n| n.state() == NodeState::Down)
}

/// Where a task sits in its service: its slot (replicated) or its node (global, slot 0).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SlotKey {
    Slot(u64),
    Node(String),
}

impl SlotKey {
    pub fn of(t: &Task) -> SlotKey {
        if t.slot > 0 {
            SlotKey::Slot(t.slot)
        } else {
            SlotKey::Node(t.node_id.clone())
        }
    }
}

/// Tasks of one service grouped by slot key.
pub fn tasks_by_slot<'a>(state: &'a State, service_id: &str) -> HashMap<SlotKey, Vec<&'a Task>> {
    let mut m: HashMap<SlotKey, Vec<&Task>> = HashMap::new();
    for t in state.tasks_of_service(service_id) {
        m.entry(SlotKey::of(t)).or_default().push(t);
    }
    m
}

pub fn created_at(t: &Task) -> i64 {
    t.meta.as_ref().map_or(0, |m| m.created_at)
}

/// Sets the desired state SHUTDOWN (idempotent; never lowers the desired state).
pub fn shutdown_op(t: &Task) -> Op {
    Op::SetTaskDesiredState {
        task_id: t.id.clone(),
        desired: TaskState::Shutdown,
    }
}

/// Retires `t` (desired SHUTDOWN) only if nobody changed it since it was read: put it in the
/// same atomic group as the creation of its replacement.
pub fn retire_op(t: &Task) -> Op {
    let mut t = t.clone();
    t.desired_state = TaskState::Shutdown as i32;
    Op::Update {
        object: Object::Task(t),
        check_version: true,
    }
}

/// Of several active tasks in one slot, the one to keep: running first, then of the current
/// spec, then not dead, then the newest. The rest are duplicates to shut down.
pub fn pick_kept<'a>(tasks: &[&'a Task], spec_version: u64) -> Option<&'a Task> {
    tasks.iter().copied().max_by(|a, b| {
        let key = |t: &Task| {
            (
                is_running(t) && t.desired_state <= TaskState::Running as i32,
                t.spec_version == spec_version,
                !is_dead(t),
                created_at(t),
            )
        };
        key(a).cmp(&key(b)).then_with(|| b.id.cmp(&a.id))
    })
}

/// Tally for rolling updates: a slot is *in flight* when its task is of the current spec,
/// still wanted, and not (yet, or no longer) RUNNING. Old-spec tasks are replaced only while
/// fewer than `parallelism` slots are in flight, so the next replacement waits until the
/// previous one runs.
pub fn in_flight(t: &Task, spec_version: u64) -> bool {
    t.spec_version == spec_version && t.desired_state <= TaskState::Running as i32 && !is_running(t)
}

/// Tasks replaced per round during a rolling update (SwarmKit's default parallelism).
pub const UPDATE_PARALLELISM: usize = 1;

// ---------------------------------------------------------------- the loop

/// Runs `round` every time the store changes (bursts coalesced by `debounce`) and when the
/// plan's timer expires; proposes what it returns. Never returns.
pub(crate) async fn run_reconciler<F>(
    store: Store,
    name: &'static str,
    debounce: Duration,
    mut round: F,
) where
    F: FnMut(&State, i64) -> Plan + Send,
{
    const BACKOFF_MIN: Duration = Duration::from_millis(100);
    const BACKOFF_MAX: Duration = Duration::from_secs(5);

    // A new leader may not have applied everything committed before it was elected:
    // wait until the state is current, or two leaders' decisions could overlap.
    let mut backoff = BACKOFF_MIN;
    loop {
        match store.linearize().await {
            Ok(()) => break,
            Err(ProposeError::NotLeader { .. }) => {
                tracing::debug!(component = name, "not leader yet; waiting");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                tracing::warn!(component = name, error = %e, "cannot read a current state; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
    tracing::debug!(component = name, "started");

    let mut watch = store.watch();
    let mut backoff = BACKOFF_MIN;
    loop {
        watch.borrow_and_update();
        let plan = {
            let st = store.read();
            round(&st, now_ms())
        };
        let wake_at = plan.wake_at_ms;
        let mut trouble = false;
        for req in plan.into_requests() {
            match store.propose(req).await {
                Ok(resp) => match resp.result {
                    Some(Err(e)) => {
                        // Usually a version check that lost a race: re-read and retry.
                        tracing::debug!(component = name, error = %e, "batch not applied");
                        trouble = true;
                    }
                    Some(Ok(outcomes)) => {
                        for o in outcomes {
                            if let OpOutcome::Skipped(e) = o {
                                tracing::debug!(component = name, error = %e, "op skipped");
                                trouble = true;
                            }
                        }
                    }
                    None => {}
                },
                Err(ProposeError::NotLeader { .. }) => {
                    // The manager aborts this task when it sees the leadership change.
                    tracing::info!(component = name, "no longer leader; pausing");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    trouble = true;
                    break;
                }
                Err(e) => {
                    tracing::warn!(component = name, error = %e, "proposal failed; will retry");
                    trouble = true;
                    break;
                }
            }
        }
        if trouble {
            // Never loop hot: a failed batch is itself an applied entry that wakes us.
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
            continue;
        }
        backoff = BACKOFF_MIN;

        let timer = async {
            match wake_at {
                Some(at) => {
                    let ms = (at - now_ms()).max(0) as u64;
                    tokio::time::sleep(Duration::from_millis(ms)).await
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            changed = watch.changed() => {
                if changed.is_err() {
                    // The store is gone: the manager is shutting down.
                    std::future::pending::<()>().await;
                }
                if !debounce.is_zero() {
                    tokio::time::sleep(debounce).await;
                }
            }
            _ = timer => {}
        }
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Builders shared by the orchestrator, allocator and reaper tests.

    use proto::{
        service_spec, GlobalService, Meta, Node, NodeSpec, NodeStatus, ReplicatedService,
        RestartPolicy, Service, ServiceSpec, Task, TaskSpec, TaskState, TaskStatus,
    };

    use crate::store::{Object, Op, Request, State, Store};

    use super::Plan;

    pub fn replicated(id: &str, replicas: u64) -> Service {
        Service {
            id: id.into(),
            spec: Some(ServiceSpec {
                name: format!("svc-{id}"),
                task: Some(TaskSpec::default()),
                mode: Some(service_spec::Mode::Replicated(ReplicatedService {
                    replicas,
                })),
                ..Default::default()
            }),
            spec_version: 1,
            ..Default::default()
        }
    }

    pub fn global(id: &str) -> Service {
        Service {
            id: id.into(),
            spec: Some(ServiceSpec {
                name: format!("svc-{id}"),
                task: Some(TaskSpec::default()),
                mode: Some(service_spec::Mode::Global(GlobalService {})),
                ..Default::default()
            }),
            spec_version: 1,
            ..Default::default()
        }
    }

    pub fn with_restart(mut s: Service, policy: RestartPolicy) -> Service {
        if let Some(t) = s.spec.as_mut().and_then(|s| s.task.as_mut()) {
            t.restart = Some(policy);
        }
        s
    }

    pub fn node(id: &str, state: proto::NodeState) -> Node {
        Node {
            id: id.into(),
            spec: Some(NodeSpec::default()),
            status: Some(NodeStatus {
                state: state as i32,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub fn task(
        id: &str,
        svc: &str,
        slot: u64,
        node: &str,
        state: TaskState,
        desired: TaskState,
    ) -> Task {
        Task {
            id: id.into(),
            meta: Some(Meta::default()),
            service_id: svc.into(),
            slot,
            node_id: node.into(),
            spec: Some(TaskSpec::default()),
            spec_version: 1,
            service_name: format!("svc-{svc}"),
            status: Some(TaskStatus {
                state: state as i32,
                ..Default::default()
            }),
            desired_state: desired as i32,
            endpoint: None,
            networks: Vec::new(),
        }
    }

    pub async fn put(store: &Store, objs: Vec<Object>) {
        store
            .write(objs.into_iter().map(Op::Create).collect())
            .await
            .expect("test objects are created");
    }

    /// Creates test objects with an explicit proposer clock (their `created_at`).
    pub async fn put_at(store: &Store, objs: Vec<Object>, now_ms: i64) {
        apply_at(store, objs.into_iter().map(Op::Create).collect(), now_ms).await;
    }

    pub async fn apply(store: &Store, plan: Plan) {
        for r in plan.into_requests() {
            let resp = store
                .propose(r)
                .await
                .expect("memory store accepts proposals");
            if let Some(Err(e)) = resp.result {
                panic!("atomic batch failed: {e}");
            }
        }
    }

    /// Runs one request with an explicit proposer clock.
    pub async fn apply_at(store: &Store, ops: Vec<Op>, now_ms: i64) {
        let req = Request {
            ops,
            atomic: true,
            now_ms,
        };
        let resp = store
            .propose(req)
            .await
            .expect("memory store accepts proposals");
        if let Some(Err(e)) = resp.result {
            panic!("atomic batch failed: {e}");
        }
    }

    pub fn set_status(id: &str, state: TaskState, ts: i64) -> Op {
        Op::SetTaskStatus {
            task_id: id.into(),
            status: TaskStatus {
                state: state as i32,
                timestamp: ts,
                ..Default::default()
            },
        }
    }

    /// Active tasks (desired ≤ COMPLETE) of a service.
    pub fn active(st: &State, svc: &str) -> Vec<Task> {
        let mut v: Vec<Task> = st
            .tasks_of_service(svc)
            .filter(|t| super::is_active(t))
            .cloned()
            .collect();
        v.sort_by_key(|t| (t.slot, t.node_id.clone()));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::TaskState;
    use testutil::*;

    #[test]
    fn plan_packs_groups_atomically_and_ops_best_effort() {
        let svc = replicated("s", 1);
        let mut plan = Plan::default();
        for i in 0..40 {
            let t = new_task(&svc, i + 1, "", TaskState::Running, 0);
            plan.groups.push(vec![Op::Create(Object::Task(t))]);
        }
        for i in 0..1500 {
            plan.ops.push(Op::SetTaskDesiredState {
                task_id: format!("t{i}"),
                desired: TaskState::Shutdown,
            });
        }
        plan.wake_at(50);
        plan.wake_at(20);
        assert_eq!(plan.wake_at_ms, Some(20));
        let reqs = plan.into_requests();
        let shape: Vec<(bool, usize)> = reqs.iter().map(|r| (r.atomic, r.ops.len())).collect();
        assert_eq!(
            shape,
            vec![(true, 32), (true, 8), (false, 1000), (false, 500)]
        );
    }

    #[test]
    fn new_task_copies_the_service() {
        let mut svc = replicated("s", 1);
        svc.spec_version = 7;
        let t = new_task(&svc, 3, "", TaskState::Running, 42);
        assert_eq!(t.service_name, "svc-s");
        assert_eq!(t.slot, 3);
        assert_eq!(t.spec_version, 7);
        assert_eq!(t.state(), TaskState::New);
        assert_eq!(t.status.as_ref().unwrap().message, "created");
        assert_eq!(t.desired(), TaskState::Running);
        assert_eq!(t.id.len(), 25);
    }

    /// The components' real loops together with a fake scheduler and agent: the cluster
    /// converges, a failed task is restarted once after its delay, no slot ever holds two
    /// active tasks.
    #[tokio::test]
    async fn components_converge_together() {
        use proto::{NodeState, RestartCondition, RestartPolicy};
        use std::time::{Duration, Instant};

        let store = Store::memory();
        let svc = with_restart(
            replicated("s", 3),
            RestartPolicy {
                condition: RestartCondition::Any as i32,
                delay_ms: 300,
                ..Default::default()
            },
        );
        put(&store, vec![svc.into(), node("a", NodeState::Ready).into()]).await;
        let handles = vec![
            tokio::spawn(crate::allocator::Allocator::new(store.clone()).run()),
            tokio::spawn(replicated::ReplicatedOrchestrator::new(store.clone()).run()),
            tokio::spawn(restart::RestartSupervisor::new(store.clone()).run()),
            tokio::spawn(crate::reaper::TaskReaper::new(store.clone()).run()),
        ];

        // Scheduler + agent stand-in; returns the active tasks per slot.
        async fn step(store: &Store) -> Vec<(u64, usize, bool)> {
            let ops: Vec<Op> = {
                let st = store.read();
                st.tasks()
                    .filter_map(|t| match t.state() {
                        TaskState::Pending => Some(Op::AssignTask {
                            task_id: t.id.clone(),
                            node_id: "a".into(),
                        }),
                        s if s >= TaskState::Assigned && s < TaskState::Running => (t.desired()
                            == TaskState::Running)
                            .then(|| testutil::set_status(&t.id, TaskState::Running, 0)),
                        TaskState::Running if t.desired() > TaskState::Running => {
                            Some(testutil::set_status(&t.id, TaskState::Shutdown, 0))
                        }
                        _ => None,
                    })
                    .collect()
            };
            if !ops.is_empty() {
                store.propose(Request::best_effort(ops)).await.unwrap();
            }
            let st = store.read();
            let mut per_slot: HashMap<u64, (usize, bool)> = HashMap::new();
            for t in st.tasks_of_service("s").filter(|t| is_active(t)) {
                let e = per_slot.entry(t.slot).or_default();
                e.0 += 1;
                e.1 |= is_running(t) && t.desired() == TaskState::Running;
            }
            let mut v: Vec<(u64, usize, bool)> =
                per_slot.into_iter().map(|(k, (n, r))| (k, n, r)).collect();
            v.sort();
            v
        }
        async fn until_converged(store: &Store) {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let slots = step(store).await;
                assert!(
                    slots.iter().all(|(_, n, _)| *n == 1),
                    "one active task per slot: {slots:?}"
                );
                if slots == vec![(1, 1, true), (2, 1, true), (3, 1, true)] {
                    return;
                }
                assert!(Instant::now() < deadline, "did not converge: {slots:?}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }

        until_converged(&store).await;
        assert_eq!(store.read().task_count(), 3);

        let victim = store
            .read()
            .tasks_of_service("s")
            .find(|t| t.slot == 2)
            .unwrap()
            .id
            .clone();
        let died = Instant::now();
        store
            .write(vec![testutil::set_status(&victim, TaskState::Failed, 0)])
            .await
            .unwrap();
        until_converged(&store).await;
        assert!(
            died.elapsed() >= Duration::from_millis(300),
            "restart delay respected"
        );
        let st = store.read();
        assert_eq!(st.task_count(), 4, "exactly one replacement");
        assert_eq!(st.task(&victim).unwrap().desired(), TaskState::Shutdown);
        drop(st);
        for h in handles {
            h.abort();
        }
    }
}

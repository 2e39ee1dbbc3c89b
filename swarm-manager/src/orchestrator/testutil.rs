//! Builders shared by the orchestrator, task reaper and allocator tests (and other tests of
//! the crate).

use proto::{
    service_spec, GlobalJob, GlobalService, JobStatus, Meta, Node, NodeSpec, NodeStatus,
    ReplicatedJob, ReplicatedService, RestartPolicy, Service, ServiceSpec, Task, TaskSpec,
    TaskState, TaskStatus,
};

use crate::store::{Object, Op, Request, State, Store};

use super::reconciler::Plan;

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

/// A replicated job: `total` completions, at most `concurrent` at once, iteration 0.
pub fn replicated_job(id: &str, total: u64, concurrent: u64) -> Service {
    job(
        id,
        service_spec::Mode::ReplicatedJob(ReplicatedJob {
            max_concurrent: concurrent,
            total_completions: total,
        }),
    )
}

/// A global job, iteration 0.
pub fn global_job(id: &str) -> Service {
    job(id, service_spec::Mode::GlobalJob(GlobalJob {}))
}

fn job(id: &str, mode: service_spec::Mode) -> Service {
    Service {
        id: id.into(),
        spec: Some(ServiceSpec {
            name: format!("svc-{id}"),
            task: Some(TaskSpec::default()),
            mode: Some(mode),
            ..Default::default()
        }),
        spec_version: 1,
        job_status: Some(JobStatus::default()),
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
        started_at: 0,
        job_iteration: 0,
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
        .filter(|t| super::task::is_active(t))
        .cloned()
        .collect();
    v.sort_by_key(|t| (t.slot, t.node_id.clone()));
    v
}

//! The allocator (leader only): gives services their endpoint (published ports) and moves new
//! tasks from NEW to PENDING once everything they need is allocated.
//!
//! Endpoints: a service whose `endpoint` is missing while its spec publishes ports, or whose
//! allocated `endpoint.spec` differs from `spec.endpoint`, gets `Service.endpoint =
//! Endpoint { spec, ports }` written back with a version check:
//! - ingress ports with `published_port` 0 get a free port from 30000–32767 (free: not
//!   published in ingress mode by another service, for the same protocol); a port allocated
//!   before for the same target and protocol is kept across updates;
//! - explicit ingress ports must not be published by another service (same protocol), nor
//!   twice in the same spec; if they are, the endpoint stays unallocated and a warning is
//!   logged (the Control API is expected to reject such specs up front);
//! - host-mode ports are copied as they are (the node picks dynamic host ports).
//!
//! Tasks: observed NEW and desired ≤ RUNNING → PENDING ("pending task scheduling"), with the
//! service's current endpoint copied into the task, once that endpoint is allocated.
//!
//! Networks, VIPs, task IP addresses and VNIs are allocated here too in a later issue: a task
//! will then stay NEW until its network attachments have addresses.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use proto::{
    Endpoint, EndpointSpec, PortConfig, PortProtocol, PublishMode, Service, TaskState, TaskStatus,
};

use crate::orchestrator::{run_reconciler, Plan};
use crate::store::{Object, Op, State, Store};

/// Range of dynamically published ports (Docker's).
pub const DYNAMIC_PORT_START: u32 = 30000;
pub const DYNAMIC_PORT_END: u32 = 32767;

pub const PENDING_MESSAGE: &str = "pending task scheduling";

pub struct Allocator {
    store: Store,
}

impl Allocator {
    pub fn new(store: Store) -> Self {
        Allocator { store }
    }

    pub async fn run(self) {
        // Each problem is logged once per service version.
        let mut warned: HashSet<(String, u64)> = HashSet::new();
        run_reconciler(
            self.store,
            "allocator",
            Duration::from_millis(10),
            move |state, now| {
                let (plan, problems) = reconcile(state, now);
                for p in problems {
                    if warned.insert((p.service_id.clone(), p.service_version)) {
                        tracing::warn!(service = %p.service_name, "endpoint not allocated: {}", p.message);
                    }
                }
                if warned.len() > 10_000 {
                    warned.clear();
                }
                plan
            },
        )
        .await
    }
}

/// Why a service's endpoint could not be allocated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub service_id: String,
    pub service_name: String,
    pub service_version: u64,
    pub message: String,
}

/// The endpoint spec the service asks for.
fn wanted_spec(svc: &Service) -> EndpointSpec {
    svc.spec
        .as_ref()
        .and_then(|s| s.endpoint.clone())
        .unwrap_or_default()
}

/// The service's endpoint matches its spec (nothing to allocate).
pub fn endpoint_ready(svc: &Service) -> bool {
    let want = wanted_spec(svc);
    match &svc.endpoint {
        None => want.ports.is_empty(),
        Some(e) => e.spec.clone().unwrap_or_default() == want,
    }
}

fn is_ingress(p: &PortConfig) -> bool {
    p.publish_mode == PublishMode::Ingress as i32
}

fn proto_name(p: i32) -> &'static str {
    match PortProtocol::try_from(p) {
        Ok(PortProtocol::Udp) => "udp",
        Ok(PortProtocol::Sctp) => "sctp",
        _ => "tcp",
    }
}

/// (protocol, published port) → owning service id.
type PortMap = HashMap<(i32, u32), String>;

/// What the allocator wants written for the current state, and the services it could not
/// allocate.
pub fn reconcile(state: &State, now_ms: i64) -> (Plan, Vec<Problem>) {
    let mut plan = Plan::default();
    let mut problems = Vec::new();

    // Ingress ports in use (allocated endpoints) and explicitly requested (specs).
    let mut used: PortMap = HashMap::new();
    let mut requested: PortMap = HashMap::new();
    for svc in state.services() {
        for p in svc.endpoint.iter().flat_map(|e| e.ports.iter()) {
            if is_ingress(p) && p.published_port != 0 {
                used.insert((p.protocol, p.published_port), svc.id.clone());
            }
        }
        for p in wanted_spec(svc).ports.iter() {
            if is_ingress(p) && p.published_port != 0 {
                requested
                    .entry((p.protocol, p.published_port))
                    .or_insert_with(|| svc.id.clone());
            }
        }
    }

    for svc in state.services() {
        if endpoint_ready(svc) {
            continue;
        }
        let want = wanted_spec(svc);
        match allocate_ports(svc, &want, &used, &requested) {
            Ok(ports) => {
                used.retain(|_, owner| *owner != svc.id);
                for p in ports.iter().filter(|p| is_ingress(p)) {
                    used.insert((p.protocol, p.published_port), svc.id.clone());
                }
                let mut s = svc.clone();
                s.endpoint = Some(Endpoint {
                    spec: Some(want),
                    ports,
                });
                plan.ops.push(Op::Update {
                    object: Object::Service(s),
                    check_version: true,
                });
            }
            Err(message) => problems.push(Problem {
                service_id: svc.id.clone(),
                service_name: svc.name().to_string(),
                service_version: svc.meta.as_ref().map_or(0, |m| m.version),
                message,
            }),
        }
    }

    // Networks and IP addresses: allocated here in a later issue (tasks stay NEW until then).

    for t in state.tasks_in_state(TaskState::New) {
        if t.desired_state > TaskState::Running as i32 {
            continue; // never to run: the task reaper removes it
        }
        let Some(svc) = state.service(&t.service_id) else {
            continue; // service deleted: the task reaper removes it
        };
        if !endpoint_ready(svc) {
            continue;
        }
        let status = TaskStatus {
            timestamp: now_ms,
            state: TaskState::Pending as i32,
            message: PENDING_MESSAGE.into(),
            ..Default::default()
        };
        if t.endpoint == svc.endpoint {
            plan.ops.push(Op::SetTaskStatus {
                task_id: t.id.clone(),
                status,
            });
        } else {
            // Created before the endpoint was (re)allocated: give it the current one.
            let mut t = t.clone();
            t.endpoint = svc.endpoint.clone();
            t.status = Some(status);
            plan.ops.push(Op::Update {
                object: Object::Task(t),
                check_version: true,
            });
        }
    }
    (plan, problems)
}

/// The allocated ports of `want`, in spec order.
fn allocate_ports(
    svc: &Service,
    want: &EndpointSpec,
    used: &PortMap,
    requested: &PortMap,
) -> Result<Vec<PortConfig>, String> {
    let taken_by_other = |key: &(i32, u32)| {
        used.get(key).is_some_and(|o| *o != svc.id)
            || requested.get(key).is_some_and(|o| *o != svc.id)
    };
    let mut mine: HashSet<(i32, u32)> = HashSet::new();
    for p in want
        .ports
        .iter()
        .filter(|p| is_ingress(p) && p.published_port != 0)
    {
        let key = (p.protocol, p.published_port);
        if let Some(owner) = used.get(&key).filter(|o| **o != svc.id) {
            return Err(format!(
                "published port {}/{} is already in use by service {owner}",
                p.published_port,
                proto_name(p.protocol)
            ));
        }
        if !mine.insert(key) {
            return Err(format!(
                "published port {}/{} is listed more than once",
                p.published_port,
                proto_name(p.protocol)
            ));
        }
    }

    // Dynamic ports this service had before, for the same target and protocol.
    let explicit_before: HashSet<(i32, u32)> = svc
        .endpoint
        .as_ref()
        .and_then(|e| e.spec.as_ref())
        .into_iter()
        .flat_map(|s| s.ports.iter())
        .filter(|p| is_ingress(p) && p.published_port != 0)
        .map(|p| (p.protocol, p.published_port))
        .collect();
    let mut previous: Vec<&PortConfig> = svc
        .endpoint
        .iter()
        .flat_map(|e| e.ports.iter())
        .filter(|p| {
            is_ingress(p)
                && (DYNAMIC_PORT_START..=DYNAMIC_PORT_END).contains(&p.published_port)
                && !explicit_before.contains(&(p.protocol, p.published_port))
        })
        .collect();

    let mut out: Vec<PortConfig> = want.ports.clone();
    let dynamic = |p: &PortConfig| is_ingress(p) && p.published_port == 0;
    // First keep previous ports, so that new ports cannot take them.
    let mut pending = Vec::new();
    for (i, p) in out.iter_mut().enumerate().filter(|(_, p)| dynamic(p)) {
        let reuse = previous.iter().position(|old| {
            let key = (old.protocol, old.published_port);
            old.target_port == p.target_port
                && old.protocol == p.protocol
                && !mine.contains(&key)
                && !taken_by_other(&key)
        });
        match reuse {
            Some(j) => {
                p.published_port = previous.remove(j).published_port;
                mine.insert((p.protocol, p.published_port));
            }
            None => pending.push(i),
        }
    }
    for i in pending {
        let p = &mut out[i];
        let free = (DYNAMIC_PORT_START..=DYNAMIC_PORT_END).find(|port| {
            let key = (p.protocol, *port);
            !mine.contains(&key) && !taken_by_other(&key)
        });
        let Some(port) = free else {
            return Err(format!(
                "no free published port left in {DYNAMIC_PORT_START}-{DYNAMIC_PORT_END}/{}",
                proto_name(p.protocol)
            ));
        };
        mine.insert((p.protocol, port));
        p.published_port = port;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orchestrator::testutil::*;
    use proto::NodeState;

    fn port(target: u32, published: u32, mode: PublishMode) -> PortConfig {
        PortConfig {
            target_port: target,
            published_port: published,
            publish_mode: mode as i32,
            ..Default::default()
        }
    }

    fn with_ports(mut s: Service, ports: Vec<PortConfig>) -> Service {
        s.spec.as_mut().unwrap().endpoint = Some(EndpointSpec {
            ports,
            ..Default::default()
        });
        s
    }

    async fn round(store: &Store) -> Vec<Problem> {
        let (plan, problems) = reconcile(&store.read(), 1_000);
        apply(store, plan).await;
        problems
    }

    fn published(store: &Store, id: &str) -> Vec<u32> {
        store
            .read()
            .service(id)
            .unwrap()
            .endpoint
            .as_ref()
            .map(|e| e.ports.iter().map(|p| p.published_port).collect())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn new_tasks_become_pending() {
        let store = Store::memory();
        use TaskState::*;
        put(
            &store,
            vec![
                replicated("s", 2).into(),
                node("a", NodeState::Ready).into(),
                task("t1", "s", 1, "", New, Running).into(),
                task("t2", "s", 2, "", New, Ready).into(),
                task("t3", "s", 3, "", New, Shutdown).into(),
                task("t4", "gone", 1, "", New, Running).into(),
            ],
        )
        .await;
        assert!(round(&store).await.is_empty());
        let st = store.read();
        for id in ["t1", "t2"] {
            let t = st.task(id).unwrap();
            assert_eq!(t.state(), Pending, "{id}");
            assert_eq!(t.status.as_ref().unwrap().message, PENDING_MESSAGE);
        }
        assert_eq!(st.task("t3").unwrap().state(), New, "not wanted");
        assert_eq!(st.task("t4").unwrap().state(), New, "service gone");
        assert!(
            st.service("s").unwrap().endpoint.is_none(),
            "no ports, nothing to write"
        );
    }

    #[tokio::test]
    async fn dynamic_ports_come_from_the_range_and_tasks_wait_for_them() {
        let store = Store::memory();
        use TaskState::*;
        put(
            &store,
            vec![
                with_ports(
                    replicated("a", 1),
                    vec![
                        port(80, 0, PublishMode::Ingress),
                        port(443, 0, PublishMode::Ingress),
                    ],
                )
                .into(),
                with_ports(
                    replicated("b", 1),
                    vec![port(80, 30001, PublishMode::Ingress)],
                )
                .into(),
                with_ports(replicated("c", 1), vec![port(8080, 0, PublishMode::Host)]).into(),
                task("t1", "a", 1, "", New, Running).into(),
            ],
        )
        .await;
        let (plan, problems) = reconcile(&store.read(), 1_000);
        assert!(problems.is_empty());
        // The task waits: its service's endpoint is not allocated yet in this state.
        assert!(!plan
            .ops
            .iter()
            .any(|op| matches!(op, Op::SetTaskStatus { .. })));
        apply(&store, plan).await;
        // 30001 is requested by b explicitly, so a gets 30000 and 30002.
        assert_eq!(published(&store, "a"), vec![30000, 30002]);
        assert_eq!(published(&store, "b"), vec![30001]);
        assert_eq!(
            published(&store, "c"),
            vec![0],
            "host mode: left to the node"
        );

        round(&store).await;
        {
            let st = store.read();
            let t = st.task("t1").unwrap();
            assert_eq!(t.state(), Pending);
            assert_eq!(
                t.endpoint,
                st.service("a").unwrap().endpoint,
                "endpoint copied"
            );
        }
        assert!(reconcile(&store.read(), 2_000).0.is_empty(), "converged");

        // An update that adds a port keeps the existing dynamic ones.
        let mut a = store.read().service("a").unwrap().clone();
        a = with_ports(
            a,
            vec![
                port(9090, 0, PublishMode::Ingress),
                port(80, 0, PublishMode::Ingress),
                port(443, 0, PublishMode::Ingress),
            ],
        );
        store
            .write(vec![Op::Update {
                object: a.into(),
                check_version: true,
            }])
            .await
            .unwrap();
        round(&store).await;
        assert_eq!(published(&store, "a"), vec![30003, 30000, 30002]);
        for p in published(&store, "a") {
            assert!((DYNAMIC_PORT_START..=DYNAMIC_PORT_END).contains(&p));
        }
    }

    #[tokio::test]
    async fn explicit_port_clash_leaves_the_endpoint_unallocated() {
        let store = Store::memory();
        use TaskState::*;
        put(
            &store,
            vec![
                with_ports(
                    replicated("a", 1),
                    vec![port(80, 8080, PublishMode::Ingress)],
                )
                .into(),
                task("ta", "a", 1, "", New, Running).into(),
            ],
        )
        .await;
        round(&store).await;
        round(&store).await;
        assert_eq!(store.read().task("ta").unwrap().state(), Pending);
        put(
            &store,
            vec![
                with_ports(
                    replicated("b", 1),
                    vec![port(81, 8080, PublishMode::Ingress)],
                )
                .into(),
                task("tb", "b", 1, "", New, Running).into(),
            ],
        )
        .await;
        let problems = round(&store).await;
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].service_id, "b");
        assert!(
            problems[0].message.contains("8080/tcp"),
            "{}",
            problems[0].message
        );
        assert!(store.read().service("b").unwrap().endpoint.is_none());
        assert_eq!(store.read().task("tb").unwrap().state(), New);

        // The same port over UDP does not clash.
        let mut b = store.read().service("b").unwrap().clone();
        let mut p = port(81, 8080, PublishMode::Ingress);
        p.protocol = PortProtocol::Udp as i32;
        b = with_ports(b, vec![p]);
        store
            .write(vec![Op::Update {
                object: b.into(),
                check_version: true,
            }])
            .await
            .unwrap();
        assert!(round(&store).await.is_empty());
        assert_eq!(published(&store, "b"), vec![8080]);
    }

    #[test]
    fn range_exhaustion_is_reported() {
        let svc = with_ports(replicated("x", 1), vec![port(80, 0, PublishMode::Ingress)]);
        let used: PortMap = (DYNAMIC_PORT_START..=DYNAMIC_PORT_END)
            .map(|p| ((PortProtocol::Tcp as i32, p), "other".to_string()))
            .collect();
        let err = allocate_ports(&svc, &wanted_spec(&svc), &used, &HashMap::new()).unwrap_err();
        assert!(err.contains("30000-32767/tcp"), "{err}");
    }
}

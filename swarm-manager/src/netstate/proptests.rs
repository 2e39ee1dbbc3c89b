//! Property: views built from the shared pieces are the views built alone, and the diff
//! between two views replays to the new one. Random logs change tasks (their node, state,
//! desired state and networks, created, replaced and deleted) and nodes (their state,
//! address and ingress address) on a fixed cluster of an overlay network, the ingress network
//! and two services. After each entry every node's view is built with one `Pieces` cache
//! kept across the log and compared with its view built alone; COMPLETE(last view) + diff is
//! replayed and compared with the new view; when the view's sources (`view_sources`) did
//! not move, the view must not have changed. Some entries restart the state from a snapshot
//! (versions start over from a new base), and a state from before the entry is read through
//! the same cache again (a lagging reader must neither get nor leave newer pieces).

use std::collections::BTreeMap;

use proptest::prelude::*;
use proto::{
    network_state_change::Change, Network, NetworkAllocation, NetworkAttachment,
    NetworkAttachmentConfig, NetworkSpec, NodeState, NodeStatus, Service, TaskState,
};

use super::{diff, full, node_view, node_view_with, view_sources, NodeNetworkView, Pieces};
use crate::orchestrator::testutil::{node, replicated, task};
use crate::store::{Kind, Object, Op, Request, State};

const NODES: &[&str] = &["n0", "n1", "n2"];
const TASKS: &[&str] = &["t0", "t1", "t2", "t3", "t4"];
const SERVICES: &[&str] = &["s0", "s1"];
/// (network id, subnet prefix); the second is the ingress network.
const NETWORKS: &[(&str, &str)] = &[("net0", "10.0.1"), ("ing", "10.255.0")];
const STATES: &[TaskState] = &[
    TaskState::Pending,
    TaskState::Assigned,
    TaskState::Starting,
    TaskState::Running,
    TaskState::Shutdown,
];

fn network(id: &str, prefix: &str, ingress: bool) -> Network {
    Network {
        id: id.into(),
        spec: Some(NetworkSpec {
            name: format!("name-{id}"),
            driver: "overlay".into(),
            ingress,
            ..Default::default()
        }),
        allocation: Some(NetworkAllocation {
            vni: 4096 + prefix.len() as u32,
            subnet: format!("{prefix}.0/24"),
            gateway: format!("{prefix}.1"),
        }),
        ..Default::default()
    }
}

fn service(id: &str) -> Service {
    let mut s = replicated(id, 2);
    let spec = s.spec.as_mut().unwrap();
    spec.task.as_mut().unwrap().networks = vec![NetworkAttachmentConfig {
        target: "net0".into(),
        aliases: vec![],
    }];
    s.endpoint = Some(proto::Endpoint {
        virtual_ips: NETWORKS
            .iter()
            .map(|(n, p)| proto::VirtualIp {
                network_id: n.to_string(),
                addr: format!("{p}.{}/24", 2 + id.len()),
            })
            .collect(),
        ..Default::default()
    });
    s
}

fn setup() -> State {
    let mut ops: Vec<Op> = vec![
        Op::Create(Object::Network(network("net0", "10.0.1", false))),
        Op::Create(Object::Network(network("ing", "10.255.0", true))),
    ];
    ops.extend(
        NODES
            .iter()
            .map(|n| Op::Create(node(n, NodeState::Ready).into())),
    );
    ops.extend(SERVICES.iter().map(|s| Op::Create(service(s).into())));
    let mut st = State::default();
    st.apply(1, Request::atomic(ops));
    st
}

fn pick(list: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop::sample::select(list).prop_map(str::to_string)
}

fn state() -> impl Strategy<Value = TaskState> {
    prop::sample::select(STATES)
}

fn op() -> impl Strategy<Value = Op> {
    let attachments = prop::collection::vec((0usize..NETWORKS.len(), 3u8..6), 0..3);
    prop_oneof![
        3 => (pick(TASKS), pick(SERVICES), prop::option::of(pick(NODES)), state(), state(), attachments, any::<bool>())
            .prop_map(|(id, svc, node, observed, desired, nets, create)| {
                let mut t = task(&id, &svc, 1, &node.unwrap_or_default(), observed, desired);
                t.networks = nets
                    .into_iter()
                    .map(|(i, host)| NetworkAttachment {
                        network_id: NETWORKS[i].0.into(),
                        addresses: vec![format!("{}.{host}/24", NETWORKS[i].1)],
                        ..Default::default()
                    })
                    .collect();
                t.networks.dedup_by(|a, b| a.network_id == b.network_id);
                if create {
                    Op::Create(t.into())
                } else {
                    Op::Update { object: t.into(), check_version: false }
                }
            }),
        1 => pick(TASKS).prop_map(|id| Op::Delete { kind: Kind::Task, id }),
        3 => (pick(TASKS), state()).prop_map(|(task_id, s)| Op::SetTaskStatus {
            task_id,
            status: proto::TaskStatus { state: s as i32, ..Default::default() },
        }),
        1 => (pick(TASKS), state())
            .prop_map(|(task_id, desired)| Op::SetTaskDesiredState { task_id, desired }),
        2 => (pick(NODES), prop::sample::select(&[NodeState::Ready, NodeState::Down][..]), 1u8..3)
            .prop_map(|(node_id, s, a)| Op::SetNodeStatus {
                node_id,
                status: NodeStatus {
                    state: s as i32,
                    addr: format!("192.168.0.{a}"),
                    ..Default::default()
                },
            }),
        1 => (pick(NODES), prop::option::of(10u8..12)).prop_map(|(node_id, host)| {
            Op::SetNodeAttachments {
                node_id,
                attachments: host
                    .map(|h| NetworkAttachment {
                        network_id: "ing".into(),
                        addresses: vec![format!("10.255.0.{h}/24")],
                        ..Default::default()
                    })
                    .into_iter()
                    .collect(),
            }
        }),
    ]
}

/// A step of the log: its ops (applied best effort), whether the state then restarts from a
/// snapshot, and whether the state from before the step is read again afterwards.
fn steps() -> impl Strategy<Value = Vec<(Vec<Op>, bool, bool)>> {
    prop::collection::vec(
        (
            prop::collection::vec(op(), 1..4),
            prop::bool::weighted(0.1),
            prop::bool::weighted(0.2),
        ),
        1..25,
    )
}

/// A view as plain maps: what the agent holds after applying the changes.
type Flat = (
    BTreeMap<String, proto::NetworkInfo>,
    BTreeMap<String, proto::ServiceInfo>,
    BTreeMap<(String, String), proto::EndpointInfo>,
);

fn flat(v: &NodeNetworkView) -> Flat {
    (
        v.networks.clone(),
        v.services.clone(),
        v.endpoints
            .iter()
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect(),
    )
}

fn replay(changes: Vec<proto::NetworkStateChange>, mut into: Flat) -> Flat {
    for c in changes {
        match c.change.expect("a change") {
            Change::Network(n) => {
                into.0.insert(n.id.clone(), n);
            }
            Change::NetworkRemoved(id) => {
                into.0.remove(&id);
            }
            Change::Service(s) => {
                into.1.insert(s.id.clone(), s);
            }
            Change::ServiceRemoved(id) => {
                into.1.remove(&id);
            }
            Change::Endpoint(e) => {
                into.2.insert((e.task_id.clone(), e.network_id.clone()), e);
            }
            Change::EndpointRemoved(k) => {
                into.2.remove(&(k.task_id, k.network_id));
            }
        }
    }
    into
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn shared_pieces_give_the_views_built_alone_and_diffs_replay(steps in steps()) {
        let mut st = setup();
        let pieces = Pieces::default();
        let mut sent: BTreeMap<&str, NodeNetworkView> = NODES
            .iter()
            .map(|n| (*n, node_view_with(&st, n, &pieces)))
            .collect();
        for (i, (ops, restart, reread)) in steps.into_iter().enumerate() {
            let before = st.clone();
            let sources: BTreeMap<&str, _> = NODES
                .iter()
                .map(|n| (*n, view_sources(&st, n, Some(&sent[n]))))
                .collect();
            st.apply(i as u64 + 2, Request::best_effort(ops));
            if restart {
                st = State::from_bytes(&st.to_bytes()).expect("snapshot reads");
            }
            for n in NODES {
                let view = node_view_with(&st, n, &pieces);
                prop_assert_eq!(&view, &node_view(&st, n), "node {} after step {}", n, i);
                if view_sources(&st, n, Some(&sent[n])) == sources[n] {
                    prop_assert_eq!(&view, &sent[n], "node {}: same sources, another view at step {}", n, i);
                }
                let last = &sent[n];
                let replayed = replay(diff(last, &view), replay(full(last), Default::default()));
                prop_assert_eq!(replayed, flat(&view), "node {} replayed at step {}", n, i);
                sent.insert(n, view);
            }
            if reread {
                for n in NODES {
                    let old = node_view_with(&before, n, &pieces);
                    prop_assert_eq!(&old, &node_view(&before, n), "node {} reread at step {}", n, i);
                }
            }
        }
    }
}

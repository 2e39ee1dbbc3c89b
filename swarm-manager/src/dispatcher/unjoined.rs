//! Nodes that were given a certificate with a join token but never opened a session: the
//! leader removes them once they are older than a grace period ([`JOIN_GRACE`]), so that
//! join tokens used without a node behind them (or nodes that failed right after joining)
//! do not stay in the store for ever. Pure: a function of the state and the time.
//!
//! "Never opened a session" is read from `Node.status.addr`: the dispatcher sets it on every
//! session (the reported data-path address or the address the session came from) and it is
//! never cleared; a node created by the CA has none. Managers are left alone (they are Raft
//! members; demote first).

use std::time::Duration;

use proto::{NodeRole, TaskState};

use crate::store::{Kind, Op, State};

/// How long a node may stay without a first session before it is removed.
pub const JOIN_GRACE: Duration = Duration::from_secs(24 * 60 * 60);

/// The ops that remove the nodes created before `now_ms - grace` that never opened a
/// session, and shut down any task they hold (as `node rm` does).
pub fn remove_never_joined(st: &State, now_ms: i64, grace: Duration) -> Vec<Op> {
    let cutoff = now_ms.saturating_sub(i64::try_from(grace.as_millis()).unwrap_or(i64::MAX));
    let mut ops = Vec::new();
    for n in st.nodes() {
        let never_joined = n.status.as_ref().is_none_or(|s| s.addr.is_empty());
        let worker = n.role_enum() == NodeRole::Worker && n.desired_role() == NodeRole::Worker;
        let created = n.meta.as_ref().map_or(i64::MAX, |m| m.created_at);
        if !(never_joined && worker && created <= cutoff) {
            continue;
        }
        ops.push(Op::Delete {
            kind: Kind::Node,
            id: n.id.clone(),
        });
        ops.extend(
            st.tasks_on_node(&n.id)
                .filter(|t| t.desired() < TaskState::Shutdown)
                .map(|t| Op::SetTaskDesiredState {
                    task_id: t.id.clone(),
                    desired: TaskState::Shutdown,
                }),
        );
    }
    ops
}

#[cfg(test)]
mod tests {
    use proto::{Meta, NodeState, NodeStatus};

    use super::*;
    use crate::orchestrator::testutil::{node, task};
    use crate::store::{Object, Request};

    fn created(mut n: proto::Node, at: i64, addr: &str, role: NodeRole) -> Object {
        n.meta = Some(Meta {
            created_at: at,
            ..Default::default()
        });
        n.role = role as i32;
        if let Some(spec) = n.spec.as_mut() {
            spec.desired_role = role as i32;
        }
        n.status = Some(NodeStatus {
            state: NodeState::Down as i32,
            addr: addr.into(),
            ..Default::default()
        });
        Object::Node(n)
    }

    #[test]
    fn only_old_workers_without_a_session_are_removed_with_their_tasks_shut_down() {
        let hour = 3_600_000;
        let now = 100 * hour;
        let grace = Duration::from_secs(24 * 3600);
        let mut st = State::default();
        let objects = vec![
            created(
                node("stale", NodeState::Down),
                now - 25 * hour,
                "",
                NodeRole::Worker,
            ),
            created(
                node("young", NodeState::Down),
                now - 23 * hour,
                "",
                NodeRole::Worker,
            ),
            created(
                node("joined", NodeState::Down),
                now - 48 * hour,
                "127.0.0.2",
                NodeRole::Worker,
            ),
            created(
                node("manager", NodeState::Down),
                now - 48 * hour,
                "",
                NodeRole::Manager,
            ),
            Object::Task(task(
                "t1",
                "s",
                1,
                "stale",
                TaskState::Assigned,
                TaskState::Running,
            )),
        ];
        // Objects are created with the time of their entry: one entry per object.
        for (i, o) in objects.into_iter().enumerate() {
            let mut req = Request::atomic(vec![]);
            req.now_ms = o.meta().map_or(now, |m| m.created_at);
            req.ops.push(Op::Create(o));
            st.apply(i as u64 + 1, req);
        }
        let ops = remove_never_joined(&st, now, grace);
        assert_eq!(ops.len(), 2, "{ops:?}");
        assert!(matches!(&ops[0], Op::Delete { kind: Kind::Node, id } if id == "stale"));
        assert!(
            matches!(&ops[1], Op::SetTaskDesiredState { task_id, desired: TaskState::Shutdown } if task_id == "t1")
        );
        assert!(remove_never_joined(&st, now, grace * 2).is_empty());
    }
}

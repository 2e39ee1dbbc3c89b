//! The components' real loops together with a fake scheduler and agent.

use std::collections::HashMap;

use proto::TaskState;

use super::task::{is_active, is_running};
use super::testutil::{self, *};
use super::{replicated, restart, taskreaper};
use crate::store::{Op, Request, Store};

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
        tokio::spawn(taskreaper::TaskReaper::new(store.clone()).run()),
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

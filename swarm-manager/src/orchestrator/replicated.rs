//! The replicated orchestrator: keeps `replicas` occupied slots per replicated service.
//!
//! Per service, each round:
//! 1. active tasks (desired ≤ COMPLETE) are grouped by slot; of duplicates in a slot the
//!    best is kept and the others are shut down (slot 0 tasks do not belong here);
//! 2. too many occupied slots: shut down the surplus, preferring slots whose task is not
//!    running, then slots on the nodes with the most tasks of the service, then the highest
//!    slot numbers;
//! 3. too few: create tasks in the lowest free slot numbers;
//! 4. a task on a node that is gone, DOWN or drained is replaced in its slot (the scheduler
//!    places the replacement elsewhere).
//!
//! Steps 3 and 4 together create at most [`CREATE_PER_ROUND`] tasks per round over all
//! services: a large scale-up, or the tasks of a thousand nodes that went DOWN, take several
//! rounds, each short enough that a service created meanwhile is seen in the next one.
//!
//! Tasks of an old spec are the update orchestrator's (`update.rs`); a slot in the middle of
//! a start-first replacement (old task running, new one starting) is not a duplicate.
//! Dead tasks (ended while still wanted) belong to the restart supervisor and are left alone.

use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::time::Duration;

use proto::{Service, Task, TaskState};

use super::reconciler::{run_reconciler, Plan};
use super::task::{
    is_active, is_dead, is_running, new_task, node_unusable, pick_kept, retire_op, shutdown_op,
    start_first_pending,
};
use crate::store::{Object, Op, State, Store};

pub struct ReplicatedOrchestrator {
    store: Store,
}

impl ReplicatedOrchestrator {
    pub fn new(store: Store) -> Self {
        ReplicatedOrchestrator { store }
    }

    pub async fn run(self) {
        run_reconciler(
            self.store,
            "replicated-orchestrator",
            Duration::from_millis(20),
            reconcile,
        )
        .await
    }
}

/// The most tasks one round creates, new slots and replacements together, all services
/// together: a large scale-up is built in rounds, each written before the next is computed,
/// never as one huge plan. (At 5 000 nodes, a round that replaced the tasks of every node
/// marked DOWN at once proposed for minutes, and services created meanwhile got no task.)
pub const CREATE_PER_ROUND: usize = 1000;

/// What the replicated orchestrator wants written for the current state.
pub fn reconcile(state: &State, now_ms: i64) -> Plan {
    let mut plan = Plan::default();
    let mut budget = CREATE_PER_ROUND;
    for svc in state.services().filter(|s| s.is_replicated()) {
        reconcile_service(state, svc, now_ms, &mut plan, &mut budget);
    }
    plan
}

fn reconcile_service(
    state: &State,
    svc: &Service,
    now_ms: i64,
    plan: &mut Plan,
    budget: &mut usize,
) {
    let want = svc.replicas().unwrap_or(1) as usize;
    let version = svc.spec_version;

    let mut slots: BTreeMap<u64, Vec<&Task>> = BTreeMap::new();
    for t in state.tasks_of_service(&svc.id).filter(|t| is_active(t)) {
        if t.slot == 0 {
            // Not a replicated task (left from another mode): it has no slot to keep.
            plan.ops.push(shutdown_op(t));
        } else {
            slots.entry(t.slot).or_default().push(t);
        }
    }
    let mut kept: BTreeMap<u64, &Task> = BTreeMap::new();
    for (slot, tasks) in &slots {
        if start_first_pending(tasks, version) {
            if let Some(old) = tasks.iter().find(|t| t.spec_version != version) {
                kept.insert(*slot, old);
            }
            continue;
        }
        let Some(k) = pick_kept(tasks, version) else {
            continue;
        };
        for t in tasks.iter().filter(|t| t.id != k.id) {
            plan.ops.push(shutdown_op(t));
        }
        kept.insert(*slot, k);
    }

    // Scale.
    if kept.len() > want {
        for slot in choose_surplus(&kept, kept.len() - want) {
            if let Some(t) = kept.remove(&slot) {
                plan.ops.push(shutdown_op(t));
            }
        }
    } else if kept.len() < want {
        // The rest in the next rounds (the tasks created now change the store).
        let mut missing = (want - kept.len()).min(*budget);
        *budget -= missing;
        let mut slot = 1u64;
        while missing > 0 {
            if !kept.contains_key(&slot) {
                let t = new_task(svc, slot, "", TaskState::Running, now_ms);
                plan.ops.push(Op::Create(Object::Task(t)));
                missing -= 1;
            }
            slot += 1;
        }
    }

    // Unusable nodes.
    for t in kept.values() {
        if is_dead(t) {
            // The restart supervisor replaces it (with the current spec).
            continue;
        }
        let wanted = t.desired_state <= TaskState::Running as i32;
        if wanted && !t.node_id.is_empty() && node_unusable(state, &t.node_id) {
            if *budget == 0 {
                // The rest in the next rounds.
                return;
            }
            *budget -= 1;
            replace(svc, t, now_ms, plan);
        }
    }
}

/// Stops `old` and creates its successor in the same slot, all or nothing.
fn replace(svc: &Service, old: &Task, now_ms: i64, plan: &mut Plan) {
    let new = new_task(svc, old.slot, "", TaskState::Running, now_ms);
    plan.groups
        .push(vec![retire_op(old), Op::Create(Object::Task(new))]);
}

/// The `n` slots to stop when scaling down: tasks not running first (highest slot first),
/// then from the nodes with the most tasks of the service, highest slot first.
fn choose_surplus(kept: &BTreeMap<u64, &Task>, n: usize) -> Vec<u64> {
    let mut out: Vec<u64> = kept
        .iter()
        .rev()
        .filter(|(_, t)| !(is_running(t) && t.desired_state <= TaskState::Running as i32))
        .map(|(s, _)| *s)
        .take(n)
        .collect();
    if out.len() == n {
        return out;
    }
    let mut by_node: HashMap<&str, Vec<u64>> = HashMap::new();
    for (slot, t) in kept {
        if !out.contains(slot) {
            by_node.entry(t.node_id.as_str()).or_default().push(*slot);
        }
    }
    // (tasks on the node, its highest slot, node): the max is the next victim.
    let mut heap: BinaryHeap<(usize, u64, &str)> = by_node
        .iter()
        .filter_map(|(node, slots)| slots.last().map(|top| (slots.len(), *top, *node)))
        .collect();
    while out.len() < n {
        let Some((_, _, node)) = heap.pop() else {
            break;
        };
        let Some(slots) = by_node.get_mut(node) else {
            continue;
        };
        if let Some(slot) = slots.pop() {
            out.push(slot);
        }
        if let Some(top) = slots.last() {
            heap.push((slots.len(), *top, node));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orchestrator::testutil::*;
    use crate::store::Store;
    use proto::{NodeAvailability, NodeSpec, NodeState};

    async fn round(store: &Store) -> usize {
        let plan = reconcile(&store.read(), 1_000);
        let n = plan.ops.len() + plan.groups.len();
        apply(store, plan).await;
        n
    }

    fn set_replicas(store: &Store, id: &str, n: u64) -> Op {
        let mut s = store.read().service(id).unwrap().clone();
        s.spec.as_mut().unwrap().mode = Some(proto::service_spec::Mode::Replicated(
            proto::ReplicatedService { replicas: n },
        ));
        Op::Update {
            object: Object::Service(s),
            check_version: true,
        }
    }

    fn slots(store: &Store, svc: &str) -> Vec<u64> {
        active(&store.read(), svc).iter().map(|t| t.slot).collect()
    }

    #[tokio::test]
    async fn a_large_scale_up_is_built_in_bounded_rounds() {
        let store = Store::memory();
        put(
            &store,
            vec![replicated("a", 1500).into(), replicated("b", 700).into()],
        )
        .await;
        let mut rounds = 0;
        loop {
            let plan = reconcile(&store.read(), 1_000);
            if plan.is_empty() {
                break;
            }
            assert!(plan.ops.len() <= CREATE_PER_ROUND, "{} ops", plan.ops.len());
            apply(&store, plan).await;
            rounds += 1;
        }
        assert_eq!(rounds, 3, "2200 tasks in rounds of {CREATE_PER_ROUND}");
        assert_eq!(slots(&store, "a"), (1..=1500).collect::<Vec<_>>());
        assert_eq!(slots(&store, "b"), (1..=700).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn scale_up_down_and_reuse_slots() {
        let store = Store::memory();
        put(&store, vec![replicated("s", 6).into()]).await;
        round(&store).await;
        assert_eq!(slots(&store, "s"), vec![1, 2, 3, 4, 5, 6]);
        for t in active(&store.read(), "s") {
            assert_eq!(t.desired(), TaskState::Running);
            assert_eq!(t.state(), TaskState::New);
            assert_eq!(t.service_name, "svc-s");
            assert!(t.node_id.is_empty());
        }
        assert_eq!(round(&store).await, 0, "converged");

        let op = set_replicas(&store, "s", 10);
        store.write(vec![op]).await.unwrap();
        round(&store).await;
        assert_eq!(slots(&store, "s"), (1..=10).collect::<Vec<_>>());

        let op = set_replicas(&store, "s", 3);
        store.write(vec![op]).await.unwrap();
        round(&store).await;
        assert_eq!(
            slots(&store, "s"),
            vec![1, 2, 3],
            "highest slots stopped first"
        );
        assert_eq!(
            store
                .read()
                .tasks_of_service("s")
                .filter(|t| t.desired() == TaskState::Shutdown)
                .count(),
            7
        );
        assert_eq!(round(&store).await, 0);

        // Scaling up again reuses the freed slot numbers.
        let op = set_replicas(&store, "s", 5);
        store.write(vec![op]).await.unwrap();
        round(&store).await;
        assert_eq!(slots(&store, "s"), vec![1, 2, 3, 4, 5]);
        assert_eq!(store.read().tasks_of_service("s").count(), 12);
    }

    #[tokio::test]
    async fn scale_down_prefers_pending_then_crowded_nodes() {
        let store = Store::memory();
        use TaskState::*;
        put(
            &store,
            vec![
                replicated("s", 2).into(),
                node("a", NodeState::Ready).into(),
                node("b", NodeState::Ready).into(),
                task("t1", "s", 1, "a", Running, Running).into(),
                task("t2", "s", 2, "a", Running, Running).into(),
                task("t3", "s", 3, "b", Running, Running).into(),
                task("t4", "s", 4, "", Pending, Running).into(),
            ],
        )
        .await;
        round(&store).await;
        let st = store.read();
        assert_eq!(
            st.task("t4").unwrap().desired(),
            Shutdown,
            "not running first"
        );
        assert_eq!(st.task("t2").unwrap().desired(), Shutdown, "node a has two");
        assert_eq!(st.task("t1").unwrap().desired(), Running);
        assert_eq!(st.task("t3").unwrap().desired(), Running);
    }

    #[tokio::test]
    async fn finished_slot_is_not_refilled_and_dead_task_is_left_to_the_supervisor() {
        let store = Store::memory();
        use TaskState::*;
        put(
            &store,
            vec![
                replicated("s", 2).into(),
                node("a", NodeState::Ready).into(),
                task("t1", "s", 1, "a", Complete, Complete).into(),
                task("t2", "s", 2, "a", Failed, Running).into(),
            ],
        )
        .await;
        assert_eq!(round(&store).await, 0);
        assert_eq!(store.read().task_count(), 2);
    }

    #[tokio::test]
    async fn duplicates_in_a_slot_are_shut_down() {
        let store = Store::memory();
        use TaskState::*;
        put(
            &store,
            vec![
                replicated("s", 1).into(),
                node("a", NodeState::Ready).into(),
                task("t1", "s", 1, "a", Running, Running).into(),
                task("t2", "s", 1, "", Pending, Running).into(),
            ],
        )
        .await;
        round(&store).await;
        let st = store.read();
        assert_eq!(st.task("t1").unwrap().desired(), Running);
        assert_eq!(st.task("t2").unwrap().desired(), Shutdown);
    }

    #[tokio::test]
    async fn tasks_on_down_removed_or_drained_nodes_are_replaced() {
        let store = Store::memory();
        use TaskState::*;
        let mut drained = node("c", NodeState::Ready);
        drained.spec = Some(NodeSpec {
            availability: NodeAvailability::Drain as i32,
            ..Default::default()
        });
        put(
            &store,
            vec![
                replicated("s", 4).into(),
                node("a", NodeState::Ready).into(),
                node("b", NodeState::Down).into(),
                drained.into(),
                task("t1", "s", 1, "a", Running, Running).into(),
                task("t2", "s", 2, "b", Running, Running).into(),
                task("t3", "s", 3, "c", Running, Running).into(),
                task("t4", "s", 4, "gone", Assigned, Running).into(),
            ],
        )
        .await;
        round(&store).await;
        let st = store.read();
        for id in ["t2", "t3", "t4"] {
            assert_eq!(st.task(id).unwrap().desired(), Shutdown, "{id}");
        }
        let act = active(&st, "s");
        assert_eq!(
            act.iter().map(|t| t.slot).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
        assert_eq!(act[0].id, "t1");
        for t in &act[1..] {
            assert!(t.node_id.is_empty(), "the scheduler places replacements");
            assert_eq!(t.state(), New);
        }
    }

    #[tokio::test]
    async fn replacing_the_tasks_of_a_down_node_shares_the_round_budget() {
        let store = Store::memory();
        use TaskState::*;
        let mut objs: Vec<Object> = vec![
            replicated("a", 1500).into(),
            replicated("z", 3).into(),
            node("down", NodeState::Down).into(),
        ];
        for slot in 1..=1500 {
            objs.push(task(&format!("t{slot}"), "a", slot, "down", Running, Running).into());
        }
        put(&store, objs).await;
        let mut rounds = 0;
        loop {
            let plan = reconcile(&store.read(), 1_000);
            if plan.is_empty() {
                break;
            }
            let creates = plan.ops.iter().chain(plan.groups.iter().flatten());
            let creates = creates.filter(|op| matches!(op, Op::Create(_))).count();
            assert!(creates <= CREATE_PER_ROUND, "{creates} tasks in one round");
            apply(&store, plan).await;
            rounds += 1;
        }
        assert_eq!(rounds, 2, "1 503 tasks in rounds of {CREATE_PER_ROUND}");
        let st = store.read();
        let a = active(&st, "a");
        assert_eq!(a.len(), 1500);
        assert!(a.iter().all(|t| t.node_id.is_empty()), "all replaced");
        assert_eq!(slots(&store, "z"), vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn replacement_loses_a_race_with_a_concurrent_change() {
        let store = Store::memory();
        use TaskState::*;
        put(
            &store,
            vec![
                replicated("s", 1).into(),
                node("b", NodeState::Down).into(),
                task("t1", "s", 1, "b", Running, Running).into(),
            ],
        )
        .await;
        let plan = reconcile(&store.read(), 0);
        assert_eq!(plan.groups.len(), 1);
        // Another component changes the task first.
        store
            .write(vec![set_status("t1", Failed, 0)])
            .await
            .unwrap();
        for r in plan.into_requests() {
            let resp = store.propose(r).await.unwrap();
            assert!(
                matches!(resp.result, Some(Err(_))),
                "version check rejects it"
            );
        }
        assert_eq!(store.read().task_count(), 1, "no second task in the slot");
    }
}

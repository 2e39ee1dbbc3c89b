//! The job orchestrator over the in-memory store, with the restart supervisor and a stand-in
//! agent that runs tasks to their end.

use proto::{NodeAvailability, NodeSpec, NodeState, RestartCondition, RestartPolicy, TaskState};

use super::reconcile;
use crate::orchestrator::restart;
use crate::orchestrator::task::is_active;
use crate::orchestrator::testutil::*;
use crate::store::{Object, Op, Store};

fn on_failure(max_attempts: u64) -> RestartPolicy {
    RestartPolicy {
        condition: RestartCondition::OnFailure as i32,
        delay_ms: 0,
        max_attempts,
        window_ms: 0,
    }
}

/// One round of the job orchestrator and of the restart supervisor; the ops written.
async fn round(store: &Store) -> usize {
    let mut n = 0;
    for f in [reconcile, restart::reconcile] {
        let plan = f(&store.read(), 1_000);
        n += plan.ops.len() + plan.groups.len();
        apply(store, plan).await;
    }
    n
}

/// Tasks of the service wanted and not ended (what runs, or is about to).
fn in_progress(store: &Store, svc: &str) -> Vec<String> {
    let st = store.read();
    let mut v: Vec<String> = st
        .tasks_of_service(svc)
        .filter(|t| t.desired() <= TaskState::Running && !t.state().is_terminal())
        .map(|t| t.id.clone())
        .collect();
    v.sort();
    v
}

fn in_state(store: &Store, svc: &str, state: TaskState) -> usize {
    store
        .read()
        .tasks_of_service(svc)
        .filter(|t| t.state() == state)
        .count()
}

/// The stand-in agent: every task in progress ends in `end`.
async fn end_all(store: &Store, svc: &str, end: TaskState) {
    let ops: Vec<Op> = in_progress(store, svc)
        .iter()
        .map(|id| set_status(id, end, 900))
        .collect();
    if !ops.is_empty() {
        store.write(ops).await.unwrap();
    }
}

#[tokio::test]
async fn replicated_job_runs_its_completions_never_more_than_max_concurrent() {
    let store = Store::memory();
    let svc = with_restart(replicated_job("j", 5, 2), on_failure(0));
    put(&store, vec![svc.into(), node("a", NodeState::Ready).into()]).await;

    let mut waves = Vec::new();
    for _ in 0..10 {
        round(&store).await;
        let running = in_progress(&store, "j");
        assert!(running.len() <= 2, "at most 2 at once: {running:?}");
        waves.push(running.len());
        end_all(&store, "j", TaskState::Complete).await;
    }
    assert_eq!(waves[..4], [2, 2, 1, 0], "5 completions, 2 at a time");
    assert_eq!(in_state(&store, "j", TaskState::Complete), 5);
    {
        let st = store.read();
        let mut slots: Vec<u64> = st.tasks_of_service("j").map(|t| t.slot).collect();
        slots.sort();
        assert_eq!(
            slots,
            vec![1, 2, 3, 4, 5],
            "one task per slot, none restarted"
        );
        for t in st.tasks_of_service("j") {
            assert_eq!(
                t.desired(),
                TaskState::Complete,
                "{}: done, not restarted",
                t.id
            );
            assert_eq!(t.job_iteration, 0);
        }
    }
    assert_eq!(round(&store).await, 0, "a finished job stays finished");
}

#[tokio::test]
async fn a_completed_job_task_is_not_restarted_even_with_condition_any() {
    let store = Store::memory();
    let svc = with_restart(
        replicated_job("j", 1, 1),
        RestartPolicy {
            condition: RestartCondition::Any as i32,
            ..Default::default()
        },
    );
    put(&store, vec![svc.into(), node("a", NodeState::Ready).into()]).await;
    round(&store).await;
    end_all(&store, "j", TaskState::Complete).await;
    round(&store).await;
    assert_eq!(round(&store).await, 0);
    let st = store.read();
    assert_eq!(st.tasks_of_service("j").count(), 1);
    assert_eq!(
        st.tasks_of_service("j").next().unwrap().desired(),
        TaskState::Complete
    );
}

#[tokio::test]
async fn failed_job_tasks_are_retried_until_max_attempts_then_left_failed() {
    let store = Store::memory();
    let svc = with_restart(replicated_job("j", 2, 2), on_failure(2));
    put(&store, vec![svc.into(), node("a", NodeState::Ready).into()]).await;
    for _ in 0..8 {
        round(&store).await;
        assert!(in_progress(&store, "j").len() <= 2);
        end_all(&store, "j", TaskState::Failed).await;
    }
    assert_eq!(round(&store).await, 0, "given up: nothing more to do");
    let st = store.read();
    for slot in [1, 2] {
        let tasks: Vec<_> = st
            .tasks_of_service("j")
            .filter(|t| t.slot == slot)
            .collect();
        assert_eq!(tasks.len(), 3, "slot {slot}: the first run and 2 restarts");
        assert!(tasks.iter().all(|t| t.state() == TaskState::Failed));
        assert_eq!(
            tasks.iter().filter(|t| is_active(t)).count(),
            1,
            "slot {slot}: the last failure holds the slot (desired COMPLETE)"
        );
    }
    assert_eq!(st.task_count(), 6, "no slot beyond the job's 2 completions");
}

#[tokio::test]
async fn condition_none_leaves_a_failed_job_task_failed() {
    let store = Store::memory();
    let mut policy = on_failure(0);
    policy.condition = RestartCondition::None as i32;
    let svc = with_restart(replicated_job("j", 1, 1), policy);
    put(&store, vec![svc.into(), node("a", NodeState::Ready).into()]).await;
    round(&store).await;
    end_all(&store, "j", TaskState::Failed).await;
    round(&store).await;
    assert_eq!(round(&store).await, 0);
    assert_eq!(store.read().task_count(), 1);
}

/// Starts a new iteration of the job, as the Control API does on `service update`.
async fn next_iteration(store: &Store, id: &str, iteration: u64) {
    let mut s = store.read().service(id).unwrap().clone();
    s.job_status.as_mut().unwrap().job_iteration = iteration;
    store
        .write(vec![Op::Update {
            object: Object::Service(s),
            check_version: true,
        }])
        .await
        .unwrap();
}

#[tokio::test]
async fn a_new_iteration_runs_the_job_again_and_shuts_the_old_one_down() {
    let store = Store::memory();
    let svc = with_restart(replicated_job("j", 3, 3), on_failure(0));
    put(&store, vec![svc.into(), node("a", NodeState::Ready).into()]).await;
    round(&store).await;
    // Two complete, one still running when the job is run again.
    let first = in_progress(&store, "j");
    store
        .write(vec![
            set_status(&first[0], TaskState::Complete, 900),
            set_status(&first[1], TaskState::Complete, 900),
            set_status(&first[2], TaskState::Running, 900),
        ])
        .await
        .unwrap();
    round(&store).await;
    next_iteration(&store, "j", 7).await;
    round(&store).await;
    let st = store.read();
    for id in &first {
        assert_eq!(st.task(id).unwrap().desired(), TaskState::Shutdown, "{id}");
    }
    let new: Vec<_> = st
        .tasks_of_service("j")
        .filter(|t| t.job_iteration == 7)
        .collect();
    assert_eq!(new.len(), 3, "the whole job runs again");
    assert!(new.iter().all(|t| t.desired() == TaskState::Running));
}

#[tokio::test]
async fn a_job_task_on_a_lost_node_starts_over_in_its_slot() {
    let store = Store::memory();
    let svc = with_restart(replicated_job("j", 1, 1), on_failure(0));
    put(
        &store,
        vec![
            svc.into(),
            node("a", NodeState::Down).into(),
            task("t1", "j", 1, "a", TaskState::Running, TaskState::Running).into(),
        ],
    )
    .await;
    round(&store).await;
    let st = store.read();
    assert_eq!(st.task("t1").unwrap().desired(), TaskState::Shutdown);
    let act = active(&st, "j");
    assert_eq!(act.len(), 1);
    assert_eq!(act[0].slot, 1);
    assert!(
        act[0].node_id.is_empty(),
        "the scheduler places it elsewhere"
    );
}

#[tokio::test]
async fn global_job_runs_once_per_eligible_node_and_on_nodes_that_join_later() {
    let store = Store::memory();
    let svc = with_restart(global_job("g"), on_failure(0));
    let mut drained = node("c", NodeState::Ready);
    drained.spec = Some(NodeSpec {
        availability: NodeAvailability::Drain as i32,
        ..Default::default()
    });
    put(
        &store,
        vec![
            svc.into(),
            node("a", NodeState::Ready).into(),
            node("b", NodeState::Ready).into(),
            drained.into(),
            node("d", NodeState::Down).into(),
        ],
    )
    .await;
    round(&store).await;
    let nodes = |store: &Store| {
        let mut v: Vec<String> = store
            .read()
            .tasks_of_service("g")
            .map(|t| t.node_id.clone())
            .collect();
        v.sort();
        v
    };
    assert_eq!(nodes(&store), vec!["a", "b"]);
    end_all(&store, "g", TaskState::Complete).await;
    round(&store).await;
    assert_eq!(round(&store).await, 0, "done on every node");
    assert_eq!(nodes(&store), vec!["a", "b"], "not run twice on a node");

    put(&store, vec![node("e", NodeState::Ready).into()]).await;
    round(&store).await;
    assert_eq!(
        nodes(&store),
        vec!["a", "b", "e"],
        "a node that joins gets one"
    );
    assert_eq!(in_state(&store, "g", TaskState::Complete), 2);

    next_iteration(&store, "g", 3).await;
    round(&store).await;
    let st = store.read();
    let again: Vec<&str> = st
        .tasks_of_service("g")
        .filter(|t| t.job_iteration == 3)
        .map(|t| t.node_id.as_str())
        .collect();
    assert_eq!(
        again.len(),
        3,
        "update runs it again on every node: {again:?}"
    );
}

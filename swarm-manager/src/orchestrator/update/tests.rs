//! The update orchestrator over an in-memory store, with an explicit clock. Every round
//! reads only the store: a round after a leader change is the same function on the same
//! state, which the tests rely on by never keeping anything between rounds.

use proto::{
    ContainerSpec, NodeState, Service, Task, TaskState, UpdateConfig, UpdateFailureAction,
    UpdateOrder, UpdateState, UpdateStatus,
};

use super::reconcile;
use crate::orchestrator::replicated;
use crate::orchestrator::testutil::*;
use crate::store::{Object, Op, Store};
use TaskState::*;

/// When every test update starts (before any task the tests create).
const STARTED: i64 = 1;

fn image(s: &mut Service, img: &str) {
    let t = s.spec.as_mut().unwrap().task.as_mut().unwrap();
    t.container = Some(ContainerSpec {
        image: img.into(),
        ..Default::default()
    });
}

fn policy(parallelism: u64, delay_ms: i64, action: UpdateFailureAction) -> UpdateConfig {
    UpdateConfig {
        parallelism,
        delay_ms,
        failure_action: action as i32,
        monitor_ms: 5_000,
        max_failure_ratio: 0.0,
        order: UpdateOrder::StopFirst as i32,
    }
}

/// A replicated service of `n` RUNNING tasks of image "v1" (spec version 1) on node "a".
async fn running_service(store: &Store, n: u64, cfg: UpdateConfig) {
    let mut svc = replicated("s", n);
    image(&mut svc, "v1");
    svc.spec.as_mut().unwrap().update = Some(cfg);
    svc.spec.as_mut().unwrap().rollback = Some(cfg);
    let mut objs: Vec<Object> = vec![svc.clone().into(), node("a", NodeState::Ready).into()];
    for slot in 1..=n {
        let mut t = task(&format!("old{slot}"), "s", slot, "a", Running, Running);
        t.spec = svc.spec.as_ref().unwrap().task.clone();
        objs.push(t.into());
    }
    put(store, objs).await;
}

/// Writes the service back (version-checked).
async fn write(store: &Store, svc: Service) {
    store
        .write(vec![Op::Update {
            object: svc.into(),
            check_version: true,
        }])
        .await
        .unwrap();
}

/// What the Control API writes for `service update --image v2`.
async fn start_update(store: &Store, img: &str) {
    let mut svc = store.read().service("s").unwrap().clone();
    svc.previous_spec = svc.spec.clone();
    svc.previous_spec_version = svc.spec_version;
    svc.spec_version += 1;
    image(&mut svc, img);
    svc.update_status = Some(UpdateStatus {
        state: UpdateState::Updating as i32,
        started_at: STARTED,
        completed_at: 0,
        message: "update in progress".into(),
    });
    write(store, svc).await;
}

/// A service of `n` running tasks updated to `img` with `cfg`, after the update's first
/// round (at 10 s): the store and the new tasks that round created.
async fn first_batch(n: u64, cfg: UpdateConfig, img: &str) -> (Store, Vec<Task>) {
    let store = Store::memory();
    running_service(&store, n, cfg).await;
    start_update(&store, img).await;
    round(&store, 10_000).await;
    let new = starting(&store);
    (store, new)
}

/// One round at `now`; returns the plan's wake-up time.
async fn round(store: &Store, now: i64) -> Option<i64> {
    let plan = reconcile(&store.read(), now);
    let wake = plan.wake_at_ms;
    apply(store, plan).await;
    wake
}

fn service(store: &Store) -> Service {
    store.read().service("s").unwrap().clone()
}

fn status(store: &Store) -> UpdateStatus {
    service(store).update_status.unwrap()
}

/// Wanted tasks of the current spec that do not run yet.
fn starting(store: &Store) -> Vec<Task> {
    let v = service(store).spec_version;
    active(&store.read(), "s")
        .into_iter()
        .filter(|t| t.spec_version == v && t.state() < Running)
        .collect()
}

async fn set(store: &Store, tasks: &[Task], state: TaskState, ts: i64) {
    let ops = tasks.iter().map(|t| set_status(&t.id, state, ts)).collect();
    store.write(ops).await.unwrap();
}

fn old_running(store: &Store) -> usize {
    active(&store.read(), "s")
        .iter()
        .filter(|t| t.id.starts_with("old") && t.desired() == Running)
        .count()
}

#[tokio::test]
async fn batches_of_parallelism_wait_delay_then_complete_after_monitor() {
    let store = Store::memory();
    running_service(&store, 6, policy(2, 2_000, UpdateFailureAction::Pause)).await;
    start_update(&store, "v2").await;

    let mut t = 10_000;
    let mut batches = Vec::new();
    loop {
        round(&store, t).await;
        let batch = starting(&store);
        if batch.is_empty() {
            break;
        }
        assert_eq!(batch.len(), 2, "parallelism 2");
        assert_eq!(
            old_running(&store),
            6 - 2 * (batches.len() + 1),
            "stop-first"
        );
        batches.push(batch.iter().map(|t| t.slot).collect::<Vec<_>>());
        // Nothing more while the batch starts.
        assert_eq!(round(&store, t + 100).await, None);
        assert_eq!(starting(&store).len(), 2);
        set(&store, &batch, Running, t + 500).await;
        // The delay counts from the moment the batch runs; after the last batch, the
        // monitor period does.
        let wake = if old_running(&store) > 0 {
            t + 500 + 2_000
        } else {
            t + 500 + 5_000
        };
        assert_eq!(round(&store, t + 1_000).await, Some(wake));
        assert!(starting(&store).is_empty());
        t += 2_500;
    }
    assert_eq!(batches, vec![vec![1, 2], vec![3, 4], vec![5, 6]]);
    // Last slot ran at t - 2000: the monitor period (5 s) is still running.
    let last = t - 2_000;
    assert_eq!(status(&store).state(), UpdateState::Updating);
    assert_eq!(round(&store, last + 4_999).await, Some(last + 5_000));
    assert_eq!(status(&store).state(), UpdateState::Updating);
    round(&store, last + 5_000).await;
    let st = status(&store);
    assert_eq!(st.state(), UpdateState::Completed);
    assert_eq!(st.message, "update completed");
    assert_eq!(st.completed_at, last + 5_000);
    assert_eq!(st.started_at, STARTED);
    assert_eq!(
        round(&store, last + 9_000).await,
        None,
        "nothing left to do"
    );
}

#[tokio::test]
async fn parallelism_zero_replaces_every_slot_at_once() {
    let store = Store::memory();
    running_service(&store, 5, policy(0, 0, UpdateFailureAction::Pause)).await;
    start_update(&store, "v2").await;
    round(&store, 10_000).await;
    assert_eq!(starting(&store).len(), 5);
    assert_eq!(old_running(&store), 0);
}

#[tokio::test]
async fn failure_within_monitor_pauses_and_old_tasks_keep_running() {
    let (store, first) = first_batch(3, policy(1, 0, UpdateFailureAction::Pause), "bad").await;
    assert_eq!(first.len(), 1);
    set(&store, &first, Running, 10_100).await;
    set(&store, &first, Failed, 10_200).await;
    round(&store, 10_300).await;
    let st = status(&store);
    assert_eq!(st.state(), UpdateState::Paused);
    assert_eq!(
        st.message,
        format!(
            "update paused due to failure or early termination of task {}",
            first[0].id
        )
    );
    // Paused: no more slots are touched, the other old tasks keep running.
    for now in [20_000, 60_000] {
        round(&store, now).await;
    }
    assert!(starting(&store).is_empty());
    assert_eq!(old_running(&store), 2);
}

#[tokio::test]
async fn failure_after_the_monitor_period_does_not_count() {
    let (store, first) = first_batch(2, policy(1, 0, UpdateFailureAction::Pause), "v2").await;
    set(&store, &first, Running, 10_100).await;
    set(&store, &first, Failed, 15_101).await;
    round(&store, 15_200).await;
    assert_eq!(status(&store).state(), UpdateState::Updating);
    assert_eq!(starting(&store).len(), 1, "the next slot is updated");
}

#[tokio::test]
async fn failures_below_the_ratio_are_tolerated() {
    let mut cfg = policy(0, 0, UpdateFailureAction::Pause);
    cfg.max_failure_ratio = 0.5;
    let (store, new) = first_batch(4, cfg, "v2").await;
    assert_eq!(new.len(), 4);
    set(&store, &new[..2], Rejected, 10_100).await;
    round(&store, 10_200).await;
    assert_eq!(
        status(&store).state(),
        UpdateState::Updating,
        "2 of 4 is not above 0.5"
    );
    set(&store, &new[2..3], Failed, 10_300).await;
    round(&store, 10_400).await;
    assert_eq!(status(&store).state(), UpdateState::Paused);
}

#[tokio::test]
async fn failure_action_continue_goes_on() {
    let (store, first) = first_batch(2, policy(1, 0, UpdateFailureAction::Continue), "v2").await;
    set(&store, &first, Failed, 10_100).await;
    round(&store, 10_200).await;
    assert_eq!(status(&store).state(), UpdateState::Updating);
    assert_eq!(starting(&store).len(), 1);
    assert_ne!(starting(&store)[0].slot, first[0].slot);
}

#[tokio::test]
async fn a_restart_waiting_for_its_delay_does_not_hold_the_update_back() {
    let (store, first) = first_batch(2, policy(1, 0, UpdateFailureAction::Continue), "v2").await;
    set(&store, &first, Failed, 10_100).await;
    // The restart supervisor replaces it after its delay (desired READY meanwhile).
    let plan = crate::orchestrator::restart::reconcile(&store.read(), 10_200);
    apply(&store, plan).await;
    let waiting = starting(&store);
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0].desired(), Ready);
    round(&store, 10_300).await;
    let slots: Vec<u64> = starting(&store).iter().map(|t| t.slot).collect();
    assert_eq!(slots.len(), 2, "the next slot is updated: {slots:?}");
    assert_ne!(slots[0], slots[1]);
}

#[tokio::test]
async fn failure_action_rollback_restores_the_previous_spec_and_completes() {
    let (store, first) = first_batch(3, policy(1, 0, UpdateFailureAction::Rollback), "bad").await;
    set(&store, &first, Failed, 10_100).await;
    round(&store, 10_200).await;

    let svc = service(&store);
    let st = svc.update_status.clone().unwrap();
    assert_eq!(st.state(), UpdateState::RollbackStarted);
    assert_eq!(
        st.message,
        format!(
            "update rolled back due to failure or early termination of task {}",
            first[0].id
        )
    );
    assert_eq!(svc.image(), "v1");
    assert_eq!(
        svc.spec_version, 1,
        "the previous spec's version comes back"
    );
    assert!(svc.previous_spec.is_none());

    // The slot the update stopped gets a v1 task again (the failed task is the restart
    // supervisor's; the old tasks of slots 2 and 3 were never touched).
    let slot1: Vec<Task> = active(&store.read(), "s")
        .into_iter()
        .filter(|t| t.slot == first[0].slot && t.spec_version == 1)
        .collect();
    assert!(slot1.is_empty(), "the stopped old task is not revived");
    assert_eq!(old_running(&store), 2);
    // The restart supervisor's replacement (v1) runs; the rollback completes after monitor.
    let supervisor = crate::orchestrator::restart::reconcile(&store.read(), 10_300);
    apply(&store, supervisor).await;
    let replacement = starting(&store);
    assert_eq!(replacement.len(), 1);
    assert_eq!(replacement[0].spec_version, 1);
    set(&store, &replacement, Running, 20_100).await;
    round(&store, 20_200).await;
    assert_eq!(status(&store).state(), UpdateState::RollbackStarted);
    round(&store, 25_100).await;
    let st = status(&store);
    assert_eq!(st.state(), UpdateState::RollbackCompleted);
    assert_eq!(st.message, "rollback completed");
}

#[tokio::test]
async fn a_failing_rollback_pauses_instead_of_rolling_back_again() {
    let store = Store::memory();
    running_service(&store, 2, policy(1, 0, UpdateFailureAction::Rollback)).await;
    start_update(&store, "v2").await;
    // The service is being rolled back (its current spec is the restored one) and the
    // rollback's first new task fails.
    let mut svc = service(&store);
    svc.update_status = Some(UpdateStatus {
        state: UpdateState::RollbackStarted as i32,
        started_at: STARTED,
        completed_at: 0,
        message: "manually requested rollback".into(),
    });
    write(&store, svc).await;
    round(&store, 10_000).await;
    let first = starting(&store);
    assert_eq!(first.len(), 1);
    set(&store, &first, Failed, 10_100).await;
    round(&store, 10_200).await;
    let st = status(&store);
    assert_eq!(st.state(), UpdateState::RollbackPaused);
    assert!(st.message.starts_with("rollback paused due to failure"));
}

#[tokio::test]
async fn start_first_keeps_the_old_task_until_the_new_one_runs() {
    let mut cfg = policy(1, 0, UpdateFailureAction::Pause);
    cfg.order = UpdateOrder::StartFirst as i32;
    let (store, new) = first_batch(2, cfg, "v2").await;
    assert_eq!(new.len(), 1);
    assert_eq!(
        old_running(&store),
        2,
        "start-first: the old task still serves"
    );
    // The replicated orchestrator does not treat the pair as duplicates.
    let plan = replicated::reconcile(&store.read(), 10_050);
    assert!(plan.is_empty(), "{plan:?}");
    assert_eq!(round(&store, 10_100).await, None);
    assert_eq!(old_running(&store), 2);

    set(&store, &new, Running, 10_200).await;
    round(&store, 10_300).await;
    let st = store.read();
    let old = st.task(&format!("old{}", new[0].slot)).unwrap();
    assert_eq!(old.desired(), Shutdown, "stopped once its successor runs");
    assert_eq!(old_running(&store), 1);
    drop(st);
    assert_eq!(starting(&store).len(), 1, "next slot");
}

#[tokio::test]
async fn a_new_leader_resumes_mid_update_from_the_store() {
    let (store, batch) = first_batch(4, policy(2, 3_000, UpdateFailureAction::Pause), "v2").await;
    set(&store, &batch, Running, 10_500).await;
    // The old leader is gone. What the store says is enough: the delay still counts from
    // the batch's start, and the next batch follows the same policy.
    let fresh = reconcile(&store.read(), 11_000);
    assert!(fresh.is_empty());
    assert_eq!(fresh.wake_at_ms, Some(13_500));
    round(&store, 13_500).await;
    let next = starting(&store);
    assert_eq!(next.len(), 2);
    assert!(next.iter().all(|t| t.slot == 3 || t.slot == 4));
}

#[tokio::test]
async fn no_update_status_means_default_pace_and_no_status_written() {
    let store = Store::memory();
    running_service(&store, 3, UpdateConfig::docker_default()).await;
    let mut svc = service(&store);
    svc.spec_version = 2;
    write(&store, svc).await;
    round(&store, 10_000).await;
    assert_eq!(starting(&store).len(), 1, "parallelism 1");
    assert!(service(&store).update_status.is_none());
}

#[tokio::test]
async fn global_start_first_replaces_on_the_same_node_after_the_new_task_runs() {
    let store = Store::memory();
    let mut svc = global("g");
    let mut cfg = policy(1, 0, UpdateFailureAction::Pause);
    cfg.order = UpdateOrder::StartFirst as i32;
    svc.spec.as_mut().unwrap().update = Some(cfg);
    put(
        &store,
        vec![
            svc.into(),
            node("a", NodeState::Ready).into(),
            task("ga", "g", 0, "a", Running, Running).into(),
        ],
    )
    .await;
    let mut svc = store.read().service("g").unwrap().clone();
    svc.spec_version = 2;
    write(&store, svc).await;
    let plan = reconcile(&store.read(), 10_000);
    apply(&store, plan).await;
    let new: Vec<Task> = active(&store.read(), "g")
        .into_iter()
        .filter(|t| t.spec_version == 2)
        .collect();
    assert_eq!(new.len(), 1);
    assert_eq!(new[0].node_id, "a");
    // The global orchestrator leaves the pair alone; the old task keeps running.
    assert!(crate::orchestrator::global::reconcile(&store.read(), 10_050).is_empty());
    assert_eq!(store.read().task("ga").unwrap().desired(), Running);
    set(&store, &new, Running, 10_100).await;
    let plan = reconcile(&store.read(), 10_200);
    apply(&store, plan).await;
    assert_eq!(store.read().task("ga").unwrap().desired(), Shutdown);
}

//! A snapshot's state as a restarted manager reads it from `raft_snapshot`
//! (`swarm_manager::store::State::from_bytes`, which also rebuilds the indexes). Checks: no
//! panic; a state that reads writes a snapshot that reads back with the same objects; every
//! index answers consistently with the objects (tasks of a service are tasks of that service).

#![no_main]

use libfuzzer_sys::fuzz_target;
use swarm_manager::store::State;

fuzz_target!(|data: &[u8]| {
    let Ok(state) = State::from_bytes(data) else {
        return;
    };
    let back = State::from_bytes(&state.to_bytes()).expect("a written snapshot reads back");
    assert_eq!(back.task_count(), state.task_count());
    assert!(back.services().eq(state.services()), "services changed");
    assert!(back.nodes().eq(state.nodes()), "nodes changed");
    assert!(back.networks().eq(state.networks()), "networks changed");
    for s in state.services() {
        for t in state.tasks_of_service(&s.id) {
            assert_eq!(t.service_id, s.id, "task index of service {}", s.id);
        }
    }
    for n in state.nodes() {
        for t in state.tasks_on_node(&n.id) {
            assert_eq!(t.node_id, n.id, "task index of node {}", n.id);
        }
    }
});

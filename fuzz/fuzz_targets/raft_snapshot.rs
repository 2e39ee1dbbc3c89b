//! A snapshot's state as a restarted manager reads it from `raft_snapshot`
//! (`swarm_manager::store::State::from_bytes`, which also rebuilds the indexes). Checks: no
//! panic; a state that reads writes a snapshot that reads back with the same objects; every
//! index answers consistently with the objects (tasks of a service are tasks of that service).
//!
//! "The same objects" means the same encoding, bit for bit: a float field read from disk may
//! be NaN (`UpdateConfig.max_failure_ratio`; the API refuses it, a damaged file need not), and
//! NaN is not equal to itself, so comparing with `==` reported a round trip that lost nothing.

#![no_main]

use libfuzzer_sys::fuzz_target;
use swarm_manager::store::State;

fuzz_target!(|data: &[u8]| {
    let Ok(state) = State::from_bytes(data) else {
        return;
    };
    let back = State::from_bytes(&state.to_bytes()).expect("a written snapshot reads back");
    assert_eq!(back.task_count(), state.task_count());
    assert_eq!(encoded(back.services()), encoded(state.services()), "services changed");
    assert_eq!(encoded(back.nodes()), encoded(state.nodes()), "nodes changed");
    assert_eq!(encoded(back.networks()), encoded(state.networks()), "networks changed");
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

/// The objects' encoding in iteration order (the maps are ordered by id, so it is canonical).
fn encoded<'a, T: serde::Serialize + 'a>(objects: impl Iterator<Item = &'a T>) -> Vec<u8> {
    let all: Vec<&T> = objects.collect();
    bincode::serialize(&all).expect("objects serialize")
}

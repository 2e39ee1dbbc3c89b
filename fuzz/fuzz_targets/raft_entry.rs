//! A Raft log entry as a restarted manager reads it from `raft_log`
//! (`swarm_manager::raft::storage::decode_entry`), then applied to a state the way the state
//! machine applies a committed entry. Checks: no panic; a decoded entry encodes to bytes that
//! decode to the same entry (the encoding is canonical); applying twice the same entry to two
//! copies of the state gives the same answer (apply is deterministic).

#![no_main]

use libfuzzer_sys::fuzz_target;
use openraft::EntryPayload;
use swarm_manager::raft::storage::{decode_entry, encode_entry};
use swarm_manager::store::State;

fuzz_target!(|data: &[u8]| {
    let Ok(entry) = decode_entry(data) else {
        return;
    };
    let bytes = encode_entry(&entry).expect("a decoded entry encodes");
    let again = decode_entry(&bytes).expect("an encoded entry decodes");
    assert_eq!(
        encode_entry(&again).expect("encodes"),
        bytes,
        "the entry changed through encode/decode"
    );
    if let EntryPayload::Normal(req) = &entry.payload {
        let mut a = State::default();
        let mut b = State::default();
        let ra = a.apply(entry.log_id.index, req.clone());
        let rb = b.apply(entry.log_id.index, req.clone());
        assert_eq!(
            format!("{ra:?}"),
            format!("{rb:?}"),
            "apply is not deterministic"
        );
        // The applied state survives a snapshot: written, read back, written again the same.
        let snap = State::from_bytes(&a.to_bytes()).expect("a snapshot of an applied state reads");
        assert_eq!(snap.services().count(), a.services().count());
        assert_eq!(snap.task_count(), a.task_count());
    }
});

//! The agent's embedded DNS server, one message from a task (`network::dns::server::respond`:
//! parse, answer from the index within the task's networks, write) over the DNS tests' view.
//! Checks: no panic; an answer is a well-formed DNS response with the query's id and, on UDP,
//! fits in what the client accepts (at most 1232 bytes); a dropped message is too short for
//! a header or is itself a response.

#![no_main]

use std::sync::OnceLock;

use hickory_proto::op::{Message, MessageType};
use libfuzzer_sys::fuzz_target;
use swarm_agent::network::dns::server::{respond, Outcome};
use swarm_agent::network::dns::testdata::{sample_view, BACK, FRONT, INGRESS, OTHER};
use swarm_agent::network::dns::wire::{message_id, HEADER_LEN, MAX_UDP};
use swarm_agent::network::dns::{Index, Scope};

/// The index and one scope per subset of the four networks (the first byte picks one).
fn fixture() -> &'static (Index, Vec<Scope>) {
    static F: OnceLock<(Index, Vec<Scope>)> = OnceLock::new();
    F.get_or_init(|| {
        let index = Index::build(&sample_view());
        let nets = [FRONT, BACK, OTHER, INGRESS];
        let scopes = (0..16u8)
            .map(|mask| {
                let ids: Vec<&str> = (0..4)
                    .filter(|b| mask & (1 << b) != 0)
                    .map(|b| nets[b])
                    .collect();
                index.scope(&ids)
            })
            .collect();
        (index, scopes)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, msg)) = data.split_first() else {
        return;
    };
    let (index, scopes) = fixture();
    let scope = &scopes[usize::from(sel & 0x0f)];
    let tcp = sel & 0x10 != 0;
    let rotate = usize::from(sel >> 5);
    let mut out = Vec::new();
    match respond(index, scope, msg, tcp, rotate, &mut out) {
        Outcome::Reply => {
            let answer = Message::from_vec(&out)
                .unwrap_or_else(|e| panic!("our answer does not parse: {e}; {out:02x?}"));
            assert_eq!(answer.metadata.message_type, MessageType::Response);
            assert_eq!(Some(answer.metadata.id), message_id(msg), "answer id");
            if !tcp {
                assert!(
                    out.len() <= usize::from(MAX_UDP),
                    "a UDP answer of {} bytes",
                    out.len()
                );
            }
        }
        Outcome::Drop => assert!(
            msg.len() < HEADER_LEN || msg[2] & 0x80 != 0,
            "a query with a header was dropped without an answer"
        ),
        Outcome::Forward { client_limit } => {
            assert!((512..=usize::from(MAX_UDP)).contains(&client_limit));
        }
    }
});

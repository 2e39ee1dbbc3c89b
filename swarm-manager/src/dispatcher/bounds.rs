//! What an agent may write into the store, bounded: task status texts truncated, node
//! descriptions refused above a size, port conflict lists capped, and the rules that decide
//! whether a reported status changes anything and which of two reports of a task wins.
//! Pure functions of values; the dispatcher applies them before anything reaches Raft.

use prost::Message;
use proto::{NodeDescription, PortConflict, TaskStatus};

/// Longest `TaskStatus.message` and `TaskStatus.err` kept, in bytes; longer texts are cut
/// at a character boundary and end with [`TRUNCATED`].
pub const MAX_STATUS_TEXT: usize = 4096;
/// Most `TaskStatus.port_status` entries kept (a task publishes at most this many ports).
pub const MAX_PORT_STATUS: usize = 1024;
/// Largest node description a session may carry (encoded protobuf size).
pub const MAX_DESCRIPTION_BYTES: usize = 64 * 1024;
/// Most port conflicts kept per node, and the longest process text of one.
pub const MAX_PORT_CONFLICTS: usize = 256;
pub const MAX_PROCESS_TEXT: usize = 256;
/// What a truncated text ends with.
pub const TRUNCATED: &str = "… (truncated)";

/// `text` cut to at most `max` bytes (marker included) at a character boundary.
pub fn truncate(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let mut end = max.saturating_sub(TRUNCATED.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(TRUNCATED);
}

/// A reported task status within the bounds above.
pub fn bound_status(mut status: TaskStatus) -> TaskStatus {
    truncate(&mut status.message, MAX_STATUS_TEXT);
    truncate(&mut status.err, MAX_STATUS_TEXT);
    status.port_status.truncate(MAX_PORT_STATUS);
    status
}

/// Refuses a node description above [`MAX_DESCRIPTION_BYTES`] with the error the agent sees.
pub fn check_description(node_id: &str, desc: &NodeDescription) -> Result<(), String> {
    let size = desc.encoded_len();
    if size > MAX_DESCRIPTION_BYTES {
        return Err(format!(
            "node {node_id}: its description is {size} bytes, above the limit of {MAX_DESCRIPTION_BYTES} bytes; \
             remove engine labels or shorten the hostname"
        ));
    }
    Ok(())
}

/// A node's port conflicts within the bounds above.
pub fn bound_port_conflicts(mut conflicts: Vec<PortConflict>) -> Vec<PortConflict> {
    conflicts.truncate(MAX_PORT_CONFLICTS);
    for c in &mut conflicts {
        truncate(&mut c.process, MAX_PROCESS_TEXT);
    }
    conflicts
}

/// Whether writing `new` over the stored status would change nothing the store keeps: the
/// same state, texts, container status and ports (the report's time alone is no change),
/// or a state behind the stored one (the store never moves a task backwards).
pub fn changes_nothing(stored: Option<&TaskStatus>, new: &TaskStatus) -> bool {
    let Some(old) = stored else {
        return false;
    };
    new.state < old.state
        || (new.state == old.state
            && new.message == old.message
            && new.err == old.err
            && new.container_status == old.container_status
            && new.port_status == old.port_status)
}

/// Which of two not yet written reports of one task is written: the later one, unless it is
/// behind the earlier one's state (so a terminal state is never replaced by an older one).
pub fn merge(pending: TaskStatus, later: TaskStatus) -> TaskStatus {
    if later.state >= pending.state {
        later
    } else {
        pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::TaskState;

    fn status(state: TaskState, message: &str) -> TaskStatus {
        TaskStatus {
            state: state as i32,
            message: message.into(),
            ..Default::default()
        }
    }

    #[test]
    fn long_texts_are_cut_at_a_character_boundary_with_a_marker() {
        let mut short = "fine".to_string();
        truncate(&mut short, 10);
        assert_eq!(short, "fine");

        let big = bound_status(TaskStatus {
            message: "é".repeat(1 << 20),
            err: "x".repeat(MAX_STATUS_TEXT + 1),
            port_status: vec![Default::default(); MAX_PORT_STATUS + 5],
            ..Default::default()
        });
        assert!(
            big.message.len() <= MAX_STATUS_TEXT,
            "{}",
            big.message.len()
        );
        assert!(big.message.len() > MAX_STATUS_TEXT - 20);
        assert!(big.message.ends_with(TRUNCATED));
        assert!(big.message.starts_with("éé"));
        assert_eq!(big.err.len(), MAX_STATUS_TEXT);
        assert!(big.err.ends_with(TRUNCATED));
        assert_eq!(big.port_status.len(), MAX_PORT_STATUS);

        let exact = bound_status(status(TaskState::Running, &"y".repeat(MAX_STATUS_TEXT)));
        assert_eq!(
            exact.message,
            "y".repeat(MAX_STATUS_TEXT),
            "at the bound: kept"
        );
    }

    #[test]
    fn descriptions_above_the_bound_are_refused_with_the_size_and_the_fix() {
        let small = NodeDescription {
            hostname: "node1".into(),
            ..Default::default()
        };
        assert!(check_description("n1", &small).is_ok());
        let mut big = small.clone();
        big.engine_labels
            .insert("huge".into(), "z".repeat(MAX_DESCRIPTION_BYTES));
        let e = check_description("n1", &big).unwrap_err();
        assert!(e.contains("node n1"), "{e}");
        assert!(e.contains(&MAX_DESCRIPTION_BYTES.to_string()), "{e}");
        assert!(e.contains("engine labels"), "{e}");
    }

    #[test]
    fn port_conflicts_are_capped() {
        let many = vec![
            PortConflict {
                port: 80,
                protocol: 0,
                process: "p".repeat(10_000),
            };
            MAX_PORT_CONFLICTS * 2
        ];
        let kept = bound_port_conflicts(many);
        assert_eq!(kept.len(), MAX_PORT_CONFLICTS);
        assert!(kept.iter().all(|c| c.process.len() <= MAX_PROCESS_TEXT));
    }

    #[test]
    fn a_report_that_repeats_the_stored_status_changes_nothing() {
        let stored = status(TaskState::Running, "started");
        let mut again = stored.clone();
        again.timestamp = 99;
        assert!(
            changes_nothing(Some(&stored), &again),
            "only the time differs"
        );
        assert!(!changes_nothing(
            Some(&stored),
            &status(TaskState::Running, "other")
        ));
        assert!(!changes_nothing(
            Some(&stored),
            &status(TaskState::Complete, "started")
        ));
        assert!(
            changes_nothing(Some(&stored), &status(TaskState::Starting, "x")),
            "behind the stored state: the store would drop it"
        );
        assert!(!changes_nothing(None, &stored));
    }

    #[test]
    fn the_latest_report_wins_but_never_moves_a_task_backwards() {
        let running = status(TaskState::Running, "a");
        let running2 = status(TaskState::Running, "b");
        assert_eq!(merge(running.clone(), running2.clone()), running2);
        let failed = status(TaskState::Failed, "exit 1");
        assert_eq!(merge(running, failed.clone()), failed);
        assert_eq!(
            merge(failed.clone(), running2),
            failed,
            "a terminal state is not replaced by an earlier one"
        );
    }
}

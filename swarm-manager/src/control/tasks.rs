//! GetTask and ListTasks (filters by service, node and desired state).

use std::collections::BTreeSet;

use proto::{GetTaskRequest, ListTasksRequest, ListTasksResponse, Task};
use tonic::Status;

use super::linearize;
use super::lookup::{filter_node_ids, filter_service_ids, find_task};
use crate::store::{State, Store};

pub(super) async fn get(store: &Store, req: GetTaskRequest) -> Result<Task, Status> {
    linearize(store).await?;
    let st = store.read();
    find_task(&st, &req.task_id).cloned().map(redacted)
}

/// The task as the Control API answers it: without the registry login of its service
/// (see [`super::services::redacted`]).
fn redacted(mut t: Task) -> Task {
    super::services::redact_task_spec(t.spec.as_mut());
    t
}

fn resolve(
    st: &State,
    refs: &[String],
    f: fn(&State, &str) -> Result<Vec<String>, Status>,
) -> Result<Option<BTreeSet<String>>, Status> {
    if refs.is_empty() {
        return Ok(None);
    }
    let mut ids = BTreeSet::new();
    for r in refs {
        ids.extend(f(st, r)?);
    }
    Ok(Some(ids))
}

/// The tasks the filters select, in a stable order (service, slot or node, age).
pub(super) fn select(st: &State, req: &ListTasksRequest) -> Result<Vec<Task>, Status> {
    let services = resolve(st, &req.service_ids, filter_service_ids)?;
    let nodes = resolve(st, &req.node_ids, filter_node_ids)?;
    let desired: BTreeSet<i32> = req.desired_states.iter().copied().collect();
    let keep = |t: &&Task| {
        services.as_ref().is_none_or(|s| s.contains(&t.service_id))
            && nodes.as_ref().is_none_or(|n| n.contains(&t.node_id))
            && (desired.is_empty() || desired.contains(&t.desired_state))
    };
    let mut out: Vec<Task> = match (&services, &nodes) {
        (Some(s), _) => s
            .iter()
            .flat_map(|id| st.tasks_of_service(id))
            .filter(keep)
            .cloned()
            .collect(),
        (None, Some(n)) => n
            .iter()
            .flat_map(|id| st.tasks_on_node(id))
            .filter(keep)
            .cloned()
            .collect(),
        (None, None) => st.tasks().filter(keep).cloned().collect(),
    };
    out.sort_by(|a, b| {
        (&a.service_name, &a.service_id, a.slot, &a.node_id)
            .cmp(&(&b.service_name, &b.service_id, b.slot, &b.node_id))
            .then_with(|| {
                let ca = a.meta.as_ref().map_or(0, |m| m.created_at);
                let cb = b.meta.as_ref().map_or(0, |m| m.created_at);
                cb.cmp(&ca)
            })
            .then_with(|| a.id.cmp(&b.id))
    });
    Ok(out)
}

pub(super) async fn list(
    store: &Store,
    req: ListTasksRequest,
) -> Result<ListTasksResponse, Status> {
    linearize(store).await?;
    let st = store.read();
    Ok(ListTasksResponse {
        tasks: select(&st, &req)?.into_iter().map(redacted).collect(),
    })
}

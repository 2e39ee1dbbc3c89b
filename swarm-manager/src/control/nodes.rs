//! GetNode, ListNodes, UpdateNode (availability, labels, promote/demote), RemoveNode.

use proto::{
    GetNodeRequest, ListNodesRequest, ListNodesResponse, Node, NodeRole, NodeState, Reachability,
    RemoveNodeRequest, RemoveNodeResponse, TaskState, UpdateNodeRequest,
};
use tonic::Status;

use super::linearize;
use super::lookup::find_node;
use super::services::UNCONDITIONAL_RETRIES;
use super::validate::validate_node_spec;
use crate::api::{propose_status, store_status};
use crate::store::{Kind, Object, Op, ProposeError, State, Store, StoreError};

pub(super) async fn get(store: &Store, req: GetNodeRequest) -> Result<Node, Status> {
    linearize(store).await?;
    let st = store.read();
    find_node(&st, &req.node_id).cloned()
}

pub(super) async fn list(
    store: &Store,
    _req: ListNodesRequest,
) -> Result<ListNodesResponse, Status> {
    linearize(store).await?;
    let st = store.read();
    Ok(ListNodesResponse {
        nodes: st.nodes().cloned().collect(),
    })
}

fn is_unreachable(n: &Node) -> bool {
    n.state() == NodeState::Down
        || n.manager_status
            .as_ref()
            .is_some_and(|m| m.reachability == Reachability::Unreachable as i32)
}

/// SwarmKit's checks before a manager is demoted: another manager stays, and the managers
/// that stay reachable still form a quorum of the smaller Raft group.
fn check_demotion(st: &State, node: &Node) -> Result<(), Status> {
    let staying: Vec<&Node> = st
        .nodes()
        .filter(|n| n.id != node.id && n.role_enum() == NodeRole::Manager)
        .collect();
    if !staying
        .iter()
        .any(|n| n.desired_role() == NodeRole::Manager)
    {
        return Err(Status::failed_precondition(
            "attempting to demote the last manager of the swarm; promote another node first",
        ));
    }
    let reachable = staying.iter().filter(|n| !is_unreachable(n)).count();
    if reachable < staying.len() / 2 + 1 {
        return Err(Status::failed_precondition(format!(
            "can't remove member from the raft: this would result in a loss of quorum ({reachable} of the {} remaining managers are reachable); bring managers back first",
            staying.len()
        )));
    }
    Ok(())
}

fn updated_node(
    st: &State,
    req: &UpdateNodeRequest,
    spec: proto::NodeSpec,
) -> Result<Node, Status> {
    let current = find_node(st, &req.node_id)?;
    if req.node_version != 0 && current.meta.as_ref().map_or(0, |m| m.version) != req.node_version {
        return Err(store_status(StoreError::VersionMismatch {
            kind: Kind::Node,
            id: current.id.clone(),
            expected: req.node_version,
            actual: current.meta.as_ref().map_or(0, |m| m.version),
        }));
    }
    let demoting = NodeRole::try_from(spec.desired_role) == Ok(NodeRole::Worker)
        && (current.desired_role() == NodeRole::Manager
            || current.role_enum() == NodeRole::Manager);
    if demoting {
        check_demotion(st, current)?;
    }
    let mut next = current.clone();
    next.spec = Some(spec);
    Ok(next)
}

pub(super) async fn update(store: &Store, req: UpdateNodeRequest) -> Result<Node, Status> {
    let spec = req.spec.clone().ok_or_else(|| {
        Status::invalid_argument(
            "UpdateNode needs the full node spec (read the node, change it, send it back)",
        )
    })?;
    validate_node_spec(&spec)?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let next = {
            let st = store.read();
            updated_node(&st, &req, spec.clone())?
        };
        tracing::info!(
            node = %next.id,
            availability = spec.availability,
            desired_role = spec.desired_role,
            "updating node"
        );
        match store
            .write(vec![Op::Update {
                object: Object::Node(next),
                check_version: true,
            }])
            .await
        {
            Ok(objs) => {
                return match objs.into_iter().next().flatten() {
                    Some(Object::Node(n)) => Ok(n),
                    _ => Err(Status::internal(
                        "the store did not return the written node",
                    )),
                }
            }
            Err(ProposeError::Store(StoreError::VersionMismatch { .. }))
                if req.node_version == 0 && attempt < UNCONDITIONAL_RETRIES => {}
            Err(e) => return Err(propose_status(e)),
        }
    }
}

pub(super) async fn remove(
    store: &Store,
    req: RemoveNodeRequest,
) -> Result<RemoveNodeResponse, Status> {
    let ops = {
        let st = store.read();
        let node = find_node(&st, &req.node_id)?;
        if node.role_enum() == NodeRole::Manager || node.desired_role() == NodeRole::Manager {
            return Err(Status::failed_precondition(format!(
                "node {} is a cluster manager and is a member of the raft cluster. It must be demoted to worker before removal",
                node.id
            )));
        }
        if !req.force && matches!(node.state(), NodeState::Ready | NodeState::Disconnected) {
            return Err(Status::failed_precondition(format!(
                "node {} is not down and can't be removed; use --force to remove it anyway",
                node.id
            )));
        }
        let mut ops = vec![Op::Delete {
            kind: Kind::Node,
            id: node.id.clone(),
        }];
        ops.extend(
            st.tasks_on_node(&node.id)
                .filter(|t| t.desired() < TaskState::Shutdown)
                .map(|t| Op::SetTaskDesiredState {
                    task_id: t.id.clone(),
                    desired: TaskState::Shutdown,
                }),
        );
        tracing::info!(node = %node.id, hostname = %node.hostname(), force = req.force, "removing node");
        ops
    };
    store.write(ops).await.map_err(propose_status)?;
    Ok(RemoveNodeResponse {})
}

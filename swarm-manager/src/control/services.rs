//! CreateService, GetService, ListServices, UpdateService, RemoveService.

use proto::service_spec::Mode;
use proto::{
    CreateServiceRequest, GetServiceRequest, JobStatus, ListServicesRequest, ListServicesResponse,
    PortConfig, PortProtocol, PublishMode, PullOptions, RemoveServiceRequest,
    RemoveServiceResponse, Service, ServiceSpec, TaskSpec, TaskState, UpdateServiceRequest,
    UpdateState, UpdateStatus,
};
use swarm_common::{clock::now_ms, id::new_id};
use tonic::Status;

use super::linearize;
use super::lookup::{find_network, find_service};
use super::secrets::resolve_references;
use super::validate::{generated_name, protocol_name, validate_service_spec};
use crate::api::{propose_status, store_status};
use crate::orchestrator::task::{fresh_spec_version, restored_spec_version};
use crate::store::{Kind, Object, Op, ProposeError, State, Store, StoreError};

/// Unconditional updates (version 0) re-read and retry this often when another writer
/// changed the object in between.
pub(super) const UNCONDITIONAL_RETRIES: usize = 8;

fn stored_service(objs: Vec<Option<Object>>) -> Result<Service, Status> {
    match objs.into_iter().next().flatten() {
        Some(Object::Service(s)) => Ok(s),
        _ => Err(Status::internal(
            "the store did not return the written service",
        )),
    }
}

/// Replaces network names and id prefixes in the task's attachments with network ids, and
/// refuses attachments to unknown networks or to the ingress network.
fn resolve_networks(st: &State, spec: &mut ServiceSpec) -> Result<(), Status> {
    let Some(task) = spec.task.as_mut() else {
        return Ok(());
    };
    let mut seen = std::collections::BTreeSet::new();
    for att in &mut task.networks {
        let net = find_network(st, &att.target)?;
        if net.spec.as_ref().is_some_and(|s| s.ingress) {
            return Err(Status::invalid_argument(format!(
                "Service cannot be explicitly attached to the ingress network {:?}; publish ports instead",
                net.spec.as_ref().map_or("", |s| s.name.as_str())
            )));
        }
        if !seen.insert(net.id.clone()) {
            return Err(Status::invalid_argument(format!(
                "TaskSpec: service cannot be attached to network {} more than once",
                att.target
            )));
        }
        att.target = net.id.clone();
    }
    Ok(())
}

fn ingress_ports(s: &Service) -> impl Iterator<Item = &PortConfig> {
    let spec_ports = s
        .spec
        .as_ref()
        .and_then(|sp| sp.endpoint.as_ref())
        .map(|e| e.ports.as_slice())
        .unwrap_or_default();
    let allocated = s
        .endpoint
        .as_ref()
        .map(|e| e.ports.as_slice())
        .unwrap_or_default();
    spec_ports
        .iter()
        .chain(allocated)
        .filter(|p| p.publish_mode == PublishMode::Ingress as i32 && p.published_port != 0)
}

/// SwarmKit's rule: a port another service publishes through the ingress routing mesh
/// cannot be published again, in either mode.
fn check_port_conflicts(
    st: &State,
    spec: &ServiceSpec,
    self_id: Option<&str>,
) -> Result<(), Status> {
    let wanted: Vec<&PortConfig> = spec
        .endpoint
        .as_ref()
        .map(|e| e.ports.iter().filter(|p| p.published_port != 0).collect())
        .unwrap_or_default();
    if wanted.is_empty() {
        return Ok(());
    }
    for other in st.services() {
        if Some(other.id.as_str()) == self_id {
            continue;
        }
        for used in ingress_ports(other) {
            if wanted
                .iter()
                .any(|w| w.published_port == used.published_port && w.protocol == used.protocol)
            {
                return Err(Status::invalid_argument(format!(
                    "port '{}' is already in use by service '{}' ({}) as an ingress port; choose another published port",
                    used.published_port,
                    other.name(),
                    other.id
                )));
            }
        }
    }
    Ok(())
}

fn publishes_ingress(spec: &ServiceSpec) -> bool {
    spec.endpoint.as_ref().is_some_and(|e| {
        e.ports
            .iter()
            .any(|p| p.publish_mode == PublishMode::Ingress as i32)
    })
}

/// SwarmKit's rule: ports published in ingress mode need the routing mesh's network.
fn check_ingress_present(st: &State, spec: &ServiceSpec) -> Result<(), Status> {
    let present = st
        .networks()
        .any(|n| n.spec.as_ref().is_some_and(|s| s.ingress));
    if publishes_ingress(spec) && !present {
        return Err(Status::failed_precondition(format!(
            "service needs ingress network, but no ingress network is present: service {} publishes ports in ingress mode; create one with swarm network create -d overlay --ingress NAME, or publish in host mode (mode=host)",
            spec.name
        )));
    }
    Ok(())
}

/// The cluster's VXLAN port (`init --data-path-port`) cannot be published over UDP: nodes
/// receive the overlay's own traffic on it, which the published port would capture.
fn check_data_path_port(st: &State, spec: &ServiceSpec) -> Result<(), Status> {
    let vxlan = st
        .cluster()
        .map(|c| c.vxlan_udp_port)
        .filter(|p| *p != 0)
        .unwrap_or(crate::ipam::DEFAULT_VXLAN_PORT);
    let ports = spec.endpoint.as_ref().map(|e| e.ports.as_slice());
    if let Some(p) = ports
        .unwrap_or_default()
        .iter()
        .find(|p| p.protocol == PortProtocol::Udp as i32 && p.published_port == vxlan)
    {
        return Err(Status::invalid_argument(format!(
            "EndpointSpec: port {}/udp is the swarm's VXLAN data-path port (swarm init --data-path-port): publishing it ({} mode) would capture the overlay traffic between nodes; choose another published port",
            p.published_port,
            if p.publish_mode == PublishMode::Host as i32 { "host" } else { "ingress" }
        )));
    }
    Ok(())
}

/// A manager's own port (`--listen-addr`, 2377 by default) cannot be published: on that
/// manager's node the mesh would take the Raft, Control and Dispatcher traffic of the whole
/// swarm.
fn check_manager_ports(st: &State, spec: &ServiceSpec) -> Result<(), Status> {
    let ports = spec.endpoint.as_ref().map(|e| e.ports.as_slice());
    for p in ports
        .unwrap_or_default()
        .iter()
        .filter(|p| p.protocol == PortProtocol::Tcp as i32)
    {
        let manager = st.nodes().find_map(|n| {
            let addr = &n.manager_status.as_ref()?.addr;
            let port: u32 = addr.rsplit_once(':')?.1.parse().ok()?;
            (port == p.published_port).then(|| (n.id.clone(), addr.clone()))
        });
        if let Some((id, addr)) = manager {
            return Err(Status::invalid_argument(format!(
                "EndpointSpec: port {}/tcp is a swarm manager's port (node {id} listens on {addr}): publishing it would take the cluster's control traffic on that node; choose another published port",
                p.published_port
            )));
        }
    }
    Ok(())
}

/// `source-ip=preserve` on an ingress port needs every node's routing mesh to keep the
/// client's address. A node whose agent runs the IPVS data plane cannot: its mesh masquerades
/// in the ingress sandbox, as Docker's does. Refused while such a node is in the swarm, rather
/// than accepted and not honoured there (an IPVS node that joins later logs a warning).
fn check_source_ip_preserve(st: &State, spec: &ServiceSpec) -> Result<(), Status> {
    let ports = spec.endpoint.as_ref().map(|e| e.ports.as_slice());
    let Some(p) = ports
        .unwrap_or_default()
        .iter()
        .find(|p| p.preserve_source_ip && p.publish_mode == PublishMode::Ingress as i32)
    else {
        return Ok(());
    };
    let ipvs: Vec<String> = st
        .nodes()
        .filter(|n| {
            n.description
                .as_ref()
                .and_then(|d| d.data_plane.as_ref())
                .is_some_and(|dp| dp.mode == "ipvs")
        })
        .map(|n| {
            let host = n.description.as_ref().map(|d| d.hostname.as_str());
            match host {
                Some(h) if !h.is_empty() => format!("{h} ({})", n.id),
                _ => n.id.clone(),
            }
        })
        .collect();
    if ipvs.is_empty() {
        return Ok(());
    }
    Err(Status::failed_precondition(format!(
        "EndpointSpec: port {}->{}/{}: source-ip=preserve cannot be kept on node(s) {}: their agents run the IPVS data plane, whose routing mesh masquerades (as Docker's does); publish the port in host mode (mode=host) to see client addresses, drop source-ip, or run those agents with --data-plane ebpf",
        p.published_port,
        p.target_port,
        protocol_name(PortProtocol::try_from(p.protocol).unwrap_or_default()),
        ipvs.join(", ")
    )))
}

pub(super) async fn create(store: &Store, req: CreateServiceRequest) -> Result<Service, Status> {
    let mut spec = req.spec.ok_or_else(|| {
        Status::invalid_argument("CreateService needs a service spec (name, image, mode ...)")
    })?;
    if spec.name.is_empty() {
        spec.name = generated_name();
    }
    spec.apply_docker_defaults();
    validate_service_spec(&spec)?;
    let service = {
        let st = store.read();
        if let Some(existing) = st.service_by_name(&spec.name) {
            return Err(Status::already_exists(format!(
                "service with name {} already exists ({}); choose another name or update the existing service",
                spec.name, existing.id
            )));
        }
        resolve_networks(&st, &mut spec)?;
        resolve_references(&st, &mut spec)?;
        check_data_path_port(&st, &spec)?;
        check_manager_ports(&st, &spec)?;
        check_port_conflicts(&st, &spec, None)?;
        check_source_ip_preserve(&st, &spec)?;
        check_ingress_present(&st, &spec)?;
        let job_status = job_status(&spec, 0);
        Service {
            id: new_id(),
            meta: None,
            spec: Some(spec),
            previous_spec: None,
            endpoint: None,
            spec_version: 1,
            update_status: None,
            previous_spec_version: 0,
            job_status,
        }
    };
    tracing::info!(service = %service.id, name = %service.name(), "creating service");
    let objs = store
        .write(vec![Op::Create(Object::Service(service))])
        .await
        .map_err(propose_status)?;
    stored_service(objs).map(redacted)
}

/// The registry login kept with a container spec (`--with-registry-auth`), if any.
fn pull_options(spec: &ServiceSpec) -> Option<&PullOptions> {
    spec.task
        .as_ref()
        .and_then(|t| t.container.as_ref())
        .and_then(|c| c.pull_options.as_ref())
}

/// Clears the registry login of a task's container spec.
pub(super) fn redact_task_spec(task: Option<&mut TaskSpec>) {
    if let Some(c) = task.and_then(|t| t.container.as_mut()) {
        c.pull_options = None;
    }
}

/// The service as the Control API answers it: the registry logins kept with its specs
/// (current and previous) are never returned to a client (Docker never returns them either);
/// only the agents that run its tasks receive them, through their assignments.
pub(super) fn redacted(mut s: Service) -> Service {
    redact_task_spec(s.spec.as_mut().and_then(|sp| sp.task.as_mut()));
    redact_task_spec(s.previous_spec.as_mut().and_then(|sp| sp.task.as_mut()));
    s
}

pub(super) async fn get(store: &Store, req: GetServiceRequest) -> Result<Service, Status> {
    linearize(store).await?;
    let st = store.read();
    find_service(&st, &req.service_id).cloned().map(redacted)
}

pub(super) async fn list(
    store: &Store,
    req: ListServicesRequest,
) -> Result<ListServicesResponse, Status> {
    linearize(store).await?;
    let st = store.read();
    let services: Vec<Service> = st.services().cloned().map(redacted).collect();
    let statuses = if req.status {
        // Counted from each service's own tasks (the store's index), not from every task.
        let up: std::collections::HashSet<&str> = st
            .nodes()
            .filter(|n| n.state() != proto::NodeState::Down)
            .map(|n| n.id.as_str())
            .collect();
        services
            .iter()
            .map(|s| s.task_status(st.tasks_of_service(&s.id), |n| up.contains(n)))
            .collect()
    } else {
        Vec::new()
    };
    Ok(ListServicesResponse { services, statuses })
}

fn version_mismatch(kind: Kind, id: &str, expected: u64, actual: u64) -> Status {
    store_status(StoreError::VersionMismatch {
        kind,
        id: id.to_string(),
        expected,
        actual,
    })
}

/// An update stopped by its failure action: the next `service update` resumes it.
fn is_paused(s: &Service) -> bool {
    s.update_status
        .as_ref()
        .is_some_and(|u| matches!(u.state(), UpdateState::Paused | UpdateState::RollbackPaused))
}

fn update_status(state: UpdateState, message: &str) -> UpdateStatus {
    UpdateStatus {
        state: state as i32,
        started_at: now_ms(),
        completed_at: 0,
        message: message.into(),
    }
}

/// The service after applying the update, or None when nothing changes.
fn updated_service(
    st: &State,
    reference: &str,
    version: u64,
    mut spec: ServiceSpec,
) -> Result<(Service, Option<Service>), Status> {
    let current = find_service(st, reference)?;
    check_version(current, version)?;
    let old = current.spec.clone().unwrap_or_default();
    if spec.name.is_empty() {
        spec.name = old.name.clone();
    }
    // Docker: an update without `--with-registry-auth` keeps the login the service has
    // (clients never read it back, so a read-modify-write spec comes without it).
    if pull_options(&spec).is_none() {
        if let (Some(kept), Some(c)) = (
            pull_options(&old).cloned(),
            spec.task.as_mut().and_then(|t| t.container.as_mut()),
        ) {
            c.pull_options = Some(kept);
        }
    }
    if spec.name != old.name {
        return Err(Status::unimplemented(format!(
            "renaming services is not supported (service {} is named {}); create a new service instead",
            current.id, old.name
        )));
    }
    if mode_kind(&spec) != mode_kind(&old) {
        return Err(Status::invalid_argument(format!(
            "service mode change is not allowed: service {} is {}, not {}; remove the service and create it again in the other mode",
            old.name,
            mode_kind(&old),
            mode_kind(&spec)
        )));
    }
    spec.apply_docker_defaults();
    validate_service_spec(&spec)?;
    resolve_networks(st, &mut spec)?;
    resolve_references(st, &mut spec)?;
    check_data_path_port(st, &spec)?;
    check_manager_ports(st, &spec)?;
    check_port_conflicts(st, &spec, Some(&current.id))?;
    check_source_ip_preserve(st, &spec)?;
    check_ingress_present(st, &spec)?;
    if spec == old && !is_paused(current) {
        return Ok((current.clone(), None));
    }
    let mut next = current.clone();
    if spec.is_job() {
        // A job is not updated in place: any change (`--force` too) runs it again, as a new
        // iteration numbered by the version it started from (SwarmKit).
        let version = current.meta.as_ref().map_or(0, |m| m.version);
        next.job_status = job_status(&spec, version.max(current.job_iteration() + 1));
        if spec.task != old.task || spec.endpoint != old.endpoint {
            next.spec_version = fresh_spec_version(st, current);
        }
    } else if spec.task != old.task || spec.endpoint != old.endpoint {
        // Tasks are replaced only when what they run (or how they are reached) changes:
        // scaling or relabelling the service keeps them.
        next.spec_version = fresh_spec_version(st, current);
        next.update_status = Some(update_status(UpdateState::Updating, "update in progress"));
    } else if is_paused(current) {
        // SwarmKit: any update of a paused service starts the update again.
        next.update_status = Some(update_status(UpdateState::Updating, "update in progress"));
    }
    if spec != old {
        next.previous_spec = Some(old);
        next.previous_spec_version = current.spec_version;
    }
    next.spec = Some(spec);
    Ok((current.clone(), Some(next)))
}

/// A job's status at the start of an iteration (None for services): SwarmKit numbers an
/// iteration with the version of the service it started from (0 for the first).
fn job_status(spec: &ServiceSpec, iteration: u64) -> Option<JobStatus> {
    spec.is_job().then(|| JobStatus {
        job_iteration: iteration,
        last_execution: now_ms(),
    })
}

/// Docker's modes, by kind: a service never changes from one to another.
fn mode_kind(spec: &ServiceSpec) -> &'static str {
    match spec.mode {
        None | Some(Mode::Replicated(_)) => "replicated",
        Some(Mode::Global(_)) => "global",
        Some(Mode::ReplicatedJob(_)) => "replicated-job",
        Some(Mode::GlobalJob(_)) => "global-job",
    }
}

fn check_version(current: &Service, version: u64) -> Result<(), Status> {
    let actual = current.meta.as_ref().map_or(0, |m| m.version);
    if version != 0 && actual != version {
        return Err(version_mismatch(
            Kind::Service,
            &current.id,
            version,
            actual,
        ));
    }
    Ok(())
}

/// The service rolled back to its previous spec by the managers (`service rollback`,
/// `service update --rollback`): the previous spec and its version come back, the
/// rollback policy applies, and there is no previous spec afterwards (SwarmKit's rule).
fn rolled_back_service(st: &State, reference: &str, version: u64) -> Result<Service, Status> {
    let current = find_service(st, reference)?;
    check_version(current, version)?;
    if current.is_job() {
        return Err(Status::failed_precondition(format!(
            "service {} is a job: jobs are not rolled back; run it again with service update (--force) or update its spec",
            current.name()
        )));
    }
    let Some(previous) = current.previous_spec.clone() else {
        return Err(Status::failed_precondition(format!(
            "service {} does not have a previous spec",
            current.id
        )));
    };
    let mut next = current.clone();
    next.spec_version = restored_spec_version(st, current, &previous);
    next.previous_spec = None;
    next.previous_spec_version = current.spec_version;
    next.spec = Some(previous);
    next.update_status = Some(update_status(
        UpdateState::RollbackStarted,
        "manually requested rollback",
    ));
    Ok(next)
}

pub(super) async fn update(store: &Store, req: UpdateServiceRequest) -> Result<Service, Status> {
    let spec = match (req.rollback, req.spec) {
        (true, _) => None,
        (false, Some(spec)) => Some(spec),
        (false, None) => {
            return Err(Status::invalid_argument(
                "UpdateService needs the full new service spec (read the service, change it, send it back)",
            ))
        }
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (current, next) = {
            let st = store.read();
            match &spec {
                Some(spec) => {
                    updated_service(&st, &req.service_id, req.service_version, spec.clone())?
                }
                None => {
                    let next = rolled_back_service(&st, &req.service_id, req.service_version)?;
                    (next.clone(), Some(next))
                }
            }
        };
        let Some(next) = next else {
            return Ok(redacted(current));
        };
        tracing::info!(
            service = %next.id,
            spec_version = next.spec_version,
            rollback = req.rollback,
            "updating service"
        );
        match store
            .write(vec![Op::Update {
                object: Object::Service(next),
                check_version: true,
            }])
            .await
        {
            Ok(objs) => return stored_service(objs).map(redacted),
            Err(ProposeError::Store(StoreError::VersionMismatch { .. }))
                if req.service_version == 0 && attempt < UNCONDITIONAL_RETRIES => {}
            Err(e) => return Err(propose_status(e)),
        }
    }
}

pub(super) async fn remove(
    store: &Store,
    req: RemoveServiceRequest,
) -> Result<RemoveServiceResponse, Status> {
    let ops = {
        let st = store.read();
        let svc = find_service(&st, &req.service_id)?;
        let mut ops = vec![Op::Delete {
            kind: Kind::Service,
            id: svc.id.clone(),
        }];
        ops.extend(
            st.tasks_of_service(&svc.id)
                .filter(|t| t.desired() < TaskState::Shutdown)
                .map(|t| Op::SetTaskDesiredState {
                    task_id: t.id.clone(),
                    desired: TaskState::Shutdown,
                }),
        );
        tracing::info!(service = %svc.id, name = %svc.name(), tasks = ops.len() - 1, "removing service");
        ops
    };
    store.write(ops).await.map_err(propose_status)?;
    Ok(RemoveServiceResponse {})
}

//! Checks of user-supplied specs (SwarmKit's rules and messages) and the defaults a
//! service gets. Everything here is pure: a refused spec changes nothing.

use std::collections::BTreeSet;
use std::net::IpAddr;

use proto::{
    ClusterSpec, EndpointMode, InitRequest, NetworkSpec, NodeAvailability, NodeRole, NodeSpec,
    PortProtocol, PublishMode, Resources, RestartCondition, ServiceSpec,
};
use tonic::Status;

/// Longest service or network name (a DNS label).
pub(super) const MAX_NAME_LEN: usize = 63;
/// SwarmKit's minimum node certificate validity.
const MIN_CERT_EXPIRY_MS: i64 = 3_600_000;
/// The longest node certificate validity ([`crate::ca::MAX_NODE_CERT_VALIDITY`]).
const MAX_CERT_EXPIRY_MS: i64 = crate::ca::MAX_NODE_CERT_VALIDITY.as_millis() as i64;
/// The shortest dispatcher heartbeat period: 1 s. Docker only refuses negative periods,
/// but a node is DOWN after three missed periods, and with periods far below a second
/// (1 ms) every node flaps DOWN under any load; the failover budget is about 2 s anyway.
pub const MIN_HEARTBEAT_MS: i64 = 1_000;
/// The most replicas a replicated service may ask for: 100 000 (Docker sets no bound; the
/// whole cluster's tasks are held in every manager's memory).
pub const MAX_REPLICAS: u64 = 100_000;

/// `what` (a flag or a spec field) checked against the certificate expiry bounds.
fn check_cert_expiry(what: &str, ms: i64) -> Result<(), Status> {
    if ms != 0 && ms < MIN_CERT_EXPIRY_MS {
        return Err(invalid(format!(
            "{what} must be at least 1 hour (node certificates are renewed at 50-80 % of their life)"
        )));
    }
    if ms > MAX_CERT_EXPIRY_MS {
        return Err(invalid(format!(
            "{what} must be at most 87600h (10 years); got {}h",
            ms / 3_600_000
        )));
    }
    Ok(())
}

/// `what` checked against the heartbeat period bounds (0 = the default, 5 s).
fn check_heartbeat(what: &str, ms: i64) -> Result<(), Status> {
    if ms < 0 {
        return Err(invalid(format!("{what} must be positive")));
    }
    if ms != 0 && ms < MIN_HEARTBEAT_MS {
        return Err(invalid(format!(
            "{what} must be at least 1s (got {ms}ms): nodes are marked down after 3 missed heartbeats"
        )));
    }
    Ok(())
}

fn invalid(msg: impl Into<String>) -> Status {
    Status::invalid_argument(msg.into())
}

/// Service and network names: `^[a-zA-Z0-9](?:[a-zA-Z0-9_.-]*[a-zA-Z0-9])?$`, at most 63
/// characters (a DNS name component).
pub(super) fn validate_name(kind: &str, name: &str) -> Result<(), Status> {
    if name.is_empty() {
        return Err(invalid(format!("{kind} name must be provided")));
    }
    let b = name.as_bytes();
    let edge_ok = |c: u8| c.is_ascii_alphanumeric();
    let inner_ok = |c: &u8| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-');
    let valid = b.len() <= MAX_NAME_LEN
        && edge_ok(b[0])
        && edge_ok(b[b.len() - 1])
        && b.iter().all(inner_ok);
    if !valid {
        return Err(invalid(format!(
            "invalid {kind} name {name:?}: name must be valid as a DNS name component: 1 to {MAX_NAME_LEN} characters among letters, digits, '_', '.' and '-', starting and ending with a letter or digit"
        )));
    }
    Ok(())
}

/// A name for a service created without one: a short random id, like a container's.
pub(super) fn generated_name() -> String {
    let id = swarm_common::id::new_id();
    id[..12.min(id.len())].to_string()
}

/// Docker's image reference rules, enough to catch typos: no whitespace, a lower-case
/// repository path, a tag of `[A-Za-z0-9_.-]` up to 128 characters.
fn validate_image(image: &str) -> Result<(), Status> {
    if image.is_empty() {
        return Err(invalid("ContainerSpec: image reference must be provided"));
    }
    let bad = |why: &str| {
        Err(invalid(format!(
            "ContainerSpec: {image:?} is not a valid repository/tag: {why}"
        )))
    };
    if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("it contains whitespace");
    }
    let name_tag = image.split_once('@').map_or(image, |(n, _)| n);
    let (path, tag) = match name_tag.rfind(':') {
        Some(i) if !name_tag[i..].contains('/') => (&name_tag[..i], Some(&name_tag[i + 1..])),
        _ => (name_tag, None),
    };
    if path.is_empty() {
        return bad("the repository name is empty");
    }
    let mut parts = path.split('/');
    let first = parts.next().unwrap_or_default();
    let has_domain =
        path.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let repo_parts: Vec<&str> = if has_domain {
        parts.collect()
    } else {
        path.split('/').collect()
    };
    for p in &repo_parts {
        if p.is_empty() {
            return bad("the repository path has an empty component");
        }
        if p.chars().any(|c| c.is_ascii_uppercase()) {
            return bad("repository name must be lowercase");
        }
        let ok = p
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
        let edges = p.starts_with(|c: char| c.is_ascii_alphanumeric())
            && p.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !ok || !edges {
            return bad("repository path components are lower-case letters and digits, separated by '.', '_' or '-'");
        }
    }
    if let Some(tag) = tag {
        let ok = !tag.is_empty()
            && tag.len() <= 128
            && tag.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
            && tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !ok {
            return bad("a tag is 1 to 128 characters among letters, digits, '_', '.' and '-'");
        }
    }
    Ok(())
}

fn validate_resources(what: &str, r: Option<&Resources>) -> Result<(), Status> {
    let Some(r) = r else { return Ok(()) };
    if r.nano_cpus < 0 {
        return Err(invalid(format!(
            "TaskSpec: {what} cpu cannot be negative (got {} CPUs)",
            r.nano_cpus as f64 / 1e9
        )));
    }
    if r.memory_bytes < 0 {
        return Err(invalid(format!(
            "TaskSpec: {what} memory cannot be negative (got {} bytes)",
            r.memory_bytes
        )));
    }
    if r.nano_cpus != 0 && r.nano_cpus < 1_000_000 {
        return Err(invalid(format!(
            "invalid cpu value {}: Must be at least 0.001",
            r.nano_cpus as f64 / 1e9
        )));
    }
    if r.memory_bytes != 0 && r.memory_bytes < 4 * 1024 * 1024 {
        return Err(invalid(format!(
            "invalid memory value {}: Must be at least 4MiB",
            r.memory_bytes
        )));
    }
    Ok(())
}

/// Everything in a service spec that can be checked without the store.
/// SwarmKit's checks of an update (or rollback) policy, with its messages.
fn validate_update_config(which: &str, u: &proto::UpdateConfig) -> Result<(), Status> {
    use proto::{UpdateFailureAction, UpdateOrder};
    match UpdateFailureAction::try_from(u.failure_action) {
        Ok(UpdateFailureAction::Rollback) if which == "rollback" => {
            return Err(invalid(
                "unrecognized rollback failure action rollback; a rollback can pause or continue on failure",
            ))
        }
        Ok(_) => {}
        Err(_) => {
            return Err(invalid(format!(
                "unrecognized {which} failure action {}; use pause, continue or rollback",
                u.failure_action
            )))
        }
    }
    if UpdateOrder::try_from(u.order).is_err() {
        return Err(invalid(format!(
            "unrecognized {which} order {}; use stop-first or start-first",
            u.order
        )));
    }
    if u.delay_ms < 0 {
        return Err(invalid(format!(
            "TaskSpec: {which}-delay cannot be negative"
        )));
    }
    if u.monitor_ms < 0 {
        return Err(invalid(format!(
            "TaskSpec: {which}-monitor cannot be negative"
        )));
    }
    if !(0.0..=1.0).contains(&u.max_failure_ratio) {
        return Err(invalid(format!(
            "TaskSpec: {which}-maxfailureratio cannot be less than 0 or bigger than 1"
        )));
    }
    Ok(())
}

pub(super) fn validate_service_spec(spec: &ServiceSpec) -> Result<(), Status> {
    validate_name("service", &spec.name)?;
    let task = spec.task.as_ref();
    let container = task.and_then(|t| t.container.as_ref());
    let Some(container) = container else {
        return Err(invalid("ContainerSpec: image reference must be provided"));
    };
    validate_image(&container.image)?;
    if container.stop_grace_period_ms < 0 {
        return Err(invalid(
            "ContainerSpec: stop-grace-period cannot be negative",
        ));
    }
    validate_mounts(&container.mounts)?;
    if let Some(h) = &container.healthcheck {
        validate_healthcheck(h)?;
    }
    if spec.is_job() && (spec.update.is_some() || spec.rollback.is_some()) {
        return Err(invalid(format!(
            "update and rollback configs cannot be used with jobs: service {} is a {} (its tasks run to completion; service update runs the job again); drop the --update-* and --rollback-* options",
            spec.name,
            spec.mode_name()
        )));
    }
    if let Some(u) = &spec.update {
        validate_update_config("update", u)?;
    }
    if let Some(r) = &spec.rollback {
        validate_update_config("rollback", r)?;
    }
    if let Some(proto::service_spec::Mode::Replicated(r)) = &spec.mode {
        if r.replicas > MAX_REPLICAS {
            return Err(invalid(format!(
                "ReplicatedService: {} replicas is more than the maximum of {MAX_REPLICAS} per service; split the work over several services",
                r.replicas
            )));
        }
    }
    let task = task.cloned().unwrap_or_default();
    if let Some(r) = &task.restart {
        if RestartCondition::try_from(r.condition).is_err() {
            return Err(invalid(format!(
                "TaskSpec: unknown restart condition {}; use any, on-failure or none",
                r.condition
            )));
        }
        if r.delay_ms < 0 {
            return Err(invalid("TaskSpec: restart-delay cannot be negative"));
        }
        if r.window_ms < 0 {
            return Err(invalid("TaskSpec: restart-window cannot be negative"));
        }
    }
    if let Some(res) = &task.resources {
        validate_resources("reserved", res.reservations.as_ref())?;
        validate_resources("limit", res.limits.as_ref())?;
    }
    if let Some(p) = &task.placement {
        crate::scheduler::constraint::parse_constraints(&p.constraints)
            .map_err(|e| invalid(e.to_string()))?;
        for pref in &p.preferences {
            if pref.spread_descriptor.trim().is_empty() {
                return Err(invalid(
                    "placement preference: a spread descriptor such as node.labels.zone must be provided",
                ));
            }
        }
        if p.max_replicas > 0
            && matches!(
                spec.mode,
                Some(proto::service_spec::Mode::Global(_))
                    | Some(proto::service_spec::Mode::GlobalJob(_))
            )
        {
            return Err(invalid(
                "placement: max replicas per node can only be used with replicated or replicated-job mode",
            ));
        }
    }
    let mut attached = BTreeSet::new();
    for n in &task.networks {
        if n.target.is_empty() {
            return Err(invalid(
                "TaskSpec: a network attachment must name a network",
            ));
        }
        if !attached.insert(n.target.as_str()) {
            return Err(invalid(format!(
                "TaskSpec: service cannot be attached to network {} more than once",
                n.target
            )));
        }
    }
    validate_endpoint(spec)
}

/// SwarmKit's checks: absolute targets, one mount per target, bind sources absolute, volume
/// sources names of the local driver (which takes no options).
fn validate_mounts(mounts: &[proto::Mount]) -> Result<(), Status> {
    let mut targets = BTreeSet::new();
    for m in mounts {
        if !m.target.starts_with('/') {
            return Err(invalid(format!(
                "ContainerSpec: invalid mount target, must be an absolute path: {}",
                m.target
            )));
        }
        if !targets.insert(m.target.trim_end_matches('/')) {
            return Err(invalid(format!(
                "ContainerSpec: invalid duplicate mount point: {}",
                m.target
            )));
        }
        match proto::MountType::try_from(m.r#type) {
            Ok(proto::MountType::Bind) => {
                if !m.source.starts_with('/') {
                    return Err(invalid(format!(
                        "ContainerSpec: invalid bind mount source, must be an absolute path: {}",
                        m.source
                    )));
                }
            }
            Ok(proto::MountType::Tmpfs) => {
                if !m.source.is_empty() {
                    return Err(invalid(
                        "ContainerSpec: invalid tmpfs source, source must be empty",
                    ));
                }
                if m.tmpfs_size_bytes < 0 {
                    return Err(invalid(
                        "ContainerSpec: invalid tmpfs size, size cannot be negative",
                    ));
                }
            }
            Ok(proto::MountType::Volume) => {
                if m.source.starts_with('/') {
                    return Err(invalid(format!(
                        "ContainerSpec: invalid volume mount source, must not be an absolute path: {} (use type=bind for a host directory)",
                        m.source
                    )));
                }
                if !m.source.is_empty() {
                    swarm_common::volume::check_name(&m.source)
                        .map_err(|e| invalid(format!("ContainerSpec: {e}")))?;
                }
                swarm_common::volume::check_driver(
                    &m.volume_driver,
                    m.volume_driver_options.keys(),
                )
                .map_err(|e| invalid(format!("ContainerSpec: mount at {}: {e}", m.target)))?;
            }
            Err(_) => {
                return Err(invalid(format!(
                    "ContainerSpec: unknown mount type {}",
                    m.r#type
                )))
            }
        }
    }
    Ok(())
}

/// SwarmKit's checks: durations zero (the default) or at least 1 ms, retries not negative.
fn validate_healthcheck(h: &proto::HealthConfig) -> Result<(), Status> {
    for (name, ms) in [
        ("Interval", h.interval_ms),
        ("Timeout", h.timeout_ms),
        ("StartPeriod", h.start_period_ms),
        ("StartInterval", h.start_interval_ms),
    ] {
        if ms < 0 {
            return Err(invalid(format!(
                "ContainerSpec: healthcheck {name} cannot be negative"
            )));
        }
    }
    if h.retries < 0 {
        return Err(invalid(
            "ContainerSpec: healthcheck Retries cannot be negative",
        ));
    }
    Ok(())
}

fn validate_endpoint(spec: &ServiceSpec) -> Result<(), Status> {
    let Some(ep) = &spec.endpoint else {
        return Ok(());
    };
    let Ok(mode) = EndpointMode::try_from(ep.mode) else {
        return Err(invalid(format!(
            "EndpointSpec: unknown endpoint mode {}; use vip or dnsrr",
            ep.mode
        )));
    };
    let mut published = BTreeSet::new();
    for p in &ep.ports {
        let Ok(proto_) = PortProtocol::try_from(p.protocol) else {
            return Err(invalid(format!(
                "EndpointSpec: unknown protocol {}; use tcp or udp",
                p.protocol
            )));
        };
        let Ok(pmode) = PublishMode::try_from(p.publish_mode) else {
            return Err(invalid(format!(
                "EndpointSpec: unknown publish mode {}; use ingress or host",
                p.publish_mode
            )));
        };
        if p.target_port == 0 || p.target_port > 65535 {
            return Err(invalid(format!(
                "EndpointSpec: invalid target port {}: must be between 1 and 65535",
                p.target_port
            )));
        }
        if p.published_port > 65535 {
            return Err(invalid(format!(
                "EndpointSpec: invalid published port {}: must be between 0 (dynamic) and 65535",
                p.published_port
            )));
        }
        if proto_ == PortProtocol::Sctp {
            return Err(invalid(format!(
                "EndpointSpec: port {}/sctp: sctp ports cannot be published yet: the data plane carries tcp and udp only; publish the port over tcp or udp",
                p.target_port
            )));
        }
        if pmode == PublishMode::Host && p.published_port == 0 {
            return Err(invalid(format!(
                "EndpointSpec: port {target}/{proto} in host mode has no published port: dynamic host ports are not supported yet; give the port to publish on each node with published=P (mode=host,published=P,target={target})",
                target = p.target_port,
                proto = protocol_name(proto_)
            )));
        }
        if pmode == PublishMode::Host && p.preserve_source_ip {
            return Err(invalid(format!(
                "EndpointSpec: port {}->{}/{}: source-ip=preserve only applies to ingress mode: a host-mode port already reaches the task straight from the client, with the client's address; drop source-ip or publish in ingress mode",
                p.published_port,
                p.target_port,
                protocol_name(proto_)
            )));
        }
        if mode == EndpointMode::Dnsrr && pmode == PublishMode::Ingress {
            return Err(invalid(
                "EndpointSpec: port published with ingress mode can't be used with dnsrr mode; publish in host mode (mode=host) or use --endpoint-mode vip",
            ));
        }
        if p.published_port != 0 && !published.insert((p.published_port, proto_ as i32)) {
            return Err(invalid(format!(
                "EndpointSpec: duplicate published ports provided: {}/{}",
                p.published_port,
                protocol_name(proto_)
            )));
        }
    }
    Ok(())
}

pub(super) fn protocol_name(p: PortProtocol) -> &'static str {
    match p {
        PortProtocol::Tcp => "tcp",
        PortProtocol::Udp => "udp",
        PortProtocol::Sctp => "sctp",
    }
}

pub(super) fn validate_node_spec(spec: &NodeSpec) -> Result<(), Status> {
    if NodeRole::try_from(spec.desired_role).is_err() {
        return Err(invalid(format!(
            "NodeSpec: unknown role {}; use worker or manager",
            spec.desired_role
        )));
    }
    if NodeAvailability::try_from(spec.availability).is_err() {
        return Err(invalid(format!(
            "NodeSpec: unknown availability {}; use active, pause or drain",
            spec.availability
        )));
    }
    if spec.labels.keys().any(|k| k.trim().is_empty()) {
        return Err(invalid("NodeSpec: label keys must not be empty"));
    }
    Ok(())
}

/// Driver every network gets when the spec names none.
pub(super) const DEFAULT_NETWORK_DRIVER: &str = "overlay";
const MTU_OPTION: &str = "com.docker.network.driver.mtu";
/// Docker's option for an IPsec-encrypted overlay (`-o encrypted`).
const ENCRYPTED_OPTION: &str = "encrypted";
/// The driver options the data plane implements; any other is refused rather than ignored.
const SUPPORTED_DRIVER_OPTIONS: &[&str] = &[MTU_OPTION];

/// Driver options (`-o`/`--opt`): only those the data plane implements. `encrypted` (any
/// value, even "false": Docker turns encryption on by the key alone) has its own message.
fn validate_driver_options(spec: &NetworkSpec) -> Result<(), Status> {
    if spec.driver_options.contains_key(ENCRYPTED_OPTION) {
        return Err(invalid(format!(
            "network {}: encrypted overlay networks are not supported yet: traffic between nodes is not encrypted; create the network without -o {ENCRYPTED_OPTION}",
            spec.name
        )));
    }
    if let Some(key) = spec
        .driver_options
        .keys()
        .find(|k| !SUPPORTED_DRIVER_OPTIONS.contains(&k.as_str()))
    {
        return Err(invalid(format!(
            "network {}: driver option {key:?} is not supported; the supported options are: {}",
            spec.name,
            SUPPORTED_DRIVER_OPTIONS.join(", ")
        )));
    }
    Ok(())
}

pub(super) fn validate_network_spec(spec: &NetworkSpec) -> Result<(), Status> {
    validate_name("network", &spec.name)?;
    if spec.driver != DEFAULT_NETWORK_DRIVER {
        return Err(invalid(format!(
            "network driver {:?} is not supported in a swarm; create the network with -d overlay",
            spec.driver
        )));
    }
    validate_driver_options(spec)?;
    if let Some(mtu) = spec.driver_options.get(MTU_OPTION) {
        match mtu.parse::<u32>() {
            Ok(m) if (68..=65535).contains(&m) => {}
            _ => {
                return Err(invalid(format!(
                    "invalid network option {MTU_OPTION}={mtu:?}: the MTU must be a number between 68 and 65535"
                )))
            }
        }
    }
    let mut subnets: Vec<(IpAddr, u8)> = Vec::new();
    for ipam in &spec.ipam {
        let net = parse_cidr(&ipam.subnet).ok_or_else(|| {
            invalid(format!(
                "invalid subnet {:?}: expected an address with a prefix length such as 10.10.0.0/24",
                ipam.subnet
            ))
        })?;
        if subnets.iter().any(|s| overlaps(*s, net)) {
            return Err(invalid(format!(
                "subnet {} overlaps another subnet of this network",
                ipam.subnet
            )));
        }
        subnets.push(net);
        if !ipam.gateway.is_empty() {
            let gw: IpAddr = ipam.gateway.parse().map_err(|_| {
                invalid(format!(
                    "invalid gateway {:?}: expected an IP address",
                    ipam.gateway
                ))
            })?;
            if !contains(net, gw) {
                return Err(invalid(format!(
                    "gateway {} is not in subnet {}",
                    ipam.gateway, ipam.subnet
                )));
            }
        }
    }
    if spec.ingress && spec.attachable {
        return Err(invalid(
            "the ingress network cannot be attachable; drop --attachable",
        ));
    }
    Ok(())
}

fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (addr, len) = s.split_once('/')?;
    let ip: IpAddr = addr.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some((ip, len))
}

fn masked(ip: IpAddr, len: u8) -> u128 {
    match ip {
        IpAddr::V4(a) => {
            let v = u32::from(a);
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            (v & mask) as u128
        }
        IpAddr::V6(a) => {
            let v = u128::from(a);
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            v & mask
        }
    }
}

fn contains((net, len): (IpAddr, u8), ip: IpAddr) -> bool {
    net.is_ipv4() == ip.is_ipv4() && masked(net, len) == masked(ip, len)
}

fn overlaps(a: (IpAddr, u8), b: (IpAddr, u8)) -> bool {
    a.0.is_ipv4() == b.0.is_ipv4() && {
        let len = a.1.min(b.1);
        masked(a.0, len) == masked(b.0, len)
    }
}

/// `swarm init`'s options, checked by the agent before it makes a cluster (so that API
/// callers of the local socket get the same answers as the CLI).
pub fn validate_init_request(r: &InitRequest) -> Result<(), Status> {
    if r.force_new_cluster {
        // The new cluster is the old one with this manager alone in the Raft membership:
        // it keeps the swarm's settings, so settings given with it would be ignored.
        let given = [
            ("--task-history-limit", r.task_history_limit != 0),
            ("--dispatcher-heartbeat", r.dispatcher_heartbeat_ms != 0),
            ("--cert-expiry", r.cert_expiry_ms != 0),
            ("--availability", r.availability != 0),
            ("--default-addr-pool", !r.default_addr_pool.is_empty()),
            (
                "--default-addr-pool-mask-length",
                r.default_addr_pool_mask_length != 0,
            ),
            ("--data-path-port", r.data_path_port != 0),
        ];
        if let Some((flag, _)) = given.iter().find(|(_, set)| *set) {
            return Err(invalid(format!(
                "{flag} cannot be used with --force-new-cluster: the new cluster keeps the settings of the swarm it is made from; run swarm init --force-new-cluster without {flag}"
            )));
        }
    }
    if r.task_history_limit < 0 {
        return Err(invalid("--task-history-limit must be 0 or more"));
    }
    check_cert_expiry("--cert-expiry", r.cert_expiry_ms)?;
    check_heartbeat("--dispatcher-heartbeat", r.dispatcher_heartbeat_ms)?;
    crate::ipam::validate_pools(&r.default_addr_pool, r.default_addr_pool_mask_length)
        .map_err(|e| invalid(format!("--default-addr-pool: {e}")))?;
    if r.data_path_port != 0 && !(1024..=49151).contains(&r.data_path_port) {
        return Err(invalid(
            "--data-path-port must be between 1024 and 49151 (default 4789)",
        ));
    }
    Ok(())
}

pub(super) fn validate_cluster_spec(spec: &ClusterSpec) -> Result<(), Status> {
    if let Some(o) = &spec.orchestration {
        if o.task_history_retention_limit < 0 {
            return Err(invalid(format!(
                "ClusterSpec: task history retention limit cannot be negative (got {})",
                o.task_history_retention_limit
            )));
        }
    }
    if let Some(d) = &spec.dispatcher {
        if d.heartbeat_period_ms < 0 {
            return Err(invalid(format!(
                "ClusterSpec: dispatcher heartbeat period cannot be negative (got {} ms)",
                d.heartbeat_period_ms
            )));
        }
        check_heartbeat(
            "ClusterSpec: dispatcher heartbeat period",
            d.heartbeat_period_ms,
        )?;
    }
    if let Some(c) = &spec.ca_config {
        if c.node_cert_expiry_ms < 0 {
            return Err(invalid(format!(
                "ClusterSpec: certificate expiry cannot be negative (got {} ms)",
                c.node_cert_expiry_ms
            )));
        }
        if c.node_cert_expiry_ms != 0 && c.node_cert_expiry_ms < MIN_CERT_EXPIRY_MS {
            return Err(invalid(
                "ClusterSpec: minimum certificate expiry time is 1h0m0s",
            ));
        }
        check_cert_expiry("ClusterSpec: certificate expiry", c.node_cert_expiry_ms)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_dns_component_rules() {
        for ok in ["web", "a", "my_app.v2-1", "0abc", &"x".repeat(63)] {
            assert!(validate_name("service", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-web",
            "web-",
            "we b",
            "web/1",
            "é",
            &"x".repeat(64),
            "_a",
        ] {
            let e = validate_name("service", bad).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}");
        }
    }

    #[test]
    fn image_references() {
        for ok in [
            "nginx",
            "nginx:1.25-alpine",
            "library/nginx:latest",
            "localhost:5000/app:V1",
            "Registry.example.com/team/app@sha256:abc",
            "busybox@sha256:0123",
        ] {
            assert!(validate_image(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Nginx",
            "ngi nx",
            "nginx:",
            "nginx:-x",
            "team//app",
            "app-",
        ] {
            assert!(validate_image(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn init_options() {
        let ok = InitRequest::default();
        assert!(validate_init_request(&ok).is_ok());
        let force = InitRequest {
            force_new_cluster: true,
            ..Default::default()
        };
        assert!(validate_init_request(&force).is_ok());
        // Settings cannot come with it: the forced cluster keeps the swarm's own.
        for (bad, flag) in [
            (
                InitRequest {
                    task_history_limit: 10,
                    ..force.clone()
                },
                "--task-history-limit",
            ),
            (
                InitRequest {
                    dispatcher_heartbeat_ms: 1000,
                    ..force.clone()
                },
                "--dispatcher-heartbeat",
            ),
            (
                InitRequest {
                    data_path_port: 5000,
                    ..force.clone()
                },
                "--data-path-port",
            ),
        ] {
            let e = validate_init_request(&bad).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(
                e.message()
                    .starts_with(&format!("{flag} cannot be used with --force-new-cluster: ")),
                "{}",
                e.message()
            );
        }
        for (bad, want) in [
            (
                InitRequest {
                    task_history_limit: -1,
                    ..Default::default()
                },
                "--task-history-limit",
            ),
            (
                InitRequest {
                    cert_expiry_ms: 60_000,
                    ..Default::default()
                },
                "--cert-expiry",
            ),
            (
                InitRequest {
                    dispatcher_heartbeat_ms: -1,
                    ..Default::default()
                },
                "--dispatcher-heartbeat",
            ),
            (
                InitRequest {
                    default_addr_pool: vec!["nonsense".into()],
                    ..Default::default()
                },
                "--default-addr-pool",
            ),
            (
                InitRequest {
                    data_path_port: 80,
                    ..Default::default()
                },
                "--data-path-port",
            ),
        ] {
            let e = validate_init_request(&bad).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{want}");
            assert!(e.message().starts_with(want), "{}", e.message());
        }
    }

    #[test]
    fn cidrs() {
        assert!(contains(
            parse_cidr("10.0.1.0/24").unwrap(),
            "10.0.1.1".parse().unwrap()
        ));
        assert!(!contains(
            parse_cidr("10.0.1.0/24").unwrap(),
            "10.0.2.1".parse().unwrap()
        ));
        assert!(overlaps(
            parse_cidr("10.0.0.0/16").unwrap(),
            parse_cidr("10.0.3.0/24").unwrap()
        ));
        assert!(parse_cidr("10.0.0.0/33").is_none());
    }
}

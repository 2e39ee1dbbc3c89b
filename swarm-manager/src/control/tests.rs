//! Control API behaviour over an in-memory store, called as the local socket would.

use proto::control_server::Control;
use proto::service_spec::Mode;
use proto::*;
use tonic::{Code, Request, Status};

use super::ControlApi;
use crate::api::{LocalCaller, WORKER_DENIED};
use crate::router::Router;
use crate::store::{Kind, Object, Op, Store};

pub(super) fn api() -> (ControlApi, Store) {
    let store = Store::memory();
    (ControlApi::new(store.clone(), Router::local()), store)
}

pub(super) fn local<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.extensions_mut().insert(LocalCaller);
    r
}

pub(super) fn spec(name: &str, image: &str) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        task: Some(TaskSpec {
            container: Some(ContainerSpec {
                image: image.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(super) async fn create(api: &ControlApi, s: ServiceSpec) -> Result<Service, Status> {
    api.create_service(local(CreateServiceRequest { spec: Some(s) }))
        .await
        .map(|r| r.into_inner())
}

async fn get(api: &ControlApi, r: &str) -> Result<Service, Status> {
    api.get_service(local(GetServiceRequest {
        service_id: r.into(),
    }))
    .await
    .map(|r| r.into_inner())
}

pub(super) async fn update(
    api: &ControlApi,
    id: &str,
    version: u64,
    s: ServiceSpec,
) -> Result<Service, Status> {
    api.update_service(local(UpdateServiceRequest {
        service_id: id.into(),
        service_version: version,
        spec: Some(s),
        rollback: false,
    }))
    .await
    .map(|r| r.into_inner())
}

async fn services(api: &ControlApi) -> Vec<Service> {
    api.list_services(local(ListServicesRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .services
}

fn version(s: &Service) -> u64 {
    s.meta.as_ref().map_or(0, |m| m.version)
}

fn node(id: &str, hostname: &str, role: NodeRole, state: NodeState) -> Node {
    Node {
        id: id.into(),
        spec: Some(NodeSpec {
            desired_role: role as i32,
            ..Default::default()
        }),
        description: Some(NodeDescription {
            hostname: hostname.into(),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            state: state as i32,
            ..Default::default()
        }),
        role: role as i32,
        ..Default::default()
    }
}

fn task(id: &str, service: &Service, node_id: &str, slot: u64) -> Task {
    Task {
        id: id.into(),
        service_id: service.id.clone(),
        service_name: service.name().into(),
        node_id: node_id.into(),
        slot,
        spec: service.spec.as_ref().and_then(|s| s.task.clone()),
        spec_version: service.spec_version,
        desired_state: TaskState::Running as i32,
        status: Some(TaskStatus {
            state: TaskState::Running as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn put(store: &Store, objs: Vec<Object>) {
    store
        .write(objs.into_iter().map(Op::Create).collect())
        .await
        .unwrap();
}

#[tokio::test]
async fn create_fills_defaults_and_lookups_use_id_name_and_prefix() {
    let (api, _) = api();
    let s = create(&api, spec("web", "nginx:1.25")).await.unwrap();
    assert_eq!(s.spec_version, 1);
    assert!(version(&s) > 0);
    let sp = s.spec.as_ref().unwrap();
    assert_eq!(s.replicas(), Some(1));
    assert!(matches!(
        sp.mode,
        Some(Mode::Replicated(ReplicatedService { replicas: 1 }))
    ));
    let task = sp.task.as_ref().unwrap();
    let restart = task.restart.as_ref().unwrap();
    assert_eq!(restart.condition, RestartCondition::Any as i32);
    assert_eq!(restart.delay_ms, 5_000);
    assert_eq!(
        task.container.as_ref().unwrap().stop_grace_period_ms,
        10_000
    );
    assert_eq!(sp.endpoint.as_ref().unwrap().mode, EndpointMode::Vip as i32);

    assert_eq!(get(&api, &s.id).await.unwrap().id, s.id);
    assert_eq!(get(&api, "web").await.unwrap().id, s.id);
    assert_eq!(get(&api, &s.id[..6]).await.unwrap().id, s.id);
    assert_eq!(services(&api).await.len(), 1);

    let e = get(&api, "nope").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(e.message(), "service nope not found");
    assert_eq!(
        get(&api, "").await.unwrap_err().code(),
        Code::InvalidArgument
    );

    // An empty name gets a generated one.
    let anon = create(&api, spec("", "busybox")).await.unwrap();
    assert!(!anon.name().is_empty());
}

#[tokio::test]
async fn ambiguous_prefix_is_invalid_argument() {
    let (api, store) = api();
    let mut a = Service {
        id: "abc111".into(),
        spec: Some(spec("one", "nginx")),
        spec_version: 1,
        ..Default::default()
    };
    put(&store, vec![Object::Service(a.clone())]).await;
    a.id = "abc222".into();
    a.spec = Some(spec("two", "nginx"));
    put(&store, vec![Object::Service(a)]).await;
    let e = get(&api, "abc").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message()
            .contains("multiple IDs found with provided prefix"),
        "{}",
        e.message()
    );
    assert_eq!(get(&api, "abc2").await.unwrap().name(), "two");
}

#[tokio::test]
async fn invalid_specs_are_refused_and_change_nothing() {
    let (api, _) = api();
    let neg = |f: fn(&mut ServiceSpec)| {
        let mut s = spec("web", "nginx");
        f(&mut s);
        s
    };
    // A named volume mount at /data, and the spec with it as its only mount.
    let volume = || proto::Mount {
        r#type: proto::MountType::Volume as i32,
        source: "data".into(),
        target: "/data".into(),
        ..Default::default()
    };
    let with_volume = |m: proto::Mount| {
        let mut s = spec("web", "nginx");
        s.task.as_mut().unwrap().container.as_mut().unwrap().mounts = vec![m];
        s
    };
    let cases: Vec<(ServiceSpec, &str)> = vec![
        (spec("-web", "nginx"), "DNS name"),
        (spec("web_", "nginx"), "DNS name"),
        (spec(&"a".repeat(64), "nginx"), "DNS name"),
        (spec("web", ""), "image reference must be provided"),
        (spec("web", "Nginx"), "lowercase"),
        (
            neg(|s| {
                s.task.as_mut().unwrap().restart = Some(RestartPolicy {
                    delay_ms: -1,
                    ..Default::default()
                })
            }),
            "restart-delay cannot be negative",
        ),
        (
            neg(|s| {
                s.task.as_mut().unwrap().restart = Some(RestartPolicy {
                    window_ms: -5,
                    ..Default::default()
                })
            }),
            "restart-window cannot be negative",
        ),
        (
            neg(|s| {
                s.task
                    .as_mut()
                    .unwrap()
                    .container
                    .as_mut()
                    .unwrap()
                    .stop_grace_period_ms = -1
            }),
            "stop-grace-period cannot be negative",
        ),
        (
            neg(|s| {
                let c = s.task.as_mut().unwrap().container.as_mut().unwrap();
                let m = proto::Mount {
                    r#type: proto::MountType::Tmpfs as i32,
                    target: "/data".into(),
                    ..Default::default()
                };
                c.mounts = vec![m.clone(), m];
            }),
            "invalid duplicate mount point: /data",
        ),
        (
            neg(|s| {
                let c = s.task.as_mut().unwrap().container.as_mut().unwrap();
                c.mounts = vec![proto::Mount {
                    r#type: proto::MountType::Bind as i32,
                    source: "relative".into(),
                    target: "/data".into(),
                    ..Default::default()
                }];
            }),
            "bind mount source, must be an absolute path",
        ),
        (
            with_volume(proto::Mount {
                source: "/srv/data".into(),
                ..volume()
            }),
            "volume mount source, must not be an absolute path",
        ),
        (
            with_volume(proto::Mount {
                source: "a..b/c".into(),
                ..volume()
            }),
            "invalid characters for a local volume name",
        ),
        (
            with_volume(proto::Mount {
                volume_driver: "rexray".into(),
                ..volume()
            }),
            "volume driver \"rexray\" is not supported",
        ),
        (
            with_volume(proto::Mount {
                volume_driver_options: [("o".to_string(), "size=1m".to_string())].into(),
                ..volume()
            }),
            "volume option \"o\" is not supported",
        ),
        (
            neg(|s| {
                let c = s.task.as_mut().unwrap().container.as_mut().unwrap();
                c.healthcheck = Some(proto::HealthConfig {
                    test: vec!["CMD".into(), "true".into()],
                    retries: -1,
                    ..Default::default()
                });
            }),
            "Retries cannot be negative",
        ),
        (
            neg(|s| {
                s.task.as_mut().unwrap().resources = Some(ResourceRequirements {
                    reservations: Some(Resources {
                        nano_cpus: -1,
                        memory_bytes: 0,
                    }),
                    limits: None,
                })
            }),
            "cannot be negative",
        ),
        (
            neg(|s| {
                s.task.as_mut().unwrap().placement = Some(Placement {
                    constraints: vec!["node.role = manager".into()],
                    ..Default::default()
                })
            }),
            "invalid constraint",
        ),
        (
            neg(|s| {
                s.endpoint = Some(EndpointSpec {
                    mode: EndpointMode::Vip as i32,
                    ports: vec![PortConfig {
                        target_port: 0,
                        published_port: 80,
                        ..Default::default()
                    }],
                })
            }),
            "target port",
        ),
        (
            neg(|s| {
                s.endpoint = Some(EndpointSpec {
                    mode: EndpointMode::Vip as i32,
                    ports: vec![PortConfig {
                        target_port: 80,
                        published_port: 70000,
                        ..Default::default()
                    }],
                })
            }),
            "published port",
        ),
        (
            neg(|s| {
                let p = PortConfig {
                    target_port: 80,
                    published_port: 8080,
                    ..Default::default()
                };
                s.endpoint = Some(EndpointSpec {
                    mode: EndpointMode::Vip as i32,
                    ports: vec![
                        p.clone(),
                        PortConfig {
                            target_port: 81,
                            ..p
                        },
                    ],
                })
            }),
            "duplicate published ports",
        ),
        (
            neg(|s| {
                s.endpoint = Some(EndpointSpec {
                    mode: EndpointMode::Dnsrr as i32,
                    ports: vec![PortConfig {
                        target_port: 80,
                        published_port: 8080,
                        ..Default::default()
                    }],
                })
            }),
            "port published with ingress mode can't be used with dnsrr mode",
        ),
    ];
    for (s, want) in cases {
        let e = create(&api, s).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{want}: {}", e.message());
        assert!(
            e.message().contains(want),
            "want {want:?} in {:?}",
            e.message()
        );
    }
    assert!(services(&api).await.is_empty());

    // Same port twice over UDP and TCP is fine; dnsrr with host-mode ports is fine.
    let mut ok = spec("udp-tcp", "nginx");
    ok.endpoint = Some(EndpointSpec {
        mode: EndpointMode::Dnsrr as i32,
        ports: vec![
            PortConfig {
                target_port: 53,
                published_port: 53,
                publish_mode: PublishMode::Host as i32,
                protocol: PortProtocol::Udp as i32,
                ..Default::default()
            },
            PortConfig {
                target_port: 53,
                published_port: 53,
                publish_mode: PublishMode::Host as i32,
                protocol: PortProtocol::Tcp as i32,
                ..Default::default()
            },
        ],
    });
    create(&api, ok).await.unwrap();
    // Named and anonymous volumes of the local driver are fine.
    let mut vols = with_volume(proto::Mount {
        volume_driver: "local".into(),
        volume_nocopy: true,
        ..volume()
    });
    vols.name = "vols".into();
    let c = vols.task.as_mut().unwrap().container.as_mut().unwrap();
    c.mounts.push(proto::Mount {
        source: String::new(),
        target: "/scratch".into(),
        ..volume()
    });
    create(&api, vols).await.unwrap();

    // Invalid update leaves the service as it was.
    let s = create(&api, spec("web", "nginx")).await.unwrap();
    let mut bad = s.spec.clone().unwrap();
    bad.task
        .as_mut()
        .unwrap()
        .restart
        .as_mut()
        .unwrap()
        .delay_ms = -3;
    let e = update(&api, &s.id, version(&s), bad).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(get(&api, "web").await.unwrap(), s);
}

/// Creates a network through the API (`ingress`: the routing mesh's).
async fn create_net(api: &ControlApi, name: &str, ingress: bool) -> Result<Network, Status> {
    api.create_network(local(CreateNetworkRequest {
        spec: Some(NetworkSpec {
            name: name.into(),
            driver: "overlay".into(),
            ingress,
            ..Default::default()
        }),
    }))
    .await
    .map(|r| r.into_inner())
}

async fn remove_net(api: &ControlApi, r: &str) -> Result<(), Status> {
    api.remove_network(local(RemoveNetworkRequest {
        network_id: r.into(),
    }))
    .await
    .map(|_| ())
}

fn port(published: u32, target: u32, proto: PortProtocol, mode: PublishMode) -> PortConfig {
    PortConfig {
        published_port: published,
        target_port: target,
        protocol: proto as i32,
        publish_mode: mode as i32,
        ..Default::default()
    }
}

fn publishing(name: &str, ports: Vec<PortConfig>) -> ServiceSpec {
    let mut s = spec(name, "nginx");
    s.endpoint = Some(EndpointSpec {
        mode: EndpointMode::Vip as i32,
        ports,
    });
    s
}

#[tokio::test]
async fn duplicate_names_and_port_conflicts() {
    let (api, _) = api();
    create_net(&api, "ingress", true).await.unwrap();
    let mut a = spec("web", "nginx");
    a.endpoint = Some(EndpointSpec {
        mode: EndpointMode::Vip as i32,
        ports: vec![PortConfig {
            target_port: 80,
            published_port: 8080,
            ..Default::default()
        }],
    });
    create(&api, a.clone()).await.unwrap();
    let e = create(&api, spec("web", "redis")).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    assert!(e.message().contains("service with name web already exists"));

    a.name = "web2".into();
    let e = create(&api, a.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message()
            .contains("port '8080' is already in use by service 'web'"),
        "{}",
        e.message()
    );
    // Host mode on the same port also conflicts with an ingress port.
    a.endpoint.as_mut().unwrap().ports[0].publish_mode = PublishMode::Host as i32;
    assert_eq!(
        create(&api, a.clone()).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    // Another port is fine.
    a.endpoint.as_mut().unwrap().ports[0].published_port = 8081;
    create(&api, a).await.unwrap();
    assert_eq!(services(&api).await.len(), 2);
}

#[tokio::test]
async fn ports_the_data_plane_cannot_carry_are_refused() {
    use PortProtocol::{Sctp, Tcp, Udp};
    use PublishMode::{Host, Ingress};
    let (api, store) = api();
    create_net(&api, "ingress", true).await.unwrap();
    let preserve_host = PortConfig {
        preserve_source_ip: true,
        ..port(8080, 80, Tcp, Host)
    };
    let cases: Vec<(Vec<PortConfig>, &str)> = vec![
        (
            vec![port(9000, 9000, Sctp, Ingress)],
            "port 9000/sctp: sctp ports cannot be published yet",
        ),
        (
            vec![port(0, 9000, Sctp, Host)],
            "sctp ports cannot be published yet",
        ),
        (
            vec![port(0, 80, Tcp, Host)],
            "port 80/tcp in host mode has no published port: dynamic host ports are not supported yet; give the port to publish on each node with published=P (mode=host,published=P,target=80)",
        ),
        (
            vec![preserve_host],
            "port 8080->80/tcp: source-ip=preserve only applies to ingress mode",
        ),
        (
            vec![port(4789, 4789, Udp, Ingress)],
            "port 4789/udp is the swarm's VXLAN data-path port",
        ),
        (
            vec![port(4789, 53, Udp, Host)],
            "port 4789/udp is the swarm's VXLAN data-path port",
        ),
    ];
    for (ports, want) in cases {
        let e = create(&api, publishing("web", ports.clone()))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{ports:?}");
        assert!(
            e.message().contains(want),
            "want {want:?} in {:?}",
            e.message()
        );
    }
    assert!(services(&api).await.is_empty());

    // TCP on the VXLAN port is fine; so is 4789/udp once the cluster uses another port,
    // which is then refused.
    create(&api, publishing("tcp", vec![port(4789, 80, Tcp, Ingress)]))
        .await
        .unwrap();
    let mut c = cluster_object();
    c.vxlan_udp_port = 4800;
    put(&store, vec![Object::Cluster(c)]).await;
    let s = create(&api, publishing("udp", vec![port(4789, 53, Udp, Ingress)]))
        .await
        .unwrap();
    let mut moved = s.spec.clone().unwrap();
    moved.endpoint.as_mut().unwrap().ports[0].published_port = 4800;
    let e = update(&api, &s.id, version(&s), moved).await.unwrap_err();
    assert!(
        e.message()
            .contains("port 4800/udp is the swarm's VXLAN data-path port"),
        "{}",
        e.message()
    );

    // A manager's own port is refused over TCP, in either mode; UDP on it is fine.
    let mut m = node("m1", "manager-1", NodeRole::Manager, NodeState::Ready);
    m.manager_status = Some(ManagerStatus {
        addr: "10.0.0.1:2377".into(),
        ..Default::default()
    });
    put(&store, vec![Object::Node(m)]).await;
    for mode in [Ingress, Host] {
        let e = create(&api, publishing("ctl", vec![port(2377, 80, Tcp, mode)]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(
            e.message().contains(
                "port 2377/tcp is a swarm manager's port (node m1 listens on 10.0.0.1:2377)"
            ),
            "{}",
            e.message()
        );
    }
    let s = create(&api, publishing("ctl", vec![port(2378, 80, Tcp, Ingress)]))
        .await
        .unwrap();
    let mut moved = s.spec.clone().unwrap();
    moved.endpoint.as_mut().unwrap().ports[0].published_port = 2377;
    let e = update(&api, &s.id, version(&s), moved).await.unwrap_err();
    assert!(
        e.message().contains("is a swarm manager's port"),
        "{}",
        e.message()
    );
    create(&api, publishing("dns", vec![port(2377, 53, Udp, Ingress)]))
        .await
        .unwrap();

    // Ingress mode keeps the client's address on request.
    let kept = PortConfig {
        preserve_source_ip: true,
        ..port(8080, 80, Tcp, Ingress)
    };
    let s = create(&api, publishing("web", vec![kept.clone()]))
        .await
        .unwrap();
    assert!(s.spec.as_ref().unwrap().endpoint.as_ref().unwrap().ports[0].preserve_source_ip);
}

#[tokio::test]
async fn updates_keep_preserve_source_ip() {
    let (api, _) = api();
    create_net(&api, "ingress", true).await.unwrap();
    let p = PortConfig {
        preserve_source_ip: true,
        ..port(8080, 80, PortProtocol::Tcp, PublishMode::Ingress)
    };
    let s = create(&api, publishing("web", vec![p.clone()]))
        .await
        .unwrap();
    let mut next = s.spec.clone().unwrap();
    next.task
        .as_mut()
        .unwrap()
        .container
        .as_mut()
        .unwrap()
        .image = "nginx:2".into();
    let s2 = update(&api, "web", version(&s), next).await.unwrap();
    assert_eq!(s2.spec_version, s.spec_version + 1);
    assert_eq!(s2.spec.unwrap().endpoint.unwrap().ports, vec![p]);
}

#[tokio::test]
async fn source_ip_preserve_is_refused_while_a_node_runs_the_ipvs_data_plane() {
    let (api, store) = api();
    create_net(&api, "ingress", true).await.unwrap();
    let with_mode = |id: &str, host: &str, mode: &str| {
        let mut n = node(id, host, NodeRole::Worker, NodeState::Ready);
        n.description.as_mut().unwrap().data_plane = Some(DataPlaneInfo {
            mode: mode.into(),
            ..Default::default()
        });
        n
    };
    put(
        &store,
        vec![Object::Node(with_mode("w1", "ebpf-1", "ebpf"))],
    )
    .await;
    let kept = PortConfig {
        preserve_source_ip: true,
        ..port(8080, 80, PortProtocol::Tcp, PublishMode::Ingress)
    };
    // Every node keeps client addresses: accepted.
    let s = create(&api, publishing("web", vec![kept.clone()]))
        .await
        .unwrap();

    put(
        &store,
        vec![Object::Node(with_mode("w2", "ipvs-2", "ipvs"))],
    )
    .await;
    let e = create(
        &api,
        publishing(
            "api",
            vec![PortConfig {
                published_port: 8081,
                ..kept.clone()
            }],
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains(
            "port 8081->80/tcp: source-ip=preserve cannot be kept on node(s) ipvs-2 (w2)"
        ) && e.message().contains("--data-plane ebpf"),
        "{}",
        e.message()
    );
    // An update that keeps the option is refused too; one without it, or a port without
    // it, is accepted.
    let mut next = s.spec.clone().unwrap();
    next.task
        .as_mut()
        .unwrap()
        .container
        .as_mut()
        .unwrap()
        .image = "nginx:2".into();
    let e = update(&api, "web", version(&s), next.clone())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
    next.endpoint.as_mut().unwrap().ports[0].preserve_source_ip = false;
    update(&api, "web", version(&s), next).await.unwrap();
    create(
        &api,
        publishing(
            "plain",
            vec![port(8082, 80, PortProtocol::Tcp, PublishMode::Ingress)],
        ),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn list_services_counts_each_services_tasks_when_asked() {
    let (api, store) = api();
    let web = create(&api, spec("web", "nginx")).await.unwrap();
    let other = create(&api, spec("other", "nginx")).await.unwrap();
    let mut stopping = task("t3", &web, "up", 3);
    stopping.desired_state = TaskState::Shutdown as i32;
    put(
        &store,
        vec![
            Object::Node(node("up", "h1", NodeRole::Worker, NodeState::Ready)),
            Object::Node(node("down", "h2", NodeRole::Worker, NodeState::Down)),
            Object::Task(task("t1", &web, "up", 1)),
            Object::Task(task("t2", &web, "down", 2)),
            Object::Task(stopping),
            Object::Task(task("t4", &other, "up", 1)),
        ],
    )
    .await;
    let r = api
        .list_services(local(ListServicesRequest { status: true }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.statuses.len(), r.services.len());
    let of = |id: &str| {
        let i = r.services.iter().position(|s| s.id == id).unwrap();
        r.statuses[i]
    };
    // Running: desired and observed RUNNING on a node that is up (t1 only).
    let replicas = web.replicas().unwrap();
    assert_eq!(
        of(&web.id),
        ServiceStatus {
            running_tasks: 1,
            desired_tasks: replicas,
            completed_tasks: 0
        }
    );
    assert_eq!(of(&other.id).running_tasks, 1);
    // Without `status`, nothing is counted.
    let r = api
        .list_services(local(ListServicesRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(r.statuses.is_empty());
}

#[tokio::test]
async fn network_driver_options_are_those_the_data_plane_has() {
    let (api, _) = api();
    let mk = |name: &str, opts: &[(&str, &str)]| {
        local(CreateNetworkRequest {
            spec: Some(NetworkSpec {
                name: name.into(),
                driver: "overlay".into(),
                driver_options: opts
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            }),
        })
    };
    for value in ["", "true", "false"] {
        let e = api
            .create_network(mk("secret", &[("encrypted", value)]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert_eq!(
            e.message(),
            "network secret: encrypted overlay networks are not supported yet: traffic between nodes is not encrypted; create the network without -o encrypted"
        );
    }
    let e = api
        .create_network(mk(
            "vx",
            &[
                ("com.docker.network.driver.mtu", "1400"),
                ("com.docker.network.driver.overlay.vxlanid_list", "4097"),
            ],
        ))
        .await
        .unwrap_err();
    assert_eq!(
        e.message(),
        "network vx: driver option \"com.docker.network.driver.overlay.vxlanid_list\" is not supported; the supported options are: com.docker.network.driver.mtu"
    );
    let n = api
        .create_network(mk("small", &[("com.docker.network.driver.mtu", "1400")]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(n.spec.unwrap().driver_options.len(), 1);
    assert_eq!(
        api.list_networks(local(ListNetworksRequest {}))
            .await
            .unwrap()
            .into_inner()
            .networks
            .len(),
        1,
        "refused networks were not created"
    );
}

/// SwarmKit's rules (`manager/controlapi/network.go`, `service.go`): one ingress network;
/// it cannot be removed while a service publishes ports in ingress mode; without one, such
/// services are refused; a new one can then be created and the allocator uses it.
#[tokio::test]
async fn the_ingress_network_can_be_replaced_when_unused() {
    use crate::orchestrator::testutil::apply;
    let (api, store) = api();
    let first = create_net(&api, "ingress", true).await.unwrap();
    let e = create_net(&api, "another-ingress", true).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    assert_eq!(
        e.message(),
        format!(
            "ingress network ingress ({}) is already present: a swarm has one ingress network; remove it first (swarm network rm ingress) to replace it",
            first.id
        )
    );
    let ingress_port = || port(0, 80, PortProtocol::Tcp, PublishMode::Ingress);
    let web = create(&api, publishing("web", vec![ingress_port()]))
        .await
        .unwrap();
    create(&api, publishing("api", vec![ingress_port()]))
        .await
        .unwrap();
    // Host-mode publishers do not depend on it.
    create(
        &api,
        publishing(
            "direct",
            vec![port(9000, 90, PortProtocol::Tcp, PublishMode::Host)],
        ),
    )
    .await
    .unwrap();
    let e = remove_net(&api, "ingress").await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(
        e.message(),
        "ingress network cannot be removed because services api, web depend on it: ingress carries their ports published in ingress mode; remove those services or their ingress ports (service update --publish-rm) first"
    );
    api.remove_service(local(RemoveServiceRequest {
        service_id: "api".into(),
    }))
    .await
    .unwrap();
    let e = remove_net(&api, "ingress").await.unwrap_err();
    assert!(
        e.message()
            .starts_with("ingress network cannot be removed because service web depends on it"),
        "{}",
        e.message()
    );
    let web = get(&api, &web.id).await.unwrap();
    let mut unpublished = web.spec.clone().unwrap();
    unpublished.endpoint.as_mut().unwrap().ports.clear();
    update(&api, "web", version(&web), unpublished)
        .await
        .unwrap();
    remove_net(&api, "ingress").await.unwrap();

    // No ingress network: ingress ports are refused, host-mode ones are not.
    let e = create(&api, publishing("late", vec![ingress_port()]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message()
            .starts_with("service needs ingress network, but no ingress network is present"),
        "{}",
        e.message()
    );
    let web = get(&api, "web").await.unwrap();
    let mut republished = web.spec.clone().unwrap();
    republished.endpoint.as_mut().unwrap().ports = vec![ingress_port()];
    let e = update(&api, "web", version(&web), republished.clone())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);

    // A new ingress network: publishing works again and the allocator puts the service's
    // VIP on it.
    let second = create_net(&api, "new-ingress", true).await.unwrap();
    update(&api, "web", version(&web), republished)
        .await
        .unwrap();
    for now in [1_000, 2_000, 3_000] {
        let (plan, _) = crate::allocator::reconcile(&store.read(), now);
        apply(&store, plan).await;
    }
    let web = get(&api, "web").await.unwrap();
    let endpoint = web.endpoint.expect("allocated");
    assert_eq!(
        endpoint
            .virtual_ips
            .iter()
            .map(|v| v.network_id.as_str())
            .collect::<Vec<_>>(),
        vec![second.id.as_str()]
    );
    assert!(endpoint.ports[0].published_port >= crate::allocator::DYNAMIC_PORT_START);
}

#[tokio::test]
async fn scaling_keeps_spec_version_image_change_bumps_it() {
    let (api, _) = api();
    let s = create(&api, spec("web", "nginx:1")).await.unwrap();
    let mut scaled = s.spec.clone().unwrap();
    scaled.mode = Some(Mode::Replicated(ReplicatedService { replicas: 5 }));
    let s2 = update(&api, "web", version(&s), scaled.clone())
        .await
        .unwrap();
    assert_eq!(s2.replicas(), Some(5));
    assert_eq!(s2.spec_version, 1, "scaling must not restart tasks");
    assert_eq!(s2.previous_spec, s.spec);

    // A stale version is refused.
    let e = update(&api, "web", version(&s), scaled.clone())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    // The CLI makes its change again on a fresh read when it sees this.
    assert!(proto::out_of_sequence::is(&e), "{e:?}");

    let mut new_image = scaled.clone();
    new_image
        .task
        .as_mut()
        .unwrap()
        .container
        .as_mut()
        .unwrap()
        .image = "nginx:2".into();
    let s3 = update(&api, &s.id, 0, new_image).await.unwrap();
    assert_eq!(s3.spec_version, 2);
    assert_eq!(s3.replicas(), Some(5));

    // Mode changes and renames are refused.
    let mut global = s3.spec.clone().unwrap();
    global.mode = Some(Mode::Global(GlobalService {}));
    assert_eq!(
        update(&api, "web", 0, global).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let mut renamed = s3.spec.clone().unwrap();
    renamed.name = "other".into();
    assert_eq!(
        update(&api, "web", 0, renamed).await.unwrap_err().code(),
        Code::Unimplemented
    );
    assert_eq!(
        update(&api, "missing", 0, s3.spec.clone().unwrap())
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    // An identical spec changes nothing.
    let same = update(&api, "web", 0, s3.spec.clone().unwrap())
        .await
        .unwrap();
    assert_eq!(version(&same), version(&s3));
}

#[tokio::test]
async fn remove_service_marks_its_tasks_for_shutdown() {
    let (api, store) = api();
    let s = create(&api, spec("web", "nginx")).await.unwrap();
    let other = create(&api, spec("db", "redis")).await.unwrap();
    put(
        &store,
        vec![
            Object::Task(task("t1", &s, "n1", 1)),
            Object::Task(task("t2", &s, "n1", 2)),
            Object::Task(task("t3", &other, "n1", 1)),
        ],
    )
    .await;
    api.remove_service(local(RemoveServiceRequest {
        service_id: "web".into(),
    }))
    .await
    .unwrap();
    {
        let st = store.read();
        assert!(st.service(&s.id).is_none());
        assert_eq!(st.task("t1").unwrap().desired(), TaskState::Shutdown);
        assert_eq!(st.task("t2").unwrap().desired(), TaskState::Shutdown);
        assert_eq!(st.task("t3").unwrap().desired(), TaskState::Running);
    }
    let e = api
        .remove_service(local(RemoveServiceRequest {
            service_id: "web".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}

#[tokio::test]
async fn list_tasks_filters() {
    let (api, store) = api();
    let web = create(&api, spec("web", "nginx")).await.unwrap();
    let db = create(&api, spec("db", "redis")).await.unwrap();
    put(
        &store,
        vec![
            Object::Node(node("node1aaa", "h1", NodeRole::Manager, NodeState::Ready)),
            Object::Node(node("node2bbb", "h2", NodeRole::Worker, NodeState::Ready)),
            Object::Task(task("t1", &web, "node1aaa", 1)),
            Object::Task(task("t2", &web, "node2bbb", 2)),
            Object::Task(task("t3", &db, "node2bbb", 1)),
        ],
    )
    .await;
    let list = |services: Vec<&str>, nodes: Vec<&str>, desired: Vec<TaskState>| {
        let api = api.clone();
        let req = ListTasksRequest {
            service_ids: services.into_iter().map(String::from).collect(),
            node_ids: nodes.into_iter().map(String::from).collect(),
            desired_states: desired.into_iter().map(|d| d as i32).collect(),
        };
        async move {
            api.list_tasks(local(req)).await.map(|r| {
                r.into_inner()
                    .tasks
                    .into_iter()
                    .map(|t| t.id)
                    .collect::<Vec<_>>()
            })
        }
    };
    assert_eq!(list(vec![], vec![], vec![]).await.unwrap().len(), 3);
    assert_eq!(
        list(vec!["web"], vec![], vec![]).await.unwrap(),
        vec!["t1", "t2"]
    );
    assert_eq!(
        list(vec![&db.id[..5]], vec![], vec![]).await.unwrap(),
        vec!["t3"]
    );
    assert_eq!(
        list(vec![], vec!["h2"], vec![]).await.unwrap(),
        vec!["t3", "t2"]
    );
    assert_eq!(
        list(vec!["web"], vec!["node2"], vec![]).await.unwrap(),
        vec!["t2"]
    );
    assert!(list(vec![], vec![], vec![TaskState::Shutdown])
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        list(vec!["nope"], vec![], vec![]).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        list(vec![], vec!["node"], vec![]).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let t = api
        .get_task(local(GetTaskRequest {
            task_id: "web.1.t1".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.id, "t1");
    let e = api
        .get_task(local(GetTaskRequest {
            task_id: "zz".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::NotFound, "task zz not found")
    );
}

#[tokio::test]
async fn demoting_the_last_manager_is_refused() {
    let (api, store) = api();
    put(
        &store,
        vec![
            Object::Node(node("m1", "mgr1", NodeRole::Manager, NodeState::Ready)),
            Object::Node(node("w1", "wrk1", NodeRole::Worker, NodeState::Ready)),
        ],
    )
    .await;
    let demote = |id: &str, version: u64| UpdateNodeRequest {
        node_id: id.into(),
        node_version: version,
        spec: Some(NodeSpec {
            desired_role: NodeRole::Worker as i32,
            ..Default::default()
        }),
    };
    let e = api.update_node(local(demote("mgr1", 0))).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e
        .message()
        .contains("attempting to demote the last manager of the swarm"));

    // Promote the worker (desired role), then label and drain it.
    let w = api
        .update_node(local(UpdateNodeRequest {
            node_id: "wrk1".into(),
            node_version: 0,
            spec: Some(NodeSpec {
                desired_role: NodeRole::Manager as i32,
                availability: NodeAvailability::Drain as i32,
                labels: [("zone".to_string(), "a".to_string())].into(),
            }),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(w.desired_role(), NodeRole::Manager);
    assert_eq!(w.availability(), NodeAvailability::Drain);
    // Its certificate still says worker: m1 stays the only manager.
    assert_eq!(
        api.update_node(local(demote("m1", 0)))
            .await
            .unwrap_err()
            .code(),
        Code::FailedPrecondition
    );
    // Once w1 is a manager, m1 can go.
    let mut w1 = store.read().node("w1").cloned().unwrap();
    w1.role = NodeRole::Manager as i32;
    store
        .write(vec![Op::Update {
            object: Object::Node(w1),
            check_version: false,
        }])
        .await
        .unwrap();
    let stale = demote("m1", 12345);
    assert_eq!(
        api.update_node(local(stale)).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    let m1 = api
        .update_node(local(demote("m1", 0)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m1.desired_role(), NodeRole::Worker);

    let bad = UpdateNodeRequest {
        node_id: "w1".into(),
        node_version: 0,
        spec: Some(NodeSpec {
            availability: 9,
            ..Default::default()
        }),
    };
    assert_eq!(
        api.update_node(local(bad)).await.unwrap_err().code(),
        Code::InvalidArgument
    );
}

#[tokio::test]
async fn remove_node_rules() {
    let (api, store) = api();
    let s = create(&api, spec("web", "nginx")).await.unwrap();
    put(
        &store,
        vec![
            Object::Node(node("m1", "mgr", NodeRole::Manager, NodeState::Down)),
            Object::Node(node("w1", "up", NodeRole::Worker, NodeState::Ready)),
            Object::Node(node("w2", "down", NodeRole::Worker, NodeState::Down)),
            Object::Task(task("t1", &s, "w1", 1)),
            Object::Task(task("t2", &s, "w2", 2)),
        ],
    )
    .await;
    let rm = |id: &str, force: bool| {
        local(RemoveNodeRequest {
            node_id: id.into(),
            force,
        })
    };
    let e = api.remove_node(rm("mgr", true)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e
        .message()
        .contains("is a cluster manager and is a member of the raft cluster"));

    let e = api.remove_node(rm("up", false)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e
        .message()
        .contains("node w1 is not down and can't be removed"));
    assert!(store.read().node("w1").is_some());

    api.remove_node(rm("down", false)).await.unwrap();
    api.remove_node(rm("up", true)).await.unwrap();
    {
        let st = store.read();
        assert!(st.node("w1").is_none() && st.node("w2").is_none());
        assert_eq!(st.task("t1").unwrap().desired(), TaskState::Shutdown);
        assert_eq!(st.task("t2").unwrap().desired(), TaskState::Shutdown);
    }
    assert_eq!(
        api.remove_node(rm("w2", true)).await.unwrap_err().code(),
        Code::NotFound
    );
}

#[tokio::test]
async fn networks() {
    let (api, _) = api();
    let mk = |name: &str, driver: &str| {
        local(CreateNetworkRequest {
            spec: Some(NetworkSpec {
                name: name.into(),
                driver: driver.into(),
                ..Default::default()
            }),
        })
    };
    let n = api
        .create_network(mk("backend", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(n.spec.as_ref().unwrap().driver, "overlay");
    let e = api
        .create_network(mk("backend", "overlay"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    assert!(e
        .message()
        .contains("network with name backend already exists"));
    assert_eq!(
        api.create_network(mk("bad name", "overlay"))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    assert_eq!(
        api.create_network(mk("br", "bridge"))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );

    // A service attached by name stores the network id; the network is then in use.
    let mut s = spec("web", "nginx");
    s.task.as_mut().unwrap().networks = vec![NetworkAttachmentConfig {
        target: "backend".into(),
        aliases: vec![],
    }];
    let svc = create(&api, s).await.unwrap();
    assert_eq!(
        svc.spec.as_ref().unwrap().task.as_ref().unwrap().networks[0].target,
        n.id
    );
    let mut unknown = spec("web2", "nginx");
    unknown.task.as_mut().unwrap().networks = vec![NetworkAttachmentConfig {
        target: "nonet".into(),
        aliases: vec![],
    }];
    assert_eq!(
        create(&api, unknown).await.unwrap_err().code(),
        Code::NotFound
    );

    let rm = |r: &str| {
        local(RemoveNetworkRequest {
            network_id: r.into(),
        })
    };
    let e = api.remove_network(rm("backend")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message()
            .contains("network backend is in use by service web"),
        "{}",
        e.message()
    );

    api.remove_service(local(RemoveServiceRequest {
        service_id: "web".into(),
    }))
    .await
    .unwrap();
    let got = api
        .get_network(local(GetNetworkRequest {
            network_id: n.id[..4].into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.id, n.id);
    api.remove_network(rm(&n.id)).await.unwrap();
    assert!(api
        .list_networks(local(ListNetworksRequest {}))
        .await
        .unwrap()
        .into_inner()
        .networks
        .is_empty());
    let e = api.remove_network(rm("backend")).await.unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::NotFound, "network backend not found")
    );
}

fn cluster_object() -> Cluster {
    Cluster {
        id: "c1".into(),
        spec: Some(ClusterSpec {
            name: "default".into(),
            ..Default::default()
        }),
        root_ca: Some(RootCa {
            ca_key: "-----BEGIN PRIVATE KEY-----secret".into(),
            ca_cert: String::new(),
            ca_cert_hash: "abc".into(),
            join_tokens: Some(JoinTokens {
                worker: "SWMTKN-1-w".into(),
                manager: "SWMTKN-1-m".into(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn cluster_key_never_leaves_and_spec_is_validated() {
    let (api, store) = api();
    assert_eq!(
        api.get_cluster(local(GetClusterRequest {}))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    put(&store, vec![Object::Cluster(cluster_object())]).await;
    let c = api
        .get_cluster(local(GetClusterRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert!(c.root_ca.as_ref().unwrap().ca_key.is_empty());
    assert_eq!(c.root_ca.as_ref().unwrap().ca_cert_hash, "abc");

    let mut spec = c.spec.clone().unwrap();
    spec.orchestration = Some(OrchestrationConfig {
        task_history_retention_limit: -1,
    });
    let bad = UpdateClusterRequest {
        cluster_version: version_of(&c),
        spec: Some(spec.clone()),
        ..Default::default()
    };
    assert_eq!(
        api.update_cluster(local(bad)).await.unwrap_err().code(),
        Code::InvalidArgument
    );

    spec.orchestration = Some(OrchestrationConfig {
        task_history_retention_limit: 10,
    });
    let updated = api
        .update_cluster(local(UpdateClusterRequest {
            cluster_version: version_of(&c),
            spec: Some(spec.clone()),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(updated.root_ca.as_ref().unwrap().ca_key.is_empty());
    // The stored cluster keeps its key.
    let stored = store.read().cluster().cloned().unwrap();
    assert!(!stored.root_ca.as_ref().unwrap().ca_key.is_empty());
    assert_eq!(
        stored
            .spec
            .unwrap()
            .orchestration
            .unwrap()
            .task_history_retention_limit,
        10
    );
    // Stale version.
    let stale = UpdateClusterRequest {
        cluster_version: version_of(&c),
        spec: Some(spec),
        ..Default::default()
    };
    assert_eq!(
        api.update_cluster(local(stale)).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
}

/// Issue 14's validation gaps: each gets a clear error and changes nothing.
#[tokio::test]
async fn huge_expiry_tiny_heartbeat_and_huge_replicas_are_refused() {
    let (api, store) = api();
    put(&store, vec![Object::Cluster(cluster_object())]).await;
    let before = store.read().cluster().cloned().unwrap();
    let cases = [
        (
            DispatcherConfig {
                heartbeat_period_ms: 1,
            },
            CaConfig {
                node_cert_expiry_ms: 0,
                ..Default::default()
            },
            "at least 1s",
        ),
        (
            DispatcherConfig {
                heartbeat_period_ms: 0,
            },
            CaConfig {
                // --cert-expiry 1000000000h
                node_cert_expiry_ms: 3_600_000 * 1_000_000_000,
                ..Default::default()
            },
            "at most 87600h",
        ),
    ];
    for (dispatcher, ca, says) in cases {
        let e = api
            .update_cluster(local(UpdateClusterRequest {
                spec: Some(ClusterSpec {
                    name: "default".into(),
                    dispatcher: Some(dispatcher),
                    ca_config: Some(ca),
                    ..Default::default()
                }),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains(says), "{e:?}");
    }
    assert_eq!(store.read().cluster(), Some(&before), "the cluster changed");

    let mut huge = spec("huge", "nginx");
    huge.mode = Some(Mode::Replicated(ReplicatedService {
        replicas: 100_000_000,
    }));
    let e = create(&api, huge.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("maximum of 100000"), "{e:?}");
    assert!(services(&api).await.is_empty());
    // Scaling an existing service up that far is refused too.
    let small = create(&api, spec("huge", "nginx")).await.unwrap();
    let e = update(&api, &small.id, version(&small), huge)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(get(&api, "huge").await.unwrap(), small);
}

fn version_of(c: &Cluster) -> u64 {
    c.meta.as_ref().map_or(0, |m| m.version)
}

#[tokio::test]
async fn callers_need_the_local_socket_or_a_certificate() {
    let (api, _) = api();
    let e = api
        .list_services(Request::new(ListServicesRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let e = api
        .create_service(Request::new(CreateServiceRequest {
            spec: Some(spec("web", "nginx")),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(services(&api).await.is_empty());
    assert!(WORKER_DENIED.starts_with("This node is not a swarm manager."));
}

#[tokio::test]
async fn calls_are_counted() {
    let (api, _) = api();
    let _ = get(&api, "missing-for-metrics").await;
    let text = swarm_common::metrics::encode();
    assert!(
        text.contains("method=\"GetService\"") && text.contains("code=\"NotFound\""),
        "{text}"
    );
}

#[tokio::test]
async fn rotating_a_token_changes_only_that_token() {
    let (api, store) = api();
    let mut c = cluster_object();
    c.root_ca = Some(crate::ca::new_cluster_root_ca().unwrap());
    let before = c
        .root_ca
        .as_ref()
        .unwrap()
        .join_tokens
        .clone()
        .unwrap_or_default();
    put(&store, vec![Object::Cluster(c)]).await;
    let rotate = |worker: bool, manager: bool| {
        local(UpdateClusterRequest {
            cluster_version: 0,
            spec: None,
            rotate_worker_token: worker,
            rotate_manager_token: manager,
            rotate_manager_unlock_key: false,
        })
    };
    let after = api
        .update_cluster(rotate(true, false))
        .await
        .unwrap()
        .into_inner();
    let root = after.root_ca.clone().unwrap();
    assert!(root.ca_key.is_empty());
    let tokens = root.join_tokens.unwrap();
    assert_ne!(tokens.worker, before.worker);
    assert!(tokens.worker.starts_with("SWMTKN-1-"));
    let parsed = crate::ca::parse_join_token(&tokens.worker).unwrap();
    assert!(crate::ca::token_matches_ca(&parsed, &root.ca_cert));
    assert_eq!(tokens.manager, before.manager);
    assert_eq!(
        after.spec.as_ref().unwrap().name,
        "default",
        "spec kept when none is sent"
    );

    let after2 = api
        .update_cluster(rotate(false, true))
        .await
        .unwrap()
        .into_inner();
    let t2 = after2.root_ca.unwrap().join_tokens.unwrap();
    assert_eq!(t2.worker, tokens.worker);
    assert_ne!(t2.manager, before.manager);
}

/// Over real mTLS: a worker certificate gets Docker's refusal, a manager certificate is
/// served, no certificate is unauthenticated.
#[tokio::test]
async fn certificates_decide_over_tls() {
    use crate::ca::{new_key_and_csr, RootCa};
    use crate::tls;
    use std::time::Duration;

    let root = RootCa::generate().unwrap();
    let issue = |id: &str, role: NodeRole| {
        let (key, csr) = new_key_and_csr().unwrap();
        let cert = root
            .sign_node_cert(&csr, id, role, "cluster1", Duration::from_secs(3600))
            .unwrap();
        (cert, key)
    };
    let (server_cert, server_key) = issue("server1", NodeRole::Manager);
    let cfg = tls::server_config(
        &root.cert_pem,
        tls::ReloadableCert::new(&server_cert, &server_key).unwrap(),
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (api, store) = api();
    // The store decides too: worker1 a worker, manager2 a manager, manager3 demoted since
    // its manager certificate was issued, removed4 removed (its certificate still valid).
    put(
        &store,
        vec![
            Object::Cluster(cluster_object()),
            Object::Node(node("worker1", "w1", NodeRole::Worker, NodeState::Ready)),
            Object::Node(node("manager2", "m2", NodeRole::Manager, NodeState::Ready)),
            Object::Node(node("manager3", "m3", NodeRole::Worker, NodeState::Ready)),
            Object::Node(node("removed4", "r4", NodeRole::Manager, NodeState::Ready)),
        ],
    )
    .await;
    store
        .write(vec![Op::Delete {
            kind: Kind::Node,
            id: "removed4".into(),
        }])
        .await
        .unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(proto::control_server::ControlServer::new(api))
            .serve_with_incoming(tls::incoming(listener, cfg)),
    );

    let client = |identity: Option<(String, String)>| {
        let cfg = tls::client_config(
            &root.cert_pem,
            identity.as_ref().map(|(c, k)| (c.as_str(), k.as_str())),
        )
        .unwrap();
        proto::control_client::ControlClient::new(tls::channel(&addr, cfg))
    };
    let (wc, wk) = issue("worker1", NodeRole::Worker);
    let e = client(Some((wc, wk)))
        .list_services(ListServicesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert_eq!(e.message(), WORKER_DENIED);

    let (mc, mk) = issue("manager2", NodeRole::Manager);
    let mut manager = client(Some((mc.clone(), mk.clone())));
    let created = manager
        .create_service(CreateServiceRequest {
            spec: Some(spec("web", "nginx")),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.name(), "web");

    // A current manager may forward a call for another node: the store decides about it.
    let forwarded_for = |who: &str, role: NodeRole| {
        let mut req = Request::new(ListServicesRequest::default());
        let (c, _) = issue(who, role);
        let id = crate::ca::parse_node_cert_pem(&c).unwrap();
        tls::with_forwarded_identity(&mut req, &id);
        req
    };
    manager
        .list_services(forwarded_for("manager2", NodeRole::Manager))
        .await
        .expect("a manager forwarding for a manager");
    let e = manager
        .list_services(forwarded_for("removed4", NodeRole::Manager))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("removed4 was removed"), "{e:?}");

    // A demoted manager and a removed node, each with its old manager certificate: refused,
    // also when the demoted one forges a forwarded identity of a current manager.
    let (dc, dk) = issue("manager3", NodeRole::Manager);
    let mut demoted = client(Some((dc, dk)));
    let e = demoted
        .list_services(ListServicesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert_eq!(e.message(), WORKER_DENIED);
    let e = demoted
        .list_services(forwarded_for("manager2", NodeRole::Manager))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("on behalf of"), "{e:?}");
    let (rc, rk) = issue("removed4", NodeRole::Manager);
    let e = client(Some((rc, rk)))
        .list_services(ListServicesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("was removed from the swarm"), "{e:?}");
    let (sc, sk) = issue("stranger5", NodeRole::Manager);
    let e = client(Some((sc, sk)))
        .list_services(ListServicesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);

    let e = client(None)
        .list_services(ListServicesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
}

// ---------------------------------------------------------------- update policy, rollback

async fn rollback(api: &ControlApi, id: &str) -> Result<Service, Status> {
    api.update_service(local(UpdateServiceRequest {
        service_id: id.into(),
        service_version: 0,
        spec: None,
        rollback: true,
    }))
    .await
    .map(|r| r.into_inner())
}

/// The service's spec with another image.
fn with_image(s: &Service, image: &str) -> ServiceSpec {
    let mut spec = s.spec.clone().unwrap();
    spec.task
        .as_mut()
        .unwrap()
        .container
        .as_mut()
        .unwrap()
        .image = image.into();
    spec
}

#[tokio::test]
async fn update_policies_get_docker_defaults_and_bad_ones_are_refused() {
    let (api, store) = api();
    let s = create(&api, spec("web", "nginx")).await.unwrap();
    let d = UpdateConfig::docker_default();
    assert_eq!(d.parallelism, 1);
    assert_eq!(d.monitor_ms, 5_000);
    assert_eq!(s.spec.as_ref().unwrap().update, Some(d));
    assert_eq!(s.spec.as_ref().unwrap().rollback, Some(d));

    let with = |update: Option<UpdateConfig>, rollback: Option<UpdateConfig>| {
        let mut s = spec("bad", "nginx");
        s.update = update;
        s.rollback = rollback;
        s
    };
    let cfg = |f: fn(&mut UpdateConfig)| {
        let mut c = UpdateConfig::docker_default();
        f(&mut c);
        Some(c)
    };
    let cases = vec![
        (
            with(cfg(|c| c.delay_ms = -1), None),
            "TaskSpec: update-delay cannot be negative",
        ),
        (
            with(cfg(|c| c.monitor_ms = -1), None),
            "TaskSpec: update-monitor cannot be negative",
        ),
        (
            with(cfg(|c| c.max_failure_ratio = 1.5), None),
            "TaskSpec: update-maxfailureratio cannot be less than 0 or bigger than 1",
        ),
        (
            with(None, cfg(|c| c.max_failure_ratio = -0.1)),
            "TaskSpec: rollback-maxfailureratio cannot be less than 0 or bigger than 1",
        ),
        (
            with(
                None,
                cfg(|c| c.failure_action = UpdateFailureAction::Rollback as i32),
            ),
            "unrecognized rollback failure action rollback",
        ),
        (
            with(cfg(|c| c.failure_action = 9), None),
            "unrecognized update failure action 9",
        ),
        (
            with(cfg(|c| c.order = 9), None),
            "unrecognized update order 9",
        ),
    ];
    for (bad, want) in cases {
        let e = create(&api, bad.clone()).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{want}");
        assert!(e.message().contains(want), "{} / {want}", e.message());
        // The same policy on an update of an existing service changes nothing.
        let before = get(&api, "web").await.unwrap();
        let mut upd = before.spec.clone().unwrap();
        upd.update = bad.update;
        upd.rollback = bad.rollback;
        let e = update(&api, &before.id, version(&before), upd)
            .await
            .unwrap_err();
        assert!(e.message().contains(want), "{} / {want}", e.message());
        assert_eq!(get(&api, "web").await.unwrap(), before);
    }
    assert_eq!(store.read().services().count(), 1);
}

#[tokio::test]
async fn an_update_starts_an_update_status_and_a_rollback_restores_the_previous_spec() {
    let (api, _) = api();
    let s = create(&api, spec("web", "nginx:1")).await.unwrap();
    assert!(s.update_status.is_none());

    // Nothing to roll back to yet: Docker's error, nothing changes.
    let e = rollback(&api, "web").await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(
        e.message(),
        format!("service {} does not have a previous spec", s.id)
    );
    assert_eq!(get(&api, "web").await.unwrap(), s);

    let next = with_image(&s, "nginx:2");
    let u = update(&api, &s.id, version(&s), next).await.unwrap();
    assert_eq!(u.spec_version, 2);
    assert_eq!(u.previous_spec_version, 1);
    let st = u.update_status.clone().unwrap();
    assert_eq!(st.state(), UpdateState::Updating);
    assert_eq!(st.message, "update in progress");
    assert!(st.started_at > 0);

    let r = rollback(&api, "web").await.unwrap();
    assert_eq!(r.image(), "nginx:1");
    assert_eq!(r.spec_version, 1, "tasks of the restored spec are kept");
    assert!(r.previous_spec.is_none());
    let st = r.update_status.clone().unwrap();
    assert_eq!(st.state(), UpdateState::RollbackStarted);
    assert_eq!(st.message, "manually requested rollback");
    // SwarmKit keeps no spec to roll back to after a rollback.
    let e = rollback(&api, "web").await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);

    // The next update gets a version no task has had.
    let again = with_image(&r, "nginx:3");
    let a = update(&api, &r.id, version(&r), again).await.unwrap();
    assert_eq!(a.spec_version, 3);
}

#[tokio::test]
async fn a_paused_update_resumes_with_the_next_update() {
    let (api, store) = api();
    let s = create(&api, spec("web", "nginx:1")).await.unwrap();
    let next = with_image(&s, "nginx:2");
    let u = update(&api, &s.id, version(&s), next.clone())
        .await
        .unwrap();
    // The update orchestrator paused it.
    let mut paused = u.clone();
    paused.update_status = Some(UpdateStatus {
        state: UpdateState::Paused as i32,
        started_at: 5,
        completed_at: 0,
        message: "update paused due to failure or early termination of task x".into(),
    });
    store
        .write(vec![Op::Update {
            object: Object::Service(paused),
            check_version: true,
        }])
        .await
        .unwrap();
    let p = get(&api, "web").await.unwrap();
    // `service update web` with no change.
    let r = update(&api, &p.id, version(&p), next).await.unwrap();
    let st = r.update_status.unwrap();
    assert_eq!(st.state(), UpdateState::Updating);
    assert_eq!(st.message, "update in progress");
    assert!(st.started_at > 5);
    assert_eq!(
        r.spec_version, u.spec_version,
        "the same spec: tasks already updated stay"
    );
}

// ---------------------------------------------------------------- jobs

fn job_spec(name: &str, mode: Mode) -> ServiceSpec {
    ServiceSpec {
        mode: Some(mode),
        ..spec(name, "busybox")
    }
}

#[tokio::test]
async fn jobs_get_docker_defaults_and_a_first_iteration() {
    let (api, _) = api();
    let s = create(
        &api,
        job_spec(
            "batch",
            Mode::ReplicatedJob(ReplicatedJob {
                max_concurrent: 0,
                total_completions: 0,
            }),
        ),
    )
    .await
    .unwrap();
    let sp = s.spec.as_ref().unwrap();
    assert_eq!(
        sp.mode,
        Some(Mode::ReplicatedJob(ReplicatedJob {
            max_concurrent: 1,
            total_completions: 1
        })),
        "Docker's API: one at a time, completions = max concurrent"
    );
    assert_eq!(sp.update, None, "a job has no update policy");
    assert_eq!(sp.rollback, None);
    let restart = sp.task.as_ref().unwrap().restart.unwrap();
    assert_eq!(restart.condition, RestartCondition::OnFailure as i32);
    let js = s.job_status.unwrap();
    assert_eq!(js.job_iteration, 0);
    assert!(js.last_execution > 0);

    let g = create(&api, job_spec("everywhere", Mode::GlobalJob(GlobalJob {})))
        .await
        .unwrap();
    assert!(g.is_job());
    assert_eq!(g.job_iteration(), 0);
    let svc = create(&api, spec("web", "nginx")).await.unwrap();
    assert_eq!(svc.job_status, None, "services have no job status");
}

#[tokio::test]
async fn updating_a_job_runs_it_again() {
    let (api, _) = api();
    let mode = Mode::ReplicatedJob(ReplicatedJob {
        max_concurrent: 2,
        total_completions: 5,
    });
    let s = create(&api, job_spec("batch", mode)).await.unwrap();
    // `service update --force`.
    let mut forced = s.spec.clone().unwrap();
    forced.task.as_mut().unwrap().force_update += 1;
    let s2 = update(&api, &s.id, version(&s), forced).await.unwrap();
    let it2 = s2.job_iteration();
    assert_eq!(it2, version(&s), "numbered by the version it started from");
    assert!(s2.job_status.as_ref().unwrap().last_execution > 0);
    assert_eq!(s2.update_status, None, "no rolling update for a job");
    // `service scale batch=8`: more completions, run again.
    let mut scaled = s2.spec.clone().unwrap();
    scaled.mode = Some(Mode::ReplicatedJob(ReplicatedJob {
        max_concurrent: 2,
        total_completions: 8,
    }));
    let s3 = update(&api, &s.id, version(&s2), scaled).await.unwrap();
    assert!(s3.job_iteration() > it2);
    // No change: the same iteration.
    let s4 = update(&api, &s.id, version(&s3), s3.spec.clone().unwrap())
        .await
        .unwrap();
    assert_eq!(s4.job_iteration(), s3.job_iteration());
}

#[tokio::test]
async fn bad_job_input_is_refused_and_changes_nothing() {
    let (api, _) = api();
    // Update or rollback policy on a job.
    let mut bad = job_spec("batch", Mode::GlobalJob(GlobalJob {}));
    bad.update = Some(UpdateConfig::docker_default());
    let e = create(&api, bad).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().starts_with(
            "update and rollback configs cannot be used with jobs: service batch is a global job"
        ),
        "{}",
        e.message()
    );
    let mut bad = job_spec(
        "batch",
        Mode::ReplicatedJob(ReplicatedJob {
            max_concurrent: 1,
            total_completions: 1,
        }),
    );
    bad.rollback = Some(UpdateConfig::docker_default());
    assert_eq!(
        create(&api, bad).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    assert!(services(&api).await.is_empty());

    // Mode changes, both ways.
    let job = create(&api, job_spec("batch", Mode::GlobalJob(GlobalJob {})))
        .await
        .unwrap();
    let svc = create(&api, spec("web", "nginx")).await.unwrap();
    let before = services(&api).await;
    let mut to_service = job.spec.clone().unwrap();
    to_service.mode = Some(Mode::Global(GlobalService {}));
    let e = update(&api, &job.id, 0, to_service).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().starts_with(
            "service mode change is not allowed: service batch is global-job, not global"
        ),
        "{}",
        e.message()
    );
    let mut to_job = svc.spec.clone().unwrap();
    to_job.mode = Some(Mode::ReplicatedJob(ReplicatedJob {
        max_concurrent: 1,
        total_completions: 1,
    }));
    to_job.update = None;
    to_job.rollback = None;
    let e = update(&api, &svc.id, 0, to_job).await.unwrap_err();
    assert!(e
        .message()
        .starts_with("service mode change is not allowed"));
    // An update policy added to a job by update.
    let mut with_policy = job.spec.clone().unwrap();
    with_policy.update = Some(UpdateConfig::docker_default());
    assert_eq!(
        update(&api, &job.id, 0, with_policy)
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    // Rollback of a job.
    let e = rollback(&api, &job.id).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("is a job"), "{}", e.message());
    assert_eq!(services(&api).await, before, "nothing written");
    assert_eq!(get(&api, "batch").await.unwrap(), job);
}

fn auth_of(spec: Option<&ServiceSpec>) -> Option<String> {
    spec.and_then(|s| s.task.as_ref())
        .and_then(|t| t.container.as_ref())
        .and_then(|c| c.pull_options.as_ref())
        .map(|p| p.registry_auth.clone())
}

fn task_login(t: &Task) -> Option<&PullOptions> {
    t.spec
        .as_ref()
        .and_then(|s| s.container.as_ref())
        .and_then(|c| c.pull_options.as_ref())
}

fn with_auth(mut s: ServiceSpec, auth: &str) -> ServiceSpec {
    if let Some(c) = s.task.as_mut().and_then(|t| t.container.as_mut()) {
        c.pull_options = Some(PullOptions {
            registry_auth: auth.into(),
        });
    }
    s
}

#[tokio::test]
async fn registry_logins_are_kept_with_the_service_and_never_returned() {
    let (api, store) = api();
    let created = create(&api, with_auth(spec("web", "reg.example/app:1"), "LOGIN-1"))
        .await
        .unwrap();
    let stored = |store: &Store, id: &str| store.read().service(id).cloned().unwrap();
    assert_eq!(auth_of(created.spec.as_ref()), None, "CreateService answer");
    assert_eq!(
        auth_of(stored(&store, &created.id).spec.as_ref()).as_deref(),
        Some("LOGIN-1")
    );
    let got = get(&api, "web").await.unwrap();
    assert_eq!(auth_of(got.spec.as_ref()), None, "GetService");
    assert!(services(&api)
        .await
        .iter()
        .all(|s| auth_of(s.spec.as_ref()).is_none()));

    // An update without a login (the spec read back, changed) keeps the stored one (Docker).
    let mut next = got.spec.clone().unwrap();
    next.task
        .as_mut()
        .unwrap()
        .container
        .as_mut()
        .unwrap()
        .image = "reg.example/app:2".into();
    let updated = update(&api, &got.id, version(&got), next).await.unwrap();
    assert_eq!(auth_of(updated.spec.as_ref()), None, "UpdateService answer");
    assert_eq!(
        auth_of(updated.previous_spec.as_ref()),
        None,
        "previous spec"
    );
    let s = stored(&store, &got.id);
    assert_eq!(auth_of(s.spec.as_ref()).as_deref(), Some("LOGIN-1"));
    assert_eq!(
        auth_of(s.previous_spec.as_ref()).as_deref(),
        Some("LOGIN-1")
    );
    // Sending the same spec again changes nothing (the kept login is no change).
    let same = update(&api, &got.id, 0, updated.spec.clone().unwrap())
        .await
        .unwrap();
    assert_eq!(version(&same), version(&s), "no new version");

    // An update with a login replaces it.
    let again = update(
        &api,
        &got.id,
        0,
        with_auth(updated.spec.clone().unwrap(), "LOGIN-2"),
    )
    .await
    .unwrap();
    assert_eq!(auth_of(again.spec.as_ref()), None);
    assert_eq!(
        auth_of(stored(&store, &got.id).spec.as_ref()).as_deref(),
        Some("LOGIN-2")
    );

    // Tasks carry it for their agents, and the Control API never shows it.
    let svc = stored(&store, &got.id);
    put(&store, vec![Object::Task(task("t1", &svc, "n1", 1))]).await;
    let t = store.read().task("t1").cloned().unwrap();
    assert!(task_login(&t).is_some());
    let listed = api
        .list_tasks(local(ListTasksRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .tasks;
    assert_eq!(listed.len(), 1);
    assert!(task_login(&listed[0]).is_none());
    let one = api
        .get_task(local(GetTaskRequest {
            task_id: "t1".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(task_login(&one).is_none());
}

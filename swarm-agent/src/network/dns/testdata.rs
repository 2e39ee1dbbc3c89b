//! A hand-built view for the DNS tests.
//!
//! | network | id | subnet | notes |
//! |---|---|---|---|
//! | front | net-front | 10.0.1.0/24 | |
//! | back | net-back | 10.0.2.0/24 | |
//! | other | net-other | 10.0.3.0/24 | internal |
//! | ingress | net-ingress | 10.0.0.0/24 | ingress |
//!
//! Services: `web` (vip 10.0.1.2 on front; tasks web.1 .3 and web.2 .4 serving, web.3 .5
//! starting; alias `www`; named ports http/tcp 80 and dns/udp 53), `db` (dnsrr on back; .3 and
//! .4 serving; alias `database`), `multi` (VIPs on front .20, back .20, ingress .20),
//! `secret` (vip 10.0.3.2 on other), `idle` (dnsrr on back, one task not serving), `empty`
//! (vip 10.0.1.30 on front, no task).

use proto::{
    EndpointInfo, EndpointMode, NetworkInfo, PortConfig, PortProtocol, ServiceInfo, VirtualIp,
};

use crate::network::view::NetworkView;

pub const FRONT: &str = "net-front";
pub const BACK: &str = "net-back";
pub const OTHER: &str = "net-other";
pub const INGRESS: &str = "net-ingress";

pub const WEB1_ID: &str = "w1aaaaaaaaaaaaaaaaaaaaaaa";
pub const WEB1_NAME: &str = "web.1.w1aaaaaaaaaaaaaaaaaaaaaaa";
pub const WEB2_NAME: &str = "web.2.w2bbbbbbbbbbbbbbbbbbbbbbb";
pub const WEB3_NAME: &str = "web.3.w3ccccccccccccccccccccccc";

pub fn network(id: &str, name: &str, subnet: &str, internal: bool, ingress: bool) -> NetworkInfo {
    NetworkInfo {
        id: id.into(),
        name: name.into(),
        vni: 4096,
        subnet: subnet.into(),
        gateway: String::new(),
        internal,
        ingress,
        attachable: false,
        mtu: 0,
    }
}

pub fn service(
    id: &str,
    name: &str,
    mode: EndpointMode,
    vips: &[(&str, &str)],
    nets: &[&str],
) -> ServiceInfo {
    ServiceInfo {
        id: id.into(),
        name: name.into(),
        endpoint_mode: mode as i32,
        virtual_ips: vips
            .iter()
            .map(|(n, a)| VirtualIp {
                network_id: (*n).into(),
                addr: (*a).into(),
            })
            .collect(),
        network_ids: nets.iter().map(|s| (*s).into()).collect(),
        ports: vec![],
    }
}

pub fn endpoint(
    net: &str,
    task_id: &str,
    service: &str,
    task_name: &str,
    addr: &str,
    serving: bool,
) -> EndpointInfo {
    EndpointInfo {
        task_id: task_id.into(),
        network_id: net.into(),
        address: addr.into(),
        node_id: "node1".into(),
        node_addr: "192.168.0.1".into(),
        service_id: format!("svc-{service}"),
        service_name: service.into(),
        task_name: task_name.into(),
        aliases: vec![],
        serving,
        node_ingress: false,
    }
}

pub fn named_port(name: &str, proto: PortProtocol, port: u32) -> PortConfig {
    PortConfig {
        name: name.into(),
        protocol: proto as i32,
        target_port: port,
        ..Default::default()
    }
}

pub fn insert_endpoint(v: &mut NetworkView, e: EndpointInfo) {
    v.endpoints
        .insert((e.task_id.clone(), e.network_id.clone()), e);
}

pub fn sample_view() -> NetworkView {
    let mut v = NetworkView {
        complete: true,
        ..Default::default()
    };
    for n in [
        network(FRONT, "front", "10.0.1.0/24", false, false),
        network(BACK, "back", "10.0.2.0/24", false, false),
        network(OTHER, "other", "10.0.3.0/24", true, false),
        network(INGRESS, "ingress", "10.0.0.0/24", false, true),
    ] {
        v.networks.insert(n.id.clone(), n);
    }
    let mut web = service(
        "svc-web",
        "web",
        EndpointMode::Vip,
        &[(FRONT, "10.0.1.2/24")],
        &[FRONT],
    );
    web.ports = vec![
        named_port("http", PortProtocol::Tcp, 80),
        named_port("dns", PortProtocol::Udp, 53),
        named_port("", PortProtocol::Tcp, 8080),
    ];
    let services = [
        web,
        service("svc-db", "db", EndpointMode::Dnsrr, &[], &[BACK]),
        service(
            "svc-multi",
            "multi",
            EndpointMode::Vip,
            &[
                (FRONT, "10.0.1.20/24"),
                (BACK, "10.0.2.20/24"),
                (INGRESS, "10.0.0.20/24"),
            ],
            &[FRONT, BACK, INGRESS],
        ),
        service(
            "svc-secret",
            "secret",
            EndpointMode::Vip,
            &[(OTHER, "10.0.3.2/24")],
            &[OTHER],
        ),
        service("svc-idle", "idle", EndpointMode::Dnsrr, &[], &[BACK]),
        service(
            "svc-empty",
            "empty",
            EndpointMode::Vip,
            &[(FRONT, "10.0.1.30/24")],
            &[FRONT],
        ),
    ];
    for s in services {
        v.services.insert(s.id.clone(), s);
    }
    for (id, name, addr, serving) in [
        (WEB1_ID, WEB1_NAME, "10.0.1.3", true),
        ("w2bbbbbbbbbbbbbbbbbbbbbbb", WEB2_NAME, "10.0.1.4", true),
        ("w3ccccccccccccccccccccccc", WEB3_NAME, "10.0.1.5", false),
    ] {
        let mut e = endpoint(FRONT, id, "web", name, addr, serving);
        e.aliases = vec!["www".into()];
        insert_endpoint(&mut v, e);
    }
    for (id, slot, addr) in [
        ("d1ddddddddddddddddddddddd", 1, "10.0.2.3"),
        ("d2eeeeeeeeeeeeeeeeeeeeeee", 2, "10.0.2.4"),
    ] {
        let mut e = endpoint(BACK, id, "db", &format!("db.{slot}.{id}"), addr, true);
        e.aliases = vec!["database".into()];
        insert_endpoint(&mut v, e);
    }
    insert_endpoint(
        &mut v,
        endpoint(
            BACK,
            "i1fffffffffffffffffffffff",
            "idle",
            "idle.1.i1fffffffffffffffffffffff",
            "10.0.2.9",
            false,
        ),
    );
    insert_endpoint(
        &mut v,
        endpoint(
            OTHER,
            "s1ggggggggggggggggggggggg",
            "secret",
            "secret.1.s1ggggggggggggggggggggggg",
            "10.0.3.3",
            true,
        ),
    );
    for (net, addr) in [
        (FRONT, "10.0.1.21"),
        (BACK, "10.0.2.21"),
        (INGRESS, "10.0.0.21"),
    ] {
        insert_endpoint(
            &mut v,
            endpoint(
                net,
                "m1hhhhhhhhhhhhhhhhhhhhhhh",
                "multi",
                "multi.1.m1hhhhhhhhhhhhhhhhhhhhhhh",
                addr,
                true,
            ),
        );
    }
    v
}

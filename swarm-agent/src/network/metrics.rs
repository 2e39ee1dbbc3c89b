//! The data plane's counters on `/metrics`, read from the eBPF maps at scrape time:
//! per network (packets and bytes by path, drops by reason) and per service and backend
//! (connections, packets, bytes), plus the sizes of the endpoint and service maps.

use std::borrow::Cow;
use std::sync::Weak;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use swarm_ebpf_common::{port_stat, stat};

use super::Networking;

/// Registered once per process; holds the data plane weakly.
#[derive(Debug)]
pub struct DataplaneCollector {
    pub net: Weak<Networking>,
}

type Labels = Vec<(Cow<'static, str>, Cow<'static, str>)>;

fn l(pairs: &[(&'static str, String)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (Cow::Borrowed(*k), Cow::Owned(v.clone())))
        .collect()
}

/// (path label, packets index, bytes index) of the traffic counters.
const PATHS: [(&str, usize, usize); 5] = [
    ("local", stat::LOCAL_PACKETS, stat::LOCAL_BYTES),
    ("tunnel_tx", stat::TX_TUNNEL_PACKETS, stat::TX_TUNNEL_BYTES),
    ("tunnel_rx", stat::RX_TUNNEL_PACKETS, stat::RX_TUNNEL_BYTES),
    ("egress", stat::EGRESS_PACKETS, stat::EGRESS_BYTES),
    ("ingress", stat::INGRESS_PACKETS, stat::INGRESS_BYTES),
];

const DROPS: [(&str, usize); 5] = [
    ("spoofed_source", stat::DROP_SPOOFED),
    ("no_endpoint", stat::DROP_NO_ENDPOINT),
    ("bad_tunnel_source", stat::DROP_BAD_SOURCE),
    ("internal_network", stat::DROP_INTERNAL),
    ("egress_failed", stat::DROP_EGRESS),
];

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, u64)],
) -> Result<(), std::fmt::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        let fam = m.encode_family(labels)?;
        ConstCounter::new(*v).encode(fam)?;
    }
    Ok(())
}

impl Collector for DataplaneCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(net) = self.net.upgrade() else {
            return Ok(());
        };
        let Ok(dp) = net.dataplane() else {
            return Ok(());
        };
        let names = net.metric_names();
        let stats = dp.stats();
        let network = |vni: u32| {
            names
                .networks
                .get(&vni)
                .cloned()
                .unwrap_or_else(|| vni.to_string())
        };
        let mut packets = Vec::new();
        let mut bytes = Vec::new();
        let mut drops = Vec::new();
        for (vni, c) in &stats {
            for (path, p, b) in PATHS {
                let labels = l(&[("network", network(*vni)), ("path", path.to_string())]);
                packets.push((labels.clone(), c[p]));
                bytes.push((labels, c[b]));
            }
            for (reason, i) in DROPS {
                drops.push((
                    l(&[("network", network(*vni)), ("reason", reason.to_string())]),
                    c[i],
                ));
            }
        }
        counter(
            &mut enc,
            "network_packets",
            "Packets of overlay networks on this node, by path",
            &packets,
        )?;
        counter(
            &mut enc,
            "network_bytes",
            "Bytes of overlay networks on this node, by path",
            &bytes,
        )?;
        counter(
            &mut enc,
            "network_drops",
            "Packets of overlay networks this node dropped, by reason",
            &drops,
        )?;

        let mut svc = [Vec::new(), Vec::new(), Vec::new()];
        let mut backend = [Vec::new(), Vec::new(), Vec::new()];
        for (k, s) in dp.lb_stats() {
            let Some((service, network)) = names.lb.get(&k.id) else {
                continue;
            };
            let values = [s.connections, s.packets, s.bytes];
            if k.backend == 0 {
                let labels = l(&[("service", service.clone()), ("network", network.clone())]);
                for (i, v) in values.iter().enumerate() {
                    svc[i].push((labels.clone(), *v));
                }
            } else {
                let addr = std::net::Ipv4Addr::from(k.backend.to_ne_bytes()).to_string();
                let labels = l(&[
                    ("service", service.clone()),
                    ("network", network.clone()),
                    ("backend", addr),
                ]);
                for (i, v) in values.iter().enumerate() {
                    backend[i].push((labels.clone(), *v));
                }
            }
        }
        let [c, p, b] = svc;
        counter(
            &mut enc,
            "service_connections",
            "Connections load-balanced to a service's VIP from this node",
            &c,
        )?;
        counter(
            &mut enc,
            "service_packets",
            "Packets of load-balanced connections of a service from this node",
            &p,
        )?;
        counter(
            &mut enc,
            "service_bytes",
            "Bytes of load-balanced connections of a service from this node",
            &b,
        )?;
        let [c, p, b] = backend;
        counter(
            &mut enc,
            "service_backend_connections",
            "Connections this node sent to one backend of a service",
            &c,
        )?;
        counter(
            &mut enc,
            "service_backend_packets",
            "Packets of load-balanced connections to one backend",
            &p,
        )?;
        counter(
            &mut enc,
            "service_backend_bytes",
            "Bytes of load-balanced connections to one backend",
            &b,
        )?;

        // The routing mesh, per published port.
        let mut port_rows: [Vec<(Labels, u64)>; 4] = Default::default();
        for (k, c) in dp.port_stats() {
            let port = u16::from_be(k.port).to_string();
            let protocol = if k.proto == 17 { "udp" } else { "tcp" }.to_string();
            let service = names.ports.get(&k).cloned().unwrap_or_default();
            let base = [("port", port), ("protocol", protocol), ("service", service)];
            port_rows[0].push((l(&base), c[port_stat::CONNECTIONS]));
            for (dir, p, b) in [
                ("in", port_stat::PACKETS_IN, port_stat::BYTES_IN),
                ("out", port_stat::PACKETS_OUT, port_stat::BYTES_OUT),
            ] {
                let mut labels = base.to_vec();
                labels.push(("direction", dir.to_string()));
                port_rows[1].push((l(&labels), c[p]));
                port_rows[2].push((l(&labels), c[b]));
            }
            for (i, reason) in port_stat::DROPS {
                let mut labels = base.to_vec();
                labels.push(("reason", reason.to_string()));
                port_rows[3].push((l(&labels), c[i]));
            }
        }
        let [c, p, b, d] = port_rows;
        counter(
            &mut enc,
            "ingress_connections",
            "Connections (TCP, new UDP flows) the routing mesh sent to a task, per published port, from this node",
            &c,
        )?;
        counter(
            &mut enc,
            "ingress_packets",
            "Packets of routing-mesh connections through this node, per published port and direction",
            &p,
        )?;
        counter(
            &mut enc,
            "ingress_bytes",
            "Bytes of routing-mesh connections through this node, per published port and direction",
            &b,
        )?;
        counter(
            &mut enc,
            "ingress_drops",
            "Packets to a published port this node dropped, by reason",
            &d,
        )?;
        let shadowed: Vec<(Labels, u64)> = names
            .shadowed
            .iter()
            .map(|k| {
                let protocol = if k.proto == 17 { "udp" } else { "tcp" };
                (
                    l(&[
                        ("port", u16::from_be(k.port).to_string()),
                        ("protocol", protocol.to_string()),
                        ("service", names.ports.get(k).cloned().unwrap_or_default()),
                    ]),
                    1,
                )
            })
            .collect();
        if !shadowed.is_empty() {
            let mut m = enc.encode_descriptor(
                "ingress_port_shadowed",
                "1 for a published port a process of this node also listens on: the routing mesh answers it, the process gets none of its connections",
                None,
                MetricType::Gauge,
            )?;
            for (labels, v) in &shadowed {
                let fam = m.encode_family(labels)?;
                ConstGauge::new(*v as i64).encode(fam)?;
            }
        }

        let gauge = |enc: &mut DescriptorEncoder,
                     name: &str,
                     help: &str,
                     v: i64|
         -> Result<(), std::fmt::Error> {
            let m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(v).encode(m)
        };
        gauge(
            &mut enc,
            "dataplane_endpoints",
            "Task addresses in this node's endpoint map (local and remote)",
            dp.endpoints().len() as i64,
        )?;
        gauge(
            &mut enc,
            "dataplane_vips",
            "Service VIPs in this node's load-balancer map",
            dp.services().len() as i64,
        )?;
        gauge(
            &mut enc,
            "dataplane_backends",
            "Serving backends in this node's load-balancer map",
            dp.services().values().map(|(_, b)| b.len() as i64).sum(),
        )?;
        Ok(())
    }
}

//! The objects of `ls`/`ps` as `--format` templates see them: Docker's field names per
//! command (docker/cli's formatter contexts) with the values of the default table, and
//! the column titles a `table` template prints for them.

use proto::{Network, Node, Service, Task, TaskState};
use serde_json::{json, Map, Value as Json};

use crate::format::{self, current_state, display_image, pretty, truncate_id};
use crate::ps::{self, Names};
use crate::secret_cmd::{Item, Which};
use crate::template::{labels_field, row};

pub const NODE_HEADERS: &[(&str, &str)] = &[
    ("ID", "ID"),
    ("Self", ""),
    ("Hostname", "HOSTNAME"),
    ("Status", "STATUS"),
    ("Availability", "AVAILABILITY"),
    ("ManagerStatus", "MANAGER STATUS"),
    ("EngineVersion", "ENGINE VERSION"),
    ("TLSStatus", "TLS STATUS"),
];

/// The swarm's root CA as node TLS info is compared with: its certificate and public key.
pub struct ClusterRoot {
    pub cert: String,
    pub public_key: Vec<u8>,
}

/// Docker's TLS STATUS: "Ready" when the node trusts the swarm's root and holds a
/// certificate it issued, "Needs Rotation" when not, "Unknown" without TLS information.
pub fn tls_status(n: &Node, root: Option<&ClusterRoot>) -> &'static str {
    let info = n.description.as_ref().and_then(|d| d.tls_info.as_ref());
    match (info, root) {
        (Some(t), Some(r)) if !t.trust_root.is_empty() => {
            if t.trust_root.trim() == r.cert.trim() && t.cert_issuer_public_key == r.public_key {
                "Ready"
            } else {
                "Needs Rotation"
            }
        }
        _ => "Unknown",
    }
}

pub fn node(n: &Node, self_id: &str, root: Option<&ClusterRoot>) -> Map<String, Json> {
    row([
        ("ID", json!(n.id)),
        ("Self", json!(n.id == self_id)),
        ("Hostname", json!(n.hostname())),
        ("Status", json!(format::node_state(n.state()))),
        (
            "Availability",
            json!(format::availability(n.availability())),
        ),
        ("ManagerStatus", json!(format::manager_status(n))),
        (
            "EngineVersion",
            json!(n
                .description
                .as_ref()
                .map_or("", |d| d.engine_version.as_str())),
        ),
        ("TLSStatus", json!(tls_status(n, root))),
    ])
}

pub const SERVICE_HEADERS: &[(&str, &str)] = &[
    ("ID", "ID"),
    ("Name", "NAME"),
    ("Mode", "MODE"),
    ("Replicas", "REPLICAS"),
    ("Image", "IMAGE"),
    ("Ports", "PORTS"),
];

pub fn service(s: &Service, status: &proto::ServiceStatus) -> Map<String, Json> {
    let (mode, replicas) = crate::service_cmd::replicas_column(s, status);
    row([
        ("ID", json!(truncate_id(&s.id))),
        ("Name", json!(s.name())),
        ("Mode", json!(mode)),
        ("Replicas", json!(replicas)),
        (
            "Image",
            json!(display_image(crate::service_cmd::image_of(s))),
        ),
        (
            "Ports",
            json!(format::service_ports(crate::service_cmd::ports_of(s))),
        ),
    ])
}

/// `service ls` / `stack services` through a template (the replicas from the counts the
/// managers make, asked only when there is a service).
pub async fn print_services(
    c: &crate::client::Client,
    services: &[Service],
    table: bool,
    text: &str,
) -> crate::error::Result<()> {
    let statuses = if services.is_empty() {
        Default::default()
    } else {
        c.service_statuses().await?
    };
    let rows: Vec<_> = services
        .iter()
        .map(|s| service(s, &crate::service_cmd::status_of(s, &statuses)))
        .collect();
    print!(
        "{}",
        crate::template::render_rows(table, text, SERVICE_HEADERS, &rows)?
    );
    Ok(())
}

pub const TASK_HEADERS: &[(&str, &str)] = &[
    ("ID", "ID"),
    ("Name", "NAME"),
    ("Image", "IMAGE"),
    ("Node", "NODE"),
    ("DesiredState", "DESIRED STATE"),
    ("CurrentState", "CURRENT STATE"),
    ("Error", "ERROR"),
    ("Ports", "PORTS"),
];

/// The tasks in `ps` order, each with the name cell of the table (older tasks of a slot
/// indented with ` \_ `).
pub fn tasks(tasks: &[Task], names: &Names, trunc: bool, now_ms: i64) -> Vec<Map<String, Json>> {
    ps::ordered(tasks, names)
        .into_iter()
        .map(|(t, name)| {
            let image = t
                .spec
                .as_ref()
                .and_then(|s| s.container.as_ref())
                .map_or("", |c| c.image.as_str());
            let desired = TaskState::try_from(t.desired_state).unwrap_or(TaskState::New);
            let ports = t
                .status
                .as_ref()
                .map(|s| format::task_ports(&s.port_status));
            row([
                ("ID", json!(if trunc { truncate_id(&t.id) } else { &t.id })),
                ("Name", json!(name)),
                (
                    "Image",
                    json!(if trunc {
                        display_image(image)
                    } else {
                        image.to_string()
                    }),
                ),
                ("Node", json!(names.node(&t.node_id))),
                ("DesiredState", json!(pretty(desired.display_name()))),
                (
                    "CurrentState",
                    json!(current_state(t.state(), ps::state_time(t), now_ms)),
                ),
                ("Error", json!(ps::error_cell(&names.error(t), trunc))),
                ("Ports", json!(ports.unwrap_or_default())),
            ])
        })
        .collect()
}

pub const NETWORK_HEADERS: &[(&str, &str)] = &[
    ("ID", "NETWORK ID"),
    ("Name", "NAME"),
    ("Driver", "DRIVER"),
    ("Scope", "SCOPE"),
    ("IPv6", "IPV6"),
    ("Internal", "INTERNAL"),
    ("Labels", "LABELS"),
    ("CreatedAt", "CREATED AT"),
];

pub fn network(n: &Network, trunc: bool) -> Map<String, Json> {
    let spec = n.spec.clone().unwrap_or_default();
    row([
        ("ID", json!(if trunc { truncate_id(&n.id) } else { &n.id })),
        ("Name", json!(spec.name)),
        (
            "Driver",
            json!(if spec.driver.is_empty() {
                "overlay"
            } else {
                spec.driver.as_str()
            }),
        ),
        ("Scope", json!("swarm")),
        ("IPv6", json!("false")),
        ("Internal", json!(spec.internal.to_string())),
        ("Labels", labels_field(&spec.labels)),
        (
            "CreatedAt",
            json!(format::timestamp(
                n.meta.as_ref().map_or(0, |m| m.created_at)
            )),
        ),
    ])
}

pub fn data_headers(which: Which) -> &'static [(&'static str, &'static str)] {
    match which {
        Which::Secret => &[
            ("ID", "ID"),
            ("Name", "NAME"),
            ("Driver", "DRIVER"),
            ("CreatedAt", "CREATED"),
            ("UpdatedAt", "UPDATED"),
            ("Labels", "LABELS"),
        ],
        Which::Config => &[
            ("ID", "ID"),
            ("Name", "NAME"),
            ("CreatedAt", "CREATED"),
            ("UpdatedAt", "UPDATED"),
            ("Labels", "LABELS"),
        ],
    }
}

/// A secret or config: times as "2 minutes ago", as Docker's formatter gives them.
pub fn data(which: Which, i: &Item, now_ms: i64) -> Map<String, Json> {
    let mut r = row([
        ("ID", json!(i.id)),
        ("Name", json!(i.name)),
        ("CreatedAt", json!(format::ago(now_ms, i.created_at))),
        ("UpdatedAt", json!(format::ago(now_ms, i.updated_at))),
        ("Labels", labels_field(&i.labels)),
    ]);
    if which == Which::Secret {
        r.insert("Driver".into(), json!(""));
    }
    r
}

pub const STACK_HEADERS: &[(&str, &str)] = &[("Name", "NAME"), ("Services", "SERVICES")];

pub fn stack(name: &str, services: usize) -> Map<String, Json> {
    row([
        ("Name", json!(name)),
        ("Services", json!(services.to_string())),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::render_rows;
    use proto::*;

    #[test]
    fn node_rows_render_dockers_fields_and_headers() {
        let n = Node {
            id: "abc".into(),
            description: Some(NodeDescription {
                hostname: "node-1".into(),
                engine_version: "0.1.0".into(),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                state: NodeState::Ready as i32,
                ..Default::default()
            }),
            ..Default::default()
        };
        let r = [node(&n, "abc", None)];
        assert_eq!(
            render_rows(false, "{{json .}}", NODE_HEADERS, &r).unwrap(),
            "{\"Availability\":\"Active\",\"EngineVersion\":\"0.1.0\",\"Hostname\":\"node-1\",\
             \"ID\":\"abc\",\"ManagerStatus\":\"\",\"Self\":true,\"Status\":\"Ready\",\
             \"TLSStatus\":\"Unknown\"}\n"
        );
        let root = ClusterRoot {
            cert: "ROOT\n".into(),
            public_key: vec![1, 2],
        };
        let mut n = n.clone();
        let tls = |trust: &str, key: &[u8]| NodeTlsInfo {
            trust_root: trust.into(),
            cert_issuer_public_key: key.to_vec(),
            ..Default::default()
        };
        n.description.as_mut().unwrap().tls_info = Some(tls("ROOT", &[1, 2]));
        assert_eq!(tls_status(&n, Some(&root)), "Ready");
        n.description.as_mut().unwrap().tls_info = Some(tls("OLD", &[1, 2]));
        assert_eq!(tls_status(&n, Some(&root)), "Needs Rotation");
        n.description.as_mut().unwrap().tls_info = Some(tls("ROOT", &[9]));
        assert_eq!(tls_status(&n, Some(&root)), "Needs Rotation");
        assert_eq!(
            render_rows(true, "{{.Hostname}}\t{{.Status}}", NODE_HEADERS, &r).unwrap(),
            "HOSTNAME   STATUS\nnode-1     Ready\n"
        );
    }

    #[test]
    fn task_rows_match_the_table_cells() {
        let t = Task {
            id: "0123456789abcdef".into(),
            service_id: "s1".into(),
            slot: 1,
            node_id: "n1".into(),
            desired_state: TaskState::Running as i32,
            status: Some(TaskStatus {
                state: TaskState::Running as i32,
                timestamp: 1_000,
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut names = Names::default();
        names.services.insert("s1".into(), "web".into());
        names.nodes.insert("n1".into(), "node-1".into());
        let rows = tasks(&[t], &names, true, 61_000);
        assert_eq!(
            render_rows(
                false,
                "{{.ID}} {{.Name}} {{.Node}} {{.DesiredState}} {{.CurrentState}}",
                TASK_HEADERS,
                &rows
            )
            .unwrap(),
            "0123456789ab web.1 node-1 Running Running about a minute ago\n"
        );
    }

    #[test]
    fn network_and_data_rows() {
        let n = Network {
            id: "0123456789abcdef".into(),
            spec: Some(NetworkSpec {
                name: "front".into(),
                labels: [("a".to_string(), "1".to_string())].into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            render_rows(
                true,
                "{{.ID}}\t{{.Name}}\t{{.Driver}}\t{{.Labels}}",
                NETWORK_HEADERS,
                &[network(&n, true)]
            )
            .unwrap(),
            "NETWORK ID     NAME      DRIVER    LABELS\n0123456789ab   front     overlay   a=1\n"
        );
        let i = Item {
            id: "s1".into(),
            name: "pw".into(),
            created_at: 0,
            updated_at: 0,
            ..Default::default()
        };
        assert_eq!(
            render_rows(
                false,
                "{{.Name}} {{.Driver}}|{{.CreatedAt}}",
                data_headers(Which::Secret),
                &[data(Which::Secret, &i, 120_000)]
            )
            .unwrap(),
            "pw |2 minutes ago\n"
        );
        assert_eq!(
            render_rows(
                true,
                "{{.Name}}\t{{.Services}}",
                STACK_HEADERS,
                &[stack("shop", 3)]
            )
            .unwrap(),
            "NAME      SERVICES\nshop      3\n"
        );
    }
}

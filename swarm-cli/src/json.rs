//! JSON output of the proto objects (`--format json`, `inspect`): the serde form of the
//! message with enum numbers replaced by their proto names (`"TASK_STATE_RUNNING"`).

use serde::Serialize;
use serde_json::Value;

use crate::error::Result;

/// Which object is being printed: `state` means a node state in a node and a task state
/// in a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Node,
    Service,
    Task,
    Other,
}

fn enum_name(key: &str, n: i32, kind: Kind) -> Option<&'static str> {
    use proto::*;
    match key {
        "role" | "desired_role" => NodeRole::try_from(n).ok().map(|e| e.as_str_name()),
        "availability" => NodeAvailability::try_from(n).ok().map(|e| e.as_str_name()),
        "reachability" => Reachability::try_from(n).ok().map(|e| e.as_str_name()),
        "state" if kind == Kind::Node => NodeState::try_from(n).ok().map(|e| e.as_str_name()),
        "state" if kind == Kind::Task => TaskState::try_from(n).ok().map(|e| e.as_str_name()),
        // Service.update_status.state.
        "state" if kind == Kind::Service => UpdateState::try_from(n).ok().map(|e| e.as_str_name()),
        "failure_action" => UpdateFailureAction::try_from(n)
            .ok()
            .map(|e| e.as_str_name()),
        "order" => UpdateOrder::try_from(n).ok().map(|e| e.as_str_name()),
        "desired_state" | "desired_states" => TaskState::try_from(n).ok().map(|e| e.as_str_name()),
        "condition" => RestartCondition::try_from(n).ok().map(|e| e.as_str_name()),
        "protocol" => PortProtocol::try_from(n).ok().map(|e| e.as_str_name()),
        "publish_mode" => PublishMode::try_from(n).ok().map(|e| e.as_str_name()),
        // ServiceSpec.mode is the replicated/global oneof (an object); EndpointSpec.mode is
        // the endpoint mode enum (a number).
        "mode" => EndpointMode::try_from(n).ok().map(|e| e.as_str_name()),
        _ => None,
    }
}

fn rename(v: &mut Value, kind: Kind) {
    match v {
        Value::Object(map) => {
            for (key, val) in map.iter_mut() {
                if let Some(n) = val.as_i64() {
                    if let Some(name) = i32::try_from(n).ok().and_then(|n| enum_name(key, n, kind))
                    {
                        *val = Value::String(name.to_string());
                    }
                } else {
                    rename(val, kind);
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                rename(item, kind);
            }
        }
        _ => {}
    }
}

/// A published port's `preserve_source_ip` (`--publish ...,source-ip=preserve`) shows as
/// `"source_ip": "preserve"`, and only when set: the default (the routing mesh translates
/// the source) adds nothing to every port.
fn source_ip(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if let Some(set) = map.remove("preserve_source_ip") {
                if set.as_bool() == Some(true) {
                    map.insert("source_ip".into(), Value::String("preserve".into()));
                }
            }
            map.values_mut().for_each(source_ip);
        }
        Value::Array(items) => items.iter_mut().for_each(source_ip),
        _ => {}
    }
}

/// A node's TLS info (`description.tls_info`) shows its DER fields in base64, as Docker
/// prints `CertIssuerSubject` and `CertIssuerPublicKey`, not as arrays of numbers.
fn tls_bytes(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (key, val) in map.iter_mut() {
                if key == "cert_issuer_subject" || key == "cert_issuer_public_key" {
                    if let Some(items) = val.as_array() {
                        let bytes: Vec<u8> = items
                            .iter()
                            .filter_map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                            .collect();
                        *val = Value::String(base64(&bytes));
                    }
                } else {
                    tls_bytes(val);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(tls_bytes),
        _ => {}
    }
}

/// Standard base64 with padding (Go's encoding of `[]byte` in JSON).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The JSON value of a proto object, enums named.
pub fn value<T: Serialize>(obj: &T, kind: Kind) -> Result<Value> {
    let mut v = serde_json::to_value(obj)?;
    rename(&mut v, kind);
    source_ip(&mut v);
    tls_bytes(&mut v);
    Ok(v)
}

/// One object on one line (the `ls --format json` form).
pub fn line<T: Serialize>(obj: &T, kind: Kind) -> Result<String> {
    Ok(serde_json::to_string(&value(obj, kind)?)?)
}

/// A JSON array indented by four spaces, as `docker inspect` prints it.
pub fn inspect_array(values: &[Value]) -> Result<String> {
    let mut buf = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
    values.serialize(&mut ser)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::*;

    #[test]
    fn tls_info_bytes_are_base64() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        let n = Node {
            description: Some(NodeDescription {
                tls_info: Some(NodeTlsInfo {
                    trust_root: "PEM".into(),
                    cert_issuer_subject: b"fo".to_vec(),
                    cert_issuer_public_key: b"foob".to_vec(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let v = value(&n, Kind::Node).unwrap();
        let tls = &v["description"]["tls_info"];
        assert_eq!(tls["cert_issuer_subject"], "Zm8=");
        assert_eq!(tls["cert_issuer_public_key"], "Zm9vYg==");
        assert_eq!(tls["trust_root"], "PEM");
    }

    #[test]
    fn task_enums_are_named() {
        let t = Task {
            id: "t1".into(),
            desired_state: TaskState::Running as i32,
            status: Some(TaskStatus {
                state: TaskState::Pending as i32,
                port_status: vec![PortConfig {
                    protocol: PortProtocol::Udp as i32,
                    publish_mode: PublishMode::Host as i32,
                    target_port: 53,
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let v = value(&t, Kind::Task).unwrap();
        assert_eq!(v["desired_state"], "TASK_STATE_RUNNING");
        assert_eq!(v["status"]["state"], "TASK_STATE_PENDING");
        assert_eq!(
            v["status"]["port_status"][0]["protocol"],
            "PORT_PROTOCOL_UDP"
        );
        assert_eq!(
            v["status"]["port_status"][0]["publish_mode"],
            "PUBLISH_MODE_HOST"
        );
        assert_eq!(v["status"]["port_status"][0]["target_port"], 53);
    }

    #[test]
    fn source_ip_shows_only_when_preserved() {
        let port = |preserve: bool| PortConfig {
            target_port: 80,
            published_port: 8080,
            preserve_source_ip: preserve,
            ..Default::default()
        };
        let s = Service {
            spec: Some(ServiceSpec {
                endpoint: Some(EndpointSpec {
                    mode: EndpointMode::Vip as i32,
                    ports: vec![port(true), port(false)],
                }),
                ..Default::default()
            }),
            endpoint: Some(Endpoint {
                ports: vec![port(true)],
                ..Default::default()
            }),
            ..Default::default()
        };
        let v = value(&s, Kind::Service).unwrap();
        let ports = &v["spec"]["endpoint"]["ports"];
        assert_eq!(ports[0]["source_ip"], "preserve");
        assert!(ports[0].get("preserve_source_ip").is_none());
        assert!(ports[1].get("source_ip").is_none());
        assert!(ports[1].get("preserve_source_ip").is_none());
        assert_eq!(ports[1]["publish_mode"], "PUBLISH_MODE_INGRESS");
        assert_eq!(v["endpoint"]["ports"][0]["source_ip"], "preserve");
    }

    #[test]
    fn node_and_service_enums_are_named() {
        let n = Node {
            status: Some(NodeStatus {
                state: NodeState::Ready as i32,
                ..Default::default()
            }),
            spec: Some(NodeSpec {
                availability: NodeAvailability::Drain as i32,
                ..Default::default()
            }),
            role: NodeRole::Manager as i32,
            ..Default::default()
        };
        let v = value(&n, Kind::Node).unwrap();
        assert_eq!(v["status"]["state"], "NODE_STATE_READY");
        assert_eq!(v["spec"]["availability"], "NODE_AVAILABILITY_DRAIN");
        assert_eq!(v["role"], "NODE_ROLE_MANAGER");

        let s = Service {
            spec: Some(ServiceSpec {
                mode: Some(service_spec::Mode::Replicated(ReplicatedService {
                    replicas: 3,
                })),
                endpoint: Some(EndpointSpec {
                    mode: EndpointMode::Dnsrr as i32,
                    ports: vec![],
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let v = value(&s, Kind::Service).unwrap();
        assert_eq!(v["spec"]["endpoint"]["mode"], "ENDPOINT_MODE_DNSRR");
        assert!(v["spec"]["mode"].is_object());
        let text = inspect_array(&[v]).unwrap();
        assert!(text.starts_with("[\n    {"));
    }
}

//! The conversion of compose files into a stack's objects, on files written to a temporary
//! directory: names, labels, every key the issue lists, and errors that name file, line and key.

use std::collections::BTreeMap;
use std::path::PathBuf;

use proto::*;

use super::convert::{self, Stack};
use super::load;

struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Dir {
        Dir(tempfile::tempdir().expect("tempdir"))
    }
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.path().join(name);
        std::fs::write(&p, text).expect("write");
        p
    }
}

fn env(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn stack(files: &[PathBuf], vars: &[(&str, &str)]) -> Result<Stack, String> {
    let e = env(vars);
    let l = load::load(files, &e).map_err(|e| e.to_string())?;
    convert::convert(&l, "app", &e).map_err(|e| e.to_string())
}

const FULL: &str = r#"
version: "3.8"
services:
  web:
    image: ${REGISTRY}/whoami:${TAG:-latest}
    command: --port 80 "--name=a b"
    environment:
      - MODE=front
      - FROM_SHELL
    ports:
      - "8080:80"
      - target: 81
        published: 8081
        protocol: udp
        mode: host
    networks:
      front:
        aliases: [www]
    labels:
      tier: web
    healthcheck:
      test: ["CMD", "/whoami", "--check"]
      interval: 5s
      timeout: 2s
      retries: 3
      start_period: 1s
    stop_grace_period: 1m30s
    stop_signal: SIGINT
    read_only: true
    hostname: web-host
    user: "1000"
    working_dir: /srv
    restart: always
    deploy:
      replicas: ${REPLICAS}
      labels: [tier=web]
      placement:
        constraints: [node.role==worker]
        preferences:
          - spread: node.labels.zone
        max_replicas_per_node: 2
      resources:
        limits: {cpus: "0.5", memory: 64M}
        reservations: {memory: 16M}
      restart_policy:
        condition: on-failure
        delay: 2s
        max_attempts: 3
        window: 30s
      update_config:
        parallelism: 2
        delay: 1s
        order: start-first
        failure_action: rollback
        monitor: 5s
        max_failure_ratio: 0.5
      rollback_config:
        parallelism: 1
  db:
    image: ${REGISTRY}/whoami
    entrypoint: ["/whoami"]
    env_file: db.env
    volumes:
      - data:/var/lib/db
      - /srv/conf:/etc/conf:ro
      - type: tmpfs
        target: /tmp
        tmpfs: {size: 1m}
    networks: [back]
    secrets:
      - db_pw
      - source: db_pw
        target: pw2
        mode: 0400
        uid: "70"
    configs:
      - source: db_conf
        target: /etc/db.conf
    deploy:
      mode: global
      endpoint_mode: dnsrr
  app:
    image: ${REGISTRY}/whoami
networks:
  front:
    attachable: true
    ipam:
      config:
        - subnet: 10.99.0.0/24
  back:
    external: true
    name: shared-back
volumes:
  data:
secrets:
  db_pw:
    file: ./pw.txt
configs:
  db_conf:
    file: db.conf
    labels: {purpose: test}
"#;

fn full(d: &Dir) -> Stack {
    d.write("pw.txt", "hunter2");
    d.write("db.conf", "listen=1\n");
    d.write("db.env", "DB_USER=admin\nDB_MODE=ro\n");
    d.write(".env", "TAG=v2\nREPLICAS=3\n");
    let f = d.write("compose.yml", FULL);
    stack(&[f], &[("REGISTRY", "reg:5000"), ("FROM_SHELL", "yes")])
        .unwrap_or_else(|e| panic!("{e}"))
}

fn svc<'a>(st: &'a Stack, name: &str) -> &'a ServiceSpec {
    st.services
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no {name}"))
}

#[test]
fn every_key_lands_in_the_specs() {
    let d = Dir::new();
    let st = full(&d);
    let web = svc(&st, "app_web");
    assert_eq!(
        web.labels
            .get("com.docker.stack.namespace")
            .map(String::as_str),
        Some("app")
    );
    assert_eq!(web.labels.get("tier").map(String::as_str), Some("web"));
    let t = web.task.as_ref().unwrap();
    let c = t.container.as_ref().unwrap();
    assert_eq!(
        c.image, "reg:5000/whoami:v2",
        ".env and the shell are interpolated"
    );
    assert_eq!(c.args, ["--port", "80", "--name=a b"]);
    assert_eq!(c.env, ["FROM_SHELL=yes", "MODE=front"]);
    assert_eq!(c.labels.get("tier").map(String::as_str), Some("web"));
    assert_eq!(
        c.labels.get("com.docker.stack.image").map(String::as_str),
        Some("reg:5000/whoami:v2")
    );
    assert_eq!(c.stop_grace_period_ms, 90_000);
    assert_eq!(c.stop_signal, "SIGINT");
    assert!(c.read_only);
    assert_eq!(
        (c.hostname.as_str(), c.user.as_str(), c.dir.as_str()),
        ("web-host", "1000", "/srv")
    );
    let hc = c.healthcheck.as_ref().unwrap();
    assert_eq!(hc.test, ["CMD", "/whoami", "--check"]);
    assert_eq!(
        (
            hc.interval_ms,
            hc.timeout_ms,
            hc.retries,
            hc.start_period_ms
        ),
        (5000, 2000, 3, 1000)
    );
    assert_eq!(
        web.mode,
        Some(service_spec::Mode::Replicated(ReplicatedService {
            replicas: 3
        }))
    );
    let pl = t.placement.as_ref().unwrap();
    assert_eq!(pl.constraints, ["node.role==worker"]);
    assert_eq!(pl.preferences[0].spread_descriptor, "node.labels.zone");
    assert_eq!(pl.max_replicas, 2);
    let r = t.resources.as_ref().unwrap();
    assert_eq!(
        r.limits.as_ref().map(|l| (l.nano_cpus, l.memory_bytes)),
        Some((500_000_000, 64 << 20))
    );
    assert_eq!(
        r.reservations.as_ref().map(|l| l.memory_bytes),
        Some(16 << 20)
    );
    let rp = t.restart.as_ref().unwrap();
    assert_eq!(rp.condition, RestartCondition::OnFailure as i32);
    assert_eq!(
        (rp.delay_ms, rp.max_attempts, rp.window_ms),
        (2000, 3, 30_000)
    );
    let u = web.update.as_ref().unwrap();
    assert_eq!((u.parallelism, u.delay_ms, u.monitor_ms), (2, 1000, 5000));
    assert_eq!(u.order, UpdateOrder::StartFirst as i32);
    assert_eq!(u.failure_action, UpdateFailureAction::Rollback as i32);
    assert_eq!(u.max_failure_ratio, 0.5);
    assert_eq!(web.rollback.as_ref().map(|r| r.parallelism), Some(1));
    let ports = &web.endpoint.as_ref().unwrap().ports;
    assert_eq!(ports.len(), 2);
    assert_eq!((ports[0].published_port, ports[0].target_port), (8080, 80));
    assert_eq!(ports[1].protocol, PortProtocol::Udp as i32);
    assert_eq!(ports[1].publish_mode, PublishMode::Host as i32);
    assert_eq!(t.networks.len(), 1);
    assert_eq!(t.networks[0].target, "app_front");
    assert_eq!(t.networks[0].aliases, ["web", "www"]);

    let db = svc(&st, "app_db");
    assert_eq!(db.mode, Some(service_spec::Mode::Global(GlobalService {})));
    assert_eq!(
        db.endpoint.as_ref().unwrap().mode,
        EndpointMode::Dnsrr as i32
    );
    let dt = db.task.as_ref().unwrap();
    let dc = dt.container.as_ref().unwrap();
    assert_eq!(dc.command, ["/whoami"]);
    assert_eq!(dc.env, ["DB_MODE=ro", "DB_USER=admin"]);
    assert_eq!(
        dt.networks[0].target, "shared-back",
        "external network keeps its name"
    );
    let m = &dc.mounts;
    assert_eq!(
        (m[0].r#type, m[0].source.as_str(), m[0].target.as_str()),
        (MountType::Volume as i32, "app_data", "/var/lib/db")
    );
    assert_eq!(
        (m[1].r#type, m[1].source.as_str(), m[1].read_only),
        (MountType::Bind as i32, "/srv/conf", true)
    );
    assert_eq!(
        (m[2].r#type, m[2].tmpfs_size_bytes),
        (MountType::Tmpfs as i32, 1 << 20)
    );
    assert_eq!(dc.secrets[0].secret_name, "app_db_pw");
    assert_eq!(
        dc.secrets[0]
            .file
            .as_ref()
            .map(|f| (f.name.as_str(), f.mode)),
        Some(("db_pw", 0o444))
    );
    let f2 = dc.secrets[1].file.as_ref().unwrap();
    assert_eq!(
        (f2.name.as_str(), f2.uid.as_str(), f2.mode),
        ("pw2", "70", 0o400)
    );
    assert_eq!(dc.configs[0].config_name, "app_db_conf");
    assert_eq!(
        dc.configs[0].file.as_ref().map(|f| f.name.as_str()),
        Some("/etc/db.conf")
    );

    // The app names no network: the stack's default one.
    let app = svc(&st, "app_app");
    assert_eq!(app.task.as_ref().unwrap().networks[0].target, "app_default");

    let nets: Vec<&str> = st.networks.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(nets, ["app_default", "app_front"]);
    let front = &st.networks[1];
    assert!(front.attachable);
    assert_eq!(front.driver, "overlay");
    assert_eq!(front.ipam[0].subnet, "10.99.0.0/24");
    assert_eq!(
        front
            .labels
            .get("com.docker.stack.namespace")
            .map(String::as_str),
        Some("app")
    );
    assert_eq!(st.external_networks, ["shared-back"]);
    assert_eq!(st.secrets[0].name, "app_db_pw");
    assert_eq!(st.secrets[0].data, b"hunter2");
    assert_eq!(
        st.configs[0].labels.get("purpose").map(String::as_str),
        Some("test")
    );
    assert_eq!(st.warnings, ["Ignoring unsupported options: restart\n"]);
}

/// The error of a deploy of `text` (as compose.yml, with the FULL files beside it).
fn error_of(text: &str) -> String {
    let d = Dir::new();
    d.write("pw.txt", "x");
    let f = d.write("compose.yml", text);
    let e = stack(std::slice::from_ref(&f), &[]).expect_err("an error");
    let prefix = format!("Error: {}:", f.display());
    assert!(e.starts_with(&prefix), "{e}");
    e[prefix.len()..].to_string()
}

#[test]
fn errors_name_file_line_and_key() {
    let e = error_of("services:\n  web:\n    image: x\n    imagee: y\n");
    assert!(
        e.starts_with("4: services.web.imagee: unknown key \"imagee\""),
        "{e}"
    );
    let e = error_of("services:\n  web:\n    image: x\n    deploy:\n      replicas: 1\n      restart_policy:\n        delay: 5 seconds\n");
    assert!(
        e.starts_with(
            "7: services.web.deploy.restart_policy.delay: invalid duration \"5 seconds\""
        ),
        "{e}"
    );
    let e = error_of("services:\n  web:\n    image: x\n    secrets: [pw]\nsecrets:\n  pw:\n    file: ./missing.txt\n");
    assert!(e.starts_with("7: secrets.pw.file: cannot read"), "{e}");
    let e = error_of("services:\n  a:\n    image: x\n    ports: [\"80:80\"]\n  b:\n    image: x\n    ports:\n      - 80:81\n");
    assert!(
        e.contains("services.b.ports: port 80/tcp is published by both service a and service b"),
        "{e}"
    );
    let e = error_of(
        "services:\n  web:\n    image: x\n    ports:\n      - target: 80\n        publishd: 8080\n",
    );
    assert!(
        e.starts_with("6: services.web.ports[0].publishd: unknown key"),
        "{e}"
    );
    let e = error_of("services:\n  web:\n    image: x\n    deploy:\n      replicas: many\n");
    assert!(
        e.starts_with("5: services.web.deploy.replicas: invalid integer \"many\""),
        "{e}"
    );
    let e = error_of("services:\n  web:\n    image: x\n    networks: [nope]\n");
    assert!(e.contains("undefined network \"nope\""), "{e}");
    let e = error_of("services:\n  web:\n    image: x\n    volumes: [\"nope:/d\"]\n");
    assert!(
        e.starts_with("4: services.web.volumes[0]: undefined volume \"nope\""),
        "{e}"
    );
    let e = error_of("services:\n  web:\n    deploy: {}\n");
    assert!(e.contains("no image specified"), "{e}");
    let e = error_of("services:\n  web:\n    image: ${X:?set X}\n");
    assert!(
        e.starts_with("3: services.web.image: required variable X is missing a value: set X"),
        "{e}"
    );
}

const VOLUMES: &str = r#"
services:
  db:
    image: x
    volumes:
      - data:/var/lib/db
      - shared:/shared:ro
      - type: volume
        source: named
        target: /named
        volume: {nocopy: true}
      - /scratch
volumes:
  data:
    driver: local
    labels: {backup: daily}
  shared:
    external: true
  named:
    name: custom-name
"#;

#[test]
fn volumes_map_to_local_volume_mounts() {
    let d = Dir::new();
    let f = d.write("compose.yml", VOLUMES);
    let st = stack(&[f], &[]).unwrap();
    let db = svc(&st, "app_db");
    let m = &db.task.as_ref().unwrap().container.as_ref().unwrap().mounts;
    assert!(m.iter().all(|m| m.r#type == MountType::Volume as i32));
    let ns = |extra: &[(&str, &str)]| {
        let mut l: std::collections::BTreeMap<String, String> = extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        l.insert("com.docker.stack.namespace".into(), "app".into());
        l
    };
    assert_eq!(
        (
            m[0].source.as_str(),
            m[0].target.as_str(),
            m[0].volume_driver.as_str()
        ),
        ("app_data", "/var/lib/db", "local")
    );
    assert_eq!(m[0].volume_labels, ns(&[("backup", "daily")]));
    assert!(!m[0].volume_nocopy && !m[0].read_only);
    // An external volume keeps its name and is not the stack's to label.
    assert_eq!((m[1].source.as_str(), m[1].read_only), ("shared", true));
    assert!(m[1].volume_labels.is_empty());
    assert_eq!(m[2].source, "custom-name");
    assert_eq!(m[2].volume_labels, ns(&[]));
    assert!(m[2].volume_nocopy);
    // Anonymous.
    assert_eq!(
        (m[3].source.as_str(), m[3].target.as_str()),
        ("", "/scratch")
    );
}

#[test]
fn volume_drivers_and_options_other_than_local_are_refused() {
    let base = "services:\n  web:\n    image: x\n    volumes: [\"data:/d\"]\nvolumes:\n  data:\n";
    let e = error_of(&format!("{base}    driver: rexray\n"));
    assert!(
        e.starts_with("7: volumes.data.driver: volume driver \"rexray\" is not supported"),
        "{e}"
    );
    let e = error_of(&format!("{base}    driver_opts: {{type: nfs}}\n"));
    assert!(
        e.starts_with("7: volumes.data.driver_opts: volume option \"type\" is not supported"),
        "{e}"
    );
}

#[test]
fn later_files_override_and_errors_name_their_file() {
    let d = Dir::new();
    let a = d.write(
        "a.yml",
        "services:\n  web:\n    image: one\n    deploy:\n      replicas: 2\n",
    );
    let b = d.write("b.yml", "services:\n  web:\n    image: two\n");
    let st = stack(&[a.clone(), b.clone()], &[]).unwrap();
    let web = svc(&st, "app_web");
    assert_eq!(
        web.task.as_ref().unwrap().container.as_ref().unwrap().image,
        "two"
    );
    assert_eq!(
        web.mode,
        Some(service_spec::Mode::Replicated(ReplicatedService {
            replicas: 2
        }))
    );
    let bad = d.write("c.yml", "services:\n  web:\n    stop_grace_period: soon\n");
    let e = stack(&[a, bad.clone()], &[]).unwrap_err();
    assert!(
        e.starts_with(&format!(
            "Error: {}:3: services.web.stop_grace_period",
            bad.display()
        )),
        "{e}"
    );
}

//! `swarm stack` for real, in the lab: a three-service compose file (a web front end
//! publishing a port, an app tier, a database tier; a secret, a config, two networks,
//! healthchecks, deploy policies) deploys, answers through the published port from outside
//! the cluster, is deployed again with one changed image (only that service is updated), and
//! `stack rm` removes every service, network, secret and config it created and nothing else.
//! Files with errors (unknown key, bad duration, missing secret file, port clash) are refused
//! with file, line and key, and create nothing. The database's named volume is `shop_data` on
//! its node, labelled with the stack; its data is seen by the db task restarted on the same
//! node and stays after `stack rm` (as in Docker).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tests::lab::testing::{test_lab as lab, wait_running, LONG};
use tests::lab::{Lab, LabNode};
use tests::{wait_for, AgentClient, CliOutput};

/// `swarm stack deploy -c FILE… STACK` on `node`, with `REG` (the lab registry) in its
/// environment for the files' `${REG}`.
fn deploy(lab: &Lab, node: &LabNode, files: &[&Path], stack: &str) -> CliOutput {
    let mut cmd = node
        .command(tests::swarm_bin())
        .unwrap_or_else(|e| panic!("{e:#}"));
    cmd.arg("-H")
        .arg(format!("unix://{}", node.socket().display()))
        .args(["stack", "deploy"]);
    for f in files {
        cmd.arg("-c").arg(f);
    }
    cmd.arg(stack).env("REG", lab.registry());
    CliOutput::of(cmd.output(), "swarm stack deploy")
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    p
}

/// Names of the objects `ls -q`-style commands list (second column of `ls`).
fn names(node: &LabNode, kind: &str) -> Vec<String> {
    let out = node.swarm_ok(&[kind, "ls", "--format", "json"]);
    let mut v: Vec<String> = out
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            tests::json(l)["spec"]["name"]
                .as_str()
                .unwrap_or_else(|| panic!("no spec.name in {l}"))
                .to_string()
        })
        .collect();
    v.sort();
    v
}

const STACK: &str = r#"
version: "3.8"
services:
  web:
    image: ${REG}/whoami:latest
    ports:
      - "18080:80"
    networks: [front]
    labels:
      tier: web
    healthcheck:
      test: ["CMD", "/whoami", "get", "http://127.0.0.1:80/"]
      interval: 2s
      timeout: 2s
      retries: 3
    deploy:
      replicas: 2
      labels:
        tier: web
      update_config:
        parallelism: 1
        order: start-first
      restart_policy:
        condition: any
        delay: 1s
  app:
    image: ${REG}/whoami:${APP_TAG:-latest}
    networks: [front, back]
    configs:
      - source: app_conf
        target: /etc/app.conf
    deploy:
      resources:
        limits: {memory: 64M}
  db:
    image: ${REG}/whoami:latest
    networks: [back]
    secrets:
      - source: db_pw
        target: db_pw
        mode: 0400
    healthcheck:
      test: ["CMD", "/whoami", "get", "http://127.0.0.1:80/"]
      interval: 2s
    stop_grace_period: 2s
    restart: always
    volumes:
      - data:/var/lib/db
    deploy:
      placement:
        constraints: [node.role == worker]
networks:
  front:
  back:
    attachable: true
secrets:
  db_pw:
    file: ./db_pw.txt
configs:
  app_conf:
    file: ./app.conf
volumes:
  data:
    labels: {tier: db}
"#;

#[test]
fn a_compose_stack_deploys_updates_one_service_and_is_removed_whole() {
    let (_g, lab) = lab(1, 1);
    let m = lab.node(1);
    let dir = lab.root().join("stack");
    std::fs::create_dir_all(&dir).unwrap();
    write(&dir, "db_pw.txt", "s3cret-pw");
    write(&dir, "app.conf", "listen=1\n");
    let file = write(&dir, "docker-compose.yml", STACK);

    // Objects made outside the stack, which `stack rm` must leave alone.
    m.swarm_ok(&["network", "create", "-d", "overlay", "outside"]);
    let before_nets = names(m, "network");
    let before_secrets = names(m, "secret");
    let before_configs = names(m, "config");

    let out = deploy(&lab, m, &[&file], "shop");
    assert!(out.ok(), "deploy: {}\n{}", out.stderr, lab.logs());
    assert!(
        out.stderr.contains("Ignoring unsupported options: restart"),
        "{}",
        out.stderr
    );
    for line in [
        "Creating network shop_front",
        "Creating network shop_back",
        "Creating secret shop_db_pw",
        "Creating config shop_app_conf",
        "Creating service shop_web",
        "Creating service shop_app",
        "Creating service shop_db",
    ] {
        assert!(out.stdout.contains(line), "{line} in:\n{}", out.stdout);
    }
    let web = wait_running(&lab, "shop_web", 2);
    let app = wait_running(&lab, "shop_app", 1);
    let db = wait_running(&lab, "shop_db", 1);
    // The db's named volume on its node, labelled with the stack; data written there now
    // must outlive the stack.
    let db_node = tests::lab::testing::node_of(&lab, &db[0]);
    let volume = db_node.data_root().join("volumes/shop_data");
    let labels = std::fs::read_to_string(volume.join("labels.json")).unwrap();
    assert!(
        labels.contains("\"com.docker.stack.namespace\": \"shop\"") && labels.contains("tier"),
        "{labels}"
    );
    write(&volume.join("_data"), "marker", "kept");

    // From outside the cluster (the underlay namespace, as a machine on the nodes' LAN),
    // through the published port of any node.
    let addr = format!("{}:18080", lab.node(2).ip());
    let mut page = String::new();
    wait_for(Duration::from_secs(30), || {
        let a = addr.clone();
        match lab.in_underlay(move || tests::helpers::http_get(&a, "/")) {
            Ok(p) => {
                page = p;
                true
            }
            Err(_) => false,
        }
    })
    .unwrap_or_else(|e| panic!("{addr} never answered: {e:#}\n{}", lab.logs()));
    assert!(page.contains("Hostname:"), "{page}");

    // stack ls / services / ps.
    let ls = m.swarm_ok(&["stack", "ls"]);
    assert!(
        ls.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["shop", "3"]),
        "{ls}"
    );
    let services = m.swarm_ok(&["stack", "services", "shop"]);
    for s in ["shop_web", "shop_app", "shop_db"] {
        assert!(services.contains(s), "{services}");
    }
    assert!(services.contains("*:18080->80/tcp"), "{services}");
    let ps = m.swarm_ok(&["stack", "ps", "-q", "shop"]);
    assert_eq!(ps.lines().count(), 4, "{ps}");
    // The deploy's labels, through `service ls --filter` as scripts use it.
    let web_id = m
        .services()
        .unwrap()
        .into_iter()
        .find(|s| s.spec.as_ref().is_some_and(|p| p.name == "shop_web"))
        .map(|s| s.id)
        .unwrap();
    assert_eq!(
        m.swarm_ok(&["service", "ls", "-q", "--filter", "label=tier=web"])
            .trim(),
        &web_id[..12]
    );

    // Deploy again with the app's image changed (same content, another tag): only the app
    // is updated; the web and db tasks stay.
    let versions = |name: &str| {
        m.services()
            .unwrap()
            .into_iter()
            .find(|s| s.spec.as_ref().is_some_and(|p| p.name == name))
            .and_then(|s| s.meta)
            .map(|m| m.version)
    };
    let (web_v, db_v) = (versions("shop_web"), versions("shop_db"));
    push_tag(&lab, "v2");
    let mut cmd = m.command(tests::swarm_bin()).unwrap();
    cmd.arg("-H")
        .arg(format!("unix://{}", m.socket().display()))
        .args(["stack", "deploy", "-c"])
        .arg(&file)
        .arg("shop")
        .env("REG", lab.registry())
        .env("APP_TAG", "v2");
    let again = CliOutput::of(cmd.output(), "stack deploy");
    assert!(again.ok(), "{}", again.stderr);
    assert!(
        again.stdout.contains("Updating service shop_app"),
        "{}",
        again.stdout
    );
    assert!(
        !again.stdout.contains("shop_web") && !again.stdout.contains("shop_db"),
        "only the app changed:\n{}",
        again.stdout
    );
    assert!(!again.stdout.contains("Creating"), "{}", again.stdout);
    assert_eq!(versions("shop_web"), web_v);
    assert_eq!(versions("shop_db"), db_v);
    wait_for(LONG, || {
        let tasks = tests::running(&m.tasks("shop_app").unwrap_or_default())
            .into_iter()
            .cloned()
            .collect::<Vec<_>>();
        tasks.len() == 1
            && tasks[0].id != app[0].id
            && tasks[0]
                .spec
                .as_ref()
                .and_then(|s| s.container.as_ref())
                .is_some_and(|c| c.image.contains("/whoami:v2@sha256:"))
    })
    .unwrap_or_else(|e| panic!("the app was not updated: {e:#}\n{}", lab.logs()));
    let ids = |name: &str| {
        let mut v: Vec<String> = tests::running(&m.tasks(name).unwrap())
            .into_iter()
            .map(|t| t.id.clone())
            .collect();
        v.sort();
        v
    };
    let mut web_ids: Vec<String> = web.iter().map(|t| t.id.clone()).collect();
    web_ids.sort();
    assert_eq!(ids("shop_web"), web_ids, "web tasks untouched");
    assert_eq!(ids("shop_db"), vec![db[0].id.clone()], "db task untouched");

    // The db task restarted (`service update --force`) on the same node: the new container
    // finds what was written to the volume before, at the mount's target.
    m.swarm_ok(&["service", "update", "--force", "-d", "shop_db"]);
    let mut db2 = None;
    wait_for(LONG, || {
        db2 = tests::running(&m.tasks("shop_db").unwrap_or_default())
            .into_iter()
            .find(|t| t.id != db[0].id)
            .cloned();
        db2.is_some()
    })
    .unwrap_or_else(|e| panic!("the db task was not replaced: {e:#}\n{}", lab.logs()));
    let db2 = db2.unwrap();
    let db2_node = tests::lab::testing::node_of(&lab, &db2);
    assert_eq!(
        db2_node.name(),
        db_node.name(),
        "constrained to the one worker"
    );
    let pid = db2_node.task_pid(&db2.id).unwrap();
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{pid}/root/var/lib/db/marker")).unwrap(),
        "kept",
        "the restarted db task sees the volume's data"
    );

    // stack rm: everything it made, and nothing else.
    let rm = m.swarm_ok(&["stack", "rm", "shop"]);
    for line in [
        "Removing service shop_web",
        "Removing secret shop_db_pw",
        "Removing config shop_app_conf",
        "Removing network shop_front",
        "Removing network shop_back",
    ] {
        assert!(rm.contains(line), "{line} in:\n{rm}");
    }
    assert!(m.services().unwrap().is_empty());
    assert_eq!(
        std::fs::read_to_string(volume.join("_data/marker")).unwrap(),
        "kept",
        "stack rm leaves volume data"
    );
    assert_eq!(names(m, "network"), before_nets);
    assert_eq!(names(m, "secret"), before_secrets);
    assert_eq!(names(m, "config"), before_configs);
    let gone = m.swarm(&["stack", "ps", "shop"]);
    assert!(
        !gone.ok() && gone.stderr.contains("Nothing found in stack: shop"),
        "{gone:?}"
    );
}

/// Pushes the whoami image again as `whoami:TAG` (same content, so the same digest).
fn push_tag(lab: &Lab, tag: &'static str) {
    let image = tests::images::whoami_image(&lab.config().whoami).unwrap();
    let addr = lab.registry();
    lab.in_underlay(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            swarm_oci::Registry::insecure(&addr)?
                .push(&image, "whoami", tag)
                .await?;
            anyhow::Ok(())
        })
    })
    .unwrap_or_else(|e| panic!("push whoami:{tag}: {e:#}"));
}

#[test]
fn compose_files_with_errors_create_nothing() {
    let (_g, lab) = lab(1, 0);
    let m = lab.node(1);
    let dir = lab.root().join("bad");
    std::fs::create_dir_all(&dir).unwrap();
    // A service outside any stack holds 18081.
    m.create_service(&[
        "--name",
        "holder",
        "-p",
        "18081:80",
        &format!("{}/whoami:latest", lab.registry()),
    ]);
    let nets = names(m, "network");
    // Lines 1-6; each case adds from line 7 on.
    let ok_head =
        "networks:\n  n:\nservices:\n  web:\n    image: ${REG}/whoami\n    networks: [n]\n";
    let cases = [
        (
            "unknown.yml",
            format!("{ok_head}  extra:\n    image: x\n    replica: 2\n"),
            "unknown.yml:9: services.extra.replica: unknown key \"replica\"",
        ),
        (
            "duration.yml",
            format!("{ok_head}  db:\n    image: x\n    healthcheck:\n      interval: 10 parsecs\n"),
            "duration.yml:10: services.db.healthcheck.interval: invalid duration \"10 parsecs\"",
        ),
        (
            "secret.yml",
            format!("{ok_head}  s:\n    image: x\n    secrets: [pw]\nsecrets:\n  pw:\n    file: ./nowhere.txt\n"),
            "secret.yml:12: secrets.pw.file: cannot read",
        ),
        (
            "clash.yml",
            format!("{ok_head}  pub:\n    image: x\n    ports: [\"18081:80\"]\n"),
            "port 18081/tcp of service bad_pub is already published by service holder",
        ),
    ];
    for (name, text, want) in &cases {
        let f = write(&dir, name, text);
        let out = deploy(&lab, m, &[&f], "bad");
        assert!(!out.ok(), "{name} deployed: {}", out.stdout);
        assert!(
            out.stderr.contains(want),
            "{name}: want {want:?} in {:?}",
            out.stderr
        );
        assert!(out.stdout.is_empty(), "{name} wrote: {}", out.stdout);
    }
    let services: Vec<String> = m
        .services()
        .unwrap()
        .into_iter()
        .filter_map(|s| s.spec.map(|p| p.name))
        .collect();
    assert_eq!(services, ["holder"]);
    assert_eq!(names(m, "network"), nets);
    assert!(names(m, "secret").is_empty());
}

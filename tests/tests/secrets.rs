//! Secrets and configs for real, in the lab: a secret from stdin and a config from a file
//! reach a task's container as files with the asked owner and mode, the secret on a tmpfs;
//! only the node that runs the task receives them, nothing of them is written to any node's
//! disk, and they are gone from the node once the task is. Needs what `cargo xtask test`
//! installs (containerd, runc, docker-registry, busybox-static …). One lab at a time.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tests::lab::testing::{create, node_of, test_lab as lab, wait_running, LONG};
use tests::lab::LabNode;
use tests::{wait_for, AgentClient};

/// `swarm ARGS…` on `node` with `input` on its stdin; (exit ok, stdout, stderr).
fn swarm_with_stdin(node: &LabNode, args: &[&str], input: &[u8]) -> (bool, String, String) {
    let out = node.swarm_with_input(args, &[], input);
    (out.ok(), out.stdout, out.stderr)
}

/// Regular files under `dir` (not following symlinks, not crossing into `skip`) whose bytes
/// contain `needle`.
fn files_containing(dir: &Path, needle: &[u8], skip: &[PathBuf]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if skip.iter().any(|s| d.starts_with(s)) {
            continue;
        }
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            let p = e.path();
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() {
                if let Ok(bytes) = std::fs::read(&p) {
                    if bytes.windows(needle.len()).any(|w| w == needle) {
                        found.push(p);
                    }
                }
            }
        }
    }
    found
}

/// Mount points under `dir` (from /proc/self/mounts: the lab shares the host's mount
/// namespace).
fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.to_string_lossy().to_string();
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

#[test]
fn secrets_and_configs_reach_only_their_tasks_and_leave_no_trace() {
    let (_g, lab) = lab(1, 2);
    let m = lab.node(1);
    let busybox = format!("{}/busybox:latest", lab.registry());
    // Bytes no file of the lab holds by chance.
    let secret = format!("pw-{:016x}", rand_u64());
    let config = format!("listen={:016x}\n", rand_u64());

    // A secret from stdin, a config from a file.
    let (ok, secret_id, err) = swarm_with_stdin(
        m,
        &["secret", "create", "-l", "env=test", "db_pw", "-"],
        secret.as_bytes(),
    );
    assert!(ok, "secret create: {err}");
    let secret_id = secret_id.trim().to_string();
    let conf_file = lab.root().join("app.conf");
    std::fs::write(&conf_file, &config).unwrap();
    let config_id = m
        .swarm_ok(&["config", "create", "app.conf", &conf_file.to_string_lossy()])
        .trim()
        .to_string();
    std::fs::remove_file(&conf_file).unwrap();
    let (ok, _, err) = swarm_with_stdin(m, &["secret", "create", "db_pw", "-"], b"again");
    assert!(
        !ok && err.contains("secret db_pw already exists"),
        "duplicate name: {err}"
    );

    let ls = m.swarm_ok(&["secret", "ls"]);
    let header = ls.lines().next().unwrap_or_default();
    for col in ["ID", "NAME", "DRIVER", "CREATED", "UPDATED"] {
        assert!(header.contains(col), "{ls}");
    }
    assert!(ls.contains(&secret_id) && ls.contains("db_pw"), "{ls}");
    assert_eq!(
        m.swarm_ok(&["secret", "ls", "-q", "--filter", "label=env=test"])
            .trim(),
        secret_id
    );
    let inspect = m.swarm_ok(&["secret", "inspect", "db_pw"]);
    assert!(inspect.contains("\"Name\": \"db_pw\""), "{inspect}");
    assert!(
        !inspect.contains(&secret),
        "inspect shows no data: {inspect}"
    );
    let pretty = m.swarm_ok(&["config", "inspect", "--pretty", "app.conf"]);
    assert!(
        pretty.contains(&config),
        "a config's data is shown: {pretty}"
    );

    create(
        &lab,
        &[
            "--name",
            "web",
            "--constraint",
            "node.hostname==node2",
            "--secret",
            "source=db_pw,uid=1000,gid=1001,mode=0400",
            "--config",
            "source=app.conf,target=/etc/app.conf,mode=0440",
            &busybox,
            "sleep",
            "1000",
        ],
    );
    let task = wait_running(&lab, "web", 1).remove(0);
    let node = node_of(&lab, &task);
    assert_eq!(node.name(), "node2");
    let exec = |cmd: &[&str]| {
        lab.task_exec(&task, cmd)
            .unwrap_or_else(|e| panic!("{cmd:?}: {e:#}\n{}", lab.logs()))
    };
    assert_eq!(exec(&["cat", "/run/secrets/db_pw"]), secret);
    assert_eq!(
        exec(&[
            "/bin/busybox",
            "stat",
            "-c",
            "%u %g %a",
            "/run/secrets/db_pw"
        ])
        .trim(),
        "1000 1001 400"
    );
    let mounts = exec(&["cat", "/proc/mounts"]);
    let secrets_mount = mounts
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("/run/secrets"))
        .unwrap_or_else(|| panic!("no /run/secrets mount:\n{mounts}"));
    assert!(
        secrets_mount.contains(" tmpfs ") && secrets_mount.contains("ro,"),
        "{secrets_mount}"
    );
    assert_eq!(exec(&["cat", "/etc/app.conf"]), config);
    assert_eq!(
        exec(&["/bin/busybox", "stat", "-c", "%u %g %a", "/etc/app.conf"]).trim(),
        "0 0 440"
    );
    let svc = m.swarm_ok(&["service", "inspect", "web"]);
    assert!(svc.contains(&secret_id), "the reference: {svc}");
    assert!(!svc.contains(&secret), "no data in the service: {svc}");

    // Only node2's agent received them; node3 runs no task of the service.
    let log = |n: &LabNode| std::fs::read_to_string(n.agent_log()).unwrap_or_default();
    let received = format!("secret {secret_id} received");
    assert!(
        log(node).contains(&received),
        "node2 got the secret:\n{}",
        node.agent_log_tail()
    );
    // node1 (the manager, which stored it) and node3 run no task of it: their agents were
    // sent neither.
    for other in [lab.node(1), lab.node(3)] {
        let l = log(other);
        assert!(
            !l.contains(&received) && !l.contains(&format!("config {config_id} received")),
            "{} never received them:\n{}",
            other.name(),
            other.agent_log_tail()
        );
    }
    assert!(!log(lab.node(3)).contains(&secret_id));
    // No file of any node holds the secret: its data root, containerd's root and state, its
    // exec root (but node2's tmpfs of the task's files, which is memory), its logs. The
    // manager's Raft files are left out: the store keeps the secret in the clear until
    // encryption at rest (issue 16, item 3) lands; that item's test covers them.
    for n in lab.nodes() {
        let skip = vec![n.exec_root().join("files"), n.data_root().join("raft")];
        let found = files_containing(n.dir(), secret.as_bytes(), &skip);
        assert!(found.is_empty(), "{} has the secret in {found:?}", n.name());
    }
    assert!(
        files_containing(&lab.root().join("dns"), secret.as_bytes(), &[]).is_empty(),
        "the lab's shared files hold no secret"
    );

    // In use: refused, naming the service; free after --secret-rm.
    let o = m.swarm(&["secret", "rm", "db_pw"]);
    assert!(
        !o.ok()
            && o.stderr
                .contains("secret 'db_pw' is in use by the following service: web"),
        "{o:?}"
    );
    m.swarm_ok(&["service", "update", "-d", "--secret-rm", "db_pw", "web"]);
    m.swarm_ok(&["secret", "rm", "db_pw"]);
    assert!(!m.swarm_ok(&["secret", "ls"]).contains("db_pw"));

    // The service goes: its files go with its task, and node2 forgets the config.
    m.swarm_ok(&["service", "rm", "web"]);
    let files_dir = node.exec_root().join("files");
    wait_for(LONG, || {
        node.containerd_tasks().is_ok_and(|t| t.is_empty())
            && mounts_under(&files_dir).is_empty()
            && std::fs::read_dir(&files_dir).map_or(true, |mut d| d.next().is_none())
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: mounts {:?}\n{}",
            mounts_under(&files_dir),
            node.agent_log_tail()
        )
    });
    wait_for(Duration::from_secs(30), || {
        log(node).contains(&format!("config {config_id} forgotten"))
    })
    .unwrap_or_else(|e| panic!("{e}: node2 forgets the config\n{}", node.agent_log_tail()));
    m.swarm_ok(&["config", "rm", "app.conf"]);
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish()
}

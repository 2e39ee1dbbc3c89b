//! The multi-node lab (network namespaces, a containerd and a swarm-agent per node, a
//! registry). Needs root, containerd, runc, docker-registry, busybox-static, and the static
//! whoami binary: run with `cargo xtask test`, which installs and builds them.

use tests::lab::{Lab, LabConfig};
use tests::AgentClient;

#[test]
fn a_two_node_lab_forms_a_swarm_and_leaves_nothing_behind() {
    let cfg = LabConfig::for_tests(1, 1);
    let name = cfg.name.clone();
    let root = cfg.root.clone();
    let lab = Lab::up(cfg).unwrap_or_else(|e| panic!("{e:#}"));

    let out = lab.node(1).swarm_ok(&["node", "ls"]);
    assert_eq!(out.matches(" Ready ").count(), 2, "{out}");
    assert!(out.contains("node1") && out.contains("node2"), "{out}");
    // The worker reaches the manager and the registry over the underlay.
    let ping = lab.node(2).exec(&[
        "busybox",
        "wget",
        "-q",
        "-O",
        "-",
        "http://10.77.0.254:5000/v2/",
    ]);
    assert!(ping.ok(), "registry from node2: {ping:?}");
    let netns = lab.node(2).netns();

    drop(lab);
    let left: Vec<String> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(&format!("{name}-")))
        .collect();
    assert!(left.is_empty(), "namespaces left after drop: {left:?}");
    assert!(!std::path::Path::new("/run/netns").join(netns).exists());
    assert!(!root.exists(), "{} is still there", root.display());
}

/// Node handles drive real daemons, and a lab with running containers is removed entirely
/// (cgroups, mounts of task namespaces and rootfs, runc state in /run/containerd).
#[test]
fn node_handles_restart_daemons_and_down_removes_containers() {
    use std::time::Duration;
    use tests::{running, wait_for};

    let lab = Lab::up(LabConfig::for_tests(1, 1)).unwrap_or_else(|e| panic!("{e:#}"));
    let (name, root) = (lab.name().to_string(), lab.root().to_path_buf());
    let m = lab.node(1);
    let image = format!("{}/whoami:latest", lab.registry());
    m.swarm_ok(&[
        "service",
        "create",
        "--name",
        "w",
        "--replicas",
        "2",
        &image,
    ]);
    wait_for(Duration::from_secs(60), || {
        m.tasks("w").is_ok_and(|t| running(&t).len() == 2)
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            m.swarm(&["service", "ps", "w"]).stdout,
            lab.logs()
        )
    });
    let ids: Vec<String> = lab
        .nodes()
        .iter()
        .flat_map(|n| n.containerd_containers().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(!lab.node(1).containerd_snapshots().unwrap().is_empty());

    let w = lab.node(2);
    w.kill_agent().unwrap();
    assert!(!w.agent_running());
    w.start_agent().unwrap();
    assert!(w.agent_running());
    w.kill_containerd().unwrap();
    assert!(w.containerd_containers().is_err());
    w.start_containerd().unwrap();
    w.containerd_containers().unwrap();
    lab.stop_registry().unwrap();
    assert!(!lab.registry_running());
    lab.start_registry().unwrap();
    assert!(w.metrics().unwrap().contains("swarm_"));
    lab.wait_ready(Duration::from_secs(60)).unwrap();

    drop(lab);
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(root.to_str().unwrap()), "{mounts}");
    for h in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let cg = h.path().join(format!("{name}-node1"));
        assert!(!cg.exists(), "{} is left", cg.display());
    }
    for id in &ids {
        let runc = std::path::Path::new("/run/containerd/runc/swarm").join(id);
        assert!(!runc.exists(), "{} is left", runc.display());
    }
}

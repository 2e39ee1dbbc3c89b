//! The OCI runtime spec (runtime-spec 1.0 JSON) of a task, from the image config and the task's
//! ContainerSpec, following Docker: `command` replaces the image's Entrypoint, `args` replace
//! its Cmd; env is the image's then the task's (later wins); the defaults below are Docker's.

use std::collections::BTreeMap;

use proto::Task;
use serde_json::{json, Value};
use swarm_oci::ImageConfig;

use super::client::ContainerdError;

/// `type_url` of the spec in `Container.spec`.
pub const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Docker's default capability set.
const CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Node-side inputs of the spec.
#[derive(Clone, Debug, Default)]
pub struct SpecOptions {
    /// Containerd container ID (the task ID).
    pub container_id: String,
    /// Parent cgroup path; the container's cgroup is `/<cgroup_parent>/<container_id>`.
    pub cgroup_parent: String,
    /// Network namespace to join (a path such as `/run/netns/<name>`); `None` = a new, empty
    /// network namespace. The agent's network code prepares the namespace with the task's
    /// interfaces and passes its path here.
    pub netns_path: Option<String>,
}

/// Process arguments like Docker: `command` replaces Entrypoint, `args` replace Cmd (and a
/// `command` without `args` also drops the image's Cmd).
pub fn process_args(task: &Task, config: &ImageConfig) -> Vec<String> {
    let c = task.spec.as_ref().and_then(|s| s.container.as_ref());
    let img = config.config.as_ref();
    let (command, args) = match c {
        Some(c) => (c.command.clone(), c.args.clone()),
        None => (Vec::new(), Vec::new()),
    };
    let entrypoint = if command.is_empty() {
        img.and_then(|i| i.entrypoint.clone()).unwrap_or_default()
    } else {
        command.clone()
    };
    let cmd = if !args.is_empty() {
        args
    } else if command.is_empty() {
        img.and_then(|i| i.cmd.clone()).unwrap_or_default()
    } else {
        Vec::new()
    };
    entrypoint.into_iter().chain(cmd).collect()
}

/// Image env then task env; a later `KEY=` replaces an earlier one; PATH defaults to Docker's.
pub fn process_env(task: &Task, config: &ImageConfig) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    let mut vals: BTreeMap<String, String> = BTreeMap::new();
    let image_env = config
        .config
        .as_ref()
        .and_then(|c| c.env.clone())
        .unwrap_or_default();
    let task_env = task
        .spec
        .as_ref()
        .and_then(|s| s.container.as_ref())
        .map(|c| c.env.clone())
        .unwrap_or_default();
    for kv in image_env.into_iter().chain(task_env) {
        let key = kv.split('=').next().unwrap_or("").to_string();
        if key.is_empty() {
            continue;
        }
        if !vals.contains_key(&key) {
            order.push(key.clone());
        }
        vals.insert(key, kv);
    }
    let mut out: Vec<String> = order.iter().filter_map(|k| vals.get(k).cloned()).collect();
    if !vals.contains_key("PATH") {
        out.insert(0, DEFAULT_PATH.to_string());
    }
    out
}

/// `uid[:gid]`, numeric only. Empty = root.
pub fn parse_user(user: &str) -> Result<(u32, u32), ContainerdError> {
    if user.is_empty() {
        return Ok((0, 0));
    }
    let bad = || {
        ContainerdError::Invalid(format!(
            "user {user:?}: only numeric uid or uid:gid is supported (names need the image's /etc/passwd, which this executor does not read)"
        ))
    };
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let uid: u32 = u.parse().map_err(|_| bad())?;
    let gid: u32 = match g {
        Some(g) => g.parse().map_err(|_| bad())?,
        None => 0,
    };
    Ok((uid, gid))
}

/// The hostname: the spec's, else the first 12 characters of the task ID (like Docker's
/// container ID prefix).
pub fn hostname(task: &Task) -> String {
    let h = task
        .spec
        .as_ref()
        .and_then(|s| s.container.as_ref())
        .map(|c| c.hostname.clone())
        .unwrap_or_default();
    if !h.is_empty() {
        return h;
    }
    task.id.chars().take(12).collect()
}

/// Labels set on the containerd container.
pub fn container_labels(task: &Task) -> std::collections::HashMap<String, String> {
    let mut l = std::collections::HashMap::new();
    if let Some(c) = task.spec.as_ref().and_then(|s| s.container.as_ref()) {
        for (k, v) in &c.labels {
            l.insert(k.clone(), v.clone());
        }
    }
    let name = format!("{}.{}.{}", task.service_name, task.slot, task.id);
    l.insert("com.docker.swarm.node.id".into(), task.node_id.clone());
    l.insert(
        "com.docker.swarm.service.id".into(),
        task.service_id.clone(),
    );
    l.insert(
        "com.docker.swarm.service.name".into(),
        task.service_name.clone(),
    );
    l.insert("com.docker.swarm.task.id".into(), task.id.clone());
    l.insert("com.docker.swarm.task.name".into(), name);
    l
}

/// The full runtime spec. The rootfs comes from the task's rootfs mounts (containerd mounts
/// them at `<bundle>/rootfs`).
pub fn runtime_spec(
    task: &Task,
    config: &ImageConfig,
    opts: &SpecOptions,
) -> Result<Value, ContainerdError> {
    let c = task.spec.as_ref().and_then(|s| s.container.as_ref());
    let img = config.config.as_ref();
    let args = process_args(task, config);
    if args.is_empty() {
        return Err(ContainerdError::Invalid(
            "no command: the image has neither Entrypoint nor Cmd and the task sets no command"
                .into(),
        ));
    }
    let user = c
        .map(|c| c.user.clone())
        .filter(|u| !u.is_empty())
        .or_else(|| img.and_then(|i| i.user.clone()))
        .unwrap_or_default();
    let (uid, gid) = parse_user(&user)?;
    let cwd = c
        .map(|c| c.dir.clone())
        .filter(|d| !d.is_empty())
        .or_else(|| {
            img.and_then(|i| i.working_dir.clone())
                .filter(|d| !d.is_empty())
        })
        .unwrap_or_else(|| "/".to_string());
    if !cwd.starts_with('/') {
        return Err(ContainerdError::Invalid(format!(
            "working directory {cwd:?} must be an absolute path"
        )));
    }
    let caps: Vec<&str> = CAPS.to_vec();
    let network = match &opts.netns_path {
        Some(p) => json!({"type": "network", "path": p}),
        None => json!({"type": "network"}),
    };
    let mut resources = json!({
        "devices": [{"allow": false, "access": "rwm"}],
    });
    if let Some(limits) = task
        .spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.limits.as_ref())
    {
        if limits.memory_bytes > 0 {
            resources["memory"] = json!({"limit": limits.memory_bytes});
        }
        if limits.nano_cpus > 0 {
            let period: i64 = 100_000;
            let quota = limits.nano_cpus.saturating_mul(period) / 1_000_000_000;
            resources["cpu"] = json!({"quota": quota.max(1000), "period": period});
        }
    }
    let cgroups_path = format!(
        "/{}/{}",
        opts.cgroup_parent.trim_matches('/'),
        opts.container_id
    )
    .replace("//", "/");
    Ok(json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": uid, "gid": gid},
            "args": args,
            "env": process_env(task, config),
            "cwd": cwd,
            "capabilities": {
                "bounding": caps, "effective": caps, "permitted": caps,
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024u64, "soft": 1024u64}],
            "noNewPrivileges": true,
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": hostname(task),
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["ro", "nosuid", "noexec", "nodev"]},
        ],
        "linux": {
            "resources": resources,
            "cgroupsPath": cgroups_path,
            "namespaces": [
                {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, network,
            ],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
                "/proc/scsi",
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
            ],
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{ContainerSpec, ResourceRequirements, Resources, TaskSpec};
    use swarm_oci::spec::ContainerConfig;

    fn image(entry: &[&str], cmd: &[&str], env: &[&str]) -> ImageConfig {
        let v = |s: &[&str]| {
            if s.is_empty() {
                None
            } else {
                Some(s.iter().map(|x| x.to_string()).collect())
            }
        };
        ImageConfig {
            config: Some(ContainerConfig {
                entrypoint: v(entry),
                cmd: v(cmd),
                env: v(env),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn task(command: &[&str], args: &[&str], env: &[&str]) -> Task {
        let s = |x: &[&str]| x.iter().map(|y| y.to_string()).collect();
        Task {
            id: "abcdefghijklmnopqrstuvwxy".into(),
            service_name: "web".into(),
            slot: 2,
            spec: Some(TaskSpec {
                container: Some(ContainerSpec {
                    command: s(command),
                    args: s(args),
                    env: s(env),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn args_follow_docker_rules() {
        let img = image(&["/ep"], &["a", "b"], &[]);
        assert_eq!(process_args(&task(&[], &[], &[]), &img), ["/ep", "a", "b"]);
        assert_eq!(process_args(&task(&[], &["x"], &[]), &img), ["/ep", "x"]);
        assert_eq!(process_args(&task(&["/c"], &[], &[]), &img), ["/c"]);
        assert_eq!(process_args(&task(&["/c"], &["y"], &[]), &img), ["/c", "y"]);
    }

    #[test]
    fn env_merges_and_defaults_path() {
        let img = image(&[], &["sh"], &["A=1", "B=2"]);
        let env = process_env(&task(&[], &[], &["B=3", "C=4"]), &img);
        assert_eq!(env, [DEFAULT_PATH, "A=1", "B=3", "C=4"]);
        let img = image(&[], &["sh"], &["PATH=/bin"]);
        assert_eq!(process_env(&task(&[], &[], &[]), &img), ["PATH=/bin"]);
    }

    #[test]
    fn users_are_numeric() {
        assert_eq!(parse_user("").unwrap(), (0, 0));
        assert_eq!(parse_user("1000").unwrap(), (1000, 0));
        assert_eq!(parse_user("1000:50").unwrap(), (1000, 50));
        let e = parse_user("nobody").unwrap_err().to_string();
        assert!(e.contains("numeric"), "{e}");
    }

    #[test]
    fn spec_has_hostname_cgroup_limits_and_namespaces() {
        let mut t = task(&["sleep"], &["1"], &[]);
        t.spec.as_mut().unwrap().resources = Some(ResourceRequirements {
            limits: Some(Resources {
                nano_cpus: 500_000_000,
                memory_bytes: 64 << 20,
            }),
            reservations: None,
        });
        let opts = SpecOptions {
            container_id: t.id.clone(),
            cgroup_parent: "swarm".into(),
            netns_path: None,
        };
        let s = runtime_spec(&t, &image(&[], &[], &[]), &opts).unwrap();
        assert_eq!(s["hostname"], "abcdefghijkl");
        assert_eq!(
            s["linux"]["cgroupsPath"],
            "/swarm/abcdefghijklmnopqrstuvwxy"
        );
        assert_eq!(s["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(s["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(s["process"]["args"], json!(["sleep", "1"]));
        let ns: Vec<&str> = s["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(ns, ["pid", "ipc", "uts", "mount", "network"]);
        let labels = container_labels(&t);
        assert_eq!(
            labels["com.docker.swarm.task.name"],
            "web.2.abcdefghijklmnopqrstuvwxy"
        );
    }

    #[test]
    fn no_command_is_an_error() {
        let e = runtime_spec(
            &task(&[], &[], &[]),
            &image(&[], &[], &[]),
            &SpecOptions::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("no command"), "{e}");
    }
}

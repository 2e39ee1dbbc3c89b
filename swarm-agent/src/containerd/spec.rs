//! The OCI runtime spec (runtime-spec 1.0 JSON) of a task, from the image config and the task's
//! ContainerSpec, following Docker: `command` replaces the image's Entrypoint, `args` replace
//! its Cmd; env is the image's then the task's (later wins); the defaults below are Docker's.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use proto::{MountType, Task};
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

/// Files of the image and the node the spec needs (kept apart from [`SpecOptions`] so that
/// callers building `SpecOptions` field by field keep compiling).
#[derive(Clone, Debug, Default)]
pub struct SpecFiles {
    /// The image's `/etc/passwd` ([`super::image::read_image_file`]); `None` when it has none.
    /// Needed for user names, the primary group of a numeric user and supplementary groups.
    pub passwd: Option<String>,
    /// The image's `/etc/group`; `None` when it has none.
    pub group: Option<String>,
    /// A directory holding `hostname`, `hosts` and `resolv.conf` ([`write_etc_files`]),
    /// bind-mounted at `/etc/hostname`, `/etc/hosts` and `/etc/resolv.conf` (read-only when
    /// the root filesystem is, like Docker). `None`: the image's files are left as they are.
    pub etc_dir: Option<PathBuf>,
    /// The directories of the task's volume mounts on the node, by mount target
    /// ([`super::volumes::prepare`]); a volume mount missing here is an error.
    pub volumes: std::collections::BTreeMap<String, PathBuf>,
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

/// The user a container process runs as (OCI `process.user`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecUser {
    pub uid: u32,
    pub gid: u32,
    /// The primary group first, then the user's groups from `/etc/group` (when the group was
    /// not given explicitly), then the task's `groups`. No duplicates.
    pub additional_gids: Vec<u32>,
}

/// The largest uid/gid runc accepts.
const MAX_ID: i64 = i32::MAX as i64;

fn range_err() -> ContainerdError {
    ContainerdError::Invalid(format!("uids and gids must be in range 0-{MAX_ID}"))
}

fn parse_id(s: &str) -> Option<Result<u32, ContainerdError>> {
    let v: i64 = s.parse().ok()?;
    Some(if (0..=MAX_ID).contains(&v) {
        Ok(v as u32)
    } else {
        Err(range_err())
    })
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

/// Lines of an /etc/passwd or /etc/group file split on `:`; blank lines and comments skipped.
fn records(content: &str) -> impl Iterator<Item = Vec<&str>> {
    content
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split(':').collect())
}

/// Numeric fields that do not parse count as 0, as in runc's parser.
fn field_id(fields: &[&str], i: usize) -> u32 {
    fields
        .get(i)
        .and_then(|v| v.trim().parse::<u32>().ok())
        .unwrap_or(0)
}

fn passwd_entries(content: &str) -> Vec<PasswdEntry<'_>> {
    records(content)
        .map(|f| PasswdEntry {
            name: f.first().copied().unwrap_or(""),
            uid: field_id(&f, 2),
            gid: field_id(&f, 3),
        })
        .collect()
}

fn group_entries(content: &str) -> Vec<GroupEntry<'_>> {
    records(content)
        .map(|f| GroupEntry {
            name: f.first().copied().unwrap_or(""),
            gid: field_id(&f, 2),
            members: f
                .get(3)
                .map(|m| {
                    m.split(',')
                        .map(str::trim)
                        .filter(|m| !m.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect()
}

/// Resolves `user` (`""`, `name`, `uid`, `name:group`, `uid:gid` ...) against the image's
/// `/etc/passwd` and `/etc/group` the way Docker (runc's `GetExecUser`) does: a numeric user
/// or group works without an entry; a name must have one ("unable to find user NAME: no
/// matching entries in passwd file"); a user found by name or uid brings its primary group and,
/// unless the group is explicit, its supplementary groups. `group_add` (`--group`) entries are
/// group names or GIDs.
pub fn resolve_user(
    user: &str,
    passwd: Option<&str>,
    group: Option<&str>,
    group_add: &[String],
) -> Result<ExecUser, ContainerdError> {
    let (user_arg, group_arg) = match user.split_once(':') {
        Some((u, g)) => (u, g),
        None => (user, ""),
    };
    let users = passwd.map(passwd_entries).unwrap_or_default();
    let groups = group.map(group_entries).unwrap_or_default();
    let uid_arg = parse_id(user_arg).transpose()?;
    let (mut uid, mut gid) = (0u32, 0u32);
    let found = users.iter().find(|u| match (user_arg, uid_arg) {
        ("", _) => u.uid == 0,
        (_, Some(id)) => u.uid == id,
        (name, None) => u.name == name,
    });
    let mut matched_name = "";
    match found {
        Some(u) => {
            uid = u.uid;
            gid = u.gid;
            matched_name = u.name;
        }
        None if user_arg.is_empty() => {}
        None => match uid_arg {
            Some(id) => uid = id,
            None => {
                return Err(ContainerdError::Invalid(format!(
                    "unable to find user {user_arg}: no matching entries in passwd file"
                )))
            }
        },
    }
    let mut sgids = Vec::new();
    if !group_arg.is_empty() {
        let gid_arg = parse_id(group_arg).transpose()?;
        let g = groups.iter().find(|g| match gid_arg {
            Some(id) => g.gid == id,
            None => g.name == group_arg,
        });
        gid = match (g, gid_arg) {
            (Some(g), _) => g.gid,
            (None, Some(id)) => id,
            (None, None) => {
                return Err(ContainerdError::Invalid(format!(
                    "unable to find group {group_arg}: no matching entries in group file"
                )))
            }
        };
    } else if !matched_name.is_empty() {
        sgids = groups
            .iter()
            .filter(|g| g.members.contains(&matched_name))
            .map(|g| g.gid)
            .collect();
    }
    let mut additional = vec![gid];
    for g in sgids {
        if !additional.contains(&g) {
            additional.push(g);
        }
    }
    for ag in group_add {
        let g = match groups
            .iter()
            .find(|g| g.name == ag.as_str() || g.gid.to_string() == *ag)
        {
            Some(g) => g.gid,
            None => match parse_id(ag) {
                Some(r) => r?,
                None => {
                    return Err(ContainerdError::Invalid(format!(
                        "unable to find group {ag}: no matching entries in group file"
                    )))
                }
            },
        };
        if !additional.contains(&g) {
            additional.push(g);
        }
    }
    Ok(ExecUser {
        uid,
        gid,
        additional_gids: additional,
    })
}

/// Linux signal names (without `SIG`) and numbers, as Docker's `signal.SignalMap` knows them.
const SIGNALS: &[(&str, i32)] = &[
    ("ABRT", libc::SIGABRT),
    ("ALRM", libc::SIGALRM),
    ("BUS", libc::SIGBUS),
    ("CHLD", libc::SIGCHLD),
    ("CLD", libc::SIGCHLD),
    ("CONT", libc::SIGCONT),
    ("FPE", libc::SIGFPE),
    ("HUP", libc::SIGHUP),
    ("ILL", libc::SIGILL),
    ("INT", libc::SIGINT),
    ("IO", libc::SIGIO),
    ("IOT", libc::SIGIOT),
    ("KILL", libc::SIGKILL),
    ("PIPE", libc::SIGPIPE),
    ("POLL", libc::SIGPOLL),
    ("PROF", libc::SIGPROF),
    ("PWR", libc::SIGPWR),
    ("QUIT", libc::SIGQUIT),
    ("SEGV", libc::SIGSEGV),
    ("STKFLT", libc::SIGSTKFLT),
    ("STOP", libc::SIGSTOP),
    ("SYS", libc::SIGSYS),
    ("TERM", libc::SIGTERM),
    ("TRAP", libc::SIGTRAP),
    ("TSTP", libc::SIGTSTP),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
    ("URG", libc::SIGURG),
    ("USR1", libc::SIGUSR1),
    ("USR2", libc::SIGUSR2),
    ("VTALRM", libc::SIGVTALRM),
    ("WINCH", libc::SIGWINCH),
    ("XCPU", libc::SIGXCPU),
    ("XFSZ", libc::SIGXFSZ),
];

/// Real-time signals as Docker names them: RTMIN = 34, RTMIN+1 ... RTMAX-1, RTMAX = 64.
const RTMIN: i32 = 34;
const RTMAX: i32 = 64;

/// Docker's `signal.ParseSignal`: "SIGUSR1", "usr1", "RTMIN+3" or a number (1-64).
pub fn parse_signal(s: &str) -> Result<i32, ContainerdError> {
    let invalid = || ContainerdError::Invalid(format!("Invalid signal: {s}"));
    if let Ok(n) = s.parse::<i32>() {
        return if (1..=RTMAX).contains(&n) {
            Ok(n)
        } else {
            Err(invalid())
        };
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Some((_, n)) = SIGNALS.iter().find(|(k, _)| *k == name) {
        return Ok(*n);
    }
    let rt = |base: i32, rest: &str, sign: i32| -> Option<i32> {
        let off: i32 = rest.parse().ok()?;
        let n = base + sign * off;
        (off >= 1 && (RTMIN..=RTMAX).contains(&n)).then_some(n)
    };
    match name {
        "RTMIN" => Ok(RTMIN),
        "RTMAX" => Ok(RTMAX),
        _ => {
            if let Some(rest) = name.strip_prefix("RTMIN+") {
                return rt(RTMIN, rest, 1).ok_or_else(invalid);
            }
            if let Some(rest) = name.strip_prefix("RTMAX-") {
                return rt(RTMAX, rest, -1).ok_or_else(invalid);
            }
            Err(invalid())
        }
    }
}

/// The signal that stops the task: the task's `stop_signal`, else the image's StopSignal,
/// else SIGTERM.
pub fn stop_signal(task: &Task, config: &ImageConfig) -> Result<i32, ContainerdError> {
    let from_task = task
        .spec
        .as_ref()
        .and_then(|s| s.container.as_ref())
        .map(|c| c.stop_signal.clone())
        .filter(|s| !s.is_empty());
    let from_image = config
        .config
        .as_ref()
        .and_then(|c| c.stop_signal.clone())
        .filter(|s| !s.is_empty());
    match from_task.or(from_image) {
        Some(s) => parse_signal(&s),
        None => Ok(libc::SIGTERM),
    }
}

/// Docker's `/etc/hosts` of a container without an address.
fn hosts_file(hostname: &str) -> String {
    let _ = hostname;
    // The overlay network issue adds "<task IP>\t<hostname>" (and the aliases) here once the
    // task has an address; Docker writes no hostname line for a container without one.
    "127.0.0.1\tlocalhost\n\
     ::1\tlocalhost ip6-localhost ip6-loopback\n\
     fe00::0\tip6-localnet\n\
     ff00::0\tip6-mcastprefix\n\
     ff02::1\tip6-allnodes\n\
     ff02::2\tip6-allrouters\n"
        .to_string()
}

/// Docker's `resolvconf.FilterResolvDNS` with IPv6 disabled: drops loopback nameservers
/// (127.0.0.0/8, ::1) and IPv6 ones; when none is left, Google's public resolvers (Docker's
/// defaults) are added.
pub fn filter_resolv_conf(content: &str) -> String {
    let mut out = String::new();
    let mut nameservers = 0;
    for line in content.lines() {
        // CRs ending the last line are kept by `lines`; written back before a newline they
        // would become a CRLF line ending, which the next reading strips: drop them here.
        let line = line.trim_end_matches('\r');
        let mut words = line.split_whitespace();
        if words.next() == Some("nameserver") {
            // Parsed as written: a zone (`%eth0`) is IPv6 syntax, and an IPv4 address with
            // one is no address a resolver reads, so it does not count as a nameserver.
            let addr = words.next().unwrap_or("");
            match addr.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(a)) if !a.is_loopback() => nameservers += 1,
                _ => continue,
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    if nameservers == 0 {
        out.push_str("nameserver 8.8.8.8\nnameserver 8.8.4.4\n");
    }
    out
}

/// The host's resolv.conf a container starts from: /etc/resolv.conf, or systemd-resolved's
/// upstream file when /etc/resolv.conf only names its 127.0.0.53 stub (as Docker does).
fn host_resolv_conf() -> io::Result<String> {
    let etc = match std::fs::read_to_string("/etc/resolv.conf") {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let only_stub = etc
        .lines()
        .filter_map(|l| l.strip_prefix("nameserver"))
        .map(str::trim)
        .all(|a| a == "127.0.0.53");
    if only_stub && etc.contains("127.0.0.53") {
        if let Ok(s) = std::fs::read_to_string("/run/systemd/resolve/resolv.conf") {
            return Ok(s);
        }
    }
    Ok(etc)
}

/// Writes `hostname`, `hosts` and `resolv.conf` for the container into `dir` (created if
/// needed); [`SpecFiles::etc_dir`] bind-mounts them into the container.
pub fn write_etc_files(
    dir: &Path,
    task: &Task,
    hostname: &str,
    embedded_dns: bool,
) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("hostname"), format!("{hostname}\n"))?;
    std::fs::write(dir.join("hosts"), hosts_file(hostname))?;
    std::fs::write(dir.join("resolv.conf"), resolv_conf(task, embedded_dns)?)?;
    Ok(())
}

/// A task's resolv.conf. On networks, with the node's embedded resolver, Docker's:
/// `nameserver 127.0.0.11` and `options ndots:0` (service names are single labels; the
/// resolver forwards everything else to the node's resolvers). Otherwise the node's own
/// resolvers, filtered as Docker does.
pub fn resolv_conf(task: &Task, embedded_dns: bool) -> io::Result<String> {
    if embedded_dns && !task.networks.is_empty() {
        return Ok("nameserver 127.0.0.11\noptions ndots:0\n".to_string());
    }
    Ok(filter_resolv_conf(&host_resolv_conf()?))
}

fn invalid_mount(kind: &str, why: impl std::fmt::Display) -> ContainerdError {
    ContainerdError::Invalid(format!("invalid mount config for type \"{kind}\": {why}"))
}

/// The OCI mounts of the task's `mounts` (bind, volume and tmpfs), checked like Docker does
/// on the node: absolute paths, no `/` target, no duplicate target, existing bind source.
/// A volume is a bind mount of its directory in `volumes` (by target).
fn user_mounts(
    mounts: &[proto::Mount],
    volumes: &std::collections::BTreeMap<String, PathBuf>,
) -> Result<Vec<Value>, ContainerdError> {
    let mut out: Vec<(usize, Value)> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for m in mounts {
        let kind = match MountType::try_from(m.r#type) {
            Ok(MountType::Bind) => "bind",
            Ok(MountType::Tmpfs) => "tmpfs",
            Ok(MountType::Volume) => "volume",
            Err(_) => {
                return Err(ContainerdError::Invalid(format!(
                    "mount at {}: mount type {} unknown",
                    m.target, m.r#type
                )))
            }
        };
        if !m.target.starts_with('/') {
            return Err(invalid_mount(
                kind,
                format!(
                    "invalid mount path: '{}' mount path must be absolute",
                    m.target
                ),
            ));
        }
        let target = normalize(&m.target);
        if target == "/" {
            return Err(invalid_mount(
                kind,
                "invalid specification: destination can't be '/'",
            ));
        }
        if !seen.insert(target.clone()) {
            return Err(ContainerdError::Invalid(format!(
                "Duplicate mount point: {target}"
            )));
        }
        let value = if kind == "bind" {
            if !m.source.starts_with('/') {
                return Err(invalid_mount(
                    kind,
                    format!(
                        "invalid mount path: '{}' mount path must be absolute",
                        m.source
                    ),
                ));
            }
            match std::fs::metadata(&m.source) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(invalid_mount(
                        kind,
                        format!("bind source path does not exist: {}", m.source),
                    ))
                }
                Err(e) => {
                    return Err(invalid_mount(
                        kind,
                        format!("bind source path {}: {e}", m.source),
                    ))
                }
            }
            let propagation = match m.bind_propagation.as_str() {
                "" => "rprivate",
                p @ ("rprivate" | "private" | "rshared" | "shared" | "rslave" | "slave") => p,
                other => {
                    return Err(invalid_mount(
                        kind,
                        format!("invalid propagation mode: {other}"),
                    ))
                }
            };
            let rw = if m.read_only { "ro" } else { "rw" };
            json!({"destination": target, "type": "bind", "source": m.source,
                   "options": ["rbind", propagation, rw]})
        } else if kind == "volume" {
            let Some(dir) = volumes.get(&m.target) else {
                return Err(ContainerdError::Invalid(format!(
                    "mount at {}: the volume {:?} was not prepared on this node",
                    m.target, m.source
                )));
            };
            let rw = if m.read_only { "ro" } else { "rw" };
            json!({"destination": target, "type": "bind", "source": dir.display().to_string(),
                   "options": ["rbind", "rprivate", rw]})
        } else {
            if !m.source.is_empty() {
                return Err(invalid_mount(kind, "field Source must not be specified"));
            }
            let mut options = vec!["nosuid".to_string(), "nodev".into(), "noexec".into()];
            if m.tmpfs_size_bytes < 0 {
                return Err(invalid_mount(
                    kind,
                    "invalid tmpfs size: it cannot be negative",
                ));
            }
            if m.tmpfs_size_bytes > 0 {
                options.push(format!("size={}", m.tmpfs_size_bytes));
            }
            if m.tmpfs_mode != 0 {
                options.push(format!("mode={:o}", m.tmpfs_mode & 0o7777));
            }
            if m.read_only {
                options.push("ro".into());
            }
            json!({"destination": target, "type": "tmpfs", "source": "tmpfs", "options": options})
        };
        let depth = target.split('/').filter(|c| !c.is_empty()).count();
        out.push((depth, value));
    }
    // Parents before children (Docker sorts by the number of path components).
    out.sort_by_key(|(d, _)| *d);
    Ok(out.into_iter().map(|(_, v)| v).collect())
}

/// `/a//b/./c/` → `/a/b/c` (no `..` resolution: runc resolves the target inside the rootfs).
fn normalize(p: &str) -> String {
    let parts: Vec<&str> = p
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    format!("/{}", parts.join("/"))
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

/// The label naming the task a container runs: the executor's own containers carry it (with
/// their own id), and it touches no other container of its namespace (the agent's own, when
/// it runs as a container there, or anyone else's).
pub const TASK_ID_LABEL: &str = "com.docker.swarm.task.id";

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
    l.insert(TASK_ID_LABEL.into(), task.id.clone());
    l.insert("com.docker.swarm.task.name".into(), name);
    l
}

/// The full runtime spec without image or node files (numeric users only, the image's
/// /etc files); see [`runtime_spec_with`].
pub fn runtime_spec(
    task: &Task,
    config: &ImageConfig,
    opts: &SpecOptions,
) -> Result<Value, ContainerdError> {
    runtime_spec_with(task, config, opts, &SpecFiles::default())
}

/// The full runtime spec. The rootfs comes from the task's rootfs mounts (containerd mounts
/// them at `<bundle>/rootfs`).
pub fn runtime_spec_with(
    task: &Task,
    config: &ImageConfig,
    opts: &SpecOptions,
    files: &SpecFiles,
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
    let groups = c.map(|c| c.groups.clone()).unwrap_or_default();
    let exec_user = resolve_user(
        &user,
        files.passwd.as_deref(),
        files.group.as_deref(),
        &groups,
    )?;
    let read_only = c.is_some_and(|c| c.read_only);
    let user_mounts = user_mounts(
        c.map(|c| c.mounts.as_slice()).unwrap_or_default(),
        &files.volumes,
    )?;
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
    // `--reserve-memory` is also the container's soft limit, as in Docker; a CPU reservation
    // only places the task (SwarmKit does not turn it into CPU shares either).
    if let Some(reserved) = task
        .spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.reservations.as_ref())
        .filter(|r| r.memory_bytes > 0)
    {
        if !resources["memory"].is_object() {
            resources["memory"] = json!({});
        }
        resources["memory"]["reservation"] = json!(reserved.memory_bytes);
    }
    let cgroups_path = format!(
        "/{}/{}",
        opts.cgroup_parent.trim_matches('/'),
        opts.container_id
    )
    .replace("//", "/");
    let user_targets: Vec<&str> = user_mounts
        .iter()
        .filter_map(|m| m["destination"].as_str())
        .collect();
    let defaults = [
        json!({"destination": "/proc", "type": "proc", "source": "proc",
         "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["ro", "nosuid", "noexec", "nodev"]}),
    ];
    // A user mount on the same target replaces a default one (as in Docker).
    let mut mounts: Vec<Value> = defaults
        .into_iter()
        .filter(|m| !user_targets.contains(&m["destination"].as_str().unwrap_or("")))
        .collect();
    if let Some(dir) = &files.etc_dir {
        let rw = if read_only { "ro" } else { "rw" };
        for name in ["hostname", "hosts", "resolv.conf"] {
            let target = format!("/etc/{name}");
            if user_targets.contains(&target.as_str()) {
                continue;
            }
            mounts.push(json!({
                "destination": target, "type": "bind",
                "source": dir.join(name).display().to_string(),
                "options": ["rbind", "rprivate", rw],
            }));
        }
    }
    mounts.extend(user_mounts);
    Ok(json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {
                "uid": exec_user.uid,
                "gid": exec_user.gid,
                "additionalGids": exec_user.additional_gids,
            },
            "args": args,
            "env": process_env(task, config),
            "cwd": cwd,
            "capabilities": {
                "bounding": caps, "effective": caps, "permitted": caps,
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024u64, "soft": 1024u64}],
            "noNewPrivileges": true,
        },
        "root": {"path": "rootfs", "readonly": read_only},
        "hostname": hostname(task),
        "mounts": mounts,
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

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        # a comment\n\
        \n\
        daemon:x:1:1:daemon:/usr/sbin:/bin/false\n\
        www:x:33:33:www:/var/www:/bin/false\n\
        app:x:1000:1000::/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:root\n\
        wheel:x:10:root,app\n\
        www:x:33:\n\
        app:x:1000:\n\
        docker:x:999:app\n\
        staff:x:50:\n";

    fn ids(u: &ExecUser) -> (u32, u32, Vec<u32>) {
        (u.uid, u.gid, u.additional_gids.clone())
    }

    #[test]
    fn users_resolve_like_docker() {
        let r = |u: &str, add: &[&str]| {
            let add: Vec<String> = add.iter().map(|s| s.to_string()).collect();
            resolve_user(u, Some(PASSWD), Some(GROUP), &add).map(|u| ids(&u))
        };
        // Empty = root, with root's groups.
        assert_eq!(r("", &[]).unwrap(), (0, 0, vec![0, 10]));
        // By name: primary group from passwd, supplementary ones from group.
        assert_eq!(r("app", &[]).unwrap(), (1000, 1000, vec![1000, 10, 999]));
        // By uid: same entry.
        assert_eq!(r("1000", &[]).unwrap(), (1000, 1000, vec![1000, 10, 999]));
        // An explicit group replaces the primary one and drops the supplementary ones.
        assert_eq!(r("app:staff", &[]).unwrap(), (1000, 50, vec![50]));
        assert_eq!(r("app:77", &[]).unwrap(), (1000, 77, vec![77]));
        assert_eq!(r("www:www", &[]).unwrap(), (33, 33, vec![33]));
        // A numeric uid without an entry works, gid 0.
        assert_eq!(r("4242", &[]).unwrap(), (4242, 0, vec![0]));
        assert_eq!(r("4242:4343", &[]).unwrap(), (4242, 4343, vec![4343]));
        // --group: names and gids, no duplicates.
        assert_eq!(
            r("www", &["staff", "4000", "33"]).unwrap(),
            (33, 33, vec![33, 50, 4000])
        );
        // Docker's errors.
        assert_eq!(
            r("nobody", &[]).unwrap_err().to_string(),
            "unable to find user nobody: no matching entries in passwd file"
        );
        assert_eq!(
            r("app:nogroup", &[]).unwrap_err().to_string(),
            "unable to find group nogroup: no matching entries in group file"
        );
        assert_eq!(
            r("app", &["nogroup"]).unwrap_err().to_string(),
            "unable to find group nogroup: no matching entries in group file"
        );
        assert!(r("99999999999", &[])
            .unwrap_err()
            .to_string()
            .contains("range"));
        // Without the files: numeric still works, names do not.
        let bare = |u: &str| resolve_user(u, None, None, &[]).map(|u| ids(&u));
        assert_eq!(bare("").unwrap(), (0, 0, vec![0]));
        assert_eq!(bare("1000").unwrap(), (1000, 0, vec![0]));
        assert_eq!(bare("1000:50").unwrap(), (1000, 50, vec![50]));
        assert_eq!(
            bare("nobody").unwrap_err().to_string(),
            "unable to find user nobody: no matching entries in passwd file"
        );
    }

    #[test]
    fn named_user_reaches_the_spec() {
        let mut t = task(&["id"], &[], &[]);
        let c = t.spec.as_mut().unwrap().container.as_mut().unwrap();
        c.user = "app".into();
        c.groups = vec!["staff".into()];
        let files = SpecFiles {
            passwd: Some(PASSWD.into()),
            group: Some(GROUP.into()),
            etc_dir: None,
            ..Default::default()
        };
        let s =
            runtime_spec_with(&t, &image(&[], &[], &[]), &SpecOptions::default(), &files).unwrap();
        assert_eq!(
            s["process"]["user"],
            json!({"uid": 1000, "gid": 1000, "additionalGids": [1000, 10, 999, 50]})
        );
        // The image's user is used when the task sets none.
        let mut img = image(&[], &[], &[]);
        img.config.as_mut().unwrap().user = Some("www".into());
        let s = runtime_spec_with(
            &task(&["id"], &[], &[]),
            &img,
            &SpecOptions::default(),
            &files,
        )
        .unwrap();
        assert_eq!(s["process"]["user"]["uid"], 33);
        let e = runtime_spec(&t, &image(&[], &[], &[]), &SpecOptions::default()).unwrap_err();
        assert!(e.to_string().contains("unable to find user app"), "{e}");
    }

    #[test]
    fn signals() {
        assert_eq!(parse_signal("SIGUSR1").unwrap(), libc::SIGUSR1);
        assert_eq!(parse_signal("usr1").unwrap(), libc::SIGUSR1);
        assert_eq!(parse_signal("TERM").unwrap(), libc::SIGTERM);
        assert_eq!(parse_signal("9").unwrap(), 9);
        assert_eq!(parse_signal("SIGRTMIN+3").unwrap(), 37);
        assert_eq!(parse_signal("RTMAX-1").unwrap(), 63);
        assert_eq!(parse_signal("RTMAX").unwrap(), 64);
        for bad in ["0", "65", "-1", "SIGFOO", "", "RTMIN+40", "RTMAX-x"] {
            assert_eq!(
                parse_signal(bad).unwrap_err().to_string(),
                format!("Invalid signal: {bad}")
            );
        }
        let mut img = image(&[], &["sh"], &[]);
        let mut t = task(&[], &[], &[]);
        assert_eq!(stop_signal(&t, &img).unwrap(), libc::SIGTERM);
        img.config.as_mut().unwrap().stop_signal = Some("SIGQUIT".into());
        assert_eq!(stop_signal(&t, &img).unwrap(), libc::SIGQUIT);
        t.spec
            .as_mut()
            .unwrap()
            .container
            .as_mut()
            .unwrap()
            .stop_signal = "USR2".into();
        assert_eq!(stop_signal(&t, &img).unwrap(), libc::SIGUSR2);
        t.spec
            .as_mut()
            .unwrap()
            .container
            .as_mut()
            .unwrap()
            .stop_signal = "NOPE".into();
        assert!(stop_signal(&t, &img).is_err());
    }

    fn with_mounts(mounts: Vec<proto::Mount>, read_only: bool) -> Task {
        let mut t = task(&["true"], &[], &[]);
        let c = t.spec.as_mut().unwrap().container.as_mut().unwrap();
        c.mounts = mounts;
        c.read_only = read_only;
        t
    }

    fn bind(source: &str, target: &str, ro: bool) -> proto::Mount {
        proto::Mount {
            r#type: MountType::Bind as i32,
            source: source.into(),
            target: target.into(),
            read_only: ro,
            ..Default::default()
        }
    }

    fn find<'a>(spec: &'a Value, dest: &str) -> Vec<&'a Value> {
        spec["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["destination"] == dest)
            .collect()
    }

    #[test]
    fn mounts_read_only_and_etc_files() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("data");
        std::fs::create_dir(&src).unwrap();
        let src = src.display().to_string();
        let tmpfs = proto::Mount {
            r#type: MountType::Tmpfs as i32,
            target: "/run/x".into(),
            tmpfs_size_bytes: 1 << 20,
            tmpfs_mode: 0o700,
            ..Default::default()
        };
        let shm = proto::Mount {
            r#type: MountType::Tmpfs as i32,
            target: "/dev/shm".into(),
            ..Default::default()
        };
        let t = with_mounts(
            vec![
                bind(&src, "/data/sub", false),
                bind(&src, "/data", true),
                tmpfs,
                shm,
            ],
            true,
        );
        let files = SpecFiles {
            etc_dir: Some(tmp.path().join("etc")),
            ..Default::default()
        };
        let s =
            runtime_spec_with(&t, &image(&[], &[], &[]), &SpecOptions::default(), &files).unwrap();
        assert_eq!(s["root"]["readonly"], true);
        assert_eq!(
            *find(&s, "/data")[0],
            json!({"destination": "/data", "type": "bind", "source": src,
                   "options": ["rbind", "rprivate", "ro"]})
        );
        assert_eq!(find(&s, "/data/sub")[0]["options"][2], "rw");
        assert_eq!(
            find(&s, "/run/x")[0]["options"],
            json!(["nosuid", "nodev", "noexec", "size=1048576", "mode=700"])
        );
        // The user's /dev/shm replaces the default one.
        let shm = find(&s, "/dev/shm");
        assert_eq!(shm.len(), 1);
        assert_eq!(shm[0]["options"], json!(["nosuid", "nodev", "noexec"]));
        // Parents are mounted before children.
        let order: Vec<&str> = s["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        let pos = |d: &str| order.iter().position(|x| *x == d).unwrap();
        assert!(pos("/data") < pos("/data/sub"), "{order:?}");
        // /etc files, read-only with a read-only root.
        for name in ["hostname", "hosts", "resolv.conf"] {
            let m = find(&s, &format!("/etc/{name}"));
            assert_eq!(m.len(), 1, "{name}");
            assert_eq!(
                m[0]["source"],
                tmp.path().join("etc").join(name).display().to_string()
            );
            assert_eq!(m[0]["options"], json!(["rbind", "rprivate", "ro"]));
        }
        let rw = runtime_spec_with(
            &with_mounts(vec![], false),
            &image(&[], &[], &[]),
            &SpecOptions::default(),
            &files,
        )
        .unwrap();
        assert_eq!(rw["root"]["readonly"], false);
        assert_eq!(find(&rw, "/etc/hosts")[0]["options"][2], "rw");
    }

    #[test]
    fn mount_errors() {
        let err = |m: proto::Mount| {
            runtime_spec(
                &with_mounts(vec![m], false),
                &image(&[], &[], &[]),
                &SpecOptions::default(),
            )
            .unwrap_err()
            .to_string()
        };
        assert_eq!(
            err(bind("/surely/not/here", "/y", false)),
            "invalid mount config for type \"bind\": bind source path does not exist: /surely/not/here"
        );
        assert_eq!(
            err(bind("/tmp", "y", false)),
            "invalid mount config for type \"bind\": invalid mount path: 'y' mount path must be absolute"
        );
        assert_eq!(
            err(bind("tmp", "/y", false)),
            "invalid mount config for type \"bind\": invalid mount path: 'tmp' mount path must be absolute"
        );
        assert!(err(bind("/tmp", "/", false)).contains("destination can't be '/'"));
        let vol = proto::Mount {
            r#type: MountType::Volume as i32,
            target: "/v".into(),
            ..Default::default()
        };
        assert!(err(vol.clone()).contains("the volume \"\" was not prepared"));
        // A prepared volume is a bind mount of its directory, read-only when asked.
        let files = SpecFiles {
            volumes: [(
                "/v".to_string(),
                PathBuf::from("/var/lib/swarm/volumes/db/_data"),
            )]
            .into(),
            ..Default::default()
        };
        let ro = proto::Mount {
            read_only: true,
            source: "db".into(),
            ..vol
        };
        let spec = runtime_spec_with(
            &with_mounts(vec![ro], false),
            &image(&[], &[], &[]),
            &SpecOptions::default(),
            &files,
        )
        .unwrap();
        let m = spec["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/v")
            .unwrap();
        assert_eq!(
            m,
            &json!({"destination": "/v", "type": "bind",
                    "source": "/var/lib/swarm/volumes/db/_data",
                    "options": ["rbind", "rprivate", "ro"]})
        );
        let e = runtime_spec(
            &with_mounts(
                vec![bind("/tmp", "/y", false), bind("/tmp", "/y/", true)],
                false,
            ),
            &image(&[], &[], &[]),
            &SpecOptions::default(),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(e, "Duplicate mount point: /y");
    }

    #[test]
    fn etc_files_like_docker() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("etc");
        write_etc_files(&dir, &task(&[], &[], &[]), "web-1", false).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("hostname")).unwrap(),
            "web-1\n"
        );
        let hosts = std::fs::read_to_string(dir.join("hosts")).unwrap();
        assert!(
            hosts.starts_with("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
        );
        let resolv = std::fs::read_to_string(dir.join("resolv.conf")).unwrap();
        assert!(resolv.contains("nameserver "), "{resolv}");
        assert!(!resolv.contains("nameserver 127."), "{resolv}");
        // On a network, with the embedded resolver: Docker's 127.0.0.11 and ndots:0; without
        // networks the node's resolvers even then.
        let mut on_net = task(&[], &[], &[]);
        on_net.networks.push(proto::NetworkAttachment {
            network_id: "n".into(),
            ..Default::default()
        });
        assert_eq!(
            resolv_conf(&on_net, true).unwrap(),
            "nameserver 127.0.0.11\noptions ndots:0\n"
        );
        assert!(!resolv_conf(&on_net, false).unwrap().contains("127.0.0.11"));
        assert!(!resolv_conf(&task(&[], &[], &[]), true)
            .unwrap()
            .contains("127.0.0.11"));

        let host = "# generated\nsearch example.com\nnameserver 127.0.0.53\nnameserver ::1\n\
                    nameserver 10.0.0.2\nnameserver 2001:db8::1\noptions edns0\n";
        assert_eq!(
            filter_resolv_conf(host),
            "# generated\nsearch example.com\nnameserver 10.0.0.2\noptions edns0\n"
        );
        assert_eq!(
            filter_resolv_conf("nameserver 127.0.0.1\n"),
            "nameserver 8.8.8.8\nnameserver 8.8.4.4\n"
        );
    }

    /// An input that breaks the `resolv_conf` fuzz target's invariant (found writing it): an
    /// IPv4 nameserver with a zone counted as a nameserver and was kept, so the task's
    /// resolver had none it could read and Docker's public resolvers were not added.
    #[test]
    fn an_ipv4_nameserver_with_a_zone_is_not_a_nameserver() {
        assert_eq!(
            filter_resolv_conf("nameserver 10.0.0.1%eth0\n"),
            "nameserver 8.8.8.8\nnameserver 8.8.4.4\n"
        );
        assert_eq!(
            filter_resolv_conf("nameserver 10.0.0.1%eth0\nnameserver 10.0.0.2\n"),
            "nameserver 10.0.0.2\n"
        );
    }

    /// Found by the `resolv_conf` fuzz target (kept as `fuzz/seeds/resolv_conf/regression-*`):
    /// a last line ending in a lone CR came out with a CRLF ending, which a second filtering
    /// changed again, so the task's file was not a fixed point of the filter.
    #[test]
    fn a_lone_cr_ending_the_last_line_is_dropped_and_filtering_twice_changes_nothing() {
        let once = filter_resolv_conf("search lab\r");
        assert_eq!(once, "search lab\nnameserver 8.8.8.8\nnameserver 8.8.4.4\n");
        assert_eq!(filter_resolv_conf(&once), once);
        // And two (`regression-two-crs`): the first filtering left one, the second removed it.
        let twice = filter_resolv_conf("\r\r");
        assert_eq!(filter_resolv_conf(&twice), twice);
        assert_eq!(
            filter_resolv_conf("nameserver 10.0.0.2\r\nnameserver 10.0.0.3\r"),
            "nameserver 10.0.0.2\nnameserver 10.0.0.3\n"
        );
    }

    #[test]
    fn spec_has_hostname_cgroup_limits_and_namespaces() {
        let mut t = task(&["sleep"], &["1"], &[]);
        t.spec.as_mut().unwrap().resources = Some(ResourceRequirements {
            limits: Some(Resources {
                nano_cpus: 500_000_000,
                memory_bytes: 64 << 20,
            }),
            reservations: Some(Resources {
                nano_cpus: 0,
                memory_bytes: 32 << 20,
            }),
        });
        let opts = SpecOptions {
            container_id: t.id.clone(),
            cgroup_parent: "swarm".into(),
            netns_path: None,
        };
        assert_eq!(
            runtime_spec(&t, &image(&[], &[], &[]), &opts).unwrap()["process"]["user"],
            json!({"uid": 0, "gid": 0, "additionalGids": [0]})
        );
        let s = runtime_spec(&t, &image(&[], &[], &[]), &opts).unwrap();
        assert_eq!(s["hostname"], "abcdefghijkl");
        assert_eq!(
            s["linux"]["cgroupsPath"],
            "/swarm/abcdefghijklmnopqrstuvwxy"
        );
        assert_eq!(s["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(s["linux"]["resources"]["memory"]["reservation"], 32 << 20);
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

//! Tearing a lab down from its name and root alone ([`cleanup`]): namespaces named
//! `<name>-ul`/`<name>-node<i>`, cgroups `<name>-node<i>` in every hierarchy, mounts under the
//! root, what killed shims leave in /run/containerd, the agents' bpffs directories, so that it
//! works after a crash, from another process, and on a half-built lab; and the sweep of the
//! test labs whose owner died ([`sweep_stale`]).

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;

use super::config::validate_name;
use super::node::{AGENT_NAMESPACE, CONTAINERD_NAMESPACE};
use super::state::{self, STATE_FILE};
use super::sys;

/// What a teardown removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Cleanup {
    pub processes: usize,
    pub cgroups: usize,
    pub mounts: usize,
    pub namespaces: usize,
    /// Shim sockets and runc state left in /run/containerd by killed shims.
    pub runtime_files: usize,
    /// The agents' bpffs directories (pinned maps and links: removing them detaches and
    /// unloads the programs).
    pub bpf_dirs: usize,
    pub root_removed: bool,
}

impl Cleanup {
    /// Whether there was nothing to remove.
    pub fn is_empty(&self) -> bool {
        *self == Cleanup::default()
    }
}

impl fmt::Display for Cleanup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "killed {} processes; removed {} cgroups, {} mounts, {} namespaces, {} runtime files, {} bpffs directories{}",
            self.processes,
            self.cgroups,
            self.mounts,
            self.namespaces,
            self.runtime_files,
            self.bpf_dirs,
            if self.root_removed {
                " and the lab directory"
            } else {
                ""
            }
        )
    }
}

/// Tears down the temporary (test) labs under /tmp whose owner process is gone (a test
/// run killed before its labs were dropped); returns what was removed or failed, by name.
pub fn sweep_stale() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/tmp").into_iter().flatten().flatten() {
        let root = e.path();
        let is_test_root = e
            .file_name()
            .to_str()
            .and_then(|n| n.strip_prefix("swl-"))
            .is_some_and(|n| validate_name(n).is_ok());
        if !is_test_root {
            continue;
        }
        let Some(v) = state::raw(&root) else {
            continue;
        };
        let temporary = v.get("temporary").and_then(|t| t.as_bool()) == Some(true);
        let owner = v.get("owner_pid").and_then(|p| p.as_i64()).unwrap_or(0) as i32;
        let Some(name) = v.get("name").and_then(|n| n.as_str()) else {
            continue;
        };
        if !temporary || owner <= 0 || sys::process_alive(owner) {
            continue;
        }
        let result = match cleanup(name, &root) {
            Ok(c) => c.to_string(),
            Err(e) => format!("{e:#}"),
        };
        out.push((name.to_string(), result));
    }
    out
}

/// Tears down the lab `name` rooted at `root` from what can be found on the host, whoever
/// made it and however far it got: kills every process in its namespaces and cgroups,
/// removes the cgroups (deepest first), unmounts everything under `root`, deletes the
/// namespaces, the shim sockets and runc state its containers left in /run/containerd,
/// and `root` itself (only when it holds this lab's lab.json, or is empty). Idempotent.
pub fn cleanup(name: &str, root: &Path) -> anyhow::Result<Cleanup> {
    validate_name(name)?;
    let mut c = Cleanup::default();
    let mut errors: Vec<String> = Vec::new();
    let netns = sys::lab_netns(name);
    let cgroups = sys::lab_cgroups(name);
    let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());

    // What killed shims leave behind, found while they still run.
    let mut shim_sockets = BTreeSet::new();
    for ns in &netns {
        if let Some(pid) = sys::pids_in_netns(&sys::netns_path(ns)).first() {
            shim_sockets.extend(
                sys::unix_socket_paths(*pid)
                    .into_iter()
                    .filter(|p| Path::new(p).starts_with(sys::SHIM_SOCKET_DIR)),
            );
        }
    }
    let mut container_ids = BTreeSet::new();
    for cg in &cgroups {
        for d in sys::cgroup_tree(cg) {
            if &d != cg {
                if let Some(n) = d.file_name().and_then(|n| n.to_str()) {
                    container_ids.insert(n.to_string());
                }
            }
        }
    }
    for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        let task_dir = e
            .path()
            .join("containerd/state/io.containerd.runtime.v2.task");
        for ns in std::fs::read_dir(&task_dir).into_iter().flatten().flatten() {
            for ctr in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
                if let Some(id) = ctr.file_name().to_str() {
                    container_ids.insert(id.to_string());
                }
            }
        }
    }

    // Kill until nothing is left (new processes may appear while parents die).
    let mut killed = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut pids = BTreeSet::new();
        for ns in &netns {
            pids.extend(sys::pids_in_netns(&sys::netns_path(ns)));
        }
        for cg in &cgroups {
            sys::thaw(cg);
            pids.extend(sys::cgroup_pids(cg));
        }
        pids.remove(&(std::process::id() as i32));
        if pids.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            errors.push(format!("processes that do not die: {pids:?}"));
            break;
        }
        for &pid in &pids {
            sys::kill(pid, libc::SIGKILL);
            killed.insert(pid);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    c.processes = killed.len();

    for cg in &cgroups {
        for d in sys::cgroup_tree(cg) {
            let mut last = None;
            for _ in 0..40 {
                match std::fs::remove_dir(&d) {
                    Ok(()) => {
                        c.cgroups += 1;
                        last = None;
                        break;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        last = None;
                        break;
                    }
                    Err(e) => {
                        last = Some(e);
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
            if let Some(e) = last {
                errors.push(format!("removing the cgroup {}: {e}", d.display()));
            }
        }
    }

    for _ in 0..5 {
        let mounts = sys::mounts_under(&root);
        if mounts.is_empty() {
            break;
        }
        for m in mounts {
            match sys::unmount(&m) {
                Ok(()) => c.mounts += 1,
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => errors.push(format!("unmounting {}: {e}", m.display())),
            }
        }
    }
    let left = sys::mounts_under(&root);
    if !left.is_empty() {
        errors.push(format!("mounts left under {}: {left:?}", root.display()));
    }

    for ns in &netns {
        if sys::ip(&["netns", "del", ns]).is_ok() {
            c.namespaces += 1;
            continue;
        }
        let p = sys::netns_path(ns);
        let _ = sys::unmount(&p);
        match std::fs::remove_file(&p) {
            Ok(()) => c.namespaces += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => errors.push(format!("deleting the namespace {ns}: {e}")),
        }
    }

    for s in &shim_sockets {
        if std::fs::remove_file(s).is_ok() {
            c.runtime_files += 1;
        }
    }
    // After the agents are dead: the pins are what keeps their programs attached.
    for d in sys::lab_bpf_dirs(name) {
        match std::fs::remove_dir_all(&d) {
            Ok(()) => c.bpf_dirs += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => errors.push(format!("removing {}: {e}", d.display())),
        }
    }
    for id in &container_ids {
        // Ids are containerd's (task ids): never a path.
        if id.is_empty() || id.contains('/') || id.starts_with('.') {
            continue;
        }
        for ns in [CONTAINERD_NAMESPACE, AGENT_NAMESPACE] {
            let d = Path::new(sys::RUNC_ROOT).join(ns).join(id);
            if d.is_dir() && std::fs::remove_dir_all(&d).is_ok() {
                c.runtime_files += 1;
            }
        }
    }

    if root.exists() && left.is_empty() {
        let ours = state::raw(&root)
            .as_ref()
            .and_then(|v| v.get("name"))
            .and_then(|v| v.as_str())
            == Some(name);
        let empty = std::fs::read_dir(&root).is_ok_and(|mut d| d.next().is_none());
        if ours || empty {
            match std::fs::remove_dir_all(&root) {
                Ok(()) => c.root_removed = true,
                Err(e) => errors.push(format!("removing {}: {e}", root.display())),
            }
        } else {
            errors.push(format!(
                "not removing {}: it holds no {STATE_FILE} of the lab {name}",
                root.display()
            ));
        }
    }

    if !errors.is_empty() {
        bail!(
            "tearing down the lab {name} left things behind ({c}):\n  {}",
            errors.join("\n  ")
        );
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::super::config::{random_name, test_root};
    use super::*;

    #[test]
    fn cleanup_of_a_lab_that_never_existed_removes_nothing_and_keeps_foreign_dirs() {
        let dir = tempfile::tempdir().unwrap();
        // An empty root is the lab's (a crash right after mkdir): removed.
        let root = dir.path().join("empty");
        std::fs::create_dir(&root).unwrap();
        let c = cleanup("zzqx", &root).unwrap();
        assert!(c.root_removed);
        assert!(!root.exists());
        // A root with foreign content and no lab.json is kept, and said so.
        let other = dir.path().join("other");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join("keep"), "x").unwrap();
        let err = cleanup("zzqx", &other).unwrap_err();
        assert!(format!("{err:#}").contains("not removing"), "{err:#}");
        assert!(other.join("keep").exists());
        // Nothing at all: nothing to do, twice.
        assert!(cleanup("zzqx", &dir.path().join("gone"))
            .unwrap()
            .is_empty());
        assert!(cleanup("zzqx", &dir.path().join("gone"))
            .unwrap()
            .is_empty());
        assert!(cleanup("../x", &root).is_err());
    }

    #[test]
    fn stale_test_labs_are_swept_and_live_ones_kept() {
        let dead = {
            let mut c = Command::new("true").spawn().unwrap();
            let pid = c.id();
            c.wait().unwrap();
            pid
        };
        let write = |name: &str, owner: u32, temporary: bool| {
            let root = test_root(name);
            std::fs::create_dir_all(root.join("node1")).unwrap();
            let v = serde_json::json!({"name": name, "temporary": temporary, "owner_pid": owner});
            std::fs::write(root.join(STATE_FILE), v.to_string()).unwrap();
            root
        };
        let stale = write(&random_name(), dead, true);
        let live = write(&random_name(), std::process::id(), true);
        let kept = write(&random_name(), dead, false);
        let swept = sweep_stale();
        assert!(!stale.exists(), "{swept:?}");
        assert!(live.exists() && kept.exists(), "{swept:?}");
        for r in [live, kept] {
            std::fs::remove_dir_all(r).unwrap();
        }
    }
}

//! Host plumbing of the lab: network namespaces, processes, cgroups and mounts, found by name
//! or by reading /proc, so that a lab can be torn down by a process that did not build it.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use crate::client::CliOutput;

/// Where `ip netns add` keeps its namespace files.
pub const NETNS_DIR: &str = "/run/netns";
/// The directory the runc shim of containerd 1.6 keeps its state in (`<dir>/<namespace>/<id>`),
/// whatever containerd's own `--state` is.
pub const RUNC_ROOT: &str = "/run/containerd/runc";
/// Where containerd 1.6 shims put their sockets, whatever containerd's own `--state` is.
pub const SHIM_SOCKET_DIR: &str = "/run/containerd/s";

pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs a command to completion; fails naming the command with its stderr.
pub fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("starting {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            stdout_tail(&String::from_utf8_lossy(&out.stdout))
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What a failed command printed that says why, for its error: the lines of its stdout that
/// mention an error (some tools, `whoami get` among them, report failures there), else its
/// last lines; at most 5.
fn stdout_tail(stdout: &str) -> String {
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    let errors: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.contains("error"))
        .collect();
    let shown = if errors.is_empty() {
        &lines[lines.len().saturating_sub(5)..]
    } else {
        &errors[..errors.len().min(5)]
    };
    if shown.is_empty() {
        return String::new();
    }
    format!(
        "\n  its output ({} of {} lines): {}",
        shown.len(),
        lines.len(),
        shown.join(" | ")
    )
}

/// `ip ARGS…`.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    run(Command::new("ip").args(args)).map(|_| ())
}

/// Runs `args[0] args[1..]` as `command` makes it (inside a namespace …), stdin from
/// /dev/null, and collects its output; a command that cannot start has exit code -1.
/// A new namespace `ns` plugged into bridge `br0` of namespace `bridge_ns` by the veth pair
/// `veth` (bridge side) / `eth0` (in `ns`, holding `cidr`), both up, with `ns`'s loopback up.
pub fn plug_into_bridge(bridge_ns: &str, veth: &str, ns: &str, cidr: &str) -> anyhow::Result<()> {
    ip(&["netns", "add", ns])?;
    ip(&[
        "-n", bridge_ns, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
    ])?;
    ip(&["-n", bridge_ns, "link", "set", veth, "master", "br0", "up"])?;
    ip(&["-n", ns, "link", "set", "lo", "up"])?;
    ip(&["-n", ns, "addr", "add", cidr, "dev", "eth0"])?;
    ip(&["-n", ns, "link", "set", "eth0", "up"])
}

pub fn exec(args: &[&str], command: impl FnOnce(&str) -> anyhow::Result<Command>) -> CliOutput {
    let Some((prog, rest)) = args.split_first() else {
        return CliOutput::of(
            Err(std::io::Error::other("empty command")),
            "an empty command",
        );
    };
    match command(prog) {
        Ok(mut cmd) => CliOutput::of(
            cmd.args(rest).stdin(std::process::Stdio::null()).output(),
            &args.join(" "),
        ),
        Err(e) => CliOutput::of(Err(std::io::Error::other(format!("{e:#}"))), prog),
    }
}

/// Makes `cmd` run in the network namespace at `netns` (and only there: the mount namespace
/// stays the host's), in a session of its own when `detach` (so that it outlives us and
/// ignores the terminal's Ctrl-C).
pub fn in_netns(cmd: &mut Command, netns: &Path, detach: bool) -> anyhow::Result<()> {
    let f = File::open(netns).with_context(|| {
        format!(
            "opening the network namespace {} (is the lab up?)",
            netns.display()
        )
    })?;
    // SAFETY: the closure only makes async-signal-safe system calls (setns, setsid) on a
    // descriptor the closure owns, which stays open until the command is dropped.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if detach && libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// Runs `f` on a new thread that entered the network namespace at `netns` (sockets it opens,
/// and threads it starts, live there); the calling thread is not affected.
pub fn on_netns_thread<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let file = File::open(netns)
        .with_context(|| format!("opening the network namespace {}", netns.display()))?;
    let shown = netns.display().to_string();
    std::thread::spawn(move || {
        // SAFETY: setns on this thread only, with a descriptor we own.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("entering the network namespace {shown}"));
        }
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the thread in {} panicked", netns.display()))?
}

/// Whether `ns` is one of the lab `lab`'s namespace names: `<lab>-ul` or `<lab>-node<N>`.
pub fn is_lab_netns(lab: &str, ns: &str) -> bool {
    ns.strip_prefix(lab)
        .and_then(|r| r.strip_prefix('-'))
        .is_some_and(|r| r == "ul" || is_node_suffix(r))
}

/// Whether `name` is one of the lab's cgroup names: `<lab>-node<N>` (the tasks') or
/// `<lab>-node<N>-agent` (the agent's container, in agent-container mode).
pub fn is_lab_cgroup(lab: &str, name: &str) -> bool {
    name.strip_prefix(lab)
        .and_then(|r| r.strip_prefix('-'))
        .is_some_and(|r| is_node_suffix(r.strip_suffix("-agent").unwrap_or(r)))
}

fn is_node_suffix(r: &str) -> bool {
    r.strip_prefix("node")
        .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
}

/// The existing namespaces of the lab `lab` (names).
pub fn lab_netns(lab: &str) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(NETNS_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| is_lab_netns(lab, n))
        .collect();
    out.sort();
    out
}

fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .collect()
}

/// Processes whose network namespace is the one at `netns` (what `ip netns pids` prints).
pub fn pids_in_netns(netns: &Path) -> Vec<i32> {
    let Ok(target) = std::fs::metadata(netns) else {
        return Vec::new();
    };
    let me = std::process::id() as i32;
    all_pids()
        .into_iter()
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|m| m.dev() == target.dev() && m.ino() == target.ino())
        })
        .collect()
}

/// Paths of the unix sockets bound in the network namespace of `pid`.
pub fn unix_socket_paths(pid: i32) -> Vec<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/unix")).unwrap_or_default();
    parse_unix_sockets(&text)
}

fn parse_unix_sockets(text: &str) -> Vec<String> {
    text.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(7))
        .filter(|p| p.starts_with('/'))
        .map(str::to_string)
        .collect()
}

/// Alive and not a zombie.
pub fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses, which may itself hold spaces.
        Ok(s) => s
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The executable of `pid` (without the " (deleted)" the kernel appends to replaced files).
pub fn process_exe(pid: i32) -> Option<PathBuf> {
    let link = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let s = link.to_string_lossy();
    Some(PathBuf::from(s.strip_suffix(" (deleted)").unwrap_or(&s)))
}

pub fn kill(pid: i32, signal: i32) {
    if pid > 1 {
        // SAFETY: kill has no memory-safety preconditions; pid > 1 never targets a group.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

/// Mount points of every cgroup hierarchy (v1 controllers, named ones, and cgroup2).
pub fn cgroup_roots() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = mountinfo()
        .into_iter()
        .filter(|m| m.fstype == "cgroup" || m.fstype == "cgroup2")
        .map(|m| m.mount_point)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The lab's top-level cgroups (`<root>/<lab>-node<N>`) in every hierarchy.
pub fn lab_cgroups(lab: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for root in cgroup_roots() {
        for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            let name = e.file_name();
            if name.to_str().is_some_and(|n| is_lab_cgroup(lab, n))
                && e.file_type().is_ok_and(|t| t.is_dir())
            {
                out.push(e.path());
            }
        }
    }
    out
}

/// Where the agents' `--bpf-root` directories are (a bpffs).
pub const BPF_ROOT: &str = "/sys/fs/bpf";

/// The lab's agents' bpffs directories (`/sys/fs/bpf/<lab>-node<N>`).
pub fn lab_bpf_dirs(lab: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(BPF_ROOT)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| is_lab_cgroup(lab, n))
        })
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

/// `dir` and every cgroup below it, deepest first.
pub fn cgroup_tree(dir: &Path) -> Vec<PathBuf> {
    let mut all = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
        all.push(d);
    }
    all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    all
}

/// Processes in the cgroup `dir` or below.
pub fn cgroup_pids(dir: &Path) -> Vec<i32> {
    let mut out = BTreeSet::new();
    for d in cgroup_tree(dir) {
        let text = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
        out.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    out.into_iter().collect()
}

/// Thaws frozen v1 freezer cgroups below `dir` (frozen processes do not die of SIGKILL).
pub fn thaw(dir: &Path) {
    for d in cgroup_tree(dir) {
        let f = d.join("freezer.state");
        if f.exists() {
            let _ = std::fs::write(&f, "THAWED");
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub mount_point: PathBuf,
    pub fstype: String,
}

/// This process's mounts (from /proc/self/mountinfo).
pub fn mountinfo() -> Vec<Mount> {
    parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default())
}

fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            let mount_point = unescape(fields.get(4)?);
            let sep = fields.iter().position(|f| *f == "-")?;
            let fstype = fields.get(sep + 1)?.to_string();
            Some(Mount {
                mount_point: PathBuf::from(mount_point),
                fstype,
            })
        })
        .collect()
}

/// Undoes the octal escapes of mountinfo (`\040` for a space …).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b.get(i + 1..i + 4);
        if b[i] == b'\\' && oct.is_some_and(|o| o.iter().all(|c| (b'0'..=b'7').contains(c))) {
            let v = oct
                .unwrap_or_default()
                .iter()
                .fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
            out.push(v as u8);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points at or below `root`, deepest first (the order to unmount them in).
pub fn mounts_under(root: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = mountinfo()
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(root))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out
}

/// Makes `dir` a mount point of its own with shared propagation (`mount --bind dir dir;
/// mount --make-rshared dir`), so that what a container bound to it with `rshared` mounts
/// below it reaches this mount namespace.
pub fn make_shared_mount(dir: &Path) -> anyhow::Result<()> {
    let d = dir.to_string_lossy().to_string();
    run(Command::new("mount").args(["--bind", &d, &d]))?;
    run(Command::new("mount").args(["--make-rshared", &d]))?;
    Ok(())
}

/// Lazy unmount (MNT_DETACH).
pub fn unmount(path: &Path) -> std::io::Result<()> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_names_match_exactly() {
        assert!(is_lab_netns("swl", "swl-ul"));
        assert!(is_lab_netns("swl", "swl-node1"));
        assert!(is_lab_netns("swl", "swl-node12"));
        assert!(!is_lab_netns("swl", "swl1-node1"));
        assert!(!is_lab_netns("swl", "swl-node"));
        assert!(!is_lab_netns("swl", "swl-nodex"));
        assert!(!is_lab_netns("swl", "swl-ul2"));
        assert!(!is_lab_netns("sw", "swl-node1"));
        assert!(is_lab_cgroup("ab", "ab-node3"));
        assert!(!is_lab_cgroup("ab", "ab-ul"));
        assert!(!is_lab_cgroup("ab", "abc-node3"));
        assert!(is_lab_cgroup("ab", "ab-node3-agent"));
        assert!(!is_lab_cgroup("ab", "ab-node-agent"));
        assert!(!is_lab_cgroup("ab", "ab-node3-agents"));
    }

    #[test]
    fn mountinfo_lines_give_unescaped_mount_points_and_types() {
        let text = "36 35 98:0 /mnt1 /mnt/a\\040b rw,noatime master:1 - ext3 /dev/root rw\n\
                    40 35 0:4 net:[4026532] /run/netns/x rw shared:5 - nsfs nsfs rw\n\
                    41 35 0:5 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].mount_point, PathBuf::from("/mnt/a b"));
        assert_eq!(m[0].fstype, "ext3");
        assert_eq!(m[1].fstype, "nsfs");
        assert_eq!(m[2].fstype, "cgroup2");
        assert_eq!(unescape("a\\134b\\011"), "a\\b\t");
        assert_eq!(unescape("trailing\\"), "trailing\\");
        assert_eq!(unescape("short\\04"), "short\\04");
    }

    #[test]
    fn unix_socket_paths_are_the_eighth_column() {
        let text = "Num       RefCount Protocol Flags    Type St Inode Path\n\
                    0000000000000000: 00000002 00000000 00010000 0001 01 23817 /run/containerd/s/abc\n\
                    0000000000000000: 00000002 00000000 00010000 0001 01 23818 @abstract\n\
                    0000000000000000: 00000003 00000000 00000000 0001 03 23819\n";
        assert_eq!(parse_unix_sockets(text), vec!["/run/containerd/s/abc"]);
    }

    #[test]
    fn cgroup_trees_list_the_deepest_first() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b/c")).unwrap();
        std::fs::create_dir_all(dir.path().join("a/d")).unwrap();
        let t = cgroup_tree(&dir.path().join("a"));
        assert_eq!(t.len(), 4);
        assert_eq!(t[0], dir.path().join("a/b/c"));
        assert_eq!(t[3], dir.path().join("a"));
    }

    #[test]
    fn our_own_process_is_alive_and_has_an_exe() {
        let me = std::process::id() as i32;
        assert!(process_alive(me));
        assert!(process_exe(me).is_some());
        assert!(!process_alive(i32::MAX));
    }

    #[test]
    fn a_failed_command_says_what_it_printed_about_the_error() {
        let e =
            run(Command::new("sh").args(["-c", "echo ok; echo 'error: refused'; echo ok; exit 1"]))
                .unwrap_err()
                .to_string();
        assert!(
            e.contains("error: refused") && e.contains("1 of 3 lines"),
            "{e}"
        );
        let e = run(Command::new("sh").args(["-c", "echo one; echo two; exit 3"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("one | two"), "{e}");
    }
}

//! The agent run as a container (the agent image, started by `ctr run` or `docker run` with the
//! host's network and PID namespaces and the host's paths bound at the same places): what
//! differs from the agent run on the host is that containerd's shim, which lives in the host's
//! filesystem, cannot start the executable inside the agent's image as the tasks' log driver.
//! [`log_driver_exe`] finds out whether containerd sees the agent's filesystem (the same mount
//! namespace) and, when it does not, puts a copy of the agent's executable in the data root,
//! which the host and the container share, and hands that path to the shim.

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why the agent cannot tell where containerd runs, or cannot give it a log driver.
#[derive(Debug, thiserror::Error)]
pub enum ContainerizedError {
    #[error("containerd (listening on {socket}) is not in the agent's PID namespace: run the agent's container with the host's PID namespace (`ctr run --with-ns pid:/proc/1/ns/pid`, `docker run --pid host`)")]
    OtherPidNamespace { socket: PathBuf },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> ContainerizedError + 'a {
    move |source| ContainerizedError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The mount namespace of a process (`/proc/<pid>/ns/mnt`), as (device, inode).
fn mount_ns(proc_dir: &str) -> Result<(u64, u64), ContainerizedError> {
    let p = PathBuf::from(proc_dir).join("ns/mnt");
    let m = std::fs::metadata(&p).map_err(io_err("reading", &p))?;
    Ok((m.dev(), m.ino()))
}

/// The pid of the process listening on the unix socket (SO_PEERCRED), in this process's PID
/// namespace: `Some(0)` when it is not in it, `None` when nothing answers there.
fn peer_pid(socket: &Path) -> Option<i32> {
    use std::os::fd::AsRawFd;
    let stream = std::os::unix::net::UnixStream::connect(socket).ok()?;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, a valid ucred.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(cred.pid)
}

/// Whether containerd (listening on `socket`) sees the agent's filesystem: it runs in the
/// agent's mount namespace. When containerd does not answer yet, PID 1 (the host's init, in
/// the host's PID namespace) stands for it.
pub fn containerd_shares_our_mounts(socket: &Path) -> Result<bool, ContainerizedError> {
    let ours = mount_ns("/proc/self")?;
    let theirs = match peer_pid(socket) {
        Some(0) => {
            return Err(ContainerizedError::OtherPidNamespace {
                socket: socket.to_path_buf(),
            })
        }
        Some(pid) => mount_ns(&format!("/proc/{pid}"))?,
        None if std::process::id() == 1 => {
            return Err(ContainerizedError::OtherPidNamespace {
                socket: socket.to_path_buf(),
            })
        }
        // Nothing answers on the socket yet, and PID 1's namespace cannot be read (a
        // process without CAP_SYS_PTRACE over it): nothing tells the agent apart from a host
        // process, so it runs as one, and says so.
        None => match mount_ns("/proc/1") {
            Ok(ns) => ns,
            Err(e) => {
                tracing::warn!(
                    "containerd does not answer on {} and {e}: taking the agent for a host process (its own executable is the tasks' log driver)",
                    socket.display()
                );
                return Ok(true);
            }
        },
    };
    Ok(ours == theirs)
}

/// The executable containerd's shim runs as the tasks' log driver: `exe` itself when
/// containerd shares the agent's mounts, else `<data_root>/bin/swarm-agent`, a copy of `exe`
/// (written only when it differs, and atomically: running log drivers keep their old file).
pub fn log_driver_exe(
    containerd_socket: &Path,
    exe: &Path,
    data_root: &Path,
) -> Result<PathBuf, ContainerizedError> {
    if containerd_shares_our_mounts(containerd_socket)? {
        return Ok(exe.to_path_buf());
    }
    let copy = host_copy(exe, &data_root.join("bin"))?;
    tracing::info!(
        "containerd runs outside the agent's mount namespace (the agent is a container): its shim runs the tasks' log driver from {}",
        copy.display()
    );
    Ok(copy)
}

/// `<dir>/swarm-agent`, holding the bytes of `exe` (replaced by a rename when it differs).
pub fn host_copy(exe: &Path, dir: &Path) -> Result<PathBuf, ContainerizedError> {
    let dest = dir.join("swarm-agent");
    let bytes = std::fs::read(exe).map_err(io_err("reading", exe))?;
    if std::fs::read(&dest).is_ok_and(|old| old == bytes) {
        return Ok(dest);
    }
    std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
    let tmp = dir.join(format!(".swarm-agent.{}.tmp", std::process::id()));
    std::fs::write(&tmp, &bytes).map_err(io_err("writing", &tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
        .map_err(io_err("making executable", &tmp))?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io_err("syncing", &tmp))?;
    std::fs::rename(&tmp, &dest).map_err(io_err("renaming into place", &dest))?;
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_copy_is_made_once_and_replaced_when_the_agent_changes() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("exe");
        std::fs::write(&exe, b"agent v1").unwrap();
        let bin = dir.path().join("data/bin");
        let copy = host_copy(&exe, &bin).unwrap();
        assert_eq!(copy, bin.join("swarm-agent"));
        assert_eq!(std::fs::read(&copy).unwrap(), b"agent v1");
        let mode = std::fs::metadata(&copy).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        let ino = std::fs::metadata(&copy).unwrap().ino();
        // The same agent again: the file is kept (a running log driver's file stays put).
        host_copy(&exe, &bin).unwrap();
        assert_eq!(std::fs::metadata(&copy).unwrap().ino(), ino);
        // A newer agent: a new file renamed over the old one.
        std::fs::write(&exe, b"agent v2").unwrap();
        host_copy(&exe, &bin).unwrap();
        assert_eq!(std::fs::read(&copy).unwrap(), b"agent v2");
        assert_ne!(std::fs::metadata(&copy).unwrap().ino(), ino);
        let left: Vec<_> = std::fs::read_dir(&bin).unwrap().flatten().collect();
        assert_eq!(left.len(), 1, "no temporary file left: {left:?}");
    }

    #[test]
    fn a_process_on_the_host_shares_the_mounts_of_what_listens_in_its_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s.sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        // This test process listens itself: the same mount namespace.
        assert_eq!(peer_pid(&sock), Some(std::process::id() as i32));
        assert!(containerd_shares_our_mounts(&sock).unwrap());
        let exe = std::env::current_exe().unwrap();
        assert_eq!(log_driver_exe(&sock, &exe, dir.path()).unwrap(), exe);
        assert!(!dir.path().join("bin").exists());
    }
}

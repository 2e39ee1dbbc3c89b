//! Network namespaces the agent prepares for its tasks.
//!
//! Each task gets a namespace of its own, made by the agent (not by the runtime) so that the
//! network code can give it interfaces before the container starts and find it again after an
//! agent restart. The namespace is kept alive by a bind mount at `<dir>/<task id>` and handed to
//! runc as a path in the OCI spec. Only loopback is configured here; the overlay code adds the
//! task's interfaces.

use std::io;
use std::path::{Path, PathBuf};

/// Errors of namespace handling; each names the namespace file.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("{what} for network namespace {path}: {source}")]
    Sys {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

fn sys<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> NetnsError + 'a {
    move |source| NetnsError::Sys {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The path of a task's namespace under `dir`.
pub fn path(dir: &Path, task_id: &str) -> PathBuf {
    dir.join(task_id)
}

/// Whether `path` is a mounted network namespace (a bind mount of an nsfs inode).
pub fn is_mounted(path: &Path) -> bool {
    let Ok(cpath) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs with a valid NUL-terminated path and a zeroed out-struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(cpath.as_ptr(), &mut st) };
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    rc == 0 && st.f_type as i64 == NSFS_MAGIC
}

/// Creates (or finds, when already mounted) the namespace of `task_id` under `dir`, with
/// loopback up. Returns the path to put in the OCI spec.
pub fn create(dir: &Path, task_id: &str) -> Result<PathBuf, NetnsError> {
    let p = path(dir, task_id);
    if is_mounted(&p) {
        return Ok(p);
    }
    std::fs::create_dir_all(dir).map_err(sys("creating the directory", dir))?;
    let p2 = p.clone();
    // unshare(CLONE_NEWNET) changes the calling thread only: do it on a thread of its own
    // that ends right after, so no other work ever runs in the new namespace by accident.
    std::thread::spawn(move || create_on_this_thread(&p2))
        .join()
        .unwrap_or_else(|_| {
            Err(NetnsError::Sys {
                what: "preparing (the thread panicked)",
                path: p.clone(),
                source: io::Error::other("thread panicked"),
            })
        })?;
    Ok(p)
}

fn create_on_this_thread(p: &Path) -> Result<(), NetnsError> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(p)
        .map_err(sys("creating the mount point", p))?;
    // SAFETY: unshare has no memory-safety preconditions; it affects this thread only.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        let e = io::Error::last_os_error();
        let _ = std::fs::remove_file(p);
        return Err(NetnsError::Sys {
            what: "unshare(CLONE_NEWNET)",
            path: p.to_path_buf(),
            source: e,
        });
    }
    let src = c"/proc/thread-self/ns/net";
    let dst =
        std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).map_err(|_| NetnsError::Sys {
            what: "path with a NUL byte",
            path: p.to_path_buf(),
            source: io::Error::from(io::ErrorKind::InvalidInput),
        })?;
    // SAFETY: valid NUL-terminated strings; a bind mount of our own namespace file.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        let _ = std::fs::remove_file(p);
        return Err(NetnsError::Sys {
            what: "bind-mounting /proc/thread-self/ns/net",
            path: p.to_path_buf(),
            source: e,
        });
    }
    if let Err(e) = loopback_up() {
        let _ = remove(p);
        return Err(NetnsError::Sys {
            what: "bringing loopback up",
            path: p.to_path_buf(),
            source: e,
        });
    }
    Ok(())
}

/// Sets IFF_UP on `lo` in the calling thread's network namespace.
fn loopback_up() -> io::Result<()> {
    // SAFETY: plain socket/ioctl calls on a zeroed ifreq whose name we set; the fd is closed.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        let mut rc = libc::ioctl(fd, libc::SIOCGIFFLAGS as libc::Ioctl, &mut req);
        if rc == 0 {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            rc = libc::ioctl(fd, libc::SIOCSIFFLAGS as libc::Ioctl, &mut req);
        }
        let err = io::Error::last_os_error();
        libc::close(fd);
        if rc != 0 {
            return Err(err);
        }
    }
    Ok(())
}

/// Unmounts and removes a task's namespace file; a missing one is fine.
pub fn remove(p: &Path) -> Result<(), NetnsError> {
    if let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) {
        // SAFETY: valid NUL-terminated path.
        let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            // EINVAL: not a mount point; ENOENT: already gone.
            if !matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOENT)) {
                return Err(NetnsError::Sys {
                    what: "unmounting",
                    path: p.to_path_buf(),
                    source: e,
                });
            }
        }
    }
    match std::fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(NetnsError::Sys {
            what: "removing the mount point",
            path: p.to_path_buf(),
            source: e,
        }),
    }
}

/// Task ids that have a namespace file under `dir`.
pub fn list(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Interfaces of the namespace at `p`, read on a thread that joined it.
    fn links_in(p: &Path) -> Vec<(String, bool)> {
        let p = p.to_path_buf();
        std::thread::spawn(move || {
            let f = std::fs::File::open(&p).expect("open netns");
            use std::os::fd::AsRawFd;
            // SAFETY: setns on a valid namespace fd, on this thread only.
            assert_eq!(
                unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) },
                0,
                "setns: {}",
                io::Error::last_os_error()
            );
            // /sys reflects the mount namespace's netns; /proc/self/net follows the thread.
            let dev = std::fs::read_to_string("/proc/thread-self/net/dev").expect("net/dev");
            let names: Vec<String> = dev
                .lines()
                .skip(2)
                .filter_map(|l| l.split(':').next())
                .map(|s| s.trim().to_string())
                .collect();
            names
                .into_iter()
                .map(|n| {
                    // SAFETY: as in loopback_up.
                    let up = unsafe {
                        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
                        let mut req: libc::ifreq = std::mem::zeroed();
                        for (i, b) in n.bytes().chain([0]).enumerate() {
                            req.ifr_name[i] = b as libc::c_char;
                        }
                        libc::ioctl(fd, libc::SIOCGIFFLAGS as libc::Ioctl, &mut req);
                        libc::close(fd);
                        req.ifr_ifru.ifru_flags & libc::IFF_UP as libc::c_short != 0
                    };
                    (n, up)
                })
                .collect()
        })
        .join()
        .expect("thread")
    }

    #[test]
    fn a_task_namespace_has_loopback_up_and_is_removed() {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root");
        let dir = tempfile::tempdir().expect("tempdir");
        let p = create(dir.path(), "task1").expect("create");
        assert!(is_mounted(&p));
        assert_eq!(links_in(&p), vec![("lo".to_string(), true)]);
        // Idempotent: the same namespace again.
        assert_eq!(create(dir.path(), "task1").expect("again"), p);
        assert_eq!(list(dir.path()), vec!["task1".to_string()]);
        remove(&p).expect("remove");
        assert!(!p.exists());
        assert!(list(dir.path()).is_empty());
        remove(&p).expect("removing twice is fine");
    }
}

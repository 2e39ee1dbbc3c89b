//! A task's secret and config files: written to a tmpfs of its own at `<dir>/<task id>`
//! (memory only, mode 0700, owned by the agent), bind-mounted read-only into the container:
//! the directory of the secrets with relative targets at `/run/secrets`, every other file at
//! its own target. Unmounted and removed when the task ends, so nothing of them is left on
//! the node.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::client::ContainerdError;
use crate::dependencies::{TaskFiles, SECRETS_DIR};

fn io(what: String) -> impl FnOnce(std::io::Error) -> ContainerdError {
    move |source| ContainerdError::Io { what, source }
}

fn cstr(p: &Path) -> Result<std::ffi::CString, ContainerdError> {
    std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| ContainerdError::Invalid(format!("path {} has a NUL byte", p.display())))
}

/// Whether `p` is a mount point (its device differs from its parent's).
fn is_mount_point(p: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(m), Some(parent)) = (std::fs::metadata(p), p.parent()) else {
        return false;
    };
    std::fs::metadata(parent).is_ok_and(|pm| pm.dev() != m.dev())
}

/// The task's tmpfs directory.
pub fn task_files_dir(dir: &Path, task_id: &str) -> PathBuf {
    dir.join(task_id)
}

/// Writes the task's files to a fresh tmpfs and returns the OCI mounts that show them to its
/// container. No files: no tmpfs, no mounts.
pub fn prepare(
    dir: &Path,
    task_id: &str,
    files: &TaskFiles,
) -> Result<Vec<Value>, ContainerdError> {
    if files.is_empty() {
        return Ok(Vec::new());
    }
    let root = task_files_dir(dir, task_id);
    std::fs::create_dir_all(&root).map_err(io(format!("creating {}", root.display())))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io(format!("restricting {}", dir.display())))?;
    if !is_mount_point(&root) {
        let target = cstr(&root)?;
        let size: usize = files.0.iter().map(|f| f.data.len() + 4096).sum::<usize>() + 65536;
        let opts = std::ffi::CString::new(format!("mode=0700,size={size}")).expect("no NUL");
        // SAFETY: valid NUL-terminated strings; a fresh tmpfs on a directory we own.
        let rc = unsafe {
            libc::mount(
                c"swarm-task-files".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                opts.as_ptr().cast(),
            )
        };
        if rc != 0 {
            return Err(ContainerdError::Io {
                what: format!("mounting a tmpfs at {}", root.display()),
                source: std::io::Error::last_os_error(),
            });
        }
    }
    let secrets_dir = root.join("secrets");
    let mut mounts = Vec::new();
    let mut secrets_dir_used = false;
    for (i, f) in files.0.iter().enumerate() {
        let under_secrets = f
            .path
            .strip_prefix(SECRETS_DIR)
            .and_then(|rest| rest.strip_prefix('/'))
            .filter(|rest| f.secret && !rest.is_empty());
        let host = match under_secrets {
            Some(rest) => {
                secrets_dir_used = true;
                secrets_dir.join(rest)
            }
            None => {
                let host = root.join("files").join(i.to_string());
                mounts.push(json!({
                    "destination": f.path, "type": "bind",
                    "source": host.display().to_string(),
                    "options": ["rbind", "rprivate", "ro"],
                }));
                host
            }
        };
        write_file(&host, f.uid, f.gid, f.mode, &f.data)?;
    }
    if secrets_dir_used {
        std::fs::set_permissions(&secrets_dir, std::fs::Permissions::from_mode(0o755))
            .map_err(io(format!("opening {}", secrets_dir.display())))?;
        mounts.insert(
            0,
            json!({
                "destination": SECRETS_DIR, "type": "bind",
                "source": secrets_dir.display().to_string(),
                "options": ["rbind", "rprivate", "ro"],
            }),
        );
    }
    Ok(mounts)
}

fn write_file(
    path: &Path,
    uid: u32,
    gid: u32,
    mode: u32,
    data: &[u8],
) -> Result<(), ContainerdError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io(format!("creating {}", parent.display())))?;
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755))
            .map_err(io(format!("opening {}", parent.display())))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io(format!("creating {}", path.display())))?;
    f.write_all(data)
        .map_err(io(format!("writing {}", path.display())))?;
    std::os::unix::fs::fchown(&f, Some(uid), Some(gid))
        .map_err(io(format!("giving {} to {uid}:{gid}", path.display())))?;
    f.set_permissions(std::fs::Permissions::from_mode(mode & 0o777))
        .map_err(io(format!("setting the mode of {}", path.display())))?;
    Ok(())
}

/// Unmounts and removes the task's tmpfs; nothing there is fine.
pub fn remove(dir: &Path, task_id: &str) {
    let root = task_files_dir(dir, task_id);
    if !root.exists() {
        return;
    }
    if is_mount_point(&root) {
        if let Ok(c) = cstr(&root) {
            // SAFETY: a valid NUL-terminated path.
            if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
                tracing::warn!(
                    task = task_id,
                    "unmounting {}: {}",
                    root.display(),
                    std::io::Error::last_os_error()
                );
            }
        }
    }
    if let Err(e) = std::fs::remove_dir_all(&root) {
        tracing::warn!(task = task_id, "removing {}: {e}", root.display());
    }
}

/// The task ids that have a files directory under `dir`.
pub fn list(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dependencies::TaskFile;
    use std::os::unix::fs::MetadataExt;

    fn file(path: &str, secret: bool, mode: u32, data: &[u8]) -> TaskFile {
        TaskFile {
            path: path.into(),
            secret,
            uid: 1000,
            gid: 2000,
            mode,
            data: data.to_vec(),
        }
    }

    /// Root: a real tmpfs is mounted (fails without the privilege, never skips).
    #[test]
    fn files_live_on_a_tmpfs_with_the_asked_owner_and_mode_and_go_away() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("files");
        let files = TaskFiles(vec![
            file("/run/secrets/db_pw", true, 0o400, b"hunter2"),
            file("/etc/app.conf", false, 0o444, b"port=80"),
            file("/opt/key.pem", true, 0o440, b"KEY"),
        ]);
        let mounts = prepare(&dir, "t1", &files).unwrap();
        let root = task_files_dir(&dir, "t1");
        assert!(is_mount_point(&root), "a tmpfs of its own");
        let fs = std::fs::read_to_string("/proc/self/mounts").unwrap();
        assert!(
            fs.lines()
                .any(|l| l.contains(&*root.to_string_lossy()) && l.contains(" tmpfs ")),
            "{fs}"
        );
        let dests: Vec<&str> = mounts
            .iter()
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        assert_eq!(dests, ["/run/secrets", "/etc/app.conf", "/opt/key.pem"]);
        for m in &mounts {
            assert!(m["options"]
                .as_array()
                .unwrap()
                .contains(&Value::from("ro")));
        }
        let pw = root.join("secrets/db_pw");
        assert_eq!(std::fs::read(&pw).unwrap(), b"hunter2");
        let md = std::fs::metadata(&pw).unwrap();
        assert_eq!((md.uid(), md.gid(), md.mode() & 0o777), (1000, 2000, 0o400));
        let src = mounts[1]["source"].as_str().unwrap();
        assert_eq!(std::fs::read(src).unwrap(), b"port=80");
        remove(&dir, "t1");
        assert!(!root.exists());
        let fs = std::fs::read_to_string("/proc/self/mounts").unwrap();
        assert!(!fs.contains(&*root.to_string_lossy()), "unmounted");
        assert!(prepare(&dir, "t2", &TaskFiles::default())
            .unwrap()
            .is_empty());
        assert!(!task_files_dir(&dir, "t2").exists(), "no files, no tmpfs");
    }
}

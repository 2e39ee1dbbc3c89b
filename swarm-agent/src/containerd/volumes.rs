//! Volumes of the local driver: a named volume is the directory `<volumes dir>/NAME/_data`
//! (Docker's `/var/lib/docker/volumes/NAME/_data`), made by the first task that mounts it on
//! this node, with its labels in `<volumes dir>/NAME/labels.json`, and kept after the task
//! ends for the next task on the node. An anonymous volume (no source) lives in the task's
//! directory (`<task dir>/volumes/<mount index>/_data`) and goes with it when the managers
//! remove the task. A volume that is empty when its task starts gets the image's content at
//! the mount target first (owners, modes, times, links kept), unless `volume-nocopy` is set.

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use proto::MountType;

use super::client::ContainerdError;

/// A volume of a task, ready to be bind-mounted at `target`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskVolume {
    /// The mount target in the container, as the spec gives it.
    pub target: String,
    /// The volume's directory on the node.
    pub host: PathBuf,
    /// The volume is empty and the mount wants the image's content copied into it.
    pub copy: bool,
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> ContainerdError {
    let what = what.into();
    move |source| ContainerdError::Io { what, source }
}

/// Makes (or finds) the directories of the volume mounts among `mounts`: named ones under
/// `volumes_dir`, anonymous ones under `task_dir`.
pub fn prepare(
    volumes_dir: &Path,
    task_dir: &Path,
    mounts: &[proto::Mount],
) -> Result<Vec<TaskVolume>, ContainerdError> {
    let mut out = Vec::new();
    for (i, m) in mounts.iter().enumerate() {
        if m.r#type != MountType::Volume as i32 {
            continue;
        }
        let invalid = |e: String| ContainerdError::Invalid(format!("mount at {}: {e}", m.target));
        swarm_common::volume::check_driver(&m.volume_driver, m.volume_driver_options.keys())
            .map_err(invalid)?;
        let data = if m.source.is_empty() {
            task_dir.join("volumes").join(i.to_string()).join("_data")
        } else {
            swarm_common::volume::check_name(&m.source).map_err(invalid)?;
            named(volumes_dir, &m.source, &m.volume_labels)?
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&data)
            .map_err(io_err(format!("creating the volume {}", data.display())))?;
        let empty = std::fs::read_dir(&data)
            .map_err(io_err(format!("reading the volume {}", data.display())))?
            .next()
            .is_none();
        out.push(TaskVolume {
            target: m.target.clone(),
            host: data,
            copy: empty && !m.volume_nocopy,
        });
    }
    Ok(out)
}

/// `<volumes_dir>/NAME/_data`; the first to make `NAME` writes its labels beside it.
fn named(
    volumes_dir: &Path,
    name: &str,
    labels: &BTreeMap<String, String>,
) -> Result<PathBuf, ContainerdError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o701)
        .create(volumes_dir)
        .map_err(io_err(format!("creating {}", volumes_dir.display())))?;
    let dir = volumes_dir.join(name);
    match std::fs::DirBuilder::new().mode(0o701).create(&dir) {
        Ok(()) => {
            tracing::info!(volume = name, "creating the volume");
            let json = serde_json::to_vec_pretty(labels).map_err(|e| {
                ContainerdError::Invalid(format!("encoding the labels of volume {name}: {e}"))
            })?;
            let tmp = dir.join(".labels.json.tmp");
            std::fs::write(&tmp, json)
                .and_then(|()| std::fs::rename(&tmp, dir.join("labels.json")))
                .map_err(io_err(format!("writing the labels of volume {name}")))?;
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err(format!("creating {}", dir.display()))(e)),
    }
    Ok(dir.join("_data"))
}

/// Copies the image's content at each volume's target into the volumes marked `copy`;
/// `root` is the image mounted read-only ([`super::image::in_image_view`]). A target the
/// image lacks, or that is no directory there, leaves the volume empty (as in Docker).
pub fn copy_image_content(root: &Path, volumes: &[TaskVolume]) -> Result<(), ContainerdError> {
    for v in volumes.iter().filter(|v| v.copy) {
        let Some(src) = super::image::resolve_in_image(root, &v.target)? else {
            continue;
        };
        match std::fs::metadata(&src) {
            Ok(m) if m.is_dir() => {}
            _ => continue,
        }
        let mut links = HashMap::new();
        copy_dir(&src, &v.host, &mut links).map_err(io_err(format!(
            "copying the image's {} into the volume {}",
            v.target,
            v.host.display()
        )))?;
    }
    Ok(())
}

/// Copies the entries of directory `src` into the existing directory `dst`, then gives `dst`
/// the owner, mode and times of `src`. Hard links within the tree stay hard links.
fn copy_dir(src: &Path, dst: &Path, links: &mut HashMap<(u64, u64), PathBuf>) -> io::Result<()> {
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let meta = std::fs::symlink_metadata(&from)?;
        let kind = meta.file_type();
        if kind.is_dir() {
            std::fs::DirBuilder::new().mode(0o700).create(&to)?;
            copy_dir(&from, &to, links)?;
            continue;
        }
        if meta.nlink() > 1 && !kind.is_symlink() {
            if let Some(first) = links.get(&(meta.dev(), meta.ino())) {
                std::fs::hard_link(first, &to)?;
                continue;
            }
            links.insert((meta.dev(), meta.ino()), to.clone());
        }
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&from)?, &to)?;
        } else if kind.is_file() {
            std::fs::copy(&from, &to)?;
        } else {
            // FIFOs and device nodes are made again; sockets belong to a process: skipped.
            use std::os::unix::fs::FileTypeExt;
            if kind.is_socket() {
                continue;
            }
            let c = cstring(&to)?;
            // SAFETY: a valid NUL-terminated path; mknod only creates the node.
            if unsafe { libc::mknod(c.as_ptr(), meta.mode() as libc::mode_t, meta.rdev()) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        copy_attributes(&meta, &to)?;
    }
    copy_attributes(&std::fs::symlink_metadata(src)?, dst)
}

fn cstring(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path with a NUL byte"))
}

/// Owner (first: a chown clears set-id bits), then mode, then access and modification times.
fn copy_attributes(meta: &std::fs::Metadata, to: &Path) -> io::Result<()> {
    std::os::unix::fs::lchown(to, Some(meta.uid()), Some(meta.gid()))?;
    let symlink = meta.file_type().is_symlink();
    if !symlink {
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    }
    let times = [
        libc::timespec {
            tv_sec: meta.atime() as libc::time_t,
            tv_nsec: meta.atime_nsec() as _,
        },
        libc::timespec {
            tv_sec: meta.mtime() as libc::time_t,
            tv_nsec: meta.mtime_nsec() as _,
        },
    ];
    let c = cstring(to)?;
    // SAFETY: a valid path and an array of two timespecs, as utimensat requires.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The bind mounts' sources by target, for [`super::spec::SpecFiles::volumes`].
pub fn by_target(volumes: &[TaskVolume]) -> BTreeMap<String, PathBuf> {
    volumes
        .iter()
        .map(|v| (v.target.clone(), v.host.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume(source: &str, target: &str) -> proto::Mount {
        proto::Mount {
            r#type: MountType::Volume as i32,
            source: source.into(),
            target: target.into(),
            ..Default::default()
        }
    }

    #[test]
    fn named_volumes_are_kept_and_anonymous_ones_live_in_the_task() {
        let tmp = tempfile::tempdir().unwrap();
        let (vols, task) = (tmp.path().join("volumes"), tmp.path().join("task"));
        let mut named = volume("data", "/srv");
        named.volume_labels = [("tier".to_string(), "db".to_string())].into();
        let bind = proto::Mount {
            r#type: MountType::Bind as i32,
            source: "/x".into(),
            target: "/x".into(),
            ..Default::default()
        };
        let mounts = vec![bind, named.clone(), volume("", "/scratch")];
        let got = prepare(&vols, &task, &mounts).unwrap();
        assert_eq!(
            got,
            vec![
                TaskVolume {
                    target: "/srv".into(),
                    host: vols.join("data/_data"),
                    copy: true
                },
                TaskVolume {
                    target: "/scratch".into(),
                    host: task.join("volumes/2/_data"),
                    copy: true
                },
            ]
        );
        let labels: BTreeMap<String, String> =
            serde_json::from_slice(&std::fs::read(vols.join("data/labels.json")).unwrap()).unwrap();
        assert_eq!(labels, named.volume_labels);
        // The next task finds the data and does not copy into a volume that has content.
        std::fs::write(vols.join("data/_data/kept"), "x").unwrap();
        named.volume_labels = [("other".to_string(), "x".to_string())].into();
        let again = prepare(&vols, &tmp.path().join("task2"), &[named]).unwrap();
        assert_eq!(again[0].host, vols.join("data/_data"));
        assert!(!again[0].copy);
        let labels = std::fs::read_to_string(vols.join("data/labels.json")).unwrap();
        assert!(
            labels.contains("tier") && !labels.contains("other"),
            "{labels}"
        );
        // nocopy: never marked for copying.
        let mut nocopy = volume("fresh", "/f");
        nocopy.volume_nocopy = true;
        assert!(!prepare(&vols, &task, &[nocopy]).unwrap()[0].copy);
    }

    #[test]
    fn bad_names_and_drivers_are_refused_before_any_path_is_made() {
        let tmp = tempfile::tempdir().unwrap();
        let vols = tmp.path().join("volumes");
        let e = prepare(&vols, tmp.path(), &[volume("../etc", "/e")]).unwrap_err();
        assert!(e.to_string().contains("invalid characters"), "{e}");
        let mut m = volume("data", "/d");
        m.volume_driver = "nfs".into();
        let e = prepare(&vols, tmp.path(), &[m]).unwrap_err();
        assert!(e.to_string().contains("mount at /d"), "{e}");
        assert!(!vols.exists());
    }

    #[test]
    fn image_content_is_copied_with_modes_links_and_owners() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("image");
        std::fs::create_dir_all(root.join("srv/sub")).unwrap();
        std::fs::write(root.join("srv/a"), "A").unwrap();
        std::fs::set_permissions(root.join("srv/a"), std::fs::Permissions::from_mode(0o640))
            .unwrap();
        std::fs::hard_link(root.join("srv/a"), root.join("srv/sub/a2")).unwrap();
        std::os::unix::fs::symlink("../a", root.join("srv/sub/link")).unwrap();
        std::fs::set_permissions(root.join("srv"), std::fs::Permissions::from_mode(0o750)).unwrap();
        std::os::unix::fs::lchown(root.join("srv/a"), Some(123), Some(456)).unwrap();
        // An absolute symlink to the directory is followed inside the image.
        std::os::unix::fs::symlink("/srv", root.join("link")).unwrap();
        let host = tmp.path().join("vol");
        let skip = tmp.path().join("skip");
        for d in [&host, &skip] {
            std::fs::create_dir(d).unwrap();
        }
        let vols = [
            TaskVolume {
                target: "/link".into(),
                host: host.clone(),
                copy: true,
            },
            TaskVolume {
                target: "/srv".into(),
                host: skip.clone(),
                copy: false,
            },
            TaskVolume {
                target: "/missing".into(),
                host: skip.clone(),
                copy: true,
            },
        ];
        copy_image_content(&root, &vols).unwrap();
        assert_eq!(std::fs::read_to_string(host.join("a")).unwrap(), "A");
        let a = std::fs::metadata(host.join("a")).unwrap();
        assert_eq!((a.mode() & 0o7777, a.uid(), a.gid()), (0o640, 123, 456));
        assert_eq!(
            a.ino(),
            std::fs::metadata(host.join("sub/a2")).unwrap().ino()
        );
        assert_eq!(
            std::fs::read_link(host.join("sub/link")).unwrap(),
            PathBuf::from("../a")
        );
        assert_eq!(
            std::fs::metadata(&host).unwrap().mode() & 0o7777,
            0o750,
            "the volume takes the mode of the image's directory"
        );
        assert_eq!(std::fs::read_dir(&skip).unwrap().count(), 0);
    }
}

//! Files written so that a crash or a power cut leaves either the old content or the new,
//! never a mix, and the new one for sure once the write returned: [`write_durably`].

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Why [`write_durably`] failed: the file it was working on, and the error.
#[derive(Debug)]
pub struct WriteError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "writing {}: {}", self.path.display(), self.source)
    }
}

impl std::error::Error for WriteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Writes `data` to `path` through `<path>.tmp` (created with `mode`), fsynced, renamed
/// over `path`, then the directory fsynced: the rename is on disk only once the directory
/// is, and without that a power cut can bring back the old file (or none) after the caller
/// was told it was written. A crash before the rename leaves the old file and perhaps the
/// temporary one. The directory must exist.
pub fn write_durably(path: &Path, data: &[u8], mode: u32) -> Result<(), WriteError> {
    let at = |p: &Path| {
        let path = p.to_path_buf();
        move |source| WriteError { path, source }
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(at(&tmp))?;
    f.write_all(data).map_err(at(&tmp))?;
    f.sync_all().map_err(at(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(at(path))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(at(dir))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn replaces_the_file_whole_with_its_mode_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, b"old content, longer than the new").unwrap();
        write_durably(&path, b"new", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
        write_durably(&dir.path().join("key"), b"k", 0o600).unwrap();
        let mode = std::fs::metadata(dir.path().join("key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_missing_directory_is_an_error_that_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent").join("f");
        let e = write_durably(&path, b"x", 0o600).unwrap_err();
        assert!(e.to_string().contains("absent/f.tmp"), "{e}");
        assert_eq!(e.source.kind(), std::io::ErrorKind::NotFound);
    }
}

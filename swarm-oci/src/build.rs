//! Build a single-layer OCI image from files, deterministically: the same input gives
//! byte-identical layer, config and manifest (hence the same digests).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::error::{OciError, Result};
use crate::spec::{
    host_architecture, media_types, ContainerConfig, Descriptor, Empty, ImageConfig, ImageManifest,
    RootFs,
};

/// Content of a file put into an image.
#[derive(Clone, Debug)]
pub enum FileSource {
    /// These bytes.
    Bytes(Vec<u8>),
    /// The content of this local file, read by [`ImageBuilder::build`].
    Path(PathBuf),
}

impl From<Vec<u8>> for FileSource {
    fn from(v: Vec<u8>) -> Self {
        FileSource::Bytes(v)
    }
}
impl From<&[u8]> for FileSource {
    fn from(v: &[u8]) -> Self {
        FileSource::Bytes(v.to_vec())
    }
}
impl<const N: usize> From<&[u8; N]> for FileSource {
    fn from(v: &[u8; N]) -> Self {
        FileSource::Bytes(v.to_vec())
    }
}
impl From<PathBuf> for FileSource {
    fn from(p: PathBuf) -> Self {
        FileSource::Path(p)
    }
}
impl From<&Path> for FileSource {
    fn from(p: &Path) -> Self {
        FileSource::Path(p.to_path_buf())
    }
}

#[derive(Clone, Debug)]
enum Node {
    File { source: FileSource, mode: u32 },
    Dir { mode: u32 },
    Symlink { target: String },
}

/// Collects files, directories, symlinks and run settings, then [`build`](Self::build)s one
/// gzip-compressed layer, its config and its manifest (OCI media types).
///
/// Paths are inside the image, absolute or relative to `/` (`/bin/sh` and `bin/sh` are the same);
/// `..` is refused. Missing parent directories are created with mode 0755. Entries are written
/// sorted by path with mtime 0 and uid/gid 0. Mistakes (bad path, a file under a file, bad port)
/// are reported by `build`.
#[derive(Clone, Debug)]
pub struct ImageBuilder {
    entries: BTreeMap<String, Node>,
    errors: Vec<String>,
    architecture: String,
    config: ContainerConfig,
}

impl Default for ImageBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ImageBuilder {
    /// An empty linux image for the host architecture.
    pub fn new() -> Self {
        ImageBuilder {
            entries: BTreeMap::new(),
            errors: Vec::new(),
            architecture: host_architecture().to_string(),
            config: ContainerConfig::default(),
        }
    }

    /// A regular file with `mode` (permission bits, e.g. `0o755`).
    pub fn file(mut self, path: &str, source: impl Into<FileSource>, mode: u32) -> Self {
        if mode > 0o7777 {
            self.errors.push(format!(
                "file {path:?}: mode {mode:o} has bits beyond 07777"
            ));
        }
        self.insert(
            path,
            Node::File {
                source: source.into(),
                mode: mode & 0o7777,
            },
        );
        self
    }

    /// A directory with `mode`.
    pub fn dir(mut self, path: &str, mode: u32) -> Self {
        if mode > 0o7777 {
            self.errors.push(format!(
                "directory {path:?}: mode {mode:o} has bits beyond 07777"
            ));
        }
        self.insert(
            path,
            Node::Dir {
                mode: mode & 0o7777,
            },
        );
        self
    }

    /// A symbolic link at `path` pointing to `target` (kept as written, may be absolute).
    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        if target.is_empty() || target.contains('\0') {
            self.errors.push(format!(
                "symlink {path:?}: target {target:?} must be non-empty without NUL"
            ));
        }
        self.insert(
            path,
            Node::Symlink {
                target: target.to_string(),
            },
        );
        self
    }

    /// `Entrypoint` of the image config.
    pub fn entrypoint<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config.entrypoint = Some(args.into_iter().map(Into::into).collect());
        self
    }

    /// `Cmd` of the image config.
    pub fn cmd<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config.cmd = Some(args.into_iter().map(Into::into).collect());
        self
    }

    /// Set an environment variable (`KEY=VALUE` in `Env`); setting a key again replaces it.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        if key.is_empty() || key.contains('=') {
            self.errors.push(format!(
                "env {key:?}: name must be non-empty and contain no '='"
            ));
            return self;
        }
        let env = self.config.env.get_or_insert_with(Vec::new);
        let prefix = format!("{key}=");
        env.retain(|e| !e.starts_with(&prefix));
        env.push(format!("{key}={value}"));
        self
    }

    /// `WorkingDir`.
    pub fn workdir(mut self, dir: &str) -> Self {
        self.config.working_dir = Some(dir.to_string());
        self
    }

    /// `User` (`uid`, `uid:gid` or a name).
    pub fn user(mut self, user: &str) -> Self {
        self.config.user = Some(user.to_string());
        self
    }

    /// Expose a port: `80/tcp`, `53/udp`, `132/sctp`, or `80` (meaning `80/tcp`).
    pub fn expose(mut self, port: &str) -> Self {
        let (num, proto) = port.split_once('/').unwrap_or((port, "tcp"));
        let ok_num = num.parse::<u16>().is_ok_and(|n| n > 0);
        let ok_proto = matches!(proto, "tcp" | "udp" | "sctp");
        if !ok_num || !ok_proto {
            self.errors.push(format!(
                "expose {port:?}: expected PORT[/tcp|udp|sctp] with PORT in 1-65535"
            ));
            return self;
        }
        self.config
            .exposed_ports
            .get_or_insert_with(BTreeMap::new)
            .insert(format!("{num}/{proto}"), Empty {});
        self
    }

    /// A label of the image config.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.config
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(key.to_string(), value.to_string());
        self
    }

    /// `StopSignal` (`SIGTERM`, `SIGQUIT` ...).
    pub fn stop_signal(mut self, signal: &str) -> Self {
        self.config.stop_signal = Some(signal.to_string());
        self
    }

    /// OCI architecture name (default: the host's, e.g. `amd64`).
    pub fn architecture(mut self, arch: &str) -> Self {
        self.architecture = arch.to_string();
        self
    }

    fn insert(&mut self, path: &str, node: Node) {
        let key = match normalize(path) {
            Ok(k) => k,
            Err(e) => {
                self.errors.push(e);
                return;
            }
        };
        if key.is_empty() {
            match node {
                // The root directory itself is implicit.
                Node::Dir { .. } => {}
                _ => self
                    .errors
                    .push(format!("{path:?}: the image root can only be a directory")),
            }
            return;
        }
        match (self.entries.get(&key), &node) {
            (None, _) | (Some(Node::Dir { .. }), Node::Dir { .. }) => {}
            (Some(_), _) => {
                self.errors.push(format!(
                    "{path:?} is added twice (as {}, then as {})",
                    kind(&self.entries[&key]),
                    kind(&node)
                ));
                return;
            }
        }
        self.entries.insert(key, node);
    }

    /// Write the layer tar, config and manifest.
    pub fn build(&self) -> Result<BuiltImage> {
        if !self.errors.is_empty() {
            return Err(OciError::Build(self.errors.join("; ")));
        }
        // Every ancestor must be a directory; add the missing ones.
        let mut entries = self.entries.clone();
        for path in self.entries.keys() {
            let mut ancestor = path.as_str();
            while let Some((parent, _)) = ancestor.rsplit_once('/') {
                match entries.get(parent) {
                    None => {
                        entries.insert(parent.to_string(), Node::Dir { mode: 0o755 });
                    }
                    Some(Node::Dir { .. }) => {}
                    Some(other) => {
                        return Err(OciError::Build(format!(
                            "/{path} is inside /{parent}, which is a {}, not a directory",
                            kind(other)
                        )))
                    }
                }
                ancestor = parent;
            }
        }

        let tar = write_tar(&entries)?;
        let diff_id = Digest::of(&tar);
        let layer = gzip(&tar)?;
        let layer_desc = Descriptor::of(media_types::OCI_LAYER_GZIP, &layer);

        let config = ImageConfig {
            created: None,
            architecture: self.architecture.clone(),
            os: "linux".into(),
            variant: None,
            config: Some(self.config.clone()),
            rootfs: RootFs {
                kind: "layers".into(),
                diff_ids: vec![diff_id],
            },
            history: Vec::new(),
        };
        let config_bytes =
            serde_json::to_vec(&config).map_err(|e| OciError::json("image config", e))?;
        let config_desc = Descriptor::of(media_types::OCI_CONFIG, &config_bytes);

        let manifest = ImageManifest {
            schema_version: 2,
            media_type: Some(media_types::OCI_MANIFEST.into()),
            config: config_desc.clone(),
            layers: vec![layer_desc.clone()],
            annotations: None,
        };
        let manifest_bytes =
            serde_json::to_vec(&manifest).map_err(|e| OciError::json("image manifest", e))?;
        Ok(BuiltImage {
            manifest_digest: Digest::of(&manifest_bytes),
            manifest,
            manifest_bytes,
            config_digest: config_desc.digest,
            config,
            config_bytes,
            layers: vec![(layer_desc, layer)],
        })
    }
}

fn kind(n: &Node) -> &'static str {
    match n {
        Node::File { .. } => "file",
        Node::Dir { .. } => "directory",
        Node::Symlink { .. } => "symlink",
    }
}

/// `/a//b/./c/` → `a/b/c`; refuses `..`, NUL and empty input.
fn normalize(path: &str) -> std::result::Result<String, String> {
    if path.is_empty() {
        return Err("empty path".into());
    }
    if path.contains('\0') {
        return Err(format!("path {path:?} contains NUL"));
    }
    let mut parts = Vec::new();
    for comp in path.split('/') {
        match comp {
            "" | "." => {}
            ".." => return Err(format!("path {path:?} contains '..'")),
            c => parts.push(c),
        }
    }
    Ok(parts.join("/"))
}

fn write_tar(entries: &BTreeMap<String, Node>) -> Result<Vec<u8>> {
    let tar_err = |path: &str, e: std::io::Error| {
        OciError::io(format!("writing /{path} into the layer tar"), e)
    };
    let mut tar = tar::Builder::new(Vec::new());
    for (path, node) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        match node {
            Node::Dir { mode } => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
                tar.append_data(&mut h, format!("{path}/"), std::io::empty())
                    .map_err(|e| tar_err(path, e))?;
            }
            Node::File { source, mode } => {
                let data = match source {
                    FileSource::Bytes(b) => std::borrow::Cow::Borrowed(b.as_slice()),
                    FileSource::Path(p) => {
                        std::borrow::Cow::Owned(std::fs::read(p).map_err(|e| {
                            OciError::io(
                                format!("reading {} for /{path} in the image", p.display()),
                                e,
                            )
                        })?)
                    }
                };
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                tar.append_data(&mut h, path, &*data)
                    .map_err(|e| tar_err(path, e))?;
            }
            Node::Symlink { target } => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                tar.append_link(&mut h, path, target)
                    .map_err(|e| tar_err(path, e))?;
            }
        }
    }
    tar.into_inner().map_err(|e| tar_err("(end of archive)", e))
}

fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut enc = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::new(), flate2::Compression::default());
    enc.write_all(data)
        .and_then(|_| enc.finish())
        .map_err(|e| OciError::io("compressing the layer", e))
}

/// A built image: everything needed to push it or import it.
#[derive(Clone, Debug)]
pub struct BuiltImage {
    pub manifest: ImageManifest,
    /// The exact manifest JSON (its digest is `manifest_digest`).
    pub manifest_bytes: Vec<u8>,
    pub manifest_digest: Digest,
    pub config: ImageConfig,
    /// The exact config JSON (its digest is `config_digest`).
    pub config_bytes: Vec<u8>,
    pub config_digest: Digest,
    /// Layer descriptors with the compressed layer blobs.
    pub layers: Vec<(Descriptor, Vec<u8>)>,
}

impl BuiltImage {
    /// Descriptor of the manifest (what an image record or index points to).
    pub fn manifest_descriptor(&self) -> Descriptor {
        Descriptor::of(media_types::OCI_MANIFEST, &self.manifest_bytes)
    }

    /// Descriptor of the config.
    pub fn config_descriptor(&self) -> Descriptor {
        self.manifest.config.clone()
    }

    /// Write an OCI image layout directory (`oci-layout`, `index.json`, `blobs/sha256/…`), usable
    /// by `ctr images import` (from a tar of it), `skopeo copy oci:DIR:TAG` or `umoci`. `ref_name`
    /// becomes the `org.opencontainers.image.ref.name` annotation.
    pub fn write_oci_layout(&self, dir: &Path, ref_name: &str) -> Result<()> {
        let io = |what: String| move |e| OciError::io(what, e);
        let blobs = dir.join("blobs").join("sha256");
        std::fs::create_dir_all(&blobs).map_err(io(format!("creating {}", blobs.display())))?;
        let mut blob_list: Vec<(&Digest, &[u8])> = vec![
            (&self.manifest_digest, &self.manifest_bytes),
            (&self.config_digest, &self.config_bytes),
        ];
        for (d, data) in &self.layers {
            blob_list.push((&d.digest, data));
        }
        for (digest, data) in blob_list {
            let p = blobs.join(digest.hex());
            std::fs::write(&p, data).map_err(io(format!("writing {}", p.display())))?;
        }
        let layout = dir.join("oci-layout");
        std::fs::write(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)
            .map_err(io(format!("writing {}", layout.display())))?;
        let mut desc = self.manifest_descriptor();
        let mut ann = BTreeMap::new();
        ann.insert(
            "org.opencontainers.image.ref.name".to_string(),
            ref_name.to_string(),
        );
        desc.annotations = Some(ann);
        let index = crate::spec::ImageIndex {
            schema_version: 2,
            media_type: Some(media_types::OCI_INDEX.into()),
            manifests: vec![desc],
            annotations: None,
        };
        let bytes = serde_json::to_vec(&index).map_err(|e| OciError::json("index.json", e))?;
        let p = dir.join("index.json");
        std::fs::write(&p, bytes).map_err(io(format!("writing {}", p.display())))?;
        Ok(())
    }
}

/// One entry of a layer tar, as read back by [`list_layer`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerEntry {
    /// Path without leading `/` or trailing `/`.
    pub path: String,
    pub kind: LayerEntryKind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
}

/// Kind and content of a [`LayerEntry`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LayerEntryKind {
    File(Vec<u8>),
    Dir,
    Symlink(String),
    Other(u8),
}

/// Read a gzip-compressed layer back (for tests and diagnostics): entries in archive order.
pub fn list_layer(gzipped: &[u8]) -> Result<Vec<LayerEntry>> {
    use std::io::Read;
    let io = |e| OciError::io("reading the layer tar", e);
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(gzipped));
    let mut out = Vec::new();
    for entry in archive.entries().map_err(io)? {
        let mut entry = entry.map_err(io)?;
        let h = entry.header().clone();
        let path = entry
            .path()
            .map_err(io)?
            .to_string_lossy()
            .trim_end_matches('/')
            .to_string();
        let kind = match h.entry_type() {
            tar::EntryType::Regular => {
                let mut data = Vec::new();
                entry.read_to_end(&mut data).map_err(io)?;
                LayerEntryKind::File(data)
            }
            tar::EntryType::Directory => LayerEntryKind::Dir,
            tar::EntryType::Symlink => LayerEntryKind::Symlink(
                entry
                    .link_name()
                    .map_err(io)?
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            ),
            other => LayerEntryKind::Other(other.as_byte()),
        };
        out.push(LayerEntry {
            path,
            kind,
            mode: h.mode().map_err(io)?,
            uid: h.uid().map_err(io)?,
            gid: h.gid().map_err(io)?,
            mtime: h.mtime().map_err(io)?,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ImageBuilder {
        ImageBuilder::new()
            .file("/bin/whoami", b"\x7fELF fake binary".as_slice(), 0o755)
            .file("etc/hostname", b"box\n", 0o644)
            .dir("/tmp", 0o1777)
            .symlink("/bin/sh", "busybox")
            .symlink("/usr/bin/env", "/bin/busybox")
            .entrypoint(["/bin/whoami"])
            .cmd(["--port", "80"])
            .env("PATH", "/bin")
            .env("A", "1")
            .env("PATH", "/usr/bin:/bin")
            .workdir("/")
            .expose("80/tcp")
            .expose("53")
            .label("org.swarm.test", "yes")
            .stop_signal("SIGTERM")
            .architecture("amd64")
    }

    #[test]
    fn same_input_gives_identical_bytes() {
        let a = sample().build().expect("build a");
        let b = sample().build().expect("build b");
        assert_eq!(a.manifest_bytes, b.manifest_bytes);
        assert_eq!(a.manifest_digest, b.manifest_digest);
        assert_eq!(a.config_bytes, b.config_bytes);
        assert_eq!(a.layers[0].1, b.layers[0].1);
        // Insertion order does not matter either.
        let c = ImageBuilder::new()
            .architecture("amd64")
            .stop_signal("SIGTERM")
            .label("org.swarm.test", "yes")
            .expose("53/tcp")
            .expose("80")
            .workdir("/")
            .env("PATH", "/bin")
            .env("A", "1")
            .env("PATH", "/usr/bin:/bin")
            .cmd(["--port", "80"])
            .entrypoint(["/bin/whoami"])
            .symlink("usr/bin/env", "/bin/busybox")
            .symlink("bin/sh", "busybox")
            .dir("tmp/", 0o1777)
            .file("/etc/hostname", b"box\n", 0o644)
            .file("/bin/whoami", b"\x7fELF fake binary".as_slice(), 0o755)
            .build()
            .expect("build c");
        assert_eq!(a.manifest_digest, c.manifest_digest);
        // Different content → different digest.
        let d = sample().file("/etc/extra", b"x", 0o644).build().expect("d");
        assert_ne!(a.manifest_digest, d.manifest_digest);
    }

    #[test]
    fn digests_sizes_and_media_types_are_consistent() {
        let img = sample().build().expect("build");
        assert_eq!(img.manifest_digest, Digest::of(&img.manifest_bytes));
        assert_eq!(img.config_digest, Digest::of(&img.config_bytes));
        assert_eq!(img.manifest.config.size, img.config_bytes.len() as u64);
        assert_eq!(img.manifest.config.media_type, media_types::OCI_CONFIG);
        let (desc, blob) = &img.layers[0];
        assert_eq!(desc.digest, Digest::of(blob));
        assert_eq!(desc.size, blob.len() as u64);
        assert_eq!(desc.media_type, media_types::OCI_LAYER_GZIP);
        assert_eq!(img.manifest.layers, vec![desc.clone()]);
        // diff_id is the digest of the uncompressed tar.
        let mut tar = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(blob.as_slice()), &mut tar)
            .expect("gunzip");
        assert_eq!(img.config.rootfs.diff_ids, vec![Digest::of(&tar)]);
        // The manifest JSON decodes to what we hold.
        let m: ImageManifest = serde_json::from_slice(&img.manifest_bytes).expect("manifest");
        assert_eq!(m, img.manifest);
        assert_eq!(m.schema_version, 2);
        let c: serde_json::Value = serde_json::from_slice(&img.config_bytes).expect("config");
        assert_eq!(c["os"], "linux");
        assert_eq!(c["architecture"], "amd64");
        assert_eq!(c["rootfs"]["type"], "layers");
        assert_eq!(c["config"]["Entrypoint"][0], "/bin/whoami");
        assert_eq!(c["config"]["Cmd"][1], "80");
        assert_eq!(
            c["config"]["Env"],
            serde_json::json!(["A=1", "PATH=/usr/bin:/bin"])
        );
        assert_eq!(
            c["config"]["ExposedPorts"],
            serde_json::json!({"53/tcp": {}, "80/tcp": {}})
        );
        assert_eq!(c["config"]["WorkingDir"], "/");
        assert_eq!(c["config"]["StopSignal"], "SIGTERM");
        assert_eq!(c["config"]["Labels"]["org.swarm.test"], "yes");
        assert_eq!(img.manifest_descriptor().digest, img.manifest_digest);
    }

    #[test]
    fn layer_has_sorted_entries_parents_modes_and_links() {
        let img = sample().build().expect("build");
        let entries = list_layer(&img.layers[0].1).expect("list");
        let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "bin",
                "bin/sh",
                "bin/whoami",
                "etc",
                "etc/hostname",
                "tmp",
                "usr",
                "usr/bin",
                "usr/bin/env"
            ]
        );
        let get = |p: &str| entries.iter().find(|e| e.path == p).expect(p);
        assert_eq!(get("bin").kind, LayerEntryKind::Dir);
        assert_eq!(get("bin").mode, 0o755);
        assert_eq!(get("tmp").mode, 0o1777);
        assert_eq!(get("bin/whoami").mode, 0o755);
        assert_eq!(
            get("bin/whoami").kind,
            LayerEntryKind::File(b"\x7fELF fake binary".to_vec())
        );
        assert_eq!(get("etc/hostname").mode, 0o644);
        assert_eq!(
            get("bin/sh").kind,
            LayerEntryKind::Symlink("busybox".into())
        );
        assert_eq!(
            get("usr/bin/env").kind,
            LayerEntryKind::Symlink("/bin/busybox".into())
        );
        for e in &entries {
            assert_eq!((e.uid, e.gid, e.mtime), (0, 0, 0), "{}", e.path);
        }
    }

    #[test]
    fn files_from_disk_and_long_paths() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("payload");
        std::fs::write(&src, b"from disk").expect("write");
        let long = format!("/{}/file", "d".repeat(150));
        let img = ImageBuilder::new()
            .file("/payload", src.as_path(), 0o600)
            .file(&long, b"deep", 0o644)
            .symlink("/link", &"t".repeat(200))
            .build()
            .expect("build");
        let entries = list_layer(&img.layers[0].1).expect("list");
        let get = |p: &str| entries.iter().find(|e| e.path == p).expect(p);
        assert_eq!(
            get("payload").kind,
            LayerEntryKind::File(b"from disk".to_vec())
        );
        assert_eq!(get("payload").mode, 0o600);
        assert_eq!(get(&long[1..]).kind, LayerEntryKind::File(b"deep".to_vec()));
        assert_eq!(get("link").kind, LayerEntryKind::Symlink("t".repeat(200)));

        let missing = dir.path().join("missing");
        let err = ImageBuilder::new()
            .file("/x", missing.clone(), 0o644)
            .build()
            .expect_err("missing source");
        assert!(
            err.to_string().contains(&missing.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn oci_layout_is_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let img = sample().build().expect("build");
        img.write_oci_layout(dir.path(), "test:v1").expect("layout");
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("index.json")).expect("index"))
                .expect("json");
        assert_eq!(
            index["manifests"][0]["digest"],
            img.manifest_digest.as_str()
        );
        assert_eq!(
            index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
            "test:v1"
        );
        let blob = std::fs::read(
            dir.path()
                .join("blobs/sha256")
                .join(img.layers[0].0.digest.hex()),
        )
        .expect("layer blob");
        assert_eq!(Digest::of(&blob), img.layers[0].0.digest);
    }

    #[test]
    fn mistakes_are_reported_by_build() {
        let cases: Vec<(ImageBuilder, &str)> = vec![
            (
                ImageBuilder::new().file("/a/../b", b"x", 0o644),
                "contains '..'",
            ),
            (ImageBuilder::new().file("", b"x", 0o644), "empty path"),
            (ImageBuilder::new().file("/", b"x", 0o644), "image root"),
            (
                ImageBuilder::new()
                    .file("/a", b"x", 0o644)
                    .file("/a", b"y", 0o644),
                "added twice",
            ),
            (
                ImageBuilder::new().file("/a", b"x", 0o644).dir("/a", 0o755),
                "added twice",
            ),
            (
                ImageBuilder::new()
                    .file("/a", b"x", 0o644)
                    .file("/a/b", b"y", 0o644),
                "not a directory",
            ),
            (
                ImageBuilder::new()
                    .symlink("/l", "x")
                    .file("/l/b", b"y", 0o644),
                "which is a symlink",
            ),
            (
                ImageBuilder::new().file("/a", b"x", 0o10644),
                "beyond 07777",
            ),
            (ImageBuilder::new().symlink("/l", ""), "non-empty"),
            (ImageBuilder::new().expose("http"), "expose \"http\""),
            (ImageBuilder::new().expose("80/icmp"), "expose"),
            (ImageBuilder::new().expose("0/tcp"), "expose"),
            (ImageBuilder::new().env("A=B", "c"), "no '='"),
        ];
        for (b, want) in cases {
            let err = b.build().expect_err(want);
            assert!(err.to_string().contains(want), "{want}: {err}");
        }
        // Dir twice is fine (mode updated), root dir is implicit.
        let img = ImageBuilder::new()
            .dir("/d", 0o700)
            .dir("/d", 0o755)
            .dir("/", 0o755)
            .build()
            .expect("ok");
        let entries = list_layer(&img.layers[0].1).expect("list");
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].mode, 0o755);
    }
}

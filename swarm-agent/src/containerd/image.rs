//! Pull an image into containerd 1.6 without the Transfer service: resolve it with swarm-oci,
//! write the blobs that the content store lacks (digest-verified streams, under a lease),
//! create or update the image record, and unpack the layers into committed snapshots named by
//! their chain IDs (Snapshots.Prepare on the parent → Diff.Apply → Snapshots.Commit).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::CreateRequest as CreateLeaseRequest;
use containerd_client::services::v1::{
    AbortRequest, ApplyRequest, CreateImageRequest, DeleteRequest, GetImageRequest, Image,
    InfoRequest, ReadContentRequest, UpdateImageRequest, WriteAction, WriteContentRequest,
};
use containerd_client::types::{Descriptor as CdDescriptor, Mount};
use futures::{Stream, StreamExt};
use swarm_oci::{
    Descriptor, Digest, ImageConfig, OciError, Reference, Registry, RegistryAuth, RegistryOptions,
};
use tokio::sync::mpsc;

use super::client::{Containerd, ContainerdError};

/// Chunk size of content writes.
const WRITE_CHUNK: usize = 1 << 20;

/// How this node reaches registries: HTTPS with the system's roots and `ca_pem`, except for
/// the registries listed as insecure (plain HTTP).
#[derive(Clone, Debug, Default)]
pub struct RegistryAccess {
    /// `HOST[:PORT]` (or `HOST`, every port) pulled from over plain HTTP.
    pub insecure: Vec<String>,
    /// PEM CA certificates trusted besides the system's.
    pub ca_pem: Option<Vec<u8>>,
    /// The login a task's service was given (`--with-registry-auth`), for its registry only.
    pub login: Option<RegistryAuth>,
}

impl RegistryAccess {
    /// Refuses entries that are not `HOST[:PORT]` and a CA that is not PEM certificates.
    pub fn check(&self) -> Result<(), OciError> {
        for host in &self.insecure {
            Registry::with_options(host, self.options(host))?;
        }
        if self.ca_pem.is_some() {
            Registry::with_options("ca.check.invalid", self.options("ca.check.invalid"))?;
        }
        Ok(())
    }

    /// The client options for `host`.
    pub fn options(&self, host: &str) -> RegistryOptions {
        RegistryOptions {
            insecure: RegistryOptions::is_insecure(host, &self.insecure),
            ca_pem: self.ca_pem.clone(),
            credentials: self
                .login
                .as_ref()
                .filter(|l| l.server_address.is_empty() || l.server_address == host)
                .map(|l| l.credentials.clone()),
            ..RegistryOptions::default()
        }
    }

    /// This node's access with the login of a task's service (Docker's
    /// `PullOptions.RegistryAuth`); an unreadable one is refused with the reason.
    pub fn with_registry_auth(&self, encoded: Option<&str>) -> Result<RegistryAccess, String> {
        let login = match encoded.filter(|e| !e.is_empty()) {
            Some(e) => Some(RegistryAuth::decode(e).map_err(|why| {
                format!("{why}; update the service with `swarm service update --with-registry-auth` after `swarm login`")
            })?),
            None => None,
        };
        Ok(RegistryAccess {
            login,
            ..self.clone()
        })
    }
}

/// An image present in containerd, ready to be used as a container's parent snapshot.
#[derive(Clone, Debug)]
pub struct PulledImage {
    /// The image record's name (the reference as given).
    pub name: String,
    pub manifest_digest: Digest,
    pub config: ImageConfig,
    /// Chain IDs of the layers; the last one is the container's parent snapshot.
    pub chain_ids: Vec<Digest>,
    /// Blobs downloaded from the registry by this pull (empty when all were present).
    pub fetched: Vec<Digest>,
    /// Layers unpacked by this pull (chain IDs).
    pub unpacked: Vec<Digest>,
}

impl PulledImage {
    /// The snapshot the container's rootfs is prepared on ("" for an image without layers).
    pub fn top_snapshot(&self) -> String {
        self.chain_ids
            .last()
            .map(|d| d.to_string())
            .unwrap_or_default()
    }
}

fn pull_err(image: &str) -> impl Fn(OciError) -> ContainerdError + '_ {
    move |source| ContainerdError::Pull {
        image: image.to_string(),
        source: Box::new(source),
    }
}

fn to_cd(desc: &Descriptor) -> CdDescriptor {
    CdDescriptor {
        media_type: desc.media_type.clone(),
        digest: desc.digest.to_string(),
        size: desc.size as i64,
        annotations: HashMap::new(),
    }
}

/// Pulls `image` into containerd and unpacks it for `snapshotter`.
pub async fn pull(
    cd: &Containerd,
    image: &str,
    snapshotter: &str,
    access: &RegistryAccess,
) -> Result<PulledImage, ContainerdError> {
    let perr = pull_err(image);
    let reference = Reference::parse(image).map_err(&perr)?;
    if let Some(digest) = reference.digest() {
        // Pinned to a digest (what `service create` records): when everything is here
        // already, the registry is not asked at all, so tasks start while it is down.
        if let Some(local) = local_image(cd, image, digest, snapshotter).await? {
            return Ok(local);
        }
    }
    let registry =
        Registry::for_reference(&reference, access.options(reference.registry())).map_err(&perr)?;
    let resolved = registry.resolve(&reference).await.map_err(&perr)?;
    let repo = reference.repository().to_string();

    let lease = format!("swarm-pull-{:016x}", rand::random::<u64>());
    cd.leases()
        .create(cd.req(CreateLeaseRequest {
            id: lease.clone(),
            labels: HashMap::new(),
        }))
        .await
        .map_err(|s| ContainerdError::rpc(format!("Leases.Create {lease}"), s))?;
    let result = pull_leased(cd, image, snapshotter, &registry, &repo, &resolved, &lease).await;
    if let Err(s) = cd
        .leases()
        .delete(cd.req(DeleteRequest {
            id: lease.clone(),
            sync: false,
        }))
        .await
    {
        tracing::warn!("containerd Leases.Delete {lease}: {}", s.message());
    }
    result
}

/// The image pinned to `digest` when its manifest, config and every unpacked layer are in
/// containerd already (the image record is written if missing).
async fn local_image(
    cd: &Containerd,
    image: &str,
    digest: &Digest,
    snapshotter: &str,
) -> Result<Option<PulledImage>, ContainerdError> {
    if !content_exists(cd, digest).await? {
        return Ok(None);
    }
    let manifest_bytes = read_content(cd, digest).await?;
    let Ok(manifest) = serde_json::from_slice::<swarm_oci::ImageManifest>(&manifest_bytes) else {
        // An index, or something else: let the full pull sort it out.
        return Ok(None);
    };
    if !content_exists(cd, &manifest.config.digest).await? {
        return Ok(None);
    }
    let config_bytes = read_content(cd, &manifest.config.digest).await?;
    let Ok(config) = serde_json::from_slice::<ImageConfig>(&config_bytes) else {
        return Ok(None);
    };
    let chain_ids = config.chain_ids();
    if chain_ids.len() != manifest.layers.len() {
        return Ok(None);
    }
    for chain in &chain_ids {
        if !snapshot_exists(cd, snapshotter, &chain.to_string()).await? {
            return Ok(None);
        }
    }
    let media_type = manifest
        .media_type
        .clone()
        .unwrap_or_else(|| "application/vnd.oci.image.manifest.v1+json".to_string());
    let mut mdesc = Descriptor::of(&media_type, &manifest_bytes);
    mdesc.digest = digest.clone();
    put_image(cd, image, &mdesc).await?;
    Ok(Some(PulledImage {
        name: image.to_string(),
        manifest_digest: digest.clone(),
        config,
        chain_ids,
        fetched: Vec::new(),
        unpacked: Vec::new(),
    }))
}

#[allow(clippy::too_many_arguments)]
async fn pull_leased(
    cd: &Containerd,
    image: &str,
    snapshotter: &str,
    registry: &Registry,
    repo: &str,
    resolved: &swarm_oci::Resolved,
    lease: &str,
) -> Result<PulledImage, ContainerdError> {
    let perr = pull_err(image);
    let manifest = &resolved.manifest;
    let mut fetched = Vec::new();

    // Config: from the content store when present, else from the registry.
    let config_bytes = if content_exists(cd, &manifest.config.digest).await? {
        read_content(cd, &manifest.config.digest).await?
    } else {
        let (_, bytes) = registry.fetch_config(repo, manifest).await.map_err(&perr)?;
        bytes
    };
    let config: ImageConfig = serde_json::from_slice(&config_bytes).map_err(|e| {
        ContainerdError::Invalid(format!(
            "image {image}: config {} is not valid JSON: {e}",
            manifest.config.digest
        ))
    })?;
    let diff_ids = &config.rootfs.diff_ids;
    if diff_ids.len() != manifest.layers.len() {
        return Err(ContainerdError::Invalid(format!(
            "image {image}: the manifest has {} layers but the config lists {} diff IDs",
            manifest.layers.len(),
            diff_ids.len()
        )));
    }
    let chain_ids = config.chain_ids();

    // Layers.
    for layer in &manifest.layers {
        if content_exists(cd, &layer.digest).await? {
            continue;
        }
        let stream = registry.blob_stream(repo, layer).await.map_err(&perr)?;
        write_content(
            cd,
            lease,
            layer,
            HashMap::new(),
            stream.map(|r| r.map_err(&perr)),
        )
        .await?;
        fetched.push(layer.digest.clone());
    }

    // Config, with the GC reference to the unpacked top snapshot.
    if !content_exists(cd, &manifest.config.digest).await? {
        let mut labels = HashMap::new();
        if let Some(top) = chain_ids.last() {
            labels.insert(
                format!("containerd.io/gc.ref.snapshot.{snapshotter}"),
                top.to_string(),
            );
        }
        write_content(
            cd,
            lease,
            &manifest.config,
            labels,
            futures::stream::iter([Ok(config_bytes.clone())]),
        )
        .await?;
        fetched.push(manifest.config.digest.clone());
    }

    // Manifest, with GC references to config and layers.
    let mdesc = resolved.fetched.descriptor();
    if !content_exists(cd, &mdesc.digest).await? {
        let mut labels = HashMap::new();
        labels.insert(
            "containerd.io/gc.ref.content.config".to_string(),
            manifest.config.digest.to_string(),
        );
        for (i, l) in manifest.layers.iter().enumerate() {
            labels.insert(
                format!("containerd.io/gc.ref.content.l.{i}"),
                l.digest.to_string(),
            );
        }
        write_content(
            cd,
            lease,
            &mdesc,
            labels,
            futures::stream::iter([Ok(resolved.fetched.bytes.clone())]),
        )
        .await?;
    }

    // Image record.
    put_image(cd, image, &mdesc).await?;

    // Unpack.
    let mut unpacked = Vec::new();
    for (i, layer) in manifest.layers.iter().enumerate() {
        let chain = &chain_ids[i];
        if snapshot_exists(cd, snapshotter, &chain.to_string()).await? {
            continue;
        }
        let parent = if i == 0 {
            String::new()
        } else {
            chain_ids[i - 1].to_string()
        };
        unpack_layer(cd, lease, snapshotter, layer, &diff_ids[i], chain, &parent).await?;
        unpacked.push(chain.clone());
    }

    Ok(PulledImage {
        name: image.to_string(),
        manifest_digest: mdesc.digest.clone(),
        config,
        chain_ids,
        fetched,
        unpacked,
    })
}

/// Content.Info: true when the blob is in the content store.
pub async fn content_exists(cd: &Containerd, digest: &Digest) -> Result<bool, ContainerdError> {
    match cd
        .content()
        .info(cd.req(InfoRequest {
            digest: digest.to_string(),
        }))
        .await
    {
        Ok(_) => Ok(true),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
        Err(s) => Err(ContainerdError::rpc(format!("Content.Info {digest}"), s)),
    }
}

/// Content.Read of a whole blob.
pub async fn read_content(cd: &Containerd, digest: &Digest) -> Result<Bytes, ContainerdError> {
    let call = format!("Content.Read {digest}");
    let mut stream = cd
        .content()
        .read(cd.req(ReadContentRequest {
            digest: digest.to_string(),
            offset: 0,
            size: 0,
        }))
        .await
        .map_err(|s| ContainerdError::rpc(&call, s))?
        .into_inner();
    let mut out = Vec::new();
    while let Some(msg) = stream.next().await {
        let msg = msg.map_err(|s| ContainerdError::rpc(&call, s))?;
        out.extend_from_slice(&msg.data);
    }
    Ok(Bytes::from(out))
}

/// Content.Write of one blob from a verified stream, committed with the expected digest and
/// size (containerd verifies them again). Writes lock-step: one request, one response.
pub async fn write_content<S>(
    cd: &Containerd,
    lease: &str,
    desc: &Descriptor,
    labels: HashMap<String, String>,
    source: S,
) -> Result<(), ContainerdError>
where
    S: Stream<Item = Result<Bytes, ContainerdError>>,
{
    let ingest = format!("swarm-{}-{:08x}", desc.digest, rand::random::<u32>());
    let result = match write_ingest(cd, lease, desc, labels, source, &ingest).await {
        // Another pull wrote the same blob meanwhile (containerd checks the expected digest
        // when the write opens): it is there, verified, which is all this write wanted.
        Err(e) if e.is_already_exists() => Ok(()),
        r => r,
    };
    if result.is_err() {
        // Drop the partial ingest; it may already be gone (nothing written, or committed).
        let _ = cd
            .content()
            .abort(cd.req(AbortRequest {
                r#ref: ingest.clone(),
            }))
            .await;
    }
    result
}

async fn write_ingest<S>(
    cd: &Containerd,
    lease: &str,
    desc: &Descriptor,
    labels: HashMap<String, String>,
    source: S,
    ingest: &str,
) -> Result<(), ContainerdError>
where
    S: Stream<Item = Result<Bytes, ContainerdError>>,
{
    let call = format!("Content.Write {}", desc.digest);
    let rpc = |s: tonic::Status| ContainerdError::rpc(&call, s);
    let base = WriteContentRequest {
        action: WriteAction::Stat as i32,
        r#ref: ingest.to_string(),
        total: desc.size as i64,
        expected: desc.digest.to_string(),
        offset: 0,
        data: Vec::new(),
        labels: HashMap::new(),
    };
    let (tx, rx) = mpsc::channel::<WriteContentRequest>(2);
    // The server answers (and sends headers) only after the first message: queue it first.
    tx.send(base.clone())
        .await
        .map_err(|_| ContainerdError::Invalid(format!("{call}: request stream closed")))?;
    let mut responses = cd
        .content()
        .write(cd.leased(tokio_stream::wrappers::ReceiverStream::new(rx), lease))
        .await
        .map_err(rpc)?
        .into_inner();
    let next = |r: Option<Result<_, tonic::Status>>| match r {
        Some(Ok(m)) => Ok(m),
        Some(Err(s)) => Err(ContainerdError::rpc(&call, s)),
        None => Err(ContainerdError::Invalid(format!(
            "{call}: containerd closed the write stream early"
        ))),
    };
    let stat: containerd_client::services::v1::WriteContentResponse =
        next(responses.message().await.transpose())?;
    let _ = stat;

    let mut offset: i64 = 0;
    futures::pin_mut!(source);
    let send_err =
        || ContainerdError::Invalid(format!("{call}: containerd closed the write stream"));
    while let Some(chunk) = source.next().await {
        let chunk = chunk?;
        for part in chunk.chunks(WRITE_CHUNK) {
            let req = WriteContentRequest {
                action: WriteAction::Write as i32,
                offset,
                data: part.to_vec(),
                ..base.clone()
            };
            tx.send(req).await.map_err(|_| send_err())?;
            let resp = next(responses.message().await.transpose())?;
            offset += part.len() as i64;
            if resp.offset != offset {
                return Err(ContainerdError::Invalid(format!(
                    "{call}: containerd is at offset {} after writing up to {offset}",
                    resp.offset
                )));
            }
        }
    }
    let commit = WriteContentRequest {
        action: WriteAction::Commit as i32,
        offset,
        labels,
        ..base.clone()
    };
    tx.send(commit).await.map_err(|_| send_err())?;
    match responses.message().await {
        Ok(Some(_)) => {}
        Ok(None) => return Err(send_err()),
        Err(s) if s.code() == tonic::Code::AlreadyExists => {}
        Err(s) => return Err(ContainerdError::rpc(&call, s)),
    }
    drop(tx);
    Ok(())
}

/// Creates the image record, or updates its target when it points elsewhere.
async fn put_image(
    cd: &Containerd,
    name: &str,
    target: &Descriptor,
) -> Result<(), ContainerdError> {
    let existing = match cd
        .images()
        .get(cd.req(GetImageRequest {
            name: name.to_string(),
        }))
        .await
    {
        Ok(r) => r.into_inner().image,
        Err(s) if s.code() == tonic::Code::NotFound => None,
        Err(s) => return Err(ContainerdError::rpc(format!("Images.Get {name}"), s)),
    };
    let image = Image {
        name: name.to_string(),
        labels: HashMap::new(),
        target: Some(to_cd(target)),
        created_at: None,
        updated_at: None,
    };
    match existing {
        Some(img)
            if img.target.as_ref().map(|t| t.digest.as_str()) == Some(target.digest.as_str()) =>
        {
            Ok(())
        }
        Some(_) => cd
            .images()
            .update(cd.req(UpdateImageRequest {
                image: Some(image),
                update_mask: None,
                source_date_epoch: None,
            }))
            .await
            .map(|_| ())
            .map_err(|s| ContainerdError::rpc(format!("Images.Update {name}"), s)),
        None => match cd
            .images()
            .create(cd.req(CreateImageRequest {
                image: Some(image),
                source_date_epoch: None,
            }))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(()),
            Err(s) => Err(ContainerdError::rpc(format!("Images.Create {name}"), s)),
        },
    }
}

/// Snapshots.Stat: true when the snapshot exists.
pub async fn snapshot_exists(
    cd: &Containerd,
    snapshotter: &str,
    key: &str,
) -> Result<bool, ContainerdError> {
    match cd
        .snapshots()
        .stat(cd.req(StatSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: key.to_string(),
        }))
        .await
    {
        Ok(_) => Ok(true),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
        Err(s) => Err(ContainerdError::rpc(format!("Snapshots.Stat {key}"), s)),
    }
}

/// Prepare an active snapshot on `parent`, apply the layer onto its mounts, check the applied
/// digest is the layer's diff ID and commit it as `chain`.
async fn unpack_layer(
    cd: &Containerd,
    lease: &str,
    snapshotter: &str,
    layer: &Descriptor,
    diff_id: &Digest,
    chain: &Digest,
    parent: &str,
) -> Result<(), ContainerdError> {
    let key = format!("extract-{:08x}-{chain}", rand::random::<u32>());
    let mounts = cd
        .snapshots()
        .prepare(cd.leased(
            PrepareSnapshotRequest {
                snapshotter: snapshotter.to_string(),
                key: key.clone(),
                parent: parent.to_string(),
                labels: HashMap::new(),
            },
            lease,
        ))
        .await
        .map_err(|s| ContainerdError::rpc(format!("Snapshots.Prepare {key} on {parent:?}"), s))?
        .into_inner()
        .mounts;
    let result =
        apply_and_commit(cd, lease, snapshotter, layer, diff_id, chain, &key, mounts).await;
    if result.is_err() || matches!(result, Ok(false)) {
        let _ = cd
            .snapshots()
            .remove(cd.req(RemoveSnapshotRequest {
                snapshotter: snapshotter.to_string(),
                key: key.clone(),
            }))
            .await;
    }
    result.map(|_| ())
}

/// Ok(true) committed, Ok(false) someone else committed the same chain ID first.
#[allow(clippy::too_many_arguments)]
async fn apply_and_commit(
    cd: &Containerd,
    lease: &str,
    snapshotter: &str,
    layer: &Descriptor,
    diff_id: &Digest,
    chain: &Digest,
    key: &str,
    mounts: Vec<Mount>,
) -> Result<bool, ContainerdError> {
    let applied = cd
        .diff()
        .apply(cd.leased(
            ApplyRequest {
                diff: Some(to_cd(layer)),
                mounts,
                payloads: HashMap::new(),
                sync_fs: false,
            },
            lease,
        ))
        .await
        .map_err(|s| ContainerdError::rpc(format!("Diff.Apply {}", layer.digest), s))?
        .into_inner()
        .applied;
    let got = applied.map(|d| d.digest).unwrap_or_default();
    if got != diff_id.as_str() {
        return Err(ContainerdError::Invalid(format!(
            "layer {} unpacked to {got}, but the image config says its diff ID is {diff_id}; the image is corrupt",
            layer.digest
        )));
    }
    match cd
        .snapshots()
        .commit(cd.leased(
            CommitSnapshotRequest {
                snapshotter: snapshotter.to_string(),
                name: chain.to_string(),
                key: key.to_string(),
                labels: HashMap::new(),
            },
            lease,
        ))
        .await
    {
        Ok(_) => Ok(true),
        Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(false),
        Err(s) => Err(ContainerdError::rpc(format!("Snapshots.Commit {chain}"), s)),
    }
}

/// Largest file [`read_image_file`] returns (image files read this way are small: passwd,
/// group ...).
pub const MAX_IMAGE_FILE: usize = 16 << 20;

/// How long the lease protecting a read-only view lives if this process dies before removing
/// it (containerd's garbage collector then removes the view).
const VIEW_LEASE_TTL_SECS: i64 = 600;

/// Reads one file of an unpacked image: `path` (absolute, symlinks resolved inside the image)
/// in the snapshot `parent_snapshot_key` (the image's top snapshot,
/// [`PulledImage::top_snapshot`]). `Ok(None)` when the image has no such file (or no layers).
pub async fn read_image_file(
    cd: &Containerd,
    snapshotter: &str,
    parent_snapshot_key: &str,
    path: &str,
) -> Result<Option<Vec<u8>>, ContainerdError> {
    let mut files = read_image_files(cd, snapshotter, parent_snapshot_key, &[path]).await?;
    Ok(files.pop().flatten())
}

/// [`read_image_file`] for several files with one view and one mount (see [`in_image_view`]).
pub async fn read_image_files(
    cd: &Containerd,
    snapshotter: &str,
    parent_snapshot_key: &str,
    paths: &[&str],
) -> Result<Vec<Option<Vec<u8>>>, ContainerdError> {
    for p in paths {
        if !p.starts_with('/') {
            return Err(ContainerdError::Invalid(format!(
                "image file path {p:?} must be absolute"
            )));
        }
    }
    if parent_snapshot_key.is_empty() {
        return Ok(vec![None; paths.len()]);
    }
    let paths: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
    in_image_view(cd, snapshotter, parent_snapshot_key, move |root| {
        paths
            .iter()
            .map(|p| rootfs::read_in_root(root, p))
            .collect()
    })
    .await
}

/// Runs `f` on the root directory of a read-only view of the snapshot `parent_snapshot_key`
/// (an image's top snapshot): Snapshots.View under a lease that expires on its own, the
/// view's mounts mounted on a private temporary directory by a dedicated thread (which runs
/// `f`), then unmount, Snapshots.Remove and Leases.Delete — also on errors. Paths inside the
/// view are resolved with [`resolve_in_image`].
pub async fn in_image_view<T: Send + 'static>(
    cd: &Containerd,
    snapshotter: &str,
    parent_snapshot_key: &str,
    f: impl FnOnce(&Path) -> Result<T, ContainerdError> + Send + 'static,
) -> Result<T, ContainerdError> {
    use containerd_client::services::v1::snapshots::ViewSnapshotRequest;
    let tag = format!("{:016x}", rand::random::<u64>());
    let lease = format!("swarm-view-{tag}");
    let key = format!("swarm-view-{tag}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let expire = prost_types::Timestamp {
        seconds: now + VIEW_LEASE_TTL_SECS,
        nanos: 0,
    };
    let mut labels = HashMap::new();
    labels.insert("containerd.io/gc.expire".to_string(), expire.to_string());
    cd.leases()
        .create(cd.req(CreateLeaseRequest {
            id: lease.clone(),
            labels,
        }))
        .await
        .map_err(|s| ContainerdError::rpc(format!("Leases.Create {lease}"), s))?;
    let view = cd
        .snapshots()
        .view(cd.leased(
            ViewSnapshotRequest {
                snapshotter: snapshotter.to_string(),
                key: key.clone(),
                parent: parent_snapshot_key.to_string(),
                labels: HashMap::new(),
            },
            &lease,
        ))
        .await
        .map_err(|s| {
            ContainerdError::rpc(format!("Snapshots.View {key} of {parent_snapshot_key}"), s)
        });
    let result = match view {
        Ok(resp) => {
            let mounts = resp.into_inner().mounts;
            let (tx, rx) = tokio::sync::oneshot::channel();
            let spawned = std::thread::Builder::new()
                .name("swarm-image-view".into())
                .spawn(move || {
                    let _ = tx.send(rootfs::with_mounted(&mounts, f));
                });
            let r = match spawned {
                Ok(_) => rx.await.unwrap_or_else(|_| {
                    Err(ContainerdError::Invalid(
                        "the image view thread ended without an answer".into(),
                    ))
                }),
                Err(e) => Err(ContainerdError::Io {
                    what: "starting the image view thread".into(),
                    source: e,
                }),
            };
            if let Err(s) = cd
                .snapshots()
                .remove(cd.req(RemoveSnapshotRequest {
                    snapshotter: snapshotter.to_string(),
                    key: key.clone(),
                }))
                .await
            {
                tracing::warn!("containerd Snapshots.Remove {key}: {}", s.message());
            }
            r
        }
        Err(e) => Err(e),
    };
    if let Err(s) = cd
        .leases()
        .delete(cd.req(DeleteRequest {
            id: lease.clone(),
            sync: false,
        }))
        .await
    {
        tracing::warn!("containerd Leases.Delete {lease}: {}", s.message());
    }
    result
}

/// `path` inside the mounted image `root`, symlinks (absolute ones too) and `..` resolved
/// within `root`; `Ok(None)` when it does not exist.
pub fn resolve_in_image(root: &Path, path: &str) -> Result<Option<PathBuf>, ContainerdError> {
    rootfs::resolve_in_root(root, path)
}

/// Mounting snapshot mounts and reading files inside them (blocking; run on a dedicated
/// thread: it calls `unshare(CLONE_FS)` to own its working directory).
mod rootfs {
    use std::collections::VecDeque;
    use std::ffi::CString;
    use std::io::Read;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::DirBuilderExt;
    use std::path::{Path, PathBuf};

    use containerd_client::types::Mount;

    use super::{ContainerdError, MAX_IMAGE_FILE};

    fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ContainerdError {
        let what = what.into();
        move |source| ContainerdError::Io { what, source }
    }

    fn cstr(s: &[u8], what: &str) -> Result<CString, ContainerdError> {
        CString::new(s).map_err(|_| ContainerdError::Invalid(format!("{what} contains a NUL byte")))
    }

    /// containerd's mount option table: (name, clear, flag).
    const FLAGS: &[(&str, bool, libc::c_ulong)] = &[
        ("async", true, libc::MS_SYNCHRONOUS),
        ("atime", true, libc::MS_NOATIME),
        ("bind", false, libc::MS_BIND),
        ("defaults", false, 0),
        ("dev", true, libc::MS_NODEV),
        ("diratime", true, libc::MS_NODIRATIME),
        ("dirsync", false, libc::MS_DIRSYNC),
        ("exec", true, libc::MS_NOEXEC),
        ("mand", false, libc::MS_MANDLOCK),
        ("noatime", false, libc::MS_NOATIME),
        ("nodev", false, libc::MS_NODEV),
        ("nodiratime", false, libc::MS_NODIRATIME),
        ("noexec", false, libc::MS_NOEXEC),
        ("nomand", true, libc::MS_MANDLOCK),
        ("norelatime", true, libc::MS_RELATIME),
        ("nostrictatime", true, libc::MS_STRICTATIME),
        ("nosuid", false, libc::MS_NOSUID),
        ("rbind", false, libc::MS_BIND | libc::MS_REC),
        ("relatime", false, libc::MS_RELATIME),
        ("remount", false, libc::MS_REMOUNT),
        ("ro", false, libc::MS_RDONLY),
        ("rw", true, libc::MS_RDONLY),
        ("strictatime", false, libc::MS_STRICTATIME),
        ("suid", true, libc::MS_NOSUID),
        ("sync", false, libc::MS_SYNCHRONOUS),
    ];

    /// Mount flags and the data string of containerd mount options.
    pub(super) fn parse_options(options: &[String]) -> (libc::c_ulong, Vec<String>) {
        let mut flags: libc::c_ulong = 0;
        let mut data = Vec::new();
        for o in options {
            match FLAGS.iter().find(|(n, _, _)| n == o) {
                Some((_, true, f)) => flags &= !f,
                Some((_, false, f)) => flags |= f,
                None => data.push(o.clone()),
            }
        }
        (flags, data)
    }

    /// When an overlay `lowerdir=` list is too long for one page, the common parent of the
    /// layers and the option with paths relative to it (containerd's compaction).
    pub(super) fn compact_lowerdir(data: &[String]) -> Option<(PathBuf, Vec<String>)> {
        let idx = data.iter().position(|d| d.starts_with("lowerdir="))?;
        let dirs: Vec<&str> = data[idx]["lowerdir=".len()..].split(':').collect();
        if dirs.len() < 2 {
            return None;
        }
        let first: Vec<&str> = dirs[0].split('/').collect();
        let mut common = first.len().saturating_sub(1);
        for d in &dirs[1..] {
            let parts: Vec<&str> = d.split('/').collect();
            let n = first
                .iter()
                .zip(parts.iter())
                .take_while(|(a, b)| a == b)
                .count();
            common = common.min(n).min(parts.len().saturating_sub(1));
        }
        if common <= 1 {
            return None;
        }
        let prefix = first[..common].join("/");
        let rel: Vec<String> = dirs
            .iter()
            .map(|d| d[prefix.len() + 1..].to_string())
            .collect();
        let mut out = data.to_vec();
        out[idx] = format!("lowerdir={}", rel.join(":"));
        Some((PathBuf::from(prefix), out))
    }

    fn page_size() -> usize {
        // SAFETY: sysconf has no preconditions.
        let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if n > 0 {
            n as usize
        } else {
            4096
        }
    }

    fn mount_one(m: &Mount, target: &Path) -> Result<(), ContainerdError> {
        let (flags, mut data) = parse_options(&m.options);
        let what = format!(
            "mounting {} ({}) on {} for reading image files",
            m.source,
            m.r#type,
            target.display()
        );
        if m.r#type == "overlay" && data.join(",").len() >= page_size() - 512 {
            if let Some((dir, compacted)) = compact_lowerdir(&data) {
                std::env::set_current_dir(&dir)
                    .map_err(io_err(format!("{what}: changing to {}", dir.display())))?;
                data = compacted;
            }
        }
        let src = cstr(m.source.as_bytes(), "mount source")?;
        let tgt = cstr(target.as_os_str().as_bytes(), "mount target")?;
        let fstype = cstr(m.r#type.as_bytes(), "mount type")?;
        let data = cstr(data.join(",").as_bytes(), "mount options")?;
        let bind = flags & libc::MS_BIND != 0;
        // A bind mount ignores MS_RDONLY on the first call: bind, then remount read-only.
        let first_flags = if bind {
            flags & !libc::MS_RDONLY
        } else {
            flags
        };
        // SAFETY: all pointers are valid NUL-terminated strings for the call's duration.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                tgt.as_ptr(),
                fstype.as_ptr(),
                first_flags,
                data.as_ptr().cast(),
            )
        };
        if rc != 0 {
            return Err(io_err(what)(std::io::Error::last_os_error()));
        }
        if bind {
            let ro = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY;
            // SAFETY: as above; a null source/type is allowed for a remount.
            let rc = unsafe {
                libc::mount(
                    std::ptr::null(),
                    tgt.as_ptr(),
                    std::ptr::null(),
                    ro,
                    std::ptr::null(),
                )
            };
            if rc != 0 {
                tracing::debug!(
                    "read-only remount of {}: {}",
                    target.display(),
                    std::io::Error::last_os_error()
                );
            }
        }
        Ok(())
    }

    /// Unmounts everything on `target` (lazily, like containerd's UnmountAll).
    fn unmount_all(target: &Path) -> bool {
        let Ok(tgt) = cstr(target.as_os_str().as_bytes(), "mount target") else {
            return false;
        };
        for _ in 0..64 {
            // SAFETY: tgt is a valid NUL-terminated path.
            let rc = unsafe { libc::umount2(tgt.as_ptr(), libc::MNT_DETACH) };
            if rc != 0 {
                let e = std::io::Error::last_os_error();
                // EINVAL: not a mount point any more.
                return e.raw_os_error() == Some(libc::EINVAL);
            }
        }
        false
    }

    /// Mounts `mounts` on a fresh private directory, runs `f` on it, unmounts and removes it.
    pub(super) fn with_mounted<T>(
        mounts: &[Mount],
        f: impl FnOnce(&Path) -> Result<T, ContainerdError>,
    ) -> Result<T, ContainerdError> {
        // SAFETY: unshare(CLONE_FS) only detaches this thread's cwd/umask/root from the
        // other threads', so that chdir below cannot affect them.
        if unsafe { libc::unshare(libc::CLONE_FS) } != 0 {
            return Err(io_err("unshare(CLONE_FS) for the image view")(
                std::io::Error::last_os_error(),
            ));
        }
        let dir =
            std::env::temp_dir().join(format!("swarm-image-view-{:016x}", rand::random::<u64>()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(io_err(format!("creating {}", dir.display())))?;
        let mut mounted = Ok(());
        for m in mounts {
            if let Err(e) = mount_one(m, &dir) {
                mounted = Err(e);
                break;
            }
        }
        let result = mounted.and_then(|()| f(&dir));
        if unmount_all(&dir) {
            if let Err(e) = std::fs::remove_dir(&dir) {
                tracing::warn!("removing {}: {e}", dir.display());
            }
        } else {
            tracing::warn!(
                "could not unmount {}; leaving the directory in place",
                dir.display()
            );
        }
        result
    }

    /// Reads `path` inside `root` ([`resolve_in_root`]) so that nothing outside it is read.
    /// `Ok(None)` when it does not exist.
    pub(super) fn read_in_root(
        root: &Path,
        path: &str,
    ) -> Result<Option<Vec<u8>>, ContainerdError> {
        let what = || format!("reading {path} in the image");
        let Some(full) = resolve_in_root(root, path)? else {
            return Ok(None);
        };
        let meta = std::fs::metadata(&full).map_err(io_err(what()))?;
        if !meta.is_file() {
            return Err(ContainerdError::Invalid(format!(
                "{path} in the image is not a regular file"
            )));
        }
        let f = std::fs::File::open(&full).map_err(io_err(what()))?;
        let mut buf = Vec::new();
        f.take(MAX_IMAGE_FILE as u64 + 1)
            .read_to_end(&mut buf)
            .map_err(io_err(what()))?;
        if buf.len() > MAX_IMAGE_FILE {
            return Err(ContainerdError::Invalid(format!(
                "{path} in the image is larger than {MAX_IMAGE_FILE} bytes"
            )));
        }
        Ok(Some(buf))
    }

    /// `path` inside `root`, resolving symlinks (absolute ones too) and `..` within `root`.
    /// `Ok(None)` when it does not exist.
    pub(super) fn resolve_in_root(
        root: &Path,
        path: &str,
    ) -> Result<Option<PathBuf>, ContainerdError> {
        let what = || format!("resolving {path} in the image");
        let mut queue: VecDeque<String> = path.split('/').map(str::to_string).collect();
        let mut current: Vec<String> = Vec::new();
        let mut hops = 0;
        while let Some(c) = queue.pop_front() {
            match c.as_str() {
                "" | "." => continue,
                ".." => {
                    current.pop();
                    continue;
                }
                _ => {}
            }
            let mut candidate = root.to_path_buf();
            candidate.extend(current.iter());
            candidate.push(&c);
            let meta = match std::fs::symlink_metadata(&candidate) {
                Ok(m) => m,
                Err(e)
                    if e.kind() == std::io::ErrorKind::NotFound
                        || e.raw_os_error() == Some(libc::ENOTDIR) =>
                {
                    return Ok(None)
                }
                Err(e) => return Err(io_err(what())(e)),
            };
            if meta.file_type().is_symlink() {
                hops += 1;
                if hops > 40 {
                    return Err(ContainerdError::Invalid(format!(
                        "{}: too many levels of symbolic links",
                        what()
                    )));
                }
                let target = std::fs::read_link(&candidate).map_err(io_err(what()))?;
                let target = target.to_string_lossy().into_owned();
                if target.starts_with('/') {
                    current.clear();
                }
                for part in target.split('/').rev() {
                    queue.push_front(part.to_string());
                }
            } else {
                current.push(c);
            }
        }
        let mut full = root.to_path_buf();
        full.extend(current.iter());
        Ok(Some(full))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn options_and_compaction() {
            let (flags, data) =
                parse_options(&["ro".into(), "rbind".into(), "index=off".into(), "rw".into()]);
            assert_eq!(flags, libc::MS_BIND | libc::MS_REC);
            assert_eq!(data, ["index=off"]);
            let data = vec![
                "index=off".to_string(),
                "lowerdir=/var/lib/c/snapshots/12/fs:/var/lib/c/snapshots/3/fs".to_string(),
            ];
            let (dir, out) = compact_lowerdir(&data).unwrap();
            assert_eq!(dir, PathBuf::from("/var/lib/c/snapshots"));
            assert_eq!(out[1], "lowerdir=12/fs:3/fs");
            assert_eq!(compact_lowerdir(&data[..1]), None);
        }

        #[test]
        fn reads_stay_inside_the_root() {
            let tmp = tempfile::tempdir().unwrap();
            let root = tmp.path().join("root");
            std::fs::create_dir_all(root.join("etc")).unwrap();
            std::fs::create_dir_all(root.join("real")).unwrap();
            std::fs::write(root.join("real/passwd"), "root:x:0:0::/:/bin/sh\n").unwrap();
            // An absolute symlink is resolved inside the root, not on the host.
            std::os::unix::fs::symlink("/real/passwd", root.join("etc/passwd")).unwrap();
            std::os::unix::fs::symlink("../../../../../real", root.join("etc/up")).unwrap();
            std::os::unix::fs::symlink("/etc/loop", root.join("etc/loop")).unwrap();
            std::fs::write(tmp.path().join("secret"), "host file").unwrap();
            std::os::unix::fs::symlink("/../secret", root.join("etc/escape")).unwrap();
            assert_eq!(
                read_in_root(&root, "/etc/passwd").unwrap().unwrap(),
                b"root:x:0:0::/:/bin/sh\n"
            );
            assert_eq!(
                read_in_root(&root, "/etc/up/passwd").unwrap().unwrap(),
                b"root:x:0:0::/:/bin/sh\n"
            );
            assert_eq!(read_in_root(&root, "/etc/group").unwrap(), None);
            assert_eq!(read_in_root(&root, "/etc/passwd/x").unwrap(), None);
            assert_eq!(read_in_root(&root, "/etc/escape").unwrap(), None);
            assert!(read_in_root(&root, "/etc/loop").is_err());
            assert!(read_in_root(&root, "/etc").is_err());
        }
    }
}

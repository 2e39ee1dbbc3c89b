//! Pull an image into containerd 1.6 without the Transfer service: resolve it with swarm-oci,
//! write the blobs that the content store lacks (digest-verified streams, under a lease),
//! create or update the image record, and unpack the layers into committed snapshots named by
//! their chain IDs (Snapshots.Prepare on the parent → Diff.Apply → Snapshots.Commit).

use std::collections::HashMap;

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
use swarm_oci::{Descriptor, Digest, ImageConfig, OciError, Reference, Registry};
use tokio::sync::mpsc;

use super::client::{Containerd, ContainerdError};

/// Chunk size of content writes.
const WRITE_CHUNK: usize = 1 << 20;

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
    let registry = Registry::for_reference(&reference).map_err(&perr)?;
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
    let result = write_ingest(cd, lease, desc, labels, source, &ingest).await;
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

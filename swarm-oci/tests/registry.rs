//! Against a real registry: Debian's `docker-registry` (distribution 2.8) started per test.
//! These tests FAIL (never skip) when the binary is missing.

use std::time::{Duration, Instant};

use futures::StreamExt;
use swarm_oci::build::{list_layer, LayerEntryKind};
use swarm_oci::spec::{media_types, Descriptor, ImageIndex, Platform};
use swarm_oci::{Digest, ImageBuilder, LocalRegistry, OciError, Reference};

async fn start() -> (LocalRegistry, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let reg = LocalRegistry::start(dir.path())
        .await
        .unwrap_or_else(|e| panic!("cannot start the test registry: {e}"));
    (reg, dir)
}

fn sample(arch: &str) -> ImageBuilder {
    ImageBuilder::new()
        .architecture(arch)
        .file("/bin/whoami", b"\x7fELF not really".as_slice(), 0o755)
        .file("/etc/motd", b"hello\n", 0o644)
        .dir("/tmp", 0o1777)
        .symlink("/bin/sh", "whoami")
        .entrypoint(["/bin/whoami"])
        .cmd(["--port", "80"])
        .env("PATH", "/bin")
        .expose("80/tcp")
        .label("org.swarm.test", "1")
}

#[tokio::test]
async fn push_resolve_and_download_round_trip() {
    let (reg, _dir) = start().await;
    let client = reg.client().expect("client");
    client.ping().await.expect("ping");
    let img = sample("amd64").build().expect("build");

    let report = client.push(&img, "swarm/test", "v1").await.expect("push");
    assert_eq!(report.manifest_digest, img.manifest_digest);
    assert_eq!(report.uploaded.len(), 2, "config and layer uploaded");
    assert!(report.skipped.is_empty());

    // By tag.
    let by_tag = Reference::parse(&format!("{}/swarm/test:v1", reg.host())).expect("ref");
    let resolved = client
        .resolve_platform(&by_tag, &Platform::linux_amd64())
        .await
        .expect("resolve by tag");
    assert_eq!(resolved.digest(), &img.manifest_digest);
    assert_eq!(&resolved.fetched.bytes[..], &img.manifest_bytes[..]);
    assert_eq!(resolved.fetched.media_type, media_types::OCI_MANIFEST);
    assert_eq!(resolved.manifest, img.manifest);
    assert!(resolved.index.is_none());

    // By digest.
    let by_digest = by_tag.with_digest(img.manifest_digest.clone());
    let by_digest = Reference::parse(&format!(
        "{}/swarm/test@{}",
        reg.host(),
        by_digest.digest().expect("digest")
    ))
    .expect("digest ref");
    let again = client
        .resolve_platform(&by_digest, &Platform::linux_amd64())
        .await
        .expect("resolve by digest");
    assert_eq!(again.digest(), &img.manifest_digest);

    // Config, verified.
    let (config, config_bytes) = client
        .fetch_config("swarm/test", &resolved.manifest)
        .await
        .expect("config");
    assert_eq!(&config_bytes[..], &img.config_bytes[..]);
    assert_eq!(config, img.config);
    let cc = config.config.expect("container config");
    assert_eq!(cc.entrypoint, Some(vec!["/bin/whoami".to_string()]));

    // Layer, verified, through download_blob and through the stream.
    let layer = &resolved.manifest.layers[0];
    let mut out: Vec<u8> = Vec::new();
    let n = client
        .download_blob("swarm/test", layer, &mut out)
        .await
        .expect("download layer");
    assert_eq!(n, layer.size);
    assert_eq!(out, img.layers[0].1);
    let mut stream = client
        .blob_stream("swarm/test", layer)
        .await
        .expect("stream");
    let mut streamed = Vec::new();
    while let Some(chunk) = stream.next().await {
        streamed.extend_from_slice(&chunk.expect("verified chunk"));
    }
    assert_eq!(streamed, out);

    // Unpack and find what was put in.
    let entries = list_layer(&out).expect("layer tar");
    let get = |p: &str| {
        entries
            .iter()
            .find(|e| e.path == p)
            .unwrap_or_else(|| panic!("{p} missing"))
    };
    assert_eq!(
        get("bin/whoami").kind,
        LayerEntryKind::File(b"\x7fELF not really".to_vec())
    );
    assert_eq!(get("bin/whoami").mode, 0o755);
    assert_eq!(get("etc/motd").mode, 0o644);
    assert_eq!(get("etc").kind, LayerEntryKind::Dir);
    assert_eq!(get("tmp").mode, 0o1777);
    assert_eq!(get("bin/sh").kind, LayerEntryKind::Symlink("whoami".into()));
    let diff_id = {
        let mut tar = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(out.as_slice()), &mut tar)
            .expect("gunzip");
        Digest::of(&tar)
    };
    assert_eq!(config.rootfs.diff_ids, vec![diff_id]);
}

#[tokio::test]
async fn pushing_twice_skips_existing_blobs() {
    let (reg, _dir) = start().await;
    let client = reg.client().expect("client");
    let img = sample("amd64").build().expect("build");
    let first = client
        .push(&img, "swarm/twice", "v1")
        .await
        .expect("first push");
    assert_eq!(first.uploaded.len(), 2);
    for d in [&img.config_digest, &img.layers[0].0.digest] {
        assert!(
            client.has_blob("swarm/twice", d).await.expect("head"),
            "{d}"
        );
    }
    assert!(!client
        .has_blob("swarm/twice", &Digest::of(b"never pushed"))
        .await
        .expect("head missing"));

    let second = client
        .push(&img, "swarm/twice", "v2")
        .await
        .expect("second push");
    assert!(second.uploaded.is_empty(), "{second:?}");
    assert_eq!(second.skipped.len(), 2);
    assert_eq!(second.manifest_digest, first.manifest_digest);
    let r = Reference::parse(&format!("{}/swarm/twice:v2", reg.host())).expect("ref");
    let resolved = client
        .resolve_platform(&r, &Platform::linux_amd64())
        .await
        .expect("v2 resolves");
    assert_eq!(resolved.digest(), &img.manifest_digest);
}

#[tokio::test]
async fn missing_things_carry_the_registry_error_code() {
    let (reg, _dir) = start().await;
    let client = reg.client().expect("client");
    let img = sample("amd64").build().expect("build");
    client
        .push(&img, "swarm/present", "v1")
        .await
        .expect("push");

    let r = Reference::parse(&format!("{}/swarm/present:nope", reg.host())).expect("ref");
    let err = client.resolve(&r).await.expect_err("missing tag");
    let msg = err.to_string();
    assert!(msg.contains("MANIFEST_UNKNOWN: manifest unknown"), "{msg}");
    assert!(msg.contains("HTTP 404"), "{msg}");
    assert!(msg.contains("/v2/swarm/present/manifests/nope"), "{msg}");
    assert!(err.is_not_found());

    let r = Reference::parse(&format!("{}/swarm/absent:v1", reg.host())).expect("ref");
    let err = client.resolve(&r).await.expect_err("missing repository");
    assert!(err.is_not_found(), "{err}");
    assert!(
        matches!(
            err.registry_code(),
            Some("MANIFEST_UNKNOWN" | "NAME_UNKNOWN")
        ),
        "{err}"
    );

    let err = client
        .list_tags("swarm/absent")
        .await
        .expect_err("no repository");
    assert_eq!(err.registry_code(), Some("NAME_UNKNOWN"), "{err}");
    assert!(
        err.to_string()
            .contains("NAME_UNKNOWN: repository name not known to registry"),
        "{err}"
    );
    assert_eq!(
        client.list_tags("swarm/present").await.expect("tags"),
        vec!["v1".to_string()]
    );

    let missing = Descriptor::of(media_types::OCI_LAYER_GZIP, b"not there");
    let mut out = Vec::new();
    let err = client
        .download_blob("swarm/present", &missing, &mut out)
        .await
        .expect_err("missing blob");
    assert_eq!(err.registry_code(), Some("BLOB_UNKNOWN"), "{err}");
    assert!(out.is_empty());

    // A reference to another registry is refused, not silently fetched from this one.
    let other = Reference::parse("other.example:5000/swarm/present:v1").expect("ref");
    let err = client.resolve(&other).await.expect_err("other registry");
    assert!(
        err.to_string()
            .contains("is on registry other.example:5000"),
        "{err}"
    );
}

/// Corrupt the registry's stored blob on disk: the registry serves it, the client must refuse it.
#[tokio::test]
async fn corrupted_blobs_are_rejected() {
    let (reg, dir) = start().await;
    let client = reg.client().expect("client");
    let img = sample("amd64").build().expect("build");
    client
        .push(&img, "swarm/corrupt", "v1")
        .await
        .expect("push");
    let (layer, data) = &img.layers[0];
    let stored = dir
        .path()
        .join("data/docker/registry/v2/blobs/sha256")
        .join(&layer.digest.hex()[..2])
        .join(layer.digest.hex())
        .join("data");
    assert!(
        stored.is_file(),
        "registry layout changed: {}",
        stored.display()
    );

    // Same size, other content: digest mismatch.
    let mut bad = data.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    std::fs::write(&stored, &bad).expect("corrupt");
    let mut out = Vec::new();
    let err = client
        .download_blob("swarm/corrupt", layer, &mut out)
        .await
        .expect_err("corrupt blob must fail");
    assert!(matches!(err, OciError::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains(layer.digest.as_str()), "{err}");
    assert!(
        out.len() < bad.len(),
        "the bad final chunk was never handed out"
    );
    let err = client
        .fetch_blob("swarm/corrupt", layer)
        .await
        .expect_err("fetch_blob too");
    assert!(err.is_verification(), "{err}");

    // Longer content: size mismatch.
    let mut longer = data.clone();
    longer.extend_from_slice(b"trailing");
    std::fs::write(&stored, &longer).expect("corrupt");
    let err = client
        .fetch_blob("swarm/corrupt", layer)
        .await
        .expect_err("size must fail");
    assert!(matches!(err, OciError::SizeMismatch { .. }), "{err}");

    // A descriptor that lies about the size of good content.
    let mut config_desc = img.config_descriptor();
    config_desc.size += 1;
    let err = client
        .fetch_blob("swarm/corrupt", &config_desc)
        .await
        .expect_err("wrong size");
    assert!(matches!(err, OciError::SizeMismatch { .. }), "{err}");
}

#[tokio::test]
async fn index_is_followed_to_the_platform_manifest() {
    let (reg, _dir) = start().await;
    let client = reg.client().expect("client");
    let amd = sample("amd64").build().expect("amd64");
    let arm = sample("arm64")
        .file("/arch", b"arm", 0o644)
        .build()
        .expect("arm64");
    client
        .push(&amd, "swarm/multi", "amd64")
        .await
        .expect("push amd");
    client
        .push(&arm, "swarm/multi", "arm64")
        .await
        .expect("push arm");
    let entry = |img: &swarm_oci::BuiltImage, arch: &str| {
        let mut d = img.manifest_descriptor();
        d.platform = Some(Platform::linux(arch));
        d
    };
    let index = ImageIndex {
        schema_version: 2,
        media_type: Some(media_types::OCI_INDEX.into()),
        manifests: vec![entry(&arm, "arm64"), entry(&amd, "amd64")],
        annotations: None,
    };
    let index_bytes = serde_json::to_vec(&index).expect("index json");
    let index_digest = client
        .push_manifest("swarm/multi", "v1", media_types::OCI_INDEX, &index_bytes)
        .await
        .expect("push index");

    let r = Reference::parse(&format!("{}/swarm/multi:v1", reg.host())).expect("ref");
    let got = client
        .resolve_platform(&r, &Platform::linux_amd64())
        .await
        .expect("amd64");
    assert_eq!(got.digest(), &amd.manifest_digest);
    let idx = got.index.as_ref().expect("came through an index");
    assert_eq!(idx.digest, index_digest);
    assert_eq!(idx.media_type, media_types::OCI_INDEX);
    let got = client
        .resolve_platform(&r, &Platform::linux("arm64"))
        .await
        .expect("arm64");
    assert_eq!(got.digest(), &arm.manifest_digest);
    // The default platform is the host's.
    if Platform::host() == Platform::linux_amd64() {
        let got = client.resolve(&r).await.expect("host platform");
        assert_eq!(got.digest(), &amd.manifest_digest);
    }
    let err = client
        .resolve_platform(&r, &Platform::linux("s390x"))
        .await
        .expect_err("no s390x");
    let msg = err.to_string();
    assert!(
        msg.contains("no manifest for platform linux/s390x"),
        "{msg}"
    );
    assert!(
        msg.contains("linux/amd64") && msg.contains("linux/arm64"),
        "{msg}"
    );
}

#[tokio::test]
async fn docker_schema2_media_types_are_accepted() {
    let (reg, _dir) = start().await;
    let client = reg.client().expect("client");
    let img = sample("amd64").build().expect("build");
    // Same blobs, described with Docker media types.
    for (d, data) in [
        (&img.config_digest, &img.config_bytes),
        (&img.layers[0].0.digest, &img.layers[0].1),
    ] {
        client
            .push_blob("swarm/docker", d, bytes::Bytes::copy_from_slice(data))
            .await
            .expect("blob");
    }
    let mut m = img.manifest.clone();
    m.media_type = Some(media_types::DOCKER_MANIFEST.into());
    m.config.media_type = media_types::DOCKER_CONFIG.into();
    m.layers[0].media_type = media_types::DOCKER_LAYER_GZIP.into();
    let bytes = serde_json::to_vec(&m).expect("json");
    let digest = client
        .push_manifest("swarm/docker", "v1", media_types::DOCKER_MANIFEST, &bytes)
        .await
        .expect("push docker manifest");
    // And a Docker manifest list in front of it.
    let mut entry = Descriptor::of(media_types::DOCKER_MANIFEST, &bytes);
    entry.platform = Some(Platform::linux_amd64());
    let list = ImageIndex {
        schema_version: 2,
        media_type: Some(media_types::DOCKER_MANIFEST_LIST.into()),
        manifests: vec![entry],
        annotations: None,
    };
    let list_bytes = serde_json::to_vec(&list).expect("json");
    client
        .push_manifest(
            "swarm/docker",
            "list",
            media_types::DOCKER_MANIFEST_LIST,
            &list_bytes,
        )
        .await
        .expect("push list");

    for tag in ["v1", "list"] {
        let r = Reference::parse(&format!("{}/swarm/docker:{tag}", reg.host())).expect("ref");
        let got = client
            .resolve_platform(&r, &Platform::linux_amd64())
            .await
            .unwrap_or_else(|e| panic!("{tag}: {e}"));
        assert_eq!(got.digest(), &digest, "{tag}");
        assert_eq!(got.fetched.media_type, media_types::DOCKER_MANIFEST);
        let (config, _) = client
            .fetch_config("swarm/docker", &got.manifest)
            .await
            .expect("docker config");
        assert_eq!(config.architecture, "amd64");
    }
}

#[tokio::test]
async fn stopped_registry_is_unreachable_after_retries() {
    let (mut reg, _dir) = start().await;
    let client = reg.client().expect("client");
    let host = reg.host();
    reg.stop();
    let r = Reference::parse(&format!("{host}/swarm/gone:v1")).expect("ref");
    let started = Instant::now();
    let err = client.resolve(&r).await.expect_err("registry is down");
    let took = started.elapsed();
    let msg = err.to_string();
    assert!(matches!(err, OciError::Unreachable { .. }), "{msg}");
    assert!(
        msg.starts_with(&format!("registry {host} unreachable: ")),
        "{msg}"
    );
    assert!(msg.contains("after 3 attempts"), "{msg}");
    assert!(
        took >= Duration::from_millis(500),
        "backoff 200+400ms: {took:?}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");

    let img = sample("amd64").build().expect("build");
    let err = client
        .push(&img, "swarm/gone", "v1")
        .await
        .expect_err("push");
    assert!(err.to_string().contains("unreachable"), "{err}");
}

#[tokio::test]
async fn missing_binary_fails_with_the_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = LocalRegistry::start_with(
        std::path::Path::new("/nonexistent/docker-registry"),
        dir.path(),
    )
    .await
    .expect_err("no binary");
    assert!(
        err.to_string()
            .contains("install Debian's docker-registry package"),
        "{err}"
    );
}

//! Pinning a service's image to its manifest digest, as `docker service create/update` do:
//! the CLI asks the registry once, and every task of the service then runs exactly that image
//! (`HOST/NAME:TAG@sha256:…`) even if the tag moves later. When the registry cannot be asked,
//! the image is left as given, with Docker's warning.

use swarm_oci::{Reference, Registry};

/// The first path component names a registry host (Docker's rule: it has a `.` or a `:`, or
/// is `localhost`). References without one (Docker Hub names) are left as written: the
/// agents resolve them, as Docker Hub is seldom reachable where swarm runs its tests.
fn names_a_registry(image: &str) -> bool {
    match image.split_once('/') {
        Some((host, _)) => host.contains('.') || host.contains(':') || host == "localhost",
        None => false,
    }
}

/// `image` pinned to its digest, or `Err(warning)` saying why it was left as it is.
pub async fn pin(image: &str) -> Result<String, String> {
    if image.contains('@') || !names_a_registry(image) {
        return Ok(image.to_string());
    }
    let warn = |why: String| {
        format!(
            "image {image} could not be accessed on a registry to record\n\
             its digest ({why}). Each node will access {image} independently,\n\
             possibly leading to different nodes running different\n\
             versions of the image."
        )
    };
    let reference = Reference::parse(image).map_err(|e| warn(e.to_string()))?;
    // HTTPS (plain HTTP for a registry listed insecure) with the user's login, if any.
    let opts =
        crate::registry_auth::options_for(reference.registry()).map_err(|e| warn(e.to_string()))?;
    let registry =
        Registry::with_options(reference.registry(), opts).map_err(|e| warn(e.to_string()))?;
    let resolved = registry
        .resolve(&reference)
        .await
        .map_err(|e| warn(e.to_string()))?;
    let tagged = if reference.tag().is_some() {
        image.to_string()
    } else {
        format!("{image}:latest")
    };
    Ok(format!("{tagged}@{}", resolved.fetched.digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_references_with_a_registry_host_are_resolved() {
        assert!(names_a_registry("10.77.0.254:5000/whoami"));
        assert!(names_a_registry("registry.example/app:v1"));
        assert!(names_a_registry("localhost/app"));
        assert!(!names_a_registry("busybox"));
        assert!(!names_a_registry("sim/whoami"));
    }

    #[tokio::test]
    async fn names_without_a_registry_and_pinned_ones_stay_as_they_are() {
        assert_eq!(pin("sim/whoami").await.as_deref(), Ok("sim/whoami"));
        let pinned = format!("127.0.0.1:1/app@sha256:{}", "a".repeat(64));
        assert_eq!(pin(&pinned).await.as_deref(), Ok(pinned.as_str()));
    }

    #[tokio::test]
    async fn an_unreachable_registry_gives_dockers_warning() {
        // Port 1 on loopback: connection refused at once.
        let w = pin("127.0.0.1:1/app:v1").await.expect_err("unreachable");
        assert!(
            w.starts_with("image 127.0.0.1:1/app:v1 could not be accessed on a registry"),
            "{w}"
        );
        assert!(w.contains("unreachable"), "{w}");
    }

    #[tokio::test]
    async fn a_tag_is_pinned_to_the_manifest_digest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let reg = match swarm_oci::LocalRegistry::start(dir.path()).await {
            Ok(r) => r,
            Err(e) => panic!("this test needs Debian's docker-registry package: {e}"),
        };
        let image = swarm_oci::ImageBuilder::new()
            .dir("/etc", 0o755)
            .cmd(["true"])
            .build()
            .expect("build");
        reg.client()
            .expect("client")
            .push(&image, "app", "v1")
            .await
            .expect("push");
        let host = reg.host();
        assert_eq!(
            pin(&format!("{host}/app:v1")).await,
            Ok(format!("{host}/app:v1@{}", image.manifest_digest))
        );
        let w = pin(&format!("{host}/app"))
            .await
            .expect_err("no latest tag was pushed");
        assert!(w.contains("MANIFEST_UNKNOWN"), "{w}");
    }
}

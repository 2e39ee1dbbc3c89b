//! What a registry sends for an image: a manifest, an index (manifest list) or a config, as
//! `swarm-oci` decodes them (`ImageManifest`, `ImageIndex`, `ImageConfig`; the first byte picks
//! which), then used the way pulling uses them (platform choice in an index, chain ids of a
//! config). Checks: no panic; what decodes encodes to JSON that decodes to the same value.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;
use swarm_oci::spec::{chain_ids, media_types};
use swarm_oci::{ImageConfig, ImageIndex, ImageManifest, Platform};

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(v: &T) {
    let json = serde_json::to_vec(v).expect("a decoded value encodes");
    let back: T = serde_json::from_slice(&json).expect("an encoded value decodes");
    assert_eq!(&back, v, "changed through JSON");
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, json)) = data.split_first() else {
        return;
    };
    match sel % 3 {
        0 => {
            if let Ok(m) = serde_json::from_slice::<ImageManifest>(json) {
                round_trip(&m);
                for l in &m.layers {
                    let _ = media_types::layer_compression(&l.media_type);
                }
            }
        }
        1 => {
            if let Ok(index) = serde_json::from_slice::<ImageIndex>(json) {
                round_trip(&index);
                let host = Platform::host();
                let chosen = index.manifests.iter().find(|d| {
                    media_types::is_manifest(&d.media_type)
                        && d.platform.as_ref().is_some_and(|p| host.matches(p))
                });
                if let Some(d) = chosen {
                    assert!(d.platform.as_ref().is_some_and(|p| host.matches(p)));
                }
                for d in &index.manifests {
                    if let Some(p) = &d.platform {
                        let _ = p.to_string();
                    }
                }
            }
        }
        _ => {
            if let Ok(config) = serde_json::from_slice::<ImageConfig>(json) {
                round_trip(&config);
                let chain = chain_ids(&config.rootfs.diff_ids);
                assert_eq!(chain.len(), config.rootfs.diff_ids.len());
                assert_eq!(chain.first(), config.rootfs.diff_ids.first());
            }
        }
    }
});

//! Builds the eBPF programs (the `swarm-ebpf` crate's binary of the same name, for
//! bpfel-unknown-none with the nightly toolchain and bpf-linker, feature `program`) into
//! `OUT_DIR/swarm-ebpf`, where `network::dataplane` embeds them.
//! `AYA_BUILD_SKIP=1` skips it for a quick `cargo check` (the agent then cannot load its data
//! plane and says so).

fn main() {
    let ebpf = aya_build::Package {
        name: "swarm-ebpf",
        root_dir: "../swarm-ebpf",
        // The crate's one binary (`swarm-ebpf`, the object below) requires it.
        features: &["program"],
        ..Default::default()
    };
    println!("cargo:rerun-if-changed=../swarm-ebpf-common/src");
    let object =
        std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("swarm-ebpf");
    if std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        // An empty object: the agent builds, and refuses to start its data plane.
        if !object.exists() {
            std::fs::write(&object, b"").expect("writing an empty eBPF object");
        }
    }
    if let Err(e) = aya_build::build_ebpf([ebpf], aya_build::Toolchain::Nightly) {
        // Say what is missing: the usual causes are the toolchain pieces, not the code.
        panic!(
            "building the eBPF programs failed: {e:#}\n\
             They need the nightly toolchain with rust-src and bpf-linker 0.10.3:\n  \
             rustup toolchain install nightly --component rust-src\n  \
             cargo +nightly install bpf-linker --version 0.10.3 --locked\n\
             (`cargo xtask test` and `cargo xtask lab` install them.)"
        );
    }
}

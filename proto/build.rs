//! Generates the protobuf types and tonic services with protox (no protoc needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/swarm/v1/objects.proto",
        "proto/swarm/v1/control.proto",
        "proto/swarm/v1/dispatcher.proto",
        "proto/swarm/v1/ca.proto",
        "proto/swarm/v1/raft.proto",
        "proto/swarm/v1/health.proto",
        "proto/swarm/v1/local.proto",
        "proto/swarm/v1/logbroker.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .btree_map(".")
        .type_attribute(".", "#[derive(serde::Serialize, serde::Deserialize)]")
        .compile_fds(fds)?;
    Ok(())
}

#!/bin/sh
# The RUSTC_WRAPPER of `cargo xtask fuzz`'s build (xtask/src/fuzz.rs): adds libFuzzer's
# coverage instrumentation (cargo-fuzz's sancov flags) to the crates the fuzzed inputs
# reach, when compiled for the target (not for a build script or a proc macro on the host),
# and to nothing else: tonic, openraft, rustls, tokio and the other crates build plain.
# Cargo does not see these flags: after changing this file, remove
# fuzz/target/x86_64-unknown-linux-gnu/fuzz before building again.
rustc="$1"
shift
for_target=no
name=
prev=
for arg in "$@"; do
    [ "$prev" = "--crate-name" ] && name="$arg"
    [ "$arg" = "--target" ] && for_target=yes
    prev="$arg"
done
if [ "$for_target" = yes ]; then
    case "$name" in
    # The targets, our crates, and the parsers the inputs go through first.
    dns_query | raft_entry | raft_snapshot | control_spec | oci_manifest | oci_reference | ca_csr | resolv_conf | \
        proto | swarm_common | swarm_manager | swarm_agent | swarm_oci | \
        hickory_proto | prost | bincode | serde_json | x509_parser | der_parser | asn1_rs | pem)
        exec "$rustc" "$@" \
            -Cpasses=sancov-module \
            -Cllvm-args=-sanitizer-coverage-level=4 \
            -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
            -Cllvm-args=-sanitizer-coverage-pc-table \
            -Cllvm-args=-sanitizer-coverage-trace-compares \
            -Cllvm-args=-sanitizer-coverage-stack-depth \
            -Cllvm-args=-simplifycfg-branch-fold-threshold=0
        ;;
    esac
fi
exec "$rustc" "$@"

//! `cargo xtask vm-test`: the data plane on an older kernel. Debian 12's own kernel (6.1: no
//! TCX) boots in a QEMU VM through virtme-ng, with the host's `/` shared read-only, and runs
//! the host-built binaries inside: `swarm-agent probe` must pick the eBPF data plane with
//! legacy tc (clsact filters), the data-plane tests of swarm-agent (overlay, VIPs, the
//! routing mesh against real packets in namespaces) must pass with it, and so must
//! the IPVS tests (`network::ipvs`, ignored on kernels without `ip_vs`), and
//! `tests/kernel.rs`: a two-node lab (containerd, agents, registry inside the VM) whose
//! service answers a client on its VIP, its DNS name and a published port, then the same lab
//! test again with `--data-plane ipvs` (IPVS entries, a drained task, network scoping).
//!
//! QEMU runs without KVM (`--disable-kvm`: this machine's KVM only boots PVM guest kernels)
//! and under an outer timeout; programs in the guest run about ten times slower, so the set
//! of tests is kept small. Everything it needs is installed when missing
//! ([`crate::setup::ensure_vm`]); nothing is skipped: a missing piece is an error.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::setup;
use crate::workspace::workspace_root;

/// The tests run in the guest: the probe's own, and the data plane against real packets.
const GUEST_TESTS: &[&str] = &["network::probe::", "network::tests::"];

/// The tests that need the `ip_vs` module (ignored on hosts without it): IPVS programmed
/// over generic netlink, and the IPVS data path's table and rules against real packets.
const GUEST_IPVS_TESTS: &str = "network::ipvs::";

/// The tests of the `tests` crate's library run in the guest: the fault suite's latency and
/// loss against real packets by tc netem (this host, whose kernel has no `sch_netem`, runs
/// the same test with the NFQUEUE way).
const GUEST_NETEM_TESTS: &str = "faults::net::";

/// The lab test run in the guest (`tests/tests/kernel.rs`).
const LAB_TEST: &str = "kernel";

/// The lab test of `--data-plane ipvs` in the same file (ignored elsewhere: it needs ip_vs),
/// run with `SWARM_TEST_DATA_PLANE=ipvs`.
const LAB_IPVS_TEST: &str =
    "ipvs_serves_a_vip_a_name_and_a_published_port_and_drains_a_stopped_task";

/// How long the lab in the guest waits for one of its daemons to answer (the lab's
/// `SWARM_LAB_START_SECS`; 30 s on the host).
const GUEST_LAB_START_SECS: u64 = 180;

/// Set to `ipvs`: the guest runs only the IPVS tests and the IPVS lab test; `netem`: only
/// the netem tests (for work on one part; CI runs everything).
pub const ONLY_ENV: &str = "SWARM_VM_TEST_ONLY";

/// The part of the guest's run [`ONLY_ENV`] asks for ("" for all of it).
fn only() -> anyhow::Result<String> {
    match std::env::var(ONLY_ENV) {
        Err(_) => Ok(String::new()),
        Ok(v) if v.is_empty() || v == "ipvs" || v == "netem" => Ok(v),
        Ok(v) => bail!("{ONLY_ENV}={v:?}: expected ipvs or netem (or unset, for everything)"),
    }
}

/// How long the whole VM run may take (boot, tests, power-off).
const VM_TIMEOUT: Duration = Duration::from_secs(1500);

/// A test binary built by cargo: `package`'s library tests, or its test file `test`.
pub(crate) fn test_binary(package: &str, test: Option<&str>) -> anyhow::Result<PathBuf> {
    let bin = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(&bin);
    cmd.args(["test", "-p", package, "--no-run"]);
    match test {
        Some(t) => cmd.args(["--test", t]),
        None => cmd.arg("--lib"),
    };
    let out = cmd
        .current_dir(workspace_root())
        .output()
        .with_context(|| format!("starting {bin}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("building the tests of {package} failed:\n{stderr}");
    }
    // "  Executable unittests src/lib.rs (target/debug/deps/swarm_agent-0123abcd)"
    // "  Executable tests/kernel.rs (target/debug/deps/kernel-0123abcd)"
    let what = match test {
        Some(t) => format!("Executable tests/{t}.rs ("),
        None => "Executable unittests src/lib.rs (".to_string(),
    };
    let path = stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix(what.as_str())?.strip_suffix(')'))
        .with_context(|| format!("no test binary in cargo's output:\n{stderr}"))?;
    Ok(workspace_root().join(path))
}

/// The shell script the guest runs: the probe's verdict, then the tests.
fn guest_script(
    agent: &Path,
    tests: &Path,
    lib_tests: &Path,
    lab_test: &Path,
    out: &Path,
    ws: &Path,
    only: &str,
) -> String {
    format!(
        r#"#!/bin/sh
# Runs inside the VM, started by `cargo xtask vm-test`.
set -eu
echo "guest: kernel $(uname -r)"
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
# Modules the data plane and the testbed use (autoloaded too; loaded here to fail early).
modprobe -a sch_ingress cls_bpf veth vxlan bridge ip_vs ip_vs_rr nf_tables sch_netem
cd /tmp
{agent} probe > {out}/probe.txt 2>&1 || {{ cat {out}/probe.txt; echo "guest: swarm-agent probe found no data plane"; exit 1; }}
cat {out}/probe.txt
grep -q '^data plane ebpf, tc attach legacy' {out}/probe.txt || {{ echo "guest: the probe did not pick the eBPF data plane with legacy tc"; exit 1; }}
only={only}
start=$(date +%s)
[ -n "$only" ] || {tests} --test-threads=1 {filters}
echo "guest: swarm-agent's tests took $(( $(date +%s) - start )) s"
start=$(date +%s)
[ "$only" = netem ] || {tests} --test-threads=1 --ignored {ipvs}
echo "guest: the IPVS tests took $(( $(date +%s) - start )) s"
start=$(date +%s)
[ "$only" = ipvs ] || {lib_tests} --test-threads=1 {netem}
echo "guest: the netem tests took $(( $(date +%s) - start )) s"
[ "$only" != netem ] || exit 0
# The guest's /tmp is an overlay, which containerd's overlay snapshots cannot sit on (the
# lab keeps its files under /tmp): a tmpfs instead. A workspace under /tmp (a CI clone)
# would vanish under it: it is bound again at its own path on the new /tmp.
mkdir -p /run/vm-workspace
mount --rbind {ws} /run/vm-workspace
mount -t tmpfs -o mode=1777 tmpfs /tmp
case {ws} in
/tmp/*) mkdir -p {ws} && mount --rbind /run/vm-workspace {ws} ;;
esac
cd /tmp
# Lab daemons start about ten times slower here: loading the eBPF data plane alone takes an
# agent many seconds (the lab's default wait is 30 s).
export {start_env}={start_secs}
start=$(date +%s)
[ -n "$only" ] || {lab_test} --test-threads=1 --nocapture || {{ dmesg | tail -n 30; exit 1; }}
echo "guest: the two-node lab test took $(( $(date +%s) - start )) s"
start=$(date +%s)
{data_plane_env}=ipvs {lab_test} --test-threads=1 --nocapture --ignored {ipvs_lab} || {{ dmesg | tail -n 30; exit 1; }}
echo "guest: the two-node IPVS lab test took $(( $(date +%s) - start )) s"
"#,
        agent = agent.display(),
        tests = tests.display(),
        lib_tests = lib_tests.display(),
        netem = GUEST_NETEM_TESTS,
        lab_test = lab_test.display(),
        out = out.display(),
        ws = ws.display(),
        filters = GUEST_TESTS.join(" "),
        ipvs = GUEST_IPVS_TESTS,
        ipvs_lab = LAB_IPVS_TEST,
        data_plane_env = "SWARM_TEST_DATA_PLANE",
        start_env = "SWARM_LAB_START_SECS",
        start_secs = GUEST_LAB_START_SECS,
        only = only,
    )
}

/// PATH with `dir` first.
pub(crate) fn path_with(dir: &Path) -> std::ffi::OsString {
    let mut dirs = vec![dir.to_path_buf()];
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(dirs).unwrap_or_default()
}

/// Boots the 6.1 kernel and runs the guest script; fails with the guest's output when
/// anything in it fails.
pub fn run() -> anyhow::Result<()> {
    let started = Instant::now();
    let vm = setup::ensure_vm()?;
    crate::test::build_for_tests()?;
    let tests = test_binary("swarm-agent", None)?;
    let lib_tests = test_binary("tests", None)?;
    let lab_test = test_binary("tests", Some(LAB_TEST))?;
    let agent = workspace_root().join("target/debug/swarm-agent");
    // Shared read-write with the guest; not under /tmp, where the guest mounts a tmpfs.
    let out = workspace_root()
        .join("target")
        .join(format!("vm-test-{}", std::process::id()));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let script = out.join("guest.sh");
    std::fs::write(
        &script,
        guest_script(
            &agent,
            &tests,
            &lib_tests,
            &lab_test,
            &out,
            &workspace_root(),
            &only()?,
        ),
    )
    .with_context(|| format!("writing {}", script.display()))?;
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    println!(
        "vm-test: booting {} (QEMU without KVM) to run {} and tests/{LAB_TEST}.rs",
        vm.kernel.display(),
        GUEST_TESTS.join(" ")
    );
    let boot = Instant::now();
    let status = Command::new("timeout")
        .arg(VM_TIMEOUT.as_secs().to_string())
        .arg(&vm.vng)
        .args([
            "--disable-kvm",
            "--force-9p",
            "--cpus",
            "1",
            "--memory",
            "2G",
            "--rwdir",
        ])
        .arg(&out)
        .arg("--run")
        .arg(&vm.kernel)
        .arg("--exec")
        .arg(format!("{} {}", script.display(), out.display()))
        // vng runs its own `virtme-run` from PATH.
        .env("PATH", path_with(vm.vng.parent().unwrap_or(Path::new("/"))))
        .current_dir(workspace_root())
        .stdin(std::process::Stdio::null())
        .status()
        .context("starting virtme-ng")?;
    let _ = std::fs::remove_dir_all(&out);
    println!(
        "vm-test: the VM ran {:.0} s ({:.0} s in all, with the build)",
        boot.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    match status.code() {
        Some(0) => Ok(()),
        Some(124) => bail!(
            "vm-test: the VM did not finish within {} s",
            VM_TIMEOUT.as_secs()
        ),
        _ => bail!("vm-test: the tests in the VM failed ({status})"),
    }
}

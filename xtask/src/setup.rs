//! What a fresh machine needs before anything of the project builds or runs, installed when
//! missing (as root): Debian packages, the nightly toolchain with rust-src, bpf-linker, the
//! musl target. This module is part of the light xtask (built without the `lab` feature), so
//! that it compiles with nothing but stable Rust: the commands that need the rest re-run
//! xtask with `--features lab` once this is done.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};

/// (file that shows it is there, Debian package)
const PACKAGES: &[(&str, &str)] = &[
    // containerd-client's build script runs protoc.
    ("/usr/bin/protoc", "protobuf-compiler"),
    ("/usr/bin/docker-registry", "docker-registry"),
    // The registries with a login (swarm-oci's tests, the lab) need bcrypt htpasswd entries.
    ("/usr/bin/htpasswd", "apache2-utils"),
    ("/usr/bin/busybox", "busybox-static"),
    // The agent image's static build (`image agent`): ring, under rustls, compiles C for musl.
    ("/usr/bin/musl-gcc", "musl-tools"),
    ("/usr/bin/containerd", "containerd"),
    ("/usr/sbin/runc", "runc"),
    ("/usr/sbin/ip", "iproute2"),
    ("/usr/bin/ping", "iputils-ping"),
    ("/usr/bin/nsenter", "util-linux"),
    ("/usr/bin/python3", "python3"),
    // The DNS tests forward to a dnsmasq upstream; the DNS benchmark compares with it.
    ("/usr/sbin/dnsmasq", "dnsmasq-base"),
    // The routing-mesh tests check that no NAT rule appears (and the benchmarks use them as
    // peers).
    ("/usr/sbin/iptables", "iptables"),
    ("/usr/sbin/nft", "nftables"),
];

/// Only the benchmarks use these (installed before a `bench` re-runs as the build it needs).
const BENCH_PACKAGES: &[(&str, &str)] = &[
    ("/usr/bin/iperf3", "iperf3"),
    ("/usr/bin/sockperf", "sockperf"),
    ("/usr/bin/dnsperf", "dnsperf"),
];

/// The bpf-linker that matches the nightly's LLVM (see ../shared/toolchain.md).
const BPF_LINKER_VERSION: &str = "0.10.3";
pub const MUSL: &str = "x86_64-unknown-linux-musl";

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn run(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> String {
    cmd.output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Installs the missing Debian packages of `list` with apt-get (as root), or says what to
/// install.
fn ensure_packages(list: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<&str> = list
        .iter()
        .filter(|(path, _)| !Path::new(path).exists())
        .map(|(_, pkg)| *pkg)
        .collect();
    apt_install(&missing)
}

/// Installs Debian packages with apt-get (as root), or says what to install.
fn apt_install(missing: &[&str]) -> anyhow::Result<()> {
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "these Debian packages are needed: {}; install them (`sudo apt-get install -y {}`) or run as root",
            missing.join(", "),
            missing.join(" ")
        );
    }
    println!("installing {}", missing.join(", "));
    let apt = |args: &[&str]| {
        run(
            Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive"),
            &format!("apt-get {}", args.join(" ")),
        )
    };
    apt(&["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(missing);
    apt(&args)
}

/// The nightly toolchain with rust-src (the eBPF programs are built with it, `-Z
/// build-std=core`, and the fuzz targets), bpf-linker, and the musl target of the stable toolchain (whoami).
fn ensure_toolchains() -> anyhow::Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]));
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        println!("installing the nightly toolchain (for the eBPF programs and the fuzz targets)");
        run(
            Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
            ]),
            "rustup toolchain install nightly",
        )?;
    }
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]));
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        println!("adding rust-src to the nightly toolchain");
        run(
            Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]),
            "rustup component add rust-src",
        )?;
    }
    let linker = output(Command::new("bpf-linker").arg("--version"));
    if !linker.contains(BPF_LINKER_VERSION) {
        println!("installing bpf-linker {BPF_LINKER_VERSION} (2–3 minutes)");
        run(
            Command::new("cargo").args([
                "+nightly",
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
            ]),
            "cargo +nightly install bpf-linker",
        )?;
    }
    let targets = output(Command::new("rustup").args(["target", "list", "--installed"]));
    if !targets.lines().any(|l| l.trim() == MUSL) {
        println!("adding the {MUSL} target (for the test images)");
        run(
            Command::new("rustup").args(["target", "add", MUSL]),
            "rustup target add",
        )?;
    }
    Ok(())
}

/// Everything the build and the tests need.
pub fn ensure() -> anyhow::Result<()> {
    ensure_packages(PACKAGES)?;
    ensure_toolchains()
}

/// What `vm-test` boots the older kernel with (see ../shared/toolchain.md, "An older kernel
/// in a VM"): QEMU, udev (virtme-ng's guest init needs it to hand the exit status back), kmod
/// (modules in the guest), and Debian's own kernel.
const VM_PACKAGES: &[(&str, &str)] = &[
    ("/usr/bin/qemu-system-x86_64", "qemu-system-x86"),
    ("/usr/bin/udevadm", "udev"),
    ("/usr/sbin/modprobe", "kmod"),
    ("/usr/bin/mountpoint", "util-linux"),
    // `powerloss`: the virtual disk is formatted on the host, device-mapper in the guest.
    ("/usr/sbin/mkfs.ext4", "e2fsprogs"),
    ("/usr/sbin/dmsetup", "dmsetup"),
    // The IPVS lab test reads a task namespace's table with `ipvsadm -Ln` (observation only:
    // the agent programs IPVS over netlink).
    ("/usr/sbin/ipvsadm", "ipvsadm"),
];
/// virtme-ng from PyPI in a virtual environment of its own.
const VNG_VERSION: &str = "1.42";
const VNG_VENV: &str = "/opt/vng";

/// What the VM test boots.
pub struct Vm {
    /// virtme-ng's `vng`.
    pub vng: std::path::PathBuf,
    /// The newest installed Debian 6.1 kernel image.
    pub kernel: std::path::PathBuf,
}

/// The newest /boot/vmlinuz-6.1.*-amd64 (package names move with Debian's updates).
fn kernel_6_1() -> Option<std::path::PathBuf> {
    let mut found: Vec<(Vec<u32>, std::path::PathBuf)> = std::fs::read_dir("/boot")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let version = name.strip_prefix("vmlinuz-6.1.")?.strip_suffix("-amd64")?;
            let key = version
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse().ok())
                .collect();
            Some((key, e.path()))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p)
}

/// Everything `vm-test` needs: the packages, Debian's 6.1 kernel (`linux-image-amd64` on
/// Debian 12), virtme-ng.
pub fn ensure_vm() -> anyhow::Result<Vm> {
    ensure_packages(VM_PACKAGES)?;
    if kernel_6_1().is_none() {
        apt_install(&["linux-image-amd64"])?;
    }
    let kernel = kernel_6_1().ok_or_else(|| {
        anyhow::anyhow!(
            "no /boot/vmlinuz-6.1.*-amd64 after installing linux-image-amd64: the VM test needs Debian 12's 6.1 kernel"
        )
    })?;
    let vng = Path::new(VNG_VENV).join("bin/vng");
    let have = output(Command::new(&vng).arg("--version"));
    if !have.contains(VNG_VERSION) {
        ensure_packages(&[("/usr/share/doc/python3-venv", "python3-venv")])?;
        println!("installing virtme-ng {VNG_VERSION} in {VNG_VENV}");
        run(
            Command::new("python3").args(["-m", "venv", VNG_VENV]),
            "python3 -m venv",
        )?;
        run(
            Command::new(Path::new(VNG_VENV).join("bin/pip")).args([
                "install",
                "-q",
                &format!("virtme-ng=={VNG_VERSION}"),
            ]),
            "pip install virtme-ng",
        )?;
    }
    Ok(Vm { vng, kernel })
}

/// Everything the benchmarks need too.
pub fn ensure_for_bench() -> anyhow::Result<()> {
    ensure()?;
    ensure_packages(BENCH_PACKAGES)
}

//! `cargo xtask powerloss`: acknowledged writes survive a real power cut of every manager
//! at once. Three managers (the loopback harness's `test-agent`, simulated executor) run in
//! one QEMU VM (Debian 12's 6.1 kernel, virtme-ng, no KVM), each with its data root on the
//! VM's own virtual disk (a raw image, ext4 with the default `data=ordered`); a client in
//! the guest creates services through the first and records each acknowledged one (committed
//! by a quorum of the three), with fsync, in the directory shared with the host (9p: it is on
//! the host's file system before the next write starts). Once enough writes are acknowledged
//! the host kills QEMU (SIGKILL of its process group: no shutdown, no sync, no flush) while
//! the client keeps writing: the three managers lose their power together. A second boot
//! over the same image replays the ext4 journal, starts the three managers from their data
//! roots, and once they have elected a leader every acknowledged write must be there. The
//! managers take a Raft snapshot every 4 entries (`--raft-snapshot-interval`), so the cut
//! also falls among snapshot writes, and each manager must start again from its snapshot
//! file (its log says "loaded the Raft snapshot").
//!
//! What the cut loses: everything in the guest's memory (its page cache, dirty buffers, the
//! running ext4 journal transaction). QEMU writes the image with `cache=writeback`: what the
//! guest did write to its disk is in the host's page cache, which outlives QEMU, so a write
//! that reached the virtual disk without a flush survives (a real disk's volatile cache is not
//! modelled). To prove the cut really loses un-fsynced data, the guest writes a canary file
//! without fsync just before it asks for the cut; the second boot must not find its content,
//! or the run fails (a cut that loses nothing would prove nothing).
//!
//! `--without-raft-fsync` runs the same test against a `test-agent` built with the test-only
//! feature `swarm-manager/test-unsafe-no-raft-fsync` (the Raft log committed without fsync):
//! the test must then fail, naming the acknowledged writes that were lost.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::setup;
use crate::vm::{path_with, test_binary};
use crate::workspace::{cargo, workspace_root};

/// Acknowledged writes before the host cuts the power (the client keeps writing after).
const WRITES_BEFORE_CUT: usize = 12;

/// The managers' `--raft-snapshot-interval`: a snapshot every few entries, so that the
/// cut falls among snapshot writes (the data in a file of its own beside the database,
/// `raft/storage.rs`) and the reboot starts every manager from a snapshot file.
const SNAPSHOT_INTERVAL: u64 = 4;

/// How long one boot may take (boot, the manager's start, the writes).
const BOOT_TIMEOUT: Duration = Duration::from_secs(420);

/// The managers in the guest.
const MANAGERS: usize = 3;

/// The first manager's port in the guest (its metrics on the next one); manager k (from 1)
/// listens on `PORT + 10 * (k - 1)`.
const PORT: u16 = 2377;

/// The disk tests run in the guest (`tests/tests/disks.rs`).
const DISK_TEST: &str = "disks";

/// The size of the virtual disk (a sparse file).
const DISK_BYTES: u64 = 256 << 20;

/// Runs the power-loss test; `without_fsync`: against the build that does not fsync the Raft
/// log (the test must fail).
pub fn run(without_fsync: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    let vm = setup::ensure_vm()?;
    let out = workspace_root()
        .join("target")
        .join(format!("vm-powerloss-{}", std::process::id()));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let result = run_in(&vm, &out, without_fsync);
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&out);
    } else {
        println!("powerloss: the guests' files are kept in {}", out.display());
    }
    println!("powerloss: {:.0} s in all", started.elapsed().as_secs_f64());
    result
}

fn run_in(vm: &setup::Vm, out: &Path, without_fsync: bool) -> anyhow::Result<()> {
    let built = build(out, without_fsync)?;
    let agent = built.agent;
    let swarm = workspace_root().join("target/debug/swarm");
    let disk = out.join("disk.img");
    make_disk(&disk)?;
    let guest = Guest {
        vm,
        out,
        disk: &disk,
    };

    // Boot 1: the manager takes writes; the host cuts the power once enough are acknowledged.
    let script = guest.script("write", &write_script(&agent, &swarm, out))?;
    let cut = guest.boot_until_cut(&script)?;
    let acked = lines(&out.join("acked"));
    println!(
        "powerloss: power cut {:.1} s after the guest asked, {} writes acknowledged",
        cut.as_secs_f64(),
        acked.len()
    );
    if acked.len() < WRITES_BEFORE_CUT {
        bail!(
            "powerloss: only {} writes were acknowledged before the cut\n{}",
            acked.len(),
            guest.logs()
        );
    }

    // Boot 2: the same disk; the manager starts from its data root.
    // The disk tests in the same boot (not with the build that does not fsync: only the
    // power-loss verdict matters there).
    let disks = (!without_fsync).then_some(built.disks.as_path());
    let script = guest.script("check", &check_script(&agent, &swarm, out, disks))?;
    let booted = guest.boot(&script);
    let canary = std::fs::read_to_string(out.join("canary")).unwrap_or_default();
    if !out.join("services").exists() {
        return booted;
    }
    let present: Vec<String> = lines(&out.join("services"))
        .into_iter()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
        .collect();
    if present.is_empty() {
        bail!(
            "powerloss: the managers list no service after the reboot\n{}",
            guest.logs()
        );
    }
    let lost: Vec<&String> = acked.iter().filter(|a| !present.contains(a)).collect();
    println!(
        "powerloss: after the reboot of the {MANAGERS} managers {} services are present, {} of {} acknowledged writes lost; the un-fsynced canary was {}",
        present.len(),
        lost.len(),
        acked.len(),
        canary.trim()
    );
    if !lost.is_empty() {
        bail!(
            "powerloss: acknowledged writes lost in the power cut: {lost:?} (acknowledged: {acked:?}; present after the reboot: {present:?}){}",
            if without_fsync {
                " — as expected of this build, whose Raft log is not fsynced"
            } else {
                ""
            }
        );
    }
    if canary.trim() != "lost" {
        bail!(
            "powerloss: the canary written without fsync just before the cut survived it ({}): this cut does not model a power loss, so it proves nothing\n{}",
            canary.trim(),
            guest.logs()
        );
    }
    if without_fsync {
        bail!("powerloss: the build without Raft fsync lost no acknowledged write: the test did not catch it");
    }
    // Each manager started again from a snapshot file, not only from its log.
    let from_snapshot = (1..=MANAGERS)
        .filter(|k| {
            std::fs::read_to_string(out.join(format!("agent-check-node{k}.log")))
                .unwrap_or_default()
                .contains("loaded the Raft snapshot")
        })
        .count();
    println!(
        "powerloss: {from_snapshot} of {MANAGERS} managers started from a snapshot file (a snapshot every {SNAPSHOT_INTERVAL} entries)"
    );
    if from_snapshot < MANAGERS {
        bail!(
            "powerloss: only {from_snapshot} of {MANAGERS} managers loaded a Raft snapshot after the reboot: the cut did not reach the snapshot files\n{}",
            guest.logs()
        );
    }
    // The power-loss verdict is in; now the disk tests' (same boot).
    booted?;
    println!("powerloss: the disk tests passed (failing and slow disks)");
    Ok(())
}

/// Builds the binaries (as `cargo xtask test` does: nothing to do after it) and the test
/// binary of the disk tests; the `test-agent` without Raft fsync is copied out of the target
/// directory and the normal one built again.
fn build(out: &Path, without_fsync: bool) -> anyhow::Result<Built> {
    let agent = workspace_root().join("target/debug/test-agent");
    let bins = ["build", "--workspace", "--bins"];
    if !without_fsync {
        cargo(&bins)?;
        let disks = test_binary("tests", Some(DISK_TEST))?;
        return Ok(Built { agent, disks });
    }
    cargo(&[
        "build",
        "--workspace",
        "--bins",
        "--features",
        "swarm-manager/test-unsafe-no-raft-fsync",
    ])?;
    let unsafe_agent = out.join("test-agent-without-raft-fsync");
    std::fs::copy(&agent, &unsafe_agent).with_context(|| format!("copying {}", agent.display()))?;
    cargo(&bins)?;
    let disks = test_binary("tests", Some(DISK_TEST))?;
    Ok(Built {
        agent: unsafe_agent,
        disks,
    })
}

/// What the guest runs.
struct Built {
    /// The `test-agent` of the power-loss test.
    agent: PathBuf,
    /// `tests/tests/disks.rs`.
    disks: PathBuf,
}

/// A sparse raw image formatted ext4 on the host.
fn make_disk(disk: &Path) -> anyhow::Result<()> {
    let f = std::fs::File::create(disk).with_context(|| format!("creating {}", disk.display()))?;
    f.set_len(DISK_BYTES)?;
    drop(f);
    let o = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(disk)
        .output()
        .context("running mkfs.ext4")?;
    if !o.status.success() {
        bail!(
            "mkfs.ext4 {} failed: {}",
            disk.display(),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(())
}

/// The lines of a file (none when it is missing).
fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

/// The start of both scripts: the disk mounted, and `start_managers`, which starts the
/// managers on it (node1 … node3, each on its own data root, socket and port) and waits for
/// their sockets; `cli` talks to node1.
fn preamble(phase: &str, agent: &Path, swarm: &Path, out: &Path) -> String {
    format!(
        r#"#!/bin/sh
# Runs inside the VM, started by `cargo xtask powerloss` ({phase}).
set -eu
OUT={out}
exec >"$OUT/{phase}.log" 2>&1
echo "guest: kernel $(uname -r)"
modprobe ext4
mkdir -p /run/disk
mount -t ext4 /dev/vda /run/disk
grep ' /run/disk ' /proc/mounts
cd /tmp
cli() {{ {swarm} -H unix:///run/node1.sock "$@"; }}
port() {{ echo $(({port} + 10 * ($1 - 1))); }}
start_managers() {{
    MANAGERS=""
    for k in $(seq 1 {managers}); do
        {agent} --data-root /run/disk/node$k --socket /run/node$k.sock --hostname node$k \
            --raft-snapshot-interval {snapshot_interval} --metrics-addr 127.0.0.1:$(($(port $k) + 1)) >"$OUT/agent-{phase}-node$k.log" 2>&1 &
        MANAGERS="$MANAGERS $!"
    done
    for k in $(seq 1 {managers}); do
        i=0
        while [ ! -S /run/node$k.sock ]; do
            i=$((i + 1)); [ $i -lt 600 ] || {{ echo "guest: node$k opened no socket"; exit 1; }}
            sleep 0.2
        done
    done
}}
"#,
        out = out.display(),
        swarm = swarm.display(),
        agent = agent.display(),
        port = PORT,
        managers = MANAGERS,
        snapshot_interval = SNAPSHOT_INTERVAL,
    )
}

/// Boot 1: `swarm init` on node1, the others joined as managers, then service creates until
/// the power is cut.
fn write_script(agent: &Path, swarm: &Path, out: &Path) -> String {
    preamble("write", agent, swarm, out)
        + &format!(
            r#"start_managers
cli init --advertise-addr 127.0.0.1:$(port 1) --listen-addr 127.0.0.1:$(port 1)
for k in $(seq 2 {managers}); do
    # A new manager's first commits need its answer: the token read may be refused a moment.
    i=0
    until token=$(cli join-token -q manager); do
        i=$((i + 1)); [ $i -lt 60 ] || {{ echo "guest: no manager join token"; exit 1; }}
        sleep 1
    done
    {swarm} -H unix:///run/node$k.sock join --token "$token" \
        --advertise-addr 127.0.0.1:$(port $k) --listen-addr 127.0.0.1:$(port $k) 127.0.0.1:$(port 1)
done
i=0
until [ "$(cli node ls -q | wc -l)" -eq {managers} ]; do
    i=$((i + 1)); [ $i -lt 120 ] || {{ echo "guest: the managers did not all join"; exit 1; }}
    sleep 1
done
cli node ls
n=0
while :; do
    n=$((n + 1))
    if cli service create -d --replicas 0 --name pl$n sim/app >/dev/null; then
        echo pl$n >> "$OUT/acked"
        sync "$OUT/acked"
    else
        echo "guest: service create pl$n failed"
    fi
    if [ $n -eq {k} ]; then
        # Written without fsync: the cut must lose it.
        echo canary > /run/disk/canary
        echo cut > "$OUT/cut"
        sync "$OUT/cut"
        echo "guest: asked for the power cut after $n writes"
    fi
done
"#,
            swarm = swarm.display(),
            k = WRITES_BEFORE_CUT,
            managers = MANAGERS,
        )
}

/// Boot 2: the canary looked for, the manager started again, its services listed; then
/// (`disks`: the disk test binary) the managers on failing and slow disks.
fn check_script(agent: &Path, swarm: &Path, out: &Path, disks: Option<&Path>) -> String {
    let disks = match disks {
        Some(bin) => format!(
            r#"kill $MANAGERS
wait $MANAGERS || true
modprobe -a loop dm_mod dm_flakey dm_delay
start=$(date +%s)
{bin} --ignored --test-threads=1 > "$OUT/disks.log" 2>&1 || {{ echo "guest: the disk tests failed"; exit 1; }}
echo "guest: the disk tests took $(( $(date +%s) - start )) s"
"#,
            bin = bin.display()
        ),
        None => String::new(),
    };
    preamble("check", agent, swarm, out)
        + r#"if grep -q canary /run/disk/canary 2>/dev/null; then echo survived > "$OUT/canary"; else echo lost > "$OUT/canary"; fi
start_managers
# The list needs a leader: the three elect one from their logs.
i=0
until cli service ls > "$OUT/services.tmp"; do
    i=$((i + 1)); [ $i -lt 120 ] || { echo "guest: the managers do not answer after the reboot"; exit 1; }
    sleep 1
done
mv "$OUT/services.tmp" "$OUT/services"
cat "$OUT/services"
cli node ls || true
"# + &disks
}

/// The VM, its shared directory and its disk.
struct Guest<'a> {
    vm: &'a setup::Vm,
    out: &'a Path,
    disk: &'a Path,
}

impl Guest<'_> {
    fn script(&self, phase: &str, text: &str) -> anyhow::Result<PathBuf> {
        let path = self.out.join(format!("{phase}.sh"));
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        Ok(path)
    }

    /// `timeout … vng …` running `script`, in a process group of its own (QEMU included).
    fn command(&self, script: &Path) -> Command {
        let mut cmd = Command::new("timeout");
        cmd.arg(BOOT_TIMEOUT.as_secs().to_string())
            .arg(&self.vm.vng)
            .args([
                "--disable-kvm",
                "--force-9p",
                "--cpus",
                "1",
                "--memory",
                "1G",
            ])
            .arg("--rwdir")
            .arg(self.out)
            .arg(format!(
                "--qemu-opts=-drive file={},format=raw,if=virtio,cache=writeback",
                self.disk.display()
            ))
            .arg("--run")
            .arg(&self.vm.kernel)
            .arg("--exec")
            .arg(script)
            .env(
                "PATH",
                path_with(self.vm.vng.parent().unwrap_or(Path::new("/"))),
            )
            .current_dir(workspace_root())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        cmd
    }

    /// Boots and runs `script` to its end; fails with the guest's logs when it fails.
    fn boot(&self, script: &Path) -> anyhow::Result<()> {
        let t = Instant::now();
        let status = self
            .command(script)
            .status()
            .context("starting virtme-ng")?;
        println!(
            "powerloss: {} ran {:.0} s",
            script.display(),
            t.elapsed().as_secs_f64()
        );
        if !status.success() {
            bail!(
                "powerloss: {} failed in the VM ({status})\n{}",
                script.display(),
                self.logs()
            );
        }
        Ok(())
    }

    /// Boots, waits for the guest to ask for the cut (the file `cut`), then kills QEMU's
    /// process group at once. Returns how long the kill took after the guest's request was
    /// seen.
    fn boot_until_cut(&self, script: &Path) -> anyhow::Result<Duration> {
        let mut child = self.command(script).spawn().context("starting virtme-ng")?;
        let flag = self.out.join("cut");
        loop {
            if flag.exists() {
                let seen = Instant::now();
                // SAFETY: a signal to the process group this function started.
                unsafe {
                    libc::kill(-(child.id() as i32), libc::SIGKILL);
                }
                let _ = child.wait();
                return Ok(seen.elapsed());
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "powerloss: the VM ended ({status}) before the guest asked for the power cut\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The tails of the guest's logs.
    fn logs(&self) -> String {
        let mut s = String::new();
        let mut files = vec!["write.log".to_string()];
        for phase in ["write", "check"] {
            files.extend((1..=MANAGERS).map(|k| format!("agent-{phase}-node{k}.log")));
        }
        files.extend(["check.log".to_string(), "disks.log".to_string()]);
        for f in &files {
            let text = std::fs::read_to_string(self.out.join(f)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            s += &format!("--- {f} (last lines)\n");
            for l in tail.into_iter().rev() {
                s += l;
                s.push('\n');
            }
        }
        s
    }
}

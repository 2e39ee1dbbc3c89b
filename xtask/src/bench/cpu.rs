//! Where the data-plane benchmarks run their measured processes and servers: pinned to one
//! CPU (`--cpu`, the default) or left to the scheduler (`--no-pin`).

use std::os::unix::process::CommandExt;
use std::process::Command;

use anyhow::bail;

/// Where the measured processes and servers run: one CPU for all of them (`Some`), so that
/// every request crosses the whole path on that CPU and no round trip waits for another
/// (virtual) CPU to wake up, which on a shared 2-CPU machine makes latencies jump between
/// two modes from round to round; or wherever the scheduler puts them (`None`).
pub type Cpu = Option<usize>;

/// The default `--cpu`: the last one.
pub fn default_cpu() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get() - 1)
        .unwrap_or(0)
}

fn cpu_set(cpu: usize) -> libc::cpu_set_t {
    // SAFETY: an all-zero cpu_set_t is the empty set; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        set
    }
}

/// Pins the calling thread to `cpu`.
pub fn pin_current_thread(cpu: Cpu) -> std::io::Result<()> {
    let Some(cpu) = cpu else {
        return Ok(());
    };
    let set = cpu_set(cpu);
    // SAFETY: sched_setaffinity on the calling thread with a valid set and its size.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `cmd` will run pinned to `cpu`.
pub fn pinned(mut cmd: Command, cpu: Cpu) -> Command {
    if let Some(cpu) = cpu {
        let set = cpu_set(cpu);
        // SAFETY: only sched_setaffinity (a system call) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    cmd
}

/// Checks `--cpu`.
pub fn check_cpu(cpu: Cpu) -> anyhow::Result<()> {
    if let Some(c) = cpu {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        if c >= n {
            bail!("--cpu {c}: this machine has CPUs 0 to {}", n - 1);
        }
    }
    Ok(())
}

/// How the placement reads in the output.
pub fn cpu_note(cpu: Cpu) -> String {
    match cpu {
        Some(c) => format!("clients and servers pinned to CPU {c}"),
        None => "placement left to the scheduler".into(),
    }
}

//! What the kernel offers the data plane, probed with real system calls at start, and the
//! data-plane mode the agent picks from it (`--data-plane`, `--tc-attach`).
//!
//! Program and map types and helpers are probed by aya (a tiny program or map is loaded and
//! released); TCX and the clsact qdisc by attaching to the loopback of a throw-away network
//! namespace, made on a thread of its own and gone with it. [`choose`] is pure: the probe's
//! result and the flags in, the mode (or the error naming what is missing) out.

use std::fmt;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use aya::maps::MapType;
use aya::programs::ProgramType;
use aya::sys::{is_helper_supported, is_map_supported, is_program_supported, BpfHelper};

/// How the tc programs are attached to interfaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcAttach {
    /// TCX links (6.6+), pinned on bpffs; a restarted agent swaps its programs into them.
    Tcx,
    /// cls_bpf filters on a clsact qdisc (netlink), at a fixed priority and handle; a
    /// restarted agent replaces them in place.
    Legacy,
}

impl TcAttach {
    pub fn as_str(self) -> &'static str {
        match self {
            TcAttach::Tcx => "tcx",
            TcAttach::Legacy => "legacy",
        }
    }
}

/// `--data-plane`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataPlaneRequest {
    Auto,
    Ebpf,
    Ipvs,
    None,
}

/// `--tc-attach`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcAttachRequest {
    Auto,
    Tcx,
    Legacy,
}

/// The data plane the agent runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Ebpf,
    /// Service VIPs balanced by IPVS in the tasks' namespaces and DNS reached through nft
    /// rules (no socket hooks); the overlay and the routing mesh stay on the tc programs.
    Ipvs,
    None,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Ebpf => "ebpf",
            Mode::Ipvs => "ipvs",
            Mode::None => "none",
        }
    }
}

/// What a feature is, for the probe's report.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Program(ProgramType),
    Map(MapType),
    Helper(ProgramType, BpfHelper),
    /// A TCX link on a device (`BPF_LINK_CREATE` with `BPF_TCX_INGRESS`).
    Tcx,
    /// The clsact qdisc (netlink), where legacy tc filters hang.
    Clsact,
}

/// One feature of the kernel the data plane uses.
#[derive(Clone, Copy, Debug)]
pub struct Feature {
    /// Its short name, as the log, `/metrics` and `node inspect` say it.
    pub name: &'static str,
    pub kind: Kind,
    /// Whether the eBPF data plane needs it (else there is a way around it).
    pub required: bool,
}

const fn need(name: &'static str, kind: Kind) -> Feature {
    Feature {
        name,
        kind,
        required: true,
    }
}

const SCHED_CLS: ProgramType = ProgramType::SchedClassifier;

/// Every feature probed, in the order of ARCHITECTURE.md's table.
pub const FEATURES: &[Feature] = &[
    need("prog_sched_cls", Kind::Program(SCHED_CLS)),
    need(
        "prog_cgroup_sock_addr",
        Kind::Program(ProgramType::CgroupSockAddr),
    ),
    need("prog_cgroup_skb", Kind::Program(ProgramType::CgroupSkb)),
    need("map_hash", Kind::Map(MapType::Hash)),
    need("map_array", Kind::Map(MapType::Array)),
    need("map_percpu_hash", Kind::Map(MapType::PerCpuHash)),
    need("map_percpu_array", Kind::Map(MapType::PerCpuArray)),
    need("map_lru_hash", Kind::Map(MapType::LruHash)),
    need("map_lpm_trie", Kind::Map(MapType::LpmTrie)),
    need("map_sk_storage", Kind::Map(MapType::SkStorage)),
    need(
        "helper_skb_set_tunnel_key",
        Kind::Helper(SCHED_CLS, BpfHelper::BPF_FUNC_skb_set_tunnel_key),
    ),
    need(
        "helper_redirect",
        Kind::Helper(SCHED_CLS, BpfHelper::BPF_FUNC_redirect),
    ),
    need(
        "helper_redirect_peer",
        Kind::Helper(SCHED_CLS, BpfHelper::BPF_FUNC_redirect_peer),
    ),
    need(
        "helper_redirect_neigh",
        Kind::Helper(SCHED_CLS, BpfHelper::BPF_FUNC_redirect_neigh),
    ),
    need(
        "helper_get_netns_cookie",
        Kind::Helper(
            ProgramType::CgroupSockAddr,
            BpfHelper::BPF_FUNC_get_netns_cookie,
        ),
    ),
    need(
        "helper_sk_storage_get",
        Kind::Helper(
            ProgramType::CgroupSockAddr,
            BpfHelper::BPF_FUNC_sk_storage_get,
        ),
    ),
    need("clsact", Kind::Clsact),
    Feature {
        name: "tcx",
        kind: Kind::Tcx,
        required: false,
    },
];

/// The features only the socket hooks use (service load balancing at connect, DNS
/// interception, network scoping by namespace): the IPVS data path does without them.
pub const SOCKET_HOOK_FEATURES: &[&str] = &[
    "prog_cgroup_sock_addr",
    "prog_cgroup_skb",
    "map_sk_storage",
    "helper_get_netns_cookie",
    "helper_sk_storage_get",
];

/// The result of probing one feature: there, not there, or the probe itself failed (which
/// counts as not there, with the reason kept for the report).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probed {
    Yes,
    No,
    Failed(String),
}

impl Probed {
    pub fn ok(&self) -> bool {
        matches!(self, Probed::Yes)
    }
}

/// What the kernel offers.
#[derive(Clone, Debug)]
pub struct KernelProbe {
    /// `uname -r`.
    pub release: String,
    pub results: Vec<(Feature, Probed)>,
    /// IPVS (the `ip_vs` module, loaded if need be), the fallback's base: `None` until
    /// [`KernelProbe::probe_ipvs`] ran.
    pub ipvs: Option<Probed>,
}

impl KernelProbe {
    /// Probes every feature of [`FEATURES`] on the running kernel (needs CAP_BPF and
    /// CAP_NET_ADMIN, i.e. root).
    pub fn run() -> KernelProbe {
        let (tcx, clsact) = probe_in_throwaway_netns();
        let results = FEATURES
            .iter()
            .map(|f| {
                let r = match f.kind {
                    Kind::Program(t) => from_result(is_program_supported(t)),
                    Kind::Map(t) => from_result(is_map_supported(t)),
                    Kind::Helper(t, h) => from_result(is_helper_supported(t, h)),
                    Kind::Tcx => tcx.clone(),
                    Kind::Clsact => clsact.clone(),
                };
                (*f, r)
            })
            .collect();
        KernelProbe {
            release: kernel_release(),
            results,
            ipvs: None,
        }
    }

    /// Probes IPVS: the generic netlink family "IPVS" resolved in the agent's namespace,
    /// `modprobe ip_vs` first when the kernel does not know it (as Docker does at start).
    pub fn probe_ipvs(&mut self) {
        self.ipvs = Some(match super::ipvs::probe() {
            Ok(()) => Probed::Yes,
            Err(e) => Probed::Failed(e.to_string()),
        });
    }

    /// What the agent probes for `requested`: the eBPF features always, IPVS when it is
    /// asked for or when `auto` finds the eBPF data plane impossible.
    pub fn run_for(requested: DataPlaneRequest) -> KernelProbe {
        let mut p = KernelProbe::run();
        let want_ipvs = match requested {
            DataPlaneRequest::Ipvs => true,
            DataPlaneRequest::Auto => !p.missing_required().is_empty(),
            DataPlaneRequest::Ebpf | DataPlaneRequest::None => false,
        };
        if want_ipvs {
            p.probe_ipvs();
        }
        p
    }

    /// Whether the feature named `name` was found.
    pub fn has(&self, name: &str) -> bool {
        self.results.iter().any(|(f, r)| f.name == name && r.ok())
    }

    /// The required features the overlay's tc programs need that are missing (what the
    /// IPVS data path still needs: all but the socket hooks').
    pub fn missing_for_overlay(&self) -> Vec<&'static str> {
        self.missing_required()
            .into_iter()
            .filter(|n| !SOCKET_HOOK_FEATURES.contains(n))
            .collect()
    }

    /// The required features that are missing.
    pub fn missing_required(&self) -> Vec<&'static str> {
        self.results
            .iter()
            .filter(|(f, r)| f.required && !r.ok())
            .map(|(f, _)| f.name)
            .collect()
    }
}

fn from_result<E: std::error::Error>(r: Result<bool, E>) -> Probed {
    match r {
        Ok(true) => Probed::Yes,
        Ok(false) => Probed::No,
        Err(e) => Probed::Failed(e.to_string()),
    }
}

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> String {
    // SAFETY: uname fills a zeroed struct it is handed.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return "unknown".into();
    }
    // SAFETY: the kernel NUL-terminates release.
    unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// TCX and clsact, probed on the loopback of a network namespace made for the probe on a
/// thread of its own: nothing the node uses is touched, and the namespace (with whatever was
/// attached) goes away with the thread.
fn probe_in_throwaway_netns() -> (Probed, Probed) {
    let thread = std::thread::Builder::new()
        .name("swarm-probe".into())
        .spawn(|| {
            // SAFETY: unshare of this thread's network namespace only.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                let e = format!("unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
                return (Probed::Failed(e.clone()), Probed::Failed(e));
            }
            let clsact = match aya::programs::tc::qdisc_add_clsact("lo") {
                Ok(()) => Probed::Yes,
                Err(e) => Probed::Failed(format!("adding a clsact qdisc: {e}")),
            };
            (probe_tcx(1), clsact)
        });
    match thread.map(|t| t.join()) {
        Ok(Ok(r)) => r,
        _ => {
            let e = "the probe thread failed".to_string();
            (Probed::Failed(e.clone()), Probed::Failed(e))
        }
    }
}

const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_LINK_CREATE: libc::c_int = 28;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_TCX_INGRESS: u32 = 46;

fn bpf(cmd: libc::c_int, attr: &mut [u64; 16]) -> std::io::Result<OwnedFd> {
    // SAFETY: the bpf system call with an attribute block of 128 bytes (the kernel takes the
    // size it knows and checks that the rest is zero).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a successful BPF_PROG_LOAD / BPF_LINK_CREATE returns a new descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as i32) })
}

/// Attaches a two-instruction tc program (`return TCX_NEXT`) through a TCX link to the
/// device `ifindex` and releases it. Kernels before 6.6 do not know the attach type: EINVAL.
fn probe_tcx(ifindex: u32) -> Probed {
    // r0 = -1 (TCX_NEXT); exit
    let insns: [u64; 2] = [
        u64::from_le_bytes([0xb7, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]),
        u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]),
    ];
    let license = c"GPL";
    let mut attr = [0u64; 16];
    // prog_type (u32), insn_cnt (u32) | insns | license
    attr[0] = BPF_PROG_TYPE_SCHED_CLS as u64 | (insns.len() as u64) << 32;
    attr[1] = insns.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    let prog = match bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => fd,
        Err(e) => return Probed::Failed(format!("loading a tc program: {e}")),
    };
    let mut attr = [0u64; 16];
    // prog_fd (u32), target_ifindex (u32) | attach_type (u32), flags (u32)
    attr[0] = prog.as_raw_fd() as u64 | (ifindex as u64) << 32;
    attr[1] = BPF_TCX_INGRESS as u64;
    match bpf(BPF_LINK_CREATE, &mut attr) {
        // Closing the link (unpinned) detaches it.
        Ok(_link) => Probed::Yes,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Probed::No,
        Err(e) => Probed::Failed(format!("creating a TCX link: {e}")),
    }
}

/// What the agent runs, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    pub mode: Mode,
    /// How tc programs attach (eBPF mode only).
    pub attach: Option<TcAttach>,
    /// Features the kernel lacks that the chosen mode works around.
    pub missing: Vec<&'static str>,
    /// One sentence: why this mode.
    pub reason: String,
    /// The kernel's release ("" when nothing was probed).
    pub kernel: String,
}

impl Choice {
    /// The mode of `--data-plane none` (or of a node that runs no tasks: `why`).
    pub fn none(why: &str) -> Choice {
        Choice {
            mode: Mode::None,
            attach: None,
            missing: Vec::new(),
            reason: why.to_string(),
            kernel: kernel_release(),
        }
    }

    pub fn attach_str(&self) -> &'static str {
        self.attach.map_or("", TcAttach::as_str)
    }

    /// As the node reports it to the managers (`node inspect`).
    pub fn to_proto(&self) -> proto::DataPlaneInfo {
        proto::DataPlaneInfo {
            mode: self.mode.as_str().into(),
            tc_attach: self.attach_str().into(),
            missing: self.missing.iter().map(|s| s.to_string()).collect(),
            reason: self.reason.clone(),
            kernel: self.kernel.clone(),
        }
    }
}

impl fmt::Display for Choice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "data plane {}", self.mode.as_str())?;
        if let Some(a) = self.attach {
            write!(f, ", tc attach {}", a.as_str())?;
        }
        if !self.missing.is_empty() {
            write!(f, ", missing {}", self.missing.join(","))?;
        }
        write!(f, " (kernel {}): {}", self.kernel, self.reason)
    }
}

/// Why no data plane could be chosen.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChoiceError {
    #[error("--data-plane ipvs: kernel {kernel} has IPVS, but the overlay's tc programs need what it lacks: {}; `swarm-agent probe` lists every feature, or run with --data-plane none (tasks on networks are then refused)", missing.join(", "))]
    IpvsWithoutOverlay {
        kernel: String,
        missing: Vec<&'static str>,
    },
    #[error("--data-plane ipvs: kernel {kernel}: {reason}")]
    NoIpvs { kernel: String, reason: String },
    #[error("--data-plane {requested}: kernel {kernel} lacks what the eBPF data plane needs: {}{}{}; `swarm-agent probe` lists every feature (ARCHITECTURE.md has the kernel versions), or run with --data-plane none (tasks on networks are then refused)", missing.join(", "), if failed.is_empty() { String::new() } else { format!(" (probes that failed: {})", failed.join("; ")) }, if *requested == "auto" { " (and the IPVS fallback cannot stand in: it needs the ip_vs module and every feature but the socket hooks')" } else { "" })]
    EbpfUnsupported {
        requested: &'static str,
        kernel: String,
        missing: Vec<&'static str>,
        /// "feature: why" for each probe that failed (e.g. without CAP_BPF).
        failed: Vec<String>,
    },
    #[error(
        "--tc-attach tcx: kernel {kernel} has no TCX (Linux 6.6+); use --tc-attach legacy or auto"
    )]
    NoTcx { kernel: String },
}

/// Picks the data plane from what the kernel offers and what the flags ask.
pub fn choose(
    requested: DataPlaneRequest,
    tc: TcAttachRequest,
    probe: &KernelProbe,
) -> Result<Choice, ChoiceError> {
    let requested_name = match requested {
        DataPlaneRequest::None => return Ok(Choice::none("--data-plane none")),
        DataPlaneRequest::Ipvs => {
            let kernel = probe.release.clone();
            match &probe.ipvs {
                Some(Probed::Yes) => {}
                Some(Probed::Failed(reason)) => {
                    return Err(ChoiceError::NoIpvs {
                        kernel,
                        reason: reason.clone(),
                    })
                }
                Some(Probed::No) | None => {
                    return Err(ChoiceError::NoIpvs {
                        kernel,
                        reason: "the ip_vs module was not probed".into(),
                    })
                }
            }
            let missing = probe.missing_for_overlay();
            if !missing.is_empty() {
                return Err(ChoiceError::IpvsWithoutOverlay { kernel, missing });
            }
            return ipvs_choice(
                tc,
                probe,
                "--data-plane ipvs: service VIPs through IPVS in the tasks' namespaces",
            );
        }
        DataPlaneRequest::Auto => "auto",
        DataPlaneRequest::Ebpf => "ebpf",
    };
    let missing = probe.missing_required();
    if !missing.is_empty() {
        if requested == DataPlaneRequest::Auto
            && probe.ipvs == Some(Probed::Yes)
            && probe.missing_for_overlay().is_empty()
        {
            return ipvs_choice(
                tc,
                probe,
                &format!(
                    "the kernel lacks what the socket hooks need ({}) but has IPVS: service VIPs through IPVS in the tasks' namespaces",
                    missing.join(", ")
                ),
            );
        }
        return Err(ChoiceError::EbpfUnsupported {
            requested: requested_name,
            kernel: probe.release.clone(),
            missing,
            failed: probe
                .results
                .iter()
                .filter_map(|(f, r)| match r {
                    Probed::Failed(e) if f.required => Some(format!("{}: {e}", f.name)),
                    _ => None,
                })
                .collect(),
        });
    }
    let (attach, why) = tc_attach(tc, probe)?;
    let mode_why = if requested == DataPlaneRequest::Auto {
        "the kernel has every feature of the eBPF data plane"
    } else {
        "--data-plane ebpf, and the kernel has every feature it needs"
    };
    Ok(Choice {
        mode: Mode::Ebpf,
        attach: Some(attach),
        missing: if probe.has("tcx") {
            Vec::new()
        } else {
            vec!["tcx"]
        },
        reason: format!("{mode_why}; {why}"),
        kernel: probe.release.clone(),
    })
}

/// The IPVS mode: `why` it, and how the overlay's tc programs attach.
fn ipvs_choice(tc: TcAttachRequest, probe: &KernelProbe, why: &str) -> Result<Choice, ChoiceError> {
    let (attach, attach_why) = tc_attach(tc, probe)?;
    let mut missing: Vec<&'static str> = probe
        .missing_required()
        .into_iter()
        .chain((!probe.has("tcx")).then_some("tcx"))
        .collect();
    missing.dedup();
    Ok(Choice {
        mode: Mode::Ipvs,
        attach: Some(attach),
        missing,
        reason: format!("{why}; the overlay: {attach_why}"),
        kernel: probe.release.clone(),
    })
}

/// How the tc programs attach: what `--tc-attach` asks, or TCX where the kernel has it.
fn tc_attach(
    tc: TcAttachRequest,
    probe: &KernelProbe,
) -> Result<(TcAttach, &'static str), ChoiceError> {
    let tcx = probe.has("tcx");
    Ok(match (tc, tcx) {
        (TcAttachRequest::Tcx, false) => {
            return Err(ChoiceError::NoTcx {
                kernel: probe.release.clone(),
            })
        }
        (TcAttachRequest::Tcx, true) => (TcAttach::Tcx, "TCX forced by --tc-attach tcx"),
        (TcAttachRequest::Legacy, _) => (
            TcAttach::Legacy,
            "clsact qdisc filters forced by --tc-attach legacy",
        ),
        (TcAttachRequest::Auto, true) => (TcAttach::Tcx, "the kernel has TCX links"),
        (TcAttachRequest::Auto, false) => (
            TcAttach::Legacy,
            "no TCX (Linux 6.6+): tc programs attach through clsact qdisc filters",
        ),
    })
}

/// The report of `swarm-agent probe`: one line per feature, then the choice.
pub fn report(probe: &KernelProbe) -> String {
    let mut out = format!("kernel {}\n", probe.release);
    for (f, r) in &probe.results {
        let state = match r {
            Probed::Yes => "yes".to_string(),
            Probed::No => "no".to_string(),
            Probed::Failed(e) => format!("no ({e})"),
        };
        let need = if f.required { "required" } else { "optional" };
        out.push_str(&format!("{:<28} {:<9} {state}\n", f.name, need));
    }
    if let Some(r) = &probe.ipvs {
        let state = match r {
            Probed::Yes => "yes".to_string(),
            Probed::No => "no".to_string(),
            Probed::Failed(e) => format!("no ({e})"),
        };
        out.push_str(&format!(
            "{:<28} {:<9} {state}\n",
            "ipvs (ip_vs)", "fallback"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(missing: &[&str]) -> KernelProbe {
        KernelProbe {
            release: "6.1.0-test".into(),
            results: FEATURES
                .iter()
                .map(|f| {
                    let r = if missing.contains(&f.name) {
                        Probed::No
                    } else {
                        Probed::Yes
                    };
                    (*f, r)
                })
                .collect(),
            ipvs: None,
        }
    }

    #[test]
    fn auto_takes_tcx_when_there_and_legacy_tc_without_it() {
        let c = choose(DataPlaneRequest::Auto, TcAttachRequest::Auto, &probe(&[])).unwrap();
        assert_eq!((c.mode, c.attach), (Mode::Ebpf, Some(TcAttach::Tcx)));
        assert!(c.missing.is_empty());
        let c = choose(
            DataPlaneRequest::Auto,
            TcAttachRequest::Auto,
            &probe(&["tcx"]),
        )
        .unwrap();
        assert_eq!((c.mode, c.attach), (Mode::Ebpf, Some(TcAttach::Legacy)));
        assert_eq!(c.missing, vec!["tcx"]);
        assert!(c.to_string().contains("no TCX"), "{c}");
    }

    #[test]
    fn legacy_can_be_forced_and_tcx_is_refused_where_missing() {
        let c = choose(DataPlaneRequest::Ebpf, TcAttachRequest::Legacy, &probe(&[])).unwrap();
        assert_eq!(c.attach, Some(TcAttach::Legacy));
        let e = choose(
            DataPlaneRequest::Ebpf,
            TcAttachRequest::Tcx,
            &probe(&["tcx"]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("has no TCX"), "{e}");
    }

    #[test]
    fn a_missing_required_feature_is_named_and_ipvs_stands_in_only_for_the_socket_hooks() {
        let e = choose(
            DataPlaneRequest::Auto,
            TcAttachRequest::Auto,
            &probe(&["helper_redirect_peer", "tcx"]),
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("helper_redirect_peer"), "{msg}");
        assert!(!msg.contains("tcx"), "tcx is optional: {msg}");
        assert!(msg.contains("IPVS fallback cannot stand in"), "{msg}");
        // Only the socket hooks missing, IPVS there: auto picks IPVS (the overlay on tc).
        let mut p = probe(&["prog_cgroup_sock_addr", "helper_sk_storage_get", "tcx"]);
        assert!(choose(DataPlaneRequest::Auto, TcAttachRequest::Auto, &p).is_err());
        p.ipvs = Some(Probed::Yes);
        let c = choose(DataPlaneRequest::Auto, TcAttachRequest::Auto, &p).unwrap();
        assert_eq!(
            (c.mode, c.attach),
            (Mode::Ipvs, Some(TcAttach::Legacy)),
            "{c}"
        );
        assert!(c.reason.contains("prog_cgroup_sock_addr"), "{c}");
        assert!(c.missing.contains(&"tcx"), "{c}");
        // The overlay's own features missing: IPVS cannot help.
        let mut p = probe(&["helper_redirect_peer"]);
        p.ipvs = Some(Probed::Yes);
        assert!(choose(DataPlaneRequest::Auto, TcAttachRequest::Auto, &p).is_err());
        let e = choose(DataPlaneRequest::Ipvs, TcAttachRequest::Auto, &p).unwrap_err();
        assert_eq!(
            e,
            ChoiceError::IpvsWithoutOverlay {
                kernel: "6.1.0-test".into(),
                missing: vec!["helper_redirect_peer"],
            }
        );
        // A probe that could not run (no CAP_BPF) counts as missing, with its reason.
        let mut p = probe(&[]);
        p.results[0].1 = Probed::Failed("Operation not permitted".into());
        let msg = choose(DataPlaneRequest::Ebpf, TcAttachRequest::Auto, &p)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains(
                "prog_sched_cls (probes that failed: prog_sched_cls: Operation not permitted)"
            ),
            "{msg}"
        );
        assert!(!msg.contains("IPVS"), "{msg}");
        let c = choose(DataPlaneRequest::None, TcAttachRequest::Auto, &probe(&[])).unwrap();
        assert_eq!((c.mode, c.attach), (Mode::None, None));
    }

    /// `--data-plane ipvs` on a kernel without IPVS names the module and why it is missing;
    /// with IPVS (and the overlay's features) it is chosen, the overlay on the tc programs.
    #[test]
    fn ipvs_without_the_module_names_it_and_is_chosen_with_it() {
        let mut p = probe(&[]);
        p.ipvs = Some(Probed::Failed(
            crate::network::ipvs::IpvsError::NoModule {
                load: "`modprobe ip_vs` failed: modprobe: FATAL: Module ip_vs not found".into(),
            }
            .to_string(),
        ));
        let msg = choose(DataPlaneRequest::Ipvs, TcAttachRequest::Auto, &p)
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with("--data-plane ipvs: kernel 6.1.0-test: the kernel has no IPVS"),
            "{msg}"
        );
        assert!(msg.contains("the ip_vs module is not loaded"), "{msg}");
        assert!(msg.contains("Module ip_vs not found"), "{msg}");
        p.ipvs = Some(Probed::Yes);
        let c = choose(DataPlaneRequest::Ipvs, TcAttachRequest::Auto, &p).unwrap();
        assert_eq!((c.mode, c.attach), (Mode::Ipvs, Some(TcAttach::Tcx)), "{c}");
        assert!(
            c.to_string().starts_with("data plane ipvs, tc attach tcx"),
            "{c}"
        );
        assert!(report(&p).contains("ipvs (ip_vs)"), "{}", report(&p));
    }

    /// `--data-plane ipvs` on the running kernel (root): where IPVS cannot be had (this
    /// machine's 6.18 has no modules) the error names the `ip_vs` module and what modprobe
    /// said; where it can (the VM's 6.1) the kernel's `/proc/net/ip_vs` exists after the probe
    /// and IPVS is chosen. Never a start without networking.
    #[test]
    fn ipvs_is_probed_on_the_running_kernel_and_a_missing_module_is_named() {
        let p = KernelProbe::run_for(DataPlaneRequest::Ipvs);
        let chosen = choose(DataPlaneRequest::Ipvs, TcAttachRequest::Auto, &p);
        if std::path::Path::new("/proc/net/ip_vs").exists() {
            assert_eq!(p.ipvs, Some(Probed::Yes), "{}", report(&p));
            let c = chosen.unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(c.mode, Mode::Ipvs, "{c}");
        } else {
            let e = chosen.unwrap_err();
            let msg = e.to_string();
            assert!(matches!(e, ChoiceError::NoIpvs { .. }), "{msg}");
            assert!(msg.contains("the ip_vs module is not loaded"), "{msg}");
            assert!(msg.contains("modprobe"), "{msg}");
        }
        // eBPF asked for: IPVS is not touched.
        assert_eq!(KernelProbe::run_for(DataPlaneRequest::Ebpf).ipvs, None);
    }

    /// The probe on the running kernel (root): TCX is found exactly on kernels 6.6 and later,
    /// and everything else the data plane needs is there (CI's 6.18, the VM's 6.1).
    #[test]
    fn the_probe_finds_tcx_exactly_from_linux_6_6() {
        let p = KernelProbe::run();
        let (major, minor) = {
            let mut it = p
                .release
                .split(|c: char| !c.is_ascii_digit())
                .map(|n| n.parse::<u32>().unwrap_or(0));
            (it.next().unwrap_or(0), it.next().unwrap_or(0))
        };
        let want_tcx = (major, minor) >= (6, 6);
        assert_eq!(p.has("tcx"), want_tcx, "{}", report(&p));
        assert!(p.missing_required().is_empty(), "{}", report(&p));
        let c = choose(DataPlaneRequest::Auto, TcAttachRequest::Auto, &p).unwrap();
        let want = if want_tcx {
            TcAttach::Tcx
        } else {
            TcAttach::Legacy
        };
        assert_eq!(c.attach, Some(want), "{c}");
    }
}

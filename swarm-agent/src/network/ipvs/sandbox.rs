//! A task's namespace as the IPVS data path programs it (Docker's sandbox recipe): the
//! IPVS sysctls Docker sets there, the nftables rules that mark packets to the VIPs and send
//! 127.0.0.11:53 to the task's resolver, and the IPVS table synced to what the view asks.
//! Runs on a thread that joined the namespace ([`crate::network::plumbing::in_netns`]).

use std::path::Path;

use super::table::{apply_nft, marked, marking_rules, sync, Marked, SyncReport, Table};
use super::Ipvs;
use crate::network::plumbing::{self, PlumbingError};

/// The sysctls Docker writes in a sandbox with IPVS load balancing
/// (`/proc/sys/net/ipv4/vs/*`, per namespace): IPVS connections keep conntrack entries
/// (the nat rules need them), a connection to a destination that is gone is expired at its
/// next packet (the client sees a reset, not a timeout), and so is a persistence template
/// of a quiescent (weight 0) destination.
pub const SYSCTLS: &[(&str, &str)] = &[
    ("conntrack", "1"),
    ("expire_nodest_conn", "1"),
    ("expire_quiescent_template", "1"),
];

/// Writes [`SYSCTLS`] and `extra` (full paths) in the calling thread's namespace (`at`
/// names it in errors).
pub fn set_sysctls(at: &str, extra: &[(&str, &str)]) -> Result<(), PlumbingError> {
    let vs = SYSCTLS
        .iter()
        .map(|(n, v)| (format!("/proc/sys/net/ipv4/vs/{n}"), *v));
    let extra = extra.iter().map(|(p, v)| (p.to_string(), *v));
    for (path, value) in vs.chain(extra) {
        std::fs::write(&path, value).map_err(|source| PlumbingError::Io {
            what: format!("setting {path} in the namespace {at}"),
            source,
        })?;
    }
    Ok(())
}

/// The resolver ports of a task (what 127.0.0.11:53 is sent to).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsPorts {
    pub udp: u16,
    pub tcp: u16,
}

/// Brings the namespace at `netns` to `table`: sysctls (when `first`), the marking and DNS
/// rules, then the IPVS services and destinations.
pub async fn program(
    netns: &Path,
    table: Table,
    dns: Option<DnsPorts>,
    first: bool,
) -> Result<SyncReport, PlumbingError> {
    let rules = marking_rules(&table, dns);
    program_netns(
        netns,
        first,
        &[],
        rules,
        "the IPVS marking rules",
        marked(&table),
    )
    .await
}

/// What both an IPVS task namespace and the ingress sandbox get, in that namespace: the
/// IPVS sysctls and `extra_sysctls` (when `first`), the nftables ruleset `rules` (`what`
/// names it in errors), then the IPVS table synced to `want`.
pub(super) async fn program_netns(
    netns: &Path,
    first: bool,
    extra_sysctls: &'static [(&'static str, &'static str)],
    rules: String,
    what: &'static str,
    want: Marked,
) -> Result<SyncReport, PlumbingError> {
    let at = netns.display().to_string();
    plumbing::in_netns(netns, move |_h| async move {
        if first {
            set_sysctls(&at, extra_sysctls)?;
        }
        apply_nft(&rules).map_err(|source| PlumbingError::Io {
            what: format!("applying {what} in {at}"),
            source,
        })?;
        let mut h = Ipvs::open().map_err(|e| PlumbingError::Other(format!("{at}: {e}")))?;
        sync(&mut h, &want).map_err(|e| PlumbingError::Other(format!("{at}: {e}")))
    })
    .await
}

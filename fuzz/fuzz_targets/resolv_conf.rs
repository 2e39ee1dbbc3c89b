//! A node's resolv.conf, read twice by the agent: by the embedded DNS server's forwarder
//! (`network::dns::forward::nameservers`) and for the tasks' own /etc/resolv.conf
//! (`containerd::spec::filter_resolv_conf`). Checks: no panic; the forwarder keeps at most
//! three distinct, specified addresses; a task's file names at least one nameserver, every one
//! an IPv4 address off the loopback that a resolver reads as it is, and filtering it again
//! changes nothing.

#![no_main]

use libfuzzer_sys::fuzz_target;
use swarm_agent::containerd::spec::filter_resolv_conf;
use swarm_agent::network::dns::forward::{nameservers, MAX_UPSTREAMS};

fuzz_target!(|data: &[u8]| {
    let Ok(conf) = std::str::from_utf8(data) else {
        return;
    };
    let ups = nameservers(conf);
    assert!(ups.len() <= MAX_UPSTREAMS);
    for (i, ip) in ups.iter().enumerate() {
        assert!(!ip.is_unspecified());
        assert!(!ups[..i].contains(ip), "{ip} twice");
    }

    let task = filter_resolv_conf(conf);
    let servers: Vec<&str> = task
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver")).then(|| w.next().unwrap_or(""))
        })
        .collect();
    assert!(
        !servers.is_empty(),
        "a task's resolv.conf without a nameserver: {task:?}"
    );
    for s in &servers {
        let ip: std::net::Ipv4Addr = s.parse().unwrap_or_else(|_| {
            panic!("nameserver {s:?} in a task's resolv.conf is no IPv4 address")
        });
        assert!(
            !ip.is_loopback(),
            "loopback nameserver {ip} in a task's resolv.conf"
        );
    }
    assert_eq!(
        filter_resolv_conf(&task),
        task,
        "filtering is not idempotent"
    );
});

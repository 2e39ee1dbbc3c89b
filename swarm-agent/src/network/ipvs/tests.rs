//! The encoding against byte layouts written out by hand from `include/uapi/linux/ip_vs.h`,
//! and (ignored here: this machine's kernel has no IPVS; `cargo xtask vm-test` runs them with
//! `--ignored` on Debian's 6.1, where `ip_vs` is a module) the real kernel programmed in a
//! namespace of the test's own and read back through `/proc/thread-self/net/ip_vs`, the
//! kernel's own text view.

use std::net::{Ipv4Addr, SocketAddrV4};

use netlink_packet_core::{Emitable, NetlinkHeader, NetlinkMessage, NLM_F_ACK, NLM_F_REQUEST};
use netlink_packet_generic::GenlMessage;

use super::message::{CmdAttr, DestAttr, IpvsCmd, IpvsMessage, SvcAttr};
use super::*;

fn emit(m: &IpvsMessage) -> Vec<u8> {
    let mut g = GenlMessage::from_payload(m.clone());
    g.set_resolved_family_id(0x1234);
    let mut buf = vec![0u8; Emitable::buffer_len(&g)];
    Emitable::emit(&g, &mut buf);
    buf
}

fn parse(bytes: &[u8]) -> IpvsMessage {
    use netlink_packet_core::ParseableParametrized;
    GenlMessage::<IpvsMessage>::parse_with_param(bytes, 0x1234)
        .unwrap()
        .payload
}

fn ne32(v: u32) -> [u8; 4] {
    v.to_ne_bytes()
}

/// `ipvsadm -A -f 256 -s rr`: AF, fwmark, scheduler "rr\0" (padded), flags with a full mask,
/// timeout 0, netmask /32, all nested in IPVS_CMD_ATTR_SERVICE.
#[test]
fn a_fwmark_service_is_encoded_as_the_kernel_reads_it() {
    let s = Service::round_robin(ServiceKey::Fwmark(256));
    let bytes = emit(&request(IpvsCmd::NewService, Some(s.attrs()), None));
    let mut want = vec![1, 1, 0, 0]; // genl: IPVS_CMD_NEW_SERVICE, version 1
    want.extend([56, 0, 1, 0x80]); // IPVS_CMD_ATTR_SERVICE | NLA_F_NESTED, 4 + 52
    want.extend([6, 0, 1, 0, 2, 0, 0, 0]); // AF = AF_INET (u16) + pad
    want.extend([8, 0, 5, 0]);
    want.extend(ne32(256)); // FWMARK
    want.extend([7, 0, 6, 0, b'r', b'r', 0, 0]); // SCHED_NAME "rr\0" + pad
    want.extend([12, 0, 7, 0]);
    want.extend(ne32(0));
    want.extend(ne32(u32::MAX)); // FLAGS {flags, mask}
    want.extend([8, 0, 8, 0]);
    want.extend(ne32(0)); // TIMEOUT
    want.extend([8, 0, 9, 0, 0xff, 0xff, 0xff, 0xff]); // NETMASK
    assert_eq!(bytes, want);
    // And back.
    let m = parse(&bytes);
    assert_eq!(m.cmd, IpvsCmd::NewService);
    match &m.attrs[..] {
        [CmdAttr::Service(a)] => assert_eq!(Service::from_attrs(a), Some(s)),
        other => panic!("{other:?}"),
    }
}

/// A destination of a TCP service: the service's key (protocol, address, port in network
/// order) and the destination (family, address, port, masquerade, weight, thresholds).
#[test]
fn a_masqueraded_destination_of_an_address_service_is_encoded_as_the_kernel_reads_it() {
    let key = ServiceKey::Addr {
        protocol: TCP,
        addr: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 80),
    };
    let d = Destination::masquerade(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 7), 8080), 1);
    let bytes = emit(&request(
        IpvsCmd::NewDest,
        Some(Service::round_robin(key).key_attrs()),
        Some(d.attrs()),
    ));
    let mut want = vec![5, 1, 0, 0]; // IPVS_CMD_NEW_DEST
    want.extend([36, 0, 1, 0x80]); // SERVICE: AF, PROTOCOL, ADDR, PORT
    want.extend([6, 0, 1, 0, 2, 0, 0, 0]);
    want.extend([6, 0, 2, 0, 6, 0, 0, 0]);
    want.extend([8, 0, 3, 0, 10, 0, 0, 2]);
    want.extend([6, 0, 4, 0, 0, 80, 0, 0]); // port 80, big endian
    want.extend([60, 0, 2, 0x80]); // DEST
    want.extend([6, 0, 11, 0, 2, 0, 0, 0]); // ADDR_FAMILY
    want.extend([8, 0, 1, 0, 10, 0, 0, 7]); // ADDR
    want.extend([6, 0, 2, 0, 0x1f, 0x90, 0, 0]); // PORT 8080
    want.extend([8, 0, 3, 0]);
    want.extend(ne32(0)); // FWD_METHOD masquerade
    want.extend([8, 0, 4, 0]);
    want.extend(ne32(1)); // WEIGHT
    want.extend([8, 0, 5, 0]);
    want.extend(ne32(0)); // U_THRESH
    want.extend([8, 0, 6, 0]);
    want.extend(ne32(0)); // L_THRESH
    assert_eq!(bytes, want);
    match &parse(&bytes).attrs[..] {
        [CmdAttr::Service(s), CmdAttr::Dest(a)] => {
            assert_eq!(Service::from_attrs(s).map(|s| s.key), Some(key));
            assert_eq!(Destination::from_attrs(a), Some(d));
        }
        other => panic!("{other:?}"),
    }
}

/// What the kernel sends in a GET_DEST dump: a 16-byte address union, no nested flag, the
/// connection counters and stats we keep as they came.
#[test]
fn a_destination_as_the_kernel_dumps_it_is_decoded() {
    let mut b = vec![5, 1, 0, 0];
    let mut dest = Vec::new();
    dest.extend([20, 0, 1, 0, 10, 0, 0, 9]);
    dest.extend([0; 12]); // ADDR as nf_inet_addr
    dest.extend([6, 0, 2, 0, 0, 80, 0, 0]);
    dest.extend([8, 0, 3, 0]);
    dest.extend(ne32(0));
    dest.extend([8, 0, 4, 0]);
    dest.extend(ne32(0)); // weight 0: stopping
    dest.extend([8, 0, 7, 0]);
    dest.extend(ne32(3)); // ACTIVE_CONNS
    dest.extend([8, 0, 8, 0]);
    dest.extend(ne32(1)); // INACT_CONNS
    dest.extend([8, 0, 10, 0, 4, 0, 1, 0]); // STATS (nested, kept)
    b.extend([(dest.len() + 4) as u8, 0, 2, 0]);
    b.extend(dest);
    let m = parse(&b);
    let d = match &m.attrs[..] {
        [CmdAttr::Dest(a)] => {
            assert!(a.iter().any(|x| matches!(x, DestAttr::Other(_))));
            Destination::from_attrs(a).unwrap()
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(d.addr, SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 9), 80));
    assert_eq!((d.weight, d.active_conns, d.inactive_conns), (0, 3, 1));
    assert_eq!(d.forward, Forward::Masquerade);
}

/// The family is resolved by name through the controller: CTRL_CMD_GETFAMILY (3), version
/// 2, CTRL_ATTR_FAMILY_NAME (2) "IPVS\0", sent to GENL_ID_CTRL (16).
#[test]
fn the_family_is_asked_for_by_name() {
    use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
    use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
    let g = GenlMessage::from_payload(GenlCtrl {
        cmd: GenlCtrlCmd::GetFamily,
        nlas: vec![GenlCtrlAttrs::FamilyName(message::FAMILY_NAME.into())],
    });
    let mut hdr = NetlinkHeader::default();
    hdr.flags = NLM_F_REQUEST | NLM_F_ACK;
    let mut m = NetlinkMessage::new(hdr, g.into());
    m.finalize();
    let mut buf = vec![0u8; m.buffer_len()];
    m.serialize(&mut buf);
    assert_eq!(&buf[4..6], &16u16.to_ne_bytes());
    assert_eq!(&buf[16..20], &[3, 2, 0, 0]);
    assert_eq!(
        &buf[20..32],
        &[9, 0, 2, 0, b'I', b'P', b'V', b'S', 0, 0, 0, 0]
    );
}

/// A decoded service of another family is left out rather than misread.
#[test]
fn an_ipv6_service_is_not_taken_for_an_ipv4_one() {
    assert_eq!(
        Service::from_attrs(&[SvcAttr::Af(10), SvcAttr::Fwmark(5)]),
        None
    );
    assert_eq!(
        Destination::from_attrs(&[DestAttr::AddrFamily(10), DestAttr::Port(1)]),
        None
    );
}

/// Runs `f` on a thread in a new network namespace of its own (gone with the thread), its
/// loopback up. IPVS refuses (EINVAL) a destination whose address is not unicast in the
/// namespace, and a namespace without any local route calls every address broadcast: a task's
/// namespace has its routes, this one gets the local table that `lo` brings.
fn in_new_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: unshare of this thread's network namespace only.
        assert_eq!(
            unsafe { libc::unshare(libc::CLONE_NEWNET) },
            0,
            "unshare(CLONE_NEWNET): {}",
            std::io::Error::last_os_error()
        );
        // A child started from this thread is in its namespace.
        let up = std::process::Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .expect("running ip");
        assert!(up.success(), "ip link set lo up: {up}");
        f()
    })
    .join()
    .unwrap()
}

/// The kernel's own view of this thread's namespace.
fn proc_view() -> String {
    std::fs::read_to_string("/proc/thread-self/net/ip_vs").expect("/proc/thread-self/net/ip_vs")
}

/// Services and destinations added, changed, listed and removed in a namespace of the
/// test's own; each step checked in the kernel's `/proc` view, not only in our dumps.
#[test]
#[ignore = "needs the ip_vs module: run by `cargo xtask vm-test` (Debian 12's 6.1) with --ignored"]
fn ipvs_is_programmed_and_read_back_in_a_namespace() {
    in_new_netns(|| {
        let mut h = Ipvs::open().unwrap_or_else(|e| panic!("{e}"));
        assert!(h.services().unwrap().is_empty());
        let mark = ServiceKey::Fwmark(0x101);
        let vip = ServiceKey::Addr {
            protocol: TCP,
            addr: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 80),
        };
        h.new_service(&Service::round_robin(mark)).unwrap();
        h.new_service(&Service::round_robin(vip)).unwrap();
        let e = h.new_service(&Service::round_robin(mark)).unwrap_err();
        assert_eq!(e.errno(), Some(libc::EEXIST), "{e}");
        let a = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 7), 8080);
        let b = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 8), 8080);
        for d in [a, b] {
            h.new_dest(vip, &Destination::masquerade(d, 1)).unwrap();
        }
        // A mark's destinations take the port the client asked for (port 0), as swarm's do.
        let c = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 9), 0);
        h.new_dest(mark, &Destination::masquerade(c, 1)).unwrap();
        assert_eq!(h.dests(mark).unwrap(), vec![Destination::masquerade(c, 1)]);
        let mut services = h.services().unwrap();
        services.sort_by_key(|s| s.key);
        assert_eq!(
            services,
            vec![Service::round_robin(mark), Service::round_robin(vip)]
        );
        let mut dests = h.dests(vip).unwrap();
        dests.sort_by_key(|d| d.addr);
        assert_eq!(
            dests,
            vec![Destination::masquerade(a, 1), Destination::masquerade(b, 1)]
        );
        let view = proc_view();
        assert!(view.contains("FWM  00000101 rr"), "{view}");
        assert!(view.contains("TCP  0A000002:0050 rr"), "{view}");
        assert!(view.contains("-> 0A000007:1F90      Masq    1"), "{view}");
        assert!(view.contains("-> 0A000008:1F90      Masq    1"), "{view}");
        assert!(view.contains("-> 0A000009:0000      Masq    1"), "{view}");

        // A stopping task: weight 0, then gone.
        h.set_dest(vip, &Destination::masquerade(a, 0)).unwrap();
        assert!(proc_view().contains("-> 0A000007:1F90      Masq    0"));
        h.del_dest(vip, a).unwrap();
        assert_eq!(h.dests(vip).unwrap(), vec![Destination::masquerade(b, 1)]);
        assert!(!proc_view().contains("0A000007"));
        let e = h.del_dest(vip, a).unwrap_err();
        assert_eq!(e.errno(), Some(libc::ENOENT), "{e}");

        h.del_service(mark).unwrap();
        h.del_service(vip).unwrap();
        assert!(h.services().unwrap().is_empty());
        let view = proc_view();
        assert!(!view.contains("FWM") && !view.contains("TCP"), "{view}");
    });
}

/// IPVS tables are per namespace: what one namespace holds, another does not see.
#[test]
#[ignore = "needs the ip_vs module: run by `cargo xtask vm-test` (Debian 12's 6.1) with --ignored"]
fn ipvs_tables_are_per_namespace() {
    let seen = in_new_netns(|| {
        let mut h = Ipvs::open().unwrap_or_else(|e| panic!("{e}"));
        h.new_service(&Service::round_robin(ServiceKey::Fwmark(7)))
            .unwrap();
        let other = in_new_netns(|| Ipvs::open().unwrap().services().unwrap());
        (h.services().unwrap().len(), other)
    });
    assert_eq!(seen, (1, Vec::new()));
}

/// Network namespaces made with `ip netns add`, deleted on drop.
struct Namespaces(Vec<String>);

impl Namespaces {
    fn path(&self, i: usize) -> std::path::PathBuf {
        std::path::PathBuf::from("/run/netns").join(&self.0[i])
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = crate::network::testbed::run(&["ip", "netns", "del", n]);
        }
    }
}

fn sh(args: &[&str]) {
    crate::network::testbed::run(args).unwrap_or_else(|e| panic!("{e}"));
}

/// Runs `f` on a thread that entered the namespace at `ns`.
fn in_ns<T: Send + 'static>(
    ns: std::path::PathBuf,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    use std::os::fd::AsRawFd;
    std::thread::spawn(move || {
        let file = std::fs::File::open(&ns).unwrap();
        // SAFETY: setns of this thread only, with a descriptor we own.
        assert_eq!(
            unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
            0,
            "{}",
            std::io::Error::last_os_error()
        );
        f()
    })
}

/// A server on port 80 of a namespace: each connection gets `name\n`, then its lines
/// echoed back until it closes.
fn serve(ns: std::path::PathBuf, name: &'static str) {
    let (tx, rx) = std::sync::mpsc::channel();
    in_ns(ns, move || {
        let l = std::net::TcpListener::bind("0.0.0.0:80").unwrap();
        tx.send(()).unwrap();
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            std::thread::spawn(move || {
                use std::io::{BufRead, Write};
                let _ = writeln!(c, "{name}");
                let mut r = std::io::BufReader::new(c.try_clone().unwrap());
                let mut line = String::new();
                while r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                    let _ = c.write_all(line.as_bytes());
                    line.clear();
                }
            });
        }
    });
    rx.recv().unwrap();
}

/// A connection from the client namespace and the name of the server that answered.
fn connect(ns: std::path::PathBuf, to: &str) -> std::io::Result<(std::net::TcpStream, String)> {
    let to: std::net::SocketAddr = to.parse().unwrap();
    in_ns(ns, move || {
        use std::io::BufRead;
        let c = std::net::TcpStream::connect_timeout(&to, std::time::Duration::from_secs(1))?;
        c.set_read_timeout(Some(std::time::Duration::from_secs(2)))?;
        let mut name = String::new();
        std::io::BufReader::new(c.try_clone()?).read_line(&mut name)?;
        Ok((c, name.trim().to_string()))
    })
    .join()
    .unwrap()
}

fn echo(c: &mut std::net::TcpStream) -> std::io::Result<String> {
    use std::io::{BufRead, Write};
    c.write_all(b"ping\n")?;
    let mut line = String::new();
    std::io::BufReader::new(c.try_clone()?).read_line(&mut line)?;
    Ok(line)
}

/// Docker's recipe against real packets: a client task's namespace whose IPVS holds the
/// table [`table::desired_table`] computes from a view, packets to the VIP marked by
/// [`table::marking_rules`] (nft), two server tasks of the service and one of a service on
/// another network, all on one bridge. Round robin; a task that stops (weight 0) keeps its
/// open connection and gets no new one; once gone it is no destination; the other network's
/// VIP does not answer although its task is on the same wire.
#[test]
#[ignore = "needs the ip_vs module: run by `cargo xtask vm-test` (Debian 12's 6.1) with --ignored"]
fn a_vip_balances_round_robin_through_ipvs_and_a_stopping_task_gets_no_new_connections() {
    use super::marks::VipMarks;
    use super::table::{apply_marking_rules, desired_table, marked, sync};
    use crate::network::testbed::{endpoint_info, network_info, vip_service};
    use crate::network::view::NetworkView;
    use std::collections::BTreeSet;

    let tag = format!("ipvs{:06x}", rand::random::<u32>() & 0xff_ffff);
    let names = ["hub", "cli", "s1", "s2", "s3"].map(|n| format!("{tag}-{n}"));
    let ns = Namespaces(names.to_vec());
    for n in &names {
        sh(&["ip", "netns", "add", n]);
    }
    sh(&[
        "ip", "-n", &names[0], "link", "add", "br0", "type", "bridge",
    ]);
    sh(&["ip", "-n", &names[0], "link", "set", "br0", "up"]);
    for (i, addr) in [
        (1, "10.0.0.5"),
        (2, "10.0.0.7"),
        (3, "10.0.0.8"),
        (4, "10.0.0.9"),
    ] {
        let host = format!("v{i}");
        sh(&[
            "ip", "-n", &names[0], "link", "add", &host, "type", "veth", "peer", "eth0", "netns",
            &names[i],
        ]);
        sh(&[
            "ip", "-n", &names[0], "link", "set", &host, "master", "br0", "up",
        ]);
        sh(&[
            "ip",
            "-n",
            &names[i],
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ]);
        sh(&["ip", "-n", &names[i], "link", "set", "eth0", "up"]);
        sh(&["ip", "-n", &names[i], "link", "set", "lo", "up"]);
    }
    serve(ns.path(2), "s1");
    serve(ns.path(3), "s2");
    serve(ns.path(4), "s3");

    // web (10.0.0.2) on n1 with s1 and s2; db (10.0.0.3) on n2 with s3, which the client is
    // not attached to.
    let mut view = NetworkView::default();
    view.networks
        .insert("n1".into(), network_info("n1", 4096, "10.0.0.0/24", false));
    view.networks
        .insert("n2".into(), network_info("n2", 4097, "10.0.0.0/24", false));
    view.services
        .insert("web".into(), vip_service("web", "web", "n1", "10.0.0.2/24"));
    view.services
        .insert("db".into(), vip_service("db", "db", "n2", "10.0.0.3/24"));
    for (task, svc, net, addr) in [
        ("s1", "web", "n1", "10.0.0.7"),
        ("s2", "web", "n1", "10.0.0.8"),
        ("s3", "db", "n2", "10.0.0.9"),
    ] {
        let mut e = endpoint_info(task, net, addr, "node", "192.168.0.1");
        e.service_id = svc.into();
        view.endpoints.insert((task.into(), net.into()), e);
    }
    let mut ids = VipMarks::default();
    let nets = BTreeSet::from(["n1".to_string()]);
    let cli = ns.path(1);
    let apply = move |view: &NetworkView, ids: &mut VipMarks| {
        let t = desired_table(view, &nets, ids);
        in_ns(cli.clone(), move || {
            apply_marking_rules(&t, None).unwrap_or_else(|e| panic!("{e}"));
            let mut h = Ipvs::open().unwrap_or_else(|e| panic!("{e}"));
            let r = sync(&mut h, &marked(&t)).unwrap_or_else(|e| panic!("{e}"));
            (r, proc_view())
        })
        .join()
        .unwrap()
    };
    let (r, view_text) = apply(&view, &mut ids);
    assert_eq!((r.services_added, r.dests_added), (1, 2), "{r:?}");
    assert!(
        view_text.contains("-> 0A000007:0000      Masq    1"),
        "{view_text}"
    );
    assert!(
        view_text.contains("-> 0A000008:0000      Masq    1"),
        "{view_text}"
    );
    assert!(!view_text.contains("0A000009"), "{view_text}");

    // Round robin.
    let mut seen = Vec::new();
    let mut held = None;
    for _ in 0..4 {
        let (c, name) = connect(ns.path(1), "10.0.0.2:80").unwrap();
        if name == "s1" && held.is_none() {
            held = Some(c);
        }
        seen.push(name);
    }
    assert_eq!(seen.iter().filter(|n| *n == "s1").count(), 2, "{seen:?}");
    assert_eq!(seen.iter().filter(|n| *n == "s2").count(), 2, "{seen:?}");
    let mut held = held.expect("a connection to s1");

    // s1 stops: weight 0. Its open connection goes on; every new one goes to s2.
    view.endpoints
        .get_mut(&("s1".into(), "n1".into()))
        .unwrap()
        .serving = false;
    let (r, view_text) = apply(&view, &mut ids);
    assert_eq!(r.dests_changed, 1, "{r:?}");
    assert!(
        view_text.contains("-> 0A000007:0000      Masq    0"),
        "{view_text}"
    );
    for _ in 0..4 {
        assert_eq!(connect(ns.path(1), "10.0.0.2:80").unwrap().1, "s2");
    }
    assert_eq!(echo(&mut held).unwrap(), "ping\n");

    // s1 gone: no destination.
    view.endpoints.remove(&("s1".into(), "n1".into()));
    let (r, view_text) = apply(&view, &mut ids);
    assert_eq!(r.dests_removed, 1, "{r:?}");
    assert!(!view_text.contains("0A000007"), "{view_text}");

    // The other network's VIP: no mark, no service, no answer (s3 is on the same bridge and
    // answers on its own address).
    assert_eq!(connect(ns.path(1), "10.0.0.9:80").unwrap().1, "s3");
    assert!(connect(ns.path(1), "10.0.0.3:80").is_err());
}

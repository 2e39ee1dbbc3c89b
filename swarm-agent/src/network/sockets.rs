//! TCP connections to tasks that are gone: the socket load balancer connected them straight
//! to a backend, so when that backend's task ends they would hang until TCP gives up (minutes).
//! The agent resets them instead (`SOCK_DESTROY` over sock_diag, in each local task's
//! namespace): the application sees ECONNABORTED at once and reconnects, through the VIP, to
//! a live backend. UDP needs none of this: its VIP traffic is translated per packet and
//! follows a live backend by itself.

use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::constants::{AF_INET, IPPROTO_TCP};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_packet_sock_diag::{SockDiagDestroy, SockDiagMessage};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};

fn send<T>(sock: &Socket, mut msg: NetlinkMessage<T>) -> io::Result<()>
where
    T: netlink_packet_core::NetlinkSerializable + std::fmt::Debug,
{
    msg.finalize();
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut buf);
    sock.send(&buf, 0)?;
    Ok(())
}

fn request(socket_id: SocketId, states: StateFlags) -> SockDiagMessage {
    SockDiagMessage::InetRequest(InetRequest {
        family: AF_INET,
        protocol: IPPROTO_TCP,
        extensions: ExtensionFlags::empty(),
        states,
        socket_id,
    })
}

/// The TCP sockets of the calling thread's namespace whose peer is in `peers`.
fn sockets_to(sock: &Socket, peers: &BTreeSet<Ipv4Addr>) -> io::Result<Vec<SocketId>> {
    let mut hdr = NetlinkHeader::default();
    hdr.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let states = StateFlags::all() & !StateFlags::LISTEN & !StateFlags::CLOSE;
    send(
        sock,
        NetlinkMessage::new(hdr, request(SocketId::new_v4(), states).into()),
    )?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = sock.recv(&mut &mut buf[..], 0)?;
        let mut off = 0;
        while off < n {
            let msg = <NetlinkMessage<SockDiagMessage>>::deserialize(&buf[off..n])
                .map_err(|e| io::Error::other(format!("sock_diag answer: {e}")))?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                    if let IpAddr::V4(d) = r.header.socket_id.destination_address {
                        if peers.contains(&d) {
                            out.push(r.header.socket_id.clone());
                        }
                    }
                }
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) => {
                    return Err(io::Error::other(format!("sock_diag dump: {e}")))
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            off += len;
        }
    }
}

/// Resets every TCP connection of the calling thread's namespace to an address in `peers`;
/// returns how many.
pub fn reset_tcp_to(peers: &BTreeSet<Ipv4Addr>) -> io::Result<usize> {
    if peers.is_empty() {
        return Ok(0);
    }
    let mut sock = Socket::new(NETLINK_SOCK_DIAG)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    let ids = sockets_to(&sock, peers)?;
    let mut done = 0;
    let mut buf = vec![0u8; 8192];
    for id in ids {
        let mut hdr = NetlinkHeader::default();
        hdr.flags = NLM_F_REQUEST | NLM_F_ACK;
        send(
            &sock,
            NetlinkMessage::new(
                hdr,
                NetlinkPayload::InnerMessage(SockDiagDestroy::new(request(id, StateFlags::all()))),
            ),
        )?;
        let n = sock.recv(&mut &mut buf[..], 0)?;
        match <NetlinkMessage<SockDiagMessage>>::deserialize(&buf[..n]).map(|m| m.payload) {
            // An ack is an error message with code 0; ENOENT: it closed meanwhile.
            Ok(NetlinkPayload::Error(e)) if e.code.is_some() => {
                let code = e.code.map_or(0, |c| c.get());
                if code != -libc::ENOENT {
                    return Err(io::Error::from_raw_os_error(-code));
                }
            }
            _ => done += 1,
        }
    }
    Ok(done)
}

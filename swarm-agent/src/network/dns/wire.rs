//! DNS messages on the wire: reading a query (hickory-proto's decoder, one question, EDNS
//! from the additional section) and writing answers with hickory-proto's encoder into a buffer
//! the serving loop reuses. Answer owners are compression pointers to the question, which is
//! copied as the client sent it (case included: some clients check it), so that an A answer
//! costs no allocation.

use hickory_proto::op::{Header, HeaderCounts, MessageType, Metadata, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use hickory_proto::serialize::binary::{
    BinDecodable, BinDecoder, BinEncodable, BinEncoder, NameEncoding,
};

use super::records::{Rdata, Records, TTL};

/// Size of the header.
pub const HEADER_LEN: usize = 12;
/// Largest UDP answer without EDNS.
pub const MIN_UDP: usize = 512;
/// Largest UDP answer we write whatever the client advertises, and the payload size we
/// advertise (the DNS flag day 2020 value: no IP fragmentation on common paths).
pub const MAX_UDP: u16 = 1232;
/// Pointer to the question's name, which always starts right after the header.
const QNAME_PTR: u16 = 0xC000 | HEADER_LEN as u16;
/// Bytes of an OPT record without options.
const OPT_LEN: usize = 11;

/// EDNS(0) of a query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Edns {
    pub payload: u16,
    pub version: u8,
    pub dnssec_ok: bool,
}

/// A query we can answer or forward.
#[derive(Debug)]
pub struct Request<'a> {
    pub meta: Metadata,
    pub query: Query,
    /// The question section as received (name, type, class).
    pub question: &'a [u8],
    pub edns: Option<Edns>,
}

impl Request<'_> {
    /// The largest UDP answer the client accepts.
    pub fn udp_limit(&self) -> usize {
        match self.edns {
            Some(e) => usize::from(e.payload.clamp(MIN_UDP as u16, MAX_UDP)),
            None => MIN_UDP,
        }
    }
}

/// Why a message is not a [`Request`].
#[derive(Debug, PartialEq, Eq)]
pub enum Reject<'a> {
    /// Not worth an answer: too short for a header, or a response (answering responses
    /// could loop between two servers).
    Drop,
    /// Answer with this code (FORMERR, NOTIMP, BADVERS), echoing the question when it was read.
    Error {
        meta: Metadata,
        question: Option<&'a [u8]>,
        edns: Option<Edns>,
        rcode: ResponseCode,
    },
}

/// Length of the (uncompressed) name at the start of `buf`, or `None` if it is malformed or
/// uses a compression pointer (which a question cannot meaningfully have).
fn raw_name_len(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    loop {
        let len = *buf.get(i)? as usize;
        if len == 0 {
            return (i < 255).then_some(i + 1);
        }
        if len & 0xC0 != 0 {
            return None;
        }
        i += 1 + len;
    }
}

/// Reads one resource record's header and skips its data; returns (type, class, ttl) and
/// whether its owner is the root (what an OPT must have).
fn skip_record(d: &mut BinDecoder<'_>) -> Option<(u16, u16, u32, bool)> {
    let name = Name::read(d).ok()?;
    let t = d.read_u16().ok()?.unverified();
    let c = d.read_u16().ok()?.unverified();
    let ttl = d.read_u32().ok()?.unverified();
    let len = d.read_u16().ok()?.unverified();
    d.read_slice(len as usize).ok()?;
    Some((t, c, ttl, name.is_root()))
}

/// Parses a query.
pub fn parse(buf: &[u8]) -> Result<Request<'_>, Reject<'_>> {
    if buf.len() < HEADER_LEN {
        return Err(Reject::Drop);
    }
    let mut d = BinDecoder::new(buf);
    let header = Header::read(&mut d).map_err(|_| Reject::Drop)?;
    if header.message_type == MessageType::Response {
        return Err(Reject::Drop);
    }
    let meta = header.metadata;
    let err = |question, edns, rcode| Reject::Error {
        meta,
        question,
        edns,
        rcode,
    };
    if header.op_code != OpCode::Query {
        return Err(err(None, None, ResponseCode::NotImp));
    }
    if header.counts.queries != 1 {
        return Err(err(None, None, ResponseCode::FormErr));
    }
    let qname_len =
        raw_name_len(&buf[HEADER_LEN..]).ok_or(err(None, None, ResponseCode::FormErr))?;
    let qend = HEADER_LEN + qname_len + 4;
    if qend > buf.len() {
        return Err(err(None, None, ResponseCode::FormErr));
    }
    let query = Query::read(&mut d).map_err(|_| err(None, None, ResponseCode::FormErr))?;
    let question = &buf[HEADER_LEN..qend];
    if d.index() != qend {
        return Err(err(None, None, ResponseCode::FormErr));
    }
    let formerr = |edns| err(Some(question), edns, ResponseCode::FormErr);
    for _ in 0..u32::from(header.counts.answers) + u32::from(header.counts.authorities) {
        skip_record(&mut d).ok_or(formerr(None))?;
    }
    let mut edns = None;
    for _ in 0..header.counts.additionals {
        let (t, class, ttl, root) = skip_record(&mut d).ok_or(formerr(None))?;
        if t == u16::from(RecordType::OPT) {
            if edns.is_some() || !root {
                return Err(formerr(None));
            }
            edns = Some(Edns {
                payload: class,
                version: (ttl >> 16) as u8,
                dnssec_ok: ttl & 0x8000 != 0,
            });
        }
    }
    if let Some(e) = edns {
        if e.version != 0 {
            return Err(err(Some(question), edns, ResponseCode::BADVERS));
        }
    }
    Ok(Request {
        meta,
        query,
        question,
        edns,
    })
}

/// Flags of an answer to `req`.
fn response_meta(req: &Metadata, rcode: ResponseCode, authoritative: bool) -> Metadata {
    let mut m = Metadata::response_from_request(req);
    m.authoritative = authoritative;
    m.recursion_available = true;
    m.response_code = rcode;
    m
}

fn emit_opt(enc: &mut BinEncoder<'_>, edns: Edns, rcode: ResponseCode) -> Option<()> {
    enc.emit(0).ok()?;
    enc.emit_u16(RecordType::OPT.into()).ok()?;
    enc.emit_u16(MAX_UDP).ok()?;
    let flags = if edns.dnssec_ok { 0x8000u32 } else { 0 };
    enc.emit_u32((u32::from(rcode.high()) << 24) | flags).ok()?;
    enc.emit_u16(0).ok()
}

fn finish_header(
    enc: &mut BinEncoder<'_>,
    place: hickory_proto::serialize::binary::Place<Header>,
    metadata: Metadata,
    counts: HeaderCounts,
) -> Option<()> {
    enc.emit_at(place, Header { metadata, counts }).ok()
}

/// Writes an answer with no records (`rcode`: FORMERR, NXDOMAIN, SERVFAIL, …) into `out`.
pub fn write_error(
    out: &mut Vec<u8>,
    req: &Metadata,
    question: Option<&[u8]>,
    edns: Option<Edns>,
    rcode: ResponseCode,
    authoritative: bool,
) {
    out.clear();
    let ok = (|| {
        let mut enc = BinEncoder::new(out);
        let place = enc.place::<Header>().ok()?;
        if let Some(q) = question {
            enc.emit_vec(q).ok()?;
        }
        if let Some(e) = edns {
            emit_opt(&mut enc, e, rcode)?;
        }
        let counts = HeaderCounts {
            queries: u16::from(question.is_some()),
            answers: 0,
            authorities: 0,
            additionals: u16::from(edns.is_some()),
        };
        finish_header(
            &mut enc,
            place,
            response_meta(req, rcode, authoritative),
            counts,
        )
    })();
    if ok.is_none() {
        out.clear();
    }
}

fn emit_rdata(enc: &mut BinEncoder<'_>, rd: Rdata<'_>) -> Option<()> {
    let t = match rd {
        Rdata::A(_) => RecordType::A,
        Rdata::Ptr(_) => RecordType::PTR,
        Rdata::Srv { .. } => RecordType::SRV,
    };
    enc.emit_u16(QNAME_PTR).ok()?;
    enc.emit_u16(t.into()).ok()?;
    enc.emit_u16(1).ok()?; // IN
    enc.emit_u32(TTL).ok()?;
    let place = enc.place::<u16>().ok()?;
    match rd {
        Rdata::A(ip) => enc.emit_vec(&ip.octets()).ok()?,
        Rdata::Ptr(name) => name.emit(enc).ok()?,
        Rdata::Srv { port, target } => {
            enc.emit_u16(0).ok()?; // priority
            enc.emit_u16(0).ok()?; // weight
            enc.emit_u16(port).ok()?;
            // RFC 2782: no compression of the target.
            let mut e = enc.with_name_encoding(NameEncoding::Uncompressed);
            target.emit(&mut e).ok()?;
        }
    }
    let len = u16::try_from(enc.len_since_place(&place)).ok()?;
    enc.emit_at(place, len).ok()
}

/// Writes a NOERROR answer with `records` (none: NODATA) into `out`, rotated by `rotate`
/// (round robin between clients), in at most `limit` bytes: answers that do not fit are
/// dropped and TC set (the client asks again over TCP); additional records that do not fit
/// are dropped silently (RFC 2181 §9). Returns the number of answer records written.
pub fn write_records(
    out: &mut Vec<u8>,
    req: &Request<'_>,
    records: &Records<'_>,
    rotate: usize,
    limit: usize,
) -> usize {
    out.clear();
    let reserve = if req.edns.is_some() { OPT_LEN } else { 0 };
    let mut truncated = false;
    let res = (|| {
        let mut enc = BinEncoder::new(out);
        let place = enc.place::<Header>().ok()?;
        enc.emit_vec(req.question).ok()?;
        let n = records.len();
        let k = if n == 0 { 0 } else { rotate % n };
        let mut answers = 0u16;
        for rd in records.answers().skip(k).chain(records.answers().take(k)) {
            let mark = enc.offset();
            emit_rdata(&mut enc, rd)?;
            if enc.len() + reserve > limit {
                enc.set_offset(mark);
                enc.trim();
                truncated = true;
                break;
            }
            answers += 1;
        }
        let mut additionals = 0u16;
        if !truncated {
            for (name, ip) in records.additionals() {
                let mark = enc.offset();
                name.emit(&mut enc).ok()?;
                enc.emit_u16(RecordType::A.into()).ok()?;
                enc.emit_u16(1).ok()?;
                enc.emit_u32(TTL).ok()?;
                enc.emit_u16(4).ok()?;
                enc.emit_vec(&ip.octets()).ok()?;
                if enc.len() + reserve > limit {
                    enc.set_offset(mark);
                    enc.trim();
                    break;
                }
                additionals += 1;
            }
        }
        if let Some(e) = req.edns {
            emit_opt(&mut enc, e, ResponseCode::NoError)?;
            additionals += 1;
        }
        let mut meta = response_meta(&req.meta, ResponseCode::NoError, true);
        meta.truncation = truncated;
        let counts = HeaderCounts {
            queries: 1,
            answers,
            authorities: 0,
            additionals,
        };
        finish_header(&mut enc, place, meta, counts)?;
        Some(answers as usize)
    })();
    match res {
        Some(n) => n,
        None => {
            // Only an encoder error gets here (a name too long for compression bookkeeping,
            // …): say so rather than send half a message.
            write_error(
                out,
                &req.meta,
                Some(req.question),
                req.edns,
                ResponseCode::ServFail,
                false,
            );
            0
        }
    }
}

/// The id of a message (first two bytes).
pub fn message_id(buf: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*buf.first()?, *buf.get(1)?]))
}

/// Sets the id of a message in place.
pub fn set_message_id(buf: &mut [u8], id: u16) {
    if buf.len() >= 2 {
        buf[..2].copy_from_slice(&id.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Edns as HEdns, Message};
    use std::str::FromStr;

    fn query_bytes(name: &str, t: RecordType, edns: Option<u16>) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 0x1234;
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_str(name).unwrap(), t));
        if let Some(p) = edns {
            let mut e = HEdns::new();
            e.set_max_payload(p);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    #[test]
    fn dns_wire_parses_a_query_with_and_without_edns() {
        let mut b = query_bytes("web.", RecordType::A, None);
        b[13] = b'W';
        let r = parse(&b).expect("parse");
        assert_eq!(r.meta.id, 0x1234);
        assert_eq!(r.query.query_type(), RecordType::A);
        assert_eq!(r.edns, None);
        assert_eq!(r.udp_limit(), 512);
        // The question is kept as sent.
        assert_eq!(&r.question[..5], b"\x03Web\x00");
        let b = query_bytes("web.", RecordType::A, Some(4096));
        let r = parse(&b).expect("parse");
        assert_eq!(r.edns.map(|e| e.payload), Some(4096));
        assert_eq!(r.udp_limit(), MAX_UDP as usize);
    }

    #[test]
    fn dns_wire_rejects_malformed_queries_without_panicking() {
        assert!(matches!(parse(&[]), Err(Reject::Drop)));
        assert!(matches!(parse(&[0u8; 5]), Err(Reject::Drop)));
        // Header only, no question.
        let mut h = vec![0u8; 12];
        h[0] = 7;
        assert!(matches!(
            parse(&h),
            Err(Reject::Error {
                rcode: ResponseCode::FormErr,
                ..
            })
        ));
        // A response is dropped.
        let mut b = query_bytes("web.", RecordType::A, None);
        b[2] |= 0x80;
        assert!(matches!(parse(&b), Err(Reject::Drop)));
        // Another opcode.
        let mut b = query_bytes("web.", RecordType::A, None);
        b[2] |= 5 << 3; // UPDATE
        assert!(matches!(
            parse(&b),
            Err(Reject::Error {
                rcode: ResponseCode::NotImp,
                ..
            })
        ));
        // A truncated question.
        let b = query_bytes("web.", RecordType::A, None);
        assert!(matches!(
            parse(&b[..b.len() - 2]),
            Err(Reject::Error {
                rcode: ResponseCode::FormErr,
                ..
            })
        ));
        // A compression pointer in the question.
        let mut b = vec![0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xC0, 0x0C, 0, 1, 0, 1];
        assert!(parse(&b).is_err());
        b[12] = 0x3F; // a label longer than the message
        assert!(parse(&b).is_err());
        // EDNS version 1.
        let mut b = query_bytes("web.", RecordType::A, Some(1232));
        let n = b.len();
        b[n - 5] = 1; // ttl byte 2 = version
        assert!(matches!(
            parse(&b),
            Err(Reject::Error {
                rcode: ResponseCode::BADVERS,
                ..
            })
        ));
        // Every prefix and garbage: never a panic.
        let b = query_bytes("tasks.web.", RecordType::SRV, Some(1232));
        for i in 0..b.len() {
            let _ = parse(&b[..i]);
        }
        for seed in 0..2000u32 {
            let mut g: Vec<u8> = b.clone();
            let i = (seed as usize * 7) % g.len();
            g[i] = g[i].wrapping_add((seed % 251) as u8 + 1);
            let _ = parse(&g);
        }
    }

    #[test]
    fn dns_wire_error_answers_decode() {
        let b = query_bytes("web.", RecordType::A, Some(1232));
        let r = parse(&b).unwrap();
        let mut out = Vec::new();
        write_error(
            &mut out,
            &r.meta,
            Some(r.question),
            r.edns,
            ResponseCode::NXDomain,
            true,
        );
        let m = Message::from_vec(&out).expect("decode");
        assert_eq!(m.metadata.id, 0x1234);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert!(m.metadata.authoritative);
        assert!(m.metadata.recursion_desired);
        assert_eq!(m.queries.len(), 1);
        assert!(m.edns.is_some());
        // BADVERS needs the extended code in the OPT record.
        write_error(
            &mut out,
            &r.meta,
            Some(r.question),
            r.edns,
            ResponseCode::BADVERS,
            false,
        );
        let m = Message::from_vec(&out).expect("decode");
        // 16 is BADVERS (and BADSIG, its TSIG twin, which is how hickory reads it back).
        assert_eq!(u16::from(m.metadata.response_code), 16);
    }

    #[test]
    fn dns_wire_records_rotate_truncate_and_carry_srv_additionals() {
        use crate::network::dns::records::{Answer, Index};
        use crate::network::dns::testdata::*;
        let mut v = sample_view();
        for i in 0..60 {
            let id = format!("b{i:02}xxxxxxxxxxxxxxxxxxxxxx");
            insert_endpoint(
                &mut v,
                endpoint(
                    FRONT,
                    &id,
                    "web",
                    &format!("web.{}.{id}", i + 10),
                    &format!("10.0.1.{}", 100 + i),
                    true,
                ),
            );
        }
        let index = Index::build(&v);
        let scope = index.scope(&[FRONT]);
        let b = query_bytes("tasks.web.", RecordType::A, None);
        let req = parse(&b).unwrap();
        let Answer::Local(records) = index.answer(&req.query, &scope) else {
            panic!("not local");
        };
        assert_eq!(records.len(), 62);
        let mut out = Vec::new();
        let n = write_records(&mut out, &req, &records, 0, 512);
        let m = Message::from_vec(&out).unwrap();
        assert!(out.len() <= 512);
        assert!(m.metadata.truncation);
        assert_eq!(m.answers.len(), n);
        assert_eq!(n, (512 - 12 - 15) / 16);
        assert!(m.metadata.authoritative && m.metadata.recursion_available);
        let n = write_records(&mut out, &req, &records, 0, 65535);
        let m0 = Message::from_vec(&out).unwrap();
        assert_eq!((n, m0.metadata.truncation), (62, false));
        write_records(&mut out, &req, &records, 1, 65535);
        let m1 = Message::from_vec(&out).unwrap();
        assert_eq!(m1.answers[0].data, m0.answers[1].data, "rotated by one");
        assert_eq!(m1.answers[61].data, m0.answers[0].data);

        // SRV: additionals are the targets' A records; with a small limit they are dropped
        // first, without TC.
        let b = query_bytes("_http._tcp.web.", RecordType::SRV, Some(4096));
        let req = parse(&b).unwrap();
        let Answer::Local(records) = index.answer(&req.query, &scope) else {
            panic!("not local");
        };
        write_records(&mut out, &req, &records, 0, 65535);
        let m = Message::from_vec(&out).unwrap();
        assert_eq!(m.answers.len(), 62);
        assert_eq!(m.additionals.len(), 62);
        assert!(m.edns.is_some());
        let full = out.len();
        let n = write_records(&mut out, &req, &records, 0, MAX_UDP as usize);
        let m = Message::from_vec(&out).unwrap();
        assert!(full > MAX_UDP as usize && out.len() <= MAX_UDP as usize);
        assert!(m.metadata.truncation, "answers do not fit either");
        assert_eq!(m.answers.len(), n);
        assert!(m.additionals.is_empty());
    }
}

//! Hand-written protobuf encoders for the handful of etcd/raft messages a restore writes.
//!
//! etcd's messages are gogoproto proto2 with `nullable=false`: every scalar field is emitted, in
//! field-number order, even when zero (spec §4.4). That makes the encoding a fixed sequence of
//! `tag varint` / `tag len bytes` pairs, which is all this file does — no reflection, no I/O.
//! Every function appends to a `Vec<u8>` and cannot fail.

/// Wire type 0 (varint) and 2 (length-delimited).
const VARINT: u32 = 0;
const LEN: u32 = 2;

/// Append `v` as a base-128 varint.
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(out: &mut Vec<u8>, field: u32, wire: u32) {
    put_varint(out, u64::from((field << 3) | wire));
}

/// Append a varint field (uint64, int64 ≥ 0, uint32, enum, bool).
pub fn put_uint(out: &mut Vec<u8>, field: u32, v: u64) {
    put_key(out, field, VARINT);
    put_varint(out, v);
}

/// Append a length-delimited field (bytes, string, embedded message).
pub fn put_bytes(out: &mut Vec<u8>, field: u32, data: &[u8]) {
    put_key(out, field, LEN);
    put_varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

/// `etcdserverpb.Metadata{NodeID=1, ClusterID=2}`.
pub fn metadata(node_id: u64, cluster_id: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(22);
    put_uint(&mut out, 1, node_id);
    put_uint(&mut out, 2, cluster_id);
    out
}

/// `raftpb.ConfState{voters=1 (repeated, not packed), auto_leave=5}` with no learners.
pub fn conf_state(voters: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(voters.len() * 11 + 2);
    for &v in voters {
        put_uint(&mut out, 1, v);
    }
    put_uint(&mut out, 5, 0); // auto_leave = false, always emitted
    out
}

/// `raftpb.ConfChange{ID=1, Type=2, NodeID=3, Context=4}` for ConfChangeAddNode (type 0).
pub fn conf_change_add_node(node_id: u64, context: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(context.len() + 20);
    put_uint(&mut out, 1, 0);
    put_uint(&mut out, 2, 0);
    put_uint(&mut out, 3, node_id);
    put_bytes(&mut out, 4, context);
    out
}

/// `raftpb.Entry{Type=1, Term=2, Index=3, Data=4}`.
pub fn entry(entry_type: u64, term: u64, index: u64, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 24);
    put_uint(&mut out, 1, entry_type);
    put_uint(&mut out, 2, term);
    put_uint(&mut out, 3, index);
    put_bytes(&mut out, 4, data);
    out
}

/// `raftpb.HardState{term=1, vote=2, commit=3}`.
pub fn hard_state(term: u64, vote: u64, commit: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(24);
    put_uint(&mut out, 1, term);
    put_uint(&mut out, 2, vote);
    put_uint(&mut out, 3, commit);
    out
}

/// `walpb.Snapshot{index=1, term=2, conf_state=3}`; `conf_state = None` gives the empty
/// `{0, 0}` record that opens every WAL (and the 3.4 form).
pub fn wal_snapshot(index: u64, term: u64, conf_state: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    put_uint(&mut out, 1, index);
    put_uint(&mut out, 2, term);
    if let Some(cs) = conf_state {
        put_bytes(&mut out, 3, cs);
    }
    out
}

/// `raftpb.Snapshot{data=1, metadata=2{conf_state=1, index=2, term=3}}`.
pub fn raft_snapshot(data: &[u8], conf_state: &[u8], index: u64, term: u64) -> Vec<u8> {
    let mut meta = Vec::with_capacity(conf_state.len() + 24);
    put_bytes(&mut meta, 1, conf_state);
    put_uint(&mut meta, 2, index);
    put_uint(&mut meta, 3, term);
    let mut out = Vec::with_capacity(data.len() + meta.len() + 12);
    put_bytes(&mut out, 1, data);
    put_bytes(&mut out, 2, &meta);
    out
}

/// `walpb.Record{type=1, crc=2, data=3}`; `data = None` omits field 3 (the crc record).
pub fn wal_record(record_type: u64, crc: u32, data: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.map_or(0, <[u8]>::len) + 16);
    put_uint(&mut out, 1, record_type);
    put_uint(&mut out, 2, u64::from(crc));
    if let Some(d) = data {
        put_bytes(&mut out, 3, d);
    }
    out
}

/// `snappb.Snapshot{crc=1, data=2}`.
pub fn snappb_snapshot(crc: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 16);
    put_uint(&mut out, 1, u64::from(crc));
    put_bytes(&mut out, 2, data);
    out
}

/// A minimal protobuf reader for tests and self-checks: splits a message into
/// `(field, value)` pairs. Returns `None` on malformed input.
pub fn decode_fields(mut buf: &[u8]) -> Option<Vec<(u32, Field<'_>)>> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let key = take_varint(&mut buf)?;
        let field = u32::try_from(key >> 3).ok()?;
        match key & 7 {
            0 => out.push((field, Field::Varint(take_varint(&mut buf)?))),
            2 => {
                let len = usize::try_from(take_varint(&mut buf)?).ok()?;
                if len > buf.len() {
                    return None;
                }
                let (data, rest) = buf.split_at(len);
                out.push((field, Field::Bytes(data)));
                buf = rest;
            }
            _ => return None,
        }
    }
    Some(out)
}

/// One decoded protobuf field value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

fn take_varint(buf: &mut &[u8]) -> Option<u64> {
    let mut v: u64 = 0;
    for i in 0..10 {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        v |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints() {
        let mut v = Vec::new();
        put_varint(&mut v, 0);
        put_varint(&mut v, 127);
        put_varint(&mut v, 128);
        put_varint(&mut v, u64::MAX);
        assert_eq!(hex::encode(&v), "007f8001ffffffffffffffffff01");
    }

    #[test]
    fn messages_match_spec_examples() {
        // §4.5: the empty WAL snapshot record, and ConfState{voters:[8e9e05c52164694d]}.
        assert_eq!(hex::encode(wal_snapshot(0, 0, None)), "08001000");
        assert_eq!(
            hex::encode(conf_state(&[0x8e9e05c52164694d])),
            "08cdd2918bd2b881cf8e012800"
        );
        assert_eq!(
            hex::encode(hard_state(1, 0x8e9e05c52164694d, 1)),
            "080110cdd2918bd2b881cf8e011801"
        );
    }

    #[test]
    fn decode_round_trip() {
        let m = raft_snapshot(b"xy", &conf_state(&[3, 1]), 2, 1);
        let f = decode_fields(&m).unwrap();
        assert_eq!(f[0], (1, Field::Bytes(b"xy")));
        let meta = match f[1] {
            (2, Field::Bytes(b)) => decode_fields(b).unwrap(),
            _ => panic!("no metadata"),
        };
        assert_eq!(meta[1], (2, Field::Varint(2)));
        assert_eq!(meta[2], (3, Field::Varint(1)));
        assert!(decode_fields(&[0x0a, 0x05, 1]).is_none());
        assert!(decode_fields(&[0x08]).is_none());
    }
}

//! The WAL file a restore writes (spec §3.5, §4.1–§4.3), in etcd 3.5's format.
//!
//! A restored data dir has one WAL segment, `0000000000000000-0000000000000000.wal`, of exactly
//! `WAL_SEGMENT_SIZE` bytes: the records below, then zeros (the preallocated area; the reader
//! stops at a zero length field). `restore_wal_records` returns the records; the caller writes
//! them and extends the file with `set_len`/fallocate. `decode` walks a WAL back, checking frames
//! and the CRC chain — used by the tests and as a self-check before installing a data dir.
//!
//! Records: crc(0) · metadata{NodeID, ClusterID} · snapshot{} · one ConfChange entry per member
//! (ascending ID, index 1..N, term 1) · HardState{term 1, vote min ID, commit N} ·
//! snapshot{index N, term 1, ConfState{voters}}.

use super::cluster::ClusterPlan;
use super::proto::{self, Field};

/// The file name of the only segment: `%016x-%016x.wal` of (seq 0, index 0).
pub const WAL_FILE_NAME: &str = "0000000000000000-0000000000000000.wal";
/// etcd's `SegmentSizeBytes`: every segment is preallocated to 64,000,000 bytes.
pub const WAL_SEGMENT_SIZE: u64 = 64 * 1000 * 1000;

/// `walpb.Record` types (`wal.go`).
pub const METADATA_TYPE: u64 = 1;
pub const ENTRY_TYPE: u64 = 2;
pub const STATE_TYPE: u64 = 3;
pub const CRC_TYPE: u64 = 4;
pub const SNAPSHOT_TYPE: u64 = 5;

/// `raftpb.EntryConfChange`.
const ENTRY_CONF_CHANGE: u64 = 1;
/// Restore always writes term 1.
const TERM: u64 = 1;

/// Encodes records as WAL frames, keeping etcd's rolling CRC-32C.
#[derive(Debug, Default)]
pub struct WalEncoder {
    buf: Vec<u8>,
    crc: u32,
}

impl WalEncoder {
    /// A new first segment: the running CRC starts at 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Append the `crcType` record carrying the current running CRC (no data).
    pub fn crc_record(&mut self) {
        let rec = proto::wal_record(CRC_TYPE, self.crc, None);
        push_frame(&mut self.buf, &rec);
    }

    /// Append a record with data; the CRC chain advances over `data`.
    pub fn record(&mut self, record_type: u64, data: &[u8]) {
        self.crc = crc32c::crc32c_append(self.crc, data);
        let rec = proto::wal_record(record_type, self.crc, Some(data));
        push_frame(&mut self.buf, &rec);
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}

/// One frame: `u64 LE length (| (0x80|pad) << 56)` · record · zero padding to 8 bytes.
pub fn push_frame(out: &mut Vec<u8>, record: &[u8]) {
    let pad = (8 - record.len() % 8) % 8;
    let mut len_field = record.len() as u64;
    if pad != 0 {
        len_field |= (0x80 | pad as u64) << 56;
    }
    out.extend_from_slice(&len_field.to_le_bytes());
    out.extend_from_slice(record);
    out.resize(out.len() + pad, 0);
}

/// The records of the restore WAL, in order, as they start the file (etcd 3.5/3.6 format,
/// byte-identical to `etcdutl snapshot restore`). The file is these bytes followed by zeros up to
/// `WAL_SEGMENT_SIZE`.
pub fn restore_wal_records(plan: &ClusterPlan) -> Vec<u8> {
    let ids = plan.member_ids();
    let n = plan.index();
    let mut w = WalEncoder::new();
    w.crc_record();
    w.record(
        METADATA_TYPE,
        &proto::metadata(plan.local_id, plan.cluster_id),
    );
    w.record(SNAPSHOT_TYPE, &proto::wal_snapshot(0, 0, None));
    for (i, m) in plan.members.iter().enumerate() {
        let cc = proto::conf_change_add_node(m.id, m.json().as_bytes());
        let entry = proto::entry(ENTRY_CONF_CHANGE, TERM, i as u64 + 1, &cc);
        w.record(ENTRY_TYPE, &entry);
    }
    let vote = ids.first().copied().unwrap_or(0);
    w.record(STATE_TYPE, &proto::hard_state(TERM, vote, n));
    let cs = proto::conf_state(&ids);
    w.record(SNAPSHOT_TYPE, &proto::wal_snapshot(n, TERM, Some(&cs)));
    w.into_bytes()
}

/// A record read back by `decode`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedRecord {
    pub offset: usize,
    pub record_type: u64,
    pub crc: u32,
    pub data: Option<Vec<u8>>,
}

/// Why `decode` rejected a WAL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalDecodeError {
    #[error("WAL offset {0}: frame runs past the end of the file")]
    Truncated(usize),
    #[error("WAL offset {0}: record is not valid walpb.Record protobuf")]
    Malformed(usize),
    #[error(
        "WAL offset {offset}: CRC mismatch (record says {stored:08x}, chain gives {computed:08x})"
    )]
    Crc {
        offset: usize,
        stored: u32,
        computed: u32,
    },
}

/// Walk the frames of a WAL segment up to the first zero length field (or the end), verifying
/// padding and the CRC chain the way etcd's `ReadAll` does.
pub fn decode(buf: &[u8]) -> Result<Vec<DecodedRecord>, WalDecodeError> {
    let mut out = Vec::new();
    let mut off = 0usize;
    let mut running: u32 = 0;
    while buf.len() - off >= 8 {
        let mut lf = [0u8; 8];
        lf.copy_from_slice(&buf[off..off + 8]);
        let len_field = u64::from_le_bytes(lf);
        if len_field == 0 {
            break;
        }
        let rec_len = usize::try_from(len_field & 0x00FF_FFFF_FFFF_FFFF)
            .map_err(|_| WalDecodeError::Truncated(off))?;
        let pad = if len_field >> 63 == 1 {
            ((len_field >> 56) & 7) as usize
        } else {
            0
        };
        let start = off + 8;
        let end = start
            .checked_add(rec_len)
            .filter(|&e| e.saturating_add(pad) <= buf.len())
            .ok_or(WalDecodeError::Truncated(off))?;
        let fields =
            proto::decode_fields(&buf[start..end]).ok_or(WalDecodeError::Malformed(off))?;
        let (mut rtype, mut crc, mut data) = (None, None, None);
        for (f, v) in fields {
            match (f, v) {
                (1, Field::Varint(t)) => rtype = Some(t),
                (2, Field::Varint(c)) => crc = u32::try_from(c).ok(),
                (3, Field::Bytes(d)) => data = Some(d.to_vec()),
                _ => return Err(WalDecodeError::Malformed(off)),
            }
        }
        let (record_type, crc) = rtype.zip(crc).ok_or(WalDecodeError::Malformed(off))?;
        if record_type == CRC_TYPE {
            if running != 0 && crc != running {
                return Err(WalDecodeError::Crc {
                    offset: off,
                    stored: crc,
                    computed: running,
                });
            }
            running = crc;
        } else {
            let computed = crc32c::crc32c_append(running, data.as_deref().unwrap_or(&[]));
            if crc != computed {
                return Err(WalDecodeError::Crc {
                    offset: off,
                    stored: crc,
                    computed,
                });
            }
            running = computed;
        }
        out.push(DecodedRecord {
            offset: off,
            record_type,
            crc,
            data,
        });
        off = end + pad;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golden(path: &str) -> Vec<u8> {
        std::fs::read(format!(
            "{}/tests/fixtures/{path}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    #[test]
    fn default_member_is_byte_identical() {
        let plan = ClusterPlan::new(
            "default",
            "default=http://localhost:2380",
            "http://localhost:2380",
            "etcd-cluster",
        )
        .unwrap();
        let want = golden("default.wal.records");
        assert_eq!(want.len(), 288);
        assert_eq!(hex::encode(restore_wal_records(&plan)), hex::encode(want));
    }

    #[test]
    fn three_members_custom_token_are_byte_identical() {
        const IC: &str = "infra0=http://10.0.1.10:2380,infra1=http://10.0.1.11:2380,infra2=http://10.0.1.12:2380";
        for (i, name) in ["infra0", "infra1", "infra2"].iter().enumerate() {
            let adv = format!("http://10.0.1.1{i}:2380");
            let plan = ClusterPlan::new(name, IC, &adv, "etcd-cluster-1").unwrap();
            let want = golden(&format!("restore/{name}.wal.records"));
            assert_eq!(
                hex::encode(restore_wal_records(&plan)),
                hex::encode(want),
                "{name}"
            );
        }
    }

    /// Go JSON escaping in the member name; several URLs per member, an uppercase scheme, an
    /// IPv6 host, a unix URL and spaces in the advertise list (etcdutl 3.5.30 vectors).
    #[test]
    fn escaping_and_url_forms_are_byte_identical() {
        let cases = [
            (
                "n<&>\"x",
                "n<&>\"x=http://127.0.0.1:1",
                "http://127.0.0.1:1",
                "tok",
                "restore/escaped-name.wal.records",
            ),
            (
                "Db",
                "Db=HTTP://LocalHost:2380,Db=https://[::1]:2381,a=unix://sock:1",
                "https://[::1]:2381, HTTP://LocalHost:2380",
                "etcd-cluster",
                "restore/two-urls.wal.records",
            ),
        ];
        for (name, ic, adv, token, file) in cases {
            let plan = ClusterPlan::new(name, ic, adv, token).unwrap();
            assert_eq!(
                hex::encode(restore_wal_records(&plan)),
                hex::encode(golden(file)),
                "{file}"
            );
        }
    }

    #[test]
    fn decode_walks_and_checks_the_chain() {
        let plan = ClusterPlan::new(
            "default",
            "default=http://localhost:2380",
            "http://localhost:2380",
            "etcd-cluster",
        )
        .unwrap();
        let mut bytes = restore_wal_records(&plan);
        bytes.resize(bytes.len() + 4096, 0);
        let recs = decode(&bytes).unwrap();
        let types: Vec<u64> = recs.iter().map(|r| r.record_type).collect();
        assert_eq!(types, [4, 1, 5, 2, 3, 5]);
        assert_eq!(recs[3].offset, 80);

        // flip one byte of the entry's member JSON: the chain must break there
        bytes[150] ^= 1;
        assert!(matches!(
            decode(&bytes),
            Err(WalDecodeError::Crc { offset: 80, .. })
        ));
        // a length field pointing past the end
        let mut short = restore_wal_records(&plan);
        short.truncate(100);
        assert_eq!(decode(&short), Err(WalDecodeError::Truncated(80)));
    }

    #[test]
    fn frame_padding() {
        let mut out = Vec::new();
        push_frame(&mut out, &[1, 2, 3]);
        // 3 bytes + 5 bytes of padding: the length field's top byte is 0x80 | 5
        assert_eq!(
            hex::encode(&out),
            "0300000000000085".to_owned() + "010203" + "0000000000"
        );
        let mut out = Vec::new();
        push_frame(&mut out, &[0; 8]);
        assert_eq!(out.len(), 16);
        assert_eq!(&out[..8], &8u64.to_le_bytes()); // no padding: no flag
    }
}

//! `etcdutl snapshot status` (spec §2): the numbers, computed from node summaries, and the printers,
//! byte-identical to etcdutl's `simple`, `json` and `table` output.
//!
//! The hash is CRC-32C over, for each top-level bucket in key order, the bucket name followed by
//! `k v` of every element in key order. CRC-32C is linear, so it is assembled from per-leaf CRCs
//! with [`combine`] instead of re-reading the data in key order.

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};

use super::bolt::{Meta, NodeAt};
use super::crc::combine;
use super::mvcc::{revision_main, semver_string};
use super::summary::{leaves_in_order, summarize_leaf, LeafSummary, RevisionEvent, Summaries};
use crate::cli::WriteOut;

/// `etcdutl snapshot status` numbers (spec §2).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Status {
    pub hash: u32,
    pub revision: i64,
    /// 3.4/3.5 meaning: k/v pairs across all buckets.
    pub total_key: u64,
    pub total_size: u64,
    /// 3.6 meaning of totalKey: distinct live keys in bucket `key`.
    pub live_keys: u64,
    /// 3.6 `version` column: `meta/storageVersion` when parseable, else "".
    pub version: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compat {
    V35,
    V36,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableStyle {
    /// etcdutl 3.5.30: `┌─┬┐ │ ├┼┤ └┴┘`
    Unicode,
    /// etcdctl 3.4, etcdutl 3.5.1: `+---+`
    Ascii,
}

/// The status of a database whose integrity check passed. `Ok((status, v36_problem))`, where
/// `v36_problem` is why etcdutl 3.6 would fail where 3.5 succeeds (a `key` entry that is not a
/// revision key or whose value is not a `KeyValue`). `Err` is where etcdutl 3.5 fails too.
pub fn compute(meta: &Meta, nodes: &Summaries) -> Result<(Status, Option<String>), String> {
    let mut t = Tally::default();
    leaves_in_order(nodes, meta.root, |id, root_leaf| {
        if root_leaf.buckets.len() != root_leaf.count as usize {
            return Err(format!(
                "page {id}: the root bucket holds a key that is not a bucket (cannot get hash of bucket)"
            ));
        }
        for b in &root_leaf.buckets {
            let name = &b.name[..];
            let bucket = b.value.as_ref().map_err(|e| {
                format!("page {id}: bucket {:?}: {e}", String::from_utf8_lossy(name))
            })?;
            t.hash = combine(t.hash, crc32c::crc32c(name), name.len() as u64);
            let is_key = name == b"key";
            let is_meta = name == b"meta";
            if let Some(page) = &bucket.inline {
                let leaf = summarize_leaf(page, NodeAt::Inline(name))?;
                t.leaf(&leaf, is_key, is_meta)?;
            } else {
                leaves_in_order(nodes, bucket.root, |_, leaf| t.leaf(leaf, is_key, is_meta))?;
            }
        }
        Ok(())
    })?;
    let status = Status {
        hash: t.hash,
        revision: t.revision,
        total_key: t.total_key,
        total_size: meta.pgid.saturating_mul(u64::from(meta.page_size)),
        live_keys: t.live.len() as u64,
        version: t
            .storage_version
            .as_deref()
            .and_then(semver_string)
            .unwrap_or_default(),
    };
    Ok((status, t.v36_problem))
}

/// The live-key set holds 128-bit SipHash values of keys already (`summary::key_hash`): hashing
/// them again would only cost time, so the set uses their high 64 bits as is (the low word has
/// its two lowest bits reused for the record kind).
#[derive(Default)]
struct KeyHashHasher(u64);

impl Hasher for KeyHashHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u128` is used; a generic fallback keeps the trait total.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u128(&mut self, k: u128) {
        self.0 = (k >> 64) as u64;
    }
}

#[derive(Default)]
struct Tally {
    hash: u32,
    revision: i64,
    total_key: u64,
    live: HashSet<u128, BuildHasherDefault<KeyHashHasher>>,
    storage_version: Option<Vec<u8>>,
    v36_problem: Option<String>,
}

impl Tally {
    fn leaf(&mut self, leaf: &LeafSummary, is_key: bool, is_meta: bool) -> Result<(), String> {
        self.hash = combine(self.hash, leaf.crc, leaf.len);
        self.total_key += u64::from(leaf.count);
        if is_meta {
            if let Some(v) = &leaf.storage_version {
                self.storage_version = Some(v.to_vec());
            }
        }
        if !is_key || leaf.count == 0 {
            return Ok(());
        }
        if leaf.short_key {
            return Err("bucket key: a key is shorter than the 8 bytes of a revision".into());
        }
        self.revision = leaf.last_key().and_then(revision_main).unwrap_or(0);
        let problem = "bucket key: an entry is not a revision key with a KeyValue value";
        match &leaf.revisions {
            None => {
                self.v36_problem.get_or_insert_with(|| problem.into());
            }
            Some(records) => {
                for r in records {
                    match r.event() {
                        RevisionEvent::Put(k) => {
                            self.live.insert(k);
                        }
                        RevisionEvent::Tombstone(k) => {
                            self.live.remove(&k);
                        }
                        RevisionEvent::Bad => {
                            self.v36_problem.get_or_insert_with(|| problem.into());
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// go-humanize `Bytes` (v1.0.x): SI units, one decimal below 10.
pub fn humanize_bytes(s: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    if s < 10 {
        return format!("{s} B");
    }
    let f = s as f64;
    let e = (f.ln() / 1000f64.ln()).floor();
    let unit = UNITS[(e as usize).min(UNITS.len() - 1)];
    let val = (f / 1000f64.powf(e) * 10.0 + 0.5).floor() / 10.0;
    if val < 10.0 {
        format!("{val:.1} {unit}")
    } else {
        format!("{val:.0} {unit}")
    }
}

/// The status exactly as `etcdutl snapshot status -w <w>` prints it (3.5 or 3.6 columns).
pub fn render(s: &Status, w: WriteOut, c: Compat, t: TableStyle) -> String {
    let total_key = match c {
        Compat::V35 => s.total_key,
        Compat::V36 => s.live_keys,
    };
    let mut header = vec!["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"];
    let mut row = vec![
        format!("{:x}", s.hash),
        s.revision.to_string(),
        total_key.to_string(),
        humanize_bytes(s.total_size),
    ];
    if c == Compat::V36 {
        header.push("VERSION");
        row.push(s.version.clone());
    }
    match w {
        WriteOut::Simple => format!("{}\n", row.join(", ")),
        WriteOut::Json => {
            let mut j = format!(
                "{{\"hash\":{},\"revision\":{},\"totalKey\":{},\"totalSize\":{}",
                s.hash, s.revision, total_key, s.total_size
            );
            if c == Compat::V36 {
                j.push_str(",\"version\":");
                j.push_str(&go_json_string(&s.version));
            }
            j.push_str("}\n");
            j
        }
        WriteOut::Table => table(&header, &row, t),
    }
}

/// A JSON string as Go's `encoding/json` writes it: like serde_json, plus HTML-safe escapes.
fn go_json_string(v: &str) -> String {
    serde_json::Value::String(v.to_string())
        .to_string()
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

/// olekukonko/tablewriter v0.0.x as etcdutl configures it: centred upper-case headers, right-aligned
/// cells, one space of padding, borders on every side.
fn table(header: &[&str], row: &[String], style: TableStyle) -> String {
    let widths: Vec<usize> = header
        .iter()
        .zip(row)
        .map(|(h, v)| h.chars().count().max(v.chars().count()))
        .collect();
    // (left, junction, right, horizontal) for the top, middle and bottom rules; the vertical bar.
    let (top, mid, bottom, bar) = match style {
        TableStyle::Unicode => (
            ("┌", "┬", "┐", "─"),
            ("├", "┼", "┤", "─"),
            ("└", "┴", "┘", "─"),
            "│",
        ),
        TableStyle::Ascii => (
            ("+", "+", "+", "-"),
            ("+", "+", "+", "-"),
            ("+", "+", "+", "-"),
            "|",
        ),
    };
    let rule = |(l, j, r, h): (&str, &str, &str, &str)| {
        let cells: Vec<String> = widths.iter().map(|w| h.repeat(w + 2)).collect();
        format!("{l}{}{r}\n", cells.join(j))
    };
    let line = |cells: Vec<String>| format!("{bar}{}{bar}\n", cells.join(bar));
    let centred = header
        .iter()
        .zip(&widths)
        .map(|(h, w)| {
            let gap = w - h.chars().count();
            let left = gap / 2;
            format!(" {}{h}{} ", " ".repeat(left), " ".repeat(gap - left))
        })
        .collect();
    let right = row
        .iter()
        .zip(&widths)
        .map(|(v, w)| format!(" {v:>w$} "))
        .collect();
    [
        rule(top),
        line(centred),
        rule(mid),
        line(right),
        rule(bottom),
    ]
    .concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn humanize_matches_go_humanize() {
        let cases = [
            (0, "0 B"),
            (9, "9 B"),
            (10, "10 B"),
            (999, "999 B"),
            (1000, "1.0 kB"),
            (8192, "8.2 kB"),
            (20480, "20 kB"),
            (24576, "25 kB"),
            (102400, "102 kB"),
            (999_949, "1000 kB"),
            (999_950, "1000 kB"),
            (1_000_000, "1.0 MB"),
            (9_949_999, "9.9 MB"),
            (10_000_000, "10 MB"),
            (1_073_741_824, "1.1 GB"),
            (u64::MAX, "18 EB"),
        ];
        for (n, want) in cases {
            assert_eq!(humanize_bytes(n), want, "{n}");
        }
    }

    fn rev(main: u64, tombstone: bool) -> Vec<u8> {
        let mut k = main.to_be_bytes().to_vec();
        k.push(b'_');
        k.extend_from_slice(&0u64.to_be_bytes());
        if tombstone {
            k.push(b't');
        }
        k
    }

    fn kv(key: &[u8]) -> Vec<u8> {
        let mut v = vec![0x0a, key.len() as u8];
        v.extend_from_slice(key);
        v
    }

    fn inline_bucket(elems: &[(u32, &[u8], &[u8])]) -> Vec<u8> {
        let mut v = vec![0u8; 16];
        v.extend(crate::snapshot::summary::tests::leaf_node(0, elems));
        v
    }

    /// A 3-page database: metas, and a root leaf holding inline buckets `key` and `meta`.
    fn tiny_db(key: &[(u32, &[u8], &[u8])], storage_version: &[u8]) -> Vec<u8> {
        use crate::snapshot::bolt::{FLAG_META, NO_FREELIST};
        let key_bucket = inline_bucket(key);
        let meta_bucket = inline_bucket(&[(0, b"storageVersion", storage_version)]);
        let root = crate::snapshot::summary::tests::leaf_node(
            2,
            &[(1, b"key", &key_bucket), (1, b"meta", &meta_bucket)],
        );
        let mut db = vec![0u8; 3 * 4096];
        for id in 0..2u64 {
            let m = Meta {
                page_size: 4096,
                flags: 0,
                root: 2,
                root_sequence: 0,
                freelist: NO_FREELIST,
                pgid: 3,
                txid: 5 - id,
            };
            let p = id as usize * 4096;
            db[p..p + 8].copy_from_slice(&id.to_le_bytes());
            db[p + 8..p + 10].copy_from_slice(&FLAG_META.to_le_bytes());
            db[p + 16..p + 80].copy_from_slice(&m.encode());
        }
        db[8192..8192 + root.len()].copy_from_slice(&root);
        db
    }

    #[test]
    fn v36_live_keys_follow_tombstones_in_revision_order() {
        let (r1, r2, r3, r4) = (rev(2, false), rev(3, false), rev(4, true), rev(5, false));
        let (a, b) = (kv(b"a"), kv(b"b"));
        let db = tiny_db(
            &[(0, &r1, &a), (0, &r2, &b), (0, &r3, &a), (0, &r4, &b)],
            b"3.6.0",
        );
        let r = crate::snapshot::inspect_bytes(&db).unwrap();
        assert_eq!(r.integrity_errors, Vec::<String>::new());
        assert_eq!(r.status.live_keys, 1, "a was deleted, b put twice");
        assert_eq!(r.status.total_key, 5, "4 in key + 1 in meta");
        assert_eq!(r.status.revision, 5);
        assert_eq!(r.status.version, "3.6.0");
        assert_eq!(r.v36_problem, None);
        let json = render(&r.status, WriteOut::Json, Compat::V36, TableStyle::Ascii);
        assert!(
            json.ends_with(",\"totalKey\":1,\"totalSize\":12288,\"version\":\"3.6.0\"}\n"),
            "{json}"
        );
        let mut crc = crc32c::crc32c(b"key");
        for (k, v) in [(&r1, &a), (&r2, &b), (&r3, &a), (&r4, &b)] {
            crc = crc32c::crc32c_append(crc, k);
            crc = crc32c::crc32c_append(crc, v);
        }
        crc = crc32c::crc32c_append(crc, b"metastorageVersion3.6.0");
        assert_eq!(r.status.hash, crc);
    }

    #[test]
    fn v36_problem_and_unparseable_version() {
        let r1 = rev(2, false);
        let db = tiny_db(&[(0, &r1, b"\x08")], b"3.6");
        let r = crate::snapshot::inspect_bytes(&db).unwrap();
        assert!(r.v36_problem.is_some());
        assert_eq!(r.status.version, "");
        assert_eq!(r.status.revision, 2);
        let db = tiny_db(&[(0, b"short", b"")], b"3.6.0");
        assert!(
            crate::snapshot::inspect_bytes(&db).is_err(),
            "etcdutl 3.5 panics on it"
        );
    }

    fn status() -> Status {
        Status {
            hash: 0x45d92457,
            revision: 318,
            total_key: 324,
            total_size: 118784,
            live_keys: 310,
            version: String::new(),
        }
    }

    #[test]
    fn simple_and_json() {
        let s = status();
        let r = |w, c| render(&s, w, c, TableStyle::Unicode);
        assert_eq!(
            r(WriteOut::Simple, Compat::V35),
            "45d92457, 318, 324, 119 kB\n"
        );
        assert_eq!(
            r(WriteOut::Simple, Compat::V36),
            "45d92457, 318, 310, 119 kB, \n"
        );
        assert_eq!(
            r(WriteOut::Json, Compat::V35),
            "{\"hash\":1171858519,\"revision\":318,\"totalKey\":324,\"totalSize\":118784}\n"
        );
        assert_eq!(
            r(WriteOut::Json, Compat::V36),
            "{\"hash\":1171858519,\"revision\":318,\"totalKey\":310,\"totalSize\":118784,\"version\":\"\"}\n"
        );
    }

    #[test]
    fn json_strings_are_escaped_like_go() {
        assert_eq!(go_json_string("3.6.0"), "\"3.6.0\"");
        assert_eq!(
            go_json_string("3.6.0-a<b>&\"\u{2028}"),
            "\"3.6.0-a\\u003cb\\u003e\\u0026\\\"\\u2028\""
        );
    }

    #[test]
    fn tables_match_etcdutl_bytes() {
        let s = status();
        assert_eq!(
            render(&s, WriteOut::Table, Compat::V35, TableStyle::Ascii),
            "+----------+----------+------------+------------+\n\
             |   HASH   | REVISION | TOTAL KEYS | TOTAL SIZE |\n\
             +----------+----------+------------+------------+\n\
             | 45d92457 |      318 |        324 |     119 kB |\n\
             +----------+----------+------------+------------+\n"
        );
        assert_eq!(
            render(&s, WriteOut::Table, Compat::V35, TableStyle::Unicode),
            "┌──────────┬──────────┬────────────┬────────────┐\n\
             │   HASH   │ REVISION │ TOTAL KEYS │ TOTAL SIZE │\n\
             ├──────────┼──────────┼────────────┼────────────┤\n\
             │ 45d92457 │      318 │        324 │     119 kB │\n\
             └──────────┴──────────┴────────────┴────────────┘\n"
        );
        let t = render(&s, WriteOut::Table, Compat::V36, TableStyle::Ascii);
        assert!(t.contains("| TOTAL SIZE | VERSION |\n"), "{t}");
        assert!(t.contains("|     119 kB |         |\n"), "{t}");
    }
}

//! Tests for the bbolt writer and the restore diff. `Db` below is a deliberately tiny, test-only
//! bbolt reader (it walks the tree from the meta root and checks the invariants `tx.Check()`
//! enforces), so these tests do not depend on the production reader.

use super::*;
use std::collections::BTreeMap;
use std::io::Cursor;

type Entries = Vec<(Vec<u8>, Vec<u8>)>;

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes(b[o..o + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// A parsed database: buckets → (sequence, inline?, entries), plus the structure seen.
#[derive(Default)]
struct Db {
    page_size: usize,
    pgid: u64,
    txids: [u64; 2],
    buckets: BTreeMap<Vec<u8>, (u64, bool, Entries)>,
    /// page id → (flags, overflow) of every tree page reached.
    pages: BTreeMap<u64, (u16, u32)>,
    /// height of each non-inline bucket's tree (1 = a single leaf).
    heights: BTreeMap<Vec<u8>, usize>,
    /// Check that children come before their parent (our writer's write order).
    ordered: bool,
}

impl Db {
    /// Parse and check: metas valid, every page in [3, pgid) referenced exactly once, keys
    /// strictly ascending, branch keys equal to the first key of their child.
    fn read(file: &[u8]) -> Db {
        let ps = u32_at(file, 16 + 8) as usize;
        assert_eq!(file.len() % ps, 0, "file length not a page multiple");
        let mut db = Db {
            page_size: ps,
            ordered: true,
            ..Db::default()
        };
        for i in 0..2 {
            let m = &file[i * ps + 16..i * ps + 16 + 64];
            assert_eq!(u64_at(file, i * ps), i as u64, "meta page id");
            assert_eq!(u16_at(file, i * ps + 8), FLAG_META);
            assert_eq!(u32_at(m, 0), MAGIC);
            assert_eq!(u32_at(m, 4), 2);
            assert_eq!(u64_at(m, 56), fnv1a64(&m[..56]), "meta {i} checksum");
            db.txids[i] = u64_at(m, 48);
        }
        let m = &file[16..80];
        let (root, freelist, pgid) = (u64_at(m, 16), u64_at(m, 32), u64_at(m, 40));
        db.pgid = pgid;
        if freelist != u64::MAX {
            let fl = freelist as usize * ps;
            assert_eq!(u16_at(file, fl + 8), FLAG_FREELIST);
            db.pages.insert(freelist, (FLAG_FREELIST, 0));
        }
        let mut root_entries = Vec::new();
        db.walk(file, root, &mut root_entries, 1);
        for (flags, name, value) in root_entries {
            assert_eq!(flags, BUCKET_LEAF_FLAG);
            let (broot, seq) = (u64_at(&value, 0), u64_at(&value, 8));
            let mut entries = Vec::new();
            if broot == 0 {
                let page = &value[16..];
                assert_eq!(u16_at(page, 8), FLAG_LEAF);
                read_elems(page, 0, &mut entries);
            } else {
                let h = db.walk(file, broot, &mut entries, 1);
                db.heights.insert(name.clone(), h);
            }
            let kv: Entries = entries.into_iter().map(|(_, k, v)| (k, v)).collect();
            for w in kv.windows(2) {
                assert!(w[0].0 < w[1].0, "keys out of order");
            }
            db.buckets.insert(name, (seq, broot == 0, kv));
        }
        // every page is reachable exactly once, and the file is exactly pgid pages
        let mut covered = vec![false; pgid as usize];
        covered[0] = true;
        covered[1] = true;
        for (&id, &(_, ov)) in &db.pages {
            for p in id..=id + u64::from(ov) {
                assert!(!covered[p as usize], "page {p} referenced twice");
                covered[p as usize] = true;
            }
        }
        assert!(covered.iter().all(|&c| c), "unreachable pages");
        assert_eq!(file.len() as u64, pgid * ps as u64, "file length");
        db
    }

    /// Walk a tree; returns its height. Checks page ids, flags and branch keys.
    fn walk(
        &mut self,
        file: &[u8],
        id: u64,
        out: &mut Vec<(u32, Vec<u8>, Vec<u8>)>,
        h: usize,
    ) -> usize {
        assert!(id >= 2 && id < self.pgid, "page {id} out of bounds");
        let ps = self.page_size;
        let base = id as usize * ps;
        assert_eq!(u64_at(file, base), id, "page id mismatch");
        let flags = u16_at(file, base + 8);
        let ov = u32_at(file, base + 12);
        assert!(
            self.pages.insert(id, (flags, ov)).is_none(),
            "page {id} twice"
        );
        let page = &file[base..base + (ov as usize + 1) * ps];
        match flags {
            FLAG_LEAF => {
                read_elems(page, 0, out);
                h
            }
            FLAG_BRANCH => {
                let count = u16_at(page, 10) as usize;
                let mut height = 0;
                for i in 0..count {
                    let at = 16 + 16 * i;
                    let pos = u32_at(page, at) as usize;
                    let ksize = u32_at(page, at + 4) as usize;
                    let child = u64_at(page, at + 8);
                    assert!(
                        !self.ordered || child < id,
                        "branch {id} written before child {child}"
                    );
                    let key = page[at + pos..at + pos + ksize].to_vec();
                    let before = out.len();
                    height = self.walk(file, child, out, h + 1);
                    assert_eq!(
                        out[before].1, key,
                        "branch key is not the child's first key"
                    );
                }
                height
            }
            f => panic!("page {id}: unexpected flags {f:#x}"),
        }
    }
}

fn read_elems(page: &[u8], _base: usize, out: &mut Vec<(u32, Vec<u8>, Vec<u8>)>) {
    let count = u16_at(page, 10) as usize;
    for i in 0..count {
        let at = 16 + 16 * i;
        let (f, pos, ks, vs) = (
            u32_at(page, at),
            u32_at(page, at + 4) as usize,
            u32_at(page, at + 8) as usize,
            u32_at(page, at + 12) as usize,
        );
        let k = page[at + pos..at + pos + ks].to_vec();
        let v = page[at + pos + ks..at + pos + ks + vs].to_vec();
        out.push((f, k, v));
    }
}

/// Write `buckets` (name → (sequence, entries)) with the writer; returns the file bytes.
fn write_db(ps: u32, buckets: &BTreeMap<Vec<u8>, (u64, Entries)>) -> (Vec<u8>, WriteSummary) {
    let mut w = BoltWriter::new(Cursor::new(Vec::new()), ps).unwrap();
    for (name, (seq, entries)) in buckets {
        w.begin_bucket(name, *seq).unwrap();
        for (k, v) in entries {
            w.put(k, v).unwrap();
        }
        w.end_bucket().unwrap();
    }
    let (out, summary) = w.finish_in_place(7).unwrap();
    (out.into_inner(), summary)
}

fn entries(n: usize, vlen: usize) -> Entries {
    (0..n)
        .map(|i| (format!("k{i:08}").into_bytes(), vec![(i % 251) as u8; vlen]))
        .collect()
}

#[test]
fn empty_database() {
    let (file, s) = write_db(4096, &BTreeMap::new());
    assert_eq!(s.pages, 4);
    assert_eq!(file.len(), 4 * 4096);
    assert_eq!(s.file_len(), file.len() as u64);
    assert_eq!(s.root_pgid, 3);
    let db = Db::read(&file);
    assert_eq!(db.txids, [7, 6]);
    assert!(db.buckets.is_empty());
    // page 2: the explicit empty freelist
    assert_eq!(
        &file[2 * 4096..2 * 4096 + 16],
        &[2, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0]
    );
}

#[test]
fn inline_threshold_is_page_size_over_four() {
    // 16 + n*(16 + 9 + v) == 1024 exactly: inline; one more value byte: a tree.
    // n = 4: 16 + 4*(25 + v) = 1024 -> v = 227
    let mut b = BTreeMap::new();
    b.insert(b"a".to_vec(), (5, entries(4, 227)));
    let mut big = entries(4, 227);
    big[3].1.push(0);
    b.insert(b"b".to_vec(), (0, big));
    b.insert(b"c".to_vec(), (0, Vec::new()));
    let (file, s) = write_db(4096, &b);
    let db = Db::read(&file);
    assert!(db.buckets[&b"a".to_vec()].1, "a should be inline");
    assert_eq!(db.buckets[&b"a".to_vec()].0, 5, "sequence kept");
    assert!(!db.buckets[&b"b".to_vec()].1, "b should not be inline");
    assert!(db.buckets[&b"c".to_vec()].1, "empty bucket is inline");
    assert_eq!(db.buckets[&b"c".to_vec()].2.len(), 0);
    for (name, (_, e)) in &b {
        assert_eq!(&db.buckets[name].2, e);
    }
    assert_eq!(s.keys, 8);
    assert_eq!(s.buckets, 3);
    // an empty inline bucket value is 32 bytes: find "c" in the root leaf
    let root = s.root_pgid as usize * 4096;
    let c = &file[root + 16 + 2 * 16..root + 16 + 3 * 16];
    assert_eq!(u32_at(c, 12), 32);
}

#[test]
fn overflow_pages_for_large_values() {
    let mut e = entries(3, 100);
    e.insert(1, (b"k00000000x".to_vec(), vec![7u8; 10_000]));
    let mut b = BTreeMap::new();
    b.insert(b"key".to_vec(), (0, e.clone()));
    let (file, _) = write_db(4096, &b);
    let db = Db::read(&file);
    assert_eq!(db.buckets[&b"key".to_vec()].2, e);
    // 16 + 16 + 10 + 10000 bytes -> 3 pages: overflow 2
    assert!(db.pages.values().any(|&(f, ov)| f == FLAG_LEAF && ov == 2));
}

#[test]
fn many_keys_build_three_or_more_levels() {
    let mut b = BTreeMap::new();
    let e = entries(20_000, 3);
    b.insert(b"key".to_vec(), (0, e.clone()));
    b.insert(b"lease".to_vec(), (0, entries(10, 300)));
    let (file, s) = write_db(512, &b);
    let db = Db::read(&file);
    assert_eq!(db.buckets[&b"key".to_vec()].2, e);
    assert!(
        db.heights[&b"key".to_vec()] >= 3,
        "height {}",
        db.heights[&b"key".to_vec()]
    );
    assert_eq!(s.keys, 20_010);
    // Db::read checked that every branch page comes after its children (write order)
    assert!(db.pages.values().filter(|(f, _)| *f == FLAG_BRANCH).count() > 1);
}

#[test]
fn bigger_page_sizes() {
    for ps in [1024u32, 16384, 65536] {
        let mut b = BTreeMap::new();
        b.insert(b"key".to_vec(), (0, entries(5000, 40)));
        let (file, _) = write_db(ps, &b);
        let db = Db::read(&file);
        assert_eq!(db.page_size, ps as usize);
        assert_eq!(db.buckets[&b"key".to_vec()].2.len(), 5000);
    }
}

#[test]
fn misuse_and_bad_input_are_errors() {
    assert!(matches!(
        BoltWriter::new(Vec::new(), 1000),
        Err(WriteError::PageSize(1000))
    ));
    let mut w = BoltWriter::new(Vec::new(), 4096).unwrap();
    assert!(matches!(w.put(b"a", b""), Err(WriteError::Misuse(_))));
    w.begin_bucket(b"b", 0).unwrap();
    w.put(b"k2", b"").unwrap();
    let e = w.put(b"k1", b"").unwrap_err();
    assert!(
        e.to_string().contains("\"k1\" does not sort after \"k2\""),
        "{e}"
    );
    assert!(matches!(
        w.put(b"k2", b""),
        Err(WriteError::KeyOrder { .. })
    ));
    assert!(matches!(w.put(b"", b""), Err(WriteError::BadEntry { .. })));
    w.end_bucket().unwrap();
    assert!(matches!(
        w.begin_bucket(b"a", 0),
        Err(WriteError::BucketOrder { .. })
    ));
    assert!(matches!(
        w.begin_bucket(b"b", 0),
        Err(WriteError::BucketOrder { .. })
    ));
    w.begin_bucket(b"c", 0).unwrap();
    assert!(matches!(w.finish(1), Err(WriteError::Misuse(_))));
    let mut w = BoltWriter::new(Vec::new(), 4096).unwrap();
    w.begin_bucket(b"c", 0).unwrap();
    w.end_bucket().unwrap();
    assert!(matches!(w.finish(0), Err(WriteError::Misuse(_))));
}

#[test]
fn sequential_sink_gets_placeholders_then_meta_pages() {
    let mut w = BoltWriter::new(Vec::new(), 4096).unwrap();
    w.begin_bucket(b"key", 0).unwrap();
    w.put(b"a", b"b").unwrap();
    w.end_bucket().unwrap();
    let (mut out, s) = w.finish(3).unwrap();
    assert_eq!(out.len() as u64, s.file_len());
    assert!(out[..8192].iter().all(|&b| b == 0));
    out[..8192].copy_from_slice(&s.meta_pages);
    let db = Db::read(&out);
    assert_eq!(db.txids, [3, 2]);
}

// ------------------------------------------------------------------ restore diff

fn plan() -> ClusterPlan {
    ClusterPlan::new(
        "default",
        "default=http://localhost:2380",
        "http://localhost:2380",
        "etcd-cluster",
    )
    .unwrap()
}

fn ok(v: &[(&[u8], &[u8])]) -> Vec<Result<(Vec<u8>, Vec<u8>), String>> {
    v.iter()
        .map(|(k, v)| Ok((k.to_vec(), v.to_vec())))
        .collect()
}

#[test]
fn diff_merges_in_key_order() {
    let d = RestoreDiff::new(&plan(), Some((1000, Revision { main: 22, sub: 0 }))).unwrap();
    let meta: Vec<_> = d
        .apply(
            b"meta",
            ok(&[
                (b"confState", b"x"),
                (b"consistent_index", b"old"),
                (b"term", b"old"),
            ])
            .into_iter(),
        )
        .collect::<Result<_, _>>()
        .unwrap();
    let keys: Vec<&[u8]> = meta.iter().map(|(k, _)| k.as_slice()).collect();
    assert_eq!(
        keys,
        [
            &b"confState"[..],
            b"consistent_index",
            b"scheduledCompactRev",
            b"term"
        ]
    );
    assert_eq!(meta[1].1, 1u64.to_be_bytes());
    assert_eq!(meta[2].1, Revision { main: 1022, sub: 0 }.to_key());

    let members: Vec<_> = d
        .apply(
            b"members",
            ok(&[(b"1", b"old"), (b"9", b"old")]).into_iter(),
        )
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        members,
        vec![(
            b"8e9e05c52164694d".to_vec(),
            plan().members[0].json().into_bytes()
        )]
    );
    assert_eq!(
        d.apply(b"members_removed", ok(&[(b"1", b"x")]).into_iter())
            .count(),
        0
    );

    let key: Vec<_> = d
        .apply(
            b"key",
            ok(&[(&Revision { main: 22, sub: 0 }.to_key(), b"v")]).into_iter(),
        )
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(key.len(), 2);
    assert_eq!(
        key[1],
        (Revision { main: 1022, sub: 0 }.to_key(), Vec::new())
    );

    let other = ok(&[(b"a", b"1")]);
    assert_eq!(
        d.apply(b"lease", other.clone().into_iter())
            .collect::<Vec<_>>(),
        other
    );
    // source errors pass through
    let err: Vec<Result<(Vec<u8>, Vec<u8>), String>> = vec![Err("boom".into())];
    assert_eq!(
        d.apply(b"members", err.clone().into_iter()).next(),
        Some(Err("boom".into()))
    );
    assert_eq!(
        d.apply(b"lease", err.into_iter()).next(),
        Some(Err("boom".into()))
    );

    let names = d.buckets([&b"alarm"[..], b"key", b"meta"]);
    let names: Vec<&[u8]> = names.iter().map(Vec::as_slice).collect();
    assert_eq!(
        names,
        [
            &b"alarm"[..],
            b"cluster",
            b"key",
            b"members",
            b"members_removed",
            b"meta"
        ]
    );
}

#[test]
fn bump_flags_and_overflow() {
    assert_eq!(validate_bump_flags(0, false), Ok(None));
    assert_eq!(validate_bump_flags(5, true), Ok(Some(5)));
    assert!(validate_bump_flags(5, false).is_err());
    assert!(validate_bump_flags(0, true).is_err());
    let e = RestoreDiff::new(&plan(), Some((u64::MAX, Revision { main: 1, sub: 0 }))).unwrap_err();
    assert!(matches!(e, DiffError::BumpOverflow { .. }));
    assert_eq!(
        Revision::from_key(&Revision { main: 3, sub: 4 }.to_key()),
        Some(Revision { main: 3, sub: 4 })
    );
    assert_eq!(Revision::from_key(b"short"), None);
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/restore/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// Read an etcd-written bbolt file with the test reader (no page accounting: real files have
/// free pages).
fn logical(file: &[u8]) -> BTreeMap<Vec<u8>, (u64, Entries)> {
    let ps = u32_at(file, 24) as usize;
    let m0 = &file[16..80];
    let m1 = &file[ps + 16..ps + 80];
    let m = if u64_at(m0, 48) >= u64_at(m1, 48) {
        m0
    } else {
        m1
    };
    let mut db = Db {
        page_size: ps,
        pgid: u64_at(m, 40),
        ..Db::default()
    };
    let mut root = Vec::new();
    db.walk(file, u64_at(m, 16), &mut root, 1);
    let mut out = BTreeMap::new();
    for (_, name, value) in root {
        let (broot, seq) = (u64_at(&value, 0), u64_at(&value, 8));
        let mut e = Vec::new();
        if broot == 0 {
            read_elems(&value[16..], 0, &mut e);
        } else {
            db.walk(file, broot, &mut e, 1);
        }
        out.insert(name, (seq, e.into_iter().map(|(_, k, v)| (k, v)).collect()));
    }
    out
}

/// Source snapshot → diff → writer must give the same logical database as etcdutl 3.5.30's
/// restore, plain and with `--bump-revision 1000 --mark-compacted`.
#[test]
fn diff_and_writer_reproduce_etcdutl_restores() {
    let src_file = fixture("source.db");
    let src = logical(&src_file[..src_file.len() - 32]);
    for (want_name, bump) in [("plain.db", None), ("bumped.db", Some(1000u64))] {
        let latest = src[&b"key".to_vec()]
            .1
            .last()
            .and_then(|(k, _)| Revision::from_key(k))
            .unwrap_or_default();
        let diff = RestoreDiff::new(&plan(), bump.map(|b| (b, latest))).unwrap();
        let mut w = BoltWriter::new(Cursor::new(Vec::new()), 4096).unwrap();
        let names: Vec<&[u8]> = src.keys().map(Vec::as_slice).collect();
        for name in diff.buckets(names) {
            let (seq, source) = src.get(&name).cloned().unwrap_or_default();
            w.begin_bucket(&name, seq).unwrap();
            for kv in diff.apply(&name, source.into_iter().map(Ok::<_, String>)) {
                let (k, v) = kv.unwrap();
                w.put(&k, &v).unwrap();
            }
            w.end_bucket().unwrap();
        }
        let (out, _) = w.finish_in_place(2).unwrap();
        let ours = Db::read(out.get_ref());
        let ours: BTreeMap<_, _> = ours
            .buckets
            .into_iter()
            .map(|(n, (s, _, e))| (n, (s, e)))
            .collect();
        let want = logical(&fixture(want_name));
        assert_eq!(
            ours.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "{want_name}: bucket names"
        );
        for (name, w) in &want {
            assert_eq!(
                &ours[name],
                w,
                "{want_name}: bucket {}",
                String::from_utf8_lossy(name)
            );
        }
    }
}

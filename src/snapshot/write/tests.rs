//! Tests for the bbolt writer: structure checked with the test-only reader `testdb`.

use super::testdb::*;
use super::*;
use std::collections::BTreeMap;
use std::io::Cursor;

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

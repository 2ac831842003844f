//! A deliberately tiny, test-only bbolt reader: it walks the tree from the meta root and checks
//! the invariants `tx.Check()` enforces, so the writer's and the restore diff's tests do not
//! depend on the production reader (`snapshot::bolt`).

use super::*;
use std::collections::BTreeMap;

pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

pub fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes(b[o..o + 2].try_into().unwrap())
}
pub fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
pub fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// A parsed database: buckets → (sequence, inline?, entries), plus the structure seen.
#[derive(Default)]
pub struct Db {
    pub page_size: usize,
    pub pgid: u64,
    pub txids: [u64; 2],
    pub buckets: BTreeMap<Vec<u8>, (u64, bool, Entries)>,
    /// page id → (flags, overflow) of every tree page reached.
    pub pages: BTreeMap<u64, (u16, u32)>,
    /// height of each non-inline bucket's tree (1 = a single leaf).
    pub heights: BTreeMap<Vec<u8>, usize>,
    /// Check that children come before their parent (our writer's write order).
    pub ordered: bool,
}

impl Db {
    /// Parse and check: metas valid, every page in [3, pgid) referenced exactly once, keys
    /// strictly ascending, branch keys equal to the first key of their child.
    pub fn read(file: &[u8]) -> Db {
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
    pub fn walk(
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

pub fn read_elems(page: &[u8], _base: usize, out: &mut Vec<(u32, Vec<u8>, Vec<u8>)>) {
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

/// Read an etcd-written bbolt file with the test reader (no page accounting: real files have
/// free pages).
pub fn logical(file: &[u8]) -> BTreeMap<Vec<u8>, (u64, Entries)> {
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

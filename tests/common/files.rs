//! Snapshot files: `etcdctl snapshot save` (with the sha256 trailer), a raw `member/snap/db` (no
//! trailer), byte flips for corruption tests, and a minimal independent bbolt reader that proves a
//! fixture has the structure it claims.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use super::etcd::Etcd;

/// `etcdctl snapshot save` (of the member's own version) into `path`. Checks the result has the
/// 32-byte sha256 trailer (`size % 512 == 32`).
pub fn save_snapshot(etcd: &Etcd, path: &Path) {
    let p = path.to_str().expect("utf-8 path");
    etcd.etcdctl_ok(&["snapshot", "save", p]);
    let len = fs::metadata(path).expect("snapshot file").len();
    assert_eq!(
        len % 512,
        32,
        "etcdctl snapshot save wrote {len} bytes: no sha256 trailer?"
    );
}

/// Stop the member (gracefully) and copy its `member/snap/db` to `dest`: a raw database, no
/// trailer (`size % 512 == 0`).
pub fn copy_raw_db(etcd: &mut Etcd, dest: &Path) {
    etcd.stop();
    let src = etcd.data_dir().join("member/snap/db");
    fs::copy(&src, dest).unwrap_or_else(|e| panic!("copy {}: {e}", src.display()));
}

/// Flip one bit of the byte at `offset` from the end of the file (1 = last byte).
pub fn flip_byte_from_end(path: &Path, offset: u64) {
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open for flip");
    f.seek(SeekFrom::End(-(offset as i64))).expect("seek");
    let mut b = [0u8; 1];
    f.read_exact(&mut b).expect("read");
    b[0] ^= 0x01;
    f.seek(SeekFrom::End(-(offset as i64))).expect("seek");
    std::io::Write::write_all(&mut f, &b).expect("write");
}

/// How a top-level bbolt bucket is stored (see [`bolt_shape`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BucketShape {
    /// Stored inside its parent's leaf (bucket root page id 0), with this many keys.
    Inline { keys: usize },
    /// Its own page tree.
    Pages {
        /// Pages in the tree, counting overflow pages.
        pages: u64,
        /// Branch pages (a tree deeper than one leaf).
        branch_pages: u64,
        /// Pages that spill into overflow pages (elements larger than a page).
        overflowing_pages: u64,
        keys: usize,
    },
}

/// The shape of each top-level bucket of a bbolt file: a minimal, independent reader (spec §5.1
/// to §5.3) used only to prove that test fixtures contain what they claim (overflow pages, inline
/// and non-inline buckets). Panics on anything unexpected; it is not the engine.
pub fn bolt_shape(path: &Path) -> std::collections::BTreeMap<String, BucketShape> {
    let d = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let u16_at = |o: usize| u16::from_le_bytes(d[o..o + 2].try_into().unwrap());
    let u32_at = |o: usize| u32::from_le_bytes(d[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(d[o..o + 8].try_into().unwrap());
    // Meta pages 0 and 1 (page size from meta 0); the one with the larger txid wins.
    let page_size = u32_at(16 + 8) as usize;
    let meta = |pid: usize| {
        let o = pid * page_size + 16;
        assert_eq!(u32_at(o), 0xED0C_DAED, "bbolt magic");
        (u64_at(o + 56), u64_at(o + 16)) // (txid, root pgid)
    };
    let (_, root) = meta(0).max(meta(1));
    let page = |pid: u64| {
        let o = pid as usize * page_size;
        (o, u16_at(o + 8), u16_at(o + 10) as usize, u32_at(o + 12))
    };
    fn walk(
        pid: u64,
        page: &dyn Fn(u64) -> (usize, u16, usize, u32),
        u64_at: &dyn Fn(usize) -> u64,
        acc: &mut (u64, u64, u64, usize),
    ) {
        let (o, flags, count, overflow) = page(pid);
        acc.0 += 1 + overflow as u64;
        acc.2 += u64::from(overflow > 0);
        if flags & 0x01 != 0 {
            acc.1 += 1;
            for i in 0..count {
                walk(u64_at(o + 16 + i * 16 + 8), page, u64_at, acc);
            }
        } else {
            assert!(flags & 0x02 != 0, "page {pid}: flags {flags:#x}");
            acc.3 += count;
        }
    }
    let (o, flags, count, _) = page(root);
    assert!(flags & 0x02 != 0, "root bucket is not a single leaf page");
    let mut out = std::collections::BTreeMap::new();
    for i in 0..count {
        let e = o + 16 + i * 16;
        let (pos, ksize, vsize) = (
            u32_at(e + 4) as usize,
            u32_at(e + 8) as usize,
            u32_at(e + 12),
        );
        let k = &d[e + pos..e + pos + ksize];
        let v = e + pos + ksize;
        let name = String::from_utf8_lossy(k).into_owned();
        let bucket_root = u64_at(v);
        let shape = if bucket_root == 0 {
            assert!(vsize >= 32, "inline bucket {name} too short");
            BucketShape::Inline {
                keys: u16_at(v + 16 + 10) as usize,
            }
        } else {
            let mut acc = (0, 0, 0, 0);
            walk(bucket_root, &page, &u64_at, &mut acc);
            BucketShape::Pages {
                pages: acc.0,
                branch_pages: acc.1,
                overflowing_pages: acc.2,
                keys: acc.3,
            }
        };
        out.insert(name, shape);
    }
    out
}

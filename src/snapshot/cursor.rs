//! A bbolt database read with `pread` — no mmap, so memory stays small whatever the file size —
//! and walked bucket by bucket in key order: the cursor restore uses to stream buckets into the
//! writer.
//!
//! Memory is one node per tree level; every page is visited at most once per walk and the depth is
//! bounded, so a damaged file (a branch pointing at its ancestor) ends in an error, not a loop.
//! Keys are checked to ascend, so a consumer can rely on the order.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use super::bolt::{
    branch_element, discover_page_size, leaf_element, node_pages, select_meta, validate_meta,
    BucketValue, Meta, NodeAt, PageHeader, FLAG_BRANCH, FLAG_LEAF, MAX_DEPTH, MAX_PAGE_SIZE,
    MIN_PAGE_SIZE,
};
use super::SnapshotError;

/// Something a database can be read from at given offsets: a file, or bytes in memory.
pub trait ReadAt: Sync {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize>;

    /// A hint that `[offset, offset + len)` will be read soon (a file starts reading it ahead).
    fn prefetch(&self, _offset: u64, _len: u64) {}
}

impl ReadAt for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        FileExt::read_at(self, buf, offset)
    }

    fn prefetch(&self, offset: u64, len: u64) {
        use std::os::fd::AsRawFd;
        let (Ok(off), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
            return;
        };
        // SAFETY: posix_fadvise only reads its integer arguments; the fd is open for the call's
        // duration. Advisory: the result is ignored.
        unsafe {
            libc::posix_fadvise(self.as_raw_fd(), off, len, libc::POSIX_FADV_WILLNEED);
        }
    }
}

impl ReadAt for [u8] {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.len());
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
}

impl ReadAt for Vec<u8> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        self.as_slice().read_at(buf, offset)
    }
}

impl<T: ReadAt + ?Sized + Send> ReadAt for &T {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        (**self).read_at(buf, offset)
    }

    fn prefetch(&self, offset: u64, len: u64) {
        (**self).prefetch(offset, len)
    }
}

/// Up to `len` bytes at `off`; fewer at the end.
pub fn read_up_to<R: ReadAt + ?Sized>(src: &R, off: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let n = fill(src, &mut buf, off)?;
    buf.truncate(n);
    Ok(buf)
}

/// Reads into all of `buf` unless the source ends first; returns the bytes read.
pub fn fill<R: ReadAt + ?Sized>(src: &R, buf: &mut [u8], off: u64) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match src.read_at(&mut buf[got..], off + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// What a bucket walk calls for each element: `(key, value, is_bucket)`.
pub type Visit<'a> = dyn FnMut(&[u8], &[u8], bool) -> Result<(), SnapshotError> + 'a;

/// What the tree walk calls for each leaf node: `(arena, start, at)`, the node is `arena[start..]`.
type LeafVisit<'a> = dyn FnMut(&mut Vec<u8>, usize, NodeAt) -> Result<(), SnapshotError> + 'a;

/// A top-level bucket of the root bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketInfo {
    pub name: Vec<u8>,
    pub sequence: u64,
    /// Root page id, 0 for an inline bucket.
    pub root: u64,
    /// The inline page bytes when `root == 0`.
    pub inline: Option<Vec<u8>>,
}

/// A bbolt database read with `pread`: bounded memory (one node per tree level), no mmap.
pub struct BoltFile<R: ReadAt = File> {
    file: R,
    path: String,
    meta: Meta,
    /// Pages of the last leaf read: the next node is read with that many pages in one `pread`
    /// (leaves tend to be alike), so most nodes take one system call instead of two.
    leaf_pages: AtomicU64,
}

impl BoltFile<File> {
    /// Open `path`, discover the page size, select and validate the meta. A sha256 trailer, if any, is
    /// ignored (bbolt ignores bytes past the high-water mark).
    pub fn open(path: &Path) -> Result<BoltFile, SnapshotError> {
        let name = path.display().to_string();
        let file = File::open(path).map_err(|source| SnapshotError::Io {
            path: name.clone(),
            source,
        })?;
        Self::from_file(file, &name)
    }

    /// Like `open`, over an already open file; `name` is used in error messages.
    pub fn from_file(file: File, name: &str) -> Result<BoltFile, SnapshotError> {
        let len = file.metadata().map_err(|source| SnapshotError::Io {
            path: name.to_string(),
            source,
        })?;
        BoltFile::from_reader(file, len.len(), name)
    }
}

impl<R: ReadAt> BoltFile<R> {
    /// Over any source of `db_len` bytes (a file, or bytes in memory).
    pub fn from_reader(file: R, db_len: u64, name: &str) -> Result<BoltFile<R>, SnapshotError> {
        let io = |source| SnapshotError::Io {
            path: name.to_string(),
            source,
        };
        let read = |off: u64, len: usize| read_up_to(&file, off, len).map_err(io);
        let page_size = discover_page_size(db_len, read)?;
        if !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&page_size) {
            return Err(SnapshotError::Format(format!(
                "meta: page size {page_size} is out of range"
            )));
        }
        let m0 = Meta::parse(&read(0, 4096)?);
        let m1 = Meta::parse(&read(u64::from(page_size), 4096)?);
        let meta = select_meta(m0, m1)?;
        validate_meta(&meta, page_size, db_len)?;
        Ok(BoltFile {
            file,
            path: name.to_string(),
            meta,
            leaf_pages: AtomicU64::new(1),
        })
    }

    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    pub fn page_size(&self) -> u32 {
        self.meta.page_size
    }

    /// `meta.pgid * pageSize`: what `snapshot status` calls the total size.
    pub fn size(&self) -> u64 {
        self.meta.pgid * u64::from(self.meta.page_size)
    }

    fn io(&self, source: std::io::Error) -> SnapshotError {
        SnapshotError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// The whole node (header page plus overflow pages) at page `id`, fast-checked.
    pub fn read_node(&self, id: u64) -> Result<Vec<u8>, SnapshotError> {
        let mut buf = Vec::new();
        self.read_node_into(id, &mut buf)?;
        Ok(buf)
    }

    /// [`read_node`](Self::read_node), appended to `buf` (which keeps its capacity between calls:
    /// no allocation per node). On error `buf` is left as it was.
    pub fn read_node_into(&self, id: u64, buf: &mut Vec<u8>) -> Result<(), SnapshotError> {
        let start = buf.len();
        let r = self.read_node_at_end(id, buf, start);
        if r.is_err() {
            buf.truncate(start);
        }
        r
    }

    fn read_node_at_end(
        &self,
        id: u64,
        buf: &mut Vec<u8>,
        start: usize,
    ) -> Result<(), SnapshotError> {
        let ps = u64::from(self.meta.page_size);
        let fmt = SnapshotError::Format;
        if id >= self.meta.pgid {
            return Err(fmt(format!(
                "page {id}: out of bounds: high-water mark {}",
                self.meta.pgid
            )));
        }
        // Read as many pages as the last leaf had (at most 16, within the high-water mark), then
        // what the header says is missing, if anything; extra pages are dropped.
        let guess = self
            .leaf_pages
            .load(Ordering::Relaxed)
            .clamp(1, 16)
            .min(self.meta.pgid - id);
        buf.resize(start + (guess * ps) as usize, 0);
        self.read_exact(&mut buf[start..], id * ps)?;
        let h =
            PageHeader::parse(&buf[start..]).ok_or_else(|| fmt(format!("page {id}: truncated")))?;
        h.fast_check(id)
            .map_err(|e| fmt(format!("page {id}: {e}")))?;
        let pages = node_pages(&h, self.meta.pgid).map_err(fmt)?;
        let total =
            usize::try_from(pages * ps).map_err(|_| fmt(format!("page {id}: node too large")))?;
        if pages > guess {
            buf.resize(start + total, 0);
            self.read_exact(&mut buf[start + (guess * ps) as usize..], (id + guess) * ps)?;
        } else {
            buf.truncate(start + total);
        }
        if h.flags == FLAG_LEAF {
            self.leaf_pages.store(pages, Ordering::Relaxed);
        }
        Ok(())
    }

    fn read_exact(&self, buf: &mut [u8], off: u64) -> Result<(), SnapshotError> {
        match fill(&self.file, buf, off) {
            Ok(n) if n == buf.len() => Ok(()),
            Ok(_) => Err(SnapshotError::Format(format!(
                "{}: the file ends inside the page at byte {off}",
                self.path
            ))),
            Err(e) => Err(self.io(e)),
        }
    }

    /// The top-level buckets, in key order. Every element of the root bucket must be a bucket.
    pub fn buckets(&self) -> Result<Vec<BucketInfo>, SnapshotError> {
        let mut out = Vec::new();
        self.walk(self.meta.root, None, &mut |k, v, is_bucket| {
            if !is_bucket {
                return Err(SnapshotError::Format(format!(
                    "root bucket: key {:?} is not a bucket",
                    String::from_utf8_lossy(k)
                )));
            }
            let b = BucketValue::parse(v).map_err(|e| {
                SnapshotError::Format(format!("bucket {:?}: {e}", String::from_utf8_lossy(k)))
            })?;
            out.push(BucketInfo {
                name: k.to_vec(),
                sequence: b.sequence,
                root: b.root,
                inline: b.inline.map(<[u8]>::to_vec),
            });
            Ok(())
        })?;
        Ok(out)
    }

    /// Calls `f(key, value, is_bucket)` for every element of `bucket`, in key order, streaming one
    /// node per tree level. For a nested bucket `value` is its raw bucket value. Keys are checked to
    /// be strictly ascending, so a consumer may rely on the order.
    pub fn for_each_in(
        &self,
        bucket: &BucketInfo,
        mut f: impl FnMut(&[u8], &[u8], bool) -> Result<(), SnapshotError>,
    ) -> Result<(), SnapshotError> {
        self.walk(
            bucket.root,
            bucket.inline.as_deref().map(|p| (p, &bucket.name[..])),
            &mut f,
        )
    }

    /// Like [`for_each_in`](Self::for_each_in) but without copying: every leaf node of `bucket`
    /// is appended to `arena`, then `f(arena, entries)` is called with the node's elements as
    /// offsets into `arena` (valid until `f` changes the arena; `f` may take or clear it). Keys
    /// are checked to be strictly ascending, as in `for_each_in`.
    pub fn for_each_leaf_in(
        &self,
        bucket: &BucketInfo,
        arena: &mut Vec<u8>,
        mut f: impl FnMut(&mut Vec<u8>, &[ArenaEntry]) -> Result<(), SnapshotError>,
    ) -> Result<(), SnapshotError> {
        let mut order = KeyOrder::default();
        let mut entries: Vec<ArenaEntry> = Vec::new();
        self.walk_nodes(
            bucket.root,
            bucket.inline.as_deref().map(|p| (p, &bucket.name[..])),
            arena,
            &mut |arena, start, at| {
                entries.clear();
                let node = &arena[start..];
                let base = node.as_ptr() as usize;
                let count = PageHeader::parse(node).map_or(0, |h| h.count as usize);
                for i in 0..count {
                    let e = leaf_element(node, i, at).map_err(SnapshotError::Format)?;
                    order.check(e.key, at, i)?;
                    entries.push(ArenaEntry {
                        key: start + (e.key.as_ptr() as usize - base),
                        klen: e.key.len(),
                        value: start + (e.value.as_ptr() as usize - base),
                        vlen: e.value.len(),
                        is_bucket: e.is_bucket(),
                    });
                }
                f(arena, &entries)
            },
        )
    }

    fn walk(
        &self,
        root: u64,
        inline: Option<(&[u8], &[u8])>,
        f: &mut Visit,
    ) -> Result<(), SnapshotError> {
        let mut order = KeyOrder::default();
        let mut arena = Vec::new();
        self.walk_nodes(root, inline, &mut arena, &mut |arena, start, at| {
            let node = &arena[start..];
            let count = PageHeader::parse(node).map_or(0, |h| h.count as usize);
            for i in 0..count {
                let e = leaf_element(node, i, at).map_err(SnapshotError::Format)?;
                order.check(e.key, at, i)?;
                f(e.key, e.value, e.is_bucket())?;
            }
            arena.truncate(start);
            Ok(())
        })
    }

    /// The tree walk: every leaf node, in key order, is appended to `arena` and handed to
    /// `leaf(arena, start, at)` (the node is `arena[start..]`). Branch nodes are kept on a stack.
    fn walk_nodes(
        &self,
        root: u64,
        inline: Option<(&[u8], &[u8])>,
        arena: &mut Vec<u8>,
        leaf: &mut LeafVisit,
    ) -> Result<(), SnapshotError> {
        if let Some((page, name)) = inline {
            let start = arena.len();
            arena.extend_from_slice(page);
            return leaf(arena, start, NodeAt::Inline(name));
        }
        // Pages visited in this walk, one bit each (pgid is bounded by the file size).
        let mut visited = vec![0u64; usize::try_from(self.meta.pgid / 64 + 1).unwrap_or(0)];
        // Stack of (node bytes, page id, next child index) for branch nodes being walked.
        let mut stack: Vec<(Vec<u8>, u64, usize)> = Vec::new();
        let mut next = Some(root);
        loop {
            if let Some(id) = next.take() {
                let (word, bit) = ((id / 64) as usize, 1u64 << (id % 64));
                if let Some(w) = visited.get_mut(word) {
                    if *w & bit != 0 {
                        return Err(SnapshotError::Format(format!(
                            "page {id}: reached twice in one bucket (a loop in the tree)"
                        )));
                    }
                    *w |= bit;
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(SnapshotError::Format(format!(
                        "page {id}: tree deeper than {MAX_DEPTH} levels"
                    )));
                }
                let start = arena.len();
                self.read_node_into(id, arena)?;
                let flags = PageHeader::parse(&arena[start..]).map_or(0, |h| h.flags);
                match flags {
                    FLAG_LEAF => leaf(arena, start, NodeAt::Page(id))?,
                    FLAG_BRANCH => {
                        stack.push((arena[start..].to_vec(), id, 0));
                        arena.truncate(start);
                    }
                    _ => {
                        arena.truncate(start);
                        return Err(SnapshotError::Format(format!(
                            "page {id}: invalid type: {} in a bucket tree",
                            super::bolt::page_type_name(flags)
                        )));
                    }
                }
            }
            let Some((node, id, idx)) = stack.last_mut() else {
                return Ok(());
            };
            let count = PageHeader::parse(node).map_or(0, |h| h.count as usize);
            if *idx >= count {
                stack.pop();
                continue;
            }
            let e = branch_element(node, *idx, NodeAt::Page(*id)).map_err(SnapshotError::Format)?;
            *idx += 1;
            next = Some(e.child);
        }
    }
}

/// A leaf element appended to an arena by [`BoltFile::for_each_leaf_in`]: `arena[key..key + klen]`
/// and `arena[value..value + vlen]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArenaEntry {
    pub key: usize,
    pub klen: usize,
    pub value: usize,
    pub vlen: usize,
    pub is_bucket: bool,
}

/// Checks that keys ascend strictly across a walk (one reused buffer, no allocation per key).
#[derive(Default)]
struct KeyOrder {
    last: Vec<u8>,
    seen: bool,
}

impl KeyOrder {
    fn check(&mut self, key: &[u8], at: NodeAt, i: usize) -> Result<(), SnapshotError> {
        if self.seen && self.last.as_slice() >= key {
            return Err(SnapshotError::Format(format!(
                "{at}: element {i} key is not above the previous key"
            )));
        }
        self.seen = true;
        self.last.clear();
        self.last.extend_from_slice(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::bolt::{FLAG_META, NO_FREELIST};
    use crate::snapshot::summary::tests::{branch_node, leaf_node};

    /// Pages: 0, 1 meta; 2 root leaf with bucket "b" rooted at 3; 3 branch; 4 and 5 leaves.
    fn db(branch: &[(&[u8], u64)]) -> Vec<u8> {
        let mut bucket = vec![0u8; 16];
        bucket[0] = 3;
        let pages = [
            leaf_node(2, &[(1, b"b", &bucket)]),
            branch_node(3, branch),
            leaf_node(4, &[(0, b"a", b"1"), (0, b"b", b"2")]),
            leaf_node(5, &[(0, b"m", b"3")]),
        ];
        let mut file = vec![0u8; 6 * 4096];
        for id in 0..2u64 {
            let m = Meta {
                page_size: 4096,
                flags: 0,
                root: 2,
                root_sequence: 0,
                freelist: NO_FREELIST,
                pgid: 6,
                txid: 9 + id,
            };
            let p = id as usize * 4096;
            file[p..p + 8].copy_from_slice(&id.to_le_bytes());
            file[p + 8..p + 10].copy_from_slice(&FLAG_META.to_le_bytes());
            file[p + 16..p + 80].copy_from_slice(&m.encode());
        }
        for (i, page) in pages.iter().enumerate() {
            let p = (i + 2) * 4096;
            file[p..p + page.len()].copy_from_slice(page);
        }
        file
    }

    type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

    fn collect(file: &[u8]) -> Result<Pairs, SnapshotError> {
        let db = BoltFile::from_reader(file, file.len() as u64, "t")?;
        assert_eq!(db.meta().txid, 10, "the meta with the higher txid");
        let buckets = db.buckets()?;
        assert_eq!(buckets[0].name, b"b");
        let mut out = Vec::new();
        db.for_each_in(&buckets[0], |k, v, _| {
            out.push((k.to_vec(), v.to_vec()));
            Ok(())
        })?;
        Ok(out)
    }

    #[test]
    fn walks_in_key_order() {
        let got = collect(&db(&[(b"a", 4), (b"m", 5)])).unwrap();
        let keys: Vec<&[u8]> = got.iter().map(|(k, _)| &k[..]).collect();
        assert_eq!(keys, vec![&b"a"[..], b"b", b"m"]);
    }

    #[test]
    fn loops_disorder_and_bad_pages_are_errors() {
        let e = collect(&db(&[(b"a", 4), (b"m", 3)]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "page 3: reached twice in one bucket (a loop in the tree)"
        );
        let e = collect(&db(&[(b"m", 5), (b"a", 4)]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not above the previous key"), "{e}");
        let e = collect(&db(&[(b"a", 4), (b"m", 9)]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("page 9: out of bounds"), "{e}");
        let e = collect(&db(&[(b"a", 4), (b"m", 1)]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("page 1: invalid type: meta"), "{e}");
    }
}

//! The compacting bbolt writer used by restore (spec §5.3, §5.5).
//!
//! `BoltWriter` streams a fresh, fully compacted bbolt file to any `impl Write`: the caller feeds
//! buckets in name order and each bucket's keys in ascending order; leaf pages are written as soon
//! as they fill and branch pages as soon as their children are all written, so memory stays at a
//! few pages per tree level whatever the database size. Page ids are allocated in write order from
//! 3 (page 2 is an explicit empty freelist, the validated variant), so the output is sequential.
//! The only thing that cannot be written in order is the pair of meta pages at the start: the
//! writer emits two zero pages as placeholders and `finish` returns the real ones
//! (`WriteSummary::meta_pages`) for the caller to write at offset 0 — or use
//! `finish_in_place` on a seekable sink. The file is then exactly `pages * page_size` long.
//!
//! The writer knows nothing about etcd; what restore changes in the buckets is
//! `crate::restore::diff`.

use std::io::{Seek, SeekFrom, Write};

const MAGIC: u32 = 0xED0C_DAED;
const VERSION: u32 = 2;
const PAGE_HEADER: usize = 16;
const ELEMENT: usize = 16;
const BUCKET_HEADER: usize = 16;
const FLAG_BRANCH: u16 = 0x01;
const FLAG_LEAF: u16 = 0x02;
const FLAG_META: u16 = 0x04;
const FLAG_FREELIST: u16 = 0x10;
const BUCKET_LEAF_FLAG: u32 = 0x01;
/// bbolt's `MaxKeySize` and `MaxValueSize`.
pub const MAX_KEY_SIZE: usize = 32768;
pub const MAX_VALUE_SIZE: usize = (1 << 31) - 2;
/// Branch and leaf pages need `count < 0xFFFF`.
const MAX_COUNT: usize = 0xFFFE;
/// The first page id available for data: 0 and 1 are the metas, 2 the freelist.
const FIRST_DATA_PAGE: u64 = 3;
const FREELIST_PAGE: u64 = 2;

/// The page size etcd uses on x86-64 (bbolt's default, `os.Getpagesize()`).
pub const DEFAULT_PAGE_SIZE: u32 = 4096;

/// Why the database could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("writing the restored database: {0}")]
    Io(#[from] std::io::Error),
    #[error("bucket {bucket}: key {key} does not sort after {prev}; the source must be read in key order (is the snapshot corrupt?)")]
    KeyOrder {
        bucket: String,
        key: String,
        prev: String,
    },
    #[error(
        "bucket {name} does not sort after bucket {prev}; buckets must be written in name order"
    )]
    BucketOrder { name: String, prev: String },
    #[error("bucket {bucket}: {what}")]
    BadEntry { bucket: String, what: String },
    #[error("unsupported page size {0}: bbolt page sizes are powers of two from 512 to 65536")]
    PageSize(u32),
    /// A programming error in the caller (e.g. `put` outside a bucket).
    #[error("bbolt writer misuse: {0}")]
    Misuse(&'static str),
}

/// What `finish` produced.
#[derive(Debug, Clone)]
pub struct WriteSummary {
    pub page_size: u32,
    /// The high-water mark `meta.pgid`: the file is `pages * page_size` bytes.
    pub pages: u64,
    /// Page id of the root bucket's root node.
    pub root_pgid: u64,
    pub txid: u64,
    pub buckets: u64,
    /// Key/value pairs across all buckets (etcd 3.4/3.5 `snapshot status` "total keys").
    pub keys: u64,
    /// The two meta pages (page 0 with txid T, page 1 with txid T-1): write them at offset 0,
    /// over the placeholders. `finish_in_place` does that for seekable sinks.
    pub meta_pages: Vec<u8>,
}

impl WriteSummary {
    /// `pages * page_size`: the exact file length.
    pub fn file_len(&self) -> u64 {
        self.pages * u64::from(self.page_size)
    }
}

/// Where the writer's pages go: a `Write`, which may lend a buffer of its own so that nodes are
/// encoded straight into it (one copy fewer; `fsutil::DirectWriter` does). Without a lent buffer
/// the writer gathers pages itself and calls `write` with ~1 MiB at a time.
pub trait PageWrite: Write {
    /// A buffer to append encoded pages to; what is in it when the writer is done (or when
    /// `ship_lent` takes it) is the sink's to write.
    fn lent(&mut self) -> Option<&mut Vec<u8>> {
        None
    }

    /// Called after each node appended to the lent buffer: the sink may write out what it holds.
    fn ship_lent(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl PageWrite for Vec<u8> {}
impl PageWrite for std::io::Cursor<Vec<u8>> {}
impl PageWrite for std::fs::File {}
impl<W: Write> PageWrite for std::io::BufWriter<W> {}

/// Streams a compacted bbolt database to `out`. See the module doc for the protocol.
pub struct BoltWriter<W: PageWrite> {
    sink: PageSink<W>,
    root: TreeBuilder,
    open: Option<OpenBucket>,
    last_bucket: Option<Vec<u8>>,
    buckets: u64,
    keys: u64,
}

/// Nodes are encoded straight into `buf`, which is written out in large `write` calls once it
/// holds [`SINK_FLUSH`] bytes: no per-node allocation and no second copy through a `BufWriter`.
struct PageSink<W: PageWrite> {
    out: W,
    buf: Vec<u8>,
    page_size: usize,
    next_pgid: u64,
}

/// Bytes gathered before a `write` call.
const SINK_FLUSH: usize = 1 << 20;

impl<W: PageWrite> PageSink<W> {
    /// Where the next node is encoded: the sink's lent buffer, or ours.
    fn buf(&mut self) -> &mut Vec<u8> {
        match self.out.lent() {
            Some(b) => b,
            None => &mut self.buf,
        }
    }

    /// Write out what is buffered once it reaches [`SINK_FLUSH`] bytes.
    fn maybe_flush(&mut self) -> std::io::Result<()> {
        if self.out.lent().is_some() {
            return self.out.ship_lent();
        }
        if self.buf.len() >= SINK_FLUSH {
            self.flush_buf()?;
        }
        Ok(())
    }

    fn flush_buf(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            self.out.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }
}

struct OpenBucket {
    name: Vec<u8>,
    sequence: u64,
    last_key: Option<Vec<u8>>,
    /// Entries held back while the bucket may still be inline; `inline_size` is
    /// `16 + Σ(16 + |k| + |v|)` over them.
    held: Vec<(Vec<u8>, Vec<u8>)>,
    inline_size: usize,
    tree: Option<TreeBuilder>,
}

impl<W: PageWrite> BoltWriter<W> {
    /// Start a database: writes the two placeholder meta pages and the empty freelist page.
    pub fn new(out: W, page_size: u32) -> Result<Self, WriteError> {
        if !page_size.is_power_of_two() || !(512..=65536).contains(&page_size) {
            return Err(WriteError::PageSize(page_size));
        }
        let ps = page_size as usize;
        let mut sink = PageSink {
            out,
            buf: Vec::new(),
            page_size: ps,
            next_pgid: FIRST_DATA_PAGE,
        };
        if sink.out.lent().is_none() {
            sink.buf.reserve(SINK_FLUSH + 64 * 1024);
        }
        let buf = sink.buf();
        let at = buf.len();
        buf.resize(at + 3 * ps, 0);
        put_page_header(&mut buf[at + 2 * ps..], FREELIST_PAGE, FLAG_FREELIST, 0, 0);
        Ok(BoltWriter {
            sink,
            root: TreeBuilder::default(),
            open: None,
            last_bucket: None,
            buckets: 0,
            keys: 0,
        })
    }

    /// Open the next top-level bucket. Names must be non-empty and strictly ascending.
    pub fn begin_bucket(&mut self, name: &[u8], sequence: u64) -> Result<(), WriteError> {
        if self.open.is_some() {
            return Err(WriteError::Misuse("begin_bucket while a bucket is open"));
        }
        if name.is_empty() || name.len() > MAX_KEY_SIZE {
            return Err(WriteError::BadEntry {
                bucket: show(name),
                what: format!(
                    "bucket name length {} is not in 1..={MAX_KEY_SIZE}",
                    name.len()
                ),
            });
        }
        if let Some(prev) = &self.last_bucket {
            if name <= prev.as_slice() {
                return Err(WriteError::BucketOrder {
                    name: show(name),
                    prev: show(prev),
                });
            }
        }
        self.last_bucket = Some(name.to_vec());
        self.open = Some(OpenBucket {
            name: name.to_vec(),
            sequence,
            last_key: None,
            held: Vec::new(),
            inline_size: PAGE_HEADER,
            tree: None,
        });
        Ok(())
    }

    /// Add a key/value pair to the open bucket. Keys must be non-empty and strictly ascending.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), WriteError> {
        let b = self
            .open
            .as_mut()
            .ok_or(WriteError::Misuse("put outside a bucket"))?;
        if key.is_empty() || key.len() > MAX_KEY_SIZE {
            return Err(WriteError::BadEntry {
                bucket: show(&b.name),
                what: format!("key length {} is not in 1..={MAX_KEY_SIZE}", key.len()),
            });
        }
        if value.len() > MAX_VALUE_SIZE {
            return Err(WriteError::BadEntry {
                bucket: show(&b.name),
                what: format!(
                    "value of key {} is larger than {MAX_VALUE_SIZE} bytes",
                    show(key)
                ),
            });
        }
        if let Some(prev) = &b.last_key {
            if key <= prev.as_slice() {
                return Err(WriteError::KeyOrder {
                    bucket: show(&b.name),
                    key: show(key),
                    prev: show(prev),
                });
            }
        }
        match &mut b.last_key {
            Some(last) => {
                last.clear();
                last.extend_from_slice(key);
            }
            None => b.last_key = Some(key.to_vec()),
        }
        self.keys += 1;
        if let Some(tree) = &mut b.tree {
            return tree.push(&mut self.sink, 0, 0, key, value);
        }
        b.inline_size += ELEMENT + key.len() + value.len();
        b.held.push((key.to_vec(), value.to_vec()));
        if b.inline_size > self.sink.page_size / 4 {
            // Too big to be inline: from now on it is a tree.
            let mut tree = TreeBuilder::default();
            for (k, v) in b.held.drain(..) {
                tree.push(&mut self.sink, 0, 0, &k, &v)?;
            }
            b.tree = Some(tree);
        }
        Ok(())
    }

    /// Close the open bucket: writes its remaining pages and records it in the root bucket.
    pub fn end_bucket(&mut self) -> Result<(), WriteError> {
        let b = self
            .open
            .take()
            .ok_or(WriteError::Misuse("end_bucket without begin_bucket"))?;
        let mut value = Vec::with_capacity(BUCKET_HEADER + b.inline_size);
        match b.tree {
            Some(tree) => {
                let root = tree.finish(&mut self.sink)?;
                value.extend_from_slice(&root.to_le_bytes());
                value.extend_from_slice(&b.sequence.to_le_bytes());
            }
            None => {
                // Inline: bucket header {root 0, sequence} + a leaf page image with id 0.
                value.extend_from_slice(&0u64.to_le_bytes());
                value.extend_from_slice(&b.sequence.to_le_bytes());
                let elems: Vec<Elem<'_>> = b
                    .held
                    .iter()
                    .map(|(k, v)| Elem {
                        flags: 0,
                        key: k,
                        value: v,
                    })
                    .collect();
                value.extend_from_slice(&encode_node(0, FLAG_LEAF, &elems, 1, b.inline_size)?);
            }
        }
        self.buckets += 1;
        self.root
            .push(&mut self.sink, 0, BUCKET_LEAF_FLAG, &b.name, &value)
    }

    /// Write the root bucket's tree and return the summary with the meta pages (txid `T` on
    /// page 0, `T-1` on page 1). The caller must write `meta_pages` at offset 0.
    pub fn finish(mut self, txid: u64) -> Result<(W, WriteSummary), WriteError> {
        if self.open.is_some() {
            return Err(WriteError::Misuse("finish while a bucket is open"));
        }
        if txid == 0 {
            return Err(WriteError::Misuse(
                "txid must be at least 1 (meta page 1 gets txid-1)",
            ));
        }
        let root = std::mem::take(&mut self.root);
        let root_pgid = root.finish(&mut self.sink)?;
        let ps = self.sink.page_size;
        let pages = self.sink.next_pgid;
        let mut meta_pages = vec![0u8; 2 * ps];
        for (i, tx) in [(0usize, txid), (1, txid - 1)] {
            let page = &mut meta_pages[i * ps..(i + 1) * ps];
            put_page_header(page, i as u64, FLAG_META, 0, 0);
            let m = &mut page[PAGE_HEADER..PAGE_HEADER + 64];
            m[0..4].copy_from_slice(&MAGIC.to_le_bytes());
            m[4..8].copy_from_slice(&VERSION.to_le_bytes());
            m[8..12].copy_from_slice(&(ps as u32).to_le_bytes());
            m[12..16].copy_from_slice(&0u32.to_le_bytes());
            m[16..24].copy_from_slice(&root_pgid.to_le_bytes());
            m[24..32].copy_from_slice(&0u64.to_le_bytes());
            m[32..40].copy_from_slice(&FREELIST_PAGE.to_le_bytes());
            m[40..48].copy_from_slice(&pages.to_le_bytes());
            m[48..56].copy_from_slice(&tx.to_le_bytes());
            let sum = fnv1a64(&m[0..56]);
            m[56..64].copy_from_slice(&sum.to_le_bytes());
        }
        self.sink.flush_buf()?;
        self.sink.out.flush()?;
        Ok((
            self.sink.out,
            WriteSummary {
                page_size: ps as u32,
                pages,
                root_pgid,
                txid,
                buckets: self.buckets,
                keys: self.keys,
                meta_pages,
            },
        ))
    }
}

impl<W: PageWrite + Seek> BoltWriter<W> {
    /// `finish`, then write the meta pages at offset 0 of the (seekable) sink.
    pub fn finish_in_place(self, txid: u64) -> Result<(W, WriteSummary), WriteError> {
        let (mut out, summary) = self.finish(txid)?;
        out.seek(SeekFrom::Start(0))?;
        out.write_all(&summary.meta_pages)?;
        out.seek(SeekFrom::End(0))?;
        out.flush()?;
        Ok((out, summary))
    }
}

/// One element of a node being built: a leaf k/v (or sub-bucket) or a branch (key, child pgid).
struct Elem<'a> {
    flags: u32,
    key: &'a [u8],
    value: &'a [u8],
}

/// One B+tree, built bottom-up while streaming. `levels[0]` is the leaf being filled, `levels[i]`
/// the branch being filled at height i; a node is written as soon as the next element would not
/// fit, and its (first key, pgid) goes up one level.
/// Largest node, in pages, built from several big elements (a single element may be larger).
const MAX_NODE_PAGES: usize = 16;

#[derive(Default)]
struct TreeBuilder {
    levels: Vec<Pending>,
}

/// The node being filled at one level: element sizes plus their bytes laid out exactly as in the
/// node's data area (leaf: key then value, per element; branch: the keys), so writing the node is
/// one header, one element table and one copy of `data`.
struct Pending {
    elems: Vec<PendingElem>,
    data: Vec<u8>,
    /// `16 + Σ element sizes`.
    size: usize,
}

#[derive(Clone, Copy)]
struct PendingElem {
    flags: u32,
    ksize: usize,
    /// Value length (leaves) or child pgid (branches).
    value: u64,
}

impl Default for Pending {
    fn default() -> Self {
        Pending {
            elems: Vec::new(),
            data: Vec::new(),
            size: PAGE_HEADER,
        }
    }
}

impl Pending {
    fn elem_size(level: usize, key: &[u8], value: &[u8]) -> usize {
        ELEMENT + key.len() + if level == 0 { value.len() } else { 0 }
    }
}

impl TreeBuilder {
    fn push<W: PageWrite>(
        &mut self,
        sink: &mut PageSink<W>,
        level: usize,
        flags: u32,
        key: &[u8],
        value: &[u8],
    ) -> Result<(), WriteError> {
        if self.levels.len() <= level {
            self.levels.resize_with(level + 1, Pending::default);
        }
        let esize = Pending::elem_size(level, key, value);
        let full = {
            let p = &self.levels[level];
            let ps = sink.page_size;
            let total = p.size + esize;
            // Big values: a leaf that spans several pages anyway keeps taking elements (up to
            // MAX_NODE_PAGES pages), so each 5 KiB value does not waste most of a second page.
            let overflowing = level == 0 && (p.size > ps || esize > ps / 2);
            let limit = if overflowing { ps * MAX_NODE_PAGES } else { ps };
            !p.elems.is_empty() && (total > limit || p.elems.len() >= MAX_COUNT)
        };
        if full {
            self.emit(sink, level)?;
        }
        let p = &mut self.levels[level];
        p.data.extend_from_slice(key);
        let value = if level == 0 {
            p.data.extend_from_slice(value);
            value.len() as u64
        } else {
            let mut b = [0u8; 8];
            b.copy_from_slice(value);
            u64::from_le_bytes(b)
        };
        p.elems.push(PendingElem {
            flags,
            ksize: key.len(),
            value,
        });
        p.size += esize;
        Ok(())
    }

    /// Write the pending node at `level` and push its (first key, pgid) one level up.
    fn emit<W: PageWrite>(
        &mut self,
        sink: &mut PageSink<W>,
        level: usize,
    ) -> Result<(), WriteError> {
        let (pgid, first_key) = self.write_level(sink, level)?;
        self.push(sink, level + 1, 0, &first_key, &pgid.to_le_bytes())
    }

    fn write_level<W: PageWrite>(
        &mut self,
        sink: &mut PageSink<W>,
        level: usize,
    ) -> Result<(u64, Vec<u8>), WriteError> {
        let p = &mut self.levels[level];
        let flags = if level == 0 { FLAG_LEAF } else { FLAG_BRANCH };
        let npages = p.size.div_ceil(sink.page_size).max(1);
        let pgid = sink.next_pgid;
        let len = npages * sink.page_size;
        encode_pending(sink.buf(), pgid, flags, p, npages, len)?;
        sink.next_pgid += npages as u64;
        let first_key = p
            .elems
            .first()
            .map(|e| p.data[..e.ksize].to_vec())
            .unwrap_or_default();
        p.elems.clear();
        p.data.clear();
        p.size = PAGE_HEADER;
        sink.maybe_flush()?;
        Ok((pgid, first_key))
    }

    /// Flush every level bottom-up and return the root page id. An empty tree is one empty leaf.
    fn finish<W: PageWrite>(mut self, sink: &mut PageSink<W>) -> Result<u64, WriteError> {
        if self.levels.is_empty() {
            self.levels.push(Pending::default());
        }
        let mut level = 0;
        loop {
            let top = level + 1 == self.levels.len();
            if top {
                let p = &self.levels[level];
                if level > 0 && p.elems.len() == 1 {
                    // A single child: it is the root.
                    return Ok(p.elems[0].value);
                }
                return Ok(self.write_level(sink, level)?.0);
            }
            if !self.levels[level].elems.is_empty() {
                self.emit(sink, level)?;
            }
            level += 1;
        }
    }
}

/// Append the node image of `p` to `out`: header, element table, `p.data`, zero padding to `len`
/// bytes (`npages` pages). Byte-identical to [`encode_node`] over the same elements.
fn encode_pending(
    out: &mut Vec<u8>,
    pgid: u64,
    flags: u16,
    p: &Pending,
    npages: usize,
    len: usize,
) -> Result<(), WriteError> {
    let too_big = || WriteError::Misuse("node larger than 4 GiB");
    let count =
        u16::try_from(p.elems.len()).map_err(|_| WriteError::Misuse("too many elements"))?;
    let overflow = u32::try_from(npages - 1).map_err(|_| too_big())?;
    let table = PAGE_HEADER + ELEMENT * p.elems.len();
    if table + p.data.len() > len {
        return Err(WriteError::Misuse("node size miscomputed"));
    }
    out.reserve(len);
    let start = out.len();
    let mut header = [0u8; PAGE_HEADER];
    put_page_header(&mut header, pgid, flags, count, overflow);
    out.extend_from_slice(&header);
    let mut data = table;
    for (i, e) in p.elems.iter().enumerate() {
        let at = PAGE_HEADER + ELEMENT * i;
        let pos = u32::try_from(data - at).map_err(|_| too_big())?;
        let ksize = u32::try_from(e.ksize).map_err(|_| too_big())?;
        let mut el = [0u8; ELEMENT];
        if flags == FLAG_LEAF {
            let vsize = u32::try_from(e.value).map_err(|_| too_big())?;
            el[0..4].copy_from_slice(&e.flags.to_le_bytes());
            el[4..8].copy_from_slice(&pos.to_le_bytes());
            el[8..12].copy_from_slice(&ksize.to_le_bytes());
            el[12..16].copy_from_slice(&vsize.to_le_bytes());
            data += e.ksize + vsize as usize;
        } else {
            el[0..4].copy_from_slice(&pos.to_le_bytes());
            el[4..8].copy_from_slice(&ksize.to_le_bytes());
            el[8..16].copy_from_slice(&e.value.to_le_bytes());
            data += e.ksize;
        }
        out.extend_from_slice(&el);
    }
    out.extend_from_slice(&p.data);
    out.resize(start + len, 0);
    Ok(())
}

/// A leaf or branch node image: header, elements, then the key/value data, zero-padded to `len`
/// bytes (`npages` pages; `overflow = npages - 1`). For branch elements `value` is the child pgid.
fn encode_node(
    pgid: u64,
    flags: u16,
    elems: &[Elem<'_>],
    npages: usize,
    len: usize,
) -> Result<Vec<u8>, WriteError> {
    let too_big = || WriteError::Misuse("node larger than 4 GiB");
    let count = u16::try_from(elems.len()).map_err(|_| WriteError::Misuse("too many elements"))?;
    let overflow = u32::try_from(npages - 1).map_err(|_| too_big())?;
    let mut buf = vec![0u8; len];
    put_page_header(&mut buf, pgid, flags, count, overflow);
    let mut data = PAGE_HEADER + ELEMENT * elems.len();
    for (i, e) in elems.iter().enumerate() {
        let at = PAGE_HEADER + ELEMENT * i;
        let pos = u32::try_from(data - at).map_err(|_| too_big())?;
        let ksize = u32::try_from(e.key.len()).map_err(|_| too_big())?;
        let el = &mut buf[at..at + ELEMENT];
        let payload: &[u8] = if flags == FLAG_LEAF {
            let vsize = u32::try_from(e.value.len()).map_err(|_| too_big())?;
            el[0..4].copy_from_slice(&e.flags.to_le_bytes());
            el[4..8].copy_from_slice(&pos.to_le_bytes());
            el[8..12].copy_from_slice(&ksize.to_le_bytes());
            el[12..16].copy_from_slice(&vsize.to_le_bytes());
            e.value
        } else {
            el[0..4].copy_from_slice(&pos.to_le_bytes());
            el[4..8].copy_from_slice(&ksize.to_le_bytes());
            el[8..16].copy_from_slice(e.value); // child pgid, 8 LE bytes
            &[]
        };
        let end = data + e.key.len() + payload.len();
        if end > buf.len() {
            return Err(WriteError::Misuse("node size miscomputed"));
        }
        buf[data..data + e.key.len()].copy_from_slice(e.key);
        buf[data + e.key.len()..end].copy_from_slice(payload);
        data = end;
    }
    Ok(buf)
}

fn put_page_header(page: &mut [u8], id: u64, flags: u16, count: u16, overflow: u32) {
    page[0..8].copy_from_slice(&id.to_le_bytes());
    page[8..10].copy_from_slice(&flags.to_le_bytes());
    page[10..12].copy_from_slice(&count.to_le_bytes());
    page[12..16].copy_from_slice(&overflow.to_le_bytes());
}

/// FNV-1a 64, the bbolt meta checksum.
pub fn fnv1a64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A key or bucket name for messages: printable ASCII as is, otherwise hex.
fn show(b: &[u8]) -> String {
    if !b.is_empty() && b.iter().all(|c| c.is_ascii_graphic()) {
        format!("{:?}", String::from_utf8_lossy(b))
    } else {
        format!("0x{}", hex::encode(b))
    }
}

#[cfg(test)]
pub(crate) mod testdb;
#[cfg(test)]
mod tests;

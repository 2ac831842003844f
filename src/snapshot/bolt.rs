//! The bbolt on-disk format (spec §5): pure code over byte slices.
//!
//! Meta pages, page headers, leaf and branch elements, bucket values, inline bucket pages and the
//! freelist. Every size, count, offset and page id read from the file is checked before it is used;
//! malformed input gives a one-line error saying what and where. The random-access reader built on
//! these, [`BoltFile`], lives in `cursor.rs` and is re-exported here; `scan.rs` reads the same
//! structures sequentially instead.

use super::SnapshotError;

pub use super::cursor::{fill, read_up_to, BoltFile, BucketInfo, ReadAt, Visit};

pub const MAGIC: u32 = 0xED0C_DAED;
pub const VERSION: u32 = 2;
pub const PAGE_HEADER_SIZE: usize = 16;
pub const ELEMENT_SIZE: usize = 16;
pub const BUCKET_HEADER_SIZE: usize = 16;
/// Size of the meta struct that follows the page header on pages 0 and 1.
pub const META_SIZE: usize = 64;
pub const FLAG_BRANCH: u16 = 0x01;
pub const FLAG_LEAF: u16 = 0x02;
pub const FLAG_META: u16 = 0x04;
pub const FLAG_FREELIST: u16 = 0x10;
/// Leaf element flag marking a sub-bucket.
pub const BUCKET_LEAF_FLAG: u32 = 0x01;
/// `meta.freelist` when the freelist is not stored in the file (etcd on Linux).
pub const NO_FREELIST: u64 = u64::MAX;
/// Smallest and largest page sizes accepted (bbolt probes up to 16 MiB).
pub const MIN_PAGE_SIZE: u32 = 512;
pub const MAX_PAGE_SIZE: u32 = 16 << 20;
/// Deepest B+tree accepted. A 1 TiB etcd database is 5 levels deep; deeper means a loop or garbage.
pub const MAX_DEPTH: usize = 64;

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    let s = b.get(off..off.checked_add(2)?)?;
    Some(u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    let s = b.get(off..off.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Some(u64::from_le_bytes(a))
}

/// FNV-1a 64, the meta checksum.
pub fn fnv1a64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The meta struct of page 0 or 1 (spec §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub page_size: u32,
    pub flags: u32,
    /// Root bucket page.
    pub root: u64,
    pub root_sequence: u64,
    /// Freelist page id, or [`NO_FREELIST`].
    pub freelist: u64,
    /// High-water mark: the number of pages in use.
    pub pgid: u64,
    pub txid: u64,
}

impl Meta {
    /// Parse and validate (magic, version, checksum) the meta on a page that starts at `page[0]`.
    pub fn parse(page: &[u8]) -> Result<Meta, String> {
        let m = page
            .get(PAGE_HEADER_SIZE..PAGE_HEADER_SIZE + META_SIZE)
            .ok_or("meta page is shorter than 80 bytes")?;
        let r32 = |o| u32_at(m, o).unwrap_or(0);
        let r64 = |o| u64_at(m, o).unwrap_or(0);
        if r32(0) != MAGIC {
            return Err(format!("invalid magic {:#010x}", r32(0)));
        }
        if r32(4) != VERSION {
            return Err(format!("unsupported version {}", r32(4)));
        }
        if r64(56) != fnv1a64(&m[..56]) {
            return Err("meta checksum mismatch".into());
        }
        Ok(Meta {
            page_size: r32(8),
            flags: r32(12),
            root: r64(16),
            root_sequence: r64(24),
            freelist: r64(32),
            pgid: r64(40),
            txid: r64(48),
        })
    }

    /// Encode as the 64-byte meta struct, checksum included (used by tests and the writer).
    pub fn encode(&self) -> [u8; META_SIZE] {
        let mut m = [0u8; META_SIZE];
        m[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        m[4..8].copy_from_slice(&VERSION.to_le_bytes());
        m[8..12].copy_from_slice(&self.page_size.to_le_bytes());
        m[12..16].copy_from_slice(&self.flags.to_le_bytes());
        m[16..24].copy_from_slice(&self.root.to_le_bytes());
        m[24..32].copy_from_slice(&self.root_sequence.to_le_bytes());
        m[32..40].copy_from_slice(&self.freelist.to_le_bytes());
        m[40..48].copy_from_slice(&self.pgid.to_le_bytes());
        m[48..56].copy_from_slice(&self.txid.to_le_bytes());
        let sum = fnv1a64(&m[..56]);
        m[56..64].copy_from_slice(&sum.to_le_bytes());
        m
    }
}

/// bbolt's `getPageSize`: the page size from a valid meta at offset 0, else from a valid meta 1 probed
/// at `1024 << i` (i = 0..=14, while the probe lies before `file_len - 1024`). `read_at(off, len)`
/// returns up to `len` bytes at `off` (fewer at the end of the file).
pub fn discover_page_size(
    file_len: u64,
    mut read_at: impl FnMut(u64, usize) -> Result<Vec<u8>, SnapshotError>,
) -> Result<u32, SnapshotError> {
    let head = read_at(0, 4096)?;
    if let Ok(m) = Meta::parse(&head) {
        return Ok(m.page_size);
    }
    for i in 0..=14u32 {
        let pos = 1024u64 << i;
        if pos.saturating_add(1024) >= file_len {
            break;
        }
        if let Ok(m) = Meta::parse(&read_at(pos, 4096)?) {
            return Ok(m.page_size);
        }
    }
    Err(SnapshotError::Format(
        "not a bbolt database: no valid meta page (magic, version, checksum)".into(),
    ))
}

/// bbolt's `db.meta()`: the valid meta with the higher txid (meta 0 on a tie).
pub fn select_meta(
    meta0: Result<Meta, String>,
    meta1: Result<Meta, String>,
) -> Result<Meta, SnapshotError> {
    match (meta0, meta1) {
        (Ok(a), Ok(b)) => Ok(if b.txid > a.txid { b } else { a }),
        (Ok(a), Err(_)) => Ok(a),
        (Err(_), Ok(b)) => Ok(b),
        (Err(e0), Err(e1)) => Err(SnapshotError::Format(format!(
            "both meta pages are invalid: page 0: {e0}; page 1: {e1}"
        ))),
    }
}

/// Checks a selected meta against the discovered page size and the database length: every page below
/// the high-water mark must lie inside the file (bbolt would SIGBUS otherwise).
pub fn validate_meta(meta: &Meta, page_size: u32, db_len: u64) -> Result<(), SnapshotError> {
    let fail = |m: String| Err(SnapshotError::Format(m));
    if !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&page_size) {
        return fail(format!("meta: page size {page_size} is out of range"));
    }
    if meta.page_size != page_size {
        return fail(format!(
            "meta: page size {} disagrees with the page size {page_size} of meta page 0",
            meta.page_size
        ));
    }
    if meta.pgid < 2 {
        return fail(format!("meta: high-water mark {} is below 2", meta.pgid));
    }
    match meta.pgid.checked_mul(u64::from(page_size)) {
        Some(size) if size <= db_len => Ok(()),
        _ => fail(format!(
            "meta: high-water mark {} pages of {page_size} bytes runs past the end of the {db_len}-byte database",
            meta.pgid
        )),
    }
}

/// The 16-byte page header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageHeader {
    pub id: u64,
    pub flags: u16,
    pub count: u16,
    pub overflow: u32,
}

impl PageHeader {
    pub fn parse(page: &[u8]) -> Option<PageHeader> {
        Some(PageHeader {
            id: u64_at(page, 0)?,
            flags: u16_at(page, 8)?,
            count: u16_at(page, 10)?,
            overflow: u32_at(page, 12)?,
        })
    }

    /// bbolt's `page.typ()`.
    pub fn type_name(&self) -> String {
        page_type_name(self.flags)
    }

    /// bbolt's `fastCheck` as a predicate (no message): cheap enough for every page of a scan.
    pub fn passes_fast_check(&self, expected_id: u64) -> bool {
        self.id == expected_id
            && matches!(
                self.flags,
                FLAG_BRANCH | FLAG_LEAF | FLAG_META | FLAG_FREELIST
            )
    }

    /// bbolt's `fastCheck`: the id matches the position and exactly one type flag is set. The error
    /// text is bbolt's assertion message.
    pub fn fast_check(&self, expected_id: u64) -> Result<(), String> {
        if self.id != expected_id {
            return Err(format!(
                "Page expected to be: {expected_id}, but self identifies as {}",
                self.id
            ));
        }
        match self.flags {
            FLAG_BRANCH | FLAG_LEAF | FLAG_META | FLAG_FREELIST => Ok(()),
            f => Err(format!(
                "page {}: has unexpected type/flags: {f:x}",
                self.id
            )),
        }
    }
}

pub fn page_type_name(flags: u16) -> String {
    if flags & FLAG_BRANCH != 0 {
        "branch".into()
    } else if flags & FLAG_LEAF != 0 {
        "leaf".into()
    } else if flags & FLAG_META != 0 {
        "meta".into()
    } else if flags & FLAG_FREELIST != 0 {
        "freelist".into()
    } else {
        format!("unknown<{flags:02x}>")
    }
}

/// A leaf element: key, value and flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeafElement<'a> {
    pub flags: u32,
    pub key: &'a [u8],
    pub value: &'a [u8],
}

impl LeafElement<'_> {
    pub fn is_bucket(&self) -> bool {
        self.flags & BUCKET_LEAF_FLAG != 0
    }
}

/// A branch element: the first key of the child subtree and the child's page id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BranchElement<'a> {
    pub key: &'a [u8],
    pub child: u64,
}

/// Where a node's bytes came from, for error messages: a page id, or an inline bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeAt<'a> {
    Page(u64),
    Inline(&'a [u8]),
}

impl std::fmt::Display for NodeAt<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeAt::Page(id) => write!(f, "page {id}"),
            NodeAt::Inline(name) => write!(f, "inline bucket {:?}", String::from_utf8_lossy(name)),
        }
    }
}

/// The 16-byte element slot `i` of a node, checked to lie inside it.
fn element_slot(node: &[u8], i: usize) -> Option<usize> {
    let off = PAGE_HEADER_SIZE.checked_add(i.checked_mul(ELEMENT_SIZE)?)?;
    (off.checked_add(ELEMENT_SIZE)? <= node.len()).then_some(off)
}

fn slice_at(node: &[u8], base: usize, pos: u32, len: u32) -> Option<&[u8]> {
    let start = base.checked_add(pos as usize)?;
    node.get(start..start.checked_add(len as usize)?)
}

/// Leaf element `i` of `node` (a whole node: header plus overflow pages, or an inline page).
pub fn leaf_element<'a>(node: &'a [u8], i: usize, at: NodeAt) -> Result<LeafElement<'a>, String> {
    let off =
        element_slot(node, i).ok_or_else(|| format!("{at}: element {i} runs past the node"))?;
    let flags = u32_at(node, off).unwrap_or(0);
    let pos = u32_at(node, off + 4).unwrap_or(0);
    let ksize = u32_at(node, off + 8).unwrap_or(0);
    let vsize = u32_at(node, off + 12).unwrap_or(0);
    let key = slice_at(node, off, pos, ksize)
        .ok_or_else(|| format!("{at}: element {i} key runs past the node"))?;
    let vpos = pos
        .checked_add(ksize)
        .ok_or_else(|| format!("{at}: element {i} value offset overflows"))?;
    let value = slice_at(node, off, vpos, vsize)
        .ok_or_else(|| format!("{at}: element {i} value runs past the node"))?;
    Ok(LeafElement { flags, key, value })
}

/// Branch element `i` of `node`.
pub fn branch_element<'a>(
    node: &'a [u8],
    i: usize,
    at: NodeAt,
) -> Result<BranchElement<'a>, String> {
    let off =
        element_slot(node, i).ok_or_else(|| format!("{at}: element {i} runs past the node"))?;
    let pos = u32_at(node, off).unwrap_or(0);
    let ksize = u32_at(node, off + 4).unwrap_or(0);
    let child = u64_at(node, off + 8).unwrap_or(0);
    let key = slice_at(node, off, pos, ksize)
        .ok_or_else(|| format!("{at}: element {i} key runs past the node"))?;
    Ok(BranchElement { key, child })
}

/// The value of a bucket element: `root u64 | sequence u64`, then for an inline bucket (root 0) a
/// leaf page image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketValue<'a> {
    pub root: u64,
    pub sequence: u64,
    /// The inline page (header + elements + data) when `root == 0`.
    pub inline: Option<&'a [u8]>,
}

impl<'a> BucketValue<'a> {
    pub fn parse(value: &'a [u8]) -> Result<BucketValue<'a>, String> {
        let (root, sequence) = match (u64_at(value, 0), u64_at(value, 8)) {
            (Some(r), Some(s)) => (r, s),
            _ => {
                return Err(format!(
                    "bucket value is {} bytes, shorter than its 16-byte header",
                    value.len()
                ))
            }
        };
        let inline = if root == 0 {
            let page = &value[BUCKET_HEADER_SIZE..];
            if page.len() < PAGE_HEADER_SIZE {
                return Err(format!(
                    "inline bucket page is {} bytes, shorter than a page header",
                    page.len()
                ));
            }
            Some(page)
        } else {
            None
        };
        Ok(BucketValue {
            root,
            sequence,
            inline,
        })
    }
}

/// Freelist page ids (sorted as bbolt sorts them on read, duplicates kept), from a whole node.
pub fn freelist_ids(node: &[u8], id: u64) -> Result<Vec<u64>, String> {
    let h = PageHeader::parse(node).ok_or_else(|| format!("page {id}: freelist page truncated"))?;
    let (mut off, count) = if h.count == 0xFFFF {
        let n = u64_at(node, PAGE_HEADER_SIZE)
            .ok_or_else(|| format!("page {id}: freelist count runs past the page"))?;
        (PAGE_HEADER_SIZE + 8, n)
    } else {
        (PAGE_HEADER_SIZE, u64::from(h.count))
    };
    let avail = (node.len().saturating_sub(off) / 8) as u64;
    if count > avail {
        return Err(format!(
            "page {id}: freelist of {count} ids runs past its {} pages",
            u64::from(h.overflow) + 1
        ));
    }
    let mut ids = Vec::with_capacity(count as usize);
    for _ in 0..count {
        ids.push(u64_at(node, off).unwrap_or(0));
        off += 8;
    }
    ids.sort_unstable();
    Ok(ids)
}

/// The number of pages a node starting with header `h` spans, checked against the high-water mark.
pub fn node_pages(h: &PageHeader, pgid: u64) -> Result<u64, String> {
    let pages = u64::from(h.overflow) + 1;
    match h.id.checked_add(pages) {
        Some(end) if end <= pgid => Ok(pages),
        _ => Err(format!(
            "page {}: overflow {} runs past the high-water mark {pgid}",
            h.id, h.overflow
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Meta {
        Meta {
            page_size: 4096,
            flags: 0,
            root: 3,
            root_sequence: 0,
            freelist: 2,
            pgid: 4,
            txid: 7,
        }
    }

    fn meta_page(m: &Meta, id: u64) -> Vec<u8> {
        let mut p = vec![0u8; 4096];
        p[0..8].copy_from_slice(&id.to_le_bytes());
        p[8..10].copy_from_slice(&FLAG_META.to_le_bytes());
        p[16..80].copy_from_slice(&m.encode());
        p
    }

    #[test]
    fn fnv_matches_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
    }

    #[test]
    fn meta_round_trips_and_rejects_damage() {
        let m = meta();
        let p = meta_page(&m, 0);
        assert_eq!(Meta::parse(&p), Ok(m));
        let mut bad = p.clone();
        bad[16 + 40] ^= 1;
        assert_eq!(Meta::parse(&bad), Err("meta checksum mismatch".into()));
        let mut bad = p.clone();
        bad[16] ^= 1;
        assert!(Meta::parse(&bad).unwrap_err().contains("magic"));
        assert!(Meta::parse(&p[..50]).is_err());
    }

    #[test]
    fn select_meta_prefers_higher_txid_and_survives_one_bad_meta() {
        let a = meta();
        let b = Meta { txid: 8, ..a };
        assert_eq!(select_meta(Ok(a), Ok(b)).unwrap().txid, 8);
        assert_eq!(select_meta(Ok(b), Ok(a)).unwrap().txid, 8);
        assert_eq!(select_meta(Err("x".into()), Ok(a)).unwrap(), a);
        assert!(select_meta(Err("x".into()), Err("y".into())).is_err());
    }

    #[test]
    fn page_size_discovery_probes_meta1() {
        let m = Meta {
            page_size: 16384,
            ..meta()
        };
        let mut file = vec![0u8; 65536];
        file[16384..16384 + 4096].copy_from_slice(&meta_page(&m, 1));
        let read = |off: u64, len: usize| {
            let s = (off as usize).min(file.len());
            Ok(file[s..(s + len).min(file.len())].to_vec())
        };
        assert_eq!(discover_page_size(file.len() as u64, read).unwrap(), 16384);
        let zero = vec![0u8; 65536];
        let read = |off: u64, len: usize| {
            let s = (off as usize).min(zero.len());
            Ok(zero[s..(s + len).min(zero.len())].to_vec())
        };
        assert!(discover_page_size(65536, read).is_err());
    }

    #[test]
    fn validate_meta_refuses_high_water_past_the_file() {
        let m = meta();
        assert!(validate_meta(&m, 4096, 4 * 4096).is_ok());
        assert!(validate_meta(&m, 4096, 4 * 4096 - 1).is_err());
        assert!(validate_meta(
            &Meta {
                pgid: u64::MAX,
                ..m
            },
            4096,
            u64::MAX
        )
        .is_err());
        assert!(validate_meta(&m, 8192, 1 << 20).is_err());
    }

    fn leaf(elems: &[(u32, &[u8], &[u8])]) -> Vec<u8> {
        crate::snapshot::summary::tests::leaf_node(0, elems)
    }

    #[test]
    fn leaf_elements_are_bounds_checked() {
        let p = leaf(&[(0, b"a", b"1"), (1, b"bb", b"22")]);
        let at = NodeAt::Page(5);
        let e = leaf_element(&p, 1, at).unwrap();
        assert_eq!(
            (e.key, e.value, e.is_bucket()),
            (&b"bb"[..], &b"22"[..], true)
        );
        assert!(leaf_element(&p, 2, at).is_err());
        let mut bad = p.clone();
        bad[PAGE_HEADER_SIZE + 12..PAGE_HEADER_SIZE + 16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            leaf_element(&bad, 0, at).unwrap_err(),
            "page 5: element 0 value runs past the node"
        );
        bad[PAGE_HEADER_SIZE + 4..PAGE_HEADER_SIZE + 8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            leaf_element(&bad, 0, at).unwrap_err(),
            "page 5: element 0 key runs past the node"
        );
    }

    #[test]
    fn bucket_value_inline_and_short() {
        let mut v = vec![0u8; 16];
        v[8] = 9;
        assert!(BucketValue::parse(&v).is_err());
        v.extend_from_slice(&leaf(&[]));
        let b = BucketValue::parse(&v).unwrap();
        assert_eq!(
            (b.root, b.sequence, b.inline.map(|p| p.len())),
            (0, 9, Some(16))
        );
        assert!(BucketValue::parse(&v[..10]).is_err());
    }

    #[test]
    fn freelist_count_escape_and_bounds() {
        let mut p = vec![0u8; 4096];
        p[0] = 2;
        p[8..10].copy_from_slice(&FLAG_FREELIST.to_le_bytes());
        p[10..12].copy_from_slice(&2u16.to_le_bytes());
        p[16..24].copy_from_slice(&9u64.to_le_bytes());
        p[24..32].copy_from_slice(&5u64.to_le_bytes());
        assert_eq!(freelist_ids(&p, 2).unwrap(), vec![5, 9]);
        p[10..12].copy_from_slice(&0xFFFFu16.to_le_bytes());
        p[16..24].copy_from_slice(&1u64.to_le_bytes());
        assert_eq!(freelist_ids(&p, 2).unwrap(), vec![5]);
        p[16..24].copy_from_slice(&10_000u64.to_le_bytes());
        assert!(freelist_ids(&p, 2).is_err());
    }
}

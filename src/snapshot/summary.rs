//! Compact summaries of bbolt nodes, made while the file streams past, so that the tree can be
//! walked afterwards in memory without reading a page twice.
//!
//! A leaf keeps what `snapshot status` and `tx.Check()` need and nothing else: its element count,
//! the CRC-32C and length of `k1 v1 k2 v2 …` (CRC-32C is linear, so leaf CRCs combine in key order
//! into the status hash), first and last key, whether its keys ascend, its sub-bucket elements, and
//! for etcd's `key` and `meta` buckets the revision records and `storageVersion`. A branch keeps its
//! (first key, child) pairs. Every page that could start a node gets a summary — free pages too,
//! since which pages are live is only known once the tree is walked.

use std::hash::{Hash, Hasher};

use super::bolt::{
    branch_element, leaf_element, BucketValue, NodeAt, PageHeader, FLAG_BRANCH, FLAG_FREELIST,
    FLAG_LEAF, FLAG_META, MAX_DEPTH,
};
use super::mvcc::{kv_user_key, parse_revision_key, RevisionKind};

/// A sub-bucket element of a leaf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketEntry {
    pub name: Box<[u8]>,
    /// The bucket header, or why the value is not one.
    pub value: Result<BucketRoot, String>,
}

/// A bucket value: root page (0 = inline), sequence, and the inline page when inline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketRoot {
    pub root: u64,
    pub sequence: u64,
    pub inline: Option<Box<[u8]>>,
}

/// What a `key`-bucket element does to its user key, for etcd 3.6's live-key count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevisionEvent {
    Put(u128),
    Tombstone(u128),
    /// The element would make etcdutl 3.6 fail (bad revision key or value).
    Bad,
}

/// A [`RevisionEvent`] packed in 16 bytes: a 126-bit hash of the user key and a 2-bit kind.
/// Collisions between distinct keys are out of reach for any database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RevisionRecord([u64; 2]);

impl RevisionRecord {
    const PUT: u64 = 1;
    const TOMBSTONE: u64 = 2;

    fn new(kind: u64, key_hash: u128) -> RevisionRecord {
        RevisionRecord([(key_hash >> 64) as u64, (key_hash as u64 & !3) | kind])
    }

    pub fn event(&self) -> RevisionEvent {
        let key = (u128::from(self.0[0]) << 64) | u128::from(self.0[1] & !3);
        match self.0[1] & 3 {
            Self::PUT => RevisionEvent::Put(key),
            Self::TOMBSTONE => RevisionEvent::Tombstone(key),
            _ => RevisionEvent::Bad,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeafSummary {
    pub overflow: u32,
    pub count: u32,
    /// CRC-32C of `k1 v1 k2 v2 …` (a sub-bucket contributes only its key).
    pub crc: u32,
    pub len: u64,
    /// First key then last key, one allocation (see [`LeafSummary::first_key`]).
    edge_keys: Box<[u8]>,
    first_key_len: u32,
    /// Keys strictly ascend inside the leaf.
    pub sorted: bool,
    /// Some key is shorter than 8 bytes (not a revision; etcdutl 3.5 would panic in bucket `key`).
    pub short_key: bool,
    pub buckets: Vec<BucketEntry>,
    /// Present when the first key looks like a revision (17 or 18 bytes).
    pub revisions: Option<Vec<RevisionRecord>>,
    /// Value of a `storageVersion` key, if the leaf has one.
    pub storage_version: Option<Box<[u8]>>,
}

impl LeafSummary {
    /// The smallest key by position (the first element), `None` for an empty leaf.
    pub fn first_key(&self) -> Option<&[u8]> {
        (self.count > 0).then(|| &self.edge_keys[..self.first_key_len as usize])
    }

    /// The last element's key, `None` for an empty leaf.
    pub fn last_key(&self) -> Option<&[u8]> {
        (self.count > 0).then(|| &self.edge_keys[self.first_key_len as usize..])
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchEntry {
    pub key: Box<[u8]>,
    pub child: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeSummary {
    Branch {
        overflow: u32,
        children: Vec<BranchEntry>,
    },
    Leaf(LeafSummary),
    /// A meta or freelist page (valid pages, but never part of a bucket tree).
    Other {
        flags: u16,
        overflow: u32,
    },
    /// Passed bbolt's fast check but its elements do not parse; `reason` says where.
    Invalid {
        overflow: u32,
        reason: String,
    },
}

impl NodeSummary {
    pub fn overflow(&self) -> u32 {
        match self {
            NodeSummary::Branch { overflow, .. }
            | NodeSummary::Other { overflow, .. }
            | NodeSummary::Invalid { overflow, .. } => *overflow,
            NodeSummary::Leaf(l) => l.overflow,
        }
    }
}

/// A set of page ids below a bound, one bit each.
pub struct PageSet(Vec<u64>);

impl PageSet {
    pub fn new(pgid: u64) -> PageSet {
        PageSet(vec![0; usize::try_from(pgid.div_ceil(64)).unwrap_or(0)])
    }

    pub fn contains(&self, id: u64) -> bool {
        self.0
            .get((id / 64) as usize)
            .is_some_and(|w| w & (1 << (id % 64)) != 0)
    }

    /// Adds `id`; returns whether it was already there. Ids out of range are never added and
    /// always reported as present, so a walk does not follow them.
    pub fn insert(&mut self, id: u64) -> bool {
        match self.0.get_mut((id / 64) as usize) {
            Some(w) => {
                let was = *w & (1 << (id % 64)) != 0;
                *w |= 1 << (id % 64);
                was
            }
            None => true,
        }
    }
}

/// Node summaries indexed by page id, for pages below the high-water mark.
#[derive(Debug, Default)]
pub struct Summaries {
    index: Vec<u32>,
    nodes: Vec<NodeSummary>,
}

impl Summaries {
    pub fn new(pgid: u64) -> Summaries {
        Summaries {
            index: vec![0; usize::try_from(pgid).unwrap_or(0)],
            nodes: Vec::new(),
        }
    }

    pub fn insert(&mut self, id: u64, node: NodeSummary) {
        let Ok(i) = usize::try_from(id) else { return };
        if i < self.index.len() && self.nodes.len() < u32::MAX as usize {
            self.nodes.push(node);
            self.index[i] = self.nodes.len() as u32;
        }
    }

    pub fn get(&self, id: u64) -> Option<&NodeSummary> {
        let i = *self.index.get(usize::try_from(id).ok()?)?;
        i.checked_sub(1).and_then(|i| self.nodes.get(i as usize))
    }
}

/// Summarize a whole node (header page plus overflow pages) that starts at page `id`, or `None` when
/// its header fails bbolt's fast check (wrong id or not exactly one type flag).
pub fn summarize_node(node: &[u8], id: u64) -> Option<NodeSummary> {
    let h = PageHeader::parse(node)?;
    if !h.passes_fast_check(id) {
        return None;
    }
    let invalid = |reason| NodeSummary::Invalid {
        overflow: h.overflow,
        reason,
    };
    Some(match h.flags {
        FLAG_LEAF => match summarize_leaf(node, NodeAt::Page(id)) {
            Ok(l) => NodeSummary::Leaf(l),
            Err(e) => invalid(e),
        },
        FLAG_BRANCH => {
            let mut children = Vec::with_capacity(usize::from(h.count));
            for i in 0..usize::from(h.count) {
                match branch_element(node, i, NodeAt::Page(id)) {
                    Ok(e) => children.push(BranchEntry {
                        key: e.key.into(),
                        child: e.child,
                    }),
                    Err(e) => return Some(invalid(e)),
                }
            }
            NodeSummary::Branch {
                overflow: h.overflow,
                children,
            }
        }
        flags @ (FLAG_META | FLAG_FREELIST) => NodeSummary::Other {
            flags,
            overflow: h.overflow,
        },
        _ => return None,
    })
}

/// 128-bit hash of a user key (two SipHash passes): collisions are out of reach for any database.
fn key_hash(k: &[u8]) -> u128 {
    let mut a = std::collections::hash_map::DefaultHasher::new();
    (0u8, k).hash(&mut a);
    let mut b = std::collections::hash_map::DefaultHasher::new();
    (1u8, k).hash(&mut b);
    (u128::from(a.finish()) << 64) | u128::from(b.finish())
}

/// Summarize a leaf node or an inline bucket page.
pub fn summarize_leaf(node: &[u8], at: NodeAt) -> Result<LeafSummary, String> {
    let h = PageHeader::parse(node).ok_or_else(|| format!("{at}: truncated page header"))?;
    let count = usize::from(h.count);
    let mut s = LeafSummary {
        overflow: h.overflow,
        count: u32::from(h.count),
        sorted: true,
        ..LeafSummary::default()
    };
    let mut crc = 0u32;
    let mut prev: Option<&[u8]> = None;
    for i in 0..count {
        let e = leaf_element(node, i, at)?;
        if i == 0 && matches!(e.key.len(), 17 | 18) {
            s.revisions = Some(Vec::with_capacity(count));
        }
        if prev.is_some_and(|p| p >= e.key) {
            s.sorted = false;
        }
        prev = Some(e.key);
        s.short_key |= e.key.len() < 8;
        crc = crc32c::crc32c_append(crc, e.key);
        s.len += e.key.len() as u64;
        if e.is_bucket() {
            s.buckets.push(BucketEntry {
                name: e.key.into(),
                value: BucketValue::parse(e.value).map(|b| BucketRoot {
                    root: b.root,
                    sequence: b.sequence,
                    inline: b.inline.map(Into::into),
                }),
            });
        } else {
            crc = crc32c::crc32c_append(crc, e.value);
            s.len += e.value.len() as u64;
        }
        if let Some(revs) = &mut s.revisions {
            revs.push(revision_record(e.key, e.value, e.is_bucket()));
        }
        if e.key == b"storageVersion" && !e.is_bucket() {
            s.storage_version = Some(e.value.into());
        }
    }
    s.crc = crc;
    if let Some(last) = prev {
        let first = leaf_element(node, 0, at)?.key;
        s.first_key_len = u32::try_from(first.len()).map_err(|_| format!("{at}: key too long"))?;
        s.edge_keys = [first, last].concat().into();
    }
    Ok(s)
}

fn revision_record(key: &[u8], value: &[u8], is_bucket: bool) -> RevisionRecord {
    if is_bucket {
        return RevisionRecord::new(0, 0);
    }
    match (parse_revision_key(key), kv_user_key(value)) {
        (Ok(RevisionKind::Put), Ok(k)) => RevisionRecord::new(RevisionRecord::PUT, key_hash(k)),
        (Ok(RevisionKind::Tombstone), Ok(k)) => {
            RevisionRecord::new(RevisionRecord::TOMBSTONE, key_hash(k))
        }
        _ => RevisionRecord::new(0, 0),
    }
}

/// Calls `f` for every leaf of the tree rooted at `root`, in key order (branch element order).
/// Pages without a summary, non-tree pages, revisits and levels past [`MAX_DEPTH`] are skipped:
/// `check` reports them; this walk only has to terminate.
pub fn leaves_in_order<'a>(
    nodes: &'a Summaries,
    root: u64,
    mut f: impl FnMut(u64, &'a LeafSummary) -> Result<(), String>,
) -> Result<(), String> {
    let mut visited = PageSet::new(nodes.index.len() as u64);
    let mut stack: Vec<(&'a [BranchEntry], usize)> = Vec::new();
    let mut next = Some(root);
    loop {
        if let Some(id) = next.take() {
            if !visited.insert(id) && stack.len() < MAX_DEPTH {
                match nodes.get(id) {
                    Some(NodeSummary::Leaf(l)) => f(id, l)?,
                    Some(NodeSummary::Branch { children, .. }) => stack.push((children, 0)),
                    _ => {}
                }
            }
        }
        let Some((children, i)) = stack.last_mut() else {
            return Ok(());
        };
        match children.get(*i) {
            Some(c) => {
                *i += 1;
                next = Some(c.child);
            }
            None => {
                stack.pop();
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::snapshot::bolt::{ELEMENT_SIZE, PAGE_HEADER_SIZE};

    /// A node image with the given header and leaf elements `(flags, key, value)`.
    pub fn leaf_node(id: u64, elems: &[(u32, &[u8], &[u8])]) -> Vec<u8> {
        let mut p = vec![0u8; PAGE_HEADER_SIZE + ELEMENT_SIZE * elems.len()];
        p[0..8].copy_from_slice(&id.to_le_bytes());
        p[8..10].copy_from_slice(&FLAG_LEAF.to_le_bytes());
        p[10..12].copy_from_slice(&(elems.len() as u16).to_le_bytes());
        for (i, (flags, k, v)) in elems.iter().enumerate() {
            let off = PAGE_HEADER_SIZE + i * ELEMENT_SIZE;
            let pos = (p.len() - off) as u32;
            p[off..off + 4].copy_from_slice(&flags.to_le_bytes());
            p[off + 4..off + 8].copy_from_slice(&pos.to_le_bytes());
            p[off + 8..off + 12].copy_from_slice(&(k.len() as u32).to_le_bytes());
            p[off + 12..off + 16].copy_from_slice(&(v.len() as u32).to_le_bytes());
            p.extend_from_slice(k);
            p.extend_from_slice(v);
        }
        p
    }

    pub fn branch_node(id: u64, elems: &[(&[u8], u64)]) -> Vec<u8> {
        let mut p = vec![0u8; PAGE_HEADER_SIZE + ELEMENT_SIZE * elems.len()];
        p[0..8].copy_from_slice(&id.to_le_bytes());
        p[8..10].copy_from_slice(&FLAG_BRANCH.to_le_bytes());
        p[10..12].copy_from_slice(&(elems.len() as u16).to_le_bytes());
        for (i, (k, child)) in elems.iter().enumerate() {
            let off = PAGE_HEADER_SIZE + i * ELEMENT_SIZE;
            let pos = (p.len() - off) as u32;
            p[off..off + 4].copy_from_slice(&pos.to_le_bytes());
            p[off + 4..off + 8].copy_from_slice(&(k.len() as u32).to_le_bytes());
            p[off + 8..off + 16].copy_from_slice(&child.to_le_bytes());
            p.extend_from_slice(k);
        }
        p
    }

    #[test]
    fn leaf_crc_is_over_keys_and_values_but_only_keys_of_buckets() {
        let mut bucket = vec![0u8; 16];
        bucket[0] = 9;
        let node = leaf_node(4, &[(0, b"a", b"1"), (1, b"b", &bucket), (0, b"c", b"33")]);
        let s = summarize_leaf(&node, NodeAt::Page(4)).unwrap();
        assert_eq!(s.crc, crc32c::crc32c(b"a1bc33"));
        assert_eq!(s.len, 6);
        assert_eq!(s.count, 3);
        assert!(s.sorted);
        assert_eq!(s.first_key(), Some(&b"a"[..]));
        assert_eq!(s.last_key(), Some(&b"c"[..]));
        let empty = summarize_leaf(&leaf_node(4, &[]), NodeAt::Page(4)).unwrap();
        assert_eq!((empty.first_key(), empty.last_key()), (None, None));
        assert_eq!(s.buckets[0].value.as_ref().map(|b| b.root), Ok(9));
    }

    #[test]
    fn revision_records_pack_kind_and_key() {
        for (kind, want) in [(1, "Put"), (2, "Tombstone"), (0, "Bad")] {
            let e = RevisionRecord::new(kind, u128::MAX).event();
            assert!(format!("{e:?}").starts_with(want), "{e:?}");
        }
        let (a, b) = (key_hash(b"a"), key_hash(b"b"));
        assert_ne!(
            RevisionRecord::new(1, a).event(),
            RevisionRecord::new(1, b).event()
        );
        assert_eq!(
            RevisionRecord::new(1, a).event(),
            RevisionRecord::new(1, a).event()
        );
    }

    #[test]
    fn unsorted_leaf_and_fast_check() {
        let node = leaf_node(4, &[(0, b"b", b""), (0, b"a", b"")]);
        let Some(NodeSummary::Leaf(s)) = summarize_node(&node, 4) else {
            panic!()
        };
        assert!(!s.sorted);
        assert_eq!(summarize_node(&node, 5), None);
    }

    #[test]
    fn walk_survives_loops() {
        let mut n = Summaries::new(8);
        n.insert(
            3,
            summarize_node(&branch_node(3, &[(b"a", 4), (b"b", 3)]), 3).unwrap(),
        );
        n.insert(
            4,
            summarize_node(&leaf_node(4, &[(0, b"a", b"")]), 4).unwrap(),
        );
        let mut seen = vec![];
        leaves_in_order(&n, 3, |id, _| {
            seen.push(id);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, vec![4]);
    }
}

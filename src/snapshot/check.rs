//! bbolt's `tx.Check()` (v1.3.12 `tx_check.go`, spec §5.4) over node summaries: same checks, same
//! wording, same order, so `status` fails exactly where `etcdutl snapshot status` does.
//!
//! Pure: the tree comes from [`Summaries`]; `reload(id)` may return a node's bytes again, and is only
//! asked for on a damaged file, to word an error exactly (a leaf whose keys are out of order, a page
//! that fails bbolt's fast check). Where bbolt itself would panic or loop forever (bad page header,
//! a branch pointing at an ancestor) this reports one error and carries on.

use std::collections::HashSet;

use super::bolt::{leaf_element, page_type_name, Meta, NodeAt, PageHeader, MAX_DEPTH};
use super::summary::{BranchEntry, NodeSummary, PageSet, Summaries};

/// The freelist as the scan found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Freelist {
    /// Ids stored on the freelist page, sorted, duplicates kept.
    Ids(Vec<u64>),
    /// `meta.freelist == NO_FREELIST`: free = every page in [2, pgid) the tree does not reach.
    NotSynced,
    /// The freelist page cannot be read (bbolt would panic); the text says why.
    Unreadable(String),
}

/// Fetches a node's bytes again for an exact error message; `None` when unavailable.
pub type Reload<'a> = &'a dyn Fn(u64) -> Option<Vec<u8>>;

fn stack_str(stack: &[u64]) -> String {
    let ids: Vec<String> = stack.iter().map(u64::to_string).collect();
    format!("[{}]", ids.join(" "))
}

struct Checker<'a> {
    pgid: u64,
    nodes: &'a Summaries,
    reload: Reload<'a>,
    reachable: PageSet,
    freed: PageSet,
    key_order_done: PageSet,
    buckets_checked: HashSet<u64>,
    errors: Vec<String>,
}

/// Runs bbolt's `tx.Check()`; returns its errors in bbolt's order (empty = sound).
pub fn check(meta: &Meta, freelist: &Freelist, nodes: &Summaries, reload: Reload) -> Vec<String> {
    let pgid = meta.pgid;
    let mut c = Checker::new(pgid, nodes, reload);
    match freelist {
        Freelist::Ids(ids) => {
            for (i, &id) in ids.iter().enumerate() {
                if i > 0 && ids[i - 1] == id {
                    c.errors.push(format!("page {id}: already freed"));
                }
                c.freed.insert(id);
            }
        }
        Freelist::Unreadable(e) => c.errors.push(e.clone()),
        // bbolt's db.freepages() walks the tree once to call every unreached page in [2, pgid) free,
        // then Check walks it again. The second walk reaches exactly the same pages, so it can
        // report no `reachable freed` and no `unreachable unfreed`: one walk, freed filled after.
        Freelist::NotSynced => {}
    }
    c.reachable.insert(0);
    c.reachable.insert(1);
    if meta.freelist != super::bolt::NO_FREELIST {
        let overflow = nodes.get(meta.freelist).map_or(0, NodeSummary::overflow);
        let last = meta.freelist.saturating_add(u64::from(overflow));
        for id in meta.freelist..=last.min(pgid.saturating_sub(1)) {
            c.reachable.insert(id);
        }
    }
    c.check_bucket(meta.root, 0);
    if *freelist == Freelist::NotSynced {
        for i in 2..pgid {
            if !c.reachable.contains(i) {
                c.freed.insert(i);
            }
        }
    }
    for i in 0..pgid {
        if !c.reachable.contains(i) && !c.freed.contains(i) {
            c.errors.push(format!("page {i}: unreachable unfreed"));
        }
    }
    c.errors
}

impl<'a> Checker<'a> {
    fn new(pgid: u64, nodes: &'a Summaries, reload: Reload<'a>) -> Checker<'a> {
        Checker {
            pgid,
            nodes,
            reload,
            reachable: PageSet::new(pgid),
            freed: PageSet::new(pgid),
            key_order_done: PageSet::new(pgid),
            buckets_checked: HashSet::new(),
            errors: Vec::new(),
        }
    }

    /// `checkBucket`: every page of the bucket, then key order, then its sub-buckets.
    fn check_bucket(&mut self, root: u64, nesting: usize) {
        if root == 0 {
            return; // inline
        }
        self.for_each_page(root);
        if !self.buckets_checked.insert(root) {
            return; // a bucket that refers back to a checked bucket: bbolt would recurse forever
        }
        let mut stack = Vec::new();
        self.key_order(root, None, None, &mut stack);
        if nesting >= MAX_DEPTH {
            self.errors.push(format!(
                "page {root}: buckets nested deeper than {MAX_DEPTH}"
            ));
            return;
        }
        let mut subs = Vec::new();
        let _ = super::summary::leaves_in_order(self.nodes, root, |id, leaf| {
            for b in &leaf.buckets {
                match &b.value {
                    Ok(bucket) => subs.push(bucket.root),
                    Err(e) => self.errors.push(format!(
                        "page {id}: bucket {:?}: {e}",
                        String::from_utf8_lossy(&b.name)
                    )),
                }
            }
            Ok(())
        });
        for r in subs {
            self.check_bucket(r, nesting + 1);
        }
    }

    /// The `forEachPage` part of `checkBucket`, in bbolt's pre-order. `path` is the page stack from
    /// the bucket root (bbolt prints it); `frames` the branches being walked.
    fn for_each_page(&mut self, root: u64) {
        let nodes = self.nodes;
        let mut path: Vec<u64> = Vec::new();
        let mut frames: Vec<std::slice::Iter<'a, BranchEntry>> = Vec::new();
        let mut next = Some(root);
        loop {
            if let Some(id) = next.take() {
                path.push(id);
                if let Some(children) = self.visit_page(id, &path, nodes) {
                    frames.push(children.iter());
                    continue;
                }
                path.pop();
            }
            let Some(frame) = frames.last_mut() else {
                return;
            };
            match frame.next() {
                Some(c) => next = Some(c.child),
                None => {
                    frames.pop();
                    path.pop();
                }
            }
        }
    }

    /// One page of `forEachPage`: marks it (and its overflow) reachable and reports what bbolt
    /// reports. Returns the children to descend into, if it is a branch seen for the first time.
    fn visit_page(
        &mut self,
        id: u64,
        path: &[u64],
        nodes: &'a Summaries,
    ) -> Option<&'a [BranchEntry]> {
        if id >= self.pgid {
            self.errors.push(format!(
                "page {id}: out of bounds: {} (stack: {})",
                self.pgid,
                stack_str(path)
            ));
            return None;
        }
        let Some(node) = nodes.get(id) else {
            self.reachable.insert(id);
            self.errors.push(self.unreadable(id));
            return None;
        };
        let revisit = self.reachable.contains(id);
        let last = id
            .saturating_add(u64::from(node.overflow()))
            .min(self.pgid - 1);
        for pid in id..=last {
            if self.reachable.insert(pid) {
                self.errors.push(format!(
                    "page {pid}: multiple references (stack: {})",
                    stack_str(path)
                ));
            }
        }
        if self.freed.contains(id) {
            self.errors.push(format!("page {id}: reachable freed"));
        } else if let NodeSummary::Other { flags, .. } = node {
            self.errors.push(format!(
                "page {id}: invalid type: {} (stack: {})",
                page_type_name(*flags),
                stack_str(path)
            ));
        }
        match node {
            NodeSummary::Invalid { reason, .. } => {
                self.errors.push(reason.clone());
                None
            }
            NodeSummary::Branch { children, .. } if !revisit => {
                if path.len() >= MAX_DEPTH {
                    self.errors.push(format!(
                        "page {id}: tree deeper than {MAX_DEPTH} levels (stack: {})",
                        stack_str(path)
                    ));
                    return None;
                }
                Some(children)
            }
            _ => None,
        }
    }

    /// Why page `id` has no summary: bbolt's fast-check assertion, in bbolt's words where possible.
    fn unreadable(&self, id: u64) -> String {
        match (self.reload)(id).as_deref().and_then(PageHeader::parse) {
            Some(h) => match h.fast_check(id) {
                Err(e) => format!("page {id}: {e}"),
                Ok(()) => format!("page {id}: unreadable node"),
            },
            None => format!("page {id}: unreadable page header"),
        }
    }

    /// `recursivelyCheckPagesInternal`: keys ascend and lie within the ancestors' ranges. Returns the
    /// largest key of the subtree. Each page is checked once (bbolt would loop on a cycle).
    fn key_order(
        &mut self,
        id: u64,
        min: Option<&'a [u8]>,
        max: Option<&'a [u8]>,
        stack: &mut Vec<u64>,
    ) -> Option<&'a [u8]> {
        if id >= self.pgid || self.key_order_done.insert(id) || stack.len() >= MAX_DEPTH {
            return None;
        }
        let nodes = self.nodes;
        stack.push(id);
        let mut result = None;
        match nodes.get(id) {
            Some(NodeSummary::Branch { children, .. }) => {
                let mut running_min = min;
                for (i, c) in children.iter().enumerate() {
                    self.verify(c.child, "branch", i, &c.key, running_min, max, stack);
                    let next_max = children.get(i + 1).map(|n| &n.key[..]).or(max);
                    result = self.key_order(c.child, Some(&c.key), next_max, stack);
                    running_min = result;
                }
            }
            Some(NodeSummary::Leaf(l)) => {
                let last = l.last_key();
                let beyond_max = matches!((last, max), (Some(k), Some(m)) if k >= m);
                let node = if !l.sorted || beyond_max {
                    (self.reload)(id)
                } else {
                    None
                };
                if let Some(node) = node {
                    let mut running_min = min.map(<[u8]>::to_vec);
                    for i in 0..l.count as usize {
                        let Ok(e) = leaf_element(&node, i, NodeAt::Page(id)) else {
                            break;
                        };
                        self.verify(id, "leaf", i, e.key, running_min.as_deref(), max, stack);
                        running_min = Some(e.key.to_vec());
                    }
                } else if let Some(first) = l.first_key() {
                    self.verify(id, "leaf", 0, first, min, max, stack);
                    if !l.sorted {
                        self.errors.push(format!(
                            "keys on leaf page({id}) are not in ascending order. Stack: {}",
                            stack_str(stack)
                        ));
                    }
                }
                result = last;
            }
            Some(NodeSummary::Other { .. }) => {
                self.errors
                    .push(format!("unexpected page type for pgId:{id}"));
            }
            _ => {}
        }
        stack.pop();
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn verify(
        &mut self,
        id: u64,
        page_type: &str,
        index: usize,
        key: &[u8],
        previous: Option<&[u8]>,
        max: Option<&[u8]>,
        stack: &[u64],
    ) {
        let hexk = || hex::encode(key);
        let prev = || previous.map(hex::encode).unwrap_or_default();
        let st = || stack_str(stack);
        if index == 0 {
            if let Some(p) = previous {
                if p > key {
                    self.errors.push(format!(
                        "the first key[{index}]=(hex){} on {page_type} page({id}) needs to be >= the key in the ancestor ({}). Stack: {}",
                        hexk(), prev(), st()
                    ));
                }
            }
        } else {
            let p = previous.unwrap_or_default();
            if p > key {
                self.errors.push(format!(
                    "key[{index}]=(hex){} on {page_type} page({id}) needs to be > (found <) than previous element (hex){}. Stack: {}",
                    hexk(), prev(), st()
                ));
            } else if p == key {
                self.errors.push(format!(
                    "key[{index}]=(hex){} on {page_type} page({id}) needs to be > (found =) than previous element (hex){}. Stack: {}",
                    hexk(), prev(), st()
                ));
            }
        }
        if let Some(m) = max {
            if key >= m {
                self.errors.push(format!(
                    "key[{index}]=(hex){} on {page_type} page({id}) needs to be < than key of the next element in ancestor (hex){}. Pages stack: {}",
                    hexk(), prev(), st()
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::summary::summarize_node;
    use crate::snapshot::summary::tests::{branch_node, leaf_node};

    fn meta(root: u64, freelist: u64, pgid: u64) -> Meta {
        Meta {
            page_size: 4096,
            flags: 0,
            root,
            root_sequence: 0,
            freelist,
            pgid,
            txid: 1,
        }
    }

    fn bucket(root: u64) -> Vec<u8> {
        let mut v = vec![0u8; 16];
        v[..8].copy_from_slice(&root.to_le_bytes());
        v
    }

    /// pages: 0,1 meta, 2 freelist, 3 root leaf with bucket "b" at 4, 4 branch -> 5, 6 leaves.
    fn db(pages: &[(u64, Vec<u8>)], pgid: u64) -> (Summaries, Vec<(u64, Vec<u8>)>) {
        let mut s = Summaries::new(pgid);
        for (id, p) in pages {
            if let Some(n) = summarize_node(p, *id) {
                s.insert(*id, n);
            }
        }
        (s, pages.to_vec())
    }

    fn freelist_page(id: u64) -> Vec<u8> {
        let mut p = vec![0u8; 16];
        p[..8].copy_from_slice(&id.to_le_bytes());
        p[8] = 0x10;
        p
    }

    fn healthy() -> Vec<(u64, Vec<u8>)> {
        vec![
            (2, freelist_page(2)),
            (3, leaf_node(3, &[(1, b"b", &bucket(4))])),
            (4, branch_node(4, &[(b"a", 5), (b"m", 6)])),
            (5, leaf_node(5, &[(0, b"a", b"1"), (0, b"c", b"2")])),
            (6, leaf_node(6, &[(0, b"m", b"3"), (0, b"z", b"4")])),
        ]
    }

    fn run(pages: Vec<(u64, Vec<u8>)>, freelist: Freelist, fl_page: u64, pgid: u64) -> Vec<String> {
        let (s, raw) = db(&pages, pgid);
        let reload = move |id| raw.iter().find(|(i, _)| *i == id).map(|(_, p)| p.clone());
        check(&meta(3, fl_page, pgid), &freelist, &s, &reload)
    }

    #[test]
    fn healthy_tree_passes() {
        assert_eq!(
            run(healthy(), Freelist::Ids(vec![]), 2, 7),
            Vec::<String>::new()
        );
        assert_eq!(
            run(healthy(), Freelist::NotSynced, u64::MAX, 8),
            Vec::<String>::new(),
            "page 7 and the old freelist page are free when the freelist is not synced"
        );
    }

    #[test]
    fn freelist_errors_in_bbolt_order() {
        let errs = run(healthy(), Freelist::Ids(vec![5, 7, 7]), 2, 9);
        assert_eq!(
            errs,
            vec![
                "page 7: already freed",
                "page 5: reachable freed",
                "page 8: unreachable unfreed",
            ]
        );
    }

    #[test]
    fn cycle_is_reported_once_and_terminates() {
        let mut p = healthy();
        p[2] = (4, branch_node(4, &[(b"a", 5), (b"m", 4)]));
        let errs = run(p, Freelist::Ids(vec![6]), 2, 7);
        assert_eq!(errs[0], "page 4: multiple references (stack: [4 4])");
        assert!(errs.iter().all(|e| !e.contains("unreachable")), "{errs:?}");
    }

    #[test]
    fn buckets_pointing_back_at_the_root_terminate() {
        let b3 = bucket(3);
        let elems: Vec<(u32, Vec<u8>, &[u8])> =
            (0..40u8).map(|i| (1, vec![b'a' + i], &b3[..])).collect();
        let elems: Vec<(u32, &[u8], &[u8])> =
            elems.iter().map(|(f, k, v)| (*f, &k[..], *v)).collect();
        let p = vec![(2, freelist_page(2)), (3, leaf_node(3, &elems))];
        let errs = run(p, Freelist::Ids(vec![4, 5, 6]), 2, 7);
        assert_eq!(
            errs.len(),
            40,
            "one multiple-reference error per bucket: {errs:?}"
        );
        assert!(errs
            .iter()
            .all(|e| e == "page 3: multiple references (stack: [3])"));
    }

    #[test]
    fn out_of_bounds_invalid_type_and_bad_header() {
        let mut p = healthy();
        p[2] = (
            4,
            branch_node(4, &[(b"a", 5), (b"m", 60), (b"n", 2), (b"o", 6)]),
        );
        p[4] = (6, leaf_node(9, &[]));
        let errs = run(p, Freelist::Ids(vec![]), 2, 7);
        assert_eq!(errs[0], "page 60: out of bounds: 7 (stack: [4 60])");
        assert_eq!(errs[1], "page 2: multiple references (stack: [4 2])");
        assert_eq!(errs[2], "page 2: invalid type: freelist (stack: [4 2])");
        assert_eq!(
            errs[3],
            "page 6: Page expected to be: 6, but self identifies as 9"
        );
        assert!(
            errs.contains(&"unexpected page type for pgId:2".to_string()),
            "{errs:?}"
        );
    }

    #[test]
    fn key_order_violations_use_bbolt_wording() {
        let mut p = healthy();
        p[3] = (5, leaf_node(5, &[(0, b"c", b"1"), (0, b"a", b"2")]));
        p[4] = (6, leaf_node(6, &[(0, b"m", b"3"), (0, b"m", b"4")]));
        let errs = run(p, Freelist::Ids(vec![]), 2, 7);
        assert_eq!(
            errs,
            vec![
                "key[1]=(hex)61 on leaf page(5) needs to be > (found <) than previous element (hex)63. Stack: [4 5]",
                "key[1]=(hex)6d on leaf page(6) needs to be > (found =) than previous element (hex)6d. Stack: [4 6]",
            ]
        );
        let mut p = healthy();
        p[3] = (5, leaf_node(5, &[(0, b"a", b"1"), (0, b"n", b"2")]));
        let errs = run(p, Freelist::Ids(vec![]), 2, 7);
        assert_eq!(
            errs,
            vec![
                "key[1]=(hex)6e on leaf page(5) needs to be < than key of the next element in ancestor (hex)61. Pages stack: [4 5]",
                "key[1]=(hex)6d on branch page(6) needs to be > (found <) than previous element (hex)6e. Stack: [4]",
            ]
        );
    }
}

//! The restore diff (spec §3.4): what `etcdutl snapshot restore` changes in the snapshot's buckets.
//!
//! Restore keeps the snapshot's data and rewrites only the cluster's identity: bucket `members`
//! holds exactly the new members, `members_removed` is emptied, `meta/consistent_index` and
//! `meta/term` become N and 1, and `cluster`, `members`, `members_removed` are created if
//! missing. With `--bump-revision B --mark-compacted`, `key` gains one empty entry at revision
//! `latest + B` and `meta/scheduledCompactRev` points at it, so clients see a compacted history
//! instead of revisions going backwards. `RestoreDiff::apply` merges a bucket's source entries
//! with these changes in key order, so the orchestrator can stream source → diff →
//! `snapshot::write::BoltWriter` without holding a bucket in memory.

use super::cluster::ClusterPlan;

/// A key/value pair, as read from a bucket.
pub type Entry = (Vec<u8>, Vec<u8>);

pub const BUCKET_KEY: &[u8] = b"key";
pub const BUCKET_META: &[u8] = b"meta";
pub const BUCKET_MEMBERS: &[u8] = b"members";
pub const BUCKET_MEMBERS_REMOVED: &[u8] = b"members_removed";
pub const BUCKET_CLUSTER: &[u8] = b"cluster";

/// An MVCC revision: bytes 0..8 (main) and 9..17 (sub) of a `key` bucket key, big-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Revision {
    pub main: u64,
    pub sub: u64,
}

impl Revision {
    /// Parse a `key` bucket key (17 bytes, or 18 with a trailing `t` for a tombstone).
    pub fn from_key(key: &[u8]) -> Option<Revision> {
        if !(key.len() == 17 || key.len() == 18) || key[8] != b'_' {
            return None;
        }
        let mut main = [0u8; 8];
        let mut sub = [0u8; 8];
        main.copy_from_slice(&key[0..8]);
        sub.copy_from_slice(&key[9..17]);
        Some(Revision {
            main: u64::from_be_bytes(main),
            sub: u64::from_be_bytes(sub),
        })
    }

    /// The latest revision of a snapshot from the last key of its `key` bucket (keys sort by
    /// revision, so the last one is the largest); `None` for an empty bucket gives revision 0,
    /// as in etcd's `modifyLatestRevision`.
    pub fn latest(last_key: Option<&[u8]>) -> Result<Revision, DiffError> {
        match last_key {
            None => Ok(Revision::default()),
            Some(k) => {
                Revision::from_key(k).ok_or_else(|| DiffError::BadRevisionKey(hex::encode(k)))
            }
        }
    }

    /// `rev17`: `be64(main) || '_' || be64(sub)`.
    pub fn to_key(self) -> Vec<u8> {
        let mut k = Vec::with_capacity(17);
        k.extend_from_slice(&self.main.to_be_bytes());
        k.push(b'_');
        k.extend_from_slice(&self.sub.to_be_bytes());
        k
    }
}

/// Why the diff could not be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiffError {
    #[error("--mark-compacted required if --revision-bump > 0 (pass both, or neither)")]
    BumpWithoutMarkCompacted,
    #[error("revision bump {bump} on top of revision {latest} exceeds etcd's maximum revision; use a smaller bump")]
    BumpOverflow { bump: u64, latest: u64 },
    #[error("the last key of bucket `key` (0x{0}) is not a revision (8 bytes, '_', 8 bytes); the snapshot is not an etcd v3 database or is corrupt — restore without --bump-revision or use another snapshot")]
    BadRevisionKey(String),
}

/// etcdutl's flag rule: `--bump-revision N` and `--mark-compacted` go together.
/// Returns the bump to apply, if any.
pub fn validate_bump_flags(bump: u64, mark_compacted: bool) -> Result<Option<u64>, DiffError> {
    match (bump > 0, mark_compacted) {
        (true, true) => Ok(Some(bump)),
        (false, false) => Ok(None),
        _ => Err(DiffError::BumpWithoutMarkCompacted),
    }
}

/// The changes restore makes to the snapshot's buckets. Build it with `RestoreDiff::new`, list
/// the output buckets with `buckets`, and pass each bucket's source entries through `apply`.
#[derive(Debug, Clone)]
pub struct RestoreDiff {
    /// New `members` entries (hex id → member JSON), sorted by key.
    members: Vec<Entry>,
    /// `meta` upserts, sorted by key.
    meta: Vec<Entry>,
    /// The `key` entry added by a revision bump.
    key_extra: Vec<Entry>,
    bumped: Option<Revision>,
}

impl RestoreDiff {
    /// `bump`: `Some((bump, latest))` to bump, where `latest` is the largest revision in the
    /// source `key` bucket (its last key; `Revision::default()` if it is empty).
    pub fn new(plan: &ClusterPlan, bump: Option<(u64, Revision)>) -> Result<Self, DiffError> {
        let mut members: Vec<Entry> = plan
            .members
            .iter()
            .map(|m| (m.hex_id().into_bytes(), m.json().into_bytes()))
            .collect();
        members.sort();
        let mut meta = vec![
            (
                b"consistent_index".to_vec(),
                plan.index().to_be_bytes().to_vec(),
            ),
            (b"term".to_vec(), 1u64.to_be_bytes().to_vec()),
        ];
        let mut key_extra = Vec::new();
        let mut bumped = None;
        if let Some((n, latest)) = bump {
            let main = latest
                .main
                .checked_add(n)
                .filter(|&m| m <= i64::MAX as u64)
                .ok_or(DiffError::BumpOverflow {
                    bump: n,
                    latest: latest.main,
                })?;
            let rev = Revision { main, sub: 0 };
            meta.push((b"scheduledCompactRev".to_vec(), rev.to_key()));
            key_extra.push((rev.to_key(), Vec::new()));
            bumped = Some(rev);
        }
        meta.sort();
        Ok(RestoreDiff {
            members,
            meta,
            key_extra,
            bumped,
        })
    }

    /// The revision written by a bump (the new compaction point), if bumping.
    pub fn bumped_revision(&self) -> Option<Revision> {
        self.bumped
    }

    /// The buckets of the restored database, in write (name) order: the source's buckets plus
    /// `members`, `members_removed` and `cluster` (etcd's `mustCreateBackendBuckets`), and `meta`
    /// (etcd cannot start without it; snapshots always have it). A created bucket has sequence 0
    /// and no source entries.
    pub fn buckets<'a>(&self, source: impl IntoIterator<Item = &'a [u8]>) -> Vec<Vec<u8>> {
        let mut names: Vec<Vec<u8>> = source.into_iter().map(<[u8]>::to_vec).collect();
        for b in [
            BUCKET_CLUSTER,
            BUCKET_MEMBERS,
            BUCKET_MEMBERS_REMOVED,
            BUCKET_META,
        ] {
            names.push(b.to_vec());
        }
        if self.bumped.is_some() {
            names.push(BUCKET_KEY.to_vec());
        }
        names.sort();
        names.dedup();
        names
    }

    /// What restore does to `bucket`: entries to put (sorted; replacing source entries with the
    /// same key) and whether the source entries are dropped. [`apply`](Self::apply) as data, for
    /// callers that merge borrowed entries themselves.
    pub fn changes(&self, bucket: &[u8]) -> (&[Entry], bool) {
        match bucket {
            BUCKET_MEMBERS => (&self.members, true),
            BUCKET_MEMBERS_REMOVED => (&[], true),
            BUCKET_META => (&self.meta, false),
            BUCKET_KEY => (&self.key_extra, false),
            _ => (&[], false),
        }
    }

    /// Merge one bucket's source entries (ascending) with the diff, in key order. Source
    /// entries of `members` and `members_removed` are consumed and dropped; replaced keys are
    /// dropped in favour of the new value. Source errors are passed through.
    pub fn apply<I, E>(&self, bucket: &[u8], source: I) -> Merge<'_, I>
    where
        I: Iterator<Item = Result<Entry, E>>,
    {
        let (extra, drop_source) = self.changes(bucket);
        Merge {
            source: source.peekable(),
            extra,
            drop_source,
        }
    }
}

/// The iterator returned by `RestoreDiff::apply`.
pub struct Merge<'a, I: Iterator> {
    source: std::iter::Peekable<I>,
    extra: &'a [Entry],
    drop_source: bool,
}

impl<I, E> Iterator for Merge<'_, I>
where
    I: Iterator<Item = Result<Entry, E>>,
{
    type Item = Result<Entry, E>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.drop_source {
            for item in self.source.by_ref() {
                if let Err(e) = item {
                    return Some(Err(e));
                }
            }
        }
        let take_extra = match (self.source.peek(), self.extra.first()) {
            (None, None) => return None,
            (Some(Err(_)), _) | (Some(Ok(_)), None) => false,
            (None, Some(_)) => true,
            (Some(Ok((k, _))), Some((ek, _))) => {
                if k == ek {
                    self.source.next(); // replaced
                    true
                } else {
                    ek < k
                }
            }
        };
        if take_extra {
            let (first, rest) = self.extra.split_first()?;
            self.extra = rest;
            Some(Ok(first.clone()))
        } else {
            self.source.next()
        }
    }
}

#[cfg(test)]
mod tests;

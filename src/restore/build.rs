//! Build a member dir (`member/snap/db`, `member/snap/*.snap`, `member/wal/*.wal`) from a verified
//! snapshot file, as `etcdutl snapshot restore` would (spec §3.3), inside a staging directory.
//!
//! The database is a fresh compacted rewrite: the source is walked bucket by bucket in key order on
//! a reader thread (pread over a file; no mmap) and streamed in batches through a bounded channel to
//! the writer, which applies the restore diff (members, consistent index, term, optional revision
//! bump) on the way. Memory stays bounded by a few batches whatever the DB size, and reading and
//! writing run on separate cores. Every file and directory is fsynced before returning.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver};

use crate::error::{Error, Result};
use crate::fsutil::{create_dir_private, create_private, fsync_dir};
use crate::restore::cluster::ClusterPlan;
use crate::restore::diff::{RestoreDiff, Revision};
use crate::restore::{snapfile, wal};
use crate::snapshot::bolt::BoltFile;
use crate::snapshot::write::BoltWriter;

type Entry = (Vec<u8>, Vec<u8>);

/// What the reader thread sends: the entries of the source buckets, in order, in batches.
enum Msg {
    Batch(Vec<Entry>),
    End,
    Failed(String),
}

/// A batch is sent when it holds this many entries or bytes: memory in flight stays ~8 MiB.
const BATCH: usize = 1024;
const BATCH_BYTES: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct Built {
    pub db_bytes: u64,
    pub keys: u64,
    pub bumped_revision: Option<u64>,
    pub snap_file: PathBuf,
    pub wal_file: PathBuf,
}

fn werr(e: impl std::fmt::Display) -> Error {
    Error::Restore(format!("writing the restored database: {e}"))
}

/// Preallocate like etcd's `fileutil.Preallocate(extend=true)`: fallocate, else ftruncate.
fn preallocate(f: &File, len: u64) -> std::io::Result<()> {
    // SAFETY: valid fd; len fits i64 (64,000,000).
    let rc = unsafe { libc::posix_fallocate(f.as_raw_fd(), 0, len as libc::off_t) };
    if rc == 0 {
        Ok(())
    } else {
        f.set_len(len)
    }
}

/// Read every source bucket in name order, sending its entries and an `End` after each bucket.
fn spawn_reader(src: PathBuf, names: Vec<Vec<u8>>) -> Receiver<Msg> {
    let (tx, rx) = sync_channel::<Msg>(8);
    std::thread::spawn(move || {
        let run = || -> std::result::Result<(), String> {
            let bolt = BoltFile::open(&src).map_err(|e| e.to_string())?;
            let buckets = bolt.buckets().map_err(|e| e.to_string())?;
            for name in &names {
                let Some(b) = buckets.iter().find(|b| &b.name == name) else {
                    continue;
                };
                let mut batch = Vec::with_capacity(BATCH);
                let mut batch_bytes = 0usize;
                bolt.for_each_in(b, |k, v, nested| {
                    if nested {
                        return Err(crate::snapshot::SnapshotError::Format(format!(
                            "bucket {:?} holds a nested bucket {:?}: not an etcd snapshot",
                            String::from_utf8_lossy(name),
                            String::from_utf8_lossy(k)
                        )));
                    }
                    batch.push((k.to_vec(), v.to_vec()));
                    batch_bytes += k.len() + v.len();
                    if batch.len() == BATCH || batch_bytes >= BATCH_BYTES {
                        batch_bytes = 0;
                        let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                        tx.send(Msg::Batch(full)).map_err(|_| {
                            crate::snapshot::SnapshotError::Format("writer stopped".into())
                        })?;
                    }
                    Ok(())
                })
                .map_err(|e| e.to_string())?;
                if !batch.is_empty() {
                    tx.send(Msg::Batch(batch))
                        .map_err(|_| "writer stopped".to_string())?;
                }
                tx.send(Msg::End)
                    .map_err(|_| "writer stopped".to_string())?;
            }
            Ok(())
        };
        if let Err(e) = run() {
            let _ = tx.send(Msg::Failed(e));
        }
    });
    rx
}

/// The entries of one source bucket, pulled from the reader.
struct BucketEntries<'a> {
    rx: &'a Receiver<Msg>,
    buf: std::vec::IntoIter<Entry>,
    done: bool,
}

impl Iterator for BucketEntries<'_> {
    type Item = std::result::Result<Entry, String>;
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(e) = self.buf.next() {
                return Some(Ok(e));
            }
            if self.done {
                return None;
            }
            match self.rx.recv() {
                Ok(Msg::Batch(b)) => self.buf = b.into_iter(),
                Ok(Msg::End) => self.done = true,
                Ok(Msg::Failed(e)) => {
                    self.done = true;
                    return Some(Err(e));
                }
                Err(_) => {
                    self.done = true;
                    return Some(Err("the snapshot reader stopped unexpectedly".into()));
                }
            }
        }
    }
}

/// The latest main revision in the snapshot: the first 8 bytes of the last key of bucket `key`,
/// found by a rightmost descent (a few reads), so a build can start before the full scan ends.
pub fn latest_revision(snapshot: &Path) -> Result<u64> {
    use crate::snapshot::bolt::{branch_element, leaf_element, NodeAt, PageHeader, FLAG_LEAF};
    let bad = |e: String| Error::Verify(format!("{}: {e}", snapshot.display()));
    let bolt = BoltFile::open(snapshot).map_err(|e| bad(e.to_string()))?;
    let buckets = bolt.buckets().map_err(|e| bad(e.to_string()))?;
    let Some(key) = buckets.iter().find(|b| b.name == b"key") else {
        return Ok(0);
    };
    let (mut node, mut at) = match &key.inline {
        Some(bytes) => (bytes.clone(), None),
        None => (
            bolt.read_node(key.root).map_err(|e| bad(e.to_string()))?,
            Some(key.root),
        ),
    };
    for _ in 0..64 {
        let here = match at {
            Some(id) => NodeAt::Page(id),
            None => NodeAt::Inline(&node),
        };
        let h = PageHeader::parse(&node)
            .ok_or_else(|| bad("bucket key: node header runs past the data".into()))?;
        if h.count == 0 {
            return Ok(0);
        }
        let last = usize::from(h.count) - 1;
        if h.flags & FLAG_LEAF != 0 {
            let e = leaf_element(&node, last, here).map_err(bad)?;
            let main = e
                .key
                .get(..8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes);
            return main.ok_or_else(|| {
                bad(format!(
                    "bucket key: last key {} is not a revision",
                    hex::encode(e.key)
                ))
            });
        }
        let child = branch_element(&node, last, here).map_err(bad)?.child;
        node = bolt.read_node(child).map_err(|e| bad(e.to_string()))?;
        at = Some(child);
    }
    Err(bad("bucket key: tree deeper than 64 levels".into()))
}

/// Write the restored `db` for `plan` into `dest` (created 0600).
pub fn write_db(
    snapshot: &Path,
    dest: &Path,
    plan: &ClusterPlan,
    bump: Option<u64>,
    latest_main: u64,
) -> Result<(u64, u64, Option<u64>)> {
    let src = BoltFile::open(snapshot).map_err(|e| Error::Verify(e.to_string()))?;
    let source = src.buckets().map_err(|e| Error::Verify(e.to_string()))?;
    let diff = RestoreDiff::new(
        plan,
        bump.map(|b| {
            (
                b,
                Revision {
                    main: latest_main,
                    sub: 0,
                },
            )
        }),
    )
    .map_err(|e| Error::Restore(e.to_string()))?;
    let out_names = diff.buckets(source.iter().map(|b| b.name.as_slice()));
    let source_names: Vec<Vec<u8>> = out_names
        .iter()
        .filter(|n| source.iter().any(|b| &b.name == *n))
        .cloned()
        .collect();
    let rx = spawn_reader(snapshot.to_path_buf(), source_names);

    let file = create_private(dest)?;
    let mut w =
        BoltWriter::new(BufWriter::with_capacity(1 << 20, file), src.page_size()).map_err(werr)?;
    let mut keys = 0u64;
    for name in &out_names {
        let info = source.iter().find(|b| &b.name == name);
        w.begin_bucket(name, info.map_or(0, |b| b.sequence))
            .map_err(werr)?;
        let entries: Box<dyn Iterator<Item = std::result::Result<Entry, String>>> = match info {
            Some(_) => Box::new(BucketEntries {
                rx: &rx,
                buf: Vec::new().into_iter(),
                done: false,
            }),
            None => Box::new(std::iter::empty()),
        };
        for e in diff.apply(name, entries) {
            let (k, v) = e.map_err(|e| Error::Verify(format!("reading the snapshot: {e}")))?;
            w.put(&k, &v).map_err(werr)?;
            keys += 1;
        }
        w.end_bucket().map_err(werr)?;
    }
    let txid = src.meta().txid.saturating_add(1);
    let (buf, summary) = w.finish_in_place(txid).map_err(werr)?;
    let file = buf.into_inner().map_err(|e| werr(e.into_error()))?;
    file.sync_all()
        .map_err(|e| Error::io(format!("fsync of {}", dest.display()), e))?;
    Ok((
        summary.file_len(),
        keys,
        diff.bumped_revision().map(|r| r.main),
    ))
}

/// Build `<member_dir>/{snap,wal}` (or the WAL in `wal_dir`) for `plan` from `snapshot`.
pub fn build_member(
    snapshot: &Path,
    member_dir: &Path,
    wal_dir: &Path,
    plan: &ClusterPlan,
    bump: Option<u64>,
    latest_main: u64,
) -> Result<Built> {
    let snap_dir = member_dir.join("snap");
    create_dir_private(&snap_dir)?;
    let (db_bytes, keys, bumped_revision) =
        write_db(snapshot, &snap_dir.join("db"), plan, bump, latest_main)?;

    let snap_file = snap_dir.join(snapfile::restore_snap_file_name(plan));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&snap_file)
        .map_err(|e| Error::io(format!("creating {}", snap_file.display()), e))?;
    f.write_all(&snapfile::restore_snap_file(plan))
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(format!("writing {}", snap_file.display()), e))?;

    create_dir_private(wal_dir)?;
    let wal_file = wal_dir.join(wal::WAL_FILE_NAME);
    let mut f = create_private(&wal_file)?;
    f.write_all(&wal::restore_wal_records(plan))
        .and_then(|_| preallocate(&f, wal::WAL_SEGMENT_SIZE))
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(format!("writing {}", wal_file.display()), e))?;

    for d in [snap_dir.as_path(), wal_dir, member_dir] {
        fsync_dir(d)?;
    }
    Ok(Built {
        db_bytes,
        keys,
        bumped_revision,
        snap_file,
        wal_file,
    })
}

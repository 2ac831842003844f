//! The single sequential pass behind `status`, `backup` and `verify`: read the file once, front to
//! back, in large chunks; sha256 on one thread, page summaries on the other; then check and tally
//! the tree in memory.
//!
//! Why: a B+tree walk over a cold file is random I/O (etcdutl takes ~16 s on 1 GiB); a sequential
//! read is bounded by the disk. Memory is bounded: a few chunk buffers in flight, recycled, plus the
//! node summaries. Nodes that span chunks are assembled (bounded by [`MAX_PENDING_BYTES`]). The only
//! random reads are the two meta pages up front and, on a damaged file, a node re-read to word an
//! error exactly.

use std::fs::File;
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::bolt::{
    discover_page_size, fill, freelist_ids, node_pages, read_up_to, select_meta, validate_meta,
    Meta, PageHeader, ReadAt, FLAG_FREELIST, MAX_PAGE_SIZE, MIN_PAGE_SIZE, NO_FREELIST,
};
use super::check::{check, Freelist};
use super::summary::{summarize_node, NodeSummary, Summaries};
use super::{status, Report, SnapshotError, Status, Trailer};

/// Bytes read per chunk (rounded to whole pages).
pub const CHUNK_BYTES: usize = 4 << 20;
/// Read-ahead window, in chunks, requested from the kernel ahead of the reader.
const PREFETCH_CHUNKS: usize = 4;
/// Chunk buffers in flight between the reader, the parser and the hasher.
const BUFFERS: usize = 4;
/// Largest total size of multi-page nodes being assembled across chunks at once.
pub const MAX_PENDING_BYTES: u64 = 256 << 20;

/// Read `path` once, sequentially, and report on it.
pub fn inspect_file(path: &Path) -> Result<Report, SnapshotError> {
    let name = path.display().to_string();
    let io = |source| SnapshotError::Io {
        path: name.clone(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    advise_sequential(&file);
    scan(&file, len, &name)
}

/// Same as [`inspect_file`] over bytes in memory.
pub fn inspect_bytes(bytes: &[u8]) -> Result<Report, SnapshotError> {
    scan(bytes, bytes.len() as u64, "<memory>")
}

fn advise_sequential(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: posix_fadvise only reads its integer arguments; the fd is open for the call's duration.
    // The result is advisory and ignored.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL);
    }
}

/// The whole pass over a source of `file_len` bytes.
pub fn scan<R: ReadAt + ?Sized>(
    src: &R,
    file_len: u64,
    name: &str,
) -> Result<Report, SnapshotError> {
    scan_in_chunks(src, file_len, name, CHUNK_BYTES)
}

/// [`scan`] reading `chunk_bytes` at a time (rounded to whole pages); tests use tiny chunks so that
/// nodes straddle chunk boundaries.
pub fn scan_in_chunks<R: ReadAt + ?Sized>(
    src: &R,
    file_len: u64,
    name: &str,
    chunk_bytes: usize,
) -> Result<Report, SnapshotError> {
    let io = |source| SnapshotError::Io {
        path: name.to_string(),
        source,
    };
    let db_len = if file_len % 512 == 32 {
        file_len - 32
    } else {
        file_len
    };
    let page_size = discover_page_size(file_len, |off, len| read_up_to(src, off, len).map_err(io))?;
    if !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&page_size) {
        return Err(SnapshotError::Format(format!(
            "meta: page size {page_size} is out of range"
        )));
    }
    let ps = u64::from(page_size);
    let m0 = Meta::parse(&read_up_to(src, 0, 4096).map_err(io)?);
    let m1 = Meta::parse(&read_up_to(src, ps, 4096).map_err(io)?);
    let meta = select_meta(m0, m1)?;
    validate_meta(&meta, page_size, db_len)?;

    // The sha256 thread trails the reader: the tree check and the status run while it finishes.
    let reload = |id: u64| reload_node(src, &meta, id);
    let (integrity_errors, status, v36_problem, db_sha256, file_sha256) =
        std::thread::scope(|scope| {
            let (chunk_tx, chunk_rx) = sync_channel::<(Arc<Vec<u8>>, usize)>(BUFFERS);
            let (back_tx, back_rx) = sync_channel::<Arc<Vec<u8>>>(BUFFERS);
            let hasher = scope.spawn(move || hash_chunks(chunk_rx, back_tx, db_len));
            let parsed = read_and_parse(src, file_len, &meta, chunk_bytes, chunk_tx, back_rx);
            let analysed = parsed
                .map_err(|e| match e {
                    ReadError::Io(e) => io(e),
                    ReadError::Format(m) => SnapshotError::Format(m),
                })
                .and_then(|(nodes, freelist)| {
                    let integrity_errors = check(&meta, &freelist, &nodes, &reload);
                    let mut status = Status {
                        total_size: meta.pgid * ps,
                        ..Status::default()
                    };
                    let mut v36_problem = None;
                    if integrity_errors.is_empty() {
                        let (s, p) =
                            status::compute(&meta, &nodes).map_err(SnapshotError::Format)?;
                        status = s;
                        v36_problem = p;
                    }
                    Ok((integrity_errors, status, v36_problem))
                });
            let digests = hasher
                .join()
                .map_err(|_| SnapshotError::Format("the sha256 thread failed".into()));
            let ((errors, status, v36), (db, file)) = (analysed?, digests?);
            Ok((errors, status, v36, db, file))
        })?;

    let trailer = if db_len == file_len {
        Trailer::Absent
    } else {
        let mut stored = [0u8; 32];
        if fill(src, &mut stored, db_len).map_err(io)? != 32 {
            return Err(SnapshotError::Format(format!(
                "{name}: the file shrank while read"
            )));
        }
        if stored == db_sha256 {
            Trailer::Verified
        } else {
            Trailer::Mismatch {
                stored,
                computed: db_sha256,
            }
        }
    };
    Ok(Report {
        status,
        trailer,
        integrity_errors,
        db_sha256,
        file_sha256,
        file_len,
        db_len,
        page_size,
        v36_problem,
    })
}

/// The node at page `id` read again (header page, then its overflow pages if in bounds).
fn reload_node<R: ReadAt + ?Sized>(src: &R, meta: &Meta, id: u64) -> Option<Vec<u8>> {
    let ps = u64::from(meta.page_size);
    if id >= meta.pgid {
        return None;
    }
    let mut node = read_up_to(src, id * ps, ps as usize).ok()?;
    let h = PageHeader::parse(&node)?;
    if let Ok(pages) = node_pages(&h, meta.pgid) {
        if pages > 1 {
            node.extend(read_up_to(src, (id + 1) * ps, ((pages - 1) * ps) as usize).ok()?);
        }
    }
    Some(node)
}

/// sha256 of `[0, db_len)` and of the whole stream, from one hasher (cloned at `db_len`).
fn hash_chunks(
    chunks: Receiver<(Arc<Vec<u8>>, usize)>,
    back: SyncSender<Arc<Vec<u8>>>,
    db_len: u64,
) -> ([u8; 32], [u8; 32]) {
    let mut h = Sha256::new();
    let mut pos = 0u64;
    let mut db = None;
    for (buf, n) in chunks {
        let data = &buf[..n];
        if db.is_none() && pos + n as u64 >= db_len {
            let cut = (db_len - pos) as usize;
            h.update(&data[..cut]);
            db = Some(h.clone().finalize());
            h.update(&data[cut..]);
        } else {
            h.update(data);
        }
        pos += n as u64;
        let _ = back.try_send(buf);
    }
    let db = db.unwrap_or_else(|| h.clone().finalize());
    (db.into(), h.finalize().into())
}

enum ReadError {
    Io(std::io::Error),
    Format(String),
}

/// Reader loop: fill recycled buffers front to back, hand each to the hasher, parse it here.
fn read_and_parse<R: ReadAt + ?Sized>(
    src: &R,
    file_len: u64,
    meta: &Meta,
    chunk_bytes: usize,
    to_hasher: SyncSender<(Arc<Vec<u8>>, usize)>,
    recycled: Receiver<Arc<Vec<u8>>>,
) -> Result<(Summaries, Freelist), ReadError> {
    let ps = meta.page_size as usize;
    let chunk = (chunk_bytes / ps).max(1) * ps;
    let chunk = chunk.min((file_len as usize).div_ceil(ps).max(1) * ps);
    let mut parser = PageParser::new(meta);
    let mut allocated = 0;
    let mut off = 0u64;
    while off < file_len {
        let mut buf = match recycled
            .try_recv()
            .ok()
            .and_then(|a| Arc::try_unwrap(a).ok())
        {
            Some(b) => b,
            None if allocated < BUFFERS => {
                allocated += 1;
                vec![0u8; chunk]
            }
            None => match recycled.recv().ok().and_then(|a| Arc::try_unwrap(a).ok()) {
                Some(b) => b,
                None => vec![0u8; chunk],
            },
        };
        let want = chunk.min((file_len - off) as usize);
        if off % (PREFETCH_CHUNKS * chunk) as u64 == 0 {
            // Keep the disk busy ahead of us: ask for the next window while this one is processed.
            let window = (PREFETCH_CHUNKS * chunk) as u64;
            src.prefetch(off + window, window);
        }
        let n = fill(src, &mut buf[..want], off).map_err(ReadError::Io)?;
        if n < want {
            return Err(ReadError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("the file shrank while read (at byte {})", off + n as u64),
            )));
        }
        let buf = Arc::new(buf);
        if to_hasher.send((Arc::clone(&buf), n)).is_err() {
            return Err(ReadError::Format("the hashing thread stopped".into()));
        }
        parser.feed(off, &buf[..n]).map_err(ReadError::Format)?;
        off += n as u64;
    }
    drop(to_hasher);
    Ok(parser.finish())
}

/// A node whose pages are still arriving.
struct Pending {
    id: u64,
    buf: Vec<u8>,
    need: usize,
}

/// Turns page-aligned chunks, in file order, into node summaries.
struct PageParser {
    meta: Meta,
    ps: u64,
    nodes: Summaries,
    pending: Vec<Pending>,
    pending_bytes: u64,
    freelist: Option<Freelist>,
}

impl PageParser {
    fn new(meta: &Meta) -> PageParser {
        PageParser {
            meta: *meta,
            ps: u64::from(meta.page_size),
            nodes: Summaries::new(meta.pgid),
            pending: Vec::new(),
            pending_bytes: 0,
            freelist: None,
        }
    }

    /// `chunk` holds the file bytes at `off`; `off` is a multiple of the page size.
    fn feed(&mut self, off: u64, chunk: &[u8]) -> Result<(), String> {
        let limit = self.meta.pgid * self.ps;
        if off >= limit {
            return Ok(());
        }
        let usable = &chunk[..chunk.len().min((limit - off) as usize)];
        for mut p in std::mem::take(&mut self.pending) {
            let take = (p.need - p.buf.len()).min(usable.len());
            p.buf.extend_from_slice(&usable[..take]);
            if p.buf.len() == p.need {
                self.pending_bytes -= p.need as u64;
                self.node(p.id, &p.buf);
            } else {
                self.pending.push(p);
            }
        }
        let ps = self.ps as usize;
        for (i, page) in usable.chunks_exact(ps).enumerate() {
            let id = off / self.ps + i as u64;
            let Some(h) = PageHeader::parse(page) else {
                continue;
            };
            let is_freelist = id == self.meta.freelist;
            if !is_freelist && !h.passes_fast_check(id) {
                continue;
            }
            let pages = match node_pages(&PageHeader { id, ..h }, self.meta.pgid) {
                Ok(p) => p,
                Err(reason) => {
                    if is_freelist {
                        self.freelist = Some(Freelist::Unreadable(reason.clone()));
                    }
                    let overflow = h.overflow;
                    self.nodes
                        .insert(id, NodeSummary::Invalid { overflow, reason });
                    continue;
                }
            };
            let need = (pages * self.ps) as usize;
            let start = i * ps;
            if start + need <= usable.len() {
                self.node(id, &usable[start..start + need]);
            } else {
                self.pending_bytes += need as u64;
                if self.pending_bytes > MAX_PENDING_BYTES {
                    return Err(format!(
                        "page {id}: multi-page nodes larger than {} MiB in total overlap (unsupported)",
                        MAX_PENDING_BYTES >> 20
                    ));
                }
                let mut buf = Vec::with_capacity(need);
                buf.extend_from_slice(&usable[start..]);
                self.pending.push(Pending { id, buf, need });
            }
        }
        Ok(())
    }

    fn node(&mut self, id: u64, node: &[u8]) {
        if id == self.meta.freelist {
            let flags = PageHeader::parse(node).map_or(0, |h| h.flags);
            self.freelist = Some(if flags & FLAG_FREELIST == 0 {
                Freelist::Unreadable(format!(
                    "invalid freelist page: {id}, page type is {}",
                    super::bolt::page_type_name(flags)
                ))
            } else {
                freelist_ids(node, id).map_or_else(Freelist::Unreadable, Freelist::Ids)
            });
        }
        if let Some(s) = summarize_node(node, id) {
            self.nodes.insert(id, s);
        }
    }

    fn finish(self) -> (Summaries, Freelist) {
        let freelist = if self.meta.freelist == NO_FREELIST {
            Freelist::NotSynced
        } else if self.meta.freelist >= self.meta.pgid {
            Freelist::Unreadable(format!(
                "freelist page {} is beyond the high-water mark {}",
                self.meta.freelist, self.meta.pgid
            ))
        } else {
            self.freelist.unwrap_or_else(|| {
                Freelist::Unreadable(format!("freelist page {}: not read", self.meta.freelist))
            })
        };
        (self.nodes, freelist)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name);
        std::fs::read(p).unwrap()
    }

    /// Multi-page nodes assembled across chunk boundaries give the same report as whole-file chunks.
    #[test]
    fn chunk_size_does_not_change_the_report() {
        for name in ["snap-v3530.db", "raw-v3423.db", "corrupted_backup.db"] {
            let bytes = fixture(name);
            let len = bytes.len() as u64;
            let whole = scan(&bytes[..], len, name).unwrap();
            for chunk in [1, 4096, 3 * 4096, 5 * 4096] {
                let r = scan_in_chunks(&bytes[..], len, name, chunk).unwrap();
                assert_eq!(r.status, whole.status, "{name} chunk {chunk}");
                assert_eq!(
                    r.integrity_errors, whole.integrity_errors,
                    "{name} chunk {chunk}"
                );
                assert_eq!(r.db_sha256, whole.db_sha256);
                assert_eq!(r.file_sha256, whole.file_sha256);
                assert_eq!(r.trailer, whole.trailer);
            }
        }
    }

    #[test]
    fn high_water_mark_past_the_file_is_a_format_error() {
        let mut bytes = fixture("raw-v3423.db");
        bytes.truncate(bytes.len() - 4096);
        let e = inspect_bytes(&bytes).unwrap_err().to_string();
        assert!(e.contains("runs past the end"), "{e}");
        assert!(inspect_bytes(&[]).is_err());
        assert!(inspect_bytes(&[0u8; 100]).is_err());
    }
}

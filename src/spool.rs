//! The spool: the snapshot stream written to a private local file while sha256 and length are
//! computed on the fly, so the bytes can be proven sound before anything is uploaded.
//!
//! Rules (spec §1.2–§1.4): the DB length is announced by the first message
//! (`remaining_bytes + len(blob)`); exactly 32 bytes must follow the DB, and they must equal the
//! sha256 of the DB bytes. The file is `<dir>/<name>.part` (0600) until `finish` fsyncs and renames
//! it; any other exit path (error, signal, panic) removes it.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::etcd::SnapshotSink;
use crate::fsutil::{commit_file, create_private, Progress, RemoveOnDrop};

pub const TRAILER_LEN: u64 = 32;

pub struct Spool {
    part: RemoveOnDrop,
    dest: PathBuf,
    out: BufWriter<File>,
    db_len: Option<u64>,
    written: u64,
    db_hash: Sha256,
    trailer: Vec<u8>,
    progress: Progress,
}

/// A verified-length, trailer-checked snapshot file on local disk. Removed when dropped unless
/// `keep` is called.
#[derive(Debug)]
pub struct SpooledSnapshot {
    guard: Option<RemoveOnDrop>,
    pub path: PathBuf,
    pub db_len: u64,
    pub file_len: u64,
    pub db_sha256: [u8; 32],
}

impl SpooledSnapshot {
    pub fn keep(mut self) -> PathBuf {
        if let Some(g) = self.guard.take() {
            g.disarm();
        }
        self.path.clone()
    }
}

impl Spool {
    pub fn create(dir: &Path, name: &str, progress: Progress) -> Result<Self> {
        let dest = dir.join(name);
        let part_path = dir.join(format!("{name}.part"));
        let file = create_private(&part_path)?;
        Ok(Spool {
            part: RemoveOnDrop::new(part_path),
            dest,
            out: BufWriter::with_capacity(1 << 20, file),
            db_len: None,
            written: 0,
            db_hash: Sha256::new(),
            trailer: Vec::with_capacity(32),
            progress,
        })
    }

    /// Check the length and the trailer, fsync, rename `.part` → final name.
    pub fn finish(self) -> Result<SpooledSnapshot> {
        let db_len = self
            .db_len
            .ok_or_else(|| Error::Etcd("snapshot stream carried no data".into()))?;
        if self.written < db_len {
            return Err(Error::Etcd(format!(
                "snapshot stream ended early: got {} of the {db_len} database bytes the server announced",
                self.written
            )));
        }
        if self.trailer.len() as u64 != TRAILER_LEN {
            return Err(Error::Etcd(format!(
                "snapshot stream sent {} bytes after the database where exactly 32 (the sha256 trailer) were expected",
                self.trailer.len()
            )));
        }
        let digest: [u8; 32] = self.db_hash.finalize().into();
        if digest[..] != self.trailer[..] {
            return Err(Error::Verify(format!(
                "snapshot stream trailer {} does not match the sha256 of the received database {}",
                hex::encode(&self.trailer),
                hex::encode(digest)
            )));
        }
        let Spool {
            part,
            dest,
            out,
            written,
            ..
        } = self;
        let file = out
            .into_inner()
            .map_err(|e| Error::io(format!("writing {}", part.path().display()), e.into_error()))?;
        commit_file(&file, part.path(), &dest)?;
        part.disarm();
        tracing::debug!(path = %dest.display(), bytes = written, "snapshot spooled");
        Ok(SpooledSnapshot {
            guard: Some(RemoveOnDrop::new(dest.clone())),
            path: dest,
            db_len,
            file_len: written,
            db_sha256: digest,
        })
    }

    pub fn progress_line(&self) -> String {
        self.progress.line()
    }
}

impl SnapshotSink for Spool {
    fn announce(&mut self, db_len: u64) -> Result<()> {
        if db_len == 0 || db_len % 512 != 0 {
            return Err(Error::Etcd(format!(
                "snapshot stream announced a database of {db_len} bytes, which is not a whole number of bbolt pages"
            )));
        }
        self.db_len = Some(db_len);
        self.progress.set_total(db_len + TRAILER_LEN);
        Ok(())
    }

    fn write(&mut self, chunk: &[u8]) -> Result<()> {
        let db_len = self
            .db_len
            .ok_or_else(|| Error::Internal("spool written before announce".into()))?;
        let in_db = db_len.saturating_sub(self.written).min(chunk.len() as u64) as usize;
        let (db_part, rest) = chunk.split_at(in_db);
        self.db_hash.update(db_part);
        if self.trailer.len() + rest.len() > TRAILER_LEN as usize {
            return Err(Error::Etcd(format!(
                "snapshot stream sent more bytes than announced: the server said {db_len} + 32, got at least {}",
                self.written + chunk.len() as u64
            )));
        }
        self.trailer.extend_from_slice(rest);
        self.out.write_all(chunk).map_err(|e| {
            Error::io(
                format!("writing spool file {}", self.part.path().display()),
                e,
            )
        })?;
        self.written += chunk.len() as u64;
        self.progress.add(chunk.len() as u64);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn spool(dir: &Path) -> Spool {
        Spool::create(
            dir,
            "s.db",
            Progress::new("test", None, Duration::from_secs(3600)),
        )
        .unwrap()
    }

    fn db(n: usize) -> (Vec<u8>, Vec<u8>) {
        let db: Vec<u8> = (0..n).map(|i| (i * 7) as u8).collect();
        let t = Sha256::digest(&db).to_vec();
        (db, t)
    }

    #[test]
    fn good_stream_is_committed() {
        let d = tempfile::tempdir().unwrap();
        let (db, t) = db(4096);
        let mut s = spool(d.path());
        s.announce(4096).unwrap();
        s.write(&db[..1000]).unwrap();
        let mut tail = db[1000..].to_vec();
        tail.extend_from_slice(&t[..5]);
        s.write(&tail).unwrap();
        s.write(&t[5..]).unwrap();
        let snap = s.finish().unwrap();
        assert_eq!(snap.file_len, 4128);
        assert_eq!(std::fs::read(&snap.path).unwrap().len(), 4128);
        assert!(!d.path().join("s.db.part").exists());
        let p = snap.path.clone();
        drop(snap);
        assert!(!p.exists(), "spooled file is temporary unless kept");
    }

    #[test]
    fn bad_streams_leave_nothing() {
        let (db, t) = db(4096);
        let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
            ("ended early", vec![db[..4000].to_vec()]),
            ("exactly 32", vec![db.clone(), t[..31].to_vec()]),
            ("does not match", vec![db.clone(), vec![0u8; 32]]),
            (
                "more bytes than announced",
                vec![db.clone(), t.clone(), vec![1]],
            ),
        ];
        for (want, chunks) in cases {
            let d = tempfile::tempdir().unwrap();
            let mut s = spool(d.path());
            s.announce(4096).unwrap();
            let r = chunks
                .iter()
                .try_for_each(|c| s.write(c))
                .and_then(|_| s.finish().map(|_| ()));
            let e = r.unwrap_err().to_string();
            assert!(e.contains(want), "{want}: {e}");
            assert_eq!(
                std::fs::read_dir(d.path()).unwrap().count(),
                0,
                "{want}: files left behind"
            );
        }
        let d = tempfile::tempdir().unwrap();
        assert!(spool(d.path())
            .announce(1000)
            .unwrap_err()
            .to_string()
            .contains("bbolt pages"));
    }
}

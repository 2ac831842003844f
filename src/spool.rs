//! The spool: the snapshot stream written to a private local file, readable *while it grows*.
//!
//! Rules (spec §1.2–§1.4): the DB length is announced by the first message
//! (`remaining_bytes + len(blob)`); exactly 32 bytes must follow the DB. The file is
//! `<dir>/<name>.part` (0600) until `finish` renames it; any other exit path (error,
//! signal, panic) removes it and tells the readers the stream failed.
//!
//! Readers ([`GrowingFile`]) can follow the writer: a read blocks until the bytes it asks for have
//! been written. That lets the backup verify (sha256 + bbolt check + status) and compress the
//! snapshot *during* the stream, from the page cache, instead of reading it again afterwards. The
//! sha256 against the trailer is therefore checked by the verifier (`snapshot::scan`), not here.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use crate::error::{Error, Result};
use crate::etcd::SnapshotSink;
use crate::fsutil::{create_private, Progress, RemoveOnDrop};
use crate::snapshot::cursor::ReadAt;

pub const TRAILER_LEN: u64 = 32;

#[derive(Debug, Default)]
struct GrowthState {
    written: u64,
    /// `db_len + 32`, known once the stream announced itself.
    total: Option<u64>,
    /// `Some(true)` finished whole, `Some(false)` failed.
    finished: Option<bool>,
}

/// How far the spool file has been written; shared with its readers. Threads wait on the condvar
/// ([`ReadAt`]), async tasks on the notifier ([`GrowingFile::wait_written`]).
#[derive(Debug, Default)]
pub struct Growth {
    state: Mutex<GrowthState>,
    cond: Condvar,
    notify: tokio::sync::Notify,
}

impl Growth {
    fn update(&self, f: impl FnOnce(&mut GrowthState)) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut st);
        drop(st);
        self.cond.notify_all();
        self.notify.notify_waiters();
    }

    fn view(&self) -> (u64, Option<bool>) {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        (st.written, st.finished)
    }

    /// Mark the stream failed: every waiting reader gets an error.
    pub fn fail(&self) {
        self.update(|s| {
            if s.finished.is_none() {
                s.finished = Some(false)
            }
        });
    }

    /// Wait until `pred` holds or the stream ends; `Err` if it failed.
    fn wait_for(&self, pred: impl Fn(&GrowthState) -> bool) -> std::io::Result<GrowthStateView> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if st.finished == Some(false) {
                return Err(std::io::Error::other("the snapshot stream failed"));
            }
            if pred(&st) || st.finished == Some(true) {
                return Ok(GrowthStateView {
                    written: st.written,
                    total: st.total,
                });
            }
            st = self.cond.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }
}

struct GrowthStateView {
    written: u64,
    total: Option<u64>,
}

/// A read handle on the spool file that waits for the writer.
pub struct GrowingFile {
    file: File,
    growth: Arc<Growth>,
}

/// How much of a [`GrowingFile`] exists (see [`GrowingFile::wait_written`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Bytes written so far.
    pub written: u64,
    /// The final length, once the writer finished successfully.
    pub finished: Option<u64>,
}

impl GrowingFile {
    /// A file that is already complete (`len` bytes): the same interface for a finished file.
    pub fn complete(file: File, len: u64) -> Self {
        let growth = Growth::default();
        growth.update(|s| {
            s.written = len;
            s.total = Some(len);
            s.finished = Some(true);
        });
        GrowingFile {
            file,
            growth: Arc::new(growth),
        }
    }

    /// Wait (async) until at least `len` bytes are written or the writer finished; `Err` if the
    /// writer failed (a failed stream, a failed compressor, or a writer dropped half-way).
    pub async fn wait_written(&self, len: u64) -> std::io::Result<Written> {
        loop {
            let notified = self.growth.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (written, finished) = self.growth.view();
            match finished {
                Some(false) => return Err(std::io::Error::other("the snapshot stream failed")),
                Some(true) => {
                    return Ok(Written {
                        written,
                        finished: Some(written),
                    })
                }
                None if written >= len => {
                    return Ok(Written {
                        written,
                        finished: None,
                    })
                }
                None => notified.await,
            }
        }
    }

    /// The open file (for positional reads and `/proc/self/fd` reopening).
    pub fn file(&self) -> &File {
        &self.file
    }
    /// The final file length (`db_len + 32`), once the stream announced it.
    pub fn wait_total(&self) -> std::io::Result<u64> {
        let v = self.growth.wait_for(|s| s.total.is_some())?;
        v.total.ok_or_else(|| {
            std::io::Error::other("the snapshot stream ended before announcing its size")
        })
    }
}

impl ReadAt for GrowingFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        let end = offset.saturating_add(buf.len() as u64);
        let v = self
            .growth
            .wait_for(|s| s.total.is_some_and(|t| s.written >= end.min(t)))?;
        let avail = v.written.saturating_sub(offset).min(buf.len() as u64) as usize;
        std::os::unix::fs::FileExt::read_at(&self.file, &mut buf[..avail], offset)
    }
}

/// The writing side of a [`GrowingFile`] that is not the spool (e.g. the zstd output): every write
/// is announced to the readers; [`GrowingWriter::finish`] tells them the final length. Dropped
/// unfinished (error, signal, panic), it tells them the writer failed.
pub struct GrowingWriter {
    file: File,
    written: u64,
    growth: Arc<Growth>,
    done: bool,
}

impl GrowingWriter {
    /// Wrap `file` (empty, opened for writing); the reader reads `reader` (the same file).
    pub fn new(file: File, reader: File) -> (GrowingWriter, GrowingFile) {
        let growth = Arc::new(Growth::default());
        (
            GrowingWriter {
                file,
                written: 0,
                growth: growth.clone(),
                done: false,
            },
            GrowingFile {
                file: reader,
                growth,
            },
        )
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Everything is written: readers see the final length.
    pub fn finish(mut self) {
        self.done = true;
        let len = self.written;
        self.growth.update(|s| {
            s.total = Some(len);
            s.finished = Some(true);
        });
    }
}

impl Write for GrowingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        let written = self.written;
        self.growth.update(|s| s.written = written);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl Drop for GrowingWriter {
    fn drop(&mut self) {
        if !self.done {
            self.growth.fail();
        }
    }
}

pub struct Spool {
    part: RemoveOnDrop,
    dest: PathBuf,
    out: File,
    db_len: Option<u64>,
    written: u64,
    growth: Arc<Growth>,
    progress: Progress,
}

/// A length-checked snapshot file on local disk. Removed when dropped unless `keep` is called.
#[derive(Debug)]
pub struct SpooledSnapshot {
    guard: Option<RemoveOnDrop>,
    pub path: PathBuf,
    pub db_len: u64,
    pub file_len: u64,
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
        let out = create_private(&part_path)?;
        Ok(Spool {
            part: RemoveOnDrop::new(part_path),
            dest,
            out,
            db_len: None,
            written: 0,
            growth: Arc::new(Growth::default()),
            progress,
        })
    }

    /// A reader that follows the writer (see [`GrowingFile`]).
    pub fn reader(&self) -> Result<GrowingFile> {
        let file = File::open(self.part.path())
            .map_err(|e| Error::io(format!("opening {}", self.part.path().display()), e))?;
        Ok(GrowingFile {
            file,
            growth: self.growth.clone(),
        })
    }

    /// Check the length, fsync, rename `.part` → final name, and release the readers.
    pub fn finish(mut self) -> Result<SpooledSnapshot> {
        let db_len = self
            .db_len
            .ok_or_else(|| Error::Etcd("snapshot stream carried no data".into()))?;
        if self.written < db_len {
            return Err(Error::Etcd(format!(
                "snapshot stream ended early: got {} of the {db_len} database bytes the server announced",
                self.written
            )));
        }
        if self.written != db_len + TRAILER_LEN {
            return Err(Error::Etcd(format!(
                "snapshot stream sent {} bytes after the database where exactly 32 (the sha256 trailer) were expected",
                self.written - db_len
            )));
        }
        // No fsync: the spool is a temporary file, deleted after the run; durability belongs to
        // the stored object (the store fsyncs it).
        std::fs::rename(self.part.path(), &self.dest)
            .map_err(|e| Error::io(format!("renaming {}", self.part.path().display()), e))?;
        std::mem::replace(&mut self.part, RemoveOnDrop::disarmed()).disarm();
        self.growth.update(|s| s.finished = Some(true));
        let dest = self.dest.clone();
        tracing::debug!(path = %dest.display(), bytes = self.written, "snapshot spooled");
        Ok(SpooledSnapshot {
            guard: Some(RemoveOnDrop::new(dest.clone())),
            path: dest,
            db_len,
            file_len: self.written,
        })
    }

    pub fn progress_line(&self) -> String {
        self.progress.line()
    }
}

impl Drop for Spool {
    /// Not finished (error, signal, panic): readers must not wait forever.
    fn drop(&mut self) {
        self.growth.fail();
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
        self.growth.update(|s| s.total = Some(db_len + TRAILER_LEN));
        Ok(())
    }

    fn write(&mut self, chunk: &[u8]) -> Result<()> {
        let db_len = self
            .db_len
            .ok_or_else(|| Error::Internal("spool written before announce".into()))?;
        let after = self.written + chunk.len() as u64;
        if after > db_len + TRAILER_LEN {
            return Err(Error::Etcd(format!(
                "snapshot stream sent more bytes than announced: the server said {db_len} + 32, got at least {after}"
            )));
        }
        self.out.write_all(chunk).map_err(|e| {
            Error::io(
                format!("writing spool file {}", self.part.path().display()),
                e,
            )
        })?;
        self.written = after;
        self.growth.update(|s| s.written = after);
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

    #[test]
    fn good_stream_is_committed_and_readers_follow_it() {
        let d = tempfile::tempdir().unwrap();
        let db: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
        let mut s = spool(d.path());
        let reader = s.reader().unwrap();
        let follower = std::thread::spawn(move || {
            let total = reader.wait_total().unwrap();
            let mut buf = vec![0u8; total as usize];
            let n = reader.read_at(&mut buf, 0).unwrap();
            (total, n, buf)
        });
        s.announce(4096).unwrap();
        s.write(&db[..1000]).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        s.write(&db[1000..]).unwrap();
        s.write(&[9u8; 32]).unwrap();
        let snap = s.finish().unwrap();
        let (total, n, buf) = follower.join().unwrap();
        assert_eq!((total, n), (4128, 4128));
        assert_eq!(&buf[..4096], &db[..]);
        assert_eq!(snap.file_len, 4128);
        assert!(!d.path().join("s.db.part").exists());
        let p = snap.path.clone();
        drop(snap);
        assert!(!p.exists(), "spooled file is temporary unless kept");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn async_readers_follow_a_growing_writer() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("out");
        let (mut w, r) = GrowingWriter::new(create_private(&p).unwrap(), File::open(&p).unwrap());
        let waiter = r.wait_written(10);
        tokio::pin!(waiter);
        assert!(futures_util::FutureExt::now_or_never(waiter.as_mut()).is_none());
        w.write_all(&[1; 6]).unwrap();
        assert!(futures_util::FutureExt::now_or_never(waiter.as_mut()).is_none());
        w.write_all(&[2; 6]).unwrap();
        let got = waiter.await.unwrap();
        assert_eq!((got.written, got.finished), (12, None));
        w.finish();
        let got = r.wait_written(1000).await.unwrap();
        assert_eq!(got.finished, Some(12));
        let mut buf = [0u8; 12];
        assert_eq!(r.read_at(&mut buf, 0).unwrap(), 12);
        // A writer dropped half-way fails its readers.
        let p = d.path().join("out2");
        let (mut w, r) = GrowingWriter::new(create_private(&p).unwrap(), File::open(&p).unwrap());
        w.write_all(&[1; 6]).unwrap();
        drop(w);
        assert!(r.wait_written(10).await.is_err());
        let done = GrowingFile::complete(File::open(&p).unwrap(), 6);
        assert_eq!(done.wait_written(100).await.unwrap().finished, Some(6));
    }

    #[test]
    fn bad_streams_leave_nothing_and_release_readers() {
        let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
            ("ended early", vec![vec![0; 4000]]),
            ("exactly 32", vec![vec![0; 4096], vec![0; 31]]),
            (
                "more bytes than announced",
                vec![vec![0; 4096], vec![0; 32], vec![1]],
            ),
        ];
        for (want, chunks) in cases {
            let d = tempfile::tempdir().unwrap();
            let mut s = spool(d.path());
            let reader = s.reader().unwrap();
            let follower = std::thread::spawn(move || reader.read_at(&mut [0u8; 8192], 0));
            s.announce(4096).unwrap();
            let r = chunks
                .iter()
                .try_for_each(|c| s.write(c))
                .and_then(|_| s.finish().map(|_| ()));
            let e = r.unwrap_err().to_string();
            assert!(e.contains(want), "{want}: {e}");
            assert!(
                follower.join().unwrap().is_err(),
                "{want}: reader not told of the failure"
            );
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

//! `etcd-lifeboat backup`: orchestration only.
//!
//! preflight → stream into the spool (sha256 + length on the fly) → prove it sound (trailer, bbolt
//! integrity, status) → compress → put the object → write the manifest (last: the commit marker)
//! → read it back. Every temporary file is owned by a guard in this async scope, so an error or a
//! signal (the future is dropped) leaves nothing partial behind, locally or in the store.
//!
//! Verification and zstd follow the stream; with S3 so does the multipart upload (parts of the
//! growing spool or zstd output, sent as their bytes arrive), which is completed only after the
//! checks passed and aborted on any failure. Its key is fixed before the first part, so the
//! backup's id (`<time>-r<revision>`) carries the revision seen in preflight: the snapshot, taken
//! just after from the same member, holds at least that revision (a lagging member is refused);
//! the manifest records the snapshot's own revision.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};

use crate::config::Env;
use crate::error::{Error, Result};
use crate::etcd::{self, EtcdConfig};
use crate::fsutil::{create_private, free_space, mib, Progress, RemoveOnDrop};
use crate::lock::RunLock;
use crate::manifest::{self, Durations, Manifest, StatusRecord};
use crate::snapshot::cursor::ReadAt;
use crate::snapshot::{self, Trailer};
use crate::spool::{GrowingFile, GrowingWriter, Spool};
use crate::store::{Location, Store, StoreConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Zstd(i32),
}

impl Compression {
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Zstd(_) => "zstd",
        }
    }
}

/// `LIFEBOAT_VERIFY_UPLOAD`: how much of the upload is read back before the manifest is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyUpload {
    /// The store's size of the object (HEAD), and the manifest read back.
    Size,
    /// Also download the object again and compare its sha256 with the manifest's.
    Full,
}

#[derive(Debug, Clone)]
pub struct BackupConfig {
    pub etcd: EtcdConfig,
    pub store: StoreConfig,
    pub cluster_name: String,
    pub spool_dir: PathBuf,
    pub compression: Compression,
    pub progress_interval: Duration,
    pub verify_upload: VerifyUpload,
}

impl BackupConfig {
    pub fn from_env(env: &Env) -> Result<Self> {
        let store = StoreConfig::from_env(env, "file:///var/lib/etcd-lifeboat/backups")?;
        let cluster_name = env
            .get("LIFEBOAT_CLUSTER_NAME")
            .unwrap_or("default")
            .to_string();
        manifest::check_cluster_name(&cluster_name)?;
        // A presigned URL gets the raw snapshot, exactly as `etcdctl snapshot save` writes it, so
        // that HyperShift's restoreSnapshotURL and `etcdutl snapshot restore` can consume it.
        let default_compression = match store.location {
            Location::Presigned(_) => "none",
            _ => "zstd",
        };
        let compression = match env
            .choice(
                "LIFEBOAT_COMPRESSION",
                default_compression,
                &["zstd", "none"],
            )?
            .as_str()
        {
            "none" => Compression::None,
            _ => {
                let raw = env.get("LIFEBOAT_ZSTD_LEVEL").unwrap_or("-1");
                let level: i32 = raw.parse().ok().filter(|l| (-7..=19).contains(l)).ok_or_else(|| {
                    Error::Config(format!("LIFEBOAT_ZSTD_LEVEL: expected -7 (fastest) to 19 (smallest), got {raw:?}"))
                })?;
                if level == 0 {
                    return Err(Error::Config("LIFEBOAT_ZSTD_LEVEL: 0 is not a level; use -1 (fast, the default), 1 to 3 (smaller objects for more CPU) or another level from -7 to 19".into()));
                }
                Compression::Zstd(level)
            }
        };
        let spool_dir = env.path("LIFEBOAT_SPOOL_DIR", "/tmp");
        if !spool_dir.is_dir() {
            return Err(Error::Config(format!(
                "LIFEBOAT_SPOOL_DIR: {} is not a directory",
                spool_dir.display()
            )));
        }
        let verify_upload = match env
            .choice("LIFEBOAT_VERIFY_UPLOAD", "size", &["size", "full"])?
            .as_str()
        {
            "full" => VerifyUpload::Full,
            _ => VerifyUpload::Size,
        };
        if verify_upload == VerifyUpload::Full && matches!(store.location, Location::Presigned(_)) {
            return Err(Error::Config(
                "LIFEBOAT_VERIFY_UPLOAD=full needs to download the object again, which a presigned PUT URL cannot do (it is signed for PUT only); use the default `size` with a presigned URL, or LIFEBOAT_STORE=s3://bucket/prefix".into(),
            ));
        }
        Ok(BackupConfig {
            verify_upload,
            etcd: EtcdConfig::from_env(env)?,
            store,
            cluster_name,
            spool_dir,
            compression,
            progress_interval: env.duration("LIFEBOAT_PROGRESS_INTERVAL", "10s")?,
        })
    }
}

/// Writes through to `inner` while hashing and counting.
struct HashingWriter<W> {
    inner: W,
    hash: Sha256,
    len: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Sequential `Read` over a `ReadAt` (the growing spool file), up to `end`.
struct ReadAtCursor<'a, R: ReadAt> {
    src: &'a R,
    off: u64,
    end: u64,
}

impl<R: ReadAt> Read for ReadAtCursor<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = (self.end.saturating_sub(self.off)).min(buf.len() as u64) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = self.src.read_at(&mut buf[..want], self.off)?;
        self.off += n as u64;
        Ok(n)
    }
}

/// Compress the growing spool file into `out` with zstd as it arrives; returns (size, sha256) of
/// the compressed object. `out` tells its own readers (the S3 upload) how far it got. `sync`: fsync
/// before telling them it is complete (for a file that becomes the stored object itself).
fn compress(
    src: &GrowingFile,
    out: GrowingWriter,
    dest: &Path,
    level: i32,
    sync: bool,
) -> Result<(u64, [u8; 32])> {
    let io = |what: &str, e| Error::io(format!("{what} {}", dest.display()), e);
    let total = src.wait_total().map_err(|e| io("compressing into", e))?;
    let mut w = HashingWriter {
        inner: std::io::BufWriter::with_capacity(1 << 20, out),
        hash: Sha256::new(),
        len: 0,
    };
    let mut enc =
        zstd::stream::Encoder::new(&mut w, level).map_err(|e| io("compressing into", e))?;
    // Single-threaded on purpose: the stream and the verifier need the other core, and zstd's
    // multithreaded mode holds ~40 MiB of job buffers.
    let mut input = ReadAtCursor {
        src,
        off: 0,
        end: total,
    };
    // 1 MiB reads: `io::copy`'s 8 KiB buffer would cost ~120,000 reads per GiB.
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = input
            .read(&mut buf)
            .map_err(|e| io("compressing into", e))?;
        if n == 0 {
            break;
        }
        enc.write_all(&buf[..n])
            .map_err(|e| io("compressing into", e))?;
    }
    enc.finish().map_err(|e| io("compressing into", e))?;
    let out = w
        .inner
        .into_inner()
        .map_err(|e| io("writing", e.into_error()))?;
    if sync {
        out.file().sync_all().map_err(|e| io("fsync of", e))?;
    }
    out.finish();
    Ok((w.len, w.hash.finalize().into()))
}

/// `LIFEBOAT_VERIFY_UPLOAD=full`: the object read back (`got`: size, sha256) must be what was
/// uploaded, i.e. what the manifest will record.
pub fn check_read_back(
    key: &str,
    size: u64,
    sha256: &[u8; 32],
    got: (u64, [u8; 32]),
) -> Result<()> {
    if got == (size, *sha256) {
        return Ok(());
    }
    Err(Error::Store(format!(
        "read-back of {key} (LIFEBOAT_VERIFY_UPLOAD=full): the store returned {} bytes with sha256 {}, but {size} bytes with sha256 {} were uploaded; the store damaged the object (it was deleted; check the store's health and run the backup again)",
        got.0,
        hex::encode(got.1),
        hex::encode(sha256)
    )))
}

/// Wait for a worker thread without blocking the runtime.
async fn join<T: Send + 'static>(h: std::thread::JoinHandle<Result<T>>) -> Result<T> {
    tokio::task::spawn_blocking(move || h.join())
        .await
        .map_err(|e| Error::Internal(format!("worker thread failed: {e}")))?
        .map_err(|_| Error::Internal("worker thread panicked".into()))?
}

/// Run one backup. `clock` gives the backup's creation time (tests pin it).
pub async fn run(cfg: &BackupConfig, clock: &(dyn Fn() -> SystemTime + Sync)) -> Result<Manifest> {
    let t0 = Instant::now();
    let _spool_lock = RunLock::acquire(
        &cfg.spool_dir
            .join(format!(".etcd-lifeboat-{}.lock", cfg.cluster_name)),
    )?;
    let store = Store::open(&cfg.store).await?;
    let caps = store.capabilities();
    // An already expired presigned URL: refuse before anything is uploaded that could not be
    // completed (a PUT URL cannot delete what it wrote).
    store.check_expiry(Duration::from_secs(600))?;
    let _store_lock = match &cfg.store.location {
        Location::Local(dir) => {
            crate::fsutil::create_dir_private(&dir.join(&cfg.cluster_name))?;
            Some(RunLock::acquire(
                &dir.join(&cfg.cluster_name).join(".etcd-lifeboat.lock"),
            )?)
        }
        _ => None,
    };

    let pre = etcd::preflight(&cfg.etcd).await?;
    let chosen = pre.chosen.clone();
    let preflight_time = t0.elapsed();
    crate::testhook::pause_async("LIFEBOAT_TEST_PAUSE_AFTER_PREFLIGHT").await;

    let factor = if cfg.compression == Compression::None {
        1.0
    } else {
        1.5
    };
    let needed = (chosen.db_size as f64 * factor) as u64 + (16 << 20);
    let free = free_space(&cfg.spool_dir)?;
    if free < needed {
        return Err(Error::io(
            format!(
                "spool dir {} has {} free but the snapshot of a {} database needs about {}; give LIFEBOAT_SPOOL_DIR more room (emptyDir sizeLimit)",
                cfg.spool_dir.display(), mib(free), mib(chosen.db_size), mib(needed)
            ),
            std::io::Error::from_raw_os_error(libc::ENOSPC),
        ));
    }

    let created = clock();
    let name = format!(
        "etcd-lifeboat-{}-{}.db",
        cfg.cluster_name,
        std::process::id()
    );
    tracing::info!(endpoint = %chosen.endpoint, member = %chosen.member_name, db_size = chosen.db_size, "streaming snapshot");
    let t_stream = Instant::now();
    let mut spool = Spool::create(
        &cfg.spool_dir,
        &name,
        Progress::new("snapshot", Some(chosen.db_size), cfg.progress_interval),
    )?;
    // Verify (sha256 vs trailer, bbolt check, status) and compress *while* the stream arrives: both
    // follow the spool writer from the page cache, so nothing is read back from disk afterwards.
    let verify_src = spool.reader()?;
    let verify_name = name.clone();
    let verifier = std::thread::spawn(move || -> Result<snapshot::Report> {
        let total = verify_src
            .wait_total()
            .map_err(|e| Error::Etcd(e.to_string()))?;
        snapshot::scan::scan(&verify_src, total, &verify_name)
            .map_err(|e| Error::Verify(e.to_string()))
    });
    let s3 = match &store {
        Store::S3(s) => Some(s),
        _ => None,
    };
    // What an S3 upload can follow while it grows: the zstd output, or the spool itself.
    let mut upload_src: Option<(GrowingFile, PathBuf)> = None;
    let mut compressed_guard = None;
    let compressor = match cfg.compression {
        Compression::None => {
            if s3.is_some() {
                let r = spool.reader()?;
                // The spool is renamed when the stream ends: parts reopen it by descriptor.
                if let Some(path) = crate::store::s3::reopen_path(r.file()) {
                    upload_src = Some((r, path));
                }
            }
            None
        }
        Compression::Zstd(level) => {
            let dest = cfg.spool_dir.join(format!("{name}.zst"));
            let out = create_private(&dest)?;
            compressed_guard = Some(RemoveOnDrop::new(dest.clone()));
            let reader = File::open(&dest)
                .map_err(|e| Error::io(format!("opening {}", dest.display()), e))?;
            let (out, follower) = GrowingWriter::new(out, reader);
            if s3.is_some() {
                upload_src = Some((follower, dest.clone()));
            }
            let src = spool.reader()?;
            let sync = s3.is_none();
            let d2 = dest.clone();
            Some((
                dest,
                std::thread::spawn(move || compress(&src, out, &d2, level, sync)),
            ))
        }
    };

    // With S3 the multipart upload follows the growing file while the snapshot streams; it is
    // completed only after every check below passed, and aborted otherwise. Its key is fixed now:
    // the id carries the preflight revision (see the module docs).
    let object_name = manifest::object_name(cfg.compression.name());
    let id = manifest::backup_id(created, chosen.revision);
    let dir = manifest::backup_dir(&cfg.cluster_name, &id);
    let object_key = format!("{dir}/{object_name}");
    let mut early = match (s3, upload_src) {
        (Some(s), Some((src, path))) => {
            Some(s.growing_upload(&object_key, std::sync::Arc::new(src), path))
        }
        _ => None,
    };

    let checks = async {
        etcd::stream_snapshot(&cfg.etcd, &chosen.endpoint, &mut spool).await?;
        tracing::info!("{}", spool.progress_line());
        let spooled = spool.finish()?;
        let stream_time = t_stream.elapsed();

        let t_verify = Instant::now();
        let report = join(verifier).await?;
        report.verdict().map_err(Error::Verify)?;
        if report.trailer != Trailer::Verified || report.file_len != spooled.file_len {
            return Err(Error::Verify(format!(
                "the snapshot's sha256 trailer could not be verified ({:?}, {} of {} bytes)",
                report.trailer, report.file_len, spooled.file_len
            )));
        }
        let status = &report.status;
        if status.revision < chosen.revision && !(status.revision == 0 && chosen.revision <= 1) {
            return Err(Error::Verify(format!(
                "snapshot revision {} is older than the revision {} seen in preflight: the snapshot came from a lagging member",
                status.revision, chosen.revision
            )));
        }
        let verify_time = t_verify.elapsed();

        let t_compress = Instant::now();
        let (upload_path, stored_size, stored_sha) = match compressor {
            None => (spooled.path.clone(), spooled.file_len, report.file_sha256),
            Some((dest, handle)) => {
                let (size, sha) = join(handle).await?;
                (dest, size, sha)
            }
        };
        let compress_time = t_compress.elapsed();
        Ok((
            spooled,
            report,
            upload_path,
            stored_size,
            stored_sha,
            [stream_time, verify_time, compress_time],
        ))
    };
    let checks = async {
        let c = checks.await?;
        Ok((c, Instant::now()))
    };
    let mut parts_stored_at = None;
    let checked = match early.as_mut() {
        Some(up) => tokio::try_join!(checks, async {
            up.drive().await?;
            parts_stored_at = Some(Instant::now());
            Ok(())
        })
        .map(|(c, _)| c),
        None => checks.await,
    };
    let ((_spooled, report, upload_path, stored_size, stored_sha, times), checked_at) =
        match checked {
            Ok(c) => c,
            Err(e) => {
                if let Some(up) = early.take() {
                    up.abort().await;
                }
                return Err(e);
            }
        };
    let [stream_time, verify_time, compress_time] = times;
    let status = &report.status;

    let t_upload = Instant::now();
    let put = match early {
        Some(up) if up.started() => {
            let lag =
                parts_stored_at.map_or(Duration::ZERO, |t| t.saturating_duration_since(checked_at));
            let t_complete = Instant::now();
            let put = up.complete().await?;
            tracing::info!(
                parts_after_checks_ms = manifest::ms(lag),
                complete_ms = manifest::ms(t_complete.elapsed()),
                "multipart upload (streamed during the snapshot) completed"
            );
            put
        }
        Some(up) => {
            up.abort().await;
            store.put_file_moving(&object_key, &upload_path).await?
        }
        None => store.put_file_moving(&object_key, &upload_path).await?,
    };
    drop(compressed_guard);
    // A presigned URL is signed for PUT only: the store's own success answer is all there is.
    let stored = match caps.read_back {
        true => store.head(&object_key).await?.map(|h| h.size),
        false => Some(put.size),
    };
    if stored != Some(stored_size) || put.size != stored_size {
        let _ = store.delete(&object_key).await;
        return Err(Error::Store(format!(
            "read-back of {object_key} failed: expected {stored_size} bytes, store reports {stored:?}"
        )));
    }
    if cfg.verify_upload == VerifyUpload::Full {
        let t = Instant::now();
        let back = store.hash_object(&object_key).await;
        let checked =
            back.and_then(|got| check_read_back(&object_key, stored_size, &stored_sha, got));
        if let Err(e) = checked {
            let _ = store.delete(&object_key).await;
            return Err(e);
        }
        tracing::info!(
            ms = manifest::ms(t.elapsed()),
            "read-back: object downloaded again, sha256 matches"
        );
    }
    let upload_time = t_upload.elapsed();

    let m = Manifest {
        format_version: manifest::FORMAT_VERSION,
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        backup_id: id.clone(),
        cluster_name: cfg.cluster_name.clone(),
        created: manifest::rfc3339(created),
        cluster_id: chosen.cluster_id.clone(),
        member_id: chosen.member_id.clone(),
        member_name: chosen.member_name.clone(),
        endpoint: chosen.endpoint.clone(),
        etcd_version: chosen.version.clone(),
        revision: status.revision,
        raft_term: chosen.raft_term,
        raft_index: chosen.raft_index,
        status: StatusRecord {
            hash: status.hash,
            revision: status.revision,
            total_key: status.total_key,
            total_size: status.total_size,
        },
        db_sha256: hex::encode(report.db_sha256),
        db_size: report.db_len,
        snapshot_size: report.file_len,
        snapshot_sha256: hex::encode(report.file_sha256),
        object_key: object_key.clone(),
        compression: cfg.compression.name().to_string(),
        stored_size,
        stored_sha256: hex::encode(stored_sha),
        durations: Durations {
            preflight_ms: manifest::ms(preflight_time),
            stream_ms: manifest::ms(stream_time),
            verify_ms: manifest::ms(verify_time),
            compress_ms: manifest::ms(compress_time),
            upload_ms: manifest::ms(upload_time),
            total_ms: manifest::ms(t0.elapsed()),
        },
    };
    let manifest_key = format!("{dir}/{}", manifest::MANIFEST_NAME);
    if caps.manifest {
        if let Err(e) = store.put_bytes(&manifest_key, &m.to_json()).await {
            if caps.delete {
                let _ = store.delete(&object_key).await;
            } else {
                tracing::warn!(
                    "the snapshot was uploaded to {} (complete and verified) but its manifest was not; a presigned PUT URL cannot delete it: delete it with the tool that presigned it, or run again with new URLs (it is overwritten)",
                    store.describe()
                );
            }
            return Err(e);
        }
    } else {
        tracing::warn!(
            "no manifest stored: set LIFEBOAT_MANIFEST_URL to a second presigned URL to keep one"
        );
    }
    if caps.manifest && caps.read_back {
        let back = Manifest::from_json(&manifest_key, &store.get_bytes(&manifest_key).await?)?;
        if back != m {
            return Err(Error::Store(format!(
                "read-back of {manifest_key} differs from what was written"
            )));
        }
    }
    let secs = t0.elapsed().as_secs_f64().max(1e-3);
    tracing::info!(
        backup_id = %id, revision = status.revision, db_bytes = report.db_len, stored_bytes = stored_size,
        compression = cfg.compression.name(), store = %store.describe(),
        stream_ms = m.durations.stream_ms, verify_ms = m.durations.verify_ms, compress_ms = m.durations.compress_ms,
        upload_ms = m.durations.upload_ms, total_ms = m.durations.total_ms,
        throughput = %format!("{}/s", mib((report.file_len as f64 / secs) as u64)),
        "backup complete"
    );
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> BackupConfig {
        let mut all = vec![("LIFEBOAT_ETCD_ENDPOINTS", "http://127.0.0.1:2379")];
        all.extend_from_slice(pairs);
        BackupConfig::from_env(&Env::from_pairs(all)).unwrap()
    }

    #[test]
    fn presigned_urls_get_the_raw_snapshot_unless_compression_is_set() {
        let url = "https://h/b/snap.db?X-Amz-Signature=abc";
        assert_eq!(
            cfg(&[("LIFEBOAT_STORE", url)]).compression,
            Compression::None
        );
        assert_eq!(
            cfg(&[("LIFEBOAT_STORE", url), ("LIFEBOAT_COMPRESSION", "zstd")]).compression,
            Compression::Zstd(-1)
        );
        assert_eq!(
            cfg(&[("LIFEBOAT_STORE", "file:///b")]).compression,
            Compression::Zstd(-1)
        );
        assert_eq!(
            cfg(&[
                ("LIFEBOAT_STORE", "s3://bucket/p"),
                ("AWS_REGION", "eu-west-1")
            ])
            .compression,
            Compression::Zstd(-1)
        );
    }

    #[test]
    fn verify_upload_full_is_refused_for_presigned_urls() {
        assert_eq!(cfg(&[]).verify_upload, VerifyUpload::Size);
        assert_eq!(
            cfg(&[("LIFEBOAT_VERIFY_UPLOAD", "FULL")]).verify_upload,
            VerifyUpload::Full
        );
        let env = Env::from_pairs([
            ("LIFEBOAT_STORE", "https://h/b/snap.db?X-Amz-Signature=abc"),
            ("LIFEBOAT_VERIFY_UPLOAD", "full"),
        ]);
        let e = BackupConfig::from_env(&env).unwrap_err().to_string();
        assert!(
            e.contains("LIFEBOAT_VERIFY_UPLOAD=full") && e.contains("presigned"),
            "{e}"
        );
        let env = Env::from_pairs([("LIFEBOAT_VERIFY_UPLOAD", "paranoid")]);
        let e = BackupConfig::from_env(&env).unwrap_err().to_string();
        assert!(e.contains("LIFEBOAT_VERIFY_UPLOAD"), "{e}");
    }

    #[test]
    fn read_back_compares_size_and_digest() {
        let sha: [u8; 32] = Sha256::digest(b"object").into();
        check_read_back("k", 6, &sha, (6, sha)).unwrap();
        let other: [u8; 32] = Sha256::digest(b"objecT").into();
        let e = check_read_back("c/id/snapshot.db.zst", 6, &sha, (6, other))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("c/id/snapshot.db.zst") && e.contains(&hex::encode(other)),
            "{e}"
        );
        assert!(check_read_back("k", 6, &sha, (5, sha)).is_err());
    }
}

//! `etcd-lifeboat restore`: configuration, then plan, then execute.
//!
//! Configuration is read and checked in full first (including the `{index}` template used by
//! Indexed Jobs), the snapshot is fetched and fully verified, the plan is printed, and only then is
//! anything on the target touched. Existing data is moved aside, never deleted.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::catalog;
use crate::config::Env;
use crate::error::{Error, Result};
use crate::fsutil::{mib, RemoveOnDrop};
use crate::manifest::Manifest;
use crate::restore::build::build_member;
use crate::restore::cluster::{format_id, ClusterPlan};
use crate::restore::install;
use crate::snapshot::{self, Report, Trailer};
#[cfg(test)]
use crate::store::Location;
use crate::store::{Store, StoreConfig};

/// Where the snapshot comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A snapshot file on local disk (`/path` or `file:///path`).
    File(PathBuf),
    /// `latest` or a backup id in `LIFEBOAT_STORE` / `LIFEBOAT_CLUSTER_NAME`.
    Catalog {
        store: StoreConfig,
        cluster: String,
        which: String,
    },
    /// A presigned (or loopback http) URL of a snapshot file (raw, or zstd-compressed).
    Url(StoreConfig),
}

#[derive(Debug, Clone)]
pub struct RestoreConfig {
    pub source: Source,
    pub data_dir: PathBuf,
    /// A separate WAL dir (etcd's `--wal-dir`); `None`: `<data-dir>/member/wal`.
    pub wal_dir: Option<PathBuf>,
    pub name: String,
    pub initial_cluster: String,
    pub token: String,
    pub peer_urls: String,
    pub skip_hash_check: bool,
    pub bump_revision: u64,
    pub mark_compacted: bool,
    pub dry_run: bool,
    pub spool_dir: PathBuf,
    pub progress_interval: Duration,
}

/// Replace `{index}` with the member index of an Indexed Job.
pub fn expand_index(var: &str, value: &str, index: Option<&str>) -> Result<String> {
    if !value.contains("{index}") {
        return Ok(value.to_string());
    }
    match index {
        Some(i) => Ok(value.replace("{index}", i)),
        None => Err(Error::Config(format!(
            "{var} uses {{index}} but neither JOB_COMPLETION_INDEX (Indexed Job) nor LIFEBOAT_MEMBER_INDEX is set"
        ))),
    }
}

fn parse_source(env: &Env) -> Result<Source> {
    let raw = env.get("LIFEBOAT_RESTORE_SOURCE").ok_or_else(|| {
        Error::Config("LIFEBOAT_RESTORE_SOURCE is required: a snapshot file path, `latest` or a backup id in LIFEBOAT_STORE, s3://bucket/prefix/<cluster>/<id>, or a presigned https:// URL".into())
    })?;
    if let Some(p) = raw.strip_prefix("file://") {
        return Ok(Source::File(PathBuf::from(p)));
    }
    if raw.starts_with('/') {
        return Ok(Source::File(PathBuf::from(raw)));
    }
    let lower = raw.to_ascii_lowercase();
    if lower.starts_with("https://") || lower.starts_with("http://") {
        return Ok(Source::Url(StoreConfig::parse(
            env,
            "LIFEBOAT_RESTORE_SOURCE",
            raw,
        )?));
    }
    if let Some(rest) = raw.strip_prefix("s3://") {
        // s3://bucket[/prefix]/<cluster>/<id>
        let parts: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
        if parts.len() < 3 {
            return Err(Error::Config(format!(
                "LIFEBOAT_RESTORE_SOURCE: {:?}: expected s3://bucket[/prefix]/<cluster>/<backup-id>",
                crate::store::redact_url(raw)
            )));
        }
        let (id, cluster) = (parts[parts.len() - 1], parts[parts.len() - 2]);
        let store = StoreConfig::parse(
            env,
            "LIFEBOAT_RESTORE_SOURCE",
            &format!("s3://{}", parts[..parts.len() - 2].join("/")),
        )?;
        return Ok(Source::Catalog {
            store,
            cluster: cluster.to_string(),
            which: id.to_string(),
        });
    }
    if raw.contains('/') || raw.contains(':') {
        return Err(Error::Config(format!(
            "LIFEBOAT_RESTORE_SOURCE: {:?} is neither an absolute path, a URL, `latest` nor a backup id",
            crate::store::redact_url(raw)
        )));
    }
    let store = StoreConfig::from_env(env, "file:///var/lib/etcd-lifeboat/backups")?;
    let cluster = env
        .get("LIFEBOAT_CLUSTER_NAME")
        .unwrap_or("default")
        .to_string();
    crate::manifest::check_cluster_name(&cluster)?;
    Ok(Source::Catalog {
        store,
        cluster,
        which: raw.to_string(),
    })
}

impl RestoreConfig {
    pub fn from_env(env: &Env) -> Result<Self> {
        let index = env
            .first(&["JOB_COMPLETION_INDEX", "LIFEBOAT_MEMBER_INDEX"])
            .map(|(_, v)| v);
        if let Some(i) = index {
            if i.parse::<u32>().is_err() {
                return Err(Error::Config(format!(
                    "JOB_COMPLETION_INDEX/LIFEBOAT_MEMBER_INDEX: expected a number, got {i:?}"
                )));
            }
        }
        let name = expand_index(
            "LIFEBOAT_NAME",
            env.get("LIFEBOAT_NAME").unwrap_or("default"),
            index,
        )?;
        let peer_urls = expand_index(
            "LIFEBOAT_INITIAL_ADVERTISE_PEER_URLS",
            env.get("LIFEBOAT_INITIAL_ADVERTISE_PEER_URLS")
                .unwrap_or("http://localhost:2380"),
            index,
        )?;
        let initial_cluster = match env.get("LIFEBOAT_INITIAL_CLUSTER") {
            Some(v) => v.to_string(),
            None => format!("{name}=http://localhost:2380"),
        };
        let data_dir = env
            .get("LIFEBOAT_DATA_DIR")
            .map(|d| expand_index("LIFEBOAT_DATA_DIR", d, index))
            .transpose()?
            .map(PathBuf::from)
            .ok_or_else(|| {
                Error::Config(
                    "LIFEBOAT_DATA_DIR is required: the member's data dir (e.g. /var/lib/etcd)"
                        .into(),
                )
            })?;
        if !data_dir.is_absolute() {
            return Err(Error::Config(format!(
                "LIFEBOAT_DATA_DIR: {} must be an absolute path",
                data_dir.display()
            )));
        }
        let wal_dir = env
            .get("LIFEBOAT_WAL_DIR")
            .map(|d| expand_index("LIFEBOAT_WAL_DIR", d, index))
            .transpose()?
            .map(|d| check_wal_dir(&data_dir, PathBuf::from(d)))
            .transpose()?
            .flatten();
        let bump_revision = env.u64("LIFEBOAT_BUMP_REVISION", 1_000_000_000)?;
        let mark_compacted = env.bool("LIFEBOAT_MARK_COMPACTED", true)?;
        if bump_revision > 0 && !mark_compacted {
            // etcdutl: "--mark-compacted required if --revision-bump > 0"
            return Err(Error::Config("LIFEBOAT_MARK_COMPACTED must be true when LIFEBOAT_BUMP_REVISION > 0 (etcdutl: --mark-compacted required if --revision-bump > 0)".into()));
        }
        let spool_dir = env.path("LIFEBOAT_SPOOL_DIR", "/tmp");
        Ok(RestoreConfig {
            source: parse_source(env)?,
            data_dir,
            wal_dir,
            name,
            initial_cluster,
            token: env
                .get("LIFEBOAT_INITIAL_CLUSTER_TOKEN")
                .unwrap_or("etcd-cluster")
                .to_string(),
            peer_urls,
            skip_hash_check: env.bool("LIFEBOAT_SKIP_HASH_CHECK", false)?,
            bump_revision,
            mark_compacted,
            dry_run: env.bool("LIFEBOAT_DRY_RUN", false)?,
            spool_dir,
            progress_interval: env.duration("LIFEBOAT_PROGRESS_INTERVAL", "10s")?,
        })
    }
}

/// Check `LIFEBOAT_WAL_DIR` against the data dir. `<data-dir>/member/wal` is the default (`None`);
/// otherwise the WAL dir must be absolute, plain (no `.`/`..`), and outside the parts of the data
/// dir that a restore moves or rebuilds (`member/`, the staging dir), and not the data dir itself
/// or one of its parents.
fn check_wal_dir(data_dir: &Path, wal: PathBuf) -> Result<Option<PathBuf>> {
    use std::path::Component;
    let shown = wal.display().to_string();
    if !wal.is_absolute() {
        return Err(Error::Config(format!(
            "LIFEBOAT_WAL_DIR: {shown} must be an absolute path"
        )));
    }
    if wal
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(Error::Config(format!(
            "LIFEBOAT_WAL_DIR: {shown} must not contain `.` or `..`"
        )));
    }
    // Normalise `a//b/` → `a/b`.
    let wal: PathBuf = wal.components().collect();
    let data: PathBuf = data_dir.components().collect();
    if wal == data.join("member").join("wal") {
        return Ok(None);
    }
    if data.starts_with(&wal) {
        return Err(Error::Config(format!(
            "LIFEBOAT_WAL_DIR: {shown} is LIFEBOAT_DATA_DIR or one of its parents; the WAL dir must be a directory of its own (etcdutl --wal-dir)"
        )));
    }
    for inside in ["member", install::STAGING] {
        if wal.starts_with(data.join(inside)) {
            return Err(Error::Config(format!(
                "LIFEBOAT_WAL_DIR: {shown} is inside <data-dir>/{inside}, which a restore moves aside or rebuilds; use <data-dir>/member/wal (the default) or a directory outside it"
            )));
        }
    }
    Ok(Some(wal))
}

/// The marker a finished restore leaves in the data dir; a retried Job with the same inputs is a no-op.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Marker {
    pub db_sha256: String,
    pub name: String,
    pub member_id: String,
    pub cluster_id: String,
    pub initial_cluster: String,
    pub token: String,
    pub bump_revision: u64,
    pub restored_at: String,
    pub moved_aside: Option<String>,
    /// The separate WAL dir (`LIFEBOAT_WAL_DIR`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_dir: Option<String>,
    /// Where the previous WAL dir was moved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_moved_aside: Option<String>,
}

impl Marker {
    fn same_restore(&self, other: &Marker) -> bool {
        (
            &self.db_sha256,
            &self.member_id,
            &self.cluster_id,
            &self.initial_cluster,
            &self.token,
            self.bump_revision,
            &self.wal_dir,
        ) == (
            &other.db_sha256,
            &other.member_id,
            &other.cluster_id,
            &other.initial_cluster,
            &other.token,
            other.bump_revision,
            &other.wal_dir,
        )
    }
}

/// Removes a directory on drop if it is empty (a data dir this run created and then failed to fill).
struct RemoveEmptyDir(Option<PathBuf>);

impl RemoveEmptyDir {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveEmptyDir {
    fn drop(&mut self) {
        if let Some(d) = &self.0 {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// Set when dropped (the restore future was cancelled by a signal) unless disarmed.
#[derive(Default)]
struct CancelFlag(std::sync::Arc<std::sync::atomic::AtomicBool>, bool);

impl CancelFlag {
    fn disarm(mut self) {
        self.1 = true;
    }
}

impl Drop for CancelFlag {
    fn drop(&mut self) {
        if !self.1 {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// A snapshot on local disk, not yet inspected: the inspection (sha256, bbolt check, status) runs
/// beside the build (see `run`), and for a backup from the store its result must also match the
/// backup's manifest (`manifest`). The stored object's own sha256 was checked while downloading.
struct Fetched {
    path: PathBuf,
    _guard: Option<RemoveOnDrop>,
    report: Option<Report>,
    manifest: Option<Box<Manifest>>,
    label: String,
}

impl Fetched {
    /// Inspect the snapshot (and hold it to its manifest, for a backup from the store).
    async fn inspect(&self) -> Result<Report> {
        let p = self.path.clone();
        let report = tokio::task::spawn_blocking(move || snapshot::inspect(&p))
            .await
            .map_err(|e| Error::Internal(format!("worker thread failed: {e}")))?
            .map_err(|e| Error::Verify(format!("{}: {e}", self.label)))?;
        if let Some(m) = &self.manifest {
            catalog::check_against_manifest(m, &report)?;
        }
        Ok(report)
    }
}

async fn fetch(cfg: &RestoreConfig) -> Result<Fetched> {
    match &cfg.source {
        Source::File(p) => {
            std::fs::metadata(p).map_err(|e| {
                Error::Config(format!(
                    "LIFEBOAT_RESTORE_SOURCE: cannot read {}: {e}",
                    p.display()
                ))
            })?;
            Ok(Fetched {
                path: p.clone(),
                _guard: None,
                report: None,
                manifest: None,
                label: p.display().to_string(),
            })
        }
        Source::Catalog {
            store,
            cluster,
            which,
        } => {
            let store = Store::open(store).await?;
            let cat = catalog::load(&store, cluster).await?;
            let m = catalog::select(&cat, Some(which))?;
            tracing::info!(backup = %m.backup_id, store = %store.describe(), "fetching backup");
            let guard = catalog::fetch_snapshot(&store, m, &cfg.spool_dir).await?;
            Ok(Fetched {
                path: guard.path().to_path_buf(),
                _guard: Some(guard),
                report: None,
                manifest: Some(Box::new(m.clone())),
                label: format!("{}/{}", cluster, m.backup_id),
            })
        }
        Source::Url(sc) => {
            let store = Store::open(sc).await?;
            let label = sc.location.to_string();
            let dl = RemoveOnDrop::new(cfg.spool_dir.join(format!(
                "etcd-lifeboat-restore-{}.download",
                std::process::id()
            )));
            let size = store.get_to_file("snapshot.db", dl.path()).await?;
            tracing::info!(source = %label, bytes = size, "downloaded");
            // A zstd object (an etcd-lifeboat backup) is decompressed; a raw snapshot is used as is.
            let mut magic = [0u8; 4];
            let is_zstd = std::fs::File::open(dl.path())
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
                .is_ok()
                && magic == [0x28, 0xb5, 0x2f, 0xfd];
            if !is_zstd {
                return Ok(Fetched {
                    path: dl.path().to_path_buf(),
                    _guard: Some(dl),
                    report: None,
                    manifest: None,
                    label,
                });
            }
            let out = RemoveOnDrop::new(
                cfg.spool_dir
                    .join(format!("etcd-lifeboat-restore-{}.db", std::process::id())),
            );
            let (src, dest) = (dl.path().to_path_buf(), out.path().to_path_buf());
            tokio::task::spawn_blocking(move || -> Result<()> {
                let input = std::fs::File::open(&src)
                    .map_err(|e| Error::io(format!("opening {}", src.display()), e))?;
                let mut output = crate::fsutil::create_private(&dest)?;
                zstd::stream::copy_decode(input, &mut output).map_err(|e| {
                    Error::Verify(format!("the downloaded snapshot does not decompress: {e}"))
                })
            })
            .await
            .map_err(|e| Error::Internal(format!("worker thread failed: {e}")))??;
            drop(dl);
            Ok(Fetched {
                path: out.path().to_path_buf(),
                _guard: Some(out),
                report: None,
                manifest: None,
                label,
            })
        }
    }
}

/// etcdutl's error for a file without the sha256 trailer.
fn missing_hash() -> Error {
    Error::Verify("snapshot missing hash but --skip-hash-check=false (a raw member/snap/db has no sha256 trailer: set LIFEBOAT_SKIP_HASH_CHECK=true to restore it)".into())
}

/// etcdutl's rules for the trailer (spec §1.4), plus the integrity check.
fn check_snapshot(report: &Report, skip_hash_check: bool) -> Result<()> {
    match &report.trailer {
        Trailer::Absent if !skip_hash_check => return Err(missing_hash()),
        Trailer::Mismatch { stored, computed } if !skip_hash_check => {
            return Err(Error::Verify(format!(
                "expected sha256 {}, got {}: the snapshot file is damaged",
                hex::encode(stored),
                hex::encode(computed)
            )))
        }
        Trailer::Mismatch { .. } => tracing::warn!(
            "sha256 trailer does not match, accepted because LIFEBOAT_SKIP_HASH_CHECK=true"
        ),
        _ => {}
    }
    if !report.integrity_errors.is_empty() {
        return Err(Error::Verify(format!(
            "snapshot file integrity check failed. {} errors found.\n{}",
            report.integrity_errors.len(),
            report.integrity_errors.join("\n")
        )));
    }
    Ok(())
}

/// What a restore did (or would do, in a dry run).
#[derive(Debug, Clone)]
pub struct Outcome {
    pub marker: Marker,
    pub already_done: bool,
    pub dry_run: bool,
}

/// Plan, print the plan, then execute. `now` stamps the moved-aside directory.
///
/// Nothing existing is touched before the snapshot is fully verified: the verification (one
/// sequential pass: sha256, bbolt check, status; for a backup from the store, also held to its
/// manifest) runs *beside* the build into the staging dir, and the swap happens only after both
/// succeeded.
pub async fn run(cfg: &RestoreConfig, now: SystemTime) -> Result<Outcome> {
    let plan = ClusterPlan::new(&cfg.name, &cfg.initial_cluster, &cfg.peer_urls, &cfg.token)
        .map_err(|e| Error::Config(e.to_string()))?;
    // Fail fast on a member in use (before a long download), unless our marker is there: a Job
    // retried after etcd started on the restored dir must be a no-op success, decided below.
    if let Err(e) = install::ensure_not_in_use(&cfg.data_dir) {
        if install::read_marker(&cfg.data_dir).is_none() {
            return Err(e);
        }
    }
    let mut fetched = fetch(cfg).await?;
    let old_marker =
        install::read_marker(&cfg.data_dir).and_then(|s| serde_json::from_str::<Marker>(&s).ok());
    if fetched.report.is_none() && (old_marker.is_some() || cfg.dry_run) {
        fetched.report = Some(fetched.inspect().await?);
    }
    if let Some(r) = &fetched.report {
        check_snapshot(r, cfg.skip_hash_check)?;
    }
    let bump = (cfg.bump_revision > 0).then_some(cfg.bump_revision);
    let marker_for = |r: &Report| Marker {
        db_sha256: hex::encode(r.db_sha256),
        name: cfg.name.clone(),
        member_id: format_id(plan.local_id),
        cluster_id: format_id(plan.cluster_id),
        initial_cluster: cfg.initial_cluster.clone(),
        token: cfg.token.clone(),
        bump_revision: cfg.bump_revision,
        restored_at: crate::manifest::rfc3339(now),
        moved_aside: None,
        wal_dir: cfg.wal_dir.as_ref().map(|w| w.display().to_string()),
        wal_moved_aside: None,
    };
    let live_member = cfg.data_dir.join("member");
    let live_wal = cfg
        .wal_dir
        .clone()
        .unwrap_or_else(|| live_member.join("wal"));
    if let (Some(old), Some(r)) = (&old_marker, &fetched.report) {
        if old.same_restore(&marker_for(r)) && live_member.exists() && live_wal.exists() {
            tracing::info!(data_dir = %cfg.data_dir.display(), restored_at = %old.restored_at, "this data dir was already restored from this snapshot with these settings: nothing to do");
            return Ok(Outcome {
                marker: old.clone(),
                already_done: true,
                dry_run: cfg.dry_run,
            });
        }
    }
    install::ensure_not_in_use(&cfg.data_dir)?;
    if let Some(w) = &cfg.wal_dir {
        install::ensure_wal_dir_movable(w)?;
    }
    let latest = match &fetched.report {
        Some(r) => u64::try_from(r.status.revision).unwrap_or(0),
        None => {
            let p = fetched.path.clone();
            tokio::task::spawn_blocking(move || crate::restore::build::latest_revision(&p))
                .await
                .map_err(|e| Error::Internal(format!("worker thread failed: {e}")))??
        }
    };
    let file_len = std::fs::metadata(&fetched.path)
        .map_err(|e| Error::io(format!("reading {}", fetched.path.display()), e))?
        .len();
    let needed = file_len + crate::restore::wal::WAL_SEGMENT_SIZE + (64 << 20);
    let existing = if live_member.exists() {
        format!(
            "moved aside to {}/member.pre-restore-{}",
            cfg.data_dir.display(),
            crate::manifest::compact_utc(now)
        )
    } else {
        "none (empty target)".to_string()
    };
    let existing_wal = cfg.wal_dir.as_ref().map(|w| {
        if w.exists() {
            format!(
                "{} moved aside to {}.pre-restore-{}",
                w.display(),
                w.display(),
                crate::manifest::compact_utc(now)
            )
        } else {
            format!("none ({} is created)", w.display())
        }
    });
    let keys = fetched
        .report
        .as_ref()
        .map_or("verified during the build".to_string(), |r| {
            format!("{} keys", r.status.total_key)
        });
    let members: Vec<String> = plan
        .members
        .iter()
        .map(|m| format!("{}={} ({})", m.name, m.peer_urls.join(","), m.hex_id()))
        .collect();
    for line in [
        format!(
            "snapshot:        {} (revision {latest}, {keys}, {})",
            fetched.label,
            mib(file_len)
        ),
        format!(
            "member:          {} id {} peer URLs {}",
            cfg.name,
            format_id(plan.local_id),
            cfg.peer_urls
        ),
        format!(
            "cluster:         id {} token {:?}: {}",
            format_id(plan.cluster_id),
            cfg.token,
            members.join(", ")
        ),
        format!(
            "revision bump:   {}",
            bump.map_or("none".to_string(), |b| format!(
                "+{b}, old revisions marked compacted"
            ))
        ),
        format!("target data dir: {}", cfg.data_dir.display()),
        format!(
            "target WAL dir:  {}",
            cfg.wal_dir
                .as_ref()
                .map_or("<data-dir>/member/wal".to_string(), |w| format!(
                    "{} (LIFEBOAT_WAL_DIR)",
                    w.display()
                ))
        ),
        format!("existing member: {existing}"),
    ]
    .into_iter()
    .chain(existing_wal.map(|w| format!("existing WAL:    {w}")))
    .chain([format!("disk needed:     about {}", mib(needed))])
    {
        println!("plan: {line}");
    }
    if cfg.dry_run {
        println!("plan: LIFEBOAT_DRY_RUN=true: nothing was changed");
        let marker = fetched
            .report
            .as_ref()
            .map(marker_for)
            .ok_or_else(|| Error::Internal("dry run without a verified snapshot".into()))?;
        return Ok(Outcome {
            marker,
            already_done: false,
            dry_run: true,
        });
    }
    // A missing trailer is visible from the size alone: refuse it before building anything.
    if fetched.report.is_none() && file_len % 512 != 32 && !cfg.skip_hash_check {
        return Err(missing_hash());
    }
    // A data dir we create is removed again (when still empty) if the restore fails.
    let created_dir = RemoveEmptyDir((!cfg.data_dir.exists()).then(|| cfg.data_dir.clone()));
    // A separate WAL dir is staged next to it (same filesystem: the final step is a rename).
    let wal_parent = cfg.wal_dir.as_deref().map(install::parent_of);
    let wal_need = crate::restore::wal::WAL_SEGMENT_SIZE + (1 << 20);
    let data_need = if wal_parent.is_some() {
        needed - wal_need.min(needed)
    } else {
        needed
    };
    install::ensure_writable_with_room(&cfg.data_dir, data_need)?;
    let created_wal_parent =
        RemoveEmptyDir(wal_parent.filter(|p| !p.exists()).map(Path::to_path_buf));
    if let Some(p) = wal_parent {
        // On the data dir's filesystem, the WAL and the member need room together.
        use std::os::unix::fs::MetadataExt;
        let dev = |d: &Path| std::fs::metadata(d).map(|m| m.dev()).ok();
        let shared = dev(p).is_some() && dev(p) == dev(&cfg.data_dir);
        install::ensure_dir_writable_with_room(
            p,
            if shared { needed } else { wal_need },
            "LIFEBOAT_WAL_DIR's parent",
        )?;
    }
    let staging = install::fresh_staging(&cfg.data_dir)?;
    let staging_guard = RemoveOnDrop::new(staging.clone());
    let wal_staging = cfg
        .wal_dir
        .as_deref()
        .map(install::fresh_wal_staging)
        .transpose()?;
    let wal_staging_guard = wal_staging.clone().map(RemoveOnDrop::new);
    let (snap, member_dir) = (fetched.path.clone(), staging.join("member"));
    let wal_dir = wal_staging
        .clone()
        .unwrap_or_else(|| member_dir.join("wal"));
    let plan2 = plan.clone();
    // On SIGTERM this future is dropped while the build may still be writing in a blocking
    // thread: the guards above remove the staging dirs at once, and the build removes them again
    // when it ends (so nothing it wrote after the first removal is left behind).
    let cancelled = CancelFlag::default();
    let (flag, leftovers) = (
        cancelled.0.clone(),
        [Some(staging.clone()), wal_staging.clone()],
    );
    let build = tokio::task::spawn_blocking(move || {
        let r = build_member(&snap, &member_dir, &wal_dir, &plan2, bump, latest);
        if flag.load(std::sync::atomic::Ordering::SeqCst) {
            for d in leftovers.iter().flatten() {
                let _ = std::fs::remove_dir_all(d);
            }
        }
        r
    });
    let verify = async {
        match fetched.report.take() {
            Some(r) => Ok(r),
            None => fetched.inspect().await,
        }
    };
    let (built, report) = tokio::join!(build, verify);
    // A verification failure explains a build failure on the same bytes: report it first.
    let report = report?;
    check_snapshot(&report, cfg.skip_hash_check)?;
    if u64::try_from(report.status.revision).unwrap_or(0) != latest {
        return Err(Error::Verify(format!(
            "the snapshot's revision {} differs from its last key's revision {latest}: the file changed while it was read",
            report.status.revision
        )));
    }
    cancelled.disarm();
    let built = built.map_err(|e| Error::Internal(format!("worker thread failed: {e}")))??;
    tracing::info!(db_bytes = built.db_bytes, keys = built.keys, bumped_revision = ?built.bumped_revision, "member dir built in staging");
    // From here to the end nothing awaits: a SIGTERM is handled only after the swap and the
    // marker (see `install::swap`).
    let wal_target = match (&cfg.wal_dir, &wal_staging) {
        (Some(dir), Some(staged)) => Some(install::WalTarget { dir, staged }),
        _ => None,
    };
    let swapped = install::swap(
        &cfg.data_dir,
        &staging,
        &crate::manifest::compact_utc(now),
        wal_target,
    )?;
    staging_guard.disarm();
    if let Some(g) = wal_staging_guard {
        g.disarm();
    }
    created_dir.disarm();
    created_wal_parent.disarm();
    let marker = Marker {
        moved_aside: swapped
            .moved_aside
            .as_ref()
            .map(|p| p.display().to_string()),
        wal_moved_aside: swapped
            .wal_moved_aside
            .as_ref()
            .map(|p| p.display().to_string()),
        ..marker_for(&report)
    };
    install::write_marker(
        &cfg.data_dir,
        &serde_json::to_string_pretty(&marker).unwrap_or_default(),
    )?;
    println!(
        "restored {} into {}{}{}; start etcd with --name {} --data-dir {}{} (the --initial-* flags are ignored once a WAL exists)",
        fetched.label,
        cfg.data_dir.display(),
        cfg.wal_dir.as_ref().map(|w| format!(" and WAL dir {}", w.display())).unwrap_or_default(),
        swapped.moved_aside.map(|p| format!(" (previous member moved to {})", p.display())).unwrap_or_default(),
        cfg.name,
        cfg.data_dir.display(),
        cfg.wal_dir.as_ref().map(|w| format!(" --wal-dir {}", w.display())).unwrap_or_default(),
    );
    if let Some(p) = &swapped.wal_moved_aside {
        println!("previous WAL dir moved to {}", p.display());
    }
    Ok(Outcome {
        marker,
        already_done: false,
        dry_run: false,
    })
}

/// For `verify`: build a throw-away member dir from a verified snapshot (a restore drill).
pub fn drill(snapshot_path: &Path, revision: i64, scratch: &Path) -> Result<u64> {
    let plan = ClusterPlan::new(
        "drill",
        "drill=http://localhost:2380",
        "http://localhost:2380",
        "etcd-cluster",
    )
    .map_err(|e| Error::Internal(e.to_string()))?;
    let member = scratch.join("member");
    let built = build_member(
        snapshot_path,
        &member,
        &member.join("wal"),
        &plan,
        Some(1_000_000_000),
        u64::try_from(revision).unwrap_or(0),
    )?;
    let report = snapshot::inspect(&member.join("snap/db")).map_err(|e| {
        Error::Verify(format!(
            "restore drill: the rebuilt database does not read back: {e}"
        ))
    })?;
    if !report.integrity_errors.is_empty() {
        return Err(Error::Verify(format!(
            "restore drill: the rebuilt database fails the integrity check: {}",
            report.integrity_errors.join("; ")
        )));
    }
    Ok(built.keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base<'a>() -> Vec<(&'a str, &'a str)> {
        vec![
            ("LIFEBOAT_RESTORE_SOURCE", "latest"),
            ("LIFEBOAT_DATA_DIR", "/var/lib/etcd"),
        ]
    }

    #[test]
    fn index_template_for_indexed_jobs() {
        let mut v = base();
        v.extend([
            ("LIFEBOAT_NAME", "etcd-{index}"),
            (
                "LIFEBOAT_INITIAL_ADVERTISE_PEER_URLS",
                "https://etcd-{index}.etcd-discovery.ns.svc:2380",
            ),
            ("JOB_COMPLETION_INDEX", "2"),
        ]);
        let c = RestoreConfig::from_env(&Env::from_pairs(v.clone())).unwrap();
        assert_eq!(c.name, "etcd-2");
        assert_eq!(c.peer_urls, "https://etcd-2.etcd-discovery.ns.svc:2380");
        v.retain(|(k, _)| *k != "JOB_COMPLETION_INDEX");
        let e = RestoreConfig::from_env(&Env::from_pairs(v.clone()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("LIFEBOAT_NAME uses {index}"), "{e}");
        v.push(("LIFEBOAT_MEMBER_INDEX", "x"));
        assert!(RestoreConfig::from_env(&Env::from_pairs(v))
            .unwrap_err()
            .to_string()
            .contains("expected a number"));
    }

    #[test]
    fn defaults_match_etcdutl_and_the_platforms() {
        let c = RestoreConfig::from_env(&Env::from_pairs(base())).unwrap();
        assert_eq!(c.wal_dir, None);
        assert_eq!(
            (
                c.name.as_str(),
                c.initial_cluster.as_str(),
                c.token.as_str()
            ),
            ("default", "default=http://localhost:2380", "etcd-cluster")
        );
        assert_eq!(c.bump_revision, 1_000_000_000);
        assert!(c.mark_compacted && !c.skip_hash_check && !c.dry_run);
        assert!(matches!(c.source, Source::Catalog { ref which, .. } if which == "latest"));
    }

    #[test]
    fn wal_dir_like_etcdutl_wal_dir() {
        let wal = |w: &str| {
            let mut v = base();
            v.push(("LIFEBOAT_WAL_DIR", w));
            v.push(("LIFEBOAT_MEMBER_INDEX", "1"));
            RestoreConfig::from_env(&Env::from_pairs(v)).map(|c| c.wal_dir)
        };
        assert_eq!(
            wal("/var/lib/etcd-wal/wal").unwrap(),
            Some(PathBuf::from("/var/lib/etcd-wal/wal"))
        );
        assert_eq!(
            wal("/wal//m{index}/").unwrap(),
            Some(PathBuf::from("/wal/m1"))
        );
        // etcd's own default is no separate WAL dir at all.
        assert_eq!(wal("/var/lib/etcd/member/wal/").unwrap(), None);
        // Beside member/ inside the data dir is fine (etcd ignores other entries there).
        assert_eq!(
            wal("/var/lib/etcd/wal").unwrap(),
            Some(PathBuf::from("/var/lib/etcd/wal"))
        );
        for (bad, why) in [
            ("wal", "absolute"),
            ("/var/lib/etcd/../wal", "`..`"),
            ("/var/lib/etcd", "one of its parents"),
            ("/var/lib", "one of its parents"),
            ("/", "one of its parents"),
            ("/var/lib/etcd/member/mywal", "inside <data-dir>/member"),
            (
                "/var/lib/etcd/.lifeboat-staging/wal",
                "inside <data-dir>/.lifeboat-staging",
            ),
        ] {
            let e = wal(bad).unwrap_err().to_string();
            assert!(
                e.contains("LIFEBOAT_WAL_DIR") && e.contains(why),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn source_errors_never_show_a_signature() {
        for raw in [
            "s3://bkt?X-Amz-Signature=SECRETSIG",
            "ftp://host/x.db?X-Amz-Signature=SECRETSIG",
            "bucket/x.db?X-Amz-Signature=SECRETSIG",
        ] {
            let mut v = base();
            v.push(("LIFEBOAT_RESTORE_SOURCE", raw));
            let err = RestoreConfig::from_env(&Env::from_pairs(v)).unwrap_err();
            let msg = err.to_string();
            assert!(!msg.contains("SECRETSIG"), "{msg}");
            assert!(msg.contains("REDACTED"), "{msg}");
        }
    }

    #[test]
    fn sources_and_errors() {
        let src = |s: &'static str| {
            let mut v = base();
            v[0] = ("LIFEBOAT_RESTORE_SOURCE", s);
            RestoreConfig::from_env(&Env::from_pairs(v)).map(|c| c.source)
        };
        assert_eq!(
            src("/backups/x.db").unwrap(),
            Source::File("/backups/x.db".into())
        );
        assert_eq!(src("file:///x.db").unwrap(), Source::File("/x.db".into()));
        assert!(matches!(
            src("https://b.s3.amazonaws.com/x?X-Amz-Signature=1").unwrap(),
            Source::Url(_)
        ));
        assert!(
            src("http://10.0.0.1/x?X-Amz-Signature=1").is_err(),
            "plain http only on loopback"
        );
        match src("s3://bkt/pre/fix/prod/20261122T043330Z-r5").unwrap() {
            Source::Catalog {
                store,
                cluster,
                which,
            } => {
                assert_eq!(
                    store.location,
                    Location::S3 {
                        bucket: "bkt".into(),
                        prefix: "pre/fix".into()
                    }
                );
                assert_eq!(
                    (cluster.as_str(), which.as_str()),
                    ("prod", "20261122T043330Z-r5")
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(src("s3://bkt/only").is_err());
        assert!(src("relative/path.db").is_err());
        let e = RestoreConfig::from_env(&Env::from_pairs([("LIFEBOAT_DATA_DIR", "/x")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("LIFEBOAT_RESTORE_SOURCE is required"), "{e}");
        let e = RestoreConfig::from_env(&Env::from_pairs([
            ("LIFEBOAT_RESTORE_SOURCE", "latest"),
            ("LIFEBOAT_BUMP_REVISION", "5"),
            ("LIFEBOAT_MARK_COMPACTED", "false"),
            ("LIFEBOAT_DATA_DIR", "/x"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(e.contains("mark-compacted required"), "{e}");
    }
}

//! Dispatch: one function per command, each taking the parsed command and the environment.
//!
//! Configuration for a command is validated here, in full, before the command does anything.

use std::future::Future;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use crate::catalog::{self, Catalog};
use crate::cli::{Command, WriteOut};
use crate::config::Env;
use crate::error::{Error, Result};
use crate::notify::{NotifyConfig, Report};
use crate::retention::Policy;
use crate::snapshot::status::{self, Compat, TableStyle};
use crate::snapshot::{self, Trailer};
use crate::store::Store;

pub fn run(cmd: Command, env: &Env) -> Result<()> {
    match cmd {
        Command::Help(c) => {
            print!("{}", crate::cli::help_text(c));
            Ok(())
        }
        Command::Version => {
            println!("etcd-lifeboat {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Status {
            file,
            write_out,
            compat,
            ascii,
        } => {
            let compat = match compat.as_deref().or(env.get("LIFEBOAT_STATUS_COMPAT")) {
                None | Some("3.5") | Some("3.4") => Compat::V35,
                Some("3.6") => Compat::V36,
                Some(other) => {
                    return Err(Error::Usage(format!(
                        "--compat/LIFEBOAT_STATUS_COMPAT: expected 3.5 or 3.6, got {other:?}"
                    )))
                }
            };
            let style = if ascii {
                TableStyle::Ascii
            } else {
                TableStyle::Unicode
            };
            status_cmd(Path::new(&file), write_out, compat, style)
        }
        Command::Backup => {
            let notify = NotifyConfig::from_env(env)?;
            let started = Instant::now();
            let res = backup_cmd(env);
            let mut report = Report::new("backup", &cluster_name(env), started, &res);
            if let Ok(m) = &res {
                report.backup_id = Some(m.backup_id.clone());
                report.revision = Some(m.revision);
                report.size_bytes = Some(m.stored_size);
            }
            notify_now(&notify, &report);
            println!("{}", res?.backup_id);
            Ok(())
        }
        Command::Restore => {
            let notify = NotifyConfig::from_env(env)?;
            let started = Instant::now();
            let res = crate::restore::job::RestoreConfig::from_env(env)
                .and_then(|cfg| with_runtime(crate::restore::job::run(&cfg, SystemTime::now())));
            notify_now(
                &notify,
                &Report::new("restore", &cluster_name(env), started, &res),
            );
            res.map(|_| ())
        }
        Command::List { write_out } => {
            let (sc, cluster) = open_store(env)?;
            let cat = with_runtime(async {
                let store = Store::open(&sc).await?;
                catalog::load(&store, &cluster).await
            })?;
            print!("{}", render_list(&cat, write_out));
            Ok(())
        }
        Command::Verify { id } => {
            let notify = NotifyConfig::from_env(env)?;
            let started = Instant::now();
            let res = verify_cmd(env, id.as_deref());
            let mut report = Report::new("verify", &cluster_name(env), started, &res);
            if let Ok(m) = &res {
                report.backup_id = Some(m.backup_id.clone());
                report.revision = Some(m.revision);
                report.size_bytes = Some(m.stored_size);
            }
            notify_now(&notify, &report);
            res.map(|_| ())
        }
        Command::Fetch { id, dest } => {
            let (sc, cluster) = open_store(env)?;
            let spool = spool_dir(env)?;
            let dest = std::path::PathBuf::from(dest);
            if dest.exists() {
                return Err(Error::Usage(format!(
                    "{} exists; fetch never overwrites a file",
                    dest.display()
                )));
            }
            with_runtime(async {
                let store = Store::open(&sc).await?;
                let cat = catalog::load(&store, &cluster).await?;
                let m = catalog::select(&cat, Some(&id))?;
                let (file, report) = catalog::verify(&store, m, &spool).await?;
                let tmp = crate::fsutil::temp_sibling(&dest);
                let guard = crate::fsutil::RemoveOnDrop::new(tmp.clone());
                std::fs::copy(file.path(), &tmp)
                    .map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
                let f = std::fs::File::open(&tmp)
                    .map_err(|e| Error::io(format!("opening {}", tmp.display()), e))?;
                crate::fsutil::commit_file(&f, &tmp, &dest)?;
                guard.disarm();
                println!(
                    "{}: verified and written to {} (revision {}, {} bytes)",
                    m.backup_id,
                    dest.display(),
                    report.status.revision,
                    report.file_len
                );
                Ok(())
            })
        }
        Command::Prune => {
            let (sc, cluster) = open_store(env)?;
            let policy = Policy::from_env(env)?;
            let dry_run = env.bool("LIFEBOAT_DRY_RUN", false)?;
            with_runtime(async {
                let store = Store::open(&sc).await?;
                let cat = catalog::load(&store, &cluster).await?;
                let plan = catalog::plan_prune(&cat, &policy, SystemTime::now());
                for d in &plan {
                    let verb = if d.keep {
                        "keep"
                    } else if dry_run {
                        "would delete"
                    } else {
                        "delete"
                    };
                    println!("{verb:<12} {:<28} {}", d.id, d.reasons.join("; "));
                }
                let n = catalog::prune(&store, &cluster, &cat, &plan, dry_run).await?;
                tracing::info!(deleted = n, dry_run, "prune finished");
                Ok(())
            })
        }
    }
}

/// `backup` with retention after it; the manifest of the new backup.
fn backup_cmd(env: &Env) -> Result<crate::manifest::Manifest> {
    let cfg = crate::backup::BackupConfig::from_env(env)?;
    let policy = Policy::from_env(env)?;
    let dry_run = env.bool("LIFEBOAT_DRY_RUN", false)?;
    with_runtime(async {
        let m = crate::backup::run(&cfg, &SystemTime::now).await?;
        // Retention after a successful backup: failures are logged, never fatal.
        if !policy.is_empty() {
            let res = async {
                let store = crate::store::Store::open(&cfg.store).await?;
                let cat = catalog::load(&store, &cfg.cluster_name).await?;
                let plan = catalog::plan_prune(&cat, &policy, SystemTime::now());
                catalog::prune(&store, &cfg.cluster_name, &cat, &plan, dry_run).await
            };
            match res.await {
                Ok(n) => tracing::info!(deleted = n, dry_run, "retention applied"),
                Err(e) => {
                    tracing::error!(error = %crate::error::chain(&e), "retention failed (the backup itself succeeded)")
                }
            }
        }
        Ok(m)
    })
}

/// `verify [ID]`: download, check and rebuild a throw-away member from one backup; its manifest.
fn verify_cmd(env: &Env, id: Option<&str>) -> Result<crate::manifest::Manifest> {
    let (sc, cluster) = open_store(env)?;
    let spool = spool_dir(env)?;
    with_runtime(async {
        let store = Store::open(&sc).await?;
        let cat = catalog::load(&store, &cluster).await?;
        let m = catalog::select(&cat, id)?;
        tracing::info!(backup = %m.backup_id, object = %m.object_key, "verifying");
        let (file, report) = catalog::verify(&store, m, &spool).await?;
        // The restore drill: rebuild a throw-away member dir from it and read it back.
        let scratch = crate::fsutil::RemoveOnDrop::new(
            spool.join(format!("etcd-lifeboat-drill-{}", std::process::id())),
        );
        let (snap, dir, rev) = (
            file.path().to_path_buf(),
            scratch.path().to_path_buf(),
            report.status.revision,
        );
        let keys =
            tokio::task::spawn_blocking(move || crate::restore::job::drill(&snap, rev, &dir))
                .await
                .map_err(|e| Error::Internal(format!("worker thread failed: {e}")))??;
        tracing::info!(keys, "restore drill: member dir rebuilt and read back");
        println!(
            "{}: OK (sha256 of stored object and database match the manifest; trailer verified: {}; bbolt integrity OK; revision {}, {} keys; restore drill OK)",
            m.backup_id,
            report.trailer == Trailer::Verified,
            report.status.revision,
            report.status.total_key
        );
        Ok(m.clone())
    })
}

/// The cluster name for notifications (validated where it matters, by the command itself).
fn cluster_name(env: &Env) -> String {
    env.get("LIFEBOAT_CLUSTER_NAME")
        .unwrap_or("default")
        .to_string()
}

/// Send `report` (bounded by LIFEBOAT_NOTIFY_TIMEOUT; a second signal cuts it short). Never fails.
fn notify_now(cfg: &NotifyConfig, report: &Report) {
    if cfg.is_empty() {
        return;
    }
    let _ = with_runtime(async {
        crate::notify::send(cfg, report).await;
        Ok(())
    });
}

/// `status FILE`: stdout is byte-identical to `etcdutl snapshot status`; our verdicts go to stderr.
fn status_cmd(path: &Path, w: WriteOut, compat: Compat, style: TableStyle) -> Result<()> {
    let report =
        snapshot::inspect(path).map_err(|e| Error::Verify(format!("{}: {e}", path.display())))?;
    if let Err(problems) = report.verdict() {
        return Err(Error::Verify(format!("{}: {problems}", path.display())));
    }
    if let (Compat::V36, Some(problem)) = (compat, &report.v36_problem) {
        return Err(Error::Verify(format!("{}: {problem}", path.display())));
    }
    let out = status::render(&report.status, w, compat, style);
    std::io::stdout()
        .write_all(out.as_bytes())
        .map_err(|e| Error::io("writing to stdout", e))?;
    let trailer = match report.trailer {
        Trailer::Verified => "sha256 trailer verified",
        Trailer::Absent => "no sha256 trailer (a raw member/snap/db)",
        Trailer::Mismatch { .. } => "sha256 trailer mismatch",
    };
    eprintln!(
        "etcd-lifeboat: {}: {trailer}; bbolt integrity OK",
        path.display()
    );
    Ok(())
}

/// Run `work` on a multi-threaded runtime, racing it against SIGTERM/SIGINT. On a signal the work
/// future is dropped, which runs its cleanup guards; the error maps to exit 143/130.
fn with_runtime<T>(work: impl Future<Output = Result<T>>) -> Result<T> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the async runtime", e))?;
    let out = rt.block_on(async {
        let out = tokio::select! {
            r = work => r,
            sig = crate::shutdown::signal() => {
                tracing::warn!(signal = %sig, "interrupted: cleaning up");
                Err(Error::Interrupted(sig))
            }
        };
        // Dropped work may have left cleanups running (e.g. aborting a multipart upload).
        crate::shutdown::finish_cleanups(Duration::from_secs(20)).await;
        out
    });
    rt.shutdown_timeout(Duration::from_secs(5));
    out
}

fn open_store(env: &Env) -> Result<(crate::store::StoreConfig, String)> {
    let loc = crate::store::StoreConfig::from_env(env, "file:///var/lib/etcd-lifeboat/backups")?;
    let cluster = env
        .get("LIFEBOAT_CLUSTER_NAME")
        .unwrap_or("default")
        .to_string();
    crate::manifest::check_cluster_name(&cluster)?;
    Ok((loc, cluster))
}

fn spool_dir(env: &Env) -> Result<std::path::PathBuf> {
    let dir = env.path("LIFEBOAT_SPOOL_DIR", "/tmp");
    if !dir.is_dir() {
        return Err(Error::Config(format!(
            "LIFEBOAT_SPOOL_DIR: {} is not a directory",
            dir.display()
        )));
    }
    Ok(dir)
}

/// `list` output: a table (default), one JSON array of manifests, or one id per line.
pub fn render_list(cat: &Catalog, w: WriteOut) -> String {
    match w {
        WriteOut::Json => {
            let all: Vec<_> = cat.complete.iter().map(|(m, _)| m).collect();
            format!(
                "{}\n",
                serde_json::to_string_pretty(&all).unwrap_or_default()
            )
        }
        WriteOut::Simple => cat
            .complete
            .iter()
            .map(|(m, _)| format!("{}\n", m.backup_id))
            .collect(),
        WriteOut::Table => {
            let header = [
                "ID",
                "CREATED",
                "REVISION",
                "MEMBER",
                "DB SIZE",
                "STORED",
                "COMPRESSION",
                "SHA256",
            ];
            let rows: Vec<[String; 8]> = cat
                .complete
                .iter()
                .map(|(m, _)| {
                    [
                        m.backup_id.clone(),
                        m.created.clone(),
                        m.revision.to_string(),
                        m.member_name.clone(),
                        status::humanize_bytes(m.db_size),
                        status::humanize_bytes(m.stored_size),
                        m.compression.clone(),
                        m.db_sha256.chars().take(12).collect(),
                    ]
                })
                .collect();
            let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
            for r in &rows {
                for (i, c) in r.iter().enumerate() {
                    widths[i] = widths[i].max(c.chars().count());
                }
            }
            let line = |cells: Vec<&str>| -> String {
                let mut s: String = cells
                    .iter()
                    .zip(&widths)
                    .map(|(c, w)| format!("{c:<w$}  "))
                    .collect();
                s.truncate(s.trim_end().len());
                s.push('\n');
                s
            };
            let mut out = line(header.to_vec());
            for r in &rows {
                out.push_str(&line(r.iter().map(String::as_str).collect()));
            }
            if !cat.incomplete.is_empty() {
                out.push_str(&format!("({} incomplete backup(s) without a manifest not shown; `prune` removes them after the grace period)\n", cat.incomplete.len()));
            }
            out
        }
    }
}

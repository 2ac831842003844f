//! Dispatch: one function per command, each taking the parsed command and the environment.
//!
//! Configuration for a command is validated here, in full, before the command does anything.

use std::future::Future;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::cli::{Command, WriteOut};
use crate::config::Env;
use crate::error::{Error, Result};
use crate::snapshot::status::{self, Compat, TableStyle};
use crate::snapshot::{self, Trailer};

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
            let cfg = crate::backup::BackupConfig::from_env(env)?;
            let m = with_runtime(crate::backup::run(&cfg, &SystemTime::now))?;
            println!("{}", m.backup_id);
            Ok(())
        }
        Command::Restore => Err(Error::NotImplemented("restore")),
        Command::List { .. } => Err(Error::NotImplemented("list")),
        Command::Verify { .. } => Err(Error::NotImplemented("verify")),
        Command::Prune => Err(Error::NotImplemented("prune")),
    }
}

/// `status FILE`: stdout is byte-identical to `etcdutl snapshot status`; our verdicts go to stderr.
fn status_cmd(path: &Path, w: WriteOut, compat: Compat, style: TableStyle) -> Result<()> {
    let report =
        snapshot::inspect(path).map_err(|e| Error::Verify(format!("{}: {e}", path.display())))?;
    if let Err(problems) = report.verdict() {
        return Err(Error::Verify(format!("{}: {problems}", path.display())));
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

//! Putting a rebuilt member dir in place without ever losing what was there.
//!
//! The data dir is often a PVC mount point (Anthos mounts the PVC at the data dir itself), so it
//! cannot be renamed and a sibling staging dir would be on another filesystem. Everything happens
//! inside it: build `<data-dir>/.lifeboat-staging/member`, fsync, move an existing
//! `<data-dir>/member` aside to `<data-dir>/member.pre-restore-<ts>`, rename the staged `member`
//! into place, fsync `<data-dir>`. etcd only looks at `<data-dir>/member`; siblings such as the
//! moved-aside dir, dotfiles and `lost+found/` do not upset it (checked with real etcd in tests).
//! A marker `<data-dir>/.lifeboat-restore.json` makes a retried Job a no-op.

use std::fs::OpenOptions;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::fsutil::{create_dir_private, fsync_dir, write_durably};

pub const STAGING: &str = ".lifeboat-staging";
pub const MARKER: &str = ".lifeboat-restore.json";

/// Refuse a member dir whose bbolt DB is held by a running etcd (bbolt takes `flock(LOCK_EX)`).
pub fn ensure_not_in_use(data_dir: &Path) -> Result<()> {
    let db = data_dir.join("member/snap/db");
    let Ok(f) = OpenOptions::new().read(true).open(&db) else {
        return Ok(());
    };
    // SAFETY: flock on a valid fd we own; released when `f` is dropped.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    if rc != 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock {
        return Err(Error::Restore(format!(
            "{} is locked by a running etcd: stop the etcd member first (static pod: move its manifest out of /etc/kubernetes/manifests; StatefulSet: scale to 0)",
            db.display()
        )));
    }
    Ok(())
}

/// Fails early, before anything is built, when the target filesystem cannot take the new member.
pub fn ensure_writable_with_room(data_dir: &Path, needed: u64) -> Result<()> {
    ensure_dir_writable_with_room(data_dir, needed, "data dir")
}

/// [`ensure_writable_with_room`] for any directory; `label` names it in errors.
pub fn ensure_dir_writable_with_room(data_dir: &Path, needed: u64, label: &str) -> Result<()> {
    create_dir_private(data_dir).map_err(|e| {
        Error::Restore(format!("cannot create {label} {}: {e}", data_dir.display()))
    })?;
    let probe = data_dir.join(format!(".lifeboat-probe-{}", std::process::id()));
    std::fs::write(&probe, b"probe")
        .and_then(|_| std::fs::remove_file(&probe))
        .map_err(|e| {
            Error::Restore(format!(
                "{label} {} is not writable ({e}); nothing was changed",
                data_dir.display()
            ))
        })?;
    let free = crate::fsutil::free_space(data_dir)?;
    if free < needed {
        return Err(Error::Restore(format!(
            "{label} {} has {} free, the restored member needs about {}; nothing was changed",
            data_dir.display(),
            crate::fsutil::mib(free),
            crate::fsutil::mib(needed)
        )));
    }
    Ok(())
}

/// A fresh, empty staging dir inside the data dir (a leftover from a killed run is removed first:
/// it never held anything but our own partial output).
pub fn fresh_staging(data_dir: &Path) -> Result<PathBuf> {
    let staging = data_dir.join(STAGING);
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|e| {
            Error::io(
                format!("removing stale staging dir {}", staging.display()),
                e,
            )
        })?;
    }
    create_dir_private(&staging)?;
    Ok(staging)
}

/// Remove a leftover WAL staging dir (only ever our own partial output) and return its path;
/// the build creates it.
pub fn fresh_wal_staging(wal_dir: &Path) -> Result<PathBuf> {
    let staging = wal_staging(wal_dir);
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|e| {
            Error::io(
                format!("removing stale WAL staging dir {}", staging.display()),
                e,
            )
        })?;
    }
    Ok(staging)
}

/// What `swap` did, for the log and the marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Swapped {
    pub moved_aside: Option<PathBuf>,
    /// The previous WAL dir, when a separate WAL dir (`LIFEBOAT_WAL_DIR`) existed.
    pub wal_moved_aside: Option<PathBuf>,
}

/// A separate WAL dir and where its new contents were built.
#[derive(Debug, Clone, Copy)]
pub struct WalTarget<'a> {
    /// `LIFEBOAT_WAL_DIR` (etcd's `--wal-dir`): the WAL files live directly in it.
    pub dir: &'a Path,
    /// The staged WAL dir, a sibling on the same filesystem (see [`wal_staging`]).
    pub staged: &'a Path,
}

/// `<parent>/<name>` → `<parent>/<name><suffix>`.
fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    p.with_file_name(format!("{name}{suffix}"))
}

/// The staging dir for a separate WAL dir: `<parent>/.<name>.lifeboat-staging`, next to it (same
/// filesystem, so moving it into place is one rename, whatever filesystem the data dir is on).
pub fn wal_staging(wal_dir: &Path) -> PathBuf {
    let name = wal_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    wal_dir.with_file_name(format!(".{name}.lifeboat-staging"))
}

/// A free `<path>.pre-restore-<stamp>[.n]` name.
fn aside_name(path: &Path, stamp: &str) -> PathBuf {
    let mut aside = with_suffix(path, &format!(".pre-restore-{stamp}"));
    let mut n = 1;
    while aside.exists() {
        aside = with_suffix(path, &format!(".pre-restore-{stamp}.{n}"));
        n += 1;
    }
    aside
}

/// The parent directory of `p` (`/` for a top-level path).
pub fn parent_of(p: &Path) -> &Path {
    p.parent().unwrap_or(Path::new("/"))
}

/// Refuse a WAL dir that is a mount point: it cannot be renamed aside (EBUSY), so the swap could
/// not be atomic. etcdutl cannot restore into it either (`wal-dir %q exists`).
pub fn ensure_wal_dir_movable(wal_dir: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let Ok(own) = std::fs::symlink_metadata(wal_dir) else {
        return Ok(());
    };
    if own.file_type().is_symlink() || !own.is_dir() {
        return Err(Error::Restore(format!(
            "LIFEBOAT_WAL_DIR {} exists but is not a directory; nothing was changed",
            wal_dir.display()
        )));
    }
    let parent = std::fs::metadata(parent_of(wal_dir))
        .map_err(|e| Error::io(format!("reading {}", parent_of(wal_dir).display()), e))?;
    if parent.dev() != own.dev() || parent.ino() == own.ino() {
        return Err(Error::Restore(format!(
            "LIFEBOAT_WAL_DIR {} is a mount point, which cannot be moved aside atomically: point LIFEBOAT_WAL_DIR and etcd's --wal-dir at a subdirectory of the volume (e.g. {}/wal); nothing was changed",
            wal_dir.display(),
            wal_dir.display()
        )));
    }
    Ok(())
}

/// Move `<data>/member` (and the WAL dir, if separate) aside, if present, and the staged ones into
/// their place; fsync the parents. Renames only, so each step is atomic; on an error every step
/// already done is undone (the old member and WAL are put back), so nothing is ever lost.
///
/// Order: old member aside, old WAL dir aside, new WAL dir in, new member in. `member/` appearing
/// is the last step, so a complete `member/` means the WAL is in place too.
///
/// This function never awaits: called from the restore future, it runs to the end in one poll,
/// so a SIGTERM arriving meanwhile is handled only after it returned (the swap is a critical
/// section; `tests/restore.rs` `sigterm_during_swap_*` proves it).
pub fn swap(
    data_dir: &Path,
    staging: &Path,
    stamp: &str,
    wal: Option<WalTarget<'_>>,
) -> Result<Swapped> {
    let live = data_dir.join("member");
    let staged = staging.join("member");
    let mut undo: Vec<(PathBuf, PathBuf)> = Vec::new();
    let rollback = |undo: &mut Vec<(PathBuf, PathBuf)>| {
        while let Some((from, to)) = undo.pop() {
            // Reverse of `rename(to -> from)` done earlier.
            if let Err(e) = std::fs::rename(&from, &to) {
                tracing::error!(from = %from.display(), to = %to.display(), error = %e, "could not undo a rename; move it back by hand");
            }
        }
    };
    let step = |from: &Path, to: &Path, what: &str, undo: &mut Vec<(PathBuf, PathBuf)>| {
        match std::fs::rename(from, to) {
            Ok(()) => {
                undo.push((to.to_path_buf(), from.to_path_buf()));
                Ok(())
            }
            Err(e) => {
                let err = Error::io(format!("{what}: {} to {}", from.display(), to.display()), e);
                rollback(undo);
                Err(err)
            }
        }
    };
    let moved_aside = if live.exists() {
        let aside = aside_name(&live, stamp);
        step(&live, &aside, "moving the old member aside", &mut undo)?;
        Some(aside)
    } else {
        None
    };
    let mut wal_moved_aside = None;
    if let Some(w) = &wal {
        if w.dir.exists() {
            let aside = aside_name(w.dir, stamp);
            step(w.dir, &aside, "moving the old WAL dir aside", &mut undo)?;
            wal_moved_aside = Some(aside);
        }
    }
    crate::testhook::pause("LIFEBOAT_TEST_PAUSE_IN_SWAP");
    if let Some(w) = &wal {
        step(
            w.staged,
            w.dir,
            "moving the new WAL dir into place",
            &mut undo,
        )?;
    }
    step(
        &staged,
        &live,
        "moving the new member into place",
        &mut undo,
    )?;
    fsync_dir(data_dir)?;
    if let Some(w) = &wal {
        fsync_dir(parent_of(w.dir))?;
    }
    let _ = std::fs::remove_dir(staging);
    Ok(Swapped {
        moved_aside,
        wal_moved_aside,
    })
}

pub fn read_marker(data_dir: &Path) -> Option<String> {
    std::fs::read_to_string(data_dir.join(MARKER)).ok()
}

pub fn write_marker(data_dir: &Path, json: &str) -> Result<()> {
    write_durably(&data_dir.join(MARKER), json.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swap_moves_old_member_aside_and_never_deletes() {
        let d = tempfile::tempdir().unwrap();
        let data = d.path();
        std::fs::create_dir_all(data.join("member/snap")).unwrap();
        std::fs::write(data.join("member/snap/db"), b"old").unwrap();
        std::fs::create_dir_all(data.join("lost+found")).unwrap();
        let staging = fresh_staging(data).unwrap();
        std::fs::create_dir_all(staging.join("member/snap")).unwrap();
        std::fs::write(staging.join("member/snap/db"), b"new").unwrap();
        let s = swap(data, &staging, "20261122T000000Z", None).unwrap();
        assert_eq!(std::fs::read(data.join("member/snap/db")).unwrap(), b"new");
        let aside = s.moved_aside.unwrap();
        assert_eq!(std::fs::read(aside.join("snap/db")).unwrap(), b"old");
        assert!(!staging.exists());
        assert!(data.join("lost+found").exists());

        // A second restore with the same stamp does not overwrite the first moved-aside dir.
        let staging = fresh_staging(data).unwrap();
        std::fs::create_dir_all(staging.join("member")).unwrap();
        let s2 = swap(data, &staging, "20261122T000000Z", None).unwrap();
        assert_ne!(s2.moved_aside.unwrap(), aside);
        assert!(aside.exists());
    }

    #[test]
    fn swap_with_a_separate_wal_dir_and_rollback() {
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("data");
        let wal = d.path().join("waldisk/wal");
        std::fs::create_dir_all(data.join("member/snap")).unwrap();
        std::fs::write(data.join("member/snap/db"), b"old").unwrap();
        std::fs::create_dir_all(&wal).unwrap();
        std::fs::write(wal.join("0.wal"), b"old wal").unwrap();
        ensure_wal_dir_movable(&wal).unwrap();

        // The staged member is missing: the last rename fails and every step is undone.
        let staging = fresh_staging(&data).unwrap();
        let wstage = fresh_wal_staging(&wal).unwrap();
        assert_eq!(wstage, d.path().join("waldisk/.wal.lifeboat-staging"));
        std::fs::create_dir_all(&wstage).unwrap();
        std::fs::write(wstage.join("0.wal"), b"new wal").unwrap();
        let target = WalTarget {
            dir: &wal,
            staged: &wstage,
        };
        let e = swap(&data, &staging, "T", Some(target)).unwrap_err();
        assert!(
            e.to_string().contains("moving the new member into place"),
            "{e}"
        );
        assert_eq!(std::fs::read(data.join("member/snap/db")).unwrap(), b"old");
        assert_eq!(std::fs::read(wal.join("0.wal")).unwrap(), b"old wal");
        assert_eq!(std::fs::read(wstage.join("0.wal")).unwrap(), b"new wal");

        std::fs::create_dir_all(staging.join("member/snap")).unwrap();
        std::fs::write(staging.join("member/snap/db"), b"new").unwrap();
        let s = swap(&data, &staging, "T", Some(target)).unwrap();
        assert_eq!(std::fs::read(data.join("member/snap/db")).unwrap(), b"new");
        assert_eq!(std::fs::read(wal.join("0.wal")).unwrap(), b"new wal");
        let wa = s.wal_moved_aside.unwrap();
        assert_eq!(wa, d.path().join("waldisk/wal.pre-restore-T"));
        assert_eq!(std::fs::read(wa.join("0.wal")).unwrap(), b"old wal");
        assert_eq!(
            std::fs::read(s.moved_aside.unwrap().join("snap/db")).unwrap(),
            b"old"
        );
        assert!(!wstage.exists() && !staging.exists());

        // Not a directory: refused.
        let f = d.path().join("file");
        std::fs::write(&f, b"x").unwrap();
        assert!(ensure_wal_dir_movable(&f).is_err());
        assert!(ensure_wal_dir_movable(&d.path().join("absent")).is_ok());
        assert!(ensure_wal_dir_movable(Path::new("/")).is_err());
    }

    #[test]
    fn locked_db_is_refused() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("member/snap")).unwrap();
        let db = d.path().join("member/snap/db");
        std::fs::write(&db, b"x").unwrap();
        ensure_not_in_use(d.path()).unwrap();
        let holder = std::fs::File::open(&db).unwrap();
        // SAFETY: test-only flock on an fd we own.
        assert_eq!(
            unsafe { libc::flock(holder.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
            0
        );
        let e = ensure_not_in_use(d.path()).unwrap_err().to_string();
        assert!(e.contains("running etcd"), "{e}");
    }

    #[test]
    fn room_and_writability_checked() {
        let d = tempfile::tempdir().unwrap();
        ensure_writable_with_room(d.path(), 1).unwrap();
        let e = ensure_writable_with_room(d.path(), u64::MAX)
            .unwrap_err()
            .to_string();
        assert!(e.contains("nothing was changed"), "{e}");
    }
}

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
    create_dir_private(data_dir).map_err(|e| {
        Error::Restore(format!(
            "cannot create data dir {}: {e}",
            data_dir.display()
        ))
    })?;
    let probe = data_dir.join(format!(".lifeboat-probe-{}", std::process::id()));
    std::fs::write(&probe, b"probe")
        .and_then(|_| std::fs::remove_file(&probe))
        .map_err(|e| {
            Error::Restore(format!(
                "data dir {} is not writable ({e}); nothing was changed",
                data_dir.display()
            ))
        })?;
    let free = crate::fsutil::free_space(data_dir)?;
    if free < needed {
        return Err(Error::Restore(format!(
            "data dir {} has {} free, the restored member needs about {}; nothing was changed",
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

/// What `swap` did, for the log and the marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Swapped {
    pub moved_aside: Option<PathBuf>,
}

/// Move `<data>/member` aside (if any) and `<staging>/member` into its place; fsync `<data>`.
pub fn swap(data_dir: &Path, staging: &Path, stamp: &str) -> Result<Swapped> {
    let live = data_dir.join("member");
    let staged = staging.join("member");
    let moved_aside = if live.exists() {
        let mut aside = data_dir.join(format!("member.pre-restore-{stamp}"));
        let mut n = 1;
        while aside.exists() {
            aside = data_dir.join(format!("member.pre-restore-{stamp}.{n}"));
            n += 1;
        }
        std::fs::rename(&live, &aside).map_err(|e| {
            Error::io(
                format!("moving {} aside to {}", live.display(), aside.display()),
                e,
            )
        })?;
        Some(aside)
    } else {
        None
    };
    if let Err(e) = std::fs::rename(&staged, &live) {
        // Put the old member back: the data dir must never be left without it.
        if let Some(aside) = &moved_aside {
            let _ = std::fs::rename(aside, &live);
        }
        return Err(Error::io(
            format!("moving {} into place", staged.display()),
            e,
        ));
    }
    fsync_dir(data_dir)?;
    let _ = std::fs::remove_dir(staging);
    Ok(Swapped { moved_aside })
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
        let s = swap(data, &staging, "20261122T000000Z").unwrap();
        assert_eq!(std::fs::read(data.join("member/snap/db")).unwrap(), b"new");
        let aside = s.moved_aside.unwrap();
        assert_eq!(std::fs::read(aside.join("snap/db")).unwrap(), b"old");
        assert!(!staging.exists());
        assert!(data.join("lost+found").exists());

        // A second restore with the same stamp does not overwrite the first moved-aside dir.
        let staging = fresh_staging(data).unwrap();
        std::fs::create_dir_all(staging.join("member")).unwrap();
        let s2 = swap(data, &staging, "20261122T000000Z").unwrap();
        assert_ne!(s2.moved_aside.unwrap(), aside);
        assert!(aside.exists());
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

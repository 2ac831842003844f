//! The directory backend (`file:///dir`): a PVC, an NFS mount or a local disk.
//!
//! Every write goes through a hidden temp file in the destination directory, is fsynced, renamed
//! into place and the directory fsynced, so a crash leaves either the old state or the new object,
//! never a torn one. Listing skips the hidden temp files.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::fsutil::{
    commit_file, create_dir_private, create_private, temp_sibling, write_durably, RemoveOnDrop,
};
use crate::store::ObjectMeta;

pub struct LocalStore {
    root: PathBuf,
}

fn store_err(what: String, e: std::io::Error) -> Error {
    Error::Store(format!("{what}: {e}"))
}

impl LocalStore {
    pub fn new(root: PathBuf) -> Self {
        LocalStore { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    /// The file that holds `key` (which may not exist).
    pub fn file_of(&self, key: &str) -> PathBuf {
        self.path(key)
    }

    fn parent_dir(&self, key: &str) -> Result<PathBuf> {
        let p = self.path(key);
        let dir = p
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.root.clone());
        create_dir_private(&dir)?;
        Ok(dir)
    }

    /// Read `key` through `sink` (e.g. a hasher); its size.
    pub fn read_into(&self, key: &str, sink: &mut impl std::io::Write) -> Result<u64> {
        let path = self.path(key);
        let mut f =
            File::open(&path).map_err(|e| store_err(format!("opening {}", path.display()), e))?;
        std::io::copy(&mut f, sink).map_err(|e| store_err(format!("reading {}", path.display()), e))
    }

    pub fn put_file(&self, key: &str, src: &Path) -> Result<ObjectMeta> {
        self.parent_dir(key)?;
        let dest = self.path(key);
        let tmp = temp_sibling(&dest);
        let guard = RemoveOnDrop::new(tmp.clone());
        let mut out = create_private(&tmp)?;
        let mut input =
            File::open(src).map_err(|e| Error::io(format!("opening {}", src.display()), e))?;
        let size = std::io::copy(&mut input, &mut out)
            .map_err(|e| store_err(format!("writing {}", tmp.display()), e))?;
        commit_file(&out, &tmp, &dest)?;
        guard.disarm();
        Ok(ObjectMeta {
            key: key.to_string(),
            size,
        })
    }

    /// Like `put_file`, but `src` (a temporary file of the caller's) may be moved instead of
    /// copied when it is on the same filesystem: no second gigabyte to write and flush.
    pub fn put_file_moving(&self, key: &str, src: &Path) -> Result<ObjectMeta> {
        self.parent_dir(key)?;
        let dest = self.path(key);
        let tmp = temp_sibling(&dest);
        if std::fs::rename(src, &tmp).is_err() {
            return self.put_file(key, src); // another filesystem: copy
        }
        let guard = RemoveOnDrop::new(tmp.clone());
        let file =
            File::open(&tmp).map_err(|e| store_err(format!("opening {}", tmp.display()), e))?;
        let size = file
            .metadata()
            .map_err(|e| store_err(format!("stat {}", tmp.display()), e))?
            .len();
        commit_file(&file, &tmp, &dest)?;
        guard.disarm();
        Ok(ObjectMeta {
            key: key.to_string(),
            size,
        })
    }

    pub fn put_bytes(&self, key: &str, bytes: &[u8]) -> Result<ObjectMeta> {
        self.parent_dir(key)?;
        write_durably(&self.path(key), bytes)?;
        Ok(ObjectMeta {
            key: key.to_string(),
            size: bytes.len() as u64,
        })
    }

    pub fn get_bytes(&self, key: &str) -> Result<Vec<u8>> {
        let p = self.path(key);
        let mut buf = Vec::new();
        File::open(&p)
            .and_then(|mut f| f.read_to_end(&mut buf))
            .map_err(|e| store_err(format!("reading {}", p.display()), e))?;
        Ok(buf)
    }

    pub fn get_to_file(&self, key: &str, dest: &Path) -> Result<u64> {
        let p = self.path(key);
        let mut input =
            File::open(&p).map_err(|e| store_err(format!("opening {}", p.display()), e))?;
        let mut out = create_private(dest)?;
        std::io::copy(&mut input, &mut out)
            .map_err(|e| Error::io(format!("copying {} to {}", p.display(), dest.display()), e))
    }

    pub fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        match std::fs::metadata(self.path(key)) {
            Ok(m) if m.is_file() => Ok(Some(ObjectMeta {
                key: key.to_string(),
                size: m.len(),
            })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(store_err(format!("stat {}", self.path(key).display()), e)),
        }
    }

    pub fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let mut out = Vec::new();
        let start = self.root.join(prefix.trim_end_matches('/'));
        if !start.exists() {
            return Ok(out);
        }
        let mut stack = vec![start];
        while let Some(dir) = stack.pop() {
            let entries = std::fs::read_dir(&dir)
                .map_err(|e| store_err(format!("listing {}", dir.display()), e))?;
            for entry in entries {
                let entry =
                    entry.map_err(|e| store_err(format!("listing {}", dir.display()), e))?;
                let name = entry.file_name();
                if name.to_string_lossy().starts_with('.') {
                    continue; // temp files, lock files, lost+found-style dotfiles
                }
                let ft = entry
                    .file_type()
                    .map_err(|e| store_err(format!("stat {}", entry.path().display()), e))?;
                let path = entry.path();
                if ft.is_dir() {
                    stack.push(path);
                } else if ft.is_file() {
                    let rel = path
                        .strip_prefix(&self.root)
                        .unwrap_or(&path)
                        .to_string_lossy()
                        .into_owned();
                    let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
                    out.push(ObjectMeta { key: rel, size });
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    pub fn delete(&self, key: &str) -> Result<()> {
        let p = self.path(key);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(store_err(format!("deleting {}", p.display()), e)),
        }
        // Remove the backup directory once it is empty (ignore "not empty").
        if let Some(dir) = p.parent() {
            if dir != self.root {
                let _ = std::fs::remove_dir(dir);
            }
        }
        Ok(())
    }
}

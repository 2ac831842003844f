//! Where backups live: one interface, several backends, one shared test suite.
//!
//! Keys are `/`-separated paths relative to the store root (`<cluster>/<backup-id>/manifest.json`).
//! The store URL and every backend setting are parsed and validated once at start-up
//! ([`StoreConfig::from_env`]); `Display`/`Debug` never show credentials or presigned signatures
//! (`?REDACTED`). Backends are enum variants rather than a `dyn` trait because async trait methods
//! are not object-safe; adding one is adding a variant. Not every backend can do everything: a
//! presigned URL is one object signed for one HTTP method, so it cannot list, delete or read back
//! what it wrote; [`Store::capabilities`] says so, and callers ask before they rely on it. The
//! same test functions run against every backend (`tests/store_suite.rs`).

pub mod local;
pub mod net;
pub mod presigned;
pub mod s3;

use std::fmt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use sha2::{Digest, Sha256};

use crate::config::Env;
use crate::error::{Error, Result};

/// A parsed `LIFEBOAT_STORE`.
#[derive(Clone, PartialEq, Eq)]
pub enum Location {
    /// `file:///dir` or an absolute path.
    Local(PathBuf),
    /// `s3://bucket/prefix`.
    S3 { bucket: String, prefix: String },
    /// A presigned `https://…` (or `http://` on loopback) URL for one object.
    Presigned(String),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(p) => write!(f, "file://{}", p.display()),
            Location::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
            Location::Presigned(url) => f.write_str(&redact_url(url)),
        }
    }
}

impl fmt::Debug for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Location({self})")
    }
}

/// `https://user:pw@host/p?X-Amz-Signature=…` → `https://REDACTED@host/p?REDACTED`.
pub fn redact_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, _)) => (b, "?REDACTED"),
        None => (url, ""),
    };
    let base = match base.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('/') {
            Some((auth, path)) if auth.contains('@') => format!(
                "{scheme}://REDACTED@{}/{path}",
                auth.rsplit('@').next().unwrap_or("")
            ),
            None if rest.contains('@') => format!(
                "{scheme}://REDACTED@{}",
                rest.rsplit('@').next().unwrap_or("")
            ),
            _ => base.to_string(),
        },
        None => base.to_string(),
    };
    format!("{base}{query}")
}

/// `https://user:pw@host:1/secret/path?token=…` → `https://host:1/…`: for URLs whose path may be a
/// secret too (webhooks).
pub fn redact_to_host(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let auth = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = auth.rsplit('@').next().unwrap_or("");
    let more = if rest.len() > auth.len() { "/…" } else { "" };
    format!("{scheme}://{host}{more}")
}

impl Location {
    pub fn parse(var: &str, raw: &str) -> Result<Self> {
        let bad = |why: &str| Error::Config(format!("{var}: {} {why}", redact_url(raw)));
        if let Some(path) = raw.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(bad("must be an absolute path: file:///dir"));
            }
            return Ok(Location::Local(PathBuf::from(path)));
        }
        if raw.starts_with('/') {
            return Ok(Location::Local(PathBuf::from(raw)));
        }
        if let Some(rest) = raw.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let valid = (3..=63).contains(&bucket.len())
                && bucket.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
                });
            if !valid {
                return Err(bad("is not s3://bucket[/prefix] with a valid bucket name (3-63 lowercase letters, digits, '-', '.')"));
            }
            return Ok(Location::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.trim_matches('/').to_string(),
            });
        }
        let lower = raw.to_ascii_lowercase();
        if lower.starts_with("https://") || lower.starts_with("http://") {
            return Ok(Location::Presigned(raw.to_string()));
        }
        Err(bad("has an unknown scheme: use file:///dir, s3://bucket/prefix or a presigned https:// URL"))
    }
}

/// What a store knows about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
}

/// Reject keys that could escape the store root.
pub fn check_key(key: &str) -> Result<()> {
    let bad = key.is_empty()
        || key.starts_with('/')
        || key
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..")
        || key.contains('\0');
    if bad {
        Err(Error::Store(format!("invalid object key {key:?}")))
    } else {
        Ok(())
    }
}

/// Everything needed to open the store: `LIFEBOAT_STORE` plus the settings of its backend, all
/// validated by [`StoreConfig::from_env`] before anything runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    pub location: Location,
    backend: BackendConfig,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum BackendConfig {
    Local,
    S3(Box<s3::S3Config>),
    Presigned(Box<presigned::PresignedConfig>),
}

impl StoreConfig {
    /// Read `LIFEBOAT_STORE` (default `default_url`) and the variables of the backend it names.
    pub fn from_env(env: &Env, default_url: &str) -> Result<Self> {
        let raw = env.get("LIFEBOAT_STORE").unwrap_or(default_url);
        Self::parse(env, "LIFEBOAT_STORE", raw)
    }

    /// A store named by `raw` (read from variable `var`, for errors), with its backend's
    /// settings from `env`: e.g. an `s3://` restore source that is not `LIFEBOAT_STORE`.
    pub fn parse(env: &Env, var: &str, raw: &str) -> Result<Self> {
        let location = Location::parse(var, raw)?;
        if env.get("LIFEBOAT_MANIFEST_URL").is_some() && !matches!(location, Location::Presigned(_))
        {
            return Err(Error::Config(
                "LIFEBOAT_MANIFEST_URL: only used when LIFEBOAT_STORE is a presigned URL".into(),
            ));
        }
        let backend = match &location {
            Location::Local(_) => BackendConfig::Local,
            Location::S3 { bucket, prefix } => {
                BackendConfig::S3(Box::new(s3::S3Config::from_env(env, bucket, prefix)?))
            }
            Location::Presigned(url) => BackendConfig::Presigned(Box::new(
                presigned::PresignedConfig::from_env(env, var, url)?,
            )),
        };
        Ok(StoreConfig { location, backend })
    }

    /// A directory store (no further settings).
    pub fn local(dir: impl Into<PathBuf>) -> Self {
        StoreConfig {
            location: Location::Local(dir.into()),
            backend: BackendConfig::Local,
        }
    }
}

/// What a backend can do beyond put and get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// `list` works.
    pub list: bool,
    /// `delete` works.
    pub delete: bool,
    /// What was written can be read back (`head`, `get_*`) through the same store.
    pub read_back: bool,
    /// A manifest (`…/manifest.json`) can be stored next to the object.
    pub manifest: bool,
}

/// An opened store.
pub enum Store {
    Local(local::LocalStore),
    S3(s3::S3Store),
    Presigned(presigned::PresignedStore),
}

impl Store {
    pub async fn open(cfg: &StoreConfig) -> Result<Store> {
        match (&cfg.location, &cfg.backend) {
            (Location::Local(dir), _) => Ok(Store::Local(local::LocalStore::new(dir.clone()))),
            (_, BackendConfig::S3(c)) => Ok(Store::S3(s3::S3Store::open(c).await?)),
            (_, BackendConfig::Presigned(c)) => {
                Ok(Store::Presigned(presigned::PresignedStore::open(c)?))
            }
            (loc, BackendConfig::Local) => Err(Error::Internal(format!(
                "store {loc} has no backend settings"
            ))),
        }
    }

    /// Where this store is, for logs: never with credentials or signatures.
    pub fn describe(&self) -> String {
        match self {
            Store::Local(s) => format!("file://{}", s.root().display()),
            Store::S3(s) => s.describe(),
            Store::Presigned(s) => s.describe(),
        }
    }

    pub fn capabilities(&self) -> Capabilities {
        match self {
            Store::Local(_) | Store::S3(_) => Capabilities {
                list: true,
                delete: true,
                read_back: true,
                manifest: true,
            },
            Store::Presigned(s) => s.capabilities(),
        }
    }

    /// Before a backup: a presigned URL that has already expired is refused (nothing could be
    /// completed with it), one that expires within `soon` is warned about. Other stores: nothing.
    pub fn check_expiry(&self, soon: std::time::Duration) -> Result<()> {
        match self {
            Store::Presigned(s) => s.check_expiry(std::time::SystemTime::now(), soon),
            _ => Ok(()),
        }
    }

    /// Upload the file at `src` as `key` (atomically: readers see all of it or nothing).
    pub async fn put_file(&self, key: &str, src: &Path) -> Result<ObjectMeta> {
        check_key(key)?;
        match self {
            Store::Local(s) => s.put_file(key, src),
            Store::S3(s) => s.put_file(key, src).await,
            Store::Presigned(s) => s.put_file(key, src).await,
        }
    }

    /// `put_file` for a temporary file the caller is done with: a directory store may move it
    /// into place instead of copying it (same filesystem); other stores upload it as usual.
    pub async fn put_file_moving(&self, key: &str, src: &Path) -> Result<ObjectMeta> {
        check_key(key)?;
        match self {
            Store::Local(s) => s.put_file_moving(key, src),
            _ => self.put_file(key, src).await,
        }
    }

    pub async fn put_bytes(&self, key: &str, bytes: &[u8]) -> Result<ObjectMeta> {
        check_key(key)?;
        match self {
            Store::Local(s) => s.put_bytes(key, bytes),
            Store::S3(s) => s.put_bytes(key, bytes).await,
            Store::Presigned(s) => s.put_bytes(key, bytes).await,
        }
    }

    /// The whole object in memory: for small objects (manifests).
    pub async fn get_bytes(&self, key: &str) -> Result<Vec<u8>> {
        check_key(key)?;
        match self {
            Store::Local(s) => s.get_bytes(key),
            Store::S3(s) => s.get_bytes(key).await,
            Store::Presigned(s) => s.get_bytes(key).await,
        }
    }

    /// Download `key` into `dest` (created 0600, streamed: never held in memory), returning its
    /// size. On error `dest` may hold a partial download: the caller owns (and removes) it.
    /// The file holding `key`, when the store is a local directory: a reader can use it in place
    /// instead of copying it first (`catalog::fetch_snapshot`).
    pub fn local_file(&self, key: &str) -> Result<Option<PathBuf>> {
        check_key(key)?;
        Ok(match self {
            Store::Local(s) => Some(s.file_of(key)),
            Store::S3(_) | Store::Presigned(_) => None,
        })
    }

    pub async fn get_to_file(&self, key: &str, dest: &Path) -> Result<u64> {
        check_key(key)?;
        match self {
            Store::Local(s) => s.get_to_file(key, dest),
            Store::S3(s) => s.get_to_file(key, dest).await,
            Store::Presigned(s) => s.get_to_file(key, dest).await,
        }
    }

    /// Read `key` back, hashing it as it streams (nothing is kept): its size and sha256.
    pub async fn hash_object(&self, key: &str) -> Result<(u64, [u8; 32])> {
        check_key(key)?;
        let mut sink = HashSink::default();
        let n = match self {
            Store::Local(s) => s.read_into(key, &mut sink)?,
            Store::S3(s) => s.get_to_writer(key, &mut sink, "the hasher").await?,
            Store::Presigned(s) => s.get_to_writer(key, &mut sink, "the hasher").await?,
        };
        Ok((n, sink.hash.finalize().into()))
    }

    pub async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        check_key(key)?;
        match self {
            Store::Local(s) => s.head(key),
            Store::S3(s) => s.head(key).await,
            Store::Presigned(s) => s.head(key).await,
        }
    }

    /// Every object whose key starts with `prefix` (a directory-like prefix ending in `/`),
    /// sorted by key.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        match self {
            Store::Local(s) => s.list(prefix),
            Store::S3(s) => s.list(prefix).await,
            Store::Presigned(s) => s.list(prefix),
        }
    }

    /// Remove `key`; removing a missing key is not an error.
    pub async fn delete(&self, key: &str) -> Result<()> {
        check_key(key)?;
        match self {
            Store::Local(s) => s.delete(key),
            Store::S3(s) => s.delete(key).await,
            Store::Presigned(s) => s.delete(key),
        }
    }
}

/// A writer that only hashes (sync and async).
#[derive(Default)]
struct HashSink {
    hash: Sha256,
}

impl std::io::Write for HashSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.hash.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl tokio::io::AsyncWrite for HashSink {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.hash.update(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_locations() {
        assert_eq!(
            Location::parse("V", "file:///backups").unwrap(),
            Location::Local("/backups".into())
        );
        assert_eq!(
            Location::parse("V", "/b").unwrap(),
            Location::Local("/b".into())
        );
        assert_eq!(
            Location::parse("V", "s3://my-bucket/a/b/").unwrap(),
            Location::S3 {
                bucket: "my-bucket".into(),
                prefix: "a/b".into()
            }
        );
        for bad in [
            "file://rel",
            "s3://A_B/x",
            "s3://",
            "ftp://x",
            "backups",
            "",
        ] {
            let e = Location::parse("LIFEBOAT_STORE", bad)
                .unwrap_err()
                .to_string();
            assert!(e.contains("LIFEBOAT_STORE"), "{bad}: {e}");
        }
    }

    #[test]
    fn presigned_urls_are_redacted_everywhere() {
        let url = "https://bucket.s3.amazonaws.com/x/snap.db?X-Amz-Credential=AKIA&X-Amz-Signature=deadbeef";
        let loc = Location::parse("V", url).unwrap();
        for s in [loc.to_string(), format!("{loc:?}")] {
            assert!(!s.contains("deadbeef") && !s.contains("AKIA"), "{s}");
            assert!(s.contains("snap.db?REDACTED"), "{s}");
        }
        assert_eq!(redact_url("http://u:p@h:1/x"), "http://REDACTED@h:1/x");
        assert_eq!(redact_url("http://u:p@h:1"), "http://REDACTED@h:1");
        assert_eq!(
            redact_to_host("https://u:p@hooks.example:8443/T0/B0/secret?x=1"),
            "https://hooks.example:8443/…"
        );
        assert_eq!(redact_to_host("http://h"), "http://h");
        let e = Location::parse("V", "gopher://u:secret@h/?sig=1")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("secret") && !e.contains("sig=1"), "{e}");
    }

    #[test]
    fn store_config_checks_backend_settings() {
        let env = Env::from_pairs([
            ("LIFEBOAT_STORE", "file:///b"),
            ("LIFEBOAT_MANIFEST_URL", "https://h/m?sig=x"),
        ]);
        let e = StoreConfig::from_env(&env, "").unwrap_err().to_string();
        assert!(e.contains("LIFEBOAT_MANIFEST_URL"), "{e}");
        let env = Env::from_pairs([("LIFEBOAT_STORE", "http://example.com/b/k?X-Amz-Signature=s")]);
        let e = StoreConfig::from_env(&env, "").unwrap_err().to_string();
        assert!(
            e.contains("LIFEBOAT_STORE") && e.contains("loopback"),
            "{e}"
        );
        let env = Env::from_pairs([("LIFEBOAT_S3_PART_SIZE", "1MiB")]);
        let e = StoreConfig::from_env(&env, "s3://bucket/p")
            .unwrap_err()
            .to_string();
        assert!(e.contains("LIFEBOAT_S3_PART_SIZE"), "{e}");
        let c = StoreConfig::from_env(&Env::default(), "file:///b").unwrap();
        assert_eq!(c.location, Location::Local("/b".into()));
    }

    #[test]
    fn keys_cannot_escape() {
        for bad in ["", "/abs", "a/../b", "a//b", "./a", "a/"] {
            assert!(check_key(bad).is_err(), "{bad}");
        }
        assert!(check_key("c/20261122T043330Z-r5/manifest.json").is_ok());
    }
}

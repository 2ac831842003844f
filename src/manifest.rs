//! The per-backup manifest (the commit marker) and the store layout.
//!
//! Layout: `<prefix>/<cluster-name>/<UTC yyyymmddThhmmssZ>-r<revision>/` holding `snapshot.db[.zst]`
//! and `manifest.json`. The manifest is written last: a backup without one is incomplete and is
//! ignored by list, restore and retention. Pure code: no I/O here.

use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime};

use crate::error::{Error, Result};

pub const MANIFEST_NAME: &str = "manifest.json";
pub const FORMAT_VERSION: u32 = 1;

/// `etcdutl snapshot status -w json` of the snapshot, with etcdutl's field names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusRecord {
    pub hash: u32,
    pub revision: i64,
    #[serde(rename = "totalKey")]
    pub total_key: u64,
    #[serde(rename = "totalSize")]
    pub total_size: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Durations {
    pub preflight_ms: u64,
    pub stream_ms: u64,
    pub verify_ms: u64,
    pub compress_ms: u64,
    pub upload_ms: u64,
    pub total_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub tool_version: String,
    pub backup_id: String,
    pub cluster_name: String,
    /// RFC 3339, UTC, seconds.
    pub created: String,
    pub cluster_id: String,
    pub member_id: String,
    pub member_name: String,
    pub endpoint: String,
    pub etcd_version: String,
    pub revision: i64,
    pub raft_term: u64,
    pub raft_index: u64,
    pub status: StatusRecord,
    /// sha256 of the database bytes (equals the trailer).
    pub db_sha256: String,
    pub db_size: u64,
    /// The snapshot file as `etcdctl snapshot save` writes it: database + 32-byte trailer.
    pub snapshot_size: u64,
    pub snapshot_sha256: String,
    /// Object key relative to the store root.
    pub object_key: String,
    pub compression: String,
    pub stored_size: u64,
    pub stored_sha256: String,
    pub durations: Durations,
}

impl Manifest {
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    pub fn from_json(key: &str, bytes: &[u8]) -> Result<Self> {
        let m: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| Error::Store(format!("{key}: not a valid etcd-lifeboat manifest: {e}")))?;
        if m.format_version > FORMAT_VERSION {
            return Err(Error::Store(format!(
                "{key}: manifest format {} is newer than this etcd-lifeboat understands ({FORMAT_VERSION}); upgrade etcd-lifeboat",
                m.format_version
            )));
        }
        Ok(m)
    }

    pub fn created_time(&self) -> Result<SystemTime> {
        humantime::parse_rfc3339(&self.created).map_err(|e| {
            Error::Store(format!(
                "manifest {}: bad created time {:?}: {e}",
                self.backup_id, self.created
            ))
        })
    }
}

/// `20261122T043330Z-r1234` for a backup started at `at` when the member was at `revision` (the
/// preflight revision: the object key is fixed before the snapshot's own revision, which is at
/// least this and recorded in the manifest, is known).
pub fn backup_id(at: SystemTime, revision: i64) -> String {
    format!("{}-r{revision}", compact_utc(at))
}

/// `2026-11-22T04:33:30Z` → `20261122T043330Z`.
pub fn compact_utc(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at)
        .to_string()
        .replace(['-', ':'], "")
}

pub fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

/// The directory of one backup, relative to the store root.
pub fn backup_dir(cluster: &str, id: &str) -> String {
    format!("{cluster}/{id}")
}

pub fn object_name(compression: &str) -> &'static str {
    if compression == "zstd" {
        "snapshot.db.zst"
    } else {
        "snapshot.db"
    }
}

pub fn ms(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

/// A cluster name becomes a path segment: keep it to what Kubernetes allows in names.
pub fn check_cluster_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.' || b == b'_'
        })
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "LIFEBOAT_CLUSTER_NAME: {name:?} must be lowercase letters, digits, '-', '_' or '.', not starting with '.'"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_times() {
        let t = humantime::parse_rfc3339("2026-11-22T04:33:30Z").unwrap();
        assert_eq!(backup_id(t, 1234), "20261122T043330Z-r1234");
        assert_eq!(rfc3339(t), "2026-11-22T04:33:30Z");
    }

    #[test]
    fn manifest_round_trip_and_rejects() {
        let m = Manifest {
            format_version: 1,
            tool_version: "0.1.0".into(),
            backup_id: "x".into(),
            cluster_name: "c".into(),
            created: "2026-11-22T04:33:30Z".into(),
            cluster_id: "1".into(),
            member_id: "2".into(),
            member_name: "m".into(),
            endpoint: "https://127.0.0.1:2379".into(),
            etcd_version: "3.5.30".into(),
            revision: 5,
            raft_term: 2,
            raft_index: 9,
            status: StatusRecord {
                hash: 1,
                revision: 5,
                total_key: 9,
                total_size: 20480,
            },
            db_sha256: "ab".into(),
            db_size: 20480,
            snapshot_size: 20512,
            snapshot_sha256: "cd".into(),
            object_key: "c/x/snapshot.db".into(),
            compression: "none".into(),
            stored_size: 20512,
            stored_sha256: "cd".into(),
            durations: Durations::default(),
        };
        let j = m.to_json();
        assert!(String::from_utf8_lossy(&j).contains("\"totalKey\": 9"));
        assert_eq!(Manifest::from_json("k", &j).unwrap(), m);
        assert!(Manifest::from_json("k", b"<html>")
            .unwrap_err()
            .to_string()
            .contains("not a valid"));
        let newer = String::from_utf8(j)
            .unwrap()
            .replace("\"format_version\": 1", "\"format_version\": 99");
        assert!(Manifest::from_json("k", newer.as_bytes())
            .unwrap_err()
            .to_string()
            .contains("upgrade"));
    }

    #[test]
    fn cluster_names() {
        assert!(check_cluster_name("prod-eu.1").is_ok());
        for bad in ["", "../x", "A", "a/b", ".hidden"] {
            assert!(check_cluster_name(bad).is_err(), "{bad}");
        }
    }
}

//! `etcd-lifeboat restore`: configuration, then plan, then execute.
//!
//! Configuration is read and checked in full first (including the `{index}` template used by
//! Indexed Jobs), the snapshot is fetched and fully verified, the plan is printed, and only then is
//! anything on the target touched. Existing data is moved aside, never deleted.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::Env;
use crate::error::{Error, Result};
use crate::store::Location;

/// Where the snapshot comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A snapshot file on local disk (`/path` or `file:///path`).
    File(PathBuf),
    /// `latest` or a backup id in `LIFEBOAT_STORE` / `LIFEBOAT_CLUSTER_NAME`.
    Catalog {
        store: Location,
        cluster: String,
        which: String,
    },
    /// A presigned (or loopback http) URL of a raw snapshot.
    Url(String),
}

#[derive(Debug, Clone)]
pub struct RestoreConfig {
    pub source: Source,
    pub data_dir: PathBuf,
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
        return Ok(Source::Url(raw.to_string()));
    }
    if let Some(rest) = raw.strip_prefix("s3://") {
        // s3://bucket[/prefix]/<cluster>/<id>
        let parts: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
        if parts.len() < 3 {
            return Err(Error::Config(format!("LIFEBOAT_RESTORE_SOURCE: {raw:?}: expected s3://bucket[/prefix]/<cluster>/<backup-id>")));
        }
        let (id, cluster) = (parts[parts.len() - 1], parts[parts.len() - 2]);
        let store = Location::parse(
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
            "LIFEBOAT_RESTORE_SOURCE: {raw:?} is neither an absolute path, a URL, `latest` nor a backup id"
        )));
    }
    let store = Location::parse(
        "LIFEBOAT_STORE",
        env.get("LIFEBOAT_STORE")
            .unwrap_or("file:///var/lib/etcd-lifeboat/backups"),
    )?;
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
        let wal_dir = env.get("LIFEBOAT_WAL_DIR").map(PathBuf::from);
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
        match src("s3://bkt/pre/fix/prod/20261122T043330Z-r5").unwrap() {
            Source::Catalog {
                store,
                cluster,
                which,
            } => {
                assert_eq!(
                    store,
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

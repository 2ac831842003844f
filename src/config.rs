//! Configuration: environment variables → validated, typed config, checked once before anything runs.
//!
//! Every variable the tool reads is listed in [`VARS`] with its default and meaning; `--help` prints
//! that table for each command, so documentation and behaviour cannot drift apart. Parsing is a
//! second pass over an [`Env`] snapshot (a plain map, so tests need not touch the process
//! environment): each helper below names the variable in its error and says what was expected.
//!
//! Deviation from DESIGN.md: no `envy`. Its errors ("missing value for field x") name struct fields,
//! not variables; explicit parsing here is as short and says `LIFEBOAT_X: expected ..., got "..."`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};

/// The commands, for scoping variables in `--help`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmd {
    Backup,
    Restore,
    Status,
    List,
    Verify,
    Prune,
    Fetch,
}

pub struct Var {
    pub name: &'static str,
    pub default: &'static str,
    pub help: &'static str,
    pub commands: &'static [Cmd],
}

use Cmd::*;
const ALL: &[Cmd] = &[Backup, Restore, Status, List, Verify, Prune, Fetch];
const ETCD: &[Cmd] = &[Backup];
const STORE: &[Cmd] = &[Backup, Restore, List, Verify, Prune, Fetch];

/// Every environment variable etcd-lifeboat reads.
pub const VARS: &[Var] = &[
    Var { name: "LIFEBOAT_LOG", default: "info", help: "log filter (tracing syntax, e.g. `debug` or `etcd_lifeboat=debug`); RUST_LOG is used when unset", commands: ALL },
    Var { name: "LIFEBOAT_LOG_FORMAT", default: "text", help: "`text` or `json` (one JSON object per line, for log collectors)", commands: ALL },
    Var { name: "LIFEBOAT_ETCD_ENDPOINTS", default: "https://127.0.0.1:2379", help: "comma-separated client URLs; with several, the healthy member with the highest applied index is snapshotted (fallback: ETCDCTL_ENDPOINTS)", commands: ETCD },
    Var { name: "LIFEBOAT_ETCD_CACERT", default: "", help: "CA bundle file that signed etcd's serving certificate (fallback: ETCDCTL_CACERT)", commands: ETCD },
    Var { name: "LIFEBOAT_ETCD_CERT", default: "", help: "client certificate file (fallback: ETCDCTL_CERT)", commands: ETCD },
    Var { name: "LIFEBOAT_ETCD_KEY", default: "", help: "client private key file (fallback: ETCDCTL_KEY)", commands: ETCD },
    Var { name: "LIFEBOAT_ETCD_DIAL_TIMEOUT", default: "10s", help: "connect timeout per endpoint", commands: ETCD },
    Var { name: "LIFEBOAT_SNAPSHOT_TIMEOUT", default: "30m", help: "limit for the whole snapshot stream", commands: ETCD },
    Var { name: "LIFEBOAT_STORE", default: "file:///var/lib/etcd-lifeboat/backups", help: "where backups live: file:///dir, s3://bucket/prefix, or a presigned https:// URL", commands: STORE },
    Var { name: "LIFEBOAT_MANIFEST_URL", default: "", help: "with a presigned LIFEBOAT_STORE: a second presigned PUT URL for the backup's manifest.json (no manifest is kept without it)", commands: &[Backup] },
    Var { name: "LIFEBOAT_STORE_CONNECT_TIMEOUT", default: "10s", help: "S3 / presigned URL: TCP + TLS connect timeout", commands: STORE },
    Var { name: "LIFEBOAT_STORE_READ_TIMEOUT", default: "2m", help: "S3 / presigned URL: one request until its answer starts (its body, e.g. one part, included), and the longest pause in a download", commands: STORE },
    Var { name: "LIFEBOAT_STORE_OPERATION_TIMEOUT", default: "15m", help: "S3 / presigned URL: one operation (one part, one PUT, one GET) with all its retries; a presigned PUT gets 1s more per MiB", commands: STORE },
    Var { name: "LIFEBOAT_STORE_MAX_ATTEMPTS", default: "5", help: "S3 / presigned URL: attempts per request; 5xx, throttling, timeouts and connection errors are retried with backoff, other 4xx never", commands: STORE },
    Var { name: "AWS_REGION", default: "", help: "S3: the bucket's region (fallback: AWS_DEFAULT_REGION, the AWS profile, instance metadata; us-east-1 with a custom endpoint)", commands: STORE },
    Var { name: "AWS_ENDPOINT_URL_S3", default: "", help: "S3: endpoint of an S3-compatible store, e.g. https://minio.example:9000 (fallback: AWS_ENDPOINT_URL)", commands: STORE },
    Var { name: "AWS_ACCESS_KEY_ID", default: "", help: "S3: static credentials with AWS_SECRET_ACCESS_KEY (+ AWS_SESSION_TOKEN); unset: web identity (IRSA), AWS profile, instance metadata", commands: STORE },
    Var { name: "LIFEBOAT_S3_PATH_STYLE", default: "false", help: "S3: path-style requests (https://host/bucket/key), needed by most S3-compatible stores", commands: STORE },
    Var { name: "LIFEBOAT_S3_CA_FILE", default: "", help: "S3: PEM CA bundle trusted for the endpoint in addition to the system roots", commands: STORE },
    Var { name: "LIFEBOAT_S3_SSE", default: "none", help: "S3: server-side encryption: `none`, `AES256` or `aws:kms`", commands: &[Backup] },
    Var { name: "LIFEBOAT_S3_SSE_KMS_KEY_ID", default: "", help: "S3: KMS key id/ARN/alias for LIFEBOAT_S3_SSE=aws:kms (unset: the bucket's default key)", commands: &[Backup] },
    Var { name: "LIFEBOAT_S3_STORAGE_CLASS", default: "", help: "S3: storage class of uploads, e.g. STANDARD_IA (unset: the bucket's default)", commands: &[Backup] },
    Var { name: "LIFEBOAT_S3_CHECKSUM", default: "when_required", help: "S3: `when_required` (works with S3-compatible stores) or `when_supported` (the SDK adds a CRC to every upload and checks downloads)", commands: STORE },
    Var { name: "LIFEBOAT_S3_PART_SIZE", default: "16MiB", help: "S3: multipart part size (5MiB to 5GiB); smaller files are one PUT. Parts are read from the file as they are sent, never buffered whole", commands: &[Backup] },
    Var { name: "LIFEBOAT_S3_PARTS_IN_FLIGHT", default: "4", help: "S3: parts uploaded in parallel (each streams from the spool file, ~64 KiB of buffer)", commands: &[Backup] },
    Var { name: "LIFEBOAT_VERIFY_UPLOAD", default: "size", help: "after upload: `size` (the store's size of the object and the manifest read back) or `full` (also download the object again and compare its sha256 with the manifest; not possible with a presigned PUT URL)", commands: &[Backup] },
    Var { name: "LIFEBOAT_PUSHGATEWAY_URL", default: "", help: "Prometheus Pushgateway base URL (https://; plain http:// when it has no user info and no query); every backup, successful or not, POSTs its metrics to <url>/metrics/job/etcd_lifeboat_backup/cluster/<cluster-name>", commands: &[Backup] },
    Var { name: "LIFEBOAT_WEBHOOK_URL", default: "", help: "URL (https://, or http:// on loopback) that gets a JSON POST after every backup, restore and verify, successful or not; failures to notify are warnings only", commands: &[Backup, Restore, Verify] },
    Var { name: "LIFEBOAT_NOTIFY_TIMEOUT", default: "10s", help: "limit for all notifications of one run, retries included (3s at most after SIGTERM)", commands: &[Backup, Restore, Verify] },
    Var { name: "LIFEBOAT_CLUSTER_NAME", default: "default", help: "name of this cluster in the store layout <prefix>/<cluster-name>/<backup-id>/", commands: STORE },
    Var { name: "LIFEBOAT_SPOOL_DIR", default: "/tmp", help: "local directory for the snapshot while it is verified (needs room for the DB)", commands: &[Backup, Restore, Verify, Fetch] },
    Var { name: "LIFEBOAT_COMPRESSION", default: "zstd (none for a presigned URL)", help: "`zstd` or `none`; a presigned URL gets the raw snapshot (as `etcdctl snapshot save` writes it) unless this is set", commands: &[Backup] },
    Var { name: "LIFEBOAT_ZSTD_LEVEL", default: "-1", help: "zstd level: -7 (fastest) … -1 (default) … 1, 3 … 19 (smallest)", commands: &[Backup] },
    Var { name: "LIFEBOAT_PROGRESS_INTERVAL", default: "10s", help: "how often long transfers log progress", commands: &[Backup, Restore, Verify, Fetch] },
    Var { name: "LIFEBOAT_KEEP_LAST", default: "", help: "retention: keep the newest N backups (no LIFEBOAT_KEEP_* set = keep everything)", commands: &[Backup, Prune] },
    Var { name: "LIFEBOAT_KEEP_DAILY", default: "", help: "retention: keep the newest backup of each of the last N days that have one", commands: &[Backup, Prune] },
    Var { name: "LIFEBOAT_KEEP_WEEKLY", default: "", help: "retention: same per ISO week", commands: &[Backup, Prune] },
    Var { name: "LIFEBOAT_KEEP_MONTHLY", default: "", help: "retention: same per month", commands: &[Backup, Prune] },
    Var { name: "LIFEBOAT_KEEP_WITHIN", default: "", help: "retention: keep every backup newer than this (e.g. `7d`)", commands: &[Backup, Prune] },
    Var { name: "LIFEBOAT_INCOMPLETE_GRACE", default: "24h", help: "backups without a manifest (interrupted runs) are removed by prune once older than this", commands: &[Backup, Prune] },
    Var { name: "LIFEBOAT_DRY_RUN", default: "false", help: "prune/restore: print the plan, change nothing", commands: &[Backup, Prune, Restore] },
    Var { name: "LIFEBOAT_RESTORE_SOURCE", default: "", help: "snapshot to restore: a file path, `latest` or a backup id in LIFEBOAT_STORE, s3://bucket/prefix/<cluster>/<id>, or a presigned https:// URL (required)", commands: &[Restore] },
    Var { name: "LIFEBOAT_DATA_DIR", default: "", help: "the member's data dir to rebuild, e.g. /var/lib/etcd (required; existing data is moved aside, never deleted)", commands: &[Restore] },
    Var { name: "LIFEBOAT_WAL_DIR", default: "", help: "a separate WAL dir (etcd/etcdutl --wal-dir; start etcd with the same --wal-dir): the WAL goes there instead of <data-dir>/member/wal, member/snap stays in the data dir; an existing WAL dir is moved aside to <wal-dir>.pre-restore-<ts>, never deleted; it must not be a mount point (use a subdirectory of the volume); `{index}` is replaced as for LIFEBOAT_NAME", commands: &[Restore] },
    Var { name: "LIFEBOAT_NAME", default: "default", help: "this member's name (etcd --name); `{index}` is replaced by JOB_COMPLETION_INDEX or LIFEBOAT_MEMBER_INDEX", commands: &[Restore] },
    Var { name: "LIFEBOAT_INITIAL_CLUSTER", default: "<name>=http://localhost:2380", help: "all members: name=peerURL,… — identical for every member", commands: &[Restore] },
    Var { name: "LIFEBOAT_INITIAL_CLUSTER_TOKEN", default: "etcd-cluster", help: "etcd --initial-cluster-token", commands: &[Restore] },
    Var { name: "LIFEBOAT_INITIAL_ADVERTISE_PEER_URLS", default: "http://localhost:2380", help: "this member's peer URLs; `{index}` is replaced as for LIFEBOAT_NAME", commands: &[Restore] },
    Var { name: "LIFEBOAT_SKIP_HASH_CHECK", default: "false", help: "accept a snapshot without a sha256 trailer (a raw member/snap/db)", commands: &[Restore] },
    Var { name: "LIFEBOAT_BUMP_REVISION", default: "1000000000", help: "raise the revision by this much so clients' caches see newer data (0 disables)", commands: &[Restore] },
    Var { name: "LIFEBOAT_MARK_COMPACTED", default: "true", help: "mark old revisions compacted (required with a bump)", commands: &[Restore] },
    Var { name: "LIFEBOAT_MEMBER_INDEX", default: "", help: "member index for `{index}` when not run as an Indexed Job", commands: &[Restore] },
    Var { name: "LIFEBOAT_STATUS_COMPAT", default: "3.5", help: "`3.5` (etcdutl 3.4/3.5 output) or `3.6` (adds the version column, live-key count); same as --compat", commands: &[Status] },
];

/// A snapshot of the environment. Empty values count as unset, as shells and Kubernetes produce them.
#[derive(Debug, Clone, Default)]
pub struct Env(BTreeMap<String, String>);

impl Env {
    pub fn from_process() -> Self {
        Env(std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect())
    }

    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Env(pairs
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }

    /// The value of `name`, trimmed; `None` when unset or blank.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
    }

    /// The first set variable of `names` (e.g. our own, then the etcdctl fallback), with its name.
    pub fn first<'a>(&self, names: &[&'a str]) -> Option<(&'a str, &str)> {
        names.iter().find_map(|n| self.get(n).map(|v| (*n, v)))
    }

    pub fn duration(&self, name: &str, default: &str) -> Result<Duration> {
        let raw = self.get(name).unwrap_or(default);
        humantime::parse_duration(raw).map_err(|e| {
            Error::Config(format!(
                "{name}: expected a duration like `30s` or `15m`, got {raw:?} ({e})"
            ))
        })
    }

    pub fn bool(&self, name: &str, default: bool) -> Result<bool> {
        match self.get(name).map(str::to_ascii_lowercase).as_deref() {
            None => Ok(default),
            Some("1" | "true" | "yes" | "on") => Ok(true),
            Some("0" | "false" | "no" | "off") => Ok(false),
            Some(other) => Err(Error::Config(format!(
                "{name}: expected true or false, got {other:?}"
            ))),
        }
    }

    pub fn u64(&self, name: &str, default: u64) -> Result<u64> {
        match self.get(name) {
            None => Ok(default),
            Some(raw) => raw.parse().map_err(|_| {
                Error::Config(format!("{name}: expected a whole number, got {raw:?}"))
            }),
        }
    }

    /// One of `allowed` (case-insensitive), returned lowercased.
    pub fn choice(&self, name: &str, default: &str, allowed: &[&str]) -> Result<String> {
        let raw = self.get(name).unwrap_or(default).to_ascii_lowercase();
        if allowed.contains(&raw.as_str()) {
            Ok(raw)
        } else {
            Err(Error::Config(format!(
                "{name}: expected one of {}, got {raw:?}",
                allowed.join(", ")
            )))
        }
    }

    pub fn path(&self, name: &str, default: &str) -> PathBuf {
        PathBuf::from(self.get(name).unwrap_or(default))
    }
}

/// Log settings, needed before anything else so that config errors are logged in the chosen format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub filter: String,
    pub json: bool,
}

impl LogConfig {
    pub fn from_env(env: &Env) -> Result<Self> {
        let filter = env
            .first(&["LIFEBOAT_LOG", "RUST_LOG"])
            .map(|(_, v)| v.to_string())
            .unwrap_or_else(|| "info".to_string());
        let json = env.choice("LIFEBOAT_LOG_FORMAT", "text", &["text", "json"])? == "json";
        Ok(LogConfig { filter, json })
    }
}

/// The `--help` section listing a command's variables.
pub fn vars_help(cmd: Cmd) -> String {
    let mut out = String::from("Environment:\n");
    for v in VARS.iter().filter(|v| v.commands.contains(&cmd)) {
        let default = if v.default.is_empty() {
            "(unset)"
        } else {
            v.default
        };
        out.push_str(&format!(
            "  {:<28} {}\n  {:<28} default: {}\n",
            v.name, v.help, "", default
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_counts_as_unset_and_fallback_order_holds() {
        let env = Env::from_pairs([("LIFEBOAT_LOG", "  "), ("RUST_LOG", "debug")]);
        assert_eq!(LogConfig::from_env(&env).unwrap().filter, "debug");
        let env = Env::from_pairs([("LIFEBOAT_LOG", "warn"), ("RUST_LOG", "debug")]);
        assert_eq!(LogConfig::from_env(&env).unwrap().filter, "warn");
    }

    #[test]
    fn errors_name_the_variable() {
        let env = Env::from_pairs([
            ("LIFEBOAT_LOG_FORMAT", "xml"),
            ("D", "soon"),
            ("B", "maybe"),
            ("N", "-1"),
        ]);
        let msg = LogConfig::from_env(&env).unwrap_err().to_string();
        assert!(
            msg.contains("LIFEBOAT_LOG_FORMAT") && msg.contains("xml"),
            "{msg}"
        );
        assert!(env
            .duration("D", "1s")
            .unwrap_err()
            .to_string()
            .starts_with("configuration: D:"));
        assert!(env
            .bool("B", false)
            .unwrap_err()
            .to_string()
            .contains("B: expected true or false"));
        assert!(env
            .u64("N", 0)
            .unwrap_err()
            .to_string()
            .contains("N: expected a whole number"));
    }

    #[test]
    fn typed_values_parse() {
        let env = Env::from_pairs([("D", "15m"), ("B", "TRUE"), ("N", "42")]);
        assert_eq!(env.duration("D", "1s").unwrap(), Duration::from_secs(900));
        assert_eq!(env.duration("X", "30s").unwrap(), Duration::from_secs(30));
        assert!(env.bool("B", false).unwrap());
        assert_eq!(env.u64("N", 0).unwrap(), 42);
    }

    #[test]
    fn every_command_help_lists_log_vars() {
        for c in ALL {
            assert!(vars_help(*c).contains("LIFEBOAT_LOG_FORMAT"));
        }
        assert!(vars_help(Cmd::Backup).contains("LIFEBOAT_ETCD_CACERT"));
        assert!(!vars_help(Cmd::Status).contains("LIFEBOAT_ETCD_CACERT"));
    }
}

//! Fuzz target: the text parsers that see operator or store input — manifest JSON
//! (`Manifest::from_json`), store URLs (`store::Location::parse`, `redact_url`), the restore
//! cluster flags (`parse_initial_cluster`, `ClusterPlan::new`), backup ids, the command line and
//! the env-driven configs (`BackupConfig`, retention `Policy`, `EtcdConfig` endpoints/durations).
//! Must never panic; a presigned URL's query string must never survive redaction.
//!
//! Run: `scripts/fuzz.sh` (or `cd fuzz && cargo +nightly fuzz run config_parse`).
#![no_main]

use etcd_lifeboat::config::Env;
use etcd_lifeboat::store::{redact_url, Location};
use libfuzzer_sys::fuzz_target;

/// Env vars fed from the input's lines, in order. No file-path variables (CA/cert/key, spool
/// dir): the fuzzer must not read arbitrary files.
const VARS: &[&str] = &[
    "LIFEBOAT_STORE",
    "LIFEBOAT_CLUSTER_NAME",
    "LIFEBOAT_COMPRESSION",
    "LIFEBOAT_ZSTD_LEVEL",
    "LIFEBOAT_ETCD_ENDPOINTS",
    "LIFEBOAT_ETCD_DIAL_TIMEOUT",
    "LIFEBOAT_SNAPSHOT_TIMEOUT",
    "LIFEBOAT_PROGRESS_INTERVAL",
    "LIFEBOAT_KEEP_LAST",
    "LIFEBOAT_KEEP_DAILY",
    "LIFEBOAT_KEEP_WEEKLY",
    "LIFEBOAT_KEEP_MONTHLY",
    "LIFEBOAT_KEEP_WITHIN",
    "LIFEBOAT_INCOMPLETE_GRACE",
];

fuzz_target!(|data: &[u8]| {
    // Manifest JSON takes the raw bytes.
    if let Ok(m) = etcd_lifeboat::manifest::Manifest::from_json("fuzz/manifest.json", data) {
        let _ = m.created_time();
        let _ = m.to_json();
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };

    // Store URL: parse, display, and the redaction invariant.
    let redacted = redact_url(text);
    if text.contains('?') {
        assert!(
            redacted.ends_with("?REDACTED") && redacted.matches('?').count() == 1,
            "query survived redaction: {redacted:?}"
        );
    } else {
        assert!(!redacted.contains('?'));
    }
    match Location::parse("LIFEBOAT_STORE", text) {
        Ok(loc) => {
            let shown = format!("{loc} {loc:?}");
            if let Location::Presigned(_) = loc {
                if let Some((base, q)) = text.split_once('?') {
                    // (a query that also occurs in the visible part proves nothing)
                    if q.len() >= 16 && !base.contains(q) {
                        assert!(!shown.contains(q), "presigned query shown: {shown:?}");
                    }
                }
            }
        }
        Err(e) => {
            let msg = e.to_string();
            if let Some((base, q)) = text.split_once('?') {
                if q.len() >= 16 && !base.contains(q) && !"LIFEBOAT_STORE".contains(q) {
                    assert!(!msg.contains(q), "query in error: {msg:?}");
                }
            }
        }
    }

    let lines: Vec<&str> = text.split('\n').collect();
    let field = |i: usize| lines.get(i).copied().unwrap_or("");

    // Restore cluster flags: name, initial cluster, advertise URLs, token.
    let _ = etcd_lifeboat::restore::cluster::parse_initial_cluster(text);
    if let Ok(plan) =
        etcd_lifeboat::restore::cluster::ClusterPlan::new(field(0), field(1), field(2), field(3))
    {
        let _ = plan.member_ids();
        let _ = plan.index();
        for m in &plan.members {
            let _ = m.json();
            let _ = m.raft_attributes_json();
        }
    }

    // Backup ids (catalog) and the command line.
    let _ = etcd_lifeboat::catalog::parse_id_time(text);
    let args: Vec<String> = text.split_whitespace().map(str::to_string).collect();
    let _ = etcd_lifeboat::cli::parse(&args);

    // Env-driven configs, one variable per line.
    let mut pairs: Vec<(&str, &str)> = VARS
        .iter()
        .zip(lines.iter())
        .map(|(k, v)| (*k, *v))
        .collect();
    pairs.push(("LIFEBOAT_SPOOL_DIR", "/tmp"));
    let env = Env::from_pairs(pairs);
    let _ = etcd_lifeboat::backup::BackupConfig::from_env(&env);
    let _ = etcd_lifeboat::retention::Policy::from_env(&env);
    let _ = etcd_lifeboat::etcd::EtcdConfig::from_env(&env);
    let _ = etcd_lifeboat::config::LogConfig::from_env(&env);
});

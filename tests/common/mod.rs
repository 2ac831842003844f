//! The integration-test harness: real etcd servers (3.4.23, 3.5.1, 3.5.30) with mutual TLS on
//! loopback, as child processes that never outlive the test that started them.
//!
//! Every integration test file does `mod common;` and builds on these pieces:
//!
//! - [`Version`]: where each etcd release's `etcd`, `etcdctl` and `etcdutl` live (the repo's `.deps`
//!   as laid out by `scripts/install-deps.sh`, or `LIFEBOAT_TEST_ETCD_*` directories). A missing
//!   binary fails the test with "run scripts/install-deps.sh"; nothing is ever skipped silently.
//! - [`Tls`]: a CA, a server certificate (SANs `127.0.0.1`, `localhost`), a client certificate with
//!   CN `root` (etcd maps the client-certificate CN to the user once auth is on), and an unrelated
//!   second CA with its own client certificate for wrong-CA tests. Generated with rcgen, files 0600.
//! - [`alloc_port`]: loopback ports that no other test in this process was given and that were
//!   free a moment ago (below the kernel's ephemeral range, bind-checked).
//! - [`Etcd`]: one member: `--client-cert-auth` over https on `127.0.0.1`, data in a temp dir (or an
//!   existing dir, e.g. a restored one), log captured to a file whose tail is printed when a start
//!   fails or a test panics, waited for until healthy, SIGKILLed and reaped on drop.
//! - [`ClusterPlan`] / [`Cluster`]: n members with http or TLS peer URLs; the plan (names, ports,
//!   `--initial-cluster`) exists before the members, so restore tests can restore into dirs first.
//! - [`populate`]: the sample data the status and restore oracles need (10k+ keys, overflow values,
//!   tombstones, overwrites, leases, users and roles, auth enabled last).
//! - [`save_snapshot`] / [`copy_raw_db`]: the two kinds of snapshot file etcd users hold;
//!   [`bolt_shape`] proves a file has the bbolt structure a test relies on.
//! - [`oracle_status`] / [`oracle_restore`]: the real tools' answers; [`lifeboat`]: our binary.
//!
//! Modules: `versions` (binaries, oracles), `tls`, `process` (ports, orphan-proof spawning),
//! `etcd` (one member), `cluster`, `sample`, `files` (snapshot files, bbolt shape).
//!
//! Orphans: every etcd is spawned from one long-lived helper thread with `PR_SET_PDEATHSIG =
//! SIGKILL`, so even if the test process itself is killed, the kernel kills its etcd children.

// Each test file uses a different part of the harness.
#![allow(dead_code, unused_imports)]

mod cluster;
mod etcd;
mod files;
mod process;
mod sample;
mod tls;
mod versions;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use versions::clean_env;

pub use cluster::{Cluster, ClusterPlan};
pub use etcd::{Etcd, EtcdOpts, START_TIMEOUT};
pub use files::{bolt_shape, copy_raw_db, flip_byte_from_end, save_snapshot, BucketShape};
pub use process::alloc_port;
pub use sample::{populate, put_all, runtime, sample_value, Populated, Sample, TXN_OPS};
pub use tls::{write_private, CertPair, Tls};
pub use versions::{oracle_restore, oracle_status, Version};

/// The `etcd-lifeboat` binary under test, with a clean `LIFEBOAT_*`/`ETCD*` env: the one cargo
/// built for this test run, or `LIFEBOAT_TEST_BIN` (e.g. the static release binary, or
/// `scripts/status-via-etcdutl.sh` to validate the harness itself).
pub fn lifeboat_path() -> PathBuf {
    std::env::var_os("LIFEBOAT_TEST_BIN")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_etcd-lifeboat")))
}

/// A command running [`lifeboat_path`].
pub fn lifeboat() -> Command {
    let mut cmd = Command::new(lifeboat_path());
    clean_env(&mut cmd);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("LIFEBOAT_") {
            cmd.env_remove(k);
        }
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// A size-limited tmpfs mounted on `dir` (an existing directory) until dropped. `Err` says why
/// it could not be mounted (not root, no permission here), for the caller to skip or fail.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn mount(dir: &std::path::Path, size: &str) -> Result<Tmpfs, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root, cannot mount a tmpfs".into());
        }
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status();
        match st {
            Ok(s) if s.success() => Ok(Tmpfs(dir.to_path_buf())),
            other => Err(format!("cannot mount a tmpfs here ({other:?})")),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// `etcd-lifeboat backup` against the harness `etcd` over mTLS, into a local store, cluster `test`.
pub fn backup_cmd(
    etcd: &Etcd,
    tls: &Tls,
    store: &std::path::Path,
    spool: &std::path::Path,
) -> Command {
    let mut cmd = lifeboat();
    cmd.arg("backup")
        .env("LIFEBOAT_ETCD_ENDPOINTS", etcd.client_url())
        .env("LIFEBOAT_ETCD_CACERT", &tls.ca)
        .env("LIFEBOAT_ETCD_CERT", &tls.client.cert)
        .env("LIFEBOAT_ETCD_KEY", &tls.client.key)
        .env("LIFEBOAT_ETCD_DIAL_TIMEOUT", "3s")
        .env("LIFEBOAT_STORE", format!("file://{}", store.display()))
        .env("LIFEBOAT_CLUSTER_NAME", "test")
        .env("LIFEBOAT_SPOOL_DIR", spool);
    cmd
}

/// Output as text, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

//! One etcd member as a child process: mTLS client URL on `127.0.0.1`, http or https peer URL,
//! data in a temp dir or an existing (e.g. restored) dir, log captured to a file, health-checked
//! start, graceful stop, crash-like kill, and etcdctl / etcd-client access as user `root`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};

use super::process::{alloc_port, spawn_guarded};
use super::tls::{CertPair, Tls};
use super::versions::{clean_env, Version};

/// How long a member may take to become healthy (the machine is shared and busy).
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How to start a member. `EtcdOpts::default()` is a fresh single-member cluster named `default`.
#[derive(Debug, Clone, Default)]
pub struct EtcdOpts {
    /// `--name` (default `default`).
    pub name: Option<String>,
    /// `--initial-cluster` (default `<name>=<own peer URL>`).
    pub initial_cluster: Option<String>,
    /// `--initial-cluster-token` (default: etcd's own default, `etcd-cluster`).
    pub initial_cluster_token: Option<String>,
    /// Start on this existing data dir (e.g. a restored one) instead of a fresh temp dir. It is
    /// not removed on drop.
    pub data_dir: Option<PathBuf>,
    /// `--quota-backend-bytes`.
    pub quota_backend_bytes: Option<u64>,
    /// Peer URL over TLS (`--peer-*` flags with the test CA) instead of plain http.
    pub peer_tls: bool,
    /// Fixed ports (used by [`Cluster`], which must know every peer URL up front).
    pub client_port: Option<u16>,
    pub peer_port: Option<u16>,
    /// Appended last, so they can override anything above.
    pub extra_args: Vec<String>,
}

/// A running etcd member with mTLS on its client URL. Killed (SIGKILL) and reaped on drop.
pub struct Etcd {
    version: Version,
    name: String,
    child: Option<Child>,
    client_url: String,
    peer_url: String,
    data_dir: PathBuf,
    log: PathBuf,
    ca: PathBuf,
    client_id: CertPair,
    _tmp: tempfile::TempDir,
}

impl Etcd {
    /// Start a member and wait until it is healthy; panics with the log tail if it is not within
    /// [`START_TIMEOUT`]. A port taken by someone else between check and bind is retried.
    pub fn start(version: Version, tls: &Tls, opts: EtcdOpts) -> Etcd {
        let fixed_ports = opts.client_port.is_some() || opts.peer_port.is_some();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut etcd = Etcd::spawn(version, tls, opts.clone());
            match etcd.wait_healthy(START_TIMEOUT) {
                Ok(()) => return etcd,
                Err(why) => {
                    let tail = etcd.log_tail(60);
                    if !fixed_ports && attempt < 3 && tail.contains("address already in use") {
                        continue; // dropped: killed and cleaned up; try other ports
                    }
                    etcd.kill();
                    panic!(
                        "etcd {version} ({}) did not become healthy: {why}\n--- log tail ({}) ---\n{tail}",
                        etcd.name,
                        etcd.log.display()
                    );
                }
            }
        }
    }

    /// Start a member without waiting for it (a cluster member cannot be healthy alone).
    pub fn spawn(version: Version, tls: &Tls, opts: EtcdOpts) -> Etcd {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("lifeboat-etcd-{version}-"))
            .tempdir()
            .expect("tempdir");
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o700)).expect("chmod");
        let name = opts.name.clone().unwrap_or_else(|| "default".into());
        let client_port = opts.client_port.unwrap_or_else(alloc_port);
        let peer_port = opts.peer_port.unwrap_or_else(alloc_port);
        let client_url = format!("https://127.0.0.1:{client_port}");
        let peer_scheme = if opts.peer_tls { "https" } else { "http" };
        let peer_url = format!("{peer_scheme}://127.0.0.1:{peer_port}");
        let data_dir = opts
            .data_dir
            .clone()
            .unwrap_or_else(|| tmp.path().join("data"));
        let log = tmp.path().join("etcd.log");

        let mut cmd = Command::new(version.etcd());
        clean_env(&mut cmd);
        let initial_cluster = opts
            .initial_cluster
            .clone()
            .unwrap_or_else(|| format!("{name}={peer_url}"));
        cmd.arg(format!("--name={name}"))
            .arg(format!("--data-dir={}", data_dir.display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster={initial_cluster}"))
            .arg("--initial-cluster-state=new")
            .arg("--client-cert-auth")
            .arg(format!("--trusted-ca-file={}", tls.ca.display()))
            .arg(format!("--cert-file={}", tls.server.cert.display()))
            .arg(format!("--key-file={}", tls.server.key.display()))
            // Same JSON logger on every version (3.4 defaults to capnslog).
            .arg("--logger=zap")
            .arg("--log-outputs=stderr");
        if let Some(token) = &opts.initial_cluster_token {
            cmd.arg(format!("--initial-cluster-token={token}"));
        }
        if let Some(q) = opts.quota_backend_bytes {
            cmd.arg(format!("--quota-backend-bytes={q}"));
        }
        if opts.peer_tls {
            cmd.arg("--peer-client-cert-auth")
                .arg(format!("--peer-trusted-ca-file={}", tls.ca.display()))
                .arg(format!("--peer-cert-file={}", tls.server.cert.display()))
                .arg(format!("--peer-key-file={}", tls.server.key.display()));
        }
        cmd.args(&opts.extra_args);
        let logf = fs::File::create(&log).expect("create etcd log");
        cmd.stdin(Stdio::null())
            .stdout(logf.try_clone().expect("dup log"))
            .stderr(logf);
        let child = spawn_guarded(cmd)
            .unwrap_or_else(|e| panic!("spawn {}: {e}", version.etcd().display()));
        Etcd {
            version,
            name,
            child: Some(child),
            client_url,
            peer_url,
            data_dir,
            log,
            ca: tls.ca.clone(),
            client_id: tls.client.clone(),
            _tmp: tmp,
        }
    }

    pub fn version(&self) -> Version {
        self.version
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `https://127.0.0.1:<port>`.
    pub fn client_url(&self) -> &str {
        &self.client_url
    }

    pub fn peer_url(&self) -> &str {
        &self.peer_url
    }

    /// The member's `--data-dir` (holds `member/snap/db`, `member/wal/`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `n` lines of the member's log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The etcd process id while it has not been stopped or killed.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Poll `etcdctl endpoint health` until it succeeds. Fails early if the process exits.
    pub fn wait_healthy(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(c) = &mut self.child {
                if let Ok(Some(status)) = c.try_wait() {
                    return Err(format!("etcd exited with {status}"));
                }
            } else {
                return Err("etcd is not running".into());
            }
            let out = self.etcdctl(&["endpoint", "health", "--command-timeout=2s"]);
            if out.status.success() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let last = String::from_utf8_lossy(&out.stderr).trim().to_string();
                return Err(format!(
                    "not healthy after {timeout:?}; last etcdctl error: {last}"
                ));
            }
            std::thread::sleep(Duration::from_millis(150));
        }
    }

    /// Graceful stop: SIGTERM, then wait (SIGKILL after 20 s). Idempotent.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(None) = child.try_wait() {
            // SAFETY: plain kill(2) on our own child's pid, which has not been reaped yet.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            while let Ok(None) = child.try_wait() {
                if Instant::now() >= deadline {
                    eprintln!("etcd {} ignored SIGTERM for 20s; killing", self.name);
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = child.wait();
    }

    /// SIGKILL and reap, like a crash or a node loss. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Run this version's etcdctl against this member (`ETCDCTL_API=3`, the root client
    /// certificate, this member's endpoint only), with `args` after the connection flags.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        self.etcdctl_as(&self.client_id, args)
    }

    /// Like [`Etcd::etcdctl`] with another client identity (e.g. `tls.other_client`).
    pub fn etcdctl_as(&self, id: &CertPair, args: &[&str]) -> Output {
        let mut cmd = Command::new(self.version.etcdctl());
        clean_env(&mut cmd);
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.client_url))
            .arg(format!("--cacert={}", self.ca.display()))
            .arg(format!("--cert={}", id.cert.display()))
            .arg(format!("--key={}", id.key.display()))
            .arg("--dial-timeout=5s")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("spawn etcdctl")
    }

    /// [`Etcd::etcdctl`] that must succeed; returns stdout.
    pub fn etcdctl_ok(&self, args: &[&str]) -> String {
        let out = self.etcdctl(args);
        assert!(
            out.status.success(),
            "etcdctl {args:?} against {} ({}) failed: {}{}",
            self.name,
            self.version,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 etcdctl output")
    }

    /// An etcd-client connected over mTLS as `root` (the client certificate's CN).
    pub async fn client(&self) -> Client {
        let opts = ConnectOptions::new()
            .with_tls(Tls::client_options(&self.ca, &self.client_id))
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(30));
        Client::connect([self.client_url.as_str()], Some(opts))
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.client_url))
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if std::thread::panicking() && self.child.is_some() {
            eprintln!(
                "--- etcd {} ({}) log tail, {} ---\n{}",
                self.version,
                self.name,
                self.log.display(),
                self.log_tail(30)
            );
        }
        self.kill();
    }
}

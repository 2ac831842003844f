//! `etcd-lifeboat restore` proven against the real tools (spec §3, §7.3–§7.4).
//!
//! - Byte compatibility (`byte_compat_*`): our restore and the version's own `etcdutl snapshot
//!   restore` (3.5.30, 3.5.1) or `etcdctl snapshot restore` (3.4.23) on the same file, for snapshots
//!   streamed from servers of each version populated with [`Sample::standard`] and for the raw
//!   `member/snap/db` (skip-hash-check): 1 and 3 members, custom tokens, no bump vs the plain
//!   oracle, bump vs etcdutl 3.5.30 `--bump-revision --mark-compacted`. WAL (all 64,000,000 bytes)
//!   and `.snap` byte-identical; databases equal bucket by bucket and in `snapshot status`
//!   hash/revision/totalKey; names, modes and sizes as §3.7. Against 3.4's etcdctl the documented
//!   differences (§3.4: stale `members`, no `meta/term`, no ConfState in the last WAL record) are
//!   asserted exactly and everything else must be equal. Edge cases: empty snapshot, several
//!   unsorted peer URLs per member, JSON-escaped names, a URL with a path.
//! - Live (`live_*`): stock etcd 3.5.30, 3.5.1 and 3.4.23 members started on our output (1 and 3
//!   members): leader, kvs, hashkv, leases, users, replication, bump semantics, clean logs.
//! - Targets like PVCs: siblings (`lost+found`, dotfiles), old member moved aside intact, Job
//!   retry (also while etcd runs on the result), locked db, dry run, full disk (tmpfs, as root),
//!   HyperShift-style nested data dir, SIGKILL at any moment.
//! - Errors with the same meaning as etcdutl's, and the exit codes (2 config, 4 verify, 6 restore).
//! - Indexed-Job templates (`{index}`) giving the members of one cluster; `latest` and a backup id
//!   from a `file://` store.
//!
//! Source snapshots are made once per etcd version per test process and shared by all tests
//! (under the temp dir, removed at exit). Every etcd is killed when its test ends.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

use common::{
    alloc_port, copy_raw_db, describe, flip_byte_from_end, lifeboat, oracle_status, populate,
    runtime, save_snapshot, Etcd, EtcdOpts, Sample, Tls, Tmpfs, Version, START_TIMEOUT,
};
use etcd_lifeboat::restore::cluster::ClusterPlan;
use etcd_lifeboat::restore::proto::{self, Field};
use etcd_lifeboat::restore::wal;
use etcd_lifeboat::snapshot::bolt::BoltFile;
use serde_json::Value;

const WAL_NAME: &str = "0000000000000000-0000000000000000.wal";
const WAL_SIZE: u64 = 64_000_000;
const BUMP: u64 = 1_000_000_000;
const EXIT_CONFIG: i32 = 2;
const EXIT_VERIFY: i32 = 4;
const EXIT_RESTORE: i32 = 6;

// ---------------------------------------------------------------------------------------------
// Shared fixtures
// ---------------------------------------------------------------------------------------------

fn tls() -> &'static Tls {
    static TLS: OnceLock<Tls> = OnceLock::new();
    TLS.get_or_init(Tls::temp)
}

/// A populated source cluster's snapshot files and what the source served.
struct Source {
    /// `etcdctl snapshot save` output (with sha256 trailer).
    snap: PathBuf,
    /// The member's `member/snap/db` after a graceful stop (no trailer).
    raw: PathBuf,
    /// A copy of the source member's whole `member/` dir (an "old member" for PVC tests).
    member: PathBuf,
    /// Store revision of the snapshot.
    rev: i64,
    /// `get "" --prefix -w json` kvs.
    kvs: Value,
    /// `endpoint hashkv --rev=rev` hash.
    hashkv: u64,
    /// `lease list` lines, sorted.
    leases: Vec<String>,
    /// `user list` output.
    users: String,
}

/// Remove source dirs left behind by earlier, finished test processes.
fn remove_stale_sources() {
    let Ok(rd) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(rest) = name.strip_prefix("lifeboat-restore-src-") {
            let pid = rest.split('-').next().unwrap_or("");
            if !pid.is_empty() && !Path::new("/proc").join(pid).exists() {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
}

fn source(v: Version) -> &'static Source {
    static CELLS: [OnceLock<Source>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    let i = Version::all().iter().position(|x| *x == v).unwrap();
    CELLS[i].get_or_init(|| make_source(v))
}

extern "C" fn remove_own_sources() {
    let Ok(rd) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    let prefix = format!("lifeboat-restore-src-{}-", std::process::id());
    for e in rd.flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

fn make_source(v: Version) -> Source {
    static CLEANUP: std::sync::Once = std::sync::Once::new();
    CLEANUP.call_once(|| {
        remove_stale_sources();
        // SAFETY: registering a plain extern "C" fn; the test harness exits through exit(3).
        unsafe {
            libc::atexit(remove_own_sources);
        }
    });
    let dir = std::env::temp_dir().join(format!("lifeboat-restore-src-{}-{v}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let mut etcd = Etcd::start(v, tls(), EtcdOpts::default());
    let rt = runtime();
    rt.block_on(async {
        let client = etcd.client().await;
        populate(&client, &Sample::standard()).await;
    });
    let snap = dir.join("snapshot.db");
    save_snapshot(&etcd, &snap);
    let status: Value = serde_json::from_str(&oracle_status(v, &snap, "json")).unwrap();
    let rev = status["revision"].as_i64().unwrap();
    let kvs = get_kvs(&etcd);
    let hashkv = hashkv(&etcd, rev);
    let leases = lease_list(&etcd);
    let users = etcd.etcdctl_ok(&["user", "list"]);
    let raw = dir.join("raw.db");
    copy_raw_db(&mut etcd, &raw);
    let member = dir.join("member");
    copy_dir(&etcd.data_dir().join("member"), &member);
    Source {
        snap,
        raw,
        member,
        rev,
        kvs,
        hashkv,
        leases,
        users,
    }
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    fs::set_permissions(to, fs::metadata(from).unwrap().permissions()).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let t = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &t);
        } else {
            fs::copy(e.path(), &t).unwrap();
        }
    }
}

/// Relative path → (mode, size, sha256 of the contents for files).
type Tree = BTreeMap<String, (u32, u64, Vec<u8>)>;

/// Every file and dir under `root` (relative path → (mode, size, sha of contents for files)).
fn tree(root: &Path) -> Tree {
    fn walk(root: &Path, dir: &Path, out: &mut Tree) {
        let mut entries: Vec<_> = fs::read_dir(dir).unwrap().flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let md = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            if md.is_dir() {
                out.insert(rel, (md.mode() & 0o7777, 0, Vec::new()));
                walk(root, &p, out);
            } else {
                use sha2::Digest;
                let digest = sha2::Sha256::digest(fs::read(&p).unwrap()).to_vec();
                out.insert(rel, (md.mode() & 0o7777, md.len(), digest));
            }
        }
    }
    let mut out = BTreeMap::new();
    if root.exists() {
        walk(root, root, &mut out);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// etcdctl helpers
// ---------------------------------------------------------------------------------------------

fn get_kvs(etcd: &Etcd) -> Value {
    let out: Value =
        serde_json::from_str(&etcd.etcdctl_ok(&["get", "", "--prefix", "-w", "json"])).unwrap();
    out["kvs"].clone()
}

fn hashkv(etcd: &Etcd, rev: i64) -> u64 {
    let out: Value = serde_json::from_str(&etcd.etcdctl_ok(&[
        "endpoint",
        "hashkv",
        &format!("--rev={rev}"),
        "-w",
        "json",
    ]))
    .unwrap();
    out[0]["HashKV"]["hash"].as_u64().unwrap()
}

fn lease_list(etcd: &Etcd) -> Vec<String> {
    let mut l: Vec<String> = etcd
        .etcdctl_ok(&["lease", "list"])
        .lines()
        .map(str::to_string)
        .collect();
    l.sort();
    l
}

fn leader(etcd: &Etcd) -> u64 {
    let out: Value =
        serde_json::from_str(&etcd.etcdctl_ok(&["endpoint", "status", "-w", "json"])).unwrap();
    out[0]["Status"]["leader"].as_u64().unwrap_or(0)
}

fn mod_revision(etcd: &Etcd, key: &str) -> i64 {
    let out: Value = serde_json::from_str(&etcd.etcdctl_ok(&["get", key, "-w", "json"])).unwrap();
    out["kvs"][0]["mod_revision"].as_i64().unwrap_or(-1)
}

fn assert_clean_log(etcd: &Etcd) {
    let log = fs::read_to_string(etcd.log_path()).unwrap_or_default();
    for line in log.lines() {
        let l = line.to_ascii_lowercase();
        assert!(
            !l.contains("panic") && !l.contains("\"level\":\"fatal\""),
            "etcd {} ({}) logged: {line}",
            etcd.name(),
            etcd.version()
        );
    }
}

/// A new write on the first member is readable on every member.
fn assert_write_replicates(members: &[Etcd], key: &str) -> i64 {
    members[0].etcdctl_ok(&["put", key, "after-restore"]);
    let rev = mod_revision(&members[0], key);
    for m in members {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let got = m.etcdctl_ok(&["get", key, "--print-value-only"]);
            if got.trim() == "after-restore" {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{key} not replicated to {}",
                m.name()
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
    rev
}

// ---------------------------------------------------------------------------------------------
// Running the two restores
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Args {
    name: String,
    initial_cluster: String,
    token: String,
    peer_urls: String,
    skip_hash_check: bool,
    bump: Option<u64>,
}

impl Args {
    fn default_member() -> Args {
        Args {
            name: "default".into(),
            initial_cluster: "default=http://localhost:2380".into(),
            token: "etcd-cluster".into(),
            peer_urls: "http://localhost:2380".into(),
            skip_hash_check: false,
            bump: None,
        }
    }

    /// Member `name` of `m0..m{n-1}` with the given peer URLs.
    fn cluster(name: &str, peers: &[String], token: &str) -> Args {
        let ic = peers
            .iter()
            .enumerate()
            .map(|(i, u)| format!("m{i}={u}"))
            .collect::<Vec<_>>()
            .join(",");
        let i: usize = name[1..].parse().unwrap();
        Args {
            name: name.into(),
            initial_cluster: ic,
            token: token.into(),
            peer_urls: peers[i].clone(),
            skip_hash_check: false,
            bump: None,
        }
    }

    fn members(&self) -> usize {
        // Repeated names accumulate URLs (etcd's types.NewURLsMap).
        self.initial_cluster
            .split(',')
            .filter_map(|m| m.split_once('=').map(|(n, _)| n))
            .collect::<BTreeSet<_>>()
            .len()
    }
}

fn ours_cmd(src: &Path, data: &Path, a: &Args) -> std::process::Command {
    let mut cmd = lifeboat();
    cmd.arg("restore")
        .env("LIFEBOAT_RESTORE_SOURCE", src)
        .env("LIFEBOAT_DATA_DIR", data)
        .env("LIFEBOAT_NAME", &a.name)
        .env("LIFEBOAT_INITIAL_CLUSTER", &a.initial_cluster)
        .env("LIFEBOAT_INITIAL_CLUSTER_TOKEN", &a.token)
        .env("LIFEBOAT_INITIAL_ADVERTISE_PEER_URLS", &a.peer_urls)
        .env("LIFEBOAT_SKIP_HASH_CHECK", a.skip_hash_check.to_string())
        .env("LIFEBOAT_SPOOL_DIR", std::env::temp_dir());
    // A bump of BUMP is our default: leave LIFEBOAT_BUMP_REVISION (and _MARK_COMPACTED) unset.
    if a.bump != Some(BUMP) {
        cmd.env("LIFEBOAT_BUMP_REVISION", a.bump.unwrap_or(0).to_string());
    }
    cmd
}

fn ours(src: &Path, data: &Path, a: &Args) -> Output {
    ours_cmd(src, data, a).output().expect("run etcd-lifeboat")
}

fn ours_ok(src: &Path, data: &Path, a: &Args) -> Output {
    let out = ours(src, data, a);
    assert!(
        out.status.success(),
        "etcd-lifeboat restore {a:?} failed: {}",
        describe(&out)
    );
    out
}

fn oracle(v: Version, src: &Path, data: &Path, a: &Args) -> Output {
    let mut cmd = v.snapshot_tool();
    cmd.args(["snapshot", "restore"])
        .arg(src)
        .arg(format!("--data-dir={}", data.display()))
        .arg(format!("--name={}", a.name))
        .arg(format!("--initial-cluster={}", a.initial_cluster))
        .arg(format!("--initial-cluster-token={}", a.token))
        .arg(format!("--initial-advertise-peer-urls={}", a.peer_urls));
    if a.skip_hash_check {
        cmd.arg("--skip-hash-check");
    }
    if let Some(b) = a.bump {
        cmd.arg(format!("--bump-revision={b}"))
            .arg("--mark-compacted");
    }
    cmd.output().expect("run oracle restore")
}

fn oracle_ok(v: Version, src: &Path, data: &Path, a: &Args) {
    let out = oracle(v, src, data, a);
    assert!(
        out.status.success(),
        "{v} snapshot restore {a:?} failed: {}",
        describe(&out)
    );
}

type Dump = BTreeMap<Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>>;

/// Every bucket's entries, in order.
fn dump(db: &Path) -> Dump {
    let f = BoltFile::open(db).unwrap_or_else(|e| panic!("open {}: {e}", db.display()));
    let mut out = Dump::new();
    for b in f.buckets().unwrap() {
        let mut entries = Vec::new();
        f.for_each_in(&b, |k, v, _| {
            entries.push((k.to_vec(), v.to_vec()));
            Ok(())
        })
        .unwrap();
        out.insert(b.name.clone(), entries);
    }
    out
}

fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or((a.len() != b.len()).then_some(a.len().min(b.len())))
}

/// The files of a restored data dir, as §3.7 says (modes with the usual umask 022).
fn check_layout(data: &Path, n: usize, ours: bool) {
    let t = tree(data);
    let snap_name = format!("member/snap/0000000000000001-{n:016x}.snap");
    let mut want: BTreeSet<String> = [
        "member",
        "member/snap",
        "member/snap/db",
        snap_name.as_str(),
        "member/wal",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    want.insert(format!("member/wal/{WAL_NAME}"));
    if ours {
        want.insert(".lifeboat-restore.json".into());
    }
    let got: BTreeSet<String> = t.keys().cloned().collect();
    assert_eq!(got, want, "files under {}", data.display());
    let mode = |p: &str| t[p].0;
    assert_eq!(
        fs::metadata(data).unwrap().permissions().mode() & 0o777,
        0o700,
        "{}",
        data.display()
    );
    for d in ["member", "member/snap", "member/wal"] {
        assert_eq!(mode(d), 0o700, "{d} in {}", data.display());
    }
    assert_eq!(mode("member/snap/db"), 0o600);
    assert_eq!(mode(&format!("member/wal/{WAL_NAME}")), 0o600);
    assert_eq!(t[&format!("member/wal/{WAL_NAME}")].1, WAL_SIZE);
    assert_eq!(mode(&snap_name), 0o644, "{snap_name}");
}

/// Compare our restored `ours` with the oracle's `theirs` (§7.3). `v34` selects the documented
/// 3.4 `etcdctl snapshot restore` differences.
fn compare_restores(ours: &Path, theirs: &Path, a: &Args, v34: bool, what: &str) {
    let n = a.members();
    check_layout(ours, n, true);
    check_layout(theirs, n, false);

    // .snap: byte-identical (3.4 and 3.5 create members in ascending ID order).
    let snap_name = format!("member/snap/0000000000000001-{n:016x}.snap");
    assert!(
        fs::read(ours.join(&snap_name)).unwrap() == fs::read(theirs.join(&snap_name)).unwrap(),
        "{what}: .snap differs"
    );

    // WAL.
    let wal_rel = format!("member/wal/{WAL_NAME}");
    let (ow, tw) = (
        fs::read(ours.join(&wal_rel)).unwrap(),
        fs::read(theirs.join(&wal_rel)).unwrap(),
    );
    let plan = ClusterPlan::new(&a.name, &a.initial_cluster, &a.peer_urls, &a.token).unwrap();
    if !v34 {
        if let Some(at) = first_difference(&ow, &tw) {
            panic!("{what}: WAL differs at byte {at} (of {})", ow.len());
        }
    } else {
        // 3.4's etcdctl writes the last record (walpb.Snapshot{Index:N, Term:1}) without the
        // ConfState (field 3) that 3.5 has; everything before it is identical, and so is the
        // zero tail. We write the 3.5 form (3.4 servers accept it: see the live tests).
        let orecs = wal::decode(&ow).unwrap();
        let trecs = wal::decode(&tw).unwrap();
        assert_eq!(orecs.len(), trecs.len(), "{what}: WAL record count");
        assert_eq!(orecs.len(), 5 + n, "{what}: WAL record count");
        let last = orecs.len() - 1;
        assert_eq!(
            orecs[..last],
            trecs[..last],
            "{what}: WAL records before the last"
        );
        let (ol, tl) = (&orecs[last], &trecs[last]);
        assert_eq!((ol.record_type, tl.record_type), (5, 5));
        let od = ol.data.as_deref().unwrap();
        let td = tl.data.as_deref().unwrap();
        let of = proto::decode_fields(od).unwrap();
        let tf = proto::decode_fields(td).unwrap();
        assert_eq!(
            tf,
            vec![(1, Field::Varint(n as u64)), (2, Field::Varint(1))],
            "{what}: 3.4 WAL snapshot record"
        );
        assert_eq!(of[..2], tf[..], "{what}: WAL snapshot index/term");
        let cs = proto::conf_state(&plan.member_ids());
        assert_eq!(
            of[2..],
            [(3, Field::Bytes(&cs))],
            "{what}: our WAL snapshot record has exactly the ConfState in addition"
        );
        // Both are zero after the records, up to 64,000,000 bytes.
        let end = |buf: &[u8]| buf.iter().rposition(|&b| b != 0).unwrap_or(0) + 1;
        assert!(
            end(&ow) < 4096 && end(&tw) < 4096,
            "{what}: WAL tail not zero"
        );
    }

    // Databases.
    let (odb, tdb) = (ours.join("member/snap/db"), theirs.join("member/snap/db"));
    let tool = Version::V3_5_30;
    let os: Value = serde_json::from_str(&oracle_status(tool, &odb, "json")).unwrap();
    let ts: Value = serde_json::from_str(&oracle_status(tool, &tdb, "json")).unwrap();
    assert_eq!(os["revision"], ts["revision"], "{what}: status revision");
    let (mut od, mut td) = (dump(&odb), dump(&tdb));
    if !v34 {
        assert_eq!(os["hash"], ts["hash"], "{what}: status hash");
        assert_eq!(os["totalKey"], ts["totalKey"], "{what}: status totalKey");
        assert!(
            od == td,
            "{what}: databases differ: {}",
            dump_diff(&od, &td)
        );
    } else {
        // 3.4 keeps the old cluster's `members` entries and writes no `meta/term` (§3.4).
        let ours_members = od.remove(b"members".as_slice()).unwrap();
        let ids: Vec<Vec<u8>> = ours_members.iter().map(|(k, _)| k.clone()).collect();
        let want: Vec<Vec<u8>> = plan
            .members
            .iter()
            .map(|m| m.hex_id().into_bytes())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(ids, want, "{what}: our members bucket");
        let theirs_members = td.remove(b"members".as_slice()).unwrap_or_default();
        let source_members = dump(&source(Version::V3_4_23).raw)
            .remove(b"members".as_slice())
            .unwrap_or_default();
        assert_eq!(
            theirs_members, source_members,
            "{what}: 3.4 keeps the stale members"
        );
        let meta = od.get_mut(b"meta".as_slice()).unwrap();
        let at = meta.iter().position(|(k, _)| k == b"term").unwrap();
        assert_eq!(meta.remove(at).1, 1u64.to_be_bytes().to_vec());
        for d in [&mut od, &mut td] {
            d.remove(b"members_removed".as_slice());
        }
        assert!(
            od == td,
            "{what}: databases differ beyond the documented 3.4 differences: {}",
            dump_diff(&od, &td)
        );
    }
}

fn dump_diff(a: &Dump, b: &Dump) -> String {
    let mut s = String::new();
    let names: BTreeSet<&Vec<u8>> = a.keys().chain(b.keys()).collect();
    for n in names {
        let (x, y) = (a.get(n), b.get(n));
        if x != y {
            let xs: BTreeSet<_> = x.into_iter().flatten().collect();
            let ys: BTreeSet<_> = y.into_iter().flatten().collect();
            let only_x: Vec<_> = xs.difference(&ys).take(3).collect();
            let only_y: Vec<_> = ys.difference(&xs).take(3).collect();
            s += &format!(
                "\nbucket {:?}: ours-only {:?} theirs-only {:?}",
                String::from_utf8_lossy(n),
                only_x
                    .iter()
                    .map(|(k, v)| (String::from_utf8_lossy(k), String::from_utf8_lossy(v)))
                    .collect::<Vec<_>>(),
                only_y
                    .iter()
                    .map(|(k, v)| (String::from_utf8_lossy(k), String::from_utf8_lossy(v)))
                    .collect::<Vec<_>>()
            );
        }
    }
    s
}

fn peers(n: usize, scheme: &str, base: u16) -> Vec<String> {
    (0..n)
        .map(|i| format!("{scheme}://127.0.0.1:{}", base + i as u16))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 1. Byte compatibility
// ---------------------------------------------------------------------------------------------

fn byte_compat(v: Version) {
    let src = source(v);
    let tmp = tempfile::tempdir().unwrap();
    let three = peers(3, "https", 23801);
    let mut cases: Vec<(&str, PathBuf, Args, Version)> = vec![
        (
            "1 member, defaults",
            src.snap.clone(),
            Args::default_member(),
            v,
        ),
        (
            "3 members, custom token",
            src.snap.clone(),
            Args::cluster("m1", &three, "lifeboat-token-7"),
            v,
        ),
        (
            "raw db, skip-hash-check, 3 members",
            src.raw.clone(),
            Args {
                skip_hash_check: true,
                ..Args::cluster("m2", &peers(3, "http", 24801), "raw-token")
            },
            v,
        ),
    ];
    // With a bump: only etcdutl 3.5.30 has --bump-revision (3.4 and 3.5 restores of the same
    // file are otherwise the same format, so it is the oracle for every source version).
    cases.push((
        "3 members, bump + mark-compacted",
        src.snap.clone(),
        Args {
            bump: Some(BUMP),
            ..Args::cluster("m0", &three, "bumped")
        },
        Version::V3_5_30,
    ));
    cases.push((
        "raw db, 1 member, small bump",
        src.raw.clone(),
        Args {
            bump: Some(12345),
            skip_hash_check: true,
            ..Args::default_member()
        },
        Version::V3_5_30,
    ));
    for (i, (what, file, args, oracle_v)) in cases.into_iter().enumerate() {
        let what = format!("{v} snapshot, {what}, oracle {oracle_v}");
        let (o, t) = (
            tmp.path().join(format!("ours-{i}")),
            tmp.path().join(format!("theirs-{i}")),
        );
        ours_ok(&file, &o, &args);
        oracle_ok(oracle_v, &file, &t, &args);
        compare_restores(&o, &t, &args, oracle_v == Version::V3_4_23, &what);
        if let Some(b) = args.bump {
            let st: Value = serde_json::from_str(&oracle_status(
                Version::V3_5_30,
                &o.join("member/snap/db"),
                "json",
            ))
            .unwrap();
            assert_eq!(
                st["revision"].as_i64().unwrap(),
                src.rev + b as i64,
                "{what}"
            );
        }
        // 64 MB WALs: free them as we go.
        let _ = fs::remove_dir_all(&o);
        let _ = fs::remove_dir_all(&t);
    }
}

#[test]
fn byte_compat_3_5_30() {
    byte_compat(Version::V3_5_30);
}

/// Edge cases against etcdutl 3.5.30: an empty cluster's snapshot (no keys: the bump starts from
/// revision 0), members with several peer URLs given unsorted, an upper-case scheme, odd names.
#[test]
fn byte_compat_edge_cases() {
    let v = Version::V3_5_30;
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty.db");
    {
        let etcd = Etcd::start(v, tls(), EtcdOpts::default());
        save_snapshot(&etcd, &empty);
    }
    let multi = Args {
        name: "b".into(),
        initial_cluster:
            "b=http://127.0.0.1:2,a=http://127.0.0.1:1,b=HTTP://localhost:3,b=http://127.0.0.1:12"
                .into(),
        token: "multi".into(),
        peer_urls: "http://localhost:3, http://127.0.0.1:12,http://127.0.0.1:2".into(),
        skip_hash_check: false,
        bump: None,
    };
    let cases = [
        ("empty snapshot", empty.clone(), Args::default_member()),
        (
            "empty snapshot, bump",
            empty.clone(),
            Args {
                bump: Some(BUMP),
                ..Args::default_member()
            },
        ),
        (
            "several unsorted peer URLs per member",
            empty.clone(),
            multi,
        ),
        (
            "a URL with a path",
            empty.clone(),
            Args {
                initial_cluster: "default=http://localhost:2380/x".into(),
                peer_urls: "http://localhost:2380/x".into(),
                ..Args::default_member()
            },
        ),
        (
            "name and token with JSON-escaped characters",
            empty.clone(),
            Args {
                name: "etcd-<0>&é".into(),
                initial_cluster: "etcd-<0>&é=https://127.0.0.1:2380".into(),
                token: "tok\"en".into(),
                peer_urls: "https://127.0.0.1:2380".into(),
                skip_hash_check: false,
                bump: None,
            },
        ),
    ];
    for (i, (what, file, args)) in cases.into_iter().enumerate() {
        let (o, t) = (
            tmp.path().join(format!("ours-{i}")),
            tmp.path().join(format!("theirs-{i}")),
        );
        let theirs = oracle(v, &file, &t, &args);
        let out = ours(&file, &o, &args);
        if !theirs.status.success() {
            // etcdutl refuses it: so must we, as a config error.
            assert_eq!(
                out.status.code(),
                Some(EXIT_CONFIG),
                "{what}: {}",
                describe(&out)
            );
            eprintln!("{what}: refused by both");
            continue;
        }
        if out.status.code() == Some(EXIT_CONFIG) && what.starts_with("name and token") {
            // Refusing names that need JSON escaping is allowed (spec §3.3), not diverging.
            eprintln!("{what}: etcdutl accepts, we refuse: {}", describe(&out));
            continue;
        }
        assert!(out.status.success(), "{what}: {}", describe(&out));
        compare_restores(&o, &t, &args, false, what);
        eprintln!("{what}: identical");
        let _ = fs::remove_dir_all(&o);
        let _ = fs::remove_dir_all(&t);
    }
}

#[test]
fn byte_compat_3_5_1() {
    byte_compat(Version::V3_5_1);
}

#[test]
fn byte_compat_3_4_23() {
    byte_compat(Version::V3_4_23);
}

// ---------------------------------------------------------------------------------------------
// 2. Live clusters on our output
// ---------------------------------------------------------------------------------------------

/// Restore `n` members from `src.snap` into `tmp/m<i>`, start them, wait until all are healthy.
fn restore_and_start(
    v: Version,
    src: &Source,
    tmp: &Path,
    n: usize,
    bump: Option<u64>,
    peer_tls: bool,
) -> Vec<Etcd> {
    let ports: Vec<u16> = (0..n).map(|_| alloc_port()).collect();
    let scheme = if peer_tls { "https" } else { "http" };
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("{scheme}://127.0.0.1:{p}"))
        .collect();
    let mut members = Vec::new();
    for (i, &port) in ports.iter().enumerate() {
        let data = tmp.join(format!("m{i}"));
        let args = Args {
            bump,
            ..Args::cluster(&format!("m{i}"), &urls, "live-token")
        };
        ours_ok(&src.snap, &data, &args);
        members.push(Etcd::spawn(
            v,
            tls(),
            EtcdOpts {
                name: Some(format!("m{i}")),
                initial_cluster: Some(args.initial_cluster.clone()),
                initial_cluster_token: Some("live-token".into()),
                data_dir: Some(data),
                peer_tls,
                peer_port: Some(port),
                ..Default::default()
            },
        ));
    }
    for m in &mut members {
        if let Err(e) = m.wait_healthy(START_TIMEOUT) {
            panic!("restored member {} ({v}) not healthy: {e}", m.name());
        }
    }
    members
}

#[test]
fn live_3_5_30_three_members_without_bump() {
    let v = Version::V3_5_30;
    let src = source(v);
    let tmp = tempfile::tempdir().unwrap();
    let members = restore_and_start(v, src, tmp.path(), 3, None, true);
    // One leader, the same for everyone.
    let l = leader(&members[0]);
    assert_ne!(l, 0, "no leader");
    for m in &members {
        assert_eq!(leader(m), l, "{} sees another leader", m.name());
    }
    for m in &members {
        assert!(
            get_kvs(m) == src.kvs,
            "{}: kvs differ from the source",
            m.name()
        );
        assert_eq!(hashkv(m, src.rev), src.hashkv, "{}: hashkv", m.name());
        assert_eq!(lease_list(m), src.leases, "{}: leases", m.name());
        assert_eq!(m.etcdctl_ok(&["user", "list"]), src.users, "{}", m.name());
    }
    let r = assert_write_replicates(&members, "/after/restore");
    assert_eq!(r, src.rev + 1, "first write after a restore without bump");
    for m in &members {
        assert_clean_log(m);
    }
}

#[test]
fn live_3_5_30_three_members_with_default_bump() {
    let v = Version::V3_5_30;
    let src = source(v);
    let tmp = tempfile::tempdir().unwrap();
    // The default: LIFEBOAT_BUMP_REVISION unset means +1,000,000,000 and mark compacted.
    let members = restore_and_start(v, src, tmp.path(), 3, Some(BUMP), false);
    for m in &members {
        assert!(get_kvs(m) == src.kvs, "{}: kvs", m.name());
        let old = m.etcdctl(&["get", "", "--prefix", &format!("--rev={}", src.rev)]);
        assert!(
            String::from_utf8_lossy(&old.stderr).contains("required revision has been compacted"),
            "{}: {}",
            m.name(),
            describe(&old)
        );
    }
    let r = assert_write_replicates(&members, "/after/bump");
    assert_eq!(r, src.rev + BUMP as i64 + 1, "first write after the bump");
    for m in &members {
        assert_clean_log(m);
    }
}

fn live_version(v: Version) {
    let src = source(v);
    let tmp = tempfile::tempdir().unwrap();
    // 1 member with the default bump, 3 members (peer TLS) without.
    for (n, bump) in [(1, Some(BUMP)), (3, None)] {
        let dir = tmp.path().join(format!("n{n}"));
        let members = restore_and_start(v, src, &dir, n, bump, n == 3);
        for m in &members {
            assert!(get_kvs(m) == src.kvs, "{v} {}: kvs differ", m.name());
        }
        let r = assert_write_replicates(&members, "/after/restore");
        assert_eq!(
            r,
            src.rev + bump.unwrap_or(0) as i64 + 1,
            "{v}: first write"
        );
        if bump.is_some() {
            let old = members[0].etcdctl(&["get", "", "--prefix", &format!("--rev={}", src.rev)]);
            assert!(
                String::from_utf8_lossy(&old.stderr)
                    .contains("required revision has been compacted"),
                "{v}: {}",
                describe(&old)
            );
        }
        for m in &members {
            assert_clean_log(m);
        }
        drop(members);
        let _ = fs::remove_dir_all(&dir);
    }
}

#[test]
fn live_3_5_1() {
    live_version(Version::V3_5_1);
}

#[test]
fn live_3_4_23() {
    live_version(Version::V3_4_23);
}

// ---------------------------------------------------------------------------------------------
// 3. PVC-like targets
// ---------------------------------------------------------------------------------------------

fn one_member(peer_port: u16) -> Args {
    let url = format!("http://127.0.0.1:{peer_port}");
    Args {
        name: "pvc".into(),
        initial_cluster: format!("pvc={url}"),
        token: "pvc-token".into(),
        peer_urls: url,
        skip_hash_check: false,
        bump: Some(BUMP),
    }
}

fn start_single(data: &Path, a: &Args, peer_port: u16) -> Etcd {
    Etcd::start(
        Version::V3_5_30,
        tls(),
        EtcdOpts {
            name: Some(a.name.clone()),
            initial_cluster: Some(a.initial_cluster.clone()),
            initial_cluster_token: Some(a.token.clone()),
            data_dir: Some(data.to_path_buf()),
            peer_port: Some(peer_port),
            ..Default::default()
        },
    )
}

#[test]
fn pvc_like_target_with_siblings_old_member_retry_and_lock() {
    let src = source(Version::V3_5_30);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("pvc");
    fs::create_dir_all(data.join("lost+found")).unwrap();
    fs::write(data.join("lost+found/#1234"), b"fsck leftovers").unwrap();
    fs::write(data.join(".keep"), b"dotfile").unwrap();
    copy_dir(&src.member, &data.join("member"));
    fs::set_permissions(&data, fs::Permissions::from_mode(0o2775)).unwrap();
    let pvc_mode = fs::metadata(&data).unwrap().mode() & 0o7777;
    let old = tree(&data.join("member"));

    let port = alloc_port();
    let a = one_member(port);
    let out = ours_ok(&src.snap, &data, &a);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("plan: existing member: moved aside"),
        "{stdout}"
    );
    // The old member was moved aside intact; siblings untouched.
    let aside: Vec<PathBuf> = fs::read_dir(&data)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("member.pre-restore-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert!(
        tree(&aside[0]) == old,
        "moved-aside member differs from the old one"
    );
    assert_eq!(fs::read(data.join(".keep")).unwrap(), b"dotfile");
    // An existing data dir (a PVC root, often 0755 or 2775 with fsGroup) keeps its mode, as
    // with etcdutl.
    assert_eq!(fs::metadata(&data).unwrap().mode() & 0o7777, pvc_mode);
    assert_eq!(
        fs::read(data.join("lost+found/#1234")).unwrap(),
        b"fsck leftovers"
    );
    let marker: Value =
        serde_json::from_str(&fs::read_to_string(data.join(".lifeboat-restore.json")).unwrap())
            .unwrap();
    assert_eq!(
        marker["moved_aside"].as_str().unwrap(),
        aside[0].to_str().unwrap()
    );

    // Job retry: a no-op success.
    let before = tree(&data);
    let out = ours_ok(&src.snap, &data, &a);
    assert!(
        tree(&data) == before,
        "a retried restore changed the data dir: {}",
        describe(&out)
    );

    // etcd starts with the siblings present; the bump is in force.
    let mut etcd = start_single(&data, &a, port);
    assert!(get_kvs(&etcd) == src.kvs, "kvs after a bumped restore");
    let old_rev = etcd.etcdctl(&["get", "/lifeboat/k/000001", &format!("--rev={}", src.rev)]);
    let err = String::from_utf8_lossy(&old_rev.stderr);
    assert!(
        !old_rev.status.success() && err.contains("required revision has been compacted"),
        "{}",
        describe(&old_rev)
    );
    etcd.etcdctl_ok(&["put", "/after/bump", "x"]);
    let r = mod_revision(&etcd, "/after/bump");
    assert!(r > src.rev + BUMP as i64, "write at {r} not above the bump");

    // While etcd runs: refused, nothing changes.
    let before = tree(&data);
    let member_ino = fs::metadata(data.join("member")).unwrap().ino();
    // ... except a retry of the very restore etcd now runs on (a Job pod retried after etcd
    // started): the marker says it is done, so it is a no-op success, not a failed Job.
    let out = ours(&src.snap, &data, &a);
    assert!(
        out.status.success(),
        "retry while etcd runs: {}",
        describe(&out)
    );
    let mut other = a.clone();
    other.token = "another-token".into();
    let out = ours(&src.snap, &data, &other);
    assert_eq!(out.status.code(), Some(EXIT_RESTORE), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("locked by a running etcd"),
        "{}",
        describe(&out)
    );
    etcd.stop();
    // etcd itself changes `member/` while it runs (and removes its `wal/0.tmp` on stop), so
    // compare everything else, and that `member` is still the same directory.
    let outside_member = |t: &Tree| {
        t.iter()
            .filter(|(k, _)| !k.starts_with("member/"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>()
    };
    assert!(
        outside_member(&tree(&data)) == outside_member(&before),
        "the refused restore changed the data dir"
    );
    assert_eq!(
        fs::metadata(data.join("member")).unwrap().ino(),
        member_ino,
        "the refused restore replaced member/"
    );
    assert_clean_log(&etcd);

    // Dry run: prints the plan, changes nothing.
    let before = tree(&data);
    let out = ours_cmd(&src.snap, &data, &other)
        .env("LIFEBOAT_DRY_RUN", "true")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("plan: snapshot:") && stdout.contains("nothing was changed"),
        "{stdout}"
    );
    assert!(tree(&data) == before, "dry run changed the data dir");
    let fresh = tmp.path().join("never-created");
    let out = ours_cmd(&src.snap, &fresh, &other)
        .env("LIFEBOAT_DRY_RUN", "true")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    assert!(!fresh.exists(), "dry run created the data dir");

    // A different restore (another token: other IDs) into the same dir is not a retry: the
    // restored member is moved aside in turn, the first moved-aside dir stays as it was.
    let first_aside = tree(&aside[0]);
    let out = ours_ok(&src.snap, &data, &other);
    let asides = fs::read_dir(&data)
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("member.pre-restore-")
        })
        .count();
    assert_eq!(asides, 2, "{}", describe(&out));
    assert!(tree(&aside[0]) == first_aside);
    let marker: Value =
        serde_json::from_str(&fs::read_to_string(data.join(".lifeboat-restore.json")).unwrap())
            .unwrap();
    assert_eq!(marker["token"], "another-token");
    let etcd = start_single(&data, &other, port);
    let list: Value =
        serde_json::from_str(&etcd.etcdctl_ok(&["member", "list", "-w", "json"])).unwrap();
    let id = list["members"][0]["ID"].as_u64().unwrap();
    assert_eq!(format!("{id:x}"), marker["member_id"].as_str().unwrap());
    let cid = list["header"]["cluster_id"].as_u64().unwrap();
    assert_eq!(format!("{cid:x}"), marker["cluster_id"].as_str().unwrap());
    assert!(get_kvs(&etcd) == src.kvs);
    assert_clean_log(&etcd);
}

#[test]
fn hypershift_style_nested_data_dir() {
    let src = source(Version::V3_5_30);
    let tmp = tempfile::tempdir().unwrap();
    let pvc = tmp.path().join("x/var/lib");
    fs::create_dir_all(&pvc).unwrap();
    let data = pvc.join("data");
    let port = alloc_port();
    let a = one_member(port);
    ours_ok(&src.snap, &data, &a);
    check_layout(&data, 1, true);
    let etcd = start_single(&data, &a, port);
    assert!(get_kvs(&etcd) == src.kvs);
    assert_clean_log(&etcd);
}

#[test]
fn target_without_room_is_refused_before_anything_moves() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: not root, cannot mount a tiny tmpfs");
        return;
    }
    let src = source(Version::V3_5_30);
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("tiny");
    fs::create_dir_all(&mnt).unwrap();
    let _tmpfs = match Tmpfs::mount(&mnt, "24m") {
        Ok(t) => t,
        Err(why) => {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
    // An old member (its db; the 64 MB WAL would not fit) and a sibling.
    fs::create_dir_all(mnt.join("member/snap")).unwrap();
    fs::create_dir_all(mnt.join("member/wal")).unwrap();
    fs::copy(&src.raw, mnt.join("member/snap/db")).unwrap();
    fs::write(
        mnt.join("member/wal/0000000000000000-0000000000000000.wal"),
        b"old wal",
    )
    .unwrap();
    fs::write(mnt.join(".keep"), b"x").unwrap();
    let before = tree(&mnt);
    let out = ours(&src.snap, &mnt, &one_member(alloc_port()));
    assert_eq!(out.status.code(), Some(EXIT_RESTORE), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("free") && err.contains("nothing was changed"),
        "{}",
        describe(&out)
    );
    assert!(tree(&mnt) == before, "a refused restore changed the target");
}

// ---------------------------------------------------------------------------------------------
// 4. Errors, compared with etcdutl's
// ---------------------------------------------------------------------------------------------

#[test]
fn errors_mean_what_etcdutls_mean() {
    let src = source(Version::V3_5_30);
    let tmp = tempfile::tempdir().unwrap();
    let u = Version::V3_5_30;
    let p = peers(3, "http", 25801);
    let mut n = 0;
    let mut check = |what: &str, file: &Path, a: &Args, code: i32, gist: &[&str]| {
        n += 1;
        let (od, td) = (
            tmp.path().join(format!("o{n}")),
            tmp.path().join(format!("t{n}")),
        );
        let o = ours(file, &od, a);
        let t = oracle(u, file, &td, a);
        assert!(!t.status.success(), "{what}: etcdutl accepted it");
        assert_eq!(o.status.code(), Some(code), "{what}: {}", describe(&o));
        let (oe, te) = (
            String::from_utf8_lossy(&o.stderr).into_owned(),
            String::from_utf8_lossy(&t.stderr).into_owned(),
        );
        for g in gist {
            assert!(te.contains(g), "{what}: etcdutl says {te}");
            assert!(oe.contains(g), "{what}: we say {oe} (etcdutl: {te})");
        }
        assert!(!od.exists(), "{what}: we created the data dir");
    };
    check(
        "local name not in the cluster",
        &src.snap,
        &Args {
            name: "m9".into(),
            ..Args::cluster("m0", &p, "t")
        },
        EXIT_CONFIG,
        &["couldn't find local name \"m9\" in the initial cluster configuration"],
    );
    check(
        "advertise URLs not matching",
        &src.snap,
        &Args {
            peer_urls: "http://127.0.0.1:25900".into(),
            ..Args::cluster("m0", &p, "t")
        },
        EXIT_CONFIG,
        &["missing from --initial-advertise-peer-urls"],
    );
    check(
        "duplicate URLs",
        &src.snap,
        &Args {
            initial_cluster: format!("m0={},m1={}", p[0], p[0]),
            ..Args::cluster("m0", &p, "t")
        },
        EXIT_CONFIG,
        &["has duplicate url"],
    );
    check(
        "raw db without skip-hash-check",
        &src.raw,
        &Args::default_member(),
        EXIT_VERIFY,
        &["snapshot missing hash but --skip-hash-check=false"],
    );
    let damaged = tmp.path().join("damaged.db");
    fs::copy(&src.snap, &damaged).unwrap();
    flip_byte_from_end(&damaged, 5);
    check(
        "trailer mismatch",
        &damaged,
        &Args::default_member(),
        EXIT_VERIFY,
        &["expected sha256"],
    );

    // A database that fails bbolt's consistency check (etcd's own test fixture) is refused
    // before anything is written, even with skip-hash-check (etcdutl restore does not check).
    let corrupted =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/corrupted_backup.db");
    let data = tmp.path().join("corrupted");
    let out = ours(
        &corrupted,
        &data,
        &Args {
            skip_hash_check: true,
            ..Args::default_member()
        },
    );
    assert_eq!(out.status.code(), Some(EXIT_VERIFY), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("integrity check failed") && err.contains("already freed"),
        "{err}"
    );
    assert!(!data.exists());

    // `{index}` without an index: a config error before anything else.
    let data = tmp.path().join("idx");
    let out = ours_cmd(&src.snap, &data, &Args::default_member())
        .env("LIFEBOAT_NAME", "m{index}")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("{index}") && err.contains("LIFEBOAT_MEMBER_INDEX"),
        "{err}"
    );
    assert!(!data.exists());
}

// ---------------------------------------------------------------------------------------------
// 5. Indexed Job
// ---------------------------------------------------------------------------------------------

#[test]
fn indexed_job_template_builds_one_cluster() {
    let v = Version::V3_5_30;
    let src = source(v);
    let tmp = tempfile::tempdir().unwrap();
    // Same peer port on 127.0.0.10..12 (like one port on three pods), so a single template
    // `http://127.0.0.1{index}:<port>` covers every member.
    let port = alloc_port();
    for i in 0..3 {
        if std::net::TcpListener::bind((format!("127.0.0.1{i}").as_str(), port)).is_err() {
            eprintln!("SKIPPED: cannot bind 127.0.0.1{i}:{port}");
            return;
        }
    }
    let url = |i: usize| format!("http://127.0.0.1{i}:{port}");
    let ic = (0..3)
        .map(|i| format!("m{i}={}", url(i)))
        .collect::<Vec<_>>()
        .join(",");
    for i in 0..3 {
        let mut cmd = lifeboat();
        cmd.arg("restore")
            .env("LIFEBOAT_RESTORE_SOURCE", &src.snap)
            .env(
                "LIFEBOAT_DATA_DIR",
                tmp.path().join("data-{index}").to_str().unwrap(),
            )
            .env("LIFEBOAT_NAME", "m{index}")
            .env("LIFEBOAT_INITIAL_CLUSTER", &ic)
            .env("LIFEBOAT_INITIAL_CLUSTER_TOKEN", "indexed")
            .env(
                "LIFEBOAT_INITIAL_ADVERTISE_PEER_URLS",
                format!("http://127.0.0.1{{index}}:{port}"),
            )
            .env("LIFEBOAT_BUMP_REVISION", "0")
            .env("LIFEBOAT_SPOOL_DIR", std::env::temp_dir());
        // Member 1 as a real Indexed Job would see it; the others via LIFEBOAT_MEMBER_INDEX.
        if i == 1 {
            cmd.env("JOB_COMPLETION_INDEX", "1");
        } else {
            cmd.env("LIFEBOAT_MEMBER_INDEX", i.to_string());
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "member {i}: {}", describe(&out));
    }
    let mut members: Vec<Etcd> = (0..3)
        .map(|i| {
            Etcd::spawn(
                v,
                tls(),
                EtcdOpts {
                    name: Some(format!("m{i}")),
                    initial_cluster: Some(ic.clone()),
                    data_dir: Some(tmp.path().join(format!("data-{i}"))),
                    extra_args: vec![
                        format!("--listen-peer-urls={}", url(i)),
                        format!("--initial-advertise-peer-urls={}", url(i)),
                    ],
                    ..Default::default()
                },
            )
        })
        .collect();
    for m in &mut members {
        if let Err(e) = m.wait_healthy(START_TIMEOUT) {
            panic!("{} not healthy: {e}", m.name());
        }
    }
    let list: Value =
        serde_json::from_str(&members[2].etcdctl_ok(&["member", "list", "-w", "json"])).unwrap();
    let mut names: Vec<&str> = list["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["m0", "m1", "m2"]);
    assert!(get_kvs(&members[1]) == src.kvs);
    assert_write_replicates(&members, "/after/indexed");
    for m in &members {
        assert_clean_log(m);
    }
}

#[test]
fn killed_restore_leaves_old_member_and_a_rerun_succeeds() {
    let src = source(Version::V3_5_30);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    copy_dir(&src.member, &data.join("member"));
    // A leftover staging dir from an earlier killed run is only ever our own partial output.
    fs::create_dir_all(data.join(".lifeboat-staging/member/snap")).unwrap();
    fs::write(data.join(".lifeboat-staging/member/snap/db"), b"partial").unwrap();
    let old = tree(&data.join("member"));
    let a = one_member(alloc_port());
    for delay_ms in (0..40u64).map(|i| 5 + i * 10) {
        let mut child = ours_cmd(&src.snap, &data, &a)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill();
        let status = child.wait().unwrap();
        // Whatever the moment: the old member is intact, as `member/` or moved aside next to a
        // complete new one (the swap is two renames; the marker comes last).
        let t = tree(&data);
        let intact_as = |prefix: &str| {
            let sub: Tree = t
                .iter()
                .filter_map(|(k, v)| {
                    k.strip_prefix(&format!("{prefix}/"))
                        .map(|r| (r.to_string(), v.clone()))
                })
                .collect();
            sub == old
        };
        let aside = t
            .keys()
            .filter(|k| !k.contains('/') && k.starts_with("member.pre-restore-"))
            .any(|k| intact_as(k));
        assert!(
            intact_as("member") || (aside && t.contains_key("member/snap/db")),
            "after kill at {delay_ms} ms ({status}): {:?}",
            t.keys().collect::<Vec<_>>()
        );
        eprintln!(
            "killed after {delay_ms} ms ({status}): old member {}",
            if intact_as("member") {
                "still in place"
            } else {
                "moved aside"
            }
        );
        if !intact_as("member") {
            break; // the restore got through; the re-run below is a retry
        }
    }
    ours_ok(&src.snap, &data, &a);
    assert!(!data.join(".lifeboat-staging").exists());
    let t = tree(&data);
    let asides: Vec<&String> = t
        .keys()
        .filter(|k| !k.contains('/') && k.starts_with("member.pre-restore-"))
        .collect();
    // One moved-aside dir holds the old member (a kill between the swap and the marker would
    // make the re-run move the new member aside too: harmless, nothing is ever deleted).
    let intact: Vec<bool> = asides
        .iter()
        .map(|a| {
            let sub: Tree = t
                .iter()
                .filter_map(|(k, v)| {
                    k.strip_prefix(&format!("{a}/"))
                        .map(|r| (r.to_string(), v.clone()))
                })
                .collect();
            sub == old
        })
        .collect();
    assert_eq!(intact.iter().filter(|x| **x).count(), 1, "{asides:?}");
    let port: u16 = a.peer_urls.rsplit(':').next().unwrap().parse().unwrap();
    let etcd = start_single(&data, &a, port);
    assert!(get_kvs(&etcd) == src.kvs);
    assert_clean_log(&etcd);
}

// ---------------------------------------------------------------------------------------------
// 6. From a store: `latest` and a backup id
// ---------------------------------------------------------------------------------------------

#[test]
fn restore_latest_and_by_id_from_a_file_store() {
    let v = Version::V3_5_30;
    let tmp = tempfile::tempdir().unwrap();
    let (store, spool) = (tmp.path().join("store"), tmp.path().join("spool"));
    fs::create_dir_all(&spool).unwrap();
    let mut etcd = Etcd::start(v, tls(), EtcdOpts::default());
    runtime().block_on(async {
        populate(&etcd.client().await, &Sample::tiny()).await;
    });
    let backup = |etcd: &Etcd| {
        let out = lifeboat()
            .arg("backup")
            .env("LIFEBOAT_ETCD_ENDPOINTS", etcd.client_url())
            .env("LIFEBOAT_ETCD_CACERT", &tls().ca)
            .env("LIFEBOAT_ETCD_CERT", &tls().client.cert)
            .env("LIFEBOAT_ETCD_KEY", &tls().client.key)
            .env("LIFEBOAT_STORE", format!("file://{}", store.display()))
            .env("LIFEBOAT_CLUSTER_NAME", "prod")
            .env("LIFEBOAT_SPOOL_DIR", &spool)
            .output()
            .unwrap();
        assert!(out.status.success(), "backup: {}", describe(&out));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let first_id = backup(&etcd);
    let first_kvs = get_kvs(&etcd);
    etcd.etcdctl_ok(&["put", "/later", "x"]);
    // No writes between these two: the same logical database.
    let saved = tmp.path().join("saved.db");
    save_snapshot(&etcd, &saved);
    let latest_id = backup(&etcd);
    assert_ne!(first_id, latest_id);
    etcd.stop();

    let a = Args::cluster("m1", &peers(3, "https", 26801), "from-the-store");
    // `restore` of backup `which` (`latest` or an id) from the file store into `data`.
    let store_restore = |which: &str, data: &Path, args: &Args| {
        let mut cmd = ours_cmd(Path::new("/unused"), data, args);
        cmd.env("LIFEBOAT_RESTORE_SOURCE", which)
            .env("LIFEBOAT_STORE", format!("file://{}", store.display()))
            .env("LIFEBOAT_CLUSTER_NAME", "prod")
            .env("LIFEBOAT_SPOOL_DIR", &spool);
        cmd
    };
    // What the spool holds besides the backup's lock file (which stays, by design).
    let spool_leftovers = || -> Vec<String> {
        fs::read_dir(&spool)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".lock"))
            .collect()
    };
    let from_store = |which: &str, data: &Path| {
        let out = store_restore(which, data, &a).output().unwrap();
        assert!(out.status.success(), "restore {which}: {}", describe(&out));
    };
    let (o, t) = (tmp.path().join("ours"), tmp.path().join("theirs"));
    from_store("latest", &o);
    oracle_ok(v, &saved, &t, &a);
    compare_restores(&o, &t, &a, false, "restore latest from a file store");
    // Downloaded snapshots must not stay.
    let leftovers = spool_leftovers();
    assert!(leftovers.is_empty(), "spool dir not cleaned: {leftovers:?}");

    // By id: the first backup, which lacks /later; started as a single member, without bump.
    let single = one_member(alloc_port());
    let d1 = tmp.path().join("single");
    let out = store_restore(&first_id, &d1, &single)
        .env("LIFEBOAT_BUMP_REVISION", "0")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let p: u16 = single
        .peer_urls
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let restored = start_single(&d1, &single, p);
    assert!(get_kvs(&restored) == first_kvs, "restore by id: kvs");
    assert_clean_log(&restored);
    drop(restored);

    // The snapshot from the store is inspected beside the build; its result must still match the
    // manifest before anything is swapped. A manifest whose database hash disagrees (the stored
    // object itself intact, so the download passes) → exit 4 naming the manifest, the existing
    // member untouched, no staging left.
    let manifest = store.join("prod").join(&latest_id).join("manifest.json");
    let text = fs::read_to_string(&manifest).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["db_sha256"] = serde_json::Value::String("00".repeat(32));
    fs::write(&manifest, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    let target = tmp.path().join("kept");
    fs::create_dir_all(target.join("member/snap")).unwrap();
    fs::write(target.join("member/snap/db"), b"the old member").unwrap();
    let out = store_restore("latest", &target, &a).output().unwrap();
    assert_eq!(out.status.code(), Some(EXIT_VERIFY), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the manifest records"), "{err}");
    assert_eq!(
        fs::read(target.join("member/snap/db")).unwrap(),
        b"the old member"
    );
    let names: Vec<_> = fs::read_dir(&target)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["member"], "only the old member stays");

    // A manifest naming an object that is gone (a local store reads it in place): exit 5 naming
    // the object, the target untouched, nothing left in the spool.
    let object = store.join("prod").join(&first_id).join("snapshot.db.zst");
    fs::remove_file(&object).unwrap();
    let out = store_restore(&first_id, &target, &a).output().unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("snapshot.db.zst") && err.contains("cannot read the stored object"),
        "{err}"
    );
    assert_eq!(
        fs::read(target.join("member/snap/db")).unwrap(),
        b"the old member"
    );
    let leftovers = spool_leftovers();
    assert!(leftovers.is_empty(), "spool dir not cleaned: {leftovers:?}");
}

#[test]
fn running_member_never_restored_is_refused_at_once() {
    let src = source(Version::V3_5_30);
    let mut etcd = Etcd::start(Version::V3_5_30, tls(), EtcdOpts::default());
    let data = etcd.data_dir().to_path_buf();
    let ino = fs::metadata(data.join("member")).unwrap().ino();
    let top = |d: &Path| -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(d)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let before = top(&data);
    let out = ours(&src.snap, &data, &one_member(alloc_port()));
    assert_eq!(out.status.code(), Some(EXIT_RESTORE), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("is locked by a running etcd: stop the etcd member first"),
        "{}",
        describe(&out)
    );
    assert_eq!(top(&data), before);
    assert_eq!(fs::metadata(data.join("member")).unwrap().ino(), ino);
    assert!(etcd.is_running());
    etcd.stop();
}

// ---------------------------------------------------------------------------------------------
// 7. A separate WAL dir (LIFEBOAT_WAL_DIR, etcdutl --wal-dir)
// ---------------------------------------------------------------------------------------------

/// Files (and dirs) directly under `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A restored WAL dir as etcdutl leaves it: 0700, exactly one 0600 segment of 64,000,000 bytes.
fn check_wal_dir_layout(wal: &Path) {
    assert_eq!(names(wal), vec![WAL_NAME.to_string()], "{}", wal.display());
    assert_eq!(fs::metadata(wal).unwrap().mode() & 0o777, 0o700);
    let m = fs::metadata(wal.join(WAL_NAME)).unwrap();
    assert_eq!((m.mode() & 0o777, m.len()), (0o600, WAL_SIZE));
}

#[test]
fn wal_dir_byte_identical_to_etcdutl_wal_dir() {
    let v = Version::V3_5_30;
    let src = source(v);
    let tmp = tempfile::tempdir().unwrap();
    let peers = peers(3, "https", 12380);
    let a = Args {
        bump: Some(BUMP),
        ..Args::cluster("m1", &peers, "wal-dir-token")
    };
    let (ours_data, ours_wal) = (
        tmp.path().join("ours/data"),
        tmp.path().join("ours/waldisk/wal"),
    );
    let (their_data, their_wal) = (
        tmp.path().join("theirs/data"),
        tmp.path().join("theirs/waldisk/wal"),
    );
    let out = ours_cmd(&src.snap, &ours_data, &a)
        .env("LIFEBOAT_WAL_DIR", &ours_wal)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("--wal-dir {}", ours_wal.display())),
        "{stdout}"
    );
    let mut cmd = v.snapshot_tool();
    cmd.args(["snapshot", "restore"])
        .arg(&src.snap)
        .arg(format!("--data-dir={}", their_data.display()))
        .arg(format!("--wal-dir={}", their_wal.display()))
        .arg(format!("--name={}", a.name))
        .arg(format!("--initial-cluster={}", a.initial_cluster))
        .arg(format!("--initial-cluster-token={}", a.token))
        .arg(format!("--initial-advertise-peer-urls={}", a.peer_urls))
        .arg(format!("--bump-revision={BUMP}"))
        .arg("--mark-compacted");
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "etcdutl: {}", describe(&out));

    // Same layout as etcdutl: no member/wal in the data dir, the WAL directly in the WAL dir,
    // nothing else left next to the WAL dir (no staging).
    assert_eq!(names(&ours_data.join("member")), vec!["snap"]);
    assert_eq!(names(&their_data.join("member")), vec!["snap"]);
    check_wal_dir_layout(&ours_wal);
    check_wal_dir_layout(&their_wal);
    assert_eq!(names(&tmp.path().join("ours/waldisk")), vec!["wal"]);
    let (ow, tw) = (
        fs::read(ours_wal.join(WAL_NAME)).unwrap(),
        fs::read(their_wal.join(WAL_NAME)).unwrap(),
    );
    if let Some(at) = first_difference(&ow, &tw) {
        panic!("WAL in the WAL dir differs from etcdutl --wal-dir at byte {at}");
    }
    let marker: Value = serde_json::from_str(
        &fs::read_to_string(ours_data.join(".lifeboat-restore.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(marker["wal_dir"].as_str(), ours_wal.to_str());
    // Everything else (.snap bytes, database, modes) as in the default layout: put each WAL dir
    // where the default layout has it and compare the whole restores.
    for (data, wal) in [(&ours_data, &ours_wal), (&their_data, &their_wal)] {
        fs::rename(wal, data.join("member/wal")).unwrap();
    }
    compare_restores(&ours_data, &their_data, &a, false, "--wal-dir");
}

#[test]
fn wal_dir_live_etcd_starts_with_wal_dir_and_old_wal_is_moved_aside() {
    let src = source(Version::V3_5_30);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let wal = tmp.path().join("waldisk/wal");
    let port = alloc_port();
    let a = one_member(port);
    let run = |a: &Args| {
        let out = ours_cmd(&src.snap, &data, a)
            .env("LIFEBOAT_WAL_DIR", &wal)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", describe(&out));
        out
    };
    let start = |a: &Args| {
        Etcd::start(
            Version::V3_5_30,
            tls(),
            EtcdOpts {
                name: Some(a.name.clone()),
                initial_cluster: Some(a.initial_cluster.clone()),
                initial_cluster_token: Some(a.token.clone()),
                data_dir: Some(data.clone()),
                peer_port: Some(port),
                extra_args: vec![format!("--wal-dir={}", wal.display())],
                ..Default::default()
            },
        )
    };
    run(&a);
    check_wal_dir_layout(&wal);
    assert!(!data.join("member/wal").exists());
    let mut etcd = start(&a);
    assert!(
        get_kvs(&etcd) == src.kvs,
        "kvs served from the WAL-dir restore"
    );
    etcd.etcdctl_ok(&["put", "/after/wal-dir", "x"]);
    assert!(mod_revision(&etcd, "/after/wal-dir") > src.rev + BUMP as i64);
    etcd.stop();
    assert_clean_log(&etcd);
    // etcd wrote to the WAL dir, not to <data-dir>/member/wal.
    assert!(!data.join("member/wal").exists());
    assert!(names(&wal).iter().any(|n| n.ends_with(".wal")));

    // A retried Job: no-op.
    let before = (tree(&data), tree(&wal));
    run(&a);
    assert!(
        (tree(&data), tree(&wal)) == before,
        "retry changed something"
    );

    // Another restore: the WAL dir etcd used is moved aside intact, next to the new one.
    let old_wal = tree(&wal);
    let mut other = a.clone();
    other.token = "another-token".into();
    let out = run(&other);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("plan: existing WAL:"), "{stdout}");
    let asides: Vec<String> = names(&tmp.path().join("waldisk"))
        .into_iter()
        .filter(|n| n.starts_with("wal.pre-restore-"))
        .collect();
    assert_eq!(asides.len(), 1, "{asides:?}");
    let aside = tmp.path().join("waldisk").join(&asides[0]);
    assert!(tree(&aside) == old_wal, "moved-aside WAL differs");
    check_wal_dir_layout(&wal);
    let marker: Value =
        serde_json::from_str(&fs::read_to_string(data.join(".lifeboat-restore.json")).unwrap())
            .unwrap();
    assert_eq!(marker["wal_moved_aside"].as_str(), aside.to_str());
    let etcd = start(&other);
    assert!(get_kvs(&etcd) == src.kvs);
    let list: Value =
        serde_json::from_str(&etcd.etcdctl_ok(&["member", "list", "-w", "json"])).unwrap();
    let id = list["members"][0]["ID"].as_u64().unwrap();
    assert_eq!(format!("{id:x}"), marker["member_id"].as_str().unwrap());
    assert_clean_log(&etcd);
}

#[test]
fn wal_dir_refused_inside_member_on_a_mount_point_or_a_full_volume() {
    let src = source(Version::V3_5_30);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    copy_dir(&src.member, &data.join("member"));
    let before = tree(&data);
    let a = one_member(alloc_port());
    let out = ours_cmd(&src.snap, &data, &a)
        .env("LIFEBOAT_WAL_DIR", data.join("member/other-wal"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("inside <data-dir>/member"));
    assert!(tree(&data) == before);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED (mount point part): not root");
        return;
    }
    let wal = tmp.path().join("walvol");
    fs::create_dir_all(&wal).unwrap();
    let _tmpfs = match Tmpfs::mount(&wal, "80m") {
        Ok(t) => t,
        Err(why) => {
            eprintln!("SKIPPED (mount point part): {why}");
            return;
        }
    };
    fs::write(wal.join("old.wal"), b"old").unwrap();
    let out = ours_cmd(&src.snap, &data, &a)
        .env("LIFEBOAT_WAL_DIR", &wal)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(EXIT_RESTORE), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is a mount point") && err.contains("nothing was changed"),
        "{}",
        describe(&out)
    );
    assert!(tree(&data) == before);
    assert_eq!(names(&wal), vec!["old.wal"]);
    // A subdirectory of the volume works, on another filesystem than the data dir.
    let sub = wal.join("wal");
    let out = ours_cmd(&src.snap, &data, &a)
        .env("LIFEBOAT_WAL_DIR", &sub)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    check_wal_dir_layout(&sub);
    assert_eq!(names(&wal), vec!["old.wal", "wal"]);

    // Disk full on the WAL volume: refused before anything moves.
    let small = tmp.path().join("smallvol");
    fs::create_dir_all(&small).unwrap();
    let _tmpfs2 = Tmpfs::mount(&small, "8m").expect("mount tmpfs");
    let before = (tree(&data), tree(&wal));
    let mut other = a.clone();
    other.token = "other".into();
    let out = ours_cmd(&src.snap, &data, &other)
        .env("LIFEBOAT_WAL_DIR", small.join("wal"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(EXIT_RESTORE), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("LIFEBOAT_WAL_DIR's parent")
            && err.contains("free")
            && err.contains("nothing was changed"),
        "{}",
        describe(&out)
    );
    assert!((tree(&data), tree(&wal)) == before);
    assert_eq!(names(&small), Vec::<String>::new());
}

// ---------------------------------------------------------------------------------------------
// 8. SIGTERM (Job deadline, node drain) during a restore
// ---------------------------------------------------------------------------------------------

fn sigterm(child: &std::process::Child) {
    // SAFETY: kill(2) on our own child, not yet reaped.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
}

/// The entries of `t` under `prefix/`, re-rooted.
fn subtree(t: &Tree, prefix: &str) -> Tree {
    t.iter()
        .filter_map(|(k, v)| {
            k.strip_prefix(&format!("{prefix}/"))
                .map(|r| (r.to_string(), v.clone()))
        })
        .collect()
}

/// A complete restored member as our restore writes it (default layout or with a WAL dir).
fn is_complete_new_member(member: &Tree, wal_inside: bool) -> bool {
    let snap = "snap/0000000000000001-0000000000000001.snap";
    let wal_ok = member
        .get(&format!("wal/{WAL_NAME}"))
        .is_some_and(|w| w.1 == WAL_SIZE);
    member.contains_key("snap/db") && member.contains_key(snap) && wal_ok == wal_inside
}

fn wait_for(path: &Path, child: &mut std::process::Child, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !path.exists() {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("{what}: the restore ended ({st}) before reaching the pause point");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: no pause point"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn sigterm_during_swap_finishes_the_swap_then_etcd_starts() {
    let src = source(Version::V3_5_30);
    for with_wal in [false, true] {
        let what = if with_wal {
            "with LIFEBOAT_WAL_DIR"
        } else {
            "default layout"
        };
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let wal = tmp.path().join("waldisk/wal");
        copy_dir(&src.member, &data.join("member"));
        if with_wal {
            copy_dir(&src.member.join("wal"), &wal);
        }
        let old = tree(&data.join("member"));
        let old_wal = with_wal.then(|| tree(&wal));
        let port = alloc_port();
        let a = one_member(port);
        let gate = tmp.path().join("gate");
        let mut cmd = ours_cmd(&src.snap, &data, &a);
        cmd.env("LIFEBOAT_TEST_PAUSE_IN_SWAP", &gate)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        if with_wal {
            cmd.env("LIFEBOAT_WAL_DIR", &wal);
        }
        let mut child = cmd.spawn().unwrap();
        wait_for(&tmp.path().join("gate.paused"), &mut child, what);
        // Inside the window: the old member (and WAL dir) moved aside, the new ones not yet in.
        let t = tree(&data);
        let aside: Vec<String> = names(&data)
            .into_iter()
            .filter(|n| n.starts_with("member.pre-restore-"))
            .collect();
        assert_eq!(aside.len(), 1, "{what}");
        assert!(subtree(&t, &aside[0]) == old, "{what}: old member aside");
        assert!(!data.join("member").exists(), "{what}");
        sigterm(&child);
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(
            matches!(child.try_wait(), Ok(None)),
            "{what}: SIGTERM interrupted the swap"
        );
        fs::write(&gate, b"").unwrap();
        let out = child.wait_with_output().unwrap();
        // The swap is a critical section: the run completes, with the new member in place.
        assert_eq!(out.status.code(), Some(0), "{what}: {}", describe(&out));
        let t = tree(&data);
        assert!(
            is_complete_new_member(&subtree(&t, "member"), !with_wal),
            "{what}: {:?}",
            t.keys().collect::<Vec<_>>()
        );
        assert!(subtree(&t, &aside[0]) == old, "{what}: old member aside");
        assert!(data.join(".lifeboat-restore.json").exists());
        assert!(!data.join(".lifeboat-staging").exists());
        if let Some(old_wal) = &old_wal {
            check_wal_dir_layout(&wal);
            let wal_aside: Vec<String> = names(&tmp.path().join("waldisk"))
                .into_iter()
                .filter(|n| n.starts_with("wal.pre-restore-"))
                .collect();
            assert_eq!(wal_aside.len(), 1, "{what}: {wal_aside:?}");
            assert!(tree(&tmp.path().join("waldisk").join(&wal_aside[0])) == *old_wal);
        }
        // A retried Job is a no-op, and stock etcd starts on the result.
        let before = tree(&data);
        let mut retry = ours_cmd(&src.snap, &data, &a);
        if with_wal {
            retry.env("LIFEBOAT_WAL_DIR", &wal);
        }
        let out = retry.output().unwrap();
        assert!(out.status.success(), "{what}: {}", describe(&out));
        assert!(tree(&data) == before, "{what}: retry changed the data dir");
        let mut extra_args = Vec::new();
        if with_wal {
            extra_args.push(format!("--wal-dir={}", wal.display()));
        }
        let etcd = Etcd::start(
            Version::V3_5_30,
            tls(),
            EtcdOpts {
                name: Some(a.name.clone()),
                initial_cluster: Some(a.initial_cluster.clone()),
                initial_cluster_token: Some(a.token.clone()),
                data_dir: Some(data.clone()),
                peer_port: Some(port),
                extra_args,
                ..Default::default()
            },
        );
        assert!(get_kvs(&etcd) == src.kvs, "{what}");
        assert_clean_log(&etcd);
    }
}

#[test]
fn sigterm_at_any_moment_leaves_old_or_new_member_and_a_retry_completes() {
    use std::os::unix::process::ExitStatusExt;
    let src = source(Version::V3_5_30);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let waldisk = tmp.path().join("waldisk");
    let wal = waldisk.join("wal");
    copy_dir(&src.member, &data.join("member"));
    copy_dir(&src.member.join("wal"), &wal);
    let old = tree(&data.join("member"));
    let old_wal = tree(&wal);
    let port = alloc_port();
    let a = one_member(port);
    let cmd = || {
        let mut c = ours_cmd(&src.snap, &data, &a);
        c.env("LIFEBOAT_WAL_DIR", &wal);
        c
    };
    let mut outcomes = Vec::new();
    for delay_ms in (0..40u64).map(|i| 5 + i * 10) {
        let child = cmd()
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        sigterm(&child);
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        let t = tree(&data);
        let tw = tree(&waldisk);
        let ctx = format!(
            "after SIGTERM at {delay_ms} ms ({:?}): {:?} {:?}\n{err}",
            out.status,
            t.keys().collect::<Vec<_>>(),
            tw.keys().collect::<Vec<_>>()
        );
        match (out.status.code(), out.status.signal()) {
            // Interrupted: staging removed, old member and old WAL dir in place, untouched.
            (Some(143), _) => {
                assert!(err.contains("SIGTERM"), "{ctx}");
                assert!(subtree(&t, "member") == old, "{ctx}");
                assert!(subtree(&tw, "wal") == old_wal, "{ctx}");
                assert!(!data.join(".lifeboat-staging").exists(), "{ctx}");
                assert!(!waldisk.join(".wal.lifeboat-staging").exists(), "{ctx}");
                assert_eq!(names(&data), vec!["member"], "{ctx}");
                assert_eq!(names(&waldisk), vec!["wal"], "{ctx}");
                outcomes.push(format!("{delay_ms}ms:143"));
            }
            // Signalled before the handler was installed (start-up): nothing was touched.
            (None, Some(libc::SIGTERM)) => {
                assert!(subtree(&t, "member") == old, "{ctx}");
                assert!(subtree(&tw, "wal") == old_wal, "{ctx}");
                outcomes.push(format!("{delay_ms}ms:killed-at-start"));
            }
            // Completed: the new member and WAL in place, the old ones moved aside intact.
            (Some(0), _) => {
                assert!(
                    is_complete_new_member(&subtree(&t, "member"), false),
                    "{ctx}"
                );
                check_wal_dir_layout(&wal);
                let aside = names(&data)
                    .into_iter()
                    .find(|n| n.starts_with("member.pre-restore-"))
                    .expect("member aside");
                assert!(subtree(&t, &aside) == old, "{ctx}");
                let wal_aside = names(&waldisk)
                    .into_iter()
                    .find(|n| n.starts_with("wal.pre-restore-"))
                    .expect("WAL aside");
                assert!(subtree(&tw, &wal_aside) == old_wal, "{ctx}");
                assert!(data.join(".lifeboat-restore.json").exists(), "{ctx}");
                outcomes.push(format!("{delay_ms}ms:0"));
                break;
            }
            _ => panic!("unexpected exit: {ctx}"),
        }
    }
    eprintln!("SIGTERM outcomes: {}", outcomes.join(" "));
    assert!(
        outcomes.iter().any(|o| o.ends_with(":143")),
        "no SIGTERM hit the restore while it ran: {outcomes:?}"
    );
    // A retried Job completes (or is a no-op), and stock etcd starts on the result.
    let out = cmd().output().unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let etcd = Etcd::start(
        Version::V3_5_30,
        tls(),
        EtcdOpts {
            name: Some(a.name.clone()),
            initial_cluster: Some(a.initial_cluster.clone()),
            initial_cluster_token: Some(a.token.clone()),
            data_dir: Some(data.clone()),
            peer_port: Some(port),
            extra_args: vec![format!("--wal-dir={}", wal.display())],
            ..Default::default()
        },
    );
    assert!(get_kvs(&etcd) == src.kvs);
    assert_clean_log(&etcd);
}

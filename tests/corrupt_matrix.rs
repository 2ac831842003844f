//! The corrupt-input matrix: a real etcd 3.5.30 snapshot, damaged in 17 deliberate ways, goes
//! through `status`, `verify` and `restore`. Every damaged file must be refused (exit 4, a short
//! error naming what is wrong, never a panic) and a refused restore must leave the target exactly as
//! it was: the old `member/` intact, no staging dir, no `member.pre-restore-*`.
//!
//! The damage is placed by parsing the file (meta, the bucket tree, branch/leaf/overflow pages), not
//! at guessed offsets. Structural damage is also tried with the sha256 trailer *recomputed* over the
//! damaged database, so that the bbolt checks — not only the trailer — must catch it; and `verify`
//! is run twice per case: once with the manifest as the backup wrote it (the object hash catches the
//! damage) and once with the manifest's object size and sha256 rewritten to match the damaged
//! object, so that only the snapshot checks stand between the damage and an "OK".

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Output;

use common::*;
use etcd_lifeboat::snapshot::bolt::{
    branch_element, leaf_element, BucketValue, Meta, NodeAt, PageHeader, ELEMENT_SIZE, FLAG_BRANCH,
    FLAG_LEAF, PAGE_HEADER_SIZE,
};
use sha2::{Digest, Sha256};

const TRAILER: usize = 32;

/// What parsing the snapshot found, as page ids and byte offsets into the file.
#[derive(Debug, Default)]
struct Layout {
    ps: usize,
    meta: Option<Meta>,
    /// (branch page, its parent page or 0 for a bucket root)
    branches: Vec<(u64, u64)>,
    leaves: Vec<u64>,
    /// (first page, overflow count) of nodes spanning more than one page.
    overflowed: Vec<(u64, u32)>,
    /// Byte offset of each bucket value's 16-byte header (`root | sequence`) in the root leaf,
    /// with the bucket's root page.
    bucket_headers: Vec<(usize, u64)>,
}

fn page(db: &[u8], ps: usize, id: u64) -> &[u8] {
    let start = id as usize * ps;
    let h = PageHeader::parse(&db[start..]).unwrap();
    &db[start..start + (h.overflow as usize + 1) * ps]
}

fn walk(db: &[u8], lay: &mut Layout, id: u64, parent: u64, seen: &mut BTreeSet<u64>) {
    assert!(
        seen.insert(id),
        "page {id} reached twice in the intact file"
    );
    let ps = lay.ps;
    let node = page(db, ps, id);
    let h = PageHeader::parse(node).unwrap();
    assert_eq!(h.id, id);
    if h.overflow > 0 {
        lay.overflowed.push((id, h.overflow));
    }
    match h.flags {
        FLAG_BRANCH => {
            lay.branches.push((id, parent));
            for i in 0..h.count as usize {
                let e = branch_element(node, i, NodeAt::Page(id)).unwrap();
                walk(db, lay, e.child, id, seen);
            }
        }
        FLAG_LEAF => {
            lay.leaves.push(id);
            for i in 0..h.count as usize {
                let e = leaf_element(node, i, NodeAt::Page(id)).unwrap();
                if e.is_bucket() {
                    let b = BucketValue::parse(e.value).unwrap();
                    if parent == u64::MAX {
                        // The root leaf: remember where this bucket's header lives in the file.
                        let off = e.value.as_ptr() as usize - db.as_ptr() as usize;
                        lay.bucket_headers.push((off, b.root));
                    }
                    if b.root != 0 {
                        walk(db, lay, b.root, 0, seen);
                    }
                }
            }
        }
        f => panic!("page {id}: unexpected flags {f:#x}"),
    }
}

fn layout(snap: &[u8]) -> Layout {
    let db = &snap[..snap.len() - TRAILER];
    let meta = Meta::parse(db).unwrap();
    let mut lay = Layout {
        ps: meta.page_size as usize,
        meta: Some(meta),
        ..Layout::default()
    };
    let mut seen = BTreeSet::new();
    walk(db, &mut lay, meta.root, u64::MAX, &mut seen);
    lay
}

fn with_trailer(db: &[u8]) -> Vec<u8> {
    let mut out = db.to_vec();
    out.extend_from_slice(&Sha256::digest(db));
    out
}

fn rehash(snap: &[u8]) -> Vec<u8> {
    with_trailer(&snap[..snap.len() - TRAILER])
}

fn flip(b: &mut [u8], off: usize, bit: u8) {
    b[off] ^= 1 << bit;
}

fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// One kind of damage.
struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    /// The raw database without trailer is a valid input to `status` (etcdutl reads raw
    /// `member/snap/db` files too): status must succeed, verify and restore must still refuse.
    status_ok: bool,
}

fn cases(snap: &[u8], lay: &Layout) -> Vec<Case> {
    let ps = lay.ps;
    let len = snap.len();
    let meta = lay.meta.unwrap();
    let mut out = Vec::new();
    let mut add = |name: &'static str, bytes: Vec<u8>| {
        out.push(Case {
            name,
            bytes,
            status_ok: false,
        })
    };

    // Truncations.
    add("truncated inside meta page 0", snap[..100].to_vec());
    let (branch, branch_parent) = lay.branches[0];
    add(
        "truncated inside a branch page",
        snap[..branch as usize * ps + ps / 2].to_vec(),
    );
    let (ov, _) = lay.overflowed[0];
    add(
        "truncated inside an overflow value",
        snap[..(ov as usize + 1) * ps + 100].to_vec(),
    );
    add(
        "truncated 1 byte before the trailer",
        snap[..len - TRAILER - 1].to_vec(),
    );
    // Half a trailer: the size no longer says "trailer" (size % 512 != 32), so like etcdutl,
    // status reads it as a raw database (and says so); verify and restore need the trailer.
    out.push(Case {
        name: "truncated inside the trailer",
        bytes: snap[..len - 16].to_vec(),
        status_ok: true,
    });
    let mut add = |name: &'static str, bytes: Vec<u8>| {
        out.push(Case {
            name,
            bytes,
            status_ok: false,
        })
    };
    add("zero length", Vec::new());

    // Trailer.
    let mut wrong = snap.to_vec();
    let n = wrong.len();
    wrong[n - TRAILER..].copy_from_slice(&Sha256::digest(b"not this database"));
    add("wrong trailer (sha256 of other data)", wrong);

    // Random bytes, same length as the snapshot (seeded xorshift).
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let random = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    add("random bytes", random);

    // Bit flips; each also exists with a recomputed trailer (below), where the bbolt checks must
    // catch it on their own.
    let mut structural: Vec<(&'static str, Vec<u8>)> = Vec::new();
    let mut b = snap.to_vec();
    // Meta: the root field of both metas (bbolt falls back to the other meta if only one is bad,
    // which is correct behaviour, not a detection failure).
    flip(&mut b, PAGE_HEADER_SIZE + 16 + 2, 3);
    flip(&mut b, ps + PAGE_HEADER_SIZE + 16 + 2, 3);
    structural.push(("bit flip in both meta pages", b));
    // Branch: the child pointer of element 0 (bit 20: far past the high-water mark).
    let mut b = snap.to_vec();
    flip(&mut b, branch as usize * ps + PAGE_HEADER_SIZE + 8 + 2, 4);
    structural.push(("bit flip in a branch element's child pgid", b));
    // Leaf: the page type flags (leaf 0x02 -> 0x03).
    let leaf = *lay.leaves.last().unwrap();
    let mut b = snap.to_vec();
    flip(&mut b, leaf as usize * ps + 8, 0);
    structural.push(("bit flip in a leaf page header (flags)", b));
    // Overflow: the overflow count of a multi-page node (+2 pages: its span changes).
    let mut b = snap.to_vec();
    flip(&mut b, ov as usize * ps + 12, 1);
    structural.push(("bit flip in an overflow page's overflow count", b));
    // Bucket header: the root pgid of a bucket in the root leaf.
    let (bh, _) = *lay
        .bucket_headers
        .iter()
        .find(|(_, root)| *root != 0)
        .unwrap();
    let mut b = snap.to_vec();
    flip(&mut b, bh + 3, 7);
    structural.push(("bit flip in a bucket header (root pgid)", b));
    // pgid past the file: a branch child far beyond the end.
    let mut b = snap.to_vec();
    put_u64(
        &mut b,
        branch as usize * ps + PAGE_HEADER_SIZE + ELEMENT_SIZE + 8,
        meta.pgid + 1000,
    );
    structural.push(("branch child pgid past the end of the file", b));
    // Page cycle: a branch child pointing back at an ancestor (its parent branch, or itself if it
    // is a bucket root).
    let ancestor = if branch_parent != 0 {
        branch_parent
    } else {
        branch
    };
    let mut b = snap.to_vec();
    put_u64(
        &mut b,
        branch as usize * ps + PAGE_HEADER_SIZE + 8,
        ancestor,
    );
    structural.push(("page cycle: branch child points at an ancestor", b));

    // Damage inside an overflow *value* (no structure touched): only the trailer can tell.
    let mut b = snap.to_vec();
    flip(&mut b, (ov as usize + 1) * ps + 200, 5);
    add("bit flip inside an overflow value's data", b);

    for (name, bytes) in structural {
        let rehashed = rehash(&bytes);
        add(name, bytes);
        add(
            Box::leak(format!("{name} + trailer recomputed").into_boxed_str()),
            rehashed,
        );
    }

    out.push(Case {
        name: "missing trailer (raw database)",
        bytes: snap[..len - TRAILER].to_vec(),
        status_ok: true,
    });
    out
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Refused with exit 4, with an error, and no panic/backtrace anywhere.
fn assert_refused(case: &str, cmd: &str, out: &Output) -> String {
    let all = text(out);
    assert!(
        !all.contains("panicked")
            && !all.contains("RUST_BACKTRACE")
            && !all.contains("stack backtrace"),
        "{case}: {cmd} panicked: {}",
        describe(out)
    );
    assert_eq!(
        out.status.code(),
        Some(4),
        "{case}: {cmd} must fail verification (exit 4): {}",
        describe(out)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    assert!(
        !last.is_empty() && last.len() < 1000,
        "{case}: {cmd}: no short error line: {}",
        describe(out)
    );
    last.to_string()
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
            if e.path().is_dir() {
                out.push(format!("{rel}/"));
                stack.push(e.path());
            } else {
                let bytes = std::fs::read(e.path()).unwrap();
                out.push(format!("{rel} {}", hex::encode(Sha256::digest(bytes))));
            }
        }
    }
    out.sort();
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let dest = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

#[test]
fn corrupt_inputs_are_refused_by_status_verify_and_restore() {
    let tls = Tls::temp();
    let etcd = Etcd::start(Version::V3_5_30, &tls, EtcdOpts::default());
    let sample = Sample {
        keys: 3_000,
        big_values: 4,
        overwrites: 20,
        deletes: 10,
        leases: 1,
        keys_per_lease: 2,
        auth: false,
        users: 0,
        concurrency: 2,
    };
    runtime().block_on(async { populate(&etcd.client().await, &sample).await });
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let snap_path = work.join("good.db");
    save_snapshot(&etcd, &snap_path);

    // A real backup (uncompressed, so the object is the snapshot file itself).
    let store = work.join("store");
    let spool = work.join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let out = lifeboat()
        .arg("backup")
        .env("LIFEBOAT_ETCD_ENDPOINTS", etcd.client_url())
        .env("LIFEBOAT_ETCD_CACERT", &tls.ca)
        .env("LIFEBOAT_ETCD_CERT", &tls.client.cert)
        .env("LIFEBOAT_ETCD_KEY", &tls.client.key)
        .env("LIFEBOAT_STORE", format!("file://{}", store.display()))
        .env("LIFEBOAT_CLUSTER_NAME", "test")
        .env("LIFEBOAT_COMPRESSION", "none")
        .env("LIFEBOAT_SPOOL_DIR", &spool)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    drop(etcd);
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let backup_dir = store.join("test").join(&id);
    let snap = std::fs::read(backup_dir.join("snapshot.db")).unwrap();

    let lay = layout(&snap);
    assert!(
        !lay.branches.is_empty() && !lay.overflowed.is_empty() && lay.bucket_headers.len() > 3,
        "sample too small to have every page kind: {lay:?}"
    );

    // The intact backup passes all three, so the refusals below are about the damage.
    let good = work.join("intact.db");
    std::fs::write(&good, &snap).unwrap();
    let out = lifeboat().arg("status").arg(&good).output().unwrap();
    assert!(out.status.success(), "{}", describe(&out));

    let cases = cases(&snap, &lay);
    assert!(cases.len() >= 12);
    let mut seen = BTreeSet::new();
    for (i, case) in cases.iter().enumerate() {
        assert!(
            seen.insert(case.bytes.clone()),
            "{}: duplicate damage",
            case.name
        );
        assert!(case.bytes != snap, "{}: no damage", case.name);
        let file = work.join(format!("case-{i}.db"));
        std::fs::write(&file, &case.bytes).unwrap();

        // status
        let out = lifeboat().arg("status").arg(&file).output().unwrap();
        let mut said = Vec::new();
        if case.status_ok {
            assert!(out.status.success(), "{}: {}", case.name, describe(&out));
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("no sha256 trailer"),
                "{}: status must say the trailer is missing: {}",
                case.name,
                describe(&out)
            );
            said.push("status: exit 0, notes no trailer".to_string());
        } else {
            said.push(format!(
                "status: {}",
                assert_refused(case.name, "status", &out)
            ));
        }

        // verify, manifest as written (object hash/size catch it) and rewritten (snapshot checks).
        for fix_manifest in [false, true] {
            let root = work.join(format!("store-{i}-{fix_manifest}"));
            let bdir = root.join("test").join(&id);
            copy_dir(&backup_dir, &bdir);
            std::fs::write(bdir.join("snapshot.db"), &case.bytes).unwrap();
            if fix_manifest {
                let mp = bdir.join("manifest.json");
                let mut m: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(&mp).unwrap()).unwrap();
                m["stored_size"] = (case.bytes.len() as u64).into();
                m["stored_sha256"] = hex::encode(Sha256::digest(&case.bytes)).into();
                std::fs::write(&mp, serde_json::to_vec(&m).unwrap()).unwrap();
            }
            let vspool = work.join(format!("vspool-{i}-{fix_manifest}"));
            std::fs::create_dir_all(&vspool).unwrap();
            let out = lifeboat()
                .args(["verify", &id])
                .env("LIFEBOAT_STORE", format!("file://{}", root.display()))
                .env("LIFEBOAT_CLUSTER_NAME", "test")
                .env("LIFEBOAT_SPOOL_DIR", &vspool)
                .output()
                .unwrap();
            let label = if fix_manifest {
                "verify (manifest hash fixed)"
            } else {
                "verify"
            };
            said.push(format!(
                "{label}: {}",
                assert_refused(case.name, label, &out)
            ));
            assert!(
                files_under(&vspool).is_empty(),
                "{}: {label} left files in the spool: {:?}",
                case.name,
                files_under(&vspool)
            );
        }

        // restore onto a data dir with an existing member.
        let data = work.join(format!("data-{i}"));
        std::fs::create_dir_all(data.join("member/snap")).unwrap();
        std::fs::write(data.join("member/marker"), format!("old member {i}")).unwrap();
        std::fs::write(data.join("member/snap/db"), b"old db").unwrap();
        let before = files_under(&data);
        let rspool = work.join(format!("rspool-{i}"));
        std::fs::create_dir_all(&rspool).unwrap();
        let out = lifeboat()
            .arg("restore")
            .env("LIFEBOAT_RESTORE_SOURCE", &file)
            .env("LIFEBOAT_DATA_DIR", &data)
            .env("LIFEBOAT_SPOOL_DIR", &rspool)
            .output()
            .unwrap();
        said.push(format!(
            "restore: {}",
            assert_refused(case.name, "restore", &out)
        ));
        assert_eq!(
            files_under(&data),
            before,
            "{}: restore changed the data dir",
            case.name
        );
        assert!(
            files_under(&rspool).is_empty(),
            "{}: restore spool",
            case.name
        );
        eprintln!("ok: {}\n    {}", case.name, said.join("\n    "));
    }
    eprintln!("{} corruption kinds refused", cases.len());
}

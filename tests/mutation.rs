//! Deterministic mutation test: thousands of damaged copies of real snapshots go through
//! `snapshot::inspect_bytes` and the pread cursor (`BoltFile`). Every case must end — quickly — in
//! a report or a clean error: no panic, no hang, no runaway memory.
//!
//! Mutations: bit flips anywhere, in page headers and in meta pages (with the checksum fixed so the
//! damage gets past it), truncations, page header and element fields set to boundary values,
//! induced cycles (a branch or bucket pointing at an ancestor or itself), copied pages, zeroed and
//! random ranges, damaged trailers. Seeded with a tiny xorshift PRNG, so failures reproduce.

use std::path::Path;
use std::time::{Duration, Instant};

use etcd_lifeboat::cli::WriteOut;
use etcd_lifeboat::snapshot::bolt::{
    self, BoltFile, Meta, PageHeader, FLAG_BRANCH, FLAG_LEAF, PAGE_HEADER_SIZE,
};
use etcd_lifeboat::snapshot::status::{render, Compat, TableStyle};
use etcd_lifeboat::snapshot::{inspect_bytes, SnapshotError};

const CASES: usize = 10_500;
const BASES: [&str; 4] = [
    "snap-v3530.db",
    "raw-v3423.db",
    "snap-v3501.db",
    "corrupted_backup.db",
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    fn boundary(&mut self, pgid: u64) -> u64 {
        let choices = [
            0,
            1,
            2,
            3,
            pgid.saturating_sub(1),
            pgid,
            pgid + 1,
            0xFFFF,
            u32::MAX as u64,
            u64::MAX,
        ];
        if self.below(4) == 0 {
            self.next()
        } else {
            choices[self.below(choices.len())]
        }
    }
}

struct Base {
    bytes: Vec<u8>,
    ps: usize,
    pgid: u64,
    branches: Vec<usize>,
    leaves: Vec<usize>,
}

fn load(name: &str) -> Base {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let bytes = std::fs::read(path).unwrap();
    let meta = Meta::parse(&bytes).unwrap();
    let ps = meta.page_size as usize;
    let (mut branches, mut leaves) = (vec![], vec![]);
    for id in 2..meta.pgid as usize {
        let h = PageHeader::parse(&bytes[id * ps..]).unwrap();
        if h.id == id as u64 && h.flags == FLAG_BRANCH {
            branches.push(id);
        }
        if h.id == id as u64 && h.flags == FLAG_LEAF {
            leaves.push(id);
        }
    }
    Base {
        bytes,
        ps,
        pgid: meta.pgid,
        branches,
        leaves,
    }
}

fn put_u16(b: &mut [u8], off: usize, v: u64) {
    if let Some(s) = b.get_mut(off..off + 2) {
        s.copy_from_slice(&(v as u16).to_le_bytes());
    }
}
fn put_u32(b: &mut [u8], off: usize, v: u64) {
    if let Some(s) = b.get_mut(off..off + 4) {
        s.copy_from_slice(&(v as u32).to_le_bytes());
    }
}
fn put_u64(b: &mut [u8], off: usize, v: u64) {
    if let Some(s) = b.get_mut(off..off + 8) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}

/// Applies one mutation of kind `kind` to a copy of `base`.
fn mutate(base: &Base, kind: usize, rng: &mut Rng) -> Vec<u8> {
    let mut b = base.bytes.clone();
    let len = b.len();
    let ps = base.ps;
    let pages = base.pgid as usize;
    match kind {
        0 => {
            for _ in 0..1 + rng.below(8) {
                let i = rng.below(len);
                b[i] ^= 1 << rng.below(8);
            }
        }
        1 => {
            let off = rng.below(pages) * ps + rng.below(PAGE_HEADER_SIZE);
            b[off] ^= 1 << rng.below(8);
        }
        2 => {
            // a meta field set to a boundary value, checksum recomputed
            let m = rng.below(2) * ps;
            let mut meta = Meta::parse(&b[m..]).unwrap_or(Meta::parse(&b).unwrap());
            let v = rng.boundary(base.pgid);
            match rng.below(6) {
                0 => meta.root = v,
                1 => meta.freelist = v,
                2 => meta.pgid = v,
                3 => meta.txid = v,
                4 => {
                    meta.page_size = [0, 1, 512, 1024, 2048, 8192, 1 << 24, u32::MAX][rng.below(8)]
                }
                _ => meta.root_sequence = v,
            }
            b[m + 16..m + 80].copy_from_slice(&meta.encode());
        }
        3 => b.truncate(rng.below(len)),
        4 => {
            let p = rng.below(pages) * ps;
            let v = rng.boundary(base.pgid);
            match rng.below(4) {
                0 => put_u64(&mut b, p, v),
                1 => put_u16(&mut b, p + 8, [0, 1, 2, 4, 0x10, 3, 0xFFFF][rng.below(7)]),
                2 => put_u16(&mut b, p + 10, v),
                _ => put_u32(&mut b, p + 12, v),
            }
        }
        5 => {
            // an element field of a leaf or branch set to a boundary value
            let pool = if rng.below(2) == 0 && !base.branches.is_empty() {
                &base.branches
            } else {
                &base.leaves
            };
            if let Some(&id) = pool.get(rng.below(pool.len())) {
                let p = id * ps;
                let count = u16::from_le_bytes([b[p + 10], b[p + 11]]) as usize;
                let e = p + PAGE_HEADER_SIZE + 16 * rng.below(count.max(1));
                let v = if rng.below(2) == 0 {
                    rng.boundary(base.pgid)
                } else {
                    rng.below(2 * ps) as u64
                };
                match rng.below(4) {
                    0 => put_u32(&mut b, e, v),
                    1 => put_u32(&mut b, e + 4, v),
                    2 => put_u32(&mut b, e + 8, v),
                    _ => put_u64(&mut b, e + 8, v),
                }
            }
        }
        6 => {
            // cycle: a branch child pointing at itself or another branch, or a bucket at the root
            if !base.branches.is_empty() && rng.below(3) != 0 {
                let id = base.branches[rng.below(base.branches.len())];
                let target = base.branches[rng.below(base.branches.len())];
                let p = id * ps;
                let count = u16::from_le_bytes([b[p + 10], b[p + 11]]) as usize;
                let e = p + PAGE_HEADER_SIZE + 16 * rng.below(count.max(1));
                put_u64(&mut b, e + 8, target as u64);
            } else if let Ok(meta) = Meta::parse(&b) {
                // one or every bucket value in the root leaf points at the root page
                let p = meta.root as usize * ps;
                if p + ps <= len {
                    let count = u16::from_le_bytes([b[p + 10], b[p + 11]]) as usize;
                    let all = rng.below(2) == 0;
                    for i in 0..count {
                        if all || i == count / 2 {
                            let e = p + PAGE_HEADER_SIZE + 16 * i;
                            let pos =
                                u32::from_le_bytes(b[e + 4..e + 8].try_into().unwrap()) as usize;
                            let ks =
                                u32::from_le_bytes(b[e + 8..e + 12].try_into().unwrap()) as usize;
                            put_u64(&mut b, e + pos + ks, meta.root);
                        }
                    }
                }
            }
        }
        7 => {
            // copy one page over another and fix its id: two references to the same subtree
            let (a, c) = (2 + rng.below(pages - 2), 2 + rng.below(pages - 2));
            let page = b[a * ps..(a + 1) * ps].to_vec();
            b[c * ps..(c + 1) * ps].copy_from_slice(&page);
            put_u64(&mut b, c * ps, c as u64);
        }
        8 => {
            let s = rng.below(len);
            let e = (s + 1 + rng.below(2 * ps)).min(len);
            b[s..e].fill(0);
        }
        9 => {
            let s = rng.below(len);
            let e = (s + 1 + rng.below(2 * ps)).min(len);
            for x in &mut b[s..e] {
                *x = rng.next() as u8;
            }
        }
        _ => match rng.below(3) {
            0 => {
                let i = len - 1 - rng.below(32);
                b[i] ^= 1;
            }
            1 => b.extend((0..32).map(|_| rng.next() as u8)),
            _ => b.truncate(len - len % 512),
        },
    }
    b
}

/// Everything a caller might do with a snapshot; must not panic.
fn exercise(bytes: &[u8]) -> usize {
    let mut outcomes = 0;
    match inspect_bytes(bytes) {
        Ok(r) => {
            let _ = r.verdict();
            for w in [WriteOut::Simple, WriteOut::Json, WriteOut::Table] {
                outcomes += render(&r.status, w, Compat::V36, TableStyle::Unicode)
                    .len()
                    .min(1);
            }
        }
        Err(SnapshotError::Format(m)) => assert!(!m.is_empty() && !m.contains('\n'), "{m:?}"),
        Err(e) => panic!("unexpected I/O error from memory: {e}"),
    }
    if let Ok(db) = BoltFile::from_reader(bytes, bytes.len() as u64, "mutant") {
        if let Ok(buckets) = db.buckets() {
            for b in &buckets {
                let mut n = 0usize;
                let _ = db.for_each_in(b, |_, _, _| {
                    n += 1;
                    Ok(())
                });
                outcomes += n;
            }
        }
    }
    outcomes
}

#[test]
fn mutated_snapshots_never_panic_or_hang() {
    let bases: Vec<Base> = BASES.iter().map(|n| load(n)).collect();
    let mut rng = Rng(0x5eed_11fe_b0a7_0001);
    let mut slowest = Duration::ZERO;
    let mut outcomes = 0usize;
    for case in 0..CASES {
        let base = &bases[case % bases.len()];
        let kind = rng.below(11);
        let bytes = mutate(base, kind, &mut rng);
        let start = Instant::now();
        let r = std::panic::catch_unwind(|| exercise(&bytes));
        let took = start.elapsed();
        match r {
            Ok(n) => outcomes += n,
            Err(_) => {
                let path = std::env::temp_dir().join(format!("lifeboat-mutant-{case}.db"));
                std::fs::write(&path, &bytes).unwrap();
                panic!(
                    "case {case} (kind {kind}) panicked; input saved to {}",
                    path.display()
                );
            }
        }
        slowest = slowest.max(took);
        if took > Duration::from_secs(5) {
            let path = std::env::temp_dir().join(format!("lifeboat-mutant-{case}.db"));
            std::fs::write(&path, &bytes).unwrap();
            panic!(
                "case {case} (kind {kind}) took {took:?}; input saved to {}",
                path.display()
            );
        }
    }
    assert!(outcomes > 0);
    eprintln!("{CASES} mutants, slowest {slowest:?}");
}

#[test]
fn bases_are_sound_and_have_branches() {
    let b = load("snap-v3530.db");
    assert!(
        !b.branches.is_empty(),
        "the cycle mutations need a branch page"
    );
    assert!(inspect_bytes(&b.bytes).unwrap().verdict().is_ok());
    let _ = bolt::MAX_DEPTH;
}

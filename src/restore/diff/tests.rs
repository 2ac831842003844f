//! Tests for the restore diff, including source snapshot → diff → writer against the databases
//! etcdutl 3.5.30 produced (`tests/fixtures/restore/`).

use super::*;
use crate::snapshot::write::testdb::{logical, Db};
use crate::snapshot::write::BoltWriter;
use std::collections::BTreeMap;
use std::io::Cursor;

fn plan() -> ClusterPlan {
    ClusterPlan::new(
        "default",
        "default=http://localhost:2380",
        "http://localhost:2380",
        "etcd-cluster",
    )
    .unwrap()
}

fn ok(v: &[(&[u8], &[u8])]) -> Vec<Result<Entry, String>> {
    v.iter()
        .map(|(k, v)| Ok((k.to_vec(), v.to_vec())))
        .collect()
}

#[test]
fn diff_merges_in_key_order() {
    let d = RestoreDiff::new(&plan(), Some((1000, Revision { main: 22, sub: 0 }))).unwrap();
    let meta: Vec<_> = d
        .apply(
            b"meta",
            ok(&[
                (b"confState", b"x"),
                (b"consistent_index", b"old"),
                (b"term", b"old"),
            ])
            .into_iter(),
        )
        .collect::<Result<_, _>>()
        .unwrap();
    let keys: Vec<&[u8]> = meta.iter().map(|(k, _)| k.as_slice()).collect();
    assert_eq!(
        keys,
        [
            &b"confState"[..],
            b"consistent_index",
            b"scheduledCompactRev",
            b"term"
        ]
    );
    assert_eq!(meta[1].1, 1u64.to_be_bytes());
    assert_eq!(meta[2].1, Revision { main: 1022, sub: 0 }.to_key());

    let members: Vec<_> = d
        .apply(
            b"members",
            ok(&[(b"1", b"old"), (b"9", b"old")]).into_iter(),
        )
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        members,
        vec![(
            b"8e9e05c52164694d".to_vec(),
            plan().members[0].json().into_bytes()
        )]
    );
    assert_eq!(
        d.apply(b"members_removed", ok(&[(b"1", b"x")]).into_iter())
            .count(),
        0
    );

    let key: Vec<_> = d
        .apply(
            b"key",
            ok(&[(&Revision { main: 22, sub: 0 }.to_key(), b"v")]).into_iter(),
        )
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(key.len(), 2);
    assert_eq!(
        key[1],
        (Revision { main: 1022, sub: 0 }.to_key(), Vec::new())
    );

    let other = ok(&[(b"a", b"1")]);
    assert_eq!(
        d.apply(b"lease", other.clone().into_iter())
            .collect::<Vec<_>>(),
        other
    );
    // source errors pass through
    let err: Vec<Result<Entry, String>> = vec![Err("boom".into())];
    assert_eq!(
        d.apply(b"members", err.clone().into_iter()).next(),
        Some(Err("boom".into()))
    );
    assert_eq!(
        d.apply(b"lease", err.into_iter()).next(),
        Some(Err("boom".into()))
    );

    let names = d.buckets([&b"alarm"[..], b"key", b"meta"]);
    let names: Vec<&[u8]> = names.iter().map(Vec::as_slice).collect();
    assert_eq!(
        names,
        [
            &b"alarm"[..],
            b"cluster",
            b"key",
            b"members",
            b"members_removed",
            b"meta"
        ]
    );
}

#[test]
fn bump_flags_and_overflow() {
    assert_eq!(validate_bump_flags(0, false), Ok(None));
    assert_eq!(validate_bump_flags(5, true), Ok(Some(5)));
    assert!(validate_bump_flags(5, false).is_err());
    assert!(validate_bump_flags(0, true).is_err());
    let e = RestoreDiff::new(&plan(), Some((u64::MAX, Revision { main: 1, sub: 0 }))).unwrap_err();
    assert!(matches!(e, DiffError::BumpOverflow { .. }));
    assert_eq!(
        Revision::from_key(&Revision { main: 3, sub: 4 }.to_key()),
        Some(Revision { main: 3, sub: 4 })
    );
    assert_eq!(Revision::from_key(b"short"), None);
    assert_eq!(Revision::latest(None), Ok(Revision::default()));
    let tomb = [&Revision { main: 9, sub: 1 }.to_key()[..], b"t"].concat();
    assert_eq!(
        Revision::latest(Some(&tomb)),
        Ok(Revision { main: 9, sub: 1 })
    );
    assert!(matches!(
        Revision::latest(Some(b"junk")),
        Err(DiffError::BadRevisionKey(_))
    ));
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/restore/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// Source snapshot → diff → writer must give the same logical database as etcdutl 3.5.30's
/// restore, plain and with `--bump-revision 1000 --mark-compacted`.
#[test]
fn diff_and_writer_reproduce_etcdutl_restores() {
    let src_file = fixture("source.db");
    let src = logical(&src_file[..src_file.len() - 32]);
    for (want_name, bump) in [("plain.db", None), ("bumped.db", Some(1000u64))] {
        let latest = src[&b"key".to_vec()]
            .1
            .last()
            .and_then(|(k, _)| Revision::from_key(k))
            .unwrap_or_default();
        let diff = RestoreDiff::new(&plan(), bump.map(|b| (b, latest))).unwrap();
        let mut w = BoltWriter::new(Cursor::new(Vec::new()), 4096).unwrap();
        let names: Vec<&[u8]> = src.keys().map(Vec::as_slice).collect();
        for name in diff.buckets(names) {
            let (seq, source) = src.get(&name).cloned().unwrap_or_default();
            w.begin_bucket(&name, seq).unwrap();
            for kv in diff.apply(&name, source.into_iter().map(Ok::<_, String>)) {
                let (k, v) = kv.unwrap();
                w.put(&k, &v).unwrap();
            }
            w.end_bucket().unwrap();
        }
        let (out, _) = w.finish_in_place(2).unwrap();
        let ours = Db::read(out.get_ref());
        let ours: BTreeMap<_, _> = ours
            .buckets
            .into_iter()
            .map(|(n, (s, _, e))| (n, (s, e)))
            .collect();
        let want = logical(&fixture(want_name));
        assert_eq!(
            ours.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "{want_name}: bucket names"
        );
        for (name, w) in &want {
            assert_eq!(
                &ours[name],
                w,
                "{want_name}: bucket {}",
                String::from_utf8_lossy(name)
            );
        }
    }
}

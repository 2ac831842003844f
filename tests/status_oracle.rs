//! `etcd-lifeboat status` against the real tools as oracles (spec §2, §7.2).
//!
//! For each server version (3.4.23, 3.5.1, 3.5.30, one test each, run in parallel): start a TLS
//! member, write the standard sample (overflow values, tombstones, leases, auth on), take an
//! `etcdctl snapshot save` file (with the sha256 trailer) and a raw `member/snap/db` copied from
//! the stopped member, then require our stdout to be byte-identical to
//!
//! - etcdutl 3.5.30 in `simple`, `table` (Unicode box) and `json`, and with no `-w` (simple);
//! - etcdutl 3.5.1 and etcdctl 3.4.23 in `simple` and `json`, and their ASCII tables with `--ascii`.
//!
//! Before judging our output, each test checks the oracles against each other (the spec's claim
//! that `simple` and `json` agree across all three tools, and that the two table styles differ only
//! in the drawing characters) and checks the sample really is what it claims (revision, key count,
//! size), so a broken harness fails with its own message rather than blaming the engine.
//!
//! A fourth test does the same on empty members of every version (spec §7 fixture (a)).
//!
//! Failure cases: etcd's own corrupted fixture (bbolt integrity errors) and a snapshot with one
//! trailer byte flipped (which etcdutl accepts but we must reject) both exit 4.

mod common;

use std::path::Path;
use std::process::Output;

use common::*;

/// The expected stdout for every output mode, from the oracles, cross-checked.
struct Expected {
    simple: String,
    json: String,
    unicode_table: String,
    ascii_table: String,
}

/// Map etcdutl 3.5.30's box drawing to the `+-|` style of etcdutl 3.5.1 / etcdctl 3.4.
fn unicode_to_ascii(table: &str) -> String {
    table
        .chars()
        .map(|c| match c {
            '┌' | '┬' | '┐' | '├' | '┼' | '┤' | '└' | '┴' | '┘' => '+',
            '─' => '-',
            '│' => '|',
            other => other,
        })
        .collect()
}

fn oracles(file: &Path) -> Expected {
    let [v34, v351, v3530] = [Version::V3_4_23, Version::V3_5_1, Version::V3_5_30];
    let simple = oracle_status(v3530, file, "simple");
    let json = oracle_status(v3530, file, "json");
    let unicode_table = oracle_status(v3530, file, "table");
    let ascii_table = oracle_status(v351, file, "table");
    for v in [v34, v351] {
        assert_eq!(
            oracle_status(v, file, "simple"),
            simple,
            "harness: {v} and 3.5.30 disagree on simple status of {}",
            file.display()
        );
        assert_eq!(
            oracle_status(v, file, "json"),
            json,
            "harness: {v} and 3.5.30 disagree on json status of {}",
            file.display()
        );
    }
    assert_eq!(
        oracle_status(v34, file, "table"),
        ascii_table,
        "harness: etcdctl 3.4.23 and etcdutl 3.5.1 draw different ASCII tables"
    );
    assert!(
        unicode_table.contains('│') && ascii_table.contains('|'),
        "harness: table styles not as the spec says:\n{unicode_table}\n{ascii_table}"
    );
    assert_eq!(
        unicode_to_ascii(&unicode_table),
        ascii_table,
        "harness: the Unicode and ASCII tables differ beyond the drawing characters"
    );
    Expected {
        simple,
        json,
        unicode_table,
        ascii_table,
    }
}

/// The json status as numbers, for checking the sample.
#[derive(serde::Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
struct StatusJson {
    hash: u32,
    revision: i64,
    total_key: u64,
    total_size: u64,
}

fn ours(file: &Path, args: &[&str]) -> Output {
    lifeboat()
        .arg("status")
        .arg(file)
        .args(args)
        .output()
        .expect("run etcd-lifeboat")
}

/// Compare our `status` in every mode with the oracles; returns the mismatches, described.
fn compare(label: &str, file: &Path, want: &Expected) -> Vec<String> {
    let cases: [(&[&str], &str); 5] = [
        (&[], &want.simple),
        (&["-w", "simple"], &want.simple),
        (&["-w", "json"], &want.json),
        (&["-w", "table"], &want.unicode_table),
        (&["-w", "table", "--ascii"], &want.ascii_table),
    ];
    let mut problems = Vec::new();
    for (args, expected) in cases {
        let out = ours(file, args);
        if !out.status.success() || out.stdout != expected.as_bytes() {
            problems.push(format!(
                "{label}: `status {} {}` differs from the oracle.\n--- expected stdout ---\n{expected}\n--- ours: {}",
                file.display(),
                args.join(" "),
                describe(&out)
            ));
        }
    }
    problems
}

/// A `server` member with the standard sample written (auth on): its saved snapshot and raw db.
/// Also checks that the files have the structure the sample promises.
fn sample_snapshots(server: Version, work: &Path) -> (std::path::PathBuf, std::path::PathBuf, i64) {
    let tls = Tls::temp();
    let mut etcd = Etcd::start(server, &tls, EtcdOpts::default());
    let populated = runtime().block_on(async {
        let client = etcd.client().await;
        populate(&client, &Sample::standard()).await
    });
    let saved = work.join("saved.db");
    // Auth is on now: this also proves `snapshot save` is allowed for the client cert CN=root.
    save_snapshot(&etcd, &saved);
    let raw = work.join("raw.db");
    copy_raw_db(&mut etcd, &raw);
    assert_eq!(
        std::fs::metadata(&raw).unwrap().len() % 512,
        0,
        "harness: member/snap/db should have no trailer"
    );

    // The sample has every structure the spec's fixture (b) asks for.
    let shape = bolt_shape(&saved);
    assert!(
        matches!(
            shape.get("key"),
            Some(BucketShape::Pages {
                branch_pages: 1..,
                overflowing_pages: 1..,
                keys: 10_000..,
                ..
            })
        ),
        "harness: bucket `key` lacks branch or overflow pages: {shape:?}"
    );
    assert!(
        matches!(shape.get("lease"), Some(BucketShape::Pages { .. }))
            && matches!(
                shape.get("authUsers"),
                Some(BucketShape::Inline { keys: 2.. })
            ),
        "harness: want a non-inline `lease` and an inline `authUsers` bucket: {shape:?}"
    );
    (saved, raw, populated.revision)
}

/// The whole oracle comparison for snapshots taken from a `server` member.
fn status_matches_oracles(server: Version) {
    let work = tempfile::tempdir().expect("tempdir");
    let (saved, raw, revision) = sample_snapshots(server, work.path());
    let mut problems = Vec::new();
    for (label, file) in [("saved snapshot", &saved), ("raw member/snap/db", &raw)] {
        let want = oracles(file);
        let s: StatusJson = serde_json::from_str(&want.json).expect("oracle json");
        assert_eq!(
            s.revision, revision,
            "harness: {label} from {server} has revision {} but the sample ended at {revision}",
            s.revision
        );
        assert!(
            s.total_key > 10_000 && s.total_size > 1_000_000 && s.hash != 0,
            "harness: {label} from {server} is smaller than the standard sample: {s:?}"
        );
        problems.extend(compare(&format!("{server} {label}"), file, &want));
    }
    assert!(
        problems.is_empty(),
        "{} mismatch(es):\n\n{}",
        problems.len(),
        problems.join("\n\n")
    );
}

/// Spec §7 fixture (a): a member nobody wrote to (empty `key` bucket: revision 0), every version.
#[test]
fn status_matches_oracles_on_empty_members() {
    let work = tempfile::tempdir().expect("tempdir");
    let tls = Tls::temp();
    let mut problems = Vec::new();
    for server in Version::all() {
        let mut etcd = Etcd::start(server, &tls, EtcdOpts::default());
        let saved = work.path().join(format!("empty-{server}.db"));
        save_snapshot(&etcd, &saved);
        let raw = work.path().join(format!("empty-raw-{server}.db"));
        copy_raw_db(&mut etcd, &raw);
        for (label, file) in [("saved", &saved), ("raw", &raw)] {
            let want = oracles(file);
            let s: StatusJson = serde_json::from_str(&want.json).expect("oracle json");
            assert_eq!(s.revision, 0, "harness: {label} empty {server}: {s:?}");
            problems.extend(compare(&format!("empty {server} {label}"), file, &want));
        }
    }
    assert!(
        problems.is_empty(),
        "{} mismatch(es):\n\n{}",
        problems.len(),
        problems.join("\n\n")
    );
}

#[test]
fn status_matches_oracles_on_3_4_23_snapshots() {
    status_matches_oracles(Version::V3_4_23);
}

#[test]
fn status_matches_oracles_on_3_5_1_snapshots() {
    status_matches_oracles(Version::V3_5_1);
}

#[test]
fn status_matches_oracles_on_3_5_30_snapshots() {
    status_matches_oracles(Version::V3_5_30);
}

#[test]
fn corrupted_fixture_fails_with_bbolt_errors() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/corrupted_backup.db");
    let wanted = ["page 3: already freed", "page 4: unreachable unfreed"];

    // The oracle fails on it the same way (so the fixture is what the spec says it is).
    let oracle = Version::V3_5_30
        .snapshot_tool()
        .args(["snapshot", "status"])
        .arg(&fixture)
        .output()
        .expect("run etcdutl");
    let oracle_err = String::from_utf8_lossy(&oracle.stderr);
    assert!(
        !oracle.status.success() && wanted.iter().all(|w| oracle_err.contains(w)),
        "harness: etcdutl 3.5.30 does not report the expected errors: {}",
        describe(&oracle)
    );

    let out = ours(&fixture, &["-w", "json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
    for w in wanted {
        assert!(stderr.contains(w), "stderr lacks {w:?}: {}", describe(&out));
    }
    assert!(
        out.stdout.is_empty(),
        "no status may be printed for a corrupt file: {}",
        describe(&out)
    );
}

#[test]
fn flipped_trailer_byte_exits_4() {
    let work = tempfile::tempdir().expect("tempdir");
    let tls = Tls::temp();
    let mut etcd = Etcd::start(Version::V3_5_30, &tls, EtcdOpts::default());
    runtime().block_on(async {
        let client = etcd.client().await;
        populate(&client, &Sample::tiny()).await
    });
    let file = work.path().join("saved.db");
    save_snapshot(&etcd, &file);
    etcd.stop();
    let before = oracle_status(Version::V3_5_30, &file, "json");

    flip_byte_from_end(&file, 1);
    // etcdutl does not look at the trailer at all (spec §2.1): same answer, success.
    assert_eq!(
        oracle_status(Version::V3_5_30, &file, "json"),
        before,
        "harness: etcdutl status changed after flipping a trailer byte"
    );

    let out = ours(&file, &["-w", "json"]);
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("sha256"),
        "stderr should say the sha256 trailer is wrong: {}",
        describe(&out)
    );
}

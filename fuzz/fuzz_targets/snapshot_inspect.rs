//! Fuzz target: arbitrary bytes through the snapshot engine — the sequential scan (`inspect_bytes`:
//! meta, summaries, `tx.Check()`, status) and the pread cursor restore uses. Must never panic.
//!
//! Run: `cd fuzz && cargo +nightly fuzz run snapshot_inspect -- -max_len=65536`
//! (seed the corpus with `tests/fixtures/*.db`).
#![no_main]

use etcd_lifeboat::snapshot::bolt::BoltFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(report) = etcd_lifeboat::snapshot::inspect_bytes(data) {
        let _ = report.verdict();
    }
    if let Ok(db) = BoltFile::from_reader(data, data.len() as u64, "fuzz") {
        if let Ok(buckets) = db.buckets() {
            for b in &buckets {
                let _ = db.for_each_in(b, |_, _, _| Ok(()));
            }
        }
    }
});

//! The snapshot file: pure code that reads, checks and (for restore) writes bbolt databases.
//!
//! `inspect` is the one entry point the commands use: it reads a snapshot file once, sequentially,
//! and returns everything there is to know about it — the `etcdutl snapshot status` numbers, the
//! sha256 trailer verdict, and the bbolt integrity errors (bbolt `tx.Check()` wording).
//!
//! - `bolt.rs`    bbolt format primitives (meta, page header, elements, freelist)
//! - `cursor.rs`  `BoltFile`: a pread reader walking buckets in key order (restore streams with it)
//! - `summary.rs` compact per-node summaries made while the file streams past
//! - `mvcc.rs`    etcd's meaning of revision keys, `KeyValue` values and `storageVersion`
//! - `scan.rs`    the single sequential pass: sha256 on one thread, page summaries on the other,
//!   and the trailer rule (spec §1.4)
//! - `check.rs`   `tx.Check()` over the page summaries (spec §5.4)
//! - `crc.rs`     CRC-32C combination in O(log n), for the status hash
//! - `status.rs`  hash / revision / totalKey / totalSize (spec §2) and the etcdutl printers
//! - `write.rs`  the compacting bbolt writer used by restore (spec §5.5)

pub mod bolt;
pub mod check;
pub mod crc;
pub mod cursor;
pub mod mvcc;
pub mod scan;
pub mod status;
pub mod summary;
pub mod write;

use std::path::Path;

pub use status::Status;

/// Errors that stop a snapshot from being read at all. Integrity problems that bbolt's own
/// `tx.Check()` would report are not errors here: they are collected in `Report::integrity_errors`.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a readable bbolt database; the message says what and where,
    /// e.g. `page 12: id 7 does not match its position`.
    #[error("{0}")]
    Format(String),
}

/// What the last 32 bytes of the file say (spec §1.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trailer {
    /// `size % 512 == 32` and the trailer equals sha256 of the database bytes.
    Verified,
    /// No trailer (`size % 512 != 32`): legitimate for a raw `member/snap/db`.
    Absent,
    /// A trailer is present and does not match.
    Mismatch {
        stored: [u8; 32],
        computed: [u8; 32],
    },
}

#[derive(Debug, Clone)]
pub struct Report {
    /// The `snapshot status` numbers; only `total_size` is filled when `integrity_errors` is not
    /// empty (etcdutl computes nothing either).
    pub status: Status,
    pub trailer: Trailer,
    /// bbolt `tx.Check()` errors in etcd's wording, e.g. `page 3: already freed`. Empty = sound.
    pub integrity_errors: Vec<String>,
    /// sha256 of the database bytes (the file without its trailer).
    pub db_sha256: [u8; 32],
    /// sha256 of the whole file as stored (with the trailer when present).
    pub file_sha256: [u8; 32],
    pub file_len: u64,
    /// Length of the database part: `file_len - 32` with a trailer, else `file_len`.
    pub db_len: u64,
    pub page_size: u32,
    /// Why `etcdutl` 3.6 would fail on this file where 3.5 does not (a `key` bucket entry that is
    /// not a revision key with a `KeyValue` value); only matters for `--compat 3.6`.
    pub v36_problem: Option<String>,
}

impl Report {
    /// `Ok` when the integrity check passed and the trailer, if any, matched.
    /// The error text is what `status` prints and what backup/restore refuse with.
    pub fn verdict(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if let Trailer::Mismatch { stored, computed } = &self.trailer {
            problems.push(format!(
                "sha256 trailer mismatch: the file says {} but the database hashes to {}",
                hex::encode(stored),
                hex::encode(computed)
            ));
        }
        if !self.integrity_errors.is_empty() {
            problems.push(format!(
                "snapshot file integrity check failed. {} errors found.\n{}",
                self.integrity_errors.len(),
                self.integrity_errors.join("\n")
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }
}

/// Read `path` once and report on it. Never panics on hostile input; a file that cannot be read as
/// bbolt at all is a `SnapshotError::Format`.
pub fn inspect(path: &Path) -> Result<Report, SnapshotError> {
    scan::inspect_file(path)
}

/// [`inspect`] over a snapshot held in memory (tests, fuzzing).
pub fn inspect_bytes(bytes: &[u8]) -> Result<Report, SnapshotError> {
    scan::inspect_bytes(bytes)
}

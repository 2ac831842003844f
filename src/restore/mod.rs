//! Native `etcdutl snapshot restore`: the pure formats a restored data dir is made of.
//!
//! - `cluster.rs`  the flags → member/cluster IDs, etcd's `VerifyBootstrap` checks, member JSON
//! - `wal.rs`      the WAL segment (records + CRC chain; 64,000,000 bytes on disk)
//! - `snapfile.rs` the `.snap` file with the v2-store membership JSON
//! - `diff.rs`     what restore changes in the snapshot's buckets (spec §3.4), streamed per bucket
//! - `proto.rs`    the few protobuf encoders those need
//!
//! The database (`member/snap/db`) is written by `crate::snapshot::write` (the compacting bbolt
//! writer), fed with the source buckets passed through `diff`. None of these files does I/O: they
//! return bytes or write to an `impl Write`; the orchestrator owns directories, modes, fsync and
//! renames.

pub mod cluster;
pub mod diff;
pub mod proto;
pub mod snapfile;
pub mod wal;

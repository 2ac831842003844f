//! Native `etcdutl snapshot restore`: rebuild an etcd member's data dir from a snapshot (spec §3).
//!
//! Pure formats (no I/O: they return bytes or write to an `impl Write`):
//! - `cluster.rs`  the flags → member/cluster IDs, etcd's `VerifyBootstrap` checks, member JSON
//! - `wal.rs`      the WAL segment (records + CRC chain; 64,000,000 bytes on disk)
//! - `snapfile.rs` the `.snap` file with the v2-store membership JSON
//! - `diff.rs`     what restore changes in the snapshot's buckets (spec §3.4), streamed per bucket
//! - `proto.rs`    the few protobuf encoders those need
//!
//! The database (`member/snap/db`) is written by `crate::snapshot::write` (the compacting bbolt
//! writer), fed with the source buckets passed through `diff`.
//!
//! Orchestration (I/O):
//! - `job.rs`      configuration, source, plan, then execute (`etcd-lifeboat restore`)
//! - `install.rs`  staging inside the data dir, moving the old member aside, the swap, the marker

pub mod build;
pub mod cluster;
pub mod diff;
pub mod install;
pub mod job;
pub mod proto;
pub mod snapfile;
pub mod wal;

//! etcd-lifeboat: etcd backup and restore for Kubernetes control planes.
//!
//! A walk through the two pipelines (details in `../shared/DESIGN.md`):
//!
//! **backup** (`backup.rs`): `etcd.rs` preflights the members and opens the `Maintenance.Snapshot`
//! stream → `spool.rs` writes it to a private `.part` file, hashing as it goes → `snapshot::inspect`
//! proves it sound (trailer, bbolt integrity, status) → zstd → `store` puts the object → the
//! manifest (`manifest.rs`) is written last, as the commit marker → `retention.rs` plans what to prune.
//!
//! **restore** (`restore/`): fetch + verify exactly as above → plan (member and cluster IDs from
//! `restore/cluster.rs`) → build `db` (`snapshot/write.rs`), WAL (`restore/wal.rs`) and `.snap`
//! (`restore/snapfile.rs`) in a staging dir → fsync → move the old dir aside → rename into place.
//!
//! After backup, restore and verify, `notify.rs` tells a Pushgateway and/or a webhook how the run
//! went (never changing its outcome).
//!
//! `main.rs` only parses the command, sets up logging, calls `run::run` and maps errors to exit codes.

pub mod backup;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod error;
pub mod etcd;
pub mod fsutil;
pub mod lock;
pub mod logging;
pub mod manifest;
pub mod notify;
pub mod restore;
pub mod retention;
pub mod run;
pub mod shutdown;
pub mod snapshot;
pub mod spool;
pub mod store;
pub mod testhook;

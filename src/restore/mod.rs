//! Rebuild an etcd member's data dir from a snapshot, natively (spec §3).
pub mod install;
pub mod job;

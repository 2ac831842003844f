//! Test-only pause points, for fault-injection tests that must hit a precise moment (e.g. restart
//! etcd between the backup's preflight and its snapshot, or signal a restore in the middle of its
//! swap). They exist **only in debug builds** (`cfg(debug_assertions)`): in a release build
//! [`pause`] and [`pause_async`] are empty and the variables are never read. They are not part of
//! the configuration (`--help` does not list them) and are documented in `docs/RELIABILITY.md`.
//!
//! Protocol: with `<VAR>=<gate>` set, reaching the point creates the file `<gate>.paused`, then
//! waits until the file `<gate>` exists (the test creates it to release the run), at most
//! [`MAX_PAUSE`]. Used variables:
//!
//! - `LIFEBOAT_TEST_PAUSE_AFTER_PREFLIGHT`: backup, after the preflight, before the snapshot stream.
//! - `LIFEBOAT_TEST_PAUSE_IN_SWAP`: restore, after the old member (and WAL dir) were moved aside,
//!   before the new ones are moved in.

use std::time::Duration;

/// The longest a pause point waits for its gate.
pub const MAX_PAUSE: Duration = Duration::from_secs(120);

#[cfg(debug_assertions)]
fn gate(var: &str) -> Option<std::path::PathBuf> {
    let g = std::env::var_os(var).filter(|v| !v.is_empty())?;
    let gate = std::path::PathBuf::from(g);
    let mut paused = gate.clone().into_os_string();
    paused.push(".paused");
    tracing::warn!(hook = var, gate = %gate.display(), "test pause point reached (debug build)");
    let _ = std::fs::write(paused, b"");
    Some(gate)
}

/// Blocking pause point (see the module docs). A no-op in release builds.
pub fn pause(var: &str) {
    #[cfg(debug_assertions)]
    if let Some(gate) = gate(var) {
        let start = std::time::Instant::now();
        while !gate.exists() && start.elapsed() < MAX_PAUSE {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = var;
}

/// Async pause point (see the module docs). A no-op in release builds.
pub async fn pause_async(var: &str) {
    #[cfg(debug_assertions)]
    if let Some(gate) = gate(var) {
        let start = std::time::Instant::now();
        while !gate.exists() && start.elapsed() < MAX_PAUSE {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = var;
}

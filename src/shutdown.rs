//! SIGTERM (Job deadline, node drain) and SIGINT (Ctrl-C) as a future. Commands race their work
//! against it; dropping the work future runs every cleanup guard (spool, temp objects, staging).

use crate::error::Signal;

/// Resolves when SIGTERM or SIGINT arrives. If the handlers cannot be installed, never resolves
/// (the default signal disposition then still terminates the process).
pub async fn signal() -> Signal {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => Signal::Term,
        _ = int.recv() => Signal::Int,
    }
}

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

/// Cleanups that must outlive the future that started them: a dropped (cancelled) upload cannot
/// `await` its own abort, so its guard hands the abort to [`spawn_cleanup`]; the command runner
/// awaits them all with [`finish_cleanups`] before the runtime shuts down (which would otherwise
/// drop them half-way).
static CLEANUPS: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>> =
    std::sync::Mutex::new(Vec::new());

/// Run `fut` in the background and remember it for [`finish_cleanups`]. Outside a Tokio runtime
/// nothing can run it: `what` is logged instead.
pub fn spawn_cleanup(what: &str, fut: impl std::future::Future<Output = ()> + Send + 'static) {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            let handle = rt.spawn(fut);
            if let Ok(mut v) = CLEANUPS.lock() {
                v.retain(|h| !h.is_finished());
                v.push(handle);
            }
        }
        Err(_) => tracing::warn!("cannot clean up ({what}): no async runtime is running"),
    }
}

/// Wait (at most `limit`) for every cleanup spawned so far.
pub async fn finish_cleanups(limit: std::time::Duration) {
    let pending: Vec<_> = match CLEANUPS.lock() {
        Ok(mut v) => v.drain(..).collect(),
        Err(_) => return,
    };
    if pending.is_empty() {
        return;
    }
    let all = async {
        for h in pending {
            let _ = h.await;
        }
    };
    if tokio::time::timeout(limit, all).await.is_err() {
        tracing::warn!("gave up waiting for cleanups after {limit:?}");
    }
}

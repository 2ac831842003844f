//! The error type every command returns, and the exit codes `main` maps it to.
//!
//! One variant per stage, so an operator (or a CronJob's `podFailurePolicy`) can tell from the exit
//! code alone where a run failed. Messages say what went wrong *and* what to do next; `main` prints
//! the whole `source()` chain. The exit codes are part of the public interface (README "Exit codes").

use std::fmt;

/// Exit codes. Keep in sync with the README table.
pub mod exit {
    pub const OK: i32 = 0;
    /// Unexpected internal failure (a bug): please report.
    pub const INTERNAL: i32 = 1;
    /// Bad command line or configuration; nothing was done.
    pub const USAGE: i32 = 2;
    /// etcd unreachable, TLS/auth failure, unhealthy member, alarm raised, stream broken.
    pub const ETCD: i32 = 3;
    /// The snapshot failed verification (trailer, bbolt integrity, status mismatch).
    pub const VERIFY: i32 = 4;
    /// The backup store failed (upload, download, list, delete, manifest).
    pub const STORE: i32 = 5;
    /// Restore could not build or install the data dir; existing data untouched.
    pub const RESTORE: i32 = 6;
    /// Local I/O: spool dir, disk full, permissions.
    pub const IO: i32 = 7;
    /// Another run holds the lock.
    pub const LOCKED: i32 = 8;
    /// The command is not built yet.
    pub const NOT_IMPLEMENTED: i32 = 9;
    /// Interrupted by SIGINT / SIGTERM (128 + signal number), as shells report it.
    pub const SIGINT: i32 = 130;
    pub const SIGTERM: i32 = 143;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error("etcd: {0}")]
    Etcd(String),
    #[error("snapshot verification failed: {0}")]
    Verify(String),
    #[error("store: {0}")]
    Store(String),
    #[error("restore: {0}")]
    Restore(String),
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("another etcd-lifeboat run holds {0}; wait for it to finish (or remove the lock file if no run is active)")]
    Locked(String),
    #[error("interrupted by {0}; partial files were removed")]
    Interrupted(Signal),
    #[error("`{0}` is not built yet in this version of etcd-lifeboat")]
    NotImplemented(&'static str),
    #[error("internal error (please report): {0}")]
    Internal(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Int,
    Term,
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Signal::Int => "SIGINT",
            Signal::Term => "SIGTERM",
        })
    }
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) | Error::Config(_) => exit::USAGE,
            Error::Etcd(_) => exit::ETCD,
            Error::Verify(_) => exit::VERIFY,
            Error::Store(_) => exit::STORE,
            Error::Restore(_) => exit::RESTORE,
            Error::Io { .. } => exit::IO,
            Error::Locked(_) => exit::LOCKED,
            Error::NotImplemented(_) => exit::NOT_IMPLEMENTED,
            Error::Internal(_) => exit::INTERNAL,
            Error::Interrupted(Signal::Int) => exit::SIGINT,
            Error::Interrupted(Signal::Term) => exit::SIGTERM,
        }
    }

    /// Wrap an I/O error with what we were doing, e.g. `Error::io("creating spool file /x.part", e)`.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Render an error and its whole `source()` chain on one line: `a: b: c`.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.ends_with(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_distinct_per_stage() {
        let errs = [
            Error::Usage("x".into()),
            Error::Etcd("x".into()),
            Error::Verify("x".into()),
            Error::Store("x".into()),
            Error::Restore("x".into()),
            Error::io("x", std::io::Error::other("y")),
            Error::Locked("x".into()),
            Error::NotImplemented("x"),
            Error::Internal("x".into()),
            Error::Interrupted(Signal::Int),
            Error::Interrupted(Signal::Term),
        ];
        let mut codes: Vec<i32> = errs.iter().map(Error::exit_code).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), errs.len());
        assert_eq!(Error::Interrupted(Signal::Term).exit_code(), 143);
    }

    #[test]
    fn chain_joins_sources() {
        let e = Error::io("reading /x", std::io::Error::other("disk on fire"));
        assert_eq!(chain(&e), "reading /x: disk on fire");
    }
}

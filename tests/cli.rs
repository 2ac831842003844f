//! The command-line contract of the built binary: help texts, `version`, exit codes for usage and
//! configuration errors, and the "not built yet" answer of commands still to come.
//!
//! These run the real executable (no etcd needed), so they also catch wiring mistakes between
//! `main.rs`, `cli.rs` and `config.rs` that unit tests cannot see.

mod common;

use common::{describe, lifeboat};
use etcd_lifeboat::config::{Cmd, VARS};

/// Every command with its name on the command line.
const COMMANDS: [(&str, Cmd); 6] = [
    ("backup", Cmd::Backup),
    ("restore", Cmd::Restore),
    ("status", Cmd::Status),
    ("list", Cmd::List),
    ("verify", Cmd::Verify),
    ("prune", Cmd::Prune),
];

fn run(args: &[&str]) -> std::process::Output {
    lifeboat().args(args).output().expect("run etcd-lifeboat")
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn top_level_help_lists_every_command() {
    for args in [&[][..], &["--help"], &["-h"], &["help"]] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", describe(&out));
        let text = stdout(&out);
        for (name, _) in COMMANDS {
            assert!(
                text.contains(&format!("\n  {name} ")),
                "{args:?} does not list `{name}`: {text}"
            );
        }
        assert!(text.contains("version"), "{text}");
    }
}

#[test]
fn each_command_help_lists_its_variables() {
    for (name, cmd) in COMMANDS {
        let out = run(&[name, "--help"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{name} --help: {}",
            describe(&out)
        );
        let text = stdout(&out);
        assert!(
            text.starts_with(&format!("Usage: etcd-lifeboat {name}")),
            "{name} --help: {text}"
        );
        for var in VARS {
            // A line that starts with the variable's name (LIFEBOAT_LOG is a prefix of
            // LIFEBOAT_LOG_FORMAT, so a substring test would not do).
            let listed = text
                .lines()
                .any(|l| l.split_whitespace().next() == Some(var.name));
            let belongs = var.commands.contains(&cmd);
            assert_eq!(
                listed,
                belongs,
                "{name} --help {} {} but the variable table says it {} to {name}:\n{text}",
                if listed { "lists" } else { "omits" },
                var.name,
                if belongs {
                    "belongs"
                } else {
                    "does not belong"
                }
            );
            if listed && !var.default.is_empty() {
                assert!(
                    text.contains(&format!("default: {}", var.default)),
                    "{name} --help lacks the default of {}:\n{text}",
                    var.name
                );
            }
        }
        // `-h` is the same as `--help`, and works after other arguments too.
        assert_eq!(run(&[name, "-h"]).stdout, out.stdout, "{name} -h");
    }
    // Spot checks that do not depend on the table above.
    let backup = stdout(&run(&["backup", "--help"]));
    for v in [
        "LIFEBOAT_ETCD_ENDPOINTS",
        "LIFEBOAT_ETCD_CACERT",
        "LIFEBOAT_STORE",
        "LIFEBOAT_LOG_FORMAT",
    ] {
        assert!(backup.contains(v), "backup --help lacks {v}");
    }
    let status = stdout(&run(&["status", "--help"]));
    assert!(status.contains("LIFEBOAT_STATUS_COMPAT") && status.contains("--ascii"));
    assert!(!status.contains("LIFEBOAT_ETCD_ENDPOINTS"), "{status}");
}

#[test]
fn version_prints_the_crate_version() {
    let want = format!("etcd-lifeboat {}\n", env!("CARGO_PKG_VERSION"));
    for arg in ["version", "--version", "-V"] {
        let out = run(&[arg]);
        assert_eq!(out.status.code(), Some(0), "{arg}: {}", describe(&out));
        assert_eq!(stdout(&out), want, "{arg}");
    }
}

#[test]
fn usage_errors_exit_2_and_say_what_is_wrong() {
    let cases: &[(&[&str], &str)] = &[
        (&["frobnicate"], "unknown command"),
        (&["status"], "needs a snapshot file"),
        (&["status", "a.db", "b.db"], "at most 1"),
        (&["status", "a.db", "-w", "yaml"], "simple, table or json"),
        (&["status", "a.db", "-w"], "needs a value"),
        (&["status", "a.db", "--compat", "3.7"], "3.5 or 3.6"),
        (&["backup", "--force"], "unknown flag"),
        (&["list", "extra"], "at most 0"),
    ];
    for (args, needle) in cases {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", describe(&out));
        assert!(
            stderr(&out).contains(needle),
            "{args:?}: stderr should contain {needle:?}: {}",
            describe(&out)
        );
        assert!(out.stdout.is_empty(), "{args:?}: {}", describe(&out));
    }
}

#[test]
fn bad_log_format_exits_2_naming_the_variable() {
    for cmd in [&["status", "x.db"][..], &["backup"], &["prune"]] {
        let out = lifeboat()
            .args(cmd)
            .env("LIFEBOAT_LOG_FORMAT", "xml")
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(2), "{cmd:?}: {}", describe(&out));
        let err = stderr(&out);
        assert!(
            err.contains("LIFEBOAT_LOG_FORMAT") && err.contains("xml"),
            "{cmd:?}: {}",
            describe(&out)
        );
    }
}

#[test]
fn status_compat_variable_is_validated() {
    let out = lifeboat()
        .args(["status", "x.db"])
        .env("LIFEBOAT_STATUS_COMPAT", "4.0")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out).contains("LIFEBOAT_STATUS_COMPAT"),
        "{}",
        describe(&out)
    );
}

/// Every command validates its configuration before doing anything: missing or malformed settings
/// exit 2 with a message naming the variable, and nothing is touched.
#[test]
fn commands_refuse_bad_configuration_before_acting() {
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (
            &["restore"],
            &[("LIFEBOAT_DATA_DIR", "/tmp/x")],
            "LIFEBOAT_RESTORE_SOURCE",
        ),
        (
            &["restore"],
            &[("LIFEBOAT_RESTORE_SOURCE", "latest")],
            "LIFEBOAT_DATA_DIR",
        ),
        (
            &["restore"],
            &[
                ("LIFEBOAT_RESTORE_SOURCE", "latest"),
                ("LIFEBOAT_DATA_DIR", "rel/dir"),
            ],
            "LIFEBOAT_DATA_DIR",
        ),
        (
            &["backup"],
            &[("LIFEBOAT_SPOOL_DIR", "/nonexistent/spool")],
            "LIFEBOAT_SPOOL_DIR",
        ),
        (
            &["backup"],
            &[("LIFEBOAT_STORE", "ftp://x/y")],
            "LIFEBOAT_STORE",
        ),
        (
            &["backup"],
            &[("LIFEBOAT_COMPRESSION", "lz4")],
            "LIFEBOAT_COMPRESSION",
        ),
        (
            &["backup"],
            &[
                ("LIFEBOAT_ETCD_ENDPOINTS", "http://127.0.0.1:1"),
                ("LIFEBOAT_ETCD_DIAL_TIMEOUT", "soon"),
            ],
            "LIFEBOAT_ETCD_DIAL_TIMEOUT",
        ),
        (
            &["list"],
            &[("LIFEBOAT_CLUSTER_NAME", "../etc")],
            "LIFEBOAT_CLUSTER_NAME",
        ),
        (
            &["prune"],
            &[("LIFEBOAT_KEEP_LAST", "many")],
            "LIFEBOAT_KEEP_LAST",
        ),
        (
            &["verify", "latest"],
            &[("LIFEBOAT_STORE", "s3://NOT_A_BUCKET")],
            "LIFEBOAT_STORE",
        ),
    ];
    for (args, env, var) in cases {
        let out = lifeboat()
            .args(*args)
            .envs(env.iter().copied())
            .output()
            .expect("run etcd-lifeboat");
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?} {env:?}: {}",
            describe(&out)
        );
        assert!(
            stderr(&out).contains(var),
            "{args:?} {env:?} should name {var}: {}",
            describe(&out)
        );
    }
}

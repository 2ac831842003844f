//! The command line: `etcd-lifeboat <command> [FILE|ID] [-w simple|table|json] [--compat 3.5|3.6]`.
//!
//! Everything else comes from the environment (see `config.rs`). Parsing is hand-written: the
//! grammar is tiny, and it keeps the static binary small. `--help` on any command prints its
//! purpose and the variables it reads, generated from `config::VARS`.

use crate::config::{vars_help, Cmd};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WriteOut {
    #[default]
    Simple,
    Table,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Help(Option<Cmd>),
    Version,
    Status {
        file: String,
        write_out: WriteOut,
        compat: Option<String>,
        ascii: bool,
    },
    Backup,
    Restore,
    List {
        write_out: WriteOut,
    },
    Verify {
        id: Option<String>,
    },
    Fetch {
        id: String,
        dest: String,
    },
    Prune,
}

const USAGE: &str = "\
etcd-lifeboat: etcd backup and restore for Kubernetes control planes

Usage: etcd-lifeboat <command> [arguments]

Commands:
  backup    snapshot etcd, verify it, store it, write its manifest, apply retention
  restore   fetch a backup, verify it, and rebuild a member's data dir
  status    print `etcdutl snapshot status` of a snapshot file and verify it
  list      list complete backups in the store
  verify    download a stored backup and check it end to end (a restore drill)
  fetch     download a stored backup, verify it, write the snapshot file (for host-level restores)
  prune     apply the retention policy to the store
  version   print the version

Configuration is read from the environment; `etcd-lifeboat <command> --help` lists the variables.
";

fn command_help(cmd: Cmd) -> String {
    let (usage, what) = match cmd {
        Cmd::Backup => ("backup", "Snapshot etcd through its client endpoint, verify the snapshot (sha256 trailer,\nbbolt integrity, status), compress it, store it with a manifest, apply retention."),
        Cmd::Restore => ("restore", "Fetch a backup, verify it, and build a member data dir that stock etcd starts on,\nas `etcdutl snapshot restore` would. Existing data is moved aside, never deleted."),
        Cmd::Status => ("status FILE [-w simple|table|json] [--compat 3.5|3.6] [--ascii]", "Print the snapshot's hash, revision, total keys and total size exactly as\n`etcdutl snapshot status` does (table drawn like etcdutl 3.5.30; --ascii for the\n3.4/3.5.1 style). Also verifies the sha256 trailer and the bbolt integrity; the\nverdict goes to stderr. Exits non-zero when either check fails."),
        Cmd::List => ("list [-w table|json|simple]", "List the complete backups (those with a manifest) in the store."),
        Cmd::Verify => ("verify [ID|latest]", "Download a stored backup and check it: sha256 against the manifest, trailer,\nbbolt integrity, status equal to the manifest's."),
        Cmd::Prune => ("prune", "Apply the retention policy (LIFEBOAT_KEEP_*) to the store."),
        Cmd::Fetch => ("fetch ID|latest FILE", "Download a stored backup, verify it fully (as `verify` does), and write the snapshot\nto FILE exactly as `etcdctl snapshot save` writes it (database + sha256 trailer),\nfor host-level restores with `etcd-lifeboat restore` or `etcdutl snapshot restore`."),
    };
    format!(
        "Usage: etcd-lifeboat {usage}\n\n{what}\n\n{}",
        vars_help(cmd)
    )
}

pub fn help_text(cmd: Option<Cmd>) -> String {
    match cmd {
        None => USAGE.to_string(),
        Some(c) => command_help(c),
    }
}

fn parse_write_out(v: &str) -> Result<WriteOut> {
    match v {
        "simple" => Ok(WriteOut::Simple),
        "table" => Ok(WriteOut::Table),
        "json" => Ok(WriteOut::Json),
        _ => Err(Error::Usage(format!(
            "-w/--write-out: expected simple, table or json, got {v:?}"
        ))),
    }
}

/// Parse `argv[1..]`.
pub fn parse(args: &[String]) -> Result<Command> {
    let Some(name) = args.first() else {
        return Ok(Command::Help(None));
    };
    let cmd = match name.as_str() {
        "-h" | "--help" | "help" => return Ok(Command::Help(None)),
        "version" | "--version" | "-V" => return Ok(Command::Version),
        "backup" => Cmd::Backup,
        "restore" => Cmd::Restore,
        "status" => Cmd::Status,
        "list" => Cmd::List,
        "verify" => Cmd::Verify,
        "prune" => Cmd::Prune,
        "fetch" => Cmd::Fetch,
        other => {
            return Err(Error::Usage(format!(
                "unknown command {other:?}; run `etcd-lifeboat --help`"
            )))
        }
    };
    let mut positional = Vec::new();
    let mut write_out = None;
    let mut compat = None;
    let mut ascii = false;
    let mut it = args[1..].iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with('-') => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = |flag: &str| -> Result<String> {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| Error::Usage(format!("{flag} needs a value")))
        };
        match flag {
            "-h" | "--help" => return Ok(Command::Help(Some(cmd))),
            "-w" | "--write-out" => write_out = Some(parse_write_out(&value(flag)?)?),
            "--compat" if cmd == Cmd::Status => compat = Some(value(flag)?),
            "--ascii" if cmd == Cmd::Status => ascii = true,
            f if f.starts_with('-') && f.len() > 1 => {
                return Err(Error::Usage(format!(
                    "unknown flag {f:?} for `{name}`; see `etcd-lifeboat {name} --help`"
                )))
            }
            _ => positional.push(arg.clone()),
        }
    }
    let max_positional = match cmd {
        Cmd::Status | Cmd::Verify => 1,
        Cmd::Fetch => 2,
        _ => 0,
    };
    if positional.len() > max_positional {
        return Err(Error::Usage(format!(
            "`{name}` takes at most {max_positional} argument(s), got {positional:?}"
        )));
    }
    Ok(match cmd {
        Cmd::Status => {
            let file = positional.pop().ok_or_else(|| {
                Error::Usage("status needs a snapshot file: `etcd-lifeboat status FILE`".into())
            })?;
            Command::Status {
                file,
                write_out: write_out.unwrap_or_default(),
                compat,
                ascii,
            }
        }
        Cmd::Backup => Command::Backup,
        Cmd::Restore => Command::Restore,
        Cmd::List => Command::List {
            write_out: write_out.unwrap_or(WriteOut::Table),
        },
        Cmd::Verify => Command::Verify {
            id: positional.pop(),
        },
        Cmd::Prune => Command::Prune,
        Cmd::Fetch => match positional.as_slice() {
            [id, dest] => Command::Fetch { id: id.clone(), dest: dest.clone() },
            _ => return Err(Error::Usage("fetch needs a backup id (or `latest`) and a destination file: `etcd-lifeboat fetch latest /var/tmp/snapshot.db`".into())),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Command> {
        parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn status_forms() {
        let want = Command::Status {
            file: "f.db".into(),
            write_out: WriteOut::Json,
            compat: None,
            ascii: false,
        };
        assert_eq!(p(&["status", "f.db", "-w", "json"]).unwrap(), want);
        assert_eq!(p(&["status", "-w=json", "f.db"]).unwrap(), want);
        assert_eq!(p(&["status", "--write-out", "json", "f.db"]).unwrap(), want);
        assert!(
            matches!(p(&["status", "f.db", "--compat", "3.6"]).unwrap(), Command::Status { compat: Some(c), .. } if c == "3.6")
        );
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert!(p(&["status"])
            .unwrap_err()
            .to_string()
            .contains("needs a snapshot file"));
        assert!(p(&["status", "a", "b"])
            .unwrap_err()
            .to_string()
            .contains("at most 1"));
        assert!(p(&["status", "a", "-w", "yaml"])
            .unwrap_err()
            .to_string()
            .contains("simple, table or json"));
        assert!(p(&["status", "a", "-w"])
            .unwrap_err()
            .to_string()
            .contains("needs a value"));
        assert!(p(&["frobnicate"])
            .unwrap_err()
            .to_string()
            .contains("unknown command"));
        assert!(p(&["backup", "--force"])
            .unwrap_err()
            .to_string()
            .contains("unknown flag"));
    }

    #[test]
    fn help_everywhere() {
        assert_eq!(p(&[]).unwrap(), Command::Help(None));
        assert_eq!(
            p(&["backup", "--help"]).unwrap(),
            Command::Help(Some(Cmd::Backup))
        );
        assert!(help_text(Some(Cmd::Backup)).contains("LIFEBOAT_ETCD_ENDPOINTS"));
        assert!(help_text(None).contains("restore"));
    }
}

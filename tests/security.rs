//! Security properties, end to end against a real etcd 3.5.30 with mTLS:
//!
//! - no private-key material (PEM markers or any line of the client key file) in any output line of
//!   backup, list, verify, fetch, status and restore at `LIFEBOAT_LOG=debug`, text and JSON;
//! - a presigned-style URL's signature never appears in any output, whether it is given as
//!   `LIFEBOAT_STORE` or `LIFEBOAT_RESTORE_SOURCE`, and whatever fails (refused connection, HTTP 403,
//!   malformed source);
//! - everything the tool creates is private: files 0600, dirs 0700, even under umask 000 — the
//!   one exception is the restored `member/snap/*.snap`, 0644 as etcd itself writes it;
//! - TLS verification cannot be turned off: no variable does it, and the usual "insecure" variables
//!   of etcdctl and friends are ignored (a server whose certificate is not from the CA is refused).

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;

const SIG: &str = "SECRETSIGNATURE0123456789abcdef";

/// `cmd` with umask 000, so that a file created without an explicit mode would show up as
/// world-readable.
fn umask0(mut cmd: Command) -> Command {
    // SAFETY: umask is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0);
            Ok(())
        });
    }
    cmd
}

fn all_output(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The secrets that must never be printed: PEM markers and every base64 line of the key file.
fn key_needles(key: &Path) -> Vec<String> {
    let pem = std::fs::read_to_string(key).unwrap();
    let mut v: Vec<String> = pem
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .map(str::to_string)
        .collect();
    assert!(!v.is_empty(), "key file has no body?");
    v.push("PRIVATE KEY".into());
    v
}

fn assert_clean(what: &str, out: &Output, needles: &[String]) {
    let text = all_output(out);
    for n in needles {
        assert!(
            !text.contains(n.as_str()),
            "{what}: output contains secret {n:?}: {}",
            describe(out)
        );
    }
    // The raw key file lines might also show up split or escaped in JSON; the PEM body is base64,
    // which JSON does not escape, so a plain substring check is enough.
}

/// Mode bits of everything under `root` (root included): dirs must be 0700, files 0600, except
/// paths for which `exception` returns the expected mode.
fn assert_private_tree(root: &Path, exception: &dyn Fn(&Path) -> Option<u32>) -> usize {
    let mut n = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        let mode = meta.permissions().mode() & 0o7777;
        let want = exception(&p).unwrap_or(if meta.is_dir() { 0o700 } else { 0o600 });
        assert_eq!(mode, want, "{}: mode {mode:o}, want {want:o}", p.display());
        n += 1;
        if meta.is_dir() {
            for e in std::fs::read_dir(&p).unwrap().flatten() {
                stack.push(e.path());
            }
        }
    }
    n
}

/// A loopback HTTP server that answers every request with 403 and counts requests.
struct Forbidden {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl Forbidden {
    fn start() -> Forbidden {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(2)));
                let mut buf = [0u8; 8192];
                let _ = conn.read(&mut buf);
                let body = "<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>";
                let _ = write!(
                    conn,
                    "HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Forbidden { port, stop }
    }
}

impl Drop for Forbidden {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
    }
}

#[test]
fn no_secrets_in_output_and_private_files() {
    let tls = Tls::temp();
    let etcd = Etcd::start(Version::V3_5_30, &tls, EtcdOpts::default());
    runtime().block_on(async { populate(&etcd.client().await, &Sample::tiny()).await });
    let mut needles = key_needles(&tls.client.key);
    needles.push(SIG.into());
    let dir = tempfile::tempdir().unwrap();

    for format in ["text", "json"] {
        let work = dir.path().join(format);
        std::fs::create_dir_all(&work).unwrap();
        let store = work.join("store");
        let spool = work.join("spool");
        std::fs::create_dir_all(&spool).unwrap();
        std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(0o700)).unwrap();
        let store_url = format!("file://{}", store.display());
        let base = |sub: &str| {
            let mut c = lifeboat();
            c.arg(sub)
                .env("LIFEBOAT_LOG", "debug")
                .env("LIFEBOAT_LOG_FORMAT", format)
                .env("LIFEBOAT_STORE", &store_url)
                .env("LIFEBOAT_CLUSTER_NAME", "sec")
                .env("LIFEBOAT_SPOOL_DIR", &spool);
            umask0(c)
        };
        let with_etcd = |mut c: Command| {
            c.env("LIFEBOAT_ETCD_ENDPOINTS", etcd.client_url())
                .env("LIFEBOAT_ETCD_CACERT", &tls.ca)
                .env("LIFEBOAT_ETCD_CERT", &tls.client.cert)
                .env("LIFEBOAT_ETCD_KEY", &tls.client.key);
            c
        };

        // backup, twice (the second one also runs retention: keep 1 → prune).
        let out = with_etcd(base("backup")).output().unwrap();
        assert!(out.status.success(), "{format}: {}", describe(&out));
        assert_clean("backup", &out, &needles);
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(
            text.lines().count() > 3,
            "{format}: debug logging produced almost nothing: {}",
            describe(&out)
        );
        if format == "json" {
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                assert!(
                    serde_json::from_str::<serde_json::Value>(line).is_ok(),
                    "not a JSON log line: {line}"
                );
            }
        }
        let out = with_etcd(base("backup"))
            .env("LIFEBOAT_KEEP_LAST", "1")
            .output()
            .unwrap();
        assert!(out.status.success(), "{format}: {}", describe(&out));
        assert_clean("backup + prune", &out, &needles);
        // A backup whose key does not belong to the certificate: the error names the files, never
        // their contents.
        let out = with_etcd(base("backup"))
            .env("LIFEBOAT_ETCD_KEY", &tls.server.key)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
        let mut all_keys = needles.clone();
        all_keys.extend(key_needles(&tls.server.key));
        assert_clean("backup with mismatched key", &out, &all_keys);

        for args in [
            vec!["list"],
            vec!["list", "-w", "json"],
            vec!["verify", "latest"],
            vec!["prune"],
        ] {
            let mut c = base(args[0]);
            c.args(&args[1..]);
            let out = c.output().unwrap();
            assert!(out.status.success(), "{args:?}: {}", describe(&out));
            assert_clean(&format!("{args:?}"), &out, &needles);
        }
        let fetched = work.join("fetched.db");
        let out = base("fetch").arg("latest").arg(&fetched).output().unwrap();
        assert!(out.status.success(), "{}", describe(&out));
        assert_clean("fetch", &out, &needles);
        let out = umask0({
            let mut c = lifeboat();
            c.args(["status", "-w", "table"])
                .arg(&fetched)
                .env("LIFEBOAT_LOG", "debug")
                .env("LIFEBOAT_LOG_FORMAT", format);
            c
        })
        .output()
        .unwrap();
        assert!(out.status.success(), "{}", describe(&out));
        assert_clean("status", &out, &needles);

        // restore from the store into a data dir the tool creates.
        let data = work.join("data");
        let out = base("restore")
            .env("LIFEBOAT_RESTORE_SOURCE", "latest")
            .env("LIFEBOAT_DATA_DIR", &data)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", describe(&out));
        assert_clean("restore", &out, &needles);

        // Files and dirs: store, spool (lock files), fetched file, restored member.
        let none = |_: &Path| None;
        let n = assert_private_tree(&store, &none);
        assert!(n >= 4, "store tree too small: {n}");
        assert_private_tree(&spool, &none);
        assert_private_tree(&fetched, &none);
        let mut snaps = 0;
        let snap_exception = |p: &Path| {
            (p.extension().is_some_and(|e| e == "snap")
                && p.parent().is_some_and(|d| d.ends_with("member/snap")))
            .then_some(0o644)
        };
        let n = assert_private_tree(&data, &snap_exception);
        for e in std::fs::read_dir(data.join("member/snap"))
            .unwrap()
            .flatten()
        {
            if e.path().extension().is_some_and(|x| x == "snap") {
                snaps += 1;
            }
        }
        assert!(
            data.join("member/snap/db").is_file() && data.join("member/wal").is_dir(),
            "restore did not build db and wal"
        );
        assert_eq!(snaps, 1, "expected exactly one .snap file");
        assert!(n >= 6, "restored tree too small: {n}");
        // No key material in anything written to the store.
        for e in std::fs::read_dir(store.join("sec")).unwrap().flatten() {
            if !e.path().is_dir() {
                continue;
            }
            let m = std::fs::read_to_string(e.path().join("manifest.json")).unwrap();
            assert!(!m.contains("PRIVATE KEY") && !m.contains(SIG));
        }

        // Presigned-style URLs with a signature, as store and as restore source, against a server
        // that refuses (403) and against a port nobody listens on.
        let forbidden = Forbidden::start();
        let closed = alloc_port();
        for port in [forbidden.port, closed] {
            let url = format!(
                "http://127.0.0.1:{port}/bucket/sec/snapshot.db?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAEXAMPLE%2F20261122%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Expires=300&X-Amz-SignedHeaders=host&X-Amz-Signature={SIG}"
            );
            let https = url.replacen("http://", "https://", 1);
            let mut runs: Vec<(String, Command)> = Vec::new();
            for u in [&url, &https] {
                for sub in ["backup", "list", "verify", "prune", "fetch"] {
                    let mut c = if sub == "backup" {
                        with_etcd(base(sub))
                    } else {
                        base(sub)
                    };
                    c.env("LIFEBOAT_STORE", u);
                    if sub == "verify" {
                        c.arg("latest");
                    }
                    if sub == "fetch" {
                        c.arg("latest").arg(work.join("never.db"));
                    }
                    runs.push((format!("{sub} with LIFEBOAT_STORE={u}"), c));
                }
                let mut c = base("restore");
                c.env("LIFEBOAT_RESTORE_SOURCE", u)
                    .env("LIFEBOAT_DATA_DIR", work.join("data2"));
                runs.push((format!("restore from {u}"), c));
                let mut c = base("restore");
                c.env("LIFEBOAT_STORE", u)
                    .env("LIFEBOAT_RESTORE_SOURCE", "latest")
                    .env("LIFEBOAT_DATA_DIR", work.join("data2"));
                runs.push((format!("restore latest with LIFEBOAT_STORE={u}"), c));
            }
            // Malformed sources carrying a signature.
            for bad in [
                format!("s3://bkt?X-Amz-Signature={SIG}"),
                format!("ftp://host/x.db?X-Amz-Signature={SIG}"),
                format!("bucket/x.db?X-Amz-Signature={SIG}"),
            ] {
                let mut c = base("restore");
                c.env("LIFEBOAT_RESTORE_SOURCE", &bad)
                    .env("LIFEBOAT_DATA_DIR", work.join("data2"));
                runs.push((format!("restore from {bad}"), c));
                let mut c = base("list");
                c.env("LIFEBOAT_STORE", &bad);
                runs.push((format!("list with LIFEBOAT_STORE={bad}"), c));
            }
            for (what, mut c) in runs {
                let out = c.output().unwrap();
                assert!(
                    !out.status.success(),
                    "{what}: succeeded? {}",
                    describe(&out)
                );
                assert_clean(&what, &out, &needles);
                let text = all_output(&out);
                assert!(
                    !text.contains("panicked"),
                    "{what}: panic: {}",
                    describe(&out)
                );
            }
        }
        assert!(!work.join("never.db").exists());
        assert!(!work.join("data2").join("member").exists());
    }
}

#[test]
fn tls_verification_cannot_be_disabled() {
    // No variable can turn verification off: nothing named or described like it.
    for v in etcd_lifeboat::config::VARS {
        let name = v.name.to_ascii_lowercase();
        let help = v.help.to_ascii_lowercase();
        for bad in [
            "insecure",
            "skip_tls",
            "skip-tls",
            "tls_verify",
            "no_verify",
            "noverify",
            "verify_tls",
            "skip_verify",
            "skip-verify",
            "plaintext",
        ] {
            assert!(
                !name.contains(bad) && !help.contains(bad),
                "{}: {bad:?} in name/help: {}",
                v.name,
                v.help
            );
        }
        // LIFEBOAT_VERIFY_UPLOAD sets how much of an upload is read back (`size` or `full`): it
        // can only add checks, and has nothing to do with TLS.
        let read_back_depth = v.name == "LIFEBOAT_VERIFY_UPLOAD" && !help.contains("tls");
        assert!(
            read_back_depth
                || !(name.contains("tls") || name.contains("verify") || name.contains("insecure")),
            "{}: a TLS/verify switch?",
            v.name
        );
    }
    // The source must not read any such variable either.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut stack = vec![src];
    let mut scanned = 0;
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                scanned += 1;
                let text = std::fs::read_to_string(&p).unwrap().to_ascii_lowercase();
                for bad in [
                    "insecure_skip",
                    "insecure-skip",
                    "dangerous()",
                    "with_custom_certificate_verifier",
                    "danger_accept_invalid",
                ] {
                    assert!(!text.contains(bad), "{}: {bad:?}", p.display());
                }
            }
        }
    }
    assert!(scanned > 20);

    // A server whose certificate is not from the configured CA is refused, whatever insecure
    // switches from other tools are set.
    let tls = Tls::temp();
    let etcd = Etcd::start(Version::V3_5_30, &tls, EtcdOpts::default());
    let dir = tempfile::tempdir().unwrap();
    let (store, spool) = (dir.path().join("store"), dir.path().join("spool"));
    std::fs::create_dir_all(&spool).unwrap();
    let run = |ca: &Path, extra: &[(&str, &str)]| {
        let mut c = lifeboat();
        c.arg("backup")
            .env("LIFEBOAT_ETCD_ENDPOINTS", etcd.client_url())
            .env("LIFEBOAT_ETCD_CACERT", ca)
            .env("LIFEBOAT_ETCD_CERT", &tls.client.cert)
            .env("LIFEBOAT_ETCD_KEY", &tls.client.key)
            .env("LIFEBOAT_ETCD_DIAL_TIMEOUT", "3s")
            .env("LIFEBOAT_STORE", format!("file://{}", store.display()))
            .env("LIFEBOAT_SPOOL_DIR", &spool);
        for (k, v) in extra {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    // Control: the right CA works, so the refusals below are about trust.
    let out = run(&tls.ca, &[]);
    assert!(out.status.success(), "{}", describe(&out));
    let insecure = [
        ("ETCDCTL_INSECURE_SKIP_TLS_VERIFY", "true"),
        ("ETCDCTL_INSECURE_TRANSPORT", "true"),
        ("ETCDCTL_INSECURE_DISCOVERY", "true"),
        ("LIFEBOAT_INSECURE_SKIP_TLS_VERIFY", "true"),
        ("LIFEBOAT_ETCD_INSECURE", "true"),
        ("LIFEBOAT_TLS_VERIFY", "false"),
        ("SSL_CERT_FILE", "/dev/null"),
    ];
    let out = run(&tls.other_ca, &insecure);
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("certificate"),
        "{}",
        describe(&out)
    );
    // No CA at all for an https endpoint: refused before connecting, no fallback to "trust all".
    let mut c = lifeboat();
    c.arg("backup")
        .env("LIFEBOAT_ETCD_ENDPOINTS", etcd.client_url())
        .env("LIFEBOAT_ETCD_CERT", &tls.client.cert)
        .env("LIFEBOAT_ETCD_KEY", &tls.client.key)
        .env("LIFEBOAT_STORE", format!("file://{}", store.display()))
        .env("LIFEBOAT_SPOOL_DIR", &spool);
    for (k, v) in insecure {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("LIFEBOAT_ETCD_CACERT"),
        "{}",
        describe(&out)
    );
}

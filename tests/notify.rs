//! Notifications (`LIFEBOAT_PUSHGATEWAY_URL`, `LIFEBOAT_WEBHOOK_URL`) after real backups against a
//! real etcd 3.5.30 with mTLS, received by a small HTTP/1.1 server on loopback that records every
//! request (method, path, headers, body) and answers with a status the test chooses.
//!
//! What must hold: a success pushes the manifest's revision and size and posts the JSON event; a
//! failure pushes `success 0` and a failure timestamp (never a success timestamp) and keeps its own
//! exit code; an endpoint that answers 500 forever, or where nothing listens, costs a warning and
//! nothing else; credentials in the URLs (user info, query tokens, secret paths) never reach
//! stderr, in text or JSON log format.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Output;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use common::*;

const SECRET: &str = "s3cr3tT0ken";

/// One recorded request.
#[derive(Debug, Clone)]
struct Req {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Req {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A recording HTTP/1.1 server on 127.0.0.1 (one request per connection, `Connection: close`).
struct Recorder {
    port: u16,
    status: Arc<AtomicU16>,
    seen: Arc<Mutex<Vec<Req>>>,
}

impl Recorder {
    fn start(status: u16) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let status = Arc::new(AtomicU16::new(status));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (st, sn) = (status.clone(), seen.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let Some(req) = read_request(&mut conn) else {
                    continue;
                };
                sn.lock().unwrap().push(req);
                let code = st.load(Ordering::SeqCst);
                let _ = write!(
                    conn,
                    "HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        });
        Recorder { port, status, seen }
    }

    /// `http://user:SECRET@127.0.0.1:port/<path>?token=SECRET`: credentials in every place a URL has.
    fn url(&self, path: &str) -> String {
        format!(
            "http://lifeboat:{SECRET}@127.0.0.1:{}/{path}?token={SECRET}",
            self.port
        )
    }

    fn requests(&self) -> Vec<Req> {
        self.seen.lock().unwrap().clone()
    }
}

fn read_request(conn: &mut std::net::TcpStream) -> Option<Req> {
    let mut r = BufReader::new(conn.try_clone().ok()?);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let len = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some(Req {
        method,
        path,
        headers,
        body,
    })
}

fn manifest(store: &Path, id: &str) -> serde_json::Value {
    let p = store.join("test").join(id).join("manifest.json");
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// The value of metric `name` in a text-format body.
fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .map(|v| v.trim().parse().unwrap())
}

fn assert_no_secret(out: &Output) {
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !all.contains(SECRET),
        "credential leaked: {}",
        describe(out)
    );
    assert!(
        !all.contains("//lifeboat"),
        "user info leaked: {}",
        describe(out)
    );
}

const PUSH_PATH: &str = "/pg/metrics/job/etcd_lifeboat_backup/cluster/test";

#[test]
fn successful_backup_pushes_metrics_and_posts_the_event() {
    let tls = Tls::temp();
    let etcd = Etcd::start(Version::V3_5_30, &tls, EtcdOpts::default());
    runtime().block_on(async { populate(&etcd.client().await, &Sample::tiny()).await });
    let dir = tempfile::tempdir().unwrap();
    let (store, spool) = (dir.path().join("store"), dir.path().join("spool"));
    std::fs::create_dir_all(&spool).unwrap();
    let (pg, hook) = (Recorder::start(200), Recorder::start(204));

    let out = backup_cmd(&etcd, &tls, &store, &spool)
        .env("LIFEBOAT_PUSHGATEWAY_URL", pg.url("pg"))
        .env("LIFEBOAT_WEBHOOK_URL", hook.url("hooks/T0/B0"))
        .env("LIFEBOAT_LOG", "debug")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    assert_no_secret(&out);
    let id = String::from_utf8(out.stdout.clone())
        .unwrap()
        .trim()
        .to_string();
    let m = manifest(&store, &id);

    let pushed = pg.requests();
    assert_eq!(pushed.len(), 1, "{pushed:?}");
    let p = &pushed[0];
    assert_eq!(p.method, "POST");
    assert_eq!(p.path, format!("{PUSH_PATH}?token={SECRET}"));
    assert_eq!(p.header("content-type"), Some("text/plain; version=0.0.4"));
    assert!(p
        .header("authorization")
        .is_some_and(|a| a.starts_with("Basic ")));
    let body = p.text();
    assert_eq!(metric(&body, "etcd_lifeboat_backup_success"), Some(1.0));
    assert_eq!(
        metric(&body, "etcd_lifeboat_backup_revision"),
        Some(m["revision"].as_i64().unwrap() as f64)
    );
    assert_eq!(
        metric(&body, "etcd_lifeboat_backup_size_bytes"),
        Some(m["stored_size"].as_u64().unwrap() as f64)
    );
    let ts = metric(&body, "etcd_lifeboat_backup_last_success_timestamp_seconds").unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(ts <= now && ts > now - 600.0, "{ts} vs {now}");
    assert!(metric(&body, "etcd_lifeboat_backup_duration_seconds").unwrap() > 0.0);
    assert!(!body.contains("last_failure"), "{body}");
    assert!(
        body.contains("# TYPE etcd_lifeboat_backup_success gauge\n"),
        "{body}"
    );
    assert!(
        body.contains("# HELP etcd_lifeboat_backup_revision "),
        "{body}"
    );

    let posted = hook.requests();
    assert_eq!(posted.len(), 1, "{posted:?}");
    let h = &posted[0];
    assert_eq!(
        (h.method.as_str(), h.path.as_str()),
        ("POST", &*format!("/hooks/T0/B0?token={SECRET}"))
    );
    assert_eq!(h.header("content-type"), Some("application/json"));
    let j: serde_json::Value = serde_json::from_slice(&h.body).unwrap();
    assert_eq!(j["event"], "backup");
    assert_eq!(j["outcome"], "success");
    assert_eq!(j["cluster"], "test");
    assert_eq!(j["backup_id"], id.as_str());
    assert_eq!(j["revision"], m["revision"]);
    assert_eq!(j["size_bytes"], m["stored_size"]);
    assert_eq!(j["exit_code"], 0);
    assert!(j["error"].is_null());
    assert!(j["duration_seconds"].as_f64().unwrap() > 0.0);
    assert!(j["time"].as_str().unwrap().ends_with('Z'));

    // verify notifies the webhook too (never the Pushgateway: its metrics are about backups).
    let out = lifeboat()
        .args(["verify", &id])
        .env("LIFEBOAT_STORE", format!("file://{}", store.display()))
        .env("LIFEBOAT_CLUSTER_NAME", "test")
        .env("LIFEBOAT_SPOOL_DIR", &spool)
        .env("LIFEBOAT_PUSHGATEWAY_URL", pg.url("pg"))
        .env("LIFEBOAT_WEBHOOK_URL", hook.url("hooks/T0/B0"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let posted = hook.requests();
    assert_eq!(posted.len(), 2);
    let j: serde_json::Value = serde_json::from_slice(&posted[1].body).unwrap();
    assert_eq!(
        (&j["event"], &j["outcome"], &j["backup_id"]),
        (&"verify".into(), &"success".into(), &id.as_str().into())
    );
    assert_eq!(pg.requests().len(), 1, "verify pushed backup metrics");
}

#[test]
fn failed_backup_is_notified_and_keeps_its_exit_code() {
    // Nothing listens on the etcd endpoint: exit 3, whatever the notifications do.
    let dir = tempfile::tempdir().unwrap();
    let (pg, hook) = (Recorder::start(200), Recorder::start(200));
    for format in ["text", "json"] {
        let out = lifeboat()
            .arg("backup")
            .env(
                "LIFEBOAT_ETCD_ENDPOINTS",
                format!("http://127.0.0.1:{}", alloc_port()),
            )
            .env("LIFEBOAT_ETCD_DIAL_TIMEOUT", "1s")
            .env(
                "LIFEBOAT_STORE",
                format!("file://{}", dir.path().join("store").display()),
            )
            .env("LIFEBOAT_CLUSTER_NAME", "test")
            .env("LIFEBOAT_SPOOL_DIR", dir.path())
            .env("LIFEBOAT_LOG_FORMAT", format)
            .env("LIFEBOAT_PUSHGATEWAY_URL", pg.url("pg/"))
            .env("LIFEBOAT_WEBHOOK_URL", hook.url("hook"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
        assert_no_secret(&out);
    }
    let pushed = pg.requests();
    assert_eq!(pushed.len(), 2);
    for p in &pushed {
        // POST replaces only these metrics: the last success timestamp, size and revision of an
        // earlier backup stay in the group.
        assert_eq!(p.method, "POST");
        assert_eq!(p.path, format!("{PUSH_PATH}?token={SECRET}"));
        let body = p.text();
        assert_eq!(
            metric(&body, "etcd_lifeboat_backup_success"),
            Some(0.0),
            "{body}"
        );
        assert!(metric(&body, "etcd_lifeboat_backup_last_failure_timestamp_seconds").is_some());
        assert!(metric(&body, "etcd_lifeboat_backup_duration_seconds").is_some());
        for absent in ["last_success", "revision", "size_bytes"] {
            assert!(!body.contains(absent), "{absent}: {body}");
        }
    }
    let posted = hook.requests();
    assert_eq!(posted.len(), 2);
    let j: serde_json::Value = serde_json::from_slice(&posted[0].body).unwrap();
    assert_eq!(j["outcome"], "failure");
    assert_eq!(j["exit_code"], 3);
    assert!(j["backup_id"].is_null() && j["revision"].is_null());
    let err = j["error"].as_str().unwrap();
    assert!(err.contains("etcd"), "{err}");
}

#[test]
fn broken_notification_endpoints_only_warn() {
    let tls = Tls::temp();
    let etcd = Etcd::start(Version::V3_5_30, &tls, EtcdOpts::default());
    let dir = tempfile::tempdir().unwrap();
    let (store, spool) = (dir.path().join("store"), dir.path().join("spool"));
    std::fs::create_dir_all(&spool).unwrap();
    let failing = Recorder::start(500);
    // Nothing listens here (a port handed out and never bound).
    let closed = format!(
        "http://lifeboat:{SECRET}@127.0.0.1:{}/pg?token={SECRET}",
        alloc_port()
    );
    for format in ["text", "json"] {
        let out = backup_cmd(&etcd, &tls, &store, &spool)
            .env("LIFEBOAT_LOG_FORMAT", format)
            .env("LIFEBOAT_WEBHOOK_URL", failing.url("hook/SECRETPATH"))
            .env("LIFEBOAT_PUSHGATEWAY_URL", &closed)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", describe(&out));
        assert_no_secret(&out);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("SECRETPATH"), "webhook path leaked: {err}");
        assert!(
            err.contains("webhook notification to http://127.0.0.1:") && err.contains("HTTP 500"),
            "{err}"
        );
        assert!(
            err.contains("Pushgateway notification to http://127.0.0.1:"),
            "{err}"
        );
        assert!(err.contains("outcome is unaffected"), "{err}");
    }
    // 500 is retried: 3 attempts per run.
    assert_eq!(failing.requests().len(), 6);
    failing.status.store(200, Ordering::SeqCst);

    // A plain-http URL to a non-loopback host is refused up front (it may carry a credential).
    let out = backup_cmd(&etcd, &tls, &store, &spool)
        .env(
            "LIFEBOAT_WEBHOOK_URL",
            format!("http://hooks.example.com/T/{SECRET}"),
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert_no_secret(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("LIFEBOAT_WEBHOOK_URL"));
}

#[test]
fn restore_failure_is_posted_and_a_silent_endpoint_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Recorder::start(200);
    // A webhook that accepts connections and never answers: bounded by LIFEBOAT_NOTIFY_TIMEOUT.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!(
        "http://127.0.0.1:{}/hook?token={SECRET}",
        silent.local_addr().unwrap().port()
    );
    let restore = |url: &str| {
        lifeboat()
            .arg("restore")
            .env("LIFEBOAT_RESTORE_SOURCE", dir.path().join("missing.db"))
            .env("LIFEBOAT_DATA_DIR", dir.path().join("data"))
            .env("LIFEBOAT_SPOOL_DIR", dir.path())
            .env("LIFEBOAT_CLUSTER_NAME", "prod")
            .env("LIFEBOAT_WEBHOOK_URL", url)
            .env("LIFEBOAT_NOTIFY_TIMEOUT", "2s")
            .output()
            .unwrap()
    };
    let out = restore(&hook.url("hook"));
    let code = out.status.code();
    assert!(matches!(code, Some(2 | 6 | 7)), "{}", describe(&out));
    assert_no_secret(&out);
    let posted = hook.requests();
    assert_eq!(posted.len(), 1);
    let j: serde_json::Value = serde_json::from_slice(&posted[0].body).unwrap();
    assert_eq!(
        (&j["event"], &j["outcome"], &j["cluster"]),
        (&"restore".into(), &"failure".into(), &"prod".into())
    );
    assert_eq!(j["exit_code"].as_i64(), code.map(i64::from));
    assert!(j["error"].as_str().unwrap().contains("missing.db"), "{j}");

    // The silent endpoint: the run still ends, with the same exit code and a warning.
    let out = restore(&silent_url);
    assert_eq!(out.status.code(), code, "{}", describe(&out));
    assert_no_secret(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("LIFEBOAT_NOTIFY_TIMEOUT") || err.contains("webhook notification to"),
        "{err}"
    );
    drop(silent);
}

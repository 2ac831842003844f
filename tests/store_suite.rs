//! One store test suite, run against every backend: the directory store, S3 (an in-process `s3s-fs`
//! server on 127.0.0.1 that checks SigV4 for real) and presigned URLs (presigned by `aws-sdk-s3`
//! against that same server), in the style of arrow-rs `object_store`'s shared integration tests.
//!
//! The suite functions take a [`Harness`], which hands out a store for an operation: the local and
//! S3 harnesses always give the same store; the presigned harness presigns a fresh URL for that key
//! and method, as an operator would. Backend-specific behaviour (auth errors, retries, stalls, a
//! server that goes away mid-multipart, cancellation, expired or tampered URLs) is tested below the
//! suite through a fault layer in front of the test server that counts requests and injects
//! 500s, arbitrary statuses, stalls, dropped connections and HTML answers.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, RequestChecksumCalculation};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use etcd_lifeboat::config::Env;
use etcd_lifeboat::error::Error;
use etcd_lifeboat::store::{Store, StoreConfig};
use tempfile::TempDir;

const AK: &str = "AKIDLIFEBOATTEST";
const SK: &str = "lifeboat/test/secret/key/0123456789";
const BUCKET: &str = "lifeboat-test";
const PREFIX: &str = "pre/fix";
const PART: usize = 5 << 20;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

// ---------------------------------------------------------------------------------------------
// The S3 test server with its fault layer

/// What the fault layer does to the next requests; every field is a counter or a switch.
#[derive(Default)]
struct Faults {
    /// Requests seen (faulted or not).
    requests: AtomicUsize,
    /// Answer 500 InternalError to this many requests.
    fail_next: AtomicUsize,
    /// Answer this (status, count) instead of serving.
    status_next: Mutex<Option<(u16, usize)>>,
    /// Never answer this many requests (well: after 30 s).
    stall_next: AtomicUsize,
    /// Stall every UploadPart request.
    stall_parts: AtomicBool,
    /// Serve this many UploadPart requests, then drop the connection on every further one.
    parts_before_gone: Mutex<Option<usize>>,
    /// Answer GETs with 200 and an HTML login page.
    html_gets: AtomicBool,
    /// Hold AbortMultipartUpload requests for a second (a real store's latency), so that an abort
    /// nobody waits for is cut off by the runtime's shutdown.
    slow_aborts: AtomicBool,
    /// Hold the next single PUT (not a part) this many milliseconds before serving it (its URL may
    /// expire meanwhile: the signature is checked after the wait).
    delay_put_ms: AtomicU64,
    /// Flip one byte in the middle of every GetObject answer (not manifests): a store that damages
    /// what it returns.
    corrupt_gets: AtomicBool,
    /// UploadPart requests being served right now, and the most at once.
    parts_now: AtomicUsize,
    parts_max: AtomicUsize,
    /// Answer 500 to this many UploadPart requests (after reading their bodies).
    fail_parts: AtomicUsize,
    /// What happened, in order: `part <n>` for every UploadPart stored; tests add their own events.
    log: Mutex<Vec<String>>,
}

impl Faults {
    fn log(&self, event: impl Into<String>) {
        self.log.lock().unwrap().push(event.into());
    }

    fn events(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    fn parts_stored(&self) -> usize {
        self.events()
            .iter()
            .filter(|e| e.starts_with("part "))
            .count()
    }
}

/// Read a request body to its end (a server that answers before reading makes the client see a
/// transport failure, a different case from the answer under test).
async fn drain(req: http::Request<hyper::body::Incoming>) {
    let mut body = req.into_body();
    while let Some(frame) =
        std::future::poll_fn(|cx| hyper::body::Body::poll_frame(std::pin::Pin::new(&mut body), cx))
            .await
    {
        if frame.is_err() {
            break;
        }
    }
}

fn take_one(c: &AtomicUsize) -> bool {
    c.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

struct Server {
    addr: SocketAddr,
    root: TempDir,
    faults: Arc<Faults>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    async fn start() -> Server {
        Self::start_with(None).await
    }

    /// With `tls`, the server speaks HTTPS with that certificate chain.
    async fn start_with(tls: Option<Arc<rustls::ServerConfig>>) -> Server {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join(BUCKET)).unwrap();
        let fs = s3s_fs::FileSystem::new(root.path()).unwrap();
        let mut b = s3s::service::S3ServiceBuilder::new(fs);
        b.set_auth(s3s::auth::SimpleAuth::from_single(AK, SK));
        let svc = b.build();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let faults = Arc::new(Faults::default());
        let f2 = faults.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let (svc, faults, tls) = (svc.clone(), f2.clone(), tls.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        serve(svc.clone(), faults.clone(), req)
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        None => {
                            let io = hyper_util::rt::TokioIo::new(sock);
                            let _ = http.serve_connection(io, service).await;
                        }
                        Some(cfg) => {
                            let Ok(stream) =
                                tokio_rustls::TlsAcceptor::from(cfg).accept(sock).await
                            else {
                                return; // the client refused our certificate
                            };
                            let io = hyper_util::rt::TokioIo::new(stream);
                            let _ = http.serve_connection(io, service).await;
                        }
                    }
                });
            }
        });
        Server {
            addr,
            root,
            faults,
            task,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn https_endpoint(&self) -> String {
        format!("https://{}", self.addr)
    }

    fn requests(&self) -> usize {
        self.faults.requests.load(Ordering::SeqCst)
    }

    /// Multipart uploads the server still holds (s3s-fs keeps one `.upload-<id>.json` each).
    fn open_uploads(&self) -> Vec<String> {
        std::fs::read_dir(self.root.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".upload"))
            .collect()
    }

    /// Where s3s-fs keeps the object `key` (below the prefix).
    fn object_file(&self, key: &str) -> PathBuf {
        self.root.path().join(BUCKET).join(PREFIX).join(key)
    }

    /// Settings for an S3 store on this server; `extra` overrides.
    fn env(&self, extra: &[(&str, &str)]) -> Env {
        let mut pairs: Vec<(String, String)> = vec![
            ("LIFEBOAT_STORE".into(), format!("s3://{BUCKET}/{PREFIX}")),
            ("AWS_ENDPOINT_URL".into(), self.endpoint()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID".into(), AK.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), SK.into()),
            ("LIFEBOAT_S3_PATH_STYLE".into(), "true".into()),
            ("LIFEBOAT_S3_PART_SIZE".into(), "5MiB".into()),
            ("LIFEBOAT_S3_PARTS_IN_FLIGHT".into(), "2".into()),
            ("LIFEBOAT_STORE_MAX_ATTEMPTS".into(), "3".into()),
            ("LIFEBOAT_STORE_READ_TIMEOUT".into(), "10s".into()),
        ];
        for (k, v) in extra {
            pairs.retain(|(n, _)| n != k);
            pairs.push((k.to_string(), v.to_string()));
        }
        Env::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }

    async fn s3_store(&self, extra: &[(&str, &str)]) -> Store {
        let cfg = StoreConfig::from_env(&self.env(extra), "").unwrap();
        Store::open(&cfg).await.unwrap()
    }

    /// A presigned URL for `key` (below the prefix) and `method`, valid for `valid` from `start`.
    async fn presign(&self, method: &str, key: &str, start: SystemTime, valid: Duration) -> String {
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(self.endpoint())
            .force_path_style(true)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .credentials_provider(Credentials::new(AK, SK, None, None, "test"))
            .http_client(
                aws_smithy_http_client::Builder::new()
                    .tls_provider(tls::Provider::rustls(CryptoMode::Ring))
                    .build_https(),
            )
            .build();
        let client = aws_sdk_s3::Client::from_conf(conf);
        let pc = PresigningConfig::builder()
            .start_time(start)
            .expires_in(valid)
            .build()
            .unwrap();
        let full = format!("{PREFIX}/{key}");
        let req = match method {
            "PUT" => client
                .put_object()
                .bucket(BUCKET)
                .key(full)
                .presigned(pc)
                .await
                .unwrap(),
            _ => client
                .get_object()
                .bucket(BUCKET)
                .key(full)
                .presigned(pc)
                .await
                .unwrap(),
        };
        req.uri().to_string()
    }

    async fn presigned_store(&self, url: &str, extra: &[(&str, &str)]) -> Store {
        let mut pairs = vec![
            ("LIFEBOAT_STORE", url),
            ("LIFEBOAT_MANIFEST_URL", url),
            ("LIFEBOAT_STORE_MAX_ATTEMPTS", "3"),
        ];
        pairs.extend_from_slice(extra);
        let cfg = StoreConfig::from_env(&Env::from_pairs(pairs), "").unwrap();
        Store::open(&cfg).await.unwrap()
    }
}

fn xml_error(status: u16, code: &str) -> http::Response<s3s::Body> {
    http::Response::builder()
        .status(status)
        .header("content-type", "application/xml")
        .body(s3s::Body::from(format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>injected by the test</Message></Error>"
        )))
        .unwrap()
}

async fn serve(
    svc: s3s::service::S3Service,
    f: Arc<Faults>,
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<s3s::Body>, BoxError> {
    f.requests.fetch_add(1, Ordering::SeqCst);
    let is_part = req.method() == http::Method::PUT
        && req.uri().query().is_some_and(|q| q.contains("partNumber="));
    if take_one(&f.fail_next) {
        return Ok(xml_error(500, "InternalError"));
    }
    let status = {
        let mut s = f.status_next.lock().unwrap();
        match s.as_mut() {
            Some((code, n)) if *n > 0 => {
                *n -= 1;
                Some(*code)
            }
            _ => None,
        }
    };
    if let Some(code) = status {
        // Read the request body first, like a server that checks it: answering before the client
        // finished sending makes the connection close under its feet, which the client rightly
        // treats as a transport failure (and retries) — a different case from "a 400 answer".
        drain(req).await;
        return Ok(xml_error(
            code,
            if code == 403 {
                "AccessDenied"
            } else {
                "InvalidRequest"
            },
        ));
    }
    if take_one(&f.stall_next) || (is_part && f.stall_parts.load(Ordering::SeqCst)) {
        tokio::time::sleep(Duration::from_secs(30)).await;
        return Ok(xml_error(500, "InternalError"));
    }
    if is_part {
        let mut gone = f.parts_before_gone.lock().unwrap();
        if let Some(n) = gone.as_mut() {
            if *n == 0 {
                return Err("the server went away".into());
            }
            *n -= 1;
        }
    }
    let is_abort = req.method() == http::Method::DELETE
        && req.uri().query().is_some_and(|q| q.contains("uploadId="));
    if is_abort && f.slow_aborts.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    if req.method() == http::Method::GET && f.html_gets.load(Ordering::SeqCst) {
        return Ok(http::Response::builder()
            .status(200)
            .header("content-type", "text/html")
            .body(s3s::Body::from(
                "<!DOCTYPE html><html><body>Sign in</body></html>".to_string(),
            ))
            .unwrap());
    }
    if is_part && take_one(&f.fail_parts) {
        drain(req).await;
        return Ok(xml_error(500, "InternalError"));
    }
    let part_number = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("partNumber=")))
        .map(str::to_string);
    if req.method() == http::Method::PUT && !is_part {
        let ms = f.delay_put_ms.swap(0, Ordering::SeqCst);
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }
    let corrupt = req.method() == http::Method::GET
        && f.corrupt_gets.load(Ordering::SeqCst)
        && !req.uri().path().ends_with("manifest.json");
    if is_part {
        let now = f.parts_now.fetch_add(1, Ordering::SeqCst) + 1;
        f.parts_max.fetch_max(now, Ordering::SeqCst);
    }
    let resp = svc.call(req.map(s3s::Body::from)).await;
    if is_part {
        f.parts_now.fetch_sub(1, Ordering::SeqCst);
        if resp.as_ref().is_ok_and(|r| r.status().is_success()) {
            f.log(format!("part {}", part_number.unwrap_or_default()));
        }
    }
    let resp = resp.map_err(|e| format!("{e:?}"))?;
    if corrupt && resp.status() == 200 {
        let (parts, mut body) = resp.into_parts();
        let mut bytes = body.store_all_limited(64 << 20).await?.to_vec();
        let mid = bytes.len() / 2;
        if let Some(b) = bytes.get_mut(mid) {
            *b ^= 0x01;
        }
        return Ok(http::Response::from_parts(parts, s3s::Body::from(bytes)));
    }
    Ok(resp)
}

// ---------------------------------------------------------------------------------------------
// Harnesses

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    Put,
    Get,
}

trait Harness {
    /// A store to do `op` on `key` with.
    async fn store(&self, op: Op, key: &str) -> Arc<Store>;
    fn name(&self) -> &'static str;
    /// The file that holds `key` behind the store's back (to damage it).
    fn backing_file(&self, key: &str) -> PathBuf;
}

struct Local {
    _dir: TempDir,
    store: Arc<Store>,
}

impl Local {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&StoreConfig::local(dir.path())).await.unwrap();
        Local {
            _dir: dir,
            store: Arc::new(store),
        }
    }
}

impl Harness for Local {
    async fn store(&self, _: Op, _: &str) -> Arc<Store> {
        self.store.clone()
    }
    fn backing_file(&self, key: &str) -> PathBuf {
        self._dir.path().join(key)
    }
    fn name(&self) -> &'static str {
        "local"
    }
}

struct S3 {
    _server: Server,
    store: Arc<Store>,
}

impl S3 {
    async fn new() -> Self {
        let server = Server::start().await;
        let store = Arc::new(server.s3_store(&[]).await);
        S3 {
            _server: server,
            store,
        }
    }
}

impl Harness for S3 {
    async fn store(&self, _: Op, _: &str) -> Arc<Store> {
        self.store.clone()
    }
    fn backing_file(&self, key: &str) -> PathBuf {
        self._server.object_file(key)
    }
    fn name(&self) -> &'static str {
        "s3"
    }
}

struct Presigned {
    server: Server,
}

impl Presigned {
    async fn new() -> Self {
        Presigned {
            server: Server::start().await,
        }
    }
}

impl Harness for Presigned {
    async fn store(&self, op: Op, key: &str) -> Arc<Store> {
        let method = if op == Op::Put { "PUT" } else { "GET" };
        let url = self
            .server
            .presign(method, key, SystemTime::now(), Duration::from_secs(600))
            .await;
        Arc::new(self.server.presigned_store(&url, &[]).await)
    }
    fn name(&self) -> &'static str {
        "presigned"
    }
    fn backing_file(&self, key: &str) -> PathBuf {
        self.server.object_file(key)
    }
}

// ---------------------------------------------------------------------------------------------
// The suite

/// Deterministic, not-compressible-by-accident bytes.
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn write_tmp(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

async fn put_file_round_trip(h: &impl Harness) {
    let tmp = tempfile::tempdir().unwrap();
    // One small object (a single PUT) and one that needs three parts with 5 MiB parts.
    for (key, len) in [
        ("c/20261122T043330Z-r5/snapshot.db", 4096 + 7),
        ("c/20261122T043330Z-r6/snapshot.db.zst", 2 * PART + 12345),
    ] {
        let bytes = data(len, len as u64);
        let src = write_tmp(tmp.path(), "src", &bytes);
        let meta = h
            .store(Op::Put, key)
            .await
            .put_file(key, &src)
            .await
            .unwrap();
        assert_eq!(
            (meta.key.as_str(), meta.size),
            (key, len as u64),
            "{}",
            h.name()
        );
        let dest = tmp.path().join("dest");
        let n = h
            .store(Op::Get, key)
            .await
            .get_to_file(key, &dest)
            .await
            .unwrap();
        assert_eq!(n, len as u64, "{}", h.name());
        assert!(
            std::fs::read(&dest).unwrap() == bytes,
            "{}: {key} differs",
            h.name()
        );
        let head = h
            .store(Op::Get, key)
            .await
            .head(key)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(head.size, len as u64, "{}", h.name());
        std::fs::remove_file(&dest).unwrap();
        std::fs::remove_file(&src).unwrap();
    }
}

async fn put_bytes_round_trip(h: &impl Harness) {
    for (key, bytes) in [
        ("c/b1/manifest.json", &b"{\"format_version\":1}"[..]),
        ("c/b2/empty", &b""[..]),
    ] {
        let meta = h
            .store(Op::Put, key)
            .await
            .put_bytes(key, bytes)
            .await
            .unwrap();
        assert_eq!(meta.size, bytes.len() as u64);
        let back = h.store(Op::Get, key).await.get_bytes(key).await.unwrap();
        assert_eq!(back, bytes, "{}: {key}", h.name());
    }
}

async fn head_present_and_absent(h: &impl Harness) {
    let key = "c/b/here";
    h.store(Op::Put, key)
        .await
        .put_bytes(key, b"12345")
        .await
        .unwrap();
    let m = h.store(Op::Get, key).await.head(key).await.unwrap();
    assert_eq!(m.map(|m| m.size), Some(5), "{}", h.name());
    for absent in ["c/b/not-here", "nowhere/at/all"] {
        let m = h.store(Op::Get, absent).await.head(absent).await.unwrap();
        assert_eq!(m, None, "{}: {absent}", h.name());
    }
}

async fn overwrite_replaces(h: &impl Harness) {
    let key = "c/b/over";
    h.store(Op::Put, key)
        .await
        .put_bytes(key, b"first version, longer")
        .await
        .unwrap();
    h.store(Op::Put, key)
        .await
        .put_bytes(key, b"second")
        .await
        .unwrap();
    assert_eq!(
        h.store(Op::Get, key).await.get_bytes(key).await.unwrap(),
        b"second"
    );
    let tmp = tempfile::tempdir().unwrap();
    let src = write_tmp(tmp.path(), "f", b"third, from a file");
    h.store(Op::Put, key)
        .await
        .put_file(key, &src)
        .await
        .unwrap();
    assert_eq!(
        h.store(Op::Get, key).await.get_bytes(key).await.unwrap(),
        b"third, from a file",
        "{}",
        h.name()
    );
}

async fn get_missing_is_a_clear_error(h: &impl Harness) {
    let key = "c/missing-backup/snapshot.db";
    let tmp = tempfile::tempdir().unwrap();
    let errs = [
        h.store(Op::Get, key)
            .await
            .get_bytes(key)
            .await
            .unwrap_err(),
        h.store(Op::Get, key)
            .await
            .get_to_file(key, &tmp.path().join("x"))
            .await
            .unwrap_err(),
    ];
    for e in errs {
        assert!(matches!(e, Error::Store(_)), "{}: {e:?}", h.name());
        let msg = e.to_string();
        assert!(
            msg.contains("missing-backup/snapshot.db"),
            "{}: {msg}",
            h.name()
        );
        assert!(
            msg.contains("no such object") || msg.contains("No such file"),
            "{}: {msg}",
            h.name()
        );
    }
}

async fn list_by_prefix(h: &impl Harness) {
    let keys = [
        "c1/b1/snapshot.db",
        "c1/b1/manifest.json",
        "c1/b2/x/y/z",
        "c10/b/m",
        "c2/b/m",
    ];
    for k in keys {
        h.store(Op::Put, k)
            .await
            .put_bytes(k, k.as_bytes())
            .await
            .unwrap();
    }
    let store = h.store(Op::Get, "c1/").await;
    if !store.capabilities().list {
        let e = store.list("c1/").await.unwrap_err().to_string();
        assert!(e.contains("not supported for presigned URLs"), "{e}");
        return;
    }
    let got: Vec<_> = store
        .list("c1/")
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.key, m.size))
        .collect();
    let want: Vec<_> = ["c1/b1/manifest.json", "c1/b1/snapshot.db", "c1/b2/x/y/z"]
        .iter()
        .map(|k| (k.to_string(), k.len() as u64))
        .collect();
    assert_eq!(got, want, "{}", h.name());
    assert_eq!(
        store.list("").await.unwrap().len(),
        keys.len(),
        "{}",
        h.name()
    );
    assert!(store.list("nothing/").await.unwrap().is_empty());
}

async fn delete_removes(h: &impl Harness) {
    let key = "c/b/doomed";
    h.store(Op::Put, key)
        .await
        .put_bytes(key, b"x")
        .await
        .unwrap();
    let store = h.store(Op::Get, key).await;
    if !store.capabilities().delete {
        let e = store.delete(key).await.unwrap_err().to_string();
        assert!(e.contains("not supported for presigned URLs"), "{e}");
        return;
    }
    store.delete(key).await.unwrap();
    assert_eq!(store.head(key).await.unwrap(), None, "{}", h.name());
    store.delete(key).await.unwrap(); // deleting a missing key is fine
}

/// `LIFEBOAT_VERIFY_UPLOAD=full` reads the object back through the store, hashing as it streams:
/// the digest is the uploaded one, and a copy damaged in the store afterwards is caught.
async fn hash_object_reads_back(h: &impl Harness) {
    use sha2::Digest;
    let tmp = tempfile::tempdir().unwrap();
    let key = "c/20261122T043330Z-r7/snapshot.db.zst";
    let bytes = data(PART + 4321, 77);
    let sha: [u8; 32] = sha2::Sha256::digest(&bytes).into();
    let src = write_tmp(tmp.path(), "src", &bytes);
    h.store(Op::Put, key)
        .await
        .put_file(key, &src)
        .await
        .unwrap();
    let got = h.store(Op::Get, key).await.hash_object(key).await.unwrap();
    assert_eq!(got, (bytes.len() as u64, sha), "{}", h.name());
    etcd_lifeboat::backup::check_read_back(key, bytes.len() as u64, &sha, got).unwrap();
    // Damage the stored copy behind the store's back (same size: a HEAD cannot tell).
    let file = h.backing_file(key);
    let mut stored = std::fs::read(&file).unwrap();
    stored[PART / 2] ^= 0x40;
    std::fs::write(&file, stored).unwrap();
    let got = h.store(Op::Get, key).await.hash_object(key).await.unwrap();
    assert_eq!(got.0, bytes.len() as u64, "{}", h.name());
    let e = etcd_lifeboat::backup::check_read_back(key, bytes.len() as u64, &sha, got).unwrap_err();
    assert_eq!(e.exit_code(), 5, "{}", h.name());
    assert!(e.to_string().contains("damaged"), "{}: {e}", h.name());
}

async fn bad_keys_are_refused(h: &impl Harness) {
    let store = h.store(Op::Put, "k").await;
    for bad in ["", "/abs", "a/../b", "a//b"] {
        assert!(
            store.put_bytes(bad, b"x").await.is_err(),
            "{}: {bad:?}",
            h.name()
        );
    }
}

macro_rules! suite {
    ($backend:ident, $make:expr) => {
        mod $backend {
            use super::*;
            suite!(@t $make; put_file_round_trip, put_bytes_round_trip, head_present_and_absent,
                   overwrite_replaces, get_missing_is_a_clear_error, list_by_prefix, delete_removes,
                   bad_keys_are_refused, hash_object_reads_back);
        }
    };
    (@t $make:expr; $($t:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $t() {
                let h = $make.await;
                super::$t(&h).await;
            }
        )*
    };
}

suite!(local, Local::new());
suite!(s3, S3::new());
suite!(presigned, Presigned::new());

// ---------------------------------------------------------------------------------------------
// S3: errors, retries, aborts

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_wrong_secret_is_a_clear_auth_error_and_is_not_retried() {
    let server = Server::start().await;
    let store = server
        .s3_store(&[("AWS_SECRET_ACCESS_KEY", "not-the-secret")])
        .await;
    let e = store
        .put_bytes("c/b/m", b"x")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("authentication failed (SignatureDoesNotMatch)")
            && e.contains("check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"),
        "{e}"
    );
    assert!(!e.contains("not-the-secret"), "{e}");
    assert_eq!(server.requests(), 1, "a 403 must not be retried");

    let store = server
        .s3_store(&[("AWS_ACCESS_KEY_ID", "AKIDUNKNOWN")])
        .await;
    let e = store.get_bytes("c/b/m").await.unwrap_err().to_string();
    assert!(e.contains("authentication failed ("), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_missing_bucket_is_named() {
    let server = Server::start().await;
    let store = server
        .s3_store(&[("LIFEBOAT_STORE", "s3://no-such-bucket/p")])
        .await;
    // (s3s-fs creates buckets on PUT, so ask with a list and a get.)
    let e = store.list("c/").await.unwrap_err().to_string();
    assert!(e.contains("bucket no-such-bucket does not exist"), "{e}");
    let e = store.get_bytes("c/b/m").await.unwrap_err().to_string();
    assert!(
        e.contains("does not exist") || e.contains("no such object"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_5xx_is_retried_and_succeeds() {
    let server = Server::start().await;
    let store = server.s3_store(&[]).await;
    server.faults.fail_next.store(2, Ordering::SeqCst);
    store.put_bytes("c/b/m", b"after two 500s").await.unwrap();
    assert_eq!(server.requests(), 3);
    assert_eq!(store.get_bytes("c/b/m").await.unwrap(), b"after two 500s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_stalled_request_times_out_and_is_retried() {
    let server = Server::start().await;
    let store = server
        .s3_store(&[("LIFEBOAT_STORE_READ_TIMEOUT", "1s")])
        .await;
    server.faults.stall_next.store(1, Ordering::SeqCst);
    let t = std::time::Instant::now();
    store.put_bytes("c/b/m", b"after a stall").await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    assert_eq!(server.requests(), 2);
    assert_eq!(store.get_bytes("c/b/m").await.unwrap(), b"after a stall");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_4xx_is_not_retried() {
    for status in [400u16, 403] {
        let server = Server::start().await;
        let store = server.s3_store(&[]).await;
        *server.faults.status_next.lock().unwrap() = Some((status, 10));
        let e = store.put_bytes("c/b/m", b"x").await.unwrap_err();
        assert!(matches!(e, Error::Store(_)), "{e:?}");
        assert_eq!(
            server.requests(),
            1,
            "HTTP {status} must not be retried: {e}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_multipart_stays_within_parts_in_flight() {
    let server = Server::start().await;
    let store = server
        .s3_store(&[("LIFEBOAT_S3_PARTS_IN_FLIGHT", "2")])
        .await;
    let tmp = tempfile::tempdir().unwrap();
    let bytes = data(5 * PART + 1, 9);
    let src = write_tmp(tmp.path(), "big", &bytes);
    store.put_file("c/b/big", &src).await.unwrap();
    let max = server.faults.parts_max.load(Ordering::SeqCst);
    assert!((1..=2).contains(&max), "{max} parts were in flight at once");
    // 1 create + 6 parts + 1 complete
    assert_eq!(server.requests(), 8);
    assert!(store.get_bytes("c/b/big").await.unwrap() == bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_server_gone_mid_multipart_aborts_and_leaves_nothing() {
    let server = Server::start().await;
    let store = server
        .s3_store(&[("LIFEBOAT_S3_PARTS_IN_FLIGHT", "1")])
        .await;
    *server.faults.parts_before_gone.lock().unwrap() = Some(1);
    let tmp = tempfile::tempdir().unwrap();
    let src = write_tmp(tmp.path(), "big", &data(3 * PART, 3));
    let e = store
        .put_file("c/b/big", &src)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("uploading part 2 of s3://lifeboat-test/pre/fix/c/b/big"),
        "{e}"
    );
    assert_eq!(
        server.open_uploads(),
        Vec::<String>::new(),
        "multipart upload not aborted"
    );
    assert!(store.list("").await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_cancelled_multipart_is_aborted() {
    let server = Server::start().await;
    let store = server.s3_store(&[]).await;
    server.faults.stall_parts.store(true, Ordering::SeqCst);
    server.faults.slow_aborts.store(true, Ordering::SeqCst);
    let tmp = tempfile::tempdir().unwrap();
    let src = write_tmp(tmp.path(), "big", &data(3 * PART, 4));
    // As on SIGTERM: the upload future is dropped half-way.
    let upload = store.put_file("c/b/big", &src);
    let r = tokio::time::timeout(Duration::from_secs(2), upload).await;
    assert!(r.is_err(), "the stalled upload should not have finished");
    assert_eq!(
        server.open_uploads().len(),
        1,
        "the upload should have started"
    );
    etcd_lifeboat::shutdown::finish_cleanups(Duration::from_secs(10)).await;
    assert_eq!(
        server.open_uploads(),
        Vec::<String>::new(),
        "multipart upload not aborted"
    );
    assert!(store.list("").await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_part_5xx_is_retried_from_the_file() {
    let server = Server::start().await;
    let store = server.s3_store(&[]).await;
    server.faults.fail_parts.store(2, Ordering::SeqCst);
    let tmp = tempfile::tempdir().unwrap();
    let bytes = data(2 * PART + 777, 21);
    let src = write_tmp(tmp.path(), "big", &bytes);
    store.put_file("c/b/big", &src).await.unwrap();
    // 1 create + 3 parts + 2 retried parts + 1 complete: each retry re-read its range of the file.
    assert_eq!(server.requests(), 7);
    assert_eq!(server.faults.parts_stored(), 3);
    assert!(store.get_bytes("c/b/big").await.unwrap() == bytes);
}

// ---------------------------------------------------------------------------------------------
// S3: a multipart upload that follows a growing spool file (a backup uploads while it streams)

fn s3_of(store: &Store) -> &etcd_lifeboat::store::s3::S3Store {
    match store {
        Store::S3(s) => s,
        _ => panic!("not an S3 store"),
    }
}

fn new_spool(dir: &Path) -> etcd_lifeboat::spool::Spool {
    etcd_lifeboat::spool::Spool::create(
        dir,
        "s.db",
        etcd_lifeboat::fsutil::Progress::new("test", None, Duration::from_secs(3600)),
    )
    .unwrap()
}

/// Wait (at most 60 s: a loaded machine) until the server stored `n` parts.
async fn until_parts_stored(server: &Server, n: usize) {
    for _ in 0..3000 {
        if server.faults.parts_stored() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "the server stored {} parts, expected {n}",
        server.faults.parts_stored()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_growing_upload_sends_parts_before_the_stream_ends() {
    use etcd_lifeboat::etcd::SnapshotSink;
    let server = Server::start().await;
    let store = server.s3_store(&[]).await;
    let tmp = tempfile::tempdir().unwrap();
    let db = data(4 * PART, 31);
    let trailer = [7u8; 32];
    let mut spool = new_spool(tmp.path());
    let reader = spool.reader().unwrap();
    let path = etcd_lifeboat::store::s3::reopen_path(reader.file()).unwrap();
    let mut up = s3_of(&store).growing_upload("c/b/snapshot.db", Arc::new(reader), path);
    let feed = async {
        spool.announce(db.len() as u64).unwrap();
        for chunk in db[..3 * PART].chunks(64 << 10) {
            spool.write(chunk).unwrap();
        }
        // Parts go out while the "stream" is still open: it cannot end before they are stored.
        until_parts_stored(&server, 2).await;
        assert!(!server.open_uploads().is_empty());
        for chunk in db[3 * PART..].chunks(64 << 10) {
            spool.write(chunk).unwrap();
        }
        spool.write(&trailer).unwrap();
        server.faults.log("stream end");
        spool.finish().unwrap()
    };
    let (len, spooled) = tokio::join!(up.drive(), feed);
    assert_eq!(len.unwrap(), 4 * PART as u64 + 32);
    // The spool was renamed when it finished; the remaining parts still read it by descriptor.
    assert!(!tmp.path().join("s.db.part").exists());
    let events = server.faults.events();
    let end = events.iter().position(|e| e == "stream end").unwrap();
    assert!(
        events[..end]
            .iter()
            .filter(|e| e.starts_with("part "))
            .count()
            >= 2,
        "{events:?}"
    );
    assert!(
        store.list("").await.unwrap().is_empty(),
        "visible before complete"
    );
    let meta = up.complete().await.unwrap();
    assert_eq!(meta.size, 4 * PART as u64 + 32);
    let mut want = db.clone();
    want.extend_from_slice(&trailer);
    assert!(store.get_bytes("c/b/snapshot.db").await.unwrap() == want);
    assert_eq!(server.open_uploads(), Vec::<String>::new());
    drop(spooled);
}

/// As when verification fails (or the stream breaks) after parts were uploaded: the upload is
/// aborted, no object and no incomplete multipart upload is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_growing_upload_aborted_after_parts_leaves_nothing() {
    use etcd_lifeboat::etcd::SnapshotSink;
    let server = Server::start().await;
    let store = server.s3_store(&[]).await;
    let tmp = tempfile::tempdir().unwrap();
    let db = data(4 * PART, 41);

    // 1. The checks fail while the upload follows the stream: the driver is dropped, then abort.
    let mut spool = new_spool(tmp.path());
    let reader = spool.reader().unwrap();
    let path = etcd_lifeboat::store::s3::reopen_path(reader.file()).unwrap();
    let mut up = s3_of(&store).growing_upload("c/b1/snapshot.db", Arc::new(reader), path);
    let failing_checks = async {
        spool.announce(db.len() as u64).unwrap();
        for chunk in db[..3 * PART].chunks(64 << 10) {
            spool.write(chunk).unwrap();
        }
        until_parts_stored(&server, 2).await;
        Err::<(), _>("verification failed")
    };
    let r = tokio::try_join!(failing_checks, async {
        up.drive().await.map_err(|_| "drive failed")?;
        Ok(())
    });
    assert_eq!(r, Err("verification failed"));
    assert!(!server.open_uploads().is_empty(), "the upload should exist");
    up.abort().await;
    assert_eq!(server.open_uploads(), Vec::<String>::new(), "not aborted");
    assert!(store.list("").await.unwrap().is_empty());
    drop(spool);

    // 2. The stream breaks (the spool is dropped unfinished): the driver fails, then abort.
    let stored_before = server.faults.parts_stored();
    let mut spool = new_spool(tmp.path());
    let reader = spool.reader().unwrap();
    let path = etcd_lifeboat::store::s3::reopen_path(reader.file()).unwrap();
    let mut up = s3_of(&store).growing_upload("c/b2/snapshot.db", Arc::new(reader), path);
    let breaking_stream = async {
        spool.announce(db.len() as u64).unwrap();
        for chunk in db[..2 * PART + 99].chunks(64 << 10) {
            spool.write(chunk).unwrap();
        }
        until_parts_stored(&server, stored_before + 1).await;
        drop(spool);
    };
    let (r, ()) = tokio::join!(up.drive(), breaking_stream);
    let e = etcd_lifeboat::error::chain(&r.unwrap_err());
    assert!(e.contains("the snapshot stream failed"), "{e}");
    up.abort().await;
    assert_eq!(server.open_uploads(), Vec::<String>::new(), "not aborted");
    assert!(store.list("").await.unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Presigned URLs: expiry, tampering, wrong method, error pages, limits, retries

const INVALID: &str = "the presigned URL has expired or is invalid — presign a new one";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presigned_expired_and_tampered_urls_are_explained() {
    let server = Server::start().await;
    let key = "c/b/snapshot.db";
    let long_ago = SystemTime::now() - Duration::from_secs(7200);
    let expired_put = server
        .presign("PUT", key, long_ago, Duration::from_secs(60))
        .await;
    let expired_get = server
        .presign("GET", key, long_ago, Duration::from_secs(60))
        .await;
    let good_put = server
        .presign("PUT", key, SystemTime::now(), Duration::from_secs(600))
        .await;
    let tampered = {
        let (head, sig) = good_put.rsplit_once("X-Amz-Signature=").unwrap();
        let flipped: String = sig
            .chars()
            .map(|c| if c == '0' { '1' } else { '0' })
            .collect();
        format!("{head}X-Amz-Signature={flipped}")
    };
    let tmp = tempfile::tempdir().unwrap();
    let src = write_tmp(tmp.path(), "snap", b"snapshot bytes");
    for url in [&expired_put, &tampered] {
        let store = server.presigned_store(url, &[]).await;
        let e = store.put_file(key, &src).await.unwrap_err().to_string();
        assert!(e.contains(INVALID), "{e}");
        assert!(!e.contains("X-Amz-Signature="), "signature leaked: {e}");
    }
    let store = server.presigned_store(&expired_get, &[]).await;
    let e = store
        .get_to_file(key, &tmp.path().join("out"))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains(INVALID), "{e}");
    // A PUT URL used for GET (wrong method) is invalid too.
    let store = server.presigned_store(&good_put, &[]).await;
    let e = store.get_bytes(key).await.unwrap_err().to_string();
    assert!(e.contains(INVALID), "{e}");
    // None of those were retried: 4 requests for 4 attempts.
    assert_eq!(server.requests(), 4);
    assert!(server
        .s3_store(&[])
        .await
        .list("")
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presigned_html_answer_is_not_a_snapshot() {
    let server = Server::start().await;
    let key = "c/b/snapshot.db";
    let s3 = server.s3_store(&[]).await;
    s3.put_bytes(key, b"real bytes").await.unwrap();
    server.faults.html_gets.store(true, Ordering::SeqCst);
    let url = server
        .presign("GET", key, SystemTime::now(), Duration::from_secs(600))
        .await;
    let store = server.presigned_store(&url, &[]).await;
    let tmp = tempfile::tempdir().unwrap();
    let e = store
        .get_to_file(key, &tmp.path().join("out"))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains(INVALID) && e.contains("XML/HTML"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presigned_put_over_5gib_is_refused_before_sending() {
    let server = Server::start().await;
    let url = server
        .presign("PUT", "c/b/s", SystemTime::now(), Duration::from_secs(600))
        .await;
    let store = server.presigned_store(&url, &[]).await;
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("huge");
    std::fs::File::create(&p)
        .unwrap()
        .set_len((5 << 30) + 1)
        .unwrap(); // sparse
    let e = store.put_file("c/b/s", &p).await.unwrap_err().to_string();
    assert!(
        e.contains("5 GiB") && e.contains("s3://bucket/prefix"),
        "{e}"
    );
    assert_eq!(server.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presigned_5xx_and_stalls_are_retried() {
    let server = Server::start().await;
    let key = "c/b/snapshot.db";
    let put = server
        .presign("PUT", key, SystemTime::now(), Duration::from_secs(600))
        .await;
    let store = server
        .presigned_store(&put, &[("LIFEBOAT_STORE_READ_TIMEOUT", "1s")])
        .await;
    let tmp = tempfile::tempdir().unwrap();
    let bytes = data(300_000, 5);
    let src = write_tmp(tmp.path(), "snap", &bytes);
    server.faults.fail_next.store(1, Ordering::SeqCst);
    server.faults.stall_next.store(1, Ordering::SeqCst);
    store.put_file(key, &src).await.unwrap();
    assert_eq!(server.requests(), 3);
    let got = server.s3_store(&[]).await.get_bytes(key).await.unwrap();
    assert!(got == bytes);
    // A 400 is final. (A store with the default read timeout: on a loaded machine the 1 s one above
    // could time out waiting for the 400 and retry, which is right but not what this step tests.)
    let store = server.presigned_store(&put, &[]).await;
    *server.faults.status_next.lock().unwrap() = Some((400, 10));
    assert!(store.put_file(key, &src).await.is_err());
    // Exactly one request was answered 400 (counting answers, not arrivals: a GET abandoned by a
    // timeout in the step above can still reach a loaded server late).
    let left = server.faults.status_next.lock().unwrap().map(|(_, n)| n);
    assert_eq!(left, Some(9), "the 400 was retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presigned_without_manifest_url_says_so() {
    let server = Server::start().await;
    let url = server
        .presign("PUT", "c/b/s", SystemTime::now(), Duration::from_secs(600))
        .await;
    let cfg =
        StoreConfig::from_env(&Env::from_pairs([("LIFEBOAT_STORE", url.as_str())]), "").unwrap();
    let store = Store::open(&cfg).await.unwrap();
    let caps = store.capabilities();
    assert!(!caps.manifest && !caps.read_back && !caps.list && !caps.delete);
    let e = store
        .put_bytes("c/b/manifest.json", b"{}")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("LIFEBOAT_MANIFEST_URL"), "{e}");
    assert!(!store.describe().contains("X-Amz-Signature"));
}

// ---------------------------------------------------------------------------------------------
// End to end: SIGTERM during a multipart upload of a real backup

/// A throw-away etcd 3.5.30 (from `scripts/install-deps.sh`) on free loopback ports, plain http.
struct Etcd {
    child: std::process::Child,
    endpoint: String,
    _dir: TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// [`start_etcd`] holding `count` incompressible 1 MiB values (`/registry/big/<i>`, data seeded
/// `seed + i`), so a snapshot spans several 5 MiB parts even compressed; and a client to it.
async fn etcd_with_big_values(count: u64, seed: u64) -> (Etcd, etcd_client::Client) {
    let etcd = start_etcd().await;
    let mut c = etcd_client::Client::connect([etcd.endpoint.as_str()], None)
        .await
        .unwrap();
    for i in 0..count {
        c.put(format!("/registry/big/{i}"), data(1 << 20, seed + i), None)
            .await
            .unwrap();
    }
    (etcd, c)
}

async fn start_etcd() -> Etcd {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join(".deps/etcd-3.5.30/usr/bin/etcd");
    assert!(
        bin.exists(),
        "{} is missing: run scripts/install-deps.sh",
        bin.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let (c, p) = (free_port(), free_port());
    let endpoint = format!("http://127.0.0.1:{c}");
    let peer = format!("http://127.0.0.1:{p}");
    let child = std::process::Command::new(bin)
        .args(["--name", "e2e", "--data-dir"])
        .arg(dir.path().join("data"))
        .args([
            "--listen-client-urls",
            &endpoint,
            "--advertise-client-urls",
            &endpoint,
        ])
        .args([
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
        ])
        .args(["--initial-cluster", &format!("e2e={peer}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let etcd = Etcd {
        child,
        endpoint,
        _dir: dir,
    };
    for _ in 0..100 {
        if let Ok(mut c) = etcd_client::Client::connect([etcd.endpoint.as_str()], None).await {
            if c.status().await.is_ok() {
                return etcd;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("etcd did not come up on {}", etcd.endpoint);
}

/// End to end with a real etcd (from `scripts/install-deps.sh`): SIGTERM while the multipart upload
/// is in flight → the upload is aborted on the server, nothing is listed, exit 143.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_multipart_backup_aborts_and_exits_143() {
    let (etcd, _) = etcd_with_big_values(14, 0).await;
    let server = Server::start().await;
    server.faults.stall_parts.store(true, Ordering::SeqCst);
    server.faults.slow_aborts.store(true, Ordering::SeqCst);
    let spool = tempfile::tempdir().unwrap();
    let mut backup = std::process::Command::new(env!("CARGO_BIN_EXE_etcd-lifeboat"))
        .arg("backup")
        .env_clear()
        .envs([
            ("LIFEBOAT_ETCD_ENDPOINTS", etcd.endpoint.as_str()),
            ("LIFEBOAT_STORE", &format!("s3://{BUCKET}/{PREFIX}")),
            ("LIFEBOAT_COMPRESSION", "none"),
            ("LIFEBOAT_SPOOL_DIR", spool.path().to_str().unwrap()),
            ("AWS_ENDPOINT_URL", &server.endpoint()),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", AK),
            ("AWS_SECRET_ACCESS_KEY", SK),
            ("LIFEBOAT_S3_PATH_STYLE", "true"),
            ("LIFEBOAT_S3_PART_SIZE", "5MiB"),
            ("LIFEBOAT_LOG", "warn"),
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the multipart upload exists (its parts stall), then SIGTERM as a Job deadline would.
    let mut started = false;
    for _ in 0..600 {
        if server.open_uploads().len() == 1 {
            started = true;
            break;
        }
        if let Ok(Some(st)) = backup.try_wait() {
            let mut err = String::new();
            use std::io::Read;
            let _ = backup.stderr.take().unwrap().read_to_string(&mut err);
            panic!("backup ended before uploading: {st}: {err}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(started, "the backup never started its multipart upload");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // SAFETY: plain kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(backup.id() as i32, libc::SIGTERM) }, 0);
    let out = tokio::task::spawn_blocking(move || backup.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(143), "{stderr}");
    assert!(stderr.contains("SIGTERM"), "{stderr}");
    assert!(!stderr.contains(SK), "secret in the log: {stderr}");
    assert_eq!(
        server.open_uploads(),
        Vec::<String>::new(),
        "multipart upload not aborted"
    );
    let s3 = server.s3_store(&[]).await;
    assert!(
        s3.list("").await.unwrap().is_empty(),
        "something was listed"
    );
    let left: Vec<_> = std::fs::read_dir(spool.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| !n.to_string_lossy().ends_with(".lock"))
        .collect();
    assert!(left.is_empty(), "spool not cleaned: {left:?}");
}

/// End to end with a real etcd: a backup to S3 (raw and zstd) uploads its parts while the snapshot
/// streams and completes them once verified; the object, then the manifest, are listed; no
/// multipart upload is left open; the object is the snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_to_s3_streams_parts_and_completes() {
    // Incompressible values: the zstd output also needs several 5 MiB parts.
    let (etcd, _) = etcd_with_big_values(14, 100).await;
    let server = Server::start().await;
    let s3 = server.s3_store(&[]).await;
    for compression in ["none", "zstd"] {
        let spool = tempfile::tempdir().unwrap();
        let parts_before = server.faults.parts_stored();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_etcd-lifeboat"))
            .arg("backup")
            .env_clear()
            .envs([
                ("LIFEBOAT_ETCD_ENDPOINTS", etcd.endpoint.as_str()),
                ("LIFEBOAT_STORE", &format!("s3://{BUCKET}/{PREFIX}")),
                ("LIFEBOAT_CLUSTER_NAME", compression),
                ("LIFEBOAT_COMPRESSION", compression),
                ("LIFEBOAT_SPOOL_DIR", spool.path().to_str().unwrap()),
                ("AWS_ENDPOINT_URL", &server.endpoint()),
                ("AWS_REGION", "us-east-1"),
                ("AWS_ACCESS_KEY_ID", AK),
                ("AWS_SECRET_ACCESS_KEY", SK),
                ("LIFEBOAT_S3_PATH_STYLE", "true"),
                ("LIFEBOAT_S3_PART_SIZE", "5MiB"),
                ("LIFEBOAT_LOG", "info"),
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{compression}: {stderr}");
        // Nothing writes to this etcd during the backup: the upload follows the stream.
        assert!(
            stderr.contains("multipart upload (streamed during the snapshot) completed"),
            "{compression}: {stderr}"
        );
        assert_eq!(server.open_uploads(), Vec::<String>::new(), "{compression}");
        let listed = s3.list(&format!("{compression}/")).await.unwrap();
        // Exactly one upload's parts: the streamed upload was completed, not redone after the checks.
        let parts = server.faults.parts_stored() - parts_before;
        let size = listed.iter().map(|m| m.size).max().unwrap();
        assert!(parts >= 3, "{compression}: not a multipart upload");
        assert_eq!(parts as u64, size.div_ceil(PART as u64), "{compression}");
        let names: Vec<_> = listed
            .iter()
            .map(|m| m.key.rsplit('/').next().unwrap().to_string())
            .collect();
        let object = etcd_lifeboat::manifest::object_name(compression);
        assert_eq!(names, ["manifest.json", object], "{compression}");
        let m: serde_json::Value =
            serde_json::from_slice(&s3.get_bytes(&listed[0].key).await.unwrap()).unwrap();
        assert_eq!(m["object_key"], listed[1].key.as_str(), "{compression}");
        assert_eq!(m["stored_size"], listed[1].size, "{compression}");
        let got = spool.path().join("got");
        s3.get_to_file(&listed[1].key, &got).await.unwrap();
        let raw = match compression {
            "zstd" => zstd::decode_all(std::fs::File::open(&got).unwrap()).unwrap(),
            _ => std::fs::read(&got).unwrap(),
        };
        assert_eq!(raw.len() as u64, m["snapshot_size"].as_u64().unwrap());
        use sha2::Digest;
        assert_eq!(
            hex::encode(sha2::Sha256::digest(&raw)),
            m["snapshot_sha256"].as_str().unwrap(),
            "{compression}"
        );
    }
}

/// The streamed upload's key is chosen before the snapshot's revision is known, so the id carries
/// the preflight revision. With writers running the snapshot's own revision (in the manifest) is
/// higher; the upload still follows the stream: one backup, uploaded once, nothing else left (no
/// object under another key, no open multipart upload).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_to_s3_under_writes_streams_once_under_the_preflight_revision() {
    let (etcd, c) = etcd_with_big_values(12, 200).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (mut c, stop) = (c.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let _ = c
                    .put(format!("/registry/events/{w}"), n.to_string(), None)
                    .await;
                n += 1;
            }
        }));
    }
    let server = Server::start().await;
    let spool = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_etcd-lifeboat"));
    cmd.arg("backup").env_clear().envs([
        ("LIFEBOAT_ETCD_ENDPOINTS", etcd.endpoint.as_str()),
        ("LIFEBOAT_STORE", &format!("s3://{BUCKET}/{PREFIX}")),
        ("LIFEBOAT_COMPRESSION", "none"),
        ("LIFEBOAT_SPOOL_DIR", spool.path().to_str().unwrap()),
        ("AWS_ENDPOINT_URL", &server.endpoint()),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", AK),
        ("AWS_SECRET_ACCESS_KEY", SK),
        ("LIFEBOAT_S3_PATH_STYLE", "true"),
        ("LIFEBOAT_S3_PART_SIZE", "5MiB"),
        ("LIFEBOAT_LOG", "info"),
    ]);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await.unwrap();
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("multipart upload (streamed during the snapshot) completed"),
        "{stderr}"
    );
    assert_eq!(server.open_uploads(), Vec::<String>::new());
    let s3 = server.s3_store(&[]).await;
    let listed = s3.list("").await.unwrap();
    let keys: Vec<_> = listed.iter().map(|m| m.key.as_str()).collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert_eq!(
        server.faults.parts_stored() as u64,
        listed[1].size.div_ceil(PART as u64),
        "uploaded more than once"
    );
    let m: serde_json::Value =
        serde_json::from_slice(&s3.get_bytes(keys[0]).await.unwrap()).unwrap();
    let id = m["backup_id"].as_str().unwrap();
    let id_rev: i64 = id.rsplit("-r").next().unwrap().parse().unwrap();
    let rev = m["revision"].as_i64().unwrap();
    assert!(
        id_rev > 12 && id_rev <= rev,
        "{id}: the id's revision is the preflight's, at most the snapshot's {rev}"
    );
    assert_eq!(
        keys,
        [
            format!("default/{id}/manifest.json"),
            format!("default/{id}/snapshot.db")
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// TLS: LIFEBOAT_S3_CA_FILE adds a trust anchor for the endpoint

/// A test CA (written to `dir/ca.pem`) and a server config for 127.0.0.1 signed by it.
fn test_ca(dir: &Path) -> (PathBuf, Arc<rustls::ServerConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![leaf.der().clone()], key)
    .unwrap();
    (ca_file, Arc::new(cfg))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_custom_ca_file_is_trusted_and_required() {
    let tmp = tempfile::tempdir().unwrap();
    let (ca_file, tls) = test_ca(tmp.path());
    let server = Server::start_with(Some(tls)).await;
    let endpoint = server.https_endpoint();
    let trusted = server
        .s3_store(&[
            ("AWS_ENDPOINT_URL", &endpoint),
            ("LIFEBOAT_S3_CA_FILE", ca_file.to_str().unwrap()),
        ])
        .await;
    trusted.put_bytes("c/b/m", b"over TLS").await.unwrap();
    assert_eq!(trusted.get_bytes("c/b/m").await.unwrap(), b"over TLS");
    // Without the CA the system roots do not know the server: a clear, final error.
    let untrusted = server
        .s3_store(&[
            ("AWS_ENDPOINT_URL", &endpoint),
            ("LIFEBOAT_STORE_MAX_ATTEMPTS", "1"),
        ])
        .await;
    let e = untrusted.get_bytes("c/b/m").await.unwrap_err().to_string();
    assert!(
        e.contains("cannot reach the S3 endpoint") && e.contains("LIFEBOAT_S3_CA_FILE"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_checksum_when_supported_round_trips() {
    // The opt-in mode (CRC on every upload, checked on download) against a store that supports it.
    let server = Server::start().await;
    let store = server
        .s3_store(&[("LIFEBOAT_S3_CHECKSUM", "when_supported")])
        .await;
    let tmp = tempfile::tempdir().unwrap();
    let bytes = data(PART + 99, 11);
    let src = write_tmp(tmp.path(), "f", &bytes);
    store.put_file("c/b/crc", &src).await.unwrap();
    let dest = tmp.path().join("back");
    store.get_to_file("c/b/crc", &dest).await.unwrap();
    assert!(std::fs::read(&dest).unwrap() == bytes);
}

/// `restore` straight from a presigned GET URL (HyperShift's `restoreSnapshotURL` pattern): a real
/// etcd 3.5.30 snapshot is uploaded raw and as zstd, each downloaded, verified and rebuilt into a
/// data dir; an expired URL is refused with the "presign a new one" message and creates nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_from_a_presigned_url() {
    let server = Server::start().await;
    let store = server.s3_store(&[]).await;
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/snap-v3530.db");
    let tmp = tempfile::tempdir().unwrap();
    let zst = tmp.path().join("snap.db.zst");
    let raw = std::fs::read(&fixture).unwrap();
    std::fs::write(&zst, zstd::encode_all(&raw[..], 1).unwrap()).unwrap();
    store.put_file("restore/raw.db", &fixture).await.unwrap();
    store.put_file("restore/snap.db.zst", &zst).await.unwrap();
    let spool = tmp.path().to_path_buf();
    for key in ["restore/raw.db", "restore/snap.db.zst"] {
        let url = server
            .presign("GET", key, SystemTime::now(), Duration::from_secs(600))
            .await;
        let data = tmp.path().join(key.replace('/', "-"));
        let (d2, sp) = (data.clone(), spool.clone());
        let out = tokio::task::spawn_blocking(move || run_restore(url, d2, sp))
            .await
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{key}: {err}");
        assert!(
            !err.contains("X-Amz-Signature="),
            "{key}: signature leaked: {err}"
        );
        assert!(
            data.join("member/wal/0000000000000000-0000000000000000.wal")
                .exists(),
            "{key}"
        );
        assert!(data.join("member/snap/db").exists(), "{key}");
    }
    let expired = server
        .presign(
            "GET",
            "restore/raw.db",
            SystemTime::now() - Duration::from_secs(3600),
            Duration::from_secs(60),
        )
        .await;
    let data = tmp.path().join("expired");
    let out = tokio::task::spawn_blocking(move || run_restore(expired, data, spool))
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains("presign a new one"), "{err}");
    assert!(!tmp.path().join("expired").exists());
}

fn run_restore(url: String, data: PathBuf, spool: PathBuf) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_etcd-lifeboat"))
        .arg("restore")
        .env_clear()
        .envs([
            ("LIFEBOAT_RESTORE_SOURCE", url.as_str()),
            ("LIFEBOAT_DATA_DIR", data.to_str().unwrap()),
            ("LIFEBOAT_SPOOL_DIR", spool.to_str().unwrap()),
            ("LIFEBOAT_STORE_MAX_ATTEMPTS", "2"),
        ])
        .output()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// End to end: read-back, early answers and URLs that expire during a real backup

/// `etcd-lifeboat backup` from `etcd` (plain http) with `envs`, spooling into `spool`.
async fn run_backup(
    etcd: &Etcd,
    spool: &Path,
    envs: Vec<(&'static str, String)>,
) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_etcd-lifeboat"));
    cmd.arg("backup")
        .env_clear()
        .env("LIFEBOAT_ETCD_ENDPOINTS", &etcd.endpoint)
        .env("LIFEBOAT_SPOOL_DIR", spool)
        .env("LIFEBOAT_CLUSTER_NAME", "c")
        .envs(envs);
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn s3_env(server: &Server) -> Vec<(&'static str, String)> {
    vec![
        ("LIFEBOAT_STORE", format!("s3://{BUCKET}/{PREFIX}")),
        ("AWS_ENDPOINT_URL", server.endpoint()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", AK.into()),
        ("AWS_SECRET_ACCESS_KEY", SK.into()),
        ("LIFEBOAT_S3_PATH_STYLE", "true".into()),
    ]
}

/// Files left in the spool (lock files aside).
fn spool_left(spool: &Path) -> Vec<std::ffi::OsString> {
    std::fs::read_dir(spool)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| !n.to_string_lossy().ends_with(".lock"))
        .collect()
}

fn stderr(out: &std::process::Output) -> String {
    format!(
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `LIFEBOAT_VERIFY_UPLOAD=full` downloads the object again and compares its sha256 with the
/// manifest's: a store that returns damaged bytes (same size, so the default HEAD check passes)
/// fails the backup with exit 5, and the damaged backup is removed before any manifest exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_upload_full_catches_a_store_that_damages_the_object() {
    let etcd = start_etcd().await;
    let mut c = etcd_client::Client::connect([etcd.endpoint.as_str()], None)
        .await
        .unwrap();
    c.put("/registry/a", data(100_000, 1), None).await.unwrap();
    let server = Server::start().await;
    let spool = tempfile::tempdir().unwrap();
    let mut env = s3_env(&server);
    env.push(("LIFEBOAT_VERIFY_UPLOAD", "full".into()));
    let out = run_backup(&etcd, spool.path(), env.clone()).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("sha256 matches"),
        "{}",
        stderr(&out)
    );
    let s3 = server.s3_store(&[]).await;
    let first = s3.list("c/").await.unwrap();
    assert_eq!(first.len(), 2, "{first:?}"); // object + manifest

    // A new revision (so a new backup id), then a store that damages what it returns.
    c.put("/registry/b", data(1000, 2), None).await.unwrap();
    server.faults.corrupt_gets.store(true, Ordering::SeqCst);
    // The default read-back (size only) cannot see it ...
    let out = run_backup(&etcd, spool.path(), s3_env(&server)).await;
    assert!(out.status.success(), "{}", stderr(&out));
    c.put("/registry/c", data(1000, 3), None).await.unwrap();
    let before = s3.list("c/").await.unwrap();
    // ... `full` does.
    let out = run_backup(&etcd, spool.path(), env).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(
        err.contains("LIFEBOAT_VERIFY_UPLOAD=full") && err.contains("damaged"),
        "{err}"
    );
    assert_eq!(
        s3.list("c/").await.unwrap(),
        before,
        "the damaged backup was left in the store"
    );
    assert!(
        spool_left(spool.path()).is_empty(),
        "{:?}",
        spool_left(spool.path())
    );
}

/// A server that refuses a presigned PUT from its headers alone (as S3 does for an expired or
/// tampered signature): reads the request head, answers 403 `AccessDenied` "Request has expired"
/// and closes with the body unread. The backup must report that answer at once — one request, no
/// retries of what would otherwise look like a connection reset — with exit 5. (On loopback hyper
/// also reads the answer when the body is already streaming; the early-answer wait in
/// `presigned.rs` closes the race that remains on real networks. This test guards the outcome.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presigned_put_refused_before_its_body_fails_at_once() {
    let (etcd, _) = etcd_with_big_values(8, 0).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = Arc::new(AtomicUsize::new(0));
    let seen = requests.clone();
    let server = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            seen.fetch_add(1, Ordering::SeqCst);
            // The request head, byte by byte: nothing of the body is read.
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match sock.read(&mut b).await {
                    Ok(1) => head.push(b[0]),
                    _ => break,
                }
            }
            // Answer a moment later, as across a real network: a client that does not wait for an
            // early answer is streaming its body by now, and the reset races the 403.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AccessDenied</Code><Message>Request has expired</Message><X-Amz-Expires>60</X-Amz-Expires></Error>";
            let _ = sock
                .write_all(
                    format!(
                        "HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                )
                .await;
            drop(sock); // closed with the body unread: the kernel answers the rest with a reset
        }
    });
    let spool = tempfile::tempdir().unwrap();
    let url = format!(
        "http://127.0.0.1:{port}/bucket/c/snapshot.db?X-Amz-Expires=60&X-Amz-Signature=SECRETSIG"
    );
    let out = run_backup(
        &etcd,
        spool.path(),
        vec![
            ("LIFEBOAT_STORE", url),
            ("LIFEBOAT_STORE_MAX_ATTEMPTS", "5".into()),
        ],
    )
    .await;
    server.abort();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(
        err.contains(INVALID) && err.contains("Request has expired"),
        "{err}"
    );
    assert!(!err.contains("SECRETSIG"), "{err}");
    assert_eq!(requests.load(Ordering::SeqCst), 1, "retried: {err}");
    assert!(!err.contains("retrying"), "{err}");
    assert!(
        spool_left(spool.path()).is_empty(),
        "{:?}",
        spool_left(spool.path())
    );
}

/// A presigned PUT URL that is valid when the backup starts but has expired by the time its
/// request is checked (held by the server past the expiry): exit 5 with "presign a new one",
/// nothing stored, the spool cleaned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presigned_url_expiring_mid_backup_is_explained() {
    let (etcd, _) = etcd_with_big_values(4, 0).await;
    let server = Server::start().await;
    let key = "c/one-shot/snapshot.db";
    let put = server
        .presign("PUT", key, SystemTime::now(), Duration::from_secs(2))
        .await;
    let manifest = server
        .presign(
            "PUT",
            "c/one-shot/manifest.json",
            SystemTime::now(),
            Duration::from_secs(600),
        )
        .await;
    // The object PUT waits 3 s at the server before its signature is checked: past the expiry.
    server.faults.delay_put_ms.store(3000, Ordering::SeqCst);
    let spool = tempfile::tempdir().unwrap();
    let out = run_backup(
        &etcd,
        spool.path(),
        vec![("LIFEBOAT_STORE", put), ("LIFEBOAT_MANIFEST_URL", manifest)],
    )
    .await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains(INVALID), "{err}");
    assert!(!err.contains("X-Amz-Signature="), "signature leaked: {err}");
    let s3 = server.s3_store(&[]).await;
    assert_eq!(
        s3.list("").await.unwrap(),
        vec![],
        "a partial backup is visible"
    );
    assert!(
        spool_left(spool.path()).is_empty(),
        "{:?}",
        spool_left(spool.path())
    );

    // A manifest URL that has already expired when the backup starts: refused before anything is
    // uploaded (a PUT URL could not delete the object again), without a single request.
    let put = server
        .presign("PUT", key, SystemTime::now(), Duration::from_secs(600))
        .await;
    let stale = server
        .presign(
            "PUT",
            "c/one-shot/manifest.json",
            SystemTime::now() - Duration::from_secs(3600),
            Duration::from_secs(60),
        )
        .await;
    let before = server.requests();
    let out = run_backup(
        &etcd,
        spool.path(),
        vec![
            ("LIFEBOAT_STORE", put.clone()),
            ("LIFEBOAT_MANIFEST_URL", stale),
        ],
    )
    .await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(
        err.contains(INVALID) && err.contains("LIFEBOAT_MANIFEST_URL expired"),
        "{err}"
    );
    assert_eq!(server.requests(), before, "something was sent: {err}");
    assert!(
        spool_left(spool.path()).is_empty(),
        "{:?}",
        spool_left(spool.path())
    );

    // A manifest URL that expires while the object uploads: the manifest PUT is refused; the
    // object (complete, verified) cannot be deleted through a PUT URL, and the log says so.
    let manifest = server
        .presign(
            "PUT",
            "c/one-shot/manifest.json",
            SystemTime::now(),
            Duration::from_secs(2),
        )
        .await;
    server.faults.delay_put_ms.store(3000, Ordering::SeqCst);
    let out = run_backup(
        &etcd,
        spool.path(),
        vec![("LIFEBOAT_STORE", put), ("LIFEBOAT_MANIFEST_URL", manifest)],
    )
    .await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains(INVALID), "{err}");
    assert!(err.contains("but its manifest was not"), "{err}");
    assert!(!err.contains("X-Amz-Signature="), "signature leaked: {err}");
    let keys: Vec<_> = s3
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(keys, vec![key.to_string()], "no manifest may exist");
    assert!(
        spool_left(spool.path()).is_empty(),
        "{:?}",
        spool_left(spool.path())
    );
}

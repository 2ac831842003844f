//! The presigned-URL backend (`LIFEBOAT_STORE=https://…?X-Amz-Signature=…`): one object behind one
//! URL that someone else signed, typically HyperShift's `restoreSnapshotURL` or a URL handed to a
//! Job by a controller that owns the credentials.
//!
//! Backup PUTs the snapshot file (streamed from disk with its `Content-Length`; refused before
//! sending anything above S3's 5 GiB single-PUT limit) and, when `LIFEBOAT_MANIFEST_URL` is set,
//! PUTs the manifest there: keys named `manifest.json` go to that URL, every other key to the
//! store URL. Verify/restore GET the object straight to disk. A URL is signed for one method, so
//! this backend cannot read back what it wrote, list or delete ([`PresignedStore::capabilities`]).
//! An error answer (403 "Request has expired", `SignatureDoesNotMatch`, or an XML/HTML page where
//! the object should be) is reported as "the presigned URL has expired or is invalid", never
//! taken as data. Plain `http://` is accepted for loopback hosts only: the signature in the URL is
//! a bearer credential. URLs are only ever shown through [`redact_url`].
//!
//! Expiry: before a backup, URLs whose `X-Amz-Date` + `X-Amz-Expires` lie in the past are refused
//! (nothing is uploaded that could not be completed). A PUT holds its body back for up to 1 s after
//! the request head, so that a store refusing the head alone (S3's 403 for an expired or tampered
//! signature) is heard at once instead of racing the body into a connection reset.

use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RANGE};
use reqwest::{Method, StatusCode};
use tokio::io::AsyncWriteExt;

use crate::config::Env;
use crate::error::{Error, Result};
use crate::fsutil::create_private;
use crate::store::net::{self, Activity, NetConfig};
use crate::store::{redact_url, Capabilities, ObjectMeta};

/// S3's limit for one PUT; bigger objects need multipart, which a presigned URL cannot do.
pub const MAX_SINGLE_PUT: u64 = 5 << 30;
/// `get_bytes` is for manifests: refuse to buffer anything bigger.
const MAX_GET_BYTES: u64 = 64 << 20;
/// The longest a PUT waits for an early answer to its headers before sending the body.
const EARLY_ANSWER: Duration = Duration::from_secs(1);
/// How much of an error body is read to explain it.
const MAX_ERROR_BODY: usize = 16 << 10;

/// A URL whose query (signature) and user info never leave this type unredacted.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(reqwest::Url);

impl SecretUrl {
    /// Parse and check `raw` (from variable `var`): http(s), a host, plain http only on loopback.
    pub fn parse(var: &str, raw: &str) -> Result<Self> {
        Self::parse_shown(
            var,
            raw,
            &redact_url(raw),
            "for a presigned URL (its signature is a credential anyone on the path could replay)",
        )
    }

    /// [`SecretUrl::parse`] for a notification URL: errors show scheme and host only, since a
    /// webhook's path may be its secret.
    ///
    /// A Pushgateway inside the cluster is usually plain `http://pushgateway.<ns>:9091`; metrics are
    /// not secret, so `plain_http_ok` lets such a URL through as long as it carries no user info
    /// and no query (where credentials would be).
    pub fn parse_notify(var: &str, raw: &str, plain_http_ok: bool) -> Result<Self> {
        let shown = crate::store::redact_to_host(raw);
        if plain_http_ok {
            if let Ok(url) = reqwest::Url::parse(raw) {
                if url.scheme() == "http"
                    && url.host_str().is_some_and(|h| !h.is_empty())
                    && url.username().is_empty()
                    && url.password().is_none()
                    && url.query().is_none()
                {
                    return Ok(SecretUrl(url));
                }
            }
        }
        Self::parse_shown(
            var,
            raw,
            &shown,
            "(the URL may carry credentials anyone on the path could replay)",
        )
    }

    fn parse_shown(var: &str, raw: &str, shown: &str, why_https: &str) -> Result<Self> {
        let url = reqwest::Url::parse(raw)
            .map_err(|e| Error::Config(format!("{var}: {shown} is not a valid URL ({e})")))?;
        let host = url.host_str().unwrap_or("");
        if host.is_empty() {
            return Err(Error::Config(format!("{var}: {shown} has no host")));
        }
        match url.scheme() {
            "https" => {}
            "http" if net::is_loopback_host(host) => {}
            "http" => {
                return Err(Error::Config(format!(
                    "{var}: {shown}: plain http:// is refused {why_https}; use https://, or http:// only on a loopback host (127.0.0.1, ::1, localhost)"
                )))
            }
            other => {
                return Err(Error::Config(format!(
                    "{var}: {shown}: unsupported scheme {other:?}; expected https://"
                )))
            }
        }
        Ok(SecretUrl(url))
    }

    /// The URL itself, credentials included: for sending, never for showing.
    pub(crate) fn url(&self) -> &reqwest::Url {
        &self.0
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(self.0.as_str()))
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({self})")
    }
}

/// Validated presigned-URL settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresignedConfig {
    object: SecretUrl,
    manifest: Option<SecretUrl>,
    net: NetConfig,
}

impl PresignedConfig {
    /// `url` came from variable `var` (for errors); the rest comes from `env`.
    pub fn from_env(env: &Env, var: &str, url: &str) -> Result<Self> {
        Ok(PresignedConfig {
            object: SecretUrl::parse(var, url)?,
            manifest: env
                .get("LIFEBOAT_MANIFEST_URL")
                .map(|u| SecretUrl::parse("LIFEBOAT_MANIFEST_URL", u))
                .transpose()?,
            net: NetConfig::from_env(env)?,
        })
    }
}

/// An opened presigned-URL store.
pub struct PresignedStore {
    client: reqwest::Client,
    object: SecretUrl,
    manifest: Option<SecretUrl>,
    net: NetConfig,
}

impl fmt::Debug for PresignedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PresignedStore({})", self.describe())
    }
}

/// One attempt's failure: worth another try, or final.
enum Failure {
    Retry(Error),
    Final(Error),
}

impl PresignedStore {
    pub fn open(cfg: &PresignedConfig) -> Result<Self> {
        net::install_crypto_provider();
        let client = reqwest::Client::builder()
            .connect_timeout(cfg.net.connect_timeout)
            .read_timeout(cfg.net.read_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("etcd-lifeboat/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Config(format!("setting up the HTTPS client: {e}")))?;
        Ok(PresignedStore {
            client,
            object: cfg.object.clone(),
            manifest: cfg.manifest.clone(),
            net: cfg.net,
        })
    }

    pub fn describe(&self) -> String {
        self.object.to_string()
    }

    pub fn capabilities(&self) -> Capabilities {
        Capabilities {
            list: false,
            delete: false,
            read_back: false,
            manifest: self.manifest.is_some(),
        }
    }

    /// The URL for `key`: the manifest URL for `…/manifest.json`, the store URL otherwise.
    fn url_for(&self, key: &str) -> Result<&SecretUrl> {
        if key.rsplit('/').next() == Some(crate::manifest::MANIFEST_NAME) {
            self.manifest.as_ref().ok_or_else(|| {
                Error::Store(format!(
                    "{key}: no presigned URL for the manifest: set LIFEBOAT_MANIFEST_URL"
                ))
            })
        } else {
            Ok(&self.object)
        }
    }

    /// Before a backup: refuse URLs that have already expired (SigV4 `X-Amz-Date` +
    /// `X-Amz-Expires`, or the `X-Goog-` equivalents) by this machine's clock, so that nothing is
    /// uploaded that cannot be completed; warn about URLs that expire within `soon`.
    pub fn check_expiry(&self, now: SystemTime, soon: Duration) -> Result<()> {
        let urls = [
            Some(("LIFEBOAT_STORE", &self.object)),
            self.manifest.as_ref().map(|m| ("LIFEBOAT_MANIFEST_URL", m)),
        ];
        for (var, url) in urls.into_iter().flatten() {
            let Some(expires) = expiry(url.url()) else {
                continue;
            };
            match expires.duration_since(now) {
                Err(ago) => {
                    return Err(invalid_url(
                        "uploading to",
                        url,
                        &format!(
                            "{var} expired {} ago by this machine's clock; nothing was uploaded",
                            humantime::format_duration(Duration::from_secs(ago.duration().as_secs()))
                        ),
                    ))
                }
                Ok(left) if left < soon => tracing::warn!(
                    "{var} ({url}) expires in {}: a backup that takes longer fails; presign it for longer",
                    humantime::format_duration(Duration::from_secs(left.as_secs()))
                ),
                Ok(_) => {}
            }
        }
        Ok(())
    }

    pub async fn put_file(&self, key: &str, src: &Path) -> Result<ObjectMeta> {
        let url = self.url_for(key)?;
        let size = std::fs::metadata(src)
            .map_err(|e| Error::io(format!("stat {}", src.display()), e))?
            .len();
        if size > MAX_SINGLE_PUT {
            return Err(Error::Store(format!(
                "{} is {size} bytes; one PUT to a presigned URL is limited to 5 GiB ({MAX_SINGLE_PUT} bytes): use LIFEBOAT_STORE=s3://bucket/prefix (multipart) or LIFEBOAT_COMPRESSION=zstd",
                src.display()
            )));
        }
        self.with_retries("uploading to", url, size, |activity| async move {
            let file = tokio::fs::File::open(src)
                .await
                .map_err(|e| Failure::Final(Error::io(format!("opening {}", src.display()), e)))?;
            let a = activity.clone();
            // Hold the body back for a moment after the headers (a hand-made `Expect:
            // 100-continue`, which hyper does not do): a store that refuses the request from its
            // headers alone (S3: 403 for an expired or tampered signature) answers before reading
            // the body and closes; if we were still sending, the reset would reach us before the
            // answer and look like a network failure worth retrying.
            let window = early_answer_window(self.net);
            let a2 = activity.clone();
            let hold = futures_util::stream::once(async move {
                tokio::time::sleep(window).await;
                a2.touch();
            })
            .filter_map(|()| std::future::ready(None::<std::io::Result<Bytes>>));
            let stream = hold.chain(
                tokio_util::io::ReaderStream::with_capacity(file, 256 << 10).map(move |chunk| {
                    a.touch();
                    chunk
                }),
            );
            let req = self
                .client
                .put(url.0.clone())
                .header(CONTENT_LENGTH, size)
                .body(reqwest::Body::wrap_stream(stream));
            let resp = self.send(req, url, "uploading to", &activity).await?;
            check_status(resp, "uploading to", url).await.map(|_| ())
        })
        .await?;
        Ok(ObjectMeta {
            key: key.to_string(),
            size,
        })
    }

    pub async fn put_bytes(&self, key: &str, bytes: &[u8]) -> Result<ObjectMeta> {
        let url = self.url_for(key)?;
        let body = Bytes::copy_from_slice(bytes);
        self.with_retries("uploading to", url, body.len() as u64, |activity| {
            let body = body.clone();
            async move {
                let req = self.client.put(url.0.clone()).body(body);
                let resp = self.send(req, url, "uploading to", &activity).await?;
                check_status(resp, "uploading to", url).await.map(|_| ())
            }
        })
        .await?;
        Ok(ObjectMeta {
            key: key.to_string(),
            size: bytes.len() as u64,
        })
    }

    /// GET `url` and return the response once its status is a success and its start does not look
    /// like an error page, with the sniffed first bytes and the announced length.
    async fn get(&self, url: &SecretUrl) -> Result<(reqwest::Response, Bytes, Option<u64>)> {
        self.with_retries("downloading", url, 0, |activity| async move {
            let req = self.client.request(Method::GET, url.0.clone());
            let resp = self.send(req, url, "downloading", &activity).await?;
            let mut resp = check_status(resp, "downloading", url).await?;
            // Read before the first chunk: afterwards reqwest reports what is left.
            let expected = resp.content_length();
            let html = resp
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|t| t.to_ascii_lowercase().starts_with("text/html"));
            let first =
                match net::until_stalled(resp.chunk(), &activity, self.net.read_timeout).await {
                    None => return Err(Failure::Retry(stalled("downloading", url, self.net))),
                    Some(Err(e)) => return Err(transport_failure("downloading", url, e)),
                    Some(Ok(c)) => c.unwrap_or_default(),
                };
            if html || looks_like_markup(&first) {
                return Err(Failure::Final(invalid_url(
                    "downloading",
                    url,
                    "the answer is an XML/HTML document, not the object",
                )));
            }
            Ok((resp, first, expected))
        })
        .await
    }

    pub async fn get_bytes(&self, key: &str) -> Result<Vec<u8>> {
        let url = self.url_for(key)?;
        let (mut resp, first, _) = self.get(url).await?;
        let mut out = first.to_vec();
        loop {
            let chunk = tokio::time::timeout(self.net.read_timeout, resp.chunk())
                .await
                .map_err(|_| stalled("downloading", url, self.net))?
                .map_err(|e| Error::Store(format!("downloading {url}: {}", err_chain(&e))))?;
            let Some(chunk) = chunk else { break };
            out.extend_from_slice(&chunk);
            if out.len() as u64 > MAX_GET_BYTES {
                return Err(Error::Store(format!(
                    "{url}: more than {MAX_GET_BYTES} bytes: too big to read into memory"
                )));
            }
        }
        Ok(out)
    }

    pub async fn get_to_file(&self, key: &str, dest: &Path) -> Result<u64> {
        let url = self.url_for(key)?;
        let (resp, first, expected) = self.get(url).await?;
        let mut file = tokio::fs::File::from_std(create_private(dest)?);
        let dest = dest.display().to_string();
        self.stream_into(url, resp, first, expected, &mut file, &dest)
            .await
    }

    /// Stream `key` into `file` (named `dest` in errors); its size.
    pub async fn get_to_writer(
        &self,
        key: &str,
        file: &mut (impl tokio::io::AsyncWrite + Unpin),
        dest: &str,
    ) -> Result<u64> {
        let url = self.url_for(key)?;
        let (resp, first, expected) = self.get(url).await?;
        self.stream_into(url, resp, first, expected, file, dest)
            .await
    }

    async fn stream_into(
        &self,
        url: &SecretUrl,
        mut resp: reqwest::Response,
        first: Bytes,
        expected: Option<u64>,
        file: &mut (impl tokio::io::AsyncWrite + Unpin),
        dest: &str,
    ) -> Result<u64> {
        let write_err = |e| Error::io(format!("writing {dest}"), e);
        file.write_all(&first).await.map_err(write_err)?;
        let mut n = first.len() as u64;
        loop {
            let chunk = tokio::time::timeout(self.net.read_timeout, resp.chunk())
                .await
                .map_err(|_| stalled("downloading", url, self.net))?
                .map_err(|e| Error::Store(format!("downloading {url}: {}", err_chain(&e))))?;
            let Some(chunk) = chunk else { break };
            file.write_all(&chunk).await.map_err(write_err)?;
            n += chunk.len() as u64;
        }
        file.flush().await.map_err(write_err)?;
        if let Some(expected) = expected {
            if expected != n {
                return Err(Error::Store(format!(
                    "downloading {url}: got {n} bytes, expected {expected}"
                )));
            }
        }
        Ok(n)
    }

    /// A one-byte ranged GET (a URL presigned for GET does not allow HEAD).
    pub async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        let url = self.url_for(key)?;
        let size = self
            .with_retries("checking", url, 0, |activity| async move {
                let req = self
                    .client
                    .request(Method::GET, url.0.clone())
                    .header(RANGE, "bytes=0-0");
                let resp = self.send(req, url, "checking", &activity).await?;
                let total = |r: &reqwest::Response| {
                    r.headers()
                        .get(CONTENT_RANGE)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.rsplit('/').next())
                        .and_then(|t| t.trim().parse::<u64>().ok())
                };
                match resp.status() {
                    StatusCode::NOT_FOUND => Ok(None),
                    StatusCode::RANGE_NOT_SATISFIABLE => Ok(Some(total(&resp).unwrap_or(0))),
                    StatusCode::PARTIAL_CONTENT => match total(&resp) {
                        Some(t) => Ok(Some(t)),
                        None => Err(Failure::Final(Error::Store(format!(
                            "checking {url}: the answer has no usable Content-Range"
                        )))),
                    },
                    _ => {
                        let resp = check_status(resp, "checking", url).await?;
                        Ok(resp.content_length())
                    }
                }
            })
            .await?;
        Ok(size.map(|size| ObjectMeta {
            key: key.to_string(),
            size,
        }))
    }

    pub fn list(&self, _prefix: &str) -> Result<Vec<ObjectMeta>> {
        Err(Error::Store(format!(
            "listing is not supported for presigned URLs ({}: a URL names one object); use LIFEBOAT_STORE=s3://bucket/prefix to list or prune",
            self.describe()
        )))
    }

    pub fn delete(&self, key: &str) -> Result<()> {
        Err(Error::Store(format!(
            "deleting {key} is not supported for presigned URLs ({}); delete it with the tool that presigned it, or use LIFEBOAT_STORE=s3://bucket/prefix",
            self.describe()
        )))
    }

    /// Send `req`, failing when nothing moves for the read timeout (a stalled upload or a server
    /// that never answers).
    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        url: &SecretUrl,
        op: &str,
        activity: &Activity,
    ) -> std::result::Result<reqwest::Response, Failure> {
        activity.touch();
        match net::until_stalled(req.send(), activity, self.net.read_timeout).await {
            None => Err(Failure::Retry(stalled(op, url, self.net))),
            Some(Err(e)) => Err(transport_failure(op, url, e)),
            Some(Ok(r)) => Ok(r),
        }
    }

    /// Run `attempt` until it succeeds, fails for good, or the attempts / operation time run out.
    /// `body_len` bytes to send extend the operation time by 1 s per MiB (a 1 MiB/s floor), so
    /// that a multi-GiB PUT is limited by the stall watchdog rather than a fixed deadline.
    async fn with_retries<T, F, Fut>(
        &self,
        op: &str,
        url: &SecretUrl,
        body_len: u64,
        mut attempt: F,
    ) -> Result<T>
    where
        F: FnMut(Activity) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, Failure>>,
    {
        let limit = self.net.operation_timeout + Duration::from_secs(body_len >> 20);
        let deadline = tokio::time::Instant::now() + limit;
        let mut n = 1;
        loop {
            let outcome = tokio::time::timeout_at(deadline, attempt(Activity::new())).await;
            let err = match outcome {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(Failure::Final(e))) => return Err(e),
                Ok(Err(Failure::Retry(e))) => e,
                Err(_) => {
                    return Err(Error::Store(format!(
                        "{op} {url}: not done after {limit:?} (LIFEBOAT_STORE_OPERATION_TIMEOUT)"
                    )))
                }
            };
            if n >= self.net.max_attempts {
                return Err(match err {
                    Error::Store(m) => Error::Store(format!("{m} (gave up after {n} attempts)")),
                    other => other,
                });
            }
            let wait = net::backoff(n);
            tracing::warn!(
                "{err}; retrying in {wait:?} (attempt {} of {})",
                n + 1,
                self.net.max_attempts
            );
            tokio::time::sleep(wait).await;
            n += 1;
        }
    }
}

/// How long a PUT waits after its headers for an early answer before it sends the body: 1 s, or a
/// quarter of the read timeout when that is shorter (the stall watchdog must not fire meanwhile).
fn early_answer_window(net: NetConfig) -> Duration {
    EARLY_ANSWER.min(net.read_timeout / 4)
}

/// When a presigned URL stops working: signing time + validity, from its query (SigV4 `X-Amz-Date`
/// `20261122T043330Z` + `X-Amz-Expires` seconds; GCS's `X-Goog-` names alike). `None` when absent.
fn expiry(url: &reqwest::Url) -> Option<SystemTime> {
    let (mut date, mut secs) = (None, None);
    for (k, v) in url.query_pairs() {
        match k.to_ascii_lowercase().as_str() {
            "x-amz-date" | "x-goog-date" => date = Some(v.into_owned()),
            "x-amz-expires" | "x-goog-expires" => secs = v.parse::<u64>().ok(),
            _ => {}
        }
    }
    let d = date?;
    if d.len() != 16 || !d.is_ascii() {
        return None;
    }
    let rfc = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &d[0..4],
        &d[4..6],
        &d[6..8],
        &d[9..11],
        &d[11..13],
        &d[13..15]
    );
    humantime::parse_rfc3339(&rfc)
        .ok()?
        .checked_add(Duration::from_secs(secs?))
}

pub(crate) fn err_chain(e: &dyn std::error::Error) -> String {
    // reqwest errors print their URL: strip it to keep the signature out of messages.
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    scrub(&out)
}

/// Replace the query of every URL in `msg` with `?REDACTED` (signatures live there).
fn scrub(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at);
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, ')' | '"' | '\'' | '<' | '>'))
            .unwrap_or(tail.len());
        let url = &tail[..end];
        match url.split_once('?') {
            Some((base, _)) => {
                out.push_str(base);
                out.push_str("?REDACTED");
            }
            None => out.push_str(url),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

fn stalled(op: &str, url: &SecretUrl, net: NetConfig) -> Error {
    Error::Store(format!(
        "{op} {url}: no progress for {:?} (LIFEBOAT_STORE_READ_TIMEOUT)",
        net.read_timeout
    ))
}

fn transport_failure(op: &str, url: &SecretUrl, e: reqwest::Error) -> Failure {
    let e2 = e.without_url();
    let msg = format!("{op} {url}: {}", err_chain(&e2));
    if e2.is_builder() {
        Failure::Final(Error::Store(msg))
    } else {
        // connect, timeout, reset, broken body: all worth another try
        Failure::Retry(Error::Store(msg))
    }
}

fn invalid_url(op: &str, url: &SecretUrl, why: &str) -> Error {
    Error::Store(format!(
        "{op} {url}: the presigned URL has expired or is invalid — presign a new one ({why}; a URL is signed for one method: PUT for backup, GET for verify/restore)"
    ))
}

/// Starts like an XML or HTML document (after optional whitespace/BOM).
fn looks_like_markup(b: &[u8]) -> bool {
    let b = b.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(b);
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let head: Vec<u8> = b[start..]
        .iter()
        .take(16)
        .map(u8::to_ascii_lowercase)
        .collect();
    [&b"<?xml"[..], b"<error", b"<!doctype", b"<html"]
        .iter()
        .any(|p| head.starts_with(p))
}

/// The text of the first `<tag>…</tag>` in `xml`.
fn xml_tag<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{tag}>"))? + start;
    Some(xml[start..end].trim())
}

/// Pass a success through; turn anything else into the error it deserves.
async fn check_status(
    resp: reqwest::Response,
    op: &str,
    url: &SecretUrl,
) -> std::result::Result<reqwest::Response, Failure> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let mut body = Vec::new();
    let mut resp = resp;
    while body.len() < MAX_ERROR_BODY {
        match tokio::time::timeout(Duration::from_secs(10), resp.chunk()).await {
            Ok(Ok(Some(c))) => body.extend_from_slice(&c),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX_ERROR_BODY)]);
    let code = xml_tag(&text, "Code").unwrap_or("");
    let message = xml_tag(&text, "Message").unwrap_or("");
    let detail = match (code, message) {
        ("", _) => format!("HTTP {}", status.as_u16()),
        (code, "") => format!("HTTP {} {code}", status.as_u16()),
        (code, message) => format!("HTTP {} {code}: {}", status.as_u16(), scrub(message)),
    };
    let expired = status == StatusCode::FORBIDDEN
        || matches!(
            code,
            "AccessDenied"
                | "SignatureDoesNotMatch"
                | "ExpiredToken"
                | "AuthorizationQueryParametersError"
        )
        || message.contains("expired");
    if expired {
        return Err(Failure::Final(invalid_url(op, url, &detail)));
    }
    let err = Error::Store(format!("{op} {url}: {detail}"));
    if status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
    {
        Err(Failure::Retry(err))
    } else if status == StatusCode::NOT_FOUND {
        Err(Failure::Final(Error::Store(format!(
            "{op} {url}: no such object ({detail})"
        ))))
    } else {
        Err(Failure::Final(err))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_only_on_loopback() {
        for ok in [
            "https://bucket.s3.amazonaws.com/k?X-Amz-Signature=abc",
            "http://127.0.0.1:9000/b/k?X-Amz-Signature=abc",
            "http://localhost/b/k",
            "http://[::1]:80/k",
        ] {
            SecretUrl::parse("LIFEBOAT_STORE", ok).unwrap();
        }
        for bad in [
            "http://10.0.0.1/b/k?X-Amz-Signature=sekrit",
            "http://s3.example.com/b/k?X-Amz-Signature=sekrit",
            "ftp://example.com/k?sig=sekrit",
            "https://?sig=sekrit",
        ] {
            let e = SecretUrl::parse("LIFEBOAT_MANIFEST_URL", bad)
                .unwrap_err()
                .to_string();
            assert!(e.contains("LIFEBOAT_MANIFEST_URL"), "{bad}: {e}");
            assert!(!e.contains("sekrit"), "{e}");
        }
        let e = SecretUrl::parse("V", "http://s3.example.com/k?X-Amz-Signature=x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("loopback"), "{e}");
    }

    #[test]
    fn urls_never_show_signatures() {
        let u = SecretUrl::parse("V", "https://h/b/k?X-Amz-Signature=deadbeef").unwrap();
        for s in [u.to_string(), format!("{u:?}")] {
            assert!(!s.contains("deadbeef"), "{s}");
        }
        assert_eq!(
            scrub("error sending request for url (https://h/k?X-Amz-Signature=deadbeef): reset"),
            "error sending request for url (https://h/k?REDACTED): reset"
        );
        assert_eq!(
            scrub("a http://h/x?s=1 b https://h/y c"),
            "a http://h/x?REDACTED b https://h/y c"
        );
    }

    #[test]
    fn markup_is_recognised() {
        for m in [
            &b"<?xml version=\"1.0\"?><Error>"[..],
            b"  <Error><Code>AccessDenied</Code>",
            b"\xEF\xBB\xBF<!DOCTYPE html>",
            b"<HTML><body>login</body>",
        ] {
            assert!(looks_like_markup(m), "{}", String::from_utf8_lossy(m));
        }
        for d in [&b"\0\0\0\0\0\0\0\0"[..], b"{\"format_version\":1}", b""] {
            assert!(!looks_like_markup(d));
        }
        let x = "<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>";
        assert_eq!(xml_tag(x, "Code"), Some("AccessDenied"));
        assert_eq!(xml_tag(x, "Message"), Some("Request has expired"));
        assert_eq!(xml_tag(x, "Nope"), None);
    }

    #[test]
    fn expiry_is_read_from_the_signature_query() {
        let u = |q: &str| reqwest::Url::parse(&format!("https://h/b/k?{q}")).unwrap();
        let t0 = humantime::parse_rfc3339("2026-11-22T04:33:30Z").unwrap();
        assert_eq!(
            expiry(&u(
                "X-Amz-Date=20261122T043330Z&X-Amz-Expires=3600&X-Amz-Signature=s"
            )),
            Some(t0 + Duration::from_secs(3600))
        );
        assert_eq!(
            expiry(&u("x-goog-date=20261122T043330Z&x-goog-expires=60")),
            Some(t0 + Duration::from_secs(60))
        );
        // Absurd validity: no overflow, just "no expiry known".
        assert_eq!(
            expiry(&u(&format!(
                "X-Amz-Date=20261122T043330Z&X-Amz-Expires={}",
                u64::MAX
            ))),
            None
        );
        for none in [
            "X-Amz-Signature=s",
            "X-Amz-Date=2026&X-Amz-Expires=1",
            "X-Amz-Date=20261122T043330Z",
        ] {
            assert_eq!(expiry(&u(none)), None, "{none}");
        }
        let env = Env::from_pairs([(
            "LIFEBOAT_MANIFEST_URL",
            "https://h/b/m?X-Amz-Date=20261122T043330Z&X-Amz-Expires=60&X-Amz-Signature=sekrit",
        )]);
        let cfg = PresignedConfig::from_env(
            &env,
            "LIFEBOAT_STORE",
            "https://h/b/k?X-Amz-Date=20261122T043330Z&X-Amz-Expires=86400&X-Amz-Signature=sekrit",
        )
        .unwrap();
        let s = PresignedStore::open(&cfg).unwrap();
        let soon = Duration::from_secs(600);
        s.check_expiry(t0 + Duration::from_secs(59), soon).unwrap();
        let e = s
            .check_expiry(t0 + Duration::from_secs(120), soon)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("presign a new one") && e.contains("LIFEBOAT_MANIFEST_URL expired 1m ago"),
            "{e}"
        );
        assert!(!e.contains("sekrit"), "{e}");
    }

    #[test]
    fn manifest_key_needs_its_own_url() {
        let cfg =
            PresignedConfig::from_env(&Env::default(), "V", "https://h/b/snap.db?sig=1").unwrap();
        let s = PresignedStore::open(&cfg).unwrap();
        assert!(!s.capabilities().manifest);
        let e = s.url_for("c/id/manifest.json").unwrap_err().to_string();
        assert!(e.contains("LIFEBOAT_MANIFEST_URL"), "{e}");
        assert_eq!(s.url_for("c/id/snapshot.db").unwrap(), &cfg.object);
        assert!(s
            .list("")
            .unwrap_err()
            .to_string()
            .contains("not supported for presigned URLs"));
        assert!(s
            .delete("k")
            .unwrap_err()
            .to_string()
            .contains("not supported for presigned URLs"));
    }
}

//! The S3 backend (`LIFEBOAT_STORE=s3://bucket/prefix`): AWS S3 and S3-compatible stores (MinIO,
//! Ceph RGW, …) through `aws-sdk-s3`, with the AWS default credential chain and ring as the only TLS
//! crypto provider.
//!
//! Uploads: an object of at most one part (`LIFEBOAT_S3_PART_SIZE`) is one `PutObject`; a larger
//! one is a multipart upload ([`GrowingUpload`]) whose parts are file ranges read as they are sent
//! (never buffered whole), at most `LIFEBOAT_S3_PARTS_IN_FLIGHT` at once, so memory does not depend
//! on the part size or the file size. The file may still be growing: a backup uploads the spool (or
//! the zstd output) while the snapshot streams, each part as soon as its bytes exist. A multipart
//! upload is completed only when every part is stored and the caller's checks passed, and aborted
//! on every other path: on error (awaited), and when the upload is dropped on SIGTERM (the guard
//! hands the abort to `shutdown::spawn_cleanup`, which the command runner awaits before exiting).
//! Nothing partial is ever listed.
//!
//! Requests are retried by the SDK's standard retry strategy (5xx, throttling, timeouts and
//! connection errors; never other 4xx) within `LIFEBOAT_STORE_*` timeouts. Checksums default to
//! `when_required`: the 2025 SDKs' default (a CRC on every upload) breaks many S3-compatible stores.
//! Errors are translated into what to do next (wrong secret, missing bucket, wrong region, clock
//! skew); credentials never appear in `Debug` output or logs.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aws_config::BehaviorVersion;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{
    CompletedMultipartUpload, CompletedPart, ServerSideEncryption, StorageClass,
};
use aws_sdk_s3::Client;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode, TlsContext, TrustStore};
use tokio::io::AsyncWriteExt;

use crate::config::Env;
use crate::error::{Error, Result};
use crate::fsutil::create_private;
use crate::spool::GrowingFile;
use crate::store::net::{self, NetConfig};
use crate::store::ObjectMeta;

const MIB: u64 = 1 << 20;
/// S3's smallest part (except the last).
const MIN_PART_SIZE: u64 = 5 * MIB;
/// S3's largest part.
const MAX_PART_SIZE: u64 = 5 << 30;
/// S3's most parts per upload.
const MAX_PARTS: u64 = 10_000;
/// Read size of a part body streamed from a file (per part in flight).
const READ_BUFFER: usize = 64 << 10;
/// `get_bytes` is for manifests: refuse to buffer anything bigger.
const MAX_GET_BYTES: u64 = 64 * MIB;

/// Server-side encryption requested on upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sse {
    Aes256,
    Kms { key_id: Option<String> },
}

/// Static keys from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`.
#[derive(Clone, PartialEq, Eq)]
struct StaticKeys {
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
}

impl fmt::Debug for StaticKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "StaticKeys {{ access_key_id: {:?}, secret_access_key: REDACTED, session_token: {} }}",
            self.access_key_id,
            if self.session_token.is_some() {
                "REDACTED"
            } else {
                "None"
            }
        )
    }
}

/// Validated S3 settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    pub bucket: String,
    pub prefix: String,
    region: Option<String>,
    /// (variable it came from, URL)
    endpoint: Option<(&'static str, String)>,
    path_style: bool,
    /// (file, PEM bytes): an extra trust anchor for the endpoint.
    ca: Option<(PathBuf, Vec<u8>)>,
    sse: Option<Sse>,
    storage_class: Option<StorageClass>,
    checksum_when_supported: bool,
    pub part_size: u64,
    pub parts_in_flight: usize,
    keys: Option<StaticKeys>,
    net: NetConfig,
}

/// `16MiB`, `5M`, `8388608`, `1GiB` → bytes.
fn parse_size(name: &str, raw: &str) -> Result<u64> {
    let s = raw.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => 0,
    };
    num.parse::<u64>()
        .ok()
        .filter(|_| mult > 0)
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| {
            Error::Config(format!(
                "{name}: expected a size like `16MiB` or `8388608`, got {raw:?}"
            ))
        })
}

fn validate_endpoint(var: &str, url: &str) -> Result<()> {
    let parsed = reqwest::Url::parse(url).map_err(|e| {
        Error::Config(format!(
            "{var}: expected an http(s)://host[:port] URL, got {:?} ({e})",
            crate::store::redact_url(url)
        ))
    })?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(Error::Config(format!(
            "{var}: expected an http(s)://host[:port] URL, got {:?}",
            crate::store::redact_url(url)
        )));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() || parsed.query().is_some() {
        return Err(Error::Config(format!(
            "{var}: the endpoint must not carry credentials or a query; credentials come from the AWS credential chain"
        )));
    }
    Ok(())
}

impl S3Config {
    pub fn from_env(env: &Env, bucket: &str, prefix: &str) -> Result<Self> {
        let region = env
            .first(&["AWS_REGION", "AWS_DEFAULT_REGION"])
            .map(|(_, v)| v.to_string());
        let endpoint = env
            .first(&["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"])
            .map(|(n, v)| (n, v.to_string()));
        if let Some((var, url)) = &endpoint {
            validate_endpoint(var, url)?;
        }
        let ca = match env.get("LIFEBOAT_S3_CA_FILE") {
            None => None,
            Some(p) => {
                let path = PathBuf::from(p);
                let pem = std::fs::read(&path).map_err(|e| {
                    Error::Config(format!("LIFEBOAT_S3_CA_FILE: cannot read {p}: {e}"))
                })?;
                check_ca_pem(&pem)
                    .map_err(|why| Error::Config(format!("LIFEBOAT_S3_CA_FILE: {p}: {why}")))?;
                Some((path, pem))
            }
        };
        let sse = match env
            .choice("LIFEBOAT_S3_SSE", "none", &["none", "aes256", "aws:kms"])?
            .as_str()
        {
            "aes256" => Some(Sse::Aes256),
            "aws:kms" => Some(Sse::Kms {
                key_id: env.get("LIFEBOAT_S3_SSE_KMS_KEY_ID").map(str::to_string),
            }),
            _ => None,
        };
        if env.get("LIFEBOAT_S3_SSE_KMS_KEY_ID").is_some() && !matches!(sse, Some(Sse::Kms { .. }))
        {
            return Err(Error::Config(
                "LIFEBOAT_S3_SSE_KMS_KEY_ID: only used with LIFEBOAT_S3_SSE=aws:kms".into(),
            ));
        }
        let storage_class = match env.get("LIFEBOAT_S3_STORAGE_CLASS") {
            None => None,
            Some(raw) => {
                let upper = raw.to_ascii_uppercase();
                if !StorageClass::values().contains(&upper.as_str()) {
                    return Err(Error::Config(format!(
                        "LIFEBOAT_S3_STORAGE_CLASS: expected one of {}, got {raw:?}",
                        StorageClass::values().join(", ")
                    )));
                }
                Some(StorageClass::from(upper.as_str()))
            }
        };
        let checksum_when_supported = env.choice(
            "LIFEBOAT_S3_CHECKSUM",
            "when_required",
            &["when_required", "when_supported"],
        )? == "when_supported";
        let part_size = parse_size(
            "LIFEBOAT_S3_PART_SIZE",
            env.get("LIFEBOAT_S3_PART_SIZE").unwrap_or("16MiB"),
        )?;
        if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&part_size) {
            return Err(Error::Config(format!(
                "LIFEBOAT_S3_PART_SIZE: expected 5MiB to 5GiB (S3's part limits), got {part_size} bytes"
            )));
        }
        let parts_in_flight = env.u64("LIFEBOAT_S3_PARTS_IN_FLIGHT", 4)?;
        if !(1..=64).contains(&parts_in_flight) {
            return Err(Error::Config(format!(
                "LIFEBOAT_S3_PARTS_IN_FLIGHT: expected 1 to 64, got {parts_in_flight}"
            )));
        }
        let keys = match (
            env.get("AWS_ACCESS_KEY_ID"),
            env.get("AWS_SECRET_ACCESS_KEY"),
        ) {
            (Some(id), Some(secret)) => Some(StaticKeys {
                access_key_id: id.to_string(),
                secret_access_key: secret.to_string(),
                session_token: env.get("AWS_SESSION_TOKEN").map(str::to_string),
            }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(Error::Config(
                    "AWS_SECRET_ACCESS_KEY: not set, but AWS_ACCESS_KEY_ID is".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(Error::Config(
                    "AWS_ACCESS_KEY_ID: not set, but AWS_SECRET_ACCESS_KEY is".into(),
                ))
            }
        };
        Ok(S3Config {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            region,
            endpoint,
            path_style: env.bool("LIFEBOAT_S3_PATH_STYLE", false)?,
            ca,
            sse,
            storage_class,
            checksum_when_supported,
            part_size,
            parts_in_flight: parts_in_flight as usize,
            keys,
            net: NetConfig::from_env(env)?,
        })
    }
}

/// Every PEM certificate in `pem` must parse as a trust anchor (the SDK panics on a bad one later).
fn check_ca_pem(pem: &[u8]) -> std::result::Result<(), String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate bundle ({e})"))?;
    if certs.is_empty() {
        return Err("no PEM certificate (-----BEGIN CERTIFICATE-----) in the file".into());
    }
    let mut roots = rustls::RootCertStore::empty();
    for (i, c) in certs.into_iter().enumerate() {
        roots
            .add(c)
            .map_err(|e| format!("certificate #{} is not a usable CA ({e})", i + 1))?;
    }
    Ok(())
}

/// An opened S3 store.
pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
    sse: Option<Sse>,
    storage_class: Option<StorageClass>,
    part_size: u64,
    parts_in_flight: usize,
    net: NetConfig,
}

impl fmt::Debug for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "S3Store({})", self.describe())
    }
}

impl S3Store {
    /// Build the client and resolve credentials once (a missing credential source is reported
    /// here, before any work is done). No request is sent to the bucket.
    pub async fn open(cfg: &S3Config) -> Result<Self> {
        net::install_crypto_provider();
        let mut trust = TrustStore::default();
        if let Some((_, pem)) = &cfg.ca {
            trust = trust.with_pem_certificate(pem.clone());
        }
        let tls_context = TlsContext::builder()
            .with_trust_store(trust)
            .build()
            .map_err(|e| Error::Config(format!("LIFEBOAT_S3_CA_FILE: {e}")))?;
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::rustls(CryptoMode::Ring))
            .tls_context(tls_context)
            .build_https();
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(cfg.net.connect_timeout)
            .read_timeout(cfg.net.read_timeout)
            .operation_timeout(cfg.net.operation_timeout)
            .build();
        let retry = RetryConfig::standard().with_max_attempts(cfg.net.max_attempts);
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .timeout_config(timeouts)
            .retry_config(retry);
        if let Some(r) = &cfg.region {
            loader = loader.region(Region::new(r.clone()));
        }
        if let Some((_, url)) = &cfg.endpoint {
            loader = loader.endpoint_url(url.clone());
        }
        if let Some(k) = &cfg.keys {
            loader = loader.credentials_provider(Credentials::new(
                k.access_key_id.clone(),
                k.secret_access_key.clone(),
                k.session_token.clone(),
                None,
                "environment",
            ));
        }
        let sdk = loader.load().await;
        let region = match sdk.region() {
            Some(r) => r.clone(),
            None if cfg.endpoint.is_some() => Region::new("us-east-1"),
            None => {
                return Err(Error::Config(
                    "AWS_REGION: not set, and no region was found in the AWS profile or instance metadata; set it to the bucket's region".into(),
                ))
            }
        };
        let creds = sdk
            .credentials_provider()
            .ok_or_else(|| Error::Config("no AWS credential provider could be set up".into()))?;
        if let Err(e) = aws_sdk_s3::config::ProvideCredentials::provide_credentials(&creds).await {
            return Err(Error::Config(format!(
                "no AWS credentials found for s3://{} (tried AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, web identity (IRSA), the AWS profile and instance metadata): {}",
                cfg.bucket,
                crate::error::chain(&e)
            )));
        }
        let (calc, validate) = if cfg.checksum_when_supported {
            (
                RequestChecksumCalculation::WhenSupported,
                ResponseChecksumValidation::WhenSupported,
            )
        } else {
            (
                RequestChecksumCalculation::WhenRequired,
                ResponseChecksumValidation::WhenRequired,
            )
        };
        let conf = aws_sdk_s3::config::Builder::from(&sdk)
            .region(region)
            .force_path_style(cfg.path_style)
            .request_checksum_calculation(calc)
            .response_checksum_validation(validate)
            .build();
        if let Some((var, url)) = &cfg.endpoint {
            if url.to_ascii_lowercase().starts_with("http://") {
                tracing::warn!("{var} is plain http: backups travel unencrypted");
            }
        }
        Ok(S3Store {
            client: Client::from_conf(conf),
            bucket: cfg.bucket.clone(),
            prefix: cfg.prefix.clone(),
            sse: cfg.sse.clone(),
            storage_class: cfg.storage_class.clone(),
            part_size: cfg.part_size,
            parts_in_flight: cfg.parts_in_flight,
            net: cfg.net,
        })
    }

    pub fn describe(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }

    fn full_key(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        }
    }

    fn url(&self, full_key: &str) -> String {
        format!("s3://{}/{full_key}", self.bucket)
    }

    fn sse_type(&self) -> Option<ServerSideEncryption> {
        match self.sse {
            Some(Sse::Aes256) => Some(ServerSideEncryption::Aes256),
            Some(Sse::Kms { .. }) => Some(ServerSideEncryption::AwsKms),
            None => None,
        }
    }

    fn kms_key(&self) -> Option<String> {
        match &self.sse {
            Some(Sse::Kms { key_id }) => key_id.clone(),
            _ => None,
        }
    }

    pub async fn put_file(&self, key: &str, src: &Path) -> Result<ObjectMeta> {
        let file =
            File::open(src).map_err(|e| Error::io(format!("opening {}", src.display()), e))?;
        let size = file
            .metadata()
            .map_err(|e| Error::io(format!("stat {}", src.display()), e))?
            .len();
        if size <= self.part_size {
            let body = file_range(src, 0, size)
                .await
                .map_err(|e| Error::io(format!("reading {}", src.display()), e))?;
            return self.put_object(key, body, size).await;
        }
        let mut upload = self.growing_upload(
            key,
            Arc::new(GrowingFile::complete(file, size)),
            src.to_path_buf(),
        );
        match upload.drive().await {
            Ok(_) => upload.complete().await,
            Err(e) => {
                upload.abort().await;
                Err(e)
            }
        }
    }

    pub async fn put_bytes(&self, key: &str, bytes: &[u8]) -> Result<ObjectMeta> {
        self.put_object(key, ByteStream::from(bytes.to_vec()), bytes.len() as u64)
            .await
    }

    /// One `PutObject`; `body` must be retryable (in memory, or a file range).
    async fn put_object(&self, key: &str, body: ByteStream, size: u64) -> Result<ObjectMeta> {
        let full = self.full_key(key);
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&full)
            .content_length(size as i64)
            .body(body)
            .set_server_side_encryption(self.sse_type())
            .set_ssekms_key_id(self.kms_key())
            .set_storage_class(self.storage_class.clone())
            .send()
            .await
            .map_err(|e| s3_error("uploading", &self.bucket, &self.url(&full), e))?;
        Ok(ObjectMeta {
            key: key.to_string(),
            size,
        })
    }

    /// A multipart upload of `key` fed from `src`, which may still be growing (the spool while the
    /// snapshot streams, or the zstd output while it is written): see [`GrowingUpload`]. `reopen`
    /// is a path that opens the same file for the parts' bodies (`src`'s own path, or for a file
    /// that will be renamed, [`reopen_path`]).
    pub fn growing_upload(
        &self,
        key: &str,
        src: Arc<GrowingFile>,
        reopen: PathBuf,
    ) -> GrowingUpload<'_> {
        let full = self.full_key(key);
        GrowingUpload {
            store: self,
            key: key.to_string(),
            url: self.url(&full),
            full,
            src,
            reopen,
            upload_id: None,
            guard: None,
            in_flight: tokio::task::JoinSet::new(),
            done: Vec::new(),
            queued: 0,
            next_part: 1,
            final_len: None,
        }
    }

    /// Start a GET of `key`: the object's display URL (for messages) and the SDK response.
    async fn get_object(
        &self,
        key: &str,
    ) -> Result<(String, aws_sdk_s3::operation::get_object::GetObjectOutput)> {
        let full = self.full_key(key);
        let url = self.url(&full);
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| s3_error("downloading", &self.bucket, &url, e))?;
        Ok((url, out))
    }

    pub async fn get_bytes(&self, key: &str) -> Result<Vec<u8>> {
        let (url, out) = self.get_object(key).await?;
        if out.content_length().unwrap_or(0) as u64 > MAX_GET_BYTES {
            return Err(Error::Store(format!(
                "{url} is {} bytes: too big to read into memory",
                out.content_length().unwrap_or(0)
            )));
        }
        let data =
            out.body.collect().await.map_err(|e| {
                Error::Store(format!("downloading {url}: {}", crate::error::chain(&e)))
            })?;
        Ok(data.into_bytes().to_vec())
    }

    pub async fn get_to_file(&self, key: &str, dest: &Path) -> Result<u64> {
        let mut file = tokio::fs::File::from_std(create_private(dest)?);
        self.get_to_writer(key, &mut file, &dest.display().to_string())
            .await
    }

    /// Stream `key` into `file` (named `dest` in errors); its size.
    pub async fn get_to_writer(
        &self,
        key: &str,
        file: &mut (impl tokio::io::AsyncWrite + Unpin),
        dest: &str,
    ) -> Result<u64> {
        let (url, mut out) = self.get_object(key).await?;
        let mut n = 0u64;
        loop {
            let chunk = tokio::time::timeout(self.net.read_timeout, out.body.try_next())
                .await
                .map_err(|_| {
                    Error::Store(format!(
                        "downloading {url}: no data for {:?} (LIFEBOAT_STORE_READ_TIMEOUT)",
                        self.net.read_timeout
                    ))
                })?
                .map_err(|e| {
                    Error::Store(format!("downloading {url}: {}", crate::error::chain(&e)))
                })?;
            let Some(chunk) = chunk else { break };
            file.write_all(&chunk)
                .await
                .map_err(|e| Error::io(format!("writing {dest}"), e))?;
            n += chunk.len() as u64;
        }
        file.flush()
            .await
            .map_err(|e| Error::io(format!("writing {dest}"), e))?;
        if let Some(expected) = out.content_length() {
            if expected as u64 != n {
                return Err(Error::Store(format!(
                    "downloading {url}: got {n} bytes, expected {expected}"
                )));
            }
        }
        Ok(n)
    }

    pub async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        let full = self.full_key(key);
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
        {
            Ok(out) => Ok(Some(ObjectMeta {
                key: key.to_string(),
                size: out.content_length().unwrap_or(0).max(0) as u64,
            })),
            Err(SdkError::ServiceError(e)) if e.err().is_not_found() => Ok(None),
            Err(e) => Err(s3_error("checking", &self.bucket, &self.url(&full), e)),
        }
    }

    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let strip = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let full_prefix = format!("{strip}{prefix}");
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&full_prefix)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page =
                page.map_err(|e| s3_error("listing", &self.bucket, &self.url(&full_prefix), e))?;
            for obj in page.contents() {
                let Some(k) = obj.key() else { continue };
                let Some(rel) = k.strip_prefix(&strip) else {
                    continue;
                };
                out.push(ObjectMeta {
                    key: rel.to_string(),
                    size: obj.size().unwrap_or(0).max(0) as u64,
                });
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    pub async fn delete(&self, key: &str) -> Result<()> {
        let full = self.full_key(key);
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| s3_error("deleting", &self.bucket, &self.url(&full), e))?;
        Ok(())
    }
}

/// The body of one part: `len` bytes at `offset` of the file at `path`, read as the request is
/// sent (`READ_BUFFER` at a time) and reopened on a retry: a part is never held in memory, so
/// memory does not grow with the part size. Such a body is signed `UNSIGNED-PAYLOAD` (the SDK signs only bodies
/// it holds in memory), over http as over https.
async fn file_range(path: &Path, offset: u64, len: u64) -> std::io::Result<ByteStream> {
    ByteStream::read_from()
        .path(path)
        .offset(offset)
        .length(Length::Exact(len))
        .buffer_size(READ_BUFFER)
        .build()
        .await
        .map_err(std::io::Error::other)
}

/// A path that reopens `file` even after it was renamed: `/proc/self/fd/<fd>` (Linux; the
/// descriptor must stay open while the path is used). `None` without `/proc`.
pub fn reopen_path(file: &File) -> Option<PathBuf> {
    use std::os::fd::AsRawFd;
    let p = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
    p.exists().then_some(p)
}

/// A multipart upload fed from a file that may still be growing. [`GrowingUpload::drive`] sends
/// each part as soon as its byte range is complete, with at most `LIFEBOAT_S3_PARTS_IN_FLIGHT`
/// parts in flight (each read from the file as it is sent); the last part is the remainder once
/// the writer finished. The upload is created only when the file holds more than one part: a
/// smaller file is left to one `PutObject` ([`GrowingUpload::started`] says which). Nothing is
/// visible until [`GrowingUpload::complete`], which the caller calls only after its own checks
/// passed; [`GrowingUpload::abort`] (awaited) or dropping it (SIGTERM: the abort is handed to
/// `shutdown::spawn_cleanup`) removes every uploaded part.
pub struct GrowingUpload<'a> {
    store: &'a S3Store,
    key: String,
    full: String,
    url: String,
    src: Arc<GrowingFile>,
    reopen: PathBuf,
    upload_id: Option<String>,
    guard: Option<AbortOnDrop>,
    in_flight: tokio::task::JoinSet<Result<CompletedPart>>,
    done: Vec<CompletedPart>,
    /// Bytes handed to parts so far.
    queued: u64,
    next_part: u64,
    final_len: Option<u64>,
}

impl GrowingUpload<'_> {
    /// Whether the multipart upload exists (the file has more than one part).
    pub fn started(&self) -> bool {
        self.upload_id.is_some()
    }

    /// Upload every part as its bytes arrive, until the writer finished and every part is
    /// stored; returns the file's final length. Cancel-safe: dropping the future leaves the
    /// upload to [`GrowingUpload::abort`] or to the drop guard. A failed part, a failed writer or a
    /// part beyond S3's 10,000 is an error (the caller aborts).
    pub async fn drive(&mut self) -> Result<u64> {
        let part_size = self.store.part_size;
        let len = loop {
            // One byte beyond the part before the upload exists: a file of exactly one part is a
            // single PutObject.
            let want = self.queued + part_size + u64::from(!self.started());
            let w = tokio::select! {
                w = self.src.wait_written(want) => w.map_err(|e| Error::io(format!("reading the upload source of {}", self.url), e))?,
                Some(r) = self.in_flight.join_next(), if !self.in_flight.is_empty() => {
                    self.done.push(part_result(r)?);
                    continue;
                }
            };
            if w.written >= want {
                self.send_part(part_size).await?;
                continue;
            }
            if let Some(len) = w.finished {
                if self.started() && len > self.queued {
                    self.send_part(len - self.queued).await?;
                }
                break len;
            }
        };
        while let Some(r) = self.in_flight.join_next().await {
            self.done.push(part_result(r)?);
        }
        self.final_len = Some(len);
        Ok(len)
    }

    /// Queue the next part (`len` bytes from `queued`), creating the upload first if needed and
    /// waiting for a free slot.
    async fn send_part(&mut self, len: u64) -> Result<()> {
        let number = self.next_part;
        if number > MAX_PARTS {
            return Err(Error::Config(format!(
                "LIFEBOAT_S3_PART_SIZE: {} needs more than {MAX_PARTS} parts of {} bytes (S3's limit): raise the part size",
                self.url, self.store.part_size
            )));
        }
        if !self.started() {
            self.create().await?;
        }
        while self.in_flight.len() >= self.store.parts_in_flight {
            let r = self.in_flight.join_next().await;
            match r {
                Some(r) => self.done.push(part_result(r)?),
                None => break,
            }
        }
        let offset = self.queued;
        self.queued += len;
        self.next_part += 1;
        let s = self.store;
        let (client, bucket, full, url) = (
            s.client.clone(),
            s.bucket.clone(),
            self.full.clone(),
            self.url.clone(),
        );
        let upload_id = self.upload_id.clone().unwrap_or_default();
        let (src, path) = (self.src.clone(), self.reopen.clone());
        tracing::trace!(part = number, offset, len, "uploading part");
        self.in_flight.spawn(async move {
            let body = file_range(&path, offset, len)
                .await
                .map_err(|e| Error::io(format!("reading part {number} of the upload source"), e))?;
            let out = client
                .upload_part()
                .bucket(&bucket)
                .key(&full)
                .upload_id(&upload_id)
                .part_number(number as i32)
                .content_length(len as i64)
                .body(body)
                .send()
                .await
                .map_err(|e| s3_error(&format!("uploading part {number} of"), &bucket, &url, e))?;
            drop(src); // the descriptor behind `path` stays open until the part is stored
            Ok(CompletedPart::builder()
                .part_number(number as i32)
                .set_e_tag(out.e_tag().map(str::to_string))
                .build())
        });
        Ok(())
    }

    async fn create(&mut self) -> Result<()> {
        let s = self.store;
        let created = s
            .client
            .create_multipart_upload()
            .bucket(&s.bucket)
            .key(&self.full)
            .set_server_side_encryption(s.sse_type())
            .set_ssekms_key_id(s.kms_key())
            .set_storage_class(s.storage_class.clone())
            .send()
            .await
            .map_err(|e| s3_error("starting the multipart upload of", &s.bucket, &self.url, e))?;
        let id = created
            .upload_id()
            .ok_or_else(|| {
                Error::Store(format!(
                    "{}: the store returned no multipart upload id",
                    self.url
                ))
            })?
            .to_string();
        self.guard = Some(AbortOnDrop {
            client: s.client.clone(),
            bucket: s.bucket.clone(),
            key: self.full.clone(),
            upload_id: Some(id.clone()),
        });
        self.upload_id = Some(id);
        tracing::debug!(url = %self.url, part_size = s.part_size, "multipart upload started");
        Ok(())
    }

    /// Complete the upload after [`GrowingUpload::drive`] returned: the object becomes visible. On
    /// failure the upload is aborted.
    pub async fn complete(mut self) -> Result<ObjectMeta> {
        let (Some(id), Some(len)) = (self.upload_id.clone(), self.final_len) else {
            self.abort().await;
            return Err(Error::Internal(
                "multipart upload completed before all its parts were sent".into(),
            ));
        };
        let mut parts = std::mem::take(&mut self.done);
        parts.sort_by_key(|p| p.part_number());
        let s = self.store;
        let r = s
            .client
            .complete_multipart_upload()
            .bucket(&s.bucket)
            .key(&self.full)
            .upload_id(&id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await;
        match r {
            Ok(_) => {
                if let Some(g) = self.guard.take() {
                    g.disarm();
                }
                Ok(ObjectMeta {
                    key: self.key.clone(),
                    size: len,
                })
            }
            Err(e) => {
                let e = s3_error(
                    "completing the multipart upload of",
                    &s.bucket,
                    &self.url,
                    e,
                );
                self.abort().await;
                Err(e)
            }
        }
    }

    /// Stop sending parts and abort the upload (awaited): nothing is left on the store.
    pub async fn abort(mut self) {
        self.in_flight.abort_all();
        while self.in_flight.join_next().await.is_some() {}
        if let Some(g) = self.guard.take() {
            g.abort_now().await;
        }
    }
}

fn part_result(
    r: std::result::Result<Result<CompletedPart>, tokio::task::JoinError>,
) -> Result<CompletedPart> {
    r.map_err(|e| Error::Internal(format!("part upload task failed: {e}")))?
}

/// Aborts a multipart upload unless disarmed: awaited on the error path, spawned (and awaited by
/// the command runner) when the upload future is dropped.
struct AbortOnDrop {
    client: Client,
    bucket: String,
    key: String,
    upload_id: Option<String>,
}

impl AbortOnDrop {
    fn disarm(mut self) {
        self.upload_id = None;
    }

    async fn abort_now(mut self) {
        if let Some(id) = self.upload_id.take() {
            abort_upload(
                self.client.clone(),
                self.bucket.clone(),
                self.key.clone(),
                id,
            )
            .await;
        }
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(id) = self.upload_id.take() {
            let what = format!(
                "abort multipart upload {id} of s3://{}/{}",
                self.bucket, self.key
            );
            crate::shutdown::spawn_cleanup(
                &what,
                abort_upload(
                    self.client.clone(),
                    self.bucket.clone(),
                    self.key.clone(),
                    id,
                ),
            );
        }
    }
}

async fn abort_upload(client: Client, bucket: String, key: String, upload_id: String) {
    match client
        .abort_multipart_upload()
        .bucket(&bucket)
        .key(&key)
        .upload_id(&upload_id)
        .send()
        .await
    {
        Ok(_) => tracing::info!("aborted the multipart upload of s3://{bucket}/{key}"),
        Err(e) => tracing::warn!(
            "could not abort multipart upload {upload_id} of s3://{bucket}/{key} ({}); its parts cost storage until a lifecycle rule (AbortIncompleteMultipartUpload) removes them",
            s3_error("aborting", &bucket, &key, e)
        ),
    }
}

/// Translate an SDK error into what went wrong and what to do about it.
fn s3_error<E>(op: &str, bucket: &str, target: &str, err: SdkError<E>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    let msg = match &err {
        SdkError::TimeoutError(_) => format!(
            "{op} {target}: timed out after retries (LIFEBOAT_STORE_OPERATION_TIMEOUT / LIFEBOAT_STORE_READ_TIMEOUT)"
        ),
        SdkError::DispatchFailure(d) if d.is_timeout() => format!(
            "{op} {target}: timed out (LIFEBOAT_STORE_CONNECT_TIMEOUT / LIFEBOAT_STORE_READ_TIMEOUT): {}",
            crate::error::chain(&err)
        ),
        SdkError::DispatchFailure(_) => format!(
            "{op} {target}: cannot reach the S3 endpoint (check AWS_ENDPOINT_URL / network / LIFEBOAT_S3_CA_FILE): {}",
            crate::error::chain(&err)
        ),
        SdkError::ConstructionFailure(_) => format!(
            "{op} {target}: could not build the request: {}",
            crate::error::chain(&err)
        ),
        _ => {
            let code = err.code().unwrap_or("");
            let detail = err.message().unwrap_or("");
            match (code, status) {
                ("SignatureDoesNotMatch" | "InvalidAccessKeyId" | "NotSignedUp", _) => format!(
                    "{op} {target}: authentication failed ({code}): check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
                ),
                ("ExpiredToken" | "InvalidToken" | "TokenRefreshRequired", _) => format!(
                    "{op} {target}: the AWS credentials have expired ({code}): refresh AWS_SESSION_TOKEN or the web identity token"
                ),
                ("AccessDenied", _) => format!(
                    "{op} {target}: access denied: the credentials are valid but not allowed to do this (check the IAM and bucket policy; with LIFEBOAT_S3_SSE=aws:kms also the KMS key policy): {detail}"
                ),
                ("NoSuchBucket", _) => format!("{op} {target}: bucket {bucket} does not exist"),
                ("NoSuchKey", _) | ("", Some(404)) => format!("{op} {target}: no such object"),
                ("NoSuchUpload", _) => format!(
                    "{op} {target}: the multipart upload vanished (NoSuchUpload): a lifecycle rule or another client aborted it"
                ),
                ("RequestTimeTooSkewed", _) => format!(
                    "{op} {target}: this machine's clock differs from the store's by more than 15 minutes ({code}): fix NTP"
                ),
                ("PermanentRedirect" | "AuthorizationHeaderMalformed" | "IllegalLocationConstraintException", _) => format!(
                    "{op} {target}: the bucket is in another region ({code}): set AWS_REGION to the bucket's region"
                ),
                ("", Some(403)) => format!(
                    "{op} {target}: HTTP 403 without details (S3 sends none for HEAD): authentication failed or access denied: check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY and the bucket policy"
                ),
                ("", Some(s)) => format!("{op} {target}: HTTP {s}: {}", crate::error::chain(&err)),
                _ => format!(
                    "{op} {target}: {code}: {detail}{}",
                    status.map(|s| format!(" (HTTP {s})")).unwrap_or_default()
                ),
            }
        }
    };
    Error::Store(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(extra: &[(&'static str, &'static str)]) -> Env {
        Env::from_pairs(extra.iter().copied())
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("V", "16MiB").unwrap(), 16 << 20);
        assert_eq!(parse_size("V", "5M").unwrap(), 5 << 20);
        assert_eq!(parse_size("V", "8388608").unwrap(), 8 << 20);
        assert_eq!(parse_size("V", "1 GiB").unwrap(), 1 << 30);
        for bad in ["", "MiB", "16TiB", "-1", "1.5MiB", "99999999999999999999"] {
            assert!(
                parse_size("V", bad).unwrap_err().to_string().contains("V:"),
                "{bad}"
            );
        }
    }

    #[test]
    fn defaults() {
        let c = S3Config::from_env(&env(&[]), "b", "p/").unwrap();
        assert_eq!(c.part_size, 16 << 20);
        assert_eq!(c.parts_in_flight, 4);
        assert!(!c.checksum_when_supported && !c.path_style);
        assert_eq!(c.prefix, "p");
        assert!(c.keys.is_none() && c.sse.is_none() && c.endpoint.is_none());
    }

    #[test]
    fn settings_are_validated_and_errors_name_the_variable() {
        for (var, val) in [
            ("LIFEBOAT_S3_PART_SIZE", "4MiB"),
            ("LIFEBOAT_S3_PART_SIZE", "lots"),
            ("LIFEBOAT_S3_PARTS_IN_FLIGHT", "0"),
            ("LIFEBOAT_S3_SSE", "rot13"),
            ("LIFEBOAT_S3_STORAGE_CLASS", "COLD"),
            ("LIFEBOAT_S3_CHECKSUM", "always"),
            ("LIFEBOAT_S3_PATH_STYLE", "maybe"),
            ("LIFEBOAT_S3_CA_FILE", "/nonexistent/ca.pem"),
            ("AWS_ENDPOINT_URL", "minio:9000"),
            ("AWS_ENDPOINT_URL_S3", "ftp://x"),
            ("AWS_SECRET_ACCESS_KEY", "s3cr3t"),
            ("LIFEBOAT_S3_SSE_KMS_KEY_ID", "k"),
        ] {
            let e = S3Config::from_env(&env(&[(var, val)]), "b", "")
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(var) || e.contains("AWS_ACCESS_KEY_ID"),
                "{var}={val}: {e}"
            );
            assert!(!e.contains("s3cr3t"), "{e}");
        }
    }

    #[test]
    fn endpoint_precedence_sse_and_storage_class() {
        let c = S3Config::from_env(
            &env(&[
                ("AWS_ENDPOINT_URL", "http://a:1"),
                ("AWS_ENDPOINT_URL_S3", "https://b:2"),
                ("LIFEBOAT_S3_SSE", "aws:kms"),
                ("LIFEBOAT_S3_SSE_KMS_KEY_ID", "alias/x"),
                ("LIFEBOAT_S3_STORAGE_CLASS", "standard_ia"),
                ("AWS_DEFAULT_REGION", "eu-west-1"),
            ]),
            "b",
            "",
        )
        .unwrap();
        assert_eq!(
            c.endpoint,
            Some(("AWS_ENDPOINT_URL_S3", "https://b:2".into()))
        );
        assert_eq!(
            c.sse,
            Some(Sse::Kms {
                key_id: Some("alias/x".into())
            })
        );
        assert_eq!(c.storage_class, Some(StorageClass::StandardIa));
        assert_eq!(c.region.as_deref(), Some("eu-west-1"));
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let c = S3Config::from_env(
            &env(&[
                ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
                ("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI"),
                ("AWS_SESSION_TOKEN", "FwoGZXIvYXdzE"),
            ]),
            "b",
            "",
        )
        .unwrap();
        let d = format!("{c:?}");
        assert!(
            !d.contains("wJalrXUtnFEMI") && !d.contains("FwoGZXIvYXdzE"),
            "{d}"
        );
        assert!(d.contains("REDACTED"), "{d}");
    }

    #[test]
    fn ca_file_must_hold_certificates() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("ca.pem");
        std::fs::write(&p, "not a cert").unwrap();
        let e = S3Config::from_env(
            &Env::from_pairs([("LIFEBOAT_S3_CA_FILE", p.to_str().unwrap())]),
            "b",
            "",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("LIFEBOAT_S3_CA_FILE") && e.contains("no PEM certificate"),
            "{e}"
        );
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(&p, ca.cert.pem()).unwrap();
        let c = S3Config::from_env(
            &Env::from_pairs([("LIFEBOAT_S3_CA_FILE", p.to_str().unwrap())]),
            "b",
            "",
        )
        .unwrap();
        assert!(c.ca.is_some());
    }
}

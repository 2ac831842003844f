//! [`LoopbackFs`]: `s3s_fs::FileSystem` with a CompleteMultipartUpload that costs what real S3's
//! does. s3s-fs completes an upload by reading every part back, MD5-ing the whole object and
//! writing it out again through a buffer: for a 1 GiB backup that is seconds of work after the last
//! part arrived, and it dominated the benchmark (`bench/backup.sh`). Real S3 copies nothing on
//! completion: its multipart ETag is the MD5 of the concatenated binary MD5s of the parts plus
//! `-<part count>`, computed from the parts' MD5s, not from the data. So here every UploadPart's
//! MD5 (the ETag s3s-fs answers) is remembered, and the parts that continue 1, 2, … are appended
//! to a staged object file as they arrive (`copy_file_range`, no fsync). Completion checks the part
//! list the way S3 does (ascending part numbers, ETags that match what was stored, 5 MiB minimum
//! but for the last part); when the list is exactly what was staged it is a rename, otherwise the
//! listed part files are concatenated then (in the kernel too). The ETag goes where s3s-fs keeps
//! it, so GET/HEAD/LIST/DELETE of the object are s3s-fs's own. Every other operation is s3s-fs's,
//! and SigV4 is checked in front of all of them as before.
//!
//! The on-disk layout this relies on (s3s-fs 0.14, pinned in Cargo.toml), below the root:
//! `<bucket>/<key>` the object; `.upload-<id>.json` the upload (JSON of its access key);
//! `.upload_id-<id>.part-<n>` a part; `.bucket-<b64 bucket>.object-<b64 key>[.upload-<id>]
//! .metadata.json` the object's (or the pending upload's) attributes;
//! `.bucket-<b64 bucket>.object-<b64 key>.internal.json` a JSON map holding `e_tag`; and
//! `.tmp.*.internal.part` scratch files, removed when the server starts.
//!
//! Shared by the `s3_server` example and `tests/s3_server.rs` (`#[path]`).

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use s3s::crypto::{Checksum, Md5};
use s3s::dto::*;
use s3s::{s3_error, S3Error, S3Request, S3Response, S3Result, S3};

/// S3's smallest part but for the last one.
const MIN_PART: u64 = 5 << 20;

pub struct LoopbackFs {
    inner: s3s_fs::FileSystem,
    /// The root as s3s-fs resolved it (absolute, canonical).
    root: PathBuf,
    /// The multipart uploads this server saw parts of, by upload id.
    uploads: Arc<Mutex<HashMap<String, Upload>>>,
}

#[derive(Default)]
struct Upload {
    /// Binary MD5 of every stored part, by part number (what UploadPart answered). A part this
    /// server did not see being stored (it was restarted) is hashed from its file.
    md5s: BTreeMap<i32, [u8; 16]>,
    staged: Arc<Mutex<Staged>>,
}

/// Parts 1, 2, … appended to one file as they arrive (`copy_file_range`), so that completing with
/// exactly those parts is a rename, as cheap as S3's completion. Anything else (a gap, a part
/// uploaded again after it was staged, a different list) falls back to concatenating at completion.
#[derive(Default)]
struct Staged {
    file: Option<std::fs::File>,
    /// (part number, MD5) of what the file holds, in order.
    parts: Vec<(i32, [u8; 16])>,
    broken: bool,
}

/// Serve `fs` on `listener` with SigV4 checked for the one key pair `ak`/`sk`, a task per
/// connection, until accepting fails (the example's `main` and tests/s3_server.rs).
pub async fn serve(
    listener: tokio::net::TcpListener,
    fs: LoopbackFs,
    ak: &str,
    sk: &str,
) -> std::io::Error {
    let mut builder = s3s::service::S3ServiceBuilder::new(fs);
    builder.set_auth(s3s::auth::SimpleAuth::from_single(ak, sk));
    let svc = builder.build();
    loop {
        let sock = match listener.accept().await {
            Ok((sock, _)) => sock,
            Err(e) => return e,
        };
        let svc = svc.clone();
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(sock);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await;
        });
    }
}

impl LoopbackFs {
    pub fn new(root: impl AsRef<Path>) -> Result<Self, String> {
        let root = root.as_ref();
        let inner = s3s_fs::FileSystem::new(root)
            .map_err(|e| format!("s3s-fs on {}: {e:?}", root.display()))?;
        let root = root
            .canonicalize()
            .map_err(|e| format!("{}: {e}", root.display()))?;
        Ok(LoopbackFs {
            inner,
            root,
            uploads: Arc::default(),
        })
    }

    async fn upload_part_recorded(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        let (id, n) = (req.input.upload_id.clone(), req.input.part_number);
        let resp = self.inner.upload_part(req).await?;
        self.record(id, n, resp.output.e_tag.as_ref()).await;
        Ok(resp)
    }

    async fn upload_part_copy_recorded(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        let (id, n) = (req.input.upload_id.clone(), req.input.part_number);
        let resp = self.inner.upload_part_copy(req).await?;
        let e_tag = resp.output.copy_part_result.as_ref();
        self.record(id, n, e_tag.and_then(|r| r.e_tag.as_ref()))
            .await;
        Ok(resp)
    }

    /// Remember a stored part's MD5 and append whatever now continues the staged file.
    async fn record(&self, upload_id: String, part: i32, e_tag: Option<&ETag>) {
        let mut md5 = [0u8; 16];
        let Some(e) = e_tag else { return };
        if hex::decode_to_slice(e.value(), &mut md5).is_err() {
            return;
        }
        let (root, uploads) = (self.root.clone(), self.uploads.clone());
        let _ = tokio::task::spawn_blocking(move || stage(&root, &uploads, &upload_id, part, md5))
            .await;
    }

    async fn abort_forgetting(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let id = req.input.upload_id.clone();
        let resp = self.inner.abort_multipart_upload(req).await?;
        self.forget(&id);
        Ok(resp)
    }

    async fn complete(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let access_key = req.credentials.as_ref().map(|c| c.access_key.clone());
        let CompleteMultipartUploadInput {
            multipart_upload,
            bucket,
            key,
            upload_id,
            if_match,
            if_none_match,
            ..
        } = req.input;
        let parts = multipart_upload.and_then(|m| m.parts).unwrap_or_default();
        if parts.is_empty() {
            return Err(s3_error!(InvalidPart, "You must specify at least one part"));
        }
        // A UUID: nothing that could leave the root once in a file name.
        if upload_id.len() != 36 || !upload_id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            return Err(s3_error!(NoSuchUpload));
        }
        let upload_info = self.root.join(format!(".upload-{upload_id}.json"));
        match std::fs::read(&upload_info) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(s3_error!(NoSuchUpload))
            }
            Err(e) => return Err(S3Error::internal_error(e)),
            Ok(json) => {
                let owner: Option<String> =
                    serde_json::from_slice(&json).map_err(S3Error::internal_error)?;
                if owner != access_key {
                    return Err(s3_error!(AccessDenied));
                }
            }
        }
        let object = self.object_path(&bucket, &key)?;

        // Conditional completion, as s3s-fs does it.
        let exists = object.exists();
        if if_none_match.as_ref().is_some_and(|c| c.is_any()) && exists {
            return Err(s3_error!(PreconditionFailed, "Object already exists"));
        }
        if let Some(cond) = &if_match {
            if !exists {
                return Err(s3_error!(PreconditionFailed, "Object does not exist"));
            }
            if let Some(expected) = cond.as_etag() {
                let current = match self.stored_e_tag(&bucket, &key)? {
                    Some(e) => e,
                    None => hex::encode(md5_file(&object)?),
                };
                if !expected.strong_cmp(&ETag::Strong(current)) {
                    return Err(s3_error!(PreconditionFailed, "ETag does not match"));
                }
            }
        }

        // The part list, checked the way S3 checks it; the upload stays open when it is refused.
        let (known, staged) = match self.uploads.lock().unwrap().get(&upload_id) {
            Some(u) => (u.md5s.clone(), Some(u.staged.clone())),
            None => Default::default(),
        };
        let mut files = Vec::with_capacity(parts.len());
        let mut listed = Vec::with_capacity(parts.len());
        let mut etag_md5 = Md5::new();
        let mut last = 0;
        for part in &parts {
            let Some(n) = part.part_number else {
                return Err(s3_error!(InvalidPart, "a part without a part number"));
            };
            if n <= last {
                return Err(s3_error!(InvalidPartOrder, "part numbers must ascend"));
            }
            last = n;
            let file = self.root.join(format!(".upload_id-{upload_id}.part-{n}"));
            let Ok(meta) = std::fs::metadata(&file) else {
                return Err(s3_error!(InvalidPart, "part {n} was not uploaded"));
            };
            let md5 = match known.get(&n) {
                Some(md5) => *md5,
                None => md5_file(&file)?,
            };
            let given = part.e_tag.as_ref().map(|e| e.value().trim_matches('"'));
            if given != Some(hex::encode(md5).as_str()) {
                return Err(s3_error!(InvalidPart, "part {n}: ETag does not match"));
            }
            etag_md5.update(&md5);
            listed.push((n, md5));
            files.push((n, file, meta.len()));
        }
        if let Some((n, ..)) = files[..files.len() - 1].iter().find(|f| f.2 < MIN_PART) {
            return Err(s3_error!(EntityTooSmall, "part {n} is below 5 MiB"));
        }
        let e_tag = format!("{}-{}", hex::encode(etag_md5.finalize()), parts.len());

        // The object: the staged file if it holds exactly the listed parts, else the parts
        // concatenated in the kernel now; renamed into place.
        let tmp = self
            .root
            .join(format!(".tmp.lifeboat-{upload_id}.internal.part"));
        let staged_path = staging_path(&self.root, &upload_id);
        let (tmp2, object2) = (tmp.clone(), object.clone());
        let concat = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let ready = staged.is_some_and(|st| {
                let mut st = st.lock().unwrap();
                st.file = None;
                !std::mem::replace(&mut st.broken, true) && st.parts == listed
            });
            if ready {
                std::fs::rename(&staged_path, &tmp2)?;
            } else {
                let _ = std::fs::remove_file(&staged_path);
                let mut out = std::fs::File::create(&tmp2)?;
                for (_, f, _) in &files {
                    std::io::copy(&mut std::fs::File::open(f)?, &mut out)?;
                }
            }
            if let Some(dir) = object2.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::rename(&tmp2, &object2)
        });
        let done = concat.await.map_err(S3Error::internal_error)?;
        if let Err(e) = done {
            let _ = std::fs::remove_file(&tmp);
            return Err(S3Error::internal_error(e));
        }

        // Its attributes (the upload's, if any) and its ETag, where s3s-fs looks for them.
        let attrs = self.meta_name(&bucket, &key, "metadata.json");
        let upload_attrs =
            self.meta_name(&bucket, &key, &format!("upload-{upload_id}.metadata.json"));
        match std::fs::rename(&upload_attrs, &attrs) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let _ = std::fs::remove_file(&attrs); // the replaced object's
            }
            Err(e) => return Err(S3Error::internal_error(e)),
        }
        let info = serde_json::json!({ "e_tag": e_tag });
        self.write_atomically(
            &self.meta_name(&bucket, &key, "internal.json"),
            info.to_string().as_bytes(),
        )
        .map_err(S3Error::internal_error)?;

        // The upload is over: its record goes, then its parts (listed or not) in the background,
        // as S3 discards them (unlinking ~1 GiB of freshly written files takes a few 100 ms).
        let _ = std::fs::remove_file(&upload_info);
        self.forget(&upload_id);
        let (root, prefix) = (self.root.clone(), format!(".upload_id-{upload_id}.part-"));
        tokio::task::spawn_blocking(move || {
            for entry in std::fs::read_dir(&root).into_iter().flatten().flatten() {
                if entry.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        });

        Ok(S3Response::new(CompleteMultipartUploadOutput {
            bucket: Some(bucket),
            key: Some(key),
            e_tag: Some(ETag::Strong(e_tag)),
            ..Default::default()
        }))
    }

    /// Drop what is kept about an upload, and its staged file.
    fn forget(&self, upload_id: &str) {
        if let Some(u) = self.uploads.lock().unwrap().remove(upload_id) {
            let mut st = u.staged.lock().unwrap();
            st.broken = true;
            st.file = None;
        }
        let _ = std::fs::remove_file(staging_path(&self.root, upload_id));
    }

    /// `<root>/<bucket>/<key>`, refusing keys that would leave the bucket.
    fn object_path(&self, bucket: &str, key: &str) -> S3Result<PathBuf> {
        let rel = Path::new(bucket).join(key);
        if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(s3_error!(InvalidArgument, "key {key:?}"));
        }
        Ok(self.root.join(rel))
    }

    /// `<root>/.bucket-<b64>.object-<b64>.<suffix>`: s3s-fs's files about an object.
    fn meta_name(&self, bucket: &str, key: &str, suffix: &str) -> PathBuf {
        self.root.join(format!(
            ".bucket-{}.object-{}.{suffix}",
            b64url(bucket),
            b64url(key)
        ))
    }

    fn stored_e_tag(&self, bucket: &str, key: &str) -> S3Result<Option<String>> {
        let Ok(json) = std::fs::read(self.meta_name(bucket, key, "internal.json")) else {
            return Ok(None);
        };
        let info: serde_json::Value =
            serde_json::from_slice(&json).map_err(S3Error::internal_error)?;
        Ok(info["e_tag"].as_str().map(str::to_owned))
    }

    fn write_atomically(&self, dest: &Path, bytes: &[u8]) -> std::io::Result<()> {
        let name = dest.file_name().unwrap_or_default().to_string_lossy();
        let tmp = self
            .root
            .join(format!(".tmp.lifeboat-{name}.internal.part"));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, dest)
    }
}

fn staging_path(root: &Path, upload_id: &str) -> PathBuf {
    root.join(format!(".tmp.lifeboat-{upload_id}.staged.internal.part"))
}

/// Record part `n` of `upload_id`, then append to the staged file every part that now continues it.
fn stage(
    root: &Path,
    uploads: &Mutex<HashMap<String, Upload>>,
    upload_id: &str,
    n: i32,
    md5: [u8; 16],
) {
    let (staged, changed) = {
        let mut all = uploads.lock().unwrap();
        let upload = all.entry(upload_id.to_owned()).or_default();
        let before = upload.md5s.insert(n, md5);
        (upload.staged.clone(), before.is_some_and(|b| b != md5))
    };
    let mut st = staged.lock().unwrap();
    if changed && st.parts.iter().any(|p| p.0 == n) {
        st.broken = true; // a staged part uploaded again, other bytes: the file holds stale ones
    }
    if st.broken {
        return;
    }
    loop {
        let next = st.parts.last().map_or(1, |p| p.0 + 1);
        let all = uploads.lock().unwrap();
        let Some(&md5) = all.get(upload_id).and_then(|u| u.md5s.get(&next)) else {
            return;
        };
        drop(all);
        let part = root.join(format!(".upload_id-{upload_id}.part-{next}"));
        let appended = (|| -> std::io::Result<()> {
            if st.file.is_none() {
                st.file = Some(std::fs::File::create(staging_path(root, upload_id))?);
            }
            let out = st.file.as_mut().expect("just opened");
            std::io::copy(&mut std::fs::File::open(&part)?, out)?;
            Ok(())
        })();
        if appended.is_err() {
            st.broken = true;
            return;
        }
        st.parts.push((next, md5));
    }
}

fn md5_file(path: &Path) -> S3Result<[u8; 16]> {
    let mut f = std::fs::File::open(path).map_err(S3Error::internal_error)?;
    let mut md5 = Md5::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match f.read(&mut buf).map_err(S3Error::internal_error)? {
            0 => return Ok(md5.finalize()),
            n => md5.update(&buf[..n]),
        }
    }
}

/// Unpadded URL-safe base64, as s3s-fs names its files.
fn b64url(s: &str) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(s.len() * 4 / 3 + 3);
    for chunk in s.as_bytes().chunks(3) {
        let byte = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = (byte(0) << 16) | (byte(1) << 8) | byte(2);
        for i in 0..=chunk.len() {
            out.push(ABC[(n >> (18 - 6 * i)) as usize & 63] as char);
        }
    }
    out
}

/// `impl S3`: the `own` operations call the named method above, all others go to s3s-fs.
macro_rules! impl_s3 {
    (
        own: [$($own:ident($oin:ident) -> $oout:ident => $method:ident),* $(,)?],
        s3s_fs: [$($op:ident($input:ident) -> $output:ident),* $(,)?] $(,)?
    ) => {
        #[async_trait::async_trait]
        impl S3 for LoopbackFs {
            $(
                async fn $own(&self, req: S3Request<$oin>) -> S3Result<S3Response<$oout>> {
                    self.$method(req).await
                }
            )*
            $(
                async fn $op(&self, req: S3Request<$input>) -> S3Result<S3Response<$output>> {
                    self.inner.$op(req).await
                }
            )*
        }
    };
}

impl_s3! {
    own: [
        upload_part(UploadPartInput) -> UploadPartOutput => upload_part_recorded,
        upload_part_copy(UploadPartCopyInput) -> UploadPartCopyOutput => upload_part_copy_recorded,
        abort_multipart_upload(AbortMultipartUploadInput) -> AbortMultipartUploadOutput
            => abort_forgetting,
        complete_multipart_upload(CompleteMultipartUploadInput) -> CompleteMultipartUploadOutput
            => complete,
    ],
    s3s_fs: [
        create_bucket(CreateBucketInput) -> CreateBucketOutput,
        copy_object(CopyObjectInput) -> CopyObjectOutput,
        delete_bucket(DeleteBucketInput) -> DeleteBucketOutput,
        delete_object(DeleteObjectInput) -> DeleteObjectOutput,
        delete_objects(DeleteObjectsInput) -> DeleteObjectsOutput,
        get_bucket_location(GetBucketLocationInput) -> GetBucketLocationOutput,
        get_object(GetObjectInput) -> GetObjectOutput,
        head_bucket(HeadBucketInput) -> HeadBucketOutput,
        head_object(HeadObjectInput) -> HeadObjectOutput,
        list_buckets(ListBucketsInput) -> ListBucketsOutput,
        list_objects(ListObjectsInput) -> ListObjectsOutput,
        list_objects_v2(ListObjectsV2Input) -> ListObjectsV2Output,
        put_object(PutObjectInput) -> PutObjectOutput,
        create_multipart_upload(CreateMultipartUploadInput) -> CreateMultipartUploadOutput,
        list_parts(ListPartsInput) -> ListPartsOutput,
    ],
}

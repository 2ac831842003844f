//! The loopback S3 server of the demo and the benchmarks (`examples/s3_server/`), served in-process
//! from the same source: its own CompleteMultipartUpload (parts concatenated, S3-style multipart
//! ETag from the parts' MD5s) must leave an object that s3s-fs's GET/HEAD/LIST/DELETE serve, and
//! must refuse the part lists S3 refuses. SigV4 is checked as in the example.

#[path = "../examples/s3_server/loopback_fs.rs"]
#[allow(dead_code)]
mod loopback_fs;

use std::net::SocketAddr;

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, RequestChecksumCalculation};
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use etcd_lifeboat::config::Env;
use etcd_lifeboat::store::{Store, StoreConfig};
use s3s::crypto::{Checksum, Md5};
use tempfile::TempDir;

const AK: &str = "AKIDLOOPBACKTEST";
const SK: &str = "loopback/test/secret/key/0123456789";
const BUCKET: &str = "loopback";
const PART: usize = 5 << 20;

struct Server {
    addr: SocketAddr,
    root: TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    /// As `examples/s3_server/main.rs` serves it.
    async fn start() -> Server {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join(BUCKET)).unwrap();
        let fs = loopback_fs::LoopbackFs::new(root.path()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loopback_fs::serve(listener, fs, AK, SK).await;
        });
        Server { addr, root, task }
    }

    fn client(&self, secret: &str) -> aws_sdk_s3::Client {
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(format!("http://{}", self.addr))
            .force_path_style(true)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .credentials_provider(Credentials::new(AK, secret, None, None, "test"))
            .http_client(
                aws_smithy_http_client::Builder::new()
                    .tls_provider(tls::Provider::rustls(CryptoMode::Ring))
                    .build_https(),
            )
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    async fn store(&self) -> Store {
        let env = Env::from_pairs([
            ("LIFEBOAT_STORE", format!("s3://{BUCKET}/pre").as_str()),
            ("AWS_ENDPOINT_URL", format!("http://{}", self.addr).as_str()),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", AK),
            ("AWS_SECRET_ACCESS_KEY", SK),
            ("LIFEBOAT_S3_PATH_STYLE", "true"),
            ("LIFEBOAT_S3_PART_SIZE", "5MiB"),
        ]);
        Store::open(&StoreConfig::from_env(&env, "").unwrap())
            .await
            .unwrap()
    }

    /// Files in the root that are not objects: pending uploads, parts, scratch files (the parts
    /// of a completed upload are removed in the background: given 5 s).
    async fn leftovers(&self) -> Vec<String> {
        let list = || -> Vec<String> {
            std::fs::read_dir(self.root.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".upload") || n.starts_with(".tmp."))
                .collect()
        };
        for _ in 0..50 {
            if list().is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        list()
    }
}

fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn md5(bytes: &[u8]) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(bytes);
    h.finalize()
}

/// S3's multipart ETag: md5 of the concatenated binary part MD5s, `-<parts>`.
fn multipart_etag(bytes: &[u8], part: usize) -> String {
    let mut h = Md5::new();
    let chunks = bytes.chunks(part);
    let n = chunks.len();
    for c in chunks {
        h.update(&md5(c));
    }
    format!("\"{}-{n}\"", hex::encode(h.finalize()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_multipart_round_trip_gets_heads_lists_and_deletes() {
    let server = Server::start().await;
    let store = server.store().await;
    let tmp = tempfile::tempdir().unwrap();
    let want = data(3 * PART + 12_345, 7);
    let src = tmp.path().join("snapshot.db");
    std::fs::write(&src, &want).unwrap();

    let meta = store.put_file("c/b/snapshot.db", &src).await.unwrap();
    assert_eq!(meta.size, want.len() as u64);
    assert!(store.get_bytes("c/b/snapshot.db").await.unwrap() == want);
    let head = store.head("c/b/snapshot.db").await.unwrap().unwrap();
    assert_eq!(head.size, want.len() as u64);
    let listed = store.list("c/").await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].key, "c/b/snapshot.db");
    assert_eq!(listed[0].size, want.len() as u64);

    // The S3-style multipart ETag, on HEAD and GET alike, without the data having been hashed.
    let client = server.client(SK);
    let key = "pre/c/b/snapshot.db";
    let h = client.head_object().bucket(BUCKET).key(key).send().await;
    let e_tag = h.unwrap().e_tag.unwrap();
    assert_eq!(e_tag, multipart_etag(&want, PART));
    assert!(e_tag.ends_with("-4\""), "{e_tag}");
    let g = client.get_object().bucket(BUCKET).key(key).send().await;
    assert_eq!(g.unwrap().e_tag.unwrap(), e_tag);
    assert_eq!(server.leftovers().await, Vec::<String>::new());

    store.delete("c/b/snapshot.db").await.unwrap();
    assert!(store.head("c/b/snapshot.db").await.unwrap().is_none());
    assert!(store.list("c/").await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_refuses_what_s3_refuses_and_keeps_the_upload() {
    let server = Server::start().await;
    let client = server.client(SK);
    let key = "obj";
    let parts = [data(PART, 1), data(PART, 2), data(1000, 3)];
    let up = client
        .create_multipart_upload()
        .bucket(BUCKET)
        .key(key)
        .send()
        .await
        .unwrap();
    let id = up.upload_id.unwrap();
    let mut done = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let n = i as i32 + 1;
        let r = client
            .upload_part()
            .bucket(BUCKET)
            .key(key)
            .upload_id(&id)
            .part_number(n)
            .body(ByteStream::from(p.clone()))
            .send()
            .await
            .unwrap();
        let e_tag = r.e_tag.unwrap();
        assert_eq!(e_tag, format!("\"{}\"", hex::encode(md5(p))));
        done.push((n, e_tag));
    }
    let completed = |list: &[(i32, String)]| {
        let parts = list.iter().map(|(n, e)| {
            CompletedPart::builder()
                .part_number(*n)
                .e_tag(e.as_str())
                .build()
        });
        CompletedMultipartUpload::builder()
            .set_parts(Some(parts.collect()))
            .build()
    };
    let complete = |list: Vec<(i32, String)>| {
        client
            .complete_multipart_upload()
            .bucket(BUCKET)
            .key(key)
            .upload_id(&id)
            .multipart_upload(completed(&list))
            .send()
    };
    let code = |r: Result<_, aws_sdk_s3::error::SdkError<_, _>>| {
        let e: aws_sdk_s3::error::SdkError<
            aws_sdk_s3::operation::complete_multipart_upload::CompleteMultipartUploadError,
            _,
        > = match r {
            Ok(_) => panic!("completed"),
            Err(e) => e,
        };
        e.code().map(str::to_owned)
    };

    let mut wrong = done.clone();
    wrong[1].1 = format!("\"{}\"", hex::encode(md5(b"not this part")));
    assert_eq!(code(complete(wrong).await).as_deref(), Some("InvalidPart"));
    let swapped = vec![done[1].clone(), done[0].clone(), done[2].clone()];
    assert_eq!(
        code(complete(swapped).await).as_deref(),
        Some("InvalidPartOrder")
    );
    let mut missing = done.clone();
    missing.push((4, done[2].1.clone()));
    assert_eq!(
        code(complete(missing).await).as_deref(),
        Some("InvalidPart")
    );
    // A part below 5 MiB that is not the last one; part 4 stays unlisted in the end (and goes).
    let r = client
        .upload_part()
        .bucket(BUCKET)
        .key(key)
        .upload_id(&id)
        .part_number(4)
        .body(ByteStream::from(vec![4u8; 10]))
        .send()
        .await
        .unwrap();
    let mut small = done.clone();
    small.push((4, r.e_tag.unwrap()));
    assert_eq!(
        code(complete(small).await).as_deref(),
        Some("EntityTooSmall")
    );
    // Signed with the wrong secret: refused before it reaches the store.
    let r = server
        .client("not-the-secret")
        .complete_multipart_upload()
        .bucket(BUCKET)
        .key(key)
        .upload_id(&id)
        .multipart_upload(completed(&done))
        .send()
        .await;
    assert_eq!(code(r).as_deref(), Some("SignatureDoesNotMatch"));
    assert!(client
        .head_object()
        .bucket(BUCKET)
        .key(key)
        .send()
        .await
        .is_err());

    // The upload is still open: the right list completes it.
    let r = complete(done.clone()).await.unwrap();
    let whole: Vec<u8> = parts.concat();
    let e_tag = r.e_tag.unwrap();
    let mut h = Md5::new();
    for p in &parts {
        h.update(&md5(p));
    }
    assert_eq!(e_tag, format!("\"{}-3\"", hex::encode(h.finalize())));
    let g = client.get_object().bucket(BUCKET).key(key).send().await;
    let g = g.unwrap();
    assert_eq!(g.e_tag.as_deref(), Some(e_tag.as_str()));
    assert!(g.body.collect().await.unwrap().into_bytes() == whole);
    let h = client.head_object().bucket(BUCKET).key(key).send().await;
    assert_eq!(h.unwrap().content_length, Some(whole.len() as i64));
    let l = client
        .list_objects_v2()
        .bucket(BUCKET)
        .send()
        .await
        .unwrap();
    let listed: Vec<_> = l.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(listed, vec![key]);
    assert_eq!(server.leftovers().await, Vec::<String>::new());
    // Completing twice: the upload is gone.
    assert_eq!(code(complete(done).await).as_deref(), Some("NoSuchUpload"));
    client
        .delete_object()
        .bucket(BUCKET)
        .key(key)
        .send()
        .await
        .unwrap();
    assert!(client
        .head_object()
        .bucket(BUCKET)
        .key(key)
        .send()
        .await
        .is_err());
}

/// Parts arriving out of order, and a part uploaded again after the server had already appended it
/// to its staged object: the completed object is still exactly the listed parts' bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_and_reuploaded_parts_complete_to_the_listed_bytes() {
    let server = Server::start().await;
    let client = server.client(SK);
    for (key, order, again) in [("ooo", [2, 3, 1], None), ("again", [1, 2, 3], Some(1))] {
        let id = client
            .create_multipart_upload()
            .bucket(BUCKET)
            .key(key)
            .send()
            .await
            .unwrap()
            .upload_id
            .unwrap();
        let mut parts = [data(PART, 11), data(PART, 12), data(777, 13)];
        let mut e_tags = vec![String::new(); 3];
        let mut sends: Vec<i32> = order.to_vec();
        if let Some(n) = again {
            sends.push(n);
        }
        for (i, n) in sends.iter().enumerate() {
            let idx = *n as usize - 1;
            if i >= 3 {
                parts[idx] = data(PART, 99); // the second upload of that part
            }
            let r = client
                .upload_part()
                .bucket(BUCKET)
                .key(key)
                .upload_id(&id)
                .part_number(*n)
                .body(ByteStream::from(parts[idx].clone()))
                .send()
                .await
                .unwrap();
            e_tags[idx] = r.e_tag.unwrap();
        }
        let list = (1..=3).map(|n| {
            CompletedPart::builder()
                .part_number(n)
                .e_tag(e_tags[n as usize - 1].as_str())
                .build()
        });
        let r = client
            .complete_multipart_upload()
            .bucket(BUCKET)
            .key(key)
            .upload_id(&id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(list.collect()))
                    .build(),
            )
            .send()
            .await
            .unwrap();
        let whole = parts.concat();
        assert_eq!(r.e_tag.unwrap(), multipart_etag(&whole, PART), "{key}");
        let g = client.get_object().bucket(BUCKET).key(key).send().await;
        let got = g.unwrap().body.collect().await.unwrap().into_bytes();
        assert!(got == whole, "{key}: wrong bytes");
        assert_eq!(server.leftovers().await, Vec::<String>::new(), "{key}");
    }
}

//! A loopback S3 server for the demo and the benchmarks: `s3s` + `s3s-fs` (the same in-process
//! server the store test suite uses), checking SigV4 signatures for real, serving a directory.
//! One thing is overridden (`loopback_fs.rs`): CompleteMultipartUpload. Real S3 does not copy the
//! data when an upload completes, and derives the ETag from the parts' MD5s; s3s-fs reads every
//! part back, MD5s the whole object and writes it again, seconds for a 1 GiB backup, which would
//! dominate what `bench/backup.sh` measures. Here the parts are appended to the object file in the
//! kernel as they arrive (completion is then a rename), and the S3-style multipart ETag is computed
//! from the MD5s recorded at UploadPart.
//!
//!   cargo run --example s3_server -- <root-dir> <bucket> <access-key> <secret-key>
//!
//! Prints `http://127.0.0.1:<port>` on the first line of stdout once it listens, then serves until
//! killed. Only ever binds 127.0.0.1.

use std::io::Write;

mod loopback_fs;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [root, bucket, ak, sk] = args.as_slice() else {
        eprintln!("usage: s3_server <root-dir> <bucket> <access-key> <secret-key>");
        std::process::exit(2);
    };
    std::fs::create_dir_all(std::path::Path::new(root).join(bucket))?;
    let fs = loopback_fs::LoopbackFs::new(root)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("http://{}", listener.local_addr()?);
    std::io::stdout().flush()?;
    Err(loopback_fs::serve(listener, fs, ak, sk).await.into())
}

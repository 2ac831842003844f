//! Benchmark data generator: fills a real etcd with many large values over mTLS, fast.
//!
//! `bench/lib.sh` runs it once to build the ~1 GiB database the benchmarks share (100k keys of
//! ~5 KB, then a fraction of them written again so the file also holds old revisions, as a
//! Kubernetes etcd does). Puts go in txns of up to 128 operations (etcd's default `--max-txn-ops`),
//! several txns in flight. Values are deterministic pseudo-random printable bytes, so runs are
//! reproducible and the data does not compress to nothing.
//!
//! ```text
//! cargo run --release --example loadgen -- --endpoint https://127.0.0.1:2379 \
//!     --cacert ca.crt --cert client.crt --key client.key \
//!     --keys 100000 --value-size 5000 --update-fraction 0.7 --concurrency 8
//! ```
//!
//! Every flag can also be given as an environment variable: `--value-size` is `LOADGEN_VALUE_SIZE`.
//! Raise the server's `--quota-backend-bytes` (e.g. 8 GiB) for a database this size.

use std::time::{Duration, Instant};

use etcd_client::{
    Certificate, Client, ConnectOptions, Identity, MaintenanceClient, TlsOptions, Txn, TxnOp,
};

const TXN_OPS: usize = 128;
/// Keep each txn well under etcd's 1.5 MiB request limit.
const TXN_BYTES: usize = 1 << 20;

struct Args {
    endpoint: String,
    cacert: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    keys: usize,
    value_size: usize,
    update_fraction: f64,
    concurrency: usize,
    prefix: String,
}

const USAGE: &str = "usage: loadgen [--endpoint URL] [--cacert F --cert F --key F] [--keys N] \
[--value-size BYTES] [--update-fraction F] [--concurrency N] [--prefix P]
(each flag also as LOADGEN_<FLAG> in the environment, e.g. LOADGEN_VALUE_SIZE)";

fn parse_args() -> Result<Args, String> {
    let mut flags = std::collections::HashMap::new();
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        if arg == "-h" || arg == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let Some(name) = arg.strip_prefix("--") else {
            return Err(format!("unexpected argument {arg:?}\n{USAGE}"));
        };
        let (name, value) = match name.split_once('=') {
            Some((n, v)) => (n.to_string(), v.to_string()),
            None => (
                name.to_string(),
                it.next().ok_or(format!("--{name} needs a value"))?,
            ),
        };
        flags.insert(name, value);
    }
    let get = |name: &str| -> Option<String> {
        flags.get(name).cloned().or_else(|| {
            std::env::var(format!("LOADGEN_{}", name.to_uppercase().replace('-', "_")))
                .ok()
                .filter(|v| !v.is_empty())
        })
    };
    fn num<T: std::str::FromStr>(name: &str, v: Option<String>, default: T) -> Result<T, String> {
        match v {
            None => Ok(default),
            Some(s) => s
                .parse()
                .map_err(|_| format!("--{name}: not a number: {s:?}")),
        }
    }
    let known = [
        "endpoint",
        "cacert",
        "cert",
        "key",
        "keys",
        "value-size",
        "update-fraction",
        "concurrency",
        "prefix",
    ];
    if let Some(bad) = flags.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(format!("unknown flag --{bad}\n{USAGE}"));
    }
    let args = Args {
        endpoint: get("endpoint").unwrap_or_else(|| "https://127.0.0.1:2379".into()),
        cacert: get("cacert"),
        cert: get("cert"),
        key: get("key"),
        keys: num("keys", get("keys"), 100_000)?,
        value_size: num("value-size", get("value-size"), 5_000)?,
        update_fraction: num("update-fraction", get("update-fraction"), 0.25)?,
        concurrency: num("concurrency", get("concurrency"), 8)?,
        prefix: get("prefix").unwrap_or_else(|| "/bench/".into()),
    };
    if !(0.0..=10.0).contains(&args.update_fraction) {
        return Err("--update-fraction: expected 0.0 to 10.0".into());
    }
    if args.cert.is_some() != args.key.is_some() {
        return Err("--cert and --key go together".into());
    }
    Ok(args)
}

/// Deterministic printable bytes for (key, generation).
fn value(n: usize, generation: usize, len: usize) -> Vec<u8> {
    let mut x = ((n as u64) << 8 | generation as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b'!' + (x % 94) as u8
        })
        .collect()
}

async fn connect(a: &Args) -> Result<Client, String> {
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(10))
        .with_timeout(Duration::from_secs(60));
    if a.endpoint.starts_with("https://") {
        let read = |p: &String| std::fs::read(p).map_err(|e| format!("{p}: {e}"));
        let mut tls = TlsOptions::new();
        if let Some(ca) = &a.cacert {
            tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        if let (Some(cert), Some(key)) = (&a.cert, &a.key) {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        opts = opts.with_tls(tls);
    }
    Client::connect([a.endpoint.as_str()], Some(opts))
        .await
        .map_err(|e| format!("connect {}: {e}", a.endpoint))
}

/// Write `(key number, generation)` pairs in txns, `concurrency` in flight.
async fn write(
    client: &Client,
    a: &Args,
    items: impl Iterator<Item = (usize, usize)>,
    label: &str,
) -> Result<(), String> {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut batch: Vec<TxnOp> = Vec::new();
    let mut batch_bytes = 0;
    let mut done = 0usize;
    let mut last_report = Instant::now();
    let mut items = items.peekable();
    loop {
        // Fill one batch.
        while let Some(&(n, generation)) = items.peek() {
            let k = format!("{}{n:08}", a.prefix);
            if batch.len() == TXN_OPS
                || (!batch.is_empty() && batch_bytes + k.len() + a.value_size > TXN_BYTES)
            {
                break;
            }
            items.next();
            batch_bytes += k.len() + a.value_size;
            batch.push(TxnOp::put(k, value(n, generation, a.value_size), None));
        }
        let last = items.peek().is_none();
        if !batch.is_empty() {
            if tasks.len() >= a.concurrency.max(1) {
                done += finish(tasks.join_next().await)?;
            }
            let ops = std::mem::take(&mut batch);
            batch_bytes = 0;
            let mut kv = client.kv_client();
            tasks.spawn(async move {
                let n = ops.len();
                kv.txn(Txn::new().and_then(ops)).await.map(|_| n)
            });
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            eprintln!("loadgen: {label}: {done} puts, {:.0?}", started.elapsed());
            last_report = Instant::now();
        }
        if last {
            break;
        }
    }
    while let Some(r) = tasks.join_next().await {
        done += finish(Some(r))?;
    }
    eprintln!(
        "loadgen: {label}: {done} puts in {:.1?} ({:.0} puts/s)",
        started.elapsed(),
        done as f64 / started.elapsed().as_secs_f64()
    );
    Ok(())
}

type Joined = Result<Result<usize, etcd_client::Error>, tokio::task::JoinError>;

fn finish(r: Option<Joined>) -> Result<usize, String> {
    match r {
        Some(Ok(Ok(n))) => Ok(n),
        Some(Ok(Err(e))) => Err(format!("txn failed: {e}")),
        Some(Err(e)) => Err(format!("task failed: {e}")),
        None => Ok(0),
    }
}

async fn run(a: Args) -> Result<(), String> {
    let client = connect(&a).await?;
    let started = Instant::now();
    write(&client, &a, (0..a.keys).map(|n| (n, 0)), "initial").await?;
    // Updates: a deterministic spread over the key space. The stride is coprime with the key
    // count, so consecutive updates (one txn) never name the same key twice.
    let updates = (a.keys as f64 * a.update_fraction).round() as usize;
    if updates > 0 && a.keys > 0 {
        let keys = a.keys;
        let gcd = |mut x: usize, mut y: usize| {
            while y != 0 {
                (x, y) = (y, x % y);
            }
            x
        };
        let stride = (7919..).find(|s| gcd(*s, keys) == 1).unwrap_or(1);
        write(
            &client,
            &a,
            (0..updates).map(move |i| ((i * stride) % keys, 1 + i / keys)),
            "updates",
        )
        .await?;
    }
    let mut m: MaintenanceClient = client.maintenance_client();
    let st = m.status().await.map_err(|e| format!("status: {e}"))?;
    let rev = st.header().map(|h| h.revision()).unwrap_or_default();
    println!(
        "loadgen: {} keys x {} B, {updates} updates in {:.1}s; revision {rev}, db size {} bytes",
        a.keys,
        a.value_size,
        started.elapsed().as_secs_f64(),
        st.db_size()
    );
    Ok(())
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(run(args)) {
        eprintln!("loadgen: {e}");
        std::process::exit(1);
    }
}

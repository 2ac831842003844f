//! The sample data written into a member before a snapshot: what spec §7 fixture (b) asks for
//! (many keys, overflow values, tombstones, overwrites, leases, users and roles, auth on), written
//! fast with batched txns, several in flight.

use etcd_client::Client;

/// What [`populate`] writes. Every field is a count; zero turns a feature off.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Keys `/lifeboat/k/<n>` with small values (~100 B).
    pub keys: usize,
    /// Keys `/lifeboat/big/<n>` with values of 5 to 12 KiB: bbolt overflow pages.
    pub big_values: usize,
    /// Small keys written again (new revision, version 2).
    pub overwrites: usize,
    /// Small keys deleted afterwards (tombstones in bucket `key`).
    pub deletes: usize,
    /// Leases (TTL 1 hour), each with `keys_per_lease` keys `/lifeboat/lease/<l>/<n>`.
    pub leases: usize,
    pub keys_per_lease: usize,
    /// Users `user<n>` with roles `role<n>` (each with a read-write range permission), plus user
    /// `root` with role `root`, and auth enabled at the very end. Clients must authenticate
    /// afterwards; the harness's client certificate (CN `root`) does.
    pub auth: bool,
    pub users: usize,
    /// Puts in flight at once (each a txn of up to [`TXN_OPS`] puts).
    pub concurrency: usize,
}

/// etcd's default `--max-txn-ops`.
pub const TXN_OPS: usize = 128;

impl Sample {
    /// The status/restore oracle sample (spec §7 fixture (b)): about 3 MB, every kind of page and
    /// bucket. Checked on a 3.5.30 snapshot: `key` spans ~750 pages (branch, leaf and overflow
    /// pages), `lease` (40 leases, ~1.8 KB) is a non-inline bucket, the other buckets (`auth*`,
    /// `meta`, `members`, `cluster`, empty `alarm`) are inline.
    pub fn standard() -> Sample {
        Sample {
            keys: 10_240,
            big_values: 64,
            overwrites: 1_000,
            deletes: 500,
            leases: 40,
            keys_per_lease: 2,
            auth: true,
            users: 3,
            concurrency: 4,
        }
    }

    /// A few keys, no auth: for tests that just need a valid snapshot quickly.
    pub fn tiny() -> Sample {
        Sample {
            keys: 20,
            big_values: 1,
            overwrites: 2,
            deletes: 2,
            leases: 1,
            keys_per_lease: 1,
            auth: false,
            users: 0,
            concurrency: 1,
        }
    }
}

/// What [`populate`] did.
#[derive(Debug, Clone, Default)]
pub struct Populated {
    /// Store revision after the last KV write (auth changes do not bump it).
    pub revision: i64,
    /// Live keys under `/lifeboat/`.
    pub live_keys: usize,
    pub lease_ids: Vec<i64>,
}

/// Deterministic value bytes for key number `n` (printable, compress poorly, easy to check).
pub fn sample_value(n: usize, len: usize) -> Vec<u8> {
    let mut x = (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b'!' + (x % 94) as u8
        })
        .collect()
}

/// Write `sample` through `client` (which must be allowed to, i.e. root or auth off).
pub async fn populate(client: &Client, sample: &Sample) -> Populated {
    use etcd_client::{DeleteOptions, Txn, TxnOp};

    let mut puts: Vec<(String, Vec<u8>, Option<i64>)> = Vec::new();
    for n in 0..sample.keys {
        puts.push((
            format!("/lifeboat/k/{n:06}"),
            sample_value(n, 100 + n % 50),
            None,
        ));
    }
    for n in 0..sample.big_values {
        puts.push((
            format!("/lifeboat/big/{n:04}"),
            sample_value(1_000_000 + n, 5 * 1024 + (n * 997) % (7 * 1024)),
            None,
        ));
    }
    let mut lease = client.lease_client();
    let mut lease_ids = Vec::new();
    for l in 0..sample.leases {
        let id = lease.grant(3600, None).await.expect("lease grant").id();
        lease_ids.push(id);
        for n in 0..sample.keys_per_lease {
            puts.push((
                format!("/lifeboat/lease/{l}/{n}"),
                sample_value(2_000_000 + n, 64),
                Some(id),
            ));
        }
    }
    put_all(client, puts, sample.concurrency).await;
    // Overwrites in a second wave, so they are always the second version of their key.
    let overwrites = (0..sample.overwrites.min(sample.keys))
        .map(|n| {
            let k = (n * 7) % sample.keys;
            (
                format!("/lifeboat/k/{k:06}"),
                sample_value(3_000_000 + n, 120),
                None,
            )
        })
        .collect();
    put_all(client, overwrites, sample.concurrency).await;

    // Deletes: evenly spread small keys (distinct), in txns of TXN_OPS.
    let mut kv = client.kv_client();
    let deletes = sample.deletes.min(sample.keys);
    let stride = sample.keys.checked_div(deletes).unwrap_or(1);
    let doomed: Vec<String> = (0..deletes)
        .map(|n| format!("/lifeboat/k/{:06}", n * stride))
        .collect();
    for chunk in doomed.chunks(TXN_OPS) {
        let ops = chunk
            .iter()
            .map(|k| TxnOp::delete(k.as_str(), None::<DeleteOptions>))
            .collect::<Vec<_>>();
        kv.txn(Txn::new().and_then(ops))
            .await
            .expect("txn of deletes");
    }

    let resp = kv
        .get(
            "/lifeboat/",
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_count_only(),
            ),
        )
        .await
        .expect("count keys");
    let revision = resp.header().expect("header").revision();
    let live_keys = resp.count() as usize;

    if sample.auth {
        let mut auth = client.auth_client();
        auth.role_add("root").await.expect("role add root");
        auth.user_add("root", "lifeboat-root-pw", None)
            .await
            .expect("user add root");
        auth.user_grant_role("root", "root")
            .await
            .expect("grant root");
        for u in 0..sample.users {
            let role = format!("role{u}");
            auth.role_add(role.as_str()).await.expect("role add");
            auth.role_grant_permission(
                role.as_str(),
                etcd_client::Permission::read_write(format!("/app{u}/")).with_prefix(),
            )
            .await
            .expect("grant permission");
            let user = format!("user{u}");
            auth.user_add(user.as_str(), format!("pw{u}"), None)
                .await
                .expect("user add");
            auth.user_grant_role(user.as_str(), role.as_str())
                .await
                .expect("user grant role");
        }
        auth.auth_enable().await.expect("auth enable");
    }
    Populated {
        revision,
        live_keys,
        lease_ids,
    }
}

/// Put every `(key, value, lease)`, in txns of at most [`TXN_OPS`] puts and ~1 MiB, `concurrency`
/// txns in flight. A key must not appear twice in `puts` within one txn (etcd refuses that).
pub async fn put_all(
    client: &Client,
    puts: Vec<(String, Vec<u8>, Option<i64>)>,
    concurrency: usize,
) {
    use etcd_client::{PutOptions, Txn, TxnOp};
    let mut batches: Vec<Vec<TxnOp>> = Vec::new();
    let mut cur = Vec::new();
    let mut cur_bytes = 0;
    for (k, v, lease) in puts {
        let len = k.len() + v.len();
        if cur.len() == TXN_OPS || (cur_bytes + len > 1 << 20 && !cur.is_empty()) {
            batches.push(std::mem::take(&mut cur));
            cur_bytes = 0;
        }
        cur_bytes += len;
        let opts = lease.map(|id| PutOptions::new().with_lease(id));
        cur.push(TxnOp::put(k, v, opts));
    }
    if !cur.is_empty() {
        batches.push(cur);
    }
    let mut tasks = tokio::task::JoinSet::new();
    let mut batches = batches.into_iter();
    loop {
        while tasks.len() < concurrency.max(1) {
            let Some(ops) = batches.next() else { break };
            let mut kv = client.kv_client();
            tasks.spawn(async move { kv.txn(Txn::new().and_then(ops)).await });
        }
        match tasks.join_next().await {
            Some(r) => {
                r.expect("put task").expect("txn of puts");
            }
            None => break,
        }
    }
}

/// A multi-threaded tokio runtime for the async parts of a synchronous test.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

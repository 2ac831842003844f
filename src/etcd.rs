//! Talking to etcd: mTLS client set-up, preflight (status, alarms, members), and the snapshot stream.
//!
//! Only this file knows `etcd-client`. The backup pipeline asks it for a `Preflight` (which member
//! to snapshot and what it looked like) and then for the raw `Maintenance.Snapshot` stream, which is
//! handed chunk by chunk to a caller-supplied sink (the spool). TLS verification is always on for
//! `https://` endpoints; there is no switch to turn it off.

use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{
    AlarmAction, AlarmType, Certificate, Client, ConnectOptions, Identity, TlsOptions,
};

use crate::config::Env;
use crate::error::{chain, Error, Result};

#[derive(Clone, Debug)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    pub tls: Option<TlsFiles>,
    pub dial_timeout: Duration,
    pub snapshot_timeout: Duration,
}

/// PEM material, read and checked at start-up. `Debug` never prints key bytes.
#[derive(Clone)]
pub struct TlsFiles {
    pub ca_path: PathBuf,
    ca_pem: Vec<u8>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFiles")
            .field("ca_path", &self.ca_path)
            .field(
                "client_identity",
                &self.identity.as_ref().map(|_| "REDACTED"),
            )
            .finish()
    }
}

fn read_pem(var: &str, path: &str, what: &str, marker: &str) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::Config(format!("{var}: cannot read {what} {path:?}: {e}")))?;
    if !String::from_utf8_lossy(&bytes).contains(marker) {
        return Err(Error::Config(format!(
            "{var}: {path:?} is not a PEM {what} (no {marker:?} line)"
        )));
    }
    Ok(bytes)
}

/// The client key must be the private half of the client certificate's public key (a mismatch
/// otherwise surfaces only as an opaque "transport error" during the handshake).
fn check_key_pair(cert_pem: &[u8], key_pem: &[u8]) -> std::result::Result<(), String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| format!("the certificate file does not parse: {e:?}"))?;
    if certs.is_empty() {
        return Err("the certificate file holds no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| format!("the key file does not parse: {e:?}"))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("unsupported key: {e}"))?;
    rustls::sign::CertifiedKey::new(certs, signer)
        .keys_match()
        .map_err(|_| {
            "the private key does not belong to the certificate (mounted the wrong key?)"
                .to_string()
        })
}

/// Check one endpoint: an absolute http(s) URL with host and port, nothing else.
fn check_endpoint(var: &str, ep: &str) -> Result<String> {
    let bad = |why: &str| {
        Error::Config(format!("{var}: {ep:?} is not a usable etcd client URL: {why} (expected e.g. https://127.0.0.1:2379)"))
    };
    let (scheme, rest) = ep.split_once("://").ok_or_else(|| bad("no scheme"))?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "https" && scheme != "http" {
        return Err(bad("scheme must be https or http"));
    }
    let hostport = rest.trim_end_matches('/');
    if hostport.is_empty()
        || hostport.contains(['/', '?', '#', '@'])
        || hostport.chars().any(char::is_whitespace)
    {
        return Err(bad(
            "expected scheme://host:port with no path, query or credentials",
        ));
    }
    let port = hostport
        .rsplit_once(':')
        .map(|(_, p)| p)
        .ok_or_else(|| bad("no port"))?;
    port.parse::<u16>()
        .map_err(|_| bad("port is not a number"))?;
    Ok(format!("{scheme}://{hostport}"))
}

impl EtcdConfig {
    pub fn from_env(env: &Env) -> Result<Self> {
        let (var, raw) = env
            .first(&["LIFEBOAT_ETCD_ENDPOINTS", "ETCDCTL_ENDPOINTS"])
            .unwrap_or(("LIFEBOAT_ETCD_ENDPOINTS", "https://127.0.0.1:2379"));
        let endpoints = raw
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|ep| check_endpoint(var, ep))
            .collect::<Result<Vec<_>>>()?;
        if endpoints.is_empty() {
            return Err(Error::Config(format!("{var}: no endpoint given")));
        }
        let any_https = endpoints.iter().any(|e| e.starts_with("https://"));
        let ca = env.first(&["LIFEBOAT_ETCD_CACERT", "ETCDCTL_CACERT"]);
        let cert = env.first(&["LIFEBOAT_ETCD_CERT", "ETCDCTL_CERT"]);
        let key = env.first(&["LIFEBOAT_ETCD_KEY", "ETCDCTL_KEY"]);
        let tls = match (any_https, ca) {
            (false, _) => None,
            (true, None) => {
                return Err(Error::Config(
                    "LIFEBOAT_ETCD_CACERT (or ETCDCTL_CACERT) is required for https endpoints: point it at the CA that signed etcd's serving certificate (kubeadm: /etc/kubernetes/pki/etcd/ca.crt)".into(),
                ))
            }
            (true, Some((ca_var, ca_path))) => {
                let ca_pem = read_pem(ca_var, ca_path, "CA certificate", "BEGIN CERTIFICATE")?;
                let identity = match (cert, key) {
                    (None, None) => None,
                    (Some((cv, cp)), Some((kv, kp))) => Some((
                        read_pem(cv, cp, "client certificate", "BEGIN CERTIFICATE")?,
                        read_pem(kv, kp, "client key", "PRIVATE KEY")?,
                    )),
                    (Some((v, _)), None) | (None, Some((v, _))) => {
                        return Err(Error::Config(format!(
                            "{v} is set but its partner is not: set both LIFEBOAT_ETCD_CERT and LIFEBOAT_ETCD_KEY (client certificate and key)"
                        )))
                    }
                };
                if let (Some((cert_pem, key_pem)), Some((cv, cp)), Some((kv, kp))) = (&identity, cert, key) {
                    check_key_pair(cert_pem, key_pem).map_err(|why| {
                        Error::Config(format!("{cv}={cp:?} and {kv}={kp:?} cannot be used together: {why}"))
                    })?;
                }
                Some(TlsFiles { ca_path: PathBuf::from(ca_path), ca_pem, identity })
            }
        };
        Ok(EtcdConfig {
            endpoints,
            tls,
            dial_timeout: env.duration("LIFEBOAT_ETCD_DIAL_TIMEOUT", "10s")?,
            snapshot_timeout: env.duration("LIFEBOAT_SNAPSHOT_TIMEOUT", "30m")?,
        })
    }
}

/// One member as seen by preflight.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct MemberStatus {
    pub endpoint: String,
    pub member_id: String,
    pub member_name: String,
    pub cluster_id: String,
    pub version: String,
    pub db_size: u64,
    pub leader: String,
    pub raft_index: u64,
    pub raft_applied_index: u64,
    pub raft_term: u64,
    pub revision: i64,
}

#[derive(Debug, Clone)]
pub struct Preflight {
    /// The member to snapshot: healthy, highest applied index.
    pub chosen: MemberStatus,
    pub members: Vec<MemberStatus>,
}

/// Make a human error out of an etcd-client error, naming the likely cause.
fn explain(cfg: &EtcdConfig, endpoint: &str, what: &str, e: &etcd_client::Error) -> Error {
    let detail = chain(e);
    let lower = detail.to_ascii_lowercase();
    let hint = if lower.contains("unknownissuer")
        || lower.contains("unknown issuer")
        || lower.contains("invalid peer certificate")
    {
        " — the server's certificate is not signed by LIFEBOAT_ETCD_CACERT (certificate verification failed): check the CA file"
    } else if lower.contains("fatal alert: unknownca")
        || lower.contains("fatal alert: badcertificate")
        || lower.contains("fatal alert: certificateunknown")
    {
        " — etcd rejected our client certificate: LIFEBOAT_ETCD_CERT must be signed by the CA etcd trusts for clients (its --trusted-ca-file)"
    } else if lower.contains("certificaterequired") || lower.contains("certificate required") {
        " — etcd requires a client certificate: set LIFEBOAT_ETCD_CERT and LIFEBOAT_ETCD_KEY (kubeadm: /etc/kubernetes/pki/etcd/healthcheck-client.crt/.key)"
    } else if lower.contains("certificate")
        || lower.contains("bad certificate")
        || lower.contains("handshake")
        || lower.contains("tls")
    {
        " — TLS handshake failed (certificate problem): check LIFEBOAT_ETCD_CERT/LIFEBOAT_ETCD_KEY are a matching client certificate and key signed by etcd's client CA"
    } else if lower.contains("connection refused")
        || lower.contains("tcp connect")
        || lower.contains("timed out")
        || lower.contains("deadline")
    {
        " — etcd is not reachable: check LIFEBOAT_ETCD_ENDPOINTS and that the member is running"
    } else if lower.contains("permission denied") || lower.contains("user name is empty") {
        " — authorization failed: snapshots need the root role when auth is enabled (client certificate CN=root)"
    } else if cfg.tls.as_ref().is_some_and(|t| t.identity.is_some())
        && (lower.contains("connection closed")
            || lower.contains("broken pipe")
            || lower.contains("connection reset"))
    {
        " — etcd closed the connection right after the TLS handshake, which is how it rejects a client certificate under TLS 1.3 (our client certificate may be the problem): check that LIFEBOAT_ETCD_CERT is signed by the CA etcd trusts for clients (its --trusted-ca-file)"
    } else if cfg.tls.as_ref().is_some_and(|t| t.identity.is_none()) {
        " — no client certificate is configured and etcd usually requires one: set LIFEBOAT_ETCD_CERT and LIFEBOAT_ETCD_KEY"
    } else {
        ""
    };
    Error::Etcd(format!("{endpoint}: {what} failed: {detail}{hint}"))
}

pub async fn connect(
    cfg: &EtcdConfig,
    endpoint: &str,
    request_timeout: Option<Duration>,
) -> Result<Client> {
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(cfg.dial_timeout)
        .with_keep_alive(Duration::from_secs(10), cfg.dial_timeout);
    if let Some(t) = request_timeout {
        opts = opts.with_timeout(t);
    }
    if let Some(tls) = &cfg.tls {
        let mut t = TlsOptions::new().ca_certificate(Certificate::from_pem(&tls.ca_pem));
        if let Some((cert, key)) = &tls.identity {
            t = t.identity(Identity::from_pem(cert, key));
        }
        opts = opts.with_tls(t);
    }
    let fut = Client::connect([endpoint], Some(opts));
    match tokio::time::timeout(cfg.dial_timeout, fut).await {
        Ok(r) => r.map_err(|e| explain(cfg, endpoint, "connect", &e)),
        Err(_) => Err(Error::Etcd(format!(
            "{endpoint}: no connection within {} (LIFEBOAT_ETCD_DIAL_TIMEOUT) — check the endpoint and that etcd is running",
            humantime::format_duration(cfg.dial_timeout)
        ))),
    }
}

async fn member_status(
    cfg: &EtcdConfig,
    endpoint: &str,
) -> Result<(MemberStatus, Vec<String>, Vec<(u64, String)>)> {
    let mut client = connect(cfg, endpoint, Some(cfg.dial_timeout)).await?;
    let st = client
        .status()
        .await
        .map_err(|e| explain(cfg, endpoint, "status", &e))?;
    let alarms = client
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .map_err(|e| explain(cfg, endpoint, "alarm list", &e))?;
    let members = client
        .member_list()
        .await
        .map_err(|e| explain(cfg, endpoint, "member list", &e))?;
    let header = st.header();
    let member_id = header.map(|h| h.member_id()).unwrap_or(0);
    let name = members
        .members()
        .iter()
        .find(|m| m.id() == member_id)
        .map(|m| m.name().to_string())
        .unwrap_or_default();
    let alarm_list = alarms
        .alarms()
        .iter()
        .map(|a| format!("{:?} on member {:x}", a.alarm(), a.member_id()))
        .collect();
    let member_names = members
        .members()
        .iter()
        .map(|m| (m.id(), m.name().to_string()))
        .collect();
    let ms = MemberStatus {
        endpoint: endpoint.to_string(),
        member_id: format!("{member_id:x}"),
        member_name: name,
        cluster_id: format!("{:x}", header.map(|h| h.cluster_id()).unwrap_or(0)),
        version: st.version().to_string(),
        db_size: u64::try_from(st.db_size()).unwrap_or(0),
        leader: format!("{:x}", st.leader()),
        raft_index: st.raft_index(),
        raft_applied_index: st.raft_applied_index(),
        raft_term: st.raft_term(),
        revision: header.map(|h| h.revision()).unwrap_or(0),
    };
    if !st.errors().is_empty() {
        return Err(Error::Etcd(format!(
            "{endpoint}: member reports errors: {}",
            st.errors().join("; ")
        )));
    }
    if st.leader() == 0 {
        return Err(Error::Etcd(format!(
            "{endpoint}: member has no leader (cluster lost quorum?); refusing to snapshot"
        )));
    }
    Ok((ms, alarm_list, member_names))
}

/// Status, alarms and members of every endpoint; refuse on alarms or when no member is healthy.
pub async fn preflight(cfg: &EtcdConfig) -> Result<Preflight> {
    let mut members = Vec::new();
    let mut failures = Vec::new();
    for ep in &cfg.endpoints {
        match member_status(cfg, ep).await {
            Ok((ms, alarms, names)) => {
                tracing::info!(endpoint = %ep, member = %ms.member_name, id = %ms.member_id, version = %ms.version,
                    db_size = ms.db_size, applied = ms.raft_applied_index, revision = ms.revision, members = names.len(), "preflight");
                if let Some(a) = alarms
                    .iter()
                    .find(|a| a.contains("Nospace") || a.contains("Corrupt"))
                {
                    return Err(Error::Etcd(format!(
                        "{ep}: alarm raised ({a}); refusing to back up a cluster in alarm — resolve it (defragment / free space, then `etcdctl alarm disarm`) first"
                    )));
                }
                members.push(ms);
            }
            Err(e) => {
                if cfg.endpoints.len() > 1 {
                    tracing::warn!(endpoint = %ep, error = %e, "preflight failed for endpoint");
                }
                failures.push(e);
            }
        }
    }
    let chosen = members
        .iter()
        .max_by_key(|m| (m.raft_applied_index, m.raft_index))
        .cloned();
    match chosen {
        Some(chosen) => Ok(Preflight { chosen, members }),
        None if failures.len() == 1 => Err(failures.remove(0)),
        None => Err(Error::Etcd(format!(
            "no healthy member among {} endpoints: {}",
            failures.len(),
            failures
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        ))),
    }
}

/// Receives the snapshot stream. `announce` is called once with the DB length from the first message.
pub trait SnapshotSink {
    fn announce(&mut self, db_len: u64) -> Result<()>;
    fn write(&mut self, chunk: &[u8]) -> Result<()>;
}

/// Stream `Maintenance.Snapshot` from `endpoint` into `sink` (every blob, trailer included).
pub async fn stream_snapshot(
    cfg: &EtcdConfig,
    endpoint: &str,
    sink: &mut dyn SnapshotSink,
) -> Result<()> {
    let work = async {
        let mut client = connect(cfg, endpoint, None).await?;
        let mut stream = client
            .snapshot()
            .await
            .map_err(|e| explain(cfg, endpoint, "snapshot", &e))?;
        let mut first = true;
        let idle = cfg.dial_timeout.max(Duration::from_secs(30));
        loop {
            let msg = match tokio::time::timeout(idle, stream.message()).await {
                Err(_) => {
                    return Err(Error::Etcd(format!(
                        "{endpoint}: snapshot stream stalled for {}",
                        humantime::format_duration(idle)
                    )))
                }
                Ok(r) => r.map_err(|e| explain(cfg, endpoint, "snapshot stream", &e))?,
            };
            let Some(msg) = msg else { break };
            if first {
                let db_len = msg
                    .remaining_bytes()
                    .checked_add(msg.blob().len() as u64)
                    .ok_or_else(|| {
                        Error::Etcd(format!(
                            "{endpoint}: snapshot stream announced an impossible size"
                        ))
                    })?;
                sink.announce(db_len)?;
                first = false;
            }
            sink.write(msg.blob())?;
        }
        if first {
            return Err(Error::Etcd(format!(
                "{endpoint}: snapshot stream ended before any data"
            )));
        }
        Ok(())
    };
    match tokio::time::timeout(cfg.snapshot_timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(Error::Etcd(format!(
            "{endpoint}: snapshot did not finish within {} (LIFEBOAT_SNAPSHOT_TIMEOUT)",
            humantime::format_duration(cfg.snapshot_timeout)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_checked() {
        assert_eq!(
            check_endpoint("V", "HTTPS://10.0.0.1:2379/").unwrap(),
            "https://10.0.0.1:2379"
        );
        for bad in [
            "10.0.0.1:2379",
            "ftp://x:1",
            "https://x",
            "https://x:abc",
            "https://u:p@x:1",
            "https://x:1/path",
            "https://x:1?q",
        ] {
            let e = check_endpoint("LIFEBOAT_ETCD_ENDPOINTS", bad)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("LIFEBOAT_ETCD_ENDPOINTS") && e.contains("not a usable"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn config_fallbacks_and_errors() {
        let env = Env::from_pairs([("ETCDCTL_ENDPOINTS", "http://127.0.0.1:1,http://127.0.0.1:2")]);
        let c = EtcdConfig::from_env(&env).unwrap();
        assert_eq!(c.endpoints.len(), 2);
        assert!(c.tls.is_none());
        let env = Env::from_pairs([("LIFEBOAT_ETCD_ENDPOINTS", " , ")]);
        assert!(EtcdConfig::from_env(&env)
            .unwrap_err()
            .to_string()
            .contains("no endpoint"));
        let env = Env::from_pairs([("LIFEBOAT_ETCD_ENDPOINTS", "https://127.0.0.1:2379")]);
        assert!(EtcdConfig::from_env(&env)
            .unwrap_err()
            .to_string()
            .contains("LIFEBOAT_ETCD_CACERT"));
        let env = Env::from_pairs([("ETCDCTL_CACERT", "/nonexistent/ca.crt")]);
        let e = EtcdConfig::from_env(&env).unwrap_err().to_string();
        assert!(
            e.contains("ETCDCTL_CACERT") && e.contains("cannot read"),
            "{e}"
        );
    }
}

//! Notifications for short-lived Jobs: after a command has finished (success *or* failure), tell a
//! Prometheus Pushgateway and/or a webhook how it went, so that alerting does not depend on
//! scraping a pod that no longer exists.
//!
//! - `LIFEBOAT_PUSHGATEWAY_URL` (backup only): the text exposition format is sent to
//!   `<url>/metrics/job/etcd_lifeboat_backup/cluster/<cluster-name>` with **POST**, which replaces
//!   only the metrics of the same names in that group. A success sends the success timestamp,
//!   duration, size, revision and `success 1`; a failure sends duration, `success 0` and the
//!   failure timestamp, so neither outcome wipes the other's timestamp (a PUT would replace the
//!   whole group and lose the last success timestamp on every failure).
//! - `LIFEBOAT_WEBHOOK_URL` (backup, restore, verify): one JSON object per run (see [`Report::json`]).
//!
//! Notifications never change the command's outcome: every problem is a warning. Each request has
//! `LIFEBOAT_NOTIFY_TIMEOUT` (default 10 s), 5xx / 429 / connection failures are retried up to 3
//! attempts, and the whole notification is bounded by that timeout as well (3 s at most after a
//! SIGTERM, which leaves room in the pod's grace period). The URLs may carry credentials (basic-auth
//! user info, tokens in the query, secret paths as in Slack-style webhooks): they are checked like a
//! presigned URL (https, or plain http on loopback only) and only ever logged as scheme + host.
//! One exception: an in-cluster Pushgateway is usually plain `http://…:9091`, so the Pushgateway
//! URL may be plain http anywhere when it carries no user info and no query.

use std::time::{Duration, Instant, SystemTime};

use reqwest::header::CONTENT_TYPE;

use crate::config::Env;
use crate::error::{Error, Result};
use crate::store::net;
use crate::store::presigned::{err_chain, SecretUrl};

/// Attempts per notification request (the first included).
const ATTEMPTS: u32 = 3;
/// After SIGTERM/SIGINT the pod's grace period is running out: keep notifications short.
const AFTER_SIGNAL: Duration = Duration::from_secs(3);
/// The Pushgateway grouping key's job label.
pub const PUSH_JOB: &str = "etcd_lifeboat_backup";

/// Where to send notifications; both optional.
#[derive(Debug, Clone)]
pub struct NotifyConfig {
    pushgateway: Option<SecretUrl>,
    webhook: Option<SecretUrl>,
    timeout: Duration,
}

impl NotifyConfig {
    pub fn from_env(env: &Env) -> Result<Self> {
        let url = |var: &str, plain_http_ok: bool| {
            env.get(var)
                .map(|u| SecretUrl::parse_notify(var, u, plain_http_ok))
                .transpose()
        };
        let timeout = env.duration("LIFEBOAT_NOTIFY_TIMEOUT", "10s")?;
        if timeout.is_zero() {
            return Err(Error::Config(
                "LIFEBOAT_NOTIFY_TIMEOUT: must be more than 0".into(),
            ));
        }
        Ok(NotifyConfig {
            pushgateway: url("LIFEBOAT_PUSHGATEWAY_URL", true)?,
            webhook: url("LIFEBOAT_WEBHOOK_URL", false)?,
            timeout,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.pushgateway.is_none() && self.webhook.is_none()
    }
}

/// What happened in one run, as notified.
#[derive(Debug, Clone)]
pub struct Report {
    /// `backup`, `restore` or `verify`.
    pub event: &'static str,
    pub cluster: String,
    pub backup_id: Option<String>,
    pub revision: Option<i64>,
    /// The stored object's size (what the store holds).
    pub size_bytes: Option<u64>,
    pub duration: Duration,
    /// The error chain as printed on stderr; `None` on success.
    pub error: Option<String>,
    pub exit_code: i32,
    pub time: SystemTime,
    /// The run was cut short by SIGTERM/SIGINT.
    pub interrupted: bool,
}

impl Report {
    /// A report for a run that started at `started` and ended with `outcome`.
    pub fn new<T>(
        event: &'static str,
        cluster: &str,
        started: Instant,
        outcome: &Result<T>,
    ) -> Report {
        let (error, exit_code, interrupted) = match outcome {
            Ok(_) => (None, crate::error::exit::OK, false),
            Err(e) => (
                Some(crate::error::chain(e)),
                e.exit_code(),
                matches!(e, Error::Interrupted(_)),
            ),
        };
        Report {
            event,
            cluster: cluster.to_string(),
            backup_id: None,
            revision: None,
            size_bytes: None,
            duration: started.elapsed(),
            error,
            exit_code,
            time: SystemTime::now(),
            interrupted,
        }
    }

    pub fn success(&self) -> bool {
        self.error.is_none()
    }

    /// The webhook body.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "event": self.event,
            "outcome": if self.success() { "success" } else { "failure" },
            "cluster": self.cluster,
            "backup_id": self.backup_id,
            "revision": self.revision,
            "size_bytes": self.size_bytes,
            "duration_seconds": self.duration.as_secs_f64(),
            "error": self.error,
            "exit_code": self.exit_code,
            "time": crate::manifest::rfc3339(self.time),
        })
    }

    /// The Pushgateway body (text format 0.0.4): only the metrics this outcome updates.
    pub fn metrics(&self) -> String {
        let now = self
            .time
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let mut out = String::new();
        let mut metric = |name: &str, help: &str, value: String| {
            out.push_str(&format!(
                "# HELP etcd_lifeboat_backup_{name} {help}\n# TYPE etcd_lifeboat_backup_{name} gauge\netcd_lifeboat_backup_{name} {value}\n"
            ));
        };
        metric(
            "success",
            "1 if the last backup succeeded, 0 if it failed.",
            u8::from(self.success()).to_string(),
        );
        metric(
            "duration_seconds",
            "Duration of the last backup run, successful or not.",
            format!("{:.3}", self.duration.as_secs_f64()),
        );
        if self.success() {
            metric(
                "last_success_timestamp_seconds",
                "Unix time of the last successful backup.",
                format!("{now:.3}"),
            );
            if let Some(size) = self.size_bytes {
                metric(
                    "size_bytes",
                    "Stored size of the last successful backup.",
                    size.to_string(),
                );
            }
            if let Some(rev) = self.revision {
                metric(
                    "revision",
                    "etcd revision of the last successful backup.",
                    rev.to_string(),
                );
            }
        } else {
            metric(
                "last_failure_timestamp_seconds",
                "Unix time of the last failed backup.",
                format!("{now:.3}"),
            );
        }
        out
    }
}

/// Scheme and host (and port) of `url`: all that is ever logged of a notification URL.
fn host_of(url: &SecretUrl) -> String {
    let u = url.url();
    match u.port() {
        Some(p) => format!("{}://{}:{p}", u.scheme(), u.host_str().unwrap_or("")),
        None => format!("{}://{}", u.scheme(), u.host_str().unwrap_or("")),
    }
}

/// `<url>/metrics/job/etcd_lifeboat_backup/cluster/<cluster>`, keeping the URL's own path prefix and
/// query. A cluster name that is not a valid one (a failed config) is grouped as `invalid`.
pub fn push_url(base: &reqwest::Url, cluster: &str) -> reqwest::Url {
    let cluster = match crate::manifest::check_cluster_name(cluster) {
        Ok(()) => cluster,
        Err(_) => "invalid",
    };
    let mut u = base.clone();
    if let Ok(mut segs) = u.path_segments_mut() {
        segs.pop_if_empty()
            .extend(["metrics", "job", PUSH_JOB, "cluster", cluster]);
    }
    u
}

/// Send `report` to every configured endpoint. Never fails: problems are logged as warnings.
pub async fn send(cfg: &NotifyConfig, report: &Report) {
    if cfg.is_empty() {
        return;
    }
    net::install_crypto_provider();
    let limit = if report.interrupted {
        cfg.timeout.min(AFTER_SIGNAL)
    } else {
        cfg.timeout
    };
    let client = match reqwest::Client::builder()
        .connect_timeout(limit)
        .timeout(limit)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("etcd-lifeboat/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("notifications not sent: setting up the HTTP client: {e}");
            return;
        }
    };
    let push = async {
        let Some(url) = cfg
            .pushgateway
            .as_ref()
            .filter(|_| report.event == "backup")
        else {
            return;
        };
        let target = push_url(url.url(), &report.cluster);
        let body = report.metrics();
        deliver("Pushgateway", url, || {
            client
                .post(target.clone())
                .header(CONTENT_TYPE, "text/plain; version=0.0.4")
                .body(body.clone())
        })
        .await;
    };
    let hook = async {
        let Some(url) = &cfg.webhook else { return };
        let body = report.json().to_string();
        deliver("webhook", url, || {
            client
                .post(url.url().clone())
                .header(CONTENT_TYPE, "application/json")
                .body(body.clone())
        })
        .await;
    };
    let both = async { tokio::join!(push, hook) };
    if tokio::time::timeout(limit, both).await.is_err() {
        tracing::warn!(
            "notifications not finished after {limit:?} (LIFEBOAT_NOTIFY_TIMEOUT); the {} outcome is unaffected",
            report.event
        );
    }
}

/// One request with retries; logs the outcome.
async fn deliver(what: &str, url: &SecretUrl, req: impl Fn() -> reqwest::RequestBuilder) {
    let host = host_of(url);
    for attempt in 1..=ATTEMPTS {
        let (problem, retry) = match req().send().await {
            Ok(resp) if resp.status().is_success() => {
                tracing::info!("{what} notified ({host})");
                return;
            }
            Ok(resp) => {
                let s = resp.status();
                let retry = s.is_server_error() || s.as_u16() == 429 || s.as_u16() == 408;
                (format!("HTTP {}", s.as_u16()), retry)
            }
            Err(e) => (err_chain(&e.without_url()), true),
        };
        if !retry || attempt == ATTEMPTS {
            tracing::warn!(
                "{what} notification to {host} failed after {attempt} attempt(s): {problem} (the command's outcome is unaffected)"
            );
            return;
        }
        let wait = net::backoff(attempt);
        tracing::debug!("{what} notification to {host}: {problem}; retrying in {wait:?}");
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(ok: bool) -> Report {
        let outcome: Result<()> = if ok {
            Ok(())
        } else {
            Err(Error::Etcd("no endpoint is reachable".into()))
        };
        let mut r = Report::new("backup", "prod-1", Instant::now(), &outcome);
        if ok {
            r.backup_id = Some("20261122T043330Z-r5".into());
            r.revision = Some(5);
            r.size_bytes = Some(1234);
        }
        r
    }

    #[test]
    fn metrics_update_only_their_outcome() {
        let ok = report(true).metrics();
        for line in [
            "etcd_lifeboat_backup_success 1\n",
            "etcd_lifeboat_backup_size_bytes 1234\n",
            "etcd_lifeboat_backup_revision 5\n",
            "# TYPE etcd_lifeboat_backup_last_success_timestamp_seconds gauge\n",
            "# HELP etcd_lifeboat_backup_duration_seconds ",
        ] {
            assert!(ok.contains(line), "{line:?} missing in\n{ok}");
        }
        assert!(!ok.contains("last_failure"), "{ok}");
        let bad = report(false).metrics();
        assert!(bad.contains("etcd_lifeboat_backup_success 0\n"), "{bad}");
        assert!(bad.contains("etcd_lifeboat_backup_last_failure_timestamp_seconds "));
        for absent in ["last_success", "size_bytes", "revision"] {
            assert!(!bad.contains(absent), "{absent} in\n{bad}");
        }
    }

    #[test]
    fn webhook_json_has_the_documented_shape() {
        let j = report(false).json();
        assert_eq!(j["event"], "backup");
        assert_eq!(j["outcome"], "failure");
        assert_eq!(j["exit_code"], 3);
        assert!(j["error"].as_str().unwrap().contains("no endpoint"));
        assert!(j["backup_id"].is_null() && j["revision"].is_null());
        let j = report(true).json();
        assert_eq!(j["outcome"], "success");
        assert!(j["error"].is_null());
        assert_eq!(j["revision"], 5);
        assert!(j["time"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn push_url_keeps_prefix_and_query() {
        let base = reqwest::Url::parse("https://u:p@pg.example/prefix/?token=t").unwrap();
        assert_eq!(
            push_url(&base, "prod-1").as_str(),
            "https://u:p@pg.example/prefix/metrics/job/etcd_lifeboat_backup/cluster/prod-1?token=t"
        );
        let base = reqwest::Url::parse("http://127.0.0.1:9091").unwrap();
        assert_eq!(
            push_url(&base, "../x").as_str(),
            "http://127.0.0.1:9091/metrics/job/etcd_lifeboat_backup/cluster/invalid"
        );
    }

    #[test]
    fn urls_are_checked_and_only_hosts_are_shown() {
        let env = Env::from_pairs([(
            "LIFEBOAT_WEBHOOK_URL",
            "http://hooks.example.com/services/SECRET",
        )]);
        let e = NotifyConfig::from_env(&env).unwrap_err().to_string();
        assert!(
            e.contains("LIFEBOAT_WEBHOOK_URL") && e.contains("loopback"),
            "{e}"
        );
        // An in-cluster Pushgateway over plain http is fine without credentials, not with them.
        let env = Env::from_pairs([(
            "LIFEBOAT_PUSHGATEWAY_URL",
            "http://pushgateway.monitoring.svc:9091",
        )]);
        assert!(NotifyConfig::from_env(&env).is_ok());
        for bad in [
            "http://u:SECRET@pushgateway.monitoring.svc:9091",
            "http://pushgateway.monitoring.svc:9091/?token=SECRET",
        ] {
            let env = Env::from_pairs([("LIFEBOAT_PUSHGATEWAY_URL", bad)]);
            let e = NotifyConfig::from_env(&env).unwrap_err().to_string();
            assert!(e.contains("loopback") && !e.contains("SECRET"), "{e}");
        }
        let env = Env::from_pairs([("LIFEBOAT_NOTIFY_TIMEOUT", "0s")]);
        assert!(NotifyConfig::from_env(&env).is_err());
        let u = SecretUrl::parse(
            "V",
            "https://user:pw@hooks.example.com:8443/T/SECRET?k=SECRET",
        )
        .unwrap();
        assert_eq!(host_of(&u), "https://hooks.example.com:8443");
        assert!(NotifyConfig::from_env(&Env::default()).unwrap().is_empty());
    }
}

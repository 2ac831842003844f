//! Several members on loopback: a [`ClusterPlan`] fixes names, ports, peer URLs and the token before
//! anything runs (restore needs them first), then starts the members on fresh or restored dirs.

use std::fmt::Write as _;
use std::path::PathBuf;

use super::etcd::{Etcd, EtcdOpts, START_TIMEOUT};
use super::process::alloc_port;
use super::tls::Tls;
use super::versions::Version;

/// The shape of a cluster decided before anything runs: member names, ports, peer URLs, token.
/// Restore tests need it first (`snapshot restore --initial-cluster ...` bakes the peer URLs into
/// the data dirs), then start the members on the restored dirs with [`ClusterPlan::start`].
#[derive(Debug, Clone)]
pub struct ClusterPlan {
    /// `m0`, `m1`, ...
    pub names: Vec<String>,
    pub client_ports: Vec<u16>,
    pub peer_ports: Vec<u16>,
    /// https peer URLs with the test CA (`--peer-client-cert-auth`), or plain http.
    pub peer_tls: bool,
    pub token: String,
}

impl ClusterPlan {
    pub fn new(n: usize, token: &str, peer_tls: bool) -> ClusterPlan {
        assert!(n >= 1, "a cluster needs at least one member");
        ClusterPlan {
            names: (0..n).map(|i| format!("m{i}")).collect(),
            client_ports: (0..n).map(|_| alloc_port()).collect(),
            peer_ports: (0..n).map(|_| alloc_port()).collect(),
            peer_tls,
            token: token.to_string(),
        }
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// `https://127.0.0.1:<port>` (or http) of member `i`.
    pub fn peer_url(&self, i: usize) -> String {
        let scheme = if self.peer_tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.peer_ports[i])
    }

    /// `m0=<peer url>,m1=<peer url>,...`, for `--initial-cluster`.
    pub fn initial_cluster(&self) -> String {
        (0..self.len())
            .map(|i| format!("{}={}", self.names[i], self.peer_url(i)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Start every member (on `data_dirs[i]` when given, e.g. restored dirs; else fresh temp
    /// dirs) and wait until all are healthy; panics with every member's log tail otherwise.
    pub fn start(&self, version: Version, tls: &Tls, data_dirs: Option<&[PathBuf]>) -> Cluster {
        if let Some(d) = data_dirs {
            assert_eq!(d.len(), self.len(), "one data dir per member");
        }
        let mut members: Vec<Etcd> = (0..self.len())
            .map(|i| {
                Etcd::spawn(
                    version,
                    tls,
                    EtcdOpts {
                        name: Some(self.names[i].clone()),
                        initial_cluster: Some(self.initial_cluster()),
                        initial_cluster_token: Some(self.token.clone()),
                        data_dir: data_dirs.map(|d| d[i].clone()),
                        peer_tls: self.peer_tls,
                        client_port: Some(self.client_ports[i]),
                        peer_port: Some(self.peer_ports[i]),
                        ..Default::default()
                    },
                )
            })
            .collect();
        for i in 0..members.len() {
            if let Err(why) = members[i].wait_healthy(START_TIMEOUT) {
                let mut msg = format!("cluster member m{i} ({version}) not healthy: {why}\n");
                for m in &members {
                    let _ = writeln!(msg, "--- {} log tail ---\n{}", m.name(), m.log_tail(25));
                }
                for m in &mut members {
                    m.kill();
                }
                panic!("{msg}");
            }
        }
        Cluster {
            members,
            plan: self.clone(),
        }
    }
}

/// Running members of a [`ClusterPlan`]; all are killed on drop.
pub struct Cluster {
    pub members: Vec<Etcd>,
    pub plan: ClusterPlan,
}

impl Cluster {
    /// A fresh n-member cluster with TLS on client and peer URLs.
    pub fn start(version: Version, n: usize, tls: &Tls, token: &str) -> Cluster {
        ClusterPlan::new(n, token, true).start(version, tls, None)
    }

    /// Comma-separated client URLs of all members.
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| m.client_url())
            .collect::<Vec<_>>()
            .join(",")
    }
}

//! The new cluster a restore creates: flags in, member and cluster IDs out (spec §3.1–§3.3).
//!
//! `ClusterPlan::new` takes the three `etcdutl snapshot restore` inputs — `--name`,
//! `--initial-cluster`, `--initial-advertise-peer-urls` — plus the cluster token, parses them
//! with etcd's rules (`types.NewURLs`, `types.NewURLsMap`), runs etcd's `VerifyBootstrap` checks
//! with etcd's messages, and computes the IDs exactly as etcd does (SHA-1 of the sorted peer URLs
//! and the token; SHA-1 of the sorted member IDs). It is stricter than etcd in one way: URLs with
//! userinfo, a query, a fragment, percent-escapes or control characters, and names with control
//! characters, are rejected, because for those Go's `url.URL.String()` / `encoding/json` would
//! re-encode the text and the IDs would silently differ. Everything here is pure: the member
//! index for `{index}` templates is passed in by the caller, not read from the environment.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use sha1::{Digest, Sha1};

/// Why the cluster flags were rejected. Messages start with etcd's own wording where etcd has one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    #[error("invalid peer URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("invalid member name {name:?}: {reason}")]
    Name { name: String, reason: String },
    #[error("couldn't find local name {0:?} in the initial cluster configuration; add `{0}=<peer url>` to the initial cluster or fix the member name")]
    LocalNameMissing(String),
    #[error(
        "{0}; the member's advertise peer URLs must list exactly its URLs in the initial cluster"
    )]
    AdvertiseMismatch(String),
    #[error(
        "initial cluster {0} has duplicate url; every peer URL must belong to exactly one member"
    )]
    DuplicateUrl(String),
    #[error("member exists with identical ID {0:x} (members {1:?} and {2:?}); give each member distinct peer URLs")]
    DuplicateId(u64, String, String),
    #[error("cannot use 0 as member id (member {0:?}); change its peer URLs or the cluster token")]
    ZeroId(String),
    #[error("the initial cluster is empty; set it to `name=peer-url[,name=peer-url...]`")]
    EmptyCluster,
    #[error("{what} {template:?} contains {{index}} but no member index is known; run as an Indexed Job (JOB_COMPLETION_INDEX) or set LIFEBOAT_MEMBER_INDEX")]
    IndexMissing { what: String, template: String },
}

/// One member of the restored cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    pub name: String,
    /// Canonical URL strings, sorted (Go `types.URLs.StringSlice()`).
    pub peer_urls: Vec<String>,
}

impl Member {
    /// `types.ID.String()`: lowercase hex without padding — the key in bucket `members`
    /// and in the v2 store.
    pub fn hex_id(&self) -> String {
        format_id(self.id)
    }

    /// Go `json.Marshal(*membership.Member)`: `{"id":…,"peerURLs":[…],"name":"…"}`.
    /// `name` is `omitempty`; `isLearner` and `clientURLs` are always empty on restore.
    pub fn json(&self) -> String {
        let mut s = String::with_capacity(64 + self.name.len());
        let _ = write!(s, "{{\"id\":{},\"peerURLs\":", self.id);
        push_json_string_array(&mut s, &self.peer_urls);
        if !self.name.is_empty() {
            s.push_str(",\"name\":");
            push_json_string(&mut s, &self.name);
        }
        s.push('}');
        s
    }

    /// Go `json.Marshal(membership.RaftAttributes)`: `{"peerURLs":[…]}` (the v2-store value).
    pub fn raft_attributes_json(&self) -> String {
        let mut s = String::from("{\"peerURLs\":");
        push_json_string_array(&mut s, &self.peer_urls);
        s.push('}');
        s
    }
}

/// The cluster a restore creates, members in ascending ID order (etcd's `cl.Members()` order,
/// which fixes the WAL entry order, the Vote and the v2-store indices).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterPlan {
    pub cluster_id: u64,
    /// The member this data dir is for (`--name`).
    pub local_id: u64,
    pub members: Vec<Member>,
}

impl ClusterPlan {
    /// Parse and verify the restore flags and compute all IDs (spec §3.1, §3.2).
    ///
    /// `advertise_peer_urls` is the comma-separated `--initial-advertise-peer-urls`.
    pub fn new(
        name: &str,
        initial_cluster: &str,
        advertise_peer_urls: &str,
        token: &str,
    ) -> Result<Self, ClusterError> {
        check_name(name)?;
        let map = parse_initial_cluster(initial_cluster)?;
        let advertise = parse_urls(advertise_peer_urls)?;
        verify_bootstrap(name, &map, &advertise)?;

        let mut members: Vec<Member> = Vec::with_capacity(map.len());
        for (member_name, urls) in &map {
            let id = member_id(urls, token);
            if id == 0 {
                return Err(ClusterError::ZeroId(member_name.clone()));
            }
            if let Some(other) = members.iter().find(|m| m.id == id) {
                return Err(ClusterError::DuplicateId(
                    id,
                    other.name.clone(),
                    member_name.clone(),
                ));
            }
            members.push(Member {
                id,
                name: member_name.clone(),
                peer_urls: urls.clone(),
            });
        }
        members.sort_by_key(|m| m.id);
        let ids: Vec<u64> = members.iter().map(|m| m.id).collect();
        let local_id = members
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.id)
            .ok_or_else(|| ClusterError::LocalNameMissing(name.to_string()))?;
        Ok(ClusterPlan {
            cluster_id: cluster_id(&ids),
            local_id,
            members,
        })
    }

    /// Member IDs, ascending (the raft voters).
    pub fn member_ids(&self) -> Vec<u64> {
        self.members.iter().map(|m| m.id).collect()
    }

    /// `N`: the number of members = the raft index of the restore snapshot.
    pub fn index(&self) -> u64 {
        self.members.len() as u64
    }
}

/// `types.ID.String()`: `strconv.FormatUint(id, 16)`.
pub fn format_id(id: u64) -> String {
    format!("{id:x}")
}

/// etcd's `computeMemberID` without a timestamp: the first 8 bytes (big-endian) of
/// SHA-1(concat(sorted peer URLs) || token).
pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut sorted: Vec<&str> = peer_urls.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    let mut h = Sha1::new();
    for u in sorted {
        h.update(u.as_bytes());
    }
    h.update(token.as_bytes());
    first_u64(&h.finalize())
}

/// etcd's `RaftCluster.genID`: SHA-1 over the big-endian member IDs in ascending order.
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let mut h = Sha1::new();
    for id in ids {
        h.update(id.to_be_bytes());
    }
    first_u64(&h.finalize())
}

fn first_u64(digest: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(b)
}

/// Replace every `{index}` in `template` with `index` (the Indexed Job's completion index).
/// `what` names the setting in the error, e.g. `"member name"`.
pub fn substitute_index(
    what: &str,
    template: &str,
    index: Option<u64>,
) -> Result<String, ClusterError> {
    const PLACEHOLDER: &str = "{index}";
    if !template.contains(PLACEHOLDER) {
        return Ok(template.to_string());
    }
    match index {
        Some(i) => Ok(template.replace(PLACEHOLDER, &i.to_string())),
        None => Err(ClusterError::IndexMissing {
            what: what.to_string(),
            template: template.to_string(),
        }),
    }
}

/// `types.NewURLsMap`: items split on `,`, each on its first `=`; repeated names accumulate;
/// empty items are skipped. URL lists come back sorted.
pub fn parse_initial_cluster(s: &str) -> Result<BTreeMap<String, Vec<String>>, ClusterError> {
    let mut raw: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for item in s.split(',') {
        if item.is_empty() {
            continue;
        }
        let (name, url) = item.split_once('=').unwrap_or((item, ""));
        raw.entry(name.to_string()).or_default().push(url);
    }
    if raw.is_empty() {
        return Err(ClusterError::EmptyCluster);
    }
    let mut map = BTreeMap::new();
    for (name, urls) in raw {
        check_name(&name)?;
        let mut parsed = urls
            .into_iter()
            .map(parse_url)
            .collect::<Result<Vec<_>, _>>()?;
        parsed.sort();
        map.insert(name, parsed);
    }
    Ok(map)
}

/// `types.NewURLs(strings.Split(s, ","))`: every item must be a valid URL (an empty item is an
/// error here, unlike in the initial cluster). Sorted.
pub fn parse_urls(s: &str) -> Result<Vec<String>, ClusterError> {
    let mut urls = s.split(',').map(parse_url).collect::<Result<Vec<_>, _>>()?;
    urls.sort();
    Ok(urls)
}

/// One peer URL, checked with `types.NewURLs` rules and returned in Go's `URL.String()` form
/// (the input with the scheme lowercased; anything Go would re-encode is rejected).
pub fn parse_url(raw: &str) -> Result<String, ClusterError> {
    let input = raw.trim();
    let err = |reason: &str| ClusterError::Url {
        url: input.to_string(),
        reason: reason.to_string(),
    };
    if input.chars().any(char::is_control) {
        return Err(err("control characters are not allowed"));
    }
    let scheme_err =
        || err("URL scheme must be http, https, unix, or unixs (write it as scheme://host:port)");
    let (scheme, rest) = input.split_once("://").ok_or_else(scheme_err)?;
    let scheme = scheme.to_ascii_lowercase();
    let is_http = match scheme.as_str() {
        "http" | "https" => true,
        "unix" | "unixs" => false,
        _ => return Err(scheme_err()),
    };
    for (c, what) in [('@', "user info"), ('?', "a query"), ('#', "a fragment")] {
        if rest.contains(c) {
            return Err(err(&format!(
                "{what} ({c:?}) is not supported in peer URLs"
            )));
        }
    }
    if let Some(c) = rest.chars().find(|&c| {
        !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~' | ':' | '/' | '[' | ']'))
    }) {
        return Err(err(&format!(
            "character {c:?} is not supported (use letters, digits and -._~:/[] only)"
        )));
    }
    if is_http {
        if rest.contains('/') {
            return Err(err("URL must not contain a path"));
        }
        check_host_port(rest).map_err(|e| {
            err(&format!(
                "URL address does not have the form \"host:port\": {e}"
            ))
        })?;
    } else {
        if rest.is_empty() {
            return Err(err(
                "a unix URL needs a socket path or host after the scheme",
            ));
        }
        if rest.contains('[') || rest.contains(']') {
            return Err(err("brackets are only supported in http(s) hosts"));
        }
        // Go's url.Parse validates a port in the host part for every scheme.
        let authority = rest.split('/').next().unwrap_or_default();
        if let Some((_, port)) = authority.rsplit_once(':') {
            if !port.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err("invalid port after host: the port must be a number"));
            }
        }
    }
    Ok(format!("{scheme}://{rest}"))
}

/// Go `url.Parse` port validation + `net.SplitHostPort`.
fn check_host_port(hostport: &str) -> Result<(), &'static str> {
    let port = if let Some(inner) = hostport.strip_prefix('[') {
        let end = inner.find(']').ok_or("missing ']' in address")?;
        let (host, after) = inner.split_at(end);
        if host.contains('[') {
            return Err("unexpected '[' in address");
        }
        let after = &after[1..];
        if after.is_empty() {
            return Err("missing port in address");
        }
        after.strip_prefix(':').ok_or("missing port in address")?
    } else {
        if hostport.contains('[') || hostport.contains(']') {
            return Err("unexpected bracket in address");
        }
        let (host, port) = hostport.rsplit_once(':').ok_or("missing port in address")?;
        if host.contains(':') {
            return Err("too many colons in address");
        }
        port
    };
    if port.contains(':') || port.contains('[') || port.contains(']') {
        return Err("invalid port");
    }
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err("the port must be a number");
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), ClusterError> {
    let err = |reason: &str| ClusterError::Name {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    if name.is_empty() {
        return Err(err("member names must not be empty"));
    }
    if name.chars().any(char::is_control) {
        return Err(err("control characters are not allowed"));
    }
    Ok(())
}

/// `ServerConfig.VerifyBootstrap` (without etcd's DNS fallback: URLs must match as strings).
fn verify_bootstrap(
    name: &str,
    map: &BTreeMap<String, Vec<String>>,
    advertise: &[String],
) -> Result<(), ClusterError> {
    let cluster_urls = map
        .get(name)
        .ok_or_else(|| ClusterError::LocalNameMissing(name.to_string()))?;
    if cluster_urls.as_slice() != advertise {
        let missing: Vec<String> = unique(cluster_urls)
            .into_iter()
            .filter(|u| !advertise.contains(u))
            .map(|u| format!("{name}={u}"))
            .collect();
        let msg = if !missing.is_empty() {
            format!(
                "--initial-cluster has {} but missing from --initial-advertise-peer-urls={}",
                missing.join(","),
                advertise.join(",")
            )
        } else {
            let extra: Vec<&String> = unique(advertise)
                .into_iter()
                .filter(|u| !cluster_urls.contains(u))
                .collect();
            let own = urls_map_string(&[(name, advertise)]);
            if !extra.is_empty() {
                let extra: Vec<&str> = extra.iter().map(|s| s.as_str()).collect();
                format!(
                    "--initial-advertise-peer-urls has {} but missing from --initial-cluster={own}",
                    extra.join(",")
                )
            } else {
                format!(
                    "--initial-advertise-peer-urls={} does not match --initial-cluster={} (a URL is repeated)",
                    advertise.join(","),
                    urls_map_string(&[(name, cluster_urls)])
                )
            }
        };
        return Err(ClusterError::AdvertiseMismatch(msg));
    }
    let mut seen = std::collections::BTreeSet::new();
    if map.values().flatten().any(|u| !seen.insert(u)) {
        let pairs: Vec<(&str, &[String])> = map
            .iter()
            .map(|(n, u)| (n.as_str(), u.as_slice()))
            .collect();
        return Err(ClusterError::DuplicateUrl(urls_map_string(&pairs)));
    }
    Ok(())
}

fn unique(urls: &[String]) -> Vec<&String> {
    let mut out: Vec<&String> = urls.iter().collect();
    out.dedup();
    out
}

/// `types.URLsMap.String()`: sorted `name=url` pairs joined with `,`.
fn urls_map_string(members: &[(&str, &[String])]) -> String {
    let mut pairs: Vec<String> = members
        .iter()
        .flat_map(|(n, urls)| urls.iter().map(move |u| format!("{n}={u}")))
        .collect();
    pairs.sort();
    pairs.join(",")
}

/// Append `s` as a Go `encoding/json` string literal (HTML-safe escaping: `<`, `>`, `&`,
/// U+2028 and U+2029 as `\uXXXX`; control characters as `\n`, `\r`, `\t` or `\u00XX`).
pub fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Append a JSON array of strings (Go `[]string`; a nil slice would be `null`, never the case
/// here: a member always has at least one peer URL).
pub fn push_json_string_array(out: &mut String, items: &[String]) {
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_string(out, item);
    }
    out.push(']');
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFRA: &str =
        "infra0=http://10.0.1.10:2380,infra1=http://10.0.1.11:2380,infra2=http://10.0.1.12:2380";

    #[test]
    fn default_member_vectors() {
        let p = ClusterPlan::new(
            "default",
            "default=http://localhost:2380",
            "http://localhost:2380",
            "etcd-cluster",
        )
        .unwrap();
        assert_eq!(format_id(p.local_id), "8e9e05c52164694d");
        assert_eq!(format_id(p.cluster_id), "cdf818194e3a8c32");
        assert_eq!(
            p.members[0].json(),
            r#"{"id":10276657743932975437,"peerURLs":["http://localhost:2380"],"name":"default"}"#
        );
        assert_eq!(
            p.members[0].raft_attributes_json(),
            r#"{"peerURLs":["http://localhost:2380"]}"#
        );
    }

    #[test]
    fn three_member_vectors() {
        let p =
            ClusterPlan::new("infra1", INFRA, "http://10.0.1.11:2380", "etcd-cluster-1").unwrap();
        let hex: Vec<String> = p.members.iter().map(Member::hex_id).collect();
        // ascending numeric order: 8a0a… < 140f… < d5dc…
        assert_eq!(
            hex,
            ["8a0a11c6194fc77", "140fedbeeb74765d", "d5dc5f8d75d04e29"]
        );
        assert_eq!(p.members[1].name, "infra0");
        assert_eq!(format_id(p.local_id), "d5dc5f8d75d04e29");
        assert_eq!(format_id(p.cluster_id), "acccc8912db0cd57");
        assert_eq!(p.index(), 3);
    }

    #[test]
    fn etcd_messages() {
        let e = ClusterPlan::new(
            "x",
            "default=http://localhost:2380",
            "http://localhost:2380",
            "t",
        )
        .unwrap_err();
        assert!(e
            .to_string()
            .starts_with("couldn't find local name \"x\" in the initial cluster configuration"));

        let e = ClusterPlan::new(
            "default",
            "default=http://localhost:2380,x=http://localhost:2380",
            "http://localhost:2380",
            "t",
        )
        .unwrap_err();
        assert!(e.to_string().starts_with(
            "initial cluster default=http://localhost:2380,x=http://localhost:2380 has duplicate url"
        ));

        // the messages etcdutl 3.5.30 prints for the same inputs
        let e = ClusterPlan::new(
            "default",
            "default=http://localhost:2380,default=http://b:1",
            "http://localhost:2380",
            "t",
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("--initial-cluster has default=http://b:1 but missing from --initial-advertise-peer-urls=http://localhost:2380"), "{e}");
        let e = ClusterPlan::new(
            "default",
            "default=http://localhost:2380",
            "http://localhost:2380,http://b:1",
            "t",
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("--initial-advertise-peer-urls has http://b:1 but missing from --initial-cluster=default=http://b:1,default=http://localhost:2380"), "{e}");
    }

    #[test]
    fn url_rules() {
        assert_eq!(parse_url("  HTTP://a:1 ").unwrap(), "http://a:1");
        assert_eq!(
            parse_url("https://[::1]:2380").unwrap(),
            "https://[::1]:2380"
        );
        assert_eq!(parse_url("unix:///tmp/sock").unwrap(), "unix:///tmp/sock");
        assert_eq!(parse_url("unixs://sock:1/p").unwrap(), "unixs://sock:1/p");
        assert_eq!(parse_url("http://host:").unwrap(), "http://host:");
        for bad in [
            "",
            "localhost:2380",
            "ftp://a:1",
            "http://a",
            "http://a:1/",
            "http://a:x",
            "http://::1:2380",
            "http://u@a:1",
            "http://a:1?x=1",
            "http://a:1#f",
            "http://a b:1",
            "http://a%20:1",
            "http://a\u{7}:1",
            "unix://",
            "unix://sock:abc/x",
        ] {
            assert!(parse_url(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_urls("http://a:1,,http://b:1").is_err());
    }

    #[test]
    fn initial_cluster_parsing() {
        let m = parse_initial_cluster(",a=http://z:1,,b=http://y:2,a=http://c:3,").unwrap();
        assert_eq!(m["a"], ["http://c:3", "http://z:1"]);
        assert_eq!(m["b"], ["http://y:2"]);
        assert!(parse_initial_cluster("a").is_err()); // no URL
        assert_eq!(parse_initial_cluster(",,"), Err(ClusterError::EmptyCluster));
        assert!(parse_initial_cluster("a\u{1}=http://a:1").is_err());
    }

    #[test]
    fn member_json_escapes_like_go() {
        let m = Member {
            id: 1,
            name: "a<b>&\"c\\".into(),
            peer_urls: vec!["http://a:1".into()],
        };
        assert_eq!(
            m.json(),
            r#"{"id":1,"peerURLs":["http://a:1"],"name":"a\u003cb\u003e\u0026\"c\\"}"#
        );
    }

    #[test]
    fn index_substitution() {
        assert_eq!(
            substitute_index("name", "etcd-{index}", Some(2)).unwrap(),
            "etcd-2"
        );
        assert_eq!(substitute_index("name", "etcd", None).unwrap(), "etcd");
        let e = substitute_index("name", "etcd-{index}", None).unwrap_err();
        assert!(e.to_string().contains("JOB_COMPLETION_INDEX"));
    }

    #[test]
    fn ids_depend_on_sorted_urls_and_token() {
        let a = member_id(&["http://b:1".into(), "http://a:1".into()], "t");
        let b = member_id(&["http://a:1".into(), "http://b:1".into()], "t");
        assert_eq!(a, b);
        assert_ne!(
            a,
            member_id(&["http://a:1".into(), "http://b:1".into()], "u")
        );
        assert_eq!(cluster_id(&[3, 1, 2]), cluster_id(&[1, 2, 3]));
    }
}

//! The `.snap` file a restore writes (spec §3.6, §4.4): the raft snapshot at index N, term 1.
//!
//! Its data is the JSON of an etcd v2 store holding only the membership
//! (`/0/members/<hex id>/raftAttributes` per member) — the store etcd 3.4/3.5 read membership
//! from. The JSON is produced here byte for byte as Go's `encoding/json` would write etcd's
//! `v2store` structs: fields in declaration order, map keys sorted bytewise (so hex IDs sort as
//! strings, while the indices follow the numeric creation order), and the watcher hub's
//! 1000-slot event ring written out in full with `null`s. The file is
//! `snappb.Snapshot{crc: CRC-32C(b), data: b}` with `b = raftpb.Snapshot{data, metadata}`.

use std::fmt::Write as _;

use super::cluster::{push_json_string, ClusterPlan};
use super::proto;

/// The v2 store's `EventHistory` capacity (`newStore`: `newWatchHub(1000)`).
const EVENT_CAPACITY: usize = 1000;
/// Go's zero `time.Time` as JSON.
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// `%016x-%016x.snap` of (term, index).
pub fn snap_file_name(term: u64, index: u64) -> String {
    format!("{term:016x}-{index:016x}.snap")
}

/// The file name for a restore of `plan`: term 1, index N.
pub fn restore_snap_file_name(plan: &ClusterPlan) -> String {
    snap_file_name(1, plan.index())
}

/// The complete `.snap` file contents, byte-identical to etcdutl 3.5 (and 3.4).
pub fn restore_snap_file(plan: &ClusterPlan) -> Vec<u8> {
    let data = v2_store_json(plan);
    let cs = proto::conf_state(&plan.member_ids());
    let snap = proto::raft_snapshot(data.as_bytes(), &cs, plan.index(), 1);
    proto::snappb_snapshot(crc32c::crc32c(&snap), &snap)
}

/// The v2-store JSON (`v2store.Save()`) after `AddMember` for every member in ascending ID order.
pub fn v2_store_json(plan: &ClusterPlan) -> String {
    // Creation order = ascending ID: member k (1-based) gets index k.
    let created: Vec<(String, String, u64)> = plan
        .members
        .iter()
        .enumerate()
        .map(|(i, m)| (m.hex_id(), m.raft_attributes_json(), i as u64 + 1))
        .collect();
    let n = created.len() as u64;

    let mut s = String::with_capacity(6000 + 700 * created.len());
    s.push_str("{\"Root\":");
    open_dir(&mut s, "/", 0);
    s.push_str("\"0\":");
    open_dir(&mut s, "/0", 0);
    if !created.is_empty() {
        s.push_str("\"members\":");
        open_dir(&mut s, "/0/members", 1);
        // Children map: keys sorted as strings.
        let mut by_key: Vec<&(String, String, u64)> = created.iter().collect();
        by_key.sort_by(|a, b| a.0.cmp(&b.0));
        for (i, (hex, attrs, k)) in by_key.into_iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            push_json_string(&mut s, hex);
            s.push(':');
            let dir = format!("/0/members/{hex}");
            open_dir(&mut s, &dir, *k);
            s.push_str("\"raftAttributes\":");
            node(&mut s, &format!("{dir}/raftAttributes"), *k, attrs);
            s.push_str("}}");
        }
        s.push_str("}}");
    }
    s.push_str("}},\"1\":");
    open_dir(&mut s, "/1", 0);
    s.push_str("}}}}");

    // WatcherHub.EventHistory: a ring of EVENT_CAPACITY slots (EventQueue.insert).
    let mut ring: Vec<Option<usize>> = vec![None; EVENT_CAPACITY];
    let (mut front, mut back, mut size) = (0usize, 0usize, 0usize);
    for i in 0..created.len() {
        ring[back] = Some(i);
        back = (back + 1) % EVENT_CAPACITY;
        if size == EVENT_CAPACITY {
            front = (front + 1) % EVENT_CAPACITY;
        } else {
            size += 1;
        }
    }
    let start_index = ring[front].map_or(0, |i| created[i].2);
    s.push_str(",\"WatcherHub\":{\"EventHistory\":{\"Queue\":{\"Events\":[");
    for (slot, ev) in ring.iter().enumerate() {
        if slot > 0 {
            s.push(',');
        }
        match ev {
            None => s.push_str("null"),
            Some(i) => {
                let (hex, attrs, k) = &created[*i];
                s.push_str("{\"action\":\"create\",\"node\":{\"key\":");
                push_json_string(&mut s, &format!("/0/members/{hex}/raftAttributes"));
                s.push_str(",\"value\":");
                push_json_string(&mut s, attrs);
                let _ = write!(s, ",\"modifiedIndex\":{k},\"createdIndex\":{k}}}}}");
            }
        }
    }
    let _ = write!(
        s,
        "],\"Size\":{size},\"Front\":{front},\"Back\":{back},\"Capacity\":{EVENT_CAPACITY}}},\
         \"StartIndex\":{start_index},\"LastIndex\":{n}}}}},\"CurrentIndex\":{n},\
         \"Stats\":{{\"getsSuccess\":0,\"getsFail\":0,\"setsSuccess\":0,\"setsFail\":0,\
         \"deleteSuccess\":0,\"deleteFail\":0,\"updateSuccess\":0,\"updateFail\":0,\
         \"createSuccess\":{n},\"createFail\":0,\"compareAndSwapSuccess\":0,\
         \"compareAndSwapFail\":0,\"compareAndDeleteSuccess\":0,\"compareAndDeleteFail\":0,\
         \"expireCount\":0,\"watchers\":0}},\"CurrentVersion\":2}}"
    );
    s
}

/// A directory node up to and including `"Children":{`.
fn open_dir(s: &mut String, path: &str, index: u64) {
    s.push_str("{\"Path\":");
    push_json_string(s, path);
    let _ = write!(
        s,
        ",\"CreatedIndex\":{index},\"ModifiedIndex\":{index},\"ExpireTime\":\"{ZERO_TIME}\",\"Value\":\"\",\"Children\":{{"
    );
}

/// A complete leaf (value) node: `Children` is `null`.
fn node(s: &mut String, path: &str, index: u64, value: &str) {
    s.push_str("{\"Path\":");
    push_json_string(s, path);
    let _ = write!(
        s,
        ",\"CreatedIndex\":{index},\"ModifiedIndex\":{index},\"ExpireTime\":\"{ZERO_TIME}\",\"Value\":"
    );
    push_json_string(s, value);
    s.push_str(",\"Children\":null}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(path: &str) -> Vec<u8> {
        std::fs::read(format!(
            "{}/tests/fixtures/{path}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    fn default_plan() -> ClusterPlan {
        ClusterPlan::new(
            "default",
            "default=http://localhost:2380",
            "http://localhost:2380",
            "etcd-cluster",
        )
        .unwrap()
    }

    #[test]
    fn v2_json_is_identical() {
        let want = String::from_utf8(fixture("default.v2.json")).unwrap();
        assert_eq!(v2_store_json(&default_plan()), want);
    }

    #[test]
    fn snap_file_is_byte_identical() {
        let plan = default_plan();
        assert_eq!(
            restore_snap_file_name(&plan),
            "0000000000000001-0000000000000001.snap"
        );
        let want = fixture("0000000000000001-0000000000000001.snap");
        assert_eq!(restore_snap_file(&plan), want);
    }

    #[test]
    fn three_members_custom_token_is_byte_identical() {
        const IC: &str = "infra0=http://10.0.1.10:2380,infra1=http://10.0.1.11:2380,infra2=http://10.0.1.12:2380";
        let plan =
            ClusterPlan::new("infra2", IC, "http://10.0.1.12:2380", "etcd-cluster-1").unwrap();
        assert_eq!(
            restore_snap_file_name(&plan),
            "0000000000000001-0000000000000003.snap"
        );
        let want = fixture("restore/infra2-0000000000000001-0000000000000003.snap");
        let got = restore_snap_file(&plan);
        if got != want {
            panic!(
                "differs:\n got {}\nwant {}",
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&want)
            );
        }
    }

    #[test]
    fn mixed_url_forms_are_byte_identical() {
        let plan = ClusterPlan::new(
            "Db",
            "Db=HTTP://LocalHost:2380,Db=https://[::1]:2381,a=unix://sock:1",
            "https://[::1]:2381, HTTP://LocalHost:2380",
            "etcd-cluster",
        )
        .unwrap();
        let want = fixture("restore/two-urls-0000000000000001-0000000000000002.snap");
        assert_eq!(restore_snap_file(&plan), want);
    }

    #[test]
    fn event_ring_wraps_like_go() {
        // 1001 members: the first event is overwritten, Front moves to 1.
        let members = (1..=1001u64)
            .map(|i| super::super::cluster::Member {
                id: i,
                name: format!("m{i}"),
                peer_urls: vec![format!("http://h{i}:1")],
            })
            .collect();
        let plan = ClusterPlan {
            cluster_id: 1,
            local_id: 1,
            members,
        };
        let v: serde_json::Value = serde_json::from_str(&v2_store_json(&plan)).unwrap();
        let q = &v["WatcherHub"]["EventHistory"];
        assert_eq!(q["Queue"]["Size"], 1000);
        assert_eq!(q["Queue"]["Front"], 1);
        assert_eq!(q["Queue"]["Back"], 1);
        assert_eq!(q["StartIndex"], 2);
        assert_eq!(q["LastIndex"], 1001);
        assert_eq!(q["Queue"]["Events"][0]["node"]["createdIndex"], 1001);
    }
}

//! Tests of the test harness itself (`tests/common`), so that the oracle, backup and restore tests
//! can trust it: TLS is really enforced, auth really maps the client-certificate CN to the etcd
//! user on every version, a member restarts on an existing data dir, clusters form over TLS peer
//! URLs, ports are never handed out twice, and no etcd process survives its handle.

mod common;

use std::collections::HashSet;
use std::path::Path;

use common::*;

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// mTLS, auth-by-CN and restart on an existing data dir, for one version.
fn member_lifecycle(v: Version) {
    let work = tempfile::tempdir().expect("tempdir");
    let tls = Tls::temp();
    for f in [
        &tls.ca,
        &tls.server.key,
        &tls.client.key,
        &tls.other_client.key,
    ] {
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(f).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600, "{}", f.display());
    }
    let data = work.path().join("data");
    let opts = EtcdOpts {
        data_dir: Some(data.clone()),
        ..Default::default()
    };
    let mut etcd = Etcd::start(v, &tls, opts.clone());
    assert!(etcd.client_url().starts_with("https://127.0.0.1:"));

    // A client certificate from another CA is refused; so is no client certificate at all.
    let out = etcd.etcdctl_as(
        &tls.other_client,
        &["get", "x", "--dial-timeout=1s", "--command-timeout=1s"],
    );
    assert!(!out.status.success(), "{v}: wrong-CA client was accepted");
    let out = std::process::Command::new(v.etcdctl())
        .env("ETCDCTL_API", "3")
        .args([
            &format!("--endpoints={}", etcd.client_url()),
            &format!("--cacert={}", tls.ca.display()),
            "--dial-timeout=1s",
            "--command-timeout=1s",
            "get",
            "x",
        ])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "{v}: client without a certificate was accepted"
    );

    // Data, then auth on: CN=root may do everything, CN=user0 only what role0 allows.
    let sample = Sample {
        users: 1,
        auth: true,
        ..Sample::tiny()
    };
    let populated = runtime().block_on(async {
        let client = etcd.client().await;
        populate(&client, &sample).await
    });
    assert_eq!(populated.live_keys, 20 + 1 + 1 - 2);
    if v != Version::V3_4_23 {
        // etcdctl 3.4 has no `auth status`.
        let status = etcd.etcdctl_ok(&["auth", "status"]);
        assert!(status.contains("Authentication Status: true"), "{status}");
    }
    etcd.etcdctl_ok(&["put", "/app0/x", "y"]);
    assert!(etcd.etcdctl_ok(&["user", "list"]).contains("user0"));
    let user0 = tls.issue_client("user0");
    let out = etcd.etcdctl_as(&user0, &["get", "/app0/x", "--print-value-only"]);
    assert!(
        out.status.success(),
        "{v}: user0 by CN: {}",
        stderr_of(&out)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "y");
    let out = etcd.etcdctl_as(&user0, &["get", "/lifeboat/k/000001"]);
    assert!(
        !out.status.success() && stderr_of(&out).contains("permission denied"),
        "{v}: user0 read outside its role: {}",
        stderr_of(&out)
    );
    let snap = work.path().join("s.db");
    let out = etcd.etcdctl_as(&user0, &["snapshot", "save", snap.to_str().unwrap()]);
    assert!(
        !out.status.success(),
        "{v}: a non-root user took a snapshot"
    );
    save_snapshot(&etcd, &snap);

    // Restart on the same data dir: the data and auth survive.
    let pid = etcd.pid().unwrap();
    etcd.stop();
    assert!(!etcd.is_running());
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "{v}: etcd {pid} still exists after stop"
    );
    drop(etcd);
    assert!(
        data.join("member/snap/db").exists(),
        "an explicit data dir must outlive its Etcd"
    );
    let etcd = Etcd::start(v, &tls, opts);
    assert_eq!(
        etcd.etcdctl_ok(&["get", "/app0/x", "--print-value-only"])
            .trim(),
        "y"
    );
    let pid = etcd.pid().unwrap();
    drop(etcd);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "{v}: etcd {pid} survived drop"
    );
}

#[test]
fn member_lifecycle_3_4_23() {
    member_lifecycle(Version::V3_4_23);
}

#[test]
fn member_lifecycle_3_5_1() {
    member_lifecycle(Version::V3_5_1);
}

#[test]
fn member_lifecycle_3_5_30() {
    member_lifecycle(Version::V3_5_30);
}

#[test]
fn three_member_cluster_over_tls_peers() {
    let tls = Tls::temp();
    let cluster = Cluster::start(Version::V3_5_30, 3, &tls, "lifeboat-test-token");
    let [a, _, c] = &cluster.members[..] else {
        unreachable!()
    };
    a.etcdctl_ok(&["put", "replicated", "yes"]);
    // Serializable reads are local to the member: this proves replication to m2.
    let mut seen = String::new();
    for _ in 0..50 {
        seen = c.etcdctl_ok(&["get", "replicated", "--print-value-only", "--consistency=s"]);
        if seen.trim() == "yes" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(seen.trim(), "yes");
    let members = c.etcdctl_ok(&["member", "list"]);
    assert_eq!(members.lines().count(), 3, "{members}");
    assert!(members.contains("https://127.0.0.1:"), "{members}");
    assert_eq!(cluster.endpoints().split(',').count(), 3);
}

#[test]
fn ports_are_never_handed_out_twice() {
    let handles: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(|| (0..100).map(|_| alloc_port()).collect::<Vec<_>>()))
        .collect();
    let mut all = HashSet::new();
    for h in handles {
        for p in h.join().unwrap() {
            assert!(all.insert(p), "port {p} handed out twice");
            assert!((20000..32000).contains(&p));
        }
    }
}

#[test]
fn missing_binaries_fail_loudly() {
    // Point 3.5.30 at an empty directory in a child test process, so this process's environment
    // is left alone: the panic message must tell the reader what to do.
    if std::env::var_os("LIFEBOAT_HARNESS_CHILD").is_some() {
        let _ = Version::V3_5_30.etcd();
        return;
    }
    let empty = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "missing_binaries_fail_loudly", "--nocapture"])
        .env("LIFEBOAT_HARNESS_CHILD", "1")
        .env("LIFEBOAT_TEST_ETCD_3_5_30", empty.path())
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        describe(&out).contains("run scripts/install-deps.sh"),
        "{}",
        describe(&out)
    );
}

#[test]
fn etcd_dies_with_a_killed_test_process() {
    // The child test process starts etcd, reports its pid, and waits to be SIGKILLed: no Drop
    // runs there, so only PR_SET_PDEATHSIG can take etcd down with it.
    if std::env::var_os("LIFEBOAT_HARNESS_CHILD").is_some() {
        let tls = Tls::temp();
        let etcd = Etcd::start(Version::V3_5_30, &tls, EtcdOpts::default());
        println!("ETCD_PID={}", etcd.pid().unwrap());
        std::io::Write::flush(&mut std::io::stdout()).unwrap();
        std::thread::sleep(std::time::Duration::from_secs(120));
        return;
    }
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "etcd_dies_with_a_killed_test_process",
            "--nocapture",
        ])
        .env("LIFEBOAT_HARNESS_CHILD", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut pid = None;
    for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
        if let Some(p) = line.unwrap().strip_prefix("ETCD_PID=") {
            pid = Some(p.trim().to_string());
            break;
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let pid = pid.expect("child test did not start etcd");
    let proc = format!("/proc/{pid}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    // Gone, or a zombie waiting for init to reap it (it is no longer running either way).
    let alive = || {
        std::fs::read_to_string(format!("{proc}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
    };
    while alive() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(!alive(), "etcd {pid} outlived its killed test process");
}

/// The path restore live tests take: plan the cluster, restore a snapshot with the oracle tool
/// into one dir per member, start the members on those dirs, read the data back.
fn restored_cluster_serves_the_snapshot(v: Version, n: usize, peer_tls: bool) {
    let work = tempfile::tempdir().expect("tempdir");
    let tls = Tls::temp();
    let snap = work.path().join("s.db");
    let revision = {
        let etcd = Etcd::start(v, &tls, EtcdOpts::default());
        let populated = runtime().block_on(async {
            let client = etcd.client().await;
            populate(&client, &Sample::tiny()).await
        });
        save_snapshot(&etcd, &snap);
        populated.revision
    };
    let plan = ClusterPlan::new(n, "lifeboat-restored", peer_tls);
    let dirs: Vec<_> = (0..n).map(|i| work.path().join(format!("m{i}"))).collect();
    for (i, dir) in dirs.iter().enumerate() {
        oracle_restore(v, &snap, &plan, i, dir, &[]);
    }
    let cluster = plan.start(v, &tls, Some(&dirs));
    let last = cluster.members.last().unwrap();
    let value = last.etcdctl_ok(&["get", "/lifeboat/big/0000", "--print-value-only"]);
    assert_eq!(
        value.trim_end().as_bytes(),
        sample_value(1_000_000, 5 * 1024)
    );
    let status = last.etcdctl_ok(&["endpoint", "status", "-w", "json"]);
    assert!(
        status.contains(&format!("\"revision\":{revision}")),
        "{v}: restored revision is not {revision}: {status}"
    );
    let members = last.etcdctl_ok(&["member", "list"]);
    assert_eq!(members.lines().count(), n, "{members}");
    for i in 0..n {
        assert!(members.contains(&plan.peer_url(i)), "{members}");
    }
    last.etcdctl_ok(&["put", "after-restore", "ok"]);
}

#[test]
fn restored_three_member_cluster_3_5_30_http_peers() {
    restored_cluster_serves_the_snapshot(Version::V3_5_30, 3, false);
}

#[test]
fn restored_single_member_3_4_23_tls_peer() {
    restored_cluster_serves_the_snapshot(Version::V3_4_23, 1, true);
}

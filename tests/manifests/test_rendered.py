"""Tests on the rendered Kubernetes YAML of every platform overlay (facts: shared/spec/platforms.md).

Run: python3 -m pytest -q tests/manifests     (needs kubectl, pyyaml, kubernetes-validate)
"""
from __future__ import annotations

import copy
import re
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rendered as R  # noqa: E402

# Peak RSS of `etcd-lifeboat backup` / `restore`, the design target the benchmarks measure against
# (DESIGN.md "Performance method"; bench/ prints `/usr/bin/time -v` peaks). The single source for this
# number in the manifests' tests: update it when a benchmark reports a higher peak. Memory limits must
# stay above it; requests must cover it.
BENCHMARKED_PEAK_RSS_MIB = 64

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")

BACKUP_OVERLAYS = ["kubeadm", "openshift", "hypershift", "anthos-vmware", "k3s-rke2/k3s", "k3s-rke2/rke2"]
RESTORE_OVERLAYS = ["hypershift/restore", "anthos-vmware/restore"]

# What each platform's backup pod must look like (platforms.md §1–§5, summary table §7).
EXPECT = {
    "kubeadm": dict(
        host_network=True, endpoints=["https://127.0.0.1:2379"], root=True,
        cert_volume=("hostPath", "/etc/kubernetes/pki/etcd"),
        files=dict(LIFEBOAT_ETCD_CACERT="ca.crt", LIFEBOAT_ETCD_CERT="healthcheck-client.crt",
                   LIFEBOAT_ETCD_KEY="healthcheck-client.key"),
        node_selector={"node-role.kubernetes.io/control-plane": ""},
        tolerate={"node-role.kubernetes.io/control-plane", "node-role.kubernetes.io/master"},
    ),
    "openshift": dict(
        host_network=True, endpoints=["https://127.0.0.1:2379"], root=True,
        cert_volume=("hostPath", "/etc/kubernetes/static-pod-resources/etcd-certs"),
        files=dict(LIFEBOAT_ETCD_CACERT="configmaps/etcd-all-bundles/server-ca-bundle.crt",
                   LIFEBOAT_ETCD_CERT="secrets/etcd-all-certs/etcd-peer-<field:spec.nodeName>.crt",
                   LIFEBOAT_ETCD_KEY="secrets/etcd-all-certs/etcd-peer-<field:spec.nodeName>.key"),
        node_selector={"node-role.kubernetes.io/master": ""},
        tolerate={None},  # operator: Exists without a key tolerates everything
    ),
    "hypershift": dict(
        host_network=False, endpoints=["https://etcd-client:2379"], root=False,
        cert_volume=None,
        files=dict(LIFEBOAT_ETCD_CACERT=("configMap", "etcd-ca", "ca.crt"),
                   LIFEBOAT_ETCD_CERT=("secret", "etcd-client-tls", "etcd-client.crt"),
                   LIFEBOAT_ETCD_KEY=("secret", "etcd-client-tls", "etcd-client.key")),
        node_selector=None,
        tolerate={"hypershift.openshift.io/control-plane", "hypershift.openshift.io/cluster"},
    ),
    "anthos-vmware": dict(
        host_network=False,
        endpoints=[f"https://kube-etcd-{i}.kube-etcd:2379" for i in range(3)], root=False,
        cert_volume=None,
        files=dict(LIFEBOAT_ETCD_CACERT=("secret", "kube-etcd-certs", "etcdCA.crt"),
                   LIFEBOAT_ETCD_CERT=("secret", "kube-etcd-certs", "etcd.crt"),
                   LIFEBOAT_ETCD_KEY=("secret", "kube-etcd-certs", "etcd.key")),
        node_selector=None, tolerate=set(),
    ),
    "k3s-rke2/k3s": dict(
        host_network=True, endpoints=["https://127.0.0.1:2379"], root=True,
        cert_volume=("hostPath", "/var/lib/rancher/k3s/server/tls/etcd"),
        files=dict(LIFEBOAT_ETCD_CACERT="server-ca.crt", LIFEBOAT_ETCD_CERT="server-client.crt",
                   LIFEBOAT_ETCD_KEY="server-client.key"),
        node_selector={"node-role.kubernetes.io/etcd": "true"},
        tolerate={"node-role.kubernetes.io/etcd", "node-role.kubernetes.io/control-plane"},
    ),
    "k3s-rke2/rke2": dict(
        host_network=True, endpoints=["https://127.0.0.1:2379"], root=True,
        cert_volume=("hostPath", "/var/lib/rancher/rke2/server/tls/etcd"),
        files=dict(LIFEBOAT_ETCD_CACERT="server-ca.crt", LIFEBOAT_ETCD_CERT="server-client.crt",
                   LIFEBOAT_ETCD_KEY="server-client.key"),
        node_selector={"node-role.kubernetes.io/etcd": "true"},
        tolerate={"node-role.kubernetes.io/etcd", "node-role.kubernetes.io/control-plane"},
    ),
}

RESTORE_EXPECT = {
    "hypershift/restore": dict(
        backup="hypershift", pvc="data-etcd-{i}", mount="/var/lib", data_dir="/var/lib/data",
        name="etcd-{i}", peer="https://etcd-{i}.etcd-discovery.{ns}.svc:2380", token="etcd-cluster"),
    "anthos-vmware/restore": dict(
        backup="anthos-vmware", pvc="data-kube-etcd-{i}", mount="/var/lib/etcd", data_dir="/var/lib/etcd",
        name="kube-etcd-{i}", peer="https://kube-etcd-{i}.kube-etcd:2380", token="etcd-cluster-1"),
}


_cache: dict[str, list] = {}


def render(rel: str) -> list[dict]:
    if rel not in _cache:
        _cache[rel] = R.render(R.OVERLAYS / rel)
    return copy.deepcopy(_cache[rel])


def backup_cronjob(docs):
    return R.one(docs, "CronJob", "etcd-lifeboat-backup")


def container(workload, name):
    return next(c for c in R.pod_spec(workload)["containers"] if c["name"] == name)


# ------------------------------------------------------------------------------------------------
# Schema validation (strict, offline) — the same function scripts/check-manifests.sh uses
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("directory", R.kustomize_dirs(), ids=lambda d: str(d.relative_to(R.REPO)))
def test_every_kustomization_renders_and_validates(directory):
    assert R.validate_dir(directory) == []


@pytest.mark.parametrize("broken, expect", [
    ("spec:\n  startingDeadlineSecond: 3600\n", "startingDeadlineSecond"),          # unknown field
    ("spec:\n  jobTemplate:\n    spec:\n      backoffLimit: two\n", "backoffLimit"),  # wrong type
    ("spec:\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          containers:\n"
     "            - name: backup\n              envFromm: []\n", "envFromm"),         # typo in a container
])
def test_validation_rejects_a_broken_overlay(tmp_path, broken, expect):
    """Negative control: the base patched with a schema error must fail the same validation CI runs."""
    shutil.copytree(R.REPO / "manifests", tmp_path / "base")
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "resources:\n  - base\npatches:\n  - path: broken.yaml\n"
    )
    (tmp_path / "broken.yaml").write_text(
        "apiVersion: batch/v1\nkind: CronJob\nmetadata:\n  name: etcd-lifeboat-backup\n" + broken
    )
    errors = R.validate_dir(tmp_path)
    assert any(expect in e for e in errors), errors


def test_validation_rejects_an_unrenderable_overlay(tmp_path):
    (tmp_path / "kustomization.yaml").write_text("resources:\n  - does-not-exist.yaml\n")
    errors = R.validate_dir(tmp_path)
    assert errors and "kubectl kustomize" in errors[0]


def test_secret_check_catches_inline_secrets():
    docs = render("kubeadm")
    assert R.secret_errors(docs) == []
    bad = docs + [{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3"},
                   "stringData": {"AWS_SECRET_ACCESS_KEY": "x"}}]
    assert any("Secret/s3" in e for e in R.secret_errors(bad))
    cj = backup_cronjob(docs)
    container(cj, "backup")["env"].append({"name": "AWS_SECRET_ACCESS_KEY", "value": "hunter2"})
    assert any("inline value" in e for e in R.secret_errors(docs))
    cm = R.one(docs, "ConfigMap", "etcd-lifeboat")
    cm["data"]["LIFEBOAT_STORE"] = "https://b.s3.amazonaws.com/k?X-Amz-Signature=abc"
    assert any("presigned URL" in e for e in R.secret_errors(docs))


# ------------------------------------------------------------------------------------------------
# The backup CronJob, per platform
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overlay", BACKUP_OVERLAYS)
def test_backup_cronjob_schedule_and_job_policy(overlay):
    cj = backup_cronjob(render(overlay))
    spec = cj["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["startingDeadlineSeconds"] > 0
    assert spec["successfulJobsHistoryLimit"] >= 1 and spec["failedJobsHistoryLimit"] >= 1
    job = spec["jobTemplate"]["spec"]
    assert job["backoffLimit"] >= 0
    assert 0 < job["activeDeadlineSeconds"] <= 6 * 3600
    assert R.pod_spec(cj)["restartPolicy"] == "Never"
    assert container(cj, "backup")["args"] == ["backup"]


@pytest.mark.parametrize("overlay", BACKUP_OVERLAYS)
def test_backup_reaches_etcd_the_platform_way(overlay):
    exp = EXPECT[overlay]
    docs = render(overlay)
    cj = backup_cronjob(docs)
    spec = R.pod_spec(cj)
    c = container(cj, "backup")
    env = R.effective_env(c, R.configmaps_of(docs))

    assert bool(spec.get("hostNetwork")) is exp["host_network"]
    if exp["host_network"]:
        assert spec.get("dnsPolicy") == "Default"  # node resolver: no dependency on CoreDNS
    assert env["LIFEBOAT_ETCD_ENDPOINTS"].split(",") == exp["endpoints"]

    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = c["volumeMounts"]
    host_paths = [v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v]
    if exp["cert_volume"]:
        kind, path = exp["cert_volume"]
        assert host_paths == [path], host_paths  # certs only: the data dir is never mounted by a backup
    else:
        assert host_paths == []

    for var, want in exp["files"].items():
        value = env[var]
        mount = R.mounted_under(value, mounts)
        assert mount is not None, f"{var}={value} is not under any volumeMount"
        assert mount.get("readOnly") is True
        vol = volumes[mount["name"]]
        rel = value[len(mount["mountPath"].rstrip("/")) + 1:]
        if isinstance(want, str):
            assert "hostPath" in vol and vol["hostPath"]["path"] == exp["cert_volume"][1]
            assert rel == want, (var, rel)
        else:
            src_kind, src_name, key = want
            if src_kind == "secret":
                assert vol["secret"]["secretName"].startswith(src_name)
            else:
                assert vol["configMap"]["name"] == src_name
            assert rel == key, (var, rel)

    if exp["node_selector"] is not None:
        assert spec.get("nodeSelector") == exp["node_selector"]
    tolerated = {t.get("key") for t in spec.get("tolerations", [])}
    assert exp["tolerate"] <= tolerated, tolerated


@pytest.mark.parametrize("overlay", BACKUP_OVERLAYS)
def test_backup_runs_as_root_only_where_the_keys_require_it(overlay):
    cj = backup_cronjob(render(overlay))
    sc = R.pod_spec(cj).get("securityContext", {})
    if EXPECT[overlay]["root"]:
        # 0600 root-owned keys on the host (platforms.md): root, but no capability at all.
        assert sc.get("runAsUser") == 0 and sc.get("runAsNonRoot") is False
    else:
        assert sc.get("runAsNonRoot") is True
        assert sc.get("runAsUser", 65532) != 0


@pytest.mark.parametrize("directory", R.kustomize_dirs(), ids=lambda d: str(d.relative_to(R.REPO)))
def test_pods_are_hardened(directory):
    docs = R.render(directory)
    assert R.workloads(docs)
    for w in R.workloads(docs):
        assert R.hardening_errors(w) == []
        assert R.env_order_errors(w) == []


def test_hardening_check_can_fail():
    cj = backup_cronjob(render("kubeadm"))
    c = container(cj, "backup")
    c["securityContext"]["readOnlyRootFilesystem"] = False
    c["securityContext"]["capabilities"] = {"add": ["SYS_ADMIN"]}
    errors = R.hardening_errors(cj)
    assert any("readOnlyRootFilesystem" in e for e in errors)
    assert any("drop ALL" in e for e in errors) and any("SYS_ADMIN" in e for e in errors)
    c["env"].insert(0, {"name": "X", "value": "$(NODE_NAME)"})
    openshift = backup_cronjob(render("openshift"))
    container(openshift, "backup")["env"].insert(0, {"name": "X", "value": "$(NODE_NAME)/x"})
    assert R.env_order_errors(openshift)


@pytest.mark.parametrize("overlay", BACKUP_OVERLAYS + RESTORE_OVERLAYS)
def test_spool_is_a_size_limited_emptydir_at_the_spool_dir(overlay):
    docs = render(overlay)
    cms = R.configmaps_of(docs, render(RESTORE_EXPECT[overlay]["backup"]) if overlay in RESTORE_EXPECT else [])
    for w in R.workloads(docs):
        spec = R.pod_spec(w)
        c = spec["containers"][0]
        spool = R.effective_env(c, cms).get("LIFEBOAT_SPOOL_DIR", "/tmp")
        mount = next(m for m in c["volumeMounts"] if m["mountPath"] == spool)
        vol = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        assert "emptyDir" in vol and vol["emptyDir"].get("sizeLimit"), vol


@pytest.mark.parametrize("overlay", BACKUP_OVERLAYS + RESTORE_OVERLAYS)
def test_memory_limit_is_above_the_benchmarked_peak(overlay):
    for w in R.workloads(render(overlay)):
        for c in R.pod_spec(w)["containers"]:
            res = c["resources"]
            assert R.mem_mib(res["limits"]["memory"]) > BENCHMARKED_PEAK_RSS_MIB
            assert R.mem_mib(res["requests"]["memory"]) >= BENCHMARKED_PEAK_RSS_MIB


@pytest.mark.parametrize("overlay", BACKUP_OVERLAYS)
def test_store_credentials_come_from_an_optional_secret(overlay):
    docs = render(overlay)
    assert R.by_kind(docs, "Secret") == []
    assert R.secret_errors(docs) == []
    env = {e["name"]: e for e in container(backup_cronjob(docs), "backup")["env"]}
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "etcd-lifeboat-s3" and ref["optional"] is True
    store = R.one(docs, "ConfigMap", "etcd-lifeboat")["data"]["LIFEBOAT_STORE"]
    assert store.startswith(("s3://", "file://"))


@pytest.mark.parametrize("overlay", BACKUP_OVERLAYS + RESTORE_OVERLAYS)
def test_one_namespace_and_pod_security_allows_what_the_pods_use(overlay):
    docs = render(overlay)
    namespaces = {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"}
    assert len(namespaces) == 1 and None not in namespaces, namespaces
    ns_objs = R.by_kind(docs, "Namespace")
    host_access = any(
        R.pod_spec(w).get("hostNetwork") or any("hostPath" in v for v in R.pod_spec(w).get("volumes", []))
        for w in R.workloads(docs)
    )
    if host_access:
        assert len(ns_objs) == 1, "a pod with host access needs its own privileged namespace"
        labels = ns_objs[0]["metadata"]["labels"]
        assert labels["pod-security.kubernetes.io/enforce"] == "privileged"
        assert ns_objs[0]["metadata"]["name"] == namespaces.pop()


def test_openshift_grants_the_privileged_scc_and_reads_the_node_cert():
    docs = render("openshift")
    rb = R.one(docs, "RoleBinding", "etcd-lifeboat-scc-privileged")
    assert rb["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                             "name": "system:openshift:scc:privileged"}
    ns = R.one(docs, "ServiceAccount", "etcd-lifeboat")["metadata"]["namespace"]
    assert rb["subjects"] == [{"kind": "ServiceAccount", "name": "etcd-lifeboat", "namespace": ns}]
    spec = R.pod_spec(backup_cronjob(docs))
    assert spec["securityContext"]["seLinuxOptions"]["type"] == "spc_t"
    # Mounted where etcd.env's ETCDCTL_* paths point.
    assert {"mountPath": "/etc/kubernetes/static-pod-certs", "name": "etcd-certs", "readOnly": True} in \
        container(backup_cronjob(docs), "backup")["volumeMounts"]
    # cluster-restore.sh takes a plain snapshot file.
    assert R.one(docs, "ConfigMap", "etcd-lifeboat")["data"]["LIFEBOAT_COMPRESSION"] == "none"


@pytest.mark.parametrize("overlay", ["k3s-rke2/k3s", "k3s-rke2/rke2"])
def test_k3s_rke2_store_raw_snapshots_for_cluster_reset(overlay):
    assert R.one(render(overlay), "ConfigMap", "etcd-lifeboat")["data"]["LIFEBOAT_COMPRESSION"] == "none"


def test_hypershift_toleration_follows_the_namespace():
    docs = render("hypershift")
    ns = R.one(docs, "ServiceAccount", "etcd-lifeboat")["metadata"]["namespace"]
    tol = {t["key"]: t for t in R.pod_spec(backup_cronjob(docs))["tolerations"]}
    assert tol["hypershift.openshift.io/cluster"]["value"] == ns
    assert "HCP_NAMESPACE" not in str(docs)


def test_restore_is_not_part_of_any_backup_overlay():
    for overlay in BACKUP_OVERLAYS:
        assert R.by_kind(render(overlay), "Job") == [], overlay
    for overlay in RESTORE_OVERLAYS:
        assert R.by_kind(render(overlay), "CronJob") == [], overlay


# ------------------------------------------------------------------------------------------------
# Restore Jobs: one snapshot, one cluster identity, distinct members
# ------------------------------------------------------------------------------------------------
def restore_context(overlay):
    docs = render(overlay)
    backup_docs = render(RESTORE_EXPECT[overlay]["backup"])
    jobs = R.by_kind(docs, "Job")
    return docs, backup_docs, jobs, R.configmaps_of(backup_docs, docs)


@pytest.mark.parametrize("overlay", RESTORE_OVERLAYS)
def test_restore_jobs_form_one_cluster_of_distinct_members(overlay):
    _, _, jobs, cms = restore_context(overlay)
    assert len(jobs) == 3
    assert R.restore_set_errors(jobs, cms) == []


@pytest.mark.parametrize("overlay", RESTORE_OVERLAYS)
def test_restore_jobs_match_the_platform(overlay):
    exp = RESTORE_EXPECT[overlay]
    docs, backup_docs, jobs, cms = restore_context(overlay)
    ns = R.one(docs, "ConfigMap", "etcd-lifeboat-restore")["metadata"]["namespace"]
    # Restore Jobs run where the backup overlay installed the ConfigMap and ServiceAccount they use.
    assert ns == R.one(backup_docs, "ConfigMap", "etcd-lifeboat")["metadata"]["namespace"]
    members = []
    for job in jobs:
        assert job["spec"]["backoffLimit"] == 0
        spec = R.pod_spec(job)
        c = container(job, "restore")
        assert c["args"] == ["restore"]
        env = R.effective_env(c, cms)
        i = env["LIFEBOAT_MEMBER_INDEX"]
        members.append(int(i))
        assert env["LIFEBOAT_NAME"].replace("{index}", i) == exp["name"].format(i=i)
        assert env["LIFEBOAT_INITIAL_ADVERTISE_PEER_URLS"].replace("{index}", i) == exp["peer"].format(i=i, ns=ns)
        assert env["LIFEBOAT_INITIAL_CLUSTER_TOKEN"] == exp["token"]
        assert env["LIFEBOAT_DATA_DIR"] == exp["data_dir"]
        assert env["LIFEBOAT_BUMP_REVISION"] == "1000000000" and env["LIFEBOAT_MARK_COMPACTED"] == "true"
        data_vol = next(v for v in spec["volumes"] if v["name"] == "data")
        assert data_vol["persistentVolumeClaim"]["claimName"] == exp["pvc"].format(i=i)
        data_mounts = [m for m in c["volumeMounts"] if m["name"] == "data"]
        assert data_mounts == [{"name": "data", "mountPath": exp["mount"]}]
        assert env["LIFEBOAT_DATA_DIR"].startswith(exp["mount"])
    assert sorted(members) == [0, 1, 2]
    initial = R.one(docs, "ConfigMap", "etcd-lifeboat-restore")["data"]["LIFEBOAT_INITIAL_CLUSTER"]
    assert initial == ",".join(f"{exp['name'].format(i=i)}={exp['peer'].format(i=i, ns=ns)}" for i in range(3))


def test_anthos_restore_jobs_land_on_their_members_node():
    docs = render("anthos-vmware/restore")
    ns = R.one(docs, "ConfigMap", "etcd-lifeboat-restore")["metadata"]["namespace"]
    for job in R.by_kind(docs, "Job"):
        spec = R.pod_spec(job)
        i = container(job, "restore")["env"][0]["value"]
        term = spec["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
        assert term["labelSelector"]["matchLabels"] == {"statefulset.kubernetes.io/pod-name": f"kube-etcd-{i}"}
        assert term["topologyKey"] == "kubernetes.io/hostname"
        assert spec["nodeSelector"] == {"kubernetes.googleapis.com/cluster-name": ns}


@pytest.mark.parametrize("mutation", ["same_index", "other_token", "latest", "same_pvc", "missing_member"])
def test_restore_set_check_can_fail(mutation):
    _, _, jobs, cms = restore_context("hypershift/restore")
    cms = copy.deepcopy(cms)
    if mutation == "same_index":
        container(jobs[1], "restore")["env"][0]["value"] = "0"
    elif mutation == "other_token":
        # One Job overrides the shared token.
        container(jobs[2], "restore")["env"].append({"name": "LIFEBOAT_INITIAL_CLUSTER_TOKEN", "value": "x"})
    elif mutation == "latest":
        cms["etcd-lifeboat-restore"]["data"]["LIFEBOAT_RESTORE_SOURCE"] = "latest"
    elif mutation == "same_pvc":
        R.pod_spec(jobs[1])["volumes"] = R.pod_spec(jobs[0])["volumes"]
    elif mutation == "missing_member":
        jobs = jobs[:2]
    assert R.restore_set_errors(jobs, cms) != []


# ------------------------------------------------------------------------------------------------
# Across platforms
# ------------------------------------------------------------------------------------------------
def test_every_container_uses_the_same_image():
    images = set()
    dirs = R.kustomize_dirs()
    for d in dirs:
        for w in R.workloads(R.render(d)):
            spec = R.pod_spec(w)
            for c in spec.get("containers", []) + spec.get("initContainers", []):
                images.add(c["image"])
    assert len(images) == 1, images
    assert re.search(r"etcd-lifeboat[:@]", images.pop())


def test_image_entrypoint_contract():
    """Manifests pass only the subcommand: the image's ENTRYPOINT is the binary."""
    cf = (R.REPO / "Containerfile").read_text()
    assert 'ENTRYPOINT ["/etcd-lifeboat"]' in cf
    assert "USER 65532:65532" in cf
    assert re.search(r"^FROM scratch AS runtime$", cf, re.M)

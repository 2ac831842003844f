"""Render the kustomize trees and check the output: schema validation plus what matters for etcd-lifeboat.

Used two ways, with the same functions:
  - by scripts/check-manifests.sh:  python3 tests/manifests/rendered.py validate DIR...
    (renders each DIR with `kubectl kustomize`, validates every object strictly against the Kubernetes
    schemas shipped by the kubernetes-validate package, offline; exit 1 on any error);
  - by tests/manifests/test_rendered.py (pytest), which also feeds deliberately broken input through
    them to prove they can fail.

Everything here is pure over parsed YAML except `render()`, which shells out to kubectl.
"""
from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable

import yaml

REPO = Path(__file__).resolve().parents[2]
OVERLAYS = REPO / "kustomize" / "overlays"

# Kubernetes versions to validate against, offline (schemas ship with kubernetes-validate):
# the newest the installed package knows, and the oldest we support (OpenShift 4.14 = 1.27).
VALIDATE_VERSIONS = tuple(
    v for v in os.environ.get("LIFEBOAT_K8S_VERSIONS", "1.37.0 1.27.0").split() if v
)

Doc = dict[str, Any]


class RenderError(RuntimeError):
    pass


# --------------------------------------------------------------------------------------------------
# Rendering and schema validation
# --------------------------------------------------------------------------------------------------
def render(directory: Path | str) -> list[Doc]:
    """`kubectl kustomize DIR` → list of objects. Raises RenderError with kubectl's message."""
    proc = subprocess.run(
        ["kubectl", "kustomize", str(directory)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RenderError(f"kubectl kustomize {directory} failed: {proc.stderr.strip()}")
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def schema_errors(docs: Iterable[Doc], versions: Iterable[str] = VALIDATE_VERSIONS) -> list[str]:
    """Strict schema validation of every object; returns human-readable errors (empty = valid)."""
    import kubernetes_validate  # imported lazily: the pure checks below do not need it

    errors: list[str] = []
    for doc in docs:
        what = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        for version in versions:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                errors.append(f"{what} (k8s {version}): {path}: {e.message}")
            except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as e:
                errors.append(f"{what} (k8s {version}): no schema: {e}")
    return errors


def validate_dir(directory: Path | str) -> list[str]:
    """Render + validate one kustomize directory. Errors as strings; rendering errors included."""
    try:
        docs = render(directory)
    except RenderError as e:
        return [str(e)]
    if not docs:
        return [f"{directory}: renders no objects"]
    return schema_errors(docs) + secret_errors(docs)


def kustomize_dirs() -> list[Path]:
    """Every kustomization we ship: the base, the restore template, examples, every overlay."""
    roots = [REPO / "manifests", OVERLAYS]
    found = sorted(
        {p.parent for root in roots for p in root.rglob("kustomization.yaml")}, key=lambda p: str(p)
    )
    # A member-N directory is only a building block of its restore/ parent (it has no ConfigMap).
    return [d for d in found if not re.fullmatch(r"member-\d+", d.name)]


# --------------------------------------------------------------------------------------------------
# Object helpers
# --------------------------------------------------------------------------------------------------
def by_kind(docs: Iterable[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d.get("kind") == kind]


def one(docs: Iterable[Doc], kind: str, name: str) -> Doc:
    matches = [d for d in by_kind(docs, kind) if d["metadata"]["name"] == name]
    if len(matches) != 1:
        raise AssertionError(f"expected exactly one {kind}/{name}, found {len(matches)}")
    return matches[0]


def pod_spec(workload: Doc) -> Doc:
    kind = workload["kind"]
    if kind == "CronJob":
        return workload["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    if kind in ("Job", "Deployment", "StatefulSet", "DaemonSet"):
        return workload["spec"]["template"]["spec"]
    if kind == "Pod":
        return workload["spec"]
    raise ValueError(kind)


def workloads(docs: Iterable[Doc]) -> list[Doc]:
    return [d for d in docs if d.get("kind") in ("CronJob", "Job", "Deployment", "StatefulSet", "DaemonSet", "Pod")]


def effective_env(container: Doc, configmaps: dict[str, Doc]) -> dict[str, str]:
    """What the process sees: envFrom ConfigMaps (in order), then `env` (which wins), with $(VAR)
    expanded like the kubelet does. Secret/fieldRef values become placeholders `<secret:name/key>`,
    `<field:path>`. A referenced ConfigMap that is missing raises KeyError."""
    env: dict[str, str] = {}
    for src in container.get("envFrom", []):
        if "configMapRef" in src:
            name = src["configMapRef"]["name"]
            env.update({src.get("prefix", "") + k: str(v) for k, v in configmaps[name].get("data", {}).items()})
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = re.sub(
                r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), str(item["value"])
            )
        elif "valueFrom" in item:
            vf = item["valueFrom"]
            if "secretKeyRef" in vf:
                env[item["name"]] = f"<secret:{vf['secretKeyRef']['name']}/{vf['secretKeyRef']['key']}>"
            elif "configMapKeyRef" in vf:
                env[item["name"]] = str(configmaps[vf["configMapKeyRef"]["name"]]["data"][vf["configMapKeyRef"]["key"]])
            elif "fieldRef" in vf:
                env[item["name"]] = f"<field:{vf['fieldRef']['fieldPath']}>"
            else:
                env[item["name"]] = "<valueFrom>"
    return env


def configmaps_of(*renders: Iterable[Doc]) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for docs in renders for d in by_kind(docs, "ConfigMap")}


def mem_mib(quantity: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|K|M|G)?", str(quantity))
    if not m:
        raise ValueError(f"unsupported memory quantity {quantity!r}")
    n, unit = float(m.group(1)), m.group(2) or ""
    factor = {"": 1 / 2**20, "Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "K": 1e3 / 2**20, "M": 1e6 / 2**20, "G": 1e9 / 2**20}
    return n * factor[unit]


# --------------------------------------------------------------------------------------------------
# Checks that return error lists (so tests can feed them broken input and expect errors)
# --------------------------------------------------------------------------------------------------
SECRETISH = re.compile(r"(SECRET|PASSWORD|TOKEN|ACCESS_KEY|PRESIGN|WEBHOOK|PUSHGATEWAY)", re.I)
# Names whose literal value is configuration, not a credential.
NOT_SECRET = {"LIFEBOAT_INITIAL_CLUSTER_TOKEN"}


def secret_errors(docs: Iterable[Doc]) -> list[str]:
    """No Secret objects at all in rendered output, and no credential-looking env var with a literal
    value (they must come from secretKeyRef)."""
    errors = []
    for d in docs:
        if d.get("kind") == "Secret":
            errors.append(f"Secret/{d['metadata'].get('name')} is rendered: create Secrets out of band, never in git")
    for w in workloads(docs):
        spec = pod_spec(w)
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            for item in c.get("env", []):
                if "value" in item and SECRETISH.search(item["name"]) and item["name"] not in NOT_SECRET:
                    errors.append(f"{w['kind']}/{w['metadata']['name']}: env {item['name']} has an inline value")
    for cm in by_kind(docs, "ConfigMap"):
        for k, v in (cm.get("data") or {}).items():
            if SECRETISH.search(k) and k not in NOT_SECRET:
                errors.append(f"ConfigMap/{cm['metadata']['name']}: key {k} looks like a credential")
            if re.search(r"[?&]X-Amz-Signature=", str(v)):
                errors.append(f"ConfigMap/{cm['metadata']['name']}: key {k} holds a presigned URL (a credential)")
    return errors


def hardening_errors(workload: Doc) -> list[str]:
    """Container and pod securityContext hardening that every etcd-lifeboat pod must have."""
    what = f"{workload['kind']}/{workload['metadata']['name']}"
    spec = pod_spec(workload)
    errors = []
    pod_sc = spec.get("securityContext", {})
    for c in spec.get("containers", []):
        sc = c.get("securityContext", {})
        if sc.get("readOnlyRootFilesystem") is not True:
            errors.append(f"{what}/{c['name']}: readOnlyRootFilesystem must be true")
        if sc.get("allowPrivilegeEscalation") is not False:
            errors.append(f"{what}/{c['name']}: allowPrivilegeEscalation must be false")
        if sc.get("privileged"):
            errors.append(f"{what}/{c['name']}: must not be privileged")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            errors.append(f"{what}/{c['name']}: capabilities must drop ALL")
        if caps.get("add"):
            errors.append(f"{what}/{c['name']}: adds capabilities {caps['add']}")
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
        if seccomp.get("type") != "RuntimeDefault":
            errors.append(f"{what}/{c['name']}: seccompProfile must be RuntimeDefault")
        if "runAsNonRoot" not in sc and "runAsNonRoot" not in pod_sc:
            errors.append(f"{what}/{c['name']}: runAsNonRoot must be stated (true, or false where root is required)")
    if spec.get("automountServiceAccountToken") is not False:
        errors.append(f"{what}: automountServiceAccountToken must be false (the binary never calls the API)")
    return errors


def env_order_errors(workload: Doc) -> list[str]:
    """$(VAR) in an env value only expands if VAR is defined earlier in the same list."""
    errors = []
    for c in pod_spec(workload).get("containers", []):
        seen: set[str] = set()
        for item in c.get("env", []):
            for ref in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", str(item.get("value", ""))):
                if ref not in seen:
                    errors.append(f"{workload['metadata']['name']}/{c['name']}: env {item['name']} uses $({ref}) before it is defined")
            seen.add(item["name"])
    return errors


def mounted_under(path: str, mounts: list[Doc]) -> Doc | None:
    best = None
    for m in mounts:
        mp = m["mountPath"].rstrip("/") or "/"
        if path == mp or path.startswith(mp + "/"):
            if best is None or len(mp) > len(best["mountPath"]):
                best = m
    return best


def restore_set_errors(jobs: list[Doc], configmaps: dict[str, Doc]) -> list[str]:
    """All restore Jobs of one platform must restore the SAME snapshot into the SAME cluster identity
    (initial cluster + token), each as a distinct member (name, peer URL, PVC), and each member's
    name=peerURL must be a member of the initial cluster."""
    errors: list[str] = []
    if not jobs:
        return ["no restore Jobs"]
    members = []
    for job in jobs:
        spec = pod_spec(job)
        c = next(c for c in spec["containers"] if c["name"] == "restore")
        env = effective_env(c, configmaps)
        index = env.get("LIFEBOAT_MEMBER_INDEX") or env.get("JOB_COMPLETION_INDEX")
        if index is None:
            errors.append(f"{job['metadata']['name']}: no LIFEBOAT_MEMBER_INDEX")
            continue
        name = env.get("LIFEBOAT_NAME", "").replace("{index}", index)
        peer = env.get("LIFEBOAT_INITIAL_ADVERTISE_PEER_URLS", "").replace("{index}", index)
        claims = [v["persistentVolumeClaim"]["claimName"] for v in spec.get("volumes", []) if "persistentVolumeClaim" in v]
        members.append(dict(job=job["metadata"]["name"], index=index, name=name, peer=peer, claims=claims, env=env))
    for key in ("LIFEBOAT_RESTORE_SOURCE", "LIFEBOAT_INITIAL_CLUSTER", "LIFEBOAT_INITIAL_CLUSTER_TOKEN",
                "LIFEBOAT_DATA_DIR", "LIFEBOAT_BUMP_REVISION", "LIFEBOAT_MARK_COMPACTED"):
        values = {m["env"].get(key) for m in members}
        if len(values) != 1 or None in values:
            errors.append(f"{key} differs between restore Jobs or is unset: {sorted(map(str, values))}")
    for m in members:
        if m["env"].get("LIFEBOAT_RESTORE_SOURCE", "").strip().lower() == "latest":
            errors.append(f"{m['job']}: LIFEBOAT_RESTORE_SOURCE=latest can resolve differently per Job")
    for key in ("index", "name", "peer", "job"):
        values = [m[key] for m in members]
        if len(set(values)) != len(values):
            errors.append(f"restore Jobs share a {key}: {values}")
    claims = [tuple(m["claims"]) for m in members]
    if len(set(claims)) != len(claims):
        errors.append(f"restore Jobs share a PVC: {claims}")
    for m in members:
        if "{" in m["name"] or "{" in m["peer"] or not m["name"] or not m["peer"]:
            errors.append(f"{m['job']}: unresolved member name/peer URL {m['name']!r} {m['peer']!r}")
    initial = next(iter({m["env"].get("LIFEBOAT_INITIAL_CLUSTER", "") for m in members}))
    pairs = dict(p.split("=", 1) for p in initial.split(",") if "=" in p)
    for m in members:
        if pairs.get(m["name"]) != m["peer"]:
            errors.append(f"{m['job']}: {m['name']}={m['peer']} is not in LIFEBOAT_INITIAL_CLUSTER {initial}")
    if len(pairs) != len(members):
        errors.append(f"{len(members)} restore Jobs for an initial cluster of {len(pairs)} members")
    return errors


# --------------------------------------------------------------------------------------------------
def _main(argv: list[str]) -> int:
    if argv[:1] == ["list"]:
        print("\n".join(str(d.relative_to(REPO)) for d in kustomize_dirs()))
        return 0
    if len(argv) < 2 or argv[0] != "validate":
        print("usage: rendered.py validate DIR...   |   rendered.py list", file=sys.stderr)
        return 2
    failed = 0
    for d in argv[1:]:
        errors = validate_dir(d)
        rel = os.path.relpath(d, REPO)
        if errors:
            failed += 1
            print(f"FAIL {rel}")
            for e in errors:
                print(f"  - {e}")
        else:
            print(f"ok   {rel} (k8s {', '.join(VALIDATE_VERSIONS)}, strict)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))

"""deploy/k8s, checked offline: every rendered manifest against the Kubernetes schemas, and
the mistakes a schema cannot see (a selector that selects nothing, a secret in argv, a
grace period shorter than the drain, a port the container does not open, ...).

Each check runs on the base and the Redis component as written (no kubectl needed) and
on every overlay rendered by ``kubectl kustomize`` (skipped where kubectl is missing).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from kubernetes_validate.utils import all_versions

from shared.inventory import load_inventory
from tests.support.k8s import (
    DEPLOY,
    OVERLAYS,
    Resource,
    as_written,
    find,
    kubectl,
    kustomize,
    load_all,
    pod_spec,
    prestop_seconds,
    workloads,
)
from tests.support.procs import REPO_ROOT

# The oldest Kubernetes the manifests are for (docs/deploy.md); checked against it and
# every newer version kubernetes-validate bundles, so a removed API shows up too.
MIN_K8S = (1, 30)
K8S_VERSIONS = sorted({v for v in all_versions()
                       if tuple(map(int, v.split(".")[:2])) >= MIN_K8S})
SOURCES = ["as-written", *OVERLAYS]
SERVICES = ("services.prober", "services.state", "services.gateway")
SENSITIVE = re.compile(r"TOKEN|PASSWORD|SECRET|AUTH|REDIS_URL", re.I)
REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
# Worst case from SIGTERM to exit, by service, given VIGIL_GRACE (read in the code):
DRAIN = {
    # leave the membership (2 s), finish in-flight probes, publish them (services/prober/service.py)
    "services.prober": lambda grace: 2 + 2 * grace,
    # the batch in flight (5 s Redis socket timeout) and one reconnect back-off (5 s)
    "services.state": lambda grace: 10.0,
    # WebSockets closed with 1001, then uvicorn's graceful shutdown, within grace + 6 s
    # together (services/gateway/service.py)
    "services.gateway": lambda grace: grace + 6,
}


@pytest.fixture(scope="module", params=SOURCES)
def manifests(request: pytest.FixtureRequest) -> list[Resource]:
    if request.param == "as-written":
        return as_written(DEPLOY / "base") + as_written(DEPLOY / "components" / "redis")
    if kubectl() is None:
        pytest.skip("kubectl is not installed: overlays are rendered by kubectl kustomize")
    return kustomize(DEPLOY / "overlays" / request.param)


def containers(manifests: list[Resource]) -> Iterator[tuple[Resource, dict[str, Any]]]:
    for w in workloads(manifests):
        spec = pod_spec(w)
        for c in spec.get("initContainers", []) + spec["containers"]:
            yield w, c


def service_of(container: Mapping[str, Any]) -> str | None:
    """``services.prober`` etc. for a Vigil container, None for anything else."""
    command = container.get("command", [])
    return command[2] if command[:2] == ["python", "-m"] and command[2] in SERVICES else None


def vigil(manifests: list[Resource]) -> Iterator[tuple[Resource, dict[str, Any], str]]:
    for w, c in containers(manifests):
        service = service_of(c)
        if service:
            yield w, c, service


def env_of(container: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {var["name"]: var for var in container.get("env", [])}


def matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    if not selector:
        return True
    if not all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        has, value = e["key"] in labels, labels.get(e["key"])
        ok = {"In": has and value in e.get("values", []),
              "NotIn": not has or value not in e.get("values", []),
              "Exists": has, "DoesNotExist": not has}[e["operator"]]
        if not ok:
            return False
    return True


def selected(manifests: list[Resource], selector: Mapping[str, Any]) -> list[Resource]:
    return [w for w in workloads(manifests)
            if matches(selector, w["spec"]["template"]["metadata"].get("labels", {}))]


def quantity(q: str | int) -> float:
    units = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20,
             "Gi": 2**30}
    m = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(q))
    assert m and m[2] in units, f"cannot read quantity {q!r}"
    return float(m[1]) * units[m[2]]


def container_ports(w: Resource) -> set[int | str]:
    out: set[int | str] = set()
    for c in pod_spec(w)["containers"]:
        for p in c.get("ports", []):
            out |= {p["containerPort"], p.get("name", p["containerPort"])}
    return out


def name(r: Resource) -> str:
    return f"{r['kind']}/{r['metadata']['name']}"


def secret_examples() -> list[Resource]:
    return load_all((DEPLOY / "secrets.example.yaml").read_text())


def test_manifests_validate_against_the_kubernetes_schemas(manifests):
    kinds = {r["kind"] for r in manifests}
    assert {"Namespace", "ConfigMap", "Deployment", "Service", "Ingress",
            "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"} <= kinds
    assert {"vigil-prober", "vigil-state", "vigil-gateway"} <= {
        r["metadata"]["name"] for r in manifests if r["kind"] == "Deployment"}
    failures = []
    for version in K8S_VERSIONS:
        for r in manifests:
            try:
                kubernetes_validate.validate(r, version, strict=True)
            except Exception as exc:  # also "no schema": an unknown kind is an error here
                failures.append(f"{version} {name(r)}: {getattr(exc, 'message', exc)}")
    assert not failures, "\n".join(failures)


def test_secret_examples_validate_and_hold_only_placeholders():
    examples = secret_examples()
    assert examples
    for r in examples:
        assert r["kind"] == "Secret"
        kubernetes_validate.validate(r, K8S_VERSIONS[0], strict=True)
        assert "data" not in r, f"{name(r)}: use stringData placeholders"
        for key, value in r["stringData"].items():
            assert re.search(r"<[^>]+>", value), f"{name(r)}.{key}: not a <placeholder>"


def test_selectors_match_the_labels_they_are_meant_for(manifests):
    for w in workloads(manifests):
        labels = w["spec"]["template"]["metadata"]["labels"]
        assert matches(w["spec"]["selector"], labels), name(w)
    for r in manifests:
        if r["kind"] == "Service":
            targets = selected(manifests, {"matchLabels": r["spec"]["selector"]})
        elif r["kind"] == "PodDisruptionBudget":
            targets = selected(manifests, r["spec"]["selector"])
        else:
            continue
        assert len(targets) == 1, f"{name(r)} selects {[name(t) for t in targets]}"
    for r in manifests:
        if r["kind"] == "HorizontalPodAutoscaler":
            ref = r["spec"]["scaleTargetRef"]
            target = find(manifests, ref["kind"], ref["name"])
            assert "replicas" not in target["spec"], f"{name(target)}: the HPA owns replicas"
        elif r["kind"] == "NetworkPolicy":
            selectors = [r["spec"]["podSelector"]] + [
                peer["podSelector"] for rule in r["spec"].get("ingress", [])
                for peer in rule.get("from", []) if "podSelector" in peer]
            for s in selectors:
                assert not s or selected(manifests, s), f"{name(r)}: {s} selects no pod"
        elif r["kind"] == "StatefulSet":
            svc = find(manifests, "Service", r["spec"]["serviceName"])
            assert svc["spec"].get("clusterIP") == "None", f"{name(svc)} is not headless"
            assert selected(manifests, {"matchLabels": svc["spec"]["selector"]}) == [r]
        elif r["kind"] == "Ingress":
            for rule in r["spec"]["rules"]:
                for path in rule["http"]["paths"]:
                    backend = path["backend"]["service"]
                    ports = find(manifests, "Service", backend["name"])["spec"]["ports"]
                    want = backend["port"].get("name", backend["port"].get("number"))
                    assert any(want in (p.get("name"), p["port"]) for p in ports), backend


def test_every_container_has_limits_and_probes_that_differ(manifests):
    for w, c in containers(manifests):
        where = f"{name(w)} {c['name']}"
        for resource in ("cpu", "memory"):
            request = c["resources"]["requests"][resource]
            limit = c["resources"]["limits"][resource]
            assert quantity(request) <= quantity(limit), f"{where}: {resource}"
        live, ready = c["livenessProbe"], c["readinessProbe"]
        handler = ("httpGet", "tcpSocket", "exec", "grpc")
        assert {k: live.get(k) for k in handler} != {k: ready.get(k) for k in handler}, where
        if "httpGet" in live:
            assert "ready" not in live["httpGet"]["path"], f"{where}: liveness on readiness"


def test_images_are_pinned(manifests):
    version = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    for w, c in containers(manifests):
        image, _, digest = c["image"].partition("@")
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest" and "/" not in tag, f"{name(w)}: {c['image']}"
        if service_of(c):
            assert tag == version, f"{name(w)}: image {tag} but the project is {version}"
        else:  # third-party: pinned by digest as well
            assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), f"{name(w)}: {c['image']}"


def test_secrets_are_referenced_never_inlined(manifests):
    assert not [name(r) for r in manifests if r["kind"] == "Secret"]
    examples = {(r["metadata"]["name"], k) for r in secret_examples() for k in r["stringData"]}
    for r in manifests:
        if r["kind"] == "ConfigMap":
            for key, text in r["data"].items():
                assert not re.search(r"password\s*=", text), f"{name(r)}.{key}: a password"
    for w, c in containers(manifests):
        secret_backed = set()
        for var in c.get("env", []):
            ref = var.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert (ref["name"], ref["key"]) in examples, f"{name(w)}: {ref} not described"
                secret_backed.add(var["name"])
            else:
                assert not SENSITIVE.search(var["name"]), f"{name(w)}: {var['name']} inlined"
        # kubelet expands $(VAR) in command and args: a secret there lands in argv.
        for arg in c.get("command", []) + c.get("args", []):
            leaked = set(REF.findall(arg)) & secret_backed
            assert not leaked, f"{name(w)}: {leaked} would be in the process arguments"
        for volume in pod_spec(w).get("volumes", []):
            if "secret" in volume:
                keys = {k for n, k in examples if n == volume["secret"]["secretName"]}
                assert keys, f"{name(w)}: Secret {volume['secret']['secretName']} not described"


def test_ports_agree_between_services_probes_env_and_containers(manifests):
    for r in manifests:
        if r["kind"] == "Service":
            (w,) = selected(manifests, {"matchLabels": r["spec"]["selector"]})
            for p in r["spec"]["ports"]:
                assert p.get("targetPort", p["port"]) in container_ports(w), f"{name(r)}: {p}"
        elif r["kind"] == "NetworkPolicy":
            for rule in r["spec"].get("ingress", []):
                for w in selected(manifests, r["spec"]["podSelector"]):
                    for p in rule.get("ports", []):
                        assert p["port"] in container_ports(w), f"{name(r)}: {name(w)} {p}"
    for w, c in containers(manifests):
        ports = container_ports(w)
        for probe in ("livenessProbe", "readinessProbe"):
            action = c[probe].get("httpGet") or c[probe].get("tcpSocket")
            assert action is None or action["port"] in ports, f"{name(w)} {probe}"
        for var, spec in env_of(c).items():
            if var.endswith("_PORT") and "value" in spec:
                assert int(spec["value"]) in ports, f"{name(w)}: {var}={spec['value']}"
        scrape = w["spec"]["template"]["metadata"].get("annotations", {}).get("prometheus.io/port")
        assert scrape is None or int(scrape) in ports, f"{name(w)}: scrape port {scrape}"


def test_pods_run_locked_down(manifests):
    user = re.search(r"^USER (\d+):(\d+)$", (REPO_ROOT / "Dockerfile").read_text(), re.M)
    assert user, "Dockerfile: USER uid:gid, numeric"
    for w in workloads(manifests):
        spec = pod_spec(w)
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] > 0, name(w)
        assert pod["seccompProfile"]["type"] == "RuntimeDefault", name(w)
        assert spec["automountServiceAccountToken"] is False, name(w)
        # A Service named vigil-gateway would inject VIGIL_GATEWAY_PORT=tcp://...
        assert spec["enableServiceLinks"] is False, name(w)
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, name(w)
            assert sc["readOnlyRootFilesystem"] is True, name(w)
            assert sc["capabilities"]["drop"] == ["ALL"], name(w)
            assert not sc.get("privileged") and not sc.get("capabilities", {}).get("add")
            if service_of(c):
                assert str(pod["runAsUser"]) == user[1], f"{name(w)}: not the image's USER"


def test_vigil_env_names_pods_and_requires_the_token(manifests):
    for w, c, service in vigil(manifests):
        names = [var["name"] for var in c["env"]]
        assert len(names) == len(set(names)), f"{name(w)}: duplicate env"
        for var in c["env"]:
            assert ("value" in var) != ("valueFrom" in var), f"{name(w)}: {var}"
        env = env_of(c)
        own = {"services.prober": "VIGIL_PROBER_ID", "services.state": "VIGIL_CONSUMER"}
        if service in own:  # unique per pod, stable across a container restart
            ref = env[own[service]]["valueFrom"]["fieldRef"]
            assert ref["fieldPath"] == "metadata.name", f"{name(w)}: {ref}"
        if service == "services.gateway":
            assert env["VIGIL_GATEWAY_HOST"]["value"] == "0.0.0.0"
            assert "secretKeyRef" in env["VIGIL_API_TOKEN"]["valueFrom"]
        assert "secretKeyRef" in env["VIGIL_REDIS_URL"]["valueFrom"]


def test_grace_periods_cover_the_drain_and_replicas_survive_disruption(manifests):
    inventories = [r for r in manifests if r["kind"] == "ConfigMap"
                   and r["metadata"]["name"] == "vigil-inventory"]
    for w, c, service in vigil(manifests):
        env = env_of(c)
        grace = float(env.get("VIGIL_GRACE", {}).get("value", 10))
        needed = prestop_seconds(c) + DRAIN[service](grace)
        assert pod_spec(w)["terminationGracePeriodSeconds"] > needed, f"{name(w)}: {needed}"
        if service == "services.gateway":
            assert prestop_seconds(c) >= 3, "endpoints must drop before the sockets close"
        if service == "services.prober":  # in-flight probes end within their timeout
            for cm in inventories:
                text = cm["data"]["instances.toml"]
                timeouts = [float(t) for t in re.findall(r"^timeout\s*=\s*([0-9.]+)", text, re.M)]
                assert timeouts and max(timeouts) < grace, f"probe timeouts {timeouts}"
    replicas = {w["metadata"]["name"]: w["spec"].get("replicas") for w in workloads(manifests)}
    assert replicas["vigil-state"] == 2 and replicas["vigil-gateway"] == 2
    hpa = find(manifests, "HorizontalPodAutoscaler", "vigil-prober")["spec"]
    assert hpa["scaleTargetRef"]["name"] == "vigil-prober" and hpa["minReplicas"] >= 2
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"
    budgets = {name(w): r["spec"] for r in manifests if r["kind"] == "PodDisruptionBudget"
               for w in selected(manifests, r["spec"]["selector"])}
    for w in workloads(manifests):
        # AlwaysAllow: every pod is unready while Redis is down, and a drain must not hang.
        assert budgets[name(w)] == {"maxUnavailable": 1, "selector": w["spec"]["selector"],
                                    "unhealthyPodEvictionPolicy": "AlwaysAllow"}


def test_network_policies_open_only_the_gateway_and_guard_redis(manifests):
    policies = [r for r in manifests if r["kind"] == "NetworkPolicy"]
    assert any(p["spec"]["podSelector"] == {} and p["spec"]["policyTypes"] == ["Ingress"]
               and not p["spec"].get("ingress") for p in policies), "no default deny"
    apps = {w["metadata"]["name"]: w for w in workloads(manifests)}
    services = [w for w, _, _ in vigil(manifests)]
    for p in policies:
        # Egress stays open: probers reach MySQL anywhere (docs/deploy.md).
        assert "Egress" not in p["spec"]["policyTypes"], name(p)
        targets = selected(manifests, p["spec"]["podSelector"])
        for rule in p["spec"].get("ingress", []):
            if not rule.get("from"):
                assert targets == [apps["vigil-gateway"]], f"{name(p)} opens {targets}"
            if "vigil-redis" in {t["metadata"]["name"] for t in targets}:
                peers = rule["from"]
                assert all(set(peer) == {"podSelector"} for peer in peers), name(p)
                allowed = [w for peer in peers for w in selected(manifests, peer["podSelector"])]
                assert sorted(map(name, allowed)) == sorted(map(name, services)), name(p)


def test_files_the_services_read_are_mounted_and_valid(manifests, tmp_path: Path):
    for w, c in containers(manifests):
        declared = {v["name"] for v in pod_spec(w).get("volumes", [])} | {
            t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates", [])}
        mounted = {m["name"] for m in c.get("volumeMounts", [])}
        assert mounted == declared, f"{name(w)}: mounts {mounted}, volumes {declared}"
    for w, c, _ in vigil(manifests):
        mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
        volumes = {v["name"]: v for v in pod_spec(w).get("volumes", [])}
        for var, source in (("VIGIL_INVENTORY", "configMap"), ("VIGIL_CREDENTIALS", "secret")):
            if var not in env_of(c):
                continue
            path = Path(env_of(c)[var]["value"])
            mount = mounts[str(path.parent)]
            assert "subPath" not in mount, f"{name(w)}: a subPath mount is never updated"
            volume = volumes[mount["name"]][source]
            if source == "configMap":
                cm = find(manifests, "ConfigMap", volume["name"])
                (tmp_path / path.name).write_text(cm["data"][path.name])
                assert load_inventory(str(tmp_path / path.name))  # ConfigError if bad
            else:
                keys = {k for r in secret_examples() if r["metadata"]["name"] ==
                        volume["secretName"] for k in r["stringData"]}
                assert path.name in keys, f"{name(w)}: {var} not in the Secret"
    for cm in manifests:
        if cm["kind"] == "ConfigMap" and "redis.conf" in cm.get("data", {}):
            conf = cm["data"]["redis.conf"]
            assert re.search(r"^appendonly yes$", conf, re.M)
            assert re.search(r"^appendfsync everysec$", conf, re.M)


def routed(ingress: Resource, url_path: str) -> bool:
    for rule in ingress["spec"]["rules"]:
        for p in rule["http"]["paths"]:
            prefix = p["path"].rstrip("/")
            if url_path == p["path"] or (p["pathType"] == "Prefix" and (
                    not prefix or url_path.startswith(prefix + "/"))):
                return True
    return False


def test_ingress_routes_the_app_and_keeps_health_and_metrics_inside(manifests):
    (ingress,) = [r for r in manifests if r["kind"] == "Ingress"]
    for path in ("/", "/static/app.js", "/api/instances/db-1", "/api/summary", "/ws"):
        assert routed(ingress, path), path
    for path in ("/metrics", "/healthz", "/readyz"):
        assert not routed(ingress, path), path
    notes = ingress["metadata"]["annotations"]
    for timeout in ("proxy-read-timeout", "proxy-send-timeout"):  # WebSockets live for hours
        assert int(notes[f"nginx.ingress.kubernetes.io/{timeout}"]) >= 3600


def test_overlays_render_what_they_promise():
    if kubectl() is None:
        pytest.skip("kubectl is not installed")
    self_contained = kustomize(DEPLOY / "overlays" / "self-contained")
    find(self_contained, "StatefulSet", "vigil-redis")
    production = kustomize(DEPLOY / "overlays" / "production")
    assert not [r for r in production if r["metadata"]["name"].startswith("vigil-redis")]
    assert find(production, "Ingress", "vigil-gateway")["spec"]["tls"]
    assert all(c["image"].startswith("registry.example.com/") for _, c, _ in vigil(production))


def test_dockerfile_is_pinned_non_root_and_copies_only_what_it_may():
    text = (REPO_ROOT / "Dockerfile").read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert base and re.fullmatch(r"python:3\.\d+\.\d+-slim-\w+@sha256:[0-9a-f]{64}", base[1])
    assert re.findall(r"^FROM (\S+)", text, re.M) == ["${PYTHON_IMAGE}"] * 2
    user = re.findall(r"^USER (\d+):(\d+)$", text, re.M)
    assert len(user) == 1 and int(user[0][0]) > 0 and int(user[0][1]) > 0
    assert re.search(r'^CMD \["python", "-m", "services\.\w+"\]$', text, re.M)
    ignore = [line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*", ".dockerignore: deny everything, then list what the build uses"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for copy in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for src in copy.split():
            assert src.rstrip("/") in allowed, f"COPY {src}: excluded by .dockerignore"


def test_the_image_pins_every_dependency_within_pyproject_ranges():
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    text = (REPO_ROOT / "Dockerfile").read_text()
    assert re.search(r"pip install -c constraints\.txt \.", text), "install with the pins"
    pins = {}
    for line in (REPO_ROOT / "deploy" / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not pinned with =="
            pins[canonicalize_name(name)] = version.strip()
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    for spec in project["dependencies"]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not pinned in deploy/constraints.txt"
        assert req.specifier.contains(pins[name]), f"{req.name}=={pins[name]} not in {spec}"
        for extra in req.extras:  # redis[hiredis]
            assert canonicalize_name(extra) in pins, f"{extra} (an extra) is not pinned"

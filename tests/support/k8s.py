"""The Kubernetes manifests in ``deploy/k8s``, read as a cluster would read them.

``render(overlay)`` is what ``kubectl apply -k`` would send; ``Pod`` turns one workload
of it into the command, environment and files to start that container here, so a test
runs the services exactly as their manifests say (command, env, grace period, probes).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from tests.support.procs import REPO_ROOT
from tests.support.wait import free_port

DEPLOY = REPO_ROOT / "deploy" / "k8s"
OVERLAYS = sorted(p.name for p in (DEPLOY / "overlays").iterdir() if p.is_dir())
WORKLOADS = ("Deployment", "StatefulSet")
Resource = dict[str, Any]


def load_all(text: str) -> list[Resource]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def kubectl() -> str | None:
    return shutil.which("kubectl")


def kustomize(path: Path) -> list[Resource]:
    """``kubectl kustomize path`` (offline): the resources an overlay renders to."""
    exe = kubectl()
    assert exe is not None, "kubectl is not installed"
    out = subprocess.run([exe, "kustomize", str(path)], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, f"kubectl kustomize {path} failed:\n{out.stderr}"
    return load_all(out.stdout)


def as_written(path: Path) -> list[Resource]:
    """The resources and components a kustomization lists, as written (nothing patched).

    For the kustomizations that do nothing else, this is what kustomize renders; it lets
    the tests read them where kubectl is not installed.
    """
    spec = yaml.safe_load((path / "kustomization.yaml").read_text())
    extra = set(spec) - {"apiVersion", "kind", "resources", "components"}
    assert not extra, f"{path}: {sorted(extra)} need kustomize to render"
    out: list[Resource] = []
    for entry in [*spec.get("resources", []), *spec.get("components", [])]:
        target = path / entry
        out += as_written(target) if target.is_dir() else load_all(target.read_text())
    return out


def render(overlay: str) -> list[Resource]:
    path = DEPLOY / "overlays" / overlay
    return kustomize(path) if kubectl() else as_written(path)


def find(resources: list[Resource], kind: str, name: str) -> Resource:
    found = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    assert len(found) == 1, f"{len(found)} {kind}/{name} in the manifests"
    return found[0]


def workloads(resources: list[Resource]) -> Iterator[Resource]:
    return (r for r in resources if r["kind"] in WORKLOADS)


def pod_spec(workload: Resource) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def prestop_seconds(container: Mapping[str, Any]) -> float:
    """How long a ``sleep`` preStop hook (exec or the sleep handler) holds SIGTERM back."""
    hook = container.get("lifecycle", {}).get("preStop")
    if hook is None:
        return 0.0
    if "sleep" in hook:
        return float(hook["sleep"]["seconds"])
    command = hook["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2, f"not a plain sleep: {command}"
    return float(command[1])


_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: earlier variables only; unknown ones stay as is."""
    return _REF.sub(lambda m: env.get(m.group(1), m.group(0)), value)


class Pod:
    """One workload's only container, to be started here as its pod would start it.

    Volumes become directories under ``workdir`` (ConfigMaps from the manifests, unless
    ``files`` replaces a key; Secrets from ``secrets``), and env values that point into
    a mount point there. Container ports become free local ports, and so do the
    ``*_PORT`` variables that name them.
    """

    def __init__(self, resources: list[Resource], kind: str, name: str, workdir: Path,
                 secrets: Mapping[tuple[str, str], str],
                 files: Mapping[tuple[str, str], str] | None = None) -> None:
        self.workload = find(resources, kind, name)
        self.spec = pod_spec(self.workload)
        (self.container,) = self.spec["containers"]
        self.name = f"{name}-{uuid.uuid4().hex[:5]}"  # metadata.name, as a ReplicaSet would
        self.ports = {p["containerPort"]: free_port() for p in self.container.get("ports", [])}
        self._secrets = secrets
        self._mounts = self._materialize(resources, workdir / self.name, files or {})

    @property
    def module(self) -> str:
        command = self.container["command"]
        assert command[:2] == ["python", "-m"] and len(command) == 3, command
        return str(command[2])

    @property
    def grace(self) -> float:
        """Seconds from SIGTERM to SIGKILL: the pod's grace period less the preStop hook."""
        total = float(self.spec.get("terminationGracePeriodSeconds", 30))
        return total - prestop_seconds(self.container)

    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for var in self.container.get("env", []):
            name = var["name"]
            if "value" in var:
                value = expand(str(var["value"]), out)
            else:
                found = self._value_from(var["valueFrom"])
                if found is None:  # an optional key the test does not supply: unset
                    continue
                value = found
            for mount, local in sorted(self._mounts.items(), key=lambda m: -len(m[0])):
                if value == mount or value.startswith(mount + "/"):
                    value = str(local) + value[len(mount):]
                    break
            if name.endswith("_PORT") and value.isdigit() and int(value) in self.ports:
                value = str(self.ports[int(value)])
            out[name] = value
        return out

    def port(self, ref: int | str) -> int:
        """The local port of a container port, by number or by name."""
        for p in self.container.get("ports", []):
            if ref in (p["containerPort"], p.get("name")):
                return self.ports[p["containerPort"]]
        raise AssertionError(f"{self.name}: no container port {ref!r}")

    def probe_url(self, probe: str) -> str:
        """``livenessProbe`` / ``readinessProbe`` as a local URL (HTTP probes only)."""
        get = self.container[probe]["httpGet"]
        return f"http://127.0.0.1:{self.port(get['port'])}{get['path']}"

    def _value_from(self, source: Mapping[str, Any]) -> str | None:
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            if ref.get("optional") and (ref["name"], ref["key"]) not in self._secrets:
                return None
            return self._secrets[(ref["name"], ref["key"])]
        if "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            assert path == "metadata.name", f"fieldRef {path} not emulated"
            return self.name
        raise AssertionError(f"valueFrom {sorted(source)} not emulated")

    def _materialize(self, resources: list[Resource], root: Path,
                     files: Mapping[tuple[str, str], str]) -> dict[str, Path]:
        """Write each mounted volume to a directory; return mount path → directory."""
        local: dict[str, Path] = {}
        for volume in self.spec.get("volumes", []):
            path = root / volume["name"]
            path.mkdir(parents=True)
            contents: dict[str, str] = {}
            if "configMap" in volume:
                cm = volume["configMap"]["name"]
                contents = dict(find(resources, "ConfigMap", cm).get("data", {}))
                contents.update({k: v for (n, k), v in files.items() if n == cm})
            elif "secret" in volume:
                name = volume["secret"]["secretName"]
                contents = {k: v for (n, k), v in self._secrets.items() if n == name}
                assert contents, f"the test supplies no Secret {name}"
            else:
                assert "emptyDir" in volume, f"volume {volume['name']} not emulated"
            for key, text in contents.items():
                (path / key).write_text(text)
            local[volume["name"]] = path
        return {m["mountPath"]: local[m["name"]]
                for m in self.container.get("volumeMounts", [])}

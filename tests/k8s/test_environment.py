"""Secrets and each service's environment in the rendered overlays.

Secrets hold no real values (prod ships none), and every FLYWHEEL_* variable a pod gets is a real
setting of the service that reads it, with a value its settings class accepts at start-up.
"""

from __future__ import annotations

import os

import yaml

from flywheel.settings import PLACEHOLDER_SECRET, FeedbackSettings, ServingSettings, TrainerSettings
from tests.conftest import ROOT
from tests.k8s.conftest import WORKLOADS, find, main_container, one, overlays, pod_spec

SETTINGS = {"serve": ServingSettings, "feedback": FeedbackSettings, "train": TrainerSettings}


@overlays()
def test_secrets_hold_no_real_values_and_prod_ships_none(rendered, overlay):
    objects = rendered[overlay]
    secrets = find(objects, "Secret")
    if overlay == "prod":
        assert not secrets, "prod must not overwrite the operator's real secret"
    else:
        (secret,) = secrets
        assert set(secret["stringData"].values()) <= {PLACEHOLDER_SECRET, ""}
        assert not secret.get("data")
    base = yaml.safe_load((ROOT / "k8s/base/secret.yaml").read_text())
    for component in WORKLOADS:
        for container in pod_spec(objects, component)["containers"]:
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == "flywheel-secrets" and ref["key"] in base["stringData"], env["name"]


def container_environment(objects, container, secrets: dict[str, str]) -> dict[str, str]:
    """The variables a container gets: its ConfigMaps, then its own env (secrets by their key)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(one(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "secretKeyRef" in item.get("valueFrom", {}):
            env[item["name"]] = secrets[item["valueFrom"]["secretKeyRef"]["key"]]
        elif "fieldRef" in item.get("valueFrom", {}):
            env[item["name"]] = "pod-name-0"
    return env


def settings_fields(cls) -> set[str]:
    names = set()
    for name, field in cls.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
            names |= {f"{name}__{sub}" for sub in annotation.model_fields}
        else:
            names.add(name)
    return names


@overlays()
def test_every_flywheel_variable_is_a_setting_its_service_reads_and_accepts(rendered, overlay, monkeypatch):
    objects = rendered[overlay]
    secrets = {"feedback-token-secret": "a-real-secret", "admin-key": "a-real-admin-key", "api-keys": "key-1:alice"}
    models, fractions = {}, set()
    for component in WORKLOADS:
        container = main_container(objects, component)
        verb = container["args"][0]
        cls = SETTINGS[verb]
        env = container_environment(objects, container, secrets)
        unknown = {name for name in env if name.startswith("FLYWHEEL_")} - {
            f"FLYWHEEL_{field.upper()}" for field in settings_fields(cls)
        }
        assert not unknown, f"{component}: {sorted(unknown)} are not {cls.__name__} settings"
        for name in [n for n in os.environ if n.startswith("FLYWHEEL_")]:
            monkeypatch.delenv(name)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        settings = cls()  # raises on a value the service would refuse at start-up
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert settings.port == ports["http"], component
        assert settings.grpc_port == ports["grpc"], component
        assert settings.host == "0.0.0.0" and str(settings.data_dir) == "/data"
        assert settings.env == ("production" if overlay == "prod" else "local")
        models[component] = getattr(settings, "model", None)
        fractions.add(settings.canary_fraction)
    # The trainer's adapters are trained on its base model: serving must load the same one.
    assert models["serving"] == models["trainer"] == "/opt/models/SmolLM2-135M-Instruct"
    # Serving's receiver and the trainer's roll-out controller start from the same canary fraction.
    assert len(fractions) == 1


@overlays()
def test_every_referenced_config_map_and_claim_exists(rendered, overlay):
    objects = rendered[overlay]
    for component in WORKLOADS:
        spec = pod_spec(objects, component)
        for container in spec["containers"] + spec.get("initContainers", []):
            for source in container.get("envFrom", []):
                assert find(objects, "ConfigMap", source["configMapRef"]["name"])
        for volume in spec.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert find(objects, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])

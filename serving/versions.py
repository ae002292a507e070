"""What is checked before the engine sees a policy version; a version that fails is refused with a reason.

Every file must match the manifest's sha256 and every tensor must read. An adapter ("lora") must
have its config and weights and a rank the engine allows; full weights ("full", from `flywheel
merge`) must hold exactly the served model's tensors, name by name, shape and dtype: a reload
that fails half-way leaves vLLM's model half-reset and its engine dead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from flywheel.channel import ADAPTER_KIND, FULL_KIND
from flywheel.store import Manifest, ModelStore, StoreError

WEIGHTS_FILE = "model.safetensors"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")

TensorSpecs = dict[str, tuple[tuple[int, ...], str]]  # name -> (shape, dtype)


class RefusedVersion(Exception):
    """A version failed a check; `reason` is a short metric label, the message says what is wrong."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class VersionInfo:
    version: str
    parent: str = ""
    kind: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    loaded_at: float = 0.0
    swap_seconds: float = 0.0


def tensor_specs(directory: Path) -> TensorSpecs:
    """Every tensor's shape and dtype in the directory's safetensors files (headers only)."""
    from safetensors import safe_open

    specs: TensorSpecs = {}
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as weights:
            for name in weights.keys():  # noqa: SIM118 - safe_open has no __iter__
                piece = weights.get_slice(name)
                specs[name] = (tuple(piece.get_shape()), piece.get_dtype())
    return specs


def read_all_tensors(path: Path, version: str, what: str) -> None:
    """Read every tensor of a safetensors file once, so a truncated or corrupt one is refused here."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as weights:
            for name in weights.keys():  # noqa: SIM118 - safe_open has no __iter__
                weights.get_tensor(name)
    except Exception as exc:
        raise RefusedVersion("weights", f"version {version}: {what} unreadable ({exc})") from None


def check_version(store: ModelStore, version: str, max_rank: int, served: TensorSpecs | None = None) -> VersionInfo:
    """Everything that can be checked before the engine sees a version (raises RefusedVersion).

    `served`: the served model's tensor specs, which a full-weight version must match.
    """
    try:
        manifest = store.verify(version)
    except StoreError as exc:
        text = str(exc)
        reason = (
            "name"
            if "plain name" in text or "out of the store" in text or "outside the version" in text
            else ("missing" if "not in the store" in text or "missing" in text else "checksum")
        )
        raise RefusedVersion(reason, str(exc)) from None
    if manifest.kind == FULL_KIND and served is not None:
        _check_full_weights(store.path(version), manifest, served)
    elif manifest.kind == ADAPTER_KIND:
        _check_adapter(store.path(version), manifest, max_rank)
    else:
        raise RefusedVersion("kind", f"version {version} is a {manifest.kind!r} version; this replica cannot load it")
    return VersionInfo(version, manifest.parent, manifest.kind, dict(manifest.metrics))


def _require(manifest: Manifest, names: tuple[str, ...]) -> None:
    listed = {entry.path for entry in manifest.files}
    for name in names:
        if name not in listed:
            raise RefusedVersion("incomplete", f"version {manifest.version} has no {name}")


def _check_adapter(root: Path, manifest: Manifest, max_rank: int) -> None:
    version = manifest.version
    _require(manifest, ADAPTER_FILES)
    try:
        config = json.loads((root / "adapter_config.json").read_text(encoding="utf-8"))
        rank = int(config["r"])
    except (ValueError, KeyError, TypeError) as exc:
        raise RefusedVersion("config", f"version {version}: unreadable adapter_config.json ({exc})") from None
    if rank > max_rank:
        raise RefusedVersion("rank", f"version {version} has LoRA rank {rank}; this replica allows at most {max_rank}")
    read_all_tensors(root / "adapter_model.safetensors", version, "adapter weights")


def _check_full_weights(root: Path, manifest: Manifest, served: TensorSpecs) -> None:
    version = manifest.version
    _require(manifest, (WEIGHTS_FILE,))
    try:
        found = tensor_specs(root)
    except Exception as exc:
        raise RefusedVersion("weights", f"version {version}: weights unreadable ({exc})") from None
    missing, extra = sorted(set(served) - set(found)), sorted(set(found) - set(served))
    if missing or extra:
        raise RefusedVersion(
            "shape", f"version {version} is not this model: missing {missing[:3]}, unexpected {extra[:3]}"
        )
    for name, spec in served.items():
        if found[name] != spec:
            raise RefusedVersion("shape", f"version {version}: {name} is {found[name]}, the served model's is {spec}")
    read_all_tensors(root / WEIGHTS_FILE, version, "weights")

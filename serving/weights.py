"""Full-weight policy versions: checked against the served model, then reloaded into the engine in place.

A full-weight version (manifest kind "full", from `flywheel merge`) replaces the engine's weights,
so one replica serves one of them at a time: the stable's on every replica, and a canary's on the
share of replicas its fraction names (DESIGN.md: canary across replicas). Nothing reaches the
engine before the whole file is read and every tensor's name, shape and dtype matches the served
model's: a reload that fails half-way leaves vLLM's model half-reset and its engine dead.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from flywheel.store import ModelStore, StoreError

log = logging.getLogger(__name__)

FULL_KIND = "full"
WEIGHTS_FILE = "model.safetensors"


class WeightsMismatch(ValueError):
    """A version's tensors are not the served model's (reason, message)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def tensor_specs(directory: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Name -> (shape, dtype) of every tensor in the directory's safetensors files (headers only)."""
    from safetensors import safe_open

    specs: dict[str, tuple[tuple[int, ...], str]] = {}
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as weights:
            for name in weights.keys():  # noqa: SIM118 - safe_open has no __iter__
                piece = weights.get_slice(name)
                specs[name] = (tuple(piece.get_shape()), piece.get_dtype())
    return specs


def check_full_weights(store: ModelStore, version: str, served: dict[str, tuple[tuple[int, ...], str]]) -> None:
    """Raise WeightsMismatch unless the version's weights read completely and match `served` tensor by tensor."""
    root = store.path(version)
    try:
        manifest = store.manifest(version)
    except StoreError as exc:
        raise WeightsMismatch("missing", str(exc)) from None
    if WEIGHTS_FILE not in {entry.path for entry in manifest.files}:
        raise WeightsMismatch("incomplete", f"version {version} has no {WEIGHTS_FILE}")
    try:
        found = tensor_specs(root)
    except Exception as exc:
        raise WeightsMismatch("weights", f"version {version}: weights unreadable ({exc})") from None
    missing = sorted(set(served) - set(found))
    extra = sorted(set(found) - set(served))
    if missing or extra:
        raise WeightsMismatch(
            "shape", f"version {version} is not this model: missing {missing[:3]}, unexpected {extra[:3]}"
        )
    for name, spec in served.items():
        if found[name] != spec:
            raise WeightsMismatch("shape", f"version {version}: {name} is {found[name]}, the served model's is {spec}")
    try:
        from safetensors import safe_open

        with safe_open(str(root / WEIGHTS_FILE), framework="pt") as weights:
            for name in weights.keys():  # noqa: SIM118
                weights.get_tensor(name)
    except Exception as exc:
        raise WeightsMismatch("weights", f"version {version}: weights unreadable ({exc})") from None


async def reload_in_place(engine, path: Path) -> float:
    """Swap the engine's weights for those in `path`; returns the seconds the engine was paused.

    Requests still queued are frozen (`keep`) and resume on the new weights; the prefix cache and
    running requests' KV are reset, since cached KV from the old weights gives wrong output.
    """
    started = time.perf_counter()
    await engine.pause_generation(mode="keep", clear_cache=False)
    try:
        await engine.collective_rpc("reload_weights", kwargs={"weights_path": str(path)})
        await engine.reset_prefix_cache(reset_running_requests=True)
    finally:
        await engine.resume_generation()
    took = time.perf_counter() - started
    log.info("reloaded the engine's weights from %s in %.2f s", path, took)
    return took

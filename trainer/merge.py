"""`flywheel merge`: a LoRA version folded into the base weights, published as a full-weight version.

Serving runs a full-weight version on the engine's own weights, with no adapter in the way (on
CPU an adapter halves throughput, DESIGN.md), reloaded in place: as the stable on every replica,
as a canary on the canary's share of replicas. The merged version's parent is the adapter it came
from, and the trainer continues from that adapter when the merged version is current.
"""

from __future__ import annotations

import logging
from pathlib import Path

from flywheel.channel import ADAPTER_KIND, FULL_KIND
from flywheel.store import Manifest, ModelStore, StoreError

log = logging.getLogger(__name__)


def merge_version(store: ModelStore, version: str, base_model: str, name: str = "") -> Manifest:
    """Publish `name` (default VERSION-full): base + VERSION's adapter as one bf16 safetensors file."""
    manifest = store.verify(version)
    if manifest.kind != ADAPTER_KIND:
        raise StoreError(f"version {version} is a {manifest.kind!r} version; only LoRA versions can be merged")
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.bfloat16)
    merged = PeftModel.from_pretrained(base, store.path(version)).merge_and_unload()

    def write(tmp: Path) -> None:
        merged.save_pretrained(tmp, safe_serialization=True)

    return store.publish(
        name or f"{version}-full", write, parent=version, base_model=manifest.base_model or base_model,
        kind=FULL_KIND, metrics=dict(manifest.metrics), extra={"merged_from": version},
    )  # fmt: skip

"""`flywheel merge`: a LoRA version folded into the base weights, published as a full-weight version.

Serving runs a full-weight version on the engine's own weights, with no adapter in the way (on
CPU an adapter halves throughput, DESIGN.md), reloaded in place: as the stable on every replica,
as a canary on the canary's share of replicas. The merged version's parent is the adapter it came
from, and the trainer continues from that adapter when the merged version is current.
"""

from __future__ import annotations

import logging
from pathlib import Path

from flywheel.kafka import make_producer
from flywheel.rollout import published_event
from flywheel.settings import TOPIC_POLICY
from flywheel.store import Manifest, ModelStore, StoreError
from serving.versions import FULL_KIND

log = logging.getLogger(__name__)


def merge_version(store: ModelStore, version: str, base_model: str, name: str = "") -> Manifest:
    """Publish `name` (default VERSION-full): base + VERSION's adapter as one bf16 safetensors file."""
    manifest = store.verify(version)
    if manifest.kind != "lora":
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


def announce(bootstrap: str, store: ModelStore, manifest: Manifest, timeout_s: float = 30.0) -> None:
    """PolicyPublished for the version on flywheel.policy.v1, acknowledged by the broker."""
    from trainer.round import policy_published_event

    producer = make_producer(bootstrap)
    try:
        event = published_event(policy_published_event(manifest, store.root))
        producer.send(TOPIC_POLICY, key=manifest.version.encode(), value=event.SerializeToString()).get(timeout_s)
    finally:
        producer.close(timeout=5)
    log.info("announced %s on %s", manifest.version, TOPIC_POLICY)

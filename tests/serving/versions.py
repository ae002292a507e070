"""Policy versions for roll-out tests: real PEFT LoRA adapters on the tiny model, published for real."""

from __future__ import annotations

from pathlib import Path

from flywheel.kafka import make_producer
from flywheel.rollout import published_event
from flywheel.settings import TOPIC_POLICY
from flywheel.store import Manifest, ModelStore
from trainer.round import policy_published_event


def make_lora_version(base_model: Path, store: ModelStore, version: str, seed: int, parent: str = "base") -> Manifest:
    """A LoRA adapter with random (non-zero) weights, so each version answers differently."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.bfloat16)
    config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.5)
    return store.publish(
        version, lambda tmp: peft_model.save_pretrained(tmp), parent=parent, base_model=str(base_model), kind="lora",
        metrics={"seed": float(seed)},
    )  # fmt: skip


def announce(bootstrap: str, store: ModelStore, manifest: Manifest) -> None:
    """Publish the version's PolicyPublished event, as the trainer does (acks=all)."""
    producer = make_producer(bootstrap)
    try:
        event = published_event(policy_published_event(manifest, store.root))
        producer.send(TOPIC_POLICY, key=manifest.version.encode(), value=event.SerializeToString()).get(30)
    finally:
        producer.close(timeout=5)

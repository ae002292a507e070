"""Policy versions for roll-out tests: real PEFT LoRA adapters on the tiny model, published for real."""

from __future__ import annotations

from pathlib import Path

from flywheel import channel
from flywheel.store import Manifest, ModelStore


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
        version, lambda tmp: peft_model.save_pretrained(tmp), parent=parent, base_model=str(base_model),
        kind=channel.ADAPTER_KIND, metrics={"seed": float(seed)},
    )  # fmt: skip

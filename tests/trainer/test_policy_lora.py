"""The policy adapter's shape (`ppo.lora_layers`): LoRA on the top layers only, no backward pass below them."""

from __future__ import annotations

import json

import torch

from flywheel.settings import SFTSection
from trainer.ppo import PolicyLora, load_policy
from trainer.records import CorrectedResponse
from trainer.sft import run_sft

ASK = (("user", "Say hello."),)


def lora_layer_indices(model) -> set[int]:
    return {int(name.split(".layers.")[1].split(".")[0]) for name, p in model.named_parameters() if p.requires_grad}


def test_a_top_layer_adapter_trains_only_those_layers_and_no_gradient_flows_below_them(tiny_model):
    everywhere = load_policy(str(tiny_model), None, PolicyLora(4))
    assert lora_layer_indices(everywhere) == {0, 1}

    top = load_policy(str(tiny_model), None, PolicyLora(4, layers=1))
    assert lora_layer_indices(top) == {1}
    ids = torch.randint(100, 1000, (2, 12))
    out = top(input_ids=ids, labels=ids, output_hidden_states=True)
    # hidden_states[0] is the embedding, [1] the first layer's output, [2] the second's
    assert not out.hidden_states[1].requires_grad  # the autograd graph starts above the bottom layer
    assert out.hidden_states[2].requires_grad
    out.loss.backward()
    grads = {name for name, p in top.named_parameters() if p.grad is not None}
    assert grads and all(".layers.1." in name for name in grads)


def test_a_trained_top_layer_adapter_keeps_its_shape_when_saved_and_continued(tiny_model, tmp_path):
    demonstrations = [
        CorrectedResponse(f"k{i}", ASK, "Go away.", "Hello there, friend!", i) for i in range(4)
    ]
    config = SFTSection(epochs=1, min_steps=1, batch_size=2, max_length=64)
    trained = run_sft(str(tiny_model), None, demonstrations, config, PolicyLora(4, layers=1), tmp_path / "sft")
    trained.policy.save_pretrained(tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["layers_to_transform"] == [1]
    # a continued adapter keeps the shape it was made with, whatever the setting says now
    continued = load_policy(str(tiny_model), tmp_path / "adapter", PolicyLora(4, layers=0))
    assert lora_layer_indices(continued) == {1}

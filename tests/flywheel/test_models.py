"""Model preparation: the tiny test model, and the default model's GGUF conversion."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from flywheel.models import DEFAULT_MODEL_NAME, is_prepared, load_gguf_model, prepare_default_model

PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.", "How do I boil an egg?"]


def greedy(model, tokenizer, prompt: str, tokens: int = 24) -> str:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def test_tiny_model_loads_and_generates(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert model.config.num_hidden_layers == 2
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    assert greedy(model, tokenizer, "hi", tokens=4)


@pytest.mark.slow
def test_default_model_conversion_matches_the_gguf(default_model):
    target = default_model
    assert target.name == DEFAULT_MODEL_NAME and is_prepared(target)
    assert (target / "model.safetensors").exists() and (target / "tokenizer.json").exists()
    assert prepare_default_model(target.parent, show_progress=False) == target  # once: the second call is a no-op

    converted = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32)
    assert converted.config.to_dict().get("quantization_config") is None
    tokenizer = AutoTokenizer.from_pretrained(target)
    assert "<|im_start|>assistant" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "x"}], add_generation_prompt=True, tokenize=False
    )
    reference = load_gguf_model(torch.float32)
    answers = [(greedy(converted, tokenizer, p), greedy(reference, tokenizer, p)) for p in PROMPTS]
    for mine, theirs in answers:
        assert mine == theirs
    assert "Paris" in answers[0][0]

"""The trainer computes in bfloat16 only where the hardware has it (trainer/precision.py)."""

from __future__ import annotations

import pytest
import torch

from trainer import precision


@pytest.fixture(autouse=True)
def fresh_choice():
    precision.compute_dtype.cache_clear()
    yield
    precision.compute_dtype.cache_clear()


@pytest.mark.parametrize(("cuda", "cpu_bf16", "expected"), [
    (False, False, torch.float32),  # AVX2 only: bfloat16 is emulated there, 5-20x slower
    (False, True, torch.bfloat16),
    (True, False, torch.bfloat16),
])  # fmt: skip
def test_the_dtype_follows_the_hardware(monkeypatch, cuda, cpu_bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: cpu_bf16)
    assert precision.compute_dtype() == expected
    assert precision.use_bf16() == (expected == torch.bfloat16)

"""The number format the trainer computes in: bfloat16 where the hardware has it, else float32.

The checkpoints are bfloat16 (what vLLM serves). A GPU, and a CPU whose oneDNN has bfloat16
kernels (AVX-512 BF16 / AMX: `torch.ops.mkldnn._is_mkldnn_bf16_supported()`), compute it natively
and train in it. A CPU without them (AVX2 only, as the AMD EPYC this was measured on) emulates
bfloat16, and there it is the slow path by far: the default model's forward pass over 8 x 128
tokens took 15.9 s in bfloat16 against 3.4 s in float32, a LoRA policy's forward and backward 241 s
against 10 s, the reward classifier's 170 s against 10 s (`bench/precision.py` measures the same
passes side by side on any machine). float32 doubles a 135M model's memory (0.5 GiB a copy).
"""

from __future__ import annotations

import functools
import logging

import torch

log = logging.getLogger(__name__)


@functools.cache
def compute_dtype() -> torch.dtype:
    """The dtype models are loaded in for training, sampling and scoring."""
    if torch.cuda.is_available():
        return torch.bfloat16
    native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    dtype = torch.bfloat16 if native else torch.float32
    log.info("this CPU %s bfloat16 kernels: the trainer computes in %s", "has" if native else "lacks", dtype)
    return dtype


def use_bf16() -> bool:
    """What the TRL/transformers trainers' `bf16` flag must say (True would autocast back to the slow path)."""
    return compute_dtype() == torch.bfloat16

"""The number format the trainer computes in: float32 on a CPU, bfloat16 on a GPU.

The checkpoints are bfloat16 (what vLLM serves), but on this machine's CPU (torch 2.13, AVX-512)
bfloat16 is the slow path, not the fast one: the default model's forward pass over 8 x 128 tokens
took 15.9 s in bfloat16 against 3.4 s in float32, and a forward and backward pass of the reward
classifier 170 s against 10 s (`bench/precision.py` measures it side by side). Every round
trained in bfloat16 until this was measured; float32 doubles the memory of a 135M model (0.5 GiB
a copy), which is nothing beside that. On a GPU bfloat16 is the fast path and stays.
"""

from __future__ import annotations

import torch


def compute_dtype() -> torch.dtype:
    """The dtype models are loaded in for training, sampling and scoring."""
    return torch.bfloat16 if torch.cuda.is_available() else torch.float32


def use_bf16() -> bool:
    """What the TRL/transformers trainers' `bf16` flag must say (True would autocast a CPU back to the slow path)."""
    return compute_dtype() == torch.bfloat16

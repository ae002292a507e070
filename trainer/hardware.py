"""Where the trainer computes and in what number format: the `device` setting and bfloat16 where it is native.

`FLYWHEEL_DEVICE` is `auto` (a GPU when torch sees one, else the CPU), `cpu` or `cuda`; every
model the trainer loads (reward model, policy, value model, the algorithms' trainers through
`trainer_args`) goes there, and so do the logprob-agreement check and the gates' sampling.

The checkpoints are bfloat16 (what vLLM serves). A GPU with bfloat16 (Ampere or newer), and a CPU
whose oneDNN has bfloat16 kernels (AVX-512 BF16 / AMX: `torch.ops.mkldnn._is_mkldnn_bf16_supported()`),
compute it natively and train in it. A CPU without them (AVX2 only, as the AMD EPYC this was
measured on) emulates bfloat16, and there it is the slow path by far: the default model's forward
pass over 8 x 128 tokens took 15.9 s in bfloat16 against 3.4 s in float32, a LoRA policy's forward
and backward 241 s against 10 s, the reward classifier's 170 s against 10 s (`bench/precision.py`
measures the same passes side by side on any machine). float32 doubles a 135M model's memory.
"""

from __future__ import annotations

import functools
import logging

import torch

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
_setting = "auto"


class DeviceUnavailable(ValueError):
    """The configured device is not there (`cuda` on a machine where torch sees no GPU)."""


def configure(setting: str) -> torch.device:
    """Take the `device` setting (once, where the trainer's settings are read); return the device chosen."""
    global _setting
    if setting not in DEVICES:
        raise DeviceUnavailable(f"device must be one of {', '.join(DEVICES)}, not {setting!r}")
    if setting == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable("FLYWHEEL_DEVICE=cuda, but torch sees no GPU here (torch.cuda.is_available() is False)")
    _setting = setting
    device.cache_clear()
    compute_dtype.cache_clear()
    return device()


@functools.cache
def device() -> torch.device:
    """The device models train, sample and score on."""
    chosen = torch.device("cuda" if _setting == "cuda" or (_setting == "auto" and torch.cuda.is_available()) else "cpu")
    log.info("the trainer computes on %s (device setting %s)", chosen, _setting)
    return chosen


@functools.cache
def compute_dtype() -> torch.dtype:
    """The dtype models are loaded in for training, sampling and scoring."""
    from flywheel.models import native_bfloat16

    native = native_bfloat16(device().type)
    dtype = torch.bfloat16 if native else torch.float32
    if device().type == "cpu":
        log.info("this CPU %s bfloat16 kernels: the trainer computes in %s", "has" if native else "lacks", dtype)
    return dtype


def use_bf16() -> bool:
    """What the TRL/transformers trainers' `bf16` flag must say (True would autocast back to the slow path)."""
    return compute_dtype() == torch.bfloat16


def trainer_args(seed: int) -> dict:
    """The arguments every TRL trainer of a round shares: device, precision, no checkpoints, no reporters."""
    return {
        "bf16": use_bf16(),
        "use_cpu": device().type == "cpu",
        "save_strategy": "no",
        "report_to": [],
        "disable_tqdm": True,
        "seed": seed,
        "dataloader_num_workers": 0,
    }

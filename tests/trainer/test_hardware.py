"""The trainer's device follows its setting and its precision the hardware (trainer/hardware.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT
from trainer import hardware


@pytest.fixture(autouse=True)
def fresh_choice():
    yield
    hardware._setting = "auto"
    hardware.device.cache_clear()
    hardware.compute_dtype.cache_clear()


def see(monkeypatch, cuda: bool, cpu_bf16: bool = False, gpu_bf16: bool = True) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: gpu_bf16)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: cpu_bf16)


@pytest.mark.parametrize(("cuda", "cpu_bf16", "gpu_bf16", "expected"), [
    (False, False, True, torch.float32),  # AVX2 only: bfloat16 is emulated there, 5-20x slower
    (False, True, True, torch.bfloat16),
    (True, False, True, torch.bfloat16),
    (True, False, False, torch.float32),  # a GPU older than Ampere
])  # fmt: skip
def test_the_dtype_follows_the_hardware(monkeypatch, cuda, cpu_bf16, gpu_bf16, expected):
    see(monkeypatch, cuda, cpu_bf16, gpu_bf16)
    hardware.configure("auto")
    assert hardware.compute_dtype() == expected
    assert hardware.use_bf16() == (expected == torch.bfloat16)


@pytest.mark.parametrize(("setting", "cuda", "expected"), [
    ("auto", True, "cuda"), ("auto", False, "cpu"), ("cpu", True, "cpu"), ("cuda", True, "cuda"),
])  # fmt: skip
def test_the_device_follows_the_setting_and_reaches_every_trainer(monkeypatch, setting, cuda, expected):
    see(monkeypatch, cuda)
    assert hardware.configure(setting).type == expected
    args = hardware.trainer_args(seed=3)
    assert args["use_cpu"] is (expected == "cpu")  # what TRL's RewardConfig, PPOConfig and DPOConfig get
    assert args["seed"] == 3


def test_cpu_forced_on_a_gpu_machine_computes_as_that_cpu_does(monkeypatch):
    see(monkeypatch, cuda=True, cpu_bf16=False)
    hardware.configure("cpu")
    assert hardware.compute_dtype() == torch.float32


def test_cuda_without_a_gpu_is_refused_with_a_message(monkeypatch):
    see(monkeypatch, cuda=False)
    with pytest.raises(hardware.DeviceUnavailable, match="sees no GPU"):
        hardware.configure("cuda")
    assert hardware.device().type == "cpu"  # the earlier choice stands


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_the_cli_refuses_cuda_without_a_gpu_before_any_work(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "FLYWHEEL_DEVICE": "cuda", "FLYWHEEL_DATA_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "flywheel.cli", "train", "--once", "--model", str(tmp_path)],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 1
    assert "FLYWHEEL_DEVICE=cuda, but torch sees no GPU" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "trainer.lock").exists() and not any(tmp_path.iterdir())


def test_a_bad_device_setting_is_a_configuration_error(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "FLYWHEEL_DEVICE": "tpu", "FLYWHEEL_DATA_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "flywheel.cli", "train", "--once"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2
    assert "device" in done.stderr and "Traceback" not in done.stderr

"""The trainer's CLI verbs on bad input and on a small dataset: clear messages, non-zero exits."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT
from tests.trainer.synthetic import traffic
from trainer.dataset import DatasetStore


def run_cli(*args: str, data_dir) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flywheel.cli", *args, "--data-dir", str(data_dir)],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip


def test_export_writes_pairs_and_raw_events(tmp_path):
    store = DatasetStore(tmp_path / "data" / "trainer" / "dataset.sqlite")
    store.ingest(traffic(30))
    store.close()
    result = run_cli("export", "--out", str(tmp_path / "out"), data_dir=tmp_path / "data")
    assert result.returncode == 0, result.stderr
    pairs = [json.loads(line) for line in (tmp_path / "out" / "pairs.jsonl").read_text().splitlines()]
    events = [json.loads(line) for line in (tmp_path / "out" / "events.jsonl").read_text().splitlines()]
    assert len(events) == 60 and {e["kind"] for e in events} == {"completion", "comparison", "thumbs"}
    assert pairs and all(
        p["chosen"].startswith("\n\nHuman: ") and "please" in p["chosen_answer"].lower() for p in pairs
    )
    assert {p["split"] for p in pairs} <= {"train", "heldout"}


def test_export_without_a_dataset_says_so(tmp_path):
    result = run_cli("export", "--out", str(tmp_path / "out"), data_dir=tmp_path / "nothing")
    assert result.returncode == 1
    assert "no trainer dataset" in result.stderr and "Traceback" not in result.stderr


def test_rm_eval_before_any_reward_model_says_what_to_do(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "hi", "chosen": "Hello! How can I help?", "rejected": "Go away."}) + "\n")
    result = run_cli("rm-eval", str(pairs), "--model", str(tmp_path), data_dir=tmp_path / "data")
    assert result.returncode == 1
    assert "no reward model has been trained yet" in result.stderr and "Traceback" not in result.stderr


def test_rm_eval_and_import_refuse_a_file_that_is_missing_or_useless(tmp_path):
    result = run_cli("rm-eval", str(tmp_path / "missing.jsonl"), "--model", str(tmp_path), data_dir=tmp_path)
    assert result.returncode == 1 and "is not a file" in result.stderr
    junk = tmp_path / "junk.jsonl"
    junk.write_text('not json\n{"chosen": 1}\n')
    result = run_cli("rm-eval", str(junk), "--model", str(tmp_path), data_dir=tmp_path)
    assert result.returncode == 1 and "no usable chosen/rejected pairs (2 lines skipped)" in result.stderr
    result = subprocess.run(
        [sys.executable, "-m", "flywheel.cli", "import", str(tmp_path / "missing.jsonl")],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1 and "is not a file" in result.stderr and "Traceback" not in result.stderr

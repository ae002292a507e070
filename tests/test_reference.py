"""The settings and metrics tables in docs/ are the code's: `flywheel reference --check` finds drift."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from flywheel.commands import reference_pages
from flywheel.reference import update
from flywheel.settings import TrainerSettings

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_the_docs_tables_match_the_settings_and_metrics():
    stale = update(reference_pages(DOCS), check=True)
    assert stale == [], f"{[p.name for p in stale]} drifted from the code: run `flywheel reference`"


def test_every_setting_and_metric_is_in_the_docs():
    configuration = (DOCS / "configuration.md").read_text(encoding="utf-8")
    for name in TrainerSettings.model_fields:
        assert f"`FLYWHEEL_{name.upper()}" in configuration
    assert "`FLYWHEEL_PPO__KL_COEF`" in configuration and "`FLYWHEEL_GATES__KL_BUDGET`" in configuration
    metrics = (DOCS / "metrics.md").read_text(encoding="utf-8")
    for name in ("flywheel_serving_policy_swap_seconds", "flywheel_feedback_outbox_depth",
                 "flywheel_trainer_rounds_total"):  # fmt: skip
        assert f"`{name}`" in metrics


def test_the_check_fails_on_a_changed_default_and_writing_mends_it(tmp_path, monkeypatch):
    docs = tmp_path / "docs"
    docs.mkdir()
    for page in ("configuration.md", "metrics.md"):
        shutil.copy(DOCS / page, docs / page)
    monkeypatch.setattr(TrainerSettings.model_fields["torch_threads"], "default", 3)
    assert update(reference_pages(docs), check=True) == [docs / "configuration.md"]
    assert update(reference_pages(docs), check=False) == [docs / "configuration.md"]
    assert "| `FLYWHEEL_TORCH_THREADS` | `3` |" in (docs / "configuration.md").read_text(encoding="utf-8")
    assert update(reference_pages(docs), check=True) == []


def test_the_command_exits_1_on_drift_and_names_the_page(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "configuration.md").write_text((DOCS / "configuration.md").read_text().replace("`ppo`", "`dpo`"))
    shutil.copy(DOCS / "metrics.md", docs / "metrics.md")
    run = subprocess.run([sys.executable, "-m", "flywheel.cli", "reference", "--check", "--docs", str(docs)],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 1 and "configuration.md: out of date" in run.stdout
    (docs / "metrics.md").write_text("# no generated block\n")
    run = subprocess.run([sys.executable, "-m", "flywheel.cli", "reference", "--docs", str(docs)],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 1 and "has no generated block" in run.stderr and "Traceback" not in run.stderr

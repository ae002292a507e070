"""The fault suite, shortened: `bench/faults.py` breaks a running `flywheel up` and nothing accepted is lost.

Every fault but serving's (its engine's restart alone takes about 40 s here; the benchmark run
in docs/ includes it), with short holds between them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.engine]
FAULTS = ("poison", "broker", "feedback", "relay", "trainer", "disk")


def test_every_accepted_event_is_stored_once_through_kills_poison_and_a_full_disk(tmp_path):
    args = [sys.executable, str(ROOT / "bench" / "faults.py"), "--hold-s", "5", "--retry-s", "90",
            "--stack-log", str(tmp_path / "stack.log")]  # fmt: skip
    args += [arg for fault in FAULTS for arg in ("--fault", fault)]
    run = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=800, env=dict(os.environ))
    assert run.stdout, run.stderr[-3000:]
    result = json.loads(run.stdout)
    counts = result["feedback"]
    assert counts["accepted"] > 50 and counts["stored"] == counts["accepted"], result
    assert counts["lost"] == 0 and counts["duplicates"] == 0 and result["unexpected_answers"] == [], result
    assert result["half_published"] == [] and result["versions_published"] >= 1, result
    faults = {fault["fault"]: fault for fault in result["faults"]}
    assert list(faults) == list(FAULTS)
    assert faults["poison"]["trainer_skipped"] >= 4 and faults["poison"]["serving_skipped"] >= 1, faults["poison"]
    assert faults["trainer"]["round_killed"]["outcome"] == "failed", faults["trainer"]
    if os.geteuid() == 0:  # mounting the tmpfs under the outbox needs root
        assert faults["disk"]["refused_503_while_full"] > 0, faults["disk"]
    else:
        assert "skipped" in faults["disk"]
    assert all(fault.get("healthy_after_s", 0) < 120 for fault in result["faults"]), result["faults"]
    if len(os.sched_getaffinity(0)) >= 2:  # flywheel up gave the trainer a core of its own (flywheel/cores.py)
        bound = result["cores"]
        assert bound["trainer"] == [min(os.sched_getaffinity(0))], bound
        assert bound["engine"] and not set(bound["engine"]) & set(bound["trainer"]), bound
    assert result["ok"] and run.returncode == 0, run.stderr[-3000:]

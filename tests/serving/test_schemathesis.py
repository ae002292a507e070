"""Property-based requests generated from the app's OpenAPI schema: no 5xx, ever.

Runs the schemathesis CLI against the live server (its pytest loader does not work with
this pytest), so the test fails exactly when schemathesis finds a server error.
"""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.engine


def run_schemathesis(openapi_url: str, max_examples: int = 40) -> subprocess.CompletedProcess:
    cli = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
    return subprocess.run(
        [
            cli,
            "run",
            openapi_url,
            "--checks",
            "not_a_server_error",
            "--max-examples",
            str(max_examples),
            "--request-timeout",
            "120",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_no_server_errors(serving_server):
    result = run_schemathesis(f"{serving_server.url}/openapi.json")
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", result.stdout)
    assert generated, result.stdout[-3000:]
    assert int(generated.group(1)) >= 100  # it really exercised the API
    assert generated.group(1) == generated.group(2)

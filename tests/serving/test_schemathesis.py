"""Property-based requests generated from the app's OpenAPI schema: no 5xx, ever.

Runs the schemathesis CLI against the live server (its pytest loader does not work with
this pytest), so the test fails exactly when schemathesis finds a server error.
"""

import re

import pytest

from tests.conftest import run_schemathesis

pytestmark = pytest.mark.engine


def test_no_server_errors(serving_server):
    result = run_schemathesis(f"{serving_server.url}/openapi.json")
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", result.stdout)
    assert generated, result.stdout[-3000:]
    assert int(generated.group(1)) >= 100  # it really exercised the API
    assert generated.group(1) == generated.group(2)

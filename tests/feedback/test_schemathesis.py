"""Property-based requests from the feedback API's OpenAPI schema: no 5xx."""

from tests.conftest import run_schemathesis


def test_no_server_errors(feedback_server):
    result = run_schemathesis(f"{feedback_server.url}/openapi.json", max_examples=60)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " generated, " in result.stdout

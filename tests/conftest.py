"""Shared fixtures: the real broker, a tiny random model, running serving, feedback and trainer processes.

Everything starts once per session and is stopped by PID (process groups), so a failed
test run leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from flywheel.broker import Broker
from flywheel.models import build_tiny_model, prepare_default_model
from flywheel.supervisor import wait_http_ready

ROOT = Path(__file__).resolve().parent.parent
# Trainers in tests compute at full speed beside the tests' own services: their rounds are what is
# tested, not how they share the CPU (tests/trainer/test_pacing.py tests the duty cycle itself).
os.environ.setdefault("FLYWHEEL_DUTY_CYCLE", "1")
TEST_SECRET = "test-secret-not-for-production"
TEST_API_KEY = "test-key-alice"
TEST_USER = "alice"
BOB_API_KEY = "test-key-bob"
ADMIN_KEY = "test-admin-key"
ADMIN_METADATA = [("authorization", f"Bearer {ADMIN_KEY}")]  # the trainer's control calls need the admin key

# Trainer settings small enough for a round on the tiny policy in about a minute, large enough to
# learn the rule (tests/trainer/synthetic.py): trainer processes get them as env, hand-built rounds
# as TrainerSettings (tests/trainer/conftest.py's fast_settings).
FAST = {
    "reward": {"epochs": 3, "lora_rank": 0, "learning_rate": 1e-3, "accuracy_floor": 0.9},
    "ppo": {"steps": 8, "batch_size": 16, "response_length": 24, "learning_rate": 1e-3, "kl_coef": 0.05,
            "temperature": 1.0},
    "gates": {"eval_prompts": 16, "kl_budget": 50.0, "length_band": 3.0},
}  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Tests that restart shared parts (the broker) run last, so they cannot disturb others.
    items.sort(key=lambda item: item.get_closest_marker("disruptive") is not None)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "disruptive: restarts shared components; runs last")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def default_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M-Instruct converted from the GGUF shipped on PyPI (about half a minute, once)."""
    return prepare_default_model(tmp_path_factory.mktemp("default-model"), show_progress=False)


@pytest.fixture(scope="session")
def broker() -> Broker:
    broker = Broker(port=free_port()).start()
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def module_broker() -> Broker:
    """A broker of the test module's own: versions announced there reach no other module's replicas."""
    broker = Broker(port=free_port()).start()
    yield broker
    broker.stop()


@dataclass
class RunningServer:
    url: str
    process: subprocess.Popen
    log_path: Path
    env: dict[str, str]

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self, timeout: float = 420) -> None:
        wait_ready(self.url, self.process, self.log_path, timeout)

    def stop(self) -> None:
        stop_process(self.process)


def start_process(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    log = open(log_path, "ab")  # noqa: SIM115 - kept open for the child's lifetime
    return subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)


def stop_process(process: subprocess.Popen, timeout: float = 30) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # the engine's children, whatever happened
    except ProcessLookupError:
        pass
    process.wait()


def wait_ready(url: str, process: subprocess.Popen, log_path: Path, timeout: float = 420) -> None:
    try:
        wait_http_ready(f"{url}/readyz", process, timeout)
    except (RuntimeError, TimeoutError) as exc:
        raise RuntimeError(f"{exc}:\n{log_path.read_text()[-4000:]}") from None


def serving_env(tmp: Path, kafka: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "FLYWHEEL_DATA_DIR": str(tmp / "data"),
            "FLYWHEEL_KAFKA_BOOTSTRAP": kafka,
            "FLYWHEEL_FEEDBACK_TOKEN_SECRET": TEST_SECRET,
            "FLYWHEEL_API_KEYS": f"{TEST_API_KEY}:{TEST_USER},{BOB_API_KEY}:bob",
            "FLYWHEEL_MAX_MODEL_LEN": "512",
            "FLYWHEEL_MAX_TOKENS_LIMIT": "64",
            "FLYWHEEL_DEFAULT_MAX_TOKENS": "16",
            "FLYWHEEL_MAX_N": "4",
            "FLYWHEEL_MAX_BODY_BYTES": "65536",
            "FLYWHEEL_KV_CACHE_GIB": "1",
            "FLYWHEEL_EVENT_BUFFER_SIZE": "1000",
            "FLYWHEEL_GRPC_PORT": str(free_port()),
            "FLYWHEEL_ADMIN_KEY": ADMIN_KEY,
        }
    )
    env.update(extra)
    return env


def start_serving(model: Path, tmp: Path, env: dict[str, str], port: int | None = None, wait: bool = True
                  ) -> RunningServer:  # fmt: skip
    """The one way tests start a serving process (`flywheel serve`, its log in `tmp`).

    `wait=False` returns at once (start other services meanwhile, then call `wait_ready()`).
    """
    port = port or free_port()
    log_path = tmp / f"serving-{port}.log"
    args = [sys.executable, "-m", "flywheel.cli", "serve", "--model", str(model), "--port", str(port)]
    server = RunningServer(f"http://127.0.0.1:{port}", start_process(args, env, log_path), log_path, env)
    if wait:
        try:
            server.wait_ready()
        except BaseException:
            server.stop()
            raise
    return server


@pytest.fixture(scope="session")
def serving_server(tiny_model: Path, broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> RunningServer:
    tmp = tmp_path_factory.mktemp("serving")
    server = start_serving(tiny_model, tmp, serving_env(tmp, broker.bootstrap))
    try:
        yield server
    finally:
        server.stop()


def feedback_env(tmp: Path, kafka: str, **extra: str) -> dict[str, str]:
    env = serving_env(tmp, kafka)
    env.update(
        {
            "FLYWHEEL_ADMIN_KEY": ADMIN_KEY,
            "FLYWHEEL_RATE_LIMIT_PER_S": "1000",
            "FLYWHEEL_RATE_LIMIT_BURST": "5000",
        }
    )
    env.update(extra)
    return env


@dataclass
class FeedbackServer:
    url: str
    grpc_target: str
    process: subprocess.Popen
    log_path: Path
    args: list[str]
    env: dict[str, str]

    def restart(self) -> None:
        self.process = start_process(self.args, self.env, self.log_path)
        wait_ready(self.url, self.process, self.log_path, timeout=60)


def start_feedback(tmp: Path, env: dict[str, str]) -> FeedbackServer:
    port, grpc_port = free_port(), free_port()
    args = [sys.executable, "-m", "flywheel.cli", "feedback", "--port", str(port), "--grpc-port", str(grpc_port)]
    log_path = tmp / "feedback.log"
    process = start_process(args, env, log_path)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, process, log_path, timeout=60)
    return FeedbackServer(url, f"127.0.0.1:{grpc_port}", process, log_path, args, env)


@pytest.fixture(scope="session")
def feedback_server(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> FeedbackServer:
    tmp = tmp_path_factory.mktemp("feedback")
    server = start_feedback(tmp, feedback_env(tmp, broker.bootstrap))
    try:
        yield server
    finally:
        stop_process(server.process)


def fast_env() -> dict[str, str]:
    """FAST as FLYWHEEL_SECTION__FIELD variables, for trainer processes."""
    return {
        f"FLYWHEEL_{section.upper()}__{name.upper()}": str(value)
        for section, fields in FAST.items()
        for name, value in fields.items()
    }


@dataclass
class TrainerProcess:
    url: str
    grpc: str
    process: subprocess.Popen
    log_path: Path
    args: list[str]
    env: dict[str, str]

    def restart(self) -> None:
        self.process = start_process(self.args, self.env, self.log_path)
        wait_ready(self.url, self.process, self.log_path, timeout=120)

    def stop(self) -> None:
        stop_process(self.process)


def start_trainer(tmp: Path, kafka: str, model: Path, port: int | None = None, grpc_port: int | None = None,
                  **extra: str) -> TrainerProcess:  # fmt: skip
    """The one way tests start a trainer process (`flywheel train`, fast settings; `extra`: more env)."""
    port, grpc_port = port or free_port(), grpc_port or free_port()
    env = dict(os.environ)
    env.update(fast_env())
    env.update({"FLYWHEEL_DATA_DIR": str(tmp / "data"), "FLYWHEEL_KAFKA_BOOTSTRAP": kafka,
                "FLYWHEEL_ADMIN_KEY": ADMIN_KEY, **extra})  # fmt: skip
    args = [sys.executable, "-m", "flywheel.cli", "--log-level", "debug", "train", "--model", str(model),
            "--port", str(port), "--grpc-port", str(grpc_port)]  # fmt: skip
    trainer = TrainerProcess(f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}", None, tmp / "trainer.log", args, env)
    trainer.restart()
    return trainer


# -- probing a running service


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    text = httpx.get(f"{url}/metrics").text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def run_schemathesis(openapi_url: str, max_examples: int = 40) -> subprocess.CompletedProcess:
    """The schemathesis CLI against a live server's OpenAPI schema, checking that nothing answers 5xx."""
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

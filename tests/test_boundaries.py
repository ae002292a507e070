"""Import boundaries: the three services share only `flywheel/`, never each other's code.

Serving, feedback and the trainer are deployed apart (k8s/, docker/): an import of one service's
package from another pulls its dependencies (torch and TRL into the feedback service, vLLM into the
trainer) and couples releases. What they share (events, the policy channel, the model store,
settings) lives in `flywheel/`, which imports no service either, except the CLI that starts them.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("serving", "feedback", "trainer")
NOT_SHIPPED = ("tests", "bench")
ENTRY_POINTS = {"flywheel/commands.py"}  # the `flywheel` verbs that start the services


def imported(path: Path) -> set[str]:
    """Top-level packages that a file imports, at module level or inside functions."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def crossings() -> list[str]:
    found = []
    for package in (*SERVICES, "flywheel"):
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if relative.endswith("_pb2.py") or relative.endswith("_pb2_grpc.py"):
                continue
            allowed = set(SERVICES) if relative in ENTRY_POINTS else {package}
            for name in sorted(imported(path) & {*SERVICES, *NOT_SHIPPED}):
                if name not in allowed:
                    found.append(f"{relative} imports {name}")
    return found


def test_no_service_imports_another_service_or_the_tests():
    assert crossings() == []


def test_the_check_sees_imports_inside_functions(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import os\n\ndef f():\n    from trainer.round import run_round\n    import serving.chat\n")
    assert imported(sample) == {"os", "trainer", "serving"}

"""The `flywheel` command: one verb per process or operator action.

Only argument parsing and wiring live here; flags override the FLYWHEEL_* environment.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import ValidationError

from flywheel import commands

log = logging.getLogger("flywheel")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # kafka-python logs every failed connection attempt; our publishers report outages once.
    logging.getLogger("kafka").setLevel(logging.CRITICAL if level != "debug" else logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flywheel", description="A chat service that learns from its users.")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    serve = verbs.add_parser("serve", help="serve the chat API (vLLM in-process)")
    serve.add_argument("--model", help="model directory or id (default: the converted SmolLM2-135M-Instruct)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--grpc-port", dest="grpc_port", type=int, help="PolicyService (roll-out control) port")
    serve.add_argument("--data-dir", dest="data_dir", type=Path)
    serve.add_argument("--kafka-bootstrap", dest="kafka_bootstrap")
    serve.set_defaults(func=commands.cmd_serve)

    feedback = verbs.add_parser("feedback", help="serve the feedback API (REST and gRPC)")
    feedback.add_argument("--host")
    feedback.add_argument("--port", type=int)
    feedback.add_argument("--grpc-port", dest="grpc_port", type=int)
    feedback.add_argument("--data-dir", dest="data_dir", type=Path)
    feedback.add_argument("--kafka-bootstrap", dest="kafka_bootstrap")
    feedback.set_defaults(func=commands.cmd_feedback)

    broker = verbs.add_parser("broker", help="run the local Kafka-protocol broker (Tansu) and create the topics")
    broker.add_argument("--port", type=int, default=9092)
    broker.set_defaults(func=commands.cmd_broker)

    up = verbs.add_parser("up", help="run the whole system on this machine (what `make run` calls)")
    up.add_argument("--model", help="model directory or id (default: the converted SmolLM2-135M-Instruct)")
    up.add_argument("--data-dir", dest="data_dir", type=Path)
    up.add_argument("--serving-port", type=int, default=8000)
    up.add_argument("--broker-port", type=int, default=9092)
    up.add_argument("--serving-grpc-port", type=int, default=50052, help="PolicyService (roll-out control)")
    up.add_argument("--feedback-port", type=int, default=8001)
    up.add_argument("--feedback-grpc-port", type=int, default=50051)
    up.add_argument("--trainer-port", type=int, default=9300)
    up.add_argument("--trainer-grpc-port", type=int, default=50053)
    up.set_defaults(func=commands.cmd_up)

    train = verbs.add_parser("train", help="run the trainer (ingest feedback, train, publish policies)")
    train.add_argument("--once", action="store_true", help="ingest what is on the topics, run one round, exit")
    train.add_argument("--reward-only", dest="reward_only", action="store_true", help="with --once: reward model only")
    train.add_argument("--model", help="base policy (default: the converted SmolLM2-135M-Instruct)")
    train.add_argument("--host")
    train.add_argument("--port", type=int)
    train.add_argument("--grpc-port", dest="grpc_port", type=int)
    train.add_argument("--data-dir", dest="data_dir", type=Path)
    train.add_argument("--kafka-bootstrap", dest="kafka_bootstrap")
    train.set_defaults(func=commands.cmd_train)

    status = verbs.add_parser("status", help="the trainer's status (ingestion, pairs, rounds, versions) as JSON")
    status.add_argument("--trainer", default="127.0.0.1:50053", help="trainer gRPC address")
    status.add_argument("--serving", default="127.0.0.1:50052", help="serving's PolicyService address")
    status.add_argument("--admin-key", help="admin key (default: FLYWHEEL_ADMIN_KEY)")
    status.set_defaults(func=commands.cmd_status)

    policy_help = {
        "versions": "the policy versions in the store and their state on serving, as JSON",
        "promote": "make the canary (or VERSION) the stable version",
        "rollback": "retire the canary; the stable version serves everyone",
        "canary": "set the share of users the canary reaches (0..1)",
    }
    for verb, text in policy_help.items():
        command = verbs.add_parser(verb, help=text)
        if verb == "promote":
            command.add_argument("version", nargs="?", help="version to promote (default: the canary)")
        if verb == "canary":
            command.add_argument("fraction", type=float, help="share of users, 0..1")
        if verb in ("promote", "rollback"):
            command.add_argument("--reason", default="", help="recorded in the RolloutDecision")
        command.add_argument("--serving", default="127.0.0.1:50052", help="serving's PolicyService address")
        command.add_argument("--admin-key", help="admin key (default: FLYWHEEL_ADMIN_KEY)")
        command.set_defaults(func=commands.cmd_policy, verb=verb)

    imp = verbs.add_parser("import", help="import preference pairs (JSONL, HH format) through the feedback service")
    imp.add_argument("file", type=Path)
    imp.add_argument("--feedback-url", default="http://127.0.0.1:8001")
    imp.add_argument("--admin-key", help="the feedback service's admin key (default: FLYWHEEL_ADMIN_KEY)")
    imp.add_argument("--source", default="import", help="label stored with each pair")
    imp.set_defaults(func=commands.cmd_import)

    export = verbs.add_parser("export", help="write the trainer's dataset as JSONL (pairs and raw events)")
    export.add_argument("--out", type=Path, default=Path("export"), help="output directory")
    export.add_argument("--data-dir", dest="data_dir", type=Path)
    export.set_defaults(func=commands.cmd_export)

    merge = verbs.add_parser("merge", help="publish a LoRA version merged into full weights (served without adapter)")
    merge.add_argument("version", help="the LoRA version to merge")
    merge.add_argument("--name", default="", help="the new version's name (default: VERSION-full)")
    merge.add_argument("--no-announce", action="store_true", help="write it to the store only")
    merge.add_argument("--model", help="base model the version was trained on (default: the default model)")
    merge.add_argument("--data-dir", dest="data_dir", type=Path)
    merge.set_defaults(func=commands.cmd_merge)

    rm_eval = verbs.add_parser("rm-eval", help="the current reward model's pairwise accuracy on a JSONL file")
    rm_eval.add_argument("file", type=Path)
    rm_eval.add_argument("--model", help="base policy the reward model was trained on")
    rm_eval.add_argument("--data-dir", dest="data_dir", type=Path)
    rm_eval.set_defaults(func=commands.cmd_rm_eval)

    sim = verbs.add_parser("simulate", help="simulated users with a hidden preference chat and give feedback")
    sim.add_argument("--preference", default="concise", help="concise[:WORDS], question, avoid-word:WORD, polite, "
                     "or your own (prompt, answer) -> [0, 1] as module.path:function or file.py:function")  # fmt: skip
    sim.add_argument("--users", type=int, help="simulated users (default 16, or one per --api-key)")
    sim.add_argument("--turns", type=int, help="turns in all (default 50 when no --duration is given)")
    sim.add_argument("--duration", help="run for this long: seconds, or 15m, 1h")
    sim.add_argument("--concurrency", type=int, default=4, help="turns in flight at once")
    sim.add_argument("--noise", type=float, default=0.1, help="chance a user says the opposite of their preference")
    sim.add_argument("--compare-share", type=float, default=0.25, help="share of turns that compare two answers")
    sim.add_argument("--correction-share", type=float, default=0.0,
                     help="share of thumbs-down turns that also send the user's rewrite (/v1/corrections)")  # fmt: skip
    sim.add_argument("--contrarian-share", type=float, default=0.0,
                     help="share of users who answer against the preference (unreliable raters)")  # fmt: skip
    sim.add_argument("--prompts", type=Path, help="prompts file, one per line (default: the built-in list)")
    sim.add_argument("--serving-url", default="http://127.0.0.1:8000")
    sim.add_argument("--feedback-url", default="http://127.0.0.1:8001")
    sim.add_argument("--api-key", action="append", default=[], help="a user's API key; repeat, one per user")
    sim.add_argument("--max-tokens", type=int, help="max_tokens of each chat request (default: serving's)")
    sim.add_argument("--window", type=float, help="report window in seconds (default: about 12 over the run)")
    sim.add_argument("--out", type=Path, default=Path(".flywheel/simulation"), help="where the report goes")
    sim.add_argument("--seed", type=int, default=0, help="seeds prompts, comparison turns and noise")
    sim.set_defaults(func=commands.cmd_simulate)

    reference = verbs.add_parser("reference", help="write the settings and metrics tables in docs/ from the code")
    reference.add_argument("--docs", type=Path, default=Path(__file__).resolve().parent.parent / "docs")
    reference.add_argument("--check", action="store_true", help="change nothing; exit 1 when a table is out of date")
    reference.set_defaults(func=commands.cmd_reference)

    prepare = verbs.add_parser("prepare-model", help="convert the default model from its GGUF (once)")
    prepare.add_argument("--data-dir", dest="data_dir", type=Path)
    prepare.set_defaults(func=commands.cmd_prepare_model)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ValidationError as exc:
        print(f"flywheel: invalid configuration:\n{exc}", file=sys.stderr)  # noqa: T201
        return 2
    except (ValueError, FileNotFoundError, RuntimeError, TimeoutError) as exc:
        print(f"flywheel: {exc}", file=sys.stderr)  # noqa: T201
        return 1


if __name__ == "__main__":
    sys.exit(main())

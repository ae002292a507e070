"""The `flywheel` command: one verb per process or operator action.

Only argument parsing and wiring live here; flags override the FLYWHEEL_* environment.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import ValidationError

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


def _overrides(args: argparse.Namespace, names: Sequence[str]) -> dict[str, object]:
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from flywheel.settings import ServingSettings
    from serving.app import build_app

    settings = ServingSettings(
        **_overrides(args, ["model", "host", "port", "grpc_port", "data_dir", "kafka_bootstrap"])
    )
    app = build_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info", timeout_graceful_shutdown=10)
    return 0


def cmd_feedback(args: argparse.Namespace) -> int:
    import uvicorn

    from feedback.app import build_app
    from flywheel.settings import FeedbackSettings

    settings = FeedbackSettings(**_overrides(args, ["host", "port", "grpc_port", "data_dir", "kafka_bootstrap"]))
    uvicorn.run(build_app(settings), host=settings.host, port=settings.port, log_level="warning",
                access_log=False, timeout_graceful_shutdown=10)  # fmt: skip
    return 0


def cmd_broker(args: argparse.Namespace) -> int:
    from flywheel.broker import Broker

    broker = Broker(port=args.port).start()
    print(f"broker listening on {broker.bootstrap} (pid {broker.process.pid}); topics created; Ctrl-C stops it")  # noqa: T201

    def _stop(*_: object) -> None:
        raise SystemExit(0)  # unwinds out of wait(); stopping inside the handler would deadlock

    signal.signal(signal.SIGTERM, _stop)
    try:
        return broker.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        broker.stop()


def cmd_prepare_model(args: argparse.Namespace) -> int:
    from flywheel.models import prepare_default_model
    from flywheel.settings import CommonSettings

    settings = CommonSettings(**_overrides(args, ["data_dir"]))
    path = prepare_default_model(settings.models_dir)
    print(path)  # noqa: T201
    return 0


def _trainer_settings(args: argparse.Namespace):
    from flywheel.settings import TrainerSettings

    return TrainerSettings(**_overrides(args, ["model", "host", "port", "grpc_port", "data_dir", "kafka_bootstrap"]))


def cmd_train(args: argparse.Namespace) -> int:
    """The trainer service, or (--once) one round: JSON on stdout, non-zero unless it published or trained."""
    import json

    from flywheel.models import resolve_model
    from trainer import hardware

    settings = _trainer_settings(args)
    hardware.configure(settings.device)  # FLYWHEEL_DEVICE=cuda without a GPU: a message, before any work
    base_model = resolve_model(settings.model, settings.models_dir)
    if settings.nice:
        os.nice(settings.nice)  # users are served first; training takes what serving leaves
    if not args.once:
        import uvicorn

        from trainer.app import build_app
        from trainer.lock import DatasetLock

        probe = DatasetLock(settings.lock_path)  # a clear message now, not a traceback from the lifespan
        probe.acquire()
        probe.release()
        uvicorn.run(build_app(settings, base_model), host=settings.host, port=settings.port, log_level="warning",
                    timeout_graceful_shutdown=10)  # fmt: skip
        return 0
    from trainer.once import SUCCESS, run_once

    result = run_once(settings, base_model, args.reward_only)
    print(json.dumps(result, indent=2))  # noqa: T201
    if result["outcome"] in SUCCESS:
        return 0
    print(f"flywheel: round {result['round']} {result['outcome']}: {result['reason']}", file=sys.stderr)  # noqa: T201
    return 1


def cmd_status(args: argparse.Namespace) -> int:
    import json

    import grpc
    from google.protobuf.json_format import MessageToDict

    from flywheel.v1 import trainer_pb2, trainer_pb2_grpc

    with grpc.insecure_channel(args.trainer) as channel:
        try:
            status = trainer_pb2_grpc.TrainerServiceStub(channel).GetStatus(
                trainer_pb2.TrainerStatusRequest(), timeout=10
            )
        except grpc.RpcError as exc:
            raise RuntimeError(f"the trainer at {args.trainer} did not answer: {exc.details()}") from None
    shown = MessageToDict(status, always_print_fields_with_no_presence=True)
    try:
        shown["policy"] = _policy_call(args, "GetStatus")
    except RuntimeError as exc:
        shown["policy"] = {"error": str(exc)}
    print(json.dumps(shown, indent=2))  # noqa: T201
    return 0


def _policy_call(args: argparse.Namespace, method: str, request=None) -> dict:
    """Call serving's PolicyService with the admin key; the answer as a dict (RuntimeError if it fails)."""
    import grpc
    from google.protobuf.json_format import MessageToDict

    from flywheel.settings import CommonSettings
    from flywheel.v1 import policy_pb2, policy_pb2_grpc

    key = args.admin_key or CommonSettings().admin_key.get_secret_value()
    request = request or getattr(policy_pb2, f"{method}Request")()
    with grpc.insecure_channel(args.serving) as channel:
        try:
            response = getattr(policy_pb2_grpc.PolicyServiceStub(channel), method)(
                request, timeout=120, metadata=[("authorization", f"Bearer {key}")]
            )
        except grpc.RpcError as exc:
            raise RuntimeError(f"serving's PolicyService at {args.serving}: {exc.details()}") from None
    return MessageToDict(response, always_print_fields_with_no_presence=True)


def cmd_policy(args: argparse.Namespace) -> int:
    """versions | promote | rollback | canary: the roll-out control plane on serving."""
    import json

    from flywheel.v1 import policy_pb2

    if args.verb == "versions":
        shown = _policy_call(args, "ListVersions")
    elif args.verb == "promote":
        shown = _policy_call(args, "Promote", policy_pb2.PromoteRequest(version=args.version or "", reason=args.reason))
    elif args.verb == "rollback":
        shown = _policy_call(args, "Rollback", policy_pb2.RollbackRequest(reason=args.reason))
    else:
        if not 0.0 <= args.fraction <= 1.0:
            raise ValueError(f"the canary fraction must be between 0 and 1, not {args.fraction}")
        shown = _policy_call(args, "SetCanaryFraction", policy_pb2.SetCanaryFractionRequest(fraction=args.fraction))
    print(json.dumps(shown, indent=2))  # noqa: T201
    return 0 if shown.get("ok", True) else 1


def cmd_import(args: argparse.Namespace) -> int:
    from feedback.client import import_pairs
    from flywheel.settings import FeedbackSettings

    admin_key = args.admin_key or FeedbackSettings().admin_key.get_secret_value()
    result = import_pairs(args.file, args.feedback_url, admin_key, args.source)
    print(result.summary())  # noqa: T201
    return 0 if result.accepted + result.duplicates > 0 else 1


def cmd_export(args: argparse.Namespace) -> int:
    from trainer.offline import export_dataset

    settings = _trainer_settings(args)
    written = export_dataset(settings, args.out)
    for path, count in written.items():
        print(f"{path}: {count} lines")  # noqa: T201
    return 0


def cmd_rm_eval(args: argparse.Namespace) -> int:
    import json

    from flywheel.models import resolve_model
    from trainer.offline import evaluate_reward_model

    settings = _trainer_settings(args)
    base_model = resolve_model(settings.model, settings.models_dir)
    print(json.dumps(evaluate_reward_model(settings, base_model, args.file), indent=2))  # noqa: T201
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from kafka.errors import KafkaError

    from flywheel.channel import announce
    from flywheel.models import resolve_model
    from flywheel.store import ModelStore, StoreError
    from trainer.merge import merge_version

    settings = _trainer_settings(args)
    store = ModelStore(settings.store_dir)
    try:
        manifest = merge_version(store, args.version, resolve_model(settings.model, settings.models_dir), args.name)
    except StoreError as exc:
        print(f"flywheel: {exc}", file=sys.stderr)  # noqa: T201
        return 1
    print(f"published {manifest.version} (full weights of {args.version}) in {store.root}")  # noqa: T201
    if args.no_announce:
        return 0
    try:
        announce(settings.kafka_bootstrap, manifest)
    except KafkaError as exc:
        note = f"{manifest.version} is in the store but was not announced ({exc}); the trainer announces it on start"
        print(f"flywheel: {note}", file=sys.stderr)  # noqa: T201
        return 1
    print(f"announced {manifest.version}: serving replicas load it as the canary")  # noqa: T201
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from flywheel.settings import ServingSettings
    from flywheel.supervisor import Ports, up

    names = ("broker", "serving", "serving_grpc", "feedback", "feedback_grpc", "trainer", "trainer_grpc")
    ports = Ports(**{name: getattr(args, f"{name}_port") for name in names})
    return up(ServingSettings(**_overrides(args, ["model", "data_dir"])), ports)


def reference_pages(docs: Path) -> dict[Path, str]:
    """The generated tables of docs/configuration.md and docs/metrics.md, from the settings and metrics."""
    from feedback.metrics import FeedbackMetrics
    from flywheel.reference import configuration, metrics
    from flywheel.settings import FeedbackSettings, ServingSettings, TrainerSettings
    from serving.metrics import ServingMetrics
    from trainer.metrics import TrainerMetrics

    services = {"Serving": ServingSettings, "Feedback": FeedbackSettings, "Trainer": TrainerSettings}
    registries = {"Serving": ServingMetrics().registry, "Feedback": FeedbackMetrics().registry,
                  "Trainer": TrainerMetrics().registry}  # fmt: skip
    return {docs / "configuration.md": configuration(services), docs / "metrics.md": metrics(registries)}


def cmd_reference(args: argparse.Namespace) -> int:
    from flywheel.reference import update

    try:
        stale = update(reference_pages(args.docs), check=args.check)
    except (OSError, ValueError) as exc:
        print(f"flywheel: {exc}", file=sys.stderr)  # noqa: T201
        return 1
    for path in stale:
        print(f"{path}: {'out of date' if args.check else 'written'}")  # noqa: T201
    return 1 if stale and args.check else 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from flywheel.simulate.command import simulate
    from flywheel.simulate.runner import SimulationConfig, parse_duration

    config = SimulationConfig(
        serving_url=args.serving_url, feedback_url=args.feedback_url, users=args.users or len(args.api_key) or 16,
        turns=args.turns, duration_s=parse_duration(args.duration) if args.duration else None,
        concurrency=args.concurrency, noise=args.noise, compare_share=args.compare_share, seed=args.seed,
        api_keys=tuple(args.api_key), max_tokens=args.max_tokens,
    )  # fmt: skip
    return simulate(config, args.preference, args.out, args.prompts, args.window)


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
    serve.set_defaults(func=cmd_serve)

    feedback = verbs.add_parser("feedback", help="serve the feedback API (REST and gRPC)")
    feedback.add_argument("--host")
    feedback.add_argument("--port", type=int)
    feedback.add_argument("--grpc-port", dest="grpc_port", type=int)
    feedback.add_argument("--data-dir", dest="data_dir", type=Path)
    feedback.add_argument("--kafka-bootstrap", dest="kafka_bootstrap")
    feedback.set_defaults(func=cmd_feedback)

    broker = verbs.add_parser("broker", help="run the local Kafka-protocol broker (Tansu) and create the topics")
    broker.add_argument("--port", type=int, default=9092)
    broker.set_defaults(func=cmd_broker)

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
    up.set_defaults(func=cmd_up)

    train = verbs.add_parser("train", help="run the trainer (ingest feedback, train, publish policies)")
    train.add_argument("--once", action="store_true", help="ingest what is on the topics, run one round, exit")
    train.add_argument("--reward-only", dest="reward_only", action="store_true", help="with --once: reward model only")
    train.add_argument("--model", help="base policy (default: the converted SmolLM2-135M-Instruct)")
    train.add_argument("--host")
    train.add_argument("--port", type=int)
    train.add_argument("--grpc-port", dest="grpc_port", type=int)
    train.add_argument("--data-dir", dest="data_dir", type=Path)
    train.add_argument("--kafka-bootstrap", dest="kafka_bootstrap")
    train.set_defaults(func=cmd_train)

    status = verbs.add_parser("status", help="the trainer's status (ingestion, pairs, rounds, versions) as JSON")
    status.add_argument("--trainer", default="127.0.0.1:50053", help="trainer gRPC address")
    status.add_argument("--serving", default="127.0.0.1:50052", help="serving's PolicyService address")
    status.add_argument("--admin-key", help="admin key (default: FLYWHEEL_ADMIN_KEY)")
    status.set_defaults(func=cmd_status)

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
        command.set_defaults(func=cmd_policy, verb=verb)

    imp = verbs.add_parser("import", help="import preference pairs (JSONL, HH format) through the feedback service")
    imp.add_argument("file", type=Path)
    imp.add_argument("--feedback-url", default="http://127.0.0.1:8001")
    imp.add_argument("--admin-key", help="the feedback service's admin key (default: FLYWHEEL_ADMIN_KEY)")
    imp.add_argument("--source", default="import", help="label stored with each pair")
    imp.set_defaults(func=cmd_import)

    export = verbs.add_parser("export", help="write the trainer's dataset as JSONL (pairs and raw events)")
    export.add_argument("--out", type=Path, default=Path("export"), help="output directory")
    export.add_argument("--data-dir", dest="data_dir", type=Path)
    export.set_defaults(func=cmd_export)

    merge = verbs.add_parser("merge", help="publish a LoRA version merged into full weights (served without adapter)")
    merge.add_argument("version", help="the LoRA version to merge")
    merge.add_argument("--name", default="", help="the new version's name (default: VERSION-full)")
    merge.add_argument("--no-announce", action="store_true", help="write it to the store only")
    merge.add_argument("--model", help="base model the version was trained on (default: the default model)")
    merge.add_argument("--data-dir", dest="data_dir", type=Path)
    merge.set_defaults(func=cmd_merge)

    rm_eval = verbs.add_parser("rm-eval", help="the current reward model's pairwise accuracy on a JSONL file")
    rm_eval.add_argument("file", type=Path)
    rm_eval.add_argument("--model", help="base policy the reward model was trained on")
    rm_eval.add_argument("--data-dir", dest="data_dir", type=Path)
    rm_eval.set_defaults(func=cmd_rm_eval)

    sim = verbs.add_parser("simulate", help="simulated users with a hidden preference chat and give feedback")
    sim.add_argument("--preference", default="concise", help="concise[:WORDS], question, avoid-word:WORD, polite, "
                     "or your own (prompt, answer) -> [0, 1] as module.path:function or file.py:function")  # fmt: skip
    sim.add_argument("--users", type=int, help="simulated users (default 16, or one per --api-key)")
    sim.add_argument("--turns", type=int, help="turns in all (default 50 when no --duration is given)")
    sim.add_argument("--duration", help="run for this long: seconds, or 15m, 1h")
    sim.add_argument("--concurrency", type=int, default=4, help="turns in flight at once")
    sim.add_argument("--noise", type=float, default=0.1, help="chance a user says the opposite of their preference")
    sim.add_argument("--compare-share", type=float, default=0.25, help="share of turns that compare two answers")
    sim.add_argument("--prompts", type=Path, help="prompts file, one per line (default: the built-in list)")
    sim.add_argument("--serving-url", default="http://127.0.0.1:8000")
    sim.add_argument("--feedback-url", default="http://127.0.0.1:8001")
    sim.add_argument("--api-key", action="append", default=[], help="a user's API key; repeat, one per user")
    sim.add_argument("--max-tokens", type=int, help="max_tokens of each chat request (default: serving's)")
    sim.add_argument("--window", type=float, help="report window in seconds (default: about 12 over the run)")
    sim.add_argument("--out", type=Path, default=Path(".flywheel/simulation"), help="where the report goes")
    sim.add_argument("--seed", type=int, default=0, help="seeds prompts, comparison turns and noise")
    sim.set_defaults(func=cmd_simulate)

    reference = verbs.add_parser("reference", help="write the settings and metrics tables in docs/ from the code")
    reference.add_argument("--docs", type=Path, default=Path(__file__).resolve().parent.parent / "docs")
    reference.add_argument("--check", action="store_true", help="change nothing; exit 1 when a table is out of date")
    reference.set_defaults(func=cmd_reference)

    prepare = verbs.add_parser("prepare-model", help="convert the default model from its GGUF (once)")
    prepare.add_argument("--data-dir", dest="data_dir", type=Path)
    prepare.set_defaults(func=cmd_prepare_model)
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

"""What each `flywheel` verb does (flywheel/cli.py parses the arguments and calls one of these).

The verbs that run a service import it here, and only here: the one place outside a service's
package allowed to (tests/test_boundaries.py).
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from pathlib import Path


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

    broker = Broker(port=args.port, die_with_parent=True).start()  # a killed `flywheel broker` takes Tansu along
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

    from flywheel.cores import pin
    from flywheel.models import resolve_model
    from trainer import hardware
    from trainer.cpu import yield_cpu

    settings = _trainer_settings(args)
    hardware.configure(settings.device)  # FLYWHEEL_DEVICE=cuda without a GPU: a message, before any work
    base_model = resolve_model(settings.model, settings.models_dir)
    yield_cpu("nice", settings.nice, threads=None)  # users are served first (torch's threads: TrainerService)
    pin(settings.trainer_cpus)
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
        correction_share=args.correction_share, contrarian_share=args.contrarian_share,
        api_keys=tuple(args.api_key), max_tokens=args.max_tokens,
    )  # fmt: skip
    return simulate(config, args.preference, args.out, args.prompts, args.window)

"""The simulation's outputs: prompts in, report.json, satisfaction.png and text summaries out."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

from flywheel.simulate.chart import write_chart
from flywheel.simulate.runner import Simulation
from flywheel.simulate.stats import Tally, summarize

REPORT_VERSION = 1
_NICE_WINDOWS_S = (5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600)


def load_prompts(path: Path | None) -> list[str]:
    """One prompt per line; blank lines and lines starting with # are skipped."""
    if path is None:
        text = resources.files("flywheel.simulate").joinpath("prompts.txt").read_text(encoding="utf-8")
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise FileNotFoundError(f"cannot read the prompts file {path}: {exc.strerror or exc}") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise ValueError(f"the prompts file {path} holds no prompts (one per line)")
    return prompts


def auto_window_s(elapsed_s: float) -> float:
    """About a dozen windows over the run, each a round length of time."""
    target = elapsed_s / 12
    return float(next((w for w in _NICE_WINDOWS_S if w >= target), _NICE_WINDOWS_S[-1]))


def duration_text(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes}m{seconds:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def build_report(sim: Simulation, window_s: float | None = None, interrupted: bool = False) -> dict:
    elapsed = sim.elapsed_s()
    window = window_s or auto_window_s(elapsed)
    config = dataclasses.asdict(sim.config)
    config["api_keys"] = len(sim.config.api_keys)  # how many, never the keys themselves
    tally = sim.tally
    stopped = "interrupted" if interrupted else ("refused" if sim.fatal else "done")
    return {
        "report_version": REPORT_VERSION,
        "preference": {"name": sim.preference.name, "description": sim.preference.description},
        "config": config,
        "auth": "api keys" if sim.config.api_keys else "anonymous (one key per simulated user)",
        "run": {
            "run_id": sim.run_id,
            "started_at": datetime.fromtimestamp(sim.started_wall, UTC).isoformat(),
            "elapsed_s": elapsed,
            "window_s": window,
            "stopped": stopped,
            "reason": sim.fatal,
        },
        "turns": {
            "started": tally.turns_started,
            "completed": tally.turns_completed,
            "failed": tally.turns_failed,
            "cut_short": tally.turns_started - tally.turns_completed - tally.turns_failed,
        },
        "errors": {
            "total": sum(tally.errors.values()),
            "by_kind": dict(sorted(tally.errors.items())),
            "samples": dict(sorted(tally.error_samples.items())),
        },
        **summarize(tally, window),
    }


def write_outputs(report: dict, out_dir: Path, tally: Tally | None = None) -> tuple[Path, Path]:
    """report.json, satisfaction.png and, given the tally, feedback.jsonl (one line per event sent)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if tally is not None:
        lines = "".join(json.dumps(dataclasses.asdict(f)) + "\n" for f in sorted(tally.feedback, key=lambda f: f.turn))
        (out_dir / "feedback.jsonl").write_text(lines, encoding="utf-8")
    json_path = out_dir / "report.json"
    partial = json_path.with_suffix(".json.partial")
    partial.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    partial.replace(json_path)  # never a half-written report
    title = f"Simulated users: {report['preference']['name']}"
    png_path = write_chart(report, out_dir / "satisfaction.png", title)
    return json_path, png_path


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def progress_line(sim: Simulation) -> str:
    answers, feedback = list(sim.tally.answers), list(sim.tally.feedback)
    limit, duration = sim.config.turn_limit, sim.config.duration_s
    parts = [f"turn {sim.tally.turns_started}" + (f"/{limit}" if limit else "")]
    clock = duration_text(sim.elapsed_s())
    parts.append(clock + (f"/{duration_text(duration)}" if duration else ""))
    for version in dict.fromkeys(a.version for a in answers):
        seen = [a for a in answers if a.version == version]
        parts.append(f"{version} {sum(a.satisfied for a in seen) / len(seen):.0%} of {len(seen)}")
    parts.append(f"feedback {sum(f.accepted for f in feedback)} accepted")
    parts.append(f"failed turns {sim.tally.turns_failed}")
    return " · ".join(parts)


def summary_text(report: dict, json_path: Path | None = None, png_path: Path | None = None) -> str:
    run, turns = report["run"], report["turns"]
    lines = [
        f"Simulated users with the hidden preference {report['preference']['name']} "
        f"({report['preference']['description']}): {report['config']['users']} users, "
        f"{turns['completed']} of {turns['started']} turns completed in {duration_text(run['elapsed_s'])} "
        f"({run['stopped']}).",
        "",
        f"{'version':<16}{'answers':>8}{'satisfied':>10}{'rate':>8}  {'95% interval':<16}"
        f"{'thumbs up/down':>15}{'comparisons (ties)':>20}{'events':>8}",
    ]
    for row in [*report["versions"], {"version": "all", **report["overall"]}]:
        interval = f"[{_percent(row['ci_low'])}, {_percent(row['ci_high'])}]" if row["answers"] else "-"
        lines.append(
            f"{row['version']:<16}{row['answers']:>8}{row['satisfied']:>10}{_percent(row['rate']):>8}  "
            f"{interval:<16}{row['thumbs_up']:>7}/{row['thumbs_down']:<7}{row['comparisons']:>12} ({row['ties']})"
            f"{'':>4}{row['events_accepted']:>8}"
        )
    for row in report["versus_first"]:
        verdict = "a clear difference" if row["clear"] else "not a clear difference"
        lines.append(
            f"{row['version']} vs {row['baseline']}: {row['difference'] * 100:+.1f} points, 95% interval "
            f"[{row['ci_low'] * 100:+.1f}, {row['ci_high'] * 100:+.1f}]: {verdict}"
        )
    overall = report["overall"]
    lines.append(f"feedback events accepted: {overall['events_accepted']}, not accepted: {overall['events_failed']}")
    errors = report["errors"]
    if errors["total"]:
        lines.append("errors: " + ", ".join(f"{kind} x{count}" for kind, count in errors["by_kind"].items()))
        lines += [f"  {kind}: {message}" for kind, message in errors["samples"].items()]
    else:
        lines.append("errors: none")
    if json_path is not None and png_path is not None:
        lines.append(f"report: {json_path}  chart: {png_path}")
    return "\n".join(lines)

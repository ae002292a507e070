"""The satisfaction chart (PNG): rate per policy version per time window, with Wilson intervals.

Draws on matplotlib's Agg canvas directly (no pyplot), so it touches no global backend state.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def write_chart(summary: dict, path: Path, title: str) -> Path:
    figure = Figure(figsize=(9, 6), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    rates, counts = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    versions = [v["version"] for v in summary["versions"] if v["answers"]]
    colours = {version: f"C{i % 10}" for i, version in enumerate(versions)}

    for version in versions:
        rows = [w for w in summary["windows"] if w["version"] == version and w["answers"]]
        x = [(w["start_s"] + w["end_s"]) / 120 for w in rows]  # window middle, minutes
        total = next(v for v in summary["versions"] if v["version"] == version)
        label = f"{version}: {total['rate']:.0%} of {total['answers']} [{total['ci_low']:.0%}, {total['ci_high']:.0%}]"
        rates.plot(x, [w["rate"] for w in rows], "o-", color=colours[version], label=label)
        rates.fill_between(x, [w["ci_low"] for w in rows], [w["ci_high"] for w in rows],
                           color=colours[version], alpha=0.15, linewidth=0)  # fmt: skip
    overall = [w for w in summary["windows_all"] if w["answers"]]
    if len(versions) > 1 and overall:
        x = [(w["start_s"] + w["end_s"]) / 120 for w in overall]
        rates.plot(x, [w["rate"] for w in overall], "--", color="0.4", label="all versions")

    rates.set_ylim(0, 1)
    rates.set_ylabel("satisfaction rate (95% Wilson interval)")
    rates.yaxis.set_major_formatter(lambda value, _: f"{value:.0%}")
    rates.set_title(title)
    rates.grid(alpha=0.3)
    if versions:
        rates.legend(loc="best", fontsize="small")
    else:
        rates.text(0.5, 0.5, "no answers were received", ha="center", va="center", transform=rates.transAxes)

    width = (summary["windows_all"][0]["end_s"] - summary["windows_all"][0]["start_s"]) / 60 if overall else 1
    bottom = None
    for version in versions:
        rows = {w["window"]: w["answers"] for w in summary["windows"] if w["version"] == version}
        windows = [w["window"] for w in summary["windows_all"]]
        heights = [rows.get(index, 0) for index in windows]
        x = [(w["start_s"] + w["end_s"]) / 120 for w in summary["windows_all"]]
        counts.bar(x, heights, width=width * 0.9, bottom=bottom, color=colours[version])
        bottom = heights if bottom is None else [a + b for a, b in zip(bottom, heights, strict=True)]
    counts.set_ylabel("answers")
    counts.set_xlabel("minutes since the simulation started")
    counts.grid(alpha=0.3, axis="y")

    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path

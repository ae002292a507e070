"""What an AI judge is worth: its verdicts on human preference pairs, asked as the trainer asks (trainer/judge.py).

Each pair (HH format) is put to the judge in both orders. A verdict that names the same answer
both times agrees or disagrees with the people who labelled the pair; two orders that disagree
are a tie (the trainer sends nothing for them), and a tie where both replies named the first
(or the second) place is position bias. Without --url, `flywheel serve` runs the default model
here (no broker) and judges: how good a 135M judge is.

    .venv/bin/python bench/judge.py --pairs 200 --out docs/judge-runs/DATE/smollm2-135m.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.serving import serving_process  # noqa: E402
from flywheel.hh import MalformedDialogue, split_pair  # noqa: E402
from flywheel.training_settings import JudgeSection  # noqa: E402
from trainer.judge import Candidate, Judge, parse_verdict  # noqa: E402

log = logging.getLogger("bench.judge")
HH = ROOT.parent / "shared" / "data" / "hh-rlhf-harmless-1200.jsonl"


def hh_candidates(path: Path, count: int) -> list[Candidate]:
    """The last `count` usable pairs of the file, the people's choice first."""
    found = []
    for line in reversed(path.read_text(encoding="utf-8").splitlines()):
        if len(found) == count:
            break
        row = json.loads(line)
        try:
            prompt, chosen, rejected = split_pair(row["chosen"], row["rejected"])
        except MalformedDialogue:
            continue
        if chosen != rejected:
            messages = tuple((m["role"], m["content"]) for m in prompt)
            found.append(Candidate(str(len(found)), messages, chosen, rejected))
    return found


def judge_all(judge: Judge, pairs: list[Candidate]) -> dict:
    counts: Counter = Counter()
    started = time.monotonic()
    for number, pair in enumerate(pairs, 1):
        verdict = judge.compare(pair)
        forward, backward = (parse_verdict(reply) for reply in verdict.replies)
        if verdict.winner is not None:
            counts["agree" if verdict.winner == 0 else "disagree"] += 1
        elif forward is None or backward is None:
            counts["unparsed"] += 1
        else:
            counts["tie_first" if forward == 0 else "tie_second"] += 1  # the same place named both times
        if number % 20 == 0:
            log.info("%d/%d judged: %s", number, len(pairs), dict(counts))
    seconds = time.monotonic() - started
    decided = counts["agree"] + counts["disagree"]
    return {
        "pairs": len(pairs),
        **{name: counts[name] for name in ("agree", "disagree", "tie_first", "tie_second", "unparsed")},
        "agreement_when_decided": counts["agree"] / decided if decided else None,
        "decided_share": decided / len(pairs) if pairs else None,
        "agreement_overall": counts["agree"] / len(pairs) if pairs else None,  # a tie or no answer counts as a miss
        "seconds_per_pair": seconds / max(len(pairs), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="", help="the judge's OpenAI-compatible API (default: the default model)")
    parser.add_argument("--model", default="", help="the judge's model name (default: the first it lists)")
    parser.add_argument("--data", type=Path, default=HH, help="HH-format pairs (JSONL with chosen and rejected)")
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--constitution", default="", help="a principles file (default: trainer/judge.py's)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("httpx", "httpx2"):  # openai's HTTP client logs every request
        logging.getLogger(name).setLevel(logging.WARNING)
    if not args.data.is_file():
        parser.error(f"{args.data} is not a file")
    pairs = hh_candidates(args.data, args.pairs)
    with contextlib.ExitStack() as stack:
        url, judged_by = args.url, args.model or "the first model the judge lists"
        if not url:
            from flywheel.models import resolve_model

            model = resolve_model("", ROOT / ".flywheel" / "models")
            url = stack.enter_context(serving_process(model, 18766, "bench-judge.log")) + "/v1"
            judged_by = f"the default model ({Path(model).name}) served by flywheel serve"
        judge = Judge(JudgeSection(url=url, model=args.model, constitution=args.constitution))
        result = {"judge": judged_by, "data": args.data.name, **judge_all(judge, pairs)}
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

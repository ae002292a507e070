"""Candidates: policies a round trained but the gate refused, kept so the next round's PPO continues them."""

from __future__ import annotations

import logging
import secrets
import shutil

from flywheel.channel import ADAPTER_KIND
from flywheel.store import Manifest, ModelStore
from trainer.context import CANDIDATE_KEY, RoundContext

log = logging.getLogger(__name__)


def candidates(ctx: RoundContext) -> ModelStore:
    """Trained policies not yet published: the next round's PPO continues from the newest."""
    return ModelStore(ctx.settings.work_dir / "candidates")


def current_candidate(ctx: RoundContext, parent_version: str) -> Manifest | None:
    """The candidate to continue from: one trained from `parent_version` by an earlier round, intact."""
    name = ctx.dataset.get_state(CANDIDATE_KEY)
    if not name:
        return None
    try:
        manifest = candidates(ctx).verify(name)
    except Exception as exc:
        log.warning("candidate %s unusable, starting from the parent: %s", name, exc)
        return None
    if manifest.parent != parent_version:
        log.info("candidate %s was trained from %s, not %s; starting from the parent", name, manifest.parent,
                 parent_version)  # fmt: skip
        return None
    log.info("PPO continues from candidate %s (%d rounds from %s)", name, manifest.extra.get("rounds", 1),
             parent_version)  # fmt: skip
    return manifest


def keep_candidate(
    ctx: RoundContext, policy, parent_version: str, round_id: int, summary: dict, extra: dict | None = None
) -> None:  # fmt: skip
    """Keep a refused round's policy for the next round to continue (None: keep none); older ones go."""
    store, rounds = candidates(ctx), int(summary.get("candidate_rounds", 1))
    name = ""
    if policy is not None:
        name = f"candidate-{round_id:04d}-{secrets.token_hex(2)}"
        store.publish(name, policy.save_pretrained, parent=parent_version, base_model=ctx.base_model, kind=ADAPTER_KIND,
                      extra={"rounds": rounds, "round": round_id, **(extra or {})})  # fmt: skip
        log.info("kept %s: the next round continues from it (%d rounds from %s)", name, rounds, parent_version)
    ctx.dataset.set_state(CANDIDATE_KEY, name)
    for old in store.versions():
        if old.version != name:
            shutil.rmtree(store.path(old.version), ignore_errors=True)

"""The HH preference format (`\\n\\nHuman: …\\n\\nAssistant: …`) as chat messages."""

from __future__ import annotations

import re

_TURN = re.compile(r"\n\n(Human|Assistant): ")
_ROLES = {"Human": "user", "Assistant": "assistant"}


class MalformedDialogue(ValueError):
    """The text is not a dialogue in the HH format."""


def parse_dialogue(text: str) -> list[dict[str, str]]:
    """Split an HH dialogue into [{"role", "content"}] turns."""
    if not text.startswith("\n\nHuman: "):
        raise MalformedDialogue("an HH dialogue starts with '\\n\\nHuman: '")
    parts = _TURN.split(text)[1:]
    messages = [{"role": _ROLES[parts[i]], "content": parts[i + 1].strip()} for i in range(0, len(parts), 2)]
    return messages


def split_pair(chosen: str, rejected: str) -> tuple[list[dict[str, str]], str, str]:
    """(shared prompt messages, chosen answer, rejected answer) of an HH pair.

    The two dialogues must share every turn but the last, which must be the assistant's.
    """
    good, bad = parse_dialogue(chosen), parse_dialogue(rejected)
    if not good or not bad or good[-1]["role"] != "assistant" or bad[-1]["role"] != "assistant":
        raise MalformedDialogue("both dialogues must end with an Assistant turn")
    if good[:-1] != bad[:-1]:
        raise MalformedDialogue("chosen and rejected must share every turn but the last")
    if not good[:-1]:
        raise MalformedDialogue("the dialogue has no prompt before the answer")
    return good[:-1], good[-1]["content"], bad[-1]["content"]

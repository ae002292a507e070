"""Hidden preferences of simulated users: a score in [0, 1] for an answer to a prompt.

A user is satisfied by an answer that scores at least SATISFIED_AT; comparisons prefer the
higher score and call equal scores a tie. Built-in preferences are named by a spec string
(`concise`, `concise:40`, `question`, `avoid-word:WORD`, `polite`); anything else of the form
`module.path:function` or `path/to/file.py:function` loads a user's own scoring function.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from numbers import Real
from pathlib import Path

SATISFIED_AT = 0.5

ScoreFunction = Callable[[str, str], float | bool]
RewriteFunction = Callable[[str, str], str]  # (prompt, answer) -> the answer as this user would have it


class PreferenceError(ValueError):
    """A preference spec that cannot be used, or a scoring function that misbehaved."""


@dataclass(frozen=True)
class Preference:
    """A named scoring rule; `score` checks what a user-supplied function returns.

    `rewrite`, where the preference has one, is how such a user corrects an answer (flywheel
    simulate --correction-share): the built-ins edit the answer toward what they score.
    """

    name: str
    description: str
    function: ScoreFunction
    rewrite: RewriteFunction | None = None

    def score(self, prompt: str, answer: str) -> float:
        try:
            value = self.function(prompt, answer)
        except Exception as exc:
            raise PreferenceError(f"the preference {self.name} raised {type(exc).__name__}: {exc}") from exc
        if isinstance(value, bool):
            return 1.0 if value else 0.0
        if not isinstance(value, Real) or math.isnan(float(value)) or not 0.0 <= float(value) <= 1.0:
            raise PreferenceError(
                f"the preference {self.name} returned {value!r}; it must return a number in [0, 1] or a bool"
            )
        return float(value)

    def satisfied(self, prompt: str, answer: str) -> bool:
        return self.score(prompt, answer) >= SATISFIED_AT

    def correction(self, prompt: str, answer: str) -> str | None:
        """This user's rewrite of `answer`, when they have one and it scores higher; else None."""
        if self.rewrite is None:
            return None
        try:
            text = self.rewrite(prompt, answer)
        except Exception as exc:
            raise PreferenceError(f"the rewrite of {self.name} raised {type(exc).__name__}: {exc}") from exc
        if not isinstance(text, str) or not text.strip() or text == answer:
            return None
        return text if self.score(prompt, text) > self.score(prompt, answer) else None


_WORD = re.compile(r"[\w'\u2019-]+")


def word_count(text: str) -> int:
    return len(_WORD.findall(text))


def concise(max_words: int = 50) -> Preference:
    """Shorter is better: 1 for an empty answer, exactly 0.5 at `max_words`, towards 0 beyond."""
    if max_words < 1:
        raise PreferenceError(f"concise needs a positive word count, got {max_words}")

    def score(_prompt: str, answer: str) -> float:
        return 1.0 / (1.0 + (word_count(answer) / max_words) ** 2)

    def rewrite(_prompt: str, answer: str) -> str:  # the first sentences that fit in half the words
        sentences = re.split(r"(?<=[.!?])\s+", answer.strip())
        kept: list[str] = []
        for sentence in sentences:
            if kept and word_count(" ".join([*kept, sentence])) > max_words // 2:
                break
            kept.append(sentence)
        text = " ".join(kept)
        if word_count(text) > max_words // 2:  # one long sentence: cut it
            text = " ".join(text.split()[: max(1, max_words // 2)])
        return text

    return Preference(f"concise:{max_words}", f"prefers short answers, satisfied at {max_words} words or fewer", score,
                      rewrite)  # fmt: skip


def question() -> Preference:
    """Answers that end with a question: 1; a question somewhere else: 0.25; none: 0."""

    def score(_prompt: str, answer: str) -> float:
        text = answer.rstrip(" \t\n\"')*_\u2019\u201d")
        if text.endswith("?"):
            return 1.0
        return 0.25 if "?" in text else 0.0

    def rewrite(_prompt: str, answer: str) -> str:
        return answer.rstrip() + " Would you like to know more?"

    return Preference("question", "prefers answers that end with a question", score, rewrite)


def avoid_word(word: str) -> Preference:
    """No occurrence of the word (case-insensitive, whole word): 1; one: 0.4; k: 0.4 / k."""
    word = word.strip()
    if not word:
        raise PreferenceError("avoid-word needs a word: avoid-word:WORD")
    pattern = re.compile(rf"(?<!\w){re.escape(word)}(?!\w)", re.IGNORECASE)

    def score(_prompt: str, answer: str) -> float:
        count = len(pattern.findall(answer))
        return 1.0 if count == 0 else 0.4 / count

    def rewrite(_prompt: str, answer: str) -> str:
        return re.sub(r"[ \t]{2,}", " ", pattern.sub("", answer)).strip()

    return Preference(f"avoid-word:{word}", f"dislikes the word {word!r}", score, rewrite)


_POLITE = re.compile(r"\b(please|thank you|thanks)\b", re.IGNORECASE)


def polite() -> Preference:
    """'please', 'thank you' or 'thanks': none 0, once 0.75, twice or more 1."""

    def score(_prompt: str, answer: str) -> float:
        count = len(_POLITE.findall(answer))
        return 0.0 if count == 0 else (0.75 if count == 1 else 1.0)

    def rewrite(_prompt: str, answer: str) -> str:
        return f"Thank you for asking! {answer.strip()} Please ask if you would like more."

    return Preference("polite", "likes answers that say please or thank you", score, rewrite)


BUILT_IN = {
    "concise": "concise[:WORDS]: prefers answers of at most WORDS words (default 50)",
    "question": "question: prefers answers that end with a question",
    "avoid-word": "avoid-word:WORD: dislikes answers that use WORD",
    "polite": "polite: likes answers that say please or thank you",
}


def load_preference(spec: str) -> Preference:
    """A built-in preference by name (with its argument), or a user's function by location."""
    spec = spec.strip()
    name, sep, argument = spec.partition(":")
    if name == "concise":
        if not sep:
            return concise()
        try:
            max_words = int(argument)
        except ValueError:
            raise PreferenceError(f"concise takes a word count (concise:40), got {argument!r}") from None
        return concise(max_words)
    if name == "avoid-word":
        return avoid_word(argument)
    if name in ("question", "polite"):
        if sep:
            raise PreferenceError(f"{name} takes no argument, got {spec!r}")
        return question() if name == "question" else polite()
    if not sep:
        known = "; ".join(BUILT_IN.values())
        raise PreferenceError(
            f"unknown preference {spec!r}. Built in: {known}; or your own function as "
            "module.path:function or path/to/file.py:function"
        )
    return load_function(spec)


def load_function(spec: str) -> Preference:
    """Load `module.path:function` or `path/to/file.py:function` and check it takes two arguments."""
    location, _, attribute = spec.rpartition(":")
    if not location or not attribute:
        raise PreferenceError(f"{spec!r} is not module.path:function or path/to/file.py:function")
    module = _load_file(Path(location)) if location.endswith(".py") else _import(location)
    function = getattr(module, attribute, None)
    if function is None:
        raise PreferenceError(f"{location} has no attribute {attribute!r}")
    if not callable(function):
        raise PreferenceError(f"{location}:{attribute} is not callable")
    try:
        inspect.signature(function).bind("prompt", "answer")
    except TypeError:
        raise PreferenceError(f"{location}:{attribute} must take two arguments (prompt, answer)") from None
    except ValueError:
        pass  # a builtin without a signature: checked when it is first called
    doc = inspect.getdoc(function)
    description = doc.splitlines()[0] if doc else f"user-supplied function {spec}"
    rewrite = getattr(function, "rewrite", None)  # a user's own corrections: function.rewrite(prompt, answer)
    return Preference(spec, description, function, rewrite if callable(rewrite) else None)


def _import(name: str):
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise PreferenceError(f"cannot import {name}: {exc}") from None
    except Exception as exc:
        raise PreferenceError(f"importing {name} failed: {type(exc).__name__}: {exc}") from None


def _load_file(path: Path):
    if not path.is_file():
        raise PreferenceError(f"no such file: {path}")
    name = f"flywheel_user_preference_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise PreferenceError(f"cannot load {path} as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise PreferenceError(f"loading {path} failed: {type(exc).__name__}: {exc}") from None
    return module

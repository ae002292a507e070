"""What the AI judge and the rater assessment read from the dataset and keep in it.

Mixed into DatasetStore (trainer/dataset.py), like the ledger and the roll-out signals: the
served answers the judge may compare, the pairs it has seen, each user's recent judgements and
the raters table that says who is left out.
"""

from __future__ import annotations

import json
import time

from trainer.pairs import TIE
from trainer.records import Judgement, messages_from_json


class JudgementStore:
    """Queries on DatasetStore's completions, ratings, comparisons, judgements and raters tables."""

    def answers_by_prompt(self, recent: int = 2_000) -> list[tuple[str, tuple[tuple[str, str], ...], list[str]]]:
        """(prompt_key, messages, distinct answers served) of the `recent` newest completions' prompts, newest first."""
        rows = self._query("SELECT prompt_key, messages, choices FROM completions ORDER BY seq DESC LIMIT ?", (recent,))
        found: dict[str, tuple[tuple[tuple[str, str], ...], list[str]]] = {}
        for key, messages, choices in rows:
            texts = found.setdefault(key, (messages_from_json(messages), []))[1]
            texts.extend(text for text in json.loads(choices) if text.strip() and text not in texts)
        return [(key, messages, texts) for key, (messages, texts) in found.items()]

    def judged_digests(self) -> set[str]:
        return {digest for (digest,) in self._query("SELECT digest FROM judgements")}

    def save_judgements(self, verdicts: list[tuple[str, str]]) -> None:
        """(pair digest, verdict) of pairs the AI judge has seen, so none is asked again."""
        now = time.time()
        with self._transaction() as db:
            db.executemany("INSERT OR REPLACE INTO judgements VALUES (?, ?, ?)", [(d, v, now) for d, v in verdicts])

    def rater_judgements(self, per_user: int) -> dict[str, list[Judgement]]:
        """Each user's most recent `per_user` judgements, better answer first, from every user (left out or not).

        A comparison's ranking gives its first two places (a tie gives nothing); a user's thumbs give
        each up answer against one of their down answers, taken in turn (answers to different prompts:
        what the user liked against what they did not). The reads stop at each user's newest
        comparisons and newest ups and downs, so a round's cost does not grow with the history.
        """
        found: dict[str, list[Judgement]] = {}
        rows = self._query(
            "SELECT user_id, messages, choices, ranking, seq FROM (SELECT k.user_id, c.messages, c.choices,"
            " k.ranking, k.seq, ROW_NUMBER() OVER (PARTITION BY k.user_id ORDER BY k.seq DESC) AS place"
            " FROM comparisons k JOIN completions c USING (completion_id) WHERE k.strength != ?)"
            " WHERE place <= ? ORDER BY seq DESC",
            (TIE, 2 * per_user),  # twice: some are unusable below (two equal answers)
        )
        for user, messages, choices, ranking, seq in rows:
            texts, order = json.loads(choices), json.loads(ranking)
            usable = len(order) >= 2 and max(order[:2]) < len(texts)
            usable = usable and texts[order[0]] != texts[order[1]]  # two equal answers: no judgement to score
            if usable and len(found.get(user, ())) < per_user:
                turns = messages_from_json(messages)
                found.setdefault(user, []).append(Judgement(turns, texts[order[0]], turns, texts[order[1]], seq))
        rated: dict[str, tuple[list, list]] = {}
        rows = self._query(
            "SELECT user_id, messages, choices, choice_index, rating, seq FROM (SELECT r.user_id, c.messages,"
            " c.choices, r.choice_index, r.rating, r.seq, ROW_NUMBER() OVER"
            " (PARTITION BY r.user_id, r.rating > 0 ORDER BY r.seq DESC) AS place"
            " FROM ratings r JOIN completions c USING (completion_id)) WHERE place <= ? ORDER BY seq DESC",
            (per_user,),
        )
        for user, messages, choices, index, rating, seq in rows:
            texts = json.loads(choices)
            if 0 <= index < len(texts):
                rated.setdefault(user, ([], []))[0 if rating > 0 else 1].append((messages_from_json(messages),
                                                                                texts[index], seq))  # fmt: skip
        for user, (ups, downs) in rated.items():
            for i in range(min(max(len(ups), len(downs)), per_user) if ups and downs else 0):
                (good_turns, good, seq_a), (bad_turns, bad, seq_b) = ups[i % len(ups)], downs[i % len(downs)]
                if (good_turns, good) != (bad_turns, bad):
                    found.setdefault(user, []).append(Judgement(good_turns, good, bad_turns, bad, max(seq_a, seq_b)))
        return {user: sorted(items, key=lambda j: -j.seq)[:per_user] for user, items in found.items()}

    def save_raters(self, rows: list[tuple[str, int, float, bool]]) -> None:
        """(user, judgements, agreement, excluded) of every user assessed; an excluded user's feedback is not read."""
        now = time.time()
        with self._transaction() as db:
            db.execute("DELETE FROM raters")
            rows = [(user, n, agreement, int(excluded), now) for user, n, agreement, excluded in rows]
            db.executemany("INSERT INTO raters VALUES (?, ?, ?, ?, ?)", rows)

    def raters(self) -> list[tuple[str, int, float, bool]]:
        rows = self._query("SELECT user_id, judgements, agreement, excluded FROM raters ORDER BY agreement")
        return [(user, n, agreement, bool(excluded)) for user, n, agreement, excluded in rows]

"""Feedback API request and response models (REST); gRPC messages map onto the same inputs."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from flywheel.events import MAX_PAIR_PROMPT_CHARS

Id = Annotated[str, Field(min_length=1, max_length=200)]
Token = Annotated[str, Field(min_length=1, max_length=2_000)]
Index = Annotated[int, Field(ge=0, le=1_000)]
IdempotencyKey = Annotated[
    str | None,
    Field(
        min_length=1,
        max_length=128,
        description="One per submission, the same on its retries: a retry is then answered with the first "
        "event. Without one, every request is a new event (the latest rating wins downstream).",
    ),
]


class FeedbackCreate(BaseModel):
    """A rating of one choice of one completion."""

    model_config = ConfigDict(extra="forbid")
    completion_id: Id
    choice_index: Index
    rating: Literal["up", "down"]
    feedback_token: Token
    comment: Annotated[str, Field(max_length=100_000)] | None = None
    dimensions: dict[Annotated[str, Field(max_length=64)], Annotated[int, Field(ge=1, le=5)]] | None = None
    flags: Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=16)] | None = None
    idempotency_key: IdempotencyKey = None


class CorrectionCreate(BaseModel):
    """A user's rewrite of one choice: the answer they wanted instead (a demonstration and a pair)."""

    model_config = ConfigDict(extra="forbid")
    completion_id: Id
    choice_index: Index
    feedback_token: Token
    text: Annotated[str, Field(min_length=1, max_length=100_000, description="The rewritten answer.")]
    comment: Annotated[str, Field(max_length=100_000)] | None = None
    idempotency_key: IdempotencyKey = None


Strength = Literal["much_better", "better", "slightly_better", "tie"]


class ComparisonCreate(BaseModel):
    """Which of two or more choices of one completion is better, or a full ranking (best first)."""

    model_config = ConfigDict(extra="forbid")
    completion_id: Id
    feedback_tokens: Annotated[list[Token], Field(min_length=2, max_length=16)]
    preferred_choice_index: Index | None = None
    rejected_choice_index: Index | None = None
    ranking: Annotated[list[Index], Field(min_length=2, max_length=16)] | None = None
    strength: Strength | None = None
    idempotency_key: IdempotencyKey = None


class FeedbackAccepted(BaseModel):
    event_id: str
    idempotency_key: str
    duplicate: bool = Field(description="True when this was a retry of an event already accepted.")


class PromptMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: Annotated[str, Field(max_length=50_000)]


class PreferencePair(BaseModel):
    """One offline preference pair: HH-format dialogues, a prompt with two answers, or the prompt's
    messages with two answers (an AI judge's verdict on a served conversation: trainer/judge.py).

    Every field is bounded (one pair's event holds at most ~450,000 characters); an event the
    broker still refuses as too large is dead-lettered by the relay, not retried forever.
    """

    model_config = ConfigDict(extra="ignore")
    chosen: Annotated[str, Field(min_length=1, max_length=200_000)]
    rejected: Annotated[str, Field(min_length=1, max_length=200_000)]
    prompt: Annotated[str, Field(min_length=1, max_length=MAX_PAIR_PROMPT_CHARS)] | None = None
    messages: Annotated[list[PromptMessage], Field(min_length=1, max_length=64)] | None = None

    @model_validator(mode="after")
    def _bounded_messages(self) -> PreferencePair:
        if self.messages is not None and sum(len(m.content) for m in self.messages) > MAX_PAIR_PROMPT_CHARS:
            raise ValueError(f"messages hold more than {MAX_PAIR_PROMPT_CHARS} characters in all")
        return self


class PreferenceImport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pairs: Annotated[list[PreferencePair], Field(min_length=1, max_length=100_000)]
    source: Annotated[str, Field(max_length=200)] = "import"


class ImportAccepted(BaseModel):
    accepted: int
    duplicates: int
    rejected: list[dict] = Field(default_factory=list)

"""All configuration, read from the environment (prefix FLYWHEEL_) in this module only.

One settings class per service; secrets that still hold the local placeholder are refused at
start-up unless the service runs in the explicit local mode (`FLYWHEEL_ENV=local`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_SECRET = "change-me-local-only"

TOPIC_COMPLETIONS = "flywheel.completions.v1"
TOPIC_FEEDBACK = "flywheel.feedback.v1"
TOPIC_POLICY = "flywheel.policy.v1"
TOPICS = (TOPIC_COMPLETIONS, TOPIC_FEEDBACK, TOPIC_POLICY)


class PlaceholderSecretError(ValueError):
    """A secret still holds the placeholder outside the local environment."""


class CommonSettings(BaseSettings):
    """Settings every process shares: where data lives, the broker, the shared secrets."""

    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_", extra="ignore")

    env: Literal["local", "production"] = Field(
        "local", description="'local' allows placeholder secrets and anonymous users."
    )
    data_dir: Path = Field(Path(".flywheel"), description="Converted models, store, SQLite, logs.")
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers.")
    feedback_token_secret: str = Field(PLACEHOLDER_SECRET, description="HMAC key shared by serving and feedback.")
    api_keys: str = Field(
        "",
        description="Comma-separated 'key:user_id' pairs; a Bearer key maps to its user id.",
    )
    allow_anonymous: bool = Field(True, description="Serve requests without a known API key under an anonymous id.")

    @model_validator(mode="after")
    def _check_placeholder_secrets(self) -> CommonSettings:
        if self.env != "local" and self.feedback_token_secret == PLACEHOLDER_SECRET:
            raise PlaceholderSecretError(
                "FLYWHEEL_FEEDBACK_TOKEN_SECRET still holds the placeholder; set a real secret "
                "(it is only allowed with FLYWHEEL_ENV=local)"
            )
        return self

    def api_key_map(self) -> dict[str, str]:
        """Parse `api_keys` into {key: user_id}; malformed entries are a start-up error."""
        mapping: dict[str, str] = {}
        for entry in filter(None, (part.strip() for part in self.api_keys.split(","))):
            key, sep, user = entry.partition(":")
            if not sep or not key or not user:
                raise ValueError(f"FLYWHEEL_API_KEYS entry {entry!r} is not 'key:user_id'")
            mapping[key] = user
        return mapping

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def store_dir(self) -> Path:
        return self.data_dir / "store"

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"


class ServingSettings(CommonSettings):
    """The chat path: engine, limits and the completion-event buffer."""

    model: str = Field("", description="Model directory or id; empty: the converted default.")
    served_model_name: str = Field("flywheel", description="Model name shown in /v1/models.")
    host: str = "127.0.0.1"
    port: int = 8000
    max_model_len: int = Field(2048, description="Context window the engine reserves.")
    max_n: int = Field(8, description="Largest n a request may ask for.")
    max_tokens_limit: int = Field(1024, description="Largest max_tokens a request may ask for.")
    default_max_tokens: int = Field(256, description="max_tokens when a request gives none.")
    max_top_logprobs: int = Field(20, description="Largest top_logprobs a request may ask for.")
    max_body_bytes: int = Field(1_000_000, description="Largest request body accepted.")
    max_messages: int = Field(256, description="Most messages one request may carry.")
    enforce_eager: bool = Field(True, description="Skip torch.compile (CPU LoRA needs eager).")
    enable_lora: bool = True
    max_loras: int = 4
    max_lora_rank: int = 16
    kv_cache_gib: int = Field(2, description="KV cache size on CPU, GiB.")
    cpu_reserved_cores: int | None = Field(
        0, description="Cores vLLM-CPU keeps from compute for the front end (None: vLLM's default, 1)."
    )
    preload_iomp: bool = Field(True, description="Run the CPU engine with Intel's OpenMP runtime.")
    gpu_memory_utilization: float = 0.85
    max_num_seqs: int = 32
    policy_version: str = Field("base", description="Version name of the base policy.")
    event_buffer_size: int = Field(10_000, description="Completion events held while Kafka is down.")


class FeedbackSettings(CommonSettings):
    """The feedback path: API limits, the durable outbox and its relay to Kafka."""

    host: str = "127.0.0.1"
    port: int = 8001
    grpc_port: int = 50051
    admin_key: str = Field(PLACEHOLDER_SECRET, description="Bearer key for the admin (import) routes.")
    max_body_bytes: int = Field(65_536, description="Largest feedback request body.")
    max_import_body_bytes: int = Field(50_000_000, description="Largest preference-import body.")
    comment_max_chars: int = Field(2_000, description="Longest comment accepted.")
    dimensions: str = Field("helpfulness,accuracy,safety,tone", description="Dimension names, 1..5 scores.")
    flags: str = Field("harmful,incorrect,off_topic,unsafe,other", description="Flags a user may raise.")
    rate_limit_per_s: float = Field(50.0, description="Sustained feedback events per user per second.")
    rate_limit_burst: int = Field(200, description="Events a user may send in one burst.")
    outbox_max_pending: int = Field(100_000, description="Unpublished events held before answering 503.")
    outbox_retention_hours: float = Field(24.0, description="How long published events (and keys) are kept.")
    relay_batch: int = Field(500, description="Events per Kafka batch.")
    max_bulk_events: int = Field(100_000, description="Most events one gRPC BulkSubmit stream may carry.")

    @model_validator(mode="after")
    def _check_admin_key(self) -> FeedbackSettings:
        if self.env != "local" and self.admin_key == PLACEHOLDER_SECRET:
            raise PlaceholderSecretError(
                "FLYWHEEL_ADMIN_KEY still holds the placeholder; set a real key (only FLYWHEEL_ENV=local allows it)"
            )
        return self

    @property
    def outbox_path(self) -> Path:
        return self.data_dir / "feedback" / "outbox.sqlite"

    def dimension_names(self) -> set[str]:
        return {name.strip() for name in self.dimensions.split(",") if name.strip()}

    def flag_names(self) -> set[str]:
        return {name.strip() for name in self.flags.split(",") if name.strip()}

"""All configuration, read from the environment (prefix FLYWHEEL_) in this module only.

One settings class per service; secrets that still hold the local placeholder are refused at
start-up unless the service runs in the explicit local mode (`FLYWHEEL_ENV=local`). The trainer's
sections (reward model, algorithms, gates) are plain models in flywheel/training_settings.py.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from flywheel.training_settings import (
    DPOSection,
    GateSection,
    GRPOSection,
    JudgeSection,
    KTOSection,
    PPOSection,
    RatersSection,
    RewardSection,
    RolloutSection,
    RoundTriggerSection,
    SFTSection,
)

PLACEHOLDER_SECRET = "change-me-local-only"
CPU_LIST = r"^(auto|\d+(-\d+)?(,\d+(-\d+)?)*)?$"  # auto, or core ids and ranges: 0 / 1-3,5

TOPIC_COMPLETIONS = "flywheel.completions.v1"
TOPIC_FEEDBACK = "flywheel.feedback.v1"
TOPIC_POLICY = "flywheel.policy.v1"
TOPICS = (TOPIC_COMPLETIONS, TOPIC_FEEDBACK, TOPIC_POLICY)


class PlaceholderSecretError(ValueError):
    """A secret still holds the placeholder outside the local environment."""


def is_loopback(host: str) -> bool:
    """Whether a listen address reaches this machine only: 127.0.0.0/8, ::1 or "localhost".

    Anything else (0.0.0.0, "", "::", a name or an interface's address) may be reachable from
    the network.
    """
    name = host.strip().removeprefix("[").removesuffix("]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def refuse_public_placeholder_admin_key(host: str, admin_key: SecretStr) -> None:
    """For each service's settings validator: the placeholder admin key is public knowledge, so only
    a service listening on loopback may keep it, even with FLYWHEEL_ENV=local."""
    if admin_key.get_secret_value() == PLACEHOLDER_SECRET and not is_loopback(host):
        raise PlaceholderSecretError(
            f"FLYWHEEL_ADMIN_KEY still holds the placeholder and the service listens on {host!r}, beyond "
            "this machine; set a real key (the placeholder is only allowed on 127.0.0.1 or localhost)"
        )


class CommonSettings(BaseSettings):
    """Settings every process shares: where data lives, the broker, the shared secrets."""

    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_", extra="ignore")

    env: Literal["local", "production"] = Field(
        "local", description="'local' allows placeholder secrets and anonymous users."
    )
    data_dir: Path = Field(Path(".flywheel"), description="Converted models, store, SQLite, logs.")
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers.")
    feedback_token_secret: SecretStr = Field(
        SecretStr(PLACEHOLDER_SECRET), description="HMAC key shared by serving and feedback."
    )
    api_keys: SecretStr = Field(
        "",
        description="Comma-separated 'key:user_id' pairs; a Bearer key maps to its user id.",
    )
    allow_anonymous: bool | None = Field(
        None,
        description="Serve requests without a known API key under an anonymous id (default: only with env=local).",
    )
    admin_key: SecretStr = Field(
        SecretStr(PLACEHOLDER_SECRET), description="Bearer key for admin routes and the control plane."
    )
    create_topics: bool = Field(
        True, description="Create missing topics (the local broker); off where the cluster's Kafka owns them."
    )
    canary_fraction: float = Field(
        0.5, ge=0.0, le=1.0, description="Share of users a new version reaches as canary (until a decision sets it)."
    )
    feedback_token_ttl_s: float = Field(
        7 * 86_400, ge=0, description="How long after its answer a feedback token is accepted, seconds (0: forever)."
    )

    @model_validator(mode="after")
    def _anonymous_only_locally_by_default(self) -> CommonSettings:
        if self.allow_anonymous is None:
            self.allow_anonymous = self.env == "local"
        return self

    @model_validator(mode="after")
    def _check_placeholder_secrets(self) -> CommonSettings:
        if self.env != "local" and self.feedback_token_secret.get_secret_value() == PLACEHOLDER_SECRET:
            raise PlaceholderSecretError(
                "FLYWHEEL_FEEDBACK_TOKEN_SECRET still holds the placeholder; set a real secret "
                "(it is only allowed with FLYWHEEL_ENV=local)"
            )
        if self.env != "local" and self.admin_key.get_secret_value() == PLACEHOLDER_SECRET:
            raise PlaceholderSecretError(
                "FLYWHEEL_ADMIN_KEY still holds the placeholder; set a real key (only FLYWHEEL_ENV=local allows it)"
            )
        return self

    def api_key_map(self) -> dict[str, str]:
        """Parse `api_keys` into {key: user_id}; malformed entries are a start-up error."""
        mapping: dict[str, str] = {}
        for entry in filter(None, (part.strip() for part in self.api_keys.get_secret_value().split(","))):
            key, sep, user = entry.partition(":")
            if not sep or not key or not user:
                # The entry holds a key: name its position, never its text.
                raise ValueError(f"FLYWHEEL_API_KEYS entry {len(mapping) + 1} is not 'key:user_id'")
            mapping[key] = user
        return mapping

    def describe(self) -> str:
        """The resolved configuration as JSON for the start-up log; every secret shows as '**********'."""
        return self.model_dump_json()

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
    tool_call_parser: str = Field(
        "", description="vLLM tool parser of the served model's family (e.g. hermes) for tool_choice auto; empty: none."
    )
    host: str = Field("127.0.0.1", description="Address the chat API listens on.")
    port: int = Field(8000, description="Port of the chat API, the pages and /metrics.")
    max_model_len: int = Field(2048, description="Context window the engine reserves.")
    max_n: int = Field(8, description="Largest n a request may ask for.")
    max_tokens_limit: int = Field(1024, description="Largest max_tokens a request may ask for.")
    default_max_tokens: int = Field(256, description="max_tokens when a request gives none.")
    max_top_logprobs: int = Field(20, description="Largest top_logprobs a request may ask for.")
    compact_json: bool = Field(
        True, description="response_format JSON without free whitespace (small models fill answers with spaces)."
    )
    max_body_bytes: int = Field(1_000_000, description="Largest request body accepted.")
    max_messages: int = Field(256, description="Most messages one request may carry.")
    max_queued_requests: int = Field(
        64, ge=1, description="Chat requests in the engine at once (running and queued); more get 503 + Retry-After."
    )
    chat_rate_limit_per_s: float = Field(10.0, gt=0, description="Sustained chat requests per user per second.")
    chat_rate_limit_burst: int = Field(100, ge=1, description="Chat requests a user may send in one burst.")
    chat_tokens_per_s: float = Field(
        2_000.0, gt=0, description="Sustained tokens (max_tokens x n asked for) per user per second."
    )
    chat_tokens_burst: int = Field(50_000, ge=1, description="Tokens a user may ask for in one burst.")
    enforce_eager: bool = Field(True, description="Skip torch.compile (CPU LoRA needs eager).")
    enable_lora: bool = Field(True, description="Serve LoRA versions (adapters); off: only the base and merged ones.")
    max_loras: int = Field(4, description="Adapters the engine holds in one batch.")
    max_lora_rank: int = Field(16, description="Largest adapter rank the engine takes; a version above it is refused.")
    engine_dtype: Literal["auto", "bfloat16", "float32", "float16"] = Field(
        "auto",
        description="The engine's number format; auto: bfloat16 on a GPU or a CPU with native bfloat16, else float32.",
    )
    kv_cache_gib: int = Field(2, description="KV cache size on CPU, GiB.")
    cpu_reserved_cores: int | None = Field(
        0, description="Cores vLLM-CPU keeps from compute for the front end (None: vLLM's default, 1)."
    )
    engine_cpus: str = Field(
        "auto",
        pattern=CPU_LIST,
        description="Cores serving runs on: the CPU engine's compute threads (VLLM_CPU_OMP_THREADS_BIND), its front end"
        " and engine process; auto, or a list like 1-3,5 (flywheel up splits the cores: flywheel/cores.py).",
    )
    preload_iomp: bool = Field(True, description="Run the CPU engine with Intel's OpenMP runtime.")
    gpu_memory_utilization: float = Field(0.85, description="Share of GPU memory vLLM may take (GPU only).")
    max_num_seqs: int = Field(32, description="Sequences the engine runs at once.")
    policy_version: str = Field("base", description="Version name of the base policy.")
    event_buffer_size: int = Field(10_000, description="Completion events held while Kafka is down.")
    grpc_port: int = Field(50052, description="PolicyService (roll-out control plane) gRPC port.")
    replica_id: str = Field("", description="This replica's name in roll-out events; empty: host name and port.")
    max_loaded_versions: int = Field(4, description="Policy adapters kept loaded (stable and canary included).")
    follow_policies: bool = Field(True, description="Follow flywheel.policy.v1 and hot-swap published versions.")
    feedback_public_url: str = Field(
        "http://127.0.0.1:8001", description="The feedback service's URL as the chat page's browser reaches it."
    )
    trainer_public_url: str = Field(
        "http://127.0.0.1:9300", description="The trainer's HTTP URL as the operator page's browser reaches it."
    )

    @model_validator(mode="after")
    def _check_admin_key_for_host(self) -> ServingSettings:
        refuse_public_placeholder_admin_key(self.host, self.admin_key)
        return self

    @model_validator(mode="after")
    def _check_tool_call_parser(self) -> ServingSettings:
        if self.tool_call_parser:
            from vllm.tool_parsers import ToolParserManager  # vLLM's registry: imported only when one is named

            known = sorted({*ToolParserManager.tool_parsers, *ToolParserManager.lazy_parsers})
            if self.tool_call_parser not in known:
                raise ValueError(f"tool_call_parser {self.tool_call_parser!r} is not one of vLLM's: {', '.join(known)}")
        return self


class FeedbackSettings(CommonSettings):
    """The feedback path: API limits, the durable outbox and its relay to Kafka."""

    host: str = Field("127.0.0.1", description="Address the feedback API listens on.")
    port: int = Field(8001, description="Port of the feedback API and /metrics.")
    grpc_port: int = Field(50051, description="FeedbackService gRPC port.")
    max_body_bytes: int = Field(65_536, description="Largest feedback request body.")
    max_import_body_bytes: int = Field(50_000_000, description="Largest preference-import body.")
    comment_max_chars: int = Field(2_000, description="Longest comment accepted.")
    correction_max_chars: int = Field(
        8_000, description="Longest rewrite accepted (POST /v1/corrections; 8,000 escaped characters fit the body)."
    )
    dimensions: str = Field("helpfulness,accuracy,safety,tone", description="Dimension names, 1..5 scores.")
    flags: str = Field("harmful,incorrect,off_topic,unsafe,other", description="Flags a user may raise.")
    rate_limit_per_s: float = Field(50.0, description="Sustained feedback events per user per second.")
    rate_limit_burst: int = Field(200, description="Events a user may send in one burst.")
    outbox_max_pending: int = Field(100_000, description="Unpublished events held before answering 503.")
    outbox_retention_hours: float = Field(24.0, description="How long published events (and keys) are kept.")
    relay_batch: int = Field(500, description="Events per Kafka batch.")
    shutdown_drain_s: float = Field(
        10.0, ge=0.0, description="On shutdown, how long the relay may go on publishing the outbox (k8s: ~the grace)."
    )
    max_bulk_events: int = Field(100_000, description="Most events one gRPC BulkSubmit stream may carry.")
    cors_origins: str = Field(
        "http://127.0.0.1:8000,http://localhost:8000",
        description="Comma-separated browser origins (the chat page's) allowed to call the REST API.",
    )

    @model_validator(mode="after")
    def _check_admin_key_for_host(self) -> FeedbackSettings:
        refuse_public_placeholder_admin_key(self.host, self.admin_key)
        return self

    @property
    def outbox_path(self) -> Path:
        return self.data_dir / "feedback" / "outbox.sqlite"

    def dimension_names(self) -> set[str]:
        return {name.strip() for name in self.dimensions.split(",") if name.strip()}

    def flag_names(self) -> set[str]:
        return {name.strip() for name in self.flags.split(",") if name.strip()}

    def cors_origin_list(self) -> list[str]:
        return [origin.strip().rstrip("/") for origin in self.cors_origins.split(",") if origin.strip()]


class TrainerSettings(CommonSettings):
    """The trainer: ingestion, rounds, reward model, PPO, gates and publication."""

    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_", env_nested_delimiter="__", extra="ignore")

    model: str = Field("", description="Base policy directory or id; empty: the converted default.")
    host: str = Field("127.0.0.1", description="Address the trainer's HTTP and gRPC listen on.")
    port: int = Field(9300, description="HTTP port of /metrics, /healthz, /readyz and /status.")
    grpc_port: int = Field(50053, description="TrainerService gRPC port.")
    base_version: str = Field("base", description="Version name of the base policy (as serving names it).")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where the trainer computes: auto takes a GPU when torch sees one (trainer/hardware.py)."
    )
    torch_threads: int = Field(1, description="Threads torch uses; 2 ran 3-6x slower beside serving on 2 cores.")
    nice: int = Field(
        10, ge=0, le=19, description="Scheduling niceness the trainer process adds to itself, so serving keeps the CPU."
    )
    trainer_cpus: str = Field(
        "", pattern=CPU_LIST, description="Cores the trainer runs on, a list like 0 or 0-1 (empty or auto: any)."
    )
    duty_cycle: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Share of the time the trainer computes while other processes use the CPU (1: always; "
        "trainer/pacing.py, bench/sharing.py).",
    )
    seed: int = Field(0, description="Seed of sampling, data splits and training.")
    rounds: RoundTriggerSection = RoundTriggerSection()
    reward: RewardSection = RewardSection()
    algorithm: Literal["ppo", "grpo", "dpo", "kto"] = Field(
        "ppo",
        description="How a round trains the policy: PPO or GRPO on the reward model, DPO on the pairs, KTO on rated "
        "answers.",
    )
    ppo: PPOSection = PPOSection()
    grpo: GRPOSection = GRPOSection()
    dpo: DPOSection = DPOSection()
    kto: KTOSection = KTOSection()
    sft: SFTSection = SFTSection()
    judge: JudgeSection = JudgeSection()
    raters: RatersSection = RatersSection()
    gates: GateSection = GateSection()
    rollout: RolloutSection = RolloutSection()
    cors_origins: str = Field(
        "http://127.0.0.1:8000,http://localhost:8000",
        description="Comma-separated browser origins (the operator page's) allowed to read /status and /history.",
    )

    def cors_origin_list(self) -> list[str]:
        return [origin.strip().rstrip("/") for origin in self.cors_origins.split(",") if origin.strip()]

    @model_validator(mode="after")
    def _check_admin_key_for_host(self) -> TrainerSettings:
        refuse_public_placeholder_admin_key(self.host, self.admin_key)  # TriggerRound, Pause, Resume
        return self

    @property
    def dataset_path(self) -> Path:
        return self.data_dir / "trainer" / "dataset.sqlite"

    @property
    def reward_store_dir(self) -> Path:
        return self.data_dir / "reward-models"

    @property
    def work_dir(self) -> Path:
        return self.data_dir / "trainer" / "work"

    @property
    def lock_path(self) -> Path:
        """Held by the one trainer of this dataset (trainer/lock.py)."""
        return self.data_dir / "trainer" / "trainer.lock"

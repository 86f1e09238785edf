"""Configuration from the environment (``.env`` is loaded by ``bot.py``).

Every variable is documented in ``.env.example``. ``Settings.from_env`` validates all of
them at once and raises :class:`errors.ConfigError` naming the bad variable.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, TypedDict

from errors import ConfigError

log = logging.getLogger(__name__)

MODES = ("dev", "prod")
MODEL_BACKENDS = ("local", "openai", "hf")
HF_LAUNCHERS = ("plain", "accelerate")
HF_DEVICES = ("auto", "cpu", "cuda")
SPEECH_BACKENDS = ("whisper", "sphinx", "openai")
TTS_BACKENDS = ("espeak", "openai", "none")
DEFAULT_EMBED_MODEL = "all-MiniLM-L6-v2"  # training.embedding loads it by this name


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env.get(name, "").strip().lower() or default
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return value


def _on_off(env: Mapping[str, str], name: str, default: bool) -> bool:
    """An on/off switch: on/off, yes/no, true/false, 1/0."""
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("on", "yes", "true", "1"):
        return True
    if raw in ("off", "no", "false", "0"):
        return False
    raise ConfigError(f"{name} must be on or off, got {raw!r}")


def _usable_dir(name: str, raw: str) -> Path:
    """Create the folder if needed and check we can write to it."""
    path = Path(raw).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{name}={raw!r} cannot be created: {exc.strerror}") from None
    if not path.is_dir() or not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        raise ConfigError(f"{name}={raw!r} is not a readable and writable folder")
    return path.resolve()


def _embed_model(env: Mapping[str, str]) -> str:
    """EMBED_MODEL: all-MiniLM-L6-v2 (default), wordllama, none/off, a local folder or a Hugging Face id.

    Only the form is checked here; a model that cannot be loaded does not stop the bot (it answers
    by word matching and says so), because a missing download must not take the bot down.
    """
    raw = env.get("EMBED_MODEL", "").strip()
    if not raw or raw.lower() == DEFAULT_EMBED_MODEL.lower():
        return DEFAULT_EMBED_MODEL
    if raw.lower() in ("wordllama", "none", "off"):
        return raw.lower()
    if raw.startswith((".", "/", "~")) or Path(raw).expanduser().exists():
        return raw  # a local path; whether it holds a model is found out (and reported) at load time
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", raw):
        raise ConfigError(f"EMBED_MODEL must be {DEFAULT_EMBED_MODEL}, wordllama, none, a local folder or a "
                          f"Hugging Face id like owner/name; got {raw!r}")
    return raw


@dataclass(frozen=True)
class Settings:
    """Validated settings; see ``.env.example`` for what each one means."""

    token: str | None = field(default=None, repr=False)
    prefix: str = "!"
    mode: str = "dev"
    data_dir: Path = Path("data")
    corrections_dir: Path = Path("corrections")
    # PostgreSQL for the records (several bot processes share it); None: SQLite at DATA_DIR/trainer.db.
    database_url: str | None = None
    # Shards this process runs (SHARD_IDS) out of SHARD_COUNT; None: Discord's recommended count, all of them.
    shard_count: int | None = None
    shard_ids: tuple[int, ...] | None = None
    api_base: str | None = None
    trainer_role: str | None = None
    chat_channels: tuple[str, ...] = ("general", "chat")
    model_backend: str = "local"
    openai_api_key: str | None = field(default=None, repr=False)
    openai_base_url: str | None = None
    openai_base_model: str = "gpt-4.1-mini-2025-04-14"
    speech_backend: str = "whisper"
    # WHISPER_MODEL: "" (the pinned tiny.en weights), a local CTranslate2 folder, or a model id (downloads).
    whisper_model: str = ""
    speech_language: str = "en-US"
    openai_transcribe_model: str = "gpt-4o-mini-transcribe"
    tts_backend: str = "espeak"
    openai_tts_model: str = "gpt-4o-mini-tts"
    openai_tts_voice: str = "alloy"
    audio_max_bytes: int = 25 * 1024 * 1024
    audio_max_seconds: float = 300.0
    audio_workers: int = 2
    audio_queue: int = 8
    voice_idle_seconds: float = 300.0
    job_poll_seconds: float = 15.0
    # A job's watcher renews its lease on every poll; another process takes the job over once it runs out.
    job_lease_seconds: float = 30.0
    embed_model: str = DEFAULT_EMBED_MODEL
    review_corrections: bool = True
    # Off: the bot does not ask for the privileged Message Content intent (see README, "Without the Message
    # Content intent"): slash commands, context menus, mentions, replies to the bot and DMs still work.
    message_content: bool = True
    # Off (default): only admins' uploads, !test cases and admins' own corrections become training data
    # (Discord's Developer Policy on training; README "What the bot trains on").
    train_from_chat: bool = False
    confirm_seconds: float = 60.0  # how long a Confirm / Cancel dialog waits before it expires
    # A "Did you mean" offer's buttons work this long (then they are disabled); a member's pick counts once this
    # many different members made the same one (0: only an admin's approval makes it count).
    offer_buttons_minutes: float = 60.0
    picks_to_learn: int = 2
    eval_gate: bool = True  # a new model worse on the evaluation set is kept as a candidate, not switched to
    # Paid calls (OpenAI answers, transcriptions, spoken answers) one member may make per UTC day; 0: unlimited.
    paid_calls_per_user_per_day: int = 200
    budget_exempt_role: str | None = None  # its members (and admins) are never limited
    # MODEL_BACKEND=hf (LoRA fine-tuning of an open-weights model): defaults that work for a 0.1-2B instruct model.
    hf_base_model: str = "HuggingFaceTB/SmolLM2-135M-Instruct"
    hf_lora_rank: int = 16
    hf_epochs: int = 20
    hf_learning_rate: float = 1e-3
    hf_max_seq_length: int = 1024
    hf_batch_size: int = 4
    hf_launcher: str = "plain"
    hf_accelerate_config: Path | None = None
    hf_device: str = "auto"
    hf_threads: int = 0
    hf_checkpoint_seconds: float = 60.0
    hf_max_new_tokens: int = 256
    hf_answer_timeout: float = 120.0
    hf_answer_queue: int = 8
    hf_loss_target: float = 0.1
    hf_recall_target: float = 0.95
    hf_time_budget: float = 1800.0
    hf_grounding: bool = True
    hf_grounding_pairs: int = 3
    hf_abstain_share: float = 0.25
    hf_retrieval_first: bool = True

    @property
    def dev(self) -> bool:
        return self.mode == "dev"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        mode = _choice(env, "MODE", "dev", MODES)
        token = env.get("DISCORD_TOKEN", "").strip() or None
        if mode == "prod" and not token:
            raise ConfigError("DISCORD_TOKEN is required when MODE=prod (see .env.example)")
        prefix = env.get("PREFIX", "!")
        if "PREFIX" in env and not prefix.strip():
            raise ConfigError("PREFIX must not be empty")
        if prefix != prefix.strip():
            raise ConfigError(f"PREFIX must not start or end with spaces, got {prefix!r}")
        api_base = env.get("DISCORD_API_BASE", "").strip().rstrip("/") or None
        if api_base and not api_base.startswith(("http://", "https://")):
            raise ConfigError(f"DISCORD_API_BASE must be an http(s) URL, got {api_base!r}")
        channels = tuple(
            c.strip().lstrip("#").lower()
            for c in env.get("CHAT_CHANNELS", "general,chat").split(",")
            if c.strip()
        )
        return cls(
            token=token,
            prefix=prefix,
            mode=mode,
            data_dir=_usable_dir("DATA_DIR", env.get("DATA_DIR", "").strip() or "data"),
            corrections_dir=_usable_dir(
                "CORRECTIONS_DIR", env.get("CORRECTIONS_DIR", "").strip() or "corrections"
            ),
            api_base=api_base,
            database_url=_database_url(env),
            **_shards(env),
            trainer_role=env.get("TRAINER_ROLE", "").strip() or None,
            chat_channels=channels,
            model_backend=_choice(env, "MODEL_BACKEND", "local", MODEL_BACKENDS),
            openai_api_key=env.get("OPENAI_API_KEY", "").strip() or None,
            openai_base_url=env.get("OPENAI_BASE_URL", "").strip() or None,
            openai_base_model=env.get("OPENAI_BASE_MODEL", "").strip() or cls.openai_base_model,
            speech_backend=_choice(env, "SPEECH_BACKEND", "whisper", SPEECH_BACKENDS),
            whisper_model=env.get("WHISPER_MODEL", "").strip(),
            speech_language=env.get("SPEECH_LANGUAGE", "").strip() or "en-US",
            openai_transcribe_model=env.get("OPENAI_TRANSCRIBE_MODEL", "").strip()
            or cls.openai_transcribe_model,
            tts_backend=_choice(env, "TTS_BACKEND", "espeak", TTS_BACKENDS),
            openai_tts_model=env.get("OPENAI_TTS_MODEL", "").strip() or cls.openai_tts_model,
            openai_tts_voice=env.get("OPENAI_TTS_VOICE", "").strip() or cls.openai_tts_voice,
            audio_max_bytes=_int(env, "AUDIO_MAX_BYTES", cls.audio_max_bytes, 1),
            audio_max_seconds=_float(env, "AUDIO_MAX_SECONDS", cls.audio_max_seconds, 0.1),
            audio_workers=_int(env, "AUDIO_WORKERS", cls.audio_workers, 1),
            audio_queue=_int(env, "AUDIO_QUEUE", cls.audio_queue, 1),
            voice_idle_seconds=_float(env, "VOICE_IDLE_SECONDS", cls.voice_idle_seconds, 0.0),
            job_poll_seconds=_float(env, "JOB_POLL_SECONDS", cls.job_poll_seconds, 0.01),
            job_lease_seconds=_float(env, "JOB_LEASE_SECONDS", cls.job_lease_seconds, 1.0),
            embed_model=_embed_model(env),
            review_corrections=_on_off(env, "REVIEW_CORRECTIONS", True),
            offer_buttons_minutes=_float(env, "OFFER_BUTTONS_MINUTES", cls.offer_buttons_minutes, 0.1),
            picks_to_learn=_int(env, "PICKS_TO_LEARN", cls.picks_to_learn, 0),
            eval_gate=_on_off(env, "EVAL_GATE", True),
            message_content=_on_off(env, "MESSAGE_CONTENT", True),
            train_from_chat=_on_off(env, "TRAIN_FROM_CHAT", False),
            confirm_seconds=_float(env, "CONFIRM_SECONDS", cls.confirm_seconds, 1.0),
            paid_calls_per_user_per_day=_int(env, "PAID_CALLS_PER_USER_PER_DAY", cls.paid_calls_per_user_per_day, 0),
            budget_exempt_role=env.get("BUDGET_EXEMPT_ROLE", "").strip() or None,
            **_hf_settings(env, cls),
        )


class _ShardSettings(TypedDict):
    """What ``_shards`` returns: the shard fields of :class:`Settings`."""

    shard_count: int | None
    shard_ids: tuple[int, ...] | None


def _shards(env: Mapping[str, str]) -> _ShardSettings:
    """``SHARD_COUNT`` (at least 1) and ``SHARD_IDS`` (comma-separated, each below the count; needs the count)."""
    count = _int(env, "SHARD_COUNT", 0, 1) if env.get("SHARD_COUNT", "").strip() else None
    raw = env.get("SHARD_IDS", "").strip()
    if not raw:
        return {"shard_count": count, "shard_ids": None}
    if count is None:
        raise ConfigError("SHARD_IDS needs SHARD_COUNT (the total number of shards of all processes)")
    try:
        ids = tuple(sorted({int(part) for part in raw.split(",") if part.strip()}))
    except ValueError:
        raise ConfigError(f"SHARD_IDS must be comma-separated shard numbers, like 0,1; got {raw!r}") from None
    if not ids or any(not 0 <= i < count for i in ids):
        raise ConfigError(f"SHARD_IDS must be numbers from 0 to {count - 1} (SHARD_COUNT={count}); got {raw!r}")
    return {"shard_count": count, "shard_ids": ids}


def _database_url(env: Mapping[str, str]) -> str | None:
    """``DATABASE_URL``: empty (SQLite under DATA_DIR) or a ``postgresql://`` URL."""
    url = env.get("DATABASE_URL", "").strip()
    if not url:
        return None
    if not url.startswith(("postgresql://", "postgres://")):
        # Never echo the value: it may hold a password.
        raise ConfigError("DATABASE_URL must be a postgresql:// URL (or empty for SQLite under DATA_DIR)")
    return url


class _HFSettings(TypedDict):
    """What ``_hf_settings`` returns: the ``hf_*`` fields of :class:`Settings`."""

    hf_base_model: str
    hf_lora_rank: int
    hf_epochs: int
    hf_learning_rate: float
    hf_max_seq_length: int
    hf_batch_size: int
    hf_launcher: str
    hf_accelerate_config: Path | None
    hf_device: str
    hf_threads: int
    hf_checkpoint_seconds: float
    hf_max_new_tokens: int
    hf_answer_timeout: float
    hf_answer_queue: int
    hf_loss_target: float
    hf_recall_target: float
    hf_time_budget: float
    hf_grounding: bool
    hf_grounding_pairs: int
    hf_abstain_share: float
    hf_retrieval_first: bool


def _hf_settings(env: Mapping[str, str], cls: type[Settings]) -> _HFSettings:
    """The ``HF_*`` settings (checked whatever MODEL_BACKEND is, so a typo shows before it is needed)."""
    base = env.get("HF_BASE_MODEL", "").strip() or cls.hf_base_model
    from training.hf_store import BaseSpec  # light: no torch

    try:
        BaseSpec.parse(base)
    except ValueError as exc:
        raise ConfigError(f"HF_BASE_MODEL {exc}") from None
    lr = _float(env, "HF_LEARNING_RATE", cls.hf_learning_rate, 0.0)
    if not 0 < lr <= 1:
        raise ConfigError(f"HF_LEARNING_RATE must be above 0 and at most 1, got {lr}")
    recall = _float(env, "HF_RECALL_TARGET", cls.hf_recall_target, 0.0)
    if recall > 1:
        raise ConfigError(f"HF_RECALL_TARGET is a share of the trained pairs, 0 to 1; got {recall}")
    abstain = _float(env, "HF_ABSTAIN_SHARE", cls.hf_abstain_share, 0.0)
    if abstain > 1:
        raise ConfigError(f"HF_ABSTAIN_SHARE is a share of the trained pairs, 0 to 1; got {abstain}")
    accelerate_config = env.get("HF_ACCELERATE_CONFIG", "").strip() or None
    if accelerate_config and not Path(accelerate_config).expanduser().is_file():
        raise ConfigError(f"HF_ACCELERATE_CONFIG={accelerate_config!r} is not a file")
    max_len = _int(env, "HF_MAX_SEQ_LENGTH", cls.hf_max_seq_length, 32)
    max_new = _int(env, "HF_MAX_NEW_TOKENS", cls.hf_max_new_tokens, 1)
    if max_new >= max_len:
        raise ConfigError(f"HF_MAX_NEW_TOKENS ({max_new}) must be below HF_MAX_SEQ_LENGTH ({max_len})")
    return {
        "hf_base_model": base,
        "hf_lora_rank": _int(env, "HF_LORA_RANK", cls.hf_lora_rank, 1),
        "hf_epochs": _int(env, "HF_EPOCHS", cls.hf_epochs, 1),
        "hf_learning_rate": lr,
        "hf_max_seq_length": max_len,
        "hf_batch_size": _int(env, "HF_BATCH_SIZE", cls.hf_batch_size, 1),
        "hf_launcher": _choice(env, "HF_LAUNCHER", "plain", HF_LAUNCHERS),
        "hf_accelerate_config": Path(accelerate_config).expanduser().resolve() if accelerate_config else None,
        "hf_device": _choice(env, "HF_DEVICE", "auto", HF_DEVICES),
        "hf_threads": _int(env, "HF_THREADS", cls.hf_threads, 0),
        "hf_checkpoint_seconds": _float(env, "HF_CHECKPOINT_SECONDS", cls.hf_checkpoint_seconds, 0.0),
        "hf_max_new_tokens": max_new,
        "hf_answer_timeout": _float(env, "HF_ANSWER_TIMEOUT", cls.hf_answer_timeout, 1.0),
        "hf_answer_queue": _int(env, "HF_ANSWER_QUEUE", cls.hf_answer_queue, 1),
        "hf_loss_target": _float(env, "HF_LOSS_TARGET", cls.hf_loss_target, 0.0),
        "hf_recall_target": recall,
        "hf_time_budget": _float(env, "HF_TIME_BUDGET", cls.hf_time_budget, 1.0),
        "hf_grounding": _on_off(env, "HF_GROUNDING", cls.hf_grounding),
        "hf_grounding_pairs": _int(env, "HF_GROUNDING_PAIRS", cls.hf_grounding_pairs, 1),
        "hf_abstain_share": abstain,
        "hf_retrieval_first": _on_off(env, "HF_RETRIEVAL_FIRST", cls.hf_retrieval_first),
    }

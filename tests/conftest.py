"""End-to-end harness: the real bot, logged into the local sandbox over real sockets.

Every test runs in one event loop with its own sandbox (ephemeral port), its own data folders
(tmp_path) and its own bot. A test fails when anything logged an ERROR (discord.py only logs
exceptions raised inside commands and listeners) or when the sandbox saw a route it does not
implement.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from config import Settings  # noqa: E402
from sandbox.server import Message, Sandbox, User  # noqa: E402
from tests.fakes import close_tracked_clients  # noqa: E402


class ErrorLog(logging.Handler):
    """Collects ERROR records; the ones a test expects can be taken out with :meth:`take`."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def take(self, text: str) -> list[logging.LogRecord]:
        found = [r for r in self.records if text in r.getMessage()]
        self.records = [r for r in self.records if r not in found]
        return found

    def describe(self) -> str:
        out = []
        for r in self.records:
            line = f"{r.name}: {r.getMessage()}"
            if r.exc_info:
                line += "\n" + logging.Formatter().formatException(r.exc_info)
            out.append(line)
        return "\n".join(out)


@pytest.fixture
def error_log() -> Any:
    handler = ErrorLog()
    root = logging.getLogger()
    root.addHandler(handler)
    yield handler
    root.removeHandler(handler)
    if handler.records:
        pytest.fail("errors were logged:\n" + handler.describe())


@pytest.fixture(scope="module")
def worker_tmpdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private TMPDIR for audio worker processes (spawned after it is set, they inherit it), so a
    test can check that no temp file is left behind."""
    tmp = tmp_path_factory.mktemp("worker-tmp")
    old = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(tmp)
    yield tmp
    if old is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = old


@pytest.fixture(autouse=True)
async def _close_injected_clients() -> AsyncIterator[None]:
    """Clients that tests inject into the code under test (which does not own them) are closed here."""
    yield
    await close_tracked_clients()


@pytest.fixture
def data_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    data, corrections = tmp_path / "data", tmp_path / "corrections"
    monkeypatch.setenv("DATA_DIR", str(data))
    monkeypatch.setenv("CORRECTIONS_DIR", str(corrections))
    return data, corrections


@pytest.fixture
def settings(data_dirs: tuple[Path, Path]) -> Settings:
    data, corrections = data_dirs
    return Settings.from_env({
        "MODE": "dev", "DATA_DIR": str(data), "CORRECTIONS_DIR": str(corrections),
        "JOB_POLL_SECONDS": "0.05", "VOICE_IDLE_SECONDS": "30",
    })


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    sb = await Sandbox().start()
    yield sb
    await sb.close()
    assert not sb.unimplemented, f"the bot used routes the sandbox does not implement: {sb.unimplemented}"


class BotHarness:
    """Post as sandbox users and collect what the bot answers."""

    def __init__(self, sandbox: Sandbox, bot: Any) -> None:
        self.sandbox = sandbox
        self.bot = bot

    @property
    def guild_id(self) -> int:
        return self.sandbox.guild_id

    async def send(self, content: str = "", *, user: str | User = "member", count: int = 1,
                   quiet: float = 0.3, timeout: float = 15.0, **kwargs: Any) -> list[Message]:
        """Post a message and return the bot's messages after it, once ``count`` arrived and it went quiet."""
        msg = await self.sandbox.post_message(user, content, **kwargs)
        self.last_posted = msg
        await self.sandbox.wait_for_bot_message(msg.channel_id, after=msg.id, count=count, timeout=timeout)
        return await self.settle(msg.id, msg.channel_id, quiet)

    async def ask(self, content: str = "", **kwargs: Any) -> str:
        """Post a message and return the text of the bot's first answer."""
        return (await self.send(content, **kwargs))[0].content

    async def settle(self, after: int, channel_id: int | None = None, quiet: float = 0.3) -> list[Message]:
        seen = -1
        while True:
            found = self.sandbox.bot_messages(channel_id, after=after)
            if len(found) == seen:
                return found
            seen = len(found)
            await asyncio.sleep(quiet)

    async def silent(self, content: str, *, user: str | User = "member", wait: float = 1.0, **kwargs: Any) -> None:
        """Post a message and assert the bot says nothing."""
        msg = await self.sandbox.post_message(user, content, **kwargs)
        await asyncio.sleep(wait)
        said = self.sandbox.bot_messages(msg.channel_id, after=msg.id)
        assert not said, f"expected silence, bot said: {[m.content for m in said]}"


async def start_bot(sandbox: Sandbox, settings: Settings, **bot_kwargs: Any) -> Any:
    """Start the real bot against ``sandbox`` with ``bot.start_bot``; ``bot_kwargs`` go to ``commands.Bot``
    (by default it trusts the sandbox's voice server when that runs, as ``sandbox.bot_kwargs()`` says)."""
    import bot as bot_module

    # The bot's one OpenAI client checks every response against the SDK's schema, so the fake
    # server cannot drift from what the SDK expects.
    options = {"openai_options": {"_strict_response_validation": True}, **sandbox.bot_kwargs(), **bot_kwargs}
    return await bot_module.start_bot(settings, api_base=sandbox.api_base, token=sandbox.bot_token,
                                      ready_timeout=20, **options)


async def stop_bot(bot: Any) -> None:
    import bot as bot_module

    await bot_module.stop_bot(bot)


@pytest.fixture
async def harness(sandbox: Sandbox, settings: Settings, error_log: ErrorLog) -> AsyncIterator[BotHarness]:
    bot = await start_bot(sandbox, settings)
    try:
        yield BotHarness(sandbox, bot)
    finally:
        await stop_bot(bot)


def subprocess_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """An environment for running ``bot.py`` in a subprocess, isolated from a developer's .env."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_", "OPENAI_"))}
    env.update({
        "DISCORD_TOKEN": "", "MODE": "dev", "PREFIX": "!", "DATA_DIR": str(tmp_path / "data"),
        "CORRECTIONS_DIR": str(tmp_path / "corrections"), "PYTHONUNBUFFERED": "1",
    })
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama chat model built on the spot (tests/fakes/tiny_llama.py), once per test session."""
    import torch

    from tests.fakes.tiny_llama import build_tiny_llama

    torch.set_num_threads(1)  # the machine is shared; the bot's own children use HF_THREADS
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama") / "base")


def hf_env(base: Path, **extra: str) -> dict[str, str]:
    """HF_* settings that train the tiny model to answer its examples word for word in seconds."""
    env = {"HF_BASE_MODEL": str(base), "HF_EPOCHS": "40", "HF_LEARNING_RATE": "5e-3", "HF_BATCH_SIZE": "4",
           "HF_THREADS": "1", "HF_MAX_SEQ_LENGTH": "256", "HF_MAX_NEW_TOKENS": "40", "HF_ANSWER_TIMEOUT": "60"}
    env.update(extra)
    return env

"""The end-to-end harness: start the real bot against a sandbox, post as its users, read what the bot says.

``BotHarness`` drives a running bot (messages, and interactions: ``slash``, ``click``, ``menu``,
``submit_modal`` wait for the bot's answer); ``start_bot``/``stop_bot`` wrap ``bot.start_bot``/``bot.stop_bot``
with the test settings (strict OpenAI response validation, the sandbox's trusted voice connector);
``subprocess_env`` isolates ``python bot.py`` from a developer's .env; ``space_of`` is the data space
of the harness's guild; ``wait_bot``, ``start_job`` and ``announcement`` follow a training job in the
channel. Fixtures built on these live in ``tests/conftest.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from config import Settings
from sandbox.chat import TerminalChat
from sandbox.server import Interaction, Message, Sandbox, User
from storage import GuildSpace

ROOT = Path(__file__).resolve().parent.parent
STARTED = re.compile(r"Started training job `([^`]+)`")  # the !train reply that names the new job


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

    # ----------------------------------------------------------------- interactions
    async def answered(self, inter: Interaction, *, quiet: float = 0.3, timeout: float = 15.0) -> Interaction:
        """Wait until the bot answered ``inter`` (a message that is not "thinking", an updated message,
        a modal or choices; see ``Interaction.done``), then until it went quiet (no new follow-up
        for ``quiet`` s); ``inter.messages`` then holds the response and follow-ups."""
        await self.sandbox.wait_for_response(inter, timeout)
        seen = -1
        while len(inter.messages) != seen:
            seen = len(inter.messages)
            await asyncio.sleep(quiet)
        return inter

    async def slash(self, name: str, options: dict[str, Any] | None = None, /, *, user: str | User = "member",
                    **kw_options: Any) -> Interaction:
        """``user`` runs ``/name`` with its options (``Sandbox.slash``); returns the answered interaction."""
        return await self.answered(await self.sandbox.slash(user, name, options, **kw_options))

    async def click(self, message_id: int, n: int, *, user: str | User = "member") -> Interaction:
        """``user`` presses button ``n`` of a message (``Sandbox.click``); returns the answered interaction."""
        return await self.answered(await self.sandbox.click(user, message_id, n))

    async def menu(self, target: int | str | User, command: str, *, user: str | User = "member") -> Interaction:
        """``user`` runs a context-menu command on a message id or a user (``Sandbox.menu``)."""
        return await self.answered(await self.sandbox.menu(user, target, command))

    async def submit_modal(self, fields: dict[str, str] | None = None, /, *, user: str | User = "member",
                           **kw_fields: str) -> Interaction:
        """``user`` submits the modal open on their screen (``Sandbox.submit_modal``)."""
        return await self.answered(await self.sandbox.submit_modal(user, fields, **kw_fields))

    def ephemeral(self, user: str | User = "member") -> list[Message]:
        """The ephemeral messages ``user`` was shown, oldest first."""
        return self.sandbox.ephemeral_messages(user)

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


async def type_lines(chat: TerminalChat, *lines: str) -> None:
    """Type each line into the terminal chat, waiting after each until the bot has answered and gone quiet."""
    for line in lines:
        await chat.handle(line)
        await chat.settle()


@contextlib.asynccontextmanager
async def running_bot(sandbox: Sandbox, settings: Settings, **changes: Any) -> AsyncIterator[BotHarness]:
    """The real bot on ``sandbox`` with ``settings`` (``changes`` replaced, e.g. ``eval_gate=False``), as a
    harness; stopped when the block ends."""
    bot = await start_bot(sandbox, dataclasses.replace(settings, **changes))
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


def space_of(harness: BotHarness) -> GuildSpace:
    """The data space of the harness's guild, as the running bot sees it."""
    s = harness.bot.settings
    return GuildSpace(harness.guild_id, s.data_dir, s.corrections_dir, harness.bot.db)


async def wait_bot(sb: Sandbox, predicate: Callable[[Message], Any], *, after: int = 0,
                   timeout: float = 10.0) -> Message:
    """The first bot message after ``after`` for which ``predicate`` holds (waits for edits too)."""
    def find() -> Message | None:
        return next((m for m in sb.bot_messages(after=after) if predicate(m)), None)
    return await sb.wait_for(find, timeout)


async def start_job(h: BotHarness, content: str = "!train", *, user: str = "admin",
                    **kwargs: Any) -> tuple[str, Message]:
    """Post a !train and return the new job's id and its status message."""
    msg = await h.sandbox.post_message(user, content, **kwargs)
    started = await wait_bot(h.sandbox, lambda m: STARTED.search(m.content), after=msg.id, timeout=15)
    job_id = STARTED.search(started.content).group(1)
    status = await wait_bot(h.sandbox, lambda m: m.content.startswith(f"Training job `{job_id}` ("), after=msg.id)
    return job_id, status


async def announcement(sb: Sandbox, job_id: str, timeout: float = 10.0) -> Message:
    """The watcher's closing message for a job."""
    return await wait_bot(sb, lambda m: m.content.startswith((f"Training job `{job_id}` succeeded",
                                                               f"Training job `{job_id}` failed",
                                                               f"Training job `{job_id}` was cancelled")),
                          timeout=timeout)


async def confirmed(h: BotHarness, content: str, *, user: str = "member", timeout: float = 15.0) -> list[Message]:
    """Post a command that asks to confirm (a Confirm / Cancel dialog), press Confirm as its author; returns
    the dialog and the bot's messages after it once it went quiet."""
    msg = await h.sandbox.post_message(user, content)
    dialog = await wait_bot(h.sandbox, lambda m: bool(m.components), after=msg.id, timeout=timeout)
    await h.click(dialog.id, 1, user=user)
    await h.sandbox.wait_for_bot_message(dialog.channel_id, after=dialog.id, timeout=timeout)
    return [dialog, *await h.settle(dialog.id, dialog.channel_id)]


def hf_env(base: Path, **extra: str) -> dict[str, str]:
    """HF_* settings that train the tiny model to answer its examples word for word in seconds."""
    env = {"HF_BASE_MODEL": str(base), "HF_EPOCHS": "40", "HF_LEARNING_RATE": "5e-3", "HF_BATCH_SIZE": "4",
           "HF_THREADS": "1", "HF_MAX_SEQ_LENGTH": "256", "HF_MAX_NEW_TOKENS": "40", "HF_ANSWER_TIMEOUT": "60",
           # Plain word-for-word training for a fixed number of steps; grounding and stopping when learned have
           # their own tests (tests/training/test_hf_ground.py).
           "HF_GROUNDING": "off", "HF_RECALL_TARGET": "0", "HF_LOSS_TARGET": "0"}
    env.update(extra)
    return env

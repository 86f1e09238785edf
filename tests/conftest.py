"""Fixtures shared by the whole suite: settings and data folders, the sandbox, the bot harness, the error log.

Every end-to-end test runs in one event loop with its own sandbox (ephemeral port), its own data
folders (tmp_path) and its own bot. A test fails when anything logged an ERROR (discord.py only logs
exceptions raised inside commands and listeners) or when the sandbox saw a route it does not
implement. The classes and functions behind these fixtures live in ``tests/harness.py``.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import pytest

from config import Settings
from records.db import Database
from sandbox.ratelimit import RateLimits
from sandbox.server import Sandbox
from storage import GuildSpace
from tests import api_spec
from tests.fakes.samples import close_tracked_clients
from tests.harness import BotHarness, ErrorLog, running_bot
from tests.postgres import PostgresServer, start_server
from training.embedding import DEFAULT_EMBED_MODEL


@pytest.fixture(scope="session", autouse=True)
def _one_default_embedder() -> Iterator[None]:
    """Each test bot loads the default embedding model through the real code, but once per session:
    unzipping its 90 MB takes ~0.7 s, and the suite starts a few hundred bots. The model is only
    read, so bots can share it. (tests/training/test_embedding.py calls the loader itself.)
    Patched where ``LocalBackend.embedder`` and the hf backend's grounding look it up: ``training.local.backend``,
    ``training.hf_ground``."""
    import training.hf_ground
    import training.local.backend

    real = training.local.backend.load_embedder
    loaded: dict[str, Any] = {}

    def load_once(spec: str) -> Any:
        if spec != DEFAULT_EMBED_MODEL:
            return real(spec)
        if spec not in loaded:
            loaded[spec] = real(spec)
        return loaded[spec]

    training.local.backend.load_embedder = load_once  # type: ignore[assignment]
    training.hf_ground.load_embedder = load_once  # type: ignore[assignment]
    yield
    training.local.backend.load_embedder = real
    training.hf_ground.load_embedder = real


@pytest.fixture(autouse=True)
def _answers_match_discord_spec(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every sandbox a test starts records its REST answers; at the end of the test each one is checked
    against Discord's OpenAPI spec (tests/api_spec.py), and a mismatch fails the test."""
    started: list[Sandbox] = []
    real_start = Sandbox.start

    async def start(self: Sandbox, *args: Any, **kwargs: Any) -> Sandbox:
        if self.rest.responses is None:
            self.rest.responses = []
            started.append(self)
        return await real_start(self, *args, **kwargs)

    monkeypatch.setattr(Sandbox, "start", start)
    yield
    found = [p for sb in started for p in api_spec.problems(sb.rest.responses or [])]
    if found:
        pytest.fail("the sandbox answered what Discord's API spec does not allow:\n" + "\n".join(found[:40]))


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
        # Most tests train on members' corrections; tests/commands/test_train_from_chat.py tests the default.
        "TRAIN_FROM_CHAT": "on",
        # The espeak-based audio tests hold word error rates measured with pocketsphinx (the lighter
        # recogniser); Whisper, the default, is tested on real recordings in tests/commands/test_chat_long_audio.py.
        "SPEECH_BACKEND": "sphinx",
    })


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the session (tests/postgres.py), started on first use."""
    server = start_server()
    if server is None:
        if os.environ.get("REQUIRE_POSTGRES"):
            pytest.fail("PostgreSQL is not installed (make test installs Debian's postgresql package)")
        pytest.skip("PostgreSQL is not installed: apt-get install postgresql (make test does)")
    yield server
    server.close()


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> str:
    """A new empty database on the session's PostgreSQL server."""
    return pg_server.create_database(f"t{secrets.token_hex(6)}")


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """The records' database on each engine: SQLite under tmp_path, and a fresh PostgreSQL database."""
    if request.param == "sqlite":
        database = Database.open(None, tmp_path / "data")
    else:
        database = Database.open(request.getfixturevalue("pg_url"), tmp_path / "data")
    yield database
    database.close()


@pytest.fixture
def space(tmp_path: Path, db: Database) -> GuildSpace:
    """An empty data space for guild 11 under tmp_path, its records on each engine (a test module that needs
    another guild id defines its own ``space``)."""
    return GuildSpace(11, tmp_path / "data", tmp_path / "corrections", db).ensure()


# Discord's rate limits in windows a twentieth as long (5 messages per 0.25 s in a channel): discord.py still
# reads the headers and paces itself, but a test does not wait seconds, and harness.settle's quiet 0.3 s
# outlasts a pause. tests/sandbox/test_rest.py and tests/commands/test_rate_limits.py use the real values.
TEST_RATE_LIMITS = RateLimits.discord().scaled(0.05)


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    sb = await Sandbox(rate_limits=TEST_RATE_LIMITS).start()
    yield sb
    await sb.close()
    assert not sb.unimplemented, f"the bot used routes the sandbox does not implement: {sb.unimplemented}"


@pytest.fixture
async def harness(sandbox: Sandbox, settings: Settings, error_log: ErrorLog) -> AsyncIterator[BotHarness]:
    async with running_bot(sandbox, settings) as h:
        yield h


@pytest.fixture
def started(harness: BotHarness, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replace the job part of !train (the Training cog's ``_start_job``): records the method each time
    training would start, so ingestion is tested without waiting for training."""
    calls: list[str] = []
    cog = harness.bot.get_cog("Training")

    async def fake_start(ctx, method: str) -> None:
        calls.append(method)
        await ctx.send(f"[stub] training started ({method})")

    monkeypatch.setattr(cog, "_start_job", fake_start)
    return calls


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama chat model built on the spot (tests/fakes/tiny_llama.py), once per test session."""
    import torch

    from tests.fakes.tiny_llama import build_tiny_llama

    torch.set_num_threads(1)  # the machine is shared; the bot's own children use HF_THREADS
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama") / "base")


"""TRAIN_FROM_CHAT=off end to end: a member's approved correction answers at once (retrieval) and is exported,
but !train leaves it out of the training data and says so."""

from __future__ import annotations

import io
import zipfile
from collections.abc import AsyncIterator
from typing import Any

import pytest

from config import Settings
from sandbox.server import Sandbox
from tests.harness import STARTED, BotHarness, announcement, running_bot, start_job


@pytest.fixture
async def strict(sandbox: Sandbox, settings: Settings, error_log: Any) -> AsyncIterator[BotHarness]:
    async with running_bot(sandbox, settings, train_from_chat=False) as h:
        yield h


async def test_members_corrections_answer_but_are_not_trained_on(strict: BotHarness) -> None:
    h, sb = strict, strict.sandbox
    job_id, _ = await start_job(h, "!train where is the printer? => Room 2.\nwho runs payroll? => Ann.")
    await announcement(sb, job_id)
    [answer] = await h.send("What is the wifi password?")
    thanks = await h.ask("!correct The wifi password is on the fridge.", reply_to=answer.id)
    assert (await h.ask(f"!approve {thanks.split('`')[1]}", user="admin")).startswith("Approved `C-")
    # Retrieval: the approved correction answers at once.
    assert (await h.ask("what is the wifi password?")) == "The wifi password is on the fridge."

    job_id, _ = await start_job(h)
    started = next(m for m in sb.bot_messages() if STARTED.search(m.content) and job_id in m.content)
    assert started.content == (
        f"Started training job `{job_id}` on the local backend: 2 examples.\n"
        f"1 member correction(s) left out of training (TRAIN_FROM_CHAT is off); they still answer as "
        f"corrections and stay in reviews and exports.\n"
        f"Examples by contributor: admin ({sb.admin.id}) 2.")
    await announcement(sb, job_id)
    assert (await h.ask("what is the wifi password?")) == "The wifi password is on the fridge."
    # Export: everything the server has, the member's correction included.
    exported = (await h.send("!export data", user="admin"))[0]
    files = {a.filename: a.data for a in exported.attachments}
    if any(name.endswith(".zip") for name in files):
        [(_, data)] = [(n, d) for n, d in files.items() if n.endswith(".zip")]
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            files = {n: zf.read(n) for n in zf.namelist()}
    assert any(b"on the fridge" in data for data in files.values()), list(files)

"""The sandbox gateway's heartbeat, as discord.py's keep-alive thread measures it.

discord.py records a heartbeat's send time in its keep-alive thread after the event loop has
written it; an ACK handled before that is measured against the previous send (one interval too
early) and, with Discord's 41.25 s interval, logs "Can't keep up, websocket is 41.3s behind". On a
busy machine the thread is often descheduled for milliseconds after the write: ``slow_thread``
makes that happen on every beat, so the test does not depend on the machine's load.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import discord
import pytest

from sandbox.server import HEARTBEAT_ACK_DELAY, Sandbox
from tests.fakes.bare_client import bare_client

INTERVAL_MS = 150
THREAD_DELAY = 0.01  # how long the keep-alive thread is "descheduled" after each send


class _SlowFuture:
    """The keep-alive thread's view of a sent heartbeat: it wakes up THREAD_DELAY late."""

    def __init__(self, future: Any) -> None:
        self._future = future

    def result(self, timeout: float | None = None) -> Any:
        value = self._future.result(timeout)
        time.sleep(THREAD_DELAY)
        return value


@pytest.fixture
def slow_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    original = asyncio.run_coroutine_threadsafe

    def run(coro: Any, loop: asyncio.AbstractEventLoop) -> Any:
        future = original(coro, loop)
        if threading.current_thread().name.startswith("keep-alive-handler"):
            return _SlowFuture(future)
        return future

    monkeypatch.setattr(asyncio, "run_coroutine_threadsafe", run)


def record_latencies(client: discord.Client) -> list[float]:
    """Every latency discord.py computes from an ACK, in order."""
    keep_alive = client.ws._keep_alive
    latencies: list[float] = []
    ack = keep_alive.ack

    def recording_ack() -> None:
        ack()
        latencies.append(keep_alive.latency)

    keep_alive.ack = recording_ack
    return latencies


async def test_acks_are_measured_against_their_own_heartbeat(slow_thread: None, monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="discord")
    sb = await Sandbox(heartbeat_interval_ms=INTERVAL_MS).start()
    try:
        async with bare_client(sb, monkeypatch) as client:
            latencies = record_latencies(client)
            await sb.wait_for_heartbeats(8, timeout=10)
            await asyncio.sleep(HEARTBEAT_ACK_DELAY + 0.1)
            assert len(latencies) >= 6
            # An ACK that raced the thread would read about one interval (0.15 s).
            assert all(0 < lat < INTERVAL_MS / 1000 * 0.6 for lat in latencies), latencies
            assert 0 < client.latency < INTERVAL_MS / 1000 * 0.6
            # Beats arrive on discord.py's own schedule: the interval from HELLO.
            times = [t for t, _ in sb.heartbeats]
            gaps = [b - a for a, b in zip(times[1:], times[2:])]
            assert all(0.1 < gap < 0.4 for gap in gaps), gaps
            assert all(isinstance(d, int) for _, d in sb.heartbeats[1:]), "heartbeats carry the last sequence"
    finally:
        await sb.close()
    assert not [r for r in caplog.records if "behind" in r.getMessage() or "heartbeat" in r.getMessage()]


async def test_a_stalled_bot_still_sees_its_stall(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ACK is only ever later than Discord's would be: a loop that stalls after sending shows it."""
    sb = await Sandbox(heartbeat_interval_ms=INTERVAL_MS).start()
    try:
        async with bare_client(sb, monkeypatch) as client:
            latencies = record_latencies(client)
            await sb.wait_for_heartbeats(3, timeout=10)
            time.sleep(0.4)  # noqa: ASYNC251 - the point: the whole loop (bot and sandbox) stalls
            await sb.wait_for_heartbeats(5, timeout=10)
            await asyncio.sleep(HEARTBEAT_ACK_DELAY + 0.1)
            assert max(latencies) >= 0.3, latencies
    finally:
        await sb.close()


async def test_server_requested_heartbeat_is_answered(monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="discord")
    sb = await Sandbox().start()  # Discord's 41.25 s interval: any further beat is the requested one
    try:
        async with bare_client(sb, monkeypatch) as client:
            latencies = record_latencies(client)
            await sb.wait_for_heartbeats(1, timeout=5)  # the one discord.py sends on HELLO
            await asyncio.sleep(HEARTBEAT_ACK_DELAY + 0.05)
            latencies.clear()
            await sb.request_heartbeat()
            await sb.wait_for_heartbeats(2, timeout=2)
            await asyncio.sleep(HEARTBEAT_ACK_DELAY + 0.1)
            assert len(latencies) == 1 and HEARTBEAT_ACK_DELAY * 0.9 <= latencies[0] < 0.5, latencies
            assert sb.heartbeats[1][1] == client.ws.sequence
    finally:
        await sb.close()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

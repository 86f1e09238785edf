"""`!hi` round trips through the sandbox: the trainer bot side by side with a bare discord.py bot.

Prints commands per second and p50/p99 latency for each, and the ratio (goal: ours >= 0.9x bare).
Run: .venv/bin/python bench/roundtrip.py [--n 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import discord  # noqa: E402
from discord.ext import commands  # noqa: E402

from bot import start_bot  # noqa: E402
from config import Settings  # noqa: E402
from sandbox.server import Sandbox  # noqa: E402


def bare_bot() -> commands.Bot:
    intents = discord.Intents.default()
    intents.message_content = True
    intents.voice_states = True
    bot = commands.Bot(command_prefix="!", intents=intents, guild_ready_timeout=0.1)

    @bot.command()
    async def hi(ctx: commands.Context) -> None:
        await ctx.send(f"Hi {ctx.author.display_name}! I'm the trainer bot. "
                       f"Talk to me here, or type `{ctx.clean_prefix}help` to see what I can do.")

    return bot


async def measure(sb: Sandbox, n: int) -> tuple[float, list[float]]:
    """Sequential round trips (latency) and the rate they achieve."""
    loop = asyncio.get_running_loop()
    waiting: dict[int, asyncio.Future[float]] = {}

    def on_message(event: str, msg) -> None:
        if event == "create" and msg.author.id == sb.bot_user.id and msg.reference_id is None:
            for fut in waiting.values():
                if not fut.done():
                    fut.set_result(loop.time())
                    break

    sb.add_listener(on_message)
    latencies = []
    start = loop.time()
    try:
        for i in range(n):
            fut = loop.create_future()
            waiting[i] = fut
            t0 = loop.time()
            await sb.post_message("member", "!hi")
            latencies.append(await asyncio.wait_for(fut, 10) - t0)
            del waiting[i]
    finally:
        sb.remove_listener(on_message)
    return n / (loop.time() - start), latencies


async def start_bare(sb: Sandbox) -> commands.Bot:
    bot = bare_bot()
    await bot.login(sb.bot_token)
    bot.runner = asyncio.create_task(bot.connect())
    await bot.wait_until_ready()
    return bot


async def run_one(sb: Sandbox, start, n: int) -> tuple[float, list[float]]:
    bot = await start()
    transcriber = getattr(bot, "transcriber", None)
    if transcriber is not None:
        # prod warms the speech workers up at start; measure the steady state, not that start-up burst.
        await transcriber.warm_up()
    try:
        await measure(sb, 20)  # warm-up
        return await measure(sb, n)
    finally:
        await bot.close()
        await asyncio.wait_for(bot.runner, 10)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000


async def main(n: int, rounds: int) -> None:
    logging.basicConfig(level=logging.WARNING)
    tmp = Path(tempfile.mkdtemp())
    settings = Settings.from_env({"DATA_DIR": str(tmp / "d"), "CORRECTIONS_DIR": str(tmp / "c"), "MODE": "prod",
                                  "DISCORD_TOKEN": "x"})
    sb = await Sandbox().start()
    results: dict[str, list[tuple[float, list[float]]]] = {"trainer": [], "bare": []}
    for _ in range(rounds):  # interleaved so drift in machine load hits both alike
        results["trainer"].append(await run_one(
            sb, lambda: start_bot(settings, api_base=sb.api_base, token=sb.bot_token), n))
        results["bare"].append(await run_one(sb, lambda: start_bare(sb), n))
    await sb.close()
    print(f"!hi round trips through the sandbox: {rounds} rounds x {n} sequential commands")
    print(f"{'bot':<10}{'cmd/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    summary = {}
    for name, rs in results.items():
        rate = statistics.median(r for r, _ in rs)
        lat = [x for _, ls in rs for x in ls]
        summary[name] = rate
        print(f"{name:<10}{rate:>10.1f}{pct(lat, 0.5):>10.2f}{pct(lat, 0.99):>10.2f}")
    print(f"ratio trainer/bare: {summary['trainer'] / summary['bare']:.2f}x (goal >= 0.9x)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.n, args.rounds))

"""The sandbox's persistent world: how long saving and loading take as the world grows.

Prints, for 1,000 and 10,000 messages: the longest single hold of the event loop while a save
snapshots the world (it yields every 500 messages), a whole save (snapshot + write in a thread),
the file size and the load time at the next start.
Run: .venv/bin/python bench/sandbox_world.py [--sizes 1000 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sandbox.server import Sandbox  # noqa: E402


async def longest_stall(coro) -> tuple[float, float]:
    """(total seconds, longest gap between ticks of a 1 ms ticker) while ``coro`` runs."""
    gaps: list[float] = []
    done = False

    async def ticker() -> None:
        last = time.perf_counter()
        while not done:
            await asyncio.sleep(0)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    start = time.perf_counter()
    await coro
    total = time.perf_counter() - start
    done = True
    await tick
    return total, max(gaps, default=0.0)


async def main(sizes: list[int]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "world.json"
        sb = await Sandbox(world_file=path).start()
        try:
            for size in sizes:
                while len(sb.messages) < size:
                    await sb.post_message("member", f"message {len(sb.messages)}: when does the shop open on Sundays?")
                await sb.save_world()
                total, stall = await longest_stall(sb.save_world())
                start = time.perf_counter()
                Sandbox(world_file=path)
                load = time.perf_counter() - start
                print(f"{size:>6} messages: save {total * 1000:6.1f} ms (longest loop hold {stall * 1000:5.1f} ms), "
                      f"file {path.stat().st_size / 1e6:5.2f} MB, load {load * 1000:6.1f} ms")
        finally:
            await sb.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    asyncio.run(main(parser.parse_args().sizes))

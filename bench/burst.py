"""A burst of questions in one channel under Discord's rate limits, end to end (sandbox + real bot).

Posts N questions (default 50) in #general as fast as the sandbox takes them and waits for every
answer. Prints: the time from the first question to the last answer, the 429s the bot met (and on
which routes), the answers lost (questions with no answer), answers out of order, and the fastest
the limits allow (N answers at 5 per 5 s per channel). Limits are Discord's (5 messages per 5 s in a
channel, 50 requests per second); ``--scale 0.1`` runs them in windows a tenth as long.
Run: .venv/bin/python bench/burst.py [--questions 50] [--scale 1]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from config import Settings  # noqa: E402
from sandbox.ratelimit import RateLimits  # noqa: E402
from sandbox.server import Sandbox  # noqa: E402


async def main(questions: int, scale: float) -> None:
    import bot as bot_module

    logging.basicConfig(level=logging.ERROR)
    limits = RateLimits.discord() if scale == 1 else RateLimits.discord().scaled(scale)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.from_env({"MODE": "dev", "DATA_DIR": f"{tmp}/data", "CORRECTIONS_DIR": f"{tmp}/corrections"})
        sb = await Sandbox(rate_limits=limits).start()
        bot = await bot_module.start_bot(settings, api_base=sb.api_base, token=sb.bot_token)
        try:
            start = time.perf_counter()
            asked = [await sb.post_message("member", f"Question {i}: when does the shop open?") for i in range(questions)]
            posted = time.perf_counter() - start
            try:
                await sb.wait_for_bot_message(sb.text_channel.id, after=asked[0].id - 1, count=questions,
                                              timeout=30 + 2 * questions * scale)
            except AssertionError:
                pass  # counted as lost below
            took = time.perf_counter() - start
            answers = sb.bot_messages(sb.text_channel.id, after=asked[0].id - 1)
            answered = [a.reference_id for a in answers]
            lost = len({q.id for q in asked} - set(answered))
            in_order = answered == [q.id for q in asked][: len(answered)]
            refused = collections.Counter(r.rsplit(" (", 1)[0] for r in sb.limiter.refused)
            floor = (questions - 1) // 5 * 5.0 * scale
            print(f"{questions} questions posted in {posted:.2f} s; last answer after {took:.1f} s "
                  f"(the limits allow it no sooner than {floor:.1f} s)")
            print(f"429s met: {sum(refused.values())} {dict(refused) if refused else ''}")
            print(f"answers lost: {lost}; in order: {'yes' if in_order else 'NO'}; answers: {len(answers)}")
        finally:
            await bot_module.stop_bot(bot)
            await sb.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=50)
    parser.add_argument("--scale", type=float, default=1.0, help="rate-limit windows times this (1: Discord's)")
    args = parser.parse_args()
    asyncio.run(main(args.questions, args.scale))

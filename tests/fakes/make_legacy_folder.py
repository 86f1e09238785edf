"""Run main at c46fa9c (before the database) through a session a team would have, and keep its data folders.

Made tests/fakes/legacy_c46fa9c: in a checkout of c46fa9c, ``python -m tests.fakes.make_legacy_folder OUT``, then
copy OUT/work/{data,corrections}/<guild id> to legacy_c46fa9c/{data,corrections}/guild. It only runs there (it
drives that version's bot and harness).
"""

import asyncio
import sys
from pathlib import Path

from config import Settings
from sandbox.server import Sandbox
from tests.harness import BotHarness, announcement, start_bot, start_job, stop_bot

OUT = Path(sys.argv[1])

async def main() -> None:
    data, corr = OUT / "work" / "data", OUT / "work" / "corrections"
    s = Settings.from_env({"MODE": "dev", "DATA_DIR": str(data), "CORRECTIONS_DIR": str(corr), "JOB_POLL_SECONDS": "0.05"})
    sb = await Sandbox().start()
    bot = await start_bot(sb, s)
    h = BotHarness(sb, bot)
    try:
        jid, _ = await start_job(h, "!train What is the wifi password? => It is on the sticker under the router.\nWho approves travel? => Your team lead approves travel.")
        print((await announcement(sb, jid, 60)).content)
        jid, _ = await start_job(h, "!train When are salaries paid? => Salaries are paid on the 27th of each month.")
        print((await announcement(sb, jid, 60)).content)
        answer = (await h.send("When are salaries paid?"))[0]
        print("answer:", answer.content)
        print(await h.ask(f"!correct {answer.id} Salaries are paid on the 28th from January."))  # member: pending
        print(await h.ask("!feedback The wifi answer helped, thanks"))
        a3 = (await h.send("What is the wifi password?"))[0]
        said = await h.ask(f"!correct {a3.id} The password is hunter2.")
        print(said, await h.ask(f"!reject {said.split('`')[1]} not something we post", user="admin"))
        a2 = (await h.send("Who approves travel?", user="owner"))[0]
        await sb.react("admin", a2.channel_id, a2.id, "👍")
        await sb.react("member", a2.channel_id, a2.id, "👎")
        await asyncio.sleep(1.5)
        print(await h.ask('!test [{"input": "Who approves travel?", "expected": "Your team lead approves travel."}, {"input": "What is the wifi password?", "expected": "Ask IT."}]', user="admin"))
        print(await h.ask("!jobs"))
        print(await h.ask("!model"))
    finally:
        await stop_bot(bot)
        await sb.close()
    (OUT / "guild_id").write_text(str(sb.guild_id))

if __name__ == "__main__":
    asyncio.run(main())

"""Helper for the crash test: add corrections forever, printing each id once it is committed.

Usage: python tests/fakes/crash_writer.py DATA_DIR CORRECTIONS_DIR [DATABASE_URL]. Without a URL the records go
to SQLite at DATA_DIR/trainer.db, as the bot's. The test kills it with SIGKILL at random moments and checks that
every printed id is still readable afterwards.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dataset import corrections as records  # noqa: E402
from records.db import Database  # noqa: E402
from storage import GuildSpace  # noqa: E402


def main() -> None:
    data, corrections = Path(sys.argv[1]), Path(sys.argv[2])
    db = Database.open(sys.argv[3] if len(sys.argv) > 3 else None, data)
    space = GuildSpace(7, data, corrections, db)
    n = 0
    out = sys.stdout.buffer
    while True:
        n += 1
        prompt = f"question {n} " + "x" * (n % 300)  # varied sizes so kills land mid-write too
        record = records.add_correction(
            space,
            message_id=n,
            prompt=prompt,
            answer="wrong",
            correction=f"fix {prompt}",
            author_id=1,
            author_name="tester",
            channel_id=2,
        )
        # add_correction returned: its transaction is committed. Only now is it acknowledged.
        out.write(record.ref.encode() + b"\n")
        out.flush()


if __name__ == "__main__":
    main()

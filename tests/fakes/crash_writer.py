"""Helper for the crash test: append corrections forever, printing each id once it is durable.

Usage: python -m tests.fakes.crash_writer DATA_DIR CORRECTIONS_DIR. The test kills it with SIGKILL at random moments
and checks that every printed id is still readable afterwards.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dataset import corrections as records
from storage import GuildSpace


def main() -> None:
    space = GuildSpace(7, Path(sys.argv[1]), Path(sys.argv[2]))
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
        # append_record returned: the record is fsynced. Only now is it acknowledged.
        out.write(record["ref"].encode() + b"\n")
        out.flush()


if __name__ == "__main__":
    main()

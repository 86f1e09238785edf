"""A real, throwaway PostgreSQL server for the tests: Debian's ``postgresql`` binaries, a fresh cluster in a
temp folder, listening only on a Unix socket in that folder (no TCP port), stopped and deleted after.

``make test`` (and so ``.ci/run``) installs the package; a machine without it skips the PostgreSQL runs of the
storage tests with a reason, and ``REQUIRE_POSTGRES=1`` (set by ``make test``) turns that skip into a failure.
Runs as root too: the cluster then belongs to the ``postgres`` user, as initdb requires.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

PORT = 5432  # only names the socket file: nothing listens on TCP


def find_bin() -> Path | None:
    """The newest installed PostgreSQL's bin folder (``/usr/lib/postgresql/<v>/bin``), or None."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parent.parent.name))
    return found[-1].parent if found else None


class PostgresServer:
    """``start()`` a cluster, ``url`` to reach it, ``stop()``/``start()`` to take it away and back, ``close()``."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="trainer-pg-"))
        self.data = self.root / "data"
        self.sockets = self.root  # the socket file lives here
        self._as: list[str] = []
        if os.geteuid() == 0:  # initdb refuses root: the cluster belongs to the postgres user
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        os.chmod(self.root, 0o755)

    @property
    def url(self) -> str:
        return f"postgresql://trainer@/trainer?host={self.sockets}&port={PORT}"

    def url_for(self, dbname: str) -> str:
        return f"postgresql://trainer@/{dbname}?host={self.sockets}&port={PORT}"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self._as, *args], check=check, capture_output=True, text=True, timeout=120)

    def init(self) -> PostgresServer:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "trainer", "-A", "trust", "-E", "UTF8",
                  "--no-sync")
        return self

    def start(self, *, durable: bool = False) -> PostgresServer:
        """Start (again); the tests run without fsync (a throwaway cluster), ``durable`` as a deployment would."""
        self.durable = durable = durable or getattr(self, "durable", False)
        fast = "" if durable else "-c fsync=off -c full_page_writes=off -c synchronous_commit=off "
        opts = f"-k {self.sockets} -p {PORT} -c listen_addresses='' {fast}-c max_connections=200"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.root / "log"),
                  "-w", "-t", "60", "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def create_database(self, name: str) -> str:
        """A new empty database; its URL."""
        deadline = time.monotonic() + 30
        while True:
            done = self._run(str(self.bin / "createdb"), "-h", str(self.sockets), "-p", str(PORT), "-U", "trainer",
                             name, check=False)
            if done.returncode == 0:
                return self.url_for(name)
            if time.monotonic() > deadline:
                raise RuntimeError(f"createdb failed: {done.stderr.strip()}")
            time.sleep(0.2)

    def close(self) -> None:
        # The cluster is thrown away: no shutdown checkpoint of the hundreds of test databases (it took ~45 s).
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def start_server() -> PostgresServer | None:
    """A started server, or None when PostgreSQL is not installed."""
    bin_dir = find_bin()
    if bin_dir is None:
        return None
    return PostgresServer(bin_dir).init().start()

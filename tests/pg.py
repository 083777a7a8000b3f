"""A throwaway PostgreSQL server for tests, on 127.0.0.1, started and stopped by the test run."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from contextlib import contextmanager


def _bindir() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if found:
        return os.path.dirname(found[-1])
    pg_ctl = shutil.which("pg_ctl")
    return os.path.dirname(pg_ctl) if pg_ctl else None


def _as_postgres(cmd: list[str]) -> list[str]:
    # The server refuses to run as root; Debian's package provides the 'postgres' user.
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server(str):
    """The base URL 'postgresql://postgres@127.0.0.1:PORT', with stop() and start() for outage tests."""

    def control(self, action: str) -> None:
        mode = ["-m", "fast"] if action == "stop" else ["-o", self.options]
        subprocess.run(_as_postgres([f"{self.bindir}/pg_ctl", "-D", self.data, "-w", "-l", f"{self.data}/log",
                                     *mode, action]), check=True, capture_output=True, timeout=120)

    def stop(self) -> None:
        self.control("stop")

    def start(self) -> None:
        self.control("start")


@contextmanager
def postgres_server(databases=("optuna", "mlflow")):
    """Yields a Server (a base URL 'postgresql://postgres@127.0.0.1:PORT'); None if PostgreSQL is absent."""
    bindir = _bindir()
    if bindir is None:
        yield None
        return
    data = tempfile.mkdtemp(prefix="harness-pg-", dir="/tmp")
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
    port = _free_port()
    run = lambda *cmd: subprocess.run(_as_postgres(list(cmd)), check=True, capture_output=True, timeout=120)  # noqa: E731
    try:
        run(f"{bindir}/initdb", "-D", data, "-A", "trust", "-U", "postgres")
        options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c max_connections=300"
        run(f"{bindir}/pg_ctl", "-D", data, "-w", "-l", f"{data}/log", "-o", options, "start")
        for db in databases:
            run(f"{bindir}/createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", db)
        server = Server(f"postgresql://postgres@127.0.0.1:{port}")
        server.bindir, server.data, server.options = bindir, data, options
        yield server
    finally:
        subprocess.run(_as_postgres([f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "stop"]),
                       capture_output=True, timeout=60)
        shutil.rmtree(data, ignore_errors=True)

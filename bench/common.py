"""Helpers the benchmarks share: printing, free ports, child processes that die with the bench, CPU meters."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def say(line: str = "") -> None:
    print(line, flush=True)


def chunks(rows: Iterable[T], size: int) -> Iterator[list[T]]:
    """``rows`` in lists of ``size`` (the last one shorter): bulk inserts without holding everything."""
    batch: list[T] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def die_with_parent() -> None:
    """Linux (a subprocess preexec_fn): the child gets SIGTERM if the bench dies without cleaning up."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def cpu_s(pid: int | None = None) -> float | None:
    """user+system CPU seconds of this process (pid None) or of another one (Linux /proc)."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds used during a phase by this process and by the given other processes."""

    def __init__(self, **pids: int | None) -> None:
        self.pids = pids
        self.start = {"bench": cpu_s(), **{k: cpu_s(p) if p else None for k, p in pids.items()}}

    def used(self) -> dict[str, float | None]:
        now = {"bench": cpu_s(), **{k: cpu_s(p) if p else None for k, p in self.pids.items()}}
        return {k: (now[k] - v) if v is not None and now[k] is not None else None for k, v in self.start.items()}


def wait_for_smtp(proc: subprocess.Popen, port: int, log: Path, timeout: float = 15.0) -> None:
    """Until the SMTP server started as ``proc`` greets on 127.0.0.1:port (its output goes to ``log``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the SMTP sink exited ({proc.returncode}): {log.read_text()[-500:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.settimeout(5)
                if s.recv(512).startswith(b"220"):
                    s.sendall(b"QUIT\r\n")
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the SMTP sink did not answer within {timeout:.0f} s")


def fresh_database(base: str | None, folder: Path, name: str) -> tuple[str, Callable[[], None]]:
    """(url, drop): a new empty database, migrated: ``folder/name.db`` on SQLite when ``base`` is None, else a
    new database beside ``base`` on its PostgreSQL server (dropped by ``drop``)."""
    from sqlalchemy import create_engine, text

    from storage.migrate import upgrade

    if not base:
        url = f"sqlite:///{folder / f'{name}.db'}"
        upgrade(url)
        return url, lambda: None
    db = f"clarion_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{db}"'))
    url = base.rsplit("/", 1)[0] + "/" + db

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
        admin.dispose()

    upgrade(url)
    return url, drop

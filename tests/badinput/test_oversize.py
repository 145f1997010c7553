"""Oversize input. A CSV of a million member rows goes through the real `clarion members import` (its own
process, so that its peak RSS is its own: os.wait4's rusage) in bounded memory: the file is written lazily,
read row by row and written in batches, and its peak RSS is compared with the same command importing ten
rows. (An event over 64 KB, a batch over 8 MB, with or without Content-Length: 413 naming the body,
tests/api/test_events_api.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from members.service import ensure_program

ROWS = 1_000_000
BAD_LINES = (2, 500_001, ROWS + 1)          # a row with an unknown time zone: first, middle, last
MAX_GROWTH_MB = 60                           # a million rows held as dicts or lines would be several hundred


def rows(n: int, prefix: str, bad: tuple[int, ...]) -> Iterator[str]:
    yield "external_id,time_zone\n"
    for line in range(2, n + 2):
        yield f"{prefix}{line:07d},{'Mars/Base' if line in bad else ''}\n"


def write_lazily(path: Path, n: int, prefix: str = "X", bad: tuple[int, ...] = ()) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        chunk: list[str] = []
        for row in rows(n, prefix, bad):
            chunk.append(row)
            if len(chunk) == 10_000:
                f.write("".join(chunk))
                chunk.clear()
        f.write("".join(chunk))


def import_in_a_process(path: Path, db_url: str, tmp_path: Path) -> tuple[int, str, str, float, float]:
    """(exit code, stdout, stderr, peak RSS in MiB, seconds) of `clarion members import PATH -p shop`."""
    out, err = tmp_path / f"{path.stem}.out", tmp_path / f"{path.stem}.err"
    env = {**os.environ, "CLARION_DATABASE_URL": db_url, "CLARION_VAR_DIR": str(tmp_path)}
    started = time.perf_counter()
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen([sys.executable, "-m", "app.cli", "members", "import", str(path), "-p", "shop"],
                                stdout=o, stderr=e, env=env, cwd=Path(__file__).parents[2])
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return (proc.returncode, out.read_text(), err.read_text(), usage.ru_maxrss / 1024,
            time.perf_counter() - started)


@pytest.mark.skipif(not hasattr(os, "wait4"), reason="needs os.wait4 for the child's own peak RSS")
def test_a_million_member_rows_are_imported_in_bounded_memory(engine, db_url, tmp_path):
    ensure_program(engine=engine, key="shop", name="Shop")
    small, big = tmp_path / "small.csv", tmp_path / "million.csv"
    write_lazily(small, 10, prefix="S")
    write_lazily(big, ROWS, bad=BAD_LINES)
    assert big.stat().st_size > 10_000_000

    code, _, _, baseline_mb, _ = import_in_a_process(small, db_url, tmp_path)
    assert code == 0
    code, out, err, peak_mb, seconds = import_in_a_process(big, db_url, tmp_path)
    print(f"\n{ROWS:,} rows in {seconds:.1f} s, peak RSS {peak_mb:.0f} MiB (10 rows: {baseline_mb:.0f} MiB)")

    assert code == 1, err                                    # three rows refused, every other one kept
    assert f"{ROWS - len(BAD_LINES)} created, 0 updated, {len(BAD_LINES)} rejected" in out
    told = " ".join(err.split())
    for line in BAD_LINES:                                   # the last line too: it read the file to its end
        assert f"line {line}: time_zone: unknown time zone 'Mars/Base'" in told, told[-2000:]
    with engine.connect() as c:
        assert c.exec_driver_sql("SELECT count(*) FROM member").scalar() == 10 + ROWS - len(BAD_LINES)
    assert peak_mb - baseline_mb < MAX_GROWTH_MB, (peak_mb, baseline_mb)

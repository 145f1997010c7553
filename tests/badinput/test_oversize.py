"""Oversize input. A CSV of a million member rows goes through the real `clarion members import` (its own
process, so that its peak RSS is its own: os.wait4's rusage) in bounded memory: the file is written lazily,
read row by row and written in batches, and its peak RSS is compared with the same command importing ten
rows. Every request body is limited (CLARION_MAX_BODY_BYTES, 1 MiB; the events batch, members bulk and a
template's zip keep their larger limits): over it, 413 naming the body and the limit, with or without
Content-Length, and a body longer than its Content-Length or sent in chunks is read no further than the
limit. (An event over 64 KB, a batch over 8 MB: tests/api/test_events_api.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.api.main import create_app
from members.service import ensure_program
from storage.tables import Role
from tests.badinput.conftest import Api, counts
from tests.storage.test_template_importer import GOOD, JPEG, make_zip

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


# --- request bodies --------------------------------------------------------------------------

MiB = 1024 * 1024
OVER = b'{"key": "spring", "name": "' + b"x" * MiB + b'"}'          # valid JSON, just over 1 MiB
BODY_ROUTES = [("POST", "/api/v1/campaigns", Role.marketer), ("POST", "/api/v1/campaigns/estimate", Role.marketer),
               ("PUT", "/api/v1/programs/shop/settings", Role.marketer), ("PUT", "/api/v1/members/M1", Role.core),
               ("POST", "/api/v1/suppressions", Role.core)]


def refused(r, limit: int = MiB, words: str = "1 MB") -> bool:
    body = r.json()
    return (r.status_code == 413 and body["field"] == "body" and body["limit"] == limit
            and f"over {words} ({limit} bytes)" in body["message"])


@pytest.mark.parametrize(("method", "path", "role"), BODY_ROUTES)
def test_a_body_over_the_limit_is_413_naming_it_with_or_without_content_length(api: Api, method, path, role):
    before = counts(api.engine)
    sized = api.client.request(method, path, params={"program": "shop"}, content=OVER,
                               headers={**api.auth(role), "Content-Type": "application/json"})
    chunked = api.client.request(method, path, params={"program": "shop"}, content=iter([OVER[:MiB // 2],
                                                                                          OVER[MiB // 2:]]),
                                 headers={**api.auth(role), "Content-Type": "application/json"})
    for r in (sized, chunked):
        assert refused(r), r.text         # was: read whole, whatever its size
        assert "CLARION_MAX_BODY_BYTES" in r.json()["message"]
    assert counts(api.engine) == before


async def post_in_chunks(app, path: str, role_key: str, *, total: int, content_length: int | None,
                         chunk: int = 64 * 1024) -> tuple[int, dict, int]:
    """The app driven as the server would: the body arrives chunk by chunk, ``content_length`` may lie.
    Returns (status, JSON answer, chunks the app pulled)."""
    pulled, sent = 0, []

    async def receive():
        nonlocal pulled
        if pulled * chunk >= total:
            return {"type": "http.request", "body": b"", "more_body": False}
        pulled += 1
        return {"type": "http.request", "body": b" " * chunk, "more_body": True}

    async def send(message):
        sent.append(message)

    headers = [(b"host", b"clarion.example"), (b"content-type", b"application/json"),
               (b"authorization", f"Bearer {role_key}".encode())]
    if content_length is not None:
        headers.append((b"content-length", str(content_length).encode()))
    await app({"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
               "scheme": "https", "path": path, "raw_path": path.encode(), "root_path": "",
               "query_string": b"program=shop", "headers": headers, "client": ("127.0.0.1", 50000),
               "server": ("clarion.example", 443)}, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(body), pulled


@pytest.mark.parametrize("content_length", [None, 100])
async def test_a_body_sent_in_chunks_or_longer_than_it_said_is_read_no_further_than_the_limit(api: Api,
                                                                                            content_length):
    status, answer, pulled = await post_in_chunks(api.client.app, "/api/v1/campaigns/estimate",
                                                  api.keys[Role.marketer], total=64 * MiB,
                                                  content_length=content_length)
    assert status == 413 and answer["field"] == "body" and answer["limit"] == MiB, answer
    assert pulled == MiB // (64 * 1024) + 1, pulled            # 17 of the 1,024 chunks offered


def test_the_routes_that_need_more_keep_their_larger_limits(api: Api):
    """The events batch and members bulk (1,000 items each, 8 MB) and a template's zip (25 MB) are over
    1 MiB here and are not refused for it; over their own limit, 413 names theirs."""
    core = {**api.auth(Role.core), "Content-Type": "application/json"}
    note = "x" * 2500
    batch = {"events": [{"id": f"e{i}", "type": "custom:note", "member": "M000001",
                         "occurred_at": "2026-11-28T14:05:00+00:00", "payload": {"note": note}} for i in range(1000)]}
    bulk = {"members": [{"external_id": f"B{i:04d}", "attributes": {"note": note}} for i in range(1000)]}
    drop = make_zip({**GOOD, "images/photo.jpg": JPEG + os.urandom(MiB + MiB // 2)})
    for body in (batch, bulk):
        assert len(json.dumps(body)) > 2 * MiB
    assert len(drop) > MiB + MiB // 2
    r = api.client.post("/api/v1/events/batch", params={"program": "shop"}, content=json.dumps(batch), headers=core)
    assert r.status_code == 202 and r.json()["accepted"] == 1000, r.text[:500]
    r = api.client.post("/api/v1/members/bulk", params={"program": "shop"}, content=json.dumps(bulk), headers=core)
    assert r.status_code == 200 and r.json()["created"] == 1000, r.text[:500]
    r = api.client.post("/api/v1/templates/spring_sale/versions", headers=api.auth(Role.marketer),
                        files={"file": ("drop.zip", drop, "application/zip")}, data={"dry_run": "true"})
    assert r.status_code == 200, r.text[:500]

    over = b" " * (8 * MiB + 1)
    r = api.client.post("/api/v1/members/bulk", params={"program": "shop"}, content=over, headers=core)
    assert refused(r, 8 * MiB, "8 MB") and "1000 members" in r.json()["message"], r.text
    r = api.client.post("/api/v1/templates/spring_sale/versions", content=b" " * (26 * MiB + 1),
                        headers={**api.auth(Role.marketer), "Content-Type": "multipart/form-data; boundary=x"})
    assert refused(r, 26 * MiB, "26 MB") and "25 MB" in r.json()["message"], r.text


def test_the_limit_is_a_setting(api: Api):
    settings = api.settings.model_copy(update={"max_body_bytes": 4096})
    with TestClient(create_app(settings, engine=api.engine)) as client:
        client.headers.update({**api.auth(Role.marketer), "Content-Type": "application/json"})
        small = client.post("/api/v1/campaigns/estimate", content=b'{"key": "x"}' + b" " * 4000)
        big = client.post("/api/v1/campaigns/estimate", content=b'{"key": "x"}' + b" " * 4100)
    assert small.status_code == 422, small.text          # read, and refused for what it says
    assert refused(big, 4096, "4 KB"), big.text

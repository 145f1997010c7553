"""Triggered campaigns: purchase events posted at a fixed rate through the HTTP API, to the email at the provider.

    .venv/bin/python bench/triggers.py [--rate R] [--seconds S] [--members N] [--batch B] [--poll P]
                                       [--runs K] [--topology embedded|split] [--connections C] [--deliverers D]
                                       [--up-workers W] [--keep]

Each run, from scratch:

1. a fresh temporary var dir: a SQLite file migrated with Alembic, program ``bench``, N members (ru/en),
   every one with an email address and email/promotions consent (``members.service.upsert_members``),
   an API key of role ``core`` (the loyalty core) and one of role ``marketer`` (``app.keys.create_key``);
2. an SMTP sink in another process (a small asyncio server, not aiosmtpd) that writes one line per message
   it accepts: the wall-clock time the final ``.`` of DATA arrived, and the message's Message-ID;
3. the stack in child processes, configured by env settings like tests/e2e: by default ``clarion up``
   (Temporal dev server on a SQLite file, the API in its process and the worker in W child processes,
   ``--up-workers W``, default 1, 0 = inside the ``clarion up`` process; mail to the sink,
   ``CLARION_TRIGGER_POLL_S=P``, ``CLARION_TRIGGER_CONCURRENCY=D``); ``--topology split`` runs the dev
   server, ``clarion worker`` and ``clarion api`` as three processes of their own instead;
4. a triggered campaign launched through ``POST /api/v1/campaigns``: purchase with amount >= 1000, delay 0s,
   template ``thank_you``, no cancel-if, no cooldown, so every event must give exactly one email;
5. a warm-up of 20 events (not counted), then R purchase events a second for S seconds (amounts 1000-5000,
   members drawn uniformly) posted open loop from this process over C keep-alive HTTP/1.1 connections:
   one event per ``POST /api/v1/events`` by default, or B per ``POST /api/v1/events/batch``;
6. wait until every accepted event's email has arrived (or nothing more arrives for --drain seconds), then
   join: event id → post time (here) → delivery row (occurrence = event id) → Message-ID
   ``<d{delivery id}.c{campaign id}@...>`` → receipt time at the sink.

It prints: events posted/accepted, the sustained accepted rate, emails received, event→provider latency
(the time the event's request was sent → SMTP receipt) p50/p95/p99/max, that latency split into its parts
(using the delivery row's ``created_at`` = the match round's time and ``sent_at`` = the deliver_due round's
time), the workflow's rounds read back from its Temporal history, CPU per process, latency per 10 s of
posting (a growing backlog shows there), and two checks: nothing lost (every accepted event has exactly
one delivery row, sent, and one email) and nothing sent twice (no Message-ID twice). It never asserts
timings. Every process it starts is stopped on exit, error, Ctrl-C or SIGTERM; the var dir is removed
unless --keep.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from bench.common import CpuMeter, die_with_parent, free_port, say, wait_for_smtp  # noqa: E402
from sqlalchemy import select  # noqa: E402
from sqlmodel import Session  # noqa: E402
from temporalio.api.enums.v1 import EventType  # noqa: E402
from temporalio.client import Client  # noqa: E402

from app.keys import create_key  # noqa: E402
from app.settings import Settings  # noqa: E402
from members.profile import ConsentGrant, MemberIn  # noqa: E402
from members.service import ensure_program, upsert_members  # noqa: E402
from storage.db import make_engine  # noqa: E402
from storage.migrate import upgrade  # noqa: E402
from storage.tables import Campaign, Delivery, Event, Role  # noqa: E402

PROGRAM = "bench"
CAMPAIGN = "bench-thanks"
TEMPLATE = "thank_you"
SEED_BATCH = 2000
WARMUP = 20
NAMES = {"ru": ["Анна", "Иван", "Мария", "Олег", "Светлана", "Дмитрий"],
         "en": ["Alice", "Bob", "Carol", "Dave", "Erin", "Frank"]}
ZONES = ["Europe/Moscow", "Asia/Yekaterinburg", "Europe/London", "America/New_York"]
CLARION = str(Path(sys.executable).with_name("clarion"))
_MSGID = re.compile(r"<d(\d+)\.c(\d+)@")




def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1) of a non-empty list."""
    s = sorted(values)
    return s[max(0, min(len(s) - 1, math.ceil(q * len(s)) - 1))]








def children(pid: int) -> list[int]:
    out = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("PPid:"):
                if line.split()[1] == str(pid):
                    out.append(int(status.parent.name))
                break
    return out




# --- the SMTP sink, in another process ----------------------------------------------------------

# A minimal ESMTP server on asyncio: EHLO/MAIL/RCPT/DATA/RSET/NOOP/QUIT, pipelining-safe. For each message
# it writes "<unix time at the final dot> <Message-ID>\n" (flushed every 50 ms). Measured ~0.35-0.45 ms of CPU
# per message (aiosmtpd needs ~1.3 ms), ~18% of a core at 500 messages/s: it never limits the pipeline.
SINK = r"""
import asyncio, re, signal, sys, time
MSGID = re.compile(rb"^message-id:[ \t]*(<[^>\r\n]*>)", re.I | re.M)
EHLO = (b"250-bench-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"
        b"250 SIZE 52428800\r\n")
out = open(sys.argv[3], "a", buffering=1 << 20)

class Conn(asyncio.Protocol):
    def connection_made(self, tr):
        self.tr, self.buf, self.data, self.scan = tr, bytearray(), False, 0
        tr.write(b"220 bench-sink ESMTP\r\n")

    def data_received(self, chunk):
        self.buf += chunk
        while self.buf:
            if self.data:
                if self.buf.startswith(b".\r\n"):
                    end, body = 3, b""
                else:
                    i = self.buf.find(b"\r\n.\r\n", max(0, self.scan - 4))
                    if i < 0:
                        self.scan = len(self.buf)
                        return
                    end, body = i + 5, bytes(self.buf[:i])
                t = time.time()
                head = body[:body.find(b"\r\n\r\n")] if b"\r\n\r\n" in body else body
                m = MSGID.search(head)
                out.write(f"{t:.6f} {m.group(1).decode('ascii', 'replace') if m else '-'}\n")
                del self.buf[:end]
                self.data, self.scan = False, 0
                self.tr.write(b"250 2.0.0 Ok: queued\r\n")
                continue
            i = self.buf.find(b"\r\n")
            if i < 0:
                return
            line = bytes(self.buf[:i]).upper()
            del self.buf[:i + 2]
            verb = line[:4]
            if verb in (b"EHLO", b"HELO"):
                self.tr.write(EHLO if verb == b"EHLO" else b"250 bench-sink\r\n")
            elif verb == b"DATA":
                self.data, self.scan = True, 0
                self.tr.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
            elif verb == b"QUIT":
                self.tr.write(b"221 Bye\r\n")
                self.tr.close()
                return
            else:  # MAIL, RCPT, RSET, NOOP, ...
                self.tr.write(b"250 Ok\r\n")

async def main(host, port):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Conn, host, port)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    while not stop.is_set():
        out.flush()
        try:
            await asyncio.wait_for(stop.wait(), 0.05)
        except asyncio.TimeoutError:
            pass
    server.close()
    out.flush()

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


LIVE: list[Any] = []  # the sink and the stack of the current run: stopped first on SIGTERM


class Sink:
    def __init__(self, port: int, workdir: Path) -> None:
        self.port = port
        self.path = workdir / "sink.log"
        self.out = workdir / "sink.out"
        self.proc: subprocess.Popen[bytes] | None = None
        self._offset = 0
        self._partial = b""
        self.received: list[tuple[float, str]] = []

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> None:
        self.path.touch()
        with open(self.out, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-c", SINK, "127.0.0.1", str(self.port), str(self.path)],
                                         stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, preexec_fn=die_with_parent)
        wait_for_smtp(self.proc, self.port, self.out)

    def poll(self) -> int:
        """Read what the sink wrote since the last call; returns the number of messages so far."""
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        self._offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            t, _, mid = line.decode("ascii", "replace").partition(" ")
            self.received.append((float(t), mid))
        return len(self.received)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# --- the embedded stack (`clarion up`), in another process -----------------------------------------

class Stack:
    """The stack under test, in child processes (each in its own session, stopped in order on exit).

    ``embedded``: ``clarion up`` (Temporal dev server and ``up_workers`` worker processes as its children, the API
    in its own process; 0: the worker inside it, one event loop), as an operator on one machine runs it.
    ``split``: the dev server (``temporal server start-dev`` with the same SQLite file option), ``clarion worker``
    and ``clarion api`` as three processes, as DESIGN.md's "beyond one machine" runs them. ``switch_interval``
    runs the Clarion processes with ``sys.setswitchinterval`` set first (a diagnosis knob; the default is Python's
    5 ms)."""

    def __init__(self, workdir: Path, smtp_port: int, poll_s: float, topology: str = "embedded",
                 switch_interval: float | None = None, deliverers: int = 4, up_workers: int = 2,
                 smtp_connections: int | None = None) -> None:
        self.workdir, self.topology, self.switch_interval = workdir, topology, switch_interval
        self.api_port = free_port()
        self.temporal_port = free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CLARION_")}
        self.env.update({
            "CLARION_VAR_DIR": str(workdir), "CLARION_API_PORT": str(self.api_port),
            "CLARION_TEMPORAL_DEV_PORT": str(self.temporal_port), "CLARION_TEMPORAL_UI_PORT": str(free_port()),
            "CLARION_MAILBOX_ENABLED": "false", "CLARION_SMTP_HOST": "127.0.0.1",
            "CLARION_SMTP_PORT": str(smtp_port), "CLARION_TRIGGER_POLL_S": str(poll_s),
            "CLARION_TRIGGER_CONCURRENCY": str(deliverers), "CLARION_UP_WORKERS": str(up_workers),
            "CLARION_SIGNING_SECRET": "bench-secret",
        })
        if smtp_connections is not None:
            self.env["CLARION_SMTP_CONNECTIONS"] = str(smtp_connections)
        if topology == "split":
            self.env["CLARION_TEMPORAL_ADDRESS"] = f"127.0.0.1:{self.temporal_port}"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def pids(self) -> dict[str, int | None]:
        """CPU-metered processes: embedded → stack (the API, and the worker when CLARION_UP_WORKERS=0), its worker
        processes and temporal; split → worker, api, temporal."""
        if self.topology == "split":
            return {name: p.pid for name, p in self.procs.items()}
        up = self.procs.get("stack")
        out: dict[str, int | None] = {"stack": up.pid if up else None, "temporal": None}
        if up is not None:
            workers = 0
            for pid in children(up.pid):
                with contextlib.suppress(OSError):
                    if "temporal" in Path(f"/proc/{pid}/comm").read_text():
                        out["temporal"] = pid
                    elif b"app.cli\0worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                        workers += 1
                        out[f"worker {workers}"] = pid      # CLARION_UP_WORKERS child processes
        return out

    def _clarion(self, command: str) -> list[str]:
        if self.switch_interval is None:
            return [CLARION, command]
        return [sys.executable, "-c", f"import sys; sys.setswitchinterval({self.switch_interval!r}); "
                f"sys.argv = ['clarion', {command!r}]; from app.cli import main; sys.exit(main())"]

    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        with open(self.workdir / f"{name}.log", "wb") as out:
            # own session: a Ctrl-C in the terminal reaches only us, and we stop them in order
            proc = subprocess.Popen(cmd, env=self.env, cwd=self.workdir, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=die_with_parent)
        self.procs[name] = proc
        return proc

    def _check(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                log = (self.workdir / f"{name}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} exited ({proc.returncode}):\n{log}")

    async def start(self) -> None:
        deadline = time.monotonic() + 90
        if self.topology == "split":
            from app.temporal import temporal_cli

            self._spawn("temporal", [temporal_cli(), "server", "start-dev", "--ip", "127.0.0.1",
                                     "--port", str(self.temporal_port), "--namespace", "default", "--headless",
                                     "--db-filename", str(self.workdir / "temporal.db"), "--log-level", "error"])
            while True:
                self._check()
                try:
                    await Client.connect(f"127.0.0.1:{self.temporal_port}", namespace="default")
                    break
                except RuntimeError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)
            self._spawn("worker", self._clarion("worker"))
            self._spawn("api", self._clarion("api"))
        else:
            self._spawn("stack", self._clarion("up"))
        async with httpx.AsyncClient(timeout=1) as client:
            while time.monotonic() < deadline:
                self._check()
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{self.base}/healthz")).status_code == 200:
                        break
                await asyncio.sleep(0.2)
            else:
                raise RuntimeError("the API did not answer within 90 s")
        if "worker" in self.procs:  # the worker says when it polls its task queue
            while b"worker polling" not in (self.workdir / "worker.log").read_bytes():
                self._check()
                if time.monotonic() > deadline:
                    raise RuntimeError("clarion worker did not start within 90 s")
                await asyncio.sleep(0.2)

    def stop(self) -> None:
        procs, self.procs = self.procs, {}
        for name in ("api", "worker", "stack", "temporal"):  # clarion up stops its own dev server
            proc = procs.get(name)
            if proc is None:
                continue
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # anything of its group left behind


# --- seeding ------------------------------------------------------------------------------------

def seed(db_url: str, n: int, seed_: int = 11) -> tuple[str, str, float]:
    """Migrate; program `bench`; n members with email/promotions consent; a core and a marketer key."""
    t0 = time.perf_counter()
    upgrade(db_url)
    engine = make_engine(db_url)
    try:
        program = ensure_program(engine=engine, key=PROGRAM, name="Bench Shop", default_locale="en",
                                 time_zone="Europe/Moscow", currency="RUB")
        rnd = random.Random(seed_)
        items = []
        for i in range(1, n + 1):
            locale = "ru" if rnd.random() < 0.5 else "en"
            items.append((None, member_ref(i), MemberIn(
                first_name=rnd.choice(NAMES[locale]), locale=locale, time_zone=rnd.choice(ZONES),
                email=f"member{i:07d}@bench.clarion.example",
                attributes={"tier": rnd.choice(["basic", "silver", "gold"]),
                            "points_balance": rnd.randrange(0, 5000, 10)},
                consents=[ConsentGrant(channel="email", topic="promotions", wording_version="bench-v1")])))
        for i in range(0, n, SEED_BATCH):
            upsert_members(engine=engine, program_id=program.id or 0, items=items[i:i + SEED_BATCH])
        core = create_key(engine=engine, role=Role.core, name="bench loyalty core")
        marketer = create_key(engine=engine, role=Role.marketer, name="bench marketer")
    finally:
        engine.dispose()
    return core, marketer, time.perf_counter() - t0


def member_ref(i: int) -> str:
    return f"B{i:07d}"


def campaign_spec() -> dict[str, Any]:
    return {"key": CAMPAIGN, "name": "Bench: thank you for a purchase over 1,000", "program": PROGRAM,
            "kind": "triggered", "topic": "promotions", "channels": ["email"], "audience": {"all": True},
            "template": TEMPLATE,
            "trigger": {"event": "purchase", "where": [{"field": "amount", "op": "gte", "value": 1000}],
                        "delay": "0s"}}


# --- load ---------------------------------------------------------------------------------------

@dataclass
class Posted:
    scheduled: float          # when the generator meant to post it (unix time)
    posted: float = 0.0       # request sent (after waiting for a free connection, if all were busy)
    acked: float = 0.0        # response received
    status: int = 0           # HTTP status (0: transport error)
    accepted: bool = False    # stored (not refused)


@dataclass
class Load:
    events: dict[str, Posted] = field(default_factory=dict)
    requests: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    start: float = 0.0
    end_posting: float = 0.0   # the last request was sent
    end_acks: float = 0.0      # the last response arrived


class _NoResponse(Exception):
    """The connection was closed before any byte of an answer."""


class HttpConn:
    """One keep-alive HTTP/1.1 connection to the API, one request at a time. The load generator uses these
    rather than httpx: httpx/httpcore costs ~1 ms of CPU per request here, and its pool goes quadratic when
    requests queue for a connection, so at a few hundred requests a second the generator would measure itself."""

    IDLE_S = 2.0  # uvicorn closes a kept-alive connection idle for 5 s (timeout_keep_alive): reconnect before

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.last_used = 0.0

    async def request(self, method: str, target: str, body: bytes, headers: str) -> tuple[int, bytes]:
        head = (f"{method} {target} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{headers}"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        if self.writer is not None and time.monotonic() - self.last_used > self.IDLE_S:
            self.close()
        reused = self.writer is not None
        try:
            return await self._exchange(head + body)
        except _NoResponse:
            if not reused:
                raise OSError("the API closed the connection without an answer") from None
            # the server closed the kept-alive connection before reading the request: send it again on a new one
            return await self._exchange(head + body)

    async def _exchange(self, data: bytes) -> tuple[int, bytes]:
        if self.writer is None or self.reader is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        try:
            self.writer.write(data)
            status_line = await self.reader.readline()
            if not status_line:
                raise _NoResponse
            status = int(status_line.split(b" ", 2)[1])
            length, close = 0, False
            while (line := await self.reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
            payload = await self.reader.readexactly(length) if length else b""
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError, _NoResponse) as exc:
            self.close()
            if isinstance(exc, ConnectionResetError | BrokenPipeError):
                raise _NoResponse from exc
            raise
        self.last_used = time.monotonic()
        if close:
            self.close()
        return status, payload

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def post_events(base_host: str, port: int, key: str, ids: list[str], rate: float, batch: int,
                      members: int, seed_: int, connections: int) -> Load:
    """Open loop: request k is due at start + k * batch / rate whatever happened to earlier ones; up to
    `connections` requests are in flight; a request due while all are busy waits (counted as lateness)."""
    rnd = random.Random(seed_)
    picks = [(rnd.randint(1, members), rnd.randrange(1000, 5001, 10), rnd.randint(1, 40)) for _ in ids]
    auth = f"Authorization: Bearer {key}\r\n"
    target = f"/api/v1/events?program={PROGRAM}" if batch == 1 else f"/api/v1/events/batch?program={PROGRAM}"
    load = Load()
    queue: asyncio.Queue[tuple[int, float] | None] = asyncio.Queue()

    def event(i: int, occurred_at: str) -> dict[str, Any]:
        member, amount, store = picks[i]
        return {"id": ids[i], "type": "purchase", "member": member_ref(member), "occurred_at": occurred_at,
                "payload": {"amount": amount, "currency": "RUB", "store": f"store-{store}"}}

    async def worker() -> None:
        conn = HttpConn(base_host, port)
        try:
            while (item := await queue.get()) is not None:
                first, scheduled = item
                chunk = range(first, min(first + batch, len(ids)))
                now_iso = datetime.now(UTC).isoformat()
                rows = [event(i, now_iso) for i in chunk]
                body = json.dumps(rows[0] if batch == 1 else {"events": rows}).encode()
                t = time.time()
                recs = [Posted(scheduled=scheduled, posted=t) for _ in chunk]
                for i, rec in zip(chunk, recs, strict=True):
                    load.events[ids[i]] = rec
                try:
                    status, data = await conn.request("POST", target, body, auth)
                except (OSError, ValueError, IndexError, asyncio.IncompleteReadError) as exc:
                    load.errors[type(exc).__name__] += len(recs)
                    continue
                t = time.time()
                load.end_acks = max(load.end_acks, t)
                for rec in recs:
                    rec.acked, rec.status = t, status
                if status != 202:
                    load.errors[f"HTTP {status}"] += len(recs)
                    continue
                out = json.loads(data)
                if batch == 1:
                    # ids are unique here: a duplicate can only be a request sent again after a lost connection
                    recs[0].accepted = bool(out.get("accepted")) or bool(out.get("duplicate"))
                    load.duplicates += int(bool(out.get("duplicate")))
                    continue
                bad = {e["index"] for e in out.get("errors", [])}
                if bad:
                    load.errors["refused in batch"] += len(bad)
                load.duplicates += out.get("duplicates", 0)
                for j, rec in enumerate(recs):
                    rec.accepted = j not in bad
                if out.get("accepted") != len(recs) - len(bad) - out.get("duplicates", 0):
                    load.errors["accepted count differs"] += 1
        finally:
            conn.close()

    workers = [asyncio.create_task(worker()) for _ in range(connections)]
    try:
        interval = batch / rate
        t0 = time.perf_counter()
        load.start = time.time()
        for k, first in enumerate(range(0, len(ids), batch)):
            delay = t0 + k * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            load.requests += 1
            queue.put_nowait((first, load.start + k * interval))
        for _ in workers:
            queue.put_nowait(None)
        await asyncio.gather(*workers)
        load.end_posting = max((p.posted for p in load.events.values()), default=load.start)
    finally:
        for w in workers:
            w.cancel()
    return load


# --- analysis -----------------------------------------------------------------------------------

def _ts(dt: datetime | None) -> float | None:
    if dt is None:
        return None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


@dataclass
class Rounds:
    """The triggered workflow's rounds during the measured phase, from its Temporal history."""
    runs: int = 0
    match: list[tuple[float, float, float, dict[str, Any]]] = field(default_factory=list)  # sched, start, end, res
    due: list[tuple[float, float, float, dict[str, Any]]] = field(default_factory=list)
    timers: int = 0
    failures: Counter[str] = field(default_factory=Counter)  # activity attempts that failed: type: message
    wft: list[float] = field(default_factory=list)  # workflow task schedule→complete, s

    def within(self, t0: float, t1: float) -> Rounds:
        r = Rounds(runs=self.runs, timers=self.timers, wft=self.wft, failures=self.failures)
        r.match = [m for m in self.match if t0 <= m[0] <= t1]
        r.due = [d for d in self.due if t0 <= d[0] <= t1]
        return r


async def workflow_rounds(temporal_port: int, workflow_id: str) -> Rounds:
    client = await Client.connect(f"127.0.0.1:{temporal_port}", namespace="default")
    out = Rounds()
    run_ids = [w.run_id async for w in client.list_workflows(f"WorkflowId = '{workflow_id}'")]
    for run_id in run_ids:
        out.runs += 1
        hist = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        scheduled: dict[int, tuple[str, float]] = {}
        started: dict[int, float] = {}
        wft_sched: dict[int, float] = {}
        for ev in hist.events:
            t = ev.event_time.ToDatetime().replace(tzinfo=UTC).timestamp()
            et = ev.event_type
            if et == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                scheduled[ev.event_id] = (ev.activity_task_scheduled_event_attributes.activity_type.name, t)
            elif et == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
                a = ev.activity_task_started_event_attributes
                started[a.scheduled_event_id] = t
                if a.attempt > 1:  # retried: the history keeps only the last failure before this attempt
                    name = scheduled.get(a.scheduled_event_id, ("?", t))[0]
                    out.failures[f"{name} (retried, attempt {a.attempt}): {a.last_failure.message[:100]}"] += 1
            elif et == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
                a = ev.activity_task_completed_event_attributes
                name, ts = scheduled.get(a.scheduled_event_id, ("?", t))
                if name not in ("match_events", "deliver_due"):
                    continue
                payloads = a.result.payloads
                try:
                    res = json.loads(payloads[0].data) if payloads else {}
                except ValueError:
                    res = {}
                row = (ts, started.get(a.scheduled_event_id, ts), t, res if isinstance(res, dict) else {})
                if name == "match_events":
                    out.match.append(row)
                elif name == "deliver_due":
                    out.due.append(row)
            elif et == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED:
                a = ev.activity_task_failed_event_attributes
                name = scheduled.get(a.scheduled_event_id, ("?", t))[0]
                out.failures[f"{name}: {a.failure.message[:100]}"] += 1
            elif et == EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT:
                name = scheduled.get(ev.activity_task_timed_out_event_attributes.scheduled_event_id, ("?", t))[0]
                out.failures[f"{name}: timed out"] += 1
            elif et == EventType.EVENT_TYPE_TIMER_FIRED:
                out.timers += 1
            elif et == EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED:
                wft_sched[ev.event_id] = t
            elif et == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
                s = wft_sched.get(ev.workflow_task_completed_event_attributes.scheduled_event_id)
                if s is not None:
                    out.wft.append(t - s)
    out.match.sort()
    out.due.sort()
    return out


@dataclass
class RunResult:
    rate: float
    seconds: float
    batch: int
    poll: float
    topology: str = "embedded"
    switch_interval: float | None = None
    seed_s: float = 0.0
    startup_s: float = 0.0
    posted: int = 0
    requests: int = 0
    accepted: int = 0
    duplicates: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    accept_rate: float = 0.0           # accepted / (first post → last ack)
    post_span: float = 0.0
    ack_ms: dict[str, float] = field(default_factory=dict)      # post → ack
    gen_lag_ms: float = 0.0            # p99 of (request started - scheduled): the generator's own lateness
    emails: int = 0                    # campaign emails received for measured events
    warm_emails: int = 0
    latency: dict[str, float] = field(default_factory=dict)     # event post → SMTP receipt, s
    latency_sched: dict[str, float] = field(default_factory=dict)  # the generator's due time → SMTP receipt, s
    parts: dict[str, float] = field(default_factory=dict)       # mean per event, s
    parts_p99: dict[str, float] = field(default_factory=dict)
    drain_s: float = 0.0               # last post → last email
    lost: int = 0
    no_row: int = 0
    not_sent: dict[str, int] = field(default_factory=dict)
    no_email: int = 0
    twice: int = 0
    extra_rows: int = 0
    unknown_emails: int = 0
    cpu: dict[str, float | None] = field(default_factory=dict)
    cpu_span: float = 0.0
    rounds: list[str] = field(default_factory=list)
    windows: list[str] = field(default_factory=list)
    loadavg: str = ""

    @property
    def ok_lost(self) -> bool:
        return self.lost == 0 and self.no_row == 0 and not self.not_sent and self.no_email == 0

    @property
    def ok_twice(self) -> bool:
        return self.twice == 0 and self.extra_rows == 0


def analyse(res: RunResult, db_url: str, load: Load, sink: Sink, measured: set[str], warm: set[str],
            rounds: Rounds | None) -> None:
    engine = make_engine(db_url)
    try:
        with Session(engine) as s:
            cid = s.scalar(select(Campaign.id).where(Campaign.key == CAMPAIGN))
            rows = list(s.execute(select(Delivery.id, Delivery.occurrence, Delivery.status, Delivery.reason,
                                         Delivery.created_at, Delivery.sent_at)
                                  .where(Delivery.campaign_id == cid)))
            received_at = {eid: at for eid, at in s.execute(select(Event.source_event_id, Event.received_at))}
    finally:
        engine.dispose()

    by_occ: dict[str, list[Any]] = defaultdict(list)
    for r in rows:
        by_occ[r.occurrence].append(r)
    mails: dict[int, list[float]] = defaultdict(list)
    for t, mid in sink.received:
        m = _MSGID.match(mid)
        if m and int(m.group(2)) == cid:
            mails[int(m.group(1))].append(t)
        else:
            res.unknown_emails += 1
    res.twice = sum(1 for ts in mails.values() if len(ts) > 1)
    known = {r.id for r in rows}
    res.unknown_emails += sum(len(ts) for d, ts in mails.items() if d not in known)
    res.extra_rows = sum(len(v) - 1 for v in by_occ.values() if len(v) > 1) + \
        sum(1 for occ in by_occ if occ not in measured and occ not in warm)
    res.warm_emails = sum(1 for occ in warm for r in by_occ.get(occ, []) if r.id in mails)

    accepted = [eid for eid in measured if load.events[eid].accepted]
    res.lost = sum(1 for eid in accepted if eid not in received_at)
    not_sent: Counter[str] = Counter()
    lat: list[float] = []
    lat_sched: list[float] = []
    parts: dict[str, list[float]] = defaultdict(list)
    per_window: dict[int, list[float]] = defaultdict(list)
    for eid in accepted:
        found = by_occ.get(eid)
        if not found:
            res.no_row += 1
            continue
        d = found[0]
        if d.status != "sent":
            not_sent[f"{d.status}{'/' + d.reason if d.reason else ''}"] += 1
        got = mails.get(d.id)
        if not got:
            res.no_email += 1
            continue
        p = load.events[eid]
        arrive = min(got)
        lat.append(arrive - p.posted)
        lat_sched.append(arrive - p.scheduled)
        per_window[int((p.scheduled - load.start) // 10)].append(arrive - p.posted)
        created, sent = _ts(d.created_at), _ts(d.sent_at)
        if created is not None and sent is not None:
            parts["API: post → 202"].append(p.acked - p.posted)
            parts["202 → its match round starts"].append(created - p.acked)
            parts["match round → deliver_due round"].append(sent - created)
            parts["deliver_due round → SMTP receipt"].append(arrive - sent)
    res.not_sent = dict(not_sent)
    res.emails = len(lat)
    if lat:
        res.latency = {"p50": pct(lat, .5), "p95": pct(lat, .95), "p99": pct(lat, .99), "max": max(lat),
                       "mean": statistics.fmean(lat)}
        res.latency_sched = {"p50": pct(lat_sched, .5), "p99": pct(lat_sched, .99), "max": max(lat_sched)}
        res.drain_s = max(t for ts in mails.values() for t in ts) - load.end_posting
    res.parts = {k: statistics.fmean(v) for k, v in parts.items()}
    res.parts_p99 = {k: pct(v, .99) for k, v in parts.items()}
    for w in sorted(per_window):
        v = per_window[w]
        res.windows.append(f"{10 * w:>4}-{10 * w + 10:<4}s  {len(v):6d} events  p50 {pct(v, .5):6.2f} s  "
                           f"p99 {pct(v, .99):6.2f} s  max {max(v):6.2f} s")
    if rounds is not None:
        t0, t1 = load.start, load.end_posting + max(res.drain_s, 0)
        r = rounds.within(t0, t1)
        if r.match:
            dur = [m[2] - m[1] for m in r.match]
            s2s = [m[1] - m[0] for m in r.match]
            examined = [m[3].get("examined", 0) for m in r.match]
            created = [m[3].get("matched", 0) for m in r.match]
            more = sum(1 for m in r.match if m[3].get("more"))
            res.rounds.append(
                f"match_events  {len(r.match):5d} calls ({len(r.match) / max(t1 - t0, 1e-9):.2f}/s); run "
                f"{1000 * statistics.fmean(dur):.0f} ms mean, {1000 * max(dur):.0f} ms max; queued "
                f"{1000 * statistics.fmean(s2s):.0f} ms mean; examined {statistics.fmean(examined):.0f} events "
                f"for {statistics.fmean(created):.0f} new deliveries mean ({sum(examined) / max(sum(created), 1):.1f}"
                f"× re-examined); 'more' {more}×; busy {sum(dur) / (t1 - t0):.0%} of the phase")
        if r.due:
            dur = [d[2] - d[1] for d in r.due]
            s2s = [d[1] - d[0] for d in r.due]
            sent = [int((d[3].get("counts") or {}).get("sent", 0)) for d in r.due]
            more = sum(1 for d in r.due if d[3].get("more"))
            per_msg = sum(dur) / max(sum(sent), 1)
            res.rounds.append(
                f"deliver_due   {len(r.due):5d} calls; run {1000 * statistics.fmean(dur):.0f} ms mean, "
                f"{1000 * max(dur):.0f} ms max; queued {1000 * statistics.fmean(s2s):.0f} ms mean; "
                f"{statistics.fmean(sent):.0f} sent mean, {max(sent)} max; 'more' {more}×; "
                f"{1000 * per_msg:.2f} ms/message; busy {sum(dur) / (t1 - t0):.0%} of the phase")
        if rounds.wft:
            res.rounds.append(f"workflow      {rounds.runs} run(s) (continue-as-new {rounds.runs - 1}×), "
                              f"{rounds.timers} poll timers fired, workflow tasks "
                              f"{1000 * statistics.fmean(rounds.wft):.0f} ms mean / "
                              f"{1000 * pct(rounds.wft, .99):.0f} ms p99 schedule→complete")
        for what, n in rounds.failures.most_common(5):
            res.rounds.append(f"failed attempt {n}× {what}")


async def wait_for_emails(sink: Sink, expect: int, idle_s: float, cap_s: float, label: str) -> int:
    """Until the sink has `expect` messages, nothing new arrived for idle_s, or cap_s passed."""
    start = last_change = time.monotonic()
    got = sink.poll()
    last = got
    while got < expect and time.monotonic() - last_change < idle_s and time.monotonic() - start < cap_s:
        await asyncio.sleep(0.1)
        got = sink.poll()
        if got != last:
            last, last_change = got, time.monotonic()
    if got < expect:
        say(f"  {label}: {got} of {expect} messages after {time.monotonic() - start:.0f} s; stopped waiting")
    return got


# --- one run ------------------------------------------------------------------------------------

async def run_once(index: int, args: argparse.Namespace) -> RunResult:
    res = RunResult(rate=args.rate, seconds=args.seconds, batch=args.batch, poll=args.poll, topology=args.topology,
                    switch_interval=args.switch_interval)
    res.loadavg = " ".join(f"{x:.2f}" for x in os.getloadavg())
    workdir = Path(tempfile.mkdtemp(prefix=f"clarion-trig-{index}-"))
    db_url = f"sqlite:///{(workdir / 'clarion.db').as_posix()}"
    sink = Sink(free_port(), workdir)

    def new_stack() -> Stack:   # new ports each time
        return Stack(workdir, sink.port, args.poll, args.topology, args.switch_interval, args.deliverers,
                     args.up_workers, args.smtp_connections)

    stack = new_stack()
    LIVE[:] = [stack, sink]
    try:
        say(f"[run {index}] seeding {args.members:,} members into {workdir / 'clarion.db'} (load average "
            f"{res.loadavg}) ...")
        core, marketer, res.seed_s = await asyncio.to_thread(seed, db_url, args.members)
        sink.start()
        t = time.perf_counter()
        for attempt in range(1, 4):
            try:
                await stack.start()
                break
            except RuntimeError as exc:
                # seen once: the dev server's port, free when picked, was taken by another process meanwhile
                stack.stop()
                if attempt == 3:
                    raise
                say(f"[run {index}] the stack did not start ({str(exc).strip().splitlines()[-1][:200]}); "
                    "trying again on other ports")
                stack = new_stack()
                LIVE[:] = [stack, sink]
        res.startup_s = time.perf_counter() - t
        say(f"[run {index}] seeded in {res.seed_s:.1f} s; {args.topology} stack {stack.pids()} answered in "
            f"{res.startup_s:.1f} s; sink pid {sink.pid}")
        async with httpx.AsyncClient(timeout=60) as client:
            r = await client.post(f"{stack.base}/api/v1/campaigns", json=campaign_spec(),
                                  headers={"Authorization": f"Bearer {marketer}"})
        if r.status_code != 202:
            raise RuntimeError(f"launch failed: HTTP {r.status_code} {r.text[:500]}")
        workflow_id = r.json().get("workflow_id") or f"triggered/{PROGRAM}/{CAMPAIGN}"

        # warm-up: the first events pay for imports, template compilation, connections
        warm = [f"warm-{index}-{i}" for i in range(WARMUP)]
        wl = await post_events("127.0.0.1", stack.api_port, core, warm, rate=min(args.rate, 50), batch=1,
                               members=args.members, seed_=1000 + index, connections=4)
        await wait_for_emails(sink, sum(p.accepted for p in wl.events.values()), 30, 120, "warm-up")
        base_count = sink.poll()

        ids = [f"ev-{index}-{i:07d}" for i in range(int(args.rate * args.seconds))]
        meter = CpuMeter(**stack.pids(), sink=sink.pid)
        t_cpu = time.monotonic()
        say(f"[run {index}] posting {len(ids):,} events at {args.rate:g}/s for {args.seconds:g} s "
            f"({'1 event per POST /events' if args.batch == 1 else f'{args.batch} per POST /events/batch'}, "
            f"{args.connections} connections)")
        load = await post_events("127.0.0.1", stack.api_port, core, ids, rate=args.rate, batch=args.batch,
                                 members=args.members, seed_=index, connections=args.connections)
        accepted = sum(p.accepted for p in load.events.values())
        say(f"[run {index}] posted; {accepted:,} accepted; waiting for the emails ...")
        await wait_for_emails(sink, base_count + accepted, args.drain, args.drain * 20, "drain")
        res.cpu = meter.used()
        res.cpu_span = time.monotonic() - t_cpu

        res.posted, res.requests, res.accepted = len(ids), load.requests, accepted
        res.duplicates, res.errors = load.duplicates, dict(load.errors)
        res.post_span = load.end_acks - load.start
        res.accept_rate = accepted / res.post_span if res.post_span > 0 else 0.0
        acks = [p.acked - p.posted for p in load.events.values() if p.status]
        if acks:
            res.ack_ms = {"p50": 1000 * pct(acks, .5), "p99": 1000 * pct(acks, .99), "max": 1000 * max(acks)}
        res.gen_lag_ms = 1000 * pct([p.posted - p.scheduled for p in load.events.values()], .99)
        rounds = None
        try:
            rounds = await workflow_rounds(stack.temporal_port, workflow_id)
        except Exception as exc:  # noqa: BLE001 - figures without the history are still figures
            say(f"[run {index}] could not read the workflow history: {type(exc).__name__}: {exc}")
        analyse(res, db_url, load, sink, set(ids), set(warm), rounds)
        return res
    finally:
        stack.stop()
        sink.stop()
        if args.keep:
            say(f"[run {index}] kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


# --- output -------------------------------------------------------------------------------------

def _cpu_line(cpu: dict[str, float | None], span: float) -> str:
    up_workers = sum(k.startswith("worker ") for k in cpu)
    names = {"stack": "API (clarion up)" if up_workers else "worker+API (clarion up)",
             "worker": "clarion worker", "api": "clarion api",
             "temporal": "Temporal dev server", "sink": "SMTP sink",
             "bench": "load generator (this process)"}
    parts = [f"{names.get(k, k.replace('worker ', 'clarion up worker '))} {v:.1f} s = {100 * v / span:.0f}%" for k, v in cpu.items()
             if v is not None and span > 0]
    return "; ".join(parts) or "n/a"


def print_run(i: int, r: RunResult) -> None:
    mode = "1 event per POST /api/v1/events" if r.batch == 1 else f"{r.batch} events per POST /api/v1/events/batch"
    topo = r.topology + (f", switch interval {r.switch_interval:g} s" if r.switch_interval is not None else "")
    say(f"run {i}: {r.rate:g} events/s for {r.seconds:g} s, {mode}, poll {r.poll:g} s, {topo} stack "
        f"(load average at start {r.loadavg})")
    errors = ", ".join(f"{k} {v}" for k, v in r.errors.items()) or "none"
    say(f"  events posted        {r.posted:8,d}  in {r.requests:,} requests; accepted {r.accepted:,}; "
        f"duplicates {r.duplicates}; errors: {errors}")
    a = r.ack_ms
    say(f"  API accepted         {r.accept_rate:8.1f} events/s sustained (first post → last 202: {r.post_span:.1f} s); "
        f"post→202 p50 {a.get('p50', 0):.1f} ms, p99 {a.get('p99', 0):.1f} ms, max {a.get('max', 0):.0f} ms; "
        f"generator lateness p99 {r.gen_lag_ms:.1f} ms")
    say(f"  emails received      {r.emails:8,d}  (+{r.warm_emails} warm-up); last one {r.drain_s:.2f} s after the "
        f"last post")
    lat = r.latency
    if lat:
        say(f"  event→SMTP latency   p50 {lat['p50']:.3f} s  p95 {lat['p95']:.3f} s  p99 {lat['p99']:.3f} s  "
            f"max {lat['max']:.3f} s  (mean {lat['mean']:.3f} s)")
        if r.gen_lag_ms > 50:
            ls = r.latency_sched
            say(f"    the API fell behind, so requests waited for a free connection in the generator; from the "
                f"time each event was due: p50 {ls['p50']:.3f} s  p99 {ls['p99']:.3f} s  max {ls['max']:.3f} s")
    if r.parts:
        say("  where an event's time goes (mean; p99):")
        for k, v in r.parts.items():
            say(f"    {k:<36} {v:7.3f} s  ({r.parts_p99[k]:.3f} s)")
    if r.rounds:
        say("  workflow rounds during the phase (Temporal history):")
        for line in r.rounds:
            say(f"    {line}")
    if r.windows:
        say("  latency by 10-s window of posting:")
        for line in r.windows:
            say(f"    {line}")
    lost = "OK" if r.ok_lost else (f"NO: {r.lost} accepted events not stored, {r.no_row} without a delivery row, "
                                   f"not sent {r.not_sent}, {r.no_email} without an email")
    twice = "OK" if r.ok_twice else f"NO: {r.twice} Message-IDs received more than once, {r.extra_rows} extra rows"
    say(f"  check: nothing lost  {lost} (every accepted event: one delivery row, sent, one email)")
    say(f"  check: no duplicate  {twice}; emails not from this campaign's deliveries: {r.unknown_emails}")
    say(f"  CPU (first post → last email, {r.cpu_span:.1f} s; % of one core): {_cpu_line(r.cpu, r.cpu_span)}")


def print_medians(results: list[RunResult]) -> None:
    med = statistics.median
    say(f"medians of {len(results)} run(s):")
    say(f"  accepted             {med(r.accept_rate for r in results):8.1f} events/s "
        f"({' / '.join(f'{r.accept_rate:.1f}' for r in results)})")
    say(f"  emails received      {med(r.emails for r in results):8,.0f}")
    for q in ("p50", "p95", "p99", "max"):
        vals = [r.latency.get(q, float('nan')) for r in results]
        say(f"  latency {q:<12} {med(vals):8.3f} s  ({' / '.join(f'{v:.3f}' for v in vals)})")
    say(f"  post→202 p50/p99     {med(r.ack_ms.get('p50', 0) for r in results):.0f} / "
        f"{med(r.ack_ms.get('p99', 0) for r in results):.0f} ms; generator lateness p99 "
        f"{med(r.gen_lag_ms for r in results):.0f} ms")
    if any(r.gen_lag_ms > 50 for r in results):
        vals = [r.latency_sched.get("p99", float("nan")) for r in results]
        say(f"  p99 from due time    {med(vals):8.3f} s  ({' / '.join(f'{v:.3f}' for v in vals)})")
    keys = list(results[0].parts)
    for k in keys:
        vals = [r.parts.get(k, float("nan")) for r in results]
        say(f"  mean {k:<36} {med(vals):.3f} s")
    for name in results[0].cpu:
        vals = [r.cpu.get(name) for r in results]
        if all(v is not None for v in vals):
            shares = [100 * v / r.cpu_span for v, r in zip(vals, results, strict=True)]  # type: ignore[operator]
            say(f"  CPU {name:<10} {med(shares):5.0f}% of a core")
    say(f"  checks: nothing lost {'OK' if all(r.ok_lost for r in results) else 'NO'}; "
        f"nothing sent twice {'OK' if all(r.ok_twice for r in results) else 'NO'}")


async def main_async(args: argparse.Namespace) -> int:
    task = asyncio.current_task()
    assert task is not None

    def on_term() -> None:
        for proc in LIVE:  # the children first: unwinding a busy loop may take a while
            proc.stop()
        task.cancel()

    with contextlib.suppress(NotImplementedError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_term)
    results = []
    for i in range(1, args.runs + 1):
        results.append(await run_once(i, args))
        print_run(i, results[-1])
    if len(results) > 1:
        say()
        print_medians(results)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--rate", type=float, default=200.0, help="purchase events per second")
    p.add_argument("--seconds", type=float, default=60.0, help="how long to post")
    p.add_argument("--members", "-n", type=int, default=10_000, help="members to seed (events pick one at random)")
    p.add_argument("--batch", type=int, default=1,
                   help="events per request: 1 = POST /api/v1/events; N > 1 = POST /api/v1/events/batch")
    p.add_argument("--poll", type=float, default=float(os.environ.get("CLARION_TRIGGER_POLL_S", 1.0)),
                   help="CLARION_TRIGGER_POLL_S for the stack: how often the campaign looks for new events")
    p.add_argument("--deliverers", type=int, default=4,
                   help="CLARION_TRIGGER_CONCURRENCY for the stack: deliver_due activities side by side each round")
    p.add_argument("--up-workers", type=int, default=Settings.model_fields["up_workers"].default,
                   help="CLARION_UP_WORKERS for the embedded stack: worker processes of `clarion up` (0: inside it); "
                        "the default is clarion up's own")
    p.add_argument("--smtp-connections", type=int, default=None,
                   help="CLARION_SMTP_CONNECTIONS for the stack: kept-open connections per worker process "
                        "(default: clarion's own)")
    p.add_argument("--runs", "-r", type=int, default=1, help="repeat the whole measurement (fresh stack each)")
    p.add_argument("--connections", type=int, default=64,
                   help="keep-alive HTTP connections of the load generator (requests in flight at most)")
    p.add_argument("--drain", type=float, default=30.0,
                   help="after posting, stop waiting for emails when none arrived for this many seconds")
    p.add_argument("--topology", choices=["embedded", "split"], default="embedded",
                   help="embedded: `clarion up` (its dev server, the API, and --up-workers worker processes); "
                        "split: dev server, `clarion worker` and `clarion api` as three processes")
    p.add_argument("--switch-interval", type=float, default=None, metavar="S",
                   help="diagnosis: run the Clarion processes with sys.setswitchinterval(S) (Python's default 0.005)")
    p.add_argument("--keep", action="store_true",
                   help="keep the temporary var dirs (databases, sink.log, the stack's logs)")
    args = p.parse_args(argv)
    if not 1 <= args.batch <= 1000:
        p.error("--batch must be 1..1000")
    if args.rate <= 0 or args.seconds <= 0:
        p.error("--rate and --seconds must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    say(f"triggered-campaign bench: rate={args.rate:g}/s seconds={args.seconds:g} members={args.members} "
        f"batch={args.batch} poll={args.poll:g} s deliverers={args.deliverers} up_workers={args.up_workers} smtp_connections={args.smtp_connections or 'default'} topology={args.topology} runs={args.runs} cpus={os.cpu_count()} "
        f"python={sys.version.split()[0]}")
    try:
        return asyncio.run(main_async(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        say("interrupted; everything started was stopped")
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""Broadcast throughput: the whole pipeline against a raw SMTP loop and a hand-written one, to the same local sink.

    .venv/bin/python bench/broadcast.py [--members N] [--connections C] [--runs R]

Each run, from scratch:

1. a fresh SQLite file in a temporary folder, migrated with Alembic, seeded with N synthetic members of
   program "bench" (ru/en, ~90% with email/promotions consent) through ``members.service.upsert_members``
   in batches of 2000, in a child process (timed on its own, and kept out of the worker's peak RSS);
2. a local SMTP sink in another process: Postfix's ``smtp-sink`` when found, else a small aiosmtpd
   server that counts and discards what it receives;
3. the pipeline: an in-memory Temporal dev server, a worker in this process built by ``app.worker``
   (SMTP pool of C connections), a broadcast launched with ``app.campaigns.launch`` (template
   ``double_points``), completion seen by polling ``app.campaigns.status_of``; timed from the launch
   call to the first poll that sees it finished;
4. two baselines, each sending as many messages as the pipeline sent to the same sink over as many
   connections as the pipeline's workers had (C per worker): the raw rate, C concurrent ``aiosmtplib.SMTP``
   clients sending messages pre-serialized once up front (same template, headers and MIME builder as the
   pipeline, so the same size); and a hand-written loop that builds each message with ``email.message``
   from parts rendered once and sends it with aiosmtplib's ``send_message``.

It prints figures; it never asserts timings. Every process it starts is stopped on exit, error, Ctrl-C or
SIGTERM. ``--breakdown`` adds wall-clock timers around the delivery steps and an event-loop lag probe.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import itertools
import json
import os
import random
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import format_datetime, make_msgid
from pathlib import Path
from collections.abc import Awaitable, Callable
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import aiosmtplib  # noqa: E402
from temporalio import activity  # noqa: E402
from temporalio.testing import WorkflowEnvironment  # noqa: E402

from activities.delivery import DeliveryActivities  # noqa: E402
from bench.common import CpuMeter, die_with_parent, free_port, fresh_database, say, wait_for_smtp  # noqa: E402
from app import campaigns as service  # noqa: E402
from app.settings import Settings  # noqa: E402
from app.temporal import temporal_cli  # noqa: E402
from app.worker import build_worker, delivery_activities, email_channel, signer  # noqa: E402
from campaigns.spec import parse_spec  # noqa: E402
from channels.base import OutboundMessage  # noqa: E402
from consent.tokens import UNSUBSCRIBE, UNSUBSCRIBE_TTL_S  # noqa: E402
from members.profile import ConsentGrant, MemberIn  # noqa: E402
from members.service import ensure_program, upsert_members  # noqa: E402
from storage.db import make_engine  # noqa: E402
from storage.migrate import upgrade  # noqa: E402
from templates.render import Renderer  # noqa: E402
from workflows.contracts import BatchResult, DeliverBatch  # noqa: E402

PROGRAM = "bench"
TEMPLATE = "double_points"
SEED_BATCH = 2000
POLL_S = 0.2
NAMES = {"ru": ["Анна", "Иван", "Мария", "Олег", "Светлана", "Дмитрий"],
         "en": ["Alice", "Bob", "Carol", "Dave", "Erin", "Frank"]}
ZONES = ["Europe/Moscow", "Asia/Yekaterinburg", "Europe/London", "America/New_York"]
EMAIL_DOMAIN = "bench.clarion.example"




# --- synthetic members ------------------------------------------------------------------------

def bench_members(n: int, seed: int = 7) -> tuple[list[tuple[None, str, MemberIn]], int]:
    """n members, ru/en half and half; 90% granted email/promotions, 5% revoked, 5% never asked.
    Returns the items and how many may be sent to."""
    rnd = random.Random(seed)
    items, allowed = [], 0
    for i in range(1, n + 1):
        locale = "ru" if rnd.random() < 0.5 else "en"
        roll = rnd.random()
        if roll < 0.90:
            consents = [ConsentGrant(channel="email", topic="promotions", wording_version="bench-v1")]
            allowed += 1
        elif roll < 0.95:
            consents = [ConsentGrant(channel="email", topic="promotions", action="revoked")]
        else:
            consents = []
        items.append((None, f"B{i:07d}", MemberIn(
            first_name=rnd.choice(NAMES[locale]), locale=locale, time_zone=rnd.choice(ZONES),
            email=f"member{i:07d}@{EMAIL_DOMAIN}",
            attributes={"tier": rnd.choices(["basic", "silver", "gold"], weights=[70, 20, 10])[0]},
            consents=consents,
        )))
    return items, allowed


@dataclass
class Seeded:
    allowed: int          # members with an email address and email/promotions consent
    migrate_s: float
    build_s: float        # building (validating) the MemberIn profiles
    upsert_s: float       # upsert_members, batches of SEED_BATCH

    @property
    def seed_s(self) -> float:
        return self.build_s + self.upsert_s


def seed_db(db_url: str, n: int) -> Seeded:
    t0 = time.perf_counter()
    upgrade(db_url)
    t1 = time.perf_counter()
    engine = make_engine(db_url)
    try:
        program = ensure_program(engine=engine, key=PROGRAM, name="Bench Shop", default_locale="en",
                                 time_zone="Europe/Moscow", currency="RUB")
        items, allowed = bench_members(n)
        t2 = time.perf_counter()
        for i in range(0, len(items), SEED_BATCH):
            upsert_members(engine=engine, program_id=program.id or 0, items=items[i:i + SEED_BATCH])
    finally:
        engine.dispose()
    t3 = time.perf_counter()
    return Seeded(allowed=allowed, migrate_s=t1 - t0, build_s=t2 - t1, upsert_s=t3 - t2)


async def seed_in_subprocess(db_url: str, n: int) -> Seeded:
    """Seed in a child process, so that the bench process's peak RSS is the worker's, not the seeding's."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(Path(__file__).resolve()), "--seed-only", db_url, "--members", str(n),
        stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL, preexec_fn=die_with_parent)
    try:
        out, _ = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"seeding failed (exit {proc.returncode})")
    return Seeded(**json.loads(out.decode().strip().splitlines()[-1]))


# --- the SMTP sink, in another process ----------------------------------------------------------

AIOSMTPD_SINK = r"""
import asyncio, signal, sys
from aiosmtpd.smtp import SMTP

count = 0

class Sink:
    async def handle_DATA(self, server, session, envelope):
        global count
        count += 1
        return "250 2.0.0 Ok"

async def main(host, port):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(Sink(), hostname="bench-sink"), host, port)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    last = -1
    while not stop.is_set():
        if count != last:
            last = count
            print(f"mesg={count}", flush=True)
        try:
            await asyncio.wait_for(stop.wait(), 0.2)
        except asyncio.TimeoutError:
            pass
    print(f"mesg={count}", flush=True)
    server.close()

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""

_MESG = re.compile(rb"mesg=(\d+)")






def find_smtp_sink() -> str | None:
    found = shutil.which("smtp-sink")
    if found:
        return found
    for candidate in ("/usr/sbin/smtp-sink", "/usr/local/sbin/smtp-sink"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


class Sink:
    """A sink process; its counter output goes to a file, from which ``received()`` reads the count."""

    def __init__(self, kind: str, port: int, workdir: Path) -> None:
        self.kind, self.port = kind, port
        self.log = workdir / f"sink-{port}.out"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> None:
        if self.kind == "smtp-sink":
            exe = find_smtp_sink()
            assert exe
            cmd = [exe, "-c"]
            if os.geteuid() == 0:
                cmd += ["-u", "nobody"]  # smtp-sink refuses to run as root without it
            cmd += [f"127.0.0.1:{self.port}", "1000"]
        else:
            cmd = [sys.executable, "-c", AIOSMTPD_SINK, "127.0.0.1", str(self.port)]
        with open(self.log, "wb") as out:
            # own session: a Ctrl-C in the terminal reaches only us, and we stop it in order
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, preexec_fn=die_with_parent)
        wait_for_smtp(self.proc, self.port, self.log)

    def received(self) -> int | None:
        """Messages received so far (the sink's own counter), None if unreadable."""
        try:
            data = self.log.read_bytes()
        except OSError:
            return None
        found = _MESG.findall(data[-4096:])
        return int(found[-1]) if found else 0

    async def settled_count(self, expect_at_least: int, wait_s: float = 3.0) -> int | None:
        deadline = time.monotonic() + wait_s
        got = self.received()
        while (got is None or got < expect_at_least) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            got = self.received()
        return got

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


# --- memory -------------------------------------------------------------------------------------

def reset_peak_rss() -> bool:
    """Linux: reset this process's peak RSS (VmHWM, and with it ru_maxrss) so that a phase is measured alone."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def current_rss_mib() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def maxrss_mib() -> float:
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024 if sys.platform != "darwin" else kib / (1024 * 1024)


def hwm_mib(pid: int | None) -> float | None:
    """Peak RSS (VmHWM) of another process (Linux /proc)."""
    if not pid:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _child_pid(name: str) -> int | None:
    me = str(os.getpid())
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        if fields.get("PPid", "").strip() == me and fields.get("Name", "").strip().startswith(name):
            return int(status.parent.name)
    return None






# --- optional: where the pipeline's time goes (--breakdown) --------------------------------------

class TimedActivities(DeliveryActivities):
    """DeliveryActivities with wall-clock timers around its steps (bench only; production code unchanged)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.wall: collections.Counter[str] = collections.Counter()
        self.calls: collections.Counter[str] = collections.Counter()
        self.batches: list[tuple[float, float]] = []
        email = kw["registry"].email
        build = email.build

        def timed_build(msg: OutboundMessage, **kw: Any) -> bytes:
            t = time.perf_counter()
            try:
                return build(msg, **kw)
            finally:
                self._add("email.build (MIME, on the event loop)", t)

        email.build = timed_build  # instance attribute: this channel object only
        builder = self._messages.build

        def timed_message(c: Any, target: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return builder(c, target)
            finally:
                self._add("message: sign+render (on the event loop)", t0)

        self._messages.build = timed_message  # type: ignore[method-assign]
        send_all = self._sender.send_all

        async def timed_send_all(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return await send_all(*a, **k)
            finally:
                self._add("send_all per chunk (build+pool wait+SMTP)", t0)

        self._sender.send_all = timed_send_all  # type: ignore[method-assign]

    def _add(self, name: str, since: float) -> None:
        self.wall[name] += time.perf_counter() - since
        self.calls[name] += 1

    @activity.defn(name="deliver_batch")
    async def deliver_batch(self, inp: DeliverBatch) -> BatchResult:
        t = time.perf_counter()
        try:
            return await super().deliver_batch(inp)
        finally:
            self.batches.append((t, time.perf_counter()))
            self._add("deliver_batch activity", t)

    def _prepare(self, ctx: Any, inp: Any, *args: Any) -> Any:
        t = time.perf_counter()
        try:
            return super()._prepare(ctx, inp, *args)
        finally:
            self._add("_prepare (SQL, in the write turn)", t)

    def _claim(self, ctx: Any, chunk: Any, *args: Any) -> Any:
        t = time.perf_counter()
        try:
            return super()._claim(ctx, chunk, *args)
        finally:
            self._add("_claim (SQL, in the write turn)", t)

    def _record(self, ctx: Any, outcomes: Any) -> None:
        t = time.perf_counter()
        try:
            super()._record(ctx, outcomes)
        finally:
            self._add("_record (SQL, in the write turn)", t)


    def report(self, elapsed: float) -> list[str]:
        lines = []
        for name, total in self.wall.most_common():
            n = self.calls[name]
            lines.append(f"    {name:<44} {total:8.2f} s total  {n:6d} calls  {1000 * total / n:8.3f} ms each")
        if self.batches:
            t0 = min(a for a, _ in self.batches)
            t1 = max(b for _, b in self.batches)
            events = sorted([(a, 1) for a, _ in self.batches] + [(b, -1) for _, b in self.batches])
            running, last, idle, weighted = 0, t0, 0.0, 0.0
            for at, d in events:
                if running == 0:
                    idle += at - last
                weighted += running * (at - last)
                running, last = running + d, at
            lines.append(f"    deliver_batch span {t1 - t0:.2f} s of {elapsed:.2f} s; no batch running for "
                         f"{idle:.2f} s of that span; mean batches in flight {weighted / (t1 - t0):.2f}")
        return lines


class LoopLag:
    """How late a 5 ms sleep wakes up: a measure of synchronous work blocking the event loop."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.005)
            self.samples.append(time.perf_counter() - t - 0.005)

    def __enter__(self) -> LoopLag:
        self._task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._task:
            self._task.cancel()

    def summary(self) -> str:
        if not self.samples:
            return "n/a"
        xs = sorted(self.samples)
        return (f"mean {1000 * statistics.fmean(xs):.1f} ms, p50 {1000 * xs[len(xs) // 2]:.1f} ms, "
                f"p99 {1000 * xs[int(len(xs) * 0.99)]:.1f} ms, max {1000 * xs[-1]:.1f} ms")


# --- the baseline: raw aiosmtplib ---------------------------------------------------------------

def rendered_messages(settings: Settings, variants: int = 64) -> list[OutboundMessage]:
    """`variants` messages as MessageBuilder.build makes them (same template, context shape, unsubscribe token
    and headers), not yet serialized: realistic sizes for the baselines."""
    renderer, sign = Renderer(), signer(settings)
    items, _ = bench_members(variants, seed=11)
    mailto_domain = settings.unsubscribe_mailto.rsplit("@", 1)[-1]
    out = []
    for i, (_, _, m) in enumerate(items, start=1):
        delivery_id = 10_000_000 + i
        token = sign.sign(UNSUBSCRIBE, {"d": delivery_id}, ttl_s=UNSUBSCRIBE_TTL_S)
        url = f"{settings.base_url}/u/{token}"
        locale = renderer.resolve_locale(TEMPLATE, m.locale, "en")
        rendered = renderer.render_email(TEMPLATE, locale, {
            "member": {**m.attributes, "first_name": m.first_name, "last_name": m.last_name,
                       "kind": str(m.kind), "locale": m.locale},
            "program": {"key": PROGRAM, "name": "Bench Shop", "currency": "RUB"},
            "campaign": {"key": "bench-raw", "name": "Bench broadcast"}, "unsubscribe_url": url,
            "preferences_url": f"{settings.base_url}/p/{token}"})
        msg = OutboundMessage(
            delivery_id=delivery_id, to=m.email or "", subject=rendered.subject, text=rendered.text,
            html=rendered.html, message_id=f"<d{delivery_id}.c1@{mailto_domain}>",
            headers={"List-Unsubscribe":
                     f"<{url}>, <mailto:{settings.unsubscribe_mailto}?subject=unsubscribe%20{token}>",
                     "List-Unsubscribe-Post": "List-Unsubscribe=One-Click", "X-Clarion-Campaign": "bench-raw"})
        out.append(msg)
    return out


async def smtp_loop(host: str, port: int, connections: int, total: int,
                    send: Callable[[aiosmtplib.SMTP, int], Awaitable[Any]]) -> float:
    """C clients, each calling ``send(client, i)`` in a loop, sharing one counter of messages to send. Returns
    seconds from the first connect to the last reply (connects included, as the pipeline's pool connects
    lazily)."""
    clients = [aiosmtplib.SMTP(hostname=host, port=port, timeout=30) for _ in range(connections)]
    counter = itertools.count()

    async def loop(client: aiosmtplib.SMTP) -> None:
        await client.connect()
        while (i := next(counter)) < total:
            await send(client, i)

    t0 = time.perf_counter()
    try:
        await asyncio.gather(*(loop(c) for c in clients))
        return time.perf_counter() - t0
    finally:
        for c in clients:
            if c.is_connected:
                try:
                    await c.quit()
                except (aiosmtplib.SMTPException, OSError):
                    c.close()


async def offers_8bitmime(host: str, port: int) -> bool:
    client = aiosmtplib.SMTP(hostname=host, port=port, timeout=30)
    await client.connect()
    try:
        await client.ehlo()
        return client.supports_extension("8bitmime")
    finally:
        await client.quit()


async def raw_send(host: str, port: int, connections: int, total: int,
                   messages: list[tuple[str, bytes]], sender: str, eight_bit: bool) -> float:
    """The limit: messages serialized once up front, each `sendmail`-ed as bytes (``BODY=8BITMIME`` when they
    were built 8-bit, as the pipeline's channel does)."""
    options = ["BODY=8BITMIME"] if eight_bit else None

    async def send(client: aiosmtplib.SMTP, i: int) -> Any:
        to, data = messages[i % len(messages)]
        return await client.sendmail(sender, [to], data, mail_options=options)

    return await smtp_loop(host, port, connections, total, send)


async def handwritten_send(host: str, port: int, connections: int, total: int,
                           messages: list[OutboundMessage], sender: str) -> float:
    """The loop one would write by hand: each message built with the standard library's ``email`` package
    (``email.mime``: headers, a text part and an HTML alternative, UTF-8 in base64) and sent with aiosmtplib's
    ``send_message``, which serializes it. The parts are rendered once up front (no templating, no ledger):
    what it measures is building and sending."""
    def build(m: OutboundMessage) -> Message:
        # the standard library's legacy email.mime classes (email.message.Message, policy compat32): the
        # faster way; EmailMessage with the default policy took 2.1-3.2 ms a message of this size here
        msg = MIMEMultipart("alternative")
        msg["From"] = sender
        msg["To"] = m.to
        msg["Subject"] = m.subject or ""
        msg["Date"] = format_datetime(datetime.now(UTC))
        msg["Message-ID"] = make_msgid(domain="bench.invalid")
        for name, value in (m.headers or {}).items():
            msg[name] = value
        msg.attach(MIMEText(m.text, "plain", "utf-8"))
        if m.html is not None:
            msg.attach(MIMEText(m.html, "html", "utf-8"))
        return msg

    async def send(client: aiosmtplib.SMTP, i: int) -> Any:
        return await client.send_message(build(messages[i % len(messages)]))

    return await smtp_loop(host, port, connections, total, send)


# --- one run ------------------------------------------------------------------------------------

@dataclass
class RunResult:
    seeded: Seeded | None = None
    expected: int = 0
    pipeline_s: float = 0.0
    workflow_s: float | None = None
    sent: int = 0
    suppressed: int = 0
    failed: int = 0
    in_doubt: int = 0
    status: str = ""
    sink_pipeline: int | None = None
    rss_mib: float = 0.0
    rss_reset: bool = False
    rss_start_mib: float | None = None
    temporal_rss_mib: float | None = None
    cpu_pipeline: dict[str, float | None] = field(default_factory=dict)
    raw_s: float = 0.0
    raw_sent: int = 0
    hand_s: float = 0.0
    sink_hand: int | None = None
    cpu_hand: dict[str, float | None] = field(default_factory=dict)
    sink_raw: int | None = None
    cpu_raw: dict[str, float | None] = field(default_factory=dict)
    msg_bytes: float = 0.0
    eight_bit: bool = False         # the sink offered 8BITMIME: parts went 8-bit (pipeline and raw alike)
    breakdown: list[str] = field(default_factory=list)
    history_max: int = 0            # events in the longest workflow history of the run (Temporal's limit: 51,200)
    history_runs: int = 0           # workflow runs (continue-as-new makes several of one campaign)
    history_longest: str = ""

    @property
    def seed_s(self) -> float:
        return self.seeded.seed_s if self.seeded else 0.0

    @property
    def pipeline_rate(self) -> float:
        return self.sent / self.pipeline_s if self.pipeline_s else 0.0

    @property
    def raw_rate(self) -> float:
        return self.raw_sent / self.raw_s if self.raw_s else 0.0

    @property
    def ratio(self) -> float:
        return self.pipeline_rate / self.raw_rate if self.raw_rate else 0.0

    @property
    def hand_rate(self) -> float:
        return self.raw_sent / self.hand_s if self.hand_s else 0.0

    @property
    def hand_ratio(self) -> float:
        return self.pipeline_rate / self.hand_rate if self.hand_rate else 0.0


def _cpu_line(cpu: dict[str, float | None], elapsed: float, sent: int) -> str:
    parts = []
    for name, used in cpu.items():
        if used is None:
            continue
        per_msg = f", {1e6 * used / sent:,.0f} µs/msg" if sent else ""
        parts.append(f"{name} {used:.1f} s ({100 * used / elapsed:.0f}% of a core{per_msg})" if elapsed else
                     f"{name} {used:.1f} s")
    return "; ".join(parts) or "n/a"


def start_extra_workers(n: int, target: str, settings: Settings, workdir: Path) -> list[subprocess.Popen]:
    """``n`` more worker processes (``clarion worker``, as an operator runs them) on the same Temporal, task
    queue, database and sink; returns once each says it is polling."""
    procs = []
    clarion = str(Path(sys.executable).with_name("clarion"))
    for i in range(n):
        env = {**os.environ, "CLARION_TEMPORAL_ADDRESS": target, "CLARION_TEMPORAL_TASK_QUEUE":
               settings.temporal_task_queue, "CLARION_DATABASE_URL": settings.db_url,
               "CLARION_VAR_DIR": str(workdir / f"worker-{i + 2}"), "CLARION_SMTP_HOST": settings.smtp_host,
               "CLARION_SMTP_PORT": str(settings.smtp_port), "CLARION_SMTP_CONNECTIONS": str(settings.smtp_connections),
               "CLARION_PAGE_SIZE": str(settings.page_size),
               "CLARION_BATCH_CONCURRENCY": str(settings.batch_concurrency), "CLARION_MAILBOX_ENABLED": "false"}
        log = open(workdir / f"worker-{i + 2}.log", "w")  # noqa: SIM115 - closed with the process
        procs.append(subprocess.Popen([clarion, "worker"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                      preexec_fn=die_with_parent))
    deadline = time.monotonic() + 30
    for i, proc in enumerate(procs):
        path = workdir / f"worker-{i + 2}.log"
        while "polling task queue" not in path.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker {i + 2} did not start: {path.read_text()[-800:]}")
            time.sleep(0.1)
    return procs


def stop_workers(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


async def run_pipeline(index: int, args: argparse.Namespace, settings: Settings, res: RunResult,
                       sink: Sink) -> None:
    res.rss_reset = reset_peak_rss()
    res.rss_start_mib = current_rss_mib()
    env = await WorkflowEnvironment.start_local(
        namespace="default", ip="127.0.0.1", ui=False, dev_server_existing_path=temporal_cli(),
        dev_server_log_level="error",
        dev_server_extra_args=[] if not args.suggest_continue_as_new else [
            "--dynamic-config-value", f"limit.historyCount.suggestContinueAsNew={args.suggest_continue_as_new}"])
    try:
        temporal_pid = _child_pid("temporal")
        engine = make_engine(settings.db_url)
        acts = delivery_activities(settings, engine=engine,
                                   cls=TimedActivities if args.breakdown else DeliveryActivities)
        extra: list[subprocess.Popen] = []
        try:
            async with build_worker(env.client, settings, acts):
                if args.workers > 1:
                    extra = start_extra_workers(args.workers - 1, env.client.service_client.config.target_host,
                                                settings, settings.var_dir)
                spec = parse_spec({
                    "key": f"bench-run-{index}", "name": "Bench broadcast", "program": PROGRAM,
                    "topic": "promotions", "channels": ["email"], "audience": {"all": True},
                    "template": TEMPLATE, "locale_default": "en"})
                renderer = Renderer()
                meter = CpuMeter(temporal=temporal_pid, sink=sink.pid,
                                 **{f"worker{i + 2}": p.pid for i, p in enumerate(extra)})
                with LoopLag() as lag:
                    t0 = time.perf_counter()
                    view = await service.launch(engine=engine, client=env.client, settings=settings, spec=spec,
                                                renderer=renderer)
                    while not service.is_finished(view) and view.live:
                        await asyncio.sleep(POLL_S)
                        view = await service.status_of(engine=engine, client=env.client, program=PROGRAM,
                                                       key=spec.key)
                    res.pipeline_s = time.perf_counter() - t0
                res.cpu_pipeline = meter.used()
                if not service.is_finished(view):
                    raise RuntimeError(f"the campaign ended as {view.status!r} (workflow gone)")
                desc = await env.client.get_workflow_handle(view.workflow_id).describe()
                if desc.close_time and desc.start_time:
                    res.workflow_s = (desc.close_time - desc.start_time).total_seconds()
                async for wf in env.client.list_workflows():      # this run's dev server: only the bench's
                    res.history_runs += 1
                    if wf.history_length > res.history_max:
                        res.history_max, res.history_longest = wf.history_length, wf.workflow_type
                c = view.counts
                res.sent, res.suppressed, res.failed, res.in_doubt = c.sent, c.suppressed, c.failed, c.in_doubt
                res.status = str(view.status)
                if isinstance(acts, TimedActivities):
                    res.breakdown = [f"    event loop lag (5 ms timer): {lag.summary()}",
                                     *acts.report(res.pipeline_s)]
        finally:
            stop_workers(extra)
            await acts.aclose()
            engine.dispose()
        res.rss_mib = maxrss_mib()
        res.temporal_rss_mib = hwm_mib(temporal_pid)
    finally:
        await env.shutdown()


async def run_once(index: int, args: argparse.Namespace, sink_kind: str) -> RunResult:
    res = RunResult()
    workdir = Path(tempfile.mkdtemp(prefix=f"clarion-bench-{index}-"))
    if args.db:                                   # a new PostgreSQL database beside --db, dropped after
        db_url, drop_db = fresh_database(args.db, workdir, "bench")
    else:
        db_url, drop_db = f"sqlite:///{(workdir / 'bench.db').as_posix()}", (lambda: None)
    sink = Sink(sink_kind, free_port(), workdir)
    try:
        say(f"[run {index}] seeding {args.members} members into {db_url} ...")
        res.seeded = sd = await seed_in_subprocess(db_url, args.members)
        res.expected = sd.allowed
        say(f"[run {index}] migrate {sd.migrate_s:.2f} s; seed {sd.seed_s:.2f} s = {args.members / sd.seed_s:,.0f} "
            f"members/s (MemberIn build+validation {sd.build_s:.2f} s, upsert_members in batches of {SEED_BATCH} "
            f"{sd.upsert_s:.2f} s); {res.expected} members may be sent to")

        sink.start()
        settings = Settings(
            _env_file=None, var_dir=workdir, database_url=db_url, mailbox_enabled=False,
            smtp_host="127.0.0.1", smtp_port=sink.port, smtp_tls=False, smtp_starttls=False,
            smtp_username=None, smtp_password=None, smtp_connections=args.connections,
            page_size=args.page_size, batch_concurrency=args.batch_concurrency,
            temporal_task_queue=f"bench-{uuid.uuid4().hex[:8]}",
        )
        rendered = rendered_messages(settings)
        channel = email_channel(settings)
        res.eight_bit = eight_bit = await offers_8bitmime("127.0.0.1", sink.port)   # as the pipeline's channel asks
        messages = [(m.to, channel.build(m, eight_bit=eight_bit)) for m in rendered]
        res.msg_bytes = statistics.fmean(len(b) for _, b in messages)

        await run_pipeline(index, args, settings, res, sink)
        res.sink_pipeline = await sink.settled_count(res.sent)
        say(f"[run {index}] pipeline: {res.sent} sent, {res.suppressed} suppressed, {res.failed} failed, "
            f"{res.in_doubt} in doubt ({res.status}) in {res.pipeline_s:.2f} s "
            f"= {res.pipeline_rate:,.0f} msg/s; sink counted {res.sink_pipeline}")

        # the baselines: same sink, same number of messages (at most --baseline-max: they are steady loops), as
        # many connections as all the workers have
        res.raw_sent = min(res.sent or res.expected, args.baseline_max or res.sent or res.expected)
        connections = args.connections * args.workers
        counted = [res.sink_pipeline or 0]       # what the sink had counted before each baseline

        async def baseline(label: str, send: Any) -> tuple[float, dict[str, float | None], int | None]:
            meter = CpuMeter(sink=sink.pid)
            seconds = await send("127.0.0.1", sink.port, connections, res.raw_sent)
            cpu = meter.used()
            got = await sink.settled_count(counted[0] + res.raw_sent)
            received = None if got is None else got - counted[0]
            counted[0] += received or 0
            say(f"[run {index}] {label}: {res.raw_sent} sent in {seconds:.2f} s = {res.raw_sent / seconds:,.0f} "
                f"msg/s; sink counted {received}")
            return seconds, cpu, received

        res.raw_s, res.cpu_raw, res.sink_raw = await baseline(
            "raw aiosmtplib", lambda *a: raw_send(*a, messages, settings.email_from, eight_bit))
        res.hand_s, res.cpu_hand, res.sink_hand = await baseline(
            "hand-written email.mime loop", lambda *a: handwritten_send(*a, rendered, settings.email_from))
        return res
    finally:
        sink.stop()
        drop_db()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def print_run(i: int, r: RunResult, args: argparse.Namespace) -> None:
    wf = f"{r.workflow_s:.2f} s" if r.workflow_s is not None else "n/a"
    temporal = f"{r.temporal_rss_mib:.0f} MiB" if r.temporal_rss_mib is not None else "n/a"
    say(f"run {i}:")
    sd = r.seeded
    assert sd is not None
    say(f"  seed                 {sd.seed_s:8.2f} s   ({args.members:,} members: MemberIn {sd.build_s:.2f} s + "
        f"upsert_members {sd.upsert_s:.2f} s; migrate {sd.migrate_s:.2f} s)")
    say(f"  pipeline             {r.pipeline_s:8.2f} s   launch→completion seen (workflow run {wf})")
    say(f"  workflow history     {r.history_max:8d}     events at most ({r.history_longest}; {r.history_runs} workflow "
        f"runs; goal <= 10,240)")
    say(f"  messages sent        {r.sent:8d}     (expected {r.expected}; suppressed {r.suppressed}, "
        f"failed {r.failed}, in doubt {r.in_doubt}; sink counted {r.sink_pipeline})")
    say(f"  pipeline rate        {r.pipeline_rate:8.0f} msg/s")
    say(f"  raw aiosmtplib rate  {r.raw_rate:8.0f} msg/s  ({r.raw_sent} messages of ~{r.msg_bytes:,.0f} B, "
        f"{'8-bit' if r.eight_bit else 'base64'} parts, in "
        f"{r.raw_s:.2f} s; sink counted {r.sink_raw})")
    say(f"  pipeline / raw       {r.ratio:8.2f}     (goal >= 0.5)")
    say(f"  hand-written rate    {r.hand_rate:8.0f} msg/s  (email.mime + send_message, {r.raw_sent} messages in "
        f"{r.hand_s:.2f} s; sink counted {r.sink_hand})")
    say(f"  pipeline / hand      {r.hand_ratio:8.2f}     (goal >= 1.2)")
    start = f", {r.rss_start_mib:.0f} MiB at that point" if r.rss_start_mib is not None else ""
    say(f"  peak RSS             {r.rss_mib:8.0f} MiB (bench+worker process, ru_maxrss"
        f"{', peak reset just before the pipeline' + start if r.rss_reset else ', whole process incl. seeding'}); "
        f"Temporal dev server {temporal}")
    say(f"  CPU, pipeline        {_cpu_line(r.cpu_pipeline, r.pipeline_s, r.sent)}")
    say(f"  CPU, raw             {_cpu_line(r.cpu_raw, r.raw_s, r.raw_sent)}")
    say(f"  CPU, hand-written    {_cpu_line(r.cpu_hand, r.hand_s, r.raw_sent)}")
    if r.breakdown:
        say(f"  breakdown (wall clock; steps overlap: {args.batch_concurrency} batches and {args.connections} "
            "connections run concurrently, threads wait for the GIL):")
        for line in r.breakdown:
            say(line)


def print_medians(results: list[RunResult], args: argparse.Namespace) -> None:
    med = statistics.median
    say(f"medians of {len(results)} run(s) (N={args.members}, C={args.connections}, page_size={args.page_size}, "
        f"batch_concurrency={args.batch_concurrency}, sink={args.sink_used}):")
    say(f"  seed                 {med(r.seed_s for r in results):8.2f} s   "
        f"({args.members / med(r.seed_s for r in results):,.0f} members/s)")
    say(f"  pipeline             {med(r.pipeline_s for r in results):8.2f} s")
    say(f"  messages sent        {med(r.sent for r in results):8.0f}")
    say(f"  pipeline rate        {med(r.pipeline_rate for r in results):8.0f} msg/s")
    say(f"  raw aiosmtplib rate  {med(r.raw_rate for r in results):8.0f} msg/s")
    say(f"  pipeline / raw       {med(r.ratio for r in results):8.2f}     (goal >= 0.5)")
    say(f"  hand-written rate    {med(r.hand_rate for r in results):8.0f} msg/s")
    say(f"  pipeline / hand      {med(r.hand_ratio for r in results):8.2f}     (goal >= 1.2)")
    say(f"  peak RSS             {med(r.rss_mib for r in results):8.0f} MiB (bench+worker process)")
    say(f"  workflow history     {max(r.history_max for r in results):8d}     events, the longest of all runs")
    extra = [r.sink_pipeline - r.sent for r in results if r.sink_pipeline is not None]
    say(f"  sent twice           {max(extra) if extra else 'n/a':>8}     (the sink's count minus the ledger's sent, "
        f"worst run; {args.workers} worker process(es))")
    for name in results[0].cpu_pipeline if results else ():
        vals = [r.cpu_pipeline.get(name) for r in results]
        if all(v is not None for v in vals) and vals:
            say(f"  CPU, pipeline, {name:<9}{med(v for v in vals):6.1f} s")  # type: ignore[misc]


async def main_async(args: argparse.Namespace) -> int:
    # SIGTERM behaves like Ctrl-C: the main task is cancelled and unwinds through every `finally`
    # (sink, worker, dev server)
    task = asyncio.current_task()
    assert task is not None
    with contextlib.suppress(NotImplementedError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    results: list[RunResult] = []
    for i in range(1, args.runs + 1):
        results.append(await run_once(i, args, args.sink_used))
        print_run(i, results[-1], args)
    say()
    print_medians(results, args)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    base = Settings()  # CLARION_PAGE_SIZE / CLARION_BATCH_CONCURRENCY (env or .env) set the defaults
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--members", "-n", type=int, default=20000, help="synthetic members to seed")
    p.add_argument("--connections", "-c", type=int, default=4, help="SMTP connections (pipeline and raw)")
    p.add_argument("--runs", "-r", type=int, default=1, help="repeat the whole measurement (fresh db each)")
    p.add_argument("--page-size", type=int, default=base.page_size, help="members per deliver_batch activity")
    p.add_argument("--batch-concurrency", type=int, default=base.batch_concurrency,
                   help="deliver_batch activities in flight (default: CLARION_BATCH_CONCURRENCY, else 4 per worker)")
    p.add_argument("--sink", choices=["auto", "smtp-sink", "aiosmtpd"], default="auto",
                   help="SMTP sink: Postfix smtp-sink if found (auto), else aiosmtpd")
    p.add_argument("--breakdown", action="store_true",
                   help="time the delivery steps (adds a little overhead) and the event loop's lag")
    p.add_argument("--db", metavar="URL", help="a PostgreSQL server URL (e.g. postgresql+psycopg://postgres@"
                   "127.0.0.1:5432/test): each run gets a new database there; default: a SQLite file")
    p.add_argument("--suggest-continue-as-new", type=int, metavar="EVENTS",
                   help="the dev server suggests continue-as-new at this many history events (Temporal's default "
                        "4,096): shows a campaign crossing runs at a small N")
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes: the bench's own plus N-1 `clarion worker` processes on the same queue")
    p.add_argument("--baseline-max", type=int, metavar="M",
                   help="send at most M messages in each baseline (default: as many as the pipeline sent); "
                        "they are steady loops, so a rate measured on 100,000 holds for 1,000,000")
    p.add_argument("--keep", action="store_true", help="keep the temporary folders (db, sink log)")
    p.add_argument("--seed-only", metavar="DB_URL", help=argparse.SUPPRESS)  # internal: the seeding child
    args = p.parse_args(argv)
    if args.batch_concurrency is None:   # as `clarion up` with this many worker processes (Settings.pages_in_flight)
        args.batch_concurrency = base.model_copy(update={"up_workers": args.workers}).pages_in_flight
    if args.sink == "auto":
        args.sink_used = "smtp-sink" if find_smtp_sink() else "aiosmtpd"
    else:
        if args.sink == "smtp-sink" and not find_smtp_sink():
            p.error("smtp-sink not found (Debian: apt-get install postfix)")
        args.sink_used = args.sink
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.seed_only:
        print(json.dumps(dataclasses.asdict(seed_db(args.seed_only, args.members))), flush=True)
        return 0
    sink = f"{args.sink_used} ({find_smtp_sink()})" if args.sink_used == "smtp-sink" else args.sink_used
    say(f"broadcast bench: N={args.members} C={args.connections} runs={args.runs} page_size={args.page_size} "
        f"batch_concurrency={args.batch_concurrency} sink={sink} "
        f"cpus={os.cpu_count()} python={sys.version.split()[0]}")
    try:
        return asyncio.run(main_async(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        say("interrupted; everything started was stopped")
        return 130


if __name__ == "__main__":
    sys.exit(main())

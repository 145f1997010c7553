"""Per-recipient rendering throughput, as the delivery hot path does it (``activities.messages.MessageBuilder``:
sign the member's unsubscribe and preference links, pick the template version, render sandboxed Jinja over
the MJML compiled once), for email (and the MIME bytes the SMTP channel sends), SMS (with its segment count)
and the other channels; members in several locales with Babel helpers (plural, money, dates) in the text.

    .venv/bin/python bench/render.py [--members 20000] [--runs 3]

Prints renders per second (medians of the runs) and microseconds per message. No database: the shipped
library through the same Renderer as the worker; the MJML compile is done before timing (once per template,
version and locale in production too), and reported apart.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from activities.messages import CampaignInfo, MessageBuilder, Target  # noqa: E402
from bench.common import say  # noqa: E402
from campaigns.costs import unit_costs  # noqa: E402
from channels.email_smtp import SmtpConfig, SmtpEmailChannel  # noqa: E402
from consent.tokens import Signer  # noqa: E402
from templates.render import Renderer  # noqa: E402

LOCALES = ("ru", "en", "en-US", "ru", "en", "pl", "de", "ar")
NAMES = ("Анна", "Bob", "Carol", "Дмитрий", "Erin", "Zofia", "Jonas", "Layla")
BENCH_TEXT = ('{{ member.first_name }}, {{ plural(member.points_balance, one="{n} point", few="{n} points", '
              'many="{n} points", other="{n} points") }} on your card; last purchase '
              '{{ money(last_purchase.amount, "RUB") }} on {{ date(last_purchase.occurred_at, "long") }}.\n')


def library_with_helpers(tmp: Path) -> Path:
    """The shipped library plus one template whose SMS and email text use the Babel helpers per member."""
    import shutil

    from templates.store import LIBRARY

    lib = tmp / "library"
    shutil.copytree(LIBRARY, lib)
    t = lib / "bench_offer"
    shutil.copytree(lib / "weekend_offer", t)
    for f in t.glob("sms.*.txt"):
        f.write_text(BENCH_TEXT, "utf-8")
    for f in t.glob("email.*.txt"):
        f.write_text(BENCH_TEXT + f.read_text("utf-8"), "utf-8")
    return lib


def targets(n: int, channel: str) -> list[Target]:
    out = []
    for i in range(n):
        locale = LOCALES[i % len(LOCALES)]
        out.append(Target(
            delivery_id=10_000_000 + i, member_id=i + 1, channel=channel, locale=locale.split("-")[0] if
            locale.split("-")[0] in ("ru", "en") else "en",
            address=f"member{i}@bench.example" if channel == "email" else f"+7916{i:07d}",
            context={"member": {"first_name": NAMES[i % len(NAMES)], "last_name": None, "kind": "individual",
                                "locale": locale, "points_balance": (i * 37) % 5000, "tier": "gold"},
                     "time_zone": "Europe/Moscow", "card": {"number": f"2770{i:08d}", "status": "active"},
                     "last_purchase": {"amount": f"{(i * 13) % 9000}.50", "currency": "RUB",
                                       "occurred_at": "2026-11-28T14:05:00+00:00"}}))
    return out


def run(builder: MessageBuilder, info: CampaignInfo, items: list[Target], mime: SmtpEmailChannel | None) -> float:
    started = time.perf_counter()
    for t in items:
        msg, _ = builder.build(info, t)
        if mime is not None:
            mime.build(msg)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", "-n", type=int, default=20000)
    parser.add_argument("--runs", "-r", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        renderer = Renderer(library_with_helpers(Path(tmp)))
        builder = MessageBuilder(renderer=renderer, signer=Signer(b"b" * 32), base_url="https://clarion.example",
                                 unsubscribe_mailto="unsubscribe@clarion.example")
        info = CampaignInfo(id=1, key="bench", name="Bench", program_id=1,
                            program={"key": "shop", "name": "Shop & Co", "currency": "RUB",
                                     "time_zone": "Europe/Moscow", "brand": {"color": "#1a56db"}},
                            template=lambda step, variant=None: ("bench_offer", None), costs=unit_costs({}))
        smtp = SmtpEmailChannel(SmtpConfig(sender="Shop <news@shop.example>"))
        t0 = time.perf_counter()
        for locale in ("ru", "en"):
            renderer.compiled("bench_offer", locale)
        say(f"MJML compile (once per template, version, locale): {1000 * (time.perf_counter() - t0) / 2:.0f} ms each")
        cases = [("email (render)", "email", None), ("email (render + MIME bytes)", "email", smtp),
                 ("sms", "sms", None), ("push", "push", None), ("telegram", "telegram", None)]
        say(f"{args.members} members per run, {args.runs} runs, locales {', '.join(sorted(set(LOCALES)))}")
        for label, channel, mime in cases:
            items = targets(args.members, channel)
            run(builder, info, items[:200], mime)            # warm caches (compiled channel bodies, Locales)
            times = [run(builder, info, items, mime) for _ in range(args.runs)]
            med = statistics.median(times)
            say(f"  {label:<30} {args.members / med:>9,.0f} renders/s   {1e6 * med / args.members:7.1f} µs each"
                f"   (runs: {', '.join(f'{args.members / t:,.0f}' for t in times)})")


if __name__ == "__main__":
    main()

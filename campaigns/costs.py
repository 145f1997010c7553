"""Message costs and budget arithmetic, in the program's currency, in Decimal only.

Amounts have 4 decimal places (the scale of ``delivery.cost`` and ``campaign.budget_*``), rounded half up.
A unit cost finer than that (an email at 0.00015) is rounded to it (0.0002) when the program's costs are read.
SMS is paid per segment; every other channel per message (WhatsApp bills a conversation message once,
however long it is).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

PLACES = Decimal("0.0001")

DEFAULT_UNIT_COSTS: dict[str, Decimal] = {
    "email": Decimal("0.0010"),
    "sms": Decimal("0.0500"),  # per segment
    "whatsapp": Decimal("0.0300"),
    "telegram": Decimal("0.0000"),
    "push": Decimal("0.0000"),
    "receipt": Decimal("0.0000"),
    "inbox": Decimal("0.0000"),
    "direct_mail": Decimal("0.8000"),
}
PER_SEGMENT = frozenset({"sms"})


def money(x: Any) -> Decimal:
    """``x`` (str, int, Decimal; a finite float by its shortest repr) as an amount with 4 decimal places,
    rounded half up."""
    if isinstance(x, bool):
        raise ValueError(f"expected an amount, got {x!r}")
    if isinstance(x, float):
        x = repr(x)  # 0.1 -> "0.1", not the binary expansion; "nan"/"inf" are refused below
    if isinstance(x, str):
        try:
            x = Decimal(x.strip())
        except InvalidOperation:
            raise ValueError(f"expected an amount such as 0.05, got {x!r}") from None
    if isinstance(x, int):
        x = Decimal(x)
    if not isinstance(x, Decimal):
        raise ValueError(f"expected an amount (text, integer or Decimal), got {type(x).__name__} {x!r}")
    if not x.is_finite():
        raise ValueError(f"expected a finite amount, got {x}")
    try:
        return x.quantize(PLACES, rounding=ROUND_HALF_UP)
    except InvalidOperation:
        raise ValueError(f"amount {x} is too large") from None


def unit_costs(overrides: Mapping[str, Any] | None) -> dict[str, Decimal]:
    """The default unit cost of every channel, replaced by the program's ``overrides`` (numbers or text)."""
    costs = dict(DEFAULT_UNIT_COSTS)
    for channel, raw in (overrides or {}).items():
        if channel not in DEFAULT_UNIT_COSTS:
            raise ValueError(f"unit cost for unknown channel {channel!r}: use one of {', '.join(DEFAULT_UNIT_COSTS)}")
        try:
            cost = money(raw)
        except ValueError as exc:
            raise ValueError(f"unit cost for {channel}: {exc}") from None
        if cost < 0:
            raise ValueError(f"unit cost for {channel} must not be negative, got {raw}")
        costs[channel] = cost
    return costs


def message_cost(channel: str, costs: Mapping[str, Decimal], *, segments: int = 1) -> Decimal:
    """What one message on ``channel`` costs: SMS unit cost × segments, any other channel its unit cost."""
    if channel not in costs:
        raise ValueError(f"no unit cost for channel {channel!r}")
    if isinstance(segments, bool) or not isinstance(segments, int) or segments < 1:
        raise ValueError(f"segments must be a whole number of at least 1, got {segments!r}")
    unit = costs[channel]
    return money(unit * segments if channel in PER_SEGMENT else unit)


def affordable(costs: Sequence[Decimal], remaining: Decimal) -> int:
    """How many of ``costs``, taken in order, fit in ``remaining``. Stops at the first that does not fit: a
    budget runs out at an exact member, it never skips a dear message to send a cheaper one after it."""
    left = remaining
    for n, cost in enumerate(costs):
        if cost > left:
            return n
        left -= cost
    return len(costs)

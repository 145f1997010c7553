"""`clarion campaign estimate`: audience, held out, reachable and suppressed by reason, cost — computed by
the same rules the delivery path applies (holdout hash, consent policy, unit costs)."""

from __future__ import annotations

from decimal import Decimal

from sqlmodel import Session

from campaigns.estimate import estimate
from campaigns.holdout import held_out
from campaigns.spec import parse_spec
from members.service import get_program, set_program_settings
from storage.db import make_engine
from storage.tables import utcnow
from tests.factories import campaign_spec, seed_members


def test_estimate_counts_what_a_run_would_do(any_db_url):
    engine = make_engine(any_db_url)
    n = 400
    program_id = seed_members(engine, n, consent_every=2)   # even members consent; member ids 1..n
    set_program_settings(engine=engine, key="shop", data={"unit_costs": {"email": "0.25"}})
    spec = parse_spec(campaign_spec(holdout=0.2, budget="20"))
    with Session(engine) as s:
        est = estimate(session=s, program=get_program(s, "shop"), spec=spec, now=utcnow())
        ids = list(range(1, n + 1))
    held = [i for i in ids if held_out(spec.key, i, 0.2)]
    reachable = [i for i in ids if i not in held and i % 2 == 0]
    assert program_id and est.audience == n
    assert est.held_out == len(held) and 40 <= len(held) <= 120
    [email] = est.channels
    assert email.reachable == len(reachable)
    assert email.suppressed == {"no_consent": n - len(held) - len(reachable)}
    assert est.cost == Decimal("0.25") * len(reachable)
    assert est.within_budget == 80 and est.over_budget
    engine.dispose()

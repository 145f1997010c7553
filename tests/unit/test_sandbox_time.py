"""The sandbox's time limit (templates.sandbox.MAX_RENDER_S): a render that runs too long stops with TooSlow
at the line it reached; loops otherwise behave exactly as Jinja's; a render inside a render keeps the outer
one's deadline; a render after a stopped one has its own time."""

from __future__ import annotations

import time

import pytest
from jinja2.sandbox import SandboxedEnvironment

from templates import sandbox
from templates.sandbox import BoundedSandbox, TooSlow

HOURS = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"


@pytest.fixture(autouse=True)
def short_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "MAX_RENDER_S", 0.2)


def test_a_render_over_the_limit_stops_at_its_line_and_the_next_render_has_its_own_time() -> None:
    env = BoundedSandbox()
    started = time.perf_counter()
    with pytest.raises(TooSlow, match=r"more than 0\.2 s") as caught:
        env.from_string("fine\n" + HOURS).render()
    assert 0.2 <= time.perf_counter() - started < 1.5
    assert "or a macro that calls itself" in str(caught.value)
    assert env.from_string("{% for i in range(3) %}{{ i }}{% endfor %}").render() == "012"


def test_the_line_of_a_stopped_render_is_the_loop_it_was_in() -> None:
    from templates.render import template_line

    with pytest.raises(TooSlow) as caught:
        BoundedSandbox().from_string("a\nb\n" + HOURS).render()
    assert template_line(caught.value) == 3


def test_a_render_inside_a_render_keeps_the_outer_deadline() -> None:
    env = BoundedSandbox()
    inner = env.from_string("{{ 'inner' }}")
    outer = env.from_string("{{ render_inner() }}" + HOURS)
    with pytest.raises(TooSlow):           # the inner render's end did not lift the outer's limit
        outer.render(render_inner=lambda: inner.render())


LOOPS = """{% for k, v in d|dictsort %}{{ loop.index }}/{{ loop.length }}:{{ k }}={{ v }}{{ ',' if not loop.last }}\
{% endfor %}|{% for x in [] %}x{% else %}none{% endfor %}|{% for x in xs if x > 1 %}{{ loop.revindex }}{{ x }}\
{{ loop.cycle('a', 'b') }}{% endfor %}|{% for t in tree recursive %}({{ t.n }}{{ loop(t.kids) }}){% endfor %}|\
{% for a, b in [(1, 2), (3, 4)] %}{{ a + b }}{{ loop.previtem }}{{ loop.nextitem }}{% endfor %}"""


def test_loops_render_exactly_as_in_jinjas_sandbox() -> None:
    context = {"d": {"b": 2, "a": 1}, "xs": [1, 2, 3],
               "tree": [{"n": 1, "kids": [{"n": 2, "kids": []}]}, {"n": 3, "kids": []}]}
    plain = SandboxedEnvironment().from_string(LOOPS).render(context)
    assert BoundedSandbox().from_string(LOOPS).render(context) == plain
    assert plain.startswith("1/2:a=1,2/2:b=2|none|") and "(1(2))(3)" in plain

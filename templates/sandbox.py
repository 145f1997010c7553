"""The sandbox every template runs in (a preview, the import check, each message sent): Jinja's
SandboxedEnvironment, which keeps Python's internals out of reach, made to refuse a value too large to send
before it is built. A template that asks for one fails like any other template error, naming its file and
line (``TooLarge``, a SecurityError). Each of these would otherwise allocate gigabytes in one step:

    {{ 'a' * 10**9 }}  {{ [0] * 10**9 }}     a repetition: len × n (``*``; ``+`` adds the two lengths)
    {{ 10 ** 10**9 }}  {{ big * big }}       an int's bits
    {{ '%*d' % (10**9, 1) }}  |format        printf widths and precisions, and the text of what they print
    {{ '{:>1000000000}'.format(1) }}         format specs' widths and precisions, and what the fields print
    {{ 'x'|center(10**9) }}                  center, indent, wordwrap, replace, join, batch with a filler, slice,
                                             tojson's indent, sum of lists
    {{ 'x'.ljust(10**9) }}                   the same str methods: center, ljust, rjust, zfill, expandtabs,
                                             join, replace, translate
    {{ lipsum(10**9) }}
    {{ [big] * 1000 }}, a ~ b, |string       the text a list or dict would print as (shared items counted each time)
    {{ big_list|map('upper')|list }}         a lazy sequence (map, select, ...) counted as it is collected
    the output                               a template's text, or a block's (macro, set, filter, call), counted
                                             as it is written: over the limit stops at the line that passed it

"Too large" is more than MAX_SIZE characters of text (or items of a list, or bits of an int). ``range`` keeps
Jinja's own limit (100,000 items).

Time is bounded too: a render (a template's ``render``, with whatever it includes and calls) that runs longer
than MAX_RENDER_S seconds stops with ``TooSlow``, naming the line it had reached. Nested loops over large ranges
(``range(100000)`` in ``range(100000)``) or a macro that calls itself twice a level would otherwise hold the
thread (a worker's event loop, a preview's request) for hours. The clock is read at a ``for`` loop's first
item and every 256th after it, and at every call (a macro, a method, a function), so a loop over a list the
template grows in place (``.append``) stops at the limit too, with what it appended by then.
"""

from __future__ import annotations

import re
import threading
import time
import types
from collections.abc import (
    Callable,
    ItemsView,
    Iterable,
    Iterator,
    KeysView,
    Mapping,
    ValuesView,
)
from functools import update_wrapper
from typing import Any, NoReturn

from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame, optimizeconst
from jinja2.environment import Template
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context, new_context
from jinja2.sandbox import (
    SandboxedEnvironment,
    SandboxedEscapeFormatter,
    SandboxedFormatter,
)
from jinja2.utils import Namespace, generate_lorem_ipsum
from markupsafe import Markup

MAX_SIZE = 1_000_000
MAX_RENDER_S = 2.0      # a message renders in well under 1 ms; read at each render, so tests may lower it

_TEXT = (str, bytes, bytearray)
_SIZED = (str, bytes, bytearray, list, tuple)
_CONTAINERS = (list, tuple, dict, set, frozenset, Namespace, KeysView, ValuesView, ItemsView)   # views: dict.items()


class OverLimit(SecurityError):
    """A template went over one of the sandbox's bounds (its message says which)."""


class TooLarge(OverLimit):
    """A template asked for a value over MAX_SIZE (characters, items or bits)."""


class TooSlow(OverLimit):
    """A render ran longer than MAX_RENDER_S."""


class _Deadline(threading.local):
    at: float | None = None     # time.monotonic() by which this thread's render must end


_render = _Deadline()


def _on_time() -> None:
    deadline = _render.at
    if deadline is not None and time.monotonic() > deadline:
        raise TooSlow(f"too slow: the template ran for more than {MAX_RENDER_S:g} s (loops over large ranges, "
                      "or a macro that calls itself?)")


def _timed(items: Iterable[Any]) -> Iterator[Any]:
    """A ``for`` loop's items, with the clock read at the first and every 256th."""
    for n, item in enumerate(items):
        if not n & 255:
            _on_time()
        yield item


class _TimedTemplate(Template):
    """A template whose render ends by MAX_RENDER_S from its start (a render inside it shares its deadline)."""

    _flat_globals: dict[str, Any] | None = None

    def new_context(self, vars: dict[str, Any] | None = None, shared: bool = False,
                    locals: Mapping[str, Any] | None = None) -> Context:
        """Jinja's, with the globals as a plain dict taken at the first render: ``Template.globals`` is a
        ChainMap (the template's own over the environment's), which each render's context copied key by key in
        Python, ~8 µs of a 19 µs subject line. The environment's globals (helpers, ``lipsum``) are all set
        before its first template is compiled and never change after."""
        flat = self._flat_globals
        if flat is None:
            flat = self._flat_globals = dict(self.globals)
        return new_context(self.environment, self.name, self.blocks, vars, shared, flat, locals)

    def render(self, *args: Any, **kwargs: Any) -> str:
        if _render.at is not None:
            return Template.render(self, *args, **kwargs)
        _render.at = time.monotonic() + MAX_RENDER_S
        try:
            return Template.render(self, *args, **kwargs)
        finally:
            _render.at = None


def _too_large(what: str, size: int, unit: str = "characters") -> TooLarge:
    return TooLarge(f"too large: {what} would make {size:,} {unit}; a template may make at most {MAX_SIZE:,}")


def _refuse(what: str, size: int, unit: str = "characters") -> NoReturn:
    raise _too_large(what, size, unit)


def _check(what: str, size: int, unit: str = "characters") -> None:
    if size > MAX_SIZE:
        _refuse(what, size, unit)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def text_size(value: Any, *, indent: int = 0, limit: int = MAX_SIZE) -> int:
    """About how many characters ``value`` prints as (str(), JSON): exact for text, a walk through lists and
    dicts (a list holding one big list a thousand times prints it a thousand times; ``indent`` adds a line's
    indentation per item and level), stopping as soon as it is over ``limit``."""
    if isinstance(value, _TEXT):
        return len(value)
    if not isinstance(value, _CONTAINERS):
        return _scalar_size(value)
    total = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack and total <= limit:
        item, depth = stack.pop()
        if isinstance(item, Namespace):
            item = getattr(item, "_Namespace__attrs", {})
        if isinstance(item, Mapping):
            total += 2 + len(item) * (4 + indent * (depth + 1))
            if total <= limit:
                stack.extend((x, depth + 1) for pair in item.items() for x in pair)
        elif isinstance(item, _CONTAINERS):
            total += 2 + len(item) * (2 + indent * (depth + 1))
            if total <= limit:
                stack.extend((x, depth + 1) for x in item)
        else:
            total += len(item) + 2 if isinstance(item, _TEXT) else _scalar_size(item)
    return total


def _scalar_size(value: Any) -> int:
    if isinstance(value, int):
        return value.bit_length() // 3 + 2        # decimal digits: bits × log10(2) < bits / 3
    return 32                                     # a float, a date, None, Undefined, a macro's repr...


# --- operators ---------------------------------------------------------------------------------------------


def _check_repeat(left: Any, right: Any) -> None:
    if _int(left) is not None and isinstance(right, _SIZED):
        left, right = right, left
    if isinstance(left, _SIZED) and _int(right) is not None:
        _check(f"a {type(left).__name__} of length {len(left):,} repeated {right:,} times", len(left) * right,
               "characters" if isinstance(left, _TEXT) else "items")
    elif _int(left) is not None and _int(right) is not None:
        _check("multiplying these numbers", left.bit_length() + right.bit_length(), "bits")


def _check_power(base: Any, exponent: Any) -> None:
    if _int(base) is not None and _int(exponent) is not None and exponent > 0 and abs(base) > 1:
        _check(f"{abs(base).bit_length()}-bit number to the power {exponent:,}", abs(base).bit_length() * exponent,
               "bits")


def _check_sum(left: Any, right: Any) -> None:
    if isinstance(left, _SIZED) and isinstance(right, _SIZED):
        _check(f"adding a {type(left).__name__} and a {type(right).__name__}", len(left) + len(right),
               "characters" if isinstance(left, _TEXT) else "items")


# printf-style: %[(key)][flags][width][.precision][length]conversion
_PRINTF = re.compile(r"%(?:\(([^)]*)\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?(.)", re.DOTALL)


def _check_printf(what: str, fmt: str, args: Any) -> None:
    """The text ``fmt % args`` makes: its literal text, each conversion's width and precision (``*`` takes
    one from ``args``) and the text of the value it prints."""
    positional = args if isinstance(args, tuple) else (args,)
    size, at = len(fmt), 0
    for m in _PRINTF.finditer(fmt):
        key, width, precision, conversion = m.groups()
        if conversion == "%":
            continue
        for spec in (width, precision):
            if spec == "*":
                n = positional[at] if at < len(positional) else 0
                at += 1
            else:
                n = int(spec) if spec and len(spec) <= 9 else MAX_SIZE + 1 if spec else 0
            size += abs(n) if _int(n) is not None else 0
        if key is not None and isinstance(args, Mapping):
            size += text_size(args.get(key))
        else:
            size += text_size(positional[at] if at < len(positional) else None)
            at += 1
        _check(what, size)


class _Counting:
    """str.format's formatter, counting what the fields make (a width, a precision, the value's text) before
    each is formatted: ``'{0}{0}{0}'.format(big)`` prints ``big`` three times."""

    made = 0

    def vformat(self, format_string: str, args: Any, kwargs: Any) -> str:
        self.made = len(format_string)
        return super().vformat(format_string, args, kwargs)  # type: ignore[misc]

    def format_field(self, value: Any, format_spec: str) -> Any:
        numbers = re.findall(r"\d+", format_spec)
        self.made += text_size(value) + sum(int(n) if len(n) <= 9 else MAX_SIZE + 1 for n in numbers)
        _check("str.format", self.made)
        return super().format_field(value, format_spec)  # type: ignore[misc]


class _Formatter(_Counting, SandboxedFormatter):
    pass


class _EscapeFormatter(_Counting, SandboxedEscapeFormatter):
    pass


# --- str methods (through SandboxedEnvironment.call) -------------------------------------------------------


def _check_method(obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Checks a call of a str (or bytes) method that can make much more than it is given; returns the args to
    call it with (``join`` gets its items collected, counted, as a tuple)."""
    owner, name = getattr(obj, "__self__", None), getattr(obj, "__name__", "")
    if not isinstance(owner, _TEXT):
        return args
    what = f"{type(owner).__name__}.{name}"
    first = args[0] if args else None
    if name in ("center", "ljust", "rjust", "zfill"):
        width = _int(kwargs.get("width", first))
        if width is not None:
            _check(what, max(len(owner), width))
    elif name == "expandtabs":
        tabsize = _int(kwargs.get("tabsize", first if args else 8))
        if tabsize is not None:
            _check(what, len(owner) + owner.count(b"\t" if isinstance(owner, bytes | bytearray) else "\t") * tabsize)
    elif name == "replace" and len(args) >= 2 and isinstance(args[0], _TEXT) and isinstance(args[1], _TEXT):
        count = _int(args[2] if len(args) > 2 else kwargs.get("count", -1))
        _check(what, _replaced_size(owner, args[0], args[1], -1 if count is None else count))
    elif name == "join" and args:
        items = _collect(what, first, separator=len(owner))
        return (items, *args[1:])
    elif name == "translate" and isinstance(first, Mapping):
        longest = max((len(v) for v in first.values() if isinstance(v, _TEXT)), default=1)
        _check(what, len(owner) * max(longest, 1))
    return args


def _replaced_size(text: Any, old: Any, new: Any, count: int) -> int:
    n = text.count(old) if len(old) else len(text) + 1
    n = min(n, count) if count >= 0 else n
    return len(text) + n * (len(new) - len(old))


def _collect(what: str, items: Iterable[Any], *, separator: int = 0) -> tuple[Any, ...]:
    """``items`` collected into a tuple, their text (and a separator between each two) counted as they come:
    a lazy sequence stops at the limit instead of being built whole first."""
    out: list[Any] = []
    size = 0
    for item in items:
        size += text_size(item) + (separator if out else 0)
        _check(what, size)
        out.append(item)
    return tuple(out)


# --- filters -----------------------------------------------------------------------------------------------


def _text_of(what: str, value: Any) -> None:
    """A filter about to make text of a list or dict: no more than the limit."""
    if isinstance(value, _CONTAINERS):
        _check(f"{what} of a {type(value).__name__}", text_size(value))


def _lazy(what: str, value: Any) -> Any:
    """A lazy sequence (map, select, a generator) a filter is about to collect: counted as it comes."""
    if isinstance(value, (*_SIZED, Mapping, set, frozenset, range)):
        return value
    return _counted(what, value)


def _counted(what: str, items: Iterable[Any]) -> Iterator[Any]:
    size = 0
    for item in items:
        size += text_size(item) + 1
        _check(what, size)
        yield item


def _f_center(value: Any, width: Any = 80) -> Any:
    _text_of("center", value)
    if _int(width) is not None:
        _check("center", max(text_size(value), width))
    return value


def _f_indent(s: Any, width: Any = 4, first: bool = False, blank: bool = False) -> Any:
    _text_of("indent", s)
    unit = len(width) if isinstance(width, str) else _int(width) or 0
    text = s if isinstance(s, str) else ""
    _check("indent", text_size(s) + (text.count("\n") + 1) * unit)
    return s


def _f_wordwrap(s: Any, width: Any = 79, break_long_words: bool = True, wrapstring: Any = None,
                break_on_hyphens: bool = True) -> Any:
    _text_of("wordwrap", s)
    if isinstance(s, str):
        lines = len(s) // max(_int(width) or 1, 1) + sum(s.count(c) for c in " \t\n-") + 1
        _check("wordwrap", len(s) + lines * (len(wrapstring) if isinstance(wrapstring, str) else 2))
    return s


def _f_replace(s: Any, old: Any, new: Any, count: Any = None) -> Any:
    _text_of("replace", s)
    if isinstance(s, str):
        n = _int(count)
        _check("replace", _replaced_size(s, str(old), str(new), -1 if n is None else n))
    return s


def _f_join(value: Any, d: Any = "", attribute: Any = None) -> Any:
    return _collect("join", value, separator=len(d) if isinstance(d, str) else 0)


def _f_format(value: Any, *args: Any, **kwargs: Any) -> Any:
    if isinstance(value, str):
        _check_printf("format", value, kwargs or args)
    return value


def _f_batch(value: Any, linecount: Any, fill_with: Any = None) -> Any:
    if fill_with is not None and _int(linecount) is not None:
        _check("batch with a filler", linecount, "items")
    return _lazy("batch", value)


def _f_slice(value: Any, slices: Any, fill_with: Any = None) -> Any:
    if _int(slices) is not None:
        _check("slice", slices, "lists")
    return _lazy("slice", value)


def _f_tojson(value: Any, indent: Any = None) -> Any:
    unit = len(indent) if isinstance(indent, str) else _int(indent) or 0
    _check("tojson", text_size(value, indent=unit))
    return value


def _f_sum(iterable: Any, attribute: Any = None, start: Any = 0) -> Any:
    items = _collect("sum", iterable) if attribute is None else _lazy("sum", iterable)
    if attribute is None and isinstance(start, _SIZED):
        _check("sum", len(start) + sum(len(x) for x in items if isinstance(x, _SIZED)),
               "characters" if isinstance(start, _TEXT) else "items")
    return items


# filter → the check run on its value and arguments first (returns the value to pass on); the filters that
# make text of whatever they get (a list's repr) only have that checked, those that collect a sequence count it
_FILTER_CHECKS: dict[str, Callable[..., Any]] = {
    "center": _f_center, "indent": _f_indent, "wordwrap": _f_wordwrap, "replace": _f_replace, "join": _f_join,
    "format": _f_format, "batch": _f_batch, "slice": _f_slice, "tojson": _f_tojson, "sum": _f_sum,
}
_TEXT_FILTERS = ("string", "e", "escape", "forceescape", "safe", "pprint", "upper", "lower", "title", "capitalize",
                 "trim", "striptags", "urlencode", "urlize", "wordcount", "truncate", "xmlattr")
_COLLECTING_FILTERS = ("list", "sort", "unique", "reverse", "groupby", "min", "max", "last", "random", "dictsort")


def _text_check(name: str) -> Callable[..., Any]:
    def check(value: Any, *_: Any, **__: Any) -> Any:
        _text_of(name, value)
        return value
    return check


def _lazy_check(name: str) -> Callable[..., Any]:
    def check(value: Any, *_: Any, **__: Any) -> Any:
        return _lazy(name, value)
    return check


def _guarded(original: Callable[..., Any], check: Callable[..., Any]) -> Callable[..., Any]:
    """``original`` (a Jinja filter) with ``check(value, *args, **kwargs)`` first, given the same arguments
    after the environment or context Jinja passes some filters; it keeps the filter's Jinja attributes."""
    lead = 1 if getattr(original, "jinja_pass_arg", None) is not None else 0

    def guarded(*args: Any, **kwargs: Any) -> Any:
        if len(args) <= lead:
            return original(*args, **kwargs)
        value = check(*args[lead:], **kwargs)
        return original(*args[:lead], value, *args[lead + 1:], **kwargs)

    return update_wrapper(guarded, original)


def _lipsum(n: Any = 5, html: bool = True, min: Any = 20, max: Any = 100) -> str:
    """Jinja's ``lipsum`` (its parameters' names), at most the limit: n paragraphs of up to ``max`` words."""
    if _int(n) is not None and _int(min) is not None and _int(max) is not None:
        _check("lipsum", n * (abs(min) + abs(max)) * 12)
    return generate_lorem_ipsum(n, html, min, max)


# --- output ------------------------------------------------------------------------------------------------


def _finalize(value: Any) -> Any:
    """Every ``{{ ... }}`` before it is printed: a list or dict no longer than the limit as text."""
    if isinstance(value, _CONTAINERS):
        _check(f"printing a {type(value).__name__}", text_size(value))
    return value


class _Output(list):  # type: ignore[type-arg]
    """A block's buffered output (a macro, ``{% set %}...{% endset %}``, ``{% filter %}``, ``{% call %}``),
    counted as it is written."""

    size = 0

    def append(self, part: Any) -> None:
        self.size += len(part) if isinstance(part, str) else 0
        _check("the output", self.size)
        super().append(part)

    def extend(self, parts: Iterable[Any]) -> None:
        parts = tuple(parts)
        self.size += sum(len(p) for p in parts if isinstance(p, str))
        _check("the output", self.size)
        super().extend(parts)


class _Generator(CodeGenerator):
    """Jinja's code generator, with ``a ~ b`` checked before it joins and block buffers that count."""

    def buffer(self, frame: Frame) -> None:
        frame.buffer = self.temporary_identifier()
        self.writeline(f"{frame.buffer} = environment.output_buffer()")

    @optimizeconst
    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        if frame.eval_ctx.volatile:
            join = "(markup_join if context.eval_ctx.volatile else str_join)"
        elif frame.eval_ctx.autoescape:
            join = "markup_join"
        else:
            join = "str_join"
        self.write(f"environment.checked_join({join}, (")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


_TIMED = "_timed_loop"    # the filter every for loop's items go through (Jinja names filters when it compiles)


class BoundedSandbox(SandboxedEnvironment):
    """SandboxedEnvironment that refuses values over MAX_SIZE and renders over MAX_RENDER_S (see the module's
    docstring)."""

    code_generator_class = _Generator
    template_class = _TimedTemplate
    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.finalize is None:
            self.finalize = _finalize
        for name, check in _FILTER_CHECKS.items():
            self.filters[name] = _guarded(self.filters[name], check)
        for name in _TEXT_FILTERS:
            self.filters[name] = _guarded(self.filters[name], _text_check(name))
        for name in _COLLECTING_FILTERS:
            self.filters[name] = _guarded(self.filters[name], _lazy_check(name))
        self.globals["lipsum"] = _lipsum
        self.filters[_TIMED] = _timed

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        """The template's tree, each ``for`` loop iterating through ``_timed``."""
        tree = super()._parse(source, name, filename)
        for loop in tree.find_all(nodes.For):
            loop.iter = nodes.Filter(loop.iter, _TIMED, [], [], None, None, lineno=loop.iter.lineno)
        return tree

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            _check_repeat(left, right)
        elif operator == "**":
            _check_power(left, right)
        elif operator == "%" and isinstance(left, str):
            _check_printf("the % operator", left, right)
        elif operator == "+":
            _check_sum(left, right)
        return super().call_binop(context, operator, left, right)

    def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        _on_time()
        args = _check_method(obj, args, kwargs)
        return super().call(context, obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """Jinja's own (a str's ``format``/``format_map`` with sandboxed field lookups), with a formatter that
        counts what the fields make."""
        if not isinstance(value, (types.MethodType, types.BuiltinMethodType)) \
                or value.__name__ not in ("format", "format_map") or not isinstance(value.__self__, str):
            return None
        text: str = value.__self__
        is_format_map = value.__name__ == "format_map"
        formatter = _EscapeFormatter(self, escape=text.escape) if isinstance(text, Markup) else _Formatter(self)

        def wrapper(*args: Any, **kwargs: Any) -> str:
            if is_format_map:
                if kwargs:
                    raise TypeError("format_map() takes no keyword arguments")
                if len(args) != 1:
                    raise TypeError(f"format_map() takes exactly one argument ({len(args)} given)")
                kwargs, args = args[0], ()
            return type(text)(formatter.vformat(text, args, kwargs))

        return update_wrapper(wrapper, value)

    @staticmethod
    def output_buffer() -> _Output:
        return _Output()

    @staticmethod
    def checked_join(join: Callable[[Iterable[Any]], str], parts: tuple[Any, ...]) -> str:
        """``a ~ b ~ ...``: the text of the parts (a list's too) counted before it is made."""
        _check("joining with ~", sum(text_size(p) for p in parts))
        return join(parts)

    def concat(self, parts: Iterable[str]) -> str:  # type: ignore[override]
        """Every template's and block's output is joined here: counted part by part. Over the limit, the error
        is raised inside the template where it wrote the part, so that it names that line."""
        out: list[str] = []
        size = 0
        for part in parts:
            size += len(part)
            if size > MAX_SIZE:
                exc = _too_large("the output", size)
                if isinstance(parts, types.GeneratorType):
                    parts.throw(exc)
                raise exc
            out.append(part)
        return "".join(out)

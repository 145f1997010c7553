"""The members' preference center: what the page shows (:func:`load`, a plain :class:`PreferenceView`) and
what a save changes (:func:`save`, :func:`unsubscribe_all`, :func:`remove_device`, :func:`telegram_link`).
No HTTP here: the route reads the form, calls these in one transaction and renders the view.

What the page shows, per channel the member can be reached on (email, SMS and WhatsApp with a phone,
Telegram with a linked chat, push with a registered device) and per opt-out channel (till receipt, app
inbox, direct mail: always shown, on unless revoked), one box per program topic:

    cell state   shown                          from the current consent state
    on           checked                        topic granted/confirmed (opt-out channel: anything but
                                                revoked/suppressed) and the channel not blocked
    pending      checked, "waiting for          topic ``requested`` (double opt-in, link not used yet)
                 confirmation"
    off          unchecked                      anything else, or the whole channel (``*``) revoked/suppressed

A channel whose ``*`` is ``suppressed`` (the address bounced or complained) is shown read-only: ticking
boxes would not make the address work. So is a channel revoked over a suppression (the suppression is the
last channel-wide act before the revocation): unsubscribing and ticking again never lifts a suppression.
A topic ``requested`` whose confirmation can no longer be used (expired, failed, sent to an old address)
shows ``off``: nothing waits for it, and ticking it again asks again.

What a save writes (only what changed, in the caller's transaction, each row with the proof: source web,
ip, user agent ≤ 512, the wording version and the SHA-256 of the exact wording shown):

    off → on     ``requested`` + a queued confirmation (``consent.confirmations.request_confirmation``)
                 on a channel with double opt-in (``ProgramRules.needs_confirmation``), else ``granted``
    on/pending → off   ``revoked``
    a channel blocked by ``*`` revoked, with a box now ticked: ``*`` ``granted`` (the block lifted), then
                 every topic brought to what the page shows; topics granted before the block and left
                 unticked are ``revoked`` so that lifting the block brings none of them back
    a double opt-in channel left with no pending topic: its open confirmation requests expire (a link
                 already sent can no longer confirm anything)
    unsubscribe from everything: ``*`` ``revoked`` on every channel not revoked or suppressed yet (a
                 suppression stays what it is); topics waiting for confirmation ``revoked`` and open
                 confirmation requests expire, so no link sent before can subscribe the member again
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Literal

from sqlalchemy import select, update
from sqlmodel import Session

from campaigns.rules import ProgramRules, localized, program_rules
from campaigns.schedule import parse_hhmm
from consent import ledger
from consent.confirmations import (
    OPEN_STATUSES,
    Proof,
    address_of,
    open_topics,
    request_confirmation,
)
from consent.links import create_link
from consent.policy import CHANNEL_WIDE, OPT_OUT_CHANNELS
from storage.tables import (
    ChannelAccount,
    ChannelName,
    Confirmation,
    ConsentAction,
    ConsentRecord,
    ConsentState,
    Member,
    Program,
    PushToken,
    utcnow,
)

LANGUAGES = ("en", "ru")                 # the page's texts; any other language falls back to English
CellState = Literal["on", "off", "pending"]
ChannelStatus = Literal["open", "revoked", "suppressed"]
#: reachable channels in the order the page shows them, then the opt-out ones
OPT_IN_ORDER = (ChannelName.email, ChannelName.sms, ChannelName.whatsapp, ChannelName.telegram, ChannelName.push)
OPT_OUT_ORDER = (ChannelName.receipt, ChannelName.inbox, ChannelName.direct_mail)
_OPEN_REQUESTS = OPEN_STATUSES
_ON = frozenset({ConsentAction.granted, ConsentAction.confirmed})
_OFF = frozenset({ConsentAction.revoked, ConsentAction.suppressed})


@dataclass(frozen=True)
class TopicView:
    key: str
    name: str
    description: str | None


@dataclass(frozen=True)
class Cell:
    topic: str
    state: CellState
    topic_state: CellState      # the topic's own state, whatever the channel-wide one

    @property
    def checked(self) -> bool:
        return self.state != "off"


@dataclass(frozen=True)
class ChannelView:
    channel: str
    opt_out: bool               # receipt, inbox, direct mail: allowed unless revoked
    double_opt_in: bool         # ticking a box sends a confirmation first
    status: ChannelStatus       # the channel-wide (``*``) state
    address_hint: str | None    # masked (a***@example.com, +7 *** ** 89), never the full address
    cells: tuple[Cell, ...]

    def cell(self, topic: str) -> Cell:
        return next(c for c in self.cells if c.topic == topic)


@dataclass(frozen=True)
class Device:
    id: int
    platform: str
    registered_at: datetime
    tail: str                   # the last 6 characters of the token


@dataclass(frozen=True)
class PreferenceView:
    """Everything the page shows, read in one go; nothing in it is written back."""

    program_id: int
    program_name: str
    member_id: int
    language: str               # one of LANGUAGES
    locale: str                 # the member's locale (dates), e.g. ru-RU
    wording_version: str
    wording_text: str           # exactly what is shown (the program's name filled in)
    text_hash: str              # SHA-256 of wording_text
    topics: tuple[TopicView, ...]
    channels: tuple[ChannelView, ...]
    devices: tuple[Device, ...]
    telegram_linked: bool
    telegram_can_link: bool     # the program has a bot and the member no linked chat
    quiet_from: str | None
    quiet_to: str | None

    def channel(self, name: str) -> ChannelView | None:
        return next((c for c in self.channels if c.channel == name), None)


@dataclass(frozen=True)
class Choices:
    """What the member asks for: the ticked boxes per channel and their quiet hours."""

    ticked: Mapping[str, frozenset[str]]
    quiet_from: str | None = None
    quiet_to: str | None = None


@dataclass(frozen=True)
class FormProblem:
    field: str                  # the form field the message goes next to
    code: Literal["not_a_time", "need_both", "same_time"]


@dataclass(frozen=True)
class SaveResult:
    acts: int                                   # ledger rows written (confirmation requests included)
    confirmation_channels: tuple[str, ...] = ()  # channels a confirmation was queued on
    quiet_hours_changed: bool = False


def language_of(locale: str | None) -> str:
    lang = (locale or "").replace("_", "-").split("-")[0].lower()
    return lang if lang in LANGUAGES else "en"


def wording_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def cell_field(channel: str, topic: str) -> str:
    """The form field of one box (channel and topic keys are ``[a-z0-9_-]``)."""
    return f"c.{channel}.{topic}"


def _mask_email(email: str) -> str:
    local, _, domain = email.partition("@")
    return f"{local[:2]}***@{domain}"


def _mask_phone(phone: str) -> str:
    return f"{phone[:2]} *** {phone[-2:]}" if len(phone) > 4 else "***"


def _topic_state(status: str | None, *, opt_out: bool) -> CellState:
    if status == ConsentAction.requested:
        return "pending"
    if status in _ON:
        return "on"
    if status in _OFF:
        return "off"
    return "on" if opt_out else "off"


def _channel_view(channel: str, states: Mapping[str, str], topics: Iterable[str], *, rules: ProgramRules,
                  address_hint: str | None, waiting: set[str], under_suppression: bool = False) -> ChannelView:
    """``waiting``: the topics an open confirmation request waits for; ``under_suppression``: the last
    channel-wide act before the current one was a suppression."""
    opt_out = channel in OPT_OUT_CHANNELS
    wide = states.get(CHANNEL_WIDE)
    status: ChannelStatus = "suppressed" if wide == ConsentAction.suppressed else \
        "revoked" if wide == ConsentAction.revoked else "open"
    if status == "revoked" and under_suppression:
        status = "suppressed"
    cells = []
    for t in topics:
        own = _topic_state(states.get(t), opt_out=opt_out)
        if own == "pending" and t not in waiting:     # its link expired or went to an old address
            own = "off"
        cells.append(Cell(topic=t, state=own if status == "open" else "off", topic_state=own))
    return ChannelView(channel=channel, opt_out=opt_out,
                       double_opt_in=not opt_out and rules.needs_confirmation(channel),
                       status=status, address_hint=address_hint, cells=tuple(cells))


def load(*, session: Session, member_id: int, for_update: bool = False) -> PreferenceView | None:
    """The page of a member; None when the member is unknown or erased (the caller answers 404).
    ``for_update`` locks the member (ledger.lock_members) so that two saves at once diff one after the other."""
    if for_update:
        ledger.lock_members(session=session, member_ids=[member_id])
    member = session.get(Member, member_id, with_for_update=for_update)
    if member is None or member.erased_at is not None:
        return None
    program = session.get(Program, member.program_id)
    if program is None:  # pragma: no cover - a foreign key
        return None
    rules = program_rules(program.settings)
    locale = member.locale or program.default_locale or "en"
    language = language_of(locale)
    text = (localized(rules.consent_wording.text, language) or "").replace("{program}", program.name)
    topics = tuple(TopicView(t.key, localized(t.name, language) or t.key, localized(t.description, language))
                   for t in rules.topics)
    states: dict[str, dict[str, str]] = {}
    for channel, topic, status in session.execute(
            select(ConsentState.channel, ConsentState.topic, ConsentState.status)
            .where(ConsentState.member_id == member_id)):
        states.setdefault(channel, {})[topic] = status
    devices = tuple(Device(id=d.id or 0, platform=d.platform, registered_at=d.created_at, tail=d.token[-6:])
                    for d in session.scalars(select(PushToken).where(PushToken.member_id == member_id)
                                             .order_by(PushToken.id)))  # type: ignore[arg-type]
    reachable: dict[str, bool] = {
        ChannelName.email: bool(member.email), ChannelName.sms: bool(member.phone),
        ChannelName.whatsapp: bool(member.phone), ChannelName.telegram: bool(member.telegram_chat_id),
        ChannelName.push: bool(devices)}
    hints: dict[str, str | None] = {
        ChannelName.email: member.email and _mask_email(member.email),
        ChannelName.sms: member.phone and _mask_phone(member.phone),
        ChannelName.whatsapp: member.phone and _mask_phone(member.phone)}
    keys = [t.key for t in topics]
    waiting = {c: open_topics(session=session, member_id=member_id, channel=c, address=address_of(member, c))
               for c in OPT_IN_ORDER if any(v == ConsentAction.requested for v in states.get(c, {}).values())}
    suppressed = _revoked_over_suppression(session, member_id, states)
    channels = [_channel_view(c, states.get(c, {}), keys, rules=rules, address_hint=hints.get(c),
                              waiting=waiting.get(c, set()), under_suppression=c in suppressed)
                for c in OPT_IN_ORDER if reachable[c]]
    channels += [_channel_view(c, states.get(c, {}), keys, rules=rules, address_hint=None, waiting=set(),
                               under_suppression=c in suppressed) for c in OPT_OUT_ORDER]
    has_bot = session.scalar(select(ChannelAccount.id).where(ChannelAccount.program_id == program.id,
                                                            ChannelAccount.channel == ChannelName.telegram))
    quiet = (member.preferences or {}).get("quiet_hours") if isinstance(member.preferences, dict) else None
    quiet = quiet if isinstance(quiet, dict) else {}
    return PreferenceView(
        program_id=program.id or 0, program_name=program.name, member_id=member_id, language=language,
        locale=locale, wording_version=rules.consent_wording.version, wording_text=text,
        text_hash=wording_hash(text), topics=topics, channels=tuple(channels), devices=devices,
        telegram_linked=bool(member.telegram_chat_id),
        telegram_can_link=has_bot is not None and not member.telegram_chat_id,
        quiet_from=_hhmm(quiet.get("from")), quiet_to=_hhmm(quiet.get("to")))


def _revoked_over_suppression(session: Session, member_id: int, states: Mapping[str, Mapping[str, str]]) -> set[str]:
    """The channels revoked (``*``) whose last channel-wide act other than a revocation is a suppression: the
    address still does not work, however often the member unsubscribed since."""
    revoked = [c for c, st in states.items() if st.get(CHANNEL_WIDE) == ConsentAction.revoked]
    if not revoked:
        return set()
    last: dict[str, str] = {}
    for channel, action in session.execute(
            select(ConsentRecord.channel, ConsentRecord.action).where(
                ConsentRecord.member_id == member_id, ConsentRecord.topic == CHANNEL_WIDE,
                ConsentRecord.channel.in_(revoked),  # type: ignore[attr-defined]
                ConsentRecord.action != ConsentAction.revoked)
            .order_by(ConsentRecord.at, ConsentRecord.id)):  # type: ignore[arg-type]
        last[channel] = action
    return {c for c, action in last.items() if action == ConsentAction.suppressed}


def _hhmm(value: object) -> str | None:
    """A stored time as the page's time inputs want it (HH:MM), or None."""
    try:
        return parse_hhmm(value).strftime("%H:%M") if isinstance(value, str) and value else None
    except ValueError:
        return None


def wording_is_current(view: PreferenceView, proof: Proof) -> bool:
    """The form was made from the wording the program has now (so the proof names the text shown)."""
    return (proof.wording_version, proof.text_hash) == (view.wording_version, view.text_hash)


def read_form(view: PreferenceView, form: Mapping[str, str]) -> tuple[Choices, list[FormProblem]]:
    """The member's choices from the submitted form (fields the page does not show are ignored) and what
    is wrong with them. Quiet hours: both times (HH:MM) or neither, not equal."""
    ticked = {ch.channel: frozenset(t.key for t in view.topics if form.get(cell_field(ch.channel, t.key)))
              for ch in view.channels}
    problems: list[FormProblem] = []
    times: dict[str, str | None] = {}
    for name in ("quiet_from", "quiet_to"):
        raw = (form.get(name) or "").strip()
        if not raw:
            times[name] = None
            continue
        try:
            times[name] = parse_hhmm(raw[:5] if len(raw) == 8 and raw.endswith(":00") else raw).strftime("%H:%M")
        except ValueError:
            times[name] = None
            problems.append(FormProblem(name, "not_a_time"))
    if not problems:
        if bool(times["quiet_from"]) != bool(times["quiet_to"]):
            problems.append(FormProblem("quiet_to" if times["quiet_from"] else "quiet_from", "need_both"))
        elif times["quiet_from"] and times["quiet_from"] == times["quiet_to"]:
            problems.append(FormProblem("quiet_to", "same_time"))
    return Choices(ticked=ticked, quiet_from=times["quiet_from"], quiet_to=times["quiet_to"]), problems


def with_choices(view: PreferenceView, choices: Choices) -> PreferenceView:
    """The view showing what the member submitted (the page again after a refused save)."""
    channels = tuple(
        ch if ch.status == "suppressed" else
        ChannelView(channel=ch.channel, opt_out=ch.opt_out, double_opt_in=ch.double_opt_in, status=ch.status,
                    address_hint=ch.address_hint,
                    cells=tuple(Cell(c.topic, ("pending" if c.state == "pending" else "on")
                                     if c.topic in choices.ticked.get(ch.channel, ()) else "off", c.topic_state)
                                for c in ch.cells))
        for ch in view.channels)
    return replace(view, channels=channels, quiet_from=choices.quiet_from, quiet_to=choices.quiet_to)


def _act(view: PreferenceView, channel: str, topic: str, action: ConsentAction, proof: Proof) -> ledger.ConsentAct:
    return ledger.ConsentAct(member_id=view.member_id, channel=channel, topic=topic, action=action,
                             source=proof.source, wording_version=proof.wording_version, text_hash=proof.text_hash,
                             ip=proof.ip, user_agent=proof.user_agent)


def _plan(view: PreferenceView, choices: Choices, proof: Proof
          ) -> tuple[list[ledger.ConsentAct], dict[str, list[str]], set[str]]:
    """(acts to record, topics to request per channel, double opt-in channels left with nothing pending)."""
    acts: list[ledger.ConsentAct] = []
    requests: dict[str, list[str]] = {}
    settled: set[str] = set()
    for ch in view.channels:
        if ch.status == "suppressed":
            continue
        want = choices.ticked.get(ch.channel, frozenset())
        lift = ch.status == "revoked" and bool(want)
        if lift:
            acts.append(_act(view, ch.channel, CHANNEL_WIDE, ConsentAction.granted, proof))
        for cell in ch.cells:
            wanted = cell.topic in want
            # once the block is lifted the topic's own state shows through: compare with that
            now = cell.topic_state if lift else cell.state
            # a double opt-in channel coming back from a block asks again, even for topics confirmed before
            if wanted and (now == "off" or (lift and ch.double_opt_in)):
                if ch.double_opt_in:
                    requests.setdefault(ch.channel, []).append(cell.topic)
                else:
                    acts.append(_act(view, ch.channel, cell.topic, ConsentAction.granted, proof))
            elif not wanted and now != "off":
                acts.append(_act(view, ch.channel, cell.topic, ConsentAction.revoked, proof))
        still_pending = any(c.topic_state == "pending" and c.topic in want for c in ch.cells)
        if ch.double_opt_in and not still_pending and ch.channel not in requests:
            settled.add(ch.channel)
    return acts, requests, settled


def _expire_requests(session: Session, member_id: int, channels: Iterable[str] | None = None) -> None:
    stmt = update(Confirmation).where(Confirmation.member_id == member_id,  # type: ignore[arg-type]
                                      Confirmation.status.in_(_OPEN_REQUESTS))  # type: ignore[attr-defined]
    if channels is not None:
        channels = list(channels)
        if not channels:
            return
        stmt = stmt.where(Confirmation.channel.in_(channels))  # type: ignore[attr-defined]
    session.execute(stmt.values(status="expired"))


def save(*, session: Session, view: PreferenceView, choices: Choices, proof: Proof) -> SaveResult:
    """Write what the member changed against ``view`` (read in this same session). The caller commits."""
    acts, requests, settled = _plan(view, choices, proof)
    ledger.record(session=session, program_id=view.program_id, acts=acts)
    sent: list[str] = []
    written = len(acts)
    for channel, topics in requests.items():
        lifted = (ch := view.channel(channel)) is not None and ch.status == "revoked"   # asks again, see _plan
        if request_confirmation(session=session, program_id=view.program_id, member_id=view.member_id,
                                channel=channel, topics=topics, proof=proof, ask_again=lifted) is not None:
            sent.append(channel)
            written += len(topics)
    _expire_requests(session, view.member_id, settled)
    quiet_changed = (choices.quiet_from, choices.quiet_to) != (view.quiet_from, view.quiet_to)
    if quiet_changed:
        member = session.get(Member, view.member_id)
        assert member is not None
        prefs = dict(member.preferences or {})
        if choices.quiet_from and choices.quiet_to:
            prefs["quiet_hours"] = {"from": choices.quiet_from, "to": choices.quiet_to}
        else:
            prefs.pop("quiet_hours", None)
        member.preferences = prefs or None     # a new dict: the JSON column sees the change
        member.updated_at = utcnow()
        session.add(member)
    return SaveResult(acts=written, confirmation_channels=tuple(sent), quiet_hours_changed=quiet_changed)


def unsubscribe_all(*, session: Session, view: PreferenceView, proof: Proof) -> int:
    """``*`` revoked on every channel not revoked or suppressed yet (a suppression is kept: revoking over it
    would let a later tick lift it), every topic waiting for confirmation revoked, and no pending
    confirmation left. The caller commits."""
    current = dict(session.execute(
        select(ConsentState.channel, ConsentState.status)
        .where(ConsentState.member_id == view.member_id, ConsentState.topic == CHANNEL_WIDE)).all())
    acts = [_act(view, c, CHANNEL_WIDE, ConsentAction.revoked, proof)
            for c in ChannelName if current.get(c) not in (ConsentAction.revoked, ConsentAction.suppressed)]
    acts += [_act(view, channel, topic, ConsentAction.revoked, proof) for channel, topic in session.execute(
        select(ConsentState.channel, ConsentState.topic).where(
            ConsentState.member_id == view.member_id, ConsentState.topic != CHANNEL_WIDE,
            ConsentState.status == ConsentAction.requested)
        .order_by(ConsentState.channel, ConsentState.topic))]
    ledger.record(session=session, program_id=view.program_id, acts=acts)
    _expire_requests(session, view.member_id)
    return len(acts)


def remove_device(*, session: Session, view: PreferenceView, device_id: int) -> bool:
    """Forget one of the member's push devices (another member's id does nothing). The caller commits."""
    row = session.get(PushToken, device_id)
    if row is None or row.member_id != view.member_id:
        return False
    session.delete(row)
    return True


@dataclass(frozen=True)
class TelegramLink:
    bot_username: str
    token: str                  # one-time, for ``channels.telegram.deep_link``
    topics: tuple[str, ...] = field(default=())


def telegram_link(*, session: Session, view: PreferenceView, topics: Iterable[str]) -> TelegramLink | None:
    """A one-time link to the program's bot; pressing Start there links the chat and grants ``topics`` (the
    program's topics only). None when there is nothing to link. The caller commits."""
    if not view.telegram_can_link:
        return None
    config = session.scalar(select(ChannelAccount.config).where(ChannelAccount.program_id == view.program_id,
                                                                ChannelAccount.channel == ChannelName.telegram))
    bot = (config or {}).get("bot_username")
    if not bot:
        return None
    known = {t.key for t in view.topics}
    chosen = tuple(sorted({t for t in topics if t in known}))
    token = create_link(session=session, program_id=view.program_id, member_id=view.member_id,
                        channel=ChannelName.telegram, topics=list(chosen))
    return TelegramLink(bot_username=bot, token=token, topics=chosen)

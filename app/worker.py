"""The one place that lists workflows and activities and builds their dependencies."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.engine import Engine
from temporalio.client import Client
from temporalio.worker import Worker

from activities.confirmations import ConfirmationActivities
from activities.delivery import DeliveryActivities
from activities.direct_mail import DirectMailActivities
from activities.triggers import TriggerActivities
from app.observability import traced
from app.settings import Settings, get_settings
from channels.email_smtp import SmtpConfig, SmtpEmailChannel
from channels.registry import ChannelRegistry
from consent.tokens import Signer
from storage.db import make_engine
from templates.render import Renderer
from templates.store import TemplateStore
from workflows.broadcast import BroadcastCampaign
from workflows.confirmations import ConfirmationSender
from workflows.triggered import ScheduledTriggerRun, TriggeredCampaign

WORKFLOWS = [BroadcastCampaign, TriggeredCampaign, ScheduledTriggerRun, ConfirmationSender]


def email_channel(settings: Settings) -> SmtpEmailChannel:
    return SmtpEmailChannel(SmtpConfig(
        host=settings.smtp_host, port=settings.smtp_port, username=settings.smtp_username,
        password=settings.smtp_password.get_secret_value() if settings.smtp_password else None,
        use_tls=settings.smtp_tls, start_tls=settings.smtp_starttls, timeout=settings.smtp_timeout_s,
        connections=settings.smtp_connections, sender=settings.email_from,
    ))


def signer(settings: Settings) -> Signer:
    return Signer(settings.signing_secret.get_secret_value().encode())


def channel_registry(settings: Settings, engine: Engine) -> ChannelRegistry:
    return ChannelRegistry(engine=engine, email=email_channel(settings), public_base_url=settings.base_url,
                           refresh_s=settings.channel_refresh_s, email_rate_per_s=settings.smtp_rate_per_s,
                           sandbox=settings.sandbox_allowed)


def delivery_activities(settings: Settings, *, engine: Engine | None = None,
                        cls: type[DeliveryActivities] = DeliveryActivities) -> DeliveryActivities:
    engine = engine or make_engine(settings.db_url)
    renderer, registry = stored_renderer(engine, settings), channel_registry(settings, engine)
    acts = cls(
        engine=engine, renderer=renderer, registry=registry,
        signer=signer(settings), base_url=settings.base_url, unsubscribe_mailto=settings.unsubscribe_mailto,
    )
    # the direct-mail hand-over and the double opt-in sender share the engine and the channels;
    # activity_list registers them
    acts.direct_mail = direct_mail_activities(settings, engine)  # type: ignore[attr-defined]
    acts.confirmations = confirmation_activities(settings, engine, registry, renderer)  # type: ignore[attr-defined]
    return acts


def stored_renderer(engine: Engine, settings: Settings | None = None) -> Renderer:
    """Templates from the library and the versions kept in the database (pinned at launch, imported)."""
    return Renderer(store=TemplateStore(library=(settings or get_settings()).template_library, engine=engine))


def confirmation_activities(settings: Settings, engine: Engine, registry: ChannelRegistry,
                            renderer: Renderer | None = None) -> ConfirmationActivities:
    return ConfirmationActivities(engine=engine, registry=registry, renderer=renderer or Renderer(),
                                  signer=signer(settings), base_url=settings.base_url,
                                  message_id_domain=settings.unsubscribe_mailto.rsplit("@", 1)[-1])


def direct_mail_activities(settings: Settings, engine: Engine) -> DirectMailActivities:
    return DirectMailActivities(engine=engine, out_dir=settings.var_dir / "direct_mail")


def activity_list(acts: DeliveryActivities) -> list:
    triggers = TriggerActivities(engine=acts._engine, delivery=acts)
    mail: DirectMailActivities = getattr(acts, "direct_mail", None) or \
        direct_mail_activities(get_settings(), acts._engine)
    confirmations: ConfirmationActivities = getattr(acts, "confirmations", None) or \
        confirmation_activities(get_settings(), acts._engine, acts._registry)
    return [acts.count_audience, acts.plan_pages, acts.set_campaign_status, acts.deliver_batch,
            acts.pending_summary, acts.expire_pending, acts.deliver_due,
            triggers.match_events, triggers.match_scheduled, mail.hand_over_letters,
            confirmations.send_confirmations]


def build_worker(client: Client, settings: Settings, acts: DeliveryActivities | None = None) -> Worker:
    """With tracing on, the worker's client carries temporalio's TracingInterceptor (spans for workflows and
    activities); the caller's client is not changed."""
    acts = acts or delivery_activities(settings)
    return Worker(
        traced(client, settings), task_queue=settings.temporal_task_queue, workflows=WORKFLOWS,
        activities=activity_list(acts),
        max_concurrent_activities=16,
        graceful_shutdown_timeout=timedelta(seconds=settings.worker_shutdown_s),
        # pages go to whichever worker polls for them: eager dispatch would start every page a workflow task
        # schedules on the worker that ran the workflow task, so one of N workers sent ~2/3 of a campaign
        # (bench/broadcast.py --workers)
        disable_eager_activity_execution=True,
    )

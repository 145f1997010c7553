"""Running Clarion in production: logs, metrics, traces (README "Operations: health, metrics, tracing, logs").

- Logs: ``CLARION_LOG_FORMAT=json|text`` and ``CLARION_LOG_LEVEL`` for `clarion worker`, `clarion api` and
  `clarion up`. Libraries that would write members' addresses or message bodies into the log at INFO or
  DEBUG (SQLAlchemy's statement parameters, Twilio's and Telegram's request logs, httpx's URLs, the local
  mail server's envelopes) are held at WARNING whatever the level. The API's access log line names the
  route's template (``/api/v1/members/{external_id}``), never the path, query or client address.
- Metrics (``prometheus_client``): the delivery metrics of ``activities.metrics`` and the API's requests,
  served on ``CLARION_METRICS_HOST:CLARION_METRICS_PORT`` and, when ``api_metrics``, at the API's
  ``/metrics``; the Temporal SDK's own metrics on ``CLARION_TEMPORAL_METRICS_PORT`` (its Runtime's
  Prometheus endpoint).
- Traces: temporalio's ``TracingInterceptor`` on the Temporal client when ``settings.tracing``, spans
  exported over OTLP/HTTP; needs the ``otel`` extra.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
    start_http_server,
)
from temporalio.client import Client

from app.errors import ClarionError
from app.settings import Settings

# --- logs -------------------------------------------------------------------------------------------

# loggers that write personal data or secrets below WARNING: statement parameters (addresses, names),
# provider request bodies (phone numbers, texts), request URLs (bot tokens), SMTP envelopes
QUIET = ("sqlalchemy.engine", "sqlalchemy.pool", "twilio", "telegram", "httpx", "httpcore", "urllib3",
         "mail.log", "aiosmtplib", "pyfcm", "google", "hpack")
# LogRecord's own attributes: anything else on a record came in through ``extra=``
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName",
                                                                        "color_message"}   # uvicorn's ANSI copy


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts, level, logger, msg, the record's extras (Temporal's workflow and
    activity info: ids and types, which carry no personal data) and the exception's traceback."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc_type"] = record.exc_info[0].__name__ if record.exc_info[0] else None
            out["exc"] = "".join(traceback.format_exception(*record.exc_info))
        return json.dumps(out, default=str, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def configure_logging(settings: Settings) -> None:
    """The root logger of this process: one stderr handler in the chosen format and level."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    quiet_personal_loggers()
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):   # through the root handler, in its format
        uv = logging.getLogger(name)
        uv.handlers.clear()
        uv.propagate = True


def quiet_personal_loggers() -> None:
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)


# --- metrics ------------------------------------------------------------------------------------------

disable_created_metrics()   # no `*_created` series beside each counter and histogram: Prometheus needs none

HTTP_REQUESTS = Counter("clarion_http_requests", "API requests by route template and status class",
                        ["method", "route", "status"])
HTTP_SECONDS = Histogram("clarion_http_request_seconds", "API request time by route template", ["route"],
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
access_log = logging.getLogger("clarion.access")
PROBES = frozenset({"/healthz", "/readyz", "/metrics"})   # asked every few seconds: logged at DEBUG only
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})   # any other: "other"


def metrics_body() -> tuple[bytes, str]:
    """The process's metrics in Prometheus' text format, and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def start_metrics_server(settings: Settings) -> Callable[[], None] | None:
    """Serve the process's metrics on CLARION_METRICS_HOST:CLARION_METRICS_PORT (a thread); the stopper."""
    if settings.metrics_port is None:
        return None
    try:
        server, thread = start_http_server(settings.metrics_port, addr=settings.metrics_host)
    except OSError as exc:
        raise ClarionError(f"cannot serve metrics on {settings.metrics_host}:{settings.metrics_port}: "
                           f"{exc.strerror or exc}", field="CLARION_METRICS_PORT") from exc

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    return stop


class RequestMetrics:
    """ASGI middleware: each HTTP request counted and timed by its route's template (bounded labels: no
    member id, token or query string), and one access-log line without path, query or client address."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def send_status(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"] if scope["method"] in METHODS else "other"
            seconds = time.perf_counter() - started
            HTTP_REQUESTS.labels(method, route, f"{status[0] // 100}xx").inc()
            HTTP_SECONDS.labels(route).observe(seconds)
            access_log.log(logging.DEBUG if route in PROBES else logging.INFO, "%s %s %s %.1f ms",
                           method, route, status[0], seconds * 1000,
                           extra={"method": method, "route": route, "status": status[0],
                                  "ms": round(seconds * 1000, 1)})


# --- Temporal: SDK metrics, tracing -------------------------------------------------------------------


def temporal_runtime(settings: Settings) -> None:
    """With CLARION_TEMPORAL_METRICS_PORT, the Temporal SDK's default Runtime serves its own metrics
    (workflow/activity task latencies, slots, polls, ...) in Prometheus' format there. Call it before the
    first client connects: later clients and workers use it, earlier ones keep the runtime they had."""
    if settings.temporal_metrics_port is None:
        return
    from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

    Runtime.set_default(Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(
        bind_address=f"{settings.metrics_host}:{settings.temporal_metrics_port}",
        counters_total_suffix=True, durations_as_seconds=True))), error_if_already_set=False)


class TracingUnavailable(ClarionError):
    """Tracing is on but the OpenTelemetry packages are not installed."""


def _otel() -> Any:
    try:
        from opentelemetry.sdk.trace import TracerProvider
        from temporalio.contrib.opentelemetry import TracingInterceptor
    except ImportError as exc:
        raise TracingUnavailable(
            "tracing is on (CLARION_OTEL_ENABLED or OTEL_EXPORTER_OTLP_ENDPOINT) but the OpenTelemetry "
            f"packages are missing ({exc.name}): install clarion's otel extra (opentelemetry-sdk, "
            "opentelemetry-exporter-otlp-proto-http), or set CLARION_OTEL_ENABLED=false",
            field="CLARION_OTEL_ENABLED") from exc
    return TracerProvider, TracingInterceptor


def configure_tracing(settings: Settings, role: str) -> None:
    """A global tracer provider exporting over OTLP/HTTP (endpoint, headers and service name from the
    standard OTEL_* variables), unless one is set already (e.g. by ``opentelemetry-instrument``)."""
    if not settings.tracing:
        return
    TracerProvider, _ = _otel()
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    if isinstance(trace.get_tracer_provider(), TracerProvider):
        return
    resource = Resource.create({"clarion.process": role})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):   # no OTEL_SERVICE_NAME
        resource = resource.merge(Resource({SERVICE_NAME: f"clarion-{role}"}))
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)


def traced(client: Client, settings: Settings) -> Client:
    """The client with temporalio's TracingInterceptor when tracing is on (spans for client calls, and for
    workflows and activities of the workers built on it); the same client when it is off or already has it."""
    if not settings.tracing:
        return client
    _, TracingInterceptor = _otel()
    config = client.config()
    if any(isinstance(i, TracingInterceptor) for i in config["interceptors"]):
        return client
    config["interceptors"] = [*config["interceptors"], TracingInterceptor()]
    return Client(**config)

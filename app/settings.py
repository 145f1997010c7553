"""All of Clarion's settings, read once from the environment (prefix ``CLARION_``) or a ``.env`` file.

Nothing else in the code base reads ``os.environ``: the composition root builds a :class:`Settings`
and hands the values to the parts that need them.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CLARION_", env_file=".env", extra="ignore")

    # where the embedded stack keeps its state (SQLite files, Maildir, logs)
    var_dir: Path = Path("var")
    # Clarion's own data; default: SQLite file under var_dir
    database_url: str | None = None

    # Temporal: unset address = `clarion up` starts the embedded dev server
    temporal_address: str | None = None
    temporal_namespace: str = "default"
    temporal_tls: bool = False
    temporal_api_key: SecretStr | None = None
    # mTLS and a private CA (PEM file paths); any of them, or an API key, turns TLS on
    temporal_tls_cert: Path | None = None          # client certificate (with temporal_tls_key)
    temporal_tls_key: Path | None = None           # its private key
    temporal_tls_ca: Path | None = None            # CA the server's certificate is checked against
    temporal_tls_server_name: str | None = None    # name the server's certificate must carry (and SNI)
    temporal_task_queue: str = "clarion"
    temporal_dev_port: int = 7233
    temporal_ui_port: int = 8233

    # HTTP API and pages
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    # how members' links (unsubscribe, preferences) start; behind a proxy set the public https URL
    public_base_url: str | None = None
    signing_secret: SecretStr = SecretStr("dev-only-signing-secret-change-me")

    # outgoing email (SMTP relay); default: the embedded local mail server of `clarion up`
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 8025
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_tls: bool = False  # implicit TLS (port 465)
    smtp_starttls: bool = False
    smtp_connections: int = Field(default=4, ge=1, le=64)
    smtp_timeout_s: float = 30.0
    smtp_rate_per_s: float | None = Field(default=None, gt=0, description="messages/s through the relay, all workers")
    email_from: str = "Clarion Demo <news@clarion.example>"
    unsubscribe_mailto: str = "unsubscribe@clarion.example"
    # the embedded local mail server of `clarion up` (stores what it receives in var_dir/mail)
    mailbox_enabled: bool = True

    # provider accounts (`clarion channels set`) are read again after this many seconds
    channel_refresh_s: float = Field(default=30.0, ge=0, le=3600)
    # the template library on disk (default: the one shipped in templates/library); versions pinned at launch
    # and imported ones are in the database
    templates_dir: Path | None = None

    # a channel with no account records its requests in the sandbox outbox instead of sending (None: on for
    # the embedded stack, off against an external Temporal, where such a channel is simply not available)
    sandbox: bool | None = None

    # broadcast tuning
    page_size: int = Field(default=500, ge=1, le=5000)
    # pages of a broadcast sent side by side (None: 4 for each worker process of `clarion up`, at least 4)
    batch_concurrency: int | None = Field(default=None, ge=1, le=64)
    # a stopping worker (SIGTERM, a deploy) lets the pages it is sending finish for this long before they are
    # cancelled (Temporal then retries them elsewhere; rows already claimed are never sent twice)
    worker_shutdown_s: float = Field(default=30.0, ge=0, le=600)
    trigger_poll_s: float = Field(default=1.0, gt=0, le=60, description="how often triggered campaigns look for new events")
    # deliver_due activities a triggered campaign runs side by side each round (its members split between them)
    trigger_concurrency: int = Field(default=4, ge=1, le=32)
    # `clarion up` runs its worker as this many child processes (`clarion worker`, on the stack's Temporal and
    # database): Python runs one thread at a time per process, so the API and the worker in one process share one
    # core, and one worker process is short of a core under a sustained event stream (bench/README.md: at 500
    # events/s, p99 5.5 s with one, 1.8 s with two); 0: the worker inside the `clarion up` process
    up_workers: int = Field(default=2, ge=0, le=16)

    # operations (README "Operations: health, metrics, tracing, logs")
    log_format: Literal["text", "json"] = "text"   # json: one object a line, for a log shipper
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Prometheus metrics of this process on an internal port (None: off); worker, `clarion up`
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    metrics_host: str = "127.0.0.1"
    # the Temporal SDK's own metrics (its Runtime's Prometheus endpoint) on another port (None: off)
    temporal_metrics_port: int | None = Field(default=None, ge=1, le=65535)
    # GET /metrics on the API port, no key: false when the API port is reachable from outside (or block the
    # path at the proxy) and scrape the workers' CLARION_METRICS_PORT
    api_metrics: bool = True
    # /readyz: each check (database, Temporal) answers within this or counts as down
    ready_timeout_s: float = Field(default=2.0, gt=0, le=30)
    # OpenTelemetry tracing through Temporal's TracingInterceptor (needs `pip install 'clarion[otel]'`);
    # None: on when the standard OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT is set
    otel_enabled: bool | None = None
    otel_endpoint: str | None = Field(default=None, validation_alias=AliasChoices(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"))

    # security (README "Security"): rate limits of the public endpoints, token buckets (per_s refill, burst)
    # per client address (IPv6: per /64) and per link token, held by each API process on its own
    rate_limits: bool = True
    rate_links_per_s: float = Field(default=5.0, gt=0)        # /p/, /c/, /u/ per client address
    rate_links_burst: int = Field(default=100, ge=1)
    rate_tracking_per_s: float = Field(default=50.0, gt=0)    # /t/o/, /t/c/ per client address (image proxies)
    rate_tracking_burst: int = Field(default=500, ge=1)
    rate_webhooks_per_s: float = Field(default=200.0, gt=0)   # /webhooks/ per client address (providers' callbacks)
    rate_webhooks_burst: int = Field(default=2000, ge=1)
    rate_token_per_s: float = Field(default=0.2, gt=0)        # one link or tracking token, whoever asks
    rate_token_burst: int = Field(default=20, ge=1)
    # Strict-Transport-Security on every answer when the public base URL is https (0: not sent)
    hsts_max_age_s: int = Field(default=31_536_000, ge=0)
    # the largest request body the API reads (JSON, YAML, forms), in bytes; over it: 413. Routes that need more
    # keep their own larger limit: events batch and members bulk 8 MB, a template's zip 25 MB (app.api.main)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)

    @cached_property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.var_dir / 'clarion.db').as_posix()}"

    @property
    def pages_in_flight(self) -> int:
        """A broadcast's pages sent side by side: ``batch_concurrency``, else 4 per worker process of `clarion up`
        (3 workers on 2 cores sent 1,282 msg/s with 4 pages in flight, 1,368 with 12: bench/README.md)."""
        return self.batch_concurrency or 4 * max(1, self.up_workers)

    @property
    def temporal_target(self) -> str:
        return self.temporal_address or f"127.0.0.1:{self.temporal_dev_port}"

    @property
    def embedded_temporal(self) -> bool:
        return not self.temporal_address

    @property
    def sandbox_allowed(self) -> bool:
        return self.embedded_temporal if self.sandbox is None else self.sandbox

    @property
    def base_url(self) -> str:
        return (self.public_base_url or f"http://{self.api_host}:{self.api_port}").rstrip("/")

    @property
    def tracing(self) -> bool:
        return bool(self.otel_endpoint) if self.otel_enabled is None else self.otel_enabled

    @property
    def template_library(self) -> Path:
        from templates.store import LIBRARY

        return self.templates_dir or LIBRARY

    @property
    def maildir(self) -> Path:
        return self.var_dir / "mail"


def get_settings() -> Settings:
    return Settings()

"""deploy/ checked without Docker (no registry to pull images from here): the compose file's services and
their order of start, and that every CLARION_ variable it or .env.example sets is a real Clarion setting
(a misspelt one would be silently ignored: Settings has extra="ignore")."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from app.settings import Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SETTINGS = {f"CLARION_{name.upper()}" for name in Settings.model_fields}


def _compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def _env_example() -> dict[str, str]:
    """Every NAME=value line of .env.example, commented out ones too (they are documented settings)."""
    found = {}
    for line in (DEPLOY / ".env.example").read_text().splitlines():
        m = re.match(r"^#?\s*([A-Z][A-Z0-9_]*)=(.*)$", line)
        if m:
            found[m.group(1)] = m.group(2)
    return found


def test_the_compose_file_has_the_whole_stack():
    services = _compose()["services"]
    assert set(services) == {"postgresql", "temporal", "temporal-ui", "migrate", "api", "worker"}
    assert services["migrate"]["command"] == ["db", "upgrade"] and services["migrate"]["restart"] == "no"
    assert services["api"]["command"] == ["api"] and services["worker"]["command"] == ["worker"]
    assert services["worker"]["deploy"]["replicas"] == "${WORKER_REPLICAS:-2}"


def test_migrations_run_once_before_the_api_and_the_workers():
    services = _compose()["services"]
    assert services["migrate"]["depends_on"] == {"postgresql": {"condition": "service_healthy"}}
    assert services["temporal"]["depends_on"] == {"postgresql": {"condition": "service_healthy"}}
    for name in ("api", "worker"):
        assert services[name]["depends_on"] == {"migrate": {"condition": "service_completed_successfully"},
                                                "temporal": {"condition": "service_started"}}
    every = {dep for s in services.values() for dep in (s.get("depends_on") or [])}
    assert every <= set(services)


def test_every_clarion_process_gets_the_same_database_temporal_and_secret():
    services = _compose()["services"]
    for name in ("migrate", "api", "worker"):
        s = services[name]
        assert s["image"] == "clarion:${IMAGE_TAG:-latest}" and s["build"]["dockerfile"] == "deploy/Dockerfile"
        assert s["env_file"] == ".env"
        env = s["environment"]
        assert env["CLARION_TEMPORAL_ADDRESS"] == "temporal:7233"
        assert env["CLARION_DATABASE_URL"].startswith("postgresql+psycopg://clarion:")
        assert env["CLARION_DATABASE_URL"].endswith("@postgresql:5432/clarion")
        assert env["CLARION_SIGNING_SECRET"].startswith("${CLARION_SIGNING_SECRET:?")  # compose refuses to start without
    assert services["api"]["environment"]["CLARION_API_HOST"] == "0.0.0.0"
    assert services["temporal"]["environment"]["DEFAULT_NAMESPACE"] == "${CLARION_TEMPORAL_NAMESPACE:-clarion}"


def test_every_clarion_variable_used_is_a_real_setting():
    text = (DEPLOY / "docker-compose.yml").read_text() + (DEPLOY / "Dockerfile").read_text()
    used = set(re.findall(r"\bCLARION_[A-Z0-9_]+", text)) | {k for k in _env_example() if k.startswith("CLARION_")}
    assert used, "no CLARION_ variable found"
    assert used - SETTINGS == set()


def test_env_example_lists_what_production_must_set():
    example = _env_example()
    for name in ("CLARION_SIGNING_SECRET", "CLARION_PUBLIC_BASE_URL", "CLARION_SMTP_HOST", "CLARION_SMTP_PORT",
                 "CLARION_SMTP_USERNAME", "CLARION_SMTP_PASSWORD", "CLARION_EMAIL_FROM", "POSTGRES_PASSWORD",
                 "DATABASE_PASSWORD", "CLARION_TEMPORAL_NAMESPACE", "WORKER_REPLICAS"):
        assert name in example, name
    assert example["CLARION_SIGNING_SECRET"] == ""  # no usable default: it must be chosen
    # every ${VAR} the compose file reads is explained in .env.example
    wanted = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", (DEPLOY / "docker-compose.yml").read_text()))
    assert wanted - set(example) == set()


def test_the_image_runs_clarion_as_a_non_root_user():
    lines = [ln.strip() for ln in (DEPLOY / "Dockerfile").read_text().splitlines() if ln.strip()
             and not ln.startswith("#")]
    assert lines[0] == "FROM python:3.11-slim"
    assert "RUN pip install /src && rm -rf /src" in lines
    user = lines.index("USER clarion")
    assert user > lines.index("RUN pip install /src && rm -rf /src")
    assert lines[-2:] == ['ENTRYPOINT ["clarion"]', 'CMD ["--help"]']
    ignored = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert {".venv", ".git", "var", ".env"} <= set(ignored)

"""The production shape: no Docker engine runs here, so the compose file is parsed and its promises checked."""

from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The parsed docker-compose.yml."""
    parsed: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return parsed


def test_services_present(compose: dict[str, Any]) -> None:
    assert {"postgres", "redis", "migrate", "api", "worker"} <= set(compose["services"])


def test_redis_fsyncs_every_write(compose: dict[str, Any]) -> None:
    command = compose["services"]["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] == "always"
    assert compose["services"]["redis"]["volumes"]


def test_worker_is_scalable(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker
    assert worker["command"] == ["arq", "worker.main.WorkerSettings"]


def test_migrations_run_once_before_api_and_worker(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["migrate"]["command"] == ["alembic", "upgrade", "head"]
    assert services["migrate"]["restart"] == "no"
    for name in ("api", "worker"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_every_long_running_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    for name in ("postgres", "redis", "api", "worker"):
        assert compose["services"][name]["healthcheck"]["test"], name


def test_app_services_share_one_image_built_from_deploy(compose: dict[str, Any]) -> None:
    for name in ("migrate", "api", "worker"):
        service = compose["services"][name]
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
        assert service["environment"]["DATABASE_URL"].startswith("postgresql://")
        assert service["environment"]["REDIS_URL"].startswith("redis://")
        assert service["environment"]["SECRET_KEY"] == "${SECRET_KEY:-}"  # the operator's, from the environment
    assert (ROOT / "deploy" / "Dockerfile").exists()


def test_api_publishes_its_port(compose: dict[str, Any]) -> None:
    assert compose["services"]["api"]["ports"] == ["8000:8000"]


def test_observability_profile_scrapes_api_and_workers(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["observability"]
    assert "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in services["prometheus"]["volumes"]
    mounts = " ".join(services["grafana"]["volumes"])
    assert "deploy/grafana/provisioning" in mounts
    assert "deploy/grafana/dashboards" in mounts
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    text = str(config)
    assert "api:8000" in text
    assert "9100" in text

"""The production shape: the compose file parsed and its promises checked; with a Docker engine, `compose config` too.

`make compose-check` (deploy/compose_check.py) brings the file up for real; it needs a Docker engine and minutes.
"""

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy import compose_check
from shared.secretbox import new_secret_key
from shared.settings import Settings

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


APP_SERVICES = ("migrate", "api", "worker", "api-cluster", "worker-cluster")
WORKERS = ("worker", "worker-cluster")


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


def test_every_app_service_gets_the_secret_key_and_the_admin_token(compose: dict[str, Any]) -> None:
    # the cluster profile once replaced the environment it inherits, and its API refused every Notify token
    for name in APP_SERVICES:
        environment = compose["services"][name]["environment"]
        assert environment["SECRET_KEY"] == "${SECRET_KEY:-}", name
        assert environment["ADMIN_TOKEN"] == "${ADMIN_TOKEN:-}", name
        assert environment["DATABASE_URL"] == compose["services"]["api"]["environment"]["DATABASE_URL"], name
        assert environment["ACCESS_LOG_PROBES"] == "false", name
        assert set(environment) <= {field.upper() for field in Settings.model_fields}, name


def test_each_worker_is_checked_by_its_own_heartbeat(compose: dict[str, Any]) -> None:
    for name in WORKERS:
        worker = compose["services"][name]
        assert worker["environment"]["WORKER_HEARTBEAT_FILE"].startswith("/tmp/"), name  # noqa: S108
        assert worker["healthcheck"]["test"] == ["CMD", "python", "-m", "worker.health"], name


def test_postgres_is_healthy_only_once_it_takes_tcp_connections(compose: dict[str, Any]) -> None:
    # on its first start the official image answers on its socket before it listens on TCP
    test = " ".join(compose["services"]["postgres"]["healthcheck"]["test"])
    assert "pg_isready -h 127.0.0.1" in test


def test_the_project_keeps_its_name(compose: dict[str, Any]) -> None:
    # the volumes (pgdata, redisdata) are named after the project: another name would start on empty ones
    assert compose["name"] == "notify"
    assert "Compose v2" in (ROOT / "README.md").read_text()


def test_api_publishes_its_port(compose: dict[str, Any]) -> None:
    assert compose["services"]["api"]["ports"] == ["${API_PORT:-8000}:8000"]


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


# --- the `cluster` profile: a Redis Cluster and the API and workers on it ----------------------------------------

CLUSTER_NODES = [f"redis-node-{n}" for n in range(1, 7)]
CLUSTER_APPS = {"api-cluster": "api", "worker-cluster": "worker"}


def _flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_default_services_stay_outside_the_profiles(compose: dict[str, Any]) -> None:
    # `docker compose up` starts exactly what it started before the cluster profile existed
    for name in ("postgres", "redis", "migrate", "api", "worker"):
        assert "profiles" not in compose["services"][name], name


def test_cluster_profile_holds_six_nodes_the_init_and_the_apps(compose: dict[str, Any]) -> None:
    in_profile = {name for name, service in compose["services"].items() if "cluster" in service.get("profiles", [])}
    assert in_profile == {*CLUSTER_NODES, "redis-cluster-init", *CLUSTER_APPS}
    for name in in_profile:
        assert compose["services"][name]["profiles"] == ["cluster"], name


def test_every_cluster_node_is_cluster_enabled_and_durable(compose: dict[str, Any]) -> None:
    volumes = set()
    for name in CLUSTER_NODES:
        node = compose["services"][name]
        command = node["command"]
        assert node["image"] == "redis:7.4", name
        assert command[0] == "redis-server", name
        assert _flag(command, "--cluster-enabled") == "yes", name
        assert _flag(command, "--appendonly") == "yes", name
        assert _flag(command, "--appendfsync") == "always", name
        assert _flag(command, "--maxmemory-policy") == "noeviction", name
        assert node["healthcheck"]["test"], name
        [volume] = node["volumes"]
        assert volume.endswith(":/data"), name
        volumes.add(volume.split(":")[0])
    assert len(volumes) == len(CLUSTER_NODES)  # each node its own AOF and nodes.conf
    assert volumes <= set(compose["volumes"])


def test_cluster_init_waits_for_every_node_and_creates_with_replicas(compose: dict[str, Any]) -> None:
    init = compose["services"]["redis-cluster-init"]
    assert init["restart"] == "no"
    assert init["depends_on"] == {name: {"condition": "service_healthy"} for name in CLUSTER_NODES}
    script = " ".join(init["command"])
    assert "redis-cli --cluster create" in script
    assert "--cluster-replicas 1" in script
    assert "--cluster-yes" in script
    # every node's address, resolved from its service name (redis-cli takes addresses)
    assert "for node in 1 2 3 4 5 6;" in script
    assert "getent hosts redis-node-$$node" in script
    # a second `up` finds the cluster made and does nothing
    assert "cluster_state:ok" in script


def test_cluster_apps_run_the_app_on_the_cluster(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, twin in CLUSTER_APPS.items():
        app, plain = services[name], services[twin]
        assert app["build"] == plain["build"], name
        assert app["image"] == plain["image"], name
        assert app["command"] == plain["command"], name
        environment = app["environment"]
        assert environment["REDIS_CLUSTER"] == "true", name
        assert int(environment["STREAM_SHARDS"]) > 1, name
        assert int(environment["REDIS_WAIT_REPLICAS"]) >= 1, name
        assert environment["DATABASE_URL"] == plain["environment"]["DATABASE_URL"], name
        node = environment["REDIS_URL"].removeprefix("redis://").split(":")[0]
        assert node in CLUSTER_NODES, name
        assert app["depends_on"]["redis-cluster-init"]["condition"] == "service_completed_successfully", name
        assert app["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name
    # The single Redis serves only arq's scheduler, which cannot run on a cluster
    assert "redis" not in services["api-cluster"]["depends_on"]
    worker = services["worker-cluster"]
    assert worker["environment"]["ARQ_REDIS_URL"] == "redis://redis:6379/0"
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    # both APIs can run side by side
    assert services["api-cluster"]["ports"] == ["${CLUSTER_API_PORT:-8001}:8000"]
    assert "ports" not in services["worker-cluster"]
    assert "container_name" not in services["worker-cluster"]


def test_cluster_environment_names_settings_of_the_service(compose: dict[str, Any]) -> None:
    settings = {name.upper() for name in Settings.model_fields}
    for name in CLUSTER_APPS:
        unknown = set(compose["services"][name]["environment"]) - settings
        assert sorted(unknown) == [], name


def test_cluster_environment_is_accepted_by_the_service_settings(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [name.upper() for name in Settings.model_fields]:
        monkeypatch.delenv(name, raising=False)
    secret_key = new_secret_key()
    for name, value in compose["services"]["worker-cluster"]["environment"].items():
        monkeypatch.setenv(name, value.replace("${SECRET_KEY:-}", secret_key).replace("${ADMIN_TOKEN:-}", ""))
    settings = Settings(_env_file=None)
    assert settings.redis_cluster is True
    assert settings.stream_shards == 6
    assert settings.arq_redis_url == "redis://redis:6379/0"
    assert settings.secret_key is not None
    assert settings.secret_key.get_secret_value() == secret_key
    assert settings.admin_token is None  # empty: the admin API is off


def test_compose_config_gives_every_app_service_the_secret_key() -> None:
    try:
        command = compose_check.compose_command()
    except compose_check.CheckFailed:
        pytest.skip("no docker compose here")
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "SECRET_KEY": "the-secret", "ADMIN_TOKEN": "the-token"}
    done = subprocess.run(
        [*command, *compose_check.file_arguments(command), "--profile", "cluster", "config"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    for name in APP_SERVICES:
        environment = config["services"][name]["environment"]
        assert environment["SECRET_KEY"] == "the-secret", name
        assert environment["ADMIN_TOKEN"] == "the-token", name
    assert json.dumps(config["services"]["api-cluster"]["environment"]).count("redis-node-1") == 1

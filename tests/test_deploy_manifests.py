"""Deployment files for operators: no cluster runs here, so the files are parsed and their promises checked.

Covers deploy/k8s/*.yaml (Kubernetes + KEDA), deploy/prometheus.yml and the Grafana provisioning and dashboard.
Names that the code defines (stream, consumer group, settings, the image's uid, the worker's shutdown grace) are
read from the code, so the manifests cannot drift from it unnoticed.
"""

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from shared import keys
from shared.secretbox import new_secret_key
from shared.settings import Settings
from worker.main import SHUTDOWN_GRACE_SECONDS

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
NAMESPACE = "notify"
IMAGE = "notify-ingest:latest"
CONFIG_MAP = "notify-config"
SECRET = "notify-secrets"

Doc = dict[str, Any]

#: The PromQL every dashboard must chart, as the service's metrics will be named.
DASHBOARD_QUERIES = (
    "sum(rate(notify_notifications_accepted_total[1m]))",
    "sum(rate(notify_rows_stored_total[1m]))",
    "max(notify_backlog_entries)",
    "max(notify_oldest_pending_age_seconds)",
    "histogram_quantile(0.95, sum(rate(notify_drain_batch_seconds_bucket[5m])) by (le))",
    "sum(rate(notify_http_requests_total[1m])) by (status)",
    "sum(rate(notify_storage_errors_total[5m]))",
    "sum(rate(notify_dead_letters_total[5m]))",
)


def _load_k8s() -> list[Doc]:
    docs: list[Doc] = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                assert isinstance(doc, dict), f"{path.name}: a document is not a mapping"
                docs.append(doc)
    return docs


@pytest.fixture(scope="module")
def k8s() -> list[Doc]:
    """Every YAML document under deploy/k8s."""
    return _load_k8s()


def _one(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def _workloads(docs: list[Doc]) -> list[Doc]:
    return [d for d in docs if d["kind"] in ("Deployment", "Job")]


def _container(workload: Doc) -> Doc:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, workload["metadata"]["name"]
    container: Doc = containers[0]
    return container


def _dockerfile_uid() -> int:
    match = re.search(r"useradd\b.*--uid\s+(\d+)", (DEPLOY / "Dockerfile").read_text())
    assert match, "deploy/Dockerfile creates no user with a fixed uid"
    return int(match.group(1))


# --- Kubernetes: inventory -------------------------------------------------------------------------------------


def test_every_k8s_document_has_kind_apiversion_and_name(k8s: list[Doc]) -> None:
    assert k8s
    for doc in k8s:
        assert doc.get("apiVersion"), doc
        assert doc.get("kind"), doc
        assert doc["metadata"].get("name"), doc


def test_expected_kinds_are_present(k8s: list[Doc]) -> None:
    kinds = Counter(d["kind"] for d in k8s)
    for kind in ("Namespace", "ConfigMap", "Secret", "Job", "Service", "HorizontalPodAutoscaler", "ScaledObject"):
        assert kinds[kind] >= 1, f"no {kind}"
    assert kinds["Deployment"] == 2
    assert kinds["Service"] == 1  # the API's; the worker takes no traffic
    assert _one(k8s, "Namespace", NAMESPACE)["apiVersion"] == "v1"


def test_no_two_resources_share_kind_and_name(k8s: list[Doc]) -> None:
    seen = Counter((d["kind"], d["metadata"]["name"]) for d in k8s)
    assert [key for key, count in seen.items() if count > 1] == []


def test_everything_lives_in_the_namespace(k8s: list[Doc]) -> None:
    for doc in k8s:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == NAMESPACE, (doc["kind"], doc["metadata"]["name"])


# --- Kubernetes: configuration ---------------------------------------------------------------------------------


def test_config_map_holds_the_tuning_settings_as_strings(k8s: list[Doc]) -> None:
    data = _one(k8s, "ConfigMap", CONFIG_MAP)["data"]
    for key in (
        "LOG_LEVEL",
        "ACCESS_LOG",
        "DRAIN_BATCH_ENTRIES",
        "MAX_BACKLOG_ENTRIES",
        "CACHE_TTL_SECONDS",
        "AUTH_CACHE_SECONDS",
        "REDIS_ADDRESS",
    ):
        assert key in data, key
    # Kubernetes rejects a ConfigMap whose values are not strings (an unquoted `false` or `500`).
    assert {k: type(v).__name__ for k, v in data.items() if not isinstance(v, str)} == {}
    assert data["ACCESS_LOG"] == "false"


def test_every_config_key_is_a_setting_of_the_service(k8s: list[Doc]) -> None:
    data = _one(k8s, "ConfigMap", CONFIG_MAP)["data"]
    settings = {name.upper() for name in Settings.model_fields}
    # REDIS_ADDRESS is for KEDA only; anything else unknown would be a typo the service silently ignores.
    assert sorted(set(data) - settings - {"REDIS_ADDRESS"}) == []


def test_secret_has_placeholder_urls_and_token(k8s: list[Doc]) -> None:
    secret = _one(k8s, "Secret", SECRET)
    assert "data" not in secret
    values = secret["stringData"]
    assert set(values) == {"DATABASE_URL", "REDIS_URL", "ADMIN_TOKEN", "SECRET_KEY"}
    assert values["DATABASE_URL"] == "postgresql://notify:CHANGE_ME@postgres.example.internal:5432/notify"
    assert values["REDIS_URL"] == "redis://redis.example.internal:6379/0"
    assert values["ADMIN_TOKEN"]
    assert values["SECRET_KEY"] == "CHANGE_ME"


def test_the_placeholder_secret_key_stops_the_service_saying_how_to_make_one(
    k8s: list[Doc], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECRET_KEY", _one(k8s, "Secret", SECRET)["stringData"]["SECRET_KEY"])

    with pytest.raises(ValidationError, match=r"Fernet\.generate_key"):
        Settings(_env_file=None)  # type: ignore[call-arg]


def test_config_and_secret_are_accepted_by_the_service_settings(
    k8s: list[Doc], monkeypatch: pytest.MonkeyPatch
) -> None:
    environment = {**_one(k8s, "ConfigMap", CONFIG_MAP)["data"], **_one(k8s, "Secret", SECRET)["stringData"]}
    for name in [name.upper() for name in Settings.model_fields]:
        monkeypatch.delenv(name, raising=False)
    environment["SECRET_KEY"] = new_secret_key()  # the operator's, in place of the placeholder (refused, above)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    settings = Settings(_env_file=None)
    assert settings.access_log is False
    assert settings.drain_batch_entries == int(environment["DRAIN_BATCH_ENTRIES"])
    assert settings.max_backlog_entries == int(environment["MAX_BACKLOG_ENTRIES"])
    assert settings.require_database_url() == environment["DATABASE_URL"]
    assert settings.admin_token is not None
    assert settings.secret_key is not None


def test_keda_redis_address_is_the_redis_of_redis_url(k8s: list[Doc]) -> None:
    address = _one(k8s, "ConfigMap", CONFIG_MAP)["data"]["REDIS_ADDRESS"]
    url = _one(k8s, "Secret", SECRET)["stringData"]["REDIS_URL"]
    match = re.fullmatch(r"rediss?://(?:[^@/]*@)?([^/]+)/(\d+)", url)
    assert match, url
    assert address == match.group(1)


# --- Kubernetes: workloads -------------------------------------------------------------------------------------


def test_all_workloads_run_the_same_image_with_config_and_secret(k8s: list[Doc]) -> None:
    workloads = _workloads(k8s)
    assert len(workloads) == 3
    for workload in workloads:
        container = _container(workload)
        assert container["image"] == IMAGE, workload["metadata"]["name"]
        refs = {
            (source.get("configMapRef") or source.get("secretRef"))["name"] for source in container.get("envFrom", [])
        }
        assert refs == {CONFIG_MAP, SECRET}, workload["metadata"]["name"]


def test_all_workloads_run_as_the_image_user_non_root_read_only(k8s: list[Doc]) -> None:
    uid = _dockerfile_uid()
    assert uid == 10001
    for workload in _workloads(k8s):
        name = workload["metadata"]["name"]
        pod = workload["spec"]["template"]["spec"]
        container = _container(workload)
        merged = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
        assert merged.get("runAsNonRoot") is True, name
        assert merged.get("runAsUser") == uid, name
        assert container["securityContext"]["readOnlyRootFilesystem"] is True, name
        assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"], name


def test_all_workloads_have_resource_requests_and_limits(k8s: list[Doc]) -> None:
    for workload in _workloads(k8s):
        resources = _container(workload)["resources"]
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources[bound]), (workload["metadata"]["name"], bound)


def test_deployment_selectors_match_their_pods_and_leave_replicas_to_the_autoscalers(k8s: list[Doc]) -> None:
    for name in ("notify-api", "notify-worker"):
        deployment = _one(k8s, "Deployment", name)
        selector = deployment["spec"]["selector"]["matchLabels"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), name
        assert "replicas" not in deployment["spec"], name


def test_migrate_job_runs_alembic_once(k8s: list[Doc]) -> None:
    job = _one(k8s, "Job", "notify-migrate")
    assert _container(job)["command"] == ["alembic", "upgrade", "head"]
    assert isinstance(job["spec"]["backoffLimit"], int)
    assert isinstance(job["spec"]["ttlSecondsAfterFinished"], int)
    assert job["spec"]["template"]["spec"]["restartPolicy"] in ("Never", "OnFailure")


def test_api_deployment(k8s: list[Doc]) -> None:
    api = _one(k8s, "Deployment", "notify-api")
    pod = api["spec"]["template"]["spec"]
    container = _container(api)
    assert container["command"] == [
        "uvicorn",
        "api.main:app",
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
        "--no-access-log",
    ]
    assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert pod["terminationGracePeriodSeconds"] == 30
    assert container["livenessProbe"]["httpGet"] == {"path": "/status/heartbeat", "port": "http"}
    # Postgres down must not take the API out of the Service: it keeps accepting into Redis
    assert container["readinessProbe"]["httpGet"] == {"path": "/status/ready?postgres=optional", "port": "http"}
    # /status/ready gives each store 2 s; a shorter probe timeout would mark healthy pods unready.
    assert container["readinessProbe"]["timeoutSeconds"] >= 3


def test_api_service_reaches_the_api_pods_only(k8s: list[Doc]) -> None:
    service = _one(k8s, "Service", "notify-api")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"][0]["port"] == 80
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    selector = service["spec"]["selector"].items()
    assert selector <= _one(k8s, "Deployment", "notify-api")["spec"]["template"]["metadata"]["labels"].items()
    assert not selector <= _one(k8s, "Deployment", "notify-worker")["spec"]["template"]["metadata"]["labels"].items()


def test_api_autoscaler(k8s: list[Doc]) -> None:
    hpa = _one(k8s, "HorizontalPodAutoscaler", "notify-api")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "notify-api"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 10)
    [metric] = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource"
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}


def test_worker_deployment(k8s: list[Doc]) -> None:
    worker = _one(k8s, "Deployment", "notify-worker")
    container = _container(worker)
    assert container["command"] == ["arq", "worker.main.WorkerSettings"]
    assert {"name": "metrics", "containerPort": 9100, "protocol": "TCP"} in container["ports"]
    # The worker finishes its batch for up to SHUTDOWN_GRACE_SECONDS after SIGTERM; Kubernetes must wait longer.
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 45
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > SHUTDOWN_GRACE_SECONDS


def test_worker_liveness_is_its_own_heartbeat(k8s: list[Doc]) -> None:
    container = _container(_one(k8s, "Deployment", "notify-worker"))
    assert container["livenessProbe"]["exec"]["command"] == ["python", "-m", "worker.health"]
    environment = {item["name"]: item["value"] for item in container["env"]}
    assert environment["WORKER_HEARTBEAT_FILE"].startswith("/tmp/")  # noqa: S108 - the pod's writable emptyDir
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]  # noqa: S108
    assert set(environment) <= {name.upper() for name in Settings.model_fields}


def test_pods_carry_prometheus_scrape_annotations(k8s: list[Doc]) -> None:
    for name, port in (("notify-api", "8000"), ("notify-worker", "9100")):
        deployment = _one(k8s, "Deployment", name)
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true", name
        assert annotations["prometheus.io/port"] == port, name
        assert annotations["prometheus.io/path"] == "/metrics", name
        declared = {p["containerPort"] for p in _container(deployment)["ports"]}
        assert int(port) in declared, name


def test_worker_scaled_object_follows_the_stream_group_lag(k8s: list[Doc]) -> None:
    scaled = _one(k8s, "ScaledObject", "notify-worker")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] == _one(k8s, "Deployment", "notify-worker")["metadata"]["name"]
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (1, 8)
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis-streams"
    metadata = trigger["metadata"]
    assert metadata["stream"] == keys.STREAM == "notify:stream"
    assert metadata["consumerGroup"] == keys.GROUP == "notify:drain"
    # The pending entries list holds only the batches in flight (<= DRAIN_BATCH_ENTRIES per worker), never the
    # backlog: a pendingEntriesCount target would not scale out. The group's lag is the undelivered backlog.
    assert "pendingEntriesCount" not in metadata
    assert int(metadata["lagCount"]) > 0
    # KEDA trigger metadata values are strings.
    assert {k: v for k, v in metadata.items() if not isinstance(v, str)} == {}


def test_keda_reads_the_redis_address_from_the_worker_environment(k8s: list[Doc]) -> None:
    metadata = _one(k8s, "ScaledObject", "notify-worker")["spec"]["triggers"][0]["metadata"]
    assert "address" not in metadata
    variable = metadata["addressFromEnv"]
    assert variable == "REDIS_ADDRESS"
    sources = _container(_one(k8s, "Deployment", "notify-worker"))["envFrom"]
    config_maps = [source["configMapRef"]["name"] for source in sources if "configMapRef" in source]
    assert any(variable in _one(k8s, "ConfigMap", name)["data"] for name in config_maps)


# --- Prometheus and Grafana ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prometheus() -> Doc:
    """The parsed deploy/prometheus.yml."""
    parsed: Doc = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    return parsed


def _job(prometheus: Doc, name: str) -> Doc:
    jobs: list[Doc] = [j for j in prometheus["scrape_configs"] if j["job_name"] == name]
    assert len(jobs) == 1, f"expected one scrape job {name}, found {len(jobs)}"
    return jobs[0]


def test_prometheus_scrapes_every_5s(prometheus: Doc) -> None:
    assert prometheus["global"]["scrape_interval"] == "5s"
    for job in prometheus["scrape_configs"]:
        assert job.get("scrape_interval", "5s") == "5s", job["job_name"]


def test_prometheus_scrapes_the_api(prometheus: Doc) -> None:
    job = _job(prometheus, "api")
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for group in job["static_configs"] for t in group["targets"]]
    assert targets == ["api:8000"]


def test_prometheus_discovers_every_scaled_worker(prometheus: Doc) -> None:
    job = _job(prometheus, "worker")
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert "static_configs" not in job
    [discovery] = job["dns_sd_configs"]
    assert discovery["names"] == ["worker"]
    assert discovery["type"] == "A"
    assert discovery["port"] == 9100


@pytest.fixture(scope="module")
def dashboard() -> Doc:
    """The parsed Grafana dashboard."""
    parsed: Doc = json.loads((DEPLOY / "grafana" / "dashboards" / "notify.json").read_text())
    return parsed


def _datasource_uid() -> str:
    path = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
    [source] = yaml.safe_load(path.read_text())["datasources"]
    assert source["name"] == "Prometheus"
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    uid: str = source["uid"]
    return uid


def test_grafana_datasource_is_the_prometheus_service() -> None:
    assert _datasource_uid() == "prometheus"


def test_grafana_loads_dashboards_from_files() -> None:
    path = DEPLOY / "grafana" / "provisioning" / "dashboards" / "dashboards.yml"
    provisioning = yaml.safe_load(path.read_text())
    assert provisioning["apiVersion"] == 1
    [provider] = provisioning["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


def test_dashboard_is_a_grafana_dashboard(dashboard: Doc) -> None:
    assert dashboard["title"] == "Notification ingestion"
    assert dashboard["uid"]
    assert 36 <= dashboard["schemaVersion"] <= 41
    panels = dashboard["panels"]
    assert len(panels) >= 7
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        assert panel["type"] == "timeseries", panel["title"]
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]), panel["title"]
        assert panel["targets"], panel["title"]
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"]), panel["title"]


def test_dashboard_uses_the_provisioned_datasource(dashboard: Doc) -> None:
    uid = _datasource_uid()
    for panel in dashboard["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", panel["datasource"])["uid"] == uid, panel["title"]


def test_dashboard_charts_every_service_metric(dashboard: Doc) -> None:
    def squash(expr: str) -> str:
        return re.sub(r"\s+", "", expr)

    charted = {squash(t["expr"]) for panel in dashboard["panels"] for t in panel["targets"]}
    assert [q for q in DASHBOARD_QUERIES if squash(q) not in charted] == []


# --- the operator's README -------------------------------------------------------------------------------------


def test_k8s_readme_states_the_redis_requirements_and_the_apply_order() -> None:
    readme = (K8S / "README.md").read_text()
    # The first code block of the Redis section is the server configuration operators copy.
    block = re.search(r"^## Redis.*?^```\n(.*?)^```", readme, re.DOTALL | re.MULTILINE)
    assert block, "no Redis section with a configuration block"
    lines = set(block.group(1).splitlines())
    assert {"appendonly yes", "appendfsync always", "maxmemory-policy noeviction"} <= lines
    files = ("namespace.yaml", "config.yaml", "migrate-job.yaml", "api.yaml", "worker.yaml")
    order = [readme.index(f"kubectl apply -f deploy/k8s/{name}") for name in files]
    assert order == sorted(order)
    for path in sorted(K8S.glob("*.yaml")):
        assert f"`{path.name}`" in readme, path.name


def test_no_production_manifest_turns_anonymous_access_on() -> None:
    for path in [
        ROOT / "docker-compose.yml",
        ROOT / "deploy" / "Dockerfile",
        *(ROOT / "deploy" / "k8s").glob("*.yaml"),
    ]:
        assert "ANONYMOUS_SERVICE" not in path.read_text(), path

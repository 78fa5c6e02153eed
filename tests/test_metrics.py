"""Prometheus metrics: the named series exist and move when notifications flow (API and worker)."""

import re
from pathlib import Path

import httpx

from devstack.embedded import free_port
from tests.helpers import Workers, count_rows, drain_all, stop, wait_for
from worker.drain import Drain


def sample(exposition: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus text exposition (0 when absent)."""
    wanted = ",".join(f'{key}="{value}"' for key, value in labels.items())
    pattern = rf"^{re.escape(name)}(\{{[^}}]*\}})? ([0-9.e+-]+)$"
    total = 0.0
    for line in exposition.splitlines():
        found = re.match(pattern, line)
        if found and all(part in (found.group(1) or "") for part in wanted.split(",") if part):
            total += float(found.group(2))
    return total


async def test_api_metrics_move_with_traffic(client: httpx.AsyncClient, drain: Drain) -> None:
    before = (await client.get("/metrics")).text
    await client.post("/notifications/v1/multiple", json=[{"to": str(i)} for i in range(7)])
    await client.post("/notifications/v1/", json={"to": ""})
    await drain_all(drain)

    after = (await client.get("/metrics")).text

    def moved(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert moved("notify_notifications_accepted_total") == 7
    assert moved("notify_http_requests_total", route="/notifications/v1/multiple", status="201") == 1
    assert moved("notify_http_requests_total", route="/notifications/v1/", status="422") == 1
    assert moved("notify_rows_stored_total") == 7  # the in-process drain shares the registry
    assert moved("notify_drain_batch_seconds_count") >= 1
    assert "notify_backlog_entries" in after
    assert "notify_dead_letters_total" in after
    assert "notify_storage_errors_total" in after


async def test_worker_serves_its_metrics(
    client: httpx.AsyncClient, engine: object, venv_bin: Path, worker_env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    workers = Workers(venv_bin, {**worker_env, "WORKER_METRICS_PORT": str(port)}, tmp_path)
    try:
        worker = workers.start()
        await client.post("/notifications/v1/multiple", json=[{"to": str(i)} for i in range(5)])

        async def stored() -> bool:
            return await count_rows(engine) >= 5  # type: ignore[arg-type]

        await wait_for(stored)
        exposition = ""

        async def refreshed() -> bool:  # the backlog gauges are refreshed once a second: until they show the drain
            nonlocal exposition
            async with httpx.AsyncClient() as http:
                exposition = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
            return (
                sample(exposition, "notify_rows_stored_total") == 5
                and sample(exposition, "notify_backlog_entries") == 0
            )

        await wait_for(refreshed, 60)
        assert sample(exposition, "notify_rows_stored_total") == 5
        assert sample(exposition, "notify_backlog_entries") == 0
        assert "notify_oldest_pending_age_seconds" in exposition
        assert await stop(worker) == 0
    finally:
        workers.stop_all()

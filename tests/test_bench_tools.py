"""The benchmark's own instruments: the results CSV grows new columns, CPU is metered per process, the
sustained-rate search judges a backlog and homes in on the highest sustained rate, and `make bench-jobs` sends the
same notifications both ways and judges its goals from its figures."""

import argparse
import csv
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from loadtest.bench import maximum_rates
from loadtest.bench_app import measure
from loadtest.bench_jobs_http import multiple_bodies, report, write_job_csv
from loadtest.bench_report import append_csv
from loadtest.measure import CpuMeter
from loadtest.sustained import (
    MAX_PROBES,
    RESOLUTION,
    STEP,
    Window,
    backlog_is_flat,
    parse_configs,
    search,
    verdict,
)
from tests.helpers import Servers


def test_results_csv_takes_rows_with_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "bench.csv"
    append_csv(path, [{"design": "service", "rps": 10}])
    append_csv(path, [{"design": "naive", "rps": 5, "cpu_api": 99}])

    with path.open(newline="") as stored:
        reader = csv.DictReader(stored)
        rows = list(reader)
    assert reader.fieldnames == ["design", "rps", "cpu_api"]
    assert rows == [
        {"design": "service", "rps": "10", "cpu_api": ""},
        {"design": "naive", "rps": "5", "cpu_api": "99"},
    ]


def test_cpu_meter_counts_a_busy_process_and_finished_children() -> None:
    meter = CpuMeter({"self": os.getpid()})
    meter.start()
    until = time.process_time() + 0.2
    while time.process_time() < until:  # 0.2 s of CPU in this process
        pass
    subprocess.run(
        [sys.executable, "-c", "import time\nt = time.process_time() + 0.2\nwhile time.process_time() < t: pass"],
        check=True,
    )
    used = meter.stop()

    assert used["self"] >= 1
    assert used["load"] >= 1


def test_cpu_meter_keeps_the_cpu_of_children_that_exited() -> None:
    meter = CpuMeter({"self": os.getpid()})  # like Postgres: a parent whose child works, exits and is reaped
    began = time.monotonic()
    meter.start()
    subprocess.run(
        [sys.executable, "-c", "import time\nt = time.process_time() + 0.3\nwhile time.process_time() < t: pass"],
        check=True,
    )
    used = meter.stop()
    elapsed = time.monotonic() - began

    # the child's 0.3 s of CPU, in % of the (longer) time measured, whatever the machine's load made that time
    assert used["self"] >= 100 * 0.3 / elapsed - 1


def test_half_load_is_taken_of_the_sustained_rate_and_of_a_higher_burst() -> None:
    keeps_up = {"accepted_per_s": 3000, "requests_per_s": 3000, "stored_per_s": 2990}
    falls_behind = {"accepted_per_s": 50_000, "requests_per_s": 500, "stored_per_s": 30_000}

    assert maximum_rates(keeps_up) == [("sustained", 2990)]
    assert maximum_rates(falls_behind) == [("sustained", 300), ("accepted (burst)", 500)]


async def test_app_benchmark_sends_real_requests_through_the_app(servers: Servers) -> None:
    single = await measure(servers.database_url, servers.redis_url, "single", 100)
    multiple = await measure(servers.database_url, servers.redis_url, "multiple", 50)

    assert single["requests"] == 100  # every one answered 201, or measure() raises
    assert multiple["requests"] == 50
    assert single["cpu_us_per_request"] > 0
    assert multiple["cpu_us_per_request"] > 0


def _backlog(seconds: float, level: int, growth_per_s: float) -> list[tuple[float, int]]:
    """Samples every 0.5 s: a drain's sawtooth (0..2*level, period 1 s) on a backlog growing by `growth_per_s`."""
    return [(t / 2, round((t % 2) * 2 * level + growth_per_s * t / 2)) for t in range(int(seconds * 2) + 1)]


def test_a_flat_sawtooth_backlog_is_sustained_and_one_growing_by_4_percent_of_the_rate_is_not() -> None:
    rate = 20_000

    assert backlog_is_flat(_backlog(60, 10_000, 0), 60, rate)
    assert backlog_is_flat(_backlog(60, 10_000, 0.01 * rate), 60, rate)
    assert not backlog_is_flat(_backlog(60, 10_000, 0.04 * rate), 60, rate)
    assert not backlog_is_flat(_backlog(15, 10_000, 0.10 * rate), 15, rate)


def test_a_window_is_not_sustained_with_refusals_delay_growth_or_slow_catch_up() -> None:
    good = Window(rate_rps=200, seconds=60, sent=12_000, ok=12_000, load_seconds=60.2, catch_up_seconds=0.4)
    good.backlog = _backlog(60, 5_000, 0)

    assert verdict(good) == ""
    assert "not answered 201" in verdict(Window(**{**good.__dict__, "ok": 11_990}))
    assert "behind the schedule" in verdict(Window(**{**good.__dict__, "load_seconds": 64.0}))
    assert "backlog grew" in verdict(Window(**{**good.__dict__, "backlog": _backlog(60, 5_000, 2_000)}))
    assert "not caught up" in verdict(Window(**{**good.__dict__, "catch_up_seconds": None}))
    assert "not caught up" in verdict(Window(**{**good.__dict__, "catch_up_seconds": 5.0}))


def test_the_search_ends_within_the_resolution_below_the_capacity_from_a_high_or_low_estimate() -> None:
    for capacity, estimate in [(250, 276), (250, 100), (250, 250), (400, 276), (3, 5)]:
        probed: list[int] = []

        def sustains(rate: int, capacity: int = capacity, probed: list[int] = probed) -> bool:
            probed.append(rate)
            return rate <= capacity

        found, failed = search(sustains, estimate)

        assert found is not None
        assert capacity / (1 + RESOLUTION) - 1 <= found <= capacity, (capacity, estimate, probed)
        assert failed is not None
        assert failed > capacity
        assert len(probed) <= 9, (capacity, estimate, probed)


def test_the_search_stops_when_nothing_is_sustained() -> None:
    probed: list[int] = []

    def refuses(rate: int) -> bool:
        probed.append(rate)
        return False

    assert search(refuses, 3) == (None, 1)
    assert probed == [3, 2, 1]

    probed.clear()
    found, failed = search(refuses, 10_000)

    assert found is None
    assert len(probed) == MAX_PROBES
    assert failed == probed[-1] < 10_000 / STEP ** (MAX_PROBES - 1)


def test_sustained_configurations_parse_as_api_by_drain_workers() -> None:
    assert parse_configs("1x1, 1x2,2x2,") == [(1, 1), (1, 2), (2, 2)]
    for bad in ("1", "0x1", "1x", "axb"):
        with pytest.raises(ValueError, match="drain workers"):
            parse_configs(bad)


def test_the_bench_jobs_csv_and_its_multiple_bodies_carry_the_same_notifications(tmp_path: Path) -> None:
    path = tmp_path / "job.csv"
    write_job_csv(path, 2500)
    bodies = multiple_bodies(2500, "a-template-id")

    with path.open(newline="") as job:
        reader = csv.DictReader(job)
        from_csv = [(row["to"], {"name": row["name"], "band": row["band"]}) for row in reader]
    items = [item for _, body in bodies for item in orjson.loads(body)]
    assert reader.fieldnames == ["to", "name", "band"]
    assert [count for count, _ in bodies] == [1000, 1000, 500]
    assert [(item["to"], item["personalization"]) for item in items] == from_csv
    assert {item["template_id"] for item in items} == {"a-template-id"}
    assert len({to for to, _ in from_csv}) == 2500


def _bench_jobs_figures(
    job_seconds: float, job_stored: int, rss_peak_mb: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A job of 1,000,000 rows, beside a `/multiple` run accepting them in 20 s and storing them in 40 s."""
    cpu = {"api": 90, "worker0": 10, "postgres": 30, "redis": 0, "bench": 5, "machine": 140}
    job = {"answer": {"status": "stored"}, "seconds": job_seconds, "stored": job_stored, "stored_seconds": job_seconds,
           "api_rss_before_mb": 100.0, "api_rss_peak_mb": rss_peak_mb, "cpu": cpu}  # fmt: skip
    multiple = {"accepted": 1_000_000, "seconds": 20.0, "stored_seconds": 40.0, "stored_at_accept_end": 600_000,
                "tail_seconds": 20.0, "stored": 1_000_000, "api_rss_before_mb": 100.0, "api_rss_peak_mb": 120.0,
                "cpu": cpu, "tail_cpu": cpu}  # fmt: skip
    return job, multiple


def test_bench_jobs_judges_each_goal_from_the_measured_figures(capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(
        in_flight=8, drain_workers=1, appendfsync="always", multiple_first=False, label="", csv_bytes=45 * 2**20
    )

    fast = report(
        1_000_000, *_bench_jobs_figures(job_seconds=10.0, job_stored=1_000_000, rss_peak_mb=150.0), args, (1.0, 2.0)
    )
    slow = report(
        1_000_000, *_bench_jobs_figures(job_seconds=81.0, job_stored=1_000_000, rss_peak_mb=301.0), args, (1.0, 2.0)
    )
    short = report(
        1_000_000, *_bench_jobs_figures(job_seconds=10.0, job_stored=999_999, rss_peak_mb=150.0), args, (1.0, 2.0)
    )

    # accepted 100,000/s against 50,000/s; stored in 10 s where the drain (25,000/s) takes 40 s; +50 MB
    assert (fast["accepted_ratio"], fast["stored_time_ratio"], fast["api_rss_growth_mb"]) == (2.0, 0.25, 50.0)
    assert (fast["goal_accepted_met"], fast["goal_stored_met"], fast["goal_memory_met"]) == (True, True, True)
    # 12,346/s is 0.25x; 81 s is more than twice the drain's 40 s; +201 MB
    assert (slow["goal_accepted_met"], slow["goal_stored_met"], slow["goal_memory_met"]) == (False, False, False)
    assert short["goal_stored_met"] is False  # a row missing from Postgres
    # CPU per notification: 90 % of a core for 10 s over 1,000,000 rows is 9 µs; the pipeline adds workers and
    # Postgres (130 %); `/multiple`'s pipeline is its 20 s of sending plus its 20 s of drain tail
    assert (fast["job_api_cpu_us_per_notification"], fast["job_pipeline_cpu_us_per_notification"]) == (9.0, 13.0)
    assert fast["multiple_pipeline_cpu_us_per_notification"] == 52.0
    assert capsys.readouterr().out.count("**not met**") == 0 + 3 + 1

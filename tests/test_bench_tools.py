"""The benchmark's own instruments: the results CSV grows new columns, and CPU is metered per process."""

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

from loadtest.bench import maximum_rates
from loadtest.bench_app import measure
from loadtest.bench_report import append_csv
from loadtest.measure import CpuMeter
from tests.conftest import Servers


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

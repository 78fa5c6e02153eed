"""The benchmark's report: a markdown table with the ratios, plots (throughput bars, timelines), CSV rows."""

import argparse
import csv
import os
import statistics
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loadtest import sustained


def markdown(rows: list[dict[str, Any]], half: list[dict[str, Any]], bytes_per: float, args: argparse.Namespace) -> str:
    """Return the run's report: the table of figures, the ratios, the half-load lag and the memory figure."""
    lines = [
        f"# Benchmark {datetime.now(UTC).isoformat(timespec='seconds')}",
        "",
        f"`python -m loadtest.bench --seconds {args.seconds} --pg-delay-ms {args.pg_delay_ms} "
        f"--appendfsync {args.appendfsync} --api-workers {args.api_workers} --drain-workers {args.drain_workers}"
        f"{f' --drain-batch {args.drain_batch}' if args.drain_batch else ''}"
        f"{f' --drain-linger {args.drain_linger}' if args.drain_linger is not None else ''}`"
        " — wrk -t1 -c50 on the same 2 cores.",
        "",
        "| design | mode | accepted notif/s | req/s | p50 ms | p99 ms | stored notif/s | lag p50 ms | lag p99 ms"
        " | API RSS MB | worker RSS MB | CPU % API / workers / Redis / PG / wrk |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['design']} | {r['mode']} | {r['accepted_per_s']} | {r['requests_per_s']} | {r['p50_ms']} | "
            f"{r['p99_ms']} | {r['stored_per_s']} | {r['lag_p50_ms']} | {r['lag_p99_ms']} | {r['api_rss_mb']} | "
            f"{r['worker_rss_mb']} | {r['cpu_api']} / {r['cpu_workers']} / {r['cpu_redis']} / {r['cpu_postgres']} / "
            f"{r['cpu_load']} |"
        )
    by = {(r["design"], r["mode"]): r for r in rows}
    lines += ["", "| ratio (accepted notifications/s) | single | multiple(100) |", "|---|---|---|"]
    for base in ("naive", "direct"):
        cells = []
        for mode in ("single", "multiple"):
            ours, theirs = by.get(("service", mode)), by.get((base, mode))
            cells.append(f"{ours['accepted_per_s'] / theirs['accepted_per_s']:.2f}x" if ours and theirs else "-")
        lines.append(f"| service / {base} | {cells[0]} | {cells[1]} |")
    keyed = [r["requests_per_s"] for r in rows if (r["design"], r["mode"]) == ("service", "single-keyed")]
    plain = [r["requests_per_s"] for r in rows if (r["design"], r["mode"]) == ("service", "single")]
    if keyed and plain:
        ratio = statistics.median(keyed) / max(statistics.median(plain), 1)
        lines += [
            "",
            f"Single POSTs each with its own Idempotency-Key: **{ratio:.2f}x** the requests/s of plain ones "
            f"(medians of {len(keyed)} and {len(plain)} runs).",
        ]
    if half:
        lines += [
            "",
            "Service at half its maximum rate (fixed-rate load, 64 connections); sustained = the rate it both accepts"
            " and stores, burst = the rate it accepts while the backlog grows:",
            "",
            "| mode | half of | rate req/s | sent | ok | HTTP p50 ms | HTTP p99 ms | lag p50 ms | lag p99 ms |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {h['mode']} | {h['of']} | {h['rate_rps']} | {h['sent']} | {h['ok']} | {h['http_p50_ms']} | "
            f"{h['http_p99_ms']} | "
            f"{h['lag_p50_ms']} | {h['lag_p99_ms']} |"
            for h in half
        ]
    if bytes_per:
        lines += ["", f"Redis memory per pending notification (cache key + stream entry share): {bytes_per:.0f} bytes."]
    return "\n".join(lines) + "\n"


def sustained_markdown(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """Return the report's sustained-rate section: per configuration, the rate, its figures and each CPU."""
    lines = [
        f"## Sustained rate, multiple(100) ({datetime.now(UTC).isoformat(timespec='seconds')})",
        "",
        f"`python -m loadtest.bench --only-sustained --sustained-seconds {args.sustained_seconds} --probe-seconds "
        f"{args.probe_seconds} --sustained-configs {args.sustained_configs} --pg-delay-ms {args.pg_delay_ms} "
        f"--appendfsync {args.appendfsync}"
        f"{f' --drain-batch {args.drain_batch}' if args.drain_batch else ''}"
        f"{f' --drain-linger {args.drain_linger}' if args.drain_linger is not None else ''}`"
        f" (this section alone) — fixed-rate load (64 connections, in the bench process) on the same "
        f"{os.cpu_count()} cores; CPU in % of one core, over the load."
        " Sustained: every request answered 201, the last answer within "
        f"{sustained.SCHEDULE_SLACK_SECONDS:g} s of the schedule's end, the stream backlog flat (its mean over the "
        f"window's last third at most the first third's + {sustained.FLAT_TOLERANCE:.0%} of the notifications "
        f"offered between them + {sustained.FLAT_SLACK_SECONDS:g} s of the rate), and every row in Postgres within "
        f"{sustained.CATCH_UP_SECONDS:g} s of the load ending. Probes of {args.probe_seconds} s bisect to "
        f"{sustained.RESOLUTION:.0%}; the rate shown is the one confirmed over {args.sustained_seconds} s.",
        "",
        "| API x drain | sustained notif/s | req/s | accepted notif/s | stored notif/s | backlog first → last third"
        " (max) | caught up s | HTTP p50 / p99 ms | lag p50 / p99 ms | CPU % API / workers / Redis / PG / load"
        " | not sustained at notif/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        config = f"{r['api_workers']} x {r['drain_workers']}"
        if "rate_per_s" not in r:
            lines.append(f"| {config} | none ({r['why_not']}) | | | | | | | | | {r['not_sustained_at_per_s']} |")
            continue
        rate = r["rate_per_s"] if r["sustained"] else f"none confirmed ({r['rate_per_s']}: {r['why_not']})"
        lines.append(
            f"| {config} | {rate} | {r['requests_per_s']} | {r['accepted_per_s']} | {r['stored_per_s']} | "
            f"{r['backlog_first_third']} → {r['backlog_last_third']} ({r['backlog_max']}) | {r['catch_up_s']} | "
            f"{r['http_p50_ms']} / {r['http_p99_ms']} | {r['lag_p50_ms']} / {r['lag_p99_ms']} | "
            f"{r['cpu_api']} / {r['cpu_workers']} / {r['cpu_redis']} / {r['cpu_postgres']} / {r['cpu_load']} | "
            f"{r['not_sustained_at_per_s']} |"
        )
    lines += ["", "Windows run, in order (notifications/s: sustained or why not):", ""]
    lines += [f"- {r['api_workers']} x {r['drain_workers']}: {r['probes']}" for r in rows]
    return "\n".join(lines) + "\n"


def plot_bars(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Save a bar chart of accepted and stored notifications/s per design and mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, mode in zip(axes, ("single", "multiple"), strict=True):
        data = [r for r in rows if r["mode"] == mode]
        names = [r["design"] for r in data]
        ax.bar([n + "\naccepted" for n in names], [r["accepted_per_s"] for r in data], color="#4477aa")
        ax.bar([n + "\nstored" for n in names], [r["stored_per_s"] for r in data], color="#66ccee")
        ax.set_title(f"{mode}: notifications/s")
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_timelines(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Save the notifications stored and waiting over time, per design and mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = sorted({r["mode"] for r in rows}, reverse=True)
    fig, axes = plt.subplots(2, len(modes), figsize=(6 * len(modes), 6), squeeze=False)
    for column, mode in enumerate(modes):
        for r in (r for r in rows if r["mode"] == mode):
            t = [sample[0] for sample in r["timeline"]]
            axes[0][column].plot(t, [sample[1] for sample in r["timeline"]], label=r["design"])
            axes[1][column].plot(t, [sample[2] for sample in r["timeline"]], label=r["design"])
        axes[0][column].set_title(f"{mode}: notifications stored in Postgres")
        axes[1][column].set_title(f"{mode}: notifications waiting in Redis")
        axes[1][column].set_xlabel("seconds since the load started")
        for ax in (axes[0][column], axes[1][column]):
            ax.legend()
            ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def append_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append rows to a CSV file; columns new to the file are added (older rows leave them empty)."""
    old: list[dict[str, Any]] = []
    fields: list[str] = []
    if path.exists():
        with path.open(newline="") as existing:
            reader = csv.DictReader(existing)
            fields = list(reader.fieldnames or [])
            old = list(reader)
    fields += [key for row in rows for key in row if key not in fields]
    fields = list(dict.fromkeys(fields))
    with path.open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows([*old, *rows])

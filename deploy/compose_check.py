"""`make compose-check`: docker-compose.yml brought up for real, the README's production steps followed literally.

Needs a Docker engine and Compose (v2's `docker compose`; else v1's `docker-compose`, given a copy of the file
without the top-level `name:` it refuses) and takes minutes, so it is not part of the test suite. On the project
`notify-check` (removed at the end unless --keep) it checks that:

1. `up -d --build` brings postgres, redis, migrate, api and worker up, every long-running service healthy;
2. the README's command makes a service and a key (`exec api python -m shared.cli ...`);
3. a POST with that key is answered 201 and its row reaches Postgres;
4. `up -d --no-deps --scale worker=3 worker` gives three healthy workers without running migrate again;
5. under load, a `docker kill` of one worker loses nothing: every notification answered 201 is stored, once;
6. the `cluster` profile, on its first `up`, stores what its API accepted: a bearer POST and a GOV.UK Notify (v2)
   email sent with a JWT signed by the key's secret.

It prints the figures (accepted, stored, missing, stored twice) and exits 1 at the first promise broken.
"""

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from notifications_python_client.authentication import create_jwt_token

from devstack.local_server import free_port
from shared.schemas import BRIEF_EXAMPLE
from shared.secretbox import new_secret_key

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "notify-check"
DEFAULT_SERVICES = ("postgres", "redis", "api", "worker")
CLUSTER_SERVICES = ("api-cluster", "worker-cluster")


class CheckFailed(Exception):
    """A promise of the compose file that does not hold."""


def compose_command() -> list[str]:
    """`docker compose` (v2) when it answers, else `docker-compose` (v1)."""
    version = ["docker", "compose", "version"]
    if shutil.which("docker") and subprocess.run(version, capture_output=True, check=False).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise CheckFailed("neither `docker compose` nor `docker-compose` is installed")


def file_arguments(command: Sequence[str]) -> list[str]:
    """The `-f` arguments for `command`: the compose file itself, or for v1 a copy without its top-level `name:`.

    The copy (in .data/) is read with --project-directory at the checkout, so its relative paths mean the same.
    """
    compose_file = ROOT / "docker-compose.yml"
    if list(command) != ["docker-compose"]:
        return ["-f", str(compose_file)]
    copy = ROOT / ".data" / "compose-v1.yml"
    copy.parent.mkdir(parents=True, exist_ok=True)
    lines = compose_file.read_text().splitlines(keepends=True)
    copy.write_text("".join(line for line in lines if not line.startswith("name:")))
    return ["-f", str(copy), "--project-directory", str(ROOT)]


class Compose:
    """Runs compose commands on the project, with the settings the README asks for in the environment."""

    def __init__(self, env: dict[str, str]) -> None:
        command = compose_command()
        self.base = [*command, "-p", PROJECT, *file_arguments(command)]
        self.env = env

    def run(self, *args: str, profile: str | None = None, timeout: float = 1800) -> str:
        """Run `compose [--profile P] ARGS`; return its output, raising CheckFailed when it fails."""
        command = [*self.base, *(["--profile", profile] if profile else []), *args]
        done = subprocess.run(
            command, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            raise CheckFailed(f"compose {' '.join(args)} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
        return done.stdout

    def containers(self, service: str, profile: str | None = None) -> list[str]:
        """Return the ids of the service's containers, running or not."""
        return self.run("ps", "-q", service, profile=profile).split()

    def sql(self, query: str) -> str:
        """Run a query in the postgres container (psql), return its unaligned output."""
        return self.run("exec", "-T", "postgres", "psql", "-U", "notify", "-d", "notify", "-tAc", query).strip()


def inspect(container: str) -> dict[str, Any]:
    """`docker inspect` of one container."""
    done = subprocess.run(["docker", "inspect", container], capture_output=True, text=True, check=True)
    found: list[dict[str, Any]] = json.loads(done.stdout)
    return found[0]


def health(container: str) -> str:
    """Return the container's health status (healthy, unhealthy, starting), else its state (no healthcheck)."""
    state = inspect(container)["State"]
    return str(state["Health"]["Status"]) if "Health" in state else str(state["Status"])


def wait_healthy(compose: Compose, services: Sequence[str], count: dict[str, int], limit: float = 300) -> None:
    """Wait until each service has its `count` (default 1) containers healthy; fail after `limit` seconds."""
    deadline = time.monotonic() + limit
    while True:
        states = {
            service: [health(container) for container in compose.containers(service, "cluster")] for service in services
        }
        if all(states[service].count("healthy") >= count.get(service, 1) for service in services):
            print("  healthy:", ", ".join(f"{service} x{len(states[service])}" for service in services))
            return
        if time.monotonic() > deadline:
            raise CheckFailed(f"not all healthy within {limit:.0f}s: {states}")
        time.sleep(2)


def make_key(compose: Compose, api: str, profile: str | None = None) -> str:
    """Make a service and a key with the README's commands; return the key."""
    name = f"check-{uuid.uuid4().hex[:8]}"
    cli = ("exec", "-T", api, "python", "-m", "shared.cli")
    created = compose.run(*cli, "services", "create", name, profile=profile)
    service_id = re.search(r"\bid=(\S+)", created)
    if service_id is None:
        raise CheckFailed(f"services create printed no id: {created}")
    issued = compose.run(*cli, "keys", "create", service_id.group(1), "check", profile=profile)
    key = re.search(r"^key=(\S+)", issued, re.MULTILINE)
    if key is None:
        raise CheckFailed(f"keys create printed no key: {issued}")
    print(f"  service {name} and its key made with `docker compose exec {api} python -m shared.cli ...`")
    return key.group(1)


def wait_stored(compose: Compose, ids: Sequence[str], limit: float = 300) -> None:
    """Wait until every id has its row in Postgres."""
    deadline = time.monotonic() + limit
    wanted = ",".join(f"'{notification_id}'" for notification_id in ids)
    while True:
        stored = int(compose.sql(f"SELECT count(*) FROM notifications WHERE id IN ({wanted})"))
        if stored == len(ids):
            return
        if time.monotonic() > deadline:
            raise CheckFailed(f"{stored} of {len(ids)} notifications stored within {limit:.0f}s")
        time.sleep(1)


async def load(base_url: str, key: str, seconds: float, concurrency: int, accepted: list[str]) -> dict[int, int]:
    """POST BRIEF_EXAMPLE from `concurrency` clients for `seconds`; collect the accepted ids; count the statuses."""
    statuses: dict[int, int] = {}
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, headers=headers, limits=limits, timeout=30) as client:

        async def one_client() -> None:
            deadline = asyncio.get_running_loop().time() + seconds
            while asyncio.get_running_loop().time() < deadline:
                try:
                    answer = await client.post("/notifications/v1/", json=BRIEF_EXAMPLE)
                except httpx.HTTPError:
                    statuses[0] = statuses.get(0, 0) + 1
                    continue
                statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
                if answer.status_code == 201:
                    accepted.append(answer.json()["id"])

        await asyncio.gather(*(one_client() for _ in range(concurrency)))
    return statuses


def check_default_profile(compose: Compose, api_url: str, args: argparse.Namespace) -> None:
    """Steps 1 to 5 of the module docstring."""
    print("1. docker compose up -d --build")
    compose.run("up", "-d", "--build")
    wait_healthy(compose, DEFAULT_SERVICES, {})
    [migrate] = compose.containers("migrate")
    migrate_started = inspect(migrate)["State"]["StartedAt"]

    print("2. a service and a key")
    key = make_key(compose, "api")

    print("3. a POST answered 201 and stored")
    answer = httpx.post(f"{api_url}/notifications/v1/", json=BRIEF_EXAMPLE, headers={"Authorization": f"Bearer {key}"})
    if answer.status_code != 201:
        raise CheckFailed(f"POST answered {answer.status_code}: {answer.text}")
    wait_stored(compose, [answer.json()["id"]])
    print(f"  {answer.json()['id']} answered 201 and stored in Postgres")

    print("4. docker compose up -d --no-deps --scale worker=3 worker")
    compose.run("up", "-d", "--no-deps", "--scale", "worker=3", "worker")
    wait_healthy(compose, ("worker",), {"worker": 3})
    if compose.containers("migrate") != [migrate] or inspect(migrate)["State"]["StartedAt"] != migrate_started:
        raise CheckFailed("scaling the workers ran migrate again")
    print("  migrate not run again")

    print(f"5. {args.seconds:.0f} s of load, {args.concurrency} clients; a worker killed after {args.kill_after:.0f} s")
    accepted: list[str] = []

    async def load_and_kill() -> dict[int, int]:
        running = asyncio.create_task(load(api_url, key, args.seconds, args.concurrency, accepted))
        await asyncio.sleep(args.kill_after)
        victim = compose.containers("worker")[0]
        await asyncio.to_thread(subprocess.run, ["docker", "kill", victim], check=True, capture_output=True)
        print(f"  docker kill {victim[:12]} with {len(accepted)} accepted so far")
        return await running

    statuses = asyncio.run(load_and_kill())
    print(f"  answers: {dict(sorted(statuses.items()))}")
    deadline = time.monotonic() + args.drain_limit
    while True:  # the killed worker's batch waits RECLAIM_IDLE_MS (30 s) before another worker takes it over
        stored = set(compose.sql("SELECT id FROM notifications").split())
        missing = set(accepted) - stored
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(2)
    rows, distinct = compose.sql("SELECT count(*), count(DISTINCT id) FROM notifications").split("|")
    twice = int(rows) - int(distinct)
    print(f"  accepted {len(accepted)}, stored {len(set(accepted) & stored)}, missing {len(missing)}, twice {twice}")
    if missing or twice or not accepted:
        raise CheckFailed(f"{len(missing)} accepted notifications missing, {twice} stored twice")


def check_cluster_profile(compose: Compose, cluster_url: str) -> None:
    """Step 6 of the module docstring."""
    print("6. docker compose --profile cluster up -d api-cluster worker-cluster")
    compose.run("up", "-d", *CLUSTER_SERVICES, profile="cluster")
    wait_healthy(compose, CLUSTER_SERVICES, {})
    key = make_key(compose, "api-cluster", profile="cluster")
    bearer = {"Authorization": f"Bearer {key}"}
    posted = httpx.post(f"{cluster_url}/notifications/v1/", json=BRIEF_EXAMPLE, headers=bearer)
    if posted.status_code != 201:
        raise CheckFailed(f"cluster POST answered {posted.status_code}: {posted.text}")
    template = httpx.post(
        f"{cluster_url}/templates/v1/",
        json={"name": "welcome", "subject": "Hi ((name))", "body": "Welcome, ((name))."},
        headers=bearer,
    )
    if template.status_code != 201:
        raise CheckFailed(f"template POST answered {template.status_code}: {template.text}")
    # the official client's token: the key's secret signs it
    token = create_jwt_token(key[-36:], key[-73:-37])  # type: ignore[no-untyped-call]
    sent = httpx.post(
        f"{cluster_url}/v2/notifications/email",
        json={
            "email_address": "ann@example.com",
            "template_id": template.json()["id"],
            "personalisation": {"name": "Ann"},
        },
        headers={"Authorization": f"Bearer {token}"},
    )
    if sent.status_code != 201:
        raise CheckFailed(f"Notify v2 send answered {sent.status_code}: {sent.text}")
    wait_stored(compose, [posted.json()["id"], sent.json()["id"]])
    print("  a bearer POST and a Notify v2 email, both answered 201 and stored, on the first up")


def main(argv: list[str] | None = None) -> int:
    """Run the checks; return 0 when every one holds."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the load (default 30)")
    parser.add_argument("--concurrency", type=int, default=16, help="clients posting at once (default 16)")
    parser.add_argument("--kill-after", type=float, default=10.0, help="seconds into the load (default 10)")
    parser.add_argument("--drain-limit", type=float, default=300.0, help="seconds to wait for the drain")
    parser.add_argument("--skip-cluster", action="store_true", help="only the default profile")
    parser.add_argument("--keep", action="store_true", help="leave the project running (else `down -v` at the end)")
    args = parser.parse_args(argv)
    api_port = int(os.environ.get("API_PORT") or free_port())
    cluster_port = int(os.environ.get("CLUSTER_API_PORT") or free_port())
    env = {
        **os.environ,
        "SECRET_KEY": os.environ.get("SECRET_KEY") or new_secret_key(),
        "ADMIN_TOKEN": os.environ.get("ADMIN_TOKEN", ""),
        "API_PORT": str(api_port),
        "CLUSTER_API_PORT": str(cluster_port),
    }
    started = time.monotonic()
    try:
        compose = Compose(env)
        compose.run("--profile", "cluster", "down", "-v", "--remove-orphans")  # a clean start
        check_default_profile(compose, f"http://127.0.0.1:{api_port}", args)
        if not args.skip_cluster:
            check_cluster_profile(compose, f"http://127.0.0.1:{cluster_port}")
    except CheckFailed as failure:
        print(f"FAILED: {failure}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            command = compose_command()
            down = ["--profile", "cluster", "down", "-v", "--remove-orphans"]
            subprocess.run(
                [*command, "-p", PROJECT, *file_arguments(command), *down],
                cwd=ROOT,
                env=env,
                capture_output=True,
                check=False,
            )
    print(f"compose-check passed in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

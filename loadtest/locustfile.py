"""Locust scenarios against a running service (`make run`), one user class and one tag per scenario.

Web UI (http://localhost:8089), all classes mixed by their weights, or only the ones named::

    .venv/bin/locust -f loadtest/locustfile.py --host http://127.0.0.1:8000
    .venv/bin/locust -f loadtest/locustfile.py --host http://127.0.0.1:8000 SingleUser MultipleUser

Headless, for a fixed time (or `make loadtest`, i.e. `python -m loadtest.run_locust`, which also records results)::

    .venv/bin/locust -f loadtest/locustfile.py --host http://127.0.0.1:8000 --headless -u 60 -r 10 -t 30s SingleUser

A scenario is chosen by its class name (as above) or by its tag, e.g. `--tags single` or `--tags unknown invalid`;
classes left without a task by `--tags` are not started. Tags and classes:

    single     SingleUser       POST /notifications/v1/ (one notification)          201
    multiple   MultipleUser     POST /notifications/v1/multiple (100 notifications) 201
    heartbeat  HeartbeatUser    GET /status/heartbeat                                204
    post_get   PostThenGetUser  POST, then GET /notifications/v1/{the returned id}   201, 200
    unknown    UnknownIdUser    GET /notifications/v1/{random UUIDv4}                404 (a success)
    invalid    InvalidUser      POST /notifications/v1/ with {"to": ""}              422 (a success)

Any other status is a failure. The API key is taken from API_KEY, else from `.data/dev-api-key` (written by
`make run`). Producers of this service are programs, not people: no user waits between requests (`constant(0)`).
"""

import csv
import json
import os
import uuid
from pathlib import Path
from typing import Any

from locust import constant, events, tag, task
from locust.contrib.fasthttp import FastHttpUser, ResponseContextManager
from locust.env import Environment
from locust.stats import PERCENTILES_TO_REPORT, StatsCSV

KEY_FILE = Path(__file__).resolve().parent.parent / ".data" / "dev-api-key"
MULTIPLE_ITEMS = 100
BANDS = ("Incubus", "Korn", "Soundgarden", "Deftones", "Tool", "Alice in Chains")
SINGLE = {"to": "somebody", "personalization": {"band": "Incubus"}}
INVALID = {"to": ""}


def load_api_key(environ: dict[str, str] | None = None, key_file: Path = KEY_FILE) -> str:
    """Return the API key from API_KEY, else from `key_file`; raise a RuntimeError saying how to get one."""
    key = (os.environ if environ is None else environ).get("API_KEY", "").strip()
    if not key and key_file.is_file():
        key = key_file.read_text().strip()
    if not key:
        raise RuntimeError(
            f"no API key: set API_KEY, or start the service with `make run`, which writes one to {key_file}"
        )
    return key


def multiple_payload(count: int = MULTIPLE_ITEMS) -> list[dict[str, Any]]:
    """Return the body of one /multiple request: `count` notifications with distinct recipients."""
    return [{"to": f"user{n}@example.com", "personalization": {"band": BANDS[n % len(BANDS)]}} for n in range(count)]


def _encode(body: object) -> str:
    return json.dumps(body, separators=(",", ":"))


# Bodies are serialized once: the load generator's CPU should go into requests, not into json.dumps.
SINGLE_BODY = _encode(SINGLE)
MULTIPLE_BODY = _encode(multiple_payload())
INVALID_BODY = _encode(INVALID)
HEADERS = {"Authorization": f"Bearer {load_api_key()}", "Content-Type": "application/json"}


def _drop_users_without_tasks(environment: Environment, **_kwargs: Any) -> None:
    """Run only the user classes that `--tags` left a task to (the others would fail at every iteration)."""
    kept = [user_class for user_class in environment.user_classes if user_class.tasks]
    if kept:
        environment.user_classes[:] = kept


def _write_final_stats_csv(environment: Environment, **_kwargs: Any) -> None:
    """Rewrite `<--csv>_stats.csv` once the users stopped: locust refreshes it only every second, not at the end."""
    prefix = getattr(environment.parsed_options, "csv_prefix", None)
    if prefix:
        with open(f"{prefix}_stats.csv", "w", newline="") as out:
            StatsCSV(environment, PERCENTILES_TO_REPORT).requests_csv(csv.writer(out))


# locust leaves EventHook untyped. test_start fires after the tag filtering, before any user is spawned;
# test_stop after every user stopped, so the stats are final (then the summary is printed and locust exits).
events.test_start.add_listener(_drop_users_without_tasks)  # type: ignore[no-untyped-call]
events.test_stop.add_listener(_write_final_stats_csv)  # type: ignore[no-untyped-call]


class ApiUser(FastHttpUser):
    """Base of the scenarios: authenticated JSON requests, each checked for its exact expected status."""

    abstract = True
    default_headers = HEADERS
    wait_time = constant(0)

    def expect(
        self, method: str, path: str, status: int, name: str | None = None, body: str | None = None
    ) -> ResponseContextManager:
        """Send a request, count it a success only with `status`, and return the response."""
        context = self.client.request(method, path, data=body, name=name, catch_response=True)
        with context as response:  # reported when the block ends, as a success or with the failure set here
            if response.status_code == status:
                response.success()
            else:
                response.failure(f"expected {status}, got {response.status_code}: {(response.text or '')[:200]}")
        return context


class SingleUser(ApiUser):
    """Producer sending one notification per request (the brief's single POST)."""

    weight = 6

    @tag("single")
    @task
    def post_single(self) -> None:
        """POST one notification, expect 201."""
        self.expect("POST", "/notifications/v1/", 201, body=SINGLE_BODY)


class MultipleUser(ApiUser):
    """Producer sending 100 notifications per request."""

    weight = 1

    @tag("multiple")
    @task
    def post_multiple(self) -> None:
        """POST 100 notifications to /multiple, expect 201."""
        self.expect("POST", "/notifications/v1/multiple", 201, body=MULTIPLE_BODY)


class HeartbeatUser(ApiUser):
    """Liveness probe: the cost of the framework alone, touching neither Redis nor Postgres."""

    weight = 1

    @tag("heartbeat")
    @task
    def heartbeat(self) -> None:
        """GET /status/heartbeat, expect 204."""
        self.expect("GET", "/status/heartbeat", 204)


class PostThenGetUser(ApiUser):
    """Read-your-write: POST one notification, then GET it by the id the POST returned."""

    weight = 2

    @tag("post_get")
    @task
    def post_then_get(self) -> None:
        """POST one notification (201), then GET it (200)."""
        response = self.expect("POST", "/notifications/v1/", 201, body=SINGLE_BODY)
        if response.status_code != 201:
            return
        notification_id = response.json()["id"]
        self.expect("GET", f"/notifications/v1/{notification_id}", 200, name="/notifications/v1/[id]")


class UnknownIdUser(ApiUser):
    """GET of ids nobody created: a 404 is the right answer and counts as a success."""

    weight = 1

    @tag("unknown")
    @task
    def get_unknown(self) -> None:
        """GET a random UUIDv4, expect 404."""
        self.expect("GET", f"/notifications/v1/{uuid.uuid4()}", 404, name="/notifications/v1/[unknown id]")


class InvalidUser(ApiUser):
    """Producer sending an invalid notification (blank `to`): a 422 is the right answer and counts as a success."""

    weight = 1

    @tag("invalid")
    @task
    def post_invalid(self) -> None:
        """POST {"to": ""}, expect 422."""
        self.expect("POST", "/notifications/v1/", 422, name="/notifications/v1/ [invalid]", body=INVALID_BODY)

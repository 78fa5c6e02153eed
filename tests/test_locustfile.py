"""The locust scenarios load and are wired as `make loadtest` expects, and its stats CSV parsing; no server needed."""

import importlib
import json
from pathlib import Path
from types import ModuleType

import pytest
from pydantic import ValidationError

from loadtest import run_locust
from shared.schemas import NotificationIn, NotificationListIn

#: tag of each scenario's task, by user class
TAG_OF_CLASS = {
    "SingleUser": "single",
    "MultipleUser": "multiple",
    "HeartbeatUser": "heartbeat",
    "PostThenGetUser": "post_get",
    "UnknownIdUser": "unknown",
    "InvalidUser": "invalid",
}


@pytest.fixture
def locustfile(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """loadtest.locustfile imported afresh with API_KEY set (and without gevent patching this process)."""
    monkeypatch.setenv("API_KEY", "nk_test-key")
    monkeypatch.setenv("LOCUST_SKIP_MONKEY_PATCH", "1")
    import loadtest.locustfile

    return importlib.reload(loadtest.locustfile)


def test_each_scenario_is_a_user_class_with_its_tag(locustfile: ModuleType) -> None:
    from locust.contrib.fasthttp import FastHttpUser

    for class_name, scenario_tag in TAG_OF_CLASS.items():
        user_class = getattr(locustfile, class_name)
        assert issubclass(user_class, FastHttpUser)
        assert not user_class.abstract
        assert user_class.__doc__
        assert user_class.wait_time(user_class) == 0  # constant(0): no think time
        tags: list[set[str]] = [getattr(task, "locust_tag_set", set()) for task in user_class.tasks]
        assert tags == [{scenario_tag}], class_name
    assert set(run_locust.SCENARIOS) == {*TAG_OF_CLASS.values(), "mixed"}
    for scenario, classes in run_locust.SCENARIOS.items():
        assert all(hasattr(locustfile, name) for name in classes), scenario
    assert set(run_locust.SCENARIOS["mixed"]) == set(TAG_OF_CLASS)


def test_every_request_carries_the_key(locustfile: ModuleType) -> None:
    assert locustfile.ApiUser.default_headers["Authorization"] == "Bearer nk_test-key"
    assert all(getattr(locustfile, name).default_headers is locustfile.HEADERS for name in TAG_OF_CLASS)


def test_bodies_are_what_the_api_accepts_or_refuses(locustfile: ModuleType) -> None:
    items = locustfile.multiple_payload()
    assert len(items) == 100 == run_locust.NOTIFICATIONS_PER_REQUEST[("POST", "/notifications/v1/multiple")]
    assert len({item["to"] for item in items}) == 100
    assert json.loads(locustfile.MULTIPLE_BODY) == items
    assert len(NotificationListIn.validate_json(locustfile.MULTIPLE_BODY)) == 100
    single = NotificationIn.model_validate_json(locustfile.SINGLE_BODY)
    assert (single.to, single.personalization) == ("somebody", {"band": "Incubus"})
    with pytest.raises(ValidationError):
        NotificationIn.model_validate_json(locustfile.INVALID_BODY)


def test_the_key_comes_from_the_environment_else_the_file(locustfile: ModuleType, tmp_path: Path) -> None:
    key_file = tmp_path / "dev-api-key"
    with pytest.raises(RuntimeError, match="API_KEY"):
        locustfile.load_api_key({}, key_file)
    key_file.write_text("nk_from-file\n")
    assert locustfile.load_api_key({}, key_file) == "nk_from-file"
    assert locustfile.load_api_key({"API_KEY": "nk_from-env"}, key_file) == "nk_from-env"


STATS_CSV = """\
Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,Min Response Time,\
Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%
POST,/notifications/v1/,10,1,4,4.5,1,30.2,300,100.5,0.1,4,5,5,6,8,12,20,30,30,30,30
POST,/notifications/v1/ [invalid],5,0,3,3.0,1,9,200,50,0,3,3,3,3,9,9,9,9,9,9,9
POST,/notifications/v1/multiple,3,0,40,41.25,30,60,30000,3.5,0,40,40,60,60,60,60,60,60,60,60,60
GET,/notifications/v1/[id],0,0,0,0.0,0,0,0,0,0,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A
,Aggregated,18,1,4,9.9,1,60,5000,154.0,0.1,4,5,6,8,40,60,60,60,60,60,60
"""


def test_stats_csv_is_read_and_notifications_counted(tmp_path: Path) -> None:
    path = tmp_path / "run_stats.csv"
    path.write_text(STATS_CSV)
    rows = run_locust.read_stats(path)
    assert [row.name for row in rows][-1] == "Aggregated"
    total = run_locust.aggregated(rows)
    assert (total.requests, total.failures, total.rps, total.avg_ms, total.p95_ms, total.max_ms) == (
        18,
        1,
        154.0,
        9.9,
        60.0,
        60.0,
    )
    assert rows[0].p95_ms == 12.0
    assert rows[3].p95_ms is None
    assert run_locust.notifications_accepted(rows) == 9 * 1 + 3 * 100  # successful POSTs only, not the invalid ones


def test_make_loadtest_finds_the_service_as_make_run_was_told() -> None:
    running = {"API_URL": "http://127.0.0.1:8300"}

    assert run_locust.service_url({"API_URL": "http://host:1/"}, running) == "http://host:1"
    assert run_locust.service_url({"PORT": "8301"}, running) == "http://127.0.0.1:8301"
    assert run_locust.service_url({"HOST": "0.0.0.0", "PORT": "8301"}, running) == "http://0.0.0.0:8301"
    assert run_locust.service_url({}, running) == "http://127.0.0.1:8300"
    assert run_locust.service_url({}, {}) == "http://127.0.0.1:8000"

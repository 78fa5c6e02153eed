"""A locustfile written for the brief: its payloads, no Authorization header (the brief has no API keys).

It runs unchanged against `make run`, which sets ANONYMOUS_SERVICE=development on a loopback address; against a
service without ANONYMOUS_SERVICE every request is a 401. The project's own scenarios, with a key, are in
loadtest/locustfile.py.

    .venv/bin/locust -f loadtest/brief_locustfile.py --headless -u 60 -r 10 -t 30s --host http://127.0.0.1:8000
"""

from locust import HttpUser, task

ONE = {"to": "example@gmail.com", "personalization": {"band": "Incubus"}}
MANY = [
    {"to": "example@gmail.com", "personalization": {"band": "Korn"}},
    {"to": "another-example@gmail.com", "personalization": {"band": "Soundgarden"}},
]


class BriefUser(HttpUser):
    """Posts the brief's examples and reads back what it posted, without a key."""

    @task(3)
    def post_one(self) -> None:
        """POST the brief's single example, then GET it."""
        created = self.client.post("/notifications/v1/", json=ONE)
        if created.status_code == 201:
            self.client.get(f"/notifications/v1/{created.json()['id']}", name="/notifications/v1/{id}")

    @task(1)
    def post_multiple(self) -> None:
        """POST the brief's list example."""
        self.client.post("/notifications/v1/multiple", json=MANY)

    @task(1)
    def heartbeat(self) -> None:
        """GET the heartbeat."""
        self.client.get("/status/heartbeat")

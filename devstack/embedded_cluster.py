"""A Redis Cluster of embedded redis-servers on 127.0.0.1, for the tests and benchmarks (no Docker needed).

`primaries` nodes (and `replicas` per primary), each `EmbeddedRedis(cluster=True)` with a data folder of its own,
joined by `redis-cli --cluster create` (equal slot ranges). A node's cluster bus listens on its port + 10000, so
ports are taken below 55536 with that one free too.
"""

import random
import subprocess
import time
from pathlib import Path
from typing import Self, cast

import redis

from devstack.embedded import EmbeddedRedis
from devstack.local_server import HOST, PortInUse, port_is_free

#: Where node ports are drawn from (the bus port, + 10000, must exist and be free too).
PORT_RANGE = (20_000, 45_000)


def _node_port() -> int:
    for _ in range(1000):
        port = random.randint(*PORT_RANGE)  # noqa: S311 - a port, not a secret
        if port_is_free(port) and port_is_free(port + 10_000):
            return port
    raise PortInUse("no free pair of ports (port, port + 10000) found")


class EmbeddedRedisCluster:
    """`primaries` primaries and `replicas` replicas of each, in folders under `datadir`."""

    def __init__(self, datadir: Path, primaries: int = 3, replicas: int = 0, appendfsync: str = "everysec") -> None:
        self.datadir = datadir
        self.primaries = primaries
        self.replicas = replicas
        self.appendfsync = appendfsync
        self.nodes: list[EmbeddedRedis] = []

    @property
    def url(self) -> str:
        """REDIS_URL naming the first node (with REDIS_CLUSTER=true the client learns the others from it)."""
        return self.nodes[0].url

    def start(self, timeout: float = 30.0, form: bool = True) -> Self:
        """Start the nodes, join them into a cluster and wait until every node says the cluster is ok.

        With `form=False` the nodes run but are not joined (no slots served yet, as just after a deployment
        started them); `form()` joins them later.
        """
        try:
            for n in range(self.primaries * (1 + self.replicas)):
                for attempt in range(5):
                    node = EmbeddedRedis(self.datadir / f"node{n}", _node_port(), self.appendfsync, cluster=True)
                    try:
                        self.nodes.append(node.start(timeout))
                        break
                    except PortInUse:
                        if attempt == 4:
                            raise
            if form:
                self.form(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def form(self, timeout: float = 30.0) -> None:
        """Join the running nodes into a cluster (`redis-cli --cluster create`) and wait until it is ok."""
        cli = Path(EmbeddedRedis.executable()).with_name("redis-cli")
        addresses = [f"{HOST}:{node.port}" for node in self.nodes]
        subprocess.run(
            [str(cli), "--cluster", "create", *addresses, "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=timeout,
        )
        self.wait_ok(timeout)

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Wait until every node says the cluster is ok (after `form`, or after the nodes were restarted)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = []
            for node in self.nodes:
                client = redis.Redis(host=HOST, port=node.port, socket_timeout=1)
                try:
                    info = cast(bytes, client.execute_command("CLUSTER", "INFO"))  # type: ignore[no-untyped-call]
                    states.append("ok" if b"cluster_state:ok" in info else "not ok")
                finally:
                    client.close()
            if all(state == "ok" for state in states):
                return
            time.sleep(0.1)
        raise TimeoutError("the Redis Cluster did not become ok")

    def stop(self) -> None:
        """Stop every node."""
        for node in reversed(self.nodes):
            node.stop()
        self.nodes = []

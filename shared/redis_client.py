"""Redis client factory for the API, the worker and the CLI: bounded timeouts and one reconnect.

A command fails within REDIS_TIMEOUT_SECONDS instead of hanging, and one that timed out is never sent again. A
command that fails on a dead pooled connection (Redis restarted) is retried once on a new connection: should a
group-commit script have run with its reply lost, the retry queues its entries twice, which the drain stores once;
a rate-limited request's tokens are then taken twice, and an Idempotency-Key's request is answered as a replay.
"""

import asyncio
from typing import Any, cast

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.cluster import get_node_name
from redis.exceptions import ConnectionError as RedisConnectionError

from shared.settings import Settings


def connect(settings: Settings, read_slack_seconds: float = 0.0) -> Redis:
    """Create a client for REDIS_URL; `read_slack_seconds` extends the read timeout for blocking reads.

    With REDIS_CLUSTER, a `RedisCluster` that learns the cluster from the node REDIS_URL names and routes each
    command by its key's slot (following MOVED/ASK itself), and that can always learn it again from that node
    (`StartupNodesCluster`). It has the commands of `Redis` that the service uses (the callers keep every multi-key
    command within one shard's hash tag), so it is typed as one.
    """
    if settings.redis_cluster:
        return cast(
            Redis,
            StartupNodesCluster.from_url(
                settings.require_redis_url(),
                socket_timeout=settings.redis_timeout_seconds + read_slack_seconds,
                socket_connect_timeout=settings.redis_timeout_seconds,
                # after a timeout or a lost connection it reloads the slot map (a failover moves slots) and sends the
                # command once more: fine for reads and the service's idempotent writes; the group commit, which must
                # not run twice, goes to the shard's node through a client of its own (api.writer)
                cluster_error_retry_attempts=1,
            ),
        )
    client: Redis = Redis.from_url(
        settings.require_redis_url(),
        socket_timeout=settings.redis_timeout_seconds + read_slack_seconds,
        socket_connect_timeout=settings.redis_timeout_seconds,
        # not on timeouts (redis-py's default retries them too): a timed-out command may still be running, and
        # sending it again would double both the wait and, for a write, the work
        **_retry_once_on_a_dead_connection(),
        health_check_interval=30,
    )
    return client


class StartupNodesCluster(RedisCluster):
    """A `RedisCluster` that learns the cluster again from the nodes it was configured with, whatever it saw since.

    redis-py's client forgets a node for good once a command to it failed on its connection (redis-py issue #3693)
    and replaces its startup nodes with the nodes it last discovered. Its tasks share it, so one task's
    re-initialisation (after CLUSTERDOWN, as on a cluster that is still forming) closes the connections the other
    tasks are blocked on, and each of those forgets its node: once every node is forgotten it answers "Redis
    Cluster cannot be connected. Please provide at least one reachable node: None" for ever. This one puts the
    configured nodes (REDIS_URL's) back before each re-initialisation, so it recovers once any of them answers.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._configured_nodes = [(node.host, node.port) for node in self.nodes_manager.startup_nodes.values()]

    async def initialize(self) -> RedisCluster:
        """Put the configured startup nodes back, then (re-)learn the cluster as `RedisCluster.initialize` does."""
        if self._initialize:
            # under the lock RedisCluster.initialize holds while it walks the startup nodes
            if not self._lock:
                self._lock = asyncio.Lock()
            async with self._lock:
                if self._initialize:
                    startup = self.nodes_manager.startup_nodes
                    for host, port in self._configured_nodes:
                        name = get_node_name(host, port)
                        if name not in startup:
                            startup[name] = ClusterNode(host, port, **self.connection_kwargs)
        return await super().initialize()

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        """Run a command as `RedisCluster` does; a connection torn down under it is a `ConnectionError`.

        During a failover one task's re-initialisation closes a connection another task is connecting on, and
        redis-py then fails with `AttributeError: 'NoneType' object has no attribute 'writelines'` (seen in
        test_cluster's primary kill): an unreachable node, not a bug of the caller, so callers see it as one.
        """
        try:
            return await super().execute_command(*args, **kwargs)
        except AttributeError as exc:
            raise RedisConnectionError(f"connection closed while in use ({exc})") from exc


def _retry_once_on_a_dead_connection() -> dict[str, Any]:
    return {
        "retry": Retry(NoBackoff(), retries=1, supported_errors=(RedisConnectionError,)),
        "retry_on_error": [RedisConnectionError],
    }


def node_client(node: ClusterNode, timeout_seconds: float) -> Redis:
    """Return a plain client of one cluster node, with the cluster client's credentials and TLS, retrying as `connect`.

    For commands that must reach that node on one connection and never be re-sent by the cluster client (the group
    commit, and WAIT after it: `api.writer`).
    """
    kwargs = {k: v for k, v in node.connection_kwargs.items() if k not in ("parser_class", "retry")}
    kwargs.update(socket_timeout=timeout_seconds, socket_connect_timeout=timeout_seconds)
    pool = ConnectionPool(connection_class=node.connection_class, **kwargs, **_retry_once_on_a_dead_connection())
    return Redis(connection_pool=pool)


def is_cluster(redis: Redis) -> bool:
    """Return whether `redis` is a cluster client (made by `connect` with REDIS_CLUSTER)."""
    return isinstance(redis, RedisCluster)


def transaction_if_possible(redis: Redis) -> Pipeline:
    """Return a MULTI/EXEC pipeline, or on a cluster (whose client runs no MULTI/EXEC) a plain one.

    For writes that should go together but whose keys live in different slots of a cluster, where no transaction
    could hold them anyway: each caller says what a partial write there means.
    """
    return redis.pipeline(transaction=not is_cluster(redis))

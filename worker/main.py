"""arq entry point: `arq worker.main.WorkerSettings` runs one drain loop per stream shard in each worker process.

`on_startup` starts the drains as long-running tasks (not one arq job per notification); `on_shutdown` lets them
finish their batches (up to SHUTDOWN_GRACE_SECONDS). arq's scheduler runs the crons: forget the consumers of
long-gone processes, maintain the day partitions of `notifications` (one worker at a time), and start due scheduled
jobs (`worker.scheduler`).
"""

import asyncio
import functools
import logging
from pathlib import Path
from typing import Any

from arq import cron
from arq.connections import RedisSettings
from prometheus_client import start_http_server

from shared import keys, partitions, queries, redis_client
from shared.db import create_engine
from shared.heap import freeze_startup_objects
from shared.logs import configure_logging
from shared.settings import Settings, get_settings
from worker.drain import Drain, consumer_name
from worker.health import Heartbeat
from worker.scheduler import RUN_TIMEOUT_SECONDS, SCHEDULER_SECONDS, start_due_jobs

logger = logging.getLogger(__name__)

#: How long a consumer with nothing pending may stay silent before housekeeping removes it from the group.
IDLE_CONSUMER_MS = 3_600_000
#: How long shutdown waits for the drain to finish its batch before cancelling it (it is then reclaimed).
SHUTDOWN_GRACE_SECONDS = 30.0


async def startup(ctx: dict[str, Any]) -> None:
    """Open the drain's own Redis client and the database engine, and start the drain loop."""
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    if settings.log_format == "text":
        logging.getLogger("arq").propagate = False  # arq's CLI gives it a handler of its own
    redis = redis_client.connect(settings, read_slack_seconds=settings.drain_block_ms / 1000)
    engine = create_engine(settings.require_database_url(), settings.db_pool_size)
    if settings.worker_metrics_port:
        try:
            start_http_server(settings.worker_metrics_port, settings.worker_metrics_host)
        except OSError as exc:  # several workers on one host (make run WORKERS=4): only the first serves
            logger.warning(
                "metrics not served on %s port %d: %s", settings.worker_metrics_host, settings.worker_metrics_port, exc
            )
    consumer = consumer_name()
    shards = keys.layout_for(settings).shards
    heartbeat = Heartbeat(Path(settings.worker_heartbeat_file), len(shards)) if settings.worker_heartbeat_file else None
    # one drain per shard, side by side: each blocks on its own stream only, so the worker idles only when all are
    # empty, and no shard waits for another's batch
    drains = [
        Drain(
            redis,
            engine,
            settings,
            consumer,
            shard,
            observes_backlog=shard.index == 0,
            on_loop=functools.partial(heartbeat.beat, shard.index) if heartbeat else None,
        )
        for shard in shards
    ]
    ctx["drain"], ctx["drains"] = drains[0], drains
    ctx["drain_tasks"] = [asyncio.create_task(drain.run(), name=f"drain-{drain.shard.index}") for drain in drains]
    freeze_startup_objects()


async def shutdown(ctx: dict[str, Any]) -> None:
    """Let the drains finish their current batches, then close their connections."""
    drains: list[Drain] = ctx["drains"]
    tasks: list[asyncio.Task[None]] = ctx["drain_tasks"]
    for drain in drains:
        drain.stopping.set()
    try:
        # every drain gets its grace, even if another's task failed (its entries stay pending for another worker)
        for failed in await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), SHUTDOWN_GRACE_SECONDS):
            if isinstance(failed, BaseException):
                logger.error("a drain failed: %r", failed)
    except TimeoutError:
        logger.warning(
            "drain did not finish in %.0fs; its batch stays pending for another worker",
            SHUTDOWN_GRACE_SECONDS,
        )
    except Exception:
        logger.exception("drain failed")
    drain = drains[0]  # the drains share the Redis client and the engine
    await drain.redis.aclose()
    await drain.engine.dispose()


# Remove the consumers of group ARGV[1] on stream KEYS[1] that have nothing pending and have been idle longer than
# ARGV[2] ms. One script, so no consumer can be handed an entry between the check and the removal (deleting a
# consumer discards its pending entries).
FORGET_IDLE_CONSUMERS = """
local removed = 0
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local fields = {}
  for i = 1, #consumer, 2 do fields[consumer[i]] = consumer[i + 1] end
  if fields['pending'] == 0 and fields['idle'] > tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], fields['name'])
    removed = removed + 1
  end
end
return removed
"""


async def forget_idle_consumers(ctx: dict[str, Any], idle_ms: int = IDLE_CONSUMER_MS) -> int:
    """Remove consumers with nothing pending that have been silent for an hour (exited worker processes)."""
    drains: list[Drain] = ctx["drains"]
    forget = drains[0].redis.register_script(FORGET_IDLE_CONSUMERS)
    return sum([int(await forget(keys=[drain.stream], args=[keys.GROUP, idle_ms])) for drain in drains])


async def maintain_partitions(ctx: dict[str, Any]) -> None:
    """Make the coming days' partitions and drop expired ones (skipped while another process does it); expire keys."""
    drain: Drain = ctx["drain"]
    settings = drain.settings
    done = await partitions.maintain(drain.engine, drain.redis, settings.retention_days, keys.layout_for(settings))
    if done.skipped:
        logger.info("partition maintenance skipped: another process holds it")
        return
    async with drain.engine.begin() as conn:  # jobs' Idempotency-Keys are kept IDEMPOTENCY_TTL_SECONDS
        expired = await queries.delete_expired_job_keys(conn, settings.idempotency_ttl_seconds)
    if expired:
        logger.info("deleted %d expired job Idempotency-Keys", expired)


def _arq_redis_url(settings: Settings) -> str:
    """Return the Redis of arq's scheduler: ARQ_REDIS_URL, else REDIS_URL (not a cluster's: arq cannot use one)."""
    if settings.arq_redis_url:
        return settings.arq_redis_url
    if settings.redis_cluster:
        raise RuntimeError(
            "REDIS_CLUSTER is set: set ARQ_REDIS_URL to a plain Redis for arq's scheduler (it only carries the "
            "housekeeping crons; arq's MULTI/EXEC spans keys a cluster keeps in different slots)"
        )
    return settings.require_redis_url()


def _worker_settings() -> type:
    settings = get_settings()

    class WorkerSettings:
        """arq settings: the drain runs beside arq's scheduler, which runs housekeeping and starts scheduled jobs."""

        redis_settings = RedisSettings.from_dsn(_arq_redis_url(settings))
        functions: list[Any] = []
        cron_jobs = [
            cron(forget_idle_consumers, minute=set(range(0, 60, 10)), run_at_startup=False),
            # hourly, and at start-up so a fresh deployment has its partitions before the first day turns over
            cron(maintain_partitions, minute=17, second=0, run_at_startup=True, timeout=600),
            # scheduled jobs: a tick runs on one worker; runs that overlap take different jobs (worker.scheduler)
            cron(
                start_due_jobs,
                second=set(range(0, 60, SCHEDULER_SECONDS)),
                run_at_startup=True,
                timeout=RUN_TIMEOUT_SECONDS,
            ),
        ]
        on_startup = startup
        on_shutdown = shutdown
        handle_signals = True
        # On SIGTERM, arq stops taking jobs and lets running ones end (up to this long) before it cancels them. Without
        # it, a job cancelled in arq's own bookkeeping (the 5 s scheduler cron's start or end) fails arq's close():
        # exit code 1, and on_shutdown (the drains' grace) skipped. A scheduler run still going then is cancelled,
        # its job rolled back. The drains run meanwhile and get their own grace after it (within the pods' 45 s).
        job_completion_wait = 5
        health_check_interval = 10

    return WorkerSettings


def __getattr__(name: str) -> Any:
    # `arq worker.main.WorkerSettings` looks the class up lazily, so importing this module reads no environment.
    if name == "WorkerSettings":
        return _worker_settings()
    raise AttributeError(name)

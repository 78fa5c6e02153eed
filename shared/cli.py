"""Command line administration: `python -m shared.cli ...` (the same operations as the admin API).

    python -m shared.cli services create NAME
    python -m shared.cli services list
    python -m shared.cli services rate-limit SERVICE_ID N|0|default   # notifications per minute; 0: unlimited
    python -m shared.cli keys create SERVICE_ID NAME     # prints the secret once
    python -m shared.cli keys list SERVICE_ID
    python -m shared.cli keys revoke SERVICE_ID KEY_ID
    python -m shared.cli keys reseal                     # seal every secret with SECRET_KEY's first key (see README)
    python -m shared.cli dev-key [--file PATH]           # a key of the `development` service (make run)
    python -m shared.cli dead-letters list [--count N]
    python -m shared.cli dead-letters replay [ID ...]    # all when no id is given
    python -m shared.cli partitions list                 # day partitions of notifications: name, range, ~rows
    python -m shared.cli partitions maintain             # make the coming days' partitions, drop expired ones

Connects to DATABASE_URL and REDIS_URL; creating keys needs SECRET_KEY too. Beside a running `make run` of the
same checkout (run from its folder), whatever of these is not set is taken from it (`.data/servers.env`, its
`.data/secret-key`), and a line on stderr says so; a setting still missing is one line on stderr and exit code 2.
"""

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

from redis.asyncio import Redis
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from shared import deadletters, keys, partitions, ratelimits, redis_client, run_data, secret_holders, tenancy
from shared.db import create_engine
from shared.schemas import MAX_RATE_LIMIT
from shared.secretbox import NO_SECRET_KEY, InvalidToken, SecretBox, secret_box
from shared.settings import get_settings

DEV_SERVICE = "development"
T = TypeVar("T")


def _row(row: Any) -> str:
    hidden = ("secret_hash", "secret_ciphertext")
    return "  ".join(f"{key}={value}" for key, value in row._mapping.items() if key not in hidden)


#: Exit code of a command that did not do what was asked (no such service, say).
FAILED = 1
#: Exit code of a command that cannot run for a missing setting (as argparse's for a wrong command line).
MISSING_SETTING = 2
_NO_MAKE_RUN = "or start `make run` in this checkout and run this from its folder"


class CommandFailedError(Exception):
    """The command did not do what was asked: its message goes to stderr, the exit code is FAILED."""


class MissingSettingError(Exception):
    """A setting the command needs is neither set nor known from a running `make run`."""


def _found(row: T | None, missing: str) -> T:
    """Return `row`, or fail the command with the message `missing` when there is none."""
    if row is None:
        raise CommandFailedError(missing)
    return row


def _secret_box() -> SecretBox:
    box = secret_box(get_settings().secret_key)
    if box is None:
        kept = run_data.DATA / run_data.SECRET_KEY_FILE
        if kept.exists():  # a `make run` of this checkout made one, and its keys are sealed with it
            raise MissingSettingError(
                f"SECRET_KEY is not set: this checkout's `make run` keeps its own in {kept}; set it, {_NO_MAKE_RUN}"
            )
        raise MissingSettingError(f"{NO_SECRET_KEY}, {_NO_MAKE_RUN}")
    return box


def settings_from_make_run(environ: MutableMapping[str, str], data: Path = run_data.DATA) -> list[str]:
    """Fill DATABASE_URL, REDIS_URL and SECRET_KEY that `environ` lacks from the running `make run` of `data`.

    A variable set, even empty, is left as it is. Returns the names filled (none when no `make run` runs there).
    """
    running = run_data.read_running(data)
    found = {name: running.get(name, "") for name in ("DATABASE_URL", "REDIS_URL")}
    secret_file = running.get("SECRET_KEY_FILE")
    if secret_file:
        with contextlib.suppress(OSError):  # gone since: as if no SECRET_KEY were known
            found["SECRET_KEY"] = Path(secret_file).read_text().strip()
    filled = [name for name, value in found.items() if value and name not in environ]
    for name in filled:
        environ[name] = found[name]
    return filled


async def _services_create(engine: AsyncEngine, redis: Redis, args: argparse.Namespace) -> int:
    try:
        print(_row(await tenancy.create_service(engine, args.name)))
    except IntegrityError:
        raise CommandFailedError(f"a service named {args.name!r} exists already") from None
    return 0


async def _services_list(engine: AsyncEngine, redis: Redis, args: argparse.Namespace) -> int:
    for row in await tenancy.list_services(engine):
        print(_row(row))
    return 0


def _rate_limit(value: str) -> int | None:
    if value == "default":
        return None
    limit = int(value)
    if not 0 <= limit <= MAX_RATE_LIMIT:
        raise ValueError(value)
    return limit


async def _services_rate_limit(engine: AsyncEngine, redis: Redis, args: argparse.Namespace) -> int:
    row = await ratelimits.set_rate_limit(engine, redis, args.service_id, args.per_minute)
    print(_row(_found(row, f"no service {args.service_id}")))
    return 0


async def _keys_create(engine: AsyncEngine, redis: Redis, args: argparse.Namespace) -> int:
    created = await tenancy.create_api_key(engine, redis, _secret_box(), args.service_id, args.name)
    print(_row(created.record))
    print(f"key={created.secret}   (shown this once)")
    return 0


async def _keys_list(engine: AsyncEngine, redis: Redis, args: argparse.Namespace) -> int:
    for row in await tenancy.list_api_keys(engine, args.service_id):
        print(_row(row))
    return 0


async def _keys_revoke(engine: AsyncEngine, redis: Redis, args: argparse.Namespace) -> int:
    record = await tenancy.revoke_api_key(engine, redis, args.service_id, args.key_id)
    print(_row(_found(record, f"service {args.service_id} has no key {args.key_id}")))
    return 0


async def _dev_key(engine: AsyncEngine, redis: Redis, args: argparse.Namespace) -> int:
    path = Path(args.file)
    saved = path.read_text().strip() if path.exists() else None
    key, created = await tenancy.ensure_dev_key(engine, redis, _secret_box(), DEV_SERVICE, saved)
    if created:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(key + "\n")
        path.chmod(0o600)
    print(key)
    return 0


def _lacking(holders: dict[str, list[str]], fingerprint: str) -> list[str]:
    return sorted(holder for holder, held in holders.items() if fingerprint not in held)


async def _keys_reseal(engine: AsyncEngine, redis: Redis, args: argparse.Namespace) -> int:
    box = _secret_box()
    new = box.fingerprints[0]
    lacking = _lacking(await secret_holders.live_holders(redis), new)
    if lacking:
        raise CommandFailedError(
            f"refused, nothing resealed: {len(lacking)} live API process(es) do not hold SECRET_KEY's first key "
            f"(fingerprint {new}) and could not open a secret sealed with it: {', '.join(lacking[:10])}. Give every "
            "API process SECRET_KEY=<new>,<old> (restart them), then run this again"
        )
    try:
        resealed = await tenancy.reseal_secrets(engine, redis, box)
    except InvalidToken:
        raise CommandFailedError(
            "a key's secret opens with none of SECRET_KEY's keys: add the key it was sealed with"
        ) from None
    print(f"{resealed} key secret(s) sealed again with the first key of SECRET_KEY")
    holders = await secret_holders.live_holders(redis)  # again: a process may have started meanwhile
    if lacking := _lacking(holders, new):
        raise CommandFailedError(
            f"keep the old key: {len(lacking)} API process(es) started meanwhile without the new key: "
            f"{', '.join(lacking[:10])}. Give them SECRET_KEY=<new>,<old> and run this again"
        )
    if sealing_old := sorted(holder for holder, held in holders.items() if held[0] != new):
        print(
            f"keep the old key: {len(sealing_old)} API process(es) still seal new keys with another key (their "
            f"SECRET_KEY's first): {', '.join(sealing_old[:10])}. Put the new key first everywhere, run this again"
        )
        return 0
    if len(box.fingerprints) > 1:
        print(f"no live API process needs SECRET_KEY's other keys ({len(holders)} hold the new one): drop them now")
    return 0


async def _dead_list(engine: AsyncEngine, redis: Redis, args: argparse.Namespace) -> int:
    letters = await deadletters.list_dead_letters(redis, args.count, keys.layout_for(get_settings()))
    for letter in letters:
        payload = letter.payload[:200].decode(errors="replace")
        print(f"id={letter.id}  entry={letter.entry}  error={letter.error}\n    payload={payload}")
    print(f"{len(letters)} dead letter(s) shown")
    return 0


async def _dead_replay(engine: AsyncEngine, redis: Redis, args: argparse.Namespace) -> int:
    moved = await deadletters.replay(redis, args.ids or None, keys.layout_for(get_settings()))
    print(f"{moved} dead letter(s) put back on the stream")
    return 0


async def _partitions_list(engine: AsyncEngine, redis: Redis, args: argparse.Namespace) -> int:
    async with engine.connect() as conn:
        found = await partitions.list_partitions(conn)
    for partition in found:
        print("  ".join(f"{key}={value}" for key, value in partitions.describe(partition).items()))
    print(f"{len(found)} partition(s); rows are Postgres's estimates (exact after ANALYZE)")
    return 0


async def _partitions_maintain(engine: AsyncEngine, redis: Redis, args: argparse.Namespace) -> int:
    settings = get_settings()
    retention = settings.retention_days
    done = await partitions.maintain(engine, redis, retention, keys.layout_for(settings))
    if done.skipped:
        raise CommandFailedError("another process is maintaining the partitions right now; nothing done")
    print(f"made {done.created or 'none'}; dropped {done.dropped or 'none'} (RETENTION_DAYS={retention})")
    if done.refused:
        raise CommandFailedError(f"dropped nothing: {done.refused}")
    return 0


Command = Callable[[AsyncEngine, Redis, argparse.Namespace], Awaitable[int]]


def parser() -> argparse.ArgumentParser:
    """Build the argument parser."""
    root = argparse.ArgumentParser(
        prog="python -m shared.cli", description="Administer services, API keys, dead letters and partitions."
    )
    groups = root.add_subparsers(required=True, metavar="{services,keys,dev-key,dead-letters,partitions}")
    services = groups.add_parser("services").add_subparsers(required=True)
    create = services.add_parser("create", help="create a service")
    create.add_argument("name")
    create.set_defaults(run=_services_create)
    services.add_parser("list", help="list services").set_defaults(run=_services_list)
    limit = services.add_parser("rate-limit", help="set a service's rate limit in notifications per minute")
    limit.add_argument("service_id", type=UUID)
    limit.add_argument(
        "per_minute", type=_rate_limit, metavar="N|0|default", help="0: unlimited; default: RATE_LIMIT_PER_MINUTE"
    )
    limit.set_defaults(run=_services_rate_limit)
    api_keys = groups.add_parser("keys").add_subparsers(required=True)
    key_create = api_keys.add_parser("create", help="create an API key (prints its secret once)")
    key_create.add_argument("service_id", type=UUID)
    key_create.add_argument("name")
    key_create.set_defaults(run=_keys_create)
    key_list = api_keys.add_parser("list", help="list a service's keys")
    key_list.add_argument("service_id", type=UUID)
    key_list.set_defaults(run=_keys_list)
    revoke = api_keys.add_parser("revoke", help="revoke an API key")
    revoke.add_argument("service_id", type=UUID)
    revoke.add_argument("key_id", type=UUID)
    revoke.set_defaults(run=_keys_revoke)
    api_keys.add_parser(
        "reseal", help="seal every key's secret again with the first key of SECRET_KEY (before dropping an old one)"
    ).set_defaults(run=_keys_reseal)
    dev = groups.add_parser("dev-key", help="print a key of the development service, creating it if needed")
    dev.add_argument("--file", default=".data/dev-api-key", help="where the key is kept between runs")
    dev.set_defaults(run=_dev_key)
    dead = groups.add_parser("dead-letters").add_subparsers(required=True)
    dead_list = dead.add_parser("list", help="show dead-lettered entries with their errors")
    dead_list.add_argument("--count", type=int, default=100)
    dead_list.set_defaults(run=_dead_list)
    dead_replay = dead.add_parser("replay", help="put dead letters back on the stream (all, or the given ids)")
    dead_replay.add_argument("ids", nargs="*")
    dead_replay.set_defaults(run=_dead_replay)
    parts = groups.add_parser("partitions").add_subparsers(required=True)
    parts.add_parser("list", help="list the day partitions of notifications").set_defaults(run=_partitions_list)
    parts.add_parser(
        "maintain", help="make the partitions of the coming days and drop those past RETENTION_DAYS"
    ).set_defaults(run=_partitions_maintain)
    return root


async def _main(args: argparse.Namespace) -> int:
    settings = get_settings()
    for name, value in (("DATABASE_URL", settings.database_url), ("REDIS_URL", settings.redis_url)):
        if not value:
            raise MissingSettingError(f"{name} is not set: set it, {_NO_MAKE_RUN}")
    engine = create_engine(settings.require_database_url(), pool_size=1)
    redis = redis_client.connect(settings)
    try:
        run: Command = args.run
        return await run(engine, redis, args)
    except tenancy.ServiceNotFoundError as missing:
        raise CommandFailedError(f"no service {missing}") from None
    finally:
        await redis.aclose()
        await engine.dispose()


def main(argv: list[str] | None = None) -> int:
    """Run one command; return the exit code."""
    args = parser().parse_args(argv)
    filled = settings_from_make_run(os.environ)
    if filled:
        get_settings.cache_clear()
        print(
            f"{', '.join(filled)} from the running `make run` ({run_data.DATA / run_data.SERVERS_ENV})", file=sys.stderr
        )
    try:
        return asyncio.run(_main(args))
    except MissingSettingError as error:
        print(error, file=sys.stderr)
        return MISSING_SETTING
    except CommandFailedError as error:
        print(error, file=sys.stderr)
        return FAILED


if __name__ == "__main__":
    sys.exit(main())

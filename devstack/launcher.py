"""`make run`: the whole service in the foreground on one machine; Ctrl-C stops all of it.

Starts an embedded PostgreSQL and Redis (data in `.data/`) unless DATABASE_URL / REDIS_URL are set, migrates, then
runs the API (uvicorn) and WORKERS workers (arq), their metrics on HOST. ADMIN_TOKEN and SECRET_KEY, unless set,
are made once and kept in `.data/`; `.data/servers.env` says where the stack runs (`shared.run_data`). An embedded
server whose default port is taken moves to a free one and says so; a taken port set in EMBEDDED_PG_PORT,
EMBEDDED_REDIS_PORT or PORT stops it with one line naming the setting. Every child dies with the launcher, even
when it is killed (devstack.lifetime).
"""

import argparse
import ipaddress
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from devstack.embedded import DataFolderInUse, EmbeddedPostgres, EmbeddedRedis, EmbeddedServerError, PortInUse
from devstack.lifetime import die_with_parent
from devstack.local_server import free_port, port_is_free
from shared.cli import DEV_SERVICE
from shared.run_data import SECRET_KEY_FILE, SERVERS_ENV, write_running
from shared.secretbox import new_secret_key
from shared.settings import get_settings

ROOT = Path(__file__).resolve().parent.parent
Server = TypeVar("Server", EmbeddedPostgres, EmbeddedRedis)


def _is_loopback(host: str) -> bool:
    """True if `host` (an address or `localhost`) is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _reachable(host: str) -> str:
    """The address a client on this machine reaches a server bound to `host` at, bracketed if IPv6."""
    if host in ("0.0.0.0", ""):  # every interface: loopback among them
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _saved_secret(path: Path, make: Callable[[], str] = lambda: secrets.token_urlsafe(24)) -> str:
    """Return the secret kept in `path`, making one with `make` on first use."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = make()
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return secret


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _spawn(command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    # own session: a terminal's Ctrl-C reaches only this launcher, which forwards it once;
    # SIGINT from the kernel should this launcher die without forwarding it
    return subprocess.Popen(
        command, env=env, cwd=ROOT, start_new_session=True, preexec_fn=die_with_parent(signal.SIGINT)
    )


def _worker_metrics_port(env: dict[str, str], host: str, default: int) -> int:
    """The workers' metrics port: WORKER_METRICS_PORT as set, else `default` or, if that is taken, a free one.

    The choice goes into `env`, so the workers serve where the banner says (a second `make run` beside the first
    would otherwise name the first's port, and its workers serve nothing).
    """
    if "WORKER_METRICS_PORT" in env or not default or port_is_free(default, host):
        return int(env.get("WORKER_METRICS_PORT", default))
    chosen = free_port()
    env["WORKER_METRICS_PORT"] = str(chosen)
    print(f"port {default} is in use by another process: worker metrics on {chosen} instead", flush=True)
    return chosen


def _start_embedded(make: Callable[[int | None], Server], setting: str, default: int) -> Server:
    """Start a server on the port `setting` names, else on `default` or, if another process holds it, a free one."""
    asked = os.environ.get(setting)
    try:
        try:
            return make(int(asked) if asked else default).start()
        except PortInUse as error:
            if asked:
                raise SystemExit(f"{setting}={asked}: {error}; set {setting} to a free port, or unset it") from None
        server = make(None).start()
        print(f"port {default} is in use by another process: {server.what} on {server.port} instead", flush=True)
        return server
    except DataFolderInUse as error:
        raise SystemExit(f"{error} (is `make run` already running in this checkout?)") from None
    except EmbeddedServerError as error:
        raise SystemExit(str(error)) from None


def main() -> int | str:
    """Run the stack until interrupted or until one of its processes exits."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WORKERS", "1")))
    parser.add_argument("--api-workers", type=int, default=int(os.environ.get("API_WORKERS", "1")))
    parser.add_argument("--data", type=Path, default=ROOT / ".data", help="the embedded servers' data, keys (.data)")
    args = parser.parse_args()
    data: Path = args.data.resolve()

    settings = get_settings()
    env = dict(os.environ)
    if not port_is_free(args.port, args.host):
        return f"PORT={args.port}: port {args.port} on {args.host} is in use by another process; set PORT to a free one"
    servers: list[EmbeddedPostgres | EmbeddedRedis] = []
    children: list[subprocess.Popen[bytes]] = []
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    try:
        if not settings.database_url:
            pg = _start_embedded(lambda port: EmbeddedPostgres(data / "postgres", port), "EMBEDDED_PG_PORT", 55432)
            servers.append(pg)
            env["DATABASE_URL"] = pg.url
            print(f"embedded PostgreSQL: {pg.url} (data in {pg.datadir})", flush=True)
        if not settings.redis_url:
            redis = _start_embedded(
                lambda port: EmbeddedRedis(data / "redis", port, appendfsync="always"), "EMBEDDED_REDIS_PORT", 56379
            )
            servers.append(redis)
            env["REDIS_URL"] = redis.url
            print(f"embedded Redis: {redis.url} (AOF always, data in {redis.datadir})", flush=True)

        data.mkdir(parents=True, exist_ok=True)
        dies_with_us = die_with_parent(signal.SIGTERM)
        subprocess.run([_bin("alembic"), "upgrade", "head"], env=env, cwd=ROOT, check=True, preexec_fn=dies_with_us)
        if not settings.admin_token:
            env["ADMIN_TOKEN"] = _saved_secret(data / "admin-token")
        if not settings.secret_key:  # seals the API keys' secrets: losing it makes every key unusable for JWTs
            env["SECRET_KEY"] = _saved_secret(data / SECRET_KEY_FILE, new_secret_key)
        if "WORKER_METRICS_HOST" not in env:  # the workers' metrics on the API's interface, not on every one
            env["WORKER_METRICS_HOST"] = args.host
        metrics_port = _worker_metrics_port(env, env["WORKER_METRICS_HOST"], settings.worker_metrics_port)
        # where the CLI and `make loadtest` find this stack (the embedded servers may not be on their default ports)
        running = {
            name: env.get(name) or getattr(settings, name.lower()) or "" for name in ("DATABASE_URL", "REDIS_URL")
        }
        running["API_URL"] = f"http://{_reachable(args.host)}:{args.port}"
        if not settings.secret_key:
            running["SECRET_KEY_FILE"] = str(data / SECRET_KEY_FILE)
        write_running(data, running)
        dev_key = subprocess.run(
            [sys.executable, "-m", "shared.cli", "dev-key", "--file", str(data / "dev-api-key")],
            env=env,
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
            preexec_fn=dies_with_us,
        ).stdout.strip()
        anonymous = settings.anonymous_service
        if "ANONYMOUS_SERVICE" not in env and _is_loopback(args.host):  # the brief's examples send no key
            anonymous = env["ANONYMOUS_SERVICE"] = DEV_SERVICE
        uvicorn = [_bin("uvicorn"), "api.main:app", "--host", args.host, "--port", str(args.port)]
        uvicorn += ["--no-access-log", "--workers", str(args.api_workers)]
        children.append(_spawn(uvicorn, env))
        for _ in range(args.workers):
            children.append(_spawn([_bin("arq"), "worker.main.WorkerSettings"], env))
        admin = (
            "as set in ADMIN_TOKEN" if settings.admin_token else f"{env['ADMIN_TOKEN']}  (in {data / 'admin-token'})"
        )
        metrics = (
            f"worker metrics on http://{env['WORKER_METRICS_HOST']}:{metrics_port}/metrics "
            "(WORKER_METRICS_PORT; the first worker's)"
            if metrics_port
            else "worker metrics: off (WORKER_METRICS_PORT=0)"
        )
        sealing = "as set in SECRET_KEY" if settings.secret_key else f"in {data / SECRET_KEY_FILE}"
        print(
            f"API on http://{args.host}:{args.port} (docs at /docs), {args.workers} worker(s); Ctrl-C stops\n"
            f"{metrics}\n"
            f"API key of the `development` service: {dev_key}  (in {data / 'dev-api-key'})\n"
            f"admin token: {admin}\n"
            f"SECRET_KEY (seals the API keys' secrets): {sealing}",
            flush=True,
        )
        if anonymous:
            print(
                f"requests without an API key act as the `{anonymous}` service (ANONYMOUS_SERVICE; "
                "set ANONYMOUS_SERVICE= to turn off, never on a shared network)",
                flush=True,
            )

        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        print("a child process exited; stopping the stack", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGINT)
        for child in children:
            try:
                child.wait(timeout=40)
            except subprocess.TimeoutExpired:
                child.kill()
        for server in reversed(servers):
            server.stop()
        (data / SERVERS_ENV).unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())

"""`make run`: the whole service in the foreground on one machine; Ctrl-C stops all of it.

Starts an embedded PostgreSQL and Redis (data in `.data/`) unless DATABASE_URL / REDIS_URL are set, applies
the migrations, then runs the API (uvicorn) and WORKERS drain workers (arq) as child processes.
"""

import argparse
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from shared.embedded import EmbeddedPostgres, EmbeddedRedis
from shared.settings import get_settings

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / ".data"


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _saved_secret(path: Path) -> str:
    """Return the secret kept in `path`, making one on first use."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(24)
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return secret


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _spawn(command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    # own session: a terminal's Ctrl-C reaches only this launcher, which forwards it once
    return subprocess.Popen(command, env=env, cwd=ROOT, start_new_session=True)


def main() -> int:
    """Run the stack until interrupted or until one of its processes exits."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WORKERS", "1")))
    parser.add_argument("--api-workers", type=int, default=int(os.environ.get("API_WORKERS", "1")))
    args = parser.parse_args()

    settings = get_settings()
    env = dict(os.environ)
    servers: list[EmbeddedPostgres | EmbeddedRedis] = []
    children: list[subprocess.Popen[bytes]] = []
    try:
        if not settings.database_url:
            port = int(os.environ.get("EMBEDDED_PG_PORT", "55432"))
            pg = EmbeddedPostgres(DATA / "postgres", port).start()
            servers.append(pg)
            env["DATABASE_URL"] = pg.url
            print(f"embedded PostgreSQL: {pg.url} (data in {pg.datadir})", flush=True)
        if not settings.redis_url:
            port = int(os.environ.get("EMBEDDED_REDIS_PORT", "56379"))
            redis = EmbeddedRedis(DATA / "redis", port, appendfsync="always").start()
            servers.append(redis)
            env["REDIS_URL"] = redis.url
            print(f"embedded Redis: {redis.url} (AOF always, data in {redis.datadir})", flush=True)

        subprocess.run([_bin("alembic"), "upgrade", "head"], env=env, cwd=ROOT, check=True)
        if not settings.admin_token:
            env["ADMIN_TOKEN"] = _saved_secret(DATA / "admin-token")
        dev_key = subprocess.run(
            [sys.executable, "-m", "shared.cli", "dev-key", "--file", str(DATA / "dev-api-key")],
            env=env,
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        uvicorn = [_bin("uvicorn"), "api.main:app", "--host", args.host, "--port", str(args.port)]
        uvicorn += ["--no-access-log", "--workers", str(args.api_workers)]
        children.append(_spawn(uvicorn, env))
        for _ in range(args.workers):
            children.append(_spawn([_bin("arq"), "worker.main.WorkerSettings"], env))
        admin = "as set in ADMIN_TOKEN" if settings.admin_token else f"{env['ADMIN_TOKEN']}  (in .data/admin-token)"
        print(
            f"API on http://{args.host}:{args.port} (docs at /docs), {args.workers} worker(s); Ctrl-C stops\n"
            f"API key of the `development` service: {dev_key}  (in .data/dev-api-key)\n"
            f"admin token: {admin}",
            flush=True,
        )

        signal.signal(signal.SIGTERM, _interrupt)
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


if __name__ == "__main__":
    sys.exit(main())

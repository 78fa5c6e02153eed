"""All configuration, read from the environment (and an optional `.env`) by one pydantic-settings class.

Nothing reads the environment at import time: call `get_settings()` (cached) from a lifespan or startup hook.
Every field is in the README's settings table and docs/configuration.md.
"""

import re
from functools import lru_cache
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.secretbox import parse_secret_key

#: An absolute http(s) URL without query, fragment, credentials or whitespace.
_BASE_URL = re.compile(r"https?://[^/?#@\s]+(/[^?#\s]*)?")


class Settings(BaseSettings):
    """Service settings; each field maps to the upper-case environment variable of the same name."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # Connections. Unset means "start the embedded servers" for `make run` / `make test`.
    database_url: str | None = None
    redis_url: str | None = None

    # Tenancy.
    admin_token: SecretStr | None = None
    # Fernet key(s), comma-separated, the first one sealing: encrypts API keys' secrets (shared.secretbox).
    secret_key: SecretStr | None = None
    # Requests without an Authorization header act as this service (unset: they get 401). For local use only.
    anonymous_service: str | None = None
    auth_cache_seconds: float = Field(5.0, ge=0)
    template_cache_seconds: float = Field(5.0, ge=0)
    # Notifications per minute per service, unless the service has its own limit (0: unlimited).
    rate_limit_per_minute: int = Field(0, ge=0, le=1_000_000_000)  # as a service's own (shared.schemas)

    # Request limits (clients get a 4xx JSON error past them).
    max_batch_items: int = Field(1000, ge=1, le=100_000)
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    max_header_bytes: int = Field(16 * 1024, ge=1024)
    max_to_length: int = Field(320, ge=1)
    max_personalization_keys: int = Field(50, ge=0)
    max_personalization_key_length: int = Field(128, ge=1)
    max_personalization_value_length: int = Field(4096, ge=1)
    max_rendered_length: int = Field(20_000, ge=1)
    max_queued_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    # Jobs (bulk sends): most rows one native job may hold; how far ahead a job may be scheduled; how many jobs
    # one API process stores at once (each holds a pooled Postgres connection for its whole upload).
    max_job_rows: int = Field(10_000_000, ge=1, le=16_000_000)
    jobs_max_schedule_hours_ahead: int = Field(96, ge=1)
    max_concurrent_jobs: int = Field(2, ge=1)

    # Redis behaviour.
    # The queue is this many Redis streams, with hash-tagged keys (a cluster spreads them over its primaries).
    stream_shards: int = Field(1, ge=1, le=256)
    # REDIS_URL names a node of a Redis Cluster: redis-py's RedisCluster is used.
    redis_cluster: bool = False
    # A 201 only once this many replicas confirmed the write (WAIT after each flush); 0: once the primary has it.
    redis_wait_replicas: int = Field(0, ge=0, le=16)
    # The plain Redis of arq's scheduler (the workers' housekeeping crons); unset: REDIS_URL. Required with
    # REDIS_CLUSTER: arq's queue runs MULTI/EXEC over keys a cluster puts in different slots.
    arq_redis_url: str | None = None
    redis_timeout_seconds: float = Field(5.0, gt=0)
    cache_ttl_seconds: int = Field(60, ge=1)
    idempotency_ttl_seconds: int = Field(86_400, ge=1)
    max_backlog_entries: int = Field(50_000, ge=1)

    # Drain (worker) behaviour.
    drain_batch_entries: int = Field(500, ge=1)
    drain_batch_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    drain_block_ms: int = Field(1000, ge=1)
    drain_linger_ms: int = Field(50, ge=0, le=10_000)
    reclaim_idle_ms: int = Field(30_000, ge=100)
    reclaim_interval_seconds: int = Field(10, ge=1)
    max_deliveries: int = Field(5, ge=1)
    db_retry_max_seconds: float = Field(30.0, gt=0)
    db_pool_size: int = Field(5, ge=1)

    # Storage: notifications are kept in day partitions for this many days (0: kept for ever).
    retention_days: int = Field(7, ge=0, le=36_500)

    # The API's URL as clients reach it (`https://notify.example.com/`): the base of the v2 answers' `uri` and
    # `links`. Unset: the request's Host header, if it is a plain host[:port].
    public_base_url: str | None = None

    # Operations.
    worker_metrics_port: int = Field(9100, ge=0, le=65535)
    worker_metrics_host: str = "0.0.0.0"  # for a container's scraper; `make run` sets its HOST (loopback)
    # Each worker's health signal (worker.health): a file its drains date with their latest completed loop.
    worker_heartbeat_file: str | None = None
    worker_heartbeat_max_age_seconds: float = Field(60.0, gt=0)
    access_log: bool = True
    # Log the health probes' requests (/status/*) too; false leaves them out of the access log.
    access_log_probes: bool = True
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"

    @field_validator("database_url")
    @classmethod
    def _plain_postgres_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("DATABASE_URL must look like postgresql://user:pass@host:port/db")
        return value

    @field_validator("anonymous_service", "worker_heartbeat_file")
    @classmethod
    def _empty_is_unset(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("admin_token")
    @classmethod
    def _empty_token_is_unset(cls, value: SecretStr | None) -> SecretStr | None:
        # an empty ADMIN_TOKEN (compose passes `${ADMIN_TOKEN:-}`) turns the admin API off, never on with ""
        return value if value is not None and value.get_secret_value().strip() else None

    @field_validator("secret_key")
    @classmethod
    def _fernet_keys(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        parse_secret_key(value.get_secret_value())  # a wrong key stops the process at start, saying how to fix it
        return value

    @field_validator("public_base_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        if not _BASE_URL.fullmatch(value):
            raise ValueError("PUBLIC_BASE_URL must look like https://host[:port][/path] (no query, no fragment)")
        return value.rstrip("/") + "/"

    @field_validator("redis_url", "arq_redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("REDIS_URL must look like redis://host:port/db")
        return value

    def require_database_url(self) -> str:
        """Return DATABASE_URL or raise a clear error when it is not configured."""
        if not self.database_url:
            raise RuntimeError("DATABASE_URL is not set (use `make run`, which starts an embedded Postgres)")
        return self.database_url

    def require_redis_url(self) -> str:
        """Return REDIS_URL or raise a clear error when it is not configured."""
        if not self.redis_url:
            raise RuntimeError("REDIS_URL is not set (use `make run`, which starts an embedded Redis)")
        return self.redis_url


@lru_cache
def get_settings() -> Settings:
    """Return the process-wide settings, read from the environment on first call."""
    return Settings()

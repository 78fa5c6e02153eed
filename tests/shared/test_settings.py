"""Settings and URL handling: plain URLs in, clear errors out."""

import pytest
from pydantic import ValidationError

from shared.db import sqlalchemy_url
from shared.settings import Settings


def test_reads_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:p@db:5432/notify")
    monkeypatch.setenv("REDIS_URL", "redis://cache:6379/1")
    monkeypatch.setenv("MAX_BATCH_ITEMS", "250")

    settings = Settings(_env_file=None)  # type: ignore[call-arg]

    assert settings.require_database_url() == "postgresql://u:p@db:5432/notify"
    assert settings.require_redis_url() == "redis://cache:6379/1"
    assert settings.max_batch_items == 250


@pytest.mark.parametrize("name", ["DATABASE_URL", "REDIS_URL"])
def test_rejects_urls_of_the_wrong_kind(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(name, "mysql://somewhere/db")

    with pytest.raises(ValidationError, match=name.lower()):
        Settings(_env_file=None)  # type: ignore[call-arg]


def test_missing_urls_are_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]

    with pytest.raises(RuntimeError, match="DATABASE_URL is not set"):
        settings.require_database_url()
    with pytest.raises(RuntimeError, match="REDIS_URL is not set"):
        settings.require_redis_url()


def test_driver_is_added_internally() -> None:
    assert sqlalchemy_url("postgresql://u:p@h:5/d") == "postgresql+asyncpg://u:p@h:5/d"
    assert sqlalchemy_url("postgres://u@h/d") == "postgresql+asyncpg://u@h/d"
    with pytest.raises(ValueError, match="postgresql://"):
        sqlalchemy_url("sqlite:///x.db")

"""Settings: defaults, validation, secret lists, production readiness."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.errors import ConfigurationError
from app.settings import Settings


def test_defaults_follow_the_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "PORT",
        "LOG_LEVEL",
        "RATE_LIMIT_EVENTS_PER_MINUTE",
        "RATE_LIMIT_CRAWL_PER_MINUTE",
    ):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.port == 8787
    assert settings.log_level == "INFO"
    assert settings.rate_limit_events_per_minute == 60
    assert settings.rate_limit_crawl_per_minute == 30


def test_environment_names_are_the_original_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "9000")
    monkeypatch.setenv("LOG_LEVEL", "debug")
    monkeypatch.setenv("INGEST_APP_TOKEN", "a, b ,")
    monkeypatch.setenv("CRON_SECRET", "c")
    settings = Settings()
    assert settings.port == 9000
    assert settings.log_level == "DEBUG"
    assert settings.app_tokens == ("a", "b")
    assert settings.cron_secrets == ("c",)


def test_invalid_values_are_refused_with_the_field_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "not-a-port")
    with pytest.raises(ValidationError, match="port"):
        Settings()


def test_production_refuses_missing_secrets_naming_them() -> None:
    settings = Settings(
        database_url="postgresql://x/y",
        ingest_app_token="t",
        cron_secret=None,
        stripe_webhook_secret=None,
    )
    with pytest.raises(ConfigurationError, match="CRON_SECRET, STRIPE_WEBHOOK_SECRET"):
        settings.require_production_ready()


def test_production_accepts_complete_configuration() -> None:
    Settings(
        database_url="postgresql://x/y",
        ingest_app_token="t",
        cron_secret="c",
        stripe_webhook_secret="w",
    ).require_production_ready()


def test_secrets_are_masked_in_repr() -> None:
    settings = Settings(ingest_app_token="super-secret-token")
    assert "super-secret-token" not in repr(settings)
    assert "super-secret-token" not in str(settings.model_dump())

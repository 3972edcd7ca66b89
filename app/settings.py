"""Typed configuration, read once from the environment.

Every variable is documented in the README's configuration table; `ingest config` prints the
effective values with secrets masked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# The secrets a production server refuses to start without, by environment variable name.
REQUIRED_SECRETS = ("INGEST_APP_TOKEN", "CRON_SECRET", "STRIPE_WEBHOOK_SECRET")


def split_secret(value: SecretStr | None) -> tuple[str, ...]:
    """Split a comma-separated secret into its accepted values, so secrets can be rotated."""
    if value is None:
        return ()
    return tuple(part.strip() for part in value.get_secret_value().split(",") if part.strip())


class Settings(BaseSettings):
    """The service's configuration. Field names map to upper-case environment variables."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    database_url: str | None = None
    rollup_database_url: str | None = None
    data_dir: Path = Field(default=PROJECT_ROOT / ".data", alias="INGEST_DATA_DIR")

    ingest_app_token: SecretStr | None = None
    cron_secret: SecretStr | None = None
    stripe_secret_key: SecretStr | None = None
    stripe_webhook_secret: SecretStr | None = None
    ip_hash_secret: SecretStr | None = None
    metrics_token: SecretStr | None = None

    host: str = "127.0.0.1"
    port: int = Field(default=8787, ge=1, le=65535)
    web_workers: int = Field(default=1, ge=1, le=64)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"

    db_pool_min_size: int = Field(default=1, ge=0)
    db_pool_max_size: int = Field(default=8, ge=1)
    db_acquire_timeout_s: float = Field(default=5.0, gt=0)
    db_command_timeout_s: float = Field(default=30.0, gt=0)
    # asyncpg's prepared-statement cache per connection (asyncpg's default, 100); 0 behind a
    # transaction pooler without prepared-statement support (PgBouncer below 1.21).
    db_statement_cache_size: int = Field(default=100, ge=0)
    retry_after_s: int = Field(default=5, ge=1)

    # --- event intake and rate limiting ---
    rate_limit_events_per_minute: int = Field(default=60, ge=0)
    rate_limit_crawl_per_minute: int = Field(default=30, ge=0)
    rate_limit_backend: Literal["memory", "postgres"] = "memory"

    # --- rollups, trending, leaderboards, retention ---
    trending_half_life_days: float = Field(default=3.0, gt=0)
    trending_weights: str = "view=1,copy=3,save=4,fork=6,vote=2"
    leaderboard_size: int = Field(default=100, ge=1, le=10_000)
    rollup_work_mem: str = "128MB"
    rollup_parallelism: int = Field(default=2, ge=1, le=16)
    # Seconds taken off a run's view of "every fact up to now" (docs/rollups.md, facts_as_of).
    rollup_facts_margin_s: float = Field(default=1.0, ge=0, le=600)
    event_retention_days: int = Field(default=0, ge=0)
    # Days of metric rows a trending score sums (10 half-lives by default: older days weigh <0.1%).
    trending_horizon_days: int = Field(default=30, ge=1, le=366)

    # --- jobs ---
    worker_concurrency: int = Field(default=2, ge=1, le=64)
    # A worker silent (no heartbeat) this long is taken as dead and its running jobs are
    # retried by `retry_stalled_jobs`; workers send a heartbeat every third of it.
    jobs_stalled_after_s: float = Field(default=30.0, ge=1.0)

    @property
    def worker_heartbeat_s(self) -> float:
        """How often a worker proves it is alive: three heartbeats per stalled threshold."""
        return self.jobs_stalled_after_s / 3

    # --- stripe ---
    # Oldest accepted Stripe-Signature timestamp, in seconds (Stripe's own default).
    stripe_webhook_tolerance_s: int = Field(default=300, ge=1)
    # A donation row locked longer than this fails the attempt, which is retried.
    stripe_lock_timeout_ms: int = Field(default=5000, ge=1)
    # Inbox rows younger than this are left to the job deferred by the webhook itself.
    stripe_sweep_grace_s: float = Field(default=60.0, ge=0)
    # Reconciliation with the Events API (on when STRIPE_SECRET_KEY is set): the API's base
    # URL (unset: stripe-python's, https://api.stripe.com; for tests and proxies), the
    # library's own retries of connection errors, 409 and 5xx answers, how far behind the
    # watermark each run lists again, and how young an event may be before reconciliation
    # takes it instead of waiting for its delivery.
    stripe_api_base: str | None = None
    stripe_max_network_retries: int = Field(default=2, ge=0, le=10)
    stripe_reconcile_overlap_s: int = Field(default=3600, ge=0)
    stripe_reconcile_grace_s: int = Field(default=300, ge=0)

    # --- crawl and search ---

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("stripe_api_base", mode="before")
    @classmethod
    def _api_base_url(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        if isinstance(value, str) and not value.startswith(("https://", "http://")):
            raise ValueError("must be an https:// (or http://) URL")
        return value.rstrip("/") if isinstance(value, str) else value

    @property
    def app_tokens(self) -> tuple[str, ...]:
        return split_secret(self.ingest_app_token)

    @property
    def cron_secrets(self) -> tuple[str, ...]:
        return split_secret(self.cron_secret)

    @property
    def stripe_webhook_secrets(self) -> tuple[str, ...]:
        return split_secret(self.stripe_webhook_secret)

    def missing_secrets(self) -> list[str]:
        """Names of the required secrets that are unset or empty."""
        values = {
            "INGEST_APP_TOKEN": self.app_tokens,
            "CRON_SECRET": self.cron_secrets,
            "STRIPE_WEBHOOK_SECRET": self.stripe_webhook_secrets,
        }
        return [name for name in REQUIRED_SECRETS if not values[name]]

    def require_production_ready(self) -> None:
        """Refuse to serve without a database or a required secret, naming what is missing."""
        from app.errors import ConfigurationError

        missing = self.missing_secrets()
        if not self.database_url:
            missing.insert(0, "DATABASE_URL")
        if missing:
            raise ConfigurationError(
                "missing required environment variable(s): " + ", ".join(missing)
            )

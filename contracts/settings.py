"""Infrastructure settings, read once from the environment (spec README §11).

Every process (edge, relay, workers, CLI) reads the same variables through `Settings.from_env()`.
Defaults work on localhost; outside `ENVIRONMENT=development|test` the secrets must be set.
Business settings (system.md §4) are not here: they live in the system worker.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import msgspec

DEV_JWT_SECRET = "dev-only-jwt-secret-change-me-0123456789abcdef"  # documented in README
DEV_SIGNING_KEY_PEPPER = "dev-only-signing-key-pepper-0123456789abcdef"  # documented in README
_DEV_ENVIRONMENTS = {"development", "test"}

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


class SettingsError(ValueError):
    """A setting is missing or malformed; the process must not start."""


def parse_duration(value: str, name: str) -> float:
    """`15m`, `7d`, `10s`, `250ms` or plain seconds → seconds."""
    match = _DURATION.match(value)
    if not match:
        raise SettingsError(f"{name}: expected a duration like 15m, 7d, 10s or 250ms, got {value!r}")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    environment: str = "development"
    database_url: str = "postgresql://postgres@127.0.0.1:5432/imaging"
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    redis_url: str = "redis://127.0.0.1:6379/0"
    public_base_url: str = "http://localhost:5000"
    clinic_timezone: str = "Asia/Ho_Chi_Minh"
    cors_origins: tuple[str, ...] = ("http://localhost:3000", "http://localhost:5173")

    jwt_secret: str = DEV_JWT_SECRET
    jwt_issuer: str = "imaging-backend"
    jwt_audience: str = "imaging-api"
    access_token_ttl: float = 15 * 60
    refresh_token_idle_ttl: float = 7 * 86400.0
    refresh_token_max_ttl: float = 30 * 86400.0
    signing_key_pepper: str = DEV_SIGNING_KEY_PEPPER

    mail_backend: str = ""  # smtp | console; empty = console in development, smtp otherwise
    mail_dir: str = "var/mail"  # where the console backend writes messages (.eml), never to a log
    smtp_host: str = ""
    smtp_port: int = 587
    smtp_user: str = ""
    smtp_password: str = ""
    smtp_starttls: str = "auto"  # auto (when the server offers it) | always | never
    mail_from: str = "Imaging <no-reply@hospital.local>"

    edge_host: str = "0.0.0.0"
    edge_port: int = 5000
    relay_host: str = "0.0.0.0"
    relay_port: int = 5006
    command_timeout: float = 10.0
    ingest_timeout: float = 120.0
    api_rate_limit_per_minute: int = 600
    dicomweb_rate_limit_per_minute: int = 30000  # DICOMweb requests per user per minute (a viewer fetches every frame)

    worker_prefetch: int = 64
    delivery_limit: int = 5
    retry_backoff: tuple[float, ...] = (1.0, 4.0, 16.0)
    shutdown_grace: float = 30.0
    db_pool_size: int = 10
    outbox_sweep_interval: float = 2.0
    outbox_lease: float = 10.0
    confirm_window: int = 100

    argon2_time_cost: int = 3
    argon2_memory_kib: int = 65536
    argon2_parallelism: int = 1

    relay_heartbeat: float = 15.0
    relay_ws_ping: float = 30.0
    relay_ws_idle: float = 90.0
    relay_queue_max: int = 1000
    relay_max_connections_per_user: int = 5
    relay_max_connection_age: float = 12 * 3600.0
    relay_buffer_maxlen: int = 100_000
    relay_buffer_max_age: float = 24 * 3600.0

    room_schedule_job_interval: float = 60.0  # advance_room_schedules (users.md §8)

    # ---- imaging: blob store (contracts.blobstore) and ingest limits (imaging.md §4)
    blob_store: str = "filesystem"  # filesystem | cloudinary
    blob_dir: str = "var/blobs"  # filesystem root (staging/ and objects/ below it); shared by edge and imaging worker
    cloudinary_url: str = ""  # cloudinary://<api_key>:<api_secret>@<cloud_name>
    cloudinary_upload_prefix: str = ""  # API base, e.g. https://api.cloudinary.com (tests: the local stand-in)
    cloudinary_delivery_prefix: str = ""  # delivery base for downloads, e.g. https://res.cloudinary.com
    cloudinary_folder: str = "imaging"  # every blob lives below this folder; one sub-folder per study
    imaging_max_instance_bytes: int = 512 * 1024 * 1024  # one part of an upload / STOW request → 413 beyond
    imaging_max_request_bytes: int = 4 * 1024 * 1024 * 1024  # a whole upload / STOW request → 413 beyond
    imaging_max_parts: int = 500  # parts per upload / STOW request
    imaging_parse_processes: int = 2  # processes parsing DICOM headers for each imaging worker (0: a thread)
    imaging_sop_conflict: str = "reject"  # reject | replace: other bytes under a stored SOP Instance UID
    imaging_stable_after: float = 60.0  # quiet period before imaging.study.stabilized
    imaging_stable_job_interval: float = 10.0  # mark_stable_studies timer
    imaging_staging_max_age: float = 3600.0  # sweep_staging deletes staged blobs older than this
    qido_max_limit: int = 1000  # QIDO-RS hard cap on limit (reported in a Warning header)
    qido_default_limit: int = 100

    # seed-demo only, never in production: the demo users' password (empty: generated; see contracts.demo)
    demo_password: str = ""

    log_level: str = "INFO"
    log_format: str = "json"
    metrics_port: int = 0  # workers: Prometheus on this port (0 = off); run-all adds 1 per worker

    @property
    def is_development(self) -> bool:
        return self.environment in _DEV_ENVIRONMENTS

    @property
    def effective_mail_backend(self) -> str:
        return self.mail_backend or ("console" if self.is_development else "smtp")

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL with the asyncpg driver SQLAlchemy needs."""
        url = self.database_url
        for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+asyncpg://" + url[len(prefix) :]
        raise SettingsError("DATABASE_URL must be a postgresql:// URL")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for field in msgspec.structs.fields(cls):
            raw = env.get(field.name.upper())
            if raw is None or raw == "":
                continue
            values[field.name] = _convert(field.name.upper(), field.type, raw)
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        if not self.is_development:
            if self.jwt_secret == DEV_JWT_SECRET:
                raise SettingsError("JWT_SECRET must be set outside development")
            if self.signing_key_pepper == DEV_SIGNING_KEY_PEPPER:
                raise SettingsError("SIGNING_KEY_PEPPER must be set outside development")
            if any(origin == "*" for origin in self.cors_origins):
                raise SettingsError("CORS_ORIGINS must list origins, never '*', outside development")
        if len(self.jwt_secret.encode()) < 32:
            raise SettingsError("JWT_SECRET must be at least 32 bytes")
        if len(self.signing_key_pepper.encode()) < 32:
            raise SettingsError("SIGNING_KEY_PEPPER must be at least 32 bytes")
        if self.effective_mail_backend not in ("smtp", "console"):
            raise SettingsError("MAIL_BACKEND must be smtp or console")
        if self.smtp_starttls not in ("auto", "always", "never"):
            raise SettingsError("SMTP_STARTTLS must be auto, always or never")
        if self.blob_store not in ("filesystem", "cloudinary"):
            raise SettingsError("BLOB_STORE must be filesystem or cloudinary")
        if self.blob_store == "cloudinary" and not self.cloudinary_url:
            raise SettingsError("BLOB_STORE=cloudinary needs CLOUDINARY_URL")
        if self.imaging_sop_conflict not in ("reject", "replace"):
            raise SettingsError("IMAGING_SOP_CONFLICT must be reject or replace")
        if self.delivery_limit < 1:
            raise SettingsError("DELIVERY_LIMIT must be at least 1")
        _ = self.sqlalchemy_url


def _convert(name: str, annotation: Any, raw: str) -> Any:
    kind = annotation if isinstance(annotation, type) else getattr(annotation, "__origin__", annotation)
    try:
        if annotation is float or annotation == "float":
            return parse_duration(raw, name)
        if annotation is int or annotation == "int":
            return int(raw)
        if kind is tuple:
            items = [item.strip() for item in raw.split(",") if item.strip()]
            inner = annotation.__args__[0]
            if inner is float:
                return tuple(parse_duration(item, name) for item in items)
            return tuple(items)
        return raw
    except ValueError as exc:
        raise SettingsError(f"{name}: {exc}") from exc


_cached: Settings | None = None


def get_settings() -> Settings:
    """The process-wide settings, read on first use."""
    global _cached
    if _cached is None:
        _cached = Settings.from_env()
    return _cached

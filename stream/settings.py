"""Deployment settings: one object, read from ``EMBSTREAM_*`` environment variables and
overridden by command-line options. Nothing here is read at import time."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from models.registry import version_number
from store.errors import InvalidArgumentError
from store.options import StoreOptions
from stream.errors import SettingsError
from stream.kafka.security import KafkaSecurity, KafkaSecurityError
from stream.kafka.topics import by_item_topic

__all__ = ["UPDATES_FORMATS", "Settings", "SettingsError"]

#: Forms of the ``embeddings.updates`` topic (README "Event contract").
UPDATES_FORMATS = ("per-vector", "batch")


@dataclass(frozen=True)
class Settings:
    """Everything a deployment configures. Env var: ``EMBSTREAM_`` + the upper-case name."""

    broker: str | None = None
    data_dir: Path = Path("embstream-data")
    registry: Path = Path("embstream-registry")
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    topic: str = "interactions"
    updates_topic: str = "embeddings.updates"
    # The form of embeddings.updates: "per-vector" (one message per written vector, keyed by
    # kind:id) or "batch" (one message per kind and version of a write batch, listing its ids).
    updates_format: str = "per-vector"
    control_topic: str = "embstream.control"
    partitions: int = 4
    group_id: str = "embstream"
    encoder_version: int | None = None
    versions_kept: int = 5
    # Previous serving versions still written natively on every refresh after a promote (0:
    # none; reads at an older version then carry the serving vector back through aligners).
    retained_versions: int = 1
    user_window: int = 50
    batch_max_records: int = 5_000
    batch_max_wait_ms: int = 50
    max_future_skew_ms: int = 86_400_000
    # Larger record values are dead-lettered unread ("value larger than N bytes").
    max_event_bytes: int = 65_536
    session_timeout_ms: int = 6_000
    heartbeat_interval_ms: int = 1_000
    # Several workers share the group's partitions (README "Scale-out"): items are repartitioned
    # through <topic>.by-item and every batch goes to a changelog that every worker follows.
    scale_out: bool = False
    seed: int = 0
    backfill_rate: int = 0  # entities per second; 0 = as fast as batches allow
    # Threads torch may use to encode. One is fastest for the batch sizes the worker sees:
    # more threads spin against the broker and the consumer for the same cores.
    torch_threads: int = 1
    vector_dtype: str = "float32"  # how the store keeps new vectors: float32 or float16
    block_cache_mb: int = 256  # RocksDB block cache for vectors and state (0: RocksDB's default)
    # The serving version's vectors in memory for lookups (0: off; reads go to RocksDB).
    serving_cache_mb: int = 512
    # Versions whose item vectors get a nearest-neighbour index for /v1/recommendations: the
    # serving and staged versions always, older ones while this allows (0: no indexes at all).
    index_versions: int = 2
    # Who may do what (README "Security"): a bearer token for every API route but /healthz,
    # and a shared key signing control messages (HMAC-SHA256). Empty: not required.
    api_token: str = field(default="", repr=False)
    control_key: str = field(default="", repr=False)
    # The API's limits against slow and abandoned clients (stream/http_server.py): seconds for a
    # request's headers (also the idle keep-alive timeout) and for its body; open connections.
    http_header_timeout_s: int = 10
    http_body_timeout_s: int = 30
    http_max_connections: int = 512
    # Where the running worker writes backups asked for through the API (embstream store backup).
    backup_dir: Path = Path("embstream-backups")
    # Kafka connection security, passed to every Kafka client (stream/kafka_security.py).
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str = ""
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = field(default="", repr=False)
    kafka_ssl_cafile: str = ""
    kafka_ssl_certfile: str = ""
    kafka_ssl_keyfile: str = ""

    def __post_init__(self) -> None:
        try:
            self.store_options  # noqa: B018 - checked where the store's tuning is checked
        except InvalidArgumentError as error:
            setting = "versions_kept" if error.argument == "keep_versions" else error.argument
            raise SettingsError(f"EMBSTREAM_{setting.upper()}{str(error)[len(error.argument) :]}") from None
        if self.torch_threads < 1:
            raise SettingsError(f"EMBSTREAM_TORCH_THREADS={self.torch_threads} must be at least 1")
        if not 1 <= self.user_window <= 65_535:
            raise SettingsError(f"EMBSTREAM_USER_WINDOW={self.user_window} must be between 1 and 65535")
        if self.retained_versions < 0:
            raise SettingsError(f"EMBSTREAM_RETAINED_VERSIONS={self.retained_versions} must be 0 or more")
        if self.max_event_bytes < 256:
            raise SettingsError(f"EMBSTREAM_MAX_EVENT_BYTES={self.max_event_bytes} must be at least 256")
        for name in ("http_header_timeout_s", "http_body_timeout_s", "http_max_connections"):
            if getattr(self, name) < 1:
                raise SettingsError(f"EMBSTREAM_{name.upper()}={getattr(self, name)} must be at least 1")
        if self.updates_format not in UPDATES_FORMATS:
            raise SettingsError(
                f"EMBSTREAM_UPDATES_FORMAT={self.updates_format!r} must be one of "
                f"{', '.join(UPDATES_FORMATS)}"
            )
        if self.index_versions < 0:
            raise SettingsError(f"EMBSTREAM_INDEX_VERSIONS={self.index_versions} must be 0 or more")
        try:
            self.kafka_security  # noqa: B018 - validates the combination
        except KafkaSecurityError as error:
            raise SettingsError(str(error)) from None

    @property
    def kafka_security(self) -> KafkaSecurity:
        return KafkaSecurity(
            protocol=self.kafka_security_protocol,
            sasl_mechanism=self.kafka_sasl_mechanism,
            sasl_username=self.kafka_sasl_username,
            sasl_password=self.kafka_sasl_password,
            ssl_cafile=self.kafka_ssl_cafile,
            ssl_certfile=self.kafka_ssl_certfile,
            ssl_keyfile=self.kafka_ssl_keyfile,
        )

    @property
    def store_options(self) -> StoreOptions:
        return StoreOptions(
            keep_versions=self.versions_kept,
            vector_dtype=self.vector_dtype,
            block_cache_mb=self.block_cache_mb,
            serving_cache_mb=self.serving_cache_mb,
        )

    @property
    def by_item_topic(self) -> str:
        return by_item_topic(self.topic)

    @property
    def dlq_topic(self) -> str:
        return f"{self.topic}.dlq"

    @property
    def broker_servers(self) -> list[str]:
        if not self.broker:
            raise SettingsError("no broker configured")
        servers = [part.strip() for part in self.broker.split(",") if part.strip()]
        for server in servers:
            host, _, port = server.rpartition(":")
            if not host or not port.isdigit():
                raise SettingsError(f"broker address {server!r} is not host:port")
        return servers

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for spec in fields(cls):
            raw = environ.get(f"EMBSTREAM_{spec.name.upper()}")
            if raw is None or raw == "":
                continue
            values[spec.name] = _convert(spec.name, raw, cls.__dataclass_fields__[spec.name].default)
        return cls(**values)  # type: ignore[arg-type]

    def with_overrides(self, **overrides: object) -> Settings:
        """A copy with every override that is not ``None`` applied."""
        chosen = {name: value for name, value in overrides.items() if value is not None}
        for name, value in chosen.items():
            if isinstance(getattr(self, name), Path) and not isinstance(value, Path):
                chosen[name] = Path(str(value))
        return replace(self, **chosen)  # type: ignore[arg-type]


def _convert(name: str, raw: str, default: object) -> object:
    if isinstance(default, bool):
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"EMBSTREAM_{name.upper()}={raw!r} is not one of 1, 0, true, false")
    try:
        if isinstance(default, Path):
            return Path(raw)
        if name == "encoder_version":
            return version_number(raw)
        if isinstance(default, int):
            digits = raw.strip().removeprefix("-")
            if not (digits.isascii() and digits.isdigit()):  # int() would take "١٢" too
                raise ValueError(raw)
            return int(raw)
    except ValueError:
        raise SettingsError(f"EMBSTREAM_{name.upper()}={raw!r} is not an integer") from None
    return raw

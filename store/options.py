"""Store tuning: one frozen options object, checked in one place, turned into RocksDB's options."""

from __future__ import annotations

from dataclasses import dataclass

from rocksdict import BlockBasedOptions, Cache, DBCompressionType, Options

from store.errors import InvalidArgumentError

__all__ = ["DEFAULT_BLOCK_CACHE_MB", "VECTOR_DTYPES", "StoreOptions"]

#: How the store may keep vectors (reads always serve float32).
VECTOR_DTYPES = ("float32", "float16")
#: Block cache shared by the vectors and state column families, MiB (0: RocksDB's default).
DEFAULT_BLOCK_CACHE_MB = 256
_VECTOR_BLOCK_BYTES = 16 * 1024
COLUMN_FAMILIES = ("vectors", "state", "offsets")


@dataclass(frozen=True)
class StoreOptions:
    """How a store keeps its data.

    - ``keep_versions``: vectors of at most this many versions per entity (1-255);
    - ``vector_dtype``: how new vectors are stored, ``float32`` or ``float16``;
    - ``block_cache_mb``: one LRU block cache shared by vectors and state (0: RocksDB's
      small default); a hot set's reads then skip the block parse (about 2x on multi-gets
      of 1,000 random ids);
    - ``serving_cache_mb``: the serving version's vectors in memory (0: none;
      :mod:`store.serving_cache`).
    """

    keep_versions: int = 5
    vector_dtype: str = "float32"
    block_cache_mb: int = DEFAULT_BLOCK_CACHE_MB
    serving_cache_mb: int = 0

    def __post_init__(self) -> None:
        rules = (
            ("keep_versions", 1 <= self.keep_versions <= 255, "must be between 1 and 255"),
            ("vector_dtype", self.vector_dtype in VECTOR_DTYPES, f"is not one of {', '.join(VECTOR_DTYPES)}"),
            ("block_cache_mb", self.block_cache_mb >= 0, "must be 0 or more"),
            ("serving_cache_mb", self.serving_cache_mb >= 0, "must be 0 or more"),
        )
        for name, holds, rule in rules:
            if not holds:  # "name=value rule": the settings say it with their own names
                raise InvalidArgumentError(name, f"{name}={getattr(self, name)!r} {rule}")

    def to_options(self) -> tuple[Options, dict[str, Options]]:
        """RocksDB's options for the database and for each column family."""
        cache = Cache(self.block_cache_mb << 20) if self.block_cache_mb else None
        column_families = {name: Options(raw_mode=True) for name in COLUMN_FAMILIES}
        column_families["vectors"] = _vectors_options(self.vector_dtype, cache)
        column_families["state"] = _state_options(cache)
        return _raw_options(), column_families


def _raw_options() -> Options:
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    options.create_missing_column_families(True)
    return options


def _state_options(cache: Cache | None) -> Options:
    options = Options(raw_mode=True)
    if cache is not None:
        table = BlockBasedOptions()
        table.set_block_cache(cache)
        options.set_block_based_table_factory(table)
    return options


def _vectors_options(vector_dtype: str, cache: Cache | None) -> Options:
    """Column-family options of ``vectors``: larger blocks (less index and per-block
    overhead); compression only where it pays (RocksDB keeps a block uncompressed unless
    compression saves 1/8, which float32 noise never reaches, so trying would only cost CPU)."""
    table = BlockBasedOptions()
    table.set_block_size(_VECTOR_BLOCK_BYTES)
    if cache is not None:
        table.set_block_cache(cache)
    options = Options(raw_mode=True)
    options.set_block_based_table_factory(table)
    compression = DBCompressionType.zstd() if vector_dtype == "float16" else DBCompressionType.none()
    options.set_compression_type(compression)
    return options

from __future__ import annotations

from pathlib import Path

import pytest

from stream.ingest.outbox import OutgoingMessage, decode_outbox, encode_outbox
from stream.settings import Settings, SettingsError


def test_outbox_round_trip_keeps_keys_values_and_headers() -> None:
    messages = [
        OutgoingMessage("t", None, b"", ()),
        OutgoingMessage("dlq", b"k\x00", b"\xff" * 1000, (("error", b"bad"), ("n", b""))),
    ]
    assert decode_outbox(encode_outbox(messages)) == messages
    assert decode_outbox(b"") == []


def test_settings_read_the_environment_and_overrides_win() -> None:
    settings = Settings.from_env(
        {
            "EMBSTREAM_BROKER": "a:1,b:2",
            "EMBSTREAM_API_PORT": "9000",
            "EMBSTREAM_DATA_DIR": "/data",
            "EMBSTREAM_TOPIC": "",
        }
    )
    assert settings.broker_servers == ["a:1", "b:2"]
    assert settings.api_port == 9000 and settings.data_dir == Path("/data")
    assert settings.topic == "interactions" and settings.dlq_topic == "interactions.dlq"
    assert settings.with_overrides(api_port=None, topic="t").topic == "t"
    assert settings.with_overrides(data_dir="x").data_dir == Path("x")


def test_bad_settings_are_clear_errors() -> None:
    with pytest.raises(SettingsError, match="EMBSTREAM_API_PORT"):
        Settings.from_env({"EMBSTREAM_API_PORT": "eighty"})
    with pytest.raises(SettingsError, match="not host:port"):
        _ = Settings(broker="localhost").broker_servers
    with pytest.raises(SettingsError, match="no broker"):
        _ = Settings().broker_servers


def test_vector_dtype_is_float32_unless_set_to_float16() -> None:
    assert Settings().vector_dtype == "float32"
    assert Settings.from_env({"EMBSTREAM_VECTOR_DTYPE": "float16"}).vector_dtype == "float16"
    with pytest.raises(
        SettingsError, match="EMBSTREAM_VECTOR_DTYPE='float64' is not one of float32, float16"
    ):
        Settings.from_env({"EMBSTREAM_VECTOR_DTYPE": "float64"})


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("EMBSTREAM_TORCH_THREADS", "0", "must be at least 1"),
        ("EMBSTREAM_BLOCK_CACHE_MB", "-1", "must be 0 or more"),
        ("EMBSTREAM_SERVING_CACHE_MB", "-5", "SERVING_CACHE_MB=-5 must be 0 or more"),
    ],
)
def test_thread_and_cache_settings_are_checked(name: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env({name: value})
    defaults = Settings.from_env({})
    assert (defaults.torch_threads, defaults.block_cache_mb, defaults.serving_cache_mb) == (1, 256, 512)


@pytest.mark.parametrize("window", ["0", "65536"])
def test_the_user_window_fits_the_state_format(window: str) -> None:
    with pytest.raises(SettingsError, match="EMBSTREAM_USER_WINDOW"):
        Settings.from_env({"EMBSTREAM_USER_WINDOW": window})

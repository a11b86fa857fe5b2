"""Who may do what: the API's bearer token, signed control messages, Kafka TLS/SASL options."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from store.vector_store import VersionedVectorStore
from stream.api.app import ApiContext, create_app
from stream.kafka.security import KafkaSecurity, KafkaSecurityError
from stream.metrics import Metrics
from stream.rollout.messages import ControlCodec, control_message
from stream.rollout.state import RolloutState
from stream.settings import Settings, SettingsError

TOKEN = "s3cret-token"


class NoAligners:
    def carry(self, source: int, target: int) -> Any:
        raise AssertionError("not used")

    def versions(self) -> list[int]:
        return [1]


def _ask(store: VersionedVectorStore, token: str, calls: list[tuple[str, str, dict[str, str]]]) -> list[int]:
    metrics = Metrics()
    context = ApiContext(store=store, metrics=metrics, registry=NoAligners(), health=dict, token=token)  # type: ignore[arg-type]

    async def run() -> list[int]:
        async with TestClient(TestServer(create_app(context))) as client:
            statuses = []
            for method, path, headers in calls:
                body = orjson.dumps({"ids": ["u1"]}) if method == "POST" else None
                response = await client.request(method, path, headers=headers, data=body)
                if response.status == 401:
                    assert response.headers["WWW-Authenticate"].startswith("Bearer")
                    assert (await response.json())["error"] == "unauthorized"
                statuses.append(response.status)
            return statuses

    statuses = asyncio.run(run())
    assert metrics.unauthorized == statuses.count(401)
    return statuses


@pytest.fixture
def store(tmp_path: Path) -> Any:
    opened = VersionedVectorStore(tmp_path / "db")
    writer = opened.writer()
    writer.put_vectors("user", ["u1"], 1, np.ones((1, 4), np.float32), 1)
    writer.commit()
    opened.set_serving_version(1)
    yield opened
    opened.close()


ROUTES = [
    ("GET", "/v1/embeddings/user/u1"),
    ("POST", "/v1/embeddings/user/batch"),
    ("GET", "/v1/versions"),
    ("GET", "/metrics"),
    ("GET", "/v1/embeddings/user/nobody"),  # a 404 must not be reachable without the token either
]


def test_with_a_token_every_route_but_healthz_needs_it(store: VersionedVectorStore) -> None:
    good = {"Authorization": f"Bearer {TOKEN}"}
    wrong = [
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
    ]
    calls = [(m, p, h) for m, p in ROUTES for h in wrong]
    assert _ask(store, TOKEN, calls) == [401] * len(calls)
    allowed = _ask(store, TOKEN, [(m, p, good) for m, p in ROUTES] + [("GET", "/healthz", {})])
    assert allowed == [200, 200, 200, 200, 404, 200]
    assert _ask(store, TOKEN, [("GET", "/v1/embeddings/user/u1", {"Authorization": f"bearer  {TOKEN}"})]) == [
        200
    ]


def test_without_a_token_nothing_is_required(store: VersionedVectorStore) -> None:
    assert _ask(store, "", [(m, p, {}) for m, p in ROUTES]) == [200, 200, 200, 200, 404]


# ----- control messages ------------------------------------------------------------------


def test_signed_messages_round_trip_and_tampering_is_caught() -> None:
    codec = ControlCodec("shared-key")
    message = control_message("promote", version=2, force=False)
    raw = codec.encode(message)
    assert orjson.loads(raw)["sig"]
    decoded, reason = codec.decode(raw)
    assert reason is None and decoded is not None and decoded["version"] == 2
    tampered = orjson.loads(raw)
    tampered["version"] = 3
    assert codec.decode(orjson.dumps(tampered)) == (None, "forged")
    assert ControlCodec("another-key").decode(raw) == (None, "forged")
    assert codec.decode(orjson.dumps(message)) == (None, "unsigned")
    assert codec.decode(b"{not json") == (None, "malformed")
    # Key order and spacing do not matter: the signature covers the canonical form.
    reordered = orjson.dumps(dict(reversed(list(orjson.loads(raw).items()))))
    assert codec.decode(reordered)[1] is None


def test_without_a_key_messages_are_not_checked() -> None:
    plain = ControlCodec(None)
    raw = plain.encode(control_message("cancel", version=2))
    assert "sig" not in orjson.loads(raw)
    assert plain.decode(ControlCodec("k").encode(control_message("cancel", version=2)))[1] is None
    assert ControlCodec("").signing is False


def test_a_forged_promote_changes_no_state() -> None:
    """The fold a worker runs only sees what the codec accepts."""
    codec = ControlCodec("shared-key")
    state = RolloutState(serving=1)
    stage = codec.encode(control_message("stage", version=2, rate=None))
    forged = ControlCodec("attacker").encode(control_message("promote", version=2, force=True))
    unsigned = orjson.dumps(control_message("rollback", **{"from": 1, "to": 0}))
    for raw in (stage, forged, unsigned):
        message, reason = codec.decode(raw)
        if message is None:
            state.ignored[reason or ""] += 1
        else:
            state.apply(message)
    assert (state.serving, state.staged) == (1, 2)
    assert dict(state.ignored) == {"forged": 1, "unsigned": 1}


# ----- Kafka security --------------------------------------------------------------------


def test_plaintext_adds_no_client_options() -> None:
    security = Settings.from_env({}).kafka_security
    assert security.kafka_python() == {} and security.aiokafka() == {}


def test_sasl_settings_reach_both_client_libraries() -> None:
    settings = Settings.from_env(
        {
            "EMBSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "EMBSTREAM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "EMBSTREAM_KAFKA_SASL_USERNAME": "embstream",
            "EMBSTREAM_KAFKA_SASL_PASSWORD": "pw",
        }
    )
    expected = {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "embstream",
        "sasl_plain_password": "pw",
    }
    assert settings.kafka_security.kafka_python() == expected
    assert settings.kafka_security.aiokafka() == expected
    assert "pw" not in repr(settings)


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    command = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    command += ["-subj", "/CN=embstream-test", "-keyout", str(key), "-out", str(cert)]
    subprocess.run(command, check=True, capture_output=True)
    return cert, key


def test_tls_files_become_a_context_for_aiokafka_and_paths_for_kafka_python(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    security = KafkaSecurity(
        protocol="SASL_SSL",
        sasl_mechanism="PLAIN",
        sasl_username="u",
        sasl_password="p",
        ssl_cafile=str(cert),
        ssl_certfile=str(cert),
        ssl_keyfile=str(key),
    )
    assert security.kafka_python()["ssl_cafile"] == str(cert)
    assert security.kafka_python()["ssl_keyfile"] == str(key)
    context = security.aiokafka()["ssl_context"]
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED
    assert any(ca.get("subject") for ca in context.get_ca_certs())


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"EMBSTREAM_KAFKA_SECURITY_PROTOCOL": "TLS"}, "is not one of"),
        ({"EMBSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "needs EMBSTREAM_KAFKA_SASL_MECHANISM"),
        (
            {"EMBSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "EMBSTREAM_KAFKA_SASL_MECHANISM": "PLAIN"},
            "SASL_USERNAME",
        ),
        ({"EMBSTREAM_KAFKA_SASL_USERNAME": "u"}, "use SASL_PLAINTEXT or SASL_SSL"),
        ({"EMBSTREAM_KAFKA_SSL_CAFILE": "ca.pem"}, "use SSL or SASL_SSL"),
        ({"EMBSTREAM_KAFKA_SECURITY_PROTOCOL": "SSL", "EMBSTREAM_KAFKA_SSL_CERTFILE": "c.pem"}, "both"),
    ],
)
def test_security_settings_that_do_not_fit_are_refused(values: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(values)


def test_a_missing_tls_file_is_named() -> None:
    security = KafkaSecurity(protocol="SSL", ssl_cafile="/nonexistent/ca.pem")
    with pytest.raises(KafkaSecurityError, match="EMBSTREAM_KAFKA_SSL_CAFILE"):
        security.aiokafka()


def test_hostile_signatures_are_refused_not_raised() -> None:
    codec = ControlCodec("shared-key")
    message = control_message("promote", version=2)
    assert codec.decode(orjson.dumps({**message, "sig": "é" * 64})) == (None, "forged")
    assert codec.decode(orjson.dumps({**message, "sig": 7})) == (None, "forged")
    deep = b'{"op": "promote", "id": "x", "sig": "00", "a": ' + b"[" * 300 + b"]" * 300 + b"}"
    assert codec.decode(deep) == (None, "malformed")


def test_a_re_sent_signed_command_changes_nothing() -> None:
    """stage 2, promote 2, rollback to 1; then the old signed stage and promote sent again."""
    codec = ControlCodec("shared-key")
    history = [
        codec.encode(control_message("stage", version=2, rate=None)),
        codec.encode(control_message("promote", version=2)),
    ]
    state = RolloutState(serving=1)
    for raw in history:
        state.apply(codec.decode(raw)[0])  # type: ignore[arg-type]
    state.apply(codec.decode(codec.encode(control_message("rollback", **{"from": 2, "to": 1})))[0])  # type: ignore[arg-type]
    assert state.serving == 1
    for raw in history:  # replayed by someone without the key
        assert state.apply(codec.decode(raw)[0]) is False  # type: ignore[arg-type]
    assert (state.serving, state.staged) == (1, None)


def test_more_routes_need_the_token_and_odd_headers_are_a_401(store: VersionedVectorStore) -> None:
    calls = [
        ("GET", "/v1/status", {}),
        ("GET", "/openapi.json", {}),
        ("POST", "/v1/admin/backup", {}),
        ("GET", "/v1/embeddings/user/u1", {"Authorization": "Bearer \udcff"}),
    ]
    assert _ask(store, TOKEN, calls) == [401, 401, 401, 401]
    assert _ask(store, TOKEN, [("GET", "/", {})]) == [200]  # the status page's HTML holds no data


def _backup_answer(
    store: VersionedVectorStore, root: Path | None, allowed: bool, body: bytes
) -> tuple[int, Any]:
    context = ApiContext(
        store=store,
        metrics=Metrics(),
        registry=NoAligners(),
        health=dict,
        backup_root=root,
        admin_allowed=allowed,
    )  # type: ignore[arg-type]

    async def run() -> tuple[int, Any]:
        async with TestClient(TestServer(create_app(context))) as client:
            response = await client.post("/v1/admin/backup", data=body)
            return response.status, await response.json()

    return asyncio.run(run())


def test_backups_through_the_api_stay_inside_the_backup_directory(
    store: VersionedVectorStore, tmp_path: Path
) -> None:
    root = tmp_path / "backups"
    status, body = _backup_answer(store, root, True, b'{"dir": "nightly"}')
    assert status == 200 and Path(body["path"]) == (root / "nightly").resolve()
    copy = VersionedVectorStore(body["path"], read_only=True)
    try:
        assert copy.get_records("user", ["u1"])[0] is not None
    finally:
        copy.close()
    assert all(f.stat().st_nlink == 1 for f in Path(body["path"]).iterdir())  # no file shared
    for escape in (
        b'{"dir": "../elsewhere"}',
        b'{"dir": "/tmp"}',
        b'{"dir": "."}',
        ('{"dir": "' + str(store.path) + '"}').encode(),
    ):
        status, body = _backup_answer(store, root, True, escape)
        assert status == 400 and body["error"] == "bad_dir", escape
    status, body = _backup_answer(store, root, True, b'{"dir": "nightly"}')
    assert status == 409 and body["error"] == "backup_failed"
    status, body = _backup_answer(store, root, True, b'{"dir": "' + b"n" * 5000 + b'"}')
    assert status == 409 and not list(root.glob("nnn*"))  # an OS error: a 409, no half backup
    status, body = _backup_answer(store, root, False, b'{"dir": "other"}')
    assert status == 403 and body["error"] == "admin_disabled"

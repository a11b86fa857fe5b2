"""The lookup API's batch route in its binary form, against the JSON form, on a real store.

The app runs on aiohttp's test server (a real socket, no worker and no broker); the registry
is a double whose only aligner carries version 2 back to version 1.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from models.aligners import BackwardAligner
from models.errors import IncompatibleVersionsError
from store.vector_store import VersionedVectorStore
from stream.api.app import MAX_BATCH_IDS, ApiContext, create_app
from stream.api.vector_format import VECTORS_MEDIA_TYPE, VectorsFormatError, decode_vectors, encode_vectors
from stream.metrics import Metrics

DIM = 8
ALIGNER = BackwardAligner.from_matrix(np.random.default_rng(1).standard_normal((DIM, DIM)).astype(np.float32))
BATCH = "/v1/embeddings/user/batch"
BINARY = {"Accept": VECTORS_MEDIA_TYPE}
ODD_IDS = ["zoë", "用户-7", "🙂", 'quote"back\\slash', "line\nbreak", "nul\x00", "sep\u2028", "tab\t"]


class OneAlignerRegistry:
    """Carries version 2 back to 1; every other pair is unreachable."""

    def carry(self, source: int, target: int) -> Callable[[np.ndarray], np.ndarray]:
        if (source, target) == (2, 1):
            return ALIGNER.apply
        raise IncompatibleVersionsError(f"no aligner from {source} to {target}")

    def versions(self) -> list[int]:
        return [1, 2]


def _vectors(seed: int, count: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, DIM)).astype(np.float32)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[VersionedVectorStore]:
    """u0..u9 at versions 1 and 2, u10..u14 at version 2 only, the odd ids at 1 and 2; serving 2."""
    opened = VersionedVectorStore(tmp_path / "db")
    both = [f"u{n}" for n in range(10)] + ODD_IDS
    writer = opened.writer()
    writer.put_vectors("user", both, 1, _vectors(1, len(both)), 2_000)  # as fresh as version 2
    writer.put_vectors("user", both, 2, _vectors(2, len(both)), 2_000)
    writer.put_vectors("user", [f"u{n}" for n in range(10, 15)], 2, _vectors(3, 5), 3_000)
    writer.commit()
    opened.set_serving_version(2)
    yield opened
    opened.close()


def _context(store: VersionedVectorStore) -> ApiContext:
    registry: Any = OneAlignerRegistry()
    return ApiContext(store=store, metrics=Metrics(), registry=registry, health=dict)


def _exchange(store: VersionedVectorStore, calls: list[dict[str, Any]]) -> list[tuple[int, str, bytes]]:
    """Each call (``method``, ``path``, aiohttp kwargs) -> (status, content type, body)."""

    async def run() -> list[tuple[int, str, bytes]]:
        async with TestClient(TestServer(create_app(_context(store)))) as client:
            answers = []
            for call in calls:
                response = await client.request(call.pop("method", "POST"), call.pop("path", BATCH), **call)
                answers.append((response.status, response.content_type, await response.read()))
            return answers

    return asyncio.run(run())


def _json_and_binary(
    store: VersionedVectorStore, body: dict[str, Any]
) -> tuple[Any, dict[str, Any], np.ndarray]:
    (status_j, type_j, raw_j), (status_b, type_b, raw_b) = _exchange(
        store, [{"json": body}, {"json": body, "headers": BINARY}]
    )
    assert (status_j, type_j) == (200, "application/json")
    assert (status_b, type_b) == (200, VECTORS_MEDIA_TYPE)
    header, matrix = decode_vectors(raw_b)
    return orjson.loads(raw_j), header, matrix


def _json_rows(answer: dict[str, Any]) -> list[dict[str, Any]]:
    return [row for row in answer["results"] if row is not None]


def test_binary_rows_equal_the_json_answer_and_missing_ids_are_listed(store: VersionedVectorStore) -> None:
    ids = ["u3", "ghost", "u12", "u3", "u0", "nobody"]
    answer, header, matrix = _json_and_binary(store, {"ids": ids})
    rows = _json_rows(answer)
    assert header["ids"] == [row["id"] for row in rows] == ["u3", "u12", "u3", "u0"]
    assert header["missing"] == ["ghost", "nobody"]
    assert (header["version"], header["kind"], header["dtype"]) == (2, "user", "float32")
    assert (header["count"], header["dim"]) == (4, DIM) and matrix.shape == (4, DIM)
    assert header["updated_at"] == [row["updated_at"] for row in rows] == [2_000, 3_000, 2_000, 2_000]
    assert "source" not in header  # every row native
    assert matrix.dtype == np.float32
    assert np.array_equal(matrix, np.array([row["vector"] for row in rows], dtype=np.float32))


def test_format_query_selects_binary_and_wins_over_accept(store: VersionedVectorStore) -> None:
    answers = _exchange(
        store,
        [
            {"path": f"{BATCH}?format=binary", "json": {"ids": ["u1"]}},
            {"path": f"{BATCH}?format=json", "json": {"ids": ["u1"]}, "headers": BINARY},
        ],
    )
    assert answers[0][:2] == (200, VECTORS_MEDIA_TYPE)
    assert decode_vectors(answers[0][2])[0]["ids"] == ["u1"]
    assert answers[1][:2] == (200, "application/json")


@pytest.mark.parametrize(
    ("accept", "binary"),
    [
        (VECTORS_MEDIA_TYPE, True),
        (f"application/json;q=0.5, {VECTORS_MEDIA_TYPE}", True),
        (f"{VECTORS_MEDIA_TYPE};q=0.2, application/json", False),
        (f"{VECTORS_MEDIA_TYPE};q=0", False),
        ("text/html", False),  # no 406: anything else gets JSON, as before
        ("*/*", False),
    ],
)
def test_accept_header_negotiation(store: VersionedVectorStore, accept: str, binary: bool) -> None:
    [(status, content_type, _)] = _exchange(store, [{"json": {"ids": ["u1"]}, "headers": {"Accept": accept}}])
    assert status == 200
    assert content_type == (VECTORS_MEDIA_TYPE if binary else "application/json")


def test_version_pinning_in_binary_reads_the_pinned_vectors(store: VersionedVectorStore) -> None:
    answer, header, matrix = _json_and_binary(store, {"ids": ["u0", "u1"], "version": 1})
    assert header["version"] == answer["version"] == 1 and header["updated_at"] == [2_000, 2_000]
    assert np.array_equal(matrix, _vectors(1, 2))
    assert np.array_equal(matrix, np.array([row["vector"] for row in _json_rows(answer)], dtype=np.float32))


def test_aligned_rows_in_binary_carry_a_per_row_source(store: VersionedVectorStore) -> None:
    ids = ["u10", "u0", "ghost", "u11"]
    answer, header, matrix = _json_and_binary(store, {"ids": ids, "version": 1})
    assert header["ids"] == ["u10", "u0", "u11"] and header["missing"] == ["ghost"]
    assert (
        header["source"] == [row["source"] for row in _json_rows(answer)] == ["aligned", "native", "aligned"]
    )
    assert np.array_equal(matrix, np.array([row["vector"] for row in _json_rows(answer)], dtype=np.float32))
    v2 = store.get_records("user", ["u10", "u11"])
    expected = ALIGNER.apply(np.stack([record[0].vector for record in v2 if record is not None]))
    assert np.allclose(matrix[[0, 2]], expected)
    assert np.array_equal(matrix[1], _vectors(1, 1)[0])


def test_ids_with_any_unicode_round_trip_through_the_header(store: VersionedVectorStore) -> None:
    answer, header, matrix = _json_and_binary(store, {"ids": [*ODD_IDS, "ghost\u00e9"]})
    assert header["ids"] == ODD_IDS and header["missing"] == ["ghost\u00e9"]
    assert np.array_equal(matrix, np.array([row["vector"] for row in _json_rows(answer)], dtype=np.float32))


def test_matrix_starts_aligned_and_an_empty_answer_has_no_rows(store: VersionedVectorStore) -> None:
    [(_, _, raw), (_, _, empty)] = _exchange(
        store,
        [
            {"json": {"ids": ["u1", "u2"]}, "headers": BINARY},
            {"json": {"ids": ["x", "y"]}, "headers": BINARY},
        ],
    )
    header_length = int.from_bytes(raw[:4], "little")
    assert (4 + header_length) % 8 == 0 and len(raw) == 4 + header_length + 2 * DIM * 4
    header, matrix = decode_vectors(empty)
    assert (header["count"], header["dim"], header["ids"], header["missing"]) == (0, 0, [], ["x", "y"])
    assert matrix.shape == (0, 0)


def test_errors_stay_json_when_binary_is_asked(store: VersionedVectorStore) -> None:
    calls: list[dict[str, Any]] = [
        {"data": b"not json"},
        {"json": {"ids": "u1"}},
        {"json": {"ids": [""]}},
        {"json": {"ids": ["u1"], "version": 0}},
        {"json": {"ids": ["u"] * (MAX_BATCH_IDS + 1)}},
        {"path": "/v1/embeddings/robot/batch", "json": {"ids": ["u1"]}},
        {"path": f"{BATCH}?format=xml", "json": {"ids": ["u1"]}},
        {"data": b'{"ids": ["\\ud800"]}'},  # a lone surrogate is not valid JSON text
    ]
    for call in calls:
        call.setdefault("headers", BINARY)
    answers = _exchange(store, calls)
    expected = [
        (400, "bad_body"),
        (400, "bad_body"),
        (400, "bad_id"),
        (400, "bad_version"),
        (400, "too_many_ids"),
        (400, "bad_kind"),
        (400, "bad_format"),
        (400, "bad_body"),
    ]
    for (status, content_type, raw), (want_status, want_code) in zip(answers, expected, strict=True):
        assert (status, content_type, orjson.loads(raw)["error"]) == (
            want_status,
            "application/json",
            want_code,
        )


def test_an_unreachable_version_is_a_json_409_in_binary_too(store: VersionedVectorStore) -> None:
    writer = store.writer()
    writer.put_vectors("user", ["u20"], 3, _vectors(4, 1), 4_000)
    writer.commit()
    store.set_serving_version(3)  # u20 must be carried from 3 to 1, and no aligner does that
    answers = _exchange(
        store,
        [
            {"json": {"ids": ["u0", "u20"], "version": 1}, "headers": BINARY},
            {"json": {"ids": ["u0"], "version": 1}},
        ],
    )
    (status, content_type, raw), (pinned, _, native_only) = answers
    assert (status, content_type, orjson.loads(raw)["error"]) == (
        409,
        "application/json",
        "version_unreachable",
    )
    assert pinned == 200 and orjson.loads(native_only)["results"][0]["source"] == "native"


def test_no_serving_version_is_a_json_503_in_binary_too(tmp_path: Path) -> None:
    empty = VersionedVectorStore(tmp_path / "empty")
    try:
        [(status, content_type, raw)] = _exchange(empty, [{"json": {"ids": ["u1"]}, "headers": BINARY}])
    finally:
        empty.close()
    assert (status, content_type, orjson.loads(raw)["error"]) == (
        503,
        "application/json",
        "no_serving_version",
    )


def test_single_get_stays_json(store: VersionedVectorStore) -> None:
    [(status, content_type, raw), (missing, _, body)] = _exchange(
        store,
        [
            {"method": "GET", "path": "/v1/embeddings/user/u10?version=1", "headers": BINARY},
            {"method": "GET", "path": "/v1/embeddings/user/u10?version=3"},
        ],
    )
    assert (status, content_type) == (200, "application/json")
    answer = orjson.loads(raw)
    assert answer["source"] == "aligned" and answer["version"] == 1 and len(answer["vector"]) == DIM
    assert missing == 404 and orjson.loads(body)["error"] == "version_not_found"


def test_decode_vectors_rejects_truncated_bodies() -> None:
    body = encode_vectors({"ids": ["a", "b"], "missing": []}, _vectors(0, 2))
    header, matrix = decode_vectors(body)
    assert header["format"] == 1 and np.array_equal(matrix, _vectors(0, 2))
    for broken in (body[:2], body[:10], body[:-1], body + b"\x00"):
        with pytest.raises(VectorsFormatError):
            decode_vectors(broken)


@pytest.mark.parametrize("version", ["19021145626819526656", "2147483648", "0", "-1", "1e999", "nan"])
def test_a_version_out_of_range_is_a_400_not_a_500(store: VersionedVectorStore, version: str) -> None:
    """Found by the API fuzzer: a version beyond 64 bits made the answer unserialisable."""
    answers = _exchange(
        store,
        [
            {"method": "GET", "path": f"/v1/embeddings/user/u1?version={version}"},
            {"data": b'{"ids": ["u1"], "version": ' + version.encode() + b"}"},
        ],
    )
    for status, _, body in answers:
        assert status == 400 and orjson.loads(body)["error"] in ("bad_version", "bad_body")

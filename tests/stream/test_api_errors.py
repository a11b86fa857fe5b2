"""Errors of the packages below the API get their HTTP status and code in one place."""

from __future__ import annotations

import pytest

from models.errors import IncompatibleVersionsError, VersionMissingError
from store.errors import (
    EntityNotFoundError,
    IndexBuildingError,
    IndexMissingError,
    InvalidArgumentError,
    NoServingVersionError,
    StoreDamagedError,
    StoreError,
    VersionNotFoundError,
    VersionUnreachableError,
)
from stream.api.errors import ApiError, api_error


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (IndexBuildingError("building"), 503, "index_building"),
        (IndexMissingError("none"), 404, "no_index"),
        (InvalidArgumentError("k", "k must be an integer from 1 to 1000"), 400, "bad_k"),
        (EntityNotFoundError("unknown user 'x'"), 404, "not_found"),
        (VersionNotFoundError("no vector of version 3"), 404, "version_not_found"),
        (VersionUnreachableError("no chain"), 409, "version_unreachable"),
        (IncompatibleVersionsError("not an ancestor"), 409, "version_unreachable"),
        (VersionMissingError("version 9 is not in the registry"), 409, "version_unreachable"),
        (NoServingVersionError("none yet"), 503, "no_serving_version"),
        (StoreDamagedError("damaged"), 503, "store_damaged"),
    ],
)
def test_each_error_below_the_api_has_one_answer(error: Exception, status: int, code: str) -> None:
    answer = api_error(error)
    assert answer is not None and (answer.status, answer.code, answer.message) == (status, code, str(error))


def test_an_error_with_no_answer_is_left_to_be_a_500() -> None:
    assert api_error(StoreError("something else")) is None
    assert api_error(RuntimeError("a bug")) is None
    already = ApiError(400, "bad_id", "x")
    assert api_error(already) is already
